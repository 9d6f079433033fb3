//! The `error` bdev: wraps another bdev and injects faults, changeable while I/O runs. Fault
//! tests of the layers above stand on it.
//!
//! A [`Fault`] is a selector (I/O types, an LBA range, which matching I/Os: every one, the nth
//! from now, or a seeded fraction) and an action:
//! - **fail**: complete with [`IoError::Injected`] without touching the base;
//! - **delay**: hold the I/O for a time, then pass it to the base;
//! - **drop**: hold it until the faults are cleared, then complete it with `Aborted` (a host's
//!   timeout path sees a command that never answers);
//! - **tear**: write only the first blocks of a multi-block write, then fail it with `Torn`;
//! - **power cut**: the device dies at the hit I/O (a write is torn in half or lost), and every
//!   later I/O fails until the fault is cleared: what a crash leaves on the media.
//!
//! A **volatile write cache** can be switched on ([`set_volatile_cache`]): writes complete at
//! once and are held in memory, reads see them, and only a flush puts them on the base. A power
//! cut then loses every write not yet flushed, as a disk with its write cache enabled does.
//! This is a test mode and takes a lock per I/O while on; with it off, no I/O takes one.
//!
//! The fault is one `Copy` value in an `AtomicCell`, read by the data path without a lock.
//! Holding I/O (delay, drop) arms a 1 ms periodic poller on the channel only while something
//! is held, so an idle adaptive reactor still sleeps.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_utils::atomic::AtomicCell;

use super::backend::{Backend, BackendChannel, Completions};
use super::{
    register, Bdev, BdevInfo, BdevIo, Channel, Desc, Error, IoCallback, IoDone, IoError, IoType,
    Result,
};
use crate::mem::{DmaBuf, Sgl};
use crate::reactor::{self, PollStatus, PollerHandle};

/// Which I/O types a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoTypes(u8);

impl IoTypes {
    pub const ALL: IoTypes = IoTypes(0xff);
    pub const READS: IoTypes = IoTypes(1 << IoType::Read as u8);
    pub const WRITES: IoTypes = IoTypes(1 << IoType::Write as u8);

    pub fn of(types: &[IoType]) -> IoTypes {
        IoTypes(types.iter().fold(0, |m, t| m | t.bit()))
    }

    pub fn contains(self, t: IoType) -> bool {
        self.0 & t.bit() != 0
    }
}

