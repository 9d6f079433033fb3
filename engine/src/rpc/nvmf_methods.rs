//! The nvmf methods, with SPDK's names and parameters: the transport, subsystems, their
//! namespaces, listeners and hosts, and what is connected.

use serde_json::{json, Value};

use super::{Params, RpcError, RpcResult};
use crate::bdev::{format_uuid, parse_uuid};
use crate::nvmf::subsystem::{Kind, DEFAULT_MAX_NAMESPACES, MAX_CNTLID, MIN_CNTLID};
use crate::nvmf::{target, Error, ListenAddr, Subsystem, SubsystemOpts, TransportOpts};

/// Serial and model numbers of a subsystem made without them (SPDK's defaults, but ours).
pub const DEFAULT_SERIAL: &str = "00000000000000000000";
pub const DEFAULT_MODEL: &str = "Tandem Controller";

impl From<Error> for RpcError {
    fn from(e: Error) -> Self {
        RpcError::new(e.errno() as i64, e.to_string())
    }
}

/// Only the default target exists: SPDK's `tgt_name` may name nothing else.
fn no_tgt_name(p: &Params) -> Result<(), RpcError> {
    match p.opt_str("tgt_name")? {
        None | Some("nvmf_tgt") => Ok(()),
        Some(other) => Err(RpcError::new(
            -(libc::ENODEV as i64),
            format!("no target named {other:?} (only the default target exists)"),
        )),
    }
}

fn u16_param(p: &Params, key: &str, default: u16) -> Result<u16, RpcError> {
    match p.opt_u64(key)? {
        None => Ok(default),
        Some(v) => u16::try_from(v)
            .map_err(|_| RpcError::invalid_params(format!("{key} {v} does not fit in 16 bits"))),
    }
}

fn u32_param(p: &Params, key: &str, default: u32) -> Result<u32, RpcError> {
    match p.opt_u64(key)? {
        None => Ok(default),
        Some(v) => u32::try_from(v)
            .map_err(|_| RpcError::invalid_params(format!("{key} {v} does not fit in 32 bits"))),
    }
}

fn check_trtype(t: &str) -> Result<(), RpcError> {
    if t.eq_ignore_ascii_case("tcp") {
        Ok(())
    } else {
        Err(RpcError::invalid_params(format!(
            "transport type {t:?} is not supported (TCP is)"
        )))
    }
}

/// Options of SPDK's that tune its own buffer caches, acceptor and timeouts: Tandem's buffers
/// come from per-reactor pools and its sockets are polled by reactors, so these are accepted and
/// have no effect.
const TUNING_ONLY: &[&str] = &[
    "num_shared_buffers",
    "buf_cache_size",
    "iobuf_small_cache_size",
    "iobuf_large_cache_size",
    "acceptor_backlog",
    "acceptor_poll_rate",
    "abort_timeout_sec",
    "ack_timeout",
    "data_wr_pool_size",
    "control_msg_num",
];

/// Options of other transports (RDMA, vfio-user) or features Tandem lacks, which SPDK's client
/// sends at their defaults: accepted only so.
const DEFAULT_ONLY: &[(&str, Value)] = &[
    ("no_srq", Value::Bool(false)),
    ("no_wr_batching", Value::Bool(false)),
    ("disable_mappable_bar0", Value::Bool(false)),
    ("disable_adaptive_irq", Value::Bool(false)),
    ("disable_shadow_doorbells", Value::Bool(false)),
    ("disable_command_passthru", Value::Bool(false)),
    ("dif_insert_or_strip", Value::Bool(false)),
    ("zcopy", Value::Bool(false)),
    ("num_cqe", Value::Null),
    ("max_srq_depth", Value::Null),
    ("sock_priority", Value::Null),
    ("kas", Value::Null),
    ("min_kato", Value::Null),
    ("masked_oncs", Value::Null),
    ("masked_fuses", Value::Null),
];

