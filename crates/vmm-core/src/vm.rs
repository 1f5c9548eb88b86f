//! The run loop over KVM: build a KVM VM from an instance, create vCPUs from
//! their saved state and run them, returning bhyve-style exits
//! (`VM_EXITCODE_INOUT`, `_MMIO`, `_SUSPENDED`, ...).  An IN or MMIO read is
//! completed on the next entry, as in propolis' `VmEntry`.
//!
//! Interrupt controllers: KVM's in-kernel LAPIC, IO-APIC (24 pins), PIC and
//! PIT.  bhyve's IO-APIC has 32 pins; PCI INTx is routed to pins 16–23 and
//! HPET to 20–23 instead, which fit (bhyve-platform.md §6.1).
//!
//! Kicking vCPUs: a vCPU blocked in KVM_RUN (HLT is handled in the kernel) is
//! interrupted with a real-time signal that is blocked everywhere except
//! inside KVM_RUN (KVM_SET_SIGNAL_MASK), so a kick can never be lost between
//! checking for work and entering the guest.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use kvm_bindings::{
    CpuId, KVM_CAP_X86_USER_SPACE_MSR, KVM_INTERNAL_ERROR_EMULATION,
    KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES, KVM_MAX_CPUID_ENTRIES,
    KVM_MP_STATE_HALTED, KVM_MP_STATE_INIT_RECEIVED, KVM_MP_STATE_UNINITIALIZED,
    KVM_MSR_EXIT_REASON_UNKNOWN, KVM_PIT_SPEAKER_DUMMY, Msrs, kvm_cpuid_entry2, kvm_dtable,
    kvm_enable_cap, kvm_fpu, kvm_msi, kvm_msr_entry, kvm_pit_config, kvm_regs, kvm_segment,
    kvm_sregs, kvm_userspace_memory_region,
};
use kvm_ioctls::{IoEventAddress, Kvm, VcpuExit, VcpuFd, VmFd};
use serde::{Deserialize, Serialize};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::cpuid::{CpuidOpts, bhyve_cpuid};
use crate::error::{Error, Result};
use crate::inst_emul::{self, CpuCtx, Insn, Outcome};
use crate::instance::{Instance, VM_MAXCPU};
use crate::mem::MemLayout;
use crate::vcpu_state::{SegDesc, Segment, VcpuState, msr};

/// Why a VM stopped (`enum vm_suspend_how`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Suspend {
    Reset,
    Poweroff,
    Halt,
    Triplefault,
    /// The instance is being destroyed (bhyvectl --destroy while running).
    Destroy,
}

impl Suspend {
    fn code(self) -> u32 {
        self as u32 + 1
    }
    fn from_code(c: u32) -> Option<Suspend> {
        Some(match c {
            1 => Suspend::Reset,
            2 => Suspend::Poweroff,
            3 => Suspend::Halt,
            4 => Suspend::Triplefault,
            5 => Suspend::Destroy,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Suspend::Reset => "reset",
            Suspend::Poweroff => "poweroff",
            Suspend::Halt => "halt",
            Suspend::Triplefault => "triplefault",
            Suspend::Destroy => "destroyed",
        }
    }
}

/// What the caller tells the vCPU on entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmEntry {
    Run,
    /// The value of the IN that caused the last exit.
    InComplete(u32),
    /// The value of the MMIO read that caused the last exit.
    MmioReadComplete(u64),
}

/// A bhyve-style exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// Port I/O: `value` holds the OUT data; an IN is answered with
    /// [`VmEntry::InComplete`].
    Inout {
        port: u16,
        bytes: u8,
        out: bool,
        value: u32,
    },
    /// MMIO: a read is answered with [`VmEntry::MmioReadComplete`].
    Mmio {
        gpa: u64,
        bytes: u8,
        write: bool,
        value: u64,
    },
    /// The VM is suspended; every vCPU sees this once.
    Suspended(Suspend),
    /// KVM could not emulate an instruction and [`inst_emul`] does not
    /// complete it: `insn` holds the bytes KVM fetched at `rip` (empty if
    /// it reported none), `why` says what is missing when the instruction
    /// is known.
    ///
    /// [`inst_emul`]: crate::inst_emul
    InstEmulFail {
        rip: u64,
        insn: Vec<u8>,
        why: Option<&'static str>,
    },
    /// Anything else KVM reported that we do not handle.
    Unhandled(String),
}

/// Per-vCPU counters (bhyvectl --get-stats).
pub const STAT_NAMES: [&str; 11] = [
    "total number of vm exits",
    "number of vm exits due to inout",
    "number of vm exits due to mmio",
    "number of times vcpu was kicked",
    // Every emulation failure KVM reported, completed here or not.
    "number of instruction emulation failures",
    "number of NMIs injected",
    "number of fwait instructions completed",
    "number of clac instructions completed",
    "number of stac instructions completed",
    "number of exceptions raised by completed instructions",
    "number of int3 instructions completed",
];
const STAT_TOTAL: usize = 0;
const STAT_INOUT: usize = 1;
const STAT_MMIO: usize = 2;
const STAT_KICK: usize = 3;
const STAT_EMUL: usize = 4;
const STAT_NMI: usize = 5;
const STAT_FWAIT: usize = 6;
const STAT_CLAC: usize = 7;
const STAT_STAC: usize = 8;
const STAT_EMUL_EXC: usize = 9;
const STAT_INT3: usize = 10;

