//! Network namespaces of the tests' own (`ip netns add`), with a tap in
//! each, so that no guest traffic ever leaves the machine's sandbox.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;

use crate::{bin, stderr};

/// A network namespace of the test's own with a tap in it (IPv6 off so
/// the host stays quiet on it); deleted on drop.
#[derive(Debug)]
pub struct Netns(pub String);

fn ip(args: &[&str]) {
    let o = Command::new("ip")
        .args(args)
        .output()
        .expect("ip (iproute2)");
    assert!(o.status.success(), "ip {args:?}: {}", stderr(&o));
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = format!("bhyvers-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        let ns = Netns(name);
        for v in ["all", "default"] {
            ns.exec(&[
                "sysctl",
                "-qw",
                &format!("net.ipv6.conf.{v}.disable_ipv6=1"),
            ]);
        }
        ns.exec(&["ip", "tuntap", "add", "dev", "tap0", "mode", "tap"]);
        ns.exec(&["ip", "link", "set", "tap0", "up"]);
        ns
    }

    pub fn exec(&self, cmd: &[&str]) {
        ip(&[&["netns", "exec", self.0.as_str()], cmd].concat());
    }

    /// bhyve run inside the namespace.
    pub fn bhyve(&self) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0, bin("bhyve").to_str().unwrap()]);
        c
    }

    /// Run `f` on a thread inside the namespace: sockets it makes stay
    /// bound to the namespace.
    pub fn within<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let ns = self.0.clone();
        std::thread::spawn(move || {
            let nsf = std::fs::File::open(format!("/run/netns/{ns}")).expect("netns file");
            // SAFETY: setns on this thread only, with a valid fd.
            let r = unsafe { libc::setns(nsf.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("thread in the namespace")
    }

    /// A raw AF_PACKET socket on `dev` in the namespace.
    pub fn packet_socket(&self, dev: &str) -> OwnedFd {
        let dev = std::ffi::CString::new(dev).unwrap();
        // SAFETY: plain socket calls on a socket we own, with structures
        // of the sizes passed.
        self.within(move || unsafe {
            let ifindex = libc::if_nametoindex(dev.as_ptr());
            assert!(ifindex != 0, "no {dev:?} in the namespace");
            let proto = (libc::ETH_P_ALL as u16).to_be();
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto as i32);
            assert!(
                fd >= 0,
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            let fd = OwnedFd::from_raw_fd(fd);
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto;
            sll.sll_ifindex = ifindex as i32;
            let r = libc::bind(
                fd.as_raw_fd(),
                &sll as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(r, 0, "bind: {}", std::io::Error::last_os_error());
            set_recv_timeout(&fd, 1);
            fd
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// Let reads of socket `fd` give up (EAGAIN) after `secs` seconds.
pub fn set_recv_timeout(fd: &OwnedFd, secs: libc::time_t) {
    let tv = libc::timeval {
        tv_sec: secs,
        tv_usec: 0,
    };
    // SAFETY: a socket option on a socket we own, with a timeval of the
    // size passed.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    assert_eq!(r, 0, "SO_RCVTIMEO: {}", std::io::Error::last_os_error());
}
