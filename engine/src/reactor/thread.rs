//! One reactor: its message ring, pollers, timers, registered fds and local state, and the
//! loop iteration that runs them. A `Reactor` is owned and polled by one OS thread (it is not
//! `Send`): a spawned reactor thread, a thread of the embedding firmware, or a simulation.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use super::clock::Clock;
use super::mailbox::Mailbox;
use super::poller::{PollFn, PollStatus, PollerHandle, PollerSlot};
use super::registry::Registry;
use super::timer::{TimerFn, TimerHandle, Timers};
use super::{Error, ReactorId, Result};
use crate::sys::{Epoll, TimerFd};

/// Messages run per loop at most, so that a flood of messages cannot starve the pollers.
pub const MSG_BUDGET: usize = 256;

const TOKEN_DOORBELL: u64 = 0;
const TOKEN_TIMERFD: u64 = 1;
const TOKEN_USER: u64 = 2;

/// How a reactor waits when it has nothing to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Spin: lowest latency, one busy core per reactor.
    Poll,
    /// Park on epoll after `spin` of idleness; wake on a message, a due timer or periodic
    /// poller, or a registered fd becoming readable.
    #[default]
    Adaptive,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "poll" => Ok(Mode::Poll),
            "adaptive" => Ok(Mode::Adaptive),
            other => Err(format!("unknown mode {other:?}: expected poll or adaptive")),
        }
    }
}

/// Counters of one reactor since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReactorStats {
    pub loops: u64,
    pub busy_loops: u64,
    pub messages: u64,
    pub parks: u64,
    pub pollers: usize,
    pub timers: usize,
}

pub(crate) struct Inner {
    mailbox: Arc<Mailbox>,
    registry: Arc<Registry>,
    name: String,
    clock: Clock,
    pollers: RefCell<Vec<PollerSlot>>,
    /// Pollers registered while the table is being walked; merged after the walk.
    new_pollers: RefCell<Vec<PollerSlot>>,
    pollers_removed: Cell<bool>,
    timers: RefCell<Timers>,
    next_object_id: Cell<u64>,
    locals: RefCell<Vec<Option<Rc<dyn Any>>>>,
    epoll: Epoll,
    timerfd: TimerFd,
    armed_deadline: Cell<Option<u64>>,
    user_fds: RefCell<Vec<RawFd>>,
    polling: Cell<bool>,
    running_poller: Cell<Option<u64>>,
    stats: Cell<ReactorStats>,
    shut_down: Cell<bool>,
}

thread_local! {
    /// The reactor whose `poll` is running on this OS thread, if any.
    static CURRENT: Cell<*const Inner> = const { Cell::new(std::ptr::null()) };
}

/// Run `f` with the reactor running on this thread.
pub(crate) fn with_current<R>(f: impl FnOnce(&Inner) -> R) -> Result<R> {
    let ptr = CURRENT.with(|c| c.get());
    if ptr.is_null() {
        return Err(Error::NotOnReactor);
    }
    // CURRENT is non-null only inside `Reactor::enter`, which holds an `Rc<Inner>` for as long
    // as the pointer is set and restores the previous value before returning or unwinding.
    // SAFETY: so the Inner is alive here; only shared references are made from it.
    let inner = unsafe { &*ptr };
    Ok(f(inner))
}

/// Restores CURRENT when `enter` ends, including by unwinding.
struct EnterGuard(*const Inner);

impl Drop for EnterGuard {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.0));
    }
}

/// A reactor, owned by the OS thread that polls it.
pub struct Reactor {
    inner: Rc<Inner>,
}

impl Reactor {
    pub(crate) fn new(
        registry: Arc<Registry>,
        mailbox: Arc<Mailbox>,
        name: String,
        clock: Clock,
    ) -> Result<Self> {
        let sys = |op: &'static str| move |source| Error::Sys { op, source };
        let epoll = Epoll::new().map_err(sys("epoll_create1"))?;
        let timerfd = TimerFd::new().map_err(sys("timerfd_create"))?;
        epoll
            .add(mailbox.doorbell().as_raw_fd(), TOKEN_DOORBELL)
            .map_err(sys("epoll_ctl(doorbell)"))?;
        epoll
            .add(timerfd.as_raw_fd(), TOKEN_TIMERFD)
            .map_err(sys("epoll_ctl(timerfd)"))?;
        Ok(Self {
            inner: Rc::new(Inner {
                mailbox,
                registry,
                name,
                clock,
                pollers: RefCell::new(Vec::new()),
                new_pollers: RefCell::new(Vec::new()),
                pollers_removed: Cell::new(false),
                timers: RefCell::new(Timers::default()),
                next_object_id: Cell::new(1),
                locals: RefCell::new(Vec::new()),
                epoll,
                timerfd,
                armed_deadline: Cell::new(None),
                user_fds: RefCell::new(Vec::new()),
                polling: Cell::new(false),
                running_poller: Cell::new(None),
                stats: Cell::new(ReactorStats::default()),
                shut_down: Cell::new(false),
            }),
        })
    }

