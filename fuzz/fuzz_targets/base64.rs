//! Base64 as RPC clients send file data and attribute values: any text is bytes or a precise
//! error, and whatever decodes encodes back to text that decodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem::rpc::base64::{decode, encode};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        assert_eq!(decode(&encode(data)).unwrap(), data);
        return;
    };
    if let Ok(bytes) = decode(text) {
        assert_eq!(decode(&encode(&bytes)).unwrap(), bytes);
    }
});
