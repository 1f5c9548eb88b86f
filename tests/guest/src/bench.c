/*
 * Device benchmarks for bench/virtio.sh — test.bench_vblk=S, test.bench_vnet=S.
 *
 *   test.bench_vblk=S    legacy virtio-blk at 0:S.0: sequential 1 MiB IN and
 *                        OUT at queue depth 1, random 4 KiB IN at depth 1
 *                        and 32 (the disk is scratch: OUT writes garbage)
 *   test.bench_vnet=S    legacy virtio-net at 0:S.0: TX of 60- and 1514-byte
 *                        frames, then RX of frames the host floods at us
 *   test.bench_ms=N      length of each measurement window (default 1000)
 *
 * Results, one line each, parsed by bench/virtio.sh:
 *   BENCH tsc kHz=2400000
 *   BENCH cpu loop_ns=1600 exit_ns=7000
 *   BENCH vblk seqread_1m MB/s=812.3 IOPS=774.7 n=775 errors=0 us=1000412 cpu_us=... kick_us=...
 *   BENCH vnet tx_60 MB/s=3.1 fps=52011.0 n=52011 us=1000020 cpu_us=... kick_us=...
 *   BENCH vnet rx_ready len=60      (the host now floods 60-byte frames)
 *   BENCH vnet rx_60 MB/s=... fps=... n=... other=... us=...
 *   BENCH error <what>             (that measurement did not happen)
 *   BENCH done
 * MB = 10^6 bytes; blk bytes are data bytes, net bytes are frame bytes
 * (without the virtio-net header).  cpu_us and kick_us: how much of the
 * window (us) went to the guest's own code and to kicks (struct split).
 *
 * Ring-0 guest code is slow where these run (emulated on nested KVM), so
 * the timed loops never touch payload: every chain is built once, the
 * buffers (physically contiguous, so 1 MiB is one descriptor) are only
 * ever written by the device, and a completion costs a few loads and
 * stores before the same chain goes back on the avail ring.  Interrupts
 * are suppressed (VRING_AVAIL_F_NO_INTERRUPT: we poll the used rings) and
 * kicks honour VRING_USED_F_NO_NOTIFY.  Time is the TSC, calibrated once
 * against a 50 ms one-shot of the 8254's channel 2 (works on bhyve and
 * QEMU alike).
 *
 * Everything lives at physical BENCH_PHYS (64 MiB, above anything the
 * loader or QEMU places; the VM needs 128 MiB or more), reached through
 * the loader's KERNBASE window, so the guest's BSS does not grow.
 */
#include "io.h"


#define VRING_AVAIL_F_NO_INTERRUPT 1
#define VRING_USED_F_NO_NOTIFY 1

#define BENCH_PHYS 0x4000000UL
#define BLK_RING (BENCH_PHYS + 0x00000)	/* up to 256 entries: 12 KiB */
#define NET_RXRING (BENCH_PHYS + 0x10000)	/* 1024 entries: 32 KiB */
#define NET_TXRING (BENCH_PHYS + 0x20000)
#define BLK_HDRS (BENCH_PHYS + 0x30000)	/* 32 headers of 16 bytes, then statuses */
#define NET_TXBUF (BENCH_PHYS + 0x31000)	/* header, then the frame at +64 */
#define BLK_DATA (BENCH_PHYS + 0x100000)	/* 1 MiB; slot k's 4 KiB at +k*4 KiB */
#define NET_RXBUFS (BENCH_PHYS + 0x200000)	/* 1024 x 2 KiB */
#define BENCH_END (BENCH_PHYS + 0x400000)

#define BLK_QD_MAX 32
#define T_IN 0
#define T_OUT 1
#define F_MRG_RXBUF (1u << 15)
#define NET_RXBUF 2048
#define NET_TXQD 256	/* TX chains in flight (2 descriptors each), ring permitting */
#define RX_REFILL 32	/* RX buffers published per kick */
#define STALL_MS 5000	/* no completion for this long: give up */

