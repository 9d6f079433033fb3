//! The dirty region log of a replication relationship: which regions of the primary volume may
//! differ from the secondary, in memory for the data path and on disk for a primary crash.
//!
//! **In memory** it is arrays of atomic words, one bit (or one counter) per region, read and
//! changed with single atomic operations: no lock, no allocation, no syscall per write.
//! - `dirty`: written on the primary and not (known to be) on the secondary: out-of-sync writes,
//!   writes the secondary failed, the last incremental diff when establishing;
//! - `active`: in-sync writes in flight, per region (a counter);
//! - `copying`: regions the cutover scanner is copying;
//! - `durable`: regions the log on disk covers.
//!
//! **On disk** (write intent): a region must be covered before any write to it is issued to
//! the primary, because from that instant the two sides may differ; so a write whose regions
//! are not all `durable` waits for the next flush. A flush (batched: one for all the writes
//! waiting) persists `durable ∪ dirty ∪ copying ∪ active`, minus the regions it can drop:
//! those durable but in no use. A region is dropped by clearing its `durable` bit first and
//! then looking whether it is in use; a writer marks its use first and then looks at
//! `durable`. With sequentially consistent operations on both sides, either the writer sees
//! the bit cleared (and waits for the next flush, which covers it) or the flush sees the use
//! (and keeps the region). So after a primary crash at any instant, the log on disk covers
//! every region that may differ, and, while in sync, not much more than the writes in flight.

use std::sync::atomic::{
    AtomicU32, AtomicU64,
    Ordering::{Relaxed, SeqCst},
};

/// The smallest and largest region, and the default.
pub const MIN_REGION: u64 = 64 << 10;
pub const MAX_REGION: u64 = 1 << 20;
pub const DEFAULT_REGION: u64 = 256 << 10;

/// Whether a write may be issued now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Its regions are on disk: issue it.
    Go,
    /// Wait for the next flush, then ask again (its use is already marked).
    Wait,
}

pub struct Drl {
    region_size: u64,
    regions: u64,
    dirty: Box<[AtomicU64]>,
    copying: Box<[AtomicU64]>,
    durable: Box<[AtomicU64]>,
    active: Box<[AtomicU32]>,
    /// The flush epoch each region was last written in: a flush keeps a region durable while
    /// it was used in the last few epochs (an activity log's hysteresis), so that a region
    /// written again soon does not wait for a flush each time.
    used_in: Box<[AtomicU64]>,
    /// Flushes begun.
    epoch: AtomicU64,
    /// Regions new writes wait at, so that the scanner can copy a region writes never leave.
    fenced: Box<[AtomicU64]>,
}

fn words(regions: u64) -> usize {
    regions.div_ceil(64) as usize
}

fn bit(r: u64) -> (usize, u64) {
    ((r / 64) as usize, 1u64 << (r % 64))
}

impl Drl {
    /// A log for a volume of `size` bytes in regions of `region_size` (a power of two from
    /// 64 KiB to 1 MiB), all clean and nothing on disk.
    pub fn new(size: u64, region_size: u64) -> Result<Drl, String> {
        if !region_size.is_power_of_two() || !(MIN_REGION..=MAX_REGION).contains(&region_size) {
            return Err(format!(
                "region size {region_size}: a power of two from 64 KiB to 1 MiB"
            ));
        }
        let regions = size.div_ceil(region_size);
        let zeros = |n: usize| (0..n).map(|_| AtomicU64::new(0)).collect();
        Ok(Drl {
            region_size,
            regions,
            dirty: zeros(words(regions)),
            copying: zeros(words(regions)),
            durable: zeros(words(regions)),
            active: (0..regions).map(|_| AtomicU32::new(0)).collect(),
            used_in: (0..regions).map(|_| AtomicU64::new(0)).collect(),
            epoch: AtomicU64::new(0),
            fenced: zeros(words(regions)),
        })
    }

    pub fn region_size(&self) -> u64 {
        self.region_size
    }

    pub fn regions(&self) -> u64 {
        self.regions
    }

