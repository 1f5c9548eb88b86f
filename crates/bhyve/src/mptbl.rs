//! The Intel MultiProcessor table bhyve builds (`amd64/mptbl.c`): a floating
//! pointer at 0xF0000 followed by the configuration table — processors, the
//! PCI (0) and ISA (1) buses, the IO-APIC, the ISA and PCI INTx interrupt
//! assignments, and the local interrupts.

use crate::acpi::{IOAPIC_BASE, IOAPIC_ID, IntxRoute, LAPIC_BASE, checksum};
use crate::pm;

/// Where bhyve puts the MP floating pointer (the configuration table
/// follows it).
pub const MPTABLE_BASE: u32 = 0xF0000;
/// SMBIOS starts at 0xF1000: the MP table must end before it.
const MPTABLE_END: u32 = 0xF1000;

const SPEC_REV: u8 = 4;
const LAPIC_VERSION: u8 = 0x10;
const IOAPIC_VERSION: u8 = 0x11;
/// Family 6, model 26, stepping 5 and an i7's feature flags, combined as
/// bhyve's `MPEP_SIG` does: the model overflows its 4 bits, giving 0x7A5.
const CPU_SIGNATURE: u32 = (6 << 8) | (26 << 4) | 5;
const CPU_FEATURES: u32 = 0xBFEB_FBFF;

const FLOATING_LEN: usize = 16;
const HEADER_LEN: usize = 44;

// Entry types and interrupt types.
const PROCESSOR: u8 = 0;
const BUS: u8 = 1;
const IOAPIC: u8 = 2;
const IO_INT: u8 = 3;
const LOCAL_INT: u8 = 4;
const INT: u8 = 0;
const NMI: u8 = 1;
const EXTINT: u8 = 3;
/// Interrupt flags: polarity and trigger "conforming to the bus" are 0.
const ACTIVE_LOW_LEVEL: u16 = 0x000F;

const PCI_BUS: u8 = 0;
const ISA_BUS: u8 = 1;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MpTableError {
    #[error("{0} vCPUs: the MP table describes 1 to 255")]
    BadCpuCount(usize),
    #[error("the MP table ({len} bytes) would run into the SMBIOS area at 0xF1000")]
    TooLarge { len: usize },
}

