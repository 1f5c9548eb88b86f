//! vmmapi: the libvmmapi analogue.  The only way bhyveload, bhyve and
//! bhyvectl reach vmm-core: create / open / destroy / list instances, set up
//! and reach guest memory, get and set vCPU registers, build the running VM,
//! and talk to the process running an instance.
//!
//! Function names follow libvmmapi (`vm_create`, `vm_setup_memory`,
//! `vm_set_register`, ...) so a bhyve hacker finds their way.

use std::time::{Duration, Instant};

pub use vm_memory;
pub use vmm_core::EventFd;
pub use vmm_core::cpuid::{CpuidOpts, Topology};
pub use vmm_core::ctl::{Request, Response};
pub use vmm_core::instance::{InstanceState, RunLock, RunState, VM_MAXCPU, vmm_dir};
pub use vmm_core::io as vmm_io;
pub use vmm_core::mem::{self, MemLayout, humanize, parse_memsize};
pub use vmm_core::probe::{HostProbe, probe_host};
pub use vmm_core::vcpu_state::{SegDesc, SegReg, Segment, VcpuState, VmReg};
pub use vmm_core::vm::{STAT_NAMES, Suspend, Vcpu, Vm, VmConfig, VmEntry, VmExit, VmHandle};
pub use vmm_core::{Error, Result};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_core::ctl;
use vmm_core::instance::Instance;

/// An open instance (libvmmapi's `struct vmctx`).
#[derive(Debug)]
pub struct VmCtx {
    inst: Instance,
    mem: Option<(MemLayout, GuestMemoryMmap)>,
}

/// One line of `bhyvectl --list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmInfo {
    pub name: String,
    pub memsize: u64,
    pub ncpus: usize,
    /// created / loaded / running / exited / stopped.
    pub state: String,
    pub pid: Option<u32>,
    pub detail: String,
}

/// `vm_create`.
pub fn vm_create(name: &str) -> Result<()> {
    Instance::create(name).map(|_| ())
}

/// `vm_open`.
pub fn vm_open(name: &str) -> Result<VmCtx> {
    Ok(VmCtx {
        inst: Instance::open(name)?,
        mem: None,
    })
}

/// Every instance, with what it is doing.
pub fn vm_list() -> Result<Vec<VmInfo>> {
    let mut v = Vec::new();
    for name in Instance::list()? {
        // An instance may vanish between listing and opening: skip it.
        let Ok(ctx) = vm_open(&name) else { continue };
        let Ok(st) = ctx.inst.read_state() else {
            continue;
        };
        let (state, pid, detail) = match ctx.effective_run_state(&st) {
            RunState::Created => ("created", None, String::new()),
            RunState::Loaded => ("loaded", None, String::new()),
            RunState::Running { pid } => ("running", Some(pid), String::new()),
            RunState::Exited { reason, status } => {
                ("exited", None, format!("{reason} (status {status})"))
            }
        };
        v.push(VmInfo {
            name,
            memsize: st.mem.map(|m| m.size()).unwrap_or(0),
            ncpus: st.ncpus,
            state: state.to_string(),
            pid,
            detail,
        });
    }
    Ok(v)
}

/// `vm_destroy`: free the instance.  A running instance is asked to stop
/// first (as bhyve stops when its VM is destroyed); a runner that does not
/// stop within a few seconds is killed.
pub fn vm_destroy(name: &str) -> Result<()> {
    let ctx = vm_open(name)?;
    let lock = match ctx.inst.lock_run() {
        Ok(l) => l,
        Err(Error::Busy { pid, .. }) => {
            let _ = ctl::request(&ctx.inst, &Request::Destroy);
            match wait_for_run_lock(&ctx.inst, Duration::from_secs(10)) {
                Some(l) => l,
                None => {
                    if pid != 0 {
                        // SAFETY: kill(2) with a pid read from the instance.
                        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                    }
                    wait_for_run_lock(&ctx.inst, Duration::from_secs(5)).ok_or(Error::Busy {
                        name: name.into(),
                        pid,
                    })?
                }
            }
        }
        Err(e) => return Err(e),
    };
    let VmCtx { inst, mem } = ctx;
    drop(mem);
    let r = inst.destroy();
    drop(lock);
    r
}

