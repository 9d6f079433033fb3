//! The namespace: directories, regular files, symlinks and hard links, with permission bits,
//! owners, times and extended attributes, kept in the object tree beside volumes and metadata
//! objects. A volume is a file at any path (a LUN is a file: `vms/vm1/disk0`, whose bdev is
//! `<store>/vms/vm1/disk0`); its path is its name, so the volume calls own it: the namespace
//! lists and stats it but does not rename, link, unlink or write it, nor move a directory
//! above it.
//!
//! Keys: an inode at (ino, inode); a directory's entries at (dir, entry, hash of the name); an
//! inode's links at (ino, link, parent), the way up; extended attributes at (ino, xattr, hash
//! of the name); a symlink's target in chunks at (ino, chunk, n).
//!
//! Generations: a change to an inode stamps it with the open transaction's generation, and
//! [`Core::touch_up`] carries that generation to every entry naming it and every directory
//! above it (their `subtree_gen`), stopping where it is already recorded. So a directory whose
//! `subtree_gen` is not after a snapshot's generation is unchanged below since that snapshot,
//! and within a changed directory the changed entries are the ones whose value changed:
//! [`super::tree::compare`] finds them without reading the rest, which is what makes a subtree
//! diff follow the change rather than the tree.
//!
//! File data lives in clusters mapped by an extent tree, as a volume's does; bytes past the
//! end of a file within its last cluster are always zero, so extending a file needs no writes.
//! Data moves through [`Data`], which the offline store (a file) and tests implement directly.
//! Paths are resolved without following symlinks.

use super::core::Core;
use super::format::{
    Key, KIND_CHUNK, KIND_CLONES, KIND_DIRENT, KIND_INODE, KIND_LINK, KIND_XATTR, MAX_VALUE,
};
use super::tree::{
    self, get, insert, range, release_val, remove, update, valid_file_name, Attrs, CloneRec,
    Dirent, Inode, InodeType, Tree, Val,
};
use super::{posix, Error, Result};

/// The root directory's inode.
pub const ROOT: u64 = 1;

/// A symlink target's longest, as Linux's PATH_MAX.
pub const MAX_TARGET: usize = 4095;
/// An extended attribute's longest name and value.
pub const MAX_XATTR_NAME: usize = 255;
pub const MAX_XATTR_VALUE: usize = 1024;
/// A file's largest size.
pub const MAX_FILE: u64 = 1 << 50;

/// 64-bit FNV-1a: where a name's entry sits in its directory. Fixed by the format.
pub fn name_hash(name: &[u8]) -> u64 {
    name.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

pub fn dirent_key(dir: u64, name: &[u8]) -> Key {
    Key::new(dir, KIND_DIRENT, name_hash(name))
}

pub fn link_key(ino: u64, parent: u64) -> Key {
    Key::new(ino, KIND_LINK, parent)
}

pub fn xattr_key(ino: u64, name: &[u8]) -> Key {
    Key::new(ino, KIND_XATTR, name_hash(name))
}

fn inode_key(ino: u64) -> Key {
    Key::new(ino, KIND_INODE, 0)
}

/// What `stat` tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub ino: u64,
    pub typ: InodeType,
    pub attrs: Attrs,
    pub ctime: i64,
    pub nlink: u32,
    pub size: u64,
    /// The generation of the inode's last change, and of the last change below a directory.
    pub gen: u64,
    pub subtree_gen: u64,
    /// A clone's origin object (0: none).
    pub origin: u64,
}

impl Stat {
    /// `st_mode`: the file type bits and the permission bits.
    pub fn mode(&self) -> u32 {
        let t = match self.typ {
            InodeType::Dir => libc::S_IFDIR,
            InodeType::Symlink => libc::S_IFLNK,
            _ => libc::S_IFREG,
        };
        t | (self.attrs.mode & 0o7777)
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "ino": self.ino,
            "type": match self.typ {
                InodeType::Dir => "directory",
                InodeType::Symlink => "symlink",
                InodeType::Volume => "volume",
                _ => "file",
            },
            "mode": format!("{:o}", self.attrs.mode & 0o7777),
            "uid": self.attrs.uid,
            "gid": self.attrs.gid,
            "nlink": self.nlink,
            "size": self.size,
            "atime_ns": self.attrs.atime,
            "mtime_ns": self.attrs.mtime,
            "ctime_ns": self.ctime,
            "generation": self.gen,
            "subtree_generation": self.subtree_gen,
        })
    }
}

/// Which attributes `setattr` changes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SetAttrs {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub atime: Option<i64>,
    pub mtime: Option<i64>,
}

impl SetAttrs {
    pub fn all(a: &Attrs) -> SetAttrs {
        SetAttrs {
            mode: Some(a.mode),
            uid: Some(a.uid),
            gid: Some(a.gid),
            atime: Some(a.atime),
            mtime: Some(a.mtime),
        }
    }
}

/// Reads and writes a store's bytes at byte offsets: a file, a RAM image in tests.
pub trait Data {
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<()>;
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<()>;
}

pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

fn name_ok(name: &[u8]) -> Result<()> {
    if name.len() > 255 {
        return posix(
            libc::ENAMETOOLONG,
            format!("{:?}: longer than 255 bytes", String::from_utf8_lossy(name)),
        );
    }
    valid_file_name(name).map(|_| ()).map_err(Error::Invalid)
}

