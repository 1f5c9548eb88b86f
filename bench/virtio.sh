#!/bin/sh
# virtio-blk and virtio-net throughput (issue 5), side by side in one run:
#  - bhyve-rs and QEMU run the same guest: the test guest's bench mode
#    (tests/guest/src/bench.c), a polled legacy driver that times itself
#    (TSC calibrated on the 8254) and prints BENCH lines on COM1;
#  - the host's own limit on the same file (bench/dio.c: 1 MiB O_DIRECT
#    into a huge-page buffer, as guest RAM can be; dd's 4 KiB-page figure
#    is printed beside it; fio for 4 KiB random reads) and on the same tap
#    (bench/tapload.c: one thread writing or reading the tap's fd, i.e. the
#    VMM's side of the tap without a VMM).
# Every disk path is O_DIRECT (bhyve nocache, QEMU cache=none, dd/fio
# direct) on one 256 MiB scratch file; the network runs inside a namespace
# this script makes and deletes, on a tap with no wire.
# Prints a table of medians over RUNS runs (default 5); "vs QEMU" is the
# median of each run's bhyve-rs/QEMU ratio (the two run back to back), with
# the range of those ratios beside it.
#   RUNS=N       repetitions
#   BENCH_MS=N   length of each measurement window (default 1000)
#   QEMU_AIO=    native (default) or threads, QEMU's -drive aio=
#   BENCH_JSON=F also write every run's figures to F (JSON)
# Needs root, /dev/kvm, qemu-system-x86_64, fio, gcc, ld, make, iproute2.
set -eu
cd "$(dirname "$0")/.."
[ -x "$HOME/.cargo/bin/cargo" ] && PATH="$HOME/.cargo/bin:$PATH"
for t in cargo qemu-system-x86_64 fio gcc ld make ip dd python3; do
    command -v "$t" >/dev/null 2>&1 || {
        echo "bench/virtio.sh: $t not found (Debian: apt-get install qemu-system-x86 fio gcc binutils make iproute2)" >&2
        exit 1
    }
done
[ "$(id -u)" -eq 0 ] || { echo "bench/virtio.sh: must run as root (network namespace, tap)" >&2; exit 1; }
[ -w /dev/kvm ] || { echo "bench/virtio.sh: /dev/kvm is missing or not writable" >&2; exit 1; }
RUNS=${RUNS:-5}
MS=${BENCH_MS:-1000}
AIO=${QEMU_AIO:-native}
case "$RUNS" in '' | *[!0-9]* | 0) echo "bench/virtio.sh: RUNS must be a positive number, not '$RUNS'" >&2; exit 1 ;; esac
case "$MS" in '' | *[!0-9]* | 0) echo "bench/virtio.sh: BENCH_MS must be a positive number, not '$MS'" >&2; exit 1 ;; esac
case "$AIO" in native | threads) ;; *) echo "bench/virtio.sh: QEMU_AIO must be native or threads, not '$AIO'" >&2; exit 1 ;; esac

cargo build --release -q -p bhyve -p bhyveload -p bhyvectl
T=${CARGO_TARGET_DIR:-target}
T=$(cd "$T" && pwd)
B=$T/release
# Scratch space under the target dir: a real filesystem (O_DIRECT fails on
# tmpfs), the same one for the host figures and both VMMs.
W=$(mktemp -d "$T/virtio-bench.XXXXXX")
NS=bhyvers-bench-$$
. bench/vmmdir.sh
vmmdir_setup "$W"
cleanup() {
    "$B/bhyvectl" --vm=vbench --destroy >/dev/null 2>&1 || true
    ip netns del "$NS" 2>/dev/null || true
    vmmdir_cleanup
    rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

make -s -C tests/guest OUT="$W/guest" "$W/guest/kernel"
gcc -O2 -Wall -Wextra -o "$W/tapload" bench/tapload.c
gcc -O2 -Wall -Wextra -o "$W/dio" bench/dio.c
# Real blocks (not a sparse file): O_DIRECT reads of holes never reach the disk.
dd if=/dev/zero of="$W/disk.img" bs=1M count=256 status=none
sync
ip netns add "$NS"
ip netns exec "$NS" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
ip netns exec "$NS" ip tuntap add dev tap0 mode tap
ip netns exec "$NS" ip link set tap0 up

python3 - "$B" "$W" "$NS" "$RUNS" "$MS" "$AIO" "${BENCH_JSON:-}" <<'PY'
import json, os, re, statistics, subprocess, sys, threading, time
B, W, NS, runs, ms, aio, out_json = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6], sys.argv[7]
K, IMG, TL = W + "/guest/kernel", W + "/disk.img", W + "/tapload"
MAC = "02:00:00:00:00:0a"  # tapload floods to it, the guest sends from it
KENV = ["test.bench_vblk=4", "test.bench_vnet=5", f"test.bench_ms={ms}"]
DEVNULL, PIPE = subprocess.DEVNULL, subprocess.PIPE
sys.stdout.reconfigure(line_buffering=True)

