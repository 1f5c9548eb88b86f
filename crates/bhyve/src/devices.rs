//! Building bhyve's machine from the configuration: check and open every
//! backend first (`plan`), then create the devices and claim their ports
//! and MMIO ranges (`attach`).  Also the process's signal policy.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use vmmapi::MemLayout;
use vmmapi::vmm_io::IrqSink;
use vmmapi::vmm_io::vhpet::{HPET_CAPABILITIES, VHPET_BASE, VHPET_SIZE};
use vmmapi::vmm_io::vpmtmr::IO_PMTMR;
use vmmapi::vmm_io::vrtc::IO_RTC;

use crate::acpi::{AcpiConfig, HpetConfig, IsaUart, LpcConfig, PCI_ECAM};
use crate::atkbdc::{self, Atkbdc};
use crate::bhyverun::Machine;
use crate::blockif::Disk;
use crate::bus::{Irq, Suspender};
use crate::callout::Callout;
use crate::config::{Bdf, Config, ConfigError};
use crate::inout::{InoutBus, InoutError};
use crate::mem::{MemBus, MemError};
use crate::mevent::Mevent;
use crate::pci_emul::Pci;
use crate::pci_lpc::{self, COM_PORTS, ComPort, ComRes, Trigger, UART_IO_BAR_SIZE};
use crate::pm::{self, Pm, ResetControl};
use crate::post::{self, Post};
use crate::tables::{self, Tables};
use crate::timers::{self, Hpet, PmTimer, Rtc};
use crate::uart_backend::UartBackend;

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("pci {bdf} {emul}: {why}")]
    Pci {
        bdf: String,
        emul: String,
        why: String,
    },
    #[error("lpc {dev}: {why}")]
    Lpc { dev: String, why: String },
    #[error(transparent)]
    Inout(#[from] InoutError),
    #[error(transparent)]
    Mem(#[from] MemError),
    #[error("{what}: {why}")]
    Setup { what: String, why: String },
}

/// What `plan` checked and opened.
#[derive(Debug)]
pub struct Plan {
    pub ncpus: usize,
    pub mem: MemLayout,
    /// `rtc.use_localtime` (`-u` clears it).
    pub rtc_localtime: bool,
    /// `acpi_tables`.
    pub acpi_tables: bool,
    /// `x86.mptable` (`-Y` clears it).
    pub mptable: bool,
    pub pci: Vec<PciPlan>,
    /// The LPC bridge's COM ports, to create at their ISA resources.
    pub coms: Vec<ComPlan>,
}

#[derive(Debug)]
pub struct PciPlan {
    pub bdf: (u8, u8, u8),
    pub emul: String,
    pub opts: std::collections::BTreeMap<String, String>,
    /// A virtio-blk image, opened with its options.
    pub disk: Option<Disk>,
    /// A PCI UART's backend (legacy or not).
    pub tty: Option<UartBackend>,
}

/// One of the LPC bridge's COM ports.  (A 2013 legacy PCI UART on COM
/// resources is a PCI function, `PciPlan`: its BAR0 decodes the ports.)
#[derive(Debug)]
pub struct ComPlan {
    pub name: String,
    pub res: ComRes,
    pub backend: Option<UartBackend>,
}

fn bdf_str(b: (u8, u8, u8)) -> String {
    format!("{}:{}:{}", b.0, b.1, b.2)
}

/// Opens UART backends; stdio can serve only one UART (the first wins).
#[derive(Default)]
struct Ttys {
    stdio_user: Option<String>,
}

impl Ttys {
    fn open(&mut self, who: &str, path: &str) -> Result<UartBackend, String> {
        if path == "stdio" {
            if let Some(first) = &self.stdio_user {
                return Err(format!("stdio is already the backend of {first}"));
            }
            self.stdio_user = Some(who.to_string());
        }
        UartBackend::open(path).map_err(|e| e.to_string())
    }
}

/// Check every device's options and open its backend.
pub fn plan(c: &Config, ncpus: usize) -> Result<Plan, DeviceError> {
    let mut pci = Vec::new();
    let mut coms = Vec::new();
    let mut ttys = Ttys::default();
    // `uart_legacy_alloc`: COM1 and COM2 go to whoever asks first, in
    // slot order — a legacy PCI UART or the LPC bridge.
    let mut legacy_owner: [Option<String>; 2] = [None, None];
    for (bdf, opts) in c.pci_devices() {
        let emul = opts.get("device").cloned().unwrap_or_default();
        let err = |why: String| DeviceError::Pci {
            bdf: bdf_str(bdf),
            emul: emul.clone(),
            why,
        };
        let mut disk = None;
        let mut tty = None;
        match emul.as_str() {
            "virtio-blk" => {
                let path = opts
                    .get("path")
                    .ok_or_else(|| err("missing disk image path".into()))?;
                disk = Some(Disk::open(path, &opts).map_err(|e| err(e.to_string()))?);
            }
            "virtio-net" => {
                let tap = opts
                    .get("backend")
                    .ok_or_else(|| err("missing tap device (e.g. tap0)".into()))?;
                if !tap.starts_with("tap") && !tap.starts_with("vmnet") {
                    return Err(err(format!(
                        "unsupported network backend {tap:?} (use tapN)"
                    )));
                }
                let p = format!("/sys/class/net/{tap}");
                if !std::path::Path::new(&p).exists() {
                    return Err(err(format!("no such tap device {tap}")));
                }
            }
            "uart" => {
                let who = format!("pci {} uart", bdf_str(bdf));
                let backend = match opts.get("path") {
                    Some(p) => Some(ttys.open(&who, p).map_err(err)?),
                    None => None,
                };
                if opts.get("legacy").is_some_and(|v| v == "true") {
                    // The 2013 `-S` slot: a PCI function whose BAR0 and
                    // INTx are fixed on COM1's (then COM2's) port and IRQ;
                    // `attach_pci` builds it in the same slot order.
                    let i = legacy_owner
                        .iter()
                        .position(Option::is_none)
                        .ok_or_else(|| err("no legacy COM resources left".into()))?;
                    legacy_owner[i] = Some(who.clone());
                }
                tty = backend;
            }
            "lpc" => {
                for (i, res) in COM_PORTS.iter().enumerate() {
                    let lpc_err = |why: String| DeviceError::Lpc {
                        dev: res.name.into(),
                        why,
                    };
                    if let Some(owner) = legacy_owner.get_mut(i) {
                        if let Some(o) = owner {
                            return Err(lpc_err(format!(
                                "unable to allocate its resources: {o} has them"
                            )));
                        }
                        *owner = Some(res.name.into());
                    }
                    let backend = match c.get(&format!("lpc.{}.path", res.name)) {
                        Some(p) => Some(ttys.open(res.name, p).map_err(lpc_err)?),
                        None => None,
                    };
                    coms.push(ComPlan {
                        name: res.name.into(),
                        res: *res,
                        backend,
                    });
                }
            }
            _ => {}
        }
        pci.push(PciPlan {
            bdf,
            emul,
            opts,
            disk,
            tty,
        });
    }
    if !pci.iter().any(|p| p.emul == "lpc") {
        for res in COM_PORTS {
            if c.get(&format!("lpc.{}.path", res.name)).is_some() {
                // bhyve silently ignores it; say so.
                eprintln!(
                    "bhyve: warning: -l {} has no effect without an LPC bridge (-s 31,lpc)",
                    res.name
                );
            }
        }
    }
    let mem = MemLayout::new(c.memsize()?).map_err(|e| DeviceError::Setup {
        what: "memory".into(),
        why: e.to_string(),
    })?;
    Ok(Plan {
        ncpus,
        mem,
        rtc_localtime: c.get_bool("rtc.use_localtime")?,
        acpi_tables: c.get_bool("acpi_tables")?,
        mptable: c.get_bool("x86.mptable")?,
        pci,
        coms,
    })
}

/// The devices `attach` created that others need later.
#[derive(Debug)]
pub struct Attached {
    /// For the power button (SIGTERM).
    pub pm: Arc<Mutex<Pm>>,
    /// The RTC and HPET, for the timer thread.
    pub callout: Callout,
    /// The firmware tables describing what was attached.
    pub tables: Tables,
    /// The LPC COM ports, for `bhyvectl --send-break`.
    pub coms: Vec<Arc<Mutex<ComPort>>>,
}

/// Where `attach` puts devices and how they interrupt.
pub struct Wiring<'a> {
    pub inout: &'a InoutBus,
    pub mem: &'a MemBus,
    /// An ISA IRQ line, for the user-space devices.
    pub isa_irq: &'a dyn Fn(u32) -> Irq,
    /// The interrupt controller, for the timers.
    pub irqs: Arc<dyn IrqSink>,
    /// Stops the VM.
    pub suspend: Suspender,
    /// Serves the COM ports' host input.
    pub mevent: Arc<Mevent>,
}

