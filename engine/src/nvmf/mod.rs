//! The NVMe over Fabrics target: subsystems with their namespaces and allowed hosts
//! ([`subsystem`]), controllers ([`controller`], with the admin commands in [`admin`]), the
//! discovery service ([`discovery`]), and the TCP transport ([`tcp`]).
//!
//! The target's configuration ([`target`]) is shared and changed by the control path (RPCs);
//! each connection belongs to one reactor, which runs every stage of its commands.

pub mod admin;
pub mod controller;
pub mod discovery;
pub mod io;
pub mod subsystem;
pub mod target;
pub mod tcp;
/// For tests, here and in the workspace's other crates (feature `test-support`).
#[cfg(any(test, feature = "test-support"))]
#[doc(hidden)]
pub mod test_target;

use std::fmt;

pub use subsystem::{Namespace, Subsystem, SubsystemOpts};
pub use target::{TransportOpts, DEFAULT_SUBNQN};

/// The well-known NQN of the discovery subsystem.
pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";

/// A transport address a subsystem listens on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ListenAddr {
    /// "TCP" (the only transport so far).
    pub trtype: String,
    /// "IPv4" or "IPv6".
    pub adrfam: String,
    pub traddr: String,
    pub trsvcid: String,
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.trtype, self.traddr, self.trsvcid)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no bdev named {0:?}")]
    NoSuchBdev(String),
    #[error("bdev {0:?} is already a namespace of this subsystem")]
    BdevInUse(String),
    #[error("the subsystem holds its maximum of {0} namespaces")]
    TooManyNamespaces(u32),
    #[error("NSID {0} is out of range (1 to {1})")]
    BadNsid(u32, u32),
    #[error("NSID {0} is already in use")]
    NsidInUse(u32),
    #[error("no namespace with NSID {0}")]
    NoSuchNamespace(u32),
    #[error("no subsystem with NQN {0:?}")]
    NoSuchSubsystem(String),
    #[error("a subsystem with NQN {0:?} already exists")]
    SubsystemExists(String),
    #[error("{0:?} is not a valid NQN: {1}")]
    BadNqn(String, &'static str),
    #[error("no {0} transport: create it with nvmf_create_transport first")]
    NoTransport(String),
    #[error("a {0} transport already exists")]
    TransportExists(String),
    #[error("transport type {0:?} is not supported (TCP is)")]
    UnsupportedTransport(String),
    #[error("{0}")]
    InvalidOption(String),
    #[error("the subsystem already listens on {0}")]
    ListenerExists(ListenAddr),
    #[error("the subsystem does not listen on {0}")]
    NoSuchListener(ListenAddr),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: ListenAddr,
        source: std::io::Error,
    },
    #[error("host {0:?} is already allowed")]
    HostExists(String),
    #[error("host {0:?} is not in the allowed list")]
    NoSuchHost(String),
    #[error("the target is not running on an engine")]
    NoEngine,
    #[error(transparent)]
    Bdev(crate::bdev::Error),
}

impl Error {
    /// The negative errno an RPC answers with.
    pub fn errno(&self) -> i32 {
        -match self {
            Error::NoSuchBdev(_)
            | Error::NoSuchNamespace(_)
            | Error::NoSuchSubsystem(_)
            | Error::NoSuchListener(_)
            | Error::NoSuchHost(_) => libc::ENODEV,
            Error::BdevInUse(_)
            | Error::NsidInUse(_)
            | Error::SubsystemExists(_)
            | Error::TransportExists(_)
            | Error::ListenerExists(_)
            | Error::HostExists(_) => libc::EEXIST,
            Error::TooManyNamespaces(_) => libc::ENOSPC,
            Error::BadNsid(..)
            | Error::BadNqn(..)
            | Error::InvalidOption(_)
            | Error::NoTransport(_)
            | Error::UnsupportedTransport(_) => libc::EINVAL,
            Error::Listen { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            Error::NoEngine => libc::ENODEV,
            Error::Bdev(e) => -e.errno(),
        }
    }
}
