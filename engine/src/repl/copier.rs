//! The copier: a poller on one reactor that moves bytes from a source bdev to the secondary
//! with a bounded number of copies in flight and an optional rate limit. It does two jobs:
//! - **snapshot transfer**: a list of extents (a snapshot's mapped clusters, or the diff of two
//!   snapshots) read from the snapshot's read-only bdev;
//! - **cutover scanner**: the dirty regions of the log, read from the live primary, each taken
//!   with [`Drl::begin_copy`] and given back with [`Drl::end_copy`] (clean only if no write
//!   re-dirtied it meanwhile), only while the relationship is establishing or resyncing.
//!
//! Its buffers are allocated once, when it starts; each copy is a read into one and a write
//! from it, the callbacks carrying an `Rc` and the copy's range. Progress is atomics that the
//! relationship's driver reads from its own thread.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::drl::Drl;
use super::failure::FailureNote;
use super::splitter::Splitter;
use super::state::State;
use crate::bdev::{Channel, Desc, IoDone};
use crate::mem::{DmaBuf, Sgl};
use crate::reactor::{self, Messenger, PollStatus, PollerHandle, ReactorId};

/// Refusals (a write in flight each time the scanner came) before a region is fenced.
const FENCE_AFTER: u8 = 8;

/// What one copier reports.
#[derive(Default)]
pub struct Progress {
    /// Bytes to copy (a transfer's total; for the scanner, what it has taken so far).
    pub total: AtomicU64,
    /// Bytes read from the source and written to the secondary.
    pub done: AtomicU64,
    /// Copies that failed (read or write).
    pub errors: AtomicU64,
    /// A transfer: stopped after a failure.
    pub failed: AtomicBool,
    /// A transfer: everything copied, or stopped; nothing in flight.
    pub finished: AtomicBool,
    /// Asked to stop (by the driver): the poller ends once nothing is in flight.
    pub stop: AtomicBool,
    /// Set when the poller has let go of everything.
    pub stopped: AtomicBool,
    /// A transfer: microseconds from its start to its last copy done.
    pub elapsed_us: AtomicU64,
    /// The scanner: regions it fenced to copy them (writes kept finding them in flight).
    pub fences: AtomicU64,
    /// Why a copy failed, for the driver to tell.
    pub failure: FailureNote,
}

impl Progress {
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::SeqCst)
    }
}

/// What to copy.
pub enum Work {
    /// `(offset, length)` byte extents, ascending.
    Extents(Vec<(u64, u64)>),
    /// The log's dirty regions, while the splitter's state is establishing or resyncing.
    Dirty(Arc<Splitter>),
}

#[derive(Debug, Clone, Copy)]
pub struct CopyOpts {
    /// Copies in flight at most.
    pub depth: usize,
    /// Bytes per copy (a transfer's extents are cut to this; the scanner copies a region).
    pub chunk: u64,
    /// Bytes per second at most; 0: no limit.
    pub rate: u64,
}

impl Default for CopyOpts {
    fn default() -> Self {
        CopyOpts {
            depth: 8,
            chunk: 1 << 20,
            rate: 0,
        }
    }
}

struct Copier {
    progress: Arc<Progress>,
    src: Channel,
    dst: Channel,
    /// The descriptors the channels came from: closing one fails its channel's I/O.
    _descs: (Desc, Desc),
    block_size: u64,
    size: u64,
    work: Work,
    /// Extents: (index, offset into it). Dirty: the next region to look at.
    cursor: (usize, u64),
    free: Vec<DmaBuf>,
    in_flight: usize,
    chunk: u64,
    rate: u64,
    started: Duration,
    issued: u64,
    poller: Option<PollerHandle>,
    /// A transfer stops issuing after a failure.
    halted: bool,
    /// The scanner: refusals per region (a write in flight each time), and the one region
    /// fenced off until it is copied.
    refusals: Vec<u8>,
    fence: Option<u64>,
}

