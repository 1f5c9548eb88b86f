/*
 * Files loaded after the kernel (§1.5, §3.3, §4.2, §4.3, §7.3):
 * .ko modules (ET_REL) placed by the load_elf_obj.c algorithm, whose
 * set_modmetadata_set we decode the way the loader does (applying the
 * module's own RELA relocations), dependencies, and raw files.
 *
 * Expectations from the environment:
 *   test.files=a.ko,b.ko,c.bin   exact basenames of the files after the
 *                                kernel, in load order
 *   test.raw=name:type:size,...  raw files: type, size, and contents equal
 *                                to raw_pattern() (tests/guest.rs)
 */
#include "guest.h"

#define MDT_DEPEND 1
#define MDT_MODULE 2
#define MDT_VERSION 3
#define MAX_META 6
#define MAX_SH 128

struct modinfo {
	const struct md_file *f;
	const Elf64_Ehdr *eh;
	const Elf64_Shdr *sh;
	u32 nsh, symtab;
	u32 nmeta;
	int decoded;
	struct {
		u32 type;
		char cval[32];
		i64 ints[3];	/* depend: min/pref/max; version: version */
		char modname[32];	/* MDT_MODULE: moduledata_t.name */
	} meta[MAX_META];
};
static struct modinfo mods[MAX_FILES];

static int is_ko(const struct md_file *f)
{
	return f->type && strcmp(f->type, "elf obj module") == 0;
}

static u64 roundup_any(u64 x, u64 a) { return a <= 1 ? x : (x + a - 1) / a * a; }

/* §4.2 steps 1-5, from ADDR; returns the end, or 0 on a structural error. */
static u64 expected_layout(const struct modinfo *m, u64 *want, const char **err)
{
	const Elf64_Shdr *sh = m->sh;
	u32 n = m->nsh, i, nsym = 0, symtab = 0;
	u64 last = m->f->addr;

	for (i = 0; i < n; i++)
		want[i] = 0;
	for (i = 0; i < n; i++) {
		if (sh[i].sh_size == 0 || !(sh[i].sh_flags & SHF_ALLOC))
			continue;
		if (sh[i].sh_type == SHT_PROGBITS || sh[i].sh_type == SHT_NOBITS ||
		    sh[i].sh_type == SHT_X86_64_UNWIND) {
			last = roundup_any(last, sh[i].sh_addralign);
			want[i] = last;
			last += sh[i].sh_size;
		}
	}
	for (i = 0; i < n; i++)
		if (sh[i].sh_type == SHT_SYMTAB)
			nsym++, symtab = i;
	if (nsym != 1) {
		*err = "not exactly one SHT_SYMTAB";
		return 0;
	}
	last = roundup_any(last, sh[symtab].sh_addralign);
	want[symtab] = last;
	last += sh[symtab].sh_size;
	u32 str = sh[symtab].sh_link;
	if (str >= n || sh[str].sh_type != SHT_STRTAB) {
		*err = "bad symtab sh_link";
		return 0;
	}
	last = roundup_any(last, sh[str].sh_addralign);
	want[str] = last;
	last += sh[str].sh_size;
	u32 shs = m->eh->e_shstrndx;
	if (shs == 0 || shs >= n || sh[shs].sh_type != SHT_STRTAB) {
		*err = "bad e_shstrndx";
		return 0;
	}
	last = roundup_any(last, sh[shs].sh_addralign);
	want[shs] = last;
	last += sh[shs].sh_size;
	for (i = 0; i < n; i++) {
		if ((sh[i].sh_type != SHT_RELA && sh[i].sh_type != SHT_REL) ||
		    sh[i].sh_info >= n || !(sh[sh[i].sh_info].sh_flags & SHF_ALLOC))
			continue;
		last = roundup_any(last, sh[i].sh_addralign);
		want[i] = last;
		last += sh[i].sh_size;
	}
	return last;
}

