//! A relationship's configuration (what `repl_create` takes) and the errors its operations
//! answer with.

use std::path::PathBuf;

use super::copier::CopyOpts;
use super::drl::DEFAULT_REGION;

/// What happens to client writes while the secondary cannot take them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Writes succeed on the primary and are logged; the pair resyncs when the secondary is
    /// back.
    Sync,
    /// Writes fail while the pair is out of sync.
    StrictSync,
}

impl Policy {
    pub fn name(self) -> &'static str {
        match self {
            Policy::Sync => "sync",
            Policy::StrictSync => "strict_sync",
        }
    }

    pub fn parse(s: &str) -> Option<Policy> {
        match s {
            "sync" => Some(Policy::Sync),
            "strict_sync" | "strictsync" => Some(Policy::StrictSync),
            _ => None,
        }
    }
}

/// How the primary drives the secondary's store.
#[derive(Clone)]
pub enum SecondaryControl {
    /// Another tandemd: its RPC socket.
    Remote { socket: PathBuf },
    /// A store in this process.
    Local,
}

#[derive(Clone)]
pub struct Config {
    pub name: String,
    /// The primary volume's bdev, `<store>/<volume>`.
    pub primary: String,
    /// The bdev here that reaches the secondary volume.
    pub secondary_bdev: String,
    /// The secondary volume as its own engine names it, `<store>/<volume>`.
    pub secondary_volume: String,
    pub control: SecondaryControl,
    pub policy: Policy,
    pub region_size: u64,
    pub copy: CopyOpts,
    /// Incremental transfers at most before establishing, however the diffs go.
    pub max_incrementals: u32,
    /// A snapshot both volumes hold (left by an earlier relationship, either way): starting
    /// sends only what changed since, on either side, instead of a baseline.
    pub common_snapshot: Option<String>,
}

impl Config {
    pub fn new(name: &str, primary: &str, secondary_bdev: &str, secondary_volume: &str) -> Config {
        Config {
            name: name.to_owned(),
            primary: primary.to_owned(),
            secondary_bdev: secondary_bdev.to_owned(),
            secondary_volume: secondary_volume.to_owned(),
            control: SecondaryControl::Local,
            policy: Policy::Sync,
            region_size: DEFAULT_REGION,
            copy: CopyOpts::default(),
            max_incrementals: 8,
            common_snapshot: None,
        }
    }
}

/// Why a relationship operation was refused or failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Exists(String),
    /// A parameter or the configuration is wrong.
    #[error("{0}")]
    Invalid(String),
    /// The operation does not apply in the relationship's state.
    #[error("{0}")]
    Refused(String),
    /// Something else holds what it needs (the volume, or writes that would not drain).
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    Failed(String),
}

impl Error {
    /// The negative errno a C caller (and a JSON-RPC error code) carries.
    pub fn errno(&self) -> i32 {
        -match self {
            Error::NotFound(_) => libc::ENOENT,
            Error::Exists(_) => libc::EEXIST,
            Error::Invalid(_) => libc::EINVAL,
            Error::Refused(_) => libc::EPERM,
            Error::Busy(_) => libc::EBUSY,
            Error::Failed(_) => libc::EIO,
        }
    }
}

impl From<String> for Error {
    fn from(s: String) -> Error {
        Error::Failed(s)
    }
}
