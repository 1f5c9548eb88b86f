//! Module dependencies, raw files, and hostile ELF input.

mod common;

use common::*;
use userboot::Error;
use userboot::elf::{ElfError, ElfErrorKind};

fn loaded_names(it: &userboot::Interp) -> Vec<String> {
    it.files().iter().map(|f| f.name.clone()).collect()
}

fn with_kernel() -> MemFs {
    let mut fs = MemFs::new();
    fs.add("/boot/kernel/kernel", build_kernel(0x1000));
    fs
}

#[test]
fn dependency_chain_loads_in_order_after_the_module() {
    let mut fs = with_kernel();
    fs.add(
        "/boot/kernel/a.ko",
        build_ko(&[("a", 1)], &[("b", 1, 1, 1)]),
    )
    .add(
        "/boot/kernel/b.ko",
        build_ko(&[("b", 1)], &[("c", 1, 2, 3)]),
    )
    .add(
        "/boot/kernel/c.ko",
        build_ko(&[("c", 3)], &[("kernel", 1, 1, 1)]),
    );
    let (mut it, con) = interp(&fs, 256 * MIB, 0);
    let mut mem = SparseMem::new(256 * MIB, 0);
    it.exec("load kernel", &mut mem).unwrap();
    it.exec("load a", &mut mem).unwrap();
    assert_eq!(
        loaded_names(&it),
        [
            "/boot/kernel/kernel",
            "/boot/kernel/a.ko",
            "/boot/kernel/b.ko",
            "/boot/kernel/c.ko"
        ]
    );
    let f = it.files();
    for w in f[1..].windows(2) {
        assert_eq!(w[1].addr, (w[0].addr + w[0].size).next_multiple_of(4096));
    }
    assert_eq!(f[1].addr, (f[0].addr + f[0].size).next_multiple_of(4096));
    let out = con.text();
    assert!(
        out.contains("loading required module 'b'\n")
            && out.contains("loading required module 'c'\n"),
        "{out}"
    );
    // The kernel provides "kernel" (fake module name), so nothing more.
    assert!(!out.contains("'kernel'"), "{out}");
    // Loading again is a warning, not an error.
    it.exec("load a", &mut mem).unwrap();
    assert!(con.text().contains("warning: module 'a' already loaded"));
}

#[test]
fn dependencies_are_tried_last_declared_first() {
    let mut fs = with_kernel();
    fs.add(
        "/boot/kernel/a.ko",
        build_ko(&[("a", 1)], &[("b", 1, 1, 1), ("c", 1, 1, 1)]),
    )
    .add("/boot/kernel/b.ko", build_ko(&[("b", 1)], &[]))
    .add("/boot/kernel/c.ko", build_ko(&[("c", 1)], &[]));
    let (mut it, _) = interp(&fs, 256 * MIB, 0);
    let mut mem = SparseMem::new(256 * MIB, 0);
    it.exec("load kernel", &mut mem).unwrap();
    it.exec("load a", &mut mem).unwrap();
    assert_eq!(
        loaded_names(&it)[1..],
        [
            "/boot/kernel/a.ko",
            "/boot/kernel/c.ko",
            "/boot/kernel/b.ko"
        ]
    );
}

#[test]
fn dependency_cycle_terminates() {
    let mut fs = with_kernel();
    fs.add(
        "/boot/kernel/a.ko",
        build_ko(&[("a", 1)], &[("b", 1, 1, 1)]),
    )
    .add(
        "/boot/kernel/b.ko",
        build_ko(&[("b", 1)], &[("a", 1, 1, 1)]),
    );
    let (mut it, _) = interp(&fs, 256 * MIB, 0);
    let mut mem = SparseMem::new(256 * MIB, 0);
    it.exec("load kernel", &mut mem).unwrap();
    it.exec("load a", &mut mem).unwrap();
    assert_eq!(
        loaded_names(&it)[1..],
        ["/boot/kernel/a.ko", "/boot/kernel/b.ko"]
    );

    // Without MODULE_VERSION the file is found again but provides nothing:
    // the loader's "exists but with wrong version" error ends the cycle.
    let mut fs = with_kernel();
    fs.add("/boot/kernel/p.ko", build_ko(&[], &[("q", 1, 1, 1)]))
        .add("/boot/kernel/q.ko", build_ko(&[], &[("p", 1, 1, 1)]));
    let (mut it, _) = interp(&fs, 256 * MIB, 0);
    it.exec("load kernel", &mut mem).unwrap();
    let e = it.exec("load p", &mut mem).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Dependency { .. } | Error::DependencyVersion { .. }
        ),
        "{e:?}"
    );
    assert_eq!(loaded_names(&it), ["/boot/kernel/kernel"]);
}

