//! Block devices: what every layer above (the NVMe-oF target, the store, replication) reads
//! and writes through.
//!
//! **Faces.** Callers use [`Bdev`] (a device's properties and statistics), [`Desc`] (an open
//! handle, read-only or read-write, that hears of hot-removal) and [`Channel`] (the per-reactor
//! I/O path made from a descriptor). Backends implement [`Backend`] and [`BackendChannel`]:
//! `malloc` (RAM), `null` (discards writes, reads zeros), `uring` (a file or block device through
//! io_uring, O_DIRECT), and `error` (wraps another bdev and injects faults).
//!
//! **The contract.** Every submit returns `Result`. On `Ok` the completion callback runs exactly
//! once, later, on the submitting reactor (never inside the submit call); on `Err` it never runs,
//! and the buffers come back in the error. A completion hands the buffers back too ([`IoDone`]).
//!
//! **Data path.** A channel belongs to one reactor (it is not `Send`). Submitting checks the
//! request, stamps it, and hands it to the backend; completions are queued by the backend and
//! delivered by the channel's poller. No lock, no blocking system call (io_uring submits and
//! reaps without blocking), and no allocation: requests move by value, callbacks are stored
//! inline ([`crate::inline_fn`]), queues are preallocated, statistics are per-channel atomics
//! written by their one reactor. The bdev table itself is control-path state (create, delete,
//! open, list), behind a mutex no I/O touches.

// A refused request comes back to its submitter by value, buffers and callback included, so
// that refusing allocates nothing: the large `Err` is the design, not an accident.
#![allow(clippy::result_large_err)]

mod backend;
#[allow(clippy::module_inception)]
mod bdev;
mod channel;
mod desc;
pub mod error;
mod io;
pub mod malloc;
pub mod null;
pub mod nvmf;
mod registry;
mod stats;
pub mod tap;
pub mod uring;

#[cfg(test)]
mod conformance;

use std::fmt;

pub use backend::{Backend, BackendChannel, Completions};
pub use bdev::{format_uuid, parse_uuid, random_uuid, Bdev, BdevInfo};
pub use channel::{Channel, MAX_IN_FLIGHT};
pub use desc::{BdevEvent, Desc, EventCallback};
pub use io::{BdevIo, IoCallback, IoDone};
pub use registry::{delete, get, list, open, register};
pub use stats::IoStat;

use crate::mem::Sgl;

/// The kinds of I/O a bdev may support.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IoType {
    Read,
    Write,
    Flush,
    Unmap,
    WriteZeroes,
}

impl IoType {
    pub const ALL: [IoType; 5] = [
        IoType::Read,
        IoType::Write,
        IoType::Flush,
        IoType::Unmap,
        IoType::WriteZeroes,
    ];

    pub fn name(self) -> &'static str {
        match self {
            IoType::Read => "read",
            IoType::Write => "write",
            IoType::Flush => "flush",
            IoType::Unmap => "unmap",
            IoType::WriteZeroes => "write_zeroes",
        }
    }

    /// Whether this I/O moves data through buffers.
    pub fn has_data(self) -> bool {
        matches!(self, IoType::Read | IoType::Write)
    }

    pub(crate) fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for IoType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a request was refused at submit time (the completion will not run).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error(
        "blocks [{offset_blocks}, +{num_blocks}) run past the end of a {capacity}-block device"
    )]
    OutOfRange {
        offset_blocks: u64,
        num_blocks: u64,
        capacity: u64,
    },
    #[error("an I/O of zero blocks")]
    ZeroLength,
    #[error("the buffers hold {have} bytes; the I/O moves {need}")]
    BufferSize { need: u64, have: u64 },
    #[error("buffer segment at {addr:#x}, {len} bytes, is not aligned to {align} bytes")]
    Misaligned {
        addr: usize,
        len: usize,
        align: usize,
    },
    #[error("{io_type} is not supported by {bdev}")]
    Unsupported { bdev: String, io_type: IoType },
    #[error("the descriptor of {bdev} is closed")]
    DescClosed { bdev: String },
    #[error("{bdev} was opened read-only")]
    ReadOnly { bdev: String },
    #[error("{bdev} has been removed")]
    Removed { bdev: String },
    #[error("{bdev}: {depth} I/Os already in flight on this channel; retry after a completion")]
    QueueFull { bdev: String, depth: usize },
    #[error("not running on a reactor")]
    NotOnReactor,
    #[error("no bdev named {0:?}")]
    NotFound(String),
    #[error("a bdev named {0:?} already exists")]
    Exists(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{bdev} is claimed by {by}")]
    Claimed { bdev: String, by: String },
    #[error("{path}: the file system refuses O_DIRECT (tmpfs does, for one); put the file on a disk-backed file system")]
    DirectIoRefused { path: String },
    #[error("{op}: {errno}")]
    Os { op: String, errno: Errno },
}

/// An errno value with its name for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", std::io::Error::from_raw_os_error(self.0))
    }
}

impl Error {
    pub(crate) fn os(op: impl Into<String>, e: &std::io::Error) -> Self {
        Error::Os {
            op: op.into(),
            errno: Errno(e.raw_os_error().unwrap_or(libc::EIO)),
        }
    }

    /// The negative errno a C caller sees for this error.
    pub fn errno(&self) -> i32 {
        -match self {
            Error::OutOfRange { .. } => libc::ERANGE,
            Error::ZeroLength | Error::BufferSize { .. } | Error::Misaligned { .. } => libc::EINVAL,
            Error::InvalidArgument(_) => libc::EINVAL,
            Error::Unsupported { .. } => libc::ENOTSUP,
            Error::DescClosed { .. } => libc::EBADF,
            Error::ReadOnly { .. } => libc::EPERM,
            Error::Removed { .. } | Error::NotFound(_) => libc::ENODEV,
            Error::QueueFull { .. } => libc::EAGAIN,
            Error::NotOnReactor => libc::EPERM,
            Error::Exists(_) => libc::EEXIST,
            Error::Claimed { .. } => libc::EBUSY,
            Error::DirectIoRefused { .. } => libc::EINVAL,
            Error::Os { errno, .. } => errno.0,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// A refused submit: the error and the buffers the request carried.
pub type SubmitError = (Error, Sgl);

/// Why an accepted I/O failed (delivered in [`IoDone`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IoError {
    #[error("the device failed the I/O: {0}")]
    Device(Errno),
    #[error("failed by fault injection")]
    Injected,
    #[error("the write was torn: only its first {written_blocks} blocks reached the device")]
    Torn { written_blocks: u64 },
    #[error("aborted")]
    Aborted,
}

impl IoError {
    /// The negative errno a C caller sees.
    pub fn errno(&self) -> i32 {
        -match self {
            IoError::Device(e) => e.0,
            IoError::Injected | IoError::Torn { .. } => libc::EIO,
            IoError::Aborted => libc::ECANCELED,
        }
    }
}
