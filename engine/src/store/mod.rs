//! The copy-on-write store: volumes, snapshots, clones and small metadata objects on one bdev,
//! with transactions that commit in groups and survive a power cut at any write.
//!
//! | module | owns |
//! | --- | --- |
//! | [`format`] | the on-disk format, byte by byte, and what it assumes of the media |
//! | [`tree`] | the copy-on-write B+tree in memory: shared nodes, generations, space accounting |
//! | [`alloc`] | the reference-count table (the free-space map) and metadata node slots |
//! | [`core`] | every change, without I/O: volumes, snapshots, clones, diffs, objects, commit freeze, load |
//! | [`namespace`] | directories, files, symlinks, hard links, attributes, file data and clones |
//! | [`ns_owner`] | the namespace of a loaded store, on its owner reactor (RPC, C ABI) |
//! | [`subtree_diff`] | what changed below a directory between two images, and applying it |
//! | [`check`] | the full consistency check |
//! | [`owner`] | a store at run time: the owner reactor, group commit, first-write preparation |
//! | [`volume`] | a volume as a bdev: the lock-free data path |
//! | [`map`] | a volume's flat cluster map |
//! | [`io`] | batches of the store's own I/O on its base bdev |
//! | [`file`] | the store on a plain file, for the offline CLI |
//! | [`hostfs`] | copying host directory trees in and out of the namespace |
//!
//! **Metadata is resident.** Loading reads every reachable node once and keeps the trees in
//! memory, shared as they are on disk; a change copies the path it touches, a commit writes the
//! copies. This keeps every metadata operation free of I/O waits at the cost of memory: about
//! 70 bytes per mapped cluster (a fully written 1 TiB volume of 64 KiB clusters holds 1.1 GiB).
//! Paging nodes in and out is the way to larger stores; the format does not change for it.

pub mod alloc;
pub mod check;
pub mod core;
pub mod file;
pub mod format;
pub mod hostfs;
pub mod io;
pub mod map;
pub mod namespace;
pub mod ns_owner;
pub mod owner;
pub mod subtree_diff;
pub mod tree;
mod volume;

pub use self::core::{Core, Diff, Prep, SnapInfo, VolumeInfo};
pub use check::Problem;
pub use owner::{CreateOpts, Store};

/// What a store operation can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("block {block}: {what}")]
    Corrupt { block: u64, what: String },
    #[error("no free space in the store")]
    NoSpace,
    #[error("{0}")]
    Invalid(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0:?} already exists")]
    Exists(String),
    #[error("I/O error: {0}")]
    Io(String),
    #[error("the store takes no more changes until it is loaded again: {0}")]
    Failed(String),
    /// A namespace operation refused as POSIX would refuse it (ENOTDIR, EISDIR, ENOTEMPTY,
    /// EBUSY, ENAMETOOLONG, E2BIG, EMLINK, ENODATA), with the errno a caller sees.
    #[error("{what}")]
    Posix { errno: i32, what: String },
    #[error(transparent)]
    Bdev(#[from] crate::bdev::Error),
}

impl Error {
    /// The negative errno a C caller or an RPC client sees.
    pub fn errno(&self) -> i32 {
        -match self {
            Error::Corrupt { .. } => libc::EUCLEAN,
            Error::NoSpace => libc::ENOSPC,
            Error::Invalid(_) => libc::EINVAL,
            Error::NotFound(_) => libc::ENOENT,
            Error::Exists(_) => libc::EEXIST,
            Error::Io(_) | Error::Failed(_) => libc::EIO,
            Error::Posix { errno, .. } => *errno,
            Error::Bdev(e) => -e.errno(),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// A [`Error::Posix`] refusal.
pub(crate) fn posix<T>(errno: i32, what: impl Into<String>) -> Result<T> {
    Err(Error::Posix {
        errno,
        what: what.into(),
    })
}

/// Reads metadata blocks by address, several at a time, in the order asked.
pub type ReadBlocks<'a> = dyn FnMut(&[u64]) -> Result<Vec<Vec<u8>>> + 'a;

#[cfg(test)]
mod crash_tests;
#[cfg(test)]
mod namespace_tests;
#[cfg(test)]
pub(crate) mod runtime_tests;
#[cfg(test)]
mod tests;
