//! The namespace of a loaded store: its operations on the owner reactor, for RPC and the C
//! ABI. Control threads call these and wait ([`super::io::blocking`]); nothing here is on a
//! volume's data path.
//!
//! **Turns.** Namespace operations on a store take turns on its owner (a queue, no lock): a
//! file operation that reads, changes metadata and writes across several I/O waits sees no
//! other namespace change in between.
//!
//! **File data.** The core's file operations ([`Core::write`], [`Core::truncate`],
//! [`Core::punch`]) are synchronous over [`Data`]. On a reactor they run in three steps: read
//! the clusters the operation may read (those it touches that are mapped now), run it against
//! those bytes while recording what it writes (whole clusters), then write them. New clusters
//! are in the tree before their bytes land, so the writes count as unready ([`begin_unready`]):
//! no commit makes such an extent durable first. The I/O counts itself in the store's grace
//! period, so a cluster freed meanwhile is not handed out under it.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use super::core::Core;
use super::io::{self, blocking, Op};
use super::namespace::{self, Data};
use super::owner::{self, Owner};
use super::tree::Tree;
use super::{Error, Result, Store};

/// A file operation that writes.
#[derive(Debug, Clone)]
pub enum FileChange {
    Write { off: u64, data: Vec<u8> },
    Truncate { size: u64 },
    Punch { off: u64, len: u64 },
}

/// Serves the clusters read beforehand and records whole-cluster writes.
struct Staged {
    cs: u64,
    read: HashMap<u64, Vec<u8>>,
    written: BTreeMap<u64, Vec<u8>>,
}

impl Data for Staged {
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let (c, within) = (offset / self.cs, (offset % self.cs) as usize);
        let img = self
            .written
            .get(&c)
            .or_else(|| self.read.get(&c))
            .ok_or_else(|| Error::Invalid(format!("cluster {c} changed while it was read")))?;
        buf.copy_from_slice(&img[within..within + buf.len()]);
        Ok(())
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let (c, within) = (offset / self.cs, (offset % self.cs) as usize);
        if within == 0 && data.len() as u64 == self.cs {
            self.written.insert(c, data.to_vec());
            return Ok(());
        }
        let img = match self.written.get_mut(&c) {
            Some(img) => img,
            None => {
                let base = self.read.get(&c).cloned().ok_or_else(|| {
                    Error::Invalid(format!("cluster {c} changed while it was read"))
                })?;
                self.written.entry(c).or_insert(base)
            }
        };
        img[within..within + data.len()].copy_from_slice(data);
        Ok(())
    }
}

/// Ends a namespace turn.
type TurnDone = Box<dyn FnOnce()>;
/// Work done in a turn; it calls the [`TurnDone`] it is given when the turn ends.
type Turn = Box<dyn FnOnce(TurnDone)>;

/// Run `f` in the store's next namespace turn.
pub(super) fn take_turn(o: &Rc<Owner>, f: Turn) {
    let o2 = Rc::clone(o);
    o.ns_queue.borrow_mut().push_back(Box::new(move || {
        o2.ns_busy.set(true);
        let o3 = Rc::clone(&o2);
        f(Box::new(move || {
            o3.ns_busy.set(false);
            drain(&o3);
        }));
    }));
    drain(o);
}

/// Start queued turns while none is under way. A turn that ends inside this loop only marks
/// itself done, and the loop starts the next: the stack does not grow with the queue.
fn drain(o: &Rc<Owner>) {
    if o.ns_draining.replace(true) {
        return;
    }
    while !o.ns_busy.get() {
        let next = o.ns_queue.borrow_mut().pop_front();
        match next {
            Some(turn) => turn(),
            None => break,
        }
    }
    o.ns_draining.set(false);
}

/// The clusters of file `ino` in `root` that cover `[first, end)` and are mapped: (index,
/// cluster). A read's range is bounded by its buffer.
fn mapped(root: &Tree, ino: u64, first: u64, end: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for idx in first..end {
        if let Some(super::tree::Val::Extent { cluster, .. }) = namespace::inode_in(root, ino)
            .and_then(|i| super::tree::get(&i.extents, &super::core::extent_key(idx)))
        {
            if *cluster != 0 {
                out.push((idx, *cluster));
            }
        }
    }
    out
}

