//! The ACPI tables bhyve builds (`acpi.c`, `basl.c`, and the DSDT writers
//! in `pci_emul.c`, `amd64/pci_irq.c`, `amd64/pci_lpc.c`, `amd64/rtc.c`,
//! `amd64/atkbdc.c`): pure functions from a machine description to the bytes
//! to copy to guest-physical addresses before the vCPUs start.
//!
//! Layout as modern bhyve's basl: from 0xF2400 (RSDP first, so a kernel's
//! scan of 0xE0000–0xFFFFF finds it) the tables follow one another in
//! creation order — RSDP, RSDT, XSDT, FADT, MADT, HPET, MCFG, FACS, DSDT —
//! each 16-byte aligned, the FACS 64-byte aligned.

mod dsdt;
#[cfg(test)]
mod tests;

use std::ops::Range;

use acpi_tables::Aml;
use acpi_tables::facs::FACS;
use acpi_tables::fadt::{FADT, FADTBuilder, Flags, PmProfile};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::mcfg::MCFG;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;

use crate::pm;

/// Where the RSDP (and after it the other tables) goes.
pub const ACPI_BASE: u32 = 0xF2400;
/// The tables must end inside the BIOS area.
const ACPI_END: u32 = 0x10_0000;

pub const LAPIC_BASE: u32 = 0xFEE0_0000;
pub const IOAPIC_BASE: u32 = 0xFEC0_0000;
/// The IO-APIC's id: 0, as modern bhyve (and KVM's in-kernel IO-APIC).
pub const IOAPIC_ID: u8 = 0;
/// bhyve's HPET and the low half of its capability register (§6.2).
pub const HPET_BASE: u32 = 0xFED0_0000;
pub const HPET_ID: u32 = 0x8086_0701;
/// PCI windows as bhyve defines them (`PCI_EMUL_*`); the DSDT advertises
/// the part the BAR allocator used (plus slop), which the caller passes.
pub const PCI_IO_BASE: u32 = 0x2000;
pub const PCI_MEM32_BASE: u64 = 0xC000_0000;
pub const PCI_ECAM: Range<u64> = 0xE000_0000..0xF000_0000;

/// PCI INTx goes to IO-APIC pins 16..24: KVM's in-kernel IO-APIC has 24
/// pins (bhyve's has 32), so round-robin runs over 8 pins.
const PCI_GSI_BASE: u8 = 16;
const PCI_GSI_COUNT: u8 = 8;
/// The LPC bridge's PIRQ router has 8 links, LNKA–LNKH.
const NPIRQ: u8 = 8;

/// ACPI PM timer and GPE0 block (`acpi.h`); PM1 and SMI_CMD come from `pm`.
const PM_TIMER: u16 = 0x408;
const GPE0_BLK: u16 = 0x40C;
const GPE0_LEN: u8 = 2;

const OEM_ID: [u8; 6] = *b"BHYVE ";
const OEM_REVISION: u32 = 1;
/// basl's creator id and revision.
const CREATOR_ID: [u8; 4] = *b"BASL";
const CREATOR_REVISION: u32 = 0x2022_0504;

/// ACPI processor UIDs and APIC ids are bytes, and 0xFF means "all".
pub const MAX_CPUS: usize = 255;

const SDT_HEADER_LEN: usize = 36;
const RSDP_LEN: usize = 36;

/// One function on PCI bus 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciFunction {
    pub slot: u8,
    pub func: u8,
    /// The INTx pin it asserts (1 = INTA .. 4 = INTD), if any.
    pub intx: Option<u8>,
}

/// Where one slot's INTx pin is routed (`pci_lintr_route`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntxRoute {
    pub slot: u8,
    /// 1 = INTA .. 4 = INTD.
    pub pin: u8,
    /// IO-APIC pin (16..24).
    pub gsi: u8,
    /// PIRQ link 1..=8 (LNKA..LNKH) that carries it in PIC mode.
    pub pirq: u8,
}

