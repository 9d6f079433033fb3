//! The bdev methods, with SPDK's names and parameters.

use serde_json::{json, Value};

use super::{Params, RpcError, RpcResult};
use crate::bdev::{self, error as ebdev, malloc, null, parse_uuid, uring, IoType};

fn uuid(p: &Params) -> Result<u128, RpcError> {
    match p.opt_str("uuid")? {
        None => Ok(0),
        Some(s) => {
            parse_uuid(s).ok_or_else(|| RpcError::invalid_params(format!("{s:?} is not a UUID")))
        }
    }
}

fn block_size(p: &Params, default: u32) -> Result<u32, RpcError> {
    let bs = p.opt_u64("block_size")?.unwrap_or(default as u64);
    u32::try_from(bs)
        .map_err(|_| RpcError::invalid_params(format!("block_size {bs} is not 512 or 4096")))
}

/// A name for a bdev made without one, as SPDK does: `<prefix><n>` with the first free n.
fn auto_name(prefix: &str) -> String {
    (0..)
        .map(|n| format!("{prefix}{n}"))
        .find(|n| bdev::get(n).is_none())
        .expect("a free name")
}

/// The SPDK metadata and protection options, which Tandem's RAM and null disks do not have:
/// accepted only at their defaults.
fn no_metadata(p: &Params) -> Result<(), RpcError> {
    p.default_only("md_size", &json!(0))?;
    p.default_only("md_interleave", &json!(false))?;
    p.default_only("dif_type", &json!(0))?;
    p.default_only("dif_is_head_of_md", &json!(false))?;
    p.default_only("dif_pi_format", &json!(0))?;
    p.default_only("numa_id", &json!(-1))?;
    p.default_only("optimal_io_boundary", &json!(0))
}

const RAM_KEYS: &[&str] = &[
    "name",
    "num_blocks",
    "block_size",
    "uuid",
    "physical_block_size",
    "optimal_io_boundary",
    "md_size",
    "md_interleave",
    "dif_type",
    "dif_is_head_of_md",
    "dif_pi_format",
    "numa_id",
];

pub(super) fn malloc_create(p: &Params) -> RpcResult {
    p.only(RAM_KEYS)?;
    no_metadata(p)?;
    let block_size = block_size(p, 512)?;
    p.default_only("physical_block_size", &json!(block_size))?;
    let name = p
        .opt_str("name")?
        .map_or_else(|| auto_name("Malloc"), str::to_owned);
    let b = malloc::create(malloc::MallocOpts {
        name,
        num_blocks: p.u64("num_blocks")?,
        block_size,
        uuid: uuid(p)?,
    })?;
    Ok(json!(b.name()))
}

pub(super) fn null_create(p: &Params) -> RpcResult {
    p.only(RAM_KEYS)?;
    no_metadata(p)?;
    let block_size = block_size(p, 512)?;
    p.default_only("physical_block_size", &json!(block_size))?;
    let b = null::create(null::NullOpts {
        name: p.str("name")?.to_owned(),
        num_blocks: p.u64("num_blocks")?,
        block_size,
        uuid: uuid(p)?,
    })?;
    Ok(json!(b.name()))
}

pub(super) fn uring_create(p: &Params) -> RpcResult {
    p.only(&["name", "filename", "block_size", "uuid"])?;
    let b = uring::create(uring::UringOpts {
        name: p.str("name")?.to_owned(),
        filename: p.str("filename")?.to_owned(),
        block_size: block_size(p, 0)?,
        uuid: uuid(p)?,
    })?;
    // A file may hold a store from an earlier run: load it, as SPDK's examine does.
    super::store_methods::examine(b.name());
    Ok(json!(b.name()))
}

pub(super) fn error_create(p: &Params) -> RpcResult {
    p.only(&["base_name", "name", "uuid"])?;
    let b = ebdev::create(ebdev::ErrorOpts {
        name: p.opt_str("name")?.map(str::to_owned),
        base: p.str("base_name")?.to_owned(),
        uuid: uuid(p)?,
    })?;
    Ok(json!(b.name()))
}

/// `bdev_<kind>_delete`: delete by name, refusing a bdev of another kind (as SPDK's per-module
/// delete methods do).
fn delete_kind(p: &Params, product: &str) -> RpcResult {
    p.only(&["name"])?;
    let name = p.str("name")?;
    let b = bdev::get(name)
        .ok_or_else(|| RpcError::new(-(libc::ENODEV as i64), format!("no bdev named {name:?}")))?;
    if b.product_name() != product {
        return Err(RpcError::invalid_params(format!(
            "{name} is a {}, not a {product}",
            b.product_name()
        )));
    }
    bdev::delete(name)?;
    Ok(json!(true))
}

pub(super) fn malloc_delete(p: &Params) -> RpcResult {
    delete_kind(p, "Malloc disk")
}

pub(super) fn null_delete(p: &Params) -> RpcResult {
    delete_kind(p, "Null disk")
}

pub(super) fn uring_delete(p: &Params) -> RpcResult {
    delete_kind(p, "URING bdev")
}

