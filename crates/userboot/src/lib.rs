//! The userboot.so analogue: everything FreeBSD's loader does between reading
//! `/boot` and jumping to the kernel — loader.conf, kernel and module loading,
//! the environment, the preload metadata and the amd64 handoff (page tables,
//! GDT, boot stack).  Pure: it reads through [`libsa::FileSystem`] and writes
//! guest memory through [`GuestPhys`], so it is testable without a VM.
//!
//! bhyveload drives it through [`Interp`]: `Interp::new`, `read_conf`, then
//! either `autoboot`-style `exec("boot", mem)` or a prompt loop feeding each
//! line to `exec`.  A successful boot returns a [`Handoff`] holding the
//! register values to pass to `vm_setup_freebsd_registers`.

pub mod autoboot;
pub mod conf;
pub mod elf;
pub mod env;
mod error;
pub mod handoff;
pub mod howto;
pub mod interp;
pub mod loader;
pub mod metadata;
pub mod rootmount;

pub use autoboot::Autoboot;
pub use env::Env;
pub use error::Error;
pub use handoff::Handoff;
pub use interp::{Action, BootParams, Console, Interp};
pub use loader::{LoadedFile, MemLimits};

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

/// The loader's page size (`PAGE_SIZE` on amd64).
pub const PAGE_SIZE: u64 = 4096;

/// `roundup(x, align)` with overflow reported as `None`; `align` 0 acts as 1
/// (a section with `sh_addralign` 0 has no alignment constraint).
pub(crate) fn roundup(x: u64, align: u64) -> Option<u64> {
    if align <= 1 {
        return Some(x);
    }
    let r = x % align;
    if r == 0 {
        Some(x)
    } else {
        x.checked_add(align - r)
    }
}
