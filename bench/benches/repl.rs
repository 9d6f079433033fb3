//! Synchronous replication against the same work without it, in the same run:
//! - **splitter overhead**: 4 KiB random writes at queue depths 32 and 1 on a replicated
//!   volume and on an unreplicated volume of the same store, in alternating rounds (median
//!   IOPS and mean latency, and their ratios), first with the secondary a second volume in
//!   this process, then with it a volume of a tandemd on loopback (a process of this build,
//!   on the other core, attached through the `nvmf` bdev);
//! - **the splitter's overhead where the medium does its own work**: the same comparison with
//!   both stores on files of this machine's disk through the `uring` bdev (O_DIRECT), the
//!   secondary a volume of a store on a second file;
//! - **the splitter's overhead as a client sees it**: the same comparison through NVMe/TCP,
//!   `tandem perf` against one tandemd that exports both volumes (the secondary a volume of
//!   its own), each process on its own core;
//! - **the dirty region log's cost per write** (criterion): what the splitter does to the log
//!   for a write in sync (`enter`, `admit`, `end_write`), and a claim on its blocks and its
//!   release, each against one atomic add;
//! - **resync**: the secondary failing writes while 4 KiB writes dirty regions, then back:
//!   bytes resynced against bytes dirtied at region granularity, and the resync's throughput
//!   against a plain copy of the same bytes (read the primary, write the secondary, same depth
//!   and size, the same run);
//! - **transfers**: the incremental transfer of 1% of a large sparse volume's data against
//!   its baseline transfer.
//!
//! `cargo bench -p tandem-bench --bench repl` (TANDEM_BENCH_SECS per round, default 2;
//! TANDEM_BENCH_ROUNDS, default 3; TANDEM_BENCH_PARTS, a comma-separated choice of `drl`,
//! `overhead`, `device`, `client`, `resync` and `transfers`, default all).

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::Criterion;
use tandem::bdev::error::{self as ebdev, Action, ErrorOpts, Fault, IoTypes};
use tandem::bdev::{self, malloc, uring, IoDone, IoType};
use tandem::host::HostOpts;
use tandem::mem::{DmaBuf, Sgl};
use tandem::reactor::{available_cores, Messenger, Reactor, ReactorId};
use tandem::repl::drl::{Drl, DEFAULT_REGION};
use tandem::repl::inflight::InFlight;
use tandem::repl::relationship::{self, Config, Relationship, SecondaryControl};
use tandem::repl::state::State;
use tandem::store::{CreateOpts, Store};
use tandem_bench::io_job::Job;

const MIB: u64 = 1 << 20;

/// Whether this run measures `part` (TANDEM_BENCH_PARTS, default all).
fn part(name: &str) -> bool {
    std::env::var("TANDEM_BENCH_PARTS").map_or(true, |v| v.split(',').any(|p| p.trim() == name))
}

/// Whether this is `cargo test --benches` (a smoke pass, debug build): small sizes.
fn smoke() -> bool {
    !std::env::args().any(|a| a == "--bench")
}

/// The replicated volumes' size: 256 MiB, 16 MiB in a smoke pass.
fn vol() -> u64 {
    if smoke() {
        16 * MIB
    } else {
        256 * MIB
    }
}
const CLUSTER: u32 = 65536;
const NQN: &str = "nqn.2016-06.io.tandem:bench-secondary";

fn ram(name: &str, bytes: u64) {
    malloc::create(malloc::MallocOpts {
        name: name.into(),
        num_blocks: bytes / 4096,
        block_size: 4096,
        uuid: 0,
    })
    .unwrap();
}

fn store(m: &Messenger, owner: ReactorId, name: &str, bytes: u64) -> Store {
    let base = format!("{name}_base");
    ram(&base, bytes);
    Store::create(
        &CreateOpts {
            base,
            name: name.into(),
            cluster_size: CLUSTER,
        },
        m,
        owner,
    )
    .unwrap()
}

/// A store `name` on a sparse file of `bytes` in the build's target directory, through the
/// `uring` bdev: the file's path and the store.
fn file_store(
    m: &Messenger,
    owner: ReactorId,
    name: &str,
    bytes: u64,
) -> (std::path::PathBuf, Store) {
    let path = tandem_bench::target_dir().join(format!("bench-repl-{name}.img"));
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(bytes).unwrap();
    drop(f);
    let base = format!("{name}_base");
    uring::create(uring::UringOpts {
        name: base.clone(),
        filename: path.to_str().unwrap().into(),
        block_size: 4096,
        uuid: 0,
    })
    .unwrap();
    let store = Store::create(
        &CreateOpts {
            base,
            name: name.into(),
            cluster_size: CLUSTER,
        },
        m,
        owner,
    )
    .unwrap();
    (path, store)
}

