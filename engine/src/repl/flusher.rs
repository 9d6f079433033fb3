//! The dirty region log on disk: its flusher thread, which writes the log in one store commit
//! whenever writes wait for it (write intent) and trims idle regions on a clock.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::drl::Drl;
use super::relationship::lock;
use super::splitter::Splitter;
use crate::reactor::Messenger;
use crate::store::Store;

/// The dirty region log's place on disk, and the flushes that put it there (one at a time:
/// a set written late must never replace a newer one).
pub(super) struct Log {
    pub(super) drl: Arc<Drl>,
    pub(super) store: Store,
    pub(super) object: String,
    pub(super) lock: Mutex<()>,
    pub(super) flushes: AtomicU64,
    pub(super) stop: AtomicBool,
}

/// How often the flusher trims the log of regions no longer written.
const TRIM_EVERY: Duration = Duration::from_millis(500);
/// Trims a region stays on disk after its last write (an activity log's hysteresis: a region
/// written again within a second or so does not wait for a flush).
const KEEP_TRIMS: u64 = 2;

impl Log {
    /// Write the log: everything in use and what stays durable, in one store commit. A
    /// `trim` also drops the regions idle for [`KEEP_TRIMS`] trims; other flushes only add.
    pub(super) fn flush(&self, trim: bool) -> Result<(), String> {
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
    pub(super) fn run(&self, sp: &Arc<Splitter>, messenger: &Messenger) {
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