    pub fn id(&self) -> ReactorId {
        self.inner.id()
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Run `f` as code on this reactor: `reactor::current()`, pollers, timers, fds and locals
    /// all refer to this reactor inside it. Used to set a reactor up before polling it.
    pub fn enter<R>(&self, f: impl FnOnce() -> R) -> R {
        let previous = CURRENT.with(|c| c.replace(Rc::as_ptr(&self.inner)));
        let _guard = EnterGuard(previous);
        f()
    }

    /// One loop iteration: drain up to [`MSG_BUDGET`] messages, run the pollers (periodic ones
    /// when due), fire due timers. A nested call from code already inside this reactor's
    /// iteration does nothing and returns `Idle`.
    pub fn poll(&self) -> PollStatus {
        let inner = &self.inner;
        if inner.polling.get() || inner.shut_down.get() {
            return PollStatus::Idle;
        }
        inner.polling.set(true);
        let status = self.enter(|| inner.iterate());
        inner.polling.set(false);
        status
    }

    /// Sleep until a message, a due timer or periodic poller, or a registered fd; returns at
    /// once if a message or a stop request is already waiting. An adaptive reactor calls this
    /// after a run of idle loops; a bring-your-own thread may too.
    pub fn park(&self) -> Result<()> {
        self.inner.park()
    }

    /// Whether `Engine::stop` (or `Sim`) asked this reactor to stop.
    pub fn stop_requested(&self) -> bool {
        self.inner.mailbox.stop_requested()
    }

    /// Loop until a stop is requested, parking after `spin` of idleness in adaptive mode.
    pub fn run(&self, mode: Mode, spin: Duration) -> Result<()> {
        let spin_ns = spin.as_nanos() as u64;
        let mut idle_since: Option<u64> = None;
        while !self.stop_requested() {
            match self.poll() {
                PollStatus::Busy => idle_since = None,
                PollStatus::Idle if mode == Mode::Adaptive => {
                    let now = self.inner.clock.now_ns();
                    let since = *idle_since.get_or_insert(now);
                    if now.saturating_sub(since) >= spin_ns {
                        self.park()?;
                        idle_since = None;
                    }
                }
                PollStatus::Idle => {}
            }
        }
        Ok(())
    }

    pub fn stats(&self) -> ReactorStats {
        self.inner.stats()
    }

    /// Stop for good: refuse new messages, run every message already accepted, then drop the
    /// pollers, timers and local state. Also done on drop.
    pub fn shutdown(self) {
        drop(self);
    }
}

impl Drop for Reactor {
    fn drop(&mut self) {
        let inner = Rc::clone(&self.inner);
        self.enter(|| inner.shutdown());
    }
}

impl Inner {
    pub(crate) fn id(&self) -> ReactorId {
        self.mailbox.id
    }

    pub(crate) fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    pub(crate) fn mailbox(&self) -> &Arc<Mailbox> {
        &self.mailbox
    }