static const char *section_name(const struct modinfo *m, u32 i)
{
	const Elf64_Shdr *s = &m->sh[m->eh->e_shstrndx];
	const char *tab = phys_ptr(s->sh_addr, s->sh_size);
	if (!tab || m->sh[i].sh_name >= s->sh_size ||
	    strnlen(tab + m->sh[i].sh_name, s->sh_size - m->sh[i].sh_name) ==
		s->sh_size - m->sh[i].sh_name)
		return "";
	return tab + m->sh[i].sh_name;
}

/* load_elf_obj.c obj_symaddr(): section load address + st_value. */
static u64 symaddr(const struct modinfo *m, u64 idx)
{
	const Elf64_Shdr *st = &m->sh[m->symtab];
	if (idx >= st->sh_size / sizeof(Elf64_Sym))
		return 0;
	const Elf64_Sym *s = phys_ptr(st->sh_addr + idx * sizeof(Elf64_Sym), sizeof(Elf64_Sym));
	if (!s || s->st_shndx == 0 || s->st_shndx >= m->nsh || !m->sh[s->st_shndx].sh_addr)
		return 0;
	return m->sh[s->st_shndx].sh_addr + s->st_value;
}

/* Read the pointer stored at phys p, applying the module's relocations
 * the way obj_reloc_ptr() does (amd64 uses RELA, R_X86_64_64). */
static int read_ptr(const struct modinfo *m, u64 p, u64 *out)
{
	const u64 *raw = phys_ptr(p, 8);
	if (!raw)
		return 0;
	u64 val = *raw;
	for (u32 i = 0; i < m->nsh; i++) {
		const Elf64_Shdr *r = &m->sh[i];
		if (r->sh_type != SHT_RELA || !r->sh_addr || r->sh_info >= m->nsh)
			continue;
		const Elf64_Shdr *t = &m->sh[r->sh_info];
		if (!t->sh_addr || p < t->sh_addr || p + 8 > t->sh_addr + t->sh_size)
			continue;
		const Elf64_Rela *ra = phys_ptr(r->sh_addr, r->sh_size);
		if (!ra)
			return 0;
		for (u64 j = 0; j < r->sh_size / sizeof(Elf64_Rela); j++) {
			if (t->sh_addr + ra[j].r_offset != p)
				continue;
			if ((ra[j].r_info & 0xffffffff) != R_X86_64_64)
				return 0;
			u64 s = symaddr(m, ra[j].r_info >> 32);
			if (!s)
				return 0;
			val = s + ra[j].r_addend;
		}
	}
	*out = val;
	return 1;
}

static int read_str(u64 p, char *buf, u64 cap)
{
	const char *s = phys_ptr(p, cap);
	if (!s)
		return 0;
	u64 n = strnlen(s, cap);
	if (n == cap)
		return 0;
	memcpy(buf, s, n + 1);
	return 1;
}

/* Walk set_modmetadata_set like obj_parse_modmetadata(). */
static const char *decode_meta(struct modinfo *m)
{
	u32 i;
	for (i = 0; i < m->nsh; i++)
		if (m->sh[i].sh_type == SHT_PROGBITS &&
		    strcmp(section_name(m, i), "set_modmetadata_set") == 0)
			break;
	if (i == m->nsh)
		return "no set_modmetadata_set section";
	const Elf64_Shdr *set = &m->sh[i];
	if (!set->sh_addr || set->sh_size % 8)
		return "set section not placed or odd size";
	for (u64 p = set->sh_addr; p < set->sh_addr + set->sh_size; p += 8) {
		u64 v, data, cval;
		if (m->nmeta == MAX_META)
			return "too many entries";
		if (!read_ptr(m, p, &v))
			return "unrelocatable set entry";
		const u32 *hdr = phys_ptr(v, 24);
		if (!hdr || !read_ptr(m, v + 8, &data) || !read_ptr(m, v + 16, &cval))
			return "unrelocatable struct mod_metadata";
		/* everything the metadata points at lives inside the module */
		if (data < m->f->addr || data >= m->f->addr + m->f->size ||
		    cval < m->f->addr || cval >= m->f->addr + m->f->size)
			return "md_data/md_cval point outside the module";
		if (hdr[0] != 1)
			return "md_version is not MDT_STRUCT_VERSION (1)";
		typeof(m->meta[0]) *e = &m->meta[m->nmeta++];
		e->type = hdr[1];
		if (!read_str(cval, e->cval, sizeof(e->cval)))
			return "bad md_cval string";
		const int *ip = phys_ptr(data, 12);
		if (!ip)
			return "bad md_data";
		if (e->type == MDT_DEPEND) {
			e->ints[0] = ip[0], e->ints[1] = ip[1], e->ints[2] = ip[2];
		} else if (e->type == MDT_VERSION) {
			e->ints[0] = ip[0];
		} else if (e->type == MDT_MODULE) {
			u64 np;	/* moduledata_t.name */
			if (!read_ptr(m, data, &np) || !read_str(np, e->modname, sizeof(e->modname)))
				return "bad moduledata_t.name";
		}
	}
	m->decoded = 1;
	return NULL;
}