struct blk_hdr {
	u32 type, ioprio;
	u64 sector;
};

static u64 tsc_khz;
static u64 window_ms = 1000;

static inline u64 rdtsc(void)
{
	u32 lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return (u64)hi << 32 | lo;
}

/* elapsed microseconds, at least 1 (a divisor) */
static u64 tsc_us(u64 ticks)
{
	u64 us = ticks * 1000 / tsc_khz;
	return us ? us : 1;
}

/* "12.3" of v/10 (no floating point in here) */
static void put_rate(const char *name, u64 tenths)
{
	kprintf(" %s=%lu.%lu", name, tenths / 10, tenths % 10);
}

static int tsc_calibrate(void)
{
	if (!pit_works()) {
		kprintf("BENCH error 8254 channel 2 does not count: no time reference\n");
		return 0;
	}
	u64 a = rdtsc();
	udelay(50000);
	u64 b = rdtsc();
	tsc_khz = (b - a) / 50;
	kprintf("BENCH tsc kHz=%lu\n", tsc_khz);
	if (tsc_khz < 1000) {
		kprintf("BENCH error TSC does not advance\n");
		return 0;
	}
	return 1;
}

/* What this vCPU costs, to read the figures by: a loop iteration (about
 * two instructions) and a port-I/O exit to user space (port 0x80, which
 * bhyve and QEMU both serve in the VMM process). */
static void cpu_costs(void)
{
	u64 a = rdtsc();
	for (u32 i = 0; i < 10000; i++)
		__asm__ volatile("" ::: "memory");
	u64 b = rdtsc();
	for (u32 i = 0; i < 1000; i++)
		inb(0x80);
	u64 c = rdtsc();
	kprintf("BENCH cpu loop_ns=%lu exit_ns=%lu\n", (b - a) * 1000 / tsc_khz / 10, (c - b) * 1000 / tsc_khz);
}

/* Legacy virtio function at 0:slot.0 with PCI device ID `dev`, reset and
 * acknowledged (ACKNOWLEDGE|DRIVER), `want` features accepted as far as
 * offered; returns its BAR0 I/O base, 0 after a BENCH error. */
static u16 vio_open(const char *what, u32 slot, u32 dev, u32 want, u32 *features)
{
	u32 id = pci0_rd32(slot, 0);
	if (id != (dev << 16 | 0x1af4)) {
		kprintf("BENCH error %s: 0:%u.0 is %04x:%04x, want 1af4:%04x\n", what, slot, id & 0xffff,
		    id >> 16, dev);
		return 0;
	}
	pci0_wr16(slot, 0x04, (u16)((pci0_rd32(slot, 0x04) & 0xffff) | 5));
	u32 bar0 = pci0_rd32(slot, 0x10);
	if (!(bar0 & 1)) {
		kprintf("BENCH error %s: BAR0 0x%x is not I/O\n", what, bar0);
		return 0;
	}
	u16 io = (u16)(bar0 & ~3u);
	outb(io + VIO_STATUS, 0);
	outb(io + VIO_STATUS, 1);
	outb(io + VIO_STATUS, 3);
	*features = inl(io + VIO_HOST_FEATURES) & want;
	outl(io + VIO_GUEST_FEATURES, *features);
	return io;
}

/* Queue `sel` on a ring at physical `area`, interrupts suppressed;
 * returns its size, 0 after a BENCH error. */
static u16 vio_queue(const char *what, u16 io, u16 sel, struct vring *r, u64 area, u64 room)
{
	outw(io + VIO_QUEUE_SEL, sel);
	u16 num = inw(io + VIO_QUEUE_NUM);
	if (num == 0 || (num & (num - 1)) || vring_bytes(num) > room) {
		kprintf("BENCH error %s: queue %u has %u entries\n", what, sel, num);
		return 0;
	}
	vring_init(r, phys_ptr(area, room), num);
	r->avail[0] = VRING_AVAIL_F_NO_INTERRUPT;
	outl(io + VIO_QUEUE_PFN, (u32)(area >> 12));
	return num;
}

