//! Handle shells: what a C pointer to a Tandem object points at. A shell carries a magic word
//! naming its kind while alive; destroying the object marks the shell dead and keeps it
//! allocated (in a graveyard, so leak checkers see it as reachable), so that any later call with
//! the stale pointer reads a dead magic and fails with `-EBADF`.

use std::cell::UnsafeCell;
use std::ffi::c_int;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

const DEAD: u64 = 0xdead_dead_dead_dead;

pub struct Shell<T> {
    magic: AtomicU64,
    value: UnsafeCell<Option<T>>,
}

// The field is never read: it is there so that leak checkers see the shell as reachable.
#[allow(dead_code)]
struct Grave(*const ());
// SAFETY: the graveyard only keeps dead shells' addresses reachable; nobody dereferences them
// through it.
unsafe impl Send for Grave {}

static GRAVEYARD: Mutex<Vec<Grave>> = Mutex::new(Vec::new());

/// A kind of handle: its magic word, and the struct C sees.
pub trait Kind: Sized {
    const MAGIC: u64;
    type Value;
    fn shell(&self) -> &Shell<Self::Value>;
    fn wrap(shell: Shell<Self::Value>) -> Self;
}

pub(crate) fn make<K: Kind>(value: K::Value) -> *mut K {
    Box::into_raw(Box::new(K::wrap(Shell {
        magic: AtomicU64::new(K::MAGIC),
        value: UnsafeCell::new(Some(value)),
    })))
}

/// The live object behind a handle.
///
/// # Safety
/// `p` is NULL or a pointer this library returned for kind `K` (shells are never freed), and
/// the object is not destroyed while the returned reference is used.
pub(crate) unsafe fn get<'a, K: Kind>(p: *const K) -> Result<&'a K::Value, c_int> {
    if p.is_null() {
        return Err(-libc::EINVAL);
    }
    // SAFETY: per the contract, p points at a shell of kind K that is never freed.
    let shell = unsafe { &*p }.shell();
    if shell.magic.load(Ordering::Acquire) != K::MAGIC {
        return Err(-libc::EBADF);
    }
    // SAFETY: the magic says the value is alive; only `destroy` writes it, and the contract
    // forbids destroying it while in use.
    match unsafe { &*shell.value.get() } {
        Some(v) => Ok(v),
        None => Err(-libc::EBADF),
    }
}

/// Take the object out of a handle and mark the handle dead.
///
/// # Safety
/// As for [`get`], and no other thread uses the handle during the call.
pub(crate) unsafe fn destroy<K: Kind>(p: *mut K) -> Result<K::Value, c_int> {
    // SAFETY: same contract as `get`.
    unsafe { get(p) }?;
    // SAFETY: checked live above; the contract gives us the only access.
    let shell = unsafe { &*p }.shell();
    shell.magic.store(DEAD, Ordering::Release);
    // SAFETY: as above: no other reference to the value exists during this call.
    let value = unsafe { (*shell.value.get()).take() }.ok_or(-libc::EBADF)?;
    GRAVEYARD
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Grave(p as *const ()));
    Ok(value)
}

/// Implement [`Kind`] for an opaque handle struct `$name { shell: Shell<$value> }`. The struct
/// itself is written out where it is used, so that cbindgen (which does not expand macros)
/// sees it and declares it opaque in the header.
macro_rules! handle_kind {
    ($name:ident, $value:ty, $magic:expr) => {
        impl $crate::handle::Kind for $name {
            const MAGIC: u64 = $magic;
            type Value = $value;
            fn shell(&self) -> &$crate::handle::Shell<$value> {
                &self.shell
            }
            fn wrap(shell: $crate::handle::Shell<$value>) -> Self {
                Self { shell }
            }
        }
    };
}
pub(crate) use handle_kind;