impl std::fmt::Debug for Wiring<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wiring").finish_non_exhaustive()
    }
}

/// Create the devices of `plan` and claim their ports and MMIO: the
/// platform ones every bhyve has (PM registers, reset control, POST,
/// keyboard controller, and vmm.ko's PM timer, RTC and HPET) and the LPC
/// COM ports.  PCI functions, legacy UARTs included, are `attach_pci`'s.
pub fn attach(plan: Plan, w: Wiring<'_>) -> Result<Attached, DeviceError> {
    let Wiring {
        inout,
        mem,
        isa_irq: irq,
        irqs,
        suspend,
        mevent,
    } = w;
    let pm = Arc::new(Mutex::new(Pm::new(irq(pm::SCI_INT), suspend.clone())));
    for (base, len) in Pm::ports() {
        inout.register(base, len, "pm", pm.clone())?;
    }
    inout.register(
        pm::RESET_CONTROL,
        1,
        "reset control",
        Arc::new(Mutex::new(ResetControl::new(suspend.clone()))),
    )?;
    inout.register(post::POST_PORT, 1, "post", Arc::new(Mutex::new(Post)))?;
    let kbdc = Arc::new(Mutex::new(Atkbdc::new(irq(atkbdc::KBD_DEV_IRQ), suspend)));
    inout.register(atkbdc::KBD_DATA_PORT, 1, "atkbdc", kbdc.clone())?;
    inout.register(atkbdc::KBD_STS_CTL_PORT, 1, "atkbdc", kbdc)?;

    // vmm.ko's devices, which KVM does not have.
    inout.register(
        IO_PMTMR,
        1,
        "pmtmr",
        Arc::new(Mutex::new(PmTimer::new(Instant::now()))),
    )?;
    let mut callout = Callout::new();
    let rtc = Arc::new(Mutex::new(Rtc::new(
        irqs.clone(),
        timers::host_rtc_time(plan.rtc_localtime),
        plan.mem.lowmem,
        plan.mem.highmem,
        callout.waker(),
    )));
    inout.register(IO_RTC, 2, "rtc", rtc.clone())?;
    callout.add(rtc);
    let hpet = Arc::new(Mutex::new(Hpet::new(irqs, callout.waker())));
    mem.register(VHPET_BASE, VHPET_SIZE, "hpet", hpet.clone())?;
    callout.add(hpet);

    let tables = tables_for(&plan);
    let mut coms = Vec::new();
    for com in plan.coms {
        let backend = com.backend.map(Arc::new);
        let port = Arc::new(Mutex::new(ComPort::new(
            &com.name,
            com.res.base,
            irq(com.res.irq),
            Trigger::Edge,
            backend.clone(),
        )));
        inout.register(com.res.base, UART_IO_BAR_SIZE, &com.name, port.clone())?;
        coms.push(port.clone());
        if let Some(be) = backend {
            pci_lpc::start_reader(port.clone(), be, &mevent).map_err(|e| DeviceError::Setup {
                what: format!("{} input thread", com.name),
                why: e.to_string(),
            })?;
        }
    }
    Ok(Attached {
        pm,
        callout,
        tables,
        coms,
    })
}

