//! What changed below a directory between two images of the store (two snapshots, or a
//! snapshot and the live store), as an ordered list of changes that, applied in order to a
//! copy of the older subtree, makes it the newer one; and [`Core::apply`], which does so.
//!
//! The walk starts at the directory and goes down only where something changed: a directory
//! whose inode is identical in both images is skipped whole (its `subtree_gen` would have moved
//! with any change below), and within a changed directory [`tree::compare`] yields only the
//! entries whose value changed (an entry's generation moves with any change to what it names).
//! A file's changed clusters come from comparing its two extent trees the same way. The cost
//! follows the change, not the tree.
//!
//! Volumes are left out: they travel by block replication, and their entries are the
//! volume calls' to make.
//!
//! Inodes are named by their number in the source store; a receiver keeps a map from those to
//! its own. The order makes every step valid on the receiver:
//! 1. `Create`: new inodes, linked nowhere yet; `CloneFile`: a new file's data shared from a
//!    file the older image has (a reflink), and `CloneRange`: clusters a range clone shares
//!    with such a file (found by the file's clone records), while those files are still as
//!    they were;
//! 2. removals, children before their directories: `Detach` takes an entry away from an inode
//!    that is linked again below (a rename, a move, one of several hard links), `Unlink` from
//!    one leaving the subtree, which goes with its last entry;
//! 3. `Link`, parents before children: by now every name taken is free and every inode exists,
//!    so swaps, moves into new directories and a file replaced by a directory all work;
//! 4. contents: `Truncate`, then `Write` (the cluster's bytes, read from the newer image) and
//!    `Punch`; extended attributes;
//! 5. `SetAttr` last, so that the times the steps above moved end as they are in the newer image.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::core::{extent_key, Core};
use super::format::{Key, KIND_CLONES, KIND_DIRENT, KIND_EXTENT, KIND_XATTR};
use super::namespace::{
    inode_in, is_within, links_in, readdir_in, readlink_in, resolve_in, Data, SetAttrs,
};
use super::tree::{self, range, Attrs, Dirent, Inode, InodeType, Tree, Val};

/// The cluster a file maps at index `idx` (0: a hole).
fn extent_of(i: &Inode, idx: u64) -> u64 {
    match tree::get(&i.extents, &extent_key(idx)) {
        Some(Val::Extent { cluster, .. }) => *cluster,
        _ => 0,
    }
}
use super::{Error, Result};

/// One step of a subtree diff. Inode and directory numbers are the source store's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Create {
        ino: u64,
        typ: InodeType,
        attrs: Attrs,
        /// A symlink's target.
        target: Vec<u8>,
    },
    /// File `ino` takes the data and size of file `src` as the older image has it.
    CloneFile {
        ino: u64,
        src: u64,
    },
    /// `[off, off + len)` of file `ino` shares `[src_off, ..)` of file `src` as the older image
    /// has it (whole clusters).
    CloneRange {
        ino: u64,
        off: u64,
        src: u64,
        src_off: u64,
        len: u64,
    },
    Detach {
        dir: u64,
        name: Vec<u8>,
        ino: u64,
    },
    Unlink {
        dir: u64,
        name: Vec<u8>,
        ino: u64,
    },
    Link {
        dir: u64,
        name: Vec<u8>,
        ino: u64,
    },
    Truncate {
        ino: u64,
        size: u64,
    },
    /// `len` bytes at `off`, to be read from the newer image.
    Write {
        ino: u64,
        off: u64,
        len: u64,
    },
    Punch {
        ino: u64,
        off: u64,
        len: u64,
    },
    SetXattr {
        ino: u64,
        name: Vec<u8>,
        value: Vec<u8>,
    },
    RemoveXattr {
        ino: u64,
        name: Vec<u8>,
    },
    SetAttr {
        ino: u64,
        attrs: Attrs,
    },
}

