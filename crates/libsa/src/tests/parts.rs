//! Partition tables built with sgdisk / sfdisk (plus hand-written BSD
//! disklabels, which Linux has no tool for), checked against the `gpt`
//! crate and through `open_image`.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use super::check_standard;
use super::util::*;
use crate::part::{self, PartType, Scheme};
use crate::{Error, FileDisk, FileSystem, MemDisk, open_image};

fn write_at(path: &Path, off: u64, data: &[u8]) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(data, off).unwrap();
}

fn sectors(len: usize) -> u64 {
    (len as u64).div_ceil(512)
}

fn blank(tmp: &TempDir, name: &str, nsec: u64) -> PathBuf {
    let p = tmp.join(name);
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(nsec * 512).unwrap();
    p
}

/// A GPT disk: each partition is (contents or a size in sectors, gdisk type
/// code, bootme). Returns the path and each partition's start sector.
fn gpt_disk(tmp: &TempDir, parts: &[(&[u8], u64, &str, bool)]) -> (PathBuf, Vec<u64>) {
    let mut starts = Vec::new();
    let mut next = 2048u64;
    let mut args: Vec<String> = Vec::new();
    for (i, (data, min, code, bootme)) in parts.iter().enumerate() {
        let n = sectors(data.len()).max(*min);
        starts.push(next);
        args.push(format!("-n={}:{}:{}", i + 1, next, next + n - 1));
        args.push(format!("-t={}:{code}", i + 1));
        if *bootme {
            args.push(format!("-A={}:set:59", i + 1));
        }
        next = (next + n).next_multiple_of(2048);
    }
    let path = blank(tmp, "gpt.img", next + 2048);
    args.push(path.to_str().unwrap().to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run("sgdisk", &args, None);
    for ((data, ..), start) in parts.iter().zip(&starts) {
        write_at(&path, start * 512, data);
    }
    (path, starts)
}

fn open_path(path: &Path) -> Result<Box<dyn FileSystem + Send + Sync>, Error> {
    open_image(
        Arc::new(FileDisk::open(path).unwrap()),
        path.to_str().unwrap(),
    )
}

/// Our GPT reader agrees with the `gpt` crate.
fn oracle_check(img: &[u8]) {
    let disk = gpt::GptConfig::new()
        .writable(false)
        .open_from_device(std::io::Cursor::new(img.to_vec()))
        .unwrap();
    let want: Vec<(String, u64, u64, PartType, bool)> = disk
        .partitions()
        .iter()
        .filter(|(_, p)| p.is_used())
        .map(|(id, p)| {
            (
                format!("p{id}"),
                p.first_lba * 512,
                (p.last_lba - p.first_lba + 1) * 512,
                PartType::Gpt(p.part_type_guid.guid.to_bytes_le()),
                p.flags & (1 << 59) != 0,
            )
        })
        .collect();
    let (scheme, ours) = part::read_table(&MemDisk(img.to_vec()), "oracle")
        .unwrap()
        .unwrap();
    assert_eq!(scheme, Scheme::Gpt);
    let got: Vec<_> = ours
        .into_iter()
        .map(|p| (p.name, p.start, p.size, p.ptype, p.bootable))
        .collect();
    assert_eq!(got, want);
}

/// One GPT layout shared by the GPT tests (sgdisk sleeps a second per run):
/// p1 freebsd-boot, p2 freebsd-ufs (UFS1, `/which` = p2), p3 freebsd-ufs
/// bootme (UFS2, `/which` = p3). Returns the image and the start sectors.
fn gpt_layout() -> &'static (Vec<u8>, Vec<u64>) {
    static LAYOUT: OnceLock<(Vec<u8>, Vec<u64>)> = OnceLock::new();
    LAYOUT.get_or_init(|| {
        let tmp = TempDir::new("gpt");
        let a = mini_image(&tmp, 1, "p2");
        let b = mini_image(&tmp, 2, "p3");
        let (path, starts) = gpt_disk(
            &tmp,
            &[
                (&[], 128, "a501", false),
                (&a, 0, "a503", false),
                (&b, 0, "a503", true),
            ],
        );
        (std::fs::read(path).unwrap(), starts)
    })
}

fn open_mem(img: &[u8]) -> Result<Box<dyn FileSystem + Send + Sync>, Error> {
    open_image(Arc::new(MemDisk(img.to_vec())), "gpt.img")
}