pub(super) fn error_delete(p: &Params) -> RpcResult {
    delete_kind(p, "Error Injection Disk")
}

pub(super) fn error_inject_error(p: &Params) -> RpcResult {
    p.only(&[
        "name",
        "io_type",
        "error_type",
        "num",
        "queue_depth",
        "corrupt_offset",
        "corrupt_value",
        "nvme_sct",
        "nvme_sc",
        "delay_us",
        "tear_blocks",
    ])?;
    for k in [
        "queue_depth",
        "corrupt_offset",
        "corrupt_value",
        "nvme_sct",
        "nvme_sc",
    ] {
        p.default_only(k, &json!(0))?;
    }
    let io_types = match p.str("io_type")? {
        "all" => ebdev::IoTypes::ALL,
        "clear" => {
            ebdev::clear(p.str("name")?)?;
            return Ok(json!(true));
        }
        other => ebdev::IoTypes::of(&[match other {
            "read" => IoType::Read,
            "write" => IoType::Write,
            "flush" => IoType::Flush,
            "unmap" => IoType::Unmap,
            "write_zeroes" => IoType::WriteZeroes,
            _ => {
                return Err(RpcError::invalid_params(format!(
                    "unknown io_type {other:?}"
                )))
            }
        }]),
    };
    let action = match p.str("error_type")? {
        "failure" => ebdev::Action::Fail,
        "pending" => ebdev::Action::Drop,
        "delay" => ebdev::Action::Delay(std::time::Duration::from_micros(p.u64("delay_us")?)),
        "tear" => ebdev::Action::Tear {
            blocks: p.u64("tear_blocks")?,
        },
        other => {
            return Err(RpcError::invalid_params(format!(
                "error_type {other:?} is not failure, pending, delay or tear"
            )))
        }
    };
    let fault = ebdev::Fault {
        action,
        io_types,
        lba_range: None,
        when: ebdev::When::Next(p.opt_u64("num")?.unwrap_or(1)),
    };
    ebdev::set_fault(p.str("name")?, fault)?;
    Ok(json!(true))
}

fn describe(b: &bdev::Bdev) -> Value {
    let mut io = serde_json::Map::new();
    for t in IoType::ALL {
        io.insert(t.name().into(), json!(b.supports(t)));
    }
    json!({
        "name": b.name(),
        "aliases": [],
        "product_name": b.product_name(),
        "block_size": b.block_size(),
        "num_blocks": b.num_blocks(),
        "uuid": b.uuid_string(),
        "claimed": b.claimed_by().is_some(),
        "zoned": false,
        "supported_io_types": io,
        "driver_specific": b.driver_specific(),
    })
}

pub(super) fn get_bdevs(p: &Params) -> RpcResult {
    p.only(&["name", "timeout"])?;
    match p.opt_str("name")? {
        Some(n) => bdev::get(n)
            .map(|b| json!([describe(&b)]))
            .ok_or_else(|| RpcError::new(-(libc::ENODEV as i64), format!("no bdev named {n:?}"))),
        None => Ok(Value::Array(bdev::list().iter().map(describe).collect())),
    }
}