impl Change {
    /// As RPC answers it: names and values that are not UTF-8 are shown lossily; `op` names
    /// the change.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let attrs = |a: &Attrs| {
            json!({"mode": format!("{:o}", a.mode), "uid": a.uid, "gid": a.gid,
                   "atime_ns": a.atime, "mtime_ns": a.mtime})
        };
        match self {
            Change::Create {
                ino,
                typ,
                attrs: a,
                target,
            } => json!({"op": "create", "ino": ino,
                "type": format!("{typ:?}").to_lowercase(), "attrs": attrs(a), "target": text(target)}),
            Change::CloneFile { ino, src } => json!({"op": "clone_file", "ino": ino, "src": src}),
            Change::CloneRange {
                ino,
                off,
                src,
                src_off,
                len,
            } => json!({"op": "clone_range",
                "ino": ino, "offset": off, "src": src, "src_offset": src_off, "length": len}),
            Change::Detach { dir, name, ino } => {
                json!({"op": "detach", "dir": dir, "name": text(name), "ino": ino})
            }
            Change::Unlink { dir, name, ino } => {
                json!({"op": "unlink", "dir": dir, "name": text(name), "ino": ino})
            }
            Change::Link { dir, name, ino } => {
                json!({"op": "link", "dir": dir, "name": text(name), "ino": ino})
            }
            Change::Truncate { ino, size } => json!({"op": "truncate", "ino": ino, "size": size}),
            Change::Write { ino, off, len } => {
                json!({"op": "write", "ino": ino, "offset": off, "length": len})
            }
            Change::Punch { ino, off, len } => {
                json!({"op": "punch", "ino": ino, "offset": off, "length": len})
            }
            Change::SetXattr { ino, name, value } => {
                json!({"op": "set_xattr", "ino": ino, "name": text(name), "value_bytes": value.len()})
            }
            Change::RemoveXattr { ino, name } => {
                json!({"op": "remove_xattr", "ino": ino, "name": text(name)})
            }
            Change::SetAttr { ino, attrs: a } => {
                json!({"op": "setattr", "ino": ino, "attrs": attrs(a)})
            }
        }
    }
}

/// A subtree diff: the changes in order, and counts of what the walk looked at.
#[derive(Debug, Clone, Default)]
pub struct SubtreeDiff {
    /// The directory diffed (the same inode in both images).
    pub top: u64,
    pub changes: Vec<Change>,
    /// Directories whose entries were compared, and inodes whose contents were.
    pub dirs_visited: u64,
    pub inodes_compared: u64,
}

struct Walk<'a> {
    base: &'a Tree,
    newer: &'a Tree,
    top: u64,
    cs: u64,
    in_base: HashMap<u64, bool>,
    in_newer: HashMap<u64, bool>,
    walked: HashSet<u64>,
    /// Directories in both images waiting to be compared.
    dirs: Vec<u64>,
    created: Vec<u64>,
    created_set: HashSet<u64>,
    removals: Vec<Change>,
    links: Vec<Change>,
    touched: BTreeSet<u64>,
    dirs_visited: u64,
}

const DIRENTS: u8 = KIND_DIRENT;

fn entries_of(v: Option<&Val>) -> &[Dirent] {
    match v {
        Some(Val::Dirents { entries, .. }) => entries,
        _ => &[],
    }
}

