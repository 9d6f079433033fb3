//! The bdev conformance suite: one list of behaviours, run against every backend (malloc, null,
//! uring on a file, error over malloc with no fault set), plus tests of what only some have.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use super::error::{self, Action, Fault, IoTypes, When};
use super::malloc::{self, MallocOpts};
use super::null::{self, NullOpts};
use super::uring::{self, UringOpts};
use super::*;
use crate::mem::{DmaBuf, Sgl};
use crate::reactor::sim::{Sim, SimRng};
use crate::reactor::{available_cores, CoreMask, Engine, EngineOpts, Mode};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Malloc,
    Null,
    Uring,
    ErrorOverMalloc,
    /// A namespace of this process's own NVMe/TCP target, reached through the host.
    Nvmf,
}

const BLOCKS: u64 = 4096;

/// A bdev of `kind` under a unique name; deleted (and its file removed) on drop.
struct Fixture {
    bdev: Bdev,
    extra: Vec<String>,
    file: Option<std::path::PathBuf>,
    /// An nvmf controller to detach, and the target subsystem behind it.
    remote: Option<(String, String)>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some((ctrl, nqn)) = &self.remote {
            let _ = super::nvmf::detach(ctrl);
            let _ = crate::nvmf::target::delete_subsystem(nqn);
        }
        let _ = delete(self.bdev.name());
        for name in &self.extra {
            let _ = delete(name);
        }
        if let Some(f) = &self.file {
            let _ = std::fs::remove_file(f);
        }
    }
}

fn unique(prefix: &str) -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!(
        "{prefix}{}_{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

fn make(kind: Kind, block_size: u32) -> Fixture {
    let name = unique(&format!("{kind:?}"));
    match kind {
        Kind::Malloc => Fixture {
            bdev: malloc::create(MallocOpts {
                name,
                num_blocks: BLOCKS,
                block_size,
                uuid: 0,
            })
            .unwrap(),
            extra: vec![],
            file: None,
            remote: None,
        },
        Kind::Null => Fixture {
            bdev: null::create(NullOpts {
                name,
                num_blocks: BLOCKS,
                block_size,
                uuid: 0,
            })
            .unwrap(),
            extra: vec![],
            file: None,
            remote: None,
        },
        Kind::Uring => {
            let path = std::env::temp_dir().join(format!("{name}.img"));
            let f = std::fs::File::create(&path).unwrap();
            f.set_len(BLOCKS * block_size as u64).unwrap();
            Fixture {
                bdev: uring::create(UringOpts {
                    name,
                    filename: path.to_str().unwrap().into(),
                    block_size,
                    uuid: 0,
                })
                .unwrap(),
                extra: vec![],
                file: Some(path),
                remote: None,
            }
        }
        Kind::ErrorOverMalloc => {
            let base = base_malloc(&name, block_size);
            let bdev = error::create(error::ErrorOpts {
                name: Some(name),
                base: base.clone(),
                uuid: 0,
            })
            .unwrap();
            Fixture {
                bdev,
                extra: vec![base],
                file: None,
                remote: None,
            }
        }
        Kind::Nvmf => {
            let base = base_malloc(&name, block_size);
            let nqn = format!("nqn.2016-06.io.tandem:{}", name.to_lowercase());
            let port = crate::nvmf::test_target::export(&nqn, &base);
            let mut opts = crate::host::HostOpts::new("127.0.0.1", &port.to_string(), &nqn);
            opts.queue_size = 32;
            let names = super::nvmf::attach(&name, opts).unwrap();
            Fixture {
                bdev: get(&names[0]).unwrap(),
                extra: vec![base],
                file: None,
                remote: Some((name, nqn)),
            }
        }
    }
}

/// The RAM disk under a stacked fixture (`<name>_base`).
fn base_malloc(name: &str, block_size: u32) -> String {
    let base = format!("{name}_base");
    malloc::create(MallocOpts {
        name: base.clone(),
        num_blocks: BLOCKS,
        block_size,
        uuid: 0,
    })
    .unwrap();
    base
}

fn retains_data(kind: Kind) -> bool {
    kind != Kind::Null
}

/// Poll the simulation until `done` holds, at most 10 s of wall time (uring completes in the
/// kernel, so this is not a pure count of rounds).
fn poll_until(sim: &Sim, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "I/O did not complete in 10 s");
        sim.poll_round();
    }
}

type Slot = Rc<RefCell<Option<IoDone>>>;