fn insn_stat(i: Insn) -> usize {
    match i {
        Insn::Fwait => STAT_FWAIT,
        Insn::Clac => STAT_CLAC,
        Insn::Stac => STAT_STAC,
        Insn::Int3 => STAT_INT3,
    }
}

#[derive(Debug, Default)]
struct VcpuShared {
    /// pthread of the thread running this vCPU (0 until it runs).
    thread: AtomicU64,
    want_snapshot: AtomicBool,
    snapshot: Mutex<Option<VcpuState>>,
    snapshot_cv: Condvar,
    nmi: AtomicBool,
    /// Halted with IF=0 (or never started), as last seen.
    idle_for_good: AtomicBool,
    stats: [AtomicU64; STAT_NAMES.len()],
}

#[derive(Debug)]
struct VmShared {
    suspend: AtomicU32,
    vcpus: Vec<VcpuShared>,
    ncpus: usize,
}

/// What the VM is built with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmConfig {
    pub ncpus: usize,
    pub cpuid: CpuidOpts,
    /// bhyve -w (`x86.strictmsr=false`): an MSR KVM does not know reads as
    /// 0 and ignores writes instead of raising #GP (KVM's, and bhyve's,
    /// default).
    pub lenient_msr: bool,
}

/// A running VM: the KVM VM of an instance in this process.
/// Give KVM every region of `mem`, one slot each.
///
/// # Safety
/// `mem` must stay mapped for as long as the KVM VM `fd` exists.
pub(crate) unsafe fn map_memory(
    fd: &VmFd,
    mem: &GuestMemoryMmap,
    what: &'static str,
) -> Result<()> {
    for (slot, region) in mem.iter().enumerate() {
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
        };
        // SAFETY: the region is a live mapping owned by `mem`, which the
        // caller keeps mapped while the VM exists.
        unsafe { fd.set_user_memory_region(r) }.map_err(kvm_err(what))?;
    }
    Ok(())
}

#[derive(Debug)]
pub struct Vm {
    name: String,
    fd: VmFd,
    mem: GuestMemoryMmap,
    layout: MemLayout,
    supported_cpuid: CpuId,
    cfg: VmConfig,
    shared: Arc<VmShared>,
}

/// A cheap handle for threads that stop, kick or inspect a VM.
#[derive(Debug, Clone)]
pub struct VmHandle {
    shared: Arc<VmShared>,
}

/// One vCPU, owned by the thread that runs it.
#[derive(Debug)]
pub struct Vcpu {
    id: usize,
    fd: VcpuFd,
    shared: Arc<VmShared>,
    /// The last exit was an IN (offset, size in kvm_run) or MMIO read.
    pending_in: Option<(usize, usize)>,
    pending_mmio: Option<usize>,
    signal_mask_set: bool,
    run_size: usize,
}

fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN() + 1
}

/// Consume kick signals that are still pending. KVM_RUN returns EINTR with
/// the kick pending but, once back in user space, blocked again by the
/// thread's mask: left there it would end every later KVM_RUN at once (as
/// QEMU's `kvm_eat_signals` explains).
fn eat_kicks() {
    // SAFETY: signal-set calls on a local, initialised set; sigtimedwait
    // with a zero timeout only dequeues signals of that set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, kick_signal());
        let zero = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        while libc::sigtimedwait(&set, std::ptr::null_mut(), &zero) > 0 {}
    }
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

pub(crate) fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |source| Error::Kvm { what, source }
}

const EFER_LMA: u64 = 1 << 10;

/// KVM_SET_SIGNAL_MASK = _IOW(KVMIO, 0x8b, struct kvm_signal_mask).
const KVM_SET_SIGNAL_MASK: libc::c_ulong = 0x4004_ae8b;

