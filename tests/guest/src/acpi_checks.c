/*
 * ACPI tables and the MP table (bhyve-platform.md §5) — test.acpi=1.
 *
 * Generic part (also meaningful under QEMU): the RSDP is found the way a
 * kernel finds it (0xE0000-0xFFFFF, 16-byte steps), both RSDP checksums,
 * RSDT/XSDT, every table's signature, length and checksum, the DSDT and
 * FACS reached through the FADT, the MADT/HPET structure, the MP floating
 * pointer.  bhyve-specific values (addresses, OEM IDs, FADT blocks, MADT
 * entries, HPET/MCFG contents, MP table entries) are SKIP on the multiboot
 * path.
 */
#include "io.h"

struct acpi_tables acpi;

/* ACPI header offsets */
#define H_LEN 4
#define H_REV 8
#define H_OEMID 10
#define H_OEMREV 24
#define H_SIZE 36

static u8 sum8(const u8 *p, u64 n)
{
	u8 s = 0;
	while (n--)
		s += *p++;
	return s;
}

/* A table header at phys, mapped for its whole length (NULL if it is out of
 * the low GiB or its length is absurd). */
static const u8 *table_at(u64 phys)
{
	const u8 *h = phys ? phys_ptr(phys, H_SIZE) : NULL;
	if (!h || le32(h + H_LEN) < H_SIZE || le32(h + H_LEN) > (1 << 20))
		return NULL;
	return phys_ptr(phys, le32(h + H_LEN));
}

static int sig_is(const u8 *t, const char *sig) { return t && memcmp(t, sig, 4) == 0; }

/* Root table entries: XSDT (8-byte) if valid, else RSDT (4-byte). */
static u32 root_count(const u8 *root, int wide) { return (le32(root + H_LEN) - H_SIZE) / (wide ? 8 : 4); }
static u64 root_entry(const u8 *root, int wide, u32 i)
{
	return wide ? le64(root + H_SIZE + 8 * i) : le32(root + H_SIZE + 4 * i);
}

int acpi_locate(void)
{
	if (acpi.scanned)
		return acpi.rsdp != NULL;
	acpi.scanned = 1;
	for (u64 p = 0xE0000; p < 0x100000; p += 16) {
		const u8 *r = phys_ptr(p, 36);
		if (memcmp(r, "RSD PTR ", 8) == 0) {
			acpi.rsdp = r;
			acpi.rsdp_phys = p;
			break;
		}
	}
	if (!acpi.rsdp)
		return 0;
	const u8 *rsdt = table_at(le32(acpi.rsdp + 16));
	acpi.rsdt = sig_is(rsdt, "RSDT") ? rsdt : NULL;
	if (acpi.rsdp[15] >= 2) {
		const u8 *xsdt = table_at(le64(acpi.rsdp + 24));
		acpi.xsdt = sig_is(xsdt, "XSDT") ? xsdt : NULL;
	}
	const u8 *root = acpi.xsdt ? acpi.xsdt : acpi.rsdt;
	int wide = acpi.xsdt != NULL;
	for (u32 i = 0; root && i < root_count(root, wide); i++) {
		const u8 *t = table_at(root_entry(root, wide, i));
		if (sig_is(t, "FACP") && !acpi.fadt)
			acpi.fadt = t;
		else if (sig_is(t, "APIC") && !acpi.madt)
			acpi.madt = t;
		else if (sig_is(t, "HPET") && !acpi.hpet)
			acpi.hpet = t;
		else if (sig_is(t, "MCFG") && !acpi.mcfg)
			acpi.mcfg = t;
	}
	if (acpi.fadt) {
		u32 len = le32(acpi.fadt + H_LEN);
		u64 dsdt = len >= 148 && le64(acpi.fadt + 140) ? le64(acpi.fadt + 140) : le32(acpi.fadt + 40);
		u64 facs = len >= 140 && le64(acpi.fadt + 132) ? le64(acpi.fadt + 132) : le32(acpi.fadt + 36);
		acpi.dsdt = table_at(dsdt);
		acpi.facs = facs ? phys_ptr(facs, 64) : NULL;
	}
	return 1;
}