fn submit(
    ch: &Channel,
    io_type: IoType,
    offset: u64,
    blocks: u64,
    sgl: Sgl,
) -> std::result::Result<Slot, SubmitError> {
    let slot: Slot = Rc::new(RefCell::new(None));
    let s = slot.clone();
    ch.submit(
        io_type,
        offset,
        blocks,
        sgl,
        IoCallback::new(move |d| {
            assert!(s.borrow().is_none(), "a completion ran twice");
            *s.borrow_mut() = Some(d);
        }),
    )?;
    Ok(slot)
}

fn wait(sim: &Sim, slot: &Slot) -> IoDone {
    poll_until(sim, || slot.borrow().is_some());
    slot.borrow_mut().take().unwrap()
}

fn io(sim: &Sim, ch: &Channel, io_type: IoType, offset: u64, blocks: u64, sgl: Sgl) -> IoDone {
    let slot = submit(ch, io_type, offset, blocks, sgl)
        .unwrap_or_else(|(e, _)| panic!("{io_type} refused: {e}"));
    wait(sim, &slot)
}

fn buf_with(data: &[u8]) -> Sgl {
    let mut b = DmaBuf::new(data.len()).unwrap();
    b.as_mut_slice().copy_from_slice(data);
    Sgl::single(b)
}

fn read(sim: &Sim, ch: &Channel, offset: u64, blocks: u64, bs: u64) -> Vec<u8> {
    let d = io(
        sim,
        ch,
        IoType::Read,
        offset,
        blocks,
        Sgl::single(DmaBuf::new((blocks * bs) as usize).unwrap()),
    );
    d.status.unwrap();
    d.sgl.to_vec()
}

fn pattern(rng: &mut SimRng, len: usize) -> Vec<u8> {
    (0..len).map(|_| rng.next_u64() as u8).collect()
}

fn random_io_with_verification(kind: Kind) {
    let fx = make(kind, 512);
    let sim = Sim::new(1).unwrap();
    sim.enter(0, || {
        let desc = open(fx.bdev.name(), true, None).unwrap();
        let ch = desc.channel().unwrap();
        let bs = 512u64;
        let mut model = vec![0u8; (BLOCKS * bs) as usize];
        let mut rng = SimRng::new(42);
        for round in 0..60 {
            // A batch of up to 8 writes to disjoint ranges in flight at once.
            let mut batch = Vec::new();
            for lane in 0..8u64 {
                let lane_len = BLOCKS / 8;
                let blocks = 1 + rng.below(32) as u64;
                let offset = lane * lane_len + rng.below((lane_len - blocks) as usize) as u64;
                let data = pattern(&mut rng, (blocks * bs) as usize);
                let slot = submit(&ch, IoType::Write, offset, blocks, buf_with(&data))
                    .map_err(|(e, _)| e)
                    .unwrap();
                batch.push((slot, offset, data));
            }
            for (slot, offset, data) in batch {
                wait(&sim, &slot).status.unwrap();
                if retains_data(kind) {
                    model[(offset * bs) as usize..][..data.len()].copy_from_slice(&data);
                }
            }
            let offset = rng.below((BLOCKS - 64) as usize) as u64;
            let got = read(&sim, &ch, offset, 64, bs);
            assert_eq!(
                got,
                &model[(offset * bs) as usize..][..got.len()],
                "round {round}"
            );
        }
        let whole = read(&sim, &ch, 0, BLOCKS, bs);
        assert!(whole == model, "the whole device matches the model");
    });
}

fn vectored_io(kind: Kind) {
    let fx = make(kind, 4096);
    let sim = Sim::new(1).unwrap();
    sim.enter(0, || {
        let desc = open(fx.bdev.name(), true, None).unwrap();
        let ch = desc.channel().unwrap();
        let mut rng = SimRng::new(7);
        let data = pattern(&mut rng, 5 * 4096);
        // Written as 1 + 3 + 1 blocks from three buffers, one at an offset inside its buffer.
        let mut sgl = Sgl::new();
        let mut a = DmaBuf::new(4096).unwrap();
        a.as_mut_slice().copy_from_slice(&data[..4096]);
        let mut b = DmaBuf::new(4 * 4096).unwrap();
        b.as_mut_slice()[4096..].copy_from_slice(&data[4096..4 * 4096]);
        let mut c = DmaBuf::new(4096).unwrap();
        c.as_mut_slice().copy_from_slice(&data[4 * 4096..]);
        sgl.push(a, 0, 4096).unwrap();
        sgl.push(b, 4096, 3 * 4096).unwrap();
        sgl.push(c, 0, 4096).unwrap();
        io(&sim, &ch, IoType::Write, 10, 5, sgl).status.unwrap();
        // Read back split 2 + 3.
        let mut sgl = Sgl::new();
        sgl.push(DmaBuf::new(2 * 4096).unwrap(), 0, 2 * 4096)
            .unwrap();
        sgl.push(DmaBuf::new(3 * 4096).unwrap(), 0, 3 * 4096)
            .unwrap();
        let d = io(&sim, &ch, IoType::Read, 10, 5, sgl);
        d.status.unwrap();
        assert_eq!(d.sgl.segs().len(), 2, "the buffers come back as they went");
        let expect = if retains_data(kind) {
            data
        } else {
            vec![0; 5 * 4096]
        };
        assert!(d.sgl.to_vec() == expect);
    });
}

