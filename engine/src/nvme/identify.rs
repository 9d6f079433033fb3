//! Identify data structures (NVMe Base 2.0, "Identify Controller Data Structure" and the NVM
//! Command Set's "Identify Namespace Data Structure"; NVMe over Fabrics 1.1 for the Fabrics
//! fields at 1792..). Each is 4096 bytes; only the fields a target sets are modelled, at the
//! offsets the specification gives.

use super::le::{ascii, nul_padded, put16, put32, put64};

/// CNS values of Identify's cdw10 bits 7:0.
pub mod cns {
    pub const NAMESPACE: u8 = 0x00;
    pub const CONTROLLER: u8 = 0x01;
    pub const ACTIVE_NS_LIST: u8 = 0x02;
    pub const NS_DESCRIPTORS: u8 = 0x03;
}

pub const IDENTIFY_LEN: usize = 4096;

/// Controller type (CNTRLTYPE, byte 111).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControllerType {
    Io = 1,
    Discovery = 2,
}

/// The Identify Controller fields a Fabrics target reports.
#[derive(Debug, Clone)]
pub struct ControllerData {
    pub serial: String,
    pub model: String,
    pub firmware: String,
    /// Maximum data transfer size as a power of two of 4 KiB pages (0: no limit).
    pub mdts: u8,
    pub cntlid: u16,
    pub version: u32,
    pub ctrl_type: ControllerType,
    /// OAES: asynchronous events the controller reports.
    pub oaes: u32,
    /// Keep-alive granularity in 100 ms units; 0 if keep-alive is not supported.
    pub kas: u16,
    /// 0's based: Asynchronous Event Requests outstanding at once, minus one.
    pub aerl: u8,
    pub max_cmd: u16,
    pub num_namespaces: u32,
    /// ONCS: optional NVM commands (bit 2 DSM, bit 3 Write Zeroes).
    pub oncs: u16,
    pub volatile_write_cache: bool,
    pub subnqn: String,
    /// I/O queue command capsule size, in 16-byte units (64-byte SQE + in-capsule data).
    pub ioccsz: u32,
    /// I/O queue response capsule size, in 16-byte units.
    pub iorcsz: u32,
}

/// SGLS: SGLs supported without alignment requirement (bits 1:0 = 01b) and the Address field
/// of a Data Block descriptor used as an offset (bit 20), which in-capsule data needs.
const SGLS: u32 = 0x1 | 1 << 20;
/// CMIC bit 1: the subsystem may have two or more controllers (hosts share namespaces).
const CMIC_MULTI_CONTROLLER: u8 = 0x2;
/// LPA bit 2: Get Log Page takes an offset and extended lengths.
const LPA_EXTENDED: u8 = 0x4;
/// SQES and CQES: required and maximum entry sizes, as powers of two (64 and 16 bytes).
const SQES: u8 = 0x66;
const CQES: u8 = 0x44;

impl ControllerData {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; IDENTIFY_LEN];
        ascii(&mut b[4..24], &self.serial);
        ascii(&mut b[24..64], &self.model);
        ascii(&mut b[64..72], &self.firmware);
        b[72] = 6; // RAB: recommended arbitration burst, as SPDK reports.
        b[76] = CMIC_MULTI_CONTROLLER;
        b[77] = self.mdts;
        put16(&mut b, 78, self.cntlid);
        put32(&mut b, 80, self.version);
        put32(&mut b, 92, self.oaes);
        b[111] = self.ctrl_type as u8;
        b[259] = self.aerl;
        b[261] = LPA_EXTENDED;
        b[262] = 127; // ELPE: error log entries, 0's based.
        put16(&mut b, 320, self.kas);
        if self.ctrl_type == ControllerType::Io {
            b[512] = SQES;
            b[513] = CQES;
            put32(&mut b, 516, self.num_namespaces);
            put16(&mut b, 520, self.oncs);
            b[525] = self.volatile_write_cache as u8;
        }
        put16(&mut b, 514, self.max_cmd);
        put32(&mut b, 536, SGLS);
        nul_padded(&mut b[768..1024], &self.subnqn);
        put32(&mut b, 1792, self.ioccsz);
        put32(&mut b, 1796, self.iorcsz);
        // ICDOFF (1800) 0: in-capsule data starts right after the SQE. MSDBD (1803): one
        // descriptor per command.
        b[1803] = 1;
        b
    }
}

/// The Identify Namespace fields for a namespace of one LBA format without metadata.
#[derive(Debug, Clone)]
pub struct NamespaceData {
    pub num_blocks: u64,
    pub block_size: u32,
    pub nguid: [u8; 16],
    /// NMIC bit 0: the namespace may be attached to two or more controllers.
    pub shared: bool,
}

