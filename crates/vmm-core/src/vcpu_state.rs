//! The saved architectural state of one vCPU, as an instance keeps it between
//! processes: what bhyveload sets, what bhyve loads into KVM and writes back
//! when it stops, and what bhyvectl shows.  Register names follow bhyvectl.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A segment descriptor in bhyve's (VMX access-rights) layout:
/// bits 3:0 type, 4 S, 6:5 DPL, 7 P, 12 AVL, 13 L, 14 D/B, 15 G, 16 unusable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegDesc {
    pub base: u64,
    pub limit: u32,
    pub access: u32,
}

/// Access-rights bit: segment unusable.
pub const DESC_UNUSABLE: u32 = 1 << 16;

/// A segment register: visible selector plus hidden descriptor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    pub sel: u16,
    pub desc: SegDesc,
}

/// Registers addressable by `vm_get_register` / `vm_set_register`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VmReg {
    Rax,
    Rbx,
    Rcx,
    Rdx,
    Rsi,
    Rdi,
    Rbp,
    Rsp,
    R8,
    R9,
    R10,
    R11,
    R12,
    R13,
    R14,
    R15,
    Rip,
    Rflags,
    Cr0,
    Cr2,
    Cr3,
    Cr4,
    Dr0,
    Dr1,
    Dr2,
    Dr3,
    Dr6,
    Dr7,
    Efer,
    /// Segment selectors.
    Cs,
    Ds,
    Es,
    Fs,
    Gs,
    Ss,
    Tr,
    Ldtr,
}

impl VmReg {
    /// Every register, in bhyvectl's `--get-all` order.
    pub const ALL: [VmReg; 37] = [
        VmReg::Cr0,
        VmReg::Cr2,
        VmReg::Cr3,
        VmReg::Cr4,
        VmReg::Dr0,
        VmReg::Dr1,
        VmReg::Dr2,
        VmReg::Dr3,
        VmReg::Dr6,
        VmReg::Dr7,
        VmReg::Rsp,
        VmReg::Rip,
        VmReg::Rax,
        VmReg::Rbx,
        VmReg::Rcx,
        VmReg::Rdx,
        VmReg::Rsi,
        VmReg::Rdi,
        VmReg::Rbp,
        VmReg::R8,
        VmReg::R9,
        VmReg::R10,
        VmReg::R11,
        VmReg::R12,
        VmReg::R13,
        VmReg::R14,
        VmReg::R15,
        VmReg::Rflags,
        VmReg::Efer,
        VmReg::Cs,
        VmReg::Ds,
        VmReg::Es,
        VmReg::Fs,
        VmReg::Gs,
        VmReg::Ss,
        VmReg::Tr,
        VmReg::Ldtr,
    ];

    /// bhyvectl's name (`--get-<name>`).
    pub fn name(self) -> &'static str {
        use VmReg::*;
        match self {
            Rax => "rax",
            Rbx => "rbx",
            Rcx => "rcx",
            Rdx => "rdx",
            Rsi => "rsi",
            Rdi => "rdi",
            Rbp => "rbp",
            Rsp => "rsp",
            R8 => "r8",
            R9 => "r9",
            R10 => "r10",
            R11 => "r11",
            R12 => "r12",
            R13 => "r13",
            R14 => "r14",
            R15 => "r15",
            Rip => "rip",
            Rflags => "rflags",
            Cr0 => "cr0",
            Cr2 => "cr2",
            Cr3 => "cr3",
            Cr4 => "cr4",
            Dr0 => "dr0",
            Dr1 => "dr1",
            Dr2 => "dr2",
            Dr3 => "dr3",
            Dr6 => "dr6",
            Dr7 => "dr7",
            Efer => "efer",
            Cs => "cs",
            Ds => "ds",
            Es => "es",
            Fs => "fs",
            Gs => "gs",
            Ss => "ss",
            Tr => "tr",
            Ldtr => "ldtr",
        }
    }

    pub fn from_name(s: &str) -> Option<VmReg> {
        VmReg::ALL.iter().copied().find(|r| r.name() == s)
    }

    pub fn is_selector(self) -> bool {
        self.seg().is_some()
    }

    /// The descriptor register a selector belongs to.
    pub fn seg(self) -> Option<SegReg> {
        Some(match self {
            VmReg::Cs => SegReg::Cs,
            VmReg::Ds => SegReg::Ds,
            VmReg::Es => SegReg::Es,
            VmReg::Fs => SegReg::Fs,
            VmReg::Gs => SegReg::Gs,
            VmReg::Ss => SegReg::Ss,
            VmReg::Tr => SegReg::Tr,
            VmReg::Ldtr => SegReg::Ldtr,
            _ => return None,
        })
    }
}

