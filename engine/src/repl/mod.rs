//! Synchronous replication of a volume to a second engine (issue #9, being built): so far the
//! dirty region log and the relationship's state machine.
//!
//! | module | owns |
//! | --- | --- |
//! | [`drl`] | the dirty region log: atomic bitmaps for the data path, write intent on disk |
//! | [`state`] | the relationship's states, the one transition function, the splitter's table |

pub mod drl;
pub mod state;
