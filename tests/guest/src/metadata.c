/*
 * Preload metadata (§3): walk the MODINFO records at modulep, then check
 * record encoding, file order, the userboot placement rules (§1.5) and the
 * SMAP (§1.2).
 */
#include "guest.h"

struct md_state md;

const struct md_rec *md_find(const struct md_file *f, u32 type)
{
	for (u32 i = f->first; i < f->first + f->count; i++)
		if (md.recs[i].type == type)
			return &md.recs[i];
	return NULL;
}

u64 md_u64(const struct md_rec *r)
{
	return r && r->size == 8 ? *(const u64 *)r->data : 0;
}

/* 1 if the file's records are exactly these types in this order. */
int md_has_order(const struct md_file *f, const u32 *types, u32 n)
{
	if (f->count != n)
		return 0;
	for (u32 i = 0; i < n; i++)
		if (md.recs[f->first + i].type != types[i])
			return 0;
	return 1;
}

static const char *walk_error;
static u64 walk_error_off;

/* A string record holds exactly size-1 non-NUL bytes and a NUL. */
static int str_rec_ok(const struct md_rec *r)
{
	return r->size >= 1 && r->data[r->size - 1] == 0 &&
	    strnlen((const char *)r->data, r->size) == r->size - 1;
}

void metadata_walk(void)
{
	md.modulep = entry_state.modulep;
	md.kernend = entry_state.kernend;
	/* Bound the walk: the metadata must end before kernend (§1.5). */
	u64 limit = md.kernend > md.modulep ? md.kernend : md.modulep + 65536;
	if (limit > LOWMAP_LIMIT)
		limit = LOWMAP_LIMIT;
	if (limit - md.modulep > (1UL << 20))
		limit = md.modulep + (1UL << 20);
	if (md.modulep == 0 || md.modulep >= LOWMAP_LIMIT) {
		walk_error = "modulep outside the low GiB";
		return;
	}
	u64 p = md.modulep;
	for (;;) {
		if (p + 8 > limit) {
			walk_error = "ran past kernend without MODINFO_END";
			walk_error_off = p - md.modulep;
			return;
		}
		const u32 *h = phys_ptr(p, 8);
		u32 type = h[0], size = h[1];
		if (type == MODINFO_END && size == 0) {
			md.bytes = p + 8 - md.modulep;
			md.ok = 1;
			return;
		}
		if (p + 8 + ROUNDUP((u64)size, 8) > limit) {
			walk_error = "record runs past kernend";
			walk_error_off = p - md.modulep;
			return;
		}
		if (md.nrecs == MAX_RECS) {
			walk_error = "too many records";
			return;
		}
		struct md_rec *r = &md.recs[md.nrecs];
		r->type = type;
		r->size = size;
		r->data = (const u8 *)h + 8;
		r->phys = p;
		/* NAME opens a new file (what subr_module.c assumes). */
		if (type == MODINFO_NAME) {
			if (md.nfiles == MAX_FILES) {
				walk_error = "too many files";
				return;
			}
			struct md_file *f = &md.files[md.nfiles++];
			f->first = md.nrecs;
			f->name = str_rec_ok(r) ? (const char *)r->data : "?";
		}
		if (md.nfiles) {
			struct md_file *f = &md.files[md.nfiles - 1];
			f->count = md.nrecs + 1 - f->first;
			if (type == MODINFO_TYPE && !f->type && str_rec_ok(r))
				f->type = (const char *)r->data;
			if (type == MODINFO_ADDR && size == 8)
				f->addr = *(const u64 *)r->data, f->has_addr = 1;
			if (type == MODINFO_SIZE && size == 8)
				f->size = *(const u64 *)r->data, f->has_size = 1;
		}
		md.nrecs++;
		p += 8 + ROUNDUP((u64)size, 8);
	}
}

/* Expected payload size for each record type the loader may write;
 * 0 = string, -1 = not a record userboot writes. */
