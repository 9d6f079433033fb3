//! tandemd's JSON-RPC server driven by SPDK's own client (`spdk-rpc`, from PyPI's `spdk`
//! package, installed by scripts/setup.sh), by `tandem rpc`, and by raw bytes on the socket.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use tandem_tests::{bin, spdk_rpc, Daemon};

fn sock(tag: &str) -> String {
    format!("/tmp/tandem-rpc-{tag}-{}.sock", std::process::id())
}

fn start(sock: &str, extra: &[&str]) -> Daemon {
    tandem_tests::start_bare(sock, extra)
}

fn spdk_json(sock: &str, args: &[&str]) -> Value {
    let (ok, out, err) = spdk_rpc(sock, args);
    assert!(ok, "spdk-rpc {args:?} failed: {err}");
    serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("spdk-rpc {args:?} printed non-JSON ({e}): {out}"))
}

fn tandem_rpc(sock: &str, method: &str, params: &str) -> Value {
    let out = Command::new(bin("tandem"))
        .args(["rpc", "-s", sock, method, params])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tandem rpc {method}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn spdk_rpc_drives_tandemd_and_save_config_reloads() {
    let s1 = sock("a");
    let mut d = start(&s1, &[]);
    let version = spdk_json(&s1, &["spdk_get_version"]);
    assert!(
        version["version"].as_str().unwrap().starts_with("Tandem v"),
        "{version}"
    );
    let methods = spdk_json(&s1, &["rpc_get_methods"]);
    assert!(methods
        .as_array()
        .unwrap()
        .contains(&json!("bdev_malloc_create")));

    // spdk-rpc's own argument forms: size in MiB, then block size.
    let (ok, out, err) = spdk_rpc(&s1, &["bdev_malloc_create", "-b", "Malloc0", "32", "512"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "Malloc0");
    let (ok, _, err) = spdk_rpc(&s1, &["bdev_null_create", "Null0", "16", "4096"]);
    assert!(ok, "{err}");
    let (ok, out, err) = spdk_rpc(&s1, &["bdev_error_create", "Malloc0"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "EE_Malloc0");
    let (ok, _, err) = spdk_rpc(
        &s1,
        &[
            "bdev_error_inject_error",
            "EE_Malloc0",
            "write",
            "failure",
            "-n",
            "2",
        ],
    );
    assert!(ok, "{err}");

    let b = spdk_json(&s1, &["bdev_get_bdevs", "-b", "Malloc0"]);
    assert_eq!(b[0]["num_blocks"], 65536);
    assert_eq!(b[0]["claimed"], true);
    let stat = spdk_json(&s1, &["bdev_get_iostat"]);
    assert_eq!(stat["bdevs"].as_array().unwrap().len(), 3);

    // A refused call: spdk-rpc exits non-zero and shows our error object.
    // (spdk-rpc prints error responses on stdout or stderr depending on the call.)
    let (ok, out, err) = spdk_rpc(&s1, &["bdev_malloc_create", "-b", "Malloc0", "8", "512"]);
    let shown = out + &err;
    assert!(
        !ok && shown.contains("already exists") && shown.contains("-17"),
        "{shown}"
    );
    let (ok, out, err) = spdk_rpc(&s1, &["bdev_malloc_delete", "Malloc0"]);
    let shown = out + &err;
    assert!(
        !ok && shown.contains("claimed by EE_Malloc0") && shown.contains("-16"),
        "{shown}"
    );

    // save_config, reloaded by a second tandemd, gives the same bdevs.
    let saved = spdk_json(&s1, &["save_config"]);
    let config = format!("/tmp/tandem-rpc-config-{}.json", std::process::id());
    std::fs::write(&config, serde_json::to_string_pretty(&saved).unwrap()).unwrap();
    let before = tandem_rpc(&s1, "bdev_get_bdevs", "{}");
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(10)).code(), Some(0));
    assert!(
        !std::path::Path::new(&s1).exists(),
        "the socket is removed at exit"
    );

    let s2 = sock("b");
    let mut d2 = start(&s2, &["--config", &config]);
    let after = tandem_rpc(&s2, "bdev_get_bdevs", "{}");
    assert_eq!(
        after, before,
        "the reloaded config gives the same bdevs, UUIDs and claims"
    );
    d2.signal(libc::SIGTERM);
    assert_eq!(d2.wait_exit(Duration::from_secs(10)).code(), Some(0));
    std::fs::remove_file(&config).unwrap();
}

#[test]
fn bad_bytes_get_a_parse_error_and_the_server_keeps_serving() {
    let s = sock("c");
    let mut d = start(&s, &[]);
    // Two requests in one write, the second split across writes, then garbage.
    let mut c = UnixStream::connect(&s).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(br#"{"jsonrpc":"2.0","method":"framework_wait_init","id":1}{"jsonrpc":"2.0","me"#)
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    c.write_all(br#"thod":"nope","id":"two"}{{{ not json"#)
        .unwrap();
    let mut all = String::new();
    c.read_to_string(&mut all).unwrap();
    let replies: Vec<Value> = serde_json::Deserializer::from_str(&all)
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(replies.len(), 3, "{all}");
    assert_eq!(replies[0]["result"], true);
    assert_eq!(
        (
            replies[1]["id"].clone(),
            replies[1]["error"]["code"].clone()
        ),
        (json!("two"), json!(-32601))
    );
    assert_eq!(
        replies[2]["error"]["code"], -32700,
        "garbage closes the connection with a parse error"
    );
    // Others are still served.
    assert_eq!(tandem_rpc(&s, "framework_wait_init", "{}"), json!(true));
    // A config that names an unknown method stops start-up with one line and status 2.
    let config = format!("/tmp/tandem-rpc-bad-{}.json", std::process::id());
    std::fs::write(&config, r#"{"subsystems":[{"subsystem":"bdev","config":[{"method":"bdev_teleport_create","params":{}}]}]}"#).unwrap();
    let (code, stderr) = tandem_tests::run_tandemd(&["-r", &sock("d"), "--config", &config]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("bdev_teleport_create") && stderr.lines().count() == 1,
        "{stderr}"
    );
    std::fs::remove_file(&config).unwrap();
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(10)).code(), Some(0));
}

#[test]
fn spdk_rpc_builds_an_nvmf_target_and_save_config_reloads_it() {
    let s1 = sock("nvmf1");
    let mut d = start(&s1, &[]);
    let port = tandem_tests::free_port().to_string();
    let nqn = "nqn.2016-06.io.spdk:cnode7";
    let host = "nqn.2014-08.org.nvmexpress:uuid:6b6c2a83-0d6e-4d38-9b1a-2f0b8d6e6a11";
    for args in [
        &["bdev_malloc_create", "-b", "Malloc0", "16", "512"][..],
        &["bdev_malloc_create", "-b", "Malloc1", "16", "4096"],
        &[
            "nvmf_create_transport",
            "-t",
            "TCP",
            "-q",
            "64",
            "-c",
            "4096",
        ],
        &[
            "nvmf_create_subsystem",
            nqn,
            "-s",
            "SN0007",
            "-d",
            "Tandem test",
            "-i",
            "5",
            "-I",
            "9",
        ],
        &["nvmf_subsystem_add_ns", nqn, "Malloc0"],
        &["nvmf_subsystem_add_ns", nqn, "Malloc1", "-n", "5"],
        &["nvmf_subsystem_add_host", nqn, host],
        &[
            "nvmf_subsystem_add_listener",
            nqn,
            "-t",
            "tcp",
            "-a",
            "127.0.0.1",
            "-s",
            &port,
            "-f",
            "ipv4",
        ],
    ] {
        let (ok, _, err) = spdk_rpc(&s1, args);
        assert!(ok, "spdk-rpc {args:?}: {err}");
    }
    let t = spdk_json(&s1, &["nvmf_get_transports"]);
    assert_eq!(t[0]["trtype"], "TCP");
    assert_eq!(t[0]["max_queue_depth"], 64);
    assert_eq!(t[0]["in_capsule_data_size"], 4096);
    let subs = spdk_json(&s1, &["nvmf_get_subsystems"]);
    let sub = subs
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["nqn"] == nqn)
        .expect("the subsystem is listed");
    assert_eq!(sub["serial_number"], "SN0007");
    assert_eq!(sub["model_number"], "Tandem test");
    assert_eq!(sub["allow_any_host"], false);
    assert_eq!(sub["hosts"][0]["nqn"], host);
    assert_eq!(sub["namespaces"][1]["nsid"], 5);
    assert_eq!(sub["listen_addresses"][0]["trsvcid"], port.as_str());
    assert!(subs
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["subtype"] == "Discovery"));

    // Refusals name the problem and carry SPDK's codes.
    for (args, code, words) in [
        (&["nvmf_create_subsystem", nqn][..], "-17", "already exists"),
        (
            &["nvmf_create_subsystem", "not-an-nqn"],
            "-22",
            "not a valid NQN",
        ),
        (
            &["nvmf_subsystem_add_ns", nqn, "NoSuchBdev"],
            "-19",
            "no bdev named",
        ),
        (
            &["nvmf_subsystem_add_ns", nqn, "Malloc0"],
            "-17",
            "already a namespace",
        ),
        (
            &["nvmf_subsystem_remove_ns", nqn, "9"],
            "-19",
            "no namespace with NSID 9",
        ),
        (
            &["nvmf_create_transport", "-t", "RDMA"],
            "-32602",
            "not supported",
        ),
        (
            &[
                "nvmf_subsystem_add_listener",
                nqn,
                "-t",
                "tcp",
                "-a",
                "127.0.0.1",
                "-s",
                &port,
                "-f",
                "ipv4",
            ],
            "-17",
            "already listens",
        ),
    ] {
        let (ok, out, err) = spdk_rpc(&s1, args);
        let shown = out + &err;
        assert!(
            !ok && shown.contains(code) && shown.contains(words),
            "{args:?}: {shown}"
        );
    }

    let saved = spdk_json(&s1, &["save_config"]);
    let config = format!("/tmp/tandem-rpc-nvmf-{}.json", std::process::id());
    std::fs::write(&config, serde_json::to_string_pretty(&saved).unwrap()).unwrap();
    let before = tandem_rpc(&s1, "nvmf_get_subsystems", "{}");
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(10)).code(), Some(0));

    let s2 = sock("nvmf2");
    let mut d2 = start(&s2, &["--config", &config]);
    let after = tandem_rpc(&s2, "nvmf_get_subsystems", "{}");
    assert_eq!(
        after, before,
        "the reloaded config gives the same subsystems"
    );
    assert_eq!(
        tandem_rpc(&s2, "nvmf_get_transports", "{}"),
        spdk_json(&s2, &["nvmf_get_transports"])
    );
    // And the listener serves: a TCP connection is accepted on the saved port.
    std::net::TcpStream::connect(("127.0.0.1", port.parse::<u16>().unwrap()))
        .expect("the reloaded listener accepts");
    // Deleting frees the port for reuse at once.
    let (ok, _, err) = spdk_rpc(&s2, &["nvmf_delete_subsystem", nqn]);
    assert!(ok, "{err}");
    std::net::TcpListener::bind(("127.0.0.1", port.parse::<u16>().unwrap()))
        .expect("the port is free after the subsystem is deleted");
    d2.signal(libc::SIGTERM);
    assert_eq!(d2.wait_exit(Duration::from_secs(10)).code(), Some(0));
    std::fs::remove_file(&config).unwrap();
}
