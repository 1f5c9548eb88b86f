//! bhyve's CPUID policy (sys/amd64/vmm/x86.c; bhyve-platform.md §7.1),
//! applied to the leaves KVM says it supports.
//!
//! Note: this host's nested KVM does not honour KVM_SET_CPUID2 for leaves 1
//! and 7 (the guest sees the host's bits); the table is still set so a
//! conforming KVM shows bhyve's view.
//!
//! PKU (leaf 7 ECX bits 3, 4) is never offered, as in bhyve.  SMAP can be
//! hidden as well ([`CpuidOpts::hide_smap`]) when CLAC/STAC cannot run in
//! a guest on this host ([`crate::probe`]).

use kvm_bindings::kvm_cpuid_entry2;

/// vCPU topology (`-c cpus,sockets,cores,threads`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topology {
    pub sockets: u32,
    pub cores: u32,
    pub threads: u32,
}

impl Default for Topology {
    /// bhyve's default: every vCPU is its own package.
    fn default() -> Self {
        Topology {
            sockets: 1,
            cores: 1,
            threads: 1,
        }
    }
}

/// Options that change the table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuidOpts {
    pub topology: Topology,
    pub x2apic: bool,
    /// Clear SMAP (leaf 7 EBX bit 20): guests then never run CLAC/STAC.
    pub hide_smap: bool,
}

pub const BHYVE_SIGNATURE: &[u8; 12] = b"bhyve bhyve ";
const MAX_HV_LEAF: u32 = 0x4000_0001;

fn bits(list: &[u32]) -> u32 {
    list.iter().fold(0, |a, b| a | (1 << b))
}

/// Rewrite KVM's supported table into the table vCPU `vcpu_id` sees.
pub fn bhyve_cpuid(
    supported: &[kvm_cpuid_entry2],
    vcpu_id: u32,
    o: CpuidOpts,
) -> Vec<kvm_cpuid_entry2> {
    let t = o.topology;
    let threads = t.threads.max(1);
    let cores = t.cores.max(1);
    let logical = threads * cores;
    let mut out: Vec<kvm_cpuid_entry2> = Vec::with_capacity(supported.len() + 2);
    for e in supported {
        let mut e = *e;
        match e.function {
            // KVM's own paravirt leaves are replaced by bhyve's below.
            0x4000_0000..=0x4fff_ffff => continue,
            1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | (vcpu_id << 24) | ((logical & 0xff) << 16);
                // VMX, EST, TM2, SMX, MONITOR, PDCM, TSC_DEADLINE off.
                e.ecx &= !bits(&[5, 7, 8, 6, 3, 15, 24]);
                e.ecx |= 1 << 31; // hypervisor present
                if o.x2apic {
                    e.ecx |= 1 << 21;
                } else {
                    e.ecx &= !(1 << 21);
                }
                // ACPI thermal, TM, DS off; MCA, MCE, MTRR, HTT on.
                e.edx &= !bits(&[22, 29, 21]);
                e.edx |= bits(&[14, 7, 12, 28]);
            }
            4 => {
                let level = (e.eax >> 5) & 7;
                let share = if level >= 3 { logical - 1 } else { threads - 1 };
                e.eax = (e.eax & 0x3fff) | ((cores - 1) << 26) | ((share & 0xfff) << 14);
            }
            6 => {
                e.eax &= 1 << 2; // ARAT only
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            7 => {
                if e.index == 0 {
                    let ebx_ok = bits(&[
                        0, 3, 4, 5, 7, 8, 9, 10, 11, 16, 17, 18, 20, 26, 27, 28, 29, 30, 31,
                    ]);
                    e.eax = 0;
                    e.ebx &= ebx_ok;
                    if o.hide_smap {
                        e.ebx &= !(1 << 20);
                    }
                    e.ecx &= bits(&[9, 10, 22]);
                    e.edx &= 1 << 10;
                } else {
                    e.eax = 0;
                    e.ebx = 0;
                    e.ecx = 0;
                    e.edx = 0;
                }
            }
            0xa | 0xf | 0x10 | 0x15 => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            0xb => {
                let (shift, count, kind) = match e.index {
                    0 => (ceil_log2(threads), threads, 1),
                    1 => (ceil_log2(logical), logical, 2),
                    _ => (0, 0, 0),
                };
                e.eax = shift;
                e.ebx = count;
                e.ecx = if kind == 0 {
                    e.index
                } else {
                    (kind << 8) | e.index
                };
                e.edx = vcpu_id;
            }
            0x8000_0001 => {
                // SVM, OSVW, IBS, NODE_ID, PCXC, PNXC, PTSCEL2I, MWAITX off.
                e.ecx &= !bits(&[2, 9, 10, 19, 23, 24, 28, 29]);
            }
            0x8000_0007 => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx &= 1 << 8; // invariant TSC
            }
            _ => {}
        }
        out.push(e);
    }
    let sig = |i: usize| {
        u32::from_le_bytes([
            BHYVE_SIGNATURE[i],
            BHYVE_SIGNATURE[i + 1],
            BHYVE_SIGNATURE[i + 2],
            BHYVE_SIGNATURE[i + 3],
        ])
    };
    out.push(kvm_cpuid_entry2 {
        function: 0x4000_0000,
        eax: MAX_HV_LEAF,
        ebx: sig(0),
        ecx: sig(4),
        edx: sig(8),
        ..Default::default()
    });
    // Leaf 0x40000001 EAX bit 0 (extended MSI destination ID) stays clear:
    // KVM's in-kernel IO-APIC does not implement bhyve's extension.
    out.push(kvm_cpuid_entry2 {
        function: MAX_HV_LEAF,
        ..Default::default()
    });
    out
}

