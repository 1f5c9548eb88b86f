//! bhyvectl: inspect and control vmm instances, with FreeBSD's spelling and
//! output (bhyvectl(8); bhyve-platform.md §1.6).

use std::process::ExitCode;

use clap::{Arg, ArgAction, ArgMatches, Command};
use vmmapi::{SegDesc, SegReg, Suspend, VmCtx, VmReg};

#[derive(Debug, thiserror::Error)]
enum CtlError {
    #[error("VM:{0} is not created.")]
    NotCreated(String),
    #[error("{0}")]
    Vmm(#[from] vmmapi::Error),
    #[error("invalid value {value:?} for --{opt}: {why}")]
    BadValue {
        opt: String,
        value: String,
        why: &'static str,
    },
    #[error("--{0} needs --desc-base, --desc-limit and --desc-access")]
    DescArgs(String),
    #[error("--vm=NAME is required")]
    NoVm,
}

fn parse_num(opt: &str, s: &str) -> Result<u64, CtlError> {
    let bad = || CtlError::BadValue {
        opt: opt.to_string(),
        value: s.to_string(),
        why: "not a number",
    };
    let t = s.trim();
    if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).map_err(|_| bad())
    } else if t.len() > 1 && t.starts_with('0') {
        u64::from_str_radix(&t[1..], 8).map_err(|_| bad())
    } else {
        t.parse().map_err(|_| bad())
    }
}

/// Registers with bhyvectl's --get-/--set- options (selectors included).
fn reg_opts() -> impl Iterator<Item = VmReg> {
    VmReg::ALL.into_iter()
}

fn cli() -> Command {
    let mut c = Command::new("bhyvectl")
        .about("Control and inspect bhyve-rs virtual machines")
        .arg(Arg::new("vm").long("vm").value_name("NAME").help("VM name"))
        .arg(
            Arg::new("cpu")
                .long("cpu")
                .value_name("N")
                .default_value("0")
                .help("vCPU number (default 0)"),
        )
        .arg(flag("create", "Create the VM"))
        .arg(flag(
            "destroy",
            "Destroy the VM (stopping it first if it runs)",
        ))
        .arg(flag("list", "List every VM: memory, vCPUs, state"))
        .arg(flag("json", "With --list: print JSON"))
        .arg(flag("get-all", "Print every register of the vCPU"))
        .arg(flag("get-stats", "Print the vCPU's counters"))
        .arg(flag("get-lowmem", "Print the low memory segment"))
        .arg(flag("get-highmem", "Print the high memory segment"))
        .arg(flag("get-memmap", "Print the guest memory map"))
        .arg(flag("get-memseg", "Print the memory segments"))
        .arg(flag("force-reset", "Force a reset of the running VM"))
        .arg(flag(
            "force-poweroff",
            "Force a power-off of the running VM",
        ))
        .arg(flag("inject-nmi", "Inject an NMI into the vCPU"))
        .arg(
            Arg::new("send-break")
                .long("send-break")
                .value_name("comN")
                .help("Send a BREAK on a COM port of the running VM (e.g. SysRq for Linux)"),
        )
        .arg(
            Arg::new("set-mem")
                .long("set-mem")
                .value_name("MB")
                .help("Give the VM memory (MiB, rounded up to 2 MiB)"),
        )
        .arg(Arg::new("desc-base").long("desc-base").value_name("BASE"))
        .arg(
            Arg::new("desc-limit")
                .long("desc-limit")
                .value_name("LIMIT"),
        )
        .arg(
            Arg::new("desc-access")
                .long("desc-access")
                .value_name("ACCESS"),
        );
    for r in reg_opts() {
        let n = r.name();
        c = c.arg(flag_owned(format!("get-{n}")).hide(true)).arg(
            Arg::new(format!("set-{n}"))
                .long(format!("set-{n}"))
                .value_name("VALUE")
                .hide(true),
        );
    }
    for s in SegReg::ALL {
        let n = s.name();
        c = c
            .arg(flag_owned(format!("get-desc-{n}")).hide(true))
            .arg(flag_owned(format!("set-desc-{n}")).hide(true));
    }
    for n in ["gdtr", "idtr"] {
        c = c.arg(flag_owned(format!("get-{n}")).hide(true));
    }
    c.after_help(
        "Registers: --get-<reg> / --set-<reg>=VALUE for rax rbx rcx rdx rsi rdi rbp rsp \
         r8-r15 rip rflags cr0 cr2 cr3 cr4 dr0-dr3 dr6 dr7 efer and the selectors \
         cs ds es fs gs ss tr ldtr.\nDescriptors: --get-desc-<seg> / --set-desc-<seg> \
         --desc-base=B --desc-limit=L --desc-access=A for cs ds es fs gs ss tr ldtr gdtr idtr.",
    )
}

