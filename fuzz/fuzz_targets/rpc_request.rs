//! JSON-RPC requests as a client sends them: the envelope checks for any value, and the strict
//! params decoder of methods that only read (a fuzzer asking for a 1 TiB RAM disk would measure
//! the machine, not the parser).
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const READ_ONLY: &[&str] = &[
    "rpc_get_methods",
    "spdk_get_version",
    "framework_wait_init",
    "bdev_get_bdevs",
    "bdev_get_iostat",
    "framework_get_subsystems",
    "framework_get_config",
    "save_config",
];

fuzz_target!(|data: &[u8]| {
    let Ok(mut v) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    // Steer every method to a read-only one; keep everything else as the fuzzer made it.
    let pick = data.first().copied().unwrap_or(0) as usize;
    let steer = |obj: &mut serde_json::Map<String, Value>| {
        if obj.contains_key("method") {
            obj.insert(
                "method".into(),
                Value::from(READ_ONLY[pick % READ_ONLY.len()]),
            );
        }
    };
    match &mut v {
        Value::Object(o) => steer(o),
        Value::Array(a) => a
            .iter_mut()
            .filter_map(Value::as_object_mut)
            .for_each(steer),
        _ => {}
    }
    if let Some(reply) = tandem::rpc::answer(v) {
        let r = serde_json::to_vec(&reply).expect("a reply serialises");
        assert!(!r.is_empty());
    }
});
