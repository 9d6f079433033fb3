//! The namespace of a loaded store over JSON-RPC (`store_mkdir`, `store_write`, `store_diff`
//! and the rest): paths within the store, file data and attribute values in base64. Every
//! method names the store by `lvs_name` (its name or UUID). Refusals carry the errno POSIX
//! would give, as a negative JSON-RPC error code.

use serde_json::{json, Value};

use super::base64;
use super::{Params, RpcError, RpcResult};
use crate::store::namespace::{self as ns, SetAttrs};
use crate::store::ns_owner::FileChange;
use crate::store::tree::{Attrs, Tree};
use crate::store::{subtree_diff, Store};

fn store(p: &Params) -> Result<Store, RpcError> {
    Ok(Store::find(p.str("lvs_name")?)?)
}

fn bytes(p: &Params, key: &str) -> Result<Vec<u8>, RpcError> {
    base64::decode(p.str(key)?).map_err(|e| RpcError::invalid_params(format!("{key}: {e}")))
}

fn u32_of(p: &Params, key: &str) -> Result<Option<u32>, RpcError> {
    p.opt_u64(key)?
        .map(|v| {
            u32::try_from(v).map_err(|_| RpcError::invalid_params(format!("{key} is too large")))
        })
        .transpose()
}

fn mode(p: &Params, default: u32) -> Result<u32, RpcError> {
    match p.opt_str("mode")? {
        None => Ok(default),
        Some(m) => u32::from_str_radix(m, 8)
            .ok()
            .filter(|m| m & !0o7777 == 0)
            .ok_or_else(|| RpcError::invalid_params(format!("mode {m:?}: octal permission bits"))),
    }
}

/// Attributes of something new: `mode` (octal string), `uid`, `gid`; times are now.
fn new_attrs(p: &Params, default_mode: u32) -> Result<Attrs, RpcError> {
    Ok(Attrs {
        uid: u32_of(p, "uid")?.unwrap_or(0),
        gid: u32_of(p, "gid")?.unwrap_or(0),
        ..Attrs::now(mode(p, default_mode)?)
    })
}

const NEW: &[&str] = &["lvs_name", "path", "mode", "uid", "gid"];

/// Run `op` as a namespace change on the directory and last name of `path` (a parameter).
fn at_path<R: Send + 'static>(
    p: &Params,
    op: impl FnOnce(&mut crate::store::Core, u64, &[u8]) -> crate::store::Result<R> + Send + 'static,
) -> Result<R, RpcError> {
    let path = p.str("path")?.to_owned();
    Ok(store(p)?.ns_change(move |c| {
        let (dir, name) = ns::split_parent(&c.objects, path.as_bytes())?;
        op(c, dir, &name)
    })?)
}

pub(super) fn mkdir(p: &Params) -> RpcResult {
    p.only(NEW)?;
    let a = new_attrs(p, 0o755)?;
    Ok(json!({"ino": at_path(p, move |c, dir, name| c.mkdir(dir, name, a))?}))
}

pub(super) fn create(p: &Params) -> RpcResult {
    p.only(NEW)?;
    let a = new_attrs(p, 0o644)?;
    Ok(json!({"ino": at_path(p, move |c, dir, name| c.create(dir, name, a))?}))
}

pub(super) fn symlink(p: &Params) -> RpcResult {
    p.only(&["lvs_name", "path", "target", "uid", "gid"])?;
    let (target, a) = (p.str("target")?.to_owned(), new_attrs(p, 0o777)?);
    let ino = at_path(p, move |c, dir, name| {
        c.symlink(dir, name, target.as_bytes(), a)
    })?;
    Ok(json!({"ino": ino}))
}

pub(super) fn link(p: &Params) -> RpcResult {
    p.only(&["lvs_name", "path", "new_path"])?;
    let (path, new) = (p.str("path")?.to_owned(), p.str("new_path")?.to_owned());
    store(p)?.ns_change(move |c| {
        let ino = c.resolve(path.as_bytes())?;
        let (dir, name) = ns::split_parent(&c.objects, new.as_bytes())?;
        c.link(ino, dir, &name)
    })?;
    Ok(Value::Bool(true))
}

