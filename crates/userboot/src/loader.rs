//! The loaded-file list and the `load` machinery of `stand/common/module.c`:
//! module search (`module_path`, `linker.hints`, `.ko` extensions), KLD
//! loading with automatic `MODULE_DEPEND` dependencies, and raw files.

use libsa::{FileKind, FileSystem};

use crate::elf::{
    self, Chunk, Dependency, ElfError, ElfErrorKind, LoadedImage, ModDepend, ProvidedModule,
};
use crate::env::Env;
use crate::{Error, PAGE_SIZE, roundup};

/// Search path when `module_path` is unset.
pub const DEFAULT_MODULE_PATH: &str = "/boot/kernel;/boot/modules";
/// Extensions tried for a KLD name (`kld_ext_list`).
const KLD_EXTENSIONS: &[&str] = &[".ko", "", ".debug"];
/// `LINKER_HINTS_VERSION` and `LINKER_HINTS_MAX`.
const HINTS_VERSION: i32 = 1;
const HINTS_MAX: usize = 1 << 20;

/// Where the loader may put things: RAM below `lowmem`, and only the first
/// GiB, which is all the boot page tables map (§1.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemLimits {
    pub lowmem: u64,
    pub highmem: u64,
}

impl MemLimits {
    /// Everything must end below this.
    pub fn ceiling(&self) -> u64 {
        self.lowmem.min(elf::MAX_IMAGE)
    }

    /// `[addr, addr+len)` must fit below [`Self::ceiling`].
    pub fn check(&self, what: &str, addr: u64, len: u64) -> Result<(), Error> {
        let end = addr.saturating_add(len);
        if end > self.lowmem && self.lowmem <= elf::MAX_IMAGE {
            return Err(Error::MemoryTooSmall {
                what: what.to_owned(),
                end,
                limit: self.lowmem,
            });
        }
        if end > elf::MAX_IMAGE {
            return Err(Error::Beyond1G {
                what: what.to_owned(),
                end,
            });
        }
        Ok(())
    }
}

/// One entry of the loader's file list (`struct preloaded_file`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedFile {
    /// The path as found, e.g. `/boot/kernel/kernel`.
    pub name: String,
    /// `elf kernel`, `elf obj module`, or a raw file's type.
    pub ftype: String,
    pub args: Option<String>,
    pub addr: u64,
    pub size: u64,
    /// Metadata in creation order (the writer emits newest first).
    pub metadata: Vec<(u32, Vec<u8>)>,
    pub modules: Vec<ProvidedModule>,
    pub deps: Vec<Dependency>,
    /// The bytes to place in guest memory.
    pub chunks: Vec<Chunk>,
}

impl LoadedFile {
    fn from_image(name: &str, ftype: &str, img: LoadedImage) -> Self {
        LoadedFile {
            name: name.to_owned(),
            ftype: ftype.to_owned(),
            args: None,
            addr: img.addr,
            size: img.size,
            metadata: img.metadata,
            modules: img.modules,
            deps: img.deps,
            chunks: img.chunks,
        }
    }

    pub fn end(&self) -> u64 {
        self.addr + self.size
    }
}

/// `unargv`: the arguments joined with spaces, `None` for none.
pub fn unargv(args: &[&str]) -> Option<String> {
    (!args.is_empty()).then(|| args.join(" "))
}

/// Outcome of a load request that did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loaded {
    Done,
    /// Nothing to do; the warning text says why (`CMD_WARN` in the loader).
    AlreadyLoaded(String),
}

/// The loader's file list and load address.
#[derive(Debug)]
pub struct Loader {
    pub limits: MemLimits,
    files: Vec<LoadedFile>,
    /// Where the next file goes (`loadaddr` in `module.c`).
    loadaddr: u64,
}

/// What loading needs from the interpreter besides the file list.
pub struct Ctx<'a> {
    pub fs: &'a dyn FileSystem,
    pub env: &'a mut Env,
    /// Progress lines, exactly as the loader prints them.
    pub out: &'a mut dyn FnMut(&str),
}

impl std::fmt::Debug for Ctx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("fs", &self.fs.describe())
            .finish_non_exhaustive()
    }
}

