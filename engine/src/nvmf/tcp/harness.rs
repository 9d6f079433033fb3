//! A connection fed bytes without a network: one end of a Unix socket pair is the connection's
//! socket, the test or fuzz target writes the host's bytes into the other end and reads back
//! what the target answered, while a simulated reactor runs the connection.
//!
//! Used by the `tcp_conn` fuzz target (every byte a host may send goes through the same receive
//! path as on TCP) and by tests. The target it serves has one subsystem, [`HARNESS_NQN`], any
//! host allowed, with a 1 MiB RAM namespace.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Once;

use super::conn::{self, Socket};
use super::pdu::{CommonHeader, IcReq, PduType};
use crate::nvme::fabrics::{ConnectCmd, ConnectData, CNTLID_DYNAMIC};
use crate::nvme::sgl::{SglDesc, IN_CAPSULE};
use crate::nvmf::{target, ListenAddr, SubsystemOpts};
use crate::reactor::sim::Sim;

pub const HARNESS_NQN: &str = "nqn.2016-06.io.tandem:harness";
/// Simulated reactor rounds run after the input, before the result is taken.
const SETTLE_ROUNDS: usize = 64;

fn addr() -> ListenAddr {
    ListenAddr {
        trtype: "TCP".into(),
        adrfam: "IPv4".into(),
        traddr: "harness".into(),
        trsvcid: "0".into(),
    }
}

fn set_up() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if target::transport().is_none() {
            let _ = target::create_transport(Default::default());
        }
        let _ = crate::bdev::malloc::create(crate::bdev::malloc::MallocOpts {
            name: "HarnessMalloc".into(),
            num_blocks: 2048,
            block_size: 512,
            uuid: 0,
        });
        let sub = target::create_subsystem(SubsystemOpts {
            nqn: HARNESS_NQN.into(),
            serial: "HARNESS".into(),
            model: "Tandem harness".into(),
            allow_any_host: true,
            max_namespaces: 4,
            min_cntlid: 1,
            max_cntlid: 0xFFEF,
        })
        .or_else(|_| target::nvm_subsystem(HARNESS_NQN))
        .expect("the harness subsystem");
        let _ = sub.add_namespace("HarnessMalloc", 1, None, None);
        sub.state().listeners.push(addr());
    });
}

thread_local! {
    static SIM: Sim = Sim::new(1).expect("a simulated reactor");
}

/// Run one connection: write each chunk of `input` in turn (the reactor runs between chunks,
/// so PDUs arrive split as they would from a socket), close the host's end, and return every
/// byte the target sent.
pub fn feed(input: &[&[u8]]) -> Vec<u8> {
    set_up();
    SIM.with(|sim| {
        let (ours, host) = UnixStream::pair().expect("a socket pair");
        ours.set_nonblocking(true).expect("non-blocking");
        host.set_nonblocking(true).expect("non-blocking");
        sim.enter(0, || conn::start_socket(Socket::Unix(ours), addr()));
        let mut host = host;
        let mut out = Vec::new();
        let drain = |host: &mut UnixStream, out: &mut Vec<u8>| {
            let mut b = [0u8; 65536];
            while let Ok(n) = host.read(&mut b) {
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&b[..n]);
            }
        };
        for chunk in input {
            let mut at = 0;
            let mut stalled = 0;
            while at < chunk.len() && stalled < SETTLE_ROUNDS {
                match host.write(&chunk[at..]) {
                    Ok(n) if n > 0 => {
                        at += n;
                        stalled = 0;
                    }
                    _ => stalled += 1,
                }
                sim.poll_round();
                drain(&mut host, &mut out);
            }
        }
        for _ in 0..SETTLE_ROUNDS {
            sim.poll_round();
            drain(&mut host, &mut out);
        }
        drop(host);
        for _ in 0..SETTLE_ROUNDS {
            sim.poll_round();
        }
        // Let every timer the connection set (set-up, TermReq grace) fire and go.
        sim.advance(std::time::Duration::from_secs(30));
        sim.poll_round();
        out
    })
}