fn flush_unmap_write_zeroes(kind: Kind) {
    let fx = make(kind, 512);
    let sim = Sim::new(1).unwrap();
    sim.enter(0, || {
        let desc = open(fx.bdev.name(), true, None).unwrap();
        let ch = desc.channel().unwrap();
        let bs = 512u64;
        let ones = vec![0xA5u8; (64 * bs) as usize];
        io(&sim, &ch, IoType::Write, 128, 64, buf_with(&ones))
            .status
            .unwrap();
        io(&sim, &ch, IoType::Flush, 0, BLOCKS, Sgl::default())
            .status
            .unwrap();
        if retains_data(kind) {
            assert!(read(&sim, &ch, 128, 64, bs) == ones);
        }
        // Unmap 16 blocks in the middle: they read as zeros, their neighbours keep their data.
        io(&sim, &ch, IoType::Unmap, 136, 16, Sgl::default())
            .status
            .unwrap();
        let after = read(&sim, &ch, 128, 64, bs);
        assert!(after[(8 * bs) as usize..(24 * bs) as usize]
            .iter()
            .all(|&x| x == 0));
        if retains_data(kind) {
            assert!(after[..(8 * bs) as usize].iter().all(|&x| x == 0xA5));
            assert!(after[(24 * bs) as usize..].iter().all(|&x| x == 0xA5));
        }
        io(&sim, &ch, IoType::WriteZeroes, 128, 8, Sgl::default())
            .status
            .unwrap();
        let after = read(&sim, &ch, 128, 64, bs);
        assert!(after[..(24 * bs) as usize].iter().all(|&x| x == 0));
        if retains_data(kind) {
            assert!(after[(24 * bs) as usize..].iter().all(|&x| x == 0xA5));
        }
    });
}

fn bad_input_is_refused_without_a_completion(kind: Kind) {
    let fx = make(kind, 512);
    let sim = Sim::new(1).unwrap();
    sim.enter(0, || {
        let desc = open(fx.bdev.name(), true, None).unwrap();
        let ch = desc.channel().unwrap();
        let ran = Rc::new(Cell::new(0));
        let try_io = |io_type, offset, blocks, sgl: Sgl| -> (Error, usize) {
            let r = ran.clone();
            let len = sgl.len();
            let (e, back) = ch
                .submit(
                    io_type,
                    offset,
                    blocks,
                    sgl,
                    IoCallback::new(move |_| r.set(r.get() + 1)),
                )
                .expect_err("refused");
            assert_eq!(back.len(), len, "the buffers came back");
            (e, len)
        };
        let four = || Sgl::single(DmaBuf::new(4 * 512).unwrap());
        assert!(matches!(
            try_io(IoType::Read, BLOCKS - 2, 4, four()).0,
            Error::OutOfRange {
                capacity: BLOCKS,
                ..
            }
        ));
        assert!(matches!(
            try_io(IoType::Write, u64::MAX - 1, 4, four()).0,
            Error::OutOfRange { .. }
        ));
        assert!(matches!(
            try_io(IoType::Read, 0, 0, Sgl::default()).0,
            Error::ZeroLength
        ));
        assert!(matches!(
            try_io(IoType::Read, 0, 8, four()).0,
            Error::BufferSize {
                need: 4096,
                have: 2048
            }
        ));
        assert!(matches!(
            try_io(IoType::Write, 0, 2, four()).0,
            Error::BufferSize {
                need: 1024,
                have: 2048
            }
        ));
        assert!(matches!(
            try_io(IoType::Flush, 0, 4, four()).0,
            Error::BufferSize { need: 0, .. }
        ));
        if fx.bdev.buf_align() > 1 {
            let mut odd = Sgl::new();
            odd.push(DmaBuf::new(8192).unwrap(), 1, 2048).unwrap();
            assert!(matches!(
                try_io(IoType::Write, 0, 4, odd).0,
                Error::Misaligned { .. }
            ));
        }
        let ro = open(fx.bdev.name(), false, None).unwrap();
        let ro_ch = ro.channel().unwrap();
        let r = ran.clone();
        let (e, _) = ro_ch
            .write(0, 4, four(), move |_| r.set(r.get() + 1))
            .unwrap_err();
        assert!(matches!(e, Error::ReadOnly { .. }));
        let r = ran.clone();
        assert!(ro_ch
            .read(0, 4, four(), move |d| {
                d.status.unwrap();
                r.set(r.get() + 100)
            })
            .is_ok());
        drop(ro);
        let r = ran.clone();
        let (e, _) = ro_ch
            .read(0, 4, four(), move |_| r.set(r.get() + 1))
            .unwrap_err();
        assert!(matches!(e, Error::DescClosed { .. }));
        poll_until(&sim, || ran.get() >= 100);
        for _ in 0..10 {
            sim.poll_round();
        }
        assert_eq!(ran.get(), 100, "only the accepted read completed");
    });
}

