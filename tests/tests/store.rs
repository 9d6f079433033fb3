//! The store in a real tandemd: SPDK's client makes a store on an io_uring file, thin and thick
//! volumes, a snapshot and a clone; the volumes are exported over NVMe/TCP and driven by
//! `tandem perf --verify` and the test host; tandemd is killed with SIGKILL and started again
//! from its saved config, which finds the store on the file; then, with tandemd stopped, the
//! offline `tandem store check|list|diff` read the same file.

use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use tandem_tests::nvme_tcp::Host;
use tandem_tests::{bin, free_port, rpc, spdk_rpc, start_bare};

const NQN: &str = "nqn.2016-06.io.tandem:store";

fn sock(tag: &str) -> String {
    format!("/tmp/tandem-store-{tag}-{}.sock", std::process::id())
}

fn spdk(sock: &str, args: &[&str]) -> String {
    let (ok, out, err) = spdk_rpc(sock, args);
    assert!(ok, "spdk-rpc {args:?}: {err}");
    out.trim().to_owned()
}

fn spdk_json(sock: &str, args: &[&str]) -> Value {
    let out = spdk(sock, args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?} printed {out} ({e})"))
}

fn perf_verify(port: u16, nsid: u32) {
    let core = tandem::reactor::available_cores();
    let out = Command::new(bin("tandem"))
        .args([
            "perf",
            "-r",
            &format!(
                "trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:{port} subnqn:{NQN} ns:{nsid}"
            ),
            "-c",
            &format!("[{}]", core[core.len() - 1]),
            "--mode",
            "adaptive",
            "-q",
            "16",
            "-o",
            "16384",
            "-w",
            "randwrite",
            "-t",
            "1",
            "--verify",
            "--json",
        ])
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert!(
        out.status.success(),
        "perf: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report["total"]["ios"].as_u64().unwrap() > 100, "{report}");
    assert_eq!(report["total"]["errors"], 0);
    assert_eq!(report["total"]["verify_mismatches"], 0);
}

/// Export `bdev` as namespace 1 of subsystem NQN, any host, on 127.0.0.1 at `port`.
fn export(s: &str, bdev: &str, port: u16) {
    spdk(s, &["nvmf_create_transport", "-t", "TCP"]);
    spdk(s, &["nvmf_create_subsystem", NQN, "-a"]);
    spdk(s, &["nvmf_subsystem_add_ns", NQN, bdev]);
    let port = port.to_string();
    let listener = ["-t", "tcp", "-a", "127.0.0.1", "-s", &port];
    spdk(
        s,
        &[&["nvmf_subsystem_add_listener", NQN][..], &listener].concat(),
    );
}

/// A controller's admin queue (kept for as long as the I/O queue is used) and an I/O queue.
fn host(port: u16) -> (Host, Host) {
    let mut admin = Host::new(port, false, false);
    let cntlid = admin.admin(NQN, 0);
    let mut io = Host::new(port, false, false);
    let c = io.connect(NQN, tandem_tests::nvme_tcp::HOSTNQN, 1, cntlid, 0);
    assert_eq!(c.cqe.status >> 1, 0, "I/O queue Connect");
    (admin, io)
}

fn done_ok(d: &tandem_tests::nvme_tcp::Done) -> bool {
    d.cqe.status >> 1 == 0
}

fn pattern(seed: u8) -> Vec<u8> {
    (0..8192)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

fn read(h: &mut Host, nsid: u32, lba: u64) -> Vec<u8> {
    let d = h.read(nsid, lba, 4096, 8192);
    assert!(done_ok(&d), "read ns {nsid}");
    d.data
}

fn offline(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(bin("tandem"))
        .arg("store")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn lvols_from_spdk_rpc_served_over_nvme_tcp_survive_sigkill_and_check_clean_offline() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let file = dir.join(format!("store-{}.img", std::process::id()));
    let config = dir.join(format!("store-{}.json", std::process::id()));
    std::fs::File::create(&file)
        .unwrap()
        .set_len(256 << 20)
        .unwrap();
    let f = file.to_str().unwrap();
    let s = sock("a");
    let port = free_port();
    let mut d = start_bare(&s, &[]);

    spdk(&s, &["bdev_uring_create", f, "uring0", "4096"]);
    let lvs = spdk(
        &s,
        &["bdev_lvol_create_lvstore", "uring0", "lvs0", "-c", "65536"],
    );
    assert!(
        tandem::bdev::parse_uuid(lvs.trim_matches('"')).is_some(),
        "{lvs}"
    );
    let thin = spdk(&s, &["bdev_lvol_create", "-l", "lvs0", "-t", "vol0", "64"]);
    spdk(&s, &["bdev_lvol_create", "-l", "lvs0", "thick0", "16"]);
    // The UUID it answers names the bdev too, as in SPDK.
    let by_uuid = spdk_json(&s, &["bdev_get_bdevs", "-b", thin.trim_matches('"')]);
    assert_eq!(by_uuid[0]["name"], "lvs0/vol0");
    let stores = spdk_json(&s, &["bdev_lvol_get_lvstores", "-l", "lvs0"]);
    assert_eq!(stores[0]["cluster_size"], 65536);
    assert_eq!(stores[0]["base_bdev"], "uring0");
    let free_before = stores[0]["free_clusters"].as_u64().unwrap();
    // Refusals, each with its errno.
    for (args, code) in [
        (&["bdev_lvol_create", "-l", "lvs0", "vol0", "4"][..], "-17"),
        (&["bdev_lvol_create_lvstore", "uring0", "again"], "-16"),
        (&["bdev_lvol_create", "-l", "nosuch", "v", "4"], "-2"),
        (&["bdev_lvol_create", "-l", "lvs0", "big", "999999"], "-28"),
    ] {
        // spdk-rpc prints the error object on stdout.
        let (ok, out, err) = spdk_rpc(&s, args);
        assert!(
            !ok && out.contains(&format!("\"code\": {code}")),
            "{args:?}: {out}{err}"
        );
    }

    export(&s, "lvs0/vol0", port);
    perf_verify(port, 1);

    let (_admin, mut h) = host(port);
    assert!(done_ok(&h.write(1, 0, 4096, &pattern(1))));
    spdk(&s, &["bdev_lvol_snapshot", "lvs0/vol0", "snap0"]);
    assert!(done_ok(&h.write(1, 0, 4096, &pattern(2))));
    spdk(&s, &["bdev_lvol_clone", "lvs0/snap0", "clone0"]);
    spdk(&s, &["nvmf_subsystem_add_ns", NQN, "lvs0/clone0"]);
    spdk(&s, &["nvmf_subsystem_add_ns", NQN, "lvs0/snap0"]);
    drop(h);
    let (_admin, mut h) = host(port);
    assert_eq!(read(&mut h, 1, 0), pattern(2), "the volume");
    assert_eq!(
        read(&mut h, 2, 0),
        pattern(1),
        "the clone, from the snapshot"
    );
    assert_eq!(read(&mut h, 3, 0), pattern(1), "the snapshot");
    let refused = h.write(3, 0, 4096, &pattern(3));
    assert_eq!(
        tandem::nvme::Status::from_field(refused.cqe.status).0,
        tandem::nvme::Status::NAMESPACE_WRITE_PROTECTED,
        "a snapshot refuses writes: {:#x}",
        refused.cqe.status
    );
    assert!(done_ok(&h.write(2, 0, 4096, &pattern(4))));
    assert_eq!(read(&mut h, 2, 0), pattern(4));
    assert_eq!(
        read(&mut h, 1, 0),
        pattern(2),
        "the clone's write stays in the clone"
    );

    let diff = rpc(
        &s,
        "store_block_diff",
        json!({"lvs_name": "lvs0", "volume": "vol0", "from": "snap0"}),
    )
    .unwrap();
    assert_eq!(diff["incremental"], true);
    assert_eq!(
        diff["extents"][0],
        json!({"offset": 0, "length": 65536}),
        "{diff}"
    );
    let (code, msg) = rpc(
        &s,
        "store_block_diff",
        json!({"lvs_name": "lvs0", "volume": "vol0", "from": "nope"}),
    )
    .unwrap_err();
    assert_eq!(code, -(libc::ENOENT as i64), "{msg}");
    let lvols = spdk_json(&s, &["bdev_lvol_get_lvols", "-l", "lvs0"]);
    let names: Vec<&str> = lvols
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["vol0", "thick0", "clone0", "snap0"], "{lvols}");
    let clone = lvols
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "clone0")
        .unwrap();
    assert_eq!(clone["is_clone"], true);
    spdk(&s, &["bdev_lvol_resize", "lvs0/vol0", "128"]);
    assert_eq!(
        spdk_json(&s, &["bdev_get_bdevs", "-b", "lvs0/vol0"])[0]["num_blocks"],
        32768
    );
    let stores = spdk_json(&s, &["bdev_lvol_get_lvstores"]);
    assert!(stores[0]["free_clusters"].as_u64().unwrap() < free_before);
    assert_eq!(
        rpc(&s, "store_check", json!({"lvs_name": "lvs0"})).unwrap()["clean"],
        true
    );
    std::fs::write(&config, spdk(&s, &["save_config"])).unwrap();
    drop(h);

    // A crash, then a start from the saved config: the store is found on the file again.
    d.signal(libc::SIGKILL);
    d.wait_exit(Duration::from_secs(10));
    let s2 = sock("b");
    let mut d2 = start_bare(&s2, &["--config", config.to_str().unwrap()]);
    let lvols = spdk_json(&s2, &["bdev_lvol_get_lvols"]);
    assert_eq!(lvols.as_array().unwrap().len(), 4, "{lvols}");
    let (_admin, mut h) = host(port);
    assert_eq!(read(&mut h, 1, 0), pattern(2));
    assert_eq!(read(&mut h, 2, 0), pattern(4));
    assert_eq!(read(&mut h, 3, 0), pattern(1));
    perf_verify(port, 2);
    spdk(&s2, &["nvmf_subsystem_remove_ns", NQN, "2"]);
    spdk(&s2, &["bdev_lvol_delete", "lvs0/clone0"]);
    assert!(
        spdk_json(&s2, &["bdev_lvol_get_lvols"])
            .as_array()
            .unwrap()
            .len()
            == 3
    );
    drop(h);
    d2.signal(libc::SIGTERM);
    d2.wait_exit(Duration::from_secs(20));

    // Offline, on the file tandemd left.
    let (code, out, err) = offline(&["check", f]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("clean"), "{out}");
    let (code, out, _) = offline(&["list", f]);
    assert_eq!(code, Some(0));
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list["name"], "lvs0");
    assert_eq!(list["volumes"].as_array().unwrap().len(), 2, "{list}");
    let (code, out, err) = offline(&["diff", f, "vol0", "--from", "snap0"]);
    assert_eq!(code, Some(0), "{err}");
    let diff: Value = serde_json::from_str(&out).unwrap();
    assert!(diff["changed_bytes"].as_u64().unwrap() >= 65536, "{diff}");
    let (code, out, _) = offline(&["snapshot", f, "offline0"]);
    assert_eq!(code, Some(0), "{out}");
    // Damage a superblock and the table: check names the damage and exits non-zero.
    let img = std::fs::read(&file).unwrap();
    let mut bad = img.clone();
    for b in bad.iter_mut().take(8192) {
        *b ^= 0x55;
    }
    std::fs::write(&file, &bad).unwrap();
    let (code, _, err) = offline(&["check", f]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("block 0"), "{err}");
    let _ = std::fs::remove_file(&file);
    let _ = std::fs::remove_file(&config);
}

