//! `--kernel FILE`: boot a FreeBSD ELF kernel from a host file, without a
//! disk image. The loader still reads through a file system, so this one
//! shows the kernel as `/boot/kernel/kernel` and each `--module` as
//! `/boot/modules/NAME`; any other path comes from the `-h` directory if one
//! was given (loader.conf, device.hints, more modules).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use libsa::{DirEntry, Error, FileKind, FileSystem, HostFs, Stat};

#[derive(Debug)]
pub struct HostKernelFs {
    /// Guest path -> host file.
    files: BTreeMap<String, PathBuf>,
    host: Option<HostFs>,
    kernel: PathBuf,
}

const KERNEL_DIR: &str = "/boot/kernel";
const MODULE_DIR: &str = "/boot/modules";

impl HostKernelFs {
    pub fn new(kernel: &str, modules: &[String], host: Option<&str>) -> Result<Self, String> {
        let check = |p: &str| -> Result<PathBuf, String> {
            let m = std::fs::metadata(p).map_err(|e| format!("{p}: {e}"))?;
            if !m.is_file() {
                return Err(format!("{p}: not a regular file"));
            }
            Ok(PathBuf::from(p))
        };
        let mut files = BTreeMap::new();
        files.insert(format!("{KERNEL_DIR}/kernel"), check(kernel)?);
        for m in modules {
            let name = Path::new(m)
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| format!("{m}: not a file name"))?;
            files.insert(format!("{MODULE_DIR}/{name}"), check(m)?);
        }
        let host = host
            .map(HostFs::new)
            .transpose()
            .map_err(|e| e.to_string())?;
        Ok(HostKernelFs {
            files,
            host,
            kernel: PathBuf::from(kernel),
        })
    }

    fn io(path: &str, e: std::io::Error) -> Error {
        Error::Io {
            what: path.to_string(),
            source: e,
        }
    }

    /// Entries we synthesise directly under `dir`.
    fn own_entries(&self, dir: &str) -> Vec<DirEntry> {
        let prefix = format!("{}/", dir.trim_end_matches('/'));
        let mut v: Vec<DirEntry> = self
            .files
            .keys()
            .filter_map(|p| p.strip_prefix(&prefix))
            .filter(|rest| !rest.contains('/'))
            .map(|n| DirEntry {
                name: n.to_string(),
                kind: FileKind::File,
            })
            .collect();
        for d in [KERNEL_DIR, MODULE_DIR] {
            if let Some(rest) = d.strip_prefix(&prefix) {
                if !rest.contains('/') && self.files.keys().any(|p| p.starts_with(d)) {
                    v.push(DirEntry {
                        name: rest.to_string(),
                        kind: FileKind::Dir,
                    });
                }
            }
        }
        v
    }

    fn is_own_dir(&self, path: &str) -> bool {
        let p = path.trim_end_matches('/');
        let p = if p.is_empty() { "/" } else { p };
        p == "/" || p == "/boot" || self.files.keys().any(|f| f.starts_with(&format!("{p}/")))
    }
}

impl FileSystem for HostKernelFs {
    fn stat(&self, path: &str) -> Result<Stat, Error> {
        if let Some(h) = self.files.get(path) {
            let m = std::fs::metadata(h).map_err(|e| Self::io(path, e))?;
            return Ok(Stat {
                kind: FileKind::File,
                size: m.len(),
            });
        }
        if let Some(host) = &self.host {
            if let Ok(s) = host.stat(path) {
                return Ok(s);
            }
        }
        if self.is_own_dir(path) {
            return Ok(Stat {
                kind: FileKind::Dir,
                size: 0,
            });
        }
        Err(Error::NotFound { path: path.into() })
    }

    fn read_file(&self, path: &str) -> Result<Vec<u8>, Error> {
        if let Some(h) = self.files.get(path) {
            return std::fs::read(h).map_err(|e| Self::io(path, e));
        }
        match &self.host {
            Some(host) => host.read_file(path),
            None if self.is_own_dir(path) => Err(Error::IsDir { path: path.into() }),
            None => Err(Error::NotFound { path: path.into() }),
        }
    }

    fn read_dir(&self, path: &str) -> Result<Vec<DirEntry>, Error> {
        let mut v = self.own_entries(path);
        if let Some(host) = &self.host {
            if let Ok(more) = host.read_dir(path) {
                for e in more {
                    if !v.iter().any(|o| o.name == e.name) {
                        v.push(e);
                    }
                }
            }
        }
        if v.is_empty() && !self.is_own_dir(path) {
            return Err(Error::NotFound { path: path.into() });
        }
        Ok(v)
    }

    fn describe(&self) -> String {
        format!("host0:{}", self.kernel.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_and_modules_appear_under_boot() {
        let d = std::env::temp_dir().join(format!("hostkernel-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let k = d.join("mykernel");
        let m = d.join("foo.ko");
        std::fs::write(&k, b"ELF...").unwrap();
        std::fs::write(&m, b"KO").unwrap();
        let fs = HostKernelFs::new(
            k.to_str().unwrap(),
            &[m.to_str().unwrap().to_string()],
            None,
        )
        .unwrap();
        assert_eq!(fs.read_file("/boot/kernel/kernel").unwrap(), b"ELF...");
        assert_eq!(fs.read_file("/boot/modules/foo.ko").unwrap(), b"KO");
        assert_eq!(fs.stat("/boot/kernel").unwrap().kind, FileKind::Dir);
        assert_eq!(fs.stat("/boot/kernel/kernel").unwrap().size, 6);
        let names: Vec<_> = fs
            .read_dir("/boot")
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert!(names.contains(&"kernel".to_string()) && names.contains(&"modules".to_string()));
        assert!(matches!(
            fs.read_file("/boot/loader.conf"),
            Err(Error::NotFound { .. })
        ));
        assert!(HostKernelFs::new(d.join("nope").to_str().unwrap(), &[], None).is_err());
        assert!(
            HostKernelFs::new(d.to_str().unwrap(), &[], None).is_err(),
            "a directory"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
