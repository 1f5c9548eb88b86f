//! `Disk` implementations: a read-only host file or block device, a window
//! (partition) inside another disk, and an in-memory buffer.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::{Disk, Error};

/// A disk image file or host block device, opened read-only (bhyveload never
/// writes the image). Reads use `pread`, so one `FileDisk` can be shared.
#[derive(Debug)]
pub struct FileDisk {
    file: File,
    path: PathBuf,
    size: u64,
}

impl FileDisk {
    /// Open `path` read-only. The size comes from seeking to the end, which
    /// works for block devices too (their `st_size` is 0).
    pub fn open(path: impl AsRef<Path>) -> Result<FileDisk, Error> {
        let path = path.as_ref().to_path_buf();
        let io_err = |source| Error::Io {
            what: path.display().to_string(),
            source,
        };
        let file = File::open(&path).map_err(io_err)?;
        let size = (&file).seek(SeekFrom::End(0)).map_err(io_err)?;
        Ok(FileDisk { file, path, size })
    }

    /// The path this disk was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Disk for FileDisk {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        check_range(off, buf.len(), self.size)?;
        self.file.read_exact_at(buf, off)
    }
}

/// `[off, off+len)` must lie inside a disk of `size` bytes.
fn check_range(off: u64, len: usize, size: u64) -> io::Result<()> {
    let end = u64::try_from(len).ok().and_then(|l| off.checked_add(l));
    match end {
        Some(end) if end <= size => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "read of {len} bytes at offset {off} is past the end of the disk ({size} bytes)"
            ),
        )),
    }
}

/// A byte range of another disk (a GPT partition, MBR slice or disklabel
/// partition). Reads outside the range are errors, never reads of the
/// neighbour.
#[derive(Clone)]
pub struct SubDisk {
    inner: Arc<dyn Disk + Send + Sync>,
    start: u64,
    len: u64,
}

impl std::fmt::Debug for SubDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubDisk")
            .field("start", &self.start)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl SubDisk {
    /// The window `[start, start+len)` of `inner`, clipped to its end (a
    /// truncated image then shows up as a file system larger than its
    /// partition rather than as a wild read).
    pub fn new(inner: Arc<dyn Disk + Send + Sync>, start: u64, len: u64) -> SubDisk {
        let avail = inner.size().saturating_sub(start);
        SubDisk {
            inner,
            start,
            len: len.min(avail),
        }
    }

    /// Byte offset of the window in the underlying disk.
    pub fn start(&self) -> u64 {
        self.start
    }
}

impl Disk for SubDisk {
    fn size(&self) -> u64 {
        self.len
    }

    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        check_range(off, buf.len(), self.len)?;
        // Cannot overflow: off + len <= self.len and start + self.len <= inner size.
        self.inner.read_at(buf, self.start + off)
    }
}

/// A disk held in memory (tests, or images already read).
#[derive(Debug, Clone)]
pub struct MemDisk(pub Vec<u8>);

impl Disk for MemDisk {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }

    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        check_range(off, buf.len(), self.size())?;
        let off = off as usize; // fits: off + len <= Vec length
        buf.copy_from_slice(&self.0[off..off + buf.len()]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subdisk_bounds() {
        let mem: Arc<dyn Disk + Send + Sync> = Arc::new(MemDisk((0..100u8).collect()));
        let sub = SubDisk::new(mem.clone(), 10, 20);
        let mut b = [0u8; 5];
        sub.read_at(&mut b, 15).unwrap();
        assert_eq!(b, [25, 26, 27, 28, 29]);
        assert!(sub.read_at(&mut b, 16).is_err());
        assert!(sub.read_at(&mut b, u64::MAX - 2).is_err());
        // Clipped to the underlying disk.
        let sub = SubDisk::new(mem.clone(), 90, 1000);
        assert_eq!(sub.size(), 10);
        let sub = SubDisk::new(mem, 1000, 1000);
        assert_eq!(sub.size(), 0);
    }
}
