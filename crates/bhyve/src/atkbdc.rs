//! The i8042 keyboard controller (`amd64/atkbdc.c`) at ports 0x60/0x64:
//! status register, controller RAM and command byte, the controller
//! commands, its output port and output buffer, IRQ 1, and the reset line
//! (0xFE to port 0x64 resets the VM, bhyve exits 0).
//!
//! bhyve's PS/2 keyboard and mouse (`ps2kbd.c`, `ps2mouse.c`) feed it from
//! the VNC console, which bhyve-rs does not have: no device answers behind
//! the controller, so bytes written for the keyboard or the mouse go
//! nowhere, as with nothing plugged into the ports.

use vmmapi::Suspend;

use crate::bus::{Irq, PioDevice, Suspender};

pub const KBD_DATA_PORT: u16 = 0x60;
pub const KBD_STS_CTL_PORT: u16 = 0x64;
/// IRQ of the keyboard port.
pub const KBD_DEV_IRQ: u32 = 1;

// Controller commands.
pub const KBDC_SET_COMMAND_BYTE: u8 = 0x60;
pub const KBDC_GET_COMMAND_BYTE: u8 = 0x20;
pub const KBDC_DISABLE_AUX_PORT: u8 = 0xa7;
pub const KBDC_ENABLE_AUX_PORT: u8 = 0xa8;
pub const KBDC_TEST_AUX_PORT: u8 = 0xa9;
pub const KBDC_TEST_CTRL: u8 = 0xaa;
pub const KBDC_TEST_KBD_PORT: u8 = 0xab;
pub const KBDC_DISABLE_KBD_PORT: u8 = 0xad;
pub const KBDC_ENABLE_KBD_PORT: u8 = 0xae;
pub const KBDC_READ_INPORT: u8 = 0xc0;
pub const KBDC_READ_OUTPORT: u8 = 0xd0;
pub const KBDC_WRITE_OUTPORT: u8 = 0xd1;
pub const KBDC_WRITE_KBD_OUTBUF: u8 = 0xd2;
pub const KBDC_WRITE_AUX_OUTBUF: u8 = 0xd3;
pub const KBDC_WRITE_TO_AUX: u8 = 0xd4;
pub const KBDC_RESET: u8 = 0xfe;

// Command byte (RAM byte 0).
pub const KBD_TRANSLATION: u8 = 0x40;
pub const KBD_DISABLE_AUX_PORT: u8 = 0x20;
pub const KBD_DISABLE_KBD_PORT: u8 = 0x10;
pub const KBD_SYS_FLAG_BIT: u8 = 0x04;
pub const KBD_ENABLE_KBD_INT: u8 = 0x01;

// Status register.
pub const KBDS_KBD_BUFFER_FULL: u8 = 0x01;
pub const KBDS_SYS_FLAG: u8 = 0x04;
pub const KBDS_CTRL_FLAG: u8 = 0x08;
pub const KBDS_AUX_BUFFER_FULL: u8 = 0x20;

// Output port.
pub const KBDO_KBD_OUTFULL: u8 = 0x10;
pub const KBDO_AUX_OUTFULL: u8 = 0x20;

const RAMSZ: usize = 32;
const FIFOSZ: usize = 15;
/// Marks `ctrlbyte` as holding a response (so a 0 response is visible).
const CTRL_CMD_FLAG: u16 = 0x8000;

pub struct Atkbdc {
    status: u8,
    outport: u8,
    /// Byte 0 is the command byte.
    ram: [u8; RAMSZ],
    /// The controller command waiting for its data byte.
    curcmd: u8,
    /// A controller response waiting to be read from the data port.
    ctrlbyte: u16,
    /// The keyboard output buffer.
    kbd: std::collections::VecDeque<u8>,
    kbd_irq: Irq,
    suspend: Suspender,
}

impl std::fmt::Debug for Atkbdc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Atkbdc")
            .field("status", &self.status)
            .field("command_byte", &self.ram[0])
            .finish_non_exhaustive()
    }
}

impl Atkbdc {
    pub fn new(kbd_irq: Irq, suspend: Suspender) -> Atkbdc {
        Atkbdc {
            status: 0,
            outport: 0,
            ram: [0; RAMSZ],
            curcmd: 0,
            ctrlbyte: 0,
            kbd: std::collections::VecDeque::with_capacity(FIFOSZ),
            kbd_irq,
            suspend,
        }
    }

    fn assert_kbd_intr(&self) {
        if self.ram[0] & KBD_ENABLE_KBD_INT != 0 {
            self.kbd_irq.pulse();
        }
    }

    fn kbd_queue(&mut self, v: u8) {
        if self.kbd.len() < FIFOSZ {
            self.kbd.push_back(v);
            self.status |= KBDS_KBD_BUFFER_FULL;
            self.outport |= KBDO_KBD_OUTFULL;
        }
    }

    /// `atkbdc_poll` with no PS/2 device: only queued bytes can interrupt.
    fn poll(&self) {
        if !self.kbd.is_empty() {
            self.assert_kbd_intr();
        }
    }

