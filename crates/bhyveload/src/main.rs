//! bhyveload: create (or re-initialise) a VM instance and load a FreeBSD
//! kernel into it as FreeBSD's loader does (bhyveload(8)), or a Linux
//! bzImage through the x86 boot protocol's 64-bit entry (`linux`).
//!
//! The loader itself is the `userboot` crate; `libsa` reads the disk image.
//! This program does what bhyveload.c does around userboot.so: options,
//! console, disks, the instance and its memory, the menu and prompt, and the
//! final register setup.

mod cons;
mod guestmem;
mod hostkernel;
mod linux;
mod menu;

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Arg, ArgAction, Command};
use libsa::FileSystem;
use userboot::{Action, BootParams, Handoff, Interp};
use vmmapi::VmCtx;

use crate::cons::Console;
use crate::guestmem::GuestMem;

/// sysexits(3) codes bhyveload uses.
const EX_USAGE: u8 = 64;
const EX_OSERR: u8 = 71;
/// `USERBOOT_EXIT_QUIT` and ordinary failures.
const EXIT_FAIL: u8 = 1;
/// bhyveload's `NDISKS`.
const NDISKS: usize = 32;
/// bhyveload's default memory: 256 MiB.
const DEFAULT_MEM: u64 = 256 << 20;

#[derive(Debug, thiserror::Error)]
enum LoadError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Console(#[from] cons::ConsError),
    #[error("{0}")]
    Disk(libsa::Error),
    #[error("{0}")]
    Vmm(#[from] vmmapi::Error),
    #[error("{0}")]
    Load(#[from] userboot::Error),
    #[error("{0}")]
    Kernel(String),
    #[error("{0}")]
    Linux(#[from] linux::LinuxError),
    #[error("loader quit")]
    Quit,
}

impl LoadError {
    fn status(&self) -> u8 {
        match self {
            LoadError::Usage(_) | LoadError::Console(_) | LoadError::Disk(_) => EX_USAGE,
            LoadError::Vmm(vmmapi::Error::Io { .. }) => EX_OSERR,
            _ => EXIT_FAIL,
        }
    }
}

#[derive(Debug)]
struct Opts {
    name: String,
    mem: u64,
    disks: Vec<String>,
    host: Option<String>,
    cons: Option<String>,
    env: Vec<String>,
    kernel: Option<String>,
    modules: Vec<String>,
    initrd: Option<String>,
    cmdline: Option<String>,
}

fn cli() -> Command {
    let opt = |id: &'static str, short: char, v: &'static str, help: &'static str| {
        Arg::new(id)
            .short(short)
            .value_name(v)
            .action(ArgAction::Append)
            .help(help)
    };
    Command::new("bhyveload")
        .about("Load a FreeBSD or Linux kernel into a bhyve-rs virtual machine")
        .override_usage(
            "bhyveload [-CS] [-c cons-dev] [-d disk-path] [-e name=value] [-h host-path]\n       \
             [-m mem-size] [--kernel FILE [--module FILE]...] vmname\n       \
             bhyveload [-m mem-size] --kernel bzImage [--initrd FILE] [--cmdline STRING] vmname",
        )
        .disable_help_flag(true)
        .arg(
            Arg::new("help")
                .long("help")
                .action(ArgAction::Help)
                .help("Print help"),
        )
        .arg(opt("cons", 'c', "CONS", "Console device (a tty, or stdio)"))
        .arg(opt(
            "disk",
            'd',
            "DISK",
            "Disk image or device (disk0, disk1, ...)",
        ))
        .arg(opt(
            "env",
            'e',
            "NAME=VALUE",
            "Set a loader environment variable",
        ))
        .arg(opt(
            "host",
            'h',
            "DIR",
            "Host directory the loader may read (host0:)",
        ))
        .arg(opt(
            "mem",
            'm',
            "SIZE",
            "Guest memory (default 256M; plain number = MiB)",
        ))
        .arg(opt(
            "loader",
            'l',
            "LOADER",
            "Loader (only the built-in one exists)",
        ))
        .arg(
            Arg::new("wired")
                .short('S')
                .action(ArgAction::SetTrue)
                .help("Wire guest memory"),
        )
        .arg(
            Arg::new("incore")
                .short('C')
                .action(ArgAction::SetTrue)
                .help("Include guest memory in core dumps"),
        )
        .arg(Arg::new("kernel").long("kernel").value_name("FILE").help(
            "Load this kernel from a host file instead of a disk image: a FreeBSD ELF \
                     kernel, or a Linux bzImage",
        ))
        .arg(
            Arg::new("module")
                .long("module")
                .value_name("FILE")
                .action(ArgAction::Append)
                .help("With --kernel: a module (.ko) the loader can load from /boot/modules"),
        )
        .arg(
            Arg::new("initrd")
                .long("initrd")
                .value_name("FILE")
                .help("With a bzImage --kernel: the initial ramdisk"),
        )
        .arg(
            Arg::new("cmdline")
                .long("cmdline")
                .value_name("STRING")
                .allow_hyphen_values(true)
                .help("With a bzImage --kernel: the kernel command line"),
        )
        .arg(Arg::new("vmname").value_name("vmname"))
}

fn parse(args: Vec<String>) -> Result<Option<Opts>, LoadError> {
    let m = match cli().try_get_matches_from(args) {
        Ok(m) => m,
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelp => {
            // A closed pipe (`| head`) is no error worth a panic.
            let _ = write!(std::io::stdout(), "{}", cli().render_long_help());
            return Ok(None);
        }
        Err(e) => return Err(LoadError::Usage(e.to_string().trim_end().to_string())),
    };
    let all = |id: &str| -> Vec<String> {
        m.get_many::<String>(id)
            .map(|v| v.cloned().collect())
            .unwrap_or_default()
    };
    let last = |id: &str| all(id).pop();
    let Some(name) = m.get_one::<String>("vmname").cloned() else {
        return Err(LoadError::Usage(format!(
            "missing vmname\n{}",
            cli().render_usage().to_string().trim_end()
        )));
    };
    if let Some(l) = last("loader") {
        return Err(LoadError::Usage(format!(
            "-l {l}: bhyve-rs has only its built-in loader"
        )));
    }
    let mem = match last("mem") {
        None => DEFAULT_MEM,
        Some(s) => vmmapi::parse_memsize(&s)
            .and_then(|v| vmmapi::MemLayout::new(v).ok().map(|_| v))
            .ok_or_else(|| {
                LoadError::Usage(format!(
                    "invalid memory size {s:?} (a number of MiB, or with K/M/G/T, a multiple of 2 MiB)"
                ))
            })?,
    };
    let disks = all("disk");
    if disks.len() > NDISKS {
        return Err(LoadError::Usage(format!("at most {NDISKS} disks (-d)")));
    }
    let env = all("env");
    if let Some(bad) = env.iter().find(|e| !e.contains('=')) {
        return Err(LoadError::Usage(format!("-e {bad:?}: expected name=value")));
    }
    let kernel = m.get_one::<String>("kernel").cloned();
    let modules = all("module");
    if kernel.is_none() && !modules.is_empty() {
        return Err(LoadError::Usage("--module needs --kernel".into()));
    }
    let initrd = m.get_one::<String>("initrd").cloned();
    let cmdline = m.get_one::<String>("cmdline").cloned();
    if kernel.is_none() && (initrd.is_some() || cmdline.is_some()) {
        return Err(LoadError::Usage(
            "--initrd and --cmdline need --kernel (a bzImage)".into(),
        ));
    }
    let host = last("host");
    if disks.is_empty() && host.is_none() && kernel.is_none() {
        return Err(LoadError::Usage(
            "nothing to load from: give a disk image (-d), a host directory (-h) or --kernel"
                .into(),
        ));
    }
    Ok(Some(Opts {
        name,
        mem,
        disks,
        host,
        cons: last("cons"),
        env,
        kernel,
        modules,
        initrd,
        cmdline,
    }))
}

/// Where the loader reads `/boot` from, and the device name it reports
/// (`currdev`): the first disk's UFS, the host directory, or a kernel file.
fn open_fs(o: &Opts) -> Result<(Box<dyn FileSystem + Send + Sync>, String), LoadError> {
    if let Some(k) = &o.kernel {
        let fs = hostkernel::HostKernelFs::new(k, &o.modules, o.host.as_deref())
            .map_err(LoadError::Kernel)?;
        return Ok((Box::new(fs), "host0:".into()));
    }
    if let Some(d) = o.disks.first() {
        let disk = libsa::FileDisk::open(d).map_err(LoadError::Disk)?;
        let fs = libsa::open_image(Arc::new(disk), d).map_err(LoadError::Disk)?;
        let dev = fs.describe();
        let dev = dev.split(' ').next().unwrap_or("disk0").to_string();
        return Ok((fs, format!("{dev}:")));
    }
    let dir = o.host.as_deref().unwrap_or("/");
    let fs = libsa::HostFs::new(dir).map_err(LoadError::Disk)?;
    Ok((Box::new(fs), "host0:".into()))
}

/// userboot's console output goes to bhyveload's console.
struct ConsOut<'a>(&'a Console);

impl userboot::Console for ConsOut<'_> {
    fn write_str(&mut self, s: &str) {
        self.0.print(s);
    }
}

