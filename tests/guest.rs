//! The boot-contract test guest (`tests/guest/`): a tiny kernel linked and
//! entered like FreeBSD/amd64 that checks, from inside the VM, the hand-off
//! our `bhyveload` produced (shared/docs/freebsd-boot-abi.md) and, when asked
//! to, the machine `bhyve` presents (shared/docs/bhyve-platform.md: ACPI and
//! MP tables, PCI bus 0, PM timer, HPET, RTC, COM1's interrupt, AP start-up),
//! plus two tiny `.ko` modules.
//!
//! * [`build`] compiles the kernel and modules with the host's gcc/ld into a
//!   content-addressed cache under the cargo target dir (`target/guest/<hash>/`).
//! * [`Expect`] turns what a test set up into the `test.*` kernel environment
//!   variables the guest compares against (pass them with `bhyveload -e` or
//!   write them to `loader.conf`).
//! * [`parse_report`] reads the guest's COM1 output.
//!
//! Guest output, one line each (TAP-like):
//!
//! ```text
//! GUEST-BEGIN bhyve-rs boot-contract guest, entry=freebsd
//! # note
//! ok 12 - gdt: GDTR 0x5000/23, ...
//! not ok 36 - smap: entries exactly as computed from test.memsize # entry 1 {...}, want {...}
//! ok 42 - kernel: NAME = test.kernel_name # SKIP test.kernel_name not set
//! GUEST-SUMMARY pass=80 fail=1 skip=2
//! GUEST-EXIT poweroff
//! ```
//!
//! The guest then leaves the VM as `test.exit` says (default `poweroff`):
//! see [`Exit`].

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Flags for the guest kernel's C and assembly files.
pub(crate) const KERNEL_CFLAGS: &[&str] = &[
    "-ffreestanding",
    "-nostdlib",
    "-mcmodel=kernel",
    "-mno-red-zone",
    "-mno-sse",
    "-mno-sse2",
    "-mno-mmx",
    "-mno-avx",
    "-fno-pic",
    "-fno-pie",
    "-fno-stack-protector",
    "-fno-asynchronous-unwind-tables",
    "-fno-common",
    "-O2",
    "-std=gnu11",
    "-Wall",
    "-Wextra",
    "-Wno-unused-parameter",
];
/// Flags for the modules (kernel code model like FreeBSD's kmod.mk; unwind
/// tables left on for testmod so it has a `.eh_frame` + `.rela.eh_frame`).
const MODULE_CFLAGS: &[&str] = &[
    "-ffreestanding",
    "-nostdlib",
    "-mcmodel=kernel",
    "-mno-red-zone",
    "-mno-sse",
    "-fno-pic",
    "-fno-pie",
    "-fno-stack-protector",
    "-fno-common",
    "-O2",
    "-Wall",
];
pub(crate) const KERNEL_LDFLAGS: &[&str] = &[
    "-nostdlib",
    "-static",
    "-z",
    "max-page-size=0x1000",
    "-z",
    "noexecstack",
    "--build-id=none",
];

/// Paths of a built guest.
#[derive(Debug, Clone)]
pub struct GuestFiles {
    /// The cache directory holding everything below.
    pub dir: PathBuf,
    /// ELF64 ET_EXEC, linked at `0xffffffff80200000`, physical `0x200000`,
    /// entry `btext`; also bootable by `qemu-system-x86_64 -kernel` (multiboot).
    pub kernel: PathBuf,
    /// ET_REL module "testmod" (version 3), `MDT_DEPEND` on testdep 1..3.
    pub testmod: PathBuf,
    /// ET_REL module "testdep" (version 2).
    pub testdep: PathBuf,
}

/// Source directory of the guest (`tests/guest`).
pub fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("guest")
}

/// Build (or reuse) the guest kernel and modules.
///
/// The output directory is named after a hash of every source file and the
/// compiler flags, so a change to any source rebuilds; the build happens in
/// a private temporary directory that is renamed into place, so concurrent
/// test processes are safe (the loser of the rename uses the winner's).
/// Panics with a clear message if gcc or ld is missing or the build fails.
pub fn build() -> GuestFiles {
    static BUILT: OnceLock<GuestFiles> = OnceLock::new();
    BUILT.get_or_init(build_uncached).clone()
}

fn build_uncached() -> GuestFiles {
    let src = source_dir();
    let flags: Vec<&str> = KERNEL_CFLAGS
        .iter()
        .chain(MODULE_CFLAGS)
        .chain(KERNEL_LDFLAGS)
        .copied()
        .collect();
    let dir = cached_build(&src, &source_files(&src), &flags, |tmp| {
        compile_all(&src, tmp)
    });
    files_in(&dir)
}

