//! What can go wrong on the host side, step by step, each saying which step and why.

use crate::nvme::Status;

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("the target closed the connection")]
    Closed,
    #[error("ICResp rejected: {0}")]
    IcResp(String),
    #[error("protocol error from the target: {0}")]
    Protocol(String),
    #[error("the target ended the connection: C2HTermReq FES {fes:#x} at byte {fei}")]
    TermReq { fes: u16, fei: u32 },
    #[error("{what} failed: status SCT {sct:#x} SC {sc:#x}", sct = .status.sct, sc = .status.sc)]
    Status { what: &'static str, status: Status },
    #[error("{0} timed out")]
    Timeout(&'static str),
    #[error("{0}")]
    Unsupported(String),
    #[error("no namespace {0} on the controller")]
    NoNamespace(u32),
}

impl HostError {
    /// The target could not be reached: no connection, or one that closed or went silent
    /// before it answered. (A target that answers and refuses is not this.)
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            HostError::Connect { .. }
                | HostError::Io(_)
                | HostError::Closed
                | HostError::Timeout(_)
        )
    }

    /// The negative errno a caller of the bdev or the C ABI sees.
    pub fn errno(&self) -> i32 {
        -match self {
            HostError::Connect { source, .. } | HostError::Io(source) => {
                source.raw_os_error().unwrap_or(libc::EIO)
            }
            HostError::Closed | HostError::TermReq { .. } => libc::ECONNRESET,
            HostError::IcResp(_) | HostError::Protocol(_) => libc::EPROTO,
            HostError::Status { .. } => libc::EIO,
            HostError::Timeout(_) => libc::ETIMEDOUT,
            HostError::Unsupported(_) => libc::ENOTSUP,
            HostError::NoNamespace(_) => libc::ENODEV,
        }
    }
}