#[test]
fn missing_or_wrong_version_dependency() {
    let mut fs = with_kernel();
    fs.add(
        "/boot/kernel/a.ko",
        build_ko(&[("a", 1)], &[("nothere", 1, 1, 1)]),
    )
    .add(
        "/boot/kernel/v.ko",
        build_ko(&[("v", 1)], &[("old", 2, 2, 3)]),
    )
    .add("/boot/kernel/old.ko", build_ko(&[("old", 1)], &[]));
    let (mut it, _) = interp(&fs, 256 * MIB, 0);
    let mut mem = SparseMem::new(256 * MIB, 0);
    it.exec("load kernel", &mut mem).unwrap();
    let e = it.exec("load a", &mut mem).unwrap_err();
    assert_eq!(
        e.to_string(),
        "/boot/kernel/a.ko: required module 'nothere' could not be loaded: can't find 'nothere'"
    );
    assert_eq!(
        loaded_names(&it),
        ["/boot/kernel/kernel"],
        "the module is dropped with its failed dependency"
    );
    let e = it.exec("load v", &mut mem).unwrap_err();
    assert_eq!(
        e.to_string(),
        "/boot/kernel/v.ko: required module 'old' exists but with wrong version"
    );
    assert_eq!(loaded_names(&it), ["/boot/kernel/kernel"]);
    // The load address was restored: the next module goes right after the kernel.
    it.exec("load old", &mut mem).unwrap();
    let f = it.files();
    assert_eq!(f[1].addr, (f[0].addr + f[0].size).next_multiple_of(4096));
}

#[test]
fn linker_hints_pick_the_file() {
    let mut fs = with_kernel();
    // MDT_VERSION hint: module "virtio" version 1 lives in "virtio_pci.ko".
    let mut rec = Vec::new();
    rec.extend_from_slice(&3i32.to_le_bytes());
    rec.push(6);
    rec.extend_from_slice(b"virtio");
    while (rec.len() + 4) % 4 != 0 || rec.len() < 4 + 7 {
        rec.push(0);
    }
    let mut rec_aligned = rec.clone();
    // Align the version int relative to the data after the header int.
    let payload_start = 4; // after reclen
    while (payload_start + rec_aligned.len()) % 4 != 0 {
        rec_aligned.push(0);
    }
    rec_aligned.extend_from_slice(&1i32.to_le_bytes());
    rec_aligned.push(13);
    rec_aligned.extend_from_slice(b"virtio_pci.ko");
    let mut hints = 1i32.to_le_bytes().to_vec();
    hints.extend_from_slice(&(rec_aligned.len() as i32).to_le_bytes());
    hints.extend_from_slice(&rec_aligned);
    fs.add("/boot/kernel/linker.hints", hints)
        .add(
            "/boot/kernel/virtio_pci.ko",
            build_ko(&[("virtio", 1)], &[]),
        )
        .add(
            "/boot/kernel/blk.ko",
            build_ko(&[("blk", 1)], &[("virtio", 1, 1, 1)]),
        );
    let (mut it, _) = interp(&fs, 256 * MIB, 0);
    let mut mem = SparseMem::new(256 * MIB, 0);
    it.exec("load kernel", &mut mem).unwrap();
    it.exec("load blk", &mut mem).unwrap();
    assert_eq!(
        loaded_names(&it)[1..],
        ["/boot/kernel/blk.ko", "/boot/kernel/virtio_pci.ko"]
    );
}

