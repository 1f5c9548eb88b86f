//! Support for the end-to-end tests: locate the built binaries, give every
//! test process a private vmm directory (`VMM_DIR`), insist on /dev/kvm.

pub mod guest;
pub mod images;
pub mod linuxguest;
pub mod netns;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Once;

/// The directory holding the workspace's binaries (target/debug).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let deps = exe.parent().expect("deps dir");
    deps.parent().expect("target dir").to_path_buf()
}

/// Path of a workspace binary; fails clearly if it was not built.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.is_file(),
        "{} not built: run `cargo build --workspace` (cargo test --workspace does it)",
        p.display()
    );
    p
}

static INIT: Once = Once::new();

/// This process's private vmm directory, also exported as VMM_DIR so that
/// in-process vmmapi calls and child processes use it.
pub fn vmm_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("bhyve-rs-test-{}", std::process::id()));
    INIT.call_once(|| {
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("create VMM_DIR");
        // SAFETY: set once, before any test thread reads the environment.
        unsafe { std::env::set_var("VMM_DIR", &d) };
    });
    d
}

/// Boot tests need KVM: fail (never skip) with a message saying so.
pub fn require_kvm() {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        panic!(
            "/dev/kvm is not usable ({e}): this test runs guests on real KVM and cannot pass without it"
        );
    }
}

/// Run a binary with the test's VMM_DIR.
pub fn run(name: &str, args: &[&str]) -> Output {
    let d = vmm_dir();
    Command::new(bin(name))
        .args(args)
        .env("VMM_DIR", &d)
        .output()
        .unwrap_or_else(|e| panic!("running {name}: {e}"))
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `ctx`'s instance built in this process with one vCPU and the default
/// CPUID, vCPU 0 created from its saved state; the run lock is held while
/// the returned lock lives.
pub fn build_one_vcpu(ctx: &vmmapi::VmCtx) -> (vmmapi::RunLock, vmmapi::Vm, vmmapi::Vcpu) {
    let lock = ctx.vm_lock().unwrap();
    let st = ctx.state().unwrap();
    let vm = ctx
        .vm_build(vmmapi::VmConfig {
            ncpus: 1,
            cpuid: Default::default(),
            lenient_msr: false,
        })
        .unwrap();
    let vcpu = vm.create_vcpu(0, st.vcpus.first()).unwrap();
    (lock, vm, vcpu)
}

/// A register of `vm`'s vCPU 0 as `bhyvectl --get-REG` prints it.
pub fn getreg(vm: &str, reg: &str) -> u64 {
    let o = run(
        "bhyvectl",
        &[&format!("--vm={vm}"), &format!("--get-{reg}")],
    );
    let out = stdout(&o);
    let hex = out
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("--get-{reg}: {out}{}", stderr(&o)));
    u64::from_str_radix(hex.trim_start_matches("0x"), 16).unwrap()
}

/// Destroys the named instance when dropped, so a failing test cleans up.
#[derive(Debug)]
pub struct VmGuard(pub String);

impl VmGuard {
    /// Also sets up the private VMM_DIR, so in-process vmmapi calls made
    /// after this never reach the host's /dev/vmm.
    pub fn new(name: &str) -> VmGuard {
        vmm_dir();
        VmGuard(name.to_string())
    }
}

impl Drop for VmGuard {
    fn drop(&mut self) {
        let _ = vmm_dir();
        let _ = vmmapi::vm_destroy(&self.0);
    }
}

pub fn exists(name: &str) -> bool {
    Path::new(&vmm_dir()).join(name).exists()
}

/// A new instance `name` with 16 MiB whose BSP starts in real mode at
/// 0:0x1000 running `code` (the tiny guests of the runner tests).
pub fn real_mode_vm(name: &str, code: &[u8]) -> VmGuard {
    require_kvm();
    let g = VmGuard::new(name);
    vmmapi::vm_create(name).unwrap();
    let mut ctx = vmmapi::vm_open(name).unwrap();
    ctx.vm_setup_memory(16 << 20).unwrap();
    ctx.vm_copyin(0x1000, code).unwrap();
    ctx.vm_set_register(0, vmmapi::VmReg::Cs, 0).unwrap();
    let cs = vmmapi::SegDesc {
        base: 0,
        limit: 0xffff,
        access: 0x9b,
    };
    ctx.vm_set_desc(0, vmmapi::SegReg::Cs, cs).unwrap();
    ctx.vm_set_register(0, vmmapi::VmReg::Rip, 0x1000).unwrap();
    g
}

/// Load the boot-contract guest into a new instance `name` with `mem` of
/// memory and `e`'s expectations (bhyveload --kernel, one -e per variable).
pub fn load_guest(name: &str, mem: &str, e: &guest::Expect) {
    require_kvm();
    let g = guest::build();
    let mut load = vec!["-m", mem, "--kernel", g.kernel.to_str().unwrap()];
    let kenv = e.kenv();
    for kv in &kenv {
        load.extend(["-e", kv.as_str()]);
    }
    load.push(name);
    let o = run("bhyveload", &load);
    assert!(
        o.status.success(),
        "bhyveload: {}{}",
        stdout(&o),
        stderr(&o)
    );
}

/// Run a bhyve command (stdin null): every guest check must pass and the
/// guest must power off (exit 1).
pub fn expect_guest_passes(cmd: &mut Command) {
    let o = cmd
        .env("VMM_DIR", vmm_dir())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let out = stdout(&o);
    guest::parse_report(&out).assert_all_passed(&out);
    assert_eq!(o.status.code(), Some(1), "{out}{}", stderr(&o));
}

/// bhyveload refuses `args` for instance `vm`: exit `status`, one line on
/// stderr naming the cause (containing `want`), and no instance left.
pub fn bhyveload_refuses(vm: &str, args: &[&str], status: i32, want: &str) {
    let _g = VmGuard::new(vm);
    let mut a: Vec<&str> = args.to_vec();
    a.push(vm);
    let o = run("bhyveload", &a);
    let err = stderr(&o);
    assert_eq!(
        o.status.code(),
        Some(status),
        "{args:?}: {}{err}",
        stdout(&o)
    );
    assert!(err.contains(want), "{args:?}: want {want:?} in {err:?}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
    assert!(!exists(vm), "{args:?} left {vm} behind");
}
