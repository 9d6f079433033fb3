//! Synchronous replication from C: a relationship between a primary volume here and a
//! secondary volume (on another tandemd, reached through an `nvmf` bdev, or in this process),
//! its lifecycle (start, quiesce, resume, break, resync, delete), its status, and a callback
//! on every state change. Every call waits for the relationship's driver, so it may be made
//! from any thread but a reactor (there it returns `-EPERM`).

use std::ffi::{c_char, c_int, c_void, CString};
use std::path::PathBuf;
use std::sync::Arc;

use tandem::repl::relationship::{self, Config, Policy, Relationship, SecondaryControl};
use tandem::repl::state::State;

use crate::handle::{self, handle_kind, Shell};
use crate::{c_str, guard, put};

/// A relationship, from `tandem_repl_create` until `tandem_repl_delete`.
pub struct tandem_repl {
    shell: Shell<Arc<Relationship>>,
}

handle_kind!(tandem_repl, Arc<Relationship>, 0x7461_6e64_7265_706c);

/// A relationship's state (ARCHITECTURE.md, "Relationship lifecycle").
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum tandem_repl_state {
    TANDEM_REPL_UNINITIALIZED = 0,
    TANDEM_REPL_BASELINE = 1,
    TANDEM_REPL_INCREMENTAL = 2,
    TANDEM_REPL_ESTABLISHING = 3,
    TANDEM_REPL_IN_SYNC = 4,
    TANDEM_REPL_OUT_OF_SYNC = 5,
    TANDEM_REPL_RESYNCING = 6,
    TANDEM_REPL_QUIESCED = 7,
    TANDEM_REPL_BROKEN = 8,
}

fn c_state(s: State) -> tandem_repl_state {
    use tandem_repl_state::*;
    match s {
        State::Uninitialized => TANDEM_REPL_UNINITIALIZED,
        State::Baseline => TANDEM_REPL_BASELINE,
        State::Incremental => TANDEM_REPL_INCREMENTAL,
        State::Establishing => TANDEM_REPL_ESTABLISHING,
        State::InSync => TANDEM_REPL_IN_SYNC,
        State::OutOfSync => TANDEM_REPL_OUT_OF_SYNC,
        State::Resyncing => TANDEM_REPL_RESYNCING,
        State::Quiesced => TANDEM_REPL_QUIESCED,
        State::Broken => TANDEM_REPL_BROKEN,
    }
}

/// What happens to client writes while the secondary cannot take them.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum tandem_repl_policy {
    /// Writes succeed on the primary and are logged; the pair resyncs by itself.
    TANDEM_REPL_SYNC = 0,
    /// Writes fail while the pair is out of sync.
    TANDEM_REPL_STRICT_SYNC = 1,
}

/// Options of `tandem_repl_create`; fill with `tandem_repl_opts_init` first.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct tandem_repl_opts {
    pub opts_size: usize,
    pub name: *const c_char,
    /// The primary volume's bdev, `<store>/<volume>`.
    pub primary: *const c_char,
    /// The bdev here that reaches the secondary volume.
    pub secondary_bdev: *const c_char,
    /// The secondary volume as its own engine names it, `<store>/<volume>`.
    pub secondary_volume: *const c_char,
    /// The secondary tandemd's RPC socket; NULL: its store is in this process.
    pub secondary_rpc: *const c_char,
    /// A `tandem_repl_policy` value (an int, so that a wrong value is refused, not undefined).
    pub policy: c_int,
    /// Bytes per dirty region: a power of two from 64 KiB to 1 MiB (default 256 KiB).
    pub region_size: u64,
    /// Copies in flight for transfers and the scanner (default 8).
    pub copy_depth: u32,
    /// Bytes per second for transfers and the scanner; 0: no limit.
    pub rate_bytes_per_sec: u64,
    /// A snapshot both volumes hold, to start from instead of a baseline; NULL: none.
    pub common_snapshot: *const c_char,
}

/// Fill `opts` with defaults. `opts_size` is `sizeof(struct tandem_repl_opts)`.
#[no_mangle]
pub extern "C" fn tandem_repl_opts_init(opts: *mut tandem_repl_opts, opts_size: usize) -> c_int {
    guard(|| {
        if opts.is_null() || opts_size != std::mem::size_of::<tandem_repl_opts>() {
            return -libc::EINVAL;
        }
        let d = Config::new("", "", "", "");
        put(
            opts,
            tandem_repl_opts {
                opts_size,
                name: std::ptr::null(),
                primary: std::ptr::null(),
                secondary_bdev: std::ptr::null(),
                secondary_volume: std::ptr::null(),
                secondary_rpc: std::ptr::null(),
                policy: tandem_repl_policy::TANDEM_REPL_SYNC as c_int,
                region_size: d.region_size,
                copy_depth: d.copy.depth as u32,
                rate_bytes_per_sec: 0,
                common_snapshot: std::ptr::null(),
            },
        )
    })
}