    /// `atkbdc_dequeue_data`.
    fn dequeue(&mut self) -> u8 {
        let mut v = 0;
        if let Some(b) = self.kbd.pop_front() {
            v = b;
            if self.kbd.is_empty() {
                self.status &= !KBDS_KBD_BUFFER_FULL;
                self.outport &= !KBDO_KBD_OUTFULL;
            }
            self.poll();
        }
        if self.kbd.is_empty() {
            self.status &= !(KBDS_AUX_BUFFER_FULL | KBDS_KBD_BUFFER_FULL);
        }
        v
    }

    /// `atkbdc_data_handler`.
    fn data(&mut self, inp: bool, v: u8) -> u8 {
        if inp {
            self.curcmd = 0;
            let r = if self.ctrlbyte != 0 {
                // As in bhyve, the output-full bit stays up after a
                // controller response; the next read clears it.
                let r = self.ctrlbyte as u8;
                self.ctrlbyte = 0;
                r
            } else {
                self.dequeue()
            };
            self.status &= !KBDS_CTRL_FLAG;
            return r;
        }
        if self.status & KBDS_CTRL_FLAG != 0 {
            // The data byte of a controller command.
            match self.curcmd {
                KBDC_SET_COMMAND_BYTE => {
                    self.ram[0] = v;
                    if v & KBD_SYS_FLAG_BIT != 0 {
                        self.status |= KBDS_SYS_FLAG;
                    } else {
                        self.status &= !KBDS_SYS_FLAG;
                    }
                }
                KBDC_WRITE_OUTPORT => self.outport = v,
                KBDC_WRITE_KBD_OUTBUF => self.kbd_queue(v),
                // For the mouse, which is not there.
                KBDC_WRITE_TO_AUX | KBDC_WRITE_AUX_OUTBUF => {}
                // RAM writes 0x61..0x7f never get here: as in bhyve, those
                // commands do not wait for a data byte.
                _ => {}
            }
            self.curcmd = 0;
            self.status &= !KBDS_CTRL_FLAG;
        }
        // Otherwise a byte for the keyboard, which is not there.
        0
    }

    /// `atkbdc_sts_ctl_handler`'s write side.
    fn command(&mut self, cmd: u8) {
        self.curcmd = 0;
        self.status |= KBDS_CTRL_FLAG;
        self.ctrlbyte = 0;
        match cmd {
            KBDC_GET_COMMAND_BYTE => self.ctrlbyte = CTRL_CMD_FLAG | self.ram[0] as u16,
            KBDC_TEST_CTRL => self.ctrlbyte = CTRL_CMD_FLAG | 0x55,
            KBDC_TEST_AUX_PORT | KBDC_TEST_KBD_PORT | KBDC_READ_INPORT => {
                self.ctrlbyte = CTRL_CMD_FLAG
            }
            KBDC_READ_OUTPORT => self.ctrlbyte = CTRL_CMD_FLAG | self.outport as u16,
            KBDC_SET_COMMAND_BYTE
            | KBDC_WRITE_OUTPORT
            | KBDC_WRITE_KBD_OUTBUF
            | KBDC_WRITE_AUX_OUTBUF
            | KBDC_WRITE_TO_AUX => self.curcmd = cmd,
            KBDC_DISABLE_KBD_PORT => self.ram[0] |= KBD_DISABLE_KBD_PORT,
            KBDC_ENABLE_KBD_PORT => {
                self.ram[0] &= !KBD_DISABLE_KBD_PORT;
                if !self.kbd.is_empty() {
                    self.status |= KBDS_KBD_BUFFER_FULL;
                }
                self.poll();
            }
            KBDC_DISABLE_AUX_PORT => {
                self.ram[0] |= KBD_DISABLE_AUX_PORT;
                self.status &= !(KBDS_AUX_BUFFER_FULL | KBDS_KBD_BUFFER_FULL);
                self.outport &= !KBDO_AUX_OUTFULL;
            }
            KBDC_ENABLE_AUX_PORT => self.ram[0] &= !KBD_DISABLE_AUX_PORT,
            // Pulse the reset line.
            KBDC_RESET => (self.suspend)(Suspend::Reset),
            // Read RAM byte N.
            0x21..=0x3f => {
                self.ctrlbyte = CTRL_CMD_FLAG | self.ram[(cmd - 0x20) as usize & 0x1f] as u16
            }
            _ => {}
        }
        if self.ctrlbyte != 0 {
            self.status |= KBDS_KBD_BUFFER_FULL;
            self.status &= !KBDS_AUX_BUFFER_FULL;
            self.assert_kbd_intr();
        } else if !self.kbd.is_empty() && self.ram[0] & KBD_DISABLE_KBD_PORT == 0 {
            self.status |= KBDS_KBD_BUFFER_FULL;
            self.assert_kbd_intr();
        }
    }
}

