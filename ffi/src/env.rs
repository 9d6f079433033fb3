//! The engine from C: start and stop it, make bring-your-own threads and poll them, send
//! messages to any thread, and register pollers and timers on the thread the caller runs on.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void};
use std::sync::Mutex;
use std::thread::ThreadId;
use std::time::Duration;

use tandem::reactor::{
    self, CoreMask, Engine, EngineOpts, Messenger, Mode, Msg, PollStatus, PollerHandle, Reactor,
    ReactorId, ReactorLocal, SendErrorKind, TimerHandle,
};

use crate::handle::{self, handle_kind, Shell};
use crate::{c_str, guard, put};

/// Options for `tandem_env_start`. Fill with `tandem_env_opts_init`.
#[repr(C)]
pub struct tandem_env_opts {
    /// `sizeof(struct tandem_env_opts)` as the caller was compiled with.
    pub opts_size: usize,
    /// Cores to spawn and pin one reactor on each, as SPDK takes them ("0x3", "[0,1]", "0-1");
    /// NULL spawns none (every thread is then the caller's own). Default NULL.
    pub core_mask: *const c_char,
    /// Nonzero: reactors spin (poll mode). Zero: they sleep when idle (adaptive). Default 0.
    pub poll_mode: bool,
}

/// Fill `opts` with defaults; `opts_size` is the size the caller knows. Any thread.
#[no_mangle]
pub extern "C" fn tandem_env_opts_init(opts: *mut tandem_env_opts, opts_size: usize) -> c_int {
    guard(|| {
        if opts.is_null() || opts_size < std::mem::size_of::<tandem_env_opts>() {
            return -libc::EINVAL;
        }
        put(
            opts,
            tandem_env_opts {
                opts_size,
                core_mask: std::ptr::null(),
                poll_mode: false,
            },
        )
    })
}

/// The one engine of the process, and a messenger copied out of it for lock-free sends.
static ENGINE: Mutex<Option<Engine>> = Mutex::new(None);

pub(crate) fn messenger() -> Result<Messenger, c_int> {
    ENGINE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .map(Engine::messenger)
        .ok_or(-libc::ENODEV)
}

/// Start the engine: spawn and pin one reactor per core of `opts->core_mask` (their thread ids
/// are 0, 1, … in core order). `-EALREADY` if started; `-EINVAL` for a bad mask or
/// `opts_size`; `-ENODEV` for a core the machine lacks. Any thread but a reactor.
#[no_mangle]
pub extern "C" fn tandem_env_start(opts: *const tandem_env_opts) -> c_int {
    guard(|| {
        if opts.is_null() {
            return -libc::EINVAL;
        }
        // SAFETY: non-null, and the caller passes an initialised struct.
        let opts = unsafe { &*opts };
        if opts.opts_size < std::mem::size_of::<tandem_env_opts>() {
            return -libc::EINVAL;
        }
        let core_mask = if opts.core_mask.is_null() {
            None
        } else {
            match c_str(opts.core_mask).map(CoreMask::parse) {
                Ok(Ok(m)) => Some(m),
                _ => return -libc::EINVAL,
            }
        };
        crate::log::install();
        let mut engine = ENGINE.lock().unwrap_or_else(|e| e.into_inner());
        if engine.is_some() {
            return -libc::EALREADY;
        }
        match Engine::start(EngineOpts {
            core_mask,
            mode: if opts.poll_mode {
                Mode::Poll
            } else {
                Mode::Adaptive
            },
            ..EngineOpts::default()
        }) {
            Ok(e) => {
                *engine = Some(e);
                0
            }
            Err(reactor::Error::CoreNotPresent { .. }) => -libc::ENODEV,
            Err(e) => {
                tracing::error!("tandem_env_start: {e}");
                -libc::EIO
            }
        }
    })
}

/// Stop the spawned reactors: each runs the messages already queued, then exits. `-ENODEV` if
/// not started. Call from a thread that is not one of the engine's.
#[no_mangle]
pub extern "C" fn tandem_env_stop() -> c_int {
    guard(|| {
        if reactor::current().is_some() {
            return -libc::EPERM;
        }
        let engine = ENGINE.lock().unwrap_or_else(|e| e.into_inner()).take();
        match engine {
            Some(e) => e.stop().map_or(-libc::EIO, |()| 0),
            None => -libc::ENODEV,
        }
    })
}

/// The number of reactors `tandem_env_start` spawned. Any thread.
#[no_mangle]
pub extern "C" fn tandem_env_reactor_count() -> c_int {
    guard(|| {
        ENGINE
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map_or(-libc::ENODEV, |e| e.reactor_ids().len() as c_int)
    })
}

pub struct ThreadObj {
    reactor: Reactor,
    owner: ThreadId,
}

