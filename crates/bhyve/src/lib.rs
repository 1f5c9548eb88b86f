//! bhyve: the device model and machine that run a vmm instance.
pub mod acpi;
pub mod atkbdc;
pub mod bhyverun;
pub mod bus;
pub mod config;
pub mod devices;
pub mod inout;
pub mod mem;
pub mod mptbl;
pub mod pci_lpc;
pub mod pm;
pub mod post;
pub mod term;
pub mod uart_backend;
pub mod uart_emul;