    /// The regions `[off, off + len)` touches.
    pub fn regions_of(&self, off: u64, len: u64) -> std::ops::Range<u64> {
        let first = off / self.region_size;
        let end = off.saturating_add(len.max(1)).div_ceil(self.region_size);
        first.min(self.regions)..end.min(self.regions)
    }

    /// Whether the log on disk covers `[off, off + len)`: a write that was told to wait asks
    /// this after each flush.
    pub fn covered(&self, off: u64, len: u64) -> bool {
        self.all_durable(self.regions_of(off, len))
    }

    fn all_durable(&self, rs: std::ops::Range<u64>) -> bool {
        rs.into_iter().all(|r| {
            let (w, b) = bit(r);
            self.durable[w].load(SeqCst) & b != 0
        })
    }

    /// Regions that differ without a write of the primary's (what an incremental transfer left
    /// when establishing): dirty, for the scanner.
    pub fn mark_dirty(&self, off: u64, len: u64) {
        for r in self.regions_of(off, len) {
            let (w, b) = bit(r);
            self.dirty[w].fetch_or(b, SeqCst);
        }
    }

    /// A client write begins: its regions are active until [`Drl::end_write`] (so a copy of
    /// them meanwhile does not count), and dirty too when it will not go to the secondary
    /// (`split` false: out of sync, or into a dirty region while establishing). It may be
    /// issued once its regions are on disk.
    pub fn begin_write(&self, off: u64, len: u64, split: bool) -> Admit {
        self.enter(off, len);
        if !split {
            self.mark_dirty(off, len);
        }
        self.admit(off, len)
    }

    /// The splitter's first step for a write: its regions are active from now on, and the
    /// answer says whether any of them is dirty or being copied (then the write goes to the
    /// primary only and leaves its regions dirty: see [`Drl::begin_copy`] for the other side
    /// of this race). Follow with [`Drl::mark_dirty`] if it will not go to both sides, then
    /// [`Drl::admit`].
    pub fn enter(&self, off: u64, len: u64) -> bool {
        let rs = self.regions_of(off, len);
        let epoch = self.epoch.load(Relaxed);
        for r in rs.clone() {
            self.active[r as usize].fetch_add(1, SeqCst);
            if self.used_in[r as usize].load(Relaxed) != epoch {
                self.used_in[r as usize].store(epoch, Relaxed);
            }
        }
        rs.into_iter().any(|r| {
            let (w, b) = bit(r);
            (self.dirty[w].load(SeqCst) | self.copying[w].load(SeqCst)) & b != 0
        })
    }

    /// Whether a write that [entered](Drl::enter) may be issued: its regions are on disk.
    pub fn admit(&self, off: u64, len: u64) -> Admit {
        if self.covered(off, len) {
            Admit::Go
        } else {
            Admit::Wait
        }
    }

    /// A client write is done; `both`: it is on the secondary too. Otherwise its regions are
    /// dirty, set again now so that a copy that ran while the write was in flight (and so may
    /// have read the old bytes) does not leave them clean.
    pub fn end_write(&self, off: u64, len: u64, both: bool) {
        for r in self.regions_of(off, len) {
            if !both {
                let (w, b) = bit(r);
                self.dirty[w].fetch_or(b, SeqCst);
            }
            self.active[r as usize].fetch_sub(1, SeqCst);
        }
    }

    pub fn is_dirty(&self, r: u64) -> bool {
        let (w, b) = bit(r);
        self.dirty[w].load(SeqCst) & b != 0
    }

    /// Dirty regions, and bytes.
    pub fn dirty_regions(&self) -> u64 {
        self.dirty
            .iter()
            .map(|w| w.load(SeqCst).count_ones() as u64)
            .sum()
    }

    /// The first dirty region at or after `from`, for the scanner.
    pub fn next_dirty(&self, from: u64) -> Option<u64> {
        let mut w = (from / 64) as usize;
        let mut mask = !0u64 << (from % 64);
        while w < self.dirty.len() {
            let bits = self.dirty[w].load(SeqCst) & mask;
            if bits != 0 {
                let r = w as u64 * 64 + bits.trailing_zeros() as u64;
                return (r < self.regions).then_some(r);
            }
            w += 1;
            mask = !0;
        }
        None
    }

