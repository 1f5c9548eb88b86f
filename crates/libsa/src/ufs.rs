//! Read-only UFS1/UFS2 (the subset of `stand/libsa/ufs.c` the loader needs).
//!
//! Layout facts: `sys/ufs/ffs/fs.h`, `sys/ufs/ufs/dinode.h`, `sys/ufs/ufs/dir.h`
//! (see docs/freebsd-boot-abi.md §6). Every on-disk number is treated as
//! hostile: offsets are computed with checked arithmetic, pointers are
//! bounds-checked against `fs_size`, and nothing is allocated larger than the
//! partition the file system lives in.

use std::sync::Arc;

use crate::{DirEntry, Disk, Error, FileKind, FileSystem, Stat};

/// Superblock byte offsets FreeBSD tries, in its order (`SBLOCKSEARCH`).
const SBLOCKSEARCH: [u64; 4] = [65536, 8192, 0, 262144];
const SBLOCKSIZE: u64 = 8192;
const SBLOCK_UFS1: u64 = 8192;
const SIZEOF_FS: usize = 1376;
const FS_UFS1_MAGIC: u32 = 0x0001_1954;
const FS_UFS2_MAGIC: u32 = 0x1954_0119;
const FS_BAD_MAGIC: u32 = 0x1996_0408;
const MINBSIZE: u64 = 4096;
const MAXBSIZE: u64 = 65536;
const DEV_BSIZE: u64 = 512;

const ROOTINO: u64 = 2;
const NDADDR: usize = 12;
const NIADDR: usize = 3;

const IFMT: u16 = 0o170000;
const IFDIR: u16 = 0o040000;
const IFREG: u16 = 0o100000;
const IFLNK: u16 = 0o120000;

const DIRBLKSIZ: usize = 512;
const DIRENT_HDR: usize = 8;
const DT_UNKNOWN: u8 = 0;
const DT_DIR: u8 = 4;
const DT_REG: u8 = 8;
const DT_LNK: u8 = 10;
const DT_WHT: u8 = 14;

/// `UFS_MAXNAMLEN`: longest path component.
pub const UFS_MAXNAMLEN: usize = 255;
/// `MAXPATHLEN`: longest path, also after symlink expansion.
pub const MAXPATHLEN: usize = 1024;
/// `MAXSYMLINKS`: symlinks followed per lookup.
pub const MAXSYMLINKS: usize = 32;

// Little-endian field readers. Out-of-range reads yield 0 instead of
// panicking; every caller checks its bounds first, this is only a backstop.
fn le_bytes<const N: usize>(b: &[u8], off: usize) -> [u8; N] {
    let mut a = [0u8; N];
    if let Some(s) = off.checked_add(N).and_then(|end| b.get(off..end)) {
        a.copy_from_slice(s);
    }
    a
}
fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(le_bytes(b, off))
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(le_bytes(b, off))
}
fn i32_at(b: &[u8], off: usize) -> i32 {
    i32::from_le_bytes(le_bytes(b, off))
}
fn i64_at(b: &[u8], off: usize) -> i64 {
    i64::from_le_bytes(le_bytes(b, off))
}

/// The superblock fields the reader needs, validated.
#[derive(Debug, Clone)]
struct Super {
    ufs2: bool,
    bsize: u64,
    bshift: u32,
    fshift: u32,
    fragshift: u32,
    nindir: u64,
    inopb: u64,
    ipg: u64,
    fpg: u64,
    ncg: u64,
    iblkno: u64,
    old_cgoffset: i64,
    old_cgmask: i64,
    maxsymlinklen: i64,
    /// `fs_size`: file system size in fragments.
    size: u64,
}

impl Super {
    fn isize(&self) -> u64 {
        if self.ufs2 { 256 } else { 128 }
    }
    fn ptrsize(&self) -> u64 {
        if self.ufs2 { 8 } else { 4 }
    }
    /// Bytes of the inline symlink area (`di_db` + `di_ib`).
    fn shortlink_len(&self) -> usize {
        (NDADDR + NIADDR) * self.ptrsize() as usize
    }
}

fn log2_exact(v: u64) -> Option<u32> {
    v.is_power_of_two().then(|| v.trailing_zeros())
}

