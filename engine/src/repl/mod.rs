//! Synchronous replication of a volume to a second engine (issue #9, being built): so far the
//! dirty region log.
//!
//! | module | owns |
//! | --- | --- |
//! | [`drl`] | the dirty region log: atomic bitmaps for the data path, write intent on disk |

pub mod drl;
