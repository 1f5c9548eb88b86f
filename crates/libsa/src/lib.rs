//! The stand/libsa analogue: the read-only file access FreeBSD's loader uses to
//! find its boot files — UFS1/UFS2 (`ufs.c`), GPT / MBR / BSD disklabel
//! (`part.c`) and a host directory (`-h`, userboot's `host.c`).
//!
//! Everything here is read-only: bhyveload never writes the disk image.
//!
//! # API
//!
//! * [`open_image`]`(disk, what) -> Box<dyn FileSystem + Send + Sync>`: find
//!   the UFS file system on a disk image — raw UFS first, then a GPT
//!   `freebsd-ufs` partition (one marked `bootme` preferred), then a BSD
//!   disklabel or MBR slice (FreeBSD slice → its label's `a` partition, or UFS
//!   directly in a slice). `describe()` gives `disk0p2 (UFS2)`,
//!   `disk0s1a (UFS1)`, `disk0 (UFS2)`.
//! * [`FileDisk::open`]`(path)`: a [`Disk`] over an image file or host block
//!   device, opened read-only. [`SubDisk`] is a window (partition) of a disk,
//!   [`MemDisk`] one held in memory.
//! * [`HostFs::new`]`(dir)`: a [`FileSystem`] over a host directory
//!   (`bhyveload -h`); nothing outside `dir` is reachable.
//! * [`Ufs`]: the UFS reader itself, for a disk that is known to be one
//!   partition; [`part::read_table`] / [`part::boot_order`]: the partition
//!   tables.
//!
//! Paths are absolute and `/`-separated; symlinks are followed with
//! FreeBSD's limits (32 links, 1024-byte paths, 255-byte names). `read_dir`
//! leaves out `.` and `..`. Files are refused when larger than their
//! partition, so a hostile image cannot make the reader allocate without
//! bound; a superblock claiming more than its partition (a truncated image)
//! is `BadSuperblock`. A valid primary GPT is used as is; the backup only
//! when the primary (header or entry table) fails its checks.

mod crc32;
mod disk;
mod host;
pub mod part;
mod ufs;

#[cfg(test)]
mod tests;

pub use disk::{FileDisk, MemDisk, SubDisk};
pub use host::HostFs;
pub use ufs::{MAXPATHLEN, MAXSYMLINKS, UFS_MAXNAMLEN, Ufs};

use std::io;
use std::sync::Arc;

/// A read-only block source (a disk image file, a host block device, or a
/// partition inside one).
pub trait Disk {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Fill `buf` from byte offset `off`; short reads are errors.
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()>;
}

/// What a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Other,
}

/// The result of `stat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub kind: FileKind,
    pub size: u64,
}

/// One directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: String,
    pub kind: FileKind,
}

/// The file system the loader reads `/boot` from. Paths are absolute,
/// `/`-separated; symbolic links are followed (FreeBSD's limits apply).
pub trait FileSystem {
    fn stat(&self, path: &str) -> Result<Stat, Error>;
    fn read_file(&self, path: &str) -> Result<Vec<u8>, Error>;
    fn read_dir(&self, path: &str) -> Result<Vec<DirEntry>, Error>;
    /// A short description for messages, e.g. `disk0p2 (UFS2)` or `host0:/dir`.
    fn describe(&self) -> String;
}

/// One error type for the crate; every variant names the object it is about.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: no such file or directory")]
    NotFound { path: String },
    #[error("{path}: not a directory")]
    NotDir { path: String },
    #[error("{path}: is a directory")]
    IsDir { path: String },
    #[error("{path}: too many levels of symbolic links")]
    SymlinkLoop { path: String },
    #[error("{path}: file name too long")]
    NameTooLong { path: String },
    #[error("{what}: I/O error: {source}")]
    Io { what: String, source: io::Error },
    #[error("{what}: not a disk image we understand (no UFS file system, GPT, or MBR found)")]
    UnknownImage { what: String },
    #[error("{what}: bad superblock: {why}")]
    BadSuperblock { what: String, why: String },
    #[error("{what}: corrupt file system: {why}")]
    Corrupt { what: String, why: String },
    #[error("{what}: bad partition table: {why}")]
    BadPartition { what: String, why: String },
}

/// Find the UFS file system on `disk` (see the crate docs for the search
/// order); `what` names the image in errors.
pub fn open_image(
    disk: Arc<dyn Disk + Send + Sync>,
    what: &str,
) -> Result<Box<dyn FileSystem + Send + Sync>, Error> {
    // A superblock that is present but broken is remembered: if nothing else
    // works it explains the failure better than "unknown image".
    let raw_err = match Ufs::probe(disk.clone(), "disk0", what) {
        Ok(Some(fs)) => return Ok(Box::new(fs)),
        Ok(None) => None,
        Err(e) => Some(e),
    };
    let Some((scheme, parts)) = part::read_table(&*disk, what)? else {
        return Err(raw_err.unwrap_or_else(|| Error::UnknownImage { what: what.into() }));
    };
    let mut first_err = None;
    for p in part::boot_order(scheme, &parts) {
        let sub: Arc<dyn Disk + Send + Sync> =
            Arc::new(SubDisk::new(disk.clone(), p.start, p.size));
        match Ufs::probe(sub, &format!("disk0{}", p.name), what) {
            Ok(Some(fs)) => return Ok(Box::new(fs)),
            Ok(None) => {}
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    Err(first_err
        .or(raw_err)
        .unwrap_or_else(|| Error::BadPartition {
            what: what.into(),
            why: format!(
                "{} table has no partition holding a UFS file system",
                match scheme {
                    part::Scheme::Gpt => "GPT",
                    part::Scheme::Mbr => "MBR",
                    part::Scheme::Bsd => "disklabel",
                }
            ),
        }))
}
