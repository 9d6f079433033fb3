//! A block device: its identity and geometry, its backend, and the state descriptors and
//! channels share (removed or not, claimed or not, per-reactor statistics).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use super::backend::Backend;
use super::desc::DescInner;
use super::stats::{ChannelStats, IoStat};
use super::tap::WriteTap;
use super::{Error, IoType, Result};
use crate::reactor::{ReactorId, MAX_REACTORS};

static NEXT_BDEV_ID: AtomicU64 = AtomicU64::new(1);

/// What a backend's constructor tells the bdev layer about a new device.
#[derive(Debug, Clone)]
pub struct BdevInfo {
    pub name: String,
    /// 0 to generate one.
    pub uuid: u128,
    pub block_size: u32,
    pub num_blocks: u64,
}

pub(crate) struct BdevInner {
    pub(crate) id: u64,
    pub(crate) name: String,
    pub(crate) uuid: u128,
    pub(crate) block_size: u32,
    /// Changes only by [`Bdev::resize`].
    pub(crate) num_blocks: AtomicU64,
    pub(crate) backend: Box<dyn Backend>,
    pub(crate) removed: AtomicBool,
    /// Indexed by reactor id: a channel's counters outlive the channel, so totals never drop.
    stats: Box<[OnceLock<Arc<ChannelStats>>]>,
    /// Control path only (open, close, delete): who to tell when the bdev goes away.
    descs: Mutex<Vec<Weak<DescInner>>>,
    claim: Mutex<Option<String>>,
    /// Control path: the write tap (replication's splitter), if one is set.
    tap: Mutex<Option<Arc<dyn WriteTap>>>,
    /// Bumped by every [`Bdev::set_tap`]; channels compare it per write (see [`super::tap`]).
    pub(crate) tap_epoch: AtomicU64,
}

/// A block device. Cheap to clone; the device lives while anything holds it.
#[derive(Clone)]
pub struct Bdev(pub(crate) Arc<BdevInner>);

impl Bdev {
    /// Make a bdev around a backend (not yet registered: see [`super::register`]).
    pub fn new(info: BdevInfo, backend: Box<dyn Backend>) -> Result<Bdev> {
        if info.name.is_empty() || info.name.len() > 255 {
            return Err(Error::InvalidArgument(format!(
                "a bdev name is 1 to 255 bytes, not {}",
                info.name.len()
            )));
        }
        if !matches!(info.block_size, 512 | 4096) {
            return Err(Error::InvalidArgument(format!(
                "block size {} is not 512 or 4096",
                info.block_size
            )));
        }
        if info.num_blocks == 0 {
            return Err(Error::InvalidArgument("a bdev of zero blocks".into()));
        }
        Ok(Bdev(Arc::new(BdevInner {
            id: NEXT_BDEV_ID.fetch_add(1, Ordering::Relaxed),
            uuid: if info.uuid == 0 {
                random_uuid()
            } else {
                info.uuid
            },
            name: info.name,
            block_size: info.block_size,
            num_blocks: AtomicU64::new(info.num_blocks),
            backend,
            removed: AtomicBool::new(false),
            stats: (0..MAX_REACTORS).map(|_| OnceLock::new()).collect(),
            descs: Mutex::new(Vec::new()),
            claim: Mutex::new(None),
            tap: Mutex::new(None),
            tap_epoch: AtomicU64::new(0),
        })))
    }

    pub fn name(&self) -> &str {
        &self.0.name
    }

    pub fn uuid(&self) -> u128 {
        self.0.uuid
    }

    /// The UUID in its usual text form.
    pub fn uuid_string(&self) -> String {
        format_uuid(self.0.uuid)
    }

    pub fn block_size(&self) -> u32 {
        self.0.block_size
    }

    pub fn num_blocks(&self) -> u64 {
        self.0.num_blocks.load(Ordering::Acquire)
    }

    pub fn size_bytes(&self) -> u64 {
        self.num_blocks() * self.0.block_size as u64
    }

    /// Grow or shrink the device (a volume's `bdev_lvol_resize`). I/O checked after this sees
    /// the new size; a namespace exporting the bdev keeps the size it reported.
    pub fn resize(&self, num_blocks: u64) -> Result<()> {
        if num_blocks == 0 {
            return Err(Error::InvalidArgument("a bdev of zero blocks".into()));
        }
        self.0.num_blocks.store(num_blocks, Ordering::Release);
        Ok(())
    }

