/*
 * Legacy virtio-net (bhyve-platform.md §4.5, §4.7) — test.vnet=S.
 *
 * A minimal polled driver for the device in PCI slot S (function 0):
 *   test.vnet=S              slot of the virtio-net function (required)
 *   test.vnet_mac=xx:..:xx   config MAC must be this (else: any unicast)
 *   test.vnet_mtu=N          MTU offered (feature + config) must be N
 *   test.vnet_nomrg=1        decline MRG_RXBUF: 10-byte header, one
 *                            2 KiB buffer per frame
 *   test.vnet_tx=N           send N frames (below) to the broadcast address
 *   test.vnet_rx=N           then receive N frames from the host (below);
 *                            other EtherTypes are skipped
 *
 * Frames, both ways (mirrored by vnet_frame() in tests/guest.rs):
 *   dst, src, EtherType 0x88B5, seq (u32 LE), length (u16 LE), dir ('G'
 *   guest to host, 'H' host to guest), 0, then byte i (i >= 22) =
 *   (seq * 7 + i + dir) mod 256; length = vnet_len(seq, n, dir), from 60
 *   to 1514 (the last frame of a run is 1514).
 * The guest sends with its config MAC as source; host frames go to it.
 *
 * With MRG_RXBUF the RX buffers are 512 bytes, so a full frame spans three
 * or four of them and num_buffers must say so.  No interrupts: the used
 * rings are polled with bounded waits.  MSI-X is never enabled, so the
 * device config starts at BAR0 + 20.
 */
#include "io.h"



#define F_MTU (1u << 3)
#define F_MAC (1u << 5)
#define F_MRG_RXBUF (1u << 15)
#define F_STATUS (1u << 16)
#define F_NOTIFY_ON_EMPTY (1u << 24)
#define F_INDIRECT (1u << 28)
#define F_BHYVE (F_MAC | F_STATUS | F_NOTIFY_ON_EMPTY | F_INDIRECT | F_MRG_RXBUF)

#define RXQ 0
#define TXQ 1
#define QSZ 1024	/* bhyve's ring size; the ring areas hold this many */
#define NRXBUF 128	/* buffers posted to RX */
#define ETHERTYPE 0x88b5
#define FRAME_MAX 1514

static u8 rx_ring[5 * 4096 + 3 * 4096] __attribute__((aligned(4096)));
static u8 tx_ring[5 * 4096 + 3 * 4096] __attribute__((aligned(4096)));
static u8 rx_bufs[NRXBUF][2048] __attribute__((aligned(4096)));
static u8 tx_hdr[12] __attribute__((aligned(16)));
static u8 tx_frame[FRAME_MAX] __attribute__((aligned(16)));
static u8 frame[FRAME_MAX + 64];

static struct {
	u32 slot;
	u16 io;
	struct vring rx, tx;
	u32 hdrlen, rxbuf;	/* header bytes; bytes per RX buffer */
	int mrg;
	u8 mac[6];
} vn;

/* frame length for seq of a run of n, per direction */
static u32 vnet_len(u32 seq, u32 n, u8 dir)
{
	if (seq + 1 == n)
		return FRAME_MAX;
	return 60 + (seq * (dir == 'G' ? 331 : 577)) % (FRAME_MAX - 59);
}

static u8 vnet_byte(u32 seq, u32 i, u8 dir) { return (u8)(seq * 7 + i + dir); }

static int parse_mac(const char *s, u8 *mac)
{
	char item[4];
	for (u32 i = 0; i < 6; i++) {
		u64 v;
		if (!list_item(s, ':', i, item, sizeof(item)) || !parse_u64(item, 16, &v) || v > 255)
			return 0;
		mac[i] = (u8)v;
	}
	return !list_item(s, ':', 6, item, sizeof(item));
}

static u16 queue_setup(u16 sel, struct vring *r, u8 *area, u64 area_size)
{
	outw(vn.io + VIO_QUEUE_SEL, sel);
	u16 num = inw(vn.io + VIO_QUEUE_NUM);
	if (num == 0 || (num & (num - 1)) || vring_bytes(num) > area_size)
		return num;
	vring_init(r, area, num);
	outl(vn.io + VIO_QUEUE_PFN, (u32)(phys_of(area) >> 12));
	return num;
}