/// A 16550 on the LPC bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IsaUart {
    /// 1..=4 for COM1..COM4 (the ACPI name and `_UID`).
    pub unit: u8,
    pub port: u16,
    pub irq: u8,
}

/// The LPC bridge and the ISA devices it describes in the DSDT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LpcConfig {
    pub slot: u8,
    pub func: u8,
    pub uarts: Vec<IsaUart>,
    /// MC146818 at 0x70 (`RTC`, PNP0B00).
    pub rtc: bool,
    /// i8042 at 0x60/0x64 (`KBD` PNP0303 and `MOU` PNP0F13).
    pub atkbdc: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HpetConfig {
    pub base: u32,
    /// Event timer block id: the low 32 bits of the capability register.
    pub id: u32,
}

/// The machine the tables describe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiConfig {
    pub ncpus: usize,
    /// Every function on bus 0 (INTx users are routed in slot/func order).
    pub pci: Vec<PciFunction>,
    /// No LPC bridge: no `ISA` device, so no COM/RTC/PIC objects (as bhyve).
    pub lpc: Option<LpcConfig>,
    pub hpet: Option<HpetConfig>,
    /// PCIe ECAM: 1 MiB per bus from bus 0.
    pub ecam: Range<u64>,
    /// Bus 0's windows as the BAR allocator left them.
    pub io_window: Range<u64>,
    pub mmio32: Range<u64>,
    pub mmio64: Range<u64>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AcpiError {
    #[error("{0} vCPUs: the tables describe 1 to {MAX_CPUS}")]
    BadCpuCount(usize),
    #[error("PCI {slot}.{func}: no such slot/function on bus 0")]
    BadPciFunction { slot: u8, func: u8 },
    #[error("PCI {slot}.{func} is listed twice")]
    DuplicatePciFunction { slot: u8, func: u8 },
    #[error("PCI {slot}.{func}: INTx pin {pin} is not 1 (INTA) to 4 (INTD)")]
    BadIntxPin { slot: u8, func: u8, pin: u8 },
    #[error("COM{unit} (port {port:#x}, IRQ {irq}): unit must be 1-4 and IRQ 0-15")]
    BadUart { unit: u8, port: u16, irq: u8 },
    #[error("{name} window {start:#x}..{end:#x} is empty or out of range")]
    BadWindow {
        name: &'static str,
        start: u64,
        end: u64,
    },
    #[error("the ACPI tables would end at {end:#x}, past the BIOS area")]
    TooLarge { end: u64 },
}

/// Route each slot's INTx pins as bhyve does without a boot ROM: walking
/// bus 0 in slot/function order, the first function using a (slot, pin)
/// gets the next IO-APIC pin round-robin and the least-used PIRQ link
/// (also round-robin).  Sorted by slot and pin, as `pci_walk_lintr`.
/// The device model must assert the same pins.
pub fn route_intx(pci: &[PciFunction]) -> Result<Vec<IntxRoute>, AcpiError> {
    let mut funcs = pci.to_vec();
    funcs.sort_by_key(|f| (f.slot, f.func));
    for pair in funcs.windows(2) {
        if pair[0].slot == pair[1].slot && pair[0].func == pair[1].func {
            let (slot, func) = (pair[0].slot, pair[0].func);
            return Err(AcpiError::DuplicatePciFunction { slot, func });
        }
    }
    let mut routes: Vec<IntxRoute> = Vec::new();
    for f in &funcs {
        if f.slot >= 32 || f.func >= 8 {
            let (slot, func) = (f.slot, f.func);
            return Err(AcpiError::BadPciFunction { slot, func });
        }
        let Some(pin) = f.intx else { continue };
        if !(1..=4).contains(&pin) {
            let (slot, func) = (f.slot, f.func);
            return Err(AcpiError::BadIntxPin { slot, func, pin });
        }
        if routes.iter().any(|r| r.slot == f.slot && r.pin == pin) {
            continue;
        }
        // At most 32 slots x 4 pins, so the count fits a byte.
        let n = routes.len() as u8;
        routes.push(IntxRoute {
            slot: f.slot,
            pin,
            gsi: PCI_GSI_BASE + n % PCI_GSI_COUNT,
            pirq: 1 + n % NPIRQ,
        });
    }
    routes.sort_by_key(|r| (r.slot, r.pin));
    Ok(routes)
}

