//! The loader's command interpreter: the state bhyveload's menu and prompt
//! drive (environment, module table, loaded files) and the commands of
//! `stand/common` plus the Lua loader's boot logic (`config.lua`,
//! `core.lua`): kernel selection, configured modules, and `boot`.

use libsa::{FileKind, FileSystem};

use crate::autoboot::Autoboot;
use crate::conf::{self, ConfHost, ConfWarning, ModuleTable};
use crate::elf::MODINFOMD_ELFHDR;
use crate::env::{Env, injected_env};
use crate::handoff::{self, Handoff};
use crate::loader::{Ctx, Loaded, LoadedFile, Loader, MemLimits, unargv};
use crate::{Error, GuestPhys, howto, metadata, rootmount};

/// Where the interpreter's output goes (bhyveload's console; a buffer in
/// tests).
pub trait Console {
    fn write_str(&mut self, s: &str);
}

/// What bhyveload knows before the loader starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootParams {
    /// Low memory size (bhyveload's `getmem`), bytes.
    pub lowmem: u64,
    /// Memory above 4 GiB, bytes.
    pub highmem: u64,
    /// The boot device as the loader names it (`disk0p2:`, `host0:`).
    pub currdev: String,
    /// The `-e name=value` strings, in command-line order.
    pub user_env: Vec<String>,
}

/// What a command asks the caller to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Continue,
    /// Guest memory is ready; set the registers and exit 0.
    Boot(Handoff),
    /// `reboot` (`USERBOOT_EXIT_REBOOT`).
    Reboot,
    /// `quit` (`USERBOOT_EXIT_QUIT`).
    Quit,
}

/// Commands and their `help` lines.
const COMMANDS: &[(&str, &str)] = &[
    (
        "boot",
        "boot a file or loaded kernel: boot [-flags] [kernel]",
    ),
    ("echo", "echo arguments"),
    ("help", "list commands"),
    ("include", "read commands from a file"),
    (
        "load",
        "load a kernel or module: load [-t type] file [args]",
    ),
    ("ls", "list files: ls [path]"),
    ("lsmod", "list loaded modules: lsmod [-v]"),
    ("more", "show contents of a file"),
    ("quit", "exit the loader"),
    ("reboot", "reboot the system"),
    ("set", "set a variable: set name=value"),
    ("show", "show variable(s): show [name]"),
    ("unload", "unload all modules"),
    ("unset", "unset a variable"),
];

/// `include` nesting limit (a file including itself must not recurse forever).
const MAX_INCLUDE_DEPTH: usize = 16;

/// The loader state.
pub struct Interp<'a> {
    fs: &'a dyn FileSystem,
    console: Box<dyn Console + 'a>,
    env: Env,
    modules: ModuleTable,
    loader: Loader,
    /// `boot <kernel>` picks a kernel other than `$kernel`.
    selected_kernel: Option<String>,
    include_depth: usize,
}

impl std::fmt::Debug for Interp<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interp")
            .field("fs", &self.fs.describe())
            .field("env", &self.env)
            .field("files", &self.loader.files().len())
            .finish_non_exhaustive()
    }
}

impl<'a> Interp<'a> {
    /// A fresh loader: the variables userboot sets itself (§5.2), then the
    /// injected ones in userboot's order (§5.3).
    pub fn new(fs: &'a dyn FileSystem, console: Box<dyn Console + 'a>, params: BootParams) -> Self {
        let mut env = Env::new();
        env.set("LINES", "24");
        env.set("console", "userboot");
        env.set("currdev", &params.currdev);
        env.set("loaddev", &params.currdev);
        for s in injected_env(&params.user_env) {
            env.putenv(&s);
        }
        let limits = MemLimits {
            lowmem: params.lowmem,
            highmem: params.highmem,
        };
        Interp {
            fs,
            console,
            env,
            modules: ModuleTable::default(),
            loader: Loader::new(limits),
            selected_kernel: None,
            include_depth: 0,
        }
    }

    pub fn env(&self) -> &Env {
        &self.env
    }

    pub fn env_mut(&mut self) -> &mut Env {
        &mut self.env
    }

    /// The `MODULE_*` settings read from loader.conf.
    pub fn modules(&self) -> &ModuleTable {
        &self.modules
    }

    /// Loaded files in load order.
    pub fn files(&self) -> &[LoadedFile] {
        self.loader.files()
    }

    /// What to do before booting on its own.
    pub fn autoboot(&self) -> Autoboot {
        Autoboot::from_env(&self.env)
    }

    fn print(&mut self, s: &str) {
        self.console.write_str(s);
    }

