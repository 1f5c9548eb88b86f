//! virtio-net (`pci_virtio_net.c`, `net_utils.c`): RX and TX queues of
//! 1024, bhyve's feature set and config space, a tap backend.  A tap
//! takes and gives the virtio-net header with each frame (TX passes the
//! guest's through with its offload fields cleared, as none were
//! negotiated; RX gets the tap's and sets `num_buffers` under
//! MRG_RXBUF); a backend without headers gets frames stripped of the
//! header on TX and a zeroed one in front on RX.
//!
//! RX runs on the mevent thread whenever the tap is readable, once the
//! guest has first kicked the RX queue; when the ring has no room it
//! holds the frame (and any chains already taken), stops listening to
//! the tap and goes on at the next RX kick, dropping nothing (bhyve's
//! `pci_vtnet_rx` with `mevent_disable`/`mevent_enable`).  TX runs on
//! the kick, which arrives on the mevent thread too through an
//! ioeventfd.  Every descriptor is checked against guest RAM before it
//! is touched.

use std::sync::{Arc, Mutex, MutexGuard, Weak};

use vmmapi::vm_memory::{Bytes, GuestMemoryMmap};

use crate::mevent::{Mevent, MeventId};
use crate::net_backends::{NET_MAX_FRAME, NetBackend};
use crate::pci_emul::{PciError, PciFunction};
use crate::pci_irq::PciIrq;
use crate::pci_virtio_block::md5;
use crate::virtio::{
    self, Chain, VIRTIO_F_NOTIFY_ON_EMPTY, VIRTIO_RING_F_INDIRECT_DESC, Virtio, VirtioDevice,
    VirtioEnv, VirtioIds,
};

pub const VIRTIO_DEV_NET: u16 = 0x1000;
pub const VIRTIO_ID_NETWORK: u16 = 1;
const PCIC_NETWORK: u8 = 0x02;

pub const VTNET_RINGSZ: u16 = 1024;
/// `VTNET_MAXSEGS`: descriptors per TX chain.
pub const VTNET_MAXSEGS: usize = 256;
pub const VTNET_RXQ: usize = 0;
pub const VTNET_TXQ: usize = 1;

pub const VIRTIO_NET_F_MTU: u64 = 1 << 3;
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
pub const VIRTIO_NET_F_MRG_RXBUF: u64 = 1 << 15;
pub const VIRTIO_NET_F_STATUS: u64 = 1 << 16;
pub const VIRTIO_NET_S_LINK_UP: u16 = 1;

/// The header without and with `num_buffers`.
pub const VTNET_HDR_LEN: usize = 10;
pub const VTNET_MRG_HDR_LEN: usize = 12;

/// `struct virtio_net_config`: mac, status, max_virtqueue_pairs, mtu.
pub const VTNET_CFG_SIZE: usize = 12;
/// `ETHERMIN`..65535: what `mtu=` accepts; 1500 otherwise.
pub const VTNET_MIN_MTU: u32 = 64;
pub const VTNET_DEFAULT_MTU: u16 = 1500;

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `net_genmac`: 00:a0:98 then the first three bytes of
/// MD5("<slot>-<func>-<vmname>").
pub fn gen_mac(slot: u8, func: u8, vmname: &str) -> [u8; 6] {
    let d = md5(format!("{slot}-{func}-{vmname}").as_bytes());
    [0x00, 0xa0, 0x98, d[0], d[1], d[2]]
}

/// `net_parsemac`: an ethers(5) address, unicast and not zero.
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let bad = || format!("invalid MAC address {s:?}");
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next().ok_or_else(bad)?;
        if p.is_empty() || p.len() > 2 {
            return Err(bad());
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() || mac[0] & 1 != 0 || mac == [0; 6] {
        return Err(bad());
    }
    Ok(mac)
}

/// `net_parsemtu`.
pub fn parse_mtu(s: &str) -> Result<u16, String> {
    match s.parse::<u32>() {
        Ok(m) if (VTNET_MIN_MTU..=65535).contains(&m) => Ok(m as u16),
        _ => Err(format!("invalid MTU {s:?}")),
    }
}