static int setup(void)
{
	if (!vio_function("vnet", 0x1000, &vn.slot))
		return 0;
	u32 cc = pci0_rd32(vn.slot, 0x08), sub = pci0_rd32(vn.slot, 0x2c);
	check_begin("vnet: class 02 (network), subsystem 1af4:0001");
	check_result(cc >> 24 == 0x02 && sub == 0x00011af4, "class %02x subsystem %04x:%04x",
	    cc >> 24, sub & 0xffff, sub >> 16);

	u32 cmd = pci0_rd32(vn.slot, 0x04) & 0xffff;
	pci0_wr16(vn.slot, 0x04, (u16)(cmd | 0x5));
	u32 bar0 = pci0_rd32(vn.slot, 0x10);
	check_begin("vnet: BAR0 is I/O in 0x2000-0xffff");
	if (!(bar0 & 1) || (bar0 & ~3u) < 0x2000 || (bar0 & ~3u) > 0xffff) {
		check_fail("BAR0 0x%x", bar0);
		return 0;
	}
	check_pass();
	vn.io = (u16)(bar0 & ~3u);

	outb(vn.io + VIO_STATUS, 0);
	outb(vn.io + VIO_STATUS, ST_ACK);
	outb(vn.io + VIO_STATUS, ST_ACK | ST_DRIVER);
	u8 st = inb(vn.io + VIO_STATUS);
	check_begin("vnet: reset, then STATUS takes ACKNOWLEDGE|DRIVER (3)");
	if (st != 3) {
		check_fail("status 0x%x", st);
		return 0;
	}
	check_pass();

	u32 hf = inl(vn.io + VIO_HOST_FEATURES);
	u64 mtu = 0;
	int have_mtu = kenv_get_num("test.vnet_mtu", &mtu) == 1;
	if (check_begin_bhyve("vnet: host features = MAC|STATUS|NOTIFY_ON_EMPTY|INDIRECT_DESC|MRG_RXBUF%s",
		have_mtu ? "|MTU" : ""))
		check_result(hf == (F_BHYVE | (have_mtu ? F_MTU : 0)), "0x%x", hf);
	vn.mrg = (hf & F_MRG_RXBUF) && !kenv_get("test.vnet_nomrg");
	u32 want = (hf & (F_MAC | F_STATUS | F_MTU)) | (vn.mrg ? F_MRG_RXBUF : 0);
	outl(vn.io + VIO_GUEST_FEATURES, want);
	check_begin("vnet: GUEST_FEATURES reads back 0x%x (%s)", want,
	    vn.mrg ? "mergeable RX buffers" : "no MRG_RXBUF");
	check_result(inl(vn.io + VIO_GUEST_FEATURES) == want, "0x%x", inl(vn.io + VIO_GUEST_FEATURES));
	vn.hdrlen = vn.mrg ? 12 : 10;
	vn.rxbuf = vn.mrg ? 512 : 2048;

	for (int i = 0; i < 6; i++)
		vn.mac[i] = inb(vn.io + VIO_CONFIG + i);
	u16 lstat = inw(vn.io + VIO_CONFIG + 6);
	kprintf("# vnet: mac %02x:%02x:%02x:%02x:%02x:%02x status %u\n", vn.mac[0], vn.mac[1],
	    vn.mac[2], vn.mac[3], vn.mac[4], vn.mac[5], lstat);
	const char *ms = kenv_get("test.vnet_mac");
	u8 wmac[6];
	check_begin("vnet: config MAC %s", ms ? "= test.vnet_mac" : "is unicast and not zero");
	if (ms && !parse_mac(ms, wmac))
		check_fail("bad test.vnet_mac \"%s\"", ms);
	else if (ms)
		check_result(memcmp(wmac, vn.mac, 6) == 0, "differs");
	else
		check_result(!(vn.mac[0] & 1) && (vn.mac[0] | vn.mac[1] | vn.mac[2] | vn.mac[3] | vn.mac[4] | vn.mac[5]),
		    "multicast or zero");
	check_begin("vnet: config status: link up");
	check_result(lstat & 1, "status 0x%x", lstat);
	if (have_mtu) {
		u16 cm = inw(vn.io + VIO_CONFIG + 10);
		check_begin("vnet: config mtu = test.vnet_mtu (%lu)", mtu);
		check_result(cm == mtu, "%u", cm);
	}

	u16 nrx = queue_setup(RXQ, &vn.rx, rx_ring, sizeof(rx_ring));
	u16 ntx = queue_setup(TXQ, &vn.tx, tx_ring, sizeof(tx_ring));
	outw(vn.io + VIO_QUEUE_SEL, 2);
	u16 nctl = inw(vn.io + VIO_QUEUE_NUM);
	check_begin("vnet: RX and TX queues of %u entries, no control queue", QSZ);
	if (nrx != QSZ || ntx != QSZ) {
		check_fail("RX %u TX %u (queue 2: %u)", nrx, ntx, nctl);
		return 0;
	}
	check_result(nctl == 0, "queue 2 size %u", nctl);

	outb(vn.io + VIO_STATUS, ST_ACK | ST_DRIVER | ST_DRIVER_OK);
	check_begin("vnet: STATUS takes DRIVER_OK (7)");
	st = inb(vn.io + VIO_STATUS);
	check_result(st == 7, "status 0x%x", st);
	return st == 7;
}

