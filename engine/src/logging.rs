//! Log set-up: `tracing` to stderr, filtered by an explicit level or `RUST_LOG`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Install the global subscriber once. `level` (error, warn, info, debug, trace, or a full
/// `RUST_LOG`-style directive) wins over `RUST_LOG`; with neither, `info`.
pub fn init(level: Option<&str>) -> Result<(), String> {
    let filter = match level {
        Some(l) => EnvFilter::try_new(l).map_err(|e| format!("bad log level {l:?}: {e}"))?,
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_thread_names(true)
        .try_init()
        .map_err(|e| e.to_string())
}
