//! The COM ports (`amd64/pci_lpc.c` `lpc_uart_*`): a 16550 (uart_emul.rs)
//! at an ISA port range and IRQ, with an optional backend
//! (uart_backend.rs) whose input is served on the event loop (bhyve's
//! mevent callback `uart_drain`).
//!
//! The LPC bridge registers COM1–COM4 at their ISA resources whether or not
//! a backend is configured.  The 2013 legacy PCI UART (`-S 31,uart,stdio`)
//! is the same port behind a PCI function whose BAR0 and INTx are fixed on
//! COM1's and then COM2's resources (pci_uart.rs).

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use crate::bus::{Irq, PioDevice};
use crate::mevent::{Mevent, MeventId};
use crate::uart_backend::{Input, UartBackend};
use crate::uart_emul::{Effects, FIFOSZ, UartEmul};

/// ISA resources of a COM port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ComRes {
    pub name: &'static str,
    pub base: u16,
    pub irq: u32,
}

/// `uart_lres` / `lpc_uart_names`: COM1..COM4.
pub const COM_PORTS: [ComRes; 4] = [
    ComRes {
        name: "com1",
        base: 0x3f8,
        irq: 4,
    },
    ComRes {
        name: "com2",
        base: 0x2f8,
        irq: 3,
    },
    ComRes {
        name: "com3",
        base: 0x3e8,
        irq: 4,
    },
    ComRes {
        name: "com4",
        base: 0x2e8,
        irq: 3,
    },
];

/// `UART_IO_BAR_SIZE`: eight registers.
pub const UART_IO_BAR_SIZE: u16 = 8;

/// How a port drives its IRQ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// LPC ports: an ISA edge pulse every time an access leaves an interrupt
    /// reason pending (`lpc_uart_intr_assert`; deassert is a no-op).
    Edge,
    /// The PCI UART's INTx: asserted while a reason exists.
    Level,
}

/// A COM port as the guest sees it.
pub struct ComPort {
    name: String,
    base: u16,
    uart: UartEmul,
    backend: Option<Arc<UartBackend>>,
    irq: Irq,
    trigger: Trigger,
}

impl std::fmt::Debug for ComPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComPort")
            .field("name", &self.name)
            .field("base", &self.base)
            .field("trigger", &self.trigger)
            .finish_non_exhaustive()
    }
}

