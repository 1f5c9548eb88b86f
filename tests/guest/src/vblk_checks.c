/*
 * Legacy virtio-blk (bhyve-platform.md §4.1, §4.5, §4.6) — test.vblk=S.
 *
 * A minimal polled driver for the device in PCI slot S (function 0):
 *   test.vblk=S                 slot of the virtio-blk function (required)
 *   test.vblk_sectors=N         capacity must be N 512-byte sectors
 *   test.vblk_serial=STR        GET_ID must return STR (else, on bhyve, the
 *                               default BHYVE-XXXX-XXXX-XXXX form)
 *   test.vblk_pattern=SEED      the disk holds vblk_byte(i, SEED) at every
 *                               byte offset i (sectors 0-3 and the last one
 *                               are read and compared)
 *   test.vblk_write=LBA,COUNT,SEED  write COUNT (1-8) sectors at LBA with
 *                               vblk_byte(LBA*512 + j, SEED), FLUSH, read
 *                               back; the test can compare the image after
 *                               bhyve exits
 *   test.vblk_ro=1              the backend is read-only: the write must
 *                               complete with IOERR and change nothing
 *
 * The pattern (mirrored by vblk_pattern() in tests/guest.rs):
 *   v = i ^ i>>8 ^ i>>16 ^ i>>24 ^ i>>32 ^ i>>40   (u64)
 *   byte = (v * 31 + SEED * 101 + 0x5a) mod 256
 *
 * No interrupts: one request at a time (descriptors 0..3), the used ring is
 * polled with a bounded wait.  The ring and buffers are static, 4 KiB
 * aligned, in the BSS (physical = VA - KERNBASE, inside the low GiB).  MSI-X
 * is never enabled, so the device config starts at BAR0 + 20.  A step that
 * the rest depends on failing ends the group after its `not ok`.
 */
#include "io.h"

/* virtio-blk (§4.6) */
#define F_SEG_MAX (1u << 2)
#define F_RO (1u << 5)
#define F_BLK_SIZE (1u << 6)
#define F_FLUSH (1u << 9)
#define F_TOPOLOGY (1u << 10)
#define F_DISCARD (1u << 13)
#define F_INDIRECT (1u << 28)
#define F_BHYVE (F_SEG_MAX | F_BLK_SIZE | F_FLUSH | F_TOPOLOGY | F_INDIRECT)

#define T_IN 0
#define T_OUT 1
#define T_FLUSH 4
#define T_GET_ID 8
#define T_BOGUS 0x100	/* no such request type */
#define S_OK 0
#define S_IOERR 1
#define S_UNSUPP 2

#define MAXQ 256	/* largest queue our ring area holds */
#define MAXSECT 8	/* data buffer: 8 sectors */

/* desc 16*256 = 4096, avail 6+2*256 -> page 2, used 6+8*256 -> page 2-3 */
static u8 ring_area[4 * 4096] __attribute__((aligned(4096)));
static u8 data_buf[MAXSECT * 512] __attribute__((aligned(4096)));
static struct {
	u32 type, ioprio;
	u64 sector;
} req_hdr __attribute__((aligned(16)));
static volatile u8 req_status __attribute__((aligned(16)));

static struct {
	u32 slot;
	u16 io;		/* BAR0 base */
	struct vring q;
	int stuck;		/* a request timed out: stop issuing */
} vb;

static u8 vblk_byte(u64 i, u64 seed)
{
	u64 v = i ^ i >> 8 ^ i >> 16 ^ i >> 24 ^ i >> 32 ^ i >> 40;
	return (u8)(v * 31 + seed * 101 + 0x5a);
}

/* First offset in buf (holding disk bytes from byte offset `off`) that
 * differs from the pattern, or -1. */
static i64 pattern_mismatch(const u8 *buf, u64 off, u64 len, u64 seed)
{
	for (u64 j = 0; j < len; j++)
		if (buf[j] != vblk_byte(off + j, seed))
			return (i64)j;
	return -1;
}

struct seg {
	void *buf;
	u32 len;
	int dev_writes;
};

/*
 * One request: header, nseg data descriptors, status byte, as one chain
 * starting at descriptor 0.  Returns 1 when the used ring returned it
 * (status in *st, -1 if the device never wrote it), else 0 with a reason
 * in err.
 */
