//! A JSON-RPC 2.0 client for another engine's Unix socket: how the CLI talks to tandemd and
//! how a replication primary drives its secondary (snapshots there). Control path: it blocks,
//! with a bound on every step.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

/// Why a call did not give a result.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Io(String),
    #[error("the answer is not JSON-RPC: {0}")]
    Protocol(String),
    /// The server's error object.
    #[error("{message} (code {code})")]
    Remote { code: i64, message: String },
}

/// Call `method` with `params` (`Value::Null`: none) on the server at `socket`; the whole
/// exchange is bounded by `timeout`.
pub fn call(
    socket: &Path,
    method: &str,
    params: &Value,
    timeout: Duration,
) -> Result<Value, ClientError> {
    let io = |e: std::io::Error| ClientError::Io(format!("{}: {e}", socket.display()));
    let mut req = json!({"jsonrpc": "2.0", "method": method, "id": 1});
    if !params.is_null() {
        req["params"] = params.clone();
    }
    let mut stream = UnixStream::connect(socket).map_err(io)?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    stream.write_all(req.to_string().as_bytes()).map_err(io)?;
    let reply = serde_json::Deserializer::from_reader(&stream)
        .into_iter::<Value>()
        .next()
        .ok_or_else(|| ClientError::Protocol("the server closed without answering".into()))?
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
    match (reply.get("result"), reply.get("error")) {
        (Some(r), _) => Ok(r.clone()),
        (None, Some(e)) => Err(ClientError::Remote {
            code: e.get("code").and_then(Value::as_i64).unwrap_or(0),
            message: e
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
        }),
        _ => Err(ClientError::Protocol(reply.to_string())),
    }
}
