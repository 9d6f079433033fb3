//! Descriptors: an open handle on a bdev, read-only or read-write, through which channels are
//! made and by which the opener hears that the bdev is going away.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::bdev::BdevInner;
use super::channel::Channel;
use super::{Bdev, Error, Result};
use crate::reactor::{self, Messenger, ReactorId};

/// Events a descriptor hears about its bdev.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BdevEvent {
    /// The bdev was deleted: I/O in flight completes; new I/O fails with `Removed`. Close the
    /// descriptor once done.
    Remove,
}

/// Called with each event: on the reactor that opened the descriptor when it was opened on one
/// (by a message), otherwise on the thread that deleted the bdev.
pub type EventCallback = Arc<dyn Fn(BdevEvent) + Send + Sync>;

pub(crate) struct DescInner {
    pub(crate) bdev: Arc<BdevInner>,
    pub(crate) write: bool,
    pub(crate) closed: AtomicBool,
    event_cb: Option<EventCallback>,
    home: Option<(ReactorId, Messenger)>,
}

impl DescInner {
    pub(crate) fn notify(&self, event: BdevEvent) {
        let Some(cb) = self.event_cb.clone() else {
            return;
        };
        let Some((reactor, messenger)) = &self.home else {
            cb(event);
            return;
        };
        let mut msg = crate::reactor::Msg::new(move || cb(event));
        // A full ring is retried for a while; a stopped (or still full) reactor means the event
        // is delivered here instead: late or elsewhere, but never lost.
        for _ in 0..10_000 {
            match messenger.send_msg(*reactor, msg) {
                Ok(()) => return,
                Err(e) if e.kind == crate::reactor::SendErrorKind::Full => {
                    msg = e.into_msg();
                    std::thread::yield_now();
                }
                Err(e) => {
                    msg = e.into_msg();
                    break;
                }
            }
        }
        tracing::warn!(
            reactor = reactor.0,
            "bdev event delivered on the deleting thread: its reactor cannot take it"
        );
        msg.run_here();
    }
}

/// An open bdev. `Send` and `Sync`: it may be opened on one thread and used on any reactor to
/// make that reactor's channel.
pub struct Desc(pub(crate) Arc<DescInner>);

impl Desc {
    pub(crate) fn open(bdev: &Bdev, write: bool, event_cb: Option<EventCallback>) -> Result<Desc> {
        if bdev.is_removed() {
            return Err(Error::Removed {
                bdev: bdev.name().to_owned(),
            });
        }
        let home = reactor::current().zip(reactor::messenger().ok());
        let inner = Arc::new(DescInner {
            bdev: Arc::clone(&bdev.0),
            write,
            closed: AtomicBool::new(false),
            event_cb,
            home,
        });
        bdev.0.add_desc(&inner);
        Ok(Desc(inner))
    }

    pub fn bdev(&self) -> Bdev {
        Bdev(Arc::clone(&self.0.bdev))
    }

    pub fn is_writable(&self) -> bool {
        self.0.write
    }

    /// This reactor's I/O channel for the bdev: made on first use on the reactor, shared by
    /// every descriptor's channel there, released when the reactor's last user drops it.
    pub fn channel(&self) -> Result<Channel> {
        Channel::get(&self.0)
    }

    /// Close: channels made from this descriptor fail new I/O with `DescClosed`; I/O in
    /// flight still completes. Also done on drop.
    pub fn close(self) {}
}

impl Drop for Desc {
    fn drop(&mut self) {
        self.0.closed.store(true, Ordering::Release);
    }
}