static i64 expected_size(u32 type, u32 size)
{
	switch (type) {
	case MODINFO_NAME:
	case MODINFO_TYPE:
	case MODINFO_ARGS:
		return 0;
	case MODINFO_ADDR:
	case MODINFO_SIZE:
	case MD(MODINFOMD_SSYM):
	case MD(MODINFOMD_ESYM):
	case MD(MODINFOMD_DYNAMIC):
	case MD(MODINFOMD_ENVP):
	case MD(MODINFOMD_KERNEND):
	case MD(MODINFOMD_CTORS_ADDR):
	case MD(MODINFOMD_CTORS_SIZE):
		return 8;
	case MD(MODINFOMD_HOWTO):
		return 4;
	case MD(MODINFOMD_ELFHDR):
		return 64;
	case MD(MODINFOMD_SHDR):
		return size % 64 == 0 && size ? size : 64;
	case MD(MODINFOMD_SMAP):
		return size % 20 == 0 && size ? size : 20;
	default:
		return -1;
	}
}

static void check_records(void)
{
	check_begin("metadata: modulep page-aligned and below kernend");
	check_result(md.modulep && !(md.modulep & (PAGE_SIZE - 1)) && md.modulep < md.kernend,
	    "modulep 0x%lx kernend 0x%lx", md.modulep, md.kernend);

	check_begin("metadata: records walk to MODINFO_END");
	if (!md.ok) {
		check_fail("%s at +0x%lx", walk_error ? walk_error : "?", walk_error_off);
		return;
	}
	check_pass();

	check_begin("metadata: record sizes match their types (strings NUL-terminated)");
	u32 i;
	for (i = 0; i < md.nrecs; i++) {
		const struct md_rec *r = &md.recs[i];
		i64 want = expected_size(r->type, r->size);
		if (want < 0 || (want == 0 && !str_rec_ok(r)) || (want > 0 && r->size != want))
			break;
	}
	if (i < md.nrecs)
		check_fail("record %u type 0x%x size %u at 0x%lx", i, md.recs[i].type,
		    md.recs[i].size, md.recs[i].phys);
	else
		check_pass();

	check_begin("metadata: padding after each payload is zero (8-byte records)");
	for (i = 0; i < md.nrecs; i++) {
		const struct md_rec *r = &md.recs[i];
		u64 j;
		for (j = r->size; j < ROUNDUP((u64)r->size, 8); j++)
			if (r->data[j])
				break;
		if (j < ROUNDUP((u64)r->size, 8))
			break;
	}
	if (i < md.nrecs)
		check_fail("record %u type 0x%x", i, md.recs[i].type);
	else
		check_pass();

	check_begin("metadata: first record is MODINFO_NAME");
	check_result(md.nrecs && md.recs[0].type == MODINFO_NAME,
	    "first type 0x%x", md.nrecs ? md.recs[0].type : 0);

	check_begin("metadata: first file is the kernel, TYPE \"elf kernel\"");
	check_result(md.nfiles && md.files[0].type && strcmp(md.files[0].type, "elf kernel") == 0,
	    "type %s", md.nfiles ? md.files[0].type : "(no file)");

	check_begin("metadata: exactly one kernel file");
	u32 nk = 0;
	for (i = 0; i < md.nfiles; i++)
		if (md.files[i].type && (strcmp(md.files[i].type, "elf kernel") == 0 ||
		    strcmp(md.files[i].type, "elf64 kernel") == 0))
			nk++;
	check_result(nk == 1, "%u kernel files", nk);

	/* §3.3: NAME, TYPE, [ARGS], ADDR, SIZE, then metadata only. */
	check_begin("metadata: every file is NAME, TYPE, [ARGS], ADDR, SIZE, then MODINFOMD records");
	for (i = 0; i < md.nfiles; i++) {
		const struct md_file *f = &md.files[i];
		const struct md_rec *r = &md.recs[f->first];
		u32 k = 1;
		if (f->count < 4 || r[1].type != MODINFO_TYPE)
			break;
		k = 2;
		if (r[k].type == MODINFO_ARGS)
			k++;
		if (f->count < k + 2 || r[k].type != MODINFO_ADDR || r[k + 1].type != MODINFO_SIZE)
			break;
		for (k += 2; k < f->count; k++)
			if (!(r[k].type & MODINFO_METADATA))
				break;
		if (k < f->count)
			break;
	}
	if (i < md.nfiles)
		check_fail("file %u (%s)", i, md.files[i].name);
	else
		check_pass();

	/* Reverse creation order, as file_addmetadata() prepends (§3.3).
	 * This kernel has no PT_DYNAMIC and no .ctors. */
	static const u32 kern_order[] = {
		MODINFO_NAME, MODINFO_TYPE, MODINFO_ADDR, MODINFO_SIZE,
		MD(MODINFOMD_SMAP), MD(MODINFOMD_KERNEND), MD(MODINFOMD_ENVP),
		MD(MODINFOMD_HOWTO), MD(MODINFOMD_ELFHDR), MD(MODINFOMD_ESYM),
		MD(MODINFOMD_SSYM), MD(MODINFOMD_SHDR),
	};
	static const u32 kern_order_args[] = {
		MODINFO_NAME, MODINFO_TYPE, MODINFO_ARGS, MODINFO_ADDR, MODINFO_SIZE,
		MD(MODINFOMD_SMAP), MD(MODINFOMD_KERNEND), MD(MODINFOMD_ENVP),
		MD(MODINFOMD_HOWTO), MD(MODINFOMD_ELFHDR), MD(MODINFOMD_ESYM),
		MD(MODINFOMD_SSYM), MD(MODINFOMD_SHDR),
	};
	check_begin("metadata: kernel records in userboot order NAME TYPE [ARGS] ADDR SIZE SMAP KERNEND ENVP HOWTO ELFHDR ESYM SSYM SHDR");
	if (!md.nfiles) {
		check_fail("no files");
	} else if (md_has_order(&md.files[0], kern_order, 12) ||
	    md_has_order(&md.files[0], kern_order_args, 13)) {
		check_pass();
	} else {
		/* show what we got, compactly */
		char got[160];
		u64 n = 0;
		const struct md_file *f = &md.files[0];
		for (u32 k = 0; k < f->count && n + 6 < sizeof(got); k++) {
			u32 t = md.recs[f->first + k].type;
			const char *hex = "0123456789abcdef";
			got[n++] = hex[(t >> 12) & 15];
			got[n++] = hex[(t >> 8) & 15];
			got[n++] = hex[(t >> 4) & 15];
			got[n++] = hex[t & 15];
			got[n++] = ' ';
		}
		got[n] = 0;
		check_fail("got %s", got);
	}
}

