//! `--kernel bzImage`: boot Linux through the x86 boot protocol's 64-bit
//! entry (Documentation/arch/x86/boot.rst, zero-page.rst), with no
//! firmware and no real-mode setup code.
//!
//! What bhyveload does here is what a 64-bit boot loader does: copy the
//! setup header out of the image into a zeroed `boot_params` ("zero
//! page"), load the protected-mode kernel at its preferred address, put
//! the command line and initrd where the header allows, describe the
//! instance's RAM in the e820 table, and leave the BSP in long mode at
//! `startup_64` (load address + 0x200) with RSI pointing at the zero page.
//!
//! linux-loader gives the `boot_params` layout and loads the payload; the
//! checks, the placement and the CPU state are ours, because they follow
//! the instance's memory layout (`MemLayout`) and bhyve's platform.

use std::fs::File;
use std::io::Read;

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::KernelLoader;
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::bzimage::BzImage;
use vmmapi::vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};
use vmmapi::{MemLayout, SegDesc, Segment, VcpuState, VmReg, mem};

/// The setup header starts at 0x1f1 of the image and of `boot_params`.
const HDR_OFFSET: usize = 0x1f1;
/// `boot_params.hdr` ends here (protocol 2.15's `kernel_info_offset`).
const HDR_END: usize = HDR_OFFSET + std::mem::size_of::<setup_header>();
/// "HdrS" at 0x202: the image is a Linux kernel with protocol 2.00+.
const HDR_MAGIC: u32 = 0x5372_6448;
const HDR_MAGIC_AT: usize = 0x202;
/// `xloadflags` and the 64-bit entry point arrived with 2.12.
const MIN_VERSION: u16 = 0x020c;

/// `loadflags`.
const LOADED_HIGH: u8 = 0x01;
const KEEP_SEGMENTS: u8 = 0x40;
const CAN_USE_HEAP: u8 = 0x80;
/// `xloadflags`: the kernel has the 64-bit entry at load address + 0x200.
const XLF_KERNEL_64: u16 = 0x1;
/// `type_of_loader`: a loader without an assigned id.
const LOADER_UNDEFINED: u8 = 0xff;
const ENTRY_64_OFFSET: u64 = 0x200;

/// Where a bzImage's protected-mode part goes when nothing else says.
const DEFAULT_LOAD: u64 = 0x10_0000;
const PAGE: u64 = 4096;

/// e820 types.
pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;
/// The legacy VGA/ROM/BIOS area: bhyve puts the MP table, SMBIOS and the
/// ACPI tables in 0xF0000–0xFFFFF, and Linux scans 0xE0000–0xFFFFF for the
/// RSDP, so this is reserved rather than RAM.
pub const BIOS_AREA: std::ops::Range<u64> = 0xA_0000..0x10_0000;

/// Low-memory layout (all below the BIOS area, all RAM in the e820 map:
/// the kernel copies what it keeps before it reuses the memory).
const PML4: u64 = 0x1000;
const PDPT: u64 = 0x2000;
/// Four page directories, 2 MiB pages: the first 4 GiB, identity.
const PD: u64 = 0x3000;
const IDENTITY_GIB: u64 = 4;
pub const ZERO_PAGE: u64 = 0x7000;
pub const GDT: u64 = 0x8000;
/// The protocol asks for no stack, but an RSP of 0 would make any early
/// push land at the top of the address space: give it pages 0x9000–0xffff.
pub const STACK_TOP: u64 = 0x1_0000;
pub const CMDLINE: u64 = 0x2_0000;
/// The command line must end (with its NUL) below the BIOS area.
const CMDLINE_ROOM: u64 = BIOS_AREA.start - CMDLINE;

/// `__BOOT_CS` and `__BOOT_DS`, the selectors the protocol names.
pub const BOOT_CS: u16 = 0x10;
pub const BOOT_DS: u16 = 0x18;

#[derive(Debug, thiserror::Error)]
pub enum LinuxError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{path}: neither a FreeBSD ELF kernel nor a Linux bzImage (no ELF magic, no \"HdrS\" at 0x202)"
    )]
    NotAKernel { path: String },
    #[error(
        "{path}: truncated bzImage: {need} bytes of setup header and setup code, the file has {len}"
    )]
    Truncated { path: String, need: u64, len: u64 },
    #[error(
        "{path}: Linux boot protocol {}.{:02} is too old: the 64-bit entry needs 2.12 or later",
        version >> 8,
        version & 0xff
    )]
    OldProtocol { path: String, version: u16 },
    #[error(
        "{path}: a zImage (LOADED_HIGH clear in loadflags): only bzImage kernels are supported"
    )]
    NotBzImage { path: String },
    #[error("{path}: the kernel has no 64-bit entry point (XLF_KERNEL_64 clear in xloadflags)")]
    No64BitEntry { path: String },
    #[error("{path}: kernel_alignment {align:#x} of a relocatable kernel is not a power of two")]
    BadAlignment { path: String, align: u32 },
    #[error(
        "{path}: the kernel does not fit: it needs [{at:#x}, {end:#x}) and RAM below 4 GiB ends at {lowmem:#x}"
    )]
    KernelTooBig {
        path: String,
        at: u64,
        end: u128,
        lowmem: u64,
    },
    #[error("{path}: the initrd is empty")]
    EmptyInitrd { path: String },
    #[error(
        "{path}: the initrd ({size} bytes) does not fit: {room} bytes free between the kernel's end {lo:#x} and {hi:#x} (the lower of initrd_addr_max + 1 and the end of RAM below 4 GiB)"
    )]
    InitrdTooBig {
        path: String,
        size: u64,
        room: u64,
        lo: u64,
        hi: u64,
    },
    #[error(
        "the command line is {len} bytes, longer than the {max} the kernel accepts (cmdline_size)"
    )]
    CmdlineTooLong { len: usize, max: u64 },
    #[error("{path}: loading the kernel: {source}")]
    Load {
        path: String,
        source: linux_loader::loader::Error,
    },
    #[error("writing the {what} to guest memory at {gpa:#x}: {detail}")]
    GuestMem {
        what: &'static str,
        gpa: u64,
        detail: String,
    },
}

