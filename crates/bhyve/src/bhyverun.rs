//! bhyverun: run an instance — build the VM from the instance, start a
//! thread per vCPU and dispatch their exits to the buses (`vm_loop` and the
//! `vmexit_*` handlers of bhyverun.c), then write the final state back.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use vmmapi::{EventFd, Suspend, Vcpu, VcpuState, Vm, VmEntry, VmExit, VmHandle};

use crate::inout::{InoutBus, Unhandled};
use crate::mem::MemBus;

/// bhyve(8) exit statuses.
pub const EXIT_RESET: u8 = 0;
pub const EXIT_POWEROFF: u8 = 1;
pub const EXIT_HALT: u8 = 2;
pub const EXIT_TRIPLEFAULT: u8 = 3;
pub const EXIT_ERROR: u8 = 4;

/// What every vCPU thread shares.
#[derive(Debug)]
pub struct Machine {
    pub inout: InoutBus,
    pub mem: MemBus,
    /// `-e`: unclaimed port I/O stops the VM.
    pub strictio: bool,
    /// The first fatal error; the VM is suspended when it is set.
    error: Mutex<Option<String>>,
    handle: VmHandle,
    vm: Arc<Vm>,
}

impl Machine {
    pub fn new(vm: Arc<Vm>, strictio: bool) -> Machine {
        Machine {
            inout: InoutBus::new(),
            mem: MemBus::new(),
            strictio,
            error: Mutex::new(None),
            handle: vm.handle(),
            vm,
        }
    }

    /// Attach or detach a doorbell eventfd (see `pci_emul::Doorbell`);
    /// false if KVM refused, and the write then exits as usual.
    pub fn ioeventfd(&self, port: u16, data: u16, evt: &EventFd, on: bool) -> bool {
        match self.vm.ioeventfd(port, data, evt, on) {
            Ok(()) => true,
            Err(e) => {
                if on {
                    eprintln!("ioeventfd at port {port:#x}: {e}");
                }
                false
            }
        }
    }

    pub fn handle(&self) -> &VmHandle {
        &self.handle
    }

    /// Stop the VM with an error (exit status 4).
    pub fn fail(&self, msg: String) {
        let mut e = self.error.lock().unwrap_or_else(|e| e.into_inner());
        if e.is_none() {
            *e = Some(msg);
        }
        drop(e);
        self.handle.suspend(Suspend::Destroy);
    }

    pub fn error(&self) -> Option<String> {
        self.error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// `vmexit_inout`.  Unclaimed ports act as bhyve's default handler
    /// (all ones, writes dropped) unless `-e`; an access a device refuses
    /// aborts the VM as in bhyve, `-e` or not.
    fn inout(&self, vcpu: usize, port: u16, bytes: u8, out: bool, value: u32) -> VmEntry {
        let n = (bytes as usize).clamp(1, 4);
        let mut b = if out {
            value.to_le_bytes()
        } else {
            [0xffu8; 4]
        };
        let r = if out {
            self.inout.write(port, &b[..n])
        } else {
            self.inout.read(port, &mut b[..n])
        };
        let why = match r {
            Ok(()) => None,
            Err(Unhandled::Unclaimed) if self.strictio => Some("unhandled".to_string()),
            Err(Unhandled::Unclaimed) => {
                b = [0xff; 4];
                None
            }
            Err(Unhandled::Refused(dev)) => Some(format!("{dev} refused")),
        };
        if let Some(why) = why {
            if out {
                self.fail(format!(
                    "vcpu {vcpu}: {why} out{} {port:#x} value {value:#x}",
                    suffix(n)
                ));
            } else {
                self.fail(format!("vcpu {vcpu}: {why} in{} {port:#x}", suffix(n)));
            }
        }
        if out {
            VmEntry::Run
        } else {
            VmEntry::InComplete(u32::from_le_bytes(b))
        }
    }

    /// `vmexit_mmio` (KVM decoded the instruction for us).
    fn mmio(&self, gpa: u64, bytes: u8, write: bool, value: u64) -> VmEntry {
        let n = (bytes as usize).clamp(1, 8);
        if write {
            let b = value.to_le_bytes();
            let _ = self.mem.write(gpa, &b[..n]);
            VmEntry::Run
        } else {
            let mut b = [0xffu8; 8];
            if self.mem.read(gpa, &mut b[..n]).is_none() {
                b = [0xff; 8];
            }
            VmEntry::MmioReadComplete(u64::from_le_bytes(b))
        }
    }
}

fn suffix(n: usize) -> &'static str {
    match n {
        1 => "b",
        2 => "w",
        _ => "l",
    }
}

