//! bhyve's 16550 UART register model (`uart_emul.c`), as a pure state
//! machine: it sees register reads and writes and host input bytes, and
//! answers with what its owner must do (send a byte, drive the interrupt
//! line, flush or resume host input).  No threads, no fds: the LPC COM ports
//! and the legacy PCI UART wrap it (pci_lpc.rs) with a backend
//! (uart_backend.rs).

/// Register offsets (`dev/ic/ns16550.h`).
pub const REG_DATA: u8 = 0;
pub const REG_IER: u8 = 1;
pub const REG_IIR: u8 = 2; // read
pub const REG_FCR: u8 = 2; // write
pub const REG_LCR: u8 = 3;
pub const REG_MCR: u8 = 4;
pub const REG_LSR: u8 = 5;
pub const REG_MSR: u8 = 6;
pub const REG_SCR: u8 = 7;
/// With LCR.DLAB set, offsets 0 and 1 are the divisor latch.
pub const REG_DLL: u8 = 0;
pub const REG_DLH: u8 = 1;

pub const IER_ERXRDY: u8 = 0x01;
pub const IER_ETXRDY: u8 = 0x02;
pub const IER_ERLS: u8 = 0x04;
pub const IER_EMSC: u8 = 0x08;

pub const IIR_NOPEND: u8 = 0x01;
pub const IIR_MLSC: u8 = 0x00;
pub const IIR_TXRDY: u8 = 0x02;
pub const IIR_RLS: u8 = 0x06;
pub const IIR_RXTOUT: u8 = 0x0c;
pub const IIR_FIFO_MASK: u8 = 0xc0;

pub const FCR_ENABLE: u8 = 0x01;
pub const FCR_RCV_RST: u8 = 0x02;
pub const FCR_DMA: u8 = 0x08;
pub const FCR_RX_MASK: u8 = 0xc0;

pub const LCR_DLAB: u8 = 0x80;

pub const MCR_DTR: u8 = 0x01;
pub const MCR_RTS: u8 = 0x02;
pub const MCR_OUT1: u8 = 0x04;
pub const MCR_OUT2: u8 = 0x08;
pub const MCR_LOOPBACK: u8 = 0x10;

pub const LSR_RXRDY: u8 = 0x01;
pub const LSR_OE: u8 = 0x02;
pub const LSR_BI: u8 = 0x10;
pub const LSR_THRE: u8 = 0x20;
pub const LSR_TEMT: u8 = 0x40;

pub const MSR_DCTS: u8 = 0x01;
pub const MSR_DDSR: u8 = 0x02;
pub const MSR_TERI: u8 = 0x04;
pub const MSR_DDCD: u8 = 0x08;
pub const MSR_CTS: u8 = 0x10;
pub const MSR_DSR: u8 = 0x20;
pub const MSR_RI: u8 = 0x40;
pub const MSR_DCD: u8 = 0x80;
const MSR_DELTA_MASK: u8 = 0x0f;

/// RX FIFO depth once software enables the FIFO (1 before that).
pub const FIFOSZ: usize = 16;

/// Reset divisor: 1.8432 MHz clock at 115200 baud (newest uart_emul.c).
const DEFAULT_RCLK: u32 = 1_843_200;
const DEFAULT_BAUD: u32 = 115_200;

/// What the owner must do after an access or after host input.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Effects {
    /// A byte the guest transmitted: send it to the backend.
    pub tx: Option<u8>,
    /// The interrupt line as `uart_toggle_intr` leaves it: true while an
    /// interrupt reason exists.
    pub intr: bool,
    /// `intr` differs from its value before this access.
    pub intr_changed: bool,
    /// The RX FIFO was reset: discard input already queued on the host.
    pub rx_flush: bool,
    /// The RX FIFO had been full and has room again (or was reset): read
    /// host input again (bhyve's `mevent_enable`).
    pub rx_resume: bool,
}

#[derive(Debug, Clone)]
struct Fifo {
    buf: [u8; FIFOSZ],
    rindex: usize,
    num: usize,
    size: usize,
}

