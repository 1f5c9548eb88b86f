//! Issue 2 on real KVM: small guests run through vmmapi, the instance seen
//! from other processes, runners killed and raced.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bhyve_rs_tests::*;
use vmmapi::{Suspend, VmEntry, VmExit};

const MB: u64 = 1 << 20;

/// Run vCPU 0 of `name`, answering port 0x81 with `answer`; returns the OUT
/// values seen on port 0x80 and how the VM stopped.
fn run_guest(name: &str, answer: u32) -> (Vec<u32>, Suspend) {
    let ctx = vmmapi::vm_open(name).unwrap();
    let (_lock, vm, mut vcpu) = build_one_vcpu(&ctx);
    vm.handle()
        .spawn_halt_watcher(Duration::from_millis(50))
        .unwrap();
    let mut outs = Vec::new();
    let mut entry = VmEntry::Run;
    let how = loop {
        match vcpu.run(entry).unwrap() {
            VmExit::Inout {
                port: 0x80,
                out: true,
                value,
                ..
            } => {
                outs.push(value);
                entry = VmEntry::Run;
            }
            VmExit::Inout {
                port: 0x81,
                out: false,
                ..
            } => entry = VmEntry::InComplete(answer),
            VmExit::Suspended(s) => break s,
            e => panic!("unexpected exit {e:?}"),
        }
    };
    let fin = vcpu.get_state().unwrap();
    ctx.vm_end_run(vec![Some(fin)], vm.handle().stats(), how.name(), 2)
        .unwrap();
    (outs, how)
}