/// The cluster indexes a change may read or partly write.
fn touched(change: &FileChange, size: u64, cs: u64) -> Vec<u64> {
    match change {
        FileChange::Write { off, data } if !data.is_empty() && *off <= namespace::MAX_FILE => {
            let last = off
                .saturating_add(data.len() as u64 - 1)
                .min(namespace::MAX_FILE);
            (off / cs..=last / cs).collect()
        }
        FileChange::Truncate { size: to } if *to < size && to % cs != 0 => vec![to / cs],
        FileChange::Punch { off, len } => {
            let end = size.min(off.saturating_add(*len));
            let mut v = Vec::new();
            if *off < end && off % cs != 0 {
                v.push(off / cs);
            }
            if *off < end && end % cs != 0 {
                v.push(end / cs);
            }
            v
        }
        _ => Vec::new(),
    }
}

/// Read clusters `(index, cluster)` through the owner's channel, inside the grace period
/// `grace`, then call `then` with their bytes by cluster.
fn read_clusters(
    o: &Rc<Owner>,
    clusters: Vec<(u64, u64)>,
    then: impl FnOnce(Result<HashMap<u64, Vec<u8>>>) + 'static,
) {
    let cs = o.shared.cluster_size;
    let ops = clusters
        .iter()
        .map(|(_, c)| Op::Read {
            offset: c * cs,
            len: cs as usize,
        })
        .collect();
    io::run(o.ch.clone(), ops, move |r| {
        then(r.map(|bufs| clusters.into_iter().map(|(_, c)| c).zip(bufs).collect()))
    });
}

/// Answers a namespace call.
type Reply<R> = Box<dyn FnOnce(Result<R>) + Send>;

impl Store {
    /// Wait for `f` to run on the owner in the store's next namespace turn; it answers through
    /// its [`Reply`] and ends the turn with its [`TurnDone`].
    fn in_turn<R: Send + 'static>(
        &self,
        f: impl FnOnce(Rc<Owner>, TurnDone, Reply<R>) + Send + 'static,
    ) -> Result<R> {
        let uuid = self.0.uuid;
        blocking(&self.0.messenger, self.0.owner, move |reply: Reply<R>| {
            let o = match owner::owner_of(uuid) {
                Ok(o) => o,
                Err(e) => return reply(Err(e)),
            };
            let o2 = Rc::clone(&o);
            take_turn(
                &o,
                Box::new(move |done| {
                    if o2.closing.get() {
                        done();
                        return reply(Err(Error::Failed("the store is being unloaded".into())));
                    }
                    f(o2, done, reply)
                }),
            );
        })?
    }

    /// A namespace change on the owner, in its turn; answered once durable.
    pub fn ns_change<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Core) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        self.in_turn(move |o, done, reply| {
            let r = f(&mut o.core.borrow_mut());
            // The commit starts before the turn ends, so whatever comes next in turn (an
            // unload, say) finds it under way.
            owner::commit(&o, Box::new(move |c| reply(c.and(r))));
            done();
        })
    }

    /// Read the namespace on the owner, in its turn.
    pub fn ns_read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Core) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        self.in_turn(move |o, done, reply| {
            let r = f(&o.core.borrow());
            done();
            reply(r);
        })
    }

    /// Change the data of the file at `path` (see the module).
    pub fn change_file(&self, path: &str, change: FileChange) -> Result<()> {
        let path = path.to_owned();
        self.in_turn(move |o, done, reply| change_file(o, path, change, done, reply))
    }

    /// Read `len` bytes at `off` of the file at `path`, live or in `snapshot`; short at the
    /// end of the file.
    pub fn read_file(
        &self,
        snapshot: Option<&str>,
        path: &str,
        off: u64,
        len: u64,
    ) -> Result<Vec<u8>> {
        let (path, snapshot) = (path.to_owned(), snapshot.map(str::to_owned));
        self.in_turn(move |o2, done, reply| {
            let found = (|| {
                let c = o2.core.borrow();
                let root = c.image(snapshot.as_deref())?;
                let ino = namespace::resolve_in(&root, path.as_bytes())?;
                let st = namespace::stat_in(&root, ino)?;
                if snapshot.is_none() && st.typ == super::tree::InodeType::Volume {
                    // Its bdev writes in place and prepares clusters on its own.
                    return super::posix(
                        libc::EBUSY,
                        "a live volume is read through its bdev (or read a snapshot)",
                    );
                }
                let size = st.size;
                let cs = c.cluster_size();
                let end = size.min(off.saturating_add(len));
                let clusters = if off < end {
                    mapped(&root, ino, off / cs, end.div_ceil(cs))
                } else {
                    Vec::new()
                };
                Ok((root, ino, clusters))
            })();
            let (root, ino, clusters) = match found {
                Ok(f) => f,
                Err(e) => {
                    done();
                    return reply(Err(e));
                }
            };
            let me = o2.shared.owner;
            let grace = o2.shared.enter_io(me);
            let o3 = Rc::clone(&o2);
            read_clusters(&o2, clusters, move |r| {
                let cs = o3.shared.cluster_size;
                let out = r.and_then(|read| {
                    let mut staged = Staged {
                        cs,
                        read,
                        written: BTreeMap::new(),
                    };
                    namespace::read_in(&root, cs, &mut staged, ino, off, len)
                });
                drop(root);
                o3.shared.exit_io(me, grace);
                done();
                reply(out);
            });
        })
    }
}

