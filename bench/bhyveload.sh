#!/bin/sh
# bhyveload's load time: a 30 MB kernel and 5 modules from a UFS2 image
# (issue 3 target: under 100 ms of bhyveload wall time), side by side with
# what the host needs to just read the same image once (cat to /dev/null).
# Prints a table. Needs gcc, ld, makefs (scripts/setup-debian.sh).
set -eu
cd "$(dirname "$0")/.."
[ -x "$HOME/.cargo/bin/cargo" ] && PATH="$HOME/.cargo/bin:$PATH"
cargo build --release -q -p bhyveload -p bhyvectl
BIN=target/release
RUNS=${RUNS:-10}
W=$(mktemp -d)
. bench/vmmdir.sh
trap 'vmmdir_cleanup; rm -rf "$W"' EXIT
vmmdir_setup "$W"

# A kernel linked like FreeBSD's (KERNBASE + 2 MiB) carrying 30 MB of data.
mkdir -p "$W/tree/boot/kernel"
cat > "$W/k.S" <<'ASM'
	.text
	.globl btext
btext:	cli
	hlt
	.data
	.globl blob
blob:	.fill 30*1024*1024, 1, 0x5a
ASM
gcc -c -o "$W/k.o" "$W/k.S"
ld -nostdlib -static -z max-page-size=0x1000 -T tests/guest/kernel.ld -o "$W/tree/boot/kernel/kernel" "$W/k.o"
conf=""
for i in 1 2 3 4 5; do
    printf 'int mod%s_data[16384] = { %s };\nint mod%s_fn(void) { return mod%s_data[1]; }\n' "$i" "$i" "$i" "$i" > "$W/m$i.c"
    gcc -c -O2 -fno-pic -mcmodel=kernel -o "$W/tree/boot/kernel/mod$i.ko" "$W/m$i.c"
    conf="${conf}mod${i}_load=\"YES\"\n"
done
printf "$conf" > "$W/tree/boot/loader.conf"
makefs -t ffs -o version=2 -M 40m "$W/disk.img" "$W/tree" >/dev/null

ms() { echo $(( ($2 - $1) / 1000000 )); }
now() { date +%s%N; }
load_times=""
read_times=""
i=0
while [ "$i" -lt "$RUNS" ]; do
    sync
    t0=$(now); cat "$W/disk.img" > /dev/null; t1=$(now)
    read_times="$read_times $(ms "$t0" "$t1")"
    t0=$(now)
    "$BIN/bhyveload" -m 512M -d "$W/disk.img" bench0 > "$W/out.txt" </dev/null
    t1=$(now)
    load_times="$load_times $(ms "$t0" "$t1")"
    i=$((i + 1))
done
"$BIN/bhyvectl" --vm=bench0 --destroy
grep -q "mod5.ko" "$W/out.txt" || { echo "bench: modules were not loaded:"; cat "$W/out.txt"; exit 1; }

stats() { echo "$1" | tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {printf "%6d %6d %6d", a[1], a[int((NR+1)/2)], a[NR]}'; }
kb=$(( $(stat -c %s "$W/tree/boot/kernel/kernel") / 1024 ))
echo "bhyveload: ${kb} KiB kernel + 5 modules from UFS2, ${RUNS} runs (ms)"
printf '%-44s %6s %6s %6s\n' "what" "min" "median" "max"
printf '%-44s %s\n' "bhyveload -d disk.img -m 512M (target < 100)" "$(stats "$load_times")"
printf '%-44s %s\n' "host: cat disk.img > /dev/null" "$(stats "$read_times")"