pub(super) fn create_transport(p: &Params) -> RpcResult {
    let mut known = vec![
        "trtype",
        "tgt_name",
        "max_queue_depth",
        "max_qpairs_per_ctrlr",
        "max_io_qpairs_per_ctrlr",
        "in_capsule_data_size",
        "max_io_size",
        "io_unit_size",
        "max_aq_depth",
        "c2h_success",
    ];
    known.extend_from_slice(TUNING_ONLY);
    known.extend(DEFAULT_ONLY.iter().map(|(k, _)| *k));
    p.only(&known)?;
    no_tgt_name(p)?;
    check_trtype(p.str("trtype")?)?;
    for (k, v) in DEFAULT_ONLY {
        p.default_only(k, v)?;
    }
    let d = TransportOpts::default();
    // SPDK's max_qpairs_per_ctrlr counts the admin queue too.
    let io_qpairs = match p.opt_u64("max_qpairs_per_ctrlr")? {
        Some(n) if n >= 2 => u16_param(p, "max_qpairs_per_ctrlr", 0)? - 1,
        Some(n) => {
            return Err(RpcError::invalid_params(format!(
                "max_qpairs_per_ctrlr {n} leaves no I/O queue"
            )))
        }
        None => u16_param(p, "max_io_qpairs_per_ctrlr", d.max_io_qpairs_per_ctrlr)?,
    };
    let opts = TransportOpts {
        max_queue_depth: u16_param(p, "max_queue_depth", d.max_queue_depth)?,
        max_io_qpairs_per_ctrlr: io_qpairs,
        in_capsule_data_size: u32_param(p, "in_capsule_data_size", d.in_capsule_data_size)?,
        max_io_size: u32_param(p, "max_io_size", d.max_io_size)?,
        io_unit_size: u32_param(p, "io_unit_size", d.io_unit_size)?,
        max_aq_depth: u16_param(p, "max_aq_depth", d.max_aq_depth)?,
        c2h_success: p.opt_bool("c2h_success")?.unwrap_or(d.c2h_success),
        max_h2c_data: d.max_h2c_data,
    };
    target::create_transport(opts)?;
    Ok(json!(true))
}

fn transport_json(t: &TransportOpts) -> Value {
    json!({
        "trtype": "TCP",
        "max_queue_depth": t.max_queue_depth,
        "max_io_qpairs_per_ctrlr": t.max_io_qpairs_per_ctrlr,
        "in_capsule_data_size": t.in_capsule_data_size,
        "max_io_size": t.max_io_size,
        "io_unit_size": t.io_unit_size,
        "max_aq_depth": t.max_aq_depth,
        "c2h_success": t.c2h_success,
    })
}

pub(super) fn get_transports(p: &Params) -> RpcResult {
    p.only(&["trtype", "tgt_name"])?;
    no_tgt_name(p)?;
    if let Some(t) = p.opt_str("trtype")? {
        check_trtype(t)?;
    }
    Ok(json!(target::transport()
        .iter()
        .map(transport_json)
        .collect::<Vec<_>>()))
}

pub(super) fn create_subsystem(p: &Params) -> RpcResult {
    p.only(&[
        "nqn",
        "tgt_name",
        "serial_number",
        "model_number",
        "allow_any_host",
        "max_namespaces",
        "min_cntlid",
        "max_cntlid",
        "ana_reporting",
        "max_discard_size_kib",
        "max_write_zeroes_size_kib",
        "passthrough",
        "enable_nssr",
    ])?;
    no_tgt_name(p)?;
    p.default_only("ana_reporting", &json!(false))?;
    p.default_only("passthrough", &json!(false))?;
    p.default_only("enable_nssr", &json!(false))?;
    p.default_only("max_discard_size_kib", &json!(0))?;
    p.default_only("max_write_zeroes_size_kib", &json!(0))?;
    let max_namespaces = match u32_param(p, "max_namespaces", 0)? {
        0 => DEFAULT_MAX_NAMESPACES,
        n => n,
    };
    target::create_subsystem(SubsystemOpts {
        nqn: p.str("nqn")?.to_owned(),
        serial: p
            .opt_str("serial_number")?
            .unwrap_or(DEFAULT_SERIAL)
            .to_owned(),
        model: p
            .opt_str("model_number")?
            .unwrap_or(DEFAULT_MODEL)
            .to_owned(),
        allow_any_host: p.opt_bool("allow_any_host")?.unwrap_or(false),
        max_namespaces,
        min_cntlid: u16_param(p, "min_cntlid", MIN_CNTLID)?,
        max_cntlid: u16_param(p, "max_cntlid", MAX_CNTLID)?,
    })?;
    Ok(json!(true))
}

