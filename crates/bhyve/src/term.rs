//! The host terminal while a guest owns it: raw mode for the console, and
//! the saved settings restored on every way out (normal exit, signals,
//! panics, errors), so the user's shell is never left raw.

use std::sync::Mutex;

use nix::sys::termios::{self, SetArg, Termios};

static SAVED: Mutex<Vec<(i32, Termios)>> = Mutex::new(Vec::new());

/// Put `fd` in raw mode if it is a terminal, remembering how it was.  The
/// fd must stay open until `restore` or `restore_fd` for it.
pub fn make_raw(fd: i32) -> nix::Result<bool> {
    // SAFETY: the caller keeps `fd` open until it is restored.
    let bfd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    if !nix::unistd::isatty(bfd).unwrap_or(false) {
        return Ok(false);
    }
    let orig = termios::tcgetattr(bfd)?;
    let mut raw = orig.clone();
    termios::cfmakeraw(&mut raw);
    raw.control_flags |= termios::ControlFlags::CLOCAL;
    SAVED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((fd, orig));
    termios::tcsetattr(bfd, SetArg::TCSANOW, &raw)?;
    Ok(true)
}

/// Restore every terminal we changed.  Safe to call more than once and from
/// a panic hook.
pub fn restore() {
    let saved = match SAVED.try_lock() {
        Ok(mut g) => std::mem::take(&mut *g),
        Err(_) => return,
    };
    // Newest first: a terminal opened twice ends up as it was originally.
    for (fd, t) in saved.into_iter().rev() {
        // SAFETY: as in make_raw: every saved fd is still open.
        let bfd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let _ = termios::tcsetattr(bfd, SetArg::TCSANOW, &t);
    }
}

/// Restore `fd` alone, before whoever owns it closes it.
pub fn restore_fd(fd: i32) {
    let mut saved = SAVED.lock().unwrap_or_else(|e| e.into_inner());
    saved.retain(|(f, t)| {
        if *f == fd {
            // SAFETY: as in make_raw; the caller still holds `fd` open.
            let bfd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            let _ = termios::tcsetattr(bfd, SetArg::TCSANOW, t);
        }
        *f != fd
    });
}

/// Restore the terminal before the default panic message is printed.
pub fn install_panic_hook() {
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore();
        prev(info);
    }));
}