/* End of the file's bytes in guest memory. */
static u64 file_end(const struct md_file *f) { return f->addr + f->size; }
static int is_ko(const struct md_file *f)
{
	return f->type && strcmp(f->type, "elf obj module") == 0;
}

static void check_layout(void)
{
	u32 i;
	u64 files_end = 0;
	const struct md_file *k = &md.files[0];

	check_begin("layout: KERNEND record = kernend on the stack");
	u64 kend = md_u64(md_find(k, MD(MODINFOMD_KERNEND)));
	check_result(kend == md.kernend, "record 0x%lx stack 0x%lx", kend, md.kernend);

	check_begin("layout: every file has ADDR and SIZE, below the 1 GiB map");
	for (i = 0; i < md.nfiles; i++) {
		const struct md_file *f = &md.files[i];
		if (!f->has_addr || !f->has_size || f->addr >= LOWMAP_LIMIT ||
		    f->size > LOWMAP_LIMIT - f->addr)
			break;
		if (file_end(f) > files_end)
			files_end = file_end(f);
	}
	if (i < md.nfiles) {
		check_fail("file %u (%s) addr 0x%lx size 0x%lx", i, md.files[i].name,
		    md.files[i].addr, md.files[i].size);
		return;
	}
	check_pass();

	u64 envp = md_u64(md_find(k, MD(MODINFOMD_ENVP)));
	u64 env_end = envp + (kenv.terminated ? kenv.len : 0);
	u64 md_end = md.modulep + md.bytes;

	check_begin("layout: kernend page-aligned and >= end of files, env and metadata");
	check_result(!(md.kernend & (PAGE_SIZE - 1)) && md.kernend >= files_end &&
	    md.kernend >= env_end && md.kernend >= md_end,
	    "kernend 0x%lx files end 0x%lx env end 0x%lx metadata end 0x%lx",
	    md.kernend, files_end, env_end, md_end);

	/* §1.5 item 3: .ko page-rounded, raw files right after the previous. */
	check_begin("layout: files packed in load order (.ko page-aligned, raw files unaligned)");
	for (i = 1; i < md.nfiles; i++) {
		u64 prev = file_end(&md.files[i - 1]);
		u64 want = is_ko(&md.files[i]) ? ROUNDUP(prev, PAGE_SIZE) : prev;
		if (md.files[i].addr != want)
			break;
	}
	if (i < md.nfiles)
		check_fail("file %u (%s) at 0x%lx, want 0x%lx", i, md.files[i].name,
		    md.files[i].addr,
		    is_ko(&md.files[i]) ? ROUNDUP(file_end(&md.files[i - 1]), PAGE_SIZE)
					: file_end(&md.files[i - 1]));
	else
		check_pass();

	/* §1.5 item 4 (userboot): envp, then modulep, then kernend. */
	check_begin("layout: envp = first page after the last file");
	check_result(envp == ROUNDUP(files_end, PAGE_SIZE), "envp 0x%lx, files end 0x%lx",
	    envp, files_end);
	check_begin("layout: modulep = first page after the environment");
	check_result(kenv.terminated && md.modulep == ROUNDUP(env_end, PAGE_SIZE),
	    "modulep 0x%lx, env end 0x%lx", md.modulep, env_end);
	check_begin("layout: kernend = first page after the metadata");
	check_result(md.kernend == ROUNDUP(md_end, PAGE_SIZE), "kernend 0x%lx, metadata end 0x%lx",
	    md.kernend, md_end);
}

