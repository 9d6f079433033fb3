//! Space: the reference-count table (which is also the free-space map) and the node slots of
//! metadata clusters.
//!
//! A block freed in the transaction being built may still belong to the last durable commit,
//! so it is *held* until the commit that frees it is durable; only then can it be handed out
//! again. The table's pages are double-buffered on disk (see [`super::format`]); a commit writes
//! the pages it changed over their other copy.

use std::collections::{BTreeMap, HashMap};

use super::format::{encode_rc_page, Layout, RC_META, RC_PER_PAGE, RC_RESERVED};
use super::tree::Space;
use super::{Error, Result};

/// Clusters kept back from data for metadata.
pub const META_MARGIN: u64 = 8;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Slot {
    Free,
    Used,
    Held,
}

pub struct Alloc {
    pub layout: Layout,
    refs: Vec<u32>,
    /// Which copy of each page is live on disk.
    copy: Vec<u8>,
    dirty: BTreeMap<u64, ()>,
    /// Node slots of each metadata cluster.
    meta: BTreeMap<u64, Vec<Slot>>,
    /// Metadata clusters that may have a free slot.
    meta_space: std::collections::BTreeSet<u64>,
    /// Free clusters held back, with how many unreleased batches hold each.
    held_clusters: HashMap<u64, u32>,
    /// Freed in the transaction being built: (clusters, node blocks).
    freed: (Vec<u64>, Vec<u64>),
    /// Freed by transactions committed or being committed and not yet released, oldest first.
    committing: std::collections::VecDeque<(Vec<u64>, Vec<u64>)>,
    cursor: u64,
    free_count: u64,
    /// Clusters promised to thick volumes and not yet taken.
    pub reserved: u64,
}

impl Alloc {
    /// A fresh table: the format's own clusters reserved, the rest free.
    pub fn new(layout: Layout) -> Alloc {
        let mut refs = vec![0u32; (layout.rc_pages as usize) * RC_PER_PAGE];
        for r in refs.iter_mut().take(layout.first_data_cluster as usize) {
            *r = RC_RESERVED;
        }
        for r in refs.iter_mut().skip(layout.total_clusters as usize) {
            *r = RC_RESERVED;
        }
        // Copy B counts as live, so the format's first commit writes copy A.
        let mut a = Alloc::with_refs(layout, refs, vec![1; layout.rc_pages as usize]);
        a.dirty = (0..layout.rc_pages).map(|p| (p, ())).collect();
        a
    }

    /// The table as loaded, and the live copy of each page. Node slots are filled in by
    /// [`Alloc::node_in_use`] for every reachable node.
    pub fn with_refs(layout: Layout, refs: Vec<u32>, copy: Vec<u8>) -> Alloc {
        let free_count = refs
            .iter()
            .take(layout.total_clusters as usize)
            .filter(|&&r| r == 0)
            .count() as u64;
        let mut meta = BTreeMap::new();
        for (c, &r) in refs.iter().enumerate().take(layout.total_clusters as usize) {
            if r != RC_RESERVED && r & RC_META != 0 {
                meta.insert(
                    c as u64,
                    vec![Slot::Free; layout.blocks_per_cluster() as usize],
                );
            }
        }
        Alloc {
            layout,
            refs,
            copy,
            dirty: BTreeMap::new(),
            meta_space: meta.keys().copied().collect(),
            meta,
            held_clusters: HashMap::new(),
            freed: Default::default(),
            committing: Default::default(),
            cursor: layout.first_data_cluster,
            free_count,
            reserved: 0,
        }
    }

    pub fn refs(&self) -> &[u32] {
        &self.refs[..self.layout.total_clusters as usize]
    }

    /// The entries past the last cluster, which fill the last page and are always reserved.
    pub fn tail(&self) -> &[u32] {
        &self.refs[self.layout.total_clusters as usize..]
    }

