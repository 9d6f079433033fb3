//! Relationships in one process, on real reactors: a primary volume in one store, the secondary
//! volume in another (reached as a local bdev, or through an error bdev for faults), a writer
//! that never stops, and a byte-for-byte comparison at the end of each.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::relationship::{self, Config, Policy, Relationship};
use super::state::State;
use crate::bdev::error::{self, Action, ErrorOpts, Fault, IoTypes};
use crate::bdev::malloc::{self, MallocOpts};
use crate::bdev::IoError;
use crate::reactor::sim::SimRng;
use crate::store::runtime_tests::{unique, Rig};

const VOL: u64 = 16 << 20;
const BLOCKS: u64 = VOL / 4096;

struct Pair {
    rig: Arc<Rig>,
    primary: String,
    /// The secondary volume's bdev, and the bdev the relationship writes it through.
    secondary: String,
    secondary_volume: String,
    via: String,
}

fn pair(via_error_bdev: bool) -> Pair {
    let rig = Arc::new(Rig::new(2));
    let mut names = Vec::new();
    for side in ["p", "s"] {
        let base = unique(&format!("repl_{side}"));
        malloc::create(MallocOpts {
            name: base.clone(),
            num_blocks: (64 << 20) / 4096,
            block_size: 4096,
            uuid: 0,
        })
        .expect("a malloc bdev");
        let store = rig.new_store(&base, 64 << 10);
        store.create_volume("v", VOL, false).expect("a volume");
        names.push(format!("{}/v", store.name()));
    }
    let secondary = names.pop().unwrap();
    let primary = names.pop().unwrap();
    let via = if via_error_bdev {
        error::create(ErrorOpts {
            name: Some(unique("EE_sec")),
            base: secondary.clone(),
            uuid: 0,
        })
        .expect("an error bdev")
        .name()
        .to_owned()
    } else {
        secondary.clone()
    };
    Pair {
        rig,
        primary,
        secondary_volume: secondary.clone(),
        secondary,
        via,
    }
}

impl Pair {
    fn relationship(&self, policy: Policy) -> Arc<Relationship> {
        let mut cfg = Config::new(
            &unique("r"),
            &self.primary,
            &self.via,
            &self.secondary_volume,
        );
        cfg.policy = policy;
        relationship::create(cfg, self.rig.m.clone(), self.rig.owner()).expect("a relationship")
    }

    /// A relationship started and in sync.
    fn in_sync(&self, policy: Policy) -> Arc<Relationship> {
        let rel = self.relationship(policy);
        rel.start().unwrap();
        wait_for(&rel, State::InSync, Duration::from_secs(60));
        rel
    }

    /// Every byte of both volumes equal.
    fn assert_equal(&self) {
        let step = 256u64;
        for at in (0..BLOCKS).step_by(step as usize) {
            let a = self.rig.read(0, &self.primary, at, step);
            let b = self.rig.read(1, &self.secondary, at, step);
            if a != b {
                let i = a.iter().zip(&b).position(|(x, y)| x != y).unwrap();
                panic!(
                    "primary and secondary differ at byte {}",
                    at * 4096 + i as u64
                );
            }
        }
    }
}

/// Writes 4 KiB blocks at random places, each stamped with its number, until told to stop;
/// counts the writes and the failures.
struct Writer {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    longest_us: Arc<AtomicU64>,
    join: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(rig: &Arc<Rig>, bdev: &str, seed: u64) -> Writer {
        let (stop, ok, failed, longest_us) = Default::default();
        let w = Writer {
            stop: Arc::clone(&stop),
            ok: Arc::clone(&ok),
            failed: Arc::clone(&failed),
            longest_us: Arc::clone(&longest_us),
            join: None,
        };
        let rig = Arc::clone(rig);
        let bdev = bdev.to_owned();
        let join = std::thread::spawn(move || {
            let mut rng = SimRng::new(seed);
            let mut n = 0u64;
            // Bounded: a test's writer never runs past a minute.
            let until = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::SeqCst) && Instant::now() < until {
                n += 1;
                let block = rng.below(BLOCKS as usize) as u64;
                let mut data = vec![0u8; 4096];
                for (i, c) in data.chunks_mut(8).enumerate() {
                    c.copy_from_slice(&(n ^ (block << 20) ^ i as u64).to_le_bytes());
                }
                let t = Instant::now();
                match rig.write((n % 2) as usize, &bdev, block, data) {
                    Ok(()) => ok.fetch_add(1, Ordering::SeqCst),
                    Err(_) => failed.fetch_add(1, Ordering::SeqCst),
                };
                longest_us.fetch_max(t.elapsed().as_micros() as u64, Ordering::SeqCst);
            }
        });
        Writer {
            join: Some(join),
            ..w
        }
    }

    fn stop(mut self) -> (u64, u64, u64) {
        self.stop.store(true, Ordering::SeqCst);
        self.join.take().unwrap().join().unwrap();
        (
            self.ok.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
            self.longest_us.load(Ordering::SeqCst),
        )
    }
}

