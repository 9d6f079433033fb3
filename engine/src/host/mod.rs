//! The NVMe/TCP host (initiator): how a primary reaches its secondary, how `tandem perf` drives
//! a target, and how tests speak to one.
//!
//! Two halves, split by who runs them:
//! - [`sync`] and [`controller`] are the control path. A [`controller::Controller`] is brought
//!   up on an ordinary thread with blocking sockets (ICReq, Connect, properties, Identify), keeps
//!   its admin queue alive from a thread of its own, and connects I/O queues, each of which it
//!   hands over as a [`controller::IoSocket`].
//! - [`queue`] is the data path: an [`queue::IoQueue`] owns one connected I/O queue on one
//!   reactor, submits commands without blocking and polls their completions. It reconnects
//!   after a dropped connection, with backoff, through the controller.

pub mod controller;
mod error;
pub mod queue;
pub mod sync;

pub use controller::{Controller, HostOpts, IoSocket};
pub use error::HostError;
pub use queue::{HostDone, IoQueue};

#[cfg(test)]
mod tests;
