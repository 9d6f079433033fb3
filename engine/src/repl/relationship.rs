//! A relationship: a primary volume here, a secondary volume on another engine, and the driver
//! that moves them through the lifecycle (ARCHITECTURE.md, "Relationship lifecycle").
//!
//! **Who does what.** The data path is the splitter ([`super::splitter`]) on the reactors that
//! own the client connections; the copying is a copier ([`super::copier`]) on the owner
//! reactor. The driver is a control thread per relationship: it owns the state machine, takes
//! the snapshots (here through the store, on the secondary through its RPC), starts transfers
//! and the scanner, watches their atomics and the splitter's failure flag every few
//! milliseconds, and publishes the state to the splitter after every transition. Commands
//! (`repl_*` RPCs, the C ABI) reach it through a channel and wait for its answer; reading the
//! status takes a mutex no I/O touches.
//!
//! **The secondary** is reached twice: its volume through a bdev here (the `nvmf` bdev for a
//! remote engine; any bdev for one in this process), and its control through its RPC socket
//! (`bdev_lvol_snapshot`, `bdev_lvol_delete`), or directly when its store is in this process.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::copier::{self, CopyOpts, Progress, Work};
use super::drl::{Drl, DEFAULT_REGION};
use super::persist::{self, Record};
use super::splitter::{SplitTap, Splitter};
use super::state::{Event, Machine, State};
use crate::bdev::{self, Desc};
use crate::reactor::{Messenger, ReactorId};
use crate::store::Store;

/// What happens to client writes while the secondary cannot take them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Writes succeed on the primary and are logged; the pair resyncs when the secondary is
    /// back.
    Sync,
    /// Writes fail while the pair is out of sync.
    StrictSync,
}

impl Policy {
    pub fn name(self) -> &'static str {
        match self {
            Policy::Sync => "sync",
            Policy::StrictSync => "strict_sync",
        }
    }

    pub fn parse(s: &str) -> Option<Policy> {
        match s {
            "sync" => Some(Policy::Sync),
            "strict_sync" | "strictsync" => Some(Policy::StrictSync),
            _ => None,
        }
    }
}

/// How the primary drives the secondary's store.
#[derive(Clone)]
pub enum SecondaryControl {
    /// Another tandemd: its RPC socket.
    Remote { socket: PathBuf },
    /// A store in this process.
    Local,
}

#[derive(Clone)]
pub struct Config {
    pub name: String,
    /// The primary volume's bdev, `<store>/<volume>`.
    pub primary: String,
    /// The bdev here that reaches the secondary volume.
    pub secondary_bdev: String,
    /// The secondary volume as its own engine names it, `<store>/<volume>`.
    pub secondary_volume: String,
    pub control: SecondaryControl,
    pub policy: Policy,
    pub region_size: u64,
    pub copy: CopyOpts,
    /// Incremental transfers at most before establishing, however the diffs go.
    pub max_incrementals: u32,
    /// A snapshot both volumes hold (left by an earlier relationship, either way): starting
    /// sends only what changed since, on either side, instead of a baseline.
    pub common_snapshot: Option<String>,
}

impl Config {
    pub fn new(name: &str, primary: &str, secondary_bdev: &str, secondary_volume: &str) -> Config {
        Config {
            name: name.to_owned(),
            primary: primary.to_owned(),
            secondary_bdev: secondary_bdev.to_owned(),
            secondary_volume: secondary_volume.to_owned(),
            control: SecondaryControl::Local,
            policy: Policy::Sync,
            region_size: DEFAULT_REGION,
            copy: CopyOpts::default(),
            max_incrementals: 8,
            common_snapshot: None,
        }
    }
}

