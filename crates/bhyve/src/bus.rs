//! The traits every emulated device implements, and how devices raise
//! interrupts.  Devices are pure state machines: they see port / MMIO accesses
//! and, where they need one, an interrupt line; they never see KVM.  That is
//! what lets each device be unit-tested by feeding it accesses.

use std::sync::Arc;

use vmmapi::Suspend;

/// A device reached through I/O ports (bhyve's `inout` handlers).
/// `port` is the absolute port; `data.len()` is 1, 2 or 4.  Returning
/// `false` refuses the access (a bhyve handler returning -1, e.g. a 16-bit
/// register read with `inb`): bhyve aborts the VM on it.
pub trait PioDevice: Send {
    fn pio_read(&mut self, port: u16, data: &mut [u8]) -> bool;
    fn pio_write(&mut self, port: u16, data: &[u8]) -> bool;
}

/// A device reached through guest-physical MMIO (bhyve's `mem` handlers).
/// `addr` is the absolute guest-physical address.
pub trait MmioDevice: Send {
    fn mmio_read(&mut self, addr: u64, data: &mut [u8]);
    fn mmio_write(&mut self, addr: u64, data: &[u8]);
}

/// An interrupt line into the interrupt controllers: an ISA IRQ / IO-APIC pin
/// (bhyve's `vm_isa_assert_irq`, `vm_ioapic_pulse_irq`, ...).
pub trait IrqLine: Send + Sync {
    fn assert(&self);
    fn deassert(&self);
    /// Edge: assert then deassert.
    fn pulse(&self) {
        self.assert();
        self.deassert();
    }
}

/// Sends an MSI (address/data as the guest programmed them).
pub trait MsiSender: Send + Sync {
    fn send_msi(&self, addr: u64, data: u32);
}

/// A shareable interrupt line.
pub type Irq = Arc<dyn IrqLine>;

/// Stops the VM (`vm_suspend`): how reset and power-off devices end a run.
pub type Suspender = Arc<dyn Fn(Suspend) + Send + Sync>;
