//! Issue 6 §2 on real KVM: the instructions this host's KVM refuses
//! (FWAIT, CLAC, STAC, and INT3 in 64-bit ring 0) are completed by
//! vmm-core and counted; their
//! faulting forms raise the CPU's exception; anything else stops bhyve with
//! exit 4 naming RIP and the bytes; SMAP is offered only where CLAC/STAC
//! run.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use bhyve_rs_tests::*;
use vmmapi::{CpuidOpts, VmConfig};

/// Real-mode guest at 0:0x1000 (assembled with GNU as, `.code16`, linked
/// at 0x1000).  Writes one byte per step to COM1, then powers off (S5).
#[rustfmt::skip]
const GUEST: &[u8] = &[
    0x31, 0xc0,                         // 1000 xor %ax,%ax
    0x8e, 0xd8,                         // 1002 mov %ax,%ds
    0x8e, 0xd0,                         // 1004 mov %ax,%ss
    0xbc, 0x00, 0x80,                   // 1006 mov $0x8000,%sp
    0xc7, 0x06, 0x18, 0x00, 0x6c, 0x10, // 1009 movw $ud,6*4      (IVT: #UD
    0xa3, 0x1a, 0x00,                   // 100f mov %ax,6*4+2
    0xc7, 0x06, 0x1c, 0x00, 0x78, 0x10, // 1012 movw $nm,7*4       #NM
    0xa3, 0x1e, 0x00,                   // 1018 mov %ax,7*4+2
    0xc7, 0x06, 0x40, 0x00, 0x7e, 0x10, // 101b movw $mf,16*4      #MF)
    0xa3, 0x42, 0x00,                   // 1021 mov %ax,16*4+2
    0xba, 0xf8, 0x03,                   // 1024 mov $0x3f8,%dx
    0x9b,                               // 1027 fwait             -> completed
    0xb0, b'W',                         // 1028 mov $'W',%al
    0xee,                               // 102a out %al,(%dx)
    0x0f, 0x01, 0xcb,                   // 102b stac
    0xe8, 0x2d, 0x00,                   // 102e call ac           -> '1'
    0x0f, 0x01, 0xca,                   // 1031 clac
    0xe8, 0x27, 0x00,                   // 1034 call ac           -> '0'
    0xf0, 0x0f, 0x01, 0xca,             // 1037 lock clac         -> #UD: 'U'
    0x0f, 0x20, 0xc0,                   // 103b mov %cr0,%eax
    0x0c, 0x0a,                         // 103e or $0xa,%al       (MP|TS)
    0x0f, 0x22, 0xc0,                   // 1040 mov %eax,%cr0
    0x9b,                               // 1043 fwait             -> #NM: 'N', retried
    0x0f, 0x20, 0xc0,                   // 1044 mov %cr0,%eax
    0x0c, 0x20,                         // 1047 or $0x20,%al      (NE)
    0x0f, 0x22, 0xc0,                   // 1049 mov %eax,%cr0
    0x0f, 0xae, 0x0e, 0x90, 0x10,       // 104c fxrstor fxarea    (FSW.ES set)
    0x9b,                               // 1051 fwait             -> #MF: 'M', retried
    0xb0, b'\n',                        // 1052 mov $'\n',%al
    0xee,                               // 1054 out %al,(%dx)
    0xba, 0x04, 0x04,                   // 1055 mov $0x404,%dx
    0xb8, 0x00, 0x34,                   // 1058 mov $0x3400,%ax   (SLP_TYP 5|SLP_EN)
    0xef,                               // 105b out %ax,(%dx)
    0xfa,                               // 105c cli
    0xf4,                               // 105d hlt
    // ac: print RFLAGS.AC as '0'/'1'
    0x66, 0x9c,                         // 105e pushfl
    0x66, 0x58,                         // 1060 pop %eax
    0x66, 0xc1, 0xe8, 0x12,             // 1062 shr $18,%eax
    0x24, 0x01,                         // 1066 and $1,%al
    0x04, b'0',                         // 1068 add $'0',%al
    0xee,                               // 106a out %al,(%dx)
    0xc3,                               // 106b ret
    // ud: skip the 4-byte LOCK CLAC
    0x55,                               // 106c push %bp
    0x89, 0xe5,                         // 106d mov %sp,%bp
    0x83, 0x46, 0x02, 0x04,             // 106f addw $4,2(%bp)
    0x5d,                               // 1073 pop %bp
    0xb0, b'U',                         // 1074 mov $'U',%al
    0xee,                               // 1076 out %al,(%dx)
    0xcf,                               // 1077 iret
    // nm: lazy FPU switch done; return to the FWAIT
    0x0f, 0x06,                         // 1078 clts
    0xb0, b'N',                         // 107a mov $'N',%al
    0xee,                               // 107c out %al,(%dx)
    0xcf,                               // 107d iret
    // mf: x87 error handled; return to the FWAIT
    0xdb, 0xe3,                         // 107e fninit
    0xb0, b'M',                         // 1080 mov $'M',%al
    0xee,                               // 1082 out %al,(%dx)
    0xcf,                               // 1083 iret
    0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90,
    // 1090 fxarea: FCW 0x037b (ZE unmasked), FSW 0x0084 (ZE|ES); MXCSR
    // 0x1f80 at +24; the rest of the 512 bytes is zero memory.
    0x7b, 0x03, 0x84, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0x80, 0x1f, 0x00, 0x00,
];

