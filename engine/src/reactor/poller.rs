//! Pollers: functions a reactor calls every loop (or every period) that report whether they
//! found work. They are the reactor's only way to notice outside events besides messages.

use std::sync::Arc;

use super::mailbox::Mailbox;
use super::{Error, ReactorId, Result};

/// What a poller or a loop found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollStatus {
    /// Did work; the reactor should keep spinning.
    Busy,
    /// Found nothing; an adaptive reactor may park.
    Idle,
}

impl PollStatus {
    pub fn or(self, other: PollStatus) -> PollStatus {
        if self == PollStatus::Busy || other == PollStatus::Busy {
            PollStatus::Busy
        } else {
            PollStatus::Idle
        }
    }
}

pub(crate) type PollFn = Box<dyn FnMut() -> PollStatus + 'static>;

pub(crate) struct PollerSlot {
    pub(crate) id: u64,
    pub(crate) name: &'static str,
    /// `None` while the poller runs (taken out so that it may touch the poller table).
    pub(crate) f: Option<PollFn>,
    /// 0: every loop.
    pub(crate) period_ns: u64,
    pub(crate) next_due_ns: u64,
    pub(crate) removed: bool,
}

/// Names a registered poller; unregisters it from any thread. Cheap to clone.
#[derive(Clone)]
pub struct PollerHandle {
    pub(crate) reactor: ReactorId,
    pub(crate) id: u64,
    pub(crate) mailbox: Arc<Mailbox>,
}

impl std::fmt::Debug for PollerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PollerHandle({}:{})", self.reactor, self.id)
    }
}

impl PollerHandle {
    pub fn reactor(&self) -> ReactorId {
        self.reactor
    }

    /// Stop the poller. On its own reactor (including from inside the poller) it takes effect
    /// at once: the poller is not called again. From elsewhere it is a message to the owner.
    pub fn unregister(&self) -> Result<()> {
        let id = self.id;
        let done_here =
            super::with_current(|r| (r.id() == self.reactor).then(|| r.unregister_poller(id)))
                .ok()
                .flatten();
        if done_here.is_some() {
            return Ok(());
        }
        self.mailbox
            .send(super::Msg::new(move || {
                let _ = super::with_current(|r| r.unregister_poller(id));
            }))
            .map_err(Error::from)
    }
}
