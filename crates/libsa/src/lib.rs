//! The stand/libsa analogue: the read-only file access FreeBSD's loader uses to
//! find its boot files — UFS1/UFS2 (`ufs.c`), GPT / MBR / BSD disklabel
//! (`part.c`) and a host directory (`-h`, userboot's `host.c`).
//!
//! Everything here is read-only: bhyveload never writes the disk image.

use std::io;

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
