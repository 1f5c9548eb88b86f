//! `.ko` modules (ET_REL) the way `load_elf_obj.c` lays them out (§4.2),
//! including the relocated walk of `set_modmetadata_set` that finds
//! `MODULE_DEPEND` and `MODULE_VERSION`.

use goblin::elf::SectionHeader;
use goblin::elf::section_header::{
    SHF_ALLOC, SHT_NOBITS, SHT_PROGBITS, SHT_REL, SHT_RELA, SHT_STRTAB, SHT_SYMTAB,
};
use goblin::elf64::header::{ET_REL, SIZEOF_EHDR};

use super::{
    Chunk, Dependency, ElfError, ElfErrorKind, LoadedImage, MDT_DEPEND, MDT_VERSION,
    MODINFOMD_ELFHDR, MODINFOMD_SHDR, ModDepend, ProvidedModule, SHDR_SIZE, SYM_SIZE, c_str,
    le_i32, le_u64, parse_header, section_headers, section_table, slice,
};
use crate::loader::MemLimits;
use crate::{Error, roundup};

/// Type string of a module's metadata record (§3.5).
pub const OBJ_TYPE: &str = "elf obj module";

const SHT_X86_64_UNWIND: u32 = 0x7000_0001;
const R_X86_64_64: u32 = 1;
const R_X86_64_RELATIVE: u32 = 8;
const R_X86_64_IRELATIVE: u32 = 37;

/// Load the module `path` at `dest` (already page-rounded by the caller).
pub fn load(path: &str, bytes: &[u8], dest: u64, limits: &MemLimits) -> Result<LoadedImage, Error> {
    let err = |k| Error::Elf(ElfError::new(path, k));
    let hdr = parse_header(path, bytes)?;
    if hdr.e_type != ET_REL {
        return Err(err(ElfErrorKind::WrongType(hdr.e_type)));
    }
    if hdr.e_shnum == 0 || hdr.e_shoff == 0 || usize::from(hdr.e_shentsize) != SHDR_SIZE {
        return Err(err(ElfErrorKind::Malformed(
            "missing or odd section header table".into(),
        )));
    }
    let table = section_table(bytes, &hdr)
        .ok_or_else(|| err(ElfErrorKind::Truncated("section headers")))?;
    let mut shdrs = section_headers(path, table)?;
    let shnum = shdrs.len();

    // Decide where everything goes; a non-zero sh_addr means "placed".
    for s in &mut shdrs {
        s.sh_addr = 0;
    }
    let mut last = dest;
    let mut place = |s: &mut SectionHeader| -> Result<(), Error> {
        let at = roundup(last, s.sh_addralign)
            .ok_or_else(|| err(ElfErrorKind::TooLarge(s.sh_addralign)))?;
        s.sh_addr = at;
        last = at
            .checked_add(s.sh_size)
            .ok_or_else(|| err(ElfErrorKind::TooLarge(s.sh_size)))?;
        // Keep the running total bounded so no later step can overflow.
        limits.check(path, dest, last - dest)
    };
    for s in shdrs.iter_mut() {
        let kind_ok = matches!(s.sh_type, SHT_PROGBITS | SHT_NOBITS | SHT_X86_64_UNWIND);
        if s.sh_size != 0 && kind_ok && s.sh_flags & u64::from(SHF_ALLOC) != 0 {
            place(s)?;
        }
    }
    let symtabs: Vec<usize> = (0..shnum)
        .filter(|&i| shdrs[i].sh_type == SHT_SYMTAB)
        .collect();
    let [symtab] = symtabs[..] else {
        return Err(err(ElfErrorKind::NoSymtab));
    };
    place(&mut shdrs[symtab])?;
    let strtab = shdrs[symtab].sh_link as usize;
    if strtab >= shnum || shdrs[strtab].sh_type != SHT_STRTAB {
        return Err(err(ElfErrorKind::BadSymStrings));
    }
    place(&mut shdrs[strtab])?;
    let shstrndx = usize::from(hdr.e_shstrndx);
    if shstrndx == 0 || shstrndx >= shnum || shdrs[shstrndx].sh_type != SHT_STRTAB {
        return Err(err(ElfErrorKind::NoSectionNames));
    }
    place(&mut shdrs[shstrndx])?;
    for i in 0..shnum {
        if matches!(shdrs[i].sh_type, SHT_REL | SHT_RELA) {
            let target = shdrs[i].sh_info as usize;
            let Some(t) = shdrs.get(target) else {
                return Err(err(ElfErrorKind::Malformed(format!(
                    "relocation section {i} targets section {target}"
                ))));
            };
            if t.sh_flags & u64::from(SHF_ALLOC) != 0 {
                place(&mut shdrs[i])?;
            }
        }
    }

    // Zero the whole range (covers NOBITS), then copy section contents.
    let mut image = vec![0u8; (last - dest) as usize];
    for s in shdrs
        .iter()
        .filter(|s| s.sh_addr != 0 && s.sh_type != SHT_NOBITS)
    {
        let data = slice(bytes, s.sh_offset, s.sh_size)
            .ok_or_else(|| err(ElfErrorKind::Truncated("section data")))?;
        let at = (s.sh_addr - dest) as usize;
        image[at..at + data.len()].copy_from_slice(data);
    }

    // The section header table as the kernel will see it: the new sh_addr
    // values (0 for sections not loaded), everything else verbatim.
    let mut shdr_meta = table.to_vec();
    for (i, s) in shdrs.iter().enumerate() {
        shdr_meta[i * SHDR_SIZE + 16..i * SHDR_SIZE + 24].copy_from_slice(&s.sh_addr.to_le_bytes());
    }

    let obj = Obj {
        path,
        base: dest,
        image: &image,
        shdrs: &shdrs,
        symtab,
    };
    let (modules, mut deps) = obj.parse_modmetadata(shstrndx)?;
    // DEPLIST records are prepended, and the dependency walk starts at the
    // newest, so dependencies are tried last-declared first.
    deps.reverse();

    let size = last - dest;
    Ok(LoadedImage {
        addr: dest,
        size,
        chunks: vec![Chunk {
            addr: dest,
            data: image,
        }],
        metadata: vec![
            (MODINFOMD_SHDR, shdr_meta),
            (MODINFOMD_ELFHDR, bytes[..SIZEOF_EHDR].to_vec()),
        ],
        modules,
        deps,
        message: format!("size {size:#x} at {dest:#x}"),
    })
}

