//! A store at run time: the [`Store`] handle control threads hold, and the state its owner
//! reactor keeps: the [`Core`], the base channel, group commit, and the preparation of clusters
//! for first writes and copy-on-write.
//!
//! **Ownership.** Every change to the store's metadata runs on the owner reactor, one at a
//! time, so none takes a lock. Control threads send a closure there and wait for its answer
//! ([`super::io::blocking`]); volume channels on any reactor send their first-write and unmap
//! requests there and are answered by a message back.
//!
//! **Group commit.** A change is answered once a commit containing it is durable. While a
//! commit is in flight, changes gather for the next one, which then writes them all with one
//! superblock write: nodes and table pages, flush, superblock, flush.
//!
//! **Data before the extent that names it.** A first write's new cluster is in the tree from
//! the moment it is allocated, but is zeroed or copied afterwards. A commit does not start
//! while any such cluster's I/O is in flight ([`begin_unready`]); new preparations wait behind
//! a commit that waits, so it cannot starve. So no durable extent ever names a cluster that
//! still holds a freed cluster's old bytes.
//!
//! **Snapshots and in-flight writes.** A volume writes in place only into clusters stamped with
//! the current snapshot epoch. Each write counts itself in per-reactor counters for the epoch it
//! saw; a snapshot moves the epoch and waits until the old epoch's counters drain. So a
//! snapshot is answered only once every write begun before it has landed (in it), and no write
//! begun after it can change its clusters: those go to the owner and are copied first.
//!
//! The registry of loaded stores is behind a mutex: control path only, no I/O touches it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_utils::CachePadded;

use super::check::{self, Problem};
use super::core::{Core, Diff, Prep, SnapInfo, VolumeInfo};
use super::io::{self, blocking, Op};
use super::volume::Volume;
use super::{format, Error, Result};
use crate::bdev::{self, Bdev, Channel, Desc};
use crate::reactor::{self, Messenger, ReactorId, ReactorLocal, MAX_REACTORS};

/// What the store shares with every reactor.
pub(crate) struct Shared {
    pub name: String,
    pub uuid: u128,
    pub base: Bdev,
    pub desc: Desc,
    pub owner: ReactorId,
    pub messenger: Messenger,
    pub cluster_size: u64,
    /// The snapshot epoch (see [`super::map`]).
    pub epoch: AtomicU64,
    /// The grace period volume I/O counts itself in (see [`Shared::enter_io`]).
    grace: AtomicU64,
    /// Volume I/Os in flight per reactor, by the parity of the grace period they began in.
    in_flight: Box<[[CachePadded<AtomicU64>; 2]]>,
    pub failed: AtomicBool,
}

impl Shared {
    /// A volume I/O begins: count it in the current grace period, which it returns. The count
    /// is taken before the period is read again, so a move of the period in between either
    /// sees the count or is seen by the retry. `reactor` (the caller's) picks the counters, so
    /// each reactor writes only its own cache line.
    ///
    /// Two waits rely on it ([`quiesce`]): a snapshot moves the snapshot epoch, then the grace
    /// period, and waits for the old period to drain, so every write that could have seen the
    /// old epoch has landed before the snapshot is answered; and clusters a commit freed are
    /// handed out again only after the period that began before their unmapping drained, so no
    /// read or write still in flight can touch a cluster that belongs to someone else.
    pub fn enter_io(&self, reactor: ReactorId) -> u64 {
        let r = reactor.0 as usize % MAX_REACTORS;
        loop {
            let g = self.grace.load(Ordering::SeqCst);
            self.in_flight[r][(g & 1) as usize].fetch_add(1, Ordering::SeqCst);
            if self.grace.load(Ordering::SeqCst) == g {
                return g;
            }
            self.in_flight[r][(g & 1) as usize].fetch_sub(1, Ordering::SeqCst);
        }
    }

    pub fn exit_io(&self, reactor: ReactorId, grace: u64) {
        let r = reactor.0 as usize % MAX_REACTORS;
        // Only this reactor writes its counters, so a load and a release store do: the owner
        // that sees the lower count also sees everything the I/O did before it.
        let c = &self.in_flight[r][(grace & 1) as usize];
        c.store(c.load(Ordering::Relaxed) - 1, Ordering::Release);
    }

    fn in_flight_in(&self, grace: u64) -> u64 {
        self.in_flight
            .iter()
            .map(|w| w[(grace & 1) as usize].load(Ordering::SeqCst))
            .sum()
    }
}

/// A store. Cheap to clone; every method is a control-path call that blocks until the owner
/// reactor has done the work and, for a change, made it durable.
#[derive(Clone)]
pub struct Store(pub(crate) Arc<Shared>);

/// Stores this process has loaded (control path).
static STORES: Mutex<Vec<Store>> = Mutex::new(Vec::new());

fn stores() -> std::sync::MutexGuard<'static, Vec<Store>> {
    STORES.lock().unwrap_or_else(|p| p.into_inner())
}

/// Owner state, by store UUID, on the owner reactor.
static OWNERS: ReactorLocal<RefCell<HashMap<u128, Rc<Owner>>>> =
    ReactorLocal::new(|| RefCell::new(HashMap::new()));

