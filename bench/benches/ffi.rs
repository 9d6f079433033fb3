//! The cost of the C ABI: a 4 KiB read from a malloc bdev at queue depth 1 on one thread,
//! submitted and completed through the exported C functions (`tandem_read`,
//! `tandem_thread_poll`, a C completion callback), against the same read through the Rust API
//! on the same kind of thread. Prints the overhead per I/O in nanoseconds.
//!
//! `cargo bench -p tandem-bench --bench ffi`

use std::cell::Cell;
use std::ffi::{c_int, c_void};
use std::rc::Rc;
use std::time::Instant;

use criterion::Criterion;
use tandem::bdev::{self, malloc};
use tandem::mem::{DmaBuf, Sgl};
use tandem::reactor::{Engine, EngineOpts};
use tandem_bench::{estimate_ns, print_ratios};
use tandem_ffi::*;

const BLOCKS: u64 = 65536; // 32 MiB of 512-byte blocks
const IO_BLOCKS: u64 = 8; // 4 KiB

/// The C side's state: one I/O in flight at a time, submitted by a poller as firmware would.
struct CLoop {
    ch: *mut tandem_channel,
    buf: *mut c_void,
    in_flight: bool,
    submitted: u64,
    completed: u64,
    target: u64,
}

unsafe extern "C" fn c_done(arg: *mut c_void, status: c_int) {
    // SAFETY: `arg` is the CLoop the benchmark passed; it outlives every I/O.
    let l = unsafe { &mut *arg.cast::<CLoop>() };
    assert_eq!(status, 0);
    l.in_flight = false;
    l.completed += 1;
}

unsafe extern "C" fn c_submit(arg: *mut c_void) -> c_int {
    // SAFETY: as in `c_done`.
    let l = unsafe { &mut *arg.cast::<CLoop>() };
    if l.in_flight || l.submitted >= l.target {
        return 0;
    }
    let rc = tandem_read(
        l.ch,
        l.buf,
        offset(l.submitted),
        IO_BLOCKS,
        Some(c_done),
        arg,
    );
    assert_eq!(rc, 0);
    l.in_flight = true;
    l.submitted += 1;
    1
}

/// Completions so far; written by `c_done` inside `tandem_thread_poll` on this same thread.
fn completed(l: *const CLoop) -> u64 {
    // SAFETY: `l` points at the benchmark's live CLoop; no other thread touches it.
    unsafe { (*l).completed }
}

unsafe extern "C" fn start_poller(arg: *mut c_void) {
    let mut p: *mut tandem_poller = std::ptr::null_mut();
    assert_eq!(tandem_poller_register(Some(c_submit), arg, 0, &mut p), 0);
}

struct CSetup {
    desc: *mut tandem_desc,
    ch: *mut tandem_channel,
}

unsafe extern "C" fn get_channel(arg: *mut c_void) {
    // SAFETY: `arg` is the CSetup the benchmark passed, alive until it has polled this through.
    let s = unsafe { &mut *arg.cast::<CSetup>() };
    assert_eq!(tandem_desc_get_channel(s.desc, &mut s.ch), 0);
}

