//! ACPI fixed hardware and the reset control register (`amd64/pm.c`):
//! PM1a event (status, enable) and control registers, SMI_CMD, the SCI, and
//! port 0xCF9.  S5 through PM1a_CNT powers the VM off (bhyve exits 1);
//! reset through 0xCF9 resets it (exit 0).

use vmmapi::Suspend;

use crate::bus::{Irq, PioDevice, Suspender};

/// `PM1A_EVT_ADDR`: status at +0, enable at +2.
pub const PM1A_EVT_ADDR: u16 = 0x400;
/// `PM1A_CNT_ADDR`.
pub const PM1A_CNT_ADDR: u16 = 0x404;
/// `SMI_CMD` and the values that enable / disable ACPI mode.
pub const SMI_CMD: u16 = 0xb2;
pub const BHYVE_ACPI_ENABLE: u8 = 0xa0;
pub const BHYVE_ACPI_DISABLE: u8 = 0xa1;
/// ACPI's SCI: ISA IRQ 9, level-triggered.
pub const SCI_INT: u32 = 9;
/// The reset control register.
pub const RESET_CONTROL: u16 = 0xcf9;

pub const PM1_TMR_STS: u16 = 0x0001;
pub const PM1_BM_STS: u16 = 0x0010;
pub const PM1_GBL_STS: u16 = 0x0020;
pub const PM1_PWRBTN_STS: u16 = 0x0100;
pub const PM1_SLPBTN_STS: u16 = 0x0200;
pub const PM1_RTC_STS: u16 = 0x0400;
pub const PM1_WAK_STS: u16 = 0x8000;

pub const PM1_GBL_EN: u16 = 0x0020;
pub const PM1_PWRBTN_EN: u16 = 0x0100;
pub const PM1_RTC_EN: u16 = 0x0400;

pub const PM1_SCI_EN: u16 = 0x0001;
pub const PM1_SLP_TYP: u16 = 0x1c00;
pub const PM1_SLP_EN: u16 = 0x2000;
const PM1_ALWAYS_ZERO: u16 = 0xc003;
/// The DSDT's `_S5` package stores 5 in SLP_TYP.
pub const SLP_TYP_S5: u16 = 5;

/// PM1a event and control registers and SMI_CMD (one lock, as `pm_lock`).
pub struct Pm {
    pm1_status: u16,
    pm1_enable: u16,
    pm1_control: u16,
    sci_active: bool,
    sci: Irq,
    suspend: Suspender,
}

impl std::fmt::Debug for Pm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pm")
            .field("pm1_status", &self.pm1_status)
            .field("pm1_enable", &self.pm1_enable)
            .field("pm1_control", &self.pm1_control)
            .finish_non_exhaustive()
    }
}

impl Pm {
    pub fn new(sci: Irq, suspend: Suspender) -> Pm {
        Pm {
            pm1_status: 0,
            pm1_enable: 0,
            pm1_control: 0,
            sci_active: false,
            sci,
            suspend,
        }
    }

    /// Ports to claim: (base, len) — each register is one port, as in
    /// bhyve's `INOUT_PORT`s.
    pub fn ports() -> [(u16, u16); 4] {
        [
            (PM1A_EVT_ADDR, 1),
            (PM1A_EVT_ADDR + 2, 1),
            (PM1A_CNT_ADDR, 1),
            (SMI_CMD, 1),
        ]
    }

    /// `sci_update`: the SCI is level, asserted while an enabled event is
    /// pending.
    fn sci_update(&mut self) {
        let pending = self.pm1_enable & self.pm1_status;
        let need = pending
            & (PM1_TMR_STS | PM1_GBL_STS | PM1_PWRBTN_STS | PM1_SLPBTN_STS | PM1_RTC_STS)
            != 0;
        if need && !self.sci_active {
            self.sci.assert();
        } else if !need && self.sci_active {
            self.sci.deassert();
        }
        self.sci_active = need;
    }

    /// The guest switched to ACPI mode through SMI_CMD; from then on
    /// SIGTERM presses the power button.
    pub fn acpi_enabled(&self) -> bool {
        self.pm1_control & PM1_SCI_EN != 0
    }

    /// `power_button_handler`: press the power button.  False (nothing
    /// done) while the guest has not enabled ACPI.
    pub fn power_button(&mut self) -> bool {
        if !self.acpi_enabled() {
            return false;
        }
        if self.pm1_status & PM1_PWRBTN_STS == 0 {
            self.pm1_status |= PM1_PWRBTN_STS;
            self.sci_update();
        }
        true
    }