/// Parse a candidate superblock read at byte `loc` of a partition of
/// `part_size` bytes. `Ok(None)`: no superblock belongs at `loc`;
/// `Err(why)`: one does, but it is unusable.
fn parse_super(b: &[u8], loc: u64, part_size: u64) -> Result<Option<Super>, String> {
    if b.len() < SIZEOF_FS {
        return Ok(None);
    }
    let magic = u32_at(b, 1372);
    let ufs2 = match magic {
        // UFS1 lives at 8192 (or 0 on floppies); one found further out is a
        // backup copy, which FreeBSD ignores too.
        FS_UFS1_MAGIC if loc <= SBLOCK_UFS1 => false,
        FS_UFS2_MAGIC if i64_at(b, 1000) == loc as i64 => true,
        FS_BAD_MAGIC => {
            return Err("file system creation was never finished (FS_BAD_MAGIC)".into());
        }
        _ => return Ok(None),
    };
    let bad = |why: String| Err(why);
    let field = |name: &str, off: usize| -> Result<u64, String> {
        let v = i32_at(b, off);
        u64::try_from(v).map_err(|_| format!("{name} is negative ({v})"))
    };

    let bsize = field("fs_bsize", 48)?;
    let fsize = field("fs_fsize", 52)?;
    let frag = field("fs_frag", 56)?;
    if !(MINBSIZE..=MAXBSIZE).contains(&bsize) || !bsize.is_power_of_two() {
        return bad(format!(
            "fs_bsize {bsize} is not a power of two in 4096..=65536"
        ));
    }
    if fsize < DEV_BSIZE || fsize > bsize || !fsize.is_power_of_two() || bsize / fsize > 8 {
        return bad(format!("fs_fsize {fsize} does not fit fs_bsize {bsize}"));
    }
    if frag != bsize / fsize {
        return bad(format!("fs_frag {frag} is not fs_bsize/fs_fsize"));
    }
    // All powers of two here, so log2 is exact.
    let (bshift, fshift) = (bsize.trailing_zeros(), fsize.trailing_zeros());
    let fragshift = log2_exact(frag).unwrap_or(u32::MAX);
    let shifts = [
        ("fs_bshift", 80, bshift),
        ("fs_fshift", 84, fshift),
        ("fs_fragshift", 96, fragshift),
        ("fs_fsbtodb", 100, fshift - DEV_BSIZE.trailing_zeros()),
    ];
    for (name, off, want) in shifts {
        if field(name, off)? != u64::from(want) {
            return bad(format!(
                "{name} {} disagrees with the block sizes",
                i32_at(b, off)
            ));
        }
    }
    let sbsize = field("fs_sbsize", 104)?;
    if sbsize == 0 || sbsize > SBLOCKSIZE {
        return bad(format!("fs_sbsize {sbsize} is not in 1..=8192"));
    }
    let (psize, isize) = if ufs2 { (8, 256) } else { (4, 128) };
    let nindir = field("fs_nindir", 116)?;
    if nindir != bsize / psize {
        return bad(format!("fs_nindir {nindir} is not fs_bsize/{psize}"));
    }
    let inopb = u64::from(u32_at(b, 120));
    if inopb != bsize / isize {
        return bad(format!("fs_inopb {inopb} is not fs_bsize/{isize}"));
    }
    let ncg = u64::from(u32_at(b, 44));
    let ipg = u64::from(u32_at(b, 184));
    let fpg = field("fs_fpg", 188)?;
    if ncg == 0 || ipg == 0 || fpg == 0 {
        return bad(format!(
            "empty cylinder groups (ncg {ncg}, ipg {ipg}, fpg {fpg})"
        ));
    }
    if ipg % inopb != 0 {
        return bad(format!(
            "fs_ipg {ipg} is not a multiple of fs_inopb {inopb}"
        ));
    }
    let iblkno = field("fs_iblkno", 16)?;
    // The inode blocks must fit in a cylinder group.
    let inode_frags = (ipg / inopb).checked_mul(frag);
    if iblkno == 0
        || inode_frags
            .and_then(|f| f.checked_add(iblkno))
            .is_none_or(|end| end > fpg)
    {
        return bad(format!(
            "inode area (fs_iblkno {iblkno}, fs_ipg {ipg}) does not fit fs_fpg {fpg}"
        ));
    }
    let size = if ufs2 {
        u64::try_from(i64_at(b, 1080)).unwrap_or(0)
    } else {
        // UFS1 keeps its size in fs_old_size (the kernel copies it over).
        u64::try_from(i32_at(b, 36)).unwrap_or(0)
    };
    if size == 0 {
        return bad("fs_size is zero or negative".into());
    }
    // ncg groups of fpg fragments must cover fs_size, the last one partly.
    let covered = ncg.checked_mul(fpg);
    if covered.is_none_or(|c| c < size || c - size >= fpg) {
        return bad(format!(
            "fs_ncg {ncg} × fs_fpg {fpg} does not match fs_size {size}"
        ));
    }
    let bytes = size.checked_mul(fsize);
    if bytes.is_none_or(|n| n > part_size) {
        return bad(format!(
            "file system ({size} × {fsize} bytes) is larger than its partition ({part_size} bytes): truncated image?"
        ));
    }
    let maxsymlinklen = i64::from(i32_at(b, 1320));
    let short = (NDADDR + NIADDR) as i64 * psize as i64;
    if maxsymlinklen > short {
        return bad(format!(
            "fs_maxsymlinklen {maxsymlinklen} exceeds the {short}-byte inline area"
        ));
    }
    Ok(Some(Super {
        ufs2,
        bsize,
        bshift,
        fshift,
        fragshift,
        nindir,
        inopb,
        ipg,
        fpg,
        ncg,
        iblkno,
        old_cgoffset: i64::from(i32_at(b, 24)),
        old_cgmask: i64::from(i32_at(b, 28)),
        maxsymlinklen,
        size,
    }))
}