    /// Which copy of the page holding `cluster`'s entry is live on disk.
    pub fn live_copy(&self, cluster: u64) -> u8 {
        self.copy[(cluster / RC_PER_PAGE as u64) as usize]
    }

    pub fn refcount(&self, cluster: u64) -> u32 {
        self.refs[cluster as usize]
    }

    /// A reachable node found while loading.
    pub fn node_in_use(&mut self, addr: u64) -> Result<()> {
        let (c, s) = self.split(addr);
        let slots = self.meta.get_mut(&c).ok_or_else(|| Error::Corrupt {
            block: addr,
            what: format!(
                "node in cluster {c}, which the reference-count table does not mark as metadata"
            ),
        })?;
        slots[s] = Slot::Used;
        Ok(())
    }

    fn split(&self, addr: u64) -> (u64, usize) {
        let bpc = self.layout.blocks_per_cluster();
        (addr / bpc, (addr % bpc) as usize)
    }

    fn set(&mut self, cluster: u64, value: u32) {
        self.refs[cluster as usize] = value;
        self.dirty.insert(cluster / RC_PER_PAGE as u64, ());
    }

    /// Whether `cluster` is free but held back (for a commit, or for I/O that may still see it).
    pub fn is_held(&self, cluster: u64) -> bool {
        self.held_clusters.contains_key(&cluster)
    }

    /// Clusters that can be handed out now (a held metadata cluster taken again counts as
    /// held until its release: a little less than the truth, never more).
    pub fn available(&self) -> u64 {
        self.free_count
            .saturating_sub(self.held_clusters.len() as u64)
    }

    /// Write page `page` in the next commit.
    pub fn mark_page_dirty(&mut self, page: u64) {
        self.dirty.insert(page, ());
    }

    pub fn free_clusters(&self) -> u64 {
        self.free_count
    }

    /// A free data cluster with a count of 1. `reserved`: take one promised to a thick volume.
    /// Data never takes the last [`META_MARGIN`] clusters, so that a commit always finds room
    /// for its nodes.
    pub fn alloc_cluster(&mut self, reserved: bool) -> Result<u64> {
        let unpromised = self.available().saturating_sub(self.reserved);
        let ok = if reserved {
            self.reserved > 0 && self.available() > META_MARGIN
        } else {
            unpromised > META_MARGIN
        };
        if !ok {
            return Err(Error::NoSpace);
        }
        self.take_cluster(reserved)
    }

    fn take_cluster(&mut self, reserved: bool) -> Result<u64> {
        let c = self.find_free()?;
        if reserved {
            self.reserved -= 1;
        }
        self.set(c, 1);
        self.free_count -= 1;
        Ok(c)
    }

    fn find_free(&mut self) -> Result<u64> {
        let (first, total) = (self.layout.first_data_cluster, self.layout.total_clusters);
        for _ in 0..total {
            if self.cursor >= total {
                self.cursor = first;
            }
            let c = self.cursor;
            self.cursor += 1;
            if self.refs[c as usize] == 0 && !self.held_clusters.contains_key(&c) {
                return Ok(c);
            }
        }
        Err(Error::NoSpace)
    }

    /// Promise `n` clusters to a thick volume.
    pub fn reserve(&mut self, n: u64) -> Result<()> {
        if self.available().saturating_sub(self.reserved + META_MARGIN) < n {
            return Err(Error::NoSpace);
        }
        self.reserved += n;
        Ok(())
    }

    pub fn unreserve(&mut self, n: u64) {
        self.reserved = self.reserved.saturating_sub(n);
    }

