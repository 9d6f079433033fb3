//! Subsystems and their namespaces: what a host connects to and what it sees.
//!
//! A subsystem is shared by every reactor: connections read it, RPCs change it. Its mutable
//! parts sit behind one `Mutex` that only the control path takes (RPCs, Connect, a queue
//! refreshing its namespace cache); the data path reads an atomic generation counter per I/O
//! and takes the lock only when that counter moved, which happens when a namespace comes or
//! goes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::controller::CtrlShared;
use super::{ListenAddr, DISCOVERY_NQN};
use crate::bdev::{self, Bdev, Desc};

/// Namespaces one subsystem may hold unless told otherwise (SPDK's default).
pub const DEFAULT_MAX_NAMESPACES: u32 = 32;
/// The controller IDs a subsystem hands out unless told otherwise (SPDK's defaults).
pub const MIN_CNTLID: u16 = 1;
pub const MAX_CNTLID: u16 = 0xFFEF;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Nvm,
    Discovery,
}

static NEXT_NS_ID: AtomicU64 = AtomicU64::new(1);

/// A namespace: a bdev opened read-write, under an NSID.
pub struct Namespace {
    /// Unique over the process's life (an NSID may be reused for another bdev).
    id: u64,
    pub nsid: u32,
    pub desc: Desc,
    pub uuid: u128,
    pub nguid: [u8; 16],
}

impl Namespace {
    pub fn bdev(&self) -> Bdev {
        self.desc.bdev()
    }
}

pub struct SubsystemState {
    pub allow_any_host: bool,
    pub hosts: Vec<String>,
    pub namespaces: BTreeMap<u32, Arc<Namespace>>,
    pub listeners: Vec<ListenAddr>,
    pub controllers: Vec<Arc<CtrlShared>>,
    next_cntlid: u16,
}

pub struct Subsystem {
    pub nqn: String,
    pub kind: Kind,
    pub serial: String,
    pub model: String,
    pub max_namespaces: u32,
    pub min_cntlid: u16,
    pub max_cntlid: u16,
    state: Mutex<SubsystemState>,
    /// Moves whenever the namespace set changes: queues compare it to refresh their caches.
    ns_gen: AtomicU64,
}

pub struct SubsystemOpts {
    pub nqn: String,
    pub serial: String,
    pub model: String,
    pub allow_any_host: bool,
    pub max_namespaces: u32,
    pub min_cntlid: u16,
    pub max_cntlid: u16,
}

impl Subsystem {
    pub fn new(o: SubsystemOpts) -> Arc<Subsystem> {
        let kind = if o.nqn == DISCOVERY_NQN {
            Kind::Discovery
        } else {
            Kind::Nvm
        };
        Arc::new(Subsystem {
            nqn: o.nqn,
            kind,
            serial: o.serial,
            model: o.model,
            max_namespaces: o.max_namespaces,
            min_cntlid: o.min_cntlid,
            max_cntlid: o.max_cntlid,
            state: Mutex::new(SubsystemState {
                allow_any_host: o.allow_any_host,
                hosts: Vec::new(),
                namespaces: BTreeMap::new(),
                listeners: Vec::new(),
                controllers: Vec::new(),
                next_cntlid: o.min_cntlid,
            }),
            ns_gen: AtomicU64::new(0),
        })
    }