/// The windows in the forms the tables need, checked.
#[derive(Debug, Clone, Copy)]
struct Windows {
    io: (u16, u16),
    mmio32: (u32, u32),
    mmio64: (u64, u64),
    ecam_base: u32,
    ecam_len: u32,
    ecam_end_bus: u8,
}

/// Check a window and return its first and last address.
fn window<T: TryFrom<u64>>(
    name: &'static str,
    w: &Range<u64>,
    floor: u64,
) -> Result<(T, T), AcpiError> {
    let bad = || AcpiError::BadWindow {
        name,
        start: w.start,
        end: w.end,
    };
    if w.start < floor || w.end <= w.start {
        return Err(bad());
    }
    let first = T::try_from(w.start).map_err(|_| bad())?;
    let last = T::try_from(w.end - 1).map_err(|_| bad())?;
    Ok((first, last))
}

impl Windows {
    fn new(cfg: &AcpiConfig) -> Result<Windows, AcpiError> {
        // The I/O window sits above the fixed 0xD00.. range bus 0 decodes.
        let io = window("PCI I/O", &cfg.io_window, 0xD01)?;
        let mmio32 = window("PCI MMIO32", &cfg.mmio32, 1)?;
        let mmio64 = window("PCI MMIO64", &cfg.mmio64, 1)?;
        let (ecam_base, ecam_last) = window::<u32>("ECAM", &cfg.ecam, 1)?;
        let ecam_len = ecam_last - ecam_base + 1;
        let buses = ecam_len >> 20;
        if ecam_base % (1 << 20) != 0 || ecam_len % (1 << 20) != 0 || buses > 256 {
            let (start, end) = (cfg.ecam.start, cfg.ecam.end);
            return Err(AcpiError::BadWindow {
                name: "ECAM",
                start,
                end,
            });
        }
        let ecam_end_bus = u8::try_from(buses - 1).unwrap_or(u8::MAX);
        Ok(Windows {
            io,
            mmio32,
            mmio64,
            ecam_base,
            ecam_len,
            ecam_end_bus,
        })
    }
}

