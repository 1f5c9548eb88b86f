//! loader.conf evaluation through the interpreter, and interactive commands.

mod common;

use common::*;
use userboot::conf::ConfWarning;
use userboot::{Action, Error};

#[test]
fn conf_files_recursion_expansion_and_warnings() {
    let mut fs = MemFs::new();
    fs.add(
        "/boot/defaults/loader.conf",
        "loader_conf_files=\"/boot/a.conf /boot/missing.conf /boot/c.conf\"\nbase=\"/boot\"\n",
    )
    // a.conf changes the list: b.conf is read before c.conf, a.conf not again.
    .add("/boot/a.conf", "x=\"1\"\nloader_conf_files=\"/boot/b.conf /boot/a.conf\"\ncount=\"${count}a\"\n")
    .add(
        "/boot/b.conf",
        "y=\"${x}-${base}/k\" # comment\nw=\"$x\"\nv=\"$x-greedy\"\n  # indented comment\n\nthis is junk\nz=\"ok\" trailing\nexec=\"set fromexec=yes\"\nexec=\"nosuchcmd\"\norder=\"${order}b\"\n",
    )
    .add("/boot/c.conf", "order=\"${order}c\"\nneg=-5\nnum=42\nhint.uart.0.flags=\"0x10\"\n")
    .add("/boot/nextboot.conf", "nextboot_enable=\"YES\"\nkernel=\"kernel.next\"\n");
    let (mut it, con) = interp(&fs, 256 * MIB, 0);
    it.env_mut().set("nextboot_conf", "/boot/nextboot.conf");
    let w = it.read_conf();
    let env = it.env();
    assert_eq!(env.get("x"), Some("1"));
    assert_eq!(env.get("y"), Some("1-/boot/k"));
    assert_eq!(env.get("w"), Some("1"));
    // `$name` takes every following `[%w%p]` as the name, as in config.lua.
    assert_eq!(env.get("v"), Some(""));
    assert_eq!(env.get("count"), Some("a"), "a.conf read once");
    assert_eq!(
        env.get("order"),
        Some("bc"),
        "b.conf (from the changed list) before c.conf"
    );
    assert_eq!(env.get("fromexec"), Some("yes"));
    assert_eq!(env.get("neg"), Some("-5"));
    assert_eq!(env.get("num"), Some("42"));
    assert_eq!(env.get("hint.uart.0.flags"), Some("0x10"));
    assert_eq!(env.get("z"), None);
    assert_eq!(
        env.get("kernel"),
        Some("kernel.next"),
        "nextboot.conf applied"
    );
    assert_eq!(w.len(), 3, "{w:?}");
    assert_eq!(
        w[0],
        ConfWarning::Malformed {
            file: "/boot/b.conf".into(),
            line: 6,
            text: "this is junk".into()
        }
    );
    assert_eq!(
        w[1],
        ConfWarning::Malformed {
            file: "/boot/b.conf".into(),
            line: 7,
            text: "z=\"ok\" trailing".into()
        }
    );
    assert!(
        matches!(&w[2], ConfWarning::ExecFailed { line: 9, command, .. } if command == "nosuchcmd")
    );
    assert!(
        con.text()
            .contains("/boot/b.conf: malformed line (6): 'this is junk'")
    );

    // A disabled nextboot.conf is ignored.
    let mut fs2 = fs.clone();
    fs2.add(
        "/boot/nextboot.conf",
        "nextboot_enable=\"NO\"\nkernel=\"kernel.next\"\n",
    );
    let (mut it, _) = interp(&fs2, 256 * MIB, 0);
    it.env_mut().set("nextboot_conf", "/boot/nextboot.conf");
    it.read_conf();
    assert_eq!(it.env().get("kernel"), None);
}

#[test]
fn default_conf_files_without_defaults() {
    let mut fs = MemFs::new();
    fs.add("/boot/device.hints", "hint.a.0.at=\"isa\"\n")
        .add("/boot/loader.conf", "from_conf=\"1\"\n")
        .add(
            "/boot/loader.conf.local",
            "from_local=\"1\"\nfrom_conf=\"2\"\n",
        );
    let (mut it, _) = interp(&fs, 256 * MIB, 0);
    assert!(it.read_conf().is_empty());
    assert_eq!(it.env().get("hint.a.0.at"), Some("isa"));
    assert_eq!(it.env().get("from_conf"), Some("2"));
    assert_eq!(it.env().get("from_local"), Some("1"));
}

