/*
 * Linux-entry test guest: entered by bhyveload's Linux path exactly like a
 * bzImage's startup_64, it checks from inside the VM what the x86 boot
 * protocol (Documentation/arch/x86/boot.rst, zero-page.rst) promises a
 * 64-bit kernel, and that bhyve's ACPI tables are where Linux looks.  The
 * report uses the boot-contract guest's protocol (../src/console.c); the
 * expectations come from the kernel command line (test.* words, read with
 * ../src/kenv.c).  Then it powers off through ACPI S5.
 */
#include "io.h"

/* console.c reports bhyve-specific checks only when this is 0. */
int no_loader;

/* Written by entry.S before anything else runs. */
struct {
	u64 rsi, rsp;
	u16 cs, ds, es, ss;
	u16 gdt_limit;
	u64 gdt_base;
	u8 pad[6];
	u64 rflags;
} __attribute__((packed)) linux_entry __attribute__((section(".data")));

extern char startup_32[], startup_64[], _end[];

/* boot_params offsets (zero-page.rst) and setup header fields (boot.rst). */
#define BP_EXT_RAMDISK_IMAGE 0x0c0
#define BP_EXT_RAMDISK_SIZE 0x0c4
#define BP_EXT_CMD_LINE_PTR 0x0c8
#define BP_E820_ENTRIES 0x1e8
#define BP_BOOT_FLAG 0x1fe
#define BP_HEADER 0x202
#define BP_VERSION 0x206
#define BP_TYPE_OF_LOADER 0x210
#define BP_LOADFLAGS 0x211
#define BP_CODE32_START 0x214
#define BP_RAMDISK_IMAGE 0x218
#define BP_RAMDISK_SIZE 0x21c
#define BP_CMD_LINE_PTR 0x228
#define BP_INITRD_ADDR_MAX 0x22c
#define BP_XLOADFLAGS 0x236
#define BP_CMDLINE_SIZE 0x238
#define BP_PREF_ADDRESS 0x258
#define BP_INIT_SIZE 0x260
#define BP_E820_TABLE 0x2d0
#define E820_MAX 128

#define LOADED_HIGH 0x01
#define KEEP_SEGMENTS 0x40
#define CAN_USE_HEAP 0x80
#define XLF_KERNEL_64 0x1

#define GIB (1UL << 30)
#define LOWMEM_LIMIT (3 * GIB)
#define HIGHMEM_BASE (4 * GIB)

#define PM1A_CNT 0x404		/* bhyve-platform.md §3.4 */
#define SLP_TYP_S5 (5 << 10)
#define SLP_EN (1 << 13)

static const u8 *bp;	/* the zero page (identity-mapped) */

static u64 load_addr(void) { return (u64)startup_32; }

/* Physical address VA maps to in the current tables, ~0 if none. */
static u64 walk(u64 va)
{
	u64 t = read_cr3() & 0xffffffffff000UL;
	for (int level = 3; level >= 0; level--) {
		u64 e = ((const u64 *)t)[(va >> (12 + 9 * level)) & 511];
		if (!(e & 1))
			return ~0UL;
		if (level == 0 || (level <= 2 && (e & 0x80))) {
			u64 size = 1UL << (12 + 9 * level);
			return (e & 0xffffffffff000UL & ~(size - 1)) | (va & (size - 1));
		}
		t = e & 0xffffffffff000UL;
	}
	return ~0UL;
}

static u64 cmdline_addr(void)
{
	return le32(bp + BP_CMD_LINE_PTR) | (u64)le32(bp + BP_EXT_CMD_LINE_PTR) << 32;
}

static u64 initrd_addr(void)
{
	return le32(bp + BP_RAMDISK_IMAGE) | (u64)le32(bp + BP_EXT_RAMDISK_IMAGE) << 32;
}

static u64 initrd_size(void)
{
	return le32(bp + BP_RAMDISK_SIZE) | (u64)le32(bp + BP_EXT_RAMDISK_SIZE) << 32;
}

static u64 kernel_end(void) { return load_addr() + le32(bp + BP_INIT_SIZE); }

