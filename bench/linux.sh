#!/bin/sh
# Linux boot, side by side in one run (issue 6 §5): the real-driver test's
# kernel (tests/linux/, built once and cached) with the same command line,
# memory (256 MiB), vCPUs (2) and ext2 root disk on
#   - bhyve-rs: bhyveload + bhyve, virtio-blk (legacy);
#   - QEMU -M q35 -enable-kvm, virtio-blk-pci disable-modern=on;
#   - QEMU -M microvm -enable-kvm, virtio-blk-device (virtio-mmio).
# Reported: time from start to the first console line (the kernel prints
# its buffered log when the serial console registers), to the kernel's
# "Run /sbin/init", and to the process's exit after a SysRq poweroff; the
# VMM's resident memory excluding guest RAM at init time; and, where a VMM
# does not get there, how far it got (its last console line) and why.
# No network device: IP autoconfiguration is off on all three.
# Prints a table. RUNS=N repeats the bhyve-rs boot (median).
set -eu
cd "$(dirname "$0")/.."
[ -x "$HOME/.cargo/bin/cargo" ] && PATH="$HOME/.cargo/bin:$PATH"
command -v qemu-system-x86_64 >/dev/null ||
    { echo "bench/linux.sh: needs qemu-system-x86 (apt-get install qemu-system-x86)" >&2; exit 1; }
cargo build --release -q -p bhyveload -p bhyve -p bhyvectl
KERNEL=$(tests/linux/build-kernel.sh | tail -n 1)
W=$(mktemp -d)
. bench/vmmdir.sh
trap 'vmmdir_cleanup; rm -rf "$W"' EXIT
vmmdir_setup "$W"
mkdir -p "$W/root/sbin" "$W/root/dev"

# The test's root disk: MBR, partition 1 at 1 MiB, ext2 with the spinning
# /sbin/init (tests/linux/init.S).
gcc -nostdlib -static -o "$W/root/sbin/init" tests/linux/init.S
mke2fs -q -F -t ext2 -d "$W/root" "$W/part.img" 60M
truncate -s 64M "$W/disk.img"
echo 'label: dos
start=2048, type=83' | sfdisk -q "$W/disk.img"
dd if="$W/part.img" of="$W/disk.img" bs=1M seek=1 conv=notrunc status=none

python3 - "$KERNEL" "$W" "${RUNS:-1}" <<'PY'
import os, subprocess, sys, time, statistics, select, signal

kernel, w, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
B = "target/release"
CMDLINE = ("console=ttyS0 root=/dev/vda1 rw ip=off noxsave clearcpuid=151,308 "
           "sysrq_always_enabled panic=-1")
LIMIT = 900.0
# QEMU stops or hangs here long before bhyve-rs's limit: how far it gets
# shows within this.
QEMU_LIMIT = 180.0


def rss_kib(pid, guest_bytes, guest_path=None):
    """Resident KiB of `pid` without the mapping that is guest RAM."""
    total, skip, cur = 0, False, None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            parts = line.split()
            if "-" in parts[0] and len(parts) >= 5 and ":" not in parts[0]:
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                path = parts[5] if len(parts) > 5 else ""
                skip = (guest_path and path == guest_path) or \
                       (not guest_path and hi - lo == guest_bytes)
            elif parts[0] == "Rss:" and not skip:
                total += int(parts[1])
    return total


def boot(argv, name, sysrq, guest_bytes, guest_path=None, limit=LIMIT):
    """Run a VMM until exit; times are from its start."""
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT)
    first = init = done = None
    rss = None
    last = ""
    buf = b""
    poweroff_sent = False
    powered = False
    stuck, stuck_at = None, 0.0
    last_t = None
    while True:
        if stuck and time.monotonic() - stuck_at > 3:
            p.kill()
            break
        if time.monotonic() - t0 > limit:
            p.kill()
            last += " [killed after %ds]" % limit
            break
        r, _, _ = select.select([p.stdout], [], [], 0.5)
        if r:
            chunk = os.read(p.stdout.fileno(), 65536)
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                text = line.decode(errors="replace").rstrip("\r")
                if not text.strip():
                    continue
                last, last_t = text, time.monotonic() - t0
                if "reboot: Power down" in text:
                    powered = True
                if "KVM internal error" in text:
                    # QEMU stops the guest and waits: report where, then
                    # end it after its register dump.
                    stuck, stuck_at = text, time.monotonic()
                if stuck and text.startswith("RIP="):
                    stuck = stuck + " at " + text.split()[0]
                if stuck:
                    last = stuck
                now = time.monotonic() - t0
                if first is None:
                    first = now
                if init is None and "Run /sbin/init" in text:
                    init = now
                    try:
                        rss = rss_kib(p.pid, guest_bytes, guest_path)
                    except OSError:
                        rss = None
                    sysrq(p)
                    poweroff_sent = True
        elif p.poll() is not None:
            break
    p.wait()
    done = time.monotonic() - t0
    if powered:
        last = "reboot: Power down"
    return dict(name=name, first=first, init=init, exit=done if poweroff_sent else None,
                status=p.returncode, rss=rss, last=last, last_t=last_t)