fn show(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

/// A new inode's record.
pub(super) fn blank_inode(typ: InodeType, gen: u64, attrs: Attrs, now: i64) -> Inode {
    Inode {
        typ,
        flags: 0,
        name: String::new(),
        size: 0,
        gen,
        created: gen,
        extents: Tree(None),
        origin_snap: 0,
        origin_obj: 0,
        uuid: 0,
        attrs,
        ctime: now,
        nlink: 0,
        subtree_gen: if typ == InodeType::Dir { gen } else { 0 },
    }
}

// ---- reading any image (the live tree or a snapshot's root) ----

pub fn inode_in(root: &Tree, ino: u64) -> Option<&Inode> {
    match get(root, &inode_key(ino)) {
        Some(Val::Inode(i)) if i.typ != InodeType::Object => Some(i),
        _ => None,
    }
}

fn must_inode(root: &Tree, ino: u64) -> Result<&Inode> {
    inode_in(root, ino).ok_or_else(|| Error::NotFound(format!("inode {ino}")))
}

fn must_dir(root: &Tree, ino: u64) -> Result<&Inode> {
    let i = must_inode(root, ino)?;
    if i.typ != InodeType::Dir {
        return posix(libc::ENOTDIR, format!("inode {ino} is not a directory"));
    }
    Ok(i)
}

pub fn lookup_in(root: &Tree, dir: u64, name: &[u8]) -> Option<Dirent> {
    match get(root, &dirent_key(dir, name)) {
        Some(Val::Dirents { entries, .. }) => entries.iter().find(|e| e.name == name).cloned(),
        _ => None,
    }
}

/// The inode at `path` (components split by `/`; empty ones and `.` are skipped), without
/// following symlinks.
pub fn resolve_in(root: &Tree, path: &[u8]) -> Result<u64> {
    let mut ino = ROOT;
    must_dir(root, ROOT)?;
    for c in path
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
    {
        if c == b".." {
            return Err(Error::Invalid("a store path has no '..'".into()));
        }
        must_dir(root, ino)?;
        ino = lookup_in(root, ino, c)
            .ok_or_else(|| Error::NotFound(format!("{:?}", show(path))))?
            .ino;
    }
    Ok(ino)
}

/// The directory a path's last component lives in, and that component.
pub fn split_parent(root: &Tree, path: &[u8]) -> Result<(u64, Vec<u8>)> {
    let comps: Vec<&[u8]> = path
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .collect();
    let (last, up) = comps
        .split_last()
        .ok_or_else(|| Error::Invalid(format!("{:?}: no name in the path", show(path))))?;
    let parent = resolve_in(root, &up.join(&b'/'))?;
    must_dir(root, parent)?;
    Ok((parent, last.to_vec()))
}

pub fn stat_in(root: &Tree, ino: u64) -> Result<Stat> {
    let i = must_inode(root, ino)?;
    Ok(Stat {
        ino,
        typ: i.typ,
        attrs: i.attrs,
        ctime: i.ctime,
        nlink: i.nlink,
        size: i.size,
        gen: i.gen,
        subtree_gen: i.subtree_gen,
        origin: i.origin_obj,
    })
}

/// A directory's entries, sorted by name.
pub fn readdir_in(root: &Tree, dir: u64) -> Result<Vec<Dirent>> {
    must_dir(root, dir)?;
    let mut out = Vec::new();
    range(
        root,
        &Key::new(dir, KIND_DIRENT, 0),
        &Key::new(dir, KIND_DIRENT + 1, 0),
        &mut |_, v| {
            if let Val::Dirents { entries, .. } = v {
                out.extend(entries.iter().cloned());
            }
            true
        },
    );
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Where an inode is linked from: (parent directory, name), sorted.
pub fn links_in(root: &Tree, ino: u64) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    range(
        root,
        &Key::new(ino, KIND_LINK, 0),
        &Key::new(ino, KIND_LINK + 1, 0),
        &mut |k, v| {
            if let Val::Links { names, .. } = v {
                out.extend(names.iter().map(|n| (k.off, n.clone())));
            }
            true
        },
    );
    out.sort();
    out
}

/// An inode's extended attributes, sorted by name.
pub fn xattrs_in(root: &Tree, ino: u64) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    range(
        root,
        &Key::new(ino, KIND_XATTR, 0),
        &Key::new(ino, KIND_XATTR + 1, 0),
        &mut |_, v| {
            if let Val::Xattrs { entries, .. } = v {
                out.extend(entries.iter().cloned());
            }
            true
        },
    );
    out.sort();
    out
}

pub fn chunks_in(root: &Tree, obj: u64) -> Vec<u8> {
    let mut out = Vec::new();
    range(
        root,
        &Key::new(obj, KIND_CHUNK, 0),
        &Key::new(obj, KIND_CHUNK + 1, 0),
        &mut |_, v| {
            if let Val::Chunk { data, .. } = v {
                out.extend_from_slice(data);
            }
            true
        },
    );
    out
}

pub fn readlink_in(root: &Tree, ino: u64) -> Result<Vec<u8>> {
    let i = must_inode(root, ino)?;
    if i.typ != InodeType::Symlink {
        return Err(Error::Invalid(format!("inode {ino} is not a symlink")));
    }
    Ok(chunks_in(root, ino))
}

