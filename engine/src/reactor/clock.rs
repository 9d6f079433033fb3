//! The reactor's notion of time: CLOCK_MONOTONIC in production, a hand-moved mock in
//! `reactor::sim`. Time is a u64 of nanoseconds so that deadlines compare and add cheaply.

use std::cell::Cell;
use std::rc::Rc;

use crate::sys::monotonic_ns;

#[derive(Clone)]
pub(crate) enum Clock {
    /// CLOCK_MONOTONIC, the clock the reactor's timerfd is armed in.
    Monotonic,
    /// Shared by the reactors of one simulation; moved only by `Sim::advance`.
    Mock(MockClock),
}

impl Clock {
    pub(crate) fn now_ns(&self) -> u64 {
        match self {
            Clock::Monotonic => monotonic_ns(),
            Clock::Mock(m) => m.now_ns(),
        }
    }
}

/// A clock that moves only when told to. Single-threaded, like the simulation that owns it.
#[derive(Clone, Default)]
pub struct MockClock(Rc<Cell<u64>>);

impl MockClock {
    pub fn now_ns(&self) -> u64 {
        self.0.get()
    }

    pub fn advance_ns(&self, ns: u64) {
        self.0.set(self.0.get().saturating_add(ns));
    }
}
