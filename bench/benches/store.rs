//! The store against the bdev beneath it, in the same run:
//! - 4 KiB random read and write on a volume whose clusters are all allocated, at queue depths
//!   1 and 32, against the same on a RAM disk of the same size (criterion; ratios printed), and
//!   at queue depth 32 in alternating rounds, volume then RAM disk, median IOPS and their ratio
//!   (`TANDEM_BENCH_SECS`, `TANDEM_BENCH_ROUNDS`): the figure to quote, as it is least moved by
//!   drift in a shared machine;
//! - first writes: filling a new volume with 64 KiB writes, every one allocating a cluster
//!   (and committing), against the same writes on a RAM disk (MB/s and ratio);
//! - snapshot creation on a store holding a 1 GiB volume and on one holding a 1 TiB sparse
//!   volume, each with 1,000 clusters written (criterion; ratio, which O(1) makes ~1);
//! - `block_diff` of 1,000 changed clusters in the same two volumes (criterion; ratio ~1).
//!
//! `cargo bench -p tandem-bench --bench store`

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use tandem::bdev::{self, malloc, IoDone, IoType};
use tandem::mem::{DmaBuf, Sgl};
use tandem::reactor::Reactor;
use tandem::store::{CreateOpts, Store};
use tandem_bench::io_job::{random_4k_group, Job};

const GIB: u64 = 1 << 30;
const CLUSTER: u32 = 65536;

fn ram(name: &str, bytes: u64) {
    malloc::create(malloc::MallocOpts {
        name: name.into(),
        num_blocks: bytes / 4096,
        block_size: 4096,
        uuid: 0,
    })
    .unwrap();
}

/// Write `bytes` sequentially in 64 KiB writes, 32 in flight, on the bench reactor; seconds.
fn fill(reactor: &Reactor, name: &str, bytes: u64) -> f64 {
    let io = 65536u64;
    let total = bytes / io;
    let next = Rc::new(Cell::new(0u64));
    let done = Rc::new(Cell::new(0u64));
    let errors = Rc::new(Cell::new(0u64));
    let start = Instant::now();
    reactor.enter(|| {
        let desc = bdev::open(name, true, None).unwrap();
        let ch = Rc::new(desc.channel().unwrap());
        std::mem::forget(desc);
        fn submit(
            ch: Rc<bdev::Channel>,
            sgl: Sgl,
            next: Rc<Cell<u64>>,
            done: Rc<Cell<u64>>,
            errors: Rc<Cell<u64>>,
            total: u64,
        ) {
            let i = next.get();
            if i >= total {
                return;
            }
            next.set(i + 1);
            let c2 = Rc::clone(&ch);
            ch.write(i * 16, 16, sgl, move |d: IoDone| {
                if d.status.is_err() {
                    errors.set(errors.get() + 1);
                }
                done.set(done.get() + 1);
                submit(c2, d.sgl, next, done, errors, total);
            })
            .map_err(|(e, _)| e)
            .unwrap();
        }
        for _ in 0..32 {
            let mut b = DmaBuf::new(io as usize).unwrap();
            b.as_mut_slice().fill(0x5a);
            submit(
                Rc::clone(&ch),
                Sgl::single(b),
                next.clone(),
                done.clone(),
                errors.clone(),
                total,
            );
        }
    });
    while done.get() < total {
        reactor.poll();
    }
    assert_eq!(errors.get(), 0);
    start.elapsed().as_secs_f64()
}

/// I/Os per second of `job` at `depth` for about `secs`.
fn iops(reactor: &Reactor, job: &Rc<Job>, depth: usize, secs: f64) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        job.run(reactor, depth, 20_000);
        n += 20_000;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// Alternate the volume and the RAM disk beneath, round by round, so drift in the machine