impl Loader {
    pub fn new(limits: MemLimits) -> Self {
        Loader {
            limits,
            files: Vec::new(),
            loadaddr: 0,
        }
    }

    pub fn files(&self) -> &[LoadedFile] {
        &self.files
    }

    pub fn kernel(&self) -> Option<&LoadedFile> {
        self.files
            .iter()
            .find(|f| f.ftype == elf::kernel::KERNEL_TYPE)
    }

    pub fn kernel_mut(&mut self) -> Option<&mut LoadedFile> {
        self.files
            .iter_mut()
            .find(|f| f.ftype == elf::kernel::KERNEL_TYPE)
    }

    /// `unload`: forget every file.
    pub fn unload(&mut self, env: &mut Env) {
        self.files.clear();
        self.loadaddr = 0;
        env.unset("kernelname");
    }

    /// `file_findmodule(NULL, name, verinfo)`: a loaded module by name,
    /// the preferred version or the best one in range.
    pub fn find_module(&self, name: &str, ver: Option<&ModDepend>) -> Option<&ProvidedModule> {
        let mut best: Option<&ProvidedModule> = None;
        for f in &self.files {
            for m in f.modules.iter().filter(|m| m.name == name) {
                let Some(v) = ver else { return Some(m) };
                if m.version == v.preferred {
                    return Some(m);
                }
                if m.version >= v.minimum
                    && m.version <= v.maximum
                    && best.is_none_or(|b| m.version > b.version)
                {
                    best = Some(m);
                }
            }
            // The loader searches file by file and returns the first file's best.
            if best.is_some() {
                return best;
            }
        }
        None
    }

    /// `mod_load`: load the module `name` (by module name, searching
    /// `module_path` and `linker.hints`) unless something loaded provides it.
    pub fn mod_load(
        &mut self,
        cx: &mut Ctx,
        name: &str,
        ver: Option<&ModDepend>,
        args: &[&str],
    ) -> Result<Loaded, Error> {
        if has_path(name) {
            return self.mod_loadkld(cx, name, args);
        }
        if let Some(m) = self.find_module(name, ver) {
            return Ok(Loaded::AlreadyLoaded(format!(
                "warning: module '{}' already loaded",
                m.name
            )));
        }
        let path = search_module(cx.fs, cx.env, name, ver).ok_or_else(|| Error::NotFound {
            name: name.to_owned(),
        })?;
        self.mod_loadkld(cx, &path, args)
    }

    /// `mod_loadkld`: load a KLD (or the kernel) by file name, then its
    /// dependencies; if one fails the file and everything after it is dropped.
    pub fn mod_loadkld(
        &mut self,
        cx: &mut Ctx,
        name: &str,
        args: &[&str],
    ) -> Result<Loaded, Error> {
        let path =
            file_search(cx.fs, cx.env, name, KLD_EXTENSIONS).ok_or_else(|| Error::NotFound {
                name: name.to_owned(),
            })?;
        if self.files.iter().any(|f| f.name == path) {
            return Ok(Loaded::AlreadyLoaded(format!(
                "warning: KLD '{path}' already loaded"
            )));
        }
        let mut file = self.file_load(cx, &path)?;
        file.args = unargv(args);
        let saved = self.loadaddr;
        self.loadaddr = file.end();
        let index = self.files.len();
        self.files.push(file);
        if let Err(e) = self.load_dependencies(cx, index) {
            self.files.truncate(index);
            self.loadaddr = saved;
            return Err(e);
        }
        Ok(Loaded::Done)
    }

