//! The amd64 kernel (ET_EXEC) the way `load_elf.c` loads it (§1.5, §4.1).

use goblin::elf::program_header::{PF_W, PT_DYNAMIC, PT_LOAD};
use goblin::elf::section_header::{SHT_STRTAB, SHT_SYMTAB};
use goblin::elf::{ProgramHeader, SectionHeader};
use goblin::elf64::header::{ET_EXEC, Header};

use super::{
    Chunk, ElfError, ElfErrorKind, LoadedImage, MDT_VERSION, MODINFOMD_CTORS_ADDR,
    MODINFOMD_CTORS_SIZE, MODINFOMD_DYNAMIC, MODINFOMD_ELFHDR, MODINFOMD_ESYM, MODINFOMD_SHDR,
    MODINFOMD_SSYM, ProvidedModule, c_str, fake_modname, le_i32, le_u32, le_u64, parse_header,
    program_headers, section_headers, section_name, section_table, slice,
};
use crate::loader::MemLimits;
use crate::{Error, PAGE_SIZE};

/// The loader reads the first page up front; program headers must be in it.
const FIRST_PAGE: usize = 4096;

/// Type string of the kernel's metadata record (§3.5).
pub const KERNEL_TYPE: &str = "elf kernel";

/// Whether `bytes` is an ELF executable (a kernel candidate) rather than a
/// relocatable module; only meaningful after [`parse_header`] succeeded.
pub(crate) fn is_exec(hdr: &Header) -> bool {
    hdr.e_type == ET_EXEC
}

/// `-(dest & 0xffffffffff000000)` with `dest = e_entry & ~PAGE_MASK`: the
/// amount added to a segment's VA to get its physical load address.
pub fn relocation_offset(entry: u64) -> u64 {
    let dest = entry & !(PAGE_SIZE - 1);
    (dest & 0xffff_ffff_ff00_0000).wrapping_neg()
}

/// Load the kernel `path` (contents `bytes`) per §1.5 and §4.1.
pub fn load(path: &str, bytes: &[u8], limits: &MemLimits) -> Result<LoadedImage, Error> {
    let err = |k| Error::Elf(ElfError::new(path, k));
    let hdr = parse_header(path, bytes)?;
    if hdr.e_type != ET_EXEC {
        return Err(err(ElfErrorKind::WrongType(hdr.e_type)));
    }
    if hdr.e_entry & !(PAGE_SIZE - 1) == 0 {
        return Err(err(ElfErrorKind::NotAKernel(hdr.e_entry)));
    }
    let off = relocation_offset(hdr.e_entry);
    let phdrs = program_headers(path, bytes, &hdr, FIRST_PAGE)?;

    let mut message = String::new();
    let mut chunks = Vec::new();
    let mut first: Option<u64> = None;
    let mut last: u64 = 0;
    for ph in phdrs.iter().filter(|p| p.p_type == PT_LOAD) {
        if ph.p_filesz > ph.p_memsz {
            return Err(err(ElfErrorKind::Malformed(format!(
                "segment at {:#x}: file size {:#x} exceeds memory size {:#x}",
                ph.p_vaddr, ph.p_filesz, ph.p_memsz
            ))));
        }
        let addr = ph.p_vaddr.wrapping_add(off);
        // Checks the range before anything of that size is allocated.
        limits.check(
            &format!("{path} segment at {:#x}", ph.p_vaddr),
            addr,
            ph.p_memsz,
        )?;
        let file = slice(bytes, ph.p_offset, ph.p_filesz)
            .ok_or_else(|| err(ElfErrorKind::Truncated("segment data")))?;
        if ph.p_flags & PF_W == 0 {
            message.push_str(&format!("text={:#x} ", ph.p_filesz));
        } else {
            message.push_str(&format!("data={:#x}", ph.p_filesz));
            if ph.p_filesz < ph.p_memsz {
                message.push_str(&format!("+{:#x}", ph.p_memsz - ph.p_filesz));
            }
            message.push(' ');
        }
        let mut data = file.to_vec();
        data.resize(ph.p_memsz as usize, 0); // BSS
        chunks.push(Chunk { addr, data });
        first = Some(first.map_or(addr, |f| f.min(addr)));
        last = last.max(addr + ph.p_memsz);
    }
    let Some(first) = first else {
        return Err(err(ElfErrorKind::NoSegments));
    };
    // `limits.check` bounded `last` far below overflow.
    last = last.next_multiple_of(8);

    let mut metadata = Vec::new();
    if let Some(table) = section_table(bytes, &hdr).filter(|t| !t.is_empty() && hdr.e_shoff != 0) {
        metadata.push((MODINFOMD_SHDR, table.to_vec()));
        // Only 64-byte entries can be interpreted; others are passed on as is.
        if usize::from(hdr.e_shentsize) == super::SHDR_SIZE {
            let shdrs = section_headers(path, table)?;
            let shstrndx = usize::from(hdr.e_shstrndx);
            if let Some(ctors) = shdrs.iter().find(|s| {
                section_name(bytes, &shdrs, shstrndx, s.sh_name).as_deref() == Some(".ctors")
            }) {
                metadata.push((MODINFOMD_CTORS_ADDR, ctors.sh_addr.to_le_bytes().to_vec()));
                metadata.push((MODINFOMD_CTORS_SIZE, ctors.sh_size.to_le_bytes().to_vec()));
            }
            if let Some((ssym, esym, blob, text)) = symbols(bytes, &phdrs, &shdrs, last) {
                limits.check(&format!("{path} symbol table"), ssym, esym - ssym)?;
                message.push_str(&text);
                chunks.push(Chunk {
                    addr: ssym,
                    data: blob,
                });
                metadata.push((MODINFOMD_SSYM, ssym.to_le_bytes().to_vec()));
                metadata.push((MODINFOMD_ESYM, esym.to_le_bytes().to_vec()));
                last = esym;
            }
        }
    }

    let dynamic = phdrs.iter().find(|p| p.p_type == PT_DYNAMIC);
    if let Some(d) = dynamic {
        metadata.push((MODINFOMD_DYNAMIC, d.p_vaddr.to_le_bytes().to_vec()));
    }
    metadata.push((
        MODINFOMD_ELFHDR,
        bytes[..goblin::elf64::header::SIZEOF_EHDR].to_vec(),
    ));

    let image = Image { chunks: &chunks };
    let mut modules = dynamic
        .and_then(|d| kernel_modules(&image, d, off))
        .unwrap_or_default();
    if modules.is_empty() {
        modules.push(ProvidedModule {
            name: fake_modname(path),
            version: 1,
        });
    }

    Ok(LoadedImage {
        addr: first,
        size: last - first,
        chunks,
        metadata,
        modules,
        deps: Vec::new(),
        message: message.trim_end().to_owned(),
    })
}

