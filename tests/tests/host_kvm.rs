//! A property of the host, not of bhyve-rs: does this machine's KVM run
//! guest user mode (ring 3)?  The development and CI hosts run a nested,
//! software-assisted KVM on which it does not, which is why the test guests
//! are ring-0 programs. This is the smallest reproducer: a long-mode guest
//! (hand-assembled below) sets up a GDT with ring-3 segments, a TSS, an IDT,
//! EFER.SCE, STAR/LSTAR/SFMASK, enters ring 3 with IRETQ and executes
//! SYSCALL; the code at LSTAR reports CS. The test prints which outcome the
//! host produced and fails only if the run ends in none of the known ones
//! (the reproducer itself broke), never because user mode is broken.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bhyve_rs_tests::*;
use vmmapi::vm_memory::{Bytes, GuestAddress};
use vmmapi::{Suspend, VcpuState, VmEntry, VmExit};

// Guest physical layout (identity-mapped; everything below 1 MiB).
const PML4: u64 = 0x2000;
const PDPT: u64 = 0x3000;
const PD: u64 = 0x4000;
const GDT: u64 = 0x5000;
const GDTR: u64 = 0x5f00;
const IDTR: u64 = 0x5f10;
const TSS: u64 = 0x7000;
const IDT: u64 = 0x8000;
const STUBS: u64 = 0x9000;
const KSTACK: u64 = 0xb000;
const USTACK: u64 = 0xc000;
const MAIN: u64 = 0x10000;
const USER: u64 = 0x11000;
const LSTAR: u64 = 0x12000;
/// Where ring-3 code stores its CS and RFLAGS (a user page, so no port
/// access is needed from ring 3).
const UREPORT: u64 = 0xd000;

// Selectors, laid out as FreeBSD's GDT is for SYSCALL/SYSRET: kernel code
// and data, then 32-bit user code, user data, 64-bit user code.
const KCODE: u16 = 0x08;
const UDATA: u16 = 0x20 | 3;
const UCODE: u16 = 0x28 | 3;
const TSS_SEL: u16 = 0x30;
const STAR_SYSRET_BASE: u64 = 0x18;

// Ports the guest reports on.
const P_STEP: u16 = 0xe0; // 1: about to IRETQ
const P_FAULT: u16 = 0xe1; // exception vector, from the IDT stubs
const P_SYSCALL: u16 = 0xe3; // CS as the code at LSTAR reads it

/// Exceptions that push an error code.
const ERRCODE_VECTORS: [u8; 9] = [8, 10, 11, 12, 13, 14, 17, 21, 29];

/// A very small x86-64 assembler for the instructions the guest uses.
#[derive(Default)]
struct Asm(Vec<u8>);

impl Asm {
    fn b(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.extend_from_slice(bytes);
        self
    }
    fn mov_eax(&mut self, v: u32) -> &mut Self {
        self.b(&[0xb8]).b(&v.to_le_bytes())
    }
    fn mov_ecx(&mut self, v: u32) -> &mut Self {
        self.b(&[0xb9]).b(&v.to_le_bytes())
    }
    fn mov_edx(&mut self, v: u32) -> &mut Self {
        self.b(&[0xba]).b(&v.to_le_bytes())
    }
    /// wrmsr of `v` into `msr`.
    fn wrmsr(&mut self, msr: u32, v: u64) -> &mut Self {
        self.mov_ecx(msr)
            .mov_eax(v as u32)
            .mov_edx((v >> 32) as u32)
            .b(&[0x0f, 0x30])
    }
    /// mov %eax / %rax to an absolute address below 2 GiB.
    fn store_eax(&mut self, at: u64) -> &mut Self {
        self.b(&[0x89, 0x04, 0x25]).b(&(at as u32).to_le_bytes())
    }
    fn store_rax(&mut self, at: u64) -> &mut Self {
        self.b(&[0x48, 0x89, 0x04, 0x25])
            .b(&(at as u32).to_le_bytes())
    }
    /// out imm8, al / eax.
    fn out_al(&mut self, port: u16) -> &mut Self {
        self.b(&[0xe6, port as u8])
    }
    fn out_eax(&mut self, port: u16) -> &mut Self {
        self.b(&[0xe7, port as u8])
    }
    /// mov %cs, %eax (zero-extended selector).
    fn mov_eax_cs(&mut self) -> &mut Self {
        self.b(&[0x8c, 0xc8])
    }
    /// push imm32 (sign-extended to 64 bits).
    fn push(&mut self, v: u32) -> &mut Self {
        self.b(&[0x68]).b(&v.to_le_bytes())
    }
    fn pos(&self) -> u64 {
        self.0.len() as u64
    }
}

