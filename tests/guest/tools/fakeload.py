#!/usr/bin/env python3
"""
Development aid, not used by the cargo tests: boot the test guest on KVM
through its FreeBSD entry with a minimal Python re-implementation of the
hand-off in shared/docs/freebsd-boot-abi.md (userboot layout, metadata,
environment, page tables, GDT, registers), so the guest's own checks can be
exercised before bhyve-rs' bhyveload/bhyve exist.  Only a cross-check of the
guest against one reading of the document: the real contract is the
document, and the real loader is crates/bhyveload.

usage: fakeload.py [--mem BYTES] [--env name=value]... [--raw PATH:TYPE]...
                   [--args 'kernel args'] [--break WHAT] KERNEL [MODULE.ko]...
--break deliberately violates one rule (e.g. smap, bss, order, pagetables,
envsort, symbols, koaddr) to see that the guest notices.
"""
import argparse, ctypes, mmap, os, struct, sys

KERNBASE = 0xffffffff80000000
PAGE = 4096


def rnd(x, a):
    return x if a <= 1 else (x + a - 1) // a * a


class Mem:
    def __init__(self, size):
        self.size = size
        self.m = mmap.mmap(-1, size, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)

    def w(self, addr, data):
        assert addr + len(data) <= self.size, hex(addr)
        self.m[addr:addr + len(data)] = data

    def z(self, addr, n):
        self.w(addr, bytes(n))


def load_kernel(mem, path, brk):
    b = open(path, 'rb').read()
    (e_type, e_machine, _, e_entry, e_phoff, e_shoff, _, _, e_phentsize, e_phnum,
     e_shentsize, e_shnum, e_shstrndx) = struct.unpack_from('<HHIQQQIHHHHHH', b, 16)
    assert e_type == 2 and e_machine == 62
    dest = e_entry & ~0xfff
    off = (-(dest & 0xffffffffff000000)) & 0xffffffffffffffff
    first, last, ranges = None, 0, []
    for i in range(e_phnum):
        p_type, _, p_off, p_vaddr, _, p_filesz, p_memsz, _ = struct.unpack_from(
            '<IIQQQQQQ', b, e_phoff + i * e_phentsize)
        if p_type != 1:
            continue
        pa = (p_vaddr + off) & 0xffffffffffffffff
        mem.w(pa, b[p_off:p_off + p_filesz])
        if brk == 'bss':  # leave junk where the BSS should be zero
            mem.w(pa + p_filesz, b'\xaa' * (p_memsz - p_filesz))
        else:
            mem.z(pa + p_filesz, p_memsz - p_filesz)
        ranges.append((p_off, p_off + p_filesz))
        first = pa if first is None else min(first, pa)
        last = max(last, pa + p_memsz)
    last = rnd(last, 8)
    shdr = b[e_shoff:e_shoff + e_shnum * e_shentsize]
    md = []
    ssym = esym = None
    secs = [struct.unpack_from('<IIQQQQIIQQ', shdr, i * 64) for i in range(e_shnum)]
    for s in secs:
        if s[1] == 2 and not any(a <= s[4] < z for a, z in ranges):
            sym, st = s, secs[s[6]]
    if brk != 'symbols':
        ssym = last
        a = last
        for s in (sym, st):
            mem.w(a, struct.pack('<Q', s[5]))
            mem.w(a + 8, b[s[4]:s[4] + s[5]])
            a = rnd(a + 8 + s[5], 8)
        esym = last = a
    md.append((0x8002, b[:64]))
    if esym:
        md.append((0x8004, struct.pack('<Q', esym)))
        md.append((0x8003, struct.pack('<Q', ssym)))
    md.append((0x8009, shdr))
    return dict(name='/boot/kernel/kernel', type='elf kernel', addr=first,
                size=last - first, md=md, entry=e_entry)


def load_ko(mem, path, dest, brk):
    b = open(path, 'rb').read()
    e_shoff, = struct.unpack_from('<Q', b, 40)
    e_shnum, e_shstrndx = struct.unpack_from('<HH', b, 60)
    sh = [list(struct.unpack_from('<IIQQQQIIQQ', b, e_shoff + i * 64)) for i in range(e_shnum)]
    dest = rnd(dest, PAGE) + (0x100 if brk == 'koaddr' else 0)
    first = last = dest
    for s in sh:
        s[3] = 0
    def place(s):
        nonlocal last
        last = rnd(last, s[8])
        s[3] = last
        last += s[5]
    for s in sh:
        if s[5] and s[1] in (1, 8, 0x70000001) and s[2] & 2:
            place(s)
    symi = [i for i, s in enumerate(sh) if s[1] == 2][0]
    place(sh[symi])
    place(sh[sh[symi][6]])
    place(sh[e_shstrndx])
    for s in sh:
        if s[1] in (4, 9) and sh[s[7]][2] & 2:
            place(s)
    mem.z(first, last - first)
    for s in sh:
        if s[3] and s[1] != 8:
            mem.w(s[3], b[s[4]:s[4] + s[5]])
    shdr = b''.join(struct.pack('<IIQQQQIIQQ', *s) for s in sh)
    return dict(name='/boot/kernel/' + os.path.basename(path), type='elf obj module',
                addr=first, size=last - first,
                md=[(0x8002, b[:64]), (0x8009, shdr)])


