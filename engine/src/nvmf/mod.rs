//! The NVMe over Fabrics target. So far: the NVMe/TCP transport's PDU codec ([`tcp::pdu`]),
//! which the host side shares. Subsystems, controllers, the TCP connection state machine and
//! discovery follow (issue 5).

pub mod tcp;