pub(crate) struct Owner {
    pub shared: Arc<Shared>,
    pub core: RefCell<Core>,
    pub(super) ch: Channel,
    commit: RefCell<CommitState>,
    preparing: RefCell<HashMap<(u64, u64), Rc<Preparing>>>,
    /// Volume bdevs by object id; snapshot bdevs by (snapshot, object).
    volumes: RefCell<HashMap<u64, (Bdev, Arc<Volume>)>>,
    snap_bdevs: RefCell<HashMap<(u64, u64), Bdev>>,
    /// Clusters being copied from (a copy-on-write in flight), with how many copies read each.
    copying: RefCell<HashMap<u64, u32>>,
    /// Waiting for the next grace period to drain ([`quiesce`]), and whether one is draining.
    grace_waiters: RefCell<Vec<Box<dyn FnOnce()>>>,
    grace_running: std::cell::Cell<bool>,
    /// Namespace operations take turns ([`super::ns_owner`]): whether one is under way, and
    /// those waiting.
    pub(super) ns_busy: std::cell::Cell<bool>,
    pub(super) ns_queue: RefCell<std::collections::VecDeque<Box<dyn FnOnce()>>>,
    /// Whether a loop is running queued turns (so that a turn ending inside one does not
    /// start another on top of the stack).
    pub(super) ns_draining: std::cell::Cell<bool>,
    /// Set by unload and destroy: turns not yet begun are refused.
    pub(super) closing: std::cell::Cell<bool>,
}

pub(super) type Waiter = Box<dyn FnOnce(Result<()>)>;
/// Hears which cluster a write may go to.
type ClusterWaiter = Box<dyn FnOnce(Result<u64>)>;
/// Hears where each prepared cluster is: (cluster index, cluster).
pub(crate) type Prepared = Box<dyn FnOnce(Result<Vec<(u64, u64)>>)>;

#[derive(Default)]
struct CommitState {
    waiters: Vec<Waiter>,
    running: bool,
    commits: u64,
    /// Clusters in the tree whose zeroing or copy is in flight.
    unready: usize,
    /// A commit waits for `unready` to reach 0; preparations wait in `gated` meanwhile.
    held: bool,
    gated: Vec<Box<dyn FnOnce()>>,
}

/// A cluster being prepared for a write; later requests for it wait here.
struct Preparing {
    waiters: RefCell<Vec<ClusterWaiter>>,
}

/// Options for a new store (`bdev_lvol_create_lvstore`).
pub struct CreateOpts {
    pub base: String,
    pub name: String,
    pub cluster_size: u32,
}

pub(super) fn owner_of(uuid: u128) -> Result<Rc<Owner>> {
    OWNERS
        .with(|m| m.borrow().get(&uuid).cloned())
        .map_err(|_| Error::Invalid("not on a reactor".into()))?
        .ok_or_else(|| Error::NotFound("the store on this reactor".into()))
}

