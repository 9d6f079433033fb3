//! Why the secondary or a copy failed, kept for `repl_get`'s `last_error`: the first failure
//! since the driver last looked, as an errno and a side in atomics, so that the data path
//! records it without a lock or an allocation.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

/// The first failure since [`FailureNote::take`].
#[derive(Default)]
pub struct FailureNote {
    /// Its errno, positive; 0: none.
    errno: AtomicI32,
    /// Whether it was a write to the secondary (else a read of the primary or its snapshot).
    writing: AtomicBool,
}

impl FailureNote {
    /// A failure with `errno` (as the bdev layer gives it, negative or not): kept if it is the
    /// first since the last [`FailureNote::take`].
    pub fn note(&self, writing: bool, errno: i32) {
        let errno = errno.checked_abs().filter(|&e| e != 0).unwrap_or(libc::EIO);
        if self
            .errno
            .compare_exchange(0, errno, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            self.writing.store(writing, Ordering::SeqCst);
        }
    }

    /// The failure in words ("writing the secondary: No space left on device (os error
    /// 28)"), and forget it.
    pub fn take(&self) -> Option<String> {
        let writing = self.writing.load(Ordering::SeqCst);
        let errno = self.errno.swap(0, Ordering::SeqCst);
        (errno != 0).then(|| {
            let side = if writing {
                "writing the secondary"
            } else {
                "reading the primary"
            };
            format!("{side}: {}", std::io::Error::from_raw_os_error(errno))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_failure_since_the_last_look_is_told_once() {
        let n = FailureNote::default();
        assert_eq!(n.take(), None);
        n.note(true, -libc::ENOSPC);
        n.note(false, -libc::EIO);
        assert_eq!(
            n.take().as_deref(),
            Some("writing the secondary: No space left on device (os error 28)")
        );
        assert_eq!(n.take(), None);
        n.note(false, 0);
        assert_eq!(
            n.take().as_deref(),
            Some("reading the primary: Input/output error (os error 5)")
        );
    }
}
