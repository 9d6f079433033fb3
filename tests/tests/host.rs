//! The NVMe/TCP host, through `tandem perf` and the nvmf bdev, against real targets: tandemd,
//! tandemd reached through another tandemd (its nvmf bdev exported again), and the Linux kernel
//! target (nvmet in a QEMU guest, its port forwarded to this machine's loopback).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tandem::nvmf::DEFAULT_SUBNQN;
use tandem_tests::{bin, free_port, rpc, serve_default, spdk_rpc, start_bare};

fn sock(tag: &str) -> String {
    format!("/tmp/tandem-host-{tag}-{}.sock", std::process::id())
}

fn trid(port: u16, nqn: &str) -> String {
    format!("trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:{port} subnqn:{nqn}")
}

/// `tandem perf` with these arguments: (exit code, JSON report or null, stderr).
fn perf(port: u16, nqn: &str, args: &[&str]) -> (Option<i32>, Value, String) {
    let core = tandem::reactor::available_cores();
    let core = format!("[{}]", core[core.len() - 1]);
    let out = Command::new(bin("tandem"))
        .args([
            "perf",
            "-r",
            &trid(port, nqn),
            "-c",
            &core,
            "--mode",
            "adaptive",
            "--json",
        ])
        .args(args)
        .output()
        .expect("run tandem perf");
    (
        out.status.code(),
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn perf_verifies_reads_and_writes_against_tandemd() {
    let port = free_port();
    let _d = serve_default(port, &sock("perf"), false, &[]);
    for args in [
        &[
            "-q",
            "16",
            "-o",
            "4096",
            "-w",
            "randwrite",
            "-t",
            "1",
            "--verify",
        ][..],
        &[
            "-q", "4", "-o", "131072", "-w", "write", "-t", "1", "--verify", "-H", "-I",
        ],
        &[
            "-q", "8", "-o", "16384", "-w", "randrw", "-M", "70", "-t", "1",
        ],
    ] {
        let (code, report, err) = perf(port, DEFAULT_SUBNQN, args);
        assert_eq!(code, Some(0), "{args:?}: {err}");
        let total = &report["total"];
        assert!(total["ios"].as_u64().unwrap() > 100, "{args:?}: {report}");
        assert_eq!(total["errors"], 0);
        assert_eq!(total["verify_mismatches"], 0);
        let p50 = total["latency_us"]["p50"].as_f64().unwrap();
        let p99 = total["latency_us"]["p99"].as_f64().unwrap();
        assert!(p50 > 0.0 && p50 <= p99, "{report}");
    }
    // A bad transport ID, an unknown subsystem: one clear line each.
    let (code, _, err) = perf(
        port,
        "nqn.2016-06.io.tandem:nope",
        &["-w", "read", "-t", "1"],
    );
    assert_eq!(code, Some(1));
    assert!(err.contains("admin queue Connect failed"), "{err}");
    let refused = free_port();
    let (code, _, err) = perf(refused, DEFAULT_SUBNQN, &["-w", "read", "-t", "1"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("refused"), "{err}");
}

#[test]
fn a_tandemd_exports_another_through_its_nvmf_bdev_and_rides_out_a_kill() {
    // B serves a RAM disk; A attaches it with SPDK's client and serves it again.
    let port_b = free_port();
    let sock_b = sock("b");
    let mut b = serve_default(port_b, &sock_b, false, &[]);
    let sock_a = sock("a");
    let _a = start_bare(&sock_a, &[]);
    let (ok, out, err) = spdk_rpc(
        &sock_a,
        &[
            "bdev_nvme_attach_controller",
            "-b",
            "B",
            "-t",
            "tcp",
            "-a",
            "127.0.0.1",
            "-s",
            &port_b.to_string(),
            "-f",
            "ipv4",
            "-n",
            DEFAULT_SUBNQN,
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains("Bn1"), "{out}");
    let ctrls = rpc(&sock_a, "bdev_nvme_get_controllers", json!({})).unwrap();
    assert_eq!(ctrls[0]["name"], "B");
    let bdev = rpc(&sock_a, "bdev_get_bdevs", json!({"name": "Bn1"})).unwrap();
    assert_eq!(bdev[0]["product_name"], "NVMe disk");
    assert_eq!(bdev[0]["num_blocks"], 64 * 2048);
    let nqn_a = "nqn.2016-06.io.tandem:proxy";
    let port_a = free_port();
    rpc(&sock_a, "nvmf_create_transport", json!({"trtype": "TCP"})).unwrap();
    rpc(
        &sock_a,
        "nvmf_create_subsystem",
        json!({"nqn": nqn_a, "allow_any_host": true}),
    )
    .unwrap();
    rpc(
        &sock_a,
        "nvmf_subsystem_add_ns",
        json!({"nqn": nqn_a, "namespace": {"bdev_name": "Bn1"}}),
    )
    .unwrap();
    rpc(
        &sock_a,
        "nvmf_subsystem_add_listener",
        json!({"nqn": nqn_a, "listen_address": {"trtype": "TCP", "adrfam": "IPv4",
               "traddr": "127.0.0.1", "trsvcid": port_a.to_string()}}),
    )
    .unwrap();
    let verify = [
        "-q",
        "8",
        "-o",
        "8192",
        "-w",
        "randwrite",
        "-t",
        "1",
        "--verify",
    ];
    let (code, report, err) = perf(port_a, nqn_a, &verify);
    assert_eq!(code, Some(0), "through A to B: {err} {report}");

    // B dies: A's commands to it fail, and A says so to its own host.
    b.signal(libc::SIGKILL);
    b.wait_exit(Duration::from_secs(10));
    let (code, report, _) = perf(port_a, nqn_a, &["-q", "4", "-w", "randread", "-t", "1"]);
    assert_eq!(code, Some(1), "errors while B is down: {report}");
    assert!(report["total"]["errors"].as_u64().unwrap() > 0, "{report}");

    // B comes back on the same port: A reconnects by itself, and data flows again.
    let _b2 = serve_default(port_b, &sock("b2"), false, &[]);
    let t0 = Instant::now();
    loop {
        let (code, report, _) = perf(port_a, nqn_a, &verify);
        if code == Some(0) {
            assert!(report["total"]["ios"].as_u64().unwrap() > 100);
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "A never reconnected to B: {report}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (ok, _, err) = spdk_rpc(&sock_a, &["nvmf_delete_subsystem", nqn_a]);
    assert!(ok, "{err}");
    let (ok, _, err) = spdk_rpc(&sock_a, &["bdev_nvme_detach_controller", "B"]);
    assert!(ok, "{err}");
    assert!(rpc(&sock_a, "bdev_get_bdevs", json!({"name": "Bn1"})).is_err());
}

/// The Linux kernel target in a guest, forwarded to 127.0.0.1:`port`; stopped on drop.
struct KernelTarget(Child);

impl KernelTarget {
    fn start(port: u16, nqn: &str) -> KernelTarget {
        let ready = std::env::temp_dir().join(format!("tandem-nvmet-ready-{}", std::process::id()));
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("linux-host/guest.sh");
        let child = Command::new(script)
            .args(["--serve-target", "--port", &port.to_string(), "--nqn", nqn])
            .args(["--timeout", "240", "--ready-file", ready.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the kernel target guest");
        let mut t = KernelTarget(child);
        let t0 = Instant::now();
        while !ready.exists() {
            if let Ok(Some(status)) = t.0.try_wait() {
                panic!("the kernel target guest exited early: {status}");
            }
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "the kernel target never got ready"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        t
    }
}

impl Drop for KernelTarget {
    fn drop(&mut self) {
        // SAFETY: kill takes a pid and a signal number; no memory is shared.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
    }
}

#[test]
fn the_host_and_perf_verify_work_against_the_linux_kernel_target() {
    let port = free_port();
    let nqn = "nqn.2014-08.org.linux:tandem-interop";
    let _t = KernelTarget::start(port, nqn);
    for args in [
        &[
            "-q",
            "8",
            "-o",
            "4096",
            "-w",
            "randwrite",
            "-t",
            "2",
            "--verify",
        ][..],
        &[
            "-q", "4", "-o", "65536", "-w", "write", "-t", "2", "--verify", "-H", "-I",
        ],
    ] {
        let (code, report, err) = perf(port, nqn, args);
        assert_eq!(code, Some(0), "{args:?} against nvmet: {err} {report}");
        assert!(report["total"]["ios"].as_u64().unwrap() > 10, "{report}");
        assert_eq!(report["total"]["verify_mismatches"], 0);
    }
    // The nvmf bdev too: tandemd attaches the kernel's namespace.
    let s = sock("nvmet");
    let _d = start_bare(&s, &[]);
    let names = rpc(
        &s,
        "bdev_nvme_attach_controller",
        json!({"name": "K", "trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1",
               "trsvcid": port.to_string(), "subnqn": nqn}),
    )
    .unwrap();
    assert_eq!(names, json!(["Kn1"]));
    let b = rpc(&s, "bdev_get_bdevs", json!({"name": "Kn1"})).unwrap();
    assert_eq!(
        b[0]["num_blocks"].as_u64().unwrap() * b[0]["block_size"].as_u64().unwrap(),
        256 << 20
    );
    rpc(&s, "bdev_nvme_detach_controller", json!({"name": "K"})).unwrap();
}