/// A laid-out module image, addressed by physical address.
struct Obj<'a> {
    path: &'a str,
    base: u64,
    image: &'a [u8],
    shdrs: &'a [SectionHeader],
    symtab: usize,
}

impl Obj<'_> {
    fn err(&self, k: ElfErrorKind) -> Error {
        Error::Elf(ElfError::new(self.path, k))
    }

    fn bytes(&self, addr: u64, len: u64) -> Result<&[u8], Error> {
        addr.checked_sub(self.base)
            .and_then(|off| slice(self.image, off, len))
            .ok_or_else(|| self.err(ElfErrorKind::BadMetadata(addr)))
    }

    fn string(&self, addr: u64) -> Result<String, Error> {
        addr.checked_sub(self.base)
            .and_then(|off| c_str(self.image, usize::try_from(off).ok()?))
            .ok_or_else(|| self.err(ElfErrorKind::BadMetadata(addr)))
    }

    /// `obj_lookup_set("modmetadata_set")` then the walk of
    /// `obj_parse_modmetadata`.  No set at all is fine (no metadata).
    fn parse_modmetadata(
        &self,
        shstrndx: usize,
    ) -> Result<(Vec<ProvidedModule>, Vec<Dependency>), Error> {
        let (mut modules, mut deps) = (Vec::new(), Vec::new());
        let shstr = &self.shdrs[shstrndx];
        let names = self.bytes(shstr.sh_addr, shstr.sh_size)?;
        let set = self.shdrs.iter().find(|s| {
            s.sh_type == SHT_PROGBITS
                && s.sh_name != 0
                && s.sh_addr != 0
                && c_str(names, s.sh_name).as_deref() == Some("set_modmetadata_set")
        });
        let Some(set) = set else {
            return Ok((modules, deps));
        };
        let (mut p, stop) = (set.sh_addr, set.sh_addr + set.sh_size);
        while p < stop {
            let mut v = self.bytes(p, 8)?.to_vec();
            self.reloc_ptr(p, &mut v)?;
            let v = le_u64(&v, 0).unwrap_or(0);
            let mut md = self.bytes(v, 24)?.to_vec();
            self.reloc_ptr(v, &mut md)?;
            let md_type = le_i32(&md, 4).unwrap_or(0);
            let md_data = le_u64(&md, 8).unwrap_or(0);
            let md_cval = le_u64(&md, 16).unwrap_or(0);
            match md_type {
                MDT_DEPEND => {
                    let name = self.string(md_cval)?;
                    let d = self.bytes(md_data, 12)?;
                    let field = |i| le_i32(d, i).unwrap_or(0);
                    let version = ModDepend {
                        minimum: field(0),
                        preferred: field(4),
                        maximum: field(8),
                    };
                    deps.push(Dependency { name, version });
                }
                MDT_VERSION => {
                    let name = self.string(md_cval)?;
                    let version = le_i32(self.bytes(md_data, 4)?, 0).unwrap_or(0);
                    modules.push(ProvidedModule { name, version });
                }
                // MDT_MODULE, MDT_PNP_INFO and unknown types carry nothing
                // the loader needs.
                _ => {}
            }
            p += 8;
        }
        Ok((modules, deps))
    }

    /// `obj_reloc_ptr`: apply the module's own relocations that fall inside
    /// `val` (the bytes at `p`) to `val`, without touching the image.
    fn reloc_ptr(&self, p: u64, val: &mut [u8]) -> Result<(), Error> {
        let len = val.len() as u64;
        for rs in self
            .shdrs
            .iter()
            .filter(|s| matches!(s.sh_type, SHT_REL | SHT_RELA))
        {
            let Some(target) = self.shdrs.get(rs.sh_info as usize) else {
                continue;
            };
            let base = target.sh_addr;
            if base == 0 || rs.sh_addr == 0 || p < base || p + len > base + target.sh_size {
                continue;
            }
            let rela = rs.sh_type == SHT_RELA;
            let entsize = if rela { 24 } else { 16 };
            let relocs = self.bytes(rs.sh_addr, rs.sh_size - rs.sh_size % entsize)?;
            for r in relocs.chunks_exact(entsize as usize) {
                let (r_offset, r_info) = (le_u64(r, 0).unwrap_or(0), le_u64(r, 8).unwrap_or(0));
                let at = base.wrapping_add(r_offset);
                if at < p || at >= p + len {
                    continue;
                }
                let i = (at - p) as usize;
                let Some(word) = val.get_mut(i..i + 8) else {
                    return Err(self.err(ElfErrorKind::BadMetadata(at)));
                };
                let addend = if rela {
                    le_u64(r, 16).unwrap_or(0)
                } else {
                    le_u64(word, 0).unwrap_or(0)
                };
                let rtype = r_info as u32;
                let value = match rtype {
                    R_X86_64_64 => self.symaddr(r_info >> 32)?.wrapping_add(addend),
                    R_X86_64_RELATIVE => addend.wrapping_add(base),
                    R_X86_64_IRELATIVE => continue, // the kernel linker's job
                    _ => return Err(self.err(ElfErrorKind::Relocation(rtype))),
                };
                word.copy_from_slice(&value.to_le_bytes());
            }
        }
        Ok(())
    }

    /// `obj_symaddr`: the placed address of a symbol defined in a loaded
    /// section; anything else is an error, as in the loader.
    fn symaddr(&self, idx: u64) -> Result<u64, Error> {
        let st = &self.shdrs[self.symtab];
        let bad = || self.err(ElfErrorKind::Symbol(idx));
        if idx >= st.sh_size / SYM_SIZE {
            return Err(bad());
        }
        let sym = self.bytes(st.sh_addr + idx * SYM_SIZE, SYM_SIZE)?;
        let shndx = usize::from(u16::from_le_bytes([sym[6], sym[7]]));
        let value = le_u64(sym, 8).unwrap_or(0);
        match self.shdrs.get(shndx).map(|s| s.sh_addr) {
            Some(base) if shndx != 0 && base != 0 => Ok(base.wrapping_add(value)),
            _ => Err(bad()),
        }
    }
}
