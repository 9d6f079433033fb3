//! Thin, safe wrappers over the Linux system calls the reactors park on: `eventfd` (a
//! cross-thread doorbell), `timerfd` (a precise deadline) and `epoll` (one fd that waits on
//! all of them plus any fd a module registers).
//!
//! Every `unsafe` call of the reactor runtime lives here, each with its `SAFETY:` argument, so
//! that the modules above stay safe Rust.

mod epoll;
mod eventfd;
mod timerfd;

pub use epoll::Epoll;
pub use eventfd::EventFd;
pub use timerfd::{monotonic_ns, TimerFd};

use std::io;

/// Turn a libc return value into `io::Result`, reading `errno` on `-1`.
fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// CPU time consumed by the calling thread, in nanoseconds (`CLOCK_THREAD_CPUTIME_ID`).
pub fn thread_cpu_time_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant the kernel knows.
    let ret = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    debug_assert_eq!(ret, 0);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
