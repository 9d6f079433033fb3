//! Several reactors in one OS thread, polled in an order the test controls, with a mock clock:
//! multi-reactor logic tested deterministically, the way SPDK's unit tests poll simulated
//! threads in turn.
//!
//! Nothing here sleeps or reads the real clock. A seeded schedule ([`Sim::step_seeded`])
//! reproduces an interleaving exactly from its seed.

use std::sync::Arc;
use std::time::Duration;

use super::clock::{Clock, MockClock};
use super::mailbox::{Msg, SendError};
use super::poller::PollStatus;
use super::registry::Registry;
use super::thread::Reactor;
use super::{Error, ReactorId, Result};

pub struct Sim {
    registry: Arc<Registry>,
    clock: MockClock,
    reactors: Vec<Reactor>,
}

/// A small deterministic generator (splitmix64) for seeded schedules.
#[derive(Debug, Clone)]
pub struct SimRng(u64);

impl SimRng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

impl Sim {
    /// `n` simulated reactors, ids 0..n, sharing a mock clock that starts at 0.
    pub fn new(n: usize) -> Result<Sim> {
        let registry = Registry::new(16 * 1024);
        let clock = MockClock::default();
        let mut reactors = Vec::with_capacity(n);
        for i in 0..n {
            let mailbox = registry.add()?;
            reactors.push(Reactor::new(
                Arc::clone(&registry),
                mailbox,
                format!("sim_{i}"),
                Clock::Mock(clock.clone()),
            )?);
        }
        Ok(Sim {
            registry,
            clock,
            reactors,
        })
    }

    pub fn len(&self) -> usize {
        self.reactors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.reactors.is_empty()
    }

    pub fn id(&self, index: usize) -> ReactorId {
        self.reactors[index].id()
    }

    pub fn reactor(&self, index: usize) -> &Reactor {
        &self.reactors[index]
    }

    /// Run `f` as code on reactor `index` (to register pollers, timers, locals).
    pub fn enter<R>(&self, index: usize, f: impl FnOnce() -> R) -> R {
        self.reactors[index].enter(f)
    }

    pub fn send(
        &self,
        to: ReactorId,
        f: impl FnOnce() + Send + 'static,
    ) -> std::result::Result<(), SendError> {
        self.registry.send(to, Msg::new(f))
    }

    /// One loop iteration of reactor `index`.
    pub fn poll(&self, index: usize) -> PollStatus {
        self.reactors[index].poll()
    }

    /// One iteration of each reactor, in id order. Busy if any was.
    pub fn poll_round(&self) -> PollStatus {
        self.reactors
            .iter()
            .fold(PollStatus::Idle, |acc, r| acc.or(r.poll()))
    }

    /// Poll rounds until a whole round is idle; fails after `max_rounds` busy rounds, so that a
    /// livelock shows as an error, not a hang. Returns the rounds run.
    pub fn run_until_idle(&self, max_rounds: usize) -> Result<usize> {
        for round in 1..=max_rounds {
            if self.poll_round() == PollStatus::Idle {
                return Ok(round);
            }
        }
        Err(Error::SimLivelock { rounds: max_rounds })
    }

    /// Poll one reactor chosen by `rng`: a seeded schedule reproduces its interleaving.
    pub fn step_seeded(&self, rng: &mut SimRng) -> (usize, PollStatus) {
        let index = rng.below(self.reactors.len());
        (index, self.reactors[index].poll())
    }

    pub fn now(&self) -> Duration {
        Duration::from_nanos(self.clock.now_ns())
    }

    /// Move the mock clock; nothing runs until the reactors are polled.
    pub fn advance(&self, by: Duration) {
        self.clock.advance_ns(by.as_nanos() as u64);
    }

    /// Advance the clock by `step` and run until idle, until `total` has passed.
    pub fn run_for(&self, total: Duration, step: Duration) -> Result<()> {
        let step = step.max(Duration::from_nanos(1));
        let end = self.clock.now_ns() + total.as_nanos() as u64;
        self.run_until_idle(1_000_000)?;
        while self.clock.now_ns() < end {
            let left = end - self.clock.now_ns();
            self.advance(Duration::from_nanos(left.min(step.as_nanos() as u64)));
            self.run_until_idle(1_000_000)?;
        }
        Ok(())
    }
}