    /// Process the configuration files (§7.1).  Problems are printed and
    /// returned; none is fatal.
    pub fn read_conf(&mut self) -> Vec<ConfWarning> {
        let warnings = conf::read_all(self);
        for w in &warnings {
            self.print(&format!("{w}\n"));
        }
        warnings
    }

    /// Run one command line.  `boot` writes guest memory through `mem`.
    pub fn exec(&mut self, line: &str, mem: &mut dyn GuestPhys) -> Result<Action, Error> {
        self.run(line, Some(mem))
    }

    /// Load the kernel (§7.4) and the configured modules unless a kernel is
    /// already loaded (`config.loadelf`).
    pub fn load_kernel_and_modules(&mut self) -> Result<(), Error> {
        if self.loader.kernel().is_some() {
            return Ok(());
        }
        self.print("Loading kernel...\n");
        self.load_kernel()?;
        self.print("Loading configured modules...\n");
        if !self.load_modules() {
            self.print("Could not load one or more modules!\n");
        }
        Ok(())
    }

    /// `boot [-flags] [kernel]`: load what is missing, then write files,
    /// environment, metadata and the handoff pages into `mem`.
    pub fn boot(&mut self, args: &[&str], mem: &mut dyn GuestPhys) -> Result<Handoff, Error> {
        let (flags, kernel): (Vec<&str>, Vec<&str>) = args.iter().partition(|a| a.starts_with('-'));
        if let Some(k) = kernel.last() {
            self.loader.unload(&mut self.env);
            self.selected_kernel = Some((*k).to_owned());
        }
        self.load_kernel_and_modules()?;
        if let (Some(k), Some(a)) = (self.loader.kernel_mut(), unargv(&flags)) {
            k.args = Some(a);
        }
        let kernel = self.loader.kernel().ok_or(Error::NoBootableKernel)?;
        let howto = howto::compute(kernel.args.as_deref(), &self.env);
        let fstab = self.fs.read_file("/etc/fstab").ok();
        rootmount::apply(&mut self.env, fstab.as_deref());

        let limits = self.loader.limits;
        let files = self.loader.files();
        let kernel_index = files
            .iter()
            .position(|f| f.ftype == crate::elf::kernel::KERNEL_TYPE)
            .unwrap_or(0);
        let entry = files[kernel_index]
            .metadata
            .iter()
            .find(|(k, _)| *k == MODINFOMD_ELFHDR)
            .and_then(|(_, h)| crate::elf::le_u64(h, 24))
            .ok_or(Error::NoBootableKernel)?;
        let data = metadata::build(
            files,
            kernel_index,
            self.env.kenv_block(),
            howto,
            limits.lowmem,
            limits.highmem,
        )
        .ok_or_else(|| Error::Beyond1G {
            what: "preload metadata".into(),
            end: u64::MAX,
        })?;
        let l = data.layout;
        limits.check("boot page tables", 0, handoff::GDT + 24)?;
        limits.check("kernel environment", l.envp, data.env_block.len() as u64)?;
        limits.check("preload metadata", l.modulep, l.kernend - l.modulep)?;

        for f in files {
            for c in &f.chunks {
                mem.copyin(c.addr, &c.data)?;
            }
        }
        mem.copyin(l.envp, &data.env_block)?;
        mem.copyin(l.modulep, &data.metadata)?;
        handoff::write_low_pages(mem, l.modulep, l.kernend)?;
        Ok(Handoff::new(entry, l.modulep, l.kernend, l.envp, howto))
    }

    /// Run `f` with the loader and what it needs from `self`.
    fn with_loader<R>(&mut self, f: impl FnOnce(&mut Loader, &mut Ctx) -> R) -> R {
        let console = &mut self.console;
        let mut out = |s: &str| console.write_str(s);
        let mut cx = Ctx {
            fs: self.fs,
            env: &mut self.env,
            out: &mut out,
        };
        f(&mut self.loader, &mut cx)
    }

