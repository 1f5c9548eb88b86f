#!/bin/bash
# vmrun.sh — load and run a bhyve-rs guest until it stops, in the manner of
# FreeBSD's /usr/share/examples/bhyve/vmrun.sh: bhyveload, then bhyve; when
# the guest resets (bhyve exits 0) load and run it again; on power-off (1),
# halt (2), triple fault (3), an error (4) or a signal, stop, destroy the
# instance and exit with bhyve's status.
#
# Differences from FreeBSD's script, because of what bhyve-rs is:
#   * no default disk (./diskdev) or tap (tap0): nothing is created behind
#     your back; give -d and -t explicitly;
#   * -k/-i/-a load a kernel from a host file (bhyveload --kernel, --initrd,
#     --cmdline), e.g. a Linux bzImage; FreeBSD's -a (xAPIC) is bhyve's
#     default here anyway;
#   * an instance that exists is re-initialised by bhyveload, not destroyed
#     first, so a guest that is running elsewhere is refused, not killed;
#   * no installer ISO, UEFI, VNC, gdb or PCI pass-through.
# bash rather than sh: arguments such as -a "console=ttyS0 root=/dev/vda"
# must survive intact, which needs arrays.
set -u

prog=vmrun.sh
default_mem=512M
default_cpus=2
default_console=stdio

synopsis() {
    cat <<EOF
Usage: vmrun.sh [-huw] [-c ncpus] [-C console] [-d disk[,opts]]... [-e name=value]...
                [-H directory] [-m memsize] [-t tapdev]...
                [-k kernel [-i initrd] [-a cmdline]] vmname
EOF
}

usage() {
    synopsis
    cat <<EOF

  -h  display this help message
  -c  number of virtual CPUs (default: $default_cpus)
  -C  console: stdio or a terminal device such as /dev/pts/3
      (default: $default_console); the loader and COM1 both use it
  -d  disk image for virtio-blk, repeatable: slots 4, 5, ...; bhyveload
      reads /boot from the first; ",opts" go to bhyve (e.g. ",ro")
  -e  set a loader environment variable (bhyveload -e), repeatable
  -H  host directory the loader may read (bhyveload -h)
  -m  memory size (default: $default_mem)
  -t  tap device for virtio-net, repeatable: the slots after the disks
  -u  RTC keeps UTC (bhyve -u)
  -w  ignore unimplemented MSRs (bhyve -w)
  -k  kernel file on the host (bhyveload --kernel): a FreeBSD kernel, or a
      Linux bzImage (then -e and -H do not apply)
  -i  initrd for a -k bzImage (bhyveload --initrd)
  -a  kernel command line for a -k bzImage (bhyveload --cmdline)

Environment:
  BHYVE_BIN        directory holding bhyveload, bhyve and bhyvectl (default:
                   this repository's target/release, else PATH)
  VMM_DIR          where instances live (default /dev/vmm)
  VMRUN_MAXBOOTS   stop after this many boots even if the guest resets
                   (for scripts and tests; default: no limit)

Exit status: bhyve's last (0 reset, 1 power-off, 2 halt, 3 triple fault,
4 error), or bhyveload's when loading fails; 64 for bad arguments
(including missing files).
EOF
}

die_usage() {
    echo "$prog: $1" >&2
    synopsis >&2
    echo "($prog -h for help)" >&2
    exit 64
}

die() {
    echo "$prog: $1" >&2
    exit "${2:-1}"
}

is_count() {
    case $1 in
    '' | *[!0-9]* | 0*) return 1 ;;
    esac
}

mem=$default_mem
cpus=$default_cpus
console=$default_console
disks=()
taps=()
loader_opts=()
bhyve_opts=()
kernel=""
initrd=""
cmdline=""
cmdline_set=0

while getopts ":a:c:C:d:e:hH:i:k:m:t:uw" opt; do
    case $opt in
    a) cmdline=$OPTARG cmdline_set=1 ;;
    c) cpus=$OPTARG ;;
    C) console=$OPTARG ;;
    d) disks+=("$OPTARG") ;;
    e)
        case $OPTARG in
        ?*=*) loader_opts+=(-e "$OPTARG") ;;
        *) die_usage "-e $OPTARG: expected name=value" ;;
        esac
        ;;
    h)
        usage
        exit 0
        ;;
    H)
        [ -d "$OPTARG" ] || die_usage "-H $OPTARG: not a directory"
        loader_opts+=(-h "$(realpath "$OPTARG")")
        ;;
    i) initrd=$OPTARG ;;
    k) kernel=$OPTARG ;;
    m) mem=$OPTARG ;;
    t) taps+=("$OPTARG") ;;
    u) bhyve_opts+=(-u) ;;
    w) bhyve_opts+=(-w) ;;
    :) die_usage "-$OPTARG needs a value" ;;
    *) die_usage "unknown option -$OPTARG" ;;
    esac
