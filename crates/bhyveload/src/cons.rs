//! bhyveload's console (`-c`): stdin/stdout by default, or a tty device.
//! A terminal is put in raw mode (cfmakeraw + CLOCAL, as bhyveload does)
//! only while the loader runs; `Console::drop`, the panic hook and the
//! signal path in main all put it back.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::sync::Mutex;
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::termios::{self, SetArg, Termios};

#[derive(Debug, thiserror::Error)]
pub enum ConsError {
    #[error("console {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("console {0}: not a character device")]
    NotTty(String),
}

/// Terminal settings to put back: (fd, original). A static so the panic
/// hook and the signal thread can reach it.
static SAVED: Mutex<Option<(RawFd, Termios)>> = Mutex::new(None);

/// Put the console's terminal back as it was; idempotent.
pub fn restore_terminal() {
    let saved = match SAVED.try_lock() {
        Ok(mut g) => g.take(),
        Err(_) => None,
    };
    if let Some((fd, t)) = saved {
        // SAFETY: the fd belongs to the Console, which outlives any use of
        // SAVED (it clears SAVED on drop), or to stdin.
        let bfd = unsafe { BorrowedFd::borrow_raw(fd) };
        let _ = termios::tcsetattr(bfd, SetArg::TCSANOW, &t);
    }
}

#[derive(Debug)]
pub struct Console {
    /// The tty given with -c; None for stdio.
    dev: Option<File>,
    interactive: bool,
}

impl Console {
    /// `-c path` (a character device, or "stdio"), or stdio when `None`.
    pub fn open(path: Option<&str>) -> Result<Console, ConsError> {
        let dev = match path {
            None | Some("stdio") => None,
            Some(p) => {
                let err = |source| ConsError::Open {
                    path: p.to_string(),
                    source,
                };
                let meta = std::fs::metadata(p).map_err(err)?;
                if !meta.file_type().is_char_device() {
                    return Err(ConsError::NotTty(p.to_string()));
                }
                Some(
                    OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open(p)
                        .map_err(err)?,
                )
            }
        };
        let mut c = Console {
            dev,
            interactive: false,
        };
        c.interactive = c.make_raw();
        Ok(c)
    }

    fn in_fd(&self) -> BorrowedFd<'_> {
        match &self.dev {
            Some(f) => f.as_fd(),
            // SAFETY: stdin stays open for the life of the process.
            None => unsafe { BorrowedFd::borrow_raw(0) },
        }
    }

    fn make_raw(&self) -> bool {
        let fd = self.in_fd();
        let Ok(orig) = termios::tcgetattr(fd) else {
            return false; // not a terminal: scripts, CI
        };
        let mut raw = orig.clone();
        termios::cfmakeraw(&mut raw);
        raw.control_flags |= termios::ControlFlags::CLOCAL;
        if termios::tcsetattr(fd, SetArg::TCSANOW, &raw).is_err() {
            return false;
        }
        *SAVED.lock().unwrap_or_else(|e| e.into_inner()) = Some((fd.as_raw_fd(), orig));
        true
    }

    /// Whether a person can answer: the console is a terminal. Otherwise
    /// there is no menu and no waiting.
    pub fn interactive(&self) -> bool {
        self.interactive
    }

    /// One input byte, waiting at most `wait` (None: forever). None on
    /// timeout or end of input.
    pub fn getc(&self, wait: Option<Duration>) -> Option<u8> {
        let fd = self.in_fd();
        let timeout = match wait {
            None => PollTimeout::NONE,
            Some(d) => {
                PollTimeout::try_from(d.as_millis().min(60_000) as i32).unwrap_or(PollTimeout::ZERO)
            }
        };
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(n) if n > 0 => {
                let mut b = [0u8; 1];
                match nix::unistd::read(self.in_fd(), &mut b) {
                    Ok(1) => Some(b[0]),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// Write loader output; in raw mode a newline needs its carriage return.
    pub fn print(&self, s: &str) {
        let text = if self.interactive {
            s.replace('\n', "\r\n")
        } else {
            s.to_string()
        };
        let r = match &self.dev {
            Some(f) => (&*f).write_all(text.as_bytes()),
            None => {
                let mut o = std::io::stdout().lock();
                o.write_all(text.as_bytes()).and_then(|()| o.flush())
            }
        };
        // A console that went away is not worth failing the load over.
        let _ = r;
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        restore_terminal();
    }
}