/* MADT entries from offset 44: {type, length, ...} */
int madt_lapics(u8 *ids, u32 max)
{
	const u8 *m = acpi.madt;
	int n = 0;
	if (!m)
		return -1;
	for (u32 off = 44; off + 2 <= le32(m + H_LEN) && m[off + 1] >= 2; off += m[off + 1])
		if (m[off] == 0 && m[off + 1] == 8 && (le32(m + off + 4) & 1)) {
			if ((u32)n < max)
				ids[n] = m[off + 3];
			n++;
		}
	return n;
}

/* ---- MP table (MP spec 1.4; §5.8) ---- */

static const u8 *mp_floating(u64 *phys)
{
	for (u64 p = 0xF0000; p < 0x100000; p += 16) {
		const u8 *f = phys_ptr(p, 16);
		if (memcmp(f, "_MP_", 4) == 0) {
			*phys = p;
			return f;
		}
	}
	return NULL;
}

static const u8 *mp_config(const u8 *fp)
{
	const u8 *c = fp && le32(fp + 4) ? phys_ptr(le32(fp + 4), 44) : NULL;
	if (!c || memcmp(c, "PCMP", 4) != 0)
		return NULL;
	return phys_ptr(le32(fp + 4), le16(c + 4));
}

/* Walks the base entries; returns 0 if one has an unknown type. */
static int mp_walk(const u8 *c, void (*fn)(const u8 *e, void *arg), void *arg)
{
	static const u8 size[5] = {20, 8, 8, 8, 8};
	u32 off = 44, end = le16(c + 4);
	for (u32 i = 0; i < le16(c + 34); i++) {
		if (off >= end || c[off] > 4)
			return 0;
		if (fn)
			fn(c + off, arg);
		off += size[c[off]];
	}
	return off == end;
}

struct cpu_list {
	u8 *ids;
	u32 max;
	int n, bsp_ok;
};

static void mp_cpu(const u8 *e, void *arg)
{
	struct cpu_list *l = arg;
	if (e[0] != 0 || !(e[3] & 1))
		return;
	if ((u32)l->n < l->max)
		l->ids[l->n] = e[1];
	/* BSP flag exactly on the entry of APIC ID 0 */
	if (((e[3] & 2) != 0) != (e[1] == 0))
		l->bsp_ok = 0;
	l->n++;
}

int mptable_cpus(u8 *ids, u32 max)
{
	u64 p;
	const u8 *c = mp_config(mp_floating(&p));
	struct cpu_list l = {ids, max, 0, 1};
	if (!c || !mp_walk(c, mp_cpu, &l))
		return -1;
	return l.n;
}

/* ---- checks ---- */

static void check_rsdp(void)
{
	check_begin("acpi: RSDP found scanning 0xE0000-0xFFFFF on 16-byte boundaries");
	if (!acpi_locate()) {
		check_fail("no \"RSD PTR \" signature");
		return;
	}
	check_pass();
	kprintf("# RSDP at 0x%lx revision %u\n", acpi.rsdp_phys, acpi.rsdp[15]);
	if (check_begin_bhyve("acpi: RSDP at 0xF2400, OEM ID \"BHYVE \""))
		check_result(acpi.rsdp_phys == 0xF2400 && memcmp(acpi.rsdp + 9, "BHYVE ", 6) == 0,
		    "at 0x%lx", acpi.rsdp_phys);
	check_begin("acpi: RSDP checksum (first 20 bytes)");
	check_result(sum8(acpi.rsdp, 20) == 0, "sum 0x%x", sum8(acpi.rsdp, 20));
	check_begin("acpi: RSDP revision 2, length 36, extended checksum");
	check_result(acpi.rsdp[15] == 2 && le32(acpi.rsdp + 20) == 36 && sum8(acpi.rsdp, 36) == 0,
	    "revision %u length %u sum 0x%x", acpi.rsdp[15], le32(acpi.rsdp + 20), sum8(acpi.rsdp, 36));
}

