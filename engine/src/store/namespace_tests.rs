//! The namespace against an in-memory model: random sequences of mkdir, create, symlink,
//! write, truncate, punch, rename, link, unlink, rmdir, setattr, xattrs, file and range clones,
//! snapshots, commits and reloads (proptest). Each operation must succeed on the store exactly
//! when the model says POSIX allows it; after every step the live namespace matches the model
//! and every snapshot still matches the model as it was; after commits and reloads the check
//! is clean. At the end, for every pair of consecutive images and for the root and every
//! directory both hold, the subtree diff is applied to a second store holding a copy of the
//! older image, and that copy must then equal the newer image below the directory, times and
//! hard links included.

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;

use super::check::check;
use super::core::Core;
use super::format::BLOCK;
use super::namespace::{self, readdir_in, readlink_in, xattrs_in, Data, SetAttrs, ROOT};
use super::subtree_diff::subtree_diff;
use super::tree::{Attrs, InodeType, Tree};
use super::Result;

const CS: u32 = 4096;
const CLUSTERS: u64 = 2000;

/// A store's device in memory.
pub(super) struct Ram {
    pub bytes: Vec<u8>,
}

impl Data for Ram {
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        buf.copy_from_slice(&self.bytes[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.bytes[offset as usize..offset as usize + data.len()].copy_from_slice(data);
        Ok(())
    }
}

impl Ram {
    pub fn formatted() -> (Core, Ram) {
        let size = CS as u64 * CLUSTERS;
        let (mut core, f) = Core::format(size, CS, "ns", 9).expect("format");
        let mut ram = Ram {
            bytes: vec![0; size as usize],
        };
        ram.put(&f);
        core.commit_done(f.gen);
        (core, ram)
    }

    fn put(&mut self, f: &super::core::Frozen) {
        for (b, d) in f.writes.iter().chain(std::iter::once(&f.superblock)) {
            self.write(b * BLOCK as u64, d).expect("in the device");
        }
    }

    pub fn commit(&mut self, core: &mut Core) {
        let f = core.freeze().expect("freeze");
        self.put(&f);
        core.commit_done(f.gen);
        core.commit_durable(f.gen);
        core.release_oldest_frees();
    }

    pub fn load(&self) -> Core {
        Core::load(self.bytes.len() as u64, &mut |bs| {
            Ok(bs
                .iter()
                .map(|b| self.bytes[(b * BLOCK as u64) as usize..][..BLOCK].to_vec())
                .collect())
        })
        .expect("load")
    }
}

/// A subtree as a canonical value: per path, what is there. Hard links show as the first path
/// (in order) naming the same inode.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    typ: InodeType,
    mode: u32,
    owner: (u32, u32),
    times: Option<(i64, i64)>,
    content: Vec<u8>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    first_link: String,
}

type Canon = BTreeMap<String, Entry>;

/// Equal, or a panic naming only the paths that differ (contents by length and checksum).
fn same(got: &Canon, want: &Canon, what: &str) {
    if got == want {
        return;
    }
    let brief = |e: Option<&Entry>| {
        e.map(|e| {
            format!(
                "{:?} mode {:o} {:?} times {:?} {} bytes crc {:08x} xattrs {} link {}",
                e.typ,
                e.mode,
                e.owner,
                e.times,
                e.content.len(),
                crc32c::crc32c(&e.content),
                e.xattrs.len(),
                e.first_link
            )
        })
    };
    let mut lines = Vec::new();
    for p in got
        .keys()
        .chain(want.keys())
        .collect::<std::collections::BTreeSet<_>>()
    {
        let (g, w) = (got.get(p), want.get(p));
        if g != w {
            lines.push(format!(
                "{p}:\n  got  {:?}\n  want {:?}",
                brief(g),
                brief(w)
            ));
        }
    }
    panic!("{what}:\n{}", lines.join("\n"));
}

