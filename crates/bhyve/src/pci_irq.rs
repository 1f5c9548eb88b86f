//! PCI INTx routing (`amd64/pci_irq.c`): each used (slot, pin) goes to an
//! IO-APIC pin 16–23 and one of the LPC bridge's eight PIRQ links, and each
//! link to a level-triggered ISA IRQ for the 8259s.  The (slot, pin) →
//! (GSI, link) choice is `acpi::route_intx`'s, so the tables and the device
//! model agree; only the link → ISA IRQ choice is made here.
//!
//! Lines shared by several sources are reference-counted here, because
//! KVM's IRQ line is a plain level, not a count as in bhyve's vioapic.

use std::sync::{Arc, Mutex};

use crate::acpi::{self, AcpiError, IntxRoute, PciFunction};
use crate::bus::{Irq, IrqLine};

/// Eight links, PIRQA–PIRQH.
pub const NPIRQ: usize = 8;
/// Link register: bit 7 disables, bits 3:0 are the ISA IRQ.
pub const PIRQ_DIS: u8 = 0x80;
pub const PIRQ_IRQ: u8 = 0x0f;
/// ISA IRQs a link may use: 3–7, 9–12, 14, 15 (`IRQ_PERMITTED`).
const IRQ_PERMITTED: u16 = 0xdef8;
/// GSIs the router drives: the 16 ISA ones and IO-APIC pins 16–23.
const NLINES: usize = 24;

fn permitted(irq: u8) -> bool {
    irq < 16 && IRQ_PERMITTED & (1 << irq) != 0
}

fn valid(reg: u8) -> bool {
    reg & PIRQ_DIS == 0 && permitted(reg & PIRQ_IRQ)
}

struct Router {
    reg: [u8; NPIRQ],
    /// Sources asserting through each link.
    active: [u32; NPIRQ],
    /// Uses of each ISA IRQ; `None` once reserved or never permitted.
    irq_counts: [Option<u32>; 16],
    /// Asserters of each GSI, so a shared line drops only with the last.
    line_count: [u32; NLINES],
}

/// The PIRQ router and the interrupt lines behind it.
pub struct PciIrq {
    lines: Vec<Irq>,
    st: Mutex<Router>,
}

impl std::fmt::Debug for PciIrq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciIrq").finish_non_exhaustive()
    }
}