def rec(t, data):
    return struct.pack('<II', t, len(data)) + data + bytes(rnd(len(data), 8) - len(data))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--mem', type=int, default=256 << 20)
    ap.add_argument('--env', action='append', default=[])
    ap.add_argument('--raw', action='append', default=[])
    ap.add_argument('--args', default=None)
    ap.add_argument('--break', dest='brk', default='')
    ap.add_argument('--image', help='run a guest memory image written by another loader '
                    '(e.g. bhyve-rs bhyveload\'s VMM_DIR/<vm>/mem) instead of loading; '
                    'registers are still set here, per the document')
    ap.add_argument('kernel')
    ap.add_argument('modules', nargs='*')
    o = ap.parse_args()
    mem = Mem(o.mem)
    if o.image:
        img = open(o.image, 'rb').read()
        mem.w(0, img[:o.mem])
        e_entry, = struct.unpack_from('<Q', open(o.kernel, 'rb').read(), 24)
        sys.exit(run(mem, e_entry))
    files = [load_kernel(mem, o.kernel, o.brk)]
    for m in o.modules:
        f = files[-1]
        files.append(load_ko(mem, m, f['addr'] + f['size'], o.brk))
    for r in o.raw:
        path, typ = r.split(':')
        f = files[-1]
        data = open(path, 'rb').read()
        a = f['addr'] + f['size']
        mem.w(a, data)
        files.append(dict(name='/boot/' + os.path.basename(path), type=typ, addr=a,
                          size=len(data), md=[]))
    env = {'LINES': '24', 'console': 'userboot', 'currdev': 'host0:', 'loaddev': 'host0:',
           'smbios.bios.vendor': 'BHYVE', 'boot_serial': '1', 'kernelname': files[0]['name']}
    for e in o.env:
        n, v = e.split('=', 1)
        env[n] = v
    names = sorted(env, key=lambda s: s.encode())
    if o.brk == 'envsort':
        names.reverse()
    envb = b''.join(f'{n}={env[n]}'.encode() + b'\0' for n in names) + b'\0'
    howto = 0
    flags = dict(boot_askname=1, boot_single=2, boot_dfltroot=0x20, boot_ddb=0x40,
                 boot_verbose=0x800, boot_serial=0x1000, boot_cdrom=0x2000, boot_gdb=0x8000,
                 boot_mute=0x10000, boot_pause=0x100000, boot_multicons=0x20000000)
    for n, m in flags.items():
        if n in env and env[n].lower() != 'no':
            howto |= m
    letters = dict(a=1, C=0x2000, d=0x40, D=0x20000000, m=0x10000, g=0x8000, h=0x1000,
                   p=0x100000, r=0x20, s=2, v=0x800)
    active = False
    for c in (o.args or ''):
        if not active and c == '-':
            active = True
        elif active:
            if c in letters:
                howto |= letters[c]
            else:
                active = False
    addr = rnd(max(f['addr'] + f['size'] for f in files), PAGE)
    envp = addr
    mem.w(envp, envb)
    modulep = rnd(envp + len(envb), PAGE)
    lowmem = min(o.mem, 3 << 30)
    smap = struct.pack('<QQI', 0, 0xa0000, 1) + struct.pack('<QQI', 0x100000, lowmem - 0x100000, 1)
    if o.brk == 'smap':
        smap = smap[:20]

    def build(kernend):
        out = b''
        for i, f in enumerate(files):
            out += rec(1, f['name'].encode() + b'\0') + rec(2, f['type'].encode() + b'\0')
            if i == 0 and o.args:
                out += rec(6, o.args.encode() + b'\0')
            rs = [rec(3, struct.pack('<Q', f['addr'])), rec(4, struct.pack('<Q', f['size']))]
            if i == 0:
                kmd = [(0x9001, smap), (0x8008, struct.pack('<Q', kernend)),
                       (0x8006, struct.pack('<Q', envp)), (0x8007, struct.pack('<I', howto))]
                kmd += f['md']
                if o.brk == 'order':
                    kmd.reverse()
                rs += [rec(t, d) for t, d in kmd]
            else:
                rs += [rec(t, d) for t, d in f['md']]
            out += b''.join(rs)
        return out + rec(0, b'')
    kernend = rnd(modulep + len(build(0)), PAGE)
    mem.w(modulep, build(kernend))
    # stack, page tables, GDT (§1.4, §2)
    mem.w(0x1000, struct.pack('<III', 0, modulep, kernend))
    for i in range(512):
        mem.w(0x2000 + 8 * i, struct.pack('<Q', 0x3003))
        mem.w(0x3000 + 8 * i, struct.pack('<Q', 0x4003))
        pde = (i << 21) | 0x83
        if o.brk == 'pagetables' and i == 5:
            pde |= 4
        mem.w(0x4000 + 8 * i, struct.pack('<Q', pde))
    mem.w(0x5000, struct.pack('<QQQ', 0, 0x0020980000000000, 0x0000900000000000))
    print(f'# fakeload: modulep {modulep:#x} kernend {kernend:#x} envp {envp:#x}', file=sys.stderr)
    sys.exit(run(mem, files[0]['entry']))


