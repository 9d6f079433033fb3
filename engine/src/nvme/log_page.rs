//! Log pages (NVMe Base 2.0, "Log Page Identifiers"; NVMe over Fabrics 1.1, "Discovery Log
//! Page") and the Get Log Page command's fields.

use super::le::{ascii, nul_padded};
use super::Sqe;

pub mod lid {
    pub const ERROR: u8 = 0x01;
    pub const SMART: u8 = 0x02;
    pub const FIRMWARE_SLOT: u8 = 0x03;
    pub const CHANGED_NS_LIST: u8 = 0x04;
    pub const DISCOVERY: u8 = 0x70;
}

/// Get Log Page: LID cdw10 7:0, RAE cdw10 bit 15, NUMDL cdw10 31:16, NUMDU cdw11 15:0 (dwords,
/// 0's based), LPOL/LPOU cdw12/13 (byte offset).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GetLogPage {
    pub lid: u8,
    /// Retain Asynchronous Event: reading does not clear the event.
    pub rae: bool,
    pub len: usize,
    pub offset: u64,
}

impl GetLogPage {
    pub fn from_sqe(s: &Sqe) -> GetLogPage {
        let numd = (s.cdw(10) >> 16) as u64 | ((s.cdw(11) & 0xFFFF) as u64) << 16;
        GetLogPage {
            lid: s.cdw(10) as u8,
            rae: s.cdw(10) & (1 << 15) != 0,
            len: ((numd + 1) * 4) as usize,
            offset: s.cdw(12) as u64 | (s.cdw(13) as u64) << 32,
        }
    }
}

/// The slice of `page` that a Get Log Page at `offset` for `len` bytes returns; past the end
/// reads as zeros.
pub fn window(page: &[u8], offset: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    if let Ok(start) = usize::try_from(offset) {
        if start < page.len() {
            let n = (page.len() - start).min(len);
            out[..n].copy_from_slice(&page[start..start + n]);
        }
    }
    out
}

pub const SMART_LEN: usize = 512;
pub const CHANGED_NS_LEN: usize = 4096;
pub const FIRMWARE_SLOT_LEN: usize = 512;

/// SMART / Health Information: all zero (no warnings, no wear) except the composite
/// temperature, reported as a plausible 300 K.
pub fn smart() -> Vec<u8> {
    let mut b = vec![0u8; SMART_LEN];
    b[1..3].copy_from_slice(&300u16.to_le_bytes());
    b
}

/// Changed Namespace List: up to 1024 NSIDs; more than that is reported as 0xFFFFFFFF alone.
pub fn changed_ns_list(nsids: &[u32]) -> Vec<u8> {
    let mut b = vec![0u8; CHANGED_NS_LEN];
    if nsids.len() > CHANGED_NS_LEN / 4 {
        b[..4].copy_from_slice(&u32::MAX.to_le_bytes());
    } else {
        for (i, n) in nsids.iter().enumerate() {
            b[4 * i..4 * i + 4].copy_from_slice(&n.to_le_bytes());
        }
    }
    b
}

/// Discovery log page: a 1024-byte header (GENCTR 0, NUMREC 8, RECFMT 16) and one 1024-byte
/// entry per record.
pub const DISCOVERY_HEADER_LEN: usize = 1024;
pub const DISCOVERY_ENTRY_LEN: usize = 1024;

pub mod trtype {
    pub const TCP: u8 = 3;
}
pub mod adrfam {
    pub const IPV4: u8 = 1;
    pub const IPV6: u8 = 2;
}
pub mod subtype {
    pub const NVM: u8 = 2;
    /// The discovery subsystem answering the request (NVMe-oF 1.1).
    pub const CURRENT_DISCOVERY: u8 = 3;
}
/// TREQ: secure channel requirement not specified (bits 1:0 = 00b, which hosts do not take for a
/// TLS hint), and bit 2: the controller supports disabling SQ flow control.
pub const TREQ_SQFLOW_DISABLE_SUPPORTED: u8 = 0x4;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryEntry {
    pub trtype: u8,
    pub adrfam: u8,
    pub subtype: u8,
    pub treq: u8,
    pub portid: u16,
    pub cntlid: u16,
    pub asqsz: u16,
    pub trsvcid: String,
    pub subnqn: String,
    pub traddr: String,
}

