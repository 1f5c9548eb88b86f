//! bhyve's legacy (0.9.5) virtio PCI transport (`virtio.c`, `virtio.h`):
//! the I/O BAR0 register file, status/reset, queue setup from a page
//! frame number, ISR/INTx, MSI and MSI-X (BAR1), and the used-ring
//! interrupt policy.
//!
//! Rings are walked with rust-vmm's `virtio-queue`: a legacy queue is a
//! split ring whose three parts sit at fixed offsets from the PFN, so we
//! compute the addresses and hand them to `Queue`, which then does the
//! bounds-checked descriptor/avail/used accesses for us instead of a
//! hand-rolled copy of `vq_getchain`.
//!
//! The transport state ([`Virtio`]) is shared: the vCPU pops chains on a
//! notify, blockif workers push completions from their own threads.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vmmapi::vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap};

use crate::bus::{IrqLine, MsiSender};
use crate::mevent::Mevent;
use crate::pci_emul::{BarDevice, BarKind, Doorbell, PciError, PciFunction, Plain};
use crate::pci_irq::{Intx, PciIrq};
use vmm_sys_util::eventfd::EFD_NONBLOCK;
use vmmapi::EventFd;

pub const VIRTIO_VENDOR: u16 = 0x1af4;
/// PCI subsystem vendor of every virtio function.
const PCIR_SUBVEND_0: usize = 0x2c;
const PCIR_SUBDEV_0: usize = 0x2e;

/// BAR0 register offsets (`virtio_pci_legacy_var.h`).
pub const VIRTIO_PCI_HOST_FEATURES: u64 = 0;
pub const VIRTIO_PCI_GUEST_FEATURES: u64 = 4;
pub const VIRTIO_PCI_QUEUE_PFN: u64 = 8;
pub const VIRTIO_PCI_QUEUE_NUM: u64 = 12;
pub const VIRTIO_PCI_QUEUE_SEL: u64 = 14;
pub const VIRTIO_PCI_QUEUE_NOTIFY: u64 = 16;
pub const VIRTIO_PCI_STATUS: u64 = 18;
pub const VIRTIO_PCI_ISR: u64 = 19;
pub const VIRTIO_MSI_CONFIG_VECTOR: u64 = 20;
pub const VIRTIO_MSI_QUEUE_VECTOR: u64 = 22;

/// Where device config starts, with and without MSI-X enabled.
pub const fn virtio_pci_config_off(msix: bool) -> u64 {
    if msix { 24 } else { 20 }
}

pub const VIRTIO_MSI_NO_VECTOR: u16 = 0xffff;
pub const VIRTIO_PCI_ISR_INTR: u8 = 0x01;
pub const VIRTIO_PCI_ISR_CONFIG: u8 = 0x02;
pub const VIRTIO_PCI_QUEUE_ADDR_SHIFT: u32 = 12;
pub const VRING_ALIGN: u64 = 4096;
pub const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;

pub const VIRTIO_CONFIG_S_NEEDS_RESET: u8 = 0x40;

pub const VIRTIO_F_NOTIFY_ON_EMPTY: u64 = 1 << 24;
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;

/// `VQ_MAX_DESCRIPTORS`: longest chain bhyve accepts.
pub const VQ_MAX_DESCRIPTORS: usize = 512;

/// The MSI-X table lives in BAR1 (`VIRTIO_MSIX_BAR`).
const VIRTIO_MSIX_BAR: usize = 1;

/// A device behind the transport (bhyve's `virtio_consts` callbacks).
pub trait VirtioDevice: Send {
    /// Feature bits offered (`vc_hv_caps`).
    fn features(&self) -> u64;
    /// The negotiated subset (`vc_apply_features`).
    fn apply_features(&mut self, _negotiated: u64) {}
    /// Size of each queue (`vc_nvq` entries of `vc_qsize`; powers of two).
    fn queue_sizes(&self) -> Vec<u16>;
    /// Bytes of device config space (`vc_cfgsize`).
    fn cfg_size(&self) -> usize;
    /// `vc_cfgread`; `off + data.len() <= cfg_size()`.
    fn cfg_read(&self, off: usize, data: &mut [u8]);
    /// `vc_cfgwrite`; false refuses it (with a diagnostic).
    fn cfg_write(&mut self, off: usize, data: &[u8]) -> bool;
    /// The guest kicked queue `vq` (`vc_qnotify`): pop its chains from `vs`.
    fn notify(&mut self, vq: usize, vs: &Virtio);
    /// The guest wrote 0 to status (`vc_reset`).
    fn reset(&mut self);
}

/// One descriptor of a chain, as the guest laid it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desc {
    pub addr: GuestAddress,
    pub len: u32,
    pub writable: bool,
}

/// A chain popped from a queue; [`Virtio::done`] returns it.
#[derive(Debug)]
pub struct Chain {
    pub vq: usize,
    pub head: u16,
    /// Reset generation: completions from before a reset are dropped.
    generation: u64,
    pub descs: Vec<Desc>,
}

/// A queue (`vqueue_info`).
struct Vq {
    q: Option<Queue>,
    qsize: u16,
    pfn: u32,
    msix_idx: u16,
}