/*
 * Where a window's time went, in TSC ticks: the guest's own code between
 * seeing completions and kicking (emulated here, so not free), and the
 * kicks (the exit, plus whatever the VMM does before it resumes the vCPU);
 * the rest is waiting for the device.
 */
struct split {
	u64 cpu, kick;
};

/*
 * A ring as the timed loops use it: pointers and indices in locals the
 * compiler keeps in registers, because every memory access of the guest
 * is emulated here (struct vring's indices live in memory and the calls
 * of virtio.c cost more than the work).  Each loop starts from its vring
 * and stores the indices back when done.
 */
struct cursor {
	volatile u16 *avail;			/* flags, idx, ring[] */
	volatile u16 *used;			/* flags, idx */
	volatile struct vring_used_elem *elem;	/* used ring[] */
	u16 mask, ai, ui;			/* num - 1, avail and used index */
};

static inline struct cursor cursor_of(const struct vring *r)
{
	return (struct cursor){r->avail, r->used, (volatile struct vring_used_elem *)(r->used + 2),
	    (u16)(r->num - 1), r->avail_idx, r->used_idx};
}

static inline void cursor_save(struct vring *r, const struct cursor *c)
{
	r->avail_idx = c->ai;
	r->used_idx = c->ui;
}

static inline void offer(struct cursor *c, u16 head)
{
	c->avail[2 + (c->ai++ & c->mask)] = head;
}

/* Publishes the avail index and kicks queue q; `seen` is when the guest
 * saw the completions it just handled. */
static inline void publish(const struct cursor *c, u16 io, u16 q, u64 seen, struct split *sp)
{
	vbarrier();
	c->avail[1] = c->ai;
	vbarrier();
	u64 t = rdtsc();
	if (!(c->used[0] & VRING_USED_F_NO_NOTIFY))
		outw(io + VIO_QUEUE_NOTIFY, q);
	sp->cpu += t - seen;
	sp->kick += rdtsc() - t;
}

/* n transfers of len bytes in us: MB/s, transfers per second as `unit`, n */
static void put_rates(u64 n, u64 len, u64 us, const char *unit)
{
	put_rate("MB/s", n * len * 10 / us);
	put_rate(unit, n * 10000000 / us);
	kprintf(" n=%lu", n);
}

static void put_split(u64 total_us, const struct split *sp)
{
	kprintf(" us=%lu cpu_us=%lu kick_us=%lu\n", total_us, tsc_us(sp->cpu), tsc_us(sp->kick));
}

/* Spins until the used index moves off c->ui and returns it; 0 after
 * STALL_MS with *stalled set. */
static inline u16 wait_used(const struct cursor *c, int *stalled)
{
	u16 u;
	u64 give_up = rdtsc() + STALL_MS * tsc_khz;
	while ((u = c->used[1]) == c->ui)
		if (rdtsc() > give_up) {
			*stalled = 1;
			return 0;
		}
	return u;
}

/* ---- virtio-blk ---- */

static struct {
	u16 io;
	struct vring q;
	u64 sectors;
	volatile struct blk_hdr *hdr;
	volatile u8 *status;
} vb;

/*
 * One measurement: `qd` requests of `len` bytes kept in flight for the
 * window, sequential (wrapping at the end of the disk) or at random 4 KiB
 * blocks.  Slot k is the chain at descriptor 4k: header, data (1 MiB at
 * BLK_DATA, or the slot's own 4 KiB), status.
 */
