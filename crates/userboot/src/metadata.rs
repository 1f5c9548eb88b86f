//! Preload metadata ("modinfo", §3) and the layout userboot's `bi_load64`
//! gives it: environment at the page after the last file, metadata at the
//! next page, `kernend` after that (§1.5).

use crate::loader::LoadedFile;
use crate::{PAGE_SIZE, roundup};

pub const MODINFO_END: u32 = 0x0000;
pub const MODINFO_NAME: u32 = 0x0001;
pub const MODINFO_TYPE: u32 = 0x0002;
pub const MODINFO_ADDR: u32 = 0x0003;
pub const MODINFO_SIZE: u32 = 0x0004;
pub const MODINFO_ARGS: u32 = 0x0006;
pub const MODINFO_METADATA: u32 = 0x8000;
pub const MODINFOMD_ENVP: u32 = 0x0006;
pub const MODINFOMD_HOWTO: u32 = 0x0007;
pub const MODINFOMD_KERNEND: u32 = 0x0008;
pub const MODINFOMD_SMAP: u32 = 0x1001;
/// Loader-internal records (never copied).
pub const MODINFOMD_NOCOPY: u32 = 0x8000;

/// `SMAP_TYPE_MEMORY`.
pub const SMAP_TYPE_MEMORY: u32 = 1;
/// Where high memory starts.
pub const HIGHMEM_BASE: u64 = 1 << 32;

/// One `struct bios_smap` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SmapEntry {
    pub base: u64,
    pub length: u64,
    pub kind: u32,
}

/// userboot's memory map (`biossmap.c`, §1.2): base memory, extended memory
/// up to `lowmem`, and high memory if any.
pub fn smap(lowmem: u64, highmem: u64) -> Vec<SmapEntry> {
    let mut v = vec![
        SmapEntry {
            base: 0,
            length: 0xa0000,
            kind: SMAP_TYPE_MEMORY,
        },
        SmapEntry {
            base: 0x100000,
            length: lowmem.saturating_sub(0x100000),
            kind: SMAP_TYPE_MEMORY,
        },
    ];
    if highmem != 0 {
        v.push(SmapEntry {
            base: HIGHMEM_BASE,
            length: highmem,
            kind: SMAP_TYPE_MEMORY,
        });
    }
    v
}

/// The packed 20-byte encoding of the map.
pub fn smap_bytes(entries: &[SmapEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * 20);
    for e in entries {
        out.extend_from_slice(&e.base.to_le_bytes());
        out.extend_from_slice(&e.length.to_le_bytes());
        out.extend_from_slice(&e.kind.to_le_bytes());
    }
    out
}

/// Append one record: u32 type, u32 size, data, zero padding to 8.
fn record(out: &mut Vec<u8>, kind: u32, data: &[u8]) {
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(data);
    out.resize(out.len().next_multiple_of(8), 0);
}

fn cstring(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// The kernel-only records `bi_load64` adds just before writing, in
/// creation order: HOWTO, ENVP, KERNEND, SMAP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelExtras {
    pub howto: u32,
    pub envp: u64,
    pub kernend: u64,
    pub smap: Vec<SmapEntry>,
}

impl KernelExtras {
    fn records(&self) -> Vec<(u32, Vec<u8>)> {
        vec![
            (MODINFOMD_HOWTO, self.howto.to_le_bytes().to_vec()),
            (MODINFOMD_ENVP, self.envp.to_le_bytes().to_vec()),
            (MODINFOMD_KERNEND, self.kernend.to_le_bytes().to_vec()),
            (MODINFOMD_SMAP, smap_bytes(&self.smap)),
        ]
    }
}

/// `bi_copymodules64`: for every file in load order NAME, TYPE, [ARGS],
/// ADDR, SIZE and its metadata newest first (skipping NOCOPY); the
/// kernel (`kernel_index`) also gets `extras`; then END.
pub fn encode(files: &[LoadedFile], kernel_index: usize, extras: &KernelExtras) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, f) in files.iter().enumerate() {
        record(&mut out, MODINFO_NAME, &cstring(&f.name));
        record(&mut out, MODINFO_TYPE, &cstring(&f.ftype));
        if let Some(args) = &f.args {
            record(&mut out, MODINFO_ARGS, &cstring(args));
        }
        record(&mut out, MODINFO_ADDR, &f.addr.to_le_bytes());
        record(&mut out, MODINFO_SIZE, &f.size.to_le_bytes());
        let mut md = f.metadata.clone();
        if i == kernel_index {
            md.extend(extras.records());
        }
        for (kind, data) in md.iter().rev().filter(|(k, _)| k & MODINFOMD_NOCOPY == 0) {
            record(&mut out, MODINFO_METADATA | kind, data);
        }
    }
    out.extend_from_slice(&[0; 8]); // MODINFO_END: type 0, size 0
    out
}