/// What the driver publishes after every step, for `repl_get`.
#[derive(Debug, Clone, Default)]
pub struct Status {
    pub state: Option<State>,
    pub transitions: u64,
    pub entered: Vec<(State, u64)>,
    pub last_common_snapshot: Option<String>,
    /// Bytes copied to the secondary by snapshot transfers and by the scanner, in total.
    pub bytes_transferred: u64,
    /// The transfer or resync under way: bytes to copy and copied.
    pub phase_total: u64,
    pub phase_done: u64,
    pub phase_started: Option<Instant>,
    /// Bytes each transfer sent, in order (baseline first), and the seconds each took.
    pub transfers: Vec<u64>,
    pub transfer_secs: Vec<f64>,
    /// Bytes the scanner copied, in total.
    pub resynced_bytes: u64,
    /// The scanner's total when the phase under way began.
    pub phase_base: u64,
    /// The longest pause of client writes (a quiesce barrier), in microseconds.
    pub max_pause_us: u64,
    pub last_error: Option<String>,
    /// Dirty bytes the log on disk held when the primary restarted.
    pub recovered_dirty_bytes: u64,
    /// Flushes of the dirty region log to the store.
    pub log_flushes: u64,
    /// Regions the scanner fenced to copy them.
    pub scanner_fences: u64,
}

enum Command {
    Start,
    Quiesce,
    Resume,
    Break,
    Resync,
    Stop,
}

type Reply = Sender<Result<(), Error>>;

/// Why a relationship operation was refused or failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Exists(String),
    /// A parameter or the configuration is wrong.
    #[error("{0}")]
    Invalid(String),
    /// The operation does not apply in the relationship's state.
    #[error("{0}")]
    Refused(String),
    /// Something else holds what it needs (the volume, or writes that would not drain).
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    Failed(String),
}

impl Error {
    /// The negative errno a C caller (and a JSON-RPC error code) carries.
    pub fn errno(&self) -> i32 {
        -match self {
            Error::NotFound(_) => libc::ENOENT,
            Error::Exists(_) => libc::EEXIST,
            Error::Invalid(_) => libc::EINVAL,
            Error::Refused(_) => libc::EPERM,
            Error::Busy(_) => libc::EBUSY,
            Error::Failed(_) => libc::EIO,
        }
    }
}

impl From<String> for Error {
    fn from(s: String) -> Error {
        Error::Failed(s)
    }
}

pub struct Relationship {
    cfg: Config,
    splitter: Arc<Splitter>,
    primary_bdev: bdev::Bdev,
    status: Mutex<Status>,
    commands: Mutex<Option<Sender<(Command, Reply)>>>,
    driver: Mutex<Option<JoinHandle<()>>>,
    /// Callbacks told of every transition (the C ABI's), by id.
    watchers: Mutex<Vec<(u64, Watcher)>>,
}

/// Told `(relationship, from, to)` on every transition, from the driver's thread.
pub type Watcher = Arc<dyn Fn(&str, State, State) + Send + Sync>;

fn registry() -> MutexGuard<'static, HashMap<String, Arc<Relationship>>> {
    static R: OnceLock<Mutex<HashMap<String, Arc<Relationship>>>> = OnceLock::new();
    R.get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Split `<store>/<volume>`.
fn split_lvol(name: &str) -> Result<(&str, &str), String> {
    name.split_once('/')
        .filter(|(s, v)| !s.is_empty() && !v.is_empty())
        .ok_or_else(|| format!("{name:?} is not <store>/<volume>"))
}

/// Make a relationship (Uninitialized): checks that both volumes exist with the same geometry,
/// and starts its driver.
/// Whether `sb` can be `primary`'s secondary.
fn check_secondary(primary: &bdev::Bdev, sb: &bdev::Bdev) -> Result<(), Error> {
    if sb.uuid() == primary.uuid() || sb.name() == primary.name() {
        return Err(Error::Invalid(format!(
            "{} cannot be its own secondary",
            primary.name()
        )));
    }
    if sb.has_tap() {
        return Err(Error::Busy(format!(
            "{} is the primary of a relationship: it cannot be a secondary too",
            sb.name()
        )));
    }
    if sb.block_size() != primary.block_size() || sb.size_bytes() < primary.size_bytes() {
        return Err(Error::Invalid(format!(
            "the secondary {} ({} blocks of {} bytes) cannot hold the primary {} ({} blocks of {} bytes)",
            sb.name(),
            sb.num_blocks(),
            sb.block_size(),
            primary.name(),
            primary.num_blocks(),
            primary.block_size()
        )));
    }
    Ok(())
}

