//! The store's core against an in-memory model: random sequences of volume, write, unmap,
//! resize, snapshot, clone, delete, object, commit and reload operations (proptest, shrinking
//! to the shortest failing sequence). After every step the live volumes, every snapshot's
//! volumes and every block diff must match the model; after every commit and reload the full
//! check must be clean; and once everything is deleted every cluster must be free again.
//!
//! Data is modelled as one tag per cluster: the core decides where a cluster is, the test
//! "disk" keeps the tag each cluster holds, preparing clusters (zero, copy) as the core says.

use std::collections::{BTreeMap, HashMap, HashSet};

use proptest::prelude::*;

use super::check::check;
use super::core::{Core, Prep};
use super::format::{BLOCK, RC_PER_PAGE};

#[derive(Debug, Clone)]
enum Op {
    Create { vol: u8, clusters: u8, thick: bool },
    Write { vol: u8, idx: u8 },
    Unmap { vol: u8, idx: u8 },
    Resize { vol: u8, clusters: u8 },
    Snapshot,
    DeleteSnapshot { snap: u8 },
    Clone { snap: u8, vol: u8, into: u8 },
    Delete { vol: u8 },
    PutObject { obj: u8, len: u16 },
    DeleteObject { obj: u8 },
    Commit,
    Reload,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0..4u8, 1..48u8, any::<bool>()).prop_map(|(vol, clusters, thick)| Op::Create { vol, clusters, thick }),
        10 => (0..4u8, 0..48u8).prop_map(|(vol, idx)| Op::Write { vol, idx }),
        2 => (0..4u8, 0..48u8).prop_map(|(vol, idx)| Op::Unmap { vol, idx }),
        1 => (0..4u8, 1..48u8).prop_map(|(vol, clusters)| Op::Resize { vol, clusters }),
        2 => Just(Op::Snapshot),
        1 => (0..8u8).prop_map(|snap| Op::DeleteSnapshot { snap }),
        1 => (0..8u8, 0..4u8, 4..6u8).prop_map(|(snap, vol, into)| Op::Clone { snap, vol, into }),
        1 => (0..6u8).prop_map(|vol| Op::Delete { vol }),
        1 => (0..3u8, 0..5000u16).prop_map(|(obj, len)| Op::PutObject { obj, len }),
        1 => (0..3u8).prop_map(|obj| Op::DeleteObject { obj }),
        2 => Just(Op::Commit),
        1 => Just(Op::Reload),
    ]
}

/// A volume in the model.
#[derive(Debug, Clone)]
struct MVol {
    obj: u64,
    /// One tag per cluster; 0 reads as zeros.
    data: Vec<u64>,
    /// (step, cluster index) of every change to the volume's map.
    changes: Vec<(u64, u64)>,
    /// The snapshot this volume was cloned from, and the step it was cloned at.
    origin: Option<(u64, u64)>,
}

struct MSnap {
    id: u64,
    step: u64,
    vols: BTreeMap<String, MVol>,
}

struct Disk {
    blocks: HashMap<u64, Vec<u8>>,
    tags: HashMap<u64, u64>,
}

impl Disk {
    /// A new store of 400 clusters, formatted onto a new disk.
    fn formatted() -> (Core, Disk) {
        let (mut core, f) = Core::format(CS as u64 * 400, CS, "lvs", 7).expect("format");
        let mut disk = Disk {
            blocks: HashMap::new(),
            tags: HashMap::new(),
        };
        for (b, d) in f.writes.iter().chain(std::iter::once(&f.superblock)) {
            disk.blocks.insert(*b, d.clone());
        }
        core.commit_done(f.gen);
        (core, disk)
    }

    fn commit(&mut self, core: &mut Core) {
        let f = core.freeze().expect("freeze");
        for (b, d) in f.writes.iter().chain(std::iter::once(&f.superblock)) {
            self.blocks.insert(*b, d.clone());
        }
        core.commit_done(f.gen);
    }

    fn load(&self) -> Core {
        Core::load(CS as u64 * 400, &mut |bs| {
            Ok(bs
                .iter()
                .map(|b| {
                    self.blocks
                        .get(b)
                        .cloned()
                        .unwrap_or_else(|| vec![0; BLOCK])
                })
                .collect())
        })
        .expect("load")
    }
}