/// A bring-your-own thread: a reactor that the caller's own loop polls.
pub struct tandem_thread {
    shell: Shell<ThreadObj>,
}

handle_kind!(tandem_thread, ThreadObj, 0x7461_6e64_7468_7264);

/// Make a bring-your-own thread: nothing is spawned; the calling thread owns it and drives it
/// with `tandem_thread_poll`. Writes the handle to `*out`. Needs a started engine (`-ENODEV`).
#[no_mangle]
pub extern "C" fn tandem_thread_create(name: *const c_char, out: *mut *mut tandem_thread) -> c_int {
    guard(|| {
        if out.is_null() {
            return -libc::EINVAL;
        }
        let name = match c_str(name) {
            Ok(n) => n.to_owned(),
            Err(e) => return e,
        };
        let created = {
            let engine = ENGINE.lock().unwrap_or_else(|e| e.into_inner());
            match engine.as_ref() {
                Some(e) => e.create_thread(&name),
                None => return -libc::ENODEV,
            }
        };
        match created {
            Ok(reactor) => put(
                out,
                handle::make::<tandem_thread>(ThreadObj {
                    reactor,
                    owner: std::thread::current().id(),
                }),
            ),
            Err(_) => -libc::ENOMEM,
        }
    })
}

fn owned(t: *const tandem_thread) -> Result<&'static ThreadObj, c_int> {
    // SAFETY: the handle contract of `handle::get`.
    let obj = unsafe { handle::get(t) }?;
    if obj.owner != std::thread::current().id() {
        return Err(-libc::EPERM);
    }
    Ok(obj)
}

/// Run one iteration of the thread: its messages, pollers and due timers. Returns 1 if it did
/// work, 0 if idle, or a negative errno. Only on the thread that created it (`-EPERM`).
#[no_mangle]
pub extern "C" fn tandem_thread_poll(t: *mut tandem_thread) -> c_int {
    guard(|| match owned(t) {
        Ok(obj) => (obj.reactor.poll() == PollStatus::Busy) as c_int,
        Err(e) => e,
    })
}

/// The thread's id, for `tandem_send_msg`. Any thread.
#[no_mangle]
pub extern "C" fn tandem_thread_id(t: *const tandem_thread, out: *mut u32) -> c_int {
    guard(|| {
        if out.is_null() {
            return -libc::EINVAL;
        }
        // SAFETY: the handle contract of `handle::get`.
        match unsafe { handle::get(t) } {
            Ok(obj) => put(out, obj.reactor.id().0),
            Err(e) => e,
        }
    })
}

/// Destroy the thread: it runs the messages already queued, then refuses new ones. Only on the
/// thread that created it, and not from code the thread is running (`-EBUSY`: its poll is
/// still under way). The handle is stale afterwards.
#[no_mangle]
pub extern "C" fn tandem_thread_destroy(t: *mut tandem_thread) -> c_int {
    guard(|| {
        match owned(t) {
            Err(e) => return e,
            Ok(obj) if reactor::current() == Some(obj.reactor.id()) => return -libc::EBUSY,
            Ok(_) => {}
        }
        // SAFETY: the handle contract; the owner thread is the only user.
        match unsafe { handle::destroy(t) } {
            Ok(obj) => {
                obj.reactor.shutdown();
                0
            }
            Err(e) => e,
        }
    })
}

/// The id of the engine thread running the caller. `-EPERM` off an engine thread.
#[no_mangle]
pub extern "C" fn tandem_current_thread_id(out: *mut u32) -> c_int {
    guard(|| {
        if out.is_null() {
            return -libc::EINVAL;
        }
        reactor::current().map_or(-libc::EPERM, |id| put(out, id.0))
    })
}

/// A function run once on an engine thread.
pub type tandem_msg_fn = Option<unsafe extern "C" fn(arg: *mut c_void)>;

struct CCall(unsafe extern "C" fn(*mut c_void), *mut c_void);
// SAFETY: the caller of tandem_send_msg hands `arg` to the receiving thread; making that safe
// is its side of the contract, as with any C message-passing API.
unsafe impl Send for CCall {}

impl CCall {
    fn run(self) {
        // SAFETY: the caller's function, called once with its own argument.
        unsafe { (self.0)(self.1) }
    }
}

/// Queue `fn(arg)` to run on engine thread `thread_id`. Never blocks: `-EAGAIN` when its ring
/// is full (try again), `-ENODEV` for no such thread or a stopped one. Any thread.
#[no_mangle]
pub extern "C" fn tandem_send_msg(thread_id: u32, f: tandem_msg_fn, arg: *mut c_void) -> c_int {
    guard(|| {
        let Some(f) = f else { return -libc::EINVAL };
        let call = CCall(f, arg);
        let msg = Msg::new(move || call.run());
        let to = ReactorId(thread_id);
        // On an engine thread the send is lock-free; elsewhere it looks the engine up first.
        let sent = if reactor::current().is_some() {
            reactor::send_msg(to, msg)
        } else {
            match messenger() {
                Ok(m) => m.send_msg(to, msg),
                Err(e) => return e,
            }
        };
        match sent {
            Ok(()) => 0,
            Err(e) if e.kind == SendErrorKind::Full => -libc::EAGAIN,
            Err(_) => -libc::ENODEV,
        }
    })
}

