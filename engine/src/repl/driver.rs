//! A relationship's driver: the control thread that owns its state machine. It takes the
//! snapshots (here through the store, on the secondary through its RPC or its store), starts
//! transfers and the scanner, watches their atomics and the splitter's failure flag every few
//! milliseconds, publishes the state to the splitter after every transition, and answers the
//! commands the relationship sends it.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::config::{Error, SecondaryControl};
use super::copier::{self, Progress, Work};
use super::flusher::Log;
use super::persist::{self, Record};
use super::relationship::{
    check_secondary, lock, split_lvol, Command, Relationship, Reply, Watcher,
};
use super::splitter::{SplitTap, Splitter};
use super::state::{Event, Machine, State};
use crate::bdev;
use crate::reactor::{Messenger, ReactorId};
use crate::store::Store;

/// The relationship's control thread.
pub(super) struct Driver {
    pub(super) rel: Arc<Relationship>,
    pub(super) store: Store,
    pub(super) messenger: Messenger,
    pub(super) owner: ReactorId,
    pub(super) machine: Machine,
    /// Snapshot names are `repl.<name>.<seq>`.
    pub(super) seq: u64,
    pub(super) transfer: Option<Transfer>,
    pub(super) scanner: Option<Arc<Progress>>,
    /// A snapshot whose transfer failed: the next try sends it again.
    pub(super) pending: Option<String>,
    /// The newest snapshot both sides hold.
    pub(super) last_common: Option<String>,
    /// Bytes of the last transfer, to tell whether the diffs still shrink.
    pub(super) last_diff: u64,
    pub(super) incrementals: u32,
    /// A failed transfer is tried again from here on.
    pub(super) retry_at: Option<Instant>,
    pub(super) next_probe: Instant,
    /// The secondary's bdev came back unfit (said once).
    pub(super) secondary_refused: bool,
    pub(super) log: Arc<Log>,
    /// What the store's record says now: (state, last common snapshot, sequence, diverged).
    pub(super) saved: Option<(State, Option<String>, u64, bool)>,
    /// See [`Record::secondary_diverged`].
    pub(super) secondary_diverged: bool,
    /// See [`Record::id`].
    pub(super) id: String,
    /// Establishing has logged what the last snapshot lacks: only then may it drain.
    pub(super) diff_marked: bool,
}

pub(super) struct Transfer {
    snapshot: String,
    progress: Arc<Progress>,
    bytes: u64,
}

/// How often the driver looks at its copiers and the splitter.
const TICK: Duration = Duration::from_millis(5);
/// How long a failed transfer or an unreachable secondary waits before the next try.
const RETRY: Duration = Duration::from_millis(300);
/// A diff this small ends the incremental transfers (the scanner takes the rest).
const SMALL_DIFF: u64 = 4 << 20;

impl Driver {
    pub(super) fn run(&mut self, rx: Receiver<(Command, Reply)>) {
        loop {
            match rx.recv_timeout(TICK) {
                Ok((Command::Stop, reply)) => {
                    let _ = reply.send(self.stop().map_err(Error::Failed));
                    return;
                }
                Ok((c, reply)) => {
                    // A command is answered once its outcome is on disk.
                    let r = self
                        .command(c)
                        .and_then(|()| self.save().map_err(Error::Failed));
                    let _ = reply.send(r);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let _ = self.stop();
                    return;
                }
            }
            if let Err(e) = self.tick().and_then(|()| self.save()) {
                tracing::warn!(relationship = self.rel.cfg.name, "{e}");
                lock(&self.rel.status).last_error = Some(e);
            }
            self.publish();
        }
    }

    fn apply(&mut self, e: Event) -> Result<State, String> {
        let from = self.machine.state();
        let to = self.machine.apply(&self.rel.cfg.name, e)?;
        // The status moves with the state: a reader who sees the new state there sees the
        // counts that led to it.
        self.publish();
        self.rel.splitter.set_state(to);
        if to != from {
            // Called without the lock: a watcher may watch or unwatch.
            let watchers: Vec<Watcher> = lock(&self.rel.watchers)
                .iter()
                .map(|(_, w)| Arc::clone(w))
                .collect();
            for w in watchers {
                w(&self.rel.cfg.name, from, to);
            }
        }
        Ok(to)
    }

