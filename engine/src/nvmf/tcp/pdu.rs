//! NVMe/TCP PDUs: layout, encoding and checked decoding, shared by the target and the host.
//!
//! Every PDU starts with an 8-byte common header:
//!
//! ```text
//! byte 0  PDU-type      1  FLAGS (HDGSTF 0x01, DDGSTF 0x02, LAST_PDU 0x04, SUCCESS 0x08)
//! byte 2  HLEN (header length, digest excluded)   3  PDO (where data starts, or 0)
//! bytes 4-7  PLEN (whole PDU: header, header digest, padding, data, data digest), LE
//! ```
//!
//! then a type-specific header (HLEN bytes in all), an optional 4-byte CRC32C header digest,
//! padding up to PDO, the data, and an optional 4-byte CRC32C data digest.
//!
//! | type | code | HLEN | data |
//! | --- | --- | --- | --- |
//! | ICReq, ICResp | 0x00, 0x01 | 128 | none |
//! | H2CTermReq, C2HTermReq | 0x02, 0x03 | 24 | the offending header, PLEN ≤ 152 |
//! | CapsuleCmd | 0x04 | 72 (8 + SQE) | in-capsule data |
//! | CapsuleResp | 0x05 | 24 (8 + CQE) | none |
//! | H2CData, C2HData | 0x06, 0x07 | 24 | yes |
//! | R2T | 0x09 | 24 | none |
//!
//! Decoding never panics and never trusts a length before checking it: a malformed header gives
//! a [`ProtocolError`] carrying the Fatal Error Status and the byte offset of the field at fault
//! (the FEI of the TermReq that the receiver then sends).

use crate::nvme::le::{u16_at, u32_at};
use crate::nvme::{Cqe, Sqe, CQE_LEN, SQE_LEN};

pub const COMMON_HEADER_LEN: usize = 8;
pub const DIGEST_LEN: usize = 4;
/// MAXH2CDATA may not be below this (or above what the target allocates).
pub const MIN_MAXH2CDATA: u32 = 4096;
/// A TermReq carries at most this much (24-byte header + up to 128 bytes of the bad header).
pub const MAX_TERM_REQ_PLEN: u32 = 152;

pub mod flags {
    pub const HDGST: u8 = 0x01;
    pub const DDGST: u8 = 0x02;
    pub const LAST_PDU: u8 = 0x04;
    pub const SUCCESS: u8 = 0x08;
}

/// Digest bits of ICReq/ICResp's DGST byte.
pub mod dgst {
    pub const HEADER: u8 = 0x01;
    pub const DATA: u8 = 0x02;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum PduType {
    IcReq = 0x00,
    IcResp = 0x01,
    H2cTermReq = 0x02,
    C2hTermReq = 0x03,
    CapsuleCmd = 0x04,
    CapsuleResp = 0x05,
    H2cData = 0x06,
    C2hData = 0x07,
    R2t = 0x09,
}

impl PduType {
    fn from_u8(v: u8) -> Option<PduType> {
        Some(match v {
            0x00 => PduType::IcReq,
            0x01 => PduType::IcResp,
            0x02 => PduType::H2cTermReq,
            0x03 => PduType::C2hTermReq,
            0x04 => PduType::CapsuleCmd,
            0x05 => PduType::CapsuleResp,
            0x06 => PduType::H2cData,
            0x07 => PduType::C2hData,
            0x09 => PduType::R2t,
            _ => return None,
        })
    }

    /// The only header length the specification allows for this type.
    pub fn hlen(self) -> u8 {
        match self {
            PduType::IcReq | PduType::IcResp => 128,
            PduType::CapsuleCmd => (COMMON_HEADER_LEN + SQE_LEN) as u8,
            _ => 24,
        }
    }

    /// Whether PDUs of this type may carry a data section located by PDO.
    fn has_data(self) -> bool {
        matches!(
            self,
            PduType::CapsuleCmd | PduType::H2cData | PduType::C2hData
        )
    }

    /// Whether digests apply at all (never to connection set-up and termination PDUs).
    fn digestible(self) -> bool {
        !matches!(
            self,
            PduType::IcReq | PduType::IcResp | PduType::H2cTermReq | PduType::C2hTermReq
        )
    }
}

/// Fatal Error Status of a TermReq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Fes {
    InvalidHeaderField = 0x01,
    PduSequenceError = 0x02,
    HeaderDigestError = 0x03,
    DataOutOfRange = 0x04,
    DataLimitExceeded = 0x05,
    UnsupportedParameter = 0x06,
}

/// Why a PDU was refused: what a TermReq reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("NVMe/TCP protocol error {fes:?} at byte {offset}: {why}")]
pub struct ProtocolError {
    pub fes: Fes,
    /// Fatal Error Information: the byte offset of the field in error within the PDU header.
    pub offset: u32,
    pub why: &'static str,
}

