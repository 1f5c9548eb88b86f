//! bhyve: the device model and machine that run a vmm instance.
pub mod bhyverun;
pub mod bus;
pub mod config;
pub mod devices;
pub mod inout;
pub mod mem;
pub mod term;