    /// `config.loadKernel` (§7.4).  Names that are simply not found are
    /// skipped quietly; any other failure (a broken or foreign kernel) is
    /// reported and returned.
    fn load_kernel(&mut self) -> Result<(), Error> {
        let flags = self.env.get("kernel_options").unwrap_or("").to_owned();
        let kernel = self
            .selected_kernel
            .clone()
            .or_else(|| self.env.get("kernel").map(str::to_owned));
        let mut first_error: Option<Error> = None;
        let mut try_load = |me: &mut Self, names: &str| -> bool {
            for name in names.split(';').filter(|n| !n.trim().is_empty()) {
                match me.run(&format!("load {name} {flags}"), None) {
                    Ok(_) => return me.loader.kernel().is_some(),
                    Err(Error::NotFound { .. }) => {}
                    Err(e) => {
                        me.print(&format!("{e}\n"));
                        first_error.get_or_insert(e);
                    }
                }
            }
            false
        };
        let bootfiles = |me: &Self| match me.env.get("bootfile") {
            Some(b) => format!("{b};kernel"),
            None => "kernel".to_owned(),
        };
        let ok = match &kernel {
            None => {
                let names = bootfiles(self);
                let ok = try_load(self, &names);
                if !ok {
                    self.print("No kernel set, failed to load from module_path\n");
                }
                ok
            }
            Some(kernel) => {
                let module_path = self.module_path_without_kernel();
                let mut ok = false;
                for dir in [format!("/boot/{kernel}"), kernel.clone()] {
                    self.env.set("module_path", &dir);
                    let names = bootfiles(self);
                    if try_load(self, &names) {
                        if let Some(mp) = &module_path {
                            self.env.set("module_path", &format!("{dir};{mp}"));
                            self.env.set("kernel_path", &dir);
                        }
                        ok = true;
                        break;
                    }
                }
                if !ok {
                    // Not a directory: restore the path, try it as a file.
                    match &module_path {
                        Some(mp) => self.env.set("module_path", mp),
                        None => self.env.unset("module_path"),
                    }
                    ok = try_load(self, kernel);
                    if !ok {
                        self.print(&format!("Failed to load kernel '{kernel}'\n"));
                    }
                }
                ok
            }
        };
        match (ok, first_error) {
            (true, _) => Ok(()),
            (false, Some(e)) => Err(e),
            (false, None) => Err(Error::KernelLoadFailed {
                name: kernel.unwrap_or_else(|| "kernel".into()),
            }),
        }
    }

    /// `module_path` with a previously prepended `kernel_path;` removed.
    fn module_path_without_kernel(&self) -> Option<String> {
        let mp = self.env.get("module_path")?;
        Some(match self.env.get("kernel_path") {
            Some(kp) => mp.replace(&format!("{kp};"), ""),
            None => mp.to_owned(),
        })
    }

    /// `loadModule`: every `*_load="YES"` module not blacklisted, with its
    /// `_before`/`_after`/`_error` commands.  False if anything failed.
    fn load_modules(&mut self) -> bool {
        let silent = !self
            .env
            .get("verbose_loading")
            .is_some_and(|v| v.eq_ignore_ascii_case("yes"));
        let blacklist = conf::blacklist(&self.env);
        let wanted: Vec<(String, conf::ModuleConf)> = self
            .modules
            .iter()
            .filter(|(_, c)| c.wanted())
            .map(|(k, c)| (k.to_owned(), c.clone()))
            .collect();
        let mut status = true;
        for (key, c) in wanted {
            let name = c.name.clone().unwrap_or_else(|| key.clone());
            if blacklist.contains(&name) {
                if !silent {
                    self.print(&format!("Not loading blacklisted module '{name}'\n"));
                }
                continue;
            }
            if !silent {
                self.print(&format!("{name}..."));
            }
            let mut cmd = String::from("load ");
            if let Some(t) = &c.ftype {
                cmd.push_str(&format!("-t {t} "));
            }
            cmd.push_str(&name);
            if let Some(flags) = &c.flags {
                cmd.push(' ');
                cmd.push_str(flags);
            }
            if let Some(before) = &c.before {
                if self.run(before, None).is_err() {
                    if !silent {
                        self.print(&format!(
                            "Failed to execute '{before}' before loading '{key}'\n"
                        ));
                    }
                    status = false;
                }
            }
            match self.run(&cmd, None) {
                Err(e) => {
                    // A missing optional raw file (hostid, entropy) is normal.
                    let quiet = c.ftype.is_some() && matches!(e, Error::NotFound { .. });
                    if !quiet || !silent {
                        self.print(&format!("{e}\n"));
                    }
                    if !silent {
                        self.print("failed!\n");
                    }
                    if let Some(error) = &c.error {
                        let _ = self.run(error, None);
                    }
                    status = false;
                }
                Ok(_) => {
                    if let Some(after) = &c.after {
                        if self.run(after, None).is_err() {
                            if !silent {
                                self.print(&format!(
                                    "Failed to execute '{after}' after loading '{key}'\n"
                                ));
                            }
                            status = false;
                        }
                    }
                    if !silent {
                        self.print("ok\n");
                    }
                }
            }
        }
        status
    }