impl Fifo {
    fn new(size: usize) -> Fifo {
        Fifo {
            buf: [0; FIFOSZ],
            rindex: 0,
            num: 0,
            size,
        }
    }
    fn put(&mut self, b: u8) -> bool {
        if self.num == self.size {
            return false;
        }
        self.buf[(self.rindex + self.num) % self.size] = b;
        self.num += 1;
        true
    }
    fn get(&mut self) -> Option<u8> {
        if self.num == 0 {
            return None;
        }
        let b = self.buf[self.rindex];
        self.rindex = (self.rindex + 1) % self.size;
        self.num -= 1;
        Some(b)
    }
}

/// One 16550 (`struct uart_softc`).
#[derive(Debug, Clone)]
pub struct UartEmul {
    ier: u8,
    lcr: u8,
    mcr: u8,
    lsr: u8,
    msr: u8,
    fcr: u8,
    scr: u8,
    dll: u8,
    dlh: u8,
    rxfifo: Fifo,
    thre_int_pending: bool,
    /// The line as last reported, to tell the owner about changes.
    intr: bool,
}

impl Default for UartEmul {
    fn default() -> Self {
        Self::new()
    }
}

/// MSR as the modem lines make it (`modem_status`).
fn modem_status(mcr: u8) -> u8 {
    if mcr & MCR_LOOPBACK != 0 {
        // Loopback reflects the modem outputs back into the inputs.
        let mut msr = 0;
        if mcr & MCR_RTS != 0 {
            msr |= MSR_CTS;
        }
        if mcr & MCR_DTR != 0 {
            msr |= MSR_DSR;
        }
        if mcr & MCR_OUT1 != 0 {
            msr |= MSR_RI;
        }
        if mcr & MCR_OUT2 != 0 {
            msr |= MSR_DCD;
        }
        msr
    } else {
        // Carrier and DSR always up, so a guest's tty open never blocks
        // even without CLOCAL.
        MSR_DCD | MSR_DSR
    }
}

impl UartEmul {
    /// A UART after `uart_reset`.
    pub fn new() -> UartEmul {
        let divisor = DEFAULT_RCLK / DEFAULT_BAUD / 16;
        UartEmul {
            ier: 0,
            lcr: 0,
            mcr: 0,
            lsr: 0,
            msr: modem_status(0),
            fcr: 0,
            scr: 0,
            dll: divisor as u8,
            dlh: (divisor >> 8) as u8,
            // No FIFO until software enables it.
            rxfifo: Fifo::new(1),
            thre_int_pending: false,
            intr: false,
        }
    }

    pub fn loopback(&self) -> bool {
        self.mcr & MCR_LOOPBACK != 0
    }

    /// Free RX FIFO slots: how much host input to take now.
    pub fn rx_room(&self) -> usize {
        self.rxfifo.size - self.rxfifo.num
    }

    /// `uart_intr_reason`: the highest-priority pending reason.
    fn intr_reason(&self) -> u8 {
        if self.lsr & (LSR_OE | LSR_BI) != 0 && self.ier & IER_ERLS != 0 {
            IIR_RLS
        } else if self.rxfifo.num > 0 && self.ier & IER_ERXRDY != 0 {
            // bhyve reports received data as a timeout, so drivers drain
            // the whole FIFO.
            IIR_RXTOUT
        } else if self.thre_int_pending && self.ier & IER_ETXRDY != 0 {
            IIR_TXRDY
        } else if self.msr & MSR_DELTA_MASK != 0 && self.ier & IER_EMSC != 0 {
            IIR_MLSC
        } else {
            IIR_NOPEND
        }
    }

    /// `uart_toggle_intr`, folded into the effects of an access.
    fn finish(&mut self, mut fx: Effects) -> Effects {
        let intr = self.intr_reason() != IIR_NOPEND;
        fx.intr = intr;
        fx.intr_changed = intr != self.intr;
        self.intr = intr;
        fx
    }