const CS: u32 = 4096;

fn read_volume(core: &Core, disk: &Disk, snap: Option<u64>, obj: u64, clusters: usize) -> Vec<u64> {
    let mut out = vec![0; clusters];
    for (idx, c, _) in core.extent_births(snap, obj).expect("volume map") {
        assert!((idx as usize) < clusters, "a mapped cluster past the end");
        out[idx as usize] = *disk.tags.get(&c).unwrap_or(&0);
    }
    out
}

fn run(ops: Vec<Op>) {
    let (mut core, mut disk) = Disk::formatted();
    let total_free = core.alloc.free_clusters();
    let mut vols: BTreeMap<String, MVol> = BTreeMap::new();
    let mut snaps: Vec<MSnap> = Vec::new();
    let mut objects: HashMap<String, Vec<u8>> = HashMap::new();
    let mut tag = 0u64;
    for (step, op) in ops.into_iter().enumerate() {
        let step = step as u64 + 1;
        let vname = |v: u8| format!("v{v}");
        match op {
            Op::Create {
                vol,
                clusters,
                thick,
            } => {
                let name = vname(vol);
                let r = core.create_volume(&name, clusters as u64 * CS as u64, thick, 1);
                match (vols.contains_key(&name), r) {
                    (true, Err(_)) => {}
                    (false, Ok(obj)) => {
                        vols.insert(
                            name,
                            MVol {
                                obj,
                                data: vec![0; clusters as usize],
                                changes: vec![],
                                origin: None,
                            },
                        );
                    }
                    (false, Err(super::Error::NoSpace)) => {}
                    (exists, r) => panic!("create {name}: exists {exists}, got {r:?}"),
                }
            }
            Op::Write { vol, idx } => {
                let Some(v) = vols.get_mut(&vname(vol)) else {
                    continue;
                };
                let idx = idx as usize % v.data.len();
                match core.prepare_write(v.obj, idx as u64) {
                    Ok(prep) => {
                        match prep {
                            Prep::Zero { cluster } => {
                                disk.tags.insert(cluster, 0);
                            }
                            Prep::Copy { from, to } => {
                                let t = *disk.tags.get(&from).unwrap_or(&0);
                                disk.tags.insert(to, t);
                            }
                            Prep::Ready { .. } => {}
                        }
                        tag += 1;
                        disk.tags.insert(prep.cluster(), tag);
                        v.data[idx] = tag;
                        v.changes.push((step, idx as u64));
                    }
                    Err(super::Error::NoSpace) => {}
                    Err(e) => panic!("write: {e}"),
                }
            }
            Op::Unmap { vol, idx } => {
                let Some(v) = vols.get_mut(&vname(vol)) else {
                    continue;
                };
                let idx = idx as usize % v.data.len();
                let mapped = core
                    .extent_births(None, v.obj)
                    .unwrap()
                    .iter()
                    .any(|e| e.0 == idx as u64);
                core.unmap_cluster(v.obj, idx as u64).expect("unmap");
                v.data[idx] = 0;
                if mapped {
                    v.changes.push((step, idx as u64));
                }
            }
            Op::Resize { vol, clusters } => {
                let Some(v) = vols.get_mut(&vname(vol)) else {
                    continue;
                };
                let mapped: HashSet<u64> = core
                    .extent_births(None, v.obj)
                    .unwrap()
                    .iter()
                    .map(|e| e.0)
                    .collect();
                match core.resize_volume(v.obj, clusters as u64 * CS as u64) {
                    Ok(()) => {
                        for i in clusters as u64..v.data.len() as u64 {
                            if mapped.contains(&i) {
                                v.changes.push((step, i));
                            }
                        }
                        v.data.resize(clusters as usize, 0);
                    }
                    Err(super::Error::NoSpace) => {}
                    Err(e) => panic!("resize: {e}"),
                }
            }
            Op::Snapshot => {
                let name = format!("s{step}");
                let id = core.snapshot(&name, 0, 2).expect("snapshot");
                snaps.push(MSnap {
                    id,
                    step,
                    vols: vols.clone(),
                });
            }
            Op::DeleteSnapshot { snap } => {
                if snaps.is_empty() {
                    continue;
                }
                let s = snaps.remove(snap as usize % snaps.len());
                core.delete_snapshot(s.id).expect("delete snapshot");
            }
            Op::Clone { snap, vol, into } => {
                if snaps.is_empty() {
                    continue;
                }
                let s = &snaps[snap as usize % snaps.len()];
                let (src, name) = (vname(vol), vname(into));
                let Some(origin) = s.vols.get(&src) else {
                    continue;
                };
                if vols.contains_key(&name) {
                    assert!(core.clone_volume(s.id, origin.obj, &name, 3).is_err());
                    continue;
                }
                let obj = core
                    .clone_volume(s.id, origin.obj, &name, 3)
                    .expect("clone");
                vols.insert(
                    name,
                    MVol {
                        obj,
                        data: origin.data.clone(),
                        changes: vec![],
                        origin: Some((s.id, step)),
                    },
                );
            }
            Op::Delete { vol } => {
                if let Some(v) = vols.remove(&vname(vol)) {
                    core.delete_volume(v.obj).expect("delete");
                }
            }
            Op::PutObject { obj, len } => {
                let name = format!("o{obj}");
                let data: Vec<u8> = (0..len).map(|i| (i as u64 * 31 + step) as u8).collect();
                core.put_object(&name, &data).expect("put object");
                objects.insert(name, data);
            }
            Op::DeleteObject { obj } => {
                let name = format!("o{obj}");
                assert_eq!(
                    core.delete_object(&name).is_ok(),
                    objects.remove(&name).is_some()
                );
            }
            Op::Commit => {
                disk.commit(&mut core);
                let p = check(&core);
                assert!(p.is_empty(), "after commit: {p:?}");
            }
            Op::Reload => {
                disk.commit(&mut core);
                core = disk.load();
                let p = check(&core);
                assert!(p.is_empty(), "after reload: {p:?}");
            }
        }
        // Everything the model says, the store says.
        for (name, v) in &vols {
            assert_eq!(core.volume_named(name).ok(), Some(v.obj), "{name}");
            assert_eq!(
                read_volume(&core, &disk, None, v.obj, v.data.len()),
                v.data,
                "live {name} after step {step}"
            );
        }
        assert_eq!(core.volumes().len(), vols.len());
        for s in &snaps {
            for (name, v) in &s.vols {
                assert_eq!(
                    read_volume(&core, &disk, Some(s.id), v.obj, v.data.len()),
                    v.data,
                    "{name} in snapshot {}",
                    s.id
                );
            }
            // Block diffs from this snapshot to the live store.
            for (name, v) in &vols {
                let d = core.block_diff(Some(s.id), None, name).expect("diff");
                let incremental = s.vols.get(name).is_some_and(|o| o.obj == v.obj)
                    || v.origin.is_some_and(|(id, _)| id == s.id);
                assert_eq!(d.incremental, incremental, "{name} from {}", s.id);
                let expect: Vec<u64> = if incremental {
                    let since = match v.origin {
                        Some((id, at)) if id == s.id => at,
                        _ => s.step,
                    };
                    let set: std::collections::BTreeSet<u64> = v
                        .changes
                        .iter()
                        .filter(|(st, i)| *st > since && (*i as usize) < v.data.len())
                        .map(|(_, i)| *i)
                        .collect();
                    set.into_iter().collect()
                } else {
                    (0..v.data.len() as u64)
                        .filter(|&i| {
                            core.extent_births(None, v.obj)
                                .unwrap()
                                .iter()
                                .any(|e| e.0 == i)
                        })
                        .collect()
                };
                let got: Vec<u64> = d.runs.iter().flat_map(|&(s, n)| s..s + n).collect();
                assert_eq!(got, expect, "diff of {name} from snapshot {}", s.id);
            }
        }
        for (name, data) in &objects {
            assert_eq!(core.get_object(name).as_ref(), Some(data), "object {name}");
        }
    }
    let p = check(&core);
    assert!(p.is_empty(), "at the end: {p:?}");
    // Delete everything: every cluster comes back.
    for v in vols.values() {
        core.delete_volume(v.obj).unwrap();
    }
    for s in &snaps {
        core.delete_snapshot(s.id).unwrap();
    }
    for name in objects.keys() {
        core.delete_object(name).unwrap();
    }
    disk.commit(&mut core);
    disk.commit(&mut core);
    let p = check(&core);
    assert!(p.is_empty(), "after deleting everything: {p:?}");
    assert_eq!(core.alloc.free_clusters(), total_free, "space leaked");
    assert_eq!(core.alloc.reserved, 0, "reservations leaked");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn the_store_matches_its_model(ops in proptest::collection::vec(op(), 1..120)) {
        run(ops);
    }
}

