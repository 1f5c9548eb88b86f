//! Our UFS reader cross-checked against independent readers from crates.io,
//! as `parts.rs` does with the `gpt` crate:
//!
//! * `ufs-core` (imported as `ufs`): UFS1 and UFS2 over a byte slice; used on
//!   every image. It lists only a directory's 12 direct blocks (asserted not
//!   to matter here) and reads a symlink of exactly `fs_maxsymlinklen` bytes
//!   from the inode where FreeBSD has it in a block (worked around in
//!   [`UfsCore::readlink`](Oracle::readlink)).
//! * `rufs` (the library of fuse-ufs; its FUSE front ends are optional
//!   features, left off): UFS2 only. It also only looks for the superblock at
//!   65536 (makefs puts it at 8192, see [`SbRemap`]), insists on
//!   `fs_sbsize == fs_fsize` (true for fsize >= 2048 only: makefs's sbsize is
//!   `sizeof(struct fs)` rounded up to a fragment) and asserts that a slow
//!   symlink holds at most 8 sectors (fsize <= 4096). So it checks the UFS2
//!   images with fsize 2048 and 4096. (It also stops reading a 512-byte
//!   directory chunk at an entry with `d_ino` 0, which makefs never writes.)
//!
//! Each image is walked from the root with each oracle, and every object is
//! compared with what [`Ufs`] answers for its path: directory listings (names
//! and kinds, `.` and `..` left out; the oracle's `d_type` also against its
//! inode), file sizes and bytes (and those against the host tree the image
//! was made from), symlink targets (the oracle's against the host's
//! `readlink`) and what each symlink resolves to (the oracle's inodes followed
//! with libsa's rules, against `stat` / `read_file` / `read_dir` through the
//! link).

use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::CString;
use std::fs;
use std::io::{self, Cursor, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

use super::util::*;
use crate::{Error, FileKind, FileSystem, MAXPATHLEN, MAXSYMLINKS, MemDisk, UFS_MAXNAMLEN, Ufs};

const ROOTINO: u64 = 2;

/// The inode-level questions the walk asks an oracle. An oracle that fails
/// on these (valid) images panics: that is a finding too.
trait Oracle {
    fn name(&self) -> &'static str;
    /// All entries of directory `dir`, `.` and `..` included: name, inode,
    /// kind from `d_type`.
    fn list(&mut self, dir: u64) -> Vec<(Vec<u8>, u64, FileKind)>;
    /// Kind and size from the inode.
    fn stat(&mut self, ino: u64) -> (FileKind, u64);
    /// The whole contents of a regular file.
    fn read(&mut self, ino: u64) -> Vec<u8>;
    /// A symlink's target.
    fn readlink(&mut self, ino: u64) -> Vec<u8>;
}

// ---------------------------------------------------------------- ufs-core

struct UfsCore {
    img: Vec<u8>,
    sb: ::ufs::Superblock,
}

impl UfsCore {
    fn new(img: Vec<u8>) -> UfsCore {
        // FreeBSD's search order; makefs puts both UFS1 and UFS2 at 8192.
        let sb = [65536usize, 8192]
            .iter()
            .find_map(|&loc| ::ufs::Superblock::parse(img.get(loc..)?).ok())
            .expect("ufs-core: no superblock at 65536 or 8192");
        UfsCore { img, sb }
    }
}

fn core_kind(t: ::ufs::FileType) -> FileKind {
    match t {
        ::ufs::FileType::Regular => FileKind::File,
        ::ufs::FileType::Directory => FileKind::Dir,
        ::ufs::FileType::Symlink => FileKind::Symlink,
        _ => FileKind::Other,
    }
}

impl Oracle for UfsCore {
    fn name(&self) -> &'static str {
        "ufs-core"
    }
    fn list(&mut self, dir: u64) -> Vec<(Vec<u8>, u64, FileKind)> {
        let inode = ::ufs::read_inode(&self.img, &self.sb, dir).unwrap();
        // ufs-core reads only a directory's 12 direct blocks: a bigger
        // directory would be listed short, so make sure none is compared.
        assert!(
            inode.size <= 12 * self.sb.bsize as u64,
            "ufs-core cannot list directory inode {dir} ({} bytes)",
            inode.size
        );
        ::ufs::list_dir(&self.img, &self.sb, dir)
            .unwrap()
            .into_iter()
            .map(|e| {
                use ::ufs::DirEntryType as T;
                let kind = match e.file_type {
                    T::Regular => FileKind::File,
                    T::Directory => FileKind::Dir,
                    T::Symlink => FileKind::Symlink,
                    T::Unknown => panic!("ufs-core: DT_UNKNOWN for {:?}", e.name),
                    _ => FileKind::Other,
                };
                (e.name, e.ino, kind)
            })
            .collect()
    }
    fn stat(&mut self, ino: u64) -> (FileKind, u64) {
        let i = ::ufs::read_inode(&self.img, &self.sb, ino).unwrap();
        (core_kind(i.file_type), i.size)
    }
    fn read(&mut self, ino: u64) -> Vec<u8> {
        ::ufs::read_file(&self.img, &self.sb, ino).unwrap()
    }
    fn readlink(&mut self, ino: u64) -> Vec<u8> {
        let i = ::ufs::read_inode(&self.img, &self.sb, ino).unwrap();
        // ufs-core 0.1.5 takes a target of exactly fs_maxsymlinklen bytes
        // (60 UFS1, 120 UFS2) from the inode; FreeBSD keeps only shorter ones
        // there (stand/libsa/ufs.c `link_len < fs->fs_maxsymlinklen`,
        // ufs_readlink, makefs), so such a link's target is in its block.
        if i.size >= self.sb.maxsymlinklen as u64 {
            return ::ufs::read_inode_file(&self.img, &self.sb, &i).unwrap();
        }
        ::ufs::read_symlink_target(&self.img, &self.sb, &i).unwrap()
    }
}

