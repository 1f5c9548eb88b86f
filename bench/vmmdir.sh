# Sourced by the benchmarks: `vmmdir_setup W` points VMM_DIR at W/vmm made
# as vmm-core makes the default /dev/vmm (crates/vmm-core/src/instance.rs,
# create_vmm_dir): a tmpfs of its own with huge=within_size, so guest RAM
# sits in 2 MiB pages as users get it.  Without the privilege to mount it
# is a plain directory and the figures are those of 4 KiB pages; that is
# said on stderr.  `vmmdir_cleanup` unmounts it (call it before rm -rf W).
vmmdir_setup() {
    VMM_DIR="$1/vmm"
    export VMM_DIR
    mkdir -p "$VMM_DIR"
    mount -t tmpfs -o nosuid,nodev,noexec,mode=0755,huge=within_size,size=100% vmm "$VMM_DIR" 2>/dev/null ||
        echo "$(basename "$0"): cannot mount a tmpfs on $VMM_DIR: guest RAM in 4 KiB pages, unlike /dev/vmm's 2 MiB" >&2
}

vmmdir_cleanup() {
    if mountpoint -q "$VMM_DIR" 2>/dev/null; then
        umount "$VMM_DIR"
    fi
}
