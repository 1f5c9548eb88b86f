//! The timers and devices bhyve keeps in vmm.ko that KVM lacks:
//! HPET (`vhpet.c`), ACPI PM timer (`vpmtmr.c`), and later RTC/CMOS (`vrtc.c`).
//!
//! Each is a pure state machine: time comes in as an [`Instant`] argument
//! (so tests are deterministic) and interrupts go out through [`IrqSink`].
//! The timers that fire on their own (HPET, RTC) expose
//! `next_deadline()` / `tick(now)`: the caller sleeps until the deadline on
//! a timer thread and calls `tick`; after any guest access it re-reads the
//! deadline, since an access can move it.
//!
//! [`Instant`]: std::time::Instant

pub mod vhpet;
pub mod vpmtmr;
pub mod vrtc;

/// Where these devices send interrupts: global system interrupts (I/O APIC
/// pins; under KVM an ISA GSI below 16 also reaches the 8259, which is what
/// vrtc's paired `vatpic_pulse_irq` + `vioapic_pulse_irq` wants) and MSIs.
pub trait IrqSink: Send + Sync {
    /// `vioapic_assert_irq`: raise a level-triggered line.
    fn assert_irq(&self, gsi: u32);
    /// `vioapic_deassert_irq`.
    fn deassert_irq(&self, gsi: u32);
    /// `vioapic_pulse_irq`: an edge.
    fn pulse_irq(&self, gsi: u32) {
        self.assert_irq(gsi);
        self.deassert_irq(gsi);
    }
    /// `lapic_intr_msi`: address and data as the guest programmed them.
    fn send_msi(&self, addr: u64, data: u64);
}

#[cfg(test)]
pub(crate) mod testutil {
    use std::sync::Mutex;

    use super::IrqSink;

    /// What a device did to its interrupt lines, in order.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum IrqEvent {
        Assert(u32),
        Deassert(u32),
        Pulse(u32),
        Msi(u64, u64),
    }

    /// Records every interrupt a device raises.
    #[derive(Debug, Default)]
    pub struct Recorder(Mutex<Vec<IrqEvent>>);

    impl Recorder {
        /// The events so far, clearing the log.
        pub fn take(&self) -> Vec<IrqEvent> {
            std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
        }
        fn push(&self, e: IrqEvent) {
            self.0.lock().unwrap_or_else(|e| e.into_inner()).push(e);
        }
    }

    impl IrqSink for Recorder {
        fn assert_irq(&self, gsi: u32) {
            self.push(IrqEvent::Assert(gsi));
        }
        fn deassert_irq(&self, gsi: u32) {
            self.push(IrqEvent::Deassert(gsi));
        }
        fn pulse_irq(&self, gsi: u32) {
            self.push(IrqEvent::Pulse(gsi));
        }
        fn send_msi(&self, addr: u64, data: u64) {
            self.push(IrqEvent::Msi(addr, data));
        }
    }
}
