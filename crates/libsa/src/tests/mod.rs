//! Tests over real images built with Debian's makefs / sgdisk / sfdisk, and
//! over a host directory holding the same tree.

pub mod util;

mod host;
mod images;
mod oracle;
mod parts;

use crate::{Error, FileKind, FileSystem};
use util::*;

/// What every file system holding `util::populate`'s tree must answer.
/// `host`: absolute symlinks point outside the tree on the host.
pub fn check_standard(fs: &dyn FileSystem, full: bool, host: bool) {
    let d = fs.describe();
    let read = |p: &str| fs.read_file(p).unwrap_or_else(|e| panic!("{d}: {p}: {e}"));
    assert_eq!(read("/hello.txt"), b"hello, world\n");
    assert_eq!(read("hello.txt"), b"hello, world\n");
    assert_eq!(read("/empty.txt"), b"");
    assert_eq!(read("/boot/kernel.GENERIC/kernel"), pattern(1, KERNEL_LEN));
    assert_eq!(
        read("//boot///kernel/kernel"),
        pattern(1, KERNEL_LEN),
        "relative dir symlink"
    );
    assert_eq!(read("/boot/kernel/mod.ko"), pattern(2, 70_000));
    assert_eq!(
        read("/boot/../boot/./loader.conf"),
        b"autoboot_delay=\"1\"\n"
    );
    assert_eq!(
        read("/sub/up"),
        b"hello, world\n",
        "relative symlink with .."
    );
    assert_eq!(
        read("/slowrel"),
        b"slow symlink target\n",
        "slow relative symlink"
    );
    assert_eq!(
        read("/links/c00"),
        b"hello, world\n",
        "32 symlinks are allowed"
    );
    assert_eq!(read(&format!("/{}", "n".repeat(255))), b"long name\n");
    if !host {
        assert_eq!(
            read("/abs"),
            pattern(1, KERNEL_LEN),
            "absolute fast symlink"
        );
        assert_eq!(
            read("/slowlink"),
            b"slow symlink target\n",
            "slow absolute symlink"
        );
    }

    let st = fs.stat("/boot/kernel").unwrap();
    assert_eq!(st.kind, FileKind::Dir);
    let st = fs.stat("/boot/kernel/kernel").unwrap();
    assert_eq!((st.kind, st.size), (FileKind::File, KERNEL_LEN as u64));
    assert_eq!(fs.stat("/").unwrap().kind, FileKind::Dir);
    assert_eq!(fs.stat("/boot/").unwrap().kind, FileKind::Dir);

    let mut root = fs.read_dir("/").unwrap();
    root.sort_by(|a, b| a.name.cmp(&b.name));
    let kind = |n: &str| root.iter().find(|e| e.name == n).map(|e| e.kind);
    assert_eq!(kind("boot"), Some(FileKind::Dir));
    assert_eq!(kind("hello.txt"), Some(FileKind::File));
    assert_eq!(kind("abs"), Some(FileKind::Symlink));
    assert_eq!(kind("slowlink"), Some(FileKind::Symlink));
    assert_eq!(kind("."), None);
    assert_eq!(kind(".."), None);
    let boot = fs.read_dir("/boot/kernel").unwrap();
    let mut names: Vec<_> = boot.iter().map(|e| e.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["kernel", "mod.ko"]);

    // Errors, each naming the path.
    let err = |p: &str| fs.read_file(p).unwrap_err();
    assert!(
        matches!(err("/boot"), Error::IsDir { .. }),
        "{}",
        err("/boot")
    );
    assert!(matches!(err("/nope"), Error::NotFound { .. }));
    assert!(matches!(err("/boot/nope"), Error::NotFound { .. }));
    assert!(matches!(err("/dangling"), Error::NotFound { .. }));
    assert!(
        matches!(err("/hello.txt/x"), Error::NotDir { .. }),
        "{}",
        err("/hello.txt/x")
    );
    assert!(
        matches!(err("/loop1"), Error::SymlinkLoop { .. }),
        "{}",
        err("/loop1")
    );
    assert!(matches!(err("/self"), Error::SymlinkLoop { .. }));
    if !host {
        // The host applies its own limit (40 on Linux).
        assert!(
            matches!(err("/links/over"), Error::SymlinkLoop { .. }),
            "{}",
            err("/links/over")
        );
    }
    assert!(matches!(
        err(&format!("/{}", "n".repeat(256))),
        Error::NameTooLong { .. }
    ));
    assert!(matches!(err(&"/a".repeat(600)), Error::NameTooLong { .. }));
    assert!(matches!(
        fs.read_dir("/hello.txt"),
        Err(Error::NotDir { .. })
    ));
    assert!(err("/nope").to_string().contains("/nope"));

    if full {
        let big = fs.read_dir("/bigdir").unwrap();
        assert_eq!(big.len(), BIGDIR_N);
        assert!(big.iter().all(|e| e.kind == FileKind::File));
        let mut names: Vec<_> = big.iter().map(|e| e.name.clone()).collect();
        names.sort();
        let want: Vec<_> = (0..BIGDIR_N).map(|i| format!("f{i:04}")).collect();
        assert_eq!(names, want);
        for i in (0..BIGDIR_N).step_by(333).chain([BIGDIR_N - 1]) {
            assert_eq!(read(&format!("/bigdir/f{i:04}")), b"bigdir\n");
        }
        assert!(matches!(err("/bigdir/f2000"), Error::NotFound { .. }));
        assert_eq!(read("/double.bin"), pattern(3, DOUBLE_LEN));
    }
}

/// The error of a result whose success type has no `Debug`.
pub fn err_of<T>(r: Result<T, Error>) -> Error {
    match r {
        Ok(_) => panic!("expected an error, got success"),
        Err(e) => e,
    }
}