    fn write_control(&mut self, v: u16) {
        // Write-only and reserved bits read as zero; OSPM never changes
        // SCI_EN (only SMI_CMD does).
        self.pm1_control = (self.pm1_control & PM1_SCI_EN) | (v & !(PM1_SLP_EN | PM1_ALWAYS_ZERO));
        if v & PM1_SLP_EN != 0 && (self.pm1_control & PM1_SLP_TYP) >> 10 == SLP_TYP_S5 {
            (self.suspend)(Suspend::Poweroff);
        }
    }
}

impl PioDevice for Pm {
    fn pio_read(&mut self, port: u16, data: &mut [u8]) -> bool {
        let v = match (port, data.len()) {
            (PM1A_EVT_ADDR, 2) => self.pm1_status,
            (p, 2) if p == PM1A_EVT_ADDR + 2 => self.pm1_enable,
            (PM1A_CNT_ADDR, 2) => self.pm1_control,
            // Wrong widths, and SMI_CMD, which is write-only.
            _ => return false,
        };
        data.copy_from_slice(&v.to_le_bytes());
        true
    }

    fn pio_write(&mut self, port: u16, data: &[u8]) -> bool {
        match (port, data) {
            (PM1A_EVT_ADDR, &[lo, hi]) => {
                // Write-1-to-clear, for these bits only.
                let v = u16::from_le_bytes([lo, hi]);
                self.pm1_status &= !(v
                    & (PM1_WAK_STS | PM1_RTC_STS | PM1_SLPBTN_STS | PM1_PWRBTN_STS | PM1_BM_STS));
                self.sci_update();
            }
            (p, &[lo, hi]) if p == PM1A_EVT_ADDR + 2 => {
                // Only these can be enabled; ACPI-CA insists on GBL_EN.
                let v = u16::from_le_bytes([lo, hi]);
                self.pm1_enable = v & (PM1_RTC_EN | PM1_PWRBTN_EN | PM1_GBL_EN);
                self.sci_update();
            }
            (PM1A_CNT_ADDR, &[lo, hi]) => self.write_control(u16::from_le_bytes([lo, hi])),
            (SMI_CMD, &[cmd]) => match cmd {
                BHYVE_ACPI_ENABLE => self.pm1_control |= PM1_SCI_EN,
                BHYVE_ACPI_DISABLE => self.pm1_control &= !PM1_SCI_EN,
                _ => {}
            },
            _ => return false,
        }
        true
    }
}

/// The reset control register at 0xCF9 (`reset_handler`): byte accesses
/// only; reads return the last value written; bit 2 resets the VM (hard
/// and soft alike, no 0→1 edge needed).
pub struct ResetControl {
    value: u8,
    suspend: Suspender,
}

impl std::fmt::Debug for ResetControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResetControl")
            .field("value", &self.value)
            .finish_non_exhaustive()
    }
}

impl ResetControl {
    pub fn new(suspend: Suspender) -> ResetControl {
        ResetControl { value: 0, suspend }
    }
}

impl PioDevice for ResetControl {
    fn pio_read(&mut self, _port: u16, data: &mut [u8]) -> bool {
        match data {
            [b] => {
                *b = self.value;
                true
            }
            _ => false,
        }
    }

