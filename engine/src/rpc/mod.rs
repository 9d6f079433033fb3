//! JSON-RPC 2.0 on a Unix socket, with SPDK's method names and parameters where SPDK has the
//! method, so that SPDK's own client (`spdk-rpc` from PyPI) drives tandemd.
//!
//! Control path only: the server runs on its own threads (one per connection; clients are
//! operators and orchestration, few and slow) and calls the engine's control APIs, which never
//! block a reactor. The same dispatch replays a start-up config ([`crate::config`]).
//!
//! Framing is SPDK's: requests and responses are bare JSON values on the stream, one after
//! another, read incrementally (a request may arrive in pieces, several may arrive at once).
//! Errors are JSON-RPC error objects: SPDK's codes for protocol errors (-32700 parse, -32600
//! invalid request, -32601 unknown method, -32602 invalid params) and a negative errno for a
//! refused operation, as SPDK answers, with a message that names the problem.

pub mod base64;
mod bdev_methods;
pub mod client;
mod nvmf_methods;
mod params;
mod repl_methods;
mod server;
mod store_methods;
mod store_ns_methods;

use serde_json::{json, Value};

pub use params::Params;
pub use server::{answer, Server};

pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;

/// A JSON-RPC error object.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message} (code {code})")]
pub struct RpcError {
    pub code: i64,
    pub message: String,
}

impl RpcError {
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn invalid_params(message: impl Into<String>) -> Self {
        Self::new(INVALID_PARAMS, message)
    }

    pub fn to_json(&self) -> Value {
        json!({ "code": self.code, "message": self.message })
    }
}

impl From<crate::bdev::Error> for RpcError {
    fn from(e: crate::bdev::Error) -> Self {
        let code = match e {
            crate::bdev::Error::InvalidArgument(_) => INVALID_PARAMS,
            ref other => other.errno() as i64,
        };
        RpcError::new(code, e.to_string())
    }
}

pub type RpcResult = Result<Value, RpcError>;

type Method = fn(&Params) -> RpcResult;

/// Every method tandemd answers, by name.
const METHODS: &[(&str, Method)] = &[
    ("rpc_get_methods", rpc_get_methods),
    ("spdk_get_version", spdk_get_version),
    ("framework_wait_init", framework_wait_init),
    ("save_config", save_config),
    ("framework_get_subsystems", framework_get_subsystems),
    ("framework_get_config", framework_get_config),
    ("bdev_malloc_create", bdev_methods::malloc_create),
    ("bdev_malloc_delete", bdev_methods::malloc_delete),
    ("bdev_null_create", bdev_methods::null_create),
    ("bdev_null_delete", bdev_methods::null_delete),
    ("bdev_uring_create", bdev_methods::uring_create),
    ("bdev_uring_delete", bdev_methods::uring_delete),
    ("bdev_error_create", bdev_methods::error_create),
    ("bdev_error_delete", bdev_methods::error_delete),
    ("bdev_error_inject_error", bdev_methods::error_inject_error),
    ("bdev_get_bdevs", bdev_methods::get_bdevs),
    ("bdev_get_iostat", bdev_methods::get_iostat),
    (
        "bdev_nvme_attach_controller",
        bdev_methods::nvme_attach_controller,
    ),
    (
        "bdev_nvme_detach_controller",
        bdev_methods::nvme_detach_controller,
    ),
    (
        "bdev_nvme_get_controllers",
        bdev_methods::nvme_get_controllers,
    ),
    ("bdev_lvol_create_lvstore", store_methods::create_lvstore),
    ("bdev_lvol_delete_lvstore", store_methods::delete_lvstore),
    ("bdev_lvol_get_lvstores", store_methods::get_lvstores),
    ("bdev_lvol_create", store_methods::create),
    ("bdev_lvol_resize", store_methods::resize),
    ("bdev_lvol_snapshot", store_methods::snapshot),
    ("bdev_lvol_clone", store_methods::clone),
    ("bdev_lvol_delete", store_methods::delete),
    ("bdev_lvol_get_lvols", store_methods::get_lvols),
    ("store_load", store_methods::load),
    ("store_snapshot_create", store_methods::snapshot_create),
    ("store_snapshot_list", store_methods::snapshot_list),
    ("store_snapshot_delete", store_methods::snapshot_delete),
    ("store_snapshot_bdev", store_methods::snapshot_bdev),
    ("store_clone", store_methods::clone_volume),
    ("store_block_diff", store_methods::block_diff),
    ("store_check", store_methods::check),
    ("store_mkdir", store_ns_methods::mkdir),
    ("store_create", store_ns_methods::create),
    ("store_symlink", store_ns_methods::symlink),
    ("store_link", store_ns_methods::link),
    ("store_unlink", store_ns_methods::unlink),
    ("store_rmdir", store_ns_methods::rmdir),
    ("store_rename", store_ns_methods::rename),
    ("store_stat", store_ns_methods::stat),
    ("store_readdir", store_ns_methods::readdir),
    ("store_setattr", store_ns_methods::setattr),
    ("store_set_xattr", store_ns_methods::set_xattr),
    ("store_remove_xattr", store_ns_methods::remove_xattr),
    ("store_write", store_ns_methods::write),
    ("store_read", store_ns_methods::read),
    ("store_truncate", store_ns_methods::truncate),
    ("store_punch", store_ns_methods::punch),
    ("store_clone_file", store_ns_methods::clone_file),
    ("store_clone_range", store_ns_methods::clone_range),
    ("store_diff", store_ns_methods::diff),
    ("repl_create", repl_methods::create),
    ("repl_start", repl_methods::start),
    ("repl_get", repl_methods::get),
    ("repl_quiesce", repl_methods::quiesce),
    ("repl_resume", repl_methods::resume),
    ("repl_break", repl_methods::break_off),
    ("repl_resync", repl_methods::resync),
    ("repl_delete", repl_methods::delete),
    ("nvmf_create_transport", nvmf_methods::create_transport),
    ("nvmf_get_transports", nvmf_methods::get_transports),
    ("nvmf_create_subsystem", nvmf_methods::create_subsystem),
    ("nvmf_delete_subsystem", nvmf_methods::delete_subsystem),
    ("nvmf_subsystem_add_ns", nvmf_methods::add_ns),
    ("nvmf_subsystem_remove_ns", nvmf_methods::remove_ns),
    ("nvmf_subsystem_add_listener", nvmf_methods::add_listener),
    (
        "nvmf_subsystem_remove_listener",
        nvmf_methods::remove_listener,
    ),
    ("nvmf_subsystem_add_host", nvmf_methods::add_host),
    ("nvmf_subsystem_remove_host", nvmf_methods::remove_host),
    (
        "nvmf_subsystem_allow_any_host",
        nvmf_methods::allow_any_host,
    ),
    ("nvmf_get_subsystems", nvmf_methods::get_subsystems),
    (
        "nvmf_subsystem_get_controllers",
        nvmf_methods::get_controllers,
    ),
];