/* [a, a+len) lies inside one e820 RAM entry. */
static int in_ram(u64 a, u64 len)
{
	u32 n = bp[BP_E820_ENTRIES];
	for (u32 i = 0; i < n && i < E820_MAX; i++) {
		const u8 *e = bp + BP_E820_TABLE + 20 * i;
		u64 base = le64(e), size = le64(e + 8);
		if (le32(e + 16) == 1 && a >= base && a + len <= base + size)
			return 1;
	}
	return 0;
}

static void entry_checks(void)
{
	u64 efer = rdmsr(0xC0000080);
	check_begin("cpu: 64-bit mode (EFER.LME+LMA, CR0.PG+PE, CR4.PAE)");
	check_result((efer & 0x500) == 0x500 && (read_cr0() & 0x80000001UL) == 0x80000001UL &&
		(read_cr4() & 0x20),
	    "efer 0x%lx cr0 0x%lx cr4 0x%lx", efer, read_cr0(), read_cr4());

	check_begin("cpu: CS = __BOOT_CS 0x10, DS/ES/SS = __BOOT_DS 0x18");
	check_result(linux_entry.cs == 0x10 && linux_entry.ds == 0x18 && linux_entry.es == 0x18 &&
		linux_entry.ss == 0x18,
	    "cs 0x%x ds 0x%x es 0x%x ss 0x%x", linux_entry.cs, linux_entry.ds, linux_entry.es,
	    linux_entry.ss);

	check_begin("cpu: GDT 0x10 is 64-bit code, 0x18 flat 4 GiB read/write data");
	const u8 *gdt = (const u8 *)linux_entry.gdt_base;
	if (linux_entry.gdt_limit < 0x1f || walk(linux_entry.gdt_base) != linux_entry.gdt_base) {
		check_fail("GDTR 0x%lx/%u", linux_entry.gdt_base, linux_entry.gdt_limit);
	} else {
		u64 c = le64(gdt + 0x10), d = le64(gdt + 0x18);
		/* access byte: P, S, code exec/read; flags: L=1, D=0 */
		int code_ok = ((c >> 40) & 0x9a) == 0x9a && ((c >> 53) & 3) == 1;
		/* data: P, S, writable, not code; base 0, limit 0xfffff, G */
		int data_ok = ((d >> 40) & 0x9a) == 0x92 && (d >> 55 & 1) &&
		    (d & 0xffff) == 0xffff && ((d >> 48) & 0xf) == 0xf &&
		    (d & 0xff0000ffffff0000UL) == 0;
		check_result(code_ok && data_ok, "0x10 = 0x%lx, 0x18 = 0x%lx", c, d);
	}

	check_begin("cpu: interrupts disabled (RFLAGS.IF = 0)");
	check_result(!(linux_entry.rflags & 0x200), "rflags 0x%lx", linux_entry.rflags);
}

static void zero_page_checks(void)
{
	check_begin("boot_params: RSI -> boot_flag 0xAA55, \"HdrS\", protocol >= 2.12, XLF_KERNEL_64");
	check_result(le16(bp + BP_BOOT_FLAG) == 0xaa55 && le32(bp + BP_HEADER) == 0x53726448 &&
		le16(bp + BP_VERSION) >= 0x020c && (le16(bp + BP_XLOADFLAGS) & XLF_KERNEL_64),
	    "rsi 0x%lx boot_flag 0x%x header 0x%x version 0x%x xloadflags 0x%x", (u64)bp,
	    le16(bp + BP_BOOT_FLAG), le32(bp + BP_HEADER), le16(bp + BP_VERSION),
	    le16(bp + BP_XLOADFLAGS));

	u8 lf = bp[BP_LOADFLAGS];
	check_begin("boot_params: type_of_loader 0xff, LOADED_HIGH, no KEEP_SEGMENTS/CAN_USE_HEAP");
	check_result(bp[BP_TYPE_OF_LOADER] == 0xff && (lf & LOADED_HIGH) &&
		!(lf & (KEEP_SEGMENTS | CAN_USE_HEAP)),
	    "type_of_loader 0x%x loadflags 0x%x", bp[BP_TYPE_OF_LOADER], lf);

	check_begin("boot_params: loaded at pref_address (= code32_start), entered at +0x200");
	check_result(le64(bp + BP_PREF_ADDRESS) == load_addr() &&
		le32(bp + BP_CODE32_START) == load_addr() &&
		startup_64 - startup_32 == 0x200,
	    "pref_address 0x%lx code32_start 0x%x startup_32 at 0x%lx", le64(bp + BP_PREF_ADDRESS),
	    le32(bp + BP_CODE32_START), load_addr());

	check_begin("boot_params: init_size covers this kernel");
	check_result(le32(bp + BP_INIT_SIZE) >= (u64)(_end - startup_32), "init_size 0x%x, need 0x%lx",
	    le32(bp + BP_INIT_SIZE), (u64)(_end - startup_32));
}