/// A host's ICReq (no digests).
pub fn ic_req_bytes() -> Vec<u8> {
    IcReq {
        pfv: 0,
        hpda: 0,
        dgst: 0,
        maxr2t: 0,
    }
    .encode()
    .to_vec()
}

/// An admin-queue Connect capsule for `subnqn`, with CID 9.
pub fn connect_bytes(subnqn: &str) -> Vec<u8> {
    let data = ConnectData {
        hostid: [1; 16],
        cntlid: CNTLID_DYNAMIC,
        subnqn: subnqn.into(),
        hostnqn: "nqn.2014-08.org.nvmexpress:uuid:1".into(),
    }
    .encode();
    let sgl = SglDesc {
        addr: 0,
        len: data.len() as u32,
        id: IN_CAPSULE,
    };
    let sqe = ConnectCmd {
        recfmt: 0,
        qid: 0,
        sqsize: 31,
        cattr: 0,
        kato: 0,
    }
    .to_sqe(9, sgl.encode());
    let ch = CommonHeader {
        pdu_type: PduType::CapsuleCmd,
        flags: 0,
        hlen: 72,
        pdo: 72,
        plen: 72 + data.len() as u32,
    };
    let mut b = ch.encode().to_vec();
    b.extend_from_slice(&sqe.encode());
    b.extend_from_slice(&data);
    b
}

/// A Property Set of CC.EN = 1 (the controller enables), with CID 10.
pub fn enable_bytes() -> Vec<u8> {
    let mut sqe = crate::nvme::Sqe {
        opcode: crate::nvme::fabrics::OPCODE,
        cid: 10,
        nsid: crate::nvme::fabrics::PROPERTY_SET as u32,
        ..Default::default()
    };
    sqe.cdw[1] = crate::nvme::registers::CC;
    sqe.cdw[2] = 0x46_0001;
    sqe.dptr = SglDesc {
        addr: 0,
        len: 0,
        id: crate::nvme::sgl::TRANSPORT,
    }
    .encode();
    let ch = CommonHeader {
        pdu_type: PduType::CapsuleCmd,
        flags: 0,
        hlen: 72,
        pdo: 0,
        plen: 72,
    };
    let mut b = ch.encode().to_vec();
    b.extend_from_slice(&sqe.encode());
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nvmf::tcp::pdu::{CommonHeader, Negotiated, PduType};

    /// The PDUs in `bytes`, by type.
    fn types(bytes: &[u8]) -> Vec<(PduType, Vec<u8>)> {
        let mut out = Vec::new();
        let mut at = 0;
        let neg = Negotiated {
            max_plen: 1 << 20,
            ..Negotiated::INITIAL
        };
        while at + 8 <= bytes.len() {
            let h = CommonHeader::decode(bytes[at..at + 8].try_into().unwrap(), &neg).unwrap();
            out.push((h.pdu_type, bytes[at..at + h.plen as usize].to_vec()));
            at += h.plen as usize;
        }
        out
    }

    #[test]
    fn a_connect_split_byte_by_byte_is_answered_like_a_whole_one() {
        let mut input = ic_req_bytes();
        input.extend(connect_bytes(HARNESS_NQN));
        input.extend(enable_bytes());
        let whole = types(&feed(&[&input]));
        let pieces: Vec<&[u8]> = input.chunks(1).collect();
        let split = types(&feed(&pieces));
        assert_eq!(whole.len(), 3);
        assert_eq!(whole[0].0, PduType::IcResp);
        assert_eq!(whole[1].0, PduType::CapsuleResp);
        let cqe = crate::nvmf::tcp::pdu::capsule_cqe(&whole[1].1).unwrap();
        assert_eq!(cqe.cid, 9);
        assert_eq!(cqe.status >> 1, 0, "Connect succeeds");
        assert_eq!(split.len(), 3);
        assert_eq!(split[1].0, PduType::CapsuleResp);
        let enabled = crate::nvmf::tcp::pdu::capsule_cqe(&split[2].1).unwrap();
        assert_eq!((enabled.cid, enabled.status >> 1), (10, 0));
    }

    #[test]
    fn garbage_gets_a_term_req() {
        let out = types(&feed(&[&[0xFF; 200]]));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, PduType::C2hTermReq);
    }
}
