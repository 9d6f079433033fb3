//! A volume's cluster map as the data path reads it: a flat array of atomic words, cluster
//! index to cluster, read without a lock by every reactor and written only by the store's owner.
//!
//! The array is a three-level radix of 4096-entry pages, so that a sparse 1 TiB volume costs
//! pages only where it has data, and a lookup is three loads. Pages are made by the owner and
//! live as long as the map.
//!
//! A word is 0 for a hole; otherwise its low 40 bits are the cluster and its high 24 bits the
//! snapshot epoch in which the volume last made the cluster its own. A cluster may be written in
//! place only when that epoch is the store's current one: a snapshot moves the epoch, so every
//! cluster of every volume becomes copy-on-write in O(1), and the owner re-stamps each as it
//! makes it the volume's own again.

use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

const BITS: u32 = 12;
const FAN: usize = 1 << BITS;
const CLUSTER_MASK: u64 = (1 << 40) - 1;
pub const EPOCH_MASK: u64 = (1 << 24) - 1;
/// The largest cluster index a map holds.
pub const MAX_CLUSTERS: u64 = 1 << (3 * BITS);

type Leaf = [AtomicU64; FAN];
type Mid = [AtomicPtr<Leaf>; FAN];

pub struct ClusterMap {
    top: Box<[AtomicPtr<Mid>; FAN]>,
}

/// One entry, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub cluster: u64,
    pub epoch: u64,
}

impl Entry {
    /// Whether a write may go into the cluster in place in `epoch`.
    pub fn writable_in(self, epoch: u64) -> bool {
        self.cluster != 0 && self.epoch == epoch & EPOCH_MASK
    }
}

fn new_array<T>(f: impl Fn() -> T) -> Box<[T; FAN]> {
    let v: Vec<T> = (0..FAN).map(|_| f()).collect();
    v.into_boxed_slice()
        .try_into()
        .unwrap_or_else(|_| unreachable!("FAN entries"))
}

impl Default for ClusterMap {
    fn default() -> Self {
        Self::new()
    }
}

impl ClusterMap {
    pub fn new() -> ClusterMap {
        ClusterMap {
            top: new_array(|| AtomicPtr::new(std::ptr::null_mut())),
        }
    }

    fn split(idx: u64) -> (usize, usize, usize) {
        let f = FAN as u64 - 1;
        (
            (idx >> (2 * BITS)) as usize & (FAN - 1),
            ((idx >> BITS) & f) as usize,
            (idx & f) as usize,
        )
    }

    fn leaf(&self, idx: u64) -> Option<&Leaf> {
        let (t, m, _) = Self::split(idx);
        let mid = self.top[t].load(Ordering::Acquire);
        // SAFETY: non-null page pointers come from `Box::into_raw` in `leaf_or_make`, are
        // published with Release and freed only in `drop`, which `&self` rules out.
        let mid = unsafe { mid.as_ref() }?;
        let leaf = mid[m].load(Ordering::Acquire);
        // SAFETY: as above.
        unsafe { leaf.as_ref() }
    }

    /// The entry for cluster index `idx` (a hole past the end or where no page is).
    pub fn get(&self, idx: u64) -> Entry {
        if idx >= MAX_CLUSTERS {
            return Entry {
                cluster: 0,
                epoch: 0,
            };
        }
        let w = self
            .leaf(idx)
            .map_or(0, |l| l[Self::split(idx).2].load(Ordering::Acquire));
        Entry {
            cluster: w & CLUSTER_MASK,
            epoch: w >> 40,
        }
    }

    /// Set an entry (the owner only: pages are made without a race because one thread makes
    /// them). `cluster` 0 makes a hole.
    pub fn set(&self, idx: u64, cluster: u64, epoch: u64) {
        debug_assert!(idx < MAX_CLUSTERS && cluster <= CLUSTER_MASK);
        let (t, m, l) = Self::split(idx);
        let mut mid = self.top[t].load(Ordering::Acquire);
        if mid.is_null() {
            if cluster == 0 {
                return;
            }
            mid = Box::into_raw(new_array(|| AtomicPtr::new(std::ptr::null_mut())));
            self.top[t].store(mid, Ordering::Release);
        }
        // SAFETY: `mid` is non-null and came from `Box::into_raw`; pages live until `drop`.
        let mid = unsafe { &*mid };
        let mut leaf = mid[m].load(Ordering::Acquire);
        if leaf.is_null() {
            if cluster == 0 {
                return;
            }
            leaf = Box::into_raw(new_array(|| AtomicU64::new(0)));
            mid[m].store(leaf, Ordering::Release);
        }
        // SAFETY: as above.
        let leaf = unsafe { &*leaf };
        let w = if cluster == 0 {
            0
        } else {
            cluster | (epoch & EPOCH_MASK) << 40
        };
        leaf[l].store(w, Ordering::Release);
    }
}

impl Drop for ClusterMap {
    fn drop(&mut self) {
        for t in self.top.iter() {
            let mid = t.load(Ordering::Acquire);
            if mid.is_null() {
                continue;
            }
            // SAFETY: made by `Box::into_raw` in `set`; `&mut self` means no reader remains.
            let mid = unsafe { Box::from_raw(mid) };
            for m in mid.iter() {
                let leaf = m.load(Ordering::Acquire);
                if !leaf.is_null() {
                    // SAFETY: as above.
                    drop(unsafe { Box::from_raw(leaf) });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_entries_far_apart() {
        let m = ClusterMap::new();
        assert_eq!(m.get(5).cluster, 0);
        m.set(5, 77, 3);
        m.set(MAX_CLUSTERS - 1, 99, 4);
        assert_eq!(
            m.get(5),
            Entry {
                cluster: 77,
                epoch: 3
            }
        );
        assert!(m.get(5).writable_in(3) && !m.get(5).writable_in(4));
        assert_eq!(m.get(MAX_CLUSTERS - 1).cluster, 99);
        m.set(5, 0, 3);
        assert_eq!(m.get(5).cluster, 0);
        assert_eq!(m.get(MAX_CLUSTERS).cluster, 0);
    }
}