/// Build every table; returns (guest-physical address, bytes) in creation
/// order, the RSDP first.
pub fn build(cfg: &AcpiConfig) -> Result<Vec<(u64, Vec<u8>)>, AcpiError> {
    if cfg.ncpus == 0 || cfg.ncpus > MAX_CPUS {
        return Err(AcpiError::BadCpuCount(cfg.ncpus));
    }
    let routes = route_intx(&cfg.pci)?;
    if let Some(lpc) = &cfg.lpc {
        if lpc.slot >= 32 || lpc.func >= 8 {
            let (slot, func) = (lpc.slot, lpc.func);
            return Err(AcpiError::BadPciFunction { slot, func });
        }
        if let Some(u) = lpc
            .uarts
            .iter()
            .find(|u| !(1..=4).contains(&u.unit) || u.irq > 15)
        {
            let (unit, port, irq) = (u.unit, u.port, u.irq);
            return Err(AcpiError::BadUart { unit, port, irq });
        }
    }
    let win = Windows::new(cfg)?;

    // Tables without pointers first: their sizes fix the layout.
    let madt = madt(cfg.ncpus);
    let hpet = cfg.hpet.map(hpet);
    let mcfg = mcfg(&win);
    let facs = facs();
    let dsdt = dsdt::build(cfg, &routes, &win);
    let nentries = 3 + usize::from(hpet.is_some());

    let mut next = ACPI_BASE;
    let mut place = |len: usize, align: u32| -> Result<u32, AcpiError> {
        let at = next.next_multiple_of(align);
        let end = u64::from(at) + len as u64;
        next = u32::try_from(end)
            .ok()
            .filter(|&e| e <= ACPI_END)
            .ok_or(AcpiError::TooLarge { end })?;
        Ok(at)
    };
    let rsdp_at = place(RSDP_LEN, 16)?;
    let rsdt_at = place(SDT_HEADER_LEN + 4 * nentries, 16)?;
    let xsdt_at = place(SDT_HEADER_LEN + 8 * nentries, 16)?;
    let fadt_at = place(FADT::len(), 16)?;
    let madt_at = place(madt.len(), 16)?;
    let hpet_at = match &hpet {
        Some(t) => Some(place(t.len(), 16)?),
        None => None,
    };
    let mcfg_at = place(mcfg.len(), 16)?;
    let facs_at = place(facs.len(), 64)?;
    let dsdt_at = place(dsdt.len(), 16)?;

    // RSDT/XSDT entry order as bhyve: FADT, MADT, HPET, MCFG.
    let mut entries = vec![fadt_at, madt_at];
    entries.extend(hpet_at);
    entries.push(mcfg_at);

    let mut tables = vec![
        (rsdp_at, rsdp(rsdt_at, xsdt_at)),
        (rsdt_at, rsdt(&entries)),
        (xsdt_at, xsdt(&entries)),
        (fadt_at, fadt(facs_at, dsdt_at)),
        (madt_at, madt),
    ];
    if let (Some(at), Some(t)) = (hpet_at, hpet) {
        tables.push((at, t));
    }
    tables.extend([(mcfg_at, mcfg), (facs_at, facs), (dsdt_at, dsdt)]);
    Ok(tables
        .into_iter()
        .map(|(at, t)| (u64::from(at), t))
        .collect())
}

/// The byte that makes `bytes` sum to zero (ACPI and MP tables).
pub(crate) fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b)))
}

/// OEM table id as bhyve's: "BV", the table's name, two spaces.
fn oem_table_id(name: &[u8; 4]) -> [u8; 8] {
    let mut id = *b"BV      ";
    id[2..6].copy_from_slice(name);
    id
}

/// A table header; the crate's `Sdt` keeps length and checksum current.
fn sdt(signature: &[u8; 4], name: &[u8; 4], revision: u8) -> Sdt {
    Sdt::new(
        *signature,
        SDT_HEADER_LEN as u32,
        revision,
        OEM_ID,
        oem_table_id(name),
        OEM_REVISION,
    )
}

/// Write bhyve's creator id over the crate's and redo the checksum, so every
/// table's header looks alike whichever builder made it.
fn seal(mut table: Vec<u8>) -> Vec<u8> {
    if let Some(creator) = table.get_mut(28..36) {
        creator[..4].copy_from_slice(&CREATOR_ID);
        creator[4..].copy_from_slice(&CREATOR_REVISION.to_le_bytes());
    }
    if table.len() >= SDT_HEADER_LEN {
        table[9] = 0;
        table[9] = checksum(&table);
    }
    table
}

