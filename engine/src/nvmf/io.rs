//! NVM I/O commands as the target decodes them: what a Read, Write, Flush, Write Zeroes or
//! Dataset Management asks of a namespace, checked against it, and how bdev outcomes map to
//! NVMe status. Decoding allocates nothing.

use crate::bdev::{Errno, Error as BdevError, IoError, IoType};
use crate::nvme::{io, Sqe, Status};

/// Read and Write: FUA, cdw12 bit 30.
const FUA: u32 = 1 << 30;
/// Dataset Management: Attribute Deallocate, cdw11 bit 2.
const DSM_DEALLOCATE: u32 = 1 << 2;
/// Bytes of one Dataset Management range: context attributes (4), length in blocks (4, not
/// 0's based), starting LBA (8).
pub const DSM_RANGE_LEN: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoCmd {
    Read {
        slba: u64,
        nlb: u64,
    },
    Write {
        slba: u64,
        nlb: u64,
        fua: bool,
    },
    /// Read the range and compare it with the command's data.
    Compare {
        slba: u64,
        nlb: u64,
    },
    Flush,
    WriteZeroes {
        slba: u64,
        nlb: u64,
    },
    /// Deallocate these ranges (`ranges` of them in the command's data); no-op without AD.
    Deallocate {
        ranges: usize,
    },
    DsmNoop,
}

fn lba_range(sqe: &Sqe) -> (u64, u64) {
    let slba = sqe.cdw(10) as u64 | (sqe.cdw(11) as u64) << 32;
    let nlb = (sqe.cdw(12) & 0xFFFF) as u64 + 1;
    (slba, nlb)
}

/// Is `opcode` an NVM command Tandem runs? Checked before the namespace, so that an unknown
/// command is an invalid opcode whatever its NSID.
pub fn known_opcode(opcode: u8) -> bool {
    matches!(
        opcode,
        io::READ | io::WRITE | io::COMPARE | io::FLUSH | io::WRITE_ZEROES | io::DATASET_MANAGEMENT
    )
}

/// Check `[slba, slba + nlb)` against a namespace of `num_blocks`.
pub fn check_range(slba: u64, nlb: u64, num_blocks: u64) -> Result<(), Status> {
    match slba.checked_add(nlb) {
        Some(end) if end <= num_blocks => Ok(()),
        _ => Err(Status::LBA_OUT_OF_RANGE),
    }
}

/// Decode an I/O command for a namespace of `num_blocks` blocks of `block_size` bytes, whose
/// SGL describes `xfer` bytes.
pub fn decode(sqe: &Sqe, block_size: u32, num_blocks: u64, xfer: u32) -> Result<IoCmd, Status> {
    let bytes = |nlb: u64| nlb * block_size as u64;
    match sqe.opcode {
        io::READ | io::WRITE | io::COMPARE => {
            let (slba, nlb) = lba_range(sqe);
            if bytes(nlb) != xfer as u64 {
                return Err(Status::DATA_SGL_LENGTH_INVALID);
            }
            check_range(slba, nlb, num_blocks)?;
            Ok(if sqe.opcode == io::READ {
                IoCmd::Read { slba, nlb }
            } else if sqe.opcode == io::COMPARE {
                IoCmd::Compare { slba, nlb }
            } else {
                IoCmd::Write {
                    slba,
                    nlb,
                    fua: sqe.cdw(12) & FUA != 0,
                }
            })
        }
        io::FLUSH => Ok(IoCmd::Flush),
        io::WRITE_ZEROES => {
            let (slba, nlb) = lba_range(sqe);
            check_range(slba, nlb, num_blocks)?;
            Ok(IoCmd::WriteZeroes { slba, nlb })
        }
        io::DATASET_MANAGEMENT => {
            let ranges = (sqe.cdw(10) & 0xFF) as usize + 1;
            if (xfer as usize) < ranges * DSM_RANGE_LEN {
                return Err(Status::DATA_SGL_LENGTH_INVALID);
            }
            Ok(if sqe.cdw(11) & DSM_DEALLOCATE != 0 {
                IoCmd::Deallocate { ranges }
            } else {
                IoCmd::DsmNoop
            })
        }
        _ => Err(Status::INVALID_OPCODE),
    }
}

/// Range `i` of a Dataset Management data buffer: (starting LBA, blocks).
pub fn dsm_range(data: &[u8], i: usize) -> (u64, u64) {
    let r = &data[i * DSM_RANGE_LEN..(i + 1) * DSM_RANGE_LEN];
    let nlb = crate::nvme::le::u32_at(r, 4) as u64;
    let slba = crate::nvme::le::u64_at(r, 8);
    (slba, nlb)
}