fn opt_str(p: *const c_char) -> Result<Option<String>, c_int> {
    if p.is_null() {
        Ok(None)
    } else {
        c_str(p).map(|s| Some(s.to_owned()))
    }
}

fn config(o: &tandem_repl_opts) -> Result<Config, c_int> {
    if o.opts_size != std::mem::size_of::<tandem_repl_opts>() {
        return Err(-libc::EINVAL);
    }
    let mut cfg = Config::new(
        c_str(o.name)?,
        c_str(o.primary)?,
        c_str(o.secondary_bdev)?,
        c_str(o.secondary_volume)?,
    );
    if let Some(s) = opt_str(o.secondary_rpc)? {
        cfg.control = SecondaryControl::Remote {
            socket: PathBuf::from(s),
        };
    }
    cfg.policy = match o.policy {
        p if p == tandem_repl_policy::TANDEM_REPL_SYNC as c_int => Policy::Sync,
        p if p == tandem_repl_policy::TANDEM_REPL_STRICT_SYNC as c_int => Policy::StrictSync,
        _ => return Err(-libc::EINVAL),
    };
    cfg.region_size = o.region_size;
    cfg.copy.depth = o.copy_depth as usize;
    cfg.copy.rate = o.rate_bytes_per_sec;
    cfg.common_snapshot = opt_str(o.common_snapshot)?;
    Ok(cfg)
}

/// Make a relationship (uninitialized; a record of it left in the primary's store by an
/// earlier run is resumed instead) and write its handle to `*out`. Any thread but a reactor.
#[no_mangle]
pub extern "C" fn tandem_repl_create(
    opts: *const tandem_repl_opts,
    out: *mut *mut tandem_repl,
) -> c_int {
    guard(|| {
        if opts.is_null() || out.is_null() {
            return -libc::EINVAL;
        }
        // SAFETY: non-null; the caller passes an initialised options struct.
        let o = unsafe { &*opts };
        // The size is checked before any other field is read.
        if o.opts_size != std::mem::size_of::<tandem_repl_opts>() {
            return -libc::EINVAL;
        }
        let cfg = match config(o) {
            Ok(c) => c,
            Err(e) => return e,
        };
        let (m, owner) = match crate::store::engine() {
            Ok(e) => e,
            Err(e) => return e,
        };
        match relationship::create(cfg, m, owner) {
            Ok(r) => put(out, handle::make::<tandem_repl>(r)),
            Err(e) => e.errno(),
        }
    })
}

/// Run a command on the relationship behind `r`.
fn with_repl(
    r: *const tandem_repl,
    f: impl FnOnce(&Arc<Relationship>) -> Result<(), relationship::Error>,
) -> c_int {
    guard(|| {
        if tandem::reactor::current().is_some() {
            return -libc::EPERM;
        }
        // SAFETY: the handle contract of `handle::get`.
        match unsafe { handle::get(r) } {
            Ok(rel) => f(rel).map_or_else(|e| e.errno(), |()| 0),
            Err(e) => e,
        }
    })
}

/// Start: baseline (or an incremental from the common snapshot), incrementals while the
/// diffs shrink, establishing, in sync. Returns once started; the state callback and
/// `tandem_repl_get_status` tell the rest.
#[no_mangle]
pub extern "C" fn tandem_repl_start(r: *const tandem_repl) -> c_int {
    with_repl(r, |rel| rel.start())
}

/// Stop splitting at a snapshot common to both sides (in sync only).
#[no_mangle]
pub extern "C" fn tandem_repl_quiesce(r: *const tandem_repl) -> c_int {
    with_repl(r, |rel| rel.quiesce())
}

/// Split again after a quiesce: the writes logged meanwhile are drained.
#[no_mangle]
pub extern "C" fn tandem_repl_resume(r: *const tandem_repl) -> c_int {
    with_repl(r, |rel| rel.resume())
}

/// Make the secondary writable (failover): nothing replicates until a resync.
#[no_mangle]
pub extern "C" fn tandem_repl_break(r: *const tandem_repl) -> c_int {
    with_repl(r, |rel| rel.break_off())
}

/// Resync: from the log when out of sync; after a break, from the common snapshot with what
/// changed on both sides.
#[no_mangle]
pub extern "C" fn tandem_repl_resync(r: *const tandem_repl) -> c_int {
    with_repl(r, |rel| rel.resync())
}

/// Delete the relationship (the last common snapshot stays on both sides); the handle is
/// stale afterwards.
#[no_mangle]
pub extern "C" fn tandem_repl_delete(r: *mut tandem_repl) -> c_int {
    guard(|| {
        if tandem::reactor::current().is_some() {
            return -libc::EPERM;
        }
        // SAFETY: the handle contract of `handle::destroy`.
        match unsafe { handle::destroy(r) } {
            Ok(rel) => relationship::delete(rel.name()).map_or_else(|e| e.errno(), |()| 0),
            Err(e) => e,
        }
    })
}

