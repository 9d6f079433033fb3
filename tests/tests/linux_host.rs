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
    export(&sock, NQN, ns, &port);
    (d, port.parse().unwrap(), sock)
}

/// Export `bdev` as the namespace of a new subsystem `nqn` on 127.0.0.1:`port`, through
/// spdk-rpc.
fn export(sock: &str, nqn: &str, bdev: &str, port: &str) {
    spdk_rpc(sock, &["nvmf_create_transport", "-t", "TCP"]);
    spdk_rpc(
        sock,
        &[
            "nvmf_create_subsystem",
            nqn,
            "-a",
            "-s",
            "TANDEM00000000000001",
        ],
    );
    spdk_rpc(sock, &["nvmf_subsystem_add_ns", nqn, bdev]);
    let listen = [
        "nvmf_subsystem_add_listener",
        nqn,
        "-t",
        "tcp",
        "-a",
        "127.0.0.1",
        "-s",
        port,
        "-f",
        "ipv4",
    ];
    spdk_rpc(sock, &listen);
}

/// One guest at a time: each wants both of this machine's cores.
static ONE_GUEST: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Run the guest with these cases; panics with its output unless every case passed.
fn guest(port: u16, sock: &str, connect_opts: &str, cases: &[&str]) -> String {
    guest_with(port, sock, connect_opts, cases, "add-ns.sh", &[])
}

/// [`guest`], with `hook` (a script of tests/linux-host) for the cases' hooks, and `env` for it.
fn guest_with(
    port: u16,
    sock: &str,
    connect_opts: &str,
    cases: &[&str],
    hook: &str,
    env: &[(&str, String)],
) -> String {
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
        .args(["--hook-cmd", harness_dir().join(hook).to_str().unwrap()])
        .args(cases)
        .env("TANDEM_RPC_SOCK", sock)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
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

/// The Linux host writes and verifies without pause (fio with `verify_backlog`) while a
/// replication relationship of its namespace's volume goes from uninitialized to in sync,
/// started by the guest's hook halfway through; the pair is then equal byte for byte.
#[test]
fn the_linux_host_writes_and_verifies_while_its_volume_starts_replicating() {
    const NQN_S: &str = "nqn.2016-06.io.tandem:lnh-secondary";
    const VOL: u64 = 128 << 20;
    // The secondary: a volume as large as the primary's, in a RAM store, exported.
    let sock_s = format!("/tmp/tandem-lnh-repl-s-{}.sock", std::process::id());
    let _secondary = tandem_tests::start_bare(&sock_s, &[]);
    let port_s = free_port().to_string();
    for args in [
        &["bdev_malloc_create", "-b", "Base1", "384", "4096"][..],
        &["bdev_lvol_create_lvstore", "Base1", "lvs1"],
        &["bdev_lvol_create", "-l", "lvs1", "-t", "vol", "128"],
    ] {
        spdk_rpc(&sock_s, args);
    }
    export(&sock_s, NQN_S, "lvs1/vol", &port_s);
    // The primary: the thin volume the guest writes, the secondary attached, a relationship
    // made and not started.
    let (_primary, port, sock) = target("repl", true);
    spdk_rpc(
        &sock,
        &[
            "bdev_nvme_attach_controller",
            "-b",
            "sec",
            "-t",
            "tcp",
            "-a",
            "127.0.0.1",
            "-s",
            &port_s,
            "-f",
            "ipv4",
            "-n",
            NQN_S,
        ],
    );
    rpc(
        &sock,
        "repl_create",
        json!({"name": "r1", "primary": "lvs0/vol0", "secondary_bdev": "secn1",
               "secondary_volume": "lvs1/vol", "secondary_rpc": sock_s}),
    )
    .unwrap();
    let text = guest_with(
        port,
        &sock,
        "",
        &["repl-fio"],
        "repl-start.sh",
        &[
            (
                "TANDEM_BIN",
                tandem_tests::bin("tandem").display().to_string(),
            ),
            ("TANDEM_REPL", "r1".into()),
        ],
    );
    // The longest write is the longest pause the client saw (guest_with prints the line).
    let perf = text
        .lines()
        .find(|l| l.starts_with("LNH-PERF repl-fio"))
        .unwrap_or_else(|| panic!("no figures from fio:\n{text}"));
    assert!(perf.ends_with(" err=0"), "{perf}");
    let v = rpc(&sock, "repl_get", json!({"name": "r1"})).unwrap();
    assert_eq!(v["state"], "in_sync", "{v}");
    assert!(v["counters"]["split_writes"].as_u64().unwrap() > 0, "{v}");
    rpc(&sock, "repl_quiesce", json!({"name": "r1"})).unwrap();
    let primary = tandem_tests::nvme_tcp::read_all(port, NQN, VOL);
    let secondary = tandem_tests::nvme_tcp::read_all(port_s.parse().unwrap(), NQN_S, VOL);
    if let Some(i) = primary.iter().zip(&secondary).position(|(a, b)| a != b) {
        panic!("primary and secondary differ at byte {i}");
    }
    eprintln!(
        "[repl-fio] {} split writes; the longest barrier pause {} us",
        v["counters"]["split_writes"], v["max_pause_us"]
    );
}