/// Start a copier on `reactor`. `src` and `dst` are opened there; their block sizes must match.
pub fn start(
    messenger: &Messenger,
    reactor: ReactorId,
    src: Desc,
    dst: Desc,
    work: Work,
    opts: CopyOpts,
) -> Result<Arc<Progress>, String> {
    let (sb, db) = (src.bdev(), dst.bdev());
    if sb.block_size() != db.block_size() {
        return Err(format!(
            "{} has {}-byte blocks and {} {}-byte blocks",
            sb.name(),
            sb.block_size(),
            db.name(),
            db.block_size()
        ));
    }
    let chunk = match &work {
        Work::Dirty(sp) => sp.drl().region_size(),
        Work::Extents(_) => opts.chunk.max(sb.block_size() as u64),
    };
    let total = match &work {
        Work::Extents(x) => x.iter().map(|e| e.1).sum(),
        Work::Dirty(_) => 0,
    };
    let work_regions = match &work {
        Work::Dirty(sp) => Some(sp.drl().regions()),
        Work::Extents(_) => None,
    };
    let progress = Arc::new(Progress::default());
    progress.total.store(total, Ordering::SeqCst);
    let p = Arc::clone(&progress);
    let (tx, rx) = std::sync::mpsc::channel();
    messenger
        .send_patiently(reactor, move || {
            let made = (|| -> Result<(), String> {
                let src_ch = src.channel().map_err(|e| e.to_string())?;
                let dst_ch = dst.channel().map_err(|e| e.to_string())?;
                let mut free = Vec::with_capacity(opts.depth);
                for _ in 0..opts.depth.max(1) {
                    free.push(DmaBuf::new(chunk as usize).map_err(|e| e.to_string())?);
                }
                let size = sb.size_bytes().min(db.size_bytes());
                let c = Rc::new(RefCell::new(Copier {
                    progress: p,
                    src: src_ch,
                    dst: dst_ch,
                    _descs: (src, dst),
                    block_size: sb.block_size() as u64,
                    size,
                    work,
                    cursor: (0, 0),
                    free,
                    in_flight: 0,
                    chunk,
                    rate: opts.rate,
                    started: reactor::now().unwrap_or_default(),
                    issued: 0,
                    poller: None,
                    halted: false,
                    refusals: match &work_regions {
                        Some(n) => vec![0; *n as usize],
                        None => Vec::new(),
                    },
                    fence: None,
                }));
                let held = Rc::clone(&c);
                let h = reactor::register_periodic_poller(
                    "repl_copier",
                    Duration::from_micros(200),
                    move || Copier::poll(&held),
                )
                .map_err(|e| e.to_string())?;
                c.borrow_mut().poller = Some(h);
                Ok(())
            })();
            let _ = tx.send(made);
        })
        .map_err(|e| e.to_string())?;
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(made) => made?,
        Err(_) => {
            // If it starts after all, it stops at once.
            progress.stop.store(true, Ordering::SeqCst);
            return Err("the copier's reactor did not answer".into());
        }
    }
    Ok(progress)
}

impl Copier {
    /// Issue copies while buffers, the rate and the work allow; whether any went.
    fn pump(this: &Rc<RefCell<Copier>>) -> bool {
        let mut busy = false;
        loop {
            let next = {
                let mut c = this.borrow_mut();
                let blocked = c.progress.stop.load(Ordering::SeqCst)
                    || c.halted
                    || c.free.is_empty()
                    || !c.rate_allows();
                if blocked {
                    None
                } else {
                    c.next_copy()
                }
            };
            let Some((off, len, region)) = next else {
                break;
            };
            busy = true;
            Copier::issue(this, off, len, region);
        }
        busy
    }