/// The virtio-blk images, for `pci_emul::attach_pci`.
pub fn take_pci_disks(plan: &mut Plan) -> BTreeMap<Bdf, Disk> {
    plan.pci
        .iter_mut()
        .filter_map(|p| p.disk.take().map(|d| (p.bdf, d)))
        .collect()
}

/// The backends of the PCI UARTs (legacy ones too), for
/// `pci_emul::attach_pci`.
pub fn take_pci_ttys(plan: &mut Plan) -> BTreeMap<Bdf, UartBackend> {
    plan.pci
        .iter_mut()
        .filter_map(|p| p.tty.take().map(|t| (p.bdf, t)))
        .collect()
}

/// Put bus 0 as `attach_pci` built it into the tables: its functions with
/// their INTx pins (for `_PRT` and the MP table) and the windows the BAR
/// allocator left (for `_CRS`).
pub fn describe_pci(t: &mut Tables, pci: &Pci) {
    t.machine.pci = pci.functions.clone();
    t.machine.io_window = pci.io_window.clone();
    t.machine.mmio32 = pci.mmio32.clone();
    t.machine.mmio64 = pci.mmio64.clone();
}

/// The machine as the firmware tables describe it, but for bus 0's
/// functions (see `describe_pci`).
fn tables_for(plan: &Plan) -> Tables {
    let pci = &plan.pci;
    // The LPC COM ports; the DSDT describes them under the ISA bridge.
    let uarts = plan
        .coms
        .iter()
        .filter_map(|c| {
            let unit = COM_PORTS.iter().position(|r| *r == c.res)?;
            Some(IsaUart {
                unit: u8::try_from(unit + 1).ok()?,
                port: c.res.base,
                irq: u8::try_from(c.res.irq).ok()?,
            })
        })
        .collect();
    let on_bus0 = |p: &&PciPlan| p.bdf.0 == 0;
    let lpc = pci
        .iter()
        .filter(on_bus0)
        .find(|p| p.emul == "lpc")
        .map(|p| LpcConfig {
            slot: p.bdf.1,
            func: p.bdf.2,
            uarts,
            rtc: true,
            atkbdc: true,
        });
    let (io_window, mmio32, mmio64) = tables::pci_windows(plan.mem.highmem);
    Tables {
        machine: AcpiConfig {
            ncpus: plan.ncpus,
            // Filled in by `describe_pci` once bus 0 is built.
            pci: Vec::new(),
            lpc,
            // Below 4 GiB; the id is the capability register's low half.
            hpet: Some(HpetConfig {
                base: VHPET_BASE as u32,
                id: HPET_CAPABILITIES as u32,
            }),
            ecam: PCI_ECAM,
            io_window,
            mmio32,
            mmio64,
        },
        acpi: plan.acpi_tables,
        mptable: plan.mptable,
    }
}

