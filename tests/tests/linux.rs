//! Issue 6: Linux's own drivers, which none of us wrote, against our
//! devices, in one boot (boots are slow on this host's KVM).
//!
//! The kernel is a small one built from Debian's linux-source with the
//! drivers built in (tests/linux/; cached between runs). Guest user mode
//! cannot run system calls here, so the kernel proves the devices by
//! itself: virtio-blk probe and partition scan, an ext2 root mounted
//! read-write (the test checks the superblock on the host afterwards),
//! the network through the kernel's IP autoconfiguration (a DHCP answer
//! from inside a namespace the test made) and then ICMP echo of a few MiB
//! compared byte for byte, 2 CPUs, and an ACPI poweroff asked for over the
//! console with SysRq (a BREAK from `bhyvectl --send-break`, then the
//! key). /sbin/init is a loop without system calls that keeps the kernel
//! up until then.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bhyve_rs_tests::images::Scratch;
use bhyve_rs_tests::netns::{Netns, set_recv_timeout};
use bhyve_rs_tests::*;

const HOST_IP: &str = "10.0.2.1";
const GUEST_IP: &str = "10.0.2.15";
/// Generous: the kernel's ring 0 is emulated here.
const BOOT_LIMIT: Duration = Duration::from_secs(15 * 60);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn sh(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(o.status.success(), "{cmd:?}: {}{}", stdout(&o), stderr(&o));
    stdout(&o)
}

/// tests/linux/build-kernel.sh: the bzImage (built once, then cached).
fn kernel() -> PathBuf {
    let out = sh(Command::new(repo().join("tests/linux/build-kernel.sh")).stderr(Stdio::inherit()));
    let path = PathBuf::from(out.lines().last().expect("build-kernel.sh printed nothing"));
    assert!(path.is_file(), "no kernel at {}", path.display());
    path
}

/// A 64 MiB disk: MBR, partition 1 from sector 2048, ext2 with
/// /sbin/init (tests/linux/init.S) and a file.
fn disk(s: &Scratch) -> PathBuf {
    let tree = s.path("root");
    std::fs::create_dir_all(tree.join("sbin")).unwrap();
    std::fs::create_dir_all(tree.join("dev")).unwrap();
    sh(Command::new("gcc")
        .args(["-nostdlib", "-static", "-o"])
        .arg(tree.join("sbin/init"))
        .arg(repo().join("tests/linux/init.S")));
    std::fs::write(tree.join("hello.txt"), "written by the test\n").unwrap();
    let part = s.path("part.img");
    sh(Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext2", "-d"])
        .arg(&tree)
        .arg(&part)
        .arg("60M"));
    let img = s.path("disk.img");
    let f = std::fs::File::create(&img).unwrap();
    f.set_len(64 << 20).unwrap();
    let mut p = Command::new("sfdisk")
        .args(["-q", img.to_str().unwrap()])
        .stdin(Stdio::piped())
        .spawn()
        .expect("sfdisk");
    p.stdin
        .take()
        .unwrap()
        .write_all(b"label: dos\nstart=2048, type=83\n")
        .unwrap();
    assert!(p.wait().unwrap().success(), "sfdisk");
    sh(Command::new("dd")
        .arg(format!("if={}", part.display()))
        .arg(format!("of={}", img.display()))
        .args(["bs=1M", "seek=1", "conv=notrunc", "status=none"]));
    img
}

/// `dumpe2fs -h` of the partition inside `img`, as "key: value" pairs.
fn superblock(s: &Scratch, img: &Path) -> Vec<(String, String)> {
    let part = s.path("part-after.img");
    sh(Command::new("dd")
        .arg(format!("if={}", img.display()))
        .arg(format!("of={}", part.display()))
        .args(["bs=1M", "skip=1", "status=none"]));
    sh(Command::new("dumpe2fs")
        .arg("-h")
        .arg(&part)
        .stderr(Stdio::null()))
    .lines()
    .filter_map(|l| l.split_once(':'))
    .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
    .collect()
}

