//! The copy-on-write B+tree, in memory. Nodes are shared between trees (the live tree, every
//! snapshot, every clone) by reference counting; a change copies the path from the root to the
//! leaf it touches and shares everything else, so a snapshot is one more reference to a root.
//!
//! Every node knows the block it was written to (0: not yet written), and every child pointer
//! carries the highest generation in its subtree, so that [`changed_since`] descends only into
//! subtrees that changed after a given generation: its cost follows the change, not the tree.
//!
//! Space is accounted through [`Space`], following Rodeh's rule for shared B-trees: a data
//! cluster's count is the number of distinct leaf nodes that name it. Copying a shared leaf
//! adds one to each of its clusters; releasing the last reference to a leaf takes one off. A
//! node's block is given back when the node is rewritten (a written node that changes moves)
//! or when its last reference goes ([`release`]). Nodes are released only through [`release`]
//! and values through [`release_val`], so nothing is freed twice or leaked.
//!
//! Deletion does not rebalance: a node may be left under-full (never empty), which costs space,
//! not correctness; the extent trees that take most changes mark holes rather than delete.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::format::{le16, le32, le64};
use super::format::{
    leaf_entry_len, Key, RawChild, RawEntries, RawNode, TreeKind, CHUNK, INTERNAL_ENTRY,
    KIND_CHUNK, KIND_CLONES, KIND_DIRENT, KIND_EXTENT, KIND_INODE, KIND_LINK, KIND_SNAP,
    KIND_XATTR, MAX_NAME, MAX_VALUE, NODE_PAYLOAD,
};
use super::{Error, Result};

/// What the tree tells the allocator.
pub trait Space {
    /// The node written at `addr` is being rewritten elsewhere: its block is free after the
    /// next commit.
    fn node_freed(&mut self, addr: u64);
    fn cluster_ref(&mut self, cluster: u64);
    fn cluster_unref(&mut self, cluster: u64);
}

pub struct Node {
    /// The block this node is written at; 0 until written.
    addr: AtomicU64,
    /// The generation that wrote it (meaningful while `addr` is not 0).
    written: AtomicU64,
    pub level: u8,
    pub entries: Entries,
}

#[derive(Clone)]
pub enum Entries {
    Leaf(Vec<(Key, Val)>),
    Internal(Vec<Child>),
}

#[derive(Clone)]
pub struct Child {
    pub key: Key,
    pub node: Arc<Node>,
    pub max_gen: u64,
}

/// A tree: a root, or nothing.
#[derive(Clone, Default)]
pub struct Tree(pub Option<Arc<Node>>);

impl std::fmt::Debug for Tree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tree(addr {}, max gen {})", self.addr(), self.max_gen())
    }
}

impl PartialEq for Tree {
    /// Trees compare by identity: the same root.
    fn eq(&self, other: &Tree) -> bool {
        match (&self.0, &other.0) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        }
    }
}

impl Tree {
    pub fn max_gen(&self) -> u64 {
        self.0.as_ref().map_or(0, |n| n.max_gen())
    }

    pub fn addr(&self) -> u64 {
        self.0.as_ref().map_or(0, |n| n.addr())
    }

    /// The generation that wrote the root.
    pub fn written(&self) -> u64 {
        self.0.as_ref().map_or(0, |n| n.written())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }
}

/// What an inode is. A volume is a file of the namespace that is also a block device; a
/// metadata object lives outside the namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum InodeType {
    Volume = 1,
    Object = 2,
    Dir = 3,
    File = 4,
    Symlink = 5,
}

impl InodeType {
    pub fn from_u8(v: u8) -> Option<InodeType> {
        Some(match v {
            1 => InodeType::Volume,
            2 => InodeType::Object,
            3 => InodeType::Dir,
            4 => InodeType::File,
            5 => InodeType::Symlink,
            _ => return None,
        })
    }

    /// Whether its data lives in clusters, mapped by an extent tree.
    pub fn has_extents(self) -> bool {
        matches!(self, InodeType::Volume | InodeType::File)
    }
}

/// The attributes a user sets: permission bits (the low 12 bits of `st_mode`), owner and times
/// in nanoseconds since the Unix epoch. The change time is the store's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Attrs {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime: i64,
    pub mtime: i64,
}