/// Where `bi_load64` puts things.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub envp: u64,
    pub modulep: u64,
    pub kernend: u64,
}

/// The env block and final metadata bytes with their layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootData {
    pub layout: Layout,
    pub env_block: Vec<u8>,
    pub metadata: Vec<u8>,
}

/// Lay out env and metadata after the files and encode the metadata with
/// the final `kernend` (sizing pass first, as in `bi_load64`).  `None` if
/// addresses overflow (callers check limits on the result anyway).
pub fn build(
    files: &[LoadedFile],
    kernel_index: usize,
    env_block: Vec<u8>,
    howto: u32,
    lowmem: u64,
    highmem: u64,
) -> Option<BootData> {
    let last = files.iter().map(LoadedFile::end).max().unwrap_or(0);
    let envp = roundup(last, PAGE_SIZE)?;
    let modulep = roundup(envp.checked_add(env_block.len() as u64)?, PAGE_SIZE)?;
    let mut extras = KernelExtras {
        howto,
        envp,
        kernend: 0,
        smap: smap(lowmem, highmem),
    };
    let size = encode(files, kernel_index, &extras).len() as u64;
    let kernend = roundup(modulep.checked_add(size)?, PAGE_SIZE)?;
    extras.kernend = kernend;
    let metadata = encode(files, kernel_index, &extras);
    Some(BootData {
        layout: Layout {
            envp,
            modulep,
            kernend,
        },
        env_block,
        metadata,
    })
}

/// One decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Offset of the record from the start of the metadata.
    pub offset: usize,
    pub kind: u32,
    pub data: Vec<u8>,
}

/// Decode metadata the way the kernel walks it (`subr_module.c`), up to and
/// excluding END.  `None` if a record runs past the buffer or END is missing.
pub fn decode(bytes: &[u8]) -> Option<Vec<Record>> {
    let mut out = Vec::new();
    let mut off = 0usize;
    loop {
        let kind = u32::from_le_bytes(bytes.get(off..off + 4)?.try_into().ok()?);
        let size = u32::from_le_bytes(bytes.get(off + 4..off + 8)?.try_into().ok()?) as usize;
        if kind == MODINFO_END && size == 0 {
            return Some(out);
        }
        let data = bytes
            .get(off + 8..off.checked_add(8)?.checked_add(size)?)?
            .to_vec();
        out.push(Record {
            offset: off,
            kind,
            data,
        });
        off = (off + 8 + size).next_multiple_of(8);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smap_with_and_without_highmem() {
        let m = smap(256 << 20, 0);
        assert_eq!(m.len(), 2);
        assert_eq!(
            m[1],
            SmapEntry {
                base: 0x100000,
                length: (256 << 20) - 0x100000,
                kind: 1
            }
        );
        let b = smap_bytes(&smap(3 << 30, 1 << 30));
        assert_eq!(b.len(), 60);
        assert_eq!(&b[40..48], &(1u64 << 32).to_le_bytes());
        assert_eq!(&b[48..56], &(1u64 << 30).to_le_bytes());
        assert_eq!(&b[56..60], &1u32.to_le_bytes());
    }

    #[test]
    fn worked_example_head() {
        // §3.4: the first records of a kernel entry.
        let f = LoadedFile {
            name: "/boot/kernel/kernel".into(),
            ftype: "elf kernel".into(),
            args: None,
            addr: 0x200000,
            size: 0x1234,
            metadata: vec![],
            modules: vec![],
            deps: vec![],
            chunks: vec![],
        };
        let extras = KernelExtras {
            howto: 0,
            envp: 0,
            kernend: 0x5000,
            smap: smap(256 << 20, 0),
        };
        let b = encode(&[f], 0, &extras);
        assert_eq!(&b[0..8], &[1, 0, 0, 0, 0x14, 0, 0, 0]);
        assert_eq!(&b[8..28], b"/boot/kernel/kernel\0");
        assert_eq!(&b[28..32], &[0; 4]);
        assert_eq!(&b[0x20..0x28], &[2, 0, 0, 0, 0x0b, 0, 0, 0]);
        assert_eq!(&b[0x38..0x40], &[3, 0, 0, 0, 8, 0, 0, 0]);
        assert_eq!(&b[0x58..0x60], &[1, 0x90, 0, 0, 0x28, 0, 0, 0]);
        assert_eq!(&b[0x88..0x90], &[8, 0x80, 0, 0, 8, 0, 0, 0]);
        assert_eq!(&b[0x90..0x98], &0x5000u64.to_le_bytes());
        assert_eq!(&b[b.len() - 8..], &[0; 8]);
        let recs = decode(&b).unwrap();
        let kinds: Vec<u32> = recs.iter().map(|r| r.kind).collect();
        assert_eq!(kinds, [1, 2, 3, 4, 0x9001, 0x8008, 0x8006, 0x8007]);
    }
}
