//! Network backends for virtio-net (`net_backends.c`): a Linux tap
//! opened through `/dev/net/tun`, non-blocking and brought up when
//! opened.  The tap carries the virtio-net header in front of each frame
//! (IFF_VNET_HDR, sized to what the guest negotiated), so the device
//! passes headers through instead of stripping and prepending them.
//! bhyve's tap backend offers the guest no offloads, so the tap's
//! offloads stay off (TUNSETOFFLOAD 0): nothing was acknowledged that
//! could turn them on.  Any fd that keeps frame boundaries (a
//! `SOCK_SEQPACKET` socketpair in tests) can stand in, with or without
//! headers.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// bhyve's bounce buffer: the largest frame read at once.
pub const NET_MAX_FRAME: usize = 64 * 1024;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const IFF_VNET_HDR: libc::c_int = 0x4000;
const IFNAMSIZ: usize = 16;

/// `struct ifreq` with the flags member of its union, padded.
#[repr(C)]
struct IfReq {
    name: [u8; IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl IfReq {
    fn new(name: &str) -> io::Result<IfReq> {
        let b = name.as_bytes();
        if b.is_empty() || b.len() >= IFNAMSIZ || b.contains(&0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad interface name {name:?}"),
            ));
        }
        let mut r = IfReq {
            name: [0; IFNAMSIZ],
            flags: 0,
            _pad: [0; 22],
        };
        r.name[..b.len()].copy_from_slice(b);
        Ok(r)
    }
}

/// A frame-preserving fd the device reads and writes.
#[derive(Debug)]
pub struct NetBackend {
    fd: OwnedFd,
    name: String,
    /// Frames carry a virtio-net header.
    vnet_hdr: bool,
}

impl NetBackend {
    /// `tap_init`: attach to tap `name` (IFF_TAP | IFF_NO_PI),
    /// non-blocking, and try to bring it up (a warning if we may not).
    pub fn open_tap(name: &str) -> io::Result<NetBackend> {
        let mut req = IfReq::new(name)?;
        // SAFETY: a NUL-terminated path; the result is checked.
        let fd = unsafe {
            libc::open(
                c"/dev/net/tun".as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        req.flags = (libc::IFF_TAP | libc::IFF_NO_PI | IFF_VNET_HDR) as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes one `ifreq`, which `req` is.
        if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF as _, &mut req) } < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("{name}: TUNSETIFF: {e}")));
        }
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETOFFLOAD as _, 0 as libc::c_uint) } < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("{name}: TUNSETOFFLOAD: {e}"),
            ));
        }
        if let Err(e) = if_up(name) {
            eprintln!("{name}: could not bring the interface up: {e}");
        }
        let be = NetBackend {
            fd,
            name: name.to_string(),
            vnet_hdr: true,
        };
        // Until features are negotiated the header is the short one.
        be.set_hdr_len(10)?;
        Ok(be)
    }

    /// Whether frames carry a virtio-net header.
    pub fn has_vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    /// The header length the guest negotiated (10, or 12 with
    /// MRG_RXBUF), for both directions (TUNSETVNETHDRSZ).
    pub fn set_hdr_len(&self, len: usize) -> io::Result<()> {
        if !self.vnet_hdr {
            return Ok(());
        }
        let v = len as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int.
        if unsafe { libc::ioctl(self.fd.as_raw_fd(), TUNSETVNETHDRSZ as _, &v) } < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("{}: TUNSETVNETHDRSZ: {e}", self.name),
            ));
        }
        Ok(())
    }

    /// Any frame-preserving fd (made non-blocking here), whose frames
    /// carry a virtio-net header if `vnet_hdr`.
    pub fn from_fd(fd: OwnedFd, name: &str, vnet_hdr: bool) -> io::Result<NetBackend> {
        // SAFETY: fcntl on an fd we own.
        let fl = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
        if fl < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as above.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(NetBackend {
            fd,
            name: name.to_string(),
            vnet_hdr,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// One frame out; a full backend drops it (as a full tap would).
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: reads `frame.len()` bytes of `frame`.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                return Ok(());
            }
            return Err(e);
        }
        Ok(())
    }

    /// One frame in, `None` when none is waiting.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        // SAFETY: writes at most `buf.len()` bytes into `buf`.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
                _ => Err(e),
            };
        }
        Ok(Some(n as usize))
    }
}

/// For the event loop: readable when a frame is waiting.
impl AsRawFd for NetBackend {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

/// SIOCGIFFLAGS / SIOCSIFFLAGS with IFF_UP.
fn if_up(name: &str) -> io::Result<()> {
    // SAFETY: plain socket call, result checked.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if s < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: we own `s`.
    let s = unsafe { OwnedFd::from_raw_fd(s) };
    let mut req = IfReq::new(name)?;
    // SAFETY: both ioctls take one `ifreq`.
    if unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    if req.flags & libc::IFF_UP as libc::c_short != 0 {
        return Ok(());
    }
    req.flags |= libc::IFF_UP as libc::c_short;
    // SAFETY: as above.
    if unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCSIFFLAGS as _, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A frame-preserving pair: the device's end and the "wire".
    pub fn pair() -> (NetBackend, OwnedFd) {
        pair_with(false)
    }

    /// The same whose frames carry virtio-net headers, as a tap's do.
    pub fn pair_with(vnet_hdr: bool) -> (NetBackend, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for two fds.
        let r = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        assert_eq!(r, 0);
        // SAFETY: both just created.
        let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        (NetBackend::from_fd(a, "pair", vnet_hdr).unwrap(), b)
    }

    #[test]
    fn net_backend_keeps_frames() {
        let (be, wire) = pair();
        let mut buf = [0u8; 64];
        assert_eq!(be.recv(&mut buf).unwrap(), None, "non-blocking");
        let w = NetBackend::from_fd(wire, "wire", false).unwrap();
        w.send(b"abc").unwrap();
        w.send(b"defgh").unwrap();
        assert_eq!(be.recv(&mut buf).unwrap(), Some(3));
        assert_eq!(be.recv(&mut buf).unwrap(), Some(5));
        assert_eq!(&buf[..5], b"defgh");
        be.send(b"xy").unwrap();
        assert_eq!(w.recv(&mut buf).unwrap(), Some(2));
    }

    #[test]
    fn net_backend_bad_tap_names() {
        assert!(IfReq::new("").is_err());
        assert!(IfReq::new("a-very-long-tap-name").is_err());
        assert!(IfReq::new("tap0").is_ok());
    }
}