/// Whether `ino` is `dir` or lies below it, going up by links.
pub fn is_within(root: &Tree, ino: u64, dir: u64) -> bool {
    let mut seen = std::collections::HashSet::new();
    let mut todo = vec![ino];
    while let Some(i) = todo.pop() {
        if i == dir {
            return true;
        }
        if seen.insert(i) {
            todo.extend(links_in(root, i).into_iter().map(|(p, _)| p));
        }
    }
    false
}

/// A regular file to clone from. A live volume is refused: its bdev writes in place, so a
/// clone of it would keep changing (clone a snapshot's volume with the volume calls).
fn clone_source(root: &Tree, src: u64) -> Result<&Inode> {
    let s = must_inode(root, src)?;
    match s.typ {
        InodeType::File => Ok(s),
        InodeType::Volume => posix(
            libc::EBUSY,
            format!("inode {src} is a live volume: clone a snapshot of it"),
        ),
        _ => Err(Error::Invalid(format!(
            "inode {src} holds no data to clone"
        ))),
    }
}

/// Read `len` bytes at `off` of a file or volume in an image; short at the end of the file.
pub fn read_in(
    root: &Tree,
    cluster_size: u64,
    data: &mut dyn Data,
    ino: u64,
    off: u64,
    len: u64,
) -> Result<Vec<u8>> {
    let i = must_inode(root, ino)?;
    if !i.typ.has_extents() {
        return posix(libc::EISDIR, format!("inode {ino} holds no data"));
    }
    let end = i.size.min(off.saturating_add(len));
    if off >= end {
        return Ok(Vec::new());
    }
    let mut out = vec![0u8; (end - off) as usize];
    let mut at = off;
    while at < end {
        let idx = at / cluster_size;
        let within = at % cluster_size;
        let n = (cluster_size - within).min(end - at);
        let dst = &mut out[(at - off) as usize..(at - off + n) as usize];
        if let Some(Val::Extent { cluster, .. }) =
            get(&i.extents, &Key::new(0, super::format::KIND_EXTENT, idx))
        {
            if *cluster != 0 {
                data.read(cluster * cluster_size + within, dst)?;
            }
        }
        at += n;
    }
    Ok(out)
}

impl Core {
    // ---- the live namespace ----

    pub fn resolve(&self, path: &[u8]) -> Result<u64> {
        resolve_in(&self.objects, path)
    }

    pub fn stat(&self, ino: u64) -> Result<Stat> {
        stat_in(&self.objects, ino)
    }

    pub fn readdir(&self, dir: u64) -> Result<Vec<Dirent>> {
        readdir_in(&self.objects, dir)
    }

    pub fn lookup(&self, dir: u64, name: &[u8]) -> Option<Dirent> {
        lookup_in(&self.objects, dir, name)
    }

    fn now(&self) -> i64 {
        now_ns()
    }

    /// Change inode `ino` through `f`, stamping it with this generation.
    fn change_inode<R>(&mut self, ino: u64, f: impl FnOnce(&mut Inode) -> R) -> Result<R> {
        let gen = self.gen;
        self.mark_changed();
        update(
            &mut self.objects,
            &inode_key(ino),
            &mut self.alloc,
            |v, _| {
                let Val::Inode(i) = v else {
                    unreachable!("an inode key holds an inode")
                };
                i.gen = gen;
                if i.typ == InodeType::Dir {
                    i.subtree_gen = gen;
                }
                f(i)
            },
        )
        .ok_or_else(|| Error::NotFound(format!("inode {ino}")))
    }

    /// `ino` changed in this transaction: its own generation and ctime move, then everything
    /// above it learns of the change.
    pub(super) fn touch(&mut self, ino: u64, mtime: bool) -> Result<()> {
        let now = self.now();
        self.change_inode(ino, |i| {
            i.ctime = now;
            if mtime {
                i.attrs.mtime = now;
            }
        })?;
        self.touch_up(ino);
        Ok(())
    }

    /// Carry this generation from `ino` up: to each entry naming it, and to each directory
    /// above, until one already has it.
    pub(super) fn touch_up(&mut self, ino: u64) {
        let gen = self.gen;
        let mut todo = vec![ino];
        while let Some(ino) = todo.pop() {
            for (parent, name) in links_in(&self.objects, ino) {
                let key = dirent_key(parent, &name);
                if get(&self.objects, &key).is_some_and(|v| v.gen() != gen) {
                    update(&mut self.objects, &key, &mut self.alloc, |v, _| {
                        if let Val::Dirents { gen: g, .. } = v {
                            *g = gen;
                        }
                    });
                }
                let behind = inode_in(&self.objects, parent).is_some_and(|p| p.subtree_gen != gen);
                if behind {
                    update(
                        &mut self.objects,
                        &inode_key(parent),
                        &mut self.alloc,
                        |v, _| {
                            if let Val::Inode(p) = v {
                                p.subtree_gen = gen;
                            }
                        },
                    );
                    todo.push(parent);
                }
            }
        }
    }

    /// A new inode, linked nowhere yet.
    pub(super) fn new_ns_inode(&mut self, typ: InodeType, attrs: Attrs) -> u64 {
        let ino = self.next_object;
        self.next_object += 1;
        let inode = blank_inode(typ, self.gen, attrs, self.now());
        let old = insert(
            &mut self.objects,
            inode_key(ino),
            Val::Inode(inode),
            &mut self.alloc,
        );
        debug_assert!(old.is_none());
        self.mark_changed();
        ino
    }

