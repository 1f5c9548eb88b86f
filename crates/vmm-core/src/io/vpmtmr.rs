//! ACPI PM timer (`vpmtmr.c`): a free-running 32-bit counter at
//! 3.579545 MHz on port 0x408, counting from VM creation.  bhyve never sets
//! PM1 TMR_STS, so there is no overflow interrupt to model.

use std::time::Instant;

/// PM_TMR_BLK (FADT, `acpi.h` IO_PMTMR).
pub const IO_PMTMR: u16 = 0x408;
/// Counter frequency in Hz.
pub const PMTMR_FREQ: u64 = 3_579_545;

/// The only access bhyve accepts is a 4-byte IN; anything else fails the
/// vCPU exit (`vpmtmr_handler` returns -1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PmTimerError {
    #[error(
        "ACPI PM timer (port {IO_PMTMR:#x}): {size}-byte {dir} rejected; only 4-byte reads are allowed"
    )]
    BadAccess { size: usize, dir: &'static str },
}

#[derive(Debug, Clone, Copy)]
pub struct Vpmtmr {
    base: Instant,
}

impl Vpmtmr {
    /// `vpmtmr_init`: the counter reads 0 at `now`.
    pub fn new(now: Instant) -> Self {
        Vpmtmr { base: now }
    }

    /// Ticks since creation, truncated to 32 bits.
    pub fn value(&self, now: Instant) -> u32 {
        let ns = now.saturating_duration_since(self.base).as_nanos();
        // u128 cannot overflow here: ns < 2^96 for any Duration.
        (ns * u128::from(PMTMR_FREQ) / 1_000_000_000) as u32
    }

    /// An IN from port 0x408.
    pub fn read(&self, data: &mut [u8], now: Instant) -> Result<(), PmTimerError> {
        let Ok(out) = <&mut [u8; 4]>::try_from(&mut *data) else {
            return Err(PmTimerError::BadAccess {
                size: data.len(),
                dir: "read",
            });
        };
        *out = self.value(now).to_le_bytes();
        Ok(())
    }

    /// An OUT to port 0x408: always refused, as in bhyve.
    pub fn write(&self, data: &[u8]) -> Result<(), PmTimerError> {
        Err(PmTimerError::BadAccess {
            size: data.len(),
            dir: "write",
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn counts_at_pm_timer_rate() {
        let t0 = Instant::now();
        let t = Vpmtmr::new(t0);
        assert_eq!(t.value(t0), 0);
        assert_eq!(t.value(t0 + Duration::from_secs(1)), 3_579_545);
        assert_eq!(t.value(t0 + Duration::from_millis(1)), 3_579);
        // A clock that seems to go backwards reads as zero, not garbage.
        assert_eq!(t.value(t0 - Duration::from_secs(1)), 0);
    }

    #[test]
    fn wraps_at_32_bits() {
        let t0 = Instant::now();
        let t = Vpmtmr::new(t0);
        // 2^32 ticks take about 1199.86 s: 1200 s is 4_295_454_000 ticks.
        assert_eq!(t.value(t0 + Duration::from_secs(1200)), 486_704);
    }

    #[test]
    fn only_4_byte_reads() {
        let t0 = Instant::now();
        let t = Vpmtmr::new(t0);
        let mut d4 = [0xAAu8; 4];
        t.read(&mut d4, t0 + Duration::from_secs(1)).unwrap();
        assert_eq!(u32::from_le_bytes(d4), 3_579_545);
        let mut d2 = [0u8; 2];
        assert_eq!(
            t.read(&mut d2, t0),
            Err(PmTimerError::BadAccess {
                size: 2,
                dir: "read"
            })
        );
        let mut d1 = [0u8; 1];
        assert!(t.read(&mut d1, t0).is_err());
        assert!(t.write(&[0, 0, 0, 0]).is_err());
    }
}
