//! The data path allocates nothing per I/O in steady state: counted, not assumed.
//!
//! A counting global allocator tallies the heap allocations made on the threads that count (a
//! thread-local switch) while a closed-loop job keeps 32 random 4 KiB I/Os in flight:
//! - on a volume of a RAM-backed store, once unreplicated, once split in sync to a second
//!   local volume (the splitter, the dirty region log, the claims on blocks), counted on the
//!   job's reactor. Each volume is written whole first, so that the rounds measured copy
//!   nothing on write and allocate no cluster;
//! - through NVMe/TCP on loopback, this process's host (the `nvmf` bdev) to this process's
//!   target, writes then reads, counted on the host's reactor and on the target's.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tandem::bdev::{self, malloc, IoCallback, IoDone, IoType};
use tandem::host::HostOpts;
use tandem::mem::{DmaBuf, Sgl};
use tandem::nvmf::test_target;
use tandem::reactor::{Messenger, Reactor, ReactorId};
use tandem::repl::relationship::{self, Config};
use tandem::repl::state::State;
use tandem::store::{CreateOpts, Store};
use tandem_bench::io_job::Job;

/// The system allocator, counting what the calling thread allocates while it counts.
struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn note_allocation() {
    if COUNTING.with(Cell::get) {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
    }
}

// SAFETY: every call goes to the system allocator unchanged; the bookkeeping touches only
// const-initialised thread-locals, which neither allocate nor call back into the allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation();
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Heap allocations this thread makes while `f` runs.
fn allocations_in(f: impl FnOnce()) -> u64 {
    ALLOCATIONS.with(|n| n.set(0));
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    ALLOCATIONS.with(Cell::get)
}

/// Start counting on reactor `r` (from zero).
fn count_on(m: &Messenger, r: ReactorId) {
    let (tx, rx) = std::sync::mpsc::channel();
    m.send(r, move || {
        // The answer first: a channel's first message may allocate.
        tx.send(()).unwrap();
        ALLOCATIONS.with(|n| n.set(0));
        COUNTING.with(|c| c.set(true));
    })
    .map_err(|_| "send")
    .unwrap();
    rx.recv_timeout(Duration::from_secs(10)).unwrap();
}

/// Stop counting on reactor `r`: what it counted.
fn counted_on(m: &Messenger, r: ReactorId) -> u64 {
    let (tx, rx) = std::sync::mpsc::channel();
    m.send(r, move || {
        COUNTING.with(|c| c.set(false));
        tx.send(ALLOCATIONS.with(Cell::get)).unwrap();
    })
    .map_err(|_| "send")
    .unwrap();
    rx.recv_timeout(Duration::from_secs(10)).unwrap()
}

const MIB: u64 = 1 << 20;
const VOL: u64 = 16 * MIB;

fn store(m: &Messenger, owner: ReactorId, name: &str) -> Store {
    let base = format!("{name}_base");
    malloc::create(malloc::MallocOpts {
        name: base.clone(),
        num_blocks: 4 * VOL / 4096,
        block_size: 4096,
        uuid: 0,
    })
    .unwrap();
    Store::create(
        &CreateOpts {
            base,
            name: name.into(),
            cluster_size: 65536,
        },
        m,
        owner,
    )
    .unwrap()
}

/// Write every block of `name` once, 64 KiB at a time, from `reactor`.
fn write_whole(reactor: &Reactor, name: &str) {
    let ch = reactor.enter(|| {
        let desc = bdev::open(name, true, None).unwrap();
        let ch = desc.channel().unwrap();
        std::mem::forget(desc);
        ch
    });
    let blocks = 65536 / 4096;
    for at in (0..VOL / 4096).step_by(blocks as usize) {
        let done = Rc::new(Cell::new(None));
        let d = Rc::clone(&done);
        let sgl = Sgl::single(DmaBuf::new(65536).unwrap());
        reactor
            .enter(|| {
                ch.submit(
                    IoType::Write,
                    at,
                    blocks,
                    sgl,
                    IoCallback::new(move |r: IoDone| d.set(Some(r.status.is_ok()))),
                )
            })
            .map_err(|(e, _)| e)
            .unwrap();
        while done.get().is_none() {
            reactor.poll();
        }
        assert_eq!(done.get(), Some(true), "writing block {at} of {name}");
    }
}