def run(mem, entry):
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ioctl.restype = ctypes.c_int
    libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
    kvm = os.open('/dev/kvm', os.O_RDWR)
    vm = libc.ioctl(kvm, 0xAE01, None)
    assert vm >= 0
    libc.ioctl(vm, 0xAE47, ctypes.c_void_p(0xfffbd000))
    buf = ctypes.c_char.from_buffer(mem.m)
    region = struct.pack('<IIQQQ', 0, 0, 0, mem.size, ctypes.addressof(buf))
    rb = ctypes.create_string_buffer(region)
    assert libc.ioctl(vm, 0x4020AE46, rb) == 0
    vcpu = libc.ioctl(vm, 0xAE41, None)
    assert vcpu >= 0
    # CPUID: KVM refuses EFER.LME unless the guest CPUID has LM
    n = 100
    cb = ctypes.create_string_buffer(8 + 40 * n)
    struct.pack_into('<I', cb, 0, n)
    assert libc.ioctl(kvm, 0xC008AE05, cb) == 0, ctypes.get_errno()
    assert libc.ioctl(vcpu, 0x4008AE90, cb) == 0, ctypes.get_errno()
    sz = libc.ioctl(kvm, 0xAE04, None)
    run_m = mmap.mmap(vcpu, sz, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    sregs = ctypes.create_string_buffer(312)
    assert libc.ioctl(vcpu, 0x8138AE83, sregs) == 0

    def seg(off, sel, typ, s, present, l, unusable=0):
        struct.pack_into('<QIHBBBBBBBBBB', sregs, off, 0, 0, sel, typ, present, 0, 0, s, l, 0, 0,
                         unusable, 0)
    seg(0, 0x08, 0xB, 1, 1, 1)
    for off in (24, 48, 72, 96, 120):
        seg(off, 0x10, 0x3, 1, 1, 0)
    seg(144, 0, 0xB, 0, 1, 0)
    seg(168, 0, 0, 0, 0, 0, 1)
    struct.pack_into('<QH', sregs, 192, 0x5000, 23)
    struct.pack_into('<QQQQ', sregs, 224, 0x80000021, 0, 0x2000, 0x20)
    struct.pack_into('<Q', sregs, 264, 0x500)
    assert libc.ioctl(vcpu, 0x4138AE84, sregs) == 0, ctypes.get_errno()
    regs = ctypes.create_string_buffer(144)
    struct.pack_into('<Q', regs, 48, 0x1000)
    struct.pack_into('<QQ', regs, 128, entry, 2)
    assert libc.ioctl(vcpu, 0x4090AE82, regs) == 0
    out = sys.stdout.buffer
    while True:
        r = libc.ioctl(vcpu, 0xAE80, None)
        if r < 0:
            print(f'KVM_RUN errno {ctypes.get_errno()}', file=sys.stderr)
            return 10
        reason, = struct.unpack_from('<I', run_m, 8)
        if reason == 2:  # IO
            d, size, port, count, doff = struct.unpack_from('<BBHIQ', run_m, 32)
            if d == 1:
                val = int.from_bytes(run_m[doff:doff + size], 'little')
                if port == 0x3f8:
                    out.write(bytes([val & 0xff]))
                    out.flush()
                elif port == 0x404 and size == 2 and val & 0x2000 and (val >> 10) & 7 == 5:
                    print('# fakeload: poweroff', file=sys.stderr)
                    return 1
                elif port == 0xcf9 and val & 4:
                    print('# fakeload: reset', file=sys.stderr)
                    return 0
            else:
                v = 0x60 if port == 0x3fd else 0xff
                run_m[doff:doff + size] = bytes([v] * size)
        elif reason == 5:
            print('# fakeload: halt', file=sys.stderr)
            return 2
        elif reason == 8:
            print('# fakeload: triple fault', file=sys.stderr)
            return 3
        else:
            extra = ''
            if reason == 17:
                sub, nd = struct.unpack_from('<II', run_m, 32)
                extra = f' suberror {sub} data ' + ' '.join(
                    hex(x) for x in struct.unpack_from(f'<{min(nd, 16)}Q', run_m, 40))
            libc.ioctl(vcpu, 0x8090AE81, regs)
            rip, = struct.unpack_from('<Q', regs, 128)
            print(f'# fakeload: exit reason {reason}{extra} rip {rip:#x}', file=sys.stderr)
            return 4


if __name__ == '__main__':
    main()