/* Signature of printable upper-case letters/digits/underscore, checksum,
 * length within the mapped range. */
static int table_ok(const u8 *t, const char *sig, u32 minlen)
{
	if (!t) {
		check_fail("missing or unmappable");
		return 0;
	}
	for (int i = 0; i < 4; i++)
		if (!((t[i] >= 'A' && t[i] <= 'Z') || (t[i] >= '0' && t[i] <= '9') || t[i] == '_')) {
			check_fail("bad signature byte 0x%x at %d", t[i], i);
			return 0;
		}
	if (sig && memcmp(t, sig, 4) != 0) {
		check_fail("signature %c%c%c%c, want %s", t[0], t[1], t[2], t[3], sig);
		return 0;
	}
	if (le32(t + H_LEN) < minlen) {
		check_fail("length %u < %u", le32(t + H_LEN), minlen);
		return 0;
	}
	if (sum8(t, le32(t + H_LEN)) != 0) {
		check_fail("checksum: sum 0x%x over %u bytes", sum8(t, le32(t + H_LEN)), le32(t + H_LEN));
		return 0;
	}
	return 1;
}

static void check_roots(void)
{
	check_begin("acpi: RSDT signature, checksum, revision 1");
	if (table_ok(table_at(le32(acpi.rsdp + 16)), "RSDT", H_SIZE))
		check_result(acpi.rsdt[H_REV] == 1, "revision %u", acpi.rsdt[H_REV]);
	check_begin("acpi: XSDT signature, checksum, revision 1");
	if (table_ok(acpi.rsdp[15] >= 2 ? table_at(le64(acpi.rsdp + 24)) : NULL, "XSDT", H_SIZE))
		check_result(acpi.xsdt[H_REV] == 1, "revision %u", acpi.xsdt[H_REV]);
	if (!acpi.rsdt || !acpi.xsdt)
		return;
	check_begin("acpi: RSDT and XSDT list the same tables in the same order");
	u32 n = root_count(acpi.rsdt, 0);
	int same = n == root_count(acpi.xsdt, 1);
	for (u32 i = 0; same && i < n; i++)
		same = root_entry(acpi.rsdt, 0, i) == root_entry(acpi.xsdt, 1, i);
	check_result(same, "RSDT %u entries, XSDT %u", n, root_count(acpi.xsdt, 1));
}

/* Every table listed, then the DSDT; FACS has no checksum. */
static void check_each_table(void)
{
	const u8 *root = acpi.xsdt ? acpi.xsdt : acpi.rsdt;
	int wide = acpi.xsdt != NULL;
	char sigs[64];
	u32 ns = 0;
	if (!root)
		return;
	for (u32 i = 0; i < root_count(root, wide); i++) {
		u64 p = root_entry(root, wide, i);
		const u8 *t = table_at(p);
		check_begin("acpi: table %u at 0x%lx: signature, length, checksum", i, p);
		if (!table_ok(t, NULL, H_SIZE))
			continue;
		check_pass();
		kprintf("# table %u: %c%c%c%c length %u revision %u\n", i, t[0], t[1], t[2], t[3],
		    le32(t + H_LEN), t[H_REV]);
		if (ns + 5 < sizeof(sigs)) {
			memcpy(sigs + ns, t, 4);
			sigs[ns + 4] = ' ';
			ns += 5;
		}
	}
	sigs[ns ? ns - 1 : 0] = 0;
	check_begin("acpi: root table lists FACP, APIC, HPET, MCFG");
	check_result(acpi.fadt && acpi.madt && acpi.hpet && acpi.mcfg, "lists: %s", sigs);
	if (check_begin_bhyve("acpi: root table order FACP APIC HPET MCFG [SPCR] (basl creation order)"))
		check_result(memcmp(sigs, "FACP APIC HPET MCFG", 19) == 0 &&
		    (sigs[19] == 0 || strcmp(sigs + 19, " SPCR") == 0), "lists: %s", sigs);
	if (check_begin_bhyve("acpi: OEM ID \"BHYVE \", OEM revision 1 and bhyve's revisions (FADT 5, DSDT 2, others 1)")) {
		const u8 *all[] = {acpi.rsdt, acpi.xsdt, acpi.fadt, acpi.madt, acpi.hpet, acpi.mcfg, acpi.dsdt};
		for (u32 i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
			const u8 *t = all[i];
			u8 rev = t == acpi.fadt ? 5 : t == acpi.dsdt ? 2 : 1;
			if (t && (memcmp(t + H_OEMID, "BHYVE ", 6) != 0 || le32(t + H_OEMREV) != 1 || t[H_REV] != rev)) {
				check_fail("%c%c%c%c: OEM ID %c%c%c%c%c%c rev %u oemrev %u", t[0], t[1], t[2], t[3],
				    t[10], t[11], t[12], t[13], t[14], t[15], t[H_REV], le32(t + H_OEMREV));
				return;
			}
		}
		check_pass();
	}
}

