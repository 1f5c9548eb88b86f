//! Guest memory layout, as libvmmapi's `vm_setup_memory` lays it out: lowmem
//! up to 3 GiB at guest-physical 0, the rest from 4 GiB up, the hole between
//! for MMIO.  The instance's memory file holds lowmem then highmem back to
//! back, so the hole costs nothing.

use crate::error::{Error, Result};

pub const KB: u64 = 1024;
pub const MB: u64 = 1024 * KB;
pub const GB: u64 = 1024 * MB;

/// `VM_LOWMEM_LIMIT`.
pub const LOWMEM_LIMIT: u64 = 3 * GB;
/// Where highmem starts.
pub const HIGHMEM_BASE: u64 = 4 * GB;
/// Memory sizes are rounded to 2 MiB, as bhyvectl's --set-mem does.
pub const MEM_ALIGN: u64 = 2 * MB;
/// Largest guest we accept (bhyve's is bounded by the host; keep gpa math
/// far from overflow).
pub const MAX_MEM: u64 = 1 << 40;

/// The two RAM ranges of a guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MemLayout {
    pub lowmem: u64,
    pub highmem: u64,
}

impl MemLayout {
    /// The split rule of `vm_setup_memory`.
    pub fn new(size: u64) -> Result<Self> {
        if size == 0 {
            return Err(Error::BadMemSize {
                size,
                why: "must not be zero",
            });
        }
        if size > MAX_MEM {
            return Err(Error::BadMemSize {
                size,
                why: "larger than 1 TiB",
            });
        }
        if size % MEM_ALIGN != 0 {
            return Err(Error::BadMemSize {
                size,
                why: "not a multiple of 2 MiB",
            });
        }
        let lowmem = size.min(LOWMEM_LIMIT);
        Ok(MemLayout {
            lowmem,
            highmem: size - lowmem,
        })
    }

    pub fn size(&self) -> u64 {
        self.lowmem + self.highmem
    }

    /// Offset in the memory file of `[gpa, gpa+len)`, if it lies wholly in
    /// one RAM range (what `vm_map_gpa` checks).
    pub fn gpa_to_offset(&self, gpa: u64, len: u64) -> Option<u64> {
        let end = gpa.checked_add(len)?;
        if end <= self.lowmem {
            return Some(gpa);
        }
        let hend = HIGHMEM_BASE.checked_add(self.highmem)?;
        if gpa >= HIGHMEM_BASE && end <= hend {
            return Some(self.lowmem + (gpa - HIGHMEM_BASE));
        }
        None
    }

    /// The RAM ranges as (gpa, len, file offset).
    pub fn ranges(&self) -> Vec<(u64, u64, u64)> {
        let mut v = vec![(0, self.lowmem, 0)];
        if self.highmem != 0 {
            v.push((HIGHMEM_BASE, self.highmem, self.lowmem));
        }
        v
    }
}

/// `vm_parse_memsize`: a plain number below 1 MiB means MiB, otherwise
/// `expand_number` syntax (K/M/G/T, either case, optional trailing B).
pub fn parse_memsize(s: &str) -> Option<u64> {
    let s = s.trim();
    let t = s.strip_suffix(['b', 'B']).unwrap_or(s);
    let (num, mult) = match t.chars().last()? {
        'k' | 'K' => (&t[..t.len() - 1], KB),
        'm' | 'M' => (&t[..t.len() - 1], MB),
        'g' | 'G' => (&t[..t.len() - 1], GB),
        't' | 'T' => (&t[..t.len() - 1], 1024 * GB),
        _ if t.len() != s.len() => return None,
        _ => (t, 1),
    };
    let n: u64 = num.parse().ok()?;
    let v = n.checked_mul(mult)?;
    if mult == 1 && v < MB {
        return v.checked_mul(MB);
    }
    Some(v)
}

/// Human size as FreeBSD's humanize_number prints it in bhyvectl (e.g. `512M`).
pub fn humanize(n: u64) -> String {
    for (unit, div) in [("T", 1024 * GB), ("G", GB), ("M", MB), ("K", KB)] {
        if n >= div && n % div == 0 {
            return format!("{}{unit}", n / div);
        }
    }
    format!("{n}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_rule() {
        assert_eq!(
            MemLayout::new(512 * MB).unwrap(),
            MemLayout {
                lowmem: 512 * MB,
                highmem: 0
            }
        );
        assert_eq!(
            MemLayout::new(3 * GB).unwrap(),
            MemLayout {
                lowmem: 3 * GB,
                highmem: 0
            }
        );
        let l = MemLayout::new(4 * GB + 512 * MB).unwrap();
        assert_eq!((l.lowmem, l.highmem), (3 * GB, GB + 512 * MB));
        assert_eq!(l.size(), 4 * GB + 512 * MB);
    }

    #[test]
    fn bad_sizes() {
        assert!(MemLayout::new(0).is_err());
        assert!(MemLayout::new(MB).is_err());
        assert!(MemLayout::new(MAX_MEM + MEM_ALIGN).is_err());
    }

    #[test]
    fn gpa_translation() {
        let l = MemLayout::new(4 * GB + 512 * MB).unwrap();
        assert_eq!(l.gpa_to_offset(0, 4096), Some(0));
        assert_eq!(l.gpa_to_offset(3 * GB - 8, 8), Some(3 * GB - 8));
        assert_eq!(
            l.gpa_to_offset(3 * GB - 8, 16),
            None,
            "crosses into the hole"
        );
        assert_eq!(l.gpa_to_offset(3 * GB, 1), None, "in the hole");
        assert_eq!(l.gpa_to_offset(4 * GB, 8), Some(3 * GB));
        assert_eq!(
            l.gpa_to_offset(4 * GB + GB + 512 * MB - 1, 1),
            Some(4 * GB + 512 * MB - 1)
        );
        assert_eq!(l.gpa_to_offset(4 * GB + GB + 512 * MB, 1), None);
        assert_eq!(l.gpa_to_offset(u64::MAX, 2), None, "overflow");
        let small = MemLayout::new(256 * MB).unwrap();
        assert_eq!(small.gpa_to_offset(4 * GB, 1), None);
        assert_eq!(small.ranges(), vec![(0, 256 * MB, 0)]);
        assert_eq!(l.ranges().len(), 2);
    }

    #[test]
    fn memsize_parsing() {
        assert_eq!(parse_memsize("1024"), Some(GB));
        assert_eq!(parse_memsize("512M"), Some(512 * MB));
        assert_eq!(parse_memsize("1g"), Some(GB));
        assert_eq!(parse_memsize("2G"), Some(2 * GB));
        assert_eq!(parse_memsize("4194304"), Some(4 * MB), ">= 1 MiB is bytes");
        assert_eq!(parse_memsize("1T"), Some(1024 * GB));
        assert_eq!(parse_memsize("512MB"), Some(512 * MB));
        assert_eq!(parse_memsize(""), None);
        assert_eq!(parse_memsize("abc"), None);
        assert_eq!(parse_memsize("12Q"), None);
        assert_eq!(parse_memsize("99999999999999999999G"), None);
        assert_eq!(parse_memsize("-1"), None);
    }

    #[test]
    fn humanized() {
        assert_eq!(humanize(512 * MB), "512M");
        assert_eq!(humanize(GB), "1G");
        assert_eq!(humanize(3 * GB + MB), "3073M");
        assert_eq!(humanize(5), "5");
    }
}
