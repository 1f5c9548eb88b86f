//! HPET (`vhpet.c`): a 10 MHz, 32-bit main counter with 8 comparators that
//! interrupt through I/O APIC pins or FSB (MSI) messages.  LegacyReplacement
//! routing is not offered, so nothing reaches the 8259.
//!
//! bhyve arms a callout per timer; here each timer has a deadline instead,
//! and the caller's timer thread calls [`Vhpet::tick`] when the earliest
//! one ([`Vhpet::next_deadline`]) passes.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::IrqSink;

/// Guest-physical base of the HPET block (`VHPET_BASE`).
pub const VHPET_BASE: u64 = 0xFED0_0000;
/// Size of the register block (`VHPET_SIZE`).
pub const VHPET_SIZE: u64 = 0x400;
/// Main counter frequency.
pub const HPET_FREQ: u64 = 10_000_000;
/// Number of comparators (`VHPET_NUM_TIMERS`).
pub const VHPET_NUM_TIMERS: usize = 8;
/// Nanoseconds per main-counter tick.
const TICK_NS: u64 = 1_000_000_000 / HPET_FREQ;

/// General capabilities and ID (`vhpet_capabilities`, also what
/// `vm_get_hpet_capabilities` hands the ACPI HPET table): period in fs,
/// vendor 0x8086, 8 timers (NUM_TIM_CAP 7), revision 1, 32-bit counter, no
/// LegacyReplacement capability.
pub const HPET_CAPABILITIES: u64 = ((1_000_000_000_000_000 / HPET_FREQ) << 32)
    | (0x8086 << 16)
    | (((VHPET_NUM_TIMERS as u64) - 1) << 8)
    | 1;

// Register offsets (dev/acpica/acpi_hpet.h).
const HPET_CAPABILITIES_REG: u64 = 0x000;
const HPET_CONFIG: u64 = 0x010;
const HPET_ISR: u64 = 0x020;
const HPET_MAIN_COUNTER: u64 = 0x0F0;
const HPET_TIMER_BASE: u64 = 0x100;
const HPET_TIMER_STRIDE: u64 = 0x20;

// General configuration bits.
const HPET_CNF_ENABLE: u64 = 1 << 0;
const HPET_CNF_LEG_RT: u64 = 1 << 1;

// Timer N configuration and capability bits.
const HPET_TCNF_INT_TYPE: u64 = 1 << 1;
const HPET_TCNF_INT_ENB: u64 = 1 << 2;
const HPET_TCNF_TYPE: u64 = 1 << 3;
const HPET_TCAP_PER_INT: u64 = 1 << 4;
const HPET_TCAP_SIZE: u64 = 1 << 5;
const HPET_TCNF_VAL_SET: u64 = 1 << 6;
const HPET_TCNF_32MODE: u64 = 1 << 8;
const HPET_TCNF_INT_ROUTE: u64 = 0x1F << 9;
const HPET_TCNF_FSB_EN: u64 = 1 << 14;
const HPET_TCAP_FSB_INT_DEL: u64 = 1 << 15;
const HPET_TCAP_INT_ROUTE: u64 = 0xFFFF_FFFF << 32;
const HPET_TCAP_RO_MASK: u64 =
    HPET_TCAP_INT_ROUTE | HPET_TCAP_FSB_INT_DEL | HPET_TCAP_SIZE | HPET_TCAP_PER_INT;

#[derive(Debug, Clone, Copy)]
struct Timer {
    cap_config: u64,
    /// FSB interrupt route: address in the high half, data in the low half.
    msireg: u64,
    compval: u32,
    /// Period of a periodic timer; 0 for one-shot.
    comprate: u32,
    /// When the counter reaches `compval` (bhyve's armed callout).
    deadline: Option<Instant>,
}

pub struct Vhpet {
    irq: Arc<dyn IrqSink>,
    config: u64,
    isr: u64,
    /// Counter value at `countbase_time` (the whole value while stopped).
    countbase: u32,
    countbase_time: Instant,
    timers: [Timer; VHPET_NUM_TIMERS],
}