fn bhyve(name: &str, extra: &[&str]) -> Output {
    let mut args = vec!["-m", "16M", "-s", "31,lpc", "-l", "com1,stdio"];
    args.extend(extra);
    args.push(name);
    Command::new(bin("bhyve"))
        .args(&args)
        .env("VMM_DIR", vmm_dir())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// `bhyvectl --get-stats` of vCPU 0 (kept in the instance after the run).
fn stats(name: &str) -> Vec<(String, u64)> {
    let o = run("bhyvectl", &[&format!("--vm={name}"), "--get-stats"]);
    assert!(o.status.success(), "{}", stderr(&o));
    stdout(&o)
        .lines()
        .filter_map(|l| {
            let (n, v) = l.rsplit_once(char::is_whitespace)?;
            Some((n.trim().to_string(), v.parse().ok()?))
        })
        .collect()
}

fn stat(s: &[(String, u64)], name: &str) -> u64 {
    s.iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no stat {name:?} in {s:?}"))
        .1
}

#[test]
fn fwait_clac_stac_completed_counted_and_faulting_forms_raise() {
    require_kvm();
    let _g = real_mode_vm("emul0", GUEST);
    let o = bhyve("emul0", &[]);
    let out = stdout(&o);
    // W: FWAIT completed; 1/0: AC after STAC/CLAC seen by PUSHFD; U: LOCK
    // CLAC raised #UD; N: FWAIT with CR0.MP|TS raised #NM; M: FWAIT with a
    // pending unmasked x87 exception raised #MF.
    assert_eq!(out, "W10UNM\n", "{}", stderr(&o));
    assert_eq!(o.status.code(), Some(1), "powered off: {}", stderr(&o));
    let s = stats("emul0");
    // The first FWAIT, and the two retried after #NM and #MF.
    assert_eq!(stat(&s, "number of fwait instructions completed"), 3);
    assert_eq!(stat(&s, "number of clac instructions completed"), 1);
    assert_eq!(stat(&s, "number of stac instructions completed"), 1);
    assert_eq!(
        stat(&s, "number of exceptions raised by completed instructions"),
        3
    );
    assert_eq!(stat(&s, "number of instruction emulation failures"), 8);
}

/// Real-mode guest for INT3: #BP's handler must see the address after
/// the INT3 (a trap), print 'B' (or 'X'), and the guest goes on ('K').
#[rustfmt::skip]
const INT3_GUEST: &[u8] = &[
    0x31, 0xc0,                         // 1000 xor %ax,%ax
    0x8e, 0xd8,                         // 1002 mov %ax,%ds
    0x8e, 0xd0,                         // 1004 mov %ax,%ss
    0xbc, 0x00, 0x80,                   // 1006 mov $0x8000,%sp
    0xc7, 0x06, 0x0c, 0x00, 0x30, 0x10, // 1009 movw $bp,3*4      (IVT: #BP)
    0xa3, 0x0e, 0x00,                   // 100f mov %ax,3*4+2
    0xba, 0xf8, 0x03,                   // 1012 mov $0x3f8,%dx
    0xcc,                               // 1015 int3              -> trap: 'B'
    0xb0, b'K',                         // 1016 mov $'K',%al
    0xee,                               // 1018 out %al,(%dx)
    0xba, 0x04, 0x04,                   // 1019 mov $0x404,%dx
    0xb8, 0x00, 0x34,                   // 101c mov $0x3400,%ax   (SLP_TYP 5|SLP_EN)
    0xef,                               // 101f out %ax,(%dx)
    0xfa,                               // 1020 cli
    0xf4,                               // 1021 hlt
    0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90,
    // bp: the return IP on the stack must be 0x1016
    0x55,                               // 1030 push %bp
    0x89, 0xe5,                         // 1031 mov %sp,%bp
    0x8b, 0x46, 0x02,                   // 1033 mov 2(%bp),%ax
    0x3d, 0x16, 0x10,                   // 1036 cmp $0x1016,%ax
    0x75, 0x04,                         // 1039 jne 103f
    0xb0, b'B',                         // 103b mov $'B',%al
    0xeb, 0x02,                         // 103d jmp 1041
    0xb0, b'X',                         // 103f mov $'X',%al
    0xee,                               // 1041 out %al,(%dx)
    0x5d,                               // 1042 pop %bp
    0xcf,                               // 1043 iret
];

#[test]
fn int3_traps_to_the_guest_with_rip_past_it() {
    require_kvm();
    let _g = real_mode_vm("emul4", INT3_GUEST);
    let o = bhyve("emul4", &[]);
    assert_eq!(stdout(&o), "BK", "{}", stderr(&o));
    assert_eq!(o.status.code(), Some(1), "powered off: {}", stderr(&o));
    let s = stats("emul4");
    let refused = stat(&s, "number of instruction emulation failures");
    assert_eq!(
        stat(&s, "number of int3 instructions completed"),
        refused,
        "each refusal is the INT3, completed"
    );
}

/// In 64-bit ring 0, where this host's KVM refuses INT3 (Linux runs it
/// when patching its text), the boot-contract guest's INT3 check passes
/// through vmm-core's completion.
#[test]
fn int3_in_long_mode_ring0_is_completed() {
    require_kvm();
    let _g = VmGuard::new("emul5");
    load_guest("emul5", "256M", &bhyve_rs_tests::guest::Expect::new());
    expect_guest_passes(Command::new(bin("bhyve")).args([
        "-m",
        "256M",
        "-s",
        "31,lpc",
        "-l",
        "com1,stdio",
        "emul5",
    ]));
    let s = stats("emul5");
    assert_eq!(stat(&s, "number of int3 instructions completed"), 1);
}

#[test]
fn unknown_refused_instruction_stops_with_rip_and_bytes() {
    require_kvm();
    // fld1 (legal, but this KVM cannot emulate x87 arithmetic and bhyve
    // does not complete it); then cli; hlt, which would give exit 2.
    let _g = real_mode_vm("emul1", &[0x90, 0xd9, 0xe8, 0xfa, 0xf4]);
    let o = bhyve("emul1", &[]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains(
            "bhyve: vcpu 0: instruction emulation failed at rip 0x1001 (bytes: d9 e8 fa f4"
        ),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    let s = stats("emul1");
    assert_eq!(stat(&s, "number of instruction emulation failures"), 1);
    assert_eq!(stat(&s, "number of fwait instructions completed"), 0);
}

/// Leaf 7 EBX of the CPUID table bhyve gives KVM with `hide_smap`.
fn leaf7_ebx(name: &str, hide_smap: bool) -> u32 {
    let ctx = vmmapi::vm_open(name).unwrap();
    let _lock = ctx.vm_lock().unwrap();
    let vm = ctx
        .vm_build(VmConfig {
            ncpus: 1,
            cpuid: CpuidOpts {
                hide_smap,
                ..Default::default()
            },
            lenient_msr: false,
        })
        .unwrap();
    vm.cpuid_leaf(0, 7, 0).expect("leaf 7")[1]
}

const SMAP: u32 = 1 << 20;

#[test]
fn smap_hidden_in_the_cpuid_kvm_is_given() {
    require_kvm();
    let _g = real_mode_vm("emul2", &[0xfa, 0xf4]);
    let shown = leaf7_ebx("emul2", false);
    let hidden = leaf7_ebx("emul2", true);
    assert_eq!(hidden & SMAP, 0, "{hidden:#x}");
    assert_eq!(hidden, shown & !SMAP, "only SMAP differs");
    // Not checked: what the guest's CPUID returns.  This host's KVM
    // answers leaf 7 with the host's bits whatever KVM_SET_CPUID2 said.
}

#[test]
fn probe_is_quick_and_agrees_with_a_guest() {
    require_kvm();
    let p = vmmapi::probe_host().unwrap();
    assert!(p.took < Duration::from_millis(500), "{p:?}");
    // A guest running CLAC needs vmm-core to complete it exactly when the
    // probe found KVM cannot run it.
    let _g = real_mode_vm("emul3", &[0x0f, 0x01, 0xca, 0xfa, 0xf4]);
    let o = bhyve("emul3", &["-o", "x86.smap=true"]);
    assert_eq!(o.status.code(), Some(2), "halted: {}", stderr(&o));
    let s = stats("emul3");
    assert_eq!(
        stat(&s, "number of clac instructions completed"),
        u64::from(!p.clac_stac),
        "{p:?}"
    );
    let o = bhyve("emul3", &["-o", "x86.smap=maybe"]);
    assert_eq!(o.status.code(), Some(4));
    assert!(
        stderr(&o).contains("x86.smap: \"maybe\" is not auto, true or false"),
        "{}",
        stderr(&o)
    );
}
