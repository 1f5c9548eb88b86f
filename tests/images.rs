//! Disk images for the loader tests, built the way a FreeBSD user's would
//! be: a `/boot` tree (kernel, modules, loader.conf, device.hints) and
//! `/etc/fstab`, made into UFS1 or UFS2 with Debian's `makefs -t ffs`, then
//! optionally wrapped in GPT (sgdisk), an MBR FreeBSD slice holding a BSD
//! disklabel (sfdisk + a label written here: Linux has no bsdlabel), or an
//! MBR slice with UFS directly in it.

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Every file of the image's tree: (path inside the image, contents).
#[derive(Debug, Clone, Default)]
pub struct Tree {
    files: Vec<(String, Vec<u8>)>,
    links: Vec<(String, String)>,
}

impl Tree {
    pub fn new() -> Tree {
        Tree::default()
    }
    pub fn file(mut self, path: &str, data: impl Into<Vec<u8>>) -> Self {
        self.files
            .push((path.trim_start_matches('/').into(), data.into()));
        self
    }
    /// A symbolic link `path -> target`.
    pub fn link(mut self, path: &str, target: &str) -> Self {
        self.links
            .push((path.trim_start_matches('/').into(), target.into()));
        self
    }

    /// Write the tree under `dir`.
    pub fn write(&self, dir: &Path) {
        for (p, d) in &self.files {
            let f = dir.join(p);
            fs::create_dir_all(f.parent().unwrap()).unwrap();
            fs::write(&f, d).unwrap();
        }
        for (p, t) in &self.links {
            let f = dir.join(p);
            fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink(t, &f).unwrap();
        }
    }
}

/// How the UFS file system sits on the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// The whole image is the file system.
    Raw,
    /// GPT with one freebsd-ufs partition.
    Gpt,
    /// MBR slice 1 of type 0xA5 holding a BSD disklabel; UFS in `a`.
    MbrBsdLabel,
    /// MBR slice 1 of type 0xA5 with UFS directly in it.
    MbrSlice,
}

pub const ALL_LAYOUTS: [Layout; 4] = [
    Layout::Raw,
    Layout::Gpt,
    Layout::MbrBsdLabel,
    Layout::MbrSlice,
];

fn need(tool: &str) {
    let ok = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "`{tool}` not found: the loader tests build disk images with it \
         (run scripts/setup-debian.sh, or apt-get install makefs gdisk fdisk)"
    );
}

