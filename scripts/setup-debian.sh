#!/bin/sh
# Install what bhyve-rs needs on a fresh Debian 12 machine (run as root):
# the tools the tests use to build disk images and check ACPI tables.
set -eu
pkgs="makefs gdisk fdisk acpica-tools busybox-static iproute2 gcc binutils"
missing=""
for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq $missing >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "setup-debian.sh: cargo is missing; install Rust (rustup or Debian's cargo)" >&2
    exit 1
fi
if [ ! -w /dev/kvm ]; then
    echo "setup-debian.sh: /dev/kvm is not usable: bhyve-rs runs guests on KVM" >&2
    exit 1
fi
