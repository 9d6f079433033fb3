//! NVMe wire structures shared by the target and the host, from the NVMe Base and NVMe over
//! Fabrics specifications: the 64-byte submission queue entry, the 16-byte completion queue
//! entry, status codes, and opcodes. Layout only; no I/O.
//!
//! Every structure is `#[repr(C)]` with its size asserted at compile time, and is read from
//! and written to little-endian bytes explicitly, so decoding bytes from a socket cannot
//! panic or depend on the host's endianness.

pub(crate) mod le;
mod opcode;
mod queue_entry;
mod status;

pub use opcode::{admin, fabrics, io};
pub use queue_entry::{Cqe, Sqe, CQE_LEN, SQE_LEN};
pub use status::{Status, StatusCodeType};
