//! virtio-blk (`pci_virtio_block.c`): one 128-entry queue, bhyve's
//! feature set and config space, requests handed to blockif workers.
//! Every descriptor is checked against guest RAM and the request's
//! direction before any I/O; a bad request completes with IOERR.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use vmmapi::vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::blockif::{BlockIf, BlockOp, BlockReq, DEV_BSIZE, Disk};
use crate::pci_emul::{PciError, PciFunction};
use crate::pci_irq::PciIrq;
use crate::virtio::{
    self, Chain, Desc, VIRTIO_RING_F_INDIRECT_DESC, Virtio, VirtioDevice, VirtioEnv, VirtioIds,
};

pub const VIRTIO_DEV_BLOCK: u16 = 0x1001;
pub const VIRTIO_ID_BLOCK: u16 = 2;
const PCIC_STORAGE: u8 = 0x01;

pub const VTBLK_RINGSZ: u16 = 128;
/// `VTBLK_MAXSEGS`: data segments per request.
pub const VTBLK_MAXSEGS: usize = 126;

pub const VTBLK_F_SEG_MAX: u64 = 1 << 2;
pub const VTBLK_F_BLK_SIZE: u64 = 1 << 6;
pub const VTBLK_F_FLUSH: u64 = 1 << 9;
pub const VTBLK_F_TOPOLOGY: u64 = 1 << 10;
pub const VTBLK_F_DISCARD: u64 = 1 << 13;

pub const VBH_OP_READ: u32 = 0;
pub const VBH_OP_WRITE: u32 = 1;
pub const VBH_OP_FLUSH: u32 = 4;
pub const VBH_OP_FLUSH_OUT: u32 = 5;
pub const VBH_OP_IDENT: u32 = 8;
pub const VBH_OP_DISCARD: u32 = 11;
const VBH_FLAG_BARRIER: u32 = 0x8000_0000;

pub const VTBLK_S_OK: u8 = 0;
pub const VTBLK_S_IOERR: u8 = 1;
pub const VTBLK_S_UNSUPP: u8 = 2;

/// `VTBLK_BLK_ID_BYTES`.
pub const VTBLK_BLK_ID_BYTES: usize = 20;
/// `VTBLK_MAX_DISCARD_SECT`, `VTBLK_MAX_DISCARD_SEG`.
const VTBLK_MAX_DISCARD_SECT: u32 = (16 << 20) / 512;
const VTBLK_MAX_DISCARD_SEG: u32 = 1;
/// `struct vtblk_config` with the write-zeroes fields.
pub const VTBLK_CFG_SIZE: usize = 60;
/// Request header: type, ioprio, sector.
const VBH_SIZE: u32 = 16;
/// A discard range: sector, num_sectors, flags.
const DISCARD_SIZE: u32 = 16;

/// The device: its disk, config bytes and ident.
pub struct VtBlk {
    bc: Arc<BlockIf>,
    cfg: [u8; VTBLK_CFG_SIZE],
    ident: [u8; VTBLK_BLK_ID_BYTES],
    features: u64,
    /// Requests with the workers; past a ring's worth, further chains
    /// wait in the ring for the next notify (only a guest reusing heads
    /// gets there).
    inflight: Arc<Inflight>,
}

/// A count of requests with the workers that a reset can wait out.  The
/// count is atomic, so the virtqueue path takes no lock; only a request
/// ending while a reset waits touches the condvar.
#[derive(Default)]
struct Inflight {
    n: AtomicUsize,
    resetting: AtomicBool,
    lock: Mutex<()>,
    idle: Condvar,
}

impl Inflight {
    fn count(&self) -> usize {
        self.n.load(Ordering::SeqCst)
    }

    fn start(&self) {
        self.n.fetch_add(1, Ordering::SeqCst);
    }

    fn end(&self) {
        // SeqCst against wait_idle's: either it sees the count at 0, or
        // this sees it waiting and wakes it under the lock it waits with.
        if self.n.fetch_sub(1, Ordering::SeqCst) == 1 && self.resetting.load(Ordering::SeqCst) {
            let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.idle.notify_all();
        }
    }