impl Attrs {
    /// `mode`, owned by root, made now.
    pub fn now(mode: u32) -> Attrs {
        let now = super::namespace::now_ns();
        Attrs {
            mode,
            uid: 0,
            gid: 0,
            atime: now,
            mtime: now,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Inode {
    pub typ: InodeType,
    pub flags: u8,
    /// A volume's or an object's name; empty for the namespace's own inodes, which are named
    /// by their directory entries.
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// Generation of the last change to the inode, its extents, its entries (a directory), its
    /// extended attributes or its links.
    pub gen: u64,
    pub created: u64,
    pub extents: Tree,
    /// A clone's origin: the snapshot (0 for a file clone) and the object it was cloned from.
    pub origin_snap: u64,
    pub origin_obj: u64,
    pub uuid: u128,
    pub attrs: Attrs,
    pub ctime: i64,
    pub nlink: u32,
    /// A directory: the highest generation of any change in its subtree, itself included.
    pub subtree_gen: u64,
}

/// Bytes of an inode value before its name; of a snapshot value before its name.
const INODE_LEN: usize = 136;
const SNAP_LEN: usize = 65;

/// A range of clusters cloned into a file: `n` clusters from `src_idx` of inode `src` to
/// `dst_idx` of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloneRec {
    pub src: u64,
    pub src_idx: u64,
    pub dst_idx: u64,
    pub n: u64,
}

/// One name in a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dirent {
    pub name: Vec<u8>,
    pub ino: u64,
    pub typ: InodeType,
}

/// Inode flag: a thick volume, whose clusters are reserved at creation.
pub const INODE_THICK: u8 = 1;

#[derive(Debug, Clone, PartialEq)]
pub struct SnapRec {
    pub gen: u64,
    pub created_unix: u64,
    pub root: Tree,
    pub origin_vol: u64,
    pub uuid: u128,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    /// A volume cluster: where it is (0: a hole) and the generation that wrote it.
    Extent {
        cluster: u64,
        birth: u64,
    },
    Inode(Inode),
    Chunk {
        gen: u64,
        data: Vec<u8>,
    },
    Snap(SnapRec),
    /// The entries of a directory whose names hash to one key (almost always one entry).
    /// `gen`: the last change to these entries or anywhere below them, so that a diff finds a
    /// changed file by its entry without reading the rest of a large directory.
    Dirents {
        gen: u64,
        entries: Vec<Dirent>,
    },
    /// The names under which an inode is linked from one parent directory.
    Links {
        gen: u64,
        names: Vec<Vec<u8>>,
    },
    /// Extended attributes whose names hash to one key: (name, value).
    Xattrs {
        gen: u64,
        entries: Vec<(Vec<u8>, Vec<u8>)>,
    },
    /// The ranges cloned into a file in one generation.
    Clones {
        gen: u64,
        entries: Vec<CloneRec>,
    },
}

impl Val {
    pub fn gen(&self) -> u64 {
        match self {
            Val::Extent { birth, .. } => *birth,
            Val::Inode(i) => i.gen.max(i.subtree_gen),
            Val::Chunk { gen, .. }
            | Val::Dirents { gen, .. }
            | Val::Links { gen, .. }
            | Val::Xattrs { gen, .. }
            | Val::Clones { gen, .. } => *gen,
            Val::Snap(s) => s.gen,
        }
    }

    pub fn encoded_len(&self) -> usize {
        match self {
            Val::Extent { .. } => 16,
            Val::Inode(i) => INODE_LEN + i.name.len(),
            Val::Chunk { data, .. } => 8 + data.len(),
            Val::Snap(s) => SNAP_LEN + s.name.len(),
            Val::Dirents { entries, .. } => {
                9 + entries.iter().map(|e| 10 + e.name.len()).sum::<usize>()
            }
            Val::Links { names, .. } => 10 + names.iter().map(|n| 1 + n.len()).sum::<usize>(),
            Val::Xattrs { entries, .. } => {
                9 + entries
                    .iter()
                    .map(|(n, v)| 3 + n.len() + v.len())
                    .sum::<usize>()
            }
            Val::Clones { entries, .. } => 10 + 32 * entries.len(),
        }
    }

    /// The subtree a value holds, and the kind of tree it is.
    pub fn subtree(&self) -> Option<(&Tree, TreeKind)> {
        match self {
            Val::Inode(i) => Some((&i.extents, TreeKind::Extent)),
            Val::Snap(s) => Some((&s.root, TreeKind::Object)),
            _ => None,
        }
    }

    fn subtree_mut(&mut self) -> Option<&mut Tree> {
        match self {
            Val::Inode(i) => Some(&mut i.extents),
            Val::Snap(s) => Some(&mut s.root),
            _ => None,
        }
    }

