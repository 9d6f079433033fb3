//! SGL descriptors as Fabrics capsules carry them in the SQE's data pointer (NVMe Base 2.0,
//! "SGL Descriptor"): address (8 bytes), length (4), three reserved bytes, and an identifier
//! byte whose high nibble is the descriptor type and low nibble the subtype.

use super::le::{u32_at, u64_at};

/// Data Block descriptor, Offset subtype: data in the command capsule, at `addr` bytes into it.
pub const IN_CAPSULE: u8 = 0x01;
/// Transport SGL Data Block descriptor, Transport-specific subtype A: the transport moves the
/// data (NVMe/TCP: R2T and H2CData for writes, C2HData for reads). Length 0 means no data.
pub const TRANSPORT: u8 = 0x5A;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SglDesc {
    pub addr: u64,
    pub len: u32,
    pub id: u8,
}

impl SglDesc {
    pub fn decode(dptr: &[u8; 16]) -> SglDesc {
        SglDesc {
            addr: u64_at(dptr, 0),
            len: u32_at(dptr, 8),
            id: dptr[15],
        }
    }

    pub fn encode(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[15] = self.id;
        b
    }
}

/// Direction of a command's data, from bits 1:0 of its opcode (or of a Fabrics command type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataDir {
    None,
    HostToController,
    ControllerToHost,
    /// 11b: bidirectional, which no command Tandem implements uses.
    Both,
}

impl DataDir {
    pub fn of(code: u8) -> DataDir {
        match code & 0x3 {
            0 => DataDir::None,
            1 => DataDir::HostToController,
            2 => DataDir::ControllerToHost,
            _ => DataDir::Both,
        }
    }
}
