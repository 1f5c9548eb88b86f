#!/bin/sh
# Set up a fresh Debian machine and run every test: unit and device tests,
# and boot tests on real KVM, each test process with a private VMM_DIR.
# Ends with one line totalling every test binary's results.
set -eu
cd "$(dirname "$0")/.."
scripts/setup-debian.sh
[ -x "$HOME/.cargo/bin/cargo" ] && PATH="$HOME/.cargo/bin:$PATH"
cargo build --workspace --all-targets
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace -- --test-threads=2 2>&1 | tee "$log" || status=1
# cargo stops at the first failing test binary; the pipeline's status is
# tee's, so take cargo's verdict from its output.
grep -q '^error' "$log" && status=1
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
