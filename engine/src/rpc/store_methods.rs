//! The store's methods: SPDK's `bdev_lvol_*` family over Tandem's store, and `store_*` for
//! what SPDK lacks (store-wide snapshots, clones of any volume in them, block diffs, the check,
//! loading a store found on a bdev).
//!
//! Names follow SPDK: a store ("lvstore") has a name and a UUID; a volume's bdev is named
//! `<store>/<volume>` and is found by its UUID too; `bdev_lvol_create` answers with that UUID.
//! SPDK's per-volume snapshot (`bdev_lvol_snapshot`) is a store-wide snapshot taken for one
//! volume, which gets a read-only bdev `<store>/<snapshot>`.

use serde_json::{json, Value};

use super::{Params, RpcError, RpcResult};
use crate::bdev::{self, format_uuid, parse_uuid};
use crate::reactor::{Messenger, ReactorId};
use crate::store::{self, CreateOpts, Store};

impl From<store::Error> for RpcError {
    fn from(e: store::Error) -> Self {
        let code = match e {
            store::Error::Invalid(_) => super::INVALID_PARAMS,
            ref other => other.errno() as i64,
        };
        RpcError::new(code, e.to_string())
    }
}

/// The engine the stores run on, and the reactor that owns new ones (the first).
pub(super) fn engine() -> Result<(Messenger, ReactorId), RpcError> {
    let m = crate::nvmf::target::messenger()
        .ok_or_else(|| RpcError::new(-(libc::ENODEV as i64), "no engine is running"))?;
    let owner = *m
        .reactors()
        .first()
        .ok_or_else(|| RpcError::new(-(libc::ENODEV as i64), "the engine has no reactor"))?;
    Ok((m, owner))
}

/// The store named by `uuid_key` (a UUID) or `name_key`, exactly one of them.
fn store_of(p: &Params, uuid_key: &str, name_key: &str) -> Result<Store, RpcError> {
    match (p.opt_str(uuid_key)?, p.opt_str(name_key)?) {
        (Some(u), None) => {
            parse_uuid(u)
                .ok_or_else(|| RpcError::invalid_params(format!("{u:?} is not a UUID")))?;
            Ok(Store::find(u)?)
        }
        (None, Some(n)) => Ok(Store::find(n)?),
        _ => Err(RpcError::invalid_params(format!(
            "give one of {uuid_key:?} and {name_key:?}"
        ))),
    }
}

/// A volume or snapshot bdev by name or UUID: its store and its name within the store.
fn lvol(name: &str) -> Result<(Store, String), RpcError> {
    let b = bdev::get(name)
        .ok_or_else(|| RpcError::new(-(libc::ENODEV as i64), format!("no bdev named {name:?}")))?;
    let full = b.name().to_owned();
    let (lvs, rest) = full
        .split_once('/')
        .filter(|_| b.product_name() == "Logical Volume")
        .ok_or_else(|| RpcError::invalid_params(format!("{name} is not a logical volume")))?;
    Ok((Store::find(lvs)?, rest.to_owned()))
}

fn mib(p: &Params, key: &str) -> Result<u64, RpcError> {
    p.u64(key)?
        .checked_mul(1 << 20)
        .ok_or_else(|| RpcError::invalid_params(format!("{key} is too large")))
}

pub(super) fn create_lvstore(p: &Params) -> RpcResult {
    p.only(&[
        "bdev_name",
        "lvs_name",
        "cluster_sz",
        "clear_method",
        "num_md_pages_per_cluster_ratio",
        "md_page_size",
    ])?;
    // Data clusters are zeroed when first written, so no clear method is needed; metadata is
    // allocated as it grows, so no share of it is reserved.
    if let Some(m) = p.opt_str("clear_method")? {
        if !["none", "unmap", "write_zeroes"].contains(&m) {
            return Err(RpcError::invalid_params(format!("clear_method {m:?}")));
        }
    }
    p.default_only("md_page_size", &json!(4096))?;
    let cluster = p.opt_u64("cluster_sz")?.unwrap_or(65536);
    let cluster = u32::try_from(cluster)
        .map_err(|_| RpcError::invalid_params(format!("cluster_sz {cluster}")))?;
    let (m, owner) = engine()?;
    let s = Store::create(
        &CreateOpts {
            base: p.str("bdev_name")?.to_owned(),
            name: p.str("lvs_name")?.to_owned(),
            cluster_size: cluster,
        },
        &m,
        owner,
    )?;
    Ok(json!(format_uuid(s.uuid())))
}