/// Build the MP table for `ncpus` vCPUs and the PCI INTx routes (from
/// `acpi::route_intx`); returns its one (guest-physical address, bytes).
pub fn build(ncpus: usize, intx: &[IntxRoute]) -> Result<Vec<(u64, Vec<u8>)>, MpTableError> {
    if ncpus == 0 || ncpus > 255 {
        return Err(MpTableError::BadCpuCount(ncpus));
    }
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    let mut entry = |bytes: &[u8]| {
        entries.extend_from_slice(bytes);
        count += 1;
    };

    for id in (0..=u8::MAX).take(ncpus) {
        const ENABLED: u8 = 1;
        const BSP: u8 = 2;
        let flags = if id == 0 { ENABLED | BSP } else { ENABLED };
        let mut e = vec![PROCESSOR, id, LAPIC_VERSION, flags];
        e.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        e.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        e.extend_from_slice(&[0; 8]);
        entry(&e);
    }
    entry(&[BUS, PCI_BUS, b'P', b'C', b'I', b' ', b' ', b' ']);
    entry(&[BUS, ISA_BUS, b'I', b'S', b'A', b' ', b' ', b' ']);
    let mut e = vec![IOAPIC, IOAPIC_ID, IOAPIC_VERSION, 1];
    e.extend_from_slice(&IOAPIC_BASE.to_le_bytes());
    entry(&e);

    let io_int = |kind: u8, flags: u16, bus: u8, irq: u8, pin: u8| {
        let [lo, hi] = flags.to_le_bytes();
        [IO_INT, kind, lo, hi, bus, irq, IOAPIC_ID, pin]
    };
    // The ISA IRQs on the first 16 pins: pin 0 is ExtINT, IRQ 0 is on pin 2,
    // the SCI is level/active-low, the rest are identity-mapped.
    let sci = pm::SCI_INT as u8;
    for pin in 0..16u8 {
        entry(&match pin {
            0 => io_int(EXTINT, 0, ISA_BUS, 0, pin),
            2 => io_int(INT, 0, ISA_BUS, 0, pin),
            p if p == sci => io_int(INT, ACTIVE_LOW_LEVEL, ISA_BUS, sci, pin),
            _ => io_int(INT, 0, ISA_BUS, pin, pin),
        });
    }
    // PCI INTx: the source IRQ is slot << 2 | (INTA = 0 .. INTD = 3).
    for r in intx {
        let src = (r.slot << 2) | (r.pin.saturating_sub(1) & 3);
        entry(&io_int(INT, 0, PCI_BUS, src, r.gsi));
    }
    // ExtINT on LINT0 and NMI on LINT1 of every local APIC (0xFF).
    entry(&[LOCAL_INT, EXTINT, 0, 0, 0, 0, 0xFF, 0]);
    entry(&[LOCAL_INT, NMI, 0, 0, 0, 0, 0xFF, 1]);

    let len = FLOATING_LEN + HEADER_LEN + entries.len();
    if len > (MPTABLE_END - MPTABLE_BASE) as usize {
        return Err(MpTableError::TooLarge { len });
    }

    let mut t = Vec::with_capacity(len);
    t.extend_from_slice(b"_MP_");
    let config_at = MPTABLE_BASE + FLOATING_LEN as u32;
    t.extend_from_slice(&config_at.to_le_bytes());
    // Length in 16-byte units, spec revision, checksum, then feature bytes
    // all zero: no default configuration, the table is present.
    t.extend_from_slice(&[1, SPEC_REV, 0, 0, 0, 0, 0, 0]);
    t[10] = checksum(&t);

    let base_len = (HEADER_LEN + entries.len()) as u16;
    t.extend_from_slice(b"PCMP");
    t.extend_from_slice(&base_len.to_le_bytes());
    t.extend_from_slice(&[SPEC_REV, 0]);
    t.extend_from_slice(b"BHyVe   ");
    t.extend_from_slice(b"Hypervisor  ");
    t.extend_from_slice(&[0; 6]); // no OEM table: pointer and size
    t.extend_from_slice(&count.to_le_bytes());
    t.extend_from_slice(&LAPIC_BASE.to_le_bytes());
    t.extend_from_slice(&[0; 4]); // no extended table
    t.extend_from_slice(&entries);
    t[FLOATING_LEN + 7] = checksum(&t[FLOATING_LEN..]);
    Ok(vec![(u64::from(MPTABLE_BASE), t)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acpi::{PciFunction, route_intx};

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |s, x| s.wrapping_add(*x))
    }

    fn u16_at(b: &[u8], off: usize) -> u16 {
        u16::from_le_bytes([b[off], b[off + 1]])
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    fn routes() -> Vec<IntxRoute> {
        let f = |slot, intx| PciFunction {
            slot,
            func: 0,
            intx,
        };
        route_intx(&[f(0, None), f(2, Some(1)), f(3, Some(1)), f(31, None)]).unwrap()
    }

    /// The entries after the header: (type, bytes).
    fn entries(config: &[u8]) -> Vec<(u8, &[u8])> {
        let mut out = Vec::new();
        let mut off = HEADER_LEN;
        while off < config.len() {
            let len = if config[off] == PROCESSOR { 20 } else { 8 };
            out.push((config[off], &config[off..off + len]));
            off += len;
        }
        assert_eq!(off, config.len());
        out
    }

    #[test]
    fn floating_pointer_and_header() {
        let tables = build(2, &routes()).unwrap();
        assert_eq!(tables.len(), 1);
        let (at, t) = &tables[0];
        assert_eq!(*at, 0xF0000);
        let fp = &t[..16];
        assert_eq!(&fp[..4], b"_MP_");
        assert_eq!(u32_at(fp, 4), 0xF0010, "configuration table right after");
        assert_eq!(
            (fp[8], fp[9], fp[11]),
            (1, 4, 0),
            "length, revision, default"
        );
        assert_eq!(sum(fp), 0);

        let config = &t[16..];
        assert_eq!(&config[..4], b"PCMP");
        assert_eq!(usize::from(u16_at(config, 4)), config.len());
        assert_eq!(config[6], 4);
        assert_eq!(sum(config), 0, "configuration table checksum");
        assert_eq!(&config[8..16], b"BHyVe   ");
        assert_eq!(&config[16..28], b"Hypervisor  ");
        assert_eq!(u32_at(config, 36), 0xFEE0_0000);
        assert_eq!(usize::from(u16_at(config, 34)), entries(config).len());
    }

    #[test]
    fn entries_as_bhyve() {
        let ncpus = 3;
        let tables = build(ncpus, &routes()).unwrap();
        let config = &tables[0].1[16..];
        let all = entries(config);
        let of = |ty: u8| -> Vec<&[u8]> {
            all.iter()
                .filter(|(t, _)| *t == ty)
                .map(|(_, e)| *e)
                .collect()
        };

        let cpus = of(PROCESSOR);
        assert_eq!(cpus.len(), ncpus);
        for (i, c) in cpus.iter().enumerate() {
            assert_eq!(usize::from(c[1]), i, "APIC id");
            assert_eq!(c[2], 0x10);
            assert_eq!(c[3], if i == 0 { 3 } else { 1 }, "enabled, BSP on cpu 0");
            assert_eq!((u32_at(c, 4), u32_at(c, 8)), (0x7A5, 0xBFEB_FBFF));
        }
        assert_eq!(of(BUS), [b"\x01\x00PCI   ", b"\x01\x01ISA   "]);
        assert_eq!(of(IOAPIC), [[2, 0, 0x11, 1, 0, 0, 0xC0, 0xFE]]);

        let ints = of(IO_INT);
        assert_eq!(ints.len(), 16 + 2);
        assert_eq!(ints[0], [3, EXTINT, 0, 0, 1, 0, 0, 0], "pin 0 ExtINT");
        assert_eq!(ints[2], [3, INT, 0, 0, 1, 0, 0, 2], "IRQ 0 -> pin 2");
        assert_eq!(ints[9], [3, INT, 0xF, 0, 1, 9, 0, 9], "SCI level low");
        assert_eq!(ints[4], [3, INT, 0, 0, 1, 4, 0, 4], "identity");
        assert_eq!(ints[16], [3, INT, 0, 0, 0, 2 << 2, 0, 16], "slot 2 INTA");
        assert_eq!(ints[17], [3, INT, 0, 0, 0, 3 << 2, 0, 17], "slot 3 INTA");

        assert_eq!(
            of(LOCAL_INT),
            [
                [4, EXTINT, 0, 0, 0, 0, 0xFF, 0],
                [4, NMI, 0, 0, 0, 0, 0xFF, 1]
            ]
        );
    }

    #[test]
    fn limits() {
        assert_eq!(build(0, &[]), Err(MpTableError::BadCpuCount(0)));
        assert_eq!(build(256, &[]), Err(MpTableError::BadCpuCount(256)));
        let (at, t) = &build(128, &routes()).unwrap()[0];
        assert!(at + t.len() as u64 <= 0xF1000);
        assert!(matches!(
            build(255, &routes()),
            Err(MpTableError::TooLarge { .. })
        ));
    }
}
