//! Reactor benchmarks, each against a baseline measured in the same run:
//!
//! - cross-reactor message round trip (poll mode, two reactors) vs. a crossbeam `ArrayQueue`
//!   ping-pong between two pinned threads, and the machine's floor (`floor_cache_line`: two
//!   counters, each written by one core and read by the other);
//! - one-way message throughput vs. the same `ArrayQueue` streamed between two pinned threads,
//!   and the floor (`floor_spsc_ring`: a bare single-producer, single-consumer ring);
//! - poller dispatch per poller per loop vs. calling the same boxed closures from a `Vec`;
//! - adaptive-mode wake-up latency (message sent → closure running on a parked reactor) vs. a
//!   parked std thread woken by `unpark`.
//!
//! `cargo bench -p tandem-bench --bench reactor` prints criterion's report, then the ratios.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use crossbeam_queue::ArrayQueue;
use tandem::reactor::{
    self, available_cores, CoreMask, Engine, EngineOpts, Messenger, Mode, Msg, PollStatus,
    ReactorId, SendErrorKind,
};
use tandem_bench::print_ratios;

fn two_cores() -> (usize, usize) {
    let cores = available_cores();
    (cores[0], cores[cores.len() - 1])
}

fn engine(cores: &[usize], mode: Mode) -> Engine {
    Engine::start(EngineOpts {
        core_mask: Some(CoreMask::from_cores(cores.iter().copied()).unwrap()),
        mode,
        ..EngineOpts::default()
    })
    .unwrap()
}

fn pin(core: usize) {
    core_affinity::set_for_current(core_affinity::CoreId { id: core });
}

/// Send from a reactor, retrying while the ring is full.
fn send_spin(to: ReactorId, f: impl FnOnce() + Send + 'static) {
    let mut msg = Msg::new(f);
    loop {
        match reactor::send_msg(to, msg) {
            Ok(()) => return,
            Err(e) if e.kind == SendErrorKind::Full => msg = e.into_msg(),
            Err(e) => panic!("{e}"),
        }
    }
}

fn ping(left: u64, a: ReactorId, b: ReactorId, done: mpsc::Sender<Instant>) {
    if left == 0 {
        done.send(Instant::now()).unwrap();
        return;
    }
    send_spin(b, move || send_spin(a, move || ping(left - 1, a, b, done)));
}

fn round_trip(c: &mut Criterion) {
    let (c0, c1) = two_cores();
    let mut g = c.benchmark_group("round_trip");
    g.sample_size(20).measurement_time(Duration::from_secs(3));
    {
        let e = engine(&[c0, c1], Mode::Poll);
        let ids = e.reactor_ids();
        let (a, b) = (ids[0], *ids.last().unwrap());
        g.bench_function("tandem_poll_mode", |bench| {
            bench.iter_custom(|iters| {
                let (tx, rx) = mpsc::channel();
                let start = Instant::now();
                e.send(a, move || ping(iters, a, b, tx)).unwrap();
                let end = rx.recv().unwrap();
                end - start
            })
        });
        e.stop().unwrap();
    }
    g.bench_function("baseline_arrayqueue", |bench| {
        bench.iter_custom(|iters| {
            let there = Arc::new(ArrayQueue::<u64>::new(1024));
            let back = Arc::new(ArrayQueue::<u64>::new(1024));
            let (t, bk) = (there.clone(), back.clone());
            let ready = Arc::new(AtomicBool::new(false));
            let r = ready.clone();
            let echo = std::thread::spawn(move || {
                pin(c1);
                r.store(true, Ordering::Release);
                for _ in 0..iters {
                    let v = loop {
                        if let Some(v) = t.pop() {
                            break v;
                        }
                        std::hint::spin_loop();
                    };
                    while bk.push(v).is_err() {}
                }
            });
            let initiator = std::thread::spawn(move || {
                pin(c0);
                while !ready.load(Ordering::Acquire) {
                    std::hint::spin_loop();
                }
                let start = Instant::now();
                for i in 0..iters {
                    while there.push(i).is_err() {}
                    while back.pop().is_none() {
                        std::hint::spin_loop();
                    }
                }
                start.elapsed()
            });
            let elapsed = initiator.join().unwrap();
            echo.join().unwrap();
            elapsed
        })
    });
    // The machine's floor: a counter each, on lines of their own, each side waiting for the
    // other's. No ring could do better between these two cores.
    g.bench_function("floor_cache_line", |bench| {
        bench.iter_custom(|iters| {
            let lines = Arc::new([Line(AtomicU64::new(0)), Line(AtomicU64::new(0))]);
            let l = lines.clone();
            let echo = std::thread::spawn(move || {
                pin(c1);
                for i in 1..=iters {
                    while l[0].load(Ordering::Acquire) != i {
                        std::hint::spin_loop();
                    }
                    l[1].store(i, Ordering::Release);
                }
            });
            let initiator = std::thread::spawn(move || {
                pin(c0);
                let start = Instant::now();
                for i in 1..=iters {
                    lines[0].store(i, Ordering::Release);
                    while lines[1].load(Ordering::Acquire) != i {
                        std::hint::spin_loop();
                    }
                }
                start.elapsed()
            });
            let elapsed = initiator.join().unwrap();
            echo.join().unwrap();
            elapsed
        })
    });
    g.finish();
}

