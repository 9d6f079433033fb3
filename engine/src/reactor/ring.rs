//! The bounded ring that carries one reactor's messages: any number of senders, one receiver.
//!
//! Each slot carries a sequence number that says whose turn it is. Position `p` lives in slot
//! `p % capacity`; the slot is free for a sender at position `p` when its sequence is `p`, and
//! holds that sender's message for the receiver when it is `p + 1`. The receiver, taking it,
//! sets it to `p + capacity`: free for the sender one lap later. A sender takes a position by
//! a compare-and-swap on `tail`; the receiver alone moves `head`, with a plain store. So a
//! message costs its sender one compare-and-swap and two stores, and its receiver one load
//! and two stores, and messages run in the order their positions were taken: one sender's in
//! the order sent, and a message sent after another was (on any thread) runs after it.
//!
//! Closing sets a bit in `tail`: no position is taken after it, and [`Ring::close`] waits for
//! the senders that took one before it to fill their slots, so that the receiver can drain
//! every accepted message.

use std::cell::UnsafeCell;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicUsize, Ordering};

use crossbeam_utils::CachePadded;

/// Set in `tail` once the ring is closed.
const CLOSED: usize = 1 << (usize::BITS - 1);

struct Slot<T> {
    seq: AtomicUsize,
    value: UnsafeCell<MaybeUninit<T>>,
}

pub(crate) struct Ring<T> {
    slots: Box<[Slot<T>]>,
    /// The next position a sender takes, with [`CLOSED`].
    tail: CachePadded<AtomicUsize>,
    /// The next position the receiver takes (written by the receiver only).
    head: CachePadded<AtomicUsize>,
}

/// Why [`Ring::push`] handed the value back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    Full,
    Closed,
}

// SAFETY: a slot's value is written only by the sender that took its position (the
// compare-and-swap on `tail` gives each position to one sender), before it publishes the
// slot's sequence with a release store; it is read only by the receiver after it sees that
// sequence with an acquire load, and the receiver hands the slot back with a release store
// that the next lap's sender acquires. No value is accessed by two threads at once, and `T` is
// `Send`.
unsafe impl<T: Send> Sync for Ring<T> {}

impl<T> Ring<T> {
    /// A ring of `capacity` messages, and at least two: with one slot, "filled at position
    /// `p`" (sequence `p + 1`) and "free for position `p + 1`" (`p + capacity`) would read
    /// the same.
    pub(crate) fn new(capacity: usize) -> Ring<T> {
        let capacity = capacity.max(2);
        Ring {
            slots: (0..capacity)
                .map(|i| Slot {
                    seq: AtomicUsize::new(i),
                    value: UnsafeCell::new(MaybeUninit::uninit()),
                })
                .collect(),
            tail: CachePadded::new(AtomicUsize::new(0)),
            head: CachePadded::new(AtomicUsize::new(0)),
        }
    }

    fn slot(&self, pos: usize) -> &Slot<T> {
        &self.slots[pos % self.slots.len()]
    }

    /// Queue `value`, from any thread; it comes back when the ring is full or closed.
    pub(crate) fn push(&self, value: T) -> Result<(), (Refused, T)> {
        let mut t = self.tail.load(Ordering::Relaxed);
        loop {
            if t & CLOSED != 0 {
                return Err((Refused::Closed, value));
            }
            let slot = self.slot(t);
            let seq = slot.seq.load(Ordering::Acquire);
            if seq == t {
                match self
                    .tail
                    .compare_exchange_weak(t, t + 1, Ordering::AcqRel, Ordering::Relaxed)
                {
                    Ok(_) => {
                        // SAFETY: position `t` is this sender's alone (the swap above), and the
                        // slot's sequence `t` (acquired) says the receiver is done with it.
                        unsafe { (*slot.value.get()).write(value) };
                        slot.seq.store(t + 1, Ordering::Release);
                        return Ok(());
                    }
                    Err(now) => t = now,
                }
            } else if seq < t {
                // The slot still holds the message of the lap before.
                return Err((Refused::Full, value));
            } else {
                // Another sender took this position: look again.
                t = self.tail.load(Ordering::Relaxed);
            }
        }
    }

    /// Take the oldest message, if it is there.
    ///
    /// # Safety
    /// The receiver's side: one thread at a time calls `pop`, `is_empty` and `close` (the
    /// reactor that owns the ring).
    pub(crate) unsafe fn pop(&self) -> Option<T> {
        let h = self.head.load(Ordering::Relaxed);
        let slot = self.slot(h);
        if slot.seq.load(Ordering::Acquire) != h + 1 {
            return None;
        }
        // SAFETY: sequence `h + 1` (acquired) says the sender of position `h` wrote the value
        // and will not touch the slot again; only the receiver reads it, once.
        let value = unsafe { (*slot.value.get()).assume_init_read() };
        slot.seq.store(h + self.slots.len(), Ordering::Release);
        self.head.store(h + 1, Ordering::Relaxed);
        Some(value)
    }