ROWS = [  # (result key, what, field)
    ("vblk seqread_1m", "virtio-blk seq read 1 MiB QD1 (MB/s)", "MB/s"),
    ("vblk seqwrite_1m", "virtio-blk seq write 1 MiB QD1 (MB/s)", "MB/s"),
    ("vblk randread_4k_qd1", "virtio-blk rand read 4 KiB QD1 (IOPS)", "IOPS"),
    ("vblk randread_4k_qd32", "virtio-blk rand read 4 KiB QD32 (IOPS)", "IOPS"),
    ("vnet tx_60", "virtio-net TX 60 B frames (frames/s)", "fps"),
    ("vnet tx_1514", "virtio-net TX 1514 B frames (MB/s)", "MB/s"),
    ("vnet rx_60", "virtio-net RX 60 B frames (frames/s)", "fps"),
    ("vnet rx_1514", "virtio-net RX 1514 B frames (MB/s)", "MB/s"),
]
results = {c: {k: [] for k, _, _ in ROWS} for c in ("bhyve", "qemu", "host")}
# per VM and row: (guest code, kicks) as fractions of the window
splits = {c: {k: [] for k, _, _ in ROWS} for c in ("bhyve", "qemu")}
NAMES = {"bhyve": "bhyve-rs", "qemu": "QEMU", "host": "host"}
cpu = {"bhyve": [], "qemu": []}
dd = {"read": [], "write": []}  # the host with dd's 4 KiB-page buffer (MB/s)
problems = []


def ns(*a):
    return ["ip", "netns", "exec", NS, *a]


def tap_rx_packets():
    return int(subprocess.run(ns("cat", "/sys/class/net/tap0/statistics/rx_packets"),
                              check=True, capture_output=True, text=True).stdout)


def kv(words):
    return dict(w.split("=", 1) for w in words if "=" in w)


def guest(who, cmd):
    """Runs one VM with the bench guest; floods the tap with the frame
    length the guest asks for (rx_ready) until it asks for the next."""
    before = tap_rx_packets()
    err = open(f"{W}/{who}.err", "w+")
    p = subprocess.Popen(cmd, stdin=DEVNULL, stdout=PIPE, stderr=err, text=True)
    watchdog = threading.Timer(120, p.kill)  # a hung guest must not hang the bench
    watchdog.start()
    flood, done, got, tx = None, False, {}, 0

    def stop_flood():
        if flood:
            flood.terminate()
            flood.wait()
    try:
        for line in p.stdout:
            w = line.split()
            if not w or w[0] != "BENCH":
                continue
            if w[1] == "error":
                problems.append(f"{who}: {line.strip()}")
            elif w[1] == "done":
                done = True
                stop_flood()
                flood = None
            elif w[1] == "cpu":
                cpu[who].append(kv(w[2:]))
            elif w[1] == "vnet" and w[2] == "rx_ready":
                stop_flood()
                flood = subprocess.Popen(ns(TL, "flood", "tap0", kv(w[3:])["len"], str(ms + 10000)),
                                         stdout=DEVNULL)
            elif w[1] in ("vblk", "vnet"):
                f = kv(w[3:])
                got[w[1] + " " + w[2]] = f
                if int(f.get("errors", 0)):
                    problems.append(f"{who}: {line.strip()}")
                if w[2].startswith("tx_"):
                    tx += int(f["n"])
        p.wait()
    finally:
        watchdog.cancel()
        stop_flood()
        if p.poll() is None:
            p.kill()
            p.wait()
    if not done:
        err.seek(0)
        problems.append(f"{who}: the guest never printed BENCH done (exit {p.returncode}): {err.read().strip()[-300:]}")
    seen = tap_rx_packets() - before
    if tx and seen != tx:
        problems.append(f"{who}: the guest counted {tx} TX frames, the tap received {seen}")
    for key, _, field in ROWS:
        if key in got:
            f = got[key]
            results[who][key].append(float(f[field]))
            splits[who][key].append((int(f["cpu_us"]) / int(f["us"]), int(f["kick_us"]) / int(f["us"])))


