//! The full consistency check (`tandem store check`, `store_check`). Loading has already
//! verified every reachable node's checksum, address, level and key order, and each table
//! page's checksum; this walks what was loaded and checks what spans blocks:
//! - every child's keys lie within the range its parent gives it, and the highest generation
//!   the parent records for it is not below what the child holds (else a diff would miss it);
//! - every extent names a data cluster inside the device, and a mapped cluster lies within its
//!   volume's size;
//! - every cluster's reference count equals what is reachable: for a data cluster, the distinct
//!   leaves naming it; for a metadata cluster, the written nodes in it; free clusters are
//!   referenced by nothing; the format's own clusters are marked reserved;
//! - object and snapshot ids are below the superblock's next ids.
//!
//! Each problem names the block or cluster and what is wrong.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::core::Core;
use super::format::{Key, KIND_EXTENT, RC_META, RC_PER_PAGE, RC_RESERVED};
use super::tree::{Entries, Node, Tree, Val};

/// One inconsistency: the block it was found in (a node, a reference-count page, or the
/// superblock, 0) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub block: u64,
    pub what: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "block {}: {}", self.block, self.what)
    }
}

struct Walk<'a> {
    core: &'a Core,
    seen: HashSet<*const Node>,
    data_refs: HashMap<u64, u32>,
    meta_nodes: HashMap<u64, u32>,
    problems: Vec<Problem>,
}

pub fn check(core: &Core) -> Vec<Problem> {
    let mut w = Walk {
        core,
        seen: HashSet::new(),
        data_refs: HashMap::new(),
        meta_nodes: HashMap::new(),
        problems: Vec::new(),
    };
    w.tree(&core.objects, false);
    w.tree(&core.snaps, false);
    let mut names = std::collections::HashSet::new();
    for v in core.volumes() {
        if !names.insert(v.name.clone()) {
            w.problem(0, format!("two volumes are named {:?}", v.name));
        }
        if v.obj >= core.next_object {
            w.problem(
                0,
                format!("object {} is not below the next object id", v.obj),
            );
        }
    }
    let mut names = std::collections::HashSet::new();
    for s in core.snapshots() {
        if !names.insert(s.name.clone()) {
            w.problem(0, format!("two snapshots are named {:?}", s.name));
        }
        if s.id >= core.next_snapshot {
            w.problem(
                0,
                format!("snapshot {} is not below the next snapshot id", s.id),
            );
        }
    }
    let layout = core.layout;
    for (c, &r) in core.alloc.refs().iter().enumerate() {
        let c = c as u64;
        let expect = if c < layout.first_data_cluster {
            RC_RESERVED
        } else if let Some(&n) = w.meta_nodes.get(&c) {
            RC_META | n
        } else {
            w.data_refs.get(&c).copied().unwrap_or(0)
        };
        if r != expect {
            let page = layout.rc_block(c / RC_PER_PAGE as u64, core.alloc.live_copy(c));
            w.problem(
                page,
                format!(
                    "cluster {c}: reference count {} where what is reachable makes {}",
                    show(r),
                    show(expect)
                ),
            );
        }
    }
    let total = layout.total_clusters;
    if let Some(i) = core.alloc.tail().iter().position(|&r| r != RC_RESERVED) {
        let c = total + i as u64;
        let page = layout.rc_block(c / RC_PER_PAGE as u64, core.alloc.live_copy(c));
        w.problem(
            page,
            format!("entry {c}, past the last cluster, is not marked reserved"),
        );
    }
    w.problems
}

fn show(r: u32) -> String {
    match r {
        RC_RESERVED => "reserved".into(),
        r if r & RC_META != 0 => format!("metadata with {} nodes", r & !RC_META),
        r => r.to_string(),
    }
}