impl fmt::Debug for Vhpet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vhpet")
            .field("config", &self.config)
            .field("isr", &self.isr)
            .field("countbase", &self.countbase)
            .field("timers", &self.timers)
            .finish_non_exhaustive()
    }
}

/// The I/O APIC pins a timer may route to (`vhpet_init`): the top four pins
/// of a 24..31-pin I/O APIC, 24-31 of a 32-pin one, none below 20 pins.
fn allowed_irqs(ioapic_pins: u32) -> u32 {
    if ioapic_pins >= 32 {
        0xFF00_0000
    } else if ioapic_pins >= 20 {
        0xF << (ioapic_pins - 4)
    } else {
        0
    }
}

fn update_register(reg: &mut u64, data: u64, mask: u64) {
    *reg = (*reg & !mask) | (data & mask);
}

impl Vhpet {
    /// `vhpet_init`.  `ioapic_pins` is the I/O APIC's pin count (24 under
    /// KVM's in-kernel irqchip → GSIs 20-23).
    pub fn new(irq: Arc<dyn IrqSink>, ioapic_pins: u32, now: Instant) -> Self {
        let cap_config = (u64::from(allowed_irqs(ioapic_pins)) << 32)
            | HPET_TCAP_PER_INT
            | HPET_TCAP_FSB_INT_DEL;
        Vhpet {
            irq,
            config: 0,
            isr: 0,
            countbase: 0,
            countbase_time: now,
            timers: [Timer {
                cap_config,
                msireg: 0,
                compval: 0xFFFF_FFFF,
                comprate: 0,
                deadline: None,
            }; VHPET_NUM_TIMERS],
        }
    }

    fn counter_enabled(&self) -> bool {
        self.config & HPET_CNF_ENABLE != 0
    }

    /// `vhpet_counter`: the main counter at `now`.
    fn counter(&self, now: Instant) -> u32 {
        if !self.counter_enabled() {
            return self.countbase;
        }
        let ticks = now
            .saturating_duration_since(self.countbase_time)
            .as_nanos()
            / u128::from(TICK_NS);
        // The counter is 32 bits wide: truncation is the wrap-around.
        self.countbase.wrapping_add(ticks as u32)
    }

    fn msi_enabled(&self, n: usize) -> bool {
        let want = HPET_TCAP_FSB_INT_DEL | HPET_TCNF_FSB_EN;
        self.timers[n].cap_config & want == want
    }

    /// The I/O APIC pin of timer `n`; 0 (not connected) when it uses MSI.
    fn ioapic_pin(&self, n: usize) -> u32 {
        if self.msi_enabled(n) {
            return 0;
        }
        ((self.timers[n].cap_config & HPET_TCNF_INT_ROUTE) >> 9) as u32
    }

    fn periodic(&self, n: usize) -> bool {
        self.timers[n].cap_config & HPET_TCNF_TYPE != 0
    }

    fn interrupt_enabled(&self, n: usize) -> bool {
        self.timers[n].cap_config & HPET_TCNF_INT_ENB != 0
    }

    fn edge_trig(&self, n: usize) -> bool {
        self.timers[n].cap_config & HPET_TCNF_INT_TYPE == 0
    }

    fn clear_isr(&mut self, n: usize) {
        if self.isr & (1 << n) != 0 {
            self.irq.deassert_irq(self.ioapic_pin(n));
            self.isr &= !(1 << n);
        }
    }

    /// `vhpet_timer_interrupt`.
    fn timer_interrupt(&mut self, n: usize) {
        if !self.interrupt_enabled(n) {
            return;
        }
        // A level-triggered interrupt still asserted is not raised again.
        if self.isr & (1 << n) != 0 {
            return;
        }
        if self.msi_enabled(n) {
            let msireg = self.timers[n].msireg;
            self.irq.send_msi(msireg >> 32, msireg & 0xFFFF_FFFF);
            return;
        }
        let pin = self.ioapic_pin(n);
        if pin == 0 {
            return;
        }
        if self.edge_trig(n) {
            self.irq.pulse_irq(pin);
        } else {
            self.isr |= 1 << n;
            self.irq.assert_irq(pin);
        }
    }

