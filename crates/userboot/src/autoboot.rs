//! `autoboot_delay` semantics (`boot.c` `autoboot`, `autoboot_maybe`, §7.5).

use crate::env::Env;

/// What the loader does before booting on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Autoboot {
    /// `autoboot_delay` starts with `NO`: go to the prompt.
    Disabled,
    /// A negative delay (`-1`): boot at once, console input is not checked.
    Immediate,
    /// Count down this many seconds; a key interrupts (Enter boots now).
    Wait(u32),
}

/// Default delay when the variable is unset or unparsable.
const DEFAULT_DELAY: u32 = 10;

impl Autoboot {
    pub fn from_env(env: &Env) -> Self {
        match env.get("autoboot_delay") {
            None => Autoboot::Wait(DEFAULT_DELAY),
            Some(v) => Self::parse(v),
        }
    }

    /// Parse a value like `strtol(cp, &ep, 0)`: leading blanks, sign,
    /// decimal / `0x` hex / leading-`0` octal prefix; garbage after the number
    /// is ignored and no digits at all means the default.
    pub fn parse(value: &str) -> Self {
        if value
            .as_bytes()
            .get(..2)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"no"))
        {
            return Autoboot::Disabled;
        }
        match strtol(value) {
            None => Autoboot::Wait(DEFAULT_DELAY),
            Some(n) if n < 0 => Autoboot::Immediate,
            Some(n) => Autoboot::Wait(u32::try_from(n).unwrap_or(u32::MAX)),
        }
    }
}

/// `strtol(s, &ep, 0)`, `None` when no digits were consumed; saturates.
pub(crate) fn strtol(s: &str) -> Option<i64> {
    let s = s.trim_start();
    let (neg, s) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let (radix, digits) = if s.len() > 2 && (s.starts_with("0x") || s.starts_with("0X")) {
        (16, &s[2..])
    } else if s.starts_with('0') {
        (8, s)
    } else {
        (10, s)
    };
    let mut val: i64 = 0;
    let mut any = false;
    for c in digits.chars() {
        let Some(d) = c.to_digit(radix) else { break };
        any = true;
        val = val
            .saturating_mul(i64::from(radix))
            .saturating_add(i64::from(d));
    }
    any.then_some(if neg { -val } else { val })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays() {
        assert_eq!(Autoboot::from_env(&Env::new()), Autoboot::Wait(10));
        assert_eq!(Autoboot::parse("-1"), Autoboot::Immediate);
        assert_eq!(Autoboot::parse("NO"), Autoboot::Disabled);
        assert_eq!(Autoboot::parse("no"), Autoboot::Disabled);
        assert_eq!(Autoboot::parse("3"), Autoboot::Wait(3));
        assert_eq!(Autoboot::parse("0x10"), Autoboot::Wait(16));
        assert_eq!(Autoboot::parse("0"), Autoboot::Wait(0));
        assert_eq!(Autoboot::parse("abc"), Autoboot::Wait(10));
        assert_eq!(Autoboot::parse(" 5s"), Autoboot::Wait(5));
        assert_eq!(Autoboot::parse("\u{e9}"), Autoboot::Wait(10));
        assert_eq!(Autoboot::parse("NOPE"), Autoboot::Disabled);
    }
}