/// The build directory for `sources` (paths under `src`) and `flags`:
/// `target/guest/<hash>/`, made by `compile` in a temporary directory if
/// it is not there yet (see [`build`] for why this is safe to race).
pub(crate) fn cached_build(
    src: &Path,
    sources: &[PathBuf],
    flags: &[&str],
    compile: impl FnOnce(&Path),
) -> PathBuf {
    for tool in ["gcc", "ld", "objcopy"] {
        match Command::new(tool).arg("--version").output() {
            Ok(o) if o.status.success() => {}
            _ => panic!(
                "`{tool}` not found or not working: the test guests (tests/guest) are built with \
                 the host's gcc and GNU binutils (Debian: apt-get install gcc binutils)"
            ),
        }
    }
    let mut h = Fnv::default();
    for p in sources {
        h.write(p.strip_prefix(src).unwrap().to_string_lossy().as_bytes());
        h.write(&[0]);
        h.write(&std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display())));
        h.write(&[0]);
    }
    for f in flags {
        h.write(f.as_bytes());
        h.write(&[0]);
    }
    let root = target_dir().join("guest");
    let dir = root.join(format!("{:016x}", h.finish()));
    if dir.join(".complete").exists() {
        return dir;
    }
    std::fs::create_dir_all(&root).unwrap_or_else(|e| panic!("create {}: {e}", root.display()));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let tmp = root.join(format!(".tmp-{}-{nanos}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap_or_else(|e| panic!("create {}: {e}", tmp.display()));
    compile(&tmp);
    std::fs::write(tmp.join(".complete"), b"").expect("write .complete");
    if std::fs::rename(&tmp, &dir).is_err() {
        // Another process finished first (or left a stale incomplete dir).
        let _ = std::fs::remove_dir_all(&tmp);
        if !dir.join(".complete").exists() {
            panic!("could not install the guest build at {}", dir.display());
        }
    }
    dir
}

fn files_in(dir: &Path) -> GuestFiles {
    GuestFiles {
        dir: dir.to_path_buf(),
        kernel: dir.join("kernel"),
        testmod: dir.join("testmod.ko"),
        testdep: dir.join("testdep.ko"),
    }
}

/// `target/` of this build: CARGO_TARGET_DIR, else derived from the test
/// executable (`target/<profile>/deps/<exe>`).
fn target_dir() -> PathBuf {
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        let t = PathBuf::from(t);
        return if t.is_absolute() {
            t
        } else {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(t)
        };
    }
    crate::bin_dir()
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir)
}

fn source_files(src: &Path) -> Vec<PathBuf> {
    let mut v = vec![src.join("kernel.ld")];
    for sub in ["src", "modules"] {
        let d = src.join(sub);
        let rd = std::fs::read_dir(&d).unwrap_or_else(|e| panic!("read {}: {e}", d.display()));
        for e in rd.flatten() {
            let p = e.path();
            if matches!(
                p.extension().and_then(|x| x.to_str()),
                Some("c" | "S" | "h")
            ) {
                v.push(p);
            }
        }
    }
    v.sort();
    v
}

pub(crate) fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "building the test guest failed: {cmd:?}\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn compile_all(src: &Path, out: &Path) {
    let mut objs = Vec::new();
    let mut jobs = Vec::new();
    for p in source_files(src) {
        let ext = p.extension().and_then(|x| x.to_str()).unwrap_or("");
        let in_src = p.parent() == Some(&src.join("src"));
        if in_src && (ext == "c" || ext == "S") {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let obj = out.join(format!("{name}.o"));
            let mut c = Command::new("gcc");
            c.args(KERNEL_CFLAGS).arg("-c").arg(&p).arg("-o").arg(&obj);
            objs.push(obj);
            jobs.push(c);
        }
    }
    for m in ["testmod", "testdep"] {
        let mut c = Command::new("gcc");
        c.args(MODULE_CFLAGS);
        if m == "testdep" {
            // carries a hand-made SHT_X86_64_UNWIND .eh_frame instead
            c.arg("-fno-asynchronous-unwind-tables");
        }
        c.arg("-c")
            .arg(src.join("modules").join(format!("{m}.c")))
            .arg("-o")
            .arg(out.join(format!("{m}.o")));
        jobs.push(c);
    }
    std::thread::scope(|s| {
        for mut c in jobs {
            s.spawn(move || run(&mut c));
        }
    });
    let mut ld = Command::new("ld");
    ld.args(KERNEL_LDFLAGS)
        .arg("-T")
        .arg(src.join("kernel.ld"))
        .arg("-o")
        .arg(out.join("kernel"))
        .args(&objs);
    run(&mut ld);
    for m in ["testmod", "testdep"] {
        run(Command::new("ld")
            .arg("-r")
            .arg("-o")
            .arg(out.join(format!("{m}.ko")))
            .arg(out.join(format!("{m}.o"))));
    }
}

/// FNV-1a 64: a stable content hash for the cache key.
#[derive(Debug)]
struct Fnv(u64);
impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}
impl Fnv {
    fn write(&mut self, b: &[u8]) {
        for &x in b {
            self.0 ^= u64::from(x);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}
/// The contents the guest expects in a raw file listed with
/// [`Expect::raw`]: byte `i` = `((i ^ i>>8 ^ i>>16) * 31 + 0x5a) mod 256`.
pub fn raw_pattern(len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| {
            ((i ^ (i >> 8) ^ (i >> 16))
                .wrapping_mul(31)
                .wrapping_add(0x5a)) as u8
        })
        .collect()
}

/// Disk contents the guest's virtio-blk checks expect ([`Expect::vblk_pattern`],
/// [`Expect::vblk_write`]): `len` bytes starting at byte offset `offset` of
/// the disk, byte `i` = `(v * 31 + seed * 101 + 0x5a) mod 256` with
/// `v = i ^ i>>8 ^ i>>16 ^ i>>24 ^ i>>32 ^ i>>40` (u64, wrapping).
/// `vblk_pattern(seed, 0, size)` is a whole image for `test.vblk_pattern`.
pub fn vblk_pattern(seed: u64, offset: u64, len: usize) -> Vec<u8> {
    (offset..offset + len as u64)
        .map(|i| {
            let v = i ^ (i >> 8) ^ (i >> 16) ^ (i >> 24) ^ (i >> 32) ^ (i >> 40);
            v.wrapping_mul(31)
                .wrapping_add(seed.wrapping_mul(101))
                .wrapping_add(0x5a) as u8
        })
        .collect()
}

/// How the guest leaves the VM after its summary (`test.exit`), and the
/// bhyve exit status each produces (bhyve-platform.md §1.2, §3.3, §3.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// ACPI S5: `outw(0x404, SLP_TYP 5 | SLP_EN)` — bhyve exits 1 (default).
    Poweroff,
    /// `outb(0xcf9, 0x6)` — bhyve exits 0.
    Reset,
    /// `cli; hlt` — bhyve exits 2.
    Halt,
    /// Empty IDT + `ud2` — bhyve exits 3.
    TripleFault,
}

