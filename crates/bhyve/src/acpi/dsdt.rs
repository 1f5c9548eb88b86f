//! The DSDT.  bhyve writes it as ASL and compiles it with iasl at run time;
//! here the same namespace is built as AML with `acpi_tables::aml`.
//!
//! ```text
//! \_S5  {5, 0}            PICM, _PIC(mode)
//! \_SB.PC00               PNP0A03: _BBN, _CRS (windows), PPRT/APRT/_PRT
//!     ISA                 LPC bridge: PIRQ registers, PIRV, LNKA-LNKH,
//!                         SIO (PNP0C02), COMn, RTC, KBD/MOU, PIC, TIMR
//!     HPET                PNP0103
//! ```
//!
//! ACPI names are four characters: bhyve's `ISA`, `SIO`, `RTC`, `PIC`,
//! `KBD`, `MOU` are `ISA_` etc. in AML (iasl prints them without the `_`).

use acpi_tables::aml::{
    AddressSpace, AddressSpaceCacheable, And, Arg, EISAName, Else, Equal, Field, FieldAccessType,
    FieldEntry, FieldLockRule, FieldUpdateRule, IO, If, LessThan, Local, Memory32Fixed, Method,
    MethodCall, Name, OpRegion, OpRegionSpace, Package, PackageBuilder, Path, ResourceTemplate,
    Return, Scope, ShiftLeft, Store, ZERO,
};
use acpi_tables::{Aml, AmlSink};

use super::{AcpiConfig, HpetConfig, IntxRoute, LpcConfig, NPIRQ, Windows, sdt, seal};
use crate::pm;

/// IRQs a PIRQ link may be routed to (`PERMITTED_IRQS`): 3-7, 9-12, 14, 15.
const PIRQ_PERMITTED: u16 = 0xDEF8;
/// PIRQ register: bit 7 disables the link, bits 3:0 hold the ISA IRQ.
const PIRQ_DIS: u8 = 0x80;
const PIRQ_IRQ: u8 = 0x0F;
/// `_STA` of a link: present, enabled (0x0B) or present, disabled (0x09).
const LINK_ON: u8 = 0x0B;
const LINK_OFF: u8 = 0x09;

pub(super) fn build(cfg: &AcpiConfig, routes: &[IntxRoute], win: &Windows) -> Vec<u8> {
    let s5 = Name::new("_S5_".into(), &Package::new(vec![&pm::SLP_TYP_S5, &ZERO]));
    // The OS calls _PIC(1) in APIC mode; _PRT then answers with APRT.
    let picm = Name::new("PICM".into(), &ZERO);
    let pic = raw(&Method::new(
        "_PIC".into(),
        1,
        false,
        vec![&Store::new(&Path::new("PICM"), &Arg(0))],
    ));
    let root = pci_root(cfg, routes, win);
    let sb = raw(&Scope::new("\\_SB_".into(), vec![&root]));

    let mut t = sdt(b"DSDT", b"DSDT", 2);
    for obj in [&s5 as &dyn Aml, &picm, &pic, &sb] {
        t.append_slice(&raw(obj).0);
    }
    seal(t.as_slice().to_vec())
}

/// Already-encoded AML.  Building each object into bytes at once keeps the
/// crate's borrowed children (`Vec<&dyn Aml>`) within one statement.
struct Raw(Vec<u8>);

impl Aml for Raw {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(&self.0);
    }
}

fn raw(obj: &dyn Aml) -> Raw {
    let mut bytes = Vec::new();
    obj.to_aml_bytes(&mut bytes);
    Raw(bytes)
}

fn name(name: &str, value: &dyn Aml) -> Raw {
    raw(&Name::new(name.into(), value))
}

/// `Name (_CRS, ResourceTemplate () { ... })`.
fn crs(resources: Vec<&dyn Aml>) -> Raw {
    name("_CRS", &ResourceTemplate::new(resources))
}

/// A device with a `_HID`, optional `_UID`, and a fixed `_CRS`.
fn device(path: &str, hid: &str, uid: Option<u8>, resources: Vec<&dyn Aml>) -> Raw {
    let hid = name("_HID", &EISAName::new(hid));
    let uid = uid.map(|u| name("_UID", &u));
    let crs = crs(resources);
    let mut children: Vec<&dyn Aml> = vec![&hid];
    children.extend(uid.as_ref().map(|u| u as &dyn Aml));
    children.push(&crs);
    raw(&acpi_tables::aml::Device::new(path.into(), children))
}

/// `IO (Decode16, base, base, 1, len)`, as bhyve's `dsdt_fixed_ioport`.
fn io_port(base: u16, len: u8) -> IO {
    IO::new(base, base, 1, len)
}