pub(super) fn delete_lvstore(p: &Params) -> RpcResult {
    p.only(&["uuid", "lvs_name"])?;
    store_of(p, "uuid", "lvs_name")?.destroy()?;
    Ok(json!(true))
}

fn lvstore_json(s: &Store) -> Result<Value, RpcError> {
    let (total, free, _) = s.space()?;
    Ok(json!({
        "uuid": format_uuid(s.uuid()),
        "name": s.name(),
        "base_bdev": s.base().name(),
        "total_data_clusters": total,
        "free_clusters": free,
        "block_size": s.base().block_size(),
        "cluster_size": s.cluster_size(),
    }))
}

pub(super) fn get_lvstores(p: &Params) -> RpcResult {
    p.only(&["uuid", "lvs_name"])?;
    let stores = match (p.opt_str("uuid")?, p.opt_str("lvs_name")?) {
        (None, None) => Store::list(),
        _ => vec![store_of(p, "uuid", "lvs_name")?],
    };
    stores
        .iter()
        .map(lvstore_json)
        .collect::<Result<Vec<_>, _>>()
        .map(Value::from)
}

pub(super) fn create(p: &Params) -> RpcResult {
    p.only(&[
        "lvol_name",
        "size_in_mib",
        "size",
        "thin_provision",
        "clear_method",
        "uuid",
        "lvs_name",
    ])?;
    let s = store_of(p, "uuid", "lvs_name")?;
    let size = match p.opt_u64("size")? {
        Some(bytes) => bytes,
        None => mib(p, "size_in_mib")?,
    };
    let thin = p.opt_bool("thin_provision")?.unwrap_or(false);
    let b = s.create_volume(p.str("lvol_name")?, size, !thin)?;
    Ok(json!(b.uuid_string()))
}

pub(super) fn resize(p: &Params) -> RpcResult {
    p.only(&["name", "size_in_mib", "size"])?;
    let (s, vol) = lvol(p.str("name")?)?;
    let size = match p.opt_u64("size")? {
        Some(bytes) => bytes,
        None => mib(p, "size_in_mib")?,
    };
    s.resize_volume(&vol, size)?;
    Ok(json!(true))
}

pub(super) fn snapshot(p: &Params) -> RpcResult {
    p.only(&["lvol_name", "snapshot_name"])?;
    let (s, vol) = lvol(p.str("lvol_name")?)?;
    let name = p.str("snapshot_name")?;
    s.snapshot(name, Some(&vol))?;
    let b = bdev::get(&format!("{}/{name}", s.name()))
        .ok_or_else(|| RpcError::new(-(libc::ENODEV as i64), "the snapshot's bdev is gone"))?;
    Ok(json!(b.uuid_string()))
}

pub(super) fn clone(p: &Params) -> RpcResult {
    p.only(&["snapshot_name", "clone_name"])?;
    let (s, snap) = lvol(p.str("snapshot_name")?)?;
    let b = s.clone_volume(&snap, None, p.str("clone_name")?)?;
    Ok(json!(b.uuid_string()))
}

pub(super) fn delete(p: &Params) -> RpcResult {
    p.only(&["name"])?;
    let (s, name) = lvol(p.str("name")?)?;
    if s.volumes()?.iter().any(|v| v.name == name) {
        s.delete_volume(&name)?;
    } else {
        s.delete_snapshot(&name)?;
    }
    Ok(json!(true))
}

