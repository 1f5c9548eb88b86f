/*
 * Legacy virtio PCI plumbing shared by the polled drivers (vblk_checks.c,
 * vnet_checks.c): configuration mechanism #1 for bus 0, and the split
 * ring laid out as the legacy interface fixes it (bhyve-platform.md §4.5:
 * descriptors, avail ring, then the used ring on the next 4 KiB boundary).
 */
#include "io.h"

#define CFG_ADDR 0xCF8
#define CFG_DATA 0xCFC

u32 pci0_rd32(u32 slot, u32 reg)
{
	outl(CFG_ADDR, 0x80000000u | slot << 11 | (reg & 0xfc));
	return inl(CFG_DATA);
}

void pci0_wr32(u32 slot, u32 reg, u32 v)
{
	outl(CFG_ADDR, 0x80000000u | slot << 11 | (reg & 0xfc));
	outl(CFG_DATA, v);
}

void pci0_wr16(u32 slot, u32 reg, u16 v)
{
	outl(CFG_ADDR, 0x80000000u | slot << 11 | (reg & 0xfc));
	outw(CFG_DATA + (reg & 2), v);
}

int vio_function(const char *tag, u16 device, u32 *slot)
{
	char var[16];
	u64 n;
	ksnprintf(var, sizeof(var), "test.%s", tag);
	const char *s = kenv_get(var);
	check_begin("%s: %s is a PCI slot number 0-31", tag, var);
	if (!parse_u64(s, 10, &n) || n > 31) {
		check_fail("\"%s\"", s);
		return 0;
	}
	check_pass();
	*slot = (u32)n;
	u32 id = pci0_rd32(*slot, 0x00);
	check_begin("%s: 0:%u.0 is 1af4:%04x (legacy virtio, 4.5)", tag, *slot, device);
	if (id != ((u32)device << 16 | 0x1af4)) {
		check_fail("found %04x:%04x%s", id & 0xffff, id >> 16,
		    id == 0xffffffff ? " (no function)" : "");
		return 0;
	}
	check_pass();
	return 1;
}

u64 vring_bytes(u16 num)
{
	return ROUNDUP(16 * (u64)num + 2 * (3 + (u64)num), 4096) + ROUNDUP(6 + 8 * (u64)num, 4096);
}

void vring_init(struct vring *r, void *area, u16 num)
{
	u8 *a = area;
	memset(a, 0, vring_bytes(num));
	r->num = num;
	r->desc = (volatile struct vring_desc *)a;
	r->avail = (volatile u16 *)(a + 16 * (u64)num);
	r->used = (volatile u16 *)(a + ROUNDUP(16 * (u64)num + 2 * (3 + (u64)num), 4096));
	r->avail_idx = r->used_idx = 0;
}

void vring_publish(struct vring *r, u16 head)
{
	r->avail[2 + r->avail_idx % r->num] = head;
	vbarrier();
	r->avail[1] = ++r->avail_idx;
	vbarrier();
}

int vring_used_pending(const struct vring *r)
{
	vbarrier();
	return r->used[1] != r->used_idx;
}

volatile struct vring_used_elem *vring_used_elem(const struct vring *r)
{
	return (volatile struct vring_used_elem *)(r->used + 2) + r->used_idx % r->num;
}
