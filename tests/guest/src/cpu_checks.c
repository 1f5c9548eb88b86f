/*
 * Entry-state checks (§2): registers, the boot stack, page tables, GDT,
 * plus the loader's work on our own image (BSS zeroed) and the warm-boot
 * flag page (§1.4, checklist #14).
 */
#include "io.h"

#define PG_V 0x1UL
#define PG_RW 0x2UL
#define PG_PS 0x80UL
/* The CPU sets Accessed (and Dirty in leaf PDEs) while walking: ignore. */
#define PG_AD 0x60UL
#define PG_FRAME 0x000ffffffffff000UL
#define PG_PS_FRAME 0x000fffffffe00000UL
#define RFLAGS_IF 0x200UL
#define EFER_LME 0x100UL
#define EFER_LMA 0x400UL
#define CR0_ET 0x10UL

/* Scratch for the alias test (written through both mappings). */
static volatile u64 alias_word;

/* Checks that only make sense after a FreeBSD loader hand-off. */
static int loader_only(const char *name)
{
	check_begin("%s", name);
	if (no_loader) {
		check_skip("no loader hand-off (multiboot entry)");
		return 0;
	}
	return 1;
}

static void check_entry_rflags(void)
{
	if (loader_only("entry: RFLAGS.IF clear"))
		check_result(!(entry_state.rflags & RFLAGS_IF),
		    "IF set at entry, rflags 0x%lx", entry_state.rflags);
	if (loader_only("entry: RFLAGS = 0x2"))
		check_result(entry_state.rflags == 0x2,
		    "rflags 0x%lx", entry_state.rflags);
}

static void check_entry_rsp(void)
{
	if (loader_only("entry: RSP = 0x1000"))
		check_result(entry_state.rsp == 0x1000, "rsp 0x%lx", entry_state.rsp);
}

/* §2.5: u32 {0, modulep, kernend} at RSP, rest of the page zero. */
static void check_stack_words(void)
{
	if (!loader_only("entry: stack page holds {0, modulep, kernend}, rest zero"))
		return;
	const u32 *w = phys_ptr(0x1000, PAGE_SIZE);
	if (entry_state.rsp != 0x1000) {
		check_fail("rsp 0x%lx, the words were read there", entry_state.rsp);
		return;
	}
	if (entry_state.word0 != 0 || entry_state.modulep == 0 || entry_state.kernend == 0) {
		check_fail("words %lx %lx %lx", entry_state.word0, entry_state.modulep,
		    entry_state.kernend);
		return;
	}
	for (u32 i = 3; i < PAGE_SIZE / 4; i++) {
		if (w[i] != 0) {
			check_fail("word at +0x%x is 0x%x", i * 4, w[i]);
			return;
		}
	}
	check_pass();
}

/* §2.4: IDTR is not set by the loader (vCPU reset value). */
static void check_entry_idtr(void)
{
	if (loader_only("entry: IDTR at reset value (base 0, limit 0xffff)"))
		check_result(entry_state.idtr_base == 0 && entry_state.idtr_limit == 0xffff,
		    "base 0x%lx limit 0x%x", entry_state.idtr_base, entry_state.idtr_limit);
}

/* Scanned by main.c before anything wrote to the BSS. */
static void check_bss_zero(void)
{
	if (loader_only("image: BSS zeroed by the loader"))
		check_result(bss_dirty_off == ~0UL, "word at bss+0x%lx is 0x%lx", bss_dirty_off,
		    bss_dirty_val);
}

/* CR0.ET is hardwired to 1 on every CPU since the i486DX; accept it. */
static void check_crs(void)
{
	u64 v;
	if (loader_only("cpu: CR0 = 0x80000021 (PG|NE|PE)")) {
		v = read_cr0();
		check_result((v & ~CR0_ET) == 0x80000021, "cr0 0x%lx", v);
	}
	if (loader_only("cpu: CR4 = 0x20 (PAE only)")) {
		v = read_cr4();
		check_result(v == 0x20, "cr4 0x%lx", v);
	}
	if (loader_only("cpu: EFER = 0x500 (LMA|LME)")) {
		v = rdmsr(0xC0000080);
		check_result(v == (EFER_LMA | EFER_LME), "efer 0x%lx", v);
	}
	v = read_cr3();
	check_begin("cpu: CR3 = 0x2000");
	check_result(v == 0x2000, "cr3 0x%lx", v);
}

/* REX.W dec %rax; in compatibility mode 0x48 would decode as dec %eax. */
static int executing_64bit(void)
{
	u64 r;
	__asm__ volatile("xorl %%eax, %%eax\n\t.byte 0x48, 0xff, 0xc8" : "=a"(r));
	return r == ~0UL;
}