fn wait_for(rel: &Relationship, want: State, within: Duration) {
    let t = Instant::now();
    while rel.state() != want {
        assert!(
            t.elapsed() < within,
            "{} did not reach {} in {within:?}: {}",
            rel.name(),
            want.name(),
            rel.to_json()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn fill(p: &Pair, seed: u64) {
    let mut rng = SimRng::new(seed);
    for _ in 0..64 {
        let block = rng.below(BLOCKS as usize - 16) as u64;
        let data: Vec<u8> = (0..16 * 4096).map(|i| (i as u64 ^ block) as u8).collect();
        p.rig.write(0, &p.primary, block, data).unwrap();
    }
}

#[test]
fn establishing_under_writes_ends_in_sync_with_equal_volumes() {
    let p = pair(false);
    fill(&p, 1);
    let rel = p.relationship(Policy::Sync);
    assert_eq!(rel.state(), State::Uninitialized);
    let w = Writer::start(&p.rig, &p.primary, 2);
    std::thread::sleep(Duration::from_millis(50));
    rel.start().unwrap();
    wait_for(&rel, State::InSync, Duration::from_secs(60));
    // Writes go on in sync: each on both sides.
    std::thread::sleep(Duration::from_millis(200));
    let (ok, failed, _) = w.stop();
    assert_eq!(failed, 0, "client writes failed while establishing");
    assert!(ok > 100, "the writer made {ok} writes");
    assert_eq!(rel.state(), State::InSync, "{}", rel.to_json());
    p.assert_equal();
    let st = rel.status();
    assert!(
        st.transfers.len() >= 2,
        "a baseline and an incremental: {:?}",
        st.transfers
    );
    assert!(
        st.transfers[0] >= 64 * 16 * 4096 / 2,
        "the baseline sent the filled data"
    );
    let t = rel.splitter().totals();
    assert!(t.split > 0 && t.local > 0, "{t:?}");
    assert_eq!(t.in_flight, 0);
    relationship::delete(rel.name()).unwrap();
    assert!(relationship::get(rel.name()).is_none());
}

#[test]
fn a_failing_secondary_puts_the_pair_out_of_sync_and_it_resyncs_by_itself() {
    let p = pair(true);
    fill(&p, 3);
    let rel = p.in_sync(Policy::Sync);
    let w = Writer::start(&p.rig, &p.primary, 4);
    std::thread::sleep(Duration::from_millis(50));
    error::set_fault(&p.via, Fault::every(Action::Fail, IoTypes::WRITES)).unwrap();
    wait_for(&rel, State::OutOfSync, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(200));
    assert!(rel.splitter().drl().dirty_regions() > 0);
    let why = rel.status().last_error.unwrap_or_default();
    assert!(
        why.contains("failed (writing the secondary: Input/output error"),
        "repl_get says why: {why:?}"
    );
    error::clear(&p.via).unwrap();
    wait_for(&rel, State::InSync, Duration::from_secs(30));
    let (ok, failed, _) = w.stop();
    assert_eq!(
        failed, 0,
        "under Sync, client writes succeed while the secondary fails"
    );
    assert!(ok > 0);
    wait_for(&rel, State::InSync, Duration::from_secs(30));
    p.assert_equal();
    let st = rel.status();
    assert!(st.resynced_bytes > 0);
    relationship::delete(rel.name()).unwrap();
}

#[test]
fn a_baseline_the_secondary_fails_says_why_and_goes_again_until_it_lands() {
    let p = pair(true);
    fill(&p, 8);
    error::set_fault(&p.via, Fault::every(Action::Fail, IoTypes::WRITES)).unwrap();
    let rel = p.relationship(Policy::Sync);
    rel.start().unwrap();
    let t = Instant::now();
    let why = loop {
        if let Some(e) = rel.status().last_error {
            break e;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "{}", rel.to_json());
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(
        why.contains("failed (writing the secondary: Input/output error"),
        "{why}"
    );
    assert_ne!(rel.state(), State::InSync);
    error::clear(&p.via).unwrap();
    wait_for(&rel, State::InSync, Duration::from_secs(30));
    p.assert_equal();
    relationship::delete(rel.name()).unwrap();
}

#[test]
fn strict_sync_fails_writes_while_out_of_sync_and_recovers() {
    let p = pair(true);
    let rel = p.in_sync(Policy::StrictSync);
    error::set_fault(&p.via, Fault::every(Action::Fail, IoTypes::WRITES)).unwrap();
    // The write that finds the secondary failing fails, and so do the writes after it.
    let r = p.rig.write(0, &p.primary, 7, vec![1; 4096]);
    assert_eq!(r, Err(IoError::Device(crate::bdev::Errno(libc::ENOLINK))));
    wait_for(&rel, State::OutOfSync, Duration::from_secs(10));
    let r = p.rig.write(1, &p.primary, 9, vec![2; 4096]);
    assert_eq!(r, Err(IoError::Device(crate::bdev::Errno(libc::ENOLINK))));
    assert!(rel.splitter().totals().refused >= 1);
    error::clear(&p.via).unwrap();
    wait_for(&rel, State::InSync, Duration::from_secs(30));
    p.rig.write(0, &p.primary, 11, vec![3; 4096]).unwrap();
    p.assert_equal();
    relationship::delete(rel.name()).unwrap();
}

#[test]
fn quiesce_takes_a_common_snapshot_under_writes_and_resume_drains_what_came_after() {
    let p = pair(false);
    fill(&p, 5);
    let rel = p.in_sync(Policy::Sync);
    let w = Writer::start(&p.rig, &p.primary, 6);
    std::thread::sleep(Duration::from_millis(100));
    rel.quiesce().unwrap();
    assert_eq!(rel.state(), State::Quiesced);
    let snap = rel
        .status()
        .last_common_snapshot
        .expect("a common snapshot");
    std::thread::sleep(Duration::from_millis(100));
    // Both sides' snapshots are the same image.
    let (ps, ss) = (
        p.primary.split('/').next().unwrap().to_owned(),
        p.secondary.split('/').next().unwrap().to_owned(),
    );
    for at in (0..BLOCKS).step_by(512) {
        assert_eq!(
            p.rig.read(0, &format!("{ps}/{snap}"), at, 512),
            p.rig.read(1, &format!("{ss}/{snap}"), at, 512),
            "the common snapshot differs at block {at}"
        );
    }
    rel.resume().unwrap();
    wait_for(&rel, State::InSync, Duration::from_secs(30));
    let (_, failed, _) = w.stop();
    assert_eq!(failed, 0);
    wait_for(&rel, State::InSync, Duration::from_secs(30));
    p.assert_equal();
    assert!(rel.status().max_pause_us > 0);
    relationship::delete(rel.name()).unwrap();
}

#[test]
fn break_then_resync_sends_both_sides_changes_since_the_common_snapshot() {
    let p = pair(false);
    fill(&p, 7);
    let rel = p.in_sync(Policy::Sync);
    rel.quiesce().unwrap();
    rel.resume().unwrap();
    wait_for(&rel, State::InSync, Duration::from_secs(30));
    rel.break_off().unwrap();
    assert_eq!(rel.state(), State::Broken);
    // Split brain: both sides written after the break, in different places.
    p.rig.write(0, &p.primary, 100, vec![0xaa; 8192]).unwrap();
    p.rig
        .write(1, &p.secondary, 2000, vec![0xbb; 4096])
        .unwrap();
    rel.resync().unwrap();
    wait_for(&rel, State::InSync, Duration::from_secs(30));
    p.assert_equal();
    assert_eq!(
        p.rig.read(0, &p.secondary, 2000, 1),
        p.rig.read(0, &p.primary, 2000, 1)
    );
    assert_eq!(p.rig.read(0, &p.secondary, 100, 1), vec![0xaa; 4096]);
    let common = rel.status().last_common_snapshot.unwrap();
    relationship::delete(rel.name()).unwrap();

    // The reverse direction from the snapshot the deleted relationship left on both sides.
    p.rig
        .write(1, &p.secondary, 3000, vec![0xcc; 4096])
        .unwrap();
    let mut cfg = Config::new(&unique("back"), &p.secondary, &p.primary, &p.primary);
    cfg.common_snapshot = Some(common);
    let back = relationship::create(cfg, p.rig.m.clone(), p.rig.owner()).unwrap();
    back.start().unwrap();
    wait_for(&back, State::InSync, Duration::from_secs(30));
    let st = back.status();
    assert!(
        st.transfers[0] < VOL / 4,
        "an incremental from the common snapshot, not a baseline: {:?}",
        st.transfers
    );
    p.assert_equal();
    assert_eq!(p.rig.read(0, &p.primary, 3000, 1), vec![0xcc; 4096]);
    relationship::delete(back.name()).unwrap();
}

#[test]
fn extents_merge_into_a_sorted_union() {
    use super::relationship::merge_extents;
    assert_eq!(
        merge_extents(&[(0, 10), (20, 5)], &[(5, 10), (40, 1), (25, 0)]),
        vec![(0, 15), (20, 5), (40, 1)]
    );
    assert_eq!(merge_extents(&[], &[(3, 4)]), vec![(3, 4)]);
    assert_eq!(merge_extents(&[(0, 4)], &[(4, 4)]), vec![(0, 8)]);
}

#[test]
fn a_region_written_without_pause_is_still_copied_and_the_pair_gets_in_sync() {
    let p = pair(false);
    fill(&p, 9);
    let rel = p.relationship(Policy::Sync);
    // Four writers on one region, so that a write to it is nearly always in flight; each on
    // blocks of its own (two writes to the same block in flight at once may land in either
    // order on each side: see the module's limits).
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..4u64)
        .map(|k| {
            let (rig, bdev, stop, failed) = (
                Arc::clone(&p.rig),
                p.primary.clone(),
                Arc::clone(&stop),
                Arc::clone(&failed),
            );
            std::thread::spawn(move || {
                let until = Instant::now() + Duration::from_secs(60);
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) && Instant::now() < until {
                    n += 1;
                    let block = 5 * 64 + k * 16 + (n * 7) % 16;
                    if rig
                        .write(k as usize, &bdev, block, vec![(n + k) as u8; 4096])
                        .is_err()
                    {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(50));
    rel.start().unwrap();
    wait_for(&rel, State::InSync, Duration::from_secs(30));
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.join().unwrap();
    }
    assert_eq!(failed.load(Ordering::SeqCst), 0);
    wait_for(&rel, State::InSync, Duration::from_secs(30));
    p.assert_equal();
    println!("scanner fences: {}", rel.status().scanner_fences);
    relationship::delete(rel.name()).unwrap();
}

#[test]
fn overlapping_writes_in_flight_land_in_the_same_order_on_both_sides() {
    let p = pair(true);
    let rel = p.in_sync(Policy::Sync);
    // Half of the secondary's writes take a millisecond longer: without the claims, a write
    // that overtakes an earlier one to the same blocks on the primary lands first on the
    // secondary, and the later one's data is lost there.
    error::set_fault(
        &p.via,
        Fault {
            when: error::When::Fraction {
                per_million: 500_000,
                seed: 7,
            },
            ..Fault::every(Action::Delay(Duration::from_millis(1)), IoTypes::WRITES)
        },
    )
    .unwrap();
    // Four writers, two on each reactor, all on the same four blocks.
    let until = Instant::now() + Duration::from_millis(1500);
    let writers: Vec<_> = (0..4u64)
        .map(|k| {
            let (rig, bdev) = (Arc::clone(&p.rig), p.primary.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while Instant::now() < until {
                    n += 1;
                    let data = vec![(k * 64 + n % 64) as u8; 4096];
                    rig.write((k % 2) as usize, &bdev, 100 + n % 4, data)
                        .expect("a write");
                }
                n
            })
        })
        .collect();
    let writes: u64 = writers.into_iter().map(|w| w.join().unwrap()).sum();
    error::clear(&p.via).unwrap();
    let counters = &rel.to_json()["counters"];
    assert_eq!(rel.state(), State::InSync, "{}", rel.to_json());
    println!("{writes} writes, {counters}");
    p.assert_equal();
    assert!(
        counters["overlapped_waits"].as_u64().unwrap() > 0,
        "no write waited for another: {counters}"
    );
    relationship::delete(rel.name()).unwrap();
}

#[test]
fn a_full_secondary_channel_holds_the_write_back_and_the_pair_stays_in_sync() {
    let p = pair(true);
    let rel = p.in_sync(Policy::Sync);
    // Fill reactor 0's channel to the secondary with writes that take 300 ms (zeros over
    // zeros at block 2000: the sides stay equal).
    error::set_fault(
        &p.via,
        Fault {
            lba_range: Some((2000, 2001)),
            ..Fault::every(Action::Delay(Duration::from_millis(300)), IoTypes::WRITES)
        },
    )
    .unwrap();
    let filled = Arc::new(AtomicU64::new(0));
    let done = Arc::clone(&filled);
    let via = p.via.clone();
    p.rig
        .m
        .send(p.rig.ids[0], move || {
            let desc = crate::bdev::open(&via, true, None).expect("the secondary's bdev");
            let ch = desc.channel().expect("a channel");
            for _ in 0..crate::bdev::MAX_IN_FLIGHT {
                let buf = crate::mem::DmaBuf::new(4096).unwrap();
                // I/O in flight completes after the descriptor closes.
                let (done, keep) = (Arc::clone(&done), ch.clone());
                ch.write(2000, 1, crate::mem::Sgl::single(buf), move |d| {
                    let _ = &keep;
                    assert!(d.status.is_ok());
                    done.fetch_add(1, Ordering::SeqCst);
                })
                .map_err(|(e, _)| e)
                .expect("room for the filler");
            }
        })
        .map_err(|_| "send")
        .unwrap();
    // A split write on the same reactor finds the channel full: it waits, then goes.
    let t = Instant::now();
    p.rig
        .write(0, &p.primary, 10, vec![0x5a; 4096])
        .expect("the write");
    // (The filler went first: one sender's messages to a reactor keep their order.)
    assert!(
        t.elapsed() >= Duration::from_millis(200),
        "the write did not wait for room: {:?}",
        t.elapsed()
    );
    let counters = &rel.to_json()["counters"];
    assert_eq!(counters["secondary_errors"], 0, "{counters}");
    assert_eq!(rel.state(), State::InSync, "{}", rel.to_json());
    let t = Instant::now();
    while filled.load(Ordering::SeqCst) < crate::bdev::MAX_IN_FLIGHT as u64 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the filler did not finish"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    error::clear(&p.via).unwrap();
    p.assert_equal();
    relationship::delete(rel.name()).unwrap();
}

/// Keeps `depth` writes of one block in flight on one reactor, each completion issuing the
/// next, until told to stop.
struct Hammer {
    ch: crate::bdev::Channel,
    block: u64,
    stop: Arc<AtomicBool>,
    writes: Arc<AtomicU64>,
    /// Writes started so far; those numbered from `mark` on (none while it is `u64::MAX`)
    /// count in `late` as they complete.
    started: Arc<AtomicU64>,
    mark: Arc<AtomicU64>,
    late: Arc<AtomicU64>,
}

impl Hammer {
    fn go(h: std::rc::Rc<Hammer>, sgl: crate::mem::Sgl) {
        let next = std::rc::Rc::clone(&h);
        let seq = h.started.fetch_add(1, Ordering::SeqCst);
        let r = h.ch.write(h.block, 1, sgl, move |d: crate::bdev::IoDone| {
            next.writes.fetch_add(1, Ordering::SeqCst);
            if seq >= next.mark.load(Ordering::SeqCst) {
                next.late.fetch_add(1, Ordering::SeqCst);
            }
            if !next.stop.load(Ordering::SeqCst) {
                Hammer::go(next, d.sgl);
            }
        });
        if let Err((e, _)) = r {
            panic!("the hammer's write was refused: {e}");
        }
    }
}

#[test]
fn a_write_waiting_for_blocks_another_reactor_keeps_rewriting_takes_its_turn() {
    let p = pair(false);
    let rel = p.in_sync(Policy::Sync);
    // Reactor 0 rewrites block 100 with 16 writes always in flight, until 3 s after it got
    // going.
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let (started, mark, late) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(u64::MAX)),
        Arc::new(AtomicU64::new(0)),
    );
    let (s2, w2, primary) = (Arc::clone(&stop), Arc::clone(&writes), p.primary.clone());
    let (st2, m2, l2) = (Arc::clone(&started), Arc::clone(&mark), Arc::clone(&late));
    p.rig
        .m
        .send(p.rig.ids[0], move || {
            let desc = crate::bdev::open(&primary, true, None).expect("the primary");
            let h = std::rc::Rc::new(Hammer {
                ch: desc.channel().expect("a channel"),
                block: 100,
                stop: s2,
                writes: w2,
                started: st2,
                mark: m2,
                late: l2,
            });
            std::mem::forget(desc);
            for _ in 0..16 {
                let mut buf = crate::mem::DmaBuf::new(4096).unwrap();
                buf.as_mut_slice().fill(0xaa);
                Hammer::go(std::rc::Rc::clone(&h), crate::mem::Sgl::single(buf));
            }
        })
        .map_err(|_| "send")
        .unwrap();
    let t = Instant::now();
    while writes.load(Ordering::SeqCst) < 1000 {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the hammer did not get going"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let stopper = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(3));
            stop.store(true, Ordering::SeqCst);
        })
    };
    // Meanwhile reactor 1 writes the same block ten times. Each takes its turn: once it is
    // waiting, none of the hammer's writes started after that completes before it, however
    // soon after a completion the hammer writes again. (The mark is taken on reactor 1 just
    // after the write is submitted: a pause of reactor 1 in between only counts fewer.)
    let mut longest = Duration::ZERO;
    for i in 0..10u8 {
        let t = Instant::now();
        let (tx, rx) = std::sync::mpsc::channel();
        let (st2, m2, l2, primary) = (
            Arc::clone(&started),
            Arc::clone(&mark),
            Arc::clone(&late),
            p.primary.clone(),
        );
        p.rig
            .m
            .send(p.rig.ids[1], move || {
                let desc = crate::bdev::open(&primary, true, None).expect("the primary");
                let mut buf = crate::mem::DmaBuf::new(4096).unwrap();
                buf.as_mut_slice().fill(i);
                let before = l2.load(Ordering::SeqCst);
                let ch = desc.channel().expect("a channel");
                let (l3, m3) = (Arc::clone(&l2), Arc::clone(&m2));
                let r = ch.write(100, 1, crate::mem::Sgl::single(buf), move |d| {
                    drop(desc);
                    m3.store(u64::MAX, Ordering::SeqCst);
                    let _ = tx.send((d.status, l3.load(Ordering::SeqCst) - before));
                });
                if let Err((e, _)) = r {
                    panic!("the write was refused: {e}");
                }
                m2.store(st2.load(Ordering::SeqCst), Ordering::SeqCst);
            })
            .map_err(|_| "send")
            .unwrap();
        let (status, passed) = rx.recv_timeout(Duration::from_secs(20)).expect("the write");
        status.expect("the write");
        longest = longest.max(t.elapsed());
        assert!(
            !stop.load(Ordering::SeqCst),
            "write {i} got in only after the hammer stopped ({:?})",
            t.elapsed()
        );
        assert!(
            passed <= 1,
            "{passed} of the hammer's writes started after write {i} waited and completed \
             before it ({:?})",
            t.elapsed()
        );
    }
    println!(
        "longest wait of a write on reactor 1: {longest:?}; {} of the hammer's writes",
        writes.load(Ordering::SeqCst)
    );
    stop.store(true, Ordering::SeqCst);
    stopper.join().unwrap();
    let t = Instant::now();
    while rel.splitter().totals().in_flight > 0 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "writes still in flight"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(rel.state(), State::InSync, "{}", rel.to_json());
    p.assert_equal();
    relationship::delete(rel.name()).unwrap();
}
