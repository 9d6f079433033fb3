//! A closed-loop random I/O job on one bdev channel: keeps `depth` I/Os in flight, each
//! completion submitting the next with the buffers it handed back, until a count is reached.
//! The loop allocates nothing per I/O, like the data path it measures.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use tandem::bdev::{Channel, IoDone, IoType};
use tandem::mem::{DmaBuf, Sgl};
use tandem::reactor::sim::SimRng;

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