impl Store {
    /// Format `opts.base` as a new store and load it, owned by reactor `owner`.
    pub fn create(opts: &CreateOpts, messenger: &Messenger, owner: ReactorId) -> Result<Store> {
        format::valid_cluster_size(opts.cluster_size)
            .then_some(())
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "cluster size {}: a power of two from 4 KiB to 1 MiB",
                    opts.cluster_size
                ))
            })?;
        if stores().iter().any(|s| s.0.name == opts.name) {
            return Err(Error::Exists(opts.name.clone()));
        }
        let (desc, base) = open_base(&opts.base, &opts.name)?;
        let uuid = bdev::random_uuid();
        let made = Core::format(base.size_bytes(), opts.cluster_size, &opts.name, uuid);
        let (mut core, frozen) = match made {
            Ok(m) => m,
            Err(e) => {
                base.release_claim();
                return Err(e);
            }
        };
        let desc = Arc::new(desc);
        let gen = frozen.gen;
        let ops = commit_ops(frozen);
        let d = Arc::clone(&desc);
        let written = blocking(messenger, owner, move |reply| {
            let run = |ops: Vec<Vec<Op>>| -> Result<()> {
                let ch = d.channel()?;
                run_phases(ch, ops, Box::new(reply));
                Ok(())
            };
            if let Err(e) = run(ops) {
                tracing::error!("formatting: {e}");
            }
        })
        .and_then(|r| r);
        if let Err(e) = written {
            base.release_claim();
            return Err(e);
        }
        core.commit_done(gen);
        let desc = Arc::try_unwrap(desc).unwrap_or_else(|_| unreachable!("the batch is done"));
        install(core, desc, base, messenger, owner)
    }

    /// Load the store on bdev `base`, owned by reactor `owner`.
    pub fn load(base: &str, messenger: &Messenger, owner: ReactorId) -> Result<Store> {
        let (desc, bdev) = open_base(base, base)?;
        let desc = Arc::new(desc);
        let d = Arc::clone(&desc);
        let m = messenger.clone();
        let mut read = move |blocks: &[u64]| -> Result<Vec<Vec<u8>>> {
            let mut out = Vec::with_capacity(blocks.len());
            for chunk in blocks.chunks(4096) {
                let ops: Vec<Op> = chunk
                    .iter()
                    .map(|b| Op::Read {
                        offset: b * format::BLOCK as u64,
                        len: format::BLOCK,
                    })
                    .collect();
                let d = Arc::clone(&d);
                let got = blocking(&m, owner, move |reply| match d.channel() {
                    Ok(ch) => io::run(ch, ops, reply),
                    Err(e) => reply(Err(e.into())),
                })??;
                out.extend(got);
            }
            Ok(out)
        };
        let core = match Core::load(bdev.size_bytes(), &mut read) {
            Ok(c) => c,
            Err(e) => {
                bdev.release_claim();
                return Err(e);
            }
        };
        drop(read);
        if stores()
            .iter()
            .any(|s| s.0.name == core.name || s.0.uuid == core.uuid)
        {
            bdev.release_claim();
            return Err(Error::Exists(core.name.clone()));
        }
        let desc = Arc::try_unwrap(desc).unwrap_or_else(|_| unreachable!("loading is done"));
        install(core, desc, bdev, messenger, owner)
    }

    pub fn find(name_or_uuid: &str) -> Result<Store> {
        let uuid = bdev::parse_uuid(name_or_uuid);
        stores()
            .iter()
            .find(|s| s.0.name == name_or_uuid || Some(s.0.uuid) == uuid)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("store {name_or_uuid:?}")))
    }

    pub fn find_by_base(base: &str) -> Option<Store> {
        stores().iter().find(|s| s.0.base.name() == base).cloned()
    }

    pub fn list() -> Vec<Store> {
        stores().clone()
    }

    pub fn name(&self) -> &str {
        &self.0.name
    }

    pub fn uuid(&self) -> u128 {
        self.0.uuid
    }

    pub fn base(&self) -> &Bdev {
        &self.0.base
    }

    pub fn cluster_size(&self) -> u64 {
        self.0.cluster_size
    }

    /// Run `f` on the owner, then commit if it changed anything; answer once durable.
    fn exec<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Rc<Owner>) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let uuid = self.0.uuid;
        blocking(&self.0.messenger, self.0.owner, move |reply| {
            let o = match owner_of(uuid) {
                Ok(o) => o,
                Err(e) => return reply(Err(e)),
            };
            match f(&o) {
                Ok(r) => commit(&o, Box::new(move |c| reply(c.map(|()| r)))),
                Err(e) => {
                    // A refused change may still have left something to commit (a failed
                    // step after a successful one); commit it, answer with the refusal.
                    commit(&o, Box::new(move |_| reply(Err(e))));
                }
            }
        })?
    }

    /// Read-only access to the core on the owner.
    pub(crate) fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Owner) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let uuid = self.0.uuid;
        blocking(&self.0.messenger, self.0.owner, move |reply| {
            reply(owner_of(uuid).and_then(|o| f(&o)))
        })?
    }

    /// A volume of `size` bytes (a multiple of 4096), exported as bdev `<store>/<name>`.
    /// Returns the bdev.
    pub fn create_volume(&self, name: &str, size: u64, thick: bool) -> Result<Bdev> {
        let name = name.to_owned();
        self.exec(move |o| {
            let uuid = random_uuid()?;
            let obj = o
                .core
                .borrow_mut()
                .create_volume(&name, size, thick, uuid)?;
            o.add_volume_bdev(obj)
        })
    }

    pub fn resize_volume(&self, name: &str, size: u64) -> Result<()> {
        let name = name.to_owned();
        self.exec(move |o| {
            let obj = o.core.borrow().volume_named(&name)?;
            let map = o.core.borrow().extent_births(None, obj)?;
            o.core.borrow_mut().resize_volume(obj, size)?;
            let n = o.core.borrow().clusters_for(size);
            if let Some((bdev, vol)) = o.volumes.borrow().get(&obj) {
                for &(idx, _, _) in map.iter().filter(|(i, _, _)| *i >= n) {
                    vol.map.set(idx, 0, 0);
                }
                bdev.resize(size / bdev.block_size() as u64)?;
            }
            Ok(())
        })
    }

    pub fn delete_volume(&self, name: &str) -> Result<()> {
        let name = name.to_owned();
        self.exec(move |o| {
            let obj = o.core.borrow().volume_named(&name)?;
            if let Some((bdev, _)) = o.volumes.borrow_mut().remove(&obj) {
                bdev::delete(bdev.name())?;
            }
            o.core.borrow_mut().delete_volume(obj)
        })
    }

    pub fn volumes(&self) -> Result<Vec<VolumeInfo>> {
        self.read(|o| Ok(o.core.borrow().volumes()))
    }

    pub fn snapshots(&self) -> Result<Vec<SnapInfo>> {
        self.read(|o| Ok(o.core.borrow().snapshots()))
    }

    /// (total clusters, free clusters, clusters reserved for thick volumes).
    pub fn space(&self) -> Result<(u64, u64, u64)> {
        self.read(|o| {
            let c = o.core.borrow();
            Ok((
                c.layout.total_clusters - c.layout.first_data_cluster,
                c.alloc.free_clusters(),
                c.alloc.reserved,
            ))
        })
    }

    /// Snapshot the whole store as `name`. `origin` names the volume it is taken for (SPDK's
    /// per-volume snapshot), which then gets a read-only bdev `<store>/<name>`.
    pub fn snapshot(&self, name: &str, origin: Option<&str>) -> Result<u64> {
        let name = name.to_owned();
        let origin = origin.map(str::to_owned);
        let uuid = self.0.uuid;
        blocking(&self.0.messenger, self.0.owner, move |reply| {
            let o = match owner_of(uuid) {
                Ok(o) => o,
                Err(e) => return reply(Err(e)),
            };
            let taken = (|| {
                let origin_obj = match &origin {
                    Some(v) => o.core.borrow().volume_named(v)?,
                    None => 0,
                };
                let id = o
                    .core
                    .borrow_mut()
                    .snapshot(&name, origin_obj, random_uuid()?)?;
                Ok((id, origin_obj))
            })();
            let (id, origin_obj) = match taken {
                Ok(t) => t,
                Err(e) => return reply(Err(e)),
            };
            let old = o.shared.epoch.fetch_add(1, Ordering::SeqCst);
            if (old + 1) & super::map::EPOCH_MASK == 0 {
                // The maps keep 24 bits of the epoch: at the wrap, stamp every entry with the
                // old epoch so that none can pass for the new one.
                o.restamp(old);
            }
            let o2 = Rc::clone(&o);
            quiesce(
                &o,
                Box::new(move || {
                    let o3 = Rc::clone(&o2);
                    commit(
                        &o2,
                        Box::new(move |r| {
                            let r = r.and_then(|()| {
                                if origin_obj != 0 {
                                    o3.add_snapshot_bdev(id, origin_obj, &name)?;
                                }
                                Ok(id)
                            });
                            reply(r)
                        }),
                    )
                }),
            );
        })?
    }

    pub fn delete_snapshot(&self, name: &str) -> Result<()> {
        let name = name.to_owned();
        self.exec(move |o| {
            let id = o.core.borrow().snapshot_named(&name)?;
            let gone: Vec<(u64, u64)> = o
                .snap_bdevs
                .borrow()
                .keys()
                .filter(|(s, _)| *s == id)
                .copied()
                .collect();
            for key in gone {
                if let Some(b) = o.snap_bdevs.borrow_mut().remove(&key) {
                    bdev::delete(b.name())?;
                }
            }
            o.core.borrow_mut().delete_snapshot(id)
        })
    }

    /// A writable clone named `name` of volume `volume` (default: the volume the snapshot was
    /// taken for) as it is in snapshot `snapshot`.
    pub fn clone_volume(&self, snapshot: &str, volume: Option<&str>, name: &str) -> Result<Bdev> {
        let (snapshot, volume, name) = (
            snapshot.to_owned(),
            volume.map(str::to_owned),
            name.to_owned(),
        );
        self.exec(move |o| {
            let id = o.core.borrow().snapshot_named(&snapshot)?;
            let obj = match &volume {
                Some(v) => {
                    o.core
                        .borrow()
                        .snapshot_volumes(id)?
                        .into_iter()
                        .find(|i| &i.name == v)
                        .ok_or_else(|| {
                            Error::NotFound(format!("volume {v:?} in snapshot {snapshot:?}"))
                        })?
                        .obj
                }
                None => match o.core.borrow().snapshot_info(id)?.origin_vol {
                    0 => {
                        return Err(Error::Invalid(format!(
                            "snapshot {snapshot:?} is of the whole store: name the volume to clone"
                        )))
                    }
                    v => v,
                },
            };
            let new = o
                .core
                .borrow_mut()
                .clone_volume(id, obj, &name, random_uuid()?)?;
            o.add_volume_bdev(new)
        })
    }

    /// A read-only bdev `<store>/<snapshot>/<volume>` showing `volume` as it is in `snapshot`.
    pub fn expose_snapshot(&self, snapshot: &str, volume: &str) -> Result<Bdev> {
        let (snapshot, volume) = (snapshot.to_owned(), volume.to_owned());
        self.exec(move |o| {
            let id = o.core.borrow().snapshot_named(&snapshot)?;
            let obj = o
                .core
                .borrow()
                .snapshot_volumes(id)?
                .into_iter()
                .find(|i| i.name == volume)
                .ok_or_else(|| {
                    Error::NotFound(format!("volume {volume:?} in snapshot {snapshot:?}"))
                })?
                .obj;
            o.add_snapshot_bdev(id, obj, &format!("{snapshot}/{volume}"))
        })
    }

    /// What differs in `volume` from snapshot `from` (`None`: from nothing, so every mapped
    /// cluster) to snapshot `to` (`None`: the live volume).
    pub fn block_diff(&self, from: Option<&str>, to: Option<&str>, volume: &str) -> Result<Diff> {
        let (from, to, volume) = (
            from.map(str::to_owned),
            to.map(str::to_owned),
            volume.to_owned(),
        );
        self.read(move |o| {
            let c = o.core.borrow();
            let from = from.map(|f| c.snapshot_named(&f)).transpose()?;
            let to = to.map(|t| c.snapshot_named(&t)).transpose()?;
            c.block_diff(from, to, &volume)
        })
    }

    /// Several changes as one: `f` runs on the owner with the store's core, and everything it
    /// changes lands in the same commit (replication keeps its state and its dirty region log
    /// consistent with each other this way). Volume bdevs are not made or removed here.
    pub fn transact<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Core) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        self.exec(move |o| f(&mut o.core.borrow_mut()))
    }

    /// Keep a small metadata object durably in the store.
    pub fn put_object(&self, name: &str, data: Vec<u8>) -> Result<()> {
        let name = name.to_owned();
        self.exec(move |o| o.core.borrow_mut().put_object(&name, &data))
    }

    pub fn get_object(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let name = name.to_owned();
        self.read(move |o| Ok(o.core.borrow().get_object(&name)))
    }

    pub fn delete_object(&self, name: &str) -> Result<()> {
        let name = name.to_owned();
        self.exec(move |o| o.core.borrow_mut().delete_object(&name))
    }

    /// The full consistency check of the store as it is in memory now.
    pub fn check(&self) -> Result<Vec<Problem>> {
        self.read(|o| Ok(check::check(&o.core.borrow())))
    }

    /// Commits made since the store was loaded.
    pub fn commits(&self) -> Result<u64> {
        self.read(|o| Ok(o.commit.borrow().commits))
    }

    /// Stop serving: delete the store's bdevs, let in-flight commits finish, drop the owner
    /// state and release the base. The store stays on disk.
    pub fn unload(self) -> Result<()> {
        let uuid = self.0.uuid;
        let done = blocking(&self.0.messenger, self.0.owner, move |reply| {
            let Ok(o) = owner_of(uuid) else {
                return reply(Ok(()));
            };
            // In a namespace turn: one under way finishes first, and none begins after.
            let o2 = Rc::clone(&o);
            super::ns_owner::take_turn(
                &o,
                Box::new(move |turn_done| {
                    o2.closing.set(true);
                    for (_, (b, _)) in o2.volumes.borrow_mut().drain() {
                        let _ = bdev::delete(b.name());
                    }
                    for (_, b) in o2.snap_bdevs.borrow_mut().drain() {
                        let _ = bdev::delete(b.name());
                    }
                    let o3 = Rc::clone(&o2);
                    commit(
                        &o2,
                        Box::new(move |r| {
                            let _ = OWNERS.with(|m| m.borrow_mut().remove(&uuid));
                            turn_done();
                            drop(o3);
                            reply(r)
                        }),
                    );
                }),
            );
        });
        // The store is let go of even when its last commit failed: loading it again finds its
        // last durable state.
        stores().retain(|s| s.0.uuid != uuid);
        self.0.base.release_claim();
        done?
    }

    /// Delete the store: its volumes and snapshots go, and both superblocks are cleared so
    /// nothing loads it again.
    pub fn destroy(self) -> Result<()> {
        let uuid = self.0.uuid;
        let cleared = blocking(&self.0.messenger, self.0.owner, move |reply| {
            let Ok(o) = owner_of(uuid) else {
                return reply(Ok(()));
            };
            // In a namespace turn, after every commit begun: nothing writes a superblock once
            // they are cleared.
            let o2 = Rc::clone(&o);
            super::ns_owner::take_turn(
                &o,
                Box::new(move |turn_done| {
                    o2.closing.set(true);
                    let o3 = Rc::clone(&o2);
                    commit(
                        &o2,
                        Box::new(move |_| {
                            let ops = vec![
                                vec![
                                    Op::Write {
                                        offset: 0,
                                        data: vec![0; format::BLOCK],
                                    },
                                    Op::Write {
                                        offset: format::BLOCK as u64,
                                        data: vec![0; format::BLOCK],
                                    },
                                ],
                                vec![Op::Flush],
                            ];
                            run_phases(
                                o3.ch.clone(),
                                ops,
                                Box::new(move |r| {
                                    turn_done();
                                    reply(r)
                                }),
                            );
                        }),
                    );
                }),
            );
        });
        // Unload first, whether or not clearing worked, so the bdevs go either way.
        let unloaded = self.unload();
        cleared??;
        unloaded
    }
}

