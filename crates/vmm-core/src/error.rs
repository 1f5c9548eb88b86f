//! vmm-core's error type. Every variant names the instance or object involved.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid VM name {name:?}: {why}")]
    BadName { name: String, why: &'static str },
    #[error("VM {name} already exists")]
    Exists { name: String },
    #[error("no VM named {name}")]
    NoSuchVm { name: String },
    #[error("VM {name} is running (pid {pid})")]
    Busy { name: String, pid: u32 },
    #[error("VM {name}: {what}: {source}")]
    Io {
        name: String,
        what: String,
        source: io::Error,
    },
    #[error("VM {name}: corrupt instance state: {why}")]
    CorruptState { name: String, why: String },
    #[error("invalid memory size {size:#x}: {why}")]
    BadMemSize { size: u64, why: &'static str },
    #[error("VM {name} has no memory; set it up first (bhyveload -m, or bhyvectl --set-mem)")]
    NoMemory { name: String },
    #[error("guest-physical range {gpa:#x}+{len:#x} is not guest memory")]
    BadGpa { gpa: u64, len: u64 },
    #[error("vcpu {vcpu} out of range (VM has at most {max})")]
    BadVcpu { vcpu: usize, max: usize },
    #[error("KVM: {what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("/dev/kvm is not available ({0}); bhyve-rs needs KVM")]
    NoKvm(kvm_ioctls::Error),
    #[error("host probe: {what}: {why}")]
    Probe { what: &'static str, why: String },
    #[error("VM {name}: control channel: {why}")]
    Ctl { name: String, why: String },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(name: &str, what: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            name: name.to_string(),
            what: what.into(),
            source,
        }
    }
}
