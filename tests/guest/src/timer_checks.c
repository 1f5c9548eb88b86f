/*
 * Timers and the RTC (bhyve-platform.md §6.2 HPET, §6.3 PM timer, §6.4 and
 * §3.6 RTC/CMOS):
 *   test.pmtimer=1      port 0x408 counts up at 3.579545 MHz (32-bit reads)
 *   test.hpet=1         HPET at 0xFED00000: capabilities, counter, rate
 *   test.rtc=YYYY-MM-DD the RTC date is that day or the next (midnight)
 * Rates are measured against the 8254's channel 2 (one-shot, polled through
 * port 0x61 bit 5; KVM's in-kernel PIT), which is also the delay source for
 * the other groups (udelay).
 */
#include "io.h"

#define PIT_HZ 1193182UL
#define PIT_CH2 0x42
#define PIT_MODE 0x43
#define PORT_B 0x61		/* bit 0 gate 2, bit 1 speaker, bit 5 OUT2 */
#define WINDOW_US 50000UL	/* measurement window */
#define PM_HZ 3579545UL

/* One-shot of `count` PIT ticks on channel 2 (mode 0: OUT2 low until the
 * count expires).  Returns 0 if OUT2 is already high (no PIT). */
static int pit_start(u16 count)
{
	outb(PORT_B, (inb(PORT_B) & 0xfc) | 0x01);	/* gate on, speaker off */
	outb(PIT_MODE, 0xb0);				/* ch2, lo/hi, mode 0, binary */
	outb(PIT_CH2, (u8)count);
	outb(PIT_CH2, (u8)(count >> 8));
	return !(inb(PORT_B) & 0x20);
}

/* Bounded poll for OUT2 (every inb is an exit: >= 1 us each). */
static int pit_wait(void)
{
	for (u32 i = 0; i < 400000; i++)
		if (inb(PORT_B) & 0x20)
			return 1;
	return 0;
}

int pit_works(void)
{
	static int state;	/* 0 unknown, 1 counts, 2 does not */
	if (!state)
		state = pit_start(1193) && pit_wait() ? 1 : 2;	/* 1 ms */
	return state == 1;
}

void udelay(u32 us)
{
	int pit = pit_works();
	while (us) {
		u32 chunk = us > WINDOW_US ? WINDOW_US : us;
		u32 count = (u32)(chunk * PIT_HZ / 1000000) + 1;
		if (!pit || count < 8 || !pit_start((u16)count) || !pit_wait())
			for (u32 i = 0; i < chunk; i++)	/* no PIT: >= ~1 us each here */
				__asm__ volatile("pause");
		us -= chunk;
	}
}

/* Ticks of a 32-bit up-counter over one WINDOW_US PIT window; 0 if the PIT
 * does not work.  Best of three tries (the host may deschedule us). */
static int pit_measure(u32 (*read)(void), u64 want, u32 *ticks)
{
	int ok = 0;
	for (int t = 0; t < 3; t++) {
		u32 a = read();
		if (!pit_start((u16)(WINDOW_US * PIT_HZ / 1000000)) || !pit_wait())
			return 0;
		u32 d = read() - a;
		if (!ok || (d > want ? d - want : want - d) < (*ticks > want ? *ticks - want : want - *ticks))
			*ticks = d;
		ok = 1;
		if (*ticks > want - want / 20 && *ticks < want + want / 20)
			break;
	}
	return ok;
}

/* ---- ACPI PM timer ---- */

static u16 pm_port;
static u32 pm_read(void) { return inl(pm_port); }

static void pmtimer_checks(void)
{
	if (!check_requested("test.pmtimer", "pmtimer: ACPI PM timer (test.pmtimer)"))
		return;
	/* bhyve: 0x408 (§3.4); on the QEMU path the FADT's (PIIX4/ICH9 0x608) */
	pm_port = 0x408;
	if (no_loader)
		pm_port = acpi_locate() && acpi.fadt ? (u16)le32(acpi.fadt + 76) : 0x608;
	check_begin("pmtimer: port 0x%x (32-bit reads) advances over 1 ms", pm_port);
	u32 a = pm_read();
	udelay(1000);
	u32 b = pm_read();
	if (a == 0xffffffff && b == 0xffffffff) {
		check_fail("reads 0xffffffff: no PM timer");
		return;
	}
	check_result(b - a > 0 && b - a < PM_HZ / 2, "0x%x then 0x%x", a, b);

	check_begin("pmtimer: monotonic over 200 consecutive reads (modulo 2^32)");
	u32 prev = pm_read(), first = prev, i;
	for (i = 0; i < 200; i++) {
		u32 v = pm_read();
		if (v - prev >= 0x80000000u)
			break;
		prev = v;
	}
	check_result(i == 200 && prev != first, "went back at read %u (0x%x after 0x%x)", i, pm_read(), prev);

	check_begin("pmtimer: 3.579545 MHz against the 8254 (50 ms, +-5%%)");
	u32 ticks = 0;
	u64 want = PM_HZ * WINDOW_US / 1000000;
	if (!pit_measure(pm_read, want, &ticks))
		check_fail("8254 channel 2 unusable (OUT2 never went low/high)");
	else
		check_result(ticks > want - want / 20 && ticks < want + want / 20,
		    "%u ticks, want %lu (%lu Hz)", ticks, want, (u64)ticks * 1000000 / WINDOW_US);
}

