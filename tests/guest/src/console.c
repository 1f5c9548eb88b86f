/*
 * COM1 output, a small printf, and the check protocol.
 *
 * Output format (one line per check, parsed by tests/guest.rs):
 *   ok <n> - <name>
 *   not ok <n> - <name> # <detail>
 *   ok <n> - <name> # SKIP <reason>
 *   # <free-form note>
 *   GUEST-SUMMARY pass=<p> fail=<f> skip=<s>
 * Check names never contain " # ".
 */
#include <stdarg.h>
#include "io.h"

#define COM1 0x3F8
#define LSR_THRE 0x20

static u32 npass, nfail, nskip, nchecks;
static int active;
static char name_buf[192];

void uart_init(void)
{
	outb(COM1 + 1, 0x00);	/* IER: no interrupts, we poll */
	outb(COM1 + 3, 0x80);	/* DLAB on */
	outb(COM1 + 0, 0x01);	/* divisor 1 = 115200 baud */
	outb(COM1 + 1, 0x00);
	outb(COM1 + 3, 0x03);	/* 8N1, DLAB off */
}

void kputc(char c)
{
	/*
	 * Poll THRE before every byte, but give up after a few hundred tries:
	 * every inb is a VM exit (~5-9 us here) and a missing UART must not
	 * hang the guest (a missing port reads 0xff, which has THRE set
	 * anyway).
	 */
	for (int i = 0; i < 256 && !(inb(COM1 + 5) & LSR_THRE); i++)
		;
	outb(COM1, (u8)c);
}

/* Output sink: the UART, or a bounded buffer for check names. */
struct sink {
	char *buf;
	u64 len, cap;
};

static void sput(struct sink *s, char c)
{
	if (!s) {
		if (c == '\n')
			kputc('\r');
		kputc(c);
	} else if (s->len + 1 < s->cap) {
		s->buf[s->len++] = c;
		s->buf[s->len] = 0;
	}
}

static void put_u64(struct sink *s, u64 v, unsigned base, int width, char pad)
{
	char buf[24];
	int n = 0;
	do {
		unsigned d = v % base;
		buf[n++] = (char)(d < 10 ? '0' + d : 'a' + d - 10);
		v /= base;
	} while (v);
	while (n < width--)
		sput(s, pad);
	while (n)
		sput(s, buf[--n]);
}

/* Strings may come from guest memory the loader wrote: keep them printable
 * and short so that a detail can never break the one-line format. */
static void put_str(struct sink *s, const char *str)
{
	if (!str)
		str = "(null)";
	for (int i = 0; str[i]; i++) {
		if (i == 160) {
			sput(s, '.'), sput(s, '.'), sput(s, '.');
			break;
		}
		char c = str[i];
		if (c == '#')	/* would start a TAP directive */
			c = '?';
		sput(s, c >= 0x20 && c < 0x7f ? c : '?');
	}
}

static void kvprintf(struct sink *s, const char *fmt, va_list ap)
{
	for (; *fmt; fmt++) {
		if (*fmt != '%') {
			sput(s, *fmt);
			continue;
		}
		fmt++;
		char pad = ' ';
		int width = 0, lng = 0;
		if (*fmt == '0') {
			pad = '0';
			fmt++;
		}
		while (*fmt >= '0' && *fmt <= '9')
			width = width * 10 + (*fmt++ - '0');
		while (*fmt == 'l') {
			lng = 1;
			fmt++;
		}
		switch (*fmt) {
		case 'd': {
			i64 v = lng ? va_arg(ap, i64) : va_arg(ap, int);
			if (v < 0) {
				sput(s, '-');
				v = -v;
			}
			put_u64(s, (u64)v, 10, width, pad);
			break;
		}
		case 'u':
			put_u64(s, lng ? va_arg(ap, u64) : va_arg(ap, unsigned), 10, width, pad);
			break;
		case 'x':
			put_u64(s, lng ? va_arg(ap, u64) : va_arg(ap, unsigned), 16, width, pad);
			break;
		case 's':
			put_str(s, va_arg(ap, const char *));
			break;
		case 'c':
			sput(s, (char)va_arg(ap, int));
			break;
		case '%':
			sput(s, '%');
			break;
		default:
			sput(s, '?');
			break;
		}
	}
}

void kprintf(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	kvprintf(NULL, fmt, ap);
	va_end(ap);
}

int ksnprintf(char *buf, u64 cap, const char *fmt, ...)
{
	struct sink s = {buf, 0, cap};
	va_list ap;
	buf[0] = 0;
	va_start(ap, fmt);
	kvprintf(&s, fmt, ap);
	va_end(ap);
	return (int)s.len;
}

static void vcheck_begin(const char *fmt, va_list ap)
{
	struct sink s = {name_buf, 0, sizeof(name_buf)};
	name_buf[0] = 0;
	kvprintf(&s, fmt, ap);
	active = 1;
}

void check_begin(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vcheck_begin(fmt, ap);
	va_end(ap);
}

int check_begin_bhyve(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vcheck_begin(fmt, ap);
	va_end(ap);
	if (no_loader) {
		check_skip("bhyve-specific value, not checked on the multiboot path");
		return 0;
	}
	return 1;
}

int check_requested(const char *var, const char *what)
{
	if (kenv_get(var))
		return 1;
	check_begin("%s", what);
	check_skip("%s not set", var);
	return 0;
}

int check_active(void) { return active; }
int check_failures(void) { return (int)nfail; }

void check_pass(void)
{
	kprintf("ok %u - %s\n", ++nchecks, name_buf);
	npass++;
	active = 0;
}

static void verdict(const char *head, const char *fmt, va_list ap)
{
	kprintf("%s %u - %s # %s", head, ++nchecks, name_buf,
	    head[0] == 'o' ? "SKIP " : "");
	kvprintf(NULL, fmt, ap);
	kprintf("\n");
	active = 0;
}

void check_fail(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	verdict("not ok", fmt, ap);
	va_end(ap);
	nfail++;
}

void check_skip(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	verdict("ok", fmt, ap);
	va_end(ap);
	nskip++;
}

void check_result(int ok, const char *fmt, ...)
{
	if (ok) {
		check_pass();
		return;
	}
	va_list ap;
	va_start(ap, fmt);
	verdict("not ok", fmt, ap);
	va_end(ap);
	nfail++;
}

/* An exception in the middle of a check fails that check (or a synthetic
 * one), so the report stays complete. */
void check_fault(u64 vec, u64 err, u64 rip, u64 cr2)
{
	if (!active)
		check_begin("guest: no unexpected exception");
	check_fail("exception %lu err 0x%lx rip 0x%lx cr2 0x%lx", vec, err, rip, cr2);
}

void check_summary(void)
{
	kprintf("GUEST-SUMMARY pass=%u fail=%u skip=%u\n", npass, nfail, nskip);
}
