//! bhyve's `mevent`: one thread that waits (here with epoll) on the file
//! descriptors devices care about and runs their handlers, so that work a
//! guest kicks off — a virtio queue notification arriving through an
//! ioeventfd — is done off the vCPU threads.
//!
//! Handlers are level-triggered read handlers; each must consume what
//! made its descriptor readable.  A handler runs without any lock of
//! ours held, so it may add or delete events itself.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

type Handler = Arc<Mutex<dyn FnMut() + Send>>;

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An event registered with [`Mevent::add_read`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MeventId(u64);

/// The event loop; its thread runs until [`Mevent::stop`].
pub struct Mevent {
    epoll: Epoll,
    handlers: Mutex<HashMap<u64, (RawFd, Handler)>>,
    next: AtomicU64,
    stop: AtomicBool,
    /// Wakes the thread to notice `stop`.
    wake: EventFd,
}

impl std::fmt::Debug for Mevent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mevent").finish_non_exhaustive()
    }
}

const WAKE: u64 = 0;

impl Mevent {
    /// Create the loop and start its thread (`mevent_dispatch`).
    pub fn start() -> io::Result<Arc<Mevent>> {
        let me = Arc::new(Mevent {
            epoll: Epoll::new()?,
            handlers: Mutex::new(HashMap::new()),
            next: AtomicU64::new(WAKE + 1),
            stop: AtomicBool::new(false),
            wake: EventFd::new(EFD_NONBLOCK)?,
        });
        me.epoll.ctl(
            ControlOperation::Add,
            me.wake.as_raw_fd(),
            EpollEvent::new(EventSet::IN, WAKE),
        )?;
        let m = me.clone();
        thread::Builder::new()
            .name("mevent".into())
            .spawn(move || {
                let mut events = vec![EpollEvent::default(); 32];
                while !m.stop.load(Ordering::Acquire) {
                    let n = match m.epoll.wait(-1, &mut events) {
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            eprintln!("mevent: epoll: {e}");
                            return;
                        }
                    };
                    for ev in &events[..n] {
                        m.dispatch(ev.data());
                    }
                }
            })?;
        Ok(me)
    }

    /// Run `handler` on the loop thread whenever `fd` is readable
    /// (`mevent_add(fd, EVF_READ, ...)`).  `fd` must stay open until the
    /// event is deleted.
    pub fn add_read(
        &self,
        fd: &impl AsRawFd,
        handler: impl FnMut() + Send + 'static,
    ) -> io::Result<MeventId> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let raw = fd.as_raw_fd();
        lock(&self.handlers).insert(id, (raw, Arc::new(Mutex::new(handler))));
        if let Err(e) = self.epoll.ctl(
            ControlOperation::Add,
            raw,
            EpollEvent::new(EventSet::IN, id),
        ) {
            lock(&self.handlers).remove(&id);
            return Err(e);
        }
        Ok(MeventId(id))
    }

    /// Stop watching an event (`mevent_delete`); its handler does not run
    /// again once this returns, unless it is running right now.
    pub fn delete(&self, id: MeventId) {
        if let Some((raw, _)) = lock(&self.handlers).remove(&id.0) {
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, raw, EpollEvent::default());
        }
    }

    /// Stop or resume watching an event without forgetting its handler
    /// (`mevent_disable` / `mevent_enable`): a device with nowhere to put
    /// input stops listening until the guest makes room.
    pub fn set_enabled(&self, id: MeventId, on: bool) {
        if let Some((raw, _)) = lock(&self.handlers).get(&id.0) {
            let set = if on { EventSet::IN } else { EventSet::empty() };
            let _ = self
                .epoll
                .ctl(ControlOperation::Modify, *raw, EpollEvent::new(set, id.0));
        }
    }

    /// End the loop thread (after the handler running now, if any).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.wake.write(1);
    }

    fn dispatch(&self, id: u64) {
        if id == WAKE {
            let _ = self.wake.read();
            return;
        }
        let h = lock(&self.handlers).get(&id).map(|(_, h)| h.clone());
        if let Some(h) = h {
            (lock(&h))();
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::OnceLock;

    /// One loop for the unit tests that only need one to exist.
    pub(crate) fn shared() -> Arc<Mevent> {
        static ME: OnceLock<Arc<Mevent>> = OnceLock::new();
        ME.get_or_init(|| Mevent::start().unwrap()).clone()
    }
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn mevent_runs_a_handler_per_readable_event() {
        let me = Mevent::start().unwrap();
        let evt = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
        let (tx, rx) = mpsc::channel();
        let e = evt.clone();
        let id = me
            .add_read(&*evt, move || {
                let v = e.read().unwrap();
                tx.send(v).unwrap();
            })
            .unwrap();
        evt.write(3).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(3));
        evt.write(1).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(1));
        me.set_enabled(id, false);
        evt.write(1).unwrap();
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
        me.set_enabled(id, true);
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(1));
        me.delete(id);
        evt.write(1).unwrap();
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
        me.stop();
    }

    #[test]
    fn mevent_thread_ends_on_stop() {
        let me = Mevent::start().unwrap();
        let weak = Arc::downgrade(&me);
        me.stop();
        drop(me);
        // The thread drops its reference on the way out.
        let t0 = std::time::Instant::now();
        while weak.upgrade().is_some() {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "mevent thread still running"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