/// Descriptors addressable by `vm_get_desc` / `vm_set_desc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SegReg {
    Cs,
    Ds,
    Es,
    Fs,
    Gs,
    Ss,
    Tr,
    Ldtr,
    Gdtr,
    Idtr,
}

impl SegReg {
    pub const ALL: [SegReg; 10] = [
        SegReg::Ds,
        SegReg::Es,
        SegReg::Fs,
        SegReg::Gs,
        SegReg::Cs,
        SegReg::Ss,
        SegReg::Tr,
        SegReg::Ldtr,
        SegReg::Gdtr,
        SegReg::Idtr,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SegReg::Cs => "cs",
            SegReg::Ds => "ds",
            SegReg::Es => "es",
            SegReg::Fs => "fs",
            SegReg::Gs => "gs",
            SegReg::Ss => "ss",
            SegReg::Tr => "tr",
            SegReg::Ldtr => "ldtr",
            SegReg::Gdtr => "gdtr",
            SegReg::Idtr => "idtr",
        }
    }

    pub fn from_name(s: &str) -> Option<SegReg> {
        SegReg::ALL.iter().copied().find(|r| r.name() == s)
    }
}

/// MSRs a long-mode guest needs carried across processes.
pub mod msr {
    pub const EFER: u32 = 0xc000_0080;
    pub const STAR: u32 = 0xc000_0081;
    pub const LSTAR: u32 = 0xc000_0082;
    pub const CSTAR: u32 = 0xc000_0083;
    pub const SFMASK: u32 = 0xc000_0084;
    pub const FS_BASE: u32 = 0xc000_0100;
    pub const GS_BASE: u32 = 0xc000_0101;
    pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
    pub const TSC_AUX: u32 = 0xc000_0103;
    pub const SYSENTER_CS: u32 = 0x174;
    pub const SYSENTER_ESP: u32 = 0x175;
    pub const SYSENTER_EIP: u32 = 0x176;
    pub const PAT: u32 = 0x277;
    pub const APIC_BASE: u32 = 0x1b;
    /// Saved and restored besides EFER (which lives in sregs under KVM).
    pub const SAVED: [u32; 9] = [
        STAR,
        LSTAR,
        CSTAR,
        SFMASK,
        KERNEL_GS_BASE,
        SYSENTER_CS,
        SYSENTER_ESP,
        SYSENTER_EIP,
        PAT,
    ];
}

/// The architectural state of one vCPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuState {
    /// rax, rbx, rcx, rdx, rsi, rdi, rbp, rsp, r8..r15.
    pub gprs: [u64; 16],
    pub rip: u64,
    pub rflags: u64,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub dr: [u64; 6],
    pub efer: u64,
    pub cs: Segment,
    pub ds: Segment,
    pub es: Segment,
    pub fs: Segment,
    pub gs: Segment,
    pub ss: Segment,
    pub tr: Segment,
    pub ldtr: Segment,
    pub gdtr: SegDesc,
    pub idtr: SegDesc,
    /// Other MSRs by index (see [`msr::SAVED`]).
    pub msrs: BTreeMap<u32, u64>,
}

impl Default for VcpuState {
    /// The x86 power-on state (Intel SDM vol. 3 table 9-1), which is also
    /// what a fresh bhyve vCPU reports.
    fn default() -> Self {
        let data = Segment {
            sel: 0,
            desc: SegDesc {
                base: 0,
                limit: 0xffff,
                access: 0x93,
            },
        };
        let mut msrs = BTreeMap::new();
        msrs.insert(msr::PAT, 0x0007_0406_0007_0406);
        VcpuState {
            gprs: [0; 16],
            rip: 0xfff0,
            rflags: 0x2,
            cr0: 0x6000_0010,
            cr2: 0,
            cr3: 0,
            cr4: 0,
            dr: [0, 0, 0, 0, 0xffff_0ff0, 0x400],
            efer: 0,
            cs: Segment {
                sel: 0xf000,
                desc: SegDesc {
                    base: 0xffff_0000,
                    limit: 0xffff,
                    access: 0x9b,
                },
            },
            ds: data,
            es: data,
            fs: data,
            gs: data,
            ss: data,
            tr: Segment {
                sel: 0,
                desc: SegDesc {
                    base: 0,
                    limit: 0xffff,
                    access: 0x8b,
                },
            },
            ldtr: Segment {
                sel: 0,
                desc: SegDesc {
                    base: 0,
                    limit: 0xffff,
                    access: 0x82,
                },
            },
            gdtr: SegDesc {
                base: 0,
                limit: 0xffff,
                access: 0,
            },
            idtr: SegDesc {
                base: 0,
                limit: 0xffff,
                access: 0,
            },
            msrs,
        }
    }
}