fn run(cmd: &mut Command) {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `makefs -t ffs` of `tree` in UFS `version` (1 or 2) with the given
/// block and fragment sizes, into `out`.
pub fn makefs(tree: &Tree, version: u32, bsize: u32, fsize: u32, out: &Path) {
    need("makefs");
    let dir = out.with_extension("tree");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    tree.write(&dir);
    run(Command::new("makefs").args([
        "-t",
        "ffs",
        "-o",
        &format!("version={version},bsize={bsize},fsize={fsize}"),
        "-M",
        "4m",
        out.to_str().unwrap(),
        dir.to_str().unwrap(),
    ]));
    fs::remove_dir_all(&dir).unwrap();
}

const SECTOR: u64 = 512;
/// Where partitions start (1 MiB, as partitioning tools align them).
const PART_START: u64 = 2048;
/// BSD label boot area: the `a` partition starts 16 sectors into the slice.
const BBSIZE_SECTORS: u64 = 16;

fn copy_into(img: &Path, fsimg: &Path, at_sector: u64) {
    let data = fs::read(fsimg).unwrap();
    let mut f = fs::OpenOptions::new().write(true).open(img).unwrap();
    f.seek(SeekFrom::Start(at_sector * SECTOR)).unwrap();
    f.write_all(&data).unwrap();
}

/// A BSD disklabel (sys/sys/disklabel.h) for a slice starting at
/// `slice_start` of `slice_len` sectors: `a` = UFS from 16 sectors in,
/// `c` = the whole slice (offsets absolute, as bsdlabel writes them).
pub fn bsd_label(slice_start: u64, slice_len: u64) -> Vec<u8> {
    const DISKMAGIC: u32 = 0x8256_4557;
    const NPART: u16 = 8;
    let mut l = vec![0u8; 148 + 16 * NPART as usize];
    let put32 =
        |l: &mut Vec<u8>, off: usize, v: u32| l[off..off + 4].copy_from_slice(&v.to_le_bytes());
    let put16 =
        |l: &mut Vec<u8>, off: usize, v: u16| l[off..off + 2].copy_from_slice(&v.to_le_bytes());
    put32(&mut l, 0, DISKMAGIC);
    put32(&mut l, 40, SECTOR as u32); // d_secsize
    put32(&mut l, 44, 63); // d_nsectors
    put32(&mut l, 48, 255); // d_ntracks
    put32(&mut l, 56, 63 * 255); // d_secpercyl
    put32(&mut l, 60, slice_len as u32); // d_secperunit
    put16(&mut l, 72, 3600); // d_rpm
    put16(&mut l, 74, 1); // d_interleave
    put32(&mut l, 132, DISKMAGIC); // d_magic2
    put16(&mut l, 138, NPART);
    put32(&mut l, 140, 8192); // d_bbsize
    put32(&mut l, 144, 0); // d_sbsize
    let part = |l: &mut Vec<u8>, i: usize, size: u64, off: u64, fstype: u8| {
        let b = 148 + 16 * i;
        l[b..b + 4].copy_from_slice(&(size as u32).to_le_bytes());
        l[b + 4..b + 8].copy_from_slice(&(off as u32).to_le_bytes());
        l[b + 12] = fstype;
    };
    part(
        &mut l,
        0,
        slice_len - BBSIZE_SECTORS,
        slice_start + BBSIZE_SECTORS,
        7,
    ); // FS_BSDFFS
    part(&mut l, 2, slice_len, slice_start, 0); // c: RAW_PART, FS_UNUSED
    // d_checksum: XOR of every 16-bit word of the label (checksum zero).
    let sum = l
        .chunks(2)
        .fold(0u16, |s, w| s ^ u16::from_le_bytes([w[0], w[1]]));
    put16(&mut l, 136, sum);
    l
}

/// Build a bootable image of `tree` at `out` in `layout`.
pub fn image(tree: &Tree, layout: Layout, version: u32, bsize: u32, fsize: u32, out: &Path) {
    if layout == Layout::Raw {
        makefs(tree, version, bsize, fsize, out);
        return;
    }
    let fsimg = out.with_extension("ufs");
    makefs(tree, version, bsize, fsize, &fsimg);
    let fs_sectors = fs::metadata(&fsimg).unwrap().len().div_ceil(SECTOR);
    let inner = if layout == Layout::MbrBsdLabel {
        fs_sectors + BBSIZE_SECTORS
    } else {
        fs_sectors
    };
    // Room for the GPT backup at the end.
    let total = PART_START + inner + 2048;
    let f = fs::File::create(out).unwrap();
    f.set_len(total * SECTOR).unwrap();
    drop(f);
    let o = out.to_str().unwrap();
    match layout {
        Layout::Gpt => {
            need("sgdisk");
            run(Command::new("sgdisk").args([
                "-o",
                "-n",
                &format!("1:{PART_START}:{}", PART_START + inner - 1),
                "-t",
                "1:a503",
                o,
            ]));
            copy_into(out, &fsimg, PART_START);
        }
        Layout::MbrSlice | Layout::MbrBsdLabel => {
            need("sfdisk");
            let script = format!("label: dos\nstart={PART_START}, size={inner}, type=a5\n");
            let mut child = Command::new("sfdisk")
                .args(["-q", o])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("sfdisk");
            child
                .stdin
                .take()
                .unwrap()
                .write_all(script.as_bytes())
                .unwrap();
            let r = child.wait_with_output().unwrap();
            assert!(
                r.status.success(),
                "sfdisk: {}",
                String::from_utf8_lossy(&r.stderr)
            );
            if layout == Layout::MbrBsdLabel {
                let label = bsd_label(PART_START, inner);
                let mut f = fs::OpenOptions::new().write(true).open(out).unwrap();
                // LABELSECTOR 1 of the slice.
                f.seek(SeekFrom::Start((PART_START + 1) * SECTOR)).unwrap();
                f.write_all(&label).unwrap();
                drop(f);
                copy_into(out, &fsimg, PART_START + BBSIZE_SECTORS);
            } else {
                copy_into(out, &fsimg, PART_START);
            }
        }
        Layout::Raw => unreachable!(),
    }
    fs::remove_file(&fsimg).unwrap();
}

/// A scratch directory for one test, removed when dropped.
#[derive(Debug)]
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let d = std::env::temp_dir().join(format!("bhyve-rs-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        Scratch(d)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
