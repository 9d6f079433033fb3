//! A relationship's state: one enum, one transition function ([`next`]), and what the splitter
//! does with a write in each state ([`route`]). Everything else (the splitter, the scanner,
//! the transfer engine, RPC) asks these two and never decides on its own.
//!
//! ```text
//! Uninitialized --start--> Baseline --transferred--> Incremental --transferred(shrinking)--> Incremental
//!                                                     Incremental --transferred(small)--> Establishing
//! Establishing --drained--> InSync
//! InSync | Establishing | Resyncing --secondary_failed--> OutOfSync
//! OutOfSync --secondary_back--> Resyncing --drained--> Establishing
//! InSync --quiesce--> Quiesced --resume--> Establishing
//! Uninitialized --start_from_common--> Incremental   (a snapshot both sides hold already)
//! OutOfSync --resync--> Resyncing
//! (any but Uninitialized) --break--> Broken --resync--> Incremental   (the log cannot be
//!     trusted after a break: an incremental from the common snapshot, then establishing)
//! ```

/// Where a relationship is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum State {
    Uninitialized,
    /// The first snapshot's extents go to the secondary.
    Baseline,
    /// Snapshot diffs go to the secondary, while each is smaller than the one before.
    Incremental,
    /// The splitter is on; the scanner drains what the last diff and the writes since left.
    Establishing,
    InSync,
    /// The secondary is unreachable or failing: writes go to the primary and are logged.
    OutOfSync,
    /// The secondary is back: the scanner drains the log.
    Resyncing,
    /// Splitting stopped at a common snapshot, on request.
    Quiesced,
    /// The secondary was made writable (failover): nothing replicates until a resync.
    Broken,
}

pub const STATES: [State; 9] = [
    State::Uninitialized,
    State::Baseline,
    State::Incremental,
    State::Establishing,
    State::InSync,
    State::OutOfSync,
    State::Resyncing,
    State::Quiesced,
    State::Broken,
];

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Uninitialized => "uninitialized",
            State::Baseline => "baseline",
            State::Incremental => "incremental",
            State::Establishing => "establishing",
            State::InSync => "in_sync",
            State::OutOfSync => "out_of_sync",
            State::Resyncing => "resyncing",
            State::Quiesced => "quiesced",
            State::Broken => "broken",
        }
    }
}

/// What moves a relationship.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// `repl_start`.
    Start,
    /// `repl_start` of a relationship made from a snapshot both sides hold (`common_snapshot`):
    /// no baseline.
    StartFromCommon,
    /// A snapshot transfer ended with the matching snapshot on the secondary; `shrinking`: the
    /// diff was smaller than the one before, so another incremental is worth it.
    Transferred { shrinking: bool },
    /// The scanner found nothing dirty and nothing in flight.
    Drained,
    /// A write or a copy to the secondary failed, or the connection dropped.
    SecondaryFailed,
    /// The secondary answers again.
    SecondaryBack,
    /// `repl_quiesce`.
    Quiesce,
    /// `repl_resume`.
    Resume,
    /// `repl_break`.
    Break,
    /// `repl_resync`.
    Resync,
}

/// The one transition function: the state `event` moves `from` to, or why it does not apply.
pub fn next(from: State, event: Event) -> Result<State, String> {
    use Event as E;
    use State as S;
    let to = match (from, event) {
        (S::Uninitialized, E::Start) => S::Baseline,
        (S::Uninitialized, E::StartFromCommon) => S::Incremental,
        (S::Baseline, E::Transferred { .. }) => S::Incremental,
        (S::Incremental, E::Transferred { shrinking: true }) => S::Incremental,
        (S::Incremental, E::Transferred { shrinking: false }) => S::Establishing,
        (S::Establishing, E::Drained) => S::InSync,
        (S::Resyncing, E::Drained) => S::Establishing,
        (S::InSync | S::Establishing | S::Resyncing, E::SecondaryFailed) => S::OutOfSync,
        // A transfer that fails is retried from its snapshot: the state stays.
        (S::Baseline | S::Incremental | S::OutOfSync, E::SecondaryFailed) => from,
        (S::OutOfSync, E::SecondaryBack) => S::Resyncing,
        (S::InSync, E::Quiesce) => S::Quiesced,
        (S::Quiesced, E::Resume) => S::Establishing,
        (S::Uninitialized, E::Break) => {
            return Err("an uninitialized relationship has nothing to break".into())
        }
        (S::Broken, E::Break) => return Err("already broken".into()),
        (_, E::Break) => S::Broken,
        (S::OutOfSync, E::Resync) => S::Resyncing,
        (S::Broken, E::Resync) => S::Incremental,
        _ => {
            return Err(format!(
                "{:?} does not apply to a relationship that is {}",
                event,
                from.name()
            ))
        }
    };
    Ok(to)
}

/// What the splitter does with a client write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// To both sides; acknowledged when both are done.
    Both,
    /// To the primary only; its regions are dirty for the scanner.
    PrimaryOnly,
    /// To the primary only, not logged: a snapshot diff carries it (before establishing), or
    /// a resync from a common snapshot will (broken), or nothing replicates (uninitialized).
    Local,
    /// Refused: StrictSync while the secondary cannot take it.
    Refuse,
}