/// The guest: returns (main code, address of its IRETQ, user code,
/// LSTAR code).
fn programs() -> (Vec<u8>, u64, Vec<u8>, Vec<u8>) {
    let mut m = Asm::default();
    // lgdt [GDTR]; lidt [IDTR] (absolute disp32 through a SIB byte)
    m.b(&[0x0f, 0x01, 0x14, 0x25])
        .b(&(GDTR as u32).to_le_bytes());
    m.b(&[0x0f, 0x01, 0x1c, 0x25])
        .b(&(IDTR as u32).to_le_bytes());
    // mov $TSS_SEL, %ax; ltr %ax
    m.b(&[0x66, 0xb8]).b(&TSS_SEL.to_le_bytes());
    m.b(&[0x0f, 0x00, 0xd8]);
    // EFER.SCE: rdmsr; or $1, %eax; wrmsr
    m.mov_ecx(0xc000_0080)
        .b(&[0x0f, 0x32])
        .b(&[0x83, 0xc8, 0x01])
        .b(&[0x0f, 0x30]);
    m.wrmsr(
        0xc000_0081,
        (STAR_SYSRET_BASE << 48) | (u64::from(KCODE) << 32),
    );
    m.wrmsr(0xc000_0082, LSTAR);
    // SFMASK: TF, IF, DF, AC as FreeBSD masks; IOPL is kept.
    m.wrmsr(0xc000_0084, 0x4_0700);
    m.b(&[0xb0, 1]).out_al(P_STEP);
    // IRETQ frame: SS, RSP, RFLAGS (IF clear; IOPL 3, which ring 0 may
    // set and ring 3 reports back), CS, RIP.
    m.push(UDATA.into())
        .push(USTACK as u32)
        .push(0x3002)
        .push(UCODE.into())
        .push(USER as u32);
    let iretq = MAIN + m.pos();
    m.b(&[0x48, 0xcf]);

    let mut u = Asm::default();
    u.mov_eax_cs().store_eax(UREPORT);
    u.b(&[0x9c, 0x58]).store_rax(UREPORT + 8); // pushfq; pop %rax
    u.b(&[0x0f, 0x05]); // syscall
    u.b(&[0xeb, 0xfe]); // not reached: jmp .

    let mut l = Asm::default();
    l.mov_eax_cs().out_eax(P_SYSCALL);
    l.b(&[0xfa, 0xf4]); // cli; hlt
    (m.0, iretq, u.0, l.0)
}

fn gdt() -> Vec<u8> {
    let mut g: Vec<u64> = vec![
        0,
        0x0020_9a00_0000_0000, // 0x08 kernel code, 64-bit
        0x0000_9200_0000_0000, // 0x10 kernel data
        0x00cf_fa00_0000_ffff, // 0x18 user code, 32-bit (SYSRET's layout)
        0x00cf_f200_0000_ffff, // 0x20 user data, DPL 3
        0x0020_fa00_0000_0000, // 0x28 user code, 64-bit, DPL 3
    ];
    // 0x30: available 64-bit TSS at TSS, limit 0x67.
    g.push(0x67 | ((TSS & 0xff_ffff) << 16) | (0x89 << 40) | ((TSS >> 24 & 0xff) << 56));
    g.push(TSS >> 32);
    g.iter().flat_map(|d| d.to_le_bytes()).collect()
}

/// 32 interrupt gates to stubs that report their vector and stop.
fn idt_and_stubs() -> (Vec<u8>, Vec<u8>) {
    let mut idt = Vec::new();
    let mut stubs = Vec::new();
    for v in 0..32u8 {
        let at = STUBS + u64::from(v) * 16;
        let mut s = Asm::default();
        s.b(&[0xb0, v]).out_al(P_FAULT).b(&[0xfa, 0xf4]);
        s.0.resize(16, 0xcc);
        stubs.extend_from_slice(&s.0);
        let lo =
            (at & 0xffff) | (u64::from(KCODE) << 16) | (0x8e << 40) | ((at >> 16 & 0xffff) << 48);
        idt.extend_from_slice(&lo.to_le_bytes());
        idt.extend_from_slice(&(at >> 32).to_le_bytes());
    }
    (idt, stubs)
}