impl PioDevice for Atkbdc {
    fn pio_read(&mut self, port: u16, data: &mut [u8]) -> bool {
        let [b] = data else { return false };
        *b = match port {
            KBD_DATA_PORT => self.data(true, 0),
            _ => self.status,
        };
        true
    }

    fn pio_write(&mut self, port: u16, data: &[u8]) -> bool {
        let &[v] = data else { return false };
        match port {
            KBD_DATA_PORT => {
                self.data(false, v);
            }
            _ => self.command(v),
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::pm::tests::{Level, suspender};

    fn rd(k: &mut Atkbdc, port: u16) -> u8 {
        let mut b = [0u8];
        assert!(k.pio_read(port, &mut b));
        b[0]
    }

    #[test]
    fn reset_command_resets_the_vm() {
        let (s, seen) = suspender();
        let mut k = Atkbdc::new(Arc::new(Level::default()), s);
        assert_eq!(rd(&mut k, KBD_STS_CTL_PORT), 0, "input buffer empty");
        assert!(k.pio_write(KBD_STS_CTL_PORT, &[KBDC_RESET]));
        assert_eq!(*seen.lock().unwrap(), [Suspend::Reset]);
        assert!(
            !k.pio_write(KBD_STS_CTL_PORT, &[KBDC_RESET, 0]),
            "byte only"
        );
        assert!(!k.pio_read(KBD_DATA_PORT, &mut [0u8; 2]));
    }

    #[test]
    fn controller_commands() {
        let (s, seen) = suspender();
        let irq = Arc::new(Level::default());
        let mut k = Atkbdc::new(irq.clone(), s);
        // Self test answers 0x55 through the data port.
        k.pio_write(KBD_STS_CTL_PORT, &[KBDC_TEST_CTRL]);
        assert_eq!(
            rd(&mut k, KBD_STS_CTL_PORT),
            KBDS_CTRL_FLAG | KBDS_KBD_BUFFER_FULL
        );
        assert_eq!(rd(&mut k, KBD_DATA_PORT), 0x55);
        assert!(irq.0.lock().unwrap().is_empty(), "IRQ 1 not enabled");
        // Write and read back the command byte; SYS flag follows it.
        k.pio_write(KBD_STS_CTL_PORT, &[KBDC_SET_COMMAND_BYTE]);
        k.pio_write(
            KBD_DATA_PORT,
            &[KBD_TRANSLATION | KBD_SYS_FLAG_BIT | KBD_ENABLE_KBD_INT],
        );
        assert_eq!(rd(&mut k, KBD_STS_CTL_PORT) & KBDS_SYS_FLAG, KBDS_SYS_FLAG);
        k.pio_write(KBD_STS_CTL_PORT, &[KBDC_GET_COMMAND_BYTE]);
        assert_eq!(
            *irq.0.lock().unwrap(),
            [true, false],
            "response pulses IRQ 1"
        );
        assert_eq!(rd(&mut k, KBD_DATA_PORT), 0x45);
        // Interface tests pass (0).  RAM byte reads work; writes to RAM
        // bytes 1..31 do not take (bhyve never waits for their data byte).
        k.pio_write(KBD_STS_CTL_PORT, &[KBDC_TEST_KBD_PORT]);
        assert_eq!(rd(&mut k, KBD_DATA_PORT), 0);
        k.pio_write(KBD_STS_CTL_PORT, &[0x65]);
        k.pio_write(KBD_DATA_PORT, &[0x99]);
        k.pio_write(KBD_STS_CTL_PORT, &[0x25]);
        assert_eq!(rd(&mut k, KBD_DATA_PORT), 0);
        // Output port and the keyboard output buffer.
        k.pio_write(KBD_STS_CTL_PORT, &[KBDC_WRITE_OUTPORT]);
        k.pio_write(KBD_DATA_PORT, &[0x03]);
        k.pio_write(KBD_STS_CTL_PORT, &[KBDC_READ_OUTPORT]);
        assert_eq!(rd(&mut k, KBD_DATA_PORT), 0x03);
        k.pio_write(KBD_STS_CTL_PORT, &[KBDC_WRITE_KBD_OUTBUF]);
        k.pio_write(KBD_DATA_PORT, &[0x1c]);
        assert_eq!(rd(&mut k, KBD_STS_CTL_PORT) & KBDS_KBD_BUFFER_FULL, 1);
        assert_eq!(rd(&mut k, KBD_DATA_PORT), 0x1c);
        assert_eq!(rd(&mut k, KBD_STS_CTL_PORT) & KBDS_KBD_BUFFER_FULL, 0);
        // Disabling the keyboard port is recorded in the command byte.
        k.pio_write(KBD_STS_CTL_PORT, &[KBDC_DISABLE_KBD_PORT]);
        k.pio_write(KBD_STS_CTL_PORT, &[KBDC_GET_COMMAND_BYTE]);
        assert_eq!(
            rd(&mut k, KBD_DATA_PORT) & KBD_DISABLE_KBD_PORT,
            KBD_DISABLE_KBD_PORT
        );
        assert!(seen.lock().unwrap().is_empty());
    }
}