/// The transport state (`virtio_softc`).
struct VirtioState {
    name: String,
    hv_caps: u64,
    negotiated: u32,
    status: u8,
    isr: u8,
    curq: u16,
    msix_cfg_idx: u16,
    vqs: Vec<Vq>,
    generation: u64,
    /// Set on a guest error the device cannot recover from; cleared by
    /// reset.  Until then no chain is popped or completed.
    broken: bool,
    intx: Arc<Intx>,
    msix: Option<Arc<Mutex<crate::pci_emul::Msix>>>,
    /// For the MSI message (`pci_generate_msi`); set once on the bus.
    func: Weak<Mutex<PciFunction>>,
    msi: Arc<dyn MsiSender>,
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl VirtioState {
    fn msix_enabled(&self) -> bool {
        self.msix.as_ref().is_some_and(|m| lock(m).enabled())
    }

    /// `vs_reset`/`vi_reset_dev`.
    fn reset(&mut self) {
        for vq in &mut self.vqs {
            vq.q = None;
            vq.pfn = 0;
            vq.msix_idx = VIRTIO_MSI_NO_VECTOR;
        }
        self.negotiated = 0;
        self.curq = 0;
        self.status = 0;
        self.isr = 0;
        self.msix_cfg_idx = VIRTIO_MSI_NO_VECTOR;
        self.generation += 1;
        self.broken = false;
        self.intx.deassert();
    }

    /// Stop serving a guest that broke the protocol (virtio 1.0's
    /// DEVICE_NEEDS_RESET; legacy drivers only see the device stall).
    fn mark_broken(&mut self, why: &str) {
        if !self.broken {
            eprintln!("{}: {why}; device needs reset", self.name);
        }
        self.broken = true;
        self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
    }

    /// `vi_vq_init`: the ring at `pfn` for the selected queue.
    fn vq_init(&mut self, mem: &GuestMemoryMmap, pfn: u32) {
        let Some(vq) = self.vqs.get_mut(usize::from(self.curq)) else {
            eprintln!("{}: queue PFN for bad queue {}", self.name, self.curq);
            return;
        };
        vq.pfn = pfn;
        vq.q = None;
        // Legacy drivers write 0 to tear a queue down.
        if pfn == 0 {
            return;
        }
        let n = u64::from(vq.qsize);
        let desc = u64::from(pfn) << VIRTIO_PCI_QUEUE_ADDR_SHIFT;
        let avail = desc + 16 * n;
        let used = (avail + 2 * (3 + n)).next_multiple_of(VRING_ALIGN);
        let q = Queue::new(vq.qsize).ok().map(|mut q| {
            let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
            let (lo, hi) = split(desc);
            q.set_desc_table_address(lo, hi);
            let (lo, hi) = split(avail);
            q.set_avail_ring_address(lo, hi);
            let (lo, hi) = split(used);
            q.set_used_ring_address(lo, hi);
            q.set_ready(true);
            q
        });
        // Past the end of RAM or across the MMIO hole: refuse rather
        // than touch it later.
        match q.filter(|q| q.is_valid(mem)) {
            Some(q) => vq.q = Some(q),
            None => self.mark_broken(&format!(
                "queue {} ring at PFN {pfn:#x} is not RAM",
                self.curq
            )),
        }
    }

    /// `vi_interrupt` for a queue.
    fn interrupt(&mut self, isr: u8, msix_idx: u16) {
        if let Some(m) = self.msix.as_ref().filter(|m| lock(m).enabled()) {
            lock(m).notify(usize::from(msix_idx));
            return;
        }
        self.isr |= isr;
        if let Some(f) = self.func.upgrade() {
            if let Some((addr, data)) = lock(&f).msi_message(0) {
                self.msi.send_msi(addr, data);
            }
        }
        // Held pending by the function while MSI/MSI-X are on.
        self.intx.assert();
    }
}

/// The transport state shared by the BAR0 handler and the device's
/// completion paths.
#[derive(Clone)]
pub struct Virtio {
    st: Arc<Mutex<VirtioState>>,
    /// Fixed for the VM's life, so the virtqueue paths reach it without
    /// the lock.
    mem: GuestMemoryMmap,
}

impl std::fmt::Debug for Virtio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Virtio").finish_non_exhaustive()
    }
}

impl Virtio {
    fn st(&self) -> MutexGuard<'_, VirtioState> {
        lock(&self.st)
    }

    /// Guest memory, for the device's buffers.
    pub fn mem(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Features the guest accepted.
    pub fn negotiated(&self) -> u64 {
        u64::from(self.st().negotiated)
    }

    /// Once the function is on the bus: the MSI capability to read.
    pub fn set_function(&self, f: Weak<Mutex<PciFunction>>) {
        self.st().func = f;
    }

    /// `vq_getchain`: the next available chain of `vq`, its descriptors
    /// (indirect ones expanded) walked and counted.  `None` when the ring
    /// is empty, the queue not set up, or the guest broke it (the device
    /// is then marked broken).
    pub fn pop(&self, vq: usize) -> Option<Chain> {
        let mut st = self.st();
        if st.broken {
            return None;
        }
        let st = &mut *st;
        let q = st.vqs.get_mut(vq)?.q.as_mut()?;
        let chain = match q.iter(&self.mem) {
            Ok(mut it) => it.next(),
            // The avail index ran more than a ring ahead.
            Err(e) => {
                st.mark_broken(&format!("queue {vq}: {e}"));
                return None;
            }
        }?;
        let head = chain.head_index();
        let mut descs = Vec::new();
        let mut last_next = false;
        // `DescriptorChain` ends quietly on a bad index, an unreadable
        // descriptor, a bad indirect table, or (by TTL) a loop; the last
        // descriptor still claiming a successor tells those apart from a
        // proper end.
        for d in chain.take(VQ_MAX_DESCRIPTORS + 1) {
            last_next = d.has_next();
            descs.push(Desc {
                addr: d.addr(),
                len: d.len(),
                writable: d.is_write_only(),
            });
        }
        if descs.is_empty() || last_next || descs.len() > VQ_MAX_DESCRIPTORS {
            st.mark_broken(&format!("queue {vq}: bad descriptor chain at head {head}"));
            return None;
        }
        Some(Chain {
            vq,
            head,
            generation: st.generation,
            descs,
        })
    }

    /// `vq_relchain` + `vq_endchains`: put `chain` on the used ring with
    /// `len` bytes written, then interrupt unless the guest asked not to.
    pub fn done(&self, chain: &Chain, len: u32) {
        let mut st = self.st();
        if st.broken || st.generation != chain.generation {
            return;
        }
        let st = &mut *st;
        let Some(vq) = st.vqs.get_mut(chain.vq) else {
            return;
        };
        let msix_idx = vq.msix_idx;
        let Some(q) = vq.q.as_mut() else { return };
        if let Err(e) = q.add_used(&self.mem, chain.head, len) {
            st.mark_broken(&format!("queue {}: used ring: {e}", chain.vq));
            return;
        }
        // Neither EVENT_IDX nor NOTIFY_ON_EMPTY is offered: only the
        // avail ring's NO_INTERRUPT flag suppresses it.
        std::sync::atomic::fence(Ordering::SeqCst);
        let flags: u16 = self
            .mem
            .load(GuestAddress(q.avail_ring()), Ordering::Acquire)
            .unwrap_or(0);
        if flags & VRING_AVAIL_F_NO_INTERRUPT == 0 {
            st.interrupt(VIRTIO_PCI_ISR_INTR, msix_idx);
        }
    }

    /// True when `[addr, addr + len)` is guest RAM in one piece.
    pub fn is_ram(&self, addr: GuestAddress, len: u64) -> bool {
        let Ok(l) = usize::try_from(len) else {
            return false;
        };
        addr.checked_add(len).is_some()
            && self
                .mem
                .check_range(addr, l, vmmapi::vm_memory::Permissions::Read)
    }
}