/// RX state, shared by the tap handler and the RX kick.
struct RxState {
    /// Set by the first RX kick after features were negotiated.
    vs: Option<Virtio>,
    ready: bool,
    hdrlen: usize,
    mrg: bool,
    /// The frame last read, when `pending` says it did not fit yet.
    buf: Vec<u8>,
    pending: Option<usize>,
    /// Chains taken for a frame that did not fit yet.
    held: Vec<Chain>,
    /// The tap's event, once the first RX kick registered it.
    event: Option<MeventId>,
}

struct Shared {
    be: NetBackend,
    rx: Mutex<RxState>,
    mevent: Arc<Mevent>,
}

/// The device.
pub struct VtNet {
    sh: Arc<Shared>,
    cfg: [u8; VTNET_CFG_SIZE],
    features: u64,
    negotiated: bool,
}

impl std::fmt::Debug for VtNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VtNet").finish_non_exhaustive()
    }
}

/// `struct virtio_net_config` as bhyve fills it.
pub fn config_space(mac: [u8; 6], mtu: Option<u16>) -> [u8; VTNET_CFG_SIZE] {
    let mut c = [0u8; VTNET_CFG_SIZE];
    c[..6].copy_from_slice(&mac);
    c[6..8].copy_from_slice(&VIRTIO_NET_S_LINK_UP.to_le_bytes());
    c[8..10].copy_from_slice(&1u16.to_le_bytes());
    c[10..12].copy_from_slice(&mtu.unwrap_or(VTNET_DEFAULT_MTU).to_le_bytes());
    c
}

impl VtNet {
    /// `pci_vtnet_init` for an opened backend.
    pub fn new(be: NetBackend, mac: [u8; 6], mtu: Option<u16>, mevent: Arc<Mevent>) -> VtNet {
        let mut features = VIRTIO_NET_F_MAC
            | VIRTIO_NET_F_STATUS
            | VIRTIO_F_NOTIFY_ON_EMPTY
            | VIRTIO_RING_F_INDIRECT_DESC
            | VIRTIO_NET_F_MRG_RXBUF;
        if mtu.is_some() {
            features |= VIRTIO_NET_F_MTU;
        }
        VtNet {
            sh: Arc::new(Shared {
                be,
                rx: Mutex::new(RxState {
                    vs: None,
                    ready: false,
                    hdrlen: VTNET_HDR_LEN,
                    mrg: false,
                    buf: vec![0; VTNET_MRG_HDR_LEN + NET_MAX_FRAME],
                    pending: None,
                    held: Vec::new(),
                    event: None,
                }),
                mevent,
            }),
            cfg: config_space(mac, mtu),
            features,
            negotiated: false,
        }
    }

    fn hdrlen(&self) -> usize {
        lock(&self.sh.rx).hdrlen
    }

    /// `pci_vtnet_proctx`: one TX chain to the backend.
    fn tx(&self, vs: &Virtio, mem: &GuestMemoryMmap, chain: &Chain) {
        let hdrlen = self.hdrlen();
        let mut frame = Vec::new();
        if chain.descs.len() <= VTNET_MAXSEGS {
            for d in &chain.descs {
                // Only device-readable RAM; anything else ends the frame.
                if d.writable || !vs.is_ram(d.addr, d.len.into()) {
                    frame.clear();
                    break;
                }
                let start = frame.len();
                frame.resize(start + d.len as usize, 0);
                if mem.read_slice(&mut frame[start..], d.addr).is_err() {
                    frame.clear();
                    break;
                }
                if frame.len() > hdrlen + NET_MAX_FRAME {
                    frame.clear();
                    break;
                }
            }
        }
        if frame.len() > hdrlen {
            let out = if self.sh.be.has_vnet_hdr() {
                // No offload was offered: a header asking for checksum or
                // segmentation work must not reach the host's stack.
                frame[..hdrlen].fill(0);
                &frame[..]
            } else {
                &frame[hdrlen..]
            };
            if let Err(e) = self.sh.be.send(out) {
                eprintln!("{}: tx: {e}", self.sh.be.name());
            }
        }
        vs.done(chain, 0);
    }
}

impl Drop for VtNet {
    fn drop(&mut self) {
        if let Some(id) = lock(&self.sh.rx).event.take() {
            self.sh.mevent.delete(id);
        }
    }
}