# SysRq sync, remount read-only, power off: what the real-driver test
# does, so no request is in flight when the devices go.
def bhyve_sysrq(p):
    for key in b"suo":
        subprocess.run([B + "/bhyvectl", "--vm=lin0", "--send-break=com1"], check=True,
                       stdout=subprocess.DEVNULL)
        p.stdin.write(bytes([key]))
        p.stdin.flush()
        time.sleep(0.5)


def qemu_sysrq(p):
    # QEMU's mux: C-a b sends a BREAK on the serial line.
    for key in b"suo":
        p.stdin.write(b"\x01b")
        p.stdin.flush()
        time.sleep(0.2)
        p.stdin.write(bytes([key]))
        p.stdin.flush()
        time.sleep(0.5)


results = []
bh = []
for _ in range(runs):
    subprocess.run([B + "/bhyvectl", "--vm=lin0", "--destroy"], stderr=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL)
    t0 = time.monotonic()
    subprocess.run([B + "/bhyveload", "-m", "256M", "--kernel", kernel, "--cmdline", CMDLINE,
                    "lin0"], check=True, stdout=subprocess.DEVNULL)
    load = time.monotonic() - t0
    r = boot([B + "/bhyve", "-c", "2", "-m", "256M", "-A", "-H", "-P", "-s", "0,hostbridge",
              "-s", "3,virtio-blk," + w + "/disk.img", "-s", "31,lpc", "-l", "com1,stdio",
              "lin0"], "bhyve-rs", bhyve_sysrq, 256 << 20,
             os.path.join(os.environ["VMM_DIR"], "lin0", "mem"))
    for k in ("first", "init", "exit"):
        if r[k] is not None:
            r[k] += load
    bh.append(r)
    subprocess.run([B + "/bhyvectl", "--vm=lin0", "--destroy"], stdout=subprocess.DEVNULL)
ok = [r for r in bh if r["init"] is not None]
pick = sorted(ok or bh, key=lambda r: r["init"] or 0)[len(ok or bh) // 2]
results.append(pick)

disk = ["-drive", "file=%s/disk.img,if=none,id=d0,format=raw" % w]
# The default CPU model: -cpu host makes QEMU abort on this host's KVM
# (kvm_buf_set_msrs).
common = ["-enable-kvm", "-smp", "2", "-m", "256", "-nographic", "-no-reboot",
          "-serial", "mon:stdio", "-monitor", "none", "-kernel", kernel, "-append", CMDLINE]
results.append(boot(["qemu-system-x86_64", "-M", "q35"] + common + disk +
                    ["-device", "virtio-blk-pci,drive=d0,disable-modern=on"],
                    "QEMU q35", qemu_sysrq, 256 << 20, limit=QEMU_LIMIT))
results.append(boot(["qemu-system-x86_64", "-M", "microvm"] + common + disk +
                    ["-device", "virtio-blk-device,drive=d0"],
                    "QEMU microvm", qemu_sysrq, 256 << 20, limit=QEMU_LIMIT))


def s(v):
    return "-" if v is None else "%.1f s" % v


print("\nLinux 6.1 boot (tests/linux kernel), 2 vCPUs, 256 MiB, ext2 root on virtio-blk")
print("%-13s | %12s | %14s | %15s | %10s | %s" %
      ("VMM", "console up", "Run /sbin/init", "exit (poweroff)", "RSS - RAM", "exit status / last line"))
for r in results:
    rss = "-" if r["rss"] is None else "%.1f MiB" % (r["rss"] / 1024)
    print("%-13s | %12s | %14s | %15s | %10s | %s: at %s: %s" %
          (r["name"], s(r["first"]), s(r["init"]), s(r["exit"]), rss, r["status"],
           s(r["last_t"]), r["last"][-90:]))
b = results[0]
for q in results[1:]:
    if b["init"] and q["init"]:
        print("%s: bhyve-rs reaches init in %.2fx its time" % (q["name"], b["init"] / q["init"]))
    else:
        print("%s: did not reach init here; see its last line" % q["name"])
if b["rss"] is not None:
    print("bhyve-rs resident memory without guest RAM: %.1f MiB (target <= 8 MiB)" % (b["rss"] / 1024))
PY