    /// One caller at a time (the BAR lock serialises resets).
    fn wait_idle(&self) {
        let mut g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.resetting.store(true, Ordering::SeqCst);
        while self.count() > 0 {
            g = self.idle.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        self.resetting.store(false, Ordering::SeqCst);
    }
}

impl std::fmt::Debug for VtBlk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VtBlk").finish_non_exhaustive()
    }
}

/// bhyve's default ident: `BHYVE-XXXX-XXXX-XXXX` from the MD5 of the
/// backing path.
pub fn default_ident(path: &str) -> String {
    let d = md5(path.as_bytes());
    format!(
        "BHYVE-{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}",
        d[0], d[1], d[2], d[3], d[4], d[5]
    )
}

/// RFC 1321, for the ident only.
pub(crate) fn md5(msg: &[u8]) -> [u8; 16] {
    const S: [u32; 64] = [
        7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 5, 9, 14, 20, 5, 9, 14, 20, 5,
        9, 14, 20, 5, 9, 14, 20, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 6, 10,
        15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21,
    ];
    let k: Vec<u32> = (0..64)
        .map(|i| ((i as f64 + 1.0).sin().abs() * 4294967296.0) as u32)
        .collect();
    let mut h: [u32; 4] = [0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476];
    let mut data = msg.to_vec();
    data.push(0x80);
    while data.len() % 64 != 56 {
        data.push(0);
    }
    data.extend_from_slice(&((msg.len() as u64).wrapping_mul(8)).to_le_bytes());
    for block in data.chunks_exact(64) {
        let m: Vec<u32> = block
            .chunks_exact(4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .collect();
        let [mut a, mut b, mut c, mut d] = h;
        for i in 0..64 {
            let (f, g) = match i / 16 {
                0 => ((b & c) | (!b & d), i),
                1 => ((d & b) | (!d & c), (5 * i + 1) % 16),
                2 => (b ^ c ^ d, (3 * i + 5) % 16),
                _ => (c ^ (b | !d), (7 * i) % 16),
            };
            let t = d;
            d = c;
            c = b;
            b = b.wrapping_add(
                a.wrapping_add(f)
                    .wrapping_add(k[i])
                    .wrapping_add(m[g])
                    .rotate_left(S[i]),
            );
            a = t;
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 16];
    for (o, w) in out.chunks_exact_mut(4).zip(h) {
        o.copy_from_slice(&w.to_le_bytes());
    }
    out
}

impl VtBlk {
    /// `pci_vtblk_init` for an opened disk; `ser` overrides the ident.
    pub fn new(bc: BlockIf, ser: Option<&str>) -> VtBlk {
        let d = bc.disk();
        let ident = ser.map_or_else(|| default_ident(&d.path), str::to_string);
        let mut id = [0u8; VTBLK_BLK_ID_BYTES];
        let n = ident.len().min(VTBLK_BLK_ID_BYTES);
        id[..n].copy_from_slice(&ident.as_bytes()[..n]);
        let mut features = VTBLK_F_SEG_MAX
            | VTBLK_F_BLK_SIZE
            | VTBLK_F_FLUSH
            | VTBLK_F_TOPOLOGY
            | VIRTIO_RING_F_INDIRECT_DESC;
        if d.candelete {
            features |= VTBLK_F_DISCARD;
        }
        VtBlk {
            cfg: config_space(d),
            ident: id,
            features,
            bc: Arc::new(bc),
            inflight: Arc::default(),
        }
    }

    /// `pci_vtblk_proc`: check one chain and start it.
    fn proc(&self, vs: &Virtio, chain: Chain) {
        let mem = vs.mem();
        let descs = &chain.descs;
        // The status byte goes in the last descriptor; without a usable
        // one the chain can only be returned.
        let status = match descs.last() {
            Some(d) if descs.len() >= 2 && d.writable && d.len >= 1 && vs.is_ram(d.addr, 1) => {
                d.addr
            }
            _ => return vs.done(&chain, 0),
        };
        let finish = move |vs: &Virtio, chain: &Chain, st: u8, wrote: u32| {
            // Checked RAM above; a failure here cannot reach the guest.
            let _ = vs.mem().write_obj(st, status);
            vs.done(chain, wrote.saturating_add(1));
        };
        let req = match self.parse(vs, mem, descs) {
            Ok(r) => r,
            Err(st) => return finish(vs, &chain, st, 0),
        };
        let (op, offset, len, iov) = match req {
            Req::Ident(addr, n) => {
                let n = n.min(VTBLK_BLK_ID_BYTES as u32);
                let st = match mem.write_slice(&self.ident[..n as usize], addr) {
                    Ok(()) => VTBLK_S_OK,
                    Err(_) => VTBLK_S_IOERR,
                };
                return finish(vs, &chain, st, n);
            }
            Req::Io(op, offset, len, iov) => (op, offset, len, iov),
        };
        let wrote = if op == BlockOp::Read { len as u32 } else { 0 };
        let (vs2, inflight) = (vs.clone(), self.inflight.clone());
        inflight.start();
        self.bc.submit(BlockReq {
            op,
            offset,
            len,
            iov,
            done: Box::new(move |r: io::Result<()>| {
                let st = match r {
                    Ok(()) => VTBLK_S_OK,
                    Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => VTBLK_S_UNSUPP,
                    Err(_) => VTBLK_S_IOERR,
                };
                let wrote = if st == VTBLK_S_OK { wrote } else { 0 };
                finish(&vs2, &chain, st, wrote);
                inflight.end();
            }),
        });
    }

    /// The request in `descs` or the status to fail it with.
    fn parse(&self, vs: &Virtio, mem: &GuestMemoryMmap, descs: &[Desc]) -> Result<Req, u8> {
        let ioerr = VTBLK_S_IOERR;
        let hdr = descs[0];
        if hdr.writable || hdr.len < VBH_SIZE || !vs.is_ram(hdr.addr, VBH_SIZE.into()) {
            return Err(ioerr);
        }
        let mut h = [0u8; VBH_SIZE as usize];
        mem.read_slice(&mut h, hdr.addr).map_err(|_| ioerr)?;
        let typ = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) & !VBH_FLAG_BARRIER;
        let sector = u64::from_le_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]]);
        let data = &descs[1..descs.len() - 1];
        if data.len() > VTBLK_MAXSEGS {
            return Err(ioerr);
        }
        // As pci_virtio_block.c: the device reads the data of OUT and
        // DISCARD and writes into every other request's buffers (so an
        // unknown type with a writable buffer gets UNSUPP, not IOERR).
        let writes = !matches!(typ, VBH_OP_WRITE | VBH_OP_DISCARD);
        let mut total = 0u64;
        for d in data {
            if d.len == 0 || d.writable != writes || !vs.is_ram(d.addr, d.len.into()) {
                return Err(ioerr);
            }
            total += u64::from(d.len);
        }
        let iov: Vec<(GuestAddress, u32)> = data.iter().map(|d| (d.addr, d.len)).collect();
        let offset = sector.checked_mul(DEV_BSIZE).ok_or(ioerr)?;
        let in_disk = |len: u64| {
            offset
                .checked_add(len)
                .is_some_and(|e| e <= self.bc.disk().size)
        };
        match typ {
            VBH_OP_READ | VBH_OP_WRITE => {
                if !in_disk(total) {
                    return Err(ioerr);
                }
                let op = if typ == VBH_OP_READ {
                    BlockOp::Read
                } else {
                    BlockOp::Write
                };
                Ok(Req::Io(op, offset, total, iov))
            }
            VBH_OP_FLUSH | VBH_OP_FLUSH_OUT => Ok(Req::Io(BlockOp::Flush, 0, 0, Vec::new())),
            VBH_OP_IDENT => match data {
                [d, ..] => Ok(Req::Ident(d.addr, d.len)),
                [] => Err(ioerr),
            },
            VBH_OP_DISCARD => {
                if self.features & VTBLK_F_DISCARD == 0 {
                    return Err(VTBLK_S_UNSUPP);
                }
                let [d] = data else { return Err(ioerr) };
                if d.len != DISCARD_SIZE {
                    return Err(ioerr);
                }
                let mut r = [0u8; DISCARD_SIZE as usize];
                mem.read_slice(&mut r, d.addr).map_err(|_| ioerr)?;
                let sector = u64::from_le_bytes(r[..8].try_into().map_err(|_| ioerr)?);
                let num = u32::from_le_bytes([r[8], r[9], r[10], r[11]]);
                let flags = u32::from_le_bytes([r[12], r[13], r[14], r[15]]);
                if flags != 0 {
                    // UNMAP or reserved bits.
                    return Err(VTBLK_S_UNSUPP);
                }
                if num > VTBLK_MAX_DISCARD_SECT {
                    return Err(ioerr);
                }
                let off = sector.checked_mul(DEV_BSIZE).ok_or(ioerr)?;
                let len = u64::from(num) * DEV_BSIZE;
                if off.checked_add(len).is_none_or(|e| e > self.bc.disk().size) {
                    return Err(ioerr);
                }
                Ok(Req::Io(BlockOp::Delete, off, len, Vec::new()))
            }
            _ => Err(VTBLK_S_UNSUPP),
        }
    }
}

