//! vmm-core: the vmm.ko analogue.
//!
//! FreeBSD keeps each VM in the kernel, apart from any process.  KVM ties a VM
//! to the process that created it, so here an *instance* lives in the file
//! system ([`instance`]): its memory is a shared file, its vCPU state and run
//! state a small JSON file.  The process that runs a guest builds a KVM VM
//! from the instance ([`vm`]), runs vCPUs with bhyve-style exits, and writes
//! the final state back.  [`io`] holds the timers vmm.ko emulates and KVM
//! lacks; [`inst_emul`] completes the instructions KVM may refuse.
pub mod cpuid;
pub mod ctl;
pub mod error;
pub mod inst_emul;
pub mod instance;
pub mod io;
pub mod mem;
pub mod name;
pub mod probe;
pub mod vcpu_state;
pub mod vm;

pub use error::{Error, Result};
pub use vmm_sys_util::eventfd::EventFd;