    /// Parse and run one command; `mem` is `None` where booting is not
    /// possible (loader.conf `exec=`, module hooks).
    fn run(&mut self, line: &str, mem: Option<&mut dyn GuestPhys>) -> Result<Action, Error> {
        let argv = split_args(line, &self.env)?;
        let Some(cmd) = argv.first() else {
            return Ok(Action::Continue);
        };
        let args: Vec<&str> = argv[1..].iter().map(String::as_str).collect();
        let usage = |msg: &str| Error::Usage {
            cmd: cmd.clone(),
            msg: msg.to_owned(),
        };
        match cmd.as_str() {
            "boot" => {
                let mem = mem.ok_or_else(|| Error::BootNotAllowed {
                    context: "a configuration file".into(),
                })?;
                return self.boot(&args, mem).map(Action::Boot);
            }
            "load" => self.cmd_load(&args)?,
            "unload" => self.loader.unload(&mut self.env),
            "lsmod" => self.cmd_lsmod(args.first() == Some(&"-v")),
            "ls" => self.cmd_ls(args.first().copied().unwrap_or("/"))?,
            "set" => match args[..] {
                [assignment] => self.env.putenv(assignment),
                _ => return Err(usage("wrong number of arguments")),
            },
            "unset" => match args[..] {
                [name] => self.env.unset(name),
                _ => return Err(usage("wrong number of arguments")),
            },
            "show" => match args[..] {
                [] => {
                    let all: String = self.env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
                    self.print(&all);
                }
                [name] => {
                    let v = self
                        .env
                        .get(name)
                        .ok_or_else(|| usage(&format!("variable '{name}' not found")))?;
                    let v = format!("{v}\n");
                    self.print(&v);
                }
                _ => return Err(usage("wrong number of arguments")),
            },
            "echo" => {
                let text = format!("{}\n", args.join(" "));
                self.print(&text);
            }
            "include" => {
                if args.is_empty() {
                    return Err(usage("no filename specified"));
                }
                let mut mem = mem;
                for path in &args {
                    if let a @ (Action::Boot(_) | Action::Reboot | Action::Quit) =
                        self.include(path, reborrow(&mut mem))?
                    {
                        return Ok(a);
                    }
                }
            }
            "more" => {
                for path in &args {
                    let data = self.fs.read_file(path)?;
                    let text = format!(
                        "*** FILE {path} BEGIN ***\n{}*** FILE {path} END ***\n",
                        String::from_utf8_lossy(&data)
                    );
                    self.print(&text);
                }
            }
            "help" => {
                let text: String = COMMANDS
                    .iter()
                    .map(|(c, h)| format!(" {c:<10} {h}\n"))
                    .collect();
                self.print(&text);
            }
            "reboot" => return Ok(Action::Reboot),
            "quit" => return Ok(Action::Quit),
            _ => return Err(Error::UnknownCommand(cmd.clone())),
        }
        Ok(Action::Continue)
    }

    /// `load [-t type] file [args]` (`command_load`).
    fn cmd_load(&mut self, args: &[&str]) -> Result<(), Error> {
        let usage = |msg: &str| Error::Usage {
            cmd: "load".into(),
            msg: msg.into(),
        };
        let mut ftype: Option<&str> = None;
        let mut kld = false;
        let mut i = 0;
        while i < args.len() && args[i].starts_with('-') && args[i].len() > 1 {
            match args[i] {
                "-t" => {
                    ftype = Some(
                        args.get(i + 1)
                            .ok_or_else(|| usage("option requires an argument -- t"))?,
                    );
                    i += 1;
                }
                "-k" => kld = true,
                o => return Err(usage(&format!("unknown option {o}"))),
            }
            i += 1;
        }
        let rest = &args[i..];
        let Some((&name, extra)) = rest.split_first() else {
            return Err(usage("no filename specified"));
        };
        let result = match ftype {
            Some(t) => {
                if t.is_empty() || !extra.is_empty() {
                    return Err(usage("invalid load type"));
                }
                self.with_loader(|l, cx| l.load_raw(cx, name, t))
            }
            None if kld || name.contains('/') || name.contains(':') => {
                self.with_loader(|l, cx| l.mod_loadkld(cx, name, extra))
            }
            None => self.with_loader(|l, cx| l.mod_load(cx, name, None, extra)),
        }?;
        if let Loaded::AlreadyLoaded(w) = result {
            self.print(&format!("{w}\n"));
        }
        Ok(())
    }

