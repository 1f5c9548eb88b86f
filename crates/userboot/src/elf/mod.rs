//! ELF loading: the amd64 kernel (`load_elf.c`, ET_EXEC) and `.ko` modules
//! (`load_elf_obj.c`, ET_REL).  Both produce a [`LoadedImage`] held in host
//! memory until `boot` writes it to the guest, so loading needs no VM.
//!
//! Every offset, count and size read from a file is checked before use:
//! hostile input gives an [`ElfError`], never a panic or a huge allocation.

pub mod kernel;
pub mod obj;

use goblin::container::{Container, Ctx, Endian};
use goblin::elf::header::{
    EI_CLASS, EI_DATA, EI_VERSION, ELFCLASS64, ELFDATA2LSB, ELFMAG, EM_X86_64, EV_CURRENT, SELFMAG,
};
use goblin::elf::{ProgramHeader, SectionHeader};
use goblin::elf64::header::{Header, SIZEOF_EHDR};

/// Loader metadata subtypes (`sys/sys/linker.h`, §3.2).
pub const MODINFOMD_ELFHDR: u32 = 0x0002;
pub const MODINFOMD_SSYM: u32 = 0x0003;
pub const MODINFOMD_ESYM: u32 = 0x0004;
pub const MODINFOMD_DYNAMIC: u32 = 0x0005;
pub const MODINFOMD_SHDR: u32 = 0x0009;
pub const MODINFOMD_CTORS_ADDR: u32 = 0x000a;
pub const MODINFOMD_CTORS_SIZE: u32 = 0x000b;

/// `struct mod_metadata` types (`sys/sys/module.h`).
pub const MDT_DEPEND: i32 = 1;
pub const MDT_MODULE: i32 = 2;
pub const MDT_VERSION: i32 = 3;
pub const MDT_PNP_INFO: i32 = 4;

/// Nothing the loader places may be larger than the mapped first GiB.
pub const MAX_IMAGE: u64 = 1 << 30;

pub(crate) const SHDR_SIZE: usize = 64;
pub(crate) const SYM_SIZE: u64 = 24;

/// Why a file could not be loaded; always names the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {kind}")]
pub struct ElfError {
    pub path: String,
    pub kind: ElfErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElfErrorKind {
    #[error("not an ELF file")]
    NotElf,
    #[error("truncated ELF file ({0})")]
    Truncated(&'static str),
    #[error("not an ELF64 little-endian x86-64 file ({0})")]
    WrongArch(String),
    #[error("unsupported ELF type {0} (need ET_EXEC kernel or ET_REL module)")]
    WrongType(u16),
    #[error("not a kernel (entry point {0:#x} is in the first page)")]
    NotAKernel(u64),
    #[error("program header not within first page")]
    PhdrsNotInFirstPage,
    #[error("no loadable segments")]
    NoSegments,
    #[error("{0}")]
    Malformed(String),
    #[error("image too large ({0:#x} bytes)")]
    TooLarge(u64),
    #[error("file has no valid symbol table")]
    NoSymtab,
    #[error("file has invalid symbol strings")]
    BadSymStrings,
    #[error("file has no section names")]
    NoSectionNames,
    #[error("unhandled relocation type {0}")]
    Relocation(u32),
    #[error("relocation against an undefined or unplaced symbol {0}")]
    Symbol(u64),
    #[error("module metadata points outside the module ({0:#x})")]
    BadMetadata(u64),
}

impl ElfError {
    pub(crate) fn new(path: &str, kind: ElfErrorKind) -> Self {
        ElfError {
            path: path.to_owned(),
            kind,
        }
    }
}

/// A contiguous piece of the loaded image at a guest-physical address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub addr: u64,
    pub data: Vec<u8>,
}

/// `struct mod_depend`: acceptable versions of a required module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModDepend {
    pub minimum: i32,
    pub preferred: i32,
    pub maximum: i32,
}

/// One `MODULE_DEPEND` of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    pub name: String,
    pub version: ModDepend,
}

/// One `MODULE_VERSION` a file provides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvidedModule {
    pub name: String,
    pub version: i32,
}

/// What an ELF loader produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedImage {
    pub addr: u64,
    pub size: u64,
    pub chunks: Vec<Chunk>,
    /// `(MODINFOMD_* type, payload)` in creation order; the metadata writer
    /// emits them newest first, as `file_addmetadata` prepends.
    pub metadata: Vec<(u32, Vec<u8>)>,
    pub modules: Vec<ProvidedModule>,
    /// In the order the loader tries them (newest DEPLIST first).
    pub deps: Vec<Dependency>,
    /// The line printed while loading (without the file name).
    pub message: String,
}

pub(crate) fn ctx() -> Ctx {
    Ctx::new(Container::Big, Endian::Little)
}