#[test]
fn a_thin_volume_whose_store_is_full_answers_capacity_exceeded_and_keeps_what_it_has() {
    let s = sock("full");
    let port = free_port();
    let _d = start_bare(&s, &[]);
    // 16 MiB of 64 KiB clusters under a 64 MiB thin volume: the store fills first.
    spdk(&s, &["bdev_malloc_create", "-b", "small", "16", "4096"]);
    spdk(
        &s,
        &["bdev_lvol_create_lvstore", "small", "lvsf", "-c", "65536"],
    );
    spdk(&s, &["bdev_lvol_create", "-l", "lvsf", "-t", "thin", "64"]);
    export(&s, "lvsf/thin", port);
    let (_admin, mut h) = host(port);

    // One 8 KiB write into each cluster in turn, until the store has none left.
    let blocks_per_cluster = 65536 / 4096;
    let mut written = 0u64;
    let refused = loop {
        assert!(written < 1024, "a 16 MiB store took {written} clusters");
        let d = h.write(
            1,
            written * blocks_per_cluster,
            4096,
            &pattern(written as u8),
        );
        if !done_ok(&d) {
            break d;
        }
        written += 1;
    };
    assert!(written > 100, "the store took only {written} clusters");
    // Generic status type, Capacity Exceeded (0x81), Do Not Retry.
    let (status, _) = tandem::nvme::Status::from_field(refused.cqe.status);
    assert_eq!(
        status,
        tandem::nvme::Status::CAPACITY_EXCEEDED,
        "the write past the store's space: {:#x}",
        refused.cqe.status
    );
    // Nothing acknowledged is lost, and a cluster the volume has takes writes still.
    for i in [0, written / 2, written - 1] {
        assert_eq!(read(&mut h, 1, i * blocks_per_cluster), pattern(i as u8));
    }
    assert!(done_ok(&h.write(1, 0, 4096, &pattern(200))));
    assert_eq!(read(&mut h, 1, 0), pattern(200));
}