    /// The entry and link values naming `ino` as `dir/name`, once the entries `gone` are
    /// removed; EMLINK when either would not fit in a value.
    fn entry_values(
        &self,
        dir: u64,
        name: &[u8],
        ino: u64,
        typ: InodeType,
        gone: &[(u64, &[u8])],
    ) -> Result<(Val, Val)> {
        let gen = self.gen;
        let mut entries = match get(&self.objects, &dirent_key(dir, name)) {
            Some(Val::Dirents { entries, .. }) => entries.clone(),
            _ => Vec::new(),
        };
        entries.retain(|e| !gone.contains(&(dir, e.name.as_slice())));
        entries.push(Dirent {
            name: name.to_vec(),
            ino,
            typ,
        });
        let mut names = match get(&self.objects, &link_key(ino, dir)) {
            Some(Val::Links { names, .. }) => names.clone(),
            _ => Vec::new(),
        };
        names.retain(|n| !gone.contains(&(dir, n.as_slice())));
        names.push(name.to_vec());
        let dval = Val::Dirents { gen, entries };
        let lval = Val::Links { gen, names };
        if dval.encoded_len() > MAX_VALUE || lval.encoded_len() > MAX_VALUE {
            return posix(
                libc::EMLINK,
                format!("{:?}: too many names in one place", show(name)),
            );
        }
        Ok((dval, lval))
    }

    /// Add entry `name` in `dir` for `ino`, with its link and link counts.
    pub(super) fn add_entry(&mut self, dir: u64, name: &[u8], ino: u64) -> Result<()> {
        name_ok(name)?;
        must_dir(&self.objects, dir)?;
        if self.lookup(dir, name).is_some() {
            return Err(Error::Exists(show(name)));
        }
        let typ = must_inode(&self.objects, ino)?.typ;
        let (dkey, lkey) = (dirent_key(dir, name), link_key(ino, dir));
        let (dval, lval) = self.entry_values(dir, name, ino, typ, &[])?;
        if typ == InodeType::Dir && !links_in(&self.objects, ino).is_empty() {
            return posix(libc::EMLINK, "a directory has one parent");
        }
        let _ = insert(&mut self.objects, dkey, dval, &mut self.alloc);
        let _ = insert(&mut self.objects, lkey, lval, &mut self.alloc);
        self.change_inode(ino, |i| i.nlink += 1)?;
        if typ == InodeType::Dir {
            self.change_inode(dir, |d| d.nlink += 1)?;
        }
        self.touch(ino, false)?;
        self.touch(dir, true)
    }

    /// Take entry `name` out of `dir`; the inode loses a link but stays (see [`Core::drop_if_unlinked`]).
    pub(super) fn remove_entry(&mut self, dir: u64, name: &[u8]) -> Result<Dirent> {
        let e = self
            .lookup(dir, name)
            .ok_or_else(|| Error::NotFound(format!("{:?} in directory {dir}", show(name))))?;
        let gen = self.gen;
        let dkey = dirent_key(dir, name);
        let Some(Val::Dirents { entries, .. }) = remove(&mut self.objects, &dkey, &mut self.alloc)
        else {
            unreachable!("the entry was just found")
        };
        let rest: Vec<Dirent> = entries.into_iter().filter(|x| x.name != name).collect();
        if !rest.is_empty() {
            let _ = insert(
                &mut self.objects,
                dkey,
                Val::Dirents { gen, entries: rest },
                &mut self.alloc,
            );
        }
        let lkey = link_key(e.ino, dir);
        if let Some(Val::Links { names, .. }) = remove(&mut self.objects, &lkey, &mut self.alloc) {
            let rest: Vec<Vec<u8>> = names.into_iter().filter(|n| n != name).collect();
            if !rest.is_empty() {
                let _ = insert(
                    &mut self.objects,
                    lkey,
                    Val::Links { gen, names: rest },
                    &mut self.alloc,
                );
            }
        }
        self.change_inode(e.ino, |i| i.nlink = i.nlink.saturating_sub(1))?;
        if e.typ == InodeType::Dir {
            self.change_inode(dir, |d| d.nlink = d.nlink.saturating_sub(1))?;
        }
        self.touch(e.ino, false)?;
        self.touch(dir, true)?;
        Ok(e)
    }

    /// Delete an inode no entry names any more, with everything it holds. A directory must
    /// be empty by then.
    pub(super) fn drop_if_unlinked(&mut self, ino: u64) -> Result<()> {
        let typ = must_inode(&self.objects, ino)?.typ;
        if !links_in(&self.objects, ino).is_empty() {
            return Ok(());
        }
        if typ == InodeType::Dir && !readdir_in(&self.objects, ino)?.is_empty() {
            return posix(libc::ENOTEMPTY, format!("directory {ino} is not empty"));
        }
        self.remove_object_keys(ino, &[KIND_CHUNK, KIND_XATTR, KIND_CLONES]);
        Ok(())
    }

    /// Remove object `obj`'s inode and every key of the given kinds under it, releasing what
    /// they hold.
    pub(super) fn remove_object_keys(&mut self, obj: u64, kinds: &[u8]) {
        let mut keys = vec![inode_key(obj)];
        for &kind in kinds {
            range(
                &self.objects,
                &Key::new(obj, kind, 0),
                &Key::new(obj, kind + 1, 0),
                &mut |k, _| {
                    keys.push(*k);
                    true
                },
            );
        }
        for k in keys {
            if let Some(v) = remove(&mut self.objects, &k, &mut self.alloc) {
                release_val(v, &mut self.alloc);
            }
        }
        self.mark_changed();
    }