fn err(fes: Fes, offset: u32, why: &'static str) -> ProtocolError {
    ProtocolError { fes, offset, why }
}

/// What the connection has negotiated, and how large a PDU it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    pub header_digest: bool,
    pub data_digest: bool,
    /// The largest PLEN accepted (bounds every allocation a peer can cause).
    pub max_plen: u32,
}

impl Negotiated {
    /// Before ICReq/ICResp: no digests, and only set-up PDUs fit.
    pub const INITIAL: Negotiated = Negotiated {
        header_digest: false,
        data_digest: false,
        max_plen: 128,
    };
}

/// A checked common header: the receiver then reads `header_len()` bytes in all, verifies the
/// header digest, and reads `plen - header_len()` more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommonHeader {
    pub pdu_type: PduType,
    pub flags: u8,
    pub hlen: u8,
    pub pdo: u8,
    pub plen: u32,
}

impl CommonHeader {
    /// Check the 8 bytes of a common header against the rules of its type and the connection.
    pub fn decode(
        b: &[u8; COMMON_HEADER_LEN],
        n: &Negotiated,
    ) -> Result<CommonHeader, ProtocolError> {
        let pdu_type =
            PduType::from_u8(b[0]).ok_or(err(Fes::InvalidHeaderField, 0, "unknown PDU type"))?;
        let h = CommonHeader {
            pdu_type,
            flags: b[1],
            hlen: b[2],
            pdo: b[3],
            plen: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        };
        if h.hlen != pdu_type.hlen() {
            return Err(err(
                Fes::InvalidHeaderField,
                2,
                "HLEN does not match the PDU type",
            ));
        }
        let hdgst = h.flags & flags::HDGST != 0;
        let ddgst = h.flags & flags::DDGST != 0;
        if pdu_type.digestible() {
            if hdgst != n.header_digest {
                return Err(err(
                    Fes::InvalidHeaderField,
                    1,
                    "HDGSTF disagrees with the negotiated header digest",
                ));
            }
            if ddgst && !n.data_digest {
                return Err(err(
                    Fes::InvalidHeaderField,
                    1,
                    "DDGSTF set without a negotiated data digest",
                ));
            }
        } else if hdgst || ddgst {
            return Err(err(
                Fes::InvalidHeaderField,
                1,
                "digest flags on a PDU that has no digests",
            ));
        }
        let header_len = h.header_len() as u32;
        if h.plen < header_len {
            return Err(err(
                Fes::InvalidHeaderField,
                4,
                "PLEN is shorter than the header",
            ));
        }
        if h.plen > n.max_plen.max(header_len) {
            return Err(err(
                Fes::DataLimitExceeded,
                4,
                "PLEN exceeds what this connection accepts",
            ));
        }
        let is_term = matches!(pdu_type, PduType::H2cTermReq | PduType::C2hTermReq);
        if is_term && h.plen > MAX_TERM_REQ_PLEN {
            return Err(err(
                Fes::InvalidHeaderField,
                4,
                "a TermReq is at most 152 bytes",
            ));
        }
        if pdu_type.has_data() {
            let data_start = h.pdo as u32;
            let with_data = h.plen > header_len;
            if with_data {
                if n.data_digest && !ddgst {
                    return Err(err(
                        Fes::InvalidHeaderField,
                        1,
                        "data without the negotiated data digest",
                    ));
                }
                if data_start < header_len || data_start > h.plen {
                    return Err(err(
                        Fes::InvalidHeaderField,
                        3,
                        "PDO lies inside the header or past the PDU",
                    ));
                }
                let digest = if ddgst { DIGEST_LEN as u32 } else { 0 };
                if h.plen < data_start + digest {
                    return Err(err(
                        Fes::InvalidHeaderField,
                        4,
                        "PLEN leaves no room for the data digest",
                    ));
                }
            } else if h.pdo != 0 || ddgst {
                return Err(err(
                    Fes::InvalidHeaderField,
                    3,
                    "PDO or DDGSTF set on a PDU without data",
                ));
            }
        } else if h.pdo != 0 || (!is_term && h.plen != header_len) {
            return Err(err(
                Fes::InvalidHeaderField,
                if h.pdo != 0 { 3 } else { 4 },
                "data on a PDU type that carries none",
            ));
        }
        Ok(h)
    }

    /// Header bytes including the header digest.
    pub fn header_len(&self) -> usize {
        self.hlen as usize
            + if self.flags & flags::HDGST != 0 {
                DIGEST_LEN
            } else {
                0
            }
    }

