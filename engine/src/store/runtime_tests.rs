//! The store at run time, on real reactors: volumes as bdevs, snapshots, clones, diffs,
//! objects, reload, and writers on two reactors racing for the same new clusters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::{CreateOpts, Store};
use crate::bdev::error::Action;
use crate::bdev::{self, malloc, IoError, IoType};
use crate::mem::{DmaBuf, Sgl};
use crate::reactor::{available_cores, CoreMask, Engine, EngineOpts, Messenger, Mode, ReactorId};

pub(crate) struct Rig {
    pub engine: Option<Engine>,
    pub m: Messenger,
    pub ids: Vec<ReactorId>,
}

impl Rig {
    /// An engine of `n` adaptive reactors (1 or 2), unpinned so tests share the machine.
    pub fn new(n: usize) -> Rig {
        let cores = available_cores();
        let mask = CoreMask::from_cores(
            cores
                .iter()
                .copied()
                .cycle()
                .take(n.min(cores.len()).max(1)),
        )
        .expect("a core mask");
        let engine = Engine::start(EngineOpts {
            core_mask: Some(mask),
            mode: Mode::Adaptive,
            pin: false,
            ..EngineOpts::default()
        })
        .expect("an engine");
        Rig {
            m: engine.messenger(),
            ids: engine.reactor_ids(),
            engine: Some(engine),
        }
    }

    pub fn owner(&self) -> ReactorId {
        self.ids[0]
    }

    /// A new store, uniquely named, on bdev `base`, owned by the first reactor.
    pub fn new_store(&self, base: &str, cluster_size: u32) -> Store {
        let opts = CreateOpts {
            base: base.to_owned(),
            name: unique("lvs"),
            cluster_size,
        };
        Store::create(&opts, &self.m, self.owner()).expect("a new store")
    }

    /// One I/O on bdev `name`, submitted on reactor `on`; a read returns its data.
    pub fn io(
        &self,
        on: usize,
        name: &str,
        t: IoType,
        offset: u64,
        blocks: u64,
        data: Option<Vec<u8>>,
    ) -> Result<Vec<u8>, IoError> {
        let name = name.to_owned();
        super::io::blocking(&self.m, self.ids[on % self.ids.len()], move |reply| {
            let desc = match bdev::open(&name, t != IoType::Read, None) {
                Ok(d) => d,
                Err(_) => return reply(Err(IoError::Device(bdev::Errno(libc::ENODEV)))),
            };
            let ch = desc.channel().expect("a channel");
            let bs = ch.bdev().block_size() as u64;
            let sgl = match (t, data) {
                (IoType::Read, _) => Sgl::single(DmaBuf::new((blocks * bs) as usize).unwrap()),
                (IoType::Write, Some(d)) => {
                    let mut b = DmaBuf::new(d.len()).unwrap();
                    b.as_mut_slice().copy_from_slice(&d);
                    Sgl::single(b)
                }
                _ => Sgl::new(),
            };
            let keep = ch.clone();
            let (tx, rx) = std::sync::mpsc::channel();
            let reply = std::cell::RefCell::new(Some(reply));
            let r = ch.submit(
                t,
                offset,
                blocks,
                sgl,
                crate::bdev::IoCallback::new(move |d: bdev::IoDone| {
                    let _ = (&keep, &desc);
                    let _ = tx.send(d.status.map(|()| d.sgl.to_vec()));
                }),
            );
            let reply = reply.borrow_mut().take().expect("one reply");
            match r {
                Err((e, _)) => reply(Err(IoError::Device(bdev::Errno(-e.errno())))),
                Ok(()) => {
                    // The completion runs on this reactor later: hand the answer on from there.
                    let cell = std::rc::Rc::new(std::cell::RefCell::new(Some(reply)));
                    poll_answer(rx, cell);
                }
            }
        })
        .expect("the reactor answers")
    }

    pub fn write(&self, on: usize, name: &str, offset: u64, data: Vec<u8>) -> Result<(), IoError> {
        let blocks = data.len() as u64 / 4096;
        self.io(on, name, IoType::Write, offset, blocks, Some(data))
            .map(|_| ())
    }

    pub fn read(&self, on: usize, name: &str, offset: u64, blocks: u64) -> Vec<u8> {
        self.io(on, name, IoType::Read, offset, blocks, None)
            .expect("read")
    }
}

type Answer = Result<Vec<u8>, IoError>;
type Reply = std::rc::Rc<std::cell::RefCell<Option<Box<dyn FnOnce(Answer) + Send>>>>;