def bhyve():
    load = [f"{B}/bhyveload", "-m", "256M", "--kernel", K]
    for e in KENV:
        load += ["-e", e]
    o = subprocess.run(load + ["vbench"], stdout=DEVNULL, stderr=PIPE, text=True)
    if o.returncode:
        problems.append(f"bhyve: bhyveload failed: {o.stderr.strip()}")
        return
    try:
        guest("bhyve", ns(f"{B}/bhyve", "-m", "256M", "-s", "0,hostbridge",
                          "-s", f"4,virtio-blk,{IMG},nocache", "-s", f"5,virtio-net,tap0,mac={MAC}",
                          "-s", "31,lpc", "-l", "com1,stdio", "vbench"))
    finally:
        subprocess.run([f"{B}/bhyvectl", "--vm=vbench", "--destroy"], stdout=DEVNULL, stderr=DEVNULL)


def qemu():
    guest("qemu", ns("qemu-system-x86_64", "-enable-kvm", "-M", "pc", "-m", "256M", "-nodefaults",
                     "-no-reboot", "-display", "none", "-serial", "stdio",
                     "-kernel", K, "-append", " ".join(KENV),
                     "-drive", f"file={IMG},if=none,id=d0,format=raw,cache=none,aio={aio}",
                     "-device", "virtio-blk-pci,drive=d0,addr=4,disable-modern=on",
                     "-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no,vhost=off",
                     "-device", f"virtio-net-pci,netdev=n0,addr=5,mac={MAC},disable-modern=on",
                     "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"))


def dd_mbs(args):
    o = subprocess.run(["dd", *args], check=True, capture_output=True, text=True).stderr
    m = re.search(r"^(\d+) bytes .* copied, ([\d.]+) s", o, re.M)
    return int(m.group(1)) / float(m.group(2)) / 1e6


def fio_iops(qd):
    o = subprocess.run(["fio", "--name=rr", f"--filename={IMG}", "--direct=1", "--rw=randread",
                        "--bs=4k", f"--iodepth={qd}", "--ioengine=" + ("psync" if qd == 1 else "libaio"),
                        f"--runtime={ms}ms", "--time_based", "--output-format=json"],
                       check=True, capture_output=True, text=True).stdout
    return json.loads(o)["jobs"][0]["read"]["iops"]


def tapload(*a):
    o = subprocess.run(ns(TL, *a), check=True, capture_output=True, text=True).stdout
    f = kv(o.split())
    return int(f["n"]), int(f["us"])


def dio(mode):
    o = subprocess.run([W + "/dio", mode, IMG, str(ms)], check=True, capture_output=True, text=True).stdout
    f = kv(o.split())
    return int(f["n"]) * (1 << 20) / int(f["us"])


def host():
    h = results["host"]
    h["vblk seqread_1m"].append(dio("read"))
    h["vblk seqwrite_1m"].append(dio("write"))
    dd["read"].append(dd_mbs([f"if={IMG}", "of=/dev/null", "bs=1M", "iflag=direct"]))
    dd["write"].append(dd_mbs(["if=/dev/zero", f"of={IMG}", "bs=1M", "count=256",
                               "oflag=direct", "conv=notrunc"]))
    h["vblk randread_4k_qd1"].append(fio_iops(1))
    h["vblk randread_4k_qd32"].append(fio_iops(32))
    n, us = tapload("write", "tap0", "60", str(ms))
    h["vnet tx_60"].append(n * 1e6 / us)
    n, us = tapload("write", "tap0", "1514", str(ms))
    h["vnet tx_1514"].append(n * 1514 / us)
    for size, field in ((60, "fps"), (1514, "MB/s")):
        reader = subprocess.Popen(ns(TL, "read", "tap0", str(size), str(ms)), stdout=PIPE, text=True)
        time.sleep(0.3)  # the reader has the tap open before frames come
        flood = subprocess.Popen(ns(TL, "flood", "tap0", str(size), str(ms + 10000)), stdout=DEVNULL)
        out = reader.communicate()[0]
        flood.terminate()
        flood.wait()
        f = kv(out.split())
        if reader.returncode or "n" not in f:
            problems.append(f"host: tapload read {size} failed")
            continue
        n, us = int(f["n"]), int(f["us"])
        h[f"vnet rx_{size}"].append(n * 1e6 / us if field == "fps" else n * size / us)


load0 = os.getloadavg()[0]
t0 = time.time()
try:
    order = [("host", host), ("bhyve-rs", bhyve), ("QEMU", qemu)]
    for r in range(runs):
        # bhyve-rs and QEMU back to back, which first alternating, so each
        # run's pair saw the same machine (see pair_ratio)
        for name, fn in order if r % 2 == 0 else order[::-1]:
            print(f"run {r + 1}/{runs}: {name}", file=sys.stderr, flush=True)
            fn()