impl Exit {
    fn as_str(self) -> &'static str {
        match self {
            Exit::Poweroff => "poweroff",
            Exit::Reset => "reset",
            Exit::Halt => "halt",
            Exit::TripleFault => "triplefault",
        }
    }
}

/// Expectations handed to the guest through its kernel environment.
/// Every field is optional; checks without an expectation report SKIP.
///
/// ```ignore
/// let e = guest::Expect::new()
///     .memsize(512 << 20)
///     .env("foo", "bar")            // kenv foo must be "bar"
///     .env_present("LINES")        // must exist, any value
///     .files(&["testmod.ko", "testdep.ko"]);
/// for kv in e.kenv() { args.push("-e".into()); args.push(kv); }
///
/// // the machine (bhyve -c 2 -s 0,hostbridge -s 31,lpc -l com1,stdio -u):
/// let m = guest::Expect::new()
///     .ncpus(2)
///     .acpi()
///     .pci(&[(0, 0, 0x1275, 0x1275), (31, 0, 0x8086, 0x7000)])
///     .uart_irq()
///     .pmtimer()
///     .hpet()
///     .rtc_today();
/// ```
#[derive(Debug, Clone, Default)]
pub struct Expect {
    memsize: Option<u64>,
    env: Vec<(String, Option<String>)>,
    noenv: Vec<String>,
    files: Option<Vec<String>>,
    raw: Vec<(String, String, u64)>,
    howto: Option<u32>,
    kernel_args: Option<String>,
    kernel_name: Option<String>,
    exit: Option<Exit>,
    ncpus: Option<u32>,
    acpi: bool,
    pci: Option<Vec<(u8, u8, u16, u16)>>,
    uart_irq: bool,
    pmtimer: bool,
    hpet: bool,
    rtc: Option<String>,
    vblk: Option<u8>,
    vblk_sectors: Option<u64>,
    vblk_serial: Option<String>,
    vblk_pattern: Option<u64>,
    vblk_write: Option<(u64, u32, u64)>,
    vblk_ro: bool,
    vnet: Option<u8>,
    vnet_mac: Option<[u8; 6]>,
    vnet_nomrg: bool,
    vnet_mtu: Option<u16>,
    vnet_tx: u32,
    vnet_rx: u32,
}

