//! bhyve: the device model and machine that run a vmm instance.
pub mod bus;
