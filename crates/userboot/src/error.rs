//! The crate's error type.  Every variant names the object it is about (file
//! path, module name, command) so bhyveload can print it as is.

use crate::GuestMemError;
use crate::elf::ElfError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Fs(#[from] libsa::Error),
    #[error(transparent)]
    Elf(#[from] ElfError),
    #[error(transparent)]
    GuestMem(#[from] GuestMemError),
    /// `file_search` / `mod_searchmodule` found nothing.
    #[error("can't find '{name}'")]
    NotFound { name: String },
    #[error("{path}: kernel already loaded")]
    KernelAlreadyLoaded { path: String },
    #[error("{path}: can't load before the kernel")]
    NoKernel { path: String },
    #[error("no kernel loaded and none could be loaded")]
    NoBootableKernel,
    #[error("failed to load kernel '{name}'")]
    KernelLoadFailed { name: String },
    /// A module's `MODULE_DEPEND` could not be satisfied.
    #[error("{module}: required module '{dependency}' could not be loaded: {source}")]
    Dependency {
        module: String,
        dependency: String,
        source: Box<Error>,
    },
    #[error("{module}: required module '{dependency}' exists but with wrong version")]
    DependencyVersion { module: String, dependency: String },
    /// Something the loader would place does not fit below `lowmem`.
    #[error(
        "guest memory too small: {what} would end at {end:#x} but low memory ends at {limit:#x}"
    )]
    MemoryTooSmall { what: String, end: u64, limit: u64 },
    /// The boot page tables map only the first GiB (§1.6).
    #[error("{what} would end at {end:#x}, beyond the first GiB the boot page tables map")]
    Beyond1G { what: String, end: u64 },
    #[error("{cmd}: {msg}")]
    Usage { cmd: String, msg: String },
    #[error("{0}: unknown command")]
    UnknownCommand(String),
    #[error("{path}: include nested too deeply")]
    IncludeDepth { path: String },
    #[error("{path}:{line}: {source}")]
    Include {
        path: String,
        line: usize,
        source: Box<Error>,
    },
    #[error("{path}: not a text file")]
    NotText { path: String },
    #[error("boot is not allowed from {context}")]
    BootNotAllowed { context: String },
}
