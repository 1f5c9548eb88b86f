//! Test fixtures: an in-memory file system, sparse guest memory, a capturing
//! console, and ELF files built with the host's gcc/ld.
#![allow(dead_code)] // each test binary uses a different subset

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Command;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};

use libsa::{DirEntry, Error, FileKind, FileSystem, Stat};
use userboot::{BootParams, Console, GuestMemError, GuestPhys, Interp};

pub const MIB: u64 = 1 << 20;

/// path → contents; directories are implied by the paths.
#[derive(Debug, Default, Clone)]
pub struct MemFs {
    pub files: BTreeMap<String, Vec<u8>>,
}

impl MemFs {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn add(&mut self, path: &str, data: impl Into<Vec<u8>>) -> &mut Self {
        self.files.insert(path.to_owned(), data.into());
        self
    }
    fn is_dir(&self, path: &str) -> bool {
        let prefix = if path.ends_with('/') {
            path.to_owned()
        } else {
            format!("{path}/")
        };
        self.files.keys().any(|k| k.starts_with(&prefix))
    }
}

impl FileSystem for MemFs {
    fn stat(&self, path: &str) -> Result<Stat, Error> {
        if let Some(d) = self.files.get(path) {
            return Ok(Stat {
                kind: FileKind::File,
                size: d.len() as u64,
            });
        }
        if self.is_dir(path) {
            return Ok(Stat {
                kind: FileKind::Dir,
                size: 512,
            });
        }
        Err(Error::NotFound {
            path: path.to_owned(),
        })
    }
    fn read_file(&self, path: &str) -> Result<Vec<u8>, Error> {
        if let Some(d) = self.files.get(path) {
            return Ok(d.clone());
        }
        if self.is_dir(path) {
            return Err(Error::IsDir {
                path: path.to_owned(),
            });
        }
        Err(Error::NotFound {
            path: path.to_owned(),
        })
    }
    fn read_dir(&self, path: &str) -> Result<Vec<DirEntry>, Error> {
        let prefix = if path.ends_with('/') {
            path.to_owned()
        } else {
            format!("{path}/")
        };
        let mut out: BTreeMap<String, FileKind> = BTreeMap::new();
        for k in self.files.keys().filter(|k| k.starts_with(&prefix)) {
            let rest = &k[prefix.len()..];
            match rest.split_once('/') {
                Some((d, _)) => out.insert(d.to_owned(), FileKind::Dir),
                None => out.insert(rest.to_owned(), FileKind::File),
            };
        }
        if out.is_empty() {
            return Err(Error::NotFound {
                path: path.to_owned(),
            });
        }
        Ok(out
            .into_iter()
            .map(|(name, kind)| DirEntry { name, kind })
            .collect())
    }
    fn describe(&self) -> String {
        "memfs".into()
    }
}

/// Guest RAM `[0, lowmem)` and `[4 GiB, 4 GiB + highmem)`, stored by page;
/// unwritten bytes read as `fill`.
#[derive(Debug)]
pub struct SparseMem {
    pub lowmem: u64,
    pub highmem: u64,
    pub fill: u8,
    pages: HashMap<u64, Vec<u8>>,
}

impl SparseMem {
    pub fn new(lowmem: u64, highmem: u64) -> Self {
        SparseMem {
            lowmem,
            highmem,
            fill: 0xAA,
            pages: HashMap::new(),
        }
    }
    fn ok(&self, gpa: u64, len: u64) -> bool {
        let end = gpa.checked_add(len);
        end.is_some_and(|e| e <= self.lowmem)
            || (gpa >= 1 << 32 && end.is_some_and(|e| e <= (1 << 32) + self.highmem))
    }
    pub fn read(&self, gpa: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.copyout(gpa, &mut v).expect("read inside RAM");
        v
    }
    pub fn u32(&self, gpa: u64) -> u32 {
        u32::from_le_bytes(self.read(gpa, 4).try_into().unwrap())
    }
    pub fn u64(&self, gpa: u64) -> u64 {
        u64::from_le_bytes(self.read(gpa, 8).try_into().unwrap())
    }
}