    /// The stored bytes. Subtrees must already be written (their address known).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; self.encoded_len()];
        match self {
            Val::Extent { cluster, birth } => {
                b[0..8].copy_from_slice(&cluster.to_le_bytes());
                b[8..16].copy_from_slice(&birth.to_le_bytes());
            }
            Val::Inode(i) => {
                b[0] = i.typ as u8;
                b[1] = i.flags;
                b[2] = i.name.len() as u8;
                for (at, v) in [
                    (8, i.size),
                    (16, i.gen),
                    (24, i.created),
                    (32, i.extents.addr()),
                    (40, i.extents.max_gen()),
                    (48, i.extents.written()),
                    (56, i.origin_snap),
                    (64, i.origin_obj),
                ] {
                    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
                }
                b[72..88].copy_from_slice(&i.uuid.to_le_bytes());
                for (at, v) in [
                    (88, i.attrs.mode),
                    (92, i.attrs.uid),
                    (96, i.attrs.gid),
                    (100, i.nlink),
                ] {
                    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
                }
                for (at, v) in [
                    (104, i.attrs.atime as u64),
                    (112, i.attrs.mtime as u64),
                    (120, i.ctime as u64),
                    (128, i.subtree_gen),
                ] {
                    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
                }
                b[INODE_LEN..].copy_from_slice(i.name.as_bytes());
            }
            Val::Chunk { gen, data } => {
                b[0..8].copy_from_slice(&gen.to_le_bytes());
                b[8..].copy_from_slice(data);
            }
            Val::Snap(s) => {
                for (at, v) in [
                    (0, s.gen),
                    (8, s.created_unix),
                    (16, s.root.addr()),
                    (24, s.root.max_gen()),
                    (32, s.root.written()),
                    (40, s.origin_vol),
                ] {
                    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
                }
                b[48..64].copy_from_slice(&s.uuid.to_le_bytes());
                b[64] = s.name.len() as u8;
                b[SNAP_LEN..].copy_from_slice(s.name.as_bytes());
            }
            Val::Dirents { gen, entries } => {
                b[0..8].copy_from_slice(&gen.to_le_bytes());
                b[8] = entries.len() as u8;
                let mut at = 9;
                for e in entries {
                    b[at..at + 8].copy_from_slice(&e.ino.to_le_bytes());
                    b[at + 8] = e.typ as u8;
                    b[at + 9] = e.name.len() as u8;
                    b[at + 10..at + 10 + e.name.len()].copy_from_slice(&e.name);
                    at += 10 + e.name.len();
                }
            }
            Val::Links { gen, names } => {
                b[0..8].copy_from_slice(&gen.to_le_bytes());
                b[8..10].copy_from_slice(&(names.len() as u16).to_le_bytes());
                let mut at = 10;
                for n in names {
                    b[at] = n.len() as u8;
                    b[at + 1..at + 1 + n.len()].copy_from_slice(n);
                    at += 1 + n.len();
                }
            }
            Val::Xattrs { gen, entries } => {
                b[0..8].copy_from_slice(&gen.to_le_bytes());
                b[8] = entries.len() as u8;
                let mut at = 9;
                for (n, v) in entries {
                    b[at] = n.len() as u8;
                    b[at + 1..at + 3].copy_from_slice(&(v.len() as u16).to_le_bytes());
                    b[at + 3..at + 3 + n.len()].copy_from_slice(n);
                    b[at + 3 + n.len()..at + 3 + n.len() + v.len()].copy_from_slice(v);
                    at += 3 + n.len() + v.len();
                }
            }
            Val::Clones { gen, entries } => {
                b[0..8].copy_from_slice(&gen.to_le_bytes());
                b[8..10].copy_from_slice(&(entries.len() as u16).to_le_bytes());
                for (i, r) in entries.iter().enumerate() {
                    let at = 10 + 32 * i;
                    for (k, v) in [r.src, r.src_idx, r.dst_idx, r.n].into_iter().enumerate() {
                        b[at + 8 * k..at + 8 * k + 8].copy_from_slice(&v.to_le_bytes());
                    }
                }
            }
        }
        b
    }

