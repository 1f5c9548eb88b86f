//! The boot menu, the autoboot countdown and the loader prompt, as a
//! FreeBSD user meets them on a bhyveload console (the Lua loader's menu,
//! drawn in plain ASCII). With a console that is not a terminal there is
//! no menu and no waiting: the loader boots at once (or, with
//! `autoboot_delay=NO`, reads prompt commands from the input until EOF).

use std::time::Duration;

use userboot::{Action, Autoboot, GuestPhys, Interp};

use crate::LoadError;
use crate::cons::Console;

const ENTER: [u8; 2] = [b'\r', b'\n'];
const BACKSPACE: [u8; 2] = [0x7f, 0x08];

/// Run the loader's user interface until it boots, reboots or quits.
pub fn run(
    interp: &mut Interp<'_>,
    cons: &Console,
    mem: &mut dyn GuestPhys,
) -> Result<Action, LoadError> {
    let auto = interp.autoboot();
    if !cons.interactive() {
        return match auto {
            Autoboot::Disabled => prompt(interp, cons, mem),
            _ => Ok(interp.exec("boot", mem)?),
        };
    }
    if auto == Autoboot::Immediate {
        return boot_or_prompt(interp, cons, mem, "boot");
    }
    let beastie = !interp
        .env()
        .get("beastie_disable")
        .is_some_and(|v| v.eq_ignore_ascii_case("yes"));
    if !beastie {
        return plain_countdown(interp, cons, mem, auto);
    }
    main_menu(interp, cons, mem, auto)
}

/// Boot; if that fails, say why and fall back to the prompt as the loader
/// does.
fn boot_or_prompt(
    interp: &mut Interp<'_>,
    cons: &Console,
    mem: &mut dyn GuestPhys,
    cmd: &str,
) -> Result<Action, LoadError> {
    match interp.exec(cmd, mem) {
        Ok(Action::Continue) => prompt(interp, cons, mem),
        Ok(a) => Ok(a),
        Err(e) => {
            cons.print(&format!("{e}\n"));
            prompt(interp, cons, mem)
        }
    }
}

/// Wait up to `secs` seconds for a key, printing `line(n)` each second.
/// None when the time ran out.
fn countdown(cons: &Console, secs: u32, line: impl Fn(u32) -> String) -> Option<u8> {
    for left in (1..=secs).rev() {
        cons.print(&format!("\r{}", line(left)));
        if let Some(k) = cons.getc(Some(Duration::from_secs(1))) {
            cons.print("\n");
            return Some(k);
        }
    }
    cons.print("\n");
    None
}

/// `beastie_disable=YES`: the loader's plain autoboot message.
fn plain_countdown(
    interp: &mut Interp<'_>,
    cons: &Console,
    mem: &mut dyn GuestPhys,
    auto: Autoboot,
) -> Result<Action, LoadError> {
    let Autoboot::Wait(secs) = auto else {
        return prompt(interp, cons, mem);
    };
    cons.print("\nHit [Enter] to boot immediately, or any other key for command prompt.\n");
    match countdown(cons, secs, |n| {
        format!(
            "Booting [/boot/kernel/kernel] in {n} second{}... ",
            plural(n)
        )
    }) {
        None => boot_or_prompt(interp, cons, mem, "boot"),
        Some(k) if ENTER.contains(&k) => boot_or_prompt(interp, cons, mem, "boot"),
        Some(_) => prompt(interp, cons, mem),
    }
}