fn random_uuid() -> Result<u128> {
    Ok(bdev::random_uuid())
}

fn open_base(base: &str, claimer: &str) -> Result<(Desc, Bdev)> {
    let bdev = bdev::get(base).ok_or_else(|| Error::NotFound(format!("bdev {base:?}")))?;
    if format::BLOCK as u32 % bdev.block_size() != 0 {
        return Err(Error::Invalid(format!(
            "{base}: block size {} does not divide 4096",
            bdev.block_size()
        )));
    }
    bdev.claim(&format!("lvstore {claimer}"))?;
    match bdev::open(base, true, None) {
        Ok(d) => Ok((d, bdev)),
        Err(e) => {
            bdev.release_claim();
            Err(e.into())
        }
    }
}

fn install(
    core: Core,
    desc: Desc,
    base: Bdev,
    messenger: &Messenger,
    owner: ReactorId,
) -> Result<Store> {
    let shared = Arc::new(Shared {
        name: core.name.clone(),
        uuid: core.uuid,
        cluster_size: core.cluster_size(),
        epoch: AtomicU64::new(core.snap_epoch),
        base: base.clone(),
        desc,
        owner,
        messenger: messenger.clone(),
        grace: AtomicU64::new(0),
        in_flight: (0..MAX_REACTORS).map(|_| Default::default()).collect(),
        failed: AtomicBool::new(false),
    });
    let sh = Arc::clone(&shared);
    let installed = blocking(messenger, owner, move |reply| {
        let made = (|| -> Result<()> {
            let ch = sh.desc.channel()?;
            let vols: Vec<u64> = core.volumes().iter().map(|v| v.obj).collect();
            let o = Rc::new(Owner {
                shared: Arc::clone(&sh),
                core: RefCell::new(core),
                ch,
                commit: Default::default(),
                preparing: Default::default(),
                volumes: Default::default(),
                snap_bdevs: Default::default(),
                copying: Default::default(),
                grace_waiters: Default::default(),
                grace_running: Default::default(),
                ns_busy: Default::default(),
                ns_queue: Default::default(),
                ns_draining: Default::default(),
                closing: Default::default(),
            });
            for obj in vols {
                o.add_volume_bdev(obj)?;
            }
            let taken_for: Vec<_> = o
                .core
                .borrow()
                .snapshots()
                .into_iter()
                .filter(|s| s.origin_vol != 0)
                .collect();
            for s in taken_for {
                // A volume's own snapshot (SPDK's kind) is a read-only bdev of that volume.
                o.add_snapshot_bdev(s.id, s.origin_vol, &s.name)?;
            }
            OWNERS
                .with(|m| m.borrow_mut().insert(sh.uuid, o))
                .map_err(|_| Error::Invalid("not on a reactor".into()))?;
            Ok(())
        })();
        reply(made)
    });
    match installed {
        Ok(Ok(())) => {
            let store = Store(shared);
            stores().push(store.clone());
            tracing::info!(store = store.name(), base = base.name(), "store loaded");
            Ok(store)
        }
        Ok(Err(e)) | Err(e) => {
            base.release_claim();
            Err(e)
        }
    }
}

