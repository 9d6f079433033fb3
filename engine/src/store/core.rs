//! The store's state and every change to it, in memory and without I/O: volumes, snapshots,
//! clones, metadata objects, block diffs, and the freezing of a transaction into the blocks a
//! commit writes. The owner reactor runs it ([`super::Store`]); tests and the offline CLI run
//! it directly against a file or a byte array.
//!
//! Generations: every change is stamped with the open transaction's generation `gen`. A commit
//! takes `gen` as its own and opens `gen + 1`; a snapshot takes `gen` and opens `gen + 1` too,
//! so that everything after a snapshot has a higher generation than it, which is what
//! [`Core::block_diff`] relies on.

use std::collections::HashMap;

use super::alloc::Alloc;
use super::format::{
    decode_rc_page, Key, Layout, RawNode, Superblock, TreeKind, BLOCK, KIND_CHUNK, KIND_EXTENT,
    KIND_INODE, KIND_SNAP, MAX_NAME, RC_PER_PAGE,
};
use super::namespace::{self, ROOT};
use super::tree::{
    self, get, insert, range, release_val, remove, update, Attrs, Builder, Inode, InodeType,
    SnapRec, Space as _, Tree, Val, INODE_THICK,
};
use super::{Error, Result};

/// Blocks a commit writes: nodes and table pages first, then (after a flush) the superblock.
pub struct Frozen {
    pub gen: u64,
    pub writes: Vec<(u64, Vec<u8>)>,
    pub superblock: (u64, Vec<u8>),
}

/// How the owner must prepare a cluster before a write may go into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prep {
    /// Write in place.
    Ready { cluster: u64 },
    /// A new cluster: fill it with zeros first (unless the write covers it).
    Zero { cluster: u64 },
    /// A new cluster replacing a shared one: copy `from` into it first.
    Copy { from: u64, to: u64 },
}