fn offset(i: u64) -> u64 {
    (i.wrapping_mul(0x9E37_79B9) % (BLOCKS / IO_BLOCKS)) * IO_BLOCKS
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let mut g = c.benchmark_group("read_4k_malloc_qd1");

    // Through the C ABI, as a C program would call it.
    let mut opts = std::mem::MaybeUninit::<tandem_env_opts>::uninit();
    assert_eq!(
        tandem_env_opts_init(opts.as_mut_ptr(), std::mem::size_of::<tandem_env_opts>()),
        0
    );
    // SAFETY: initialised by tandem_env_opts_init just above.
    let opts = unsafe { opts.assume_init() };
    assert_eq!(tandem_env_start(&opts), 0);
    let mut b = std::mem::MaybeUninit::<tandem_bdev_opts>::uninit();
    assert_eq!(
        tandem_bdev_opts_init(b.as_mut_ptr(), std::mem::size_of::<tandem_bdev_opts>()),
        0
    );
    // SAFETY: initialised by tandem_bdev_opts_init just above.
    let mut b = unsafe { b.assume_init() };
    b.name = c"CMalloc".as_ptr();
    b.num_blocks = BLOCKS;
    assert_eq!(tandem_bdev_malloc_create(&b), 0);
    let mut thread: *mut tandem_thread = std::ptr::null_mut();
    assert_eq!(tandem_thread_create(c"bench".as_ptr(), &mut thread), 0);
    let mut id = 0u32;
    assert_eq!(tandem_thread_id(thread, &mut id), 0);
    let mut setup = CSetup {
        desc: std::ptr::null_mut(),
        ch: std::ptr::null_mut(),
    };
    assert_eq!(
        tandem_bdev_open(
            c"CMalloc".as_ptr(),
            true,
            None,
            std::ptr::null_mut(),
            &mut setup.desc
        ),
        0
    );
    assert_eq!(
        tandem_send_msg(id, Some(get_channel), (&mut setup as *mut CSetup).cast()),
        0
    );
    while setup.ch.is_null() {
        tandem_thread_poll(thread);
    }
    let mut cbuf: *mut c_void = std::ptr::null_mut();
    assert_eq!(tandem_dma_alloc(4096, &mut cbuf), 0);
    let mut cl = CLoop {
        ch: setup.ch,
        buf: cbuf,
        in_flight: false,
        submitted: 0,
        completed: 0,
        target: 0,
    };
    let cl_ptr: *mut CLoop = &mut cl;
    assert_eq!(tandem_send_msg(id, Some(start_poller), cl_ptr.cast()), 0);
    tandem_thread_poll(thread);
    g.bench_function("c_abi", |bench| {
        bench.iter_custom(|iters| {
            // SAFETY: the loop state lives on this stack frame; the engine thread touches it only
            // inside tandem_thread_poll, which this same thread calls.
            let target = unsafe {
                (*cl_ptr).target += iters;
                (*cl_ptr).target
            };
            let start = Instant::now();
            while completed(cl_ptr) < target {
                tandem_thread_poll(thread);
            }
            start.elapsed()
        })
    });

    // Through the Rust API, on a bring-your-own reactor of its own engine.
    let engine = Engine::start(EngineOpts::default()).unwrap();
    let reactor = engine.create_thread("bench_rust").unwrap();
    malloc::create(malloc::MallocOpts {
        name: "RMalloc".into(),
        num_blocks: BLOCKS,
        block_size: 512,
        uuid: 0,
    })
    .unwrap();
    let desc = bdev::open("RMalloc", true, None).unwrap();
    let ch = reactor.enter(|| desc.channel().unwrap());
    // The same loop in Rust: a poller submits when nothing is in flight.
    struct RLoop {
        sgl: Cell<Option<Sgl>>,
        submitted: Cell<u64>,
        completed: Cell<u64>,
        target: Cell<u64>,
    }
    let rl = Rc::new(RLoop {
        sgl: Cell::new(Some(Sgl::single(DmaBuf::new(4096).unwrap()))),
        submitted: Cell::new(0),
        completed: Cell::new(0),
        target: Cell::new(0),
    });
    let (r2, ch) = (rl.clone(), Rc::new(ch));
    reactor.enter(|| {
        tandem::reactor::register_poller("submit", move || {
            let Some(sgl) = r2.sgl.take() else {
                return tandem::reactor::PollStatus::Idle;
            };
            if r2.submitted.get() >= r2.target.get() {
                r2.sgl.set(Some(sgl));
                return tandem::reactor::PollStatus::Idle;
            }
            let r3 = r2.clone();
            ch.read(offset(r2.submitted.get()), IO_BLOCKS, sgl, move |d| {
                assert!(d.status.is_ok());
                r3.sgl.set(Some(d.sgl));
                r3.completed.set(r3.completed.get() + 1);
            })
            .map_err(|(e, _)| e)
            .unwrap();
            r2.submitted.set(r2.submitted.get() + 1);
            tandem::reactor::PollStatus::Busy
        })
        .unwrap()
    });
    g.bench_function("rust", |bench| {
        bench.iter_custom(|iters| {
            rl.target.set(rl.target.get() + iters);
            let start = Instant::now();
            while rl.completed.get() < rl.target.get() {
                reactor.poll();
            }
            start.elapsed()
        })
    });
    g.finish();
    c.final_summary();
    print_ratios(
        "C ABI",
        &[("read_4k_malloc_qd1/c_abi", "read_4k_malloc_qd1/rust")],
    );
    if let (Some(cn), Some(rn)) = (
        estimate_ns("read_4k_malloc_qd1/c_abi"),
        estimate_ns("read_4k_malloc_qd1/rust"),
    ) {
        println!("C ABI overhead per 4 KiB read: {:.1} ns", cn - rn);
    }
}