impl Walk<'_> {
    fn in_base(&mut self, ino: u64) -> bool {
        let (t, top) = (self.base, self.top);
        *self
            .in_base
            .entry(ino)
            .or_insert_with(|| inode_in(t, ino).is_some() && is_within(t, ino, top))
    }

    fn in_newer(&mut self, ino: u64) -> bool {
        let (t, top) = (self.newer, self.top);
        *self
            .in_newer
            .entry(ino)
            .or_insert_with(|| inode_in(t, ino).is_some() && is_within(t, ino, top))
    }

    /// Compare every directory that is in the subtree in both images and changed below,
    /// starting at `top`: an explicit stack, so that no depth of tree overflows ours.
    fn run(&mut self) {
        self.dirs.push(self.top);
        while let Some(d) = self.dirs.pop() {
            self.walk(d);
        }
    }

    /// A directory in the subtree in both images: compare its entries.
    fn walk(&mut self, d: u64) {
        if !self.walked.insert(d) {
            return;
        }
        if inode_in(self.base, d) == inode_in(self.newer, d) {
            return;
        }
        self.dirs_visited += 1;
        self.touched.insert(d);
        let mut changed = Vec::new();
        tree::compare(
            self.base,
            self.newer,
            &Key::new(d, DIRENTS, 0),
            &Key::new(d, DIRENTS + 1, 0),
            &mut |_, a, b| changed.push((entries_of(a).to_vec(), entries_of(b).to_vec())),
        );
        for (old, new) in changed {
            // Volumes travel by block replication, not in namespace diffs.
            let old: Vec<Dirent> = old
                .into_iter()
                .filter(|e| e.typ != InodeType::Volume)
                .collect();
            let new: Vec<Dirent> = new
                .into_iter()
                .filter(|e| e.typ != InodeType::Volume)
                .collect();
            for ea in &old {
                match new.iter().find(|eb| eb.name == ea.name) {
                    Some(eb) if eb.ino == ea.ino => self.same_place(eb),
                    _ => self.removal(d, ea),
                }
            }
            for eb in &new {
                if !old.iter().any(|ea| ea.name == eb.name && ea.ino == eb.ino) {
                    self.addition(d, eb);
                }
            }
        }
    }

    /// Named the same in both images, changed below.
    fn same_place(&mut self, e: &Dirent) {
        if e.typ == InodeType::Dir {
            self.dirs.push(e.ino);
        } else {
            self.touched.insert(e.ino);
        }
    }

    /// Entry `e` of `d` is gone: detach what lives on in the subtree; unlink the rest, a
    /// directory after everything in it (post-order, with an explicit stack).
    fn removal(&mut self, d: u64, e: &Dirent) {
        struct Frame {
            parent: u64,
            entry: Dirent,
            children: Vec<Dirent>,
            next: usize,
        }
        let mut stack: Vec<Frame> = Vec::new();
        let visit = |w: &mut Self, stack: &mut Vec<Frame>, parent: u64, e: Dirent| {
            let (dir, name, ino) = (parent, e.name.clone(), e.ino);
            if e.typ == InodeType::Volume {
                return;
            }
            if w.in_newer(ino) {
                w.removals.push(Change::Detach { dir, name, ino });
                w.same_place(&e);
            } else if e.typ == InodeType::Dir && w.walked.insert(ino) {
                let children = readdir_in(w.base, ino).unwrap_or_default();
                stack.push(Frame {
                    parent,
                    entry: e,
                    children,
                    next: 0,
                });
            } else {
                w.removals.push(Change::Unlink { dir, name, ino });
            }
        };
        visit(self, &mut stack, d, e.clone());
        while let Some(top) = stack.last_mut() {
            if top.next < top.children.len() {
                let (dir, c) = (top.entry.ino, top.children[top.next].clone());
                top.next += 1;
                visit(self, &mut stack, dir, c);
            } else {
                let f = stack.pop().expect("a frame");
                self.removals.push(Change::Unlink {
                    dir: f.parent,
                    name: f.entry.name,
                    ino: f.entry.ino,
                });
            }
        }
    }

    /// Entry `e` of `d` is new: link it; a new inode is created, and a new directory's
    /// entries follow it (pre-order, with an explicit stack).
    fn addition(&mut self, d: u64, e: &Dirent) {
        let mut todo = vec![(d, e.clone())];
        while let Some((d, e)) = todo.pop() {
            if e.typ == InodeType::Volume {
                continue;
            }
            self.links.push(Change::Link {
                dir: d,
                name: e.name.clone(),
                ino: e.ino,
            });
            if self.in_base(e.ino) {
                self.same_place(&e);
                continue;
            }
            if self.created_set.insert(e.ino) {
                self.created.push(e.ino);
                if e.typ == InodeType::Dir {
                    let children = readdir_in(self.newer, e.ino).unwrap_or_default();
                    todo.extend(children.into_iter().rev().map(|c| (e.ino, c)));
                }
            }
        }
    }

    /// The clusters of file `ino` (as `new`) that range clones made since the older image and
    /// that still share a cluster of a file the older image has in the subtree: destination
    /// cluster index → (source, source cluster index). Those travel as clones, not data.
    fn cloned(&mut self, ino: u64, new: &Inode) -> BTreeMap<u64, (u64, u64)> {
        let mut recs = Vec::new();
        tree::compare(
            self.base,
            self.newer,
            &Key::new(ino, KIND_CLONES, 0),
            &Key::new(ino, KIND_CLONES + 1, 0),
            &mut |_, _, b| {
                if let Some(Val::Clones { entries, .. }) = b {
                    recs.extend(entries.iter().copied());
                }
            },
        );
        let cs = self.cs;
        let mut out = BTreeMap::new();
        for r in recs {
            if !self.in_base(r.src) {
                continue;
            }
            let Some(src) = inode_in(self.base, r.src).filter(|i| i.typ == InodeType::File) else {
                continue;
            };
            let end = r.src_idx.saturating_add(r.n);
            range(
                &src.extents,
                &extent_key(r.src_idx),
                &extent_key(end),
                &mut |k, v| {
                    let d = r.dst_idx + (k.off - r.src_idx);
                    let whole = (k.off + 1) * cs <= src.size;
                    if let Val::Extent { cluster, .. } = v {
                        if *cluster != 0 && whole && extent_of(new, d) == *cluster {
                            out.insert(d, (r.src, k.off));
                        }
                    }
                    true
                },
            );
        }
        out
    }

    /// Truncate, writes and punches that turn `old` (a file's data, or nothing) into `new`;
    /// the `cloned` clusters come as range clones, into `clones`.
    fn data(
        &self,
        ino: u64,
        old: Option<&Inode>,
        new: &Inode,
        cloned: &BTreeMap<u64, (u64, u64)>,
        out: &mut Vec<Change>,
        clones: &mut Vec<Change>,
    ) {
        let cs = self.cs;
        // Runs of consecutive clusters from consecutive source clusters: (first, src, src first, n).
        let mut runs: Vec<(u64, u64, u64, u64)> = Vec::new();
        for (&d, &(src, si)) in cloned {
            match runs.last_mut() {
                Some((rd, rsrc, rsi, n)) if *rd + *n == d && *rsrc == src && *rsi + *n == si => {
                    *n += 1
                }
                _ => runs.push((d, src, si, 1)),
            }
        }
        clones.extend(runs.into_iter().map(|(d, src, si, n)| Change::CloneRange {
            ino,
            off: d * cs,
            src,
            src_off: si * cs,
            len: n * cs,
        }));
        let (old_size, old_extents) = old.map_or((0, Tree(None)), |i| (i.size, i.extents.clone()));
        if old_size != new.size {
            out.push(Change::Truncate {
                ino,
                size: new.size,
            });
        }
        let cs = self.cs;
        let end = new.size;
        tree::compare(
            &old_extents,
            &new.extents,
            &extent_key(0),
            &Key::new(0, KIND_EXTENT + 1, 0),
            &mut |k, a, b| {
                let off = k.off * cs;
                if off >= end {
                    return;
                }
                let len = cs.min(end - off);
                let mapped = |v: Option<&Val>| matches!(v, Some(Val::Extent { cluster, .. }) if *cluster != 0);
                if mapped(b) {
                    if !cloned.contains_key(&k.off) {
                        out.push(Change::Write { ino, off, len });
                    }
                } else if mapped(a) && old_size > off {
                    out.push(Change::Punch { ino, off, len });
                }
            },
        );
    }

    fn xattrs(&self, ino: u64, old: &Tree, out: &mut Vec<Change>) {
        tree::compare(
            old,
            self.newer,
            &Key::new(ino, KIND_XATTR, 0),
            &Key::new(ino, KIND_XATTR + 1, 0),
            &mut |_, a, b| {
                let list = |v: Option<&Val>| match v {
                    Some(Val::Xattrs { entries, .. }) => entries.clone(),
                    _ => Vec::new(),
                };
                let (a, b) = (list(a), list(b));
                for (n, _) in &a {
                    if !b.iter().any(|(m, _)| m == n) {
                        out.push(Change::RemoveXattr {
                            ino,
                            name: n.clone(),
                        });
                    }
                }
                for (n, v) in &b {
                    if !a.contains(&(n.clone(), v.clone())) {
                        out.push(Change::SetXattr {
                            ino,
                            name: n.clone(),
                            value: v.clone(),
                        });
                    }
                }
            },
        );
    }
}

