//! Partition tables: GPT, MBR (with extended/logical slices) and BSD
//! disklabels, as `stand/common/part.c` reads them (docs/freebsd-boot-abi.md
//! §6.1). Sectors are 512 bytes. Only reading and choosing; the caller
//! probes the chosen partitions for UFS.

use crate::crc32::crc32;
use crate::{Disk, Error};

/// Sector size assumed for every table (`DEV_BSIZE`).
pub const SECTOR: u64 = 512;

/// GPT `freebsd-ufs` type GUID 516e7cb6-6ecf-11d6-8ff8-00022d09712b, in on-disk
/// (mixed-endian) byte order.
pub const GPT_FREEBSD_UFS: [u8; 16] = [
    0xb6, 0x7c, 0x6e, 0x51, 0xcf, 0x6e, 0xd6, 0x11, 0x8f, 0xf8, 0x00, 0x02, 0x2d, 0x09, 0x71, 0x2b,
];
/// FreeBSD's GPT "bootme" attribute (`GPT_ENT_ATTR_BOOTME`, bit 59).
pub const GPT_ATTR_BOOTME: u64 = 1 << 59;
/// MBR type of a FreeBSD slice (`DOSPTYP_386BSD`).
pub const MBR_FREEBSD: u8 = 0xa5;
/// MBR type of a GPT protective entry (`DOSPTYP_PMBR`).
pub const MBR_PMBR: u8 = 0xee;
/// Disklabel magic (`DISKMAGIC`).
pub const DISKMAGIC: u32 = 0x8256_4557;
/// Disklabel file-system type for UFS (`FS_BSDFFS`).
pub const FS_BSDFFS: u8 = 7;

const MBR_EXTENDED: [u8; 3] = [0x05, 0x0f, 0x85];
const DOSPARTOFF: usize = 446;
const RAW_PART: usize = 2;
const MAX_LOGICAL: usize = 8;
/// Largest GPT entry array we read (the usual one is 16 KiB).
const MAX_GPT_TABLE: u64 = 1 << 20;

/// Which table was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Gpt,
    Mbr,
    /// A BSD disklabel at sector 1 of the whole disk (no MBR).
    Bsd,
}

/// A partition's recorded type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartType {
    /// GPT type GUID, on-disk byte order.
    Gpt([u8; 16]),
    /// MBR `dp_typ`.
    Mbr(u8),
    /// Disklabel `p_fstype`.
    Bsd(u8),
}

/// One partition, with the loader's device-name suffix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// `p2`, `s1`, `s5` (logical), `s1a`, or `a`.
    pub name: String,
    /// Byte offset from the start of the disk.
    pub start: u64,
    /// Length in bytes.
    pub size: u64,
    pub ptype: PartType,
    /// GPT "bootme" attribute or MBR active flag.
    pub bootable: bool,
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    b.get(off..off + 2)
        .map_or(0, |s| u16::from_le_bytes([s[0], s[1]]))
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 4)
        .map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    b.get(off..off + 8).map_or(0, |s| {
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        u64::from_le_bytes(a)
    })
}

fn read_sectors(disk: &dyn Disk, what: &str, lba: u64, count: u64) -> Result<Vec<u8>, Error> {
    let io = |source| Error::Io {
        what: format!("{what}: sector {lba}"),
        source,
    };
    let off = lba
        .checked_mul(SECTOR)
        .ok_or_else(|| io(std::io::ErrorKind::InvalidInput.into()))?;
    let len = count
        .checked_mul(SECTOR)
        .and_then(|l| usize::try_from(l).ok())
        .ok_or_else(|| io(std::io::ErrorKind::InvalidInput.into()))?;
    let mut buf = vec![0u8; len];
    disk.read_at(&mut buf, off).map_err(io)?;
    Ok(buf)
}

