//! tandemd: the Tandem daemon. Starts one reactor per core of the mask, replays the start-up
//! config, answers JSON-RPC on its Unix socket, and serves until SIGINT or SIGTERM; then it
//! stops the reactors cleanly (each runs the messages already queued).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tandem::reactor::{CoreMask, Engine, EngineOpts, Mode};

/// Exit status for bad usage: an unknown flag, a bad core mask, an unreadable config.
const EXIT_USAGE: u8 = 2;

#[derive(Parser, Debug)]
#[command(name = "tandemd", version = tandem::VERSION, about = "The Tandem storage engine daemon")]
struct Args {
    /// Core mask, as SPDK takes it: 0x3, [0,1], 0-1.
    #[arg(short = 'm', long = "cpumask", default_value = "0x1", value_parser = CoreMask::parse)]
    cpumask: CoreMask,
    /// poll: reactors spin (deployment). adaptive: they park when idle (tests, laptops, CI).
    #[arg(long, default_value = "adaptive")]
    mode: Mode,
    /// JSON-RPC Unix socket.
    #[arg(
        short = 'r',
        long = "rpc-socket",
        default_value = "/var/tmp/tandem.sock"
    )]
    rpc_socket: PathBuf,
    /// Start-up configuration (JSON, in the shape of SPDK's save_config output).
    #[arg(short = 'c', long = "config")]
    config: Option<PathBuf>,
    /// Without --config: the size in MiB of the default RAM-backed namespace.
    #[arg(long = "default-ns-size", default_value_t = 1024, value_name = "MiB")]
    default_ns_size: u64,
    /// Without --config: where the default subsystem listens (IPv4 address:port).
    #[arg(long = "listen", default_value = "127.0.0.1:4420")]
    listen: std::net::SocketAddrV4,
    /// Start with nothing configured, even without --config.
    #[arg(long = "no-default")]
    no_default: bool,
    /// Log level (error, warn, info, debug, trace) or a RUST_LOG-style directive; default info
    /// or RUST_LOG.
    #[arg(short = 'L', long = "log-level")]
    log_level: Option<String>,
}

fn usage_error(line: impl std::fmt::Display) -> ExitCode {
    eprintln!("tandemd: {line}");
    ExitCode::from(EXIT_USAGE)
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or("bad arguments");
            return usage_error(first.trim_start_matches("error: "));
        }
    };
    if let Err(e) = tandem::logging::init(args.log_level.as_deref()) {
        return usage_error(e);
    }
    if let Err(e) = args.cpumask.check_present() {
        return usage_error(e);
    }
    let calls = match &args.config {
        Some(path) => match tandem::config::load(path) {
            Ok(calls) => calls,
            Err(e) => return usage_error(e),
        },
        None if args.no_default => Vec::new(),
        None => default_config(&args),
    };

    // Block the stop signals before any thread exists, so every reactor inherits the mask and
    // only the main thread's sigwait sees them.
    let signals = stop_signals();
    block(&signals);

    let engine = match Engine::start(EngineOpts {
        core_mask: Some(args.cpumask.clone()),
        mode: args.mode,
        ..EngineOpts::default()
    }) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("tandemd: {e}");
            return ExitCode::FAILURE;
        }
    };
    tandem::nvmf::target::attach(engine.messenger());
    // The start-up config is replayed through the RPC methods, in order, before the server
    // listens: what save_config wrote comes back as it was.
    if let Err((method, e)) = tandem::rpc::replay(&calls) {
        eprintln!(
            "tandemd: config {}: {method}: {}",
            args.config
                .as_ref()
                .map_or(String::new(), |p| p.display().to_string()),
            e.message
        );
        let _ = engine.stop();
        return ExitCode::from(EXIT_USAGE);
    }
    let server = match tandem::rpc::Server::start(&args.rpc_socket) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tandemd: RPC socket {}: {e}", args.rpc_socket.display());
            let _ = engine.stop();
            return ExitCode::from(EXIT_USAGE);
        }
    };
    tracing::info!(
        cores = %args.cpumask,
        mode = ?args.mode,
        rpc = %args.rpc_socket.display(),
        config_calls = calls.len(),
        "tandemd {} started: {} reactors",
        tandem::VERSION,
        engine.reactor_ids().len()
    );
    let signal = wait(&signals);
    tracing::info!(signal, "stopping");
    drop(server);
    match engine.stop() {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("stop: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What tandemd serves with no config: a RAM disk as the one namespace of a subsystem that any
/// host may use, on one TCP listener. Made through the same RPC methods as any config.
fn default_config(args: &Args) -> Vec<tandem::config::ConfigCall> {
    use serde_json::json;
    const BLOCK: u64 = 512;
    let nqn = tandem::nvmf::DEFAULT_SUBNQN;
    let call = |method: &str, params| tandem::config::ConfigCall {
        subsystem: "default".into(),
        method: method.into(),
        params,
    };
    vec![
        call(
            "bdev_malloc_create",
            json!({ "name": "Malloc0", "num_blocks": args.default_ns_size * 1024 * 1024 / BLOCK,
                    "block_size": BLOCK }),
        ),
        call("nvmf_create_transport", json!({ "trtype": "TCP" })),
        call(
            "nvmf_create_subsystem",
            json!({ "nqn": nqn, "allow_any_host": true, "serial_number": "TANDEM0000000001" }),
        ),
        call(
            "nvmf_subsystem_add_ns",
            json!({ "nqn": nqn, "namespace": { "bdev_name": "Malloc0" } }),
        ),
        call(
            "nvmf_subsystem_add_listener",
            json!({ "nqn": nqn, "listen_address": { "trtype": "TCP", "adrfam": "IPv4",
                    "traddr": args.listen.ip().to_string(), "trsvcid": args.listen.port().to_string() } }),
        ),
    ]
}

fn stop_signals() -> libc::sigset_t {
    // SAFETY: a zeroed sigset_t is valid storage; sigemptyset/sigaddset initialise it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        set
    }
}

fn block(set: &libc::sigset_t) {
    // SAFETY: `set` is an initialised sigset_t; the old-mask pointer may be null.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, set, std::ptr::null_mut()) };
}

fn wait(set: &libc::sigset_t) -> i32 {
    let mut sig: libc::c_int = 0;
    loop {
        // SAFETY: `set` is initialised and blocked in this thread; `sig` is writable.
        if unsafe { libc::sigwait(set, &mut sig) } == 0 {
            return sig;
        }
    }
}
