//! The store's on-disk format, byte by byte. Everything is little-endian; every metadata block
//! is [`BLOCK`] bytes and ends in a CRC-32C (Castagnoli) of the bytes before it.
//!
//! ## Layout on the bdev
//!
//! | blocks (4 KiB) | what |
//! | --- | --- |
//! | 0 | superblock slot 0 (commits with an even generation) |
//! | 1 | superblock slot 1 (commits with an odd generation) |
//! | 2 .. 2+P | reference-count table, copy A (P pages) |
//! | 2+P .. 2+2P | reference-count table, copy B |
//! | clusters from `first_data_cluster` on | data clusters and metadata clusters |
//!
//! Clusters are `cluster_size` bytes (4 KiB to 1 MiB, a power of two, chosen at format) counted
//! from byte 0; the clusters holding the blocks above are reserved. A *metadata cluster* holds
//! `cluster_size / 4096` node slots; a node's address is its block number (byte offset / 4096).
//!
//! ## Superblock (block 0 or 1)
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 8 | magic `TNDMSTOR` |
//! | 8 | 4 | format version ([`VERSION`]) |
//! | 12 | 4 | metadata block size (4096) |
//! | 16 | 4 | cluster size in bytes |
//! | 20 | 4 | reserved, 0 |
//! | 24 | 8 | generation of this commit |
//! | 32 | 16 | store UUID |
//! | 48 | 8 | clusters on the device |
//! | 56 | 8 | first data cluster |
//! | 64 | 8 | P: reference-count pages per copy |
//! | 72 | 8 | object tree root (node address, 0: empty) |
//! | 80 | 8 | object tree root's highest generation |
//! | 88 | 8 | snapshot tree root (node address, 0: empty) |
//! | 96 | 8 | snapshot tree root's highest generation |
//! | 104 | 8 | next object id |
//! | 112 | 8 | next snapshot id |
//! | 120 | 8 | snapshot epoch (how many snapshots were ever taken) |
//! | 128 | 8 | clusters reserved for thick volumes |
//! | 136 | 8 | generation that wrote the object tree root |
//! | 144 | 8 | generation that wrote the snapshot tree root |
//! | 152 | 1 | store name length N (1..=63) |
//! | 153 | N | store name, UTF-8 |
//! | 4092 | 4 | CRC-32C of bytes 0..4092 |
//!
//! The slot with the highest generation whose magic, version and checksum hold is the store.
//! A commit writes the other slot, so a torn superblock write leaves the previous one whole.
//!
//! ## Reference-count page
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 4 | magic `TRCP` |
//! | 4 | 4 | page index |
//! | 8 | 8 | generation of the commit that wrote it |
//! | 16 | 4 × 1019 | one entry per cluster ([`RC_PER_PAGE`] per page) |
//! | 4092 | 4 | CRC-32C of bytes 0..4092 |
//!
//! An entry is 0 for a free cluster; [`RC_RESERVED`] for the format's own clusters; bit 31
//! ([`RC_META`]) set for a metadata cluster, the low bits counting its nodes in use; otherwise
//! the number of leaf nodes that reference the data cluster. Each page has two copies; the live
//! one is the copy with the highest generation not above the superblock's, whose checksum
//! holds. A commit writes changed pages over the other copy, so a page is never overwritten
//! while the last commit still needs it.
//!
//! ## Node (a B+tree block, anywhere in a metadata cluster)
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 4 | magic `TNOD` |
//! | 4 | 1 | level (0: leaf) |
//! | 5 | 1 | tree: 1 object, 2 extent, 3 snapshot |
//! | 6 | 2 | entry count |
//! | 8 | 8 | the node's own address (catches misdirected writes) |
//! | 16 | 8 | generation of the commit that wrote it |
//! | 24 | 2 | payload bytes used |
//! | 26 | 6 | reserved, 0 |
//! | 32 | .. | entries, in key order |
//! | 4092 | 4 | CRC-32C of bytes 0..4092 |
//!
//! A key is 17 bytes: object id (8), kind (1), offset (8). A leaf entry is the key, a value
//! length (2) and the value; an internal entry is the key (the lowest in the child), the
//! child's address (8), the highest generation in the child's subtree (8) and the generation
//! that wrote the child (8). Every pointer to a node (in a parent, a value or the superblock)
//! carries that last one, and the node's header must agree: a stale block (one overwritten
//! since, or a write that never landed) is caught even when its checksum holds.
//!
//! Values, by key kind:
//! - inode (kind 1): type (1: volume, 2: metadata object, 3: directory, 4: regular file,
//!   5: symlink), flags, name length N (volumes and objects only), 5 reserved, size (8),
//!   generation of last change (8), creation generation (8), extent root (8), extent root's
//!   highest generation (8), generation that wrote the extent root (8), origin snapshot id
//!   (8), origin object id (8), UUID (16), permission bits (4), uid (4), gid (4), link count
//!   (4), atime, mtime, ctime (8 each, signed nanoseconds since the Unix epoch), the highest
//!   generation in a directory's subtree (8), name: 136 + N bytes. The root directory is
//!   object 1.
//! - object chunk (kind 2): generation (8), then up to [`CHUNK`] bytes: a metadata object's
//!   data, or a symlink's target.
//! - extent (kind 3, offset = cluster index in the volume): cluster (8, 0 for a hole, which an
//!   unmap leaves so that a diff sees it), birth generation (8).
//! - snapshot (kind 4, object id = snapshot id): generation (8), creation time in Unix seconds
//!   (8), object root (8), its highest generation (8), generation that wrote it (8), origin
//!   volume object id (8, 0 for a store-wide snapshot), UUID (16), name length (1), name.
//! - directory entries (kind 5, object id = directory, offset = 64-bit FNV-1a hash of the
//!   name): generation of the last change to them or below them (8), count (1), then per
//!   entry: inode (8), its type (1), name length (1), name (1 to 255 bytes).
//! - links (kind 6, object id = inode, offset = parent directory): generation (8), count (2),
//!   then per name: length (1), name. The way up from an inode to the root.
//! - extended attributes (kind 7, object id = inode, offset = hash of the name): generation
//!   (8), count (1), then per attribute: name length (1), value length (2), name, value.
//!
//! - range clones (kind 8, object id = the destination file, offset = the generation that
//!   made them): generation (8), count (2), then per clone: source inode (8), first source
//!   cluster index (8), first destination cluster index (8), clusters (8). A diff uses them to
//!   send a cloned range as a clone; records no snapshot can need are dropped.
//!
//! Entry, link, attribute and clone values are at most [`MAX_VALUE`] bytes.
//!
//! ## What the media must do
//!
//! A completed write followed by a completed flush is durable. A 4 KiB block write may tear
//! (partly old, partly new); checksums catch that. Writes not yet flushed may be lost or kept
//! in any combination. Nothing is assumed about the order of unflushed writes.

