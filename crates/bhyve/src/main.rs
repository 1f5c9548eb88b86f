//! bhyve: run a vmm instance on bhyve's machine (bhyve(8)).

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use bhyve::bhyverun::{self, EXIT_ERROR, Machine};
use bhyve::config::{Config, ConfigError, LPC_DEVICES, PCI_EMULATIONS};
use bhyve::devices::{self, Wiring};
use bhyve::irq::{IsaIrq, VmIrqSink};
use bhyve::{pci_emul, tables, term};
use clap::{Arg, ArgAction, Command};
use vmmapi::{CpuidOpts, Response, Topology, VM_MAXCPU, VmConfig};

fn cli() -> Command {
    let s = |id: &'static str, short: char, v: &'static str, help: &'static str| {
        Arg::new(id)
            .short(short)
            .value_name(v)
            .action(ArgAction::Append)
            .help(help)
    };
    let f = |id: &'static str, short: char, help: &'static str| {
        Arg::new(id)
            .short(short)
            .action(ArgAction::SetTrue)
            .help(help)
    };
    Command::new("bhyve")
        .about("Run a bhyve-rs virtual machine")
        .override_usage(
            "bhyve [-aCDeHhPSuWwxY] [-c [[cpus=]numcpus][,sockets=n][,cores=n][,threads=n]]\n       \
             [-k config_file] [-l lpc] [-m mem] [-o var=value] [-p vcpu:hostcpu]\n       \
             [-s pci] [-S slot,emul[,conf]] vmname",
        )
        .disable_help_flag(true)
        .arg(f("help", 'h', "Print help"))
        .arg(f("acpi", 'A', "Build ACPI tables (the default; accepted for compatibility)"))
        .arg(f("xapic", 'a', "Local APIC in xAPIC mode (the default)"))
        .arg(f("incore", 'C', "Include guest memory in core files"))
        .arg(f("destroy", 'D', "Destroy the VM on guest-initiated power-off"))
        .arg(f("strictio", 'e', "Exit on unhandled I/O port accesses"))
        .arg(f("yield_hlt", 'H', "vCPUs yield on HLT (always: HLT blocks in the kernel)"))
        .arg(f("ioapic", 'I', "Present an I/O APIC (always; accepted for compatibility)"))
        .arg(f("pause", 'P', "vCPUs exit on PAUSE"))
        .arg(f("wired", 'S', "Wire guest memory"))
        .arg(f("utc", 'u', "RTC keeps UTC time"))
        .arg(f("nomsix", 'W', "virtio devices use MSI instead of MSI-X"))
        .arg(f("lenient_msr", 'w', "Ignore accesses to unimplemented MSRs"))
        .arg(f("x2apic", 'x', "Local APIC in x2APIC mode"))
        .arg(f("nomptable", 'Y', "Do not build the MP table"))
        .arg(s("cpus", 'c', "CPUS", "vCPUs and topology"))
        .arg(s("config", 'k', "FILE", "Read key=value configuration"))
        .arg(s("lpc", 'l', "LPCDEV", "LPC device: com1..com4,stdio|/dev/pts/N (-l help)"))
        .arg(s("mem", 'm', "SIZE", "Guest memory (default 256M; plain number = MiB)"))
        .arg(s("opt", 'o', "VAR=VALUE", "Set a configuration variable"))
        .arg(s("pin", 'p', "VCPU:HOSTCPU", "Pin a vCPU to a host CPU"))
        .arg(s("slot", 's', "SLOT,EMUL[,CONF]", "PCI device (-s help)"))
        .arg(
            Arg::new("legacy_slot")
                .long("legacy-slot")
                .value_name("SLOT,EMUL[,CONF]")
                .action(ArgAction::Append)
                .hide(true),
        )
        .arg(Arg::new("vmname").value_name("vmname"))
}

/// `-S` is two options: alone it wires memory (today's meaning), followed by
/// a slot spec it is the 2013 legacy-interrupt slot.
fn split_legacy_s(args: Vec<String>) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut it = args.into_iter().peekable();
    while let Some(a) = it.next() {
        if a == "-S" {
            let next_is_slot = it.peek().is_some_and(|n| {
                n.split(',').next().is_some_and(|loc| {
                    !loc.is_empty() && loc.split(':').all(|p| p.parse::<u32>().is_ok())
                }) && n.contains(',')
            });
            if next_is_slot {
                out.push("--legacy-slot".to_string());
                out.extend(it.next());
                continue;
            }
        }
        out.push(a);
    }
    out
}

