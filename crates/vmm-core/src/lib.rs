//! vmm-core: the vmm.ko analogue.
pub mod io;