    fn rxfifo_reset(&mut self, size: usize, fx: &mut Effects) {
        self.rxfifo = Fifo::new(size);
        fx.rx_flush = true;
        fx.rx_resume = true;
    }

    /// Host input (`uart_drain` for one byte).  Returns false when the FIFO
    /// is full; the caller stops reading until told to resume.  Call
    /// [`UartEmul::input_done`] after a batch.
    pub fn rx_put(&mut self, b: u8) -> bool {
        self.rxfifo.put(b)
    }

    /// A BREAK on the line: a NUL character with LSR.BI, and the line
    /// status interrupt if enabled, as a 16550 receives one.  Nothing in
    /// loopback, where the line is disconnected.
    pub fn rx_break(&mut self) -> Effects {
        if !self.loopback() {
            if !self.rxfifo.put(0) {
                self.lsr |= LSR_OE;
            }
            self.lsr |= LSR_BI;
        }
        self.finish(Effects::default())
    }

    /// After a batch of host input: re-evaluate the interrupt.
    pub fn input_done(&mut self) -> Effects {
        self.finish(Effects::default())
    }

    /// A guest register write (`uart_write`).
    pub fn write(&mut self, offset: u8, value: u8) -> Effects {
        let mut fx = Effects::default();
        if self.lcr & LCR_DLAB != 0 && (offset == REG_DLL || offset == REG_DLH) {
            if offset == REG_DLL {
                self.dll = value;
            } else {
                self.dlh = value;
            }
            return self.finish(fx);
        }
        match offset {
            REG_DATA => {
                if self.loopback() {
                    if !self.rxfifo.put(value) {
                        self.lsr |= LSR_OE;
                    }
                } else {
                    fx.tx = Some(value);
                }
                self.thre_int_pending = true;
            }
            REG_IER => {
                // THRE is always reported ready, so enabling its interrupt
                // raises one at once.
                if self.ier & IER_ETXRDY == 0 && value & IER_ETXRDY != 0 {
                    self.thre_int_pending = true;
                }
                self.ier = value & 0x0f;
            }
            REG_FCR => {
                // Switching between 16450 and FIFO mode resets the FIFO.
                if (self.fcr ^ value) & FCR_ENABLE != 0 {
                    let size = if value & FCR_ENABLE != 0 { FIFOSZ } else { 1 };
                    self.rxfifo_reset(size, &mut fx);
                }
                // The other bits only take effect with the FIFO enabled.
                if value & FCR_ENABLE == 0 {
                    self.fcr = 0;
                } else {
                    if value & FCR_RCV_RST != 0 {
                        self.rxfifo_reset(FIFOSZ, &mut fx);
                    }
                    self.fcr = value & (FCR_ENABLE | FCR_DMA | FCR_RX_MASK);
                }
            }
            REG_LCR => self.lcr = value,
            REG_MCR => {
                self.mcr = value & 0x1f;
                let msr = modem_status(self.mcr);
                // A change of a modem input sets its delta bit.
                if (msr ^ self.msr) & MSR_CTS != 0 {
                    self.msr |= MSR_DCTS;
                }
                if (msr ^ self.msr) & MSR_DSR != 0 {
                    self.msr |= MSR_DDSR;
                }
                if (msr ^ self.msr) & MSR_DCD != 0 {
                    self.msr |= MSR_DDCD;
                }
                if self.msr & MSR_RI != 0 && msr & MSR_RI == 0 {
                    self.msr |= MSR_TERI;
                }
                self.msr = (self.msr & MSR_DELTA_MASK) | msr;
            }
            // LSR and MSR are read-only.
            REG_LSR | REG_MSR => {}
            REG_SCR => self.scr = value,
            _ => {}
        }
        self.finish(fx)
    }

