//! The start-up configuration: a JSON file in the shape of SPDK's `save_config` output,
//! `{"subsystems": [{"subsystem": "bdev", "config": [{"method": ..., "params": {...}}]}]}`.
//!
//! Each entry is an RPC call replayed at start-up by the module that owns its subsystem.
//! This module reads and checks the shape; unknown subsystems are refused so that a typo does
//! not silently start a daemon without its namespaces.

use std::path::Path;

use serde_json::Value;

/// Subsystems whose sections tandemd understands (SPDK's names).
pub const KNOWN_SUBSYSTEMS: &[&str] = &[
    "bdev",
    "repl",
    "nvmf",
    "iobuf",
    "accel",
    "sock",
    "vmd",
    "scheduler",
];

#[derive(Debug, Clone, PartialEq)]
pub struct ConfigCall {
    pub subsystem: String,
    pub method: String,
    pub params: Value,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("config {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config {path}: not JSON: {source}")]
    Json {
        path: String,
        source: serde_json::Error,
    },
    #[error("config {path}: {what}")]
    Shape { path: String, what: String },
}

/// Read a config file into the ordered list of calls it holds.
pub fn load(path: &Path) -> Result<Vec<ConfigCall>, Error> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: shown.clone(),
        source,
    })?;
    let doc: Value = serde_json::from_str(&text).map_err(|source| Error::Json {
        path: shown.clone(),
        source,
    })?;
    parse(&doc).map_err(|what| Error::Shape { path: shown, what })
}

/// Check the shape of a parsed config and flatten it into calls.
pub fn parse(doc: &Value) -> Result<Vec<ConfigCall>, String> {
    let subsystems = doc
        .get("subsystems")
        .and_then(Value::as_array)
        .ok_or("the top level must be an object with a \"subsystems\" array")?;
    let mut calls = Vec::new();
    for (i, sub) in subsystems.iter().enumerate() {
        let name = sub
            .get("subsystem")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("subsystems[{i}] has no \"subsystem\" name"))?;
        if !KNOWN_SUBSYSTEMS.contains(&name) {
            return Err(format!("subsystems[{i}]: unknown subsystem {name:?}"));
        }
        let config = match sub.get("config") {
            None | Some(Value::Null) => continue,
            Some(Value::Array(a)) => a,
            Some(_) => return Err(format!("subsystem {name:?}: \"config\" must be an array")),
        };
        for (j, call) in config.iter().enumerate() {
            let method = call
                .get("method")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("subsystem {name:?} config[{j}] has no \"method\""))?;
            let params = call.get("params").cloned().unwrap_or(Value::Null);
            if !(params.is_object() || params.is_null()) {
                return Err(format!("{method}: \"params\" must be an object"));
            }
            calls.push(ConfigCall {
                subsystem: name.to_owned(),
                method: method.to_owned(),
                params,
            });
        }
    }
    Ok(calls)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn save_config_shape_flattens_in_order() {
        let doc = json!({"subsystems": [
            {"subsystem": "bdev", "config": [
                {"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": 1024, "block_size": 512}},
                {"method": "bdev_wait_for_examine"}]},
            {"subsystem": "nvmf", "config": null}]});
        let calls = parse(&doc).unwrap();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].method, "bdev_malloc_create");
        assert_eq!(calls[0].params["num_blocks"], 1024);
        assert_eq!(calls[1].params, Value::Null);
    }

    #[test]
    fn bad_shapes_say_where() {
        for (doc, needle) in [
            (json!([]), "top level"),
            (json!({"subsystems": [{"config": []}]}), "subsystems[0]"),
            (
                json!({"subsystems": [{"subsystem": "bdevv"}]}),
                "unknown subsystem",
            ),
            (
                json!({"subsystems": [{"subsystem": "bdev", "config": {}}]}),
                "must be an array",
            ),
            (
                json!({"subsystems": [{"subsystem": "bdev", "config": [{"params": {}}]}]}),
                "config[0]",
            ),
            (
                json!({"subsystems": [{"subsystem": "bdev", "config": [{"method": "x", "params": 3}]}]}),
                "params",
            ),
        ] {
            let err = parse(&doc).unwrap_err();
            assert!(err.contains(needle), "{err:?} lacks {needle:?}");
        }
    }
}
