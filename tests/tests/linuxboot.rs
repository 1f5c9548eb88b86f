//! Linux boot in bhyveload: a synthetic bzImage whose `startup_64` is the
//! Linux-entry test guest (tests/guest/linux), loaded with `--kernel`,
//! `--initrd` and `--cmdline` and run by the same `bhyve` with the same
//! devices; and bhyveload's refusals of what cannot boot.

use std::fs;

use bhyve_rs_tests::guest::{self, Report};
use bhyve_rs_tests::images::Scratch;
use bhyve_rs_tests::linuxguest::{self, LOAD_ADDR, Setup};
use bhyve_rs_tests::*;

const MB: u64 = 1 << 20;
const GB: u64 = 1 << 30;

fn write(dir: &Scratch, name: &str, bytes: &[u8]) -> String {
    let p = dir.path(name);
    fs::write(&p, bytes).unwrap();
    p.to_str().unwrap().to_string()
}

/// Load the guest as a bzImage with an initrd and a command line carrying
/// its expectations into `vm` with `-m mem`, run it on bhyve's standard
/// machine, and return its report; every check must pass and the guest
/// must power off. The command line must come back unchanged.
fn boot(vm: &str, mem: &str, memsize: u64) -> Report {
    require_kvm();
    let s = Scratch::new(vm);
    let kernel = write(
        &s,
        "bzImage",
        &linuxguest::bzimage(&Setup::default(), &linuxguest::payload()),
    );
    // An odd size, so the last page is partly used.
    let rd = guest::raw_pattern(70001);
    let initrd = write(&s, "initrd", &rd);
    let cmdline = format!(
        "console=ttyS0 root=/dev/vda1 ro test.memsize={memsize} test.initrd_size={} \
         test.initrd_fnv={:#x}",
        rd.len(),
        linuxguest::fnv1a(&rd)
    );
    let _g = VmGuard::new(vm);
    let load = [
        "-m",
        mem,
        "--kernel",
        &kernel,
        "--initrd",
        &initrd,
        "--cmdline",
        &cmdline,
        vm,
    ];
    // Twice: the second run re-initialises the instance, as after a reboot.
    for _ in 0..2 {
        let o = run("bhyveload", &load);
        assert!(o.status.success(), "bhyveload: {}", stderr(&o));
        assert_eq!(stderr(&o), "");
    }
    assert_eq!(getreg(vm, "rip"), LOAD_ADDR + 0x200, "startup_64");
    assert_eq!(getreg(vm, "cs"), 0x10, "__BOOT_CS");
    assert_eq!(getreg(vm, "ss"), 0x18, "__BOOT_DS");
    let o = run(
        "bhyve",
        &[
            "-A",
            "-H",
            "-P",
            "-m",
            mem,
            "-s",
            "0,hostbridge",
            "-s",
            "31,lpc",
            "-l",
            "com1,stdio",
            vm,
        ],
    );
    let out = stdout(&o);
    let r = guest::parse_report(&out);
    r.assert_all_passed(&out);
    assert_eq!(o.status.code(), Some(1), "poweroff: {out}{}", stderr(&o));
    assert_eq!(r.entry.as_deref(), Some("linux"), "{out}");
    assert!(r.skipped().is_empty(), "every expectation was given: {out}");
    r.assert_passed(&[
        "cpu: CS = __BOOT_CS 0x10, DS/ES/SS = __BOOT_DS 0x18",
        "e820: exactly the map for test.memsize (RAM, BIOS area, RAM to lowmem, highmem)",
        "initrd: test.initrd_size bytes at ramdisk_image, FNV-1a = test.initrd_fnv",
        "acpi: RSDP found scanning 0xE0000-0xFFFFF, checksum, XSDT signature",
    ]);
    assert!(
        r.notes.contains(&format!("cmdline: {cmdline}")),
        "command line as passed: {out}"
    );
    r
}