pub(super) fn delete_subsystem(p: &Params) -> RpcResult {
    p.only(&["nqn", "tgt_name"])?;
    no_tgt_name(p)?;
    target::delete_subsystem(p.str("nqn")?)?;
    Ok(json!(true))
}

fn parse_nguid(s: &str) -> Option<[u8; 16]> {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 {
        return None;
    }
    let mut b = [0u8; 16];
    for (i, byte) in b.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(b)
}

fn format_nguid(b: &[u8; 16]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}

pub(super) fn add_ns(p: &Params) -> RpcResult {
    p.only(&["nqn", "namespace", "tgt_name", "no_auto_visible"])?;
    no_tgt_name(p)?;
    p.default_only("no_auto_visible", &json!(false))?;
    let sub = target::nvm_subsystem(p.str("nqn")?)?;
    let ns = p.obj("namespace")?;
    ns.only(&[
        "bdev_name",
        "nsid",
        "uuid",
        "nguid",
        "eui64",
        "ptpl_file",
        "anagrpid",
        "no_auto_visible",
    ])?;
    ns.default_only("no_auto_visible", &json!(false))?;
    for k in ["eui64", "ptpl_file", "anagrpid"] {
        ns.default_only(k, &Value::Null)?;
    }
    let uuid = match ns.opt_str("uuid")? {
        None => None,
        Some(s) => Some(
            parse_uuid(s)
                .ok_or_else(|| RpcError::invalid_params(format!("{s:?} is not a UUID")))?,
        ),
    };
    let nguid = match ns.opt_str("nguid")? {
        None => None,
        Some(s) => Some(parse_nguid(s).ok_or_else(|| {
            RpcError::invalid_params(format!("{s:?} is not a 16-byte NGUID in hex"))
        })?),
    };
    let nsid = u32_param(&ns, "nsid", 0)?;
    let nsid = sub.add_namespace(ns.str("bdev_name")?, nsid, uuid, nguid)?;
    Ok(json!(nsid))
}

pub(super) fn remove_ns(p: &Params) -> RpcResult {
    p.only(&["nqn", "nsid", "tgt_name"])?;
    no_tgt_name(p)?;
    let sub = target::nvm_subsystem(p.str("nqn")?)?;
    sub.remove_namespace(u32_param(p, "nsid", 0)?)?;
    Ok(json!(true))
}

fn listen_addr(p: &Params) -> Result<ListenAddr, RpcError> {
    let a = p.obj("listen_address")?;
    a.only(&["trtype", "adrfam", "traddr", "trsvcid"])?;
    let trtype = a.str("trtype")?;
    check_trtype(trtype)?;
    let adrfam = match a.opt_str("adrfam")? {
        None => "IPv4",
        Some(f) if f.eq_ignore_ascii_case("ipv4") => "IPv4",
        Some(f) if f.eq_ignore_ascii_case("ipv6") => "IPv6",
        Some(f) => {
            return Err(RpcError::invalid_params(format!(
                "adrfam {f:?} is not IPv4 or IPv6"
            )))
        }
    };
    Ok(ListenAddr {
        trtype: "TCP".into(),
        adrfam: adrfam.into(),
        traddr: a.str("traddr")?.to_owned(),
        trsvcid: a.str("trsvcid")?.to_owned(),
    })
}