#[test]
fn module_directives_hooks_and_blacklist() {
    let mut fs = MemFs::new();
    fs.add("/boot/kernel/kernel", build_kernel(0x100))
        .add("/boot/kernel/good.ko", build_ko(&[("good", 1)], &[]))
        .add("/boot/kernel/drm.ko", build_ko(&[("drm", 1)], &[]))
        .add("/boot/fw.bin", vec![7u8; 3])
        .add(
            "/boot/loader.conf",
            concat!(
                "verbose_loading=\"YES\"\n",
                "module_blacklist=\"drm,i915kms\"\n",
                "good_load=\"YES\"\n",
                "good_flags=\"a=1 b=2\"\n",
                "good_before=\"set before_good=1\"\n",
                "good_after=\"set after_good=1\"\n",
                "fw_load=\"yes\"\n",
                "fw_name=\"/boot/fw.bin\"\n",
                "fw_type=\"cpu_microcode\"\n",
                "bad_load=\"YES\"\n",
                "bad_error=\"set bad_failed=1\"\n",
                "bad_after=\"set bad_after=1\"\n",
                "off_load=\"NO\"\n",
                "drm_load=\"YES\"\n",
            ),
        );
    let (mut it, con) = interp(&fs, 256 * MIB, 0);
    assert!(it.read_conf().is_empty());
    assert!(it.modules().get("good").unwrap().wanted());
    assert!(!it.modules().get("off").unwrap().wanted());
    it.load_kernel_and_modules().unwrap();
    let names: Vec<(&str, &str, Option<&str>)> = it
        .files()
        .iter()
        .map(|f| (f.name.as_str(), f.ftype.as_str(), f.args.as_deref()))
        .collect();
    assert_eq!(
        names,
        [
            ("/boot/kernel/kernel", "elf kernel", None),
            ("/boot/kernel/good.ko", "elf obj module", Some("a=1 b=2")),
            ("/boot/fw.bin", "cpu_microcode", None),
        ]
    );
    let env = it.env();
    assert_eq!(
        (env.get("before_good"), env.get("after_good")),
        (Some("1"), Some("1"))
    );
    assert_eq!(
        (env.get("bad_failed"), env.get("bad_after")),
        (Some("1"), None)
    );
    let out = con.text();
    assert!(
        out.contains("Not loading blacklisted module 'drm'"),
        "{out}"
    );
    assert!(out.contains("good.../boot/kernel/good.ko size "), "{out}");
    assert!(out.contains("can't find 'bad'\nfailed!\n"), "{out}");
    assert!(out.contains("Could not load one or more modules!"), "{out}");
}

#[test]
fn interactive_commands() {
    let mut fs = MemFs::new();
    fs.add("/boot/kernel/kernel", build_kernel(0x100))
        .add("/etc/motd", "hello\n")
        .add("/boot/cmds", "# comment\nset inc=1\necho included $inc\n")
        .add("/boot/loop", "include /boot/loop\n")
        .add("/boot/badconf", "exec=\"boot\"\n");
    let (mut it, con) = interp(&fs, 256 * MIB, 0);
    let mut mem = SparseMem::new(256 * MIB, 0);
    assert_eq!(it.exec("", &mut mem).unwrap(), Action::Continue);
    it.exec("set a=\"b c\"", &mut mem).unwrap();
    assert_eq!(it.env().get("a"), Some("b c"));
    it.exec("set empty", &mut mem).unwrap();
    assert_eq!(it.env().get("empty"), Some(""));
    it.exec("show a", &mut mem).unwrap();
    assert!(con.text().ends_with("b c\n"));
    it.exec("unset a", &mut mem).unwrap();
    assert!(matches!(
        it.exec("show a", &mut mem),
        Err(Error::Usage { .. })
    ));
    it.exec("show", &mut mem).unwrap();
    assert!(con.text().contains("LINES=24\n"));
    it.exec("echo '$x' \"${LINES}\" a\\ b", &mut mem).unwrap();
    assert!(con.text().ends_with("$x 24 a b\n"), "{}", con.text());
    it.exec("ls /boot", &mut mem).unwrap();
    assert!(
        con.text().contains("/boot\n   badconf\n   cmds\n"),
        "{}",
        con.text()
    );
    assert!(con.text().contains(" d kernel\n"));
    it.exec("more /etc/motd", &mut mem).unwrap();
    assert!(
        con.text()
            .contains("*** FILE /etc/motd BEGIN ***\nhello\n*** FILE /etc/motd END ***\n")
    );
    it.exec("help", &mut mem).unwrap();
    assert!(con.text().contains(" lsmod "));
    it.exec("include /boot/cmds", &mut mem).unwrap();
    assert!(con.text().ends_with("included 1\n"));
    assert!(matches!(
        it.exec("include /boot/loop", &mut mem),
        Err(Error::Include { .. })
    ));
    assert!(
        matches!(it.exec("frobnicate", &mut mem), Err(Error::UnknownCommand(c)) if c == "frobnicate")
    );
    assert!(matches!(
        it.exec("echo \"open", &mut mem),
        Err(Error::Usage { .. })
    ));
    assert!(matches!(it.exec("ls /nope", &mut mem), Err(Error::Fs(_))));
    assert_eq!(it.exec("reboot", &mut mem).unwrap(), Action::Reboot);
    assert_eq!(it.exec("quit", &mut mem).unwrap(), Action::Quit);
    // `boot` from loader.conf `exec=` is refused (there is no guest memory
    // at that point), reported as a warning.
    it.env_mut().set("loader_conf_files", "/boot/badconf");
    let w = it.read_conf();
    assert!(
        matches!(&w[..], [ConfWarning::ExecFailed { command, .. }] if command == "boot"),
        "{w:?}"
    );
    // `unload` forgets everything, and `boot` loads the kernel again.
    it.exec("load kernel", &mut mem).unwrap();
    it.exec("unload", &mut mem).unwrap();
    assert!(it.files().is_empty());
    assert_eq!(it.env().get("kernelname"), None);
    assert!(matches!(
        it.exec("boot", &mut mem).unwrap(),
        Action::Boot(_)
    ));
    assert_eq!(it.files().len(), 1);
}
