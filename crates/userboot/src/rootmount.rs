//! `vfs.root.mountfrom` from `/etc/fstab` (`boot.c` `getrootmount`, §6.9).

use crate::env::Env;

/// `fgetstr` reads at most this many bytes of a line (128-byte buffer).
const LINE_MAX: usize = 127;

/// The first fstab line whose mount point is exactly `/`:
/// `(device, fstype, options)`.  A root line without options ends the search
/// with nothing, as in the loader (the options field is mandatory).
pub fn parse_fstab(text: &[u8]) -> Option<(String, String, String)> {
    for raw in text.split(|&b| b == b'\n') {
        let line = &raw[..raw.len().min(LINE_MAX)];
        if line.is_empty() || line[0] == b'#' {
            continue;
        }
        let line = String::from_utf8_lossy(line);
        let is_space = |c: char| c.is_ascii_whitespace();
        // The device must be followed by whitespace, else the line is skipped.
        let Some((dev, rest)) = line.split_once(is_space) else {
            continue;
        };
        let mut fields = rest.split(is_space).filter(|s| !s.is_empty());
        if fields.next() != Some("/") {
            continue;
        }
        let Some(fstype) = fields.next() else {
            continue;
        };
        let options = fields.next()?;
        return Some((dev.to_owned(), fstype.to_owned(), options.to_owned()));
    }
    None
}

/// Apply `getrootmount`: nothing if `vfs.root.mountfrom` is set; else from
/// fstab (if readable), else a `zfs:` current device.
pub fn apply(env: &mut Env, fstab: Option<&[u8]>) {
    if env.get("vfs.root.mountfrom").is_some() {
        return;
    }
    if let Some((dev, fstype, options)) = fstab.and_then(parse_fstab) {
        env.set("vfs.root.mountfrom", &format!("{fstype}:{dev}"));
        env.set_default("vfs.root.mountfrom.options", &options);
        return;
    }
    let dev = env
        .get("rootdev")
        .or_else(|| env.get("currdev"))
        .unwrap_or("")
        .to_owned();
    if dev.starts_with("zfs:") {
        env.set("vfs.root.mountfrom", dev.trim_end_matches(':'));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fstab_rules() {
        let t = b"# Device Mountpoint FStype Options Dump Pass#\n\n/dev/vtbd0p3 none swap sw 0 0\n/dev/vtbd0p2\t/\tufs\trw\t1\t1\n/dev/x / zfs ro 0 0\n";
        assert_eq!(
            parse_fstab(t),
            Some(("/dev/vtbd0p2".into(), "ufs".into(), "rw".into()))
        );
        assert_eq!(parse_fstab(b"/dev/a /usr ufs rw\n"), None);
        // A root line without options stops the search (options are mandatory).
        assert_eq!(parse_fstab(b"/dev/a / ufs\n/dev/b / ufs rw\n"), None);
        assert_eq!(parse_fstab(b"/dev/a /  ufs  \n/dev/b / ufs rw\n"), None);
        let mut e = Env::new();
        e.set("vfs.root.mountfrom.options", "ro");
        apply(&mut e, Some(t));
        assert_eq!(e.get("vfs.root.mountfrom"), Some("ufs:/dev/vtbd0p2"));
        assert_eq!(e.get("vfs.root.mountfrom.options"), Some("ro"));
        let mut e = Env::new();
        e.set("vfs.root.mountfrom", "cd9660:/dev/cd0");
        apply(&mut e, Some(t));
        assert_eq!(e.get("vfs.root.mountfrom"), Some("cd9660:/dev/cd0"));
        let mut e = Env::new();
        e.set("currdev", "zfs:zroot/ROOT/default:");
        apply(&mut e, None);
        assert_eq!(e.get("vfs.root.mountfrom"), Some("zfs:zroot/ROOT/default"));
    }
}