    /// Decode a value stored under a key of `kind`. A value with a subtree comes back with an
    /// empty tree and the subtree's address and writing generation, for the loader to link.
    pub fn decode(kind: u8, b: &[u8]) -> std::result::Result<(Val, Option<(u64, u64)>), String> {
        let name = |b: &[u8]| -> std::result::Result<String, String> {
            std::str::from_utf8(b)
                .ok()
                .filter(|n| !n.is_empty() && n.len() <= MAX_NAME)
                .map(str::to_owned)
                .ok_or_else(|| "a name that is not 1 to 63 bytes of UTF-8".to_owned())
        };
        match kind {
            KIND_EXTENT if b.len() == 16 => Ok((
                Val::Extent {
                    cluster: le64(&b[0..]),
                    birth: le64(&b[8..]),
                },
                None,
            )),
            KIND_INODE if b.len() >= INODE_LEN && b.len() == INODE_LEN + b[2] as usize => {
                let typ = InodeType::from_u8(b[0]).ok_or_else(|| format!("inode type {}", b[0]))?;
                let named = matches!(typ, InodeType::Volume | InodeType::Object);
                let inode_name = if named {
                    name(&b[INODE_LEN..])?
                } else if b[2] == 0 {
                    String::new()
                } else {
                    return Err(format!("a name on a {typ:?} inode"));
                };
                let sub = (le64(&b[32..]), le64(&b[48..]));
                if sub.0 != 0 && !typ.has_extents() {
                    return Err(format!("extents on a {typ:?} inode"));
                }
                Ok((
                    Val::Inode(Inode {
                        typ,
                        flags: b[1],
                        name: inode_name,
                        size: le64(&b[8..]),
                        gen: le64(&b[16..]),
                        created: le64(&b[24..]),
                        extents: Tree(None),
                        origin_snap: le64(&b[56..]),
                        origin_obj: le64(&b[64..]),
                        uuid: u128::from_le_bytes(b[72..88].try_into().expect("16 bytes")),
                        attrs: Attrs {
                            mode: le32(&b[88..]),
                            uid: le32(&b[92..]),
                            gid: le32(&b[96..]),
                            atime: le64(&b[104..]) as i64,
                            mtime: le64(&b[112..]) as i64,
                        },
                        nlink: le32(&b[100..]),
                        ctime: le64(&b[120..]) as i64,
                        subtree_gen: le64(&b[128..]),
                    }),
                    (sub.0 != 0).then_some(sub),
                ))
            }
            KIND_DIRENT | KIND_LINK | KIND_XATTR | KIND_CLONES if b.len() > MAX_VALUE => {
                Err(format!("a {}-byte value under key kind {kind}", b.len()))
            }
            KIND_DIRENT if b.len() >= 9 => {
                let mut entries = Vec::new();
                let mut at = 9;
                for _ in 0..b[8] {
                    let head = b.get(at..at + 10).ok_or("a cut directory entry")?;
                    let len = head[9] as usize;
                    let typ = InodeType::from_u8(head[8])
                        .filter(|t| *t != InodeType::Object)
                        .ok_or_else(|| format!("a directory entry of type {}", head[8]))?;
                    let n = b
                        .get(at + 10..at + 10 + len)
                        .ok_or("a cut directory entry")?;
                    entries.push(Dirent {
                        name: valid_file_name(n)?,
                        ino: le64(head),
                        typ,
                    });
                    at += 10 + len;
                }
                if at != b.len() || entries.is_empty() {
                    return Err("directory entries that do not fill their value".into());
                }
                Ok((
                    Val::Dirents {
                        gen: le64(b),
                        entries,
                    },
                    None,
                ))
            }
            KIND_LINK if b.len() >= 10 => {
                let mut names = Vec::new();
                let mut at = 10;
                for _ in 0..le16(&b[8..]) {
                    let len = *b.get(at).ok_or("a cut link")? as usize;
                    names.push(valid_file_name(
                        b.get(at + 1..at + 1 + len).ok_or("a cut link")?,
                    )?);
                    at += 1 + len;
                }
                if at != b.len() || names.is_empty() {
                    return Err("links that do not fill their value".into());
                }
                Ok((
                    Val::Links {
                        gen: le64(b),
                        names,
                    },
                    None,
                ))
            }
            KIND_CLONES if b.len() >= 10 && b.len() == 10 + 32 * le16(&b[8..]) as usize => {
                let entries: Vec<CloneRec> = b[10..]
                    .chunks_exact(32)
                    .map(|c| CloneRec {
                        src: le64(c),
                        src_idx: le64(&c[8..]),
                        dst_idx: le64(&c[16..]),
                        n: le64(&c[24..]),
                    })
                    .collect();
                if entries.is_empty() {
                    return Err("a clone record without clones".into());
                }
                Ok((
                    Val::Clones {
                        gen: le64(b),
                        entries,
                    },
                    None,
                ))
            }
            KIND_XATTR if b.len() >= 9 => {
                let mut entries = Vec::new();
                let mut at = 9;
                for _ in 0..b[8] {
                    let head = b.get(at..at + 3).ok_or("a cut extended attribute")?;
                    let (nl, vl) = (head[0] as usize, le16(&head[1..]) as usize);
                    let n = b
                        .get(at + 3..at + 3 + nl)
                        .filter(|n| !n.is_empty())
                        .ok_or("a cut or empty extended attribute name")?;
                    let v = b
                        .get(at + 3 + nl..at + 3 + nl + vl)
                        .ok_or("a cut extended attribute")?;
                    entries.push((n.to_vec(), v.to_vec()));
                    at += 3 + nl + vl;
                }
                if at != b.len() || entries.is_empty() {
                    return Err("extended attributes that do not fill their value".into());
                }
                Ok((
                    Val::Xattrs {
                        gen: le64(b),
                        entries,
                    },
                    None,
                ))
            }
            KIND_CHUNK if b.len() >= 8 && b.len() <= 8 + CHUNK => Ok((
                Val::Chunk {
                    gen: le64(b),
                    data: b[8..].to_vec(),
                },
                None,
            )),
            KIND_SNAP if b.len() >= SNAP_LEN && b.len() == SNAP_LEN + b[64] as usize => {
                let sub = (le64(&b[16..]), le64(&b[32..]));
                Ok((
                    Val::Snap(SnapRec {
                        gen: le64(&b[0..]),
                        created_unix: le64(&b[8..]),
                        root: Tree(None),
                        origin_vol: le64(&b[40..]),
                        uuid: u128::from_le_bytes(b[48..64].try_into().expect("16 bytes")),
                        name: name(&b[SNAP_LEN..])?,
                    }),
                    (sub.0 != 0).then_some(sub),
                ))
            }
            _ => Err(format!("a {}-byte value under key kind {kind}", b.len())),
        }
    }
}

/// A file name as the namespace keeps it: 1 to 255 bytes, neither `/` nor NUL, not `.` or `..`.
pub fn valid_file_name(n: &[u8]) -> std::result::Result<Vec<u8>, String> {
    if n.is_empty()
        || n.len() > 255
        || n.contains(&b'/')
        || n.contains(&0)
        || n == b"."
        || n == b".."
    {
        return Err(format!(
            "{:?}: a name is 1 to 255 bytes without '/' or NUL, and not . or ..",
            String::from_utf8_lossy(n)
        ));
    }
    Ok(n.to_vec())
}

impl Node {
    pub fn addr(&self) -> u64 {
        self.addr.load(Ordering::Relaxed)
    }

    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    pub fn max_gen(&self) -> u64 {
        match &self.entries {
            Entries::Leaf(es) => es.iter().map(|(_, v)| v.gen()).max().unwrap_or(0),
            Entries::Internal(cs) => cs.iter().map(|c| c.max_gen).max().unwrap_or(0),
        }
    }

    fn first_key(&self) -> Key {
        match &self.entries {
            Entries::Leaf(es) => es.first().map(|e| e.0).unwrap_or_default(),
            Entries::Internal(cs) => cs.first().map(|c| c.key).unwrap_or_default(),
        }
    }

    fn bytes(&self) -> usize {
        match &self.entries {
            Entries::Leaf(es) => es
                .iter()
                .map(|(_, v)| leaf_entry_len(v.encoded_len()))
                .sum(),
            Entries::Internal(cs) => cs.len() * INTERNAL_ENTRY,
        }
    }

    fn len(&self) -> usize {
        match &self.entries {
            Entries::Leaf(es) => es.len(),
            Entries::Internal(cs) => cs.len(),
        }
    }

    fn new(level: u8, entries: Entries) -> Arc<Node> {
        Arc::new(Node {
            addr: AtomicU64::new(0),
            written: AtomicU64::new(0),
            level,
            entries,
        })
    }
}