/// A checked request.
enum Req {
    Io(BlockOp, u64, u64, Vec<(GuestAddress, u32)>),
    /// GET_ID into this buffer.
    Ident(GuestAddress, u32),
}

/// `struct vtblk_config` as bhyve fills it.
fn config_space(d: &Disk) -> [u8; VTBLK_CFG_SIZE] {
    let mut c = [0u8; VTBLK_CFG_SIZE];
    let mut put = |off: usize, b: &[u8]| c[off..off + b.len()].copy_from_slice(b);
    put(0, &(d.size / DEV_BSIZE).to_le_bytes());
    put(12, &(VTBLK_MAXSEGS as u32).to_le_bytes());
    put(20, &d.sectsz.to_le_bytes());
    let exp = (d.psectsz / d.sectsz).max(1).trailing_zeros() as u8;
    put(24, &[exp]);
    let align = ((d.psectsz - d.psectoff % d.psectsz) % d.psectsz / d.sectsz) as u8;
    put(25, &[align]);
    put(36, &VTBLK_MAX_DISCARD_SECT.to_le_bytes());
    put(40, &VTBLK_MAX_DISCARD_SEG.to_le_bytes());
    let gran = d.sectsz.max(d.psectsz) / DEV_BSIZE as u32;
    put(44, &gran.to_le_bytes());
    c
}