/// Parse and check the ELF header (`load_elf_header`'s checks).
pub(crate) fn parse_header(path: &str, bytes: &[u8]) -> Result<Header, ElfError> {
    let err = |k| ElfError::new(path, k);
    if bytes.len() < SELFMAG || &bytes[..SELFMAG] != ELFMAG {
        return Err(err(ElfErrorKind::NotElf));
    }
    if bytes.len() <= SIZEOF_EHDR {
        return Err(err(ElfErrorKind::Truncated("ELF header")));
    }
    let hdr = Header::parse(bytes).map_err(|_| err(ElfErrorKind::Truncated("ELF header")))?;
    let why = if hdr.e_ident[EI_CLASS] != ELFCLASS64 {
        Some(format!("class {}", hdr.e_ident[EI_CLASS]))
    } else if hdr.e_ident[EI_DATA] != ELFDATA2LSB {
        Some("big-endian".to_owned())
    } else if hdr.e_ident[EI_VERSION] != EV_CURRENT || hdr.e_version != u32::from(EV_CURRENT) {
        Some(format!("version {}", hdr.e_version))
    } else if hdr.e_machine != EM_X86_64 {
        Some(format!("machine {}", hdr.e_machine))
    } else {
        None
    };
    match why {
        Some(w) => Err(err(ElfErrorKind::WrongArch(w))),
        None => Ok(hdr),
    }
}

/// `e_phnum` program headers at `e_phoff`, which must lie in the first
/// `limit` bytes of the file.
pub(crate) fn program_headers(
    path: &str,
    bytes: &[u8],
    hdr: &Header,
    limit: usize,
) -> Result<Vec<ProgramHeader>, ElfError> {
    let count = usize::from(hdr.e_phnum);
    let end = hdr.e_phoff.checked_add(count as u64 * 56);
    if end.is_none_or(|e| e > limit.min(bytes.len()) as u64) {
        return Err(ElfError::new(path, ElfErrorKind::PhdrsNotInFirstPage));
    }
    if count == 0 {
        return Ok(Vec::new());
    }
    if usize::from(hdr.e_phentsize) != 56 {
        return Err(ElfError::new(
            path,
            ElfErrorKind::Malformed(format!("e_phentsize {}", hdr.e_phentsize)),
        ));
    }
    ProgramHeader::parse(bytes, hdr.e_phoff as usize, count, ctx())
        .map_err(|_| ElfError::new(path, ElfErrorKind::Truncated("program headers")))
}

/// The raw section header table, or `None` if it is not entirely in the file.
pub(crate) fn section_table<'a>(bytes: &'a [u8], hdr: &Header) -> Option<&'a [u8]> {
    let len = usize::from(hdr.e_shnum) * usize::from(hdr.e_shentsize);
    let start = usize::try_from(hdr.e_shoff).ok()?;
    bytes.get(start..start.checked_add(len)?)
}

/// Section headers parsed from a raw table of 64-byte entries.
pub(crate) fn section_headers(path: &str, table: &[u8]) -> Result<Vec<SectionHeader>, ElfError> {
    let count = table.len() / SHDR_SIZE;
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        // `parse_from` on one entry avoids goblin's shnum==0 indirection.
        let mut v =
            SectionHeader::parse_from(&table[i * SHDR_SIZE..(i + 1) * SHDR_SIZE], 0, 1, ctx())
                .map_err(|_| ElfError::new(path, ElfErrorKind::Truncated("section headers")))?;
        out.append(&mut v);
    }
    Ok(out)
}

/// `len` bytes at `off` in `bytes`, if they are there.
pub(crate) fn slice(bytes: &[u8], off: u64, len: u64) -> Option<&[u8]> {
    let start = usize::try_from(off).ok()?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    bytes.get(start..end)
}

pub(crate) fn le_u32(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(off..off.checked_add(4)?)?.try_into().ok()?,
    ))
}

pub(crate) fn le_i32(b: &[u8], off: usize) -> Option<i32> {
    le_u32(b, off).map(|v| v as i32)
}

pub(crate) fn le_u64(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(off..off.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// A NUL-terminated string at `off` (lossy UTF-8); `None` if unterminated.
pub(crate) fn c_str(b: &[u8], off: usize) -> Option<String> {
    let rest = b.get(off..)?;
    let len = rest.iter().position(|&c| c == 0)?;
    Some(String::from_utf8_lossy(&rest[..len]).into_owned())
}

/// A section's name from the section name string table.
pub(crate) fn section_name(
    bytes: &[u8],
    shdrs: &[SectionHeader],
    shstrndx: usize,
    sh_name: usize,
) -> Option<String> {
    let strtab = shdrs.get(shstrndx)?;
    let data = slice(bytes, strtab.sh_offset, strtab.sh_size)?;
    c_str(data, sh_name)
}

/// `fake_modname`: the file's base name without its extension.
pub(crate) fn fake_modname(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    match path.rfind('.') {
        Some(0) => "bad".to_owned(),
        Some(dot) if dot >= path.len() - base.len() => {
            base[..base.len() - (path.len() - dot)].to_owned()
        }
        // A dot only in a directory name: the C code would take a bogus
        // range; the base name is the sensible reading.
        _ => base.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modname() {
        assert_eq!(fake_modname("/boot/kernel/kernel"), "kernel");
        assert_eq!(fake_modname("/boot/kernel/if_em.ko"), "if_em");
        assert_eq!(fake_modname("kernel"), "kernel");
        assert_eq!(fake_modname(".x"), "bad");
        assert_eq!(fake_modname("/boot/kernel.old/kernel"), "kernel");
    }
}
