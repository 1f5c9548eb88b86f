//! Guest memory as the loader sees it: bhyveload's `copyin` / `copyout`
//! callbacks. Unlike userboot's, an address outside RAM is an error rather
//! than a silently lost copy.

use userboot::{GuestMemError, GuestPhys};
use vmmapi::MemLayout;
use vmmapi::vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

#[derive(Debug)]
pub struct GuestMem {
    layout: MemLayout,
    mem: GuestMemoryMmap,
}

impl GuestMem {
    pub fn new(layout: MemLayout, mem: GuestMemoryMmap) -> GuestMem {
        GuestMem { layout, mem }
    }

    fn check(&self, gpa: u64, len: usize) -> Result<(), GuestMemError> {
        let len = len as u64;
        match self.layout.gpa_to_offset(gpa, len) {
            Some(_) => Ok(()),
            None => Err(GuestMemError { gpa, len }),
        }
    }
}

impl GuestPhys for GuestMem {
    fn lowmem(&self) -> u64 {
        self.layout.lowmem
    }

    fn highmem(&self) -> u64 {
        self.layout.highmem
    }

    fn copyin(&mut self, gpa: u64, data: &[u8]) -> Result<(), GuestMemError> {
        self.check(gpa, data.len())?;
        self.mem
            .write_slice(data, GuestAddress(gpa))
            .map_err(|_| GuestMemError {
                gpa,
                len: data.len() as u64,
            })
    }

    fn copyout(&self, gpa: u64, data: &mut [u8]) -> Result<(), GuestMemError> {
        self.check(gpa, data.len())?;
        self.mem
            .read_slice(data, GuestAddress(gpa))
            .map_err(|_| GuestMemError {
                gpa,
                len: data.len() as u64,
            })
    }
}
