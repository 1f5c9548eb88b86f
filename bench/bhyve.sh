#!/bin/sh
# bhyve's start-up and exit-dispatch costs, side by side in one run:
#  - start-up: from exec of bhyve to the guest's first instruction (its
#    first byte on COM1) for a 1 GiB guest (issue 4 target: < 20 ms);
#  - per port-I/O exit: bhyve's full path (vCPU thread -> inout bus ->
#    unclaimed port) next to a bare kvm-ioctls loop on the same machine.
# Prints a table.
set -eu
cd "$(dirname "$0")/.."
[ -x "$HOME/.cargo/bin/cargo" ] && PATH="$HOME/.cargo/bin:$PATH"
cargo build --release -q -p bhyve -p bhyvectl
cargo build --release -q -p vmm-core --example pio_exit
B=target/release
P=target/release/examples/pio_exit
RUNS=${RUNS:-10}
N=50000
W=$(mktemp -d)
. bench/vmmdir.sh
trap 'vmmdir_cleanup; rm -rf "$W"' EXIT
vmmdir_setup "$W"

python3 - "$B" "$P" "$RUNS" "$N" <<'PY'
import os, subprocess, sys, time, statistics
B, P, runs, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

def sh(*a):
    subprocess.run(a, check=True, stdout=subprocess.DEVNULL)

def startup_ms():
    sh(P, "setup", "start0", "0")
    t0 = time.perf_counter()
    p = subprocess.Popen([B + "/bhyve", "-m", "1G", "-s", "31,lpc", "-l", "com1,stdio", "start0"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    first = p.stdout.read(1)
    t1 = time.perf_counter()
    p.stdout.read()
    rc = p.wait()
    sh(B + "/bhyvectl", "--vm=start0", "--destroy")
    assert first == b"!" and rc == 1, (first, rc)
    return (t1 - t0) * 1e3

def bhyve_exit_us():
    # The same guest with N and with 0 loop iterations: the difference is N exits.
    times = []
    for k in (n, 1):
        sh(P, "setup", "pio0", str(k))
        t0 = time.perf_counter()
        rc = subprocess.run([B + "/bhyve", "-m", "1G", "pio0"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL).returncode
        times.append(time.perf_counter() - t0)
        sh(B + "/bhyvectl", "--vm=pio0", "--destroy")
        assert rc == 1, rc
    return (times[0] - times[1]) * 1e6 / (n - 1)

def raw_exit_us():
    return float(subprocess.run([P, "raw", str(n)], check=True, capture_output=True, text=True).stdout)

rows = [
    ("bhyve start to first guest instruction, 1 GiB (ms, target < 20)", [startup_ms() for _ in range(runs)]),
    ("port-I/O exit, bhyve (us)", [bhyve_exit_us() for _ in range(max(3, runs // 3))]),
    ("port-I/O exit, bare kvm-ioctls loop (us)", [raw_exit_us() for _ in range(max(3, runs // 3))]),
]
print(f"{'what':<66} {'min':>7} {'median':>7} {'max':>7}")
for name, v in rows:
    print(f"{name:<66} {min(v):7.2f} {statistics.median(v):7.2f} {max(v):7.2f}")
PY