enum Parsed {
    Run(Config),
    Exit(u8),
}

fn parse(args: Vec<String>) -> Result<Parsed, ConfigError> {
    let m = cli()
        .try_get_matches_from(split_legacy_s(args))
        .map_err(|e| ConfigError::Usage(e.to_string().trim_end().to_string()))?;
    if m.get_flag("help") {
        // A closed pipe (`| head`) is no error worth a panic.
        let _ = writeln!(std::io::stdout(), "{}", cli().render_long_help());
        return Ok(Parsed::Exit(0));
    }
    let vals = |id: &str| -> Vec<String> {
        m.get_many::<String>(id)
            .map(|v| v.cloned().collect())
            .unwrap_or_default()
    };
    if vals("slot").iter().any(|s| s == "help") {
        let _ = writeln!(std::io::stdout(), "{}", PCI_EMULATIONS.join("\n"));
        return Ok(Parsed::Exit(0));
    }
    if vals("lpc").iter().any(|s| s == "help") {
        let _ = writeln!(std::io::stdout(), "{}", LPC_DEVICES.join("\n"));
        return Ok(Parsed::Exit(0));
    }
    let mut c = Config::with_defaults();
    for (flag, key, val) in [
        ("x2apic", "x86.x2apic", "true"),
        ("xapic", "x86.x2apic", "false"),
        ("incore", "memory.guest_in_core", "true"),
        ("destroy", "destroy_on_poweroff", "true"),
        ("strictio", "x86.strictio", "true"),
        ("yield_hlt", "x86.vmexit_on_hlt", "true"),
        ("pause", "x86.vmexit_on_pause", "true"),
        ("wired", "memory.wired", "true"),
        ("utc", "rtc.use_localtime", "false"),
        ("nomsix", "virtio_msix", "false"),
        ("lenient_msr", "x86.strictmsr", "false"),
        ("nomptable", "x86.mptable", "false"),
    ] {
        if m.get_flag(flag) {
            c.set(key, val);
        }
    }
    for k in vals("config") {
        c.read_file(&k)?;
    }
    for v in vals("cpus") {
        c.parse_cpus(&v)?;
    }
    for v in vals("mem") {
        c.parse_mem(&v)?;
    }
    for v in vals("slot") {
        c.parse_slot(&v, false)?;
    }
    for v in vals("legacy_slot") {
        c.parse_slot(&v, true)?;
    }
    for v in vals("lpc") {
        c.parse_lpc(&v)?;
    }
    for v in vals("pin") {
        c.parse_pin(&v)?;
    }
    for v in vals("opt") {
        c.set_opt(&v)?;
    }
    if let Some(n) = m.get_one::<String>("vmname") {
        c.set("name", n);
    }
    if c.get_bool("config.dump")? {
        let _ = write!(std::io::stdout(), "{}", c.dump());
        return Ok(Parsed::Exit(0));
    }
    if c.get("name").is_none() {
        return Err(ConfigError::Usage(format!(
            "missing vmname\nusage: {}",
            cli()
                .render_usage()
                .to_string()
                .trim_start_matches("Usage: ")
        )));
    }
    Ok(Parsed::Run(c))
}

fn fatal(msg: impl std::fmt::Display) -> ExitCode {
    term::restore();
    eprintln!("bhyve: {msg}");
    ExitCode::from(EXIT_ERROR)
}

