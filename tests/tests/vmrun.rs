//! `scripts/vmrun.sh` on real KVM with the boot-contract guest: the
//! bhyveload-then-bhyve loop, its stop on every non-reset exit, the
//! devices it puts on the bus, and that it destroys what it loaded (and
//! only that).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use bhyve_rs_tests::guest::{self, Exit, Expect};
use bhyve_rs_tests::images::{self, Layout, Scratch, Tree};
use bhyve_rs_tests::*;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/vmrun.sh")
}

/// Run vmrun.sh with the workspace's binaries and the private VMM_DIR.
fn vmrun(args: &[&str], maxboots: Option<u32>) -> Output {
    // bin() fails clearly when the binaries were not built.
    let bindir = bin("bhyve").parent().unwrap().to_path_buf();
    bin("bhyveload");
    bin("bhyvectl");
    let mut c = Command::new(script());
    c.args(args)
        .env("BHYVE_BIN", bindir)
        .env("VMM_DIR", vmm_dir())
        .env_remove("VMRUN_MAXBOOTS")
        .stdin(Stdio::null());
    if let Some(n) = maxboots {
        c.env("VMRUN_MAXBOOTS", n.to_string());
    }
    c.output()
        .unwrap_or_else(|e| panic!("running vmrun.sh: {e}"))
}

/// The console split into one report per boot.
fn boots(console: &str) -> Vec<guest::Report> {
    let starts: Vec<usize> = console
        .match_indices("GUEST-BEGIN")
        .map(|(i, _)| i)
        .collect();
    starts
        .iter()
        .enumerate()
        .map(|(k, &a)| {
            let b = starts.get(k + 1).copied().unwrap_or(console.len());
            let one = &console[a..b];
            let r = guest::parse_report(one);
            r.assert_all_passed(one);
            r
        })
        .collect()
}

fn kenv_args(e: &Expect) -> Vec<String> {
    e.kenv()
        .into_iter()
        .flat_map(|kv| ["-e".into(), kv])
        .collect()
}