#[test]
fn raw_files_follow_unaligned() {
    let mut fs = with_kernel();
    fs.add("/boot/a.img", vec![1u8; 5])
        .add("/boot/b.img", vec![2u8; 3])
        .add("/boot/empty", vec![]);
    let (mut it, con) = interp(&fs, 256 * MIB, 0);
    let mut mem = SparseMem::new(256 * MIB, 0);
    let e = it
        .exec("load -t md_image /boot/a.img", &mut mem)
        .unwrap_err();
    assert!(matches!(e, Error::NoKernel { .. }), "{e:?}");
    it.exec("load kernel", &mut mem).unwrap();
    it.exec("load -t md_image /boot/a.img", &mut mem).unwrap();
    it.exec("load -t md_image /boot/b.img", &mut mem).unwrap();
    it.exec("load -t nothing /boot/empty", &mut mem).unwrap();
    it.exec("load -t md_image /boot/a.img", &mut mem).unwrap();
    let f = it.files();
    assert_eq!(f.len(), 4);
    let kend = f[0].addr + f[0].size;
    assert_eq!(
        (f[1].addr, f[1].size, f[1].ftype.as_str()),
        (kend, 5, "md_image")
    );
    assert_eq!((f[2].addr, f[2].size), (kend + 5, 3));
    assert_eq!((f[3].addr, f[3].size), (kend + 8, 0));
    let out = con.text();
    assert!(
        out.contains("/boot/a.img size=0x5\n") && out.contains("/boot/empty size=0\n"),
        "{out}"
    );
    assert!(
        out.contains("warning: file '/boot/a.img' already loaded"),
        "{out}"
    );
    assert!(matches!(
        it.exec("load -t x /boot/none", &mut mem),
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        it.exec("load -t", &mut mem),
        Err(Error::Usage { .. })
    ));
    // Boot writes them where they were placed.
    let userboot::Action::Boot(_) = it.exec("boot", &mut mem).unwrap() else {
        panic!()
    };
    assert_eq!(mem.read(kend, 8), [1, 1, 1, 1, 1, 2, 2, 2]);
}

fn load_kernel_bytes(bytes: Vec<u8>) -> Result<(), Error> {
    let mut fs = MemFs::new();
    fs.add("/boot/kernel/kernel", bytes);
    let (mut it, _) = interp(&fs, 256 * MIB, 0);
    it.exec(
        "load /boot/kernel/kernel",
        &mut SparseMem::new(256 * MIB, 0),
    )
    .map(|_| ())
}

fn load_ko_bytes(kernel: &[u8], bytes: Vec<u8>) -> Result<(), Error> {
    let mut fs = MemFs::new();
    fs.add("/boot/kernel/kernel", kernel)
        .add("/boot/kernel/m.ko", bytes);
    let (mut it, _) = interp(&fs, 256 * MIB, 0);
    let mut mem = SparseMem::new(256 * MIB, 0);
    it.exec("load kernel", &mut mem).unwrap();
    it.exec("load /boot/kernel/m.ko", &mut mem).map(|_| ())
}

fn elf_kind(r: Result<(), Error>) -> ElfErrorKind {
    match r {
        Err(Error::Elf(ElfError { path, kind })) => {
            assert!(path.starts_with("/boot/kernel/"), "{path}");
            kind
        }
        other => panic!("expected an ELF error, got {other:?}"),
    }
}