    fn refuse_volume(&self, e: &Dirent) -> Result<()> {
        if e.typ == InodeType::Volume {
            return posix(
                libc::EBUSY,
                format!("{:?} is a volume: the volume calls own it", show(&e.name)),
            );
        }
        Ok(())
    }

    /// A new directory, file or symlink (with its target), linked nowhere yet: a directory
    /// counts its own `.`.
    pub(super) fn new_unlinked(
        &mut self,
        typ: InodeType,
        attrs: Attrs,
        target: &[u8],
    ) -> Result<u64> {
        if attrs.mode & !0o7777 != 0 {
            return Err(Error::Invalid(
                "mode: permission bits only (0 to 0o7777)".into(),
            ));
        }
        if typ == InodeType::Symlink
            && (target.is_empty() || target.len() > MAX_TARGET || target.contains(&0))
        {
            return Err(Error::Invalid(format!(
                "a symlink target is 1 to {MAX_TARGET} bytes without NUL"
            )));
        }
        let ino = self.new_ns_inode(typ, attrs);
        match typ {
            InodeType::Dir => self.change_inode(ino, |i| i.nlink = 1)?,
            InodeType::Symlink => {
                self.put_chunks(ino, target);
                self.change_inode(ino, |i| i.size = target.len() as u64)?;
            }
            _ => {}
        }
        Ok(ino)
    }

    fn make(
        &mut self,
        dir: u64,
        name: &[u8],
        typ: InodeType,
        attrs: Attrs,
        target: &[u8],
    ) -> Result<u64> {
        name_ok(name)?;
        must_dir(&self.objects, dir)?;
        if self.lookup(dir, name).is_some() {
            return Err(Error::Exists(show(name)));
        }
        let ino = self.new_unlinked(typ, attrs, target)?;
        if let Err(e) = self.add_entry(dir, name, ino) {
            self.drop_if_unlinked(ino)?;
            return Err(e);
        }
        Ok(ino)
    }

    pub fn mkdir(&mut self, dir: u64, name: &[u8], attrs: Attrs) -> Result<u64> {
        self.make(dir, name, InodeType::Dir, attrs, &[])
    }

    pub fn create(&mut self, dir: u64, name: &[u8], attrs: Attrs) -> Result<u64> {
        self.make(dir, name, InodeType::File, attrs, &[])
    }

    pub fn symlink(&mut self, dir: u64, name: &[u8], target: &[u8], attrs: Attrs) -> Result<u64> {
        self.make(dir, name, InodeType::Symlink, attrs, target)
    }

    /// A hard link `dir/name` to `ino` (not a directory).
    pub fn link(&mut self, ino: u64, dir: u64, name: &[u8]) -> Result<()> {
        let i = must_inode(&self.objects, ino)?;
        match i.typ {
            InodeType::Dir => return posix(libc::EPERM, "a directory cannot be hard-linked"),
            InodeType::Volume => return posix(libc::EBUSY, "a volume cannot be hard-linked"),
            _ => {}
        }
        self.add_entry(dir, name, ino)
    }

    /// Remove a name of a file or symlink; the inode goes with its last name.
    pub fn unlink(&mut self, dir: u64, name: &[u8]) -> Result<()> {
        let e = self
            .lookup(dir, name)
            .ok_or_else(|| Error::NotFound(show(name)))?;
        self.refuse_volume(&e)?;
        if e.typ == InodeType::Dir {
            return posix(libc::EISDIR, format!("{:?} is a directory", show(name)));
        }
        self.remove_entry(dir, name)?;
        self.drop_if_unlinked(e.ino)
    }

    pub fn rmdir(&mut self, dir: u64, name: &[u8]) -> Result<()> {
        let e = self
            .lookup(dir, name)
            .ok_or_else(|| Error::NotFound(show(name)))?;
        if e.typ != InodeType::Dir {
            return posix(
                libc::ENOTDIR,
                format!("{:?} is not a directory", show(name)),
            );
        }
        if !readdir_in(&self.objects, e.ino)?.is_empty() {
            return posix(libc::ENOTEMPTY, format!("{:?} is not empty", show(name)));
        }
        self.remove_entry(dir, name)?;
        self.drop_if_unlinked(e.ino)
    }

    /// Rename `sdir/sname` to `ddir/dname`, atomically replacing what `dname` named as POSIX
    /// `rename` does: a file over a file, a directory over an empty directory; the same inode
    /// under both names changes nothing.
    pub fn rename(&mut self, sdir: u64, sname: &[u8], ddir: u64, dname: &[u8]) -> Result<()> {
        name_ok(dname)?;
        let src = self
            .lookup(sdir, sname)
            .ok_or_else(|| Error::NotFound(show(sname)))?;
        self.refuse_volume(&src)?;
        must_dir(&self.objects, ddir)?;
        if src.typ == InodeType::Dir
            && self
                .volume_objs
                .iter()
                .any(|&v| is_within(&self.objects, v, src.ino))
        {
            // A volume's path is its name and its bdev's.
            return posix(
                libc::EBUSY,
                format!("{:?} holds a volume, whose path is its name", show(sname)),
            );
        }
        if src.typ == InodeType::Dir && is_within(&self.objects, ddir, src.ino) {
            return Err(Error::Invalid(format!(
                "{:?} cannot move into itself",
                show(sname)
            )));
        }
        let dst = self.lookup(ddir, dname);
        if dst.as_ref().is_some_and(|d| d.ino == src.ino) {
            return Ok(());
        }
        // Refuse now what adding the new name would refuse later, before anything changes.
        self.entry_values(
            ddir,
            dname,
            src.ino,
            src.typ,
            &[(ddir, dname), (sdir, sname)],
        )?;
        if let Some(dst) = dst {
            self.refuse_volume(&dst)?;
            match (src.typ == InodeType::Dir, dst.typ == InodeType::Dir) {
                (true, false) => {
                    return posix(
                        libc::ENOTDIR,
                        format!("{:?} is not a directory", show(dname)),
                    )
                }
                (false, true) => {
                    return posix(libc::EISDIR, format!("{:?} is a directory", show(dname)))
                }
                (true, true) if !readdir_in(&self.objects, dst.ino)?.is_empty() => {
                    return posix(libc::ENOTEMPTY, format!("{:?} is not empty", show(dname)))
                }
                _ => {}
            }
            self.remove_entry(ddir, dname)?;
            self.drop_if_unlinked(dst.ino)?;
        }
        self.remove_entry(sdir, sname)?;
        self.add_entry(ddir, dname, src.ino)
    }

