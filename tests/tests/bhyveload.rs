//! Issue 3: bhyveload loads the boot-contract guest from disk images in
//! every layout, and fails cleanly on bad input.

use std::fs;

use bhyve_rs_tests::guest::{self, GuestFiles};
use bhyve_rs_tests::images::{self, ALL_LAYOUTS, Layout, Scratch, Tree};
use bhyve_rs_tests::*;

const MB: u64 = 1 << 20;

fn e_entry(kernel: &std::path::Path) -> u64 {
    let b = fs::read(kernel).unwrap();
    u64::from_le_bytes(b[24..32].try_into().unwrap())
}

/// The /boot a FreeBSD install would have, around the test guest.
fn boot_tree(g: &GuestFiles, loader_conf: &str) -> Tree {
    Tree::new()
        .file("boot/kernel/kernel", fs::read(&g.kernel).unwrap())
        .file("boot/kernel/testmod.ko", fs::read(&g.testmod).unwrap())
        .file("boot/kernel/testdep.ko", fs::read(&g.testdep).unwrap())
        .file("boot/loader.conf", loader_conf)
        .file(
            "boot/device.hints",
            "hint.uart.0.at=\"isa\"\nhint.uart.0.port=\"0x3F8\"\nhint.uart.0.flags=\"0x10\"\n",
        )
        .file(
            "etc/fstab",
            "# Device\tMountpoint\tFStype\tOptions\tDump\tPass#\n/dev/vtbd0p2\t/\tufs\trw\t1\t1\n",
        )
}

const CONF: &str = "testmod_load=\"YES\"\nautoboot_delay=\"-1\"\nfoo.bar=\"from-loader-conf\"\n";