/// lands on both; print the median IOPS of each and their ratio.
fn alternate(reactor: &Reactor, volume: &str) {
    let (secs, rounds) = tandem_bench::run_shape(2);
    println!("\n== volume / RAM disk beneath, 4 KiB, qd 32, {rounds} alternating rounds of {secs} s: median IOPS ==");
    for (io_type, kind) in [(IoType::Read, "randread"), (IoType::Write, "randwrite")] {
        let job = |name: &str| Job::open(reactor, name, io_type, 4096);
        let (vj, rj) = (job(volume), job("Raw0"));
        let (mut v, mut r) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            v.push(iops(reactor, &vj, 32, secs as f64));
            r.push(iops(reactor, &rj, 32, secs as f64));
        }
        let (v, r) = (tandem_bench::median(v), tandem_bench::median(r));
        println!(
            "{kind:<10} volume {v:>10.0}   RAM disk {r:>10.0}   ratio {:.2}",
            v / r
        );
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    // The stores' owner is a reactor of its own (it commits while the bench reactor drives I/O).
    let (engine, owner, reactor) = tandem_bench::owner_and_caller("bench");
    let m = engine.messenger();

    // ---- data path: a fully allocated 1 GiB volume against a 1 GiB RAM disk ----
    ram("Raw0", GIB);
    ram("Base0", GIB + 64 * (1 << 20));
    let store = Store::create(
        &CreateOpts {
            base: "Base0".into(),
            name: "bench".into(),
            cluster_size: CLUSTER,
        },
        &m,
        owner,
    )
    .unwrap();
    let vol = store.create_volume("v", GIB, false).unwrap();
    let vol_fill = fill(&reactor, vol.name(), GIB);
    let raw_fill = fill(&reactor, "Raw0", GIB);
    alternate(&reactor, vol.name());
    for (name, label) in [("Raw0", "raw"), (vol.name(), "volume")] {
        random_4k_group(
            &mut c,
            &format!("store_4k_{label}"),
            &reactor,
            name,
            &[1, 32],
        );
    }

    // ---- metadata: snapshots and diffs on a 1 GiB and a 1 TiB sparse volume ----
    let mut stores = Vec::new();
    for (label, size) in [("1g", GIB), ("1t", 1u64 << 40)] {
        let base = format!("Meta_{label}");
        ram(&base, 256 << 20);
        let s = Store::create(
            &CreateOpts {
                base: base.clone(),
                name: format!("meta_{label}"),
                cluster_size: CLUSTER,
            },
            &m,
            owner,
        )
        .unwrap();
        let v = s.create_volume("v", size, false).unwrap();
        // 1,000 clusters spread over the whole volume.
        let clusters = size / CLUSTER as u64;
        let blocks_per_cluster = CLUSTER as u64 / 4096;
        // Writes 1,000 clusters spread over the volume and waits for them (each a first write,
        // answered by the owner once committed).
        let write_spread = |offset: u64| {
            let done = Rc::new(Cell::new(0u32));
            let name = v.name().to_owned();
            reactor.enter(|| {
                let desc = bdev::open(&name, true, None).unwrap();
                let ch = desc.channel().unwrap();
                std::mem::forget(desc);
                for i in 0..1000 {
                    let idx = i * (clusters / 1000) + offset;
                    let done = Rc::clone(&done);
                    ch.write(
                        idx * blocks_per_cluster,
                        1,
                        Sgl::single(DmaBuf::new(4096).unwrap()),
                        move |d| {
                            assert!(d.is_ok());
                            done.set(done.get() + 1);
                        },
                    )
                    .map_err(|(e, _)| e)
                    .unwrap();
                }
            });
            while done.get() < 1000 {
                reactor.poll();
            }
        };
        write_spread(0);
        s.snapshot("base", None).unwrap();
        write_spread(1);
        assert_eq!(
            s.block_diff(Some("base"), None, "v").unwrap().runs.len(),
            1000
        );
        stores.push((label, s));
    }
    let mut g = c.benchmark_group("store_meta");
    g.sample_size(20)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500));
    for (label, s) in &stores {
        let n = Cell::new(0u64);
        g.bench_function(BenchmarkId::new("snapshot", label), |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let name = format!("s{}", n.get());
                    n.set(n.get() + 1);
                    let t = Instant::now();
                    s.snapshot(&name, None).unwrap();
                    spent += t.elapsed();
                    s.delete_snapshot(&name).unwrap();
                }
                spent
            })
        });
        g.bench_function(BenchmarkId::new("block_diff_1000", label), |b| {
            b.iter(|| {
                assert_eq!(
                    s.block_diff(Some("base"), None, "v").unwrap().runs.len(),
                    1000
                )
            })
        });
    }
    g.finish();
    c.final_summary();

    tandem_bench::print_ratios(
        "volume (all clusters allocated) / RAM disk beneath",
        &[
            ("store_4k_volume/randread/qd1", "store_4k_raw/randread/qd1"),
            (
                "store_4k_volume/randread/qd32",
                "store_4k_raw/randread/qd32",
            ),
            (
                "store_4k_volume/randwrite/qd1",
                "store_4k_raw/randwrite/qd1",
            ),
            (
                "store_4k_volume/randwrite/qd32",
                "store_4k_raw/randwrite/qd32",
            ),
        ],
    );
    tandem_bench::print_ratios(
        "1 TiB sparse volume / 1 GiB volume (O(1) snapshots, diffs that follow the change)",
        &[
            ("store_meta/snapshot/1t", "store_meta/snapshot/1g"),
            (
                "store_meta/block_diff_1000/1t",
                "store_meta/block_diff_1000/1g",
            ),
        ],
    );
    println!(
        "\n== first writes: 1 GiB in 64 KiB writes, qd 32 ==\nvolume (allocating) {:>8.0} MB/s   RAM disk {:>8.0} MB/s   throughput ratio {:.2}",
        GIB as f64 / vol_fill / 1e6,
        GIB as f64 / raw_fill / 1e6,
        raw_fill / vol_fill
    );
    drop(reactor);
    for (_, s) in stores {
        s.destroy().unwrap();
    }
    store.destroy().unwrap();
    engine.stop().unwrap();
}