static void blk_run(const char *name, u32 type, u32 len, int random, u32 qd)
{
	u32 step = len / 512;
	u64 mask = 1, next = 0, x = 0x9e3779b97f4a7c15UL, n = 0, errors = 0;
	while (mask * 2 <= vb.sectors / step)
		mask *= 2;
	mask--;	/* random blocks cover the largest power of two that fits */
	if (vb.sectors < step || qd * 4 > vb.q.num) {
		kprintf("BENCH error vblk %s: %lu sectors, queue of %u\n", name, vb.sectors, vb.q.num);
		return;
	}
	for (u32 k = 0; k < qd; k++) {
		u16 d = (u16)(4 * k);
		u64 buf = BLK_DATA + (len == 4096 ? k * 4096UL : 0);
		vb.hdr[k].type = type;
		vb.hdr[k].ioprio = 0;
		vb.q.desc[d] = (struct vring_desc){phys_of(&vb.hdr[k]), 16, VRING_DESC_F_NEXT, (u16)(d + 1)};
		vb.q.desc[d + 1] = (struct vring_desc){buf, len,
		    (u16)(VRING_DESC_F_NEXT | (type == T_IN ? VRING_DESC_F_WRITE : 0)), (u16)(d + 2)};
		vb.q.desc[d + 2] = (struct vring_desc){phys_of(&vb.status[k]), 1, VRING_DESC_F_WRITE, 0};
	}
	struct split sp = {0, 0};
	struct cursor c = cursor_of(&vb.q);
	volatile struct blk_hdr *hdr = vb.hdr;
	volatile u8 *status = vb.status;
	int stalled = 0;
	u64 t0 = rdtsc(), end = t0 + window_ms * tsc_khz, t1 = t0;
	for (u32 k = 0; k < qd; k++) {
		if (random) {
			x ^= x << 13, x ^= x >> 7, x ^= x << 17;
			hdr[k].sector = (x & mask) * step;
		} else {
			hdr[k].sector = next;
			next = next + 2 * step > vb.sectors ? 0 : next + step;
		}
		offer(&c, (u16)(4 * k));
	}
	publish(&c, vb.io, 0, t0, &sp);
	u32 inflight = qd;
	while (inflight) {
		u16 used = wait_used(&c, &stalled);
		if (stalled) {
			kprintf("BENCH error vblk %s: no completion for %u ms\n", name, STALL_MS);
			return;
		}
		t1 = rdtsc();
		int more = t1 < end;
		for (; c.ui != used; c.ui++) {
			u32 id = c.elem[c.ui & c.mask].id, k = id >> 2;
			if (k >= qd || (id & 3)) {
				kprintf("BENCH error vblk %s: used id %u is no chain head\n", name, id);
				return;
			}
			errors += status[k] != 0;
			n++;
			if (!more) {
				inflight--;
				continue;
			}
			if (random) {
				x ^= x << 13, x ^= x >> 7, x ^= x << 17;
				hdr[k].sector = (x & mask) * step;
			} else {
				hdr[k].sector = next;
				next = next + 2 * step > vb.sectors ? 0 : next + step;
			}
			offer(&c, (u16)id);
		}
		if (more)
			publish(&c, vb.io, 0, t1, &sp);
		else
			sp.cpu += rdtsc() - t1;
	}
	cursor_save(&vb.q, &c);
	u64 us = tsc_us(t1 - t0);
	kprintf("BENCH vblk %s", name);
	put_rates(n, len, us, "IOPS");
	kprintf(" errors=%lu", errors);
	put_split(us, &sp);
}

static void bench_vblk(u32 slot)
{
	u32 f;
	if (!(vb.io = vio_open("vblk", slot, 0x1001, 0, &f)))
		return;
	if (!vio_queue("vblk", vb.io, 0, &vb.q, BLK_RING, NET_RXRING - BLK_RING))
		return;
	outb(vb.io + VIO_STATUS, 7);
	vb.sectors = inl(vb.io + 20) | (u64)inl(vb.io + 24) << 32;
	vb.hdr = phys_ptr(BLK_HDRS, 4096);
	vb.status = (volatile u8 *)(vb.hdr + BLK_QD_MAX);
	kprintf("# bench vblk: %lu sectors, queue of %u\n", vb.sectors, vb.q.num);
	blk_run("seqread_1m", T_IN, 1 << 20, 0, 1);
	blk_run("seqwrite_1m", T_OUT, 1 << 20, 0, 1);
	blk_run("randread_4k_qd1", T_IN, 4096, 1, 1);
	blk_run("randread_4k_qd32", T_IN, 4096, 1, BLK_QD_MAX);
	outb(vb.io + VIO_STATUS, 0);
}