/// Make the node in `slot` this tree's own: copy it when shared (counting the copy's clusters),
/// and give up its written block, since a changed node is written anew.
fn make_mut<'a>(slot: &'a mut Arc<Node>, sp: &mut dyn Space) -> &'a mut Node {
    if Arc::get_mut(slot).is_none() {
        if let Entries::Leaf(es) = &slot.entries {
            for (_, v) in es {
                if let Val::Extent { cluster, .. } = v {
                    if *cluster != 0 {
                        sp.cluster_ref(*cluster);
                    }
                }
            }
        }
        // The old node is shared, so dropping this reference does not free it.
        *slot = Node::new(slot.level, slot.entries.clone());
    }
    let node = Arc::get_mut(slot).expect("unshared after the copy");
    let addr = node.addr.swap(0, Ordering::Relaxed);
    if addr != 0 {
        sp.node_freed(addr);
    }
    node
}

/// Let go of a node: if this was its last reference, free its block and release what it holds.
pub fn release(node: Arc<Node>, sp: &mut dyn Space) {
    let Ok(node) = Arc::try_unwrap(node) else {
        return;
    };
    let addr = node.addr();
    if addr != 0 {
        sp.node_freed(addr);
    }
    match node.entries {
        Entries::Leaf(es) => es.into_iter().for_each(|(_, v)| release_val(v, sp)),
        Entries::Internal(cs) => cs.into_iter().for_each(|c| release(c.node, sp)),
    }
}

/// Let go of a value taken out of a leaf that this tree owned.
pub fn release_val(v: Val, sp: &mut dyn Space) {
    match v {
        Val::Extent { cluster, .. } if cluster != 0 => sp.cluster_unref(cluster),
        Val::Inode(i) => release_tree(i.extents, sp),
        Val::Snap(s) => release_tree(s.root, sp),
        _ => {}
    }
}

pub fn release_tree(t: Tree, sp: &mut dyn Space) {
    if let Some(n) = t.0 {
        release(n, sp);
    }
}

fn child_index(cs: &[Child], key: &Key) -> usize {
    cs.partition_point(|c| c.key <= *key).saturating_sub(1)
}

pub fn get<'a>(tree: &'a Tree, key: &Key) -> Option<&'a Val> {
    let mut node = tree.0.as_ref()?;
    loop {
        match &node.entries {
            Entries::Leaf(es) => {
                return es.binary_search_by(|e| e.0.cmp(key)).ok().map(|i| &es[i].1)
            }
            Entries::Internal(cs) => node = &cs[child_index(cs, key)].node,
        }
    }
}

/// The block of the leaf that holds (or would hold) `key`, for naming it in a problem; 0 when
/// that leaf is not written yet.
pub fn leaf_addr(tree: &Tree, key: &Key) -> u64 {
    let Some(mut node) = tree.0.as_ref() else {
        return 0;
    };
    while let Entries::Internal(cs) = &node.entries {
        node = &cs[child_index(cs, key)].node;
    }
    node.addr()
}

/// Insert or replace; the replaced value comes back for the caller to release.
#[must_use]
pub fn insert(tree: &mut Tree, key: Key, val: Val, sp: &mut dyn Space) -> Option<Val> {
    let Some(root) = tree.0.as_mut() else {
        tree.0 = Some(Node::new(0, Entries::Leaf(vec![(key, val)])));
        return None;
    };
    let (old, split) = insert_at(root, key, val, sp);
    if let Some(right) = split {
        let left = tree.0.take().expect("a root");
        let level = left.level + 1;
        let left = Child {
            key: left.first_key(),
            max_gen: left.max_gen(),
            node: left,
        };
        tree.0 = Some(Node::new(level, Entries::Internal(vec![left, right])));
    }
    old
}

fn insert_at(
    slot: &mut Arc<Node>,
    key: Key,
    val: Val,
    sp: &mut dyn Space,
) -> (Option<Val>, Option<Child>) {
    let node = make_mut(slot, sp);
    let level = node.level;
    let old = match &mut node.entries {
        Entries::Leaf(es) => match es.binary_search_by(|e| e.0.cmp(&key)) {
            Ok(i) => Some(std::mem::replace(&mut es[i].1, val)),
            Err(i) => {
                es.insert(i, (key, val));
                None
            }
        },
        Entries::Internal(cs) => {
            let i = child_index(cs, &key);
            let (old, split) = insert_at(&mut cs[i].node, key, val, sp);
            cs[i].max_gen = cs[i].node.max_gen();
            if key < cs[i].key {
                cs[i].key = key;
            }
            if let Some(right) = split {
                cs.insert(i + 1, right);
            }
            old
        }
    };
    let split = (node.bytes() > NODE_PAYLOAD).then(|| split_node(node, level));
    (old, split)
}

/// Move the upper half (by bytes) of an over-full node into a new right sibling.
fn split_node(node: &mut Node, level: u8) -> Child {
    let half = node.bytes() / 2;
    let entries = match &mut node.entries {
        Entries::Leaf(es) => {
            let mut acc = 0;
            let mut at = es.len() - 1;
            for (i, (_, v)) in es.iter().enumerate() {
                acc += leaf_entry_len(v.encoded_len());
                if acc > half {
                    at = (i + 1).min(es.len() - 1).max(1);
                    break;
                }
            }
            Entries::Leaf(es.split_off(at))
        }
        Entries::Internal(cs) => {
            let at = cs.len() / 2;
            Entries::Internal(cs.split_off(at))
        }
    };
    let right = Node::new(level, entries);
    Child {
        key: right.first_key(),
        max_gen: right.max_gen(),
        node: right,
    }
}

