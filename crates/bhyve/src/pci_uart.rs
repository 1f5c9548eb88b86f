//! The PCI 16550 (`pci_uart.c`): a SIIG CyberSerial identity FreeBSD's
//! puc/uart drivers know, the 16550 (uart_emul.rs, wrapped as the COM
//! port of pci_lpc.rs) in an 8-byte I/O BAR0, and INTx as its level
//! interrupt.
//!
//! A 2013 legacy one (`-S slot,uart[,backend]`) has BAR0 fixed at COM1's
//! ports (then COM2's) and its INTx on COM1's IRQ 4 (then COM2's IRQ 3),
//! as `pci_uart_legacy_res` gave them: the same function, so the guest
//! finds both a PCI UART and the standard COM port, one device.

use std::sync::{Arc, Mutex};

use crate::bus::PioDevice;
use crate::pci_emul::{BarDevice, BarKind, PciError, PciFunction, Plain};
use crate::pci_irq::PciIrq;
use crate::pci_lpc::{COM_PORTS, ComPort, ComRes, Trigger, UART_IO_BAR_SIZE};
use crate::uart_backend::UartBackend;

pub const UART_IDS: (u16, u16) = (0x131f, 0x2000);
/// Simple communications controller.
pub const CLASS_SIMPLECOMM: u8 = 0x07;

/// BAR0 offsets are register numbers: the port's base is 0.
impl BarDevice for ComPort {
    fn bar_read(&mut self, off: u64, data: &mut [u8]) -> bool {
        self.pio_read(off as u16, data)
    }
    fn bar_write(&mut self, off: u64, data: &[u8]) -> bool {
        self.pio_write(off as u16, data)
    }
}

/// The function, its UART (for the input thread) and the backend to
/// start that thread with.
pub type PciUart = (PciFunction, Arc<Mutex<ComPort>>, Option<Arc<UartBackend>>);

/// `pci_uart_lres`: the resources of the `n`th legacy UART — COM1's, then
/// COM2's, then none.
pub fn legacy_res(n: usize) -> Option<ComRes> {
    COM_PORTS.get(..2)?.get(n).copied()
}

/// A PCI UART; `legacy` fixes BAR0 and the interrupt on those COM
/// resources.
pub fn new(
    slot: u8,
    func: u8,
    irq: Arc<PciIrq>,
    legacy: Option<ComRes>,
    backend: Option<UartBackend>,
) -> Result<PciUart, PciError> {
    let mut f = PciFunction::new(
        slot,
        func,
        "uart",
        UART_IDS,
        (CLASS_SIMPLECOMM, 0, 0),
        Box::new(Plain),
    );
    let intx = match legacy {
        Some(res) => f.request_legacy_intx(irq, res.irq as u8),
        None => f.request_intx(irq),
    };
    let backend = backend.map(Arc::new);
    let port = Arc::new(Mutex::new(ComPort::new(
        f.name(),
        0,
        intx,
        Trigger::Level,
        backend.clone(),
    )));
    let size = UART_IO_BAR_SIZE.into();
    match legacy {
        Some(res) => f.add_fixed_bar(0, BarKind::Io, size, res.base.into(), port.clone())?,
        None => f.add_bar(0, BarKind::Io, size, port.clone())?,
    }
    Ok((f, port, backend))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci_irq::tests::Lines;
    use crate::uart_emul::{IER_ETXRDY, IIR_NOPEND, IIR_TXRDY, REG_IER, REG_IIR};
    use std::io::Read;

    #[test]
    fn pci_uart_thr_reaches_the_backend_and_intx_follows_iir() {
        let master = nix::pty::posix_openpt(nix::fcntl::OFlag::O_RDWR).unwrap();
        nix::pty::grantpt(&master).unwrap();
        nix::pty::unlockpt(&master).unwrap();
        let be = UartBackend::open(&nix::pty::ptsname_r(&master).unwrap()).unwrap();
        let mut m = std::fs::File::from(std::os::fd::OwnedFd::from(master));
        let lines = Arc::new(Lines::default());
        let irq = Arc::new(PciIrq::new(&lines.factory()));
        let (f, port, be) = new(4, 0, irq.clone(), None, Some(be)).unwrap();
        assert!(be.is_some());
        assert_eq!(f.intx_pin(), Some(0), "pin chosen by the bus");
        let routes = irq
            .route(&[crate::acpi::PciFunction {
                slot: 4,
                func: 0,
                intx: Some(1),
            }])
            .unwrap();
        let mut p = port.lock().unwrap();
        // Unrouted, the level is only remembered.
        assert!(p.bar_write(REG_IER.into(), &[IER_ETXRDY]));
        assert!(lines.take().is_empty());
        drop(p);
        f.intx().unwrap().set_route(routes[0]);
        assert_eq!(lines.take().get(&16), Some(&vec![true]));
        let mut p = port.lock().unwrap();
        let mut b = [0u8];
        assert!(p.bar_read(REG_IIR.into(), &mut b));
        assert_eq!(b[0], IIR_TXRDY);
        assert_eq!(lines.take().get(&16), Some(&vec![false]));
        assert!(p.bar_write(0, b"Z"));
        assert_eq!(lines.take().get(&16), Some(&vec![true]), "THRE again");
        let mut got = [0u8];
        m.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"Z");
        assert!(p.bar_read(REG_IIR.into(), &mut b));
        assert!(p.bar_read(REG_IIR.into(), &mut b));
        assert_eq!(b[0], IIR_NOPEND);
        assert!(!p.bar_read(0, &mut [0u8; 4]), "dword access refused");
    }
}