    fn publish(&self) {
        let mut st = lock(&self.rel.status);
        st.state = Some(self.machine.state());
        st.transitions = self.machine.transitions;
        st.log_flushes = self.log.flushes.load(Ordering::Relaxed);
        st.entered = super::state::STATES
            .iter()
            .map(|&s| (s, self.machine.entered(s)))
            .collect();
        if let Some(t) = &self.transfer {
            st.phase_total = t.progress.total.load(Ordering::SeqCst);
            st.phase_done = t.progress.done();
        } else if let Some(sc) = &self.scanner {
            st.resynced_bytes = sc.done();
            st.scanner_fences = sc.fences.load(Ordering::Relaxed);
            st.phase_done = sc.done().saturating_sub(st.phase_base);
        }
    }

    /// A transition the state machine refuses, as the caller sees it.
    fn check(&self, e: Event) -> Result<(), Error> {
        super::state::next(self.machine.state(), e)
            .map(|_| ())
            .map_err(Error::Refused)
    }

    fn command(&mut self, c: Command) -> Result<(), Error> {
        match c {
            Command::Start => {
                let from_common = self.last_common.is_some();
                let e = if from_common {
                    Event::StartFromCommon
                } else {
                    Event::Start
                };
                self.check(e)?;
                self.rel
                    .primary_bdev
                    .set_tap(Some(Arc::new(SplitTap(Arc::clone(&self.rel.splitter)))))
                    .map_err(|e| Error::Busy(e.to_string()))?;
                self.secondary_diverged = from_common;
                self.apply(e)?;
                self.begin_phase();
                Ok(())
            }
            Command::Quiesce => {
                self.check(Event::Quiesce)?;
                Ok(self.quiesce()?)
            }
            Command::Resume => {
                self.check(Event::Resume)?;
                // Quiesced logged every write: the log is what differs.
                self.diff_marked = true;
                self.apply(Event::Resume)?;
                self.begin_phase();
                Ok(())
            }
            Command::Break => {
                self.check(Event::Break)?;
                // Nothing may reach the secondary once it is told it is on its own: stop a
                // transfer, and let the split writes in flight land before answering.
                if let Some(t) = self.transfer.take() {
                    t.progress.stop.store(true, Ordering::SeqCst);
                    self.pending = Some(t.snapshot);
                }
                let sp = Arc::clone(&self.rel.splitter);
                sp.hold();
                let drained = self.drain_writes(&sp, Duration::from_secs(30));
                let r = drained.and_then(|()| self.apply(Event::Break).map_err(Error::Refused));
                sp.release(&self.messenger);
                r.map(|_| ())
            }
            Command::Resync => {
                self.check(Event::Resync)?;
                if self.machine.state() == State::Broken {
                    // The secondary may have been written since the break, and nothing was
                    // logged here: from the common snapshot, with both sides' changes.
                    if self.last_common.is_none() {
                        return Err(Error::Refused(
                            "no snapshot common to both sides to resync from".into(),
                        ));
                    }
                    self.secondary_diverged = true;
                    self.last_diff = u64::MAX;
                    self.incrementals = 0;
                } else {
                    self.diff_marked = true;
                }
                self.rel.splitter.take_secondary_failed();
                self.apply(Event::Resync)?;
                self.begin_phase();
                Ok(())
            }
            Command::Stop => Ok(self.stop()?),
        }
    }

    fn begin_phase(&mut self) {
        let mut st = lock(&self.rel.status);
        st.phase_started = Some(Instant::now());
        st.phase_total = 0;
        st.phase_done = 0;
        st.phase_base = self.scanner.as_ref().map_or(0, |s| s.done());
    }

