//! loader.conf (§7): the line grammar of the Lua loader's `config.lua`, `$var`
//! expansion, and the file walk over `loader_conf_files`.
//!
//! Parsing is pure ([`parse_line`]); evaluation needs the interpreter (for
//! `exec=` and the environment), reached through [`ConfHost`].

use std::collections::HashSet;

use crate::env::Env;

/// The first file read.
pub const DEFAULTS_FILE: &str = "/boot/defaults/loader.conf";
/// `loader_conf_files` when nothing set it (the defaults file normally does).
pub const DEFAULT_CONF_FILES: &str = "/boot/device.hints /boot/loader.conf /boot/loader.conf.local";

/// Which `MODULE_*` directive a line sets (§7.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModKey {
    Load,
    Name,
    Type,
    Flags,
    Before,
    After,
    Error,
}

/// Suffixes in the order of `config.lua`'s pattern table.
const MOD_SUFFIXES: &[(&str, ModKey)] = &[
    ("_load", ModKey::Load),
    ("_name", ModKey::Name),
    ("_type", ModKey::Type),
    ("_flags", ModKey::Flags),
    ("_before", ModKey::Before),
    ("_after", ModKey::After),
    ("_error", ModKey::Error),
];

/// One parsed line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// Blank or a `#` comment.
    Empty,
    Module {
        module: String,
        key: ModKey,
        value: String,
    },
    /// `exec="command"`.
    Exec(String),
    /// `name=value`; `value` is not yet `$`-expanded (that needs the
    /// environment at the time the line is evaluated).
    Set { name: String, value: String },
}

/// A line none of the patterns accepts, or with trailing junk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// Lua `%s`.
fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}
/// Lua `%w` (C locale).
fn is_alnum(c: u8) -> bool {
    c.is_ascii_alphanumeric()
}
/// Lua `%p` (C locale `ispunct`).
fn is_punct(c: u8) -> bool {
    c.is_ascii_punctuation()
}
/// Lua `[%w%p]`.
fn is_graph(c: u8) -> bool {
    c.is_ascii_graphic()
}

fn skip_space(s: &[u8], mut i: usize) -> usize {
    while i < s.len() && is_space(s[i]) {
        i += 1;
    }
    i
}

/// How a `$VALUE` is spelt: `config.lua` tries the quoted form first, then a
/// bare word; plain variables also accept a (possibly negative) number.
#[derive(Clone, Copy)]
enum ValueForm {
    Quoted,
    Word,
    Number,
}

/// Match `%s*=%s*VALUE` at `i`; returns (value, index after it).
fn match_assign(s: &[u8], i: usize, form: ValueForm) -> Option<(String, usize)> {
    let i = skip_space(s, i);
    if s.get(i) != Some(&b'=') {
        return None;
    }
    let i = skip_space(s, i + 1);
    match form {
        ValueForm::Quoted => {
            if s.get(i) != Some(&b'"') {
                return None;
            }
            // `"([%w%s%p]-)"`: the shortest run up to the next quote.
            let start = i + 1;
            let mut j = start;
            while j < s.len() && s[j] != b'"' {
                if !(is_alnum(s[j]) || is_space(s[j]) || is_punct(s[j])) {
                    return None;
                }
                j += 1;
            }
            (j < s.len()).then(|| (String::from_utf8_lossy(&s[start..j]).into_owned(), j + 1))
        }
        ValueForm::Word => {
            let mut j = i;
            while j < s.len() && is_alnum(s[j]) {
                j += 1;
            }
            (j > i).then(|| (String::from_utf8_lossy(&s[i..j]).into_owned(), j))
        }
        ValueForm::Number => {
            let mut j = i;
            if s.get(j) == Some(&b'-') {
                j += 1;
            }
            let digits = j;
            while j < s.len() && s[j].is_ascii_digit() {
                j += 1;
            }
            (j > digits).then(|| (String::from_utf8_lossy(&s[i..j]).into_owned(), j))
        }
    }
}

/// The rest of a line after a match must be blank or a `#` comment.
fn valid_tail(s: &[u8], i: usize) -> bool {
    let i = skip_space(s, i);
    i == s.len() || s[i] == b'#'
}

