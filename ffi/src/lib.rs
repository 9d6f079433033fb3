//! The C ABI of Tandem (`include/tandem.h`, generated from this crate by cbindgen).
//!
//! Conventions, SPDK's and rustls-ffi's:
//! - **Opaque handles.** Every object is a pointer to an opaque struct. A handle's small shell is
//!   never freed, even after the object is destroyed, so a stale handle is recognised and
//!   refused with `-EBADF` instead of reaching freed memory; `NULL` gives `-EINVAL`.
//! - **Errors** are negative errno values; `tandem_strerror` names them. Outputs are written
//!   only on success.
//! - **Options** structs carry `opts_size` and are filled by their `*_opts_init`; fields are
//!   only ever appended, and a library reads only the fields the caller's size covers.
//! - **Threads.** Each function's doc says where it may be called. Channels and
//!   bring-your-own threads belong to one thread; a call from another gives `-EPERM`.
//! - **Panics** never cross the boundary: every export catches them and returns
//!   `-ENOTRECOVERABLE`.
//!
//! This crate holds no logic of its own: it checks, converts, and calls the engine.

#![allow(non_camel_case_types)]
// Every export checks its pointers before use; the functions are `extern "C"` entry points that
// C calls with raw pointers, which is the boundary's whole purpose.
#![allow(clippy::missing_safety_doc, clippy::not_unsafe_ptr_arg_deref)]

mod bdev;
mod env;
#[doc(hidden)]
pub mod handle;
mod log;
mod repl;
mod store;

use std::ffi::{c_char, c_int, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

pub use bdev::*;
pub use env::*;
pub use log::*;
pub use repl::*;
pub use store::*;

/// Run an export's body, turning a panic into `-ENOTRECOVERABLE`.
pub(crate) fn guard(f: impl FnOnce() -> c_int) -> c_int {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(rc) => rc,
        Err(_) => {
            tracing::error!("a panic reached the C boundary");
            -libc::ENOTRECOVERABLE
        }
    }
}

/// A C string argument as UTF-8, or `-EINVAL`.
pub(crate) fn c_str<'a>(p: *const c_char) -> Result<&'a str, c_int> {
    if p.is_null() {
        return Err(-libc::EINVAL);
    }
    // SAFETY: non-null; the caller passes a NUL-terminated string that outlives the call.
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .map_err(|_| -libc::EINVAL)
}

/// Write `value` through `out`, which must not be NULL (checked by the caller's `-EINVAL`).
pub(crate) fn put<T>(out: *mut T, value: T) -> c_int {
    // SAFETY: every caller has checked `out` for NULL; C passes a pointer to writable storage.
    unsafe { out.write(value) };
    0
}

/// The library version, as a static NUL-terminated string. Any thread.
#[no_mangle]
pub extern "C" fn tandem_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// A static description of a negative errno value returned by this library. Any thread.
#[no_mangle]
pub extern "C" fn tandem_strerror(err: c_int) -> *const c_char {
    let s: &'static str = match -err {
        0 => "success\0",
        libc::EINVAL => "invalid argument (NULL pointer, bad value or wrong opts_size)\0",
        libc::EBADF => "stale or closed handle\0",
        libc::EPERM => "not allowed on this thread\0",
        libc::ENOMEM => "out of memory\0",
        libc::ENODEV => "no such device (or it was removed)\0",
        libc::ENOENT => "not found\0",
        libc::EEXIST => "already exists\0",
        libc::EBUSY => "busy (claimed or in use)\0",
        libc::EALREADY => "already started\0",
        libc::EAGAIN => "try again (a queue or ring is full)\0",
        libc::ERANGE => "out of range\0",
        libc::ENOTSUP => "not supported\0",
        libc::EIO => "I/O error\0",
        libc::ECANCELED => "canceled\0",
        libc::ENOTRECOVERABLE => "internal error (a panic was caught)\0",
        _ => "unknown error\0",
    };
    s.as_ptr().cast()
}