fn flag(name: &'static str, help: &'static str) -> Arg {
    Arg::new(name)
        .long(name)
        .action(ArgAction::SetTrue)
        .help(help)
}

fn flag_owned(name: String) -> Arg {
    Arg::new(name.clone()).long(name).action(ArgAction::SetTrue)
}

fn on(m: &ArgMatches, id: &str) -> bool {
    m.get_flag(id)
}

fn print_reg(vcpu: usize, r: VmReg, v: u64) {
    let n = r.name();
    if r.is_selector() {
        println!("{n}[{vcpu}]\t\t0x{v:04x}");
    } else if n.len() >= 6 {
        println!("{n}[{vcpu}]\t0x{v:016x}");
    } else {
        println!("{n}[{vcpu}]\t\t0x{v:016x}");
    }
}

fn print_desc(vcpu: usize, s: SegReg, d: SegDesc) {
    match s {
        SegReg::Gdtr | SegReg::Idtr => {
            println!(
                "{}[{vcpu}]\t\t0x{:016x}/0x{:08x}",
                s.name(),
                d.base,
                d.limit
            )
        }
        _ => println!(
            "{} desc[{vcpu}]\t0x{:016x}/0x{:08x}/0x{:08x}",
            s.name(),
            d.base,
            d.limit,
            d.access
        ),
    }
}

