//! Core masks from the command line and the C ABI: any text parses to a set of cores or an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem::reactor::{CoreMask, MAX_CORE};

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(m) = CoreMask::parse(s) {
            assert!(!m.cores().is_empty() && m.cores().iter().all(|&c| c <= MAX_CORE));
            assert!(
                m.cores().windows(2).all(|w| w[0] < w[1]),
                "sorted, no duplicates"
            );
        }
    }
});