    /// (offset, length) of the data within the PDU, digest excluded; length 0 if none.
    pub fn data_range(&self) -> (usize, usize) {
        if !self.pdu_type.has_data() || self.plen as usize <= self.header_len() {
            return (0, 0);
        }
        let digest = if self.flags & flags::DDGST != 0 {
            DIGEST_LEN
        } else {
            0
        };
        let start = self.pdo as usize;
        (start, self.plen as usize - start - digest)
    }

    pub fn encode(&self) -> [u8; COMMON_HEADER_LEN] {
        let p = self.plen.to_le_bytes();
        [
            self.pdu_type as u8,
            self.flags,
            self.hlen,
            self.pdo,
            p[0],
            p[1],
            p[2],
            p[3],
        ]
    }
}

/// CRC32C, the digest NVMe/TCP uses for headers and data.
pub fn crc32c(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

/// The FLAGS digest bits for a PDU sent with these digests (DDGSTF only when it has data).
pub fn digest_flags(header_digest: bool, data_digest: bool) -> u8 {
    (if header_digest { flags::HDGST } else { 0 }) | (if data_digest { flags::DDGST } else { 0 })
}

/// Check a data digest: true when the PDU carries none, or when the 4 bytes after the data
/// are the CRC32C of the data. `pdu` is the whole PDU as `h` describes it.
pub fn data_digest_ok(pdu: &[u8], h: &CommonHeader) -> bool {
    if h.flags & flags::DDGST == 0 {
        return true;
    }
    let (at, len) = h.data_range();
    pdu.get(at + len..at + len + DIGEST_LEN)
        .is_some_and(|d| crc32c(&pdu[at..at + len]).to_le_bytes() == d)
}

/// Check a header digest: the 4 bytes after HLEN over the HLEN header bytes.
pub fn check_header_digest(header: &[u8], h: &CommonHeader) -> Result<(), ProtocolError> {
    if h.flags & flags::HDGST == 0 {
        return Ok(());
    }
    let hl = h.hlen as usize;
    let (Some(body), Some(digest)) = (header.get(..hl), header.get(hl..hl + DIGEST_LEN)) else {
        return Err(err(
            Fes::InvalidHeaderField,
            2,
            "header shorter than HLEN plus digest",
        ));
    };
    if crc32c(body).to_le_bytes() != digest {
        return Err(err(Fes::HeaderDigestError, 0, "header digest mismatch"));
    }
    Ok(())
}

/// ICReq and ICResp share one layout after the common header: PFV (bytes 8-9), a PDU data
/// alignment (HPDA or CPDA, byte 10), DGST (byte 11), and a 32-bit limit (MAXR2T or
/// MAXH2CDATA, bytes 12-15); the rest of the 128 bytes is reserved.
struct SetUpFields {
    pfv: u16,
    pda: u8,
    dgst: u8,
    limit: u32,
}

impl SetUpFields {
    fn decode(h: &[u8; 128]) -> SetUpFields {
        SetUpFields {
            pfv: u16_at(h, 8),
            pda: h[10],
            dgst: h[11],
            limit: u32_at(h, 12),
        }
    }

    fn encode(&self, pdu_type: PduType) -> [u8; 128] {
        let mut b = [0u8; 128];
        let ch = CommonHeader {
            pdu_type,
            flags: 0,
            hlen: 128,
            pdo: 0,
            plen: 128,
        };
        b[..8].copy_from_slice(&ch.encode());
        b[8..10].copy_from_slice(&self.pfv.to_le_bytes());
        b[10] = self.pda;
        b[11] = self.dgst;
        b[12..16].copy_from_slice(&self.limit.to_le_bytes());
        b
    }
}

/// ICReq (host to controller): protocol version, host PDU data alignment, digests wanted, and
/// the outstanding R2Ts per command the host allows (0's based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcReq {
    pub pfv: u16,
    pub hpda: u8,
    pub dgst: u8,
    pub maxr2t: u32,
}

impl IcReq {
    /// Decode bytes 8..128 of an ICReq header.
    pub fn decode(h: &[u8; 128]) -> Result<IcReq, ProtocolError> {
        let f = SetUpFields::decode(h);
        let r = IcReq {
            pfv: f.pfv,
            hpda: f.pda,
            dgst: f.dgst,
            maxr2t: f.limit,
        };
        if r.pfv != 0 {
            return Err(err(Fes::UnsupportedParameter, 8, "PFV other than 0"));
        }
        if r.hpda > 31 {
            return Err(err(Fes::InvalidHeaderField, 10, "HPDA above 31"));
        }
        Ok(r)
    }

    pub fn encode(&self) -> [u8; 128] {
        SetUpFields {
            pfv: self.pfv,
            pda: self.hpda,
            dgst: self.dgst,
            limit: self.maxr2t,
        }
        .encode(PduType::IcReq)
    }
}

