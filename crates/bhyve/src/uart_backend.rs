//! Where a UART's bytes go (`uart_backend.c`): `stdio` (the terminal bhyve
//! runs on, switched to raw mode) or a tty device path such as `/dev/pts/N`.
//!
//! Unlike bhyve the fds stay blocking: output is written whole even when the
//! guest outpaces the terminal (a slow reader stalls the guest instead of
//! losing bytes), and input is only read after poll(2) said it is there, so
//! a read never blocks.  Every read happens with the owning device locked,
//! which is what makes poll-then-read safe.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::term;

#[derive(Debug, thiserror::Error)]
pub enum UartBackendError {
    #[error("uart backend {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("uart backend {path}: not a tty")]
    NotTty { path: String },
    #[error("uart backend {path}: raw mode: {source}")]
    Raw { path: String, source: nix::Error },
}

/// An open backend.
#[derive(Debug)]
pub struct UartBackend {
    /// `stdio` or the device path.
    path: String,
    rx: File,
    tx: File,
    /// Input ended (EOF or a dead tty): stop listening to it.
    rx_closed: AtomicBool,
    /// Output failed (e.g. stdout closed): further bytes have nowhere to go.
    tx_broken: AtomicBool,
    /// Wakes the reader when the UART wants input again.
    wake_tx: UnixStream,
    wake_rx: UnixStream,
}

/// What one look at the input found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// This many bytes were read.
    Bytes(usize),
    /// Nothing to read right now.
    Empty,
    /// Input has ended for good.
    Closed,
}

fn open_err(path: &str) -> impl FnOnce(std::io::Error) -> UartBackendError + '_ {
    move |source| UartBackendError::Open {
        path: path.to_string(),
        source,
    }
}

