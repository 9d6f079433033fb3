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
            .env("RUST_LOG", "info")
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
