//! The reactor runtime every other part of Tandem runs on.
//!
//! A **reactor** is a loop owned by one OS thread: it drains its message ring, runs its
//! pollers, and fires its due timers, over and over. An engine spawns one reactor per core of a
//! core mask and pins it there; embedding firmware may instead create reactors without threads
//! and call [`Reactor::poll`] from loops it owns ("bring your own thread").
//!
//! **Ownership instead of locks.** Everything a reactor owns (pollers, timers, per-reactor
//! [`ReactorLocal`] state such as I/O channels) is touched only by code running on it. Work for
//! another reactor is a message ([`send`]): a closure pushed onto that reactor's bounded
//! lock-free ring. A full ring is reported to the sender with the message handed back
//! ([`SendError`]); it is never dropped and never blocks the sender.
//!
//! **Data path.** A loop iteration takes no lock, makes no system call, and allocates nothing:
//! it pops messages (each already boxed by its sender), calls pollers in place, and compares
//! timer deadlines against a vDSO clock read. Registering pollers and timers allocates; those
//! are control-path operations. Only a parking adaptive reactor makes system calls.
//!
//! **Modes.** [`Mode::Poll`] spins. [`Mode::Adaptive`] parks on epoll after a short run of idle
//! loops and wakes on a message (an eventfd doorbell rung by the sender only when the reactor
//! sleeps), on its next timer or periodic poller (a timerfd), or on any fd registered with
//! [`register_fd`] becoming readable (a socket, an io_uring ring). A poller that waits for an
//! outside event must therefore either register that event's fd or be periodic.
//!
//! **Testing.** [`sim::Sim`] runs several reactors in one OS thread with a mock clock, polled
//! in an order the test chooses, so multi-reactor logic is reproducible.

mod clock;
mod core_mask;
mod engine;
mod local;
mod mailbox;
mod poller;
mod registry;
mod ring;
pub mod sim;
mod thread;
mod timer;

use std::fmt;
use std::os::fd::RawFd;
use std::time::Duration;

pub use clock::MockClock;
pub use core_mask::{available_cores, CoreMask, MAX_CORE};
pub use engine::{Engine, EngineOpts, Messenger};
pub use local::ReactorLocal;
pub use mailbox::{Msg, SendError, SendErrorKind};
pub use poller::{PollStatus, PollerHandle};
pub use registry::MAX_REACTORS;
pub use thread::{Mode, Reactor, ReactorStats, MSG_BUDGET};
pub use timer::TimerHandle;

pub(crate) use thread::with_current;

/// A reactor's id: its index in its engine's reactor table. Never reused within an engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReactorId(pub u32);

impl fmt::Display for ReactorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bad core mask {mask:?}: {why}")]
    BadCoreMask { mask: String, why: String },
    #[error("core {core} is not available to this process (available: {available:?})")]
    CoreNotPresent { core: usize, available: Vec<usize> },
    #[error("not running on a reactor")]
    NotOnReactor,
    #[error("an engine has at most {limit} reactors")]
    TooManyReactors { limit: usize },
    #[error("{0}")]
    Send(SendErrorSummary),
    #[error("{op}: {source}")]
    Sys {
        op: &'static str,
        source: std::io::Error,
    },
    #[error("could not pin a reactor thread to core {core}")]
    Pin { core: usize },
    #[error("could not spawn a reactor thread: {0}")]
    Spawn(std::io::Error),
    #[error("reactor {reactor} panicked")]
    Panicked { reactor: ReactorId },
    #[error("simulation still busy after {rounds} rounds")]
    SimLivelock { rounds: usize },
}

/// A [`SendError`] without its message, for `Result`s whose message is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendErrorSummary {
    pub kind: SendErrorKind,
    pub reactor: ReactorId,
}

impl fmt::Display for SendErrorSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            SendErrorKind::Full => write!(f, "reactor {}'s message ring is full", self.reactor),
            SendErrorKind::Closed => write!(f, "reactor {} has stopped", self.reactor),
            SendErrorKind::NoSuchReactor => write!(f, "no reactor has id {}", self.reactor),
        }
    }
}