/* ---- virtio-net ---- */

static struct {
	u16 io;
	struct vring rx, tx;
	u32 hdrlen;
} vn;

/* TX for the window: up to NET_TXQD chains (header, frame) of `len` bytes
 * in flight, each one put back as soon as the device returns it. */
static void net_tx(u32 len)
{
	u8 *frame = phys_ptr(NET_TXBUF + 64, len);
	/* 02:00:00:00:00:0a (the MAC bench/virtio.sh gives us) to
	 * 02:00:00:00:00:fe (no one), EtherType 0x88B5, as tapload writes */
	static const u8 head[14] = {0x02, 0, 0, 0, 0, 0xfe, 0x02, 0, 0, 0, 0, 0x0a, 0x88, 0xb5};
	memcpy(frame, head, sizeof(head));
	u32 qd = vn.tx.num / 2 < NET_TXQD ? vn.tx.num / 2 : NET_TXQD;
	struct split sp = {0, 0};
	struct cursor c = cursor_of(&vn.tx);
	int stalled = 0;
	u64 t0 = rdtsc(), end = t0 + window_ms * tsc_khz, t1 = t0, n = 0;
	for (u32 k = 0; k < qd; k++) {
		u16 d = (u16)(2 * k);
		vn.tx.desc[d] = (struct vring_desc){NET_TXBUF, vn.hdrlen, VRING_DESC_F_NEXT, (u16)(d + 1)};
		vn.tx.desc[d + 1] = (struct vring_desc){NET_TXBUF + 64, len, 0, 0};
		offer(&c, d);
	}
	publish(&c, vn.io, 1, t0, &sp);
	u32 inflight = qd;
	while (inflight) {
		u16 used = wait_used(&c, &stalled);
		if (stalled) {
			kprintf("BENCH error vnet tx_%u: no completion for %u ms\n", len, STALL_MS);
			return;
		}
		t1 = rdtsc();
		u16 got = (u16)(used - c.ui);
		n += got;
		if (t1 >= end) {
			c.ui = used;
			inflight -= got;
			sp.cpu += rdtsc() - t1;
			continue;
		}
		for (; c.ui != used; c.ui++)
			offer(&c, (u16)c.elem[c.ui & c.mask].id);
		publish(&c, vn.io, 1, t1, &sp);
	}
	cursor_save(&vn.tx, &c);
	u64 us = tsc_us(t1 - t0);
	kprintf("BENCH vnet tx_%u", len);
	put_rates(n, len, us, "fps");
	put_split(us, &sp);
}

/* RX for the window, timed from the first frame of `len` bytes (frames of
 * other lengths, e.g. left over from the last size, are only counted).
 * Used buffers go back on the ring at once, but are published (and the
 * device kicked) only RX_REFILL at a time, as a NAPI-style driver does:
 * a kick is an exit, and the device still holds num - RX_REFILL. */