pub fn create(
    cfg: Config,
    messenger: Messenger,
    owner: ReactorId,
) -> Result<Arc<Relationship>, Error> {
    if cfg.name.is_empty() || cfg.name.len() > 64 || cfg.name.contains(['/', '\0', '.']) {
        return Err(Error::Invalid(format!(
            "{:?}: a relationship's name is 1 to 64 bytes without '/', '.' or NUL",
            cfg.name
        )));
    }
    // Checked and taken under one lock: two creates cannot both pass.
    let mut reg = registry();
    if reg.contains_key(&cfg.name) {
        return Err(Error::Exists(format!(
            "a relationship named {:?} exists",
            cfg.name
        )));
    }
    if reg.values().any(|r| r.cfg.primary == cfg.primary) {
        return Err(Error::Exists(format!(
            "{} is already the primary of a relationship",
            cfg.primary
        )));
    }
    let (store_name, volume) = split_lvol(&cfg.primary).map_err(Error::Invalid)?;
    split_lvol(&cfg.secondary_volume).map_err(Error::Invalid)?;
    let store = Store::find(store_name).map_err(|e| Error::NotFound(e.to_string()))?;
    if !store
        .volumes()
        .map_err(|e| Error::Failed(e.to_string()))?
        .iter()
        .any(|v| v.name == volume)
    {
        return Err(Error::NotFound(format!(
            "no volume {volume:?} in store {store_name}"
        )));
    }
    if let Some(c) = &cfg.common_snapshot {
        let snaps = store
            .snapshots()
            .map_err(|e| Error::Failed(e.to_string()))?;
        if !snaps.iter().any(|s| &s.name == c) {
            return Err(Error::NotFound(format!(
                "no snapshot {c:?} in store {store_name}"
            )));
        }
    }
    let primary = bdev::get(&cfg.primary)
        .ok_or_else(|| Error::NotFound(format!("no bdev named {:?}", cfg.primary)))?;
    let opened = bdev::open(&cfg.secondary_bdev, true, None);
    if let Ok(d) = &opened {
        check_secondary(&primary, &d.bdev())?;
    }
    if cfg.copy.depth == 0 || cfg.copy.depth > 64 {
        return Err(Error::Invalid(format!(
            "copy depth {}: 1 to 64",
            cfg.copy.depth
        )));
    }
    // A record in the store: this relationship existed before the primary restarted.
    let failed = |e: crate::store::Error| Error::Failed(e.to_string());
    let record = match store
        .get_object(&persist::record_object(&cfg.name))
        .map_err(failed)?
    {
        Some(b) => Some(Record::decode(&b).map_err(Error::Invalid)?),
        None => None,
    };
    let mut cfg = cfg;
    if let Some(r) = &record {
        if r.primary != cfg.primary || r.secondary_volume != cfg.secondary_volume {
            return Err(Error::Invalid(format!(
                "the store holds relationship {:?} from {} to {}, not from {} to {}",
                cfg.name, r.primary, r.secondary_volume, cfg.primary, cfg.secondary_volume
            )));
        }
        // The log on disk has the recorded geometry.
        cfg.region_size = r.region_size;
    }
    // A relationship that existed before the primary restarted comes up without its
    // secondary when that is away: out of sync, until the secondary's bdev appears.
    let secondary: Option<Desc> = match (opened, &record) {
        (Ok(d), _) => Some(d),
        (Err(e), Some(_)) => {
            tracing::warn!(
                relationship = cfg.name,
                "the secondary is away ({e}): out of sync until it is back"
            );
            None
        }
        (Err(e), None) => return Err(Error::NotFound(e.to_string())),
    };
    let drl = Arc::new(Drl::new(primary.size_bytes(), cfg.region_size).map_err(Error::Invalid)?);
    let mut recovered = 0;
    if record.is_some() {
        if let Some(b) = store
            .get_object(&persist::log_object(&cfg.name))
            .map_err(failed)?
        {
            let (rs, regions, set) = super::drl::decode(&b).map_err(Error::Invalid)?;
            if rs != drl.region_size() || regions != drl.regions() {
                return Err(Error::Invalid(format!(
                    "the log on disk has {regions} regions of {rs} bytes; the volume needs {} of {}",
                    drl.regions(),
                    drl.region_size()
                )));
            }
            drl.recover(&set).map_err(Error::Invalid)?;
            recovered = drl.dirty_regions() * drl.region_size();
        }
    }
    let splitter = Arc::new(Splitter::new(
        &cfg.name,
        drl,
        secondary,
        cfg.policy == Policy::StrictSync,
    ));
    let (tx, rx) = mpsc::channel();
    let rel = Arc::new(Relationship {
        cfg: cfg.clone(),
        splitter,
        primary_bdev: primary,
        status: Mutex::new(Status {
            state: Some(State::Uninitialized),
            ..Default::default()
        }),
        commands: Mutex::new(Some(tx)),
        driver: Mutex::new(None),
        watchers: Mutex::new(Vec::new()),
    });
    let log = Arc::new(Log {
        drl: Arc::clone(rel.splitter.drl()),
        store: store.clone(),
        object: persist::log_object(&cfg.name),
        lock: Mutex::new(()),
        flushes: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let state = record
        .as_ref()
        .map_or(State::Uninitialized, Record::resume_state);
    let id = match &record {
        Some(r) => r.id.clone(),
        None => format!("{:08x}", (crate::bdev::random_uuid() >> 64) as u32),
    };
    let mut d = Driver {
        rel: Arc::clone(&rel),
        store,
        messenger: messenger.clone(),
        owner,
        machine: Machine::at(state),
        seq: record.as_ref().map_or(0, |r| r.seq),
        transfer: None,
        scanner: None,
        pending: None,
        last_common: match &record {
            Some(r) => r.last_common.clone(),
            None => cfg.common_snapshot.clone(),
        },
        secondary_diverged: record.as_ref().is_some_and(|r| r.secondary_diverged),
        last_diff: u64::MAX,
        incrementals: 0,
        retry_at: None,
        next_probe: Instant::now(),
        secondary_refused: false,
        log: Arc::clone(&log),
        saved: None,
        id,
        diff_marked: false,
    };
    if record.is_some() {
        d.resume(recovered)?;
    }
    let flusher = {
        let (log, sp, m) = (Arc::clone(&log), Arc::clone(&rel.splitter), messenger);
        std::thread::Builder::new()
            .name(format!("repl-{}-log", cfg.name))
            .spawn(move || log.run(&sp, &m))
            .map_err(|e| Error::Failed(e.to_string()))?
    };
    rel.splitter.set_flusher(flusher.thread().clone());
    let handle = std::thread::Builder::new()
        .name(format!("repl-{}", cfg.name))
        .spawn(move || {
            d.run(rx);
            log.stop.store(true, Ordering::SeqCst);
            flusher.thread().unpark();
            let _ = flusher.join();
        })
        .map_err(|e| Error::Failed(e.to_string()))?;
    *lock(&rel.driver) = Some(handle);
    reg.insert(cfg.name.clone(), Arc::clone(&rel));
    Ok(rel)
}

pub fn get(name: &str) -> Option<Arc<Relationship>> {
    registry().get(name).cloned()
}

pub fn list() -> Vec<Arc<Relationship>> {
    let mut v: Vec<_> = registry().values().cloned().collect();
    v.sort_by(|a, b| a.cfg.name.cmp(&b.cfg.name));
    v
}

/// Stop the relationship's driver, take the splitter off the primary, and forget it. The
/// secondary keeps its last consistent image; the primary's replication snapshots go.
pub fn delete(name: &str) -> Result<(), Error> {
    let rel = registry()
        .remove(name)
        .ok_or_else(|| Error::NotFound(format!("no relationship named {name:?}")))?;
    let r = rel.command(Command::Stop);
    if let Some(h) = lock(&rel.driver).take() {
        let _ = h.join();
    }
    *lock(&rel.commands) = None;
    r
}

impl Relationship {
    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn splitter(&self) -> &Arc<Splitter> {
        &self.splitter
    }

    pub fn state(&self) -> State {
        self.splitter.state()
    }

    pub fn status(&self) -> Status {
        lock(&self.status).clone()
    }

    fn command(&self, c: Command) -> Result<(), Error> {
        let gone = || Error::NotFound(format!("relationship {:?} is deleted", self.cfg.name));
        let tx = lock(&self.commands).clone().ok_or_else(gone)?;
        let (rtx, rrx) = mpsc::channel();
        tx.send((c, rtx)).map_err(|_| gone())?;
        rrx.recv_timeout(Duration::from_secs(120)).map_err(|_| {
            Error::Failed(format!("relationship {:?} did not answer", self.cfg.name))
        })?
    }

    pub fn start(&self) -> Result<(), Error> {
        self.command(Command::Start)
    }
    pub fn quiesce(&self) -> Result<(), Error> {
        self.command(Command::Quiesce)
    }
    pub fn resume(&self) -> Result<(), Error> {
        self.command(Command::Resume)
    }
    pub fn break_off(&self) -> Result<(), Error> {
        self.command(Command::Break)
    }
    pub fn resync(&self) -> Result<(), Error> {
        self.command(Command::Resync)
    }

    /// Be told of every transition from now on; the id takes it back ([`Self::unwatch`]).
    pub fn watch(&self, w: Watcher) -> u64 {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        lock(&self.watchers).push((id, w));
        id
    }

    pub fn unwatch(&self, id: u64) {
        lock(&self.watchers).retain(|(i, _)| *i != id);
    }

    /// `repl_get`'s answer.
    pub fn to_json(&self) -> Value {
        let st = self.status();
        let t = self.splitter.totals();
        let drl = self.splitter.drl();
        let dirty = drl.dirty_regions() * drl.region_size();
        let elapsed = st
            .phase_started
            .map(|s| s.elapsed().as_secs_f64())
            .unwrap_or(0.0);
        let rate = if elapsed > 0.0 {
            st.phase_done as f64 / elapsed
        } else {
            0.0
        };
        // The state as published with the counts below (the data path's may be a moment
        // ahead).
        let state = st.state.unwrap_or_else(|| self.state());
        let (progress, eta) = match state {
            State::Baseline | State::Incremental if st.phase_total > 0 => {
                let left = st.phase_total.saturating_sub(st.phase_done);
                (
                    100.0 * st.phase_done as f64 / st.phase_total as f64,
                    (rate > 0.0).then(|| left as f64 / rate),
                )
            }
            State::Establishing | State::Resyncing | State::OutOfSync => {
                let total = st.phase_done + dirty;
                (
                    if total == 0 {
                        100.0
                    } else {
                        100.0 * st.phase_done as f64 / total as f64
                    },
                    (rate > 0.0).then(|| dirty as f64 / rate),
                )
            }
            State::InSync | State::Quiesced => (100.0, Some(0.0)),
            _ => (0.0, None),
        };
        json!({
            "name": self.cfg.name,
            "primary": self.cfg.primary,
            "secondary_bdev": self.cfg.secondary_bdev,
            "secondary_volume": self.cfg.secondary_volume,
            "policy": self.cfg.policy.name(),
            "state": state.name(),
            "region_size": drl.region_size(),
            "dirty_regions": drl.dirty_regions(),
            "dirty_bytes": dirty,
            "durable_regions": drl.durable_regions(),
            "log_flushes": st.log_flushes,
            "scanner_fences": st.scanner_fences,
            "recovered_dirty_bytes": st.recovered_dirty_bytes,
            "bytes_transferred": st.bytes_transferred,
            "transfers": st.transfers,
            "transfer_seconds": st.transfer_secs,
            "resynced_bytes": st.resynced_bytes,
            "progress_percent": (progress * 10.0).round() / 10.0,
            "rate_bytes_per_sec": rate.round(),
            "eta_seconds": eta.map(|e| (e * 10.0).round() / 10.0),
            "last_common_snapshot": st.last_common_snapshot,
            "max_pause_us": st.max_pause_us,
            "last_error": st.last_error,
            "secondary_attached": self.splitter.has_secondary(),
            "transitions": st.transitions,
            "entered": st.entered.iter().map(|(s, n)| (s.name().to_owned(), json!(n))).collect::<serde_json::Map<_, _>>(),
            "counters": {
                "split_writes": t.split,
                "split_bytes": t.split_bytes,
                "primary_only_writes": t.primary_only,
                "local_writes": t.local,
                "refused_writes": t.refused,
                "secondary_errors": t.secondary_errors,
                "overlapped_waits": t.overlapped,
                "writes_in_flight": t.in_flight,
            },
        })
    }
}

/// The relationship's control thread.
struct Driver {
    rel: Arc<Relationship>,
    store: Store,
    messenger: Messenger,
    owner: ReactorId,
    machine: Machine,
    /// Snapshot names are `repl.<name>.<seq>`.
    seq: u64,
    transfer: Option<Transfer>,
    scanner: Option<Arc<Progress>>,
    /// A snapshot whose transfer failed: the next try sends it again.
    pending: Option<String>,
    /// The newest snapshot both sides hold.
    last_common: Option<String>,
    /// Bytes of the last transfer, to tell whether the diffs still shrink.
    last_diff: u64,
    incrementals: u32,
    /// A failed transfer is tried again from here on.
    retry_at: Option<Instant>,
    next_probe: Instant,
    /// The secondary's bdev came back unfit (said once).
    secondary_refused: bool,
    log: Arc<Log>,
    /// What the store's record says now: (state, last common snapshot, sequence, diverged).
    saved: Option<(State, Option<String>, u64, bool)>,
    /// See [`Record::secondary_diverged`].
    secondary_diverged: bool,
    /// See [`Record::id`].
    id: String,
    /// Establishing has logged what the last snapshot lacks: only then may it drain.
    diff_marked: bool,
}

/// The dirty region log's place on disk, and the flushes that put it there (one at a time:
/// a set written late must never replace a newer one).
struct Log {
    drl: Arc<Drl>,
    store: Store,
    object: String,
    lock: Mutex<()>,
    flushes: AtomicU64,
    stop: AtomicBool,
}

/// How often the flusher trims the log of regions no longer written.
const TRIM_EVERY: Duration = Duration::from_millis(500);
/// Trims a region stays on disk after its last write (an activity log's hysteresis: a region
/// written again within a second or so does not wait for a flush).
const KEEP_TRIMS: u64 = 2;

impl Log {
    /// Write the log: everything in use and what stays durable, in one store commit. A
    /// `trim` also drops the regions idle for [`KEEP_TRIMS`] trims; other flushes only add.
    fn flush(&self, trim: bool) -> Result<(), String> {
        let _one = lock(&self.lock);
        let keep = if trim {
            self.drl.next_epoch();
            KEEP_TRIMS
        } else {
            u64::MAX
        };
        let set = self.drl.begin_flush_keeping(keep);
        let bytes = super::drl::encode(self.drl.region_size(), self.drl.regions(), &set);
        self.store
            .put_object(&self.object, bytes)
            .map_err(|e| format!("writing the dirty region log: {e}"))?;
        self.drl.flushed(&set);
        self.flushes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The flusher thread: a flush when writes wait (woken by the splitter), a trim every
    /// [`TRIM_EVERY`], and then the waiting writes go on.
    fn run(&self, sp: &Arc<Splitter>, messenger: &Messenger) {
        let mut last_trim = Instant::now();
        while !self.stop.load(Ordering::SeqCst) {
            std::thread::park_timeout(TRIM_EVERY);
            let wanted = sp.take_flush_wanted();
            let trim = last_trim.elapsed() >= TRIM_EVERY;
            if !wanted && !trim {
                continue;
            }
            if trim {
                last_trim = Instant::now();
            }
            match self.flush(trim) {
                Ok(()) => sp.flushed(messenger),
                Err(e) => {
                    tracing::warn!(relationship = sp.name(), "{e}");
                    if wanted {
                        // Writes still wait: try again soon.
                        std::thread::sleep(Duration::from_millis(20));
                        sp.want_flush();
                    }
                }
            }
        }
    }
}

struct Transfer {
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
    fn run(&mut self, rx: Receiver<(Command, Reply)>) {
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
    fn resume(&mut self, recovered: u64) -> Result<(), Error> {
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
        if let Err(e) = Arc::clone(sp).attach_secondary(d, &self.messenger) {
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
            return self.fail_later(format!(
                "the transfer of {} failed; trying again",
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