fn run(c: Config) -> ExitCode {
    let name = c.get("name").unwrap_or_default().to_string();
    let (ncpus, sockets, cores, threads) = match c.topology(VM_MAXCPU) {
        Ok(t) => t,
        Err(e) => return fatal(e),
    };
    let memsize = match c.memsize() {
        Ok(m) => m,
        Err(e) => return fatal(e),
    };
    // SAFETY: sysconf has no preconditions.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    // cpu_set_t holds CPU_SETSIZE (1024) CPUs.
    let host_cpus = usize::try_from(online).unwrap_or(1).clamp(1, 1024);
    let pins = match c.pins(ncpus, host_cpus) {
        Ok(p) => p,
        Err(e) => return fatal(e),
    };
    let strictmsr = match c.get_bool("x86.strictmsr") {
        Ok(b) => b,
        Err(e) => return fatal(e),
    };
    let strictio = match c.get_bool("x86.strictio") {
        Ok(b) => b,
        Err(e) => return fatal(e),
    };
    let smap = match c.smap() {
        Ok(s) => s,
        Err(e) => return fatal(e),
    };
    let mut ctx = match vmmapi::vm_open(&name) {
        Ok(c) => c,
        Err(vmmapi::Error::NoSuchVm { .. }) => {
            return fatal(format!("no VM named {name}; create it with bhyveload"));
        }
        Err(e) => return fatal(e),
    };
    let _lock = match ctx.vm_lock() {
        Ok(l) => l,
        Err(vmmapi::Error::Busy { pid, .. }) => {
            return fatal(format!("VM {name} is already running (pid {pid})"));
        }
        Err(e) => return fatal(e),
    };
    match ctx.vm_get_memory_layout() {
        Ok(Some(l)) if l.size() != memsize => {
            return fatal(format!(
                "VM {name} has {} of memory (from bhyveload -m) but -m asks for {}",
                vmmapi::humanize(l.size()),
                vmmapi::humanize(memsize)
            ));
        }
        Ok(Some(_)) => {}
        Ok(None) => {
            if let Err(e) = ctx.vm_setup_memory(memsize) {
                return fatal(e);
            }
        }
        Err(e) => return fatal(e),
    }
    let state = match ctx.state() {
        Ok(s) => s,
        Err(e) => return fatal(e),
    };
    // Backends (disk images, taps, consoles) are opened before anything
    // changes, so a bad one leaves the instance as it was.
    let mut plan = match devices::plan(&c, ncpus) {
        Ok(p) => p,
        Err(e) => return fatal(e),
    };
    // SMAP only where CLAC/STAC run in a guest without a trip to user
    // space (x86.smap=auto probes; inst_emul completes them either way).
    let hide_smap = match smap {
        Some(offer) => !offer,
        None => match vmmapi::probe_host() {
            Ok(p) => !p.clac_stac,
            Err(e) => return fatal(e),
        },
    };
    let vm = match ctx.vm_build(VmConfig {
        ncpus,
        cpuid: CpuidOpts {
            topology: Topology {
                sockets,
                cores,
                threads,
            },
            x2apic: c.get_bool("x86.x2apic").unwrap_or(false),
            hide_smap,
        },
        lenient_msr: !strictmsr,
    }) {
        Ok(vm) => vm,
        Err(e) => return fatal(e),
    };
    let vm = Arc::new(vm);
    let machine = Arc::new(Machine::new(vm.clone(), strictio));
    let h = vm.handle();
    let pci_ttys = devices::take_pci_ttys(&mut plan);
    let mevent = match bhyve::mevent::Mevent::start() {
        Ok(m) => m,
        Err(e) => return fatal(format!("starting the event loop: {e}")),
    };
    let virtio = pci_emul::VirtioBackends {
        mem: vm.memory().clone(),
        msi: vm.clone(),
        disks: devices::take_pci_disks(&mut plan),
    };
    let mut attached = match devices::attach(
        plan,
        Wiring {
            inout: &machine.inout,
            mem: &machine.mem,
            isa_irq: &|gsi| Arc::new(IsaIrq::new(vm.clone(), gsi)),
            irqs: Arc::new(VmIrqSink::new(vm.clone())),
            suspend: Arc::new(move |how| h.suspend(how)),
            mevent: mevent.clone(),
        },
    ) {
        Ok(a) => a,
        Err(e) => return fatal(e),
    };
    // Bus 0 after the platform devices, which own the ISA IRQs it must
    // route around; kept alive for the whole run.
    let pci = match pci_emul::attach_pci(
        &machine,
        &c,
        &|gsi| Arc::new(IsaIrq::new(vm.clone(), gsi)),
        pci_ttys,
        Some(virtio),
        &mevent,
    ) {
        Ok(p) => p,
        Err(e) => return fatal(e),
    };
    devices::describe_pci(&mut attached.tables, &pci);
    if let Err(e) = tables::install(&attached.tables, vm.memory()) {
        return fatal(e);
    }
    let callout = match attached.callout.start() {
        Ok(c) => c,
        Err(e) => return fatal(format!("starting the timer thread: {e}")),
    };
    let mut vcpus = Vec::new();
    for i in 0..ncpus {
        let st = if i == 0 { state.vcpus.first() } else { None };
        match vm.create_vcpu(i, st) {
            Ok(v) => vcpus.push(v),
            Err(e) => return fatal(e),
        }
    }
    if let Err(e) = ctx.vm_begin_run(ncpus) {
        return fatal(e);
    }
    let h = vm.handle();
    let coms = attached.coms.clone();
    let served = ctx.vm_serve_ctl(Arc::new(move |req| match req {
        vmmapi::Request::GetState => Response::State {
            vcpus: h
                .snapshot()
                .into_iter()
                .map(|s| s.unwrap_or_default())
                .collect(),
            stats: h.stats(),
        },
        vmmapi::Request::Suspend { how } => {
            h.suspend(how);
            Response::Ok
        }
        vmmapi::Request::UartBreak { port } => {
            let found = coms.iter().find(|c| {
                c.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .name()
                    .eq_ignore_ascii_case(&port)
            });
            match found {
                Some(c) => {
                    c.lock().unwrap_or_else(|e| e.into_inner()).send_break();
                    Response::Ok
                }
                None => Response::Err {
                    why: format!("no COM port {port:?} (com1..com4)"),
                },
            }
        }
        vmmapi::Request::InjectNmi { vcpu } => {
            if h.inject_nmi(vcpu) {
                Response::Ok
            } else {
                Response::Err {
                    why: format!("no vcpu {vcpu}"),
                }
            }
        }
        vmmapi::Request::Destroy => {
            h.suspend(vmmapi::Suspend::Destroy);
            Response::Ok
        }
    }));
    if let Err(e) = served {
        return fatal(e);
    }
    let signals = devices::handle_signals(&machine, attached.pm.clone());
    let finals = bhyverun::run_vcpus(&machine, vcpus, &pins);
    callout.stop();
    let how = vm.handle().suspended();
    let err = machine.error();
    let status = bhyverun::exit_status(how, err.is_some());
    let reason = match (&err, how) {
        (Some(e), _) => e.clone(),
        (None, Some(h)) => h.name().to_string(),
        (None, None) => "unknown".to_string(),
    };
    let stats = vm.handle().stats();
    term::restore();
    if let Some(e) = &err {
        eprintln!("bhyve: {e}");
    }
    if let Err(e) = ctx.vm_end_run(finals, stats, &reason, status.into()) {
        eprintln!("bhyve: {e}");
    }
    if how == Some(vmmapi::Suspend::Poweroff) && c.get_bool("destroy_on_poweroff").unwrap_or(false)
    {
        drop(_lock);
        if let Err(e) = vmmapi::vm_destroy(&name) {
            eprintln!("bhyve: {e}");
        }
    }
    if let Some(sig) = signals.fatal_signal() {
        // Stopped by a signal before the guest enabled ACPI: die of it, as
        // bhyve does, once the state is saved and the terminal restored.
        devices::reraise(sig);
    }
    ExitCode::from(status)
}