#[test]
fn reset_loads_the_guest_again_until_maxboots() {
    require_kvm();
    let g = guest::build();
    let _vm = VmGuard::new("vmrun0");
    let e = Expect::new().memsize(256 << 20).exit(Exit::Reset);
    let mut args: Vec<String> = ["-m", "256M", "-c", "1", "-k"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.push(g.kernel.to_str().unwrap().into());
    args.extend(kenv_args(&e));
    args.push("vmrun0".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = vmrun(&args, Some(2));
    let (out, err) = (stdout(&o), stderr(&o));
    let reports = boots(&out);
    assert_eq!(reports.len(), 2, "two boots:\n{out}{err}");
    for r in &reports {
        assert_eq!(r.exit.as_deref(), Some("reset"));
    }
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert_eq!(err.matches("bhyve exited 0 (reset)").count(), 2, "{err}");
    assert!(err.contains("stopping after 2 boots"), "{err}");
    assert!(!exists("vmrun0"), "vmrun.sh destroyed the instance");
}

#[test]
fn disk_image_boots_from_ufs_with_the_disk_at_slot_4() {
    require_kvm();
    let g = guest::build();
    let s = Scratch::new("vmrun-disk");
    let tree = Tree::new()
        .file("/boot/kernel/kernel", std::fs::read(&g.kernel).unwrap())
        .file("/boot/loader.conf", "autoboot_delay=\"-1\"\n")
        .file("/etc/fstab", "/dev/vtbd0p1\t/\tufs\trw\t1\t1\n");
    let img = s.path("disk.img");
    images::image(&tree, Layout::Gpt, 2, 32768, 4096, &img);
    let sectors = std::fs::metadata(&img).unwrap().len() / 512;
    let _vm = VmGuard::new("vmrun1");
    // The bus vmrun.sh builds: hostbridge, the disk at 4, LPC at 31.
    let e = Expect::new()
        .memsize(256 << 20)
        .kernel_name("/boot/kernel/kernel")
        .pci(&[
            (0, 0, 0x1275, 0x1275),
            (4, 0, 0x1af4, 0x1001),
            (31, 0, 0x8086, 0x7000),
        ])
        .vblk(4)
        .vblk_sectors(sectors);
    let mut args: Vec<String> = vec!["-m".into(), "256M".into(), "-c".into(), "1".into()];
    args.extend(["-d".into(), img.to_str().unwrap().into()]);
    args.extend(kenv_args(&e));
    args.push("vmrun1".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // No limit: power-off must end the loop by itself.
    let o = vmrun(&args, None);
    let (out, err) = (stdout(&o), stderr(&o));
    let reports = boots(&out);
    assert_eq!(reports.len(), 1, "one boot:\n{out}{err}");
    let vblk = reports[0].matching("vblk: ");
    assert!(
        vblk.iter()
            .filter(|c| c.status == guest::Status::Pass)
            .count()
            > 5,
        "the guest drove the disk at slot 4:\n{out}"
    );
    assert_eq!(reports[0].exit.as_deref(), Some("poweroff"));
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("bhyve exited 1 (powered off)"), "{err}");
    assert!(!exists("vmrun1"), "vmrun.sh destroyed the instance");
}

#[test]
fn bhyve_error_stops_the_loop_and_destroys() {
    require_kvm();
    let g = guest::build();
    let _vm = VmGuard::new("vmrun2");
    let o = vmrun(
        &[
            "-m",
            "256M",
            "-k",
            g.kernel.to_str().unwrap(),
            "-t",
            "bhyvers-notap9",
            "vmrun2",
        ],
        None,
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(4), "{err}");
    assert!(err.contains("bhyvers-notap9"), "bhyve names the tap: {err}");
    assert!(err.contains("bhyve exited 4 (error)"), "{err}");
    assert!(!exists("vmrun2"), "vmrun.sh destroyed the instance");
}

#[test]
fn an_instance_in_use_is_refused_and_left_alone() {
    require_kvm();
    let g = guest::build();
    let _vm = VmGuard::new("vmrun3");
    vmmapi::vm_create("vmrun3").unwrap();
    let ctx = vmmapi::vm_open("vmrun3").unwrap();
    // Holding the run lock is what a running bhyve does.
    let lock = ctx.vm_lock().unwrap();
    let o = vmrun(&["-k", g.kernel.to_str().unwrap(), "vmrun3"], None);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("bhyveload exited 1"), "{err}");
    assert!(exists("vmrun3"), "someone else's instance survives: {err}");
    drop(lock);
}

#[test]
fn bad_arguments_are_usage_errors() {
    vmm_dir();
    let cases: &[(&[&str], &str)] = &[
        (&["-x", "g"], "vmrun.sh: unknown option -x"),
        (&["-m"], "vmrun.sh: -m needs a value"),
        (
            &["-k", "/nonexistent/kernel"],
            "vmrun.sh: give exactly one vmname (got 0)",
        ),
        (
            &["-k", "/nonexistent/kernel", "g"],
            "vmrun.sh: kernel /nonexistent/kernel: no such file",
        ),
        (
            &["-d", "/nonexistent/disk.img", "g"],
            "vmrun.sh: disk image /nonexistent/disk.img: no such file",
        ),
        (&["-i", "initrd", "g"], "vmrun.sh: -i needs -k"),
        (
            &["-e", "novalue", "g"],
            "vmrun.sh: -e novalue: expected name=value",
        ),
        (&["g"], "vmrun.sh: nothing to boot"),
    ];
    for (args, want) in cases {
        let o = vmrun(args, None);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(64), "{args:?}: {err}");
        let first = err.lines().next().unwrap_or("");
        assert!(first.starts_with(want), "{args:?}: first line {first:?}");
    }
    let o = vmrun(&["-x", "g"], None);
    assert!(
        stderr(&o).contains("Usage: vmrun.sh"),
        "the synopsis follows"
    );
    let o = vmrun(&["-d", "/dev/null", "g"], Some(0));
    assert_eq!(o.status.code(), Some(64));
    assert!(stderr(&o).starts_with("vmrun.sh: VMRUN_MAXBOOTS=0: expected a positive number"));
    let o = vmrun(&["-h"], None);
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).starts_with("Usage: vmrun.sh"));
}
