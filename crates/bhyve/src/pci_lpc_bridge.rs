//! The LPC bridge's PCI face (`amd64/pci_lpc.c`): a PIIX3 ISA bridge
//! identity whose config bytes 0x60–0x63 and 0x68–0x6B are the PIRQA–H
//! routing registers of the router in pci_irq.rs.  Its COM ports are in
//! pci_lpc.rs.

use std::sync::Arc;

use crate::pci_emul::{PciDevice, PciFunction};
use crate::pci_irq::PciIrq;

pub const LPC_IDS: (u16, u16) = (0x8086, 0x7000);
/// Bridge, ISA.
pub const CLASS_BRIDGE: u8 = 0x06;
pub const SUBCLASS_ISA: u8 = 0x01;

/// PIRQ link (1..=8) of a config offset.
fn pirq_pin(off: usize) -> Option<u8> {
    match off {
        0x60..=0x63 => Some((off - 0x60 + 1) as u8),
        0x68..=0x6b => Some((off - 0x68 + 5) as u8),
        _ => None,
    }
}

struct LpcBridge {
    irq: Arc<PciIrq>,
}

impl PciDevice for LpcBridge {
    /// The registers read as the router holds them.
    fn cfg_byte(&self, off: usize) -> Option<u8> {
        pirq_pin(off).map(|p| self.irq.pirq_read(p))
    }

    /// Only byte writes reach the router (`pci_lpc_cfgwrite`); wider ones
    /// fall to config space like any other register.
    fn cfg_write(&mut self, off: usize, len: usize, val: u32) -> bool {
        match pirq_pin(off) {
            Some(p) if len == 1 => {
                self.irq.pirq_write(p, val as u8);
                true
            }
            _ => false,
        }
    }
}

pub fn new(slot: u8, func: u8, irq: Arc<PciIrq>) -> PciFunction {
    PciFunction::new(
        slot,
        func,
        "lpc",
        LPC_IDS,
        (CLASS_BRIDGE, SUBCLASS_ISA, 0),
        Box::new(LpcBridge { irq }),
    )
}