pub(super) fn unlink(p: &Params) -> RpcResult {
    p.only(&["lvs_name", "path"])?;
    at_path(p, |c, dir, name| c.unlink(dir, name))?;
    Ok(Value::Bool(true))
}

pub(super) fn rmdir(p: &Params) -> RpcResult {
    p.only(&["lvs_name", "path"])?;
    at_path(p, |c, dir, name| c.rmdir(dir, name))?;
    Ok(Value::Bool(true))
}

pub(super) fn rename(p: &Params) -> RpcResult {
    p.only(&["lvs_name", "path", "new_path"])?;
    let (path, new) = (p.str("path")?.to_owned(), p.str("new_path")?.to_owned());
    store(p)?.ns_change(move |c| {
        let (sd, sn) = ns::split_parent(&c.objects, path.as_bytes())?;
        let (dd, dn) = ns::split_parent(&c.objects, new.as_bytes())?;
        c.rename(sd, &sn, dd, &dn)
    })?;
    Ok(Value::Bool(true))
}

/// Run `f` on the inode at `path` in the image `snapshot` names (default: the live store).
fn at_image<R: Send + 'static>(
    p: &Params,
    f: impl FnOnce(&Tree, u64) -> crate::store::Result<R> + Send + 'static,
) -> Result<R, RpcError> {
    p.only(&["lvs_name", "path", "snapshot"])?;
    let (path, snap) = (
        p.str("path")?.to_owned(),
        p.opt_str("snapshot")?.map(str::to_owned),
    );
    Ok(store(p)?.ns_read(move |c| {
        let root = c.image(snap.as_deref())?;
        let ino = ns::resolve_in(&root, path.as_bytes())?;
        f(&root, ino)
    })?)
}

pub(super) fn stat(p: &Params) -> RpcResult {
    at_image(p, |root, ino| {
        let mut j = ns::stat_in(root, ino)?.to_json();
        j["xattrs"] = ns::xattrs_in(root, ino)
            .into_iter()
            .map(|(n, v)| json!({"name": String::from_utf8_lossy(&n), "value": base64::encode(&v)}))
            .collect();
        if let Ok(t) = ns::readlink_in(root, ino) {
            j["target"] = Value::from(String::from_utf8_lossy(&t).into_owned());
        }
        Ok(j)
    })
}

pub(super) fn readdir(p: &Params) -> RpcResult {
    at_image(p, |root, dir| {
        Ok(Value::from(
            ns::readdir_in(root, dir)?
                .into_iter()
                .map(|e| {
                    json!({"name": String::from_utf8_lossy(&e.name), "ino": e.ino,
                           "type": format!("{:?}", e.typ).to_lowercase()})
                })
                .collect::<Vec<_>>(),
        ))
    })
}

pub(super) fn setattr(p: &Params) -> RpcResult {
    p.only(&[
        "lvs_name", "path", "mode", "uid", "gid", "atime_ns", "mtime_ns",
    ])?;
    let path = p.str("path")?.to_owned();
    let s = SetAttrs {
        mode: p.opt_str("mode")?.map(|_| mode(p, 0)).transpose()?,
        uid: u32_of(p, "uid")?,
        gid: u32_of(p, "gid")?,
        atime: p.opt_i64("atime_ns")?,
        mtime: p.opt_i64("mtime_ns")?,
    };
    store(p)?.ns_change(move |c| {
        let ino = c.resolve(path.as_bytes())?;
        c.setattr(ino, s)
    })?;
    Ok(Value::Bool(true))
}

pub(super) fn set_xattr(p: &Params) -> RpcResult {
    p.only(&["lvs_name", "path", "name", "value"])?;
    let (path, name, value) = (
        p.str("path")?.to_owned(),
        p.str("name")?.to_owned(),
        bytes(p, "value")?,
    );
    store(p)?.ns_change(move |c| {
        let ino = c.resolve(path.as_bytes())?;
        c.set_xattr(ino, name.as_bytes(), &value)
    })?;
    Ok(Value::Bool(true))
}

pub(super) fn remove_xattr(p: &Params) -> RpcResult {
    p.only(&["lvs_name", "path", "name"])?;
    let (path, name) = (p.str("path")?.to_owned(), p.str("name")?.to_owned());
    store(p)?.ns_change(move |c| {
        let ino = c.resolve(path.as_bytes())?;
        c.remove_xattr(ino, name.as_bytes())
    })?;
    Ok(Value::Bool(true))
}

