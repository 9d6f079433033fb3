//! The splitter: a write tap ([`crate::bdev::tap`]) on the primary volume that sends each client
//! change to the primary and, by the relationship's state and the write's regions
//! ([`super::state::route`]), to the secondary too, and completes the client's request when
//! every side it went to is done.
//!
//! **Data path.** Everything here runs on the reactor that submitted the write, to completion:
//! the state is one atomic byte, the dirty region log is atomic words, the per-write record
//! lives in a slab owned by this reactor's tap channel (it grows only until it holds the
//! reactor's peak depth), the secondary writes from views of the client's own buffers, and the
//! counters are per reactor. No lock, no blocking system call, and no allocation per write in
//! steady state.
//!
//! **Overlapping writes.** A write claims its blocks ([`InFlight`]) before it is routed and
//! holds them until it completes to the client; one that finds them held waits in its
//! reactor's channel and tries again when a write there completes, or after a short timer (the
//! holder may be on another reactor). So two writes to the same blocks never reach the two
//! sides in different orders. Waiters take turns ([`InFlight::join`]): a write that waits goes
//! before any overlapping write that waits after it or comes later, on any reactor.
//!
//! **Taking the tap off.** A write a channel still holds when the tap comes off (at a barrier,
//! at a fence, or waiting for the log) goes to the primary alone, its regions left dirty: a
//! relationship deleted under load leaves no client write behind.
//!
//! **Ordering.** A write marks its regions active before it reads the state and the regions'
//! bits ([`Drl::enter`]); the scanner marks a region copying before it looks for active writes
//! ([`Drl::begin_copy`]). Writes the relationship may not split yet (`Local` routes, before
//! establishing) are counted before the state is read, so that switching to establishing can
//! wait for the last of them ([`Splitter::local_writes`]) before it computes what differs.

// A refused request comes back to its submitter by value, as the bdev layer's contract says:
// the large `Err` is the design (see `crate::bdev`).
#![allow(clippy::result_large_err)]

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use crossbeam_utils::CachePadded;

use super::drl::{Admit, Drl};
use super::failure::FailureNote;
use super::inflight::{InFlight, Turn};
use super::state::{route, Route, State, STATES};
use crate::bdev::tap::{Primary, TapChannel, WriteTap};
use crate::bdev::{BdevIo, Channel, Desc, Errno, Error, IoCallback, IoDone, IoError, IoType};
use crate::mem::{self, Buf, DmaBuf, ForeignBuf, Sgl, LARGE_BUF, MAX_SEGS, SMALL_BUF};
use crate::reactor::{self, Messenger, ReactorLocal, MAX_REACTORS};

/// Counters of one reactor's tap channel, written only by that reactor.
#[derive(Default)]
pub struct SplitCounters {
    /// Writes sent to both sides, and their bytes.
    pub split: AtomicU64,
    pub split_bytes: AtomicU64,
    /// Writes to the primary only, logged as dirty.
    pub primary_only: AtomicU64,
    /// Writes before the relationship splits (a snapshot transfer carries them).
    pub local: AtomicU64,
    /// Writes refused under StrictSync while out of sync.
    pub refused: AtomicU64,
    /// Writes the secondary failed or refused.
    pub secondary_errors: AtomicU64,
    /// Times a write waited for another write to the same blocks to complete.
    pub overlapped: AtomicU64,
    /// Writes started and finished, for the in-flight count.
    pub started: AtomicU64,
    pub finished: AtomicU64,
}

impl SplitCounters {
    /// Add `n` to counter `a` of this reactor's: one writer, so a load and a store (no locked
    /// instruction on the data path), read by anyone.
    fn add(a: &AtomicU64, n: u64) {
        a.store(a.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
    }

    /// A write is done: everything it did comes before this, for whoever sees the count (one
    /// writer, so a release store, not a locked add).
    fn finish_one(&self) {
        self.finished
            .store(self.finished.load(Ordering::Relaxed) + 1, Ordering::Release);
    }
}

/// Sums of every reactor's [`SplitCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SplitTotals {
    pub split: u64,
    pub split_bytes: u64,
    pub primary_only: u64,
    pub local: u64,
    pub refused: u64,
    pub secondary_errors: u64,
    pub overlapped: u64,
    pub in_flight: u64,
}

/// The tap on one primary volume. Shared by every reactor.
pub struct Splitter {
    name: String,
    drl: Arc<Drl>,
    /// The blocks split writes hold.
    claims: InFlight,
    state: AtomicU8,
    strict: AtomicBool,
    /// The secondary's bdev; none while it is away (a primary restarted while its secondary
    /// was down). Taken when a reactor opens its tap channel, not per write.
    secondary: std::sync::Mutex<Option<Desc>>,
    /// Writes routed `Local` and not yet done.
    local_in_flight: CachePadded<AtomicU64>,
    /// Writes routed to the primary only and not yet done: a cutover waits for them (each
    /// leaves its regions dirty when it ends).
    unsplit_in_flight: CachePadded<AtomicU64>,
    /// Set by the first failure of the secondary since the relationship last looked.
    secondary_failed: AtomicBool,
    /// Why the secondary failed a write, for the relationship's `last_error`.
    failure: FailureNote,
    /// A barrier: new writes wait in their reactor's channel until [`Splitter::release`].
    held: AtomicBool,
    /// Writes wait for the log to cover their regions: the flusher has work.
    flush_wanted: AtomicBool,
    /// The thread that flushes the log, woken when writes wait.
    flusher: std::sync::OnceLock<std::thread::Thread>,
    counters: Box<[CachePadded<SplitCounters>]>,
}

