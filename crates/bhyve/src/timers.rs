//! The timers bhyve has in vmm.ko and KVM lacks, on bhyve's buses: the ACPI
//! PM timer (port 0x408), the RTC/CMOS (ports 0x70–0x71) and the HPET (MMIO
//! at 0xFED00000).  The models are vmm-core's; here they get the host clock
//! and, for those with deadlines, the timer thread's [`Waker`].

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use vmmapi::vmm_io::IrqSink;
use vmmapi::vmm_io::vhpet::{VHPET_BASE, Vhpet};
use vmmapi::vmm_io::vpmtmr::Vpmtmr;
use vmmapi::vmm_io::vrtc::{self, Vrtc};

use crate::bus::{MmioDevice, PioDevice};
use crate::callout::{Timed, Waker};

/// KVM's in-kernel IO-APIC has 24 pins (bhyve's 32): the HPET may route
/// to GSIs 20–23.
pub const IOAPIC_PINS: u32 = 24;

/// ACPI PM timer: only a 4-byte IN is accepted, anything else is refused
/// (`vpmtmr_handler` fails the exit).
#[derive(Debug)]
pub struct PmTimer(Vpmtmr);

impl PmTimer {
    /// Counts from `created`, the VM's creation.
    pub fn new(created: Instant) -> PmTimer {
        PmTimer(Vpmtmr::new(created))
    }
}

impl PioDevice for PmTimer {
    fn pio_read(&mut self, _port: u16, data: &mut [u8]) -> bool {
        self.0.read(data, Instant::now()).is_ok()
    }
    fn pio_write(&mut self, _port: u16, data: &[u8]) -> bool {
        self.0.write(data).is_ok()
    }
}

/// Whatever a guest access does to a timer, wake the timer thread if the
/// device's next deadline moved.
fn access<T: Timed, R>(dev: &mut T, waker: &Waker, f: impl FnOnce(&mut T) -> R) -> R {
    let before = dev.next_deadline();
    let r = f(dev);
    if dev.next_deadline() != before {
        waker.kick();
    }
    r
}

/// The RTC time bhyve's `rtc_init` sets: host time, local unless `-u`.
pub fn host_rtc_time(use_localtime: bool) -> i64 {
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    vrtc::rtc_time(unix, use_localtime, vrtc::host_utc_offset(unix))
}

/// MC146818 RTC and CMOS.  Wrong sizes, and a guest clearing SET over an
/// invalid date, are refused: bhyve stops the VM on both.
#[derive(Debug)]
pub struct Rtc {
    rtc: Vrtc,
    waker: Arc<Waker>,
}

impl Rtc {
    /// The clock reads `rtc_secs` now; the CMOS memory cells describe
    /// `lowmem` and `highmem` (`rtc_init`).
    pub fn new(
        irq: Arc<dyn IrqSink>,
        rtc_secs: i64,
        lowmem: u64,
        highmem: u64,
        waker: Arc<Waker>,
    ) -> Rtc {
        let mut rtc = Vrtc::new(irq, rtc_secs, Instant::now());
        rtc.set_memory_size(lowmem, highmem);
        Rtc { rtc, waker }
    }
}

impl Timed for Rtc {
    fn next_deadline(&self) -> Option<Instant> {
        self.rtc.next_deadline()
    }
    fn tick(&mut self, now: Instant) {
        self.rtc.tick(now);
    }
}

impl PioDevice for Rtc {
    fn pio_read(&mut self, port: u16, data: &mut [u8]) -> bool {
        let waker = self.waker.clone();
        access(self, &waker, |d| d.rtc.pio_read(port, data, Instant::now())).is_ok()
    }
    fn pio_write(&mut self, port: u16, data: &[u8]) -> bool {
        let waker = self.waker.clone();
        access(self, &waker, |d| {
            d.rtc.pio_write(port, data, Instant::now())
        })
        .is_ok()
    }
}

/// The HPET register block.
#[derive(Debug)]
pub struct Hpet {
    hpet: Vhpet,
    waker: Arc<Waker>,
}

impl Hpet {
    pub fn new(irq: Arc<dyn IrqSink>, waker: Arc<Waker>) -> Hpet {
        Hpet {
            hpet: Vhpet::new(irq, IOAPIC_PINS, Instant::now()),
            waker,
        }
    }
}

impl Timed for Hpet {
    fn next_deadline(&self) -> Option<Instant> {
        self.hpet.next_deadline()
    }
    fn tick(&mut self, now: Instant) {
        self.hpet.tick(now);
    }
}

