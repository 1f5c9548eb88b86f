//! Issue 5 on real KVM: the guest's own legacy virtio-blk driver (written
//! from the platform document, not from our device) reads a pattern the
//! test wrote, writes and flushes another, and the test checks the image
//! on the host afterwards.

use std::process::Command;

use bhyve_rs_tests::guest::{self, Expect};
use bhyve_rs_tests::images::Scratch;
use bhyve_rs_tests::*;

const SECTORS: u64 = 2048;
const SEED: u64 = 7;
const WSEED: u64 = 99;
const WLBA: u64 = 10;
const WCOUNT: u64 = 3;

/// Load the guest with `e` and run it with a virtio-blk at slot 4 backed
/// by `img` with extra `opts`; every check must pass and it powers off.
fn boot(name: &str, img: &std::path::Path, opts: &str, e: &Expect) {
    load_guest(name, "256M", e);
    let slot = format!("4,virtio-blk,{}{opts}", img.display());
    expect_guest_passes(
        Command::new(bin("bhyve"))
            .args(["-m", "256M", "-s", "0,hostbridge", "-s", &slot])
            .args(["-s", "31,lpc", "-l", "com1,stdio", name]),
    );
}

fn image(s: &Scratch) -> std::path::PathBuf {
    let img = s.path("vblk.img");
    std::fs::write(&img, guest::vblk_pattern(SEED, 0, (SECTORS * 512) as usize)).unwrap();
    img
}

#[test]
fn guest_reads_writes_and_flushes_through_virtio_blk() {
    let s = Scratch::new("vblk");
    let img = image(&s);
    let _g = VmGuard::new("vblk0");
    let e = Expect::new()
        .vblk(4)
        .vblk_sectors(SECTORS)
        .vblk_serial("BHYVERS-TEST")
        .vblk_pattern(SEED)
        .vblk_write(WLBA, WCOUNT as u32, WSEED);
    boot("vblk0", &img, ",ser=BHYVERS-TEST", &e);
    let disk = std::fs::read(&img).unwrap();
    let (a, b) = ((WLBA * 512) as usize, ((WLBA + WCOUNT) * 512) as usize);
    assert!(
        disk[a..b] == guest::vblk_pattern(WSEED, a as u64, b - a)[..],
        "the guest's write reached the image"
    );
    assert!(
        disk[..a] == guest::vblk_pattern(SEED, 0, a)[..],
        "nothing else changed"
    );
    assert!(disk[b..] == guest::vblk_pattern(SEED, b as u64, disk.len() - b)[..]);
}

#[test]
fn read_only_image_fails_writes_with_ioerr() {
    let s = Scratch::new("vblkro");
    let img = image(&s);
    let before = std::fs::read(&img).unwrap();
    let _g = VmGuard::new("vblk1");
    let e = Expect::new()
        .vblk(4)
        .vblk_sectors(SECTORS)
        .vblk_pattern(SEED)
        .vblk_write(WLBA, WCOUNT as u32, WSEED)
        .vblk_ro();
    boot("vblk1", &img, ",ro", &e);
    assert!(std::fs::read(&img).unwrap() == before, "image untouched");
}

/// A network namespace of the test's own with a tap in it; deleted on drop.
struct Netns(String);

impl Netns {
    fn new(name: &str) -> Netns {
        let sh = |args: &[&str]| {
            let o = Command::new("ip")
                .args(args)
                .output()
                .expect("ip (iproute2)");
            assert!(o.status.success(), "ip {args:?}: {}", stderr(&o));
        };
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        sh(&["netns", "add", name]);
        let ns = Netns(name.to_string());
        sh(&[
            "netns", "exec", name, "ip", "tuntap", "add", "dev", "tap0", "mode", "tap",
        ]);
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// virtio-net on a tap (inside a namespace the test made) appears on bus 0
/// with bhyve's IDs next to the host and LPC bridges. Frames are not
/// exchanged yet: the guest has no net driver.
#[test]
fn virtio_net_on_a_tap_enumerates() {
    require_kvm();
    let ns = Netns::new(&format!("bhyvers{}", std::process::id()));
    let _g = VmGuard::new("vnet0");
    let e = Expect::new().pci(&[
        (0, 0, 0x1275, 0x1275),
        (5, 0, 0x1af4, 0x1000),
        (31, 0, 0x8086, 0x7000),
    ]);
    load_guest("vnet0", "256M", &e);
    expect_guest_passes(
        Command::new("ip")
            .args(["netns", "exec", &ns.0, bin("bhyve").to_str().unwrap()])
            .args([
                "-m",
                "256M",
                "-s",
                "0,hostbridge",
                "-s",
                "5,virtio-net,tap0",
            ])
            .args(["-s", "31,lpc", "-l", "com1,stdio", "vnet0"]),
    );
}