/// Remove `key`; the value comes back for the caller to release. Nothing is copied when the key
/// is absent.
#[must_use]
pub fn remove(tree: &mut Tree, key: &Key, sp: &mut dyn Space) -> Option<Val> {
    get(tree, key)?;
    let root = tree.0.as_mut()?;
    let old = remove_at(root, key, sp);
    let root = tree.0.as_ref().expect("a root");
    if root.len() == 0 {
        let root = tree.0.take().expect("a root");
        release(root, sp);
    } else if let Entries::Internal(cs) = &root.entries {
        if cs.len() == 1 {
            // One child left: it becomes the root; the old root was made this tree's own on
            // the way down, so nothing else refers to it.
            let mut root = tree.0.take().expect("a root");
            let node = Arc::get_mut(&mut root).expect("copied on the way down");
            let Entries::Internal(cs) = &mut node.entries else {
                unreachable!()
            };
            tree.0 = Some(cs.pop().expect("one child").node);
        }
    }
    old
}

fn remove_at(slot: &mut Arc<Node>, key: &Key, sp: &mut dyn Space) -> Option<Val> {
    let node = make_mut(slot, sp);
    match &mut node.entries {
        Entries::Leaf(es) => {
            let i = es.binary_search_by(|e| e.0.cmp(key)).ok()?;
            Some(es.remove(i).1)
        }
        Entries::Internal(cs) => {
            let i = child_index(cs, key);
            let old = remove_at(&mut cs[i].node, key, sp);
            if cs[i].node.len() == 0 {
                let gone = cs.remove(i);
                release(gone.node, sp);
            } else {
                cs[i].max_gen = cs[i].node.max_gen();
            }
            old
        }
    }
}

/// Change the value at `key` in place (copying the path to it), then bring the path's highest
/// generations up to date. `None` when the key is absent.
pub fn update<S: Space, R>(
    tree: &mut Tree,
    key: &Key,
    sp: &mut S,
    f: impl FnOnce(&mut Val, &mut S) -> R,
) -> Option<R> {
    get(tree, key)?;
    let root = tree.0.as_mut()?;
    Some(update_at(root, key, sp, f))
}

fn update_at<S: Space, R>(
    slot: &mut Arc<Node>,
    key: &Key,
    sp: &mut S,
    f: impl FnOnce(&mut Val, &mut S) -> R,
) -> R {
    let node = make_mut(slot, &mut *sp);
    match &mut node.entries {
        Entries::Leaf(es) => {
            let i = es
                .binary_search_by(|e| e.0.cmp(key))
                .expect("the key was found before copying");
            f(&mut es[i].1, sp)
        }
        Entries::Internal(cs) => {
            let i = child_index(cs, key);
            let r = update_at(&mut cs[i].node, key, sp, f);
            cs[i].max_gen = cs[i].node.max_gen();
            r
        }
    }
}

/// Visit the entries with keys in `[lo, hi)` in order, until `f` says stop.
pub fn range(tree: &Tree, lo: &Key, hi: &Key, f: &mut dyn FnMut(&Key, &Val) -> bool) {
    fn walk(node: &Node, lo: &Key, hi: &Key, f: &mut dyn FnMut(&Key, &Val) -> bool) -> bool {
        match &node.entries {
            Entries::Leaf(es) => {
                let start = es.partition_point(|e| e.0 < *lo);
                for (k, v) in &es[start..] {
                    if k >= hi || !f(k, v) {
                        return false;
                    }
                }
                true
            }
            Entries::Internal(cs) => {
                for c in &cs[child_index(cs, lo)..] {
                    if c.key >= *hi || !walk(&c.node, lo, hi, f) {
                        return false;
                    }
                }
                true
            }
        }
    }
    if let Some(root) = &tree.0 {
        walk(root, lo, hi, f);
    }
}

/// Visit every entry in key order.
pub fn each(tree: &Tree, f: &mut dyn FnMut(&Key, &Val)) {
    let end = Key::new(u64::MAX, u8::MAX, u64::MAX);
    range(tree, &Key::MIN, &end, &mut |k, v| {
        f(k, v);
        true
    });
}

/// Visit, in key order, the entries in `[lo, hi)` whose generation is above `since`, descending
/// only into subtrees whose highest generation is: the work follows the change.
pub fn changed_since(tree: &Tree, since: u64, lo: &Key, hi: &Key, f: &mut dyn FnMut(&Key, &Val)) {
    fn walk(node: &Node, since: u64, lo: &Key, hi: &Key, f: &mut dyn FnMut(&Key, &Val)) {
        match &node.entries {
            Entries::Leaf(es) => {
                for (k, v) in es.iter().filter(|(k, _)| k >= lo && k < hi) {
                    if v.gen() > since {
                        f(k, v);
                    }
                }
            }
            Entries::Internal(cs) => {
                for (i, c) in cs.iter().enumerate().skip(child_index(cs, lo)) {
                    if c.key >= *hi {
                        break;
                    }
                    let past_lo = cs.get(i + 1).is_none_or(|n| n.key > *lo);
                    if c.max_gen > since && past_lo {
                        walk(&c.node, since, lo, hi, f);
                    }
                }
            }
        }
    }
    if let Some(root) = &tree.0 {
        if root.max_gen() > since {
            walk(root, since, lo, hi, f);
        }
    }
}

