//! Synchronous replication of a volume to a second engine (issue #9, being built).
//!
//! | module | owns |
//! | --- | --- |
//! | [`drl`] | the dirty region log: atomic bitmaps for the data path, write intent on disk |
//! | [`state`] | the relationship's states, the one transition function, the splitter's table |
//! | [`inflight`] | claims on the blocks split writes have in flight, so overlapping writes go in turn |
//! | [`splitter`] | the write tap on the primary: each write to one side or both, by state and region |
//! | [`copier`] | snapshot transfers and the cutover scanner: bytes to the secondary from one reactor |
//! | [`failure`] | why the secondary or a copy failed, for `last_error`, kept without a lock |
//! | [`persist`] | a relationship's record and log in the primary's store, for a restart |
//! | [`config`] | a relationship's configuration, and the errors its operations answer with |
//! | [`relationship`] | a relationship: its status, its commands, and the registry |
//! | `driver` | a relationship's control thread: the state machine, transfers, scanner, barrier |
//! | `flusher` | the dirty region log on disk: flushes for waiting writes, trims on a clock |

pub mod config;
pub mod copier;
mod driver;
pub mod drl;
pub mod failure;
mod flusher;
pub mod inflight;
pub mod persist;
pub mod relationship;
pub mod splitter;
pub mod state;

#[cfg(test)]
mod tests;