/// The one-line error for an instruction nobody could emulate.
fn emul_failure(vcpu: usize, rip: u64, insn: &[u8], why: Option<&str>) -> String {
    let bytes = if insn.is_empty() {
        "unknown".to_string()
    } else {
        insn.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let why = why.map(|w| format!(": {w}")).unwrap_or_default();
    format!("vcpu {vcpu}: instruction emulation failed at rip {rip:#x} (bytes: {bytes}){why}")
}

/// `vm_loop`: run one vCPU until the VM is suspended; returns its final
/// state.
pub fn vcpu_loop(m: &Machine, mut vcpu: Vcpu) -> Option<VcpuState> {
    let id = vcpu.id();
    let mut entry = VmEntry::Run;
    loop {
        match vcpu.run(entry) {
            Ok(VmExit::Inout {
                port,
                bytes,
                out,
                value,
            }) => entry = m.inout(id, port, bytes, out, value),
            Ok(VmExit::Mmio {
                gpa,
                bytes,
                write,
                value,
            }) => entry = m.mmio(gpa, bytes, write, value),
            Ok(VmExit::Suspended(_)) => break,
            // vmm-core already completed what it could (inst_emul).
            Ok(VmExit::InstEmulFail { rip, insn, why }) => {
                m.fail(emul_failure(id, rip, &insn, why));
                entry = VmEntry::Run;
            }
            Ok(VmExit::Unhandled(what)) => {
                m.fail(format!("vcpu {id}: unhandled exit: {what}"));
                entry = VmEntry::Run;
            }
            Err(e) => {
                m.fail(format!("vcpu {id}: {e}"));
                break;
            }
        }
    }
    vcpu.get_state().ok()
}

/// Run every vCPU on its own thread until the VM stops.  Returns each
/// vCPU's final state, in order.
pub fn run_vcpus(
    m: &Arc<Machine>,
    vcpus: Vec<Vcpu>,
    pins: &[Option<usize>],
) -> Vec<Option<VcpuState>> {
    let mut threads = Vec::new();
    for v in vcpus {
        let m2 = m.clone();
        let id = v.id();
        let pin = pins.get(id).copied().flatten();
        match std::thread::Builder::new()
            .name(format!("vcpu {id}"))
            .spawn(move || {
                if let Some(cpu) = pin {
                    if let Err(e) = pin_to(cpu) {
                        m2.fail(format!("vcpu {id}: pinning to host CPU {cpu}: {e}"));
                    }
                }
                vcpu_loop(&m2, v)
            }) {
            Ok(t) => threads.push(t),
            Err(e) => m.fail(format!("starting vcpu {id} thread: {e}")),
        }
    }
    if let Err(e) = m.handle().spawn_halt_watcher(Duration::from_millis(100)) {
        m.fail(format!("starting halt watcher: {e}"));
    }
    threads
        .into_iter()
        .map(|t| t.join().unwrap_or(None))
        .collect()
}

/// `-p`: bind the calling thread to one host CPU.
fn pin_to(cpu: usize) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET stays inside it
    // (cpu was checked against the host's CPUs); sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The exit status for how the VM stopped.
pub fn exit_status(how: Option<Suspend>, error: bool) -> u8 {
    if error {
        return EXIT_ERROR;
    }
    match how {
        Some(Suspend::Reset) => EXIT_RESET,
        Some(Suspend::Poweroff) => EXIT_POWEROFF,
        Some(Suspend::Halt) => EXIT_HALT,
        Some(Suspend::Triplefault) => EXIT_TRIPLEFAULT,
        Some(Suspend::Destroy) | None => EXIT_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emulation_failure_names_vcpu_rip_and_bytes() {
        assert_eq!(
            emul_failure(1, 0x1000, &[0xd9, 0xe8, 0x0f], None),
            "vcpu 1: instruction emulation failed at rip 0x1000 (bytes: d9 e8 0f)"
        );
        assert_eq!(
            emul_failure(0, 0xffff_ffff_8020_0000, &[], Some("why")),
            "vcpu 0: instruction emulation failed at rip 0xffffffff80200000 (bytes: unknown): why"
        );
    }

    #[test]
    fn exit_statuses_follow_bhyve() {
        assert_eq!(exit_status(Some(Suspend::Reset), false), 0);
        assert_eq!(exit_status(Some(Suspend::Poweroff), false), 1);
        assert_eq!(exit_status(Some(Suspend::Halt), false), 2);
        assert_eq!(exit_status(Some(Suspend::Triplefault), false), 3);
        assert_eq!(exit_status(Some(Suspend::Poweroff), true), 4);
        assert_eq!(exit_status(None, false), 4);
    }
}