/// A position in a pre-order walk of a tree: the slot of the node on top of the stack.
struct Cursor<'a> {
    stack: Vec<(&'a Node, usize)>,
    lo: Key,
}

/// What a cursor is at: a child pointer (level above 0) or a leaf entry.
struct Item<'a> {
    level: u8,
    key: Key,
    child: Option<&'a Arc<Node>>,
    val: Option<&'a Val>,
}

impl<'a> Cursor<'a> {
    fn new(tree: &'a Tree, lo: Key) -> Cursor<'a> {
        let mut c = Cursor {
            stack: Vec::new(),
            lo,
        };
        if let Some(root) = &tree.0 {
            c.push(root);
        }
        c
    }

    fn push(&mut self, node: &'a Node) {
        let start = match &node.entries {
            Entries::Leaf(es) => es.partition_point(|e| e.0 < self.lo),
            Entries::Internal(cs) => child_index(cs, &self.lo),
        };
        self.stack.push((node, start));
        self.settle();
    }

    /// Pop finished nodes, moving their parents on.
    fn settle(&mut self) {
        while let Some(&(n, i)) = self.stack.last() {
            if i < n.len() {
                return;
            }
            self.stack.pop();
            if let Some(top) = self.stack.last_mut() {
                top.1 += 1;
            }
        }
    }

    /// Where the cursor is, or `None` at the end or at `hi`.
    fn item(&self, hi: &Key) -> Option<Item<'a>> {
        let &(n, i) = self.stack.last()?;
        let item = match &n.entries {
            Entries::Leaf(es) => Item {
                level: 0,
                key: es[i].0,
                child: None,
                val: Some(&es[i].1),
            },
            Entries::Internal(cs) => Item {
                level: n.level,
                key: cs[i].key,
                child: Some(&cs[i].node),
                val: None,
            },
        };
        (item.key < *hi).then_some(item)
    }

    /// Past the current slot without entering it.
    fn next(&mut self) {
        if let Some(top) = self.stack.last_mut() {
            top.1 += 1;
        }
        self.settle();
    }

    /// Into the child at the current slot.
    fn descend(&mut self) {
        let &(n, i) = self.stack.last().expect("at a slot");
        if let Entries::Internal(cs) = &n.entries {
            self.push(&cs[i].node);
        }
    }
}

/// Told each key whose value differs: the value in the first tree and in the second.
pub type Differ<'a> = dyn FnMut(&Key, Option<&Val>, Option<&Val>) + 'a;

/// Visit, in key order, the keys in `[lo, hi)` whose values differ between trees `a` and `b`
/// (present in one only, or unequal), skipping every subtree the two share: the work follows
/// the difference, whatever the size of the trees. Both trees must come from one store, where
/// a shared subtree is one node.
pub fn compare(a: &Tree, b: &Tree, lo: &Key, hi: &Key, f: &mut Differ<'_>) {
    let (mut ca, mut cb) = (Cursor::new(a, *lo), Cursor::new(b, *lo));
    loop {
        match (ca.item(hi), cb.item(hi)) {
            (None, None) => return,
            (Some(x), None) => match x.val {
                None => ca.descend(),
                Some(v) => {
                    f(&x.key, Some(v), None);
                    ca.next();
                }
            },
            (None, Some(y)) => match y.val {
                None => cb.descend(),
                Some(v) => {
                    f(&y.key, None, Some(v));
                    cb.next();
                }
            },
            (Some(x), Some(y)) if x.level > y.level => ca.descend(),
            (Some(x), Some(y)) if y.level > x.level => cb.descend(),
            (Some(x), Some(y)) => match (x.val, y.val) {
                (Some(va), Some(vb)) => match x.key.cmp(&y.key) {
                    std::cmp::Ordering::Less => {
                        f(&x.key, Some(va), None);
                        ca.next();
                    }
                    std::cmp::Ordering::Greater => {
                        f(&y.key, None, Some(vb));
                        cb.next();
                    }
                    std::cmp::Ordering::Equal => {
                        if va != vb {
                            f(&x.key, Some(va), Some(vb));
                        }
                        ca.next();
                        cb.next();
                    }
                },
                _ => {
                    let same =
                        matches!((x.child, y.child), (Some(p), Some(q)) if Arc::ptr_eq(p, q));
                    if same && x.key == y.key {
                        ca.next();
                        cb.next();
                    } else if x.key < y.key {
                        ca.descend();
                    } else if y.key < x.key {
                        cb.descend();
                    } else {
                        ca.descend();
                        cb.descend();
                    }
                }
            },
        }
    }
}

/// Nodes in a tree and its subtrees, for statistics and tests.
pub fn count_nodes(tree: &Tree) -> usize {
    fn walk(n: &Node) -> usize {
        1 + match &n.entries {
            Entries::Leaf(es) => es
                .iter()
                .filter_map(|(_, v)| v.subtree())
                .map(|(t, _)| t.0.as_deref().map_or(0, walk))
                .sum::<usize>(),
            Entries::Internal(cs) => cs.iter().map(|c| walk(&c.node)).sum(),
        }
    }
    tree.0.as_deref().map_or(0, walk)
}