/*
 * CS.L is read from CS's descriptor in the GDT (LAR would do the same, but
 * this host's KVM emulates guest code and its emulator lacks LAR).
 */
static void check_longmode(void)
{
	u64 efer = rdmsr(0xC0000080);
	u16 cs;
	struct __attribute__((packed)) {
		u16 limit;
		u64 base;
	} gdtr;
	check_begin("cpu: long mode, 64-bit CS, paging on");
	__asm__ volatile("mov %%cs, %0" : "=r"(cs));
	__asm__ volatile("sgdt %0" : "=m"(gdtr));
	const u64 *desc = (cs | 7) <= gdtr.limit ? (const u64 *)(gdtr.base + (cs & ~7)) : NULL;
	if (!(efer & EFER_LMA))
		check_fail("EFER.LMA clear (efer 0x%lx)", efer);
	else if (!desc)
		check_fail("cs 0x%x beyond GDT limit %u", cs, gdtr.limit);
	else if (!(*desc & (1UL << 53)) || (*desc & (1UL << 54)))
		check_fail("cs 0x%x descriptor 0x%lx: L/D wrong", cs, *desc);
	else if (!executing_64bit())
		check_fail("not executing in 64-bit mode");
	else if (!(read_cr0() & 0x80000000UL))
		check_fail("paging off");
	else
		check_pass();
}

static void check_segments(void)
{
	u16 cs, ds, es, ss, fs, gs, tr, ldtr;
	if (!loader_only("cpu: selectors CS 0x08, DS/ES/FS/GS/SS 0x10, TR 0, LDTR 0"))
		return;
	__asm__ volatile("mov %%cs, %0" : "=r"(cs));
	__asm__ volatile("mov %%ds, %0" : "=r"(ds));
	__asm__ volatile("mov %%es, %0" : "=r"(es));
	__asm__ volatile("mov %%ss, %0" : "=r"(ss));
	__asm__ volatile("mov %%fs, %0" : "=r"(fs));
	__asm__ volatile("mov %%gs, %0" : "=r"(gs));
	__asm__ volatile("str %0" : "=r"(tr));
	__asm__ volatile("sldt %0" : "=r"(ldtr));
	check_result(cs == 0x08 && ds == 0x10 && es == 0x10 && ss == 0x10 &&
	    fs == 0x10 && gs == 0x10 && tr == 0 && ldtr == 0,
	    "cs %x ds %x es %x ss %x fs %x gs %x tr %x ldtr %x",
	    cs, ds, es, ss, fs, gs, tr, ldtr);
}

/* §2.3 */
static void check_gdt(void)
{
	struct __attribute__((packed)) {
		u16 limit;
		u64 base;
	} gdtr;
	static const u64 want[3] = {0, 0x0020980000000000UL, 0x0000900000000000UL};
	if (!loader_only("gdt: GDTR 0x5000/23, descriptors 0, 0x0020980000000000, 0x0000900000000000"))
		return;
	__asm__ volatile("sgdt %0" : "=m"(gdtr));
	if (gdtr.base != 0x5000 || gdtr.limit != 23) {
		check_fail("gdtr base 0x%lx limit %u", gdtr.base, gdtr.limit);
		return;
	}
	const u64 *d = phys_ptr(0x5000, 24);
	for (int i = 0; i < 3; i++) {
		/* bit 40 = Accessed, set by the CPU if a selector was loaded */
		if ((d[i] & ~(1UL << 40)) != want[i]) {
			check_fail("descriptor %d is 0x%lx, want 0x%lx", i, d[i], want[i]);
			return;
		}
	}
	check_pass();
}

/* §2.1: every entry of the three tables, modern flags (no PG_U). */
static void check_pagetables(void)
{
	const u64 *pml4 = phys_ptr(0x2000, PAGE_SIZE);
	const u64 *pdpt = phys_ptr(0x3000, PAGE_SIZE);
	const u64 *pd = phys_ptr(0x4000, PAGE_SIZE);
	check_begin("paging: PML4[*] = 0x3003, PDPT[*] = 0x4003, PD[i] = i*2MiB|0x83");
	for (u64 i = 0; i < 512; i++) {
		if ((pml4[i] & ~PG_AD) != (0x3000 | PG_V | PG_RW)) {
			check_fail("PML4[%lu] = 0x%lx", i, pml4[i]);
			return;
		}
		if ((pdpt[i] & ~PG_AD) != (0x4000 | PG_V | PG_RW)) {
			check_fail("PDPT[%lu] = 0x%lx", i, pdpt[i]);
			return;
		}
		u64 want = (i << 21) | PG_V | PG_RW | PG_PS;
		if ((pd[i] & ~PG_AD) != want) {
			check_fail("PD[%lu] = 0x%lx, want 0x%lx", i, pd[i], want);
			return;
		}
	}
	check_pass();
}

