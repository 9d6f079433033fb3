//! A whole NVMe/TCP connection fed by a host that may say anything: the bytes go through the
//! target's receive path (framing, digests, Connect, Fabrics, admin commands, R2T and H2CData)
//! exactly as from a socket. The first byte chooses how much of a valid bring-up comes first
//! (ICReq; Connect; enable) and how the rest is split into reads. Nothing may panic or hang,
//! and whatever the target sends back must be well-formed PDUs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem::nvmf::tcp::harness::{connect_bytes, enable_bytes, feed, ic_req_bytes, HARNESS_NQN};
use tandem::nvmf::tcp::pdu::{CommonHeader, Negotiated};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut input = Vec::new();
    if mode & 1 != 0 {
        input.extend(ic_req_bytes());
        if mode & 2 != 0 {
            input.extend(connect_bytes(HARNESS_NQN));
            if mode & 4 != 0 {
                input.extend(enable_bytes());
            }
        }
    }
    input.extend_from_slice(rest);
    let chunk = 1 + (mode as usize >> 3) * 37;
    let pieces: Vec<&[u8]> = input.chunks(chunk).collect();
    let out = feed(&pieces);
    // What the target sent parses as PDUs end to end (its digests off: the host asked none
    // unless it sent its own ICReq, so only framing is checked).
    let lenient = Negotiated {
        header_digest: false,
        data_digest: false,
        max_plen: 1 << 20,
    };
    let mut at = 0;
    while at + 8 <= out.len() {
        let head: &[u8; 8] = out[at..at + 8].try_into().unwrap();
        let plen = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
        assert!(plen >= 8, "a PDU shorter than its header");
        if CommonHeader::decode(head, &lenient).is_err() {
            // With digests negotiated the flags differ from `lenient`; the length still frames.
            let digested = Negotiated {
                header_digest: true,
                data_digest: true,
                max_plen: 1 << 20,
            };
            assert!(
                CommonHeader::decode(head, &digested).is_ok(),
                "the target sent a malformed PDU header {head:?}"
            );
        }
        at += plen;
    }
    assert_eq!(at, out.len(), "the target's output ends in a partial PDU");
});