impl DiscoveryEntry {
    pub fn encode(&self) -> [u8; DISCOVERY_ENTRY_LEN] {
        let mut b = [0u8; DISCOVERY_ENTRY_LEN];
        b[0] = self.trtype;
        b[1] = self.adrfam;
        b[2] = self.subtype;
        b[3] = self.treq;
        b[4..6].copy_from_slice(&self.portid.to_le_bytes());
        b[6..8].copy_from_slice(&self.cntlid.to_le_bytes());
        b[8..10].copy_from_slice(&self.asqsz.to_le_bytes());
        ascii(&mut b[32..64], &self.trsvcid);
        nul_padded(&mut b[256..512], &self.subnqn);
        ascii(&mut b[512..768], &self.traddr);
        // TSAS (768..1024) for TCP: SECTYPE 0, no security.
        b
    }
}

/// The whole discovery log page: header then entries.
pub fn discovery_log(genctr: u64, entries: &[DiscoveryEntry]) -> Vec<u8> {
    let mut b = vec![0u8; DISCOVERY_HEADER_LEN + entries.len() * DISCOVERY_ENTRY_LEN];
    b[..8].copy_from_slice(&genctr.to_le_bytes());
    b[8..16].copy_from_slice(&(entries.len() as u64).to_le_bytes());
    for (i, e) in entries.iter().enumerate() {
        let at = DISCOVERY_HEADER_LEN + i * DISCOVERY_ENTRY_LEN;
        b[at..at + DISCOVERY_ENTRY_LEN].copy_from_slice(&e.encode());
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_log_page_counts_dwords_from_zero() {
        let mut s = Sqe::default();
        s.cdw[0] = 0x70 | 1 << 15 | 255 << 16;
        s.cdw[1] = 1;
        s.cdw[2] = 1024;
        let g = GetLogPage::from_sqe(&s);
        assert_eq!(g.lid, 0x70);
        assert!(g.rae);
        assert_eq!(g.len, ((1 << 16) + 256) * 4);
        assert_eq!(g.offset, 1024);
    }

    #[test]
    fn window_honours_offsets_and_pads_with_zeros() {
        let page: Vec<u8> = (0..10).collect();
        assert_eq!(window(&page, 8, 4), vec![8, 9, 0, 0]);
        assert_eq!(window(&page, 100, 2), vec![0, 0]);
        assert_eq!(window(&page, u64::MAX, 2), vec![0, 0]);
    }

    #[test]
    fn discovery_log_counts_records() {
        let e = DiscoveryEntry {
            trtype: trtype::TCP,
            adrfam: adrfam::IPV4,
            subtype: subtype::NVM,
            treq: TREQ_SQFLOW_DISABLE_SUPPORTED,
            portid: 1,
            cntlid: 0xFFFF,
            asqsz: 128,
            trsvcid: "4420".into(),
            subnqn: "nqn.x".into(),
            traddr: "127.0.0.1".into(),
        };
        let b = discovery_log(7, &[e.clone(), e]);
        assert_eq!(b.len(), 3 * 1024);
        assert_eq!(b[0], 7);
        assert_eq!(b[8], 2);
        assert_eq!(&b[1024 + 32..1024 + 37], b"4420 ");
        assert_eq!(&b[2048 + 512..2048 + 521], b"127.0.0.1");
    }

    #[test]
    fn too_many_changes_overflow_to_all_ones() {
        let many: Vec<u32> = (1..=1025).collect();
        assert_eq!(&changed_ns_list(&many)[..4], &[0xFF; 4]);
        assert_eq!(&changed_ns_list(&[3])[..8], &[3, 0, 0, 0, 0, 0, 0, 0]);
    }
}