#[test]
fn gpt_file_disk_and_oracle() {
    let (img, _) = gpt_layout();
    oracle_check(img);
    let tmp = TempDir::new("gptfile");
    let path = tmp.join("disk.img");
    std::fs::write(&path, img).unwrap();
    let fs = open_path(&path).unwrap();
    assert_eq!(fs.describe(), "disk0p3 (UFS2)");
    check_standard(&*fs, false, false);
}

/// Patch GPT entry `idx` (0-based) in both copies and fix every CRC, so
/// variants of one layout need one (slow: it sleeps) sgdisk run.
fn patch_entry(img: &mut [u8], idx: usize, f: impl Fn(&mut [u8])) {
    let nsec = img.len() / 512;
    for hdr in [1, nsec - 1] {
        let h = hdr * 512;
        let table = u64::from_le_bytes(img[h + 72..h + 80].try_into().unwrap()) as usize * 512;
        let n = u32::from_le_bytes(img[h + 80..h + 84].try_into().unwrap()) as usize;
        let sz = u32::from_le_bytes(img[h + 84..h + 88].try_into().unwrap()) as usize;
        f(&mut img[table + idx * sz..table + (idx + 1) * sz]);
        let crc = crate::crc32::crc32(&img[table..table + n * sz]);
        img[h + 88..h + 92].copy_from_slice(&crc.to_le_bytes());
        fix_header_crc(img, hdr);
    }
}

#[test]
fn gpt_bootme_wins() {
    let (good, starts) = gpt_layout();
    // p3 bootme: chosen over the earlier p2.
    let fs = open_mem(good).unwrap();
    assert_eq!(fs.describe(), "disk0p3 (UFS2)");
    assert_eq!(fs.read_file("/which").unwrap(), b"p3");
    let open = |img: &[u8]| {
        oracle_check(img);
        open_mem(img)
    };

    // Without bootme the first freebsd-ufs wins.
    let mut img = good.clone();
    patch_entry(&mut img, 2, |e| e[48..56].fill(0));
    let fs = open(&img).unwrap();
    assert_eq!(fs.describe(), "disk0p2 (UFS1)");
    assert_eq!(fs.read_file("/which").unwrap(), b"p2");

    // A bootme freebsd-ufs partition without a file system is skipped.
    let mut img = good.clone();
    let sb = starts[2] as usize * 512 + 8192;
    img[sb..sb + 8192].fill(0);
    let fs = open(&img).unwrap();
    assert_eq!(fs.describe(), "disk0p2 (UFS1)");

    // UFS only in Linux-type partitions: not chosen.
    const LINUX: [u8; 16] = [
        0xaf, 0x3d, 0xc6, 0x0f, 0x83, 0x84, 0x72, 0x47, 0x8e, 0x79, 0x3d, 0x69, 0xd8, 0x47, 0x7d,
        0xe4,
    ];
    let mut img = good.clone();
    for i in [1, 2] {
        patch_entry(&mut img, i, |e| e[..16].copy_from_slice(&LINUX));
    }
    let e = super::err_of(open(&img));
    assert!(matches!(e, Error::BadPartition { .. }), "{e}");
    assert!(e.to_string().contains("no partition holding a UFS"), "{e}");
}

