use serde_json::{json, Value};

use super::server::answer;
use super::*;

fn req(method: &str, params: Value) -> Value {
    answer(json!({"jsonrpc": "2.0", "method": method, "params": params, "id": 7})).expect("a reply")
}

fn error_code(reply: &Value) -> i64 {
    reply["error"]["code"]
        .as_i64()
        .unwrap_or_else(|| panic!("not an error: {reply}"))
}

#[test]
fn protocol_errors_carry_spdk_codes() {
    let r = answer(json!({"jsonrpc": "2.0", "method": "no_such_method", "id": 1})).unwrap();
    assert_eq!(error_code(&r), METHOD_NOT_FOUND);
    assert_eq!(r["id"], 1);
    for bad in [
        json!({"method": "rpc_get_methods", "id": 1}),
        json!({"jsonrpc": "2.0", "id": 1}),
        json!(3),
        json!({"jsonrpc": "2.0", "method": "x", "id": [1]}),
    ] {
        assert_eq!(error_code(&answer(bad).unwrap()), INVALID_REQUEST);
    }
    assert_eq!(error_code(&answer(json!([])).unwrap()), INVALID_REQUEST);
    assert_eq!(
        error_code(&req("bdev_malloc_create", json!([1, 2]))),
        INVALID_PARAMS
    );
    assert_eq!(
        error_code(&req(
            "bdev_malloc_create",
            json!({"num_blocks": "many", "block_size": 512})
        )),
        INVALID_PARAMS
    );
    assert_eq!(
        error_code(&req(
            "bdev_malloc_create",
            json!({"num_blocks": 8, "block_size": 512, "colour": "red"})
        )),
        INVALID_PARAMS
    );
    assert_eq!(
        error_code(&req(
            "bdev_malloc_create",
            json!({"num_blocks": 8, "block_size": 512, "md_size": 8})
        )),
        INVALID_PARAMS
    );
    assert_eq!(
        error_code(&req(
            "bdev_malloc_create",
            json!({"num_blocks": 8, "block_size": 1000})
        )),
        INVALID_PARAMS
    );
    // A notification (no id) is run and not answered.
    assert!(answer(json!({"jsonrpc": "2.0", "method": "rpc_get_methods"})).is_none());
    // A batch answers each member in order.
    let b = answer(json!([{"jsonrpc": "2.0", "method": "spdk_get_version", "id": 1}, {"jsonrpc": "2.0", "method": "nope", "id": 2}])).unwrap();
    assert!(b[0]["result"]["version"]
        .as_str()
        .unwrap()
        .starts_with("Tandem v"));
    assert_eq!(error_code(&b[1]), METHOD_NOT_FOUND);
}

#[test]
fn bdev_methods_create_describe_refuse_and_delete() {
    let name = format!("RpcMalloc{}", std::process::id());
    let r = req(
        "bdev_malloc_create",
        json!({"name": name, "num_blocks": 2048, "block_size": 4096, "uuid": "5f4b0b4e-1c3a-4f7e-9a55-6c6e68000001"}),
    );
    assert_eq!(r["result"], json!(name));
    // Taken: SPDK answers -EEXIST.
    assert_eq!(
        error_code(&req(
            "bdev_malloc_create",
            json!({"name": name, "num_blocks": 8, "block_size": 512})
        )),
        -(libc::EEXIST as i64)
    );
    let d = &req("bdev_get_bdevs", json!({"name": name}))["result"][0];
    assert_eq!(
        (d["block_size"].as_u64(), d["num_blocks"].as_u64()),
        (Some(4096), Some(2048))
    );
    assert_eq!(d["uuid"], "5f4b0b4e-1c3a-4f7e-9a55-6c6e68000001");
    assert_eq!(d["product_name"], "Malloc disk");
    assert_eq!(d["supported_io_types"]["write_zeroes"], true);
    let e = req("bdev_error_create", json!({"base_name": name}));
    assert_eq!(e["result"], json!(format!("EE_{name}")));
    assert_eq!(
        req("bdev_get_bdevs", json!({"name": name}))["result"][0]["claimed"],
        true
    );
    assert_eq!(
        error_code(&req("bdev_malloc_delete", json!({"name": name}))),
        -(libc::EBUSY as i64)
    );
    assert_eq!(
        error_code(&req(
            "bdev_null_delete",
            json!({"name": format!("EE_{name}")})
        )),
        INVALID_PARAMS
    );
    let inj = req(
        "bdev_error_inject_error",
        json!({"name": format!("EE_{name}"), "io_type": "write", "error_type": "failure", "num": 3}),
    );
    assert_eq!(inj["result"], true, "{inj}");
    assert_eq!(
        error_code(&req(
            "bdev_error_inject_error",
            json!({"name": format!("EE_{name}"), "io_type": "sideways", "error_type": "failure"})
        )),
        INVALID_PARAMS
    );
    let stat = req("bdev_get_iostat", json!({"names": [name]}));
    assert_eq!(stat["result"]["bdevs"][0]["name"], json!(name));
    assert_eq!(
        req("bdev_error_delete", json!({"name": format!("EE_{name}")}))["result"],
        true
    );
    assert_eq!(
        req("bdev_malloc_delete", json!({"name": name}))["result"],
        true
    );
    assert_eq!(
        error_code(&req("bdev_get_bdevs", json!({"name": name}))),
        -(libc::ENODEV as i64)
    );
}

#[test]
fn save_config_replays_to_the_same_bdevs() {
    let tag = std::process::id();
    let (m, n) = (format!("SaveMalloc{tag}"), format!("SaveNull{tag}"));
    req(
        "bdev_malloc_create",
        json!({"name": m, "num_blocks": 1024, "block_size": 512}),
    );
    req(
        "bdev_null_create",
        json!({"name": n, "num_blocks": 4096, "block_size": 4096}),
    );
    req("bdev_error_create", json!({"base_name": m}));
    // Other tests in this process make bdevs too: only this test's count.
    let ours = [format!("EE_{m}"), m.clone(), n.clone()];
    let mine = |v: &Value| -> Vec<Value> {
        v["result"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| ours.iter().any(|o| b["name"] == o.as_str()))
            .cloned()
            .collect()
    };
    let before = mine(&req("bdev_get_bdevs", json!({})));
    assert_eq!(before.len(), 3);
    let saved = req("save_config", json!({}))["result"].clone();
    let calls: Vec<_> = crate::config::parse(&saved)
        .unwrap()
        .into_iter()
        .filter(|c| {
            ours.iter()
                .any(|o| c.params.to_string().contains(o.as_str()))
        })
        .collect();
    for name in [format!("EE_{m}"), m.clone(), n.clone()] {
        crate::bdev::delete(&name).unwrap();
    }
    for c in &calls {
        call(&c.method, &c.params).unwrap_or_else(|e| panic!("{}: {e}", c.method));
    }
    assert_eq!(
        mine(&req("bdev_get_bdevs", json!({}))),
        before,
        "same names, sizes, UUIDs and claims"
    );
    for name in [format!("EE_{m}"), m, n] {
        crate::bdev::delete(&name).unwrap();
    }
}