    fn pio_write(&mut self, _port: u16, data: &[u8]) -> bool {
        match data {
            [b] => {
                self.value = *b;
                if self.value & 0x4 != 0 {
                    (self.suspend)(Suspend::Reset);
                }
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::bus::IrqLine;

    #[derive(Default)]
    pub struct Level(pub Mutex<Vec<bool>>);
    impl IrqLine for Level {
        fn assert(&self) {
            self.0.lock().unwrap().push(true);
        }
        fn deassert(&self) {
            self.0.lock().unwrap().push(false);
        }
    }

    pub fn suspender() -> (Suspender, Arc<Mutex<Vec<Suspend>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        (Arc::new(move |how| s.lock().unwrap().push(how)), seen)
    }

    fn r16(pm: &mut Pm, port: u16) -> u16 {
        let mut b = [0u8; 2];
        assert!(pm.pio_read(port, &mut b));
        u16::from_le_bytes(b)
    }

    fn w16(pm: &mut Pm, port: u16, v: u16) {
        assert!(pm.pio_write(port, &v.to_le_bytes()));
    }

    #[test]
    fn s5_powers_off_other_sleep_types_do_not() {
        let (s, seen) = suspender();
        let mut pm = Pm::new(Arc::new(Level::default()), s);
        w16(&mut pm, PM1A_CNT_ADDR, 1 << 10 | PM1_SLP_EN);
        w16(&mut pm, PM1A_CNT_ADDR, SLP_TYP_S5 << 10);
        assert!(seen.lock().unwrap().is_empty(), "S1, and S5 without SLP_EN");
        // SLP_TYP is stored, SLP_EN and the reserved bits are not, and the
        // guest cannot set SCI_EN.
        w16(&mut pm, PM1A_CNT_ADDR, !PM1_SLP_EN);
        assert_eq!(r16(&mut pm, PM1A_CNT_ADDR), !(PM1_SLP_EN | 0xc003));
        w16(&mut pm, PM1A_CNT_ADDR, SLP_TYP_S5 << 10 | PM1_SLP_EN);
        assert_eq!(*seen.lock().unwrap(), [Suspend::Poweroff]);
        assert_eq!(r16(&mut pm, PM1A_CNT_ADDR), SLP_TYP_S5 << 10);
    }

    #[test]
    fn widths_and_directions() {
        let (s, _) = suspender();
        let mut pm = Pm::new(Arc::new(Level::default()), s);
        assert!(!pm.pio_read(PM1A_CNT_ADDR, &mut [0u8; 1]), "16-bit only");
        assert!(!pm.pio_write(PM1A_EVT_ADDR, &[0u8; 4]));
        assert!(!pm.pio_read(SMI_CMD, &mut [0u8; 1]), "SMI_CMD write-only");
        assert!(!pm.pio_write(SMI_CMD, &[0u8; 2]));
    }

    #[test]
    fn acpi_enable_power_button_and_sci() {
        let (s, seen) = suspender();
        let sci = Arc::new(Level::default());
        let mut pm = Pm::new(sci.clone(), s);
        assert!(!pm.power_button(), "ACPI not enabled yet");
        assert!(pm.pio_write(SMI_CMD, &[BHYVE_ACPI_ENABLE]));
        assert_eq!(r16(&mut pm, PM1A_CNT_ADDR), PM1_SCI_EN);
        w16(&mut pm, PM1A_CNT_ADDR, 0);
        assert_eq!(r16(&mut pm, PM1A_CNT_ADDR), PM1_SCI_EN, "kept");
        // Only RTC, PWRBTN and GBL can be enabled.
        w16(&mut pm, PM1A_EVT_ADDR + 2, 0xffff);
        assert_eq!(
            r16(&mut pm, PM1A_EVT_ADDR + 2),
            PM1_RTC_EN | PM1_PWRBTN_EN | PM1_GBL_EN
        );
        assert!(pm.power_button());
        assert_eq!(r16(&mut pm, PM1A_EVT_ADDR), PM1_PWRBTN_STS);
        assert_eq!(*sci.0.lock().unwrap(), [true], "SCI asserted once");
        assert!(pm.power_button());
        assert_eq!(sci.0.lock().unwrap().len(), 1, "level held");
        // Write-1-to-clear drops the SCI.
        w16(&mut pm, PM1A_EVT_ADDR, PM1_PWRBTN_STS);
        assert_eq!(r16(&mut pm, PM1A_EVT_ADDR), 0);
        assert_eq!(*sci.0.lock().unwrap(), [true, false]);
        // Disabling the event masks a pending one.
        pm.power_button();
        w16(&mut pm, PM1A_EVT_ADDR + 2, 0);
        assert_eq!(*sci.0.lock().unwrap(), [true, false, true, false]);
        assert!(pm.pio_write(SMI_CMD, &[BHYVE_ACPI_DISABLE]));
        assert!(!pm.acpi_enabled());
        assert!(seen.lock().unwrap().is_empty());
    }

    #[test]
    fn reset_control_register() {
        let (s, seen) = suspender();
        let mut rc = ResetControl::new(s);
        let mut b = [0u8];
        assert!(rc.pio_read(RESET_CONTROL, &mut b));
        assert_eq!(b, [0]);
        assert!(rc.pio_write(RESET_CONTROL, &[0x02]));
        assert!(rc.pio_read(RESET_CONTROL, &mut b));
        assert_eq!(b, [0x02], "last value written");
        assert!(seen.lock().unwrap().is_empty());
        assert!(!rc.pio_write(RESET_CONTROL, &[6, 0]), "byte only");
        assert!(rc.pio_write(RESET_CONTROL, &[0x06]));
        assert_eq!(*seen.lock().unwrap(), [Suspend::Reset]);
    }
}