static void meta_string(const struct modinfo *m, u32 k, char *buf, u64 cap)
{
	const typeof(m->meta[0]) *e = &m->meta[k];
	switch (e->type) {
	case MDT_DEPEND:
		ksnprintf(buf, cap, "depend:%s:%ld:%ld:%ld", e->cval, e->ints[0], e->ints[1], e->ints[2]);
		break;
	case MDT_VERSION:
		ksnprintf(buf, cap, "version:%s:%ld", e->cval, e->ints[0]);
		break;
	case MDT_MODULE:
		ksnprintf(buf, cap, "module:%s:%s", e->cval, e->modname);
		break;
	default:
		ksnprintf(buf, cap, "type%u:%s", e->type, e->cval);
		break;
	}
}

/* What tests/guest/modules/{testmod,testdep}.c declare. */
static const struct {
	const char *file;
	const char *meta[4];
} known[] = {
	{"testmod.ko", {"depend:testdep:1:2:3", "version:testmod:3", "module:testmod:testmod", NULL}},
	{"testdep.ko", {"module:testdep:testdep", "version:testdep:2", NULL, NULL}},
};

static void check_known_content(const struct modinfo *m, const char *base)
{
	for (u32 k = 0; k < sizeof(known) / sizeof(known[0]); k++) {
		if (strcmp(base, known[k].file) != 0)
			continue;
		check_begin("module %s: metadata entries are the ones compiled in", base);
		u32 want = 0, found = 0;
		char got[64];
		for (; want < 4 && known[k].meta[want]; want++) {
			for (u32 j = 0; j < m->nmeta; j++) {
				meta_string(m, j, got, sizeof(got));
				if (strcmp(got, known[k].meta[want]) == 0) {
					found++;
					break;
				}
			}
		}
		if (found == want && m->nmeta == want) {
			check_pass();
		} else {
			if (m->nmeta)
				meta_string(m, 0, got, sizeof(got));
			check_fail("%u entries, %u of %u expected found; first %s", m->nmeta, found,
			    want, m->nmeta ? got : "-");
		}
	}
}

