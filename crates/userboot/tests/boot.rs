//! End-to-end: loader.conf → kernel + modules + raw file → guest memory,
//! checked byte by byte against the boot ABI (§1–§5).

mod common;

use common::*;
use userboot::metadata::{self, Record};
use userboot::{Action, BootParams, Error, Interp};

const KERNBASE: u64 = 0xffff_ffff_8000_0000;

const DEFAULTS: &str = r#"# defaults
kernel="kernel"
bootfile="kernel"
module_path="/boot/modules"
loader_conf_files="/boot/device.hints /boot/loader.conf"
hostuuid_load="YES"
hostuuid_name="/etc/hostid"
hostuuid_type="hostuuid"
entropy_cache_load="YES"
entropy_cache_name="/boot/entropy"
entropy_cache_type="boot_entropy_cache"
module_blacklist="drm drm2"
"#;

fn boot_fs(kernel: &[u8]) -> MemFs {
    let mut fs = MemFs::new();
    fs.add("/boot/kernel/kernel", kernel)
        .add(
            "/boot/kernel/foo.ko",
            build_ko(&[("foo", 1)], &[("bar", 1, 1, 1)]),
        )
        .add("/boot/kernel/bar.ko", build_ko(&[("bar", 1)], &[]))
        .add("/boot/kernel/drm.ko", build_ko(&[("drm", 1)], &[]))
        .add("/boot/defaults/loader.conf", DEFAULTS)
        .add(
            "/boot/device.hints",
            "hint.uart.0.at=\"isa\"\nhint.uart.0.port=\"0x3F8\"\n",
        )
        .add(
            "/boot/loader.conf",
            "foo_load=\"YES\"\ndrm_load=\"YES\"\nautoboot_delay=\"-1\"\n",
        )
        .add("/etc/hostid", "f00dfeed-1234\n")
        .add(
            "/etc/fstab",
            "# Device\tMountpoint\tFStype\tOptions\tDump\tPass#\n/dev/vtbd0p2\t/\tufs\trw\t1\t1\n",
        );
    fs
}

/// Records grouped per file (each group starts with its NAME record).
fn groups(recs: &[Record]) -> Vec<Vec<Record>> {
    let mut out: Vec<Vec<Record>> = Vec::new();
    for r in recs {
        if r.kind == metadata::MODINFO_NAME {
            out.push(Vec::new());
        }
        out.last_mut()
            .expect("first record is NAME")
            .push(r.clone());
    }
    out
}

fn find(g: &[Record], kind: u32) -> &[u8] {
    &g.iter()
        .find(|r| r.kind == kind)
        .unwrap_or_else(|| panic!("no record {kind:#x}"))
        .data
}

fn u64_of(d: &[u8]) -> u64 {
    u64::from_le_bytes(d.try_into().unwrap())
}

fn str_of(d: &[u8]) -> &str {
    std::str::from_utf8(d.strip_suffix(&[0]).expect("NUL-terminated")).unwrap()
}

/// `(p_type, p_flags, p_offset, p_vaddr, p_filesz, p_memsz)` of each phdr.
fn phdrs(elf: &[u8]) -> Vec<(u32, u32, u64, u64, u64, u64)> {
    let (phoff, phnum) = (rd64(elf, 32) as usize, rd16(elf, 56) as usize);
    (0..phnum)
        .map(|i| {
            let p = phoff + i * 56;
            (
                rd32(elf, p),
                rd32(elf, p + 4),
                rd64(elf, p + 8),
                rd64(elf, p + 16),
                rd64(elf, p + 32),
                rd64(elf, p + 40),
            )
        })
        .collect()
}

/// `(sh_type, sh_offset, sh_size, sh_addr)` of each section.
fn shdrs(table: &[u8]) -> Vec<(u32, u64, u64, u64)> {
    table
        .chunks_exact(64)
        .map(|s| (rd32(s, 4), rd64(s, 24), rd64(s, 32), rd64(s, 16)))
        .collect()
}