/// Which of the matching I/Os are hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    Every,
    /// Only the nth matching I/O after the fault is set (1 = the next one).
    Nth(u64),
    /// The next n matching I/Os after the fault is set (SPDK's `num`).
    Next(u64),
    /// Each matching I/O with this probability in millionths, from a seeded generator.
    Fraction {
        per_million: u32,
        seed: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Fail,
    Delay(Duration),
    /// Hold the I/O this long, then fail it: a device that times out.
    FailAfter(Duration),
    Drop,
    /// Write this many leading blocks (fewer than the write has), then fail it.
    Tear {
        blocks: u64,
    },
    /// The device dies at this I/O: a write of several blocks is torn in half when `tear`,
    /// otherwise lost; every later I/O fails. Of the writes in the volatile cache, if it is
    /// on, none survive when `keep_seed` is 0; otherwise each survives or not by a draw from
    /// that seed, as a disk may have written back any of them before the power went.
    PowerCut {
        tear: bool,
        keep_seed: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    pub action: Action,
    pub io_types: IoTypes,
    /// Blocks `[start, end)`: the fault hits I/Os that overlap them. `None`: any.
    pub lba_range: Option<(u64, u64)>,
    pub when: When,
}

impl Fault {
    /// `action` on every I/O of the given types.
    pub fn every(action: Action, io_types: IoTypes) -> Fault {
        Fault {
            action,
            io_types,
            lba_range: None,
            when: When::Every,
        }
    }
}

struct Shared {
    fault: AtomicCell<Option<Fault>>,
    /// Set by a power cut: every I/O fails until the faults are cleared.
    dead: AtomicBool,
    cache_on: AtomicBool,
    /// The volatile cache: writes not yet flushed, in the order they completed.
    cache: Mutex<Vec<(u64, Vec<u8>)>>,
    /// Bumped by every change, so channels notice a clear and release what they hold.
    generation: AtomicU64,
    matched: AtomicU64,
    draws: AtomicU64,
}

impl Shared {
    fn hits(&self, io: &BdevIo) -> Option<Action> {
        let f = self.fault.load()?;
        if !f.io_types.contains(io.io_type) {
            return None;
        }
        if let Some((start, end)) = f.lba_range {
            if io.offset_blocks >= end || io.offset_blocks + io.num_blocks <= start {
                return None;
            }
        }
        let hit = match f.when {
            When::Every => true,
            When::Nth(n) => self.matched.fetch_add(1, Ordering::Relaxed) + 1 == n,
            When::Next(n) => self.matched.fetch_add(1, Ordering::Relaxed) < n,
            When::Fraction { per_million, seed } => {
                let draw = self.draws.fetch_add(1, Ordering::Relaxed);
                let mut rng = crate::reactor::sim::SimRng::new(
                    seed ^ draw.wrapping_mul(0x9E37_79B9_7F4A_7C15),
                );
                (rng.next_u64() % 1_000_000) < per_million as u64
            }
        };
        hit.then_some(f.action)
    }
}

struct ErrorBackend {
    base: Desc,
    shared: Arc<Shared>,
}

impl Backend for ErrorBackend {
    fn product_name(&self) -> &'static str {
        "Error Injection Disk"
    }

    fn supports(&self, io_type: IoType) -> bool {
        self.base.bdev().supports(io_type)
    }

    fn buf_align(&self) -> usize {
        self.base.bdev().buf_align()
    }

    fn open_channel(&self) -> Result<Box<dyn BackendChannel>> {
        Ok(Box::new(ErrorChannel(Rc::new(ErrChan {
            base: self.base.channel()?,
            block_size: self.base.bdev().block_size() as u64,
            shared: Arc::clone(&self.shared),
            parked: RefCell::new(Vec::new()),
            free: RefCell::new(Vec::new()),
            delayed: RefCell::new(VecDeque::new()),
            dropped: RefCell::new(Vec::new()),
            generation: Cell::new(self.shared.generation.load(Ordering::Acquire)),
            ticker: RefCell::new(None),
        }))))
    }

    fn on_remove(&self) {
        // Held I/O must still complete: clearing the fault releases it (dropped I/O aborts,
        // delayed I/O goes on to the base).
        self.shared.fault.store(None);
        self.shared.generation.fetch_add(1, Ordering::AcqRel);
        self.base.bdev().release_claim();
    }

    fn driver_specific(&self) -> serde_json::Value {
        serde_json::json!({ "error": { "base_bdev": self.base.bdev().name() } })
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn save_config(&self, bdev: &Bdev) -> Option<serde_json::Value> {
        let base = self.base.bdev();
        let default_name = format!("EE_{}", base.name());
        let mut params = serde_json::json!({"base_name": base.name(), "uuid": bdev.uuid_string()});
        if bdev.name() != default_name {
            params["name"] = bdev.name().into();
        }
        Some(serde_json::json!({"method": "bdev_error_create", "params": params}))
    }
}

/// A request passed to the base: the original, where its completion goes, and the outcome to
/// report instead of the base's (a tear).
type Parked = (BdevIo, Completions, Option<IoError>);

struct ErrChan {
    base: Channel,
    block_size: u64,
    shared: Arc<Shared>,
    /// Requests passed to the base, waiting for its completion; indexed by slot.
    parked: RefCell<Vec<Option<Parked>>>,
    free: RefCell<Vec<usize>>,
    /// Held I/O: when it is due, and whether it then fails instead of going on.
    delayed: RefCell<VecDeque<(u64, BdevIo, Completions, bool)>>,
    /// Dropped I/O and the fault generation it was dropped under: released once that changes.
    dropped: RefCell<Vec<(BdevIo, Completions, u64)>>,
    generation: Cell<u64>,
    ticker: RefCell<Option<PollerHandle>>,
}

struct ErrorChannel(Rc<ErrChan>);

impl ErrChan {
    /// Pass `io` to the base bdev. With `tear`, write only a prefix and fail with that error.
    fn forward(
        self: &Rc<Self>,
        mut io: BdevIo,
        done: &Completions,
        tear: Option<u64>,
    ) -> std::result::Result<(), (Error, BdevIo)> {
        let (sgl, num_blocks, outcome) = match tear {
            Some(blocks) => {
                let bytes = (blocks * self.block_size) as usize;
                let Ok(mut prefix) = DmaBuf::new(bytes) else {
                    return Err((
                        Error::InvalidArgument("no memory to tear a write".into()),
                        io,
                    ));
                };
                prefix
                    .as_mut_slice()
                    .copy_from_slice(&io.sgl.to_vec()[..bytes]);
                (
                    Sgl::single(prefix),
                    blocks,
                    Some(IoError::Torn {
                        written_blocks: blocks,
                    }),
                )
            }
            None => (std::mem::take(&mut io.sgl), io.num_blocks, None),
        };
        let slot = match self.free.borrow_mut().pop() {
            Some(s) => s,
            None => {
                let mut parked = self.parked.borrow_mut();
                parked.push(None);
                parked.len() - 1
            }
        };
        let (io_type, offset) = (io.io_type, io.offset_blocks);
        self.parked.borrow_mut()[slot] = Some((io, done.clone(), outcome));
        let me = Rc::clone(self);
        let cb = IoCallback::new(move |d: IoDone| me.base_done(slot, d));
        match self.base.submit(io_type, offset, num_blocks, sgl, cb) {
            Ok(()) => Ok(()),
            Err((e, sgl)) => {
                let (mut io, _, outcome) =
                    self.parked.borrow_mut()[slot].take().expect("just parked");
                self.free.borrow_mut().push(slot);
                if outcome.is_none() {
                    io.sgl = sgl;
                }
                Err((e, io))
            }
        }
    }

    fn base_done(&self, slot: usize, d: IoDone) {
        let (mut io, done, outcome) = self.parked.borrow_mut()[slot]
            .take()
            .expect("parked request");
        self.free.borrow_mut().push(slot);
        if outcome.is_none() {
            io.sgl = d.sgl;
        }
        if io.io_type == IoType::Read
            && d.status.is_ok()
            && self.shared.cache_on.load(Ordering::Acquire)
        {
            self.patch_from_cache(&mut io);
        }
        let status = match (d.status, outcome) {
            (Err(e), _) => Err(e),
            (Ok(()), Some(torn)) => Err(torn),
            (Ok(()), None) => Ok(()),
        };
        done.complete(io, status);
    }

    /// Lay the cached writes that overlap a read over what the base returned, oldest first.
    fn patch_from_cache(&self, io: &mut BdevIo) {
        let bs = self.block_size;
        let (start, end) = (
            io.offset_blocks * bs,
            (io.offset_blocks + io.num_blocks) * bs,
        );
        let cache = self.shared.cache.lock().unwrap_or_else(|p| p.into_inner());
        for (off, data) in cache.iter() {
            let (w_start, w_end) = (off * bs, off * bs + data.len() as u64);
            let (from, to) = (w_start.max(start), w_end.min(end));
            if from < to {
                let src = &data[(from - w_start) as usize..(to - w_start) as usize];
                io.sgl.copy_at((from - start) as usize, src);
            }
        }
    }

    /// At a power cut: the cached writes a draw from `seed` keeps reach the base.
    fn write_back_some(&self, cached: Vec<(u64, Vec<u8>)>, seed: u64) {
        let mut rng = crate::reactor::sim::SimRng::new(seed);
        for (off, data) in cached {
            if rng.next_u64() & 1 == 0 {
                continue;
            }
            let Ok(mut buf) = DmaBuf::new(data.len()) else {
                continue;
            };
            buf.as_mut_slice().copy_from_slice(&data);
            let blocks = data.len() as u64 / self.block_size;
            let _ = self.base.write(off, blocks, Sgl::single(buf), |_| {});
        }
    }

    /// Hold a write (or zeroes) in the volatile cache and complete it.
    fn cache_write(&self, io: BdevIo, done: &Completions) {
        let data = if io.io_type == IoType::Write {
            io.sgl.to_vec()
        } else {
            vec![0; (io.num_blocks * self.block_size) as usize]
        };
        self.shared
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((io.offset_blocks, data));
        done.complete(io, Ok(()));
    }

    /// A flush with the cache on: write what it holds to the base, block by block with the
    /// newest data for each, then flush the base.
    fn cache_flush(self: &Rc<Self>, io: BdevIo, done: &Completions) {
        let bs = self.block_size as usize;
        // The writes stay in the cache, where reads see them, until the base has them all.
        let held = self
            .shared
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let taken = held.len();
        let mut blocks: std::collections::BTreeMap<u64, Vec<u8>> = Default::default();
        for (off, data) in held {
            for (i, b) in data.chunks(bs).enumerate() {
                blocks.insert(off + i as u64, b.to_vec());
            }
        }
        let left = Rc::new(Cell::new(blocks.len() + 1));
        let failed = Rc::new(Cell::new(false));
        let finish = Rc::new(RefCell::new(Some((io, done.clone()))));
        let step = {
            let (left, failed, finish, me) = (
                left.clone(),
                failed.clone(),
                finish.clone(),
                Rc::clone(self),
            );
            move |ok: bool| {
                if !ok {
                    failed.set(true);
                }
                left.set(left.get() - 1);
                if left.get() == 0 {
                    // Every block is on the base: now the base's own flush.
                    let (on_flush, failed) = (finish.clone(), failed.clone());
                    let blocks = me.base.bdev().num_blocks();
                    let shared = Arc::clone(&me.shared);
                    let flushed = me.base.flush(0, blocks, move |d: IoDone| {
                        let mut cache = shared.cache.lock().unwrap_or_else(|p| p.into_inner());
                        let n = taken.min(cache.len());
                        cache.drain(..n);
                        drop(cache);
                        if let Some((io, done)) = on_flush.borrow_mut().take() {
                            let ok = d.is_ok() && !failed.get();
                            done.complete(io, if ok { Ok(()) } else { Err(IoError::Injected) });
                        }
                    });
                    if flushed.is_err() {
                        if let Some((io, done)) = finish.borrow_mut().take() {
                            done.complete(io, Err(IoError::Injected));
                        }
                    }
                }
            }
        };
        let step = Rc::new(step);
        for (block, data) in blocks {
            let Ok(mut buf) = DmaBuf::new(data.len()) else {
                step(false);
                continue;
            };
            buf.as_mut_slice().copy_from_slice(&data);
            let st = Rc::clone(&step);
            if self
                .base
                .write(block, 1, Sgl::single(buf), move |d: IoDone| st(d.is_ok()))
                .is_err()
            {
                step(false);
            }
        }
        // The count started one above the blocks, so the base flush waits for this too.
        step(true);
    }

    fn holding(&self) -> bool {
        !self.delayed.borrow().is_empty() || !self.dropped.borrow().is_empty()
    }

    fn arm_ticker(self: &Rc<Self>) {
        if self.ticker.borrow().is_some() {
            return;
        }
        let me = Rc::downgrade(self);
        let handle = reactor::register_periodic_poller(
            "error_bdev_hold",
            Duration::from_millis(1),
            move || me.upgrade().map_or(PollStatus::Idle, |c| c.release_held()),
        );
        *self.ticker.borrow_mut() = handle.ok();
    }

    /// Forward delayed I/O whose time has come; abort dropped I/O once the faults changed.
    fn release_held(self: &Rc<Self>) -> PollStatus {
        let mut status = PollStatus::Idle;
        let generation = self.shared.generation.load(Ordering::Acquire);
        if generation != self.generation.replace(generation) {
            let released: Vec<_> = {
                let mut dropped = self.dropped.borrow_mut();
                let (gone, kept): (Vec<_>, Vec<_>) =
                    dropped.drain(..).partition(|(_, _, g)| *g != generation);
                *dropped = kept;
                gone
            };
            for (io, done, _) in released {
                done.complete(io, Err(IoError::Aborted));
                status = PollStatus::Busy;
            }
        }
        let now = crate::sys::monotonic_ns();
        loop {
            let due = {
                let mut delayed = self.delayed.borrow_mut();
                match delayed.front() {
                    Some((at, _, _, _)) if *at <= now => delayed.pop_front(),
                    _ => None,
                }
            };
            let Some((_, io, done, fail)) = due else {
                break;
            };
            if fail {
                done.complete(io, Err(IoError::Injected));
            } else if let Err((e, io)) = self.forward(io, &done, None) {
                tracing::warn!("error bdev: delayed I/O refused by its base: {e}");
                done.complete(io, Err(IoError::Aborted));
            }
            status = PollStatus::Busy;
        }
        if !self.holding() {
            if let Some(t) = self.ticker.borrow_mut().take() {
                let _ = t.unregister();
            }
        }
        status
    }
}

impl BackendChannel for ErrorChannel {
    fn submit(
        &mut self,
        io: BdevIo,
        done: &Completions,
    ) -> std::result::Result<(), (Error, BdevIo)> {
        let chan = &self.0;
        if chan.shared.dead.load(Ordering::Acquire) {
            done.complete(io, Err(IoError::Injected));
            return Ok(());
        }
        let cached = chan.shared.cache_on.load(Ordering::Acquire);
        match chan.shared.hits(&io) {
            None if cached => match io.io_type {
                IoType::Write | IoType::WriteZeroes | IoType::Unmap => {
                    chan.cache_write(io, done);
                    Ok(())
                }
                IoType::Flush => {
                    chan.cache_flush(io, done);
                    Ok(())
                }
                IoType::Read => chan.forward(io, done, None),
            },
            None => chan.forward(io, done, None),
            Some(Action::PowerCut { tear, keep_seed }) => {
                chan.shared.dead.store(true, Ordering::Release);
                let lost = std::mem::take(
                    &mut *chan.shared.cache.lock().unwrap_or_else(|p| p.into_inner()),
                );
                if keep_seed != 0 {
                    chan.write_back_some(lost, keep_seed);
                }
                if tear && io.io_type == IoType::Write && io.num_blocks > 1 && !cached {
                    // The first half reaches the media; the write still fails.
                    let half = io.num_blocks / 2;
                    return chan.forward(io, done, Some(half));
                }
                done.complete(io, Err(IoError::Injected));
                Ok(())
            }
            Some(Action::Fail) => {
                done.complete(io, Err(IoError::Injected));
                Ok(())
            }
            Some(Action::Drop) => {
                let generation = chan.shared.generation.load(Ordering::Acquire);
                chan.dropped
                    .borrow_mut()
                    .push((io, done.clone(), generation));
                chan.arm_ticker();
                Ok(())
            }
            Some(action @ (Action::Delay(d) | Action::FailAfter(d))) => {
                let fail = matches!(action, Action::FailAfter(_));
                let at = crate::sys::monotonic_ns()
                    .saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
                chan.delayed
                    .borrow_mut()
                    .push_back((at, io, done.clone(), fail));
                chan.arm_ticker();
                Ok(())
            }
            Some(Action::Tear { blocks }) if io.io_type == IoType::Write && io.num_blocks > 1 => {
                let blocks = blocks.clamp(1, io.num_blocks - 1);
                chan.forward(io, done, Some(blocks))
            }
            Some(Action::Tear { .. }) => chan.forward(io, done, None),
        }
    }

    fn poll(&mut self, _done: &Completions) -> PollStatus {
        // A clear is noticed here too, so dropped I/O is released without waiting for a tick.
        if self.0.shared.generation.load(Ordering::Acquire) != self.0.generation.get() {
            return self.0.release_held();
        }
        PollStatus::Idle
    }
}

pub struct ErrorOpts {
    /// Default: `EE_<base>`, as SPDK names it.
    pub name: Option<String>,
    pub base: String,
    /// 0 to generate.
    pub uuid: u128,
}

/// Create and register an error bdev over `base`, claiming the base (`bdev_error_create`).
pub fn create(opts: ErrorOpts) -> Result<Bdev> {
    let base_desc = super::open(&opts.base, true, None)?;
    let base = base_desc.bdev();
    let name = opts.name.unwrap_or_else(|| format!("EE_{}", opts.base));
    base.claim(&name)?;
    let backend = ErrorBackend {
        base: base_desc,
        shared: Arc::new(Shared {
            fault: AtomicCell::new(None),
            dead: AtomicBool::new(false),
            cache_on: AtomicBool::new(false),
            cache: Mutex::new(Vec::new()),
            generation: AtomicU64::new(0),
            matched: AtomicU64::new(0),
            draws: AtomicU64::new(0),
        }),
    };
    let made = Bdev::new(
        BdevInfo {
            name,
            uuid: opts.uuid,
            block_size: base.block_size(),
            num_blocks: base.num_blocks(),
        },
        Box::new(backend),
    )
    .and_then(register);
    if made.is_err() {
        base.release_claim();
    }
    made
}

fn shared_of(name: &str) -> Result<Arc<Shared>> {
    let bdev = super::get(name).ok_or_else(|| Error::NotFound(name.to_owned()))?;
    let backend = bdev
        .0
        .backend
        .as_any()
        .downcast_ref::<ErrorBackend>()
        .ok_or_else(|| Error::InvalidArgument(format!("{name} is not an error bdev")))?;
    Ok(Arc::clone(&backend.shared))
}

/// Set the fault of error bdev `name`, replacing any other (`bdev_error_inject_error`).
pub fn set_fault(name: &str, fault: Fault) -> Result<()> {
    if let Action::Tear { blocks: 0 } = fault.action {
        return Err(Error::InvalidArgument(
            "a tear writes at least one block".into(),
        ));
    }
    let shared = shared_of(name)?;
    shared.matched.store(0, Ordering::Relaxed);
    shared.draws.store(0, Ordering::Relaxed);
    shared.fault.store(Some(fault));
    shared.generation.fetch_add(1, Ordering::AcqRel);
    Ok(())
}

/// Switch the volatile write cache on or off. Switching it off drops nothing: call it after a
/// flush, or after a power cut (which already lost the cache).
pub fn set_volatile_cache(name: &str, on: bool) -> Result<()> {
    shared_of(name)?.cache_on.store(on, Ordering::Release);
    Ok(())
}

/// Matching I/Os seen since the fault was set (how far a `Nth` fault has counted).
pub fn matched(name: &str) -> Result<u64> {
    Ok(shared_of(name)?.matched.load(Ordering::Relaxed))
}

/// Whether a power cut has killed the device.
pub fn is_dead(name: &str) -> Result<bool> {
    Ok(shared_of(name)?.dead.load(Ordering::Acquire))
}

/// Remove the fault (and revive a device a power cut killed); I/O held by a drop completes
/// with `Aborted`, delayed I/O goes on.
pub fn clear(name: &str) -> Result<()> {
    let shared = shared_of(name)?;
    shared.fault.store(None);
    shared.dead.store(false, Ordering::Release);
    shared.generation.fetch_add(1, Ordering::AcqRel);
    Ok(())
}
