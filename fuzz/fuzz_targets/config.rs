//! A start-up config file (SPDK's save_config shape): any JSON must parse to calls or a clear error.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = tandem::config::parse(&v);
    }
});
