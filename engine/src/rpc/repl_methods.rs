//! The `repl_*` family: synchronous replication relationships (SPDK has none of these).
//!
//! `repl_create` pairs a primary volume here (`<store>/<volume>`) with a secondary volume: the
//! bdev that reaches it from here (an `nvmf` bdev made by `bdev_nvme_attach_controller`) and
//! its name on its own engine, whose RPC socket `secondary_rpc` takes the snapshots there
//! (absent: the secondary's store is in this process). The others name the relationship.

use std::path::PathBuf;

use serde_json::{json, Value};

use super::{Params, RpcError, RpcResult};
use crate::repl::relationship::{self, Config, Error, Policy, SecondaryControl};

impl From<Error> for RpcError {
    fn from(e: Error) -> Self {
        let code = match e {
            Error::Invalid(_) => super::INVALID_PARAMS,
            ref other => other.errno() as i64,
        };
        RpcError::new(code, e.to_string())
    }
}

pub(super) fn create(p: &Params) -> RpcResult {
    p.only(&[
        "name",
        "primary",
        "secondary_bdev",
        "secondary_volume",
        "secondary_rpc",
        "policy",
        "region_size",
        "copy_depth",
        "rate_mib_per_sec",
        "max_incrementals",
        "common_snapshot",
    ])?;
    let mut cfg = Config::new(
        p.str("name")?,
        p.str("primary")?,
        p.str("secondary_bdev")?,
        p.str("secondary_volume")?,
    );
    if let Some(s) = p.opt_str("secondary_rpc")? {
        cfg.control = SecondaryControl::Remote {
            socket: PathBuf::from(s),
        };
    }
    if let Some(s) = p.opt_str("policy")? {
        cfg.policy = Policy::parse(s).ok_or_else(|| {
            RpcError::invalid_params(format!("policy {s:?}: \"sync\" or \"strict_sync\""))
        })?;
    }
    if let Some(r) = p.opt_u64("region_size")? {
        cfg.region_size = r;
    }
    if let Some(d) = p.opt_u64("copy_depth")? {
        cfg.copy.depth = d as usize;
    }
    if let Some(r) = p.opt_u64("rate_mib_per_sec")? {
        cfg.copy.rate = r.saturating_mul(1 << 20);
    }
    if let Some(n) = p.opt_u64("max_incrementals")? {
        cfg.max_incrementals = n.min(1000) as u32;
    }
    cfg.common_snapshot = p.opt_str("common_snapshot")?.map(str::to_owned);
    let (m, owner) = super::store_methods::engine()?;
    let rel = relationship::create(cfg, m, owner)?;
    Ok(rel.to_json())
}

fn named(p: &Params) -> Result<std::sync::Arc<relationship::Relationship>, RpcError> {
    p.only(&["name"])?;
    let name = p.str("name")?;
    relationship::get(name).ok_or_else(|| {
        RpcError::new(
            -(libc::ENOENT as i64),
            format!("no relationship named {name:?}"),
        )
    })
}

pub(super) fn start(p: &Params) -> RpcResult {
    named(p)?.start()?;
    Ok(json!(true))
}

pub(super) fn quiesce(p: &Params) -> RpcResult {
    let r = named(p)?;
    r.quiesce()?;
    Ok(json!({"common_snapshot": r.status().last_common_snapshot}))
}

pub(super) fn resume(p: &Params) -> RpcResult {
    named(p)?.resume()?;
    Ok(json!(true))
}

pub(super) fn break_off(p: &Params) -> RpcResult {
    named(p)?.break_off()?;
    Ok(json!(true))
}

pub(super) fn resync(p: &Params) -> RpcResult {
    named(p)?.resync()?;
    Ok(json!(true))
}

pub(super) fn delete(p: &Params) -> RpcResult {
    p.only(&["name"])?;
    relationship::delete(p.str("name")?)?;
    Ok(json!(true))
}

/// One relationship (`name`), or all of them.
pub(super) fn get(p: &Params) -> RpcResult {
    p.only(&["name"])?;
    match p.opt_str("name")? {
        Some(_) => Ok(named(p)?.to_json()),
        None => Ok(Value::from(
            relationship::list()
                .iter()
                .map(|r| r.to_json())
                .collect::<Vec<_>>(),
        )),
    }
}

/// `repl_create` for each relationship: replayed at start-up, each resumes from its record in
/// the primary's store.
pub(super) fn save() -> Vec<Value> {
    relationship::list()
        .iter()
        .map(|r| {
            let c = r.config();
            let mut p = json!({
                "name": c.name,
                "primary": c.primary,
                "secondary_bdev": c.secondary_bdev,
                "secondary_volume": c.secondary_volume,
                "policy": c.policy.name(),
                "region_size": c.region_size,
                "copy_depth": c.copy.depth,
                "max_incrementals": c.max_incrementals,
            });
            if let SecondaryControl::Remote { socket } = &c.control {
                p["secondary_rpc"] = json!(socket);
            }
            if c.copy.rate > 0 {
                p["rate_mib_per_sec"] = json!(c.copy.rate >> 20);
            }
            json!({"method": "repl_create", "params": p})
        })
        .collect()
}