pub(super) fn get_iostat(p: &Params) -> RpcResult {
    p.only(&["name", "names", "per_channel", "reset_mode"])?;
    p.default_only("per_channel", &json!(false))?;
    p.default_only("reset_mode", &json!("none"))?;
    let mut wanted: Vec<String> = p
        .opt_str_list("names")?
        .unwrap_or_default()
        .into_iter()
        .map(str::to_owned)
        .collect();
    if let Some(n) = p.opt_str("name")? {
        wanted.push(n.to_owned());
    }
    let bdevs = if wanted.is_empty() {
        bdev::list()
    } else {
        wanted
            .iter()
            .map(|n| {
                bdev::get(n).ok_or_else(|| {
                    RpcError::new(-(libc::ENODEV as i64), format!("no bdev named {n:?}"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?
    };
    let stats: Vec<Value> = bdevs
        .iter()
        .map(|b| {
            let s = b.iostat();
            json!({
                "name": b.name(),
                "bytes_read": s.bytes_read, "num_read_ops": s.num_read_ops,
                "bytes_written": s.bytes_written, "num_write_ops": s.num_write_ops,
                "bytes_unmapped": 0, "num_unmap_ops": s.num_unmap_ops,
                "num_flush_ops": s.num_flush_ops, "num_write_zeroes_ops": s.num_write_zeroes_ops,
                "read_latency_ticks": s.read_latency_ns, "write_latency_ticks": s.write_latency_ns,
                "unmap_latency_ticks": s.other_latency_ns, "io_error": s.io_errors,
            })
        })
        .collect();
    // Latencies are in nanoseconds: a tick rate of 1 GHz says so to SPDK's tools.
    Ok(
        json!({ "tick_rate": 1_000_000_000u64, "ticks": crate::sys::monotonic_ns(), "bdevs": stats }),
    )
}

/// The bdev section of `save_config`: bases before the bdevs built on them.
pub(super) fn save() -> Vec<Value> {
    let all = bdev::list();
    let (stacked, plain): (Vec<_>, Vec<_>) = all
        .iter()
        .partition(|b| b.product_name() == "Error Injection Disk");
    plain
        .into_iter()
        .chain(stacked)
        .filter_map(|b| b.0.backend.save_config(b))
        .chain(crate::bdev::nvmf::pending_calls())
        .collect()
}

/// `bdev_nvme_attach_controller`: connect to an NVMe/TCP target and make a bdev of each of its
/// namespaces (`<name>n<nsid>`); answers their names. In a start-up configuration, a target
/// that cannot be reached is attached in the background (an empty answer).
pub(super) fn nvme_attach_controller(p: &Params) -> RpcResult {
    p.only(&[
        "name",
        "trtype",
        "traddr",
        "adrfam",
        "trsvcid",
        "subnqn",
        "hostnqn",
        "hostaddr",
        "hostsvcid",
        "prchk_reftag",
        "prchk_guard",
        "hdgst",
        "ddgst",
        "fabrics_connect_timeout_us",
        "multipath",
        "num_io_queues",
        "ctrlr_loss_timeout_sec",
        "reconnect_delay_sec",
        "fast_io_fail_timeout_sec",
        "psk",
        "max_bdevs",
        "dhchap_key",
        "dhchap_ctrlr_key",
        "allow_unrecognized_csi",
        "priority",
        "disable_sq_flow_control",
    ])?;
    let trtype = p.str("trtype")?;
    if !trtype.eq_ignore_ascii_case("tcp") {
        return Err(RpcError::invalid_params(format!(
            "trtype {trtype:?} is not supported (TCP is)"
        )));
    }
    for (k, v) in [
        ("prchk_reftag", json!(false)),
        ("prchk_guard", json!(false)),
        ("allow_unrecognized_csi", json!(false)),
    ] {
        p.default_only(k, &v)?;
    }
    for k in [
        "hostaddr",
        "hostsvcid",
        "psk",
        "dhchap_key",
        "dhchap_ctrlr_key",
        "multipath",
    ] {
        p.default_only(k, &Value::Null)?;
    }
    if let Some(f) = p.opt_str("adrfam")? {
        if !f.eq_ignore_ascii_case("ipv4") && !f.eq_ignore_ascii_case("ipv6") {
            return Err(RpcError::invalid_params(format!(
                "adrfam {f:?} is not IPv4 or IPv6"
            )));
        }
    }
    let mut opts = crate::host::HostOpts::new(
        p.str("traddr")?,
        p.opt_str("trsvcid")?.unwrap_or("4420"),
        p.str("subnqn")?,
    );
    if let Some(h) = p.opt_str("hostnqn")? {
        opts.hostnqn = h.to_owned();
    }
    opts.header_digest = p.opt_bool("hdgst")?.unwrap_or(false);
    opts.data_digest = p.opt_bool("ddgst")?.unwrap_or(false);
    opts.disable_sq_flow_control = p.opt_bool("disable_sq_flow_control")?.unwrap_or(false);
    if let Some(us) = p.opt_u64("fabrics_connect_timeout_us")?.filter(|&u| u > 0) {
        opts.connect_timeout = std::time::Duration::from_micros(us);
    }
    if let Some(s) = p.opt_u64("reconnect_delay_sec")?.filter(|&s| s > 0) {
        opts.reconnect_max_delay = std::time::Duration::from_secs(s);
    }
    let name = p.str("name")?;
    if super::replaying() {
        let names = crate::bdev::nvmf::attach_or_retry(name, opts)?;
        return Ok(json!(names.unwrap_or_default()));
    }
    Ok(json!(crate::bdev::nvmf::attach(name, opts)?))
}

pub(super) fn nvme_detach_controller(p: &Params) -> RpcResult {
    p.only(&[
        "name",
        "trtype",
        "traddr",
        "adrfam",
        "trsvcid",
        "subnqn",
        "hostaddr",
        "hostsvcid",
        "cntlid",
    ])?;
    crate::bdev::nvmf::detach(p.str("name")?)?;
    Ok(json!(true))
}

pub(super) fn nvme_get_controllers(p: &Params) -> RpcResult {
    p.only(&["name"])?;
    let want = p.opt_str("name")?;
    let list: Vec<Value> = crate::bdev::nvmf::controllers()
        .into_iter()
        .filter(|(n, _, _)| want.is_none_or(|w| w == n))
        .map(|(name, o, bdevs)| {
            json!({
                "name": name,
                "ctrlrs": [{
                    "state": "enabled",
                    "trid": { "trtype": "TCP", "adrfam": "IPv4", "traddr": o.traddr,
                              "trsvcid": o.trsvcid, "subnqn": o.subnqn },
                    "host": { "nqn": o.hostnqn },
                }],
                "bdevs": bdevs,
            })
        })
        .collect();
    if let (Some(w), true) = (want, list.is_empty()) {
        return Err(RpcError::new(
            -(libc::ENODEV as i64),
            format!("no NVMe controller named {w:?}"),
        ));
    }
    Ok(json!(list))
}