/// Recompute a GPT header's CRC after patching it.
fn fix_header_crc(img: &mut [u8], lba: usize) {
    let h = &mut img[lba * 512..lba * 512 + 92];
    h[16..20].fill(0);
    let crc = crate::crc32::crc32(h);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn gpt_corruption() {
    let good = &gpt_layout().0;
    let nsec = good.len() / 512;
    let open = |img: Vec<u8>| open_mem(&img);
    assert_eq!(open(good.clone()).unwrap().describe(), "disk0p3 (UFS2)");

    // Primary header damaged: the backup is used.
    let mut img = good.clone();
    img[512 + 60] ^= 0xff;
    assert_eq!(open(img.clone()).unwrap().describe(), "disk0p3 (UFS2)");
    // ... and the backup damaged too.
    img[(nsec - 1) * 512 + 60] ^= 0xff;
    let e = super::err_of(open(img));
    assert!(matches!(e, Error::BadPartition { .. }), "{e}");
    assert!(e.to_string().contains("CRC32"), "{e}");

    // Entry tables damaged in both copies.
    let mut img = good.clone();
    img[2 * 512 + 40] ^= 1;
    assert!(open(img.clone()).is_ok(), "backup entries should be used");
    img[(nsec - 33) * 512 + 40] ^= 1;
    let e = super::err_of(open(img));
    assert!(e.to_string().contains("entry table"), "{e}");

    // Absurd entry counts / sizes, with valid header CRCs.
    for (off, val, why) in [
        (80usize, u32::MAX, "absurd"),
        (80, 0, "0 entries"),
        (84, 100, "entries of 100"),
        (84, 1 << 20, "entries of"),
        (12, 10_000, "size"),
    ] {
        let mut img = good.clone();
        for lba in [1, nsec - 1] {
            img[lba * 512 + off..lba * 512 + off + 4].copy_from_slice(&val.to_le_bytes());
            if off != 12 {
                fix_header_crc(&mut img, lba);
            }
        }
        let e = super::err_of(open(img));
        assert!(e.to_string().contains(why), "{why}: {e}");
    }

    // A truncated GPT disk: the partition is cut short.
    let e = super::err_of(open(good[..good.len() / 2].to_vec()));
    assert!(
        matches!(e, Error::BadPartition { .. } | Error::BadSuperblock { .. }),
        "{e}"
    );
}

/// A BSD disklabel (`struct disklabel`, 8 partitions). `parts`: (index,
/// offset, size, fstype); `c` is (offset, size).
fn disklabel(c: (u32, u32), parts: &[(usize, u32, u32, u8)]) -> Vec<u8> {
    let mut l = vec![0u8; 512];
    let put32 =
        |l: &mut Vec<u8>, off: usize, v: u32| l[off..off + 4].copy_from_slice(&v.to_le_bytes());
    put32(&mut l, 0, part::DISKMAGIC);
    put32(&mut l, 40, 512);
    put32(&mut l, 132, part::DISKMAGIC);
    l[138..140].copy_from_slice(&8u16.to_le_bytes());
    let mut all = vec![(2usize, c.0, c.1, 0u8)];
    all.extend_from_slice(parts);
    for (i, off, size, fstype) in all {
        let p = 148 + 16 * i;
        put32(&mut l, p, size);
        put32(&mut l, p + 4, off);
        l[p + 12] = fstype;
    }
    // d_checksum: xor of the 16-bit words up to the end of the partitions.
    let sum = l[..148 + 16 * 8]
        .chunks(2)
        .fold(0u16, |a, w| a ^ u16::from_le_bytes([w[0], w[1]]));
    l[136..138].copy_from_slice(&sum.to_le_bytes());
    l
}

fn mbr_disk(tmp: &TempDir, nsec: u64, script: &str) -> PathBuf {
    let path = blank(tmp, "mbr.img", nsec);
    run("sfdisk", &["-q", path.to_str().unwrap()], Some(script));
    path
}

#[test]
fn mbr_disklabel() {
    let tmp = TempDir::new("mbr1");
    let img = mini_image(&tmp, 1, "a");
    let n = sectors(img.len()) as u32;
    let slice = 63u32;
    let size = n + 16 + 64;
    let script =
        format!("label: dos\nunit: sectors\n\nstart={slice}, size={size}, type=a5, bootable\n");
    for absolute in [false, true] {
        let path = mbr_disk(&tmp, u64::from(slice + size + 100), &script);
        // Modern labels are slice-relative (c at 0); old ones absolute (c at
        // the slice start). part.c subtracts c's offset either way.
        let base = if absolute { slice } else { 0 };
        let label = disklabel(
            (base, size),
            &[
                (0, base + 16, n, part::FS_BSDFFS),
                (1, base + 16 + n, 64, 1),
            ],
        );
        write_at(&path, u64::from(slice + 1) * 512, &label);
        write_at(&path, u64::from(slice + 16) * 512, &img);
        let (scheme, parts) = part::read_table(&FileDisk::open(&path).unwrap(), "t")
            .unwrap()
            .unwrap();
        assert_eq!(scheme, Scheme::Mbr);
        let names: Vec<_> = parts.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["s1", "s1a", "s1b"]);
        assert!(parts[0].bootable);
        assert_eq!(parts[1].start, u64::from(slice + 16) * 512);
        let fs = open_path(&path).unwrap();
        assert_eq!(fs.describe(), "disk0s1a (UFS1)");
        check_standard(&*fs, false, false);
        std::fs::remove_file(&path).unwrap();
    }
}