fn list(json: bool) -> Result<(), CtlError> {
    let vms = vmmapi::vm_list()?;
    if json {
        let v: Vec<_> = vms
            .iter()
            .map(|i| {
                serde_json::json!({
                    "name": i.name, "memsize": i.memsize, "ncpus": i.ncpus,
                    "state": i.state, "pid": i.pid, "detail": i.detail,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(v));
        return Ok(());
    }
    println!("{:<24} {:>8} {:>5}  STATE", "NAME", "MEMORY", "VCPUS");
    for i in vms {
        let mut st = i.state.clone();
        if let Some(p) = i.pid {
            st = format!("{st} (pid {p})");
        }
        if !i.detail.is_empty() {
            st = format!("{st}: {}", i.detail);
        }
        println!(
            "{:<24} {:>8} {:>5}  {st}",
            i.name,
            vmmapi::humanize(i.memsize),
            i.ncpus
        );
    }
    Ok(())
}

fn run(m: &ArgMatches) -> Result<(), CtlError> {
    if on(m, "list") {
        return list(on(m, "json"));
    }
    let name = m.get_one::<String>("vm").ok_or(CtlError::NoVm)?.clone();
    let vcpu = {
        let s = m
            .get_one::<String>("cpu")
            .map(String::as_str)
            .unwrap_or("0");
        parse_num("cpu", s)? as usize
    };
    if on(m, "create") {
        vmmapi::vm_create(&name)?;
    }
    let open = |n: &str| -> Result<VmCtx, CtlError> {
        vmmapi::vm_open(n).map_err(|e| match e {
            vmmapi::Error::NoSuchVm { .. } => CtlError::NotCreated(n.to_string()),
            e => e.into(),
        })
    };
    let mut ctx = open(&name)?;
    if let Some(mb) = m.get_one::<String>("set-mem") {
        let mb = parse_num("set-mem", mb)?;
        let bytes = mb
            .checked_mul(vmmapi::mem::MB)
            .and_then(|b| b.checked_next_multiple_of(vmmapi::mem::MEM_ALIGN))
            .ok_or(CtlError::BadValue {
                opt: "set-mem".into(),
                value: mb.to_string(),
                why: "too large",
            })?;
        ctx.vm_setup_memory(bytes)?;
    }
    for r in reg_opts() {
        if let Some(v) = m.get_one::<String>(&format!("set-{}", r.name())) {
            let v = parse_num(&format!("set-{}", r.name()), v)?;
            ctx.vm_set_register(vcpu, r, v)?;
        }
    }
    for s in SegReg::ALL {
        let opt = format!("set-desc-{}", s.name());
        if on(m, &opt) {
            let get = |k: &str| -> Result<u64, CtlError> {
                let v = m
                    .get_one::<String>(k)
                    .ok_or_else(|| CtlError::DescArgs(opt.clone()))?;
                parse_num(k, v)
            };
            let d = SegDesc {
                base: get("desc-base")?,
                limit: get("desc-limit")? as u32,
                access: get("desc-access")? as u32,
            };
            ctx.vm_set_desc(vcpu, s, d)?;
        }
    }
    if on(m, "inject-nmi") {
        ctx.vm_inject_nmi(vcpu)?;
    }
    if let Some(port) = m.get_one::<String>("send-break") {
        ctx.vm_uart_break(port)?;
    }
    if on(m, "get-memseg") {
        println!("ID  Length      Name");
        if let Some(l) = ctx.vm_get_memory_layout()? {
            println!("{:<4}{:<12}sysmem", 0, vmmapi::humanize(l.size()));
        }
    }
    if on(m, "get-memmap") {
        println!("Address     Length      Segment     Offset      Prot  Flags");
        if let Some(l) = ctx.vm_get_memory_layout()? {
            let r = l.lowmem;
            println!(
                "{:<12x}{:<12}{:<12}{:<12x}{:<6}",
                0,
                vmmapi::humanize(r),
                "sysmem",
                0,
                "RWX"
            );
            if l.highmem != 0 {
                println!(
                    "{:<12x}{:<12}{:<12}{:<12x}{:<6}",
                    vmmapi::mem::HIGHMEM_BASE,
                    vmmapi::humanize(l.highmem),
                    "sysmem",
                    l.lowmem,
                    "RWX"
                );
            }
        }
    }
    if on(m, "get-lowmem") {
        println!("lowmem\t\t0x{:016x}/{}", 0, ctx.vm_get_lowmem_size()?);
    }
    if on(m, "get-highmem") {
        let h = ctx.vm_get_highmem_size()?;
        let base = if h != 0 { vmmapi::mem::HIGHMEM_BASE } else { 0 };
        println!("highmem\t\t0x{base:016x}/{h}");
    }
    let all = on(m, "get-all");
    let wants_state = all
        || reg_opts().any(|r| on(m, &format!("get-{}", r.name())))
        || SegReg::ALL
            .iter()
            .any(|s| on(m, &format!("get-desc-{}", s.name())))
        || on(m, "get-gdtr")
        || on(m, "get-idtr");
    if wants_state {
        let st = ctx.vm_get_vcpu_state(vcpu)?;
        for r in reg_opts() {
            if all || on(m, &format!("get-{}", r.name())) {
                print_reg(vcpu, r, st.get(r));
            }
        }
        for s in SegReg::ALL {
            let plain =
                matches!(s, SegReg::Gdtr | SegReg::Idtr) && on(m, &format!("get-{}", s.name()));
            if all || plain || on(m, &format!("get-desc-{}", s.name())) {
                print_desc(vcpu, s, st.desc(s));
            }
        }
    }
    if on(m, "get-stats") {
        println!("vcpu{vcpu} stats:");
        for (n, v) in ctx.vm_get_stats(vcpu)? {
            println!("{n:<40}\t{v}");
        }
    }
    if on(m, "force-reset") {
        ctx.vm_suspend(Suspend::Reset)?;
    }
    if on(m, "force-poweroff") {
        ctx.vm_suspend(Suspend::Poweroff)?;
    }
    if on(m, "destroy") {
        drop(ctx);
        vmmapi::vm_destroy(&name).map_err(|e| match e {
            vmmapi::Error::NoSuchVm { .. } => CtlError::NotCreated(name.clone()),
            e => e.into(),
        })?;
    }
    Ok(())
}

fn main() -> ExitCode {
    // Like a C tool, die quietly when the reader of our output goes away
    // (`bhyvectl --get-all | head`) instead of panicking in println!.
    // SAFETY: setting a signal disposition before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let m = match cli().try_get_matches() {
        Ok(m) => m,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(&m) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bhyvectl: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(parse_num("x", "0x1000").unwrap(), 0x1000);
        assert_eq!(parse_num("x", "4096").unwrap(), 4096);
        assert_eq!(parse_num("x", "010").unwrap(), 8);
        assert_eq!(parse_num("x", "0").unwrap(), 0);
        assert!(parse_num("x", "zz").is_err());
        assert!(parse_num("x", "0xzz").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        cli().debug_assert();
        let m = cli()
            .try_get_matches_from(["bhyvectl", "--vm=a", "--set-rip=0x10", "--get-cs"])
            .unwrap();
        assert_eq!(m.get_one::<String>("set-rip").unwrap(), "0x10");
        assert!(m.get_flag("get-cs"));
    }
}