    pub fn setattr(&mut self, ino: u64, s: SetAttrs) -> Result<()> {
        must_inode(&self.objects, ino)?;
        if s.mode.is_some_and(|m| m & !0o7777 != 0) {
            return Err(Error::Invalid(
                "mode: permission bits only (0 to 0o7777)".into(),
            ));
        }
        let now = self.now();
        self.change_inode(ino, |i| {
            let a = &mut i.attrs;
            a.mode = s.mode.unwrap_or(a.mode);
            a.uid = s.uid.unwrap_or(a.uid);
            a.gid = s.gid.unwrap_or(a.gid);
            a.atime = s.atime.unwrap_or(a.atime);
            a.mtime = s.mtime.unwrap_or(a.mtime);
            i.ctime = now;
        })?;
        self.touch_up(ino);
        Ok(())
    }

    pub fn set_xattr(&mut self, ino: u64, name: &[u8], value: &[u8]) -> Result<()> {
        must_inode(&self.objects, ino)?;
        if name.is_empty() || name.len() > MAX_XATTR_NAME {
            return posix(libc::ERANGE, "an attribute name is 1 to 255 bytes");
        }
        if value.len() > MAX_XATTR_VALUE {
            return posix(
                libc::E2BIG,
                format!("an attribute value is at most {MAX_XATTR_VALUE} bytes"),
            );
        }
        let key = xattr_key(ino, name);
        let mut entries = match get(&self.objects, &key) {
            Some(Val::Xattrs { entries, .. }) => entries.clone(),
            _ => Vec::new(),
        };
        match entries.iter_mut().find(|(n, _)| n == name) {
            Some(e) => e.1 = value.to_vec(),
            None => entries.push((name.to_vec(), value.to_vec())),
        }
        let v = Val::Xattrs {
            gen: self.gen,
            entries,
        };
        if v.encoded_len() > MAX_VALUE {
            return posix(
                libc::ENOSPC,
                "no room for the attribute beside those of its hash",
            );
        }
        let _ = insert(&mut self.objects, key, v, &mut self.alloc);
        self.touch(ino, false)
    }

    pub fn remove_xattr(&mut self, ino: u64, name: &[u8]) -> Result<()> {
        let key = xattr_key(ino, name);
        let entries = match get(&self.objects, &key) {
            Some(Val::Xattrs { entries, .. }) if entries.iter().any(|(n, _)| n == name) => {
                entries.clone()
            }
            _ => return posix(libc::ENODATA, format!("no attribute {:?}", show(name))),
        };
        let rest: Vec<_> = entries.into_iter().filter(|(n, _)| n != name).collect();
        let _ = remove(&mut self.objects, &key, &mut self.alloc);
        if !rest.is_empty() {
            let v = Val::Xattrs {
                gen: self.gen,
                entries: rest,
            };
            let _ = insert(&mut self.objects, key, v, &mut self.alloc);
        }
        self.touch(ino, false)
    }

    // ---- file data ----

    fn file_for_write(&self, ino: u64) -> Result<u64> {
        let i = must_inode(&self.objects, ino)?;
        match i.typ {
            InodeType::File => Ok(i.size),
            InodeType::Volume => posix(
                libc::EBUSY,
                format!("inode {ino} is a volume: it is written through its bdev"),
            ),
            InodeType::Dir => posix(libc::EISDIR, format!("inode {ino} is a directory")),
            _ => Err(Error::Invalid(format!("inode {ino} is not a regular file"))),
        }
    }

    fn set_size(&mut self, ino: u64, size: u64) -> Result<()> {
        self.change_inode(ino, |i| i.size = size)
    }

    /// Put `bytes` into cluster `idx` at `within`, preparing the cluster as the core says (a
    /// new one is written whole, a shared one is copied first).
    fn write_cluster(
        &mut self,
        data: &mut dyn Data,
        ino: u64,
        idx: u64,
        within: u64,
        bytes: &[u8],
    ) -> Result<()> {
        let cs = self.cluster_size();
        match self.prepare_write(ino, idx)? {
            super::Prep::Ready { cluster } => data.write(cluster * cs + within, bytes),
            super::Prep::Zero { cluster } => {
                let mut buf = vec![0u8; cs as usize];
                buf[within as usize..within as usize + bytes.len()].copy_from_slice(bytes);
                data.write(cluster * cs, &buf)
            }
            super::Prep::Copy { from, to } => {
                let mut buf = vec![0u8; cs as usize];
                data.read(from * cs, &mut buf)?;
                buf[within as usize..within as usize + bytes.len()].copy_from_slice(bytes);
                data.write(to * cs, &buf)
            }
        }
    }

