//! tandemd's NVMe/TCP target over real sockets on loopback: the protocol followed (set-up,
//! Connect, properties, Identify, I/O in and out of capsule, digests, discovery, keep-alive,
//! asynchronous events) and broken (every kind of bad input gets its prescribed answer, and
//! the daemon keeps serving).

use std::time::{Duration, Instant};

use serde_json::json;
use tandem::nvme::fabrics::CNTLID_DYNAMIC;
use tandem::nvme::identify::cns;
use tandem::nvme::sgl::{IN_CAPSULE, TRANSPORT};
use tandem::nvme::{registers, Sqe, Status};
use tandem::nvmf::tcp::pdu::{Fes, PduType};
use tandem::nvmf::{DEFAULT_SUBNQN, DISCOVERY_NQN};
use tandem_tests::nvme_tcp::{rw_sqe, sgl, Host, HOSTNQN};
use tandem_tests::{free_port, rpc, serve_default, Daemon};

const BLOCK: usize = 512;

fn sock(tag: &str) -> String {
    format!("/tmp/tandem-nvmf-{tag}-{}.sock", std::process::id())
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

/// A target and an I/O queue connected to its default subsystem: (daemon, admin, io).
fn io_queue(tag: &str, hdgst: bool, ddgst: bool, sqflow_off: bool) -> (Daemon, u16, Host, Host) {
    let port = free_port();
    let d = serve_default(port, &sock(tag), false, &[]);
    let mut admin = Host::new(port, hdgst, ddgst);
    let cntlid = admin.admin(DEFAULT_SUBNQN, 15_000);
    let mut io = Host::new(port, hdgst, ddgst);
    io.sqflow_off = sqflow_off;
    let c = io.connect(DEFAULT_SUBNQN, HOSTNQN, 1, cntlid, 0);
    assert!(c.status().is_success(), "I/O connect: {:?}", c.status());
    assert_eq!(c.cqe.dw0 as u16, cntlid);
    (d, port, admin, io)
}

#[test]
fn admin_queue_bring_up_matches_what_hosts_check() {
    let port = free_port();
    let _d = serve_default(port, &sock("bringup"), false, &[]);
    let mut h = Host::new(port, false, false);
    let c = h.connect(DEFAULT_SUBNQN, HOSTNQN, 0, CNTLID_DYNAMIC, 15_000);
    assert!(c.status().is_success());
    let cntlid = c.cqe.dw0 as u16;
    assert!(cntlid >= 1);
    let cap = h.prop_get(registers::CAP, true);
    assert_eq!(cap & 0xFFFF, 127, "MQES: queue depth 128");
    assert_eq!(cap >> 37 & 1, 1, "NVM command set");
    assert!(h.prop_get(registers::VS, false) >= 0x0001_0300);
    assert_eq!(h.prop_get(registers::CSTS, false) & 1, 0);
    // Admin commands before CC.EN are refused.
    let early = h.identify(cns::CONTROLLER, 0);
    assert_eq!(early.status(), Status::COMMAND_SEQUENCE_ERROR);
    h.prop_set(registers::CC, 0x46_0001);
    assert_eq!(h.prop_get(registers::CSTS, false) & 1, 1);

    let id = h.identify(cns::CONTROLLER, 0);
    assert!(id.status().is_success());
    let b = &id.data;
    assert_eq!(b.len(), 4096);
    assert_eq!(
        u16::from_le_bytes([b[78], b[79]]),
        cntlid,
        "CNTLID matches Connect"
    );
    assert_ne!(u16::from_le_bytes([b[320], b[321]]), 0, "KAS");
    assert_eq!(u16::from_le_bytes([b[1800], b[1801]]), 0, "ICDOFF");
    assert_eq!(
        u32::from_le_bytes(b[536..540].try_into().unwrap()) & 3,
        1,
        "SGLS"
    );
    assert_eq!(b[77], 5, "MDTS 128 KiB");
    assert_eq!(
        &b[768..768 + DEFAULT_SUBNQN.len()],
        DEFAULT_SUBNQN.as_bytes()
    );
    assert_eq!(
        u32::from_le_bytes(b[1792..1796].try_into().unwrap()),
        (64 + 8192) / 16
    );

    let list = h.identify(cns::ACTIVE_NS_LIST, 0);
    assert_eq!(&list.data[..8], &[1, 0, 0, 0, 0, 0, 0, 0]);
    let ns = h.identify(cns::NAMESPACE, 1);
    let nsze = u64::from_le_bytes(ns.data[..8].try_into().unwrap());
    assert_eq!(nsze, 64 * 1024 * 1024 / BLOCK as u64);
    assert_eq!(ns.data[130], 9, "LBADS: 512-byte blocks");
    let desc = h.identify(cns::NS_DESCRIPTORS, 1);
    assert_eq!((desc.data[0], desc.data[1]), (2, 16), "NGUID descriptor");
    assert_eq!((desc.data[20], desc.data[21]), (3, 16), "UUID descriptor");
    assert_eq!(
        h.identify(cns::NAMESPACE, 7).data,
        vec![0; 4096],
        "inactive NSID"
    );
    assert_eq!(
        h.identify(cns::NAMESPACE, 0).status(),
        Status::INVALID_NAMESPACE
    );

    // Number of queues, keep-alive, async event config, volatile write cache.
    let mut sf = Sqe {
        opcode: tandem::nvme::admin::SET_FEATURES,
        ..Sqe::default()
    };
    sf.cdw[0] = 0x07;
    sf.cdw[1] = 3 | 3 << 16;
    let q = h.run(sf, &[], 0, 0);
    assert!(q.status().is_success());
    assert_eq!(q.cqe.dw0, 3 | 3 << 16);
    let mut gf = Sqe {
        opcode: tandem::nvme::admin::GET_FEATURES,
        ..Sqe::default()
    };
    gf.cdw[0] = 0x06;
    assert_eq!(h.run(gf, &[], 0, 0).cqe.dw0, 1);
    gf.cdw[0] = 0x0F;
    assert_eq!(h.run(gf, &[], 0, 0).cqe.dw0, 15_000);
    gf.cdw[0] = 0x42;
    assert_eq!(h.run(gf, &[], 0, 0).status(), Status::INVALID_FIELD);

    let smart = h.get_log(0x02, 0, 512);
    assert!(smart.status().is_success());
    assert_eq!(smart.data.len(), 512);
    let ka = h.run(
        Sqe {
            opcode: tandem::nvme::admin::KEEP_ALIVE,
            ..Sqe::default()
        },
        &[],
        0,
        0,
    );
    assert!(ka.status().is_success());
    let unknown = h.run(
        Sqe {
            opcode: 0xC1,
            ..Sqe::default()
        },
        &[],
        0,
        0,
    );
    assert_eq!(unknown.status(), Status::INVALID_OPCODE);
}

fn io_roundtrip(io: &mut Host) {
    // In-capsule (4 KiB), R2T (64 KiB and the 128 KiB maximum), reads back.
    for (slba, len, seed) in [(0u64, 4096, 1u8), (100, 65536, 2), (1000, 131072, 3)] {
        let data = pattern(len, seed);
        let w = io.write(1, slba, BLOCK, &data);
        assert!(w.status().is_success(), "write {len}: {:?}", w.status());
        let r = io.read(1, slba, BLOCK, len);
        assert!(r.status().is_success(), "read {len}: {:?}", r.status());
        assert!(r.data == data, "read back {len} bytes at {slba}");
    }
}

#[test]
fn reads_and_writes_in_capsule_and_through_r2t() {
    let (_d, _port, _admin, mut io) = io_queue("rw", false, false, false);
    io_roundtrip(&mut io);
    // Compare: the data written compares equal; anything else is a Compare Failure.
    let data = pattern(65536, 2);
    let mut cmp = Sqe {
        opcode: tandem::nvme::io::COMPARE,
        nsid: 1,
        ..Sqe::default()
    };
    cmp.cdw[0] = 100;
    cmp.cdw[2] = 127;
    assert!(io.run(cmp, &data, 0, 8192).status().is_success());
    let mut other = data.clone();
    other[65535] ^= 1;
    assert_eq!(
        io.run(cmp, &other, 0, 8192).status(),
        Status::COMPARE_FAILURE
    );
    // Flush, write zeroes, deallocate.
    let flush = io.run(
        Sqe {
            opcode: tandem::nvme::io::FLUSH,
            nsid: 1,
            ..Sqe::default()
        },
        &[],
        0,
        0,
    );
    assert!(flush.status().is_success());
    let mut wz = Sqe {
        opcode: tandem::nvme::io::WRITE_ZEROES,
        nsid: 1,
        ..Sqe::default()
    };
    wz.cdw[2] = 7;
    assert!(io.run(wz, &[], 0, 0).status().is_success());
    assert_eq!(io.read(1, 0, BLOCK, 4096).data, vec![0; 4096]);
    let mut dsm = Sqe {
        opcode: tandem::nvme::io::DATASET_MANAGEMENT,
        nsid: 1,
        ..Sqe::default()
    };
    dsm.cdw[1] = 1 << 2;
    let mut range = vec![0u8; 16];
    range[4..8].copy_from_slice(&8u32.to_le_bytes());
    range[8..16].copy_from_slice(&100u64.to_le_bytes());
    assert!(io.run(dsm, &range, 0, 8192).status().is_success());
}

#[test]
fn reads_end_with_the_success_flag_when_sq_flow_control_is_off() {
    let (_d, _port, _admin, mut io) = io_queue("success", false, false, true);
    let data = pattern(8192, 9);
    assert!(io.write(1, 16, BLOCK, &data).status().is_success());
    let r = io.read(1, 16, BLOCK, 8192);
    assert!(
        r.by_success_flag,
        "no response capsule after C2HData SUCCESS"
    );
    assert_eq!(r.data, data);
}

#[test]
fn header_and_data_digests_protect_every_pdu() {
    let (_d, port, _admin, mut io) = io_queue("digest", true, true, false);
    io_roundtrip(&mut io);
    // A bad data digest on in-capsule data: the command fails, transiently; the queue lives.
    let data = pattern(4096, 5);
    let mut sqe = rw_sqe(tandem::nvme::io::WRITE, 1, 0, 8);
    sqe.cid = 77;
    sqe.dptr = sgl(IN_CAPSULE, 0, 4096);
    let mut bytes = io.capsule(&sqe, &data);
    let n = bytes.len();
    bytes[n - 1] ^= 0xFF;
    io.send(&bytes);
    let p = io.recv().expect("a response");
    assert_eq!(p.h.pdu_type, PduType::CapsuleResp);
    let cqe = tandem::nvmf::tcp::pdu::capsule_cqe(&p.bytes).unwrap();
    assert_eq!(
        Status::from_field(cqe.status).0,
        Status::TRANSIENT_TRANSPORT_ERROR
    );
    io_roundtrip(&mut io);
    // A bad header digest is fatal: C2HTermReq with FES 3, then close.
    let mut h = Host::new(port, true, true);
    let mut bytes = h.capsule(&sqe, &data);
    bytes[72] ^= 1;
    h.send(&bytes);
    let t = h.recv().expect("a TermReq");
    assert_eq!(t.term().unwrap().0, Fes::HeaderDigestError as u16);
    assert!(h.closed_by_target());
}

#[test]
fn bad_input_gets_the_prescribed_answer_and_the_daemon_keeps_serving() {
    let (_d, port, _admin, mut io) = io_queue("bad", false, false, false);

    // Unknown PDU type: TermReq, Invalid Header Field at byte 0.
    let mut h = Host::tcp(port);
    h.send(&[0x0B, 0, 128, 0, 128, 0, 0, 0]);
    let t = h.recv().expect("a TermReq");
    assert_eq!(t.term().unwrap(), (Fes::InvalidHeaderField as u16, 0));
    assert!(h.closed_by_target());

    // A length beyond the limits: Data Transfer Limit Exceeded at PLEN.
    let mut h = Host::new(port, false, false);
    let mut capsule = h.capsule(&Sqe::default(), &[]);
    capsule[4..8].copy_from_slice(&(64u32 << 20).to_le_bytes());
    h.send(&capsule);
    assert_eq!(
        h.recv().unwrap().term().unwrap(),
        (Fes::DataLimitExceeded as u16, 4)
    );
    assert!(h.closed_by_target());

    // A PDU before ICReq: PDU Sequence Error.
    let mut h = Host::tcp(port);
    let capsule = h.capsule(&Sqe::default(), &[]);
    h.send(&capsule);
    assert_eq!(
        h.recv().unwrap().term().unwrap().0,
        Fes::PduSequenceError as u16
    );

    // A command before Connect: Command Sequence Error, connection kept.
    let mut h = Host::new(port, false, false);
    let d = h.identify(cns::CONTROLLER, 0);
    assert_eq!(d.status(), Status::COMMAND_SEQUENCE_ERROR);

    // An unknown subsystem NQN: Connect Invalid Parameters, in the data, at SUBNQN.
    let d = h.connect("nqn.2016-06.io.tandem:nope", HOSTNQN, 0, CNTLID_DYNAMIC, 0);
    assert_eq!(d.status(), Status::CONNECT_INVALID_PARAMETERS);
    assert_eq!(d.cqe.dw0, 256 | 1 << 16);

    // An I/O queue Connect for an unknown controller: Invalid Parameters at CNTLID.
    let d = h.connect(DEFAULT_SUBNQN, HOSTNQN, 1, 999, 0);
    assert_eq!(d.status(), Status::CONNECT_INVALID_PARAMETERS);
    assert_eq!(d.cqe.dw0, 16 | 1 << 16);

    // More data than MAXH2CDATA in one H2CData: TermReq.
    let big = pattern(65536, 1);
    let mut sqe = rw_sqe(tandem::nvme::io::WRITE, 1, 0, 128);
    sqe.cid = 500;
    sqe.dptr = sgl(TRANSPORT, 0, 65536);
    let mut h2 = Host::new(port, false, false);
    let admin_id = h2.admin(DEFAULT_SUBNQN, 0);
    let mut q = Host::new(port, false, false);
    assert!(q
        .connect(DEFAULT_SUBNQN, HOSTNQN, 1, admin_id, 0)
        .status()
        .is_success());
    let capsule = q.capsule(&sqe, &[]);
    q.send(&capsule);
    let r2t = q.recv().unwrap();
    assert_eq!(r2t.h.pdu_type, PduType::R2t);
    let ttag = u16::from_le_bytes([r2t.bytes[10], r2t.bytes[11]]);
    let mut huge = big.clone();
    huge.extend(pattern(q.maxh2cdata as usize, 2));
    let pdu = q.h2c_data(500, ttag, 0, &huge, true);
    q.send(&pdu);
    assert_eq!(
        q.recv().unwrap().term().unwrap().0,
        Fes::DataLimitExceeded as u16
    );
    assert!(q.closed_by_target());

    // H2CData with a transfer tag no R2T gave: TermReq at TTAG.
    let mut q = Host::new(port, false, false);
    assert!(q
        .connect(DEFAULT_SUBNQN, HOSTNQN, 2, admin_id, 0)
        .status()
        .is_success());
    let pdu = q.h2c_data(1, 9, 0, &big[..4096], true);
    q.send(&pdu);
    assert_eq!(
        q.recv().unwrap().term().unwrap(),
        (Fes::InvalidHeaderField as u16, 10)
    );

    // An LBA beyond the namespace, an unknown opcode, an unknown namespace: NVMe status.
    let end = 64 * 1024 * 1024 / BLOCK as u64;
    assert_eq!(
        io.read(1, end - 1, BLOCK, 1024).status(),
        Status::LBA_OUT_OF_RANGE
    );
    assert_eq!(
        io.write(1, end, BLOCK, &big[..512]).status(),
        Status::LBA_OUT_OF_RANGE
    );
    assert_eq!(
        io.read(9, 0, BLOCK, 512).status(),
        Status::INVALID_NAMESPACE
    );
    let odd = io.run(
        Sqe {
            opcode: 0x7E,
            nsid: 1,
            ..Sqe::default()
        },
        &[],
        0,
        0,
    );
    assert_eq!(odd.status(), Status::INVALID_OPCODE);
    // A transfer length that disagrees with the blocks.
    let mut bad = Sqe {
        opcode: tandem::nvme::io::READ,
        nsid: 1,
        ..Sqe::default()
    };
    bad.cdw[2] = 0;
    assert_eq!(
        io.run(bad, &[], 1024, 0).status(),
        Status::DATA_SGL_LENGTH_INVALID
    );

    // After all that, the first queue still works.
    io_roundtrip(&mut io);
}

#[test]
fn hosts_not_on_the_list_are_refused() {
    let port = free_port();
    let s = sock("hosts");
    let _d = serve_default(port, &s, false, &[]);
    let nqn = "nqn.2016-06.io.tandem:closed";
    rpc(&s, "nvmf_create_subsystem", json!({"nqn": nqn})).unwrap();
    rpc(
        &s,
        "nvmf_subsystem_add_listener",
        json!({"nqn": nqn, "listen_address": {"trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": port.to_string()}}),
    )
    .unwrap();
    let mut h = Host::new(port, false, false);
    let d = h.connect(nqn, HOSTNQN, 0, CNTLID_DYNAMIC, 0);
    assert_eq!(d.status(), Status::CONNECT_INVALID_HOST);
    rpc(
        &s,
        "nvmf_subsystem_add_host",
        json!({"nqn": nqn, "host": HOSTNQN}),
    )
    .unwrap();
    let d = h.connect(nqn, HOSTNQN, 0, CNTLID_DYNAMIC, 0);
    assert!(d.status().is_success(), "{:?}", d.status());
    let ctrls = rpc(&s, "nvmf_subsystem_get_controllers", json!({"nqn": nqn})).unwrap();
    assert_eq!(ctrls[0]["hostnqn"], HOSTNQN);
}

#[test]
fn discovery_lists_every_listener_and_honours_offsets() {
    let port = free_port();
    let s = sock("disc");
    let _d = serve_default(port, &s, false, &[]);
    let mut h = Host::new(port, false, false);
    h.admin(DISCOVERY_NQN, 0);
    let head = h.get_log(0x70, 0, 1024);
    assert!(head.status().is_success());
    let gen = u64::from_le_bytes(head.data[..8].try_into().unwrap());
    let numrec = u64::from_le_bytes(head.data[8..16].try_into().unwrap());
    assert_eq!(
        numrec, 2,
        "the discovery subsystem and the default subsystem"
    );
    let entries = h.get_log(0x70, 1024, 2048).data;
    let e = &entries[1024..];
    assert_eq!(e[0], 3, "TCP");
    assert_eq!(e[2], 2, "an NVM subsystem");
    assert_eq!(
        &e[256..256 + DEFAULT_SUBNQN.len()],
        DEFAULT_SUBNQN.as_bytes()
    );
    assert_eq!(&e[512..521], b"127.0.0.1");
    assert_eq!(String::from_utf8_lossy(&e[32..64]).trim(), port.to_string());
    assert_eq!(
        &entries[..1][0],
        &3,
        "the current discovery subsystem first"
    );
    let again = h.get_log(0x70, 0, 16);
    assert_eq!(
        u64::from_le_bytes(again.data[..8].try_into().unwrap()),
        gen,
        "GENCTR steady"
    );
    // A change moves the counter.
    rpc(
        &s,
        "nvmf_create_subsystem",
        json!({"nqn": "nqn.2016-06.io.tandem:x"}),
    )
    .unwrap();
    let after = h.get_log(0x70, 0, 16);
    assert!(u64::from_le_bytes(after.data[..8].try_into().unwrap()) > gen);
    // The discovery controller has no I/O queues and no namespaces.
    assert_eq!(
        h.identify(cns::NAMESPACE, 1).status(),
        Status::INVALID_FIELD
    );
}

#[test]
fn keep_alive_timeout_drops_the_controller_and_its_queues() {
    let port = free_port();
    let s = sock("kato");
    let _d = serve_default(port, &s, false, &[]);
    let mut admin = Host::new(port, false, false);
    let cntlid = admin.admin(DEFAULT_SUBNQN, 1000);
    let mut io = Host::new(port, false, false);
    assert!(io
        .connect(DEFAULT_SUBNQN, HOSTNQN, 1, cntlid, 0)
        .status()
        .is_success());
    let ctrls = rpc(
        &s,
        "nvmf_subsystem_get_controllers",
        json!({"nqn": DEFAULT_SUBNQN}),
    )
    .unwrap();
    assert_eq!(ctrls.as_array().unwrap().len(), 1);
    let t0 = Instant::now();
    assert!(
        admin.closed_by_target(),
        "the admin queue closes after KATO"
    );
    assert!(io.closed_by_target(), "and so do its I/O queues");
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    let ctrls = rpc(
        &s,
        "nvmf_subsystem_get_controllers",
        json!({"nqn": DEFAULT_SUBNQN}),
    )
    .unwrap();
    assert_eq!(ctrls.as_array().unwrap().len(), 0);
}

#[test]
fn a_namespace_added_while_connected_raises_an_async_event() {
    let port = free_port();
    let s = sock("aer");
    let _d = serve_default(port, &s, true, &[]);
    let mut h = Host::new(port, false, false);
    h.admin(DEFAULT_SUBNQN, 0);
    let mut sf = Sqe {
        opcode: tandem::nvme::admin::SET_FEATURES,
        ..Sqe::default()
    };
    sf.cdw[0] = 0x0B;
    sf.cdw[1] = 1 << 8;
    assert!(h.run(sf, &[], 0, 0).status().is_success());
    let aer = Sqe {
        opcode: tandem::nvme::admin::ASYNC_EVENT_REQUEST,
        cid: 4000,
        ..Sqe::default()
    };
    let capsule = h.capsule(&aer, &[]);
    h.send(&capsule);
    rpc(
        &s,
        "bdev_malloc_create",
        json!({"name": "M2", "num_blocks": 2048, "block_size": 512}),
    )
    .unwrap();
    let nsid = rpc(
        &s,
        "nvmf_subsystem_add_ns",
        json!({"nqn": DEFAULT_SUBNQN, "namespace": {"bdev_name": "M2"}}),
    )
    .unwrap();
    assert_eq!(nsid, 2);
    let p = h.recv().expect("the AER completes");
    let cqe = tandem::nvmf::tcp::pdu::capsule_cqe(&p.bytes).unwrap();
    assert_eq!(cqe.cid, 4000);
    assert_eq!(
        cqe.dw0, 0x0004_0002,
        "notice: namespace attribute changed, log 04h"
    );
    let log = h.get_log(0x04, 0, 4096);
    assert_eq!(&log.data[..8], &[2, 0, 0, 0, 0, 0, 0, 0]);
    let list = h.identify(cns::ACTIVE_NS_LIST, 0);
    assert_eq!(&list.data[..8], &[1, 0, 0, 0, 2, 0, 0, 0]);
    // Removing the bdev removes the namespace.
    rpc(&s, "bdev_malloc_delete", json!({"name": "M2"})).unwrap();
    let list = h.identify(cns::ACTIVE_NS_LIST, 0);
    assert_eq!(&list.data[..8], &[1, 0, 0, 0, 0, 0, 0, 0]);
}

fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        / 1024
}