/// `IRQNoFlags () {irq}`: the short IRQ descriptor, which the crate lacks
/// (it only has the extended one).
struct IrqNoFlags(u8);

impl Aml for IrqNoFlags {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.byte(0x22);
        sink.word(1 << self.0);
    }
}

/// `IRQ (Level, ActiveLow, Shared) {mask}`, for the PIRQ links.
struct IrqLevelLowShared(u16);

impl Aml for IrqLevelLowShared {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        const LEVEL_ACTIVE_LOW_SHARED: u8 = 0x18;
        sink.byte(0x23);
        sink.word(self.0);
        sink.byte(LEVEL_ACTIVE_LOW_SHARED);
    }
}

/// `CreateWordField (source, index, name)`: not in the crate.
struct CreateWordField<'a> {
    source: &'a dyn Aml,
    index: u8,
    name: &'a str,
}

impl Aml for CreateWordField<'_> {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.byte(0x8B);
        self.source.to_aml_bytes(sink);
        self.index.to_aml_bytes(sink);
        Path::new(self.name).to_aml_bytes(sink);
    }
}

/// `FindSetRightBit (operand, target)`: not in the crate.
struct FindSetRightBit<'a>(&'a dyn Aml, &'a dyn Aml);

impl Aml for FindSetRightBit<'_> {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.byte(0x82);
        self.0.to_aml_bytes(sink);
        self.1.to_aml_bytes(sink);
    }
}

/// `Decrement (name)`: not in the crate.
struct Decrement<'a>(&'a dyn Aml);

impl Aml for Decrement<'_> {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.byte(0x76);
        self.0.to_aml_bytes(sink);
    }
}

/// `\_SB.PC00`: the host bridge for bus 0 (`pci_bus_write_dsdt`).
fn pci_root(cfg: &AcpiConfig, routes: &[IntxRoute], win: &Windows) -> Raw {
    let hid = name("_HID", &EISAName::new("PNP0A03"));
    // bhyve's 2013 DSDT also had _ADR and _UID; harmless, and Linux names
    // the root bus by _UID.
    let adr = name("_ADR", &ZERO);
    let uid = name("_UID", &ZERO);
    let bbn = raw(&Method::new(
        "_BBN".into(),
        0,
        false,
        vec![&Return::new(&ZERO)],
    ));
    let crs = root_crs(win);
    let mut children: Vec<&dyn Aml> = vec![&hid, &adr, &uid, &bbn, &crs];
    let prt = (!routes.is_empty()).then(|| prt(routes, cfg.lpc.is_some()));
    children.extend(prt.iter().map(|p| p as &dyn Aml));
    let isa = cfg.lpc.as_ref().map(|lpc| isa(lpc, win));
    children.extend(isa.iter().map(|d| d as &dyn Aml));
    let hpet = cfg.hpet.map(hpet);
    children.extend(hpet.iter().map(|d| d as &dyn Aml));
    raw(&acpi_tables::aml::Device::new("PC00".into(), children))
}

/// Bus 0's resources: its bus number, the config ports, the legacy I/O
/// below the window, and the I/O, MMIO32 and MMIO64 windows.
fn root_crs(win: &Windows) -> Raw {
    let bus = AddressSpace::<u16>::new_bus_number(0, 0);
    let cfg_ports = io_port(0xCF8, 8);
    let low_io = AddressSpace::<u16>::new_io(0, 0xCF7, None);
    let mid_io = AddressSpace::<u16>::new_io(0xD00, win.io.0 - 1, None);
    let io = AddressSpace::<u16>::new_io(win.io.0, win.io.1, None);
    let uncached = AddressSpaceCacheable::NotCacheable;
    let (m32_first, m32_last) = win.mmio32;
    let m32 = AddressSpace::<u32>::new_memory(uncached, true, m32_first, m32_last, None);
    let (m64_first, m64_last) = win.mmio64;
    let m64 = AddressSpace::<u64>::new_memory(uncached, true, m64_first, m64_last, None);
    crs(vec![&bus, &cfg_ports, &low_io, &mid_io, &io, &m32, &m64])
}

fn link_name(pirq: u8) -> char {
    char::from(b'A' + (pirq - 1) % NPIRQ)
}

