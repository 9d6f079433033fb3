//! 4 KiB random read and write on one reactor, queue depths 1, 32 and 128, for the `null` and
//! `malloc` bdevs: the cost of the bdev layer itself, with no device under it (null) and with a
//! memory copy (malloc). Criterion reports time per I/O and I/Os per second.
//!
//! `cargo bench -p tandem-bench --bench bdev`

use criterion::Criterion;
use tandem::bdev::{malloc, null};
use tandem::reactor::{Engine, EngineOpts};
use tandem_bench::io_job::random_4k_group;

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
        let group = format!("bdev_4k_{}", name.to_lowercase());
        random_4k_group(&mut c, &group, &reactor, name, &[1, 32, 128]);
    }
    c.final_summary();
}
