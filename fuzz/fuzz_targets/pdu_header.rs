//! NVMe/TCP PDU headers from a peer: the common header under every negotiation, then the
//! type-specific decoders. Nothing may panic; an accepted header must be self-consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem::nvmf::tcp::pdu::*;

fuzz_target!(|data: &[u8]| {
    let Some((head, rest)) = data.split_first_chunk::<8>() else {
        return;
    };
    for n in [
        Negotiated::INITIAL,
        Negotiated {
            header_digest: true,
            data_digest: true,
            max_plen: 1 << 20,
        },
        Negotiated {
            header_digest: false,
            data_digest: false,
            max_plen: 1 << 20,
        },
    ] {
        if let Ok(h) = CommonHeader::decode(head, &n) {
            let (start, len) = h.data_range();
            assert!(h.header_len() <= h.plen as usize && start + len <= h.plen as usize);
            assert!(len == 0 || start >= h.header_len());
            let _ = check_header_digest(data, &h);
            if let Some(d) = DataHeader::decode(data) {
                let _ = d.check_length(&h);
            }
        }
    }
    let _ = capsule_sqe(data);
    let _ = capsule_cqe(data);
    if let Some(full) = data.first_chunk::<128>() {
        let _ = IcReq::decode(full);
        let _ = IcResp::decode(full);
    }
    let _ = rest;
});