/// busybox udhcpd on tap0 in `ns`, offering GUEST_IP.
fn dhcp_server(ns: &Netns, s: &Scratch) -> Child {
    let conf = s.path("udhcpd.conf");
    std::fs::write(
        &conf,
        format!(
            "interface tap0\nstart {GUEST_IP}\nend {GUEST_IP}\nmax_leases 1\n\
             lease_file {}\nopt subnet 255.255.255.0\nopt router {HOST_IP}\n",
            s.path("leases").display()
        ),
    )
    .unwrap();
    Command::new("ip")
        .args(["netns", "exec", &ns.0, "busybox", "udhcpd", "-f"])
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("busybox udhcpd")
}

fn icmp_checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = b
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// ICMP echo from the namespace: `count` requests of `size` payload bytes
/// (fragmented beyond the MTU), each reply compared byte for byte.
/// Returns the payload bytes echoed intact, or why it stopped.
fn ping(ns: &Netns, dst: &str, size: usize, count: u16) -> Result<usize, String> {
    let dst: std::net::Ipv4Addr = dst.parse().unwrap();
    ns.within(move || {
        // SAFETY: plain socket calls on a socket we own; buffers are ours.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP);
            assert!(
                fd >= 0,
                "raw ICMP socket: {}",
                std::io::Error::last_os_error()
            );
            let fd = OwnedFd::from_raw_fd(fd);
            set_recv_timeout(&fd, 5);
            let mut to: libc::sockaddr_in = std::mem::zeroed();
            to.sin_family = libc::AF_INET as u16;
            to.sin_addr.s_addr = u32::from(dst).to_be();
            let id = std::process::id() as u16;
            let mut echoed = 0;
            let mut buf = vec![0u8; 65536];
            for seq in 0..count {
                let mut req = vec![8u8, 0, 0, 0];
                req.extend_from_slice(&id.to_be_bytes());
                req.extend_from_slice(&seq.to_be_bytes());
                req.extend((0..size).map(|i| (i * 7 + seq as usize) as u8));
                let c = icmp_checksum(&req);
                req[2..4].copy_from_slice(&c.to_be_bytes());
                let n = libc::sendto(
                    fd.as_raw_fd(),
                    req.as_ptr() as *const libc::c_void,
                    req.len(),
                    0,
                    &to as *const _ as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_in>() as u32,
                );
                if n != req.len() as isize {
                    return Err(format!("send {seq}: {}", std::io::Error::last_os_error()));
                }
                loop {
                    let n = libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0);
                    if n < 0 {
                        return Err(format!("no echo reply {seq} after {echoed} bytes"));
                    }
                    let pkt = &buf[..n as usize];
                    let icmp = &pkt[usize::from(pkt[0] & 15) * 4..];
                    if icmp[0] != 0 || icmp[4..8] != req[4..8] {
                        continue; // our own request, or another reply
                    }
                    if icmp[8..] != req[8..] {
                        return Err(format!("echo reply {seq}: payload differs"));
                    }
                    echoed += size;
                    break;
                }
            }
            Ok(echoed)
        }
    })
}

/// The guest's console as it arrives; `.1` once bhyve closed it.
#[derive(Clone, Default)]
struct Console(Arc<Mutex<String>>, Arc<std::sync::atomic::AtomicBool>);

impl Console {
    fn follow(child: &mut Child) -> Console {
        let c = Console::default();
        let out = child.stdout.take().unwrap();
        let (log, closed) = (c.0.clone(), c.1.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let mut l = log.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
            closed.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        c
    }

    fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }

