//! A closed-loop random I/O job on one bdev channel: keeps `depth` I/Os in flight, each
//! completion submitting the next with the buffers it handed back, until a count is reached.
//! The loop allocates nothing per I/O, like the data path it measures.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use std::time::{Duration, Instant};
use tandem::bdev::{Channel, IoDone, IoType};
use tandem::mem::{DmaBuf, Sgl};
use tandem::reactor::sim::SimRng;
use tandem::reactor::Reactor;

pub struct Job {
    ch: Channel,
    io_type: IoType,
    blocks_per_io: u64,
    span_ios: u64,
    rng: RefCell<SimRng>,
    submitted: Cell<u64>,
    completed: Cell<u64>,
    errors: Cell<u64>,
    target: Cell<u64>,
}

impl Job {
    pub fn new(ch: Channel, io_type: IoType, io_bytes: usize) -> Rc<Job> {
        let bdev = ch.bdev();
        let blocks_per_io = io_bytes as u64 / bdev.block_size() as u64;
        Rc::new(Job {
            span_ios: bdev.num_blocks() / blocks_per_io,
            ch,
            io_type,
            blocks_per_io,
            rng: RefCell::new(SimRng::new(0x5eed)),
            submitted: Cell::new(0),
            completed: Cell::new(0),
            errors: Cell::new(0),
            target: Cell::new(0),
        })
    }

    /// A job on bdev `name`, opened on `reactor` (its descriptor lives as long as the bench).
    pub fn open(reactor: &Reactor, name: &str, io_type: IoType, io_bytes: usize) -> Rc<Job> {
        reactor.enter(|| {
            let desc = tandem::bdev::open(name, true, None).expect("open the bdev");
            let ch = desc.channel().expect("a channel");
            std::mem::forget(desc);
            Job::new(ch, io_type, io_bytes)
        })
    }

    /// Run `count` I/Os at `depth` on `reactor`, polling it until they are done.
    pub fn run(self: &Rc<Self>, reactor: &Reactor, depth: usize, count: u64) -> Duration {
        let start = Instant::now();
        reactor.enter(|| self.start(depth, count));
        while !self.done() {
            reactor.poll();
        }
        start.elapsed()
    }

    /// Start `depth` I/Os, and keep that many in flight until `count` more have completed.
    pub fn start(self: &Rc<Self>, depth: usize, count: u64) {
        self.target.set(self.completed.get() + count);
        let io_bytes = (self.blocks_per_io * self.ch.bdev().block_size() as u64) as usize;
        for _ in 0..depth.min(count as usize) {
            // A pool buffer, as the target's requests use: io_uring has it registered.
            let mut sgl = Sgl::new();
            match tandem::mem::take_small().filter(|b| b.len() >= io_bytes) {
                Some(b) => sgl.push(b, 0, io_bytes).expect("fits"),
                None => sgl
                    .push(DmaBuf::new(io_bytes).expect("buffer"), 0, io_bytes)
                    .expect("fits"),
            }
            self.submit(sgl);
        }
    }

    pub fn done(&self) -> bool {
        self.completed.get() >= self.target.get() && self.in_flight() == 0
    }

    pub fn in_flight(&self) -> u64 {
        self.submitted.get() - self.completed.get()
    }

    pub fn errors(&self) -> u64 {
        self.errors.get()
    }

    fn submit(self: &Rc<Self>, sgl: Sgl) {
        let at = self.rng.borrow_mut().below(self.span_ios as usize) as u64 * self.blocks_per_io;
        let me = Rc::clone(self);
        let r = self.ch.submit(
            self.io_type,
            at,
            self.blocks_per_io,
            sgl,
            tandem::bdev::IoCallback::new(move |d: IoDone| me.complete(d)),
        );
        match r {
            Ok(()) => self.submitted.set(self.submitted.get() + 1),
            Err((e, _)) => panic!("benchmark I/O refused: {e}"),
        }
    }

    fn complete(self: &Rc<Self>, d: IoDone) {
        self.completed.set(self.completed.get() + 1);
        if d.status.is_err() {
            self.errors.set(self.errors.get() + 1);
        }
        if self.submitted.get() < self.target.get() {
            self.submit(d.sgl);
        }
    }
}

/// A criterion group `group` of 4 KiB random reads and writes on bdev `name` at each of
/// `depths`, one I/O per iteration.
pub fn random_4k_group(
    c: &mut criterion::Criterion,
    group: &str,
    reactor: &Reactor,
    name: &str,
    depths: &[usize],
) {
    let mut g = c.benchmark_group(group);
    g.throughput(criterion::Throughput::Elements(1))
        .sample_size(20)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    for (io_type, label) in [(IoType::Read, "randread"), (IoType::Write, "randwrite")] {
        for &depth in depths {
            let job = Job::open(reactor, name, io_type, 4096);
            g.bench_function(
                criterion::BenchmarkId::new(label, format!("qd{depth}")),
                |b| b.iter_custom(|iters| job.run(reactor, depth, iters)),
            );
            assert_eq!(job.errors(), 0);
        }
    }
    g.finish();
}
