//! The `uring` bdev against fio on the same 1 GiB file, in the same run: 4 KiB randread and
//! randwrite at queue depth 32, O_DIRECT, one core each (a poll-mode reactor pinned to core 0,
//! fio `--cpus_allowed=0`), buffers from the reactor's pool as the target's requests use. Prints IOPS for both and Tandem/fio; the goal is at least 1.0.
//!
//! `cargo bench -p tandem-bench --bench uring_vs_fio` (TANDEM_BENCH_SECS: seconds per run,
//! default 5; TANDEM_BENCH_ROUNDS: alternating rounds, default 3; the file goes to
//! target/bench-uring.img and is kept for the next run).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tandem::bdev::{self, uring, IoType};
use tandem::reactor::{Engine, EngineOpts};
use tandem_bench::io_job::Job;

const FILE_BYTES: u64 = 1 << 30;
const DEPTH: usize = 32;

fn bench_file() -> PathBuf {
    tandem_bench::target_dir().join("bench-uring.img")
}

/// Make the file once, fully written, so that neither side pays for block allocation.
fn prepare(path: &Path) {
    if std::fs::metadata(path).is_ok_and(|m| m.len() == FILE_BYTES) {
        return;
    }
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0x5Au8; 1 << 20];
    for _ in 0..FILE_BYTES >> 20 {
        f.write_all(&chunk).unwrap();
    }
    f.sync_all().unwrap();
}

fn tandem_iops(path: &Path, io_type: IoType, secs: u64) -> f64 {
    core_affinity::set_for_current(core_affinity::CoreId { id: 0 });
    let engine = Engine::start(EngineOpts::default()).unwrap();
    let reactor = engine.create_thread("bench").unwrap();
    let name = format!("uring_bench_{}", io_type.name());
    uring::create(uring::UringOpts {
        name: name.clone(),
        filename: path.to_str().unwrap().into(),
        block_size: 4096,
        uuid: 0,
    })
    .unwrap();
    let job = reactor.enter(|| {
        let desc = bdev::open(&name, true, None).unwrap();
        let ch = desc.channel().unwrap();
        std::mem::forget(desc);
        Job::new(ch, io_type, 4096)
    });
    // Warm up for a second, then count completions over the measured time.
    for (measure, span) in [
        (false, Duration::from_secs(1)),
        (true, Duration::from_secs(secs)),
    ] {
        let before = bdev::get(&name).unwrap().iostat();
        let start = Instant::now();
        reactor.enter(|| job.start(DEPTH, u64::MAX / 2));
        // A poll-mode reactor: spin, as deployed.
        while start.elapsed() < span {
            reactor.poll();
        }
        let elapsed = start.elapsed();
        // Stop submitting; let the in-flight I/Os finish.
        reactor.enter(|| job.start(0, 0));
        while job.in_flight() > 0 {
            reactor.poll();
        }
        if measure {
            let after = bdev::get(&name).unwrap().iostat();
            let ops = (after.num_read_ops + after.num_write_ops)
                - (before.num_read_ops + before.num_write_ops);
            assert_eq!(job.errors(), 0, "I/O errors during the benchmark");
            drop(reactor);
            bdev::delete(&name).unwrap();
            return ops as f64 / elapsed.as_secs_f64();
        }
    }
    unreachable!()
}

fn fio_iops(path: &Path, rw: &str, secs: u64) -> f64 {
    let out = Command::new("fio")
        .args([
            "--name=fio",
            &format!("--filename={}", path.display()),
            "--ioengine=io_uring",
            "--direct=1",
            &format!("--rw={rw}"),
            "--bs=4k",
            &format!("--iodepth={DEPTH}"),
            "--numjobs=1",
            "--cpus_allowed=0",
            "--ramp_time=1",
            &format!("--runtime={secs}"),
            "--time_based",
            "--output-format=json",
        ])
        .output()
        .expect("fio (Debian's fio package; scripts/setup.sh installs it)");
    assert!(
        out.status.success(),
        "fio failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("fio JSON");
    let side = if rw.contains("read") { "read" } else { "write" };
    v["jobs"][0][side]["iops"]
        .as_f64()
        .expect("fio reported IOPS")
}

fn main() {
    let (secs, rounds) = tandem_bench::run_shape(5);
    let path = bench_file();
    prepare(&path);
    println!(
        "uring bdev vs fio: 4 KiB, QD {DEPTH}, O_DIRECT, one core each, {secs} s per run, \
         {rounds} alternating rounds (medians), file {}",
        path.display()
    );
    println!(
        "{:<10} {:>14} {:>14} {:>8}   per round (tandem/fio)",
        "workload", "tandem IOPS", "fio IOPS", "ratio"
    );
    for (io_type, rw) in [(IoType::Read, "randread"), (IoType::Write, "randwrite")] {
        // Alternate the two so that drift in the machine (this one's disk and vCPUs wander by
        // ±10% between runs) falls on both alike.
        let (mut t, mut f) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            t.push(tandem_iops(&path, io_type, secs));
            f.push(fio_iops(&path, rw, secs));
        }
        let per_round: Vec<String> = t
            .iter()
            .zip(&f)
            .map(|(a, b)| format!("{:.2}", a / b))
            .collect();
        let (tm, fm) = (tandem_bench::median(t), tandem_bench::median(f));
        println!(
            "{rw:<10} {tm:>14.0} {fm:>14.0} {:>8.2}   {}",
            tm / fm,
            per_round.join(" ")
        );
    }
}
