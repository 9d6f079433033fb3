//! Completion status (NVMe Base 2.0, "Status Field"): a status code type, a status code, and
//! the More and Do Not Retry bits, packed with the phase tag into the CQE's upper 16 bits of
//! dword 3.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum StatusCodeType {
    Generic = 0,
    CommandSpecific = 1,
    MediaAndDataIntegrity = 2,
    PathRelated = 3,
    VendorSpecific = 7,
}

/// A command's status, as the target reports it and the host reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    pub sct: u8,
    pub sc: u8,
    /// Do Not Retry: the same command would fail again.
    pub dnr: bool,
    pub more: bool,
}

impl Status {
    pub const SUCCESS: Status = Status::generic(0x00);
    pub const INVALID_OPCODE: Status = Status::generic(0x01).no_retry();
    pub const INVALID_FIELD: Status = Status::generic(0x02).no_retry();
    pub const COMMAND_ID_CONFLICT: Status = Status::generic(0x03).no_retry();
    pub const DATA_TRANSFER_ERROR: Status = Status::generic(0x04);
    pub const INTERNAL_ERROR: Status = Status::generic(0x06);
    pub const ABORTED_BY_REQUEST: Status = Status::generic(0x07);
    pub const ABORTED_SQ_DELETION: Status = Status::generic(0x08);
    pub const INVALID_NAMESPACE: Status = Status::generic(0x0B).no_retry();
    pub const COMMAND_SEQUENCE_ERROR: Status = Status::generic(0x0C).no_retry();
    pub const INVALID_SGL_DESCRIPTOR: Status = Status::generic(0x0D).no_retry();
    pub const DATA_SGL_LENGTH_INVALID: Status = Status::generic(0x0F).no_retry();
    pub const SGL_DESCRIPTOR_TYPE_INVALID: Status = Status::generic(0x11).no_retry();
    pub const SGL_OFFSET_INVALID: Status = Status::generic(0x16).no_retry();
    /// A data digest did not match: the host may retry.
    /// Namespace Is Write Protected: a write to a read-only namespace (a snapshot).
    pub const NAMESPACE_WRITE_PROTECTED: Status = Status::generic(0x20).no_retry();
    pub const TRANSIENT_TRANSPORT_ERROR: Status = Status::generic(0x22);
    pub const LBA_OUT_OF_RANGE: Status = Status::generic(0x80).no_retry();
    pub const CAPACITY_EXCEEDED: Status = Status::generic(0x81).no_retry();
    pub const NAMESPACE_NOT_READY: Status = Status::generic(0x82);
    /// Fabrics Connect: incompatible format, controller busy, invalid parameters, invalid host.
    pub const CONNECT_INCOMPATIBLE_FORMAT: Status = Status::command_specific(0x80).no_retry();
    pub const CONNECT_CONTROLLER_BUSY: Status = Status::command_specific(0x81);
    pub const CONNECT_INVALID_PARAMETERS: Status = Status::command_specific(0x82).no_retry();
    pub const CONNECT_INVALID_HOST: Status = Status::command_specific(0x84).no_retry();
    pub const INVALID_LOG_PAGE: Status = Status::command_specific(0x09).no_retry();
    pub const FEATURE_NOT_CHANGEABLE: Status = Status::command_specific(0x0E).no_retry();
    pub const WRITE_FAULT: Status = Status::media(0x80);
    pub const UNRECOVERED_READ_ERROR: Status = Status::media(0x81);
    pub const COMPARE_FAILURE: Status = Status::media(0x85).no_retry();

    pub const fn generic(sc: u8) -> Status {
        Status {
            sct: StatusCodeType::Generic as u8,
            sc,
            dnr: false,
            more: false,
        }
    }

    pub const fn command_specific(sc: u8) -> Status {
        Status {
            sct: StatusCodeType::CommandSpecific as u8,
            sc,
            dnr: false,
            more: false,
        }
    }

    pub const fn media(sc: u8) -> Status {
        Status {
            sct: StatusCodeType::MediaAndDataIntegrity as u8,
            sc,
            dnr: false,
            more: false,
        }
    }

    pub const fn no_retry(self) -> Status {
        Status { dnr: true, ..self }
    }

    pub fn is_success(&self) -> bool {
        self.sct == 0 && self.sc == 0
    }

    /// The 15 status bits above the phase tag: SC in 1..=8, SCT in 9..=11, M 14, DNR 15.
    pub fn to_field(self, phase: bool) -> u16 {
        (phase as u16)
            | (self.sc as u16) << 1
            | ((self.sct & 0x7) as u16) << 9
            | (self.more as u16) << 14
            | (self.dnr as u16) << 15
    }

    /// Inverse of [`Self::to_field`]; the phase tag is returned apart.
    pub fn from_field(field: u16) -> (Status, bool) {
        (
            Status {
                sc: (field >> 1) as u8,
                sct: ((field >> 9) & 0x7) as u8,
                more: field & (1 << 14) != 0,
                dnr: field & (1 << 15) != 0,
            },
            field & 1 != 0,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_field_round_trips_and_places_bits_as_the_spec_says() {
        let s = Status::LBA_OUT_OF_RANGE;
        let f = s.to_field(true);
        assert_eq!(f, 1 | 0x80 << 1 | 1 << 15);
        assert_eq!(Status::from_field(f), (s, true));
        let c = Status::CONNECT_INVALID_HOST;
        assert_eq!(Status::from_field(c.to_field(false)), (c, false));
        assert_eq!((c.to_field(false) >> 9) & 7, 1, "command specific");
        for raw in [0u16, 0xFFFF, 0x1234, 0x8001] {
            let (s, p) = Status::from_field(raw);
            assert_eq!(
                s.to_field(p) & !(0b11 << 12),
                raw & !(0b11 << 12),
                "bits 12-13 are reserved (CRD)"
            );
        }
    }
}
