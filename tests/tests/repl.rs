//! Synchronous replication between two real tandemd processes on loopback.
//!
//! The primary serves a volume of its store over NVMe/TCP and reaches the secondary's volume
//! through an `nvmf` bdev (directly, or through a proxy whose connections the test cuts); the
//! secondary keeps its store in a file (io_uring), so that it survives `kill -9`. A client
//! (`tandem perf --verify`: every write read back and checked) never stops while the pair
//! establishes and while faults hit it; each test ends with both volumes read over NVMe/TCP
//! and compared byte for byte.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tandem_tests::nvme_tcp::{rw_sqe, Host, HOSTNQN};
use tandem_tests::proxy::Proxy;
use tandem_tests::{bin, free_port, rpc, start_bare, Daemon};

const NQN_P: &str = "nqn.2016-06.io.tandem:repl-primary";
const NQN_S: &str = "nqn.2016-06.io.tandem:repl-secondary";
const VOL_MIB: u64 = 32;
/// Room for the volume and a snapshot of all of it (the last common snapshot pins what the
/// client overwrites since), and metadata.
const STORE_MIB: u64 = 3 * VOL_MIB;

fn sock(tag: &str) -> String {
    format!("/tmp/tandem-repl-{}-{tag}.sock", std::process::id())
}

fn ok(sock: &str, method: &str, params: Value) -> Value {
    rpc(sock, method, params.clone()).unwrap_or_else(|e| panic!("{method} {params}: {e:?}"))
}

fn export(sock: &str, nqn: &str, bdev: &str, port: u16) {
    ok(sock, "nvmf_create_transport", json!({"trtype": "TCP"}));
    ok(
        sock,
        "nvmf_create_subsystem",
        json!({"nqn": nqn, "allow_any_host": true}),
    );
    ok(
        sock,
        "nvmf_subsystem_add_ns",
        json!({"nqn": nqn, "namespace": {"bdev_name": bdev}}),
    );
    ok(
        sock,
        "nvmf_subsystem_add_listener",
        json!({"nqn": nqn, "listen_address": {"trtype": "TCP", "adrfam": "IPv4",
               "traddr": "127.0.0.1", "trsvcid": port.to_string()}}),
    );
}

/// The secondary: a tandemd whose store lives in a file, exporting its volume (through an
/// error bdev when asked).
struct Secondary {
    daemon: Option<Daemon>,
    sock: String,
    port: u16,
    file: PathBuf,
    error_bdev: bool,
}

impl Secondary {
    fn start(tag: &str, error_bdev: bool) -> Secondary {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let file = dir.join(format!("repl-{}-{tag}.img", std::process::id()));
        std::fs::File::create(&file)
            .unwrap()
            .set_len(STORE_MIB << 20)
            .unwrap();
        let mut s = Secondary {
            daemon: None,
            sock: sock(&format!("{tag}-s")),
            port: free_port(),
            file,
            error_bdev,
        };
        s.serve(true);
        s
    }

    /// Start tandemd, open the file (a store in it loads by itself), and export the volume.
    fn serve(&mut self, fresh: bool) {
        let _ = std::fs::remove_file(&self.sock);
        self.daemon = Some(start_bare(&self.sock, &[]));
        let s = &self.sock;
        ok(
            s,
            "bdev_uring_create",
            json!({"filename": self.file.to_str().unwrap(), "name": "uring0", "block_size": 4096}),
        );
        if fresh {
            ok(
                s,
                "bdev_lvol_create_lvstore",
                json!({"bdev_name": "uring0", "lvs_name": "lvs1", "cluster_sz": 65536}),
            );
            ok(
                s,
                "bdev_lvol_create",
                json!({"lvs_name": "lvs1", "lvol_name": "vol", "size_in_mib": VOL_MIB}),
            );
        }
        let exported = if self.error_bdev {
            ok(s, "bdev_error_create", json!({"base_name": "lvs1/vol"}));
            "EE_lvs1/vol"
        } else {
            "lvs1/vol"
        };
        export(s, NQN_S, exported, self.port);
    }

