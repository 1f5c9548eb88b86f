//! The Linux-entry test guest (`tests/guest/linux/`) and synthetic
//! bzImages around it.
//!
//! The guest is a flat binary linked at 16 MiB whose `startup_64` (at
//! +0x200) checks, from inside the VM, what the x86 boot protocol's 64-bit
//! entry promises (CPU state, `boot_params`, e820, command line, initrd)
//! and that bhyve's RSDP is where Linux scans for it. It reports like the
//! boot-contract guest (`guest::parse_report`, `entry=linux`) and powers
//! off through ACPI S5. Expectations are `test.*` words on the command
//! line: `test.memsize`, `test.initrd_size`, `test.initrd_fnv` ([`fnv1a`]).
//!
//! [`bzimage`] wraps a payload in a boot sector and setup header the way a
//! real bzImage is laid out, with [`Setup`] choosing the header fields.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use crate::guest::{cached_build, run, source_dir};

/// The boot-contract guest's flags, but for code linked low (at
/// `LOAD_ADDR`) rather than in the top 2 GiB.
fn cflags() -> Vec<&'static str> {
    crate::guest::KERNEL_CFLAGS
        .iter()
        .map(|&f| {
            if f == "-mcmodel=kernel" {
                "-mcmodel=small"
            } else {
                f
            }
        })
        .collect()
}
const LDFLAGS: &[&str] = crate::guest::KERNEL_LDFLAGS;

/// Where the guest is linked, and so the `pref_address` it needs.
pub const LOAD_ADDR: u64 = 0x100_0000;

/// The boot-contract guest's files it shares: output and the check
/// protocol, string helpers, `test.*` lookup.
const SHARED: &[&str] = &["src/console.c", "src/lib.c", "src/kenv.c"];
const OWN: &[&str] = &["linux/entry.S", "linux/main.c"];
const HEADERS: &[&str] = &["src/guest.h", "src/io.h", "linux/linux.ld"];

/// The guest's protected-mode code (built once per source hash, like
/// `guest::build`).
pub fn payload() -> Vec<u8> {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let p = BUILT.get_or_init(|| {
        let src = source_dir();
        let sources: Vec<PathBuf> = SHARED
            .iter()
            .chain(OWN)
            .chain(HEADERS)
            .map(|f| src.join(f))
            .collect();
        let cflags = cflags();
        let flags: Vec<&str> = cflags.iter().chain(LDFLAGS).copied().collect();
        let dir = cached_build(&src, &sources, &flags, |tmp| {
            let mut objs = Vec::new();
            for f in SHARED.iter().chain(OWN) {
                let obj = tmp.join(format!("{}.o", f.replace('/', "_")));
                run(Command::new("gcc")
                    .args(&cflags)
                    .arg("-I")
                    .arg(src.join("src"))
                    .arg("-c")
                    .arg(src.join(f))
                    .arg("-o")
                    .arg(&obj));
                objs.push(obj);
            }
            let elf = tmp.join("payload.elf");
            run(Command::new("ld")
                .args(LDFLAGS)
                .arg("-T")
                .arg(src.join("linux/linux.ld"))
                .arg("-o")
                .arg(&elf)
                .args(&objs));
            run(Command::new("objcopy")
                .args(["-O", "binary"])
                .arg(&elf)
                .arg(tmp.join("payload.bin")));
        });
        dir.join("payload.bin")
    });
    std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// Setup header fields of a synthetic bzImage (boot.rst offsets).
#[derive(Debug, Clone)]
pub struct Setup {
    pub version: u16,
    pub loadflags: u8,
    pub xloadflags: u16,
    pub relocatable: u8,
    pub kernel_alignment: u32,
    pub pref_address: u64,
    /// `None`: the payload's size rounded up to 4 KiB, plus 1 MiB.
    pub init_size: Option<u32>,
    pub cmdline_size: u32,
    pub initrd_addr_max: u32,
}

impl Default for Setup {
    /// Shaped like a current x86-64 kernel (protocol 2.15, relocatable,
    /// 2 MiB alignment, 64-bit entry) built for 16 MiB.
    fn default() -> Setup {
        Setup {
            version: 0x020f,
            loadflags: 0x01,
            xloadflags: 0x3,
            relocatable: 1,
            kernel_alignment: 0x20_0000,
            pref_address: LOAD_ADDR,
            init_size: None,
            cmdline_size: 2047,
            initrd_addr_max: 0x7fff_ffff,
        }
    }
}

/// A bzImage: boot sector and one setup sector (setup_sects = 1) holding
/// the header, then `payload` as the protected-mode kernel.
pub fn bzimage(s: &Setup, payload: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; 1024];
    let mut put = |at: usize, v: &[u8]| b[at..at + v.len()].copy_from_slice(v);
    let init_size = s
        .init_size
        .unwrap_or((payload.len() as u32).next_multiple_of(4096) + (1 << 20));
    put(0x1f1, &[1]);
    put(0x1fe, &0xaa55u16.to_le_bytes());
    // jmp over the header; 0x202 + 0x6a is its end (2.15).
    put(0x200, &[0xeb, 0x6a]);
    put(0x202, b"HdrS");
    put(0x206, &s.version.to_le_bytes());
    put(0x211, &[s.loadflags]);
    put(0x214, &0x10_0000u32.to_le_bytes());
    put(0x22c, &s.initrd_addr_max.to_le_bytes());
    put(0x230, &s.kernel_alignment.to_le_bytes());
    put(0x234, &[s.relocatable, 21]);
    put(0x236, &s.xloadflags.to_le_bytes());
    put(0x238, &s.cmdline_size.to_le_bytes());
    put(0x258, &s.pref_address.to_le_bytes());
    put(0x260, &init_size.to_le_bytes());
    b.extend_from_slice(payload);
    b
}

/// FNV-1a 64, as the guest computes it over the initrd.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