    /// `vhpet_adjust_compval`: move a periodic comparator to the first
    /// period boundary past `counter`.
    fn adjust_compval(&mut self, n: usize, counter: u32) {
        let t = &mut self.timers[n];
        // A comparator still ahead of the counter is the next match already.
        // bhyve's formula assumes it is behind (it is called after a fire)
        // and would wrap it to a value just past the counter.
        let ahead = t.compval.wrapping_sub(counter);
        if ahead != 0 && ahead < 1 << 31 {
            return;
        }
        let periods = counter.wrapping_sub(t.compval) / t.comprate;
        t.compval = t
            .compval
            .wrapping_add(periods.wrapping_add(1).wrapping_mul(t.comprate));
    }

    /// `vhpet_start_timer`.  `refire` is set when re-arming right after the
    /// timer fired: a one-shot comparator equal to the counter then means
    /// the next match is a full wrap away, not now.
    fn start_timer(&mut self, n: usize, counter: u32, now: Instant, refire: bool) {
        if self.timers[n].comprate != 0 {
            self.adjust_compval(n, counter);
        }
        // One-shot: a comparator in the past fires after the counter wraps,
        // as on hardware; that is the guest's business.
        let mut delta = u64::from(self.timers[n].compval.wrapping_sub(counter));
        if delta == 0 && refire {
            delta = 1 << 32;
        }
        self.timers[n].deadline = now.checked_add(Duration::from_nanos(delta * TICK_NS));
    }

    /// `vhpet_stop_timer`: a deadline that passed but has not been ticked
    /// yet still delivers its interrupt, or a one-shot guest would wait a
    /// whole counter wrap for it.
    fn stop_timer(&mut self, n: usize, now: Instant) {
        if let Some(deadline) = self.timers[n].deadline.take()
            && deadline < now
        {
            self.timer_interrupt(n);
        }
    }

    fn start_counting(&mut self, now: Instant) {
        self.countbase_time = now;
        for n in 0..VHPET_NUM_TIMERS {
            // Restart from the value the counter had when it stopped.
            self.start_timer(n, self.countbase, now, false);
        }
    }

    fn stop_counting(&mut self, counter: u32, now: Instant) {
        self.countbase = counter;
        for n in 0..VHPET_NUM_TIMERS {
            self.stop_timer(n, now);
        }
    }

    /// `vhpet_timer_update_config`.
    fn timer_update_config(&mut self, n: usize, data: u64, mask: u64) {
        let old_pin = self.ioapic_pin(n);
        let oldval = self.timers[n].cap_config;
        let mut newval = oldval;
        update_register(&mut newval, data, mask);
        newval &= !(HPET_TCAP_RO_MASK | HPET_TCNF_32MODE);
        newval |= oldval & HPET_TCAP_RO_MASK;
        if newval == oldval {
            return;
        }
        self.timers[n].cap_config = newval;

        // A route outside INT_ROUTE_CAP is replaced by 0 (not connected).
        let allowed = (self.timers[n].cap_config >> 32) as u32;
        let new_pin = self.ioapic_pin(n);
        if new_pin != 0 && allowed & (1 << new_pin) == 0 {
            self.timers[n].cap_config &= !HPET_TCNF_INT_ROUTE;
        }

        if !self.periodic(n) {
            self.timers[n].comprate = 0;
        }

        // Never leave a level interrupt asserted that nothing can clear:
        // drop it when it is disabled, becomes edge or MSI, or moves pins.
        if self.isr & (1 << n) != 0 {
            let clear = !self.interrupt_enabled(n)
                || self.msi_enabled(n)
                || self.edge_trig(n)
                || self.ioapic_pin(n) != old_pin;
            if clear {
                self.irq.deassert_irq(old_pin);
                self.isr &= !(1 << n);
            }
        }
    }