#[test]
fn mbr_direct_and_logical() {
    let tmp = TempDir::new("mbr2");
    let img = mini_image(&tmp, 2, "d");
    let n = sectors(img.len());

    // UFS directly in a FreeBSD slice (no label), after a Linux slice.
    let s2 = 4096;
    let script = format!(
        "label: dos\nunit: sectors\n\nstart=2048, size=2048, type=83\nstart={s2}, size={n}, type=a5\n"
    );
    let path = mbr_disk(&tmp, s2 + n + 10, &script);
    write_at(&path, s2 * 512, &img);
    let fs = open_path(&path).unwrap();
    assert_eq!(fs.describe(), "disk0s2 (UFS2)");
    assert_eq!(fs.read_file("/which").unwrap(), b"d");
    std::fs::remove_file(&path).unwrap();

    // UFS in a logical slice inside an extended partition.
    let ext = 4096;
    let logical = ext + 2048;
    let script = format!(
        "label: dos\nunit: sectors\n\nstart=2048, size=2048, type=83\nstart={ext}, size={}, type=5\nstart={logical}, size={n}, type=a5\n",
        n + 2048
    );
    let path = mbr_disk(&tmp, logical + n + 10, &script);
    write_at(&path, logical * 512, &img);
    let (scheme, parts) = part::read_table(&FileDisk::open(&path).unwrap(), "t")
        .unwrap()
        .unwrap();
    assert_eq!(scheme, Scheme::Mbr);
    let names: Vec<_> = parts.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["s1", "s5"]);
    let fs = open_path(&path).unwrap();
    assert_eq!(fs.describe(), "disk0s5 (UFS2)");
    std::fs::remove_file(&path).unwrap();

    // Nothing usable: an MBR with only an empty Linux slice.
    let script = "label: dos\nunit: sectors\n\nstart=2048, size=2048, type=83\n";
    let path = mbr_disk(&tmp, 8192, script);
    let e = super::err_of(open_path(&path));
    assert!(e.to_string().contains("MBR table has no partition"), "{e}");
}

#[test]
fn dedicated_disklabel() {
    // A disklabel at sector 1 of the whole disk (no MBR): disk0a.
    let tmp = TempDir::new("bsd");
    let img = mini_image(&tmp, 1, "a");
    let n = sectors(img.len()) as u32;
    let mut disk = vec![0u8; (n as usize + 16) * 512];
    disk[512..1024].copy_from_slice(&disklabel((0, n + 16), &[(0, 16, n, part::FS_BSDFFS)]));
    disk[16 * 512..16 * 512 + img.len()].copy_from_slice(&img);
    let fs = open_image(Arc::new(MemDisk(disk.clone())), "bsd").unwrap();
    assert_eq!(fs.describe(), "disk0a (UFS1)");
    assert_eq!(fs.read_file("/which").unwrap(), b"a");

    // Hostile labels: bad partition counts are ignored, offsets below c's
    // are skipped, sizes past the disk are clipped (then rejected by UFS).
    let mut bad = disk.clone();
    bad[512 + 138] = 200;
    assert!(open_image(Arc::new(MemDisk(bad)), "bsd").is_err());
    let mut bad = disk.clone();
    bad[512..1024].copy_from_slice(&disklabel((100, n), &[(0, 16, n, part::FS_BSDFFS)]));
    assert!(open_image(Arc::new(MemDisk(bad)), "bsd").is_err());
    let mut bad = disk;
    bad[512..1024].copy_from_slice(&disklabel(
        (0, u32::MAX),
        &[(0, 16, u32::MAX, 7), (3, u32::MAX, u32::MAX, 7)],
    ));
    let fs = open_image(Arc::new(MemDisk(bad)), "bsd").unwrap();
    assert_eq!(fs.describe(), "disk0a (UFS1)");
}

#[test]
fn raw_image_is_disk0() {
    let tmp = TempDir::new("raw");
    let img = mini_image(&tmp, 2, "raw");
    let fs = open_image(Arc::new(MemDisk(img)), "raw").unwrap();
    assert_eq!(fs.describe(), "disk0 (UFS2)");
    assert_eq!(fs.read_file("/which").unwrap(), b"raw");
}
