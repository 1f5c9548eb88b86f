//! VM instances that outlive processes.
//!
//! An instance is a directory NAME in the vmm directory (`$VMM_DIR`, else
//! `/dev/vmm`, so `ls /dev/vmm` lists instances as on FreeBSD; see
//! [`create_vmm_dir`] for what /dev/vmm is).  It holds:
//! - `mem`: guest memory, a sparse file mapped MAP_SHARED by every process
//!   that touches it (lowmem then highmem back to back; see [`MemLayout`]);
//! - `state.json`: configuration, run state and every vCPU's saved state;
//! - `lock`: serialises read-modify-write of `state.json` (held briefly);
//! - `run.lock`: held (flock) by the one process running or loading the VM;
//!   the kernel drops it when that process dies, even by SIGKILL;
//! - `ctl.sock`: the running bhyve's control socket (see [`crate::ctl`]).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

use crate::error::{Error, Result};
use crate::mem::MemLayout;
use crate::name;
use crate::vcpu_state::VcpuState;

/// vCPUs an instance may have (bhyve's `VM_MAXCPU` default).
pub const VM_MAXCPU: usize = 16;

/// The vmm directory when `$VMM_DIR` does not name one.
pub const DEFAULT_VMM_DIR: &str = "/dev/vmm";

/// Where instances live: `$VMM_DIR`, else [`DEFAULT_VMM_DIR`].
pub fn vmm_dir() -> PathBuf {
    match std::env::var_os("VMM_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(DEFAULT_VMM_DIR),
    }
}

/// Create the vmm directory `root` if it is missing.  With `own_fs` (the
/// default /dev/vmm) the process that creates it mounts a tmpfs of its own
/// there, as /dev/shm is, with transparent huge pages (`huge=within_size`):
/// guest RAM then sits in 2 MiB pages, as vmm.ko's does in superpages, so
/// KVM maps it with large pages and an O_DIRECT read of 1 MiB fills one
/// segment instead of 256 (twice the virtio-blk throughput here).  An
/// existing directory, a `$VMM_DIR`, or a failed mount (not root) is used
/// as it is: 4 KiB pages work, only slower.  `size=100%`: a guest may have
/// as much RAM as the host, where a tmpfs's default half would end a
/// bigger guest with SIGBUS when it touches the rest.
pub fn create_vmm_dir(root: &Path, own_fs: bool) -> io::Result<()> {
    let parent = root.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(parent)?;
    // Whoever creates the directory holds the parent locked until its
    // tmpfs is mounted, so nobody puts an instance under the mount.
    let _creating = if own_fs {
        let p = File::open(parent)?;
        flock(&p, libc::LOCK_EX)?;
        Some(p)
    } else {
        None
    };
    match fs::create_dir(root) {
        Ok(()) if own_fs => {
            use nix::mount::{MsFlags, mount};
            let _ = mount(
                Some("vmm"),
                root,
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                Some("mode=0755,huge=within_size,size=100%"),
            );
            Ok(())
        }
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// What an instance is doing, for bhyvectl.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum RunState {
    /// Created, nothing loaded.
    Created,
    /// A loader (bhyveload) set it up to boot.
    Loaded,
    /// A bhyve process is running it.
    Running { pid: u32 },
    /// The last run ended.
    Exited { reason: String, status: i32 },
}

/// Everything about an instance except its memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceState {
    pub name: String,
    /// Seconds since the epoch.
    pub created: u64,
    pub mem: Option<MemLayout>,
    /// vCPUs the last run used (bhyve -c); 1 until then.
    pub ncpus: usize,
    pub run: RunState,
    pub vcpus: Vec<VcpuState>,
    /// Per-vCPU counters from the last run (name, value).
    #[serde(default)]
    pub stats: Vec<Vec<(String, u64)>>,
}

/// A handle on an instance directory.
#[derive(Debug)]
pub struct Instance {
    name: String,
    dir: PathBuf,
}

