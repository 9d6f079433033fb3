//! Shared by the benchmarks: Tandem/baseline ratios printed after criterion's report, taken
//! from criterion's own estimates of the same run (`target/criterion/<id>/new/estimates.json`),
//! so the ratio matches the figures criterion printed just above it.

use std::path::PathBuf;

/// The build's `target` directory: `$CARGO_TARGET_DIR`, else the one holding this benchmark
/// executable (`target/<profile>/deps/<bench>`). Criterion keeps its estimates there, and the
/// benchmarks their files.
pub fn target_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("benchmark executable path");
    exe.ancestors()
        .nth(3)
        .expect("target/<profile>/deps/<bench>")
        .to_path_buf()
}

fn criterion_dir() -> PathBuf {
    target_dir().join("criterion")
}

/// Criterion's estimate (slope, else mean) of nanoseconds per iteration for benchmark `id` (`group/function[/parameter]`) in this run.
pub fn estimate_ns(id: &str) -> Option<f64> {
    let path = criterion_dir().join(id).join("new").join("estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    // The file is small and flat: find "mean": {... "point_estimate": N
    // Criterion prints the slope for linear sampling; the mean otherwise (slope is null).
    let key = if text.contains("\"slope\":{") {
        "\"slope\""
    } else {
        "\"mean\""
    };
    let after_key = &text[text.find(key)?..];
    let after_point = &after_key[after_key.find("\"point_estimate\"")? + 16..];
    let number: String = after_point
        .trim_start_matches([':', ' '])
        .chars()
        .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '-' | '+'))
        .collect();
    number.parse::<f64>().ok()
}

/// Print `tandem / baseline` for each pair; below 1.0 means Tandem took less time per operation.
pub fn print_ratios(title: &str, pairs: &[(&str, &str)]) {
    println!(
        "\n== {title}: time per operation (criterion estimate), Tandem / baseline, same run =="
    );
    for (tandem, baseline) in pairs {
        match (estimate_ns(tandem), estimate_ns(baseline)) {
            (Some(t), Some(b)) => println!(
                "{tandem:<48} {:>10.2} ns   {baseline:<44} {:>10.2} ns   ratio {:.2}",
                t,
                b,
                t / b
            ),
            _ => println!("{tandem}: not measured in this run (filtered out?)"),
        }
    }
}

pub mod io_job;

/// For the tool-style benchmarks (alternating rounds, medians): (seconds per run, rounds).
/// `cargo test --benches` runs them without `--bench`: one short pass as a smoke test.
pub fn run_shape(default_secs: u64) -> (u64, u64) {
    if !std::env::args().any(|a| a == "--bench") {
        return (1, 1);
    }
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(d)
    };
    (
        env("TANDEM_BENCH_SECS", default_secs),
        env("TANDEM_BENCH_ROUNDS", 3),
    )
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// An engine of one adaptive reactor on the first available core (the stores' owner: it
/// commits and transfers while the caller drives I/O), and a reactor of the calling thread,
/// named `name`, that the caller polls.
pub fn owner_and_caller(
    name: &str,
) -> (
    tandem::reactor::Engine,
    tandem::reactor::ReactorId,
    tandem::reactor::Reactor,
) {
    use tandem::reactor::{available_cores, CoreMask, Engine, EngineOpts, Mode};
    let engine = Engine::start(EngineOpts {
        core_mask: Some(CoreMask::from_cores([available_cores()[0]]).expect("a core mask")),
        mode: Mode::Adaptive,
        pin: false,
        ..EngineOpts::default()
    })
    .expect("an engine");
    let owner = engine.reactor_ids()[0];
    let caller = engine
        .create_thread(name)
        .expect("a reactor for this thread");
    (engine, owner, caller)
}
