//! Shared by the benchmarks: Tandem/baseline ratios printed after criterion's report, taken
//! from criterion's own estimates of the same run (`target/criterion/<id>/new/estimates.json`),
//! so the ratio matches the figures criterion printed just above it.

use std::path::PathBuf;
use std::time::Duration;

/// Where criterion keeps its estimates: `$CARGO_TARGET_DIR/criterion`, else the `target`
/// directory holding this benchmark executable (`target/release/deps/<bench>`).
fn criterion_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("CARGO_TARGET_DIR") {
        return PathBuf::from(dir).join("criterion");
    }
    let exe = std::env::current_exe().expect("benchmark executable path");
    exe.ancestors()
        .nth(3)
        .expect("target/<profile>/deps/<bench>")
        .join("criterion")
}

/// Criterion's mean estimate for benchmark `id` (`group/function[/parameter]`) in this run.
pub fn mean(id: &str) -> Option<Duration> {
    let path = criterion_dir().join(id).join("new").join("estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    // The file is small and flat: find "mean": {... "point_estimate": N
    let after_mean = &text[text.find("\"mean\"")?..];
    let after_point = &after_mean[after_mean.find("\"point_estimate\"")? + 16..];
    let number: String = after_point
        .trim_start_matches([':', ' '])
        .chars()
        .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '-' | '+'))
        .collect();
    number
        .parse::<f64>()
        .ok()
        .map(|ns| Duration::from_secs_f64(ns / 1e9))
}

/// Print `tandem / baseline` for each pair; below 1.0 means Tandem took less time per operation.
pub fn print_ratios(title: &str, pairs: &[(&str, &str)]) {
    println!("\n== {title}: mean time per operation, Tandem / baseline (criterion estimates, same run) ==");
    for (tandem, baseline) in pairs {
        match (mean(tandem), mean(baseline)) {
            (Some(t), Some(b)) => println!(
                "{tandem:<48} {:>10.1} ns   {baseline:<44} {:>10.1} ns   ratio {:.2}",
                t.as_secs_f64() * 1e9,
                b.as_secs_f64() * 1e9,
                t.as_secs_f64() / b.as_secs_f64()
            ),
            _ => println!("{tandem}: not measured in this run (filtered out?)"),
        }
    }
}