    fn poll(this: &Rc<RefCell<Copier>>) -> PollStatus {
        let mut busy = Copier::pump(this);
        let mut c = this.borrow_mut();
        let transfer_done = matches!(c.work, Work::Extents(_))
            && c.in_flight == 0
            && (c.halted || c.extents_exhausted());
        if transfer_done && !c.progress.finished.load(Ordering::SeqCst) {
            let took = reactor::now().unwrap_or_default().saturating_sub(c.started);
            c.progress
                .elapsed_us
                .store(took.as_micros() as u64, Ordering::SeqCst);
            c.progress.finished.store(true, Ordering::SeqCst);
            busy = true;
        }
        if c.in_flight == 0 && (c.progress.stop.load(Ordering::SeqCst) || transfer_done) {
            if let Work::Dirty(sp) = &c.work {
                let sp = Arc::clone(sp);
                c.lift_fence(&sp);
            }
            if let Some(h) = c.poller.take() {
                let _ = h.unregister();
            }
            c.progress.stopped.store(true, Ordering::SeqCst);
        }
        if busy {
            PollStatus::Busy
        } else {
            PollStatus::Idle
        }
    }

    fn rate_allows(&self) -> bool {
        if self.rate == 0 {
            return true;
        }
        let elapsed = reactor::now()
            .unwrap_or_default()
            .saturating_sub(self.started);
        let allowed = (self.rate as u128 * elapsed.as_micros() / 1_000_000) as u64;
        self.issued < allowed.max(self.chunk)
    }

    fn extents_exhausted(&self) -> bool {
        match &self.work {
            Work::Extents(x) => self.cursor.0 >= x.len(),
            Work::Dirty(_) => false,
        }
    }

    /// The next copy: (offset, length, region for the scanner).
    fn next_copy(&mut self) -> Option<(u64, u64, Option<u64>)> {
        match &self.work {
            Work::Extents(x) => {
                let (i, at) = self.cursor;
                let &(off, len) = x.get(i)?;
                let n = (len - at).min(self.chunk);
                self.cursor = if at + n >= len {
                    (i + 1, 0)
                } else {
                    (i, at + n)
                };
                let start = off + at;
                // Past the volume's end (a diff in clusters of a smaller last region).
                let n = n.min(self.size.saturating_sub(start));
                if n == 0 {
                    return self.next_copy();
                }
                Some((start, n, None))
            }
            Work::Dirty(sp) => {
                let sp = Arc::clone(sp);
                if !matches!(sp.state(), State::Establishing | State::Resyncing) {
                    self.lift_fence(&sp);
                    return None;
                }
                let drl = Arc::clone(sp.drl());
                if let Some(r) = self.fence {
                    // The fenced region first: once its writes in flight drain, copy it.
                    if drl.begin_copy(r) {
                        return self.region_copy(&drl, r);
                    }
                    // Neither dirty nor being copied: nothing to wait for. (While its copy is
                    // in flight the fence stays: the copy's end lifts it.)
                    if !drl.is_dirty(r) && !drl.is_copying(r) {
                        self.lift_fence(&sp);
                    }
                }
                // A region with a write in flight is passed over for now; a few are tried.
                for _ in 0..64 {
                    let from = self.cursor.1;
                    let r = drl
                        .next_dirty(from)
                        .or_else(|| (from > 0).then(|| drl.next_dirty(0)).flatten())?;
                    self.cursor.1 = if r + 1 >= drl.regions() { 0 } else { r + 1 };
                    if !drl.begin_copy(r) {
                        // A write in flight there. A region found written this often is
                        // fenced: new writes wait until it is copied (one region at a time).
                        let n = &mut self.refusals[r as usize];
                        *n = n.saturating_add(1);
                        if *n >= FENCE_AFTER && self.fence.is_none() {
                            drl.fence(r);
                            self.fence = Some(r);
                            self.progress.fences.fetch_add(1, Ordering::Relaxed);
                        }
                        continue;
                    }
                    if let Some(c) = self.region_copy(&drl, r) {
                        return Some(c);
                    }
                }
                None
            }
        }
    }

    /// Copy region `r`, taken with `begin_copy`: (offset, length, region), or `None` for a
    /// region past the volume's end (given back clean).
    fn region_copy(&mut self, drl: &Drl, r: u64) -> Option<(u64, u64, Option<u64>)> {
        self.refusals[r as usize] = 0;
        let rs = drl.region_size();
        let off = r * rs;
        let len = rs.min(self.size.saturating_sub(off));
        if len == 0 {
            drl.end_copy(r, true);
            return None;
        }
        self.progress.total.fetch_add(len, Ordering::SeqCst);
        Some((off, len, Some(r)))
    }