fn plural(n: u32) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn on_off(interp: &Interp<'_>, var: &str) -> &'static str {
    if interp.env().flag(var) { "On" } else { "off" }
}

fn frame(title: &str, lines: &[String]) -> String {
    const W: usize = 50;
    let dashes = W.saturating_sub(title.len() + 2);
    let mut s = format!(
        "\n/{} {title} {}\\\n",
        "-".repeat(dashes / 2),
        "-".repeat(dashes - dashes / 2)
    );
    for l in lines {
        s.push_str(&format!("|  {l:<w$}|\n", w = W - 2));
    }
    s.push_str(&format!("\\{}/\n", "-".repeat(W)));
    s
}

fn draw_main(interp: &Interp<'_>, cons: &Console) {
    let kernel = interp.env().get("kernel").unwrap_or("kernel").to_string();
    let lines = [
        String::new(),
        "1. Boot Multi user [Enter]".into(),
        "2. Boot Single user".into(),
        "3. Escape to loader prompt".into(),
        "4. Reboot".into(),
        String::new(),
        "Options:".into(),
        format!("5. Kernel: default/{kernel} (1 of 1)"),
        "6. Boot Options".into(),
        String::new(),
    ];
    cons.print(&frame("Welcome to FreeBSD", &lines));
}

fn main_menu(
    interp: &mut Interp<'_>,
    cons: &Console,
    mem: &mut dyn GuestPhys,
    auto: Autoboot,
) -> Result<Action, LoadError> {
    draw_main(interp, cons);
    let mut key = match auto {
        Autoboot::Wait(secs) => {
            match countdown(cons, secs, |n| {
                format!("Autoboot in {n} second{}. [Space] to pause ", plural(n))
            }) {
                None => return boot_or_prompt(interp, cons, mem, "boot"),
                Some(k) => Some(k),
            }
        }
        _ => None,
    };
    loop {
        let k = match key.take() {
            Some(b' ') | None => match cons.getc(None) {
                Some(k) => k,
                None => return Ok(Action::Quit),
            },
            Some(k) => k,
        };
        match k {
            b'1' | b'\r' | b'\n' | b'b' | b'B' => return boot_or_prompt(interp, cons, mem, "boot"),
            b'2' | b's' | b'S' => return boot_or_prompt(interp, cons, mem, "boot -s"),
            b'3' | 0x1b => return prompt(interp, cons, mem),
            b'4' | b'r' | b'R' => return Ok(Action::Reboot),
            b'6' | b'o' | b'O' => {
                options_menu(interp, cons);
                draw_main(interp, cons);
            }
            _ => {}
        }
    }
}

/// Boot options: toggles for the `boot_*` variables.
fn options_menu(interp: &mut Interp<'_>, cons: &Console) {
    const TOGGLES: [(u8, &str, &str); 2] = [
        (b'3', "Single user", "boot_single"),
        (b'4', "Verbose", "boot_verbose"),
    ];
    loop {
        let mut lines = vec![
            String::new(),
            "1. Back to main menu [Backspace]".into(),
            "2. Load System Defaults".into(),
            String::new(),
            "Boot Options:".into(),
        ];
        for (k, label, var) in TOGGLES {
            lines.push(format!("{}. {label}: {}", k as char, on_off(interp, var)));
        }
        lines.push(String::new());
        cons.print(&frame("Boot Options", &lines));
        let Some(k) = cons.getc(None) else { return };
        match k {
            b'1' | 0x7f | 0x08 | 0x1b => return,
            b'2' => {
                for (_, _, var) in TOGGLES {
                    interp.env_mut().unset(var);
                }
            }
            _ => {
                if let Some((_, _, var)) = TOGGLES.iter().find(|t| t.0 == k) {
                    if interp.env().flag(var) {
                        interp.env_mut().unset(var);
                    } else {
                        interp.env_mut().set(var, "YES");
                    }
                }
            }
        }
    }
}

/// Read one line; None at end of input.
fn read_line(cons: &Console) -> Option<String> {
    let mut line = Vec::new();
    loop {
        let Some(b) = cons.getc(None) else {
            return (!line.is_empty()).then(|| String::from_utf8_lossy(&line).into_owned());
        };
        match b {
            _ if ENTER.contains(&b) => {
                if cons.interactive() {
                    cons.print("\n");
                }
                return Some(String::from_utf8_lossy(&line).into_owned());
            }
            _ if BACKSPACE.contains(&b) => {
                let erased = line.pop().is_some();
                if erased && cons.interactive() {
                    cons.print("\x08 \x08");
                }
            }
            0x20..=0x7e | b'\t' => {
                line.push(b);
                if cons.interactive() {
                    cons.print(&(b as char).to_string());
                }
            }
            _ => {}
        }
    }
}

/// The `OK` prompt: commands until one boots, reboots or quits. End of
/// input is `quit`.
fn prompt(
    interp: &mut Interp<'_>,
    cons: &Console,
    mem: &mut dyn GuestPhys,
) -> Result<Action, LoadError> {
    cons.print("\nType '?' for a list of commands, 'help' for more detailed help.\n");
    loop {
        cons.print("OK ");
        let Some(line) = read_line(cons) else {
            cons.print("\n");
            return Ok(Action::Quit);
        };
        let line = line.trim();
        let line = if line == "?" { "help" } else { line };
        if line.is_empty() {
            continue;
        }
        match interp.exec(line, mem) {
            Ok(Action::Continue) => {}
            Ok(a) => return Ok(a),
            Err(e) => cons.print(&format!("{e}\n")),
        }
    }
}