    fn kill(&mut self) {
        let mut d = self.daemon.take().expect("a running secondary");
        d.signal(libc::SIGKILL);
        d.wait_exit(Duration::from_secs(10));
    }
}

impl Drop for Secondary {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.file);
    }
}

/// The primary: a volume in a RAM store, exported, and the secondary attached as `secn1`
/// through `sec_port`.
struct Primary {
    daemon: Daemon,
    sock: String,
    port: u16,
}

/// Where the primary's store lives: a RAM disk, or a file (to survive `kill -9`).
enum Base<'a> {
    Ram,
    File(&'a std::path::Path),
}

fn primary(tag: &str, sec_port: u16) -> Primary {
    primary_on(tag, Base::Ram, sec_port)
}

fn primary_on(tag: &str, base: Base, sec_port: u16) -> Primary {
    let s = sock(&format!("{tag}-p"));
    let _ = std::fs::remove_file(&s);
    let daemon = start_bare(&s, &[]);
    let bdev = match base {
        Base::Ram => ok(
            &s,
            "bdev_malloc_create",
            json!({"name": "m0", "num_blocks": (STORE_MIB << 20) / 4096, "block_size": 4096}),
        ),
        Base::File(f) => ok(
            &s,
            "bdev_uring_create",
            json!({"filename": f.to_str().unwrap(), "name": "upri", "block_size": 4096}),
        ),
    };
    ok(
        &s,
        "bdev_lvol_create_lvstore",
        json!({"bdev_name": bdev, "lvs_name": "lvs0", "cluster_sz": 65536}),
    );
    ok(
        &s,
        "bdev_lvol_create",
        json!({"lvs_name": "lvs0", "lvol_name": "vol", "size_in_mib": VOL_MIB}),
    );
    let port = free_port();
    export(&s, NQN_P, "lvs0/vol", port);
    let names = ok(
        &s,
        "bdev_nvme_attach_controller",
        json!({"name": "sec", "trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1",
               "trsvcid": sec_port.to_string(), "subnqn": NQN_S, "reconnect_delay_sec": 1}),
    );
    assert_eq!(names, json!(["secn1"]));
    Primary {
        daemon,
        sock: s,
        port,
    }
}

impl Primary {
    fn create(&self, name: &str, sec: &Secondary, policy: &str) -> Value {
        ok(
            &self.sock,
            "repl_create",
            json!({"name": name, "primary": "lvs0/vol", "secondary_bdev": "secn1",
                   "secondary_volume": "lvs1/vol", "secondary_rpc": sec.sock,
                   "policy": policy}),
        )
    }

    fn get(&self, name: &str) -> Value {
        ok(&self.sock, "repl_get", json!({"name": name}))
    }

    fn wait_state(&self, name: &str, want: &str, within: Duration) -> Value {
        wait_state_at(&self.sock, name, want, within)
    }
}