#[test]
fn a_thousand_snapshots_share_everything_and_diffs_follow_the_change() {
    let (mut core, f) = Core::format(1 << 30, 65536, "lvs", 1).unwrap();
    core.commit_done(f.gen);
    let v = core.create_volume("v", 1 << 29, false, 1).unwrap();
    for i in 0..500 {
        core.prepare_write(v, i * 7).unwrap();
    }
    let base = core.snapshot("base", 0, 1).unwrap();
    let nodes = super::tree::count_nodes(&core.objects);
    for i in 0..1000 {
        core.snapshot(&format!("s{i}"), 0, 1).unwrap();
    }
    // Snapshots added no node to the live tree and took no cluster.
    assert_eq!(super::tree::count_nodes(&core.objects), nodes);
    core.prepare_write(v, 3).unwrap();
    let d = core.block_diff(Some(base), None, "v").unwrap();
    assert_eq!(d.runs, vec![(3, 1)]);
}

/// A store with volumes, a clone and snapshots, committed to a test disk.
fn populated() -> (Core, Disk) {
    let (mut core, mut disk) = Disk::formatted();
    let v = core.create_volume("v", 200 * CS as u64, false, 1).unwrap();
    for i in 0..150 {
        core.prepare_write(v, i).unwrap();
    }
    let s = core.snapshot("s", v, 2).unwrap();
    core.clone_volume(s, v, "c", 3).unwrap();
    core.put_object("o", &[5; 3000]).unwrap();
    disk.commit(&mut core);
    for i in 0..40 {
        core.prepare_write(v, i * 3).unwrap();
    }
    disk.commit(&mut core);
    (core, disk)
}

