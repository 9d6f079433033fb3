//! Write taps: a module that sees every change to a bdev before its backend does, on the
//! reactor that submitted it. Replication's splitter is one: it sends each write to the primary
//! (this bdev's backend) and to the secondary, and completes the caller's request when both are
//! done.
//!
//! A tap is set on a [`Bdev`](super::Bdev) on the control path and bumps the bdev's tap epoch.
//! Each channel keeps the tap channel it made and the epoch it made it at; the data path reads
//! the epoch (one atomic load) and takes the control-path lock only when it changed, so in steady
//! state a tapped write takes no lock and allocates nothing here.
//!
//! Taken by the tap: writes, write-zeroes, unmaps and flushes. Reads never are.

use std::rc::Rc;

use super::channel::ChannelShared;
use super::{BdevIo, Error, IoError, IoType};

/// A module that takes a bdev's changes. Shared by every reactor.
pub trait WriteTap: Send + Sync + 'static {
    /// This reactor's side of the tap. Called on the reactor, once per channel and tap.
    fn open_channel(&self) -> Result<Rc<dyn TapChannel>, Error>;
}

/// A tap's per-reactor path.
pub trait TapChannel {
    /// Take `io`: issue it to the device through `primary` (at most once) and make sure its
    /// callback runs exactly once. Refusing hands it back, as a backend does.
    fn submit(&self, primary: &Primary, io: BdevIo) -> Result<(), (Error, BdevIo)>;
}

/// Whether the tap sees this kind of I/O.
pub(crate) fn taps(io_type: IoType) -> bool {
    !matches!(io_type, IoType::Read)
}

/// The tapped bdev's own path on this reactor: what a tap issues the primary's side through.
#[derive(Clone)]
pub struct Primary(pub(crate) Rc<ChannelShared>);

impl Primary {
    /// Issue `io` to the bdev's backend, past the tap.
    pub fn submit(&self, io: BdevIo) -> Result<(), (Error, BdevIo)> {
        super::channel::submit_to_backend(&self.0, io)
    }

    /// Complete `io` without issuing it (a tap refusing a write by policy): its callback runs
    /// from the channel's poller, like any completion.
    pub fn complete(&self, io: BdevIo, status: Result<(), IoError>) {
        self.0.complete_untouched(io, status);
    }

    /// A tap holds a request back for a while: the channel counts it in flight, so that it
    /// stays alive to issue it later.
    pub fn park(&self) {
        self.0.hold_one(true);
    }

    /// The held request goes on (issued or completed right after this).
    pub fn unpark(&self) {
        self.0.hold_one(false);
    }

    pub fn block_size(&self) -> u32 {
        self.0.block_size()
    }
}
