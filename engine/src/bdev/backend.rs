//! What a backend implements. A [`Backend`] is the device, shared by every reactor; a
//! [`BackendChannel`] is its per-reactor I/O path, made on the reactor that uses it.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use super::{BdevIo, IoError, IoType, Result};
use crate::reactor::PollStatus;

pub trait Backend: Send + Sync + 'static {
    /// The driver's name, as `bdev_get_bdevs` reports `product_name`.
    fn product_name(&self) -> &'static str;

    fn supports(&self, io_type: IoType) -> bool;

    /// Alignment every buffer segment's address and length must have (1: any).
    fn buf_align(&self) -> usize {
        1
    }

    /// Make this reactor's I/O path. Called on the reactor, once per (bdev, reactor).
    fn open_channel(&self) -> Result<Box<dyn BackendChannel>>;

    /// The bdev was deleted: no new channel will be opened; the existing ones drain.
    fn on_remove(&self) {}

    /// `driver_specific` details for `bdev_get_bdevs`.
    fn driver_specific(&self) -> serde_json::Value {
        serde_json::Value::Null
    }

    /// The `save_config` entry that recreates this bdev (`{"method": ..., "params": ...}`), or
    /// `None` for bdevs made by other modules.
    fn save_config(&self, bdev: &super::Bdev) -> Option<serde_json::Value>;

    /// For modules that reach their own backend through a registered bdev (the error bdev's
    /// fault settings).
    fn as_any(&self) -> &dyn std::any::Any;
}

pub trait BackendChannel {
    /// Start `io` (already checked: in range, aligned, supported). Push it to `done` when it
    /// completes, now or from a later `poll`. Refusing hands it back.
    fn submit(
        &mut self,
        io: BdevIo,
        done: &Completions,
    ) -> std::result::Result<(), (super::Error, BdevIo)>;

    /// Make progress: reap device completions into `done`. Busy if anything happened.
    fn poll(&mut self, _done: &Completions) -> PollStatus {
        PollStatus::Idle
    }
}

/// A completed request and its outcome.
pub type Completed = (BdevIo, std::result::Result<(), IoError>);

/// Completed requests waiting for the channel's poller to run their callbacks. Queueing first,
/// calling later, keeps callbacks out of the submit call and out of any backend borrow.
#[derive(Clone)]
pub struct Completions(Rc<RefCell<VecDeque<Completed>>>);

impl Completions {
    pub(crate) fn with_capacity(n: usize) -> Self {
        Self(Rc::new(RefCell::new(VecDeque::with_capacity(n))))
    }

    pub fn complete(&self, io: BdevIo, status: std::result::Result<(), IoError>) {
        self.0.borrow_mut().push_back((io, status));
    }

    pub(crate) fn pop(&self) -> Option<Completed> {
        self.0.borrow_mut().pop_front()
    }

    pub fn is_empty(&self) -> bool {
        self.0.borrow().is_empty()
    }
}