/// ICResp (controller to host): version, controller PDU data alignment, digests granted, and
/// the largest H2CData payload the controller accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcResp {
    pub pfv: u16,
    pub cpda: u8,
    pub dgst: u8,
    pub maxh2cdata: u32,
}

impl IcResp {
    /// Decode, with the checks a host applies (Linux refuses all of these).
    pub fn decode(h: &[u8; 128]) -> Result<IcResp, ProtocolError> {
        let f = SetUpFields::decode(h);
        let r = IcResp {
            pfv: f.pfv,
            cpda: f.pda,
            dgst: f.dgst,
            maxh2cdata: f.limit,
        };
        if r.pfv != 0 {
            return Err(err(Fes::UnsupportedParameter, 8, "PFV other than 0"));
        }
        if r.maxh2cdata < MIN_MAXH2CDATA || r.maxh2cdata % 4 != 0 {
            return Err(err(
                Fes::InvalidHeaderField,
                12,
                "MAXH2CDATA below 4096 or not a multiple of 4",
            ));
        }
        Ok(r)
    }

    pub fn encode(&self) -> [u8; 128] {
        SetUpFields {
            pfv: self.pfv,
            pda: self.cpda,
            dgst: self.dgst,
            limit: self.maxh2cdata,
        }
        .encode(PduType::IcResp)
    }
}

/// The SQE of a CapsuleCmd header (bytes 8..72).
pub fn capsule_sqe(h: &[u8]) -> Option<Sqe> {
    let b: &[u8; SQE_LEN] = h
        .get(COMMON_HEADER_LEN..COMMON_HEADER_LEN + SQE_LEN)?
        .try_into()
        .ok()?;
    Some(Sqe::decode(b))
}

/// The CQE of a CapsuleResp header (bytes 8..24).
pub fn capsule_cqe(h: &[u8]) -> Option<Cqe> {
    let b: &[u8; CQE_LEN] = h
        .get(COMMON_HEADER_LEN..COMMON_HEADER_LEN + CQE_LEN)?
        .try_into()
        .ok()?;
    Some(Cqe::decode(b))
}

/// The type-specific fields of H2CData, C2HData and R2T (all 24-byte headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataHeader {
    /// Command capsule CID the transfer belongs to.
    pub cccid: u16,
    /// Transfer tag (H2CData echoes the R2T's; C2HData has none).
    pub ttag: u16,
    /// Offset of this piece within the command's data (DATAO, or R2TO).
    pub offset: u32,
    /// Length of this piece (DATAL, or R2TL).
    pub length: u32,
}

impl DataHeader {
    pub fn decode(h: &[u8]) -> Option<DataHeader> {
        let b = h.get(..24)?;
        Some(DataHeader {
            cccid: u16_at(b, 8),
            ttag: u16_at(b, 10),
            offset: u32_at(b, 12),
            length: u32_at(b, 16),
        })
    }

    /// Check a data PDU's DATAL against the data it carries (FEI: the DATAL field).
    pub fn check_length(&self, h: &CommonHeader) -> Result<(), ProtocolError> {
        if self.length as usize != h.data_range().1 {
            return Err(err(
                Fes::InvalidHeaderField,
                16,
                "DATAL disagrees with PLEN and PDO",
            ));
        }
        Ok(())
    }

    /// The 24 header bytes of a PDU of `pdu_type` with these fields.
    pub fn encode(&self, ch: CommonHeader) -> [u8; 24] {
        let mut b = [0u8; 24];
        b[..8].copy_from_slice(&ch.encode());
        b[8..10].copy_from_slice(&self.cccid.to_le_bytes());
        b[10..12].copy_from_slice(&self.ttag.to_le_bytes());
        b[12..16].copy_from_slice(&self.offset.to_le_bytes());
        b[16..20].copy_from_slice(&self.length.to_le_bytes());
        b
    }
}

/// A TermReq's 24-byte header for `e`, followed by up to 128 bytes of the offending header.
pub fn term_req(pdu_type: PduType, e: &ProtocolError, offending: &[u8]) -> Vec<u8> {
    let copied = offending.len().min((MAX_TERM_REQ_PLEN - 24) as usize);
    let ch = CommonHeader {
        pdu_type,
        flags: 0,
        hlen: 24,
        pdo: 0,
        plen: 24 + copied as u32,
    };
    let mut b = Vec::with_capacity(24 + copied);
    b.extend_from_slice(&ch.encode());
    b.extend_from_slice(&(e.fes as u16).to_le_bytes());
    b.extend_from_slice(&e.offset.to_le_bytes());
    b.resize(24, 0);
    b.extend_from_slice(&offending[..copied]);
    b
}

#[cfg(test)]
mod tests;