static void e820_checks(void)
{
	u32 n = bp[BP_E820_ENTRIES];
	for (u32 i = 0; i < n && i < E820_MAX; i++) {
		const u8 *e = bp + BP_E820_TABLE + 20 * i;
		kprintf("# e820 %u: 0x%lx +0x%lx type %u\n", i, le64(e), le64(e + 8), le32(e + 16));
	}
	u64 mem;
	if (kenv_get_num("test.memsize", &mem) != 1) {
		check_begin("e820: exactly the map for test.memsize");
		check_skip("test.memsize not set");
	} else {
		u64 low = mem < LOWMEM_LIMIT ? mem : LOWMEM_LIMIT, high = mem - low;
		u64 want[4][3] = {
		    {0, 0xa0000, 1},
		    {0xa0000, 0x60000, 2},
		    {0x100000, low - 0x100000, 1},
		    {HIGHMEM_BASE, high, 1},
		};
		u32 nwant = high ? 4 : 3;
		check_begin("e820: exactly the map for test.memsize (RAM, BIOS area, RAM to lowmem, highmem)");
		if (n != nwant) {
			check_fail("%u entries, want %u", n, nwant);
		} else {
			u32 bad = nwant;
			for (u32 i = 0; i < nwant && bad == nwant; i++) {
				const u8 *e = bp + BP_E820_TABLE + 20 * i;
				if (le64(e) != want[i][0] || le64(e + 8) != want[i][1] ||
				    le32(e + 16) != want[i][2])
					bad = i;
			}
			if (bad == nwant)
				check_pass();
			else
				check_fail("entry %u, want 0x%lx +0x%lx type %lu", bad, want[bad][0],
				    want[bad][1], want[bad][2]);
		}
	}

	u64 cl = cmdline_addr();
	check_begin("e820: kernel (init_size), boot_params, command line, initrd lie in RAM");
	check_result(in_ram(load_addr(), kernel_end() - load_addr()) && in_ram((u64)bp, 4096) &&
		in_ram(cl, strnlen((const char *)cl, 4096) + 1) &&
		(!initrd_size() || in_ram(initrd_addr(), initrd_size())),
	    "kernel 0x%lx-0x%lx zero page 0x%lx cmdline 0x%lx initrd 0x%lx+0x%lx", load_addr(),
	    kernel_end(), (u64)bp, cl, initrd_addr(), initrd_size());
}

static void paging_checks(void)
{
	u64 low = 0;
	u64 mem;
	if (kenv_get_num("test.memsize", &mem) == 1)
		low = mem < LOWMEM_LIMIT ? mem : LOWMEM_LIMIT;
	u64 va[] = {0, (u64)bp, cmdline_addr(), load_addr(), kernel_end() - 1, initrd_addr(),
	    initrd_addr() + initrd_size() - 1, low ? low - 1 : 0, 0xFEC00000UL, 4 * GIB - 1};
	check_begin("paging: identity map of the boot data and the first 4 GiB");
	for (u64 i = 0; i < sizeof(va) / sizeof(va[0]); i++) {
		if (walk(va[i]) != va[i]) {
			check_fail("0x%lx maps to 0x%lx", va[i], walk(va[i]));
			return;
		}
	}
	check_pass();
}