static RECEIVED: reactor::ReactorLocal<Cell<u64>> = reactor::ReactorLocal::new(|| Cell::new(0));

fn throughput(c: &mut Criterion) {
    let (c0, c1) = two_cores();
    let mut g = c.benchmark_group("one_way");
    g.sample_size(20)
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(1));
    {
        let e = engine(&[c0, c1], Mode::Poll);
        let ids = e.reactor_ids();
        let (a, b) = (ids[0], *ids.last().unwrap());
        g.bench_function("tandem_poll_mode", |bench| {
            bench.iter_custom(|iters| {
                let (tx, rx) = mpsc::channel();
                let start = Instant::now();
                e.send(a, move || {
                    // The messages capture nothing, like the baseline's integers: what is
                    // measured is the ring, not reference counting across cores.
                    for _ in 0..iters {
                        send_spin(b, || RECEIVED.with(|c| c.set(c.get() + 1)).unwrap());
                    }
                    send_spin(b, move || tx.send(Instant::now()).unwrap());
                })
                .unwrap();
                let end = rx.recv().unwrap();
                end - start
            })
        });
        e.stop().unwrap();
    }
    g.bench_function("baseline_arrayqueue", |bench| {
        bench.iter_custom(|iters| {
            let q = Arc::new(ArrayQueue::<u64>::new(16 * 1024));
            let q2 = q.clone();
            let ready = Arc::new(AtomicBool::new(false));
            let r = ready.clone();
            let consumer = std::thread::spawn(move || {
                pin(c1);
                r.store(true, Ordering::Release);
                let mut got = 0;
                while got < iters {
                    if q2.pop().is_some() {
                        got += 1;
                    }
                }
                Instant::now()
            });
            let producer = std::thread::spawn(move || {
                pin(c0);
                while !ready.load(Ordering::Acquire) {
                    std::hint::spin_loop();
                }
                let start = Instant::now();
                for i in 0..iters {
                    while q.push(i).is_err() {
                        std::hint::spin_loop();
                    }
                }
                start
            });
            let start = producer.join().unwrap();
            let end = consumer.join().unwrap();
            end - start
        })
    });
    // The machine's floor for a stream: a ring with one producer and one consumer, each
    // publishing its index once per slot and reading the other's only when it must.
    g.bench_function("floor_spsc_ring", |bench| {
        bench.iter_custom(|iters| {
            let ring = Arc::new(Spsc::new(16 * 1024));
            let r2 = ring.clone();
            let consumer = std::thread::spawn(move || {
                pin(c1);
                let mut seen = 0;
                for _ in 0..iters {
                    seen = r2.pop(seen);
                }
                Instant::now()
            });
            let producer = std::thread::spawn(move || {
                pin(c0);
                let start = Instant::now();
                let mut room = 0;
                for i in 0..iters {
                    room = ring.push(i, room);
                }
                start
            });
            let start = producer.join().unwrap();
            let end = consumer.join().unwrap();
            end - start
        })
    });
    g.finish();
}

