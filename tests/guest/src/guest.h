/*
 * bhyve-rs boot-contract test guest: shared declarations.
 *
 * The guest is linked and entered like a FreeBSD/amd64 kernel and checks,
 * one TAP-like line per check on COM1, that the loader (our bhyveload)
 * produced exactly the hand-off described in
 * shared/docs/freebsd-boot-abi.md.  Section numbers (§) refer to that file,
 * except in the machine checks (acpi_checks.c, pci_checks.c, timer_checks.c,
 * irq_checks.c, smp.c), which refer to shared/docs/bhyve-platform.md.
 */
#ifndef GUEST_H
#define GUEST_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;
typedef long i64;

#define NULL ((void *)0)
#define KERNBASE 0xffffffff80000000UL
/* The loader's page tables map only the first GiB (§2.1): everything it
 * hands us must be below this. */
#define LOWMAP_LIMIT 0x40000000UL
#define PAGE_SIZE 4096UL
#define ROUNDUP(x, a) (((x) + (a) - 1) & ~((u64)(a) - 1))

/* Linker-script symbols (kernel.ld). */
extern char btext[], __bss_start[], __bss_clear_start[], _end[];

/* lib.c */
void *memset(void *d, int c, u64 n);
void *memcpy(void *d, const void *s, u64 n);
int memcmp(const void *a, const void *b, u64 n);
u64 strlen(const char *s);
u64 strnlen(const char *s, u64 max);
int strcmp(const char *a, const char *b);
int strcasecmp(const char *a, const char *b);
/* 1 if s ends with suffix */
int str_endswith(const char *s, const char *suffix);
const char *basename(const char *path);
/* Parses a whole string as a number; base 0 = 0x prefix selects 16. */
int parse_u64(const char *s, int base, u64 *out);
/* Splits "a,b,c": copies item i (0-based) of list into buf, returns 1 if it
 * exists. */
int list_item(const char *list, char sep, u32 i, char *buf, u64 bufsz);
/* Pointer to physical [p, p+len) through the KERNBASE window of the
 * loader's tables, or NULL when the range is not inside the low GiB. */
void *phys_ptr(u64 p, u64 len);
/* Pointer to device MMIO at physical p in [3 GiB, 4 GiB) (maps it
 * uncached on first use), NULL outside that range. */
void *mmio_ptr(u64 p);