/* RX buffer i is descriptor i, its own chain. */
static void rx_post(u16 i)
{
	vn.rx.desc[i] = (struct vring_desc){phys_of(rx_bufs[i]), vn.rxbuf, VRING_DESC_F_WRITE, 0};
	vring_publish(&vn.rx, i);
}

static int wait_used(struct vring *r, u32 ms)
{
	for (u32 i = 0; !vring_used_pending(r); i++) {
		if (i >= ms * 5)
			return 0;
		if (i >= 100)
			udelay(200);
	}
	return 1;
}

static void tx_checks(u32 n)
{
	u32 bad = 0, done = 0;
	char why[96] = "";
	check_begin("vnet: TX %u frames of 60-1514 bytes (header + frame, two descriptors)", n);
	for (u32 seq = 0; seq < n; seq++) {
		u32 len = vnet_len(seq, n, 'G');
		memset(tx_frame, 0xff, 6);
		memcpy(tx_frame + 6, vn.mac, 6);
		tx_frame[12] = ETHERTYPE >> 8;
		tx_frame[13] = ETHERTYPE & 0xff;
		memcpy(tx_frame + 14, &seq, 4);
		tx_frame[18] = (u8)len;
		tx_frame[19] = (u8)(len >> 8);
		tx_frame[20] = 'G';
		tx_frame[21] = 0;
		for (u32 i = 22; i < len; i++)
			tx_frame[i] = vnet_byte(seq, i, 'G');
		memset(tx_hdr, 0, sizeof(tx_hdr));
		/* one chain in flight at a time: descriptors 0 and 1 */
		vn.tx.desc[0] = (struct vring_desc){phys_of(tx_hdr), vn.hdrlen, VRING_DESC_F_NEXT, 1};
		vn.tx.desc[1] = (struct vring_desc){phys_of(tx_frame), len, 0, 0};
		vring_publish(&vn.tx, 0);
		outw(vn.io + VIO_QUEUE_NOTIFY, TXQ);
		if (!wait_used(&vn.tx, 2000)) {
			ksnprintf(why, sizeof(why), "frame %u never came back in the used ring", seq);
			bad++;
			break;
		}
		volatile struct vring_used_elem *e = vring_used_elem(&vn.tx);
		if (e->id != 0 && !bad++)
			ksnprintf(why, sizeof(why), "frame %u: used id %u", seq, e->id);
		vn.tx.used_idx++;
		done++;
	}
	check_result(!bad, "%u sent, %u bad: %s", done, bad, why);
}

/*
 * Takes the next frame out of the RX used ring into `frame` (without the
 * header).  Returns its length, 0 on timeout, or -1 with `why` set.
 */