impl ComPort {
    pub fn new(
        name: &str,
        base: u16,
        irq: Irq,
        trigger: Trigger,
        backend: Option<Arc<UartBackend>>,
    ) -> ComPort {
        ComPort {
            name: name.to_string(),
            base,
            uart: UartEmul::new(),
            backend,
            irq,
            trigger,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn base(&self) -> u16 {
        self.base
    }

    fn apply(&mut self, fx: Effects) {
        if let (Some(b), Some(be)) = (fx.tx, &self.backend) {
            be.write(b);
        } // else: no backend, the byte drops on the floor as in bhyve.
        if let Some(be) = &self.backend {
            if fx.rx_flush {
                be.flush();
            }
            if fx.rx_resume {
                be.wake();
            }
        }
        match self.trigger {
            Trigger::Edge if fx.intr => self.irq.pulse(),
            Trigger::Edge => {}
            Trigger::Level if fx.intr_changed && fx.intr => self.irq.assert(),
            Trigger::Level if fx.intr_changed => self.irq.deassert(),
            Trigger::Level => {}
        }
    }

    /// A BREAK on this port's line (`bhyvectl --send-break`).
    pub fn send_break(&mut self) {
        let fx = self.uart.rx_break();
        self.apply(fx);
    }

    /// Whether the reader should look at host input now: not while the
    /// RX FIFO is full (bhyve's implicit flow control).
    fn wants_input(&self) -> bool {
        self.uart.loopback() || self.uart.rx_room() > 0
    }

    /// `uart_drain`: move host input into the RX FIFO.
    pub fn drain(&mut self) {
        let Some(be) = self.backend.clone() else {
            return;
        };
        if self.uart.loopback() {
            // In loopback the line is disconnected: input is dropped.
            let _ = be.read(&mut [0u8; 1]);
            return;
        }
        let mut buf = [0u8; FIFOSZ];
        loop {
            let room = self.uart.rx_room();
            if room == 0 {
                break;
            }
            match be.read(&mut buf[..room]) {
                Input::Bytes(n) => {
                    for &b in &buf[..n] {
                        self.uart.rx_put(b);
                    }
                }
                Input::Empty | Input::Closed => break,
            }
        }
        let fx = self.uart.input_done();
        self.apply(fx);
    }
}

impl PioDevice for ComPort {
    /// `lpc_uart_io_handler`: byte accesses, or 16-bit ones as two
    /// consecutive registers.
    fn pio_read(&mut self, port: u16, data: &mut [u8]) -> bool {
        if data.len() > 2 {
            return false;
        }
        let off = port.wrapping_sub(self.base) as u8;
        for (i, d) in data.iter_mut().enumerate() {
            let (v, fx) = self.uart.read(off.wrapping_add(i as u8));
            *d = v;
            self.apply(fx);
        }
        true
    }

    fn pio_write(&mut self, port: u16, data: &[u8]) -> bool {
        if data.len() > 2 {
            return false;
        }
        let off = port.wrapping_sub(self.base) as u8;
        for (i, &v) in data.iter().enumerate() {
            let fx = self.uart.write(off.wrapping_add(i as u8), v);
            self.apply(fx);
        }
        true
    }
}

fn lock(p: &Mutex<ComPort>) -> MutexGuard<'_, ComPort> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

/// Serve `port`'s backend input on the event loop (`uart_drain`): host
/// input is drained into the RX FIFO while it has room; a full FIFO
/// disables the input event until the UART asks for more (its
/// `rx_resume` signals the backend's wake fd); ended input removes the
/// event.  Input epoll cannot watch (a regular file on stdin) is drained
/// on the wakes alone, which is enough as it never blocks.
pub fn start_reader(
    port: Arc<Mutex<ComPort>>,
    backend: Arc<UartBackend>,
    mevent: &Arc<Mevent>,
) -> std::io::Result<()> {
    let input: Arc<OnceLock<MeventId>> = Arc::default();
    let (p, be, me, id) = (
        port.clone(),
        backend.clone(),
        Arc::downgrade(mevent),
        input.clone(),
    );
    let rx = mevent.add_read(backend.input_fd(), move || {
        let mut c = lock(&p);
        if c.wants_input() {
            c.drain();
        }
        let (Some(&id), Some(me)) = (id.get(), me.upgrade()) else {
            return;
        };
        if be.rx_closed() {
            me.delete(id);
        } else if !c.wants_input() {
            me.set_enabled(id, false);
        }
    });
    let rx = match rx {
        Ok(id) => {
            let _ = input.set(id);
            Some(id)
        }
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => None,
        Err(e) => return Err(e),
    };
    let (me, be) = (Arc::downgrade(mevent), backend.clone());
    mevent.add_read(backend.wake_fd(), move || {
        be.clear_wakes();
        let mut c = lock(&port);
        if c.wants_input() {
            c.drain();
        }
        if let (Some(rx), Some(me)) = (rx, me.upgrade()) {
            if !be.rx_closed() && c.wants_input() {
                me.set_enabled(rx, true);
            }
        }
    })?;
    // The first look at input.
    backend.wake();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::IrqLine;
    use crate::uart_emul::*;

    /// Records what happened to the line.
    #[derive(Default)]
    pub struct Line(pub Mutex<Vec<&'static str>>);
    impl IrqLine for Line {
        fn assert(&self) {
            self.0.lock().unwrap().push("assert");
        }
        fn deassert(&self) {
            self.0.lock().unwrap().push("deassert");
        }
    }
    impl Line {
        fn take(&self) -> Vec<&'static str> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    fn rd(c: &mut ComPort, port: u16) -> u8 {
        let mut b = [0u8];
        assert!(c.pio_read(port, &mut b));
        b[0]
    }

    #[test]
    fn com1_through_its_ports_edge_irq() {
        let line = Arc::new(Line::default());
        let mut c = ComPort::new("com1", 0x3f8, line.clone(), Trigger::Edge, None);
        assert_eq!(rd(&mut c, 0x3fd), LSR_THRE | LSR_TEMT);
        assert!(c.pio_write(0x3f8, b"x"), "no backend: dropped");
        assert!(line.take().is_empty(), "IER off: no interrupt");
        assert!(c.pio_write(0x3f9, &[IER_ETXRDY]));
        assert_eq!(line.take(), ["assert", "deassert"], "a pulse");
        // Every access that leaves the reason pending pulses again.
        rd(&mut c, 0x3fb);
        assert_eq!(line.take(), ["assert", "deassert"]);
        assert_eq!(rd(&mut c, 0x3fa), IIR_TXRDY);
        assert!(line.take().is_empty(), "acknowledged");
        // 16-bit access: two registers; 32-bit is refused.
        assert!(c.pio_write(0x3fb, &[LCR_DLAB, 0]));
        let mut w = [0u8; 2];
        assert!(c.pio_read(0x3f8, &mut w));
        assert_eq!(w, [1, 0], "divisor latch");
        assert!(!c.pio_read(0x3f8, &mut [0u8; 4]));
        assert!(!c.pio_write(0x3f8, &[0u8; 4]));
    }

    #[test]
    fn legacy_pci_uart_level_irq() {
        let line = Arc::new(Line::default());
        let mut c = ComPort::new("pci 0:31:0 uart", 0x3f8, line.clone(), Trigger::Level, None);
        c.pio_write(0x3f9, &[IER_ETXRDY]);
        assert_eq!(line.take(), ["assert"]);
        c.pio_write(0x3ff, &[1]);
        assert!(line.take().is_empty(), "held, not pulsed");
        assert_eq!(rd(&mut c, 0x3fa), IIR_TXRDY);
        assert_eq!(line.take(), ["deassert"]);
    }

    #[test]
    fn pty_input_reaches_the_fifo_and_output_the_pty() {
        use std::io::{Read, Write};
        let master = nix::pty::posix_openpt(nix::fcntl::OFlag::O_RDWR).unwrap();
        nix::pty::grantpt(&master).unwrap();
        nix::pty::unlockpt(&master).unwrap();
        let be = Arc::new(UartBackend::open(&nix::pty::ptsname_r(&master).unwrap()).unwrap());
        let mut m = std::fs::File::from(std::os::fd::OwnedFd::from(master));
        let line = Arc::new(Line::default());
        let c = Arc::new(Mutex::new(ComPort::new(
            "com2",
            0x2f8,
            line.clone(),
            Trigger::Edge,
            Some(be.clone()),
        )));
        c.lock().unwrap().pio_write(0x2f9, &[IER_ERXRDY]);
        let me = Mevent::start().unwrap();
        start_reader(c.clone(), be, &me).unwrap();
        m.write_all(b"ab").unwrap();
        let t = std::time::Instant::now();
        while rd(&mut c.lock().unwrap(), 0x2fd) & LSR_RXRDY == 0 {
            assert!(t.elapsed().as_secs() < 10, "input never arrived");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(line.take().contains(&"assert"), "RX interrupt");
        // One-byte FIFO: 'b' waits on the host until 'a' is read.
        assert_eq!(rd(&mut c.lock().unwrap(), 0x2f8), b'a');
        let t = std::time::Instant::now();
        while rd(&mut c.lock().unwrap(), 0x2fd) & LSR_RXRDY == 0 {
            assert!(t.elapsed().as_secs() < 10, "second byte never arrived");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(rd(&mut c.lock().unwrap(), 0x2f8), b'b');
        c.lock().unwrap().pio_write(0x2f8, b"!");
        let mut got = [0u8; 1];
        m.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"!");
    }
}