done
shift $((OPTIND - 1))
[ $# -eq 1 ] || die_usage "give exactly one vmname (got $#)"
vmname=$1
case $vmname in
'' | -* | */* | . | ..) die_usage "invalid vmname \"$vmname\"" ;;
esac

for t in "${taps[@]}"; do
    [ -n "$t" ] || die_usage "-t: empty tap device name"
done
for d in "${disks[@]}"; do
    path=${d%%,*}
    [ -e "$path" ] || die "disk image $path: no such file" 64
    [ -r "$path" ] || die "disk image $path: not readable" 64
    loader_opts+=(-d "$path")
done
if [ -n "$kernel" ]; then
    [ -f "$kernel" ] || die "kernel $kernel: no such file" 64
    loader_opts+=(--kernel "$kernel")
    if [ -n "$initrd" ]; then
        [ -f "$initrd" ] || die "initrd $initrd: no such file" 64
        loader_opts+=(--initrd "$initrd")
    fi
    [ "$cmdline_set" -eq 1 ] && loader_opts+=(--cmdline "$cmdline")
else
    [ -z "$initrd" ] || die_usage "-i needs -k (an initrd goes with a kernel file)"
    [ "$cmdline_set" -eq 0 ] || die_usage "-a needs -k (a command line goes with a kernel file)"
fi
if [ ${#disks[@]} -eq 0 ] && [ -z "$kernel" ]; then
    case " ${loader_opts[*]} " in
    *" -h "*) ;;
    *) die_usage "nothing to boot: give a disk image (-d), a kernel (-k) or a host directory (-H)" ;;
    esac
fi
maxboots=${VMRUN_MAXBOOTS:-}
if [ -n "$maxboots" ]; then
    is_count "$maxboots" || die "VMRUN_MAXBOOTS=$maxboots: expected a positive number" 64
fi

# Slot 0 host bridge, 31 LPC (COM1) as vmrun.sh's bhyve command line has
# them; devices from 4 up, disks first, then taps.
slot=4
devs=()
for d in "${disks[@]}"; do
    devs+=(-s "$slot,virtio-blk,$d")
    slot=$((slot + 1))
done
for t in "${taps[@]}"; do
    devs+=(-s "$slot,virtio-net,$t")
    slot=$((slot + 1))
done
[ "$slot" -le 31 ] || die_usage "too many devices: disks and taps share PCI slots 4-30"

# The binaries: $BHYVE_BIN, else this repository's release build, else PATH.
here=$(cd "$(dirname "$0")" && pwd)
if [ -n "${BHYVE_BIN:-}" ]; then
    bindir=$BHYVE_BIN
elif [ -x "$here/../target/release/bhyve" ]; then
    bindir=$here/../target/release
else
    bindir=""
fi
tool() {
    if [ -n "$bindir" ]; then
        [ -x "$bindir/$1" ] || die "$bindir/$1: not found (BHYVE_BIN names the directory holding bhyveload, bhyve and bhyvectl)"
        echo "$bindir/$1"
    else
        command -v "$1" || die "$1 not found: build with cargo build --release, or set BHYVE_BIN"
    fi
}
LOADER=$(tool bhyveload) || exit
BHYVE=$(tool bhyve) || exit
BHYVECTL=$(tool bhyvectl) || exit

# A signal ends the loop (bhyve gets it too and stops the guest); the
# instance is still destroyed.
interrupted=0
trap 'interrupted=1' INT TERM HUP

echo "$prog: launching virtual machine \"$vmname\" ..." >&2
loaded=0
boots=0
status=0
while :; do
    "$LOADER" -c "$console" -m "$mem" "${loader_opts[@]}" "$vmname"
    status=$?
    if [ "$status" -ne 0 ]; then
        echo "$prog: bhyveload exited $status" >&2
        break
    fi
    loaded=1
    boots=$((boots + 1))
    if [ "$interrupted" -ne 0 ]; then
        echo "$prog: interrupted: not running $vmname" >&2
        break
    fi
    "$BHYVE" -c "$cpus" -m "$mem" "${bhyve_opts[@]}" -A -H -P \
        -s 0,hostbridge -s 31,lpc "${devs[@]}" -l "com1,$console" "$vmname"
    status=$?
    case $status in
    0) what="reset" ;;
    1) what="powered off" ;;
    2) what="halted" ;;
    3) what="triple fault" ;;
    12[9] | 1[3-9][0-9]) what="killed by signal $((status - 128))" ;;
    *) what="error" ;;
    esac
    echo "$prog: bhyve exited $status ($what)" >&2
    [ "$status" -eq 0 ] || break
    if [ "$interrupted" -ne 0 ]; then
        echo "$prog: interrupted: not booting $vmname again" >&2
        break
    fi
    if [ -n "$maxboots" ] && [ "$boots" -ge "$maxboots" ]; then
        echo "$prog: stopping after $boots boots (VMRUN_MAXBOOTS)" >&2
        break
    fi
done

# Destroy only what this run loaded: when the first load fails the
# instance is either absent or someone else's.
if [ "$loaded" -eq 1 ]; then
    "$BHYVECTL" --vm="$vmname" --destroy || echo "$prog: could not destroy $vmname" >&2
fi
exit "$status"
