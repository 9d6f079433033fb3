//! tandem: the command-line tool. `tandem rpc` calls a running tandemd's JSON-RPC methods;
//! `tandem perf` drives any NVMe/TCP target, as spdk_nvme_perf does.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tandem::reactor::CoreMask;

#[derive(Parser, Debug)]
#[command(name = "tandem", version = tandem::VERSION, about = "The Tandem command-line tool")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the engine version.
    Version,
    /// Call a JSON-RPC method of a running tandemd and print its result.
    Rpc {
        /// tandemd's RPC socket.
        #[arg(short = 's', long = "socket", default_value = "/var/tmp/tandem.sock")]
        socket: std::path::PathBuf,
        /// The method, e.g. bdev_get_bdevs.
        method: String,
        /// Parameters as a JSON object, e.g. '{"name": "Malloc0"}'.
        params: Option<String>,
    },
    /// Drive an NVMe/TCP target: IOPS, bandwidth and latency, as spdk_nvme_perf reports them.
    Perf {
        /// Transport ID: 'trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:4420 subnqn:NQN [ns:N]'.
        #[arg(short = 'r', long = "transport")]
        trid: String,
        /// Commands in flight per core.
        #[arg(short = 'q', long = "queue-depth", default_value_t = 32)]
        queue_depth: usize,
        /// Bytes per I/O.
        #[arg(short = 'o', long = "io-size", default_value_t = 4096)]
        io_size: usize,
        /// read, write, randread, randwrite, rw or randrw.
        #[arg(short = 'w', long = "workload", value_parser = tandem::perf::Pattern::parse)]
        pattern: tandem::perf::Pattern,
        /// Percentage of reads for rw and randrw.
        #[arg(short = 'M', long = "rwmixread", default_value_t = 50)]
        read_pct: u8,
        /// Seconds to run.
        #[arg(short = 't', long = "time", default_value_t = 10.0)]
        time: f64,
        /// Cores to run on, one job and one I/O queue each (a core mask as tandemd takes it).
        #[arg(short = 'c', long = "core-mask", default_value = "0x1", value_parser = CoreMask::parse)]
        cores: CoreMask,
        /// Write a pattern to each block, read it back and check it.
        #[arg(long)]
        verify: bool,
        /// Header digest.
        #[arg(short = 'H', long = "hdgst")]
        header_digest: bool,
        /// Data digest.
        #[arg(short = 'I', long = "ddgst")]
        data_digest: bool,
        /// poll (the default: reactors spin, as spdk_nvme_perf does) or adaptive.
        #[arg(long, default_value = "poll")]
        mode: tandem::reactor::Mode,
        /// Print the results as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the cores a mask selects, and whether this machine has them.
    Cores {
        /// 0x3, [0,1], 0-1
        mask: String,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match cli.command {
        Command::Version => {
            println!("tandem {}", tandem::VERSION);
            ExitCode::SUCCESS
        }
        Command::Rpc {
            socket,
            method,
            params,
        } => rpc(&socket, &method, params.as_deref()),
        Command::Perf {
            trid,
            queue_depth,
            io_size,
            pattern,
            read_pct,
            time,
            cores,
            verify,
            header_digest,
            data_digest,
            mode,
            json,
        } => {
            let trid = match tandem::perf::trid::parse(&trid) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("tandem perf: -r: {e}");
                    return ExitCode::from(2);
                }
            };
            if read_pct > 100 || !time.is_finite() || time <= 0.0 || queue_depth == 0 {
                eprintln!("tandem perf: -M is 0 to 100, -t and -q above 0");
                return ExitCode::from(2);
            }
            let opts = tandem::perf::PerfOpts {
                trid,
                queue_depth,
                io_size,
                pattern,
                read_pct,
                time: std::time::Duration::from_secs_f64(time),
                cores,
                mode,
                verify,
                header_digest,
                data_digest,
            };
            match tandem::perf::run(&opts) {
                Ok(r) => {
                    if json {
                        println!(
                            "{}",
                            serde_json::to_string_pretty(&r.json()).unwrap_or_default()
                        );
                    } else {
                        print!("{}", r.table());
                    }
                    if r.total.errors == 0 && r.total.mismatches == 0 {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    }
                }
                Err(e) => {
                    eprintln!("tandem perf: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Cores { mask } => {
            match CoreMask::parse(&mask).and_then(|m| m.check_present().map(|()| m)) {
                Ok(m) => {
                    println!("{m}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("tandem: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

fn rpc(socket: &std::path::Path, method: &str, params: Option<&str>) -> ExitCode {
    use std::io::Write;
    let params: serde_json::Value = match params.map(serde_json::from_str).transpose() {
        Ok(p) => p.unwrap_or(serde_json::Value::Null),
        Err(e) => {
            eprintln!("tandem: params are not JSON: {e}");
            return ExitCode::from(2);
        }
    };
    let mut req = serde_json::json!({"jsonrpc": "2.0", "method": method, "id": 1});
    if !params.is_null() {
        req["params"] = params;
    }
    let mut stream = match std::os::unix::net::UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tandem: {}: {e}", socket.display());
            return ExitCode::from(1);
        }
    };
    if let Err(e) = stream.write_all(req.to_string().as_bytes()) {
        eprintln!("tandem: send: {e}");
        return ExitCode::from(1);
    }
    let reply = serde_json::Deserializer::from_reader(&stream)
        .into_iter::<serde_json::Value>()
        .next();
    match reply {
        Some(Ok(v)) => match (v.get("result"), v.get("error")) {
            (Some(r), _) => {
                println!("{}", serde_json::to_string_pretty(r).unwrap_or_default());
                ExitCode::SUCCESS
            }
            (_, Some(e)) => {
                eprintln!(
                    "tandem: {method}: {} (code {})",
                    e["message"].as_str().unwrap_or("error"),
                    e["code"]
                );
                ExitCode::from(1)
            }
            _ => {
                eprintln!("tandem: a reply with neither result nor error: {v}");
                ExitCode::from(1)
            }
        },
        Some(Err(e)) => {
            eprintln!("tandem: reply is not JSON: {e}");
            ExitCode::from(1)
        }
        None => {
            eprintln!("tandem: tandemd closed the connection without a reply");
            ExitCode::from(1)
        }
    }
}