/// Read the disk's partition table. `Ok(None)`: no table at all (a raw
/// file system, or garbage). A table that is present but broken (bad GPT
/// CRCs in both copies, ...) is an error.
pub fn read_table(disk: &dyn Disk, what: &str) -> Result<Option<(Scheme, Vec<Partition>)>, Error> {
    let nsec = disk.size() / SECTOR;
    if nsec < 2 {
        return Ok(None);
    }
    let sec0 = read_sectors(disk, what, 0, 1)?;
    let mbr = mbr_entries(&sec0);
    let pmbr = mbr
        .as_ref()
        .is_some_and(|e| e.iter().any(|e| e.typ == MBR_PMBR));

    match read_gpt(disk, what, nsec) {
        Ok(Some(parts)) => return Ok(Some((Scheme::Gpt, parts))),
        // A broken GPT is fatal when the MBR says GPT (or there is no MBR
        // to fall back on); a stray "EFI PART" on an MBR disk is not.
        Err(e) if pmbr || mbr.is_none() => return Err(e),
        Err(_) => {}
        Ok(None) if pmbr => {
            return Err(Error::BadPartition {
                what: what.into(),
                why: "protective MBR but no GPT header at LBA 1 or the last LBA".into(),
            });
        }
        Ok(None) => {}
    }
    // part.c looks for a disklabel at sector 1 before the MBR.
    let label = read_label(disk, what, 0, "")?;
    if !label.is_empty() {
        return Ok(Some((Scheme::Bsd, label)));
    }
    match mbr {
        Some(entries) => Ok(Some((Scheme::Mbr, read_mbr(disk, what, &entries, nsec)?))),
        None => Ok(None),
    }
}

/// The partitions worth probing for a UFS root, best first (the loader's
/// `ptable_getbestpart`, plus GPT "bootme" as gptboot honours it).
pub fn boot_order(scheme: Scheme, parts: &[Partition]) -> Vec<Partition> {
    let mut out: Vec<Partition> = Vec::new();
    match scheme {
        Scheme::Gpt => {
            let ufs = |p: &&Partition| p.ptype == PartType::Gpt(GPT_FREEBSD_UFS);
            out.extend(parts.iter().filter(ufs).filter(|p| p.bootable).cloned());
            out.extend(parts.iter().filter(ufs).filter(|p| !p.bootable).cloned());
        }
        Scheme::Bsd => out.extend(label_order(parts.iter())),
        Scheme::Mbr => {
            let slices: Vec<&Partition> = parts
                .iter()
                .filter(|p| matches!(p.ptype, PartType::Mbr(_)))
                .collect();
            let is_bsd = |p: &&&Partition| p.ptype == PartType::Mbr(MBR_FREEBSD);
            // FreeBSD slices first (active before inactive), then any other
            // slice that might hold UFS directly.
            let ordered = slices
                .iter()
                .filter(is_bsd)
                .filter(|p| p.bootable)
                .chain(slices.iter().filter(is_bsd).filter(|p| !p.bootable))
                .chain(slices.iter().filter(|p| !is_bsd(p)).filter(|p| p.bootable))
                .chain(slices.iter().filter(|p| !is_bsd(p)).filter(|p| !p.bootable));
            for slice in ordered {
                let inner: Vec<&Partition> = parts
                    .iter()
                    .filter(|p| {
                        matches!(p.ptype, PartType::Bsd(_))
                            && p.name.len() == slice.name.len() + 1
                            && p.name.starts_with(&slice.name)
                    })
                    .collect();
                if inner.is_empty() {
                    out.push((*slice).clone());
                } else {
                    out.extend(label_order(inner.into_iter()));
                }
            }
        }
    }
    out
}

/// Label partitions: `a` first, then other UFS ones.
fn label_order<'a>(parts: impl Iterator<Item = &'a Partition> + Clone) -> Vec<Partition> {
    let is_a = |p: &&Partition| p.name.ends_with('a');
    let mut out: Vec<Partition> = parts.clone().filter(is_a).cloned().collect();
    out.extend(
        parts
            .filter(|p| !is_a(p) && p.ptype == PartType::Bsd(FS_BSDFFS))
            .cloned(),
    );
    out
}