/// `PPRT` (PIC mode: INTx through the LPC's PIRQ links), `APRT` (APIC mode:
/// straight to IO-APIC pins) and `_PRT` choosing by `PICM`.  Without an LPC
/// bridge PPRT is empty, as bhyve's.
fn prt(routes: &[IntxRoute], lpc: bool) -> Raw {
    let mut pprt = PackageBuilder::new();
    let mut aprt = PackageBuilder::new();
    for r in routes {
        let addr = (u32::from(r.slot) << 16) | 0xFFFF;
        let pin = r.pin - 1;
        if lpc {
            let link = Path::new(&format!("\\_SB_.PC00.ISA_.LNK{}", link_name(r.pirq)));
            pprt.add_element(&Package::new(vec![&addr, &pin, &link, &ZERO]));
        }
        aprt.add_element(&Package::new(vec![&addr, &pin, &ZERO, &r.gsi]));
    }
    let method = raw(&Method::new(
        "_PRT".into(),
        0,
        false,
        vec![
            &If::new(&Path::new("PICM"), vec![&Return::new(&Path::new("APRT"))]),
            &Else::new(vec![&Return::new(&Path::new("PPRT"))]),
        ],
    ));
    let mut bytes = name("PPRT", &pprt).0;
    bytes.extend(name("APRT", &aprt).0);
    bytes.extend(method.0);
    Raw(bytes)
}

/// `ISA`: the LPC bridge (`pci_lpc_write_dsdt`) and what sits behind it.
fn isa(lpc: &LpcConfig, win: &Windows) -> Raw {
    let adr = name("_ADR", &((u32::from(lpc.slot) << 16) | u32::from(lpc.func)));
    let lpcr = raw(&OpRegion::new(
        "LPCR".into(),
        OpRegionSpace::PCIConfig,
        &ZERO,
        &0x100u16,
    ));
    // PIRA-PIRD at 0x60, PIRE-PIRH at 0x68: the PIRQ router's registers.
    let mut fields = vec![FieldEntry::Reserved(0x60 * 8)];
    for (i, link) in ('A'..='H').enumerate() {
        if i == 4 {
            fields.push(FieldEntry::Reserved(4 * 8));
        }
        let mut field = *b"PIR_";
        field[3] = link as u8;
        fields.push(FieldEntry::Named(field, 8));
    }
    let field = raw(&Field::new(
        "LPCR".into(),
        FieldAccessType::Any,
        FieldLockRule::NoLock,
        FieldUpdateRule::Preserve,
        fields,
    ));
    let pirv = pirv();
    let links: Vec<Raw> = (1..=NPIRQ).map(link).collect();
    let sio = sio(lpc, win);
    let uarts: Vec<Raw> = lpc
        .uarts
        .iter()
        .map(|u| {
            let path = format!("COM{}", u.unit);
            device(
                &path,
                "PNP0501",
                Some(u.unit),
                vec![&io_port(u.port, 8), &IrqNoFlags(u.irq)],
            )
        })
        .collect();
    let rtc = lpc.rtc.then(|| {
        device(
            "RTC_",
            "PNP0B00",
            None,
            vec![&io_port(0x70, 2), &IrqNoFlags(8)],
        )
    });
    let kbd = lpc.atkbdc.then(|| {
        let mut both = device(
            "KBD_",
            "PNP0303",
            None,
            vec![&io_port(0x60, 1), &io_port(0x64, 1), &IrqNoFlags(1)],
        )
        .0;
        both.extend(
            device(
                "MOU_",
                "PNP0F13",
                None,
                vec![&io_port(0x60, 1), &io_port(0x64, 1), &IrqNoFlags(12)],
            )
            .0,
        );
        Raw(both)
    });
    let pic = device(
        "PIC_",
        "PNP0000",
        None,
        vec![&io_port(0x20, 2), &io_port(0xA0, 2), &IrqNoFlags(2)],
    );
    let timer = device(
        "TIMR",
        "PNP0100",
        None,
        vec![&io_port(0x40, 4), &IrqNoFlags(0)],
    );

    let mut children: Vec<&dyn Aml> = vec![&adr, &lpcr, &field, &pirv];
    children.extend(links.iter().map(|l| l as &dyn Aml));
    children.push(&sio);
    children.extend(uarts.iter().map(|u| u as &dyn Aml));
    children.extend(rtc.iter().map(|d| d as &dyn Aml));
    children.extend(kbd.iter().map(|d| d as &dyn Aml));
    children.extend([&pic as &dyn Aml, &timer]);
    raw(&acpi_tables::aml::Device::new("ISA_".into(), children))
}