static i64 rx_one(char *why, u64 whysz, u32 ms)
{
	if (!wait_used(&vn.rx, ms))
		return 0;
	volatile struct vring_used_elem *e = vring_used_elem(&vn.rx);
	u32 id = e->id, len = e->len;
	vn.rx.used_idx++;
	if (id >= NRXBUF || len < vn.hdrlen || len > vn.rxbuf) {
		ksnprintf(why, whysz, "used id %u len %u", id, len);
		return -1;
	}
	u16 nbufs = 1;
	if (vn.mrg)
		nbufs = (u16)(rx_bufs[id][10] | rx_bufs[id][11] << 8);
	u64 flen = len - vn.hdrlen;
	memcpy(frame, rx_bufs[id] + vn.hdrlen, flen);
	int hdr_zero = 1;
	for (u32 i = 0; i < 10; i++)
		hdr_zero &= rx_bufs[id][i] == 0;
	rx_post((u16)id);
	if (!hdr_zero) {
		ksnprintf(why, whysz, "header flags/gso not zero");
		return -1;
	}
	if (nbufs == 0 || nbufs > 8) {
		ksnprintf(why, whysz, "num_buffers %u", nbufs);
		return -1;
	}
	for (u16 k = 1; k < nbufs; k++) {
		if (!wait_used(&vn.rx, 1000)) {
			ksnprintf(why, whysz, "buffer %u of %u never came", k + 1, nbufs);
			return -1;
		}
		e = vring_used_elem(&vn.rx);
		id = e->id;
		len = e->len;
		vn.rx.used_idx++;
		if (id >= NRXBUF || len > vn.rxbuf || flen + len > sizeof(frame)) {
			ksnprintf(why, whysz, "buffer %u: used id %u len %u", k + 1, id, len);
			return -1;
		}
		memcpy(frame + flen, rx_bufs[id], len);
		flen += len;
		rx_post((u16)id);
	}
	outw(vn.io + VIO_QUEUE_NOTIFY, RXQ);
	u64 need = (flen + vn.hdrlen + vn.rxbuf - 1) / vn.rxbuf;
	if (vn.mrg && nbufs != need) {
		ksnprintf(why, whysz, "%lu-byte frame in %u buffers, want %lu", flen, nbufs, need);
		return -1;
	}
	return (i64)flen;
}

static void rx_checks(u32 n)
{
	char why[96] = "";
	u32 got = 0, other = 0;
	check_begin("vnet: RX %u frames from the host, in order, intact%s", n,
	    vn.mrg ? " (512-byte mergeable buffers)" : "");
	while (got < n) {
		i64 len = rx_one(why, sizeof(why), 10000);
		if (len == 0)
			ksnprintf(why, sizeof(why), "timed out waiting for frame %u", got);
		if (len <= 0)
			break;
		if (len < 22 || (frame[12] << 8 | frame[13]) != ETHERTYPE) {
			other++;	/* e.g. the host's IPv6 chatter */
			continue;
		}
		u32 seq, flen = (u32)frame[18] | (u32)frame[19] << 8;
		memcpy(&seq, frame + 14, 4);
		u32 want = vnet_len(got, n, 'H');
		if (memcmp(frame, vn.mac, 6) != 0 || seq != got || frame[20] != 'H' || flen != want ||
		    (u64)len != want) {
			ksnprintf(why, sizeof(why), "frame %u: seq %u len %ld (header %u) want len %u dir %c",
			    got, seq, len, flen, want, frame[20]);
			break;
		}
		u32 i;
		for (i = 22; i < want && frame[i] == vnet_byte(seq, i, 'H'); i++)
			;
		if (i < want) {
			ksnprintf(why, sizeof(why), "frame %u: byte %u is 0x%x", got, i, frame[i]);
			break;
		}
		got++;
	}
	kprintf("# vnet: %u frames received, %u others skipped\n", got, other);
	check_result(got == n, "%u of %u: %s", got, n, why);
}

void vnet_checks(void)
{
	if (!check_requested("test.vnet", "vnet: legacy virtio-net driver (test.vnet)"))
		return;
	if (!setup())
		return;
	for (u16 i = 0; i < NRXBUF; i++)
		rx_post(i);
	outw(vn.io + VIO_QUEUE_NOTIFY, RXQ);

	u64 ntx = 0, nrx = 0;
	if (kenv_get_num("test.vnet_tx", &ntx) == 1 && ntx)
		tx_checks((u32)ntx);
	if (kenv_get_num("test.vnet_rx", &nrx) == 1 && nrx)
		rx_checks((u32)nrx);

	outb(vn.io + VIO_STATUS, 0);
	outw(vn.io + VIO_QUEUE_SEL, RXQ);
	u32 pfn = inl(vn.io + VIO_QUEUE_PFN);
	check_begin("vnet: STATUS=0 at the end: status 0, RX PFN 0");
	check_result(inb(vn.io + VIO_STATUS) == 0 && pfn == 0, "PFN 0x%x", pfn);
}