fn load_from(blocks: &HashMap<u64, Vec<u8>>) -> super::Result<Core> {
    Core::load(CS as u64 * 400, &mut |bs| {
        Ok(bs
            .iter()
            .map(|b| blocks.get(b).cloned().unwrap_or_else(|| vec![0; BLOCK]))
            .collect())
    })
}

#[test]
fn a_flipped_bit_in_any_node_fails_the_open_naming_the_block() {
    let (core, disk) = populated();
    assert!(load_from(&disk.blocks).is_ok());
    let bpc = core.layout.blocks_per_cluster();
    let nodes: Vec<u64> = disk
        .blocks
        .keys()
        .copied()
        .filter(|&b| b >= core.layout.first_data_cluster * bpc)
        .filter(|b| disk.blocks[b][..4] == *b"TNOD")
        .collect();
    let mut reachable = 0;
    let mut rng = crate::reactor::sim::SimRng::new(3);
    for &b in &nodes {
        let mut damaged = disk.blocks.clone();
        let bit = rng.below(BLOCK * 8);
        damaged.get_mut(&b).unwrap()[bit / 8] ^= 1 << (bit % 8);
        match load_from(&damaged) {
            // A node of an earlier commit that nothing points at any more.
            Ok(_) => {}
            Err(super::Error::Corrupt { block, .. }) => {
                assert_eq!(block, b, "the error names the damaged block");
                reachable += 1;
            }
            Err(e) => panic!("block {b}: {e}"),
        }
    }
    assert!(
        reachable >= 5,
        "only {reachable} of {} nodes were reachable",
        nodes.len()
    );
}