#[test]
fn random_writes_allocate_nothing_unreplicated_and_split_in_sync() {
    let (engine, owner, reactor) = tandem_bench::owner_and_caller("alloc-test");
    let m = engine.messenger();
    let prim = store(&m, owner, "aprim");
    let sec = store(&m, owner, "asec");
    prim.create_volume("plain", VOL, false).unwrap();
    prim.create_volume("rep", VOL, false).unwrap();
    sec.create_volume("copy", VOL, false).unwrap();

    let rel = relationship::create(
        Config::new("alloc", "aprim/rep", "asec/copy", "asec/copy"),
        m.clone(),
        owner,
    )
    .unwrap();
    rel.start().unwrap();
    let t = Instant::now();
    while rel.state() != State::InSync {
        assert!(t.elapsed() < Duration::from_secs(60), "{}", rel.to_json());
        std::thread::sleep(Duration::from_millis(1));
    }
    // The common snapshot shares every cluster: copy each on write now, not while counting.
    for v in ["aprim/plain", "aprim/rep"] {
        write_whole(&reactor, v);
    }

    assert_eq!(
        allocations_in(|| drop(std::hint::black_box(Box::new(7u64)))),
        1,
        "the count sees this thread's allocations"
    );
    for (name, split) in [("aprim/plain", false), ("aprim/rep", true)] {
        let job = Job::open(&reactor, name, IoType::Write, 4096);
        // Warm up: the slabs and queues grow to this depth's peak once.
        job.run(&reactor, 32, 20_000);
        let before = rel.splitter().totals().split;
        let writes = 50_000;
        // The job's first 32 requests take their buffers outside the count; each completion
        // then submits the next with the buffers it handed back.
        reactor.enter(|| job.start(32, writes));
        let n = allocations_in(|| {
            while !job.done() {
                reactor.poll();
            }
        });
        assert_eq!(job.errors(), 0, "{name}");
        let split_writes = rel.splitter().totals().split - before;
        if split {
            assert!(
                split_writes >= writes,
                "the writes were split: {split_writes} of {writes}"
            );
        }
        assert_eq!(
            n,
            0,
            "{name}: {n} heap allocations in {writes} random 4 KiB writes at depth 32 (split: \
             {split}): {}",
            rel.to_json()
        );
    }
    assert_eq!(rel.state(), State::InSync, "{}", rel.to_json());
}

#[test]
fn nvme_tcp_host_and_target_allocate_nothing_per_io() {
    const NQN: &str = "nqn.2016-06.io.tandem:allocations";
    // The host's engine (its reactor is this thread), and the target's own engine, so that
    // the target never hands a connection to the host's reactor.
    let (_host_engine, _, reactor) = tandem_bench::owner_and_caller("alloc-host");
    malloc::create(malloc::MallocOpts {
        name: "alloc_ram".into(),
        num_blocks: VOL / 4096,
        block_size: 4096,
        uuid: 0,
    })
    .unwrap();
    let port = test_target::export(NQN, "alloc_ram");
    let (m, target_reactor) = test_target::reactor();
    let names = bdev::nvmf::attach(
        "alloc_host",
        HostOpts::new("127.0.0.1", &port.to_string(), NQN),
    )
    .unwrap();

    // The count sees what the target's reactor allocates.
    count_on(&m, target_reactor);
    m.send(target_reactor, || {
        drop(std::hint::black_box(Box::new(7u64)))
    })
    .map_err(|_| "send")
    .unwrap();
    let seen = counted_on(&m, target_reactor);
    assert!(seen >= 1, "the box was not counted: {seen}");

    for io_type in [IoType::Write, IoType::Read] {
        let job = Job::open(&reactor, &names[0], io_type, 4096);
        job.run(&reactor, 32, 20_000);
        let ios = 20_000;
        reactor.enter(|| job.start(32, ios));
        count_on(&m, target_reactor);
        let host = allocations_in(|| {
            while !job.done() {
                reactor.poll();
            }
        });
        let target = counted_on(&m, target_reactor);
        assert_eq!(job.errors(), 0, "{io_type:?}");
        assert_eq!(
            (host, target),
            (0, 0),
            "heap allocations (host's reactor, target's) in {ios} random 4 KiB {io_type:?}s at \
             depth 32 through NVMe/TCP"
        );
    }
    bdev::nvmf::detach("alloc_host").unwrap();
}