fn ceil_log2(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(f: u32, i: u32, a: u32, b: u32, c: u32, d: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function: f,
            index: i,
            eax: a,
            ebx: b,
            ecx: c,
            edx: d,
            ..Default::default()
        }
    }

    fn find(v: &[kvm_cpuid_entry2], f: u32, i: u32) -> kvm_cpuid_entry2 {
        *v.iter().find(|e| e.function == f && e.index == i).unwrap()
    }

    #[test]
    fn shapes_like_bhyve() {
        let sup = vec![
            leaf(1, 0, 0x906ea, 0x0010_0800, 0xffff_ffff, 0xffff_ffff),
            leaf(6, 0, 0xffff, 1, 1, 1),
            leaf(7, 0, 2, 0xffff_ffff, 0xffff_ffff, 0xffff_ffff),
            leaf(0xa, 0, 7, 7, 7, 7),
            leaf(0x4000_0000, 0, 0x4000_0001, 0x4b4d_564b, 0x564b_4d56, 0x4d),
            leaf(0x8000_0001, 0, 0, 0, 0xffff_ffff, 0xffff_ffff),
        ];
        let v = bhyve_cpuid(&sup, 3, CpuidOpts::default());
        let l1 = find(&v, 1, 0);
        assert_eq!(l1.ebx >> 24, 3, "APIC id");
        assert_eq!((l1.ebx >> 16) & 0xff, 1);
        assert_eq!(l1.ecx & (1 << 5), 0, "no VMX");
        assert_ne!(l1.ecx & (1 << 31), 0, "hypervisor bit");
        assert_eq!(l1.ecx & (1 << 21), 0, "xAPIC by default");
        assert_eq!(l1.edx & (1 << 22), 0);
        assert_eq!(find(&v, 6, 0).eax, 4);
        let l7 = find(&v, 7, 0);
        assert_eq!(l7.eax, 0);
        assert_eq!(l7.ecx & (1 << 16), 0, "LA57 hidden");
        assert_eq!(l7.ebx & (1 << 1), 0);
        assert_eq!(find(&v, 0xa, 0).eax, 0);
        let hv = find(&v, 0x4000_0000, 0);
        let mut s = Vec::new();
        for r in [hv.ebx, hv.ecx, hv.edx] {
            s.extend_from_slice(&r.to_le_bytes());
        }
        assert_eq!(&s, BHYVE_SIGNATURE);
        assert_eq!(hv.eax, 0x4000_0001);
        assert_eq!(v.iter().filter(|e| e.function == 0x4000_0000).count(), 1);
        assert_eq!(find(&v, 0x8000_0001, 0).ecx & (1 << 2), 0, "no SVM");
        let x = bhyve_cpuid(
            &sup,
            0,
            CpuidOpts {
                x2apic: true,
                ..Default::default()
            },
        );
        assert_ne!(find(&x, 1, 0).ecx & (1 << 21), 0);
    }

    #[test]
    fn smap_shown_or_hidden_pku_never() {
        let sup = vec![leaf(7, 0, 0, 0xffff_ffff, 0xffff_ffff, 0)];
        let shown = find(&bhyve_cpuid(&sup, 0, CpuidOpts::default()), 7, 0);
        assert_ne!(shown.ebx & (1 << 20), 0, "SMAP offered by default");
        assert_eq!(shown.ecx & 0b11000, 0, "PKU, OSPKE never");
        let hide = CpuidOpts {
            hide_smap: true,
            ..Default::default()
        };
        let hidden = find(&bhyve_cpuid(&sup, 0, hide), 7, 0);
        assert_eq!(hidden.ebx, shown.ebx & !(1 << 20), "only SMAP goes");
        assert_eq!(hidden.ecx, shown.ecx);
    }

    #[test]
    fn log2() {
        assert_eq!(ceil_log2(1), 0);
        assert_eq!(ceil_log2(2), 1);
        assert_eq!(ceil_log2(3), 2);
        assert_eq!(ceil_log2(4), 2);
    }
}