/// A commit's steps: everything but the superblock, flush, the superblock, flush.
fn commit_ops(frozen: super::core::Frozen) -> Vec<Vec<Op>> {
    let bs = format::BLOCK as u64;
    vec![
        frozen
            .writes
            .into_iter()
            .map(|(b, data)| Op::Write {
                offset: b * bs,
                data,
            })
            .collect(),
        vec![Op::Flush],
        vec![Op::Write {
            offset: frozen.superblock.0 * bs,
            data: frozen.superblock.1,
        }],
        vec![Op::Flush],
    ]
}

/// Run batches one after another.
fn run_phases(ch: Channel, mut phases: Vec<Vec<Op>>, done: Box<dyn FnOnce(Result<()>)>) {
    if phases.is_empty() {
        return done(Ok(()));
    }
    let first = phases.remove(0);
    let ch2 = ch.clone();
    io::run(ch, first, move |r| match r {
        Ok(_) => run_phases(ch2, phases, done),
        Err(e) => done(Err(e)),
    });
}

/// On the owner: call `then` once no volume I/O begun before now is in flight (see
/// [`Shared::enter_io`]). One grace period is waited on at a time: callers that come while one
/// drains wait for the next, so the two parities never overlap and a drain cannot starve.
fn quiesce(o: &Rc<Owner>, then: Box<dyn FnOnce()>) {
    o.grace_waiters.borrow_mut().push(then);
    if !o.grace_running.replace(true) {
        next_grace(Rc::clone(o));
    }
}