    /// The control path's view. Never taken per I/O.
    pub fn state(&self) -> MutexGuard<'_, SubsystemState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn ns_gen(&self) -> u64 {
        self.ns_gen.load(Ordering::Acquire)
    }

    fn bump_ns_gen(&self) {
        self.ns_gen.fetch_add(1, Ordering::AcqRel);
    }

    pub fn host_allowed(&self, hostnqn: &str) -> bool {
        let s = self.state();
        self.kind == Kind::Discovery || s.allow_any_host || s.hosts.iter().any(|h| h == hostnqn)
    }

    pub fn namespace(&self, nsid: u32) -> Option<Arc<Namespace>> {
        self.state().namespaces.get(&nsid).cloned()
    }

    pub fn namespaces(&self) -> Vec<Arc<Namespace>> {
        self.state().namespaces.values().cloned().collect()
    }

    /// Add `bdev_name` as a namespace; `nsid` 0 takes the lowest free one.
    pub fn add_namespace(
        self: &Arc<Self>,
        bdev_name: &str,
        nsid: u32,
        uuid: Option<u128>,
        nguid: Option<[u8; 16]>,
    ) -> Result<u32, super::Error> {
        let bdev =
            bdev::get(bdev_name).ok_or_else(|| super::Error::NoSuchBdev(bdev_name.to_owned()))?;
        let in_use =
            |s: &SubsystemState| s.namespaces.values().any(|n| n.bdev().name() == bdev_name);
        let nsid = {
            let s = self.state();
            if in_use(&s) {
                return Err(super::Error::BdevInUse(bdev_name.to_owned()));
            }
            match nsid {
                0 => (1..=self.max_namespaces)
                    .find(|n| !s.namespaces.contains_key(n))
                    .ok_or(super::Error::TooManyNamespaces(self.max_namespaces))?,
                n if n > self.max_namespaces || n == u32::MAX => {
                    return Err(super::Error::BadNsid(n, self.max_namespaces))
                }
                n if s.namespaces.contains_key(&n) => return Err(super::Error::NsidInUse(n)),
                n => n,
            }
        };
        // Hot removal of the bdev removes this namespace (and not another one that took its
        // NSID since), and the hosts hear of it.
        let id = NEXT_NS_ID.fetch_add(1, Ordering::Relaxed);
        let weak = Arc::downgrade(self);
        let on_event: bdev::EventCallback = Arc::new(move |bdev::BdevEvent::Remove| {
            if let Some(sub) = weak.upgrade() {
                sub.remove_namespace_if(nsid, id);
            }
        });
        let desc = bdev::open(bdev_name, true, Some(on_event)).map_err(super::Error::Bdev)?;
        let uuid = uuid.unwrap_or_else(|| bdev.uuid());
        let ns = Arc::new(Namespace {
            id,
            nsid,
            desc,
            uuid,
            nguid: nguid.unwrap_or_else(|| uuid.to_be_bytes()),
        });
        {
            // Checked again: another RPC may have raced this one since the first look.
            let mut s = self.state();
            if s.namespaces.contains_key(&nsid) {
                return Err(super::Error::NsidInUse(nsid));
            }
            if in_use(&s) {
                return Err(super::Error::BdevInUse(bdev_name.to_owned()));
            }
            s.namespaces.insert(nsid, ns);
        }
        self.bump_ns_gen();
        self.namespace_changed(nsid);
        // A removal that came between the open and the insert found nothing to remove.
        if bdev.is_removed() {
            self.remove_namespace_if(nsid, id);
            return Err(super::Error::NoSuchBdev(bdev_name.to_owned()));
        }
        Ok(nsid)
    }

    /// Remove namespace `nsid` if it is still the one made with `id`.
    fn remove_namespace_if(&self, nsid: u32, id: u64) {
        drop(self.take_namespace(nsid, Some(id)));
    }

    /// Remove every namespace (the subsystem is being deleted).
    pub(crate) fn clear_namespaces(&self) {
        let gone = std::mem::take(&mut self.state().namespaces);
        self.bump_ns_gen();
        drop(gone);
    }

    pub fn remove_namespace(&self, nsid: u32) -> Result<(), super::Error> {
        self.take_namespace(nsid, None)
            .map(drop)
            .ok_or(super::Error::NoSuchNamespace(nsid))
    }

    /// Take namespace `nsid` out (only if it is the one made with `id`, when given), and tell
    /// the controllers.
    fn take_namespace(&self, nsid: u32, id: Option<u64>) -> Option<Arc<Namespace>> {
        let ns = {
            let mut s = self.state();
            match s.namespaces.get(&nsid) {
                Some(n) if id.is_none_or(|id| n.id == id) => s.namespaces.remove(&nsid),
                _ => None,
            }
        }?;
        self.bump_ns_gen();
        self.namespace_changed(nsid);
        Some(ns)
    }

    /// Tell every controller that `nsid` changed (an asynchronous event, if the host asked).
    fn namespace_changed(&self, nsid: u32) {
        let ctrls = self.state().controllers.clone();
        for c in ctrls {
            c.notify_ns_changed(nsid);
        }
    }

    /// Register a new controller with the next free controller ID.
    pub(crate) fn add_controller(
        &self,
        make: impl FnOnce(u16) -> Arc<CtrlShared>,
    ) -> Option<Arc<CtrlShared>> {
        let mut s = self.state();
        let span = (self.max_cntlid - self.min_cntlid) as u32 + 1;
        for _ in 0..span {
            let id = s.next_cntlid;
            s.next_cntlid = if id >= self.max_cntlid {
                self.min_cntlid
            } else {
                id + 1
            };
            if s.controllers.iter().all(|c| c.cntlid != id) {
                let c = make(id);
                s.controllers.push(Arc::clone(&c));
                return Some(c);
            }
        }
        None
    }

    pub(crate) fn remove_controller(&self, cntlid: u16) {
        self.state().controllers.retain(|c| c.cntlid != cntlid);
    }

    pub(crate) fn controller(&self, cntlid: u16) -> Option<Arc<CtrlShared>> {
        self.state()
            .controllers
            .iter()
            .find(|c| c.cntlid == cntlid)
            .cloned()
    }
}