/// BAR0: the register file in front of a device (`vi_pci_read`,
/// `vi_pci_write`).
pub struct VirtioPci<D> {
    vs: Virtio,
    dev: D,
}

impl<D> std::fmt::Debug for VirtioPci<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioPci").finish_non_exhaustive()
    }
}

/// Register widths of BAR0 (`config_regs`).
fn reg_size(off: u64) -> Option<usize> {
    Some(match off {
        VIRTIO_PCI_HOST_FEATURES | VIRTIO_PCI_GUEST_FEATURES | VIRTIO_PCI_QUEUE_PFN => 4,
        VIRTIO_PCI_QUEUE_NUM
        | VIRTIO_PCI_QUEUE_SEL
        | VIRTIO_PCI_QUEUE_NOTIFY
        | VIRTIO_MSI_CONFIG_VECTOR
        | VIRTIO_MSI_QUEUE_VECTOR => 2,
        VIRTIO_PCI_STATUS | VIRTIO_PCI_ISR => 1,
        _ => return None,
    })
}

fn le(data: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    let n = data.len().min(4);
    b[..n].copy_from_slice(&data[..n]);
    u32::from_le_bytes(b)
}

impl<D: VirtioDevice> VirtioPci<D> {
    /// The register at `off` is known and accessed at its width (the
    /// MSI-X vectors only exist while MSI-X is on).
    fn reg_ok(&self, off: u64, len: usize, msix: bool) -> bool {
        let name = &self.vs.st().name;
        match reg_size(off) {
            Some(_) if off >= virtio_pci_config_off(msix) => {
                eprintln!("{name}: read/write of unknown register {off:#x}");
                false
            }
            Some(n) if n == len => true,
            Some(n) => {
                eprintln!("{name}: {len}-byte access to {n}-byte register {off:#x}");
                false
            }
            None => {
                eprintln!("{name}: access to unknown register {off:#x}");
                false
            }
        }
    }

    /// A device-config access, `None` if not in its range.
    fn cfg_range(&self, off: u64, len: usize, msix: bool) -> Option<Result<usize, ()>> {
        let base = virtio_pci_config_off(msix);
        let off = off.checked_sub(base)?;
        let size = self.dev.cfg_size() as u64;
        Some(if off + len as u64 <= size {
            Ok(off as usize)
        } else {
            Err(())
        })
    }
}

impl<D: VirtioDevice> BarDevice for VirtioPci<D> {
    fn bar_read(&mut self, off: u64, data: &mut [u8]) -> bool {
        let msix = self.vs.st().msix_enabled();
        data.fill(0xff);
        if let Some(r) = self.cfg_range(off, data.len(), msix) {
            if let Ok(o) = r {
                self.dev.cfg_read(o, data);
            }
            return true;
        }
        if !self.reg_ok(off, data.len(), msix) {
            return true;
        }
        let mut st = self.vs.st();
        let curq = usize::from(st.curq);
        let v: u32 = match off {
            VIRTIO_PCI_HOST_FEATURES => st.hv_caps as u32,
            VIRTIO_PCI_GUEST_FEATURES => st.negotiated,
            VIRTIO_PCI_QUEUE_PFN => st.vqs.get(curq).map_or(0, |q| q.pfn),
            VIRTIO_PCI_QUEUE_NUM => st.vqs.get(curq).map_or(0, |q| q.qsize.into()),
            VIRTIO_PCI_QUEUE_SEL => st.curq.into(),
            VIRTIO_PCI_QUEUE_NOTIFY => 0,
            VIRTIO_PCI_STATUS => st.status.into(),
            VIRTIO_PCI_ISR => {
                // Read-to-clear; the line drops with it.
                let v = st.isr;
                st.isr = 0;
                if v != 0 {
                    st.intx.deassert();
                }
                v.into()
            }
            VIRTIO_MSI_CONFIG_VECTOR => st.msix_cfg_idx.into(),
            VIRTIO_MSI_QUEUE_VECTOR => st
                .vqs
                .get(curq)
                .map_or(VIRTIO_MSI_NO_VECTOR, |q| q.msix_idx)
                .into(),
            _ => u32::MAX,
        };
        let n = data.len();
        data.copy_from_slice(&v.to_le_bytes()[..n]);
        true
    }

