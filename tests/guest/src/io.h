/* Port I/O, control registers and MSRs. */
#ifndef IO_H
#define IO_H
#include "guest.h"

static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" ::"a"(v), "Nd"(port)); }
static inline void outw(u16 port, u16 v) { __asm__ volatile("outw %0, %1" ::"a"(v), "Nd"(port)); }
static inline u8 inb(u16 port)
{
	u8 v;
	__asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}
static inline u64 rdmsr(u32 msr)
{
	u32 lo, hi;
	__asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
	return ((u64)hi << 32) | lo;
}
#define READ_CR(n)                                                   \
	static inline u64 read_cr##n(void)                           \
	{                                                            \
		u64 v;                                               \
		__asm__ volatile("mov %%cr" #n ", %0" : "=r"(v));    \
		return v;                                            \
	}
READ_CR(0)
READ_CR(2)
READ_CR(3)
READ_CR(4)
#endif