    fn write_comparator(&mut self, n: usize, data: u64, mask: u64, now: Instant) {
        let old_compval = self.timers[n].compval;
        let old_comprate = self.timers[n].comprate;
        let t = &mut self.timers[n];
        if t.cap_config & HPET_TCNF_TYPE != 0 {
            // Periodic: the write sets the period, and the comparator only
            // with VAL_SET.
            let mut val = u64::from(t.comprate);
            update_register(&mut val, data, mask);
            t.comprate = val as u32;
            if t.cap_config & HPET_TCNF_VAL_SET != 0 {
                t.compval = val as u32;
            }
        } else {
            let mut val = u64::from(t.compval);
            update_register(&mut val, data, mask);
            t.compval = val as u32;
        }
        t.cap_config &= !HPET_TCNF_VAL_SET;

        if (t.compval != old_compval || t.comprate != old_comprate) && self.counter_enabled() {
            let counter = self.counter(now);
            self.start_timer(n, counter, now, false);
        }
    }

    /// A guest MMIO write at `offset` from [`VHPET_BASE`].  Accesses other
    /// than naturally aligned 4 or 8 bytes are ignored.
    pub fn write(&mut self, offset: u64, data: &[u8], now: Instant) {
        let (val, mut mask) = match *data {
            [a, b, c, d] => (u64::from(u32::from_le_bytes([a, b, c, d])), 0xFFFF_FFFFu64),
            [a, b, c, d, e, f, g, h] => (u64::from_le_bytes([a, b, c, d, e, f, g, h]), u64::MAX),
            _ => return,
        };
        let size = data.len() as u64;
        if offset & (size - 1) != 0 {
            return;
        }
        let mut val = val;
        if size == 4 && offset & 4 != 0 {
            mask <<= 32;
            val <<= 32;
        }
        let reg = offset & !7;

        match reg {
            HPET_CONFIG => {
                // Take the counter before the update: if this disables the
                // HPET, that is the value it keeps.
                let counter = self.counter(now);
                let oldval = self.config;
                update_register(&mut self.config, val, mask);
                self.config &= !HPET_CNF_LEG_RT;
                if (oldval ^ self.config) & HPET_CNF_ENABLE != 0 {
                    if self.counter_enabled() {
                        self.start_counting(now);
                    } else {
                        self.stop_counting(counter, now);
                    }
                }
            }
            HPET_ISR => {
                let clear = self.isr & val;
                for n in 0..VHPET_NUM_TIMERS {
                    if clear & (1 << n) != 0 {
                        self.clear_isr(n);
                    }
                }
            }
            HPET_MAIN_COUNTER => {
                let mut v = u64::from(self.counter(now));
                update_register(&mut v, val, mask);
                self.countbase = v as u32;
                if self.counter_enabled() {
                    self.start_counting(now);
                }
            }
            _ => {
                let Some((n, r)) = timer_reg(reg) else { return };
                match r {
                    0x00 => self.timer_update_config(n, val, mask),
                    0x08 => self.write_comparator(n, val, mask, now),
                    0x10 => update_register(&mut self.timers[n].msireg, val, mask),
                    _ => {}
                }
            }
        }
    }

    /// A guest MMIO read at `offset` from [`VHPET_BASE`].  Accesses other
    /// than naturally aligned 4 or 8 bytes, and unknown registers, read 0.
    pub fn read(&self, offset: u64, data: &mut [u8], now: Instant) {
        data.fill(0);
        let size = data.len() as u64;
        if (size != 4 && size != 8) || offset & (size - 1) != 0 {
            return;
        }
        let reg = offset & !7;
        let mut val = match reg {
            HPET_CAPABILITIES_REG => HPET_CAPABILITIES,
            HPET_CONFIG => self.config,
            HPET_ISR => self.isr,
            HPET_MAIN_COUNTER => u64::from(self.counter(now)),
            _ => match timer_reg(reg) {
                Some((n, 0x00)) => self.timers[n].cap_config,
                Some((n, 0x08)) => u64::from(self.timers[n].compval),
                Some((n, 0x10)) => self.timers[n].msireg,
                _ => 0,
            },
        };
        if size == 4 && offset & 4 != 0 {
            val >>= 32;
        }
        let bytes = val.to_le_bytes();
        data.copy_from_slice(&bytes[..data.len()]);
    }

