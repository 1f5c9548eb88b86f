//! bhyve's `block_if.c`: a disk image opened with bhyve's options and
//! served off the vCPU thread by a few worker threads, several requests
//! in flight, completions in any order.  Reads and writes go straight
//! between the file and guest memory (preadv/pwritev on the guest ranges,
//! each checked to lie in one RAM region), except that O_DIRECT
//! (`nocache`) with a buffer not aligned to 512 bytes goes through a
//! worker's aligned bounce buffer, as the kernel would refuse it.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;

use vmmapi::vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// `DEV_BSIZE`: virtio-blk counts in these.
pub const DEV_BSIZE: u64 = 512;
/// `BLOCKIF_NUMTHR`.
const BLOCKIF_NUMTHR: usize = 8;
/// Largest piece copied at once through the bounce buffer, and its
/// alignment for O_DIRECT (`nocache`).
const BOUNCE: usize = 1 << 20;
const BOUNCE_ALIGN: usize = 4096;
/// What O_DIRECT wants of a buffer's address and length.
const DIRECT_ALIGN: u64 = 512;
/// Most iovecs per preadv/pwritev (`IOV_MAX`).
const IOV_MAX: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("{path}: {err}")]
    Open { path: String, err: io::Error },
    #[error("invalid sector size {0:?}")]
    SectorSize(String),
}

/// An opened image and what bhyve learned about it (`blockif_open`).
#[derive(Debug)]
pub struct Disk {
    file: File,
    /// Opened O_DIRECT (`nocache`).
    direct: bool,
    pub path: String,
    pub ro: bool,
    /// Bytes.
    pub size: u64,
    /// Logical / physical sector size and the physical offset.
    pub sectsz: u32,
    pub psectsz: u32,
    pub psectoff: u32,
    /// Deallocation works (`bc_candelete`) and `nodelete` was not given.
    pub candelete: bool,
}

/// `sectorsize=logical[/physical]`: powers of two, 512 or more, the
/// physical no smaller than the logical.
fn parse_sectorsize(s: &str) -> Result<(u32, u32), BlockError> {
    let bad = || BlockError::SectorSize(s.to_string());
    let (l, p) = match s.split_once('/') {
        Some((l, p)) => (l, p),
        None => (s, s),
    };
    let l: u32 = l.parse().map_err(|_| bad())?;
    let p: u32 = p.parse().map_err(|_| bad())?;
    if !l.is_power_of_two() || !p.is_power_of_two() || l < 512 || p < l {
        return Err(bad());
    }
    Ok((l, p))
}

impl Disk {
    /// `blockif_open` with a device's options: `ro`, `nocache` (O_DIRECT),
    /// `direct` (O_SYNC), `sectorsize=`, `nodelete`.
    pub fn open(
        path: &str,
        opts: &std::collections::BTreeMap<String, String>,
    ) -> Result<Disk, BlockError> {
        let on = |k: &str| opts.get(k).is_some_and(|v| v != "false");
        let mut ro = on("ro");
        let mut flags = 0;
        if on("nocache") {
            flags |= libc::O_DIRECT;
        }
        if on("direct") || on("sync") {
            flags |= libc::O_SYNC;
        }
        let sectorsize = opts
            .get("sectorsize")
            .map(|s| parse_sectorsize(s))
            .transpose()?;
        let open = |ro: bool| {
            OpenOptions::new()
                .read(true)
                .write(!ro)
                .custom_flags(flags)
                .open(path)
        };
        let file = match open(ro) {
            Ok(f) => Ok(f),
            // bhyve falls back to read-only when it may not write.
            Err(e)
                if !ro
                    && matches!(
                        e.raw_os_error(),
                        Some(libc::EROFS | libc::EACCES | libc::EPERM)
                    ) =>
            {
                ro = true;
                open(true)
            }
            Err(e) => Err(e),
        }
        .map_err(|err| BlockError::Open {
            path: path.into(),
            err,
        })?;
        let oerr = |err| BlockError::Open {
            path: path.into(),
            err,
        };
        let meta = file.metadata().map_err(oerr)?;
        // Block devices report no length in stat; their end does.
        let size = (&file).seek(SeekFrom::End(0)).map_err(oerr)?;
        let blksize = u32::try_from(std::os::unix::fs::MetadataExt::blksize(&meta)).unwrap_or(0);
        let (sectsz, psectsz) = match sectorsize {
            Some(s) => s,
            None if blksize.is_power_of_two() && blksize >= 512 => (DEV_BSIZE as u32, blksize),
            None => (DEV_BSIZE as u32, DEV_BSIZE as u32),
        };
        let candelete = !on("nodelete")
            && meta.file_type().is_file()
            && (ro || punch_hole(&file, size, 0).is_ok());
        Ok(Disk {
            file,
            direct: flags & libc::O_DIRECT != 0,
            path: path.into(),
            ro,
            size,
            sectsz,
            psectsz,
            psectoff: 0,
            candelete,
        })
    }
}

