//! UFS1/UFS2 images from makefs in several block sizes, read through
//! `open_image` over a `FileDisk`.

use std::sync::Arc;

use super::check_standard;
use super::util::*;
use crate::{Disk, FileDisk, FileSystem, MemDisk, open_image};

/// One tree, imaged by makefs in every configuration (creating the 2000
/// files is the slow part, so it is done once).
#[test]
fn makefs_images() {
    let tmp = TempDir::new("ufs");
    let tree = tmp.join("tree");
    std::fs::create_dir(&tree).unwrap();
    populate(&tree, true);
    // (version, bsize, fsize): 4096 puts /double.bin into double-indirect
    // blocks on both UFS1 and UFS2; larger blocks cover single indirect.
    for (version, bsize, fsize) in [
        (1, 4096, 512),
        (2, 4096, 512),
        (1, 16384, 2048),
        (2, 16384, 2048),
        (2, 32768, 4096),
        (1, 65536, 8192),
    ] {
        eprintln!("UFS{version} bsize {bsize} fsize {fsize}");
        let img = tmp.join("fs.img");
        makefs(version, bsize, fsize, &tree, &img);
        let disk = Arc::new(FileDisk::open(&img).unwrap());
        assert_eq!(disk.size(), std::fs::metadata(&img).unwrap().len());
        let fs = open_image(disk, img.to_str().unwrap()).unwrap();
        assert_eq!(fs.describe(), format!("disk0 (UFS{version})"));
        check_standard(&*fs, true, false);
        std::fs::remove_file(&img).unwrap();
    }
    // The same tree through HostFs answers the same.
    let host = crate::HostFs::new(&tree).unwrap();
    check_standard(&host, true, true);
}

