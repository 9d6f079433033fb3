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

    /// Hand back the callback and buffers (a tap wrapping the request in its own).
    pub(crate) fn into_parts(self) -> (IoCallback, Sgl) {
        (self.cb, self.sgl)
    }

    /// Run the completion callback (the channel does this; backends queue into `Completions`).
    pub(crate) fn finish(self, status: Result<(), IoError>) {
        self.cb.call(IoDone {
            status,
            sgl: self.sgl,
        });
    }
}