/// Write every block of `name` once (64 KiB writes, 32 in flight), so that later writes
/// allocate nothing.
fn fill(reactor: &Reactor, name: &str) {
    let job = Job::open(reactor, name, IoType::Write, 65536);
    let ios = bdev::get(name).unwrap().size_bytes() / 65536;
    // Random data where the random pass lands; a sequential pass allocates the rest.
    job.run(reactor, 32, ios);
    seq_copy(
        reactor,
        name,
        name,
        0,
        bdev::get(name).unwrap().size_bytes(),
        32,
    );
}

/// Start copying `[off, off + len)` of `src` to `dst` at the same place on the current
/// reactor, in 256 KiB copies, `depth` in flight: a plain copy. `finished` runs once all are
/// done.
fn start_copy(src: &str, dst: &str, off: u64, len: u64, depth: usize, finished: Box<dyn FnOnce()>) {
    struct Copy {
        sc: bdev::Channel,
        dc: bdev::Channel,
        next: Cell<u64>,
        end: u64,
        left: Cell<u64>,
        finished: Cell<Option<Box<dyn FnOnce()>>>,
    }
    fn step(c: Rc<Copy>, sgl: Sgl) {
        let at = c.next.get();
        if at >= c.end {
            return;
        }
        c.next.set(at + 256 * 1024);
        let c2 = Rc::clone(&c);
        c.sc.read(at / 4096, 64, sgl, move |r: IoDone| {
            assert!(r.status.is_ok());
            let c3 = Rc::clone(&c2);
            c2.dc
                .write(at / 4096, 64, r.sgl, move |w: IoDone| {
                    assert!(w.status.is_ok());
                    c3.left.set(c3.left.get() - 1);
                    if c3.left.get() == 0 {
                        if let Some(f) = c3.finished.take() {
                            f();
                        }
                    }
                    step(c3, w.sgl);
                })
                .map_err(|(e, _)| e)
                .unwrap();
        })
        .map_err(|(e, _)| e)
        .unwrap();
    }
    let (s, d) = (
        bdev::open(src, false, None).unwrap(),
        bdev::open(dst, true, None).unwrap(),
    );
    let c = Rc::new(Copy {
        sc: s.channel().unwrap(),
        dc: d.channel().unwrap(),
        next: Cell::new(off),
        end: off + len,
        left: Cell::new(len / (256 * 1024)),
        finished: Cell::new(Some(finished)),
    });
    std::mem::forget((s, d));
    if len == 0 {
        if let Some(f) = c.finished.take() {
            f();
        }
    }
    for _ in 0..depth {
        step(Rc::clone(&c), Sgl::single(DmaBuf::new(256 * 1024).unwrap()));
    }
}

/// A plain copy on the bench thread: seconds.
fn seq_copy(reactor: &Reactor, src: &str, dst: &str, off: u64, len: u64, depth: usize) -> f64 {
    let done = Rc::new(Cell::new(false));
    let start = Instant::now();
    let d2 = Rc::clone(&done);
    reactor.enter(|| start_copy(src, dst, off, len, depth, Box::new(move || d2.set(true))));
    while !done.get() {
        reactor.poll();
    }
    start.elapsed().as_secs_f64()
}

/// A plain copy on reactor `on` (where the relationship's copier runs): seconds.
fn seq_copy_on(m: &Messenger, on: ReactorId, src: &str, dst: &str, len: u64, depth: usize) -> f64 {
    let (tx, rx) = std::sync::mpsc::channel();
    let (src, dst) = (src.to_owned(), dst.to_owned());
    let start = Instant::now();
    m.send(on, move || {
        start_copy(
            &src,
            &dst,
            0,
            len,
            depth,
            Box::new(move || tx.send(()).unwrap()),
        )
    })
    .map_err(|_| "send")
    .unwrap();
    rx.recv_timeout(Duration::from_secs(300)).unwrap();
    start.elapsed().as_secs_f64()
}

/// IOPS of `job` at `depth` for about `secs`.
fn iops(reactor: &Reactor, job: &Rc<Job>, depth: usize, secs: f64) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    let batch = if depth == 1 { 2_000 } else { 20_000 };
    while start.elapsed().as_secs_f64() < secs {
        job.run(reactor, depth, batch);
        n += batch;
    }
    assert_eq!(
        job.errors(),
        0,
        "{:?}",
        relationship::list()
            .iter()
            .map(|r| r.to_json())
            .collect::<Vec<_>>()
    );
    n as f64 / start.elapsed().as_secs_f64()
}