/// Patch a little-endian i32 into an image.
fn put32(img: &mut [u8], off: usize, v: u32) {
    img[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

/// Absurd superblock values are `BadSuperblock`, never a panic or a huge
/// allocation. makefs puts both UFS1 and UFS2 superblocks at 8192.
#[test]
fn hostile_superblocks() {
    let tmp = TempDir::new("badsb");
    for version in [1, 2] {
        let good = mini_image(&tmp, version, &format!("v{version}"));
        let sb = 8192;
        let magic = u32::from_le_bytes(good[sb + 1372..sb + 1376].try_into().unwrap());
        assert_eq!(
            magic,
            if version == 1 {
                0x0001_1954
            } else {
                0x1954_0119
            }
        );
        let cases: &[(&str, usize, u32)] = &[
            ("bsize huge", 48, 1 << 30),
            ("bsize not power of two", 48, 12345),
            ("bsize negative", 48, 0x8000_0000),
            ("fsize zero", 52, 0),
            ("frag wrong", 56, 3),
            ("bshift wrong", 80, 31),
            ("sbsize huge", 104, 1 << 20),
            ("nindir wrong", 116, 7),
            ("inopb wrong", 120, 1),
            ("ncg zero", 44, 0),
            ("ncg huge", 44, u32::MAX),
            ("ipg zero", 184, 0),
            ("ipg huge", 184, u32::MAX - 63),
            ("fpg negative", 188, u32::MAX),
            ("iblkno huge", 16, 0x7fff_ffff),
            ("size huge (UFS1 old_size)", 36, 0x7fff_ffff),
            ("maxsymlinklen huge", 1320, 100_000),
            ("bad magic (unfinished newfs)", 1372, 0x1996_0408),
        ];
        for &(what, off, val) in cases {
            let mut img = good.clone();
            put32(&mut img, sb + off, val);
            if version == 2 && off == 36 {
                // UFS2 keeps its size in the 64-bit fs_size.
                img[sb + 1080..sb + 1088].copy_from_slice(&(1u64 << 62).to_le_bytes());
            }
            match open_image(Arc::new(MemDisk(img)), what) {
                Err(crate::Error::BadSuperblock { why, .. }) => {
                    eprintln!("UFS{version} {what}: {why}")
                }
                Err(e) => panic!("UFS{version} {what}: wrong error {e}"),
                Ok(fs) => panic!("UFS{version} {what}: accepted as {}", fs.describe()),
            }
        }
        // Wrong magic: nothing there at all.
        let mut img = good.clone();
        put32(&mut img, sb + 1372, 0x1234_5678);
        let e = super::err_of(open_image(Arc::new(MemDisk(img)), "nomagic"));
        assert!(matches!(e, crate::Error::UnknownImage { .. }), "{e}");
        // UFS2 whose fs_sblockloc disagrees with where it was found is not a
        // superblock for that location.
        if version == 2 {
            let mut img = good.clone();
            img[sb + 1000..sb + 1008].copy_from_slice(&65536u64.to_le_bytes());
            let e = super::err_of(open_image(Arc::new(MemDisk(img)), "sblockloc"));
            assert!(matches!(e, crate::Error::UnknownImage { .. }), "{e}");
        }
        // Truncated image: the superblock says more than there is.
        let img = good[..good.len() / 2].to_vec();
        let e = super::err_of(open_image(Arc::new(MemDisk(img)), "half"));
        assert!(e.to_string().contains("truncated"), "{e}");
        let e = super::err_of(open_image(
            Arc::new(MemDisk(good[..10000].to_vec())),
            "tiny",
        ));
        assert!(matches!(e, crate::Error::BadSuperblock { .. }), "{e}");
        let e = super::err_of(open_image(
            Arc::new(MemDisk(good[..4096].to_vec())),
            "tinier",
        ));
        assert!(matches!(e, crate::Error::UnknownImage { .. }), "{e}");
    }
}

#[test]
fn unknown_images() {
    for img in [
        vec![],
        vec![0u8; 100],
        vec![0u8; 1 << 20],
        pattern(9, 1 << 20),
    ] {
        let e = super::err_of(open_image(Arc::new(MemDisk(img)), "junk"));
        assert!(matches!(e, crate::Error::UnknownImage { .. }), "{e}");
        assert!(e.to_string().starts_with("junk: "));
    }
}

#[test]
fn file_disk_errors() {
    let e = FileDisk::open("/nonexistent/libsa-image").unwrap_err();
    assert!(e.to_string().contains("/nonexistent/libsa-image"), "{e}");
    let tmp = TempDir::new("filedisk");
    let p = tmp.join("d");
    std::fs::write(&p, pattern(4, 1000)).unwrap();
    let d = FileDisk::open(&p).unwrap();
    assert_eq!(d.size(), 1000);
    let mut b = [0u8; 10];
    d.read_at(&mut b, 990).unwrap();
    assert_eq!(&b[..], &pattern(4, 1000)[990..]);
    assert!(d.read_at(&mut b, 991).is_err());
    assert!(d.read_at(&mut b, u64::MAX).is_err());
}

/// Random corruption of the metadata area must give errors, not panics.
#[test]
fn random_corruption_never_panics() {
    let tmp = TempDir::new("fuzz");
    for version in [1, 2] {
        let good = mini_image(&tmp, version, &format!("f{version}"));
        let mut x = 0x2545_F491_4F6C_DD1Du64 + u64::from(version);
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let meta = good.len().min(256 * 1024);
        for _ in 0..40 {
            let mut img = good.clone();
            for _ in 0..8 {
                let off = (next() as usize) % meta;
                img[off] = next() as u8;
            }
            let Ok(fs) = open_image(Arc::new(MemDisk(img)), "fuzz") else {
                continue;
            };
            walk(&*fs, "/", 0);
        }
    }
}

fn walk(fs: &dyn FileSystem, dir: &str, depth: usize) {
    if depth > 4 {
        return;
    }
    let Ok(entries) = fs.read_dir(dir) else {
        return;
    };
    // Skip /links: 33 chains of up to 32 hops each dominate the run time.
    for e in entries.iter().filter(|e| e.name != "links").take(20) {
        let p = format!("{}/{}", dir.trim_end_matches('/'), e.name);
        let _ = fs.stat(&p);
        let _ = fs.read_file(&p);
        walk(fs, &p, depth + 1);
    }
}