impl Splitter {
    pub fn new(name: &str, drl: Arc<Drl>, secondary: Option<Desc>, strict: bool) -> Splitter {
        Splitter {
            name: name.to_owned(),
            claims: InFlight::new(drl.regions() * drl.region_size()),
            drl,
            state: AtomicU8::new(State::Uninitialized as u8),
            strict: AtomicBool::new(strict),
            secondary: std::sync::Mutex::new(secondary),
            local_in_flight: CachePadded::new(AtomicU64::new(0)),
            unsplit_in_flight: CachePadded::new(AtomicU64::new(0)),
            secondary_failed: AtomicBool::new(false),
            failure: FailureNote::default(),
            held: AtomicBool::new(false),
            flush_wanted: AtomicBool::new(false),
            flusher: std::sync::OnceLock::new(),
            counters: (0..MAX_REACTORS).map(|_| Default::default()).collect(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn state(&self) -> State {
        STATES[self.state.load(Ordering::SeqCst) as usize]
    }

    /// Publish the relationship's state to the data path (the relationship's driver does this
    /// after every transition).
    pub fn set_state(&self, s: State) {
        self.state.store(s as u8, Ordering::SeqCst);
    }

    /// Whether the secondary's bdev is open.
    pub fn has_secondary(&self) -> bool {
        self.secondary
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// The secondary's bdev is here: every reactor's tap channels open their path to it, in
    /// place (the writes they hold stay theirs). Returns once every reactor has.
    pub fn attach_secondary(
        self: &Arc<Self>,
        d: Desc,
        messenger: &Messenger,
    ) -> Result<(), String> {
        *self.secondary.lock().unwrap_or_else(|p| p.into_inner()) = Some(d);
        let (sent, acks) = self.on_each_reactor(messenger, Inner::reopen_secondary);
        for _ in 0..sent {
            acks.recv_timeout(std::time::Duration::from_secs(10))
                .map_err(|_| "a reactor did not open its path to the secondary")?;
        }
        Ok(())
    }

    /// This reactor's path to the secondary: none while it is away, or when it cannot be
    /// reached from here (a failure of the secondary: the split writes' second halves fail,
    /// never the primary's writes).
    fn secondary_path(&self) -> Option<SecondaryPath> {
        let desc = self.secondary.lock().unwrap_or_else(|p| p.into_inner());
        let Some(d) = desc.as_ref() else {
            self.note_secondary_failed();
            return None;
        };
        match d.channel() {
            Ok(ch) => {
                let b = d.bdev();
                Some(SecondaryPath {
                    ch,
                    unmap: b.supports(IoType::Unmap),
                    zeroes: b.supports(IoType::WriteZeroes) || b.supports(IoType::Write),
                    align: b.buf_align(),
                })
            }
            Err(e) => {
                self.secondary_failure(&e, e.errno());
                self.note_secondary_failed();
                None
            }
        }
    }

    pub fn set_strict(&self, strict: bool) {
        self.strict.store(strict, Ordering::SeqCst);
    }

    pub fn drl(&self) -> &Arc<Drl> {
        &self.drl
    }

    /// Writes routed before the relationship splits that are still in flight. After the
    /// state leaves the snapshot-transfer states this only falls: when it reaches 0, every
    /// write not split or logged is on the primary (and so in a diff of the live volume).
    pub fn local_writes(&self) -> u64 {
        self.local_in_flight.load(Ordering::SeqCst)
    }

    /// Writes to the primary only still in flight.
    pub fn unsplit_writes(&self) -> u64 {
        self.unsplit_in_flight.load(Ordering::SeqCst)
    }

    /// Whether the secondary failed a write since the last call (and forget it).
    pub fn take_secondary_failed(&self) -> bool {
        self.secondary_failed.swap(false, Ordering::SeqCst)
    }

    pub fn note_secondary_failed(&self) {
        self.secondary_failed.store(true, Ordering::SeqCst);
    }

    /// Why the secondary failed since the last call, in words, for `last_error`.
    pub fn take_failure(&self) -> Option<String> {
        self.failure.take()
    }

    /// Say why the secondary failed a write (`errno`, negative): logged once per episode (the
    /// flag is still clear), kept for `last_error`.
    fn secondary_failure(&self, e: &dyn std::fmt::Display, errno: i32) {
        self.failure.note(true, errno);
        if !self.secondary_failed.load(Ordering::SeqCst) {
            tracing::warn!(
                relationship = self.name,
                "the secondary failed a write: {e}"
            );
        }
    }

    /// Hold new writes (a barrier, for a snapshot common to both sides): each waits in its
    /// reactor's channel. The caller then waits for [`SplitTotals::in_flight`] to reach 0
    /// (a writer counts itself started before it looks at the barrier, so none slips by).
    pub fn hold(&self) {
        self.held.store(true, Ordering::SeqCst);
    }

    /// Lift the barrier and send the writes that waited on their way, on their reactors.
    pub fn release(self: &Arc<Self>, messenger: &Messenger) {
        self.held.store(false, Ordering::SeqCst);
        self.on_each_reactor(messenger, Inner::unpark);
    }

    /// The thread to wake when writes wait for the log.
    pub fn set_flusher(&self, t: std::thread::Thread) {
        let _ = self.flusher.set(t);
    }

    /// Whether writes asked for a flush since the last call (and forget it).
    pub fn take_flush_wanted(&self) -> bool {
        self.flush_wanted.swap(false, Ordering::SeqCst)
    }

    /// A write waits for the log: wake the flusher (a futex wake, only when it sleeps).
    pub fn want_flush(&self) {
        self.flush_wanted.store(true, Ordering::SeqCst);
        if let Some(t) = self.flusher.get() {
            t.unpark();
        }
    }

    /// A flush landed: on every reactor, issue the writes whose regions it covers.
    pub fn flushed(self: &Arc<Self>, messenger: &Messenger) {
        self.on_each_reactor(messenger, Inner::admit_waiting);
    }

    /// A fence came down: on every reactor, the writes that waited at it go on.
    pub fn unfenced(self: &Arc<Self>, messenger: &Messenger) {
        self.on_each_reactor(messenger, Inner::unpark_fenced);
    }

    /// Run `f` on every tap channel of this splitter, on its reactor; answers how many reactors
    /// were sent to, and where each acknowledges when done.
    fn on_each_reactor(
        self: &Arc<Self>,
        messenger: &Messenger,
        f: fn(&Rc<Inner>),
    ) -> (usize, std::sync::mpsc::Receiver<()>) {
        let reactors = messenger.reactors();
        // Room for every answer, made here: an acknowledgement allocates nothing on a reactor.
        let (tx, rx) = std::sync::mpsc::sync_channel(reactors.len());
        let mut n = 0;
        for r in reactors {
            let sp = Arc::clone(self);
            let ack = tx.clone();
            let sent = messenger.send_patiently(r, move || {
                // One channel at a time, the list not borrowed while `f` runs, and nothing
                // collected: a notice of a log flush allocates nothing.
                let _ = TAPS.with(|taps| {
                    let n = taps.borrow().len();
                    for i in 0..n {
                        let inner = taps.borrow().get(i).and_then(Weak::upgrade);
                        if let Some(inner) = inner.filter(|i| Arc::ptr_eq(&i.sp, &sp)) {
                            f(&inner);
                        }
                    }
                });
                let _ = ack.try_send(());
            });
            match sent {
                Ok(()) => n += 1,
                Err(_) => {
                    tracing::warn!(relationship = self.name, "a reactor did not take a message")
                }
            }
        }
        (n, rx)
    }

    /// Writes the splitter took and has not finished. Each reactor's `finished` is read before
    /// its `started`, so a write that starts and ends between the two reads cannot hide
    /// another one still in flight; a write that waits at a barrier takes its start back.
    pub fn in_flight(&self) -> u64 {
        let finished: u64 = self
            .counters
            .iter()
            .map(|c| c.finished.load(Ordering::SeqCst))
            .sum();
        let started: u64 = self
            .counters
            .iter()
            .map(|c| c.started.load(Ordering::SeqCst))
            .sum();
        started.saturating_sub(finished)
    }

    /// Whether a failure of the secondary waits for the relationship to look (without
    /// taking it).
    pub fn secondary_failed_pending(&self) -> bool {
        self.secondary_failed.load(Ordering::SeqCst)
    }

    /// The data path marked regions dirty: if the pair is already in sync (the cutover came
    /// between), it is not any more, and says so through the failure flag.
    fn dirtied(&self) {
        if self.state() == State::InSync {
            self.note_secondary_failed();
        }
    }

    pub fn totals(&self) -> SplitTotals {
        let mut t = SplitTotals::default();
        for c in self.counters.iter() {
            let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
            t.split += get(&c.split);
            t.split_bytes += get(&c.split_bytes);
            t.primary_only += get(&c.primary_only);
            t.local += get(&c.local);
            t.refused += get(&c.refused);
            t.secondary_errors += get(&c.secondary_errors);
            t.overlapped += get(&c.overlapped);
        }
        t.in_flight = self.in_flight();
        t
    }
}

/// What is set on the primary bdev: the splitter as a write tap.
pub struct SplitTap(pub Arc<Splitter>);

impl WriteTap for SplitTap {
    fn open_channel(&self) -> Result<Rc<dyn TapChannel>, Error> {
        let reactor = reactor::current().ok_or(Error::NotOnReactor)?;
        let inner = Rc::new(Inner {
            sp: Arc::clone(&self.0),
            secondary: RefCell::new(self.0.secondary_path()),
            reactor: reactor.0 as usize,
            ops: RefCell::new(Slab::default()),
            parked: RefCell::new(VecDeque::new()),
            waiting: RefCell::new(VecDeque::new()),
            fenced: RefCell::new(VecDeque::new()),
            later: RefCell::new(VecDeque::new()),
            retrying: RefCell::new(None),
            to_resend: RefCell::new(VecDeque::new()),
            retry_armed: Cell::new(false),
        });
        TAPS.with(|t| {
            // A dead entry's place is taken in place: entries never move, so a notice going
            // through the list by index meets every live one.
            let mut t = t.borrow_mut();
            let me = Rc::downgrade(&inner);
            match t.iter_mut().find(|w| w.strong_count() == 0) {
                Some(dead) => *dead = me,
                None => t.push(me),
            }
        })
        .map_err(|_| Error::NotOnReactor)?;
        Ok(Rc::new(SplitChannel(inner)))
    }
}

/// One write in flight through the splitter.
struct Op {
    cb: Option<IoCallback>,
    /// The client's buffers, back from the primary.
    sgl: Sgl,
    io_type: IoType,
    off: u64,
    len: u64,
    route: Route,
    pending: u8,
    primary: Result<(), IoError>,
    secondary_ok: bool,
}

/// Ops by index, reusing freed slots.
#[derive(Default)]
struct Slab {
    ops: Vec<Option<Op>>,
    free: Vec<usize>,
}

impl Slab {
    fn insert(&mut self, op: Op) -> usize {
        match self.free.pop() {
            Some(i) => {
                self.ops[i] = Some(op);
                i
            }
            None => {
                self.ops.push(Some(op));
                self.ops.len() - 1
            }
        }
    }

    fn remove(&mut self, i: usize) -> Op {
        let op = self.ops[i].take().expect("a live op");
        self.free.push(i);
        op
    }
}

struct Inner {
    sp: Arc<Splitter>,
    /// This reactor's path to the secondary (opened again in place when the secondary comes
    /// back: see [`Splitter::attach_secondary`]).
    secondary: RefCell<Option<SecondaryPath>>,
    reactor: usize,
    ops: RefCell<Slab>,
    /// Writes waiting for a barrier to lift, with the path they came by.
    parked: RefCell<VecDeque<HeldWrite>>,
    /// Writes routed and waiting for the log on disk to cover their regions.
    waiting: RefCell<VecDeque<Waiting>>,
    /// Writes waiting at a fence, not yet routed, with the path they came by.
    fenced: RefCell<VecDeque<HeldWrite>>,
    /// Writes to submit again, not yet routed: another write held their blocks, or the
    /// primary's queue was full when they came back from waiting.
    later: RefCell<VecDeque<HeldWrite>>,
    /// The turn of the held write being submitted again, for its claim.
    retrying: RefCell<Option<WaitTurn>>,
    /// Secondary halves the secondary's channel refused as full: sent again as it drains.
    to_resend: RefCell<VecDeque<Resend>>,
    /// A timer will try the two queues above again.
    retry_armed: Cell<bool>,
}

impl Drop for Inner {
    /// The tap came off this bdev channel (the relationship was deleted, or another tap took
    /// its place) while writes still waited here. None may be lost, and none may hang: each
    /// goes to the primary alone. One that was routed and waited for the log gives its blocks
    /// back and leaves its regions dirty, so that a relationship that still lives copies them.
    /// (Writes in flight hold this channel alive, and so does the retry timer while writes
    /// wait for blocks: those can be here only if the timer could not be armed.)
    fn drop(&mut self) {
        let sp = &self.sp;
        let held = [&mut self.parked, &mut self.fenced, &mut self.later];
        for q in held {
            for w in q.get_mut().drain(..) {
                pass_to_primary(sp, w.primary, w.io);
            }
        }
        for w in self.waiting.get_mut().drain(..) {
            // (A flush never waits for the log: only writes are here.)
            sp.drl.end_write(w.off, w.len, false);
            sp.claims.release(w.off, w.len);
            sp.dirtied();
            if w.route == Route::PrimaryOnly {
                sp.unsplit_in_flight.fetch_sub(1, Ordering::SeqCst);
            }
            sp.counters[self.reactor].finish_one();
            pass_to_primary(sp, w.primary, w.io);
        }
    }
}

/// Issue a write a splitter channel held to the primary alone (past the tap), or fail it if
/// the primary refuses it now.
fn pass_to_primary(sp: &Splitter, primary: Primary, io: BdevIo) {
    primary.unpark();
    if let Err((e, io)) = primary.submit(io) {
        tracing::warn!(
            relationship = sp.name(),
            "a write held as the tap came off: {e}"
        );
        primary.complete(io, Err(IoError::Device(Errno(-e.errno()))));
    }
}

/// A reactor's way to the secondary: a channel of its bdev, and what that bdev can do.
#[derive(Clone)]
struct SecondaryPath {
    ch: Channel,
    unmap: bool,
    zeroes: bool,
    /// The alignment its data buffers need.
    align: usize,
}

/// Why the secondary's channel did not take a write's secondary half.
enum Refused {
    /// Its queue is full: the half (with its view of the data) waits to go again.
    Full(Option<Sgl>),
    Failed(Error),
}

/// A write's secondary half, not yet taken by the secondary's channel.
struct Resend {
    slot: usize,
    io_type: IoType,
    ob: u64,
    nb: u64,
    view: Option<Sgl>,
}

/// How soon a write waiting for another reactor's write (or a full channel) looks again.
const RETRY_AFTER: std::time::Duration = std::time::Duration::from_micros(50);

/// A write held back before it was routed, with the path it came by and, once it has waited
/// for blocks, its turn: a write keeps its turn until it claims its blocks.
struct HeldWrite {
    primary: Primary,
    io: BdevIo,
    turn: Option<WaitTurn>,
}

/// A write's place among the waiters for its blocks ([`InFlight::join`]): it leaves when
/// dropped, on whatever path the write stops waiting.
struct WaitTurn {
    sp: Arc<Splitter>,
    turn: Turn,
}

impl Drop for WaitTurn {
    fn drop(&mut self) {
        self.sp.claims.leave(self.turn);
    }
}

/// A write admitted and routed, waiting for a flush of the log.
struct Waiting {
    primary: Primary,
    io: BdevIo,
    route: Route,
    off: u64,
    len: u64,
}

/// This reactor's splitter channels, so that lifting a barrier finds the writes it held.
static TAPS: ReactorLocal<RefCell<Vec<Weak<Inner>>>> =
    ReactorLocal::new(|| RefCell::new(Vec::new()));

struct SplitChannel(Rc<Inner>);

/// A failure the client sees for a write StrictSync refuses or the secondary failed under
/// StrictSync: the link to the secondary is down.
const STRICT_REFUSED: IoError = IoError::Device(Errno(libc::ENOLINK));

impl TapChannel for SplitChannel {
    fn submit(&self, primary: &Primary, io: BdevIo) -> Result<(), (Error, BdevIo)> {
        let inner = &self.0;
        let sp = &inner.sp;
        // A held write going again brings its turn: it keeps it if held back again, and
        // leaves the waiters (dropping it) once it claims its blocks or fails.
        let turn = inner.retrying.borrow_mut().take();
        let c = &sp.counters[inner.reactor];
        let strict = sp.strict.load(Ordering::SeqCst);
        let bs = primary.block_size() as u64;
        let (io_type, ob, nb) = (io.io_type, io.offset_blocks, io.num_blocks);
        let (off, len) = (ob * bs, nb * bs);
        c.started.fetch_add(1, Ordering::SeqCst);
        if sp.held.load(Ordering::SeqCst) {
            c.started.fetch_sub(1, Ordering::SeqCst);
            primary.park();
            inner.parked.borrow_mut().push_back(HeldWrite {
                primary: primary.clone(),
                io,
                turn,
            });
            return Ok(());
        }
        let route = if io_type == IoType::Flush {
            // A flush covers both sides while they split; it changes no region.
            match route(sp.state(), false, strict) {
                Route::Both => Route::Both,
                _ => {
                    c.finish_one();
                    return primary.submit(io);
                }
            }
        } else {
            let mut state = sp.state();
            if route(state, false, strict) == Route::Local {
                // A write that may go to the primary alone, unlogged, is counted before the
                // state is read again: switching to establishing waits for the last of them.
                // One that splits or is logged needs no count (none in steady state).
                sp.local_in_flight.fetch_add(1, Ordering::SeqCst);
                state = sp.state();
                if route(state, false, strict) != Route::Local {
                    sp.local_in_flight.fetch_sub(1, Ordering::SeqCst);
                }
            }
            if route(state, false, strict) == Route::Local {
                Route::Local
            } else {
                if sp.drl.fenced(off, len) {
                    // The scanner is draining this region: wait (not yet counted anywhere).
                    c.started.fetch_sub(1, Ordering::SeqCst);
                    primary.park();
                    inner.fenced.borrow_mut().push_back(HeldWrite {
                        primary: primary.clone(),
                        io,
                        turn,
                    });
                    return Ok(());
                }
                if !sp.claims.claim(off, len, turn.as_ref().map(|t| t.turn)) {
                    // Another write to these blocks is on its way to the two sides, or an
                    // older one waits for them: this one goes after (not yet counted
                    // anywhere), with a turn from its first wait on.
                    c.started.fetch_sub(1, Ordering::SeqCst);
                    SplitCounters::add(&c.overlapped, 1);
                    let turn = match turn {
                        Some(t) => {
                            // Still waiting: not stale.
                            sp.claims.still_waiting(t.turn);
                            Some(t)
                        }
                        None => sp.claims.join(off, len).map(|turn| WaitTurn {
                            sp: Arc::clone(sp),
                            turn,
                        }),
                    };
                    primary.park();
                    inner.later.borrow_mut().push_back(HeldWrite {
                        primary: primary.clone(),
                        io,
                        turn,
                    });
                    inner.arm_retry();
                    return Ok(());
                }
                let busy = sp.drl.enter(off, len);
                let r = route(state, busy, strict);
                if r == Route::PrimaryOnly {
                    sp.unsplit_in_flight.fetch_add(1, Ordering::SeqCst);
                    sp.drl.mark_dirty(off, len);
                    sp.dirtied();
                }
                r
            }
        };
        match route {
            Route::Local => SplitCounters::add(&c.local, 1),
            Route::PrimaryOnly => SplitCounters::add(&c.primary_only, 1),
            Route::Refuse => SplitCounters::add(&c.refused, 1),
            Route::Both => {
                SplitCounters::add(&c.split_bytes, len);
                SplitCounters::add(&c.split, 1)
            }
        };
        if route == Route::Refuse {
            // Nothing was written anywhere: the regions stay as they were.
            sp.drl.end_write(off, len, true);
            sp.claims.release(off, len);
            c.finish_one();
            primary.complete(io, Err(STRICT_REFUSED));
            return Ok(());
        }
        // Write intent: a write that may leave the sides different is issued only once the
        // log on disk covers its regions.
        let logged = matches!(route, Route::Both | Route::PrimaryOnly) && io_type != IoType::Flush;
        if logged && sp.drl.admit(off, len) == Admit::Wait {
            primary.park();
            inner.waiting.borrow_mut().push_back(Waiting {
                primary: primary.clone(),
                io,
                route,
                off,
                len,
            });
            sp.want_flush();
            return Ok(());
        }
        let issued = inner.issue(primary, io, route, off, len);
        if let (Err((Error::QueueFull { .. }, _)), Some(turn)) = (&issued, turn) {
            // The primary's queue is full: the write gave its blocks back and waits once
            // more, in its place among the waiters (see `submit_again`).
            *inner.retrying.borrow_mut() = Some(turn);
        }
        issued
    }
}

/// What the secondary writes for a write: views of the client's own buffers (nothing copied,
/// no buffer taken, however deep the queue) when they meet the secondary's alignment; else a
/// copy in pool buffers (a client's buffers fit the primary, which may ask for less).
fn data_for_secondary(src: &mut Sgl, len: usize, align: usize) -> Sgl {
    let aligned = src
        .segs()
        .iter()
        .all(|s| s.addr() % align == 0 && s.len() % align == 0);
    if aligned {
        view_of(src, len)
    } else {
        copy_of(src, len)
    }
}

/// A copy of `src`'s first `len` bytes in pool buffers (a fresh buffer only when the pool is
/// empty): one small buffer for a write that fits one (most do), else large ones, so that
/// small writes at high depth do not drain the large pool.
fn copy_of(src: &Sgl, len: usize) -> Sgl {
    let mut out = Sgl::new();
    if len > LARGE_BUF * MAX_SEGS {
        // More than the pool's buffers can carry in one list: one buffer of its own (a
        // write this large is not the steady state the pool is sized for).
        if let Ok(b) = DmaBuf::new(len) {
            let _ = out.push(b, 0, len);
        }
    }
    if len <= SMALL_BUF {
        if let Some(b) = mem::take_small() {
            let _ = out.push(b, 0, len);
        }
    }
    let mut left = if out.is_empty() { len } else { 0 };
    while left > 0 {
        let n = left.min(LARGE_BUF);
        let pushed = match mem::take_large() {
            Some(b) => out.push(b, 0, n),
            None => match DmaBuf::new(n) {
                Ok(b) => out.push(b, 0, n),
                Err(_) => break,
            },
        };
        if pushed.is_err() {
            break;
        }
        left -= n;
    }
    let mut at = 0;
    for seg in src.segs() {
        at += out.copy_at(at, seg.as_slice());
    }
    out
}

/// Views of `src`'s first `len` bytes.
fn view_of(src: &mut Sgl, len: usize) -> Sgl {
    let mut out = Sgl::new();
    let mut left = len;
    for seg in src.segs_mut() {
        if left == 0 {
            break;
        }
        let bytes = seg.as_mut_slice();
        let n = bytes.len().min(left);
        // SAFETY: the client's buffers stay where they are until its request completes, and the
        // splitter completes it only after the secondary's half is done and has dropped this
        // view (the secondary hands its list back at completion; a refused or unsent half drops
        // it first). Both sides only read a write's data: the primary reading the same bytes
        // meanwhile is the exception `ForeignBuf::new` allows.
        let view = unsafe { ForeignBuf::new(bytes.as_mut_ptr(), n) };
        let Some(view) = view else { break };
        if out.push(Buf::Foreign(view), 0, n).is_err() {
            break;
        }
        left -= n;
    }
    out
}

impl Inner {
    /// Issue a routed write: to the primary, and to the secondary when split.
    fn issue(
        self: &Rc<Self>,
        primary: &Primary,
        mut io: BdevIo,
        route: Route,
        off: u64,
        len: u64,
    ) -> Result<(), (Error, BdevIo)> {
        let sp = &self.sp;
        let (io_type, ob, nb) = (io.io_type, io.offset_blocks, io.num_blocks);
        // The secondary's data, taken before the primary owns the buffers.
        let view = if route == Route::Both && io_type == IoType::Write {
            let align = self
                .secondary
                .borrow()
                .as_ref()
                .map_or(1, |p| p.align.max(1));
            Some(data_for_secondary(&mut io.sgl, len as usize, align))
        } else {
            None
        };
        let slot = self.ops.borrow_mut().insert(Op {
            cb: None,
            sgl: Sgl::default(),
            io_type,
            off,
            len,
            route,
            pending: if route == Route::Both { 2 } else { 1 },
            primary: Ok(()),
            secondary_ok: route == Route::Both,
        });
        let held = Rc::clone(self);
        let (pio, cb) = io.with_callback(IoCallback::new(move |d: IoDone| {
            Inner::primary_done(&held, slot, d)
        }));
        self.ops.borrow_mut().ops[slot]
            .as_mut()
            .expect("a live op")
            .cb = Some(cb);
        if let Err((e, pio)) = primary.submit(pio) {
            // Refused before anything was issued: undo, and hand the request back whole.
            let op = self.ops.borrow_mut().remove(slot);
            self.undo(&op);
            sp.counters[self.reactor].finish_one();
            // The view goes before the buffers it looks into go back.
            drop(view);
            let (io, _) = pio.with_callback(op.cb.expect("the client's callback"));
            return Err((e, io));
        }
        if route == Route::Both {
            self.to_secondary(slot, io_type, ob, nb, view);
        }
        Ok(())
    }

    /// Open this reactor's path to the secondary again (it came back).
    fn reopen_secondary(self: &Rc<Self>) {
        *self.secondary.borrow_mut() = self.sp.secondary_path();
    }

    /// Send the writes that waited at a fence through the splitter again.
    fn unpark_fenced(self: &Rc<Self>) {
        self.submit_again(&self.fenced, "a write held at a fence");
    }

    /// Send the writes waiting in `queue` (not yet routed) through the splitter again; any
    /// still held back queue up again.
    fn submit_again(self: &Rc<Self>, queue: &RefCell<VecDeque<HeldWrite>>, what: &str) {
        // Only those waiting now (one held back again goes to the back): popped one at a
        // time, so that a retry on every completion allocates nothing.
        let n = queue.borrow().len();
        let ch = SplitChannel(Rc::clone(self));
        for _ in 0..n {
            let Some(HeldWrite {
                primary,
                mut io,
                turn,
            }) = queue.borrow_mut().pop_front()
            else {
                break;
            };
            primary.unpark();
            io.restamp();
            *self.retrying.borrow_mut() = turn;
            let refused = ch.submit(&primary, io);
            // Its turn, handed back if it is to wait once more.
            let turn = self.retrying.borrow_mut().take();
            self.refused_again(primary, refused, what, turn);
        }
    }

    /// A write that waited was refused as it went again: a full queue is backpressure (it
    /// waits once more, in [`Inner::later`], with its turn if it has one); anything else fails
    /// it.
    fn refused_again(
        self: &Rc<Self>,
        primary: Primary,
        refused: Result<(), (Error, BdevIo)>,
        what: &str,
        turn: Option<WaitTurn>,
    ) {
        match refused {
            Ok(()) => {}
            Err((Error::QueueFull { .. }, io)) => {
                primary.park();
                self.later
                    .borrow_mut()
                    .push_back(HeldWrite { primary, io, turn });
                self.arm_retry();
            }
            Err((e, io)) => {
                tracing::warn!(relationship = self.sp.name(), "{what}: {e}");
                primary.complete(io, Err(IoError::Aborted));
            }
        }
    }

    /// Try the writes waiting for blocks, and the secondary halves waiting for room, again.
    fn retry(self: &Rc<Self>) {
        let n = self.to_resend.borrow().len();
        for _ in 0..n {
            let Some(r) = self.to_resend.borrow_mut().pop_front() else {
                break;
            };
            self.to_secondary(r.slot, r.io_type, r.ob, r.nb, r.view);
        }
        if !self.later.borrow().is_empty() {
            self.submit_again(&self.later, "a write that waited for its blocks");
        }
    }

    /// Make sure a timer tries the waiting queues again: a holder on another reactor does not
    /// tell this one when it is done.
    fn arm_retry(self: &Rc<Self>) {
        if self.retry_armed.replace(true) {
            return;
        }
        let held = Rc::clone(self);
        let armed = reactor::set_timer(RETRY_AFTER, move || {
            held.retry_armed.set(false);
            held.retry();
            let waiting = !held.later.borrow().is_empty() || !held.to_resend.borrow().is_empty();
            if waiting {
                held.arm_retry();
            }
        });
        if let Err(e) = armed {
            // Not on a reactor: only completions here retry.
            self.retry_armed.set(false);
            tracing::warn!(relationship = self.sp.name(), "no retry timer: {e}");
        }
    }

    /// A flush landed: issue the waiting writes it covers; ask for another if some remain.
    fn admit_waiting(self: &Rc<Self>) {
        let n = self.waiting.borrow().len();
        for _ in 0..n {
            let Some(mut w) = self.waiting.borrow_mut().pop_front() else {
                break;
            };
            if self.sp.drl.admit(w.off, w.len) == Admit::Wait {
                self.waiting.borrow_mut().push_back(w);
                continue;
            }
            w.primary.unpark();
            w.io.restamp();
            // Refused, the write gave back what it held: it goes again from the start.
            let refused = self.issue(&w.primary, w.io, w.route, w.off, w.len);
            self.refused_again(w.primary, refused, "a write that waited for the log", None);
        }
        if !self.waiting.borrow().is_empty() {
            self.sp.want_flush();
        }
    }

    /// Send the writes a barrier held on their way (or fail those the primary now refuses).
    fn unpark(self: &Rc<Self>) {
        self.submit_again(&self.parked, "a held write");
    }

    fn to_secondary(
        self: &Rc<Self>,
        slot: usize,
        io_type: IoType,
        ob: u64,
        nb: u64,
        view: Option<Sgl>,
    ) {
        let held = Rc::clone(self);
        let cb = move |d: IoDone| {
            if let Err(e) = &d.status {
                held.sp.secondary_failure(e, e.errno());
            }
            let ok = d.status.is_ok();
            // The views go before the client's buffers can go back.
            drop(d);
            Inner::secondary_done(&held, slot, ok)
        };
        // A handle of its own (no lookup, no allocation): the path may be opened again
        // while this write is on it.
        let Some(path) = self.secondary.borrow().clone() else {
            drop(view);
            if self.secondary_done_now(slot, false) {
                self.finish(slot);
            }
            return;
        };
        let sec = &path.ch;
        let no_data = |r: Result<(), Error>| {
            r.map_err(|e| match e {
                Error::QueueFull { .. } => Refused::Full(None),
                e => Refused::Failed(e),
            })
        };
        let sent = match io_type {
            IoType::Write => match view {
                Some(sgl) if sgl.len() as u64 == nb * sec.bdev().block_size() as u64 => {
                    sec.write(ob, nb, sgl, cb).map_err(|(e, sgl)| match e {
                        Error::QueueFull { .. } => Refused::Full(Some(sgl)),
                        e => Refused::Failed(e),
                    })
                }
                short => {
                    drop(short);
                    Err(Refused::Failed(Error::InvalidArgument(
                        "the secondary's view of the data is short".into(),
                    )))
                }
            },
            IoType::Flush => no_data(sec.flush(ob, nb, cb)),
            IoType::Unmap if path.unmap => no_data(sec.unmap(ob, nb, cb)),
            IoType::Unmap | IoType::WriteZeroes if path.zeroes => {
                no_data(sec.write_zeroes(ob, nb, cb))
            }
            other => Err(Refused::Failed(Error::Unsupported {
                bdev: sec.bdev().name().to_owned(),
                io_type: other,
            })),
        };
        match sent {
            Ok(()) => {}
            Err(Refused::Full(view)) => {
                // Backpressure, not a failure: send it again as the channel drains.
                self.to_resend.borrow_mut().push_back(Resend {
                    slot,
                    io_type,
                    ob,
                    nb,
                    view,
                });
                self.arm_retry();
            }
            Err(Refused::Failed(e)) => {
                self.sp.secondary_failure(&e, e.errno());
                // Counted as a failure of the secondary; the primary's completion finishes
                // the op.
                if self.secondary_done_now(slot, false) {
                    self.finish(slot);
                }
            }
        }
    }

    fn primary_done(self: &Rc<Self>, slot: usize, d: IoDone) {
        {
            let mut ops = self.ops.borrow_mut();
            let op = ops.ops[slot].as_mut().expect("a live op");
            op.primary = d.status;
            op.sgl = d.sgl;
            op.pending -= 1;
            if op.pending > 0 {
                return;
            }
        }
        self.finish(slot);
    }

    fn secondary_done(self: &Rc<Self>, slot: usize, ok: bool) {
        if self.secondary_done_now(slot, ok) {
            self.finish(slot);
        }
    }

    /// Record the secondary's outcome; true when the op is complete.
    fn secondary_done_now(&self, slot: usize, ok: bool) -> bool {
        if !ok {
            SplitCounters::add(&self.sp.counters[self.reactor].secondary_errors, 1);
            self.sp.note_secondary_failed();
        }
        let mut ops = self.ops.borrow_mut();
        let op = ops.ops[slot].as_mut().expect("a live op");
        op.secondary_ok &= ok;
        op.pending -= 1;
        op.pending == 0
    }

    /// Release what admitting `op` took, for an op that was never issued.
    fn undo(&self, op: &Op) {
        match op.route {
            Route::Local => {
                self.sp.local_in_flight.fetch_sub(1, Ordering::SeqCst);
            }
            _ if op.io_type != IoType::Flush => {
                self.sp.drl.end_write(op.off, op.len, true);
                self.sp.claims.release(op.off, op.len);
                if op.route == Route::PrimaryOnly {
                    self.sp.unsplit_in_flight.fetch_sub(1, Ordering::SeqCst);
                }
            }
            _ => {}
        }
    }

    fn finish(self: &Rc<Self>, slot: usize) {
        let mut op = self.ops.borrow_mut().remove(slot);
        let sp = &self.sp;
        let primary_ok = op.primary.is_ok();
        match op.route {
            Route::Local => {
                sp.local_in_flight.fetch_sub(1, Ordering::SeqCst);
            }
            Route::Both if op.io_type == IoType::Flush => {
                if !op.secondary_ok {
                    // What the secondary acknowledged before may not be on its media: the log
                    // no longer knows what differs, so everything does.
                    sp.drl.mark_all_dirty();
                    sp.dirtied();
                }
            }
            _ if op.io_type == IoType::Flush => {}
            // The regions stay clean only if the bytes reached both sides; a primary that
            // failed while the secondary wrote leaves them different too.
            _ => {
                let both = op.route == Route::Both && primary_ok && op.secondary_ok;
                sp.drl.end_write(op.off, op.len, both);
                sp.claims.release(op.off, op.len);
                if !both {
                    sp.dirtied();
                }
                if op.route == Route::PrimaryOnly {
                    sp.unsplit_in_flight.fetch_sub(1, Ordering::SeqCst);
                }
            }
        }
        sp.counters[self.reactor].finish_one();
        let status = match op.primary {
            Err(e) => {
                tracing::debug!(relationship = sp.name(), "the primary failed a write: {e}");
                Err(e)
            }
            Ok(())
                if op.route == Route::Both
                    && !op.secondary_ok
                    && sp.strict.load(Ordering::SeqCst) =>
            {
                Err(STRICT_REFUSED)
            }
            Ok(()) => Ok(()),
        };
        let cb = op.cb.take().expect("the client's callback");
        cb.call(IoDone {
            status,
            sgl: std::mem::take(&mut op.sgl),
        });
        // Blocks came free, and the secondary's channel has room: what waited for either
        // goes now.
        self.retry();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(sgl: &Sgl) -> Vec<u8> {
        sgl.to_vec()
    }

    #[test]
    fn a_write_waiting_for_the_log_when_the_tap_comes_off_goes_to_the_primary_and_stays_dirty() {
        use crate::bdev::malloc::{self, MallocOpts};
        use crate::reactor::sim::Sim;
        use std::cell::Cell;

        let sim = Sim::new(1).unwrap();
        let tag = format!("{}_{:?}", std::process::id(), std::thread::current().id());
        let (p, s) = (format!("tapoff_p_{tag}"), format!("tapoff_s_{tag}"));
        for name in [&p, &s] {
            malloc::create(MallocOpts {
                name: name.clone(),
                num_blocks: 1024,
                block_size: 4096,
                uuid: 0,
            })
            .unwrap();
        }
        // In sync, and nothing of the log on disk yet (no flusher): a write waits for it.
        let drl = Arc::new(Drl::new(4 << 20, super::super::drl::MIN_REGION).unwrap());
        let secondary = crate::bdev::open(&s, true, None).unwrap();
        let sp = Arc::new(Splitter::new("tapoff", drl, Some(secondary), false));
        sp.set_state(State::InSync);
        let pb = crate::bdev::get(&p).unwrap();
        pb.set_tap(Some(Arc::new(SplitTap(Arc::clone(&sp)))))
            .unwrap();
        let done: [Rc<Cell<Option<bool>>>; 2] = Default::default();
        let write = |ch: &Channel, block: u64, byte: u8, done: &Rc<Cell<Option<bool>>>| {
            let mut b = DmaBuf::new(4096).unwrap();
            b.as_mut_slice().fill(byte);
            let done = Rc::clone(done);
            ch.write(block, 1, Sgl::single(b), move |d: IoDone| {
                done.set(Some(d.status.is_ok()))
            })
            .map_err(|_| "submit")
            .unwrap();
        };
        let (desc, ch) = sim.enter(0, || {
            let desc = crate::bdev::open(&p, true, None).unwrap();
            let ch = desc.channel().unwrap();
            write(&ch, 0, 0xA1, &done[0]);
            (desc, ch)
        });
        sim.run_until_idle(100).unwrap();
        assert_eq!(done[0].get(), None, "the write waits for the log");
        assert_eq!(sp.totals().in_flight, 1);

        // The relationship goes: the next write on this channel finds the tap gone.
        pb.set_tap(None).unwrap();
        sim.enter(0, || write(&ch, 8, 0xB2, &done[1]));
        sim.run_until_idle(100).unwrap();
        assert_eq!(done[1].get(), Some(true));
        assert_eq!(
            done[0].get(),
            Some(true),
            "the write that waited went to the primary"
        );
        assert_eq!(sp.totals().in_flight, 0);
        assert!(
            sp.drl().is_dirty(0),
            "its region is dirty: it is not on the secondary"
        );
        let read = sim.enter(0, || {
            let got = Rc::new(RefCell::new(Vec::new()));
            let g = Rc::clone(&got);
            ch.read(
                0,
                1,
                Sgl::single(DmaBuf::new(4096).unwrap()),
                move |d: IoDone| *g.borrow_mut() = d.sgl.to_vec(),
            )
            .map_err(|_| "submit")
            .unwrap();
            got
        });
        sim.run_until_idle(100).unwrap();
        assert_eq!(*read.borrow(), vec![0xA1; 4096]);
        drop((ch, desc));
    }

    #[test]
    fn the_secondary_writes_views_of_aligned_buffers_and_a_copy_of_others() {
        let mut b = DmaBuf::new(8192).unwrap();
        for (i, x) in b.as_mut_slice().iter_mut().enumerate() {
            *x = (i % 251) as u8;
        }
        // Aligned for a secondary that needs 4 KiB: views, the same bytes, nothing copied.
        let mut aligned = Sgl::new();
        aligned.push(b, 0, 4096).unwrap();
        let v = data_for_secondary(&mut aligned, 4096, 4096);
        assert!(matches!(v.segs()[0].buf(), Buf::Foreign(_)));
        assert_eq!(v.segs()[0].addr(), aligned.segs()[0].addr());
        assert_eq!(data(&v), data(&aligned));
        drop(v);
        // 8 bytes in (a malloc primary accepts it): the secondary gets an aligned copy.
        let b = aligned.into_bufs().next().unwrap();
        let mut odd = Sgl::new();
        odd.push(b, 8, 4096).unwrap();
        let c = data_for_secondary(&mut odd, 4096, 4096);
        assert!(!matches!(c.segs()[0].buf(), Buf::Foreign(_)));
        assert_eq!(c.segs()[0].addr() % 4096, 0);
        assert_eq!(c.len(), 4096);
        assert_eq!(data(&c), data(&odd));
    }
}