/// The changes below `path` from image `base` to image `newer` (see the module).
pub fn subtree_diff(
    base: &Tree,
    newer: &Tree,
    path: &[u8],
    cluster_size: u64,
) -> Result<SubtreeDiff> {
    let top = resolve_in(base, path)?;
    if resolve_in(newer, path)? != top {
        return Err(Error::Invalid(format!(
            "{:?} is a different directory in the two images",
            String::from_utf8_lossy(path)
        )));
    }
    if inode_in(base, top).map(|i| i.typ) != Some(InodeType::Dir) {
        return Err(Error::Posix {
            errno: libc::ENOTDIR,
            what: format!("{:?} is not a directory", String::from_utf8_lossy(path)),
        });
    }
    let mut w = Walk {
        base,
        newer,
        top,
        cs: cluster_size,
        in_base: HashMap::new(),
        in_newer: HashMap::new(),
        walked: HashSet::new(),
        dirs: Vec::new(),
        created: Vec::new(),
        created_set: HashSet::new(),
        removals: Vec::new(),
        links: Vec::new(),
        touched: BTreeSet::new(),
        dirs_visited: 0,
    };
    w.run();
    let mut changes = Vec::new();
    let mut contents = Vec::new();
    let mut clones = Vec::new();
    let mut attrs = Vec::new();
    let empty = Tree(None);
    // Range clones first, for every file that may have them: a clone is sent only from a
    // source no other clone of this diff changes (the receiver applies them in turn).
    let mut cloned: HashMap<u64, BTreeMap<u64, (u64, u64)>> = HashMap::new();
    for ino in w.created.clone().into_iter().chain(w.touched.clone()) {
        if let Some(i) = inode_in(newer, ino).filter(|i| i.typ == InodeType::File) {
            let m = w.cloned(ino, i);
            if !m.is_empty() {
                cloned.insert(ino, m);
            }
        }
    }
    let dests: HashSet<u64> = cloned.keys().copied().collect();
    for m in cloned.values_mut() {
        m.retain(|_, (src, _)| !dests.contains(src));
    }
    let no_clones = BTreeMap::new();
    for ino in w.created.clone() {
        let i = inode_in(newer, ino).ok_or_else(|| Error::Corrupt {
            block: 0,
            what: format!("an entry names inode {ino}, which the newer image lacks"),
        })?;
        let typ = if i.typ == InodeType::Volume {
            InodeType::File
        } else {
            i.typ
        };
        let target = match typ {
            InodeType::Symlink => readlink_in(newer, ino)?,
            _ => Vec::new(),
        };
        changes.push(Change::Create {
            ino,
            typ,
            attrs: i.attrs,
            target,
        });
        if typ == InodeType::File {
            let origin = (i.origin_obj != 0 && w.in_base(i.origin_obj))
                .then(|| inode_in(base, i.origin_obj))
                .flatten()
                .filter(|o| o.typ == InodeType::File);
            if origin.is_some() {
                changes.push(Change::CloneFile {
                    ino,
                    src: i.origin_obj,
                });
            }
            let c = cloned.get(&ino).unwrap_or(&no_clones);
            w.data(ino, origin, i, c, &mut contents, &mut clones);
        }
        w.xattrs(ino, &empty, &mut contents);
        attrs.push(Change::SetAttr {
            ino,
            attrs: i.attrs,
        });
    }
    let mut compared = 0;
    for ino in w.touched.clone() {
        let (Some(a), Some(b)) = (inode_in(base, ino), inode_in(newer, ino)) else {
            continue;
        };
        if !w.in_newer(ino) || a == b {
            continue;
        }
        compared += 1;
        if b.typ.has_extents() {
            let c = cloned.get(&ino).unwrap_or(&no_clones);
            w.data(ino, Some(a), b, c, &mut contents, &mut clones);
        }
        w.xattrs(ino, base, &mut contents);
        if a.attrs != b.attrs || b.typ.has_extents() || b.typ == InodeType::Dir {
            attrs.push(Change::SetAttr {
                ino,
                attrs: b.attrs,
            });
        }
    }
    changes.append(&mut clones);
    changes.append(&mut w.removals);
    changes.append(&mut w.links);
    changes.append(&mut contents);
    changes.append(&mut attrs);
    Ok(SubtreeDiff {
        top,
        changes,
        dirs_visited: w.dirs_visited,
        inodes_compared: compared + w.created.len() as u64,
    })
}