fn change_file(o: Rc<Owner>, path: String, change: FileChange, done: TurnDone, reply: Reply<()>) {
    let found = (|| {
        let c = o.core.borrow();
        let ino = c.resolve(path.as_bytes())?;
        let size = c.stat(ino)?.size;
        let cs = c.cluster_size();
        let clusters: Vec<(u64, u64)> = touched(&change, size, cs)
            .into_iter()
            .filter_map(|idx| c.extent(ino, idx).map(|cl| (idx, cl)))
            .collect();
        Ok((ino, clusters))
    })();
    let (ino, clusters) = match found {
        Ok(f) => f,
        Err(e) => {
            done();
            return reply(Err(e));
        }
    };
    let me = o.shared.owner;
    let grace = o.shared.enter_io(me);
    let o2 = Rc::clone(&o);
    read_clusters(&o, clusters, move |r| match r {
        Err(e) => {
            o2.shared.exit_io(me, grace);
            done();
            reply(Err(e));
        }
        Ok(read) => staged_change(o2, ino, change, read, (me, grace), done, reply),
    });
}

/// The change against the clusters read, then its writes, then a commit.
fn staged_change(
    o: Rc<Owner>,
    ino: u64,
    change: FileChange,
    read: HashMap<u64, Vec<u8>>,
    grace: (crate::reactor::ReactorId, u64),
    done: TurnDone,
    reply: Reply<()>,
) {
    if !owner::begin_unready(&o) {
        let o2 = Rc::clone(&o);
        return owner::gate(
            &o,
            Box::new(move || staged_change(o2, ino, change, read, grace, done, reply)),
        );
    }
    let cs = o.shared.cluster_size;
    let mut staged = Staged {
        cs,
        read,
        written: BTreeMap::new(),
    };
    let r = {
        let mut c = o.core.borrow_mut();
        match &change {
            FileChange::Write { off, data } => c.write(&mut staged, ino, *off, data),
            FileChange::Truncate { size } => c.truncate(&mut staged, ino, *size),
            FileChange::Punch { off, len } => c.punch(&mut staged, ino, *off, *len),
        }
    };
    let ops: Vec<Op> = staged
        .written
        .into_iter()
        .map(|(c, data)| Op::Write {
            offset: c * cs,
            data,
        })
        .collect();
    let o2 = Rc::clone(&o);
    io::run(o.ch.clone(), ops, move |w| {
        if let Err(e) = &w {
            // The tree names clusters whose bytes did not land: the store stops taking
            // changes, and loads again at its last commit.
            owner::fail(&o2, Vec::new(), e.clone());
        }
        let r = r.and(w.map(|_| ()));
        owner::commit(&o2, Box::new(move |c| reply(r.and(c))));
        owner::end_unready(&o2);
        o2.shared.exit_io(grace.0, grace.1);
        done();
    });
}
