//! VM instance names, as FreeBSD's vmm accepts them.
//!
//! FreeBSD limits names to `VM_MAX_NAMELEN` (32) bytes including the NUL and
//! uses them as a devfs node under /dev/vmm, so no `/`.  We are stricter and
//! allow only characters that are safe in file names and shell scripts.

use crate::error::{Error, Result};

/// `VM_MAX_NAMELEN` in sys/amd64/include/vmm.h: 32 bytes including the NUL.
pub const VM_MAX_NAMELEN: usize = 32;

pub fn validate(name: &str) -> Result<()> {
    let bad = |why| {
        Err(Error::BadName {
            name: name.to_string(),
            why,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() >= VM_MAX_NAMELEN {
        return bad("longer than 31 characters");
    }
    if name.starts_with('.') || name.starts_with('-') {
        return bad("must not start with '.' or '-'");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return bad("only letters, digits, '_', '-' and '.' are allowed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_freebsd_style_names() {
        for n in ["guest0", "vm1", "my-vm.test_2", &"a".repeat(31)] {
            assert!(validate(n).is_ok(), "{n}");
        }
    }

    #[test]
    fn refuses_bad_names() {
        let long = "a".repeat(32);
        for n in [
            "", &long, "a/b", ".hidden", "-x", "sp ace", "nul\0", "ü", "..",
        ] {
            let e = validate(n).unwrap_err();
            assert!(matches!(e, Error::BadName { .. }), "{n}: {e}");
        }
    }
}