    /// Write `bytes` at `off` of a regular file, extending it as needed.
    pub fn write(&mut self, data: &mut dyn Data, ino: u64, off: u64, bytes: &[u8]) -> Result<()> {
        let size = self.file_for_write(ino)?;
        let end = off.saturating_add(bytes.len() as u64);
        if end > MAX_FILE {
            return posix(libc::EFBIG, "past the largest file");
        }
        if bytes.is_empty() {
            return Ok(());
        }
        if end > size {
            self.set_size(ino, end)?;
        }
        // Even a write cut short (no space) changed the file: the generation goes up first.
        let put = self.put_bytes(data, ino, off, bytes);
        self.touch(ino, true)?;
        put
    }

    fn put_bytes(&mut self, data: &mut dyn Data, ino: u64, off: u64, bytes: &[u8]) -> Result<()> {
        let cs = self.cluster_size();
        let mut at = 0usize;
        while at < bytes.len() {
            let pos = off + at as u64;
            let within = pos % cs;
            let n = ((cs - within) as usize).min(bytes.len() - at);
            self.write_cluster(data, ino, pos / cs, within, &bytes[at..at + n])?;
            at += n;
        }
        Ok(())
    }

    /// The mapped clusters of a file in `[first, end)`: (index, cluster). The work follows
    /// what is mapped, not the length of the range.
    fn mapped(&self, ino: u64, first: u64, end: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        if let Some(i) = inode_in(&self.objects, ino) {
            range(
                &i.extents,
                &super::core::extent_key(first),
                &super::core::extent_key(end),
                &mut |k, v| {
                    if let Val::Extent { cluster, .. } = v {
                        if *cluster != 0 {
                            out.push((k.off, *cluster));
                        }
                    }
                    true
                },
            );
        }
        out
    }

    /// Zero `[off, off + len)` of a file: whole clusters are unmapped, the edges written.
    fn zero_range(&mut self, data: &mut dyn Data, ino: u64, off: u64, len: u64) -> Result<()> {
        let cs = self.cluster_size();
        let end = off + len;
        for (idx, _) in self.mapped(ino, off / cs, end.div_ceil(cs)) {
            let (a, b) = ((idx * cs).max(off), ((idx + 1) * cs).min(end));
            if b - a == cs {
                self.unmap_cluster(ino, idx)?;
            } else {
                self.write_cluster(data, ino, idx, a - idx * cs, &vec![0u8; (b - a) as usize])?;
            }
        }
        Ok(())
    }

    /// Set a regular file's size: shrinking frees what lies past the end and zeroes the rest of
    /// the last cluster; growing adds a hole.
    pub fn truncate(&mut self, data: &mut dyn Data, ino: u64, size: u64) -> Result<()> {
        let old = self.file_for_write(ino)?;
        if size > MAX_FILE {
            return posix(libc::EFBIG, "past the largest file");
        }
        if size < old {
            let cs = self.cluster_size();
            let tail_end = old.min(size.div_ceil(cs) * cs);
            self.zero_range(data, ino, size, tail_end - size)?;
            for (idx, _) in self.mapped(ino, size.div_ceil(cs), old.div_ceil(cs)) {
                self.unmap_cluster(ino, idx)?;
            }
        }
        self.set_size(ino, size)?;
        self.touch(ino, true)
    }

    /// Zero `[off, off + len)` of a regular file without changing its size (fallocate's
    /// punch-hole): whole clusters go back to free space.
    pub fn punch(&mut self, data: &mut dyn Data, ino: u64, off: u64, len: u64) -> Result<()> {
        let size = self.file_for_write(ino)?;
        let end = size.min(off.saturating_add(len));
        if off < end {
            self.zero_range(data, ino, off, end - off)?;
        }
        self.touch(ino, true)
    }

    /// A new file `dir/name` sharing every extent of file `src`: O(1), one more reference to
    /// its extent tree.
    pub fn clone_file(&mut self, src: u64, dir: u64, name: &[u8]) -> Result<u64> {
        let s = clone_source(&self.objects, src)?;
        let attrs = s.attrs;
        let ino = self.make(dir, name, InodeType::File, attrs, &[])?;
        self.share_data(src, ino)?;
        Ok(ino)
    }

    /// File `dst` (empty) takes the size and the extent tree of `src`, shared.
    pub(super) fn share_data(&mut self, src: u64, dst: u64) -> Result<()> {
        let s = clone_source(&self.objects, src)?;
        let (extents, size) = (s.extents.clone(), s.size);
        self.mark_shared();
        let old = self.change_inode(dst, |i| {
            i.size = size;
            i.origin_obj = src;
            std::mem::replace(&mut i.extents, extents)
        })?;
        super::tree::release_tree(old, &mut self.alloc);
        self.touch(dst, false)
    }