// -------------------------------------------------------------------- rufs

/// rufs reads the UFS2 superblock only at 65536 (`SBLOCK_UFS2`); makefs puts
/// it at 8192 with `fs_sblockloc` = 8192, which FreeBSD accepts. So reads of
/// [65536, 73728) are served from [8192, 16384) until the first read outside
/// that window: `rufs::Ufs::new` reads the superblock first and only then the
/// cylinder groups (whose first header may well be at 65536, as with fsize
/// 4096). From then on the image is read as it is. Writes are refused.
struct SbRemap {
    img: Cursor<Vec<u8>>,
    remap: Rc<Cell<bool>>,
}

impl Read for SbRemap {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        const FROM: u64 = 65536;
        const TO: u64 = 8192;
        const LEN: u64 = 8192;
        let pos = self.img.position();
        if !(FROM..FROM + LEN).contains(&pos) {
            self.remap.set(false);
        }
        if !self.remap.get() {
            return self.img.read(buf);
        }
        let n = buf.len().min((FROM + LEN - pos) as usize);
        let src = (pos - FROM + TO) as usize;
        buf[..n].copy_from_slice(&self.img.get_ref()[src..src + n]);
        self.img.set_position(pos + n as u64);
        Ok(n)
    }
}

impl Write for SbRemap {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::ErrorKind::PermissionDenied.into())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for SbRemap {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.img.seek(pos)
    }
}

struct Rufs {
    fs: rufs::Ufs<SbRemap>,
    /// rufs's inode numbers can only be made (safely) by rufs: those seen in
    /// directory listings, by number.
    inos: HashMap<u64, rufs::InodeNum>,
}

impl Rufs {
    fn new(img: Vec<u8>) -> Rufs {
        let remap = Rc::new(Cell::new(true));
        let backend = SbRemap {
            img: Cursor::new(img),
            remap: remap.clone(),
        };
        let fs = rufs::Ufs::new(rufs::BlockReader::new(backend, 512, false))
            .unwrap_or_else(|e| panic!("rufs: {e}"));
        remap.set(false);
        let root = rufs::InodeNum::ROOT;
        Rufs {
            fs,
            inos: HashMap::from([(root.get64(), root)]),
        }
    }
    fn inr(&self, ino: u64) -> rufs::InodeNum {
        *self
            .inos
            .get(&ino)
            .unwrap_or_else(|| panic!("rufs: inode {ino} not seen in a directory"))
    }
}

