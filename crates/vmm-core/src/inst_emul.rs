//! Instruction completion (a small `vmm_instruction_emul.c`): the few
//! instructions a guest may legitimately run but KVM cannot emulate on some
//! hosts (on a nested, software-assisted KVM they come back as
//! `KVM_INTERNAL_ERROR_EMULATION`).  vmm-core finishes them as the CPU
//! would — or raises the exception the CPU would raise — and counts them;
//! anything not in the table is left to the caller, which stops the VM.
//!
//! Decoding is strict: only the exact encodings below, optionally behind a
//! single LOCK prefix (which makes every one of them #UD).  Any other
//! prefix (operand or address size, REP, segment override, REX) is
//! reserved or changes the instruction (F3 0F 01 CA is not CLAC), so such
//! bytes are not completed.  Extend [`decode`] when guests reveal more.

/// An instruction this module completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Insn {
    /// 9B: wait for pending x87 exceptions.
    Fwait,
    /// 0F 01 CA: clear RFLAGS.AC.
    Clac,
    /// 0F 01 CB: set RFLAGS.AC.
    Stac,
    /// CC: breakpoint trap (#BP).  Linux patches its text through INT3
    /// (text_poke_bp), so any Linux guest runs some.
    Int3,
}

/// Decoded bytes: the instruction, its length, whether LOCK preceded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    pub insn: Insn,
    pub len: u8,
    pub lock: bool,
}

const LOCK: u8 = 0xf0;

/// Decode the bytes KVM fetched at RIP (usually 15; anything after the
/// instruction is ignored).  `None`: not an instruction of the table.
pub fn decode(bytes: &[u8]) -> Option<Decoded> {
    let (lock, rest) = match bytes {
        [LOCK, rest @ ..] => (true, rest),
        _ => (false, bytes),
    };
    let (insn, n) = match rest {
        [0x9b, ..] => (Insn::Fwait, 1),
        [0x0f, 0x01, 0xca, ..] => (Insn::Clac, 3),
        [0x0f, 0x01, 0xcb, ..] => (Insn::Stac, 3),
        [0xcc, ..] => (Insn::Int3, 1),
        _ => return None,
    };
    Some(Decoded {
        insn,
        len: n + u8::from(lock),
        lock,
    })
}

const RFLAGS_AC: u64 = 1 << 18;
const RFLAGS_VM: u64 = 1 << 17;
const CR0_PE: u64 = 1;
const CR0_MP: u64 = 1 << 1;
const CR0_TS: u64 = 1 << 3;
const CR0_NE: u64 = 1 << 5;
/// x87 status word: error summary (an unmasked exception is pending).
const FSW_ES: u16 = 1 << 7;

pub const VEC_BP: u8 = 3;
pub const VEC_UD: u8 = 6;
pub const VEC_NM: u8 = 7;
pub const VEC_MF: u8 = 16;

/// The vCPU state the table's rules depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuCtx {
    pub rip: u64,
    /// Width of the code segment: 16, 32 or 64 bits (IP wraps there).
    pub code_bits: u8,
    pub cr0: u64,
    pub rflags: u64,
    /// SS.DPL, which is the CPL in protected and long mode.
    pub ss_dpl: u8,
    /// The x87 status word (only FWAIT looks at it).
    pub fsw: u16,
}

impl CpuCtx {
    /// Current privilege level: 0 in real mode, 3 in virtual-8086 mode.
    /// RIP just past an instruction of `len` bytes.
    fn next_rip(&self, len: u8) -> u64 {
        let next = self.rip.wrapping_add(u64::from(len));
        match self.code_bits {
            16 => next & 0xffff,
            32 => next & 0xffff_ffff,
            _ => next,
        }
    }

    pub fn cpl(&self) -> u8 {
        if self.cr0 & CR0_PE == 0 {
            0
        } else if self.rflags & RFLAGS_VM != 0 {
            3
        } else {
            self.ss_dpl & 3
        }
    }
}

/// What to do with a decoded instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done: the vCPU continues at `rip` with `rflags`.
    Complete { rip: u64, rflags: u64 },
    /// The CPU faults instead (RIP stays on the instruction).
    Exception(u8),
    /// A trap: RIP moves past the instruction, then `vector` is raised
    /// (the handler sees the next instruction's address).
    Trap { rip: u64, vector: u8 },
    /// The CPU would do something this module does not model.
    Unsupported(&'static str),
}

