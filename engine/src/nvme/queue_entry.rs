//! Submission and completion queue entries.
//!
//! ```text
//! SQE (64 bytes)                              CQE (16 bytes)
//!  0  opcode        1  flags (FUSE, PSDT)       0  dword 0 (command specific)
//!  2  command id (u16)                          4  dword 1
//!  4  namespace id (u32)                        8  SQ head pointer (u16)
//!  8  cdw2, 12 cdw3                            10  SQ identifier (u16)
//! 16  metadata pointer (u64)                   12  command id (u16)
//! 24  data pointer: SGL descriptor (16 bytes)  14  status field with phase tag (u16)
//! 40  cdw10 .. 60 cdw15
//! ```
//! In a Fabrics command capsule the data pointer is an SGL descriptor (PSDT 01b).

use super::le::{u16_at, u32_at, u64_at};

/// Bytes of a submission queue entry.
pub const SQE_LEN: usize = 64;
/// Bytes of a completion queue entry.
pub const CQE_LEN: usize = 16;

/// A submission queue entry, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct Sqe {
    pub opcode: u8,
    pub flags: u8,
    pub cid: u16,
    pub nsid: u32,
    pub cdw2: u32,
    pub cdw3: u32,
    pub mptr: u64,
    /// The data pointer: an SGL descriptor in Fabrics capsules.
    pub dptr: [u8; 16],
    /// cdw10 to cdw15.
    pub cdw: [u32; 6],
}

const _: () = assert!(std::mem::size_of::<Sqe>() == SQE_LEN);

impl Sqe {
    pub fn decode(b: &[u8; SQE_LEN]) -> Sqe {
        let mut dptr = [0u8; 16];
        dptr.copy_from_slice(&b[24..40]);
        let mut cdw = [0u32; 6];
        for (i, d) in cdw.iter_mut().enumerate() {
            *d = u32_at(b, 40 + 4 * i);
        }
        Sqe {
            opcode: b[0],
            flags: b[1],
            cid: u16_at(b, 2),
            nsid: u32_at(b, 4),
            cdw2: u32_at(b, 8),
            cdw3: u32_at(b, 12),
            mptr: u64_at(b, 16),
            dptr,
            cdw,
        }
    }

    pub fn encode(&self) -> [u8; SQE_LEN] {
        let mut b = [0u8; SQE_LEN];
        b[0] = self.opcode;
        b[1] = self.flags;
        b[2..4].copy_from_slice(&self.cid.to_le_bytes());
        b[4..8].copy_from_slice(&self.nsid.to_le_bytes());
        b[8..12].copy_from_slice(&self.cdw2.to_le_bytes());
        b[12..16].copy_from_slice(&self.cdw3.to_le_bytes());
        b[16..24].copy_from_slice(&self.mptr.to_le_bytes());
        b[24..40].copy_from_slice(&self.dptr);
        for (i, d) in self.cdw.iter().enumerate() {
            b[40 + 4 * i..44 + 4 * i].copy_from_slice(&d.to_le_bytes());
        }
        b
    }

    /// Command dword `n` (10 to 15).
    pub fn cdw(&self, n: usize) -> u32 {
        self.cdw[n - 10]
    }
}

/// A completion queue entry, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct Cqe {
    pub dw0: u32,
    pub dw1: u32,
    pub sqhd: u16,
    pub sqid: u16,
    pub cid: u16,
    /// The status field including the phase tag (bit 0).
    pub status: u16,
}

const _: () = assert!(std::mem::size_of::<Cqe>() == CQE_LEN);

impl Cqe {
    pub fn decode(b: &[u8; CQE_LEN]) -> Cqe {
        Cqe {
            dw0: u32_at(b, 0),
            dw1: u32_at(b, 4),
            sqhd: u16_at(b, 8),
            sqid: u16_at(b, 10),
            cid: u16_at(b, 12),
            status: u16_at(b, 14),
        }
    }

    pub fn encode(&self) -> [u8; CQE_LEN] {
        let mut b = [0u8; CQE_LEN];
        b[0..4].copy_from_slice(&self.dw0.to_le_bytes());
        b[4..8].copy_from_slice(&self.dw1.to_le_bytes());
        b[8..10].copy_from_slice(&self.sqhd.to_le_bytes());
        b[10..12].copy_from_slice(&self.sqid.to_le_bytes());
        b[12..14].copy_from_slice(&self.cid.to_le_bytes());
        b[14..16].copy_from_slice(&self.status.to_le_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_at_the_spec_offsets() {
        let sqe = Sqe {
            opcode: 0x02,
            flags: 0x40,
            cid: 0x1234,
            nsid: 1,
            cdw2: 2,
            cdw3: 3,
            mptr: 0x0102_0304_0506_0708,
            dptr: [9; 16],
            cdw: [10, 11, 12, 13, 14, 15],
        };
        let b = sqe.encode();
        assert_eq!((b[0], b[1], b[2], b[3]), (0x02, 0x40, 0x34, 0x12));
        assert_eq!(&b[40..44], &10u32.to_le_bytes(), "cdw10 at byte 40");
        assert_eq!(&b[60..64], &15u32.to_le_bytes(), "cdw15 at byte 60");
        assert_eq!(Sqe::decode(&b), sqe);
        assert_eq!(sqe.cdw(12), 12);
        let cqe = Cqe {
            dw0: 7,
            dw1: 0,
            sqhd: 5,
            sqid: 1,
            cid: 0x1234,
            status: 0x8101,
        };
        let c = cqe.encode();
        assert_eq!((c[12], c[13], c[14], c[15]), (0x34, 0x12, 0x01, 0x81));
        assert_eq!(Cqe::decode(&c), cqe);
    }
}