/// The parts of a dinode the reader uses.
#[derive(Debug, Clone)]
struct Inode {
    ino: u64,
    mode: u16,
    size: u64,
    db: [i64; NDADDR],
    ib: [i64; NIADDR],
    /// The raw `di_db`/`di_ib` area, where fast symlinks keep their target.
    short: Vec<u8>,
}

impl Inode {
    fn kind(&self) -> FileKind {
        match self.mode & IFMT {
            IFDIR => FileKind::Dir,
            IFREG => FileKind::File,
            IFLNK => FileKind::Symlink,
            _ => FileKind::Other,
        }
    }
}

/// A one-block cache per indirection depth, so sequential reads fetch each
/// indirect block once (as libsa's `block_map` does).
#[derive(Default)]
struct IndCache {
    slots: [Option<(u64, Vec<u8>)>; NIADDR],
}

/// A raw directory entry.
struct RawEntry {
    ino: u64,
    dtype: u8,
    name: Vec<u8>,
}

/// A UFS1 or UFS2 file system on a [`Disk`] (the disk is the partition: byte
/// 0 is the partition start).
pub struct Ufs {
    disk: Arc<dyn Disk + Send + Sync>,
    sb: Super,
    dev: String,
    what: String,
}

impl std::fmt::Debug for Ufs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ufs")
            .field("dev", &self.dev)
            .field("what", &self.what)
            .field("sb", &self.sb)
            .finish_non_exhaustive()
    }
}

impl Ufs {
    /// Open the UFS file system on `disk`. `dev` is the loader's device name
    /// (`disk0p2`), `what` names the image in errors.
    pub fn open(disk: Arc<dyn Disk + Send + Sync>, dev: &str, what: &str) -> Result<Ufs, Error> {
        Ufs::probe(disk, dev, what)?.ok_or_else(|| Error::BadSuperblock {
            what: what.to_string(),
            why: format!("{dev}: no UFS superblock at byte 65536, 8192, 0 or 262144"),
        })
    }

    /// Like [`Ufs::open`], but `Ok(None)` when no superblock magic is present
    /// at all (so callers can try something else); a superblock that is
    /// present but unusable is still an error.
    pub fn probe(
        disk: Arc<dyn Disk + Send + Sync>,
        dev: &str,
        what: &str,
    ) -> Result<Option<Ufs>, Error> {
        let size = disk.size();
        let mut first_bad = None;
        for loc in SBLOCKSEARCH {
            let Some(avail) = size.checked_sub(loc) else {
                continue;
            };
            let n = avail.min(SBLOCKSIZE) as usize;
            if n < SIZEOF_FS {
                continue;
            }
            let mut buf = vec![0u8; n];
            disk.read_at(&mut buf, loc).map_err(|source| Error::Io {
                what: format!("{what} ({dev}): superblock at {loc}"),
                source,
            })?;
            match parse_super(&buf, loc, size) {
                Ok(Some(sb)) => {
                    return Ok(Some(Ufs {
                        disk,
                        sb,
                        dev: dev.to_string(),
                        what: format!("{what} ({dev})"),
                    }));
                }
                Ok(None) => {}
                Err(why) if u32_at(&buf, 1372) == FS_BAD_MAGIC => {
                    // FreeBSD aborts the search here too.
                    return Err(Error::BadSuperblock {
                        what: format!("{what} ({dev})"),
                        why: format!("at byte {loc}: {why}"),
                    });
                }
                Err(why) => {
                    first_bad.get_or_insert(format!("at byte {loc}: {why}"));
                }
            }
        }
        match first_bad {
            Some(why) => Err(Error::BadSuperblock {
                what: format!("{what} ({dev})"),
                why,
            }),
            None => Ok(None),
        }
    }

    /// True for UFS2, false for UFS1.
    pub fn is_ufs2(&self) -> bool {
        self.sb.ufs2
    }

    fn corrupt(&self, why: String) -> Error {
        Error::Corrupt {
            what: self.what.clone(),
            why,
        }
    }

    fn read_disk(
        &self,
        buf: &mut [u8],
        off: u64,
        about: impl FnOnce() -> String,
    ) -> Result<(), Error> {
        self.disk.read_at(buf, off).map_err(|source| Error::Io {
            what: format!("{}: {}", self.what, about()),
            source,
        })
    }

