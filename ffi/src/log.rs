//! Logs: the engine logs through `tracing`; this routes every event to a callback that the
//! firmware sets (its own logger), or to stderr until it does, filtered by a level it sets.

use std::ffi::{c_char, c_int, c_void, CString};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI32, AtomicPtr, Ordering};
use std::sync::Once;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;

use crate::guard;

/// Log levels, most severe first.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum tandem_log_level {
    TANDEM_LOG_ERROR = 0,
    TANDEM_LOG_WARN = 1,
    TANDEM_LOG_INFO = 2,
    TANDEM_LOG_DEBUG = 3,
    TANDEM_LOG_TRACE = 4,
}

/// Receives one log line: its level, the module it came from, and the message, both
/// NUL-terminated and valid only during the call. Called on whichever thread logged.
pub type tandem_log_fn = Option<
    unsafe extern "C" fn(
        cb_arg: *mut c_void,
        level: tandem_log_level,
        module: *const c_char,
        msg: *const c_char,
    ),
>;

static LEVEL: AtomicI32 = AtomicI32::new(tandem_log_level::TANDEM_LOG_WARN as i32);
type LogFn = unsafe extern "C" fn(*mut c_void, tandem_log_level, *const c_char, *const c_char);

/// A callback and its argument, published together so that no reader sees one without the
/// other. Replaced pairs are never freed: a thread logging at that moment may still hold one.
struct Sink {
    f: LogFn,
    arg: *mut c_void,
}

static SINK: AtomicPtr<Sink> = AtomicPtr::new(std::ptr::null_mut());

// The field is never read: it keeps the sink reachable for leak checkers.
#[allow(dead_code)]
struct Retired(*mut Sink);
// SAFETY: only keeps replaced sinks reachable (for leak checkers); never dereferenced.
unsafe impl Send for Retired {}

/// Replaced sinks, kept (not freed) so that a logging thread may still use one safely.
static RETIRED: std::sync::Mutex<Vec<Retired>> = std::sync::Mutex::new(Vec::new());
static INSTALL: Once = Once::new();

fn level_of(l: &Level) -> tandem_log_level {
    match *l {
        Level::ERROR => tandem_log_level::TANDEM_LOG_ERROR,
        Level::WARN => tandem_log_level::TANDEM_LOG_WARN,
        Level::INFO => tandem_log_level::TANDEM_LOG_INFO,
        Level::DEBUG => tandem_log_level::TANDEM_LOG_DEBUG,
        Level::TRACE => tandem_log_level::TANDEM_LOG_TRACE,
    }
}

struct Line(String);

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
}

struct ToCallback;

impl<S: Subscriber> Layer<S> for ToCallback {
    fn enabled(&self, meta: &Metadata<'_>, _: Context<'_, S>) -> bool {
        level_of(meta.level()) as i32 <= LEVEL.load(Ordering::Relaxed)
    }

    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut line = Line(String::new());
        event.record(&mut line);
        let meta = event.metadata();
        let level = level_of(meta.level());
        let sink = SINK.load(Ordering::Acquire);
        if sink.is_null() {
            eprintln!("tandem {:?} {}: {}", meta.level(), meta.target(), line.0);
            return;
        }
        // SAFETY: SINK holds null or a Sink leaked by `tandem_log_set_callback`, never freed.
        let sink = unsafe { &*sink };
        let module = CString::new(meta.target()).unwrap_or_default();
        let msg = CString::new(line.0.replace('\0', " ")).unwrap_or_default();
        // SAFETY: the firmware's callback, given valid NUL-terminated strings for the call.
        unsafe { (sink.f)(sink.arg, level, module.as_ptr(), msg.as_ptr()) };
    }
}

/// Install the routing subscriber once (a no-op if the process already has one).
pub(crate) fn install() {
    INSTALL.call_once(|| {
        let _ = tracing_subscriber::registry().with(ToCallback).try_init();
    });
}

/// Route log lines to `cb` (NULL: back to stderr). Any thread. A line being logged on another
/// thread at that moment may still reach the previous callback: keep it callable for a while.
#[no_mangle]
pub extern "C" fn tandem_log_set_callback(cb: tandem_log_fn, cb_arg: *mut c_void) -> c_int {
    guard(|| {
        install();
        let sink = cb.map_or(std::ptr::null_mut(), |f| {
            Box::into_raw(Box::new(Sink { f, arg: cb_arg }))
        });
        let old = SINK.swap(sink, Ordering::AcqRel);
        if !old.is_null() {
            // Kept, never freed (16 bytes a call): see `Sink`.
            RETIRED
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(Retired(old));
        }
        0
    })
}

/// Log only lines at `level` or more severe. Any thread.
#[no_mangle]
pub extern "C" fn tandem_log_set_level(level: c_int) -> c_int {
    guard(|| {
        if !(0..=4).contains(&level) {
            return -libc::EINVAL;
        }
        install();
        LEVEL.store(level, Ordering::Relaxed);
        tracing::callsite::rebuild_interest_cache();
        0
    })
}
