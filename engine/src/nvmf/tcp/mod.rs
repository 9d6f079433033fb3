//! The NVMe/TCP transport (NVMe/TCP Transport Specification 1.0).

pub mod pdu;
