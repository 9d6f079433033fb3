//! Controller properties (NVMe Base 2.0, "Controller Registers"), which a Fabrics host reads
//! and writes with Property Get and Property Set.

/// Controller Capabilities (8 bytes).
pub const CAP: u32 = 0x00;
/// Version (4 bytes).
pub const VS: u32 = 0x08;
/// Controller Configuration (4 bytes).
pub const CC: u32 = 0x14;
/// Controller Status (4 bytes).
pub const CSTS: u32 = 0x1C;

/// NVMe 1.3: the version whose features (namespace identification descriptors) hosts expect.
pub const VERSION_1_3: u32 = 0x0001_0300;

/// CAP: MQES (0's based) 15:0, CQR 16, TO 31:24 in 500 ms units, CSS bit 37 (NVM command set),
/// MPSMIN 51:48 and MPSMAX 55:52 (4 KiB << n).
pub fn cap(mqes: u16, timeout_500ms: u8) -> u64 {
    mqes as u64 | 1 << 16 | (timeout_500ms as u64) << 24 | 1 << 37
}

pub mod cc {
    pub const EN: u32 = 1;
    pub const SHN_SHIFT: u32 = 14;
    pub const SHN_MASK: u32 = 0x3 << SHN_SHIFT;
    /// Fields a host may set: EN, CSS, MPS, AMS, SHN, IOSQES, IOCQES.
    pub const WRITABLE: u32 = 0x00FF_FFF1;
}

pub mod csts {
    pub const RDY: u32 = 1;
    pub const CFS: u32 = 1 << 1;
    /// SHST = 10b: shutdown processing complete.
    pub const SHST_COMPLETE: u32 = 0x2 << 2;
}