    pub fn product_name(&self) -> &'static str {
        self.0.backend.product_name()
    }

    pub fn supports(&self, io_type: IoType) -> bool {
        self.0.backend.supports(io_type)
    }

    /// Alignment every buffer segment must have.
    pub fn buf_align(&self) -> usize {
        self.0.backend.buf_align()
    }

    pub fn is_removed(&self) -> bool {
        self.0.removed.load(Ordering::Acquire)
    }

    pub fn driver_specific(&self) -> serde_json::Value {
        self.0.backend.driver_specific()
    }

    /// Totals over every channel this bdev has had.
    pub fn iostat(&self) -> IoStat {
        let mut total = IoStat::default();
        for slot in self.0.stats.iter() {
            if let Some(s) = slot.get() {
                s.add_to(&mut total);
            }
        }
        total
    }

    /// Claim the bdev for a module (an error bdev over it, a volume store): a second claim fails.
    pub fn claim(&self, by: &str) -> Result<()> {
        let mut claim = self.0.claim.lock().unwrap_or_else(|p| p.into_inner());
        match &*claim {
            Some(holder) => Err(Error::Claimed {
                bdev: self.0.name.clone(),
                by: holder.clone(),
            }),
            None => {
                *claim = Some(by.to_owned());
                Ok(())
            }
        }
    }

    pub fn release_claim(&self) {
        *self.0.claim.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Put a write tap in front of the backend (`Some`), or take it away (`None`). Writes
    /// submitted after this returns see the change; writes already issued do not, so a tap that
    /// must see every write waits for those itself. A second tap is refused.
    pub fn set_tap(&self, tap: Option<Arc<dyn WriteTap>>) -> Result<()> {
        let mut slot = self.0.tap.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_some() && tap.is_some() {
            return Err(Error::Claimed {
                bdev: self.0.name.clone(),
                by: "a write tap (a replication relationship)".into(),
            });
        }
        *slot = tap;
        self.0.tap_epoch.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    pub fn has_tap(&self) -> bool {
        self.0
            .tap
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    pub fn claimed_by(&self) -> Option<String> {
        self.0
            .claim
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl std::fmt::Debug for Bdev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bdev")
            .field("name", &self.0.name)
            .field("product", &self.product_name())
            .field("block_size", &self.0.block_size)
            .field("num_blocks", &self.num_blocks())
            .finish()
    }
}

impl BdevInner {
    /// The tap now set, with the epoch it was read at (control path: a channel refreshing).
    pub(crate) fn current_tap(&self) -> (u64, Option<Arc<dyn WriteTap>>) {
        let slot = self.tap.lock().unwrap_or_else(|p| p.into_inner());
        (self.tap_epoch.load(Ordering::Acquire), slot.clone())
    }

    pub(crate) fn stats_for(&self, reactor: ReactorId) -> Arc<ChannelStats> {
        Arc::clone(self.stats[reactor.0 as usize].get_or_init(Default::default))
    }

    pub(crate) fn add_desc(&self, desc: &Arc<DescInner>) {
        let mut descs = self.descs.lock().unwrap_or_else(|p| p.into_inner());
        descs.retain(|d| d.strong_count() > 0);
        descs.push(Arc::downgrade(desc));
    }

    /// Mark removed and return the descriptors to tell.
    pub(crate) fn mark_removed(&self) -> Vec<Arc<DescInner>> {
        self.removed.store(true, Ordering::Release);
        self.backend.on_remove();
        let descs = self.descs.lock().unwrap_or_else(|p| p.into_inner());
        descs.iter().filter_map(Weak::upgrade).collect()
    }
}

/// A fresh version-4 UUID.
pub fn random_uuid() -> u128 {
    // Version 4 from the kernel's random source; a UUID needs uniqueness, not secrecy.
    let mut bytes = [0u8; 16];
    // SAFETY: getrandom writes at most 16 bytes into our 16-byte buffer.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != 16 {
        let t = crate::sys::monotonic_ns() as u128;
        bytes = (t ^ (NEXT_BDEV_ID.load(Ordering::Relaxed) as u128) << 64).to_le_bytes();
    }
    let mut v = u128::from_be_bytes(bytes);
    v = (v & !(0xF << 76)) | (0x4 << 76); // version 4
    v = (v & !(0x3 << 62)) | (0x2 << 62); // RFC 4122 variant
    v
}

pub fn format_uuid(u: u128) -> String {
    let b = u.to_be_bytes();
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Parse a UUID in its usual text form.
pub fn parse_uuid(s: &str) -> Option<u128> {
    let hex: String = s.chars().filter(|&c| c != '-').collect();
    if hex.len() != 32 || s.len() != 36 {
        return None;
    }
    u128::from_str_radix(&hex, 16).ok()
}