/// Deallocate `[off, off + len)` keeping the size; `len` 0 probes (a
/// one-byte hole at the end of the file changes nothing).
fn punch_hole(file: &File, off: u64, len: u64) -> io::Result<()> {
    use nix::fcntl::{FallocateFlags, fallocate};
    let (off, len) = if len == 0 { (off, 1) } else { (off, len) };
    let off = i64::try_from(off).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let len = i64::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    fallocate(
        file,
        FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
        off,
        len,
    )
    .map_err(io::Error::from)
}

/// What a request does (`BOP_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockOp {
    Read,
    Write,
    Flush,
    Delete,
}

/// A request (`blockif_req`): `iov` are guest ranges the caller checked
/// are RAM; for `Delete` `len` is the range's length.
pub struct BlockReq {
    pub op: BlockOp,
    pub offset: u64,
    pub len: u64,
    pub iov: Vec<(GuestAddress, u32)>,
    /// Called on a worker with the outcome (`br_callback`).
    pub done: Box<dyn FnOnce(io::Result<()>) + Send>,
}

impl std::fmt::Debug for BlockReq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockReq")
            .field("op", &self.op)
            .field("offset", &self.offset)
            .finish_non_exhaustive()
    }
}

struct Shared {
    disk: Disk,
    mem: GuestMemoryMmap,
}

/// The worker pool of one disk (`blockif_ctxt`).
pub struct BlockIf {
    shared: Arc<Shared>,
    tx: Option<mpsc::Sender<BlockReq>>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for BlockIf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockIf")
            .field("disk", &self.shared.disk)
            .finish_non_exhaustive()
    }
}

impl BlockIf {
    /// Start the workers for `disk`, whose buffers live in `mem`.
    pub fn new(disk: Disk, mem: GuestMemoryMmap) -> io::Result<BlockIf> {
        let shared = Arc::new(Shared { disk, mem });
        let (tx, rx) = mpsc::channel::<BlockReq>();
        let rx = Arc::new(Mutex::new(rx));
        let mut threads = Vec::new();
        for i in 0..BLOCKIF_NUMTHR {
            let (rx, sh) = (rx.clone(), shared.clone());
            let t = std::thread::Builder::new()
                .name(format!("blk-{i}"))
                .spawn(move || {
                    let mut bounce = Bounce::default();
                    loop {
                        // The queue closes when the BlockIf goes.
                        let req = match rx.lock().unwrap_or_else(|e| e.into_inner()).recv() {
                            Ok(r) => r,
                            Err(_) => return,
                        };
                        let r = sh.exec(&req, &mut bounce);
                        (req.done)(r);
                    }
                })?;
            threads.push(t);
        }
        Ok(BlockIf {
            shared,
            tx: Some(tx),
            threads,
        })
    }

    pub fn disk(&self) -> &Disk {
        &self.shared.disk
    }

    /// Queue `req` (`blockif_read` and friends).
    pub fn submit(&self, req: BlockReq) {
        if let Some(tx) = &self.tx {
            if let Err(mpsc::SendError(req)) = tx.send(req) {
                (req.done)(Err(io::Error::from_raw_os_error(libc::EIO)));
            }
        }
    }
}