static void cmdline_checks(void)
{
	const char *cl = (const char *)cmdline_addr();
	u64 max = le32(bp + BP_CMDLINE_SIZE);
	u64 len = strnlen(cl, max + 1);
	check_begin("cmdline: cmd_line_ptr holds a NUL-terminated line within cmdline_size");
	check_result(cmdline_addr() && len <= max, "at 0x%lx, %lu bytes, cmdline_size %lu",
	    cmdline_addr(), len, max);
	kprintf("# cmdline: %s\n", cl);
}

static u64 fnv1a(const u8 *p, u64 n)
{
	u64 h = 0xcbf29ce484222325UL;
	while (n--) {
		h ^= *p++;
		h *= 0x100000001b3UL;
	}
	return h;
}

static void initrd_checks(void)
{
	u64 size, sum, mem;
	if (kenv_get_num("test.initrd_size", &size) != 1 ||
	    kenv_get_num("test.initrd_fnv", &sum) != 1 || kenv_get_num("test.memsize", &mem) != 1) {
		check_begin("initrd: contents and placement");
		check_skip("test.initrd_size, test.initrd_fnv or test.memsize not set");
		return;
	}
	u64 at = initrd_addr();
	check_begin("initrd: test.initrd_size bytes at ramdisk_image, FNV-1a = test.initrd_fnv");
	if (initrd_size() != size) {
		check_fail("ramdisk_size %lu, want %lu", initrd_size(), size);
	} else {
		u64 h = fnv1a((const u8 *)at, size);
		check_result(h == sum, "at 0x%lx: 0x%lx, want 0x%lx", at, h, sum);
	}
	u64 low = mem < LOWMEM_LIMIT ? mem : LOWMEM_LIMIT;
	u64 top = (u64)le32(bp + BP_INITRD_ADDR_MAX) + 1;
	if (low < top)
		top = low;
	check_begin("initrd: page aligned, as high as initrd_addr_max and lowmem allow, above init_size");
	check_result(at == ((top - size) & ~0xfffUL) && at >= kernel_end(),
	    "at 0x%lx, top 0x%lx, kernel end 0x%lx", at, top, kernel_end());
}

/* Where Linux looks for the RSDP without EFI (acpi_find_root_pointer). */
static void rsdp_checks(void)
{
	check_begin("acpi: RSDP found scanning 0xE0000-0xFFFFF, checksum, XSDT signature");
	for (u64 p = 0xE0000; p < 0x100000; p += 16) {
		const u8 *r = (const u8 *)p;
		if (memcmp(r, "RSD PTR ", 8))
			continue;
		u8 sum = 0;
		for (int i = 0; i < 20; i++)
			sum += r[i];
		u64 xsdt = le64(r + 24);
		if (sum || r[15] < 2 || walk(xsdt) != xsdt || memcmp((const u8 *)xsdt, "XSDT", 4)) {
			check_fail("RSDP at 0x%lx: checksum 0x%x revision %u xsdt 0x%lx", p, sum, r[15],
			    xsdt);
			return;
		}
		kprintf("# RSDP at 0x%lx, XSDT at 0x%lx\n", p, xsdt);
		check_pass();
		return;
	}
	check_fail("no \"RSD PTR \" on a 16-byte boundary");
}

void lmain(void)
{
	bp = (const u8 *)linux_entry.rsi;
	uart_init();
	kprintf("\nGUEST-BEGIN bhyve-rs Linux-entry guest, entry=linux\n");
	kprintf("# rsi=0x%lx rsp=0x%lx startup_32=0x%lx\n", linux_entry.rsi, linux_entry.rsp,
	    load_addr());
	entry_checks();
	/* Everything below reads the zero page: only if RSI points at RAM. */
	if (walk((u64)bp) != (u64)bp || walk((u64)bp + 4095) != (u64)bp + 4095) {
		check_begin("boot_params: RSI points at identity-mapped memory");
		check_fail("rsi 0x%lx", (u64)bp);
	} else {
		kenv_from_cmdline((const char *)cmdline_addr());
		zero_page_checks();
		e820_checks();
		paging_checks();
		cmdline_checks();
		initrd_checks();
	}
	rsdp_checks();
	check_summary();
	kprintf("GUEST-EXIT poweroff\n");
	outw(PM1A_CNT, SLP_TYP_S5 | SLP_EN);
	for (;;)
		__asm__ volatile("cli; hlt");
}
