//! Feature identifiers for Get Features and Set Features (NVMe Base 2.0, "Feature
//! Identifiers"): FID in bits 7:0 of cdw10; Set Features' SV bit 31.

pub const ARBITRATION: u8 = 0x01;
pub const POWER_MANAGEMENT: u8 = 0x02;
pub const TEMPERATURE_THRESHOLD: u8 = 0x04;
pub const ERROR_RECOVERY: u8 = 0x05;
pub const VOLATILE_WRITE_CACHE: u8 = 0x06;
pub const NUMBER_OF_QUEUES: u8 = 0x07;
pub const INTERRUPT_COALESCING: u8 = 0x08;
pub const WRITE_ATOMICITY: u8 = 0x0A;
pub const ASYNC_EVENT_CONFIG: u8 = 0x0B;
pub const KEEP_ALIVE_TIMER: u8 = 0x0F;
pub const HOST_IDENTIFIER: u8 = 0x81;

/// Asynchronous Event Configuration bit 8: Namespace Attribute Notices.
pub const AEN_NS_ATTRIBUTE: u32 = 1 << 8;
