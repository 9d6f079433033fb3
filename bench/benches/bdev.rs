//! 4 KiB random read and write on one reactor, queue depths 1, 32 and 128, for the `null` and
//! `malloc` bdevs: the cost of the bdev layer itself, with no device under it (null) and with a
//! memory copy (malloc). Criterion reports time per I/O and I/Os per second.
//!
//! `cargo bench -p tandem-bench --bench bdev`

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use tandem::bdev::{self, malloc, null, IoType};
use tandem::reactor::{Engine, EngineOpts};
use tandem_bench::io_job::Job;

const BLOCKS: u64 = 256 * 1024; // 1 GiB of 4 KiB blocks

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let engine = Engine::start(EngineOpts::default()).unwrap();
    let reactor = engine.create_thread("bench").unwrap();
    null::create(null::NullOpts {
        name: "Null0".into(),
        num_blocks: BLOCKS,
        block_size: 4096,
        uuid: 0,
    })
    .unwrap();
    malloc::create(malloc::MallocOpts {
        name: "Malloc0".into(),
        num_blocks: BLOCKS,
        block_size: 4096,
        uuid: 0,
    })
    .unwrap();
    for name in ["Null0", "Malloc0"] {
        let mut g = c.benchmark_group(format!("bdev_4k_{}", name.to_lowercase()));
        g.throughput(Throughput::Elements(1))
            .sample_size(20)
            .measurement_time(Duration::from_secs(2))
            .warm_up_time(Duration::from_millis(500));
        for (io_type, label) in [(IoType::Read, "randread"), (IoType::Write, "randwrite")] {
            for depth in [1usize, 32, 128] {
                let job = reactor.enter(|| {
                    let desc = bdev::open(name, true, None).unwrap();
                    let ch = desc.channel().unwrap();
                    std::mem::forget(desc);
                    Job::new(ch, io_type, 4096)
                });
                g.bench_function(BenchmarkId::new(label, format!("qd{depth}")), |b| {
                    b.iter_custom(|iters| {
                        let start = Instant::now();
                        reactor.enter(|| job.start(depth, iters));
                        while !job.done() {
                            reactor.poll();
                        }
                        start.elapsed()
                    })
                });
                assert_eq!(job.errors(), 0);
            }
        }
        g.finish();
    }
    c.final_summary();
}