fn rufs_kind(t: rufs::InodeType) -> FileKind {
    match t {
        rufs::InodeType::RegularFile => FileKind::File,
        rufs::InodeType::Directory => FileKind::Dir,
        rufs::InodeType::Symlink => FileKind::Symlink,
        _ => FileKind::Other,
    }
}

impl Oracle for Rufs {
    fn name(&self) -> &'static str {
        "rufs"
    }
    fn list(&mut self, dir: u64) -> Vec<(Vec<u8>, u64, FileKind)> {
        let mut out = Vec::new();
        let inr = self.inr(dir);
        self.fs
            .dir_iter(inr, |name, inr, kind| {
                out.push((name.as_bytes().to_vec(), inr, rufs_kind(kind)));
                None::<()>
            })
            .unwrap();
        out.into_iter()
            .map(|(name, inr, kind)| {
                self.inos.insert(inr.get64(), inr);
                (name, inr.get64(), kind)
            })
            .collect()
    }
    fn stat(&mut self, ino: u64) -> (FileKind, u64) {
        let a = self.fs.inode_attr(self.inr(ino)).unwrap();
        (rufs_kind(a.kind), a.size)
    }
    fn read(&mut self, ino: u64) -> Vec<u8> {
        let (_, size) = self.stat(ino);
        let mut buf = vec![0u8; size as usize];
        let n = self.fs.inode_read(self.inr(ino), 0, &mut buf).unwrap();
        assert_eq!(n, buf.len(), "rufs: short read of inode {ino}");
        buf
    }
    fn readlink(&mut self, ino: u64) -> Vec<u8> {
        self.fs.symlink_read(self.inr(ino)).unwrap()
    }
}

// ------------------------------------------------------- the walk and checks

/// What a path resolves to, following symlinks with libsa's rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resolved {
    Ino(u64),
    NotFound,
    NotDir,
    Loop,
    TooLong,
}

/// `stand/libsa/ufs.c` `ufs_open`'s lookup, over the oracle's inodes: `.` and
/// `..` come from the directories themselves, a relative target is taken
/// from the directory holding the link, at most `MAXSYMLINKS` links. (libsa
/// says ENOENT for too many links or too long a path; like our reader, this
/// tells them apart.)
fn resolve(o: &mut dyn Oracle, path: &[u8]) -> Resolved {
    if path.len() > MAXPATHLEN {
        return Resolved::TooLong;
    }
    let mut buf = path.to_vec();
    let mut pos = 0;
    let mut cur = ROOTINO;
    let mut links = 0;
    loop {
        while buf.get(pos) == Some(&b'/') {
            pos += 1;
        }
        if pos >= buf.len() {
            return Resolved::Ino(cur);
        }
        if o.stat(cur).0 != FileKind::Dir {
            return Resolved::NotDir;
        }
        let end = buf[pos..]
            .iter()
            .position(|&c| c == b'/')
            .map_or(buf.len(), |i| pos + i);
        if end - pos > UFS_MAXNAMLEN {
            return Resolved::TooLong;
        }
        let name = &buf[pos..end];
        let Some(next) = o.list(cur).into_iter().find(|e| e.0 == name).map(|e| e.1) else {
            return Resolved::NotFound;
        };
        pos = end;
        if o.stat(next).0 != FileKind::Symlink {
            cur = next;
            continue;
        }
        links += 1;
        if links > MAXSYMLINKS {
            return Resolved::Loop;
        }
        let mut target = o.readlink(next);
        if target.len() + buf.len() - pos > MAXPATHLEN {
            return Resolved::TooLong;
        }
        if target.first() == Some(&b'/') {
            cur = ROOTINO;
        }
        target.extend_from_slice(&buf[pos..]);
        buf = target;
        pos = 0;
    }
}

#[derive(Debug, Default)]
struct Seen {
    dirs: usize,
    files: usize,
    links: usize,
    other: usize,
    bytes: u64,
    paths: Vec<String>,
}

fn join(dir: &str, name: &str) -> String {
    format!("{}/{name}", dir.trim_end_matches('/'))
}