static int vblk_request(u32 type, u64 sector, const struct seg *segs, u32 nseg, int *st,
    char *err, u64 errsz)
{
	if (vb.stuck) {
		ksnprintf(err, errsz, "an earlier request never completed");
		return 0;
	}
	req_hdr.type = type;
	req_hdr.ioprio = 0;
	req_hdr.sector = sector;
	req_status = 0xff;
	u32 n = 0;
	vb.q.desc[n] = (struct vring_desc){phys_of(&req_hdr), 16, VRING_DESC_F_NEXT, (u16)(n + 1)};
	n++;
	for (u32 k = 0; k < nseg; k++, n++)
		vb.q.desc[n] = (struct vring_desc){phys_of(segs[k].buf), segs[k].len,
		    (u16)(VRING_DESC_F_NEXT | (segs[k].dev_writes ? VRING_DESC_F_WRITE : 0)), (u16)(n + 1)};
	vb.q.desc[n] = (struct vring_desc){phys_of(&req_status), 1, VRING_DESC_F_WRITE, 0};
	vring_publish(&vb.q, 0);
	outw(vb.io + VIO_QUEUE_NOTIFY, 0);

	/* bounded: ~100 quick polls, then 200 us steps up to ~4 s */
	u32 i;
	for (i = 0; i < 20000 && !vring_used_pending(&vb.q); i++)
		if (i >= 100)
			udelay(200);
	if (!vring_used_pending(&vb.q)) {
		vb.stuck = 1;
		ksnprintf(err, errsz, "no used-ring entry after ~4 s (used idx %u, status byte 0x%x)",
		    vb.q.used[1], req_status);
		return 0;
	}
	u16 now = vb.q.used[1];
	volatile struct vring_used_elem *e = vring_used_elem(&vb.q);
	u32 id = e->id, len = e->len;
	vb.q.used_idx++;
	if (now != vb.q.used_idx) {
		vb.stuck = 1;
		ksnprintf(err, errsz, "used idx went to %u, want %u", now, vb.q.used_idx);
		return 0;
	}
	if (id != 0) {
		vb.stuck = 1;
		ksnprintf(err, errsz, "used element id %u len %u, want id 0 (chain head)", id, len);
		return 0;
	}
	*st = req_status == 0xff ? -1 : req_status;
	return 1;
}

static const char *status_name(int st)
{
	return st == S_OK ? "OK" : st == S_IOERR ? "IOERR" : st == S_UNSUPP ? "UNSUPP" :
	    st < 0 ? "not written" : "unknown";
}

/* Begins nothing: runs one request and reports it (plus a data check by
 * the caller).  Returns 1 if it completed with status `want`. */
static int request_check(u32 type, u64 sector, const struct seg *segs, u32 nseg, int want)
{
	char err[96];
	int st = -1;
	if (!vblk_request(type, sector, segs, nseg, &st, err, sizeof(err))) {
		check_fail("%s", err);
		return 0;
	}
	if (st != want) {
		check_fail("status %d (%s), want %d (%s)", st, status_name(st), want, status_name(want));
		return 0;
	}
	return 1;
}

/* "LBA,COUNT,SEED" */
static int parse_write(const char *s, u64 *lba, u64 *count, u64 *seed)
{
	char item[24];
	return list_item(s, ',', 0, item, sizeof(item)) && parse_u64(item, 0, lba) &&
	    list_item(s, ',', 1, item, sizeof(item)) && parse_u64(item, 0, count) &&
	    list_item(s, ',', 2, item, sizeof(item)) && parse_u64(item, 0, seed) &&
	    !list_item(s, ',', 3, item, sizeof(item)) && *count >= 1 && *count <= MAXSECT;
}