impl PciIrq {
    /// `pci_irq_init`; `line(gsi)` gives GSI 0–23.
    pub fn new(line: &dyn Fn(u32) -> Irq) -> PciIrq {
        let mut irq_counts = [None; 16];
        for (i, c) in irq_counts.iter_mut().enumerate() {
            if permitted(i as u8) {
                *c = Some(0);
            }
        }
        PciIrq {
            lines: (0..NLINES as u32).map(line).collect(),
            st: Mutex::new(Router {
                reg: [PIRQ_DIS; NPIRQ],
                active: [0; NPIRQ],
                irq_counts,
                line_count: [0; NLINES],
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Router> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `pci_irq_reserve`: an ISA device owns `irq` (COM ports, mouse).
    pub fn reserve(&self, irq: u8) {
        if let Some(c) = self.lock().irq_counts.get_mut(irq as usize) {
            *c = None;
        }
    }

    /// `pci_irq_use`: `irq` is shared with a level source (the SCI).
    pub fn use_irq(&self, irq: u8) {
        if let Some(Some(c)) = self.lock().irq_counts.get_mut(irq as usize) {
            *c += 1;
        }
    }

    /// Route every INTx user (`pci_irq_route` for each function): the
    /// GSI and link come from `acpi::route_intx`; each link, when first
    /// used, gets the least-used permitted ISA IRQ (`pirq_alloc_pin`).
    pub fn route(&self, pci: &[PciFunction]) -> Result<Vec<IntxRoute>, AcpiError> {
        let routes = acpi::route_intx(pci)?;
        let mut st = self.lock();
        // Links are first used in order LNKA, LNKB, ... (round-robin), so
        // allocating in link order is bhyve's allocation order.
        let mut used = [false; NPIRQ];
        for r in &routes {
            if let Some(u) = used.get_mut(usize::from(r.pirq).wrapping_sub(1)) {
                *u = true;
            }
        }
        for (link, _) in used.iter().enumerate().filter(|(_, u)| **u) {
            if st.reg[link] != PIRQ_DIS {
                continue;
            }
            let mut best: Option<(usize, u32)> = None;
            for (irq, c) in st.irq_counts.iter().enumerate() {
                if let Some(c) = *c {
                    if best.is_none_or(|(_, b)| c < b) {
                        best = Some((irq, c));
                    }
                }
            }
            if let Some((irq, _)) = best {
                if let Some(Some(c)) = st.irq_counts.get_mut(irq) {
                    *c += 1;
                }
                st.reg[link] = irq as u8;
            }
        }
        Ok(routes)
    }

    /// The interrupt-line register value of a function on `pirq`
    /// (`pci_irq_intline`).
    pub fn intline(&self, pirq: u8) -> u8 {
        self.pirq_read(pirq) & PIRQ_IRQ
    }

    /// ISA IRQs the links were given at routing, to be set level-triggered
    /// in the ELCR (`vm_isa_set_irq_trigger`).
    pub fn level_irqs(&self) -> Vec<u8> {
        let st = self.lock();
        let mut v: Vec<u8> = st
            .reg
            .iter()
            .filter(|r| valid(**r))
            .map(|r| r & PIRQ_IRQ)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Link register `pin` (1..=8); out of range reads as disabled.
    pub fn pirq_read(&self, pin: u8) -> u8 {
        let st = self.lock();
        usize::from(pin)
            .checked_sub(1)
            .and_then(|i| st.reg.get(i).copied())
            .unwrap_or(PIRQ_DIS)
    }

    /// The guest reprograms link `pin` (1..=8) through the LPC bridge; an
    /// asserted link moves its 8259 input at once (`pirq_write`).
    pub fn pirq_write(&self, pin: u8, val: u8) {
        let mut st = self.lock();
        let Some(i) = usize::from(pin).checked_sub(1).filter(|&i| i < NPIRQ) else {
            return;
        };
        let new = val & (PIRQ_DIS | PIRQ_IRQ);
        let old = st.reg[i];
        if old == new {
            return;
        }
        let active = st.active[i] != 0;
        if active && valid(old) {
            self.line_down(&mut st, old & PIRQ_IRQ);
        }
        st.reg[i] = new;
        if active && valid(new) {
            self.line_up(&mut st, new & PIRQ_IRQ);
        }
    }

    fn line_up(&self, st: &mut Router, gsi: u8) {
        let g = usize::from(gsi);
        if let (Some(c), Some(l)) = (st.line_count.get_mut(g), self.lines.get(g)) {
            *c += 1;
            if *c == 1 {
                l.assert();
            }
        }
    }

    fn line_down(&self, st: &mut Router, gsi: u8) {
        let g = usize::from(gsi);
        if let (Some(c), Some(l)) = (st.line_count.get_mut(g), self.lines.get(g)) {
            if *c > 0 {
                *c -= 1;
                if *c == 0 {
                    l.deassert();
                }
            }
        }
    }

    /// `pci_irq_assert`: the IO-APIC pin, and the link's ISA IRQ if the
    /// link is enabled.
    pub fn assert(&self, r: &IntxRoute) {
        let mut st = self.lock();
        if let Some(i) = usize::from(r.pirq).checked_sub(1).filter(|&i| i < NPIRQ) {
            st.active[i] += 1;
            let reg = st.reg[i];
            if st.active[i] == 1 && valid(reg) {
                self.line_up(&mut st, reg & PIRQ_IRQ);
            }
        }
        self.line_up(&mut st, r.gsi);
    }

    /// `pci_irq_deassert`.
    pub fn deassert(&self, r: &IntxRoute) {
        let mut st = self.lock();
        if let Some(i) = usize::from(r.pirq).checked_sub(1).filter(|&i| i < NPIRQ) {
            if st.active[i] > 0 {
                st.active[i] -= 1;
                let reg = st.reg[i];
                if st.active[i] == 0 && valid(reg) {
                    self.line_down(&mut st, reg & PIRQ_IRQ);
                }
            }
        }
        self.line_down(&mut st, r.gsi);
    }
}

#[derive(Debug, Default)]
struct IntxState {
    route: Option<IntxRoute>,
    /// The device's level.
    level: bool,
    /// MSI, MSI-X and the command register's INTx-disable are all off.
    permitted: bool,
    /// What the router was last told.
    driven: bool,
}

/// A function's INTx pin as its device sees it (`pci_lintr_assert` and
/// friends): the level is held "pending" while INTx is not permitted.
pub struct Intx {
    router: Arc<PciIrq>,
    st: Mutex<IntxState>,
}

impl std::fmt::Debug for Intx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intx").finish_non_exhaustive()
    }
}

impl Intx {
    pub fn new(router: Arc<PciIrq>) -> Intx {
        Intx {
            router,
            st: Mutex::new(IntxState {
                permitted: true,
                ..IntxState::default()
            }),
        }
    }

    fn update(&self, f: impl FnOnce(&mut IntxState)) {
        let mut st = self.st.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut st);
        let Some(route) = st.route else { return };
        let want = st.level && st.permitted;
        if want != st.driven {
            st.driven = want;
            if want {
                self.router.assert(&route);
            } else {
                self.router.deassert(&route);
            }
        }
    }

    /// Routing happens once every function exists (`pci_lintr_route`).
    pub fn set_route(&self, r: IntxRoute) {
        self.update(|st| {
            if st.route.is_none() {
                st.route = Some(r);
            }
        });
    }

    /// `pci_lintr_update`.
    pub fn set_permitted(&self, permitted: bool) {
        self.update(|st| st.permitted = permitted);
    }
}

impl IrqLine for Intx {
    fn assert(&self) {
        self.update(|st| st.level = true);
    }
    fn deassert(&self) {
        self.update(|st| st.level = false);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Levels of every GSI, recording transitions.
    #[derive(Default)]
    pub struct Lines(pub Mutex<BTreeMap<u32, Vec<bool>>>);
    struct Line(Arc<Lines>, u32);
    impl IrqLine for Line {
        fn assert(&self) {
            self.0
                .0
                .lock()
                .unwrap()
                .entry(self.1)
                .or_default()
                .push(true);
        }
        fn deassert(&self) {
            self.0
                .0
                .lock()
                .unwrap()
                .entry(self.1)
                .or_default()
                .push(false);
        }
    }
    impl Lines {
        pub fn factory(self: &Arc<Self>) -> Box<dyn Fn(u32) -> Irq> {
            let me = self.clone();
            Box::new(move |g| Arc::new(Line(me.clone(), g)) as Irq)
        }
        pub fn take(&self) -> BTreeMap<u32, Vec<bool>> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    fn f(slot: u8, intx: Option<u8>) -> PciFunction {
        PciFunction {
            slot,
            func: 0,
            intx,
        }
    }

    #[test]
    fn pci_irq_links_get_least_used_isa_irqs() {
        let lines = Arc::new(Lines::default());
        let r = PciIrq::new(&lines.factory());
        for irq in [4, 3, 1, 12] {
            r.reserve(irq);
        }
        r.use_irq(9);
        let funcs: Vec<_> = (1..=9).map(|s| f(s, Some(1))).collect();
        let routes = r.route(&funcs).unwrap();
        assert_eq!(routes, acpi::route_intx(&funcs).unwrap(), "acpi's routes");
        let regs: Vec<u8> = (1..=8).map(|p| r.pirq_read(p)).collect();
        assert_eq!(regs, [5, 6, 7, 10, 11, 14, 15, 5], "9 is used by the SCI");
        assert_eq!(r.intline(routes[8].pirq), 5);
        assert_eq!(r.level_irqs(), [5, 6, 7, 10, 11, 14, 15]);
        assert_eq!(r.pirq_read(0), PIRQ_DIS);
        assert_eq!(r.pirq_read(9), PIRQ_DIS);
    }

    #[test]
    fn pci_irq_shared_lines_are_counted_and_links_move_live() {
        let lines = Arc::new(Lines::default());
        let r = Arc::new(PciIrq::new(&lines.factory()));
        // Slots 1 and 9 share GSI 16 and link A.
        let funcs: Vec<_> = (1..=9).map(|s| f(s, Some(1))).collect();
        let routes = r.route(&funcs).unwrap();
        let (a, b) = (routes[0], routes[8]);
        assert_eq!((a.gsi, a.pirq, b.gsi, b.pirq), (16, 1, 16, 1));
        let irq = r.pirq_read(1);
        assert_eq!(irq, 3, "nothing reserved: lowest permitted");
        let ia = Intx::new(r.clone());
        let ib = Intx::new(r.clone());
        ia.assert();
        assert!(lines.take().is_empty(), "not routed yet: pending");
        ia.set_route(a);
        ib.set_route(b);
        assert_eq!(
            lines.take(),
            BTreeMap::from([(3, vec![true]), (16, vec![true])])
        );
        ib.assert();
        assert!(lines.take().is_empty(), "already up");
        ia.deassert();
        assert!(lines.take().is_empty(), "b still holds it");
        // The guest moves link A to IRQ 10 while it is asserted.
        r.pirq_write(1, 10);
        assert_eq!(
            lines.take(),
            BTreeMap::from([(3, vec![false]), (10, vec![true])])
        );
        // Disabling INTx (MSI on) drops it; re-permitting raises it.
        ib.set_permitted(false);
        assert_eq!(
            lines.take(),
            BTreeMap::from([(10, vec![false]), (16, vec![false])])
        );
        ib.set_permitted(true);
        assert_eq!(
            lines.take(),
            BTreeMap::from([(10, vec![true]), (16, vec![true])])
        );
        r.pirq_write(1, PIRQ_DIS | 10);
        assert_eq!(lines.take(), BTreeMap::from([(10, vec![false])]));
        ib.deassert();
        assert_eq!(lines.take(), BTreeMap::from([(16, vec![false])]));
        // Deasserting an idle line does nothing.
        ib.deassert();
        r.deassert(&a);
        assert!(lines.take().is_empty());
    }
}