/// What the signal thread saw.
#[derive(Debug, Clone)]
pub struct Signals {
    fatal: Arc<AtomicI32>,
}

impl Signals {
    /// A signal that should end the process once cleanup is done.
    pub fn fatal_signal(&self) -> Option<i32> {
        match self.fatal.load(Ordering::SeqCst) {
            0 => None,
            s => Some(s),
        }
    }
}

const HANDLED: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

fn sigset() -> libc::sigset_t {
    // SAFETY: initialising a local sigset.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in HANDLED {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Block the signals bhyve handles in this thread and every thread it
/// starts later; call first thing in main.
pub fn block_signals() {
    let set = sigset();
    // SAFETY: plain signal-mask call on a local set.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

/// SIGTERM presses the ACPI power button once the guest enabled ACPI;
/// before that (and for SIGINT/SIGHUP) bhyve stops cleanly and then dies of
/// the signal.
pub fn handle_signals(m: &Arc<Machine>, pm: Arc<Mutex<Pm>>) -> Signals {
    let fatal = Arc::new(AtomicI32::new(0));
    let sig = Signals {
        fatal: fatal.clone(),
    };
    let m = m.clone();
    let _ = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let set = sigset();
            loop {
                let mut s: libc::c_int = 0;
                // SAFETY: sigwait on a valid set and a local out-parameter.
                if unsafe { libc::sigwait(&set, &mut s) } != 0 {
                    continue;
                }
                if s == libc::SIGTERM && pm.lock().unwrap_or_else(|e| e.into_inner()).power_button()
                {
                    continue;
                }
                fatal.store(s, Ordering::SeqCst);
                m.handle().suspend(vmmapi::Suspend::Destroy);
            }
        });
    sig
}

