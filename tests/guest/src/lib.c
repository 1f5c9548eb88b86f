/* Freestanding helpers (gcc may also emit calls to mem* by itself). */
#include "io.h"

/*
 * Plain stores, 8 bytes at a time when aligned.  (Not `rep stosb`: when the
 * guest is emulated instruction by instruction, a string instruction can be
 * restarted after every exit and crawl.)
 */
void *memset(void *d, int c, u64 n)
{
	u8 *p = d;
	if (!((u64)p & 7) && !(n & 7)) {
		u64 v = (u8)c * 0x0101010101010101UL;
		for (volatile u64 *q = (volatile u64 *)p; n; n -= 8)
			*q++ = v;
		return d;
	}
	while (n--)
		*p++ = (u8)c;
	return d;
}

void *memcpy(void *d, const void *s, u64 n)
{
	u8 *dp = d;
	const u8 *sp = s;
	while (n--)
		*dp++ = *sp++;
	return d;
}

int memcmp(const void *a, const void *b, u64 n)
{
	const u8 *x = a, *y = b;
	for (; n; n--, x++, y++)
		if (*x != *y)
			return *x - *y;
	return 0;
}

u64 strlen(const char *s)
{
	u64 n = 0;
	while (s[n])
		n++;
	return n;
}

u64 strnlen(const char *s, u64 max)
{
	u64 n = 0;
	while (n < max && s[n])
		n++;
	return n;
}

int strcmp(const char *a, const char *b)
{
	while (*a && *a == *b)
		a++, b++;
	return (u8)*a - (u8)*b;
}

static int lower(int c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; }

int strcasecmp(const char *a, const char *b)
{
	while (*a && lower((u8)*a) == lower((u8)*b))
		a++, b++;
	return lower((u8)*a) - lower((u8)*b);
}

int str_endswith(const char *s, const char *suffix)
{
	u64 a = strlen(s), b = strlen(suffix);
	return a >= b && strcmp(s + a - b, suffix) == 0;
}

const char *basename(const char *path)
{
	const char *b = path;
	for (const char *p = path; *p; p++)
		if (*p == '/' || *p == ':')
			b = p + 1;
	return b;
}

int parse_u64(const char *s, int base, u64 *out)
{
	u64 v = 0;
	int digits = 0;

	if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X') && base != 10) {
		s += 2;
		base = 16;
	} else if (base == 0) {
		base = 10;
	}
	for (; *s; s++) {
		u64 d;
		if (*s >= '0' && *s <= '9')
			d = *s - '0';
		else if (base == 16 && lower(*s) >= 'a' && lower(*s) <= 'f')
			d = lower(*s) - 'a' + 10;
		else
			return 0;
		if (v > (~0UL - d) / base)
			return 0;
		v = v * base + d;
		digits++;
	}
	if (!digits)
		return 0;
	*out = v;
	return 1;
}

int list_item(const char *list, char sep, u32 i, char *buf, u64 bufsz)
{
	const char *p = list;
	while (i--) {
		while (*p && *p != sep)
			p++;
		if (!*p)
			return 0;
		p++;
	}
	u64 n = 0;
	while (p[n] && p[n] != sep)
		n++;
	if (n == 0 && !*p && p == list)
		return 0;	/* empty list has no items */
	if (n >= bufsz)
		n = bufsz - 1;
	memcpy(buf, p, n);
	buf[n] = 0;
	return 1;
}

void *phys_ptr(u64 p, u64 len)
{
	if (p >= LOWMAP_LIMIT || len > LOWMAP_LIMIT - p)
		return NULL;
	return (void *)(KERNBASE + p);
}

int elf_header_ok(const Elf64_Ehdr *h, u16 type)
{
	return h->e_ident[0] == 0x7f && h->e_ident[1] == 'E' &&
	    h->e_ident[2] == 'L' && h->e_ident[3] == 'F' &&
	    h->e_ident[4] == 2 /* ELFCLASS64 */ &&
	    h->e_ident[5] == 1 /* little endian */ &&
	    h->e_ident[6] == 1 && h->e_version == 1 &&
	    h->e_machine == EM_X86_64 && h->e_type == type;
}

/*
 * Device MMIO lives in [3 GiB, 4 GiB) (ECAM, I/O APIC, HPET, local APIC;
 * bhyve-platform.md §2), which the loader's tables do not map (every PDPT
 * entry aliases the first GiB).  The first call points PDPT[3] of the
 * tables in use at a page directory of our own: 2 MiB pages, identity,
 * uncached.  APs started later on the same CR3 see it too.
 */
static u64 mmio_pd[512] __attribute__((aligned(4096)));

void *mmio_ptr(u64 p)
{
	static int mapped;
	if (p < 0xC0000000UL || p >= 0x100000000UL)
		return NULL;
	if (!mapped) {
		u64 *pml4 = phys_ptr(read_cr3() & ~0xfffUL, PAGE_SIZE);
		u64 *pdpt = pml4 ? phys_ptr(pml4[0] & 0xffffffffff000UL, PAGE_SIZE) : NULL;
		if (!pdpt)
			return NULL;
		for (u64 i = 0; i < 512; i++)	/* P RW PWT PCD PS */
			mmio_pd[i] = (0xC0000000UL + (i << 21)) | 0x9b;
		pdpt[3] = ((u64)mmio_pd - KERNBASE) | 0x3;
		__asm__ volatile("mov %%cr3, %%rax; mov %%rax, %%cr3" ::: "rax", "memory");
		mapped = 1;
	}
	return (void *)p;
}