except subprocess.CalledProcessError as e:
    sys.exit(f"bench/virtio.sh: {' '.join(map(str, e.cmd))} failed (exit {e.returncode}): "
             f"{(e.stderr or '').strip()[-300:]}")


def med(v):
    return statistics.median(v) if v else None


def cell(v):
    if v is None:
        return "-"
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}"


def ratio(a, b):
    return f"{a / b:.2f}x" if a is not None and b else "-"


def pair_ratio(key):
    """bhyve-rs / QEMU: the median of each run's ratio (the two ran back to
    back, so the machine's drift between runs cancels) and their range."""
    r = [b / q for b, q in zip(results["bhyve"][key], results["qemu"][key]) if q]
    return (statistics.median(r), min(r), max(r)) if r else None


print(f"\nvirtio throughput, median of {runs} run(s), {ms} ms windows, "
      f"{time.time() - t0:.0f} s, load average {load0:.1f} -> {os.getloadavg()[0]:.1f}")
hdr = (f"{'metric':<40} | {'bhyve-rs':>9} | {'QEMU':>9} | {'host limit':>10} | {'vs QEMU':>7} | "
       f"{'(range)':>11} | {'vs host':>7}")
print(hdr)
print("-" * len(hdr))
missed = []
for key, what, _ in ROWS:
    b, q, h = (med(results[c][key]) for c in ("bhyve", "qemu", "host"))
    pr = pair_ratio(key)
    vs_q, rng = (f"{pr[0]:.2f}x", f"{pr[1]:.2f}-{pr[2]:.2f}") if pr else ("-", "-")
    print(f"{what:<40} | {cell(b):>9} | {cell(q):>9} | {cell(h):>10} | {vs_q:>7} | {rng:>11} | {ratio(b, h):>7}")
    if pr and pr[0] < 1:
        missed.append(f"{what}: below QEMU ({vs_q}, runs {rng})")
    if key.endswith("_1m") and b is not None and h and b < h / 2:
        missed.append(f"{what}: not within 2x of the host ({ratio(b, h)})")
print(f"\nwhere each window went, % (median): guest code / kicks (exit + VMM work before the vCPU resumes) / "
      "waiting for the device")
print(f"{'metric':<40} | {'bhyve-rs':>14} | {'QEMU':>14}")


def split(v):
    if not v:
        return "-"
    c, k = med([x[0] for x in v]), med([x[1] for x in v])
    return f"{100 * c:.0f} / {100 * k:.0f} / {100 * max(0, 1 - c - k):.0f}"


for key, what, _ in ROWS:
    print(f"{what:<40} | {split(splits['bhyve'][key]):>14} | {split(splits['qemu'][key]):>14}")
for who, name in (("bhyve", "bhyve-rs"), ("qemu", "QEMU")):
    if cpu[who]:
        loop = med([int(c["loop_ns"]) for c in cpu[who]])
        ex = med([int(c["exit_ns"]) for c in cpu[who]])
        print(f"guest vCPU under {name}: {loop / 1000:.2f} us per 2-instruction loop iteration, "
              f"{ex / 1000:.1f} us per port-I/O exit to the VMM")
print(f"QEMU: -M pc, virtio-*-pci disable-modern=on, -drive cache=none,aio={aio}, tap vhost=off; "
      "bhyve-rs: virtio-blk nocache, virtio-net on the same tap")
print(f"host limit: dio 1 MiB O_DIRECT into a huge page (dd with its 4 KiB-page buffer: read "
      f"{cell(med(dd['read']))}, write {cell(med(dd['write']))} MB/s); "
      "fio randread 4 KiB direct (psync QD1, libaio QD32); "
      "tapload: one thread writing frames to the tap fd (TX), or reading it while "
      "another floods the tap through AF_PACKET (RX)")
spread = max(((max(v) / min(v), NAMES[c], what) for key, what, _ in ROWS for c, r in results.items()
              if len(v := r[key]) > 1 and min(v) > 0), default=None)
if spread:
    print(f"run-to-run spread (max/min): up to {spread[0]:.2f}x ({spread[1]}, {spread[2]}); "
          "the machine is shared, read the medians with that in mind")
if out_json:
    with open(out_json, "w") as f:
        json.dump({"runs": runs, "window_ms": ms, "qemu_aio": aio, "results": results, "dd": dd,
                   "splits": splits, "cpu": cpu, "problems": problems}, f, indent=1)
for m in missed:
    print("target missed: " + m)
for p in problems:
    print("PROBLEM: " + p)
sys.exit(1 if problems else 0)
PY