fn next_grace(o: Rc<Owner>) {
    let batch = std::mem::take(&mut *o.grace_waiters.borrow_mut());
    if batch.is_empty() {
        o.grace_running.set(false);
        return;
    }
    let old = o.shared.grace.fetch_add(1, Ordering::SeqCst);
    wait_drained(o, old, batch);
}

fn wait_drained(o: Rc<Owner>, old: u64, batch: Vec<Box<dyn FnOnce()>>) {
    if o.shared.in_flight_in(old) == 0 {
        for then in batch {
            then();
        }
        return next_grace(o);
    }
    let retry = move || wait_drained(o, old, batch);
    if let Err(e) = reactor::set_timer(Duration::from_micros(100), retry) {
        tracing::error!("store: cannot wait for volume I/O to drain: {e}");
    }
}

/// Answer `then` once everything changed so far is durable.
pub(super) fn commit(o: &Rc<Owner>, then: Waiter) {
    if o.shared.failed.load(Ordering::Acquire) {
        return then(Err(Error::Failed("an earlier commit failed".into())));
    }
    let mut st = o.commit.borrow_mut();
    if !o.core.borrow().is_dirty() && !st.running {
        drop(st);
        return then(Ok(()));
    }
    st.waiters.push(then);
    if !st.running {
        drop(st);
        start_commit(o);
    }
}

/// A cluster is about to enter the tree before its data is written; `false` when a commit is
/// waiting for those already in flight, and the caller must wait in [`gate`] instead.
pub(super) fn begin_unready(o: &Rc<Owner>) -> bool {
    let mut st = o.commit.borrow_mut();
    if st.held {
        return false;
    }
    st.unready += 1;
    true
}

/// Run `f` once the commit that waits for unready clusters has started.
pub(super) fn gate(o: &Rc<Owner>, f: Box<dyn FnOnce()>) {
    o.commit.borrow_mut().gated.push(f);
}

/// The data of a cluster begun with [`begin_unready`] has landed (or failed).
pub(super) fn end_unready(o: &Rc<Owner>) {
    let (start, gated) = {
        let mut st = o.commit.borrow_mut();
        st.unready -= 1;
        if st.unready > 0 || !st.held {
            return;
        }
        st.held = false;
        (!st.running, std::mem::take(&mut st.gated))
    };
    if start {
        start_commit(o);
    }
    for f in gated {
        f();
    }
}