static void check_module(struct modinfo *m)
{
	const struct md_file *f = m->f;
	const char *base = basename(f->name);
	static const u32 order[] = {MODINFO_NAME, MODINFO_TYPE, MODINFO_ADDR, MODINFO_SIZE,
				    MD(MODINFOMD_ELFHDR), MD(MODINFOMD_SHDR)};
	static u64 want[MAX_SH];

	check_begin("module %s: TYPE \"elf obj module\"", base);
	check_result(is_ko(f), "TYPE %s", f->type);
	check_begin("module %s: records NAME TYPE ADDR SIZE ELFHDR SHDR", base);
	check_result(md_has_order(f, order, 6), "%u records", f->count);
	check_begin("module %s: ADDR page-aligned, SIZE non-zero", base);
	check_result(f->has_addr && f->has_size && !(f->addr & (PAGE_SIZE - 1)) && f->size,
	    "ADDR 0x%lx SIZE 0x%lx", f->addr, f->size);

	const struct md_rec *eh = md_find(f, MD(MODINFOMD_ELFHDR));
	const struct md_rec *sh = md_find(f, MD(MODINFOMD_SHDR));
	check_begin("module %s: ELFHDR is ET_REL x86-64 with 64-byte section headers", base);
	m->eh = eh && eh->size == 64 ? (const Elf64_Ehdr *)eh->data : NULL;
	if (!m->eh || !elf_header_ok(m->eh, ET_REL) || m->eh->e_shentsize != 64) {
		check_fail("%s", m->eh ? "bad header" : "ELFHDR missing");
		return;
	}
	check_pass();
	check_begin("module %s: SHDR = e_shnum x 64 bytes", base);
	if (!sh || sh->size != (u32)m->eh->e_shnum * 64 || m->eh->e_shnum > MAX_SH) {
		check_fail("SHDR %u bytes, e_shnum %u", sh ? sh->size : 0, m->eh->e_shnum);
		return;
	}
	check_pass();
	m->sh = (const Elf64_Shdr *)sh->data;
	m->nsh = m->eh->e_shnum;

	check_begin("module %s: section addresses follow the load_elf_obj.c layout, SIZE = end - ADDR", base);
	const char *err = "";
	u64 end = expected_layout(m, want, &err);
	if (!end) {
		check_fail("%s", err);
		return;
	}
	u32 i;
	for (i = 0; i < m->nsh; i++)
		if (m->sh[i].sh_addr != want[i])
			break;
	if (i < m->nsh) {
		check_fail("section %u sh_addr 0x%lx, want 0x%lx", i, m->sh[i].sh_addr, want[i]);
		return;
	}
	if (end - f->addr != f->size) {
		check_fail("SIZE 0x%lx, layout 0x%lx", f->size, end - f->addr);
		return;
	}
	check_pass();
	for (i = 0; i < m->nsh; i++)
		if (m->sh[i].sh_type == SHT_SYMTAB)
			m->symtab = i;

	/* NOBITS sections must read as zero (step 6 zeroes the range). */
	for (i = 0; i < m->nsh; i++) {
		if (m->sh[i].sh_type != SHT_NOBITS || !m->sh[i].sh_addr)
			continue;
		check_begin("module %s: NOBITS section %s zeroed", base, section_name(m, i));
		const u8 *b = phys_ptr(m->sh[i].sh_addr, m->sh[i].sh_size);
		u64 j = 0;
		while (b && j < m->sh[i].sh_size && !b[j])
			j++;
		check_result(b && j == m->sh[i].sh_size, "non-zero byte at +0x%lx", j);
	}

	check_begin("module %s: set_modmetadata_set decodes (RELA applied)", base);
	err = decode_meta(m);
	if (err) {
		check_fail("%s", err);
		return;
	}
	check_pass();
	for (u32 k = 0; k < m->nmeta; k++) {
		char s[64];
		meta_string(m, k, s, sizeof(s));
		kprintf("# %s: %s\n", base, s);
	}
	check_known_content(m, base);
}

/* §7.3: a dependency is loaded right after its dependent unless some file
 * already provides it; the provider must carry a matching MDT_VERSION. */
static void check_dependencies(void)
{
	check_begin("modules: every MDT_DEPEND satisfied by a later (or earlier) module, version in range");
	for (u32 i = 1; i < md.nfiles; i++) {
		const struct modinfo *m = &mods[i];
		if (!m->decoded)
			continue;
		for (u32 k = 0; k < m->nmeta; k++) {
			if (m->meta[k].type != MDT_DEPEND)
				continue;
			u32 j, found = 0, j_found = 0;
			i64 ver = 0;
			for (j = 1; j < md.nfiles && !found; j++) {
				if (j == i || !mods[j].decoded)
					continue;
				for (u32 q = 0; q < mods[j].nmeta; q++)
					if (mods[j].meta[q].type == MDT_VERSION &&
					    strcmp(mods[j].meta[q].cval, m->meta[k].cval) == 0)
						found = 1, j_found = j, ver = mods[j].meta[q].ints[0];
			}
			if (!found) {
				check_fail("%s needs %s: not loaded", basename(m->f->name), m->meta[k].cval);
				return;
			}
			if (ver < m->meta[k].ints[0] || ver > m->meta[k].ints[2]) {
				check_fail("%s needs %s %ld..%ld, got %ld", basename(m->f->name),
				    m->meta[k].cval, m->meta[k].ints[0], m->meta[k].ints[2], ver);
				return;
			}
			if (j_found < i)
				kprintf("# %s: %s was already loaded before it\n", basename(m->f->name),
				    m->meta[k].cval);
		}
	}
	check_pass();
}