fn canon_store(root: &Tree, data: &mut Ram, top: u64, times: bool) -> Canon {
    let mut out = Canon::new();
    let mut first: HashMap<u64, String> = HashMap::new();
    let mut todo = vec![(top, String::new())];
    while let Some((ino, path)) = todo.pop() {
        let st = namespace::stat_in(root, ino).expect("stat");
        let link = first.entry(ino).or_insert_with(|| path.clone()).clone();
        let content = match st.typ {
            InodeType::File | InodeType::Volume => {
                namespace::read_in(root, CS as u64, data, ino, 0, st.size).expect("read")
            }
            InodeType::Symlink => readlink_in(root, ino).expect("readlink"),
            _ => Vec::new(),
        };
        if st.typ == InodeType::Dir {
            for e in readdir_in(root, ino).expect("readdir") {
                todo.push((
                    e.ino,
                    format!("{path}/{}", String::from_utf8_lossy(&e.name)),
                ));
            }
        }
        out.insert(
            path,
            Entry {
                typ: if st.typ == InodeType::Volume {
                    InodeType::File
                } else {
                    st.typ
                },
                mode: st.attrs.mode,
                owner: (st.attrs.uid, st.attrs.gid),
                times: times.then_some((st.attrs.atime, st.attrs.mtime)),
                content,
                xattrs: xattrs_in(root, ino),
                first_link: link,
            },
        );
    }
    fix_links(out)
}

/// Paths are visited in a stack order; make `first_link` the smallest path of each inode.
fn fix_links(mut c: Canon) -> Canon {
    let mut least: HashMap<String, String> = HashMap::new();
    for (p, e) in &c {
        let l = least
            .entry(e.first_link.clone())
            .or_insert_with(|| p.clone());
        if p < l {
            *l = p.clone();
        }
    }
    for e in c.values_mut() {
        e.first_link = least[&e.first_link].clone();
    }
    c
}

#[derive(Debug, Clone, PartialEq)]
struct MNode {
    typ: InodeType,
    attrs: Attrs,
    data: Vec<u8>,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    entries: BTreeMap<Vec<u8>, u64>,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct Model {
    nodes: HashMap<u64, MNode>,
}

impl Model {
    fn canon(&self, top: u64) -> Canon {
        let mut out = Canon::new();
        let mut first: HashMap<u64, String> = HashMap::new();
        let mut todo = vec![(top, String::new())];
        while let Some((ino, path)) = todo.pop() {
            let n = &self.nodes[&ino];
            let link = first.entry(ino).or_insert_with(|| path.clone()).clone();
            for (name, c) in &n.entries {
                todo.push((*c, format!("{path}/{}", String::from_utf8_lossy(name))));
            }
            out.insert(
                path,
                Entry {
                    typ: n.typ,
                    mode: n.attrs.mode,
                    owner: (n.attrs.uid, n.attrs.gid),
                    times: None,
                    content: n.data.clone(),
                    xattrs: n.xattrs.clone().into_iter().collect(),
                    first_link: link,
                },
            );
        }
        fix_links(out)
    }

    fn parent(&self, ino: u64) -> Option<u64> {
        self.nodes
            .iter()
            .find(|(_, n)| n.entries.values().any(|&c| c == ino) && n.typ == InodeType::Dir)
            .map(|(p, _)| *p)
    }

    fn within(&self, mut ino: u64, dir: u64) -> bool {
        loop {
            if ino == dir {
                return true;
            }
            match self.parent(ino) {
                Some(p) => ino = p,
                None => return false,
            }
        }
    }

    fn links(&self, ino: u64) -> usize {
        self.nodes
            .values()
            .map(|n| n.entries.values().filter(|&&c| c == ino).count())
            .sum()
    }

    fn sorted(&self, f: impl Fn(&MNode) -> bool) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .nodes
            .iter()
            .filter(|(_, n)| f(n))
            .map(|(i, _)| *i)
            .collect();
        v.sort();
        v
    }

    fn entries(&self) -> Vec<(u64, Vec<u8>, u64)> {
        let mut v = Vec::new();
        for d in self.sorted(|n| n.typ == InodeType::Dir) {
            for (name, c) in &self.nodes[&d].entries {
                v.push((d, name.clone(), *c));
            }
        }
        v
    }

    /// A new inode `ino`, named `name` in `dir`.
    fn add(&mut self, dir: u64, name: Vec<u8>, ino: u64, node: MNode) {
        self.nodes.insert(ino, node);
        self.nodes
            .get_mut(&dir)
            .expect("a directory")
            .entries
            .insert(name, ino);
    }