const LISTENER_KEYS: &[&str] = &[
    "nqn",
    "listen_address",
    "tgt_name",
    "secure_channel",
    "ana_state",
    "anagrpid",
    "sock_impl",
];

/// The subsystem a listener method names: an NVM subsystem, or the discovery subsystem.
fn any_subsystem(nqn: &str) -> Result<std::sync::Arc<Subsystem>, RpcError> {
    target::subsystem(nqn).ok_or_else(|| Error::NoSuchSubsystem(nqn.to_owned()).into())
}

pub(super) fn add_listener(p: &Params) -> RpcResult {
    p.only(LISTENER_KEYS)?;
    no_tgt_name(p)?;
    p.default_only("secure_channel", &json!(false))?;
    p.default_only("sock_impl", &Value::Null)?;
    let sub = any_subsystem(p.str("nqn")?)?;
    target::add_listener(&sub, listen_addr(p)?)?;
    Ok(json!(true))
}

pub(super) fn remove_listener(p: &Params) -> RpcResult {
    p.only(LISTENER_KEYS)?;
    no_tgt_name(p)?;
    let sub = any_subsystem(p.str("nqn")?)?;
    target::remove_listener(&sub, &listen_addr(p)?)?;
    Ok(json!(true))
}

pub(super) fn add_host(p: &Params) -> RpcResult {
    p.only(&[
        "nqn",
        "host",
        "tgt_name",
        "psk",
        "dhchap_key",
        "dhchap_ctrlr_key",
    ])?;
    no_tgt_name(p)?;
    for k in ["psk", "dhchap_key", "dhchap_ctrlr_key"] {
        p.default_only(k, &Value::Null)?;
    }
    let sub = target::nvm_subsystem(p.str("nqn")?)?;
    let host = p.str("host")?;
    target::check_nqn(host)?;
    {
        let mut s = sub.state();
        if s.hosts.iter().any(|h| h == host) {
            return Err(Error::HostExists(host.to_owned()).into());
        }
        s.hosts.push(host.to_owned());
    }
    target::bump_genctr();
    Ok(json!(true))
}

pub(super) fn remove_host(p: &Params) -> RpcResult {
    p.only(&["nqn", "host", "tgt_name"])?;
    no_tgt_name(p)?;
    let sub = target::nvm_subsystem(p.str("nqn")?)?;
    let host = p.str("host")?;
    {
        let mut s = sub.state();
        let before = s.hosts.len();
        s.hosts.retain(|h| h != host);
        if s.hosts.len() == before {
            return Err(Error::NoSuchHost(host.to_owned()).into());
        }
    }
    // A host taken off the list loses its controllers, as in SPDK.
    let ctrls = sub.state().controllers.clone();
    if !sub.host_allowed(host) {
        for c in ctrls.iter().filter(|c| c.hostnqn == host) {
            c.kill();
        }
    }
    target::bump_genctr();
    Ok(json!(true))
}

pub(super) fn allow_any_host(p: &Params) -> RpcResult {
    p.only(&["nqn", "allow_any_host", "tgt_name"])?;
    no_tgt_name(p)?;
    let sub = target::nvm_subsystem(p.str("nqn")?)?;
    let allow = p
        .opt_bool("allow_any_host")?
        .ok_or_else(|| RpcError::invalid_params("allow_any_host is required"))?;
    sub.state().allow_any_host = allow;
    target::bump_genctr();
    Ok(json!(true))
}

fn addr_json(a: &ListenAddr) -> Value {
    json!({ "trtype": a.trtype, "adrfam": a.adrfam, "traddr": a.traddr, "trsvcid": a.trsvcid })
}