static int setup(void)
{
	if (!vio_function("vblk", 0x1001, &vb.slot))
		return 0;

	u32 cc = pci0_rd32(vb.slot, 0x08), sub = pci0_rd32(vb.slot, 0x2c), intr = pci0_rd32(vb.slot, 0x3c);
	u8 pin = (u8)(intr >> 8);
	check_begin("vblk: class 01 (storage), revision 0, subsystem 1af4:0002, INTx pin 1-4");
	check_result(cc >> 24 == 0x01 && (cc & 0xff) == 0 && sub == 0x00021af4 && pin >= 1 && pin <= 4,
	    "class %02x/%02x/%02x rev %u subsystem %04x:%04x pin %u", cc >> 24, (cc >> 16) & 0xff,
	    (cc >> 8) & 0xff, cc & 0xff, sub & 0xffff, sub >> 16, pin);

	u32 cmd = pci0_rd32(vb.slot, 0x04) & 0xffff;
	pci0_wr16(vb.slot, 0x04, (u16)(cmd | 0x5));	/* I/O decode, bus master */
	u32 cmd2 = pci0_rd32(vb.slot, 0x04) & 0xffff;
	check_begin("vblk: command register takes I/O decode + bus master (0x%x -> 0x%x)", cmd, cmd | 5);
	check_result((cmd2 & 5) == 5, "reads 0x%x", cmd2);

	u32 bar0 = pci0_rd32(vb.slot, 0x10);
	check_begin("vblk: BAR0 is I/O in 0x2000-0xffff");
	if (!(bar0 & 1) || (bar0 & ~3u) < 0x2000 || (bar0 & ~3u) > 0xffff) {
		check_fail("BAR0 0x%x", bar0);
		return 0;
	}
	check_pass();
	vb.io = (u16)(bar0 & ~3u);

	/* size: next power of two >= 24 + config (60 bytes modern) = 128 */
	if (check_begin_bhyve("vblk: BAR0 size 128 (24 + config space, power of two), aligned")) {
		pci0_wr16(vb.slot, 0x04, (u16)(cmd2 & ~1u));	/* decode off while sizing */
		pci0_wr32(vb.slot, 0x10, 0xffffffff);
		u32 rb = pci0_rd32(vb.slot, 0x10);
		pci0_wr32(vb.slot, 0x10, bar0);
		pci0_wr16(vb.slot, 0x04, (u16)(cmd2 | 5));
		u32 size = (~(rb & 0xfffc) + 1) & 0xffff;
		u32 again = pci0_rd32(vb.slot, 0x10);
		check_result(size == 128 && !(vb.io & 127) && again == bar0,
		    "sizing read 0x%x (size %u), base 0x%x, restored 0x%x", rb, size, vb.io, again);
	}

	outb(vb.io + VIO_STATUS, 0);
	u8 st = inb(vb.io + VIO_STATUS);
	check_begin("vblk: STATUS=0 resets, reads 0");
	check_result(st == 0, "status 0x%x", st);

	outb(vb.io + VIO_STATUS, ST_ACK);
	outb(vb.io + VIO_STATUS, ST_ACK | ST_DRIVER);
	st = inb(vb.io + VIO_STATUS);
	check_begin("vblk: STATUS takes ACKNOWLEDGE|DRIVER (3)");
	if (st != 3) {
		check_fail("status 0x%x%s", st, st == 0xff ? " (no device at BAR0?)" : "");
		return 0;
	}
	check_pass();

	u32 hf = inl(vb.io + VIO_HOST_FEATURES);
	if (check_begin_bhyve("vblk: host features = SEG_MAX|BLK_SIZE|FLUSH|TOPOLOGY|INDIRECT_DESC (0x%x), DISCARD optional, no RO", F_BHYVE))
		check_result((hf & ~F_DISCARD) == F_BHYVE, "0x%x", hf);
	u32 want = (F_BLK_SIZE | F_FLUSH | F_SEG_MAX) & hf;
	outl(vb.io + VIO_GUEST_FEATURES, want);
	u32 gf = inl(vb.io + VIO_GUEST_FEATURES);
	check_begin("vblk: GUEST_FEATURES reads back the subset written (0x%x)", want);
	check_result(gf == want, "0x%x", gf);
	if (!(hf & F_FLUSH))
		kprintf("# vblk: FLUSH not offered (host features 0x%x)\n", hf);

	outw(vb.io + VIO_QUEUE_SEL, 1);
	u16 q1 = inw(vb.io + VIO_QUEUE_NUM);
	outw(vb.io + VIO_QUEUE_SEL, 0);
	u16 q0 = inw(vb.io + VIO_QUEUE_NUM);
	check_begin("vblk: queue 0 size is a power of two <= %u; queue 1 size 0 (one queue)", MAXQ);
	if (q0 == 0 || (q0 & (q0 - 1)) || q0 > MAXQ) {
		check_fail("queue 0 size %u, queue 1 size %u", q0, q1);
		return 0;
	}
	check_result(q1 == 0, "queue 0 size %u, queue 1 size %u", q0, q1);
	if (check_begin_bhyve("vblk: queue 0 size 128 (4.6 modern)"))
		check_result(q0 == 128, "%u", q0);
	vring_init(&vb.q, ring_area, q0);
	u32 pfn = (u32)(phys_of(ring_area) >> 12);
	outl(vb.io + VIO_QUEUE_PFN, pfn);
	u32 pfn2 = inl(vb.io + VIO_QUEUE_PFN);
	check_begin("vblk: QUEUE_PFN reads back 0x%x (ring at phys 0x%lx)", pfn, phys_of(ring_area));
	if (pfn2 != pfn) {
		check_fail("0x%x", pfn2);
		return 0;
	}
	check_pass();

	outb(vb.io + VIO_STATUS, ST_ACK | ST_DRIVER | ST_DRIVER_OK);
	st = inb(vb.io + VIO_STATUS);
	check_begin("vblk: STATUS takes DRIVER_OK (7)");
	check_result(st == 7, "status 0x%x", st);
	return 1;
}