fn getreg(vm: &str, reg: &str) -> u64 {
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

/// Walk the preload metadata in guest memory (as the kernel's
/// preload_search does) and return (record type, payload) pairs.
fn metadata(vm: &str) -> Vec<(u32, Vec<u8>)> {
    let mut ctx = vmmapi::vm_open(vm).unwrap();
    let mut stack = [0u8; 12];
    ctx.vm_copyout(0x1000, &mut stack).unwrap();
    let modulep = u32::from_le_bytes(stack[4..8].try_into().unwrap()) as u64;
    let kernend = u32::from_le_bytes(stack[8..12].try_into().unwrap()) as u64;
    assert!(modulep > 0x200000 && kernend > modulep && kernend % 4096 == 0);
    let mut buf = vec![0u8; (kernend - modulep) as usize];
    ctx.vm_copyout(modulep, &mut buf).unwrap();
    let mut v = Vec::new();
    let mut off = 0usize;
    loop {
        let ty = u32::from_le_bytes(buf[off..off + 4].try_into().unwrap());
        let sz = u32::from_le_bytes(buf[off + 4..off + 8].try_into().unwrap()) as usize;
        if ty == 0 && sz == 0 {
            break;
        }
        v.push((ty, buf[off + 8..off + 8 + sz].to_vec()));
        off += 8 + sz.div_ceil(8) * 8;
    }
    v
}

fn names(md: &[(u32, Vec<u8>)]) -> Vec<String> {
    md.iter()
        .filter(|(t, _)| *t == 1)
        .map(|(_, d)| String::from_utf8_lossy(&d[..d.len() - 1]).into_owned())
        .collect()
}

fn load_layout(layout: Layout, version: u32, bsize: u32, fsize: u32) {
    let g = guest::build();
    let s = Scratch::new(&format!("ld-{layout:?}-{version}-{bsize}"));
    let img = s.path("disk.img");
    images::image(&boot_tree(&g, CONF), layout, version, bsize, fsize, &img);
    let vm = format!("ld{}{version}{bsize}", format!("{layout:?}").to_lowercase());
    let _g = VmGuard::new(&vm);
    let o = run(
        "bhyveload",
        &["-d", img.to_str().unwrap(), "-m", "512M", &vm],
    );
    assert!(
        o.status.success(),
        "{layout:?} UFS{version} {bsize}/{fsize}: {}{}",
        stdout(&o),
        stderr(&o)
    );
    assert!(
        stdout(&o).contains("/boot/kernel/kernel text=0x"),
        "{}",
        stdout(&o)
    );
    assert_eq!(getreg(&vm, "rip"), e_entry(&g.kernel));
    assert_eq!(getreg(&vm, "rsp"), 0x1000);
    assert_eq!(getreg(&vm, "cr3"), 0x2000);
    let md = metadata(&vm);
    assert_eq!(
        names(&md),
        [
            "/boot/kernel/kernel",
            "/boot/kernel/testmod.ko",
            "/boot/kernel/testdep.ko"
        ],
        "{layout:?}"
    );
    let o = run("bhyvectl", &["--list"]);
    assert!(stdout(&o).contains(&format!("{vm} ")) && stdout(&o).contains("loaded"));
}

#[test]
fn loads_from_every_layout_ufs2() {
    require_kvm();
    for l in ALL_LAYOUTS {
        load_layout(l, 2, 32768, 4096);
    }
}

#[test]
fn loads_from_every_layout_ufs1() {
    require_kvm();
    for l in ALL_LAYOUTS {
        load_layout(l, 1, 16384, 2048);
    }
}

#[test]
fn loads_with_small_blocks() {
    require_kvm();
    load_layout(Layout::Gpt, 2, 4096, 512);
    load_layout(Layout::Raw, 1, 4096, 512);
}

#[test]
fn kernel_from_host_file() {
    let g = guest::build();
    let _g = VmGuard::new("hk0");
    let k = g.kernel.to_str().unwrap();
    let m = g.testmod.to_str().unwrap();
    let d = g.testdep.to_str().unwrap();
    let s = Scratch::new("hostconf");
    fs::create_dir_all(s.path("boot")).unwrap();
    fs::write(s.path("boot/loader.conf"), "testmod_load=\"YES\"\n").unwrap();
    let host = s.0.to_str().unwrap();
    let o = run(
        "bhyveload",
        &[
            "-m", "256M", "--kernel", k, "--module", m, "--module", d, "-h", host, "hk0",
        ],
    );
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert_eq!(getreg("hk0", "rip"), e_entry(&g.kernel));
    assert_eq!(
        names(&metadata("hk0")),
        [
            "/boot/kernel/kernel",
            "/boot/modules/testmod.ko",
            "/boot/modules/testdep.ko"
        ]
    );
}

/// bhyveload's failures: one line naming the cause, a non-zero status, and
/// no instance left behind.
fn refused(vm: &str, args: &[&str], status: i32, want: &str) {
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

#[test]
fn bad_input_is_refused_cleanly() {
    let g = guest::build();
    let s = Scratch::new("bad");
    let junk = s.path("junk.img");
    fs::write(&junk, vec![0x5au8; 1 << 20]).unwrap();
    let junk = junk.to_str().unwrap();
    refused("b0", &["-d", "/nonexistent.img"], 64, "/nonexistent.img");
    refused("b1", &["-d", junk], 64, "not a disk image we understand");
    // A tree without a kernel.
    let nok = s.path("nokernel.img");
    images::image(
        &Tree::new().file("etc/motd", "hi"),
        Layout::Raw,
        2,
        32768,
        4096,
        &nok,
    );
    refused("b2", &["-d", nok.to_str().unwrap()], 1, "kernel");
    // A kernel that is not an x86-64 ELF.
    let badk = s.path("badk.img");
    images::image(
        &Tree::new().file("boot/kernel/kernel", "#!/bin/sh\necho not a kernel\n"),
        Layout::Raw,
        2,
        32768,
        4096,
        &badk,
    );
    refused(
        "b3",
        &["-d", badk.to_str().unwrap()],
        1,
        "/boot/kernel/kernel",
    );
    // A module whose dependency is missing.
    let nodep = s.path("nodep.img");
    let t = Tree::new()
        .file("boot/kernel/kernel", fs::read(&g.kernel).unwrap())
        .file("boot/kernel/testmod.ko", fs::read(&g.testmod).unwrap())
        .file("boot/loader.conf", "testmod_load=\"YES\"\n");
    images::image(&t, Layout::Raw, 2, 32768, 4096, &nodep);
    let o = run("bhyveload", &["-d", nodep.to_str().unwrap(), "b4"]);
    let _g4 = VmGuard::new("b4");
    assert!(
        stdout(&o).contains("testdep") || stderr(&o).contains("testdep"),
        "missing dependency named: {}{}",
        stdout(&o),
        stderr(&o)
    );
    // Memory too small for the kernel at 2 MiB.
    let img = s.path("ok.img");
    images::image(&boot_tree(&g, CONF), Layout::Raw, 2, 32768, 4096, &img);
    refused(
        "b5",
        &["-m", "2M", "-d", img.to_str().unwrap()],
        1,
        "memory",
    );
    refused(
        "b6",
        &["-m", "lots", "-d", img.to_str().unwrap()],
        64,
        "memory size",
    );
    refused(
        "b7",
        &["-c", "/etc/passwd", "-d", img.to_str().unwrap()],
        64,
        "not a character device",
    );
    let _ = MB;
}

#[test]
fn reload_of_existing_instance_reinitialises_it() {
    require_kvm();
    let g = guest::build();
    let s = Scratch::new("reload");
    let img = s.path("disk.img");
    images::image(&boot_tree(&g, CONF), Layout::Gpt, 2, 32768, 4096, &img);
    let _g = VmGuard::new("rl0");
    assert!(
        run("bhyvectl", &["--vm=rl0", "--create", "--set-rip=0x1234"])
            .status
            .success()
    );
    let o = run(
        "bhyveload",
        &["-d", img.to_str().unwrap(), "-m", "256M", "rl0"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(getreg("rl0", "rip"), e_entry(&g.kernel));
    let o = run(
        "bhyveload",
        &["-d", img.to_str().unwrap(), "-m", "256M", "rl0"],
    );
    assert!(o.status.success(), "twice: {}", stderr(&o));
}
