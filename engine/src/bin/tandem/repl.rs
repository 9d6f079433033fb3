//! `tandem repl`: replication relationships of a running tandemd, through its `repl_*`
//! methods, with a live progress bar for transfers and resyncs.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Subcommand;
use serde_json::{json, Value};
use tandem::rpc::client;

#[derive(Subcommand, Debug)]
pub enum ReplCommand {
    /// Pair a primary volume here with a secondary volume (Uninitialized until `start`).
    Create {
        name: String,
        /// The primary volume's bdev, <store>/<volume>.
        #[arg(long)]
        primary: String,
        /// The bdev here that reaches the secondary volume (bdev_nvme_attach_controller's).
        #[arg(long)]
        secondary_bdev: String,
        /// The secondary volume as its own tandemd names it, <store>/<volume>.
        #[arg(long)]
        secondary_volume: String,
        /// The secondary tandemd's RPC socket (snapshots there); absent: the same tandemd.
        #[arg(long)]
        secondary_rpc: Option<PathBuf>,
        /// sync or strict_sync.
        #[arg(long, default_value = "sync")]
        policy: String,
        /// Bytes per dirty region (a power of two, 64 KiB to 1 MiB).
        #[arg(long)]
        region_size: Option<u64>,
        /// The transfers' and the scanner's rate limit.
        #[arg(long)]
        rate_mib_per_sec: Option<u64>,
    },
    /// Start: baseline, incrementals, establishing, in sync. `--wait` shows the progress.
    Start {
        name: String,
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this many seconds.
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
    },
    /// The relationship's state, progress and counters (all of them without a name).
    Get {
        name: Option<String>,
    },
    /// Show the progress until the relationship is in sync (or `--until` another state).
    Watch {
        name: String,
        #[arg(long, default_value = "in_sync")]
        until: String,
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
    },
    /// Stop splitting at a snapshot common to both sides.
    Quiesce {
        name: String,
    },
    Resume {
        name: String,
    },
    /// Make the secondary writable (failover): nothing replicates until a resync.
    Break {
        name: String,
    },
    Resync {
        name: String,
    },
    Delete {
        name: String,
    },
}

const TIMEOUT: Duration = Duration::from_secs(600);

fn call(socket: &Path, method: &str, params: Value) -> Result<Value, String> {
    client::call(socket, method, &params, TIMEOUT).map_err(|e| format!("{method}: {e}"))
}

pub fn run(socket: &Path, cmd: ReplCommand) -> ExitCode {
    let r = match cmd {
        ReplCommand::Create {
            name,
            primary,
            secondary_bdev,
            secondary_volume,
            secondary_rpc,
            policy,
            region_size,
            rate_mib_per_sec,
        } => {
            let mut p = json!({
                "name": name,
                "primary": primary,
                "secondary_bdev": secondary_bdev,
                "secondary_volume": secondary_volume,
                "policy": policy,
            });
            if let Some(s) = secondary_rpc {
                p["secondary_rpc"] = json!(s);
            }
            if let Some(r) = region_size {
                p["region_size"] = json!(r);
            }
            if let Some(r) = rate_mib_per_sec {
                p["rate_mib_per_sec"] = json!(r);
            }
            call(socket, "repl_create", p).map(print)
        }
        ReplCommand::Start {
            name,
            wait,
            timeout,
        } => call(socket, "repl_start", json!({"name": name})).and_then(|_| {
            if wait {
                watch(socket, &name, "in_sync", Duration::from_secs(timeout))
            } else {
                Ok(())
            }
        }),
        ReplCommand::Get { name } => {
            let p = name.map_or(Value::Null, |n| json!({"name": n}));
            call(socket, "repl_get", p).map(print)
        }
        ReplCommand::Watch {
            name,
            until,
            timeout,
        } => watch(socket, &name, &until, Duration::from_secs(timeout)),
        ReplCommand::Quiesce { name } => {
            call(socket, "repl_quiesce", json!({"name": name})).map(print)
        }
        ReplCommand::Resume { name } => {
            call(socket, "repl_resume", json!({"name": name})).map(print)
        }
        ReplCommand::Break { name } => call(socket, "repl_break", json!({"name": name})).map(print),
        ReplCommand::Resync { name } => {
            call(socket, "repl_resync", json!({"name": name})).map(print)
        }
        ReplCommand::Delete { name } => {
            call(socket, "repl_delete", json!({"name": name})).map(print)
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tandem repl: {e}");
            ExitCode::from(1)
        }
    }
}

fn print(v: Value) {
    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
}

/// Redraw one progress line (a terminal) or print one a second (a pipe) until the state is
/// `until`.
fn watch(socket: &Path, name: &str, until: &str, timeout: Duration) -> Result<(), String> {
    let tty = std::io::stderr().is_terminal();
    let t0 = Instant::now();
    let mut last_print = None::<Instant>;
    loop {
        let v = call(socket, "repl_get", json!({"name": name}))?;
        let state = v["state"].as_str().unwrap_or("?").to_owned();
        let line = progress_line(&v);
        let done = state == until;
        if tty {
            eprint!("\r\x1b[2K{line}");
            if done {
                eprintln!();
            }
        } else if done || last_print.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            eprintln!("{line}");
            last_print = Some(Instant::now());
        }
        let _ = std::io::stderr().flush();
        if done {
            return Ok(());
        }
        if t0.elapsed() > timeout {
            return Err(format!("{name} is {state}, not {until}, after {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(if tty { 200 } else { 100 }));
    }
}

/// `name  state  [#####.....]  42.0%  120.5 MiB/s  eta 3s  dirty 1.2 MiB`
pub fn progress_line(v: &Value) -> String {
    let pct = v["progress_percent"]
        .as_f64()
        .unwrap_or(0.0)
        .clamp(0.0, 100.0);
    let width = 30;
    let filled = ((pct / 100.0) * width as f64).round() as usize;
    let bar: String = "#".repeat(filled) + &".".repeat(width - filled);
    let mib = |b: f64| b / (1 << 20) as f64;
    let eta = v["eta_seconds"]
        .as_f64()
        .map_or("eta -".to_owned(), |e| format!("eta {e:.0}s"));
    format!(
        "{}  {:<12} [{bar}] {pct:5.1}%  {:8.1} MiB/s  {eta}  dirty {:.1} MiB  sent {:.1} MiB",
        v["name"].as_str().unwrap_or("?"),
        v["state"].as_str().unwrap_or("?"),
        mib(v["rate_bytes_per_sec"].as_f64().unwrap_or(0.0)),
        mib(v["dirty_bytes"].as_f64().unwrap_or(0.0)),
        mib(v["bytes_transferred"].as_f64().unwrap_or(0.0)
            + v["resynced_bytes"].as_f64().unwrap_or(0.0)),
    )
}
