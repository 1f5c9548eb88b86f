/*
 * The kernel's own file record (§3.3, §4.1): NAME/TYPE/ADDR/SIZE,
 * ELFHDR and SHDR describing this very image, and the symbol table blob
 * between SSYM and ESYM containing btext at its link address.
 */
#include "guest.h"

#define STT_FUNC 2

/* Initialised data the loader must have copied from the file. */
static volatile u64 data_canary = 0x1badb0020c0ffee5UL;
static const volatile char rodata_canary[] = "bhyve-rs guest rodata canary";

static const struct md_file *kf;

static void check_image(void)
{
	check_begin("image: .data and .rodata copied from the file");
	check_result(data_canary == 0x1badb0020c0ffee5UL &&
	    rodata_canary[0] == 'b' && rodata_canary[27] == 'y',
	    "data 0x%lx", data_canary);
}

static void check_record(void)
{
	const char *want_args = kenv_get("test.kernel_args");
	const struct md_rec *args = md_find(kf, MODINFO_ARGS);

	check_begin("kernel: ADDR = 0x200000 (physical)");
	check_result(kf->addr == 0x200000, "ADDR 0x%lx", kf->addr);

	check_begin("kernel: ARGS record as test.kernel_args (absent when unset)");
	if (want_args)
		check_result(args && strcmp((const char *)args->data, want_args) == 0,
		    "ARGS %s", args ? (const char *)args->data : "(absent)");
	else
		check_result(!args, "unexpected ARGS %s", args ? (const char *)args->data : "");

	check_begin("kernel: NAME = kenv kernelname");
	const char *kn = kenv_get("kernelname");
	check_result(kn && strcmp(kn, kf->name) == 0, "NAME %s kernelname %s", kf->name, kn);

	const char *want_name = kenv_get("test.kernel_name");
	check_begin("kernel: NAME = test.kernel_name");
	if (!want_name)
		check_skip("test.kernel_name not set");
	else
		check_result(strcmp(kf->name, want_name) == 0, "NAME %s", kf->name);

	check_begin("kernel: no DYNAMIC or CTORS records (image has neither)");
	check_result(!md_find(kf, MD(MODINFOMD_DYNAMIC)) && !md_find(kf, MD(MODINFOMD_CTORS_ADDR)) &&
	    !md_find(kf, MD(MODINFOMD_CTORS_SIZE)), "found one");
}

static const Elf64_Ehdr *check_elfhdr(void)
{
	const struct md_rec *r = md_find(kf, MD(MODINFOMD_ELFHDR));
	const Elf64_Ehdr *h = r && r->size == 64 ? (const Elf64_Ehdr *)r->data : NULL;

	check_begin("kernel: ELFHDR is this image's header (ET_EXEC, x86-64, e_entry = btext)");
	if (!h) {
		check_fail("ELFHDR missing or not 64 bytes");
		return NULL;
	}
	check_result(elf_header_ok(h, ET_EXEC) && h->e_entry == (u64)btext &&
	    h->e_shentsize == sizeof(Elf64_Shdr),
	    "type %u machine %u entry 0x%lx shentsize %u", h->e_type, h->e_machine,
	    h->e_entry, h->e_shentsize);
	return h;
}

/* SHDR is the file's untouched section table (§4.1). */
static const Elf64_Shdr *check_shdr(const Elf64_Ehdr *h, u32 *nsh)
{
	const struct md_rec *r = md_find(kf, MD(MODINFOMD_SHDR));
	check_begin("kernel: SHDR = e_shnum x 64 bytes, has the section holding btext");
	if (!r || !h) {
		check_fail("SHDR %s", r ? "without ELFHDR" : "missing");
		return NULL;
	}
	if (r->size != (u32)h->e_shnum * 64) {
		check_fail("size %u, e_shnum %u", r->size, h->e_shnum);
		return NULL;
	}
	const Elf64_Shdr *sh = (const Elf64_Shdr *)r->data;
	*nsh = h->e_shnum;
	u32 i;
	for (i = 0; i < *nsh; i++)
		if (sh[i].sh_type == SHT_PROGBITS && (sh[i].sh_flags & SHF_EXECINSTR) &&
		    sh[i].sh_addr <= (u64)btext && (u64)btext < sh[i].sh_addr + sh[i].sh_size)
			break;
	check_result(i < *nsh, "no executable section contains 0x%lx", (u64)btext);
	return sh;
}