use super::{Error, Result};

/// Metadata block size: superblocks, reference-count pages and nodes.
pub const BLOCK: usize = 4096;
pub const VERSION: u32 = 2;
pub const SB_MAGIC: &[u8; 8] = b"TNDMSTOR";
const RC_MAGIC: &[u8; 4] = b"TRCP";
const NODE_MAGIC: &[u8; 4] = b"TNOD";
/// Where the checksum of a block sits.
const CRC_AT: usize = BLOCK - 4;
pub const NODE_HEADER: usize = 32;
/// Payload bytes a node holds.
pub const NODE_PAYLOAD: usize = CRC_AT - NODE_HEADER;
pub const RC_PER_PAGE: usize = (CRC_AT - 16) / 4;
pub const RC_META: u32 = 1 << 31;
pub const RC_RESERVED: u32 = u32::MAX;
/// Largest chunk of a metadata object per leaf entry.
pub const CHUNK: usize = 1024;
pub const KEY_LEN: usize = 17;
pub const MAX_NAME: usize = 63;

pub const MIN_CLUSTER: u32 = 4096;
pub const MAX_CLUSTER: u32 = 1 << 20;

/// Key kinds.
pub const KIND_INODE: u8 = 1;
pub const KIND_CHUNK: u8 = 2;
pub const KIND_EXTENT: u8 = 3;
pub const KIND_SNAP: u8 = 4;
pub const KIND_DIRENT: u8 = 5;
pub const KIND_LINK: u8 = 6;
pub const KIND_XATTR: u8 = 7;
pub const KIND_CLONES: u8 = 8;

