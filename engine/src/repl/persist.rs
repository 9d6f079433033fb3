//! What a relationship keeps in the primary's store, so that a primary that crashes resumes
//! where it was: its record (configuration, state, last common snapshot, snapshot sequence)
//! and its dirty region log ([`super::drl::encode`]). Both are store objects; a store commit
//! makes each durable.
//!
//! The record is JSON with a version; reading it checks every field, so a damaged or foreign
//! record is refused with a message rather than half-used.

use serde_json::{json, Value};

use super::relationship::Policy;
use super::state::{State, STATES};

pub const VERSION: u64 = 1;

/// The store object holding relationship `name`'s record.
pub fn record_object(name: &str) -> String {
    format!("repl.{name}")
}

/// The store object holding relationship `name`'s dirty region log.
pub fn log_object(name: &str) -> String {
    format!("repl.{name}.drl")
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub name: String,
    /// Random, fixed at creation: in the replication snapshots' names, so that they never
    /// meet those of an earlier relationship of the same name.
    pub id: String,
    pub primary: String,
    pub secondary_volume: String,
    pub policy: Policy,
    pub region_size: u64,
    pub state: State,
    pub last_common: Option<String>,
    /// The sequence number of the newest replication snapshot taken.
    pub seq: u64,
    /// The secondary may have been written since the last common snapshot (a break, or a
    /// relationship made from a common snapshot): the next transfer also sends what changed
    /// there.
    pub secondary_diverged: bool,
}

impl Record {
    pub fn encode(&self) -> Vec<u8> {
        json!({
            "version": VERSION,
            "name": self.name,
            "id": self.id,
            "primary": self.primary,
            "secondary_volume": self.secondary_volume,
            "policy": self.policy.name(),
            "region_size": self.region_size,
            "state": self.state.name(),
            "last_common": self.last_common,
            "seq": self.seq,
            "secondary_diverged": self.secondary_diverged,
        })
        .to_string()
        .into_bytes()
    }

    pub fn decode(b: &[u8]) -> Result<Record, String> {
        let v: Value =
            serde_json::from_slice(b).map_err(|e| format!("a replication record: {e}"))?;
        let str_of = |k: &str| {
            v[k].as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("a replication record without {k}"))
        };
        let u64_of = |k: &str| {
            v[k].as_u64()
                .ok_or_else(|| format!("a replication record without {k}"))
        };
        let version = u64_of("version")?;
        if version != VERSION {
            return Err(format!(
                "a replication record of version {version}; this engine reads {VERSION}"
            ));
        }
        let policy = str_of("policy")?;
        let state = str_of("state")?;
        Ok(Record {
            name: str_of("name")?,
            id: str_of("id")?,
            primary: str_of("primary")?,
            secondary_volume: str_of("secondary_volume")?,
            policy: Policy::parse(&policy)
                .ok_or_else(|| format!("a replication record with policy {policy:?}"))?,
            region_size: u64_of("region_size")?,
            state: STATES
                .iter()
                .copied()
                .find(|s| s.name() == state)
                .ok_or_else(|| format!("a replication record in state {state:?}"))?,
            last_common: match &v["last_common"] {
                Value::Null => None,
                Value::String(s) => Some(s.clone()),
                _ => return Err("a replication record with a bad last_common".into()),
            },
            seq: u64_of("seq")?,
            secondary_diverged: v["secondary_diverged"]
                .as_bool()
                .ok_or("a replication record without secondary_diverged")?,
        })
    }

    /// The state a primary that restarts resumes in. Writes may have been in flight, and the
    /// secondary may have been lost meanwhile: a pair that was splitting resumes out of sync
    /// and resyncs from the log; a transfer starts again from the last common snapshot.
    pub fn resume_state(&self) -> State {
        match self.state {
            State::Establishing | State::InSync | State::Resyncing | State::OutOfSync => {
                State::OutOfSync
            }
            State::Incremental if self.last_common.is_none() => State::Baseline,
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec() -> Record {
        Record {
            name: "r1".into(),
            id: "0a1b2c3d".into(),
            primary: "lvs0/vms/vm1/disk0".into(),
            secondary_volume: "lvs1/v".into(),
            policy: Policy::StrictSync,
            region_size: 1 << 18,
            state: State::InSync,
            last_common: Some("repl.r1.7".into()),
            seq: 7,
            secondary_diverged: true,
        }
    }

    #[test]
    fn a_record_comes_back_as_it_was_and_bad_bytes_are_refused() {
        let r = rec();
        assert_eq!(Record::decode(&r.encode()).unwrap(), r);
        let r2 = Record {
            last_common: None,
            state: State::Incremental,
            ..rec()
        };
        assert_eq!(Record::decode(&r2.encode()).unwrap(), r2);
        assert_eq!(r2.resume_state(), State::Baseline);
        assert_eq!(r.resume_state(), State::OutOfSync);
        for bad in [
            &b""[..],
            b"{}",
            b"[1]",
            br#"{"version": 2}"#,
            br#"{"version": 1, "name": "r", "primary": "a/b", "secondary_volume": "c/d", "policy": "async", "region_size": 1, "state": "in_sync", "last_common": null, "seq": 0}"#,
            br#"{"version": 1, "name": "r", "primary": "a/b", "secondary_volume": "c/d", "policy": "sync", "region_size": 1, "state": "flying", "last_common": null, "seq": 0}"#,
            br#"{"version": 1, "name": "r", "primary": "a/b", "secondary_volume": "c/d", "policy": "sync", "region_size": 1, "state": "in_sync", "last_common": 5, "seq": 0}"#,
        ] {
            assert!(Record::decode(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