#[test]
fn damaged_superblocks_and_table_pages_are_caught() {
    let (core, disk) = populated();
    let newest = core.committed % 2;
    // The newest superblock damaged: the open falls back to the other slot, whose commit is
    // whole, or refuses; it never opens something inconsistent.
    let mut d = disk.blocks.clone();
    d.get_mut(&newest).unwrap()[40] ^= 0x10;
    match load_from(&d) {
        Ok(c) => {
            assert_eq!(c.committed, core.committed - 1);
            assert!(check(&c).is_empty());
        }
        Err(super::Error::Corrupt { .. }) => {}
        Err(e) => panic!("{e}"),
    }
    // Both damaged: refused, naming the superblock.
    d.get_mut(&(1 - newest)).unwrap()[40] ^= 0x10;
    assert!(matches!(
        load_from(&d),
        Err(super::Error::Corrupt { block: 0, .. })
    ));
    // A live table page damaged: its older copy is stale, and the check refuses it.
    let page = core.layout.rc_block(0, core.alloc.live_copy(0));
    let mut d = disk.blocks.clone();
    d.get_mut(&page).unwrap()[100] ^= 1;
    assert!(matches!(load_from(&d), Err(super::Error::Corrupt { .. })));
    // Garbage anywhere in the metadata area never panics.
    let mut rng = crate::reactor::sim::SimRng::new(9);
    for _ in 0..200 {
        let mut d = disk.blocks.clone();
        let keys: Vec<u64> = d.keys().copied().collect();
        let b = keys[rng.below(keys.len())];
        let at = rng.below(BLOCK);
        let n = 1 + rng.below(64);
        for i in at..(at + n).min(BLOCK) {
            d.get_mut(&b).unwrap()[i] = rng.next_u64() as u8;
        }
        let _ = load_from(&d);
    }
}

#[test]
fn a_node_overwritten_by_a_later_commit_is_caught_as_stale() {
    // Roll the superblock back to the previous commit, as a lost superblock write would: the
    // blocks that commit freed have been reused since, and the generations in the pointers
    // catch it.
    let (mut core, mut disk) = populated();
    let older: HashMap<u64, Vec<u8>> = disk.blocks.clone();
    let v = core.volume_named("v").unwrap();
    let s = core.snapshot_named("s").unwrap();
    core.delete_snapshot(s).unwrap();
    core.delete_volume(core.volume_named("c").unwrap()).unwrap();
    for round in 0..4 {
        for i in 0..40 {
            core.prepare_write(v, (i * 7 + round) % 200).unwrap();
        }
        disk.commit(&mut core);
    }
    let mut d = disk.blocks.clone();
    for slot in [0u64, 1] {
        d.insert(slot, older[&slot].clone());
    }
    match load_from(&d) {
        Ok(c) => assert!(
            check(&c).is_empty(),
            "an old image that opens must be whole"
        ),
        // Refused: a stale node, a table page newer than the superblock, or the check.
        Err(super::Error::Corrupt { .. }) => {}
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn a_table_page_left_by_a_lost_commit_is_overwritten_by_the_next() {
    // Four table pages. A commit that never became durable wrote page 3's spare copy with the
    // generation the next commit will use again; that commit must overwrite it, or a later load
    // would take the lost commit's counts.
    let device = CS as u64 * 4000;
    let (mut core, f) = Core::format(device, CS, "lvs", 7).unwrap();
    let mut blocks: HashMap<u64, Vec<u8>> = HashMap::new();
    for (b, d) in f.writes.iter().chain(std::iter::once(&f.superblock)) {
        blocks.insert(*b, d.clone());
    }
    core.commit_done(f.gen);
    let layout = core.layout;
    let spare = layout.rc_block(3, 1 - core.alloc.live_copy(3 * RC_PER_PAGE as u64));
    let lost_gen = core.gen;
    let mut fake = vec![0u32; RC_PER_PAGE];
    fake[5] = 9;
    blocks.insert(spare, super::format::encode_rc_page(3, lost_gen, &fake));
    let load = |blocks: &HashMap<u64, Vec<u8>>| {
        Core::load(device, &mut |bs| {
            Ok(bs
                .iter()
                .map(|b| blocks.get(b).cloned().unwrap_or_else(|| vec![0; BLOCK]))
                .collect())
        })
    };
    let mut core = load(&blocks).expect("the lost commit's page is ignored");
    core.put_object("o", b"x").unwrap();
    let f = core.freeze().unwrap();
    assert_eq!(f.gen, lost_gen, "the generation is used again");
    assert!(
        f.writes.iter().any(|(b, _)| *b == spare),
        "the spare copy is overwritten"
    );
    for (b, d) in f.writes.iter().chain(std::iter::once(&f.superblock)) {
        blocks.insert(*b, d.clone());
    }
    core.commit_done(f.gen);
    let again = load(&blocks).expect("loads with the right counts");
    assert!(check(&again).is_empty());
}
