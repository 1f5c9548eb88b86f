//! Test helpers: temp directories, Debian's makefs/sgdisk/sfdisk, a standard
//! file tree. A missing tool is a test failure with a clear message, never a
//! silent pass.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// A directory under `std::env::temp_dir()`, removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("libsa-test-{}-{n}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Path of a host tool, or a panic explaining how to get it.
pub fn need(tool: &str) -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    for dir in path.split(':').chain(["/usr/sbin", "/sbin", "/usr/bin"]) {
        let p = Path::new(dir).join(tool);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "test needs `{tool}`, which is not installed: run `apt-get install -y makefs gdisk fdisk`"
    );
}

/// Run a command; panic with its output if it fails.
pub fn run(tool: &str, args: &[&str], stdin: Option<&str>) {
    use std::io::Write;
    use std::process::Stdio;
    let mut cmd = Command::new(need(tool));
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{tool}: {e}"));
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{tool} {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Deterministic pseudo-random bytes (xorshift32).
pub fn pattern(seed: u32, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

pub const LONG_D: &str = "dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd";
pub const LONG_E: &str = "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee";

/// Size of `/double.bin` in the full tree: past the single-indirect range
/// for bsize 4096 on both UFS1 (12 + 1024 blocks) and UFS2 (12 + 512).
pub const DOUBLE_LEN: usize = 4_500_000;
pub const KERNEL_LEN: usize = 300_000;
pub const BIGDIR_N: usize = 2000;

/// The standard tree. `full` adds the 2000-entry directory and the
/// double-indirect file.
pub fn populate(root: &Path, full: bool) {
    let w = |p: &str, data: &[u8]| {
        let p = root.join(p);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
    };
    let l = |target: &str, p: &str| symlink(target, root.join(p)).unwrap();
    w("hello.txt", b"hello, world\n");
    w("empty.txt", b"");
    w("boot/kernel.GENERIC/kernel", &pattern(1, KERNEL_LEN));
    w("boot/kernel.GENERIC/mod.ko", &pattern(2, 70_000));
    w("boot/loader.conf", b"autoboot_delay=\"1\"\n");
    l("kernel.GENERIC", "boot/kernel");
    l("/boot/kernel/kernel", "abs");
    w(
        &format!("{LONG_D}/{LONG_E}/target.txt"),
        b"slow symlink target\n",
    );
    l(&format!("/{LONG_D}/{LONG_E}/target.txt"), "slowlink");
    l(&format!("{LONG_D}/{LONG_E}/target.txt"), "slowrel");
    w("sub/file", b"in sub\n");
    l("../hello.txt", "sub/up");
    l("loop2", "loop1");
    l("loop1", "loop2");
    l("self", "self");
    l("nothing-here", "dangling");
    fs::create_dir_all(root.join("links")).unwrap();
    // c00 -> c01 -> ... -> c31 -> ../hello.txt: exactly MAXSYMLINKS hops.
    for i in 0..32 {
        let target = if i == 31 {
            "../hello.txt".to_string()
        } else {
            format!("c{:02}", i + 1)
        };
        l(&target, &format!("links/c{i:02}"));
    }
    l("c00", "links/over");
    w(&"n".repeat(255), b"long name\n");
    if full {
        w("double.bin", &pattern(3, DOUBLE_LEN));
        // Hard links: creating 2000 files is slow on some hosts' /tmp, and
        // the directory still gets 2000 entries.
        w("bigdir/f0000", b"bigdir\n");
        for i in 1..BIGDIR_N {
            fs::hard_link(
                root.join("bigdir/f0000"),
                root.join(format!("bigdir/f{i:04}")),
            )
            .unwrap();
        }
    }
}

/// `makefs -t ffs` the directory `tree` into `out`.
pub fn makefs(version: u32, bsize: u32, fsize: u32, tree: &Path, out: &Path) {
    // makefs underestimates small trees (symlinks, fragments) and, with big
    // blocks, the inodes one cylinder group can hold: give it room.
    let min = format!("{}k", (bsize / 2).max(1024));
    run(
        "makefs",
        &[
            "-t",
            "ffs",
            "-o",
            &format!("version={version},bsize={bsize},fsize={fsize}"),
            "-b",
            "20%",
            "-M",
            &min,
            out.to_str().unwrap(),
            tree.to_str().unwrap(),
        ],
        None,
    );
}

/// A small UFS image whose `/which` says `which`.
pub fn mini_image(tmp: &TempDir, version: u32, which: &str) -> Vec<u8> {
    let tree = tmp.join(&format!("tree-{which}"));
    fs::create_dir_all(&tree).unwrap();
    fs::write(tree.join("which"), which).unwrap();
    populate(&tree, false);
    let img = tmp.join(&format!("{which}.ufs"));
    makefs(version, 4096, 512, &tree, &img);
    fs::read(img).unwrap()
}