    fn drop_if_unlinked(&mut self, ino: u64) {
        if self.links(ino) == 0 {
            self.nodes.remove(&ino);
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Mkdir {
        dir: u8,
        name: u8,
    },
    Create {
        dir: u8,
        name: u8,
    },
    Symlink {
        dir: u8,
        name: u8,
        len: u16,
    },
    Write {
        file: u8,
        off: u16,
        len: u16,
        seed: u8,
    },
    Truncate {
        file: u8,
        size: u16,
    },
    Punch {
        file: u8,
        off: u16,
        len: u16,
    },
    Rename {
        entry: u8,
        dir: u8,
        name: u8,
    },
    Link {
        file: u8,
        dir: u8,
        name: u8,
    },
    Unlink {
        entry: u8,
    },
    Rmdir {
        entry: u8,
    },
    SetAttr {
        ino: u8,
        mode: u16,
        mtime: u8,
    },
    SetXattr {
        ino: u8,
        name: u8,
        len: u8,
    },
    RemoveXattr {
        ino: u8,
        name: u8,
    },
    CloneFile {
        file: u8,
        dir: u8,
        name: u8,
    },
    CloneRange {
        src: u8,
        dst: u8,
        sc: u8,
        dc: u8,
        n: u8,
    },
    Snapshot,
    Commit,
    Reload,
}

fn op() -> impl Strategy<Value = Op> {
    let b = any::<u8>;
    prop_oneof![
        3 => (b(), b()).prop_map(|(dir, name)| Op::Mkdir { dir, name }),
        4 => (b(), b()).prop_map(|(dir, name)| Op::Create { dir, name }),
        1 => (b(), b(), 1..300u16).prop_map(|(dir, name, len)| Op::Symlink { dir, name, len }),
        5 => (b(), 0..20000u16, 0..9000u16, b()).prop_map(|(file, off, len, seed)| Op::Write { file, off, len, seed }),
        1 => (b(), 0..20000u16).prop_map(|(file, size)| Op::Truncate { file, size }),
        1 => (b(), 0..20000u16, 0..12000u16).prop_map(|(file, off, len)| Op::Punch { file, off, len }),
        3 => (b(), b(), b()).prop_map(|(entry, dir, name)| Op::Rename { entry, dir, name }),
        2 => (b(), b(), b()).prop_map(|(file, dir, name)| Op::Link { file, dir, name }),
        2 => b().prop_map(|entry| Op::Unlink { entry }),
        1 => b().prop_map(|entry| Op::Rmdir { entry }),
        1 => (b(), 0..0o7777u16, b()).prop_map(|(ino, mode, mtime)| Op::SetAttr { ino, mode, mtime }),
        1 => (b(), b(), b()).prop_map(|(ino, name, len)| Op::SetXattr { ino, name, len }),
        1 => (b(), b()).prop_map(|(ino, name)| Op::RemoveXattr { ino, name }),
        1 => (b(), b(), b()).prop_map(|(file, dir, name)| Op::CloneFile { file, dir, name }),
        1 => (b(), b(), 0..5u8, 0..5u8, 1..4u8).prop_map(|(src, dst, sc, dc, n)| Op::CloneRange { src, dst, sc, dc, n }),
        2 => Just(Op::Snapshot),
        1 => Just(Op::Commit),
        1 => Just(Op::Reload),
    ]
}

fn pick<T: Clone>(v: &[T], i: u8) -> Option<T> {
    (!v.is_empty()).then(|| v[i as usize % v.len()].clone())
}

fn name(n: u8) -> Vec<u8> {
    format!("n{}", n % 6).into_bytes()
}

fn attrs(seed: u8) -> Attrs {
    Attrs {
        mode: 0o640 + (seed as u32 % 8),
        uid: 1000 + seed as u32 % 3,
        gid: 100,
        atime: 1_000_000_000 * seed as i64,
        mtime: 2_000_000_000 * seed as i64,
    }
}

fn bytes(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

struct Rig {
    core: Core,
    ram: Ram,
    model: Model,
    /// (snapshot id, the model then)
    snaps: Vec<(u64, Model)>,
}

impl Rig {
    fn new() -> Rig {
        let (core, ram) = Ram::formatted();
        let mut model = Model::default();
        let root = namespace::stat_in(&core.objects, ROOT).expect("root");
        model.nodes.insert(
            ROOT,
            MNode {
                typ: InodeType::Dir,
                attrs: root.attrs,
                data: Vec::new(),
                xattrs: BTreeMap::new(),
                entries: BTreeMap::new(),
            },
        );
        Rig {
            core,
            ram,
            model,
            snaps: Vec::new(),
        }
    }

    fn new_node(typ: InodeType, a: Attrs) -> MNode {
        MNode {
            typ,
            attrs: a,
            data: Vec::new(),
            xattrs: BTreeMap::new(),
            entries: BTreeMap::new(),
        }
    }

    /// Run `op` on the store and the model; both must agree on whether it is allowed.
    fn step(&mut self, op: &Op) {
        let m = &self.model;
        let dirs = m.sorted(|n| n.typ == InodeType::Dir);
        let files = m.sorted(|n| n.typ == InodeType::File);
        let all = m.sorted(|_| true);
        let entries = m.entries();
        let core = &mut self.core;
        let ram = &mut self.ram;
        // (what the store said, what the model says is allowed)
        let (r, allowed): (Result<()>, bool) = match *op {
            Op::Mkdir { dir, name: n }
            | Op::Create { dir, name: n }
            | Op::Symlink { dir, name: n, .. } => {
                let d = pick(&dirs, dir).expect("the root is a directory");
                let free = !m.nodes[&d].entries.contains_key(&name(n));
                let (typ, target) = match *op {
                    Op::Mkdir { .. } => (InodeType::Dir, Vec::new()),
                    Op::Create { .. } => (InodeType::File, Vec::new()),
                    Op::Symlink { len, .. } => (
                        InodeType::Symlink,
                        bytes(n, len as usize).iter().map(|b| b | 0x40).collect(),
                    ),
                    _ => unreachable!(),
                };
                let a = attrs(n);
                let r = match typ {
                    InodeType::Dir => core.mkdir(d, &name(n), a),
                    InodeType::File => core.create(d, &name(n), a),
                    _ => core.symlink(d, &name(n), &target, a),
                };
                if let Ok(ino) = r {
                    let mut node = Rig::new_node(typ, a);
                    node.data = target;
                    self.model.add(d, name(n), ino, node);
                }
                (r.map(|_| ()), free)
            }
            Op::Write {
                file,
                off,
                len,
                seed,
            } => {
                let Some(f) = pick(&files, file) else { return };
                let data = bytes(seed, len as usize);
                let r = core.write(ram, f, off as u64, &data);
                if r.is_ok() && len > 0 {
                    let d = &mut self.model.nodes.get_mut(&f).unwrap().data;
                    let end = off as usize + len as usize;
                    if d.len() < end {
                        d.resize(end, 0);
                    }
                    d[off as usize..end].copy_from_slice(&data);
                }
                (r, true)
            }
            Op::Truncate { file, size } => {
                let Some(f) = pick(&files, file) else { return };
                let r = core.truncate(ram, f, size as u64);
                if r.is_ok() {
                    self.model
                        .nodes
                        .get_mut(&f)
                        .unwrap()
                        .data
                        .resize(size as usize, 0);
                }
                (r, true)
            }
            Op::Punch { file, off, len } => {
                let Some(f) = pick(&files, file) else { return };
                let r = core.punch(ram, f, off as u64, len as u64);
                if r.is_ok() {
                    let d = &mut self.model.nodes.get_mut(&f).unwrap().data;
                    let end = d.len().min(off as usize + len as usize);
                    for b in d.iter_mut().take(end).skip(off as usize) {
                        *b = 0;
                    }
                }
                (r, true)
            }
            Op::Rename {
                entry,
                dir,
                name: n,
            } => {
                let Some((sd, sn, ino)) = pick(&entries, entry) else {
                    return;
                };
                let dd = pick(&dirs, dir).unwrap();
                let dn = name(n);
                let src_dir = m.nodes[&ino].typ == InodeType::Dir;
                let allowed = match m.nodes[&dd].entries.get(&dn) {
                    _ if src_dir && m.within(dd, ino) => false,
                    Some(&t) if t == ino => true,
                    Some(&t) => {
                        let tdir = m.nodes[&t].typ == InodeType::Dir;
                        src_dir == tdir && (!tdir || m.nodes[&t].entries.is_empty())
                    }
                    None => true,
                };
                let r = core.rename(sd, &sn, dd, &dn);
                if r.is_ok() {
                    let same = m.nodes[&dd].entries.get(&dn) == Some(&ino);
                    if !same {
                        let mm = &mut self.model;
                        let old = mm.nodes.get_mut(&dd).unwrap().entries.insert(dn, ino);
                        mm.nodes.get_mut(&sd).unwrap().entries.remove(&sn);
                        if let Some(t) = old {
                            mm.drop_if_unlinked(t);
                        }
                    }
                }
                (r, allowed)
            }
            Op::Link { file, dir, name: n } => {
                let Some(f) = pick(&files, file) else { return };
                let d = pick(&dirs, dir).unwrap();
                let free = !m.nodes[&d].entries.contains_key(&name(n));
                let r = core.link(f, d, &name(n));
                if r.is_ok() {
                    self.model
                        .nodes
                        .get_mut(&d)
                        .unwrap()
                        .entries
                        .insert(name(n), f);
                }
                (r, free)
            }
            Op::Unlink { entry } | Op::Rmdir { entry } => {
                let Some((d, n, ino)) = pick(&entries, entry) else {
                    return;
                };
                let node = &m.nodes[&ino];
                let rmdir = matches!(op, Op::Rmdir { .. });
                let allowed = if rmdir {
                    node.typ == InodeType::Dir && node.entries.is_empty()
                } else {
                    node.typ != InodeType::Dir
                };
                let r = if rmdir {
                    core.rmdir(d, &n)
                } else {
                    core.unlink(d, &n)
                };
                if r.is_ok() {
                    self.model.nodes.get_mut(&d).unwrap().entries.remove(&n);
                    self.model.drop_if_unlinked(ino);
                }
                (r, allowed)
            }
            Op::SetAttr { ino, mode, mtime } => {
                let i = pick(&all, ino).unwrap();
                let s = SetAttrs {
                    mode: Some(mode as u32),
                    mtime: Some(mtime as i64 * 1_000_000_007),
                    ..SetAttrs::default()
                };
                let r = core.setattr(i, s);
                if r.is_ok() {
                    let a = &mut self.model.nodes.get_mut(&i).unwrap().attrs;
                    a.mode = mode as u32;
                    a.mtime = mtime as i64 * 1_000_000_007;
                }
                (r, true)
            }
            Op::SetXattr { ino, name: n, len } => {
                let i = pick(&all, ino).unwrap();
                let (xn, xv) = (
                    format!("user.{}", n % 4).into_bytes(),
                    bytes(n, len as usize),
                );
                let r = core.set_xattr(i, &xn, &xv);
                if r.is_ok() {
                    self.model.nodes.get_mut(&i).unwrap().xattrs.insert(xn, xv);
                }
                (r, true)
            }
            Op::RemoveXattr { ino, name: n } => {
                let i = pick(&all, ino).unwrap();
                let xn = format!("user.{}", n % 4).into_bytes();
                let allowed = m.nodes[&i].xattrs.contains_key(&xn);
                let r = core.remove_xattr(i, &xn);
                if r.is_ok() {
                    self.model.nodes.get_mut(&i).unwrap().xattrs.remove(&xn);
                }
                (r, allowed)
            }
            Op::CloneFile { file, dir, name: n } => {
                let Some(f) = pick(&files, file) else { return };
                let d = pick(&dirs, dir).unwrap();
                let free = !m.nodes[&d].entries.contains_key(&name(n));
                let r = core.clone_file(f, d, &name(n));
                if let Ok(ino) = r {
                    let src = self.model.nodes[&f].clone();
                    let mut node = Rig::new_node(InodeType::File, src.attrs);
                    node.data = src.data;
                    self.model.add(d, name(n), ino, node);
                }
                (r.map(|_| ()), free)
            }
            Op::CloneRange {
                src,
                dst,
                sc,
                dc,
                n,
            } => {
                let (Some(s), Some(d)) = (pick(&files, src), pick(&files, dst)) else {
                    return;
                };
                let cs = CS as usize;
                let (so, dof) = (sc as usize * cs, dc as usize * cs);
                let slen = m.nodes[&s].data.len();
                let len = (n as usize * cs).min(slen.saturating_sub(so));
                let dlen = m.nodes[&d].data.len();
                let allowed = so < slen
                    && (s != d || so.abs_diff(dof) >= len)
                    && (len % cs == 0 || dof + len >= dlen);
                let r = if so < slen {
                    core.clone_range(s, so as u64, d, dof as u64, len as u64)
                } else {
                    // An empty or out-of-range source: the store refuses it too.
                    core.clone_range(s, so as u64, d, dof as u64, cs as u64)
                };
                if r.is_ok() {
                    let bytes = m.nodes[&s].data[so..so + len].to_vec();
                    let dd = &mut self.model.nodes.get_mut(&d).unwrap().data;
                    if dd.len() < dof + len {
                        dd.resize(dof + len, 0);
                    }
                    dd[dof..dof + len].copy_from_slice(&bytes);
                }
                (r, allowed)
            }
            Op::Snapshot => {
                let name = format!("s{}", self.snaps.len());
                let id = core.snapshot(&name, 0, 1).expect("snapshot");
                self.snaps.push((id, self.model.clone()));
                (Ok(()), true)
            }
            Op::Commit => {
                ram.commit(core);
                assert_eq!(check(core), vec![], "check after a commit");
                (Ok(()), true)
            }
            Op::Reload => {
                ram.commit(core);
                self.core = ram.load();
                (Ok(()), true)
            }
        };
        assert_eq!(r.is_ok(), allowed, "{op:?}: the store said {r:?}");
        self.verify();
    }

    fn verify(&mut self) {
        let live = canon_store(&self.core.objects.clone(), &mut self.ram, ROOT, false);
        same(&live, &self.model.canon(ROOT), "the live namespace");
    }

    fn images(&self) -> Vec<Tree> {
        let mut v: Vec<Tree> = self
            .snaps
            .iter()
            .map(|(id, _)| self.core.snapshot_root(*id).expect("snapshot"))
            .collect();
        v.push(self.core.objects.clone());
        v
    }

    /// Every snapshot still as the model was; every subtree diff replays.
    fn finish(mut self) {
        for (id, model) in &self.snaps {
            let root = self.core.snapshot_root(*id).expect("snapshot");
            assert_eq!(
                canon_store(&root, &mut self.ram, ROOT, false),
                model.canon(ROOT),
                "snapshot {id}"
            );
        }
        let images = self.images();
        for pair in images.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            let dirs: Vec<u64> = self
                .model
                .sorted(|n| n.typ == InodeType::Dir)
                .into_iter()
                .filter(|d| {
                    super::namespace::inode_in(a, *d).is_some_and(|i| i.typ == InodeType::Dir)
                })
                .collect();
            for top in dirs {
                let path = path_to(a, top);
                if super::namespace::resolve_in(b, path.as_bytes()).ok() != Some(top) {
                    continue;
                }
                self.replay(a, b, top, &path);
            }
        }
    }

    /// Copy image `a` into a new store (the diff from an empty root), apply the diff of `path`
    /// from `a` to `b`, and compare the copy's `path` with `b`'s.
    fn replay(&mut self, a: &Tree, b: &Tree, top: u64, path: &str) {
        let (mut mirror, mut mram) = Ram::formatted();
        let empty = mirror.objects.clone();
        let mut map = HashMap::from([(ROOT, ROOT)]);
        let ram = &mut self.ram;
        // From another store's empty root, everything in `a` is new.
        let full = subtree_diff(&empty, a, b"/", CS as u64).expect("the diff from an empty root");
        // A clone of a live root held across a change would leak what the change copies.
        drop(empty);
        let mut read_a =
            |ino: u64, off: u64, len: u64| namespace::read_in(a, CS as u64, ram, ino, off, len);
        mirror
            .apply(&mut mram, &full.changes, &mut map, &mut read_a)
            .expect("copy of the older image");
        let d = subtree_diff(a, b, path.as_bytes(), CS as u64).expect("subtree diff");
        let mut read_b =
            |ino: u64, off: u64, len: u64| namespace::read_in(b, CS as u64, ram, ino, off, len);
        mirror
            .apply(&mut mram, &d.changes, &mut map, &mut read_b)
            .unwrap_or_else(|e| panic!("apply the diff of {path:?}: {e}\n{:#?}", d.changes));
        mram.commit(&mut mirror);
        assert_eq!(
            check(&mirror),
            vec![],
            "the mirror after the diff of {path:?}"
        );
        let got = canon_store(&mirror.objects.clone(), &mut mram, map[&top], true);
        let want = canon_store(b, &mut self.ram, top, true);
        same(
            &got,
            &want,
            &format!("the diff of {path:?} replayed: {:?}", d.changes),
        );
    }
}

fn path_to(root: &Tree, ino: u64) -> String {
    let mut parts = Vec::new();
    let mut i = ino;
    while i != ROOT {
        let (p, n) = namespace::links_in(root, i)
            .into_iter()
            .next()
            .expect("linked");
        parts.push(String::from_utf8_lossy(&n).into_owned());
        i = p;
    }
    parts.reverse();
    format!("/{}", parts.join("/"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, max_shrink_iters: 2000, ..ProptestConfig::default() })]
    #[test]
    fn namespace_matches_the_model(ops in proptest::collection::vec(op(), 1..70)) {
        let mut rig = Rig::new();
        rig.step(&Op::Snapshot);
        for op in &ops {
            rig.step(op);
        }
        rig.step(&Op::Commit);
        rig.finish();
    }
}

#[test]
fn posix_refusals_carry_their_errno() {
    let mut rig = Rig::new();
    let c = &mut rig.core;
    let a = attrs(1);
    let d = c.mkdir(ROOT, b"d", a).unwrap();
    let f = c.create(d, b"f", a).unwrap();
    let e = |r: Result<()>| r.unwrap_err().errno();
    assert_eq!(e(c.rmdir(ROOT, b"d")), -libc::ENOTEMPTY);
    assert_eq!(e(c.unlink(ROOT, b"d")), -libc::EISDIR);
    assert_eq!(e(c.rmdir(d, b"f")), -libc::ENOTDIR);
    assert_eq!(e(c.mkdir(d, b"f", a).map(|_| ())), -libc::EEXIST);
    assert_eq!(e(c.create(f, b"x", a).map(|_| ())), -libc::ENOTDIR);
    assert_eq!(e(c.rename(ROOT, b"d", d, b"inner")), -libc::EINVAL);
    assert_eq!(e(c.link(d, ROOT, b"dl")), -libc::EPERM);
    assert_eq!(
        e(c.create(ROOT, &[b'x'; 256], a).map(|_| ())),
        -libc::ENAMETOOLONG
    );
    assert_eq!(e(c.create(ROOT, b"a/b", a).map(|_| ())), -libc::EINVAL);
    assert_eq!(e(c.set_xattr(f, b"user.big", &[0; 2000])), -libc::E2BIG);
    assert_eq!(e(c.remove_xattr(f, b"user.none")), -libc::ENODATA);
    assert_eq!(e(c.write(&mut rig.ram, d, 0, b"x")), -libc::EISDIR);
    let v = c.create_volume("vol", 1 << 20, false, 5).unwrap();
    assert_eq!(e(c.unlink(ROOT, b"vol")), -libc::EBUSY);
    assert_eq!(e(c.rename(ROOT, b"vol", d, b"v")), -libc::EBUSY);
    assert_eq!(e(c.write(&mut rig.ram, v, 0, b"x")), -libc::EBUSY);
    assert_eq!(
        c.readdir(ROOT)
            .unwrap()
            .iter()
            .map(|e| e.name.clone())
            .collect::<Vec<_>>(),
        vec![b"d".to_vec(), b"vol".to_vec()]
    );
    // A name the root directory cannot hold leaves no volume behind.
    assert_eq!(
        e(c.create_volume(".", 1 << 20, false, 6).map(|_| ())),
        -libc::EINVAL
    );
    assert_eq!(c.volumes().len(), 1);
    // A rename the new name cannot take changes nothing, not even the file it would replace.
    let long = |i: u8| [vec![b'a' + i; 250], vec![b'z'; 5]].concat();
    let g = c.create(d, &long(9), a).unwrap();
    for i in 0..6 {
        c.link(f, d, &long(i)).unwrap();
    }
    assert_eq!(e(c.rename(d, b"f", d, &long(9))), -libc::EMLINK);
    assert_eq!(c.lookup(d, &long(9)).map(|x| x.ino), Some(g));
    assert_eq!(c.lookup(d, b"f").map(|x| x.ino), Some(f));
    // Sizes far past what is mapped cost what is mapped.
    c.write(&mut rig.ram, g, 5, b"abc").unwrap();
    let t = std::time::Instant::now();
    c.truncate(&mut rig.ram, g, namespace::MAX_FILE).unwrap();
    c.punch(&mut rig.ram, g, 4096, namespace::MAX_FILE).unwrap();
    c.clone_range(g, 0, f, 0, namespace::MAX_FILE).unwrap();
    c.truncate(&mut rig.ram, g, 0).unwrap();
    assert!(
        t.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(
        namespace::read_in(&c.objects.clone(), CS as u64, &mut rig.ram, f, 0, 9).unwrap(),
        b"\0\0\0\0\0abc\0".to_vec()
    );
    rig.ram.commit(&mut rig.core);
    assert_eq!(check(&rig.core), vec![]);
}

#[test]
fn range_clones_travel_as_clones_and_whole_file_clones_as_one() {
    use super::subtree_diff::Change;
    let mut rig = Rig::new();
    let c = &mut rig.core;
    let a = attrs(2);
    let cs = CS as u64;
    let src = c.create(ROOT, b"src", a).unwrap();
    let dst = c.create(ROOT, b"dst", a).unwrap();
    c.write(&mut rig.ram, src, 0, &bytes(5, 3 * CS as usize))
        .unwrap();
    c.write(&mut rig.ram, dst, 0, &bytes(6, 4 * CS as usize))
        .unwrap();
    let base = c.snapshot("a", 0, 1).unwrap();
    c.clone_range(src, 0, dst, cs, 2 * cs).unwrap();
    c.write(&mut rig.ram, dst, 3 * cs + 1, b"x").unwrap();
    c.clone_file(src, ROOT, b"copy").unwrap();
    let (old, new) = (c.snapshot_root(base).unwrap(), c.objects.clone());
    let d = subtree_diff(&old, &new, b"/", cs).unwrap();
    let ranges: Vec<&Change> = d
        .changes
        .iter()
        .filter(|x| matches!(x, Change::CloneRange { .. }))
        .collect();
    assert_eq!(
        ranges,
        [&Change::CloneRange {
            ino: dst,
            off: cs,
            src,
            src_off: 0,
            len: 2 * cs
        }],
        "{:?}",
        d.changes
    );
    let writes: Vec<(u64, u64)> = d
        .changes
        .iter()
        .filter_map(|x| match x {
            Change::Write { ino, off, .. } => Some((*ino, *off)),
            _ => None,
        })
        .collect();
    assert_eq!(
        writes,
        [(dst, 3 * cs)],
        "only the cluster written after the clones: {:?}",
        d.changes
    );
    assert!(d
        .changes
        .iter()
        .any(|x| matches!(x, Change::CloneFile { src: s, .. } if *s == src)));
    drop((old, new));
    rig.ram.commit(&mut rig.core);
    assert_eq!(check(&rig.core), vec![]);
}

#[test]
fn chained_and_self_range_clones_replay() {
    let mut rig = Rig::new();
    let cs = CS as u64;
    let a = attrs(3);
    let c = &mut rig.core;
    let x = c.create(ROOT, b"x", a).unwrap();
    let y = c.create(ROOT, b"y", a).unwrap();
    let z = c.create(ROOT, b"z", a).unwrap();
    for (f, seed) in [(x, 1), (y, 2), (z, 3)] {
        c.write(&mut rig.ram, f, 0, &bytes(seed, 3 * CS as usize))
            .unwrap();
    }
    let base = c.snapshot("base", 0, 1).unwrap();
    // x's first cluster goes to y, then z's replaces it in x; x shifts within itself.
    c.clone_range(x, 0, y, 0, cs).unwrap();
    c.clone_range(z, 0, x, 0, cs).unwrap();
    c.clone_range(x, cs, x, 2 * cs, cs).unwrap();
    c.clone_range(x, 0, x, cs, cs).unwrap();
    let newer = c.snapshot("newer", 0, 2).unwrap();
    let (ta, tb) = (
        c.snapshot_root(base).unwrap(),
        c.snapshot_root(newer).unwrap(),
    );
    rig.replay(&ta, &tb, ROOT, "/");
}