/// What a `--kernel` file is, by its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// ELF: the FreeBSD loader path.
    Elf,
    /// "HdrS" at 0x202: a Linux kernel.
    BzImage,
}

fn io(path: &str) -> impl FnOnce(std::io::Error) -> LinuxError + '_ {
    move |source| LinuxError::Io {
        path: path.to_string(),
        source,
    }
}

/// Read up to `buf.len()` bytes from the start of `f`; how many there were.
fn read_head(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Tell a FreeBSD ELF kernel from a bzImage.
pub fn detect(path: &str) -> Result<Format, LinuxError> {
    let mut f = File::open(path).map_err(io(path))?;
    let mut head = [0u8; HDR_MAGIC_AT + 4];
    let n = read_head(&mut f, &mut head).map_err(io(path))?;
    if n >= 4 && head[..4] == *b"\x7fELF" {
        return Ok(Format::Elf);
    }
    if n == head.len() && head[HDR_MAGIC_AT..] == HDR_MAGIC.to_le_bytes() {
        return Ok(Format::BzImage);
    }
    Err(LinuxError::NotAKernel { path: path.into() })
}

/// A bzImage that passed the checks, still to be loaded.
#[derive(Debug)]
struct Kernel {
    path: String,
    file: File,
    hdr: setup_header,
    /// The image's setup header as the protocol delimits it: from 0x1f1 to
    /// 0x202 + the jump offset at 0x201 (at most `boot_params.hdr`).
    hdr_bytes: Vec<u8>,
    /// Bytes of the protected-mode part (after the setup sectors).
    payload_len: u64,
}

impl Kernel {
    fn open(path: &str) -> Result<Kernel, LinuxError> {
        let mut file = File::open(path).map_err(io(path))?;
        let len = file.metadata().map_err(io(path))?.len();
        let mut head = [0u8; HDR_END];
        let n = read_head(&mut file, &mut head).map_err(io(path))?;
        if n < HDR_MAGIC_AT + 4 || head[HDR_MAGIC_AT..HDR_MAGIC_AT + 4] != HDR_MAGIC.to_le_bytes() {
            return Err(LinuxError::NotAKernel { path: path.into() });
        }
        let mut hdr = setup_header::default();
        hdr.as_mut_slice()[..n - HDR_OFFSET].copy_from_slice(&head[HDR_OFFSET..n]);
        let p = || path.to_string();
        if hdr.version < MIN_VERSION {
            return Err(LinuxError::OldProtocol {
                path: p(),
                version: hdr.version,
            });
        }
        // A 2.12 header reaches past init_size; the whole struct must be there.
        if n < HDR_END {
            return Err(LinuxError::Truncated {
                path: p(),
                need: HDR_END as u64,
                len,
            });
        }
        if hdr.loadflags & LOADED_HIGH == 0 {
            return Err(LinuxError::NotBzImage { path: p() });
        }
        if hdr.xloadflags & XLF_KERNEL_64 == 0 {
            return Err(LinuxError::No64BitEntry { path: p() });
        }
        // setup_sects 0 means 4; plus the boot sector.
        let sects = match hdr.setup_sects {
            0 => 4,
            s => u64::from(s),
        };
        let setup_len = (sects + 1) * 512;
        if len <= setup_len {
            return Err(LinuxError::Truncated {
                path: p(),
                need: setup_len + 1,
                len,
            });
        }
        let hdr_end = (HDR_MAGIC_AT + usize::from(head[0x201])).min(HDR_END);
        Ok(Kernel {
            path: path.to_string(),
            file,
            hdr,
            hdr_bytes: head[HDR_OFFSET..hdr_end].to_vec(),
            payload_len: len - setup_len,
        })
    }
}

/// An initrd file and its size.
#[derive(Debug)]
struct Initrd {
    path: String,
    file: File,
    size: u64,
}

impl Initrd {
    fn open(path: &str) -> Result<Initrd, LinuxError> {
        let file = File::open(path).map_err(io(path))?;
        let m = file.metadata().map_err(io(path))?;
        if !m.is_file() {
            return Err(LinuxError::Io {
                path: path.into(),
                source: std::io::Error::other("not a regular file"),
            });
        }
        if m.len() == 0 {
            return Err(LinuxError::EmptyInitrd { path: path.into() });
        }
        Ok(Initrd {
            path: path.to_string(),
            file,
            size: m.len(),
        })
    }
}

/// Where everything goes in guest-physical memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    /// The protected-mode kernel (`startup_32`; `startup_64` is 0x200 on).
    pub load: u64,
    /// End of the memory the kernel needs from `load` (`init_size`, or the
    /// payload if that is longer).
    pub kernel_end: u64,
    /// (address, size) of the initrd.
    pub initrd: Option<(u64, u64)>,
    pub e820: Vec<boot_e820_entry>,
}