    /// Whether no message waits for the receiver (one being written is not there yet: its
    /// sender wakes the receiver after it publishes).
    ///
    /// # Safety
    /// As for [`Ring::pop`].
    pub(crate) unsafe fn is_empty(&self) -> bool {
        let h = self.head.load(Ordering::Relaxed);
        self.slot(h).seq.load(Ordering::Acquire) != h + 1
    }

    /// Take no more messages, and wait until every sender that took a position before has
    /// filled it: after this, `pop` drains everything the ring accepted.
    ///
    /// # Safety
    /// As for [`Ring::pop`].
    pub(crate) unsafe fn close(&self) {
        let end = self.tail.fetch_or(CLOSED, Ordering::AcqRel) & !CLOSED;
        let mut pos = self.head.load(Ordering::Relaxed);
        while pos < end {
            if self.slot(pos).seq.load(Ordering::Acquire) == pos + 1 {
                pos += 1;
            } else {
                std::hint::spin_loop();
            }
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.tail.load(Ordering::Acquire) & CLOSED != 0
    }
}

impl<T> Drop for Ring<T> {
    fn drop(&mut self) {
        // SAFETY: `&mut self`: no other thread holds the ring.
        while unsafe { self.pop() }.is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Each test takes from its ring on one thread only: the receiver's contract.
    fn take<T>(r: &Ring<T>) -> Option<T> {
        // SAFETY: see above.
        unsafe { r.pop() }
    }

    fn empty<T>(r: &Ring<T>) -> bool {
        // SAFETY: see above.
        unsafe { r.is_empty() }
    }

    fn shut<T>(r: &Ring<T>) {
        // SAFETY: see above.
        unsafe { r.close() }
    }

    #[test]
    fn full_closed_and_wrapping() {
        let r = Ring::new(3);
        for lap in 0..5 {
            for i in 0..3 {
                assert!(r.push(lap * 10 + i).is_ok());
            }
            assert_eq!(r.push(99), Err((Refused::Full, 99)));
            for i in 0..3 {
                assert_eq!(take(&r), Some(lap * 10 + i));
            }
            assert!(empty(&r));
            assert_eq!(take(&r), None);
        }
        r.push(1).unwrap();
        shut(&r);
        assert!(r.is_closed());
        assert_eq!(r.push(2), Err((Refused::Closed, 2)));
        assert_eq!(
            take(&r),
            Some(1),
            "what was accepted before the close drains"
        );
        assert_eq!(take(&r), None);
    }

    #[test]
    fn a_ring_asked_for_one_slot_has_two_and_keeps_both_messages() {
        let r = Ring::new(1);
        assert!(r.push(1).is_ok());
        assert!(r.push(2).is_ok());
        assert_eq!(r.push(3), Err((Refused::Full, 3)));
        assert_eq!(take(&r), Some(1));
        assert!(r.push(3).is_ok());
        assert_eq!(take(&r), Some(2));
        assert_eq!(take(&r), Some(3));
        assert_eq!(take(&r), None);
    }

    #[test]
    fn values_left_in_the_ring_are_dropped_with_it() {
        let counted = std::sync::Arc::new(());
        let r = Ring::new(4);
        r.push(std::sync::Arc::clone(&counted)).unwrap();
        r.push(std::sync::Arc::clone(&counted)).unwrap();
        drop(r);
        assert_eq!(std::sync::Arc::strong_count(&counted), 1);
    }

    #[test]
    fn many_senders_one_receiver_each_once_in_order() {
        const SENDERS: usize = 4;
        const EACH: usize = 50_000;
        let r = std::sync::Arc::new(Ring::new(64));
        let senders: Vec<_> = (0..SENDERS)
            .map(|s| {
                let r = std::sync::Arc::clone(&r);
                std::thread::spawn(move || {
                    for i in 0..EACH {
                        let mut v = (s, i);
                        while let Err((Refused::Full, back)) = r.push(v) {
                            v = back;
                            std::thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        let mut next = [0usize; SENDERS];
        let mut got = 0;
        while got < SENDERS * EACH {
            match take(&r) {
                Some((s, i)) => {
                    assert_eq!(i, next[s], "sender {s} out of order or repeated");
                    next[s] += 1;
                    got += 1;
                }
                None => std::hint::spin_loop(),
            }
        }
        for s in senders {
            s.join().unwrap();
        }
        assert!(empty(&r));
    }
}