    /// `file_load`: dispatch on the ELF type.
    fn file_load(&mut self, cx: &mut Ctx, path: &str) -> Result<LoadedFile, Error> {
        let bytes = cx.fs.read_file(path)?;
        let hdr = elf::parse_header(path, &bytes)?;
        if elf::kernel::is_exec(&hdr) {
            if let Some(k) = self.kernel() {
                return Err(Error::KernelAlreadyLoaded {
                    path: k.name.clone(),
                });
            }
            let img = elf::kernel::load(path, &bytes, &self.limits)?;
            (cx.out)(&format!("{path} {}\n", img.message));
            cx.env.set("kernelname", path);
            return Ok(LoadedFile::from_image(path, elf::kernel::KERNEL_TYPE, img));
        }
        if hdr.e_type != goblin::elf64::header::ET_REL {
            return Err(ElfError::new(path, ElfErrorKind::WrongType(hdr.e_type)).into());
        }
        if self.kernel().is_none() {
            return Err(Error::NoKernel {
                path: path.to_owned(),
            });
        }
        let dest = roundup(self.loadaddr, PAGE_SIZE).unwrap_or(u64::MAX);
        let img = elf::obj::load(path, &bytes, dest, &self.limits)?;
        (cx.out)(&format!("{path} {}\n", img.message));
        Ok(LoadedFile::from_image(path, elf::obj::OBJ_TYPE, img))
    }

    /// `file_load_dependencies` for the file at `index`.
    fn load_dependencies(&mut self, cx: &mut Ctx, index: usize) -> Result<(), Error> {
        let (module, deps) = {
            let f = &self.files[index];
            (f.name.clone(), f.deps.clone())
        };
        for dep in &deps {
            if self.find_module(&dep.name, Some(&dep.version)).is_some() {
                continue;
            }
            (cx.out)(&format!("loading required module '{}'\n", dep.name));
            let wrap = |e: Error| Error::Dependency {
                module: module.clone(),
                dependency: dep.name.clone(),
                source: Box::new(e),
            };
            self.mod_load(cx, &dep.name, Some(&dep.version), &[])
                .map_err(wrap)?;
            // Found by file name but not providing the module (or not in a
            // usable version): this is also how a cycle without
            // MODULE_VERSION ends.
            if self.find_module(&dep.name, Some(&dep.version)).is_none() {
                return Err(Error::DependencyVersion {
                    module: module.clone(),
                    dependency: dep.name.clone(),
                });
            }
        }
        Ok(())
    }

    /// `file_loadraw`: copy a file verbatim right after the previous one
    /// (no alignment), typed `ftype`, without arguments or metadata.
    pub fn load_raw(&mut self, cx: &mut Ctx, name: &str, ftype: &str) -> Result<Loaded, Error> {
        if self
            .files
            .iter()
            .any(|f| f.name == name && f.ftype == ftype)
        {
            return Ok(Loaded::AlreadyLoaded(format!(
                "warning: file '{name}' already loaded"
            )));
        }
        if self.files.is_empty() {
            return Err(Error::NoKernel {
                path: name.to_owned(),
            });
        }
        let path = file_search(cx.fs, cx.env, name, &[""]).ok_or_else(|| Error::NotFound {
            name: name.to_owned(),
        })?;
        let data = cx.fs.read_file(&path)?;
        self.limits.check(&path, self.loadaddr, data.len() as u64)?;
        // `%#jx`: a zero size prints as plain `0`.
        let size = data.len() as u64;
        let size_text = if size == 0 {
            "0".to_owned()
        } else {
            format!("{size:#x}")
        };
        (cx.out)(&format!("{path} size={size_text}\n"));
        let addr = self.loadaddr;
        self.files.push(LoadedFile {
            name: path,
            ftype: ftype.to_owned(),
            args: None,
            addr,
            size,
            metadata: Vec::new(),
            modules: Vec::new(),
            deps: Vec::new(),
            chunks: vec![Chunk { addr, data }],
        });
        self.loadaddr = addr + size;
        Ok(Loaded::Done)
    }
}

/// `file_havepath`: a `/` anywhere or a device prefix (`disk0p2:`).
fn has_path(name: &str) -> bool {
    name.contains('/') || device_prefix_len(name).is_some()
}

/// Length of a `dev:` prefix, if `name` has one.
fn device_prefix_len(name: &str) -> Option<usize> {
    let colon = name.find(':')?;
    (colon > 0 && !name[..colon].contains('/')).then_some(colon + 1)
}

/// A path in our single file system: a device prefix names the boot device
/// (the only one we have), so it is dropped.
fn fs_path(name: &str) -> String {
    let rest = &name[device_prefix_len(name).unwrap_or(0)..];
    if rest.starts_with('/') {
        rest.to_owned()
    } else {
        format!("/{rest}")
    }
}