#[test]
fn broken_kernels_give_clear_errors() {
    let k = build_kernel(0x1000);
    assert_eq!(
        elf_kind(load_kernel_bytes(b"hello".to_vec())),
        ElfErrorKind::NotElf
    );
    assert_eq!(
        elf_kind(load_kernel_bytes(k[..40].to_vec())),
        ElfErrorKind::Truncated("ELF header")
    );
    let mut i386 = k.clone();
    i386[18] = 3; // EM_386
    assert_eq!(
        elf_kind(load_kernel_bytes(i386)),
        ElfErrorKind::WrongArch("machine 3".into())
    );
    let mut class32 = k.clone();
    class32[4] = 1;
    assert!(matches!(
        elf_kind(load_kernel_bytes(class32)),
        ElfErrorKind::WrongArch(_)
    ));
    let mut dynamic = k.clone();
    dynamic[16] = 3; // ET_DYN
    assert_eq!(
        elf_kind(load_kernel_bytes(dynamic)),
        ElfErrorKind::WrongType(3)
    );
    let mut phnum = k.clone();
    phnum[56..58].copy_from_slice(&0xffffu16.to_le_bytes());
    assert_eq!(
        elf_kind(load_kernel_bytes(phnum)),
        ElfErrorKind::PhdrsNotInFirstPage
    );
    let mut entry = k.clone();
    entry[24..32].copy_from_slice(&0x123u64.to_le_bytes());
    assert_eq!(
        elf_kind(load_kernel_bytes(entry)),
        ElfErrorKind::NotAKernel(0x123)
    );
    // Truncated segment data.
    let cut = k[..4096 + 4].to_vec();
    assert_eq!(
        elf_kind(load_kernel_bytes(cut)),
        ElfErrorKind::Truncated("segment data")
    );

    // A segment with an absurd memory size, and one placed beyond 1 GiB.
    let phoff = rd64(&k, 32) as usize;
    let mut huge = k.clone();
    huge[phoff + 40..phoff + 48].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(
        load_kernel_bytes(huge),
        Err(Error::MemoryTooSmall { .. })
    ));
    let mut far = k.clone();
    far[phoff + 16..phoff + 24].copy_from_slice(&0xffff_ffff_c800_0000u64.to_le_bytes());
    let mut fs = MemFs::new();
    fs.add("/boot/kernel/kernel", far);
    let (mut it, _) = interp(&fs, 3 << 30, 0);
    let e = it
        .exec("load /boot/kernel/kernel", &mut SparseMem::new(3 << 30, 0))
        .unwrap_err();
    assert!(matches!(e, Error::Beyond1G { .. }), "{e:?}");

    // A second kernel is refused.
    let mut fs = with_kernel();
    fs.add("/boot/kernel2", build_kernel(0x10));
    let (mut it, _) = interp(&fs, 256 * MIB, 0);
    let mut mem = SparseMem::new(256 * MIB, 0);
    it.exec("load kernel", &mut mem).unwrap();
    assert!(matches!(
        it.exec("load /boot/kernel2", &mut mem),
        Err(Error::KernelAlreadyLoaded { .. })
    ));
}

#[test]
fn broken_modules_give_clear_errors() {
    let k = build_kernel(0x1000);
    let ko = build_ko(&[("m", 1)], &[]);
    let (shoff, shnum) = (rd64(&ko, 40) as usize, rd16(&ko, 60) as usize);
    let mut no_shdr = ko.clone();
    no_shdr[40..48].copy_from_slice(&0u64.to_le_bytes());
    assert!(matches!(
        elf_kind(load_ko_bytes(&k, no_shdr)),
        ElfErrorKind::Malformed(_)
    ));
    let mut far_shdr = ko.clone();
    far_shdr[40..48].copy_from_slice(&(u64::MAX - 10).to_le_bytes());
    assert_eq!(
        elf_kind(load_ko_bytes(&k, far_shdr)),
        ElfErrorKind::Truncated("section headers")
    );
    // Giant section size / alignment.
    let sec = |i: usize| shoff + i * 64;
    let text = (0..shnum).find(|&i| rd32(&ko, sec(i) + 4) == 1).unwrap();
    let mut giant = ko.clone();
    giant[sec(text) + 32..sec(text) + 40].copy_from_slice(&(1u64 << 62).to_le_bytes());
    assert!(matches!(
        load_ko_bytes(&k, giant),
        Err(Error::MemoryTooSmall { .. })
    ));
    let mut align = ko.clone();
    align[sec(text) + 48..sec(text) + 56].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(load_ko_bytes(&k, align).is_err());
    // No symbol table.
    let mut nosym = ko.clone();
    for i in 0..shnum {
        if rd32(&ko, sec(i) + 4) == 2 {
            nosym[sec(i) + 4..sec(i) + 8].copy_from_slice(&1u32.to_le_bytes());
        }
    }
    assert_eq!(elf_kind(load_ko_bytes(&k, nosym)), ElfErrorKind::NoSymtab);
    // Bad shstrndx.
    let mut names = ko.clone();
    names[62..64].copy_from_slice(&0u16.to_le_bytes());
    assert_eq!(
        elf_kind(load_ko_bytes(&k, names)),
        ElfErrorKind::NoSectionNames
    );
    // Section data outside the file.
    let mut data = ko.clone();
    data[sec(text) + 24..sec(text) + 32].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert_eq!(
        elf_kind(load_ko_bytes(&k, data)),
        ElfErrorKind::Truncated("section data")
    );
    // A module before the kernel.
    let mut fs = MemFs::new();
    fs.add("/boot/kernel/m.ko", ko.clone());
    let (mut it, _) = interp(&fs, 256 * MIB, 0);
    let e = it
        .exec("load m", &mut SparseMem::new(256 * MIB, 0))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "/boot/kernel/m.ko: can't load before the kernel"
    );
}