impl MmioDevice for Hpet {
    fn mmio_read(&mut self, addr: u64, data: &mut [u8]) {
        // Reads move no deadline.
        self.hpet
            .read(addr.wrapping_sub(VHPET_BASE), data, Instant::now());
    }
    fn mmio_write(&mut self, addr: u64, data: &[u8]) {
        let waker = self.waker.clone();
        access(self, &waker, |d| {
            d.hpet
                .write(addr.wrapping_sub(VHPET_BASE), data, Instant::now())
        });
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;

    /// Records the timers' interrupts.
    #[derive(Debug, Default)]
    pub(crate) struct Irqs(pub Mutex<Vec<String>>);

    impl IrqSink for Irqs {
        fn assert_irq(&self, gsi: u32) {
            self.0.lock().unwrap().push(format!("assert {gsi}"));
        }
        fn deassert_irq(&self, gsi: u32) {
            self.0.lock().unwrap().push(format!("deassert {gsi}"));
        }
        fn pulse_irq(&self, gsi: u32) {
            self.0.lock().unwrap().push(format!("pulse {gsi}"));
        }
        fn send_msi(&self, addr: u64, data: u64) {
            self.0
                .lock()
                .unwrap()
                .push(format!("msi {addr:#x} {data:#x}"));
        }
    }

    fn kicked(w: &Waker) -> bool {
        std::mem::take(&mut w.state_for_test().kicked)
    }

    #[test]
    fn pm_timer_counts_and_takes_only_4_byte_reads() {
        let mut t = PmTimer::new(Instant::now());
        let mut a = [0u8; 4];
        assert!(t.pio_read(0x408, &mut a));
        std::thread::sleep(Duration::from_millis(2));
        let mut b = [0u8; 4];
        assert!(t.pio_read(0x408, &mut b));
        assert!(u32::from_le_bytes(b) > u32::from_le_bytes(a));
        assert!(!t.pio_read(0x408, &mut [0u8; 2]));
        assert!(!t.pio_write(0x408, &[0; 4]));
    }

    #[test]
    fn rtc_date_memory_cells_and_periodic_deadline_wake() {
        let irqs = Arc::new(Irqs::default());
        let waker = Arc::new(Waker::default());
        // 2024-02-29 13:45:30 UTC; 512 MiB, nothing above 4 GiB.
        let mut r = Rtc::new(irqs.clone(), 1_709_214_330, 512 << 20, 0, waker.clone());
        let cmos = |r: &mut Rtc, i: u8| {
            assert!(r.pio_write(0x70, &[i]));
            let mut b = [0u8];
            assert!(r.pio_read(0x71, &mut b));
            b[0]
        };
        assert_eq!(
            [cmos(&mut r, 9), cmos(&mut r, 8), cmos(&mut r, 7)],
            [0x24, 0x02, 0x29]
        );
        assert_eq!(cmos(&mut r, 0x32), 0x20);
        assert_eq!(cmos(&mut r, 0x0d), 0x80);
        // (512 - 16) MiB in 64 KiB blocks = 0x1f00.
        assert_eq!([cmos(&mut r, 0x34), cmos(&mut r, 0x35)], [0x00, 0x1f]);
        assert!(!kicked(&waker), "reading moves no deadline");
        assert!(!r.pio_read(0x71, &mut [0u8; 2]), "1-byte accesses only");
        // Periodic interrupts at 1024 Hz: a deadline appears, the thread
        // is woken, and a tick past it raises IRQ 8.
        assert!(r.pio_write(0x70, &[0x0a]) && r.pio_write(0x71, &[0x26]));
        assert!(r.pio_write(0x70, &[0x0b]) && r.pio_write(0x71, &[0x42]));
        assert!(kicked(&waker));
        let d = r.next_deadline().expect("periodic deadline");
        r.tick(d);
        assert_eq!(*irqs.0.lock().unwrap(), ["pulse 8"]);
    }

    #[test]
    fn hpet_at_its_base_routes_to_gsi_20_to_23() {
        let irqs = Arc::new(Irqs::default());
        let waker = Arc::new(Waker::default());
        let mut h = Hpet::new(irqs.clone(), waker.clone());
        let mut r8 = [0u8; 8];
        h.mmio_read(VHPET_BASE, &mut r8);
        assert_eq!(u64::from_le_bytes(r8), 0x05F5_E100_8086_0701);
        h.mmio_read(VHPET_BASE + 0x100, &mut r8);
        assert_eq!(u64::from_le_bytes(r8) >> 32, 0x00F0_0000);
        // Timer 0: edge, enabled, routed to GSI 20; comparator 1000 ticks.
        h.mmio_write(VHPET_BASE + 0x100, &((20u32 << 9) | 4).to_le_bytes());
        h.mmio_write(VHPET_BASE + 0x108, &1000u32.to_le_bytes());
        assert!(!kicked(&waker), "counter stopped: no deadline yet");
        h.mmio_write(VHPET_BASE + 0x10, &1u32.to_le_bytes());
        assert!(kicked(&waker));
        let d = h.next_deadline().expect("timer 0 armed");
        h.tick(d);
        assert_eq!(*irqs.0.lock().unwrap(), ["pulse 20"]);
    }
}