static u64 config_checks(void)
{
	u64 cap = inl(vb.io + VIO_CONFIG) | (u64)inl(vb.io + VIO_CONFIG + 4) << 32;
	u32 seg_max = inl(vb.io + VIO_CONFIG + 12);
	u32 blk_size = inl(vb.io + VIO_CONFIG + 20);
	u64 want;
	kprintf("# vblk: capacity %lu sectors, seg_max %u, blk_size %u\n", cap, seg_max, blk_size);
	int have = kenv_get_num("test.vblk_sectors", &want);
	check_begin("vblk: config capacity = test.vblk_sectors");
	if (have == 0)
		check_skip("test.vblk_sectors not set (capacity %lu)", cap);
	else
		check_result(have == 1 && cap == want, "capacity %lu, test.vblk_sectors %s", cap,
		    kenv_get("test.vblk_sectors"));
	check_begin("vblk: config blk_size 512");
	check_result(blk_size == 512, "%u", blk_size);
	if (check_begin_bhyve("vblk: config seg_max = min(queue size - 2, 128)")) {
		u32 w = vb.q.num - 2 < 128 ? vb.q.num - 2 : 128;
		check_result(seg_max == w, "%u, want %u", seg_max, w);
	}
	return cap;
}

static void get_id_check(void)
{
	struct seg s = {data_buf, 20, 1};
	memset(data_buf, 0, 32);
	const char *want = kenv_get("test.vblk_serial");
	if (want)
		check_begin("vblk: GET_ID returns test.vblk_serial");
	else if (no_loader)	/* the default serial is bhyve's */
		check_begin("vblk: GET_ID completes OK");
	else
		check_begin("vblk: GET_ID returns BHYVE-XXXX-XXXX-XXXX (upper-case hex; no test.vblk_serial)");
	if (!request_check(T_GET_ID, 0, &s, 1, S_OK))
		return;
	char got[21];
	memcpy(got, data_buf, 20);
	got[20] = 0;
	if (want) {
		u64 n = strlen(want);
		int ok = n <= 20 && memcmp(data_buf, want, n) == 0 && (n == 20 || data_buf[n] == 0);
		check_result(ok, "got \"%s\"", got);
		return;
	}
	if (no_loader) {
		check_pass();
		return;
	}
	int ok = 1;
	for (int i = 0; i < 20; i++) {
		char c = got[i];
		if (i == 0)
			ok &= memcmp(got, "BHYVE-", 6) == 0;
		if (i >= 6)
			ok &= (i == 10 || i == 15) ? c == '-' : ((c >= '0' && c <= '9') || (c >= 'A' && c <= 'F'));
	}
	check_result(ok, "got \"%s\"", got);
}

static void isr_check(void)
{
	u8 a = inb(vb.io + VIO_ISR), b = inb(vb.io + VIO_ISR);
	check_begin("vblk: ISR bit 0 set after a completion, cleared by the read");
	check_result((a & 1) && b == 0, "ISR 0x%x then 0x%x", a, b);
}

static void unsupp_check(void)
{
	struct seg s = {data_buf, 512, 1};
	check_begin("vblk: unknown request type 0x%x completes UNSUPP", T_BOGUS);
	if (request_check(T_BOGUS, 0, &s, 1, S_UNSUPP))
		check_pass();
}