    /// The earliest time a timer needs [`Vhpet::tick`]; `None` while the
    /// counter is stopped.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.iter().filter_map(|t| t.deadline).min()
    }

    /// Fire every timer whose deadline is at or before `now`
    /// (`vhpet_handler`): re-arm it, then interrupt.
    pub fn tick(&mut self, now: Instant) {
        for n in 0..VHPET_NUM_TIMERS {
            if self.timers[n].deadline.is_some_and(|d| d <= now) {
                let counter = self.counter(now);
                self.start_timer(n, counter, now, true);
                self.timer_interrupt(n);
            }
        }
    }
}

/// Timer number and register within the timer block for an 8-byte-aligned
/// offset in 0x100..0x200.
fn timer_reg(reg: u64) -> Option<(usize, u64)> {
    let rel = reg.checked_sub(HPET_TIMER_BASE)?;
    let n = usize::try_from(rel / HPET_TIMER_STRIDE).ok()?;
    (n < VHPET_NUM_TIMERS).then_some((n, rel % HPET_TIMER_STRIDE))
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{IrqEvent, Recorder};
    use super::*;

    const T0_CNF: u64 = 0x100;
    const T0_CMP: u64 = 0x108;
    const T0_FSB: u64 = 0x110;

    fn setup(pins: u32) -> (Vhpet, Arc<Recorder>, Instant) {
        let rec = Arc::new(Recorder::default());
        let t0 = Instant::now();
        (Vhpet::new(rec.clone(), pins, t0), rec, t0)
    }

    fn rd8(h: &Vhpet, off: u64, now: Instant) -> u64 {
        let mut b = [0u8; 8];
        h.read(off, &mut b, now);
        u64::from_le_bytes(b)
    }
    fn rd4(h: &Vhpet, off: u64, now: Instant) -> u32 {
        let mut b = [0u8; 4];
        h.read(off, &mut b, now);
        u32::from_le_bytes(b)
    }
    fn wr8(h: &mut Vhpet, off: u64, v: u64, now: Instant) {
        h.write(off, &v.to_le_bytes(), now);
    }
    fn wr4(h: &mut Vhpet, off: u64, v: u32, now: Instant) {
        h.write(off, &v.to_le_bytes(), now);
    }
    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn capabilities() {
        let (mut h, _, t0) = setup(24);
        assert_eq!(HPET_CAPABILITIES, 0x05F5_E100_8086_0701);
        assert_eq!(rd8(&h, 0, t0), HPET_CAPABILITIES);
        assert_eq!(rd4(&h, 0, t0), 0x8086_0701);
        assert_eq!(rd4(&h, 4, t0), 0x05F5_E100);
        // Capabilities are read-only.
        wr8(&mut h, 0, 0, t0);
        assert_eq!(rd8(&h, 0, t0), HPET_CAPABILITIES);
    }

    #[test]
    fn bad_sizes_and_alignment_are_ignored() {
        let (mut h, _, t0) = setup(24);
        let mut b2 = [0xFFu8; 2];
        h.read(0, &mut b2, t0);
        assert_eq!(b2, [0, 0]);
        let mut b8 = [0xFFu8; 8];
        h.read(4, &mut b8, t0);
        assert_eq!(b8, [0; 8]);
        let mut b4 = [0xFFu8; 4];
        h.read(2, &mut b4, t0);
        assert_eq!(b4, [0; 4]);
        h.write(HPET_CONFIG, &[1, 0], t0);
        h.write(HPET_CONFIG + 2, &[1, 0, 0, 0], t0);
        assert_eq!(rd8(&h, HPET_CONFIG, t0), 0);
        // Unknown register.
        assert_eq!(rd8(&h, 0x030, t0), 0);
        assert_eq!(rd8(&h, 0x200, t0), 0);
    }

    #[test]
    fn counter_runs_at_10mhz_and_keeps_value_when_stopped() {
        let (mut h, _, t0) = setup(24);
        assert_eq!(rd8(&h, HPET_MAIN_COUNTER, t0 + us(50)), 0);
        wr8(&mut h, HPET_CONFIG, HPET_CNF_ENABLE | HPET_CNF_LEG_RT, t0);
        // LegacyReplacement is not supported.
        assert_eq!(rd8(&h, HPET_CONFIG, t0), HPET_CNF_ENABLE);
        assert_eq!(rd8(&h, HPET_MAIN_COUNTER, t0 + us(1)), 10);
        assert_eq!(
            rd8(&h, HPET_MAIN_COUNTER, t0 + Duration::from_secs(1)),
            10_000_000
        );
        wr8(&mut h, HPET_CONFIG, 0, t0 + us(100));
        assert_eq!(rd8(&h, HPET_MAIN_COUNTER, t0 + us(500)), 1000);
        assert_eq!(h.next_deadline(), None);
        wr8(&mut h, HPET_CONFIG, HPET_CNF_ENABLE, t0 + us(1000));
        assert_eq!(rd4(&h, HPET_MAIN_COUNTER, t0 + us(1001)), 1010);
        assert_eq!(rd4(&h, HPET_MAIN_COUNTER + 4, t0 + us(1001)), 0);
    }

    #[test]
    fn counter_is_32_bits_and_writable() {
        let (mut h, _, t0) = setup(24);
        wr8(&mut h, HPET_MAIN_COUNTER, 0xFFFF_FFFF_FFFF_FFF0, t0);
        assert_eq!(rd8(&h, HPET_MAIN_COUNTER, t0), 0xFFFF_FFF0);
        wr8(&mut h, HPET_CONFIG, HPET_CNF_ENABLE, t0);
        assert_eq!(rd8(&h, HPET_MAIN_COUNTER, t0 + us(2)), 4);
        // A 4-byte write of the low half while running.
        wr4(&mut h, HPET_MAIN_COUNTER, 100, t0 + us(10));
        assert_eq!(rd8(&h, HPET_MAIN_COUNTER, t0 + us(11)), 110);
    }

    #[test]
    fn timer_caps_are_read_only_and_routes_validated() {
        let (mut h, _, t0) = setup(24);
        let cap = rd8(&h, T0_CNF, t0);
        assert_eq!(
            cap,
            0x00F0_0000_0000_0000 | HPET_TCAP_FSB_INT_DEL | HPET_TCAP_PER_INT
        );
        assert_eq!(rd8(&h, T0_CMP, t0), 0xFFFF_FFFF);
        // Route 20 is allowed.
        wr8(&mut h, T0_CNF, 20 << 9 | HPET_TCNF_INT_ENB, t0);
        assert_eq!(rd8(&h, T0_CNF, t0), cap | 20 << 9 | HPET_TCNF_INT_ENB);
        // Route 5 is not: replaced by 0.  RO bits and 32MODE cannot change.
        wr8(
            &mut h,
            T0_CNF,
            !(HPET_TCNF_INT_ROUTE | HPET_TCNF_FSB_EN) | 5 << 9,
            t0,
        );
        let v = rd8(&h, T0_CNF, t0);
        assert_eq!(v & HPET_TCAP_RO_MASK, cap);
        assert_eq!(v & HPET_TCNF_INT_ROUTE, 0);
        assert_eq!(v & HPET_TCNF_32MODE, 0);
        // With FSB (MSI) delivery on, the route is not an I/O APIC pin and
        // is kept as written, as vhpet_timer_ioapic_pin() says.
        wr8(&mut h, T0_CNF, HPET_TCNF_FSB_EN | 5 << 9, t0);
        let v = rd8(&h, T0_CNF, t0);
        assert_ne!(v & HPET_TCNF_FSB_EN, 0);
        assert_eq!(v & HPET_TCNF_INT_ROUTE, 5 << 9);
        // 32-pin I/O APIC routes 24-31; a small one routes nothing.
        let (h32, _, _) = setup(32);
        assert_eq!(rd8(&h32, T0_CNF, t0) >> 32, 0xFF00_0000);
        let (h16, _, _) = setup(16);
        assert_eq!(rd8(&h16, T0_CNF, t0) >> 32, 0);
        // Timer 7 is the last; its block exists.
        assert_eq!(rd8(&h, 0x100 + 7 * 0x20, t0) >> 32, 0x00F0_0000);
    }

    #[test]
    fn one_shot_edge_fires_once_per_match() {
        let (mut h, rec, t0) = setup(24);
        wr8(&mut h, T0_CNF, 20 << 9 | HPET_TCNF_INT_ENB, t0);
        wr8(&mut h, T0_CMP, 1000, t0);
        assert_eq!(h.next_deadline(), None);
        wr8(&mut h, HPET_CONFIG, HPET_CNF_ENABLE, t0);
        let deadline = t0 + us(100);
        // Earliest deadline is timer 0; the others wait for 0xFFFF_FFFF.
        assert_eq!(h.next_deadline(), Some(deadline));
        h.tick(t0 + us(99));
        assert!(rec.take().is_empty());
        h.tick(deadline);
        assert_eq!(rec.take(), vec![IrqEvent::Pulse(20)]);
        // Next match is a full counter wrap away.
        assert_eq!(
            h.timers[0].deadline,
            Some(deadline + Duration::from_nanos((1u64 << 32) * 100))
        );
        assert_eq!(rd8(&h, HPET_ISR, deadline), 0);
    }

    #[test]
    fn level_triggered_sets_isr_until_cleared() {
        let (mut h, rec, t0) = setup(24);
        wr8(
            &mut h,
            T0_CNF,
            21 << 9 | HPET_TCNF_INT_ENB | HPET_TCNF_INT_TYPE,
            t0,
        );
        wr8(&mut h, T0_CMP, 10, t0);
        wr8(&mut h, HPET_CONFIG, HPET_CNF_ENABLE, t0);
        h.tick(t0 + us(1));
        assert_eq!(rec.take(), vec![IrqEvent::Assert(21)]);
        assert_eq!(rd8(&h, HPET_ISR, t0), 1);
        // No re-assert while set: fire again by rewriting the comparator.
        wr8(&mut h, T0_CMP, 20, t0 + us(1));
        h.tick(t0 + us(2));
        assert!(rec.take().is_empty());
        // Writing 0 leaves it; writing 1 clears and deasserts.
        wr8(&mut h, HPET_ISR, 0, t0 + us(2));
        assert_eq!(rd8(&h, HPET_ISR, t0), 1);
        wr8(&mut h, HPET_ISR, 1, t0 + us(2));
        assert_eq!(rec.take(), vec![IrqEvent::Deassert(21)]);
        assert_eq!(rd8(&h, HPET_ISR, t0), 0);
    }

    #[test]
    fn config_change_drops_asserted_level() {
        let (mut h, rec, t0) = setup(24);
        let level = 22 << 9 | HPET_TCNF_INT_ENB | HPET_TCNF_INT_TYPE;
        wr8(&mut h, T0_CNF, level, t0);
        wr8(&mut h, T0_CMP, 10, t0);
        wr8(&mut h, HPET_CONFIG, HPET_CNF_ENABLE, t0);
        h.tick(t0 + us(1));
        assert_eq!(rec.take(), vec![IrqEvent::Assert(22)]);
        // Switch to edge: the level line is released.
        wr8(&mut h, T0_CNF, level & !HPET_TCNF_INT_TYPE, t0 + us(1));
        assert_eq!(rec.take(), vec![IrqEvent::Deassert(22)]);
        assert_eq!(rd8(&h, HPET_ISR, t0), 0);
    }

    #[test]
    fn periodic_with_val_set() {
        let (mut h, rec, t0) = setup(24);
        wr8(
            &mut h,
            T0_CNF,
            20 << 9 | HPET_TCNF_INT_ENB | HPET_TCNF_TYPE | HPET_TCNF_VAL_SET,
            t0,
        );
        assert_ne!(rd8(&h, T0_CNF, t0) & HPET_TCNF_VAL_SET, 0);
        wr8(&mut h, T0_CMP, 100, t0);
        // VAL_SET self-clears; the write set comparator and period.
        assert_eq!(rd8(&h, T0_CNF, t0) & HPET_TCNF_VAL_SET, 0);
        assert_eq!(rd8(&h, T0_CMP, t0), 100);
        // Without VAL_SET only the period changes.
        wr8(&mut h, T0_CMP, 50, t0);
        assert_eq!(rd8(&h, T0_CMP, t0), 100);
        assert_eq!(h.timers[0].comprate, 50);

        wr8(&mut h, HPET_CONFIG, HPET_CNF_ENABLE, t0);
        // Starting at counter 0, the first match is the comparator the
        // guest wrote (100); then every period (50) after it.
        assert_eq!(h.next_deadline(), Some(t0 + us(10)));
        h.tick(t0 + us(10));
        assert_eq!(rec.take(), vec![IrqEvent::Pulse(20)]);
        assert_eq!(rd8(&h, T0_CMP, t0 + us(10)), 150);
        assert_eq!(h.next_deadline(), Some(t0 + us(15)));
        // A late tick skips the missed periods instead of bursting.
        h.tick(t0 + us(27));
        assert_eq!(rec.take(), vec![IrqEvent::Pulse(20)]);
        assert_eq!(rd8(&h, T0_CMP, t0 + us(27)), 300);
        assert_eq!(h.next_deadline(), Some(t0 + us(30)));
        // Leaving periodic mode makes it one-shot.
        wr8(&mut h, T0_CNF, 20 << 9 | HPET_TCNF_INT_ENB, t0 + us(27));
        assert_eq!(h.timers[0].comprate, 0);
    }

    #[test]
    fn fsb_delivery_sends_msi() {
        let (mut h, rec, t0) = setup(24);
        wr4(&mut h, T0_FSB, 0x4041, t0);
        wr4(&mut h, T0_FSB + 4, 0xFEE0_0000, t0);
        assert_eq!(rd8(&h, T0_FSB, t0), 0xFEE0_0000_0000_4041);
        assert_eq!(rd4(&h, T0_FSB + 4, t0), 0xFEE0_0000);
        wr8(
            &mut h,
            T0_CNF,
            20 << 9 | HPET_TCNF_INT_ENB | HPET_TCNF_FSB_EN,
            t0,
        );
        wr8(&mut h, T0_CMP, 5, t0);
        wr8(&mut h, HPET_CONFIG, HPET_CNF_ENABLE, t0);
        h.tick(t0 + us(1));
        assert_eq!(rec.take(), vec![IrqEvent::Msi(0xFEE0_0000, 0x4041)]);
    }

    #[test]
    fn disabled_interrupt_still_rearms() {
        let (mut h, rec, t0) = setup(24);
        wr8(&mut h, T0_CNF, 20 << 9, t0);
        wr8(&mut h, T0_CMP, 10, t0);
        wr8(&mut h, HPET_CONFIG, HPET_CNF_ENABLE, t0);
        h.tick(t0 + us(1));
        assert!(rec.take().is_empty());
        assert!(h.timers[0].deadline.is_some_and(|d| d > t0 + us(1)));
        // Unrouted but enabled: nothing either.
        wr8(&mut h, 0x120, HPET_TCNF_INT_ENB, t0);
        wr8(&mut h, 0x128, 30, t0 + us(1));
        h.tick(t0 + us(3));
        assert!(rec.take().is_empty());
    }

    #[test]
    fn stopping_delivers_missed_interrupt() {
        let (mut h, rec, t0) = setup(24);
        wr8(&mut h, T0_CNF, 23 << 9 | HPET_TCNF_INT_ENB, t0);
        wr8(&mut h, T0_CMP, 10, t0);
        wr8(&mut h, HPET_CONFIG, HPET_CNF_ENABLE, t0);
        // The deadline (t0+1us) passed but the timer thread has not ticked.
        wr8(&mut h, HPET_CONFIG, 0, t0 + us(2));
        assert_eq!(rec.take(), vec![IrqEvent::Pulse(23)]);
        assert_eq!(h.next_deadline(), None);
        // Stopping before the deadline delivers nothing.
        wr8(&mut h, HPET_CONFIG, HPET_CNF_ENABLE, t0 + us(3));
        wr8(&mut h, T0_CMP, 1000, t0 + us(3));
        wr8(&mut h, HPET_CONFIG, 0, t0 + us(4));
        assert!(rec.take().is_empty());
    }
}