static void net_rx(u32 len)
{
	u32 want = vn.hdrlen + len;
	struct cursor c = cursor_of(&vn.rx);
	u16 published = c.ai;
	struct split sp = {0, 0}, idle = {0, 0};
	int stalled = 0;
	u64 n = 0, other = 0, t0 = 0, end = 0, t1 = 0;
	kprintf("BENCH vnet rx_ready len=%u\n", len);
	for (;;) {
		u16 used = wait_used(&c, &stalled);
		if (stalled) {
			kprintf("BENCH error vnet rx_%u: no frame for %u ms\n", len, STALL_MS);
			return;
		}
		t1 = rdtsc();
		u64 m = 0, batch = (u16)(used - c.ui);
		for (; c.ui != used; c.ui++) {
			volatile struct vring_used_elem *e = &c.elem[c.ui & c.mask];
			m += e->len == want;
			offer(&c, (u16)e->id);
		}
		other += batch - m;
		if ((u16)(c.ai - published) >= RX_REFILL) {
			published = c.ai;
			publish(&c, vn.io, 0, t1, end ? &sp : &idle);
		} else if (end) {
			sp.cpu += rdtsc() - t1;
		}
		/* the batch that brings the first frame of this size starts the
		 * clock; frames count from the next batch on */
		if (!end) {
			if (m) {
				t0 = t1;
				end = t0 + window_ms * tsc_khz;
			}
			continue;
		}
		n += m;
		if (t1 >= end)
			break;
	}
	cursor_save(&vn.rx, &c);
	u64 us = tsc_us(t1 - t0);
	kprintf("BENCH vnet rx_%u", len);
	put_rates(n, len, us, "fps");
	kprintf(" other=%lu", other);
	put_split(us, &sp);
}

static void bench_vnet(u32 slot)
{
	u32 f;
	if (!(vn.io = vio_open("vnet", slot, 0x1000, F_MRG_RXBUF, &f)))
		return;
	vn.hdrlen = f & F_MRG_RXBUF ? 12 : 10;
	if (!vio_queue("vnet", vn.io, 0, &vn.rx, NET_RXRING, NET_TXRING - NET_RXRING) ||
	    !vio_queue("vnet", vn.io, 1, &vn.tx, NET_TXRING, BLK_HDRS - NET_TXRING))
		return;
	/* virtio-net header (no offloads) and a zero frame payload */
	memset(phys_ptr(NET_TXBUF, 64 + 1520), 0, 64 + 1520);
	outb(vn.io + VIO_STATUS, 7);
	u16 nrx = vn.rx.num < 1024 ? vn.rx.num : 1024;
	for (u16 i = 0; i < nrx; i++) {
		vn.rx.desc[i] = (struct vring_desc){NET_RXBUFS + (u64)i * NET_RXBUF, NET_RXBUF,
		    VRING_DESC_F_WRITE, 0};
		vn.rx.avail[2 + i] = i;
	}
	vn.rx.avail_idx = nrx;
	vbarrier();
	vn.rx.avail[1] = nrx;
	vbarrier();
	outw(vn.io + VIO_QUEUE_NOTIFY, 0);
	kprintf("# bench vnet: features 0x%x, queues RX %u TX %u\n", f, vn.rx.num, vn.tx.num);
	net_tx(60);
	net_tx(1514);
	net_rx(60);
	net_rx(1514);
	outb(vn.io + VIO_STATUS, 0);
}

void bench_run(void)
{
	u64 blk = 0, net = 0, ms;
	int hb = kenv_get_num("test.bench_vblk", &blk), hn = kenv_get_num("test.bench_vnet", &net);
	int hm = kenv_get_num("test.bench_ms", &ms);
	if (!hb && !hn)
		return;
	if (hb < 0 || hn < 0 || blk > 31 || net > 31 || hm < 0 || (hm && (ms == 0 || ms > 60000))) {
		kprintf("BENCH error test.bench_vblk/test.bench_vnet need a slot 0-31, test.bench_ms 1-60000\n");
		return;
	}
	if (hm)
		window_ms = ms;
	if (!phys_ptr(BENCH_PHYS, BENCH_END - BENCH_PHYS)) {
		kprintf("BENCH error no mapping for 0x%lx-0x%lx\n", BENCH_PHYS, BENCH_END);
		return;
	}
	if (!tsc_calibrate())
		return;
	cpu_costs();
	if (hb)
		bench_vblk((u32)blk);
	if (hn)
		bench_vnet((u32)net);
	kprintf("BENCH done\n");
}