fn is_regular(fs: &dyn FileSystem, path: &str) -> bool {
    fs.stat(path).is_ok_and(|s| s.kind == FileKind::File)
}

/// The directories of `module_path` (`moduledir_rebuild`).
fn module_dirs(env: &Env) -> Vec<String> {
    env.get("module_path")
        .unwrap_or(DEFAULT_MODULE_PATH)
        .split(';')
        .map(|d| d.trim_end_matches('/'))
        .filter(|d| !d.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `file_lookup`: `dir/name` plus the first extension naming a regular file.
fn file_lookup(fs: &dyn FileSystem, dir: &str, name: &str, exts: &[&str]) -> Option<String> {
    exts.iter()
        .map(|ext| format!("{dir}/{name}{ext}"))
        .find(|p| is_regular(fs, p))
}

/// `file_search`: a qualified name is used as is if it exists; otherwise
/// each `module_path` directory is tried with each extension.
pub fn file_search(fs: &dyn FileSystem, env: &Env, name: &str, exts: &[&str]) -> Option<String> {
    if name.is_empty() {
        return None;
    }
    if has_path(name) {
        let p = fs_path(name);
        return fs.stat(&p).is_ok().then_some(p);
    }
    module_dirs(env)
        .iter()
        .find_map(|d| file_lookup(fs, d, name, exts))
}

/// `mod_searchmodule`: per directory, `linker.hints` first, then
/// `<name>.ko` and friends.  A file named by the hints is not second-guessed.
pub fn search_module(
    fs: &dyn FileSystem,
    env: &Env,
    name: &str,
    ver: Option<&ModDepend>,
) -> Option<String> {
    module_dirs(env).iter().find_map(|dir| {
        let hints = fs.read_file(&format!("{dir}/linker.hints")).ok();
        match hints.as_deref().and_then(|h| search_hints(h, name, ver)) {
            Some(file) => file_lookup(fs, dir, &file, &[""]),
            None => file_lookup(fs, dir, name, KLD_EXTENSIONS),
        }
    })
}

/// `mod_search_hints` over a `linker.hints` file: the file providing the
/// preferred version (or any version if none is asked for), else the best
/// version in range.  `None` when the hints offer nothing usable.
fn search_hints(data: &[u8], name: &str, ver: Option<&ModDepend>) -> Option<String> {
    if data.len() > HINTS_MAX || data.len() < 4 || elf::le_i32(data, 0) != Some(HINTS_VERSION) {
        return None;
    }
    let hints = &data[4..];
    let mut best: Option<(i32, String)> = None;
    let mut rec = 0usize;
    while rec + 8 <= hints.len() {
        let Ok(reclen) = usize::try_from(elf::le_i32(hints, rec)?) else {
            break;
        };
        if elf::le_i32(hints, rec + 4)? == elf::MDT_VERSION {
            if let Some((version, file)) = hint_record(hints, rec + 8, name) {
                match ver {
                    None => return Some(file),
                    Some(v) if v.preferred == version => return Some(file),
                    Some(v)
                        if version >= v.minimum
                            && version <= v.maximum
                            && best.as_ref().is_none_or(|b| version > b.0) =>
                    {
                        best = Some((version, file));
                    }
                    _ => {}
                }
            }
        }
        rec = rec.checked_add(reclen)?.checked_add(4)?;
    }
    best.map(|(_, file)| file)
}

/// An `MDT_VERSION` hint payload at `cp` for module `name`:
/// `(version, file)`.  Alignment is relative to the data after the header
/// int, as in the loader.
fn hint_record(hints: &[u8], mut cp: usize, name: &str) -> Option<(i32, String)> {
    let clen = usize::from(*hints.get(cp)?);
    cp += 1;
    if hints.get(cp..cp + clen)? != name.as_bytes() {
        return None;
    }
    cp = (cp + clen).next_multiple_of(4);
    let version = elf::le_i32(hints, cp)?;
    cp += 4;
    let flen = usize::from(*hints.get(cp)?);
    let file = String::from_utf8_lossy(hints.get(cp + 1..cp + 1 + flen)?).into_owned();
    Some((version, file))
}