/// `tandem perf --verify` against the primary's volume, in the background.
fn perf(port: u16, secs: u32) -> Child {
    let cores = tandem::reactor::available_cores();
    Command::new(bin("tandem"))
        .args([
            "perf",
            "-r",
            &format!("trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:{port} subnqn:{NQN_P}"),
            "-c",
            &format!("[{}]", cores[cores.len() - 1]),
            "--mode",
            "adaptive",
            "--json",
            "-q",
            "8",
            "-o",
            "4096",
            "-w",
            "randwrite",
            "--verify",
            "-t",
            &secs.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tandem perf")
}

/// Wait for perf: its report's totals, after checking that no I/O failed and every block
/// read back what was written.
fn perf_report(child: Child, primary: &mut Daemon) -> Value {
    let out = child.wait_with_output().expect("perf ends");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let total = report["total"].clone();
    assert_eq!(
        out.status.code(),
        Some(0),
        "perf: {report} {}\nthe primary's log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        primary.log_so_far()
    );
    assert_eq!(total["errors"], 0, "{report}");
    assert_eq!(total["verify_mismatches"], 0, "{report}");
    assert!(total["ios"].as_u64().unwrap() > 100, "{report}");
    total
}

/// Every byte of the namespace `nqn` serves on `port`.
fn read_all(port: u16, nqn: &str) -> Vec<u8> {
    tandem_tests::nvme_tcp::read_all(port, nqn, VOL_MIB << 20)
}

fn assert_equal(p: &Primary, s: &Secondary) {
    let a = read_all(p.port, NQN_P);
    let b = read_all(s.port, NQN_S);
    assert_eq!(a.len(), b.len());
    if let Some(i) = a.iter().zip(&b).position(|(x, y)| x != y) {
        panic!("primary and secondary differ at byte {i}");
    }
    assert!(a.iter().any(|&x| x != 0), "the client wrote something");
}

#[test]
fn establishing_under_verified_load_never_disrupts_the_client() {
    let sec = Secondary::start("est", false);
    let mut p = primary("est", sec.port);
    let made = p.create("r1", &sec, "sync");
    assert_eq!(made["state"], "uninitialized");
    let load = perf(p.port, 12);
    std::thread::sleep(Duration::from_millis(1500));
    // The CLI starts it and shows the progress until the pair is in sync.
    let out = Command::new(bin("tandem"))
        .args([
            "repl",
            "-s",
            &p.sock,
            "start",
            "r1",
            "--wait",
            "--timeout",
            "60",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tandem repl start --wait: {err}");
    assert!(err.contains("in_sync"), "{err}");
    let v = p.get("r1");
    assert_eq!(v["state"], "in_sync", "{v}");
    let transfers = v["transfers"].as_array().unwrap();
    assert!(transfers.len() >= 2, "a baseline and incrementals: {v}");
    assert!(
        transfers[0].as_u64().unwrap() > 0,
        "the baseline carried data: {v}"
    );
    let total = perf_report(load, &mut p.daemon);
    let v = p.get("r1");
    assert_eq!(v["state"], "in_sync", "{v}");
    assert!(v["counters"]["split_writes"].as_u64().unwrap() > 0, "{v}");
    println!(
        "establishing under load: {} I/Os, 0 errors; longest I/O {} us; transfers {:?}",
        total["ios"], total["latency_us"]["max"], v["transfers"]
    );
    assert_equal(&p, &sec);
    // Quiesce gives a snapshot both sides hold; the state is reported through the CLI too.
    let q = ok(&p.sock, "repl_quiesce", json!({"name": "r1"}));
    let snap = q["common_snapshot"].as_str().unwrap().to_owned();
    let list = ok(
        &sec.sock,
        "store_snapshot_list",
        json!({"lvs_name": "lvs1"}),
    );
    assert!(
        list.as_array().unwrap().iter().any(|s| s["name"] == snap),
        "{list}"
    );
    let out = Command::new(bin("tandem"))
        .args(["repl", "-s", &p.sock, "get", "r1"])
        .output()
        .unwrap();
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["state"], "quiesced");
    assert_eq!(got["last_common_snapshot"], json!(snap));
    // Refusals are JSON-RPC errors, not panics.
    let e = rpc(&p.sock, "repl_quiesce", json!({"name": "r1"})).unwrap_err();
    assert_eq!(e.0, -(libc::EPERM as i64), "{e:?}");
    let e = rpc(&p.sock, "repl_get", json!({"name": "nope"})).unwrap_err();
    assert_eq!(e.0, -(libc::ENOENT as i64), "{e:?}");
    let e = rpc(
        &p.sock,
        "repl_create",
        json!({"name": "r2", "primary": "lvs0/vol", "secondary_bdev": "secn1",
               "secondary_volume": "lvs1/vol"}),
    )
    .unwrap_err();
    assert_eq!(e.0, -(libc::EEXIST as i64), "{e:?}");
    ok(&p.sock, "repl_resume", json!({"name": "r1"}));
    p.wait_state("r1", "in_sync", Duration::from_secs(30));
    ok(&p.sock, "repl_delete", json!({"name": "r1"}));
    assert_eq!(ok(&p.sock, "repl_get", json!({})), json!([]));
}

#[test]
fn cuts_failing_writes_and_a_killed_secondary_end_in_sync_and_equal() {
    let mut sec = Secondary::start("faults", true);
    let proxy = Proxy::start(sec.port);
    let mut p = primary("faults", proxy.port);
    p.create("r1", &sec, "sync");
    ok(&p.sock, "repl_start", json!({"name": "r1"}));
    p.wait_state("r1", "in_sync", Duration::from_secs(60));
    let load = perf(p.port, 25);
    std::thread::sleep(Duration::from_millis(500));
    let out_of_sync = |v: &Value| v["entered"]["out_of_sync"].as_u64().unwrap();

    // The link cut again and again.
    for _ in 0..4 {
        proxy.cut();
        std::thread::sleep(Duration::from_millis(300));
    }
    let v = p.wait_state("r1", "in_sync", Duration::from_secs(30));
    assert!(
        out_of_sync(&v) >= 1,
        "the cuts took the pair out of sync: {v}"
    );
    let before = out_of_sync(&v);

    // The secondary's device fails writes.
    ok(
        &sec.sock,
        "bdev_error_inject_error",
        json!({"name": "EE_lvs1/vol", "io_type": "write", "error_type": "failure", "num": 50}),
    );
    let v = p.wait_state("r1", "out_of_sync", Duration::from_secs(10));
    assert!(
        v["counters"]["secondary_errors"].as_u64().unwrap() > 0,
        "{v}"
    );
    let v = p.wait_state("r1", "in_sync", Duration::from_secs(30));
    assert!(out_of_sync(&v) > before, "{v}");
    let before = out_of_sync(&v);

    // The secondary killed and restarted: its store comes back from its file.
    sec.kill();
    let v = p.wait_state("r1", "out_of_sync", Duration::from_secs(10));
    assert!(
        v["dirty_bytes"].as_u64().unwrap() > 0
            || v["counters"]["primary_only_writes"].as_u64().unwrap() > 0,
        "{v}"
    );
    std::thread::sleep(Duration::from_millis(500));
    sec.serve(false);
    let v = p.wait_state("r1", "in_sync", Duration::from_secs(60));
    assert!(out_of_sync(&v) > before, "{v}");
    let resynced = v["resynced_bytes"].as_u64().unwrap();
    let total = perf_report(load, &mut p.daemon);
    println!(
        "faults under load: {} I/Os, 0 errors; longest I/O {} us; {} bytes resynced; {} out-of-sync episodes",
        total["ios"], total["latency_us"]["max"], resynced, out_of_sync(&v)
    );
    p.wait_state("r1", "in_sync", Duration::from_secs(30));
    assert_equal(&p, &sec);
}

/// A client of its own: one write at a time over NVMe/TCP to the primary, each block stamped
/// with the write's number, remembering the last acknowledged write of each block and the one
/// in flight when the connection died.
struct Stamper {
    io: Host,
    seq: u64,
    acked: std::collections::HashMap<u64, u64>,
    in_flight: Option<(u64, u64)>,
}

fn stamp(block: u64, seq: u64) -> Vec<u8> {
    let mut b = vec![0u8; 4096];
    for (i, c) in b.chunks_mut(16).enumerate() {
        c[..8].copy_from_slice(&block.to_le_bytes());
        c[8..].copy_from_slice(&(seq ^ i as u64).to_le_bytes());
    }
    b
}

impl Stamper {
    fn connect(port: u16) -> Stamper {
        Stamper::connect_to(port, NQN_P)
    }

    fn connect_to(port: u16, nqn: &str) -> Stamper {
        let mut admin = Host::new(port, false, false);
        let cntlid = admin.admin(nqn, 0);
        let mut io = Host::new(port, false, false);
        assert!(io.connect(nqn, HOSTNQN, 1, cntlid, 0).status().is_success());
        // The admin queue stays open while the stamper writes (closing it would end the
        // controller); the process ends it.
        std::mem::forget(admin);
        Stamper {
            io,
            seq: 0,
            acked: Default::default(),
            in_flight: None,
        }
    }

    /// Write `n` blocks at random in `[first, first + blocks)`; false once the target is gone.
    fn write(&mut self, first: u64, blocks: u64, n: u64, seed: &mut u64) -> bool {
        for _ in 0..n {
            *seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let block = first + (*seed >> 33) % blocks;
            self.seq += 1;
            self.in_flight = Some((block, self.seq));
            let sqe = rw_sqe(tandem::nvme::io::WRITE, 1, block, 1);
            let d = match self.io.0.run(sqe, &stamp(block, self.seq), 0) {
                Ok(d) => d,
                Err(_) => return false,
            };
            if !d.status().is_success() {
                return false;
            }
            self.acked.insert(block, self.seq);
            self.in_flight = None;
        }
        true
    }

    /// Every acknowledged write is on the primary (at `primary`), and the secondary (at
    /// `secondary`) holds the same bytes.
    fn check_pair(&self, primary: u16, secondary: u16) {
        let image = read_all(primary, NQN_P);
        self.check(&image);
        assert_eq!(
            image,
            read_all(secondary, NQN_S),
            "the pair differs after the resync"
        );
    }

    /// Every acknowledged write is in `image` (or the write in flight at the end replaced it).
    fn check(&self, image: &[u8]) {
        for (&block, &seq) in &self.acked {
            let at = &image[(block * 4096) as usize..][..4096];
            let later = self
                .in_flight
                .filter(|&(b, _)| b == block)
                .map(|(b, s)| stamp(b, s));
            assert!(
                at == stamp(block, seq).as_slice() || later.as_deref() == Some(at),
                "block {block}: the acknowledged write {seq} is not there"
            );
        }
    }
}

impl Stamper {
    /// One stamped write to `block`, not remembered: the status the target answers.
    fn try_write(&mut self, block: u64) -> tandem::nvme::Status {
        self.seq += 1;
        let sqe = rw_sqe(tandem::nvme::io::WRITE, 1, block, 1);
        let d = self
            .io
            .0
            .run(sqe, &stamp(block, self.seq), 0)
            .expect("the primary answers");
        d.status()
    }
}

#[test]
fn strict_sync_fails_writes_while_out_of_sync_and_recovers_after() {
    let sec = Secondary::start("strict", false);
    let proxy = Proxy::start(sec.port);
    let p = primary("strict", proxy.port);
    p.create("r1", &sec, "strict_sync");
    ok(&p.sock, "repl_start", json!({"name": "r1"}));
    p.wait_state("r1", "in_sync", Duration::from_secs(60));
    let mut seed = 11u64;
    let mut w = Stamper::connect(p.port);
    // In sync: acknowledged on both sides (blocks 0..256).
    assert!(w.write(0, 256, 200, &mut seed));

    // The link goes down: no write succeeds while the pair is out of sync, and each fails with
    // a Write Fault (blocks 512..768, none acknowledged). The first may have reached the
    // primary before the secondary failed it; the log holds its region.
    proxy.down();
    let first = w.try_write(512);
    assert!(
        !first.is_success(),
        "a write acknowledged with the link down"
    );
    let v = p.wait_state("r1", "out_of_sync", Duration::from_secs(10));
    for block in 513..533 {
        assert_eq!(
            w.try_write(block),
            tandem::nvme::Status::WRITE_FAULT,
            "StrictSync refuses writes while out of sync: {v}"
        );
    }
    let v = p.get("r1");
    assert!(
        v["counters"]["refused_writes"].as_u64().unwrap() >= 20,
        "{v}"
    );

    // The link comes back: the pair resyncs by itself, and writes succeed again.
    proxy.up();
    p.wait_state("r1", "in_sync", Duration::from_secs(60));
    assert!(
        w.write(0, 256, 200, &mut seed),
        "writes succeed again once in sync"
    );
    w.check_pair(p.port, sec.port);
}

/// A primary whose store lives in a file, so that it survives `kill -9`.
fn file_primary(
    tag: &str,
    file: &std::path::Path,
    sec_port: u16,
    config: Option<&std::path::Path>,
) -> Primary {
    let s = sock(&format!("{tag}-p"));
    let _ = std::fs::remove_file(&s);
    if let Some(c) = config {
        let daemon = start_bare(&s, &["-c", c.to_str().unwrap()]);
        let subs = ok(&s, "nvmf_get_subsystems", json!({}));
        let port = subs
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["nqn"] == NQN_P)
            .and_then(|x| x["listen_addresses"][0]["trsvcid"].as_str())
            .expect("the primary's listener came back from its config")
            .parse()
            .unwrap();
        return Primary {
            daemon,
            sock: s,
            port,
        };
    }
    primary_on(tag, Base::File(file), sec_port)
}

#[test]
fn a_primary_killed_in_sync_while_resyncing_and_with_its_secondary_away_resumes_from_its_log() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let file = dir.join(format!("repl-{}-pkill-primary.img", std::process::id()));
    std::fs::File::create(&file)
        .unwrap()
        .set_len(STORE_MIB << 20)
        .unwrap();
    let config = dir.join(format!("repl-{}-pkill.json", std::process::id()));
    let sec = Secondary::start("pkill", false);
    let proxy = Proxy::start(sec.port);
    let mut p = file_primary("pkill", &file, proxy.port, None);
    ok(
        &p.sock,
        "repl_create",
        json!({"name": "r1", "primary": "lvs0/vol", "secondary_bdev": "secn1",
               "secondary_volume": "lvs1/vol", "secondary_rpc": sec.sock,
               "rate_mib_per_sec": 1}),
    );
    ok(&p.sock, "repl_start", json!({"name": "r1"}));
    p.wait_state("r1", "in_sync", Duration::from_secs(60));
    let saved = ok(&p.sock, "save_config", json!({}));
    std::fs::write(&config, saved.to_string()).unwrap();
    let region = 256 << 10;
    let mut seed = 7u64;

    // 1. Killed in sync, in the middle of writes to the first 4 regions.
    let mut w = Stamper::connect(p.port);
    assert!(w.write(0, 4 * region / 4096, 300, &mut seed));
    let killer = {
        let pid = p.daemon.child.id() as i32;
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            // SAFETY: kill(2) on the primary's pid.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        })
    };
    while w.write(0, 4 * region / 4096, 50, &mut seed) {}
    killer.join().unwrap();
    p.daemon.wait_exit(Duration::from_secs(10));
    let p2 = file_primary("pkill", &file, proxy.port, Some(&config));
    let v = p2.get("r1");
    let recovered = v["recovered_dirty_bytes"].as_u64().unwrap();
    assert!(
        recovered > 0,
        "the log held the regions written in flight: {v}"
    );
    assert!(
        recovered <= 4 * region,
        "the log held only the regions in use: {v}"
    );
    let v = p2.wait_state("r1", "in_sync", Duration::from_secs(30));
    assert_eq!(
        v["resynced_bytes"].as_u64().unwrap(),
        recovered,
        "the resync copied what the log held, no more: {v}"
    );
    println!(
        "primary killed in sync: {} writes acknowledged; the log held {recovered} bytes; resynced {}",
        w.acked.len(),
        v["resynced_bytes"]
    );
    w.check_pair(p2.port, sec.port);
    drop(w);

    // 2. Killed while resyncing: the link down, writes to 16 regions, the link up, and the
    // primary killed while the (rate-limited) scanner copies them.
    let mut p = p2;
    proxy.down();
    let mut w = Stamper::connect(p.port);
    assert!(w.write(8 * region / 4096, 16 * region / 4096, 2000, &mut seed));
    p.wait_state("r1", "out_of_sync", Duration::from_secs(10));
    proxy.up();
    let v = p.wait_state("r1", "resyncing", Duration::from_secs(10));
    assert!(v["dirty_bytes"].as_u64().unwrap() >= 8 * region, "{v}");
    std::thread::sleep(Duration::from_millis(700));
    p.daemon.signal(libc::SIGKILL);
    p.daemon.wait_exit(Duration::from_secs(10));
    let p3 = file_primary("pkill", &file, proxy.port, Some(&config));
    let v = p3.get("r1");
    let recovered = v["recovered_dirty_bytes"].as_u64().unwrap();
    // At most the 16 regions written out of sync, and the first region (the probe that
    // found the secondary back wrote its first block back: copied again to be sure).
    assert!(
        recovered > 0 && recovered <= 17 * region,
        "the log held what the resync had left: {v}"
    );
    let v = p3.wait_state("r1", "in_sync", Duration::from_secs(60));
    assert_eq!(v["resynced_bytes"].as_u64().unwrap(), recovered, "{v}");
    println!(
        "primary killed while resyncing: the log held {recovered} of {} bytes written out of sync",
        16 * region
    );
    w.check_pair(p3.port, sec.port);
    drop(w);

    // 3. Killed while its secondary is away, and restarted before it is back: the primary
    // starts (its config's attach goes on in the background), serves its clients out of sync,
    // and resyncs once the secondary answers.
    let mut p = p3;
    proxy.down();
    let mut w = Stamper::connect(p.port);
    assert!(w.write(24 * region / 4096, 4 * region / 4096, 500, &mut seed));
    p.wait_state("r1", "out_of_sync", Duration::from_secs(10));
    p.daemon.signal(libc::SIGKILL);
    p.daemon.wait_exit(Duration::from_secs(10));
    drop(w);
    let p4 = file_primary("pkill", &file, proxy.port, Some(&config));
    let v = p4.wait_state("r1", "out_of_sync", Duration::from_secs(10));
    assert_eq!(v["secondary_attached"], false, "{v}");
    let recovered = v["recovered_dirty_bytes"].as_u64().unwrap();
    assert!(
        recovered >= 4 * region && recovered <= 5 * region,
        "the log held the 4 regions written out of sync (and the probe's first region): {v}"
    );
    let mut w = Stamper::connect(p4.port);
    assert!(
        w.write(28 * region / 4096, 4 * region / 4096, 500, &mut seed),
        "the primary serves its clients while its secondary is away"
    );
    std::thread::sleep(Duration::from_millis(1500));
    let v = p4.get("r1");
    assert_eq!(v["state"], "out_of_sync", "{v}");
    let dirty = v["dirty_bytes"].as_u64().unwrap();
    assert!(
        dirty >= 8 * region,
        "the log holds the 8 regions written while the secondary was away: {v}"
    );
    proxy.up();
    // The client keeps writing while the secondary attaches and the pair resyncs: no write
    // fails or hangs (writes waiting in the splitter as its path to the secondary opens).
    let t = Instant::now();
    let v = loop {
        assert!(
            w.write(28 * region / 4096, 4 * region / 4096, 20, &mut seed),
            "a write failed as the secondary came back"
        );
        let v = p4.get("r1");
        if v["state"] == "in_sync" {
            break v;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "not in sync: {v}");
    };
    assert_eq!(v["secondary_attached"], true, "{v}");
    let resynced = v["resynced_bytes"].as_u64().unwrap();
    assert!(
        resynced >= dirty,
        "the resync copied at least what the log held ({dirty} bytes): {v}"
    );
    println!(
        "primary restarted with its secondary away: came up out of sync with {recovered} bytes logged; resynced {resynced} once it was back"
    );
    w.check_pair(p4.port, sec.port);
    let _ = std::fs::remove_file(&file);
    let _ = std::fs::remove_file(&config);
}

/// Make the primary's volume reachable from the secondary's tandemd as `prin1`.
fn attach_primary_at_secondary(sec: &Secondary, p: &Primary) {
    let names = ok(
        &sec.sock,
        "bdev_nvme_attach_controller",
        json!({"name": "pri", "trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1",
               "trsvcid": p.port.to_string(), "subnqn": NQN_P}),
    );
    assert_eq!(names, json!(["prin1"]));
}

/// Poll `repl_get` on `sock` until relationship `name` is in state `want`.
fn wait_state_at(sock: &str, name: &str, want: &str, within: Duration) -> Value {
    let t = Instant::now();
    loop {
        let v = ok(sock, "repl_get", json!({"name": name}));
        if v["state"] == want {
            return v;
        }
        assert!(t.elapsed() < within, "not {want} after {within:?}: {v}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn failover_then_failback_and_swap_back() {
    let sec = Secondary::start("failover", false);
    let p = primary("failover", sec.port);
    let region = 256 << 10;
    let mut seed = 11u64;
    let mut wp = Stamper::connect(p.port);
    assert!(wp.write(0, 8 * region / 4096, 400, &mut seed));
    p.create("r1", &sec, "sync");
    ok(&p.sock, "repl_start", json!({"name": "r1"}));
    p.wait_state("r1", "in_sync", Duration::from_secs(60));
    assert!(wp.write(0, 8 * region / 4096, 200, &mut seed));

    // Failover: the secondary takes the writes. The old primary is written too (a client
    // that did not hear of the failover): split brain, in a region of its own.
    ok(&p.sock, "repl_break", json!({"name": "r1"}));
    assert_eq!(p.get("r1")["state"], "broken");
    let common = p.get("r1")["last_common_snapshot"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut ws = Stamper::connect_to(sec.port, NQN_S);
    assert!(ws.write(16 * region / 4096, 4 * region / 4096, 300, &mut seed));
    assert!(wp.write(40 * region / 4096, region / 4096, 50, &mut seed));
    drop(wp);

    // Failback: the relationship runs the other way from the common snapshot.
    ok(&p.sock, "repl_delete", json!({"name": "r1"}));
    attach_primary_at_secondary(&sec, &p);
    ok(
        &sec.sock,
        "repl_create",
        json!({"name": "back", "primary": "lvs1/vol", "secondary_bdev": "prin1",
               "secondary_volume": "lvs0/vol", "secondary_rpc": p.sock,
               "common_snapshot": common}),
    );
    ok(&sec.sock, "repl_start", json!({"name": "back"}));
    let v = wait_state_at(&sec.sock, "back", "in_sync", Duration::from_secs(60));
    let first = v["transfers"][0].as_u64().unwrap();
    assert!(
        first < (VOL_MIB << 20) / 2,
        "the first transfer is the two sides' changes since {common}, not a baseline: {v}"
    );
    assert!(ws.write(16 * region / 4096, 4 * region / 4096, 100, &mut seed));
    let image = read_all(sec.port, NQN_S);
    ws.check(&image);
    assert_eq!(
        image,
        read_all(p.port, NQN_P),
        "failback left the sides different"
    );

    // Swap back: quiesce for a common snapshot, and the original direction again from it.
    let q = ok(&sec.sock, "repl_quiesce", json!({"name": "back"}));
    let common2 = q["common_snapshot"].as_str().unwrap().to_owned();
    drop(ws);
    ok(&sec.sock, "repl_delete", json!({"name": "back"}));
    ok(
        &p.sock,
        "repl_create",
        json!({"name": "r1", "primary": "lvs0/vol", "secondary_bdev": "secn1",
               "secondary_volume": "lvs1/vol", "secondary_rpc": sec.sock,
               "common_snapshot": common2}),
    );
    ok(&p.sock, "repl_start", json!({"name": "r1"}));
    let v = p.wait_state("r1", "in_sync", Duration::from_secs(60));
    assert_eq!(
        v["transfers"][0], 0,
        "nothing changed since the quiesce: {v}"
    );
    let mut wp = Stamper::connect(p.port);
    assert!(wp.write(0, 8 * region / 4096, 100, &mut seed));
    let image = read_all(p.port, NQN_P);
    wp.check(&image);
    assert_eq!(image, read_all(sec.port, NQN_S), "after the swap back");
}