// ---------------------------------------------------------------- GPT

/// The fields of a validated GPT header.
struct GptHeader {
    lba_alt: u64,
    lba_start: u64,
    lba_end: u64,
    lba_table: u64,
    entries: u64,
    entsz: u64,
    crc_table: u32,
}

/// Parse the header at `lba`: `Ok(None)` if there is no signature.
fn gpt_header(
    disk: &dyn Disk,
    what: &str,
    lba: u64,
    nsec: u64,
) -> Result<Option<GptHeader>, String> {
    let b = read_sectors(disk, what, lba, 1).map_err(|e| e.to_string())?;
    if &b[..8] != b"EFI PART" {
        return Ok(None);
    }
    let hdr_size = u32_at(&b, 12) as usize;
    if !(92..=SECTOR as usize).contains(&hdr_size) {
        return Err(format!(
            "header at LBA {lba}: size {hdr_size} not in 92..=512"
        ));
    }
    let mut copy = b[..hdr_size].to_vec();
    copy[16..20].fill(0);
    let (want, got) = (u32_at(&b, 16), crc32(&copy));
    if want != got {
        return Err(format!(
            "header at LBA {lba}: CRC32 {got:#010x} does not match recorded {want:#010x}"
        ));
    }
    if u32_at(&b, 8) < 0x0001_0000 {
        return Err(format!(
            "header at LBA {lba}: revision {:#x} too old",
            u32_at(&b, 8)
        ));
    }
    let h = GptHeader {
        lba_alt: u64_at(&b, 32),
        lba_start: u64_at(&b, 40),
        lba_end: u64_at(&b, 48),
        lba_table: u64_at(&b, 72),
        entries: u64::from(u32_at(&b, 80)),
        entsz: u64::from(u32_at(&b, 84)),
        crc_table: u32_at(&b, 88),
    };
    let lba_self = u64_at(&b, 24);
    if lba_self != lba || h.lba_alt == lba_self {
        return Err(format!(
            "header at LBA {lba}: hdr_lba_self {lba_self} / hdr_lba_alt {} inconsistent",
            h.lba_alt
        ));
    }
    if h.lba_start > h.lba_end || h.lba_end >= nsec {
        return Err(format!(
            "header at LBA {lba}: usable range {}..={} outside the disk ({nsec} sectors)",
            h.lba_start, h.lba_end
        ));
    }
    if h.entries == 0 || h.entsz < 128 || SECTOR % h.entsz != 0 {
        return Err(format!(
            "header at LBA {lba}: {} entries of {} bytes",
            h.entries, h.entsz
        ));
    }
    let bytes = h.entries * h.entsz; // both < 2^32: no overflow
    if bytes > MAX_GPT_TABLE {
        return Err(format!(
            "header at LBA {lba}: entry table of {bytes} bytes is absurd"
        ));
    }
    if h.lba_table
        .checked_add(bytes.div_ceil(SECTOR))
        .is_none_or(|end| end > nsec)
    {
        return Err(format!(
            "header at LBA {lba}: entry table at LBA {} runs past the disk",
            h.lba_table
        ));
    }
    Ok(Some(h))
}

