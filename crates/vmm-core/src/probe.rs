//! What this host's KVM can run in a guest, found by running a throwaway
//! one-vCPU VM: 64-bit ring 0 (the mode a kernel runs CLAC/STAC in) on
//! 32 KiB of memory executing `stac; clac; out 0x80, al; hlt`.  If KVM
//! reaches the OUT, it ran both instructions; an emulation failure (or any
//! other exit) means it did not, and the guest is better off without SMAP:
//! [`crate::inst_emul`] would complete every CLAC/STAC, but each costs a
//! trip to user space.

use std::time::{Duration, Instant};

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::{Kvm, VcpuExit};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::error::{Error, Result};
use crate::vcpu_state::VcpuState;
use crate::vm::{kvm_err, load_state};

/// What the probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostProbe {
    /// KVM ran CLAC and STAC in a 64-bit ring-0 guest itself.
    pub clac_stac: bool,
    /// How long the probe took (VM creation included).
    pub took: Duration,
}

const MEM: usize = 0x8000;
const PML4: u64 = 0x1000;
const CODE: u64 = 0x4000;
const GDT: u64 = 0x5000;
/// stac; clac; out 0x80, al; hlt
const PROGRAM: [u8; 9] = [0x0f, 0x01, 0xcb, 0x0f, 0x01, 0xca, 0xe6, 0x80, 0xf4];

/// Run the probe (a few milliseconds).
pub fn probe_host() -> Result<HostProbe> {
    let t = Instant::now();
    let kvm = Kvm::new().map_err(Error::NoKvm)?;
    let vm = kvm.create_vm().map_err(kvm_err("probe: creating VM"))?;
    // As for every VM: needed before a VMX vCPU may sit in real mode.
    vm.set_tss_address(0xfffb_d000)
        .map_err(kvm_err("probe: setting TSS address"))?;
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM)]).map_err(|e| {
        Error::Probe {
            what: "allocating memory",
            why: e.to_string(),
        }
    })?;
    // PML4 -> PDPT -> PD, one 2 MiB identity page at 0.
    let tables: [(u64, u64); 3] = [(PML4, 0x2000 | 3), (0x2000, 0x3000 | 3), (0x3000, 0x83)];
    tables
        .iter()
        .try_for_each(|&(at, entry)| mem.write_obj(entry, GuestAddress(at)))
        .and_then(|()| mem.write_slice(&PROGRAM, GuestAddress(CODE)))
        .map_err(|e| Error::Probe {
            what: "writing the probe guest",
            why: e.to_string(),
        })?;
    // SAFETY: `mem` outlives the VM (dropped after it, at the end of this
    // function).
    unsafe { crate::vm::map_memory(&vm, &mem, "probe: mapping memory")? };
    let mut vcpu = vm.create_vcpu(0).map_err(kvm_err("probe: creating vCPU"))?;
    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("probe: reading supported CPUID"))?;
    vcpu.set_cpuid2(&cpuid)
        .map_err(kvm_err("probe: setting CPUID"))?;
    let mut st = VcpuState::default();
    st.setup_freebsd(CODE, PML4, GDT, MEM as u64);
    load_state(&vcpu, &st)?;
    let clac_stac = matches!(
        vcpu.run().map_err(kvm_err("probe: KVM_RUN"))?,
        VcpuExit::IoOut(0x80, _)
    );
    drop(vcpu);
    drop(vm);
    Ok(HostProbe {
        clac_stac,
        took: t.elapsed(),
    })
}