/// The e820 table for the instance's RAM: lowmem from 0 with the BIOS area
/// cut out, the PCI hole left out, highmem from 4 GiB.
pub fn e820(layout: MemLayout) -> Vec<boot_e820_entry> {
    let entry = |addr: u64, end: u64, r#type: u32| boot_e820_entry {
        addr,
        size: end - addr,
        r#type,
    };
    let mut v = vec![
        entry(0, BIOS_AREA.start, E820_RAM),
        entry(BIOS_AREA.start, BIOS_AREA.end, E820_RESERVED),
        // MemLayout's smallest lowmem is 2 MiB, so this is never empty.
        entry(BIOS_AREA.end, layout.lowmem, E820_RAM),
    ];
    if layout.highmem != 0 {
        v.push(entry(
            mem::HIGHMEM_BASE,
            mem::HIGHMEM_BASE + layout.highmem,
            E820_RAM,
        ));
    }
    v
}

/// Where the kernel goes: its preferred address (aligned up to
/// `kernel_alignment` when it is relocatable; a relocatable x86-64 kernel
/// moves itself up to its build address anyway, so lower would not save
/// memory), and `[load, load + init_size)` must be RAM below the hole.
fn place_kernel(k: &Kernel, lowmem: u64) -> Result<(u64, u64), LinuxError> {
    let h = &k.hdr;
    let pref = match h.pref_address {
        0 => DEFAULT_LOAD,
        a => a,
    };
    let load = if h.relocatable_kernel != 0 {
        let align = h.kernel_alignment;
        if !align.is_power_of_two() {
            return Err(LinuxError::BadAlignment {
                path: k.path.clone(),
                align,
            });
        }
        let a = u128::from(pref.max(DEFAULT_LOAD));
        a.next_multiple_of(u128::from(align))
    } else {
        u128::from(pref)
    };
    let need = u64::from(h.init_size).max(k.payload_len);
    let end = load + u128::from(need);
    if load < u128::from(DEFAULT_LOAD) || end > u128::from(lowmem) {
        return Err(LinuxError::KernelTooBig {
            path: k.path.clone(),
            at: load.min(u128::from(u64::MAX)) as u64,
            end,
            lowmem,
        });
    }
    // Both below lowmem (≤ 3 GiB) now.
    Ok((load as u64, end as u64))
}

/// The initrd goes as high as allowed: page aligned, ending at or below
/// `initrd_addr_max + 1` and the end of lowmem, and above the kernel.
fn place_initrd(
    h: &setup_header,
    i: &Initrd,
    kernel_end: u64,
    lowmem: u64,
) -> Result<u64, LinuxError> {
    let top = lowmem.min(u64::from(h.initrd_addr_max) + 1);
    match top.checked_sub(i.size).map(|s| s & !(PAGE - 1)) {
        Some(at) if at >= kernel_end => Ok(at),
        _ => Err(LinuxError::InitrdTooBig {
            path: i.path.clone(),
            size: i.size,
            room: (top & !(PAGE - 1)).saturating_sub(kernel_end.next_multiple_of(PAGE)),
            lo: kernel_end,
            hi: top,
        }),
    }
}

/// The most command-line bytes (without the NUL) `h` allows here.
fn cmdline_max(h: &setup_header) -> u64 {
    u64::from(h.cmdline_size).min(CMDLINE_ROOM - 1)
}

/// The register state for `startup_64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub rip: u64,
    pub rsi: u64,
    pub rsp: u64,
    pub cr3: u64,
    pub gdt_base: u64,
}

impl Entry {
    /// Long mode with paging on our identity tables, CS = `__BOOT_CS`
    /// (64-bit code), DS/ES/SS (and FS/GS) = `__BOOT_DS` (flat 4 GiB data),
    /// interrupts off, RSI = the zero page; everything else at reset values.
    pub fn apply(&self, s: &mut VcpuState) {
        *s = VcpuState::default();
        // Access rights in bhyve's layout: type, S, P, L, D/B, G.
        let flat = |sel: u16, access: u32| Segment {
            sel,
            desc: SegDesc {
                base: 0,
                limit: 0xffff_ffff,
                access,
            },
        };
        let gdtr = SegDesc {
            base: self.gdt_base,
            limit: gdt().len() as u32 - 1,
            access: 0,
        };
        s.setup_long_mode(
            self.rip,
            self.cr3,
            self.rsp,
            gdtr,
            flat(BOOT_CS, 0xa09b),
            flat(BOOT_DS, 0xc093),
        );
        s.set(VmReg::Rsi, self.rsi);
    }
}

/// Null, null, `__BOOT_CS` (64-bit code), `__BOOT_DS` (flat 4 GiB data).
pub fn gdt() -> [u8; 32] {
    let mut g = [0u8; 32];
    g[16..24].copy_from_slice(&0x00af_9b00_0000_ffffu64.to_le_bytes());
    g[24..32].copy_from_slice(&0x00cf_9300_0000_ffffu64.to_le_bytes());
    g
}