    /// Byte offset of fragment `frag`; the pointer must lie inside the file
    /// system.
    fn frag_offset(&self, frag: i64, about: impl FnOnce() -> String) -> Result<u64, Error> {
        match u64::try_from(frag) {
            Ok(f) if f < self.sb.size => Ok(f << self.sb.fshift),
            _ => Err(self.corrupt(format!(
                "{}: block pointer {frag} outside the file system ({} fragments)",
                about(),
                self.sb.size
            ))),
        }
    }

    /// Byte offset of inode `ino` in the partition.
    fn inode_offset(&self, ino: u64) -> Result<u64, Error> {
        let sb = &self.sb;
        let cg = ino / sb.ipg;
        if ino == 0 || cg >= sb.ncg {
            return Err(self.corrupt(format!("inode number {ino} out of range")));
        }
        let overflow = || self.corrupt(format!("inode {ino}: address overflows"));
        let cgbase =
            i64::try_from(sb.fpg.checked_mul(cg).ok_or_else(overflow)?).map_err(|_| overflow())?;
        // UFS1 cylinder groups may be staggered (`cgstart`); UFS2 never is.
        let cgstart = if sb.ufs2 {
            cgbase
        } else {
            let stagger = sb
                .old_cgoffset
                .checked_mul(cg as i64 & !sb.old_cgmask)
                .ok_or_else(overflow)?;
            cgbase.checked_add(stagger).ok_or_else(overflow)?
        };
        let within = ((ino % sb.ipg) / sb.inopb) << sb.fragshift;
        let fsba = u64::try_from(cgstart)
            .ok()
            .and_then(|s| s.checked_add(sb.iblkno))
            .and_then(|s| s.checked_add(within))
            .and_then(|s| i64::try_from(s).ok())
            .ok_or_else(overflow)?;
        let base = self.frag_offset(fsba, || format!("inode {ino}"))?;
        // base < partition size and the addend < fs_bsize: no overflow.
        Ok(base + (ino % sb.inopb) * sb.isize())
    }

    fn read_inode(&self, ino: u64) -> Result<Inode, Error> {
        let sb = &self.sb;
        let off = self.inode_offset(ino)?;
        let mut b = vec![0u8; sb.isize() as usize];
        self.read_disk(&mut b, off, || format!("inode {ino}"))?;

        let (size_off, db_off) = if sb.ufs2 { (16, 112) } else { (8, 40) };
        let ptr = |off: usize| {
            if sb.ufs2 {
                i64_at(&b, off)
            } else {
                i64::from(i32_at(&b, off))
            }
        };
        let ps = sb.ptrsize() as usize;
        let mut db = [0i64; NDADDR];
        for (i, d) in db.iter_mut().enumerate() {
            *d = ptr(db_off + i * ps);
        }
        let mut ib = [0i64; NIADDR];
        for (i, d) in ib.iter_mut().enumerate() {
            *d = ptr(db_off + (NDADDR + i) * ps);
        }
        let short = b
            .get(db_off..db_off + sb.shortlink_len())
            .map(<[u8]>::to_vec)
            .unwrap_or_default();
        Ok(Inode {
            ino,
            mode: u16_at(&b, 0),
            size: u64::from_le_bytes(le_bytes(&b, size_off)),
            db,
            ib,
            short,
        })
    }

    /// Entry `idx` of indirect block `blk`, through the cache slot `depth`.
    fn indirect(
        &self,
        blk: i64,
        idx: u64,
        depth: usize,
        cache: &mut IndCache,
    ) -> Result<i64, Error> {
        let off = self.frag_offset(blk, || "indirect block".into())?;
        let slot = &mut cache.slots[depth.min(NIADDR - 1)];
        if slot.as_ref().is_none_or(|(b, _)| *b != off) {
            let mut data = vec![0u8; self.sb.bsize as usize];
            self.read_disk(&mut data, off, || format!("indirect block {blk}"))?;
            *slot = Some((off, data));
        }
        let data = slot.as_ref().map(|(_, d)| d.as_slice()).unwrap_or_default();
        // idx < nindir, and nindir × ptrsize == bsize: in bounds.
        let at = (idx * self.sb.ptrsize()) as usize;
        Ok(if self.sb.ufs2 {
            i64_at(data, at)
        } else {
            i64::from(i32_at(data, at))
        })
    }

    /// Map logical block `lbn` to a fragment number; 0 is a hole.
    fn bmap(&self, ino: &Inode, lbn: u64, cache: &mut IndCache) -> Result<i64, Error> {
        if lbn < NDADDR as u64 {
            return Ok(ino.db[lbn as usize]);
        }
        let n = self.sb.nindir;
        let mut rel = lbn - NDADDR as u64;
        let mut below = 1u64; // blocks covered by one entry at the top level
        for level in 0..NIADDR {
            let span = below * n; // cannot overflow: n ≤ 16384, level ≤ 2
            if rel < span {
                let mut blk = ino.ib[level];
                let mut per = below;
                for depth in 0..=level {
                    if blk == 0 {
                        return Ok(0);
                    }
                    let idx = rel / per;
                    rel %= per;
                    blk = self.indirect(blk, idx, depth, cache)?;
                    per = (per / n).max(1);
                }
                return Ok(blk);
            }
            rel -= span;
            below = span;
        }
        Err(self.corrupt(format!(
            "logical block {lbn} is beyond the triple-indirect range"
        )))
    }

