//! `howto` boot flags (§5.4, §5.5): userboot's `bi_getboothowto`.

use crate::env::Env;

pub const RB_ASKNAME: u32 = 0x1;
pub const RB_SINGLE: u32 = 0x2;
pub const RB_DFLTROOT: u32 = 0x20;
pub const RB_KDB: u32 = 0x40;
pub const RB_VERBOSE: u32 = 0x800;
pub const RB_SERIAL: u32 = 0x1000;
pub const RB_CDROM: u32 = 0x2000;
pub const RB_GDB: u32 = 0x8000;
pub const RB_MUTE: u32 = 0x10000;
pub const RB_PAUSE: u32 = 0x100000;
pub const RB_MULTIPLE: u32 = 0x2000_0000;

/// `(switch letter, env variable, flag)` — `howto_names[]` in `subr_boot.c`.
const FLAGS: &[(u8, &str, u32)] = &[
    (b'a', "boot_askname", RB_ASKNAME),
    (b'C', "boot_cdrom", RB_CDROM),
    (b'd', "boot_ddb", RB_KDB),
    (b'D', "boot_multicons", RB_MULTIPLE),
    (b'g', "boot_gdb", RB_GDB),
    (b'h', "boot_serial", RB_SERIAL),
    (b'm', "boot_mute", RB_MUTE),
    (b'p', "boot_pause", RB_PAUSE),
    (b'r', "boot_dfltroot", RB_DFLTROOT),
    (b's', "boot_single", RB_SINGLE),
    (b'v', "boot_verbose", RB_VERBOSE),
];

/// Flags from a kernel argument string: after a `-`, each known letter ORs
/// its flag; any other character ends the group.
pub fn from_args(args: &str) -> u32 {
    let mut howto = 0;
    let mut active = false;
    for c in args.bytes() {
        if !active && c == b'-' {
            active = true;
        } else if active {
            match FLAGS.iter().find(|(l, _, _)| *l == c) {
                Some((_, _, f)) => howto |= f,
                None => active = false,
            }
        }
    }
    howto
}

/// The full computation of `bi_getboothowto(kernel_args)`.
pub fn compute(kernel_args: Option<&str>, env: &Env) -> u32 {
    let mut howto = kernel_args.map_or(0, from_args);
    for (_, var, flag) in FLAGS {
        if env.flag(var) {
            howto |= flag;
        }
    }
    let console = env.get("console").unwrap_or("");
    let mut vidconsole = false;
    for name in console.split([' ', ',']).filter(|s| !s.is_empty()) {
        match name {
            "vidconsole" => vidconsole = true,
            "comconsole" => howto |= RB_SERIAL,
            "nullconsole" => howto |= RB_MUTE,
            _ => {}
        }
    }
    if vidconsole && howto & RB_SERIAL != 0 {
        howto |= RB_MULTIPLE;
    }
    // The first named console is the primary one; a lone vidconsole wins.
    if console == "vidconsole" {
        howto &= !RB_SERIAL;
    }
    howto
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_and_env() {
        assert_eq!(from_args("-s -v"), RB_SINGLE | RB_VERBOSE);
        assert_eq!(from_args("-sxv"), RB_SINGLE);
        assert_eq!(from_args("s v"), 0);
        let mut e = Env::new();
        e.set("boot_serial", "1");
        e.set("boot_single", "NO");
        e.set("boot_verbose", "YES");
        e.set("boot_multicons", "");
        e.set("console", "userboot");
        assert_eq!(compute(None, &e), RB_SERIAL | RB_VERBOSE | RB_MULTIPLE);
        e.set("console", "vidconsole");
        assert_eq!(
            compute(Some("-s"), &e),
            RB_SINGLE | RB_VERBOSE | RB_MULTIPLE
        );
        e.unset("boot_serial");
        e.unset("boot_multicons");
        e.set("console", "comconsole,vidconsole");
        assert_eq!(compute(None, &e), RB_SERIAL | RB_MULTIPLE | RB_VERBOSE);
        e.set("console", "nullconsole");
        assert_eq!(compute(None, &e), RB_MUTE | RB_VERBOSE);
    }
}