fn start_commit(o: &Rc<Owner>) {
    if o.shared.failed.load(Ordering::Acquire) {
        // A commit held for unready clusters whose I/O then failed: nothing more is written.
        let waiters = {
            let mut st = o.commit.borrow_mut();
            st.held = false;
            std::mem::take(&mut st.waiters)
        };
        for w in waiters {
            w(Err(Error::Failed("an earlier write failed".into())));
        }
        return;
    }
    let waiters = {
        let mut st = o.commit.borrow_mut();
        if st.unready > 0 {
            st.held = true;
            return;
        }
        st.running = true;
        std::mem::take(&mut st.waiters)
    };
    let frozen = o.core.borrow_mut().freeze();
    let frozen = match frozen {
        Ok(f) => f,
        Err(e) => return fail(o, waiters, e),
    };
    let gen = frozen.gen;
    let o2 = Rc::clone(o);
    run_phases(
        o.ch.clone(),
        commit_ops(frozen),
        Box::new(move |r| {
            if let Err(e) = r {
                return fail(&o2, waiters, e);
            }
            o2.core.borrow_mut().commit_durable(gen);
            // What the commit freed goes back once I/O that may still see it has drained.
            let o3 = Rc::clone(&o2);
            quiesce(
                &o2,
                Box::new(move || o3.core.borrow_mut().release_oldest_frees()),
            );
            let again = {
                let mut st = o2.commit.borrow_mut();
                st.commits += 1;
                st.running = false;
                !st.waiters.is_empty()
            };
            for w in waiters {
                w(Ok(()));
            }
            if again {
                start_commit(&o2);
            }
        }),
    );
}

/// A commit failed: what it held is not known to be durable, so the store takes no more
/// changes until it is loaded again (which finds the last durable commit).
pub(super) fn fail(o: &Rc<Owner>, waiters: Vec<Waiter>, e: Error) {
    tracing::error!(
        store = o.shared.name,
        "commit failed, the store stops taking changes: {e}"
    );
    o.shared.failed.store(true, Ordering::Release);
    let rest = {
        let mut st = o.commit.borrow_mut();
        st.running = false;
        std::mem::take(&mut st.waiters)
    };
    for w in waiters.into_iter().chain(rest) {
        w(Err(Error::Failed(e.to_string())));
    }
}

impl Owner {
    /// A copy from `from` has read it.
    fn release_copy_source(&self, from: u64) {
        let mut copying = self.copying.borrow_mut();
        if let Some(n) = copying.get_mut(&from) {
            *n -= 1;
            if *n == 0 {
                copying.remove(&from);
            }
        }
    }

    /// Stamp every live volume's map entries with `epoch`.
    fn restamp(&self, epoch: u64) {
        let core = self.core.borrow();
        for (obj, (_, vol)) in self.volumes.borrow().iter() {
            for (idx, cluster, _) in core.extent_births(None, *obj).unwrap_or_default() {
                vol.map.set(idx, cluster, epoch);
            }
        }
    }

    fn add_volume_bdev(self: &Rc<Self>, obj: u64) -> Result<Bdev> {
        let core = self.core.borrow();
        let info = core.volume_info(obj)?;
        let vol = Arc::new(Volume::new(Arc::clone(&self.shared), obj, None));
        // Every entry starts stamped with an old epoch: the first write to each cluster asks
        // the owner, whose reference counts know whether a snapshot or a clone shares it (a
        // clone of a deleted snapshot shares leaves with its parent that no generation shows).
        let stale = self.shared.epoch.load(Ordering::SeqCst).wrapping_sub(1);
        for (idx, cluster, _) in core.extent_births(None, obj)? {
            vol.map.set(idx, cluster, stale);
        }
        drop(core);
        let name = format!("{}/{}", self.shared.name, info.name);
        let bdev = vol.register(&name, info.uuid, info.size)?;
        self.volumes.borrow_mut().insert(obj, (bdev.clone(), vol));
        Ok(bdev)
    }

    fn add_snapshot_bdev(self: &Rc<Self>, snap: u64, obj: u64, name: &str) -> Result<Bdev> {
        if let Some(b) = self.snap_bdevs.borrow().get(&(snap, obj)) {
            return Ok(b.clone());
        }
        let core = self.core.borrow();
        let info = core
            .snapshot_volumes(snap)?
            .into_iter()
            .find(|v| v.obj == obj)
            .ok_or_else(|| Error::NotFound(format!("volume object {obj} in snapshot {snap}")))?;
        let vol = Arc::new(Volume::new(Arc::clone(&self.shared), obj, Some(snap)));
        for (idx, cluster, _) in core.extent_births(Some(snap), obj)? {
            vol.map.set(idx, cluster, 0);
        }
        let uuid = core.snapshot_info(snap)?.uuid ^ info.uuid;
        drop(core);
        let bdev = vol.register(&format!("{}/{}", self.shared.name, name), uuid, info.size)?;
        self.snap_bdevs
            .borrow_mut()
            .insert((snap, obj), bdev.clone());
        Ok(bdev)
    }
}

/// On the owner: make clusters `idxs` of volume `obj` ready for a write and answer with where
/// each is, once durable.
pub(crate) fn prepare(store: u128, obj: u64, idxs: Vec<u64>, reply: Prepared) {
    let o = match owner_of(store) {
        Ok(o) => o,
        Err(e) => return reply(Err(e)),
    };
    struct Gather {
        left: usize,
        out: Vec<(u64, u64)>,
        err: Option<Error>,
        reply: Option<Prepared>,
    }
    let g = Rc::new(RefCell::new(Gather {
        left: idxs.len(),
        out: Vec::with_capacity(idxs.len()),
        err: None,
        reply: Some(reply),
    }));
    for idx in idxs {
        let g = Rc::clone(&g);
        prepare_one(
            &o,
            obj,
            idx,
            Box::new(move |r| {
                let mut s = g.borrow_mut();
                match r {
                    Ok(c) => s.out.push((idx, c)),
                    Err(e) => {
                        s.err.get_or_insert(e);
                    }
                }
                s.left -= 1;
                if s.left == 0 {
                    let reply = s.reply.take().expect("answered once");
                    let r = match s.err.take() {
                        Some(e) => Err(e),
                        None => Ok(std::mem::take(&mut s.out)),
                    };
                    drop(s);
                    reply(r);
                }
            }),
        );
    }
}

