//! The MMIO bus (bhyve's `mem.c`): guest-physical ranges map to devices,
//! each behind its own lock.  Accesses nobody claims fall to bhyve's "PCI
//! hole" behaviour: reads return all ones, writes are dropped.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use crate::bus::MmioDevice;

pub type SharedMmio = Arc<Mutex<dyn MmioDevice>>;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MemError {
    #[error("MMIO range {base:#x}+{len:#x} ({name}) overlaps {other}")]
    Overlap {
        base: u64,
        len: u64,
        name: String,
        other: String,
    },
    #[error("bad MMIO range {base:#x}+{len:#x} ({name})")]
    Bad { base: u64, len: u64, name: String },
}

struct Range {
    len: u64,
    name: String,
    dev: SharedMmio,
}

#[derive(Default)]
pub struct MemBus {
    ranges: RwLock<BTreeMap<u64, Range>>,
}

impl std::fmt::Debug for MemBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemBus").finish_non_exhaustive()
    }
}

impl MemBus {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn register(
        &self,
        base: u64,
        len: u64,
        name: &str,
        dev: SharedMmio,
    ) -> Result<(), MemError> {
        let last = match len.checked_sub(1).and_then(|l| base.checked_add(l)) {
            Some(l) => l,
            None => {
                return Err(MemError::Bad {
                    base,
                    len,
                    name: name.into(),
                });
            }
        };
        let mut r = self.ranges.write().unwrap_or_else(|e| e.into_inner());
        for (&b, o) in r
            .range(..base)
            .next_back()
            .into_iter()
            .chain(r.range(base..=last))
        {
            let olast = b + (o.len - 1);
            if b <= last && olast >= base {
                return Err(MemError::Overlap {
                    base,
                    len,
                    name: name.into(),
                    other: o.name.clone(),
                });
            }
        }
        r.insert(
            base,
            Range {
                len,
                name: name.into(),
                dev,
            },
        );
        Ok(())
    }

    pub fn unregister(&self, base: u64) {
        self.ranges
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&base);
    }

    fn find(&self, addr: u64) -> Option<SharedMmio> {
        let r = self.ranges.read().unwrap_or_else(|e| e.into_inner());
        let (&b, range) = r.range(..=addr).next_back()?;
        (addr - b < range.len).then(|| range.dev.clone())
    }

    /// Dispatch a read; `None` when nobody claims the address.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> Option<()> {
        let dev = self.find(addr)?;
        dev.lock()
            .unwrap_or_else(|e| e.into_inner())
            .mmio_read(addr, data);
        Some(())
    }

    /// Dispatch a write; `None` when nobody claims the address.
    pub fn write(&self, addr: u64, data: &[u8]) -> Option<()> {
        let dev = self.find(addr)?;
        dev.lock()
            .unwrap_or_else(|e| e.into_inner())
            .mmio_write(addr, data);
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Reg(u64);
    impl MmioDevice for Reg {
        fn mmio_read(&mut self, addr: u64, data: &mut [u8]) {
            let v = (self.0 + addr).to_le_bytes();
            let n = data.len().min(8);
            data[..n].copy_from_slice(&v[..n]);
        }
        fn mmio_write(&mut self, _addr: u64, data: &[u8]) {
            self.0 = data[0].into();
        }
    }

    #[test]
    fn dispatch_overlap_unclaimed() {
        let bus = MemBus::new();
        let d = Arc::new(Mutex::new(Reg(0)));
        bus.register(0xfed0_0000, 0x400, "hpet", d.clone()).unwrap();
        let mut b = [0u8; 4];
        bus.read(0xfed0_0010, &mut b).unwrap();
        assert_eq!(u32::from_le_bytes(b), 0xfed0_0010);
        assert!(bus.read(0xfed0_0400, &mut b).is_none());
        assert!(bus.read(0xfecf_ffff, &mut b).is_none());
        assert!(bus.register(0xfed0_03ff, 2, "x", d.clone()).is_err());
        assert!(
            bus.register(0xfec0_0000, 0x1_0000_0000, "x", d.clone())
                .is_err()
        );
        assert!(bus.register(u64::MAX, 2, "x", d.clone()).is_err());
        assert!(bus.register(0, 0, "x", d.clone()).is_err());
        bus.write(0xfed0_0000, &[5]).unwrap();
        bus.read(0xfed0_0000, &mut b).unwrap();
        assert_eq!(u32::from_le_bytes(b), 0xfed0_0005);
        bus.unregister(0xfed0_0000);
        assert!(bus.read(0xfed0_0000, &mut b).is_none());
    }
}