/// An atomic on a cache line (and its neighbour, which x86 prefetches in pairs) of its own.
#[repr(align(128))]
struct Line(AtomicU64);

impl std::ops::Deref for Line {
    type Target = AtomicU64;
    fn deref(&self) -> &AtomicU64 {
        &self.0
    }
}

/// A bare single-producer, single-consumer ring of integers: the floor for `one_way`.
struct Spsc {
    slots: Box<[AtomicU64]>,
    head: Line,
    tail: Line,
}

impl Spsc {
    fn new(len: usize) -> Spsc {
        Spsc {
            slots: (0..len).map(|_| AtomicU64::new(0)).collect(),
            head: Line(AtomicU64::new(0)),
            tail: Line(AtomicU64::new(0)),
        }
    }

    /// Push `v`; `room` is the consumer's index last read. Returns it, read again if needed.
    fn push(&self, v: u64, mut room: u64) -> u64 {
        let t = self.tail.load(Ordering::Relaxed);
        while t - room >= self.slots.len() as u64 {
            room = self.head.load(Ordering::Acquire);
            std::hint::spin_loop();
        }
        self.slots[(t % self.slots.len() as u64) as usize].store(v, Ordering::Relaxed);
        self.tail.store(t + 1, Ordering::Release);
        room
    }

    /// Pop one value; `seen` is the producer's index last read. Returns it, read again if
    /// needed.
    fn pop(&self, mut seen: u64) -> u64 {
        let h = self.head.load(Ordering::Relaxed);
        while h == seen {
            seen = self.tail.load(Ordering::Acquire);
            std::hint::spin_loop();
        }
        std::hint::black_box(
            self.slots[(h % self.slots.len() as u64) as usize].load(Ordering::Relaxed),
        );
        self.head.store(h + 1, Ordering::Release);
        seen
    }
}

fn poller_dispatch(c: &mut Criterion) {
    let mut g = c.benchmark_group("poller_dispatch");
    g.sample_size(30).measurement_time(Duration::from_secs(2));
    let e = Engine::start(EngineOpts::default()).unwrap();
    for k in [1usize, 16, 128] {
        g.throughput(Throughput::Elements(k as u64));
        let r = e.create_thread("bench").unwrap();
        let hits = Rc::new(Cell::new(0u64));
        r.enter(|| {
            for _ in 0..k {
                let h = hits.clone();
                reactor::register_poller("idle", move || {
                    h.set(h.get() + 1);
                    PollStatus::Idle
                })
                .unwrap();
            }
        });
        g.bench_function(BenchmarkId::new("tandem", k), |bench| {
            bench.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    r.poll();
                }
                // Per poller: the loop's fixed cost is shared among k pollers.
                start.elapsed()
            })
        });
        let mut plain: Vec<Box<dyn FnMut() -> PollStatus>> = (0..k)
            .map(|_| {
                let h = hits.clone();
                Box::new(move || {
                    h.set(h.get() + 1);
                    PollStatus::Idle
                }) as Box<dyn FnMut() -> PollStatus>
            })
            .collect();
        g.bench_function(BenchmarkId::new("baseline_vec_of_closures", k), |bench| {
            bench.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    let mut s = PollStatus::Idle;
                    for f in plain.iter_mut() {
                        s = s.or(f());
                    }
                    std::hint::black_box(s);
                }
                start.elapsed()
            })
        });
    }
    g.finish();
}