impl GuestPhys for SparseMem {
    fn lowmem(&self) -> u64 {
        self.lowmem
    }
    fn highmem(&self) -> u64 {
        self.highmem
    }
    fn copyin(&mut self, gpa: u64, data: &[u8]) -> Result<(), GuestMemError> {
        if !self.ok(gpa, data.len() as u64) {
            return Err(GuestMemError {
                gpa,
                len: data.len() as u64,
            });
        }
        for (i, &b) in data.iter().enumerate() {
            let a = gpa + i as u64;
            let fill = self.fill;
            self.pages
                .entry(a >> 12)
                .or_insert_with(|| vec![fill; 4096])[(a & 0xfff) as usize] = b;
        }
        Ok(())
    }
    fn copyout(&self, gpa: u64, data: &mut [u8]) -> Result<(), GuestMemError> {
        if !self.ok(gpa, data.len() as u64) {
            return Err(GuestMemError {
                gpa,
                len: data.len() as u64,
            });
        }
        for (i, b) in data.iter_mut().enumerate() {
            let a = gpa + i as u64;
            *b = self
                .pages
                .get(&(a >> 12))
                .map_or(self.fill, |p| p[(a & 0xfff) as usize]);
        }
        Ok(())
    }
}

/// A console whose output the test can read.
#[derive(Debug, Clone, Default)]
pub struct Capture(pub Rc<RefCell<String>>);

impl Console for Capture {
    fn write_str(&mut self, s: &str) {
        self.0.borrow_mut().push_str(s);
    }
}

impl Capture {
    pub fn text(&self) -> String {
        self.0.borrow().clone()
    }
}

pub fn params(lowmem: u64, highmem: u64) -> BootParams {
    BootParams {
        lowmem,
        highmem,
        currdev: "disk0p2:".into(),
        user_env: vec![],
    }
}

pub fn interp<'a>(fs: &'a MemFs, lowmem: u64, highmem: u64) -> (Interp<'a>, Capture) {
    let cap = Capture::default();
    (
        Interp::new(fs, Box::new(cap.clone()), params(lowmem, highmem)),
        cap,
    )
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

fn scratch() -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "userboot-test-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn run(cmd: &mut Command) {
    let prog = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run `{prog}` ({e}); these tests need gcc and binutils installed")
    });
    assert!(
        out.status.success(),
        "`{prog}` failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A minimal amd64 kernel linked at KERNBASE + 2 MiB: text, data with a
/// known quad, `.ctors`, `bss` bytes of BSS, and a symbol table.
pub fn build_kernel(bss: u64) -> Vec<u8> {
    let d = scratch();
    std::fs::write(
        d.join("k.S"),
        format!(
            ".text\n.globl btext\nbtext: hlt\n jmp btext\n.section .ctors,\"aw\"\n.quad 0\n.data\n.globl kdata\nkdata: .quad 0x1122334455667788\n.bss\n.globl kbss\nkbss: .space {bss:#x}\n"
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("k.ld"),
        "ENTRY(btext)\nSECTIONS {\n . = 0xffffffff80200000 + SIZEOF_HEADERS;\n .text : { *(.text) }\n . = ALIGN(0x1000);\n .data : { *(.data) }\n .ctors : { *(.ctors) }\n .bss : { *(.bss) }\n}\n",
    )
    .unwrap();
    run(Command::new("gcc")
        .current_dir(&d)
        .args(["-c", "k.S", "-o", "k.o"]));
    run(Command::new("ld").current_dir(&d).args([
        "-m",
        "elf_x86_64",
        "-T",
        "k.ld",
        "-z",
        "max-page-size=0x1000",
        "-z",
        "noexecstack",
        "--build-id=none",
        "-o",
        "kernel",
        "k.o",
    ]));
    let k = std::fs::read(d.join("kernel")).unwrap();
    let _ = std::fs::remove_dir_all(&d);
    k
}

/// A `.ko` (ET_REL) whose `set_modmetadata_set` holds `MODULE_VERSION`
/// entries for `versions` and `MODULE_DEPEND` entries `(name, min, pref, max)`
/// for `deps`, in that order (`-fno-toplevel-reorder` keeps source order in
/// the linker set), the way `<sys/module.h>` lays them out.
pub fn build_ko(versions: &[(&str, i32)], deps: &[(&str, i32, i32, i32)]) -> Vec<u8> {
    let mut src = String::from(
        "struct mod_depend { int min, pref, max; };\nstruct mod_version { int v; };\nstruct mod_metadata { int md_version; int md_type; const void *md_data; const char *md_cval; };\n#define SET(sym) static void const * const __set_##sym __attribute__((section(\"set_modmetadata_set\"), used)) = &sym\n",
    );
    for (i, (name, v)) in versions.iter().enumerate() {
        src.push_str(&format!(
            "static struct mod_version v{i} = {{ {v} }};\nstatic struct mod_metadata mv{i} = {{ 1, 3, &v{i}, \"{name}\" }};\nSET(mv{i});\n"
        ));
    }
    for (i, (name, min, pref, max)) in deps.iter().enumerate() {
        src.push_str(&format!(
            "static struct mod_depend d{i} = {{ {min}, {pref}, {max} }};\nstatic struct mod_metadata md{i} = {{ 1, 1, &d{i}, \"{name}\" }};\nSET(md{i});\n"
        ));
    }
    src.push_str("int mod_data = 42; int mod_bss[100];\nint mod_func(void) { return mod_data + mod_bss[3]; }\n");
    let d = scratch();
    std::fs::write(d.join("m.c"), src).unwrap();
    run(Command::new("gcc").current_dir(&d).args([
        "-c",
        "-O2",
        "-fno-toplevel-reorder",
        "-fno-pic",
        "-mcmodel=kernel",
        "-ffreestanding",
        "-fno-asynchronous-unwind-tables",
        "m.c",
        "-o",
        "m.o",
    ]));
    let o = std::fs::read(d.join("m.o")).unwrap();
    let _ = std::fs::remove_dir_all(&d);
    o
}

/// Little-endian field readers for checking ELF files in tests.
pub fn rd16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
}
pub fn rd32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}
pub fn rd64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