impl Vm {
    /// Build the KVM VM for `inst`: irqchip, PIT, its memory, CPUID policy.
    pub fn create(inst: &Instance, cfg: VmConfig) -> Result<Vm> {
        if cfg.ncpus == 0 || cfg.ncpus > VM_MAXCPU {
            return Err(Error::BadVcpu {
                vcpu: cfg.ncpus,
                max: VM_MAXCPU,
            });
        }
        let (layout, mem) = inst.map_memory()?;
        let kvm = Kvm::new().map_err(Error::NoKvm)?;
        let fd = kvm.create_vm().map_err(kvm_err("creating VM"))?;
        // Both just below the 4 GiB boundary, out of bhyve's MMIO ranges.
        fd.set_tss_address(0xfffb_d000)
            .map_err(kvm_err("setting TSS address"))?;
        fd.set_identity_map_address(0xfffb_c000)
            .map_err(kvm_err("setting identity map address"))?;
        fd.create_irq_chip().map_err(kvm_err("creating irqchip"))?;
        if cfg.lenient_msr {
            // Unknown MSRs come to user space (answered in Vcpu::run).
            let mut cap = kvm_enable_cap {
                cap: KVM_CAP_X86_USER_SPACE_MSR,
                ..Default::default()
            };
            cap.args[0] = u64::from(KVM_MSR_EXIT_REASON_UNKNOWN);
            fd.enable_cap(&cap)
                .map_err(kvm_err("forwarding unknown MSRs (-w)"))?;
        }
        fd.create_pit2(kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        })
        .map_err(kvm_err("creating PIT"))?;
        // SAFETY: the Vm keeps `mem` for as long as the KVM VM exists.
        unsafe { map_memory(&fd, &mem, "mapping memory")? };
        let supported_cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("reading supported CPUID"))?;
        vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick).map_err(|e| {
            Error::io(
                inst.name(),
                "installing vCPU kick handler",
                std::io::Error::from_raw_os_error(e.errno()),
            )
        })?;
        let shared = Arc::new(VmShared {
            suspend: AtomicU32::new(0),
            vcpus: (0..cfg.ncpus).map(|_| VcpuShared::default()).collect(),
            ncpus: cfg.ncpus,
        });
        Ok(Vm {
            name: inst.name().to_string(),
            fd,
            mem,
            layout,
            supported_cpuid,
            cfg,
            shared,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }
    pub fn layout(&self) -> MemLayout {
        self.layout
    }
    pub fn ncpus(&self) -> usize {
        self.cfg.ncpus
    }
    pub fn handle(&self) -> VmHandle {
        VmHandle {
            shared: self.shared.clone(),
        }
    }

    /// The CPUID table given to KVM for vCPU `id`.
    fn cpuid_table(&self, id: usize) -> Vec<kvm_cpuid_entry2> {
        bhyve_cpuid(self.supported_cpuid.as_slice(), id as u32, self.cfg.cpuid)
    }

    /// One leaf of vCPU `id`'s CPUID table as `[eax, ebx, ecx, edx]`: what
    /// bhyve gives KVM_SET_CPUID2.  This host's KVM answers leaves 1 and 7
    /// (in the guest and in KVM_GET_CPUID2) with the host's bits instead.
    pub fn cpuid_leaf(&self, id: usize, function: u32, index: u32) -> Option<[u32; 4]> {
        self.cpuid_table(id)
            .iter()
            .find(|e| e.function == function && e.index == index)
            .map(|e| [e.eax, e.ebx, e.ecx, e.edx])
    }

    /// Create vCPU `id`.  `state` is loaded into it; APs normally get `None`
    /// and wait for INIT/SIPI from the BSP as on real hardware.
    pub fn create_vcpu(&self, id: usize, state: Option<&VcpuState>) -> Result<Vcpu> {
        if id >= self.cfg.ncpus {
            return Err(Error::BadVcpu {
                vcpu: id,
                max: self.cfg.ncpus,
            });
        }
        let fd = self
            .fd
            .create_vcpu(id as u64)
            .map_err(kvm_err("creating vCPU"))?;
        let cpuid = CpuId::from_entries(&self.cpuid_table(id)).map_err(|_| Error::Kvm {
            what: "building CPUID",
            source: kvm_ioctls::Error::new(libc::E2BIG),
        })?;
        fd.set_cpuid2(&cpuid).map_err(kvm_err("setting CPUID"))?;
        let fpu = kvm_fpu {
            fcw: 0x37f,
            mxcsr: 0x1f80,
            ..Default::default()
        };
        fd.set_fpu(&fpu).map_err(kvm_err("setting FPU"))?;
        if self.cfg.cpuid.x2apic {
            // bhyve -x: the local APIC comes out of reset in x2APIC mode
            // (APIC_BASE: enabled, EXTD, BSP flag on vCPU 0).
            let bsp = if id == 0 { 1 << 8 } else { 0 };
            let base = kvm_msr_entry {
                index: msr::APIC_BASE,
                data: 0xfee0_0000 | (1 << 11) | (1 << 10) | bsp,
                ..Default::default()
            };
            let msrs = Msrs::from_entries(&[base]).map_err(|_| Error::Kvm {
                what: "building MSR list",
                source: kvm_ioctls::Error::new(libc::E2BIG),
            })?;
            if fd.set_msrs(&msrs).map_err(kvm_err("setting APIC_BASE"))? != 1 {
                return Err(Error::Kvm {
                    what: "putting the local APIC in x2APIC mode (-x)",
                    source: kvm_ioctls::Error::new(libc::EINVAL),
                });
            }
        }
        let vcpu = Vcpu {
            id,
            fd,
            shared: self.shared.clone(),
            pending_in: None,
            pending_mmio: None,
            signal_mask_set: false,
            run_size: self.fd.run_size(),
        };
        if let Some(s) = state {
            vcpu.set_state(s)?;
        }
        Ok(vcpu)
    }

    /// `vm_suspend`.
    pub fn suspend(&self, how: Suspend) {
        self.handle().suspend(how)
    }

    /// Send an MSI (addr/data as the guest programmed them).
    pub fn send_msi(&self, addr: u64, data: u32) -> Result<()> {
        let msi = kvm_msi {
            address_lo: addr as u32,
            address_hi: (addr >> 32) as u32,
            data,
            ..Default::default()
        };
        self.fd.signal_msi(msi).map_err(kvm_err("sending MSI"))?;
        Ok(())
    }

    /// Attach `evt` to 2-byte guest writes of `datamatch` to `port`, or
    /// detach it (KVM_IOEVENTFD): such a write then signals `evt` inside
    /// KVM and the vCPU goes straight back to the guest instead of exiting
    /// to us. Used for virtio queue notifications.
    pub fn ioeventfd(&self, port: u16, datamatch: u16, evt: &EventFd, attach: bool) -> Result<()> {
        let addr = IoEventAddress::Pio(port.into());
        if attach {
            self.fd
                .register_ioevent(evt, &addr, datamatch)
                .map_err(kvm_err("attaching an ioeventfd"))
        } else {
            self.fd
                .unregister_ioevent(evt, &addr, datamatch)
                .map_err(kvm_err("detaching an ioeventfd"))
        }
    }

    /// Set the level of an IO-APIC pin / ISA IRQ (KVM routes GSI 0–15 to both
    /// PIC and IO-APIC).
    pub fn set_irq_line(&self, gsi: u32, level: bool) -> Result<()> {
        self.fd
            .set_irq_line(gsi, level)
            .map_err(kvm_err("setting IRQ line"))
    }
}

