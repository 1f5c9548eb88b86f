/*
 * Interrupt delivery (bhyve-platform.md §3.7, §4.9, §6.6, §6.7) —
 * test.uart_irq=1: COM1 raises IRQ 4, edge, which reaches the BSP through
 * I/O APIC pin 4 and the local APIC.
 *
 * Program the pin-4 redirection entry to a vector, enable the local APIC,
 * set IER.ETBEI: the THR is empty, so the UART has a reason at once
 * ("enabling ETXRDY when it was off sets THRE-pending").  Then `sti; hlt`
 * until the handler ran, bounded by a local APIC timer one-shot; the
 * handler reads IIR, which must say THR empty.  Afterwards everything is
 * masked and restored, and the verdicts printed (no console output while
 * ETBEI is on: every byte written would raise the interrupt again).
 */
#include "io.h"

#define COM1 0x3F8
#define IOAPIC_PHYS 0xFEC00000UL
#define VEC_UART 0x41
#define VEC_TIMER 0x42
#define VEC_SPURIOUS 0xFF
#define MSR_APICBASE 0x1B

u32 lapic_rd(u32 reg) { return mmio_rd32((u64)mmio_ptr(LAPIC_BASE) + reg); }
void lapic_wr(u32 reg, u32 v) { mmio_wr32((u64)mmio_ptr(LAPIC_BASE) + reg, v); }

int lapic_ok(void)
{
	u64 b = rdmsr(MSR_APICBASE);
	return (b & 0xfffff000UL) == LAPIC_BASE && (b & (1 << 11)) && !(b & (1 << 10));
}

static u32 ioapic_rd(u32 reg)
{
	u64 base = (u64)mmio_ptr(IOAPIC_PHYS);
	mmio_wr32(base, reg);
	return mmio_rd32(base + 0x10);
}

static void ioapic_wr(u32 reg, u32 v)
{
	u64 base = (u64)mmio_ptr(IOAPIC_PHYS);
	mmio_wr32(base, reg);
	mmio_wr32(base + 0x10, v);
}

/* Interrupt stubs: save the caller-saved registers, call C, iretq.  The
 * spurious vector needs no EOI. */
#define IRQ_STUB(name, fn)                                                     \
	__asm__(".pushsection .text\n" #name ":\n"                             \
		"push %rax\npush %rcx\npush %rdx\npush %rsi\npush %rdi\n"       \
		"push %r8\npush %r9\npush %r10\npush %r11\ncld\ncall " #fn "\n" \
		"pop %r11\npop %r10\npop %r9\npop %r8\npop %rdi\n"              \
		"pop %rsi\npop %rdx\npop %rcx\npop %rax\niretq\n.popsection"); \
	void name(void)
IRQ_STUB(irq_stub_uart, uart_irq);
IRQ_STUB(irq_stub_timer, timer_irq);
__asm__(".pushsection .text\nirq_stub_spurious:\niretq\n.popsection");
void irq_stub_spurious(void);

static volatile u32 uart_irqs, uart_iir, timer_irqs;

void uart_irq(void);
void uart_irq(void)
{
	u8 iir = inb(COM1 + 2);
	if (!uart_irqs++)
		uart_iir = iir;
	lapic_wr(LAPIC_EOI, 0);
}

void timer_irq(void);
void timer_irq(void)
{
	timer_irqs++;
	lapic_wr(LAPIC_EOI, 0);
}

static void check_lapic(void)
{
	u32 r[4];
	check_begin("lapic: APIC base MSR 0xfee00000, enabled, xAPIC mode, BSP flag");
	u64 b = rdmsr(MSR_APICBASE);
	check_result(lapic_ok() && (b & (1 << 8)), "IA32_APIC_BASE 0x%lx", b);
	cpuid(1, r);
	u32 id = lapic_rd(LAPIC_ID) >> 24, ver = lapic_rd(LAPIC_VER);
	check_begin("lapic: ID register = CPUID.1 EBX[31:24] = 0 on the BSP");
	check_result(id == r[1] >> 24 && id == 0, "LAPIC ID %u, CPUID %u", id, r[1] >> 24);
	/* bhyve's vlapic reports 0x10, KVM's 0x14: both are integrated xAPICs */
	check_begin("lapic: version register: integrated APIC (0x10-0x15), >= 6 LVT entries");
	check_result((ver & 0xff) >= 0x10 && (ver & 0xff) <= 0x15 && ((ver >> 16) & 0xff) >= 5, "0x%x", ver);
}