/// The symbol blob of §4.1 at `at`: `(ssym, esym, bytes, "syms=[...]")`,
/// or `None` when there are no loadable symbols (the loader then carries on
/// without them).
fn symbols(
    bytes: &[u8],
    phdrs: &[ProgramHeader],
    shdrs: &[SectionHeader],
    at: u64,
) -> Option<(u64, u64, Vec<u8>, String)> {
    // The last SYMTAB not already inside a PT_LOAD's file range.
    let in_segment = |s: &SectionHeader| {
        phdrs.iter().filter(|p| p.p_type == PT_LOAD).any(|p| {
            s.sh_offset >= p.p_offset
                && s.sh_offset
                    .checked_add(s.sh_size)
                    .is_some_and(|e| e <= p.p_offset.saturating_add(p.p_filesz))
        })
    };
    let symtab = shdrs.iter().rev().find(|s| {
        s.sh_type == SHT_SYMTAB && !in_segment(s) && s.sh_offset != 0 && s.sh_size != 0
    })?;
    let strtab = shdrs.get(symtab.sh_link as usize)?;
    if strtab.sh_type != SHT_STRTAB {
        return None;
    }
    let mut blob = Vec::new();
    let mut text = String::from("syms=[");
    for (i, sec) in [symtab, strtab].into_iter().enumerate() {
        let data = slice(bytes, sec.sh_offset, sec.sh_size)?;
        if i == 1 {
            text.push('+');
        }
        text.push_str(&format!("0x8+{:#x}", sec.sh_size));
        blob.extend_from_slice(&sec.sh_size.to_le_bytes());
        blob.extend_from_slice(data);
        blob.resize(blob.len().next_multiple_of(8), 0);
    }
    text.push(']');
    Some((at, at + blob.len() as u64, blob, text))
}

/// Read access to the loaded segments by physical address.
struct Image<'a> {
    chunks: &'a [Chunk],
}

impl Image<'_> {
    fn bytes(&self, addr: u64, len: u64) -> Option<&[u8]> {
        self.chunks.iter().find_map(|c| {
            let off = addr.checked_sub(c.addr)?;
            slice(&c.data, off, len)
        })
    }
    fn u32(&self, addr: u64) -> Option<u32> {
        le_u32(self.bytes(addr, 4)?, 0)
    }
    fn u64(&self, addr: u64) -> Option<u64> {
        le_u64(self.bytes(addr, 8)?, 0)
    }
    fn string(&self, addr: u64) -> Option<String> {
        let chunk = self
            .chunks
            .iter()
            .find(|c| addr >= c.addr && addr - c.addr < c.data.len() as u64)?;
        c_str(&chunk.data, (addr - chunk.addr) as usize)
    }
}