/// A path of `(dir, name)` relative to directory `top` in an image, for people to read.
pub fn path_of(root: &Tree, top: u64, dir: u64, name: &[u8]) -> String {
    let mut parts = vec![String::from_utf8_lossy(name).into_owned()];
    let mut d = dir;
    let mut seen = HashSet::new();
    while d != top && seen.insert(d) {
        match links_in(root, d).into_iter().next() {
            Some((p, n)) => {
                parts.push(String::from_utf8_lossy(&n).into_owned());
                d = p;
            }
            None => break,
        }
    }
    parts.reverse();
    parts.join("/")
}

impl SubtreeDiff {
    /// For people: one line per changed name (`+` created, `-` deleted, `R` renamed or moved,
    /// `L` a new hard link, `M` data, `A` attributes, `X` extended attributes), paths relative
    /// to the diffed directory.
    pub fn summary(&self, base: &Tree, newer: &Tree) -> Vec<String> {
        let mut out = Vec::new();
        let mut detached: HashMap<u64, Vec<String>> = HashMap::new();
        let mut created = HashSet::new();
        let mut named_new = HashSet::new();
        let mut data = BTreeSet::new();
        let mut xattr = BTreeSet::new();
        for c in &self.changes {
            match c {
                Change::Create { ino, .. } => {
                    created.insert(*ino);
                }
                Change::Detach { dir, name, ino } => detached
                    .entry(*ino)
                    .or_default()
                    .push(path_of(base, self.top, *dir, name)),
                Change::Unlink { dir, name, .. } => {
                    out.push(format!("- {}", path_of(base, self.top, *dir, name)))
                }
                Change::Link { dir, name, ino } => {
                    let p = path_of(newer, self.top, *dir, name);
                    if created.contains(ino) && named_new.insert(*ino) {
                        out.push(format!("+ {p}"));
                    } else if let Some(from) = detached.get_mut(ino).and_then(|v| v.pop()) {
                        out.push(format!("R {from} -> {p}"));
                    } else {
                        out.push(format!("L {p}"));
                    }
                }
                Change::Truncate { ino, .. }
                | Change::Write { ino, .. }
                | Change::Punch { ino, .. }
                | Change::CloneRange { ino, .. }
                    if !created.contains(ino) =>
                {
                    data.insert(*ino);
                }
                Change::SetXattr { ino, .. } | Change::RemoveXattr { ino, .. }
                    if !created.contains(ino) =>
                {
                    xattr.insert(*ino);
                }
                _ => {}
            }
        }
        for (_, froms) in detached {
            out.extend(froms.into_iter().map(|p| format!("- {p}")));
        }
        let name_of = |ino: u64| match links_in(newer, ino)
            .into_iter()
            .find(|(d, _)| is_within(newer, *d, self.top))
        {
            Some((d, n)) => path_of(newer, self.top, d, &n),
            None => format!("inode {ino}"),
        };
        for ino in &data {
            out.push(format!("M {}", name_of(*ino)));
        }
        for ino in &xattr {
            out.push(format!("X {}", name_of(*ino)));
        }
        for c in &self.changes {
            if let Change::SetAttr { ino, attrs } = c {
                let changed = inode_in(base, *ino).is_some_and(|a| a.attrs != *attrs);
                if changed && !created.contains(ino) && !data.contains(ino) && *ino != self.top {
                    let typ = inode_in(newer, *ino).map(|i| i.typ);
                    if typ != Some(InodeType::Dir) {
                        out.push(format!("A {}", name_of(*ino)));
                    }
                }
            }
        }
        out
    }
}