/// Every truncation and many deterministic byte corruptions of a kernel and
/// a module: errors are fine, panics and runaway allocations are not.
#[test]
fn corrupted_inputs_never_panic() {
    let k = build_kernel(0x1000);
    let ko = build_ko(&[("m", 1)], &[("kernel", 1, 1, 1)]);
    for len in (0..k.len()).step_by(7) {
        let _ = load_kernel_bytes(k[..len].to_vec());
    }
    for len in 0..ko.len() {
        let _ = load_ko_bytes(&k, ko[..len].to_vec());
    }
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..400 {
        let mut m = ko.clone();
        for _ in 0..4 {
            // Corrupt the headers and early sections, where the structure lives.
            let at = (next() as usize) % m.len().min(0x800);
            m[at] = next() as u8;
        }
        let _ = load_ko_bytes(&k, m);
        let mut kk = k.clone();
        for _ in 0..4 {
            let at = (next() as usize) % 0x200;
            kk[at] = next() as u8;
        }
        let _ = load_kernel_bytes(kk);
    }
}

#[test]
fn compiled_in_kernel_modules_satisfy_dependencies() {
    let kernel = build_dynamic_kernel();
    let mut fs = MemFs::new();
    fs.add("/boot/kernel/kernel", kernel.clone()).add(
        "/boot/kernel/drv.ko",
        build_ko(&[("drv", 1)], &[("pci", 1, 7, 7)]),
    );
    let (mut it, con) = interp(&fs, 256 * MIB, 0);
    let mut mem = SparseMem::new(256 * MIB, 0);
    it.exec("load kernel", &mut mem).unwrap();
    let k = &it.files()[0];
    assert_eq!(k.modules.len(), 1);
    assert_eq!(
        (k.modules[0].name.as_str(), k.modules[0].version),
        ("pci", 7)
    );
    // MODINFOMD_DYNAMIC carries the unrelocated VA of PT_DYNAMIC.
    let dynamic = k
        .metadata
        .iter()
        .find(|(t, _)| *t == 5)
        .expect("DYNAMIC record");
    let phoff = rd64(&kernel, 32) as usize;
    let dyn_vaddr = (0..rd16(&kernel, 56) as usize)
        .map(|i| phoff + i * 56)
        .find(|&p| rd32(&kernel, p) == 2)
        .map(|p| rd64(&kernel, p + 16))
        .unwrap();
    assert_eq!(dynamic.1, dyn_vaddr.to_le_bytes());
    it.exec("load drv", &mut mem).unwrap();
    assert_eq!(it.files().len(), 2);
    assert!(
        !con.text().contains("loading required module"),
        "{}",
        con.text()
    );
    it.exec("lsmod", &mut mem).unwrap();
    assert!(con.text().contains("  modules: pci.7 \n"), "{}", con.text());
    // Metadata order with DYNAMIC: ELFHDR, DYNAMIC, ... (newest first).
    let userboot::Action::Boot(h) = it.exec("boot", &mut mem).unwrap() else {
        panic!()
    };
    let recs =
        userboot::metadata::decode(&mem.read(h.modulep, (h.kernend - h.modulep) as usize)).unwrap();
    let kinds: Vec<u32> = recs.iter().map(|r| r.kind).collect();
    assert_eq!(
        &kinds[4..10],
        [0x9001, 0x8008, 0x8006, 0x8007, 0x8002, 0x8005]
    );
}
