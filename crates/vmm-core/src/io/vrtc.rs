//! MC146818 RTC and CMOS NVRAM (`vrtc.c`): index port 0x70, data port 0x71,
//! 128 bytes of storage of which 0x00-0x09 and 0x32 are the clock, 0x0A-0x0D
//! status registers A-D and the rest NVRAM.  Interrupts are pulses on ISA
//! IRQ 8 (8259 and I/O APIC pin 8), raised when register C's IRQF turns on.
//!
//! The clock is kept as bhyve keeps it: an RTC time in seconds (wall-clock
//! time counted as if it were UTC, see [`rtc_time`]) and the [`Instant`] it
//! was true at, advancing in whole seconds with host time while the divider
//! runs, SET is clear and the guest has not programmed an invalid date.
//! Date/time registers are rebuilt from that on access, so the guest never
//! sees an update in progress: UIP (register A bit 7) always reads 0.
//!
//! bhyve drives periodic, alarm and update interrupts from one callout; here
//! there are two deadlines for the caller's timer thread
//! ([`Vrtc::next_deadline`] / [`Vrtc::tick`]):
//! * the periodic rate (register A RS) keeps its phase from when it was
//!   started, so the average rate is exact; a late tick skips missed periods;
//! * alarm and update-ended checks run at each RTC second boundary, so UF and
//!   AF arrive when the second turns over rather than up to 1 s later.
//!
//! [`Instant`]: std::time::Instant

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::IrqSink;

/// Index (address) port; bit 7 of a written index (NMI mask) is ignored.
pub const IO_RTC: u16 = 0x70;
/// Data port.
pub const IO_RTC_DATA: u16 = 0x71;
/// ISA IRQ (and I/O APIC pin) of the RTC.
pub const RTC_IRQ: u32 = 8;
/// Bytes of RTC/CMOS storage (`sizeof(struct rtcdev)`).
pub const RTC_NVRAM_SIZE: usize = 128;
/// Century byte (`RTC_CENTURY`).
pub const RTC_CENTURY: usize = 0x32;
/// Latest RTC time the registers can show: 9999-12-31 23:59:59.
pub const RTC_MAX_SECS: i64 = 253_402_300_799;

// Register offsets (isa/rtc.h, struct rtcdev in vrtc.c).
const RTC_SEC: usize = 0x00;
const RTC_ALARM_SEC: usize = 0x01;
const RTC_MIN: usize = 0x02;
const RTC_ALARM_MIN: usize = 0x03;
const RTC_HOUR: usize = 0x04;
const RTC_ALARM_HOUR: usize = 0x05;
const RTC_WDAY: usize = 0x06;
const RTC_DAY: usize = 0x07;
const RTC_MONTH: usize = 0x08;
const RTC_YEAR: usize = 0x09;
const RTC_STATUSA: usize = 0x0A;
const RTC_STATUSB: usize = 0x0B;
const RTC_INTR: usize = 0x0C;
const RTC_STATUSD: usize = 0x0D;
/// First byte the host may write (`nvram[0]`).
const RTC_NVRAM_START: usize = 0x0E;

// Memory-size cells bhyve fills (amd64/rtc.c), read by the UEFI firmware.
const RTC_LMEM_LSB: usize = 0x34;
const RTC_HMEM_LSB: usize = 0x5B;

// Register A.
const RTCSA_TUP: u8 = 0x80;
const RTCSA_DIVIDER: u8 = 0x70;
/// DV = 010: 32.768 kHz time base, running.
const RTCSA_DIVIDER_32K: u8 = 0x20;
const RTCSA_RATE: u8 = 0x0F;

// Register B.
const RTCSB_HALT: u8 = 0x80;
const RTCSB_PINTR: u8 = 0x40;
const RTCSB_AINTR: u8 = 0x20;
const RTCSB_UINTR: u8 = 0x10;
const RTCSB_SQWE: u8 = 0x08;
const RTCSB_BIN: u8 = 0x04;
const RTCSB_24HR: u8 = 0x02;
const RTCSB_ALL_INTRS: u8 = RTCSB_PINTR | RTCSB_AINTR | RTCSB_UINTR;

// Register C.
const RTCIR_INT: u8 = 0x80;
const RTCIR_PERIOD: u8 = 0x40;
const RTCIR_ALARM: u8 = 0x20;
const RTCIR_UPDATE: u8 = 0x10;

// Register D: valid RAM and time (battery good).
const RTCSD_PWR: u8 = 0x80;

/// Periodic interrupt rate in Hz for each RS value (`vrtc_freq`); 0 is off.
/// RS 1 and 2 give 256 and 128 Hz, as on the real part with a 32 kHz base.
const PERIODIC_HZ: [u32; 16] = [
    0, 256, 128, 8192, 4096, 2048, 1024, 512, 256, 128, 64, 32, 16, 8, 4, 2,
];

const SECS_PER_DAY: i64 = 86_400;
const NANOS_PER_SEC: u128 = 1_000_000_000;
const MIB: u64 = 1 << 20;
const KIB_64: u64 = 64 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RtcError {
    /// Only 0x70 and 0x71 belong to the RTC.
    #[error("RTC: port {port:#x} is not an RTC port")]
    BadPort { port: u16 },
    /// bhyve fails the vCPU exit on anything but a 1-byte access.
    #[error("RTC (port {port:#x}): {size}-byte access rejected; only 1-byte accesses are allowed")]
    BadAccess { port: u16, size: usize },
    /// The guest cleared SET (or wrote the century) with an invalid date or
    /// time in the clock registers.  The clock stops; bhyve stops the guest
    /// (`hw.vmm.vrtc.flag_broken_time`).
    #[error("RTC: the guest programmed an invalid date/time; the clock has stopped")]
    BrokenTime,
    /// `vrtc_set_time` while the guest holds SET (EBUSY).
    #[error("RTC: time cannot be set while the guest has updates halted (SET)")]
    Halted,
    #[error("RTC: time {0} s is outside 1970-01-01 ..= 9999-12-31")]
    TimeOutOfRange(i64),
    /// `vrtc_nvram_write` takes 0x0E-0x7F except the century byte;
    /// `vrtc_nvram_read` takes 0x00-0x7F.
    #[error("RTC: NVRAM offset {0:#x} is not accessible from the host")]
    BadNvramOffset(usize),
}

/// bhyve's `rtc_time()`: the RTC keeps host local time unless `-u`, i.e.
/// local wall-clock time counted as if it were UTC (`timegm(localtime())`).
/// `utc_offset_secs` is the host's offset east of UTC (see
/// [`host_utc_offset`]); it is ignored with `use_localtime` false.
pub fn rtc_time(unix_secs: i64, use_localtime: bool, utc_offset_secs: i64) -> i64 {
    if use_localtime {
        unix_secs.saturating_add(utc_offset_secs)
    } else {
        unix_secs
    }
}

