//! The Unix-socket server: a listener thread, and a thread per connection that reads JSON
//! values as they complete and answers each (or each member of a batch) in order.

use std::cell::Cell;
use std::io::{BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};

use super::{call, RpcError, INVALID_REQUEST, PARSE_ERROR};

/// A running server; dropping it stops accepting and removes the socket file.
pub struct Server {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Listen on `path`. A stale socket file (nobody answering on it) is replaced; a live one
    /// is an error, as is any other file there.
    pub fn start(path: &Path) -> std::io::Result<Server> {
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    format!("{} is in use by another server", path.display()),
                ));
            }
            use std::os::unix::fs::FileTypeExt;
            if !std::fs::symlink_metadata(path)?.file_type().is_socket() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", path.display()),
                ));
            }
            std::fs::remove_file(path)?;
        }
        let listener = UnixListener::bind(path)?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("rpc".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if s.load(Ordering::Acquire) {
                        break;
                    }
                    match conn {
                        Ok(stream) => {
                            let _ = std::thread::Builder::new()
                                .name("rpc_conn".into())
                                .spawn(move || serve(stream));
                        }
                        Err(e) => tracing::warn!("rpc accept: {e}"),
                    }
                }
            })?;
        Ok(Server {
            path: path.to_owned(),
            stop,
            thread: Some(thread),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the accept loop so that it sees the flag.
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The largest request accepted (bounds what one client can make the server buffer).
const MAX_REQUEST_BYTES: u64 = 16 * 1024 * 1024;

/// Counts the bytes read since the last request ended, and refuses to read past the limit.
struct PerRequestLimit {
    inner: UnixStream,
    used: Rc<Cell<u64>>,
}

impl Read for PerRequestLimit {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = MAX_REQUEST_BYTES.saturating_sub(self.used.get());
        if left == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "request larger than 16 MiB",
            ));
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.used.set(self.used.get() + n as u64);
        Ok(n)
    }
}

fn serve(stream: UnixStream) {
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let used = Rc::new(Cell::new(0));
    let reader = BufReader::new(PerRequestLimit {
        inner: stream,
        used: used.clone(),
    });
    for value in serde_json::Deserializer::from_reader(reader).into_iter::<Value>() {
        // The limit is per request: what was read for this one no longer counts.
        used.set(0);
        let reply = match value {
            Ok(v) => answer(v),
            Err(e) if e.is_eof() => return,
            Err(e) => {
                // The stream cannot be resynchronised after bad JSON: answer, then close.
                let _ = write(
                    &mut out,
                    &error_response(
                        Value::Null,
                        &RpcError::new(PARSE_ERROR, format!("Parse error: {e}")),
                    ),
                );
                return;
            }
        };
        if let Some(r) = reply {
            if write(&mut out, &r).is_err() {
                return;
            }
        }
    }
}

fn write(out: &mut UnixStream, v: &Value) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(v).expect("a Value serialises");
    bytes.push(b'\n');
    out.write_all(&bytes)
}

fn error_response(id: Value, e: &RpcError) -> Value {
    json!({ "jsonrpc": "2.0", "error": e.to_json(), "id": id })
}

/// The response to one decoded request or batch; `None` for notifications.
pub fn answer(v: Value) -> Option<Value> {
    match v {
        Value::Array(batch) if batch.is_empty() => Some(error_response(
            Value::Null,
            &RpcError::new(INVALID_REQUEST, "Invalid request: empty batch"),
        )),
        Value::Array(batch) => {
            let replies: Vec<Value> = batch.into_iter().filter_map(one).collect();
            (!replies.is_empty()).then_some(Value::Array(replies))
        }
        other => one(other),
    }
}

fn one(req: Value) -> Option<Value> {
    let id = req.get("id").cloned();
    let reply_id = id.clone().unwrap_or(Value::Null);
    let invalid = |why: &str| {
        Some(error_response(
            reply_id.clone(),
            &RpcError::new(INVALID_REQUEST, format!("Invalid request: {why}")),
        ))
    };
    let Value::Object(obj) = &req else {
        return invalid("not an object");
    };
    if obj.get("jsonrpc") != Some(&json!("2.0")) {
        return invalid("\"jsonrpc\" must be \"2.0\"");
    }
    if !matches!(
        id,
        None | Some(Value::Number(_)) | Some(Value::String(_)) | Some(Value::Null)
    ) {
        return invalid("\"id\" must be a number, a string or null");
    }
    let Some(method) = obj.get("method").and_then(Value::as_str) else {
        return invalid("no \"method\" string");
    };
    let result = call(method, obj.get("params").unwrap_or(&Value::Null));
    // A request without an id is a notification: run it, answer nothing.
    let id = id?;
    Some(match result {
        Ok(r) => json!({ "jsonrpc": "2.0", "result": r, "id": id }),
        Err(e) => error_response(id, &e),
    })
}