/* §2.2: what amd64_loadaddr() does: CR3 -> PML4[511] -> PDPT[510] -> PD[1]. */
static void check_kernstart_pde(void)
{
	check_begin("paging: KERNSTART PDE (PML4[511]/PDPT[510]/PD[1]) is a 2 MiB page at 0x200000");
	const u64 *pml4 = phys_ptr(read_cr3() & PG_FRAME, PAGE_SIZE);
	if (!pml4) {
		check_fail("cr3 0x%lx outside the low GiB", read_cr3());
		return;
	}
	u64 e4 = pml4[511];
	const u64 *pdpt = phys_ptr(e4 & PG_FRAME, PAGE_SIZE);
	if (!(e4 & PG_V) || !pdpt) {
		check_fail("PML4[511] = 0x%lx", e4);
		return;
	}
	u64 e3 = pdpt[510];
	const u64 *pd = phys_ptr(e3 & PG_FRAME, PAGE_SIZE);
	if (!(e3 & PG_V) || (e3 & PG_PS) || !pd) {
		check_fail("PDPT[510] = 0x%lx", e3);
		return;
	}
	u64 e2 = pd[1];
	if (!(e2 & PG_V) || !(e2 & PG_PS))
		check_fail("PD[1] = 0x%lx is not a 2 MiB page", e2);
	else if ((e2 & PG_PS_FRAME) != 0x200000)
		check_fail("PD[1] frame 0x%lx", e2 & PG_PS_FRAME);
	else
		check_pass();
}

/* The kernel zeroes its first page tables through their physical address
 * (identity map) and runs at KERNBASE: both views must be one memory. */
static void check_alias(void)
{
	volatile u64 *ident = (volatile u64 *)((u64)&alias_word - KERNBASE);
	check_begin("paging: identity and KERNBASE mappings alias the same memory");
	*ident = 0x5a5aa5a5deadbeefUL;
	u64 a = alias_word;
	alias_word = 0x0123456789abcdefUL;
	u64 b = *ident;
	check_result(a == 0x5a5aa5a5deadbeefUL && b == 0x0123456789abcdefUL,
	    "read back 0x%lx / 0x%lx", a, b);
}

/* Checklist #14: hammer_time stores 0x1234 at VA 0x472 (identity map). */
static void check_warmboot_page(void)
{
	u16 v;
	check_begin("lowmem: warm-boot flag at VA 0x472 writable");
	__asm__ volatile("movw $0x1234, 0x472\n\tmovw 0x472, %0" : "=r"(v) :: "memory");
	const volatile u16 *k = phys_ptr(0x472, 2);
	check_result(v == 0x1234 && *k == 0x1234, "read back 0x%x / 0x%x", v, *k);
}

/*
 * INT3 is a trap: #BP's handler sees the address after it.  Linux patches
 * its text through INT3, and a KVM that refuses INT3 in ring 0 (this
 * project's test hosts) leaves it to vmm-core to complete.
 */
static volatile u64 bp_rip;
void bp_stub(void);
__asm__(".pushsection .text\nbp_stub:\npush %rax\nmov 8(%rsp), %rax\n"
	"mov %rax, bp_rip(%rip)\npop %rax\niretq\n.popsection");

static void check_int3(void)
{
	extern const u64 trap_stubs[32];
	u64 after;
	/* Under QEMU on a KVM that refuses INT3 the VM would stop here. */
	if (!check_begin_bhyve("cpu: INT3 raises vector 3 (breakpoint) with the address after it on the stack"))
		return;
	idt_set(3, bp_stub);
	bp_rip = 0;
	__asm__ volatile("lea 1f(%%rip), %0\n\tint3\n1:" : "=r"(after)::"memory");
	idt_set(3, (void (*)(void))trap_stubs[3]);
	check_result(bp_rip == after, "handler saw 0x%lx, want 0x%lx", bp_rip, after);
}

void cpu_checks(void)
{
	check_entry_rflags();
	check_entry_rsp();
	check_stack_words();
	check_entry_idtr();
	check_longmode();
	check_crs();
	check_segments();
	check_gdt();
	check_pagetables();
	check_kernstart_pde();
	check_alias();
	check_warmboot_page();
	check_bss_zero();
	check_int3();
}