    fn bar_write(&mut self, off: u64, data: &[u8]) -> bool {
        let msix = self.vs.st().msix_enabled();
        if let Some(r) = self.cfg_range(off, data.len(), msix) {
            let ok = r.is_ok_and(|o| self.dev.cfg_write(o, data));
            if !ok {
                eprintln!(
                    "{}: write to config space {off:#x} refused",
                    self.vs.st().name
                );
            }
            return true;
        }
        if !self.reg_ok(off, data.len(), msix) {
            return true;
        }
        let v = le(data);
        match off {
            VIRTIO_PCI_GUEST_FEATURES => {
                let neg = {
                    let mut st = self.vs.st();
                    st.negotiated = v & st.hv_caps as u32;
                    st.negotiated
                };
                self.dev.apply_features(neg.into());
            }
            VIRTIO_PCI_QUEUE_PFN => self.vs.st().vq_init(&self.vs.mem, v),
            VIRTIO_PCI_QUEUE_SEL => self.vs.st().curq = v as u16,
            VIRTIO_PCI_QUEUE_NOTIFY => {
                let vq = v as u16 as usize;
                if vq < self.vs.st().vqs.len() {
                    // No transport lock held: completions may run
                    // concurrently on blockif threads.
                    let vs = self.vs.clone();
                    self.dev.notify(vq, &vs);
                } else {
                    eprintln!("{}: notify of bad queue {vq}", self.vs.st().name);
                }
            }
            VIRTIO_PCI_STATUS => {
                let status = v as u8;
                if status == 0 {
                    self.vs.st().reset();
                    self.dev.reset();
                } else {
                    self.vs.st().status = status;
                }
            }
            VIRTIO_MSI_CONFIG_VECTOR => self.vs.st().msix_cfg_idx = v as u16,
            VIRTIO_MSI_QUEUE_VECTOR => {
                let mut st = self.vs.st();
                let curq = usize::from(st.curq);
                if let Some(q) = st.vqs.get_mut(curq) {
                    q.msix_idx = v as u16;
                }
            }
            // Read-only: host features, queue size, ISR.
            _ => eprintln!(
                "{}: write to read-only register {off:#x}",
                self.vs.st().name
            ),
        }
        true
    }
}

/// What a virtio function is (`pci_set_cfgdata*` in each device's init).
#[derive(Debug, Clone, Copy)]
pub struct VirtioIds {
    pub device: u16,
    pub class: u8,
    pub subsys: u16,
}

/// Guest memory and the MSI path, which every virtio function needs.
#[derive(Clone)]
pub struct VirtioEnv {
    pub mem: GuestMemoryMmap,
    pub msi: Arc<dyn MsiSender>,
    /// `virtio_msix` (`-W` clears it: a single MSI instead).
    pub use_msix: bool,
    /// Where queue notifications are served when they come through
    /// ioeventfds; without it every notify is a vCPU exit.
    pub mevent: Option<Arc<Mevent>>,
}

impl std::fmt::Debug for VirtioEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioEnv")
            .field("use_msix", &self.use_msix)
            .finish_non_exhaustive()
    }
}

/// A virtio function for `dev` (`vi_softc_linkup`, `vi_intr_init`,
/// `vi_set_io_bar`): IDs, MSI-X in BAR1 (queues + 1 vectors) unless
/// disabled, one MSI message, INTx, and BAR0.  The returned [`Virtio`]
/// wants [`Virtio::set_function`] once the function is on the bus.
pub fn new_function<D: VirtioDevice + 'static>(
    slot: u8,
    func: u8,
    emul: &str,
    ids: VirtioIds,
    dev: D,
    env: &VirtioEnv,
    irq: Arc<PciIrq>,
) -> Result<(PciFunction, Virtio), PciError> {
    let mut f = PciFunction::new(
        slot,
        func,
        emul,
        (VIRTIO_VENDOR, ids.device),
        (ids.class, 0, 0),
        Box::new(Plain),
    );
    f.set16(PCIR_SUBVEND_0, VIRTIO_VENDOR);
    f.set16(PCIR_SUBDEV_0, ids.subsys);
    let sizes = dev.queue_sizes();
    let nqueues = sizes.len();
    let msix = if env.use_msix {
        Some(f.add_msix(sizes.len() + 1, VIRTIO_MSIX_BAR, env.msi.clone())?)
    } else {
        None
    };
    f.add_msi(1)?;
    // Legacy interrupts are mandatory for virtio devices.
    let intx = f.request_intx(irq);
    let cfg_size = dev.cfg_size() as u64;
    let st = Arc::new(Mutex::new(VirtioState {
        name: f.name().to_string(),
        hv_caps: dev.features(),
        negotiated: 0,
        status: 0,
        isr: 0,
        curq: 0,
        msix_cfg_idx: VIRTIO_MSI_NO_VECTOR,
        vqs: sizes
            .into_iter()
            .map(|qsize| Vq {
                q: None,
                qsize,
                pfn: 0,
                msix_idx: VIRTIO_MSI_NO_VECTOR,
            })
            .collect(),
        generation: 0,
        broken: false,
        intx,
        msix,
        func: Weak::new(),
        msi: env.msi.clone(),
    }));
    let vs = Virtio {
        st,
        mem: env.mem.clone(),
    };
    let bar = Arc::new(Mutex::new(VirtioPci {
        vs: vs.clone(),
        dev,
    }));
    // The MSI-X layout's size is reserved even with MSI-X off.
    f.add_bar(
        0,
        BarKind::Io,
        virtio_pci_config_off(true) + cfg_size,
        bar.clone(),
    )?;
    if let Some(me) = &env.mevent {
        let bells = doorbells(&f, me, &bar, nqueues)?;
        f.add_doorbells(0, bells)?;
    }
    Ok((f, vs))
}