    pub(crate) fn now_ns(&self) -> u64 {
        self.clock.now_ns()
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    fn next_id(&self) -> u64 {
        let id = self.next_object_id.get();
        self.next_object_id.set(id + 1);
        id
    }

    fn bump(&self, f: impl FnOnce(&mut ReactorStats)) {
        let mut s = self.stats.get();
        f(&mut s);
        self.stats.set(s);
    }

    pub(crate) fn stats(&self) -> ReactorStats {
        let mut s = self.stats.get();
        s.pollers = self.pollers.borrow().iter().filter(|p| !p.removed).count()
            + self
                .new_pollers
                .borrow()
                .iter()
                .filter(|p| !p.removed)
                .count();
        s.timers = self.timers.borrow().len();
        s
    }

    fn iterate(&self) -> PollStatus {
        let mut status = PollStatus::Idle;
        let mut ran = 0;
        while ran < MSG_BUDGET {
            // SAFETY: an `Inner` lives in an `Rc` on its reactor's thread, the only thread that
            // takes from its mailbox (here, in `park` and in `shutdown`).
            let Some(msg) = (unsafe { self.mailbox.pop() }) else {
                break;
            };
            msg.run();
            ran += 1;
        }
        if ran > 0 {
            status = PollStatus::Busy;
        }
        status = status.or(self.run_pollers());
        status = status.or(self.fire_timers());
        self.bump(|s| {
            s.loops += 1;
            s.messages += ran as u64;
            if status == PollStatus::Busy {
                s.busy_loops += 1;
            }
        });
        status
    }

    fn run_pollers(&self) -> PollStatus {
        // Pollers registered before this walk join it; those registered during it, the next.
        let mut added = std::mem::take(&mut *self.new_pollers.borrow_mut());
        self.pollers.borrow_mut().append(&mut added);
        let mut status = PollStatus::Idle;
        let count = self.pollers.borrow().len();
        // The clock is read once per loop, and only if a periodic poller needs it.
        let mut now: Option<u64> = None;
        for i in 0..count {
            let (id, mut f) = {
                let mut table = self.pollers.borrow_mut();
                let slot = &mut table[i];
                if slot.removed {
                    continue;
                }
                if slot.period_ns > 0 {
                    let now = *now.get_or_insert_with(|| self.clock.now_ns());
                    if now < slot.next_due_ns {
                        continue;
                    }
                    // Keep the phase, but never queue a burst of missed periods.
                    slot.next_due_ns = (slot.next_due_ns + slot.period_ns).max(now + 1);
                }
                match slot.f.take() {
                    Some(f) => (slot.id, f),
                    None => continue,
                }
            };
            self.running_poller.set(Some(id));
            status = status.or(f());
            self.running_poller.set(None);
            let mut table = self.pollers.borrow_mut();
            let slot = &mut table[i];
            if slot.removed {
                drop(table);
                drop(f);
            } else {
                slot.f = Some(f);
            }
        }
        if self.pollers_removed.replace(false) {
            self.pollers.borrow_mut().retain(|p| !p.removed);
            self.new_pollers.borrow_mut().retain(|p| !p.removed);
        }
        status
    }

    fn fire_timers(&self) -> PollStatus {
        let mut status = PollStatus::Idle;
        if self.timers.borrow().is_empty() {
            return status;
        }
        let now = self.clock.now_ns();
        loop {
            let due = self.timers.borrow_mut().pop_due(now);
            let Some(f) = due else { break };
            f.call(());
            status = PollStatus::Busy;
        }
        status
    }

    fn next_deadline(&self) -> Option<u64> {
        let timer = self.timers.borrow_mut().next_deadline();
        let poller = self
            .pollers
            .borrow()
            .iter()
            .chain(self.new_pollers.borrow().iter())
            .filter(|p| !p.removed && p.period_ns > 0)
            .map(|p| p.next_due_ns)
            .min();
        match (timer, poller) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn park(&self) -> Result<()> {
        if matches!(self.clock, Clock::Mock(_)) {
            // A simulated reactor never sleeps: the simulation moves its clock.
            return Ok(());
        }
        let deadline = self.next_deadline();
        // A pending every-loop poller that was just added must run before any sleep.
        if !self.new_pollers.borrow().is_empty() {
            return Ok(());
        }
        if let Some(d) = deadline {
            if d <= self.clock.now_ns() {
                return Ok(());
            }
        }
        // SAFETY: as in `iterate`: this is the mailbox's one receiver.
        if !unsafe { self.mailbox.prepare_to_sleep() } {
            return Ok(());
        }
        if self.armed_deadline.get() != deadline {
            self.timerfd
                .set_abs(deadline)
                .map_err(|source| Error::Sys {
                    op: "timerfd_settime",
                    source,
                })?;
            self.armed_deadline.set(deadline);
        }
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 8];
        let waited = self.epoll.wait(&mut events, -1);
        self.mailbox.woke();
        let n = waited.map_err(|source| Error::Sys {
            op: "epoll_wait",
            source,
        })?;
        for ev in &events[..n] {
            match ev.u64 {
                TOKEN_DOORBELL => {
                    self.mailbox.doorbell().drain();
                }
                TOKEN_TIMERFD => {
                    self.timerfd.drain();
                    self.armed_deadline.set(None);
                }
                _ => {} // a user fd: its poller reads it on the next loop.
            }
        }
        self.bump(|s| s.parks += 1);
        Ok(())
    }

    pub(crate) fn register_poller(
        &self,
        name: &'static str,
        period: Option<Duration>,
        f: PollFn,
    ) -> PollerHandle {
        let id = self.next_id();
        let period_ns = period.map_or(0, |p| (p.as_nanos() as u64).max(1));
        self.new_pollers.borrow_mut().push(PollerSlot {
            id,
            name,
            f: Some(f),
            period_ns,
            next_due_ns: self.clock.now_ns() + period_ns,
            removed: false,
        });
        PollerHandle {
            reactor: self.id(),
            id,
            mailbox: Arc::clone(&self.mailbox),
        }
    }

    /// Mark a poller removed; its closure is dropped outside any borrow of the table.
    pub(crate) fn unregister_poller(&self, id: u64) {
        let mut dropped: Option<PollFn> = None;
        for table in [&self.pollers, &self.new_pollers] {
            let mut table = table.borrow_mut();
            if let Some(slot) = table.iter_mut().find(|p| p.id == id && !p.removed) {
                slot.removed = true;
                dropped = slot.f.take();
                self.pollers_removed.set(true);
            }
        }
        drop(dropped);
    }

    pub(crate) fn running_poller(&self) -> Option<u64> {
        self.running_poller.get()
    }

    pub(crate) fn poller_names(&self) -> Vec<&'static str> {
        self.pollers
            .borrow()
            .iter()
            .chain(self.new_pollers.borrow().iter())
            .filter(|p| !p.removed)
            .map(|p| p.name)
            .collect()
    }

