//! What a replication primary reads back from its store after a restart: the relationship's
//! record and its dirty region log. Any bytes are a value or a precise error, and what decodes
//! encodes back to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem::repl::drl::{decode, encode, Drl, MIN_REGION};
use tandem::repl::persist::Record;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = Record::decode(data) {
        assert_eq!(Record::decode(&r.encode()).unwrap(), r);
        let _ = r.resume_state();
    }
    if let Ok((rs, regions, set)) = decode(data) {
        assert_eq!(decode(&encode(rs, regions, &set)).unwrap(), (rs, regions, set.clone()));
        // A log that decodes is taken by a volume of its geometry, or refused with a message.
        assert!(rs.is_power_of_two() && rs >= MIN_REGION);
        if regions <= 1 << 16 {
            let drl = Drl::new(regions * rs, rs).expect("a decoded geometry makes a log");
            let _ = drl.recover(&set);
        }
    }
});