/* ---- HPET (§6.2) ---- */

#define HPET_PHYS 0xFED00000UL
#define HPET_CAP 0x000
#define HPET_CONFIG 0x010
#define HPET_COUNTER 0x0F0
#define HPET_TIMER(n) (0x100 + 0x20 * (n))
static u64 hpet;
static u32 hpet_count(void) { return mmio_rd32(hpet + HPET_COUNTER); }

static void hpet_checks(void)
{
	if (!check_requested("test.hpet", "hpet: HPET at 0xfed00000 (test.hpet)"))
		return;
	hpet = (u64)mmio_ptr(HPET_PHYS);
	u64 cap = mmio_rd64(hpet + HPET_CAP);
	u32 period = (u32)(cap >> 32);
	check_begin("hpet: capabilities: revision != 0, period 0 < p <= 100 ns (0x05f5e100 fs)");
	if (cap == ~0UL || cap == 0) {
		check_fail("capabilities read 0x%lx: no HPET", cap);
		return;
	}
	check_result((cap & 0xff) && period && period <= 0x05f5e100, "capabilities 0x%lx", cap);
	kprintf("# HPET capabilities 0x%lx: %lu timers, %u-bit, period %u fs\n", cap,
	    ((cap >> 8) & 0x1f) + 1, cap & (1 << 13) ? 64 : 32, period);
	if (check_begin_bhyve("hpet: capabilities 0x05f5e10080860701 (10 MHz, 32-bit, 8 timers, no LEG_RT)"))
		check_result(cap == 0x05f5e10080860701UL, "0x%lx", cap);

	u64 config = mmio_rd64(hpet + HPET_CONFIG);
	mmio_wr64(hpet + HPET_CONFIG, config & ~3UL);
	check_begin("hpet: main counter holds while ENABLE is clear");
	u32 a = hpet_count();
	udelay(1000);
	u32 b = hpet_count();
	check_result(a == b, "0x%x then 0x%x", a, b);

	check_begin("hpet: main counter advances once ENABLE is set");
	mmio_wr64(hpet + HPET_CONFIG, (config & ~3UL) | 1);
	a = hpet_count();
	udelay(1000);
	b = hpet_count();
	check_result(b != a && b - a < 0x80000000u, "0x%x then 0x%x", a, b);

	check_begin("hpet: counts 10^15/period per second against the 8254 (50 ms, +-5%%)");
	u32 ticks = 0;
	u64 want = WINDOW_US * 1000000000UL / period;
	if (!pit_measure(hpet_count, want, &ticks))
		check_fail("8254 channel 2 unusable (OUT2 never went low/high)");
	else
		check_result(ticks > want - want / 20 && ticks < want + want / 20,
		    "%u ticks, want %lu", ticks, want);

	if (check_begin_bhyve("hpet: LEG_RT (config bit 1) reads 0 after writing 1")) {
		mmio_wr64(hpet + HPET_CONFIG, (config & ~3UL) | 3);
		u64 c = mmio_rd64(hpet + HPET_CONFIG);
		check_result((c & 3) == 1, "config 0x%lx", c);
	}
	if (check_begin_bhyve("hpet: timers 0-7: config/cap 0x00f0000000008010, comparator 0xffffffff")) {
		int n;
		for (n = 0; n < 8; n++) {
			u64 tc = mmio_rd64(hpet + HPET_TIMER(n)), cmp = mmio_rd64(hpet + HPET_TIMER(n) + 8);
			if (tc != 0x00f0000000008010UL || cmp != 0xffffffffUL) {
				check_fail("timer %d config 0x%lx comparator 0x%lx", n, tc, cmp);
				break;
			}
		}
		if (n == 8)
			check_pass();
	}
	mmio_wr64(hpet + HPET_CONFIG, config);
}

/* ---- RTC / CMOS (§6.4, §3.6) ---- */

static u8 cmos(u8 reg)
{
	outb(0x70, reg);
	return inb(0x71);
}

static u32 bcd(u8 v, int binary) { return binary ? v : (v >> 4) * 10 + (v & 15); }

static int leap(u32 y) { return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0; }

static void next_day(u32 *y, u32 *m, u32 *d)
{
	static const u8 mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
	u32 n = mdays[*m - 1] + (*m == 2 && leap(*y));
	if (++*d > n) {
		*d = 1;
		if (++*m > 12) {
			*m = 1;
			++*y;
		}
	}
}

/* Waits (bounded) for UIP clear; 0 if it never clears. */
static int rtc_wait_uip(void)
{
	for (int i = 0; i < 100; i++) {
		if (!(cmos(0x0a) & 0x80))
			return 1;
		udelay(100);
	}
	return 0;
}

struct rtc_time {
	u32 sec, min, hour, day, mon, year;
};