/// A poller: return 1 if it found work, 0 if not.
pub type tandem_poller_fn = Option<unsafe extern "C" fn(arg: *mut c_void) -> c_int>;

/// A registered poller.
pub struct tandem_poller {
    shell: Shell<PollerHandle>,
}

handle_kind!(tandem_poller, PollerHandle, 0x7461_6e64_706f_6c6c);

/// Register `fn(arg)` on the calling engine thread: every loop (`period_us` 0) or every
/// `period_us` microseconds. Writes the handle to `*out`. `-EPERM` off an engine thread.
#[no_mangle]
pub extern "C" fn tandem_poller_register(
    f: tandem_poller_fn,
    arg: *mut c_void,
    period_us: u64,
    out: *mut *mut tandem_poller,
) -> c_int {
    guard(|| {
        let Some(f) = f else { return -libc::EINVAL };
        if out.is_null() {
            return -libc::EINVAL;
        }
        let call = move || {
            // SAFETY: the caller's poller, called with its own argument on its own thread.
            if unsafe { f(arg) } > 0 {
                PollStatus::Busy
            } else {
                PollStatus::Idle
            }
        };
        let registered = if period_us == 0 {
            reactor::register_poller("c_poller", call)
        } else {
            reactor::register_periodic_poller("c_poller", Duration::from_micros(period_us), call)
        };
        match registered {
            Ok(h) => put(out, handle::make::<tandem_poller>(h)),
            Err(_) => -libc::EPERM,
        }
    })
}

/// Unregister a poller: on its own thread (also from inside it) it is not called again; from
/// another thread the removal is a message to its thread, and `-EAGAIN` (handle still valid:
/// try again) when that thread's ring is full. On success the handle is stale.
#[no_mangle]
pub extern "C" fn tandem_poller_unregister(p: *mut tandem_poller) -> c_int {
    guard(|| {
        // SAFETY: the handle contract of `handle::get`.
        let h = match unsafe { handle::get(p) } {
            Ok(h) => h,
            Err(e) => return e,
        };
        if h.unregister().is_err() {
            return -libc::EAGAIN;
        }
        // SAFETY: the handle contract of `handle::destroy`.
        unsafe { handle::destroy(p) }.map_or_else(|e| e, |_| 0)
    })
}

/// A timer's function, run once.
pub type tandem_timer_fn = Option<unsafe extern "C" fn(arg: *mut c_void)>;

/// Each engine thread's pending timers, by id. Ids come from one process-wide counter, so an id
/// names one timer on one thread, and another thread's cancel finds nothing.
static TIMERS: ReactorLocal<RefCell<HashMap<u64, TimerHandle>>> =
    ReactorLocal::new(|| RefCell::new(HashMap::new()));
static NEXT_TIMER_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Run `fn(arg)` once on the calling engine thread after `delay_us` microseconds. Writes an id
/// for `tandem_timer_cancel` to `*out_id`. `-EPERM` off an engine thread.
#[no_mangle]
pub extern "C" fn tandem_timer_set(
    delay_us: u64,
    f: tandem_timer_fn,
    arg: *mut c_void,
    out_id: *mut u64,
) -> c_int {
    guard(|| {
        let Some(f) = f else { return -libc::EINVAL };
        if out_id.is_null() {
            return -libc::EINVAL;
        }
        let set = TIMERS.with(|t| {
            let id = NEXT_TIMER_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let handle = reactor::set_timer(Duration::from_micros(delay_us), move || {
                let _ = TIMERS.with(|t| t.borrow_mut().remove(&id));
                // SAFETY: the caller's function, called once with its own argument.
                unsafe { f(arg) }
            })
            .ok()?;
            t.borrow_mut().insert(id, handle);
            Some(id)
        });
        match set {
            Ok(Some(id)) => put(out_id, id),
            _ => -libc::EPERM,
        }
    })
}

/// Cancel a timer that has not fired, on the thread that set it. `-ENOENT` if it fired, was
/// cancelled, or belongs to another thread; `-EPERM` off an engine thread.
#[no_mangle]
pub extern "C" fn tandem_timer_cancel(id: u64) -> c_int {
    guard(|| match TIMERS.with(|t| t.borrow_mut().remove(&id)) {
        Ok(Some(h)) => h.cancel().map_or(-libc::EIO, |()| 0),
        Ok(None) => -libc::ENOENT,
        Err(_) => -libc::EPERM,
    })
}