/// PML4, PDPT and four page directories from `PML4`: VA = PA for the
/// first 4 GiB in 2 MiB pages (everything the loader places is below 3 GiB).
pub fn page_tables() -> Vec<u8> {
    const PG_V_RW: u64 = 0x3;
    const PG_PS: u64 = 0x80;
    let mut t = vec![0u8; ((2 + IDENTITY_GIB) * PAGE) as usize];
    let mut put = |at: u64, v: u64| {
        let o = (at - PML4) as usize;
        t[o..o + 8].copy_from_slice(&v.to_le_bytes());
    };
    put(PML4, PDPT | PG_V_RW);
    for g in 0..IDENTITY_GIB {
        let pd = PD + g * PAGE;
        put(PDPT + g * 8, pd | PG_V_RW);
        for i in 0..512 {
            put(pd + i * 8, ((g * 512 + i) << 21) | PG_V_RW | PG_PS);
        }
    }
    t
}

/// A Linux boot, checked and placed before the instance exists, so that
/// a kernel, initrd or command line that cannot work leaves nothing behind.
#[derive(Debug)]
pub struct LinuxBoot {
    kernel: Kernel,
    initrd: Option<Initrd>,
    cmdline: String,
    placement: Placement,
}

impl LinuxBoot {
    pub fn prepare(
        kernel: &str,
        initrd: Option<&str>,
        cmdline: &str,
        layout: MemLayout,
    ) -> Result<LinuxBoot, LinuxError> {
        let kernel = Kernel::open(kernel)?;
        let max = cmdline_max(&kernel.hdr);
        if cmdline.len() as u64 > max {
            return Err(LinuxError::CmdlineTooLong {
                len: cmdline.len(),
                max,
            });
        }
        let initrd = initrd.map(Initrd::open).transpose()?;
        let (load, kernel_end) = place_kernel(&kernel, layout.lowmem)?;
        let initrd_at = initrd
            .as_ref()
            .map(|i| place_initrd(&kernel.hdr, i, kernel_end, layout.lowmem).map(|a| (a, i.size)))
            .transpose()?;
        Ok(LinuxBoot {
            placement: Placement {
                load,
                kernel_end,
                initrd: initrd_at,
                e820: e820(layout),
            },
            kernel,
            initrd,
            cmdline: cmdline.to_string(),
        })
    }

    /// The zero page: the image's setup header, then what the loader fills in.
    pub fn boot_params(&self) -> boot_params {
        let p = &self.placement;
        let mut bp = boot_params::default();
        bp.as_mut_slice()[HDR_OFFSET..HDR_OFFSET + self.kernel.hdr_bytes.len()]
            .copy_from_slice(&self.kernel.hdr_bytes);
        bp.hdr.type_of_loader = LOADER_UNDEFINED;
        // CAN_USE_HEAP (heap_end_ptr) is for the real-mode setup code and
        // KEEP_SEGMENTS for the 32-bit entry; neither runs on this path.
        bp.hdr.loadflags &= !(CAN_USE_HEAP | KEEP_SEGMENTS);
        // Everything sits below 4 GiB, so the ext_ halves are 0.
        bp.hdr.code32_start = p.load as u32;
        bp.hdr.cmd_line_ptr = CMDLINE as u32;
        bp.ext_cmd_line_ptr = (CMDLINE >> 32) as u32;
        if let Some((at, size)) = p.initrd {
            bp.hdr.ramdisk_image = at as u32;
            bp.ext_ramdisk_image = (at >> 32) as u32;
            bp.hdr.ramdisk_size = size as u32;
            bp.ext_ramdisk_size = (size >> 32) as u32;
        }
        bp.e820_entries = p.e820.len() as u8;
        for (slot, e) in bp.e820_table.iter_mut().zip(&p.e820) {
            *slot = *e;
        }
        bp
    }

