//! The NVMe/TCP transport (NVMe/TCP Transport Specification 1.0).

mod command;
pub(crate) mod conn;
pub(crate) mod group;
pub mod harness;
mod io_cmd;
pub(crate) mod listener;
pub mod pdu;
mod send;
pub(crate) mod txq;
