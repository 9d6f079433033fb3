//! Synchronous replication of a volume to a second engine (issue #9, being built).
//!
//! | module | owns |
//! | --- | --- |
//! | [`drl`] | the dirty region log: atomic bitmaps for the data path, write intent on disk |
//! | [`state`] | the relationship's states, the one transition function, the splitter's table |
//! | [`inflight`] | claims on the blocks split writes have in flight, so overlapping writes go in turn |
//! | [`splitter`] | the write tap on the primary: each write to one side or both, by state and region |
//! | [`copier`] | snapshot transfers and the cutover scanner: bytes to the secondary from one reactor |
//! | [`persist`] | a relationship's record and log in the primary's store, for a restart |
//! | [`relationship`] | a relationship's configuration, its driver thread, and the registry |

pub mod copier;
pub mod drl;
pub mod inflight;
pub mod persist;
pub mod relationship;
pub mod splitter;
pub mod state;

#[cfg(test)]
mod tests;