/// What the host did with the guest's user mode.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// The IRETQ to ring 3 raised an exception (reported with the IRETQ as
    /// the faulting instruction).
    IretqFaults { vector: u8, error: Option<u64> },
    /// Ring 3 was reached and SYSCALL jumped to LSTAR, but without
    /// switching to ring 0.
    SyscallStillCpl3 { cs: u64 },
    /// Ring 3 ran, SYSCALL entered ring 0 at LSTAR: user mode works.
    Works,
}

fn frame(vm: &vmmapi::Vm, st: &VcpuState, vector: u8) -> (Option<u64>, [u64; 5]) {
    let mem = vm.memory();
    let rsp = st.get(vmmapi::VmReg::Rsp);
    let word = |i: u64| -> u64 { mem.read_obj(GuestAddress(rsp + i * 8)).unwrap_or(u64::MAX) };
    let (err, base) = if ERRCODE_VECTORS.contains(&vector) {
        (Some(word(0)), 1)
    } else {
        (None, 0)
    };
    let f = [
        word(base),
        word(base + 1),
        word(base + 2),
        word(base + 3),
        word(base + 4),
    ];
    (err, f)
}

fn note_ring3(events: &mut Vec<String>, user: Option<(u64, u64)>) {
    events.push(match user {
        Some((cs, fl)) => format!(
            "ring-3 code ran: CS {cs:#x}, RFLAGS {fl:#x} (IOPL {}, 3 was set)",
            fl >> 12 & 3
        ),
        None => "ring-3 code did not run".into(),
    });
}

