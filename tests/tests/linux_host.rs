//! The Linux kernel's NVMe/TCP host, unchanged, against a real tandemd: a QEMU guest
//! (tests/linux-host/guest.sh) boots Debian's kernel with nvme-cli, fio and e2fsprogs and reaches
//! tandemd on this machine's loopback. SPDK's own RPC client (`spdk-rpc`) builds what it uses:
//! the bdev, the transport, the subsystem, the namespace and the listener.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use tandem_tests::{free_port, rpc, Daemon};

const NQN: &str = "nqn.2016-06.io.spdk:cnode1";

fn harness_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("linux-host")
}

fn spdk_rpc(sock: &str, args: &[&str]) {
    let (ok, _, err) = tandem_tests::spdk_rpc(sock, args);
    assert!(ok, "spdk-rpc {args:?}: {err}");
}

/// tandemd with nothing configured, then configured through spdk-rpc: (daemon, port, socket).
/// The namespace is a RAM disk, or with `volume` a thin volume of a store on one.
fn target(tag: &str, volume: bool) -> (Daemon, u16, String) {
    let sock = format!("/tmp/tandem-lnh-{tag}-{}.sock", std::process::id());
    let d = tandem_tests::start_bare(&sock, &[]);
    let port = free_port().to_string();
    let ns = if volume {
        spdk_rpc(&sock, &["bdev_malloc_create", "-b", "Base0", "256", "4096"]);
        spdk_rpc(&sock, &["bdev_lvol_create_lvstore", "Base0", "lvs0"]);
        spdk_rpc(
            &sock,
            &["bdev_lvol_create", "-l", "lvs0", "-t", "vol0", "128"],
        );
        "lvs0/vol0"
    } else {
        spdk_rpc(
            &sock,
            &["bdev_malloc_create", "-b", "Malloc0", "128", "512"],
        );
        "Malloc0"
    };
    spdk_rpc(&sock, &["nvmf_create_transport", "-t", "TCP"]);
    spdk_rpc(
        &sock,
        &[
            "nvmf_create_subsystem",
            NQN,
            "-a",
            "-s",
            "TANDEM00000000000001",
        ],
    );
    spdk_rpc(&sock, &["nvmf_subsystem_add_ns", NQN, ns]);
    spdk_rpc(
        &sock,
        &[
            "nvmf_subsystem_add_listener",
            NQN,
            "-t",
            "tcp",
            "-a",
            "127.0.0.1",
            "-s",
            &port,
            "-f",
            "ipv4",
        ],
    );
    (d, port.parse().unwrap(), sock)
}

/// One guest at a time: each wants both of this machine's cores.
static ONE_GUEST: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Run the guest with these cases; panics with its output unless every case passed.
fn guest(port: u16, sock: &str, connect_opts: &str, cases: &[&str]) -> String {
    let _one = ONE_GUEST.lock().unwrap_or_else(|p| p.into_inner());
    let t0 = Instant::now();
    let out = Command::new(harness_dir().join("guest.sh"))
        .args([
            "--port",
            &port.to_string(),
            "--nqn",
            NQN,
            "--timeout",
            "280",
        ])
        .args(["--connect-opts", connect_opts])
        .args([
            "--hook-cmd",
            harness_dir().join("add-ns.sh").to_str().unwrap(),
        ])
        .args(cases)
        .env("TANDEM_RPC_SOCK", sock)
        .output()
        .expect("run tests/linux-host/guest.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "the Linux host failed against tandemd (exit {:?}, {:?}):\n{text}",
        out.status.code(),
        t0.elapsed()
    );
    for case in cases {
        assert!(
            text.contains(&format!("LNH-RESULT {case} PASS")),
            "case {case} did not pass:\n{text}"
        );
    }
    for line in text
        .lines()
        .filter(|l| l.starts_with("LNH-RESULT") || l.starts_with("LNH-PERF"))
    {
        eprintln!("[{connect_opts}] {line}");
    }
    text
}

#[test]
fn the_linux_host_discovers_connects_and_runs_a_filesystem_and_fio() {
    let (mut d, port, sock) = target("plain", false);
    guest(
        port,
        &sock,
        "",
        &[
            "discover",
            "connect",
            "mkfs",
            "fio",
            "reconnect",
            "ns-add",
            "fio-perf",
        ],
    );
    // The namespace the hook added while the host was connected is there, and the daemon is
    // still healthy.
    let subs = rpc(&sock, "nvmf_get_subsystems", json!({"nqn": NQN})).unwrap();
    assert_eq!(subs[0]["namespaces"].as_array().unwrap().len(), 2);
    let ctrls = rpc(&sock, "nvmf_subsystem_get_controllers", json!({"nqn": NQN})).unwrap();
    assert_eq!(
        ctrls.as_array().unwrap().len(),
        0,
        "every host disconnected"
    );
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(10)).code(), Some(0));
}

#[test]
fn the_linux_host_works_with_digests_two_queues_and_no_sq_flow_control() {
    let (_d, port, sock) = target("digest", false);
    guest(
        port,
        &sock,
        "--hdr-digest --data-digest -i 2",
        &["connect", "fio"],
    );
    // Without SQ flow control reads end with C2HData's SUCCESS flag and no response capsule.
    guest(port, &sock, "--disable-sqflow", &["connect", "fio"]);
}

#[test]
fn the_linux_host_runs_a_filesystem_and_fio_on_a_thin_volume() {
    let (mut d, port, sock) = target("volume", true);
    guest(port, &sock, "", &["connect", "mkfs", "fio"]);
    // Every first write allocated a cluster; the store is consistent after all of them.
    let check = rpc(&sock, "store_check", json!({"lvs_name": "lvs0"})).unwrap();
    assert_eq!(check["clean"], true, "{check}");
    let stores = rpc(&sock, "bdev_lvol_get_lvstores", json!({"lvs_name": "lvs0"})).unwrap();
    let (total, free) = (
        stores[0]["total_data_clusters"].as_u64().unwrap(),
        stores[0]["free_clusters"].as_u64().unwrap(),
    );
    assert!(
        free < total,
        "the host's writes allocated clusters: {stores}"
    );
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(10)).code(), Some(0));
}
