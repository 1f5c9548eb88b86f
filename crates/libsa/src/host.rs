//! `bhyveload -h DIR`: the loader's files come from a host directory
//! (userboot's `host.c`). Paths are resolved under DIR; neither `..` nor a
//! symlink may lead outside it.

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use crate::ufs::MAXPATHLEN;
use crate::{DirEntry, Error, FileKind, FileSystem, Stat};

/// A host directory presented as the loader's file system.
#[derive(Debug, Clone)]
pub struct HostFs {
    root: PathBuf,
}

impl HostFs {
    /// Use `dir` (which must exist and be a directory) as `/`.
    pub fn new(dir: impl AsRef<Path>) -> Result<HostFs, Error> {
        let dir = dir.as_ref();
        let root = fs::canonicalize(dir).map_err(|e| map_io(e, &dir.display().to_string()))?;
        if !root.is_dir() {
            return Err(Error::NotDir {
                path: dir.display().to_string(),
            });
        }
        Ok(HostFs { root })
    }

    /// The host path for `path`, with symlinks resolved, refusing anything
    /// that ends up outside the root.
    fn resolve(&self, path: &str) -> Result<PathBuf, Error> {
        if path.len() > MAXPATHLEN {
            return Err(Error::NameTooLong { path: path.into() });
        }
        // `..` is applied lexically and stops at the root, like `/..` = `/`.
        let mut rel = PathBuf::new();
        for c in Path::new(path).components() {
            match c {
                Component::Normal(n) => rel.push(n),
                Component::ParentDir => {
                    rel.pop();
                }
                Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            }
        }
        let joined = self.root.join(&rel);
        let real = fs::canonicalize(&joined).map_err(|e| map_io(e, path))?;
        if !real.starts_with(&self.root) {
            return Err(Error::Io {
                what: path.into(),
                source: io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "resolves to {} outside {}",
                        real.display(),
                        self.root.display()
                    ),
                ),
            });
        }
        Ok(real)
    }
}

/// Map host errors onto the crate's variants where one fits.
fn map_io(e: io::Error, path: &str) -> Error {
    let path = path.to_string();
    match e.kind() {
        io::ErrorKind::NotFound => Error::NotFound { path },
        io::ErrorKind::NotADirectory => Error::NotDir { path },
        io::ErrorKind::IsADirectory => Error::IsDir { path },
        _ if e.raw_os_error() == Some(libc::ENAMETOOLONG) => Error::NameTooLong { path },
        _ if e.raw_os_error() == Some(libc::ELOOP) => Error::SymlinkLoop { path },
        _ => Error::Io {
            what: path,
            source: e,
        },
    }
}

fn kind_of(ft: fs::FileType) -> FileKind {
    if ft.is_dir() {
        FileKind::Dir
    } else if ft.is_file() {
        FileKind::File
    } else if ft.is_symlink() {
        FileKind::Symlink
    } else {
        FileKind::Other
    }
}

impl FileSystem for HostFs {
    fn stat(&self, path: &str) -> Result<Stat, Error> {
        let real = self.resolve(path)?;
        let md = fs::metadata(&real).map_err(|e| map_io(e, path))?;
        Ok(Stat {
            kind: kind_of(md.file_type()),
            size: md.len(),
        })
    }

    fn read_file(&self, path: &str) -> Result<Vec<u8>, Error> {
        let real = self.resolve(path)?;
        let md = fs::metadata(&real).map_err(|e| map_io(e, path))?;
        if md.is_dir() {
            return Err(Error::IsDir { path: path.into() });
        }
        // FIFOs and devices could block or never end.
        if !md.is_file() {
            return Err(Error::Io {
                what: path.into(),
                source: io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"),
            });
        }
        fs::read(&real).map_err(|e| map_io(e, path))
    }

    /// Entries other than `.` and `..`, sorted by name (host order is
    /// arbitrary).
    fn read_dir(&self, path: &str) -> Result<Vec<DirEntry>, Error> {
        let real = self.resolve(path)?;
        let rd = fs::read_dir(&real).map_err(|e| map_io(e, path))?;
        let mut out = Vec::new();
        for ent in rd {
            let ent = ent.map_err(|e| map_io(e, path))?;
            let kind = ent.file_type().map(kind_of).map_err(|e| map_io(e, path))?;
            out.push(DirEntry {
                name: ent.file_name().to_string_lossy().into_owned(),
                kind,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn describe(&self) -> String {
        format!("host0:{}", self.root.display())
    }
}