    pub(crate) fn set_timer(&self, after: Duration, f: TimerFn) -> TimerHandle {
        let id = self.next_id();
        let deadline = self.clock.now_ns().saturating_add(after.as_nanos() as u64);
        self.timers.borrow_mut().insert(id, deadline, f);
        TimerHandle {
            reactor: self.id(),
            id,
            mailbox: Arc::clone(&self.mailbox),
        }
    }

    pub(crate) fn cancel_timer(&self, id: u64) {
        let dropped = self.timers.borrow_mut().cancel(id);
        drop(dropped);
    }

    pub(crate) fn register_fd(&self, fd: RawFd) -> Result<()> {
        self.epoll
            .add(fd, TOKEN_USER)
            .map_err(|source| Error::Sys {
                op: "epoll_ctl(add)",
                source,
            })?;
        self.user_fds.borrow_mut().push(fd);
        Ok(())
    }

    pub(crate) fn fd_interest(&self, fd: RawFd, readable: bool, writable: bool) -> Result<()> {
        self.epoll
            .modify(fd, TOKEN_USER, readable, writable)
            .map_err(|source| Error::Sys {
                op: "epoll_ctl(mod)",
                source,
            })
    }

    pub(crate) fn unregister_fd(&self, fd: RawFd) -> Result<()> {
        self.epoll.remove(fd).map_err(|source| Error::Sys {
            op: "epoll_ctl(del)",
            source,
        })?;
        self.user_fds.borrow_mut().retain(|&f| f != fd);
        Ok(())
    }

    pub(crate) fn local_slot(&self, index: usize, init: &dyn Fn() -> Rc<dyn Any>) -> Rc<dyn Any> {
        if let Some(Some(v)) = self.locals.borrow().get(index) {
            return Rc::clone(v);
        }
        // Made without holding the borrow, so that `init` may use other locals.
        let value = init();
        let mut locals = self.locals.borrow_mut();
        if locals.len() <= index {
            locals.resize_with(index + 1, || None);
        }
        Rc::clone(locals[index].get_or_insert(value))
    }

    fn shutdown(&self) {
        if self.shut_down.replace(true) {
            return;
        }
        // SAFETY: as in `iterate`: this is the mailbox's one receiver.
        unsafe { self.mailbox.close() };
        // SAFETY: as above.
        while let Some(msg) = unsafe { self.mailbox.pop() } {
            msg.run();
        }
        let pollers: Vec<PollerSlot> = self.pollers.borrow_mut().drain(..).collect();
        let new_pollers: Vec<PollerSlot> = self.new_pollers.borrow_mut().drain(..).collect();
        drop(pollers);
        drop(new_pollers);
        let timers = self.timers.borrow_mut().take_all();
        drop(timers);
        let locals: Vec<_> = self.locals.borrow_mut().drain(..).collect();
        drop(locals);
        for fd in self.user_fds.borrow_mut().drain(..) {
            let _ = self.epoll.remove(fd);
        }
    }
}