/* §1.2: {0, 640K}, {1M, lowmem-1M}, [{4G, highmem}], all type 1. */
static void check_smap(void)
{
	const struct md_rec *r = md_find(&md.files[0], MD(MODINFOMD_SMAP));
	struct smap {
		u64 base, length;
		u32 type;
	} __attribute__((packed));

	check_begin("smap: SMAP record present (20-byte entries)");
	if (!r || r->size == 0 || r->size % 20) {
		check_fail("%s", r ? "bad size" : "missing");
		return;
	}
	check_pass();

	const struct smap *e = (const struct smap *)r->data;
	u32 n = r->size / 20;
	check_begin("smap: base memory {0, 0xa0000} then extended memory from 0x100000");
	check_result(n >= 2 && e[0].base == 0 && e[0].length == 0xa0000 && e[0].type == 1 &&
	    e[1].base == 0x100000 && e[1].type == 1,
	    "%u entries, first {0x%lx, 0x%lx, %u}", n, e[0].base, e[0].length, e[0].type);

	u64 mem;
	check_begin("smap: entries exactly as computed from test.memsize");
	if (kenv_get_num("test.memsize", &mem) != 1) {
		check_skip("test.memsize not set");
		return;
	}
	u64 lowmem = mem > (3UL << 30) ? 3UL << 30 : mem;
	u64 highmem = mem - lowmem;
	struct smap want[3] = {
		{0, 0xa0000, 1},
		{0x100000, lowmem - 0x100000, 1},
		{1UL << 32, highmem, 1},
	};
	u32 nwant = highmem ? 3 : 2;
	if (n != nwant) {
		check_fail("%u entries, want %u", n, nwant);
		return;
	}
	for (u32 i = 0; i < n; i++) {
		if (e[i].base != want[i].base || e[i].length != want[i].length ||
		    e[i].type != want[i].type) {
			check_fail("entry %u {0x%lx, 0x%lx, %u}, want {0x%lx, 0x%lx, %u}", i,
			    e[i].base, e[i].length, e[i].type, want[i].base, want[i].length,
			    want[i].type);
			return;
		}
	}
	check_pass();

	check_begin("layout: kernend inside low memory (test.memsize)");
	check_result(md.kernend <= lowmem, "kernend 0x%lx lowmem 0x%lx", md.kernend, lowmem);
}

void metadata_checks(void)
{
	if (no_loader) {
		check_begin("metadata: preload metadata");
		check_skip("no loader hand-off (multiboot entry)");
		return;
	}
	check_records();
	if (!md.ok || !md.nfiles)
		return;
	check_layout();
	check_smap();
}
