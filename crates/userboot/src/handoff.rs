//! The amd64 handoff written by userboot's `elf64_exec` (§1.4, §2): boot
//! stack, identity + KERNBASE page tables over the first GiB, the GDT, and
//! the register state bhyveload passes to `vm_setup_freebsd_registers`.

use crate::{GuestMemError, GuestPhys, PAGE_SIZE};

pub const STACK_PAGE: u64 = 0x1000;
pub const PML4: u64 = 0x2000;
pub const PDPT: u64 = 0x3000;
pub const PD: u64 = 0x4000;
pub const GDT: u64 = 0x5000;
/// Three descriptors, `size - 1`.
pub const GDT_LIMIT: u16 = 23;

const PG_V: u64 = 0x1;
const PG_RW: u64 = 0x2;
const PG_PS: u64 = 0x80;

pub const CR0_PE: u64 = 0x1;
pub const CR0_NE: u64 = 0x20;
pub const CR0_PG: u64 = 0x8000_0000;
pub const CR4_PAE: u64 = 0x20;
pub const EFER_LME: u64 = 0x100;
pub const EFER_LMA: u64 = 0x400;

/// Register state and boot parameters for the BSP.  bhyveload calls
/// `vm_setup_freebsd_registers(vcpu, entry, cr3, gdt_base, rsp)`, which sets
/// CR0/CR4/EFER and the flat segments itself; those values are here too so
/// a KVM backend can set them directly (CR4 has PAE only: userboot asks for
/// VMXE as well, which libvmmapi drops and KVM would reject).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handoff {
    /// RIP: the ELF entry point (`btext`, a KERNBASE address).
    pub entry: u64,
    pub rsp: u64,
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    pub gdt_base: u64,
    pub gdt_limit: u16,
    pub rflags: u64,
    /// Physical address of the preload metadata.
    pub modulep: u64,
    /// First byte the kernel may allocate (page aligned).
    pub kernend: u64,
    /// Physical address of the kenv block.
    pub envp: u64,
    pub howto: u32,
}

impl Handoff {
    pub fn new(entry: u64, modulep: u64, kernend: u64, envp: u64, howto: u32) -> Self {
        Handoff {
            entry,
            rsp: STACK_PAGE,
            cr0: CR0_PG | CR0_NE | CR0_PE,
            cr3: PML4,
            cr4: CR4_PAE,
            efer: EFER_LMA | EFER_LME,
            gdt_base: GDT,
            gdt_limit: GDT_LIMIT,
            rflags: 0x2,
            modulep,
            kernend,
            envp,
            howto,
        }
    }
}

/// The stack page: u32 0, u32 modulep, u32 kernend, zeros.  Both values
/// were checked to be below 1 GiB, so they fit.
pub fn stack_page(modulep: u64, kernend: u64) -> Vec<u8> {
    let mut page = vec![0u8; PAGE_SIZE as usize];
    page[4..8].copy_from_slice(&(modulep as u32).to_le_bytes());
    page[8..12].copy_from_slice(&(kernend as u32).to_le_bytes());
    page
}

/// PML4, PDPT and PD (three pages from `PML4`): every PML4 and PDPT entry
/// points to the single next-level table, the PD maps 512 × 2 MiB, so every
/// VA maps to `VA & 0x3fff_ffff`.
pub fn page_tables() -> Vec<u8> {
    let mut t = Vec::with_capacity(3 * PAGE_SIZE as usize);
    for _ in 0..512 {
        t.extend_from_slice(&(PDPT | PG_V | PG_RW).to_le_bytes());
    }
    for _ in 0..512 {
        t.extend_from_slice(&(PD | PG_V | PG_RW).to_le_bytes());
    }
    for i in 0..512u64 {
        t.extend_from_slice(&((i << 21) | PG_V | PG_RW | PG_PS).to_le_bytes());
    }
    t
}

/// Null, 64-bit code (0x08), data (0x10).
pub fn gdt() -> [u8; 24] {
    let mut g = [0u8; 24];
    g[8..16].copy_from_slice(&0x0020_9800_0000_0000u64.to_le_bytes());
    g[16..24].copy_from_slice(&0x0000_9000_0000_0000u64.to_le_bytes());
    g
}

/// Write the stack page, page tables and GDT.
pub fn write_low_pages(
    mem: &mut dyn GuestPhys,
    modulep: u64,
    kernend: u64,
) -> Result<(), GuestMemError> {
    mem.copyin(STACK_PAGE, &stack_page(modulep, kernend))?;
    mem.copyin(PML4, &page_tables())?;
    mem.copyin(GDT, &gdt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_translate_kernbase_and_identity() {
        let t = page_tables();
        let entry = |table: usize, i: usize| {
            u64::from_le_bytes(t[table * 4096 + i * 8..][..8].try_into().unwrap())
        };
        // Walk KERNSTART = KERNBASE + 2 MiB: PML4[511] → PDPT[510] → PD[1].
        assert_eq!(entry(0, 511), 0x3003);
        assert_eq!(entry(1, 510), 0x4003);
        assert_eq!(entry(2, 1), 0x200083);
        assert_eq!(entry(2, 511), (511 << 21) | 0x83);
        assert_eq!(entry(0, 0), 0x3003);
        let h = Handoff::new(0xffffffff80200000, 0x1000000, 0x1002000, 0, 0);
        assert_eq!(
            (h.cr0, h.cr3, h.cr4, h.efer, h.rsp, h.gdt_base),
            (0x80000021, 0x2000, 0x20, 0x500, 0x1000, 0x5000)
        );
        let s = stack_page(0x1234000, 0x1236000);
        assert_eq!(&s[..12], &[0, 0, 0, 0, 0, 0x40, 0x23, 1, 0, 0x60, 0x23, 1]);
        assert!(s[12..].iter().all(|&b| b == 0));
    }
}