fn hot_remove_with_io_in_flight(kind: Kind) {
    let fx = make(kind, 512);
    let sim = Sim::new(1).unwrap();
    let events = Arc::new(Mutex::new(Vec::new()));
    sim.enter(0, || {
        let ev = events.clone();
        let desc = open(
            fx.bdev.name(),
            true,
            Some(Arc::new(move |e| ev.lock().unwrap().push(e))),
        )
        .unwrap();
        let ch = desc.channel().unwrap();
        let slots: Vec<Slot> = (0..64)
            .map(|i| {
                submit(
                    &ch,
                    IoType::Write,
                    i * 8,
                    8,
                    Sgl::single(DmaBuf::new(4096).unwrap()),
                )
                .map_err(|(e, _)| e)
                .unwrap()
            })
            .collect();
        delete(fx.bdev.name()).unwrap();
        assert!(get(fx.bdev.name()).is_none());
        let (e, _) = submit(
            &ch,
            IoType::Read,
            0,
            1,
            Sgl::single(DmaBuf::new(512).unwrap()),
        )
        .map(|_| ())
        .unwrap_err();
        assert!(matches!(e, Error::Removed { .. }));
        assert!(matches!(
            open(fx.bdev.name(), false, None),
            Err(Error::NotFound(_))
        ));
        for s in &slots {
            let d = wait(&sim, s);
            assert!(d.status.is_ok(), "in-flight I/O completed normally");
        }
        sim.run_until_idle(100).unwrap();
        assert_eq!(*events.lock().unwrap(), vec![BdevEvent::Remove]);
        assert!(fx.bdev.is_removed());
    });
}

fn channels_on_two_reactors_at_once(kind: Kind) {
    let fx = make(kind, 512);
    let cores = available_cores();
    let engine = Engine::start(EngineOpts {
        core_mask: Some(CoreMask::from_cores([cores[0], cores[cores.len() - 1]]).unwrap()),
        mode: Mode::Adaptive,
        ..EngineOpts::default()
    })
    .unwrap();
    let ids = engine.reactor_ids();
    let (tx, rx) = mpsc::channel();
    for (lane, &id) in ids.iter().enumerate() {
        let (name, tx) = (fx.bdev.name().to_owned(), tx.clone());
        engine
            .send(id, move || {
                // Each reactor writes its half with its own pattern, then reads it back.
                let desc = Rc::new(open(&name, true, None).unwrap());
                let ch = Rc::new(desc.channel().unwrap());
                let half = BLOCKS / 2;
                let base = lane as u64 * half;
                let byte = 0x10 + lane as u8;
                let mut b = DmaBuf::new((half * 512) as usize).unwrap();
                b.as_mut_slice().fill(byte);
                let ch2 = ch.clone();
                ch.write(base, half, Sgl::single(b), move |d| {
                    d.status.unwrap();
                    let keep = ch2.clone();
                    ch2.read(base, half, d.sgl, move |d| {
                        let _ = (&keep, &desc);
                        d.status.unwrap();
                        tx.send((lane, d.sgl.to_vec().iter().all(|&x| x == byte)))
                            .unwrap();
                    })
                    .map_err(|(e, _)| e)
                    .unwrap();
                })
                .map_err(|(e, _)| e)
                .unwrap();
            })
            .unwrap();
    }
    let mut results: Vec<_> = (0..ids.len())
        .map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap())
        .collect();
    results.sort();
    for (lane, ok) in results {
        assert!(
            ok || !retains_data(kind),
            "lane {lane} read back what it wrote"
        );
    }
    let stat = fx.bdev.iostat();
    assert_eq!(stat.num_write_ops, ids.len() as u64);
    assert_eq!(stat.num_read_ops, ids.len() as u64);
    assert_eq!(stat.bytes_written, BLOCKS / 2 * 512 * ids.len() as u64);
    engine.stop().unwrap();
}