/// Proof that this process is the one running (or loading) the instance.
/// Dropping it (or dying) releases the instance.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn flock(f: &File, op: libc::c_int) -> io::Result<()> {
    loop {
        // SAFETY: flock on a file descriptor we own; no memory is passed.
        let r = unsafe { libc::flock(f.as_raw_fd(), op) };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

impl Instance {
    fn path_of(name: &str) -> Result<PathBuf> {
        name::validate(name)?;
        Ok(vmm_dir().join(name))
    }

    /// `vm_create`: a new instance with no memory and one vCPU at reset.
    pub fn create(name: &str) -> Result<Instance> {
        let dir = Self::path_of(name)?;
        let root = vmm_dir();
        create_vmm_dir(&root, root == Path::new(DEFAULT_VMM_DIR))
            .map_err(|e| Error::io(name, format!("creating {}", root.display()), e))?;
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(Error::Exists {
                    name: name.to_string(),
                });
            }
            Err(e) => return Err(Error::io(name, format!("creating {}", dir.display()), e)),
        }
        let inst = Instance {
            name: name.to_string(),
            dir,
        };
        let st = InstanceState {
            name: name.to_string(),
            created: now(),
            mem: None,
            ncpus: 1,
            run: RunState::Created,
            vcpus: vec![VcpuState::default()],
            stats: Vec::new(),
        };
        if let Err(e) = inst.write_state(&st) {
            let _ = fs::remove_dir_all(&inst.dir);
            return Err(e);
        }
        Ok(inst)
    }

    /// `vm_open`.
    pub fn open(name: &str) -> Result<Instance> {
        let dir = Self::path_of(name)?;
        if !dir.join("state.json").is_file() {
            return Err(Error::NoSuchVm {
                name: name.to_string(),
            });
        }
        Ok(Instance {
            name: name.to_string(),
            dir,
        })
    }

    /// Names of every instance, sorted.
    pub fn list() -> Result<Vec<String>> {
        let root = vmm_dir();
        let rd = match fs::read_dir(&root) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("*", format!("reading {}", root.display()), e)),
        };
        let mut v: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| name::validate(n).is_ok() && root.join(n).join("state.json").is_file())
            .collect();
        v.sort();
        Ok(v)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn ctl_path(&self) -> PathBuf {
        self.dir.join("ctl.sock")
    }

    fn open_lockfile(&self, file: &str) -> Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(self.dir.join(file))
            .map_err(|e| self.not_found_or(e, format!("opening {file}")))
    }

    fn not_found_or(&self, e: io::Error, what: String) -> Error {
        if e.kind() == io::ErrorKind::NotFound {
            Error::NoSuchVm {
                name: self.name.clone(),
            }
        } else {
            Error::io(&self.name, what, e)
        }
    }

    pub fn read_state(&self) -> Result<InstanceState> {
        let p = self.dir.join("state.json");
        let bytes = fs::read(&p).map_err(|e| self.not_found_or(e, "reading state".into()))?;
        let st: InstanceState =
            serde_json::from_slice(&bytes).map_err(|e| Error::CorruptState {
                name: self.name.clone(),
                why: e.to_string(),
            })?;
        if st.vcpus.is_empty() || st.vcpus.len() > VM_MAXCPU {
            return Err(Error::CorruptState {
                name: self.name.clone(),
                why: format!("{} vCPUs", st.vcpus.len()),
            });
        }
        Ok(st)
    }

    /// Replace state.json atomically (write + rename), so a reader never sees
    /// half a file and a crash leaves the old or the new state.
    fn write_state(&self, st: &InstanceState) -> Result<()> {
        let tmp = self.dir.join(format!("state.json.{}", std::process::id()));
        let res = (|| {
            let mut f = File::create(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(st).map_err(io::Error::other)?)?;
            f.sync_data()?;
            fs::rename(&tmp, self.dir.join("state.json"))
        })();
        res.map_err(|e| {
            let _ = fs::remove_file(&tmp);
            self.not_found_or(e, "writing state".into())
        })
    }

    /// Read-modify-write of the state under the instance's state lock.
    pub fn update<T>(&self, f: impl FnOnce(&mut InstanceState) -> Result<T>) -> Result<T> {
        let lock = self.open_lockfile("lock")?;
        flock(&lock, libc::LOCK_EX).map_err(|e| Error::io(&self.name, "locking state", e))?;
        let mut st = self.read_state()?;
        let r = f(&mut st)?;
        self.write_state(&st)?;
        Ok(r)
    }

    /// Take the run lock without waiting; `Busy` names the holder.
    pub fn lock_run(&self) -> Result<RunLock> {
        let f = self.open_lockfile("run.lock")?;
        match flock(&f, libc::LOCK_EX | libc::LOCK_NB) {
            Ok(()) => Ok(RunLock { _file: f }),
            Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => {
                let pid = match self.read_state().map(|s| s.run) {
                    Ok(RunState::Running { pid }) => pid,
                    _ => 0,
                };
                Err(Error::Busy {
                    name: self.name.clone(),
                    pid,
                })
            }
            Err(e) => Err(Error::io(&self.name, "locking run.lock", e)),
        }
    }

    /// Whether some process holds the run lock now.
    pub fn is_locked(&self) -> bool {
        matches!(self.lock_run(), Err(Error::Busy { .. }))
    }

    /// `vm_setup_memory`: give the instance `size` bytes of RAM.  An instance
    /// that already has memory of that size keeps it (bhyveload re-running on
    /// reboot); another size replaces it.
    pub fn setup_memory(&self, size: u64) -> Result<MemLayout> {
        let layout = MemLayout::new(size)?;
        self.update(|st| {
            let path = self.dir.join("mem");
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&path)
                .map_err(|e| self.not_found_or(e, "creating memory".into()))?;
            if st.mem != Some(layout) {
                // Truncating to zero first drops old contents and pages.
                f.set_len(0)
                    .and_then(|()| f.set_len(layout.size()))
                    .map_err(|e| Error::io(&self.name, "sizing memory", e))?;
            }
            st.mem = Some(layout);
            Ok(layout)
        })
    }

    /// Map the instance's memory (MAP_SHARED, never copied): every process
    /// sees the same pages.
    pub fn map_memory(&self) -> Result<(MemLayout, GuestMemoryMmap)> {
        let layout = self.read_state()?.mem.ok_or_else(|| Error::NoMemory {
            name: self.name.clone(),
        })?;
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.dir.join("mem"))
            .map_err(|e| self.not_found_or(e, "opening memory".into()))?;
        let len = f
            .metadata()
            .map_err(|e| Error::io(&self.name, "stat memory", e))?
            .len();
        if len != layout.size() {
            return Err(Error::CorruptState {
                name: self.name.clone(),
                why: format!(
                    "memory file is {len:#x} bytes, expected {:#x}",
                    layout.size()
                ),
            });
        }
        let f = std::sync::Arc::new(f);
        let ranges: Vec<_> = layout
            .ranges()
            .into_iter()
            .map(|(gpa, len, off)| {
                (
                    GuestAddress(gpa),
                    len as usize,
                    Some(FileOffset::from_arc(f.clone(), off)),
                )
            })
            .collect();
        let gm = GuestMemoryMmap::from_ranges_with_files(&ranges).map_err(|e| {
            Error::io(
                &self.name,
                "mapping memory",
                io::Error::other(e.to_string()),
            )
        })?;
        Ok((layout, gm))
    }

    /// Bytes of RAM the memory file really occupies (pages ever touched).
    pub fn memory_resident(&self) -> Result<u64> {
        let m = fs::metadata(self.dir.join("mem"))
            .map_err(|e| self.not_found_or(e, "stat memory".into()))?;
        Ok(m.blocks() * 512)
    }

    /// `vm_destroy`: free memory and remove the entry.  The caller makes sure
    /// no process runs it (see [`Instance::lock_run`]).
    pub fn destroy(self) -> Result<()> {
        fs::remove_dir_all(&self.dir).map_err(|e| self.not_found_or(e, "destroying".into()))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Mutex;

    /// VMM_DIR is process-global; tests that use it take this lock.
    pub(crate) static ENV_LOCK: Mutex<()> = Mutex::new(());

    pub(crate) fn with_vmm_dir<T>(f: impl FnOnce(&Path) -> T) -> T {
        let _g = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let d = std::env::temp_dir().join(format!("vmm-core-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        // SAFETY: tests that touch the environment hold ENV_LOCK.
        unsafe { std::env::set_var("VMM_DIR", &d) };
        let r = f(&d);
        let _ = fs::remove_dir_all(&d);
        r
    }

    /// The default vmm directory's own tmpfs gives guest memory 2 MiB
    /// pages; without the privilege to mount it is a plain directory.
    #[test]
    fn own_vmm_dir_is_a_huge_page_tmpfs() {
        /// Unmounts and removes the test's directory, even after a failure.
        struct Cleanup(PathBuf);
        impl Drop for Cleanup {
            fn drop(&mut self) {
                let _ = nix::mount::umount(&self.0.join("vmm"));
                let _ = fs::remove_dir_all(&self.0);
            }
        }
        let d = std::env::temp_dir().join(format!("vmm-core-ownfs-{}", std::process::id()));
        let _cleanup = Cleanup(d.clone());
        let root = d.join("vmm");
        create_vmm_dir(&root, true).unwrap();
        let mounted = fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .find(|l| l.split(' ').nth(4) == Some(root.to_str().unwrap()))
            .map(str::to_string);
        if nix::unistd::geteuid().is_root() {
            let m = mounted.expect("no tmpfs mounted on the vmm directory");
            assert!(
                m.contains(" - tmpfs ") && m.contains("huge=within_size"),
                "{m}"
            );
            // A touched 2 MiB-aligned range of a memory file is mapped whole.
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(root.join("mem"))
                .unwrap();
            f.set_len(8 << 20).unwrap();
            let gm = GuestMemoryMmap::<()>::from_ranges_with_files(&[(
                GuestAddress(0),
                8 << 20,
                Some(FileOffset::new(f, 0)),
            )])
            .unwrap();
            use vm_memory::Bytes;
            for off in (0..8u64 << 20).step_by(4096) {
                gm.write_obj(1u8, GuestAddress(off)).unwrap();
            }
            let smaps = fs::read_to_string("/proc/self/smaps").unwrap();
            let pmd: u64 = smaps
                .lines()
                .filter_map(|l| l.strip_prefix("ShmemPmdMapped:"))
                .map(|v| v.trim().trim_end_matches(" kB").parse::<u64>().unwrap())
                .sum();
            assert!(pmd >= 2048, "guest memory not in huge pages: {pmd} kB");
            drop(gm);
            nix::mount::umount(&root).unwrap();
        } else {
            assert!(mounted.is_none() && root.is_dir());
        }
        // A second caller finds it and leaves it be.
        create_vmm_dir(&root, true).unwrap();
        assert!(root.is_dir());
    }

    #[test]
    fn lifecycle() {
        with_vmm_dir(|d| {
            let i = Instance::create("t0").unwrap();
            assert!(d.join("t0").is_dir());
            assert!(matches!(Instance::create("t0"), Err(Error::Exists { .. })));
            assert_eq!(Instance::list().unwrap(), vec!["t0".to_string()]);
            let st = i.read_state().unwrap();
            assert_eq!(st.run, RunState::Created);
            assert_eq!(st.vcpus.len(), 1);
            i.update(|s| {
                s.vcpus[0].rip = 0x1000;
                Ok(())
            })
            .unwrap();
            let j = Instance::open("t0").unwrap();
            assert_eq!(j.read_state().unwrap().vcpus[0].rip, 0x1000);
            j.destroy().unwrap();
            assert!(matches!(Instance::open("t0"), Err(Error::NoSuchVm { .. })));
            assert!(Instance::list().unwrap().is_empty());
            assert!(matches!(i.destroy(), Err(Error::NoSuchVm { .. })));
        });
    }

    #[test]
    fn bad_names_are_refused() {
        with_vmm_dir(|_| {
            assert!(matches!(
                Instance::create("../x"),
                Err(Error::BadName { .. })
            ));
            assert!(matches!(Instance::open("a b"), Err(Error::BadName { .. })));
        });
    }

    #[test]
    fn run_lock_is_exclusive_and_released() {
        with_vmm_dir(|_| {
            let i = Instance::create("locked").unwrap();
            let l = i.lock_run().unwrap();
            assert!(matches!(i.lock_run(), Err(Error::Busy { .. })));
            assert!(i.is_locked());
            drop(l);
            assert!(!i.is_locked());
            i.lock_run().unwrap();
        });
    }

    #[test]
    fn corrupt_state_is_an_error() {
        with_vmm_dir(|d| {
            Instance::create("bad").unwrap();
            fs::write(d.join("bad/state.json"), b"{ nope").unwrap();
            let e = Instance::open("bad").unwrap().read_state().unwrap_err();
            assert!(matches!(e, Error::CorruptState { .. }), "{e}");
        });
    }

    #[test]
    fn memory_is_sparse_and_resizable() {
        with_vmm_dir(|_| {
            let i = Instance::create("m").unwrap();
            assert!(matches!(i.map_memory(), Err(Error::NoMemory { .. })));
            let l = i.setup_memory(64 << 20).unwrap();
            assert_eq!(l.lowmem, 64 << 20);
            assert!(i.memory_resident().unwrap() < (1 << 20));
            {
                use vm_memory::Bytes;
                let (_, gm) = i.map_memory().unwrap();
                gm.write_slice(b"hello", GuestAddress(0x1000)).unwrap();
                let (_, gm2) = i.map_memory().unwrap();
                let mut b = [0u8; 5];
                gm2.read_slice(&mut b, GuestAddress(0x1000)).unwrap();
                assert_eq!(&b, b"hello");
            }
            i.setup_memory(128 << 20).unwrap();
            assert_eq!(i.read_state().unwrap().mem.unwrap().lowmem, 128 << 20);
            assert!(i.setup_memory(3).is_err());
        });
    }
}