/// Wait until the reactor has parked (its park counter moved), so each sample wakes a sleeper.
fn wait_parked(m: &Messenger, id: ReactorId, parks_seen: &mut u64) {
    loop {
        let (tx, rx) = mpsc::channel();
        m.send(id, move || {
            tx.send(reactor::stats().unwrap().parks).unwrap()
        })
        .unwrap();
        let parks = rx.recv().unwrap();
        std::thread::sleep(Duration::from_micros(100));
        if parks > *parks_seen {
            *parks_seen = parks;
            // That message itself woke it; give it time to park again.
            std::thread::sleep(Duration::from_micros(100));
            return;
        }
    }
}

fn wake_latency(c: &mut Criterion) {
    let (_, c1) = two_cores();
    let mut g = c.benchmark_group("adaptive_wake");
    g.sample_size(10)
        .measurement_time(Duration::from_millis(500))
        .warm_up_time(Duration::from_millis(200));
    {
        let e = engine(&[c1], Mode::Adaptive);
        let id = e.reactor_ids()[0];
        let m = e.messenger();
        let mut parks = 0;
        g.bench_function("tandem_message_to_parked_reactor", |bench| {
            bench.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    wait_parked(&m, id, &mut parks);
                    let ran = Arc::new(AtomicBool::new(false));
                    let at = Arc::new(std::sync::OnceLock::new());
                    let (r2, a2) = (ran.clone(), at.clone());
                    let start = Instant::now();
                    m.send(id, move || {
                        let _ = a2.set(Instant::now());
                        r2.store(true, Ordering::Release);
                    })
                    .unwrap();
                    while !ran.load(Ordering::Acquire) {
                        std::hint::spin_loop();
                    }
                    total += *at.get().unwrap() - start;
                }
                total
            })
        });
        e.stop().unwrap();
    }
    g.bench_function("baseline_thread_unpark", |bench| {
        bench.iter_custom(|iters| {
            let woke_at = Arc::new(std::sync::Mutex::new(None::<Instant>));
            let w = woke_at.clone();
            let stop = Arc::new(AtomicBool::new(false));
            let s = stop.clone();
            let flag = Arc::new(AtomicBool::new(false));
            let f = flag.clone();
            let sleeper = std::thread::spawn(move || {
                pin(c1);
                while !s.load(Ordering::Acquire) {
                    if f.swap(false, Ordering::AcqRel) {
                        *w.lock().unwrap() = Some(Instant::now());
                    } else {
                        std::thread::park();
                    }
                }
            });
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                std::thread::sleep(Duration::from_micros(200));
                let start = Instant::now();
                flag.store(true, Ordering::Release);
                sleeper.thread().unpark();
                let at = loop {
                    if let Some(at) = woke_at.lock().unwrap().take() {
                        break at;
                    }
                    std::hint::spin_loop();
                };
                total += at - start;
            }
            stop.store(true, Ordering::Release);
            sleeper.thread().unpark();
            sleeper.join().unwrap();
            total
        })
    });
    g.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    round_trip(&mut c);
    throughput(&mut c);
    poller_dispatch(&mut c);
    wake_latency(&mut c);
    c.final_summary();
    print_ratios(
        "reactor",
        &[
            (
                "round_trip/tandem_poll_mode",
                "round_trip/baseline_arrayqueue",
            ),
            ("round_trip/tandem_poll_mode", "round_trip/floor_cache_line"),
            ("one_way/tandem_poll_mode", "one_way/baseline_arrayqueue"),
            ("one_way/tandem_poll_mode", "one_way/floor_spsc_ring"),
            (
                "poller_dispatch/tandem/1",
                "poller_dispatch/baseline_vec_of_closures/1",
            ),
            (
                "poller_dispatch/tandem/16",
                "poller_dispatch/baseline_vec_of_closures/16",
            ),
            (
                "poller_dispatch/tandem/128",
                "poller_dispatch/baseline_vec_of_closures/128",
            ),
            (
                "adaptive_wake/tandem_message_to_parked_reactor",
                "adaptive_wake/baseline_thread_unpark",
            ),
        ],
    );
}