/// Die of `sig` with its default action.
pub fn reraise(sig: i32) {
    // SAFETY: resetting a handler to default, unblocking and raising a
    // signal in our own process.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(sig);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acpi::HPET_ID;
    use crate::inout::Unhandled;
    use crate::pm::tests::{Level, suspender};
    use crate::timers::tests::Irqs;
    use vmmapi::Suspend;

    fn config(slots: &[(&str, bool)], lpc: &[&str]) -> Config {
        let mut c = Config::with_defaults();
        for (s, legacy) in slots {
            c.parse_slot(s, *legacy).unwrap();
        }
        for l in lpc {
            c.parse_lpc(l).unwrap();
        }
        c
    }

    fn rd(bus: &InoutBus, port: u16, n: usize) -> Result<u32, Unhandled> {
        let mut b = [0u8; 4];
        bus.read(port, &mut b[..n])?;
        Ok(u32::from_le_bytes(b))
    }

    /// Attach `p` to fresh buses with recording interrupt lines.
    fn attach_test(p: Plan, s: Suspender) -> (InoutBus, MemBus, Attached) {
        let bus = InoutBus::new();
        let mem = MemBus::new();
        let a = attach(
            p,
            Wiring {
                inout: &bus,
                mem: &mem,
                isa_irq: &|_| Arc::new(Level::default()),
                irqs: Arc::new(Irqs::default()),
                suspend: s,
                mevent: crate::mevent::tests::shared(),
            },
        )
        .unwrap();
        (bus, mem, a)
    }

    #[test]
    fn platform_devices_and_lpc_com_ports() {
        let p = plan(&config(&[("31,lpc", false)], &[]), 1).unwrap();
        let names: Vec<_> = p.coms.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["com1", "com2", "com3", "com4"]);
        let (s, seen) = suspender();
        let (bus, _, _) = attach_test(p, s);
        for base in [0x3f8, 0x2f8, 0x3e8, 0x2e8] {
            assert_eq!(rd(&bus, base + 5, 1), Ok(0x60), "LSR at {base:#x}");
        }
        assert_eq!(rd(&bus, 0x84, 1), Ok(0xff), "post");
        assert_eq!(rd(&bus, 0x80, 1), Err(Unhandled::Unclaimed));
        assert_eq!(rd(&bus, 0x64, 1), Ok(0), "atkbdc status");
        assert_eq!(rd(&bus, 0x404, 2), Ok(0), "PM1a_CNT");
        assert_eq!(rd(&bus, 0x405, 1), Err(Unhandled::Unclaimed));
        assert_eq!(
            rd(&bus, 0x404, 1),
            Err(Unhandled::Refused("pm".into())),
            "16-bit register"
        );
        bus.write(0x404, &0x3400u16.to_le_bytes()).unwrap();
        bus.write(0xcf9, &[0x06]).unwrap();
        bus.write(0x64, &[0xfe]).unwrap();
        assert_eq!(
            *seen.lock().unwrap(),
            [Suspend::Poweroff, Suspend::Reset, Suspend::Reset]
        );
    }

    #[test]
    fn vmm_timers_on_the_buses() {
        let mut c = config(&[], &[]);
        c.set("rtc.use_localtime", "false");
        let (s, _) = suspender();
        let (bus, mem, a) = attach_test(plan(&c, 1).unwrap(), s);
        assert!(rd(&bus, 0x408, 4).is_ok(), "PM timer");
        assert_eq!(
            rd(&bus, 0x408, 2),
            Err(Unhandled::Refused("pmtmr".into())),
            "PM timer: 4-byte reads only"
        );
        assert_eq!(rd(&bus, 0x409, 1), Err(Unhandled::Unclaimed));
        bus.write(0x70, &[0x0d]).unwrap();
        assert_eq!(rd(&bus, 0x71, 1), Ok(0x80), "RTC register D");
        // (256 - 16) MiB of lowmem in 64 KiB blocks = 0x0f00.
        bus.write(0x70, &[0x35]).unwrap();
        assert_eq!(rd(&bus, 0x71, 1), Ok(0x0f), "CMOS lowmem cell");
        let mut cap = [0u8; 4];
        mem.read(0xfed0_0000, &mut cap).unwrap();
        assert_eq!(u32::from_le_bytes(cap), HPET_ID, "HPET capabilities");
        assert!(mem.read(0xfed0_0400, &mut cap).is_none());
        assert_eq!(format!("{:?}", a.callout), "Callout { devices: 2, .. }");
    }

    #[test]
    fn tables_describe_what_was_attached() {
        let mut c = config(&[("0,hostbridge", false), ("31,lpc", false)], &[]);
        c.parse_cpus("4").unwrap();
        c.set("x86.mptable", "false");
        let (s, _) = suspender();
        let (_, _, a) = attach_test(plan(&c, 4).unwrap(), s);
        let t = a.tables;
        assert!(t.acpi && !t.mptable);
        assert_eq!(t.machine.ncpus, 4);
        assert!(t.machine.pci.is_empty(), "bus 0 comes from describe_pci");
        let lpc = t.machine.lpc.expect("LPC bridge");
        assert_eq!(
            (lpc.slot, lpc.func, lpc.rtc, lpc.atkbdc),
            (31, 0, true, true)
        );
        let units: Vec<_> = lpc.uarts.iter().map(|u| (u.unit, u.port, u.irq)).collect();
        assert_eq!(
            units,
            [(1, 0x3f8, 4), (2, 0x2f8, 3), (3, 0x3e8, 4), (4, 0x2e8, 3)]
        );
        assert_eq!(
            t.machine.hpet.map(|h| (h.base, h.id)),
            Some((0xfed0_0000, HPET_ID))
        );
        // No LPC bridge: no ISA devices in the DSDT.
        let (s, _) = suspender();
        let (_, _, a) = attach_test(plan(&config(&[], &[]), 1).unwrap(), s);
        assert_eq!(a.tables.machine.lpc, None);
        assert!(a.tables.mptable);
    }

    /// The machine's buses for `attach_pci`.
    #[derive(Default)]
    struct Buses {
        inout: InoutBus,
        mem: MemBus,
    }
    impl crate::pci_emul::BarSpace for Buses {
        fn inout(&self) -> &InoutBus {
            &self.inout
        }
        fn mem(&self) -> &MemBus {
            &self.mem
        }
    }

    #[test]
    fn legacy_uart_takes_com1_then_com2() {
        let c = config(&[("31,uart", true), ("30,uart", true)], &[]);
        let mut p = plan(&c, 1).unwrap();
        // PCI functions, not ISA COM ports.
        assert!(p.coms.is_empty());
        let slots: Vec<_> = p.pci.iter().map(|f| (f.bdf, f.emul.as_str())).collect();
        assert_eq!(slots, [((0, 30, 0), "uart"), ((0, 31, 0), "uart")]);
        // The platform devices leave the COM ports to the PCI layer, whose
        // BARs then claim them (once: a second claim would fail).
        let ttys = take_pci_ttys(&mut p);
        let space = Arc::new(Buses::default());
        let (s, _) = suspender();
        let a = attach(
            p,
            Wiring {
                inout: &space.inout,
                mem: &space.mem,
                isa_irq: &|_| Arc::new(Level::default()),
                irqs: Arc::new(Irqs::default()),
                suspend: s,
                mevent: crate::mevent::tests::shared(),
            },
        )
        .unwrap();
        assert_eq!(rd(&space.inout, 0x3fd, 1), Err(Unhandled::Unclaimed));
        let lines = Arc::new(crate::pci_irq::tests::Lines::default());
        let pci = crate::pci_emul::attach_pci(
            &space,
            &c,
            &lines.factory(),
            ttys,
            None,
            &crate::mevent::tests::shared(),
        )
        .unwrap();
        assert_eq!(rd(&space.inout, 0x3fd, 1), Ok(0x60), "COM1 LSR via 30.0");
        assert_eq!(rd(&space.inout, 0x2fd, 1), Ok(0x60), "COM2 LSR via 31.0");
        let bar0 = |slot| {
            let f = pci.bus.function(slot, 0).unwrap();
            let f = f.lock().unwrap();
            (f.cfg_read(0x10, 4), f.cfg_read(0x3c, 1))
        };
        assert_eq!(bar0(30), (0x3f9, 4));
        assert_eq!(bar0(31), (0x2f9, 3));
        // In the tables as PCI functions, not as LPC COM ports.
        let mut t = a.tables;
        describe_pci(&mut t, &pci);
        let f = |slot| crate::acpi::PciFunction {
            slot,
            func: 0,
            intx: None,
        };
        assert_eq!(t.machine.pci, [f(30), f(31)]);
        assert_eq!(t.machine.lpc, None);
        let e = plan(
            &config(&[("1,uart", true), ("2,uart", true), ("3,uart", true)], &[]),
            1,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "pci 0:3:0 uart: no legacy COM resources left"
        );
        let e = plan(&config(&[("1,uart", true), ("31,lpc", false)], &[]), 1).unwrap_err();
        assert_eq!(
            e.to_string(),
            "lpc com1: unable to allocate its resources: pci 0:1:0 uart has them"
        );
    }

    #[test]
    fn bad_backends_fail_the_plan() {
        let e = plan(&config(&[("31,lpc", false)], &["com1,/nonexistent/tty"]), 1).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("lpc com1: uart backend /nonexistent/tty: No such file"),
            "{e}"
        );
        let e = plan(&config(&[("31,lpc", false)], &["com2,/dev/null"]), 1).unwrap_err();
        assert_eq!(e.to_string(), "lpc com2: uart backend /dev/null: not a tty");
        let e = plan(
            &config(&[("31,lpc", false)], &["com1,stdio", "com2,stdio"]),
            1,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "lpc com2: stdio is already the backend of com1"
        );
    }
}