/// The largest directory-entry, link or extended-attribute value: small enough that a leaf
/// always holds two, so that splitting an over-full leaf always works.
pub const MAX_VALUE: usize = 1600;

/// Which tree a node belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TreeKind {
    Object = 1,
    Extent = 2,
    Snapshot = 3,
}

impl TreeKind {
    fn from_u8(v: u8) -> Option<TreeKind> {
        match v {
            1 => Some(TreeKind::Object),
            2 => Some(TreeKind::Extent),
            3 => Some(TreeKind::Snapshot),
            _ => None,
        }
    }

    /// The key kinds a tree holds.
    pub fn allows(self, kind: u8) -> bool {
        match self {
            TreeKind::Object => matches!(
                kind,
                KIND_INODE | KIND_CHUNK | KIND_DIRENT | KIND_LINK | KIND_XATTR | KIND_CLONES
            ),
            TreeKind::Extent => kind == KIND_EXTENT,
            TreeKind::Snapshot => kind == KIND_SNAP,
        }
    }
}

/// A B+tree key: ordered by object, then kind, then offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Key {
    pub obj: u64,
    pub kind: u8,
    pub off: u64,
}

impl Key {
    pub const MIN: Key = Key {
        obj: 0,
        kind: 0,
        off: 0,
    };

    pub fn new(obj: u64, kind: u8, off: u64) -> Key {
        Key { obj, kind, off }
    }

    fn put(&self, out: &mut [u8]) {
        out[0..8].copy_from_slice(&self.obj.to_le_bytes());
        out[8] = self.kind;
        out[9..17].copy_from_slice(&self.off.to_le_bytes());
    }

    fn get(b: &[u8]) -> Key {
        Key {
            obj: le64(&b[0..8]),
            kind: b[8],
            off: le64(&b[9..17]),
        }
    }
}

pub fn le64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().expect("8 bytes"))
}

pub fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b[..4].try_into().expect("4 bytes"))
}

pub fn le16(b: &[u8]) -> u16 {
    u16::from_le_bytes(b[..2].try_into().expect("2 bytes"))
}

fn seal(block: &mut [u8]) {
    let crc = crc32c::crc32c(&block[..CRC_AT]);
    block[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
}

fn sealed(block: &[u8]) -> bool {
    block.len() == BLOCK && crc32c::crc32c(&block[..CRC_AT]) == le32(&block[CRC_AT..])
}

/// The superblock's fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    pub cluster_size: u32,
    pub generation: u64,
    pub uuid: u128,
    pub total_clusters: u64,
    pub first_data_cluster: u64,
    pub rc_pages: u64,
    pub object_root: u64,
    pub object_gen: u64,
    pub snap_root: u64,
    pub snap_gen: u64,
    pub next_object: u64,
    pub next_snapshot: u64,
    pub snap_epoch: u64,
    pub reserved_clusters: u64,
    pub object_written: u64,
    pub snap_written: u64,
    pub name: String,
}