/// Parse one line of loader.conf the way `config.parse` does: the first
/// pattern that matches decides; if what follows it is not a comment the
/// line is malformed (later patterns are not tried).
pub fn parse_line(line: &str) -> Result<Line, Malformed> {
    let s = line.as_bytes();
    let start = skip_space(s, 0);
    if start == s.len() || s[start] == b'#' {
        return Ok(Line::Empty);
    }
    let finish = |r: Line, end: usize| {
        if valid_tail(s, end) {
            Ok(r)
        } else {
            Err(Malformed)
        }
    };

    // MODULE_key=$VALUE; MODULE is `[%w-_]+`.  The identifier run must end
    // right at the suffix, since `%s*=` has to follow.
    let mut ident_end = start;
    while ident_end < s.len() && (is_alnum(s[ident_end]) || matches!(s[ident_end], b'-' | b'_')) {
        ident_end += 1;
    }
    let ident = &line[start..ident_end];
    for (suffix, key) in MOD_SUFFIXES {
        let Some(module) = ident.strip_suffix(suffix).filter(|m| !m.is_empty()) else {
            continue;
        };
        for form in [ValueForm::Quoted, ValueForm::Word] {
            if let Some((value, end)) = match_assign(s, ident_end, form) {
                let line = Line::Module {
                    module: module.to_owned(),
                    key: *key,
                    value,
                };
                return finish(line, end);
            }
        }
    }

    // exec="command" (quoted only).
    if ident == "exec" {
        if let Some((cmd, end)) = match_assign(s, ident_end, ValueForm::Quoted) {
            return finish(Line::Exec(cmd), end);
        }
    }

    // name=$VALUE, then name=number; `([%w%p]+)` is greedy, so the longest
    // name for which the rest matches wins.
    let mut run_end = start;
    while run_end < s.len() && is_graph(s[run_end]) {
        run_end += 1;
    }
    for form in [ValueForm::Quoted, ValueForm::Word, ValueForm::Number] {
        for name_end in (start + 1..=run_end).rev() {
            if let Some((value, end)) = match_assign(s, name_end, form) {
                let name = line[start..name_end].to_owned();
                return finish(Line::Set { name, value }, end);
            }
        }
    }
    Err(Malformed)
}

/// `processEnvVar`: replace `${name}` and `$name` (name = a run of
/// `[%w%p]`) with the variable's value, unknown names with nothing.
pub fn expand(value: &str, env: &Env) -> String {
    let s = value.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    let mut lit = 0;
    while i < s.len() {
        if s[i] != b'$' {
            i += 1;
            continue;
        }
        let (name, next) = if s.get(i + 1) == Some(&b'{') {
            match value[i + 2..].find('}') {
                Some(len) if len > 0 => (&value[i + 2..i + 2 + len], i + 3 + len),
                _ => {
                    i += 1;
                    continue;
                }
            }
        } else {
            let mut j = i + 1;
            while j < s.len() && is_graph(s[j]) {
                j += 1;
            }
            if j == i + 1 {
                i += 1;
                continue;
            }
            (&value[i + 1..j], j)
        };
        out.push_str(&value[lit..i]);
        out.push_str(env.get(name).unwrap_or(""));
        i = next;
        lit = next;
    }
    out.push_str(&value[lit..]);
    out
}

/// The `MODULE_*` settings for one module.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModuleConf {
    /// Upper-cased `_load` value.
    pub load: Option<String>,
    pub name: Option<String>,
    pub ftype: Option<String>,
    pub flags: Option<String>,
    pub before: Option<String>,
    pub after: Option<String>,
    pub error: Option<String>,
}

impl ModuleConf {
    /// `MODULE_load` is `YES` in any case.
    pub fn wanted(&self) -> bool {
        self.load
            .as_deref()
            .is_some_and(|v| v.eq_ignore_ascii_case("yes"))
    }
}

/// All modules mentioned by the configuration, in order of first mention
/// (Lua iterates a hash table; a stable order is the useful choice).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModuleTable {
    entries: Vec<(String, ModuleConf)>,
}

impl ModuleTable {
    pub fn set(&mut self, module: &str, key: ModKey, value: &str) {
        let idx = match self.entries.iter().position(|(m, _)| m == module) {
            Some(i) => i,
            None => {
                self.entries
                    .push((module.to_owned(), ModuleConf::default()));
                self.entries.len() - 1
            }
        };
        let conf = &mut self.entries[idx].1;
        let v = Some(value.to_owned());
        match key {
            ModKey::Load => conf.load = Some(value.to_ascii_uppercase()),
            ModKey::Name => conf.name = v,
            ModKey::Type => conf.ftype = v,
            ModKey::Flags => conf.flags = v,
            ModKey::Before => conf.before = v,
            ModKey::After => conf.after = v,
            ModKey::Error => conf.error = v,
        }
    }

    pub fn get(&self, module: &str) -> Option<&ModuleConf> {
        self.entries
            .iter()
            .find(|(m, _)| m == module)
            .map(|(_, c)| c)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &ModuleConf)> {
        self.entries.iter().map(|(m, c)| (m.as_str(), c))
    }
}