impl Prep {
    pub fn cluster(self) -> u64 {
        match self {
            Prep::Ready { cluster } | Prep::Zero { cluster } => cluster,
            Prep::Copy { to, .. } => to,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInfo {
    pub obj: u64,
    pub name: String,
    pub size: u64,
    pub uuid: u128,
    pub thick: bool,
    pub origin_snap: u64,
    pub origin_obj: u64,
    pub gen: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapInfo {
    pub id: u64,
    pub name: String,
    pub gen: u64,
    pub created_unix: u64,
    pub origin_vol: u64,
    pub uuid: u128,
}

/// The clusters of a volume that differ between two images, in runs of cluster indexes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diff {
    pub cluster_size: u32,
    pub from_gen: u64,
    pub to_gen: u64,
    /// The volume's size in the newer image.
    pub size: u64,
    /// `(first cluster, clusters)`, ascending.
    pub runs: Vec<(u64, u64)>,
    /// Whether the base was the volume's own earlier image (else every mapped cluster is listed).
    pub incremental: bool,
}

impl Diff {
    /// As `store_block_diff` and `tandem store diff` print it: byte extents.
    pub fn to_json(&self) -> serde_json::Value {
        let cs = self.cluster_size as u64;
        serde_json::json!({
            "cluster_size": cs,
            "from_generation": self.from_gen,
            "to_generation": self.to_gen,
            "size": self.size,
            "incremental": self.incremental,
            "changed_bytes": self.runs.iter().map(|r| r.1 * cs).sum::<u64>(),
            "extents": self.runs.iter()
                .map(|&(first, n)| serde_json::json!({"offset": first * cs, "length": n * cs}))
                .collect::<Vec<_>>(),
        })
    }
}

pub struct Core {
    pub layout: Layout,
    pub uuid: u128,
    pub name: String,
    /// The open transaction's generation.
    pub gen: u64,
    /// The last durable commit.
    pub committed: u64,
    pub objects: Tree,
    pub snaps: Tree,
    pub next_object: u64,
    pub next_snapshot: u64,
    pub snap_epoch: u64,
    /// The last generation that shared clusters (a snapshot, a file or range clone; at load,
    /// the loaded one): an extent born after it belongs to its volume or file alone.
    share_gen: u64,
    pub alloc: Alloc,
    /// Metadata objects by name (volumes are found by their paths in the namespace).
    objects_by_name: HashMap<String, u64>,
    /// The live volumes.
    pub(super) volume_objs: std::collections::BTreeSet<u64>,
    snap_names: HashMap<String, u64>,
    changed: bool,
}

fn inode_key(obj: u64) -> Key {
    Key::new(obj, KIND_INODE, 0)
}

pub(super) fn extent_key(idx: u64) -> Key {
    Key::new(0, KIND_EXTENT, idx)
}

fn snap_key(id: u64) -> Key {
    Key::new(id, KIND_SNAP, 0)
}

const EXTENTS_END: Key = Key {
    obj: 0,
    kind: KIND_EXTENT + 1,
    off: 0,
};

/// A volume's name: its path in the namespace from the root (`vm1/disk0`), which also names
/// its bdev `<store>/<path>`: at most 63 bytes in all, each component a valid name.
pub fn check_volume_name(name: &str) -> Result<Vec<&str>> {
    let comps: Vec<&str> = name.split('/').collect();
    if name.len() > MAX_NAME {
        return Err(Error::Invalid(format!(
            "{name:?}: a volume's path is at most {MAX_NAME} bytes"
        )));
    }
    for c in &comps {
        check_name(c).map_err(|_| {
            Error::Invalid(format!(
                "{name:?}: a volume's path is names joined by single '/', each without NUL, not . or .."
            ))
        })?;
    }
    Ok(comps)
}

/// A store's, volume path component's or snapshot's name: it becomes part of a bdev name.
pub fn check_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > MAX_NAME
        || name.contains(['/', '\0'])
        || name == "."
        || name == ".."
    {
        return Err(Error::Invalid(format!(
            "{name:?}: a name is 1 to {MAX_NAME} bytes without '/' or NUL, and not . or .."
        )));
    }
    Ok(())
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Core {
    /// A new, empty store on a device of `device_bytes`, and the blocks that make it so. Every
    /// table page is written in both copies and both superblock slots are written, so nothing
    /// of an earlier store on the device can be mistaken for part of this one.
    pub fn format(
        device_bytes: u64,
        cluster_size: u32,
        name: &str,
        uuid: u128,
    ) -> Result<(Core, Frozen)> {
        check_name(name)?;
        if !super::format::valid_cluster_size(cluster_size) {
            return Err(Error::Invalid(format!(
                "cluster size {cluster_size}: a power of two from 4 KiB to 1 MiB"
            )));
        }
        let layout = Layout::new(cluster_size, device_bytes / cluster_size as u64);
        if layout.total_clusters < layout.first_data_cluster + super::alloc::META_MARGIN + 2 {
            return Err(Error::Invalid(format!(
                "a {device_bytes}-byte device is too small for a store of {cluster_size}-byte clusters"
            )));
        }
        let mut core = Core {
            layout,
            uuid,
            name: name.to_owned(),
            gen: 1,
            committed: 0,
            objects: Tree(None),
            snaps: Tree(None),
            next_object: 1,
            next_snapshot: 1,
            snap_epoch: 0,
            share_gen: 0,
            alloc: Alloc::new(layout),
            objects_by_name: HashMap::new(),
            volume_objs: Default::default(),
            snap_names: HashMap::new(),
            changed: true,
        };
        let attrs = Attrs::now(0o755);
        let root = core.new_ns_inode(InodeType::Dir, attrs);
        debug_assert_eq!(root, ROOT);
        core.change_ns_root();
        let mut frozen = core.freeze()?;
        // The first commit wrote copy A of every page and superblock slot 1; copy B and slot 0
        // are cleared.
        for p in 0..layout.rc_pages {
            frozen.writes.push((layout.rc_block(p, 1), vec![0; BLOCK]));
        }
        frozen.writes.push((0, vec![0; BLOCK]));
        Ok((core, frozen))
    }

    /// Open the store whose blocks `read` returns (several at a time, in the order asked), and
    /// refuse it if the full check finds a problem: a table page read from a stale copy, say,
    /// would otherwise hand out clusters still in use.
    pub fn load(device_bytes: u64, read: &mut super::ReadBlocks) -> Result<Core> {
        let core = Core::load_unchecked(device_bytes, read)?;
        match super::check::check(&core).into_iter().next() {
            None => Ok(core),
            Some(p) => Err(Error::Corrupt {
                block: p.block,
                what: format!("the check failed (run `tandem store check`): {}", p.what),
            }),
        }
    }

    /// Open without the full check: every block read is still verified (checksum, address,
    /// structure). For the check itself, which reports every problem rather than the first.
    pub fn load_unchecked(device_bytes: u64, read: &mut super::ReadBlocks) -> Result<Core> {
        let slots = read(&[0, 1])?;
        let decoded: Vec<Result<Superblock>> = slots
            .iter()
            .enumerate()
            .map(|(i, b)| Superblock::decode(b, i as u64))
            .collect();
        let sb = match (&decoded[0], &decoded[1]) {
            (Ok(a), Ok(b)) => if a.generation >= b.generation { a } else { b }.clone(),
            (Ok(good), Err(e)) | (Err(e), Ok(good)) => {
                // A torn write of the newer slot leaves this; so would damage to it.
                if !e.to_string().contains("no store magic") {
                    tracing::warn!(
                        "{e}: opening at generation {} from the other slot",
                        good.generation
                    );
                }
                good.clone()
            }
            (Err(a), Err(b)) => {
                return Err(Error::Corrupt {
                    block: 0,
                    what: format!("no valid superblock: {a}; {b}"),
                })
            }
        };
        let fits = sb
            .total_clusters
            .checked_mul(sb.cluster_size as u64)
            .is_some_and(|b| b <= device_bytes);
        if !fits {
            return Err(Error::Corrupt {
                block: sb.generation % 2,
                what: format!(
                    "superblock: {} clusters of {} bytes do not fit on a device of {device_bytes} bytes",
                    sb.total_clusters, sb.cluster_size
                ),
            });
        }
        let layout = Layout::new(sb.cluster_size, sb.total_clusters);
        let blocks: Vec<u64> = (0..layout.rc_pages)
            .flat_map(|p| [layout.rc_block(p, 0), layout.rc_block(p, 1)])
            .collect();
        let pages = read(&blocks)?;
        let mut refs = Vec::with_capacity(layout.rc_pages as usize * RC_PER_PAGE);
        let mut copy = Vec::with_capacity(layout.rc_pages as usize);
        // Pages whose other copy was written by a commit that never became durable: its
        // generation will be used again, so the next commit must overwrite that copy.
        let mut ahead = Vec::new();
        for p in 0..layout.rc_pages {
            if (0..2u8).any(|c| {
                decode_rc_page(&pages[(2 * p + c as u64) as usize], p)
                    .is_some_and(|(g, _)| g > sb.generation)
            }) {
                ahead.push(p);
            }
            let pick = (0..2u8)
                .filter_map(|c| {
                    decode_rc_page(&pages[(2 * p + c as u64) as usize], p)
                        .filter(|(g, _)| *g <= sb.generation)
                        .map(|(g, e)| (g, c, e))
                })
                .max_by_key(|(g, _, _)| *g)
                .ok_or_else(|| Error::Corrupt {
                    block: layout.rc_block(p, 0),
                    what: format!("reference-count page {p}: neither copy is valid"),
                })?;
            refs.extend(pick.2);
            copy.push(pick.1);
        }
        let bpc = layout.blocks_per_cluster();
        let node_range = layout.first_data_cluster * bpc..layout.total_clusters * bpc;
        let mut raw: HashMap<u64, RawNode> = HashMap::new();
        let mut frontier: Vec<u64> = [sb.object_root, sb.snap_root]
            .into_iter()
            .filter(|&a| a != 0)
            .collect();
        while !frontier.is_empty() {
            frontier.sort_unstable();
            frontier.dedup();
            if let Some(&a) = frontier.iter().find(|a| !node_range.contains(a)) {
                return Err(Error::Corrupt {
                    block: a,
                    what: "node address outside the data clusters".into(),
                });
            }
            let blocks = read(&frontier)?;
            let mut next = Vec::new();
            for (&addr, b) in frontier.iter().zip(&blocks) {
                let node = RawNode::decode(b, addr)?;
                for (child, _) in tree::raw_children(&node) {
                    if !raw.contains_key(&child) {
                        next.push(child);
                    }
                }
                raw.insert(addr, node);
            }
            next.retain(|a| !raw.contains_key(a));
            frontier = next;
        }
        let mut builder = Builder {
            raw: &raw,
            built: HashMap::new(),
        };
        let objects = builder.tree(sb.object_root, TreeKind::Object, sb.object_written)?;
        let snaps = builder.tree(sb.snap_root, TreeKind::Snapshot, sb.snap_written)?;
        let mut alloc = Alloc::with_refs(layout, refs, copy);
        for &addr in raw.keys() {
            alloc.node_in_use(addr)?;
        }
        for p in ahead {
            alloc.mark_page_dirty(p);
        }
        let mut core = Core {
            layout,
            uuid: sb.uuid,
            name: sb.name,
            gen: sb.generation + 1,
            committed: sb.generation,
            objects,
            snaps,
            next_object: sb.next_object,
            next_snapshot: sb.next_snapshot,
            snap_epoch: sb.snap_epoch,
            share_gen: sb.generation,
            alloc,
            objects_by_name: HashMap::new(),
            volume_objs: Default::default(),
            snap_names: HashMap::new(),
            changed: false,
        };
        if namespace::inode_in(&core.objects, ROOT).is_none_or(|r| r.typ != InodeType::Dir) {
            return Err(Error::Corrupt {
                block: sb.object_root,
                what: "the store has no root directory".into(),
            });
        }
        for v in core.volumes_in(&core.objects.clone()) {
            core.volume_objs.insert(v.obj);
            if v.thick {
                let mapped = core.mapped_clusters(v.obj);
                core.alloc.reserved += core.clusters_for(v.size).saturating_sub(mapped);
            }
        }
        for (obj, name) in core.objects_named() {
            core.objects_by_name.insert(name, obj);
        }
        for s in core.snapshots() {
            core.snap_names.insert(s.name, s.id);
        }
        Ok(core)
    }

    /// Whether anything changed since the last commit.
    pub fn is_dirty(&self) -> bool {
        self.changed
    }

    pub(super) fn mark_changed(&mut self) {
        self.changed = true;
    }

    /// Clusters were shared in this transaction (see `share_gen`).
    pub(super) fn mark_shared(&mut self) {
        self.share_gen = self.gen;
    }

    /// The root directory was made at format: it links nowhere, and its own link count is 2.
    fn change_ns_root(&mut self) {
        update(
            &mut self.objects,
            &inode_key(ROOT),
            &mut self.alloc,
            |v, _| {
                if let Val::Inode(i) = v {
                    i.nlink = 2;
                }
            },
        );
    }

    /// Freeze the open transaction into the blocks of its commit, and open the next one.
    /// Call [`Core::commit_done`] once the superblock is durable.
    pub fn freeze(&mut self) -> Result<Frozen> {
        let gen = self.gen;
        let mut writes = Vec::new();
        let alloc = &mut self.alloc;
        let mut take = || alloc.alloc_node();
        tree::persist(&self.objects, TreeKind::Object, gen, &mut take, &mut writes)?;
        tree::persist(&self.snaps, TreeKind::Snapshot, gen, &mut take, &mut writes)?;
        writes.extend(self.alloc.dirty_pages(gen));
        self.alloc.begin_commit();
        let sb = Superblock {
            cluster_size: self.layout.cluster_size,
            generation: gen,
            uuid: self.uuid,
            total_clusters: self.layout.total_clusters,
            first_data_cluster: self.layout.first_data_cluster,
            rc_pages: self.layout.rc_pages,
            object_root: self.objects.addr(),
            object_gen: self.objects.max_gen(),
            snap_root: self.snaps.addr(),
            snap_gen: self.snaps.max_gen(),
            next_object: self.next_object,
            next_snapshot: self.next_snapshot,
            snap_epoch: self.snap_epoch,
            reserved_clusters: self.alloc.reserved,
            object_written: self.objects.written(),
            snap_written: self.snaps.written(),
            name: self.name.clone(),
        };
        self.gen += 1;
        self.changed = false;
        Ok(Frozen {
            gen,
            writes,
            superblock: (gen % 2, sb.encode()),
        })
    }

    /// Commit `gen` is durable.
    pub fn commit_done(&mut self, gen: u64) {
        self.commit_durable(gen);
        self.release_oldest_frees();
    }

    /// Commit `gen` is durable; what it freed stays held until [`Core::release_oldest_frees`]
    /// (the owner waits for volume I/O that may still see those clusters).
    pub fn commit_durable(&mut self, gen: u64) {
        self.committed = gen;
    }

    /// Hand out again what the oldest durable commit not yet released freed.
    pub fn release_oldest_frees(&mut self) {
        self.alloc.end_commit();
    }

    pub fn cluster_size(&self) -> u64 {
        self.layout.cluster_size as u64
    }

    pub fn clusters_for(&self, size: u64) -> u64 {
        size.div_ceil(self.cluster_size())
    }

    // ---- volumes ----

    pub fn volume_named(&self, name: &str) -> Result<u64> {
        volume_at(&self.objects, name)
    }

    pub fn volume(&self, obj: u64) -> Result<&Inode> {
        match get(&self.objects, &inode_key(obj)) {
            Some(Val::Inode(i)) if i.typ == InodeType::Volume => Ok(i),
            _ => Err(Error::NotFound(format!("volume object {obj}"))),
        }
    }

    /// A volume or a regular file: an inode with data in clusters.
    fn extents_inode(&self, obj: u64) -> Result<&Inode> {
        match get(&self.objects, &inode_key(obj)) {
            Some(Val::Inode(i)) if i.typ.has_extents() => Ok(i),
            _ => Err(Error::NotFound(format!("volume or file object {obj}"))),
        }
    }

    pub fn volume_info(&self, obj: u64) -> Result<VolumeInfo> {
        self.volume(obj).map(|i| info(obj, i))
    }

    /// The volumes of an image, in the order they were made: a walk of every inode, for
    /// loading and for listing a snapshot's.
    fn volumes_in(&self, root: &Tree) -> Vec<VolumeInfo> {
        let mut out = Vec::new();
        tree::each(root, &mut |k, v| match v {
            Val::Inode(i) if i.typ == InodeType::Volume => out.push(info(k.obj, i)),
            _ => {}
        });
        out
    }

    /// The live volumes, in the order they were made.
    pub fn volumes(&self) -> Vec<VolumeInfo> {
        self.volume_objs
            .iter()
            .filter_map(|&obj| self.volume_info(obj).ok())
            .collect()
    }

    fn objects_named(&self) -> Vec<(u64, String)> {
        let mut out = Vec::new();
        tree::each(&self.objects, &mut |k, v| match v {
            Val::Inode(i) if i.typ == InodeType::Object => out.push((k.obj, i.name.clone())),
            _ => {}
        });
        out
    }

    fn new_inode(
        &mut self,
        typ: InodeType,
        name: &str,
        size: u64,
        flags: u8,
        uuid: u128,
    ) -> Result<u64> {
        let taken = match typ {
            // A volume's name is its path, and names its bdev `<store>/<path>`; the directories
            // on the way must be there.
            InodeType::Volume => {
                let comps = check_volume_name(name)?;
                let (last, up) = comps.split_last().expect("at least one component");
                let dir = namespace::resolve_in(&self.objects, up.join("/").as_bytes())?;
                if namespace::inode_in(&self.objects, dir).map(|i| i.typ) != Some(InodeType::Dir) {
                    return super::posix(libc::ENOTDIR, format!("{name:?}: not under a directory"));
                }
                self.lookup(dir, last.as_bytes()).is_some() || self.snap_names.contains_key(name)
            }
            InodeType::Object if name.is_empty() || name.len() > MAX_NAME => {
                return Err(Error::Invalid(format!(
                    "{name:?}: an object name is 1 to {MAX_NAME} bytes"
                )))
            }
            InodeType::Object => self.objects_by_name.contains_key(name),
            _ => unreachable!("namespace inodes are made by the namespace"),
        };
        if taken {
            return Err(Error::Exists(name.to_owned()));
        }
        let obj = self.next_object;
        self.next_object += 1;
        let attrs = Attrs::now(0o600);
        let mut inode = namespace::blank_inode(typ, self.gen, attrs, attrs.mtime);
        inode.flags = flags;
        inode.name = name.to_owned();
        inode.size = size;
        inode.uuid = uuid;
        let old = insert(
            &mut self.objects,
            inode_key(obj),
            Val::Inode(inode),
            &mut self.alloc,
        );
        debug_assert!(old.is_none());
        self.changed = true;
        match typ {
            InodeType::Volume => {
                let (dir, last) = namespace::split_parent(&self.objects, name.as_bytes())?;
                if let Err(e) = self.add_entry(dir, &last, obj) {
                    self.drop_if_unlinked(obj)?;
                    return Err(e);
                }
                self.volume_objs.insert(obj);
            }
            _ => {
                self.objects_by_name.insert(name.to_owned(), obj);
            }
        }
        Ok(obj)
    }

    /// A volume of `size` bytes. Thick: its clusters are promised now, so a write never fails
    /// for want of space (clusters shared with a snapshot still need space to be copied).
    pub fn create_volume(&mut self, name: &str, size: u64, thick: bool, uuid: u128) -> Result<u64> {
        check_size(size, self.cluster_size())?;
        if thick {
            self.alloc.reserve(self.clusters_for(size))?;
        }
        let flags = if thick { INODE_THICK } else { 0 };
        self.new_inode(InodeType::Volume, name, size, flags, uuid)
            .inspect_err(|_| {
                if thick {
                    self.alloc.unreserve(self.clusters_for(size));
                }
            })
    }

    pub fn mapped_clusters(&self, obj: u64) -> u64 {
        let Ok(i) = self.extents_inode(obj) else {
            return 0;
        };
        let mut n = 0;
        range(&i.extents, &Key::MIN, &EXTENTS_END, &mut |_, v| {
            n += matches!(v, Val::Extent { cluster, .. } if *cluster != 0) as u64;
            true
        });
        n
    }

    pub fn resize_volume(&mut self, obj: u64, size: u64) -> Result<()> {
        check_size(size, self.cluster_size())?;
        // Only plain fields are taken out: a copy of the inode would hold its extent tree and
        // make every change below copy nodes that this tree alone owns.
        let inode = self.volume(obj)?;
        let (old_size, thick) = (inode.size, inode.flags & INODE_THICK != 0);
        let (old_n, new_n) = (self.clusters_for(old_size), self.clusters_for(size));
        let mut cut = Vec::new();
        range(
            &inode.extents,
            &extent_key(new_n),
            &EXTENTS_END,
            &mut |k, v| {
                if matches!(v, Val::Extent { cluster, .. } if *cluster != 0) {
                    cut.push(k.off);
                }
                true
            },
        );
        if thick && new_n > old_n {
            self.alloc.reserve(new_n - old_n)?;
        }
        for idx in cut {
            self.unmap_cluster(obj, idx)?;
        }
        if thick && new_n < old_n {
            // The clusters past the new end were given back to the reservation by the unmaps.
            self.alloc.unreserve(old_n - new_n);
        }
        let gen = self.gen;
        update(
            &mut self.objects,
            &inode_key(obj),
            &mut self.alloc,
            |v, _| {
                if let Val::Inode(i) = v {
                    i.size = size;
                    i.gen = gen;
                }
            },
        );
        self.changed = true;
        self.touch_up(obj);
        Ok(())
    }

    pub fn delete_volume(&mut self, obj: u64) -> Result<()> {
        let i = self.volume(obj)?;
        let (name, size, thick) = (i.name.clone(), i.size, i.flags & INODE_THICK != 0);
        if thick {
            let unmapped = self
                .clusters_for(size)
                .saturating_sub(self.mapped_clusters(obj));
            self.alloc.unreserve(unmapped);
        }
        let (dir, last) = namespace::split_parent(&self.objects, name.as_bytes())?;
        self.remove_entry(dir, &last)?;
        self.volume_objs.remove(&obj);
        self.drop_if_unlinked(obj)
    }

    /// The map of a volume, live or in a snapshot: `(cluster index, cluster, birth generation)`
    /// for each mapped cluster, ascending.
    pub fn extent_births(&self, snap: Option<u64>, obj: u64) -> Result<Vec<(u64, u64, u64)>> {
        let inode = match snap {
            None => self.volume(obj)?.clone(),
            Some(id) => self.inode_in(&self.snapshot_root(id)?, obj)?,
        };
        let mut out = Vec::new();
        range(&inode.extents, &Key::MIN, &EXTENTS_END, &mut |k, v| {
            if let Val::Extent { cluster, birth } = v {
                if *cluster != 0 {
                    out.push((k.off, *cluster, *birth));
                }
            }
            true
        });
        Ok(out)
    }

    /// Make cluster `idx` of a volume ready for a write: allocate it in a hole, copy it when a
    /// snapshot or clone shares it, or find it already the volume's own. Either way the extent
    /// is stamped with this generation, so a later diff sees the write.
    pub fn prepare_write(&mut self, obj: u64, idx: u64) -> Result<Prep> {
        let inode = self.extents_inode(obj)?;
        if idx >= self.clusters_for(inode.size) {
            return Err(Error::Invalid(format!(
                "cluster {idx} is past the volume's end"
            )));
        }
        let thick = inode.flags & INODE_THICK != 0;
        let gen = self.gen;
        let key = extent_key(idx);
        if let Some(Val::Extent { cluster, birth }) = get(&inode.extents, &key) {
            if *cluster != 0 && *birth > self.share_gen {
                // Written since anything was last shared: already this inode's own, and any
                // diff sees it. (Two writers racing for one new cluster meet here.)
                return Ok(Prep::Ready { cluster: *cluster });
            }
        }
        self.change_extents(obj, |i, alloc| {
            let current = match get(&i.extents, &key) {
                Some(Val::Extent { cluster, .. }) => *cluster,
                _ => 0,
            };
            let prep = if current == 0 {
                let c = alloc.alloc_cluster(thick && alloc.reserved > 0)?;
                Prep::Zero { cluster: c }
            } else {
                // Make the leaf this volume's own first: if it was shared, its clusters now
                // count one more reference each, and the count says whether this one is shared.
                let _ = update(&mut i.extents, &key, alloc, |_, _| ());
                if alloc.refcount(current) == 1 {
                    Prep::Ready { cluster: current }
                } else {
                    let c = alloc.alloc_cluster(false)?;
                    alloc.cluster_unref(current);
                    Prep::Copy {
                        from: current,
                        to: c,
                    }
                }
            };
            let extent = Val::Extent {
                cluster: prep.cluster(),
                birth: gen,
            };
            let old = insert(&mut i.extents, key, extent, alloc);
            debug_assert!(matches!(old, None | Some(Val::Extent { .. })));
            Ok(prep)
        })
    }

    /// The cluster a live volume maps at cluster index `idx`.
    pub fn extent(&self, obj: u64, idx: u64) -> Option<u64> {
        match get(&self.extents_inode(obj).ok()?.extents, &extent_key(idx)) {
            Some(Val::Extent { cluster, .. }) if *cluster != 0 => Some(*cluster),
            _ => None,
        }
    }

    /// Change the extents of volume or file `obj` through `f`, copying the path to its inode,
    /// and stamp the inode and everything above it with this generation.
    pub(super) fn change_extents<R>(
        &mut self,
        obj: u64,
        f: impl FnOnce(&mut Inode, &mut Alloc) -> Result<R>,
    ) -> Result<R> {
        let gen = self.gen;
        self.changed = true;
        let r = update(
            &mut self.objects,
            &inode_key(obj),
            &mut self.alloc,
            |v, alloc| {
                let Val::Inode(i) = v else {
                    unreachable!("an inode key holds an inode")
                };
                i.gen = gen;
                f(i, alloc)
            },
        )
        .ok_or_else(|| Error::NotFound(format!("volume object {obj}")))??;
        self.touch_up(obj);
        Ok(r)
    }

    /// Unmap cluster `idx`: the volume reads zeros there, and the cluster is freed unless a
    /// snapshot or clone holds it. A hole is left in the map so that a diff sees the change.
    pub fn unmap_cluster(&mut self, obj: u64, idx: u64) -> Result<()> {
        let thick = self.extents_inode(obj)?.flags & INODE_THICK != 0;
        if self.extent(obj, idx).is_none() {
            return Ok(());
        }
        let gen = self.gen;
        self.change_extents(obj, |i, alloc| {
            let hole = Val::Extent {
                cluster: 0,
                birth: gen,
            };
            if let Some(old) = insert(&mut i.extents, extent_key(idx), hole, alloc) {
                release_val(old, alloc);
            }
            Ok(())
        })?;
        // A thick volume keeps a promise for every cluster it does not map (as loading counts
        // it). When a snapshot still holds the unmapped one, the promise may outrun the free
        // space; allocations then fail with NoSpace, and never eat the metadata margin.
        if thick {
            self.alloc.reserved += 1;
        }
        Ok(())
    }

    // ---- snapshots and clones ----

    /// A read-only image of the whole store as it is now. O(1): one more reference to the root.
    pub fn snapshot(&mut self, name: &str, origin_vol: u64, uuid: u128) -> Result<u64> {
        check_name(name)?;
        // Volumes and snapshots share one namespace: both may become bdevs `<store>/<name>`.
        if self.snap_names.contains_key(name) || self.volume_named(name).is_ok() {
            return Err(Error::Exists(name.to_owned()));
        }
        let id = self.next_snapshot;
        self.next_snapshot += 1;
        let rec = SnapRec {
            gen: self.gen,
            created_unix: now_unix(),
            root: self.objects.clone(),
            origin_vol,
            uuid,
            name: name.to_owned(),
        };
        let old = insert(
            &mut self.snaps,
            snap_key(id),
            Val::Snap(rec),
            &mut self.alloc,
        );
        debug_assert!(old.is_none());
        self.snap_names.insert(name.to_owned(), id);
        self.share_gen = self.gen;
        self.gen += 1;
        self.snap_epoch += 1;
        self.changed = true;
        Ok(id)
    }

    pub fn snapshot_named(&self, name: &str) -> Result<u64> {
        self.snap_names
            .get(name)
            .copied()
            .ok_or_else(|| Error::NotFound(format!("snapshot {name:?}")))
    }

    fn snap(&self, id: u64) -> Result<&SnapRec> {
        match get(&self.snaps, &snap_key(id)) {
            Some(Val::Snap(s)) => Ok(s),
            _ => Err(Error::NotFound(format!("snapshot {id}"))),
        }
    }

    /// The root of the live image, or of snapshot `name`'s.
    pub fn image(&self, snapshot: Option<&str>) -> Result<Tree> {
        match snapshot {
            None => Ok(self.objects.clone()),
            Some(s) => self.snapshot_root(self.snapshot_named(s)?),
        }
    }

    /// The root of snapshot `id`'s image.
    pub fn snapshot_root(&self, id: u64) -> Result<Tree> {
        self.snap(id).map(|s| s.root.clone())
    }

    pub fn snapshot_info(&self, id: u64) -> Result<SnapInfo> {
        self.snap(id).map(|s| snap_info(id, s))
    }

    pub fn snapshots(&self) -> Vec<SnapInfo> {
        let mut out = Vec::new();
        tree::each(&self.snaps, &mut |k, v| {
            if let Val::Snap(s) = v {
                out.push(snap_info(k.obj, s));
            }
        });
        out
    }

    /// Volumes as they are in snapshot `id`.
    pub fn snapshot_volumes(&self, id: u64) -> Result<Vec<VolumeInfo>> {
        Ok(self.volumes_in(&self.snapshot_root(id)?))
    }

    fn inode_in(&self, root: &Tree, obj: u64) -> Result<Inode> {
        match get(root, &inode_key(obj)) {
            Some(Val::Inode(i)) if i.typ == InodeType::Volume => Ok(i.clone()),
            _ => Err(Error::NotFound(format!(
                "volume object {obj} in that image"
            ))),
        }
    }

    /// Delete a snapshot: what only it held is freed.
    pub fn delete_snapshot(&mut self, id: u64) -> Result<()> {
        let name = self.snap(id)?.name.clone();
        if let Some(v) = remove(&mut self.snaps, &snap_key(id), &mut self.alloc) {
            release_val(v, &mut self.alloc);
        }
        self.snap_names.remove(&name);
        self.changed = true;
        Ok(())
    }

    /// A writable volume from volume `obj` in snapshot `snap`, sharing every cluster with it.
    pub fn clone_volume(&mut self, snap: u64, obj: u64, name: &str, uuid: u128) -> Result<u64> {
        let origin = self.inode_in(&self.snapshot_root(snap)?, obj)?;
        let new = self.new_inode(InodeType::Volume, name, origin.size, 0, uuid)?;
        self.mark_shared();
        let gen = self.gen;
        update(
            &mut self.objects,
            &inode_key(new),
            &mut self.alloc,
            |v, _| {
                if let Val::Inode(i) = v {
                    i.extents = origin.extents.clone();
                    i.origin_snap = snap;
                    i.origin_obj = obj;
                    i.gen = gen;
                }
            },
        );
        Ok(new)
    }

    /// The clusters of volume `name` that differ between snapshot `from` and snapshot `to`
    /// (or the live store). When the volume in `to` is the same volume as in `from`, or a clone
    /// made from `from`, only subtrees changed after `from` are visited; otherwise every mapped
    /// cluster is listed. `from` `None`: every mapped cluster (what a baseline transfer sends).
    pub fn block_diff(&self, from: Option<u64>, to: Option<u64>, name: &str) -> Result<Diff> {
        let base = from.map(|f| self.snap(f)).transpose()?;
        let (root, to_gen) = match to {
            Some(id) => {
                let s = self.snap(id)?;
                if let Some(base) = base.filter(|b| s.gen < b.gen) {
                    return Err(Error::Invalid(format!(
                        "snapshot {:?} is older than snapshot {:?}",
                        s.name, base.name
                    )));
                }
                (s.root.clone(), s.gen)
            }
            None => (self.objects.clone(), self.gen),
        };
        let obj = volume_at(&root, name)
            .map_err(|_| Error::NotFound(format!("volume {name:?} in the newer image")))?;
        let inode = self.inode_in(&root, obj)?;
        let same = base.is_some_and(|b| get(&b.root, &inode_key(obj)).is_some())
            || from.is_some_and(|f| inode.origin_snap == f);
        let base_gen = base.map_or(0, |b| b.gen);
        let end = self.clusters_for(inode.size);
        let mut runs: Vec<(u64, u64)> = Vec::new();
        let mut add = |idx: u64| {
            if idx >= end {
                return;
            }
            match runs.last_mut() {
                Some((s, n)) if *s + *n == idx => *n += 1,
                _ => runs.push((idx, 1)),
            }
        };
        if same {
            tree::changed_since(
                &inode.extents,
                base_gen,
                &Key::MIN,
                &EXTENTS_END,
                &mut |k, _| add(k.off),
            );
        } else {
            range(&inode.extents, &Key::MIN, &EXTENTS_END, &mut |k, v| {
                if matches!(v, Val::Extent { cluster, .. } if *cluster != 0) {
                    add(k.off);
                }
                true
            });
        }
        Ok(Diff {
            cluster_size: self.layout.cluster_size,
            from_gen: base_gen,
            to_gen,
            size: inode.size,
            runs,
            incremental: same,
        })
    }

    // ---- metadata objects ----

    fn object_named(&self, name: &str) -> Option<u64> {
        self.objects_by_name.get(name).copied()
    }

    /// Keep `data` under `name`, in the same transaction as everything else.
    pub fn put_object(&mut self, name: &str, data: &[u8]) -> Result<()> {
        let obj = match self.object_named(name) {
            Some(o) => o,
            None => self.new_inode(InodeType::Object, name, 0, 0, 0)?,
        };
        let gen = self.gen;
        self.put_chunks(obj, data);
        update(
            &mut self.objects,
            &inode_key(obj),
            &mut self.alloc,
            |v, _| {
                if let Val::Inode(i) = v {
                    i.size = data.len() as u64;
                    i.gen = gen;
                }
            },
        );
        self.changed = true;
        Ok(())
    }

    pub fn get_object(&self, name: &str) -> Option<Vec<u8>> {
        let obj = self.object_named(name)?;
        Some(namespace::chunks_in(&self.objects, obj))
    }

    pub fn delete_object(&mut self, name: &str) -> Result<()> {
        let obj = self
            .object_named(name)
            .ok_or_else(|| Error::NotFound(format!("object {name:?}")))?;
        self.remove_object_keys(obj, &[KIND_CHUNK]);
        self.objects_by_name.remove(name);
        self.changed = true;
        Ok(())
    }
}

/// The volume at path `name` in an image.
fn volume_at(root: &Tree, name: &str) -> Result<u64> {
    match namespace::resolve_in(root, name.as_bytes()) {
        Ok(ino) if namespace::inode_in(root, ino).is_some_and(|i| i.typ == InodeType::Volume) => {
            Ok(ino)
        }
        _ => Err(Error::NotFound(format!("volume {name:?}"))),
    }
}

fn check_size(size: u64, cluster_size: u64) -> Result<()> {
    if size == 0 || size % BLOCK as u64 != 0 {
        return Err(Error::Invalid(format!(
            "size {size}: a volume is a non-zero multiple of 4096 bytes"
        )));
    }
    if size.div_ceil(cluster_size) > super::map::MAX_CLUSTERS {
        return Err(Error::Invalid(format!(
            "size {size}: a volume holds at most {} clusters",
            super::map::MAX_CLUSTERS
        )));
    }
    Ok(())
}

fn info(obj: u64, i: &Inode) -> VolumeInfo {
    VolumeInfo {
        obj,
        name: i.name.clone(),
        size: i.size,
        uuid: i.uuid,
        thick: i.flags & INODE_THICK != 0,
        origin_snap: i.origin_snap,
        origin_obj: i.origin_obj,
        gen: i.gen,
    }
}

fn snap_info(id: u64, s: &SnapRec) -> SnapInfo {
    SnapInfo {
        id,
        name: s.name.clone(),
        gen: s.gen,
        created_unix: s.created_unix,
        origin_vol: s.origin_vol,
        uuid: s.uuid,
    }
}