impl NamespaceData {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; IDENTIFY_LEN];
        put64(&mut b, 0, self.num_blocks); // NSZE
        put64(&mut b, 8, self.num_blocks); // NCAP
        put64(&mut b, 16, self.num_blocks); // NUSE
        b[25] = 0; // NLBAF: one format (0's based).
        b[26] = 0; // FLBAS: format 0, no metadata.
        b[30] = self.shared as u8;
        b[104..120].copy_from_slice(&self.nguid);
        // LBAF0: MS 0, LBADS = log2(block size), RP 0.
        b[128 + 2] = self.block_size.trailing_zeros() as u8;
        b
    }
}

/// Namespace Identification Descriptor types (NIDT).
pub mod nidt {
    pub const EUI64: u8 = 1;
    pub const NGUID: u8 = 2;
    pub const UUID: u8 = 3;
}

/// The Namespace Identification Descriptor list (CNS 03h): NGUID and UUID descriptors, each
/// NIDT (1 byte), NIDL (1), two reserved bytes, then the identifier.
pub fn ns_descriptors(nguid: &[u8; 16], uuid: &[u8; 16]) -> Vec<u8> {
    let mut b = vec![0u8; IDENTIFY_LEN];
    b[0] = nidt::NGUID;
    b[1] = 16;
    b[4..20].copy_from_slice(nguid);
    b[20] = nidt::UUID;
    b[21] = 16;
    b[24..40].copy_from_slice(uuid);
    b
}

/// The Active Namespace ID list (CNS 02h): active NSIDs above `after`, ascending, at most 1024.
pub fn active_ns_list(nsids: impl IntoIterator<Item = u32>, after: u32) -> Vec<u8> {
    let mut b = vec![0u8; IDENTIFY_LEN];
    let mut ids: Vec<u32> = nsids.into_iter().filter(|&n| n > after).collect();
    ids.sort_unstable();
    for (i, id) in ids.into_iter().take(IDENTIFY_LEN / 4).enumerate() {
        put32(&mut b, 4 * i, id);
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nvme::le::{u16_at, u32_at, u64_at};

    fn ctrl() -> ControllerData {
        ControllerData {
            serial: "SN1".into(),
            model: "Tandem".into(),
            firmware: "0.1.0".into(),
            mdts: 5,
            cntlid: 7,
            version: crate::nvme::registers::VERSION_1_3,
            ctrl_type: ControllerType::Io,
            oaes: 1 << 8,
            kas: 10,
            aerl: 3,
            max_cmd: 128,
            num_namespaces: 32,
            oncs: 0xC,
            volatile_write_cache: false,
            subnqn: "nqn.2016-06.io.tandem:a".into(),
            ioccsz: 516,
            iorcsz: 1,
        }
    }

    #[test]
    fn controller_fields_sit_where_the_specification_puts_them() {
        let b = ctrl().encode();
        assert_eq!(&b[4..8], b"SN1 ");
        assert_eq!(&b[24..30], b"Tandem");
        assert_eq!(b[29], b'm');
        assert_eq!(b[30], b' ');
        assert_eq!(b[77], 5);
        assert_eq!(u16_at(&b, 78), 7);
        assert_eq!(u32_at(&b, 80), 0x0001_0300);
        assert_eq!(u16_at(&b, 320), 10);
        assert_eq!(b[512], 0x66);
        assert_eq!(u16_at(&b, 514), 128);
        assert_eq!(u32_at(&b, 516), 32);
        assert_eq!(u32_at(&b, 536) & 0x3, 1);
        assert_eq!(&b[768..791], b"nqn.2016-06.io.tandem:a");
        assert_eq!(b[791], 0);
        assert_eq!(u32_at(&b, 1792), 516);
        assert_eq!(u16_at(&b, 1800), 0);
    }

    #[test]
    fn discovery_controllers_leave_the_io_fields_zero() {
        let mut c = ctrl();
        c.ctrl_type = ControllerType::Discovery;
        let b = c.encode();
        assert_eq!(b[111], 2);
        assert_eq!(u32_at(&b, 516), 0);
        assert_eq!(b[512], 0);
    }

    #[test]
    fn namespace_reports_size_and_block_size() {
        let b = NamespaceData {
            num_blocks: 1000,
            block_size: 4096,
            nguid: [9; 16],
            shared: true,
        }
        .encode();
        assert_eq!(u64_at(&b, 0), 1000);
        assert_eq!(u64_at(&b, 8), 1000);
        assert_eq!(b[130], 12);
        assert_eq!(b[30], 1);
        assert_eq!(&b[104..120], &[9; 16]);
    }

    #[test]
    fn active_list_is_sorted_and_starts_after_the_given_id() {
        let b = active_ns_list([5, 1, 3], 1);
        assert_eq!(u32_at(&b, 0), 3);
        assert_eq!(u32_at(&b, 4), 5);
        assert_eq!(u32_at(&b, 8), 0);
    }
}