    /// Take the fence down, and let the writes that waited at it go on.
    fn lift_fence(&mut self, sp: &Arc<Splitter>) {
        if let Some(r) = self.fence.take() {
            sp.drl().unfence(r);
            match reactor::messenger() {
                Ok(m) => sp.unfenced(&m),
                Err(e) => tracing::error!("replication: cannot release writes at a fence: {e}"),
            }
        }
    }

    fn issue(this: &Rc<RefCell<Copier>>, off: u64, len: u64, region: Option<u64>) {
        let (sgl, ob, nb) = {
            let mut c = this.borrow_mut();
            let buf = c.free.pop().expect("a free buffer");
            c.in_flight += 1;
            let mut sgl = Sgl::new();
            // A buffer is as long as a chunk, and a copy no longer: this holds, but a
            // failure here still ends the copy cleanly.
            let _ = sgl.push(buf, 0, len as usize);
            if sgl.is_empty() {
                drop(c);
                Copier::end(this, len, region, false, None);
                return;
            }
            c.issued += len;
            (sgl, off / c.block_size, len / c.block_size)
        };
        let held = Rc::clone(this);
        let read = this.borrow().src.read(ob, nb, sgl, move |d: IoDone| {
            Copier::read_done(&held, off, len, region, d)
        });
        if let Err((e, sgl)) = read {
            tracing::warn!("replication copy: read at {off}: {e}");
            this.borrow().progress.failure.note(false, e.errno());
            Copier::end(this, len, region, false, Some(sgl));
        }
    }

    fn read_done(this: &Rc<RefCell<Copier>>, off: u64, len: u64, region: Option<u64>, d: IoDone) {
        if let Err(e) = d.status {
            tracing::warn!("replication copy: read at {off}: {e}");
            this.borrow().progress.failure.note(false, e.errno());
            Copier::end(this, len, region, false, Some(d.sgl));
            Copier::pump(this);
            return;
        }
        let bs = this.borrow().block_size;
        let held = Rc::clone(this);
        let write = this
            .borrow()
            .dst
            .write(off / bs, len / bs, d.sgl, move |d: IoDone| {
                if let Err(e) = &d.status {
                    tracing::debug!("replication copy: write at {off}: {e}");
                    held.borrow().progress.failure.note(true, e.errno());
                }
                Copier::end(&held, len, region, d.status.is_ok(), Some(d.sgl));
                // The next copy goes now, not at the poller's next turn.
                Copier::pump(&held);
            });
        if let Err((e, sgl)) = write {
            tracing::warn!("replication copy: write at {off}: {e}");
            this.borrow().progress.failure.note(true, e.errno());
            Copier::end(this, len, region, false, Some(sgl));
        }
    }

    fn end(this: &Rc<RefCell<Copier>>, len: u64, region: Option<u64>, ok: bool, sgl: Option<Sgl>) {
        let mut c = this.borrow_mut();
        if let Some(sgl) = sgl {
            for b in sgl.into_bufs() {
                if let crate::mem::Buf::Dma(b) = b {
                    c.free.push(b);
                }
            }
        }
        c.in_flight = c.in_flight.saturating_sub(1);
        if ok {
            c.progress.done.fetch_add(len, Ordering::SeqCst);
        } else {
            c.progress.errors.fetch_add(1, Ordering::SeqCst);
        }
        match (&c.work, region) {
            (Work::Dirty(sp), Some(r)) => {
                let sp = Arc::clone(sp);
                sp.drl().end_copy(r, ok);
                if !ok {
                    sp.note_secondary_failed();
                }
                if c.fence == Some(r) {
                    c.lift_fence(&sp);
                }
            }
            _ if !ok => {
                c.halted = true;
                c.progress.failed.store(true, Ordering::SeqCst);
            }
            _ => {}
        }
    }
}

/// Regions of the log the copier's [`Work::Dirty`] drains, for a caller that only has a log.
pub fn dirty_bytes(drl: &Drl) -> u64 {
    drl.dirty_regions() * drl.region_size()
}