/* console.c: COM1 output and the check protocol */
void uart_init(void);
void kputc(char c);
void kprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int ksnprintf(char *buf, u64 cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Starts a check; the name is formatted now, printed by the verdict. */
void check_begin(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void check_pass(void);
void check_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void check_skip(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Shorthand: begin + pass/fail with a detail when cond is false. */
/* Begins a check of a bhyve-specific value; on the multiboot (QEMU) path it
 * is reported as SKIP and 0 is returned. */
int check_begin_bhyve(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Begins a check group's gate: returns 1 if kenv `var` is set, else reports
 * "<what> # SKIP <var> not set" and returns 0. */
int check_requested(const char *var, const char *what);
void check_result(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void check_summary(void);
int check_failures(void);
int check_active(void);
void check_fault(u64 vec, u64 err, u64 rip, u64 cr2);

/* kenv.c: the loader's environment (or the multiboot command line) */
struct kenv_block {
	const char *base;	/* first byte of the block */
	u64 len;		/* bytes including the terminating extra NUL */
	u32 nentries;
	int terminated;		/* found the double NUL inside the bound */
};
extern struct kenv_block kenv;
void kenv_from_loader(u64 envp_phys, u64 limit_phys);
void kenv_from_cmdline(const char *cmdline);
u32 kenv_count(void);
const char *kenv_entry(u32 i);	/* "name=value" */
const char *kenv_get(const char *name);
/* 1 = present and numeric, 0 = missing, -1 = present but not a number */
int kenv_get_num(const char *name, u64 *out);

/* Entry state captured by entry.S before anything else runs. */
struct entry_state {
	u64 rflags;
	u64 rsp;
	u64 word0;	/* u32 at RSP+0 */
	u64 modulep;	/* u32 at RSP+4 */
	u64 kernend;	/* u32 at RSP+8 */
	u16 idtr_limit;
	u64 idtr_base;
} __attribute__((packed));
extern struct entry_state entry_state;
/* 1 when started through multiboot (QEMU): no loader hand-off to check. */
extern int no_loader;
/* First non-zero BSS word found before we cleared it (~0 = none). */
extern u64 bss_dirty_off, bss_dirty_val;

/* metadata.c: the preload metadata (§3) */
#define MODINFO_END 0x0000
#define MODINFO_NAME 0x0001
#define MODINFO_TYPE 0x0002
#define MODINFO_ADDR 0x0003
#define MODINFO_SIZE 0x0004
#define MODINFO_EMPTY 0x0005
#define MODINFO_ARGS 0x0006
#define MODINFO_METADATA 0x8000
#define MODINFOMD_ELFHDR 0x0002
#define MODINFOMD_SSYM 0x0003
#define MODINFOMD_ESYM 0x0004
#define MODINFOMD_DYNAMIC 0x0005
#define MODINFOMD_ENVP 0x0006
#define MODINFOMD_HOWTO 0x0007
#define MODINFOMD_KERNEND 0x0008
#define MODINFOMD_SHDR 0x0009
#define MODINFOMD_CTORS_ADDR 0x000a
#define MODINFOMD_CTORS_SIZE 0x000b
#define MODINFOMD_SMAP 0x1001
#define MD(x) (MODINFO_METADATA | (x))

#define MAX_RECS 256
#define MAX_FILES 32
struct md_rec {
	u32 type;
	u32 size;
	const u8 *data;	/* payload (KERNBASE VA) */
	u64 phys;	/* physical address of the record header */
};
struct md_file {
	u32 first, count;	/* records [first, first+count) of md.recs */
	const char *name, *type;
	u64 addr, size;
	int has_addr, has_size;
};
struct md_state {
	int ok;			/* walk reached MODINFO_END sanely */
	u64 modulep, kernend;	/* from the stack */
	u64 bytes;		/* metadata size including the END record */
	u32 nrecs, nfiles;
	struct md_rec recs[MAX_RECS];
	struct md_file files[MAX_FILES];
};
extern struct md_state md;
void metadata_walk(void);
void metadata_checks(void);
const struct md_rec *md_find(const struct md_file *f, u32 type);
u64 md_u64(const struct md_rec *r);	/* 0 if size is not 8 */
int md_has_order(const struct md_file *f, const u32 *types, u32 n);

/* ELF types (the subset we use) */
typedef struct {
	u8 e_ident[16];
	u16 e_type, e_machine;
	u32 e_version;
	u64 e_entry, e_phoff, e_shoff;
	u32 e_flags;
	u16 e_ehsize, e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx;
} Elf64_Ehdr;
typedef struct {
	u32 sh_name, sh_type;
	u64 sh_flags, sh_addr, sh_offset, sh_size;
	u32 sh_link, sh_info;
	u64 sh_addralign, sh_entsize;
} Elf64_Shdr;
typedef struct {
	u32 st_name;
	u8 st_info, st_other;
	u16 st_shndx;
	u64 st_value, st_size;
} Elf64_Sym;
typedef struct {
	u64 r_offset, r_info;
	i64 r_addend;
} Elf64_Rela;
#define SHT_PROGBITS 1
#define SHT_SYMTAB 2
#define SHT_STRTAB 3
#define SHT_RELA 4
#define SHT_NOBITS 8
#define SHT_REL 9
#define SHT_X86_64_UNWIND 0x70000001
#define SHF_ALLOC 0x2
#define SHF_EXECINSTR 0x4
#define ET_REL 1
#define ET_EXEC 2
#define EM_X86_64 62
#define R_X86_64_64 1
/* 0 if h is not a little-endian ELF64 x86-64 header of the given type */
int elf_header_ok(const Elf64_Ehdr *h, u16 type);

/* check groups */
void cpu_checks(void);
void kernel_checks(void);
void env_checks(void);
void module_checks(void);
/* the machine bhyve presents (shared/docs/bhyve-platform.md) */
void acpi_checks(void);		/* test.acpi */
void pci_checks(void);		/* test.pci */
void timer_checks(void);	/* test.pmtimer, test.hpet, test.rtc */
void irq_checks(void);		/* test.uart_irq */
void smp_checks(void);		/* test.ncpus */
void vblk_checks(void);		/* test.vblk (vblk_checks.c) */
void vnet_checks(void);		/* test.vnet (vnet_checks.c) */
/* not checks: device throughput for bench/virtio.sh (bench.c) */
void bench_run(void);		/* test.bench_vblk, test.bench_vnet */

/* virtio.c: legacy virtio PCI plumbing for the polled drivers */
/* BAR0 registers of the legacy interface (bhyve-platform.md 4.5) and the
 * status bits the drivers use */
#define VIO_HOST_FEATURES 0
#define VIO_GUEST_FEATURES 4
#define VIO_QUEUE_PFN 8
#define VIO_QUEUE_NUM 12
#define VIO_QUEUE_SEL 14
#define VIO_QUEUE_NOTIFY 16
#define VIO_STATUS 18
#define VIO_ISR 19
#define VIO_CONFIG 20	/* device config while MSI-X is off */
#define ST_ACK 1
#define ST_DRIVER 2
#define ST_DRIVER_OK 4
u32 pci0_rd32(u32 slot, u32 reg);	/* bus 0, function 0 */
void pci0_wr32(u32 slot, u32 reg, u32 v);
void pci0_wr16(u32 slot, u32 reg, u16 v);
#define VRING_DESC_F_NEXT 1
#define VRING_DESC_F_WRITE 2
struct vring_desc {
	u64 addr;
	u32 len;
	u16 flags, next;
};
struct vring_used_elem {
	u32 id, len;
};
struct vring {
	u16 num, avail_idx, used_idx;
	volatile struct vring_desc *desc;
	volatile u16 *avail;	/* flags, idx, ring[] */
	volatile u16 *used;	/* flags, idx, then elements */
};
static inline void vbarrier(void) { __asm__ volatile("mfence" ::: "memory"); }
static inline u64 phys_of(const volatile void *p) { return (u64)p - KERNBASE; }
/* bytes of a legacy ring of num entries (4 KiB aligned parts) */
/* test.TAG names the slot of a legacy virtio function with this device
 * ID: checks both (under TAG); 1 with *slot set, or 0 after a `not ok` */
int vio_function(const char *tag, u16 device, u32 *slot);
u64 vring_bytes(u16 num);
void vring_init(struct vring *r, void *area, u16 num);
/* puts chain `head` in the avail ring and publishes the new index */
void vring_publish(struct vring *r, u16 head);
int vring_used_pending(const struct vring *r);
/* the used element at used_idx (valid when vring_used_pending) */
volatile struct vring_used_elem *vring_used_elem(const struct vring *r);

/* acpi_checks.c: tables found by the RSDP scan (KERNBASE VAs or NULL) */
struct acpi_tables {
	int scanned;
	u64 rsdp_phys;
	const u8 *rsdp, *rsdt, *xsdt, *fadt, *madt, *hpet, *mcfg, *dsdt, *facs;
};
extern struct acpi_tables acpi;
int acpi_locate(void);			/* 1 if an RSDP was found */
/* Enabled local APICs listed in the MADT (IDs into ids[max]); -1 if no MADT */
int madt_lapics(u8 *ids, u32 max);
/* MP table processor entries (IDs into ids[max]); -1 if no MP table */
int mptable_cpus(u8 *ids, u32 max);

/* timer_checks.c */
/* Busy-waits about us microseconds on the 8254 (channel 2, no IRQ); falls
 * back to a bounded loop if the PIT does not count. */
void udelay(u32 us);
int pit_works(void);	/* probes channel 2 once: 1 if it counts */

/* irq_checks.c: local APIC (xAPIC MMIO at 0xFEE00000) */
#define LAPIC_BASE 0xFEE00000UL
#define LAPIC_ID 0x20
#define LAPIC_VER 0x30
#define LAPIC_TPR 0x80
#define LAPIC_EOI 0xB0
#define LAPIC_SVR 0xF0
#define LAPIC_ICR_LO 0x300
#define LAPIC_ICR_HI 0x310
#define LAPIC_LVT_TIMER 0x320
#define LAPIC_TIMER_ICR 0x380
#define LAPIC_TIMER_CCR 0x390
#define LAPIC_TIMER_DCR 0x3E0
u32 lapic_rd(u32 reg);
void lapic_wr(u32 reg, u32 v);
/* 0 if the APIC base MSR does not point at 0xFEE00000 or it is disabled */
int lapic_ok(void);

/* main.c */
void guest_exit(void) __attribute__((noreturn));
/* Installs an interrupt gate (vectors 32-255; stubs must end in iretq). */
void idt_set(u8 vec, void (*stub)(void));
void idt_load(void);	/* loads the IDT on this CPU (APs) */

#endif