impl Expect {
    pub fn new() -> Expect {
        Expect::default()
    }
    /// Guest memory size in bytes as given to bhyveload `-m`
    /// (`test.memsize`): the SMAP must be exactly §1.2 for it.
    pub fn memsize(mut self, bytes: u64) -> Self {
        self.memsize = Some(bytes);
        self
    }
    /// Variable `name` must have exactly `value` (`test.expect_env`).
    /// Naming `boot_serial` or `smbios.bios.vendor` here replaces the
    /// built-in expectation for it.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        assert!(
            !value.contains(','),
            "test.expect_env values cannot contain ','"
        );
        self.env.push((name.to_string(), Some(value.to_string())));
        self
    }
    /// Variable `name` must exist, any value (`test.expect_env`).
    pub fn env_present(mut self, name: &str) -> Self {
        self.env.push((name.to_string(), None));
        self
    }
    /// Variable `name` must not exist (`test.expect_noenv`).
    pub fn env_absent(mut self, name: &str) -> Self {
        self.noenv.push(name.to_string());
        self
    }
    /// Exact basenames of the files loaded after the kernel, in load order
    /// (`test.files`), e.g. `["testmod.ko", "testdep.ko", "blob.bin"]`.
    pub fn files(mut self, names: &[&str]) -> Self {
        self.files = Some(names.iter().map(|s| s.to_string()).collect());
        self
    }
    /// A raw file (`load -t TYPE`) with basename `name`, type `ty` and
    /// `size` bytes whose contents are [`raw_pattern`]`(size)` (`test.raw`).
    pub fn raw(mut self, name: &str, ty: &str, size: u64) -> Self {
        self.raw.push((name.to_string(), ty.to_string(), size));
        self
    }
    /// Exact MODINFOMD_HOWTO value (`test.howto`).
    pub fn howto(mut self, howto: u32) -> Self {
        self.howto = Some(howto);
        self
    }
    /// Exact MODINFO_ARGS of the kernel (`test.kernel_args`); without it the
    /// guest requires that there is no ARGS record.
    pub fn kernel_args(mut self, args: &str) -> Self {
        self.kernel_args = Some(args.to_string());
        self
    }
    /// Exact MODINFO_NAME of the kernel, e.g. `/boot/kernel/kernel`
    /// (`test.kernel_name`).
    pub fn kernel_name(mut self, name: &str) -> Self {
        self.kernel_name = Some(name.to_string());
        self
    }
    /// How the guest leaves the VM (`test.exit`).
    pub fn exit(mut self, how: Exit) -> Self {
        self.exit = Some(how);
        self
    }

    // ---- the machine bhyve presents (shared/docs/bhyve-platform.md) ----
    // Checks of bhyve-specific values report SKIP on the multiboot (QEMU)
    // path; the generic ones run there too.

    /// `test.ncpus=N` (bhyve `-c N`): the MADT lists N enabled local APICs
    /// with IDs 0..N-1, so does the MP table, and INIT-SIPI-SIPI (broadcast)
    /// starts exactly N-1 APs that reach long mode and report APIC IDs
    /// 1..N-1 (checks `smp: ...`). N is 1..16.
    pub fn ncpus(mut self, n: u32) -> Self {
        assert!((1..=16).contains(&n), "the guest handles 1..16 CPUs");
        self.ncpus = Some(n);
        self
    }
    /// `test.acpi=1`: RSDP found by scanning 0xE0000–0xFFFFF (at 0xF2400),
    /// v2 with both checksums, RSDT/XSDT, every table's signature/length/
    /// checksum, FACP/APIC/HPET/MCFG listed, DSDT and FACS via the FADT,
    /// the FADT's fixed blocks (PM timer 0x408, PM1a 0x400/0x404, SCI 9, …),
    /// MADT, HPET and MCFG contents, and the MP table (§5; checks `acpi: ...`
    /// and `mptable: ...`).
    pub fn acpi(mut self) -> Self {
        self.acpi = true;
        self
    }
    /// `test.pci=S.F=VVVV:DDDD,...`: exactly these functions exist on bus 0
    /// (configuration mechanism #1), with these vendor:device IDs; class
    /// codes are checked where the document gives them, plus bhyve's
    /// header/BAR/INTx details for hostbridge, lpc and uart, the
    /// multifunction bit and ECAM at 0xE0000000 (checks `pci: ...`).
    /// E.g. `&[(0, 0, 0x1275, 0x1275), (31, 0, 0x8086, 0x7000)]`.
    pub fn pci(mut self, functions: &[(u8, u8, u16, u16)]) -> Self {
        for &(slot, func, ..) in functions {
            assert!(slot < 32 && func < 8, "bad PCI slot.func {slot}.{func}");
        }
        self.pci = Some(functions.to_vec());
        self
    }
    /// `test.uart_irq=1`: with COM1's I/O APIC pin 4 routed to a vector and
    /// the local APIC enabled, setting IER.ETBEI interrupts the BSP and IIR
    /// says THR empty; also local APIC / I/O APIC identity (checks
    /// `uart irq: ...`, `lapic: ...`, `ioapic: ...`).
    pub fn uart_irq(mut self) -> Self {
        self.uart_irq = true;
        self
    }
    /// `test.pmtimer=1`: the ACPI PM timer (port 0x408, 32-bit reads)
    /// advances monotonically at 3.579545 MHz ±5 % against the 8254.
    pub fn pmtimer(mut self) -> Self {
        self.pmtimer = true;
        self
    }
    /// `test.hpet=1`: HPET at 0xFED00000: capabilities
    /// 0x05F5E100_80860701, counter holds while disabled and runs at
    /// 10^15/period Hz (±5 % against the 8254), LEG_RT reads 0, timer
    /// capabilities.
    pub fn hpet(mut self) -> Self {
        self.hpet = true;
        self
    }
    /// `test.rtc=YYYY-MM-DD`: the CMOS RTC (format per status B, century in
    /// 0x32) shows this date or the next day (midnight tolerance), runs,
    /// has the power-on status registers; with [`Expect::memsize`] also the
    /// CMOS memory-size cells 0x34/0x35 and 0x5B–0x5D (§3.6).
    pub fn rtc_date(mut self, year: u32, month: u32, day: u32) -> Self {
        assert!((1..=12).contains(&month) && (1..=31).contains(&day));
        self.rtc = Some(format!("{year:04}-{month:02}-{day:02}"));
        self
    }
    /// [`Expect::rtc_date`] with today's **UTC** date: run bhyve with `-u`
    /// (RTC in UTC) unless the host's local time zone is UTC.
    pub fn rtc_today(self) -> Self {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock before 1970")
            .as_secs();
        let (y, m, d) = civil_from_days((secs / 86400) as i64);
        self.rtc_date(y, m, d)
    }

    /// `test.vblk=S`: a legacy virtio-blk function at `0:S.0` (bhyve
    /// `-s S,virtio-blk,IMAGE`), driven by the guest's polled driver
    /// (§4.5, §4.6; checks `vblk: ...`): IDs, class, subsystem, BAR0,
    /// reset, ACKNOWLEDGE|DRIVER, host features (exactly SEG_MAX, BLK_SIZE,
    /// FLUSH, TOPOLOGY, INDIRECT_DESC, DISCARD optional), guest features
    /// SEG_MAX|BLK_SIZE|FLUSH, queue 0 of 128 entries at a PFN, DRIVER_OK,
    /// config blk_size 512 and seg_max 126, GET_ID, ISR, an unknown request
    /// type → UNSUPP, and STATUS=0 forgetting the queue at the end. The
    /// other `vblk_*` expectations add to it.
    pub fn vblk(mut self, slot: u8) -> Self {
        assert!(slot < 32, "bad PCI slot {slot}");
        self.vblk = Some(slot);
        self
    }
    /// `test.vblk_sectors=N`: config capacity is N 512-byte sectors.
    pub fn vblk_sectors(mut self, n: u64) -> Self {
        self.vblk_sectors = Some(n);
        self
    }
    /// `test.vblk_serial=S`: GET_ID returns `s` (bhyve `ser=`/`serial=`),
    /// NUL-padded when shorter than 20 bytes. Without it the guest wants
    /// bhyve's default `BHYVE-XXXX-XXXX-XXXX`.
    pub fn vblk_serial(mut self, s: &str) -> Self {
        assert!(
            s.len() <= 20 && !s.contains(char::is_whitespace) && !s.contains('\0'),
            "virtio-blk serial must be at most 20 bytes without blanks"
        );
        self.vblk_serial = Some(s.to_string());
        self
    }
    /// `test.vblk_pattern=SEED`: the image holds [`vblk_pattern`]`(seed, 0,
    /// size)`; the guest reads sectors 0–3 (one descriptor) and the last
    /// sector and compares.
    pub fn vblk_pattern(mut self, seed: u64) -> Self {
        self.vblk_pattern = Some(seed);
        self
    }
    /// `test.vblk_write=LBA,COUNT,SEED`: the guest writes `count` (1–8)
    /// sectors at `lba` with [`vblk_pattern`]`(seed, lba * 512, count *
    /// 512)`, FLUSHes and reads them back (two data descriptors). The image
    /// holds those bytes after bhyve exits. With [`Expect::vblk_ro`] the
    /// write must complete IOERR instead (and, with
    /// [`Expect::vblk_pattern`], the sectors still hold the old pattern).
    pub fn vblk_write(mut self, lba: u64, count: u32, seed: u64) -> Self {
        assert!((1..=8).contains(&count), "the guest writes 1..8 sectors");
        self.vblk_write = Some((lba, count, seed));
        self
    }
    /// `test.vblk_ro=1`: the backend is read-only (`ro`): a write completes
    /// with status IOERR.
    pub fn vblk_ro(mut self) -> Self {
        self.vblk_ro = true;
        self
    }

    /// `test.vnet=S`: a legacy virtio-net function at `0:S.0` (bhyve
    /// `-s S,virtio-net,TAP`), driven by the guest's polled driver (§4.5,
    /// §4.7; checks `vnet: ...`): IDs, class, subsystem, BAR0, status,
    /// host features (bhyve's tap set), config MAC (unicast) and link up,
    /// RX/TX queues of 1024 and no control queue, DRIVER_OK, 128 RX buffers
    /// posted, reset at the end. [`Expect::vnet_tx`] and
    /// [`Expect::vnet_rx`] exchange frames.
    pub fn vnet(mut self, slot: u8) -> Self {
        assert!(slot < 32, "bad PCI slot {slot}");
        self.vnet = Some(slot);
        self
    }
    /// `test.vnet_mac=...`: the config MAC must be `mac`.
    pub fn vnet_mac(mut self, mac: [u8; 6]) -> Self {
        self.vnet_mac = Some(mac);
        self
    }
    /// `test.vnet_nomrg=1`: decline MRG_RXBUF (10-byte header, one 2 KiB
    /// buffer per frame); otherwise RX buffers are 512 bytes and long
    /// frames must arrive merged over several.
    pub fn vnet_nomrg(mut self) -> Self {
        self.vnet_nomrg = true;
        self
    }
    /// `test.vnet_mtu=N`: MTU offered (feature and config) must be `mtu`
    /// (bhyve `mtu=`).
    pub fn vnet_mtu(mut self, mtu: u16) -> Self {
        self.vnet_mtu = Some(mtu);
        self
    }
    /// `test.vnet_tx=N`: the guest sends `vnet_frame(seq, n, b'G', ..)` for
    /// seq 0..N to ff:ff:ff:ff:ff:ff from its MAC, one at a time.
    pub fn vnet_tx(mut self, n: u32) -> Self {
        self.vnet_tx = n;
        self
    }
    /// `test.vnet_rx=N`: after sending, the guest receives
    /// `vnet_frame(seq, n, b'H', ..)` for seq 0..N, in order (other
    /// EtherTypes are skipped), and checks every byte.
    pub fn vnet_rx(mut self, n: u32) -> Self {
        self.vnet_rx = n;
        self
    }

    /// `name=value` strings, one per variable (for `bhyveload -e`).
    pub fn kenv(&self) -> Vec<String> {
        let mut v = Vec::new();
        if let Some(m) = self.memsize {
            v.push(format!("test.memsize={m}"));
        }
        if !self.env.is_empty() {
            let items: Vec<String> = self
                .env
                .iter()
                .map(|(n, val)| match val {
                    Some(val) => format!("{n}={val}"),
                    None => n.clone(),
                })
                .collect();
            v.push(format!("test.expect_env={}", items.join(",")));
        }
        if !self.noenv.is_empty() {
            v.push(format!("test.expect_noenv={}", self.noenv.join(",")));
        }
        if let Some(f) = &self.files {
            v.push(format!("test.files={}", f.join(",")));
        }
        if !self.raw.is_empty() {
            let items: Vec<String> = self
                .raw
                .iter()
                .map(|(n, t, s)| format!("{n}:{t}:{s}"))
                .collect();
            v.push(format!("test.raw={}", items.join(",")));
        }
        if let Some(h) = self.howto {
            v.push(format!("test.howto={h:#x}"));
        }
        if let Some(a) = &self.kernel_args {
            v.push(format!("test.kernel_args={a}"));
        }
        if let Some(n) = &self.kernel_name {
            v.push(format!("test.kernel_name={n}"));
        }
        if let Some(e) = self.exit {
            v.push(format!("test.exit={}", e.as_str()));
        }
        if let Some(n) = self.ncpus {
            v.push(format!("test.ncpus={n}"));
        }
        if self.acpi {
            v.push("test.acpi=1".into());
        }
        if let Some(p) = &self.pci {
            let items: Vec<String> = p
                .iter()
                .map(|(s, f, ven, dev)| format!("{s}.{f}={ven:04x}:{dev:04x}"))
                .collect();
            v.push(format!("test.pci={}", items.join(",")));
        }
        if self.uart_irq {
            v.push("test.uart_irq=1".into());
        }
        if self.pmtimer {
            v.push("test.pmtimer=1".into());
        }
        if self.hpet {
            v.push("test.hpet=1".into());
        }
        if let Some(d) = &self.rtc {
            v.push(format!("test.rtc={d}"));
        }
        if let Some(s) = self.vblk {
            v.push(format!("test.vblk={s}"));
        }
        if let Some(n) = self.vblk_sectors {
            v.push(format!("test.vblk_sectors={n}"));
        }
        if let Some(s) = &self.vblk_serial {
            v.push(format!("test.vblk_serial={s}"));
        }
        if let Some(seed) = self.vblk_pattern {
            v.push(format!("test.vblk_pattern={seed}"));
        }
        if let Some((lba, count, seed)) = self.vblk_write {
            v.push(format!("test.vblk_write={lba},{count},{seed}"));
        }
        if self.vblk_ro {
            v.push("test.vblk_ro=1".into());
        }
        if let Some(s) = self.vnet {
            v.push(format!("test.vnet={s}"));
        }
        if let Some(m) = self.vnet_mac {
            let hex: Vec<String> = m.iter().map(|b| format!("{b:02x}")).collect();
            v.push(format!("test.vnet_mac={}", hex.join(":")));
        }
        if self.vnet_nomrg {
            v.push("test.vnet_nomrg=1".into());
        }
        if let Some(m) = self.vnet_mtu {
            v.push(format!("test.vnet_mtu={m}"));
        }
        if self.vnet_tx > 0 {
            v.push(format!("test.vnet_tx={}", self.vnet_tx));
        }
        if self.vnet_rx > 0 {
            v.push(format!("test.vnet_rx={}", self.vnet_rx));
        }
        v
    }

    /// The same variables as `loader.conf` lines (`name="value"`).
    pub fn loader_conf(&self) -> String {
        let mut s = String::new();
        for kv in self.kenv() {
            let (n, v) = kv.split_once('=').unwrap();
            let _ = writeln!(s, "{n}=\"{v}\"");
        }
        s
    }
}