impl Walk<'_> {
    fn problem(&mut self, block: u64, what: String) {
        self.problems.push(Problem { block, what });
    }

    /// `extents`: whether this is a volume's extent tree.
    fn tree(&mut self, t: &Tree, extents: bool) {
        if let Some(root) = &t.0 {
            self.node(root, Key::MIN, None, extents);
        }
    }

    /// Walk a node once (shared nodes are counted once), with the key range its parent gives.
    fn node(&mut self, n: &Arc<Node>, lo: Key, hi: Option<Key>, extents: bool) {
        if !self.seen.insert(Arc::as_ptr(n)) {
            return;
        }
        let addr = n.addr();
        let at = addr;
        if addr != 0 {
            let c = addr / self.core.layout.blocks_per_cluster();
            *self.meta_nodes.entry(c).or_default() += 1;
        }
        match &n.entries {
            Entries::Leaf(es) => {
                for (k, v) in es {
                    if *k < lo || hi.is_some_and(|h| *k >= h) {
                        self.problem(at, format!("key {k:?} outside the range its parent gives"));
                    }
                    self.value(at, k, v, extents);
                }
            }
            Entries::Internal(cs) => {
                for (i, c) in cs.iter().enumerate() {
                    if c.key < lo || hi.is_some_and(|h| c.key >= h) {
                        self.problem(
                            at,
                            format!("child key {:?} outside the range its parent gives", c.key),
                        );
                    }
                    if c.node.level + 1 != n.level {
                        self.problem(
                            at,
                            format!("child at level {} under level {}", c.node.level, n.level),
                        );
                    }
                    let held = c.node.max_gen();
                    if c.max_gen < held {
                        self.problem(
                            at,
                            format!(
                                "child {i} is recorded at generation {} but holds {held}",
                                c.max_gen
                            ),
                        );
                    }
                    let next = cs.get(i + 1).map(|n| n.key).or(hi);
                    self.node(&c.node, c.key, next, extents);
                }
            }
        }
    }

    fn value(&mut self, at: u64, k: &Key, v: &Val, extents: bool) {
        let shape_ok = match v {
            Val::Extent { .. } => k.obj == 0,
            Val::Inode(_) | Val::Snap(_) => k.obj != 0 && k.off == 0,
            Val::Chunk { .. } => k.obj != 0 && !extents,
        };
        if !shape_ok {
            self.problem(at, format!("key {k:?} does not fit its value"));
        }
        if v.gen() > self.core.gen {
            self.problem(
                at,
                format!(
                    "key {k:?}: generation {} is ahead of the store's {}",
                    v.gen(),
                    self.core.gen
                ),
            );
        }
        match v {
            Val::Extent { cluster, .. } if *cluster != 0 => {
                let layout = self.core.layout;
                if *cluster < layout.first_data_cluster || *cluster >= layout.total_clusters {
                    self.problem(
                        at.to_owned(),
                        format!(
                            "extent {} names cluster {cluster}, outside the data clusters",
                            k.off
                        ),
                    );
                    return;
                }
                *self.data_refs.entry(*cluster).or_default() += 1;
            }
            Val::Inode(i) => {
                let clusters = i.size.div_ceil(self.core.layout.cluster_size as u64);
                if i.typ == super::tree::InodeType::Volume
                    && (i.size == 0 || i.size % 4096 != 0 || clusters > super::map::MAX_CLUSTERS)
                {
                    self.problem(at, format!("volume {}: size {}", k.obj, i.size));
                }
                // Past the end, a volume has only holes (a shrink leaves them for diffs).
                let mut past = None;
                super::tree::range(
                    &i.extents,
                    &Key::new(0, KIND_EXTENT, clusters),
                    &Key::new(0, KIND_EXTENT + 1, 0),
                    &mut |k, v| {
                        let mapped = matches!(v, Val::Extent { cluster, .. } if *cluster != 0);
                        if mapped {
                            past = Some(k.off);
                        }
                        !mapped
                    },
                );
                if let Some(idx) = past {
                    self.problem(
                        at,
                        format!("volume {}: extent {idx} lies past its end", k.obj),
                    );
                }
                if i.extents.max_gen() > i.gen {
                    self.problem(
                        at,
                        format!(
                            "object {}: extents changed at generation {} after the inode's {}",
                            k.obj,
                            i.extents.max_gen(),
                            i.gen
                        ),
                    );
                }
                self.tree(&i.extents, true);
            }
            Val::Snap(s) => self.tree(&s.root, false),
            _ => {}
        }
    }
}