/// The status for an I/O the bdev refused.
pub fn submit_status(e: &BdevError) -> Status {
    match e {
        BdevError::OutOfRange { .. } => Status::LBA_OUT_OF_RANGE,
        BdevError::Removed { .. } | BdevError::DescClosed { .. } => Status::NAMESPACE_NOT_READY,
        // A bdev that takes no writes at all (a snapshot) or opened read-only: the namespace
        // is write protected. (Write Zeroes is emulated by writes wherever writes go.)
        BdevError::Unsupported {
            io_type: IoType::Write | IoType::WriteZeroes,
            ..
        }
        | BdevError::ReadOnly { .. } => Status::NAMESPACE_WRITE_PROTECTED,
        BdevError::Unsupported { .. } => Status::INVALID_OPCODE,
        BdevError::ZeroLength | BdevError::BufferSize { .. } | BdevError::Misaligned { .. } => {
            Status::INVALID_FIELD
        }
        _ => Status::INTERNAL_ERROR,
    }
}

/// The status for an I/O the bdev failed.
pub fn completion_status(e: &IoError, is_read: bool) -> Status {
    match e {
        IoError::Aborted => Status::ABORTED_BY_REQUEST,
        IoError::Torn { .. } => Status::WRITE_FAULT,
        // A thin volume whose store has no cluster left for the write: the NVM command set's
        // thin-provisioning answer, with Do Not Retry (hosts report it as "no space", not as a
        // medium error, and do not resend it).
        IoError::Device(Errno(libc::ENOSPC)) if !is_read => Status::CAPACITY_EXCEEDED,
        IoError::Device(_) | IoError::Injected if is_read => Status::UNRECOVERED_READ_ERROR,
        IoError::Device(_) | IoError::Injected => Status::WRITE_FAULT,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rw(opcode: u8, slba: u64, nlb0: u32) -> Sqe {
        let mut s = Sqe {
            opcode,
            nsid: 1,
            ..Sqe::default()
        };
        s.cdw[0] = slba as u32;
        s.cdw[1] = (slba >> 32) as u32;
        s.cdw[2] = nlb0;
        s
    }

    #[test]
    fn a_write_with_no_room_is_capacity_exceeded_and_other_device_errors_write_faults() {
        let nospc = IoError::Device(Errno(libc::ENOSPC));
        assert_eq!(completion_status(&nospc, false), Status::CAPACITY_EXCEEDED);
        assert_eq!(
            completion_status(&IoError::Device(Errno(libc::EIO)), false),
            Status::WRITE_FAULT
        );
        assert_eq!(
            completion_status(&nospc, true),
            Status::UNRECOVERED_READ_ERROR
        );
    }

    #[test]
    fn a_write_to_a_bdev_that_takes_none_is_write_protected_and_other_refusals_keep_theirs() {
        let bdev = "snap".to_string();
        let unsupported = |io_type| BdevError::Unsupported {
            bdev: bdev.clone(),
            io_type,
        };
        for e in [
            unsupported(IoType::Write),
            unsupported(IoType::WriteZeroes),
            BdevError::ReadOnly { bdev: bdev.clone() },
        ] {
            assert_eq!(submit_status(&e), Status::NAMESPACE_WRITE_PROTECTED, "{e}");
        }
        assert_eq!(
            submit_status(&unsupported(IoType::Unmap)),
            Status::INVALID_OPCODE
        );
        assert_eq!(
            Status::NAMESPACE_WRITE_PROTECTED.to_field(false),
            0x20 << 1 | 1 << 15
        );
    }

    #[test]
    fn reads_and_writes_check_length_and_range() {
        assert_eq!(
            decode(&rw(io::READ, 8, 7), 512, 16, 4096),
            Ok(IoCmd::Read { slba: 8, nlb: 8 })
        );
        assert_eq!(
            decode(&rw(io::READ, 9, 7), 512, 16, 4096),
            Err(Status::LBA_OUT_OF_RANGE)
        );
        assert_eq!(
            decode(&rw(io::WRITE, 0, 7), 512, 16, 512),
            Err(Status::DATA_SGL_LENGTH_INVALID)
        );
        assert_eq!(
            decode(&rw(io::WRITE, u64::MAX, 0), 512, 16, 512),
            Err(Status::LBA_OUT_OF_RANGE)
        );
        assert_eq!(
            decode(&rw(io::WRITE, 0, 1 << 30), 512, 16, 512),
            Ok(IoCmd::Write {
                slba: 0,
                nlb: 1,
                fua: true
            })
        );
    }

    #[test]
    fn unknown_opcodes_are_invalid() {
        assert_eq!(
            decode(&rw(0x7E, 0, 0), 512, 16, 0),
            Err(Status::INVALID_OPCODE)
        );
    }

    #[test]
    fn dataset_management_needs_its_ranges() {
        let mut s = rw(io::DATASET_MANAGEMENT, 0, 0);
        s.cdw[0] = 1; // two ranges
        s.cdw[1] = DSM_DEALLOCATE;
        assert_eq!(
            decode(&s, 512, 16, 16),
            Err(Status::DATA_SGL_LENGTH_INVALID)
        );
        assert_eq!(decode(&s, 512, 16, 32), Ok(IoCmd::Deallocate { ranges: 2 }));
        let mut d = vec![0u8; 32];
        d[16 + 4] = 3;
        d[16 + 8] = 9;
        assert_eq!(dsm_range(&d, 1), (9, 3));
    }
}
