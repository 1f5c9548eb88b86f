/*
 * Test guest main line: capture, run every check group in a fixed order,
 * print the summary, leave the VM.
 */
#include "io.h"

/* In .data, not .bss: written by entry.S before anything checks the BSS. */
struct entry_state entry_state __attribute__((section(".data")));
int no_loader __attribute__((section(".data")));
u64 bss_dirty_off __attribute__((section(".data"))) = ~0UL;
u64 bss_dirty_val __attribute__((section(".data")));

/*
 * The loader must zero the BSS (p_memsz - p_filesz).  Look before anything
 * writes there (only the boot stack, kept out of the range, is in use),
 * remember the first dirty word for cpu_checks.c, then clear it ourselves
 * so that a dirty BSS cannot garble the rest of the report.
 */
static void bss_scan_and_clear(void)
{
	const volatile u64 *p = (const u64 *)__bss_clear_start, *e = (const u64 *)_end;
	for (; p < e; p++) {
		if (*p) {
			bss_dirty_off = (u64)p - (u64)__bss_start;
			bss_dirty_val = *p;
			break;
		}
	}
	memset(__bss_clear_start, 0, _end - __bss_clear_start);
}

#define PM1A_CNT 0x404		/* bhyve-platform.md §3.4 */
#define SLP_TYP_S5 (5 << 10)
#define SLP_EN (1 << 13)
#define RESET_CTL 0xcf9		/* §3.3: bit 2 resets */
#define QEMU_DEBUG_EXIT 0xf4	/* isa-debug-exit, QEMU runs only */
#define QEMU_PM1A_CNT 0x604	/* PIIX4 PM base 0x600 under SeaBIOS */

/* IDT: vectors 0-31 so that a fault fails a check instead of
 * triple-faulting silently; 32-255 not present until idt_set() (an
 * unexpected interrupt then shows up as #GP with the vector in the error
 * code: vector * 8 + 2). */
struct gate {
	u16 off0, sel;
	u8 ist, type;
	u16 off1;
	u32 off2, zero;
} __attribute__((packed));
static struct gate idt[256];
extern const u64 trap_stubs[32];

static void gate_set(u8 vec, u64 a)
{
	u16 cs;
	/* use whatever CS the loader gave us, so delivery works even if it
	 * is not 0x08 (a check reports that) */
	__asm__ volatile("mov %%cs, %0" : "=r"(cs));
	idt[vec] = (struct gate){(u16)a, cs, 0, 0x8e, (u16)(a >> 16), (u32)(a >> 32), 0};
}

void idt_set(u8 vec, void (*stub)(void)) { gate_set(vec, (u64)stub); }

void idt_load(void)
{
	struct __attribute__((packed)) {
		u16 limit;
		u64 base;
	} idtr = {sizeof(idt) - 1, (u64)idt};
	__asm__ volatile("lidt %0" ::"m"(idtr));
}

static void trap_init(void)
{
	for (int i = 0; i < 32; i++)
		gate_set((u8)i, trap_stubs[i]);
	idt_load();
}

void trap_handler(const u64 *frame)
{
	static int depth;
	if (depth++ == 0) {
		check_fault(frame[0], frame[1], frame[2], read_cr2());
		check_summary();
		guest_exit();
	}
	for (;;)
		__asm__ volatile("cli; hlt");
}

static void __attribute__((noreturn)) halt_forever(void)
{
	for (;;)
		__asm__ volatile("cli; hlt");
}

/*
 * Leave the VM the way test.exit asks (default poweroff):
 *   poweroff    ACPI S5 via PM1a_CNT  -> bhyve exit status 1
 *   reset       0xcf9 <- 0x6          -> bhyve exit status 0
 *   halt        cli; hlt              -> bhyve exit status 2
 *   triplefault empty IDT + ud2       -> bhyve exit status 3
 * If the chosen way does not work the guest ends in cli; hlt.
 */
void guest_exit(void)
{
	const char *how = kenv_get("test.exit");
	if (!how)
		how = "poweroff";
	kprintf("GUEST-EXIT %s\n", how);
	if (no_loader) {
		/* QEMU: isa-debug-exit (exit status 1 pass, 3 fail), else S5 */
		outb(QEMU_DEBUG_EXIT, check_failures() ? 1 : 0);
		outw(QEMU_PM1A_CNT, SLP_EN);
		halt_forever();
	}
	if (strcmp(how, "reset") == 0) {
		outb(RESET_CTL, 0x6);
	} else if (strcmp(how, "triplefault") == 0) {
		struct __attribute__((packed)) {
			u16 limit;
			u64 base;
		} none = {0, 0};
		__asm__ volatile("lidt %0; ud2" ::"m"(none));
	} else if (strcmp(how, "halt") != 0) {
		outw(PM1A_CNT, SLP_TYP_S5 | SLP_EN);
	}
	halt_forever();
}

struct multiboot_info {
	u32 flags, mem_lower, mem_upper, boot_device, cmdline;
};

void kmain(int via_multiboot, u32 mb_magic, u32 mb_info)
{
	no_loader = via_multiboot;
	bss_scan_and_clear();
	uart_init();
	trap_init();
	kprintf("\nGUEST-BEGIN bhyve-rs boot-contract guest, entry=%s\n",
	    no_loader ? "multiboot" : "freebsd");

	if (no_loader) {
		const struct multiboot_info *mbi = phys_ptr(mb_info, sizeof(*mbi));
		check_begin("multiboot: entered with magic 0x2badb002");
		check_result(mb_magic == 0x2badb002, "eax 0x%x", mb_magic);
		if (mb_magic == 0x2badb002 && mbi && (mbi->flags & 4))
			kenv_from_cmdline(phys_ptr(mbi->cmdline, 1));
	} else {
		kprintf("# modulep=0x%lx kernend=0x%lx\n", entry_state.modulep, entry_state.kernend);
		metadata_walk();
		if (md.ok && md.nfiles) {
			u64 envp = md_u64(md_find(&md.files[0], MD(MODINFOMD_ENVP)));
			/* the environment must end before the metadata (§1.5) */
			kenv_from_loader(envp, md.modulep > envp ? md.modulep : envp + 65536);
			kprintf("# envp=0x%lx entries=%u files=%u records=%u\n", envp,
			    kenv_count(), md.nfiles, md.nrecs);
		}
	}

	cpu_checks();
	metadata_checks();
	kernel_checks();
	env_checks();
	module_checks();
	acpi_checks();
	pci_checks();
	timer_checks();
	irq_checks();
	vblk_checks();
	vnet_checks();
	smp_checks();
	bench_run();

	check_summary();
	guest_exit();
}