fn wait(rel: &Relationship, want: State, within: Duration) {
    let t = Instant::now();
    while rel.state() != want {
        assert!(
            t.elapsed() < within,
            "{} not {}: {}",
            rel.name(),
            want.name(),
            rel.to_json()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Replicated against unreplicated, alternating rounds: prints medians and ratios. With
/// `alone`, a volume of the secondary's store written by itself in the same rounds, it also
/// splits a replicated write's time on this reactor into the two volumes' own work and the
/// split's (the rest), and prints the ratio the two volumes' work alone allows on one reactor.
fn overhead(reactor: &Reactor, replicated: &str, plain: &str, alone: Option<&str>, label: &str) {
    let (secs, rounds) = tandem_bench::run_shape(2);
    println!("\n== splitter overhead, secondary {label}: 4 KiB randwrite, {rounds} alternating rounds of {secs} s ==");
    for depth in [32usize, 1] {
        let (rj, pj) = (
            Job::open(reactor, replicated, IoType::Write, 4096),
            Job::open(reactor, plain, IoType::Write, 4096),
        );
        let aj = alone.map(|a| Job::open(reactor, a, IoType::Write, 4096));
        let (mut r, mut p, mut a) = (Vec::new(), Vec::new(), Vec::new());
        // Each round starts with a short run of its own, not counted: the rounds measure steady
        // state. Without it the replicated round would pay for the log its volume's idle
        // round let go (every region touched again waits for a log commit, which on a file
        // is a sync of the disk).
        let round = |job: &Rc<Job>| {
            iops(reactor, job, depth, 0.25);
            iops(reactor, job, depth, secs as f64)
        };
        for _ in 0..rounds {
            r.push(round(&rj));
            p.push(round(&pj));
            if let Some(aj) = &aj {
                a.push(round(aj));
            }
        }
        let (r, p) = (tandem_bench::median(r), tandem_bench::median(p));
        let lat = |iops: f64| depth as f64 / iops * 1e6;
        println!(
            "qd{depth:<3} replicated {r:>9.0} IOPS {:>7.1} us   unreplicated {p:>9.0} IOPS {:>7.1} us   IOPS ratio {:.2}   latency ratio {:.2}",
            lat(r),
            lat(p),
            r / p,
            lat(r) / lat(p)
        );
        if !a.is_empty() {
            let a = tandem_bench::median(a);
            // Reactor time per write: everything here runs on this one reactor.
            let (tr, tp, ta) = (1e6 / r, 1e6 / p, 1e6 / a);
            println!(
                "      secondary's volume alone {a:>9.0} IOPS   per replicated write: primary {tp:.2} us + secondary {ta:.2} us + split {:.2} us   both volumes' work alone allows a ratio of {:.2}",
                tr - tp - ta,
                tp / (tp + ta)
            );
        }
    }
}

fn drl_cost(c: &mut Criterion) {
    let drl = Drl::new(vol(), DEFAULT_REGION).unwrap();
    drl.flushed(&vec![!0u64; drl.regions().div_ceil(64) as usize]);
    let counter = AtomicU64::new(0);
    let mut g = c.benchmark_group("repl_drl");
    let mut i = 0u64;
    let blocks = vol() / 4096;
    g.bench_function("write_in_sync", |b| {
        b.iter(|| {
            i = (i + 7919) % blocks;
            let off = i * 4096;
            let busy = drl.enter(off, 4096);
            let admit = drl.admit(off, 4096);
            drl.end_write(off, 4096, true);
            (busy, admit)
        })
    });
    let claims = InFlight::new(vol());
    g.bench_function("claim_and_release", |b| {
        b.iter(|| {
            i = (i + 7919) % blocks;
            let off = i * 4096;
            let claimed = claims.claim(off, 4096, None);
            claims.release(off, 4096);
            claimed
        })
    });
    g.bench_function("one_atomic_add", |b| {
        b.iter(|| counter.fetch_add(1, Ordering::SeqCst))
    });
    g.finish();
    tandem_bench::print_ratios(
        "the log's work per write in sync against one atomic add",
        &[
            ("repl_drl/write_in_sync", "repl_drl/one_atomic_add"),
            ("repl_drl/claim_and_release", "repl_drl/one_atomic_add"),
        ],
    );
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    if part("drl") {
        drl_cost(&mut c);
    }

    let (engine, owner, reactor) = tandem_bench::owner_and_caller("bench");
    let m = engine.messenger();

    // Room for each volume twice: a replication snapshot is of the whole store, so every
    // volume's clusters move on their next write (copy on write) while it lives.
    let ps = store(&m, owner, "prim", 9 * vol());
    let ss = store(&m, owner, "sec", 12 * vol());
    for v in ["rep", "rep_tcp", "plain"] {
        ps.create_volume(v, vol(), false).unwrap();
        fill(&reactor, &format!("prim/{v}"));
    }
    ss.create_volume("local", vol(), false).unwrap();
    let b = Bench {
        m: &m,
        owner,
        reactor: &reactor,
        ss: &ss,
    };
    if part("overhead") {
        b.overhead_part();
    }
    if part("device") {
        b.device_part();
    }
    if part("client") {
        client_part();
    }
    if part("resync") {
        b.resync_part();
    }
    if part("transfers") {
        b.transfers_part();
    }
    c.final_summary();
}

/// The splitter's overhead as an NVMe/TCP client sees it: one tandemd (on the first core)
/// exports a replicated volume, whose secondary is a second volume of its own, and an
/// unreplicated volume of the same store; `tandem perf` (on the other core) drives each in
/// turn, in alternating rounds.
fn client_part() {
    let cores = available_cores();
    let (target_core, client_core) = (cores[0], cores[cores.len() - 1]);
    // Both spin, as SPDK's target and perf do; a smoke pass polls adaptively.
    let mode = if smoke() { "adaptive" } else { "poll" };
    let t = Remote::spawn(target_core, mode, "client");
    t.ram_store("cp", 6 * vol());
    t.ram_store("cs", 3 * vol());
    for (lvs, v) in [("cp", "rep"), ("cp", "plain"), ("cs", "local")] {
        t.volume(lvs, v, vol());
    }
    t.call(
        "repl_create",
        serde_json::json!({"name": "client", "primary": "cp/rep",
            "secondary_bdev": "cs/local", "secondary_volume": "cs/local"}),
    );
    t.call("repl_start", serde_json::json!({"name": "client"}));
    let state = || t.call("repl_get", serde_json::json!({"name": "client"}));
    let since = Instant::now();
    while state()["state"] != "in_sync" {
        assert!(since.elapsed() < Duration::from_secs(120), "{}", state());
        std::thread::sleep(Duration::from_millis(20));
    }
    t.export(&["cp/rep", "cp/plain"]);
    let tandem = binary("tandem");
    // (IOPS, mean latency in us) of one `tandem perf` run on namespace `ns`.
    let perf = |ns: u32, workload: &str, depth: usize, io_size: usize, secs: f64| {
        let trid = format!(
            "trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:{} subnqn:{NQN} ns:{ns}",
            t.port
        );
        let out = std::process::Command::new(&tandem)
            .args([
                "perf", "-r", &trid, "-w", workload, "--json", "--mode", mode,
            ])
            .args(["-q", &depth.to_string(), "-o", &io_size.to_string()])
            .args(["-t", &secs.to_string(), "-c", &format!("[{client_core}]")])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tandem perf: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let total = &r["total"];
        assert_eq!(total["errors"], 0, "{r}");
        (
            total["iops"].as_f64().unwrap(),
            total["latency_us"]["avg"].as_f64().unwrap(),
        )
    };
    // Every cluster of both written once more since the common snapshot (which shares them),
    // so that the rounds measure replication, not first copies on write.
    for ns in [1, 2] {
        perf(ns, "write", 32, 131072, if smoke() { 0.5 } else { 1.5 });
    }
    let (secs, rounds) = tandem_bench::run_shape(2);
    println!(
        "\n== splitter overhead as an NVMe/TCP client sees it (tandem perf on core {client_core}, tandemd on core {target_core}, secondary a local volume): 4 KiB randwrite, {rounds} alternating rounds of {secs} s =="
    );
    for depth in [32usize, 1] {
        let (mut r, mut p, mut rl, mut pl) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            let (i, l) = perf(1, "randwrite", depth, 4096, secs as f64);
            r.push(i);
            rl.push(l);
            let (i, l) = perf(2, "randwrite", depth, 4096, secs as f64);
            p.push(i);
            pl.push(l);
        }
        let med = tandem_bench::median;
        let (r, p, rl, pl) = (med(r), med(p), med(rl), med(pl));
        println!(
            "qd{depth:<3} replicated {r:>9.0} IOPS {rl:>7.1} us   unreplicated {p:>9.0} IOPS {pl:>7.1} us   IOPS ratio {:.2}   latency ratio {:.2}",
            r / p,
            rl / pl
        );
    }
    let st = state();
    assert_eq!(st["state"], "in_sync", "{st}");
    assert!(st["counters"]["split_writes"].as_u64().unwrap() > 0, "{st}");
}

/// What the parts share: the engine, the bench thread, and the secondary's store.
struct Bench<'a> {
    m: &'a Messenger,
    owner: ReactorId,
    reactor: &'a Reactor,
    ss: &'a Store,
}

impl Bench<'_> {
    /// A relationship made from `cfg`, started and in sync; then its primary and `plain` (the
    /// unreplicated volume it is measured against) written once more over themselves: the
    /// common snapshot shares every cluster of their store, and the rounds are to measure
    /// replication, not first copies on write.
    fn in_sync(&self, cfg: Config, plain: &str) -> Arc<Relationship> {
        let primary = cfg.primary.clone();
        let rel = relationship::create(cfg, self.m.clone(), self.owner).unwrap();
        rel.start().unwrap();
        wait(&rel, State::InSync, Duration::from_secs(300));
        for v in [primary.as_str(), plain] {
            seq_copy(self.reactor, v, v, 0, vol(), 32);
        }
        rel
    }

    /// The splitter's overhead: with the secondary a local volume, then a tandemd on loopback.
    fn overhead_part(&self) {
        let (m, owner, reactor) = (self.m, self.owner, self.reactor);
        // ---- the secondary a local volume ----
        let rel = self.in_sync(
            Config::new("bench_local", "prim/rep", "sec/local", "sec/local"),
            "prim/plain",
        );
        self.ss.create_volume("alone", vol(), false).unwrap();
        fill(reactor, "sec/alone");
        overhead(
            reactor,
            "prim/rep",
            "prim/plain",
            Some("sec/alone"),
            "a local volume",
        );

        // ---- the secondary a tandemd on loopback (a process of its own, on the other core) ----
        let remote = Remote::start();
        let names = bdev::nvmf::attach(
            "rsec",
            HostOpts::new("127.0.0.1", &remote.port.to_string(), NQN),
        )
        .unwrap();
        let mut cfg = Config::new("bench_tcp", "prim/rep_tcp", &names[0], "rsec/vol");
        cfg.control = SecondaryControl::Remote {
            socket: remote.sock.clone(),
        };
        let rel_tcp = relationship::create(cfg, m.clone(), owner).unwrap();
        rel_tcp.start().unwrap();
        wait(&rel_tcp, State::InSync, Duration::from_secs(300));
        for v in ["prim/rep_tcp", "prim/plain"] {
            seq_copy(reactor, v, v, 0, vol(), 32);
        }
        overhead(
            reactor,
            "prim/rep_tcp",
            "prim/plain",
            None,
            "a tandemd on loopback",
        );
        relationship::delete("bench_tcp").unwrap();
        bdev::nvmf::detach("rsec").unwrap();
        drop(remote);
        relationship::delete("bench_local").unwrap();
        // What the relationship left: the common snapshot on each side.
        drop(rel);
    }

    /// The splitter's overhead where the medium does its own work: both stores on files of this
    /// machine's disk through the `uring` bdev (O_DIRECT), the secondary a volume of a store on
    /// a second file. A RAM disk's write is the reactor's own copy, so a second RAM volume
    /// doubles the reactor's work; here the disk copies, though the kernel's I/O path still
    /// runs on this core for each of the two writes.
    fn device_part(&self) {
        let (m, owner, reactor) = (self.m, self.owner, self.reactor);
        let files = [
            file_store(m, owner, "dprim", 5 * vol()),
            file_store(m, owner, "dsec", 3 * vol()),
        ];
        let (ps, ss) = (&files[0].1, &files[1].1);
        for v in ["rep", "plain"] {
            ps.create_volume(v, vol(), false).unwrap();
            fill(reactor, &format!("dprim/{v}"));
        }
        ss.create_volume("local", vol(), false).unwrap();
        let rel = self.in_sync(
            Config::new("bench_device", "dprim/rep", "dsec/local", "dsec/local"),
            "dprim/plain",
        );
        overhead(
            reactor,
            "dprim/rep",
            "dprim/plain",
            None,
            "a local volume, both stores on files of this disk (uring, O_DIRECT)",
        );
        relationship::delete("bench_device").unwrap();
        drop(rel);
        for (path, _) in &files {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Resync after the secondary failed writes, against a plain copy of the same bytes.
    fn resync_part(&self) {
        let (m, owner, reactor, ss) = (self.m, self.owner, self.reactor, self.ss);
        // ---- resync: dirty regions while the secondary fails writes, then drain ----
        let ee = ebdev::create(ErrorOpts {
            name: Some("EE_local".into()),
            base: "sec/local".into(),
            uuid: 0,
        })
        .unwrap();
        let cfg = Config::new("bench_resync", "prim/rep", ee.name(), "sec/local");
        let rel = relationship::create(cfg, m.clone(), owner).unwrap();
        rel.start().unwrap();
        wait(&rel, State::InSync, Duration::from_secs(120));
        // One resync is about 0.1 s, short enough for one slow moment to move it a lot: each
        // pattern runs in rounds, a resync then its plain copy, and the medians are printed.
        // Before each round a snapshot of the secondary's whole store shares every cluster again,
        // so that every round's writes (the resync's and the copy's alike) move their clusters
        // as the first round's do; it is deleted after the round.
        let rounds = if smoke() { 1 } else { 5 };
        println!("\n== resync: bytes and throughput against a plain copy of the same bytes, {rounds} rounds ==");
        for (writes, label) in [
            (2_000u64, "2,000 random 4 KiB writes"),
            (40_000, "40,000 random 4 KiB writes"),
        ] {
            // The copy's target: a volume of the secondary's store, every cluster allocated,
            // behind an error bdev as the resync's writes are.
            let name = format!("fresh_{writes}");
            ss.create_volume(&name, vol(), false).unwrap();
            seq_copy(reactor, "prim/rep", &format!("sec/{name}"), 0, vol(), 8);
            let copy_to = ebdev::create(ErrorOpts {
                name: Some(format!("EE_{name}")),
                base: format!("sec/{name}"),
                uuid: 0,
            })
            .unwrap();
            let (mut dirtied, mut resynced, mut worst) = (Vec::new(), Vec::new(), 0f64);
            let (mut resync_rate, mut copy_rate, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
            for round in 0..rounds {
                let snap = format!("round_{writes}_{round}");
                ss.snapshot(&snap, None).unwrap();
                ebdev::set_fault("EE_local", Fault::every(Action::Fail, IoTypes::WRITES)).unwrap();
                let job = Job::open(reactor, "prim/rep", IoType::Write, 4096);
                job.run(reactor, 32, writes);
                wait(&rel, State::OutOfSync, Duration::from_secs(10));
                let drl = Arc::clone(rel.splitter().drl());
                let dirty = drl.dirty_regions() * drl.region_size();
                // The status the driver publishes every few milliseconds settles first.
                std::thread::sleep(Duration::from_millis(50));
                let before = rel.status().resynced_bytes;
                ebdev::clear("EE_local").unwrap();
                wait(&rel, State::Resyncing, Duration::from_secs(10));
                let t0 = Instant::now();
                wait(&rel, State::InSync, Duration::from_secs(120));
                let secs = t0.elapsed().as_secs_f64();
                // The driver publishes the scanner's count a moment after the state.
                std::thread::sleep(Duration::from_millis(20));
                let bytes = rel.status().resynced_bytes - before;
                assert!(
                    bytes <= vol(),
                    "resynced {bytes} bytes of a {} byte volume",
                    vol()
                );
                // The same bytes as a plain copy: 256 KiB copies, read and written, the same
                // depth, on the reactor the scanner runs on.
                let copy_secs = seq_copy_on(m, owner, "prim/rep", copy_to.name(), bytes, 8);
                ss.delete_snapshot(&snap).unwrap();
                let mib = bytes as f64 / MIB as f64;
                worst = worst.max(bytes as f64 / dirty as f64);
                dirtied.push(dirty as f64 / MIB as f64);
                resynced.push(mib);
                resync_rate.push(mib / secs);
                copy_rate.push(mib / copy_secs);
                ratio.push(copy_secs / secs);
            }
            println!(
                "{label:<28} dirtied {:>6.1} MiB (regions)  resynced {:>6.1} MiB  ratio {worst:.3} (worst round)   resync {:>7.1} MiB/s  plain copy {:>7.1} MiB/s  ratio {:.2} (rounds: {})",
                tandem_bench::median(dirtied),
                tandem_bench::median(resynced),
                tandem_bench::median(resync_rate),
                tandem_bench::median(copy_rate),
                tandem_bench::median(ratio.clone()),
                ratio.iter().map(|r| format!("{r:.2}")).collect::<Vec<_>>().join(" ")
            );
        }
        // The same drain without a fault in the way: writes logged while quiesced, then resume.
        rel.quiesce().unwrap();
        let job = Job::open(reactor, "prim/rep", IoType::Write, 4096);
        job.run(reactor, 32, 40_000);
        let drl = Arc::clone(rel.splitter().drl());
        let dirtied = drl.dirty_regions() * drl.region_size();
        std::thread::sleep(Duration::from_millis(50));
        let before = rel.status().resynced_bytes;
        let t0 = Instant::now();
        rel.resume().unwrap();
        wait(&rel, State::InSync, Duration::from_secs(120));
        let secs = t0.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_millis(20));
        let resynced = rel.status().resynced_bytes - before;
        println!(
        "{:<28} dirtied {:>6.1} MiB (regions)  resynced {:>6.1} MiB  ratio {:.3}   drain  {:>7.1} MiB/s",
        "quiesced, then resumed",
        dirtied as f64 / MIB as f64,
        resynced as f64 / MIB as f64,
        resynced as f64 / dirtied as f64,
        resynced as f64 / MIB as f64 / secs,
    );
        relationship::delete("bench_resync").unwrap();
    }

    /// The incremental transfer of 1% of a large sparse volume against its baseline.
    fn transfers_part(&self) {
        let (m, owner, reactor) = (self.m, self.owner, self.reactor);
        // ---- transfers: 1% of a large sparse volume against its baseline ----
        let big = if smoke() { 256 * MIB } else { 8 << 30 };
        let bs = store(m, owner, "bigp", 3 * big / 16 + 256 * MIB);
        let bss = store(m, owner, "bigs", 3 * big / 16 + 256 * MIB);
        bs.create_volume("v", big, false).unwrap();
        bss.create_volume("v", big, false).unwrap();
        // A sixteenth of the volume written: every 16th MiB.
        let written = big / 16;
        let src_mib = vol() / MIB;
        for i in 0..written / MIB {
            let from = (i % src_mib) * MIB;
            seq_copy_at(reactor, "prim/plain", "bigp/v", from, i * 16 * MIB, MIB);
        }
        let rel = relationship::create(
            Config::new("bench_big", "bigp/v", "bigs/v", "bigs/v"),
            m.clone(),
            owner,
        )
        .unwrap();
        rel.start().unwrap();
        wait(&rel, State::InSync, Duration::from_secs(600));
        rel.quiesce().unwrap();
        let common = rel.status().last_common_snapshot.clone();
        let baseline = (rel.status().transfers[0], rel.status().transfer_secs[0]);
        relationship::delete("bench_big").unwrap();
        // 1% of the data changes, spread over the volume (1 MiB copies from another place).
        let changes = (written / MIB / 100).max(1);
        for i in 0..changes {
            let at = (i * 97 % (written / MIB)) * 16 * MIB;
            let from = (src_mib - 1 - i % src_mib) * MIB;
            seq_copy_at(reactor, "prim/plain", "bigp/v", from, at, MIB);
        }
        let mut cfg = Config::new("bench_big2", "bigp/v", "bigs/v", "bigs/v");
        cfg.common_snapshot = common;
        let rel = relationship::create(cfg, m.clone(), owner).unwrap();
        rel.start().unwrap();
        wait(&rel, State::InSync, Duration::from_secs(120));
        let inc = (rel.status().transfers[0], rel.status().transfer_secs[0]);
        println!(
            "\n== transfers: a {} MiB sparse volume with {} MiB written, then {} MiB changed ==",
            big / MIB,
            written / MIB,
            changes
        );
        println!(
        "baseline    {:>7.1} MiB in {:>7.3} s\nincremental {:>7.1} MiB in {:>7.3} s   bytes {:.2}%   time {:.2}% of the baseline's",
        baseline.0 as f64 / MIB as f64,
        baseline.1,
        inc.0 as f64 / MIB as f64,
        inc.1,
        100.0 * inc.0 as f64 / baseline.0 as f64,
        100.0 * inc.1 / baseline.1
    );
        relationship::delete("bench_big2").unwrap();
    }
}

/// Copy `len` bytes of `src` at `from` to `dst` at `to` (one 1 MiB copy at a time).
fn seq_copy_at(reactor: &Reactor, src: &str, dst: &str, from: u64, to: u64, len: u64) {
    let done = Rc::new(Cell::new(false));
    reactor.enter(|| {
        let (s, d) = (
            bdev::open(src, false, None).unwrap(),
            bdev::open(dst, true, None).unwrap(),
        );
        let (sc, dc) = (s.channel().unwrap(), d.channel().unwrap());
        std::mem::forget((s, d));
        let b = DmaBuf::new(len as usize).unwrap();
        let done = Rc::clone(&done);
        let n = len / 4096;
        sc.read(from / 4096, n, Sgl::single(b), move |r: IoDone| {
            assert!(r.status.is_ok());
            dc.write(to / 4096, n, r.sgl, move |w: IoDone| {
                assert!(w.status.is_ok());
                done.set(true);
            })
            .map_err(|(e, _)| e)
            .unwrap();
        })
        .map_err(|(e, _)| e)
        .unwrap();
    });
    while !done.get() {
        reactor.poll();
    }
}

/// A binary of this package, of this very build and profile: cargo builds it (a no-op when
/// fresh).
fn binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.ancestors().nth(2).unwrap().to_path_buf();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = std::process::Command::new(cargo);
    build.args(["build", "--quiet", "-p", "tandem", "--bin", name]);
    if profile_dir.ends_with("release") {
        build.arg("--release");
    }
    assert!(build.status().unwrap().success(), "building {name}");
    profile_dir.join(name)
}

/// A tandemd of this build (release, built here if missing) on one core, RPC socket in the
/// temporary directory; stopped on drop.
struct Remote {
    child: std::process::Child,
    sock: std::path::PathBuf,
    port: u16,
}

impl Remote {
    /// A tandemd with nothing configured, on `core`, its reactor in `mode`.
    fn spawn(core: usize, mode: &str, tag: &str) -> Remote {
        let tandemd = binary("tandemd");
        let sock = std::env::temp_dir().join(format!(
            "tandem-bench-repl-{tag}-{}.sock",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&sock);
        let child = std::process::Command::new(&tandemd)
            .args([
                "-m",
                &format!("[{core}]"),
                "--mode",
                mode,
                "--no-default",
                "-r",
            ])
            .arg(&sock)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // From here a panic still stops it.
        let remote = Remote {
            child,
            sock,
            port: std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port(),
        };
        let t = Instant::now();
        while std::os::unix::net::UnixStream::connect(&remote.sock).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "tandemd did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        remote
    }

    fn call(&self, method: &str, params: serde_json::Value) -> serde_json::Value {
        tandem::rpc::client::call(&self.sock, method, &params, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{method}: {e}"))
    }

    /// A RAM store `lvs` of `bytes` on a malloc bdev of its own.
    fn ram_store(&self, lvs: &str, bytes: u64) {
        let base = format!("{lvs}_base");
        self.call(
            "bdev_malloc_create",
            serde_json::json!({"name": base, "num_blocks": bytes / 4096, "block_size": 4096}),
        );
        self.call(
            "bdev_lvol_create_lvstore",
            serde_json::json!({"bdev_name": base, "lvs_name": lvs, "cluster_sz": CLUSTER}),
        );
    }

    fn volume(&self, lvs: &str, name: &str, bytes: u64) {
        self.call(
            "bdev_lvol_create",
            serde_json::json!({"lvs_name": lvs, "lvol_name": name, "size_in_mib": bytes / MIB}),
        );
    }

    /// Export `bdevs` as namespaces 1, 2, ... of subsystem NQN on 127.0.0.1 at its port.
    fn export(&self, bdevs: &[&str]) {
        self.call(
            "nvmf_create_transport",
            serde_json::json!({"trtype": "TCP"}),
        );
        self.call(
            "nvmf_create_subsystem",
            serde_json::json!({"nqn": NQN, "allow_any_host": true}),
        );
        for b in bdevs {
            self.call(
                "nvmf_subsystem_add_ns",
                serde_json::json!({"nqn": NQN, "namespace": {"bdev_name": b}}),
            );
        }
        self.call(
            "nvmf_subsystem_add_listener",
            serde_json::json!({"nqn": NQN, "listen_address": {
            "trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1",
            "trsvcid": self.port.to_string()}}),
        );
    }

    /// The secondary of the overhead part: a 256 MiB volume in a RAM store, exported, on the
    /// last core.
    fn start() -> Remote {
        let cores = available_cores();
        let remote = Remote::spawn(cores[cores.len() - 1], "adaptive", "secondary");
        remote.ram_store("rsec", 3 * vol());
        remote.volume("rsec", "vol", vol());
        remote.export(&["rsec/vol"]);
        remote
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.sock);
    }
}
