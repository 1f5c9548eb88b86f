#!/bin/sh
# Build the Linux guest kernel for bhyve-rs's real-driver boot test from
# Debian 12's linux-source-6.1 package and tests/linux/kernel.config (with
# one line of the source changed, see below), and print the bzImage's path
# as the last line on stdout.
#
# The result is cached in ${BHYVE_RS_CACHE:-/var/cache/bhyve-rs}/linux-KEY,
# KEY being a hash of the config fragment, the source package's version and
# this script, so a re-run with nothing changed returns at once. Beside the
# bzImage the cache keeps vmlinux (the same kernel as an ELF with a PVH entry
# note, for loaders that skip the decompressor), System.map and .config.
# Set BHYVE_RS_LINUX_VERSION to build another version of the package than
# apt's candidate. Runs as root (installs build tools with apt-get).
set -eu

pkg=linux-source-6.1
here=$(cd "$(dirname "$0")" && pwd)
fragment=$here/kernel.config
self=$here/$(basename "$0")
cache=${BHYVE_RS_CACHE:-/var/cache/bhyve-rs}

die() {
    echo "build-kernel.sh: $*" >&2
    exit 1
}

[ "$(uname -m)" = x86_64 ] || die "builds an x86_64 kernel on an x86_64 host only (this is $(uname -m))"
[ -r "$fragment" ] || die "config fragment $fragment is missing"
command -v apt-get >/dev/null 2>&1 || die "needs apt-get: run it on Debian 12"

candidate() {
    apt-cache policy "$pkg" 2>/dev/null | awk '/Candidate:/ { print $2 }'
}

version=${BHYVE_RS_LINUX_VERSION:-}
if [ -z "$version" ]; then
    version=$(candidate)
    # A machine whose package lists were never fetched knows no candidate.
    if [ -z "$version" ] || [ "$version" = "(none)" ]; then
        apt-get update -qq >&2 || die "apt-get update failed"
        version=$(candidate)
    fi
    if [ -z "$version" ] || [ "$version" = "(none)" ]; then
        die "apt knows no package $pkg: this needs Debian 12 (bookworm) sources"
    fi
fi

key=$({
    cat "$fragment"
    echo "$pkg=$version"
    cat "$self"
} | sha256sum | cut -c1-16)
out=$cache/linux-$key

if [ -f "$out/bzImage" ]; then
    echo "$out/bzImage"
    exit 0
fi

mkdir -p "$cache" || die "cannot create the cache directory $cache"
# One build per key at a time: a second caller waits, then finds the result.
exec 9>"$out.lock" || die "cannot create the lock file $out.lock"
flock 9 || die "cannot lock $out.lock"
if [ -f "$out/bzImage" ]; then
    echo "$out/bzImage"
    exit 0
fi

# Build tools: compiler and make, bc/bison/flex for the kernel's build
# scripts, libelf-dev for objtool (x86_64 always builds it), xz-utils for the
# source tarball, flock (util-linux) is essential on Debian.
need="gcc make binutils libc6-dev bc bison flex libelf-dev xz-utils"
missing=""
for p in $need; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "build-kernel.sh: installing$missing" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 || die "apt-get update failed"
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing >&2 || die "apt-get install$missing failed"
fi

work=$(mktemp -d "$cache/linux-$key.work.XXXXXX") || die "cannot create a work directory under $cache"
trap 'rm -rf "$work"' EXIT
trap 'exit 1' INT TERM HUP

start=$(date +%s)
cd "$work"
# apt's download sandbox user cannot write to a root-only mktemp directory;
# downloading as root here is what apt would fall back to anyway.
apt-get download -o APT::Sandbox::User=root "$pkg=$version" >&2 ||
    die "apt-get download $pkg=$version failed"
dpkg-deb -x "${pkg}_"*.deb pkg || die "cannot unpack the $pkg package"
tar -xJf pkg/usr/src/$pkg.tar.xz || die "cannot unpack pkg/usr/src/$pkg.tar.xz"
rm -rf pkg "${pkg}_"*.deb
src=$work/$pkg
[ -f "$src/Makefile" ] || die "$pkg did not unpack to $src"

# Fixed build identity and time: the same inputs give the same bzImage.
export KBUILD_BUILD_USER=bhyve-rs KBUILD_BUILD_HOST=bhyve-rs KBUILD_BUILD_VERSION=1
export KBUILD_BUILD_TIMESTAMP="2000-01-01 00:00:00 UTC"
log=$work/build.log
kmake() {
    nice make -C "$src" ARCH=x86_64 "$@" >>"$log" 2>&1 || {
        tail -n 40 "$log" >&2
        die "make $* failed (log above; $pkg $version)"
    }
}

# allnoconfig with the fragment as KCONFIG_ALLCONFIG: what the fragment
# names is set as it says, everything else is off.
kmake KCONFIG_ALLCONFIG="$fragment" allnoconfig
# Kconfig silently drops a setting whose dependencies are not met: insist
# that every line of the fragment made it into .config.
lost=$(grep -E '^CONFIG_[A-Z0-9_]+=|^# CONFIG_[A-Z0-9_]+ is not set$' "$fragment" |
    while IFS= read -r line; do
        case $line in
        "# "*)
            sym=${line#\# }
            sym=${sym%% *}
            grep -q "^$sym=" "$src/.config" && echo "$line"
            ;;
        *) grep -qxF "$line" "$src/.config" || echo "$line" ;;
        esac
    done) || true
if [ -n "$lost" ]; then
    echo "$lost" >&2
    die "the lines above of $fragment did not survive Kconfig (unmet dependencies?)"
fi

kmake -j"$(nproc)" bzImage

mkdir -p "$work/out"
cp "$src/arch/x86/boot/bzImage" "$src/vmlinux" "$src/System.map" "$src/.config" "$log" "$work/out/"
mv "$work/out" "$out" || die "cannot move the result to $out"
end=$(date +%s)
echo "build-kernel.sh: built $pkg $version in $((end - start)) s ($(nproc) jobs) into $out" >&2
echo "$out/bzImage"