    /// Fill `buf` from byte `off` of the file; the caller keeps the range
    /// within `di_size`. Holes read as zeros.
    fn read_range(&self, ino: &Inode, off: u64, buf: &mut [u8]) -> Result<(), Error> {
        let bsize = self.sb.bsize;
        let mut cache = IndCache::default();
        let mut done = 0usize;
        while done < buf.len() {
            let pos = off
                .checked_add(done as u64)
                .ok_or_else(|| self.corrupt("file offset overflows".into()))?;
            let lbn = pos >> self.sb.bshift;
            let boff = pos & (bsize - 1);
            let n = ((bsize - boff) as usize).min(buf.len() - done);
            let chunk = &mut buf[done..done + n];
            let blk = self.bmap(ino, lbn, &mut cache)?;
            if blk == 0 {
                chunk.fill(0);
            } else {
                let base = self.frag_offset(blk, || format!("file block {lbn}"))?;
                self.read_disk(chunk, base + boff, || format!("file block {lbn}"))?;
            }
            done += n;
        }
        Ok(())
    }

    /// The whole contents of an inode, refusing sizes larger than the
    /// partition (a hostile `di_size` must not make us allocate terabytes).
    fn read_all(&self, ino: &Inode, path: &str) -> Result<Vec<u8>, Error> {
        if ino.size > self.disk.size() {
            return Err(self.corrupt(format!(
                "{path} (inode {}): size {} is larger than the partition ({} bytes)",
                ino.ino,
                ino.size,
                self.disk.size()
            )));
        }
        let mut data = vec![0u8; ino.size as usize];
        self.read_range(ino, 0, &mut data)?;
        Ok(data)
    }

    /// Parse a directory, rejecting records that would walk out of their
    /// 512-byte chunk.
    fn dir_entries(&self, dir: &Inode, path: &str) -> Result<Vec<RawEntry>, Error> {
        let data = self.read_all(dir, path)?;
        // 4.2BSD-format directories keep a 16-bit d_namlen where 4.4BSD has
        // d_type + d_namlen (ufs.c search_directory).
        let old_format = self.sb.maxsymlinklen <= 0;
        let mut out = Vec::new();
        for chunk_start in (0..data.len()).step_by(DIRBLKSIZ) {
            let chunk_end = (chunk_start + DIRBLKSIZ).min(data.len());
            let mut off = chunk_start;
            while off < chunk_end {
                if off + DIRENT_HDR > chunk_end {
                    return Err(self.corrupt(format!(
                        "{path}: directory entry at offset {off} is truncated"
                    )));
                }
                let ino = u32_at(&data, off);
                let reclen = usize::from(u16_at(&data, off + 4));
                if reclen < DIRENT_HDR || reclen % 4 != 0 || off + reclen > chunk_end {
                    return Err(self.corrupt(format!(
                        "{path}: bad d_reclen {reclen} at directory offset {off}"
                    )));
                }
                let (dtype, namlen) = if old_format {
                    (DT_UNKNOWN, usize::from(data[off + 6]))
                } else {
                    (data[off + 6], usize::from(data[off + 7]))
                };
                if ino != 0 {
                    if DIRENT_HDR + namlen > reclen {
                        return Err(self.corrupt(format!(
                            "{path}: d_namlen {namlen} overruns d_reclen {reclen} at directory offset {off}"
                        )));
                    }
                    let name = data[off + DIRENT_HDR..off + DIRENT_HDR + namlen].to_vec();
                    out.push(RawEntry {
                        ino: u64::from(ino),
                        dtype,
                        name,
                    });
                }
                off += reclen;
            }
        }
        Ok(out)
    }