/// Where RX bytes may go: the writable RAM descriptors of `c`.
fn rx_room(vs: &Virtio, c: &Chain) -> Vec<(vmmapi::vm_memory::GuestAddress, usize)> {
    c.descs
        .iter()
        .filter(|d| d.writable && d.len > 0 && vs.is_ram(d.addr, d.len.into()))
        .map(|d| (d.addr, d.len as usize))
        .collect()
}

/// Scatter `bytes` over `room`; the count written.
fn scatter(
    mem: &GuestMemoryMmap,
    room: &[(vmmapi::vm_memory::GuestAddress, usize)],
    bytes: &[u8],
) -> usize {
    let mut off = 0;
    for &(a, n) in room {
        if off >= bytes.len() {
            break;
        }
        let k = n.min(bytes.len() - off);
        if mem.write_slice(&bytes[off..off + k], a).is_err() {
            break;
        }
        off += k;
    }
    off
}

/// `pci_vtnet_rx` for one packet (header, then frame): false (chains
/// kept in `held`) when the ring ran out before it fit.
fn rx_frame(vs: &Virtio, bytes: &mut [u8], mrg: bool, held: &mut Vec<Chain>) -> bool {
    let mem = vs.mem();
    let total = bytes.len();
    if !mrg {
        let c = match held.pop() {
            Some(c) => c,
            None => match vs.pop(VTNET_RXQ) {
                Some(c) => c,
                None => return false,
            },
        };
        // A short chain gets the frame truncated, as readv into it would.
        let n = scatter(mem, &rx_room(vs, &c), bytes);
        vs.done(&c, n as u32);
        return true;
    }
    let mut cap: usize = held
        .iter()
        .map(|c| rx_room(vs, c).iter().map(|r| r.1).sum::<usize>())
        .sum();
    while cap < total {
        let Some(c) = vs.pop(VTNET_RXQ) else {
            return false;
        };
        let room: usize = rx_room(vs, &c).iter().map(|r| r.1).sum();
        if room == 0 {
            vs.done(&c, 0);
            continue;
        }
        cap += room;
        held.push(c);
    }
    let nbufs = held.len() as u16;
    bytes[10..VTNET_MRG_HDR_LEN].copy_from_slice(&nbufs.to_le_bytes());
    let mut off = 0;
    for c in held.drain(..) {
        let n = scatter(mem, &rx_room(vs, &c), &bytes[off..]);
        off += n;
        vs.done(&c, n as u32);
    }
    true
}

/// Frames from the backend into the RX queue until the backend is empty
/// or the ring is full; in the latter case stop listening to the backend
/// until the next RX kick.
fn rx_drain(sh: &Shared) {
    let mut guard = lock(&sh.rx);
    let st = &mut *guard;
    let vs = match (&st.vs, st.ready) {
        (Some(vs), true) => vs.clone(),
        _ => {
            if let Some(id) = st.event {
                sh.mevent.set_enabled(id, false);
            }
            return;
        }
    };
    // A headerless backend's frames are read in after room for the
    // header, which then only needs clearing.
    let at = if sh.be.has_vnet_hdr() { 0 } else { st.hdrlen };
    loop {
        let n = match st.pending.take() {
            Some(n) => n,
            None => match sh.be.recv(&mut st.buf[at..]) {
                Ok(Some(n)) if at + n >= st.hdrlen => {
                    st.buf[..at].fill(0);
                    at + n
                }
                Ok(Some(_)) => continue,
                Ok(None) => return,
                Err(e) => {
                    eprintln!("{}: rx: {e}", sh.be.name());
                    if let Some(id) = st.event {
                        sh.mevent.set_enabled(id, false);
                    }
                    return;
                }
            },
        };
        if !rx_frame(&vs, &mut st.buf[..n], st.mrg, &mut st.held) {
            st.pending = Some(n);
            if let Some(id) = st.event {
                sh.mevent.set_enabled(id, false);
            }
            return;
        }
    }
}

/// The tap's readable event, served on the mevent thread.
fn rx_register(sh: &Arc<Shared>) -> std::io::Result<MeventId> {
    let weak: Weak<Shared> = Arc::downgrade(sh);
    sh.mevent.add_read(&sh.be, move || {
        if let Some(sh) = weak.upgrade() {
            rx_drain(&sh);
        }
    })
}

impl VirtioDevice for VtNet {
    fn features(&self) -> u64 {
        self.features
    }

