//! A relationship: a primary volume here, a secondary volume on another engine, and the driver
//! that moves them through the lifecycle (ARCHITECTURE.md, "Relationship lifecycle").
//!
//! **Who does what.** The data path is the splitter ([`super::splitter`]) on the reactors that
//! own the client connections; the copying is a copier ([`super::copier`]) on the owner
//! reactor. The driver (`driver.rs`) is a control thread per relationship: it owns the state
//! machine, and the log's flusher (`flusher.rs`) is a thread of its own. Commands (`repl_*`
//! RPCs, the C ABI) reach the driver through a channel and wait for its answer; reading the
//! status takes a mutex no I/O touches.
//!
//! **The secondary** is reached twice: its volume through a bdev here (the `nvmf` bdev for a
//! remote engine; any bdev for one in this process), and its control through its RPC socket
//! (`bdev_lvol_snapshot`, `bdev_lvol_delete`), or directly when its store is in this process.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub use super::config::{Config, Error, Policy, SecondaryControl};
pub use super::driver::merge_extents;
use super::driver::Driver;
use super::drl::Drl;
use super::flusher::Log;
use super::persist::{self, Record};
use super::splitter::Splitter;
use super::state::{Machine, State};
use crate::bdev::{self, Desc};
use crate::reactor::{Messenger, ReactorId};
use crate::store::Store;

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

pub(super) enum Command {
    Start,
    Quiesce,
    Resume,
    Break,
    Resync,
    Stop,
}

pub(super) type Reply = Sender<Result<(), Error>>;

pub struct Relationship {
    pub(super) cfg: Config,
    pub(super) splitter: Arc<Splitter>,
    pub(super) primary_bdev: bdev::Bdev,
    pub(super) status: Mutex<Status>,
    pub(super) commands: Mutex<Option<Sender<(Command, Reply)>>>,
    pub(super) driver: Mutex<Option<JoinHandle<()>>>,
    /// Callbacks told of every transition (the C ABI's), by id.
    pub(super) watchers: Mutex<Vec<(u64, Watcher)>>,
}

/// Told `(relationship, from, to)` on every transition, from the driver's thread.
pub type Watcher = Arc<dyn Fn(&str, State, State) + Send + Sync>;

fn registry() -> MutexGuard<'static, HashMap<String, Arc<Relationship>>> {
    static R: OnceLock<Mutex<HashMap<String, Arc<Relationship>>>> = OnceLock::new();
    R.get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Split `<store>/<volume>`.
pub(super) fn split_lvol(name: &str) -> Result<(&str, &str), String> {
    name.split_once('/')
        .filter(|(s, v)| !s.is_empty() && !v.is_empty())
        .ok_or_else(|| format!("{name:?} is not <store>/<volume>"))
}

/// Make a relationship (Uninitialized): checks that both volumes exist with the same geometry,
/// and starts its driver.
/// Whether `sb` can be `primary`'s secondary.
pub(super) fn check_secondary(primary: &bdev::Bdev, sb: &bdev::Bdev) -> Result<(), Error> {
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