/// `module_blacklist` split the way `getBlacklist` does.
pub fn blacklist(env: &Env) -> Vec<String> {
    env.get("module_blacklist")
        .unwrap_or("")
        .split([';', ',', ' '])
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Something worth telling the user while reading the configuration; none
/// of these stop the boot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfWarning {
    #[error("{file}: malformed line ({line}): '{text}'")]
    Malformed {
        file: String,
        line: usize,
        text: String,
    },
    #[error("{file}: line {line}: failed to exec '{command}': {error}")]
    ExecFailed {
        file: String,
        line: usize,
        command: String,
        error: String,
    },
    #[error("{file}: can't read: {error}")]
    Unreadable { file: String, error: String },
    #[error("{file}: loader_conf_files nested too deeply, ignored")]
    TooDeep { file: String },
}

/// What evaluation needs from the interpreter.
pub trait ConfHost {
    /// The file's contents; `Ok(None)` when it does not exist (silently
    /// skipped), `Err` for any other failure.
    fn read_conf_file(&mut self, path: &str) -> Result<Option<Vec<u8>>, String>;
    fn env_mut(&mut self) -> &mut Env;
    fn modules_mut(&mut self) -> &mut ModuleTable;
    /// Run a loader command (`exec=`); the error text on failure.
    fn exec_command(&mut self, command: &str) -> Result<(), String>;
}

/// Evaluate the text of one file.
pub fn process_text(
    host: &mut dyn ConfHost,
    file: &str,
    text: &[u8],
    warnings: &mut Vec<ConfWarning>,
) {
    let text = String::from_utf8_lossy(text);
    for (n, line) in text.split('\n').enumerate() {
        let line_no = n + 1;
        match parse_line(line) {
            Ok(Line::Empty) => {}
            Ok(Line::Module { module, key, value }) => host.modules_mut().set(&module, key, &value),
            Ok(Line::Exec(command)) => {
                if let Err(error) = host.exec_command(&command) {
                    warnings.push(ConfWarning::ExecFailed {
                        file: file.to_owned(),
                        line: line_no,
                        command,
                        error,
                    });
                }
            }
            Ok(Line::Set { name, value }) => {
                let value = expand(&value, host.env_mut());
                host.env_mut().set(&name, &value);
            }
            Err(Malformed) => warnings.push(ConfWarning::Malformed {
                file: file.to_owned(),
                line: line_no,
                text: line.trim_end_matches('\r').to_owned(),
            }),
        }
    }
}

fn process_file(host: &mut dyn ConfHost, file: &str, warnings: &mut Vec<ConfWarning>) {
    match host.read_conf_file(file) {
        Ok(Some(text)) => process_text(host, file, &text, warnings),
        Ok(None) => {}
        Err(error) => warnings.push(ConfWarning::Unreadable {
            file: file.to_owned(),
            error,
        }),
    }
}

/// Bound on `loader_conf_files` re-processing depth (each level needs a new
/// file that changed the variable, so real configurations stay shallow).
const MAX_DEPTH: usize = 32;

/// `readConfFiles`: every file of `loader_conf_files` not read yet; when a
/// file changes the variable, the new list is processed before going on.
fn read_conf_files(
    host: &mut dyn ConfHost,
    loaded: &mut HashSet<String>,
    depth: usize,
    warnings: &mut Vec<ConfWarning>,
) {
    let Some(list) = host.env_mut().get("loader_conf_files").map(str::to_owned) else {
        return;
    };
    for name in list
        .split(|c: char| c.is_ascii_whitespace())
        .filter(|s| !s.is_empty())
    {
        if loaded.contains(name) {
            continue;
        }
        let before = host.env_mut().get("loader_conf_files").map(str::to_owned);
        process_file(host, name, warnings);
        loaded.insert(name.to_owned());
        let after = host.env_mut().get("loader_conf_files").map(str::to_owned);
        if before != after {
            if depth >= MAX_DEPTH {
                warnings.push(ConfWarning::TooDeep {
                    file: name.to_owned(),
                });
            } else {
                read_conf_files(host, loaded, depth + 1, warnings);
            }
        }
    }
}