/// What `tandem_repl_get_status` tells.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct tandem_repl_status {
    pub state: tandem_repl_state,
    /// Bytes the log says differ.
    pub dirty_bytes: u64,
    /// Bytes sent by snapshot transfers, and by the scanner.
    pub bytes_transferred: u64,
    pub resynced_bytes: u64,
    /// Progress of the transfer or resync under way, 0 to 100.
    pub progress_percent: f64,
    pub split_writes: u64,
    pub secondary_errors: u64,
    /// The longest pause of client writes (a quiesce barrier), microseconds.
    pub max_pause_us: u64,
    pub transitions: u64,
}

/// The relationship's status into `*out`. Any thread but a reactor.
#[no_mangle]
pub extern "C" fn tandem_repl_get_status(
    r: *const tandem_repl,
    out: *mut tandem_repl_status,
) -> c_int {
    guard(|| {
        if out.is_null() {
            return -libc::EINVAL;
        }
        // SAFETY: the handle contract of `handle::get`.
        let rel = match unsafe { handle::get(r) } {
            Ok(rel) => rel,
            Err(e) => return e,
        };
        let st = rel.status();
        let j = rel.to_json();
        let t = rel.splitter().totals();
        let drl = rel.splitter().drl();
        put(
            out,
            tandem_repl_status {
                state: c_state(rel.state()),
                dirty_bytes: drl.dirty_regions() * drl.region_size(),
                bytes_transferred: st.bytes_transferred,
                resynced_bytes: st.resynced_bytes,
                progress_percent: j["progress_percent"].as_f64().unwrap_or(0.0),
                split_writes: t.split,
                secondary_errors: t.secondary_errors,
                max_pause_us: st.max_pause_us,
                transitions: st.transitions,
            },
        )
    })
}

/// Told of a state change: the relationship's name, the old and the new state. Called on
/// the relationship's driver thread; it must not call back into this relationship's
/// lifecycle functions (they wait for that thread), but may read its status.
pub type tandem_repl_state_fn = Option<
    unsafe extern "C" fn(
        cb_arg: *mut c_void,
        name: *const c_char,
        from: tandem_repl_state,
        to: tandem_repl_state,
    ),
>;

/// A C callback and its argument, made `Send` for the driver thread.
struct Callback {
    f: unsafe extern "C" fn(*mut c_void, *const c_char, tandem_repl_state, tandem_repl_state),
    arg: *mut c_void,
}

// SAFETY: the caller of `tandem_repl_watch` promises the callback may run on another thread
// with its argument (the documented contract).
unsafe impl Send for Callback {}
// SAFETY: as above; the callback is only called, never changed.
unsafe impl Sync for Callback {}

impl Callback {
    fn call(&self, name: &str, from: State, to: State) {
        let name = CString::new(name).unwrap_or_default();
        // SAFETY: the C caller gave this function and argument for exactly this call.
        unsafe { (self.f)(self.arg, name.as_ptr(), c_state(from), c_state(to)) };
    }
}

/// Call `cb(cb_arg, name, from, to)` on every state change from now on; `*id` (may be NULL)
/// receives an id for `tandem_repl_unwatch`. Any thread.
#[no_mangle]
pub extern "C" fn tandem_repl_watch(
    r: *const tandem_repl,
    cb: tandem_repl_state_fn,
    cb_arg: *mut c_void,
    id: *mut u64,
) -> c_int {
    guard(|| {
        let Some(f) = cb else {
            return -libc::EINVAL;
        };
        // SAFETY: the handle contract of `handle::get`.
        let rel = match unsafe { handle::get(r) } {
            Ok(rel) => rel,
            Err(e) => return e,
        };
        let c = Callback { f, arg: cb_arg };
        let w = rel.watch(Arc::new(move |name: &str, from: State, to: State| {
            c.call(name, from, to)
        }));
        if !id.is_null() {
            put(id, w);
        }
        0
    })
}

/// Stop calling the callback `tandem_repl_watch` gave `id` for. Any thread.
#[no_mangle]
pub extern "C" fn tandem_repl_unwatch(r: *const tandem_repl, id: u64) -> c_int {
    guard(|| {
        // SAFETY: the handle contract of `handle::get`.
        match unsafe { handle::get(r) } {
            Ok(rel) => {
                rel.unwatch(id);
                0
            }
            Err(e) => e,
        }
    })
}

/// A state's name ("in_sync", ...) as a static string, for a `tandem_repl_state` value; NULL
/// for a value out of range. Any thread.
#[no_mangle]
pub extern "C" fn tandem_repl_state_name(state: c_int) -> *const c_char {
    let name: &'static [u8] = match state {
        0 => b"uninitialized\0",
        1 => b"baseline\0",
        2 => b"incremental\0",
        3 => b"establishing\0",
        4 => b"in_sync\0",
        5 => b"out_of_sync\0",
        6 => b"resyncing\0",
        7 => b"quiesced\0",
        8 => b"broken\0",
        _ => return std::ptr::null(),
    };
    name.as_ptr().cast()
}
