//! NVMe wire structures shared by the target and the host, from the NVMe Base and NVMe over
//! Fabrics specifications: the 64-byte submission queue entry, the 16-byte completion queue
//! entry, status codes, and opcodes. Layout only; no I/O.
//!
//! Every structure is `#[repr(C)]` with its size asserted at compile time, and is read from
//! and written to little-endian bytes explicitly, so decoding bytes from a socket cannot
//! panic or depend on the host's endianness.

pub mod fabrics;
pub mod features;
pub mod identify;
pub(crate) mod le;
pub mod log_page;
mod opcode;
mod queue_entry;
pub mod registers;
pub mod sgl;
mod status;

pub use opcode::{admin, io};
pub use queue_entry::{Cqe, Sqe, CQE_LEN, SQE_LEN};
pub use status::{Status, StatusCodeType};