/// The host time zone's offset east of UTC at `unix_secs` (`tm_gmtoff`),
/// for [`rtc_time`]; 0 if the C library cannot convert the time.
pub fn host_utc_offset(unix_secs: i64) -> i64 {
    let t = unix_secs as libc::time_t;
    // SAFETY: `struct tm` is plain data; all-zero (a null `tm_zone`) is valid.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call and `localtime_r` keeps
    // neither; it is the thread-safe variant.
    let r = unsafe { libc::localtime_r(&t, &mut tm) };
    if r.is_null() { 0 } else { tm.tm_gmtoff }
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`): years are counted from March so the leap day is last.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Inverse of [`days_from_civil`]: (year, month 1-12, day 1-31).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn divider_enabled(reg_a: u8) -> bool {
    reg_a & RTCSA_DIVIDER == RTCSA_DIVIDER_32K
}

/// The running periodic interrupt: deadline `count` is `count / hz` seconds
/// after `start`, computed exactly so 1024 Hz does not drift by 0.5 ns a tick.
#[derive(Debug, Clone, Copy)]
struct Periodic {
    hz: u32,
    start: Instant,
    count: u64,
}

impl Periodic {
    fn deadline(&self) -> Option<Instant> {
        let ns = (u128::from(self.count) * NANOS_PER_SEC).checked_div(u128::from(self.hz))?;
        self.start
            .checked_add(Duration::from_nanos(u64::try_from(ns).ok()?))
    }

    /// Move to the first deadline after `now`.
    fn advance(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.start).as_nanos();
        let done = elapsed * u128::from(self.hz) / NANOS_PER_SEC;
        let done = u64::try_from(done).unwrap_or(u64::MAX);
        self.count = self.count.saturating_add(1).max(done.saturating_add(1));
    }
}

pub struct Vrtc {
    irq: Arc<dyn IrqSink>,
    /// Register selected through port 0x70.
    addr: u8,
    /// The 128 bytes the guest sees (`struct rtcdev`).  The clock bytes are
    /// refreshed from `base_rtctime` whenever they are accessed.
    regs: [u8; RTC_NVRAM_SIZE],
    /// RTC time at `base_uptime`; `None` is bhyve's VRTC_BROKEN_TIME: SET is
    /// held, or the guest programmed an invalid date, and the clock stands.
    base_rtctime: Option<i64>,
    /// Kept on whole-second steps from when the time was set, so frequent
    /// accesses do not lose the fractional second each time.
    base_uptime: Instant,
    periodic: Option<Periodic>,
    /// The next RTC second boundary, while AIE or UIE needs one.
    second_deadline: Option<Instant>,
}

impl fmt::Debug for Vrtc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vrtc")
            .field("addr", &self.addr)
            .field("regs", &self.regs)
            .field("base_rtctime", &self.base_rtctime)
            .field("periodic", &self.periodic)
            .field("second_deadline", &self.second_deadline)
            .finish_non_exhaustive()
    }
}

impl Vrtc {
    /// `vrtc_init` followed by bhyve's `vm_rtc_settime`: the clock reads
    /// `rtc_secs` (see [`rtc_time`]) at `now`, clamped to what the registers
    /// can show.  Register A 0x20 (divider running, no periodic rate), B 0x02
    /// (24-hour BCD, no interrupts), C 0, D 0x80.
    pub fn new(irq: Arc<dyn IrqSink>, rtc_secs: i64, now: Instant) -> Self {
        let mut regs = [0u8; RTC_NVRAM_SIZE];
        regs[RTC_STATUSA] = RTCSA_DIVIDER_32K;
        regs[RTC_STATUSB] = RTCSB_24HR;
        regs[RTC_STATUSD] = RTCSD_PWR;
        let mut rtc = Vrtc {
            irq,
            // A safe index until the guest selects one.
            addr: RTC_STATUSD as u8,
            regs,
            base_rtctime: Some(rtc_secs.clamp(0, RTC_MAX_SECS)),
            base_uptime: now,
            periodic: None,
            second_deadline: None,
        };
        rtc.secs_to_rtc(rtc.base_rtctime, false);
        rtc
    }

    fn halted(&self) -> bool {
        self.regs[RTC_STATUSB] & RTCSB_HALT != 0
    }
    fn aintr_enabled(&self) -> bool {
        self.regs[RTC_STATUSB] & RTCSB_AINTR != 0
    }
    fn pintr_enabled(&self) -> bool {
        self.regs[RTC_STATUSB] & RTCSB_PINTR != 0
    }
    fn uintr_enabled(&self) -> bool {
        self.regs[RTC_STATUSB] & RTCSB_UINTR != 0
    }
    fn binary(&self) -> bool {
        self.regs[RTC_STATUSB] & RTCSB_BIN != 0
    }
    fn hour24(&self) -> bool {
        self.regs[RTC_STATUSB] & RTCSB_24HR != 0
    }

    /// The clock advances only with the divider running, SET clear and a
    /// valid time.
    fn update_enabled(&self) -> bool {
        divider_enabled(self.regs[RTC_STATUSA]) && !self.halted() && self.base_rtctime.is_some()
    }

    /// `vrtc_curtime`: the RTC time at `now` and the base instant it counts
    /// whole seconds from.
    fn curtime(&self, now: Instant) -> (Option<i64>, Instant) {
        let (Some(t), true) = (self.base_rtctime, self.update_enabled()) else {
            return (self.base_rtctime, self.base_uptime);
        };
        let secs = now.saturating_duration_since(self.base_uptime).as_secs();
        let base = self
            .base_uptime
            .checked_add(Duration::from_secs(secs))
            .unwrap_or(now);
        let secs = i64::try_from(secs).unwrap_or(i64::MAX);
        (Some(t.saturating_add(secs)), base)
    }

    /// A value 0-99 in the guest's chosen format (BCD unless DM).
    fn rtcset(&self, val: i64) -> u8 {
        // rem_euclid keeps the cast in 0..100 even for times past 9999.
        let v = val.rem_euclid(100) as u8;
        if self.binary() {
            v
        } else {
            ((v / 10) << 4) | (v % 10)
        }
    }

    /// A register in the guest's format as a number; `None` for bad BCD.
    fn rtcget(&self, val: u8) -> Option<i64> {
        if self.binary() {
            return Some(i64::from(val));
        }
        let (upper, lower) = (val >> 4, val & 0xF);
        (upper <= 9 && lower <= 9).then_some(i64::from(upper * 10 + lower))
    }

    /// `secs_to_rtc`: rebuild the clock registers from `rtctime`.  While SET
    /// is held the guest owns them, so only a forced refresh writes them.
    fn secs_to_rtc(&mut self, rtctime: Option<i64>, force: bool) {
        let Some(t) = rtctime.filter(|t| *t >= 0) else {
            return;
        };
        if self.halted() && !force {
            return;
        }
        let days = t.div_euclid(SECS_PER_DAY);
        let sod = t.rem_euclid(SECS_PER_DAY);
        let (year, month, day) = civil_from_days(days);
        let hour = sod / 3600;

        self.regs[RTC_SEC] = self.rtcset(sod % 60);
        self.regs[RTC_MIN] = self.rtcset(sod / 60 % 60);
        self.regs[RTC_HOUR] = if self.hour24() {
            self.rtcset(hour)
        } else {
            // 0 is 12 AM and 12 is 12 PM; bit 7 flags PM.
            let h12 = if hour % 12 == 0 { 12 } else { hour % 12 };
            self.rtcset(h12) | if hour >= 12 { 0x80 } else { 0 }
        };
        // 1 = Sunday; 1970-01-01 was a Thursday.
        self.regs[RTC_WDAY] = self.rtcset((days + 4).rem_euclid(7) + 1);
        self.regs[RTC_DAY] = self.rtcset(day);
        self.regs[RTC_MONTH] = self.rtcset(month);
        self.regs[RTC_YEAR] = self.rtcset(year % 100);
        self.regs[RTC_CENTURY] = self.rtcset(year / 100);
    }

    /// `rtc_to_secs`: the time the guest programmed, `None` if any field is
    /// invalid.  Day of week is ignored: guests do not keep it reliably.
    fn rtc_to_secs(&self) -> Option<i64> {
        let in_range = |v: Option<i64>, lo: i64, hi: i64| v.filter(|v| (lo..=hi).contains(v));
        let sec = in_range(self.rtcget(self.regs[RTC_SEC]), 0, 59)?;
        let min = in_range(self.rtcget(self.regs[RTC_MIN]), 0, 59)?;

        let mut hour_reg = self.regs[RTC_HOUR];
        let pm = !self.hour24() && hour_reg & 0x80 != 0;
        if pm {
            hour_reg &= 0x7F;
        }
        let mut hour = self.rtcget(hour_reg)?;
        if !self.hour24() {
            // 12-hour 12 AM, 1-11 AM, 12 PM, 1-11 PM → 0, 1-11, 12, 13-23.
            hour = in_range(Some(hour), 1, 12)? % 12 + if pm { 12 } else { 0 };
        }
        let hour = in_range(Some(hour), 0, 23)?;

        let day = in_range(self.rtcget(self.regs[RTC_DAY]), 1, 31)?;
        let month = in_range(self.rtcget(self.regs[RTC_MONTH]), 1, 12)?;
        let year = in_range(self.rtcget(self.regs[RTC_YEAR]), 0, 99)?;
        let century = self.rtcget(self.regs[RTC_CENTURY])?;
        // Years past 9999 could not be shown again; bhyve would assert.
        let year = in_range(Some(century * 100 + year), 1970, 9999)?;
        if day > days_in_month(year, month) {
            return None;
        }
        Some(days_from_civil(year, month, day) * SECS_PER_DAY + hour * 3600 + min * 60 + sec)
    }

    /// `vrtc_time_update`: move the clock to `newtime` counted from
    /// `newbase`, raising alarm and update-ended flags on the way.
    fn time_update(&mut self, newtime: Option<i64>, newbase: Instant) -> Result<(), RtcError> {
        let alarm = [
            (RTC_ALARM_SEC, RTC_SEC),
            (RTC_ALARM_MIN, RTC_MIN),
            (RTC_ALARM_HOUR, RTC_HOUR),
        ]
        .map(|(a, r)| (self.regs[a], r));
        let oldtime = self.base_rtctime;
        self.base_uptime = newbase;
        if newtime == oldtime {
            return Ok(());
        }
        let Some(newtime) = newtime else {
            // Updates stop (SET, or a bad date): nothing to check.
            self.base_rtctime = None;
            return Ok(());
        };
        if self.halted() {
            return Err(RtcError::Halted);
        }

        if self.aintr_enabled() {
            // bhyve visits every second since the old time.  The alarm
            // matches hh:mm:ss, so any match recurs within a day, and AF is
            // sticky: one day of seconds finds all a longer jump could, and
            // the first match is enough.  Stepping back checks only the new
            // time, as bhyve does when the old time was invalid.
            let first = match oldtime {
                Some(old) if old < newtime => old
                    .saturating_add(1)
                    .max(newtime.saturating_sub(SECS_PER_DAY - 1)),
                _ => newtime,
            };
            for t in first..=newtime {
                self.secs_to_rtc(Some(t), false);
                // 0xC0-0xFF in an alarm byte is "don't care".
                let hit = alarm.iter().all(|&(a, r)| a >= 0xC0 || a == self.regs[r]);
                if hit {
                    self.set_reg_c(self.regs[RTC_INTR] | RTCIR_ALARM);
                    break;
                }
            }
            self.secs_to_rtc(Some(newtime), false);
        }
        self.base_rtctime = Some(newtime);

        if self.uintr_enabled() {
            self.set_reg_c(self.regs[RTC_INTR] | RTCIR_UPDATE);
        }
        Ok(())
    }

    /// `vrtc_set_reg_c`: IRQF follows the enabled flags, and turning it on
    /// pulses IRQ 8 (bhyve's `vatpic_pulse_irq` + `vioapic_pulse_irq`; one
    /// GSI under KVM reaches both).  Turning it off has nothing to lower.
    fn set_reg_c(&mut self, newval: u8) {
        let newval = newval & (RTCIR_ALARM | RTCIR_PERIOD | RTCIR_UPDATE);
        let oldirqf = self.regs[RTC_INTR] & RTCIR_INT != 0;
        let newirqf = (self.aintr_enabled() && newval & RTCIR_ALARM != 0)
            || (self.pintr_enabled() && newval & RTCIR_PERIOD != 0)
            || (self.uintr_enabled() && newval & RTCIR_UPDATE != 0);
        self.regs[RTC_INTR] = newval | if newirqf { RTCIR_INT } else { 0 };
        if !oldirqf && newirqf {
            self.irq.pulse_irq(RTC_IRQ);
        }
    }

    /// `vrtc_set_reg_b`.  Setting SET freezes the registers at the current
    /// time (and clears UIE); clearing it takes the time the guest wrote.
    fn set_reg_b(&mut self, newval: u8, now: Instant) -> Result<(), RtcError> {
        let oldval = self.regs[RTC_STATUSB];
        self.regs[RTC_STATUSB] = newval;
        let changed = oldval ^ newval;
        let mut result = Ok(());

        if changed & RTCSB_HALT != 0 {
            let (rtctime, basetime) = if newval & RTCSB_HALT == 0 {
                let t = self.rtc_to_secs();
                if t.is_none() {
                    result = Err(RtcError::BrokenTime);
                }
                (t, now)
            } else {
                // SET is already in reg B, so this is the last base time;
                // the data-port access that brought us here refreshed it.
                let (cur, base) = self.curtime(now);
                self.secs_to_rtc(cur, true);
                self.regs[RTC_STATUSB] &= !RTCSB_UINTR;
                (None, base)
            };
            // Cannot fail: SET is clear when a time is given.  bhyve returns
            // before this on a bad time, but the clock was already stopped
            // (SET had been held), so recording that again is the same.
            let _ = self.time_update(rtctime, basetime);
        }

        if changed & RTCSB_ALL_INTRS != 0 {
            self.set_reg_c(self.regs[RTC_INTR]);
        }
        result
    }

    /// `vrtc_set_reg_a`: UIP is read-only; a divider coming out of reset
    /// restarts the second from now, as if the clock stood while it was held.
    fn set_reg_a(&mut self, newval: u8, now: Instant) {
        let newval = newval & !RTCSA_TUP;
        if !divider_enabled(self.regs[RTC_STATUSA]) && divider_enabled(newval) {
            self.base_uptime = now;
        }
        self.regs[RTC_STATUSA] = newval;
    }

    /// The periodic interrupt rate (`vrtc_freq`'s periodic part), 0 if off.
    fn periodic_hz(&self) -> u32 {
        if !self.pintr_enabled() || !divider_enabled(self.regs[RTC_STATUSA]) {
            return 0;
        }
        PERIODIC_HZ[usize::from(self.regs[RTC_STATUSA] & RTCSA_RATE)]
    }

    /// After any change: restart the periodic timer from `now` if its rate
    /// changed (bhyve resets the callout then), and find the next second
    /// boundary if alarm or update interrupts want one.
    fn rearm(&mut self, old_hz: u32, now: Instant) {
        let hz = self.periodic_hz();
        if hz != old_hz {
            self.periodic = (hz != 0).then_some(Periodic {
                hz,
                start: now,
                count: 1,
            });
        }
        self.second_deadline =
            if (self.aintr_enabled() || self.uintr_enabled()) && self.update_enabled() {
                let secs = now.saturating_duration_since(self.base_uptime).as_secs();
                self.base_uptime
                    .checked_add(Duration::from_secs(secs.saturating_add(1)))
            } else {
                None
            };
    }

    /// `vrtc_data_handler` for one byte: bring the clock up to `now`, then
    /// read or write the selected register.
    fn data_access(&mut self, write: Option<u8>, now: Instant) -> Result<u8, RtcError> {
        let offset = usize::from(self.addr) % RTC_NVRAM_SIZE;
        let old_hz = self.periodic_hz();
        let (curtime, base) = self.curtime(now);
        // Cannot fail: while SET is held the clock reads its frozen time,
        // so there is nothing to move.
        let _ = self.time_update(curtime, base);
        let clock_byte = offset < RTC_STATUSA || offset == RTC_CENTURY;
        if clock_byte {
            // Also before writes: a century write recomputes the time from
            // all the clock bytes.
            self.secs_to_rtc(curtime, false);
        }

        let mut result = Ok(0xFF);
        match write {
            None if offset == RTC_INTR => {
                let val = self.regs[RTC_INTR];
                self.set_reg_c(0);
                result = Ok(val);
            }
            None => result = Ok(self.regs[offset]),
            Some(val) => {
                match offset {
                    RTC_STATUSA => self.set_reg_a(val, now),
                    RTC_STATUSB => result = self.set_reg_b(val, now).map(|()| 0xFF),
                    RTC_INTR | RTC_STATUSD => {}
                    // Bit 7 of seconds is read-only.
                    RTC_SEC => self.regs[RTC_SEC] = val & 0x7F,
                    _ => self.regs[offset] = val,
                }
                // Some guests (OpenBSD) write the century without SET.
                if offset == RTC_CENTURY && !self.halted() {
                    let t = self.rtc_to_secs();
                    let _ = self.time_update(t, now);
                    if t.is_none() {
                        result = Err(RtcError::BrokenTime);
                    }
                }
            }
        }
        self.rearm(old_hz, now);
        result
    }

    /// An IN from port 0x70 (reads 0xFF) or 0x71.  Wrong ports and sizes
    /// are errors (the caller fails the exit, as bhyve does) with `data`
    /// filled with 0xFF.
    pub fn pio_read(&mut self, port: u16, data: &mut [u8], now: Instant) -> Result<(), RtcError> {
        data.fill(0xFF);
        if port != IO_RTC && port != IO_RTC_DATA {
            return Err(RtcError::BadPort { port });
        }
        let [byte] = data else {
            return Err(RtcError::BadAccess {
                port,
                size: data.len(),
            });
        };
        if port == IO_RTC_DATA {
            *byte = self.data_access(None, now)?;
        }
        Ok(())
    }

    /// An OUT to port 0x70 (selects a register; bit 7, the NMI mask, is
    /// ignored) or 0x71.  [`RtcError::BrokenTime`] means the guest set an
    /// invalid time and bhyve would stop it.
    pub fn pio_write(&mut self, port: u16, data: &[u8], now: Instant) -> Result<(), RtcError> {
        if port != IO_RTC && port != IO_RTC_DATA {
            return Err(RtcError::BadPort { port });
        }
        let &[val] = data else {
            return Err(RtcError::BadAccess {
                port,
                size: data.len(),
            });
        };
        if port == IO_RTC {
            self.addr = val & 0x7F;
            return Ok(());
        }
        self.data_access(Some(val), now).map(|_| ())
    }

    /// The earliest time [`Vrtc::tick`] is needed; `None` with no interrupt
    /// source running.
    pub fn next_deadline(&self) -> Option<Instant> {
        let periodic = self.periodic.and_then(|p| p.deadline());
        match (periodic, self.second_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Handle deadlines at or before `now` (`vrtc_callout_handler`): set PF
    /// for a periodic expiry, and advance the clock so alarm and
    /// update-ended flags are raised.
    pub fn tick(&mut self, now: Instant) {
        let old_hz = self.periodic_hz();
        let mut periodic_fired = false;
        if let Some(p) = self.periodic.as_mut()
            && p.deadline().is_some_and(|d| d <= now)
        {
            p.advance(now);
            periodic_fired = true;
        }
        if periodic_fired && self.pintr_enabled() {
            self.set_reg_c(self.regs[RTC_INTR] | RTCIR_PERIOD);
        }
        if self.aintr_enabled() || self.uintr_enabled() {
            let (t, base) = self.curtime(now);
            // Cannot fail: a halted clock has nothing to move.
            let _ = self.time_update(t, base);
        }
        self.rearm(old_hz, now);
    }

    /// `vrtc_reset` (VM reset): interrupt enables and SQWE off, flags clear.
    /// Time, format and NVRAM are kept.
    pub fn reset(&mut self, now: Instant) {
        let old_hz = self.periodic_hz();
        let b = self.regs[RTC_STATUSB] & !(RTCSB_ALL_INTRS | RTCSB_SQWE);
        // SET is unchanged, so no time is parsed and this cannot fail.
        let _ = self.set_reg_b(b, now);
        self.set_reg_c(0);
        self.rearm(old_hz, now);
    }

    /// `vrtc_get_time` (`bhyvectl --get-rtc-time`): the RTC time in seconds,
    /// `None` (bhyve's -1) while SET is held or after an invalid time.
    pub fn get_time(&self, now: Instant) -> Option<i64> {
        self.curtime(now).0
    }

    /// `vrtc_set_time` (`vm_rtc_settime`, `bhyvectl --set-rtc-time`).
    pub fn set_time(&mut self, rtc_secs: i64, now: Instant) -> Result<(), RtcError> {
        if !(0..=RTC_MAX_SECS).contains(&rtc_secs) {
            return Err(RtcError::TimeOutOfRange(rtc_secs));
        }
        let old_hz = self.periodic_hz();
        let result = self.time_update(Some(rtc_secs), now);
        self.rearm(old_hz, now);
        result
    }

    /// `vrtc_nvram_read` (`bhyvectl --get-rtc-nvram`): any of the 128 bytes,
    /// the clock bytes as of `now`.  Unlike a guest read, reg C is not
    /// cleared.
    pub fn get_nvram(&mut self, offset: usize, now: Instant) -> Result<u8, RtcError> {
        if offset >= RTC_NVRAM_SIZE {
            return Err(RtcError::BadNvramOffset(offset));
        }
        if offset < RTC_STATUSA || offset == RTC_CENTURY {
            let (t, _) = self.curtime(now);
            self.secs_to_rtc(t, false);
        }
        Ok(self.regs[offset])
    }

    /// `vrtc_nvram_write` (`vm_rtc_write`, `bhyvectl --set-rtc-nvram`): the
    /// host may set NVRAM bytes 0x0E-0x7F but not the century byte, the
    /// clock or the status registers.
    pub fn set_nvram(&mut self, offset: usize, value: u8) -> Result<(), RtcError> {
        if !(RTC_NVRAM_START..RTC_NVRAM_SIZE).contains(&offset) || offset == RTC_CENTURY {
            return Err(RtcError::BadNvramOffset(offset));
        }
        self.regs[offset] = value;
        Ok(())
    }

    /// The memory-size cells bhyve's `rtc_init` fills for the UEFI firmware,
    /// little-endian: 0x34-0x35 the 64 KiB blocks of `lowmem` above 16 MiB,
    /// 0x5B-0x5D the 64 KiB blocks of `highmem` (memory above 4 GiB).
    /// bhyve fills nothing else (no 0x15-0x18 or 0x30-0x31 words).  Values
    /// too large for the cells saturate rather than wrap as in bhyve.
    pub fn set_memory_size(&mut self, lowmem: u64, highmem: u64) {
        let lo = (lowmem.saturating_sub(16 * MIB) / KIB_64).min(0xFFFF);
        let hi = (highmem / KIB_64).min(0xFF_FFFF);
        let lo = lo.to_le_bytes();
        let hi = hi.to_le_bytes();
        self.regs[RTC_LMEM_LSB..RTC_LMEM_LSB + 2].copy_from_slice(&lo[..2]);
        self.regs[RTC_HMEM_LSB..RTC_HMEM_LSB + 3].copy_from_slice(&hi[..3]);
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{IrqEvent, Recorder};
    use super::*;

    /// 2024-02-29 13:45:30, a Thursday.
    const LEAP_DAY: i64 = 1_709_214_330;

    fn setup(secs: i64) -> (Vrtc, Arc<Recorder>, Instant) {
        let rec = Arc::new(Recorder::default());
        let t0 = Instant::now();
        (Vrtc::new(rec.clone(), secs, t0), rec, t0)
    }

    fn rd(r: &mut Vrtc, reg: u8, now: Instant) -> u8 {
        r.pio_write(IO_RTC, &[reg], now).unwrap();
        let mut b = [0u8];
        r.pio_read(IO_RTC_DATA, &mut b, now).unwrap();
        b[0]
    }

    fn wr(r: &mut Vrtc, reg: u8, val: u8, now: Instant) -> Result<(), RtcError> {
        r.pio_write(IO_RTC, &[reg], now)?;
        r.pio_write(IO_RTC_DATA, &[val], now)
    }

    /// sec, min, hour, dow, day, month, year, century.
    fn clock(r: &mut Vrtc, now: Instant) -> [u8; 8] {
        [0, 2, 4, 6, 7, 8, 9, 0x32].map(|reg| rd(r, reg, now))
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }
    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn date_math_round_trips() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        for days in [-719_468, -1, 0, 59, 10_956, 11_016, 19_782, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
        assert_eq!(civil_from_days(2_932_896), (9999, 12, 31));
        assert!(is_leap(2000) && is_leap(2024) && !is_leap(2100) && !is_leap(2023));
    }

    #[test]
    fn power_on_state() {
        let (mut r, rec, t0) = setup(0);
        // The index starts at reg D.
        let mut b = [0u8];
        r.pio_read(IO_RTC_DATA, &mut b, t0).unwrap();
        assert_eq!(b, [RTCSD_PWR]);
        assert_eq!(rd(&mut r, 0x0A, t0), 0x20);
        assert_eq!(rd(&mut r, 0x0B, t0), 0x02);
        assert_eq!(rd(&mut r, 0x0C, t0), 0x00);
        // Thursday 1970-01-01 00:00:00 in BCD.
        assert_eq!(clock(&mut r, t0), [0, 0, 0, 5, 1, 1, 0x70, 0x19]);
        assert_eq!(r.next_deadline(), None);
        assert!(rec.take().is_empty());
        // Out-of-range start times are clamped.
        let (r, _, t0) = setup(-5);
        assert_eq!(r.get_time(t0), Some(0));
    }

    #[test]
    fn reads_time_in_bcd_and_binary() {
        let (mut r, _, t0) = setup(LEAP_DAY);
        assert_eq!(
            clock(&mut r, t0),
            [0x30, 0x45, 0x13, 5, 0x29, 0x02, 0x24, 0x20]
        );
        wr(&mut r, 0x0B, RTCSB_24HR | RTCSB_BIN, t0).unwrap();
        assert_eq!(clock(&mut r, t0), [30, 45, 13, 5, 29, 2, 24, 20]);
        // Other bytes read back what was written; reg D ignores writes.
        wr(&mut r, 0x40, 0x5A, t0).unwrap();
        assert_eq!(rd(&mut r, 0x40, t0), 0x5A);
        wr(&mut r, 0x0D, 0x00, t0).unwrap();
        assert_eq!(rd(&mut r, 0x0D, t0), 0x80);
        // The NMI-mask bit of the index is dropped.
        assert_eq!(rd(&mut r, 0x80 | 0x0D, t0), 0x80);
        assert_eq!(rd(&mut r, 0x80 | 0x40, t0), 0x5A);
    }

    #[test]
    fn twelve_hour_mode() {
        let (mut r, _, t0) = setup(LEAP_DAY);
        wr(&mut r, 0x0B, 0, t0).unwrap();
        // 13:45 is 1 PM.
        assert_eq!(rd(&mut r, 4, t0), 0x81);
        r.set_time(LEAP_DAY - 13 * 3600, t0).unwrap(); // 00:45 → 12 AM
        assert_eq!(rd(&mut r, 4, t0), 0x12);
        r.set_time(LEAP_DAY - 3600, t0).unwrap(); // 12:45 → 12 PM
        assert_eq!(rd(&mut r, 4, t0), 0x92);
        r.set_time(LEAP_DAY + 10 * 3600, t0).unwrap(); // 23:45 → 11 PM
        assert_eq!(rd(&mut r, 4, t0), 0x91);
        wr(&mut r, 0x0B, RTCSB_BIN, t0).unwrap();
        assert_eq!(rd(&mut r, 4, t0), 0x8B);
        // Programming 1 PM in 12-hour BCD sets 13:xx.
        wr(&mut r, 0x0B, RTCSB_HALT, t0).unwrap();
        wr(&mut r, 4, 0x81, t0).unwrap();
        wr(&mut r, 0x0B, 0, t0).unwrap();
        assert_eq!(r.get_time(t0), Some(LEAP_DAY));
        // 12-hour value 0 is invalid.
        wr(&mut r, 0x0B, RTCSB_HALT, t0).unwrap();
        wr(&mut r, 4, 0x00, t0).unwrap();
        assert_eq!(wr(&mut r, 0x0B, 0, t0), Err(RtcError::BrokenTime));
    }

    #[test]
    fn time_advances_with_host_time_without_drift() {
        let (mut r, _, t0) = setup(LEAP_DAY);
        assert_eq!(rd(&mut r, 0, t0 + ms(999)), 0x30);
        assert_eq!(rd(&mut r, 0, t0 + s(1)), 0x31);
        // An access at 1.5 s must not move the second boundary to 2.5 s.
        assert_eq!(rd(&mut r, 0, t0 + ms(1500)), 0x31);
        assert_eq!(rd(&mut r, 0, t0 + s(2)), 0x32);
        assert_eq!(r.get_time(t0 + s(90)), Some(LEAP_DAY + 90));
        assert_eq!(clock(&mut r, t0 + s(90))[..3], [0x00, 0x47, 0x13]);
        // Writing a clock byte without SET is overwritten by the clock.
        wr(&mut r, 2, 0x10, t0 + s(90)).unwrap();
        assert_eq!(rd(&mut r, 2, t0 + s(90)), 0x47);
    }

    #[test]
    fn set_halts_and_sets_time() {
        let (mut r, _, t0) = setup(LEAP_DAY);
        wr(&mut r, 0x0B, RTCSB_HALT | RTCSB_24HR, t0 + ms(2500)).unwrap();
        assert_eq!(r.get_time(t0 + s(10)), None);
        // Frozen at the time SET was written.
        assert_eq!(rd(&mut r, 0, t0 + s(10)), 0x32);
        // Set 2023-12-31 23:59:58 while halted.
        for (reg, val) in [
            (0, 0x58),
            (2, 0x59),
            (4, 0x23),
            (7, 0x31),
            (8, 0x12),
            (9, 0x23),
        ] {
            wr(&mut r, reg, val, t0 + s(10)).unwrap();
        }
        assert_eq!(rd(&mut r, 0, t0 + s(20)), 0x58);
        // The host cannot set the time while the guest holds SET.
        assert_eq!(r.set_time(0, t0 + s(20)), Err(RtcError::Halted));
        wr(&mut r, 0x0B, RTCSB_24HR, t0 + s(20)).unwrap();
        let new_year_eve = days_from_civil(2023, 12, 31) * SECS_PER_DAY + 86_398;
        assert_eq!(r.get_time(t0 + s(20)), Some(new_year_eve));
        // Counting restarts from when SET was cleared.
        assert_eq!(
            clock(&mut r, t0 + s(22)),
            [0x00, 0x00, 0x00, 2, 0x01, 0x01, 0x24, 0x20]
        );
    }

    #[test]
    fn invalid_time_stops_the_clock() {
        let (mut r, _, t0) = setup(LEAP_DAY);
        wr(&mut r, 0x0B, RTCSB_HALT | RTCSB_24HR, t0).unwrap();
        // February 30th.
        wr(&mut r, 7, 0x30, t0).unwrap();
        assert_eq!(wr(&mut r, 0x0B, RTCSB_24HR, t0), Err(RtcError::BrokenTime));
        assert_eq!(r.get_time(t0 + s(5)), None);
        assert_eq!(rd(&mut r, 0, t0 + s(5)), 0x30);
        // Bad BCD.
        wr(&mut r, 0x0B, RTCSB_HALT | RTCSB_24HR, t0).unwrap();
        wr(&mut r, 7, 0x1A, t0).unwrap();
        assert!(wr(&mut r, 0x0B, RTCSB_24HR, t0).is_err());
        // The host can set it going again.
        r.set_time(LEAP_DAY, t0 + s(5)).unwrap();
        assert_eq!(r.get_time(t0 + s(6)), Some(LEAP_DAY + 1));
        assert_eq!(r.set_time(-1, t0), Err(RtcError::TimeOutOfRange(-1)));
        assert!(r.set_time(RTC_MAX_SECS + 1, t0).is_err());
    }

    #[test]
    fn century_write_without_set_recomputes_time() {
        let (mut r, _, t0) = setup(LEAP_DAY);
        // 2124 is a leap year too, so Feb 29 stays valid.
        wr(&mut r, 0x32, 0x21, t0 + s(1)).unwrap();
        let later = days_from_civil(2124, 2, 29) * SECS_PER_DAY + LEAP_DAY % SECS_PER_DAY + 1;
        assert_eq!(r.get_time(t0 + s(1)), Some(later));
        assert_eq!(r.get_time(t0 + s(3)), Some(later + 2));
        // 1924 is before 1970: the clock stops.
        assert_eq!(wr(&mut r, 0x32, 0x19, t0 + s(3)), Err(RtcError::BrokenTime));
        assert_eq!(r.get_time(t0 + s(9)), None);
    }

    #[test]
    fn divider_reset_stops_clock_and_uip_reads_zero() {
        let (mut r, _, t0) = setup(LEAP_DAY);
        // UIP cannot be written; DV=110 holds the divider in reset.
        wr(&mut r, 0x0A, 0xE0, t0 + ms(500)).unwrap();
        assert_eq!(rd(&mut r, 0x0A, t0), 0x60);
        assert_eq!(r.get_time(t0 + s(100)), Some(LEAP_DAY));
        wr(&mut r, 0x0A, 0x26, t0 + s(100)).unwrap();
        assert_eq!(rd(&mut r, 0x0A, t0 + s(100)), 0x26);
        assert_eq!(r.get_time(t0 + ms(100_999)), Some(LEAP_DAY));
        assert_eq!(r.get_time(t0 + s(101)), Some(LEAP_DAY + 1));
    }

    #[test]
    fn rollover_across_days_months_years() {
        let cases = [
            // 1999-12-31 23:59:59 Fri → 2000-01-01 Sat, century 19 → 20.
            (946_684_799, [0x00, 0x00, 0x00, 7, 0x01, 0x01, 0x00, 0x20]),
            // 2024 is leap: Feb 28 Wed → Feb 29 Thu.
            (1_709_164_799, [0x00, 0x00, 0x00, 5, 0x29, 0x02, 0x24, 0x20]),
            // 2023 is not: Feb 28 Tue → Mar 1 Wed.
            (1_677_628_799, [0x00, 0x00, 0x00, 4, 0x01, 0x03, 0x23, 0x20]),
            // 2100 is not (century rule): Feb 28 Sun → Mar 1 Mon.
            (4_107_542_399, [0x00, 0x00, 0x00, 2, 0x01, 0x03, 0x00, 0x21]),
            // 2000 is (400-year rule): Feb 28 Mon → Feb 29 Tue.
            (951_782_399, [0x00, 0x00, 0x00, 3, 0x29, 0x02, 0x00, 0x20]),
        ];
        for (secs, after) in cases {
            let (mut r, _, t0) = setup(secs);
            assert_eq!(rd(&mut r, 0, t0), 0x59, "{secs}");
            assert_eq!(clock(&mut r, t0 + s(1)), after, "{secs}");
        }
        // Day 31 → 1 of a 30-day month, in binary.
        let (mut r, _, t0) = setup(days_from_civil(2024, 4, 30) * SECS_PER_DAY + 86_399);
        wr(&mut r, 0x0B, RTCSB_24HR | RTCSB_BIN, t0).unwrap();
        assert_eq!(clock(&mut r, t0 + s(1)), [0, 0, 0, 4, 1, 5, 24, 20]);
    }

    #[test]
    fn periodic_interrupt_1024hz() {
        let (mut r, rec, t0) = setup(LEAP_DAY);
        // RS 6 alone does nothing until PIE.
        wr(&mut r, 0x0A, 0x26, t0).unwrap();
        assert_eq!(r.next_deadline(), None);
        wr(&mut r, 0x0B, RTCSB_24HR | RTCSB_PINTR, t0).unwrap();
        let d1 = t0 + Duration::from_nanos(976_562);
        let d2 = t0 + Duration::from_nanos(1_953_125);
        assert_eq!(r.next_deadline(), Some(d1));
        r.tick(d1 - Duration::from_nanos(1));
        assert!(rec.take().is_empty());
        r.tick(d1);
        assert_eq!(rec.take(), vec![IrqEvent::Pulse(RTC_IRQ)]);
        assert_eq!(r.next_deadline(), Some(d2));
        // IRQF still set: no new edge until reg C is read.
        r.tick(d2);
        assert!(rec.take().is_empty());
        assert_eq!(rd(&mut r, 0x0C, d2), RTCIR_INT | RTCIR_PERIOD);
        let d3 = t0 + Duration::from_nanos(2_929_687);
        assert_eq!(r.next_deadline(), Some(d3));
        r.tick(d3);
        assert_eq!(rec.take(), vec![IrqEvent::Pulse(RTC_IRQ)]);
        rd(&mut r, 0x0C, d3);
        // Period 1024 lands exactly on 1 s, not on 1024 truncated periods.
        r.tick(t0 + Duration::from_nanos(999_500_000));
        assert_eq!(rec.take(), vec![IrqEvent::Pulse(RTC_IRQ)]);
        assert_eq!(r.next_deadline(), Some(t0 + s(1)));
        // A late tick skips the missed periods instead of bursting.
        rd(&mut r, 0x0C, t0 + s(1));
        r.tick(t0 + ms(1010));
        assert_eq!(rec.take(), vec![IrqEvent::Pulse(RTC_IRQ)]);
        assert_eq!(
            r.next_deadline(),
            Some(t0 + Duration::from_nanos(1035 * 1_000_000_000 / 1024))
        );
        // Rate 15 = 2 Hz, restarted from the write.
        wr(&mut r, 0x0A, 0x2F, t0 + s(2)).unwrap();
        assert_eq!(r.next_deadline(), Some(t0 + ms(2500)));
        // RS 0 turns it off; so does holding the divider in reset.
        wr(&mut r, 0x0A, 0x20, t0 + s(2)).unwrap();
        assert_eq!(r.next_deadline(), None);
        wr(&mut r, 0x0A, 0x63, t0 + s(2)).unwrap();
        assert_eq!(r.next_deadline(), None);
        // Rate 3 = 8192 Hz, 1 and 2 = 256 and 128 Hz.
        for (rs, hz) in [(3u8, 8192u64), (1, 256), (2, 128)] {
            wr(&mut r, 0x0A, 0x20 | rs, t0 + s(3)).unwrap();
            assert_eq!(
                r.next_deadline(),
                Some(t0 + s(3) + Duration::from_nanos(1_000_000_000 / hz))
            );
        }
        // Disabling PIE stops it.
        wr(&mut r, 0x0B, RTCSB_24HR, t0 + s(3)).unwrap();
        assert_eq!(r.next_deadline(), None);
    }

    #[test]
    fn alarm_interrupt() {
        let (mut r, rec, t0) = setup(LEAP_DAY);
        // Alarm at 13:45:33.
        wr(&mut r, 1, 0x33, t0).unwrap();
        wr(&mut r, 3, 0x45, t0).unwrap();
        wr(&mut r, 5, 0x13, t0).unwrap();
        wr(&mut r, 0x0B, RTCSB_24HR | RTCSB_AINTR, t0 + ms(200)).unwrap();
        assert_eq!(r.next_deadline(), Some(t0 + s(1)));
        r.tick(t0 + s(1));
        r.tick(t0 + s(2));
        assert!(rec.take().is_empty());
        assert_eq!(r.next_deadline(), Some(t0 + s(3)));
        r.tick(t0 + s(3));
        assert_eq!(rec.take(), vec![IrqEvent::Pulse(RTC_IRQ)]);
        assert_eq!(rd(&mut r, 0, t0 + s(3)), 0x33);
        assert_eq!(rd(&mut r, 0x0C, t0 + s(3)), RTCIR_INT | RTCIR_ALARM);
        r.tick(t0 + s(4));
        assert!(rec.take().is_empty());

        // Don't-care bytes: every second.
        wr(&mut r, 1, 0xFF, t0 + s(4)).unwrap();
        wr(&mut r, 3, 0xC0, t0 + s(4)).unwrap();
        wr(&mut r, 5, 0xC0, t0 + s(4)).unwrap();
        r.tick(t0 + s(5));
        assert_eq!(rec.take(), vec![IrqEvent::Pulse(RTC_IRQ)]);
        assert_eq!(rd(&mut r, 0x0C, t0 + s(5)), 0xA0);

        // A missed alarm in a long gap is still caught, without visiting
        // every second of it.
        wr(&mut r, 1, 0x00, t0 + s(5)).unwrap();
        wr(&mut r, 3, 0x00, t0 + s(5)).unwrap();
        wr(&mut r, 5, 0x00, t0 + s(5)).unwrap();
        r.set_time(LEAP_DAY + 400 * SECS_PER_DAY, t0 + s(5))
            .unwrap();
        assert_eq!(rec.take(), vec![IrqEvent::Pulse(RTC_IRQ)]);
        assert_eq!(rd(&mut r, 0x0C, t0 + s(5)), 0xA0);
        assert_eq!(r.get_time(t0 + s(5)), Some(LEAP_DAY + 400 * SECS_PER_DAY));
        // Stepping back without a match raises nothing.
        r.set_time(LEAP_DAY, t0 + s(5)).unwrap();
        assert!(rec.take().is_empty());
    }

    #[test]
    fn alarm_flag_without_enable_does_not_interrupt() {
        let (mut r, rec, t0) = setup(LEAP_DAY);
        // An alarm matching every second but AIE off: no AF at all (bhyve
        // only computes flags for enabled sources).
        wr(&mut r, 1, 0xFF, t0).unwrap();
        wr(&mut r, 3, 0xFF, t0).unwrap();
        wr(&mut r, 5, 0xFF, t0).unwrap();
        r.tick(t0 + s(2));
        assert!(rec.take().is_empty());
        assert_eq!(rd(&mut r, 0x0C, t0 + s(2)), 0);
    }

    #[test]
    fn update_ended_interrupt() {
        let (mut r, rec, t0) = setup(LEAP_DAY);
        wr(&mut r, 0x0B, RTCSB_24HR | RTCSB_UINTR, t0 + ms(300)).unwrap();
        assert_eq!(r.next_deadline(), Some(t0 + s(1)));
        r.tick(t0 + ms(999));
        assert!(rec.take().is_empty());
        r.tick(t0 + s(1));
        assert_eq!(rec.take(), vec![IrqEvent::Pulse(RTC_IRQ)]);
        assert_eq!(r.next_deadline(), Some(t0 + s(2)));
        assert_eq!(rd(&mut r, 0x0C, t0 + s(1)), RTCIR_INT | RTCIR_UPDATE);
        // A guest read after the boundary but before the tick sees UF too.
        assert_eq!(rd(&mut r, 0x0C, t0 + ms(2100)), RTCIR_INT | RTCIR_UPDATE);
        assert_eq!(rec.take(), vec![IrqEvent::Pulse(RTC_IRQ)]);
        assert_eq!(rd(&mut r, 0x0C, t0 + ms(2100)), 0);
        // Setting SET clears UIE and stops the second timer.
        wr(
            &mut r,
            0x0B,
            RTCSB_24HR | RTCSB_UINTR | RTCSB_HALT,
            t0 + ms(2200),
        )
        .unwrap();
        assert_eq!(rd(&mut r, 0x0B, t0 + ms(2200)), RTCSB_24HR | RTCSB_HALT);
        assert_eq!(r.next_deadline(), None);
    }

    #[test]
    fn reg_c_read_clears_and_rearms_edge() {
        let (mut r, rec, t0) = setup(LEAP_DAY);
        wr(&mut r, 0x0B, RTCSB_24HR | RTCSB_UINTR, t0).unwrap();
        r.tick(t0 + s(1));
        assert_eq!(rec.take(), vec![IrqEvent::Pulse(RTC_IRQ)]);
        // Writes to reg C are ignored.
        wr(&mut r, 0x0C, 0x00, t0 + s(1)).unwrap();
        // The host read does not clear it; the guest read does.
        assert_eq!(r.get_nvram(0x0C, t0 + s(1)), Ok(0x90));
        assert_eq!(rd(&mut r, 0x0C, t0 + s(1)), 0x90);
        assert_eq!(rd(&mut r, 0x0C, t0 + s(1)), 0x00);
        // A pulse has no level to lower.
        assert!(rec.take().is_empty());
        r.tick(t0 + s(2));
        assert_eq!(rec.take(), vec![IrqEvent::Pulse(RTC_IRQ)]);
        // Disabling UIE with UF pending drops IRQF without a new edge;
        // re-enabling it raises IRQF again and pulses.
        wr(&mut r, 0x0B, RTCSB_24HR, t0 + s(2)).unwrap();
        assert_eq!(r.get_nvram(0x0C, t0 + s(2)), Ok(RTCIR_UPDATE));
        wr(&mut r, 0x0B, RTCSB_24HR | RTCSB_UINTR, t0 + s(2)).unwrap();
        assert_eq!(rec.take(), vec![IrqEvent::Pulse(RTC_IRQ)]);
        assert_eq!(r.get_nvram(0x0C, t0 + s(2)), Ok(0x90));
        // VM reset clears enables and flags.
        r.reset(t0 + s(2));
        assert_eq!(r.get_nvram(0x0B, t0 + s(2)), Ok(RTCSB_24HR));
        assert_eq!(r.get_nvram(0x0C, t0 + s(2)), Ok(0));
        assert_eq!(r.next_deadline(), None);
    }

    #[test]
    fn memory_size_cells() {
        let (mut r, _, t0) = setup(0);
        r.set_memory_size(512 * MIB, 0);
        // (512 - 16) MiB / 64 KiB = 7936 = 0x1F00.
        assert_eq!(r.get_nvram(0x34, t0), Ok(0x00));
        assert_eq!(r.get_nvram(0x35, t0), Ok(0x1F));
        for off in 0x5B..=0x5D {
            assert_eq!(r.get_nvram(off, t0), Ok(0));
        }
        // 6 GiB: bhyve splits 3 GiB below 4 GiB and 3 GiB above.
        r.set_memory_size(3072 * MIB, 3072 * MIB);
        // (3072 - 16) MiB / 64 KiB = 48896 = 0xBF00.
        assert_eq!(r.get_nvram(0x34, t0), Ok(0x00));
        assert_eq!(r.get_nvram(0x35, t0), Ok(0xBF));
        // 3 GiB / 64 KiB = 49152 = 0x00C000.
        assert_eq!(r.get_nvram(0x5B, t0), Ok(0x00));
        assert_eq!(r.get_nvram(0x5C, t0), Ok(0xC0));
        assert_eq!(r.get_nvram(0x5D, t0), Ok(0x00));
        // Nothing else is filled.
        for off in [0x15, 0x16, 0x17, 0x18, 0x30, 0x31] {
            assert_eq!(r.get_nvram(off, t0), Ok(0));
        }
        // The guest sees the same bytes.
        assert_eq!(rd(&mut r, 0x35, t0), 0xBF);
        // Tiny and huge sizes saturate instead of wrapping.
        r.set_memory_size(MIB, u64::MAX);
        assert_eq!(r.get_nvram(0x34, t0), Ok(0));
        assert_eq!(r.get_nvram(0x5D, t0), Ok(0xFF));
    }

    #[test]
    fn host_nvram_and_time_accessors() {
        let (mut r, _, t0) = setup(LEAP_DAY);
        assert_eq!(r.set_nvram(0x0E, 0x11), Ok(()));
        assert_eq!(r.set_nvram(0x7F, 0x22), Ok(()));
        assert_eq!(rd(&mut r, 0x0E, t0), 0x11);
        assert_eq!(rd(&mut r, 0x7F, t0), 0x22);
        for off in [0x00, 0x09, 0x0A, 0x0D, 0x32, 0x80, usize::MAX] {
            assert_eq!(r.set_nvram(off, 1), Err(RtcError::BadNvramOffset(off)));
        }
        assert_eq!(r.get_nvram(0x80, t0), Err(RtcError::BadNvramOffset(0x80)));
        // Clock bytes are current when read by the host.
        assert_eq!(r.get_nvram(0x00, t0 + s(5)), Ok(0x35));
        assert_eq!(r.get_nvram(0x32, t0 + s(5)), Ok(0x20));
        assert_eq!(r.get_time(t0 + s(5)), Some(LEAP_DAY + 5));
        r.set_time(1_720_053_000, t0 + s(5)).unwrap();
        assert_eq!(r.get_time(t0 + s(6)), Some(1_720_053_001));
        assert_eq!(
            clock(&mut r, t0 + s(6)),
            [0x01, 0x30, 0x00, 5, 0x04, 0x07, 0x24, 0x20]
        );
    }

    #[test]
    fn rtc_time_localtime_vs_utc() {
        assert_eq!(rtc_time(LEAP_DAY, false, 3600), LEAP_DAY);
        assert_eq!(rtc_time(LEAP_DAY, true, 3600), LEAP_DAY + 3600);
        assert_eq!(rtc_time(LEAP_DAY, true, -5 * 3600), LEAP_DAY - 5 * 3600);
        // The host offset is within a day either way.
        assert!(host_utc_offset(LEAP_DAY).abs() < SECS_PER_DAY);
    }

    #[test]
    fn bad_ports_and_sizes() {
        let (mut r, _, t0) = setup(LEAP_DAY);
        let mut b2 = [0u8; 2];
        assert_eq!(
            r.pio_read(IO_RTC_DATA, &mut b2, t0),
            Err(RtcError::BadAccess {
                port: IO_RTC_DATA,
                size: 2
            })
        );
        assert_eq!(b2, [0xFF, 0xFF]);
        let mut b0 = [0u8; 0];
        assert!(r.pio_read(IO_RTC, &mut b0, t0).is_err());
        assert!(r.pio_write(IO_RTC, &[1, 2], t0).is_err());
        assert!(r.pio_write(IO_RTC_DATA, &[], t0).is_err());
        assert!(r.pio_write(IO_RTC_DATA, &[0; 4], t0).is_err());
        let mut b1 = [0u8];
        assert_eq!(
            r.pio_read(0x72, &mut b1, t0),
            Err(RtcError::BadPort { port: 0x72 })
        );
        assert_eq!(b1, [0xFF]);
        assert!(r.pio_write(0x74, &[0], t0).is_err());
        // The index port reads 0xFF and the rejected writes changed nothing.
        r.pio_read(IO_RTC, &mut b1, t0).unwrap();
        assert_eq!(b1, [0xFF]);
        r.pio_read(IO_RTC_DATA, &mut b1, t0).unwrap();
        assert_eq!(b1, [0x80]);
        // Garbage on every register never panics.
        for reg in 0..=0xFFu8 {
            let _ = wr(&mut r, reg, 0xFF, t0);
            let _ = rd(&mut r, reg, t0 + s(1));
        }
        r.tick(t0 + s(2));
    }
}