macro_rules! conformance {
    ($($kind:ident => $module:ident),*) => {$(
        mod $module {
            use super::*;
            #[test] fn random_io_with_verification() { super::random_io_with_verification(Kind::$kind) }
            #[test] fn vectored_io() { super::vectored_io(Kind::$kind) }
            #[test] fn flush_unmap_write_zeroes() { super::flush_unmap_write_zeroes(Kind::$kind) }
            #[test] fn bad_input_is_refused_without_a_completion() { super::bad_input_is_refused_without_a_completion(Kind::$kind) }
            #[test] fn hot_remove_with_io_in_flight() { super::hot_remove_with_io_in_flight(Kind::$kind) }
            #[test] fn channels_on_two_reactors_at_once() { super::channels_on_two_reactors_at_once(Kind::$kind) }
        }
    )*};
}

conformance!(Malloc => malloc_bdev, Null => null_bdev, Uring => uring_bdev, ErrorOverMalloc => error_bdev, Nvmf => nvmf_bdev);

// ---- What only some backends have ----

/// An error bdev over malloc, in a one-reactor simulation, with a channel to each.
fn error_fixture() -> (Fixture, Sim) {
    (make(Kind::ErrorOverMalloc, 512), Sim::new(1).unwrap())
}

fn outcomes(sim: &Sim, ch: &Channel, n: u64, io_type: IoType) -> Vec<bool> {
    (0..n)
        .map(|i| {
            let sgl = if io_type.has_data() {
                Sgl::single(DmaBuf::new(512).unwrap())
            } else {
                Sgl::default()
            };
            io(sim, ch, io_type, i, 1, sgl).status.is_ok()
        })
        .collect()
}

#[test]
fn error_bdev_fails_by_type_nth_range_and_fraction() {
    let (fx, sim) = error_fixture();
    let name = fx.bdev.name().to_owned();
    sim.enter(0, || {
        let desc = open(&name, true, None).unwrap();
        let ch = desc.channel().unwrap();
        error::set_fault(&name, Fault::every(Action::Fail, IoTypes::WRITES)).unwrap();
        assert_eq!(outcomes(&sim, &ch, 3, IoType::Write), vec![false; 3]);
        assert_eq!(outcomes(&sim, &ch, 3, IoType::Read), vec![true; 3]);
        error::set_fault(
            &name,
            Fault {
                when: When::Nth(3),
                ..Fault::every(Action::Fail, IoTypes::ALL)
            },
        )
        .unwrap();
        assert_eq!(
            outcomes(&sim, &ch, 5, IoType::Read),
            vec![true, true, false, true, true]
        );
        error::set_fault(
            &name,
            Fault {
                lba_range: Some((2, 4)),
                ..Fault::every(Action::Fail, IoTypes::ALL)
            },
        )
        .unwrap();
        assert_eq!(
            outcomes(&sim, &ch, 5, IoType::Read),
            vec![true, true, false, false, true]
        );
        let frac = |seed| {
            error::set_fault(
                &name,
                Fault {
                    when: When::Fraction {
                        per_million: 500_000,
                        seed,
                    },
                    ..Fault::every(Action::Fail, IoTypes::ALL)
                },
            )
            .unwrap();
            outcomes(&sim, &ch, 200, IoType::Read)
        };
        let (a, b) = (frac(9), frac(9));
        assert_eq!(a, b, "a seeded fraction repeats");
        let failed = a.iter().filter(|ok| !**ok).count();
        assert!((60..140).contains(&failed), "about half failed: {failed}");
        error::clear(&name).unwrap();
        assert_eq!(outcomes(&sim, &ch, 3, IoType::Write), vec![true; 3]);
    });
}

#[test]
fn error_bdev_tears_a_write() {
    let (fx, sim) = error_fixture();
    let name = fx.bdev.name().to_owned();
    sim.enter(0, || {
        let desc = open(&name, true, None).unwrap();
        let ch = desc.channel().unwrap();
        io(&sim, &ch, IoType::Write, 0, 8, buf_with(&[1u8; 8 * 512]))
            .status
            .unwrap();
        error::set_fault(
            &name,
            Fault::every(Action::Tear { blocks: 3 }, IoTypes::WRITES),
        )
        .unwrap();
        let d = io(&sim, &ch, IoType::Write, 0, 8, buf_with(&[2u8; 8 * 512]));
        assert_eq!(d.status, Err(IoError::Torn { written_blocks: 3 }));
        assert_eq!(d.sgl.len(), 8 * 512, "the caller's buffers come back whole");
        error::clear(&name).unwrap();
        let got = read(&sim, &ch, 0, 8, 512);
        assert!(got[..3 * 512].iter().all(|&x| x == 2) && got[3 * 512..].iter().all(|&x| x == 1));
    });
}