    /// The scanner takes dirty region `r` to copy it: clean in memory from now on (a write
    /// meanwhile makes it dirty again, and it is copied again), covered on disk until the copy
    /// is done. `false` when it was not dirty, when it is being copied already, or when a write
    /// to it is in flight: a write the
    /// splitter sent to both sides might land on the secondary before the copy's stale bytes
    /// do. The scanner marks `copying` and then looks at the writes; a writer marks itself
    /// active and then looks at `copying` ([`Drl::enter`]): with sequentially consistent
    /// operations, either the copy sees the write and stands down, or the write sees the copy
    /// and leaves the region dirty.
    pub fn begin_copy(&self, r: u64) -> bool {
        let (w, b) = bit(r);
        if self.copying[w].fetch_or(b, SeqCst) & b != 0 {
            // A copy of it is in flight (and a write has dirtied it again since): one copy at
            // a time, or the first one's end would clear the bit under the second.
            return false;
        }
        // Writes first: standing down must leave the region as dirty as it was, never clean
        // for an instant (a cutover deciding then would miss it).
        if self.active[r as usize].load(SeqCst) != 0 || self.dirty[w].fetch_and(!b, SeqCst) & b == 0
        {
            self.copying[w].fetch_and(!b, SeqCst);
            return false;
        }
        true
    }

    /// The copy of `r` is done (`ok`) or failed (dirty again).
    pub fn end_copy(&self, r: u64, ok: bool) {
        let (w, b) = bit(r);
        if !ok {
            self.dirty[w].fetch_or(b, SeqCst);
        }
        self.copying[w].fetch_and(!b, SeqCst);
    }

    /// Hold new writes to region `r` off (they wait in their reactors) until [`Drl::unfence`]:
    /// the scanner does this to a region it keeps finding written, so that the writes in
    /// flight drain and it can be copied.
    pub fn fence(&self, r: u64) {
        let (w, b) = bit(r);
        self.fenced[w].fetch_or(b, SeqCst);
    }

    pub fn unfence(&self, r: u64) {
        let (w, b) = bit(r);
        self.fenced[w].fetch_and(!b, SeqCst);
    }

    /// Whether a write to `[off, off + len)` must wait at a fence.
    pub fn fenced(&self, off: u64, len: u64) -> bool {
        self.regions_of(off, len).into_iter().any(|r| {
            let (w, b) = bit(r);
            self.fenced[w].load(SeqCst) & b != 0
        })
    }

    /// Every region may differ (the secondary lost what it had acknowledged).
    pub fn mark_all_dirty(&self) {
        self.mark_dirty(0, self.regions * self.region_size);
    }

    pub fn is_copying(&self, r: u64) -> bool {
        let (w, b) = bit(r);
        self.copying[w].load(SeqCst) & b != 0
    }

    /// Regions the log on disk covers now.
    pub fn durable_regions(&self) -> u64 {
        self.durable
            .iter()
            .map(|w| w.load(SeqCst).count_ones() as u64)
            .sum()
    }

    /// Regions being copied now.
    pub fn copying_regions(&self) -> u64 {
        self.copying
            .iter()
            .map(|w| w.load(SeqCst).count_ones() as u64)
            .sum()
    }

    /// Writes in flight over all regions (a region counted once per write touching it).
    pub fn active_writes(&self) -> u64 {
        self.active.iter().map(|a| a.load(SeqCst) as u64).sum()
    }

    fn in_use(&self, r: u64) -> bool {
        let (w, b) = bit(r);
        (self.dirty[w].load(SeqCst) | self.copying[w].load(SeqCst)) & b != 0
            || self.active[r as usize].load(SeqCst) != 0
    }

    /// Begin a flush: drop the durable regions in no use (see the module), and return the set
    /// to write: what stays durable and everything in use. Once it is on disk, call
    /// [`Drl::flushed`] with it.
    pub fn begin_flush(&self) -> Vec<u64> {
        self.next_epoch();
        self.begin_flush_keeping(0)
    }

