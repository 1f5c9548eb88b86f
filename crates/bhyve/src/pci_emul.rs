//! bhyve's PCI layer (`pci_emul.c`) for bus 0: each function's 256-byte
//! configuration header with read-only/writable masks, BARs (sizing,
//! placement in bhyve's windows, decoding switched by the command
//! register), the capability list with MSI and MSI-X, INTx, and the two
//! ways in: configuration mechanism #1 (0xCF8/0xCFC) and the ECAM window.
//!
//! Functions are pure state; a config write that changes decoding claims
//! or releases BAR ranges through [`BarSpace`] (the machine's buses, or
//! plain buses in tests).

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{Arc, Mutex, Weak};

use crate::acpi::{self, AcpiError, IntxRoute, PCI_ECAM, PCI_IO_BASE, PCI_MEM32_BASE};
use crate::bhyverun::Machine;
use crate::blockif::Disk;
use crate::bus::{Irq, MmioDevice, MsiSender, PioDevice};
use crate::config::{Bdf, Config, ConfigError};
use crate::inout::{InoutBus, InoutError};
use crate::mem::{MemBus, MemError};
use crate::mevent::Mevent;
use crate::pci_irq::{Intx, PciIrq};
use crate::uart_backend::UartBackend;
use crate::virtio::{Virtio, VirtioEnv};
use crate::{pci_hostbridge, pci_lpc, pci_lpc_bridge, pci_uart, pci_virtio_block};
use vmmapi::EventFd;

/// Standard header registers (`pcireg.h`).
pub const PCIR_VENDOR: usize = 0x00;
pub const PCIR_DEVICE: usize = 0x02;
pub const PCIR_COMMAND: usize = 0x04;
pub const PCIR_STATUS: usize = 0x06;
pub const PCIR_PROGIF: usize = 0x09;
pub const PCIR_SUBCLASS: usize = 0x0a;
pub const PCIR_CLASS: usize = 0x0b;
pub const PCIR_HDRTYPE: usize = 0x0e;
pub const PCIR_BAR0: usize = 0x10;
pub const PCIR_CAP_PTR: usize = 0x34;
pub const PCIR_INTLINE: usize = 0x3c;
pub const PCIR_INTPIN: usize = 0x3d;

pub const CMD_PORTEN: u16 = 0x0001;
pub const CMD_MEMEN: u16 = 0x0002;
pub const CMD_BUSMASTEREN: u16 = 0x0004;
pub const CMD_INTXDIS: u16 = 0x0400;
/// Command bits 0–6 and 8–10 are writable; status is read-only.
const CMD_WRITABLE: u16 = 0x077f;
pub const STATUS_CAPPRESENT: u16 = 0x0010;
pub const HDRTYPE_MFDEV: u8 = 0x80;

pub const PCIY_MSI: u8 = 0x05;
pub const PCIY_EXPRESS: u8 = 0x10;
pub const PCIY_MSIX: u8 = 0x11;
const CAP_START: usize = 0x40;

const MSICTRL_ENABLE: u16 = 0x0001;
const MSICTRL_MME: u16 = 0x0070;
const MSICTRL_64BIT: u16 = 0x0080;
const MSIXCTRL_ENABLE: u16 = 0x8000;
const MSIXCTRL_FMASK: u16 = 0x4000;
const MSIX_ENTRY: u64 = 16;
const MSIX_MAX: usize = 2048;
const MSIX_VCTRL_MASK: u32 = 1;

pub const NBARS: usize = 6;
const CONFIG_SIZE: usize = 256;
pub const NSLOTS: u8 = 32;
pub const NFUNCS: u8 = 8;

/// Config mechanism #1 ports.
pub const CONF1_ADDR_PORT: u16 = 0xcf8;
pub const CONF1_DATA_PORT: u16 = 0xcfc;
const CONF1_ENABLE: u32 = 0x8000_0000;

/// bhyve's BAR windows (`PCI_EMUL_*`).
pub const PCI_IO_LIMIT: u64 = 0x1_0000;
pub const PCI_MEM32_LIMIT: u64 = 0xe000_0000;
const GIB: u64 = 1 << 30;
const MEM64_SIZE: u64 = 32 * GIB;
/// 64-bit BARs up to this size still go below 4 GiB.
const MEM64_LOW_MAX: u64 = 128 << 20;
/// Slop left after each window (`BUS*_ROUNDUP`), advertised in `_CRS`.
pub(crate) const BUSIO_ROUNDUP: u64 = 32;
pub(crate) const BUSMEM32_ROUNDUP: u64 = 1 << 20;
pub(crate) const BUSMEM64_ROUNDUP: u64 = 512 << 20;
/// RAM below 4 GiB ends at 3 GiB (`lowmem_limit`).
const LOWMEM_LIMIT: u64 = 3 * GIB;