/// The oracle's listing of `dir`, without `.` and `..` (checked), sorted.
fn listing(o: &mut dyn Oracle, dir: u64, what: &str) -> Vec<(String, u64, FileKind)> {
    let all = o.list(dir);
    let dot = all.iter().find(|e| e.0 == b".");
    assert_eq!(dot.map(|e| e.1), Some(dir), "{what}: `.`");
    assert!(all.iter().any(|e| e.0 == b".."), "{what}: no `..`");
    let mut v: Vec<_> = all
        .into_iter()
        .filter(|e| e.0 != b"." && e.0 != b"..")
        .map(|(n, ino, k)| {
            let name = String::from_utf8(n).unwrap_or_else(|e| panic!("{what}: name {e}"));
            (name, ino, k)
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn ours_listing(us: &Ufs, path: &str, what: &str) -> Vec<(String, FileKind)> {
    let mut v: Vec<_> = us
        .read_dir(path)
        .unwrap_or_else(|e| panic!("{what}: ours: {e}"))
        .into_iter()
        .map(|e| (e.name, e.kind))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// The oracle's contents of file `ino`, after checking ours at `path` against
/// them.
fn check_file(o: &mut dyn Oracle, us: &Ufs, ino: u64, path: &str, what: &str) -> Vec<u8> {
    let (kind, size) = o.stat(ino);
    assert_eq!(kind, FileKind::File, "{what}");
    let theirs = o.read(ino);
    assert_eq!(theirs.len() as u64, size, "{what}: oracle's size vs bytes");
    let st = us
        .stat(path)
        .unwrap_or_else(|e| panic!("{what}: ours: {e}"));
    assert_eq!((st.kind, st.size), (FileKind::File, size), "{what}: stat");
    let ours = us
        .read_file(path)
        .unwrap_or_else(|e| panic!("{what}: ours: {e}"));
    if ours != theirs {
        let at = ours.iter().zip(&theirs).position(|(a, b)| a != b);
        panic!(
            "{what}: contents differ (ours {} bytes, oracle {}), first difference at {at:?}",
            ours.len(),
            theirs.len()
        );
    }
    theirs
}

fn walk(o: &mut dyn Oracle, us: &Ufs, host: &Path, dir: u64, path: &str, seen: &mut Seen) {
    let oname = o.name();
    let what = |p: &str| format!("{oname} {}: {p}", us.describe());
    seen.dirs += 1;
    let theirs = listing(o, dir, &what(path));
    for (name, ino, kind) in &theirs {
        let inode_kind = o.stat(*ino).0;
        assert_eq!(
            *kind,
            inode_kind,
            "{}: d_type vs inode",
            what(&join(path, name))
        );
    }
    let ours = ours_listing(us, path, &what(path));
    let theirs_nk: Vec<_> = theirs.iter().map(|e| (e.0.clone(), e.2)).collect();
    assert_eq!(ours, theirs_nk, "{}: listing", what(path));

    for (name, ino, kind) in theirs {
        let p = join(path, &name);
        let w = what(&p);
        let hostp = host.join(p.trim_start_matches('/'));
        seen.paths.push(p.clone());
        match kind {
            FileKind::Dir => {
                let st = us.stat(&p).unwrap_or_else(|e| panic!("{w}: ours: {e}"));
                assert_eq!((st.kind, st.size), (FileKind::Dir, o.stat(ino).1), "{w}");
                walk(o, us, host, ino, &p, seen);
            }
            FileKind::File => {
                seen.files += 1;
                let data = check_file(o, us, ino, &p, &w);
                seen.bytes += data.len() as u64;
                // And the oracle against the tree the image was made from.
                assert!(fs::read(&hostp).unwrap() == data, "{w}: vs host");
            }
            FileKind::Symlink => {
                seen.links += 1;
                let target = o.readlink(ino);
                let host_target = fs::read_link(&hostp).unwrap();
                assert_eq!(
                    String::from_utf8_lossy(&target),
                    String::from_utf8_lossy(host_target.as_os_str().as_bytes()),
                    "{w}: symlink target (len {})",
                    target.len()
                );
                check_resolution(o, us, &p, &w);
            }
            FileKind::Other => {
                seen.other += 1;
                let st = us.stat(&p).unwrap_or_else(|e| panic!("{w}: ours: {e}"));
                assert_eq!(st.kind, FileKind::Other, "{w}");
            }
        }
    }
}

/// The symlink at `path` followed by the oracle and by us.
fn check_resolution(o: &mut dyn Oracle, us: &Ufs, path: &str, what: &str) {
    let theirs = resolve(o, path.as_bytes());
    let ours = match us.stat(path) {
        Ok(st) => Ok(st),
        Err(Error::NotFound { .. }) => Err(Resolved::NotFound),
        Err(Error::NotDir { .. }) => Err(Resolved::NotDir),
        Err(Error::SymlinkLoop { .. }) => Err(Resolved::Loop),
        Err(Error::NameTooLong { .. }) => Err(Resolved::TooLong),
        Err(e) => panic!("{what}: ours: {e}"),
    };
    let ino = match (theirs, ours) {
        (Resolved::Ino(ino), Ok(st)) => {
            assert_eq!((st.kind, st.size), o.stat(ino), "{what}: resolved stat");
            ino
        }
        (t, Err(e)) if t == e => return,
        (t, o) => panic!("{what}: resolves to {t:?} for the oracle, {o:?} for us"),
    };
    match o.stat(ino).0 {
        FileKind::File => {
            check_file(o, us, ino, path, what);
        }
        FileKind::Dir => {
            let theirs: Vec<_> = listing(o, ino, what)
                .into_iter()
                .map(|e| (e.0, e.2))
                .collect();
            assert_eq!(ours_listing(us, path, what), theirs, "{what}: listing");
        }
        _ => {}
    }
}

// ------------------------------------------------------------------- images

/// `len` bytes naming the same file as the relative path `tail`: `./` (and
/// one extra `/` for an odd length) in front.
fn padded(len: usize, tail: &str) -> String {
    let p = len - tail.len();
    format!("{}{}{tail}", "./".repeat(p / 2), "/".repeat(p % 2))
}

/// Files and links at the edges the standard tree does not reach.
fn edges(root: &Path) {
    let w = |p: &str, data: &[u8]| {
        let p = root.join(p);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
    };
    let l = |target: &str, p: &str| symlink(target, root.join(p)).unwrap();
    // Fragment and block tails.
    for n in [
        1usize, 511, 512, 513, 1023, 1025, 2047, 2049, 4095, 4096, 4097, 8191, 8193, 65535, 65537,
    ] {
        w(&format!("edge/tail-{n}"), &pattern(n as u32, n));
    }
    // The last direct block and the first single-indirect one, for each
    // block size below.
    for bsize in [4096usize, 8192, 16384, 32768, 65536] {
        for n in [12 * bsize - 1, 12 * bsize, 12 * bsize + 1] {
            w(&format!("edge/direct-{n}"), &pattern(n as u32, n));
        }
    }
    // The first double-indirect block at bsize 4096: UFS2 has 512 pointers a
    // block, UFS1 1024.
    for nindir in [512usize, 1024] {
        let n = (12 + nindir) * 4096 + 1;
        w(&format!("edge/double-{n}"), &pattern(n as u32, n));
    }
    // Long zero runs and an all-zero file.
    let mut z = pattern(77, 400_000);
    z[20_000..340_000].fill(0);
    w("edge/zeros", &z);
    w("edge/allzero", &[0u8; 200_000]);
    // fs_maxsymlinklen is 60 on UFS1 and 120 on UFS2: targets shorter are
    // stored in the inode, others in a block; 600 bytes span two 512-byte
    // fragments.
    fs::create_dir(root.join("symlen")).unwrap();
    for n in [59, 60, 61, 119, 120, 121, 600] {
        l(&padded(n, "../hello.txt"), &format!("symlen/rel-{n}"));
        l(
            &format!("/{}", padded(n - 1, "hello.txt")),
            &format!("symlen/abs-{n}"),
        );
    }
    // Deep directories and links through links.
    w("deep/a/b/c/d/e/f/g/leaf.txt", b"leaf\n");
    l("../../../../../../../../hello.txt", "deep/a/b/c/d/e/f/g/up");
    l("/deep/a/b/c", "deep/abs-dir");
    l("abs-dir/d/e/f/g/leaf.txt", "deep/through");
    l("../boot/kernel/", "deep/kernel-dir");
    l("hello.txt/", "file-slash");
    l("hello.txt/x", "file-notdir");
    l("boot/kernel/kernel/", "kernel-slash");
    w("ünïcødé.txt", "non-ASCII name\n".as_bytes());
    let fifo = CString::new(root.join("fifo").as_os_str().as_bytes()).unwrap();
    // SAFETY: `fifo` is a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0, "mkfifo");
}

/// Every configuration of makefs that the other tests use and a few more;
/// each image walked with ufs-core, the UFS2 ones with fsize 2048/4096 with
/// rufs too.
#[test]
fn ufs_matches_oracles() {
    let tmp = TempDir::new("oracle");
    let tree = tmp.join("tree");
    fs::create_dir(&tree).unwrap();
    populate(&tree, true);
    edges(&tree);
    for (version, bsize, fsize) in [
        (1, 4096, 512),
        (2, 4096, 512),
        (1, 8192, 1024),
        (2, 8192, 1024),
        (1, 16384, 2048),
        (2, 16384, 2048),
        (2, 32768, 4096),
        (1, 65536, 8192),
        (2, 65536, 8192),
    ] {
        let img = tmp.join("fs.img");
        makefs(version, bsize, fsize, &tree, &img);
        let bytes = fs::read(&img).unwrap();
        fs::remove_file(&img).unwrap();
        let ufs = Ufs::open(Arc::new(MemDisk(bytes.clone())), "disk0", "oracle").unwrap();
        assert_eq!(ufs.is_ufs2(), version == 2);
        // The edge links go where they should (the walk only checks that
        // the oracles agree with us).
        let read = |p: &str| ufs.read_file(p).unwrap_or_else(|e| panic!("{p}: {e}"));
        for n in [59, 60, 61, 119, 120, 121, 600] {
            assert_eq!(read(&format!("/symlen/rel-{n}")), b"hello, world\n");
            assert_eq!(read(&format!("/symlen/abs-{n}")), b"hello, world\n");
        }
        assert_eq!(read("/deep/a/b/c/d/e/f/g/up"), b"hello, world\n");
        assert_eq!(read("/deep/through"), b"leaf\n");
        assert_eq!(read("/file-slash"), b"hello, world\n");
        assert_eq!(read("/kernel-slash"), pattern(1, KERNEL_LEN));
        assert!(matches!(
            ufs.read_file("/file-notdir"),
            Err(Error::NotDir { .. })
        ));
        assert_eq!(ufs.stat("/deep/kernel-dir").unwrap().kind, FileKind::Dir);
        let mut oracles: Vec<Box<dyn Oracle>> = vec![Box::new(UfsCore::new(bytes.clone()))];
        if version == 2 && (2048..=4096).contains(&fsize) {
            oracles.push(Box::new(Rufs::new(bytes)));
        }
        for mut o in oracles {
            let t0 = std::time::Instant::now();
            let mut seen = Seen::default();
            walk(&mut *o, &ufs, &tree, ROOTINO, "/", &mut seen);
            eprintln!(
                "UFS{version} bsize {bsize} fsize {fsize}, {}: {} dirs, {} files ({} bytes), {} symlinks, {} other, {:?}",
                o.name(),
                seen.dirs,
                seen.files,
                seen.bytes,
                seen.links,
                seen.other,
                t0.elapsed()
            );
            // The walk really went everywhere.
            assert!(seen.files > BIGDIR_N + 30, "{seen:?}");
            assert!(seen.links >= 33 + 14 + 10, "{seen:?}");
            assert_eq!(seen.other, 1);
            assert!(seen.bytes > 16_000_000, "{seen:?}");
            for p in [
                "/double.bin",
                "/edge/double-4243457",
                "/boot/kernel.GENERIC/kernel",
                "/links/over",
                "/symlen/abs-600",
                "/deep/a/b/c/d/e/f/g/up",
            ] {
                assert!(seen.paths.iter().any(|s| s == p), "{p} not walked");
            }
        }
    }
}
