#!/bin/sh
# The main job on a fresh Debian machine: set up, build, then replay the
# original bhyve session with the bundled guest (tests/guest, our stand-in
# for a FreeBSD kernel) on a GPT disk image with a UFS2 /boot:
#   bhyveload -d disk.img -m 1024 guest0 ; ls /dev/vmm ;
#   bhyve -A -I -m 1024 -s 0:0,virtio-blk,disk.img -S 31,uart,stdio guest0 ;
#   bhyvectl --vm=guest0 --destroy
# The guest's console (its boot-contract checks) appears on this terminal.
# Then the same guest through scripts/vmrun.sh, FreeBSD's load-run-reboot
# loop: told to reset (test.exit=reset), it is loaded and run again, and
# VMRUN_MAXBOOTS=2 ends the loop after the second boot.
# VMM_DIR defaults to a private directory; set VMM_DIR=/dev/vmm to use the
# FreeBSD location.
set -eu
cd "$(dirname "$0")/.."
scripts/setup-debian.sh
[ -x "$HOME/.cargo/bin/cargo" ] && PATH="$HOME/.cargo/bin:$PATH"
cargo build --release -q -p bhyveload -p bhyve -p bhyvectl
B="${CARGO_TARGET_DIR:-target}/release"
W=target/demo
rm -rf "$W/tree"
mkdir -p "$W/tree/boot/kernel" "$W/tree/etc"
make -s -C tests/guest OUT="$PWD/$W/guest" >/dev/null
cp "$W/guest/kernel" "$W/guest/testmod.ko" "$W/guest/testdep.ko" "$W/tree/boot/kernel/"
cat > "$W/tree/boot/loader.conf" <<'CONF'
autoboot_delay="-1"
testmod_load="YES"
CONF
printf 'hint.uart.0.at="isa"\nhint.uart.0.port="0x3F8"\n' > "$W/tree/boot/device.hints"
printf '/dev/vtbd0p1\t/\tufs\trw\t1\t1\n' > "$W/tree/etc/fstab"
makefs -t ffs -o version=2 -M 8m "$W/ufs.img" "$W/tree" >/dev/null
sectors=$(( $(stat -c %s "$W/ufs.img") / 512 ))

rm -f "$W/disk.img"; truncate -s $(( (sectors + 4096) * 512 )) "$W/disk.img"
sgdisk -o -n "1:2048:$((2048 + sectors - 1))" -t 1:a503 "$W/disk.img" >/dev/null
dd if="$W/ufs.img" of="$W/disk.img" bs=512 seek=2048 conv=notrunc status=none

export VMM_DIR="${VMM_DIR:-$PWD/$W/vmm}"
mkdir -p "$VMM_DIR"
say() { printf '\n\033[1m# %s\033[0m\n' "$*"; }
say "bhyveload -d disk.img -m 1024 guest0"
"$B/bhyvectl" --vm=guest0 --destroy 2>/dev/null || true
"$B/bhyveload" -d "$W/disk.img" -m 1024 -e test.memsize=1073741824 guest0 </dev/null
say "ls $VMM_DIR"
ls "$VMM_DIR"
say "bhyve -A -I -m 1024 -s 0:0,virtio-blk,disk.img -S 31,uart,stdio guest0"
set +e
"$B/bhyve" -A -I -m 1024 -s "0:0,virtio-blk,$W/disk.img" -S 31,uart,stdio guest0
status=$?
set -e
say "bhyve exited $status (1 = the guest powered off)"
say "bhyvectl --vm=guest0 --destroy"
"$B/bhyvectl" --vm=guest0 --destroy
ls "$VMM_DIR"
[ "$status" -eq 1 ]

say "VMRUN_MAXBOOTS=2 scripts/vmrun.sh -m 1024 -d disk.img -e test.exit=reset guest0"
set +e
BHYVE_BIN="$(cd "$B" && pwd)" VMRUN_MAXBOOTS=2 scripts/vmrun.sh -m 1024 -d "$W/disk.img" \
    -e test.memsize=1073741824 -e test.exit=reset guest0 </dev/null >"$W/vmrun.log" 2>&1
status=$?
set -e
# The whole console is in vmrun.log; show the loop and where each boot
# began and ended.
grep -E '^(vmrun.sh|bhyveload|bhyve|bhyvectl):|^Loading kernel|^GUEST-' "$W/vmrun.log"
say "vmrun.sh exited $status (0: the last boot ended in a reset); it destroyed guest0:"
ls "$VMM_DIR"
[ "$status" -eq 0 ] && [ ! -e "$VMM_DIR/guest0" ]