/// One ioeventfd per queue on QUEUE_NOTIFY, each served on the mevent
/// thread by the same register write a vCPU exit would make, so the
/// device cannot tell the paths apart.
fn doorbells<D: VirtioDevice + 'static>(
    f: &PciFunction,
    me: &Mevent,
    bar: &Arc<Mutex<VirtioPci<D>>>,
    nqueues: usize,
) -> Result<Vec<Doorbell>, PciError> {
    let mut bells = Vec::with_capacity(nqueues);
    for q in 0..nqueues as u16 {
        let fail = |e: std::io::Error| f.err(format!("queue {q} notify eventfd: {e}"));
        let evt = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(fail)?);
        let (e, weak) = (evt.clone(), Arc::downgrade(bar));
        me.add_read(&*evt, move || {
            // Several kicks may have merged into one count: one notify
            // drains the queue for all of them.
            if e.read().is_ok() {
                if let Some(b) = weak.upgrade() {
                    lock(&b).bar_write(VIRTIO_PCI_QUEUE_NOTIFY, &q.to_le_bytes());
                }
            }
        })
        .map_err(fail)?;
        bells.push(Doorbell {
            off: VIRTIO_PCI_QUEUE_NOTIFY,
            data: q,
            evt,
        });
    }
    Ok(bells)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::pci_emul::tests::{Buses, Msis};
    use crate::pci_irq::tests::Lines;
    use std::collections::BTreeMap;

    const NEEDS_RESET: u32 = VIRTIO_CONFIG_S_NEEDS_RESET as u32;

    pub const MEM: u64 = 1 << 20;

    /// Records kicks; its config space is 8 bytes of 0x11 * offset.
    pub struct Echo {
        pub kicks: Arc<Mutex<Vec<usize>>>,
        pub features: Arc<Mutex<u64>>,
        pub resets: Arc<Mutex<u32>>,
    }
    impl VirtioDevice for Echo {
        fn features(&self) -> u64 {
            0x1000_0004 | (1 << 40)
        }
        fn apply_features(&mut self, n: u64) {
            *lock(&self.features) = n;
        }
        fn queue_sizes(&self) -> Vec<u16> {
            vec![8, 4]
        }
        fn cfg_size(&self) -> usize {
            8
        }
        fn cfg_read(&self, off: usize, data: &mut [u8]) {
            for (i, d) in data.iter_mut().enumerate() {
                *d = 0x11 * (off + i) as u8;
            }
        }
        fn cfg_write(&mut self, _off: usize, _data: &[u8]) -> bool {
            false
        }
        fn notify(&mut self, vq: usize, vs: &Virtio) {
            lock(&self.kicks).push(vq);
            while let Some(c) = vs.pop(vq) {
                vs.done(&c, 7);
            }
        }
        fn reset(&mut self) {
            *lock(&self.resets) += 1;
        }
    }

    pub fn ram() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap()
    }

    pub struct Rig {
        pub space: Arc<Buses>,
        pub lines: Arc<Lines>,
        pub msis: Arc<Msis>,
        pub func: Arc<Mutex<PciFunction>>,
        pub vs: Virtio,
        pub mem: GuestMemoryMmap,
        pub io: u64,
    }

    impl Rig {
        pub fn new<D: VirtioDevice + 'static>(dev: D, use_msix: bool) -> Rig {
            Rig::with_mem(ram(), dev, use_msix)
        }

        pub fn with_mem<D: VirtioDevice + 'static>(
            mem: GuestMemoryMmap,
            dev: D,
            use_msix: bool,
        ) -> Rig {
            Rig::with_env(mem, dev, use_msix, None)
        }

        pub fn with_env<D: VirtioDevice + 'static>(
            mem: GuestMemoryMmap,
            dev: D,
            use_msix: bool,
            mevent: Option<Arc<Mevent>>,
        ) -> Rig {
            let lines = Arc::new(Lines::default());
            let irq = Arc::new(PciIrq::new(&lines.factory()));
            let msis = Arc::new(Msis::default());
            let env = VirtioEnv {
                mem: mem.clone(),
                msi: msis.clone(),
                use_msix,
                mevent,
            };
            let ids = VirtioIds {
                device: 0x1001,
                class: 1,
                subsys: 2,
            };
            let (f, vs) = new_function(4, 0, "virtio-test", ids, dev, &env, irq.clone()).unwrap();
            let space = Arc::new(Buses::default());
            // BAR0 lands at 0x2000, BAR1 (MSI-X) at 0xc000_0000.
            let pci = crate::pci_emul::build_bus(&space, vec![f], MEM, &irq, true).unwrap();
            let func = pci.bus.function(4, 0).unwrap();
            vs.set_function(Arc::downgrade(&func));
            lines.take();
            Rig {
                space,
                lines,
                msis,
                func,
                vs,
                mem,
                io: 0x2000,
            }
        }

        pub fn inl(&self, off: u64, n: usize) -> u32 {
            let mut b = [0u8; 4];
            self.space
                .inout
                .read((self.io + off) as u16, &mut b[..n])
                .unwrap();
            u32::from_le_bytes(b)
        }

        pub fn outl(&self, off: u64, n: usize, v: u32) {
            self.space
                .inout
                .write((self.io + off) as u16, &v.to_le_bytes()[..n])
                .unwrap();
        }

        pub fn cfg_w(&self, off: usize, n: usize, v: u32) {
            lock(&self.func).cfg_write(&*self.space, off, n, v);
        }

        pub fn isa_lines(&self) -> BTreeMap<u32, Vec<bool>> {
            self.lines.take()
        }
    }

    /// A legacy split ring of `n` entries at `base` (page aligned) as a
    /// guest driver lays it out, with helpers to post chains.
    pub struct Ring {
        pub base: u64,
        pub n: u16,
        pub avail_idx: u16,
    }

    impl Ring {
        pub fn avail(&self) -> u64 {
            self.base + 16 * u64::from(self.n)
        }
        pub fn used(&self) -> u64 {
            (self.avail() + 2 * (3 + u64::from(self.n))).next_multiple_of(VRING_ALIGN)
        }
        /// Write descriptor `i` (`next` chained when `Some`).
        pub fn desc(
            &self,
            m: &GuestMemoryMmap,
            i: u16,
            addr: u64,
            len: u32,
            w: bool,
            next: Option<u16>,
        ) {
            let a = GuestAddress(self.base + 16 * u64::from(i));
            let flags = u16::from(next.is_some()) | if w { 2 } else { 0 };
            m.write_obj(addr, a).unwrap();
            m.write_obj(len, a.unchecked_add(8)).unwrap();
            m.write_obj(flags, a.unchecked_add(12)).unwrap();
            m.write_obj(next.unwrap_or(0), a.unchecked_add(14)).unwrap();
        }
        /// Make chain `head` available.
        pub fn post(&mut self, m: &GuestMemoryMmap, head: u16) {
            let slot = u64::from(self.avail_idx % self.n);
            m.write_obj(head, GuestAddress(self.avail() + 4 + 2 * slot))
                .unwrap();
            self.avail_idx = self.avail_idx.wrapping_add(1);
            m.write_obj(self.avail_idx, GuestAddress(self.avail() + 2))
                .unwrap();
        }
        pub fn used_idx(&self, m: &GuestMemoryMmap) -> u16 {
            m.read_obj(GuestAddress(self.used() + 2)).unwrap()
        }
        /// Used element `i`: (id, len).
        pub fn used_elem(&self, m: &GuestMemoryMmap, i: u16) -> (u32, u32) {
            let a = self.used() + 4 + 8 * u64::from(i % self.n);
            (
                m.read_obj(GuestAddress(a)).unwrap(),
                m.read_obj(GuestAddress(a + 4)).unwrap(),
            )
        }
    }

    fn echo() -> Echo {
        Echo {
            kicks: Arc::default(),
            features: Arc::default(),
            resets: Arc::default(),
        }
    }

    /// Each queue's notify is a doorbell while BAR0 decodes: attached at
    /// BAR0 + 16 with the queue index, moved with the BAR, detached when
    /// I/O decoding is off; a signal on it notifies that queue on the
    /// mevent thread, as the register write would.
    #[test]
    fn virtio_queue_notify_doorbells_follow_bar0() {
        let me = Mevent::start().unwrap();
        let e = echo();
        let kicks = e.kicks.clone();
        let r = Rig::with_env(ram(), e, true, Some(me.clone()));
        let attached = |r: &Rig| -> Vec<(u16, u16)> {
            r.space.ioevents.lock().unwrap().keys().copied().collect()
        };
        assert_eq!(attached(&r), [(0x2010, 0), (0x2010, 1)]);

        r.space.ioevents.lock().unwrap()[&(0x2010, 1)]
            .write(1)
            .unwrap();
        let t0 = std::time::Instant::now();
        while lock(&kicks).is_empty() {
            assert!(t0.elapsed().as_secs() < 5, "no notify from the doorbell");
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        assert_eq!(*lock(&kicks), [1]);

        r.cfg_w(0x10, 4, 0x3000);
        assert_eq!(attached(&r), [(0x3010, 0), (0x3010, 1)]);
        r.cfg_w(0x04, 2, 0);
        assert!(attached(&r).is_empty(), "decoding off detaches");
        me.stop();
    }

    #[test]
    fn virtio_identity_and_bars() {
        let e = echo();
        let r = Rig::new(e, true);
        let f = lock(&r.func);
        assert_eq!(f.cfg_read(0, 4), 0x1001_1af4);
        assert_eq!(f.cfg_read(8, 4), 0x0100_0000, "class 1, revision 0");
        assert_eq!(f.cfg_read(0x2c, 4), 0x0002_1af4, "subsystem");
        assert_eq!(f.cfg_read(0x10, 4), 0x2001, "BAR0 I/O");
        assert_eq!(f.cfg_read(0x3d, 1), 1, "INTA");
        assert!(f.intx().is_some());
        drop(f);
        // BAR0 is 32 bytes (24 + 8 rounded up): sizing reads the mask.
        r.cfg_w(0x10, 4, u32::MAX);
        assert_eq!(lock(&r.func).cfg_read(0x10, 4), 0xffe1);
    }

    #[test]
    fn virtio_features_status_and_reset() {
        let e = echo();
        let (feats, resets) = (e.features.clone(), e.resets.clone());
        let r = Rig::new(e, false);
        assert_eq!(
            r.inl(VIRTIO_PCI_HOST_FEATURES, 4),
            0x1000_0004,
            "low 32 bits"
        );
        r.outl(VIRTIO_PCI_GUEST_FEATURES, 4, 0xffff_ffff);
        assert_eq!(r.inl(VIRTIO_PCI_GUEST_FEATURES, 4), 0x1000_0004);
        assert_eq!(*lock(&feats), 0x1000_0004);
        assert_eq!(r.inl(VIRTIO_PCI_QUEUE_NUM, 2), 8);
        r.outl(VIRTIO_PCI_QUEUE_SEL, 2, 1);
        assert_eq!(r.inl(VIRTIO_PCI_QUEUE_NUM, 2), 4);
        r.outl(VIRTIO_PCI_QUEUE_SEL, 2, 9);
        assert_eq!(r.inl(VIRTIO_PCI_QUEUE_NUM, 2), 0, "out of range");
        r.outl(VIRTIO_PCI_QUEUE_PFN, 4, 0x10);
        assert_eq!(r.inl(VIRTIO_PCI_QUEUE_PFN, 4), 0, "ignored");
        r.outl(VIRTIO_PCI_STATUS, 1, 7);
        assert_eq!(r.inl(VIRTIO_PCI_STATUS, 1), 7);
        // Wrong widths and unknown offsets read all ones.
        assert_eq!(r.inl(VIRTIO_PCI_HOST_FEATURES, 2), 0xffff);
        assert_eq!(r.inl(VIRTIO_PCI_STATUS, 2), 0xffff);
        // Without MSI-X the vectors are not there: 20 is device config.
        assert_eq!(r.inl(20, 1), 0x00);
        assert_eq!(r.inl(21, 2), 0x2211);
        assert_eq!(r.inl(27, 1), 0x77);
        assert_eq!(r.inl(27, 2), 0xffff, "past config space");
        r.outl(20, 1, 5);
        assert_eq!(r.inl(20, 1), 0, "config writes refused");
        // Reset.
        r.outl(VIRTIO_PCI_QUEUE_SEL, 2, 0);
        r.outl(VIRTIO_PCI_QUEUE_PFN, 4, 0x10);
        assert_eq!(r.inl(VIRTIO_PCI_QUEUE_PFN, 4), 0x10);
        r.outl(VIRTIO_PCI_STATUS, 1, 0);
        assert_eq!(*lock(&resets), 1);
        assert_eq!(r.inl(VIRTIO_PCI_STATUS, 1), 0);
        assert_eq!(r.inl(VIRTIO_PCI_GUEST_FEATURES, 4), 0);
        assert_eq!(r.inl(VIRTIO_PCI_QUEUE_PFN, 4), 0);
    }

    #[test]
    fn virtio_queue_pfn_bounds_mark_broken() {
        let e = echo();
        let r = Rig::new(e, false);
        r.outl(VIRTIO_PCI_STATUS, 1, 7);
        // The ring's used part would run past the end of RAM.
        r.outl(VIRTIO_PCI_QUEUE_PFN, 4, (MEM / 4096 - 1) as u32);
        assert_eq!(r.inl(VIRTIO_PCI_STATUS, 1), 7 | NEEDS_RESET);
        assert!(r.vs.pop(0).is_none());
        r.outl(VIRTIO_PCI_STATUS, 1, 0);
        r.outl(VIRTIO_PCI_QUEUE_PFN, 4, u32::MAX);
        assert_eq!(r.inl(VIRTIO_PCI_STATUS, 1), NEEDS_RESET);
        r.outl(VIRTIO_PCI_STATUS, 1, 0);
        r.outl(VIRTIO_PCI_QUEUE_PFN, 4, 1);
        assert_eq!(r.inl(VIRTIO_PCI_STATUS, 1), 0, "a good ring");
        r.outl(VIRTIO_PCI_QUEUE_PFN, 4, 0);
        assert_eq!(r.inl(VIRTIO_PCI_STATUS, 1), 0, "0 tears down");
    }

    #[test]
    fn virtio_ring_crossing_the_hole_is_refused() {
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x10000),
            (GuestAddress(0x20000), 0x10000),
        ])
        .unwrap();
        let r = Rig::with_mem(mem, echo(), false);
        // Descriptors in the last page of the first range, used ring in
        // the hole.
        r.outl(VIRTIO_PCI_QUEUE_PFN, 4, 0xf);
        assert_eq!(r.inl(VIRTIO_PCI_STATUS, 1), NEEDS_RESET);
    }

    #[test]
    fn virtio_isr_intx_and_no_interrupt_flag() {
        let e = echo();
        let kicks = e.kicks.clone();
        let r = Rig::new(e, false);
        let mut ring = Ring {
            base: 0x1000,
            n: 8,
            avail_idx: 0,
        };
        r.outl(VIRTIO_PCI_QUEUE_PFN, 4, 1);
        ring.desc(&r.mem, 0, 0x8000, 16, false, Some(1));
        ring.desc(&r.mem, 1, 0x9000, 1, true, None);
        ring.post(&r.mem, 0);
        r.outl(VIRTIO_PCI_QUEUE_NOTIFY, 2, 0);
        assert_eq!(*lock(&kicks), [0]);
        assert_eq!(ring.used_idx(&r.mem), 1);
        assert_eq!(ring.used_elem(&r.mem, 0), (0, 7));
        let l = r.isa_lines();
        assert_eq!(l.values().next(), Some(&vec![true]), "INTx asserted");
        assert_eq!(r.inl(VIRTIO_PCI_ISR, 1), 1);
        assert_eq!(r.isa_lines().values().next(), Some(&vec![false]));
        assert_eq!(r.inl(VIRTIO_PCI_ISR, 1), 0, "read clears");
        // NO_INTERRUPT: used ring moves, no interrupt.
        r.mem
            .write_obj(VRING_AVAIL_F_NO_INTERRUPT, GuestAddress(ring.avail()))
            .unwrap();
        ring.post(&r.mem, 0);
        r.outl(VIRTIO_PCI_QUEUE_NOTIFY, 2, 0);
        assert_eq!(ring.used_idx(&r.mem), 2);
        assert!(r.isa_lines().is_empty());
        assert_eq!(r.inl(VIRTIO_PCI_ISR, 1), 0);
        // Notify of a queue that does not exist: nothing.
        r.outl(VIRTIO_PCI_QUEUE_NOTIFY, 2, 5);
        assert_eq!(lock(&kicks).len(), 2);
        // MSI (no MSI-X): message 0, INTx held.
        r.mem.write_obj(0u16, GuestAddress(ring.avail())).unwrap();
        let msi = lock(&r.func).cfg_read(0x34, 1) as usize;
        assert_eq!(lock(&r.func).cfg_read(msi, 1), 0x05, "MSI only, no MSI-X");
        r.cfg_w(msi + 4, 4, 0xfee0_0000);
        r.cfg_w(msi + 12, 2, 0x41);
        r.cfg_w(msi + 2, 2, 1);
        ring.post(&r.mem, 0);
        r.outl(VIRTIO_PCI_QUEUE_NOTIFY, 2, 0);
        assert_eq!(*r.msis.0.lock().unwrap(), [(0xfee0_0000, 0x41)]);
        assert!(r.isa_lines().is_empty(), "INTx pending only");
        assert_eq!(r.inl(VIRTIO_PCI_ISR, 1), 1, "ISR still set");
    }

    #[test]
    fn virtio_msix_vectors() {
        let e = echo();
        let r = Rig::new(e, true);
        // Caps: MSI-X then MSI.
        let x = lock(&r.func).cfg_read(0x34, 1) as usize;
        assert_eq!(lock(&r.func).cfg_read(x, 1), 0x11);
        assert_eq!(lock(&r.func).cfg_read(x + 2, 2), 2, "3 vectors");
        // Before MSI-X is enabled, 20 is device config.
        assert_eq!(r.inl(20, 2), 0x1100);
        r.cfg_w(x + 2, 2, 0x8000);
        assert_eq!(r.inl(VIRTIO_MSI_CONFIG_VECTOR, 2), 0xffff);
        assert_eq!(r.inl(24, 2), 0x1100, "config moved to 24");
        r.outl(VIRTIO_MSI_CONFIG_VECTOR, 2, 0);
        r.outl(VIRTIO_MSI_QUEUE_VECTOR, 2, 2);
        r.outl(VIRTIO_PCI_QUEUE_SEL, 2, 1);
        assert_eq!(r.inl(VIRTIO_MSI_QUEUE_VECTOR, 2), 0xffff);
        r.outl(VIRTIO_PCI_QUEUE_SEL, 2, 0);
        assert_eq!(r.inl(VIRTIO_MSI_QUEUE_VECTOR, 2), 2);
        assert_eq!(r.inl(VIRTIO_MSI_CONFIG_VECTOR, 2), 0);
        // Program and unmask vector 2 in BAR1.
        let w = |o: u64, v: u32| {
            r.space
                .mem
                .write(0xc000_0000 + o, &v.to_le_bytes())
                .unwrap()
        };
        w(32, 0xfee0_1000);
        w(40, 0x55);
        w(44, 0);
        let mut ring = Ring {
            base: 0x1000,
            n: 8,
            avail_idx: 0,
        };
        r.outl(VIRTIO_PCI_QUEUE_PFN, 4, 1);
        ring.desc(&r.mem, 3, 0x8000, 16, false, None);
        ring.post(&r.mem, 3);
        r.outl(VIRTIO_PCI_QUEUE_NOTIFY, 2, 0);
        assert_eq!(*r.msis.0.lock().unwrap(), [(0xfee0_1000, 0x55)]);
        assert_eq!(r.inl(VIRTIO_PCI_ISR, 1), 0, "no ISR with MSI-X");
        assert!(r.isa_lines().is_empty());
        // Reset: vectors back to NO_VECTOR.
        r.outl(VIRTIO_PCI_STATUS, 1, 0);
        assert_eq!(r.inl(VIRTIO_MSI_QUEUE_VECTOR, 2), 0xffff);
    }

    #[test]
    fn virtio_hostile_chains_break_the_device() {
        let e = echo();
        let r = Rig::new(e, false);
        let mut ring = Ring {
            base: 0x1000,
            n: 8,
            avail_idx: 0,
        };
        let setup = |r: &Rig| {
            r.outl(VIRTIO_PCI_STATUS, 1, 0);
            r.outl(VIRTIO_PCI_QUEUE_PFN, 4, 1);
        };
        let broken = |r: &Rig| r.inl(VIRTIO_PCI_STATUS, 1) & NEEDS_RESET != 0;
        // A loop.
        setup(&r);
        ring.avail_idx = 0;
        ring.desc(&r.mem, 0, 0x8000, 16, false, Some(1));
        ring.desc(&r.mem, 1, 0x8000, 16, false, Some(0));
        ring.post(&r.mem, 0);
        r.outl(VIRTIO_PCI_QUEUE_NOTIFY, 2, 0);
        assert!(broken(&r));
        assert_eq!(ring.used_idx(&r.mem), 0);
        // A next index past the ring.
        setup(&r);
        ring.avail_idx = 0;
        ring.desc(&r.mem, 0, 0x8000, 16, false, Some(200));
        ring.post(&r.mem, 0);
        r.outl(VIRTIO_PCI_QUEUE_NOTIFY, 2, 0);
        assert!(broken(&r));
        // A head past the ring.
        setup(&r);
        ring.avail_idx = 0;
        ring.post(&r.mem, 9);
        r.outl(VIRTIO_PCI_QUEUE_NOTIFY, 2, 0);
        assert!(broken(&r));
        // The avail index more than a ring ahead.
        setup(&r);
        ring.avail_idx = 0;
        r.mem
            .write_obj(100u16, GuestAddress(ring.avail() + 2))
            .unwrap();
        r.outl(VIRTIO_PCI_QUEUE_NOTIFY, 2, 0);
        assert!(broken(&r));
        // An indirect table outside RAM.
        setup(&r);
        ring.avail_idx = 0;
        ring.desc(&r.mem, 0, MEM + 0x1000, 32, false, None);
        r.mem.write_obj(4u16, GuestAddress(ring.base + 12)).unwrap();
        ring.post(&r.mem, 0);
        r.outl(VIRTIO_PCI_QUEUE_NOTIFY, 2, 0);
        assert!(broken(&r));
        // And a good chain works again after reset.
        setup(&r);
        ring.avail_idx = 0;
        ring.desc(&r.mem, 0, 0x8000, 16, false, None);
        ring.post(&r.mem, 0);
        r.outl(VIRTIO_PCI_QUEUE_NOTIFY, 2, 0);
        assert!(!broken(&r));
        assert_eq!(ring.used_idx(&r.mem), 1);
    }
}