/// `PIRV (reg)`: is a PIRQ register enabled with a usable IRQ (as
/// `pirq_valid_irq`)?  Returns 0 or 1.
fn pirv() -> Raw {
    let irq = Local(0);
    raw(&Method::new(
        "PIRV".into(),
        1,
        false,
        vec![
            &If::new(
                &And::new(&ZERO, &Arg(0), &PIRQ_DIS),
                vec![&Return::new(&ZERO)],
            ),
            &And::new(&irq, &Arg(0), &PIRQ_IRQ),
            &If::new(&LessThan::new(&irq, &3u8), vec![&Return::new(&ZERO)]),
            &If::new(&Equal::new(&irq, &8u8), vec![&Return::new(&ZERO)]),
            &If::new(&Equal::new(&irq, &13u8), vec![&Return::new(&ZERO)]),
            &Return::new(&1u8),
        ],
    ))
}

/// `LNKx` (PNP0C0F): PIRQ link `pirq` (1..=8), read and programmed through
/// the LPC bridge's PIRQ register.
fn link(pirq: u8) -> Raw {
    let letter = link_name(pirq);
    let reg = Path::new(&format!("PIR{letter}"));
    let cb_name = format!("CB{pirq:02X}");
    let cir_name = format!("CIR{letter}");
    let sir_name = format!("SIR{letter}");
    let cb = Path::new(&cb_name);
    let cir = Path::new(&cir_name);
    let sir = Path::new(&sir_name);
    let irq = Local(0);

    let hid = name("_HID", &EISAName::new("PNP0C0F"));
    let uid = name("_UID", &pirq);
    let sta = raw(&Method::new(
        "_STA".into(),
        0,
        false,
        vec![
            &If::new(
                &MethodCall::new("PIRV".into(), vec![&reg]),
                vec![&Return::new(&LINK_ON)],
            ),
            &Else::new(vec![&Return::new(&LINK_OFF)]),
        ],
    ));
    let prs = name(
        "_PRS",
        &ResourceTemplate::new(vec![&IrqLevelLowShared(PIRQ_PERMITTED)]),
    );
    // _CRS fills a template's IRQ mask from the register.
    let cbuf = name(
        &cb_name,
        &ResourceTemplate::new(vec![&IrqLevelLowShared(0)]),
    );
    let cfield = raw(&CreateWordField {
        source: &cb,
        index: 1,
        name: &cir_name,
    });
    let crs = raw(&Method::new(
        "_CRS".into(),
        0,
        false,
        vec![
            &And::new(&irq, &reg, &(PIRQ_DIS | PIRQ_IRQ)),
            &If::new(
                &MethodCall::new("PIRV".into(), vec![&irq]),
                vec![&ShiftLeft::new(&cir, &1u8, &irq)],
            ),
            &Else::new(vec![&Store::new(&cir, &ZERO)]),
            &Return::new(&cb),
        ],
    ));
    let dis = raw(&Method::new(
        "_DIS".into(),
        0,
        false,
        vec![&Store::new(&reg, &PIRQ_DIS)],
    ));
    // _SRS stores the lowest IRQ set in the requested mask.
    let srs = raw(&Method::new(
        "_SRS".into(),
        1,
        false,
        vec![
            &CreateWordField {
                source: &Arg(0),
                index: 1,
                name: &sir_name,
            },
            &FindSetRightBit(&sir, &irq),
            &Store::new(&reg, &Decrement(&irq)),
        ],
    ));
    let path = format!("LNK{letter}");
    raw(&acpi_tables::aml::Device::new(
        path.as_str().into(),
        vec![&hid, &uid, &sta, &prs, &cbuf, &cfield, &crs, &dis, &srs],
    ))
}

/// `SIO` (PNP0C02): the platform's fixed resources no other device claims
/// (the `SYSRES_IO`/`SYSRES_MEM` set): ELCR, NMI status, PM1 block, SMI_CMD,
/// POST port, extended RTC, and the ECAM window.
fn sio(lpc: &LpcConfig, win: &Windows) -> Raw {
    let mut ports = vec![
        io_port(0x4D0, 2),
        io_port(0x61, 1),
        io_port(pm::PM1A_EVT_ADDR, 8),
        io_port(pm::SMI_CMD, 1),
        io_port(0x84, 1),
    ];
    if lpc.rtc {
        ports.push(io_port(0x72, 6));
    }
    let ecam = Memory32Fixed::new(true, win.ecam_base, win.ecam_len);
    let mut resources: Vec<&dyn Aml> = ports.iter().map(|p| p as &dyn Aml).collect();
    resources.push(&ecam);
    device("SIO_", "PNP0C02", None, resources)
}

/// `HPET` (PNP0103) under PC00, as bhyve's `Scope (_SB.PC00)`.
fn hpet(cfg: HpetConfig) -> Raw {
    device(
        "HPET",
        "PNP0103",
        Some(0),
        vec![&Memory32Fixed::new(true, cfg.base, 0x400)],
    )
}