/// SysV ELF hash (`elf_hash` in `load_elf.c`).
fn elf_hash(name: &str) -> u32 {
    let mut h: u32 = 0;
    for &c in name.as_bytes() {
        h = (h << 4).wrapping_add(u32::from(c));
        let g = h & 0xf000_0000;
        if g != 0 {
            h ^= g >> 24;
        }
        h &= !g;
    }
    h
}

/// The `MDT_VERSION` modules compiled into the kernel, found the way
/// `load_elf.c` does: `_DYNAMIC`'s hash table gives
/// `__start/__stop_set_modmetadata_set`, whose pointers (already relocated
/// in an ET_EXEC) are followed with the load offset applied.  `None` when
/// any of it is missing or inconsistent.
fn kernel_modules(image: &Image, dynamic: &ProgramHeader, off: u64) -> Option<Vec<ProvidedModule>> {
    const DT_HASH: u64 = 4;
    const DT_STRTAB: u64 = 5;
    const DT_SYMTAB: u64 = 6;
    const DT_STRSZ: u64 = 10;
    let dyns = image.bytes(dynamic.p_vaddr.wrapping_add(off), dynamic.p_filesz)?;
    let (mut hash, mut strtab, mut symtab, mut strsz) = (None, None, None, 0);
    for e in dyns.chunks_exact(16) {
        let (tag, val) = (le_u64(e, 0)?, le_u64(e, 8)?);
        match tag {
            0 => break,
            DT_HASH => hash = Some(val.wrapping_add(off)),
            DT_STRTAB => strtab = Some(val.wrapping_add(off)),
            DT_SYMTAB => symtab = Some(val.wrapping_add(off)),
            DT_STRSZ => strsz = val,
            _ => {}
        }
    }
    let (hash, strtab, symtab) = (hash?, strtab?, symtab?);
    if strsz == 0 {
        return None;
    }
    let nbuckets = u64::from(image.u32(hash)?);
    let nchains = u64::from(image.u32(hash + 4)?);
    if nbuckets == 0 {
        return None;
    }
    let lookup = |name: &str| -> Option<u64> {
        let bucket = u64::from(elf_hash(name)) % nbuckets;
        let mut symnum = u64::from(image.u32(hash + 8 + bucket * 4)?);
        // At most nchains steps: a looping chain must not hang the loader.
        for _ in 0..=nchains {
            if symnum == 0 || symnum >= nchains {
                return None;
            }
            let sym = image.bytes(symtab + symnum * super::SYM_SIZE, super::SYM_SIZE)?;
            let st_name = u64::from(le_u32(sym, 0)?);
            if st_name == 0 {
                return None;
            }
            if image.string(strtab + st_name)? == name {
                let shndx = u16::from_le_bytes([sym[6], sym[7]]);
                let value = le_u64(sym, 8)?;
                let is_func = sym[4] & 0xf == 2;
                return (shndx != 0 || (value != 0 && is_func)).then_some(value);
            }
            symnum = u64::from(image.u32(hash + 8 + nbuckets * 4 + symnum * 4)?);
        }
        None
    };
    let start = lookup("__start_set_modmetadata_set")?.wrapping_add(off);
    let stop = lookup("__stop_set_modmetadata_set")?.wrapping_add(off);
    let mut modules = Vec::new();
    let mut p = start;
    while p < stop {
        let v = image.u64(p)?.wrapping_add(off);
        let md = image.bytes(v, 24)?;
        let md_type = le_i32(md, 4)?;
        let md_data = le_u64(md, 8)?.wrapping_add(off);
        let md_cval = le_u64(md, 16)?.wrapping_add(off);
        if md_type == MDT_VERSION {
            let name = image.string(md_cval)?;
            let version = le_i32(image.bytes(md_data, 4)?, 0)?;
            modules.push(ProvidedModule { name, version });
        }
        p += 8;
    }
    Some(modules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_and_hash() {
        assert_eq!(
            relocation_offset(0xffff_ffff_8020_0120).wrapping_add(0xffff_ffff_8020_0000),
            0x20_0000
        );
        assert_eq!(relocation_offset(0x40_1000), 0);
        assert_eq!(elf_hash(""), 0);
        assert_eq!(elf_hash("printf"), 0x077905a6);
    }
}