fn gpt_entries(disk: &dyn Disk, what: &str, h: &GptHeader) -> Result<Vec<Partition>, String> {
    let bytes = h.entries * h.entsz;
    let table =
        read_sectors(disk, what, h.lba_table, bytes.div_ceil(SECTOR)).map_err(|e| e.to_string())?;
    let table = &table[..bytes as usize];
    let got = crc32(table);
    if got != h.crc_table {
        return Err(format!(
            "entry table at LBA {}: CRC32 {got:#010x} does not match recorded {:#010x}",
            h.lba_table, h.crc_table
        ));
    }
    let mut out = Vec::new();
    for (i, e) in table.chunks_exact(h.entsz as usize).enumerate() {
        let mut typ = [0u8; 16];
        typ.copy_from_slice(&e[..16]);
        if typ == [0u8; 16] {
            continue;
        }
        let (start, end) = (u64_at(e, 32), u64_at(e, 40));
        // part.c ignores entries outside the usable range.
        if start > end || start < h.lba_start || end > h.lba_end {
            continue;
        }
        out.push(Partition {
            name: format!("p{}", i + 1),
            start: start * SECTOR, // end < nsec: no overflow
            size: (end - start + 1) * SECTOR,
            ptype: PartType::Gpt(typ),
            bootable: u64_at(e, 48) & GPT_ATTR_BOOTME != 0,
        });
    }
    Ok(out)
}

/// Primary GPT, else the backup (at the primary's `hdr_lba_alt` or the last
/// sector). `Ok(None)` when neither has a signature.
fn read_gpt(disk: &dyn Disk, what: &str, nsec: u64) -> Result<Option<Vec<Partition>>, Error> {
    let mut why = Vec::new();
    let mut alt = nsec - 1;
    let mut seen = false;
    match gpt_header(disk, what, 1, nsec) {
        Ok(Some(h)) => {
            seen = true;
            match gpt_entries(disk, what, &h) {
                Ok(p) => return Ok(Some(p)),
                Err(e) => why.push(format!("primary {e}")),
            }
            if h.lba_alt < nsec {
                alt = h.lba_alt;
            }
        }
        Ok(None) => {}
        Err(e) => {
            seen = true;
            why.push(format!("primary {e}"));
        }
    }
    if alt > 1 {
        match gpt_header(disk, what, alt, nsec) {
            Ok(Some(h)) => match gpt_entries(disk, what, &h) {
                Ok(p) => return Ok(Some(p)),
                Err(e) => {
                    seen = true;
                    why.push(format!("backup {e}"));
                }
            },
            Ok(None) => why.push(format!("no backup header at LBA {alt}")),
            Err(e) => {
                seen = true;
                why.push(format!("backup {e}"));
            }
        }
    }
    if !seen {
        return Ok(None);
    }
    Err(Error::BadPartition {
        what: what.into(),
        why: format!("GPT: {}", why.join("; ")),
    })
}

// ---------------------------------------------------------------- MBR

#[derive(Debug, Clone, Copy)]
struct MbrEntry {
    active: bool,
    typ: u8,
    start: u64,
    size: u64,
}

/// The four entries of an MBR sector, or `None` if it is not one (no 0x55AA,
/// or a flag byte other than 0x00/0x80, as `part.c` requires).
fn mbr_entries(sec: &[u8]) -> Option<[MbrEntry; 4]> {
    if sec.get(510..512) != Some(&[0x55, 0xaa]) {
        return None;
    }
    let mut out = [MbrEntry {
        active: false,
        typ: 0,
        start: 0,
        size: 0,
    }; 4];
    for (i, e) in out.iter_mut().enumerate() {
        let off = DOSPARTOFF + 16 * i;
        let flag = sec[off];
        if flag != 0 && flag != 0x80 {
            return None;
        }
        *e = MbrEntry {
            active: flag == 0x80,
            typ: sec[off + 4],
            start: u64::from(u32_at(sec, off + 8)),
            size: u64::from(u32_at(sec, off + 12)),
        };
    }
    Some(out)
}

fn read_mbr(
    disk: &dyn Disk,
    what: &str,
    entries: &[MbrEntry; 4],
    nsec: u64,
) -> Result<Vec<Partition>, Error> {
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        if e.typ == 0 || e.size == 0 || e.start >= nsec {
            continue;
        }
        if MBR_EXTENDED.contains(&e.typ) {
            read_logical(disk, what, e.start, nsec, &mut out)?;
            continue;
        }
        let name = format!("s{}", i + 1);
        push_slice(disk, what, name, e, e.start, &mut out)?;
    }
    Ok(out)
}