/* Generic Address Structure at off: {space, width, offset, access, u64} */
static int gas_is(const u8 *g, u8 space, u8 width, u8 access, u64 addr)
{
	return g[0] == space && g[1] == width && g[2] == 0 && g[3] == access && le64(g + 4) == addr;
}

static void check_fadt(void)
{
	const u8 *f = acpi.fadt;
	if (!f)
		return;
	u32 len = le32(f + H_LEN);
	u64 xfacs = len >= 140 ? le64(f + 132) : 0, xdsdt = len >= 148 ? le64(f + 140) : 0;
	check_begin("acpi: FADT DSDT/FACS pointers set; where both the 32-bit and X_ fields are, they agree");
	check_result((le32(f + 40) || xdsdt) && (le32(f + 36) || xfacs) &&
	    (!le32(f + 40) || !xdsdt || le32(f + 40) == xdsdt) && (!le32(f + 36) || !xfacs || le32(f + 36) == xfacs),
	    "DSDT 0x%x/0x%lx FACS 0x%x/0x%lx", le32(f + 40), xdsdt, le32(f + 36), xfacs);
	if (check_begin_bhyve("acpi: FADT length >= 268 (ACPI 5+), both 32-bit and X_ DSDT/FACS pointers set"))
		check_result(len >= 268 && le32(f + 40) && xdsdt && le32(f + 36) && xfacs,
		    "length %u DSDT 0x%x/0x%lx FACS 0x%x/0x%lx", len, le32(f + 40), xdsdt, le32(f + 36), xfacs);

	check_begin("acpi: DSDT (via FADT) signature, checksum; defines \\_S5_");
	if (table_ok(acpi.dsdt, "DSDT", H_SIZE)) {
		u32 n = le32(acpi.dsdt + H_LEN), i;
		for (i = H_SIZE; i + 4 <= n && memcmp(acpi.dsdt + i, "_S5_", 4) != 0; i++)
			;
		check_result(i + 4 <= n, "no _S5_ name in %u bytes of AML", n);
	}
	check_begin("acpi: FACS (via FADT) signature, length 64, 64-byte aligned");
	if (!acpi.facs)
		check_fail("no FACS pointer");
	else
		check_result(memcmp(acpi.facs, "FACS", 4) == 0 && le32(acpi.facs + 4) == 64 &&
		    !(phys_of(acpi.facs) & 63), "at 0x%lx sig 0x%x length %u",
		    phys_of(acpi.facs), le32(acpi.facs), le32(acpi.facs + 4));
	if (acpi.facs && check_begin_bhyve("acpi: FACS version 2; hardware signature, waking vectors, global lock, flags 0"))
		check_result(acpi.facs[32] == 2 && le32(acpi.facs + 8) == 0 && le32(acpi.facs + 12) == 0 &&
		    le32(acpi.facs + 16) == 0 && le32(acpi.facs + 20) == 0 && le64(acpi.facs + 24) == 0,
		    "version %u hwsig 0x%x lock 0x%x flags 0x%x", acpi.facs[32], le32(acpi.facs + 8),
		    le32(acpi.facs + 16), le32(acpi.facs + 20));

	/* §3.4, §5.4 */
	if (check_begin_bhyve("acpi: FADT PM timer block 0x408 length 4, X_PM_TMR_BLK SystemIO 32-bit dword, TMR_VAL_EXT"))
		check_result(le32(f + 76) == 0x408 && f[91] == 4 && len >= 220 && gas_is(f + 208, 1, 32, 3, 0x408) &&
		    (le32(f + 112) & (1 << 8)), "PM_TMR_BLK 0x%x len %u flags 0x%x", le32(f + 76), f[91], le32(f + 112));
	if (check_begin_bhyve("acpi: FADT PM1a_EVT 0x400/4, PM1a_CNT 0x404/2 (and X_ GAS), no PM1b/PM2"))
		check_result(le32(f + 56) == 0x400 && f[88] == 4 && le32(f + 64) == 0x404 && f[89] == 2 &&
		    le32(f + 60) == 0 && le32(f + 68) == 0 && le32(f + 72) == 0 && len >= 184 &&
		    gas_is(f + 148, 1, 32, 2, 0x400) && gas_is(f + 172, 1, 16, 2, 0x404),
		    "PM1a_EVT 0x%x/%u PM1a_CNT 0x%x/%u", le32(f + 56), f[88], le32(f + 64), f[89]);
	if (check_begin_bhyve("acpi: FADT SCI_INT 9, SMI_CMD 0xb2 (enable 0xa0, disable 0xa1), GPE0 0x40c/2"))
		check_result(le16(f + 46) == 9 && le32(f + 48) == 0xb2 && f[52] == 0xa0 && f[53] == 0xa1 &&
		    le32(f + 80) == 0x40c && f[92] == 2, "SCI %u SMI_CMD 0x%x 0x%x/0x%x GPE0 0x%x/%u",
		    le16(f + 46), le32(f + 48), f[52], f[53], le32(f + 80), f[92]);
	if (check_begin_bhyve("acpi: FADT flags 0x81525, IAPC_BOOT_ARCH 0x14, CENTURY 0x32, reset 0xcf9 <- 6"))
		check_result(le32(f + 112) == 0x81525 && le16(f + 109) == 0x14 && f[108] == 0x32 &&
		    gas_is(f + 116, 1, 8, 1, 0xcf9) && f[128] == 6, "flags 0x%x boot_arch 0x%x century 0x%x reset 0x%lx/%u",
		    le32(f + 112), le16(f + 109), f[108], le64(f + 120), f[128]);
}