#[test]
fn a_host_that_stops_reading_cannot_make_the_target_hoard_answers() {
    let (d, port, _admin, mut io) = io_queue("hoard", false, false, false);
    let mut h = Host::new(port, false, false);
    h.admin(DISCOVERY_NQN, 0);
    let before = rss_mib(d.child.id());
    // 20 000 requests for 128 KiB of discovery log each (2.5 GiB of answers), never read.
    let mut sqe = Sqe {
        opcode: tandem::nvme::admin::GET_LOG_PAGE,
        ..Sqe::default()
    };
    sqe.cdw[0] = 0x70 | (32767 << 16);
    sqe.dptr = sgl(TRANSPORT, 0, 131072);
    let capsule = h.capsule(&sqe, &[]);
    h.sock.set_nonblocking(true).unwrap();
    let mut sent = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    while sent < 20_000 && Instant::now() < deadline {
        use std::io::Write;
        match h.sock.write(&capsule) {
            Ok(n) if n == capsule.len() => sent += 1,
            Ok(_) => break,
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let grown = rss_mib(d.child.id()).saturating_sub(before);
    assert!(
        grown < 256,
        "tandemd grew by {grown} MiB for {sent} unread answers"
    );
    // Other hosts are served meanwhile and after.
    io_roundtrip(&mut io);
    drop(h);
    io_roundtrip(&mut io);
}

#[test]
fn silent_peers_are_let_go_and_missing_digests_are_fatal() {
    let port = free_port();
    let _d = serve_default(port, &sock("silent"), false, &[]);
    // Connected but silent: closed after the set-up timeout.
    let mut quiet = Host::tcp(port);
    quiet
        .sock
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let t0 = Instant::now();
    // Data digest negotiated, then in-capsule data without one: TermReq at FLAGS.
    let mut h = Host::new(port, false, true);
    h.neg.data_digest = false;
    let mut sqe = Sqe {
        opcode: tandem::nvme::io::WRITE,
        ..Sqe::default()
    };
    sqe.dptr = sgl(IN_CAPSULE, 0, 512);
    let capsule = h.capsule(&sqe, &[7; 512]);
    h.send(&capsule);
    h.neg.data_digest = true;
    assert_eq!(
        h.recv().unwrap().term().unwrap(),
        (Fes::InvalidHeaderField as u16, 1)
    );
    assert!(h.closed_by_target());
    assert!(quiet.closed_by_target(), "a silent connection is closed");
    let waited = t0.elapsed();
    assert!(
        waited > Duration::from_secs(8) && waited < Duration::from_secs(14),
        "{waited:?}"
    );
}

#[test]
fn in_capsule_data_may_start_at_an_offset() {
    let (_d, _port, _admin, mut io) = io_queue("offset", false, false, false);
    let data = pattern(1024, 4);
    let mut inline = vec![0xEE; 100];
    inline.extend_from_slice(&data);
    let mut sqe = Sqe {
        opcode: tandem::nvme::io::WRITE,
        nsid: 1,
        cid: 321,
        ..Sqe::default()
    };
    sqe.cdw[0] = 40;
    sqe.cdw[2] = 1;
    sqe.dptr = sgl(IN_CAPSULE, 100, 1024);
    let capsule = io.capsule(&sqe, &inline);
    io.send(&capsule);
    let p = io.recv().unwrap();
    let cqe = tandem::nvmf::tcp::pdu::capsule_cqe(&p.bytes).unwrap();
    assert_eq!(Status::from_field(cqe.status).0, Status::SUCCESS);
    assert_eq!(io.read(1, 40, BLOCK, 1024).data, data);
    // An offset past the data is refused.
    sqe.dptr = sgl(IN_CAPSULE, 2000, 1024);
    let capsule = io.capsule(&sqe, &inline);
    io.send(&capsule);
    let p = io.recv().unwrap();
    let cqe = tandem::nvmf::tcp::pdu::capsule_cqe(&p.bytes).unwrap();
    assert_eq!(Status::from_field(cqe.status).0, Status::SGL_OFFSET_INVALID);
}

#[test]
fn a_controller_reset_closes_io_queues_and_ends_held_events() {
    let (_d, port, mut admin, mut io) = io_queue("reset", false, false, false);
    let aer = Sqe {
        opcode: tandem::nvme::admin::ASYNC_EVENT_REQUEST,
        cid: 900,
        ..Sqe::default()
    };
    let capsule = admin.capsule(&aer, &[]);
    admin.send(&capsule);
    // CC.EN = 0: a reset.
    let mut set = Sqe {
        opcode: tandem::nvme::fabrics::OPCODE,
        nsid: tandem::nvme::fabrics::PROPERTY_SET as u32,
        cid: 901,
        ..Sqe::default()
    };
    set.cdw[1] = registers::CC;
    set.cdw[2] = 0x46_0000;
    let capsule = admin.capsule(&set, &[]);
    admin.send(&capsule);
    let mut seen = Vec::new();
    for _ in 0..2 {
        let p = admin.recv().unwrap();
        let cqe = tandem::nvmf::tcp::pdu::capsule_cqe(&p.bytes).unwrap();
        seen.push((cqe.cid, Status::from_field(cqe.status).0));
    }
    assert!(
        seen.contains(&(900, Status::ABORTED_SQ_DELETION)),
        "{seen:?}"
    );
    assert!(seen.contains(&(901, Status::SUCCESS)), "{seen:?}");
    assert!(io.closed_by_target(), "the reset closes the I/O queue");
    // A new I/O queue needs the controller enabled again.
    let mut q = Host::new(port, false, false);
    let cntlid = {
        let list = admin.identify(cns::CONTROLLER, 0);
        assert_eq!(list.status(), Status::COMMAND_SEQUENCE_ERROR, "disabled");
        let c = q.connect(DEFAULT_SUBNQN, HOSTNQN, 1, 1, 0);
        assert_eq!(c.status(), Status::COMMAND_SEQUENCE_ERROR);
        admin.prop_set(registers::CC, 0x46_0001);
        1
    };
    let c = q.connect(DEFAULT_SUBNQN, HOSTNQN, 1, cntlid, 0);
    assert!(c.status().is_success(), "{:?}", c.status());
    io_roundtrip(&mut q);
}

#[test]
fn bdev_failures_become_nvme_status_and_the_queue_carries_on() {
    let (_d, _port, _admin, mut io) = io_queue("faults", false, false, false);
    let s = sock("faults");
    rpc(
        &s,
        "bdev_malloc_create",
        json!({"name": "F0", "num_blocks": 2048, "block_size": 512}),
    )
    .unwrap();
    rpc(&s, "bdev_error_create", json!({"base_name": "F0"})).unwrap();
    let nsid = rpc(
        &s,
        "nvmf_subsystem_add_ns",
        json!({"nqn": DEFAULT_SUBNQN, "namespace": {"bdev_name": "EE_F0"}}),
    )
    .unwrap();
    let nsid = nsid.as_u64().unwrap() as u32;
    let data = pattern(4096, 8);
    rpc(
        &s,
        "bdev_error_inject_error",
        json!({"name": "EE_F0", "io_type": "write", "error_type": "failure", "num": 1}),
    )
    .unwrap();
    assert_eq!(
        io.write(nsid, 0, BLOCK, &data).status(),
        Status::WRITE_FAULT
    );
    assert!(
        io.write(nsid, 0, BLOCK, &data).status().is_success(),
        "only one failure"
    );
    rpc(
        &s,
        "bdev_error_inject_error",
        json!({"name": "EE_F0", "io_type": "read", "error_type": "failure", "num": 1}),
    )
    .unwrap();
    assert_eq!(
        io.read(nsid, 0, BLOCK, 4096).status(),
        Status::UNRECOVERED_READ_ERROR
    );
    assert_eq!(io.read(nsid, 0, BLOCK, 4096).data, data);
    // The other namespace never noticed.
    io_roundtrip(&mut io);
}
