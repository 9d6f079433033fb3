//! One-shot timers of a reactor: a min-heap of deadlines beside a table of live closures, so
//! that a cancel is O(1) and a cancelled entry is skipped when it reaches the top.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

use super::mailbox::Mailbox;
use super::{Error, ReactorId, Result};

/// A timer's closure, stored inline (no allocation for captures that fit), so that a data-path
/// retry timer allocates nothing.
pub(crate) type TimerFn = crate::inline_fn::InlineFnOnce<()>;

#[derive(Default)]
pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<(u64, u64)>>,
    live: HashMap<u64, TimerFn>,
}

impl Timers {
    pub(crate) fn insert(&mut self, id: u64, deadline_ns: u64, f: TimerFn) {
        self.heap.push(Reverse((deadline_ns, id)));
        self.live.insert(id, f);
    }

    pub(crate) fn cancel(&mut self, id: u64) -> Option<TimerFn> {
        self.live.remove(&id)
    }

    /// The earliest deadline of a live timer, dropping cancelled entries from the top.
    pub(crate) fn next_deadline(&mut self) -> Option<u64> {
        while let Some(Reverse((deadline, id))) = self.heap.peek().copied() {
            if self.live.contains_key(&id) {
                return Some(deadline);
            }
            self.heap.pop();
        }
        None
    }

    /// Remove and return one timer due at `now`, earliest first.
    pub(crate) fn pop_due(&mut self, now_ns: u64) -> Option<TimerFn> {
        loop {
            let Reverse((deadline, id)) = *self.heap.peek()?;
            if deadline > now_ns {
                return None;
            }
            self.heap.pop();
            if let Some(f) = self.live.remove(&id) {
                return Some(f);
            }
        }
    }

    pub(crate) fn take_all(&mut self) -> Vec<TimerFn> {
        self.heap.clear();
        self.live.drain().map(|(_, f)| f).collect()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.live.len()
    }
}

/// Names a pending timer; cancels it from any thread.
#[derive(Clone)]
pub struct TimerHandle {
    pub(crate) reactor: ReactorId,
    pub(crate) id: u64,
    pub(crate) mailbox: Arc<Mailbox>,
}

impl std::fmt::Debug for TimerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TimerHandle({}:{})", self.reactor, self.id)
    }
}

impl TimerHandle {
    /// Cancel the timer if it has not fired. On its own reactor it takes effect at once;
    /// from elsewhere it is a message to the owner (so it may lose a race with the deadline).
    pub fn cancel(&self) -> Result<()> {
        let id = self.id;
        let done_here =
            super::with_current(|r| (r.id() == self.reactor).then(|| r.cancel_timer(id)))
                .ok()
                .flatten();
        if done_here.is_some() {
            return Ok(());
        }
        self.mailbox
            .send(super::Msg::new(move || {
                let _ = super::with_current(|r| r.cancel_timer(id));
            }))
            .map_err(Error::from)
    }
}