/// (year, month, day) of a day count since 1970-01-01 (proleptic
/// Gregorian; H. Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (u32, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y as u32, m as u32, d as u32)
}

/// The guest's test EtherType (IEEE 802 local experimental).
pub const VNET_ETHERTYPE: u16 = 0x88b5;

/// Frame `seq` of a run of `n` in direction `dir` (`b'G'` guest to host,
/// `b'H'` host to guest), as vnet_checks.c builds and checks them: dst,
/// src, EtherType, seq (u32 LE), length (u16 LE), dir, 0, then byte i =
/// (seq * 7 + i + dir) mod 256; 60..1514 bytes, the last of a run 1514.
pub fn vnet_frame(seq: u32, n: u32, dir: u8, dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    let mul = if dir == b'G' { 331 } else { 577 };
    let len = if seq + 1 == n {
        1514
    } else {
        60 + (seq * mul) % 1455
    } as usize;
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&VNET_ETHERTYPE.to_be_bytes());
    f.extend_from_slice(&seq.to_le_bytes());
    f.extend_from_slice(&(len as u16).to_le_bytes());
    f.extend_from_slice(&[dir, 0]);
    for i in 22..len {
        f.push((seq.wrapping_mul(7) as usize + i + dir as usize) as u8);
    }
    f
}

