//! Claims on the primary's blocks that split writes have in flight: two writes to the same
//! blocks are never on their way to the two sides at once.
//!
//! NVMe leaves two overlapping writes in flight at once unordered, so each side may apply them
//! in either order, and the primary and the secondary may end up each with a different one. The
//! dirty region log cannot see that: both writes reached both sides. So a write claims its
//! blocks before it is routed and gives them back when it completes to the client; a write
//! whose blocks another write holds waits for it (DRBD serialises conflicting writes the same
//! way). Writes on different reactors conflict as well as writes on one.
//!
//! **Turns.** A write that finds its blocks held joins a small table of waiters with a ticket
//! (a global count) and its granules. A claim gives way to any waiter with an older ticket
//! whose granules overlap it, and a write that has not waited yet gives way to every such
//! waiter. So overlapping writes go in the order they first found each other, across
//! reactors: a waiter on one reactor is not passed again and again by a reactor that writes
//! the same blocks the moment they come free. No cycle is possible: a waiter gives way only to
//! older ones, and the oldest waits only for writes that hold their claims, which are issued
//! and complete by themselves. A full table leaves a waiter without a ticket, waiting as it
//! would without turns; an entry that has not tried again for [`STALE`] is ignored, so a
//! waiter that went away without leaving (a bug) cannot hold the blocks up for good.
//!
//! **Data path.** A claim is one atomic `fetch_or` per 64 granules of the write (one, for a
//! 4 KiB write), and a release one `fetch_and`: no lock, no allocation. While no write waits,
//! turns cost one load per claim; a waiter's entry is a few atomic stores. A granule is 4 KiB (or
//! more for volumes over 1 TiB, so that the map stays within 32 MiB): a write that covers part
//! of a granule holds all of it, which can only make two writes wait for each other that need
//! not.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;

/// The smallest granule.
const MIN_GRANULE: u64 = 4096;
/// At most this many granules (32 MiB of map).
const MAX_GRANULES: u64 = 1 << 28;

/// Waiters with a turn at most; more wait without one.
const TURNS: usize = 64;
/// A waiter's entry that has not tried again for this long is ignored by the others.
pub const STALE: Duration = Duration::from_secs(1);
/// A table entry's ticket while its owner fills it in.
const FILLING: u64 = u64::MAX;

pub struct InFlight {
    /// log2 of the granule's bytes.
    shift: u32,
    granules: u64,
    words: Box<[AtomicU64]>,
    /// Entries in use (a claim with none to look at reads only this): on a line of its own,
    /// apart from what joining and leaving write.
    waiters: CachePadded<AtomicUsize>,
    next_ticket: AtomicU64,
    turns: Box<[Entry]>,
    /// [`STALE`], but for tests.
    stale: Duration,
}

/// A waiter in the table: its ticket (0 when free), its granules (first << 32 | count), and
/// when it joined or last tried again (nanoseconds since the first use of [`now_ns`]).
struct Entry {
    ticket: AtomicU64,
    granules: AtomicU64,
    since: AtomicU64,
}

/// A waiter's place in the table, for its later claims and its leaving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Turn {
    slot: usize,
    ticket: u64,
}

fn now_ns() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