static void rtc_read(struct rtc_time *t, u8 regb)
{
	int bin = regb & 4;
	t->sec = bcd(cmos(0x00), bin);
	t->min = bcd(cmos(0x02), bin);
	t->hour = bcd(cmos(0x04) & 0x7f, bin);
	if (!(regb & 2) && (cmos(0x04) & 0x80))	/* 12-hour, PM */
		t->hour = t->hour % 12 + 12;
	t->day = bcd(cmos(0x07), bin);
	t->mon = bcd(cmos(0x08), bin);
	t->year = bcd(cmos(0x32), bin) * 100 + bcd(cmos(0x09), bin);
}

static void check_cmos_memsize(void)
{
	u64 mem;
	if (kenv_get_num("test.memsize", &mem) != 1)
		return;
	if (!check_begin_bhyve("cmos: 0x34-0x35 = (lowmem - 16 MiB) / 64 KiB, 0x5b-0x5d = highmem / 64 KiB (test.memsize)"))
		return;
	u64 low = mem < 0xC0000000UL ? mem : 0xC0000000UL, high = mem - low;
	u32 lw = low > (16 << 20) ? (u32)((low - (16 << 20)) >> 16) : 0, hw = (u32)(high >> 16);
	u32 l = cmos(0x34) | cmos(0x35) << 8, h = cmos(0x5b) | cmos(0x5c) << 8 | (u32)cmos(0x5d) << 16;
	check_result(l == lw && h == hw, "0x%x / 0x%x, want 0x%x / 0x%x", l, h, lw, hw);
}

static void rtc_checks(void)
{
	const char *want = kenv_get("test.rtc");
	u64 y, m, d;
	char buf[8];
	if (!check_requested("test.rtc", "rtc: CMOS date (test.rtc)"))
		return;
	check_begin("rtc: test.rtc is YYYY-MM-DD");
	if (!list_item(want, '-', 0, buf, sizeof(buf)) || !parse_u64(buf, 10, &y) ||
	    !list_item(want, '-', 1, buf, sizeof(buf)) || !parse_u64(buf, 10, &m) ||
	    !list_item(want, '-', 2, buf, sizeof(buf)) || !parse_u64(buf, 10, &d) ||
	    m < 1 || m > 12 || d < 1 || d > 31) {
		check_fail("\"%s\"", want);
		return;
	}
	check_pass();

	check_begin("rtc: status A UIP (bit 7) clears within 10 ms");
	u8 a = cmos(0x0a), b = cmos(0x0b), dreg = cmos(0x0d);
	if (a == 0xff && b == 0xff) {
		check_fail("0x71 reads 0xff: no RTC");
		return;
	}
	check_result(rtc_wait_uip(), "status A 0x%x", cmos(0x0a));
	if (check_begin_bhyve("rtc: power-on status A 0x20, B 0x02 (24h, BCD), D 0x80"))
		check_result((a & 0x7f) == 0x20 && b == 0x02 && dreg == 0x80, "A 0x%x B 0x%x D 0x%x", a, b, dreg);

	struct rtc_time t, t2;
	int same = 0;
	for (int i = 0; i < 5 && !same; i++) {	/* two equal reads = consistent */
		rtc_wait_uip();
		rtc_read(&t, b);
		rtc_read(&t2, b);
		same = memcmp(&t, &t2, sizeof(t)) == 0;
	}
	kprintf("# RTC %04u-%02u-%02u %02u:%02u:%02u (status B 0x%x)\n", t.year, t.mon, t.day, t.hour, t.min, t.sec, b);
	check_begin("rtc: fields valid for status B's format (century from 0x32)");
	check_result(t.sec < 60 && t.min < 60 && t.hour < 24 && t.day >= 1 && t.day <= 31 && t.mon >= 1 &&
	    t.mon <= 12 && t.year >= 1970 && t.year < 2200, "%u-%u-%u %u:%u:%u", t.year, t.mon, t.day, t.hour, t.min, t.sec);
	u32 ny = (u32)y, nm = (u32)m, nd = (u32)d;
	next_day(&ny, &nm, &nd);
	check_begin("rtc: date is test.rtc (or the next day)");
	check_result((t.year == y && t.mon == m && t.day == d) || (t.year == ny && t.mon == nm && t.day == nd),
	    "RTC %04u-%02u-%02u, want %s", t.year, t.mon, t.day, want);

	check_begin("rtc: clock runs (seconds change within 1.2 s)");
	u8 s0 = cmos(0x00), s1 = s0;
	for (int i = 0; i < 24 && s1 == s0; i++) {
		udelay(50000);
		s1 = cmos(0x00);
	}
	check_result(s1 != s0, "seconds stuck at 0x%x", s0);
	check_cmos_memsize();
}

void timer_checks(void)
{
	if (kenv_get("test.pmtimer") || kenv_get("test.hpet") || kenv_get("test.rtc"))
		kprintf("# 8254 channel 2 %s\n", pit_works() ? "counts (delays and rate reference)" :
		    "does not count: delays are loops, no rate reference");
	pmtimer_checks();
	hpet_checks();
	rtc_checks();
}