impl VmHandle {
    /// The suspend reason, once the VM is suspended.
    pub fn suspended(&self) -> Option<Suspend> {
        Suspend::from_code(self.shared.suspend.load(Ordering::SeqCst))
    }

    /// `vm_suspend`: the first reason wins; every vCPU is kicked out.
    pub fn suspend(&self, how: Suspend) {
        let _ =
            self.shared
                .suspend
                .compare_exchange(0, how.code(), Ordering::SeqCst, Ordering::SeqCst);
        self.kick_all();
    }

    pub fn kick(&self, vcpu: usize) {
        if let Some(v) = self.shared.vcpus.get(vcpu) {
            let t = v.thread.load(Ordering::SeqCst);
            if t != 0 {
                // SAFETY: `t` is the pthread of a vCPU thread, registered by
                // that thread itself; the VM outlives its vCPU threads.
                unsafe { libc::pthread_kill(t as libc::pthread_t, kick_signal()) };
            }
        }
    }

    pub fn kick_all(&self) {
        for i in 0..self.shared.vcpus.len() {
            self.kick(i);
        }
    }

    /// Queue an NMI for `vcpu`.
    pub fn inject_nmi(&self, vcpu: usize) -> bool {
        let Some(v) = self.shared.vcpus.get(vcpu) else {
            return false;
        };
        v.nmi.store(true, Ordering::SeqCst);
        self.kick(vcpu);
        true
    }

    /// Live state of every vCPU that is running (None for one that did not
    /// answer in time).
    pub fn snapshot(&self) -> Vec<Option<VcpuState>> {
        let mut out = Vec::new();
        for (i, v) in self.shared.vcpus.iter().enumerate() {
            *v.snapshot.lock().unwrap_or_else(|e| e.into_inner()) = None;
            v.want_snapshot.store(true, Ordering::SeqCst);
            self.kick(i);
            let g = v.snapshot.lock().unwrap_or_else(|e| e.into_inner());
            let (g, _) = v
                .snapshot_cv
                .wait_timeout_while(g, Duration::from_secs(2), |s| s.is_none())
                .unwrap_or_else(|e| e.into_inner());
            out.push(g.clone());
        }
        out
    }

    pub fn stats(&self) -> Vec<Vec<(String, u64)>> {
        self.shared
            .vcpus
            .iter()
            .map(|v| {
                STAT_NAMES
                    .iter()
                    .zip(v.stats.iter())
                    .map(|(n, s)| (n.to_string(), s.load(Ordering::Relaxed)))
                    .collect()
            })
            .collect()
    }

    /// Halt detection (bhyve's `vm_handle_hlt`): a vCPU halted with
    /// interrupts disabled blocks in KVM forever, so a watcher kicks vCPUs
    /// now and then; each checks itself, and when every vCPU is halted for
    /// good the VM suspends with `Halt`.  Runs until the VM is suspended.
    pub fn spawn_halt_watcher(&self, period: Duration) -> std::io::Result<()> {
        let h = self.clone();
        std::thread::Builder::new()
            .name("halt-watch".into())
            .spawn(move || {
                while h.suspended().is_none() {
                    std::thread::sleep(period);
                    h.kick_all();
                }
            })?;
        Ok(())
    }
}

fn to_kvm_seg(s: &Segment) -> kvm_segment {
    let a = s.desc.access;
    kvm_segment {
        base: s.desc.base,
        limit: s.desc.limit,
        selector: s.sel,
        type_: (a & 0xf) as u8,
        present: ((a >> 7) & 1) as u8,
        dpl: ((a >> 5) & 3) as u8,
        db: ((a >> 14) & 1) as u8,
        s: ((a >> 4) & 1) as u8,
        l: ((a >> 13) & 1) as u8,
        g: ((a >> 15) & 1) as u8,
        avl: ((a >> 12) & 1) as u8,
        unusable: ((a >> 16) & 1) as u8,
        padding: 0,
    }
}

