//! Interrupts into the KVM VM: ISA IRQ lines for the user-space devices
//! (bhyve's `vm_isa_assert_irq`) and the [`IrqSink`] the vmm-core timers
//! raise theirs through (`vioapic_*_irq`, `lapic_intr_msi`).

use std::sync::Arc;

use vmmapi::Vm;
use vmmapi::vmm_io::IrqSink;

use crate::bus::IrqLine;

/// An ISA IRQ / IO-APIC pin of the KVM VM (`vm_isa_assert_irq`: KVM routes
/// GSIs 0–15 to both the PIC and the IO-APIC).
#[derive(Debug)]
pub struct IsaIrq {
    vm: Arc<Vm>,
    gsi: u32,
}

impl IsaIrq {
    pub fn new(vm: Arc<Vm>, gsi: u32) -> IsaIrq {
        IsaIrq { vm, gsi }
    }
}

impl IrqLine for IsaIrq {
    // Failure means the VM itself is gone; bhyve ignores these errors too.
    fn assert(&self) {
        let _ = self.vm.set_irq_line(self.gsi, true);
    }
    fn deassert(&self) {
        let _ = self.vm.set_irq_line(self.gsi, false);
    }
}

/// The timers' interrupt controller: KVM's in-kernel IO-APIC (24 pins,
/// the first 16 also wired to the 8259s) and local APICs.
#[derive(Debug)]
pub struct VmIrqSink {
    vm: Arc<Vm>,
}

impl VmIrqSink {
    pub fn new(vm: Arc<Vm>) -> VmIrqSink {
        VmIrqSink { vm }
    }
}

impl IrqSink for VmIrqSink {
    // As for `IsaIrq`: errors only mean the VM is gone.
    fn assert_irq(&self, gsi: u32) {
        let _ = self.vm.set_irq_line(gsi, true);
    }
    fn deassert_irq(&self, gsi: u32) {
        let _ = self.vm.set_irq_line(gsi, false);
    }
    fn send_msi(&self, addr: u64, data: u64) {
        // An MSI data word is 32 bits (the HPET keeps it in the low half of
        // its FSB route register).
        let _ = self.vm.send_msi(addr, data as u32);
    }
}