    fn cmd_lsmod(&mut self, verbose: bool) {
        let mut out = String::new();
        for f in self.loader.files() {
            out.push_str(&format!(
                " {:#x}: {} ({}, {:#x})\n",
                f.addr, f.name, f.ftype, f.size
            ));
            if let Some(a) = &f.args {
                out.push_str(&format!("    args: {a}\n"));
            }
            if !f.modules.is_empty() {
                out.push_str("  modules: ");
                for m in &f.modules {
                    out.push_str(&format!("{}.{} ", m.name, m.version));
                }
                out.push('\n');
            }
            if verbose {
                for (kind, data) in f.metadata.iter().rev() {
                    out.push_str(&format!("      {kind:#06x}, {:#x}\n", data.len()));
                }
            }
        }
        self.print(&out);
    }

    fn cmd_ls(&mut self, path: &str) -> Result<(), Error> {
        let entries = self.fs.read_dir(path)?;
        let mut out = format!("{path}\n");
        for e in entries {
            let c = match e.kind {
                FileKind::Dir => 'd',
                FileKind::Symlink => 'l',
                FileKind::File => ' ',
                FileKind::Other => '?',
            };
            out.push_str(&format!(" {c} {}\n", e.name));
        }
        self.print(&out);
        Ok(())
    }

    /// `include`: run each line of a file as a command.
    fn include(
        &mut self,
        path: &str,
        mut mem: Option<&mut dyn GuestPhys>,
    ) -> Result<Action, Error> {
        if self.include_depth >= MAX_INCLUDE_DEPTH {
            return Err(Error::IncludeDepth {
                path: path.to_owned(),
            });
        }
        let data = self.fs.read_file(path)?;
        let text = String::from_utf8(data).map_err(|_| Error::NotText {
            path: path.to_owned(),
        })?;
        self.include_depth += 1;
        let mut result = Ok(Action::Continue);
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match self.run(line, reborrow(&mut mem)) {
                Ok(Action::Continue) => {}
                Ok(a) => {
                    result = Ok(a);
                    break;
                }
                Err(e) => {
                    result = Err(Error::Include {
                        path: path.to_owned(),
                        line: n + 1,
                        source: Box::new(e),
                    });
                    break;
                }
            }
        }
        self.include_depth -= 1;
        result
    }
}

impl ConfHost for Interp<'_> {
    fn read_conf_file(&mut self, path: &str) -> Result<Option<Vec<u8>>, String> {
        match self.fs.read_file(path) {
            Ok(d) => Ok(Some(d)),
            Err(libsa::Error::NotFound { .. } | libsa::Error::NotDir { .. }) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    fn env_mut(&mut self) -> &mut Env {
        &mut self.env
    }

    fn modules_mut(&mut self) -> &mut ModuleTable {
        &mut self.modules
    }

    fn exec_command(&mut self, command: &str) -> Result<(), String> {
        self.run(command, None)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// A shorter-lived `Option<&mut dyn GuestPhys>` (the trait object's
/// lifetime must shrink with the borrow, which `as_deref_mut` cannot do).
fn reborrow<'s>(mem: &'s mut Option<&mut dyn GuestPhys>) -> Option<&'s mut dyn GuestPhys> {
    match mem {
        Some(m) => Some(&mut **m),
        None => None,
    }
}

/// Split a command line like the loader's `parse()`: blanks separate
/// words, `"…"` and `'…'` quote, `\` escapes, and `$name` / `${name}` expand
/// (not inside single quotes).
pub fn split_args(line: &str, env: &Env) -> Result<Vec<String>, Error> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quote) {
            ('\\', q) if q != Some('\'') => {
                if let Some(n) = chars.next() {
                    word.push(n);
                    in_word = true;
                }
            }
            ('"' | '\'', None) => {
                quote = Some(c);
                in_word = true;
            }
            (c, Some(q)) if c == q => quote = None,
            ('$', q) if q != Some('\'') => {
                let name: String = if chars.peek() == Some(&'{') {
                    chars.next();
                    let n: String = chars.by_ref().take_while(|&c| c != '}').collect();
                    n
                } else {
                    let mut n = String::new();
                    while let Some(&c) = chars.peek() {
                        if c.is_ascii_alphanumeric() || c == '_' || c == '.' {
                            n.push(c);
                            chars.next();
                        } else {
                            break;
                        }
                    }
                    n
                };
                if name.is_empty() {
                    word.push('$');
                } else {
                    word.push_str(env.get(&name).unwrap_or(""));
                }
                in_word = true;
            }
            (c, None) if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (c, _) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return Err(Error::Usage {
            cmd: line.to_owned(),
            msg: "unbalanced quotes".into(),
        });
    }
    if in_word {
        out.push(word);
    }
    Ok(out)
}