#[test]
fn error_bdev_cache_holds_writes_until_a_flush_and_a_power_cut_loses_them() {
    let (fx, sim) = error_fixture();
    let name = fx.bdev.name().to_owned();
    let base = fx.extra[0].clone();
    sim.enter(0, || {
        let desc = open(&name, true, None).unwrap();
        let ch = desc.channel().unwrap();
        let base_desc = open(&base, false, None).unwrap();
        let base_ch = base_desc.channel().unwrap();
        error::set_volatile_cache(&name, true).unwrap();
        io(&sim, &ch, IoType::Write, 0, 2, buf_with(&[1u8; 1024]))
            .status
            .unwrap();
        io(&sim, &ch, IoType::Write, 1, 2, buf_with(&[2u8; 1024]))
            .status
            .unwrap();
        // Reads see the cache, newest write on top; the media does not have it yet.
        let got = read(&sim, &ch, 0, 3, 512);
        assert!(got[..512].iter().all(|&x| x == 1) && got[512..].iter().all(|&x| x == 2));
        assert!(read(&sim, &base_ch, 0, 3, 512).iter().all(|&x| x == 0));
        io(&sim, &ch, IoType::Flush, 0, 1, Sgl::default())
            .status
            .unwrap();
        assert_eq!(
            read(&sim, &base_ch, 0, 3, 512),
            got,
            "a flush writes the cache back"
        );
        // Cached and unflushed at the cut: lost. Every I/O after the cut fails.
        io(&sim, &ch, IoType::Write, 4, 1, buf_with(&[3u8; 512]))
            .status
            .unwrap();
        error::set_fault(
            &name,
            Fault {
                when: When::Nth(1),
                ..Fault::every(
                    Action::PowerCut {
                        tear: false,
                        keep_seed: 0,
                    },
                    IoTypes::WRITES,
                )
            },
        )
        .unwrap();
        assert!(io(&sim, &ch, IoType::Write, 5, 1, buf_with(&[4u8; 512]))
            .status
            .is_err());
        assert!(error::is_dead(&name).unwrap());
        assert!(
            outcomes(&sim, &ch, 2, IoType::Read).iter().all(|ok| !ok),
            "dead"
        );
        assert!(
            read(&sim, &base_ch, 4, 2, 512).iter().all(|&x| x == 0),
            "both writes lost"
        );
        error::clear(&name).unwrap();
        assert_eq!(
            outcomes(&sim, &ch, 2, IoType::Read),
            vec![true; 2],
            "revived"
        );
        drop(base_ch);
    });
}

#[test]
fn error_bdev_power_cut_tears_the_write_it_hits() {
    let (fx, sim) = error_fixture();
    let name = fx.bdev.name().to_owned();
    sim.enter(0, || {
        let desc = open(&name, true, None).unwrap();
        let ch = desc.channel().unwrap();
        error::set_fault(
            &name,
            Fault::every(
                Action::PowerCut {
                    tear: true,
                    keep_seed: 0,
                },
                IoTypes::WRITES,
            ),
        )
        .unwrap();
        let d = io(&sim, &ch, IoType::Write, 0, 8, buf_with(&[9u8; 8 * 512]));
        assert_eq!(d.status, Err(IoError::Torn { written_blocks: 4 }));
        error::clear(&name).unwrap();
        let got = read(&sim, &ch, 0, 8, 512);
        assert!(got[..4 * 512].iter().all(|&x| x == 9) && got[4 * 512..].iter().all(|&x| x == 0));
    });
}

#[test]
fn error_bdev_drops_until_cleared_and_delays_on_a_sleeping_reactor() {
    let fx = make(Kind::ErrorOverMalloc, 512);
    let name = fx.bdev.name().to_owned();
    let engine = Engine::start(EngineOpts {
        core_mask: Some(CoreMask::from_cores([available_cores()[0]]).unwrap()),
        mode: Mode::Adaptive,
        ..EngineOpts::default()
    })
    .unwrap();
    let r0 = engine.reactor_ids()[0];
    let (tx, rx) = mpsc::channel::<(&'static str, std::result::Result<(), IoError>, Instant)>();
    let n = name.clone();
    error::set_fault(&name, Fault::every(Action::Drop, IoTypes::READS)).unwrap();
    engine
        .send(r0, move || {
            let desc = Rc::new(open(&n, true, None).unwrap());
            let ch = Rc::new(desc.channel().unwrap());
            let keep = (desc, ch.clone());
            ch.read(0, 1, Sgl::single(DmaBuf::new(512).unwrap()), move |d| {
                let _ = &keep;
                tx.send(("dropped", d.status, Instant::now())).unwrap();
            })
            .map_err(|(e, _)| e)
            .unwrap();
        })
        .unwrap();
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "a dropped read never answers"
    );
    error::clear(&name).unwrap();
    let (what, status, _) = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("released by the clear");
    assert_eq!((what, status), ("dropped", Err(IoError::Aborted)));

    error::set_fault(
        &name,
        Fault::every(Action::Delay(Duration::from_millis(50)), IoTypes::ALL),
    )
    .unwrap();
    let (tx, rx) = mpsc::channel();
    let n = name.clone();
    let start = Instant::now();
    engine
        .send(r0, move || {
            let desc = Rc::new(open(&n, true, None).unwrap());
            let ch = Rc::new(desc.channel().unwrap());
            let keep = (desc, ch.clone());
            ch.write(0, 1, Sgl::single(DmaBuf::new(512).unwrap()), move |d| {
                let _ = &keep;
                tx.send((d.status, Instant::now())).unwrap();
            })
            .map_err(|(e, _)| e)
            .unwrap();
        })
        .unwrap();
    let (status, at) = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the delayed write completed");
    status.unwrap();
    let took = at - start;
    assert!(
        took >= Duration::from_millis(50) && took < Duration::from_secs(2),
        "{took:?}"
    );
    engine.stop().unwrap();
}

