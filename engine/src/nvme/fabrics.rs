//! Fabrics commands (NVMe over Fabrics 1.1): Connect with its 1024-byte data, and Property
//! Get/Set, which stand in for the register reads and writes of a PCIe controller.
//!
//! ```text
//! Connect SQE:  4 FCTYPE  40 RECFMT  42 QID  44 SQSIZE (0's based)  46 CATTR  48 KATO (ms)
//! Connect data: 0 HOSTID (16)  16 CNTLID  256 SUBNQN (256)  512 HOSTNQN (256)
//! Property SQE: 40 ATTRIB (bits 2:0: 0 = 4 bytes, 1 = 8 bytes)  44 OFST  48 VALUE (8)
//! ```

use super::le::{nul_padded, u16_at};
use super::Sqe;

/// The opcode of every Fabrics command; the command type is in byte 4 (`fctype`).
pub const OPCODE: u8 = 0x7F;
pub const PROPERTY_SET: u8 = 0x00;
pub const CONNECT: u8 = 0x01;
pub const PROPERTY_GET: u8 = 0x04;

pub const CONNECT_DATA_LEN: usize = 1024;
/// CNTLID in a Connect for the admin queue: the target picks the controller (dynamic model).
pub const CNTLID_DYNAMIC: u16 = 0xFFFF;
/// Bytes of an NQN field (NUL-terminated UTF-8, at most 223 bytes of name).
pub const NQN_FIELD: usize = 256;
pub const MAX_NQN_LEN: usize = 223;
/// CATTR bit 2: the host disables SQ flow control (SQHD need not be reported).
pub const CATTR_DISABLE_SQFLOW: u8 = 0x04;

/// Offsets of the Connect fields, for a Connect Invalid Parameters response's IPO.
pub mod connect_offset {
    pub const QID: u16 = 42;
    pub const SQSIZE: u16 = 44;
    pub const CATTR: u16 = 46;
    pub const RECFMT: u16 = 40;
    pub const CNTLID: u16 = 16;
    pub const SUBNQN: u16 = 256;
    pub const HOSTNQN: u16 = 512;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectCmd {
    pub recfmt: u16,
    pub qid: u16,
    /// 0's based.
    pub sqsize: u16,
    pub cattr: u8,
    /// Keep-alive timeout in milliseconds; 0 disables it.
    pub kato: u32,
}

impl ConnectCmd {
    pub fn from_sqe(s: &Sqe) -> ConnectCmd {
        ConnectCmd {
            recfmt: s.cdw(10) as u16,
            qid: (s.cdw(10) >> 16) as u16,
            sqsize: s.cdw(11) as u16,
            cattr: (s.cdw(11) >> 16) as u8,
            kato: s.cdw(12),
        }
    }

    pub fn to_sqe(&self, cid: u16, sgl: [u8; 16]) -> Sqe {
        let mut s = Sqe {
            opcode: OPCODE,
            cid,
            nsid: CONNECT as u32,
            dptr: sgl,
            ..Sqe::default()
        };
        s.cdw[0] = self.recfmt as u32 | (self.qid as u32) << 16;
        s.cdw[1] = self.sqsize as u32 | (self.cattr as u32) << 16;
        s.cdw[2] = self.kato;
        s
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectData {
    pub hostid: [u8; 16],
    pub cntlid: u16,
    pub subnqn: String,
    pub hostnqn: String,
}

/// Why connect data was refused: the offset of the bad field (the response's IPO).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadField(pub u16);

fn nqn_at(b: &[u8], at: u16) -> Result<String, BadField> {
    let field = &b[at as usize..at as usize + NQN_FIELD];
    let len = field.iter().position(|&c| c == 0).ok_or(BadField(at))?;
    if len == 0 || len > MAX_NQN_LEN {
        return Err(BadField(at));
    }
    std::str::from_utf8(&field[..len])
        .map(str::to_owned)
        .map_err(|_| BadField(at))
}

impl ConnectData {
    pub fn decode(b: &[u8]) -> Result<ConnectData, BadField> {
        if b.len() < CONNECT_DATA_LEN {
            return Err(BadField(0));
        }
        let mut hostid = [0u8; 16];
        hostid.copy_from_slice(&b[..16]);
        Ok(ConnectData {
            hostid,
            cntlid: u16_at(b, 16),
            subnqn: nqn_at(b, connect_offset::SUBNQN)?,
            hostnqn: nqn_at(b, connect_offset::HOSTNQN)?,
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; CONNECT_DATA_LEN];
        b[..16].copy_from_slice(&self.hostid);
        b[16..18].copy_from_slice(&self.cntlid.to_le_bytes());
        nul_padded(&mut b[256..512], &self.subnqn);
        nul_padded(&mut b[512..768], &self.hostnqn);
        b
    }
}

/// Connect Invalid Parameters response dword 0: IPO in bits 15:0, IATTR in bits 23:16 (bit 0
/// set when the offset is into the connect data rather than the SQE).
pub fn invalid_param_dw0(in_data: bool, offset: u16) -> u32 {
    offset as u32 | (in_data as u32) << 16
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PropertyCmd {
    /// 8-byte access (ATTRIB = 1) rather than 4.
    pub wide: bool,
    pub offset: u32,
    pub value: u64,
}

impl PropertyCmd {
    pub fn from_sqe(s: &Sqe) -> Result<PropertyCmd, BadField> {
        let wide = match s.cdw(10) & 0x7 {
            0 => false,
            1 => true,
            _ => return Err(BadField(40)),
        };
        Ok(PropertyCmd {
            wide,
            offset: s.cdw(11),
            value: s.cdw(12) as u64 | (s.cdw(13) as u64) << 32,
        })
    }
}

/// The Fabrics command type of a capsule (byte 4 of the SQE).
pub fn fctype(s: &Sqe) -> u8 {
    s.nsid as u8
}
