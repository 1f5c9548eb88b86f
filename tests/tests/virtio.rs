//! Issue 5 on real KVM: the guest's own legacy virtio-blk driver (written
//! from the platform document, not from our device) reads a pattern the
//! test wrote, writes and flushes another, and the test checks the image
//! on the host afterwards.

use std::process::{Command, Stdio};

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
    require_kvm();
    let g = guest::build();
    let mut load = vec!["-m", "256M", "--kernel", g.kernel.to_str().unwrap()];
    let kenv = e.kenv();
    for kv in &kenv {
        load.extend(["-e", kv.as_str()]);
    }
    load.push(name);
    let o = run("bhyveload", &load);
    assert!(o.status.success(), "bhyveload: {}", stderr(&o));
    let slot = format!("4,virtio-blk,{}{opts}", img.display());
    let o = Command::new(bin("bhyve"))
        .args(["-m", "256M", "-s", "0,hostbridge", "-s", &slot])
        .args(["-s", "31,lpc", "-l", "com1,stdio", name])
        .env("VMM_DIR", vmm_dir())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let out = stdout(&o);
    guest::parse_report(&out).assert_all_passed(&out);
    assert_eq!(o.status.code(), Some(1), "{out}{}", stderr(&o));
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
