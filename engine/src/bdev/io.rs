//! One block I/O request as it travels from a channel to a backend and back.

use super::{IoError, IoType};
use crate::inline_fn::InlineFnOnce;
use crate::mem::Sgl;

/// What a completion receives: the outcome and the buffers the request carried.
pub struct IoDone {
    pub status: Result<(), IoError>,
    pub sgl: Sgl,
}

impl IoDone {
    pub fn is_ok(&self) -> bool {
        self.status.is_ok()
    }
}

/// A completion callback, stored inline: captures of up to
/// [`crate::inline_fn::INLINE_BYTES`] bytes cost no allocation.
pub type IoCallback = InlineFnOnce<IoDone>;

/// A request. The backend owns it from submit to completion.
pub struct BdevIo {
    pub io_type: IoType,
    pub offset_blocks: u64,
    pub num_blocks: u64,
    /// Data buffers: `num_blocks × block_size` bytes for reads and writes; empty otherwise.
    pub sgl: Sgl,
    pub(crate) cb: IoCallback,
    pub(crate) submitted_ns: u64,
}

impl BdevIo {
    /// A request, stamped now (a channel's, or a write tap's own).
    pub(crate) fn new(
        io_type: IoType,
        offset_blocks: u64,
        num_blocks: u64,
        sgl: Sgl,
        cb: IoCallback,
    ) -> BdevIo {
        BdevIo {
            io_type,
            offset_blocks,
            num_blocks,
            sgl,
            cb,
            submitted_ns: crate::sys::monotonic_ns(),
        }
    }

    /// The same request with callback `cb`, and the callback it had: a tap that waits for more
    /// than the device before completing the caller. The request keeps its stamp (no second
    /// clock read per I/O).
    pub(crate) fn with_callback(mut self, cb: IoCallback) -> (BdevIo, IoCallback) {
        let had = std::mem::replace(&mut self.cb, cb);
        (self, had)
    }

    /// Stamp the request now: a tap that held it back issues it, and the device's latency
    /// counts from here, not from the wait.
    pub(crate) fn restamp(&mut self) {
        self.submitted_ns = crate::sys::monotonic_ns();
    }

    /// Run the completion callback (the channel does this; backends queue into `Completions`).
    pub(crate) fn finish(self, status: Result<(), IoError>) {
        self.cb.call(IoDone {
            status,
            sgl: self.sgl,
        });
    }
}