/// Set while a start-up configuration is replayed: a remote target that is down is then
/// attached in the background rather than failing the start (see [`crate::bdev::nvmf`]).
static REPLAYING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn replaying() -> bool {
    REPLAYING.load(std::sync::atomic::Ordering::SeqCst)
}

/// Replay a saved configuration's calls in order, before the server listens; the first that
/// fails stops it, and is returned with its method.
pub fn replay(calls: &[crate::config::ConfigCall]) -> Result<(), (String, RpcError)> {
    use std::sync::atomic::Ordering::SeqCst;
    REPLAYING.store(true, SeqCst);
    let r = calls.iter().try_for_each(|c| {
        call(&c.method, &c.params)
            .map(|_| ())
            .map_err(|e| (c.method.clone(), e))
    });
    REPLAYING.store(false, SeqCst);
    r
}

/// Run one method. `params` is the request's `params` member (absent: `Value::Null`).
pub fn call(method: &str, params: &Value) -> RpcResult {
    let f = METHODS
        .iter()
        .find(|(name, _)| *name == method)
        .map(|(_, f)| *f)
        .ok_or_else(|| RpcError::new(METHOD_NOT_FOUND, format!("Method not found: {method}")))?;
    f(&Params::new(method, params)?)
}

fn rpc_get_methods(p: &Params) -> RpcResult {
    p.only(&["current", "include_aliases"])?;
    Ok(json!(METHODS.iter().map(|(n, _)| *n).collect::<Vec<_>>()))
}

fn spdk_get_version(p: &Params) -> RpcResult {
    p.only(&[])?;
    let mut parts = crate::VERSION
        .split('.')
        .map(|x| x.parse::<u64>().unwrap_or(0));
    Ok(json!({
        "version": format!("Tandem v{}", crate::VERSION),
        "fields": {
            "major": parts.next().unwrap_or(0),
            "minor": parts.next().unwrap_or(0),
            "patch": parts.next().unwrap_or(0),
            "suffix": "",
        }
    }))
}

/// Tandem initialises before its RPC server listens: this answers at once.
fn framework_wait_init(p: &Params) -> RpcResult {
    p.only(&[])?;
    Ok(json!(true))
}

/// The subsystems whose configuration tandemd saves, in start-up order, each with those it
/// depends on (namespaces need their bdevs; a relationship taps its volume before any
/// namespace exports it, so that no client write escapes it after a restart).
const SUBSYSTEMS: &[(&str, &[&str])] = &[
    ("bdev", &[]),
    ("repl", &["bdev"]),
    ("nvmf", &["bdev", "repl"]),
];

fn subsystem_config(name: &str) -> Option<Vec<Value>> {
    match name {
        "bdev" => Some(bdev_methods::save()),
        "nvmf" => Some(nvmf_methods::save()),
        "repl" => Some(repl_methods::save()),
        _ => None,
    }
}

/// SPDK's client builds `save_config` from this and `framework_get_config`.
fn framework_get_subsystems(p: &Params) -> RpcResult {
    p.only(&[])?;
    Ok(json!(SUBSYSTEMS
        .iter()
        .map(|(s, deps)| json!({"subsystem": s, "depends_on": deps}))
        .collect::<Vec<_>>()))
}

fn framework_get_config(p: &Params) -> RpcResult {
    p.only(&["name", "with_batches"])?;
    let name = p.str("name")?;
    subsystem_config(name)
        .map(Value::from)
        .ok_or_else(|| RpcError::invalid_params(format!("no subsystem named {name:?}")))
}

/// The whole running configuration in the shape `spdk-rpc save_config` writes; `--config`
/// reloads it.
fn save_config(p: &Params) -> RpcResult {
    p.only(&[])?;
    let subsystems: Vec<Value> = SUBSYSTEMS
        .iter()
        .map(|(s, _)| json!({ "subsystem": s, "config": subsystem_config(s).unwrap_or_default() }))
        .collect();
    Ok(json!({ "subsystems": subsystems }))
}

#[cfg(test)]
mod tests;