#[test]
fn full_boot_layout_metadata_env_and_handoff() {
    let kernel = build_kernel(0x3000);
    let fs = boot_fs(&kernel);
    let (mut it, con) = interp(&fs, 256 * MIB, 0);
    let warnings = it.read_conf();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(it.autoboot(), userboot::Autoboot::Immediate);
    let mut mem = SparseMem::new(256 * MIB, 0);
    let Action::Boot(h) = it.exec("boot", &mut mem).expect("boot") else {
        panic!("no boot")
    };
    let out = con.text();

    // Registers (§2.4).
    assert_eq!(h.entry, rd64(&kernel, 24));
    assert_eq!(
        (h.rsp, h.cr3, h.gdt_base, h.gdt_limit),
        (0x1000, 0x2000, 0x5000, 23)
    );
    assert_eq!(
        (h.cr0, h.cr4, h.efer, h.rflags),
        (0x8000_0021, 0x20, 0x500, 2)
    );

    // Kernel segments at p_vaddr - KERNBASE, BSS zeroed over the 0xAA fill.
    let mut expect_msg = String::from("/boot/kernel/kernel ");
    for (_, flags, off, vaddr, filesz, memsz) in phdrs(&kernel).into_iter().filter(|p| p.0 == 1) {
        let pa = vaddr - KERNBASE;
        assert_eq!(
            mem.read(pa, filesz as usize),
            &kernel[off as usize..(off + filesz) as usize]
        );
        assert!(
            mem.read(pa + filesz, (memsz - filesz) as usize)
                .iter()
                .all(|&b| b == 0),
            "BSS not zeroed"
        );
        if flags & 2 == 0 {
            expect_msg.push_str(&format!("text={filesz:#x} "));
        } else {
            expect_msg.push_str(&format!("data={filesz:#x}+{:#x} ", memsz - filesz));
        }
    }

    // Metadata (§3): at the page after the environment, well formed.
    assert_eq!(h.modulep % 4096, 0);
    let md_bytes = mem.read(h.modulep, (h.kernend - h.modulep) as usize);
    let recs = metadata::decode(&md_bytes).expect("metadata ends with MODINFO_END");
    let end = recs
        .last()
        .map(|r| (r.offset + 8 + r.data.len()).next_multiple_of(8))
        .unwrap();
    assert_eq!(&md_bytes[end..end + 8], &[0; 8]);
    assert_eq!(
        h.kernend,
        (h.modulep + end as u64 + 8).next_multiple_of(4096)
    );
    for r in &recs {
        assert_eq!(r.offset % 8, 0);
        let pad = &md_bytes
            [r.offset + 8 + r.data.len()..(r.offset + 8 + r.data.len()).next_multiple_of(8)];
        assert!(pad.iter().all(|&b| b == 0), "padding not zeroed");
    }
    let g = groups(&recs);
    let names: Vec<&str> = g.iter().map(|g| str_of(&g[0].data)).collect();
    assert_eq!(
        names,
        [
            "/boot/kernel/kernel",
            "/etc/hostid",
            "/boot/kernel/foo.ko",
            "/boot/kernel/bar.ko"
        ]
    );
    let kinds = |g: &[Record]| g.iter().map(|r| r.kind).collect::<Vec<_>>();
    assert_eq!(
        kinds(&g[0]),
        [
            1, 2, 3, 4, 0x9001, 0x8008, 0x8006, 0x8007, 0x8002, 0x8004, 0x8003, 0x800b, 0x800a,
            0x8009
        ]
    );
    assert_eq!(kinds(&g[1]), [1, 2, 3, 4]);
    assert_eq!(kinds(&g[2]), [1, 2, 3, 4, 0x8002, 0x8009]);
    assert_eq!(kinds(&g[3]), [1, 2, 3, 4, 0x8002, 0x8009]);

    // Kernel record values.
    let k = &g[0];
    assert_eq!(str_of(find(k, 2)), "elf kernel");
    assert_eq!(u64_of(find(k, 3)), 0x200000);
    let ksize = u64_of(find(k, 4));
    assert_eq!(
        find(k, 0x9001),
        metadata::smap_bytes(&metadata::smap(256 * MIB, 0))
    );
    assert_eq!(find(k, 0x9001).len(), 40);
    assert_eq!(u64_of(find(k, 0x8008)), h.kernend);
    assert_eq!(u64_of(find(k, 0x8006)), h.envp);
    assert_eq!(find(k, 0x8007), &0x1000u32.to_le_bytes()); // RB_SERIAL from boot_serial=1
    assert_eq!(find(k, 0x8002), &kernel[..64]);
    let (shoff, shnum) = (rd64(&kernel, 40) as usize, rd16(&kernel, 60) as usize);
    let table = &kernel[shoff..shoff + shnum * 64];
    assert_eq!(find(k, 0x8009), table);
    let secs = shdrs(table);
    // .ctors: the 8-byte PROGBITS section right after .data.
    let ctors = secs.iter().rfind(|s| s.0 == 1 && s.2 == 8).unwrap();
    assert_eq!(u64_of(find(k, 0x800a)), ctors.3);
    assert_eq!(find(k, 0x800b), &8u64.to_le_bytes());

    // Symbols (§4.1): [size][symtab][pad][size][strtab][pad] from the
    // 8-aligned end of the segments; ESYM is the kernel's end.
    let (ssym, esym) = (u64_of(find(k, 0x8003)), u64_of(find(k, 0x8004)));
    let seg_end = phdrs(&kernel)
        .iter()
        .filter(|p| p.0 == 1)
        .map(|p| p.3 + p.5 - KERNBASE)
        .max()
        .unwrap();
    assert_eq!(ssym, seg_end.next_multiple_of(8));
    assert_eq!(esym, 0x200000 + ksize);
    let symtab = secs.iter().find(|s| s.0 == 2).unwrap();
    let strtab = secs[rd32(table, secs.iter().position(|s| s.0 == 2).unwrap() * 64 + 40) as usize];
    assert_eq!(mem.u64(ssym), symtab.2);
    assert_eq!(
        mem.read(ssym + 8, symtab.2 as usize),
        &kernel[symtab.1 as usize..(symtab.1 + symtab.2) as usize]
    );
    let st = (ssym + 8 + symtab.2).next_multiple_of(8);
    assert_eq!(mem.u64(st), strtab.2);
    assert_eq!(
        mem.read(st + 8, strtab.2 as usize),
        &kernel[strtab.1 as usize..(strtab.1 + strtab.2) as usize]
    );
    assert_eq!(esym, (st + 8 + strtab.2).next_multiple_of(8));
    expect_msg.push_str(&format!("syms=[0x8+{:#x}+0x8+{:#x}]\n", symtab.2, strtab.2));
    assert!(out.contains(&expect_msg), "missing {expect_msg:?} in {out}");

    // Raw file right at the kernel's end, unaligned, no metadata.
    let raw = &g[1];
    assert_eq!(str_of(find(raw, 2)), "hostuuid");
    assert_eq!(u64_of(find(raw, 3)), esym);
    assert_eq!(u64_of(find(raw, 4)), 14);
    assert_eq!(mem.read(esym, 14), b"f00dfeed-1234\n");
    assert!(out.contains("/etc/hostid size=0xe\n"), "{out}");

    // Modules page aligned one after the other, dependency after dependent.
    let foo = &g[2];
    let foo_addr = u64_of(find(foo, 3));
    let foo_size = u64_of(find(foo, 4));
    assert_eq!(foo_addr, (esym + 14).next_multiple_of(4096));
    assert_eq!(str_of(find(foo, 2)), "elf obj module");
    let bar_addr = u64_of(find(&g[3], 3));
    assert_eq!(bar_addr, (foo_addr + foo_size).next_multiple_of(4096));
    assert!(
        out.contains(&format!(
            "/boot/kernel/foo.ko size {foo_size:#x} at {foo_addr:#x}\n"
        )),
        "{out}"
    );
    assert!(out.contains("loading required module 'bar'\n"), "{out}");
    assert!(!out.contains("drm.ko"), "blacklisted module loaded: {out}");

    // The module's SHDR: placed sections inside the module, contents copied.
    let ko = fs.files["/boot/kernel/foo.ko"].clone();
    assert_eq!(find(foo, 0x8002), &ko[..64]);
    let (kshoff, kshnum) = (rd64(&ko, 40) as usize, rd16(&ko, 60) as usize);
    let placed = shdrs(find(foo, 0x8009));
    assert_eq!(placed.len(), kshnum);
    let orig = shdrs(&ko[kshoff..kshoff + kshnum * 64]);
    let mut placed_count = 0;
    for (p, o) in placed.iter().zip(&orig) {
        assert_eq!((p.0, p.1, p.2), (o.0, o.1, o.2), "only sh_addr may change");
        if p.3 == 0 {
            continue;
        }
        placed_count += 1;
        assert!(p.3 >= foo_addr && p.3 + p.2 <= foo_addr + foo_size);
        let got = mem.read(p.3, p.2 as usize);
        if p.0 == 8 {
            assert!(got.iter().all(|&b| b == 0), "NOBITS not zeroed");
        } else {
            assert_eq!(got, &ko[p.1 as usize..(p.1 + p.2) as usize]);
        }
    }
    assert!(
        placed_count >= 6,
        "text, data, bss, set, rodata, symtab, strtab, shstrtab, relas"
    );

    // Environment (§5): sorted, double-NUL terminated, page after the files.
    let last_end = bar_addr + u64_of(find(&g[3], 4));
    assert_eq!(h.envp, last_end.next_multiple_of(4096));
    let env = mem.read(h.envp, (h.modulep - h.envp) as usize);
    let block_len = env.windows(2).position(|w| w == [0, 0]).unwrap() + 2;
    assert_eq!(
        h.modulep,
        (h.envp + block_len as u64).next_multiple_of(4096)
    );
    let vars: Vec<&str> = std::str::from_utf8(&env[..block_len - 2])
        .unwrap()
        .split('\0')
        .collect();
    let mut sorted = vars.clone();
    sorted.sort_by(|a, b| a.split('=').next().cmp(&b.split('=').next()));
    assert_eq!(vars, sorted);
    for want in [
        "LINES=24",
        "boot_serial=1",
        "console=userboot",
        "currdev=disk0p2:",
        "hint.uart.0.at=isa",
        "hint.uart.0.port=0x3F8",
        "kernelname=/boot/kernel/kernel",
        "kernel_path=/boot/kernel",
        "module_path=/boot/kernel;/boot/modules",
        "smbios.bios.vendor=BHYVE",
        "vfs.root.mountfrom=ufs:/dev/vtbd0p2",
        "vfs.root.mountfrom.options=rw",
    ] {
        assert!(vars.contains(&want), "{want} missing from {vars:?}");
    }

    // Low pages (§1.4, §2).
    assert_eq!(
        mem.read(0x1000, 12),
        [
            &0u32.to_le_bytes()[..],
            &(h.modulep as u32).to_le_bytes(),
            &(h.kernend as u32).to_le_bytes()
        ]
        .concat()
    );
    assert!(mem.read(0x100c, 4096 - 12).iter().all(|&b| b == 0));
    for i in 0..512u64 {
        assert_eq!(mem.u64(0x2000 + i * 8), 0x3003);
        assert_eq!(mem.u64(0x3000 + i * 8), 0x4003);
        assert_eq!(mem.u64(0x4000 + i * 8), (i << 21) | 0x83);
    }
    assert_eq!(mem.u64(0x5000), 0);
    assert_eq!(mem.u64(0x5008), 0x0020_9800_0000_0000);
    assert_eq!(mem.u64(0x5010), 0x0000_9000_0000_0000);

    // lsmod reflects the same files.
    it.exec("lsmod", &mut mem).unwrap();
    let out = con.text();
    assert!(
        out.contains(" 0x200000: /boot/kernel/kernel (elf kernel, "),
        "{out}"
    );
    assert!(out.contains("  modules: foo.1 \n"), "{out}");
}