impl Drop for BlockIf {
    fn drop(&mut self) {
        self.tx = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A worker's bounce buffer, aligned for O_DIRECT without unsafe
/// allocation; made on first use and kept.
#[derive(Default)]
struct Bounce(Vec<u8>, usize);

impl Bounce {
    fn get(&mut self) -> &mut [u8] {
        if self.0.is_empty() {
            self.0 = vec![0u8; BOUNCE + BOUNCE_ALIGN];
            self.1 = self.0.as_ptr().align_offset(BOUNCE_ALIGN).min(BOUNCE_ALIGN);
        }
        &mut self.0[self.1..self.1 + BOUNCE]
    }
}

/// preadv/pwritev of all of `iov` at `off`, going on after short
/// transfers; hitting the end of the file is an error.
fn rw_vectored(
    file: &File,
    write: bool,
    mut iov: Vec<libc::iovec>,
    mut off: u64,
) -> io::Result<()> {
    let mut first = 0;
    while first < iov.len() {
        let rest = &iov[first..(first + IOV_MAX).min(iov.len())];
        // SAFETY: every iovec covers guest RAM checked to lie in one
        // mapped region, which stays mapped while the VM exists.
        let n = unsafe {
            if write {
                libc::pwritev(
                    file.as_raw_fd(),
                    rest.as_ptr(),
                    rest.len() as i32,
                    off as i64,
                )
            } else {
                libc::preadv(
                    file.as_raw_fd(),
                    rest.as_ptr(),
                    rest.len() as i32,
                    off as i64,
                )
            }
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        off += n as u64;
        let mut n = n as usize;
        while n > 0 {
            let v = &mut iov[first];
            let k = n.min(v.iov_len);
            // SAFETY: stays inside the same iovec.
            v.iov_base = unsafe { (v.iov_base as *mut u8).add(k) }.cast();
            v.iov_len -= k;
            n -= k;
            if v.iov_len == 0 {
                first += 1;
            }
        }
    }
    Ok(())
}

impl Shared {
    /// The host iovecs of `iov`, if each range lies in one RAM region (and
    /// is aligned as O_DIRECT needs, when the disk uses it).
    fn host_iov(&self, iov: &[(GuestAddress, u32)]) -> Option<Vec<libc::iovec>> {
        let aligned = |a: u64, l: u64| a % DIRECT_ALIGN == 0 && l % DIRECT_ALIGN == 0;
        iov.iter()
            .map(|&(addr, len)| {
                if self.disk.direct && !aligned(addr.0, len.into()) {
                    return None;
                }
                let s = self.mem.get_slice(addr, len as usize).ok()?;
                Some(libc::iovec {
                    iov_base: s.ptr_guard_mut().as_ptr().cast(),
                    iov_len: len as usize,
                })
            })
            .collect()
    }

    fn exec(&self, req: &BlockReq, bounce: &mut Bounce) -> io::Result<()> {
        let d = &self.disk;
        let err = io::Error::from_raw_os_error;
        match req.op {
            BlockOp::Read | BlockOp::Write => {
                if req.op == BlockOp::Write && d.ro {
                    return Err(err(libc::EROFS));
                }
                let total: u64 = req.iov.iter().map(|&(_, l)| u64::from(l)).sum();
                if req.offset.checked_add(total).is_none_or(|e| e > d.size) {
                    return Err(err(libc::EINVAL));
                }
                let write = req.op == BlockOp::Write;
                if let Some(iov) = self.host_iov(&req.iov) {
                    return rw_vectored(&d.file, write, iov, req.offset);
                }
                let buf = bounce.get();
                let mut off = req.offset;
                for &(addr, len) in &req.iov {
                    let mut done = 0u64;
                    while done < u64::from(len) {
                        let n = (u64::from(len) - done).min(BOUNCE as u64) as usize;
                        let b = &mut buf[..n];
                        let ga = GuestAddress(addr.0 + done);
                        if req.op == BlockOp::Read {
                            d.file.read_exact_at(b, off)?;
                            self.mem.write_slice(b, ga).map_err(|_| err(libc::EFAULT))?;
                        } else {
                            self.mem.read_slice(b, ga).map_err(|_| err(libc::EFAULT))?;
                            d.file.write_all_at(b, off)?;
                        }
                        done += n as u64;
                        off += n as u64;
                    }
                }
                Ok(())
            }
            BlockOp::Flush => d.file.sync_data(),
            BlockOp::Delete => {
                if d.ro {
                    Err(err(libc::EROFS))
                } else if !d.candelete {
                    Err(err(libc::EOPNOTSUPP))
                } else if req.offset.checked_add(req.len).is_none_or(|e| e > d.size) {
                    Err(err(libc::EINVAL))
                } else if req.len == 0 {
                    Ok(())
                } else {
                    punch_hole(&d.file, req.offset, req.len)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn sectorsize_option() {
        assert_eq!(parse_sectorsize("4096").unwrap(), (4096, 4096));
        assert_eq!(parse_sectorsize("512/4096").unwrap(), (512, 4096));
        for bad in ["4096/512", "256", "1000", "x", "512/"] {
            assert!(parse_sectorsize(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn open_options() {
        let p = std::env::temp_dir().join(format!("blockif-open-{}", std::process::id()));
        std::fs::write(&p, vec![0u8; 8192]).unwrap();
        let path = p.to_str().unwrap();
        let mut o = BTreeMap::new();
        let d = Disk::open(path, &o).unwrap();
        assert!(!d.ro);
        assert_eq!(d.size, 8192);
        assert_eq!(d.sectsz, 512);
        o.insert("sectorsize".into(), "4096".into());
        o.insert("ro".into(), "true".into());
        o.insert("nodelete".into(), "true".into());
        let d = Disk::open(path, &o).unwrap();
        assert!(d.ro && !d.candelete);
        assert_eq!((d.sectsz, d.psectsz), (4096, 4096));
        assert!(Disk::open("/nonexistent/disk", &BTreeMap::new()).is_err());
        std::fs::remove_file(p).unwrap();
    }

    /// Run one request on `b` and wait for its outcome.
    fn io(b: &BlockIf, op: BlockOp, offset: u64, iov: &[(u64, u32)]) -> io::Result<()> {
        let (tx, rx) = mpsc::channel();
        b.submit(BlockReq {
            op,
            offset,
            len: 0,
            iov: iov.iter().map(|&(a, l)| (GuestAddress(a), l)).collect(),
            done: Box::new(move |r| tx.send(r).unwrap()),
        });
        rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap()
    }

    /// O_DIRECT (`nocache`): aligned guest ranges, even in two memory
    /// regions, go straight to and from the file; a misaligned one takes
    /// the bounce buffer; one running off its region fails, touching
    /// nothing outside guest memory.
    #[test]
    fn direct_and_bounced_transfers() {
        // Next to the test binary: a real file system (O_DIRECT is
        // refused on tmpfs).
        let p = std::env::current_exe()
            .unwrap()
            .with_file_name(format!("blockif-direct-{}", std::process::id()));
        let pat: Vec<u8> = (0..65536u32).map(|i| (i * 7 + i / 512) as u8).collect();
        std::fs::write(&p, &pat).unwrap();
        let mut o = BTreeMap::new();
        o.insert("nocache".into(), "true".into());
        let d = Disk::open(p.to_str().unwrap(), &o).unwrap();
        assert!(d.direct);
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x10000),
            (GuestAddress(0x100000), 0x10000),
        ])
        .unwrap();
        let b = BlockIf::new(d, mem.clone()).unwrap();

        io(&b, BlockOp::Read, 4096, &[(0x200, 512), (0x101000, 4096)]).unwrap();
        let mut got = vec![0u8; 4608];
        mem.read_slice(&mut got[..512], GuestAddress(0x200))
            .unwrap();
        mem.read_slice(&mut got[512..], GuestAddress(0x101000))
            .unwrap();
        assert!(got == pat[4096..4096 + 4608], "direct read");

        io(&b, BlockOp::Read, 1024, &[(0x10, 512)]).unwrap();
        let mut got = vec![0u8; 512];
        mem.read_slice(&mut got, GuestAddress(0x10)).unwrap();
        assert!(got == pat[1024..1536], "bounced read");

        mem.write_slice(&[0xab; 512], GuestAddress(0x1010)).unwrap();
        mem.write_slice(&[0xcd; 1024], GuestAddress(0x2000))
            .unwrap();
        io(&b, BlockOp::Write, 8192, &[(0x1010, 512)]).unwrap();
        io(&b, BlockOp::Write, 16384, &[(0x2000, 1024)]).unwrap();
        let f = std::fs::read(&p).unwrap();
        assert!(f[8192..8704].iter().all(|&x| x == 0xab), "bounced write");
        assert!(f[16384..17408].iter().all(|&x| x == 0xcd), "direct write");

        let e = io(&b, BlockOp::Read, 0, &[(0xfe00, 1024)]).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EFAULT));
        drop(b);
        std::fs::remove_file(p).unwrap();
    }
}