impl InFlight {
    /// A map of a volume of `size` bytes, nothing claimed.
    pub fn new(size: u64) -> InFlight {
        let mut granule = MIN_GRANULE;
        while size.div_ceil(granule) > MAX_GRANULES {
            granule *= 2;
        }
        let granules = size.div_ceil(granule).max(1);
        InFlight {
            shift: granule.trailing_zeros(),
            granules,
            words: (0..granules.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            waiters: CachePadded::new(AtomicUsize::new(0)),
            next_ticket: AtomicU64::new(1),
            turns: (0..TURNS)
                .map(|_| Entry {
                    ticket: AtomicU64::new(0),
                    granules: AtomicU64::new(0),
                    since: AtomicU64::new(0),
                })
                .collect(),
            stale: STALE,
        }
    }

    pub fn granule(&self) -> u64 {
        1 << self.shift
    }

    /// The granules `[off, off + len)` touches: first and end.
    fn granule_range(&self, off: u64, len: u64) -> (u64, u64) {
        let first = (off >> self.shift).min(self.granules);
        let end = (off.saturating_add(len.max(1)))
            .div_ceil(1 << self.shift)
            .min(self.granules);
        (first, end)
    }

    /// The granules `[off, off + len)` touches, as (word, mask) pairs.
    fn masks(&self, off: u64, len: u64) -> impl Iterator<Item = (usize, u64)> {
        let (first, end) = self.granule_range(off, len);
        let mut g = first;
        std::iter::from_fn(move || {
            if g >= end {
                return None;
            }
            let word = g / 64;
            let lo = g % 64;
            let hi = (end - word * 64).min(64);
            let mask = if hi - lo == 64 {
                !0
            } else {
                ((1u64 << (hi - lo)) - 1) << lo
            };
            g = word * 64 + hi;
            Some((word as usize, mask))
        })
    }

    /// The granules `[off, off + len)` touches, as first << 32 | count.
    fn span(&self, off: u64, len: u64) -> u64 {
        let (first, end) = self.granule_range(off, len);
        (first << 32) | (end - first).min(u32::MAX as u64)
    }

    /// Whether a waiter older than `mine` (any waiter, for a write without a turn) waits for
    /// granules of `span`.
    fn gives_way(&self, span: u64, mine: Option<Turn>) -> bool {
        if self.waiters.load(Ordering::Acquire) == 0 {
            return false;
        }
        let (first, count) = (span >> 32, span & u32::MAX as u64);
        let mut now = None;
        for (slot, e) in self.turns.iter().enumerate() {
            let ticket = e.ticket.load(Ordering::Acquire);
            if ticket == 0 || ticket == FILLING {
                continue;
            }
            if let Some(m) = mine {
                if slot == m.slot || ticket > m.ticket {
                    continue;
                }
            }
            let theirs = e.granules.load(Ordering::Acquire);
            let since = e.since.load(Ordering::Acquire);
            if e.ticket.load(Ordering::Acquire) != ticket {
                // Left (or taken again) while read: not a waiter to give way to now.
                continue;
            }
            let (tf, tc) = (theirs >> 32, theirs & u32::MAX as u64);
            if tf >= first + count || first >= tf + tc {
                continue;
            }
            let now = *now.get_or_insert_with(now_ns);
            if now.saturating_sub(since) < self.stale.as_nanos() as u64 {
                return true;
            }
        }
        false
    }

    /// Join the waiters for `[off, off + len)`: a turn, or none when the table is full.
    pub fn join(&self, off: u64, len: u64) -> Option<Turn> {
        let span = self.span(off, len);
        for (slot, e) in self.turns.iter().enumerate() {
            if e.ticket
                .compare_exchange(0, FILLING, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            e.granules.store(span, Ordering::Release);
            e.since.store(now_ns(), Ordering::Release);
            let ticket = self.next_ticket.fetch_add(1, Ordering::AcqRel);
            self.waiters.fetch_add(1, Ordering::AcqRel);
            e.ticket.store(ticket, Ordering::Release);
            return Some(Turn { slot, ticket });
        }
        None
    }

    /// A waiter that tried again and still waits: its entry is not stale.
    pub fn still_waiting(&self, turn: Turn) {
        let e = &self.turns[turn.slot];
        if e.ticket.load(Ordering::Acquire) == turn.ticket {
            e.since.store(now_ns(), Ordering::Release);
        }
    }

    /// Leave the waiters: the write claimed its blocks, or stopped waiting for them.
    pub fn leave(&self, turn: Turn) {
        let e = &self.turns[turn.slot];
        if e.ticket
            .compare_exchange(turn.ticket, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            self.waiters.fetch_sub(1, Ordering::AcqRel);
        } else {
            debug_assert!(false, "a turn left twice");
        }
    }

    /// Claim `[off, off + len)` for a write waiting with `turn` (or not waiting yet): true
    /// when it now holds all of it; false when another holds some of it, or an older waiter
    /// waits for some of it, and then this one holds none.
    pub fn claim(&self, off: u64, len: u64, turn: Option<Turn>) -> bool {
        if self.gives_way(self.span(off, len), turn) {
            return false;
        }
        for (taken, (w, mask)) in self.masks(off, len).enumerate() {
            let old = self.words[w].fetch_or(mask, Ordering::AcqRel);
            if old & mask != 0 {
                // Give back what this call set: all of the words before, this word's new bits.
                self.words[w].fetch_and(!(mask & !old), Ordering::AcqRel);
                for (w, mask) in self.masks(off, len).take(taken) {
                    self.words[w].fetch_and(!mask, Ordering::AcqRel);
                }
                return false;
            }
        }
        true
    }

    /// Give back a claim of `[off, off + len)`.
    pub fn release(&self, off: u64, len: u64) {
        for (w, mask) in self.masks(off, len) {
            let old = self.words[w].fetch_and(!mask, Ordering::AcqRel);
            debug_assert_eq!(old & mask, mask, "a release of blocks not claimed");
        }
    }

    /// Granules claimed now (for tests and status).
    pub fn claimed(&self) -> u64 {
        self.words
            .iter()
            .map(|w| w.load(Ordering::Acquire).count_ones() as u64)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_claims_conflict_and_disjoint_ones_do_not() {
        let f = InFlight::new(1 << 30);
        assert!(f.claim(0, 4096, None));
        assert!(!f.claim(0, 512, None), "the same granule");
        assert!(f.claim(4096, 8192, None));
        assert!(
            !f.claim(8192, 4096 * 100, None),
            "overlaps the second claim's end"
        );
        assert_eq!(f.claimed(), 3, "a refused claim leaves nothing behind");
        f.release(0, 4096);
        assert!(f.claim(0, 512, None));
        f.release(0, 512);
        f.release(4096, 8192);
        assert_eq!(f.claimed(), 0);
    }

    #[test]
    fn claims_across_words_roll_back_whole() {
        let f = InFlight::new(1 << 30);
        // Granules 200..=210 held: a claim from granule 0 to 300 spans five words and fails
        // in the fourth.
        assert!(f.claim(200 * 4096, 11 * 4096, None));
        assert!(!f.claim(0, 300 * 4096, None));
        assert_eq!(f.claimed(), 11);
        // Exactly 64 granules in one word, and 65 across two.
        assert!(f.claim(64 * 4096, 64 * 4096, None));
        assert!(!f.claim(127 * 4096, 2 * 4096, None));
        assert!(f.claim(128 * 4096, 65 * 4096, None));
        assert_eq!(f.claimed(), 11 + 64 + 65);
        f.release(64 * 4096, 64 * 4096);
        f.release(128 * 4096, 65 * 4096);
        f.release(200 * 4096, 11 * 4096);
        assert_eq!(f.claimed(), 0);
    }

    #[test]
    fn the_end_of_the_volume_and_large_volumes() {
        let f = InFlight::new(10 * 4096 + 1);
        assert!(f.claim(10 * 4096, 4096, None), "the last, partial granule");
        assert!(f.claim(0, 10 * 4096, None));
        assert_eq!(f.claimed(), 11);
        // 16 TiB: granules grow so that the map stays within its bound.
        let big = InFlight::new(16 << 40);
        assert_eq!(big.granule(), 65536);
        assert!(big.words.len() as u64 * 64 <= MAX_GRANULES);
    }

    #[test]
    fn a_waiter_goes_before_later_writes_and_older_waiters_before_it() {
        let f = InFlight::new(1 << 30);
        assert!(f.claim(0, 4096, None), "the holder");
        // A write to granule 0 waits, with a turn; one to granules 0 and 1 waits after it.
        assert!(!f.claim(0, 4096, None));
        let first = f.join(0, 4096).expect("a turn");
        assert!(!f.claim(0, 8192, None));
        let second = f.join(0, 8192).expect("a turn");
        f.release(0, 4096);
        // The blocks are free, but a write that has not waited gives way to both waiters, and
        // the second waiter to the first; writes elsewhere go on as before.
        assert!(!f.claim(0, 4096, None), "a new write passed a waiter");
        assert!(
            !f.claim(4096, 4096, None),
            "a new write passed the second waiter"
        );
        assert!(
            !f.claim(0, 8192, Some(second)),
            "the second waiter passed the first"
        );
        assert!(f.claim(8192, 4096, None), "a write that overlaps no waiter");
        assert!(f.claim(0, 4096, Some(first)), "the first waiter's turn");
        f.leave(first);
        assert!(
            !f.claim(0, 8192, Some(second)),
            "the first still holds granule 0"
        );
        f.release(0, 4096);
        assert!(f.claim(0, 8192, Some(second)), "the second waiter's turn");
        f.leave(second);
        assert_eq!(f.waiters.load(Ordering::SeqCst), 0);
        f.release(0, 8192);
        f.release(8192, 4096);
        assert!(
            f.claim(0, 4096, None),
            "no waiter left: new writes go again"
        );
        f.release(0, 4096);
    }

    #[test]
    fn a_full_table_leaves_waiters_without_turns_and_stale_entries_are_ignored() {
        let mut f = InFlight::new(1 << 30);
        f.stale = Duration::from_millis(200);
        let turns: Vec<Turn> = (0..TURNS as u64)
            .map(|g| f.join(g * 4096, 4096).expect("a turn"))
            .collect();
        assert_eq!(f.join(0, 4096), None, "the table is full");
        assert!(!f.claim(4096, 4096, None), "a waiter's granule");
        // A waiter that has not tried again for longer than STALE no longer holds anyone up;
        // one that has still does.
        std::thread::sleep(Duration::from_millis(250));
        f.still_waiting(turns[2]);
        assert!(f.claim(4096, 4096, None), "a stale waiter held a write up");
        assert!(
            !f.claim(2 * 4096, 4096, None),
            "a waiter that tried again was passed"
        );
        f.release(4096, 4096);
        for t in turns {
            f.leave(t);
        }
        assert!(f.join(0, 4096).is_some(), "room again");
    }
}
