//! The timer thread (bhyve's callouts in vmm.ko, mevent timers in user
//! space): one thread sleeps until the earliest deadline of the timer
//! devices that fire on their own (RTC, HPET) and lets them fire.  A guest
//! access can move a deadline, so devices wake the thread through a
//! [`Waker`] when theirs changed.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

/// A device with deadlines (`next_deadline()` / `tick(now)` of vmm-core's
/// timers).
pub trait Timed: Send {
    /// The earliest time `tick` is needed; `None` when nothing is armed.
    fn next_deadline(&self) -> Option<Instant>;
    /// Handle every deadline at or before `now`.
    fn tick(&mut self, now: Instant);
}

pub type SharedTimed = Arc<Mutex<dyn Timed>>;

#[derive(Debug, Default)]
pub(crate) struct WakeState {
    /// A deadline may have moved since the thread last looked.
    pub(crate) kicked: bool,
    stopped: bool,
}

/// How devices (and the run loop, to stop it) reach the timer thread.
#[derive(Debug, Default)]
pub struct Waker {
    state: Mutex<WakeState>,
    cv: Condvar,
}

impl Waker {
    fn lock(&self) -> MutexGuard<'_, WakeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A device's deadline changed: re-read them all.
    pub fn kick(&self) {
        self.lock().kicked = true;
        self.cv.notify_one();
    }

    fn stop(&self) {
        self.lock().stopped = true;
        self.cv.notify_one();
    }

    #[cfg(test)]
    pub(crate) fn state_for_test(&self) -> MutexGuard<'_, WakeState> {
        self.lock()
    }
}

/// The timer devices, before the thread runs.
#[derive(Default)]
pub struct Callout {
    devices: Vec<SharedTimed>,
    waker: Arc<Waker>,
}

impl std::fmt::Debug for Callout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Callout")
            .field("devices", &self.devices.len())
            .finish_non_exhaustive()
    }
}

impl Callout {
    pub fn new() -> Callout {
        Callout::default()
    }

    /// What a device calls after a guest access moved its deadline.
    pub fn waker(&self) -> Arc<Waker> {
        self.waker.clone()
    }

    pub fn add(&mut self, dev: SharedTimed) {
        self.devices.push(dev);
    }

    /// Start the timer thread.
    pub fn start(self) -> std::io::Result<Running> {
        let waker = self.waker.clone();
        let devices = self.devices;
        let w = waker.clone();
        let thread = std::thread::Builder::new()
            .name("callout".into())
            .spawn(move || run(&devices, &w))?;
        Ok(Running { waker, thread })
    }
}

/// The running timer thread.
#[derive(Debug)]
pub struct Running {
    waker: Arc<Waker>,
    thread: JoinHandle<()>,
}

impl Running {
    /// End the thread (the VM is suspended: nothing may fire any more).
    pub fn stop(self) {
        self.waker.stop();
        let _ = self.thread.join();
    }
}

fn run(devices: &[SharedTimed], waker: &Waker) {
    loop {
        // Clear the kick before reading deadlines: an access after this
        // point sets it again, so the wait below cannot miss a new deadline.
        {
            let mut s = waker.lock();
            if s.stopped {
                return;
            }
            s.kicked = false;
        }
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        for d in devices {
            let mut d = d.lock().unwrap_or_else(|e| e.into_inner());
            if d.next_deadline().is_some_and(|t| t <= now) {
                d.tick(now);
            }
            next = match (next, d.next_deadline()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        let mut s = waker.lock();
        while !s.kicked && !s.stopped {
            s = match next {
                None => waker.cv.wait(s).unwrap_or_else(|e| e.into_inner()),
                Some(t) => {
                    let now = Instant::now();
                    if t <= now {
                        break;
                    }
                    waker
                        .cv
                        .wait_timeout(s, t - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    /// Fires once at its deadline and reports when.
    struct OneShot {
        at: Option<Instant>,
        fired: mpsc::Sender<Instant>,
    }

    impl Timed for OneShot {
        fn next_deadline(&self) -> Option<Instant> {
            self.at
        }
        fn tick(&mut self, now: Instant) {
            if self.at.take().is_some() {
                let _ = self.fired.send(now);
            }
        }
    }

    #[test]
    fn fires_at_deadlines_set_after_start_and_stops() {
        let (tx, rx) = mpsc::channel();
        let dev = Arc::new(Mutex::new(OneShot {
            at: None,
            fired: tx,
        }));
        let mut c = Callout::new();
        c.add(dev.clone());
        let waker = c.waker();
        let running = c.start().unwrap();
        // Nothing armed: the thread sleeps until kicked.
        assert!(rx.recv_timeout(Duration::from_millis(50)).is_err());
        let at = Instant::now() + Duration::from_millis(30);
        dev.lock().unwrap().at = Some(at);
        waker.kick();
        let fired = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(fired >= at);
        // A deadline moved earlier while the thread waits for a later one.
        dev.lock().unwrap().at = Some(Instant::now() + Duration::from_secs(3600));
        waker.kick();
        std::thread::sleep(Duration::from_millis(20));
        let soon = Instant::now() + Duration::from_millis(10);
        dev.lock().unwrap().at = Some(soon);
        waker.kick();
        assert!(rx.recv_timeout(Duration::from_secs(5)).unwrap() >= soon);
        running.stop();
    }
}