/// The instruction's effect on a vCPU in state `c` (Intel SDM vol. 2).
pub fn complete(d: Decoded, c: &CpuCtx) -> Outcome {
    if d.lock {
        return Outcome::Exception(VEC_UD);
    }
    match d.insn {
        Insn::Fwait => {
            if c.cr0 & (CR0_MP | CR0_TS) == CR0_MP | CR0_TS {
                // Lazy FPU switching: the OS restores its state in #NM and
                // re-runs the FWAIT.
                Outcome::Exception(VEC_NM)
            } else if c.fsw & FSW_ES != 0 {
                if c.cr0 & CR0_NE != 0 {
                    Outcome::Exception(VEC_MF)
                } else {
                    Outcome::Unsupported(
                        "fwait with a pending x87 exception and CR0.NE=0 (FERR# signalling)",
                    )
                }
            } else {
                Outcome::Complete {
                    rip: c.next_rip(d.len),
                    rflags: c.rflags,
                }
            }
        }
        // CLAC/STAC fault outside ring 0 (and in virtual-8086 mode).
        Insn::Clac | Insn::Stac if c.cpl() != 0 => Outcome::Exception(VEC_UD),
        Insn::Clac => Outcome::Complete {
            rip: c.next_rip(d.len),
            rflags: c.rflags & !RFLAGS_AC,
        },
        Insn::Stac => Outcome::Complete {
            rip: c.next_rip(d.len),
            rflags: c.rflags | RFLAGS_AC,
        },
        // Outside ring 0 the gate's DPL decides between #BP and #GP; no
        // guest reaches ring 3 on the hosts that need this, so it is left
        // out rather than guessed.
        Insn::Int3 if c.cpl() != 0 => Outcome::Unsupported("int3 outside ring 0"),
        Insn::Int3 => Outcome::Trap {
            rip: c.next_rip(d.len),
            vector: VEC_BP,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG0: CpuCtx = CpuCtx {
        rip: 0xffff_ffff_8020_0000,
        code_bits: 64,
        cr0: 0x8000_0031,
        rflags: 0x2,
        ss_dpl: 0,
        fsw: 0,
    };

    fn run(bytes: &[u8], c: &CpuCtx) -> Option<Outcome> {
        decode(bytes).map(|d| complete(d, c))
    }

    #[test]
    fn int3_traps_past_itself_in_ring_0_only() {
        assert_eq!(
            run(&[0xcc, 0x90], &LONG0),
            Some(Outcome::Trap {
                rip: LONG0.rip + 1,
                vector: VEC_BP
            })
        );
        let ring3 = CpuCtx { ss_dpl: 3, ..LONG0 };
        assert!(matches!(
            run(&[0xcc], &ring3),
            Some(Outcome::Unsupported(_))
        ));
        assert_eq!(run(&[LOCK, 0xcc], &LONG0), Some(Outcome::Exception(VEC_UD)));
        // CD 03 (INT 3 with an immediate) is another instruction.
        assert_eq!(decode(&[0xcd, 0x03]), None);
    }

    #[test]
    fn decodes_exact_encodings_with_lengths() {
        let d = |b: &[u8]| decode(b).map(|d| (d.insn, d.len, d.lock));
        assert_eq!(d(&[0x9b]), Some((Insn::Fwait, 1, false)));
        // FWAIT is its own instruction even where it acts as a prefix of
        // the next one (9B DF E0 is FWAIT; FNSTSW AX).
        assert_eq!(d(&[0x9b, 0xdf, 0xe0]), Some((Insn::Fwait, 1, false)));
        assert_eq!(
            d(&[0x0f, 0x01, 0xca, 0x90, 0x90]),
            Some((Insn::Clac, 3, false))
        );
        assert_eq!(d(&[0x0f, 0x01, 0xcb]), Some((Insn::Stac, 3, false)));
        assert_eq!(d(&[0xf0, 0x0f, 0x01, 0xca]), Some((Insn::Clac, 4, true)));
        assert_eq!(d(&[0xf0, 0x9b]), Some((Insn::Fwait, 2, true)));
    }

    #[test]
    fn refuses_other_prefixes_truncation_and_unknown_bytes() {
        for b in [
            &[][..],
            &[0x0f, 0x01],             // truncated
            &[0x66, 0x9b],             // operand size
            &[0x67, 0x0f, 0x01, 0xca], // address size
            &[0xf3, 0x0f, 0x01, 0xca], // ERETU, not CLAC
            &[0xf2, 0x0f, 0x01, 0xca], // ERETS
            &[0x2e, 0x0f, 0x01, 0xcb], // segment override
            &[0x48, 0x0f, 0x01, 0xca], // REX.W
            &[0xf0, 0xf0, 0x9b],       // two LOCKs
            &[0xf0],
            &[0x0f, 0x01, 0xee], // RDPKRU
            &[0x0f, 0x01, 0xcc],
            &[0xd9, 0xe8], // FLD1
        ] {
            assert_eq!(decode(b), None, "{b:02x?}");
        }
    }

    #[test]
    fn clac_and_stac_flip_only_ac() {
        let c = CpuCtx {
            rflags: 0x246 | RFLAGS_AC,
            ..LONG0
        };
        assert_eq!(
            run(&[0x0f, 0x01, 0xca], &c),
            Some(Outcome::Complete {
                rip: 0xffff_ffff_8020_0003,
                rflags: 0x246
            })
        );
        let c = CpuCtx {
            rflags: 0x246,
            ..LONG0
        };
        assert_eq!(
            run(&[0x0f, 0x01, 0xcb], &c),
            Some(Outcome::Complete {
                rip: 0xffff_ffff_8020_0003,
                rflags: 0x246 | RFLAGS_AC
            })
        );
    }

    #[test]
    fn clac_stac_fault_outside_ring0() {
        let user = CpuCtx { ss_dpl: 3, ..LONG0 };
        let ring1 = CpuCtx { ss_dpl: 1, ..LONG0 };
        let v86 = CpuCtx {
            cr0: 0x11,
            rflags: 0x2 | RFLAGS_VM,
            ..LONG0
        };
        // Real mode is CPL 0 whatever SS holds.
        let real = CpuCtx {
            cr0: 0x10,
            ss_dpl: 3,
            ..LONG0
        };
        for b in [[0x0f, 0x01, 0xca], [0x0f, 0x01, 0xcb]] {
            for c in [user, ring1, v86] {
                assert_eq!(run(&b, &c), Some(Outcome::Exception(VEC_UD)), "{c:?}");
            }
            assert!(matches!(run(&b, &real), Some(Outcome::Complete { .. })));
        }
        // FWAIT is legal at any CPL.
        assert!(matches!(
            run(&[0x9b], &user),
            Some(Outcome::Complete {
                rip: 0xffff_ffff_8020_0001,
                ..
            })
        ));
    }

    #[test]
    fn rip_wraps_at_the_code_size() {
        let at = |rip, code_bits| CpuCtx {
            rip,
            code_bits,
            ..LONG0
        };
        let next = |c: CpuCtx, b: &[u8]| match run(b, &c) {
            Some(Outcome::Complete { rip, .. }) => rip,
            o => panic!("{o:?}"),
        };
        assert_eq!(next(at(0xfffe, 16), &[0x0f, 0x01, 0xca]), 0x1);
        assert_eq!(next(at(0xffff, 16), &[0x9b]), 0);
        assert_eq!(next(at(0xffff, 32), &[0x9b]), 0x1_0000);
        assert_eq!(next(at(0xffff_fffe, 32), &[0x0f, 0x01, 0xcb]), 1);
        assert_eq!(next(at(0xffff_fffe, 64), &[0x9b]), 0xffff_ffff);
    }

    #[test]
    fn lock_prefix_is_ud() {
        for b in [
            &[0xf0, 0x9b][..],
            &[0xf0, 0x0f, 0x01, 0xca],
            &[0xf0, 0x0f, 0x01, 0xcb],
        ] {
            assert_eq!(run(b, &LONG0), Some(Outcome::Exception(VEC_UD)), "{b:02x?}");
        }
    }

    #[test]
    fn fwait_raises_nm_then_mf_as_the_cpu_does() {
        let ts_mp = CpuCtx {
            cr0: LONG0.cr0 | CR0_TS | CR0_MP,
            fsw: FSW_ES,
            ..LONG0
        };
        // #NM has priority over a pending x87 error.
        assert_eq!(run(&[0x9b], &ts_mp), Some(Outcome::Exception(VEC_NM)));
        // TS without MP: WAIT does not fault.
        let ts = CpuCtx {
            cr0: LONG0.cr0 | CR0_TS,
            ..LONG0
        };
        assert!(matches!(run(&[0x9b], &ts), Some(Outcome::Complete { .. })));
        let pending = CpuCtx {
            fsw: FSW_ES | 0x4,
            ..LONG0
        };
        assert_eq!(run(&[0x9b], &pending), Some(Outcome::Exception(VEC_MF)));
        let legacy = CpuCtx {
            cr0: 0x10,
            ..pending
        };
        assert!(matches!(
            run(&[0x9b], &legacy),
            Some(Outcome::Unsupported(_))
        ));
        // Masked exception flags without ES: nothing pending.
        let masked = CpuCtx { fsw: 0x4, ..LONG0 };
        assert!(matches!(
            run(&[0x9b], &masked),
            Some(Outcome::Complete { .. })
        ));
    }
}