/// The architecture's table: by state, whether the write's region is dirty, and the policy.
pub fn route(state: State, region_dirty: bool, strict: bool) -> Route {
    match state {
        State::InSync => Route::Both,
        State::Establishing | State::Resyncing if !region_dirty => Route::Both,
        State::Establishing | State::Resyncing => Route::PrimaryOnly,
        State::OutOfSync if strict => Route::Refuse,
        // Logged, so that resuming or resyncing drains exactly what changed.
        State::OutOfSync | State::Quiesced => Route::PrimaryOnly,
        State::Uninitialized | State::Baseline | State::Incremental | State::Broken => Route::Local,
    }
}

/// A relationship's state with its history: how many times each state was entered, and the
/// transitions made.
#[derive(Debug, Clone)]
pub struct Machine {
    state: State,
    entered: [u64; STATES.len()],
    pub transitions: u64,
}

impl Default for Machine {
    fn default() -> Machine {
        Machine::new()
    }
}

impl Machine {
    pub fn new() -> Machine {
        let mut entered = [0; STATES.len()];
        entered[State::Uninitialized as usize] = 1;
        Machine {
            state: State::Uninitialized,
            entered,
            transitions: 0,
        }
    }

    /// A machine resuming at `state` (a primary restarting from its record).
    pub fn at(state: State) -> Machine {
        let mut m = Machine::new();
        if state != State::Uninitialized {
            m.entered[state as usize] += 1;
        }
        m.state = state;
        m
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// How many times `s` was entered.
    pub fn entered(&self, s: State) -> u64 {
        self.entered[s as usize]
    }

    /// Apply `event`: the new state, logged and counted, or the refusal (nothing changes).
    pub fn apply(&mut self, name: &str, event: Event) -> Result<State, String> {
        let to = next(self.state, event)?;
        if to != self.state {
            tracing::info!(
                relationship = name,
                from = self.state.name(),
                to = to.name(),
                ?event,
                "replication state"
            );
            self.entered[to as usize] += 1;
            self.transitions += 1;
        }
        self.state = to;
        Ok(to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            Just(Event::Start),
            Just(Event::StartFromCommon),
            any::<bool>().prop_map(|shrinking| Event::Transferred { shrinking }),
            Just(Event::Drained),
            Just(Event::SecondaryFailed),
            Just(Event::SecondaryBack),
            Just(Event::Quiesce),
            Just(Event::Resume),
            Just(Event::Break),
            Just(Event::Resync),
        ]
    }

    #[test]
    fn the_lifecycle_of_the_architecture() {
        let mut m = Machine::new();
        for (e, want) in [
            (Event::Start, State::Baseline),
            (Event::Transferred { shrinking: true }, State::Incremental),
            (Event::Transferred { shrinking: true }, State::Incremental),
            (Event::Transferred { shrinking: false }, State::Establishing),
            (Event::Drained, State::InSync),
            (Event::SecondaryFailed, State::OutOfSync),
            (Event::SecondaryBack, State::Resyncing),
            (Event::Drained, State::Establishing),
            (Event::Drained, State::InSync),
            (Event::Quiesce, State::Quiesced),
            (Event::Resume, State::Establishing),
            (Event::Break, State::Broken),
            (Event::Resync, State::Incremental),
        ] {
            assert_eq!(m.apply("r", e), Ok(want), "{e:?}");
        }
        assert_eq!(m.entered(State::InSync), 2);
        assert_eq!(
            m.transitions, 12,
            "a transfer that repeats Incremental is no transition"
        );
        assert!(m.apply("r", Event::Start).is_err());
        assert_eq!(
            m.state(),
            State::Incremental,
            "a refused event changes nothing"
        );
        let mut m = Machine::new();
        assert_eq!(m.apply("r", Event::StartFromCommon), Ok(State::Incremental));
    }

    #[test]
    fn the_splitter_table() {
        assert_eq!(route(State::InSync, false, true), Route::Both);
        assert_eq!(route(State::Establishing, false, false), Route::Both);
        assert_eq!(route(State::Establishing, true, true), Route::PrimaryOnly);
        assert_eq!(route(State::OutOfSync, false, false), Route::PrimaryOnly);
        assert_eq!(route(State::OutOfSync, true, true), Route::Refuse);
        assert_eq!(route(State::Quiesced, false, true), Route::PrimaryOnly);
        assert_eq!(route(State::Baseline, false, true), Route::Local);
        assert_eq!(route(State::Broken, false, true), Route::Local);
    }

    proptest! {
        /// Any sequence of events: every state stays reachable from where it is to InSync
        /// (no dead end but by delete), and InSync is entered only from Establishing.
        #[test]
        fn no_dead_ends(events in proptest::collection::vec(event(), 0..60)) {
            let mut m = Machine::new();
            for e in events {
                let before = m.state();
                if let Ok(to) = m.apply("p", e) {
                    if to == State::InSync && before != State::InSync {
                        prop_assert_eq!(before, State::Establishing);
                    }
                }
            }
            // From wherever it is, some events lead to InSync.
            let mut s = m.state();
            for e in [Event::Start, Event::Resync, Event::SecondaryBack, Event::Resume,
                      Event::Transferred { shrinking: false }, Event::Transferred { shrinking: false },
                      Event::Drained, Event::Drained, Event::Drained] {
                if let Ok(t) = next(s, e) {
                    s = t;
                }
            }
            prop_assert_eq!(s, State::InSync);
        }
    }
}