/// Verdict of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pass,
    Fail,
    Skip,
}

/// One `ok`/`not ok` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub number: u32,
    pub status: Status,
    /// e.g. `smap: entries exactly as computed from test.memsize`
    pub name: String,
    /// failure detail or skip reason (empty for a pass)
    pub detail: String,
}

/// The `GUEST-SUMMARY` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub pass: u32,
    pub fail: u32,
    pub skip: u32,
}

/// Everything the guest printed, parsed.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// `freebsd` or `multiboot`, from `GUEST-BEGIN ... entry=`.
    pub entry: Option<String>,
    pub checks: Vec<Check>,
    /// `# ...` lines, without the `# `.
    pub notes: Vec<String>,
    pub summary: Option<Summary>,
    /// From `GUEST-EXIT <how>`.
    pub exit: Option<String>,
}

/// Parse the guest's serial output (other text around it is ignored; a CR
/// before the LF is accepted).
pub fn parse_report(serial: &str) -> Report {
    let mut r = Report::default();
    for line in serial.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(i) = line.find("GUEST-BEGIN ") {
            r.entry = line[i..]
                .split_whitespace()
                .find_map(|w| w.strip_prefix("entry="))
                .map(str::to_string);
            // a second BEGIN (guest restarted) starts over
            r.checks.clear();
            r.notes.clear();
            r.summary = None;
            r.exit = None;
        } else if let Some(rest) = line.strip_prefix("GUEST-SUMMARY ") {
            let mut s = Summary {
                pass: 0,
                fail: 0,
                skip: 0,
            };
            for w in rest.split_whitespace() {
                if let Some((k, v)) = w.split_once('=') {
                    let v = v.parse().unwrap_or(0);
                    match k {
                        "pass" => s.pass = v,
                        "fail" => s.fail = v,
                        "skip" => s.skip = v,
                        _ => {}
                    }
                }
            }
            r.summary = Some(s);
        } else if let Some(rest) = line.strip_prefix("GUEST-EXIT ") {
            r.exit = Some(rest.trim().to_string());
        } else if let Some(rest) = line.strip_prefix("# ") {
            r.notes.push(rest.to_string());
        } else if let Some(c) = parse_check(line) {
            r.checks.push(c);
        }
    }
    r
}

