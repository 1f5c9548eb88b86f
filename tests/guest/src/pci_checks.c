/*
 * PCI bus 0 (bhyve-platform.md §3.2, §4.1-§4.4) — test.pci=SPEC.
 *
 * SPEC lists every function that must exist on bus 0, as
 * "slot.func=vendor:device" items separated by commas, IDs in hex:
 *   test.pci=0.0=1275:1275,31.0=8086:7000,2.0=131f:2000
 * All 32 slots x 8 functions are probed through configuration mechanism #1
 * (0xCF8/0xCFC); a function not in SPEC is a failure.  Class codes are
 * checked where the document gives them (table below).
 */
#include "io.h"

#define CFG_ADDR 0xCF8
#define CFG_DATA 0xCFC

static u32 cfg_rd32(u32 slot, u32 func, u32 reg)
{
	outl(CFG_ADDR, 0x80000000u | slot << 11 | func << 8 | (reg & 0xfc));
	return inl(CFG_DATA);
}

static u8 cfg_rd8(u32 slot, u32 func, u32 reg)
{
	return (u8)(cfg_rd32(slot, func, reg) >> (8 * (reg & 3)));
}

/* Class/subclass the document gives per vendor:device (sub -1: not given). */
static const struct {
	u16 vendor, device;
	u8 class;
	int sub;
	const char *what;
} known[] = {
	{0x1275, 0x1275, 0x06, 0x00, "hostbridge (4.2)"},
	{0x1022, 0x7432, 0x06, 0x00, "amd_hostbridge (4.2)"},
	{0x8086, 0x7000, 0x06, 0x01, "lpc (4.3)"},
	{0x131f, 0x2000, 0x07, 0x00, "uart (4.4)"},
	{0x1af4, 0x1000, 0x02, -1, "virtio-net (4.5)"},
	{0x1af4, 0x1001, 0x01, -1, "virtio-blk (4.5)"},
	{0x1af4, 0x1003, 0x07, -1, "virtio-console (4.5)"},
	{0x1af4, 0x1005, 0x10, -1, "virtio-rnd (4.5)"},
	{0x8086, 0x2821, 0x01, 0x06, "ahci (4.8)"},
	{0xfb5d, 0x40fb, 0x03, 0x00, "fbuf (4.8)"},
};

#define MAXWANT 32
struct want {
	u32 slot, func;
	u16 vendor, device;
};

/* "S.F=VVVV:DDDD" -> w; 0 if malformed */
static int parse_item(const char *item, struct want *w)
{
	char s[8], f[8], v[8], d[8];
	u32 n = 0;
	const char *p = item;
	char *outs[4] = {s, f, v, d};
	const char seps[4] = {'.', '=', ':', 0};
	u64 val[4];
	for (int k = 0; k < 4; k++) {
		n = 0;
		while (*p && *p != seps[k] && n < 7)
			outs[k][n++] = *p++;
		outs[k][n] = 0;
		if (*p != seps[k])
			return 0;
		if (*p)
			p++;
		if (!parse_u64(outs[k], k < 2 ? 10 : 16, &val[k]))
			return 0;
	}
	if (val[0] > 31 || val[1] > 7 || val[2] > 0xffff || val[3] > 0xffff)
		return 0;
	*w = (struct want){(u32)val[0], (u32)val[1], (u16)val[2], (u16)val[3]};
	return 1;
}

static void check_mechanism(void)
{
	check_begin("pci: CONFIG_ADDRESS 0xCF8 reads back a 32-bit write");
	outl(CFG_ADDR, 0x80000000u | 31 << 11 | 7 << 8 | 0x3c);
	u32 a = inl(CFG_ADDR);
	check_result(a == (0x80000000u | 31 << 11 | 7 << 8 | 0x3c), "read 0x%x", a);
	check_begin("pci: CONFIG_DATA reads all-ones with the enable bit clear");
	outl(CFG_ADDR, 0);
	u32 d = inl(CFG_DATA);
	check_result(d == 0xffffffff, "read 0x%x for 0:0.0 reg 0", d);
}

/* Checks the config space of the functions the document describes in
 * detail: no BARs and no INTx on the bridges, BAR0 I/O + INTx on the UART. */