#[test]
fn deleting_an_error_bdev_releases_the_io_it_holds() {
    let (fx, sim) = error_fixture();
    let name = fx.bdev.name().to_owned();
    sim.enter(0, || {
        let desc = open(&name, true, None).unwrap();
        let ch = desc.channel().unwrap();
        error::set_fault(&name, Fault::every(Action::Drop, IoTypes::ALL)).unwrap();
        let slot = submit(
            &ch,
            IoType::Read,
            0,
            1,
            Sgl::single(DmaBuf::new(512).unwrap()),
        )
        .map_err(|(e, _)| e)
        .unwrap();
        for _ in 0..20 {
            sim.poll_round();
        }
        assert!(slot.borrow().is_none(), "held while the fault stands");
        delete(&name).unwrap();
        assert_eq!(
            wait(&sim, &slot).status,
            Err(IoError::Aborted),
            "released by the delete"
        );
    });
}

#[test]
fn uring_io_in_flight_at_shutdown_completes_before_its_buffers_go() {
    let fx = make(Kind::Uring, 4096);
    let engine = Engine::start(EngineOpts {
        core_mask: Some(CoreMask::from_cores([available_cores()[0]]).unwrap()),
        mode: Mode::Poll,
        ..EngineOpts::default()
    })
    .unwrap();
    let r0 = engine.reactor_ids()[0];
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (d, name) = (done.clone(), fx.bdev.name().to_owned());
    let (tx, rx) = mpsc::channel();
    engine
        .send(r0, move || {
            let desc = open(&name, true, None).unwrap();
            let ch = desc.channel().unwrap();
            for i in 0..256u64 {
                let d = d.clone();
                ch.read(
                    i % BLOCKS,
                    1,
                    Sgl::single(DmaBuf::new(4096).unwrap()),
                    move |io| {
                        assert!(io.sgl.len() == 4096);
                        d.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    },
                )
                .map_err(|(e, _)| e)
                .unwrap();
            }
            // Released with reads still in the ring: the channel's poller keeps it until they
            // complete, or, here, until the reactor shuts down first.
            drop((ch, desc));
            tx.send(()).unwrap();
        })
        .unwrap();
    rx.recv().unwrap();
    engine.stop().unwrap();
    assert_eq!(
        done.load(std::sync::atomic::Ordering::SeqCst),
        256,
        "every read completed exactly once"
    );
}

#[test]
fn a_claimed_base_cannot_be_deleted_or_claimed_twice() {
    let fx = make(Kind::ErrorOverMalloc, 512);
    let base = fx.extra[0].clone();
    assert!(matches!(delete(&base), Err(Error::Claimed { .. })));
    assert!(matches!(
        error::create(error::ErrorOpts {
            name: None,
            base: base.clone(),
            uuid: 0,
        }),
        Err(Error::Claimed { .. })
    ));
    assert!(matches!(
        error::set_fault(&base, Fault::every(Action::Fail, IoTypes::ALL)),
        Err(Error::InvalidArgument(_))
    ));
    delete(fx.bdev.name()).unwrap();
    delete(&base).unwrap();
}

/// A RAM backend without write-zeroes, to prove the generic layer's emulation.
struct NoZeroes(Mutex<Vec<u8>>);

struct NoZeroesChannel(Arc<NoZeroes>);

struct NoZeroesBackend(Arc<NoZeroes>);

