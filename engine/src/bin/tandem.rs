//! tandem: the command-line tool. `tandem rpc` calls a running tandemd's JSON-RPC methods;
//! later issues add `perf`, `store` and replication commands.

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