    /// A guest register read (`uart_read`).
    pub fn read(&mut self, offset: u8) -> (u8, Effects) {
        let mut fx = Effects::default();
        if self.lcr & LCR_DLAB != 0 && (offset == REG_DLL || offset == REG_DLH) {
            let v = if offset == REG_DLL {
                self.dll
            } else {
                self.dlh
            };
            return (v, self.finish(fx));
        }
        let v = match offset {
            REG_DATA => {
                let was_full = self.rx_room() == 0;
                match self.rxfifo.get() {
                    Some(b) => {
                        fx.rx_resume = was_full;
                        b
                    }
                    // uart_emul.c returns -1 truncated to a byte.
                    None => 0xff,
                }
            }
            REG_IER => self.ier,
            REG_IIR => {
                let reason = self.intr_reason();
                // Reading IIR acknowledges a THRE interrupt.
                if reason == IIR_TXRDY {
                    self.thre_int_pending = false;
                }
                let fifo = if self.fcr & FCR_ENABLE != 0 {
                    IIR_FIFO_MASK
                } else {
                    0
                };
                fifo | reason
            }
            REG_LCR => self.lcr,
            REG_MCR => self.mcr,
            REG_LSR => {
                // The transmitter is always ready.
                self.lsr |= LSR_TEMT | LSR_THRE;
                if self.rxfifo.num > 0 {
                    self.lsr |= LSR_RXRDY;
                } else {
                    self.lsr &= !LSR_RXRDY;
                }
                let v = self.lsr;
                // Error bits clear when read.
                self.lsr &= !(LSR_OE | LSR_BI);
                v
            }
            REG_MSR => {
                let v = self.msr;
                self.msr &= !MSR_DELTA_MASK;
                v
            }
            REG_SCR => self.scr,
            _ => 0xff,
        };
        (v, self.finish(fx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rd(u: &mut UartEmul, off: u8) -> u8 {
        u.read(off).0
    }

    #[test]
    fn reset_state() {
        let mut u = UartEmul::new();
        assert_eq!(rd(&mut u, REG_IER), 0);
        assert_eq!(rd(&mut u, REG_IIR), IIR_NOPEND);
        assert_eq!(rd(&mut u, REG_LCR), 0);
        assert_eq!(rd(&mut u, REG_MCR), 0);
        assert_eq!(rd(&mut u, REG_LSR), LSR_THRE | LSR_TEMT);
        assert_eq!(rd(&mut u, REG_MSR), MSR_DCD | MSR_DSR);
        assert_eq!(rd(&mut u, REG_DATA), 0xff, "empty RBR");
        u.write(REG_LCR, LCR_DLAB);
        assert_eq!(rd(&mut u, REG_DLL), 1, "115200 baud");
        assert_eq!(rd(&mut u, REG_DLH), 0);
    }

    #[test]
    fn divisor_latch_and_scratch() {
        let mut u = UartEmul::new();
        u.write(REG_IER, 0x05);
        u.write(REG_LCR, LCR_DLAB | 0x03);
        u.write(REG_DLL, 0x0c);
        u.write(REG_DLH, 0x00);
        assert_eq!(rd(&mut u, REG_DLL), 0x0c);
        assert_eq!(rd(&mut u, REG_DLH), 0);
        let fx = u.write(REG_DATA, b'x');
        assert_eq!(fx.tx, None, "DLAB write is the divisor, not THR");
        u.write(REG_LCR, 0x03);
        assert_eq!(rd(&mut u, REG_IER), 0x05, "IER kept behind the latch");
        assert_eq!(rd(&mut u, REG_LCR), 0x03);
        u.write(REG_SCR, 0xa5);
        assert_eq!(rd(&mut u, REG_SCR), 0xa5);
        u.write(REG_IER, 0xff);
        assert_eq!(rd(&mut u, REG_IER), 0x0f, "IER keeps bits 3:0");
        u.write(REG_MCR, 0xff);
        assert_eq!(rd(&mut u, REG_MCR), 0x1f, "MCR keeps bits 4:0");
        u.write(REG_LSR, 0);
        assert_eq!(rd(&mut u, REG_LSR), LSR_THRE | LSR_TEMT, "LSR read-only");
    }

    #[test]
    fn transmit_and_thre_interrupt() {
        let mut u = UartEmul::new();
        let fx = u.write(REG_DATA, b'h');
        assert_eq!(fx.tx, Some(b'h'));
        assert!(!fx.intr, "THRE interrupt disabled");
        // Enabling ETXRDY raises THRE at once (THRE pending from the write).
        let fx = u.write(REG_IER, IER_ETXRDY);
        assert!(fx.intr && fx.intr_changed);
        let (iir, fx) = u.read(REG_IIR);
        assert_eq!(iir, IIR_TXRDY);
        assert!(!fx.intr && fx.intr_changed, "IIR read acknowledges THRE");
        assert_eq!(rd(&mut u, REG_IIR), IIR_NOPEND);
        let fx = u.write(REG_DATA, b'i');
        assert_eq!(fx.tx, Some(b'i'));
        assert!(fx.intr && fx.intr_changed);
        // Re-enabling ETXRDY when already on does not re-arm.
        u.read(REG_IIR);
        let fx = u.write(REG_IER, IER_ETXRDY);
        assert!(!fx.intr);
        // Off then on re-arms.
        u.write(REG_IER, 0);
        assert!(u.write(REG_IER, IER_ETXRDY).intr);
    }

    #[test]
    fn receive_fifo_and_priorities() {
        let mut u = UartEmul::new();
        assert_eq!(u.rx_room(), 1, "16450 mode until FCR enables the FIFO");
        assert!(u.rx_put(b'a'));
        assert!(!u.rx_put(b'b'), "one-byte holding register");
        assert!(!u.input_done().intr, "RX interrupt disabled");
        let fx = u.write(REG_IER, IER_ERXRDY | IER_ETXRDY);
        assert!(fx.intr);
        // RX data outranks THRE, and is reported as a timeout.
        assert_eq!(rd(&mut u, REG_IIR), IIR_RXTOUT);
        assert_eq!(rd(&mut u, REG_LSR) & LSR_RXRDY, LSR_RXRDY);
        let (b, fx) = u.read(REG_DATA);
        assert_eq!(b, b'a');
        assert!(fx.rx_resume, "room again after a full FIFO");
        assert_eq!(rd(&mut u, REG_IIR), IIR_TXRDY);
        assert_eq!(rd(&mut u, REG_IIR), IIR_NOPEND);
        assert_eq!(rd(&mut u, REG_LSR) & LSR_RXRDY, 0);

        // FIFO mode: 16 bytes, IIR shows the FIFO bits.
        let fx = u.write(REG_FCR, FCR_ENABLE | FCR_RX_MASK);
        assert!(fx.rx_flush && fx.rx_resume);
        assert_eq!(u.rx_room(), FIFOSZ);
        for i in 0..FIFOSZ as u8 {
            assert!(u.rx_put(i));
        }
        assert!(!u.rx_put(99));
        assert!(u.input_done().intr);
        assert_eq!(rd(&mut u, REG_IIR), IIR_FIFO_MASK | IIR_RXTOUT);
        for i in 0..FIFOSZ as u8 {
            let (b, fx) = u.read(REG_DATA);
            assert_eq!(b, i);
            assert_eq!(fx.rx_resume, i == 0);
        }
        assert_eq!(rd(&mut u, REG_IIR), IIR_FIFO_MASK | IIR_NOPEND);

        // RX reset empties it; FCR keeps only enable, DMA, trigger.
        u.rx_put(1);
        let fx = u.write(REG_FCR, 0xff);
        assert!(fx.rx_flush);
        assert_eq!(rd(&mut u, REG_LSR) & LSR_RXRDY, 0);
        assert_eq!(rd(&mut u, REG_IIR) & IIR_FIFO_MASK, IIR_FIFO_MASK);
        // Disabling the FIFO goes back to one byte and clears FCR.
        let fx = u.write(REG_FCR, 0x40);
        assert!(fx.rx_flush);
        assert_eq!(u.rx_room(), 1);
        assert_eq!(rd(&mut u, REG_IIR) & IIR_FIFO_MASK, 0);
        // Writing FCR again without a mode change does not flush.
        assert!(!u.write(REG_FCR, 0).rx_flush);
    }

    #[test]
    fn loopback_overrun_and_line_status_priority() {
        let mut u = UartEmul::new();
        u.write(REG_MCR, MCR_LOOPBACK);
        assert!(u.loopback());
        let fx = u.write(REG_DATA, b'L');
        assert_eq!(fx.tx, None, "loopback keeps TX off the wire");
        u.write(REG_DATA, b'M');
        u.write(REG_IER, IER_ERLS | IER_ERXRDY);
        // Overrun outranks data.
        assert_eq!(rd(&mut u, REG_IIR), IIR_RLS);
        let lsr = rd(&mut u, REG_LSR);
        assert_eq!(lsr & (LSR_OE | LSR_RXRDY), LSR_OE | LSR_RXRDY);
        assert_eq!(rd(&mut u, REG_LSR) & LSR_OE, 0, "OE cleared by the read");
        assert_eq!(rd(&mut u, REG_IIR), IIR_RXTOUT);
        assert_eq!(rd(&mut u, REG_DATA), b'L');
    }

    /// A BREAK arrives as a NUL with LSR.BI and a line status interrupt;
    /// BI clears when LSR is read; in loopback nothing arrives.
    #[test]
    fn break_on_the_line() {
        let mut u = UartEmul::new();
        u.write(REG_IER, IER_ERLS | IER_ERXRDY);
        let fx = u.rx_break();
        assert!(fx.intr && fx.intr_changed);
        assert_eq!(rd(&mut u, REG_IIR), IIR_RLS);
        assert_eq!(
            rd(&mut u, REG_LSR) & (LSR_BI | LSR_RXRDY),
            LSR_BI | LSR_RXRDY
        );
        assert_eq!(rd(&mut u, REG_LSR) & LSR_BI, 0, "BI cleared by the read");
        assert_eq!(rd(&mut u, REG_DATA), 0);
        assert_eq!(rd(&mut u, REG_IIR), IIR_NOPEND);
        u.write(REG_MCR, MCR_LOOPBACK);
        u.rx_break();
        assert_eq!(rd(&mut u, REG_LSR) & (LSR_BI | LSR_RXRDY), 0);
    }

    #[test]
    fn modem_status_deltas() {
        let mut u = UartEmul::new();
        u.write(REG_IER, IER_EMSC);
        // Entering loopback with all outputs low drops DCD and DSR.
        let fx = u.write(REG_MCR, MCR_LOOPBACK);
        assert!(fx.intr);
        assert_eq!(rd(&mut u, REG_IIR), IIR_MLSC);
        assert_eq!(rd(&mut u, REG_MSR), MSR_DDSR | MSR_DDCD);
        assert_eq!(rd(&mut u, REG_MSR), 0, "deltas cleared by the read");
        assert_eq!(rd(&mut u, REG_IIR), IIR_NOPEND);
        // RTS→CTS, DTR→DSR, OUT1→RI, OUT2→DCD.
        u.write(
            REG_MCR,
            MCR_LOOPBACK | MCR_RTS | MCR_DTR | MCR_OUT1 | MCR_OUT2,
        );
        assert_eq!(
            rd(&mut u, REG_MSR),
            MSR_CTS | MSR_DSR | MSR_RI | MSR_DCD | MSR_DCTS | MSR_DDSR | MSR_DDCD
        );
        // RI falling edge sets TERI; a rising one does not.
        u.write(REG_MCR, MCR_LOOPBACK | MCR_RTS | MCR_DTR | MCR_OUT2);
        assert_eq!(rd(&mut u, REG_MSR), MSR_CTS | MSR_DSR | MSR_DCD | MSR_TERI);
        // Leaving loopback: DCD and DSR up, CTS down.
        u.write(REG_MCR, 0);
        assert_eq!(rd(&mut u, REG_MSR), MSR_DCD | MSR_DSR | MSR_DCTS);
    }
}
