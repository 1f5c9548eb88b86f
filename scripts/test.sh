#!/bin/sh
# Set up a fresh Debian machine and run every test (unit, device, and boot
# tests on real KVM with a private VMM_DIR).
set -eu
cd "$(dirname "$0")/.."
scripts/setup-debian.sh
cargo build --workspace --all-targets
cargo test --workspace -- --test-threads=2