impl Backend for NoZeroesBackend {
    fn product_name(&self) -> &'static str {
        "test"
    }
    fn supports(&self, t: IoType) -> bool {
        t != IoType::WriteZeroes
    }
    fn open_channel(&self) -> Result<Box<dyn BackendChannel>> {
        Ok(Box::new(NoZeroesChannel(self.0.clone())))
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn save_config(&self, _: &Bdev) -> Option<serde_json::Value> {
        None
    }
}

impl BackendChannel for NoZeroesChannel {
    fn submit(
        &mut self,
        mut io: BdevIo,
        done: &Completions,
    ) -> std::result::Result<(), (Error, BdevIo)> {
        let mut mem = self.0 .0.lock().unwrap();
        let at = (io.offset_blocks * 512) as usize;
        match io.io_type {
            IoType::Write => {
                let data = io.sgl.to_vec();
                mem[at..at + data.len()].copy_from_slice(&data);
            }
            IoType::Read => {
                let len = io.sgl.len();
                io.sgl.copy_from(&mem[at..at + len]);
            }
            other => panic!("{other} reached a backend that lacks it"),
        }
        done.complete(io, Ok(()));
        Ok(())
    }
}

#[test]
fn write_zeroes_is_emulated_by_writes_where_a_backend_lacks_it() {
    let blocks = 8192u64; // 4 MiB: several emulation chunks
    let ram = Arc::new(NoZeroes(Mutex::new(vec![0xFF; (blocks * 512) as usize])));
    let name = unique("nozeroes");
    register(
        Bdev::new(
            BdevInfo {
                name: name.clone(),
                uuid: 0,
                block_size: 512,
                num_blocks: blocks,
            },
            Box::new(NoZeroesBackend(ram.clone())),
        )
        .unwrap(),
    )
    .unwrap();
    let sim = Sim::new(1).unwrap();
    sim.enter(0, || {
        let desc = open(&name, true, None).unwrap();
        let ch = desc.channel().unwrap();
        io(
            &sim,
            &ch,
            IoType::WriteZeroes,
            1,
            blocks - 2,
            Sgl::default(),
        )
        .status
        .unwrap();
    });
    let mem = ram.0.lock().unwrap();
    assert!(mem[..512].iter().all(|&x| x == 0xFF));
    assert!(mem[512..mem.len() - 512].iter().all(|&x| x == 0));
    assert!(mem[mem.len() - 512..].iter().all(|&x| x == 0xFF));
    drop(mem);
    delete(&name).unwrap();
}

#[test]
fn iostat_sums_every_channel_and_channels_are_shared_then_released() {
    let fx = make(Kind::Malloc, 512);
    let sim = Sim::new(2).unwrap();
    for r in 0..2 {
        sim.enter(r, || {
            let d1 = open(fx.bdev.name(), true, None).unwrap();
            let d2 = open(fx.bdev.name(), true, None).unwrap();
            let (c1, c2) = (d1.channel().unwrap(), d2.channel().unwrap());
            assert!(
                Rc::ptr_eq(&c1.shared, &c2.shared),
                "one channel per (bdev, reactor)"
            );
            io(
                &sim,
                &c1,
                IoType::Write,
                0,
                2,
                Sgl::single(DmaBuf::new(1024).unwrap()),
            )
            .status
            .unwrap();
            io(
                &sim,
                &c2,
                IoType::Read,
                0,
                1,
                Sgl::single(DmaBuf::new(512).unwrap()),
            )
            .status
            .unwrap();
            io(&sim, &c2, IoType::Flush, 0, 1, Sgl::default())
                .status
                .unwrap();
            assert_eq!(
                crate::reactor::poller_names().unwrap(),
                vec!["bdev_channel"]
            );
        });
        sim.run_until_idle(10).unwrap();
        assert!(
            sim.enter(r, || crate::reactor::poller_names().unwrap())
                .is_empty(),
            "released with its last user"
        );
    }
    let s = fx.bdev.iostat();
    assert_eq!(
        (
            s.num_write_ops,
            s.bytes_written,
            s.num_read_ops,
            s.bytes_read,
            s.num_flush_ops
        ),
        (2, 2048, 2, 1024, 2)
    );
}

#[test]
fn uring_reports_a_file_system_that_refuses_o_direct() {
    // procfs refuses O_DIRECT; so do some FUSE and network file systems.
    let err = uring::create(UringOpts {
        name: unique("procfs"),
        filename: "/proc/self/status".into(),
        block_size: 0,
        uuid: 0,
    })
    .unwrap_err();
    assert!(matches!(err, Error::DirectIoRefused { .. }), "{err}");
    let err = uring::create(UringOpts {
        name: unique("missing"),
        filename: "/nonexistent/x.img".into(),
        block_size: 0,
        uuid: 0,
    })
    .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Os {
                errno: Errno(libc::ENOENT),
                ..
            }
        ),
        "{err}"
    );
}
