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
        .file("boot/blob.bin", guest::raw_pattern(BLOB_SIZE))
        .file(
            "boot/device.hints",
            "hint.uart.0.at=\"isa\"\nhint.uart.0.port=\"0x3F8\"\nhint.uart.0.flags=\"0x10\"\n",
        )
        .file(
            "etc/fstab",
            "# Device\tMountpoint\tFStype\tOptions\tDump\tPass#\n/dev/vtbd0p2\t/\tufs\trw\t1\t1\n",
        )
}

const CONF: &str = "testmod_load=\"YES\"\nautoboot_delay=\"-1\"\nfoo.bar=\"from-loader-conf\"\n\
    blob_load=\"YES\"\nblob_type=\"test_blob\"\nblob_name=\"/boot/blob.bin\"\n";
/// A raw file (`X_type`) with an odd size, so the next file's placement
/// is checked too.
const BLOB_SIZE: usize = 12345;

/// What the guest must find, for a load of `boot_tree` with `CONF`.
fn expect(memsize: u64) -> guest::Expect {
    guest::Expect::new()
        .memsize(memsize)
        .kernel_name("/boot/kernel/kernel")
        .files(&["testmod.ko", "testdep.ko", "blob.bin"])
        .raw("blob.bin", "test_blob", BLOB_SIZE as u64)
        .env("foo.bar", "from-loader-conf")
        .env("hint.uart.0.port", "0x3F8")
        .env("vfs.root.mountfrom", "ufs:/dev/vtbd0p2")
        .env_present("currdev")
}

/// Run the loaded guest on bhyve with COM1 on stdio (`args` before the
/// name); every check must pass and bhyve must exit `status`.
fn boot(vm: &str, args: &[&str], status: i32) -> String {
    let mut a = args.to_vec();
    a.push(vm);
    let o = run("bhyve", &a);
    let out = stdout(&o);
    guest::parse_report(&out).assert_all_passed(&out);
    assert_eq!(o.status.code(), Some(status), "{out}{}", stderr(&o));
    out
}

const COM1: [&str; 6] = ["-m", "512M", "-s", "31,lpc", "-l", "com1,stdio"];

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
            "/boot/kernel/testdep.ko",
            "/boot/blob.bin"
        ],
        "{layout:?}"
    );
    let o = run("bhyvectl", &["--list"]);
    assert!(stdout(&o).contains(&format!("{vm} ")) && stdout(&o).contains("loaded"));
    // The guest checks the whole hand-off from inside and powers off.
    boot(&vm, &COM1, 1);
}

#[test]
fn original_session_command_line() {
    require_kvm();
    let g = guest::build();
    let s = Scratch::new("orig");
    let img = s.path("disk.img");
    images::image(&boot_tree(&g, CONF), Layout::Gpt, 2, 32768, 4096, &img);
    let img = img.to_str().unwrap();
    let _g = VmGuard::new("guest0");
    let mut args = vec!["-d", img, "-m", "1024"];
    // Bus 0: the virtio-blk at 0:0 (the guest's driver talks to it: the
    // disk it was loaded from) and the legacy UART; no host bridge on
    // this command line.
    let sectors = fs::metadata(img).unwrap().len() / 512;
    let kenv = expect(1024 * MB)
        .pci(&[(0, 0, 0x1af4, 0x1001), (31, 0, 0x131f, 0x2000)])
        .vblk(0)
        .vblk_sectors(sectors)
        .kenv();
    for kv in &kenv {
        args.extend(["-e", kv]);
    }
    args.push("guest0");
    let o = run("bhyveload", &args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(exists("guest0"), "ls /dev/vmm shows guest0");
    let disk = format!("0:0,virtio-blk,{img}");
    boot(
        "guest0",
        &["-A", "-I", "-m", "1024", "-s", &disk, "-S", "31,uart,stdio"],
        1,
    );
    let o = run("bhyvectl", &["--vm=guest0", "--destroy"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!exists("guest0"));
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

#[test]
fn bad_input_is_refused_cleanly() {
    let g = guest::build();
    let s = Scratch::new("bad");
    let junk = s.path("junk.img");
    fs::write(&junk, vec![0x5au8; 1 << 20]).unwrap();
    let junk = junk.to_str().unwrap();
    bhyveload_refuses("b0", &["-d", "/nonexistent.img"], 64, "/nonexistent.img");
    bhyveload_refuses("b1", &["-d", junk], 64, "not a disk image we understand");
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
    bhyveload_refuses("b2", &["-d", nok.to_str().unwrap()], 1, "kernel");
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
    bhyveload_refuses(
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
    bhyveload_refuses(
        "b5",
        &["-m", "2M", "-d", img.to_str().unwrap()],
        1,
        "memory",
    );
    bhyveload_refuses(
        "b6",
        &["-m", "lots", "-d", img.to_str().unwrap()],
        64,
        "memory size",
    );
    bhyveload_refuses(
        "b7",
        &["-c", "/etc/passwd", "-d", img.to_str().unwrap()],
        64,
        "not a character device",
    );
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

/// On a terminal: the menu, the countdown interrupted by a key, the OK
/// prompt, and `boot -s` giving RB_SINGLE in the kernel's howto.
#[test]
fn menu_and_prompt_on_a_terminal() {
    let g = guest::build();
    let s = Scratch::new("menu");
    fs::create_dir_all(s.path("boot")).unwrap();
    fs::write(
        s.path("boot/loader.conf"),
        "autoboot_delay=\"5\"\nfoo.bar=\"hello\"\n",
    )
    .unwrap();
    let _g = VmGuard::new("menu0");
    let cmd = format!(
        "{} -m 256M --kernel {} -h {} menu0; echo EXIT=$?",
        bin("bhyveload").display(),
        g.kernel.display(),
        s.0.display()
    );
    // `script` gives bhyveload a pty; keys are typed with pauses, as a
    // person would.
    let keys = "sleep 1; printf 3; sleep 0.5; printf 'show foo.bar\\r'; sleep 0.5; \
                printf 'boot -s\\r'; sleep 1";
    let o = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("({keys}) | script -qec '{cmd}' /dev/null"))
        .env("VMM_DIR", vmm_dir())
        .output()
        .unwrap();
    let out = stdout(&o).replace('\r', "");
    for want in [
        "Welcome to FreeBSD",
        "1. Boot Multi user [Enter]",
        "Autoboot in 5 seconds",
        "OK show foo.bar\nhello\n",
        "EXIT=0",
    ] {
        assert!(out.contains(want), "want {want:?} in:\n{out}");
    }
    let howto = metadata("menu0")
        .into_iter()
        .find(|(t, _)| *t == 0x8007)
        .map(|(_, d)| u32::from_le_bytes(d[..4].try_into().unwrap()))
        .expect("HOWTO record");
    assert_ne!(howto & 0x2, 0, "RB_SINGLE from boot -s: {howto:#x}");
}