    /// Make `[dst_off, dst_off + len)` of file `dst` share the clusters of `[src_off, ..)` of
    /// `src` (FICLONERANGE): offsets and length in whole clusters, or the length reaching the
    /// end of `src` and of `dst`. O(clusters), no data moves.
    pub fn clone_range(
        &mut self,
        src: u64,
        src_off: u64,
        dst: u64,
        dst_off: u64,
        len: u64,
    ) -> Result<()> {
        let cs = self.cluster_size();
        let s = clone_source(&self.objects, src)?;
        let ssize = s.size;
        let dsize = self.file_for_write(dst)?;
        let to_end = src_off.saturating_add(len) == ssize;
        if src_off % cs != 0 || dst_off % cs != 0 || (len % cs != 0 && !to_end) {
            return Err(Error::Invalid(format!(
                "a cloned range starts and ends on a cluster ({cs} bytes), or ends at the source's end"
            )));
        }
        if len % cs != 0 && dst_off.saturating_add(len) < dsize {
            // The source's last cluster carries zeros past its end, which would land inside
            // the destination.
            return Err(Error::Invalid(
                "a range ending inside a cluster must end at or past the destination's end".into(),
            ));
        }
        if src_off.saturating_add(len) > ssize || dst_off.saturating_add(len) > MAX_FILE {
            return Err(Error::Invalid(
                "the range lies past the source's end".into(),
            ));
        }
        if src == dst && src_off.abs_diff(dst_off) < len {
            return Err(Error::Invalid("the ranges overlap".into()));
        }
        let n = len.div_ceil(cs);
        let (first_s, first_d) = (src_off / cs, dst_off / cs);
        // What the destination range maps becomes a hole unless the source maps it there;
        // the work follows what is mapped on either side, not the length.
        let mut clusters: std::collections::BTreeMap<u64, u64> = self
            .mapped(dst, first_d, first_d + n)
            .into_iter()
            .map(|(idx, _)| (idx - first_d, 0))
            .collect();
        for (idx, c) in self.mapped(src, first_s, first_s + n) {
            clusters.insert(idx - first_s, c);
        }
        let end = dsize.max(dst_off + len);
        if end > dsize {
            self.set_size(dst, end)?;
        }
        let gen = self.gen;
        self.mark_shared();
        self.change_extents(dst, |i, alloc| {
            for (k, c) in clusters {
                let key = super::core::extent_key(first_d + k);
                if c != 0 {
                    super::tree::Space::cluster_ref(alloc, c);
                }
                let v = Val::Extent {
                    cluster: c,
                    birth: gen,
                };
                if let Some(old) = insert(&mut i.extents, key, v, alloc) {
                    release_val(old, alloc);
                }
            }
            Ok(())
        })?;
        self.record_clone(
            dst,
            CloneRec {
                src,
                src_idx: first_s,
                dst_idx: first_d,
                n,
            },
        );
        self.touch(dst, true)
    }

    /// Keep a range clone for diffs (see the format), dropping the records of `dst` that no
    /// snapshot can need: those not after the oldest snapshot (or, without one, before now).
    /// A generation's record that is full keeps what it has: the range then travels as data.
    fn record_clone(&mut self, dst: u64, rec: CloneRec) {
        let gen = self.gen;
        let oldest = self
            .snapshots()
            .iter()
            .map(|s| s.gen)
            .min()
            .unwrap_or(gen.saturating_sub(1));
        let mut stale = Vec::new();
        range(
            &self.objects,
            &Key::new(dst, KIND_CLONES, 0),
            &Key::new(dst, KIND_CLONES, oldest.saturating_add(1)),
            &mut |k, _| {
                stale.push(*k);
                true
            },
        );
        for k in stale {
            if let Some(v) = remove(&mut self.objects, &k, &mut self.alloc) {
                release_val(v, &mut self.alloc);
            }
        }
        let key = Key::new(dst, KIND_CLONES, gen);
        let mut entries = match get(&self.objects, &key) {
            Some(Val::Clones { entries, .. }) => entries.clone(),
            _ => Vec::new(),
        };
        entries.push(rec);
        let v = Val::Clones { gen, entries };
        if v.encoded_len() <= MAX_VALUE {
            let _ = insert(&mut self.objects, key, v, &mut self.alloc);
        }
    }

    /// Keep `data` in chunks under `obj`, replacing what was there.
    pub(super) fn put_chunks(&mut self, obj: u64, data: &[u8]) {
        let gen = self.gen;
        let old = chunks_in(&self.objects, obj)
            .len()
            .div_ceil(super::format::CHUNK);
        let chunks: Vec<&[u8]> = data.chunks(super::format::CHUNK).collect();
        for (i, c) in chunks.iter().enumerate() {
            let v = Val::Chunk {
                gen,
                data: c.to_vec(),
            };
            let key = Key::new(obj, KIND_CHUNK, i as u64);
            if let Some(old) = insert(&mut self.objects, key, v, &mut self.alloc) {
                release_val(old, &mut self.alloc);
            }
        }
        for i in chunks.len()..old {
            let key = Key::new(obj, KIND_CHUNK, i as u64);
            if let Some(old) = remove(&mut self.objects, &key, &mut self.alloc) {
                release_val(old, &mut self.alloc);
            }
        }
        self.mark_changed();
    }

    /// Every inode of the namespace in an image, for the check and tests.
    pub fn ns_inodes(root: &Tree) -> Vec<u64> {
        let mut out = Vec::new();
        tree::each(root, &mut |k, v| {
            if let Val::Inode(i) = v {
                if k.kind == KIND_INODE && i.typ != InodeType::Object {
                    out.push(k.obj);
                }
            }
        });
        out
    }
}
