//! The firmware tables in guest memory: bhyve builds the ACPI tables
//! (`acpi_build`) and the MP table (`mptable_build`, unless `-Y`) once the
//! devices exist and copies them below 1 MiB before any vCPU runs.

use std::ops::Range;

use vmmapi::vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::acpi::{self, AcpiConfig, AcpiError, PCI_IO_BASE, PCI_MEM32_BASE};
use crate::mptbl::{self, MpTableError};
use crate::pci_emul::{BUSIO_ROUNDUP, BUSMEM32_ROUNDUP, BUSMEM64_ROUNDUP};

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("ACPI tables: {0}")]
    Acpi(#[from] AcpiError),
    #[error("MP table: {0}")]
    MpTable(#[from] MpTableError),
    #[error("{what} at {gpa:#x} ({len} bytes) does not fit in guest memory")]
    NoRoom {
        what: &'static str,
        gpa: u64,
        len: usize,
    },
}

/// What to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tables {
    /// The machine the tables describe.
    pub machine: AcpiConfig,
    /// `acpi_tables`.
    pub acpi: bool,
    /// `x86.mptable` (`-Y` clears it).
    pub mptable: bool,
}

const GIB: u64 = 1 << 30;

/// Bus 0's I/O, 32-bit and 64-bit windows as `init_pci` leaves them with
/// no BARs allocated: just the slop from each window's base.  The 64-bit
/// window starts at the first 32 GiB boundary at or above the end of RAM.
pub fn pci_windows(highmem: u64) -> (Range<u64>, Range<u64>, Range<u64>) {
    let io = u64::from(PCI_IO_BASE);
    let mem64 = (4 * GIB + highmem).next_multiple_of(32 * GIB);
    (
        io..io + BUSIO_ROUNDUP,
        PCI_MEM32_BASE..PCI_MEM32_BASE + BUSMEM32_ROUNDUP,
        mem64..mem64 + BUSMEM64_ROUNDUP,
    )
}

/// One table (or run of tables) and where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    pub what: &'static str,
    pub gpa: u64,
    pub bytes: Vec<u8>,
}

/// Build the tables.
pub fn build(t: &Tables) -> Result<Vec<Blob>, TableError> {
    let blob = |what| move |(gpa, bytes)| Blob { what, gpa, bytes };
    let mut out = Vec::new();
    if t.acpi {
        out.extend(
            acpi::build(&t.machine)?
                .into_iter()
                .map(blob("ACPI tables")),
        );
    }
    if t.mptable {
        let routes = acpi::route_intx(&t.machine.pci)?;
        out.extend(
            mptbl::build(t.machine.ncpus, &routes)?
                .into_iter()
                .map(blob("MP table")),
        );
    }
    Ok(out)
}

/// Build the tables and copy them into guest memory.
pub fn install(t: &Tables, mem: &GuestMemoryMmap) -> Result<(), TableError> {
    for b in build(t)? {
        mem.write_slice(&b.bytes, GuestAddress(b.gpa))
            .map_err(|_| TableError::NoRoom {
                what: b.what,
                gpa: b.gpa,
                len: b.bytes.len(),
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acpi::{ACPI_BASE, HPET_BASE, HPET_ID, HpetConfig, PCI_ECAM, PciFunction};
    use crate::mptbl::MPTABLE_BASE;

    fn tables(ncpus: usize, mptable: bool) -> Tables {
        let (io_window, mmio32, mmio64) = pci_windows(0);
        Tables {
            machine: AcpiConfig {
                ncpus,
                pci: vec![PciFunction {
                    slot: 0,
                    func: 0,
                    intx: None,
                }],
                lpc: None,
                hpet: Some(HpetConfig {
                    base: HPET_BASE,
                    id: HPET_ID,
                }),
                ecam: PCI_ECAM,
                io_window,
                mmio32,
                mmio64,
            },
            acpi: true,
            mptable,
        }
    }

    fn memory(size: usize) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).unwrap()
    }

    #[test]
    fn windows_follow_init_pci() {
        assert_eq!(
            pci_windows(0),
            (
                0x2000..0x2020,
                0xC000_0000..0xC010_0000,
                0x8_0000_0000..0x8_2000_0000
            )
        );
        // 4 GiB + 40 GiB of RAM rounds up to 64 GiB.
        assert_eq!(pci_windows(40 * GIB).2.start, 64 * GIB);
    }

    #[test]
    fn acpi_and_mp_tables_land_below_1m() {
        let mem = memory(2 << 20);
        install(&tables(4, true), &mem).unwrap();
        let mut b = [0u8; 8];
        mem.read_slice(&mut b, GuestAddress(ACPI_BASE.into()))
            .unwrap();
        assert_eq!(&b, b"RSD PTR ");
        mem.read_slice(&mut b[..4], GuestAddress(MPTABLE_BASE.into()))
            .unwrap();
        assert_eq!(&b[..4], b"_MP_");
    }

    #[test]
    fn no_mp_table_with_y() {
        let t = build(&tables(1, false)).unwrap();
        assert!(t.iter().all(|b| b.what == "ACPI tables"));
        assert_eq!(t[0].gpa, u64::from(ACPI_BASE));
    }

    #[test]
    fn tables_that_do_not_fit_are_errors() {
        let e = install(&tables(1, true), &memory(0xF0000)).unwrap_err();
        assert!(e.to_string().starts_with("ACPI tables at 0xf2400"), "{e}");
        let e = build(&tables(0, true)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "ACPI tables: 0 vCPUs: the tables describe 1 to 255"
        );
        let mut t = tables(1, true);
        t.acpi = false;
        let e = install(&t, &memory(0xF0008)).unwrap_err();
        assert!(e.to_string().starts_with("MP table at 0xf0000"), "{e}");
    }
}