static void check_details(u32 s, u32 f, u16 vendor, u16 device)
{
	u32 cmd = cfg_rd32(s, f, 0x04) & 0xffff, bar0 = cfg_rd32(s, f, 0x10);
	u8 hdr = cfg_rd8(s, f, 0x0e) & 0x7f, line = cfg_rd8(s, f, 0x3c), pin = cfg_rd8(s, f, 0x3d);
	if ((vendor == 0x1275 && device == 0x1275) || (vendor == 0x8086 && device == 0x7000)) {
		if (!check_begin_bhyve("pci: 0:%u.%u %04x:%04x: header type 0, command 0x4 (bus master), no BARs, int line 0xff pin 0",
		    s, f, vendor, device))
			return;
		int bars = 0;
		for (u32 r = 0x10; r < 0x28; r += 4)
			bars |= cfg_rd32(s, f, r) != 0;
		check_result(hdr == 0 && cmd == 0x4 && !bars && line == 0xff && pin == 0,
		    "header %u command 0x%x BARs %s line 0x%x pin %u", hdr, cmd, bars ? "set" : "0", line, pin);
	}
	if (vendor == 0x1275 && device == 0x1275 && check_begin_bhyve("pci: 0:%u.%u hostbridge: capability list holds PCI Express (type root port)", s, f)) {
		u8 ptr = (cfg_rd32(s, f, 0x04) >> 16) & 0x10 ? cfg_rd8(s, f, 0x34) : 0;
		u32 cap = 0;
		for (int i = 0; i < 16 && ptr >= 0x40; i++, ptr = (u8)(cap >> 8)) {
			cap = cfg_rd32(s, f, ptr & 0xfc);
			if ((cap & 0xff) == 0x10)
				break;
		}
		check_result((cap & 0xff) == 0x10 && ((cap >> 20) & 0xf) == 4,
		    "capability 0x%x (want ID 0x10, port type 4)", cap);
	}
	if (vendor == 0x8086 && device == 0x7000 && check_begin_bhyve("pci: 0:%u.%u lpc: PIRQA-H (0x60-0x63, 0x68-0x6b) disabled (0x80) or a permitted ISA IRQ", s, f)) {
		u32 r0 = cfg_rd32(s, f, 0x60), r1 = cfg_rd32(s, f, 0x68);
		int ok = 1;
		for (int i = 0; i < 8; i++) {
			u8 v = (u8)((i < 4 ? r0 : r1) >> (8 * (i & 3)));
			ok &= v == 0x80 || (v < 16 && ((0xdef8 >> v) & 1));
		}
		check_result(ok, "PIRQ registers 0x%x 0x%x", r0, r1);
	}
	/* A 2013 legacy (-S) UART has BAR0 fixed at COM1's or COM2's port and
	 * its interrupt line on that COM IRQ (§1.5, §4.4). */
	int legacy = (bar0 == 0x3f9 && line == 4) || (bar0 == 0x2f9 && line == 3);
	if (vendor == 0x131f && device == 0x2000 && check_begin_bhyve("pci: 0:%u.%u uart: BAR0 I/O in 0x2000-0xffff, 8-byte aligned (legacy: 0x3f8 line 4 or 0x2f8 line 3), I/O decode on; INTx pin 1-4", s, f))
		check_result((bar0 & 1) && (legacy || ((bar0 & ~3u) >= 0x2000 && (bar0 & ~3u) < 0x10000 && !(bar0 & 4))) &&
		    (cmd & 1) && pin >= 1 && pin <= 4, "BAR0 0x%x command 0x%x pin %u line %u", bar0, cmd, pin, line);
}

/* ECAM (MCFG, §3.2): same IDs as mechanism #1; 0x100 reads 0. */
static void check_ecam(const u32 *ids)
{
	if (!check_begin_bhyve("pci: ECAM at 0xe0000000 reads the same IDs as 0xCF8/0xCFC; offset 0x100 reads 0"))
		return;
	u64 base = (u64)mmio_ptr(0xE0000000UL);
	u32 n = 0;
	for (u32 i = 0; i < 256; i++)
		n += ids[i] != 0xffffffff;
	if (!n) {
		check_fail("no function on bus 0 to compare");
		return;
	}
	for (u32 i = 0; i < 256; i++) {
		u32 e = mmio_rd32(base + ((u64)i << 12));
		if (e != ids[i]) {
			check_fail("0:%u.%u ECAM 0x%x, CF8 0x%x", i >> 3, i & 7, e, ids[i]);
			return;
		}
		if (ids[i] != 0xffffffff && mmio_rd32(base + ((u64)i << 12) + 0x100) != 0) {
			check_fail("0:%u.%u offset 0x100 = 0x%x", i >> 3, i & 7, mmio_rd32(base + ((u64)i << 12) + 0x100));
			return;
		}
	}
	check_pass();
}