impl UartBackend {
    /// Open `stdio` or a tty path (`uart_tty_open`), putting a terminal in
    /// raw mode; term.rs restores it on every way out.
    pub fn open(path: &str) -> Result<UartBackend, UartBackendError> {
        let (rx, tx) = if path == "stdio" {
            let rx = File::from(
                std::io::stdin()
                    .as_fd()
                    .try_clone_to_owned()
                    .map_err(open_err(path))?,
            );
            let tx = File::from(
                std::io::stdout()
                    .as_fd()
                    .try_clone_to_owned()
                    .map_err(open_err(path))?,
            );
            (rx, tx)
        } else {
            // O_NONBLOCK only so the open never waits for carrier; the fd
            // is made blocking again below.  O_NOCTTY: never become bhyve's
            // controlling terminal.
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
                .open(path)
                .map_err(open_err(path))?;
            if !nix::unistd::isatty(&f).unwrap_or(false) {
                return Err(UartBackendError::NotTty { path: path.into() });
            }
            let fl = nix::fcntl::OFlag::from_bits_truncate(
                nix::fcntl::fcntl(&f, nix::fcntl::FcntlArg::F_GETFL)
                    .map_err(|e| open_err(path)(e.into()))?,
            );
            nix::fcntl::fcntl(
                &f,
                nix::fcntl::FcntlArg::F_SETFL(fl - nix::fcntl::OFlag::O_NONBLOCK),
            )
            .map_err(|e| open_err(path)(e.into()))?;
            let tx = f.try_clone().map_err(open_err(path))?;
            (f, tx)
        };
        let (wake_tx, wake_rx) = UnixStream::pair().map_err(open_err(path))?;
        wake_tx.set_nonblocking(true).map_err(open_err(path))?;
        wake_rx.set_nonblocking(true).map_err(open_err(path))?;
        // stdin that is not a terminal (a pipe, /dev/null) is used as is.
        term::make_raw(rx.as_raw_fd()).map_err(|source| UartBackendError::Raw {
            path: path.into(),
            source,
        })?;
        Ok(UartBackend {
            path: path.to_string(),
            rx,
            tx,
            rx_closed: AtomicBool::new(false),
            tx_broken: AtomicBool::new(false),
            wake_tx,
            wake_rx,
        })
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn rx_closed(&self) -> bool {
        self.rx_closed.load(Ordering::SeqCst)
    }

    /// Send a byte the guest wrote, blocking until it is taken.
    pub fn write(&self, b: u8) {
        if self.tx_broken.load(Ordering::SeqCst) {
            return;
        }
        if (&self.tx).write_all(&[b]).is_err() {
            self.tx_broken.store(true, Ordering::SeqCst);
        }
    }

    /// Read what input is there now, never blocking.  Call with the owning
    /// device locked.
    pub fn read(&self, buf: &mut [u8]) -> Input {
        if self.rx_closed() || buf.is_empty() {
            return Input::Empty;
        }
        let mut fds = [PollFd::new(self.rx.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::ZERO) {
            Ok(n) if n > 0 => {}
            _ => return Input::Empty,
        }
        loop {
            match (&self.rx).read(buf) {
                Ok(0) => break,
                Ok(n) => return Input::Bytes(n),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Input::Empty,
                // EIO from a tty whose other side went away.
                Err(_) => break,
            }
        }
        self.rx_closed.store(true, Ordering::SeqCst);
        self.wake();
        Input::Closed
    }

    /// Discard input already queued (an RX FIFO reset): read until a short
    /// read, as `uart_rxfifo_reset` does.
    pub fn flush(&self) {
        let mut buf = [0u8; 32];
        while let Input::Bytes(32) = self.read(&mut buf) {}
    }

    /// Make the reader look at the UART again.
    pub fn wake(&self) {
        // A full socket buffer means a wakeup is already pending.
        let _ = (&self.wake_tx).write(&[1]);
    }

    /// Readable when input may be there (for the event loop).
    pub fn input_fd(&self) -> &File {
        &self.rx
    }

    /// Readable after [`UartBackend::wake`] (for the event loop).
    pub fn wake_fd(&self) -> &UnixStream {
        &self.wake_rx
    }

    /// Consume the wakeups signalled so far.
    pub fn clear_wakes(&self) {
        let mut b = [0u8; 64];
        while matches!((&self.wake_rx).read(&mut b), Ok(n) if n > 0) {}
    }
}

impl Drop for UartBackend {
    fn drop(&mut self) {
        // Before `rx` closes: its saved settings must not outlive the fd.
        term::restore_fd(self.rx.as_raw_fd());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_paths_are_refused() {
        let e = UartBackend::open("/nonexistent/tty").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("uart backend /nonexistent/tty: No such file"),
            "{e}"
        );
        let e = UartBackend::open("/dev/null").unwrap_err();
        assert_eq!(e.to_string(), "uart backend /dev/null: not a tty");
    }

    /// Until the input fd is readable (as the event loop would wait).
    fn wait_input(b: &UartBackend) {
        let mut fds = [PollFd::new(b.input_fd().as_fd(), PollFlags::POLLIN)];
        assert_eq!(poll(&mut fds, PollTimeout::from(5000u16)), Ok(1));
    }

    #[test]
    fn pty_input_output_and_eof() {
        let master = nix::pty::posix_openpt(nix::fcntl::OFlag::O_RDWR).unwrap();
        nix::pty::grantpt(&master).unwrap();
        nix::pty::unlockpt(&master).unwrap();
        let name = nix::pty::ptsname_r(&master).unwrap();
        let b = UartBackend::open(&name).unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(b.read(&mut buf), Input::Empty);
        b.write(b'o');
        let mut m = File::from(std::os::fd::OwnedFd::from(master));
        let mut got = [0u8; 1];
        m.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"o");
        m.write_all(b"in").unwrap();
        wait_input(&b);
        let mut n = 0;
        while n < 2 {
            match b.read(&mut buf[n..]) {
                Input::Bytes(k) => n += k,
                Input::Empty => wait_input(&b),
                Input::Closed => panic!("closed"),
            }
        }
        assert_eq!(&buf[..2], b"in");
        drop(m);
        wait_input(&b);
        assert_eq!(b.read(&mut buf), Input::Closed);
        assert!(b.rx_closed());
    }
}