    /// Wait for `what` to appear; false after `limit` or once bhyve has
    /// closed the console without it.
    fn wait(&self, what: &str, limit: Duration) -> bool {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            let closed = self.1.load(std::sync::atomic::Ordering::SeqCst);
            if self.0.lock().unwrap().contains(what) {
                return true;
            }
            if closed {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

/// SysRq `cmd` on the guest's console: a BREAK on COM1, then the key
/// within the kernel's five seconds.
fn sysrq(vm: &str, stdin: &mut ChildStdin, cmd: char) -> bool {
    let o = run("bhyvectl", &[&format!("--vm={vm}"), "--send-break=com1"]);
    o.status.success()
        && stdin
            .write_all(&[cmd as u8])
            .and_then(|_| stdin.flush())
            .is_ok()
}

#[test]
fn linux_drivers_on_our_devices_in_one_boot() {
    require_kvm();
    let kernel = kernel();
    let s = Scratch::new("linux");
    let img = disk(&s);
    let before = superblock(&s, &img);
    let field = |sb: &[(String, String)], k: &str| {
        sb.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert_eq!(field(&before, "Mount count"), "0");

    let ns = Netns::new("linux");
    ns.exec(&["ip", "addr", "add", &format!("{HOST_IP}/24"), "dev", "tap0"]);
    let mut dhcpd = dhcp_server(&ns, &s);
    let _g = VmGuard::new("linux0");
    // noxsave, clearcpuid=151 (POPCNT), 308 (SMAP): instructions this
    // host's KVM refuses (docs/bhyve.8.md, INSTRUCTION COMPLETION).
    let cmdline = "console=ttyS0 root=/dev/vda1 rw ip=dhcp noxsave clearcpuid=151,308 \
                   sysrq_always_enabled panic=-1";
    let o = run(
        "bhyveload",
        &[
            "-m",
            "256M",
            "--kernel",
            kernel.to_str().unwrap(),
            "--cmdline",
            cmdline,
            "linux0",
        ],
    );
    assert!(o.status.success(), "bhyveload: {}", stderr(&o));

    let t0 = Instant::now();
    let dev_blk = format!("3,virtio-blk,{}", img.display());
    let mut bhyve = ns
        .bhyve()
        .args(["-c", "2", "-m", "256M", "-A", "-H", "-P"])
        .args([
            "-s",
            "0,hostbridge",
            "-s",
            &dev_blk,
            "-s",
            "4,virtio-net,tap0",
        ])
        .args(["-s", "31,lpc", "-l", "com1,stdio", "linux0"])
        .env("VMM_DIR", vmm_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bhyve");
    let console = Console::follow(&mut bhyve);
    let mut stdin = bhyve.stdin.take().unwrap();
    let up = console.wait("Run /sbin/init", BOOT_LIMIT);
    let booted = t0.elapsed();

    let mut problems = Vec::new();
    let echoed = if up {
        match ping(&ns, GUEST_IP, 8192, 256) {
            Ok(n) => n,
            Err(e) => {
                problems.push(e);
                0
            }
        }
    } else {
        problems.push(format!("no init after {booted:?}"));
        0
    };
    // Sync, remount read-only, power off: the kernel's own paths.
    for (cmd, done) in [
        ('s', "Emergency Sync complete"),
        ('u', "Emergency Remount complete"),
        ('o', "reboot: Power down"),
    ] {
        if !sysrq("linux0", &mut stdin, cmd) || !console.wait(done, Duration::from_secs(60)) {
            problems.push(format!("SysRq {cmd}: no \"{done}\""));
            break;
        }
    }
    let status = wait_or_kill(&mut bhyve, Duration::from_secs(60));
    stop(&mut dhcpd);
    let log = console.text();
    eprintln!("boot to init {booted:?}, {echoed} bytes echoed\n{log}");
    assert!(problems.is_empty(), "{problems:?}\n{log}");

    for want in [
        "ACPI: RSDP 0x00000000000F2400",
        "smp: Brought up 1 node, 2 CPUs",
        "virtio_blk virtio0: [vda]",
        " vda: vda1",
        "VFS: Mounted root (ext2 filesystem) on device 254:1",
        &format!("IP-Config: Got DHCP answer from {HOST_IP}, my address is {GUEST_IP}"),
    ] {
        assert!(log.contains(want), "the kernel never said {want:?}\n{log}");
    }
    assert!(echoed >= 2 << 20, "only {echoed} bytes echoed");
    assert_eq!(
        status,
        Some(1),
        "bhyve's exit status after the poweroff\n{log}"
    );
    let after = superblock(&s, &img);
    assert_eq!(
        field(&after, "Mount count"),
        "1",
        "the rw mount reached the disk"
    );
    assert_eq!(
        field(&after, "Filesystem state"),
        "clean",
        "remounted read-only"
    );
}

/// Kill `c` and reap it.
fn stop(c: &mut Child) {
    let _ = c.kill();
    let _ = c.wait();
}

/// The exit status, or None (after killing it) if it does not end in time.
fn wait_or_kill(c: &mut Child, limit: Duration) -> Option<i32> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if let Ok(Some(st)) = c.try_wait() {
            return st.code();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = c.kill();
    let _ = c.wait();
    None
}