/// Add a slice and, for a FreeBSD slice, the disklabel inside it.
fn push_slice(
    disk: &dyn Disk,
    what: &str,
    name: String,
    e: &MbrEntry,
    start: u64,
    out: &mut Vec<Partition>,
) -> Result<(), Error> {
    let label = if e.typ == MBR_FREEBSD {
        read_label(disk, what, start, &name)?
    } else {
        Vec::new()
    };
    out.push(Partition {
        name,
        start: start * SECTOR, // start < 2^33: no overflow
        size: e.size * SECTOR,
        ptype: PartType::Mbr(e.typ),
        bootable: e.active,
    });
    out.extend(label);
    Ok(())
}

/// Walk the EBR chain of an extended partition: logical slices s5, s6, ...
fn read_logical(
    disk: &dyn Disk,
    what: &str,
    base: u64,
    nsec: u64,
    out: &mut Vec<Partition>,
) -> Result<(), Error> {
    let mut next = 0u64;
    for n in 0..MAX_LOGICAL {
        let ebr = base + next;
        if ebr >= nsec {
            break;
        }
        let sec = read_sectors(disk, what, ebr, 1)?;
        let Some(ents) = mbr_entries(&sec) else { break };
        let e = ents[0];
        let start = ebr + e.start;
        if e.typ != 0 && e.size != 0 && start < nsec {
            push_slice(disk, what, format!("s{}", 5 + n), &e, start, out)?;
        }
        let link = ents[1];
        // Links are relative to the extended partition; 0 would loop.
        if !MBR_EXTENDED.contains(&link.typ) || link.start == 0 || link.start == next {
            break;
        }
        next = link.start;
    }
    Ok(())
}

// ---------------------------------------------------------------- disklabel

/// The disklabel at sector 1 of the container starting at `base` (sectors),
/// if any. Partition offsets are taken relative to `c` (`RAW_PART`), as
/// `part.c` does: this covers both labels with slice-relative offsets
/// (`c` at 0) and old ones with absolute offsets (`c` at the slice start).
fn read_label(
    disk: &dyn Disk,
    what: &str,
    base: u64,
    prefix: &str,
) -> Result<Vec<Partition>, Error> {
    let Some(lba) = base.checked_add(1) else {
        return Ok(Vec::new());
    };
    if lba >= disk.size() / SECTOR {
        return Ok(Vec::new());
    }
    let b = read_sectors(disk, what, lba, 1)?;
    if u32_at(&b, 0) != DISKMAGIC && u32_at(&b, 132) != DISKMAGIC {
        return Ok(Vec::new());
    }
    if u64::from(u32_at(&b, 40)) != SECTOR {
        return Ok(Vec::new());
    }
    let npart = usize::from(u16_at(&b, 138));
    if !(8..=20).contains(&npart) {
        return Ok(Vec::new());
    }
    let p = |i: usize, off: usize| 148 + 16 * i + off;
    let raw_offset = u64::from(u32_at(&b, p(RAW_PART, 4)));
    let mut out = Vec::new();
    for i in 0..npart {
        let size = u64::from(u32_at(&b, p(i, 0)));
        let offset = u64::from(u32_at(&b, p(i, 4)));
        if i == RAW_PART || size == 0 {
            continue;
        }
        let Some(rel) = offset.checked_sub(raw_offset) else {
            continue;
        };
        let letter = char::from(b'a' + i as u8); // i < 20
        out.push(Partition {
            name: format!("{prefix}{letter}"),
            start: (base + rel) * SECTOR, // all < 2^34 sectors
            size: size * SECTOR,
            ptype: PartType::Bsd(b[p(i, 12)]),
            bootable: false,
        });
    }
    Ok(out)
}