/// What one run of the loader ended with.
enum Outcome {
    Boot(Handoff),
    Reboot,
}

/// One run of the loader (bhyveload restarts it on `reboot`).
fn load_once(
    o: &Opts,
    fs: &dyn FileSystem,
    currdev: &str,
    cons: &Console,
    ctx: &mut VmCtx,
) -> Result<Outcome, LoadError> {
    let (layout, gm) = ctx.vm_guest_memory()?;
    let mut mem = GuestMem::new(layout, gm);
    let params = BootParams {
        lowmem: layout.lowmem,
        highmem: layout.highmem,
        currdev: currdev.to_string(),
        user_env: o.env.clone(),
    };
    let mut interp = Interp::new(fs, Box::new(ConsOut(cons)), params);
    if cons.interactive() {
        cons.print(&format!(
            "Consoles: userboot\n\nFreeBSD/amd64 User boot, Revision 1.1\n(bhyve-rs)\n{}\n",
            fs.describe()
        ));
    }
    interp.read_conf();
    match menu::run(&mut interp, cons, &mut mem)? {
        Action::Boot(h) => Ok(Outcome::Boot(h)),
        Action::Reboot => Ok(Outcome::Reboot),
        Action::Quit => Err(LoadError::Quit),
        Action::Continue => Err(LoadError::Quit),
    }
}

