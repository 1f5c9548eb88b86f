//! Issue 5 on real KVM: the guest's own legacy virtio-blk driver (written
//! from the platform document, not from our device) reads a pattern the
//! test wrote, writes and flushes another, and the test checks the image
//! on the host afterwards.

use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bhyve_rs_tests::guest::{self, Expect};
use bhyve_rs_tests::images::Scratch;
use bhyve_rs_tests::netns::Netns;
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

/// The next frame with the guest's EtherType that arrived on the tap
/// interface (not one the host sent), or None after `secs` seconds.
fn recv_test_frame(fd: &OwnedFd, secs: u64) -> Option<Vec<u8>> {
    let end = Instant::now() + Duration::from_secs(secs);
    let mut buf = vec![0u8; 65536];
    while Instant::now() < end {
        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut sl = std::mem::size_of::<libc::sockaddr_ll>() as u32;
        // SAFETY: writes at most `buf.len()` bytes into `buf` and one
        // sockaddr_ll into `sll`.
        let n = unsafe {
            libc::recvfrom(
                fd.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                0,
                &mut sll as *mut _ as *mut libc::sockaddr,
                &mut sl,
            )
        };
        if n < 14 || sll.sll_pkttype == libc::PACKET_OUTGOING {
            continue;
        }
        let f = &buf[..n as usize];
        if u16::from_be_bytes([f[12], f[13]]) == guest::VNET_ETHERTYPE {
            return Some(f.to_vec());
        }
    }
    None
}

fn send_frame(fd: &OwnedFd, f: &[u8]) {
    // SAFETY: reads `f.len()` bytes of `f`.
    let n = unsafe {
        libc::send(
            fd.as_raw_fd(),
            f.as_ptr() as *const libc::c_void,
            f.len(),
            0,
        )
    };
    assert_eq!(
        n,
        f.len() as isize,
        "send: {}",
        std::io::Error::last_os_error()
    );
}

/// bhyve's default MAC for `slot`.0 of `vm` (§4.7), with the host's md5sum.
fn bhyve_mac(slot: u8, vm: &str) -> [u8; 6] {
    let o = Command::new("sh")
        .args(["-c", &format!("printf %s '{slot}-0-{vm}' | md5sum")])
        .output()
        .expect("md5sum");
    let h = String::from_utf8(o.stdout).unwrap();
    let b = |i: usize| u8::from_str_radix(&h[i..i + 2], 16).unwrap();
    [0x00, 0xa0, 0x98, b(0), b(2), b(4)]
}

const HOST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];

/// Runs the guest with virtio-net at slot 5 on tap0 in `ns` (`opts` added
/// to the device): the host reads the guest's `ntx` frames off the tap,
/// checks every byte, then injects `nrx` frames the guest must receive.
fn frames_through_tap(vm: &str, ns: &Netns, opts: &str, mac: [u8; 6], e: Expect) {
    let (ntx, nrx) = (24, 24);
    let e = e.vnet(5).vnet_mac(mac).vnet_tx(ntx).vnet_rx(nrx);
    load_guest(vm, "256M", &e);
    let sock = ns.packet_socket("tap0");
    let dev = format!("5,virtio-net,tap0{opts}");
    let child = ns
        .bhyve()
        .args(["-m", "256M", "-s", "0,hostbridge", "-s", &dev])
        .args(["-s", "31,lpc", "-l", "com1,stdio", vm])
        .env("VMM_DIR", vmm_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bhyve");
    let mut problems = Vec::new();
    for seq in 0..ntx {
        let want = guest::vnet_frame(seq, ntx, b'G', [0xff; 6], mac);
        match recv_test_frame(&sock, 60) {
            Some(f) if f == want => {}
            Some(f) => {
                problems.push(format!(
                    "guest frame {seq}: {} bytes, want {} (first difference at {:?})",
                    f.len(),
                    want.len(),
                    f.iter().zip(&want).position(|(a, b)| a != b)
                ));
                break;
            }
            None => {
                problems.push(format!("guest frame {seq} never reached the tap"));
                break;
            }
        }
    }
    if problems.is_empty() {
        for seq in 0..nrx {
            send_frame(&sock, &guest::vnet_frame(seq, nrx, b'H', mac, HOST_MAC));
        }
    }
    let o = child.wait_with_output().expect("bhyve");
    let out = stdout(&o);
    guest::parse_report(&out).assert_all_passed(&out);
    assert!(problems.is_empty(), "{problems:?}\n{out}");
    assert_eq!(o.status.code(), Some(1), "{out}{}", stderr(&o));
}

/// Issue 5: frames both ways through a tap in a namespace the test made,
/// with bhyve's derived MAC and mergeable RX buffers (long frames span
/// several 512-byte buffers).
#[test]
fn virtio_net_frames_both_ways_through_a_tap() {
    require_kvm();
    let ns = Netns::new("vnet");
    let _g = VmGuard::new("vnet1");
    frames_through_tap("vnet1", &ns, "", bhyve_mac(5, "vnet1"), Expect::new());
}

/// The same with `mac=` and `mtu=`, and a guest that declines MRG_RXBUF
/// (10-byte header, one buffer per frame).
#[test]
fn virtio_net_mac_mtu_and_no_mergeable_buffers() {
    require_kvm();
    let ns = Netns::new("vnetmac");
    let _g = VmGuard::new("vnet2");
    let mac = [0x02, 0x12, 0x34, 0x56, 0x78, 0x9a];
    let e = Expect::new().vnet_nomrg().vnet_mtu(9000);
    frames_through_tap("vnet2", &ns, ",mac=02:12:34:56:78:9a,mtu=9000", mac, e);
}

/// virtio-net on a tap appears on bus 0 with bhyve's IDs next to the host
/// and LPC bridges.
#[test]
fn virtio_net_on_a_tap_enumerates() {
    require_kvm();
    let ns = Netns::new("enum");
    let _g = VmGuard::new("vnet0");
    let e = Expect::new().pci(&[
        (0, 0, 0x1275, 0x1275),
        (5, 0, 0x1af4, 0x1000),
        (31, 0, 0x8086, 0x7000),
    ]);
    load_guest("vnet0", "256M", &e);
    expect_guest_passes(ns.bhyve().args([
        "-m",
        "256M",
        "-s",
        "0,hostbridge",
        "-s",
        "5,virtio-net,tap0",
        "-s",
        "31,lpc",
        "-l",
        "com1,stdio",
        "vnet0",
    ]));
}