fn subsystem_json(s: &Subsystem) -> Value {
    let st = s.state();
    let mut v = json!({
        "nqn": s.nqn,
        "subtype": if s.kind == Kind::Discovery { "Discovery" } else { "NVMe" },
        "listen_addresses": st.listeners.iter().map(addr_json).collect::<Vec<_>>(),
        "allow_any_host": st.allow_any_host || s.kind == Kind::Discovery,
        "hosts": st.hosts.iter().map(|h| json!({ "nqn": h })).collect::<Vec<_>>(),
    });
    if s.kind == Kind::Nvm {
        v["serial_number"] = json!(s.serial);
        v["model_number"] = json!(s.model);
        v["max_namespaces"] = json!(s.max_namespaces);
        v["min_cntlid"] = json!(s.min_cntlid);
        v["max_cntlid"] = json!(s.max_cntlid);
        v["namespaces"] = json!(st
            .namespaces
            .values()
            .map(|n| {
                let name = n.bdev().name().to_owned();
                json!({
                    "nsid": n.nsid,
                    "bdev_name": name,
                    "name": name,
                    "nguid": format_nguid(&n.nguid),
                    "uuid": format_uuid(n.uuid),
                })
            })
            .collect::<Vec<_>>());
    }
    v
}

pub(super) fn get_subsystems(p: &Params) -> RpcResult {
    p.only(&["nqn", "tgt_name"])?;
    no_tgt_name(p)?;
    let subs = match p.opt_str("nqn")? {
        Some(n) => vec![any_subsystem(n)?],
        None => target::subsystems(),
    };
    Ok(json!(subs
        .iter()
        .map(|s| subsystem_json(s))
        .collect::<Vec<_>>()))
}

pub(super) fn get_controllers(p: &Params) -> RpcResult {
    p.only(&["nqn", "tgt_name"])?;
    no_tgt_name(p)?;
    let sub = any_subsystem(p.str("nqn")?)?;
    let ctrls = sub.state().controllers.clone();
    Ok(json!(ctrls
        .iter()
        .map(|c| json!({
            "cntlid": c.cntlid,
            "hostnqn": c.hostnqn,
            "hostid": format_uuid(u128::from_be_bytes(c.hostid)),
            "num_io_qpairs": c.connected_io_queues(),
        }))
        .collect::<Vec<_>>()))
}

/// The nvmf section of `save_config`: transport, subsystems, then each subsystem's hosts,
/// namespaces and listeners, in the order SPDK writes and replays them.
pub(super) fn save() -> Vec<Value> {
    let mut out = Vec::new();
    if let Some(t) = target::transport() {
        out.push(json!({ "method": "nvmf_create_transport", "params": transport_json(&t) }));
    }
    let subs = target::subsystems();
    for s in subs.iter().filter(|s| s.kind == Kind::Nvm) {
        let st = s.state();
        out.push(json!({ "method": "nvmf_create_subsystem", "params": {
            "nqn": s.nqn, "serial_number": s.serial, "model_number": s.model,
            "allow_any_host": st.allow_any_host, "max_namespaces": s.max_namespaces,
            "min_cntlid": s.min_cntlid, "max_cntlid": s.max_cntlid,
        }}));
        for h in &st.hosts {
            out.push(json!({ "method": "nvmf_subsystem_add_host",
                "params": { "nqn": s.nqn, "host": h } }));
        }
        for n in st.namespaces.values() {
            out.push(json!({ "method": "nvmf_subsystem_add_ns", "params": {
                "nqn": s.nqn,
                "namespace": {
                    "nsid": n.nsid, "bdev_name": n.bdev().name(),
                    "uuid": format_uuid(n.uuid), "nguid": format_nguid(&n.nguid),
                },
            }}));
        }
    }
    // Listeners last, so that a host connecting during the replay finds everything else.
    for s in &subs {
        for a in s.state().listeners.iter() {
            out.push(json!({ "method": "nvmf_subsystem_add_listener",
                "params": { "nqn": s.nqn, "listen_address": addr_json(a) } }));
        }
    }
    out
}