pub(super) fn get_lvols(p: &Params) -> RpcResult {
    p.only(&["lvs_uuid", "lvs_name"])?;
    let stores = match (p.opt_str("lvs_uuid")?, p.opt_str("lvs_name")?) {
        (None, None) => Store::list(),
        _ => vec![store_of(p, "lvs_uuid", "lvs_name")?],
    };
    let mut out = Vec::new();
    for s in stores {
        let lvs = json!({"name": s.name(), "uuid": format_uuid(s.uuid())});
        for v in s.volumes()? {
            out.push(json!({
                "alias": format!("{}/{}", s.name(), v.name),
                "uuid": format_uuid(v.uuid),
                "name": v.name,
                "is_thin_provisioned": !v.thick,
                "is_snapshot": false,
                "is_clone": v.origin_snap != 0,
                "is_esnap_clone": false,
                "is_degraded": false,
                "lvs": lvs,
            }));
        }
        for snap in s.snapshots()?.into_iter().filter(|x| x.origin_vol != 0) {
            out.push(json!({
                "alias": format!("{}/{}", s.name(), snap.name),
                "uuid": bdev::get(&format!("{}/{}", s.name(), snap.name)).map(|b| b.uuid_string()),
                "name": snap.name,
                "is_thin_provisioned": true,
                "is_snapshot": true,
                "is_clone": false,
                "is_esnap_clone": false,
                "is_degraded": false,
                "lvs": lvs,
            }));
        }
    }
    Ok(Value::from(out))
}

// ---- store_* ----

/// Load the store on a bdev (SPDK finds stores by examining new bdevs; Tandem does that for
/// `bdev_uring_create` and takes this call for any other).
pub(super) fn load(p: &Params) -> RpcResult {
    p.only(&["bdev_name"])?;
    let (m, owner) = engine()?;
    let s = Store::load(p.str("bdev_name")?, &m, owner)?;
    lvstore_json(&s)
}

/// Look for a store on a new bdev and load it if there is one.
pub(super) fn examine(bdev_name: &str) {
    let Ok((m, owner)) = engine() else { return };
    match Store::load(bdev_name, &m, owner) {
        Ok(s) => tracing::info!(store = s.name(), bdev = bdev_name, "found a store"),
        Err(store::Error::Corrupt { ref what, .. }) if what.contains("no store magic") => {}
        Err(e) => tracing::warn!(bdev = bdev_name, "not loading a store from it: {e}"),
    }
}

pub(super) fn snapshot_create(p: &Params) -> RpcResult {
    p.only(&["lvs_name", "snapshot_name"])?;
    let s = Store::find(p.str("lvs_name")?)?;
    let id = s.snapshot(p.str("snapshot_name")?, None)?;
    Ok(json!({"id": id}))
}

pub(super) fn snapshot_list(p: &Params) -> RpcResult {
    p.only(&["lvs_name"])?;
    let s = Store::find(p.str("lvs_name")?)?;
    Ok(Value::from(
        s.snapshots()?
            .into_iter()
            .map(|x| {
                json!({
                    "id": x.id,
                    "name": x.name,
                    "uuid": format_uuid(x.uuid),
                    "generation": x.gen,
                    "created_unix": x.created_unix,
                    "for_volume": x.origin_vol != 0,
                })
            })
            .collect::<Vec<_>>(),
    ))
}

pub(super) fn snapshot_delete(p: &Params) -> RpcResult {
    p.only(&["lvs_name", "snapshot_name"])?;
    Store::find(p.str("lvs_name")?)?.delete_snapshot(p.str("snapshot_name")?)?;
    Ok(json!(true))
}

pub(super) fn snapshot_bdev(p: &Params) -> RpcResult {
    p.only(&["lvs_name", "snapshot_name", "volume"])?;
    let s = Store::find(p.str("lvs_name")?)?;
    let b = s.expose_snapshot(p.str("snapshot_name")?, p.str("volume")?)?;
    Ok(json!(b.name()))
}

pub(super) fn clone_volume(p: &Params) -> RpcResult {
    p.only(&["lvs_name", "snapshot_name", "volume", "clone_name"])?;
    let s = Store::find(p.str("lvs_name")?)?;
    let b = s.clone_volume(
        p.str("snapshot_name")?,
        Some(p.str("volume")?),
        p.str("clone_name")?,
    )?;
    Ok(json!(b.name()))
}

pub(super) fn block_diff(p: &Params) -> RpcResult {
    p.only(&["lvs_name", "volume", "from", "to"])?;
    let s = Store::find(p.str("lvs_name")?)?;
    let d = s.block_diff(p.opt_str("from")?, p.opt_str("to")?, p.str("volume")?)?;
    Ok(d.to_json())
}

pub(super) fn check(p: &Params) -> RpcResult {
    p.only(&["lvs_name"])?;
    let problems = Store::find(p.str("lvs_name")?)?.check()?;
    Ok(json!({
        "clean": problems.is_empty(),
        "problems": problems.iter().map(|x| x.to_string()).collect::<Vec<_>>(),
    }))
}