#[test]
fn smap_with_highmem_and_boot_flags() {
    let kernel = build_kernel(0x1000);
    let mut fs = MemFs::new();
    fs.add("/boot/kernel/kernel", kernel);
    let cap = Capture::default();
    let p = BootParams {
        lowmem: 3 << 30,
        highmem: 1 << 30,
        currdev: "host0:".into(),
        user_env: vec!["boot_serial=NO".into(), "x=first".into(), "x=second".into()],
    };
    let mut it = Interp::new(&fs, Box::new(cap.clone()), p);
    it.read_conf();
    let mut mem = SparseMem::new(3 << 30, 1 << 30);
    let Action::Boot(h) = it.exec("boot -s -v", &mut mem).unwrap() else {
        panic!()
    };
    let md = mem.read(h.modulep, (h.kernend - h.modulep) as usize);
    let recs = metadata::decode(&md).unwrap();
    let g = groups(&recs);
    assert_eq!(g.len(), 1);
    let kinds: Vec<u32> = g[0].iter().map(|r| r.kind).collect();
    // ARGS follows TYPE; no DYNAMIC, no modules.
    assert_eq!(&kinds[..5], [1, 2, 6, 3, 4]);
    assert_eq!(str_of(find(&g[0], 6)), "-s -v");
    // boot_serial=NO from -e overrides the built-in: no RB_SERIAL.
    assert_eq!(find(&g[0], 0x8007), &(0x2u32 | 0x800).to_le_bytes());
    let smap = find(&g[0], 0x9001);
    assert_eq!(smap.len(), 60);
    assert_eq!(
        smap,
        metadata::smap_bytes(&metadata::smap(3 << 30, 1 << 30))
    );
    assert_eq!(rd64(smap, 20), 0x100000);
    assert_eq!(rd64(smap, 28), (3 << 30) - 0x100000);
    assert_eq!(rd64(smap, 40), 1 << 32);
    assert_eq!(rd64(smap, 48), 1 << 30);
    assert_eq!(it.env().get("x"), Some("first"));
    assert_eq!(it.env().get("currdev"), Some("host0:"));
    // No fstab: no root mount variable.
    assert_eq!(it.env().get("vfs.root.mountfrom"), None);
}

