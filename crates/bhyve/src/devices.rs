//! Building bhyve's machine from the configuration: check and open every
//! backend first (`plan`), then create the devices and claim their ports
//! and MMIO ranges (`attach`).  Also the process's signal policy.

use std::fs::OpenOptions;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};

use crate::bhyverun::Machine;
use crate::config::{Config, ConfigError};

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
    #[error("{what}: {why}")]
    Setup { what: String, why: String },
}

/// What `plan` checked and opened.
#[derive(Debug)]
pub struct Plan {
    pub ncpus: usize,
    pub pci: Vec<PciPlan>,
}

#[derive(Debug)]
pub struct PciPlan {
    pub bdf: (u8, u8, u8),
    pub emul: String,
    pub opts: std::collections::BTreeMap<String, String>,
    pub file: Option<std::fs::File>,
}

fn bdf_str(b: (u8, u8, u8)) -> String {
    format!("{}:{}:{}", b.0, b.1, b.2)
}

/// Check every device's options and open its backend.
pub fn plan(c: &Config, ncpus: usize) -> Result<Plan, DeviceError> {
    let mut pci = Vec::new();
    for (bdf, opts) in c.pci_devices() {
        let emul = opts.get("device").cloned().unwrap_or_default();
        let err = |why: String| DeviceError::Pci {
            bdf: bdf_str(bdf),
            emul: emul.clone(),
            why,
        };
        let mut file = None;
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
            _ => {}
        }
        pci.push(PciPlan {
            bdf,
            emul,
            opts,
            file,
        });
    }
    Ok(Plan { ncpus, pci })
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
pub fn handle_signals(m: &Arc<Machine>) -> Signals {
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
