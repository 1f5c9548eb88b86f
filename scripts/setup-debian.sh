#!/bin/sh
# Install what bhyve-rs needs on a fresh Debian 12 machine (run as root):
# the tools the tests use to build guests and disk images and to check ACPI
# tables. Idempotent: installs only what is missing.
set -eu
pkgs="makefs gdisk fdisk acpica-tools busybox-static iproute2 gcc binutils make"
missing=""
for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "setup-debian.sh: installing$missing" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq $missing >/dev/null
fi
# rustup's toolchain lives in ~/.cargo/bin, which a non-login shell (CI)
# may not have on PATH.
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "setup-debian.sh: cargo not found: install Rust >= 1.85 (rustup stable)" >&2
    exit 1
fi
if [ ! -w /dev/kvm ]; then
    echo "setup-debian.sh: /dev/kvm is missing or not writable: bhyve-rs runs guests on KVM" >&2
    exit 1
fi