impl Superblock {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; BLOCK];
        b[0..8].copy_from_slice(SB_MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&(BLOCK as u32).to_le_bytes());
        b[16..20].copy_from_slice(&self.cluster_size.to_le_bytes());
        b[24..32].copy_from_slice(&self.generation.to_le_bytes());
        b[32..48].copy_from_slice(&self.uuid.to_le_bytes());
        for (at, v) in [
            (48, self.total_clusters),
            (56, self.first_data_cluster),
            (64, self.rc_pages),
            (72, self.object_root),
            (80, self.object_gen),
            (88, self.snap_root),
            (96, self.snap_gen),
            (104, self.next_object),
            (112, self.next_snapshot),
            (120, self.snap_epoch),
            (128, self.reserved_clusters),
            (136, self.object_written),
            (144, self.snap_written),
        ] {
            b[at..at + 8].copy_from_slice(&v.to_le_bytes());
        }
        let name = self.name.as_bytes();
        b[152] = name.len() as u8;
        b[153..153 + name.len()].copy_from_slice(name);
        seal(&mut b);
        b
    }

    /// Decode slot `slot`; `Err` says precisely why it is not a superblock.
    pub fn decode(b: &[u8], slot: u64) -> Result<Superblock> {
        let bad = |what: String| Error::Corrupt { block: slot, what };
        if b.len() != BLOCK || &b[0..8] != SB_MAGIC {
            return Err(bad("superblock: no store magic".into()));
        }
        if !sealed(b) {
            return Err(bad("superblock: checksum mismatch".into()));
        }
        let version = le32(&b[8..]);
        if version != VERSION {
            return Err(bad(format!(
                "superblock: format version {version}, this build reads {VERSION}"
            )));
        }
        if le32(&b[12..]) as usize != BLOCK {
            return Err(bad("superblock: metadata block size is not 4096".into()));
        }
        let cluster_size = le32(&b[16..]);
        if !valid_cluster_size(cluster_size) {
            return Err(bad(format!("superblock: cluster size {cluster_size}")));
        }
        let name_len = b[152] as usize;
        let name = std::str::from_utf8(b.get(153..153 + name_len).unwrap_or(&[]))
            .ok()
            .filter(|n| !n.is_empty() && n.len() <= MAX_NAME)
            .ok_or_else(|| bad("superblock: store name is not 1 to 63 bytes of UTF-8".into()))?
            .to_owned();
        let sb = Superblock {
            cluster_size,
            generation: le64(&b[24..]),
            uuid: u128::from_le_bytes(b[32..48].try_into().expect("16 bytes")),
            total_clusters: le64(&b[48..]),
            first_data_cluster: le64(&b[56..]),
            rc_pages: le64(&b[64..]),
            object_root: le64(&b[72..]),
            object_gen: le64(&b[80..]),
            snap_root: le64(&b[88..]),
            snap_gen: le64(&b[96..]),
            next_object: le64(&b[104..]),
            next_snapshot: le64(&b[112..]),
            snap_epoch: le64(&b[120..]),
            reserved_clusters: le64(&b[128..]),
            object_written: le64(&b[136..]),
            snap_written: le64(&b[144..]),
            name,
        };
        let layout = Layout::new(sb.cluster_size, sb.total_clusters);
        if sb.rc_pages != layout.rc_pages || sb.first_data_cluster != layout.first_data_cluster {
            return Err(bad(
                "superblock: reference-count table size does not match the cluster count".into(),
            ));
        }
        Ok(sb)
    }
}

pub fn valid_cluster_size(c: u32) -> bool {
    c.is_power_of_two() && (MIN_CLUSTER..=MAX_CLUSTER).contains(&c)
}

/// Where things are, derived from the cluster size and count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub cluster_size: u32,
    pub total_clusters: u64,
    pub rc_pages: u64,
    pub first_data_cluster: u64,
}

impl Layout {
    pub fn new(cluster_size: u32, total_clusters: u64) -> Layout {
        let rc_pages = total_clusters.div_ceil(RC_PER_PAGE as u64);
        // Saturating: a damaged superblock may claim any count, and is refused later.
        let meta_bytes = rc_pages
            .saturating_mul(2)
            .saturating_add(2)
            .saturating_mul(BLOCK as u64);
        Layout {
            cluster_size,
            total_clusters,
            rc_pages,
            first_data_cluster: meta_bytes.div_ceil(cluster_size as u64),
        }
    }

    /// Block address of page `page` in copy `copy` (0 or 1).
    pub fn rc_block(&self, page: u64, copy: u8) -> u64 {
        2 + copy as u64 * self.rc_pages + page
    }

    pub fn blocks_per_cluster(&self) -> u64 {
        self.cluster_size as u64 / BLOCK as u64
    }
}

pub fn encode_rc_page(index: u64, generation: u64, entries: &[u32]) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK];
    b[0..4].copy_from_slice(RC_MAGIC);
    b[4..8].copy_from_slice(&(index as u32).to_le_bytes());
    b[8..16].copy_from_slice(&generation.to_le_bytes());
    for (i, e) in entries.iter().enumerate() {
        b[16 + 4 * i..20 + 4 * i].copy_from_slice(&e.to_le_bytes());
    }
    seal(&mut b);
    b
}