fn parse_check(line: &str) -> Option<Check> {
    let (ok, rest) = if let Some(rest) = line.strip_prefix("ok ") {
        (true, rest)
    } else {
        (false, line.strip_prefix("not ok ")?)
    };
    let (num, rest) = rest.split_once(" - ")?;
    let number = num.trim().parse().ok()?;
    let (name, directive) = match rest.split_once(" # ") {
        Some((n, d)) => (n, d),
        None => (rest, ""),
    };
    let (status, detail) = if !ok {
        (Status::Fail, directive)
    } else if let Some(reason) = directive.strip_prefix("SKIP") {
        (Status::Skip, reason.trim_start())
    } else {
        (Status::Pass, directive)
    };
    Some(Check {
        number,
        status,
        name: name.to_string(),
        detail: detail.to_string(),
    })
}

impl Report {
    /// Checks that failed.
    pub fn failures(&self) -> Vec<&Check> {
        self.checks
            .iter()
            .filter(|c| c.status == Status::Fail)
            .collect()
    }

    /// Checks that were skipped.
    pub fn skipped(&self) -> Vec<&Check> {
        self.checks
            .iter()
            .filter(|c| c.status == Status::Skip)
            .collect()
    }

    /// The check with exactly this name.
    pub fn get(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }

    /// Checks whose name starts with `prefix` (e.g. `"module testmod.ko:"`).
    pub fn matching(&self, prefix: &str) -> Vec<&Check> {
        self.checks
            .iter()
            .filter(|c| c.name.starts_with(prefix))
            .collect()
    }

    /// The guest ran to its summary: BEGIN seen, checks numbered 1..n
    /// without gaps, and the summary counts agree with the lines.
    pub fn is_complete(&self) -> bool {
        let Some(s) = self.summary else { return false };
        self.entry.is_some()
            && self
                .checks
                .iter()
                .enumerate()
                .all(|(i, c)| c.number as usize == i + 1)
            && s.fail as usize == self.failures().len()
            && s.skip as usize == self.skipped().len()
            && (s.pass + s.fail + s.skip) as usize == self.checks.len()
    }

    /// Human-readable list of failures (and incompleteness), for panics.
    pub fn describe_problems(&self) -> String {
        let mut s = String::new();
        if !self.is_complete() {
            let _ = writeln!(
                s,
                "guest report incomplete (entry {:?}, {} check lines, summary {:?}, last: {:?})",
                self.entry,
                self.checks.len(),
                self.summary,
                self.checks.last().map(|c| &c.name)
            );
        }
        for c in self.failures() {
            let _ = writeln!(s, "not ok {} - {} # {}", c.number, c.name, c.detail);
        }
        s
    }

    /// Panic unless the report is complete and no check failed. `serial`
    /// (the raw output) is included in the panic message.
    pub fn assert_all_passed(&self, serial: &str) {
        let p = self.describe_problems();
        if !p.is_empty() {
            panic!("guest checks failed:\n{p}\n--- guest serial output ---\n{serial}");
        }
    }