    fn read_link(&self, ino: &Inode, path: &str) -> Result<Vec<u8>, Error> {
        if ino.size > MAXPATHLEN as u64 {
            return Err(Error::NameTooLong { path: path.into() });
        }
        let len = ino.size as usize;
        if self.sb.maxsymlinklen > 0 && (len as i64) < self.sb.maxsymlinklen {
            // Fast symlink: the target sits in the block-pointer area.
            return ino
                .short
                .get(..len)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| self.corrupt(format!("{path}: short symlink too long")));
        }
        let mut buf = vec![0u8; len];
        self.read_range(ino, 0, &mut buf)?;
        Ok(buf)
    }

    /// Resolve `path` to an inode, following symlinks (the last component
    /// only if `follow`).
    fn lookup(&self, path: &str, follow: bool) -> Result<Inode, Error> {
        if path.len() > MAXPATHLEN {
            return Err(Error::NameTooLong { path: path.into() });
        }
        let mut buf: Vec<u8> = path.as_bytes().to_vec();
        let mut pos = 0usize;
        let mut cur = self.read_inode(ROOTINO)?;
        let mut links = 0usize;
        loop {
            while buf.get(pos) == Some(&b'/') {
                pos += 1;
            }
            if pos >= buf.len() {
                return Ok(cur);
            }
            if cur.kind() != FileKind::Dir {
                return Err(Error::NotDir { path: path.into() });
            }
            let end = buf[pos..]
                .iter()
                .position(|&c| c == b'/')
                .map_or(buf.len(), |i| pos + i);
            let name = &buf[pos..end];
            if name.len() > UFS_MAXNAMLEN {
                return Err(Error::NameTooLong { path: path.into() });
            }
            let entry = self
                .dir_entries(&cur, path)?
                .into_iter()
                .find(|e| e.name == name && e.dtype != DT_WHT)
                .ok_or_else(|| Error::NotFound { path: path.into() })?;
            let next = self.read_inode(entry.ino)?;
            pos = end;
            let more = buf[pos..].iter().any(|&c| c != b'/');
            if next.kind() == FileKind::Symlink && (more || follow) {
                links += 1;
                if links > MAXSYMLINKS {
                    return Err(Error::SymlinkLoop { path: path.into() });
                }
                let target = self.read_link(&next, path)?;
                let rest = &buf[pos..];
                if target.len() + rest.len() > MAXPATHLEN {
                    return Err(Error::NameTooLong { path: path.into() });
                }
                let mut joined = target;
                joined.extend_from_slice(rest);
                // Absolute targets restart at the root, relative ones in the
                // directory holding the link (`cur`, unchanged).
                if joined.first() == Some(&b'/') {
                    cur = self.read_inode(ROOTINO)?;
                }
                buf = joined;
                pos = 0;
                continue;
            }
            cur = next;
        }
    }
}

impl FileSystem for Ufs {
    fn stat(&self, path: &str) -> Result<Stat, Error> {
        let ino = self.lookup(path, true)?;
        Ok(Stat {
            kind: ino.kind(),
            size: ino.size,
        })
    }

    fn read_file(&self, path: &str) -> Result<Vec<u8>, Error> {
        let ino = self.lookup(path, true)?;
        match ino.kind() {
            FileKind::File => self.read_all(&ino, path),
            FileKind::Dir => Err(Error::IsDir { path: path.into() }),
            _ => Err(Error::Io {
                what: path.into(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"),
            }),
        }
    }

    /// Entries other than `.` and `..`, in directory order.
    fn read_dir(&self, path: &str) -> Result<Vec<DirEntry>, Error> {
        let dir = self.lookup(path, true)?;
        if dir.kind() != FileKind::Dir {
            return Err(Error::NotDir { path: path.into() });
        }
        let mut out = Vec::new();
        for e in self.dir_entries(&dir, path)? {
            if e.name == b"." || e.name == b".." || e.dtype == DT_WHT {
                continue;
            }
            let kind = match e.dtype {
                DT_DIR => FileKind::Dir,
                DT_REG => FileKind::File,
                DT_LNK => FileKind::Symlink,
                DT_UNKNOWN => self.read_inode(e.ino)?.kind(),
                _ => FileKind::Other,
            };
            out.push(DirEntry {
                name: String::from_utf8_lossy(&e.name).into_owned(),
                kind,
            });
        }
        Ok(out)
    }

    fn describe(&self) -> String {
        format!(
            "{} ({})",
            self.dev,
            if self.sb.ufs2 { "UFS2" } else { "UFS1" }
        )
    }
}

#[cfg(test)]
mod tests {
    //! Images makefs cannot produce (triple-indirect files, holes, 4.2BSD
    //! directories) and damaged ones, made by patching a makefs image.

    use super::*;
    use crate::MemDisk;
    use crate::tests::util::{TempDir, mini_image, pattern};

    fn ufs(img: &[u8]) -> Ufs {
        Ufs::open(Arc::new(MemDisk(img.to_vec())), "disk0", "syn").unwrap()
    }

    fn put(img: &mut [u8], off: u64, bytes: &[u8]) {
        let off = off as usize;
        img[off..off + bytes.len()].copy_from_slice(bytes);
    }

    /// Write block pointer `v` at byte `off` in the file system's width.
    fn put_ptr(fs: &Ufs, img: &mut [u8], off: u64, v: i64) {
        if fs.sb.ufs2 {
            put(img, off, &v.to_le_bytes());
        } else {
            put(img, off, &(v as i32).to_le_bytes());
        }
    }

    /// Byte offsets of di_size, di_db[0], di_ib[0] inside a dinode.
    fn layout(fs: &Ufs) -> (u64, u64, u64) {
        if fs.sb.ufs2 {
            (16, 112, 208)
        } else {
            (8, 40, 88)
        }
    }