/// The whole of §7.1: the defaults file, then `loader_conf_files`
/// (defaulting to [`DEFAULT_CONF_FILES`] if nothing set it), then
/// `nextboot_conf` unless its first line disables it.
pub fn read_all(host: &mut dyn ConfHost) -> Vec<ConfWarning> {
    let mut warnings = Vec::new();
    process_file(host, DEFAULTS_FILE, &mut warnings);
    host.env_mut()
        .set_default("loader_conf_files", DEFAULT_CONF_FILES);
    let mut loaded = HashSet::from([DEFAULTS_FILE.to_owned()]);
    read_conf_files(host, &mut loaded, 0, &mut warnings);

    if let Some(next) = host.env_mut().get("nextboot_conf").map(str::to_owned) {
        if let Ok(Some(text)) = host.read_conf_file(&next) {
            // The loader would also rewrite the first line to disable it; we
            // never write the disk.
            if !text.starts_with(b"nextboot_enable=\"NO\"") {
                process_text(host, &next, &text, &mut warnings);
            }
        }
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(n: &str, v: &str) -> Line {
        Line::Set {
            name: n.into(),
            value: v.into(),
        }
    }
    fn module(m: &str, key: ModKey, v: &str) -> Line {
        Line::Module {
            module: m.into(),
            key,
            value: v.into(),
        }
    }

    #[test]
    fn grammar() {
        assert_eq!(parse_line(""), Ok(Line::Empty));
        assert_eq!(parse_line("   \t"), Ok(Line::Empty));
        assert_eq!(parse_line("  # x=1"), Ok(Line::Empty));
        assert_eq!(parse_line("a=\"b c\""), Ok(set("a", "b c")));
        assert_eq!(parse_line("  a = \"b\"  # c"), Ok(set("a", "b")));
        assert_eq!(parse_line("a=word"), Ok(set("a", "word")));
        assert_eq!(parse_line("a=-1"), Ok(set("a", "-1")));
        assert_eq!(parse_line("a=12"), Ok(set("a", "12")));
        assert_eq!(
            parse_line("hint.uart.0.at=\"isa\""),
            Ok(set("hint.uart.0.at", "isa"))
        );
        assert_eq!(parse_line("a=\"x=y\""), Ok(set("a", "x=y")));
        assert_eq!(parse_line("a=b=c"), Ok(set("a=b", "c")));
        assert_eq!(parse_line("a=\"\""), Ok(set("a", "")));
        assert_eq!(parse_line("a=\"x\"\r"), Ok(set("a", "x")));
        assert_eq!(
            parse_line("if_vtnet_load=\"YES\""),
            Ok(module("if_vtnet", ModKey::Load, "YES"))
        );
        assert_eq!(
            parse_line("zfs_load=yes"),
            Ok(module("zfs", ModKey::Load, "yes"))
        );
        assert_eq!(
            parse_line("x_name=\"/boot/x.ko\""),
            Ok(module("x", ModKey::Name, "/boot/x.ko"))
        );
        assert_eq!(
            parse_line("x_type=\"md_image\""),
            Ok(module("x", ModKey::Type, "md_image"))
        );
        assert_eq!(
            parse_line("x_flags=\"-v a=b\""),
            Ok(module("x", ModKey::Flags, "-v a=b"))
        );
        assert_eq!(
            parse_line("x_before=\"echo hi\""),
            Ok(module("x", ModKey::Before, "echo hi"))
        );
        assert_eq!(
            parse_line("x_after=\"a\""),
            Ok(module("x", ModKey::After, "a"))
        );
        assert_eq!(
            parse_line("x_error=\"b\""),
            Ok(module("x", ModKey::Error, "b"))
        );
        assert_eq!(
            parse_line("a-b_load=\"NO\""),
            Ok(module("a-b", ModKey::Load, "NO"))
        );
        assert_eq!(
            parse_line("exec=\"echo hi\""),
            Ok(Line::Exec("echo hi".into()))
        );
        // A negative number is no `$VALUE` word, so the module pattern fails
        // and the line is an ordinary variable.
        assert_eq!(parse_line("foo_load=-1"), Ok(set("foo_load", "-1")));
        // Malformed: trailing junk, missing quote, no value, no `=`.
        assert_eq!(parse_line("a=\"b\" junk"), Err(Malformed));
        assert_eq!(parse_line("a=\"b"), Err(Malformed));
        assert_eq!(parse_line("a="), Err(Malformed));
        assert_eq!(parse_line("just words"), Err(Malformed));
        assert_eq!(parse_line("foo_load=\"YES\" x"), Err(Malformed));
        // `%w` has no underscore: a bare word stops at it.
        assert_eq!(parse_line("kernel=my_kernel"), Err(Malformed));
        assert_eq!(parse_line("a=\"caf\u{e9}\""), Err(Malformed));
    }

    #[test]
    fn expansion() {
        let mut env = Env::new();
        env.set("kernel", "kernel.old");
        env.set("x", "1");
        assert_eq!(
            expand("/boot/${kernel};/boot/modules", &env),
            "/boot/kernel.old;/boot/modules"
        );
        assert_eq!(expand("$x", &env), "1");
        assert_eq!(expand("a $x b", &env), "a 1 b");
        assert_eq!(expand("${nope}z", &env), "z");
        assert_eq!(expand("$kernel;y", &env), "");
        assert_eq!(expand("cost $ 5 ${", &env), "cost $ 5 ${");
    }
}