#[test]
fn memory_too_small() {
    // The kernel itself does not fit.
    let big = build_kernel(3 * MIB);
    let mut fs = MemFs::new();
    fs.add("/boot/kernel/kernel", big);
    let (mut it, _) = interp(&fs, 4 * MIB, 0);
    let mut mem = SparseMem::new(4 * MIB, 0);
    match it.exec("boot", &mut mem) {
        Err(Error::MemoryTooSmall { what, limit, .. }) => {
            assert!(what.contains("/boot/kernel/kernel"), "{what}");
            assert_eq!(limit, 4 * MIB);
        }
        other => panic!("expected MemoryTooSmall, got {other:?}"),
    }

    // The kernel fits, the environment and metadata after it do not.
    let k = build_kernel(0x1000);
    let mut fs = MemFs::new();
    fs.add("/boot/kernel/kernel", k);
    let (mut probe, _) = interp(&fs, 256 * MIB, 0);
    probe
        .exec(
            "load /boot/kernel/kernel",
            &mut SparseMem::new(256 * MIB, 0),
        )
        .unwrap();
    let end = probe.files()[0].addr + probe.files()[0].size;
    let low = end.next_multiple_of(4096);
    let (mut it, _) = interp(&fs, low, 0);
    let mut mem = SparseMem::new(low, 0);
    match it.exec("boot", &mut mem) {
        Err(Error::MemoryTooSmall { what, .. }) => assert_eq!(what, "kernel environment"),
        other => panic!("expected MemoryTooSmall, got {other:?}"),
    }
    let e = it.exec("boot", &mut mem).unwrap_err().to_string();
    assert!(e.contains("guest memory too small"), "{e}");
}