static u8 raw_pattern(u64 i) { return (u8)((i ^ (i >> 8) ^ (i >> 16)) * 31 + 0x5a); }

static void check_raw(void)
{
	static const u32 order[] = {MODINFO_NAME, MODINFO_TYPE, MODINFO_ADDR, MODINFO_SIZE};
	u32 i;

	check_begin("files: raw files carry only NAME TYPE ADDR SIZE");
	for (i = 1; i < md.nfiles; i++)
		if (!is_ko(&md.files[i]) && !str_endswith(md.files[i].name, ".ko") &&
		    !md_has_order(&md.files[i], order, 4))
			break;
	if (i < md.nfiles)
		check_fail("%s: %u records", md.files[i].name, md.files[i].count);
	else
		check_pass();

	const char *list = kenv_get("test.raw");
	char item[128], name[64], type[64], size[24];
	for (u32 n = 0; list && list_item(list, ',', n, item, sizeof(item)); n++) {
		u64 want;
		if (!list_item(item, ':', 0, name, sizeof(name)) ||
		    !list_item(item, ':', 1, type, sizeof(type)) ||
		    !list_item(item, ':', 2, size, sizeof(size)) || !parse_u64(size, 0, &want)) {
			check_begin("raw %s: test.raw item well formed", item);
			check_fail("want name:type:size");
			continue;
		}
		check_begin("raw %s: loaded with type %s, size %lu, pattern contents", name, type, want);
		for (i = 1; i < md.nfiles; i++)
			if (strcmp(basename(md.files[i].name), name) == 0)
				break;
		if (i == md.nfiles) {
			check_fail("not loaded");
			continue;
		}
		const struct md_file *f = &md.files[i];
		if (!f->type || strcmp(f->type, type) != 0 || f->size != want) {
			check_fail("type %s size %lu", f->type, f->size);
			continue;
		}
		const u8 *b = phys_ptr(f->addr, f->size);
		u64 j = 0;
		while (b && j < f->size && b[j] == raw_pattern(j))
			j++;
		check_result(b && j == f->size, "byte %lu is 0x%x, want 0x%x", j, b ? b[j] : 0,
		    raw_pattern(j));
	}
}

static void check_file_list(void)
{
	const char *list = kenv_get("test.files");
	char item[64];
	u32 n = 0;
	check_begin("files: files after the kernel are test.files, in order");
	if (!list) {
		check_skip("test.files not set");
		return;
	}
	for (; list_item(list, ',', n, item, sizeof(item)); n++) {
		if (n + 1 >= md.nfiles || strcmp(basename(md.files[n + 1].name), item) != 0) {
			check_fail("position %u is %s, want %s", n,
			    n + 1 < md.nfiles ? basename(md.files[n + 1].name) : "(none)", item);
			return;
		}
	}
	check_result(n + 1 == md.nfiles, "extra file %s", md.nfiles > n + 1 ? md.files[n + 1].name : "");
}

void module_checks(void)
{
	if (no_loader) {
		check_begin("modules: modules and raw files");
		check_skip("no loader hand-off (multiboot entry)");
		return;
	}
	if (!md.ok || !md.nfiles)
		return;
	for (u32 i = 1; i < md.nfiles; i++) {
		mods[i].f = &md.files[i];
		if (is_ko(&md.files[i]) || str_endswith(md.files[i].name, ".ko"))
			check_module(&mods[i]);
	}
	check_dependencies();
	check_raw();
	check_file_list();
}