fn prepare_one(o: &Rc<Owner>, obj: u64, idx: u64, done: Box<dyn FnOnce(Result<u64>)>) {
    if let Some(p) = o.preparing.borrow().get(&(obj, idx)) {
        return p.waiters.borrow_mut().push(done);
    }
    if o.shared.failed.load(Ordering::Acquire) {
        return done(Err(Error::Failed("an earlier commit failed".into())));
    }
    // A cluster being copied from may have just lost its last other reference; a write that
    // found it unshared now would change it under the copy. Such a write waits for the copy.
    let current = o.core.borrow().extent(obj, idx);
    if current.is_some_and(|c| o.copying.borrow().contains_key(&c)) {
        let o2 = Rc::clone(o);
        let retry = move || prepare_one(&o2, obj, idx, done);
        if let Err(e) = reactor::set_timer(Duration::from_micros(100), retry) {
            tracing::error!("store: cannot wait for a copy: {e}");
        }
        return;
    }
    if !begin_unready(o) {
        let o2 = Rc::clone(o);
        return gate(o, Box::new(move || prepare_one(&o2, obj, idx, done)));
    }
    let planned = o.core.borrow_mut().prepare_write(obj, idx);
    let prep = match planned {
        Ok(p) => p,
        Err(e) => {
            end_unready(o);
            return done(Err(e));
        }
    };
    if let Prep::Copy { from, .. } = prep {
        *o.copying.borrow_mut().entry(from).or_default() += 1;
    }
    // The epoch the cluster is the volume's own in: a snapshot taken from here on shares it.
    let epoch = o.shared.epoch.load(Ordering::SeqCst);
    let cluster = prep.cluster();
    let entry = Rc::new(Preparing {
        waiters: RefCell::new(vec![done]),
    });
    o.preparing
        .borrow_mut()
        .insert((obj, idx), Rc::clone(&entry));
    let cs = o.shared.cluster_size;
    let o2 = Rc::clone(o);
    // Zeroed or copied: commit the new extent, and only once it is durable let writes go in
    // (the map says so) and answer those waiting.
    let finish = move |r: Result<()>| {
        if let Err(e) = r {
            if let Prep::Copy { from, .. } = prep {
                o2.release_copy_source(from);
            }
            // The extent names a cluster that was not made ready: the store stops taking
            // changes, and loading it again finds the last commit, without that extent.
            let waiters = std::mem::take(&mut *entry.waiters.borrow_mut());
            fail(&o2, Vec::new(), e.clone());
            end_unready(&o2);
            o2.preparing.borrow_mut().remove(&(obj, idx));
            for w in waiters {
                w(Err(e.clone()));
            }
            return;
        }
        if let Prep::Copy { from, .. } = prep {
            o2.release_copy_source(from);
        }
        let o3 = Rc::clone(&o2);
        commit(
            &o2,
            Box::new(move |r| {
                o3.preparing.borrow_mut().remove(&(obj, idx));
                // A shrink while this was prepared may have cut the extent: stamp only what
                // the volume still maps there.
                let still = o3.core.borrow().extent(obj, idx) == Some(cluster);
                if let (Ok(()), true, Some((_, vol))) = (&r, still, o3.volumes.borrow().get(&obj)) {
                    vol.map.set(idx, cluster, epoch);
                }
                let waiters = std::mem::take(&mut *entry.waiters.borrow_mut());
                for w in waiters {
                    w(r.clone().map(|()| cluster));
                }
            }),
        );
        // The cluster's data has landed: a commit that waited for it may start, with this
        // extent in it.
        end_unready(&o2);
    };
    match prep {
        Prep::Ready { .. } => finish(Ok(())),
        Prep::Zero { cluster } => run_phases(
            o.ch.clone(),
            vec![vec![Op::Zero {
                offset: cluster * cs,
                len: cs,
            }]],
            Box::new(finish),
        ),
        Prep::Copy { from, to } => io::copy(o.ch.clone(), from * cs, to * cs, cs as usize, finish),
    }
}

/// On the owner: unmap clusters `[first, first + count)` of volume `obj`.
pub(crate) fn unmap(
    store: u128,
    obj: u64,
    first: u64,
    count: u64,
    reply: Box<dyn FnOnce(Result<()>)>,
) {
    let o = match owner_of(store) {
        Ok(o) => o,
        Err(e) => return reply(Err(e)),
    };
    let done = (|| {
        for idx in first..first + count {
            if o.preparing.borrow().contains_key(&(obj, idx)) {
                // A write is making this cluster; the unmap loses the race, as if it came first.
                continue;
            }
            if let Some((_, vol)) = o.volumes.borrow().get(&obj) {
                vol.map.set(idx, 0, 0);
            }
            o.core.borrow_mut().unmap_cluster(obj, idx)?;
        }
        Ok(())
    })();
    match done {
        Ok(()) => commit(&o, reply),
        Err(e) => commit(&o, Box::new(move |_| reply(Err(e)))),
    }
}
