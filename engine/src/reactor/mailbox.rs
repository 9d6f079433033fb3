//! The message ring of one reactor and the doorbell that wakes it when parked.
//!
//! Senders on any thread push a message onto a bounded lock-free ring with one receiver
//! ([`Ring`]): messages run in the order they were queued, across senders too. The ring never
//! blocks: a full ring hands the message back to the sender. A parked reactor sets `sleeping`;
//! a sender that sees it rings the eventfd doorbell. The two sides publish with sequentially
//! consistent fences, so either the reactor sees the message before parking or the sender
//! sees `sleeping` and rings: no lost wake-up.
//!
//! Closing: the owner closes the ring (no message is taken after that) and waits for the
//! senders that got in before to finish their push, then drains. A message is therefore
//! either run or returned to its sender as `Closed`; never silently dropped.

use std::fmt;
use std::sync::atomic::{fence, AtomicBool, Ordering};

use crossbeam_utils::CachePadded;

use super::ring::{Refused, Ring};
use super::ReactorId;
use crate::inline_fn::SendFnOnce;
use crate::sys::EventFd;

/// A message: a closure run once on the receiving reactor, stored inline in its ring slot
/// (no allocation) when its captures fit [`crate::inline_fn::INLINE_BYTES`].
pub struct Msg(SendFnOnce<()>);

impl Msg {
    pub fn new(f: impl FnOnce() + Send + 'static) -> Self {
        Msg(SendFnOnce::new(move |()| f()))
    }

    /// Whether the closure was stored without an allocation.
    pub fn is_inline(&self) -> bool {
        self.0.is_inline()
    }

    pub(crate) fn run(self) {
        self.0.call(())
    }

    /// Run the message on the calling thread, for a sender whose message cannot be delivered
    /// and must not be lost.
    pub fn run_here(self) {
        self.run()
    }
}

/// Why a message was not accepted. The message comes back, so the sender can retry it later
/// or run it elsewhere.
pub struct SendError {
    pub kind: SendErrorKind,
    pub reactor: ReactorId,
    msg: Msg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendErrorKind {
    /// The ring is full; the reactor is alive but behind. Retry later.
    Full,
    /// The reactor has stopped (or is stopping and has drained its ring).
    Closed,
    /// No reactor has this id.
    NoSuchReactor,
}

impl SendError {
    pub(crate) fn new(kind: SendErrorKind, reactor: ReactorId, msg: Msg) -> Self {
        Self { kind, reactor, msg }
    }

    /// Take the message back.
    pub fn into_msg(self) -> Msg {
        self.msg
    }
}

impl fmt::Debug for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendError")
            .field("kind", &self.kind)
            .field("reactor", &self.reactor)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            SendErrorKind::Full => write!(f, "reactor {}'s message ring is full", self.reactor),
            SendErrorKind::Closed => write!(f, "reactor {} has stopped", self.reactor),
            SendErrorKind::NoSuchReactor => write!(f, "no reactor has id {}", self.reactor),
        }
    }
}

impl std::error::Error for SendError {}

pub(crate) struct Mailbox {
    pub(crate) id: ReactorId,
    ring: Ring<Msg>,
    doorbell: EventFd,
    sleeping: AtomicBool,
    /// Read by the owner every loop: on a line of its own so that senders do not bounce it.
    stop: CachePadded<AtomicBool>,
}

impl Mailbox {
    pub(crate) fn new(id: ReactorId, capacity: usize) -> std::io::Result<Self> {
        Ok(Self {
            id,
            ring: Ring::new(capacity),
            doorbell: EventFd::new()?,
            sleeping: AtomicBool::new(false),
            stop: CachePadded::new(AtomicBool::new(false)),
        })
    }

    pub(crate) fn send(&self, msg: Msg) -> Result<(), SendError> {
        match self.ring.push(msg) {
            Ok(()) => {
                self.wake_if_sleeping();
                Ok(())
            }
            Err((Refused::Full, msg)) => Err(SendError::new(SendErrorKind::Full, self.id, msg)),
            Err((Refused::Closed, msg)) => Err(SendError::new(SendErrorKind::Closed, self.id, msg)),
        }
    }

    fn wake_if_sleeping(&self) {
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::SeqCst) {
            self.doorbell.notify();
        }
    }

    /// Take the next message, if any. Owner only.
    ///
    /// # Safety
    /// Only the owning reactor's thread calls `pop`, `prepare_to_sleep` and `close`: the ring
    /// has one receiver.
    pub(crate) unsafe fn pop(&self) -> Option<Msg> {
        // SAFETY: this function's own contract.
        unsafe { self.ring.pop() }
    }

    /// Announce that the owner is about to park; returns false (and stays awake) when a message
    /// or a stop request is already waiting.
    ///
    /// # Safety
    /// As for [`Mailbox::pop`].
    pub(crate) unsafe fn prepare_to_sleep(&self) -> bool {
        self.sleeping.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        // SAFETY: this function's own contract.
        if !unsafe { self.ring.is_empty() } || self.stop.load(Ordering::SeqCst) {
            self.sleeping.store(false, Ordering::SeqCst);
            return false;
        }
        true
    }

    pub(crate) fn woke(&self) {
        self.sleeping.store(false, Ordering::SeqCst);
    }

    pub(crate) fn doorbell(&self) -> &EventFd {
        &self.doorbell
    }

    pub(crate) fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.doorbell.notify();
    }

    pub(crate) fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Refuse new messages and wait until every sender that got in before has finished its
    /// push. After this, the ring only shrinks.
    ///
    /// # Safety
    /// As for [`Mailbox::pop`].
    pub(crate) unsafe fn close(&self) {
        // SAFETY: this function's own contract.
        unsafe { self.ring.close() }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.ring.is_closed()
    }
}