impl VirtioDevice for VtBlk {
    fn features(&self) -> u64 {
        self.features
    }

    fn queue_sizes(&self) -> Vec<u16> {
        vec![VTBLK_RINGSZ]
    }

    fn cfg_size(&self) -> usize {
        VTBLK_CFG_SIZE
    }

    fn cfg_read(&self, off: usize, data: &mut [u8]) {
        if let Some(s) = self.cfg.get(off..off + data.len()) {
            data.copy_from_slice(s);
        }
    }

    /// bhyve refuses config writes.
    fn cfg_write(&mut self, _off: usize, _data: &[u8]) -> bool {
        false
    }

    fn notify(&mut self, vq: usize, vs: &Virtio) {
        while self.inflight.count() < usize::from(VTBLK_RINGSZ) {
            let Some(chain) = vs.pop(vq) else { break };
            self.proc(vs, chain);
        }
    }

    /// The transport has let go of the rings; wait out the requests still
    /// with the workers, so that no read lands in memory the guest took
    /// back by resetting (QEMU drains the same way).  Their completions
    /// carry the old generation and are dropped.
    fn reset(&mut self) {
        self.inflight.wait_idle();
    }
}

/// A virtio-blk function on `disk` (`pci_vtblk_init`); `ser` is the
/// `ser=` option.
pub fn new(
    slot: u8,
    func: u8,
    disk: Disk,
    ser: Option<&str>,
    env: &VirtioEnv,
    irq: Arc<PciIrq>,
) -> Result<(PciFunction, Virtio), PciError> {
    let bc = BlockIf::new(disk, env.mem.clone()).map_err(|e| PciError::Device {
        bdf: format!("0:{slot}:{func}"),
        why: format!("virtio-blk: blockif threads: {e}"),
    })?;
    let ids = VirtioIds {
        device: VIRTIO_DEV_BLOCK,
        class: PCIC_STORAGE,
        subsys: VIRTIO_ID_BLOCK,
    };
    virtio::new_function(slot, func, "virtio-blk", ids, VtBlk::new(bc, ser), env, irq)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::tests::{MEM, Rig, Ring, ram};
    use crate::virtio::{VIRTIO_PCI_HOST_FEATURES, VIRTIO_PCI_QUEUE_NOTIFY, VIRTIO_PCI_QUEUE_PFN};
    use std::collections::BTreeMap;
    use std::time::{Duration, Instant};

    const HDR: u64 = 0x8000;
    const DATA: u64 = 0x10000;
    const STATUS: u64 = 0xa000;

    struct T {
        r: Rig,
        ring: Ring,
        path: std::path::PathBuf,
    }

    impl Drop for T {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    fn rig(name: &str, opts: &[(&str, &str)]) -> T {
        let path = std::env::temp_dir().join(format!("vtblk-{name}-{}", std::process::id()));
        let img: Vec<u8> = (0..16384u32).map(|i| (i / 512) as u8).collect();
        std::fs::write(&path, img).unwrap();
        let o: BTreeMap<String, String> = opts
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let disk = Disk::open(path.to_str().unwrap(), &o).unwrap();
        let mem = ram();
        let bc = BlockIf::new(disk, mem.clone()).unwrap();
        let ser = o.get("ser").map(String::as_str);
        let r = Rig::with_mem(mem, VtBlk::new(bc, ser), false);
        r.outl(VIRTIO_PCI_QUEUE_PFN, 4, 1);
        let ring = Ring {
            base: 0x1000,
            n: VTBLK_RINGSZ,
            avail_idx: 0,
        };
        T { r, ring, path }
    }

    impl T {
        /// Post header + `data` descriptors + status, kick, wait for the
        /// used entry; the status byte.
        fn req(&mut self, typ: u32, sector: u64, data: &[(u64, u32, bool)]) -> u8 {
            let m = &self.r.mem;
            let mut h = [0u8; 16];
            h[..4].copy_from_slice(&typ.to_le_bytes());
            h[8..].copy_from_slice(&sector.to_le_bytes());
            m.write_slice(&h, GuestAddress(HDR)).unwrap();
            m.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
            let n = data.len() as u16;
            self.ring.desc(m, 0, HDR, 16, false, Some(1));
            for (i, &(a, l, w)) in data.iter().enumerate() {
                let i = i as u16 + 1;
                self.ring.desc(m, i, a, l, w, Some(i + 1));
            }
            self.ring.desc(m, n + 1, STATUS, 1, true, None);
            self.kick(0)
        }

        fn kick(&mut self, head: u16) -> u8 {
            let before = self.ring.used_idx(&self.r.mem);
            self.ring.post(&self.r.mem, head);
            self.r.outl(VIRTIO_PCI_QUEUE_NOTIFY, 2, 0);
            let t = Instant::now();
            while self.ring.used_idx(&self.r.mem) == before {
                assert!(t.elapsed() < Duration::from_secs(5), "no completion");
                std::thread::sleep(Duration::from_millis(1));
            }
            self.r.mem.read_obj(GuestAddress(STATUS)).unwrap()
        }

        fn file(&self) -> Vec<u8> {
            std::fs::read(&self.path).unwrap()
        }
    }

    #[test]
    fn vtblk_config_and_features() {
        let t = rig("cfg", &[("sectorsize", "512/4096")]);
        let f = t.r.inl(VIRTIO_PCI_HOST_FEATURES, 4);
        assert_eq!(
            u64::from(f) & !VTBLK_F_DISCARD,
            VTBLK_F_SEG_MAX
                | VTBLK_F_BLK_SIZE
                | VTBLK_F_FLUSH
                | VTBLK_F_TOPOLOGY
                | VIRTIO_RING_F_INDIRECT_DESC
        );
        // Config at 20 (no MSI-X): capacity, seg_max, blk_size, topology.
        assert_eq!(t.r.inl(20, 4), 32, "16 KiB in sectors");
        assert_eq!(t.r.inl(24, 4), 0);
        assert_eq!(t.r.inl(20 + 12, 4), 126);
        assert_eq!(t.r.inl(20 + 20, 4), 512);
        assert_eq!(t.r.inl(20 + 24, 1), 3, "4096 / 512");
        assert_eq!(t.r.inl(20 + 36, 4), 32768);
        assert_eq!(t.r.inl(20 + 40, 4), 1);
        assert_eq!(t.r.inl(20 + 44, 4), 8);
        let t = rig("nodel", &[("nodelete", "true")]);
        assert_eq!(
            u64::from(t.r.inl(VIRTIO_PCI_HOST_FEATURES, 4)) & VTBLK_F_DISCARD,
            0
        );
    }

    #[test]
    fn vtblk_read_write_flush_ident() {
        let mut t = rig("rw", &[]);
        assert_eq!(t.req(VBH_OP_READ, 2, &[(DATA, 1024, true)]), VTBLK_S_OK);
        let mut b = [0u8; 1024];
        t.r.mem.read_slice(&mut b, GuestAddress(DATA)).unwrap();
        assert!(b[..512].iter().all(|&x| x == 2) && b[512..].iter().all(|&x| x == 3));
        assert_eq!(t.ring.used_elem(&t.r.mem, 0), (0, 1025));
        // Two segments written, the barrier bit ignored.
        t.r.mem
            .write_slice(&[0xaa; 512], GuestAddress(DATA))
            .unwrap();
        t.r.mem
            .write_slice(&[0xbb; 512], GuestAddress(DATA + 0x1000))
            .unwrap();
        let segs = [(DATA, 512, false), (DATA + 0x1000, 512, false)];
        assert_eq!(t.req(VBH_OP_WRITE | 1 << 31, 4, &segs), VTBLK_S_OK);
        let f = t.file();
        assert!(f[2048..2560].iter().all(|&x| x == 0xaa));
        assert!(f[2560..3072].iter().all(|&x| x == 0xbb));
        assert_eq!(t.req(VBH_OP_FLUSH, 0, &[]), VTBLK_S_OK);
        // GET_ID: the default ident, 20 bytes.
        assert_eq!(t.req(VBH_OP_IDENT, 0, &[(DATA, 64, true)]), VTBLK_S_OK);
        let mut id = [0u8; 20];
        t.r.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        let want = default_ident(t.path.to_str().unwrap());
        assert_eq!(&id, want.as_bytes());
        assert!(want.starts_with("BHYVE-") && want.len() == 20);
        // An unknown type: UNSUPP with a device-writable buffer (as bhyve
        // expects for anything but OUT and DISCARD), IOERR with a readable one.
        assert_eq!(t.req(99, 0, &[(DATA, 16, true)]), VTBLK_S_UNSUPP);
        assert_eq!(t.req(99, 0, &[(DATA, 16, false)]), VTBLK_S_IOERR);
        let mut t = rig("ser", &[("ser", "disk0")]);
        assert_eq!(t.req(VBH_OP_IDENT, 0, &[(DATA, 20, true)]), VTBLK_S_OK);
        t.r.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id[..6], b"disk0\0");
    }

    #[test]
    fn vtblk_md5_ident() {
        // RFC 1321 test vector.
        assert_eq!(md5(b"abc")[..4], [0x90, 0x01, 0x50, 0x98]);
    }

    #[test]
    fn vtblk_discard() {
        let mut t = rig("discard", &[]);
        let range = |sector: u64, n: u32, flags: u32| {
            let mut r = [0u8; 16];
            r[..8].copy_from_slice(&sector.to_le_bytes());
            r[8..12].copy_from_slice(&n.to_le_bytes());
            r[12..].copy_from_slice(&flags.to_le_bytes());
            r
        };
        let supported = u64::from(t.r.inl(VIRTIO_PCI_HOST_FEATURES, 4)) & VTBLK_F_DISCARD != 0;
        t.r.mem
            .write_slice(&range(8, 8, 0), GuestAddress(DATA))
            .unwrap();
        let st = t.req(VBH_OP_DISCARD, 0, &[(DATA, 16, false)]);
        if supported {
            assert_eq!(st, VTBLK_S_OK);
            assert!(t.file()[4096..8192].iter().all(|&x| x == 0));
            assert_eq!(t.file().len(), 16384);
        } else {
            assert_eq!(st, VTBLK_S_UNSUPP);
        }
        t.r.mem
            .write_slice(&range(8, 8, 1), GuestAddress(DATA))
            .unwrap();
        let st = t.req(VBH_OP_DISCARD, 0, &[(DATA, 16, false)]);
        assert_eq!(st, VTBLK_S_UNSUPP, "unmap flag");
        if supported {
            t.r.mem
                .write_slice(&range(0, 40000, 0), GuestAddress(DATA))
                .unwrap();
            assert_eq!(
                t.req(VBH_OP_DISCARD, 0, &[(DATA, 16, false)]),
                VTBLK_S_IOERR
            );
            t.r.mem
                .write_slice(&range(30, 8, 0), GuestAddress(DATA))
                .unwrap();
            assert_eq!(
                t.req(VBH_OP_DISCARD, 0, &[(DATA, 16, false)]),
                VTBLK_S_IOERR
            );
            assert_eq!(
                t.req(VBH_OP_DISCARD, 0, &[(DATA, 32, false)]),
                VTBLK_S_IOERR
            );
        }
        let mut t = rig("nodelete", &[("nodelete", "true")]);
        t.r.mem
            .write_slice(&range(0, 8, 0), GuestAddress(DATA))
            .unwrap();
        assert_eq!(
            t.req(VBH_OP_DISCARD, 0, &[(DATA, 16, false)]),
            VTBLK_S_UNSUPP
        );
    }

    #[test]
    fn vtblk_read_only() {
        let mut t = rig("ro", &[("ro", "true")]);
        assert_eq!(t.req(VBH_OP_WRITE, 0, &[(DATA, 512, false)]), VTBLK_S_IOERR);
        assert!(t.file()[..512].iter().all(|&x| x == 0));
        let mut r = [0u8; 16];
        r[8] = 8;
        t.r.mem.write_slice(&r, GuestAddress(DATA)).unwrap();
        assert_eq!(
            t.req(VBH_OP_DISCARD, 0, &[(DATA, 16, false)]),
            VTBLK_S_IOERR
        );
        assert_eq!(t.req(VBH_OP_READ, 0, &[(DATA, 512, true)]), VTBLK_S_OK);
    }

    /// A reset returns only once every request it overtook is finished:
    /// guest memory stays as it was at the reset, and nothing completes
    /// after it.
    #[test]
    fn vtblk_reset_waits_for_requests_in_flight() {
        // O_DIRECT: real disk reads, still in flight when the reset comes.
        let mut t = rig("reset", &[("nocache", "true")]);
        let m = &t.r.mem;
        m.write_slice(&[0xee; 32 << 14], GuestAddress(DATA))
            .unwrap();
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&VBH_OP_READ.to_le_bytes());
        for k in 0..32u16 {
            let (hdr, d) = (HDR + 16 * u64::from(k), 3 * k);
            m.write_slice(&h, GuestAddress(hdr)).unwrap();
            t.ring.desc(m, d, hdr, 16, false, Some(d + 1));
            let buf = DATA + (u64::from(k) << 14);
            t.ring.desc(m, d + 1, buf, 1 << 14, true, Some(d + 2));
            t.ring.desc(m, d + 2, STATUS + u64::from(k), 1, true, None);
        }
        for k in 0..32u16 {
            t.ring.post(&t.r.mem, 3 * k);
        }
        t.r.outl(VIRTIO_PCI_QUEUE_NOTIFY, 2, 0);
        t.r.outl(crate::virtio::VIRTIO_PCI_STATUS, 1, 0);
        let used = t.ring.used_idx(&t.r.mem);
        let mut at_reset = vec![0u8; 32 << 14];
        t.r.mem
            .read_slice(&mut at_reset, GuestAddress(DATA))
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let mut later = vec![0u8; 32 << 14];
        t.r.mem.read_slice(&mut later, GuestAddress(DATA)).unwrap();
        assert!(at_reset == later, "a read landed after the reset");
        assert_eq!(t.ring.used_idx(&t.r.mem), used, "completed after the reset");
    }

    #[test]
    fn vtblk_hostile_requests() {
        let mut t = rig("hostile", &[]);
        let before = t.file();
        // Wrong directions.
        assert_eq!(t.req(VBH_OP_READ, 0, &[(DATA, 512, false)]), VTBLK_S_IOERR);
        assert_eq!(t.req(VBH_OP_WRITE, 0, &[(DATA, 512, true)]), VTBLK_S_IOERR);
        assert_eq!(t.req(VBH_OP_IDENT, 0, &[(DATA, 20, false)]), VTBLK_S_IOERR);
        // Outside RAM, straddling its end, zero and huge lengths.
        assert_eq!(t.req(VBH_OP_READ, 0, &[(MEM, 512, true)]), VTBLK_S_IOERR);
        assert_eq!(
            t.req(VBH_OP_READ, 0, &[(MEM - 256, 512, true)]),
            VTBLK_S_IOERR
        );
        assert_eq!(
            t.req(VBH_OP_READ, 0, &[(u64::MAX - 16, 512, true)]),
            VTBLK_S_IOERR
        );
        assert_eq!(t.req(VBH_OP_READ, 0, &[(DATA, 0, true)]), VTBLK_S_IOERR);
        // (A chain of 4 GiB or more breaks the device: virtio-queue ends
        // the walk there.)
        assert_eq!(
            t.req(VBH_OP_WRITE, 0, &[(DATA, u32::MAX - 32, false)]),
            VTBLK_S_IOERR
        );
        // Past the end of the disk, and an overflowing sector.
        assert_eq!(t.req(VBH_OP_READ, 31, &[(DATA, 1024, true)]), VTBLK_S_IOERR);
        assert_eq!(
            t.req(VBH_OP_READ, u64::MAX, &[(DATA, 512, true)]),
            VTBLK_S_IOERR
        );
        assert_eq!(t.file(), before);
        // A short header.
        let m = &t.r.mem;
        t.ring.desc(m, 0, HDR, 8, false, Some(1));
        t.ring.desc(m, 1, STATUS, 1, true, None);
        assert_eq!(t.kick(0), VTBLK_S_IOERR);
        // No writable status: returned with nothing written.
        let m = &t.r.mem;
        m.write_obj(0x55u8, GuestAddress(STATUS)).unwrap();
        t.ring.desc(m, 0, HDR, 16, false, Some(1));
        t.ring.desc(m, 1, STATUS, 1, false, None);
        assert_eq!(t.kick(0), 0x55);
        let n = t.ring.used_idx(&t.r.mem);
        assert_eq!(t.ring.used_elem(&t.r.mem, n.wrapping_sub(1)), (0, 0));
        // The most segments a ring can hold work.
        let segs: Vec<_> = (0..126).map(|i| (DATA + 512 * i, 512, true)).collect();
        assert_eq!(t.req(VBH_OP_READ, 0, &segs[..32]), VTBLK_S_OK);
        assert_eq!(t.req(VBH_OP_READ, 0, &segs), VTBLK_S_IOERR, "past the disk");
        // A chain longer than the ring breaks the device, no completion.
        let m = &t.r.mem;
        for i in 0..VTBLK_RINGSZ {
            t.ring
                .desc(m, i, DATA, 512, true, Some((i + 1) % VTBLK_RINGSZ));
        }
        let n = t.ring.used_idx(m);
        t.ring.post(m, 0);
        t.r.outl(VIRTIO_PCI_QUEUE_NOTIFY, 2, 0);
        assert_eq!(t.ring.used_idx(&t.r.mem), n);
        let st = t.r.inl(crate::virtio::VIRTIO_PCI_STATUS, 1);
        assert_eq!(st, u32::from(crate::virtio::VIRTIO_CONFIG_S_NEEDS_RESET));
    }
}
