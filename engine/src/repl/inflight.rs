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
//! **Data path.** A claim is one atomic `fetch_or` per 64 granules of the write (one, for a
//! 4 KiB write), and a release one `fetch_and`: no lock, no allocation. A granule is 4 KiB (or
//! more for volumes over 1 TiB, so that the map stays within 32 MiB): a write that covers part
//! of a granule holds all of it, which can only make two writes wait for each other that need
//! not.

use std::sync::atomic::{AtomicU64, Ordering};

/// The smallest granule.
const MIN_GRANULE: u64 = 4096;
/// At most this many granules (32 MiB of map).
const MAX_GRANULES: u64 = 1 << 28;

pub struct InFlight {
    /// log2 of the granule's bytes.
    shift: u32,
    granules: u64,
    words: Box<[AtomicU64]>,
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
        }
    }

    pub fn granule(&self) -> u64 {
        1 << self.shift
    }

    /// The granules `[off, off + len)` touches, as (word, mask) pairs.
    fn masks(&self, off: u64, len: u64) -> impl Iterator<Item = (usize, u64)> {
        let first = (off >> self.shift).min(self.granules);
        let end = (off.saturating_add(len.max(1)))
            .div_ceil(1 << self.shift)
            .min(self.granules);
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

    /// Claim `[off, off + len)`: true when this write now holds all of it; false when another
    /// holds some of it, and then this one holds none.
    pub fn claim(&self, off: u64, len: u64) -> bool {
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
        assert!(f.claim(0, 4096));
        assert!(!f.claim(0, 512), "the same granule");
        assert!(f.claim(4096, 8192));
        assert!(
            !f.claim(8192, 4096 * 100),
            "overlaps the second claim's end"
        );
        assert_eq!(f.claimed(), 3, "a refused claim leaves nothing behind");
        f.release(0, 4096);
        assert!(f.claim(0, 512));
        f.release(0, 512);
        f.release(4096, 8192);
        assert_eq!(f.claimed(), 0);
    }

    #[test]
    fn claims_across_words_roll_back_whole() {
        let f = InFlight::new(1 << 30);
        // Granules 200..=210 held: a claim from granule 0 to 300 spans five words and fails
        // in the fourth.
        assert!(f.claim(200 * 4096, 11 * 4096));
        assert!(!f.claim(0, 300 * 4096));
        assert_eq!(f.claimed(), 11);
        // Exactly 64 granules in one word, and 65 across two.
        assert!(f.claim(64 * 4096, 64 * 4096));
        assert!(!f.claim(127 * 4096, 2 * 4096));
        assert!(f.claim(128 * 4096, 65 * 4096));
        assert_eq!(f.claimed(), 11 + 64 + 65);
        f.release(64 * 4096, 64 * 4096);
        f.release(128 * 4096, 65 * 4096);
        f.release(200 * 4096, 11 * 4096);
        assert_eq!(f.claimed(), 0);
    }

    #[test]
    fn the_end_of_the_volume_and_large_volumes() {
        let f = InFlight::new(10 * 4096 + 1);
        assert!(f.claim(10 * 4096, 4096), "the last, partial granule");
        assert!(f.claim(0, 10 * 4096));
        assert_eq!(f.claimed(), 11);
        // 16 TiB: granules grow so that the map stays within its bound.
        let big = InFlight::new(16 << 40);
        assert_eq!(big.granule(), 65536);
        assert!(big.words.len() as u64 * 64 <= MAX_GRANULES);
    }
}
