//! Decoding a request's `params` object strictly, as SPDK does: a known set of keys, each of the
//! expected type; anything else is an invalid-params error that names the key.

use serde_json::{Map, Value};

use super::RpcError;

static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();

pub struct Params<'a> {
    method: &'a str,
    map: &'a Map<String, Value>,
}

impl<'a> Params<'a> {
    pub fn new(method: &'a str, params: &'a Value) -> Result<Self, RpcError> {
        let map = match params {
            Value::Null => EMPTY.get_or_init(Map::new),
            Value::Object(m) => m,
            _ => {
                return Err(RpcError::invalid_params(format!(
                    "{method}: params must be an object"
                )))
            }
        };
        Ok(Self { method, map })
    }

    /// Refuse keys outside `known`.
    pub fn only(&self, known: &[&str]) -> Result<(), RpcError> {
        match self.map.keys().find(|k| !known.contains(&k.as_str())) {
            Some(k) => Err(RpcError::invalid_params(format!(
                "{}: unknown parameter {k:?}",
                self.method
            ))),
            None => Ok(()),
        }
    }

    fn bad(&self, key: &str, want: &str) -> RpcError {
        RpcError::invalid_params(format!("{}: {key:?} must be {want}", self.method))
    }

    fn missing(&self, key: &str) -> RpcError {
        RpcError::invalid_params(format!("{}: {key:?} is required", self.method))
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<&'a str>, RpcError> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(self.bad(key, "a string")),
        }
    }

    pub fn str(&self, key: &str) -> Result<&'a str, RpcError> {
        self.opt_str(key)?.ok_or_else(|| self.missing(key))
    }

    pub fn opt_u64(&self, key: &str) -> Result<Option<u64>, RpcError> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| self.bad(key, "a non-negative integer")),
        }
    }

    pub fn u64(&self, key: &str) -> Result<u64, RpcError> {
        self.opt_u64(key)?.ok_or_else(|| self.missing(key))
    }

    pub fn opt_i64(&self, key: &str) -> Result<Option<i64>, RpcError> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_i64()
                .map(Some)
                .ok_or_else(|| self.bad(key, "an integer")),
        }
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>, RpcError> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(self.bad(key, "true or false")),
        }
    }

    pub fn opt_str_list(&self, key: &str) -> Result<Option<Vec<&'a str>>, RpcError> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_str()
                        .ok_or_else(|| self.bad(key, "an array of strings"))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(_) => Err(self.bad(key, "an array of strings")),
        }
    }

    /// A nested object, decoded as strictly as the outer one.
    pub fn obj(&self, key: &str) -> Result<Params<'a>, RpcError> {
        match self.map.get(key) {
            Some(Value::Object(map)) => Ok(Params {
                method: self.method,
                map,
            }),
            None | Some(Value::Null) => Err(self.missing(key)),
            Some(_) => Err(self.bad(key, "an object")),
        }
    }

    /// A key SPDK has but Tandem does not implement: accepted only at its default value.
    pub fn default_only(&self, key: &str, default: &Value) -> Result<(), RpcError> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(()),
            Some(v) if v == default => Ok(()),
            Some(v) => Err(RpcError::invalid_params(format!(
                "{}: {key:?} = {v} is not supported (only {default})",
                self.method
            ))),
        }
    }
}
