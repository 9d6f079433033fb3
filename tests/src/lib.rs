//! Helpers for the integration tests: real tandemd processes, started from the binary cargo
//! built, watched through their log, and stopped by signal.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The directory cargo puts the workspace's binaries in (beside this test's own executable).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let deps = exe.parent().expect("deps dir");
    deps.parent().expect("profile dir").to_path_buf()
}

pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace first (cargo build --workspace)",
        path.display()
    );
    path
}

/// A running tandemd whose stderr lines arrive on a channel.
pub struct Daemon {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    pub log: Vec<String>,
}

impl Daemon {
    pub fn spawn(args: &[&str]) -> Daemon {
        let mut child = Command::new(bin("tandemd"))
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("TANDEMD_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tandemd");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Daemon {
            child,
            lines: rx,
            log: Vec::new(),
        }
    }

    /// Wait for a log line containing `needle`; panics with the log so far after `timeout`.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.log.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => break,
            }
        }
        panic!(
            "tandemd never logged {needle:?}; log:\n{}",
            self.log.join("\n")
        );
    }

    /// Everything logged so far (for a failing test's message).
    pub fn log_so_far(&mut self) -> String {
        while let Ok(line) = self.lines.try_recv() {
            self.log.push(line);
        }
        self.log.join("\n")
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill takes a pid and a signal number; no memory is shared.
        let ret = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(ret, 0, "kill({sig})");
    }

    /// Wait for the process to exit, at most `timeout`; kills it and panics past that.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Collect what it logged on the way out.
                while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(100)) {
                    self.log.push(line);
                }
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "tandemd did not exit in {timeout:?}; log:\n{}",
                    self.log.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Run tandemd to completion with `args`; (exit code, stderr).
pub fn run_tandemd(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(bin("tandemd"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run tandemd");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub mod nvme_tcp;
pub mod proxy;

/// A TCP port on 127.0.0.1 that nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A tandemd serving its default namespace on 127.0.0.1:`port`, with its RPC socket at
/// `sock`, in adaptive mode on the first core (two reactors when `two_cores`).
pub fn serve_default(port: u16, sock: &str, two_cores: bool, extra: &[&str]) -> Daemon {
    let cores = tandem::reactor::available_cores();
    let mask = if two_cores && cores.len() > 1 {
        format!("[{},{}]", cores[0], cores[1])
    } else {
        format!("[{}]", cores[0])
    };
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec![
        "-m",
        mask.as_str(),
        "--mode",
        "adaptive",
        "-r",
        sock,
        "--listen",
        listen.as_str(),
        "--default-ns-size",
        "64",
    ];
    args.extend_from_slice(extra);
    let mut d = Daemon::spawn(&args);
    d.wait_for("started", Duration::from_secs(20));
    d
}

/// Call a JSON-RPC method on tandemd's socket: the result, or the error's (code, message).
pub fn rpc(
    sock: &str,
    method: &str,
    params: serde_json::Value,
) -> Result<serde_json::Value, (i64, String)> {
    use std::io::Write;
    let mut s = std::os::unix::net::UnixStream::connect(sock).expect("connect to the RPC socket");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let req = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    s.write_all(req.to_string().as_bytes())
        .expect("send the request");
    let reply: serde_json::Value = serde_json::Deserializer::from_reader(&mut s)
        .into_iter()
        .next()
        .expect("a reply")
        .expect("a JSON reply");
    match (reply.get("result"), reply.get("error")) {
        (Some(r), _) => Ok(r.clone()),
        (_, Some(e)) => Err((
            e["code"].as_i64().unwrap_or(0),
            e["message"].as_str().unwrap_or_default().to_owned(),
        )),
        _ => panic!("a reply with neither result nor error: {reply}"),
    }
}

/// A tandemd with nothing configured (`--no-default`), RPC on `sock`, adaptive, first core.
pub fn start_bare(sock: &str, extra: &[&str]) -> Daemon {
    let core = format!("[{}]", tandem::reactor::available_cores()[0]);
    let mut args = vec![
        "-m",
        core.as_str(),
        "--mode",
        "adaptive",
        "-r",
        sock,
        "--no-default",
    ];
    args.extend_from_slice(extra);
    let mut d = Daemon::spawn(&args);
    d.wait_for("started", Duration::from_secs(20));
    d
}

/// Run SPDK's own client (`spdk-rpc`, installed by scripts/setup.sh): (success, stdout,
/// stderr).
pub fn spdk_rpc(sock: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new("spdk-rpc")
        .args(["-s", sock, "-t", "10"])
        .args(args)
        .output()
        .expect("spdk-rpc is installed by scripts/setup.sh (pip install spdk)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