    fn apply_features(&mut self, negotiated: u64) {
        let mrg = negotiated & VIRTIO_NET_F_MRG_RXBUF != 0;
        let mut st = lock(&self.sh.rx);
        st.mrg = mrg;
        st.hdrlen = if mrg {
            VTNET_MRG_HDR_LEN
        } else {
            VTNET_HDR_LEN
        };
        if let Err(e) = self.sh.be.set_hdr_len(st.hdrlen) {
            eprintln!("{e}");
        }
        self.negotiated = true;
    }

    fn queue_sizes(&self) -> Vec<u16> {
        vec![VTNET_RINGSZ, VTNET_RINGSZ]
    }

    fn cfg_size(&self) -> usize {
        VTNET_CFG_SIZE
    }

    fn cfg_read(&self, off: usize, data: &mut [u8]) {
        if let Some(s) = self.cfg.get(off..off + data.len()) {
            data.copy_from_slice(s);
        }
    }

    /// The driver may set the MAC; other writes are ignored.
    fn cfg_write(&mut self, off: usize, data: &[u8]) -> bool {
        if off + data.len() <= 6 {
            self.cfg[off..off + data.len()].copy_from_slice(data);
        }
        true
    }

    fn notify(&mut self, vq: usize, vs: &Virtio) {
        match vq {
            VTNET_RXQ => {
                // RX starts with the first kick after negotiation.
                if !self.negotiated {
                    return;
                }
                let event = {
                    let mut st = lock(&self.sh.rx);
                    st.vs = Some(vs.clone());
                    st.ready = true;
                    if st.event.is_none() {
                        match rx_register(&self.sh) {
                            Ok(id) => st.event = Some(id),
                            Err(e) => eprintln!("{}: rx event: {e}", self.sh.be.name()),
                        }
                    }
                    st.event
                };
                // Room may have appeared for a held frame; then listen to
                // the backend again.
                rx_drain(&self.sh);
                if let Some(id) = event {
                    self.sh.mevent.set_enabled(id, true);
                }
            }
            VTNET_TXQ => {
                let mem = vs.mem();
                while let Some(c) = vs.pop(VTNET_TXQ) {
                    self.tx(vs, mem, &c);
                }
            }
            _ => {}
        }
    }

    fn reset(&mut self) {
        let mut st = lock(&self.sh.rx);
        st.ready = false;
        st.mrg = false;
        st.hdrlen = VTNET_HDR_LEN;
        // Chains of the old rings are stale, and a frame read with the
        // old header length would be laid out wrongly.
        st.held.clear();
        st.pending = None;
        if let Err(e) = self.sh.be.set_hdr_len(VTNET_HDR_LEN) {
            eprintln!("{e}");
        }
        if let Some(id) = st.event {
            self.sh.mevent.set_enabled(id, false);
        }
        drop(st);
        self.negotiated = false;
    }
}

/// The options of a virtio-net slot: `mac=`, `mtu=`, and the VM name
/// the default MAC is derived from.
#[derive(Debug, Clone, Copy, Default)]
pub struct NetOpts<'a> {
    pub mac: Option<&'a str>,
    pub mtu: Option<&'a str>,
    pub vmname: &'a str,
}