impl VcpuState {
    pub fn get(&self, reg: VmReg) -> u64 {
        use VmReg::*;
        match reg {
            Rax | Rbx | Rcx | Rdx | Rsi | Rdi | Rbp | Rsp | R8 | R9 | R10 | R11 | R12 | R13
            | R14 | R15 => self.gprs[gpr_index(reg)],
            Rip => self.rip,
            Rflags => self.rflags,
            Cr0 => self.cr0,
            Cr2 => self.cr2,
            Cr3 => self.cr3,
            Cr4 => self.cr4,
            Dr0 => self.dr[0],
            Dr1 => self.dr[1],
            Dr2 => self.dr[2],
            Dr3 => self.dr[3],
            Dr6 => self.dr[4],
            Dr7 => self.dr[5],
            Efer => self.efer,
            Cs => self.cs.sel.into(),
            Ds => self.ds.sel.into(),
            Es => self.es.sel.into(),
            Fs => self.fs.sel.into(),
            Gs => self.gs.sel.into(),
            Ss => self.ss.sel.into(),
            Tr => self.tr.sel.into(),
            Ldtr => self.ldtr.sel.into(),
        }
    }

    /// Set a register; selectors take the low 16 bits.
    pub fn set(&mut self, reg: VmReg, val: u64) {
        use VmReg::*;
        let sel = val as u16;
        match reg {
            Rax | Rbx | Rcx | Rdx | Rsi | Rdi | Rbp | Rsp | R8 | R9 | R10 | R11 | R12 | R13
            | R14 | R15 => self.gprs[gpr_index(reg)] = val,
            Rip => self.rip = val,
            Rflags => self.rflags = val,
            Cr0 => self.cr0 = val,
            Cr2 => self.cr2 = val,
            Cr3 => self.cr3 = val,
            Cr4 => self.cr4 = val,
            Dr0 => self.dr[0] = val,
            Dr1 => self.dr[1] = val,
            Dr2 => self.dr[2] = val,
            Dr3 => self.dr[3] = val,
            Dr6 => self.dr[4] = val,
            Dr7 => self.dr[5] = val,
            Efer => self.efer = val,
            Cs => self.cs.sel = sel,
            Ds => self.ds.sel = sel,
            Es => self.es.sel = sel,
            Fs => self.fs.sel = sel,
            Gs => self.gs.sel = sel,
            Ss => self.ss.sel = sel,
            Tr => self.tr.sel = sel,
            Ldtr => self.ldtr.sel = sel,
        }
    }

    pub fn desc(&self, seg: SegReg) -> SegDesc {
        match seg {
            SegReg::Cs => self.cs.desc,
            SegReg::Ds => self.ds.desc,
            SegReg::Es => self.es.desc,
            SegReg::Fs => self.fs.desc,
            SegReg::Gs => self.gs.desc,
            SegReg::Ss => self.ss.desc,
            SegReg::Tr => self.tr.desc,
            SegReg::Ldtr => self.ldtr.desc,
            SegReg::Gdtr => self.gdtr,
            SegReg::Idtr => self.idtr,
        }
    }

    pub fn set_desc(&mut self, seg: SegReg, d: SegDesc) {
        match seg {
            SegReg::Cs => self.cs.desc = d,
            SegReg::Ds => self.ds.desc = d,
            SegReg::Es => self.es.desc = d,
            SegReg::Fs => self.fs.desc = d,
            SegReg::Gs => self.gs.desc = d,
            SegReg::Ss => self.ss.desc = d,
            SegReg::Tr => self.tr.desc = d,
            SegReg::Ldtr => self.ldtr.desc = d,
            SegReg::Gdtr => self.gdtr = d,
            SegReg::Idtr => self.idtr = d,
        }
    }