/// Wait on the reactor (by re-arming a short timer) for a completion's answer.
fn poll_answer(rx: std::sync::mpsc::Receiver<Answer>, reply: Reply) {
    match rx.try_recv() {
        Ok(a) => {
            if let Some(r) = reply.borrow_mut().take() {
                r(a)
            }
        }
        Err(_) => {
            let _ = crate::reactor::set_timer(Duration::from_micros(20), move || {
                poll_answer(rx, reply)
            });
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(e) = self.engine.take() {
            let _ = e.stop();
        }
    }
}

pub(crate) fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub(crate) fn ram(name: &str, mib: u64) -> bdev::Bdev {
    malloc::create(malloc::MallocOpts {
        name: name.to_owned(),
        num_blocks: mib * 256,
        block_size: 4096,
        uuid: 0,
    })
    .expect("a RAM disk")
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn volumes_snapshots_and_clones_through_their_bdevs() {
    let rig = Rig::new(2);
    let base = unique("st_base");
    ram(&base, 64);
    let store = rig.new_store(&base, 65536);
    let lvs = store.name().to_owned();
    // An empty store holds its root directory.
    let (_, free_empty, _) = store.space().unwrap();
    let v = store.create_volume("v", 4 << 20, false).unwrap();
    assert_eq!(v.name(), format!("{lvs}/v"));
    assert_eq!(
        bdev::get(&v.uuid_string()).unwrap().name(),
        v.name(),
        "found by UUID too"
    );
    // A write across cluster boundaries from one reactor, read from the other.
    let a = pattern(1, 136 * 1024);
    rig.write(1, v.name(), 15, a.clone()).unwrap();
    assert_eq!(rig.read(0, v.name(), 15, 34), a);
    assert!(
        rig.read(0, v.name(), 200, 8).iter().all(|&b| b == 0),
        "a hole reads zeros"
    );
    // Snapshot for the volume: a read-only bdev of the volume as it was.
    store.snapshot("s1", Some("v")).unwrap();
    let snap = format!("{lvs}/s1");
    let b = pattern(2, 8192);
    rig.write(0, v.name(), 16, b.clone()).unwrap();
    assert_eq!(rig.read(1, v.name(), 16, 2), b);
    assert_eq!(
        rig.read(1, &snap, 16, 2),
        a[4096..4096 * 3].to_vec(),
        "the snapshot keeps the old data"
    );
    assert_eq!(
        rig.io(0, &snap, IoType::Write, 0, 1, Some(vec![0; 4096])),
        Err(IoError::Device(bdev::Errno(libc::ENOTSUP))),
        "a snapshot is read-only"
    );
    // A clone of the snapshot: shares, then diverges.
    let c = store.clone_volume("s1", None, "c").unwrap();
    assert_eq!(rig.read(1, c.name(), 15, 34), a);
    rig.write(1, c.name(), 40, pattern(3, 4096)).unwrap();
    assert_eq!(rig.read(0, c.name(), 40, 1), pattern(3, 4096));
    assert_eq!(
        rig.read(0, v.name(), 40, 1),
        a[25 * 4096..26 * 4096].to_vec()
    );
    // Block diffs at cluster granularity (16 blocks of 4 KiB a cluster).
    let d = store.block_diff(Some("s1"), None, "v").unwrap();
    assert_eq!(d.runs, vec![(1, 1)]);
    let d = store.block_diff(Some("s1"), None, "c").unwrap();
    assert!(d.incremental);
    assert_eq!(d.runs, vec![(2, 1)]);
    // Unmap a whole cluster: zeros, and the diff sees it.
    rig.io(0, v.name(), IoType::Unmap, 32, 16, None).unwrap();
    assert!(rig.read(1, v.name(), 32, 16).iter().all(|&b| b == 0));
    assert_eq!(
        store.block_diff(Some("s1"), None, "v").unwrap().runs,
        vec![(1, 2)]
    );
    // Small objects ride the same transactions.
    store.put_object("repl/state", b"in-sync".to_vec()).unwrap();
    assert_eq!(store.get_object("repl/state").unwrap().unwrap(), b"in-sync");
    // Two objects changed in one transaction.
    store
        .transact(|c| {
            c.put_object("repl/drl", &[0xff; 5000])?;
            c.put_object("repl/state", b"resyncing")
        })
        .unwrap();
    assert_eq!(
        store.get_object("repl/drl").unwrap().unwrap(),
        vec![0xff; 5000]
    );
    assert_eq!(store.check().unwrap(), vec![]);
    // Unload and load again: everything is there.
    let before_v = rig.read(0, v.name(), 0, 64);
    let before_c = rig.read(0, c.name(), 0, 64);
    let before_s = rig.read(0, &snap, 0, 64);
    store.unload().unwrap();
    assert!(bdev::get(&format!("{lvs}/v")).is_none());
    let store = Store::load(&base, &rig.m, rig.owner()).unwrap();
    assert_eq!(rig.read(1, &format!("{lvs}/v"), 0, 64), before_v);
    assert_eq!(rig.read(1, &format!("{lvs}/c"), 0, 64), before_c);
    assert_eq!(rig.read(1, &snap, 0, 64), before_s);
    assert_eq!(
        store.get_object("repl/state").unwrap().unwrap(),
        b"resyncing"
    );
    assert_eq!(store.check().unwrap(), vec![]);
    // After a reload every cluster is still copy-on-write where a snapshot holds it.
    rig.write(0, &format!("{lvs}/v"), 15, pattern(9, 4096))
        .unwrap();
    assert_eq!(rig.read(0, &snap, 15, 1), a[..4096].to_vec());
    // The maps keep 24 bits of the snapshot epoch: across its wrap, a snapshot still shares.
    store
        .0
        .epoch
        .store(super::map::EPOCH_MASK, Ordering::SeqCst);
    rig.write(1, &format!("{lvs}/v"), 15, pattern(10, 4096))
        .unwrap();
    store.snapshot("wrap", Some("v")).unwrap();
    rig.write(1, &format!("{lvs}/v"), 15, pattern(11, 4096))
        .unwrap();
    assert_eq!(
        rig.read(0, &format!("{lvs}/wrap"), 15, 1),
        pattern(10, 4096)
    );
    assert_eq!(rig.read(0, &format!("{lvs}/v"), 15, 1), pattern(11, 4096));
    store.delete_snapshot("wrap").unwrap();
    // Resize: grow, write at the new end, shrink.
    store.resize_volume("v", 8 << 20).unwrap();
    let vb = bdev::get(&format!("{lvs}/v")).unwrap();
    assert_eq!(vb.num_blocks(), 2048);
    rig.write(1, vb.name(), 2047, pattern(4, 4096)).unwrap();
    store.resize_volume("v", 1 << 20).unwrap();
    assert_eq!(vb.num_blocks(), 256);
    // Delete everything: all space the volumes took comes back.
    store.delete_snapshot("s1").unwrap();
    assert!(bdev::get(&snap).is_none());
    store.delete_volume("c").unwrap();
    store.delete_volume("v").unwrap();
    store.delete_object("repl/state").unwrap();
    store.delete_object("repl/drl").unwrap();
    let (_, free, reserved) = store.space().unwrap();
    assert_eq!(store.check().unwrap(), vec![]);
    // Freed clusters are held until the commit after the one that freed them is durable.
    store.put_object("x", vec![1]).unwrap();
    store.delete_object("x").unwrap();
    let (_, free_after, _) = store.space().unwrap();
    assert_eq!(
        (free_after, reserved),
        (free_empty, 0),
        "free {free} then {free_after}; {free_empty} when empty"
    );
    store.destroy().unwrap();
    assert!(
        Store::load(&base, &rig.m, rig.owner()).is_err(),
        "a destroyed store does not load"
    );
    bdev::delete(&base).unwrap();
}

#[test]
fn two_reactors_racing_for_the_same_new_clusters_lose_nothing() {
    let rig = Rig::new(2);
    let base = unique("st_race");
    ram(&base, 32);
    let store = rig.new_store(&base, 32768);
    let v = store.create_volume("v", 2 << 20, false).unwrap();
    let name = v.name().to_owned();
    // Each thread writes different blocks of the same clusters, all through first writes.
    std::thread::scope(|s| {
        for lane in 0..2u64 {
            let (rig, name) = (&rig, &name);
            s.spawn(move || {
                for block in (lane..512).step_by(2) {
                    rig.write(
                        lane as usize,
                        name,
                        block,
                        vec![(block % 251) as u8 + 1; 4096],
                    )
                    .unwrap();
                }
            });
        }
    });
    let all = rig.read(0, &name, 0, 512);
    for (block, chunk) in all.chunks(4096).enumerate() {
        assert!(
            chunk.iter().all(|&b| b == (block % 251) as u8 + 1),
            "block {block}"
        );
    }
    assert_eq!(store.check().unwrap(), vec![]);
    let commits = store.commits().unwrap();
    assert!(
        commits <= 64 + 2,
        "{commits} commits for 64 first writes: preparation is batched"
    );
    store.destroy().unwrap();
    bdev::delete(&base).unwrap();
    let _ = Duration::ZERO;
}

#[test]
fn a_cluster_freed_under_a_read_in_flight_is_not_handed_out_until_the_read_ends() {
    use crate::bdev::error::{self as ebdev, Action, Fault, IoTypes, When};
    let rig = Rig::new(2);
    let base = unique("st_grace");
    ram(&base, 4);
    ebdev::create(ebdev::ErrorOpts {
        name: None,
        base: base.clone(),
        uuid: 0,
    })
    .unwrap();
    let ee = format!("EE_{base}");
    let store = rig.new_store(&ee, 4096);
    let v = store
        .create_volume("v", 4 << 20, false)
        .unwrap()
        .name()
        .to_owned();
    rig.write(0, &v, 0, pattern(1, 4096)).unwrap();
    let x = store
        .read(|o| {
            let c = o.core.borrow();
            let obj = c.volume_named("v")?;
            Ok(c.extent_births(None, obj)?[0].1)
        })
        .unwrap();
    let held = || {
        store
            .read(move |o| Ok(o.core.borrow().alloc.is_held(x)))
            .unwrap()
    };
    // A read of block 0, held by the device for a while.
    ebdev::set_fault(
        &ee,
        Fault {
            when: When::Nth(1),
            ..Fault::every(Action::Delay(Duration::from_millis(400)), IoTypes::READS)
        },
    )
    .unwrap();
    std::thread::scope(|s| {
        let reader = s.spawn(|| rig.read(1, &v, 0, 1));
        std::thread::sleep(Duration::from_millis(100));
        // Unmap block 0's cluster and commit more: the cluster stays held while the read is
        // in flight, so no write can be given it.
        rig.io(0, &v, IoType::Unmap, 0, 1, None).unwrap();
        store.put_object("tick", vec![1]).unwrap();
        assert!(held(), "the cluster under the read is held, not free");
        assert_eq!(
            reader.join().unwrap(),
            pattern(1, 4096),
            "the read returns what the block held"
        );
    });
    // Once the read is done, the next grace period frees it.
    ebdev::clear(&ee).unwrap();
    store.put_object("tick", vec![2]).unwrap();
    assert!(!held(), "and free once the read is done");
    assert_eq!(store.check().unwrap(), vec![]);
    store.destroy().unwrap();
    bdev::delete(&ee).unwrap();
    bdev::delete(&base).unwrap();
}

#[test]
fn a_clone_of_a_deleted_snapshot_stays_apart_from_its_parent_across_a_reload() {
    let rig = Rig::new(1);
    let base = unique("st_orphan");
    ram(&base, 16);
    let store = rig.new_store(&base, 16384);
    let v = store
        .create_volume("v", 1 << 20, false)
        .unwrap()
        .name()
        .to_owned();
    rig.write(0, &v, 0, pattern(1, 8192)).unwrap();
    store.snapshot("s", Some("v")).unwrap();
    let c = store
        .clone_volume("s", None, "c")
        .unwrap()
        .name()
        .to_owned();
    store.delete_snapshot("s").unwrap();
    // Volumes and snapshots share one namespace: both become bdevs `<store>/<name>`.
    assert!(matches!(
        store.snapshot("v", None),
        Err(super::Error::Exists(_))
    ));
    store.snapshot("s2", None).unwrap();
    assert!(matches!(
        store.create_volume("s2", 1 << 20, false),
        Err(super::Error::Exists(_))
    ));
    store.delete_snapshot("s2").unwrap();
    store.unload().unwrap();
    let store = Store::load(&base, &rig.m, rig.owner()).unwrap();
    // The parent and the clone share the cluster; a write to either copies it.
    rig.write(0, &v, 0, pattern(2, 4096)).unwrap();
    rig.write(0, &c, 1, pattern(3, 4096)).unwrap();
    assert_eq!(
        rig.read(0, &v, 0, 2),
        [pattern(2, 4096), pattern(1, 8192)[4096..].to_vec()].concat()
    );
    assert_eq!(
        rig.read(0, &c, 0, 2),
        [pattern(1, 8192)[..4096].to_vec(), pattern(3, 4096)].concat()
    );
    assert_eq!(store.check().unwrap(), vec![]);
    store.destroy().unwrap();
    bdev::delete(&base).unwrap();
}

/// A store on an error bdev over a RAM disk whose every byte starts as 0xAA (someone's old
/// data), with volume `v`, whose first write's zeroing meets `action`: (base, error bdev,
/// store, volume bdev).
fn store_with_held_zeroing(
    rig: &Rig,
    tag: &str,
    action: Action,
) -> (String, String, Store, String) {
    use crate::bdev::error::{self as ebdev, Fault, IoTypes, When};
    let base = unique(tag);
    ram(&base, 8);
    for mib in 0..8u64 {
        rig.write(0, &base, mib * 256, vec![0xAA; 1 << 20]).unwrap();
    }
    ebdev::create(ebdev::ErrorOpts {
        name: None,
        base: base.clone(),
        uuid: 0,
    })
    .unwrap();
    let ee = format!("EE_{base}");
    let store = rig.new_store(&ee, 65536);
    let v = store
        .create_volume("v", 4 << 20, false)
        .unwrap()
        .name()
        .to_owned();
    ebdev::set_fault(
        &ee,
        Fault {
            when: When::Nth(1),
            ..Fault::every(action, IoTypes::of(&[IoType::WriteZeroes]))
        },
    )
    .unwrap();
    (base, ee, store, v)
}

/// The store as the RAM disk beneath holds it now, and those bytes.
fn durable(rig: &Rig, base: &str) -> (super::Core, Vec<u8>) {
    let bytes = rig.read(0, base, 0, 8 * 256);
    let core = super::Core::load(bytes.len() as u64, &mut |bs| {
        Ok(bs
            .iter()
            .map(|b| bytes[(*b as usize) * 4096..][..4096].to_vec())
            .collect())
    })
    .expect("the durable store loads");
    (core, bytes)
}

#[test]
fn no_commit_makes_an_extent_durable_before_its_cluster_is_zeroed() {
    let rig = Rig::new(2);
    // The first write's zeroing is held by the device for a while.
    let (base, ee, store, v) =
        store_with_held_zeroing(&rig, "st_gate", Action::Delay(Duration::from_millis(400)));
    std::thread::scope(|s| {
        let writer = s.spawn(|| rig.write(1, &v, 0, vec![0x55; 4096]));
        std::thread::sleep(Duration::from_millis(100));
        // Another change commits meanwhile: once it is durable, what is on the disk must not
        // map a cluster that still holds the old bytes.
        store.put_object("tick", vec![1]).unwrap();
        let (on_disk, bytes) = durable(&rig, &base);
        let obj = on_disk.volume_named("v").unwrap();
        for (_, cluster, _) in on_disk.extent_births(None, obj).unwrap() {
            let at = (cluster * 65536) as usize;
            assert!(
                !bytes[at..at + 65536].contains(&0xAA),
                "a durable extent names cluster {cluster}, which still holds old bytes"
            );
        }
        writer.join().unwrap().unwrap();
    });
    assert_eq!(
        rig.read(0, &v, 0, 2),
        [vec![0x55; 4096], vec![0; 4096]].concat()
    );
    assert_eq!(store.check().unwrap(), vec![]);
    store.destroy().unwrap();
    bdev::delete(&ee).unwrap();
    bdev::delete(&base).unwrap();
}

#[test]
fn a_commit_held_for_a_cluster_whose_zeroing_fails_writes_nothing() {
    let rig = Rig::new(2);
    // The first write's zeroing is held, then fails.
    let (base, ee, store, v) = store_with_held_zeroing(
        &rig,
        "st_gatefail",
        Action::FailAfter(Duration::from_millis(300)),
    );
    std::thread::scope(|s| {
        let writer = s.spawn(|| rig.write(1, &v, 0, vec![0x55; 4096]));
        std::thread::sleep(Duration::from_millis(100));
        // This change's commit waits for the zeroing, which fails: the store stops, and the
        // commit that waited writes nothing.
        assert!(store.put_object("tick", vec![1]).is_err());
        assert!(writer.join().unwrap().is_err());
    });
    let (on_disk, _) = durable(&rig, &base);
    let obj = on_disk.volume_named("v").unwrap();
    assert_eq!(
        on_disk.extent_births(None, obj).unwrap(),
        vec![],
        "no durable extent names the cluster whose zeroing failed"
    );
    assert_eq!(on_disk.get_object("tick"), None);
    let _ = store.unload();
    bdev::delete(&ee).unwrap();
    bdev::delete(&base).unwrap();
}