/// The most one `store_read` or `store_write` moves.
const MAX_IO: u64 = 16 << 20;

pub(super) fn write(p: &Params) -> RpcResult {
    p.only(&["lvs_name", "path", "offset", "data"])?;
    let data = bytes(p, "data")?;
    if data.len() as u64 > MAX_IO {
        return Err(RpcError::invalid_params(format!(
            "data: at most {MAX_IO} bytes a call"
        )));
    }
    let off = p.u64("offset")?;
    store(p)?.change_file(p.str("path")?, FileChange::Write { off, data })?;
    Ok(Value::Bool(true))
}

pub(super) fn read(p: &Params) -> RpcResult {
    p.only(&["lvs_name", "path", "offset", "length", "snapshot"])?;
    let len = p.u64("length")?;
    if len > MAX_IO {
        return Err(RpcError::invalid_params(format!(
            "length: at most {MAX_IO} bytes a call"
        )));
    }
    let data = store(p)?.read_file(
        p.opt_str("snapshot")?,
        p.str("path")?,
        p.u64("offset")?,
        len,
    )?;
    Ok(json!({"data": base64::encode(&data), "length": data.len()}))
}

pub(super) fn truncate(p: &Params) -> RpcResult {
    p.only(&["lvs_name", "path", "size"])?;
    let size = p.u64("size")?;
    store(p)?.change_file(p.str("path")?, FileChange::Truncate { size })?;
    Ok(Value::Bool(true))
}

pub(super) fn punch(p: &Params) -> RpcResult {
    p.only(&["lvs_name", "path", "offset", "length"])?;
    let (off, len) = (p.u64("offset")?, p.u64("length")?);
    store(p)?.change_file(p.str("path")?, FileChange::Punch { off, len })?;
    Ok(Value::Bool(true))
}

pub(super) fn clone_file(p: &Params) -> RpcResult {
    p.only(&["lvs_name", "path", "new_path"])?;
    let (path, new) = (p.str("path")?.to_owned(), p.str("new_path")?.to_owned());
    let ino = store(p)?.ns_change(move |c| {
        let src = c.resolve(path.as_bytes())?;
        let (dir, name) = ns::split_parent(&c.objects, new.as_bytes())?;
        c.clone_file(src, dir, &name)
    })?;
    Ok(json!({"ino": ino}))
}

pub(super) fn clone_range(p: &Params) -> RpcResult {
    p.only(&[
        "lvs_name",
        "src",
        "src_offset",
        "dst",
        "dst_offset",
        "length",
    ])?;
    let (src, dst) = (p.str("src")?.to_owned(), p.str("dst")?.to_owned());
    let (so, dof, len) = (p.u64("src_offset")?, p.u64("dst_offset")?, p.u64("length")?);
    store(p)?.ns_change(move |c| {
        let (s, d) = (c.resolve(src.as_bytes())?, c.resolve(dst.as_bytes())?);
        c.clone_range(s, so, d, dof, len)
    })?;
    Ok(Value::Bool(true))
}

/// What changed below `path` from snapshot `from` to `to` (default: live): `lines` for
/// people, and with `changes: true` the ordered changes that rebuild it.
pub(super) fn diff(p: &Params) -> RpcResult {
    p.only(&["lvs_name", "from", "to", "path", "changes"])?;
    let (from, to) = (
        p.str("from")?.to_owned(),
        p.opt_str("to")?.map(str::to_owned),
    );
    let path = p.opt_str("path")?.unwrap_or("/").to_owned();
    let changes = p.opt_bool("changes")?.unwrap_or(false);
    Ok(store(p)?.ns_read(move |c| {
        let (a, b) = (c.image(Some(&from))?, c.image(to.as_deref())?);
        let d = subtree_diff::subtree_diff(&a, &b, path.as_bytes(), c.cluster_size())?;
        let mut j = json!({
            "lines": d.summary(&a, &b),
            "directories_compared": d.dirs_visited,
            "inodes_compared": d.inodes_compared,
        });
        if changes {
            j["changes"] = d
                .changes
                .iter()
                .map(subtree_diff::Change::to_json)
                .collect();
        }
        Ok(j)
    })?)
}