fn from_kvm_seg(k: &kvm_segment) -> Segment {
    let access = u32::from(k.type_ & 0xf)
        | u32::from(k.s & 1) << 4
        | u32::from(k.dpl & 3) << 5
        | u32::from(k.present & 1) << 7
        | u32::from(k.avl & 1) << 12
        | u32::from(k.l & 1) << 13
        | u32::from(k.db & 1) << 14
        | u32::from(k.g & 1) << 15
        | u32::from(k.unusable & 1) << 16;
    Segment {
        sel: k.selector,
        desc: SegDesc {
            base: k.base,
            limit: k.limit,
            access,
        },
    }
}

/// Load a vCPU state into KVM (also used by the host probe).
pub(crate) fn load_state(fd: &VcpuFd, s: &VcpuState) -> Result<()> {
    let g = &s.gprs;
    let regs = kvm_regs {
        rax: g[0],
        rbx: g[1],
        rcx: g[2],
        rdx: g[3],
        rsi: g[4],
        rdi: g[5],
        rbp: g[6],
        rsp: g[7],
        r8: g[8],
        r9: g[9],
        r10: g[10],
        r11: g[11],
        r12: g[12],
        r13: g[13],
        r14: g[14],
        r15: g[15],
        rip: s.rip,
        rflags: s.rflags,
    };
    let mut sregs: kvm_sregs = fd.get_sregs().map_err(kvm_err("reading sregs"))?;
    sregs.cs = to_kvm_seg(&s.cs);
    sregs.ds = to_kvm_seg(&s.ds);
    sregs.es = to_kvm_seg(&s.es);
    sregs.fs = to_kvm_seg(&s.fs);
    sregs.gs = to_kvm_seg(&s.gs);
    sregs.ss = to_kvm_seg(&s.ss);
    sregs.tr = to_kvm_seg(&s.tr);
    sregs.ldt = to_kvm_seg(&s.ldtr);
    sregs.gdt = kvm_dtable {
        base: s.gdtr.base,
        limit: s.gdtr.limit as u16,
        padding: [0; 3],
    };
    sregs.idt = kvm_dtable {
        base: s.idtr.base,
        limit: s.idtr.limit as u16,
        padding: [0; 3],
    };
    sregs.cr0 = s.cr0;
    sregs.cr2 = s.cr2;
    sregs.cr3 = s.cr3;
    sregs.cr4 = s.cr4;
    sregs.efer = s.efer;
    fd.set_sregs(&sregs).map_err(kvm_err("setting sregs"))?;
    fd.set_regs(&regs).map_err(kvm_err("setting registers"))?;
    let entries: Vec<kvm_msr_entry> = s
        .msrs
        .iter()
        .filter(|(i, _)| msr::SAVED.contains(i))
        .map(|(&index, &data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs = Msrs::from_entries(&entries).map_err(|_| Error::Kvm {
        what: "building MSR list",
        source: kvm_ioctls::Error::new(libc::E2BIG),
    })?;
    let n = fd.set_msrs(&msrs).map_err(kvm_err("setting MSRs"))?;
    if n != entries.len() {
        return Err(Error::Kvm {
            what: "setting MSRs (KVM refused one)",
            source: kvm_ioctls::Error::new(libc::EINVAL),
        });
    }
    let mut dregs = fd.get_debug_regs().map_err(kvm_err("reading debug regs"))?;
    dregs.db = [s.dr[0], s.dr[1], s.dr[2], s.dr[3]];
    dregs.dr6 = s.dr[4];
    dregs.dr7 = s.dr[5];
    fd.set_debug_regs(&dregs)
        .map_err(kvm_err("setting debug regs"))?;
    Ok(())
}

impl Vcpu {
    pub fn id(&self) -> usize {
        self.id
    }

    fn stat(&self, i: usize) {
        self.shared.vcpus[self.id].stats[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Load a saved state into KVM.
    pub fn set_state(&self, s: &VcpuState) -> Result<()> {
        load_state(&self.fd, s)
    }

    /// Read the vCPU's state out of KVM.
    pub fn get_state(&self) -> Result<VcpuState> {
        let r = self.fd.get_regs().map_err(kvm_err("reading registers"))?;
        let sr = self.fd.get_sregs().map_err(kvm_err("reading sregs"))?;
        let mut msrs = Msrs::from_entries(
            &msr::SAVED
                .iter()
                .map(|&index| kvm_msr_entry {
                    index,
                    ..Default::default()
                })
                .collect::<Vec<_>>(),
        )
        .map_err(|_| Error::Kvm {
            what: "building MSR list",
            source: kvm_ioctls::Error::new(libc::E2BIG),
        })?;
        let n = self
            .fd
            .get_msrs(&mut msrs)
            .map_err(kvm_err("reading MSRs"))?;
        let d = self
            .fd
            .get_debug_regs()
            .map_err(kvm_err("reading debug regs"))?;
        Ok(VcpuState {
            gprs: [
                r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.rsp, r.r8, r.r9, r.r10, r.r11,
                r.r12, r.r13, r.r14, r.r15,
            ],
            rip: r.rip,
            rflags: r.rflags,
            cr0: sr.cr0,
            cr2: sr.cr2,
            cr3: sr.cr3,
            cr4: sr.cr4,
            dr: [d.db[0], d.db[1], d.db[2], d.db[3], d.dr6, d.dr7],
            efer: sr.efer,
            cs: from_kvm_seg(&sr.cs),
            ds: from_kvm_seg(&sr.ds),
            es: from_kvm_seg(&sr.es),
            fs: from_kvm_seg(&sr.fs),
            gs: from_kvm_seg(&sr.gs),
            ss: from_kvm_seg(&sr.ss),
            tr: from_kvm_seg(&sr.tr),
            ldtr: from_kvm_seg(&sr.ldt),
            gdtr: SegDesc {
                base: sr.gdt.base,
                limit: sr.gdt.limit.into(),
                access: 0,
            },
            idtr: SegDesc {
                base: sr.idt.base,
                limit: sr.idt.limit.into(),
                access: 0,
            },
            msrs: msrs.as_slice()[..n.min(msrs.as_slice().len())]
                .iter()
                .map(|e| (e.index, e.data))
                .collect(),
        })
    }

    /// First entry on this thread: register it for kicks, block the kick
    /// signal outside KVM_RUN and let KVM unblock it inside.
    fn setup_thread(&mut self) -> Result<()> {
        // SAFETY: plain libc signal-mask calls on local, initialised sets.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, kick_signal());
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
            libc::sigdelset(&mut old, kick_signal());
            // struct kvm_signal_mask { u32 len; u8 sigset[8]; }: the kernel's
            // sigset is 64 bits, the first 8 bytes of glibc's sigset_t.
            let mut buf = [0u8; 12];
            buf[..4].copy_from_slice(&8u32.to_ne_bytes());
            let raw = std::slice::from_raw_parts(&old as *const _ as *const u8, 8);
            buf[4..].copy_from_slice(raw);
            if libc::ioctl(self.fd.as_raw_fd(), KVM_SET_SIGNAL_MASK, buf.as_ptr()) != 0 {
                return Err(Error::Kvm {
                    what: "setting vCPU signal mask",
                    source: kvm_ioctls::Error::last(),
                });
            }
        }
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        self.shared.vcpus[self.id]
            .thread
            .store(me as u64, Ordering::SeqCst);
        self.signal_mask_set = true;
        Ok(())
    }

    /// Work queued by other threads while we were in the guest.
    fn service_requests(&mut self) -> Result<()> {
        let sh = &self.shared.vcpus[self.id];
        if sh.want_snapshot.swap(false, Ordering::SeqCst) {
            let s = self.get_state()?;
            *sh.snapshot.lock().unwrap_or_else(|e| e.into_inner()) = Some(s);
            sh.snapshot_cv.notify_all();
        }
        if sh.nmi.swap(false, Ordering::SeqCst) {
            self.fd.nmi().map_err(kvm_err("injecting NMI"))?;
            self.stat(STAT_NMI);
        }
        Ok(())
    }

    /// After a kick: is this vCPU halted for good (HLT with IF=0, or an AP
    /// never started)?  If every vCPU is, suspend the VM with `Halt`.
    fn check_halt(&self) -> Result<()> {
        let mp = self
            .fd
            .get_mp_state()
            .map_err(kvm_err("reading MP state"))?;
        let idle = match mp.mp_state {
            KVM_MP_STATE_HALTED => {
                let r = self.fd.get_regs().map_err(kvm_err("reading registers"))?;
                r.rflags & (1 << 9) == 0
            }
            KVM_MP_STATE_UNINITIALIZED | KVM_MP_STATE_INIT_RECEIVED => self.id != 0,
            _ => false,
        };
        self.shared.vcpus[self.id]
            .idle_for_good
            .store(idle, Ordering::SeqCst);
        if idle
            && self.shared.vcpus[..self.shared.ncpus]
                .iter()
                .all(|v| v.idle_for_good.load(Ordering::SeqCst))
        {
            let h = VmHandle {
                shared: self.shared.clone(),
            };
            h.suspend(Suspend::Halt);
        }
        Ok(())
    }

    /// `vm_run`: complete the previous exit as `entry` says, run until the
    /// next exit we must handle in user space.
    pub fn run(&mut self, entry: VmEntry) -> Result<VmExit> {
        if !self.signal_mask_set {
            self.setup_thread()?;
        }
        self.complete(entry);
        loop {
            if let Some(s) = Suspend::from_code(self.shared.suspend.load(Ordering::SeqCst)) {
                return Ok(VmExit::Suspended(s));
            }
            self.service_requests()?;
            let exit = match self.fd.run() {
                Ok(e) => e,
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    eat_kicks();
                    self.stat(STAT_KICK);
                    self.check_halt()?;
                    continue;
                }
                Err(e) => {
                    return Err(Error::Kvm {
                        what: "KVM_RUN",
                        source: e,
                    });
                }
            };
            self.shared.vcpus[self.id].stats[STAT_TOTAL].fetch_add(1, Ordering::Relaxed);
            let r = match exit {
                VcpuExit::IoOut(port, data) => {
                    let mut v = [0u8; 4];
                    let n = data.len().min(4);
                    v[..n].copy_from_slice(&data[..n]);
                    Some(VmExit::Inout {
                        port,
                        bytes: n as u8,
                        out: true,
                        value: u32::from_le_bytes(v),
                    })
                }
                VcpuExit::IoIn(port, data) => {
                    let n = data.len().min(4);
                    Some(VmExit::Inout {
                        port,
                        bytes: n as u8,
                        out: false,
                        value: 0,
                    })
                }
                VcpuExit::MmioRead(gpa, data) => Some(VmExit::Mmio {
                    gpa,
                    bytes: data.len().min(8) as u8,
                    write: false,
                    value: 0,
                }),
                VcpuExit::MmioWrite(gpa, data) => {
                    let mut v = [0u8; 8];
                    let n = data.len().min(8);
                    v[..n].copy_from_slice(&data[..n]);
                    Some(VmExit::Mmio {
                        gpa,
                        bytes: n as u8,
                        write: true,
                        value: u64::from_le_bytes(v),
                    })
                }
                VcpuExit::Shutdown => {
                    VmHandle {
                        shared: self.shared.clone(),
                    }
                    .suspend(Suspend::Triplefault);
                    None
                }
                VcpuExit::Hlt => {
                    // Only seen without an in-kernel LAPIC; treat as a kick.
                    self.check_halt()?;
                    None
                }
                VcpuExit::Intr => None,
                // Only enabled with -w: unknown MSRs read 0, writes vanish.
                VcpuExit::X86Rdmsr(m) => {
                    *m.data = 0;
                    *m.error = 0;
                    None
                }
                VcpuExit::X86Wrmsr(m) => {
                    *m.error = 0;
                    None
                }
                VcpuExit::InternalError => self.internal_error()?,
                VcpuExit::FailEntry(reason, cpu) => Some(VmExit::Unhandled(format!(
                    "VM entry failed on cpu {cpu}: hardware reason {reason:#x}"
                ))),
                other => Some(VmExit::Unhandled(format!("{other:?}"))),
            };
            if let Some(r) = r {
                self.note_pending(&r);
                return Ok(r);
            }
        }
    }

    fn note_pending(&mut self, e: &VmExit) {
        match e {
            VmExit::Inout {
                out: false, bytes, ..
            } => {
                self.stat(STAT_INOUT);
                let run = self.fd.get_kvm_run();
                // SAFETY: the last exit was KVM_EXIT_IO, so `io` is the
                // active member of the exit union.
                let off = unsafe { run.__bindgen_anon_1.io.data_offset } as usize;
                self.pending_in = Some((off, *bytes as usize));
            }
            VmExit::Inout { .. } => self.stat(STAT_INOUT),
            VmExit::Mmio {
                write: false,
                bytes,
                ..
            } => {
                self.stat(STAT_MMIO);
                self.pending_mmio = Some(*bytes as usize);
            }
            VmExit::Mmio { .. } => self.stat(STAT_MMIO),
            _ => {}
        }
    }

    fn complete(&mut self, entry: VmEntry) {
        let pin = self.pending_in.take();
        let pmmio = self.pending_mmio.take();
        match (entry, pin, pmmio) {
            (VmEntry::InComplete(v), Some((off, n)), _) => {
                let size = self.run_size;
                if off.checked_add(n).is_some_and(|end| end <= size) {
                    let run = self.fd.get_kvm_run() as *mut _ as *mut u8;
                    let b = v.to_le_bytes();
                    // SAFETY: kvm_run is a mapping of `size` bytes and KVM
                    // put the IN data at `off`; we checked the bounds.
                    unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), run.add(off), n.min(4)) };
                }
            }
            (VmEntry::MmioReadComplete(v), _, Some(n)) => {
                let run = self.fd.get_kvm_run();
                // SAFETY: the last exit was KVM_EXIT_MMIO, so `mmio` is the
                // active union member.
                let mmio = unsafe { &mut run.__bindgen_anon_1.mmio };
                let b = v.to_le_bytes();
                mmio.data[..n.min(8)].copy_from_slice(&b[..n.min(8)]);
            }
            _ => {}
        }
    }

    /// KVM_EXIT_INTERNAL_ERROR: an emulation failure is completed by
    /// [`inst_emul`] when it can be (`None`: the vCPU just continues).
    fn internal_error(&mut self) -> Result<Option<VmExit>> {
        let run = self.fd.get_kvm_run();
        // SAFETY: the last exit was KVM_EXIT_INTERNAL_ERROR, so `internal` is
        // the active union member.
        let ie = unsafe { run.__bindgen_anon_1.internal };
        if ie.suberror != KVM_INTERNAL_ERROR_EMULATION {
            return Ok(Some(VmExit::Unhandled(format!(
                "KVM internal error, suberror {}",
                ie.suberror
            ))));
        }
        // SAFETY: same exit; `emulation_failure` is the layout KVM uses for
        // this suberror (flags, then insn_size and up to 15 bytes).
        let ef = unsafe { run.__bindgen_anon_1.emulation_failure };
        let mut insn = Vec::new();
        if ef.flags & u64::from(KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES) != 0 {
            // SAFETY: plain bytes, valid for any bit pattern.
            let b = unsafe { ef.__bindgen_anon_1.__bindgen_anon_1 };
            insn = b.insn_bytes[..usize::from(b.insn_size).min(15)].to_vec();
        }
        self.stat(STAT_EMUL);
        let mut regs = self.fd.get_regs().map_err(kvm_err("reading registers"))?;
        let fail = |why| {
            Ok(Some(VmExit::InstEmulFail {
                rip: regs.rip,
                insn: insn.clone(),
                why,
            }))
        };
        let Some(d) = inst_emul::decode(&insn) else {
            return fail(None);
        };
        let sregs = self.fd.get_sregs().map_err(kvm_err("reading sregs"))?;
        let fsw = if d.insn == Insn::Fwait {
            self.x87_status()?
        } else {
            0
        };
        let ctx = CpuCtx {
            rip: regs.rip,
            code_bits: if sregs.cs.l == 1 && sregs.efer & EFER_LMA != 0 {
                64
            } else if sregs.cs.db == 1 {
                32
            } else {
                16
            },
            cr0: sregs.cr0,
            rflags: regs.rflags,
            ss_dpl: sregs.ss.dpl,
            fsw,
        };
        match inst_emul::complete(d, &ctx) {
            Outcome::Complete { rip, rflags } => {
                regs.rip = rip;
                regs.rflags = rflags;
                // KVM_SET_REGS also drops an exception KVM may have queued
                // along with the failure.
                self.fd
                    .set_regs(&regs)
                    .map_err(kvm_err("completing an instruction"))?;
                self.stat(insn_stat(d.insn));
                Ok(None)
            }
            Outcome::Exception(vector) => {
                self.inject_exception(vector)?;
                self.stat(STAT_EMUL_EXC);
                Ok(None)
            }
            Outcome::Trap { rip, vector } => {
                regs.rip = rip;
                self.fd
                    .set_regs(&regs)
                    .map_err(kvm_err("completing an instruction"))?;
                self.inject_exception(vector)?;
                self.stat(insn_stat(d.insn));
                Ok(None)
            }
            Outcome::Unsupported(why) => fail(Some(why)),
        }
    }

    /// The guest's x87 status word.  Read through KVM_GET_XSAVE, not
    /// KVM_GET_FPU: the latter copies the legacy area even when XSTATE_BV
    /// says x87 is in its initial state, where the area is stale (seen on
    /// this host after a guest FNINIT).
    fn x87_status(&self) -> Result<u16> {
        let x = self
            .fd
            .get_xsave()
            .map_err(kvm_err("reading XSAVE state"))?;
        // Bytes 0..4: FCW, FSW; byte 512: XSTATE_BV, bit 0 = x87 state.
        if x.region[512 / 4] & 1 == 0 {
            return Ok(0);
        }
        Ok((x.region[0] >> 16) as u16)
    }

    /// Raise an exception without error code at the current RIP: a fault
    /// (#UD, #NM, #MF), or #BP after RIP was moved past the INT3.
    fn inject_exception(&self, vector: u8) -> Result<()> {
        let mut ev = self
            .fd
            .get_vcpu_events()
            .map_err(kvm_err("reading vCPU events"))?;
        ev.exception.injected = 1;
        ev.exception.pending = 0;
        ev.exception.nr = vector;
        ev.exception.has_error_code = 0;
        ev.exception.error_code = 0;
        self.fd
            .set_vcpu_events(&ev)
            .map_err(kvm_err("injecting an exception"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_conversion_round_trips() {
        for access in [0x209b, 0x93, 0x8b, 0x10000, 0xc09b, 0xf3] {
            let s = Segment {
                sel: 0x10,
                desc: SegDesc {
                    base: 0x1234,
                    limit: 0xfffff,
                    access,
                },
            };
            assert_eq!(from_kvm_seg(&to_kvm_seg(&s)), s, "{access:#x}");
        }
        let k = to_kvm_seg(&Segment {
            sel: 8,
            desc: SegDesc {
                base: 0,
                limit: 0,
                access: 0x209b,
            },
        });
        assert_eq!((k.type_, k.s, k.present, k.l, k.db), (0xb, 1, 1, 1, 0));
    }

    #[test]
    fn every_completed_instruction_has_its_counter() {
        for (i, m) in [
            (Insn::Fwait, "fwait"),
            (Insn::Clac, "clac"),
            (Insn::Stac, "stac"),
        ] {
            assert_eq!(
                STAT_NAMES[insn_stat(i)],
                format!("number of {m} instructions completed")
            );
        }
    }

    #[test]
    fn suspend_codes() {
        for s in [
            Suspend::Reset,
            Suspend::Poweroff,
            Suspend::Halt,
            Suspend::Triplefault,
            Suspend::Destroy,
        ] {
            assert_eq!(Suspend::from_code(s.code()), Some(s));
        }
        assert_eq!(Suspend::from_code(0), None);
    }
}
