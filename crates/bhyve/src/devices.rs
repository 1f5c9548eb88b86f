//! Building bhyve's machine from the configuration: check and open every
//! backend first (`plan`), then create the devices and claim their ports
//! and MMIO ranges (`attach`).  Also the process's signal policy.

use std::fs::OpenOptions;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};

use vmmapi::Vm;

use crate::atkbdc::{self, Atkbdc};
use crate::bhyverun::Machine;
use crate::bus::{Irq, IrqLine, Suspender};
use crate::config::{Config, ConfigError};
use crate::inout::{InoutBus, InoutError};
use crate::pci_lpc::{self, COM_PORTS, ComPort, ComRes, Trigger, UART_IO_BAR_SIZE};
use crate::pm::{self, Pm, ResetControl};
use crate::post::{self, Post};
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
    #[error("{what}: {why}")]
    Setup { what: String, why: String },
}

/// What `plan` checked and opened.
#[derive(Debug)]
pub struct Plan {
    pub ncpus: usize,
    pub pci: Vec<PciPlan>,
    /// COM ports to create at ISA resources.
    pub coms: Vec<ComPlan>,
}

#[derive(Debug)]
pub struct PciPlan {
    pub bdf: (u8, u8, u8),
    pub emul: String,
    pub opts: std::collections::BTreeMap<String, String>,
    pub file: Option<std::fs::File>,
    /// A (non-legacy) PCI UART's backend.
    pub tty: Option<UartBackend>,
}

/// A COM port: an LPC one, or a 2013 legacy PCI UART on COM resources.
#[derive(Debug)]
pub struct ComPlan {
    pub name: String,
    pub res: ComRes,
    pub trigger: Trigger,
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
        let mut file = None;
        let mut tty = None;
        match emul.as_str() {
            "virtio-blk" => {
                let path = opts
                    .get("path")
                    .ok_or_else(|| err("missing disk image path".into()))?;
                let ro = opts.contains_key("ro");
                let f = OpenOptions::new()
                    .read(true)
                    .write(!ro)
                    .open(path)
                    .map_err(|e| err(format!("{path}: {e}")))?;
                file = Some(f);
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
                    // The 2013 `-S` slot: the UART decodes COM1's (then
                    // COM2's) ports and IRQ.  bhyve put it behind a PCI
                    // function (0x131f:0x2000) with BAR0 fixed there; with
                    // no PCI layer yet it is attached at the ISA ports
                    // alone, keeping the level interrupt of its INTx.
                    let i = legacy_owner
                        .iter()
                        .position(Option::is_none)
                        .ok_or_else(|| err("no legacy COM resources left".into()))?;
                    legacy_owner[i] = Some(who.clone());
                    coms.push(ComPlan {
                        name: who,
                        res: COM_PORTS[i],
                        trigger: Trigger::Level,
                        backend,
                    });
                    continue;
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
                        trigger: Trigger::Edge,
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
            file,
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
    Ok(Plan { ncpus, pci, coms })
}

/// An ISA IRQ / IO-APIC pin of the KVM VM (`vm_isa_assert_irq`: KVM routes
/// GSIs 0–15 to both the PIC and the IO-APIC).
#[derive(Debug)]
pub struct IsaIrq {
    vm: Arc<Vm>,
    gsi: u32,
}

impl IsaIrq {
    pub fn new(vm: Arc<Vm>, gsi: u32) -> IsaIrq {
        IsaIrq { vm, gsi }
    }
}

impl IrqLine for IsaIrq {
    // Failure means the VM itself is gone; bhyve ignores these errors too.
    fn assert(&self) {
        let _ = self.vm.set_irq_line(self.gsi, true);
    }
    fn deassert(&self) {
        let _ = self.vm.set_irq_line(self.gsi, false);
    }
}

/// The devices `attach` created that others need later.
#[derive(Debug)]
pub struct Attached {
    /// For the power button (SIGTERM).
    pub pm: Arc<Mutex<Pm>>,
}

/// Create the devices of `plan` and claim their ports: the platform ones
/// every bhyve has (PM registers, reset control, POST, keyboard controller)
/// and the COM ports.  `irq` gives an ISA IRQ line; `suspend` stops the VM.
pub fn attach(
    plan: Plan,
    inout: &InoutBus,
    irq: &dyn Fn(u32) -> Irq,
    suspend: Suspender,
) -> Result<Attached, DeviceError> {
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
    for com in plan.coms {
        let backend = com.backend.map(Arc::new);
        let port = Arc::new(Mutex::new(ComPort::new(
            &com.name,
            com.res.base,
            irq(com.res.irq),
            com.trigger,
            backend.clone(),
        )));
        inout.register(com.res.base, UART_IO_BAR_SIZE, &com.name, port.clone())?;
        if let Some(be) = backend {
            pci_lpc::start_reader(port.clone(), be).map_err(|e| DeviceError::Setup {
                what: format!("{} input thread", com.name),
                why: e.to_string(),
            })?;
        }
    }
    Ok(Attached { pm })
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
    use crate::inout::Unhandled;
    use crate::pm::tests::{Level, suspender};
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

    #[test]
    fn platform_devices_and_lpc_com_ports() {
        let p = plan(&config(&[("31,lpc", false)], &[]), 1).unwrap();
        let names: Vec<_> = p.coms.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["com1", "com2", "com3", "com4"]);
        assert!(p.coms.iter().all(|c| c.trigger == Trigger::Edge));
        let bus = InoutBus::new();
        let (s, seen) = suspender();
        attach(p, &bus, &|_| Arc::new(Level::default()), s).unwrap();
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
    fn legacy_uart_takes_com1_then_com2() {
        let p = plan(&config(&[("31,uart", true), ("30,uart", true)], &[]), 1).unwrap();
        let got: Vec<_> = p
            .coms
            .iter()
            .map(|c| (c.name.as_str(), c.res.base, c.res.irq, c.trigger))
            .collect();
        assert_eq!(
            got,
            [
                ("pci 0:30:0 uart", 0x3f8, 4, Trigger::Level),
                ("pci 0:31:0 uart", 0x2f8, 3, Trigger::Level)
            ]
        );
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