/* Walks the MADT; fills counts and checks entry lengths. */
struct madt_walk {
	int bad, ncpu, nioapic, nnmi, nover, cpu_ids_ok;
	u32 ioapic_addr, ioapic_gsi;
	u8 ioapic_id;
	int over0, over9, nmi_ok;
};

static void walk_madt(const u8 *m, struct madt_walk *w)
{
	static const u8 want_len[] = {8, 12, 10, 8, 6};
	memset(w, 0, sizeof(*w));
	w->cpu_ids_ok = 1;
	u32 off = 44, end = le32(m + H_LEN);
	for (; off + 2 <= end; off += m[off + 1]) {
		const u8 *e = m + off;
		if (e[1] < 2 || off + e[1] > end || (e[0] < 5 && e[1] != want_len[e[0]])) {
			w->bad = 1;
			return;
		}
		switch (e[0]) {
		case 0:
			if (le32(e + 4) & 1) {
				if (e[2] != w->ncpu || e[3] != w->ncpu)
					w->cpu_ids_ok = 0;
				w->ncpu++;
			}
			break;
		case 1:
			w->nioapic++;
			w->ioapic_id = e[2];
			w->ioapic_addr = le32(e + 4);
			w->ioapic_gsi = le32(e + 8);
			break;
		case 2:
			w->nover++;
			if (e[2] == 0 && e[3] == 0 && le32(e + 4) == 2 && le16(e + 8) == 5)
				w->over0 = 1;
			if (e[2] == 0 && e[3] == 9 && le32(e + 4) == 9 && le16(e + 8) == 0xf)
				w->over9 = 1;
			break;
		case 4:
			w->nnmi++;
			w->nmi_ok = e[2] == 0xff && le16(e + 3) == 5 && e[5] == 1;
			break;
		}
	}
	if (off != end)
		w->bad = 1;
}

