#!/bin/sh
# Set up a fresh Debian machine and run every test: unit and device tests,
# and boot tests on real KVM, each test process with a private VMM_DIR.
set -eu
cd "$(dirname "$0")/.."
scripts/setup-debian.sh
[ -x "$HOME/.cargo/bin/cargo" ] && PATH="$HOME/.cargo/bin:$PATH"
cargo build --workspace --all-targets
cargo test --workspace -- --test-threads=2