    /// Panic unless every named check is present and passed (not skipped):
    /// for tests that rely on an expectation actually being checked.
    pub fn assert_passed(&self, names: &[&str]) {
        for n in names {
            match self.get(n) {
                Some(c) if c.status == Status::Pass => {}
                Some(c) => panic!("guest check {n:?}: {:?} {}", c.status, c.detail),
                None => panic!(
                    "guest check {n:?} not reported; got:\n{}",
                    self.checks
                        .iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join("\n")
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "bhyve noise\r\n\
GUEST-BEGIN bhyve-rs boot-contract guest, entry=freebsd\r\n\
# modulep=0x21e000 kernend=0x21f000\r\n\
ok 1 - entry: RFLAGS.IF clear\r\n\
not ok 2 - smap: entries exactly as computed from test.memsize # 1 entries, want 2\r\n\
ok 3 - kernel: NAME = test.kernel_name # SKIP test.kernel_name not set\r\n\
GUEST-SUMMARY pass=1 fail=1 skip=1\r\n\
GUEST-EXIT poweroff\r\n";

    #[test]
    fn parses_sample() {
        let r = parse_report(SAMPLE);
        assert_eq!(r.entry.as_deref(), Some("freebsd"));
        assert_eq!(r.checks.len(), 3);
        assert_eq!(r.checks[1].status, Status::Fail);
        assert_eq!(r.checks[1].detail, "1 entries, want 2");
        assert_eq!(r.checks[2].status, Status::Skip);
        assert_eq!(r.checks[2].detail, "test.kernel_name not set");
        assert_eq!(r.notes, vec!["modulep=0x21e000 kernend=0x21f000"]);
        assert_eq!(r.exit.as_deref(), Some("poweroff"));
        assert!(r.is_complete());
        assert_eq!(r.failures().len(), 1);
        assert!(r.describe_problems().contains("not ok 2 - smap"));
        r.assert_passed(&["entry: RFLAGS.IF clear"]);
    }

    #[test]
    fn truncated_output_is_incomplete() {
        let r = parse_report(&SAMPLE[..SAMPLE.find("ok 3").unwrap()]);
        assert!(!r.is_complete());
        assert!(!r.describe_problems().is_empty());
    }

    #[test]
    fn expectations_become_kenv() {
        let e = Expect::new()
            .memsize(512 << 20)
            .env("foo", "bar")
            .env_present("LINES")
            .env_absent("boot_single")
            .files(&["testmod.ko", "testdep.ko"])
            .raw("blob.bin", "test_blob", 5000)
            .howto(0x1000)
            .exit(Exit::Reset);
        assert_eq!(
            e.kenv(),
            vec![
                "test.memsize=536870912",
                "test.expect_env=foo=bar,LINES",
                "test.expect_noenv=boot_single",
                "test.files=testmod.ko,testdep.ko",
                "test.raw=blob.bin:test_blob:5000",
                "test.howto=0x1000",
                "test.exit=reset",
            ]
        );
        assert!(
            e.loader_conf()
                .contains("test.files=\"testmod.ko,testdep.ko\"\n")
        );
    }

    #[test]
    fn machine_expectations_become_kenv() {
        let e = Expect::new()
            .ncpus(2)
            .acpi()
            .pci(&[
                (0, 0, 0x1275, 0x1275),
                (31, 0, 0x8086, 0x7000),
                (2, 0, 0x131f, 0x2000),
            ])
            .uart_irq()
            .pmtimer()
            .hpet()
            .rtc_date(2024, 2, 29);
        assert_eq!(
            e.kenv(),
            vec![
                "test.ncpus=2",
                "test.acpi=1",
                "test.pci=0.0=1275:1275,31.0=8086:7000,2.0=131f:2000",
                "test.uart_irq=1",
                "test.pmtimer=1",
                "test.hpet=1",
                "test.rtc=2024-02-29",
            ]
        );
        assert!(e.loader_conf().contains("test.pci=\"0.0=1275:1275,"));
        // nothing asked for: none of the machine variables
        assert!(Expect::new().kenv().is_empty());
    }

    #[test]
    fn rtc_today_is_a_utc_date() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(20_453), (2025, 12, 31));
        let kv = Expect::new().rtc_today().kenv();
        let d = kv[0].strip_prefix("test.rtc=").unwrap();
        assert_eq!(d.len(), 10);
        assert_eq!(&d[4..5], "-");
        assert!(d[..4].parse::<u32>().unwrap() >= 2024);
    }

    #[test]
    #[should_panic(expected = "bad PCI slot.func")]
    fn pci_rejects_bad_slot() {
        let _ = Expect::new().pci(&[(32, 0, 0x1275, 0x1275)]);
    }

    #[test]
    fn raw_pattern_matches_guest_formula() {
        let p = raw_pattern(70000);
        assert_eq!(p[0], 0x5a);
        assert_eq!(p[1], (31u32 + 0x5a) as u8);
        assert_eq!(
            p[0x10203],
            (((0x10203u64 ^ 0x102 ^ 0x1) * 31 + 0x5a) & 0xff) as u8
        );
    }

    #[test]
    fn vblk_expectations_become_kenv() {
        let e = Expect::new()
            .vblk(4)
            .vblk_sectors(2048)
            .vblk_serial("BHYVE-TEST-0001")
            .vblk_pattern(7)
            .vblk_write(100, 3, 0x99)
            .vblk_ro();
        assert_eq!(
            e.kenv(),
            vec![
                "test.vblk=4",
                "test.vblk_sectors=2048",
                "test.vblk_serial=BHYVE-TEST-0001",
                "test.vblk_pattern=7",
                "test.vblk_write=100,3,153",
                "test.vblk_ro=1",
            ]
        );
        assert!(e.loader_conf().contains("test.vblk_write=\"100,3,153\"\n"));
        assert_eq!(Expect::new().vblk(0).kenv(), vec!["test.vblk=0"]);
    }

    #[test]
    #[should_panic(expected = "1..8 sectors")]
    fn vblk_write_rejects_big_count() {
        let _ = Expect::new().vblk_write(0, 9, 1);
    }

    #[test]
    fn vblk_pattern_matches_guest_formula() {
        let p = vblk_pattern(7, 0, 1024);
        assert_eq!(p[0], ((7 * 101 + 0x5a) & 0xff) as u8);
        assert_eq!(p[1], ((31 + 7 * 101 + 0x5a) & 0xff) as u8);
        // i = 0x203: v = 0x203 ^ 0x2 = 0x201
        assert_eq!(p[0x203], ((0x201 * 31 + 7 * 101 + 0x5a) & 0xff) as u8);
        // an offset window is the same bytes as the whole image
        assert_eq!(vblk_pattern(7, 512, 512), p[512..].to_vec());
        // far offsets use the high shifts: i = 1<<40 -> v = (1<<40) ^ 1
        let far = vblk_pattern(3, 1 << 40, 1)[0];
        let v: u64 = (1 << 40) ^ 1;
        assert_eq!(far, (v.wrapping_mul(31) + 303 + 0x5a) as u8);
        // the seed changes every byte
        let q = vblk_pattern(8, 0, 1024);
        assert!(p.iter().zip(&q).all(|(a, b)| a != b));
    }

    #[test]
    fn builds_kernel_and_modules() {
        let g = build();
        let k = std::fs::read(&g.kernel).unwrap();
        assert_eq!(&k[..4], b"\x7fELF");
        assert_eq!(u16::from_le_bytes([k[16], k[17]]), 2, "ET_EXEC");
        let entry = u64::from_le_bytes(k[24..32].try_into().unwrap());
        assert_eq!(entry & !0xfff_u64, 0xffff_ffff_8020_0000);
        for m in [&g.testmod, &g.testdep] {
            let b = std::fs::read(m).unwrap();
            assert_eq!(u16::from_le_bytes([b[16], b[17]]), 1, "ET_REL");
        }
        // second call is the cached one
        assert_eq!(build().dir, g.dir);
    }
}