static void check_madt(void)
{
	const u8 *m = acpi.madt;
	struct madt_walk w;
	if (!m)
		return;
	walk_madt(m, &w);
	check_begin("acpi: MADT local APIC address 0xfee00000, PCAT_COMPAT, entries well-formed");
	check_result(!w.bad && le32(m + 36) == 0xfee00000 && (le32(m + 40) & 1),
	    "address 0x%x flags 0x%x%s", le32(m + 36), le32(m + 40), w.bad ? ", bad entry length" : "");
	check_begin("acpi: MADT one I/O APIC at 0xfec00000, GSI base 0");
	check_result(w.nioapic == 1 && w.ioapic_addr == 0xfec00000 && w.ioapic_gsi == 0,
	    "%d I/O APICs, last at 0x%x GSI %u", w.nioapic, w.ioapic_addr, w.ioapic_gsi);
	kprintf("# MADT: %d enabled local APICs, %d overrides, %d NMI entries\n", w.ncpu, w.nover, w.nnmi);
	if (check_begin_bhyve("acpi: MADT local APIC i has UID i and APIC ID i; I/O APIC ID 0"))
		check_result(w.cpu_ids_ok && w.ncpu > 0 && w.ioapic_id == 0, "ids %s, I/O APIC ID %u",
		    w.cpu_ids_ok ? "ok" : "not 0..n-1", w.ioapic_id);
	if (check_begin_bhyve("acpi: MADT overrides IRQ0->GSI2 (flags 5), IRQ9->GSI9 (flags 0xf); NMI UID 0xff LINT1 flags 5"))
		check_result(w.nover == 2 && w.over0 && w.over9 && w.nnmi == 1 && w.nmi_ok,
		    "%d overrides (0->2 %s, 9->9 %s), %d NMI entries (%s)", w.nover, w.over0 ? "ok" : "missing",
		    w.over9 ? "ok" : "missing", w.nnmi, w.nmi_ok ? "ok" : "wrong");
}

static void check_hpet_mcfg(void)
{
	const u8 *h = acpi.hpet, *m = acpi.mcfg;
	if (h) {
		check_begin("acpi: HPET table length 56, base address system memory 0xfed00000");
		check_result(le32(h + H_LEN) >= 56 && h[40] == 0 && le64(h + 44) == 0xfed00000,
		    "length %u space %u address 0x%lx", le32(h + H_LEN), h[40], le64(h + 44));
		if (check_begin_bhyve("acpi: HPET block ID 0x80860701, number 0, min tick 0, flags 1 (4K protection)"))
			check_result(le32(h + 36) == 0x80860701 && h[52] == 0 && le16(h + 53) == 0 && h[55] == 1,
			    "ID 0x%x number %u min tick %u flags 0x%x", le32(h + 36), h[52], le16(h + 53), h[55]);
	}
	if (m && check_begin_bhyve("acpi: MCFG one allocation: 0xe0000000, segment 0, buses 0-255"))
		check_result(le32(m + H_LEN) == 60 && le64(m + 44) == 0xe0000000 && le16(m + 52) == 0 &&
		    m[54] == 0 && m[55] == 255, "length %u base 0x%lx segment %u buses %u-%u",
		    le32(m + H_LEN), le64(m + 44), le16(m + 52), m[54], m[55]);
}

/* mptbl.c's MPEP_SIG: family 6, model 26, stepping 5 combined as
 * (6 << 8 | 26 << 4 | 5); the model overflows its nibble, so this is 0x7a5,
 * not the 0x6a5 bhyve-platform.md §5.8 states. */
#define MPEP_SIG (6 << 8 | 26 << 4 | 5)

struct mp_counts {
	int cpu, bus_pci0, bus_isa1, ioapic_ok, ioint, lint;
};

