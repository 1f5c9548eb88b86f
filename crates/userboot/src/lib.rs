//! The userboot.so analogue: everything FreeBSD's loader does between reading
//! `/boot` and jumping to the kernel — loader.conf, kernel and module loading,
//! the environment, the preload metadata and the amd64 handoff (page tables,
//! GDT, boot stack).  Pure: it reads through [`libsa::FileSystem`] and writes
//! guest memory through [`GuestPhys`], so it is testable without a VM.

/// Guest-physical memory as the loader sees it (bhyveload's `copyin` /
/// `copyout` callbacks).  An address outside RAM is an error, not a silent
/// drop as in userboot.
pub trait GuestPhys {
    /// RAM below the 3 GiB hole (starts at 0).
    fn lowmem(&self) -> u64;
    /// RAM from 4 GiB up.
    fn highmem(&self) -> u64;
    fn copyin(&mut self, gpa: u64, data: &[u8]) -> Result<(), GuestMemError>;
    fn copyout(&self, gpa: u64, data: &mut [u8]) -> Result<(), GuestMemError>;
}

/// A guest-physical range the loader tried to touch lies outside RAM.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("guest-physical range {gpa:#x}+{len:#x} is outside guest memory")]
pub struct GuestMemError {
    pub gpa: u64,
    pub len: u64,
}