/*
 * §4.1: at SSYM: u64 symtab size, symtab, pad to 8, u64 strtab size,
 * strtab, pad to 8 = ESYM.  SSYM = end of the loaded segments rounded to 8.
 */
static void check_symbols(const Elf64_Shdr *sh, u32 nsh)
{
	u64 ssym = md_u64(md_find(kf, MD(MODINFOMD_SSYM)));
	u64 esym = md_u64(md_find(kf, MD(MODINFOMD_ESYM)));
	u64 image_end = ROUNDUP((u64)_end - KERNBASE, 8);

	check_begin("kernel: SSYM = end of image rounded to 8, ESYM > SSYM (physical)");
	if (!ssym || !esym || esym <= ssym || esym >= LOWMAP_LIMIT) {
		check_fail("SSYM 0x%lx ESYM 0x%lx", ssym, esym);
		check_begin("kernel: SIZE = ESYM - ADDR (image + symbols)");
		check_result(kf->addr + kf->size == image_end, "no symbols and ADDR+SIZE 0x%lx, image end 0x%lx",
		    kf->addr + kf->size, image_end);
		return;
	}
	check_result(ssym == image_end, "SSYM 0x%lx, image end 0x%lx", ssym, image_end);

	check_begin("kernel: SIZE = ESYM - ADDR (image + symbols)");
	check_result(kf->addr + kf->size == esym, "ADDR+SIZE 0x%lx ESYM 0x%lx",
	    kf->addr + kf->size, esym);

	check_begin("kernel: symbol blob is {size, symtab, size, strtab} ending at ESYM");
	const u8 *blob = phys_ptr(ssym, esym - ssym);
	u64 len = esym - ssym;
	u64 symsz = *(const u64 *)blob;
	if (symsz == 0 || symsz % sizeof(Elf64_Sym) || 8 + ROUNDUP(symsz, 8) + 8 > len) {
		check_fail("symtab size %lu, blob %lu", symsz, len);
		return;
	}
	u64 stroff = 8 + ROUNDUP(symsz, 8);
	u64 strsz = *(const u64 *)(blob + stroff);
	if (stroff + 8 + ROUNDUP(strsz, 8) != len) {
		check_fail("strtab size %lu leaves the blob at %lu of %lu", strsz,
		    stroff + 8 + ROUNDUP(strsz, 8), len);
		return;
	}
	check_pass();

	const Elf64_Sym *syms = (const Elf64_Sym *)(blob + 8);
	const char *strs = (const char *)(blob + stroff + 8);

	check_begin("kernel: symtab/strtab sizes equal the SHT_SYMTAB section and its sh_link");
	if (!sh) {
		check_fail("no SHDR");
	} else {
		u32 i;
		for (i = 0; i < nsh; i++)
			if (sh[i].sh_type == SHT_SYMTAB)
				break;
		if (i == nsh)
			check_fail("no SHT_SYMTAB in SHDR");
		else if (sh[i].sh_link >= nsh)
			check_fail("sh_link %u", sh[i].sh_link);
		else
			check_result(sh[i].sh_size == symsz && sh[sh[i].sh_link].sh_size == strsz,
			    "SHDR %lu/%lu blob %lu/%lu", sh[i].sh_size,
			    sh[sh[i].sh_link].sh_size, symsz, strsz);
	}

	check_begin("kernel: symbol btext present with the entry address");
	u64 n = symsz / sizeof(Elf64_Sym), i;
	for (i = 1; i < n; i++) {
		if (syms[i].st_name >= strsz)
			continue;
		const char *nm = strs + syms[i].st_name;
		if (strnlen(nm, strsz - syms[i].st_name) == 5 && memcmp(nm, "btext", 6) == 0)
			break;
	}
	if (i == n)
		check_fail("not found among %lu symbols", n);
	else
		check_result(syms[i].st_value == (u64)btext && (syms[i].st_info & 15) == STT_FUNC,
		    "value 0x%lx info 0x%x", syms[i].st_value, syms[i].st_info);
}

void kernel_checks(void)
{
	check_image();
	if (no_loader) {
		check_begin("kernel: file record, ELF headers and symbols");
		check_skip("no loader hand-off (multiboot entry)");
		return;
	}
	if (!md.ok || !md.nfiles)
		return;
	kf = &md.files[0];
	check_record();
	u32 nsh = 0;
	const Elf64_Ehdr *h = check_elfhdr();
	const Elf64_Shdr *sh = check_shdr(h, &nsh);
	check_symbols(sh, nsh);
}