    /// End the log's epoch: regions written before now count as idle for one more epoch.
    pub fn next_epoch(&self) {
        self.epoch.fetch_add(1, SeqCst);
    }

    /// [`Drl::begin_flush`], but a region written during the last `keep_epochs` epochs stays
    /// durable even when no write to it is in flight. The log on disk then covers the regions
    /// written since `keep_epochs` epochs ago, besides everything that may differ. The caller
    /// ends an epoch with [`Drl::next_epoch`] (on a clock: a trim); `u64::MAX` drops nothing
    /// (a flush for waiting writes).
    pub fn begin_flush_keeping(&self, keep_epochs: u64) -> Vec<u64> {
        let epoch = self.epoch.load(SeqCst);
        let mut out = vec![0u64; self.dirty.len()];
        for (i, o) in out.iter_mut().enumerate() {
            let durable = self.durable[i].load(SeqCst);
            let mut keep = durable;
            let mut bits = durable;
            while bits != 0 {
                let b = bits & bits.wrapping_neg();
                bits &= !b;
                let r = i as u64 * 64 + b.trailing_zeros() as u64;
                let idle = epoch.saturating_sub(self.used_in[r as usize].load(Relaxed));
                let recent = idle <= keep_epochs;
                if !recent && !self.in_use(r) {
                    self.durable[i].fetch_and(!b, SeqCst);
                    if self.in_use(r) {
                        // A writer came between: it may have seen the bit; keep the region.
                        self.durable[i].fetch_or(b, SeqCst);
                    } else {
                        keep &= !b;
                    }
                }
            }
            let mut used = self.dirty[i].load(SeqCst) | self.copying[i].load(SeqCst);
            for k in 0..64u64 {
                let r = i as u64 * 64 + k;
                if r < self.regions && self.active[r as usize].load(SeqCst) != 0 {
                    used |= 1 << k;
                }
            }
            *o = keep | used;
        }
        out
    }

    /// The set [`Drl::begin_flush`] gave is on disk: its regions are durable.
    pub fn flushed(&self, set: &[u64]) {
        for (d, s) in self.durable.iter().zip(set) {
            d.fetch_or(*s, SeqCst);
        }
    }

    /// After a primary restart: the log read from disk is what may differ. Everything in it is
    /// dirty (the scanner copies it) and durable.
    pub fn recover(&self, set: &[u64]) -> Result<(), String> {
        if set.len() != self.dirty.len() {
            return Err(format!(
                "a log of {} words for {} regions",
                set.len(),
                self.regions
            ));
        }
        let tail = self.regions % 64;
        if tail != 0 && set.last().is_some_and(|w| w >> tail != 0) {
            return Err("a log marking regions past the volume's end".into());
        }
        for ((d, du), s) in self.dirty.iter().zip(self.durable.iter()).zip(set) {
            d.fetch_or(*s, SeqCst);
            du.fetch_or(*s, SeqCst);
        }
        Ok(())
    }
}

/// The log as the store keeps it: region size (8), regions (8), then the words.
pub fn encode(region_size: u64, regions: u64, set: &[u64]) -> Vec<u8> {
    let mut b = Vec::with_capacity(16 + 8 * set.len());
    b.extend_from_slice(&region_size.to_le_bytes());
    b.extend_from_slice(&regions.to_le_bytes());
    for w in set {
        b.extend_from_slice(&w.to_le_bytes());
    }
    b
}