/* Reads count sectors at lba (split into two descriptors when split) and
 * compares with the pattern of seed; one check. */
static void read_compare(u64 lba, u32 count, u64 seed, int split)
{
	u32 len = count * 512;
	struct seg s[2] = {{data_buf, len, 1}, {0, 0, 1}};
	if (split) {
		u32 a = count > 1 ? (count / 2) * 512 : 256;
		s[0].len = a;
		s[1] = (struct seg){data_buf + a, len - a, 1};
	}
	memset(data_buf, 0xa5, sizeof(data_buf));
	if (!request_check(T_IN, lba, s, split ? 2 : 1, S_OK))
		return;
	i64 bad = pattern_mismatch(data_buf, lba * 512, len, seed);
	check_result(bad < 0, "byte %ld of the read (disk offset 0x%lx) is 0x%x, want 0x%x", bad,
	    lba * 512 + (u64)bad, data_buf[bad < 0 ? 0 : bad], vblk_byte(lba * 512 + (u64)bad, seed));
}

static void pattern_checks(u64 cap)
{
	u64 seed;
	int have = kenv_get_num("test.vblk_pattern", &seed);
	check_begin("vblk: IN sectors 0-3 match test.vblk_pattern");
	if (have != 1) {
		check_skip("test.vblk_pattern %s", have ? "not a number" : "not set");
		return;
	}
	read_compare(0, 4, seed, 0);
	check_begin("vblk: IN of the last sector (capacity - 1) matches test.vblk_pattern");
	if (cap == 0 || cap > (1UL << 40))
		check_fail("capacity %lu", cap);
	else
		read_compare(cap - 1, 1, seed, 0);
}

static void write_checks(void)
{
	const char *w = kenv_get("test.vblk_write");
	u64 lba, count, seed, pseed;
	int ro = kenv_get("test.vblk_ro") != NULL;
	int have_pattern = kenv_get_num("test.vblk_pattern", &pseed) == 1;
	check_begin("vblk: OUT to test.vblk_write=LBA,COUNT,SEED completes %s", ro ? "IOERR (test.vblk_ro)" : "OK");
	if (!w) {
		check_skip("test.vblk_write not set");
		return;
	}
	if (!parse_write(w, &lba, &count, &seed)) {
		check_fail("bad test.vblk_write \"%s\" (COUNT 1-%u)", w, MAXSECT);
		return;
	}
	u32 len = (u32)count * 512;
	for (u32 j = 0; j < len; j++)
		data_buf[j] = vblk_byte(lba * 512 + j, seed);
	struct seg s = {data_buf, len, 0};
	if (!request_check(T_OUT, lba, &s, 1, ro ? S_IOERR : S_OK))
		return;
	check_pass();

	if (ro) {
		check_begin("vblk: read-only: the sectors still hold test.vblk_pattern");
		if (!have_pattern)
			check_skip("test.vblk_pattern not set");
		else
			read_compare(lba, (u32)count, pseed, 0);
		return;
	}
	check_begin("vblk: FLUSH completes OK");
	if (request_check(T_FLUSH, 0, NULL, 0, S_OK))
		check_pass();
	check_begin("vblk: IN (two data descriptors) reads back the written sectors");
	read_compare(lba, (u32)count, seed, 1);
}

static void reset_check(void)
{
	outb(vb.io + VIO_STATUS, 0);
	u8 st = inb(vb.io + VIO_STATUS);
	outw(vb.io + VIO_QUEUE_SEL, 0);
	u32 pfn = inl(vb.io + VIO_QUEUE_PFN), gf = inl(vb.io + VIO_GUEST_FEATURES);
	check_begin("vblk: STATUS=0 at the end: status 0, queue 0 PFN 0, guest features 0");
	check_result(st == 0 && pfn == 0 && gf == 0, "status 0x%x PFN 0x%x features 0x%x", st, pfn, gf);
}

void vblk_checks(void)
{
	if (!check_requested("test.vblk", "vblk: legacy virtio-blk driver (test.vblk)"))
		return;
	if (!setup())
		return;
	u64 cap = config_checks();
	get_id_check();
	if (!vb.stuck)
		isr_check();
	unsupp_check();
	pattern_checks(cap);
	write_checks();
	reset_check();
}