static void mp_count(const u8 *e, void *arg)
{
	struct mp_counts *c = arg;
	switch (e[0]) {
	case 0:
		c->cpu += (e[3] & 1) && e[2] == 0x10 && le32(e + 4) == MPEP_SIG && le32(e + 8) == 0xbfebfbff;
		break;
	case 1:
		c->bus_pci0 |= e[1] == 0 && memcmp(e + 2, "PCI   ", 6) == 0;
		c->bus_isa1 |= e[1] == 1 && memcmp(e + 2, "ISA   ", 6) == 0;
		break;
	case 2:
		c->ioapic_ok = e[1] == 0 && e[2] == 0x11 && (e[3] & 1) && le32(e + 4) == 0xfec00000;
		break;
	case 3:
		c->ioint++;
		break;
	case 4:
		c->lint++;
		break;
	}
}

static void check_mptable(void)
{
	u64 fp_phys = 0;
	const u8 *fp = mp_floating(&fp_phys), *c;
	check_begin("mptable: floating pointer \"_MP_\" in 0xF0000-0xFFFFF, checksum, length 1, revision 4");
	if (!fp) {
		check_fail("not found");
		return;
	}
	check_result(sum8(fp, 16) == 0 && fp[8] == 1 && fp[9] == 4 && fp[11] == 0,
	    "at 0x%lx sum 0x%x length %u revision %u feature1 %u", fp_phys, sum8(fp, 16), fp[8], fp[9], fp[11]);
	if (check_begin_bhyve("mptable: floating pointer at 0xF0000, configuration table at 0xF0010"))
		check_result(fp_phys == 0xF0000 && le32(fp + 4) == 0xF0010, "at 0x%lx -> 0x%x", fp_phys, le32(fp + 4));
	check_begin("mptable: \"PCMP\" header checksum, local APIC 0xfee00000, entries well-formed");
	c = mp_config(fp);
	if (!c) {
		check_fail("no PCMP table at 0x%x", le32(fp + 4));
		return;
	}
	check_result(sum8(c, le16(c + 4)) == 0 && le32(c + 36) == 0xfee00000 && mp_walk(c, NULL, NULL),
	    "sum 0x%x local APIC 0x%x", sum8(c, le16(c + 4)), le32(c + 36));
	u8 ids[64];
	kprintf("# MP table at 0x%x: %u bytes, %u entries, %d enabled processors\n", le32(fp + 4),
	    le16(c + 4), le16(c + 34), mptable_cpus(ids, 64));
	if (check_begin_bhyve("mptable: OEM \"BHyVe   \"/\"Hypervisor  \", CPUs rev 0x10 sig 0x7a5, BSP = APIC 0, buses PCI 0 + ISA 1, I/O APIC 0 v0x11, 16 ISA + LINT entries")) {
		struct mp_counts n = {0};
		struct cpu_list l = {ids, 64, 0, 1};
		mp_walk(c, mp_count, &n);
		mp_walk(c, mp_cpu, &l);
		check_result(c[6] == 4 && memcmp(c + 8, "BHyVe   ", 8) == 0 && memcmp(c + 16, "Hypervisor  ", 12) == 0 &&
		    n.cpu == l.n && l.bsp_ok && n.bus_pci0 && n.bus_isa1 && n.ioapic_ok && n.ioint >= 16 && n.lint == 2,
		    "rev %u, %d/%d CPUs ok, BSP flag %s, buses %d/%d, I/O APIC %s, %d I/O int, %d local int",
		    c[6], n.cpu, l.n, l.bsp_ok ? "ok" : "wrong", n.bus_pci0, n.bus_isa1,
		    n.ioapic_ok ? "ok" : "wrong", n.ioint, n.lint);
	}
}

void acpi_checks(void)
{
	if (!check_requested("test.acpi", "acpi: RSDP, RSDT/XSDT, FADT, MADT, HPET, MCFG, DSDT, FACS, MP table"))
		return;
	check_rsdp();
	if (acpi.rsdp) {
		check_roots();
		check_each_table();
		check_fadt();
		check_madt();
		check_hpet_mcfg();
	}
	check_mptable();
}
