//! tandemd as a process: start, stop by signal, refuse bad arguments with one line and 2.

use std::time::Duration;

use tandem_tests::{run_tandemd, Daemon};

const START: Duration = Duration::from_secs(10);

fn first_core_mask() -> String {
    let core = tandem::reactor::available_cores()[0];
    format!("[{core}]")
}

#[test]
fn stops_cleanly_on_sigterm_and_sigint() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let mask = first_core_mask();
        let mut d = Daemon::spawn(&[
            "-m",
            &mask,
            "--mode",
            "adaptive",
            "-r",
            "/tmp/tandem-test-unused.sock",
            "--no-default",
        ]);
        let started = d.wait_for("started", START);
        assert!(started.contains("1 reactors"), "{started}");
        d.signal(sig);
        let status = d.wait_exit(Duration::from_secs(10));
        assert_eq!(
            status.code(),
            Some(0),
            "signal {sig}; log:\n{}",
            d.log.join("\n")
        );
        assert!(d.log.iter().any(|l| l.contains("stopped")), "{:?}", d.log);
    }
}

#[test]
fn starts_one_reactor_per_core_of_the_mask_in_poll_mode() {
    let cores = tandem::reactor::available_cores();
    let mask = format!("{}-{}", cores[0], cores[cores.len().min(2) - 1]);
    let mut d = Daemon::spawn(&["-m", &mask, "--mode", "poll", "--no-default"]);
    let line = d.wait_for("started", START);
    assert!(
        line.contains(&format!("{} reactors", cores.len().min(2))),
        "{line}"
    );
    assert!(line.contains("Poll"), "{line}");
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(10)).code(), Some(0));
}

#[test]
fn bad_arguments_give_one_line_and_status_2() {
    let missing_core = format!("[{}]", tandem::reactor::MAX_CORE);
    let cases: &[(&[&str], &str)] = &[
        (&["--no-such-flag"], "unexpected argument '--no-such-flag'"),
        (&["-m", &missing_core], "core 1023 is not available"),
        (&["-m", "0xZ"], "bad core mask"),
        (&["--mode", "turbo"], "unknown mode"),
        (
            &["--config", "/nonexistent/tandem.json"],
            "config /nonexistent/tandem.json",
        ),
    ];
    for (args, needle) in cases {
        let (code, stderr) = run_tandemd(args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert_eq!(
            stderr.lines().count(),
            1,
            "{args:?} printed more than one line: {stderr}"
        );
        assert!(
            stderr.starts_with("tandemd: ") && stderr.contains(needle),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn a_malformed_config_is_refused_and_a_good_one_is_read() {
    let dir = std::env::temp_dir().join(format!("tandemd-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.json");
    std::fs::write(&bad, r#"{"subsystems": [{"subsystem": "bdevv"}]}"#).unwrap();
    let (code, stderr) = run_tandemd(&["--config", bad.to_str().unwrap()]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("unknown subsystem \"bdevv\""), "{stderr}");

    let good = dir.join("good.json");
    std::fs::write(
        &good,
        r#"{"subsystems": [{"subsystem": "bdev", "config": [{"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": 2048, "block_size": 512}}]}]}"#,
    )
    .unwrap();
    let mask = first_core_mask();
    let mut d = Daemon::spawn(&["-m", &mask, "--config", good.to_str().unwrap()]);
    let line = d.wait_for("started", START);
    assert!(line.contains("config_calls=1"), "{line}");
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(10)).code(), Some(0));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn without_a_config_it_serves_a_ram_namespace_to_any_host() {
    let port = tandem_tests::free_port();
    let sock = format!("/tmp/tandem-default-{}.sock", std::process::id());
    let mut d = tandem_tests::serve_default(port, &sock, false, &[]);
    let subs = tandem_tests::rpc(&sock, "nvmf_get_subsystems", serde_json::json!({})).unwrap();
    let sub = &subs[1];
    assert_eq!(sub["nqn"], tandem::nvmf::DEFAULT_SUBNQN);
    assert_eq!(sub["allow_any_host"], true);
    assert_eq!(sub["listen_addresses"][0]["traddr"], "127.0.0.1");
    assert_eq!(sub["listen_addresses"][0]["trsvcid"], port.to_string());
    let bdevs = tandem_tests::rpc(&sock, "bdev_get_bdevs", serde_json::json!({})).unwrap();
    assert_eq!(
        bdevs[0]["num_blocks"].as_u64().unwrap() * bdevs[0]["block_size"].as_u64().unwrap(),
        64 << 20,
        "--default-ns-size is in MiB"
    );
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(10)).code(), Some(0));
}