/// A virtio-net function on `be` (`pci_vtnet_init`); without `mac=` the
/// MAC is derived from the slot and the VM name.
pub fn new(
    slot: u8,
    func: u8,
    be: NetBackend,
    o: NetOpts<'_>,
    env: &VirtioEnv,
    irq: Arc<PciIrq>,
) -> Result<(PciFunction, Virtio), PciError> {
    let NetOpts { mac, mtu, vmname } = o;
    let err = |why: String| PciError::Device {
        bdf: format!("0:{slot}:{func}"),
        why: format!("virtio-net: {why}"),
    };
    let mac = match mac {
        Some(m) => parse_mac(m).map_err(err)?,
        None => gen_mac(slot, func, vmname),
    };
    let mtu = mtu.map(parse_mtu).transpose().map_err(err)?;
    let mevent = env
        .mevent
        .clone()
        .ok_or_else(|| err("needs the event loop".into()))?;
    let ids = VirtioIds {
        device: VIRTIO_DEV_NET,
        class: PCIC_NETWORK,
        subsys: VIRTIO_ID_NETWORK,
    };
    virtio::new_function(
        slot,
        func,
        "virtio-net",
        ids,
        VtNet::new(be, mac, mtu, mevent),
        env,
        irq,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net_backends::tests::pair_with;
    use crate::virtio::tests::{Rig, Ring};
    use crate::virtio::{
        VIRTIO_PCI_GUEST_FEATURES, VIRTIO_PCI_HOST_FEATURES, VIRTIO_PCI_QUEUE_NOTIFY,
        VIRTIO_PCI_QUEUE_PFN, VIRTIO_PCI_QUEUE_SEL,
    };
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::thread;
    use std::time::{Duration, Instant};
    use vmmapi::vm_memory::GuestAddress;

    const SMALL: u16 = 8;

    struct T {
        r: Rig,
        rx: Ring,
        tx: Ring,
        wire: OwnedFd,
    }

    fn rig(features: u32) -> T {
        rig_with(features, false)
    }

    /// With a backend whose frames carry headers, as a tap's do.
    fn rig_with(features: u32, vnet_hdr: bool) -> T {
        let (be, wire) = pair_with(vnet_hdr);
        let me = Mevent::start().unwrap();
        let dev = VtNet::new(be, gen_mac(4, 0, "vm"), None, me.clone());
        let r = Rig::with_env(crate::virtio::tests::ram(), dev, false, Some(me));
        r.outl(VIRTIO_PCI_GUEST_FEATURES, 4, features);
        // RX ring at 0x10000, TX ring at 0x20000 (1024 entries each).
        r.outl(VIRTIO_PCI_QUEUE_SEL, 2, 0);
        r.outl(VIRTIO_PCI_QUEUE_PFN, 4, 0x10);
        r.outl(VIRTIO_PCI_QUEUE_SEL, 2, 1);
        r.outl(VIRTIO_PCI_QUEUE_PFN, 4, 0x20);
        let ring = |base| Ring {
            base,
            n: VTNET_RINGSZ,
            avail_idx: 0,
        };
        T {
            r,
            rx: ring(0x10000),
            tx: ring(0x20000),
            wire,
        }
    }

    fn wire_send(w: &OwnedFd, b: &[u8]) {
        // SAFETY: reads `b`.
        let n = unsafe { libc::write(w.as_raw_fd(), b.as_ptr().cast(), b.len()) };
        assert_eq!(n, b.len() as isize);
    }

    fn wire_recv(w: &OwnedFd) -> Vec<u8> {
        let mut b = vec![0u8; 2048];
        // SAFETY: writes into `b`.
        let n = unsafe {
            libc::recv(
                w.as_raw_fd(),
                b.as_mut_ptr().cast(),
                b.len(),
                libc::MSG_DONTWAIT,
            )
        };
        assert!(n >= 0, "no frame on the wire");
        b.truncate(n as usize);
        b
    }

    fn wait_used(ring: &Ring, m: &GuestMemoryMmap, n: u16) {
        let t = Instant::now();
        while ring.used_idx(m) < n {
            assert!(t.elapsed() < Duration::from_secs(5), "timed out");
            thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn vtnet_mac_mtu_and_config() {
        let d = md5(b"4-0-vm");
        assert_eq!(gen_mac(4, 0, "vm"), [0, 0xa0, 0x98, d[0], d[1], d[2]]);
        // RFC 1321's digest of "abc" starts 90 01 50.
        assert_eq!(md5(b"abc")[..3], [0x90, 0x01, 0x50]);
        assert_eq!(parse_mac("0:a0:98:1:2:3"), Ok([0, 0xa0, 0x98, 1, 2, 3]));
        assert!(parse_mac("01:00:00:00:00:01").is_err(), "multicast");
        assert!(parse_mac("00:00:00:00:00:00").is_err(), "zero");
        assert!(parse_mac("00:11:22:33:44").is_err());
        assert!(parse_mac("00:11:22:33:44:55:66").is_err());
        assert!(parse_mac("00:11:22:33:44:5g").is_err());
        assert_eq!(parse_mtu("9000"), Ok(9000));
        assert!(parse_mtu("63").is_err());
        assert!(parse_mtu("65536").is_err());
        let c = config_space([2, 3, 4, 5, 6, 7], None);
        assert_eq!(c, [2, 3, 4, 5, 6, 7, 1, 0, 1, 0, 0xdc, 0x05]);
        assert_eq!(
            config_space([2; 6], Some(9000))[10..],
            9000u16.to_le_bytes()
        );
    }

    #[test]
    fn vtnet_identity_features_and_cfg_writes() {
        let t = rig(0);
        // The Rig sets its own PCI IDs; the feature bits are the device's.
        let hf = t.r.inl(VIRTIO_PCI_HOST_FEATURES, 4);
        assert_eq!(
            u64::from(hf),
            VIRTIO_NET_F_MAC
                | VIRTIO_NET_F_STATUS
                | VIRTIO_F_NOTIFY_ON_EMPTY
                | VIRTIO_RING_F_INDIRECT_DESC
                | VIRTIO_NET_F_MRG_RXBUF
        );
        // Config at 20 (no MSI-X): MAC writable, status not.
        let mac = gen_mac(4, 0, "vm");
        assert_eq!(t.r.inl(20, 1), u32::from(mac[0]));
        t.r.outl(20 + 4, 2, 0xbbaa);
        assert_eq!(t.r.inl(20 + 4, 2), 0xbbaa);
        t.r.outl(20 + 6, 2, 0);
        assert_eq!(t.r.inl(20 + 6, 2), 1, "link stays up");
        assert_eq!(t.r.inl(20 + 10, 2), 1500);
    }

    #[test]
    fn vtnet_tx_strips_the_header() {
        let mut t = rig(0);
        let m = t.r.mem.clone();
        // Header (10 bytes) + 4 bytes in one descriptor, 3 more in another.
        let mut b = vec![0xeeu8; VTNET_HDR_LEN];
        b.extend_from_slice(b"abcd");
        m.write_slice(&b, GuestAddress(0x40000)).unwrap();
        m.write_slice(b"efg", GuestAddress(0x41000)).unwrap();
        t.tx.desc(&m, 0, 0x40000, b.len() as u32, false, Some(1));
        t.tx.desc(&m, 1, 0x41000, 3, false, None);
        t.tx.post(&m, 0);
        // A chain pointing outside RAM is completed, nothing sent.
        t.tx.desc(&m, 2, 1 << 40, 64, false, None);
        t.tx.post(&m, 2);
        t.r.outl(VIRTIO_PCI_QUEUE_NOTIFY, 2, VTNET_TXQ as u32);
        assert_eq!(wire_recv(&t.wire), b"abcdefg");
        assert_eq!(t.tx.used_idx(&m), 2);
        assert_eq!(t.tx.used_elem(&m, 0), (0, 0));
        assert_eq!(t.tx.used_elem(&m, 1), (2, 0));
        let mut x = [0u8; 4];
        // SAFETY: writes into `x`.
        let n = unsafe {
            libc::recv(
                t.wire.as_raw_fd(),
                x.as_mut_ptr().cast(),
                4,
                libc::MSG_DONTWAIT,
            )
        };
        assert!(n < 0, "the bad chain sent nothing");
    }

    /// A tap takes the header too, with the offload fields a guest may not
    /// use (none were offered) cleared; it gives one back, in which only
    /// `num_buffers` is ours.
    #[test]
    fn vtnet_header_passes_through_a_vnet_backend() {
        let mut t = rig_with(VIRTIO_NET_F_MRG_RXBUF as u32, true);
        let m = t.r.mem.clone();
        // NEEDS_CSUM and GSO_TCPV4 with sizes: must not reach the host.
        let mut b = vec![1u8, 1, 0x40, 0, 0x10, 0, 0x22, 0, 0x10, 0, 0xee, 0xee];
        b.extend_from_slice(b"frame");
        m.write_slice(&b, GuestAddress(0x40000)).unwrap();
        t.tx.desc(&m, 0, 0x40000, b.len() as u32, false, None);
        t.tx.post(&m, 0);
        t.r.outl(VIRTIO_PCI_QUEUE_NOTIFY, 2, VTNET_TXQ as u32);
        let mut want = vec![0u8; VTNET_MRG_HDR_LEN];
        want.extend_from_slice(b"frame");
        assert_eq!(wire_recv(&t.wire), want);

        t.rx.desc(&m, 0, 0x50000, 0x800, true, None);
        t.rx.post(&m, 0);
        t.r.outl(VIRTIO_PCI_QUEUE_NOTIFY, 2, VTNET_RXQ as u32);
        let mut pkt = vec![0u8; VTNET_MRG_HDR_LEN];
        pkt.extend_from_slice(b"in!");
        wire_send(&t.wire, &pkt);
        wait_used(&t.rx, &m, 1);
        assert_eq!(t.rx.used_elem(&m, 0), (0, 15));
        let mut got = [0xffu8; 15];
        m.read_slice(&mut got, GuestAddress(0x50000)).unwrap();
        assert_eq!(&got[..10], &[0; 10]);
        assert_eq!(&got[10..12], &1u16.to_le_bytes(), "num_buffers");
        assert_eq!(&got[12..], b"in!");
    }

    #[test]
    fn vtnet_rx_one_chain_per_frame() {
        let mut t = rig(0);
        let m = t.r.mem.clone();
        // A frame before the first kick waits for it.
        wire_send(&t.wire, b"hello");
        thread::sleep(Duration::from_millis(50));
        assert_eq!(t.rx.used_idx(&m), 0);
        for i in 0..2u16 {
            t.rx.desc(&m, i, 0x50000 + 0x1000 * u64::from(i), 0x800, true, None);
            t.rx.post(&m, i);
        }
        t.r.outl(VIRTIO_PCI_QUEUE_NOTIFY, 2, VTNET_RXQ as u32);
        wait_used(&t.rx, &m, 1);
        assert_eq!(t.rx.used_elem(&m, 0), (0, 15));
        let mut got = [0xffu8; 15];
        m.read_slice(&mut got, GuestAddress(0x50000)).unwrap();
        assert_eq!(&got[..10], &[0; 10], "zeroed header");
        assert_eq!(&got[10..], b"hello");
        wire_send(&t.wire, b"second");
        wait_used(&t.rx, &m, 2);
        assert_eq!(t.rx.used_elem(&m, 1), (1, 16));
        // Ring empty: the frame waits (not dropped) for the next kick.
        wire_send(&t.wire, b"third!!");
        thread::sleep(Duration::from_millis(100));
        assert_eq!(t.rx.used_idx(&m), 2);
        t.rx.desc(&m, 2, 0x52000, 0x800, true, None);
        t.rx.post(&m, 2);
        t.r.outl(VIRTIO_PCI_QUEUE_NOTIFY, 2, VTNET_RXQ as u32);
        wait_used(&t.rx, &m, 3);
        assert_eq!(t.rx.used_elem(&m, 2), (2, 17));
    }

    #[test]
    fn vtnet_rx_mergeable_buffers() {
        let mut t = rig(VIRTIO_NET_F_MRG_RXBUF as u32);
        let m = t.r.mem.clone();
        // Three 8-byte buffers: a 12-byte header + 10-byte frame needs all.
        for i in 0..3u16 {
            t.rx.desc(
                &m,
                i,
                0x50000 + 0x100 * u64::from(i),
                u32::from(SMALL),
                true,
                None,
            );
        }
        t.rx.post(&m, 0);
        t.rx.post(&m, 1);
        t.r.outl(VIRTIO_PCI_QUEUE_NOTIFY, 2, VTNET_RXQ as u32);
        wire_send(&t.wire, b"0123456789");
        thread::sleep(Duration::from_millis(100));
        assert_eq!(t.rx.used_idx(&m), 0, "two buffers are not enough");
        t.rx.post(&m, 2);
        t.r.outl(VIRTIO_PCI_QUEUE_NOTIFY, 2, VTNET_RXQ as u32);
        wait_used(&t.rx, &m, 3);
        assert_eq!(t.rx.used_elem(&m, 0), (0, 8));
        assert_eq!(t.rx.used_elem(&m, 1), (1, 8));
        assert_eq!(t.rx.used_elem(&m, 2), (2, 6));
        let mut got = Vec::new();
        for i in 0..3u64 {
            let mut b = [0u8; 8];
            m.read_slice(&mut b, GuestAddress(0x50000 + 0x100 * i))
                .unwrap();
            got.extend_from_slice(&b);
        }
        assert_eq!(&got[..10], &[0; 10]);
        assert_eq!(&got[10..12], &3u16.to_le_bytes(), "num_buffers");
        assert_eq!(&got[12..22], b"0123456789");
    }
}
