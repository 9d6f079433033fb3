//! The NVMe/TCP transport (NVMe/TCP Transport Specification 1.0).

pub(crate) mod conn;
pub mod harness;
pub(crate) mod listener;
pub mod pdu;