/// (region size, regions, words), or why the bytes are not a log.
pub fn decode(b: &[u8]) -> Result<(u64, u64, Vec<u64>), String> {
    if b.len() < 16 || b.len() % 8 != 0 {
        return Err(format!("a dirty region log of {} bytes", b.len()));
    }
    let word = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    let (region_size, regions) = (word(0), word(1));
    if !region_size.is_power_of_two() || !(MIN_REGION..=MAX_REGION).contains(&region_size) {
        return Err(format!(
            "a dirty region log with regions of {region_size} bytes"
        ));
    }
    let set: Vec<u64> = (2..b.len() / 8).map(word).collect();
    if set.len() as u64 != regions.div_ceil(64) {
        return Err(format!(
            "a dirty region log of {} words for {regions} regions",
            set.len()
        ));
    }
    Ok((region_size, regions, set))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[derive(Debug, Clone)]
    enum Step {
        /// A client write to region r, split to both sides or not; it waits for a flush when
        /// its region is not covered.
        Write { r: u8, split: bool },
        /// The oldest issued write ends; a split one reached the secondary or not.
        End { both: bool },
        /// The scanner copies the next dirty region, successfully or not.
        Copy { ok: bool },
        /// A flush starts; `land`: and reaches the disk before the next step.
        Flush { land: bool },
        /// A flush in progress lands.
        Land,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            5 => (0..20u8, any::<bool>()).prop_map(|(r, split)| Step::Write { r, split }),
            3 => any::<bool>().prop_map(|both| Step::End { both }),
            2 => any::<bool>().prop_map(|ok| Step::Copy { ok }),
            2 => any::<bool>().prop_map(|land| Step::Flush { land }),
            1 => Just(Step::Land),
        ]
    }

    proptest! {
        /// At every instant, what is on disk covers every region that may differ: one with an
        /// issued write not yet on both sides, or written and not copied completely since.
        #[test]
        fn the_log_on_disk_covers_what_may_differ(steps in proptest::collection::vec(step(), 1..200)) {
            let rs = MIN_REGION;
            let drl = Drl::new(20 * rs, rs).unwrap();
            let mut on_disk: Vec<u64> = vec![0; 1];
            // A flush under way: its set, and its number.
            let mut pending: Option<(Vec<u64>, u64)> = None;
            let mut flushes = 0u64;
            // Client writes in flight: (region, split, issued, flushes begun before it).
            let mut writes: Vec<(u64, bool, bool, u64)> = Vec::new();
            // Regions that may differ: the model.
            let mut differ: BTreeSet<u64> = BTreeSet::new();
            for s in steps {
                match s {
                    Step::Write { r, split } => {
                        let r = r as u64;
                        let go = drl.begin_write(r * rs, 4096, split) == Admit::Go;
                        if go {
                            differ.insert(r);
                        }
                        writes.push((r, split, go, flushes));
                    }
                    Step::End { both } => {
                        if let Some(i) = writes.iter().position(|w| w.2) {
                            let (r, split, _, _) = writes.remove(i);
                            let both = both && split;
                            drl.end_write(r * rs, 4096, both);
                            let busy = writes.iter().any(|w| w.0 == r && w.2);
                            if both && !drl.is_dirty(r) && !busy {
                                differ.remove(&r);
                            }
                        }
                    }
                    Step::Copy { ok } => {
                        if let Some(r) = drl.next_dirty(0) {
                            if !drl.begin_copy(r) {
                                // Refused only while a write to the region is in flight.
                                prop_assert!(writes.iter().any(|w| w.0 == r));
                                prop_assert!(drl.is_dirty(r));
                                continue;
                            }
                            drl.end_copy(r, ok);
                            let busy = writes.iter().any(|w| w.0 == r && w.2);
                            if ok && !drl.is_dirty(r) && !busy {
                                differ.remove(&r);
                            }
                        }
                    }
                    Step::Flush { land } => {
                        if pending.is_none() {
                            flushes += 1;
                            pending = Some((drl.begin_flush(), flushes));
                        }
                        if !land {
                            continue;
                        }
                    }
                    Step::Land => {}
                }
                let lands = matches!(s, Step::Flush { .. } | Step::Land);
                if let Some((set, n)) = pending.take_if(|_| lands) {
                    on_disk = set.clone();
                    drl.flushed(&set);
                    // Every write begun before this flush is covered by it: none waits forever.
                    for w in writes.iter().filter(|w| w.3 < n) {
                        prop_assert!(drl.covered(w.0 * rs, 4096), "a write to region {} waits after a flush begun after it", w.0);
                    }
                }
                // Writes that waited for a flush are issued once covered.
                for w in writes.iter_mut().filter(|w| !w.2) {
                    if drl.covered(w.0 * rs, 4096) {
                        w.2 = true;
                        differ.insert(w.0);
                    }
                }
                for r in &differ {
                    prop_assert!(on_disk[0] & (1 << r) != 0, "region {r} may differ and the log on disk lacks it: {on_disk:?}");
                }
            }
        }
    }

    /// Writers on two threads race a flusher that keeps dropping unused regions: a write told
    /// to go must find its region in every set that lands while it is in flight (the drop's
    /// clear-then-look against the writer's mark-then-look).
    #[test]
    fn a_flush_never_drops_a_region_a_racing_write_was_told_is_covered() {
        use std::sync::atomic::{AtomicBool, AtomicUsize};
        use std::sync::Arc;
        const CAP: usize = 1 << 20;
        let drl = Arc::new(Drl::new(8 * MIN_REGION, MIN_REGION).unwrap());
        // Every set that landed, in order: one writer (the flusher), published by the count.
        let landed: Arc<(Vec<AtomicU64>, AtomicUsize)> = Arc::new((
            (0..CAP).map(|_| AtomicU64::new(0)).collect(),
            AtomicUsize::new(0),
        ));
        let stop = Arc::new(AtomicBool::new(false));
        let flusher = {
            let (drl, landed, stop) = (drl.clone(), landed.clone(), stop.clone());
            std::thread::spawn(move || {
                let (sets, count) = &*landed;
                while !stop.load(SeqCst) {
                    let n = count.load(SeqCst);
                    if n == CAP {
                        break;
                    }
                    let set = drl.begin_flush();
                    sets[n].store(set[0], SeqCst);
                    count.store(n + 1, SeqCst);
                    drl.flushed(&set);
                }
            })
        };
        let writers: Vec<_> = (0..2u64)
            .map(|t| {
                let (drl, landed) = (drl.clone(), landed.clone());
                std::thread::spawn(move || {
                    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
                    for i in 0..20_000u64 {
                        if std::time::Instant::now() > deadline {
                            break;
                        }
                        let r = (i * 7 + t * 3) % 8;
                        if drl.begin_write(r * MIN_REGION, 4096, true) == Admit::Wait {
                            while !drl.covered(r * MIN_REGION, 4096) {
                                std::hint::spin_loop();
                            }
                        }
                        // Issued: from here every set that lands must hold r.
                        let (sets, count) = &*landed;
                        let from = count.load(SeqCst);
                        std::hint::spin_loop();
                        let to = count.load(SeqCst);
                        drl.end_write(r * MIN_REGION, 4096, true);
                        for set in &sets[from..to] {
                            let set = set.load(SeqCst);
                            assert!(set & (1 << r) != 0, "region {r} dropped while in flight");
                        }
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        stop.store(true, SeqCst);
        flusher.join().unwrap();
        assert!(landed.1.load(SeqCst) > 10, "the flusher ran");
    }

    #[test]
    fn a_recovered_log_is_all_dirty_and_refuses_bad_bytes() {
        let drl = Drl::new(200 * MIN_REGION, MIN_REGION).unwrap();
        let mut set = vec![0u64; 4];
        set[1] = 0b101;
        let bytes = encode(MIN_REGION, 200, &set);
        let (size, regions, got) = decode(&bytes).unwrap();
        assert_eq!((size, regions, &got), (MIN_REGION, 200, &set));
        drl.recover(&got).unwrap();
        assert_eq!(drl.next_dirty(0), Some(64));
        assert_eq!(drl.next_dirty(65), Some(66));
        assert_eq!(drl.dirty_regions(), 2);
        assert!(decode(&bytes[..20]).is_err());
        assert!(decode(&encode(MIN_REGION, 300, &set)).is_err());
        let mut past = set.clone();
        past[3] = 1 << 20;
        assert!(drl.recover(&past).is_err(), "region 212 is past 200");
        assert!(Drl::new(1 << 30, 3 << 16).is_err());
    }
}