fn wait_for_run_lock(inst: &Instance, d: Duration) -> Option<RunLock> {
    let t = Instant::now();
    loop {
        if let Ok(l) = inst.lock_run() {
            return Some(l);
        }
        if t.elapsed() > d {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl VmCtx {
    pub fn name(&self) -> &str {
        self.inst.name()
    }

    pub fn state(&self) -> Result<InstanceState> {
        self.inst.read_state()
    }

    /// The run state as it really is: "running" whose runner died (its
    /// lock is gone) reads as exited.
    fn effective_run_state(&self, st: &InstanceState) -> RunState {
        match &st.run {
            RunState::Running { pid } if !self.inst.is_locked() => RunState::Exited {
                reason: format!("runner pid {pid} died"),
                status: -1,
            },
            r => r.clone(),
        }
    }

    pub fn vm_get_run_state(&self) -> Result<RunState> {
        let st = self.inst.read_state()?;
        Ok(self.effective_run_state(&st))
    }

    /// The pid of the process running this instance, if one is.
    pub fn running_pid(&self) -> Option<u32> {
        match self.vm_get_run_state() {
            Ok(RunState::Running { pid }) => Some(pid),
            _ => None,
        }
    }

    /// Take the instance for running or loading; refused while another
    /// process has it.
    pub fn vm_lock(&self) -> Result<RunLock> {
        self.inst.lock_run()
    }

    /// `vm_setup_memory`.
    pub fn vm_setup_memory(&mut self, size: u64) -> Result<MemLayout> {
        self.mem = None;
        self.inst.setup_memory(size)
    }

    fn memory(&mut self) -> Result<&(MemLayout, GuestMemoryMmap)> {
        if self.mem.is_none() {
            self.mem = Some(self.inst.map_memory()?);
        }
        self.mem.as_ref().ok_or_else(|| Error::NoMemory {
            name: self.name().to_string(),
        })
    }

    pub fn vm_get_memory_layout(&self) -> Result<Option<MemLayout>> {
        Ok(self.inst.read_state()?.mem)
    }

    /// `vm_get_lowmem_size`.
    pub fn vm_get_lowmem_size(&self) -> Result<u64> {
        Ok(self.vm_get_memory_layout()?.map(|m| m.lowmem).unwrap_or(0))
    }

    /// `vm_get_highmem_size`.
    pub fn vm_get_highmem_size(&self) -> Result<u64> {
        Ok(self.vm_get_memory_layout()?.map(|m| m.highmem).unwrap_or(0))
    }

    /// Bytes of RAM the instance occupies on the host (pages ever touched).
    pub fn vm_get_resident(&self) -> Result<u64> {
        self.inst.memory_resident()
    }

    /// The instance's memory as a mapping this process can keep (cheap to
    /// clone: regions are shared), with its layout; `vm_map_gpa` for
    /// callers that touch memory a lot (the loader).
    pub fn vm_guest_memory(&mut self) -> Result<(MemLayout, GuestMemoryMmap)> {
        let (l, gm) = self.memory()?;
        Ok((*l, gm.clone()))
    }

    /// `vm_map_gpa` checks, then copy into guest memory.
    pub fn vm_copyin(&mut self, gpa: u64, data: &[u8]) -> Result<()> {
        let len = data.len() as u64;
        let (layout, gm) = self.memory()?;
        layout
            .gpa_to_offset(gpa, len)
            .ok_or(Error::BadGpa { gpa, len })?;
        gm.write_slice(data, GuestAddress(gpa))
            .map_err(|_| Error::BadGpa { gpa, len })
    }

    /// Copy out of guest memory.
    pub fn vm_copyout(&mut self, gpa: u64, data: &mut [u8]) -> Result<()> {
        let len = data.len() as u64;
        let (layout, gm) = self.memory()?;
        layout
            .gpa_to_offset(gpa, len)
            .ok_or(Error::BadGpa { gpa, len })?;
        gm.read_slice(data, GuestAddress(gpa))
            .map_err(|_| Error::BadGpa { gpa, len })
    }

    fn check_vcpu(&self, st: &InstanceState, vcpu: usize) -> Result<()> {
        if vcpu >= VM_MAXCPU {
            return Err(Error::BadVcpu {
                vcpu,
                max: VM_MAXCPU,
            });
        }
        let _ = st;
        Ok(())
    }

    /// The state of `vcpu`: live from the running process if one runs the
    /// instance, else the saved state.
    pub fn vm_get_vcpu_state(&self, vcpu: usize) -> Result<VcpuState> {
        let st = self.inst.read_state()?;
        self.check_vcpu(&st, vcpu)?;
        if let RunState::Running { .. } = self.effective_run_state(&st) {
            if let Response::State { vcpus, .. } = ctl::request(&self.inst, &Request::GetState)? {
                if let Some(s) = vcpus.get(vcpu) {
                    return Ok(s.clone());
                }
            }
        }
        Ok(st.vcpus.get(vcpu).cloned().unwrap_or_default())
    }

    /// Change the saved state of `vcpu` (refused while the VM runs: as on
    /// FreeBSD, registers of a running vCPU cannot be set).
    pub fn vm_update_vcpu(&self, vcpu: usize, f: impl FnOnce(&mut VcpuState)) -> Result<()> {
        let name = self.name().to_string();
        let running = self.running_pid();
        self.inst.update(|st| {
            if let Some(pid) = running {
                return Err(Error::Busy { name, pid });
            }
            self.check_vcpu(st, vcpu)?;
            while st.vcpus.len() <= vcpu {
                st.vcpus.push(VcpuState::default());
            }
            f(&mut st.vcpus[vcpu]);
            Ok(())
        })
    }

    /// `vm_get_register`.
    pub fn vm_get_register(&self, vcpu: usize, reg: VmReg) -> Result<u64> {
        Ok(self.vm_get_vcpu_state(vcpu)?.get(reg))
    }

    /// `vm_set_register`.
    pub fn vm_set_register(&self, vcpu: usize, reg: VmReg, val: u64) -> Result<()> {
        self.vm_update_vcpu(vcpu, |s| s.set(reg, val))
    }

    /// `vm_get_desc`.
    pub fn vm_get_desc(&self, vcpu: usize, seg: SegReg) -> Result<SegDesc> {
        Ok(self.vm_get_vcpu_state(vcpu)?.desc(seg))
    }

    /// `vm_set_desc`.
    pub fn vm_set_desc(&self, vcpu: usize, seg: SegReg, d: SegDesc) -> Result<()> {
        self.vm_update_vcpu(vcpu, |s| s.set_desc(seg, d))
    }

    /// `vm_setup_freebsd_registers`.
    pub fn vm_setup_freebsd_registers(
        &self,
        vcpu: usize,
        rip: u64,
        cr3: u64,
        gdtbase: u64,
        rsp: u64,
    ) -> Result<()> {
        self.vm_update_vcpu(vcpu, |s| s.setup_freebsd(rip, cr3, gdtbase, rsp))
    }

    /// `vm_reinit`: vCPUs back to reset, as bhyveload does when it finds the
    /// instance already exists (a guest rebooting).
    pub fn vm_reinit(&self) -> Result<()> {
        let name = self.name().to_string();
        let running = self.running_pid();
        self.inst.update(|st| {
            if let Some(pid) = running {
                return Err(Error::Busy { name, pid });
            }
            st.vcpus = vec![VcpuState::default()];
            st.run = RunState::Created;
            st.stats.clear();
            Ok(())
        })
    }

    /// Mark the instance ready to boot (bhyveload's success).
    pub fn vm_set_loaded(&self) -> Result<()> {
        self.inst.update(|st| {
            st.run = RunState::Loaded;
            Ok(())
        })
    }

    /// Counters of `vcpu`: live when running, else from the last run.
    pub fn vm_get_stats(&self, vcpu: usize) -> Result<Vec<(String, u64)>> {
        let st = self.inst.read_state()?;
        self.check_vcpu(&st, vcpu)?;
        if let RunState::Running { .. } = self.effective_run_state(&st) {
            if let Response::State { stats, .. } = ctl::request(&self.inst, &Request::GetState)? {
                return Ok(stats.get(vcpu).cloned().unwrap_or_default());
            }
        }
        Ok(st
            .stats
            .get(vcpu)
            .cloned()
            .unwrap_or_else(|| STAT_NAMES.iter().map(|n| (n.to_string(), 0)).collect()))
    }

    fn ask_runner(&self, req: &Request) -> Result<()> {
        if self.running_pid().is_none() {
            return Err(Error::Ctl {
                name: self.name().to_string(),
                why: "not running".into(),
            });
        }
        match ctl::request(&self.inst, req)? {
            Response::Err { why } => Err(Error::Ctl {
                name: self.name().to_string(),
                why,
            }),
            _ => Ok(()),
        }
    }

    /// `vm_suspend` of a running instance (bhyvectl --force-reset /
    /// --force-poweroff).
    pub fn vm_suspend(&self, how: Suspend) -> Result<()> {
        self.ask_runner(&Request::Suspend { how })
    }

    /// `vm_inject_nmi`.
    pub fn vm_inject_nmi(&self, vcpu: usize) -> Result<()> {
        self.ask_runner(&Request::InjectNmi { vcpu })
    }

    /// A BREAK on COM port `port` (`com1`..`com4`) of the running VM.
    pub fn vm_uart_break(&self, port: &str) -> Result<()> {
        self.ask_runner(&Request::UartBreak {
            port: port.to_string(),
        })
    }

    /// Build the KVM VM for this instance in this process (bhyve).  The
    /// caller holds the run lock.
    pub fn vm_build(&self, cfg: VmConfig) -> Result<Vm> {
        Vm::create(&self.inst, cfg)
    }

    /// Record that this process runs the instance with `ncpus` vCPUs.
    pub fn vm_begin_run(&self, ncpus: usize) -> Result<()> {
        self.inst.update(|st| {
            st.run = RunState::Running {
                pid: std::process::id(),
            };
            st.ncpus = ncpus;
            Ok(())
        })
    }

    /// Write back the final vCPU state and counters and how the run ended.
    pub fn vm_end_run(
        &self,
        vcpus: Vec<Option<VcpuState>>,
        stats: Vec<Vec<(String, u64)>>,
        reason: &str,
        status: i32,
    ) -> Result<()> {
        self.inst.update(|st| {
            for (i, s) in vcpus.into_iter().enumerate() {
                if let Some(s) = s {
                    while st.vcpus.len() <= i {
                        st.vcpus.push(VcpuState::default());
                    }
                    st.vcpus[i] = s;
                }
            }
            st.stats = stats;
            st.run = RunState::Exited {
                reason: reason.to_string(),
                status,
            };
            Ok(())
        })
    }

    /// Serve bhyvectl's live requests for this instance from a thread.
    pub fn vm_serve_ctl(
        &self,
        handler: std::sync::Arc<dyn Fn(Request) -> Response + Send + Sync>,
    ) -> Result<()> {
        ctl::serve(&self.inst.ctl_path(), handler).map_err(|e| Error::Ctl {
            name: self.name().to_string(),
            why: e.to_string(),
        })
    }

    /// Consume the handle and destroy the instance (the caller holds the run
    /// lock, e.g. bhyve -D or a failed bhyveload).
    pub fn vm_destroy_locked(self) -> Result<()> {
        self.inst.destroy()
    }
}