void pci_checks(void)
{
	static u32 ids[256];	/* slot*8+func -> vendor|device<<16 */
	struct want want[MAXWANT];
	u32 nwant = 0;
	char item[40];
	const char *spec = kenv_get("test.pci");

	if (!check_requested("test.pci", "pci: bus 0 functions and IDs (test.pci)"))
		return;
	check_begin("pci: test.pci parses (slot.func=vendor:device,...)");
	for (u32 i = 0; list_item(spec, ',', i, item, sizeof(item)); i++) {
		if (nwant == MAXWANT || !parse_item(item, &want[nwant])) {
			check_fail("bad item \"%s\"", item);
			return;
		}
		nwant++;
	}
	check_pass();

	check_mechanism();
	for (u32 i = 0; i < 256; i++)
		ids[i] = cfg_rd32(i >> 3, i & 7, 0);

	for (u32 k = 0; k < nwant; k++) {
		const struct want *w = &want[k];
		u32 id = ids[w->slot * 8 + w->func];
		check_begin("pci: 0:%u.%u is %04x:%04x", w->slot, w->func, w->vendor, w->device);
		check_result(id == ((u32)w->device << 16 | w->vendor), "found %04x:%04x%s", id & 0xffff,
		    id >> 16, id == 0xffffffff ? " (no function)" : "");
		for (u32 j = 0; j < sizeof(known) / sizeof(known[0]) && id != 0xffffffff; j++) {
			if (known[j].vendor != w->vendor || known[j].device != w->device)
				continue;
			u32 cc = cfg_rd32(w->slot, w->func, 0x08);
			u8 cls = cc >> 24, sub = (cc >> 16) & 0xff;
			if (known[j].sub >= 0)
				check_begin("pci: 0:%u.%u %s class %02x/%02x", w->slot, w->func, known[j].what,
				    known[j].class, known[j].sub);
			else
				check_begin("pci: 0:%u.%u %s class %02x", w->slot, w->func, known[j].what, known[j].class);
			check_result(cls == known[j].class && (known[j].sub < 0 || sub == known[j].sub),
			    "class/subclass/prog-if %02x/%02x/%02x", cls, sub, (cc >> 8) & 0xff);
		}
		if (id != 0xffffffff)
			check_details(w->slot, w->func, w->vendor, w->device);
	}

	check_begin("pci: no function on bus 0 besides those in test.pci");
	u32 extra = 0;
	for (u32 i = 0; i < 256 && !extra; i++) {
		if (ids[i] == 0xffffffff)
			continue;
		u32 k;
		for (k = 0; k < nwant && want[k].slot * 8 + want[k].func != i; k++)
			;
		if (k == nwant) {
			extra = 1;
			check_fail("0:%u.%u is %04x:%04x", i >> 3, i & 7, ids[i] & 0xffff, ids[i] >> 16);
		}
	}
	if (!extra)
		check_pass();

	/* PCI: function 0's bit counts; bhyve synthesises it on every function */
	check_begin("pci: header type bit 7 (multifunction) set iff the slot has several functions (%s)",
	    no_loader ? "function 0" : "every function, as bhyve");
	u32 bad = 0;
	for (u32 s = 0; s < 32 && !bad; s++) {
		u32 n = 0;
		for (u32 f = 0; f < 8; f++)
			n += ids[s * 8 + f] != 0xffffffff;
		for (u32 f = 0; f < (no_loader ? 1u : 8u) && !bad; f++)
			if (ids[s * 8 + f] != 0xffffffff && ((cfg_rd8(s, f, 0x0e) & 0x80) != 0) != (n > 1)) {
				bad = 1;
				check_fail("0:%u.%u header type 0x%x, %u functions in the slot", s, f, cfg_rd8(s, f, 0x0e), n);
			}
	}
	if (!bad)
		check_pass();
	check_ecam(ids);
}