    /// `vm_setup_freebsd_registers`: the long-mode entry state FreeBSD's
    /// loader hands the kernel (freebsd-boot-abi.md §2.4).
    pub fn setup_freebsd(&mut self, rip: u64, cr3: u64, gdtbase: u64, rsp: u64) {
        // GUEST_GDTR_LIMIT64: three descriptors.
        let gdtr = SegDesc {
            base: gdtbase,
            limit: 3 * 8 - 1,
            access: 0,
        };
        let code = Segment {
            sel: 0x8,
            desc: SegDesc {
                base: 0,
                limit: 0,
                access: 0x209b,
            },
        };
        let data = Segment {
            sel: 0x10,
            desc: SegDesc {
                base: 0,
                limit: 0,
                access: 0x0093,
            },
        };
        self.setup_long_mode(rip, cr3, rsp, gdtr, code, data);
    }

    /// A 64-bit entry with paging on `cr3`: CR0.PG|NE|PE, CR4.PAE,
    /// EFER.LME|LMA, interrupts off, CS = `code`, DS/ES/FS/GS/SS = `data`,
    /// a busy 64-bit TSS and no LDT (as VMX entry requires), GDTR `gdtr`.
    /// Other registers are left as they are.
    pub fn setup_long_mode(
        &mut self,
        rip: u64,
        cr3: u64,
        rsp: u64,
        gdtr: SegDesc,
        code: Segment,
        data: Segment,
    ) {
        const CR0_PE: u64 = 1;
        const CR0_NE: u64 = 1 << 5;
        const CR0_PG: u64 = 1 << 31;
        const CR4_PAE: u64 = 1 << 5;
        const EFER_LME: u64 = 1 << 8;
        const EFER_LMA: u64 = 1 << 10;
        self.cr0 = CR0_PG | CR0_NE | CR0_PE;
        self.cr3 = cr3;
        self.cr4 = CR4_PAE;
        self.efer = EFER_LMA | EFER_LME;
        self.rflags = 0x2;
        self.rip = rip;
        self.gprs[gpr_index(VmReg::Rsp)] = rsp;
        self.cs = code;
        for s in [
            &mut self.ds,
            &mut self.es,
            &mut self.fs,
            &mut self.gs,
            &mut self.ss,
        ] {
            *s = data;
        }
        self.tr = Segment {
            sel: 0,
            desc: SegDesc {
                base: 0,
                limit: 0,
                access: 0x008b,
            },
        };
        self.ldtr = Segment {
            sel: 0,
            desc: SegDesc {
                base: 0,
                limit: 0,
                access: DESC_UNUSABLE,
            },
        };
        self.gdtr = gdtr;
    }
}

fn gpr_index(reg: VmReg) -> usize {
    use VmReg::*;
    match reg {
        Rax => 0,
        Rbx => 1,
        Rcx => 2,
        Rdx => 3,
        Rsi => 4,
        Rdi => 5,
        Rbp => 6,
        Rsp => 7,
        R8 => 8,
        R9 => 9,
        R10 => 10,
        R11 => 11,
        R12 => 12,
        R13 => 13,
        R14 => 14,
        _ => 15,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_register_round_trips() {
        let mut s = VcpuState::default();
        for (i, r) in VmReg::ALL.iter().enumerate() {
            let v = if r.is_selector() {
                0x1000 + i as u64
            } else {
                0xdead_0000 + i as u64
            };
            s.set(*r, v);
        }
        for (i, r) in VmReg::ALL.iter().enumerate() {
            let v = if r.is_selector() {
                0x1000 + i as u64
            } else {
                0xdead_0000 + i as u64
            };
            assert_eq!(s.get(*r), v, "{}", r.name());
            assert_eq!(VmReg::from_name(r.name()), Some(*r));
        }
        assert_eq!(VmReg::from_name("nope"), None);
    }

    #[test]
    fn freebsd_entry_state() {
        let mut s = VcpuState::default();
        s.setup_freebsd(0xffff_ffff_8020_0000, 0x2000, 0x5000, 0x1000);
        assert_eq!(s.cr0, 0x8000_0021);
        assert_eq!(s.cr4, 0x20);
        assert_eq!(s.efer, 0x500);
        assert_eq!(s.get(VmReg::Rsp), 0x1000);
        assert_eq!(s.cs.desc.access, 0x209b);
        assert_eq!(s.ss.sel, 0x10);
        assert_eq!(s.ldtr.desc.access, 0x10000);
        assert_eq!(
            s.desc(SegReg::Gdtr),
            SegDesc {
                base: 0x5000,
                limit: 23,
                access: 0
            }
        );
    }

    #[test]
    fn serde_round_trip() {
        let mut s = VcpuState::default();
        s.msrs.insert(msr::LSTAR, 0xffff_ffff_8000_1234);
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<VcpuState>(&j).unwrap(), s);
    }
}
