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
//! - object and snapshot ids are below the superblock's next ids;
//! - in the live namespace and in every snapshot's: every entry names an inode of its type,
//!   under the right hash, with a link back; every link has its entry; link counts match;
//!   every inode is reachable from the root once (directories: one parent, no cycles); an
//!   entry's generation is not below its inode's, nor a directory's subtree generation below
//!   its entries' (else a subtree diff would skip a change).
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
    namespace(&core.objects, "live", &mut w.problems);
    for s in core.snapshots() {
        if let Some(Val::Snap(rec)) =
            super::tree::get(&core.snaps, &Key::new(s.id, super::format::KIND_SNAP, 0))
        {
            namespace(
                &rec.root,
                &format!("snapshot {:?}", s.name),
                &mut w.problems,
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
            Val::Chunk { .. }
            | Val::Dirents { .. }
            | Val::Links { .. }
            | Val::Xattrs { .. }
            | Val::Clones { .. } => k.obj != 0 && !extents,
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

/// The namespace checks of one image (see the module's list).
fn namespace(root: &Tree, image: &str, out: &mut Vec<Problem>) {
    use super::format::KIND_LINK;
    use super::namespace::{name_hash, ROOT};
    use super::tree::InodeType;
    let mut inodes: HashMap<u64, (InodeType, u32, u64, u64, u64)> = HashMap::new();
    let mut entries: Vec<(Key, u64, Vec<super::tree::Dirent>)> = Vec::new();
    let mut links: HashMap<(u64, u64), Vec<Vec<u8>>> = HashMap::new();
    let mut other: Vec<(Key, u64)> = Vec::new();
    let mut chunk_bytes: HashMap<u64, u64> = HashMap::new();
    super::tree::each(root, &mut |k, v| match v {
        Val::Inode(i) if i.typ != InodeType::Object => {
            inodes.insert(k.obj, (i.typ, i.nlink, i.gen, i.subtree_gen, i.size));
        }
        Val::Dirents { gen, entries: es } => entries.push((*k, *gen, es.clone())),
        Val::Links { names, .. } => {
            links.insert((k.obj, k.off), names.clone());
        }
        Val::Xattrs { entries: es, .. } => {
            if es.iter().any(|(n, _)| name_hash(n) != k.off) {
                other.push((*k, 0));
            }
            other.push((*k, 1));
        }
        Val::Clones { gen, .. } => {
            if *gen != k.off {
                other.push((*k, 2));
            }
            other.push((*k, 1));
        }
        Val::Chunk { data, .. } => {
            *chunk_bytes.entry(k.obj).or_default() += data.len() as u64;
        }
        _ => {}
    });
    let mut bad = |k: &Key, what: String| {
        out.push(Problem {
            block: super::tree::leaf_addr(root, k),
            what: format!("{image}: {what}"),
        })
    };
    if !matches!(inodes.get(&ROOT), Some((InodeType::Dir, ..))) {
        bad(
            &Key::new(ROOT, super::format::KIND_INODE, 0),
            "no root directory".into(),
        );
        return;
    }
    for (k, kind) in other {
        if kind == 0 {
            bad(
                &k,
                format!("inode {}: an attribute under another name's hash", k.obj),
            );
        } else if kind == 2 {
            bad(
                &k,
                format!("inode {}: clone records under another generation", k.obj),
            );
        } else if !inodes.contains_key(&k.obj) {
            bad(
                &k,
                format!(
                    "attributes or clone records of inode {}, which does not exist",
                    k.obj
                ),
            );
        }
    }
    let mut named: HashMap<u64, u32> = HashMap::new();
    let mut subdirs: HashMap<u64, u32> = HashMap::new();
    let mut children: HashMap<u64, Vec<u64>> = HashMap::new();
    for (k, gen, es) in &entries {
        let Some(&(dtyp, _, _, dsub, _)) = inodes.get(&k.obj) else {
            bad(
                k,
                format!("entries of directory {}, which does not exist", k.obj),
            );
            continue;
        };
        if dtyp != InodeType::Dir {
            bad(
                k,
                format!("entries under inode {}, which is not a directory", k.obj),
            );
        }
        if dsub < *gen {
            bad(
                k,
                format!(
                    "directory {}: subtree generation {dsub} below its entries' {gen}",
                    k.obj
                ),
            );
        }
        let mut seen = HashSet::new();
        for e in es {
            let shown = String::from_utf8_lossy(&e.name);
            if name_hash(&e.name) != k.off || !seen.insert(&e.name) {
                bad(
                    k,
                    format!(
                        "directory {}: entry {shown:?} under a wrong or repeated hash",
                        k.obj
                    ),
                );
            }
            match inodes.get(&e.ino) {
                None => bad(
                    k,
                    format!(
                        "directory {}: entry {shown:?} names missing inode {}",
                        k.obj, e.ino
                    ),
                ),
                Some(&(t, _, g, sg, _)) => {
                    if t != e.typ {
                        bad(
                            k,
                            format!(
                                "directory {}: entry {shown:?} says {:?}, inode {} is {t:?}",
                                k.obj, e.typ, e.ino
                            ),
                        );
                    }
                    if g.max(sg) > *gen {
                        bad(k, format!("directory {}: entry {shown:?} at generation {gen}, below its inode's {}", k.obj, g.max(sg)));
                    }
                }
            }
            if !links
                .get(&(e.ino, k.obj))
                .is_some_and(|ns| ns.contains(&e.name))
            {
                bad(
                    k,
                    format!(
                        "directory {}: entry {shown:?} has no link back from inode {}",
                        k.obj, e.ino
                    ),
                );
            }
            *named.entry(e.ino).or_default() += 1;
            if e.typ == InodeType::Dir {
                *subdirs.entry(k.obj).or_default() += 1;
            }
            children.entry(k.obj).or_default().push(e.ino);
        }
    }
    let named_at: HashSet<(u64, &[u8], u64)> = entries
        .iter()
        .flat_map(|(dk, _, es)| es.iter().map(move |e| (dk.obj, e.name.as_slice(), e.ino)))
        .collect();
    for ((ino, parent), names) in &links {
        let k = Key::new(*ino, KIND_LINK, *parent);
        for n in names {
            if !named_at.contains(&(*parent, n.as_slice(), *ino)) {
                bad(
                    &k,
                    format!(
                        "inode {ino}: link {:?} from directory {parent} has no entry",
                        String::from_utf8_lossy(n)
                    ),
                );
            }
        }
    }
    for (&ino, &(typ, nlink, _, _, size)) in &inodes {
        let k = Key::new(ino, super::format::KIND_INODE, 0);
        let names = named.get(&ino).copied().unwrap_or(0);
        let expect = match typ {
            InodeType::Dir => 2 + subdirs.get(&ino).copied().unwrap_or(0),
            _ => names,
        };
        if nlink != expect {
            bad(
                &k,
                format!("inode {ino}: link count {nlink}, where its entries make {expect}"),
            );
        }
        if typ == InodeType::Dir && names != u32::from(ino != ROOT) {
            bad(&k, format!("directory {ino}: named {names} times"));
        }
        let chunks = chunk_bytes.get(&ino).copied().unwrap_or(0);
        if typ == InodeType::Symlink && (chunks != size || size == 0) {
            bad(
                &k,
                format!("symlink {ino}: size {size}, target of {chunks} bytes"),
            );
        }
        if typ != InodeType::Symlink && chunks != 0 {
            bad(&k, format!("inode {ino}: chunks on a {typ:?}"));
        }
    }
    // Everything reachable from the root, once.
    let mut reached = HashSet::new();
    let mut todo = vec![ROOT];
    while let Some(d) = todo.pop() {
        if !reached.insert(d) {
            continue;
        }
        for &c in children.get(&d).map(Vec::as_slice).unwrap_or(&[]) {
            match inodes.get(&c) {
                Some((InodeType::Dir, ..)) if reached.contains(&c) => {
                    bad(
                        &Key::new(c, super::format::KIND_INODE, 0),
                        format!("directory {c} reached twice"),
                    );
                }
                Some((InodeType::Dir, ..)) => todo.push(c),
                _ => {
                    reached.insert(c);
                }
            }
        }
    }
    for &ino in inodes.keys() {
        if !reached.contains(&ino) {
            bad(
                &Key::new(ino, super::format::KIND_INODE, 0),
                format!("inode {ino} is not reachable from the root"),
            );
        }
    }
}