impl From<SendError> for Error {
    fn from(e: SendError) -> Self {
        Error::Send(SendErrorSummary {
            kind: e.kind,
            reactor: e.reactor,
        })
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// The reactor running the caller, if any.
pub fn current() -> Option<ReactorId> {
    with_current(|r| r.id()).ok()
}

/// The name of the reactor running the caller.
pub fn current_name() -> Option<String> {
    with_current(|r| r.name().to_owned()).ok()
}

/// Queue `f` on reactor `to` of the caller's engine. Must be called on a reactor; other threads
/// use [`Messenger::send`]. A message to the caller's own reactor runs on a later iteration.
pub fn send(
    to: ReactorId,
    f: impl FnOnce() + Send + 'static,
) -> std::result::Result<(), SendError> {
    send_msg(to, Msg::new(f))
}

/// [`send`] for a message already boxed, such as one a [`SendError`] handed back: it is queued
/// as it is, not boxed again.
pub fn send_msg(to: ReactorId, msg: Msg) -> std::result::Result<(), SendError> {
    let mut msg = Some(msg);
    match with_current(|r| r.registry().send(to, msg.take().expect("taken once"))) {
        Ok(sent) => sent,
        Err(_) => Err(SendError::new(
            SendErrorKind::NoSuchReactor,
            to,
            msg.take().expect("not taken off a reactor"),
        )),
    }
}

/// Ids of the live reactors of the caller's engine.
pub fn reactors() -> Result<Vec<ReactorId>> {
    with_current(|r| r.registry().live())
}

/// A messenger for the caller's engine, to hand to threads that are not reactors.
pub fn messenger() -> Result<Messenger> {
    with_current(|r| Messenger::from_registry(r.registry().clone()))
}

/// Register `f` to run on every loop of the current reactor.
pub fn register_poller(
    name: &'static str,
    f: impl FnMut() -> PollStatus + 'static,
) -> Result<PollerHandle> {
    with_current(|r| r.register_poller(name, None, Box::new(f)))
}

/// Register `f` to run on the current reactor once every `period` (first after one period).
pub fn register_periodic_poller(
    name: &'static str,
    period: Duration,
    f: impl FnMut() -> PollStatus + 'static,
) -> Result<PollerHandle> {
    with_current(|r| r.register_poller(name, Some(period), Box::new(f)))
}

/// The poller being run right now, so that a poller can unregister itself.
pub fn this_poller() -> Option<PollerHandle> {
    with_current(|r| {
        r.running_poller().map(|id| PollerHandle {
            reactor: r.id(),
            id,
            mailbox: r.mailbox().clone(),
        })
    })
    .ok()
    .flatten()
}

/// Names of the current reactor's live pollers (for `framework_get_reactors`).
pub fn poller_names() -> Result<Vec<&'static str>> {
    with_current(|r| r.poller_names())
}

/// Run `f` once on the current reactor after `after`.
pub fn set_timer(after: Duration, f: impl FnOnce() + 'static) -> Result<TimerHandle> {
    with_current(|r| r.set_timer(after, crate::inline_fn::InlineFnOnce::new(move |()| f())))
}

/// Wake the current reactor, when parked, whenever `fd` is readable (level-triggered). The
/// fd's poller does the reading; the caller keeps the fd open until [`unregister_fd`].
pub fn register_fd(fd: RawFd) -> Result<()> {
    with_current(|r| r.register_fd(fd))?
}

/// Choose what of `fd` (registered with [`register_fd`]) wakes the current reactor: readable,
/// writable, both or neither. A socket whose send buffer filled asks for writable until it
/// drains; one whose peer is not reading its answers stops asking for readable meanwhile.
pub fn fd_interest(fd: RawFd, readable: bool, writable: bool) -> Result<()> {
    with_current(|r| r.fd_interest(fd, readable, writable))?
}

pub fn unregister_fd(fd: RawFd) -> Result<()> {
    with_current(|r| r.unregister_fd(fd))?
}

/// The current reactor's clock (the mock clock in a simulation).
pub fn now() -> Result<Duration> {
    with_current(|r| Duration::from_nanos(r.now_ns()))
}

/// The current reactor's counters.
pub fn stats() -> Result<ReactorStats> {
    with_current(|r| r.stats())
}

#[cfg(test)]
mod tests;
