//! The loader environment (libsa `environment.c`) and its kenv encoding (§5).

use std::collections::BTreeMap;

/// The loader's environment.  libsa keeps it sorted by name with `strcmp`
/// (`env_setenv` inserts in order), and the kenv block is written in that
/// order, so a byte-ordered map reproduces it exactly.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Env {
    vars: BTreeMap<String, String>,
}

impl Env {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    pub fn set(&mut self, name: &str, value: &str) {
        self.vars.insert(name.to_owned(), value.to_owned());
    }

    /// `setenv(name, value, 0)`: only if not already set.
    pub fn set_default(&mut self, name: &str, value: &str) {
        if !self.vars.contains_key(name) {
            self.set(name, value);
        }
    }

    pub fn unset(&mut self, name: &str) {
        self.vars.remove(name);
    }

    /// Variables in kenv order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.vars.len()
    }

    pub fn is_empty(&self) -> bool {
        self.vars.is_empty()
    }

    /// `putenv("name=value")`; a string without `=` sets an empty value.
    pub fn putenv(&mut self, s: &str) {
        match s.split_once('=') {
            Some((name, value)) => self.set(name, value),
            None => self.set(s, ""),
        }
    }

    /// The kenv block of §5.1: `name=value\0` per variable, then one more
    /// NUL (an empty environment is a single NUL).
    pub fn kenv_block(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in self.iter() {
            out.extend_from_slice(k.as_bytes());
            out.push(b'=');
            out.extend_from_slice(v.as_bytes());
            out.push(0);
        }
        out.push(0);
        out
    }

    /// A variable's value interpreted as a boolean flag the way
    /// `boot_env_to_howto` does: set and not `no` (any case).
    pub fn flag(&self, name: &str) -> bool {
        self.get(name)
            .is_some_and(|v| !v.eq_ignore_ascii_case("no"))
    }
}

/// The strings bhyveload hands to userboot, in the order userboot applies
/// them with `putenv` (§5.3): bhyveload head-inserts the `-e` strings, then
/// `smbios.bios.vendor=BHYVE`, then `boot_serial=1`, and userboot walks that
/// list from the head.  So the built-ins come first and the `-e` strings
/// follow last-to-first: a user `-e` overrides a built-in, and of repeated
/// `-e` for one name the first on the command line wins.
pub fn injected_env(user: &[String]) -> Vec<String> {
    let mut out = vec![
        "boot_serial=1".to_owned(),
        "smbios.bios.vendor=BHYVE".to_owned(),
    ];
    out.extend(user.iter().rev().cloned());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_like_strcmp_and_block() {
        let mut e = Env::new();
        e.set("b", "2");
        e.set("LINES", "24");
        e.set("a", "");
        e.set("B", "x");
        let names: Vec<_> = e.iter().map(|(k, _)| k).collect();
        assert_eq!(names, ["B", "LINES", "a", "b"]);
        assert_eq!(e.kenv_block(), b"B=x\0LINES=24\0a=\0b=2\0\0");
        assert_eq!(Env::new().kenv_block(), b"\0");
    }

    #[test]
    fn injected_order_and_precedence() {
        let user = vec![
            "boot_serial=NO".to_owned(),
            "x=1".to_owned(),
            "x=2".to_owned(),
        ];
        let list = injected_env(&user);
        assert_eq!(
            list,
            [
                "boot_serial=1",
                "smbios.bios.vendor=BHYVE",
                "x=2",
                "x=1",
                "boot_serial=NO"
            ]
        );
        let mut e = Env::new();
        for s in &list {
            e.putenv(s);
        }
        assert_eq!(e.get("boot_serial"), Some("NO"));
        assert_eq!(e.get("x"), Some("1"));
        assert_eq!(e.get("smbios.bios.vendor"), Some("BHYVE"));
        assert!(!e.flag("boot_serial"));
    }
}