    /// A block for a node.
    pub fn alloc_node(&mut self) -> Result<u64> {
        while let Some(&c) = self.meta_space.iter().next() {
            let slots = self.meta.get_mut(&c).expect("listed clusters exist");
            if let Some(s) = slots.iter().position(|&s| s == Slot::Free) {
                slots[s] = Slot::Used;
                let used = slots.iter().filter(|&&s| s == Slot::Used).count() as u32;
                if self.refs[c as usize] == 0 {
                    // A metadata cluster emptied and taken again before its release: its held
                    // slots stay held, its free ones were never a commit's; its cluster hold
                    // stays too, and is let go by the batch that took it.
                    self.free_count -= 1;
                }
                self.set(c, RC_META | used);
                return Ok(c * self.layout.blocks_per_cluster() + s as u64);
            }
            self.meta_space.remove(&c);
        }
        let c = self.take_cluster(false)?;
        self.meta.insert(
            c,
            vec![Slot::Free; self.layout.blocks_per_cluster() as usize],
        );
        self.meta_space.insert(c);
        self.set(c, RC_META);
        self.alloc_node()
    }

    /// Encode the pages changed since the last commit, for commit `generation`, each aimed at
    /// its other copy: (block, bytes).
    pub fn dirty_pages(&mut self, generation: u64) -> Vec<(u64, Vec<u8>)> {
        let pages: Vec<u64> = self.dirty.keys().copied().collect();
        self.dirty.clear();
        pages
            .into_iter()
            .map(|p| {
                let at = p as usize * RC_PER_PAGE;
                let other = 1 - self.copy[p as usize];
                self.copy[p as usize] = other;
                (
                    self.layout.rc_block(p, other),
                    encode_rc_page(p, generation, &self.refs[at..at + RC_PER_PAGE]),
                )
            })
            .collect()
    }

    /// The transaction is frozen for commit: what it freed waits for that commit.
    pub fn begin_commit(&mut self) {
        let freed = std::mem::take(&mut self.freed);
        self.committing.push_back(freed);
    }

    /// The oldest commit not yet released is durable, and nothing still uses what it freed:
    /// hand that out again.
    pub fn end_commit(&mut self) {
        let Some((clusters, nodes)) = self.committing.pop_front() else {
            return;
        };
        for addr in nodes {
            let (c, s) = self.split(addr);
            if let Some(slots) = self.meta.get_mut(&c) {
                slots[s] = Slot::Free;
                self.meta_space.insert(c);
            }
        }
        for c in clusters {
            if let Some(n) = self.held_clusters.get_mut(&c) {
                *n -= 1;
                if *n == 0 {
                    self.held_clusters.remove(&c);
                }
            }
            if self.refs[c as usize] == 0 {
                if let Some(slots) = self.meta.get(&c) {
                    if slots.iter().all(|&s| s == Slot::Free) {
                        self.meta.remove(&c);
                        self.meta_space.remove(&c);
                    }
                }
            }
        }
    }

    fn cluster_freed(&mut self, c: u64) {
        self.free_count += 1;
        *self.held_clusters.entry(c).or_default() += 1;
        self.freed.0.push(c);
    }
}

impl Space for Alloc {
    fn node_freed(&mut self, addr: u64) {
        let (c, s) = self.split(addr);
        let Some(slots) = self.meta.get_mut(&c) else {
            tracing::error!(addr, "a node freed outside any metadata cluster");
            return;
        };
        slots[s] = Slot::Held;
        let used = slots.iter().filter(|&&s| s == Slot::Used).count() as u32;
        self.freed.1.push(addr);
        if used == 0 {
            self.set(c, 0);
            self.cluster_freed(c);
        } else {
            self.set(c, RC_META | used);
        }
    }

    fn cluster_ref(&mut self, cluster: u64) {
        let r = self.refs[cluster as usize];
        self.set(cluster, r + 1);
    }

    fn cluster_unref(&mut self, cluster: u64) {
        let r = self.refs[cluster as usize];
        if r == 0 || r & RC_META != 0 {
            tracing::error!(
                cluster,
                r,
                "a data cluster released more often than referenced"
            );
            return;
        }
        self.set(cluster, r - 1);
        if r == 1 {
            self.cluster_freed(cluster);
        }
    }
}