#[test]
fn bzimage_boots_in_256m() {
    let r = boot("lx256", "256M", 256 * MB);
    assert!(
        r.notes
            .iter()
            .any(|n| n == "e820 2: 0x100000 +0xff00000 type 1"),
        "{:?}",
        r.notes
    );
    assert!(
        !r.notes.iter().any(|n| n.starts_with("e820 3:")),
        "no highmem"
    );
}

#[test]
fn bzimage_boots_in_5g_with_highmem() {
    let r = boot("lx5g", "5G", 5 * GB);
    for want in [
        format!("e820 2: 0x100000 +{:#x} type 1", 3 * GB - MB),
        format!("e820 3: 0x100000000 +{:#x} type 1", 2 * GB),
    ] {
        assert!(r.notes.contains(&want), "{want} in {:?}", r.notes);
    }
}

fn image(s: &Scratch, name: &str, setup: Setup) -> String {
    write(
        s,
        name,
        &linuxguest::bzimage(&setup, &linuxguest::payload()),
    )
}

#[test]
fn what_cannot_boot_is_bhyveload_refuses() {
    let s = Scratch::new("lxbad");
    let good = image(&s, "good", Setup::default());
    let junk = write(&s, "junk", &[0x5a; 4096]);
    bhyveload_refuses(
        "lxb0",
        &["--kernel", &junk],
        1,
        "neither a FreeBSD ELF kernel nor a Linux bzImage",
    );
    let old = image(
        &s,
        "old",
        Setup {
            version: 0x020b,
            ..Setup::default()
        },
    );
    bhyveload_refuses(
        "lxb1",
        &["--kernel", &old],
        1,
        "boot protocol 2.11 is too old: the 64-bit entry needs 2.12 or later",
    );
    let no64 = image(
        &s,
        "no64",
        Setup {
            xloadflags: 0,
            ..Setup::default()
        },
    );
    bhyveload_refuses("lxb2", &["--kernel", &no64], 1, "no 64-bit entry point");
    // 64 MiB: the kernel ends a little past 17 MiB; a 50 MiB initrd cannot
    // go above it. A sparse file: nothing is read before the check.
    let big = s.path("big.initrd");
    fs::File::create(&big).unwrap().set_len(50 * MB).unwrap();
    bhyveload_refuses(
        "lxb3",
        &[
            "-m",
            "64M",
            "--kernel",
            &good,
            "--initrd",
            big.to_str().unwrap(),
        ],
        1,
        "the initrd (52428800 bytes) does not fit",
    );
    bhyveload_refuses(
        "lxb4",
        &["-m", "16M", "--kernel", &good],
        1,
        "the kernel does not fit",
    );
    let short = image(
        &s,
        "short",
        Setup {
            cmdline_size: 16,
            ..Setup::default()
        },
    );
    bhyveload_refuses(
        "lxb5",
        &[
            "--kernel",
            &short,
            "--cmdline",
            "console=ttyS0 root=/dev/vda1",
        ],
        1,
        "the command line is 28 bytes, longer than the 16 the kernel accepts",
    );
    let empty = write(&s, "empty", &[]);
    bhyveload_refuses(
        "lxb6",
        &["--kernel", &good, "--initrd", &empty],
        1,
        "the initrd is empty",
    );
    bhyveload_refuses(
        "lxb7",
        &["--kernel", &good, "-e", "boot_verbose=YES"],
        64,
        "is a Linux bzImage: -e, -h and --module are for FreeBSD kernels",
    );
    let elf = guest::build().kernel;
    bhyveload_refuses(
        "lxb8",
        &["--kernel", elf.to_str().unwrap(), "--initrd", &good],
        64,
        "is a FreeBSD ELF kernel: --initrd and --cmdline are for Linux bzImage kernels",
    );
    bhyveload_refuses(
        "lxb9",
        &["-d", &good, "--cmdline", "quiet"],
        64,
        "--initrd and --cmdline need --kernel",
    );
}