fn run_reproducer() -> Result<Outcome, String> {
    require_kvm();
    let name = "hostkvm0";
    let _g = VmGuard::new(name);
    vmmapi::vm_create(name).unwrap();
    let mut ctx = vmmapi::vm_open(name).unwrap();
    ctx.vm_setup_memory(16 << 20).unwrap();
    // 2 MiB pages, user-accessible at every level, repeated so that the
    // first GiB is identity-mapped.
    for i in 0..512u64 {
        ctx.vm_copyin(PML4 + i * 8, &(PDPT | 7).to_le_bytes())
            .unwrap();
        ctx.vm_copyin(PDPT + i * 8, &(PD | 7).to_le_bytes())
            .unwrap();
        ctx.vm_copyin(PD + i * 8, &((i << 21) | 0x87).to_le_bytes())
            .unwrap();
    }
    let g = gdt();
    ctx.vm_copyin(GDT, &g).unwrap();
    let mut gdtr = (g.len() as u16 - 1).to_le_bytes().to_vec();
    gdtr.extend_from_slice(&GDT.to_le_bytes());
    ctx.vm_copyin(GDTR, &gdtr).unwrap();
    let (idt, stubs) = idt_and_stubs();
    let mut idtr = (idt.len() as u16 - 1).to_le_bytes().to_vec();
    idtr.extend_from_slice(&IDT.to_le_bytes());
    ctx.vm_copyin(IDTR, &idtr).unwrap();
    ctx.vm_copyin(IDT, &idt).unwrap();
    ctx.vm_copyin(STUBS, &stubs).unwrap();
    // TSS: RSP0 (offset 4) for exceptions taken from ring 3; no I/O bitmap.
    let mut tss = vec![0u8; 0x68];
    tss[4..12].copy_from_slice(&KSTACK.to_le_bytes());
    tss[0x66..0x68].copy_from_slice(&0x68u16.to_le_bytes());
    ctx.vm_copyin(TSS, &tss).unwrap();
    let (main, iretq, user, lstar) = programs();
    ctx.vm_copyin(MAIN, &main).unwrap();
    ctx.vm_copyin(USER, &user).unwrap();
    ctx.vm_copyin(LSTAR, &lstar).unwrap();
    ctx.vm_setup_freebsd_registers(0, MAIN, PML4, GDT, KSTACK)
        .unwrap();

    let (_lock, vm, mut vcpu) = build_one_vcpu(&ctx);
    // The guest only stops by itself if it works or faults; a hang (or a
    // harness bug) is ended here and reported as neither.
    let timed_out = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let (h, timed_out, done) = (vm.handle(), timed_out.clone(), done.clone());
        std::thread::spawn(move || {
            for _ in 0..300 {
                if done.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            timed_out.store(true, Ordering::SeqCst);
            h.suspend(Suspend::Poweroff);
        })
    };
    let mut events = Vec::new();
    // What ring-3 code stored, once it ran (CS, RFLAGS).
    let ring3 = |vm: &vmmapi::Vm| -> Option<(u64, u64)> {
        let m = vm.memory();
        let cs: u64 = m.read_obj(GuestAddress(UREPORT)).ok()?;
        let fl: u64 = m.read_obj(GuestAddress(UREPORT + 8)).ok()?;
        (cs != 0).then_some((cs, fl))
    };
    let mut entry = VmEntry::Run;
    let result = loop {
        let exit = match vcpu.run(entry) {
            Ok(e) => e,
            Err(e) => break Err(format!("vm_run failed: {e}")),
        };
        entry = VmEntry::Run;
        let st = vcpu.get_state().map_err(|e| e.to_string())?;
        match exit {
            VmExit::Inout {
                port: P_STEP,
                out: true,
                value,
                ..
            } => events.push(format!("step {value}: ring 0 set up, IRETQ next")),
            VmExit::Inout {
                port: P_SYSCALL,
                out: true,
                value,
                ..
            } => {
                let user = ring3(&vm);
                note_ring3(&mut events, user);
                events.push(format!(
                    "at LSTAR: CS reads {value:#x}; vCPU CS {:#x} (access {:#x}), RIP {:#x}",
                    st.cs.sel, st.cs.desc.access, st.rip
                ));
                break match (user, st.cs.sel & 3) {
                    (Some(_), 0) if value & 3 == 0 => Ok(Outcome::Works),
                    (Some(_), 3) if value & 3 == 3 => {
                        Ok(Outcome::SyscallStillCpl3 { cs: value.into() })
                    }
                    _ => Err("LSTAR reached in an unexpected state".into()),
                };
            }
            VmExit::Inout {
                port: P_FAULT,
                out: true,
                value,
                ..
            } => {
                let vector = value as u8;
                let (error, f) = frame(&vm, &st, vector);
                let user = ring3(&vm);
                note_ring3(&mut events, user);
                events.push(format!(
                    "exception {vector} error {error:x?}: RIP {:#x} CS {:#x} RFLAGS {:#x} RSP {:#x} SS {:#x}",
                    f[0], f[1], f[2], f[3], f[4]
                ));
                let at_lstar = (LSTAR..LSTAR + 0x100).contains(&f[0]);
                break if f[0] == iretq && f[1] == u64::from(KCODE) && user.is_none() {
                    Ok(Outcome::IretqFaults { vector, error })
                } else if at_lstar && f[1] & 3 == 3 && user.is_some() {
                    // The code at LSTAR ran at CPL 3: its port access faulted.
                    Ok(Outcome::SyscallStillCpl3 { cs: f[1] })
                } else {
                    Err("an exception the reproducer does not expect".into())
                };
            }
            VmExit::Suspended(s) => {
                let why = if timed_out.load(Ordering::SeqCst) {
                    "no outcome within 30 s".to_string()
                } else {
                    format!("the VM stopped: {}", s.name())
                };
                events.push(format!("{why}; RIP {:#x} CS {:#x}", st.rip, st.cs.sel));
                break Err(why);
            }
            other => {
                events.push(format!("{other:?} at RIP {:#x}", st.rip));
                break Err("an exit the reproducer does not expect".into());
            }
        }
    };
    done.store(true, Ordering::SeqCst);
    vm.suspend(Suspend::Poweroff);
    let _ = watchdog.join();
    let trace = events.join("\n  ");
    println!("trace:\n  {trace}");
    result.map_err(|e| format!("{e}\n  {trace}"))
}

#[test]
fn host_property_guest_user_mode() {
    match run_reproducer() {
        Ok(o) => {
            let what = match &o {
                Outcome::IretqFaults { .. } => "IRETQ to ring 3 faults",
                Outcome::SyscallStillCpl3 { .. } => "SYSCALL lands at LSTAR but still CPL 3",
                Outcome::Works => "works",
            };
            println!("HOST-PROPERTY guest user mode: {what} ({o:?})");
        }
        Err(e) => panic!("the user-mode reproducer ended in no known outcome: {e}"),
    }
}