/// The instance to load into: created, or re-initialised when it exists
/// (a guest rebooting). Returns whether this run created it.
fn open_instance(o: &Opts) -> Result<(VmCtx, bool), LoadError> {
    let created = match vmmapi::vm_create(&o.name) {
        Ok(()) => true,
        Err(vmmapi::Error::Exists { .. }) => false,
        Err(e) => return Err(e.into()),
    };
    let ctx = vmmapi::vm_open(&o.name)?;
    if !created {
        ctx.vm_reinit()?;
    }
    Ok((ctx, created))
}

/// `--kernel` with a Linux bzImage: no loader, no console; everything is
/// checked and placed before the instance is created.
fn run_linux(o: &Opts, kernel: &str) -> Result<(), (LoadError, bool)> {
    if !o.modules.is_empty() || !o.env.is_empty() || o.host.is_some() {
        return Err((
            LoadError::Usage(format!(
                "{kernel} is a Linux bzImage: -e, -h and --module are for FreeBSD kernels"
            )),
            false,
        ));
    }
    let layout = vmmapi::MemLayout::new(o.mem).map_err(|e| (e.into(), false))?;
    let cmdline = o.cmdline.as_deref().unwrap_or("");
    let mut boot = linux::LinuxBoot::prepare(kernel, o.initrd.as_deref(), cmdline, layout)
        .map_err(|e| (e.into(), false))?;
    let (mut ctx, created) = open_instance(o).map_err(|e| (e, false))?;
    let fail = |e: LoadError| (e, created);
    let lock = ctx.vm_lock().map_err(|e| fail(e.into()))?;
    ctx.vm_setup_memory(o.mem).map_err(|e| fail(e.into()))?;
    let (_, gm) = ctx.vm_guest_memory().map_err(|e| fail(e.into()))?;
    let entry = boot.load(&gm).map_err(|e| fail(e.into()))?;
    ctx.vm_update_vcpu(0, |s| entry.apply(s))
        .map_err(|e| fail(e.into()))?;
    ctx.vm_set_loaded().map_err(|e| fail(e.into()))?;
    drop(lock);
    Ok(())
}