fn main() -> ExitCode {
    term::install_panic_hook();
    devices::block_signals();
    match parse(std::env::args().collect()) {
        Ok(Parsed::Run(c)) => run(c),
        Ok(Parsed::Exit(n)) => ExitCode::from(n),
        Err(e) => fatal(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn original_session_command_line() {
        let Parsed::Run(c) = parse(args(
            "bhyve -A -I -m 1024 -s 0:0,virtio-blk,disk.img -S 31,uart,stdio guest0",
        ))
        .unwrap() else {
            panic!("no run")
        };
        assert_eq!(c.get("name"), Some("guest0"));
        assert_eq!(c.get("pci.0.31.0.legacy"), Some("true"));
        assert_eq!(c.get("memory.wired"), None);
        assert_eq!(c.memsize().unwrap(), 1 << 30);
    }

    #[test]
    fn modern_command_line() {
        let Parsed::Run(c) = parse(args(
            "bhyve -A -H -P -c 2 -m 1G -s 0,hostbridge -s 31,lpc -l com1,stdio -S -u guest0",
        ))
        .unwrap() else {
            panic!("no run")
        };
        assert_eq!(c.get("memory.wired"), Some("true"));
        assert_eq!(c.get("lpc.com1.path"), Some("stdio"));
        assert_eq!(c.topology(16).unwrap().0, 2);
        assert_eq!(c.get("rtc.use_localtime"), Some("false"));
    }

    #[test]
    fn errors() {
        assert!(parse(args("bhyve -s 3,nonsense g")).is_err());
        assert!(parse(args("bhyve -c 0 g")).is_err());
        assert!(parse(args("bhyve -m huge g")).is_err());
        assert!(parse(args("bhyve -Z g")).is_err());
        assert!(parse(args("bhyve -s 3,uart -s 3,uart g")).is_err());
        assert!(parse(args("bhyve -m 1G")).is_err(), "no vmname");
        assert!(matches!(parse(args("bhyve -s help")), Ok(Parsed::Exit(0))));
        assert!(matches!(
            parse(args("bhyve -o config.dump=1 g")),
            Ok(Parsed::Exit(0))
        ));
    }
}