#[test]
fn kernel_selection_and_args() {
    let kernel = build_kernel(0x1000);
    let mut fs = MemFs::new();
    fs.add("/boot/kernel.old/kernel", kernel.clone())
        .add("/boot/kernel/kernel", b"not an elf".to_vec())
        .add("/boot/modules/x.ko", build_ko(&[("x", 1)], &[]))
        .add(
            "/boot/defaults/loader.conf",
            "kernel=\"kernel\"\nbootfile=\"kernel\"\nkernel_options=\"-v\"\nmodule_path=\"/boot/modules\"\n",
        )
        .add("/boot/loader.conf", "kernel=\"kernel.old\"\nx_load=\"YES\"\n");
    let (mut it, con) = interp(&fs, 256 * MIB, 0);
    it.read_conf();
    let mut mem = SparseMem::new(256 * MIB, 0);
    let Action::Boot(h) = it.exec("boot", &mut mem).unwrap() else {
        panic!()
    };
    assert_eq!(it.files()[0].name, "/boot/kernel.old/kernel");
    assert_eq!(it.files()[0].args.as_deref(), Some("-v"));
    assert_eq!(it.files()[1].name, "/boot/modules/x.ko");
    assert_eq!(
        it.env().get("module_path"),
        Some("/boot/kernel.old;/boot/modules")
    );
    assert_eq!(it.env().get("kernel_path"), Some("/boot/kernel.old"));
    assert_eq!(h.howto & 0x800, 0x800);
    assert!(con.text().contains("Loading kernel...\n"));

    // The default kernel is not ELF: a clear error naming the file.
    let (mut it, con) = interp(&fs, 256 * MIB, 0);
    it.read_conf();
    let err = it.exec("boot kernel", &mut mem).unwrap_err().to_string();
    assert_eq!(err, "/boot/kernel/kernel: not an ELF file");
    assert!(con.text().contains("Failed to load kernel 'kernel'"));
}