    #[test]
    fn triple_indirect_and_holes() {
        let tmp = TempDir::new("triple");
        for version in [1, 2] {
            let mut img = mini_image(&tmp, version, &format!("t{version}"));
            let fs = ufs(&img);
            let (bsize, n, ps) = (fs.sb.bsize, fs.sb.nindir, fs.sb.ptrsize());
            // Borrow four full data blocks of the kernel as indirect blocks
            // A → B → C and data block D.
            let k = fs.lookup("/boot/kernel.GENERIC/kernel", true).unwrap();
            let [a, b, c, d] = [k.db[0], k.db[1], k.db[2], k.db[3]];
            let at = |f: i64| (f as u64) << fs.sb.fshift;
            for blk in [a, b, c] {
                put(&mut img, at(blk), &vec![0u8; bsize as usize]);
            }
            let data = pattern(5, bsize as usize);
            put(&mut img, at(d), &data);
            // Logical block 12 + n + n² + (1·n² + 2·n + 5): path [1][2][5].
            let lbn = 12 + n + n * n + n * n + 2 * n + 5;
            put_ptr(&fs, &mut img, at(a) + ps, b);
            put_ptr(&fs, &mut img, at(b) + 2 * ps, c);
            put_ptr(&fs, &mut img, at(c) + 5 * ps, d);
            // Turn /hello.txt into a sparse file reaching that block.
            let h = fs.lookup("/hello.txt", true).unwrap();
            let ioff = fs.inode_offset(h.ino).unwrap();
            let (soff, dboff, iboff) = layout(&fs);
            let size = (lbn + 1) * bsize + 100;
            put(&mut img, ioff + soff, &size.to_le_bytes());
            for i in 0..NDADDR as u64 {
                put_ptr(&fs, &mut img, ioff + dboff + i * ps, 0);
            }
            put_ptr(&fs, &mut img, ioff + iboff, 0);
            put_ptr(&fs, &mut img, ioff + iboff + ps, 0);
            put_ptr(&fs, &mut img, ioff + iboff + 2 * ps, a);

            let fs = ufs(&img);
            let st = fs.stat("/hello.txt").unwrap();
            assert_eq!((st.kind, st.size), (FileKind::File, size));
            let h = fs.lookup("/hello.txt", true).unwrap();
            let mut buf = vec![0xffu8; bsize as usize + 100];
            fs.read_range(&h, lbn * bsize, &mut buf).unwrap();
            assert_eq!(
                &buf[..bsize as usize],
                &data[..],
                "UFS{version} triple-indirect block"
            );
            assert!(
                buf[bsize as usize..].iter().all(|&x| x == 0),
                "hole after it"
            );
            // Holes: direct, single- and double-indirect ranges, and a
            // triple-indirect block whose pointer is zero.
            for hole in [0, 11, 12, 12 + n, 12 + n + n * n, lbn - 1] {
                let mut buf = vec![0xffu8; 64];
                fs.read_range(&h, hole * bsize + 7, &mut buf).unwrap();
                assert!(buf.iter().all(|&x| x == 0), "UFS{version} hole at {hole}");
            }
            // Larger than the partition: read_file refuses, no allocation.
            let e = fs.read_file("/hello.txt").unwrap_err();
            assert!(
                matches!(e, Error::Corrupt { .. }) && e.to_string().contains("larger"),
                "{e}"
            );
            // Beyond the triple-indirect range.
            let past = 12 + n + n * n + n * n * n;
            let e = fs.bmap(&h, past, &mut IndCache::default()).unwrap_err();
            assert!(e.to_string().contains("triple"), "{e}");
            assert!(fs.bmap(&h, u64::MAX, &mut IndCache::default()).is_err());

            // A wild pointer in the chain is Corrupt, not a wild read.
            put_ptr(&fs, &mut img, at(c) + 5 * ps, 0x7fff_fff0);
            let fs2 = ufs(&img);
            let e = fs2.read_range(&h, lbn * bsize, &mut buf).unwrap_err();
            assert!(e.to_string().contains("outside the file system"), "{e}");
            put_ptr(&fs, &mut img, at(c) + 5 * ps, -3);
            let fs2 = ufs(&img);
            assert!(matches!(
                fs2.read_range(&h, lbn * bsize, &mut buf),
                Err(Error::Corrupt { .. })
            ));
        }
    }

    /// Byte offset and size of a (small) directory's data.
    fn dir_data(fs: &Ufs, path: &str) -> (u64, usize) {
        let d = fs.lookup(path, true).unwrap();
        assert!(d.size <= fs.sb.bsize, "{path} fits one block");
        ((d.db[0] as u64) << fs.sb.fshift, d.size as usize)
    }

