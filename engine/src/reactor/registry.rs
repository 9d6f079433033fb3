//! The table of every reactor's mailbox, indexed by reactor id: how a message finds its
//! reactor from any thread. Slots are written once (a reactor id is never reused), so lookups
//! are plain atomic loads.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use super::mailbox::{Mailbox, Msg, SendError, SendErrorKind};
use super::{Error, ReactorId, Result};

/// Reactors one engine may create over its life (spawned and bring-your-own together).
pub const MAX_REACTORS: usize = 1024;

pub(crate) struct Registry {
    slots: Box<[OnceLock<Arc<Mailbox>>]>,
    next: AtomicUsize,
    ring_capacity: usize,
}

impl Registry {
    pub(crate) fn new(ring_capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            slots: (0..MAX_REACTORS).map(|_| OnceLock::new()).collect(),
            next: AtomicUsize::new(0),
            ring_capacity,
        })
    }

    /// Make the mailbox of a new reactor and publish it under a fresh id.
    pub(crate) fn add(&self) -> Result<Arc<Mailbox>> {
        let index = self.next.fetch_add(1, Ordering::Relaxed);
        if index >= MAX_REACTORS {
            return Err(Error::TooManyReactors {
                limit: MAX_REACTORS,
            });
        }
        let id = ReactorId(index as u32);
        let mailbox =
            Arc::new(
                Mailbox::new(id, self.ring_capacity).map_err(|source| Error::Sys {
                    op: "eventfd",
                    source,
                })?,
            );
        let _ = self.slots[index].set(Arc::clone(&mailbox));
        Ok(mailbox)
    }

    pub(crate) fn get(&self, id: ReactorId) -> Option<&Arc<Mailbox>> {
        self.slots.get(id.0 as usize)?.get()
    }

    pub(crate) fn send(&self, to: ReactorId, msg: Msg) -> std::result::Result<(), SendError> {
        match self.get(to) {
            Some(mailbox) => mailbox.send(msg),
            None => Err(SendError::new(SendErrorKind::NoSuchReactor, to, msg)),
        }
    }

    /// Ids of the reactors made so far that have not shut down.
    pub(crate) fn live(&self) -> Vec<ReactorId> {
        let made = self.next.load(Ordering::Relaxed).min(MAX_REACTORS);
        (0..made)
            .filter_map(|i| self.slots[i].get())
            .filter(|m| !m.is_closed())
            .map(|m| m.id)
            .collect()
    }
}