/// A page's generation and entries, or `None` when the copy is not a valid page `index`.
pub fn decode_rc_page(b: &[u8], index: u64) -> Option<(u64, Vec<u32>)> {
    if b.len() != BLOCK || &b[0..4] != RC_MAGIC || !sealed(b) || le32(&b[4..]) as u64 != index {
        return None;
    }
    let entries = (0..RC_PER_PAGE).map(|i| le32(&b[16 + 4 * i..])).collect();
    Some((le64(&b[8..]), entries))
}

/// A child pointer as stored in an internal node or a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawChild {
    pub key: Key,
    pub addr: u64,
    pub max_gen: u64,
    /// The generation that wrote the child.
    pub written: u64,
}

/// A node as stored: values are still bytes (see [`super::tree`] for their meaning).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawEntries {
    Leaf(Vec<(Key, Vec<u8>)>),
    Internal(Vec<RawChild>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawNode {
    pub level: u8,
    pub tree: TreeKind,
    pub addr: u64,
    pub generation: u64,
    pub entries: RawEntries,
}

/// Bytes a leaf entry takes.
pub fn leaf_entry_len(value_len: usize) -> usize {
    KEY_LEN + 2 + value_len
}

pub const INTERNAL_ENTRY: usize = KEY_LEN + 24;

impl RawNode {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; BLOCK];
        b[0..4].copy_from_slice(NODE_MAGIC);
        b[4] = self.level;
        b[5] = self.tree as u8;
        b[8..16].copy_from_slice(&self.addr.to_le_bytes());
        b[16..24].copy_from_slice(&self.generation.to_le_bytes());
        let mut at = NODE_HEADER;
        let count = match &self.entries {
            RawEntries::Leaf(es) => {
                for (k, v) in es {
                    k.put(&mut b[at..]);
                    b[at + KEY_LEN..at + KEY_LEN + 2]
                        .copy_from_slice(&(v.len() as u16).to_le_bytes());
                    b[at + KEY_LEN + 2..at + KEY_LEN + 2 + v.len()].copy_from_slice(v);
                    at += leaf_entry_len(v.len());
                }
                es.len()
            }
            RawEntries::Internal(cs) => {
                for c in cs {
                    c.key.put(&mut b[at..]);
                    b[at + KEY_LEN..at + KEY_LEN + 8].copy_from_slice(&c.addr.to_le_bytes());
                    b[at + KEY_LEN + 8..at + KEY_LEN + 16]
                        .copy_from_slice(&c.max_gen.to_le_bytes());
                    b[at + KEY_LEN + 16..at + INTERNAL_ENTRY]
                        .copy_from_slice(&c.written.to_le_bytes());
                    at += INTERNAL_ENTRY;
                }
                cs.len()
            }
        };
        b[6..8].copy_from_slice(&(count as u16).to_le_bytes());
        b[24..26].copy_from_slice(&((at - NODE_HEADER) as u16).to_le_bytes());
        seal(&mut b);
        b
    }

    /// Decode the node expected at block `addr`. Every field that could send a reader out of
    /// bounds or into a loop is checked; the error names the block and what is wrong.
    pub fn decode(b: &[u8], addr: u64) -> Result<RawNode> {
        let bad = |what: String| Error::Corrupt { block: addr, what };
        if b.len() != BLOCK {
            return Err(bad(format!("node: {} bytes, not {BLOCK}", b.len())));
        }
        if &b[0..4] != NODE_MAGIC {
            return Err(bad("node: no node magic".into()));
        }
        if !sealed(b) {
            return Err(bad("node: checksum mismatch".into()));
        }
        let stored = le64(&b[8..]);
        if stored != addr {
            return Err(bad(format!("node: written for block {stored}")));
        }
        let level = b[4];
        if level > 16 {
            return Err(bad(format!("node: level {level}")));
        }
        let tree =
            TreeKind::from_u8(b[5]).ok_or_else(|| bad(format!("node: tree kind {}", b[5])))?;
        let count = le16(&b[6..]) as usize;
        let used = le16(&b[24..]) as usize;
        if used > NODE_PAYLOAD {
            return Err(bad(format!("node: {used} payload bytes")));
        }
        if count == 0 {
            return Err(bad("node: no entries".into()));
        }
        let payload = &b[NODE_HEADER..NODE_HEADER + used];
        let mut at = 0;
        let mut last: Option<Key> = None;
        let mut check_key = |k: Key| -> Result<()> {
            if !tree.allows(k.kind) {
                return Err(bad(format!("node: key kind {} in a {tree:?} tree", k.kind)));
            }
            if last.is_some_and(|l| l >= k) {
                return Err(bad("node: keys out of order".into()));
            }
            last = Some(k);
            Ok(())
        };
        let entries = if level == 0 {
            let mut es = Vec::with_capacity(count);
            for _ in 0..count {
                let head = payload
                    .get(at..at + KEY_LEN + 2)
                    .ok_or_else(|| bad("node: entry runs past the payload".into()))?;
                let k = Key::get(head);
                check_key(k)?;
                let vlen = le16(&head[KEY_LEN..]) as usize;
                let v = payload
                    .get(at + KEY_LEN + 2..at + KEY_LEN + 2 + vlen)
                    .ok_or_else(|| bad("node: value runs past the payload".into()))?;
                es.push((k, v.to_vec()));
                at += leaf_entry_len(vlen);
            }
            RawEntries::Leaf(es)
        } else {
            let mut cs = Vec::with_capacity(count);
            for _ in 0..count {
                let e = payload
                    .get(at..at + INTERNAL_ENTRY)
                    .ok_or_else(|| bad("node: child entry runs past the payload".into()))?;
                let key = Key::get(e);
                check_key(key)?;
                let child = le64(&e[KEY_LEN..]);
                if child < 2 {
                    return Err(bad(format!("node: child address {child}")));
                }
                cs.push(RawChild {
                    key,
                    addr: child,
                    max_gen: le64(&e[KEY_LEN + 8..]),
                    written: le64(&e[KEY_LEN + 16..]),
                });
                at += INTERNAL_ENTRY;
            }
            RawEntries::Internal(cs)
        };
        if at != used {
            return Err(bad(format!(
                "node: entries end at {at}, header says {used}"
            )));
        }
        Ok(RawNode {
            level,
            tree,
            addr,
            generation: le64(&b[16..]),
            entries,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sb() -> Superblock {
        let l = Layout::new(65536, 1000);
        Superblock {
            cluster_size: 65536,
            generation: 7,
            uuid: 0x1234,
            total_clusters: 1000,
            first_data_cluster: l.first_data_cluster,
            rc_pages: l.rc_pages,
            object_root: 99,
            object_gen: 5,
            snap_root: 0,
            snap_gen: 0,
            next_object: 3,
            next_snapshot: 1,
            snap_epoch: 0,
            reserved_clusters: 0,
            object_written: 4,
            snap_written: 0,
            name: "lvs0".into(),
        }
    }

    #[test]
    fn superblock_round_trips_and_every_flipped_bit_is_caught() {
        let b = sb().encode();
        assert_eq!(Superblock::decode(&b, 0).unwrap(), sb());
        for bit in (0..BLOCK * 8).step_by(97) {
            let mut c = b.clone();
            c[bit / 8] ^= 1 << (bit % 8);
            assert!(Superblock::decode(&c, 0).is_err(), "bit {bit}");
        }
    }

    #[test]
    fn nodes_round_trip_and_reject_damage() {
        let n = RawNode {
            level: 0,
            tree: TreeKind::Extent,
            addr: 40,
            generation: 3,
            entries: RawEntries::Leaf(vec![
                (Key::new(0, KIND_EXTENT, 1), vec![1; 16]),
                (Key::new(0, KIND_EXTENT, 9), vec![2; 16]),
            ]),
        };
        let b = n.encode();
        assert_eq!(RawNode::decode(&b, 40).unwrap(), n);
        assert!(matches!(
            RawNode::decode(&b, 41),
            Err(Error::Corrupt { block: 41, .. })
        ));
        for bit in (0..BLOCK * 8).step_by(89) {
            let mut c = b.clone();
            c[bit / 8] ^= 1 << (bit % 8);
            assert!(RawNode::decode(&c, 40).is_err(), "bit {bit}");
        }
    }

    #[test]
    fn rc_pages_keep_their_index_and_generation() {
        let e: Vec<u32> = (0..RC_PER_PAGE as u32).collect();
        let b = encode_rc_page(3, 9, &e);
        assert_eq!(decode_rc_page(&b, 3), Some((9, e)));
        assert_eq!(decode_rc_page(&b, 4), None);
    }
}