fn run(o: &Opts) -> Result<(), (LoadError, bool)> {
    if let Some(k) = &o.kernel {
        match linux::detect(k).map_err(|e| (e.into(), false))? {
            linux::Format::BzImage => return run_linux(o, k),
            linux::Format::Elf if o.initrd.is_some() || o.cmdline.is_some() => {
                return Err((
                    LoadError::Usage(format!(
                        "{k} is a FreeBSD ELF kernel: --initrd and --cmdline are for Linux bzImage kernels"
                    )),
                    false,
                ));
            }
            linux::Format::Elf => {}
        }
    }
    let cons = Console::open(o.cons.as_deref()).map_err(|e| (e.into(), false))?;
    let (fs, currdev) = open_fs(o).map_err(|e| (e, false))?;
    let (mut ctx, created) = open_instance(o).map_err(|e| (e, false))?;
    let fail = |e: LoadError| (e, created);
    let lock = ctx.vm_lock().map_err(|e| fail(e.into()))?;
    ctx.vm_setup_memory(o.mem).map_err(|e| fail(e.into()))?;
    loop {
        match load_once(o, &*fs, &currdev, &cons, &mut ctx).map_err(fail)? {
            Outcome::Boot(h) => {
                ctx.vm_setup_freebsd_registers(0, h.entry, h.cr3, h.gdt_base, h.rsp)
                    .map_err(|e| fail(e.into()))?;
                ctx.vm_set_loaded().map_err(|e| fail(e.into()))?;
                drop(lock);
                return Ok(());
            }
            // As bhyveload since 2024: re-initialise and start over.
            Outcome::Reboot => {
                ctx.vm_setup_memory(o.mem).map_err(|e| fail(e.into()))?;
                cons.print("\nRebooting...\n");
            }
        }
    }
}

fn main() -> ExitCode {
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        cons::restore_terminal();
        prev(info);
    }));
    let opts = match parse(std::env::args().collect()) {
        Ok(Some(o)) => o,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bhyveload: {e}");
            return ExitCode::from(e.status());
        }
    };
    match run(&opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err((e, created)) => {
            cons::restore_terminal();
            // A failed load leaves no new instance behind.
            if created {
                let _ = vmmapi::vm_destroy(&opts.name);
            }
            eprintln!("bhyveload: {}: {e}", opts.name);
            ExitCode::from(e.status())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn original_session() {
        let o = parse(args("bhyveload -d disk.img -m 1024 guest0"))
            .unwrap()
            .unwrap();
        assert_eq!(o.name, "guest0");
        assert_eq!(o.mem, 1 << 30);
        assert_eq!(o.disks, vec!["disk.img".to_string()]);
    }

    #[test]
    fn options() {
        let o = parse(args(
            "bhyveload -S -c stdio -d a.img -d b.img -e a=1 -e b=2 -h /tmp -m 512M g",
        ))
        .unwrap()
        .unwrap();
        assert_eq!(o.mem, 512 << 20);
        assert_eq!(o.env, vec!["a=1", "b=2"]);
        assert_eq!(o.host.as_deref(), Some("/tmp"));
        assert_eq!(o.cons.as_deref(), Some("stdio"));
        let o = parse(args("bhyveload --kernel k --module m.ko g"))
            .unwrap()
            .unwrap();
        assert_eq!(o.mem, DEFAULT_MEM);
        assert_eq!(o.kernel.as_deref(), Some("k"));
    }

    #[test]
    fn usage_errors() {
        for bad in [
            "bhyveload -d x.img",
            "bhyveload -m huge -d x g",
            "bhyveload -m 3 -d x g",
            "bhyveload -e novalue -d x g",
            "bhyveload g",
            "bhyveload --module m.ko -d x g",
            "bhyveload --initrd i.img -d x g",
            "bhyveload --cmdline console=ttyS0 -d x g",
            "bhyveload -l /boot/userboot.so -d x g",
            "bhyveload -Z -d x g",
        ] {
            let e = parse(args(bad)).unwrap_err();
            assert_eq!(e.status(), EX_USAGE, "{bad}: {e}");
        }
    }
}