static void check_ioapic(void)
{
	u32 ver = ioapic_rd(1);
	kprintf("# I/O APIC version register 0x%x (%u pins)\n", ver, ((ver >> 16) & 0xff) + 1);
	/* bhyve's vioapic: 0x001f0011; KVM's in-kernel one has 24 pins, which
	 * still covers ISA IRQs and the HPET's GSIs 20-23 (§6.1) */
	if (check_begin_bhyve("ioapic: version 0x11, at least 24 redirection entries (bhyve 32)"))
		check_result((ver & 0xff) == 0x11 && ((ver >> 16) & 0xff) >= 23, "version register 0x%x", ver);
	check_begin("ioapic: pin 4 (COM1) redirection entry masked at start");
	u32 lo = ioapic_rd(0x10 + 2 * 4);
	check_result(lo & (1 << 16), "entry 0x%x", lo);
}

void irq_checks(void)
{
	if (!check_requested("test.uart_irq", "uart irq: COM1 IRQ 4 via the I/O APIC (test.uart_irq)"))
		return;
	check_begin("uart irq: local APIC usable");
	if (!lapic_ok()) {
		check_fail("IA32_APIC_BASE 0x%lx", rdmsr(MSR_APICBASE));
		return;
	}
	check_pass();
	check_lapic();
	check_ioapic();

	u8 pic1 = inb(0x21), pic2 = inb(0xa1);
	u32 svr = lapic_rd(LAPIC_SVR), apic_id = lapic_rd(LAPIC_ID) >> 24;
	u32 redir_lo = ioapic_rd(0x18), redir_hi = ioapic_rd(0x19);
	u8 ier = inb(COM1 + 1);

	/* 8259 fully masked: only the I/O APIC path may deliver */
	outb(0x21, 0xff);
	outb(0xa1, 0xff);
	idt_set(VEC_UART, irq_stub_uart);
	idt_set(VEC_TIMER, irq_stub_timer);
	idt_set(VEC_SPURIOUS, irq_stub_spurious);
	lapic_wr(LAPIC_SVR, 0x100 | VEC_SPURIOUS);
	lapic_wr(LAPIC_TPR, 0);
	/* watchdog: one-shot, divide by 1; 50M ticks = 50 ms at KVM's 1 GHz,
	 * 0.37 s at bhyve's 128 MiHz */
	lapic_wr(LAPIC_TIMER_DCR, 0xb);
	lapic_wr(LAPIC_LVT_TIMER, VEC_TIMER);
	lapic_wr(LAPIC_TIMER_ICR, 50000000);
	u32 c0 = lapic_rd(LAPIC_TIMER_CCR);
	udelay(100);
	u32 c1 = lapic_rd(LAPIC_TIMER_CCR);
	int timer_runs = c1 < c0;

	ioapic_wr(0x19, apic_id << 24);
	ioapic_wr(0x18, VEC_UART);	/* fixed, physical, edge, high, unmasked */
	(void)inb(COM1 + 2);		/* drop a stale THRE reason */
	outb(COM1 + 1, 0x02);		/* IER.ETBEI */
	for (u32 i = 0; i < 100000 && !uart_irqs && !timer_irqs; i++) {
		if (timer_runs)
			__asm__ volatile("sti; hlt; cli" ::: "memory");
		else
			__asm__ volatile("sti; pause; cli" ::: "memory");
	}
	u32 left = lapic_rd(LAPIC_TIMER_CCR);

	/* mask and restore */
	outb(COM1 + 1, ier);
	u8 iir_after = inb(COM1 + 2);
	ioapic_wr(0x18, redir_lo | (1 << 16));
	ioapic_wr(0x19, redir_hi);
	ioapic_wr(0x18, redir_lo);
	lapic_wr(LAPIC_TIMER_ICR, 0);
	lapic_wr(LAPIC_LVT_TIMER, 1 << 16);
	lapic_wr(LAPIC_SVR, svr);
	outb(0x21, pic1);
	outb(0xa1, pic2);

	kprintf("# local APIC timer %s; %u UART and %u timer interrupts, %u ticks left\n",
	    timer_runs ? "counts" : "does not count (polled instead of hlt)", uart_irqs, timer_irqs, left);
	check_begin("uart irq: IER.ETBEI raises IRQ 4 -> I/O APIC pin 4 -> vector 0x41 on the BSP");
	check_result(uart_irqs > 0, "no interrupt (%s)", timer_irqs ? "watchdog fired first" : "bounded wait ran out");
	check_begin("uart irq: IIR in the handler reports THR empty (0x2)");
	check_result(uart_irqs && (uart_iir & 0x0f) == 0x02, "IIR 0x%x", uart_iir);
	check_begin("uart irq: IIR 0x1 (nothing pending) once IER is cleared");
	check_result((iir_after & 0x0f) == 0x01, "IIR 0x%x", iir_after);
}
