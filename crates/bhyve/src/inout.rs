//! The I/O port bus (bhyve's `inout.c`): port ranges map to devices, each
//! behind its own lock, so vCPUs touching different devices never contend.
//! Unclaimed ports read as all ones and swallow writes, as on a PC; with
//! strict I/O (`-e`) they are reported instead.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use crate::bus::PioDevice;

pub type SharedPio = Arc<Mutex<dyn PioDevice>>;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InoutError {
    #[error("I/O ports {base:#x}-{end:#x} ({name}) overlap {other}")]
    Overlap {
        base: u16,
        end: u16,
        name: String,
        other: String,
    },
    #[error("empty I/O port range at {0:#x}")]
    Empty(u16),
}

/// Why an access was not done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unhandled {
    /// No device claims the port (the default handler's case).
    Unclaimed,
    /// The named device refused the access (wrong width or direction).
    Refused(Arc<str>),
}

struct Range {
    len: u16,
    name: Arc<str>,
    dev: SharedPio,
}

/// Port → device map.  Registration happens at setup and when the guest
/// moves an I/O BAR; lookups take a read lock only.
#[derive(Default)]
pub struct InoutBus {
    ranges: RwLock<BTreeMap<u16, Range>>,
}

impl std::fmt::Debug for InoutBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InoutBus").finish_non_exhaustive()
    }
}

impl InoutBus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Claim `[base, base+len)` for `dev`.
    pub fn register(
        &self,
        base: u16,
        len: u16,
        name: &str,
        dev: SharedPio,
    ) -> Result<(), InoutError> {
        if len == 0 {
            return Err(InoutError::Empty(base));
        }
        let end = base as u32 + len as u32 - 1;
        if end > 0xffff {
            return Err(InoutError::Overlap {
                base,
                end: 0xffff,
                name: name.into(),
                other: "the end of the port space".into(),
            });
        }
        let mut r = self.ranges.write().unwrap_or_else(|e| e.into_inner());
        for (&b, o) in r
            .range(..base)
            .next_back()
            .into_iter()
            .chain(r.range(base..=end as u16))
        {
            let oend = b as u32 + o.len as u32 - 1;
            if b as u32 <= end && oend >= base as u32 {
                return Err(InoutError::Overlap {
                    base,
                    end: end as u16,
                    name: name.into(),
                    other: o.name.to_string(),
                });
            }
        }
        r.insert(
            base,
            Range {
                len,
                name: Arc::from(name),
                dev,
            },
        );
        Ok(())
    }

    /// Release the range starting at `base` (a BAR moved or was disabled).
    pub fn unregister(&self, base: u16) {
        self.ranges
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&base);
    }

    fn find(&self, port: u16) -> Result<(SharedPio, Arc<str>), Unhandled> {
        let r = self.ranges.read().unwrap_or_else(|e| e.into_inner());
        let (&b, range) = r.range(..=port).next_back().ok_or(Unhandled::Unclaimed)?;
        if (port as u32) < b as u32 + range.len as u32 {
            Ok((range.dev.clone(), range.name.clone()))
        } else {
            Err(Unhandled::Unclaimed)
        }
    }

    /// Dispatch an IN.
    pub fn read(&self, port: u16, data: &mut [u8]) -> Result<(), Unhandled> {
        let (dev, name) = self.find(port)?;
        let ok = dev
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pio_read(port, data);
        if ok {
            Ok(())
        } else {
            Err(Unhandled::Refused(name))
        }
    }

    /// Dispatch an OUT.
    pub fn write(&self, port: u16, data: &[u8]) -> Result<(), Unhandled> {
        let (dev, name) = self.find(port)?;
        let ok = dev
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pio_write(port, data);
        if ok {
            Ok(())
        } else {
            Err(Unhandled::Refused(name))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Echo {
        last: Vec<(u16, Vec<u8>)>,
    }
    impl PioDevice for Echo {
        fn pio_read(&mut self, port: u16, data: &mut [u8]) -> bool {
            data.fill(port as u8);
            data.len() == 1
        }
        fn pio_write(&mut self, port: u16, data: &[u8]) -> bool {
            self.last.push((port, data.to_vec()));
            true
        }
    }

    #[test]
    fn dispatch_and_unclaimed() {
        let bus = InoutBus::new();
        let d = Arc::new(Mutex::new(Echo::default()));
        bus.register(0x3f8, 8, "com1", d.clone()).unwrap();
        let mut b = [0u8; 1];
        assert_eq!(bus.read(0x3fd, &mut b), Ok(()));
        assert_eq!(b[0], 0xfd);
        assert_eq!(bus.read(0x3f7, &mut b), Err(Unhandled::Unclaimed));
        assert_eq!(bus.read(0x400, &mut b), Err(Unhandled::Unclaimed));
        assert_eq!(
            bus.read(0x3f8, &mut [0u8; 2]),
            Err(Unhandled::Refused("com1".into()))
        );
        bus.write(0x3f8, &[7]).unwrap();
        assert_eq!(d.lock().unwrap().last, vec![(0x3f8, vec![7])]);
        bus.unregister(0x3f8);
        assert_eq!(bus.read(0x3f8, &mut b), Err(Unhandled::Unclaimed));
    }

    #[test]
    fn overlaps_are_refused() {
        let bus = InoutBus::new();
        let d = Arc::new(Mutex::new(Echo::default()));
        bus.register(0x3f8, 8, "com1", d.clone()).unwrap();
        for (b, l) in [(0x3f8, 1), (0x3f0, 9), (0x3ff, 4), (0x3f0, 0x20)] {
            assert!(
                matches!(
                    bus.register(b, l, "x", d.clone()),
                    Err(InoutError::Overlap { .. })
                ),
                "{b:#x}+{l}"
            );
        }
        bus.register(0x3f0, 8, "ok", d.clone()).unwrap();
        bus.register(0x400, 8, "ok2", d.clone()).unwrap();
        assert!(bus.register(0xfff0, 0x20, "wrap", d.clone()).is_err());
        assert_eq!(bus.register(0x10, 0, "e", d), Err(InoutError::Empty(0x10)));
    }
}