    /// Write the kernel, initrd, command line, zero page, page tables and
    /// GDT into `gm`; the register state to start it with.
    pub fn load(&mut self, gm: &GuestMemoryMmap) -> Result<Entry, LinuxError> {
        let load = self.placement.load;
        BzImage::load(gm, Some(GuestAddress(load)), &mut self.kernel.file, None).map_err(
            |source| LinuxError::Load {
                path: self.kernel.path.clone(),
                source,
            },
        )?;
        if let (Some(i), Some((at, size))) = (&mut self.initrd, self.placement.initrd) {
            gm.read_exact_volatile_from(GuestAddress(at), &mut i.file, size as usize)
                .map_err(|e| LinuxError::GuestMem {
                    what: "initrd",
                    gpa: at,
                    detail: format!("{}: {e}", i.path),
                })?;
        }
        let put = |what: &'static str, gpa: u64, bytes: &[u8]| {
            gm.write_slice(bytes, GuestAddress(gpa))
                .map_err(|e| LinuxError::GuestMem {
                    what,
                    gpa,
                    detail: e.to_string(),
                })
        };
        let mut cmdline = self.cmdline.clone().into_bytes();
        cmdline.push(0);
        put("command line", CMDLINE, &cmdline)?;
        put("page tables", PML4, &page_tables())?;
        put("GDT", GDT, &gdt())?;
        let bp = self.boot_params();
        LinuxBootConfigurator::write_bootparams(&BootParams::new(&bp, GuestAddress(ZERO_PAGE)), gm)
            .map_err(|e| LinuxError::GuestMem {
                what: "zero page",
                gpa: ZERO_PAGE,
                detail: e.to_string(),
            })?;
        Ok(Entry {
            rip: load + ENTRY_64_OFFSET,
            rsi: ZERO_PAGE,
            rsp: STACK_TOP,
            cr3: PML4,
            gdt_base: GDT,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use vmmapi::SegReg;

    const MB: u64 = 1 << 20;
    const GB: u64 = 1 << 30;

    /// A synthetic bzImage: boot sector + setup sectors holding a setup
    /// header (offsets from boot.rst), then a payload.
    #[derive(Debug, Clone)]
    struct Img {
        setup_sects: u8,
        version: u16,
        loadflags: u8,
        xloadflags: u16,
        relocatable: u8,
        kernel_alignment: u32,
        pref_address: u64,
        init_size: u32,
        cmdline_size: u32,
        initrd_addr_max: u32,
        /// 0x202 + jump = end of the header.
        jump: u8,
        payload: Vec<u8>,
    }

    impl Default for Img {
        /// Shaped like a current x86-64 kernel.
        fn default() -> Img {
            Img {
                setup_sects: 1,
                version: 0x020f,
                loadflags: LOADED_HIGH,
                xloadflags: XLF_KERNEL_64 | 0x2,
                relocatable: 1,
                kernel_alignment: 0x20_0000,
                pref_address: 0x100_0000,
                init_size: 0x40_0000,
                cmdline_size: 2047,
                initrd_addr_max: 0x7fff_ffff,
                jump: 0x6a,
                payload: (0..5000u32).map(|i| (i * 7 + 3) as u8).collect(),
            }
        }
    }

    impl Img {
        fn bytes(&self) -> Vec<u8> {
            let sects = if self.setup_sects == 0 {
                4
            } else {
                self.setup_sects
            };
            let mut b = vec![0u8; (usize::from(sects) + 1) * 512];
            let mut put = |at: usize, v: &[u8]| b[at..at + v.len()].copy_from_slice(v);
            put(0x1f1, &[self.setup_sects]);
            put(0x1fa, &0xffffu16.to_le_bytes()); // vid_mode
            put(0x1fe, &0xaa55u16.to_le_bytes());
            put(0x200, &[0xeb, self.jump]);
            put(0x202, b"HdrS");
            put(0x206, &self.version.to_le_bytes());
            put(0x20e, &0x1234u16.to_le_bytes()); // kernel_version
            put(0x211, &[self.loadflags]);
            put(0x214, &0x10_0000u32.to_le_bytes());
            put(0x22c, &self.initrd_addr_max.to_le_bytes());
            put(0x230, &self.kernel_alignment.to_le_bytes());
            put(0x234, &[self.relocatable, 21]);
            put(0x236, &self.xloadflags.to_le_bytes());
            put(0x238, &self.cmdline_size.to_le_bytes());
            put(0x258, &self.pref_address.to_le_bytes());
            put(0x260, &self.init_size.to_le_bytes());
            put(0x264, &0x190u32.to_le_bytes()); // handover_offset
            put(0x268, &0xabcdu32.to_le_bytes()); // kernel_info_offset
            b.extend_from_slice(&self.payload);
            b
        }
    }

    /// A scratch directory removed on drop.
    struct Dir(PathBuf);
    impl Dir {
        fn new(tag: &str) -> Dir {
            let d = std::env::temp_dir().join(format!("linux-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            Dir(d)
        }
        fn file(&self, name: &str, bytes: &[u8]) -> String {
            let p = self.0.join(name);
            std::fs::write(&p, bytes).unwrap();
            p.to_str().unwrap().to_string()
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn layout(size: u64) -> MemLayout {
        MemLayout::new(size).unwrap()
    }

    fn prepare(
        d: &Dir,
        img: &Img,
        initrd: Option<&[u8]>,
        cmdline: &str,
        mem: u64,
    ) -> Result<LinuxBoot, LinuxError> {
        let k = d.file("bzImage", &img.bytes());
        let i = initrd.map(|b| d.file("initrd", b));
        LinuxBoot::prepare(&k, i.as_deref(), cmdline, layout(mem))
    }

    fn e(addr: u64, size: u64, r#type: u32) -> boot_e820_entry {
        boot_e820_entry { addr, size, r#type }
    }

    #[test]
    fn detects_elf_bzimage_and_neither() {
        let d = Dir::new("detect");
        let elf = d.file("elf", b"\x7fELF\x02\x01\x01rest");
        assert_eq!(detect(&elf).unwrap(), Format::Elf);
        let bz = d.file("bz", &Img::default().bytes());
        assert_eq!(detect(&bz).unwrap(), Format::BzImage);
        for junk in [&b"hello"[..], &[0u8; 4096][..], &b"HdrS"[..]] {
            let j = d.file("junk", junk);
            let err = detect(&j).unwrap_err();
            assert!(matches!(err, LinuxError::NotAKernel { .. }), "{err}");
            assert!(
                err.to_string()
                    .contains("neither a FreeBSD ELF kernel nor a Linux bzImage")
            );
        }
        let missing = d.0.join("missing");
        let err = detect(missing.to_str().unwrap()).unwrap_err();
        assert!(matches!(err, LinuxError::Io { .. }), "{err}");
    }

    #[test]
    fn e820_follows_lowmem_hole_and_highmem() {
        assert_eq!(
            e820(layout(256 * MB)),
            vec![
                e(0, 0xa_0000, E820_RAM),
                e(0xa_0000, 0x6_0000, E820_RESERVED),
                e(MB, 255 * MB, E820_RAM),
            ]
        );
        assert_eq!(e820(layout(3 * GB))[2], e(MB, 3 * GB - MB, E820_RAM));
        assert_eq!(
            e820(layout(5 * GB)),
            vec![
                e(0, 0xa_0000, E820_RAM),
                e(0xa_0000, 0x6_0000, E820_RESERVED),
                e(MB, 3 * GB - MB, E820_RAM),
                e(4 * GB, 2 * GB, E820_RAM),
            ]
        );
    }

    #[test]
    fn boot_params_fields() {
        let d = Dir::new("bp");
        let img = Img {
            // the image asks for both: neither applies to the 64-bit entry
            loadflags: LOADED_HIGH | KEEP_SEGMENTS | CAN_USE_HEAP,
            // the header ends before kernel_info_offset (protocol 2.12-2.14)
            jump: 0x66,
            ..Img::default()
        };
        let b = prepare(
            &d,
            &img,
            Some(&[1, 2, 3]),
            "console=ttyS0 root=/dev/vda",
            256 * MB,
        )
        .unwrap();
        let bp = b.boot_params();
        let image = img.bytes();
        // Bytes up to the header's end are the image's, except what the
        // loader writes.
        let raw = bp.as_slice();
        assert_eq!(raw.len(), 4096);
        assert_eq!(raw[0x1f1..0x210], image[0x1f1..0x210]);
        assert_eq!(raw[0x22c..0x268], image[0x22c..0x268]);
        assert!(raw[0x268..0x26c].iter().all(|&x| x == 0), "past the header");
        let h = bp.hdr;
        assert_eq!({ h.header }, HDR_MAGIC);
        assert_eq!({ h.boot_flag }, 0xaa55);
        assert_eq!({ h.version }, 0x020f);
        assert_eq!({ h.kernel_version }, 0x1234);
        assert_eq!({ h.vid_mode }, 0xffff);
        assert_eq!(h.type_of_loader, 0xff);
        assert_eq!(h.loadflags, LOADED_HIGH);
        assert_eq!({ h.code32_start }, 0x100_0000);
        assert_eq!({ h.cmd_line_ptr }, CMDLINE as u32);
        assert_eq!({ bp.ext_cmd_line_ptr }, 0);
        let top = 256 * MB;
        assert_eq!({ h.ramdisk_image }, (top - PAGE) as u32);
        assert_eq!({ h.ramdisk_size }, 3);
        assert_eq!(({ bp.ext_ramdisk_image }, { bp.ext_ramdisk_size }), (0, 0));
        assert_eq!({ h.init_size }, 0x40_0000);
        assert_eq!(bp.e820_entries, 3);
        let table = bp.e820_table;
        assert_eq!(table[..3], e820(layout(256 * MB))[..]);
        assert_eq!(table[3], boot_e820_entry::default());
        assert_eq!({ bp.acpi_rsdp_addr }, 0, "Linux scans for bhyve's RSDP");
        // Without an initrd the ramdisk fields stay 0.
        let b = prepare(&d, &Img::default(), None, "", 256 * MB).unwrap();
        let h = b.boot_params().hdr;
        assert_eq!(({ h.ramdisk_image }, { h.ramdisk_size }), (0, 0));
        assert_eq!(
            { h.kernel_info_offset },
            0xabcd,
            "a 2.15 header is copied whole"
        );
    }

    #[test]
    fn kernel_placement() {
        let d = Dir::new("place");
        let at = |img: Img, mem: u64| {
            let b = prepare(&d, &img, None, "", mem).unwrap();
            (b.placement.load, b.placement.kernel_end)
        };
        // pref_address, aligned: taken as is; the footprint is init_size.
        assert_eq!(at(Img::default(), 256 * MB), (16 * MB, 20 * MB));
        // A relocatable kernel goes to pref_address rounded up to its alignment.
        let img = Img {
            pref_address: 0x110_0000,
            ..Img::default()
        };
        assert_eq!(at(img, 256 * MB).0, 0x120_0000);
        // No pref_address: 1 MiB (kernel_alignment 1 MiB here).
        let img = Img {
            pref_address: 0,
            kernel_alignment: 0x10_0000,
            ..Img::default()
        };
        assert_eq!(at(img, 256 * MB).0, MB);
        // A non-relocatable kernel goes exactly to pref_address.
        let img = Img {
            relocatable: 0,
            pref_address: 0x123_4000,
            kernel_alignment: 3,
            ..Img::default()
        };
        assert_eq!(at(img, 256 * MB).0, 0x123_4000);
        // A payload longer than init_size counts in full.
        let img = Img {
            init_size: 16,
            ..Img::default()
        };
        assert_eq!(at(img, 256 * MB), (16 * MB, 16 * MB + 5000));
        // Exactly filling lowmem fits.
        let img = Img {
            init_size: (16 * MB) as u32,
            ..Img::default()
        };
        assert_eq!(at(img, 32 * MB), (16 * MB, 32 * MB));
    }

    #[test]
    fn initrd_placement() {
        let d = Dir::new("initrd");
        let at = |img: &Img, size: usize, mem: u64| {
            let b = prepare(&d, img, Some(&vec![0x5a; size]), "", mem).unwrap();
            b.placement.initrd.unwrap()
        };
        // As high as possible in lowmem, page aligned.
        assert_eq!(
            at(&Img::default(), 10000, 256 * MB),
            (256 * MB - 3 * PAGE, 10000)
        );
        assert_eq!(
            at(&Img::default(), 8192, 256 * MB),
            (256 * MB - 2 * PAGE, 8192)
        );
        // Below initrd_addr_max (the highest byte it may use).
        let img = Img {
            initrd_addr_max: (64 * MB - 1) as u32,
            ..Img::default()
        };
        assert_eq!(at(&img, 4096, 256 * MB), (64 * MB - PAGE, 4096));
        // With highmem, still below the PCI hole.
        assert_eq!(at(&Img::default(), 4096, 5 * GB), (2 * GB - PAGE, 4096));
        let img = Img {
            initrd_addr_max: u32::MAX,
            ..Img::default()
        };
        assert_eq!(at(&img, 4096, 5 * GB), (3 * GB - PAGE, 4096));
        // Right above the kernel's init_size fits.
        let room = (32 * MB - 20 * MB) as usize;
        assert_eq!(at(&Img::default(), room, 32 * MB), (20 * MB, room as u64));
    }

    #[test]
    fn bad_kernels() {
        let d = Dir::new("bad");
        let err = |img: Img| prepare(&d, &img, None, "", 256 * MB).unwrap_err();
        let e = err(Img {
            version: 0x020b,
            ..Img::default()
        });
        assert!(
            matches!(
                e,
                LinuxError::OldProtocol {
                    version: 0x020b,
                    ..
                }
            ),
            "{e}"
        );
        assert!(
            e.to_string().contains("boot protocol 2.11 is too old"),
            "{e}"
        );
        assert!(e.to_string().contains("2.12"), "{e}");
        let e = err(Img {
            xloadflags: 0x2,
            ..Img::default()
        });
        assert!(matches!(e, LinuxError::No64BitEntry { .. }), "{e}");
        let e = err(Img {
            loadflags: 0,
            ..Img::default()
        });
        assert!(matches!(e, LinuxError::NotBzImage { .. }), "{e}");
        let e = err(Img {
            payload: Vec::new(),
            ..Img::default()
        });
        assert!(
            matches!(
                e,
                LinuxError::Truncated {
                    need: 1025,
                    len: 1024,
                    ..
                }
            ),
            "{e}"
        );
        let e = err(Img {
            kernel_alignment: 0x30_0000,
            ..Img::default()
        });
        assert!(matches!(e, LinuxError::BadAlignment { .. }), "{e}");
        let e = err(Img {
            init_size: (250 * MB) as u32,
            ..Img::default()
        });
        assert!(
            matches!(
                e,
                LinuxError::KernelTooBig {
                    at: 0x100_0000,
                    lowmem: 0x1000_0000,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("does not fit"), "{e}");
        let e = err(Img {
            relocatable: 0,
            pref_address: 0x8_0000,
            ..Img::default()
        });
        assert!(
            matches!(e, LinuxError::KernelTooBig { at: 0x8_0000, .. }),
            "{e}"
        );
        let e = err(Img {
            pref_address: u64::MAX - 4096,
            ..Img::default()
        });
        assert!(matches!(e, LinuxError::KernelTooBig { .. }), "{e}");
        // The whole setup header must be in the file.
        let k = d.file("short", &Img::default().bytes()[..0x240]);
        let e = LinuxBoot::prepare(&k, None, "", layout(256 * MB)).unwrap_err();
        assert!(matches!(e, LinuxError::Truncated { .. }), "{e}");
        let k = d.file("junk", &[0u8; 2048]);
        let e = LinuxBoot::prepare(&k, None, "", layout(256 * MB)).unwrap_err();
        assert!(matches!(e, LinuxError::NotAKernel { .. }), "{e}");
    }

    #[test]
    fn bad_initrds_and_command_lines() {
        let d = Dir::new("badi");
        // 256 MiB - 20 MiB free above the kernel: one page more does not fit.
        let room = (256 * MB - 20 * MB) as usize;
        assert!(prepare(&d, &Img::default(), Some(&vec![0; room]), "", 256 * MB).is_ok());
        let e = prepare(&d, &Img::default(), Some(&vec![0; room + 1]), "", 256 * MB).unwrap_err();
        assert!(
            matches!(
                e,
                LinuxError::InitrdTooBig {
                    lo: 0x140_0000,
                    hi: 0x1000_0000,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("does not fit"), "{e}");
        // Bigger than all of memory below initrd_addr_max.
        let img = Img {
            initrd_addr_max: 0xfff,
            ..Img::default()
        };
        let e = prepare(&d, &img, Some(&[0; 8192]), "", 256 * MB).unwrap_err();
        assert!(matches!(e, LinuxError::InitrdTooBig { room: 0, .. }), "{e}");
        let e = prepare(&d, &Img::default(), Some(&[]), "", 256 * MB).unwrap_err();
        assert!(matches!(e, LinuxError::EmptyInitrd { .. }), "{e}");
        let k = d.file("k", &Img::default().bytes());
        let missing = d.0.join("missing");
        let e = LinuxBoot::prepare(&k, missing.to_str(), "", layout(256 * MB)).unwrap_err();
        assert!(matches!(e, LinuxError::Io { .. }), "{e}");
        let e = LinuxBoot::prepare(&k, d.0.to_str(), "", layout(256 * MB)).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        // cmdline_size counts bytes without the NUL.
        let img = Img {
            cmdline_size: 16,
            ..Img::default()
        };
        assert!(prepare(&d, &img, None, "0123456789abcdef", 256 * MB).is_ok());
        let e = prepare(&d, &img, None, "0123456789abcdefg", 256 * MB).unwrap_err();
        assert!(
            matches!(e, LinuxError::CmdlineTooLong { len: 17, max: 16 }),
            "{e}"
        );
        // A huge cmdline_size is bounded by the room below the BIOS area.
        let img = Img {
            cmdline_size: u32::MAX,
            ..Img::default()
        };
        let long = "x".repeat(CMDLINE_ROOM as usize);
        let e = prepare(&d, &img, None, &long, 256 * MB).unwrap_err();
        assert!(matches!(e, LinuxError::CmdlineTooLong { .. }), "{e}");
    }

    #[test]
    fn load_writes_everything_and_entry_state() {
        let d = Dir::new("load");
        let img = Img::default();
        let initrd: Vec<u8> = (0..10000u32).map(|i| (i % 251) as u8).collect();
        let mut b = prepare(&d, &img, Some(&initrd), "console=ttyS0 quiet", 5 * GB).unwrap();
        let l = layout(5 * GB);
        let gm = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), l.lowmem as usize),
            (GuestAddress(mem::HIGHMEM_BASE), l.highmem as usize),
        ])
        .unwrap();
        let entry = b.load(&gm).unwrap();
        let read = |at: u64, len: usize| {
            let mut v = vec![0u8; len];
            gm.read_slice(&mut v, GuestAddress(at)).unwrap();
            v
        };
        assert_eq!(read(16 * MB, 5000), img.payload);
        let (ia, is) = b.placement.initrd.unwrap();
        assert_eq!((ia, is), (2 * GB - 3 * PAGE, 10000));
        assert_eq!(read(ia, 10000), initrd);
        assert_eq!(read(CMDLINE, 20), b"console=ttyS0 quiet\0");
        assert_eq!(read(ZERO_PAGE, 4096), b.boot_params().as_slice());
        assert_eq!(read(GDT, 32), gdt());
        assert_eq!(read(PML4, 6 * 4096), page_tables());
        assert_eq!(
            entry,
            Entry {
                rip: 16 * MB + 0x200,
                rsi: ZERO_PAGE,
                rsp: STACK_TOP,
                cr3: PML4,
                gdt_base: GDT,
            }
        );
        let mut s = VcpuState::default();
        s.set(VmReg::Rax, 7);
        entry.apply(&mut s);
        assert_eq!(s.rip, 0x100_0200);
        assert_eq!(s.get(VmReg::Rsi), ZERO_PAGE);
        assert_eq!(s.get(VmReg::Rax), 0);
        assert_eq!(
            (s.cr0, s.cr3, s.cr4, s.efer),
            (0x8000_0021, 0x1000, 0x20, 0x500)
        );
        assert_eq!(s.rflags & 0x200, 0, "interrupts off");
        assert_eq!(s.get(VmReg::Cs), 0x10);
        assert_eq!(s.desc(SegReg::Cs).access, 0xa09b);
        for r in [VmReg::Ds, VmReg::Es, VmReg::Ss] {
            assert_eq!(s.get(r), 0x18);
        }
        assert_eq!(s.desc(SegReg::Ss).access, 0xc093);
        assert_eq!(
            s.desc(SegReg::Gdtr),
            SegDesc {
                base: GDT,
                limit: 31,
                access: 0
            }
        );
    }

    #[test]
    fn tables_map_four_gib_and_gdt_has_boot_selectors() {
        let g = gdt();
        let desc = |sel: usize| u64::from_le_bytes(g[sel..sel + 8].try_into().unwrap());
        // 0x10: P, DPL 0, code exec/read, L (64-bit), G.
        assert_eq!(desc(0x10) >> 40 & 0xff, 0x9b);
        assert_eq!(desc(0x10) >> 52 & 0xf, 0xa);
        // 0x18: P, data read/write, D/B, G, limit 0xfffff: flat 4 GiB.
        assert_eq!(desc(0x18) >> 40 & 0xff, 0x93);
        assert_eq!(desc(0x18) >> 52 & 0xf, 0xc);
        assert_eq!(
            desc(0x18) & 0xffff | (desc(0x18) >> 48 & 0xf) << 16,
            0xfffff
        );
        let t = page_tables();
        let entry = |table: u64, i: u64| {
            let o = (table - PML4 + i * 8) as usize;
            u64::from_le_bytes(t[o..o + 8].try_into().unwrap())
        };
        // Walk a few addresses: VA = PA.
        for va in [0u64, 0x7000, 16 * MB + 0x200, 3 * GB - 1, 4 * GB - 1] {
            let pdpt = entry(PML4, va >> 39 & 511);
            assert_eq!(pdpt & 0xfff, 0x3);
            let pd = entry(pdpt & !0xfff, va >> 30 & 511);
            assert_eq!(pd & 0xfff, 0x3);
            let pde = entry(pd & !0xfff, va >> 21 & 511);
            assert_eq!(pde & 0xfff, 0x83);
            assert_eq!((pde & !0x1f_ffff) | (va & 0x1f_ffff), va);
        }
        assert_eq!(entry(PDPT, 4), 0, "nothing above 4 GiB");
    }
}