    #[test]
    fn old_42bsd_directories() {
        // fs_maxsymlinklen ≤ 0: d_namlen is the byte at offset 6 (the low
        // half of the old 16-bit field), offset 7 is 0.
        let tmp = TempDir::new("old");
        let mut img = mini_image(&tmp, 1, "old");
        let fs = ufs(&img);
        for dir in ["/", "/boot", "/sub"] {
            let (off, len) = dir_data(&fs, dir);
            let mut pos = off as usize;
            let end = pos + len;
            while pos < end {
                let reclen = u16_at(&img, pos + 4) as usize;
                let namlen = img[pos + 7];
                img[pos + 6] = namlen;
                img[pos + 7] = 0;
                pos += reclen;
            }
        }
        put(&mut img, 8192 + 1320, &0i32.to_le_bytes());
        let fs = ufs(&img);
        assert_eq!(fs.read_file("/hello.txt").unwrap(), b"hello, world\n");
        assert_eq!(
            fs.read_file("/boot/loader.conf").unwrap(),
            b"autoboot_delay=\"1\"\n"
        );
        assert_eq!(fs.read_file("/sub/file").unwrap(), b"in sub\n");
        let root = fs.read_dir("/").unwrap();
        let kind = |n: &str| root.iter().find(|e| e.name == n).map(|e| e.kind);
        assert_eq!(kind("boot"), Some(FileKind::Dir));
        assert_eq!(kind("hello.txt"), Some(FileKind::File));
        assert_eq!(kind("abs"), Some(FileKind::Symlink));
    }

    #[test]
    fn damaged_directories_and_inodes() {
        let tmp = TempDir::new("dmg");
        for version in [1, 2] {
            let good = mini_image(&tmp, version, &format!("d{version}"));
            let fs = ufs(&good);
            let (root, _) = dir_data(&fs, "/");
            // Second entry (".."): patch its fields.
            let second = root + u64::from(u16_at(&good, root as usize + 4));
            let cases: &[(&str, u64, Vec<u8>)] = &[
                ("d_reclen 0", root + 4, 0u16.to_le_bytes().to_vec()),
                ("d_reclen 6", root + 4, 6u16.to_le_bytes().to_vec()),
                (
                    "d_reclen past the chunk",
                    second + 4,
                    1000u16.to_le_bytes().to_vec(),
                ),
                ("d_reclen odd", second + 4, 13u16.to_le_bytes().to_vec()),
                ("d_namlen overrun", second + 7, vec![200]),
            ];
            for (what, off, bytes) in cases {
                let mut img = good.clone();
                put(&mut img, *off, bytes);
                let fs = ufs(&img);
                for r in [
                    fs.read_dir("/").map(|_| ()),
                    fs.read_file("/hello.txt").map(|_| ()),
                ] {
                    let e = r.unwrap_err();
                    assert!(
                        matches!(e, Error::Corrupt { .. }),
                        "UFS{version} {what}: {e}"
                    );
                }
            }

            let (soff, _, iboff) = layout(&fs);
            let hello = fs
                .inode_offset(fs.lookup("/hello.txt", true).unwrap().ino)
                .unwrap();
            let rootino = fs.inode_offset(ROOTINO).unwrap();
            let kernel = fs
                .inode_offset(fs.lookup("/boot/kernel/kernel", true).unwrap().ino)
                .unwrap();

            // Absurd di_size: stat reports it, reading refuses.
            let mut img = good.clone();
            put(&mut img, hello + soff, &(1u64 << 60).to_le_bytes());
            let fs2 = ufs(&img);
            assert_eq!(fs2.stat("/hello.txt").unwrap().size, 1 << 60);
            assert!(matches!(
                fs2.read_file("/hello.txt"),
                Err(Error::Corrupt { .. })
            ));
            // Huge root directory.
            let mut img = good.clone();
            put(&mut img, rootino + soff, &u64::MAX.to_le_bytes());
            assert!(matches!(
                ufs(&img).read_dir("/"),
                Err(Error::Corrupt { .. })
            ));
            // Negative / out-of-range indirect pointer.
            for bad in [-5i64, 0x7fff_ffff] {
                let mut img = good.clone();
                put_ptr(&fs, &mut img, kernel + iboff, bad);
                let e = ufs(&img).read_file("/boot/kernel/kernel").unwrap_err();
                assert!(matches!(e, Error::Corrupt { .. }), "{e}");
            }
            // A directory entry naming an impossible inode.
            let mut img = good.clone();
            put(&mut img, second, &u32::MAX.to_le_bytes());
            let e = ufs(&img).read_file("/../hello.txt").unwrap_err();
            assert!(e.to_string().contains("inode number"), "{e}");
            // The root inode is not a directory.
            let mut img = good.clone();
            put(&mut img, rootino, &IFREG.to_le_bytes());
            let e = ufs(&img).read_file("/hello.txt").unwrap_err();
            assert!(matches!(e, Error::NotDir { .. }), "{e}");
        }
    }
}