fn to_bytes(table: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

/// Hand-written: the crate's `Rsdp` leaves the RSDT address zero and
/// private, and bhyve fills in both the RSDT and the XSDT.
fn rsdp(rsdt: u32, xsdt: u32) -> Vec<u8> {
    let mut t = Vec::with_capacity(RSDP_LEN);
    t.extend_from_slice(b"RSD PTR ");
    t.push(0); // checksum of the ACPI 1.0 part (20 bytes)
    t.extend_from_slice(&OEM_ID);
    t.push(2); // revision: ACPI 2.0+, XSDT present
    t.extend_from_slice(&rsdt.to_le_bytes());
    t.extend_from_slice(&(RSDP_LEN as u32).to_le_bytes());
    t.extend_from_slice(&u64::from(xsdt).to_le_bytes());
    t.extend_from_slice(&[0; 4]); // extended checksum, reserved
    t[8] = checksum(&t[..20]);
    t[32] = checksum(&t);
    t
}

/// Hand-written on the crate's `Sdt`: the crate has no RSDT.
fn rsdt(entries: &[u32]) -> Vec<u8> {
    let mut t = sdt(b"RSDT", b"RSDT", 1);
    for e in entries {
        t.append_slice(&e.to_le_bytes());
    }
    seal(t.as_slice().to_vec())
}

fn xsdt(entries: &[u32]) -> Vec<u8> {
    let mut t = XSDT::new(OEM_ID, oem_table_id(b"XSDT"), OEM_REVISION);
    for e in entries {
        t.add_entry(u64::from(*e));
    }
    seal(to_bytes(&t))
}

/// FADT as modern bhyve's `build_fadt`: revision 5.1 in the length of
/// ACPICA's (6.x) structure, 276 bytes, hypervisor vendor id 0 — as bhyve,
/// whose basl uses `sizeof (ACPI_TABLE_FADT)`.
fn fadt(facs: u32, dsdt: u32) -> Vec<u8> {
    let io = |width: u8, access: AccessSize, port: u16| {
        GAS::new(AddressSpace::SystemIo, width, 0, access, u64::from(port))
    };
    let mut f = FADTBuilder::new(OEM_ID, oem_table_id(b"FACP"), OEM_REVISION)
        .firmware_ctrl_32(facs)
        .dsdt_32(dsdt)
        .preferred_pm_profile(PmProfile::Unspecified)
        .gpe_info(u32::from(GPE0_BLK), 0, GPE0_LEN, 0, 0)
        .flag(Flags::Wbinvd)
        .flag(Flags::ProcC1)
        .flag(Flags::SlpButton) // no fixed sleep button
        .flag(Flags::TmrValExt) // 32-bit PM timer
        .flag(Flags::ResetRegSup)
        .flag(Flags::Headless)
        .flag(Flags::ForceApicPhysicalDestinationMode);
    f.major_version = 5;
    f.fadt_minor_version = 1;
    // bhyve fills both the 32- and 64-bit FACS/DSDT pointers.
    f.x_firmware_ctrl = u64::from(facs).into();
    f.x_dsdt = u64::from(dsdt).into();
    f.sci_int = (pm::SCI_INT as u16).into();
    f.smi_cmd = u32::from(pm::SMI_CMD).into();
    f.acpi_enable = pm::BHYVE_ACPI_ENABLE;
    f.acpi_disable = pm::BHYVE_ACPI_DISABLE;
    f.pm1a_evt_blk = u32::from(pm::PM1A_EVT_ADDR).into();
    f.pm1a_cnt_blk = u32::from(pm::PM1A_CNT_ADDR).into();
    f.pm_tmr_blk = u32::from(PM_TIMER).into();
    f.pm1_evt_len = 4;
    f.pm1_cnt_len = 2;
    f.pm_tmr_len = 4;
    f.century = 0x32;
    // VGA not present (bit 2), PCIe ASPM controls absent (bit 4); no
    // "legacy devices" or "8042" bits, as bhyve.
    f.iapc_boot_arch = 0x0014.into();
    f.reset_reg = io(8, AccessSize::ByteAccess, pm::RESET_CONTROL);
    f.reset_value = 6;
    f.x_pm1a_evt_blk = io(32, AccessSize::WordAccess, pm::PM1A_EVT_ADDR);
    f.x_pm1b_evt_blk = io(0, AccessSize::Undefined, 0);
    f.x_pm1a_cnt_blk = io(16, AccessSize::WordAccess, pm::PM1A_CNT_ADDR);
    f.x_pm1b_cnt_blk = io(0, AccessSize::Undefined, 0);
    f.x_pm2_cnt_blk = io(8, AccessSize::Undefined, 0);
    f.x_pm_tmr_blk = io(32, AccessSize::DwordAccess, PM_TIMER);
    f.x_gpe0_blk = io(GPE0_LEN * 8, AccessSize::ByteAccess, GPE0_BLK);
    f.x_gpe1_blk = io(0, AccessSize::Undefined, 0);
    f.sleep_control_reg = io(8, AccessSize::ByteAccess, 0);
    f.sleep_status_reg = io(8, AccessSize::ByteAccess, 0);
    seal(to_bytes(&f.finalize()))
}

/// Hand-written on the crate's `Sdt`: the crate's MADT can set neither the
/// PC-AT flag nor add interrupt source overrides or local APIC NMIs.
fn madt(ncpus: usize) -> Vec<u8> {
    const PCAT_COMPAT: u32 = 1;
    const ENABLED: u32 = 1;
    const ACTIVE_HIGH_EDGE: u16 = 0x0005;
    const ACTIVE_LOW_LEVEL: u16 = 0x000F;
    let mut t = sdt(b"APIC", b"MADT", 1);
    t.append_slice(&LAPIC_BASE.to_le_bytes());
    t.append_slice(&PCAT_COMPAT.to_le_bytes());
    // One local APIC per vCPU: ACPI UID = APIC id = vCPU number.
    for id in (0..=u8::MAX).take(ncpus) {
        t.append_slice(&[0, 8, id, id]);
        t.append_slice(&ENABLED.to_le_bytes());
    }
    t.append_slice(&[1, 12, IOAPIC_ID, 0]);
    t.append_slice(&IOAPIC_BASE.to_le_bytes());
    t.append_slice(&0u32.to_le_bytes()); // GSI base
    // ISA IRQ 0 (the PIT) is IO-APIC pin 2; the SCI is level, active-low.
    let sci = pm::SCI_INT as u8;
    for (irq, gsi, flags) in [
        (0, 2u32, ACTIVE_HIGH_EDGE),
        (sci, u32::from(sci), ACTIVE_LOW_LEVEL),
    ] {
        t.append_slice(&[2, 10, 0, irq]);
        t.append_slice(&gsi.to_le_bytes());
        t.append_slice(&flags.to_le_bytes());
    }
    // NMI on LINT1 of every processor (UID 0xFF).
    t.append_slice(&[4, 6, 0xFF]);
    t.append_slice(&ACTIVE_HIGH_EDGE.to_le_bytes());
    t.append_slice(&[1]);
    seal(t.as_slice().to_vec())
}

/// Hand-written on the crate's `Sdt`: the crate has no HPET table.
fn hpet(cfg: HpetConfig) -> Vec<u8> {
    const PAGE_PROTECT_4K: u8 = 1;
    let mut t = sdt(b"HPET", b"HPET", 1);
    t.append_slice(&cfg.id.to_le_bytes());
    // Base address: system memory, width/offset/access 0 as bhyve.
    t.append_slice(&[0, 0, 0, 0]);
    t.append_slice(&u64::from(cfg.base).to_le_bytes());
    t.append_slice(&[0]); // HPET number
    t.append_slice(&0u16.to_le_bytes()); // minimum tick
    t.append_slice(&[PAGE_PROTECT_4K]);
    seal(t.as_slice().to_vec())
}

fn mcfg(win: &Windows) -> Vec<u8> {
    let mut t = MCFG::new(OEM_ID, oem_table_id(b"MCFG"), OEM_REVISION);
    t.add_ecam(u64::from(win.ecam_base), 0, 0, win.ecam_end_bus);
    seal(to_bytes(&t))
}

/// FACS version 2, everything else zero (no checksum: it is not an SDT).
fn facs() -> Vec<u8> {
    let mut f = FACS::new();
    f.version = 2;
    to_bytes(&f)
}