#[derive(Debug, thiserror::Error)]
pub enum PciError {
    #[error("pci {bdf}: {why}")]
    Device { bdf: String, why: String },
    #[error("pci {bdf}: no room for BAR{bar} ({size:#x} bytes) in the {window} window")]
    NoRoom {
        bdf: String,
        bar: usize,
        size: u64,
        window: &'static str,
    },
    #[error("PCI INTx routing: {0}")]
    Routing(#[from] AcpiError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Inout(#[from] InoutError),
    #[error(transparent)]
    Mem(#[from] MemError),
}

/// Where BARs decode: the machine's port and MMIO buses.
pub trait BarSpace: Send + Sync {
    fn inout(&self) -> &InoutBus;
    fn mem(&self) -> &MemBus;
    /// Attach (`on`) or detach a doorbell's eventfd at `port`; false when
    /// the space has no such fast path (writes then exit as usual).
    fn ioeventfd(&self, _port: u16, _data: u16, _evt: &EventFd, _on: bool) -> bool {
        false
    }
}

/// A register write the device wants signalled through an eventfd
/// instead of a vCPU exit (a virtio queue notify): a 2-byte write of
/// `data` at `off` in an I/O BAR.
#[derive(Debug, Clone)]
pub struct Doorbell {
    pub off: u64,
    pub data: u16,
    pub evt: Arc<EventFd>,
}

/// MSI-X and virtio MSI messages go straight to KVM; failure only means
/// the VM is gone.
impl MsiSender for vmmapi::Vm {
    fn send_msi(&self, addr: u64, data: u32) {
        let _ = vmmapi::Vm::send_msi(self, addr, data);
    }
}

impl BarSpace for Machine {
    fn inout(&self) -> &InoutBus {
        &self.inout
    }
    fn mem(&self) -> &MemBus {
        &self.mem
    }
    fn ioeventfd(&self, port: u16, data: u16, evt: &EventFd, on: bool) -> bool {
        self.ioeventfd(port, data, evt, on)
    }
}

/// What sits behind a BAR; `off` is relative to the BAR's base.
pub trait BarDevice: Send {
    fn bar_read(&mut self, off: u64, data: &mut [u8]) -> bool;
    fn bar_write(&mut self, off: u64, data: &[u8]) -> bool;
}

pub type SharedBar = Arc<Mutex<dyn BarDevice>>;

/// Per-function config hooks (`pe_cfgread` / `pe_cfgwrite`).
pub trait PciDevice: Send {
    /// A config byte the device computes; `None` reads config space.
    fn cfg_byte(&self, _off: usize) -> Option<u8> {
        None
    }
    /// True when the device took the write itself.
    fn cfg_write(&mut self, _off: usize, _len: usize, _val: u32) -> bool {
        false
    }
}

/// A function with no hooks of its own.
#[derive(Debug)]
pub struct Plain;
impl PciDevice for Plain {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    Io,
    Mem32,
    Mem64,
}

struct Bar {
    kind: BarKind,
    size: u64,
    addr: u64,
    /// Placed by the allocator (and so worth decoding).
    placed: bool,
    /// The base claimed on a bus, if any.
    mapped: Option<u64>,
    dev: SharedBar,
    /// Attached as ioeventfds while an I/O BAR is mapped.
    doorbells: Vec<Doorbell>,
    /// Whether they are attached now.
    rung: bool,
}

enum BarSlot {
    None,
    Bar(Bar),
    /// The upper half of the 64-bit BAR below.
    Hi,
}

/// Forwards a port range to a BAR device at BAR-relative offsets.
struct IoWindow {
    base: u16,
    dev: SharedBar,
}
impl PioDevice for IoWindow {
    fn pio_read(&mut self, port: u16, data: &mut [u8]) -> bool {
        let off = u64::from(port.wrapping_sub(self.base));
        lock(&self.dev).bar_read(off, data)
    }
    fn pio_write(&mut self, port: u16, data: &[u8]) -> bool {
        let off = u64::from(port.wrapping_sub(self.base));
        lock(&self.dev).bar_write(off, data)
    }
}

struct MemWindow {
    base: u64,
    dev: SharedBar,
}
impl MmioDevice for MemWindow {
    fn mmio_read(&mut self, addr: u64, data: &mut [u8]) {
        if !lock(&self.dev).bar_read(addr.wrapping_sub(self.base), data) {
            data.fill(0xff);
        }
    }
    fn mmio_write(&mut self, addr: u64, data: &[u8]) {
        let _ = lock(&self.dev).bar_write(addr.wrapping_sub(self.base), data);
    }
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn le(data: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = data.len().min(8);
    b[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(b)
}

/// An MSI-X table and PBA (`pci_emul_add_msixcap`): the table at BAR
/// offset 0, the PBA at the next 4 KiB boundary.  Unlike bhyve, a message
/// raised while masked sets its PBA bit and is sent on unmasking, as the
/// PCI spec requires, so a guest masking vectors loses no interrupt.
pub struct Msix {
    /// Per entry: address low, address high, data, vector control.
    table: Vec<[u32; 4]>,
    pending: Vec<u64>,
    pba_offset: u64,
    enabled: bool,
    fmask: bool,
    sender: Arc<dyn MsiSender>,
}

impl std::fmt::Debug for Msix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Msix")
            .field("entries", &self.table.len())
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

impl Msix {
    fn new(count: usize, sender: Arc<dyn MsiSender>) -> Msix {
        let table_size = (count as u64 * MSIX_ENTRY).next_multiple_of(4096);
        Msix {
            // Every entry starts masked.
            table: vec![[0, 0, 0, MSIX_VCTRL_MASK]; count],
            pending: vec![0; count.div_ceil(64)],
            pba_offset: table_size,
            enabled: false,
            fmask: false,
            sender,
        }
    }

    /// Table plus PBA, the BAR's size.
    fn bar_size(&self) -> u64 {
        self.pba_offset + self.pending.len() as u64 * 8
    }

    fn masked(&self, v: usize) -> bool {
        self.fmask || self.table[v][3] & MSIX_VCTRL_MASK != 0
    }

    fn deliver(&mut self, v: usize) {
        let e = self.table[v];
        let addr = u64::from(e[0]) | (u64::from(e[1]) << 32);
        self.sender.send_msi(addr, e[2]);
    }

    /// `pci_generate_msix`: raise vector `v`.
    pub fn notify(&mut self, v: usize) {
        if !self.enabled || v >= self.table.len() {
            return;
        }
        if self.masked(v) {
            self.pending[v / 64] |= 1 << (v % 64);
        } else {
            self.deliver(v);
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Send what unmasking released.
    fn flush_pending(&mut self) {
        if !self.enabled {
            return;
        }
        for v in 0..self.table.len() {
            if self.pending[v / 64] & (1 << (v % 64)) != 0 && !self.masked(v) {
                self.pending[v / 64] &= !(1 << (v % 64));
                self.deliver(v);
            }
        }
    }

    fn set_control(&mut self, enabled: bool, fmask: bool) {
        self.enabled = enabled;
        self.fmask = fmask;
        self.flush_pending();
    }
}

impl BarDevice for Msix {
    /// `pci_emul_msix_tread`: 1-, 4- or 8-byte aligned reads.
    fn bar_read(&mut self, off: u64, data: &mut [u8]) -> bool {
        let n = data.len() as u64;
        data.fill(0xff);
        if !matches!(n, 1 | 4 | 8) || off % n != 0 {
            return true;
        }
        let table_len = self.table.len() as u64 * MSIX_ENTRY;
        if off < table_len {
            let mut bytes = [0u8; 16];
            let e = self.table[(off / MSIX_ENTRY) as usize];
            for (i, w) in e.iter().enumerate() {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
            }
            let o = (off % MSIX_ENTRY) as usize;
            data.copy_from_slice(&bytes[o..o + data.len()]);
        } else if off >= self.pba_offset && off < self.bar_size() {
            let o = off - self.pba_offset;
            let word = self.pending[(o / 8) as usize].to_le_bytes();
            let s = (o % 8) as usize;
            data.copy_from_slice(&word[s..s + data.len()]);
        }
        true
    }

    /// `pci_emul_msix_twrite`: 4- or 8-byte aligned table writes; the PBA
    /// is read-only.
    fn bar_write(&mut self, off: u64, data: &[u8]) -> bool {
        let n = data.len() as u64;
        let table_len = self.table.len() as u64 * MSIX_ENTRY;
        if !matches!(n, 4 | 8) || off % n != 0 || off >= table_len {
            return true;
        }
        let v = (off / MSIX_ENTRY) as usize;
        let first = (off % MSIX_ENTRY / 4) as usize;
        let val = le(data);
        for (i, w) in (first..first + (n / 4) as usize).enumerate() {
            let dw = (val >> (32 * i)) as u32;
            // Only the mask bit of vector control is defined.
            self.table[v][w] = if w == 3 { dw & MSIX_VCTRL_MASK } else { dw };
        }
        self.flush_pending();
        true
    }
}

/// One PCI function.
pub struct PciFunction {
    slot: u8,
    func: u8,
    name: String,
    cfg: [u8; CONFIG_SIZE],
    wmask: [u8; CONFIG_SIZE],
    bars: [BarSlot; NBARS],
    /// Offset of the last capability added (0: none yet).
    last_cap: usize,
    next_cap: usize,
    msi_cap: Option<usize>,
    msix: Option<(usize, Arc<Mutex<Msix>>)>,
    intx: Option<Arc<Intx>>,
    /// A 2013 legacy (`-S`) function's fixed ISA IRQ: its INTx drives this
    /// line directly, outside the PIRQ router and `_PRT`.
    legacy_irq: Option<u8>,
    dev: Box<dyn PciDevice>,
}

impl std::fmt::Debug for PciFunction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciFunction")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl PciFunction {
    /// A function as `pci_emul_init` leaves it: IDs and class set,
    /// interrupt line 0xFF, bus mastering on.  `emul` names it in errors.
    pub fn new(
        slot: u8,
        func: u8,
        emul: &str,
        ids: (u16, u16),
        class: (u8, u8, u8),
        dev: Box<dyn PciDevice>,
    ) -> PciFunction {
        let mut f = PciFunction {
            slot,
            func,
            name: format!("pci 0:{slot}:{func} {emul}"),
            cfg: [0; CONFIG_SIZE],
            wmask: [0; CONFIG_SIZE],
            bars: std::array::from_fn(|_| BarSlot::None),
            last_cap: 0,
            next_cap: CAP_START,
            msi_cap: None,
            msix: None,
            intx: None,
            legacy_irq: None,
            dev,
        };
        f.set16(PCIR_VENDOR, ids.0);
        f.set16(PCIR_DEVICE, ids.1);
        f.cfg[PCIR_CLASS] = class.0;
        f.cfg[PCIR_SUBCLASS] = class.1;
        f.cfg[PCIR_PROGIF] = class.2;
        f.set16(PCIR_COMMAND, CMD_BUSMASTEREN);
        f.cfg[PCIR_INTLINE] = 0xff;
        f.set_wmask16(PCIR_COMMAND, CMD_WRITABLE);
        // Cache line size, latency timer, interrupt line.
        f.wmask[0x0c] = 0xff;
        f.wmask[0x0d] = 0xff;
        f.wmask[PCIR_INTLINE] = 0xff;
        // bhyve stores writes to the device-specific area as they come.
        f.wmask[CAP_START..].fill(0xff);
        f
    }

    pub fn slot(&self) -> u8 {
        self.slot
    }

    pub fn func(&self) -> u8 {
        self.func
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn err(&self, why: String) -> PciError {
        PciError::Device {
            bdf: format!("0:{}:{}", self.slot, self.func),
            why,
        }
    }

    pub(crate) fn set16(&mut self, off: usize, v: u16) {
        self.cfg[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }

    fn set32(&mut self, off: usize, v: u32) {
        self.cfg[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn get16(&self, off: usize) -> u16 {
        u16::from_le_bytes([self.cfg[off], self.cfg[off + 1]])
    }

    fn set_wmask16(&mut self, off: usize, m: u16) {
        self.wmask[off..off + 2].copy_from_slice(&m.to_le_bytes());
    }

    /// `pci_emul_add_capability`: append `cap` (id, next pointer, body) to
    /// the list, 4-byte aligned; the caller then opens its writable bits.
    pub fn add_capability(&mut self, cap: &[u8]) -> Result<usize, PciError> {
        let off = self.next_cap;
        let len = cap.len().next_multiple_of(4);
        if cap.len() < 2 || off + len > CONFIG_SIZE {
            return Err(self.err(format!("no room for capability {:#x}", cap[0])));
        }
        self.cfg[off..off + cap.len()].copy_from_slice(cap);
        self.cfg[off + 1] = 0;
        self.wmask[off..off + len].fill(0);
        if self.last_cap == 0 {
            self.cfg[PCIR_CAP_PTR] = off as u8;
            let sts = self.get16(PCIR_STATUS) | STATUS_CAPPRESENT;
            self.set16(PCIR_STATUS, sts);
        } else {
            self.cfg[self.last_cap + 1] = off as u8;
        }
        self.last_cap = off;
        self.next_cap = off + len;
        Ok(off)
    }

    /// `pci_emul_add_msicap`: a 64-bit MSI capability for `count`
    /// (a power of two, 1–32) messages.
    pub fn add_msi(&mut self, count: u32) -> Result<(), PciError> {
        if !count.is_power_of_two() || count > 32 {
            return Err(self.err(format!("{count} MSI messages")));
        }
        let ctrl = MSICTRL_64BIT | ((count.trailing_zeros() as u16) << 1);
        let mut cap = [0u8; 14];
        cap[0] = PCIY_MSI;
        cap[2..4].copy_from_slice(&ctrl.to_le_bytes());
        let off = self.add_capability(&cap)?;
        // Enable and multiple-message enable; address (dword aligned)
        // and data.
        self.set_wmask16(off + 2, MSICTRL_ENABLE | MSICTRL_MME);
        self.wmask[off + 4] = 0xfc;
        self.wmask[off + 5..off + 14].fill(0xff);
        self.msi_cap = Some(off);
        Ok(())
    }

    /// `pci_emul_add_msixcap`: `count` vectors with table and PBA in the
    /// MEM32 BAR `bar`; returns the table the device raises vectors on.
    pub fn add_msix(
        &mut self,
        count: usize,
        bar: usize,
        sender: Arc<dyn MsiSender>,
    ) -> Result<Arc<Mutex<Msix>>, PciError> {
        if count == 0 || count > MSIX_MAX {
            return Err(self.err(format!("{count} MSI-X vectors")));
        }
        let msix = Msix::new(count, sender);
        let (size, pba) = (msix.bar_size(), msix.pba_offset);
        let msix = Arc::new(Mutex::new(msix));
        self.add_bar(bar, BarKind::Mem32, size, msix.clone())?;
        let mut cap = [0u8; 12];
        cap[0] = PCIY_MSIX;
        cap[2..4].copy_from_slice(&((count - 1) as u16).to_le_bytes());
        cap[4..8].copy_from_slice(&(bar as u32).to_le_bytes());
        cap[8..12].copy_from_slice(&(pba as u32 | bar as u32).to_le_bytes());
        let off = self.add_capability(&cap)?;
        self.set_wmask16(off + 2, MSIXCTRL_ENABLE | MSIXCTRL_FMASK);
        self.msix = Some((off, msix.clone()));
        Ok(msix)
    }

    /// `pci_emul_add_pciecap` (version 2); `port_type` is the device/port
    /// type field (bits 7:4 of the capabilities register).
    pub fn add_pciecap(&mut self, port_type: u8) -> Result<(), PciError> {
        const ENDPOINT: u8 = 0x0;
        const ROOT_INT_EP: u8 = 0x9;
        // On the root complex's bus every endpoint is integrated.
        let t = if port_type == ENDPOINT {
            ROOT_INT_EP
        } else {
            port_type
        };
        let mut cap = [0u8; 60];
        cap[0] = PCIY_EXPRESS;
        cap[2] = 0x02 | (t << 4);
        if t != ROOT_INT_EP {
            // Gen1 x1 link.
            cap[12..16].copy_from_slice(&0x411u32.to_le_bytes());
            cap[18..20].copy_from_slice(&0x11u16.to_le_bytes());
        }
        let off = self.add_capability(&cap)?;
        // Device, link, slot and root control registers (and their
        // version 2 counterparts) are the writable ones.
        for c in [8, 16, 24, 28, 40, 48, 56] {
            self.set_wmask16(off + c, 0xffff);
        }
        Ok(())
    }

    /// `pci_emul_alloc_bar`: declare BAR `idx` of at least `size` bytes
    /// (rounded to a power of two, at least 4 for I/O and 16 for memory);
    /// the bus places it later.
    pub fn add_bar(
        &mut self,
        idx: usize,
        kind: BarKind,
        size: u64,
        dev: SharedBar,
    ) -> Result<(), PciError> {
        let span = if kind == BarKind::Mem64 { 2 } else { 1 };
        if idx + span > NBARS
            || self.bars[idx..idx + span]
                .iter()
                .any(|b| !matches!(b, BarSlot::None))
        {
            return Err(self.err(format!("BAR{idx} is taken or out of range")));
        }
        let min = if kind == BarKind::Io { 4 } else { 16 };
        let size = size.max(min).checked_next_power_of_two();
        let size = match size {
            Some(s) if kind != BarKind::Io || s <= 0x1_0000 => s,
            _ => return Err(self.err(format!("BAR{idx} is too large"))),
        };
        self.bars[idx] = BarSlot::Bar(Bar {
            kind,
            size,
            addr: 0,
            placed: false,
            mapped: None,
            dev,
            doorbells: Vec::new(),
            rung: false,
        });
        if span == 2 {
            self.bars[idx + 1] = BarSlot::Hi;
        }
        Ok(())
    }

    /// A BAR fixed at `addr` rather than placed by the allocator, decoding
    /// from the start: the 2013 `-S` legacy resources
    /// (`pci_emul_alloc_pbar` with a host base; the command register then
    /// had I/O and memory decoding on at init).  The guest may still move
    /// it, as any BAR.
    /// Doorbells of the I/O BAR `idx`, attached whenever it is mapped.
    pub fn add_doorbells(&mut self, idx: usize, doorbells: Vec<Doorbell>) -> Result<(), PciError> {
        match self.bars.get_mut(idx) {
            Some(BarSlot::Bar(b)) if b.kind == BarKind::Io && b.mapped.is_none() => {
                b.doorbells = doorbells;
                Ok(())
            }
            _ => Err(self.err(format!("BAR{idx} cannot take doorbells"))),
        }
    }

    pub fn add_fixed_bar(
        &mut self,
        idx: usize,
        kind: BarKind,
        size: u64,
        addr: u64,
        dev: SharedBar,
    ) -> Result<(), PciError> {
        self.add_bar(idx, kind, size, dev)?;
        if let BarSlot::Bar(b) = &self.bars[idx] {
            if addr % b.size != 0 || (kind == BarKind::Io && addr + b.size > PCI_IO_LIMIT) {
                self.bars[idx] = BarSlot::None;
                return Err(self.err(format!("BAR{idx} cannot be fixed at {addr:#x}")));
            }
        }
        self.place_bar(idx, addr);
        let cmd = self.get16(PCIR_COMMAND)
            | if kind == BarKind::Io {
                CMD_PORTEN
            } else {
                CMD_MEMEN
            };
        self.set16(PCIR_COMMAND, cmd);
        Ok(())
    }

    /// The function's INTx line (`pci_lintr_request`); the bus picks the
    /// pin and the router routes it.
    pub fn request_intx(&mut self, router: Arc<PciIrq>) -> Arc<Intx> {
        let i = Arc::new(Intx::new(router));
        self.intx = Some(i.clone());
        i
    }

    /// The 2013 legacy INTx (`pci_lintr_request(pi, ivec)` with a fixed
    /// vector): pin INTA, interrupt line `irq`, and the line is ISA IRQ /
    /// IO-APIC pin `irq` itself — no PIRQ link, no `_PRT` entry (the MP
    /// table's identity-mapped ISA entry describes it).
    pub fn request_legacy_intx(&mut self, router: Arc<PciIrq>, irq: u8) -> Arc<Intx> {
        self.legacy_irq = Some(irq);
        self.request_intx(router)
    }

    /// The fixed ISA IRQ of a legacy function's INTx.
    pub fn legacy_irq(&self) -> Option<u8> {
        self.legacy_irq
    }

    /// The INTx line `request_intx` made.
    pub fn intx(&self) -> Option<Arc<Intx>> {
        self.intx.clone()
    }

    /// The INTx pin (1 = INTA..4 = INTD; 0 until the bus picks it).
    pub fn intx_pin(&self) -> Option<u8> {
        self.intx.as_ref().map(|_| self.cfg[PCIR_INTPIN])
    }

    /// Write a placed BAR's address into config space.
    fn place_bar(&mut self, idx: usize, addr: u64) {
        let BarSlot::Bar(b) = &mut self.bars[idx] else {
            return;
        };
        b.addr = addr;
        b.placed = true;
        let kind = b.kind;
        match kind {
            BarKind::Io => self.set32(PCIR_BAR0 + idx * 4, addr as u32 | 1),
            BarKind::Mem32 => self.set32(PCIR_BAR0 + idx * 4, addr as u32),
            BarKind::Mem64 => {
                self.set32(PCIR_BAR0 + idx * 4, addr as u32 | 0x4);
                self.set32(PCIR_BAR0 + idx * 4 + 4, (addr >> 32) as u32);
            }
        }
    }

    /// Turn on decoding for every placed BAR (`pci.enable_bars`).
    fn enable_bars(&mut self) {
        let mut cmd = self.get16(PCIR_COMMAND);
        for b in &self.bars {
            if let BarSlot::Bar(b) = b {
                cmd |= if b.kind == BarKind::Io {
                    CMD_PORTEN
                } else {
                    CMD_MEMEN
                };
            }
        }
        self.set16(PCIR_COMMAND, cmd);
    }

    /// A configuration read of an aligned 1-, 2- or 4-byte register in
    /// the first 256 bytes.
    pub fn cfg_read(&self, off: usize, len: usize) -> u32 {
        let mut v = 0u32;
        for i in (0..len).rev() {
            let o = off + i;
            let b = self.dev.cfg_byte(o).unwrap_or(self.cfg[o]);
            v = (v << 8) | u32::from(b);
        }
        v
    }

    /// A configuration write (`pci_cfgrw`); decoding changes go to `space`.
    pub fn cfg_write(&mut self, space: &dyn BarSpace, off: usize, len: usize, val: u32) {
        if self.dev.cfg_write(off, len, val) {
            return;
        }
        if (PCIR_BAR0..PCIR_BAR0 + NBARS * 4).contains(&off) {
            // Only aligned dword writes move BARs.
            if len == 4 && off % 4 == 0 {
                self.bar_write((off - PCIR_BAR0) / 4, val);
                self.sync(space);
            }
            return;
        }
        for i in 0..len {
            let o = off + i;
            let b = (val >> (8 * i)) as u8;
            self.cfg[o] = (self.cfg[o] & !self.wmask[o]) | (b & self.wmask[o]);
        }
        self.sync(space);
    }

    /// The BAR sizing protocol: the address keeps only the bits above the
    /// size, so writing all ones reads back the size mask.
    fn bar_write(&mut self, idx: usize, val: u32) {
        let reg = PCIR_BAR0 + idx * 4;
        let lo = match &mut self.bars[idx] {
            BarSlot::None => 0,
            BarSlot::Bar(b) => {
                let mask = !(b.size - 1);
                match b.kind {
                    BarKind::Io => {
                        b.addr = u64::from(val) & mask & 0xffff;
                        b.addr as u32 | 1
                    }
                    BarKind::Mem32 => {
                        b.addr = u64::from(val) & mask & 0xffff_fff0;
                        b.addr as u32
                    }
                    BarKind::Mem64 => {
                        let low = u64::from(val) & mask & 0xffff_fff0;
                        b.addr = (b.addr & !0xffff_ffff) | low;
                        low as u32 | 0x4
                    }
                }
            }
            BarSlot::Hi => match idx.checked_sub(1).map(|i| &mut self.bars[i]) {
                Some(BarSlot::Bar(b)) => {
                    let high = (u64::from(val) << 32) & !(b.size - 1);
                    b.addr = (b.addr & 0xffff_ffff) | high;
                    (high >> 32) as u32
                }
                _ => 0,
            },
        };
        self.set32(reg, lo);
    }

    fn msi_enabled(&self) -> bool {
        self.msi_cap
            .is_some_and(|o| self.get16(o + 2) & MSICTRL_ENABLE != 0)
    }

    /// After a write: bring BAR decoding, MSI-X state and INTx in line with
    /// config space (`pci_emul_cmdsts_write`, `msixcap_cfgwrite`,
    /// `pci_lintr_update`).
    fn sync(&mut self, space: &dyn BarSpace) {
        let cmd = self.get16(PCIR_COMMAND);
        let msi = self.msi_enabled();
        let mut msix_on = false;
        if let Some((off, m)) = &self.msix {
            let ctrl = self.get16(off + 2);
            msix_on = ctrl & MSIXCTRL_ENABLE != 0;
            // MSI-X counts as enabled only while MSI is off.
            lock(m).set_control(msix_on && !msi, ctrl & MSIXCTRL_FMASK != 0);
        }
        if let Some(i) = &self.intx {
            i.set_permitted(!(msi || msix_on || cmd & CMD_INTXDIS != 0));
        }
        for idx in 0..NBARS {
            let BarSlot::Bar(b) = &mut self.bars[idx] else {
                continue;
            };
            let on = match b.kind {
                BarKind::Io => cmd & CMD_PORTEN != 0,
                _ => cmd & CMD_MEMEN != 0,
            };
            let want = (on && b.placed).then_some(b.addr);
            if want == b.mapped {
                continue;
            }
            if let Some(old) = b.mapped.take() {
                match b.kind {
                    BarKind::Io => {
                        if b.rung {
                            for d in &b.doorbells {
                                space.ioeventfd(old as u16 + d.off as u16, d.data, &d.evt, false);
                            }
                            b.rung = false;
                        }
                        space.inout().unregister(old as u16)
                    }
                    _ => space.mem().unregister(old),
                }
            }
            let Some(addr) = want else { continue };
            let name = format!("{} bar{idx}", self.name);
            // A guest may move a BAR onto something else or out of range
            // (sizing with decoding on); it then decodes nothing, as the
            // bus refuses the overlap.
            let ok = match b.kind {
                BarKind::Io => u16::try_from(addr).is_ok_and(|a| {
                    let w = IoWindow {
                        base: a,
                        dev: b.dev.clone(),
                    };
                    space
                        .inout()
                        .register(a, b.size as u16, &name, Arc::new(Mutex::new(w)))
                        .is_ok()
                }),
                _ => {
                    let w = MemWindow {
                        base: addr,
                        dev: b.dev.clone(),
                    };
                    space
                        .mem()
                        .register(addr, b.size, &name, Arc::new(Mutex::new(w)))
                        .is_ok()
                }
            };
            if ok {
                b.mapped = Some(addr);
                if b.kind == BarKind::Io && !b.doorbells.is_empty() {
                    // All or none, so that a notify never half bypasses the
                    // device's exit path.
                    let port = |d: &Doorbell| addr as u16 + d.off as u16;
                    let n = b
                        .doorbells
                        .iter()
                        .take_while(|d| space.ioeventfd(port(d), d.data, &d.evt, true))
                        .count();
                    b.rung = n == b.doorbells.len();
                    if !b.rung {
                        for d in &b.doorbells[..n] {
                            space.ioeventfd(port(d), d.data, &d.evt, false);
                        }
                    }
                }
            }
        }
    }

    /// The MSI message for `vector` if MSI is enabled and `vector` is
    /// within the enabled count (`pci_generate_msi`).
    pub fn msi_message(&self, vector: u32) -> Option<(u64, u32)> {
        let off = self.msi_cap?;
        let ctrl = self.get16(off + 2);
        if ctrl & MSICTRL_ENABLE == 0 || vector >= 1 << ((ctrl & MSICTRL_MME) >> 4) {
            return None;
        }
        let lo = u32::from_le_bytes(self.cfg[off + 4..off + 8].try_into().ok()?);
        let hi = u32::from_le_bytes(self.cfg[off + 8..off + 12].try_into().ok()?);
        let data = self.get16(off + 12);
        Some((
            u64::from(lo) | (u64::from(hi) << 32),
            u32::from(data) + vector,
        ))
    }
}

/// Bus 0: its functions and the buses their BARs decode on.
pub struct PciBus {
    funcs: Vec<Option<Arc<Mutex<PciFunction>>>>,
    space: Weak<dyn BarSpace>,
}

impl std::fmt::Debug for PciBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciBus").finish_non_exhaustive()
    }
}

impl PciBus {
    fn index(slot: u8, func: u8) -> usize {
        usize::from(slot) * usize::from(NFUNCS) + usize::from(func)
    }

    /// The function at `slot`/`func` of bus 0.
    pub fn function(&self, slot: u8, func: u8) -> Option<Arc<Mutex<PciFunction>>> {
        if slot >= NSLOTS || func >= NFUNCS {
            return None;
        }
        self.funcs[Self::index(slot, func)].clone()
    }

    fn multifunction(&self, slot: u8) -> bool {
        (0..NFUNCS)
            .filter(|&f| self.function(slot, f).is_some())
            .count()
            > 1
    }

    /// `pci_cfgrw` read: absent functions, other buses, bad sizes and
    /// misaligned accesses read all ones; 0x100–0x103 reads zero (no
    /// extended capabilities) and the rest of the 4 KiB all ones.
    pub fn cfg_read(&self, bus: u8, slot: u8, func: u8, off: usize, len: usize) -> u32 {
        let ones = if len >= 4 {
            u32::MAX
        } else {
            (1u32 << (8 * len)) - 1
        };
        let f = match self.function(slot, func) {
            Some(f) if bus == 0 && matches!(len, 1 | 2 | 4) && off % len == 0 => f,
            _ => return ones,
        };
        if off >= CONFIG_SIZE {
            return if off < CONFIG_SIZE + 4 { 0 } else { ones };
        }
        let mut v = lock(&f).cfg_read(off, len);
        // The multi-function bit is synthesised from the slot's population.
        if (off..off + len).contains(&PCIR_HDRTYPE) && self.multifunction(slot) {
            v |= u32::from(HDRTYPE_MFDEV) << (8 * (PCIR_HDRTYPE - off));
        }
        v
    }

    /// `pci_cfgrw` write; dropped where a read would be all ones.
    pub fn cfg_write(&self, bus: u8, slot: u8, func: u8, off: usize, len: usize, val: u32) {
        let Some(f) = self.function(slot, func) else {
            return;
        };
        if bus != 0 || !matches!(len, 1 | 2 | 4) || off % len != 0 || off >= CONFIG_SIZE {
            return;
        }
        // Without the machine there is nothing left to run the guest.
        let Some(space) = self.space.upgrade() else {
            return;
        };
        lock(&f).cfg_write(&*space, off, len, val);
    }
}

/// Configuration mechanism #1: the address latch at 0xCF8 and the data
/// window at 0xCFC–0xCFF (`pci_emul_cfgaddr`, `pci_emul_cfgdata`).
#[derive(Debug)]
pub struct ConfigMech1 {
    addr: u32,
    bus: Arc<PciBus>,
}

impl ConfigMech1 {
    pub fn new(bus: Arc<PciBus>) -> ConfigMech1 {
        ConfigMech1 { addr: 0, bus }
    }

    /// Bus, slot, function and register of the latched address.
    fn target(&self, port: u16) -> Option<(u8, u8, u8, usize)> {
        let a = self.addr;
        (a & CONF1_ENABLE != 0).then(|| {
            (
                (a >> 16) as u8,
                ((a >> 11) & 0x1f) as u8,
                ((a >> 8) & 0x7) as u8,
                (a & 0xfc) as usize + usize::from(port.wrapping_sub(CONF1_DATA_PORT)),
            )
        })
    }
}

impl PioDevice for ConfigMech1 {
    fn pio_read(&mut self, port: u16, data: &mut [u8]) -> bool {
        let n = data.len();
        let v = if port == CONF1_ADDR_PORT {
            // Only dword accesses reach the latch.
            if n == 4 { self.addr } else { u32::MAX }
        } else {
            match self.target(port) {
                Some((b, s, f, off)) => self.bus.cfg_read(b, s, f, off, n),
                None => u32::MAX,
            }
        };
        let bytes = v.to_le_bytes();
        for (i, d) in data.iter_mut().enumerate() {
            *d = bytes.get(i).copied().unwrap_or(0xff);
        }
        true
    }

    fn pio_write(&mut self, port: u16, data: &[u8]) -> bool {
        let v = le(data) as u32;
        if port == CONF1_ADDR_PORT {
            if data.len() == 4 {
                // The register's low two bits always read zero.
                self.addr = v & (CONF1_ENABLE | 0x00ff_fffc);
            }
        } else if let Some((b, s, f, off)) = self.target(port) {
            self.bus.cfg_write(b, s, f, off, data.len(), v);
        }
        true
    }
}

/// The ECAM window (MCFG): bits 27:20 bus, 19:15 slot, 14:12 function,
/// 11:0 register (`pci_emul_ecfg_handler`).
#[derive(Debug)]
pub struct Ecam {
    base: u64,
    bus: Arc<PciBus>,
}

impl Ecam {
    pub fn new(base: u64, bus: Arc<PciBus>) -> Ecam {
        Ecam { base, bus }
    }

    fn decode(&self, addr: u64) -> (u8, u8, u8, usize) {
        let a = addr.wrapping_sub(self.base);
        (
            (a >> 20) as u8,
            ((a >> 15) & 0x1f) as u8,
            ((a >> 12) & 0x7) as u8,
            (a & 0xfff) as usize,
        )
    }
}

impl MmioDevice for Ecam {
    fn mmio_read(&mut self, addr: u64, data: &mut [u8]) {
        let (b, s, f, off) = self.decode(addr);
        let v = self.bus.cfg_read(b, s, f, off, data.len());
        let bytes = v.to_le_bytes();
        for (i, d) in data.iter_mut().enumerate() {
            *d = bytes.get(i).copied().unwrap_or(0xff);
        }
    }

    fn mmio_write(&mut self, addr: u64, data: &[u8]) {
        let (b, s, f, off) = self.decode(addr);
        self.bus
            .cfg_write(b, s, f, off, data.len(), le(data) as u32);
    }
}

/// A window the allocator hands BAR addresses from.
#[derive(Debug, Clone)]
struct Window {
    name: &'static str,
    next: u64,
    limit: u64,
}

impl Window {
    /// Naturally aligned, first fit (`pci_emul_alloc_resource`).
    fn alloc(&mut self, size: u64) -> Option<u64> {
        let base = self.next.checked_next_multiple_of(size)?;
        let end = base.checked_add(size)?;
        (end <= self.limit).then(|| {
            self.next = end;
            base
        })
    }
}

/// bhyve's three windows for a guest with `memsize` bytes of RAM.
fn windows(memsize: u64) -> [Window; 3] {
    let highmem = memsize.saturating_sub(LOWMEM_LIMIT);
    let base64 = (4 * GIB + highmem).next_multiple_of(MEM64_SIZE);
    [
        Window {
            name: "I/O",
            next: u64::from(PCI_IO_BASE),
            limit: PCI_IO_LIMIT,
        },
        Window {
            name: "MMIO32",
            next: PCI_MEM32_BASE,
            limit: PCI_MEM32_LIMIT,
        },
        Window {
            name: "MMIO64",
            next: base64,
            limit: base64 + MEM64_SIZE,
        },
    ]
}

/// Place every BAR of `funcs` (in slot/function order), largest first so
/// alignment wastes little (`pci_emul_assign_bars`); returns the windows
/// as bus 0 decodes them, slop included: I/O, MMIO32, MMIO64.
fn assign_bars(funcs: &mut [PciFunction], memsize: u64) -> Result<[Range<u64>; 3], PciError> {
    let mut w = windows(memsize);
    let starts = [w[0].next, w[1].next, w[2].next];
    let mut bars = Vec::new();
    for (fi, f) in funcs.iter().enumerate() {
        for (idx, b) in f.bars.iter().enumerate() {
            // Fixed (legacy) BARs are placed already, outside the windows.
            match b {
                BarSlot::Bar(b) if !b.placed => bars.push((b.size, fi, idx, b.kind)),
                _ => {}
            }
        }
    }
    // Stable: equal sizes keep slot/function order.
    bars.sort_by_key(|b| std::cmp::Reverse(b.0));
    for (size, fi, idx, kind) in bars {
        let win = match kind {
            BarKind::Io => 0,
            BarKind::Mem64 if size > MEM64_LOW_MAX => 2,
            // Small 64-bit BARs live below 4 GiB but stay 64-bit typed.
            _ => 1,
        };
        let f = &mut funcs[fi];
        let addr = w[win].alloc(size).ok_or_else(|| PciError::NoRoom {
            bdf: format!("0:{}:{}", f.slot, f.func),
            bar: idx,
            size,
            window: w[win].name,
        })?;
        f.place_bar(idx, addr);
    }
    let slop = [BUSIO_ROUNDUP, BUSMEM32_ROUNDUP, BUSMEM64_ROUNDUP];
    Ok(std::array::from_fn(|i| {
        starts[i]..(w[i].next + slop[i]).next_multiple_of(slop[i])
    }))
}

/// What `attach_pci` built, for the tables and the lead's bookkeeping.
#[derive(Debug)]
pub struct Pci {
    pub bus: Arc<PciBus>,
    pub irq: Arc<PciIrq>,
    /// Every function on bus 0 with its INTx pin, for `acpi::AcpiConfig`.
    pub functions: Vec<acpi::PciFunction>,
    /// `acpi::route_intx`'s routes (for the MP table).
    pub routes: Vec<IntxRoute>,
    /// Bus 0's windows as the allocator left them, slop included.
    pub io_window: Range<u64>,
    pub mmio32: Range<u64>,
    pub mmio64: Range<u64>,
}

/// What virtio functions need: guest memory for their rings and
/// buffers, the MSI path, and the virtio-blk images `devices::plan`
/// opened.
pub struct VirtioBackends {
    pub mem: vmmapi::vm_memory::GuestMemoryMmap,
    pub msi: Arc<dyn MsiSender>,
    pub disks: BTreeMap<Bdf, Disk>,
}

impl std::fmt::Debug for VirtioBackends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioBackends")
            .field("disks", &self.disks)
            .finish_non_exhaustive()
    }
}

/// Build bus 0 from `pci.0.S.F.device` nodes — `hostbridge`,
/// `amd_hostbridge`, `lpc` (the bridge's config space; its COM ports stay
/// with pci_lpc.rs), `uart` (a 2013 `legacy` one with BAR0 and INTx
/// fixed on COM1's, then COM2's, resources) and `virtio-blk` — place
/// their BARs, route INTx, and claim ports 0xCF8 and 0xCFC–0xCFF and the
/// ECAM window on `space`.  Other emulations are left out.  `line(gsi)`
/// gives interrupt lines 0–23; `uart_backends` are the PCI UARTs'
/// backends as `devices::plan` opened them; `virtio` is required once a
/// virtio-blk function is configured.
pub fn attach_pci<S: BarSpace + 'static>(
    space: &Arc<S>,
    config: &Config,
    line: &dyn Fn(u32) -> Irq,
    mut uart_backends: BTreeMap<Bdf, UartBackend>,
    virtio: Option<VirtioBackends>,
    mevent: &Arc<Mevent>,
) -> Result<Pci, PciError> {
    let memsize = config.memsize()?;
    let irq = Arc::new(PciIrq::new(line));
    // Reservations made before routing by the devices that own ISA IRQs:
    // atkbdc (keyboard 1, mouse 12), the SCI (9, shared), COM ports.
    irq.reserve(1);
    irq.reserve(12);
    irq.use_irq(crate::pm::SCI_INT as u8);
    let devices = config.pci_devices();
    let has_legacy_com = devices.iter().any(|(_, o)| {
        let dev = o.get("device").map(String::as_str);
        dev == Some("lpc") || (dev == Some("uart") && o.get("legacy").is_some_and(|v| v == "true"))
    });
    if has_legacy_com {
        for c in pci_lpc::COM_PORTS {
            irq.reserve(c.irq as u8);
        }
    }
    let (mut disks, env) = match virtio {
        Some(v) => (
            v.disks,
            Some(VirtioEnv {
                mem: v.mem,
                msi: v.msi,
                use_msix: config.get("virtio_msix").is_none() || config.get_bool("virtio_msix")?,
                mevent: Some(mevent.clone()),
            }),
        ),
        None => (BTreeMap::new(), None),
    };
    let mut funcs = Vec::new();
    let mut ports = Vec::new();
    let mut vss: Vec<(u8, u8, Virtio)> = Vec::new();
    let mut nlegacy = 0;
    for ((bus, slot, func), opts) in devices {
        let emul = opts.get("device").map(String::as_str).unwrap_or_default();
        let bdf = format!("{bus}:{slot}:{func}");
        let f = match emul {
            "hostbridge" | "amd_hostbridge" | "lpc" | "uart" | "virtio-blk" | "virtio-net"
                if bus != 0 =>
            {
                return Err(PciError::Device {
                    bdf,
                    why: format!("{emul}: only bus 0 is emulated"),
                });
            }
            "hostbridge" => pci_hostbridge::new(slot, func, false, &opts)?,
            "amd_hostbridge" => pci_hostbridge::new(slot, func, true, &opts)?,
            "lpc" => pci_lpc_bridge::new(slot, func, irq.clone()),
            "uart" => {
                let be = uart_backends.remove(&(bus, slot, func));
                let legacy = if opts.get("legacy").is_some_and(|v| v == "true") {
                    // `pci_uart_legacy_res`, in slot order.
                    let res = pci_uart::legacy_res(nlegacy).ok_or_else(|| PciError::Device {
                        bdf: bdf.clone(),
                        why: "uart: no legacy COM resources left".into(),
                    })?;
                    nlegacy += 1;
                    Some(res)
                } else {
                    None
                };
                let (f, port, be) = pci_uart::new(slot, func, irq.clone(), legacy, be)?;
                if let Some(be) = be {
                    ports.push((port, be));
                }
                f
            }
            "virtio-blk" => {
                let err = |why: &str| PciError::Device {
                    bdf: bdf.clone(),
                    why: format!("virtio-blk: {why}"),
                };
                let env = env.as_ref().ok_or_else(|| err("no guest memory"))?;
                let disk = disks
                    .remove(&(bus, slot, func))
                    .ok_or_else(|| err("disk image not opened"))?;
                let ser = opts.get("ser").or_else(|| opts.get("serial"));
                let (f, vs) = pci_virtio_block::new(
                    slot,
                    func,
                    disk,
                    ser.map(String::as_str),
                    env,
                    irq.clone(),
                )?;
                vss.push((slot, func, vs));
                f
            }
            "virtio-net" => {
                let err = |why: String| PciError::Device {
                    bdf: bdf.clone(),
                    why: format!("virtio-net: {why}"),
                };
                let env = env.as_ref().ok_or_else(|| err("no guest memory".into()))?;
                let tap = opts.get("backend").map(String::as_str).unwrap_or_default();
                let be = crate::net_backends::NetBackend::open_tap(tap)
                    .map_err(|e| err(format!("{tap}: {e}")))?;
                let o = crate::pci_virtio_net::NetOpts {
                    mac: opts.get("mac").map(String::as_str),
                    mtu: opts.get("mtu").map(String::as_str),
                    vmname: config.get("name").unwrap_or_default(),
                };
                let (f, vs) = crate::pci_virtio_net::new(slot, func, be, o, env, irq.clone())?;
                vss.push((slot, func, vs));
                f
            }
            _ => continue,
        };
        funcs.push(f);
    }
    // Without a boot ROM bhyve enables decoding itself.
    let enable_bars = match config.get("pci.enable_bars") {
        None => true,
        Some(_) => config.get_bool("pci.enable_bars")?,
    };
    let bus = build_bus(space, funcs, memsize, &irq, enable_bars)?;
    let b = &bus.bus;
    // The MSI capability lives in the function, now on the bus.
    for (slot, func, vs) in vss {
        if let Some(f) = b.function(slot, func) {
            vs.set_function(Arc::downgrade(&f));
        }
    }
    let mech1 = Arc::new(Mutex::new(ConfigMech1::new(b.clone())));
    space
        .inout()
        .register(CONF1_ADDR_PORT, 1, "pci config address", mech1.clone())?;
    space
        .inout()
        .register(CONF1_DATA_PORT, 4, "pci config data", mech1)?;
    space.mem().register(
        PCI_ECAM.start,
        PCI_ECAM.end - PCI_ECAM.start,
        "pci ecam",
        Arc::new(Mutex::new(Ecam::new(PCI_ECAM.start, b.clone()))),
    )?;
    for (port, be) in ports {
        let name = lock(&port).name().to_string();
        pci_lpc::start_reader(port, be, mevent).map_err(|e| PciError::Device {
            bdf: name,
            why: format!("input thread: {e}"),
        })?;
    }
    Ok(bus)
}

/// Pick INTx pins, place BARs, route, enable decoding and put the
/// functions on a bus.
pub(crate) fn build_bus<S: BarSpace + 'static>(
    space: &Arc<S>,
    mut funcs: Vec<PciFunction>,
    memsize: u64,
    irq: &Arc<PciIrq>,
    enable_bars: bool,
) -> Result<Pci, PciError> {
    funcs.sort_by_key(|f| (f.slot, f.func));
    // `pci_lintr_request`: the least-used of INTA–INTD in the slot; a
    // legacy function's is INTA, as every INTx pin was in 2013.
    let mut pin_use: BTreeMap<u8, [u32; 4]> = BTreeMap::new();
    for f in funcs.iter_mut().filter(|f| f.intx.is_some()) {
        if f.legacy_irq.is_some() {
            f.cfg[PCIR_INTPIN] = 1;
            continue;
        }
        let uses = pin_use.entry(f.slot).or_default();
        let best = (0..4).min_by_key(|&p| (uses[p], p)).unwrap_or(0);
        uses[best] += 1;
        f.cfg[PCIR_INTPIN] = best as u8 + 1;
    }
    let [io_window, mmio32, mmio64] = assign_bars(&mut funcs, memsize)?;
    // A legacy function is listed without INTx: its IRQ is an ISA one,
    // not routed through `_PRT` or the MP table's PCI entries.
    let functions: Vec<acpi::PciFunction> = funcs
        .iter()
        .map(|f| acpi::PciFunction {
            slot: f.slot,
            func: f.func,
            intx: f.intx_pin().filter(|_| f.legacy_irq.is_none()),
        })
        .collect();
    let routes = irq.route(&functions)?;
    let weak: Weak<dyn BarSpace> = Arc::downgrade(space) as Weak<dyn BarSpace>;
    let mut slots: Vec<Option<Arc<Mutex<PciFunction>>>> =
        vec![None; usize::from(NSLOTS) * usize::from(NFUNCS)];
    for mut f in funcs {
        if let (Some(pin), Some(i)) = (f.intx_pin(), f.intx.clone()) {
            if let Some(line) = f.legacy_irq {
                // Straight to the ISA IRQ / IO-APIC pin, no link.
                i.set_route(IntxRoute {
                    slot: f.slot,
                    pin,
                    gsi: line,
                    pirq: 0,
                });
                f.cfg[PCIR_INTLINE] = line;
            } else if let Some(r) = routes.iter().find(|r| r.slot == f.slot && r.pin == pin) {
                i.set_route(*r);
                f.cfg[PCIR_INTLINE] = irq.intline(r.pirq);
            }
        }
        if enable_bars {
            f.enable_bars();
        }
        f.sync(&**space);
        let i = PciBus::index(f.slot, f.func);
        if slots[i].is_some() {
            return Err(f.err("listed twice".into()));
        }
        slots[i] = Some(Arc::new(Mutex::new(f)));
    }
    Ok(Pci {
        bus: Arc::new(PciBus {
            funcs: slots,
            space: weak,
        }),
        irq: irq.clone(),
        functions,
        routes,
        io_window,
        mmio32,
        mmio64,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::inout::Unhandled;
    use crate::pci_irq::tests::Lines;
    use crate::uart_emul::{IER_ETXRDY, IIR_TXRDY};

    #[derive(Default)]
    pub(crate) struct Buses {
        pub inout: InoutBus,
        pub mem: MemBus,
        /// Doorbells attached now, by (port, data), as KVM would hold them.
        pub ioevents: Mutex<BTreeMap<(u16, u16), EventFd>>,
    }
    impl BarSpace for Buses {
        fn ioeventfd(&self, port: u16, data: u16, evt: &EventFd, on: bool) -> bool {
            let mut m = self.ioevents.lock().unwrap();
            if on {
                m.insert((port, data), evt.try_clone().unwrap()).is_none()
            } else {
                m.remove(&(port, data)).is_some()
            }
        }
        fn inout(&self) -> &InoutBus {
            &self.inout
        }
        fn mem(&self) -> &MemBus {
            &self.mem
        }
    }

    #[derive(Default)]
    pub(crate) struct Msis(pub Mutex<Vec<(u64, u32)>>);
    impl MsiSender for Msis {
        fn send_msi(&self, addr: u64, data: u32) {
            self.0.lock().unwrap().push((addr, data));
        }
    }

    /// A BAR device that answers its offset.
    struct Echo;
    impl BarDevice for Echo {
        fn bar_read(&mut self, off: u64, data: &mut [u8]) -> bool {
            data.fill(off as u8);
            true
        }
        fn bar_write(&mut self, _off: u64, _data: &[u8]) -> bool {
            true
        }
    }

    fn config(slots: &[&str]) -> Config {
        let mut c = Config::with_defaults();
        for s in slots {
            c.parse_slot(s, false).unwrap();
        }
        c
    }

    fn attach(slots: &[&str]) -> (Arc<Buses>, Pci, Arc<Lines>) {
        let space = Arc::new(Buses::default());
        let lines = Arc::new(Lines::default());
        let pci = attach_pci(
            &space,
            &config(slots),
            &lines.factory(),
            BTreeMap::new(),
            None,
            &crate::mevent::tests::shared(),
        )
        .unwrap();
        (space, pci, lines)
    }

    fn inl(s: &Buses, port: u16, n: usize) -> u32 {
        let mut b = [0u8; 4];
        s.inout.read(port, &mut b[..n]).unwrap();
        u32::from_le_bytes(b)
    }

    fn outl(s: &Buses, port: u16, n: usize, v: u32) {
        s.inout.write(port, &v.to_le_bytes()[..n]).unwrap();
    }

    fn addr(slot: u8, func: u8, reg: u32) -> u32 {
        CONF1_ENABLE | (u32::from(slot) << 11) | (u32::from(func) << 8) | reg
    }

    /// Read through mechanism #1.
    fn cfg(s: &Buses, slot: u8, func: u8, off: u32, n: usize) -> u32 {
        outl(s, CONF1_ADDR_PORT, 4, addr(slot, func, off & !3));
        inl(s, CONF1_DATA_PORT + (off & 3) as u16, n)
    }

    fn cfg_w(s: &Buses, slot: u8, func: u8, off: u32, n: usize, v: u32) {
        outl(s, CONF1_ADDR_PORT, 4, addr(slot, func, off & !3));
        outl(s, CONF1_DATA_PORT + (off & 3) as u16, n, v);
    }

    fn ecam(s: &Buses, bus: u64, slot: u64, func: u64, off: u64, n: usize) -> u32 {
        let mut b = [0u8; 4];
        let a = PCI_ECAM.start + (bus << 20) + (slot << 15) + (func << 12) + off;
        s.mem.read(a, &mut b[..n]).unwrap();
        u32::from_le_bytes(b)
    }

    const MACHINE: &[&str] = &[
        "0,hostbridge",
        "1,lpc",
        "2,uart",
        "2:1,uart",
        "3,amd_hostbridge",
    ];

    #[test]
    fn pci_mech1_latch_widths_and_absent_functions() {
        let (s, _pci, _) = attach(MACHINE);
        outl(&s, CONF1_ADDR_PORT, 4, addr(1, 0, 0x0b));
        assert_eq!(inl(&s, CONF1_ADDR_PORT, 4), addr(1, 0, 8), "low bits clear");
        assert_eq!(inl(&s, CONF1_ADDR_PORT, 2), 0xffff, "dword only");
        assert_eq!(inl(&s, CONF1_ADDR_PORT, 1), 0xff);
        outl(&s, CONF1_ADDR_PORT, 2, 0);
        assert_eq!(
            inl(&s, CONF1_ADDR_PORT, 4),
            addr(1, 0, 8),
            "narrow write ignored"
        );
        // Byte, word and dword reads at every offset of the window.
        assert_eq!(cfg(&s, 1, 0, 0, 4), 0x7000_8086);
        assert_eq!(cfg(&s, 1, 0, 0, 2), 0x8086);
        assert_eq!(cfg(&s, 1, 0, 2, 2), 0x7000);
        assert_eq!(cfg(&s, 1, 0, 3, 1), 0x70);
        assert_eq!(cfg(&s, 1, 0, 0xb, 1), 0x06);
        assert_eq!(cfg(&s, 1, 0, 0xa, 1), 0x01);
        assert_eq!(cfg(&s, 1, 0, 1, 2), 0xffff, "misaligned");
        outl(&s, CONF1_ADDR_PORT, 4, addr(1, 0, 0));
        assert_eq!(inl(&s, CONF1_DATA_PORT + 2, 4), u32::MAX, "dword at 0xCFE");
        // Disabled latch, absent functions and other buses.
        outl(&s, CONF1_ADDR_PORT, 4, addr(1, 0, 0) & !CONF1_ENABLE);
        assert_eq!(inl(&s, CONF1_DATA_PORT, 4), u32::MAX);
        assert_eq!(inl(&s, CONF1_DATA_PORT, 1), 0xff);
        assert_eq!(cfg(&s, 4, 0, 0, 4), u32::MAX);
        assert_eq!(cfg(&s, 0, 1, 0, 2), 0xffff);
        outl(&s, CONF1_ADDR_PORT, 4, addr(1, 0, 0) | (1 << 16));
        assert_eq!(inl(&s, CONF1_DATA_PORT, 4), u32::MAX, "bus 1");
        // 0xCF9 stays free for reset control.
        assert_eq!(s.inout.read(0xcf9, &mut [0u8]), Err(Unhandled::Unclaimed));
        // Multi-function bit on slot 2 only.
        assert_eq!(cfg(&s, 2, 0, 0xe, 1), 0x80);
        assert_eq!(cfg(&s, 2, 1, 0xc, 4) >> 16, 0x80);
        assert_eq!(cfg(&s, 1, 0, 0xe, 1), 0);
    }

    #[test]
    fn pci_ecam_reads_as_mech1() {
        let (s, _pci, _) = attach(MACHINE);
        for slot in 0..5u8 {
            for func in 0..2u8 {
                for off in (0..256u32).step_by(4) {
                    assert_eq!(
                        ecam(&s, 0, slot.into(), func.into(), off.into(), 4),
                        cfg(&s, slot, func, off, 4),
                        "{slot}.{func} {off:#x}"
                    );
                }
                assert_eq!(
                    ecam(&s, 0, slot.into(), func.into(), 6, 2),
                    cfg(&s, slot, func, 6, 2)
                );
            }
        }
        assert_eq!(ecam(&s, 0, 0, 0, 0x100, 4), 0, "empty extended list");
        assert_eq!(ecam(&s, 0, 0, 0, 0x104, 4), u32::MAX);
        assert_eq!(ecam(&s, 0, 0, 0, 0xffc, 4), u32::MAX);
        assert_eq!(ecam(&s, 1, 0, 0, 0, 4), u32::MAX, "bus 1");
        assert_eq!(ecam(&s, 0, 9, 0, 0, 2), 0xffff, "absent");
        // ECAM writes land like mechanism #1 ones.
        let a = PCI_ECAM.start + (2 << 15) + PCIR_INTLINE as u64;
        s.mem.write(a, &[0x42]).unwrap();
        assert_eq!(cfg(&s, 2, 0, PCIR_INTLINE as u32, 1), 0x42);
    }

    #[test]
    fn pci_identities_and_pcie_cap() {
        let (s, _pci, _) = attach(MACHINE);
        assert_eq!(cfg(&s, 0, 0, 0, 4), 0x1275_1275);
        assert_eq!(cfg(&s, 3, 0, 0, 4), 0x7432_1022);
        assert_eq!(cfg(&s, 2, 0, 0, 4), 0x2000_131f);
        assert_eq!(cfg(&s, 0, 0, 8, 4) >> 8, 0x06_0000, "host bridge class");
        assert_eq!(cfg(&s, 1, 0, 8, 4) >> 8, 0x06_0100, "ISA bridge class");
        assert_eq!(cfg(&s, 2, 0, 8, 4) >> 8, 0x07_0000, "simple comm");
        // Host bridge: one capability, PCIe v2 root port, gen1 x1.
        assert_eq!(cfg(&s, 0, 0, 6, 2), u32::from(STATUS_CAPPRESENT));
        assert_eq!(cfg(&s, 0, 0, PCIR_CAP_PTR as u32, 1), 0x40);
        assert_eq!(cfg(&s, 0, 0, 0x40, 4), 0x0042_0010);
        assert_eq!(cfg(&s, 0, 0, 0x40 + 12, 4), 0x411);
        assert_eq!(cfg(&s, 0, 0, 0x40 + 18, 2), 0x11);
        // IDs are read-only; no interrupt, no BARs.
        cfg_w(&s, 0, 0, 0, 4, 0);
        assert_eq!(cfg(&s, 0, 0, 0, 4), 0x1275_1275);
        assert_eq!(cfg(&s, 0, 0, PCIR_INTPIN as u32, 1), 0);
        assert_eq!(cfg(&s, 0, 0, PCIR_INTLINE as u32, 1), 0xff);
        assert_eq!(cfg(&s, 0, 0, PCIR_BAR0 as u32, 4), 0);
        assert_eq!(cfg(&s, 1, 0, PCIR_CAP_PTR as u32, 1), 0, "LPC: no caps");
        let mut o = BTreeMap::new();
        o.insert("vendor".to_string(), "0x1234".to_string());
        o.insert("devid".to_string(), "17".to_string());
        let f = pci_hostbridge::new(0, 0, false, &o).unwrap();
        assert_eq!(f.cfg_read(0, 4), 0x0011_1234);
        o.insert("devid".to_string(), "x".to_string());
        assert_eq!(
            pci_hostbridge::new(0, 0, false, &o)
                .unwrap_err()
                .to_string(),
            "pci 0:0:0: invalid devid \"x\""
        );
    }

    #[test]
    fn pci_lpc_pirq_registers_and_intx_routing() {
        let (s, pci, lines) = attach(MACHINE);
        // Both UARTs in slot 2 get distinct pins: INTA, INTB.
        assert_eq!(cfg(&s, 2, 0, PCIR_INTPIN as u32, 1), 1);
        assert_eq!(cfg(&s, 2, 1, PCIR_INTPIN as u32, 1), 2);
        let want = acpi::route_intx(&pci.functions).unwrap();
        assert_eq!(pci.routes, want);
        assert_eq!(
            pci.routes
                .iter()
                .map(|r| (r.slot, r.pin, r.gsi, r.pirq))
                .collect::<Vec<_>>(),
            [(2, 1, 16, 1), (2, 2, 17, 2)]
        );
        // COM 3/4 and mouse reserved, SCI used: links A, B get 5 and 6.
        assert_eq!(cfg(&s, 1, 0, 0x60, 4), 0x8080_0605);
        assert_eq!(cfg(&s, 1, 0, 0x68, 4), 0x8080_8080);
        assert_eq!(cfg(&s, 2, 0, PCIR_INTLINE as u32, 1), 5);
        assert_eq!(cfg(&s, 2, 1, PCIR_INTLINE as u32, 1), 6);
        assert_eq!(pci.irq.level_irqs(), [5, 6]);
        // UART 2.0 raises its THRE interrupt: GSI 16 and ISA IRQ 5.
        let bar = cfg(&s, 2, 0, PCIR_BAR0 as u32, 4) as u16 & !3;
        lines.take();
        outl(&s, bar + 1, 1, IER_ETXRDY.into());
        assert_eq!(
            lines.take(),
            BTreeMap::from([(5, vec![true]), (16, vec![true])])
        );
        // The guest reroutes link A to IRQ 11 by a byte write.
        cfg_w(&s, 1, 0, 0x60, 1, 11);
        assert_eq!(cfg(&s, 1, 0, 0x60, 1), 11);
        assert_eq!(
            lines.take(),
            BTreeMap::from([(5, vec![false]), (11, vec![true])])
        );
        // INTx disable in the command register holds it pending.
        let cmd = cfg(&s, 2, 0, 4, 2);
        cfg_w(&s, 2, 0, 4, 2, cmd | u32::from(CMD_INTXDIS));
        assert_eq!(
            lines.take(),
            BTreeMap::from([(11, vec![false]), (16, vec![false])])
        );
        cfg_w(&s, 2, 0, 4, 2, cmd);
        assert_eq!(
            lines.take(),
            BTreeMap::from([(11, vec![true]), (16, vec![true])])
        );
        assert_eq!(inl(&s, bar + 2, 1), u32::from(IIR_TXRDY));
        assert_eq!(
            lines.take(),
            BTreeMap::from([(11, vec![false]), (16, vec![false])])
        );
    }

    #[test]
    fn pci_uart_bar_and_decode_enable() {
        let (s, _pci, _) = attach(&["2,uart", "3,uart"]);
        // Equal sizes keep slot order; 8-byte aligned from 0x2000.
        assert_eq!(cfg(&s, 2, 0, PCIR_BAR0 as u32, 4), 0x2001);
        assert_eq!(cfg(&s, 3, 0, PCIR_BAR0 as u32, 4), 0x2009);
        assert_eq!(cfg(&s, 2, 0, 4, 2), u32::from(CMD_BUSMASTEREN | CMD_PORTEN));
        assert_eq!(inl(&s, 0x2005, 1), 0x60, "LSR: THRE|TEMT");
        // I/O decode off: the range is released; on again: back.
        cfg_w(&s, 2, 0, 4, 2, CMD_BUSMASTEREN.into());
        assert_eq!(s.inout.read(0x2005, &mut [0u8]), Err(Unhandled::Unclaimed));
        // Sizing: all ones reads the size mask; then move it.
        cfg_w(&s, 2, 0, PCIR_BAR0 as u32, 4, u32::MAX);
        assert_eq!(cfg(&s, 2, 0, PCIR_BAR0 as u32, 4), 0xfff9);
        cfg_w(&s, 2, 0, PCIR_BAR0 as u32, 2, 0x3000);
        assert_eq!(
            cfg(&s, 2, 0, PCIR_BAR0 as u32, 4),
            0xfff9,
            "word write ignored"
        );
        cfg_w(&s, 2, 0, PCIR_BAR0 as u32, 4, 0x3000);
        cfg_w(&s, 2, 0, 4, 2, (CMD_BUSMASTEREN | CMD_PORTEN).into());
        assert_eq!(inl(&s, 0x3005, 1), 0x60);
        assert_eq!(s.inout.read(0x2005, &mut [0u8]), Err(Unhandled::Unclaimed));
        // Moving it onto the other UART decodes nothing rather than fail.
        cfg_w(&s, 2, 0, PCIR_BAR0 as u32, 4, 0x2008);
        assert_eq!(cfg(&s, 2, 0, PCIR_BAR0 as u32, 4), 0x2009);
        assert_eq!(s.inout.read(0x3005, &mut [0u8]), Err(Unhandled::Unclaimed));
        assert_eq!(inl(&s, 0x200d, 1), 0x60, "slot 3 untouched");
    }

    /// `-s 2,uart -S 31,uart -S 30,uart`: the legacy UARTs take COM1 and
    /// COM2 in slot order.
    fn legacy_config() -> Config {
        let mut c = config(&["2,uart"]);
        c.parse_slot("31,uart", true).unwrap();
        c.parse_slot("30,uart", true).unwrap();
        c
    }

    #[test]
    fn pci_legacy_uart_on_com1_then_com2() {
        let space = Arc::new(Buses::default());
        let lines = Arc::new(Lines::default());
        let pci = attach_pci(
            &space,
            &legacy_config(),
            &lines.factory(),
            BTreeMap::new(),
            None,
            &crate::mevent::tests::shared(),
        )
        .unwrap();
        let s = &*space;
        let (bar0, line, pin) = (PCIR_BAR0 as u32, PCIR_INTLINE as u32, PCIR_INTPIN as u32);
        // The first legacy UART: the PCI UART's identity, BAR0 an I/O BAR
        // at COM1's 0x3f8, decoding, interrupt line 4 on pin INTA.
        assert_eq!(cfg(s, 30, 0, 0, 4), 0x2000_131f);
        assert_eq!(cfg(s, 30, 0, 8, 4) >> 8, 0x07_0000, "simple comm");
        assert_eq!(cfg(s, 30, 0, bar0, 4), 0x3f9);
        assert_eq!(cfg(s, 30, 0, line, 1), 4);
        assert_eq!(cfg(s, 30, 0, pin, 1), 1);
        assert_eq!(cfg(s, 30, 0, 4, 2), u32::from(CMD_BUSMASTEREN | CMD_PORTEN));
        // The second: COM2's 0x2f8 and IRQ 3.
        assert_eq!(cfg(s, 31, 0, 0, 4), 0x2000_131f);
        assert_eq!(cfg(s, 31, 0, bar0, 4), 0x2f9);
        assert_eq!(cfg(s, 31, 0, line, 1), 3);
        assert_eq!(cfg(s, 31, 0, pin, 1), 1);
        // The other UART still comes from the window, which the fixed
        // BARs do not touch; it alone is routed through a link.
        assert_eq!(cfg(s, 2, 0, bar0, 4), 0x2001);
        assert_eq!(pci.io_window, 0x2000..0x2040, "0x2008 + 32, rounded");
        let f = |slot, intx| acpi::PciFunction {
            slot,
            func: 0,
            intx,
        };
        assert_eq!(
            pci.functions,
            [f(2, Some(1)), f(30, None), f(31, None)],
            "listed, without _PRT/MP table INTx entries"
        );
        assert_eq!(pci.routes.iter().map(|r| r.slot).collect::<Vec<_>>(), [2]);
        assert_eq!(cfg(s, 2, 0, line, 1), 5, "COM IRQs reserved");
        // Port 0x3f8 reaches the UART through BAR0; it interrupts on IRQ 4,
        // held while the reason lasts.
        assert_eq!(inl(s, 0x3fd, 1), 0x60, "LSR: THRE|TEMT");
        lines.take();
        outl(s, 0x3f9, 1, IER_ETXRDY.into());
        assert_eq!(lines.take(), BTreeMap::from([(4, vec![true])]));
        assert_eq!(inl(s, 0x3fa, 1), u32::from(IIR_TXRDY));
        assert_eq!(lines.take(), BTreeMap::from([(4, vec![false])]));
        outl(s, 0x2f9, 1, IER_ETXRDY.into());
        assert_eq!(lines.take(), BTreeMap::from([(3, vec![true])]), "COM2");
        // INTx disable holds it, as for any PCI function.
        cfg_w(s, 31, 0, 4, 2, u32::from(CMD_PORTEN | CMD_INTXDIS));
        assert_eq!(lines.take(), BTreeMap::from([(3, vec![false])]));
        cfg_w(s, 31, 0, 4, 2, u32::from(CMD_PORTEN));
        assert_eq!(lines.take(), BTreeMap::from([(3, vec![true])]));
        // Port 0x3f8 is claimed once, by the BAR.
        let isa = Arc::new(Mutex::new(IoWindow {
            base: 0x3f8,
            dev: echo(),
        }));
        assert_eq!(
            s.inout
                .register(0x3f8, 8, "com1", isa)
                .unwrap_err()
                .to_string(),
            "I/O ports 0x3f8-0x3ff (com1) overlap pci 0:30:0 uart bar0"
        );
        // As in bhyve the guest may size and move it, and put it back.
        cfg_w(s, 30, 0, bar0, 4, u32::MAX);
        assert_eq!(cfg(s, 30, 0, bar0, 4), 0xfff9);
        cfg_w(s, 30, 0, bar0, 4, 0x3000);
        assert_eq!(inl(s, 0x3005, 1), 0x60);
        assert_eq!(s.inout.read(0x3fd, &mut [0u8]), Err(Unhandled::Unclaimed));
        cfg_w(s, 30, 0, bar0, 4, 0x3f8);
        assert_eq!(cfg(s, 30, 0, bar0, 4), 0x3f9);
        assert_eq!(inl(s, 0x3fd, 1), 0x60);
        assert_eq!(s.inout.read(0x3005, &mut [0u8]), Err(Unhandled::Unclaimed));
        // Fixed BARs decode from the start even when bhyve leaves
        // decoding to a boot ROM.
        let mut c = legacy_config();
        c.set("pci.enable_bars", "false");
        let space = Arc::new(Buses::default());
        attach_pci(
            &space,
            &c,
            &lines.factory(),
            BTreeMap::new(),
            None,
            &crate::mevent::tests::shared(),
        )
        .unwrap();
        assert_eq!(
            cfg(&space, 30, 0, 4, 2),
            u32::from(CMD_BUSMASTEREN | CMD_PORTEN)
        );
        assert_eq!(cfg(&space, 2, 0, 4, 2), u32::from(CMD_BUSMASTEREN));
        assert_eq!(inl(&space, 0x2fd, 1), 0x60);
        // A third has no resources left.
        let mut c = legacy_config();
        c.parse_slot("29,uart", true).unwrap();
        let e = attach_pci(
            &Arc::new(Buses::default()),
            &c,
            &lines.factory(),
            BTreeMap::new(),
            None,
            &crate::mevent::tests::shared(),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "pci 0:31:0: uart: no legacy COM resources left"
        );
    }

    fn echo() -> SharedBar {
        Arc::new(Mutex::new(Echo))
    }

    #[test]
    fn pci_bar_placement_windows_and_alignment() {
        let space = Arc::new(Buses::default());
        let lines = Arc::new(Lines::default());
        let irq = Arc::new(PciIrq::new(&lines.factory()));
        let mut a = PciFunction::new(4, 0, "t", (1, 2), (0xff, 0, 0), Box::new(Plain));
        a.add_bar(0, BarKind::Io, 3, echo()).unwrap();
        a.add_bar(1, BarKind::Mem32, 0x3000, echo()).unwrap();
        a.add_bar(2, BarKind::Mem64, 256 << 20, echo()).unwrap();
        assert!(a.add_bar(3, BarKind::Io, 4, echo()).is_err(), "upper half");
        assert!(
            a.add_bar(5, BarKind::Mem64, 16, echo()).is_err(),
            "no room for the upper half"
        );
        let mut b = PciFunction::new(5, 0, "t", (1, 2), (0xff, 0, 0), Box::new(Plain));
        b.add_bar(0, BarKind::Mem32, 1, echo()).unwrap();
        b.add_bar(1, BarKind::Mem64, 1 << 20, echo()).unwrap();
        b.add_bar(4, BarKind::Io, 0x100, echo()).unwrap();
        let memsize = 4 * GIB;
        let pci = build_bus(&space, vec![b, a], memsize, &irq, true).unwrap();
        let f = |s: u8| pci.bus.function(s, 0).unwrap();
        let rd = |s: u8, o: usize| lock(&f(s)).cfg_read(o, 4);
        // 64 GiB: the first 32 GiB boundary above 4 GiB + 1 GiB high RAM.
        let base64 = 32 * GIB;
        assert_eq!(rd(4, 0x18), 0x4, "large 64-bit BAR: 64-bit window");
        assert_eq!(rd(4, 0x1c), (base64 >> 32) as u32);
        // Largest first: b's 1 MiB 64-bit BAR, a's 0x4000, b's 16 bytes.
        assert_eq!(rd(5, 0x14), 0xc000_0004, "small 64-bit BAR below 4 GiB");
        assert_eq!(rd(5, 0x18), 0);
        assert_eq!(rd(4, 0x14), 0xc010_0000, "0x3000 rounded to 0x4000");
        assert_eq!(rd(5, 0x10), 0xc010_4000, "minimum 16 bytes");
        assert_eq!(rd(5, 0x20), 0x2001, "0x100-aligned I/O");
        assert_eq!(rd(4, 0x10), 0x2101, "minimum 4 bytes");
        assert_eq!(pci.io_window, 0x2000..0x2140, "+32, rounded to 32");
        assert_eq!(pci.mmio32, 0xc000_0000..0xc030_0000);
        assert_eq!(pci.mmio64, base64..base64 + GIB);
        // Decoding is on and claims the ranges.
        let mut d = [0u8; 4];
        space.mem.read(0xc010_4004, &mut d).unwrap();
        assert_eq!(d, [4; 4], "BAR-relative offset");
        space.mem.read(base64 + 0x10, &mut d).unwrap();
        assert_eq!(d, [0x10; 4]);
        // Sizing the 64-bit BAR, both halves.
        let s: &Buses = &space;
        let fa = f(4);
        lock(&fa).cfg_write(s, 4, 2, u32::from(CMD_BUSMASTEREN));
        assert!(
            space.mem.read(base64, &mut d).is_none(),
            "memory decode off"
        );
        lock(&fa).cfg_write(s, 0x18, 4, u32::MAX);
        lock(&fa).cfg_write(s, 0x1c, 4, u32::MAX);
        assert_eq!((rd(4, 0x18), rd(4, 0x1c)), (0xf000_0004, u32::MAX));
        lock(&fa).cfg_write(s, 0x18, 4, 0x1000_0000);
        lock(&fa).cfg_write(s, 0x1c, 4, 0x10);
        lock(&fa).cfg_write(s, 4, 2, u32::from(CMD_BUSMASTEREN | CMD_MEMEN));
        space.mem.read(0x10_1000_0008, &mut d).unwrap();
        assert_eq!(d, [8; 4]);
        // The status register is read-only; command bits 0-6, 8-10 only.
        lock(&fa).cfg_write(s, 4, 4, u32::MAX);
        assert_eq!(rd(4, 4), 0x077f);
        // Too much: the window runs out.
        let mut big = PciFunction::new(6, 0, "t", (1, 2), (0xff, 0, 0), Box::new(Plain));
        big.add_bar(0, BarKind::Mem32, 1 << 30, echo()).unwrap();
        let e = build_bus(&Arc::new(Buses::default()), vec![big], memsize, &irq, true).unwrap_err();
        assert_eq!(
            e.to_string(),
            "pci 0:6:0: no room for BAR0 (0x40000000 bytes) in the MMIO32 window"
        );
    }

    #[test]
    fn pci_msi_and_msix_capabilities() {
        let space = Arc::new(Buses::default());
        let lines = Arc::new(Lines::default());
        let irq = Arc::new(PciIrq::new(&lines.factory()));
        let msis = Arc::new(Msis::default());
        let mut f = PciFunction::new(3, 0, "t", (1, 2), (0xff, 0, 0), Box::new(Plain));
        let intx = f.request_intx(irq.clone());
        f.add_pciecap(0).unwrap();
        f.add_msi(4).unwrap();
        let msix = f.add_msix(3, 1, msis.clone()).unwrap();
        assert!(f.add_msi(3).is_err());
        let pci = build_bus(&space, vec![f], GIB, &irq, true).unwrap();
        let func = pci.bus.function(3, 0).unwrap();
        let rd = |o: usize, n: usize| pci.bus.cfg_read(0, 3, 0, o, n);
        let wr = |o: usize, n: usize, v: u32| pci.bus.cfg_write(0, 3, 0, o, n, v);
        // Walk the list.
        let mut caps = Vec::new();
        let mut p = rd(PCIR_CAP_PTR, 1) as usize;
        while p != 0 {
            caps.push((p, rd(p, 1) as u8));
            p = rd(p + 1, 1) as usize;
        }
        assert_eq!(
            caps,
            [(0x40, PCIY_EXPRESS), (0x7c, PCIY_MSI), (0x8c, PCIY_MSIX)]
        );
        assert_eq!(rd(0x40 + 2, 2), 0x92, "integrated endpoint on bus 0");
        // MSI: 64-bit, 4 messages capable, only enable/MME writable.
        let msi = 0x7c;
        assert_eq!(rd(msi + 2, 2), 0x84);
        wr(msi, 4, 0xffff_ffff);
        assert_eq!(rd(msi, 4), 0x00f5_8c05, "id/next kept, 64BIT|MMC kept");
        wr(msi + 4, 4, 0xfee0_1003);
        wr(msi + 8, 4, 0x1);
        wr(msi + 12, 2, 0x4041);
        assert_eq!(rd(msi + 4, 4), 0xfee0_1000, "dword-aligned address");
        let m = |v| lock(&func).msi_message(v);
        assert_eq!(m(0), Some((0x1_fee0_1000, 0x4041)));
        assert_eq!(m(7), Some((0x1_fee0_1000, 0x4048)), "MME 7 allows 128");
        wr(msi + 2, 2, 0x11);
        assert_eq!(m(1), Some((0x1_fee0_1000, 0x4042)));
        assert_eq!(m(2), None, "two messages enabled");
        // MSI enabled holds INTx pending.
        crate::bus::IrqLine::assert(&*intx);
        assert!(lines.take().is_empty());
        wr(msi + 2, 2, 0);
        assert_eq!(m(0), None);
        assert!(!lines.take().is_empty(), "INTx again");
        // MSI-X: 3 vectors, table at BAR1 offset 0, PBA at 4 KiB.
        let x = 0x8c;
        assert_eq!(rd(x + 2, 2), 2);
        assert_eq!(rd(x + 4, 4), 1);
        assert_eq!(rd(x + 8, 4), 0x1001);
        let bar = u64::from(rd(0x14, 4));
        assert_eq!(bar, 0xc000_0000, "8 KiB MEM32 BAR");
        let rdm = |o: u64, n: usize| {
            let mut b = [0u8; 8];
            space.mem.read(bar + o, &mut b[..n]).unwrap();
            u64::from_le_bytes(b)
        };
        let wrm =
            |o: u64, n: usize, v: u64| space.mem.write(bar + o, &v.to_le_bytes()[..n]).unwrap();
        assert_eq!(rdm(12, 4), 1, "entries start masked");
        assert_eq!(rdm(12, 1), 1);
        assert_eq!(rdm(13, 2), 0xffff, "2-byte reads refused");
        wrm(16, 8, 0xfee0_0000);
        wrm(24, 4, 0x31);
        assert_eq!(rdm(16, 8), 0xfee0_0000);
        wr(x + 2, 2, 0xffff);
        assert_eq!(rd(x + 2, 2), 0xc002, "enable and function mask only");
        lock(&msix).notify(1);
        assert_eq!(rdm(0x1000, 8), 0b10, "function mask: pending");
        wr(x + 2, 2, 0x8000);
        assert_eq!(rdm(0x1000, 8), 0b10, "vector still masked");
        wrm(28, 4, 0xffff_fffe);
        assert_eq!(rdm(28, 4), 0, "only the mask bit is defined");
        assert_eq!(
            *msis.0.lock().unwrap(),
            [(0xfee0_0000, 0x31)],
            "delivered on unmask"
        );
        assert_eq!(rdm(0x1000, 8), 0);
        lock(&msix).notify(1);
        lock(&msix).notify(9);
        assert_eq!(msis.0.lock().unwrap().len(), 2, "out of range ignored");
        wrm(0x1000, 8, 0xff);
        assert_eq!(rdm(0x1000, 8), 0, "PBA read-only");
        // MSI on as well: MSI-X off, messages dropped.
        wr(msi + 2, 2, 1);
        lock(&msix).notify(1);
        assert_eq!(msis.0.lock().unwrap().len(), 2);
        assert!(!lock(&msix).enabled());
    }
}