#[test]
fn real_mode_guest_inout_and_halt() {
    require_kvm();
    vmm_dir();
    // mov al,0x48; out 0x80,al; in al,0x81; mov bl,al; cli; hlt
    let code = [0xb0, 0x48, 0xe6, 0x80, 0xe4, 0x81, 0x88, 0xc3, 0xfa, 0xf4];
    let _g = real_mode_vm("rm0", &code);
    let (outs, how) = run_guest("rm0", 0x5a);
    assert_eq!(outs, vec![0x48]);
    assert_eq!(how, Suspend::Halt);
    let o = run("bhyvectl", &["--vm=rm0", "--get-all"]);
    let out = stdout(&o);
    assert!(out.contains("rip[0]\t\t0x000000000000100a"), "{out}");
    assert!(out.contains("rbx[0]\t\t0x000000000000005a"), "{out}");
    assert!(out.contains("cs desc[0]\t"), "{out}");
    let o = run("bhyvectl", &["--vm=rm0", "--get-stats"]);
    assert!(
        stdout(&o).contains("number of vm exits due to inout"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn long_mode_guest_freebsd_registers() {
    require_kvm();
    vmm_dir();
    let _g = VmGuard::new("lm0");
    vmmapi::vm_create("lm0").unwrap();
    let mut ctx = vmmapi::vm_open("lm0").unwrap();
    ctx.vm_setup_memory(64 * MB).unwrap();
    // The loader's page tables: 1 GiB of 2 MiB pages, repeated everywhere.
    for i in 0..512u64 {
        ctx.vm_copyin(0x2000 + i * 8, &(0x3000u64 | 3).to_le_bytes())
            .unwrap();
        ctx.vm_copyin(0x3000 + i * 8, &(0x4000u64 | 3).to_le_bytes())
            .unwrap();
        ctx.vm_copyin(0x4000 + i * 8, &((i * 0x20_0000) | 0x83).to_le_bytes())
            .unwrap();
    }
    for (i, d) in [0u64, 0x0020_9800_0000_0000, 0x0000_9000_0000_0000]
        .iter()
        .enumerate()
    {
        ctx.vm_copyin(0x5000 + i as u64 * 8, &d.to_le_bytes())
            .unwrap();
    }
    // mov rax,imm64; out 0x80,al; in eax,0x81; cli; hlt — at KERNBASE+2M.
    let mut code = vec![0x48, 0xb8];
    code.extend_from_slice(&0x1122_3344_5566_7788u64.to_le_bytes());
    code.extend_from_slice(&[0xe6, 0x80, 0xe5, 0x81, 0xfa, 0xf4]);
    ctx.vm_copyin(0x20_0000, &code).unwrap();
    ctx.vm_setup_freebsd_registers(0, 0xffff_ffff_8020_0000, 0x2000, 0x5000, 0x1000)
        .unwrap();
    let (outs, how) = run_guest("lm0", 0xdead_beef);
    assert_eq!(outs, vec![0x88]);
    assert_eq!(how, Suspend::Halt);
    let o = run(
        "bhyvectl",
        &[
            "--vm=lm0",
            "--get-rax",
            "--get-efer",
            "--get-cr0",
            "--get-rip",
        ],
    );
    let out = stdout(&o);
    assert!(out.contains("rax[0]\t\t0x00000000deadbeef"), "{out}");
    assert!(out.contains("efer[0]\t\t0x0000000000000500"), "{out}");
    assert!(
        out.contains("cr0[0]\t\t0x0000000080000021")
            || out.contains("cr0[0]\t\t0x0000000080000031"),
        "{out}"
    );
    assert!(out.contains("rip[0]\t\t0xffffffff80200010"), "{out}");
}

const PATTERNS: [(u64, u8); 4] = [
    (0x1000, 0x11),
    (3 * 1024 * MB - 4096, 0x22),
    (4 * 1024 * MB, 0x33),
    (4 * 1024 * MB + 512 * MB - 4096, 0x44),
];

/// Child half of `memory_is_shared_across_processes` (runs only when asked).
#[test]
fn child_reads_patterns() {
    let Ok(name) = std::env::var("BHYVE_RS_CHILD_VM") else {
        return;
    };
    let mut ctx = vmmapi::vm_open(&name).unwrap();
    for (gpa, v) in PATTERNS {
        let mut b = [0u8; 4096];
        ctx.vm_copyout(gpa, &mut b).unwrap();
        assert!(b.iter().all(|&x| x == v), "pattern at {gpa:#x}");
    }
    println!("CHILD-OK");
}

#[test]
fn memory_is_shared_across_processes() {
    let d = vmm_dir();
    let _g = VmGuard::new("mem0");
    vmmapi::vm_create("mem0").unwrap();
    let mut ctx = vmmapi::vm_open("mem0").unwrap();
    let l = ctx.vm_setup_memory(4 * 1024 * MB + 512 * MB).unwrap();
    assert_eq!((l.lowmem, l.highmem), (3 * 1024 * MB, 1536 * MB));
    for (gpa, v) in PATTERNS {
        ctx.vm_copyin(gpa, &[v; 4096]).unwrap();
    }
    assert!(
        ctx.vm_copyin(3 * 1024 * MB, &[0]).is_err(),
        "hole is not memory"
    );
    let resident = ctx.vm_get_resident().unwrap();
    assert!(
        resident < 8 * MB,
        "untouched pages occupy no RAM: {resident}"
    );
    let t = Instant::now();
    let o = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_reads_patterns", "--nocapture"])
        .env("BHYVE_RS_CHILD_VM", "mem0")
        .env("VMM_DIR", &d)
        .output()
        .unwrap();
    assert!(
        stdout(&o).contains("CHILD-OK"),
        "{}{}",
        stdout(&o),
        stderr(&o)
    );
    assert!(t.elapsed() < Duration::from_secs(20));
}

/// Start `bhyve` on an instance whose BSP spins in real mode.
fn spinning_vm(name: &str) -> (std::process::Child, VmGuard) {
    let g = real_mode_vm(name, &[0xeb, 0xfe]); // jmp .
    let ctx = vmmapi::vm_open(name).unwrap();
    let child = Command::new(bin("bhyve"))
        .args(["-m", "16M", name])
        .env("VMM_DIR", vmm_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while ctx.running_pid().is_none() {
        assert!(t.elapsed() < Duration::from_secs(20), "bhyve did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, g)
}

#[test]
fn sigkill_leaves_instance_usable_and_second_runner_refused() {
    require_kvm();
    let (mut child, _g) = spinning_vm("k0");
    let o = run("bhyve", &["-m", "16M", "k0"]);
    assert_eq!(o.status.code(), Some(4));
    assert!(stderr(&o).contains("already running"), "{}", stderr(&o));
    let o = run("bhyvectl", &["--vm=k0", "--get-rip"]);
    assert!(
        stdout(&o).contains("rip[0]\t\t0x000000000000100"),
        "live: {}{}",
        stdout(&o),
        stderr(&o)
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let o = run("bhyvectl", &["--list"]);
    assert!(stdout(&o).contains("died"), "{}", stdout(&o));
    let o = run("bhyvectl", &["--vm=k0", "--set-rip=0x1000"]);
    assert!(o.status.success(), "usable after kill -9: {}", stderr(&o));
    let o = run("bhyvectl", &["--vm=k0", "--destroy"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!exists("k0"));
}

#[test]
fn force_poweroff_and_destroy_of_running_vm() {
    require_kvm();
    let (child, g0) = spinning_vm("p0");
    let o = run("bhyvectl", &["--vm=p0", "--force-poweroff"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let o = run("bhyvectl", &["--vm=p0", "--list"]);
    assert!(stdout(&o).contains("exited: poweroff"), "{}", stdout(&o));
    drop(g0);
    let (child, _g) = spinning_vm("p1");
    let o = run("bhyvectl", &["--vm=p1", "--destroy"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = child.wait_with_output().unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(!exists("p1"));
}

#[test]
fn bhyve_refuses_missing_vm() {
    vmm_dir();
    let o = run("bhyve", &["-m", "16M", "ghost"]);
    assert_eq!(o.status.code(), Some(4));
    assert!(
        stderr(&o).contains("no VM named ghost; create it with bhyveload"),
        "{}",
        stderr(&o)
    );
}