/// Write every node not yet written, children first, at blocks from `alloc`; the encoded
/// blocks go to `out`. Nodes already written are shared as they are.
pub fn persist(
    tree: &Tree,
    kind: TreeKind,
    gen: u64,
    alloc: &mut dyn FnMut() -> Result<u64>,
    out: &mut Vec<(u64, Vec<u8>)>,
) -> Result<()> {
    fn node(
        n: &Arc<Node>,
        kind: TreeKind,
        gen: u64,
        alloc: &mut dyn FnMut() -> Result<u64>,
        out: &mut Vec<(u64, Vec<u8>)>,
    ) -> Result<()> {
        if n.addr() != 0 {
            return Ok(());
        }
        let entries = match &n.entries {
            Entries::Leaf(es) => {
                for (_, v) in es {
                    if let Some((t, k)) = v.subtree() {
                        persist(t, k, gen, alloc, out)?;
                    }
                }
                RawEntries::Leaf(es.iter().map(|(k, v)| (*k, v.encode())).collect())
            }
            Entries::Internal(cs) => {
                for c in cs {
                    node(&c.node, kind, gen, alloc, out)?;
                }
                RawEntries::Internal(
                    cs.iter()
                        .map(|c| RawChild {
                            key: c.key,
                            addr: c.node.addr(),
                            max_gen: c.max_gen,
                            written: c.node.written(),
                        })
                        .collect(),
                )
            }
        };
        let addr = alloc()?;
        let raw = RawNode {
            level: n.level,
            tree: kind,
            addr,
            generation: gen,
            entries,
        };
        out.push((addr, raw.encode()));
        n.addr.store(addr, Ordering::Relaxed);
        n.written.store(gen, Ordering::Relaxed);
        Ok(())
    }
    match &tree.0 {
        Some(root) => node(root, kind, gen, alloc, out),
        None => Ok(()),
    }
}

/// Rebuild in-memory trees from decoded nodes, sharing a node wherever its block is shared.
pub struct Builder<'a> {
    pub raw: &'a std::collections::HashMap<u64, RawNode>,
    pub built: std::collections::HashMap<u64, Arc<Node>>,
}

impl Builder<'_> {
    /// The tree rooted at `addr`, which generation `written` wrote.
    pub fn tree(&mut self, addr: u64, kind: TreeKind, written: u64) -> Result<Tree> {
        if addr == 0 {
            return Ok(Tree(None));
        }
        self.node(addr, kind, None, written).map(|n| Tree(Some(n)))
    }

    fn node(
        &mut self,
        addr: u64,
        kind: TreeKind,
        level: Option<u8>,
        written: u64,
    ) -> Result<Arc<Node>> {
        if let Some(raw) = self.raw.get(&addr) {
            if raw.generation != written {
                return Err(Error::Corrupt {
                    block: addr,
                    what: format!(
                        "node: written by generation {}, but what points at it expects {written} (a stale block or a lost write)",
                        raw.generation
                    ),
                });
            }
        }
        if let Some(n) = self.built.get(&addr) {
            if level.is_some_and(|l| l != n.level) {
                return Err(Error::Corrupt {
                    block: addr,
                    what: "node: shared at two levels".into(),
                });
            }
            return Ok(Arc::clone(n));
        }
        let raw = self.raw.get(&addr).ok_or(Error::Corrupt {
            block: addr,
            what: "node: not loaded".into(),
        })?;
        let bad = |what: String| Error::Corrupt { block: addr, what };
        if raw.tree != kind {
            return Err(bad(format!(
                "node: a {:?} node where a {kind:?} node belongs",
                raw.tree
            )));
        }
        if level.is_some_and(|l| l != raw.level) {
            return Err(bad(format!(
                "node: level {}, its parent expects {}",
                raw.level,
                level.unwrap_or(0)
            )));
        }
        let entries = match &raw.entries {
            RawEntries::Leaf(es) if raw.level == 0 => {
                let mut out = Vec::with_capacity(es.len());
                for (k, bytes) in es {
                    let (mut v, sub) =
                        Val::decode(k.kind, bytes).map_err(|e| bad(format!("node: {e}")))?;
                    if let (Some((a, w)), Some(sk)) = (sub, v.subtree().map(|(_, k)| k)) {
                        let t = self.tree(a, sk, w)?;
                        *v.subtree_mut().expect("has a subtree") = t;
                    }
                    out.push((*k, v));
                }
                Entries::Leaf(out)
            }
            RawEntries::Internal(cs) if raw.level > 0 => {
                let mut out = Vec::with_capacity(cs.len());
                for c in cs {
                    out.push(Child {
                        key: c.key,
                        node: self.node(c.addr, kind, Some(raw.level - 1), c.written)?,
                        max_gen: c.max_gen,
                    });
                }
                Entries::Internal(out)
            }
            _ => return Err(bad("node: level and entry type disagree".into())),
        };
        let n = Arc::new(Node {
            addr: AtomicU64::new(addr),
            written: AtomicU64::new(raw.generation),
            level: raw.level,
            entries,
        });
        self.built.insert(addr, Arc::clone(&n));
        Ok(n)
    }
}

/// The addresses a decoded node points at, with the kind of tree each is.
pub fn raw_children(raw: &RawNode) -> Vec<(u64, TreeKind)> {
    match &raw.entries {
        RawEntries::Internal(cs) => cs.iter().map(|c| (c.addr, raw.tree)).collect(),
        RawEntries::Leaf(es) => es
            .iter()
            .filter_map(|(k, b)| match Val::decode(k.kind, b) {
                Ok((v, Some((a, _)))) => v.subtree().map(|(_, sk)| (a, sk)),
                _ => None,
            })
            .collect(),
    }
}
