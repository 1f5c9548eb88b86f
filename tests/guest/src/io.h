/* Port I/O, control registers and MSRs. */
#ifndef IO_H
#define IO_H
#include "guest.h"

static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" ::"a"(v), "Nd"(port)); }
static inline void outw(u16 port, u16 v) { __asm__ volatile("outw %0, %1" ::"a"(v), "Nd"(port)); }
static inline void outl(u16 port, u32 v) { __asm__ volatile("outl %0, %1" ::"a"(v), "Nd"(port)); }
static inline u16 inw(u16 port)
{
	u16 v;
	__asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}
static inline u32 inl(u16 port)
{
	u32 v;
	__asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}
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
static inline void wrmsr(u32 msr, u64 v)
{
	__asm__ volatile("wrmsr" ::"c"(msr), "a"((u32)v), "d"((u32)(v >> 32)));
}
static inline void cpuid(u32 leaf, u32 r[4])
{
	__asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(0));
}
/* MMIO (pointers from mmio_ptr()): one access of exactly this width. */
static inline u32 mmio_rd32(u64 a) { return *(volatile u32 *)a; }
static inline void mmio_wr32(u64 a, u32 v) { *(volatile u32 *)a = v; }
static inline u64 mmio_rd64(u64 a) { return *(volatile u64 *)a; }
static inline void mmio_wr64(u64 a, u64 v) { *(volatile u64 *)a = v; }
/* Little-endian fields at any alignment (table parsing). */
static inline u16 le16(const void *p) { const u8 *b = p; return (u16)(b[0] | b[1] << 8); }
static inline u32 le32(const void *p) { const u8 *b = p; return b[0] | b[1] << 8 | b[2] << 16 | (u32)b[3] << 24; }
static inline u64 le64(const void *p) { return le32(p) | (u64)le32((const u8 *)p + 4) << 32; }
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
