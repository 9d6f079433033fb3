//! What a target sends to the host: responses, C2HData (with SUCCESS), R2T, TermReq, and
//! anything else, against a queue with reads, in-capsule writes, R2T writes and a flush in
//! flight. The first byte picks the digests. Nothing may panic, however the target lies about
//! command IDs, offsets, lengths or flags.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let done = tandem::host::queue::fuzz_receive(rest, mode & 1 != 0, mode & 2 != 0);
    assert!(done <= 8, "more completions than commands");
});