/// A kernel with `_DYNAMIC` (sysv hash, exported symbols) whose
/// `set_modmetadata_set` declares `MODULE_VERSION(pci, 7)`, the way a
/// FreeBSD kernel carries its compiled-in modules.
pub fn build_dynamic_kernel() -> Vec<u8> {
    let d = scratch();
    std::fs::write(
        d.join("k.c"),
        "struct mod_version { int v; };\nstruct mod_metadata { int md_version; int md_type; const void *md_data; const char *md_cval; };\nstatic struct mod_version v0 = { 7 };\nstatic struct mod_metadata mv0 = { 1, 3, &v0, \"pci\" };\nstatic void const * const __set_mv0 __attribute__((section(\"set_modmetadata_set\"), used)) = &mv0;\nvoid btext(void) { for (;;) __asm__(\"hlt\"); }\n",
    )
    .unwrap();
    std::fs::write(d.join("d.c"), "void dummy(void) {}\n").unwrap();
    std::fs::write(
        d.join("k.ld"),
        "ENTRY(btext)\nSECTIONS {\n . = 0xffffffff80200000 + SIZEOF_HEADERS;\n .text : { *(.text) }\n .hash : { *(.hash) }\n .dynsym : { *(.dynsym) }\n .dynstr : { *(.dynstr) }\n . = ALIGN(0x1000);\n .data : { *(.data) }\n set_modmetadata_set : { __start_set_modmetadata_set = .; *(set_modmetadata_set) __stop_set_modmetadata_set = .; }\n .dynamic : { *(.dynamic) }\n .bss : { *(.bss) }\n}\n",
    )
    .unwrap();
    run(Command::new("gcc").current_dir(&d).args([
        "-c",
        "-O2",
        "-fno-pic",
        "-mcmodel=kernel",
        "-ffreestanding",
        "-fno-asynchronous-unwind-tables",
        "k.c",
        "-o",
        "k.o",
    ]));
    run(Command::new("gcc").current_dir(&d).args([
        "-shared",
        "-fPIC",
        "-nostdlib",
        "d.c",
        "-o",
        "libd.so",
    ]));
    run(Command::new("ld").current_dir(&d).args([
        "-m",
        "elf_x86_64",
        "-T",
        "k.ld",
        "-z",
        "max-page-size=0x1000",
        "--export-dynamic",
        "--hash-style=sysv",
        "-Bdynamic",
        "--no-as-needed",
        "-o",
        "kernel",
        "k.o",
        "libd.so",
    ]));
    let k = std::fs::read(d.join("kernel")).unwrap();
    let _ = std::fs::remove_dir_all(&d);
    k
}