    fn stop(&mut self) -> Result<(), String> {
        if let Some(t) = self.transfer.take() {
            t.progress.stop.store(true, Ordering::SeqCst);
        }
        if let Some(s) = self.scanner.take() {
            s.stop.store(true, Ordering::SeqCst);
        }
        self.rel
            .primary_bdev
            .set_tap(None)
            .map_err(|e| e.to_string())?;
        // The last common snapshot stays on both sides: a new relationship, either way, can
        // start from it (`common_snapshot`) instead of a baseline.
        for s in self.store.snapshots().map_err(|e| e.to_string())? {
            if s.name.starts_with(&self.snap_prefix()) && Some(&s.name) != self.last_common.as_ref()
            {
                let _ = self.store.delete_snapshot(&s.name);
            }
        }
        let name = self.rel.cfg.name.clone();
        self.store
            .transact(move |c| {
                c.delete_object(&persist::record_object(&name))?;
                c.delete_object(&persist::log_object(&name))
            })
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Put the record in the store when what it says changed, after flushing the log (so
    /// that a record saying "establishing" never stands without the regions it implies).
    fn save(&mut self) -> Result<(), String> {
        let now = (
            self.machine.state(),
            self.last_common.clone(),
            self.seq,
            self.secondary_diverged,
        );
        if self.saved.as_ref() == Some(&now) {
            return Ok(());
        }
        self.log.flush(false)?;
        let cfg = &self.rel.cfg;
        let rec = Record {
            name: cfg.name.clone(),
            id: self.id.clone(),
            primary: cfg.primary.clone(),
            secondary_volume: cfg.secondary_volume.clone(),
            policy: cfg.policy,
            region_size: cfg.region_size,
            state: now.0,
            last_common: now.1.clone(),
            seq: now.2,
            secondary_diverged: now.3,
        };
        self.store
            .put_object(&persist::record_object(&cfg.name), rec.encode())
            .map_err(|e| format!("saving the relationship's record: {e}"))?;
        self.saved = Some(now);
        Ok(())
    }

    /// A primary restarted: tap the volume again (before any client can write), drop the
    /// replication snapshots a crash left besides the common one, and go on from the
    /// recorded state: out of sync with the log read back, or transferring again from the
    /// last common snapshot.
    pub(super) fn resume(&mut self, recovered: u64) -> Result<(), Error> {
        let state = self.machine.state();
        self.rel.splitter.set_state(state);
        if state != State::Uninitialized {
            self.rel
                .primary_bdev
                .set_tap(Some(Arc::new(SplitTap(Arc::clone(&self.rel.splitter)))))
                .map_err(|e| Error::Failed(e.to_string()))?;
        }
        let prefix = self.snap_prefix();
        for s in self
            .store
            .snapshots()
            .map_err(|e| Error::Failed(e.to_string()))?
        {
            if let Some(n) = s
                .name
                .strip_prefix(&prefix)
                .and_then(|n| n.parse::<u64>().ok())
            {
                self.seq = self.seq.max(n);
                if Some(&s.name) != self.last_common.as_ref() {
                    let _ = self.store.delete_snapshot(&s.name);
                }
            }
        }
        tracing::info!(
            relationship = self.rel.cfg.name,
            state = state.name(),
            recovered_dirty_bytes = recovered,
            last_common = self.last_common.as_deref().unwrap_or("(none)"),
            "resuming from the store"
        );
        let mut st = lock(&self.rel.status);
        st.recovered_dirty_bytes = recovered;
        st.last_common_snapshot = self.last_common.clone();
        drop(st);
        self.begin_phase();
        Ok(())
    }

    fn snap_prefix(&self) -> String {
        format!("repl.{}.{}.", self.rel.cfg.name, self.id)
    }

    /// A secondary that was away when the relationship came up: once its bdev is here, open
    /// it, and have every reactor's tap channels send to it.
    fn find_secondary(&mut self) {
        let sp = &self.rel.splitter;
        if sp.has_secondary() {
            return;
        }
        let Ok(d) = bdev::open(&self.rel.cfg.secondary_bdev, true, None) else {
            return;
        };
        if let Err(e) = check_secondary(&self.rel.primary_bdev, &d.bdev()) {
            if !self.secondary_refused {
                self.secondary_refused = true;
                tracing::error!(relationship = self.rel.cfg.name, "{e}");
                lock(&self.rel.status).last_error = Some(e.to_string());
            }
            return;
        }
        if let Err(e) = sp.attach_secondary(d, &self.messenger) {
            tracing::warn!(relationship = self.rel.cfg.name, "{e}");
        }
        tracing::info!(
            relationship = self.rel.cfg.name,
            secondary = self.rel.cfg.secondary_bdev,
            "the secondary is here"
        );
    }

    fn tick(&mut self) -> Result<(), String> {
        self.find_secondary();
        let sp = Arc::clone(&self.rel.splitter);
        let splitting = matches!(
            self.machine.state(),
            State::InSync | State::Establishing | State::Resyncing
        );
        // The flag is taken only where it moves the pair: elsewhere it waits (a quiesce
        // looks at it too).
        if splitting && sp.take_secondary_failed() {
            self.tell_failure();
            self.apply(Event::SecondaryFailed)?;
            self.next_probe = Instant::now() + RETRY;
        }
        match self.machine.state() {
            State::Baseline | State::Incremental => self.transfer_step(),
            State::Establishing if !self.diff_marked => self.establish(),
            State::Establishing | State::Resyncing => {
                self.ensure_scanner()?;
                let drl = sp.drl();
                // Nothing dirty, nothing being copied, and no write to the primary alone in
                // flight (each would leave its regions dirty as it ends).
                let drained = || {
                    drl.dirty_regions() == 0
                        && drl.copying_regions() == 0
                        && sp.unsplit_writes() == 0
                };
                // Resyncing drains into establishing, which (nothing dirty still) drains into
                // in sync: both in one look.
                while drained() && self.machine.state() != State::InSync {
                    if self.apply(Event::Drained)? == State::InSync && !drained() {
                        // A write routed before the cutover dirtied a region after the look:
                        // the pair is not in sync after all.
                        self.apply(Event::SecondaryFailed)?;
                        break;
                    }
                }
                Ok(())
            }
            // Both policies resync by themselves once the secondary answers again.
            State::OutOfSync => {
                if Instant::now() >= self.next_probe {
                    self.next_probe = Instant::now() + RETRY;
                    if self.probe_secondary() {
                        // The probe wrote the secondary's first block back: copy it again in
                        // case a write to it landed in between.
                        sp.drl().mark_dirty(0, 1);
                        self.diff_marked = true;
                        // Failures from before the probe are what took the pair out of sync:
                        // they must not take the resync down as it starts.
                        sp.take_secondary_failed();
                        self.apply(Event::SecondaryBack)?;
                        self.begin_phase();
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

impl Driver {
    fn volume(&self) -> &str {
        split_lvol(&self.rel.cfg.primary).map_or("", |(_, v)| v)
    }

    /// Why the pair is going out of sync, for `last_error` (and the log, when it is news): the
    /// secondary's failure of a client write, or of the scanner's copy.
    fn tell_failure(&self) {
        let why = self
            .rel
            .splitter
            .take_failure()
            .map(|w| format!("a split write failed ({w})"))
            .or_else(|| {
                let w = self.scanner.as_ref()?.failure.take()?;
                Some(format!("a copy failed ({w})"))
            });
        let Some(why) = why else { return };
        let mut st = lock(&self.rel.status);
        if st.last_error.as_deref() != Some(why.as_str()) {
            tracing::warn!(relationship = self.rel.cfg.name, "{why}");
            st.last_error = Some(why);
        }
    }

    fn fail_later(&mut self, e: String) -> Result<(), String> {
        self.retry_at = Some(Instant::now() + RETRY);
        self.apply(Event::SecondaryFailed)?;
        Err(e)
    }

    fn transfer_step(&mut self) -> Result<(), String> {
        if self.retry_at.is_some_and(|t| Instant::now() < t) {
            return Ok(());
        }
        self.retry_at = None;
        let Some(t) = &self.transfer else {
            return match self.start_transfer() {
                Ok(()) => Ok(()),
                Err(e) => self.fail_later(e),
            };
        };
        if !t.progress.finished.load(Ordering::SeqCst) {
            return Ok(());
        }
        let t = self.transfer.take().expect("a transfer");
        if t.progress.failed.load(Ordering::SeqCst) {
            self.pending = Some(t.snapshot.clone());
            let why = t
                .progress
                .failure
                .take()
                .unwrap_or_else(|| "stopped".into());
            return self.fail_later(format!(
                "the transfer of {} failed ({why}); trying again",
                t.snapshot
            ));
        }
        // The matching snapshot on the secondary: from now on it is the consistent image there.
        if let Err(e) = self.secondary_snapshot(&t.snapshot) {
            self.pending = Some(t.snapshot.clone());
            return self.fail_later(e);
        }
        if let Some(old) = self.last_common.replace(t.snapshot.clone()) {
            self.drop_common(&old);
        }
        self.secondary_diverged = false;
        {
            let mut st = lock(&self.rel.status);
            st.bytes_transferred += t.bytes;
            st.transfers.push(t.bytes);
            st.transfer_secs
                .push(t.progress.elapsed_us.load(Ordering::SeqCst) as f64 / 1e6);
            st.last_common_snapshot = Some(t.snapshot.clone());
        }
        let from = self.machine.state();
        let shrinking = from == State::Baseline
            || (t.bytes < self.last_diff
                && t.bytes > SMALL_DIFF
                && self.incrementals < self.rel.cfg.max_incrementals);
        if from == State::Incremental {
            self.incrementals += 1;
        }
        self.last_diff = t.bytes;
        if self.apply(Event::Transferred { shrinking })? == State::Establishing {
            self.diff_marked = false;
            self.establish()?;
        }
        Ok(())
    }

    fn start_transfer(&mut self) -> Result<(), String> {
        let vol = self.volume().to_owned();
        let snap = match self.pending.take() {
            Some(s) => s,
            None => {
                self.seq += 1;
                let s = format!("{}{}", self.snap_prefix(), self.seq);
                self.store
                    .snapshot(&s, Some(&vol))
                    .map_err(|e| e.to_string())?;
                s
            }
        };
        // Keep the snapshot for the next try whatever fails from here.
        self.pending = Some(snap.clone());
        let diff = self
            .store
            .block_diff(self.last_common.as_deref(), Some(&snap), &vol)
            .map_err(|e| e.to_string())?;
        let cs = diff.cluster_size as u64;
        let mut extents: Vec<(u64, u64)> =
            diff.runs.iter().map(|&(f, n)| (f * cs, n * cs)).collect();
        if self.secondary_diverged {
            let base = self
                .last_common
                .clone()
                .ok_or("a diverged secondary without a common snapshot")?;
            let theirs = self.secondary_changed_since(&base)?;
            tracing::info!(
                relationship = self.rel.cfg.name,
                bytes = theirs.iter().map(|e| e.1).sum::<u64>(),
                "the secondary changed since {base}: those extents go too"
            );
            extents = merge_extents(&extents, &theirs);
        }
        let src = bdev::open(&format!("{}/{snap}", self.store.name()), false, None)
            .map_err(|e| e.to_string())?;
        let dst =
            bdev::open(&self.rel.cfg.secondary_bdev, true, None).map_err(|e| e.to_string())?;
        let progress = copier::start(
            &self.messenger,
            self.owner,
            src,
            dst,
            Work::Extents(extents),
            self.rel.cfg.copy,
        )?;
        let bytes = progress.total.load(Ordering::SeqCst);
        tracing::info!(
            relationship = self.rel.cfg.name,
            snapshot = snap,
            base = self.last_common.as_deref().unwrap_or("(none)"),
            bytes,
            "snapshot transfer"
        );
        self.pending = None;
        self.transfer = Some(Transfer {
            snapshot: snap,
            progress,
            bytes,
        });
        self.begin_phase();
        Ok(())
    }

    /// Switch to splitting: the state is already Establishing (writes split or are logged).
    /// Wait for the last writes routed before the switch, then log what differs between the
    /// last common snapshot and the live volume, for the scanner.
    fn establish(&mut self) -> Result<(), String> {
        let sp = &self.rel.splitter;
        let t0 = Instant::now();
        while sp.local_writes() > 0 {
            if t0.elapsed() > Duration::from_secs(60) {
                return Err("writes routed before establishing did not finish in 60 s".into());
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let vol = self.volume().to_owned();
        let diff = self
            .store
            .block_diff(self.last_common.as_deref(), None, &vol)
            .map_err(|e| e.to_string())?;
        let cs = diff.cluster_size as u64;
        for &(first, n) in &diff.runs {
            sp.drl().mark_dirty(first * cs, n * cs);
        }
        tracing::info!(
            relationship = self.rel.cfg.name,
            dirty_bytes = copier::dirty_bytes(sp.drl()),
            "establishing: the scanner drains what the last snapshot lacks"
        );
        self.diff_marked = true;
        self.begin_phase();
        self.ensure_scanner()
    }

    fn ensure_scanner(&mut self) -> Result<(), String> {
        if self.scanner.is_some() {
            return Ok(());
        }
        let src = bdev::open(&self.rel.cfg.primary, false, None).map_err(|e| e.to_string())?;
        let dst =
            bdev::open(&self.rel.cfg.secondary_bdev, true, None).map_err(|e| e.to_string())?;
        let p = copier::start(
            &self.messenger,
            self.owner,
            src,
            dst,
            Work::Dirty(Arc::clone(&self.rel.splitter)),
            self.rel.cfg.copy,
        )?;
        self.scanner = Some(p);
        lock(&self.rel.status).phase_base = 0;
        Ok(())
    }

    /// Whether the secondary takes I/O again: its first block read and written back (a read
    /// alone passes a device that fails only writes). The block is the secondary's own, so
    /// writing it back changes nothing.
    fn probe_secondary(&self) -> bool {
        let Ok(desc) = bdev::open(&self.rel.cfg.secondary_bdev, true, None) else {
            return false;
        };
        let (tx, rx) = mpsc::channel();
        let sent = self.messenger.send_patiently(self.owner, move || {
            let fail = tx.clone();
            let started = (|| {
                let ch = desc.channel().ok()?;
                let bs = ch.bdev().block_size() as usize;
                let buf = crate::mem::DmaBuf::new(bs).ok()?;
                let again = ch.clone();
                ch.read(
                    0,
                    1,
                    crate::mem::Sgl::single(buf),
                    move |d: crate::bdev::IoDone| {
                        let _ = &desc;
                        if d.status.is_err() {
                            let _ = tx.send(false);
                            return;
                        }
                        let tx2 = tx.clone();
                        let wrote = again.write(0, 1, d.sgl, move |d: crate::bdev::IoDone| {
                            let _ = tx2.send(d.status.is_ok());
                        });
                        if wrote.is_err() {
                            let _ = tx.send(false);
                        }
                    },
                )
                .ok()
            })();
            if started.is_none() {
                let _ = fail.send(false);
            }
        });
        sent.is_ok() && rx.recv_timeout(Duration::from_secs(3)).unwrap_or(false)
    }

    /// The barrier: hold new writes, wait for those in flight, snapshot both sides, and let
    /// the writes go on, logged (Quiesced). The pause is measured.
    fn quiesce(&mut self) -> Result<(), String> {
        let sp = Arc::clone(&self.rel.splitter);
        let t0 = Instant::now();
        sp.hold();
        let result = (|| {
            self.drain_writes(&sp, Duration::from_secs(5))
                .map_err(|e| e.to_string())?;
            // A common snapshot only of sides that are equal now.
            let drl = sp.drl();
            if sp.secondary_failed_pending() || drl.dirty_regions() > 0 || drl.copying_regions() > 0
            {
                return Err("the secondary failed a write just now: not quiesced".to_string());
            }
            self.seq += 1;
            let snap = format!("{}{}", self.snap_prefix(), self.seq);
            let vol = self.volume().to_owned();
            self.store
                .snapshot(&snap, Some(&vol))
                .map_err(|e| e.to_string())?;
            if let Err(e) = self.secondary_snapshot(&snap) {
                let _ = self.store.delete_snapshot(&snap);
                return Err(e);
            }
            self.apply(Event::Quiesce)?;
            Ok(snap)
        })();
        sp.release(&self.messenger);
        let pause = t0.elapsed().as_micros() as u64;
        let snap = result?;
        if let Some(old) = self.last_common.replace(snap.clone()) {
            self.drop_common(&old);
        }
        let mut st = lock(&self.rel.status);
        st.max_pause_us = st.max_pause_us.max(pause);
        st.last_common_snapshot = Some(snap);
        Ok(())
    }

    /// With the barrier up, wait for the writes the splitter took to finish.
    fn drain_writes(&self, sp: &Splitter, within: Duration) -> Result<(), Error> {
        let t0 = Instant::now();
        while sp.in_flight() > 0 {
            if t0.elapsed() > within {
                return Err(Error::Busy(format!(
                    "writes in flight did not finish in {within:?}"
                )));
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        Ok(())
    }

    /// A common snapshot a newer one replaced: gone on both sides (a failure only costs space).
    fn drop_common(&self, name: &str) {
        if let Err(e) = self.store.delete_snapshot(name) {
            tracing::warn!(
                relationship = self.rel.cfg.name,
                "deleting {name} here: {e}"
            );
        }
        if let Err(e) = self.secondary_delete_snapshot(name) {
            tracing::warn!(
                relationship = self.rel.cfg.name,
                "deleting {name} on the secondary: {e}"
            );
        }
    }

    fn secondary_snapshot(&self, name: &str) -> Result<(), String> {
        let (store, vol) = split_lvol(&self.rel.cfg.secondary_volume)?;
        match &self.rel.cfg.control {
            SecondaryControl::Local => Store::find(store)
                .and_then(|s| s.snapshot(name, Some(vol)))
                .map(|_| ())
                .map_err(|e| format!("snapshot {name} on the secondary: {e}")),
            SecondaryControl::Remote { socket } => crate::rpc::client::call(
                socket,
                "bdev_lvol_snapshot",
                &json!({"lvol_name": self.rel.cfg.secondary_volume, "snapshot_name": name}),
                Duration::from_secs(30),
            )
            .map(|_| ())
            .map_err(|e| format!("snapshot {name} on the secondary: {e}")),
        }
    }

    /// The extents of the secondary volume that changed since snapshot `base` (bytes).
    fn secondary_changed_since(&self, base: &str) -> Result<Vec<(u64, u64)>, String> {
        let (store, vol) = split_lvol(&self.rel.cfg.secondary_volume)?;
        let diff = match &self.rel.cfg.control {
            SecondaryControl::Local => Store::find(store)
                .and_then(|s| s.block_diff(Some(base), None, vol))
                .map(|d| d.to_json())
                .map_err(|e| e.to_string()),
            SecondaryControl::Remote { socket } => crate::rpc::client::call(
                socket,
                "store_block_diff",
                &json!({"lvs_name": store, "volume": vol, "from": base}),
                Duration::from_secs(60),
            )
            .map_err(|e| e.to_string()),
        }
        .map_err(|e| format!("what changed on the secondary since {base}: {e}"))?;
        let extents = diff["extents"]
            .as_array()
            .ok_or("a block diff without extents")?;
        extents
            .iter()
            .map(|e| match (e["offset"].as_u64(), e["length"].as_u64()) {
                (Some(o), Some(l)) => Ok((o, l)),
                _ => Err(format!("a block diff extent {e}")),
            })
            .collect()
    }

    fn secondary_delete_snapshot(&self, name: &str) -> Result<(), String> {
        let (store, _) = split_lvol(&self.rel.cfg.secondary_volume)?;
        match &self.rel.cfg.control {
            SecondaryControl::Local => Store::find(store)
                .and_then(|s| s.delete_snapshot(name))
                .map_err(|e| e.to_string()),
            SecondaryControl::Remote { socket } => crate::rpc::client::call(
                socket,
                "bdev_lvol_delete",
                &json!({"name": format!("{store}/{name}")}),
                Duration::from_secs(30),
            )
            .map(|_| ())
            .map_err(|e| e.to_string()),
        }
    }
}

/// The union of two ascending lists of byte extents, ascending and without overlaps.
pub fn merge_extents(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut all: Vec<(u64, u64)> = a.iter().chain(b).copied().filter(|e| e.1 > 0).collect();
    all.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(all.len());
    for (off, len) in all {
        match out.last_mut() {
            Some((o, l)) if off <= *o + *l => *l = (*l).max(off + len - *o),
            _ => out.push((off, len)),
        }
    }
    out
}