impl Core {
    /// Apply a subtree diff's changes in order. `map` takes the source's inode numbers to this
    /// store's (the diffed directory and everything the older image had must be in it);
    /// `newer_data` reads bytes of the newer image for `Write`. One transaction: commit after.
    pub fn apply(
        &mut self,
        data: &mut dyn Data,
        changes: &[Change],
        map: &mut HashMap<u64, u64>,
        newer_data: &mut dyn FnMut(u64, u64, u64) -> Result<Vec<u8>>,
    ) -> Result<()> {
        let at = |map: &HashMap<u64, u64>, ino: u64| {
            map.get(&ino).copied().ok_or_else(|| {
                Error::Invalid(format!(
                    "the stream names inode {ino}, which this store lacks"
                ))
            })
        };
        for c in changes {
            match c {
                Change::Create {
                    ino,
                    typ,
                    attrs,
                    target,
                } => {
                    if !matches!(typ, InodeType::Dir | InodeType::File | InodeType::Symlink) {
                        return Err(Error::Invalid(format!(
                            "a {typ:?} is not created by a stream"
                        )));
                    }
                    let new = self.new_unlinked(*typ, *attrs, target)?;
                    map.insert(*ino, new);
                }
                Change::CloneFile { ino, src } => {
                    let (dst, src) = (at(map, *ino)?, at(map, *src)?);
                    self.share_data(src, dst)?;
                }
                Change::CloneRange {
                    ino,
                    off,
                    src,
                    src_off,
                    len,
                } => {
                    let (dst, src) = (at(map, *ino)?, at(map, *src)?);
                    self.clone_range(src, *src_off, dst, *off, *len)?;
                }
                Change::Detach { dir, name, .. } => {
                    self.remove_entry(at(map, *dir)?, name)?;
                }
                Change::Unlink { dir, name, ino } => {
                    self.remove_entry(at(map, *dir)?, name)?;
                    self.drop_if_unlinked(at(map, *ino)?)?;
                }
                Change::Link { dir, name, ino } => {
                    self.add_entry(at(map, *dir)?, name, at(map, *ino)?)?;
                }
                Change::Truncate { ino, size } => self.truncate(data, at(map, *ino)?, *size)?,
                Change::Write { ino, off, len } => {
                    let bytes = newer_data(*ino, *off, *len)?;
                    self.write(data, at(map, *ino)?, *off, &bytes)?;
                }
                Change::Punch { ino, off, len } => self.punch(data, at(map, *ino)?, *off, *len)?,
                Change::SetXattr { ino, name, value } => {
                    self.set_xattr(at(map, *ino)?, name, value)?
                }
                Change::RemoveXattr { ino, name } => self.remove_xattr(at(map, *ino)?, name)?,
                Change::SetAttr { ino, attrs } => {
                    self.setattr(at(map, *ino)?, SetAttrs::all(attrs))?
                }
            }
        }
        Ok(())
    }
}
