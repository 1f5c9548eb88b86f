/*
 * Multiprocessor start-up (bhyve-platform.md §5.5, §5.8, §6.7, §6.8) —
 * test.ncpus=N: the MADT lists N enabled local APICs, the MP table N
 * processors, and INIT-SIPI-SIPI (broadcast to all but self, MP spec B.4)
 * starts exactly N-1 APs, which reach long mode through ap_tramp.S and
 * report their APIC IDs (must be 1..N-1: APIC ID = vCPU number).  APs then
 * stay in `cli; hlt`.
 */
#include "io.h"

#define TRAMP_PHYS 0x8000
#define AP_MAX 15
#define MAXCPU (AP_MAX + 1)
#define ICR_BUSY (1 << 12)
#define ICR_ALL_BUT_SELF (3 << 18)
#define ICR_ASSERT (1 << 14)
#define ICR_INIT (5 << 8)
#define ICR_STARTUP (6 << 8)

extern const u8 ap_tramp_start[], ap_tramp_end[], ap_tramp_cr3[];
volatile u32 ap_next, ap_count;
static volatile u8 ap_cpuid_id[AP_MAX], ap_lapic_id[AP_MAX];

void ap_main(u32 idx);
void ap_main(u32 idx)
{
	u32 r[4];
	idt_load();		/* a fault reports instead of a triple fault */
	cpuid(1, r);
	ap_cpuid_id[idx] = (u8)(r[1] >> 24);
	ap_lapic_id[idx] = (u8)(lapic_rd(LAPIC_ID) >> 24);
	__atomic_fetch_add(&ap_count, 1, __ATOMIC_SEQ_CST);
	for (;;)
		__asm__ volatile("cli; hlt");
}

/* Sends an IPI and waits (bounded) for the delivery status to clear. */
static int ipi(u32 icr_lo)
{
	lapic_wr(LAPIC_ICR_HI, 0);
	lapic_wr(LAPIC_ICR_LO, icr_lo);
	for (int i = 0; i < 1000; i++) {
		if (!(lapic_rd(LAPIC_ICR_LO) & ICR_BUSY))
			return 1;
		udelay(10);
	}
	return 0;
}

static void check_count(const char *name, int n, u64 want, const u8 *ids)
{
	check_begin("smp: %s lists test.ncpus (%lu) enabled processors, APIC IDs 0..n-1", name, want);
	if (n < 0) {
		check_fail("no %s", name);
		return;
	}
	int ok = (u64)n == want;
	for (int i = 0; ok && i < n && i < MAXCPU; i++)
		ok = ids[i] == i;
	check_result(ok, "%d processors, first IDs %u %u %u", n, ids[0], n > 1 ? ids[1] : 0, n > 2 ? ids[2] : 0);
}

void smp_checks(void)
{
	u64 n;
	u8 ids[MAXCPU] = {0};
	if (!check_requested("test.ncpus", "smp: MADT, MP table and AP start-up (test.ncpus)"))
		return;
	check_begin("smp: test.ncpus is 1..%d", MAXCPU);
	if (kenv_get_num("test.ncpus", &n) != 1 || n < 1 || n > MAXCPU) {
		check_fail("\"%s\"", kenv_get("test.ncpus"));
		return;
	}
	check_pass();

	acpi_locate();
	check_count("MADT", madt_lapics(ids, MAXCPU), n, ids);
	memset(ids, 0, sizeof(ids));
	check_count("MP table", mptable_cpus(ids, MAXCPU), n, ids);

	check_begin("smp: INIT, SIPI, SIPI (all but self) delivered by the local APIC");
	if (!lapic_ok()) {
		check_fail("IA32_APIC_BASE 0x%lx", rdmsr(0x1b));
		return;
	}
	u8 *tramp = phys_ptr(TRAMP_PHYS, PAGE_SIZE);
	memcpy(tramp, ap_tramp_start, ap_tramp_end - ap_tramp_start);
	*(volatile u32 *)(tramp + (ap_tramp_cr3 - ap_tramp_start)) = (u32)read_cr3();
	lapic_wr(LAPIC_SVR, lapic_rd(LAPIC_SVR) | 0x100);
	int sent = ipi(ICR_ALL_BUT_SELF | ICR_ASSERT | ICR_INIT);
	udelay(10000);
	for (int i = 0; i < 2 && sent; i++) {
		sent = ipi(ICR_ALL_BUT_SELF | ICR_ASSERT | ICR_STARTUP | (TRAMP_PHYS >> 12));
		udelay(200);
	}
	check_result(sent, "ICR delivery status stuck: 0x%x", lapic_rd(LAPIC_ICR_LO));

	/* up to 2 s for all, then 20 ms more to catch extra ones */
	u32 waited = 0;
	while (ap_count < n - 1 && waited < 2000) {
		udelay(10000);
		waited += 10;
	}
	udelay(20000);
	u32 got = ap_count;
	kprintf("# %u APs reported in after ~%u ms%s\n", got, waited,
	    pit_works() ? "" : " (8254 does not count: delays were loops)");
	check_begin("smp: exactly test.ncpus - 1 (%lu) APs reached long mode and reported in", n - 1);
	check_result(got == n - 1, "%u APs within %u ms", got, waited + 20);

	check_begin("smp: AP APIC IDs (CPUID and LAPIC ID register agree) are 1..N-1, each once");
	u32 seen = 0, bad = 0;
	for (u32 i = 0; i < got && i < AP_MAX; i++) {
		u8 id = ap_cpuid_id[i];
		if (id != ap_lapic_id[i] || id == 0 || id >= n || (seen & (1u << id)))
			bad = 1;
		else
			seen |= 1u << id;
	}
	check_result(!bad, "AP IDs (cpuid/lapic) %u/%u %u/%u %u/%u ...", ap_cpuid_id[0], ap_lapic_id[0],
	    ap_cpuid_id[1], ap_lapic_id[1], ap_cpuid_id[2], ap_lapic_id[2]);
}
