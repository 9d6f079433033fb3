//! Power cuts. A random workload (volumes, snapshots, clones, objects, and the namespace:
//! directories, files written in tagged blocks, renames, hard links, unlinks) runs on a store
//! whose base is an `error` bdev; at a random
//! write or flush the power goes: that write is lost or torn in half, and, with the volatile write cache
//! on, every write not yet flushed is lost too, or a random subset of them survives. The store is then loaded from what is left on
//! the RAM disk beneath: the check must be clean, every acknowledged change must be there, and
//! every block must hold a value that was written to it and not superseded by a durable write.
//!
//! `TANDEM_CRASH_CUTS` sets how many cuts to make (1,000 by default).

use std::collections::{BTreeMap, HashSet};

use super::runtime_tests::{ram, unique, Rig};
use super::Store;
use crate::bdev::error::{self as ebdev, Action, Fault, IoTypes, When};
use crate::bdev::{self, IoType};
use crate::reactor::sim::SimRng;

const BS: usize = 4096;

/// What a block may hold after the cut: the last durable tag and any written since.
#[derive(Clone, Default)]
struct Block {
    durable: u32,
    since: Vec<u32>,
}

#[derive(Clone)]
struct Vol {
    blocks: Vec<Block>,
}

impl Vol {
    fn settle(&mut self) {
        for b in &mut self.blocks {
            if let Some(&last) = b.since.last() {
                b.durable = last;
            }
            b.since.clear();
        }
    }
}

#[derive(Default)]
struct Model {
    vols: BTreeMap<String, Vol>,
    /// Namespace files by id, their paths (hard links share an id), directories, and paths an
    /// acknowledged change removed.
    files: BTreeMap<usize, Vol>,
    paths: BTreeMap<String, usize>,
    dirs: Vec<String>,
    gone: HashSet<String>,
    /// Snapshots taken for a volume: name → (volume name, its blocks then).
    snaps: BTreeMap<String, Vol>,
    objects: BTreeMap<String, Vec<u8>>,
    /// Names an unanswered change touched: either state is right for them.
    unsure: HashSet<String>,
}

impl Model {
    /// A change was acknowledged: its commit flushed the device, so every acknowledged write
    /// before it is durable.
    fn settle(&mut self) {
        self.vols.values_mut().for_each(Vol::settle);
        self.files.values_mut().for_each(Vol::settle);
    }

    /// The change to `name` was acknowledged (settle, then `then`) or not (`name` is unsure).
    fn answered(&mut self, ok: bool, name: &str, then: impl FnOnce(&mut Model)) -> bool {
        if ok {
            self.settle();
            then(self);
        } else {
            self.unsure.insert(name.to_owned());
        }
        ok
    }
}

fn tag_of(block: &[u8]) -> Option<u32> {
    let t = u32::from_le_bytes(block[..4].try_into().ok()?);
    block
        .chunks(4)
        .all(|c| u32::from_le_bytes(c.try_into().unwrap()) == t)
        .then_some(t)
}

/// One workload with a cut at write `cut`. Returns whether the cut happened.
fn one_run(rig: &Rig, seed: u64) -> bool {
    let mut rng = SimRng::new(seed);
    let base = unique("crash_base");
    ram(&base, 8);
    let ee = format!("EE_{base}");
    ebdev::create(ebdev::ErrorOpts {
        name: None,
        base: base.clone(),
        uuid: 0,
    })
    .unwrap();
    let cached = rng.below(2) == 0;
    ebdev::set_volatile_cache(&ee, cached).unwrap();
    let cluster = [4096u32, 16384][rng.below(2)];
    let store = rig.new_store(&ee, cluster);
    let lvs = store.name().to_owned();
    let cut = 1 + rng.below(90) as u64;
    let tear = rng.below(2) == 0;
    // With the cache on: half the runs lose every unflushed write, half keep a random subset.
    let keep_seed = if rng.below(2) == 0 {
        0
    } else {
        rng.next_u64() | 1
    };
    ebdev::set_fault(
        &ee,
        Fault {
            action: Action::PowerCut { tear, keep_seed },
            // A cut may come at a write or at a flush, before the cache reached the media.
            io_types: IoTypes::of(&[IoType::Write, IoType::Flush]),
            lba_range: None,
            when: When::Nth(cut),
        },
    )
    .unwrap();
    let mut m = Model {
        dirs: vec![String::new()],
        ..Model::default()
    };
    let mut next_tag = 1u32;
    let cpb = cluster as usize / BS;
    for step in 0..40 {
        let pick = rng.below(135);
        let vnames: Vec<String> = m.vols.keys().cloned().collect();
        let any_vol = |rng: &mut SimRng| vnames.get(rng.below(vnames.len().max(1))).cloned();
        let ok = if pick >= 100 {
            namespace_step(&store, &mut m, &mut rng, step, &mut next_tag)
        } else if pick < 12 || vnames.is_empty() {
            let name = format!("v{step}");
            let blocks = cpb * (1 + rng.below(6));
            let r = store.create_volume(&name, (blocks * BS) as u64, rng.below(3) == 0);
            let vol = Vol {
                blocks: vec![Block::default(); blocks],
            };
            m.answered(r.is_ok(), &name, |m| drop(m.vols.insert(name.clone(), vol)))
        } else if pick < 62 {
            let v = any_vol(&mut rng).unwrap();
            let len = m.vols[&v].blocks.len();
            let first = rng.below(len);
            let n = 1 + rng.below((len - first).min(2 * cpb));
            let tag = next_tag;
            next_tag += 1;
            let data: Vec<u8> = std::iter::repeat_n(tag.to_le_bytes(), n * BS / 4)
                .flatten()
                .collect();
            let vol = m.vols.get_mut(&v).unwrap();
            // Written or not, the blocks may now hold the new tag.
            for b in &mut vol.blocks[first..first + n] {
                b.since.push(tag);
            }
            rig.write(0, &format!("{lvs}/{v}"), first as u64, data)
                .is_ok()
        } else if pick < 70 {
            let v = any_vol(&mut rng).unwrap();
            let blocks = m.vols[&v].blocks.len() as u64;
            let r = rig.io(0, &format!("{lvs}/{v}"), IoType::Flush, 0, blocks, None);
            if r.is_ok() {
                m.vols.get_mut(&v).unwrap().settle();
            }
            r.is_ok()
        } else if pick < 80 {
            let v = any_vol(&mut rng).unwrap();
            let name = format!("s{step}");
            let r = store.snapshot(&name, Some(&v));
            m.answered(r.is_ok(), &name, |m| {
                let mut image = m.vols[&v].clone();
                image.settle();
                m.snaps.insert(name.clone(), image);
            })
        } else if pick < 88 && !m.snaps.is_empty() {
            let s = m
                .snaps
                .keys()
                .nth(rng.below(m.snaps.len()))
                .cloned()
                .unwrap();
            if pick < 84 {
                let name = format!("c{step}");
                let r = store.clone_volume(&s, None, &name);
                m.answered(r.is_ok(), &name, |m| {
                    let image = m.snaps[&s].clone();
                    m.vols.insert(name.clone(), image);
                })
            } else {
                let r = store.delete_snapshot(&s);
                m.snaps.remove(&s);
                m.answered(r.is_ok(), &s, |_| {})
            }
        } else if pick < 92 {
            let v = any_vol(&mut rng).unwrap();
            let r = store.delete_volume(&v);
            m.vols.remove(&v);
            m.answered(r.is_ok(), &v, |_| {})
        } else {
            let name = format!("o{}", rng.below(3));
            let data = vec![step as u8; rng.below(3000)];
            let r = store.put_object(&name, data.clone());
            m.objects.remove(&name);
            m.answered(r.is_ok(), &name, |m| {
                drop(m.objects.insert(name.clone(), data))
            })
        };
        if !ok {
            break;
        }
    }
    let cut_happened = ebdev::is_dead(&ee).unwrap();
    let _ = store.unload();
    bdev::delete(&ee).unwrap();
    // What the media kept, loaded afresh.
    let store = Store::load(&base, &rig.m, rig.owner())
        .unwrap_or_else(|e| panic!("seed {seed}: the store does not load after the cut: {e}"));
    let problems = store.check().unwrap();
    assert!(problems.is_empty(), "seed {seed}: {problems:?}");
    let vols: HashSet<String> = store
        .volumes()
        .unwrap()
        .into_iter()
        .map(|v| v.name)
        .collect();
    let snaps: HashSet<String> = store
        .snapshots()
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    for (name, vol) in m.vols.iter().filter(|(n, _)| !m.unsure.contains(*n)) {
        assert!(
            vols.contains(name),
            "seed {seed}: volume {name} was acknowledged and is gone"
        );
        let data = rig.read(0, &format!("{lvs}/{name}"), 0, vol.blocks.len() as u64);
        for (i, (b, got)) in vol.blocks.iter().zip(data.chunks(BS)).enumerate() {
            let t = tag_of(got);
            assert!(
                t == Some(b.durable) || t.is_some_and(|t| b.since.contains(&t)),
                "seed {seed}: {name} block {i} holds {t:?}; durable {} or one of {:?}",
                b.durable,
                b.since
            );
        }
    }
    for (name, image) in m.snaps.iter().filter(|(n, _)| !m.unsure.contains(*n)) {
        assert!(
            snaps.contains(name),
            "seed {seed}: snapshot {name} was acknowledged and is gone"
        );
        let data = rig.read(0, &format!("{lvs}/{name}"), 0, image.blocks.len() as u64);
        for (i, (b, got)) in image.blocks.iter().zip(data.chunks(BS)).enumerate() {
            assert_eq!(
                tag_of(got),
                Some(b.durable),
                "seed {seed}: snapshot {name} block {i}"
            );
        }
    }
    for (name, data) in m.objects.iter().filter(|(n, _)| !m.unsure.contains(*n)) {
        assert_eq!(
            store.get_object(name).unwrap().as_ref(),
            Some(data),
            "seed {seed}: object {name}"
        );
    }
    for (path, id) in m.paths.iter().filter(|(p, _)| !m.unsure.contains(*p)) {
        let file = &m.files[id];
        let len = (file.blocks.len() * BS) as u64;
        let mut data = store
            .read_file(None, path, 0, len)
            .unwrap_or_else(|e| panic!("seed {seed}: file {path} was acknowledged: {e}"));
        data.resize(len as usize, 0);
        for (i, (b, got)) in file.blocks.iter().zip(data.chunks(BS)).enumerate() {
            let t = tag_of(got);
            assert!(
                t == Some(b.durable) || t.is_some_and(|t| b.since.contains(&t)),
                "seed {seed}: file {path} block {i} holds {t:?}; durable {} or one of {:?}",
                b.durable,
                b.since
            );
        }
    }
    for dir in m.dirs.iter().filter(|d| !m.unsure.contains(*d)) {
        let d = dir.clone();
        store
            .ns_read(move |c| c.resolve(d.as_bytes()))
            .unwrap_or_else(|e| panic!("seed {seed}: directory {dir:?} was acknowledged: {e}"));
    }
    for path in m
        .gone
        .iter()
        .filter(|p| !m.unsure.contains(*p) && !m.paths.contains_key(*p))
    {
        let p = path.clone();
        let found = store.ns_read(move |c| c.resolve(p.as_bytes()));
        assert!(
            found.is_err(),
            "seed {seed}: {path} was removed and is back"
        );
    }
    // The store takes changes again.
    store.create_volume("after", cluster as u64, false).unwrap();
    rig.write(0, &format!("{lvs}/after"), 0, vec![7; BS])
        .unwrap();
    assert!(
        store.check().unwrap().is_empty(),
        "seed {seed}: after new changes"
    );
    store.destroy().unwrap();
    bdev::delete(&base).unwrap();
    cut_happened
}

#[test]
fn power_cuts_lose_nothing_acknowledged() {
    let want: usize = std::env::var("TANDEM_CRASH_CUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let rig = Rig::new(1);
    let mut rng = SimRng::new(0x5eed_c0de);
    let (mut cuts, mut runs) = (0, 0);
    while cuts < want {
        runs += 1;
        assert!(runs <= want * 4, "only {cuts} cuts in {runs} runs");
        if one_run(&rig, rng.next_u64()) {
            cuts += 1;
        }
    }
    eprintln!("{cuts} power cuts in {runs} runs");
}

/// One namespace change, as the model expects it.
fn namespace_step(
    store: &Store,
    m: &mut Model,
    rng: &mut SimRng,
    step: usize,
    next_tag: &mut u32,
) -> bool {
    use super::namespace::split_parent;
    use super::ns_owner::FileChange;
    use super::tree::Attrs;
    let attrs = Attrs {
        mode: 0o644,
        ..Attrs::default()
    };
    let dir = m.dirs[rng.below(m.dirs.len())].clone();
    let paths: Vec<(String, usize)> = m.paths.iter().map(|(p, i)| (p.clone(), *i)).collect();
    let any_path = |rng: &mut SimRng| paths.get(rng.below(paths.len().max(1))).cloned();
    match (rng.below(7), any_path(rng)) {
        (0, _) => {
            let path = format!("{dir}/d{step}");
            let p = path.clone();
            let r = store.ns_change(move |c| {
                let (d, n) = split_parent(&c.objects, p.as_bytes())?;
                c.mkdir(d, &n, attrs)
            });
            m.answered(r.is_ok(), &path, |m| m.dirs.push(path.clone()))
        }
        (1, _) | (_, None) => {
            let path = format!("{dir}/f{step}");
            let p = path.clone();
            let r = store.ns_change(move |c| {
                let (d, n) = split_parent(&c.objects, p.as_bytes())?;
                c.create(d, &n, attrs)
            });
            m.answered(r.is_ok(), &path, |m| {
                let id = step;
                m.files.insert(id, Vol { blocks: Vec::new() });
                m.paths.insert(path.clone(), id);
            })
        }
        (2 | 3, Some((path, id))) => {
            let first = rng.below(8);
            let n = 1 + rng.below(3);
            let tag = *next_tag;
            *next_tag += 1;
            let file = m.files.get_mut(&id).expect("a file");
            if file.blocks.len() < first + n {
                file.blocks.resize(first + n, Block::default());
            }
            for b in &mut file.blocks[first..first + n] {
                b.since.push(tag);
            }
            let data: Vec<u8> = std::iter::repeat_n(tag.to_le_bytes(), n * BS / 4)
                .flatten()
                .collect();
            let off = (first * BS) as u64;
            let r = store.change_file(&path, FileChange::Write { off, data });
            m.answered(r.is_ok(), &path, |_| {})
        }
        (4, Some((path, id))) => {
            let to = format!("{dir}/r{step}");
            let (p, t) = (path.clone(), to.clone());
            let r = store.ns_change(move |c| {
                let (sd, sn) = split_parent(&c.objects, p.as_bytes())?;
                let (dd, dn) = split_parent(&c.objects, t.as_bytes())?;
                c.rename(sd, &sn, dd, &dn)
            });
            if r.is_err() {
                m.unsure.insert(to.clone());
            }
            m.answered(r.is_ok(), &path, |m| {
                m.paths.remove(&path);
                m.paths.insert(to.clone(), id);
                m.gone.insert(path.clone());
            })
        }
        (5, Some((path, id))) => {
            let to = format!("{dir}/l{step}");
            let (p, t) = (path.clone(), to.clone());
            let r = store.ns_change(move |c| {
                let ino = c.resolve(p.as_bytes())?;
                let (d, n) = split_parent(&c.objects, t.as_bytes())?;
                c.link(ino, d, &n)
            });
            m.answered(r.is_ok(), &to, |m| {
                m.paths.insert(to.clone(), id);
            })
        }
        (_, Some((path, _))) => {
            let p = path.clone();
            let r = store.ns_change(move |c| {
                let (d, n) = split_parent(&c.objects, p.as_bytes())?;
                c.unlink(d, &n)
            });
            m.answered(r.is_ok(), &path, |m| {
                m.paths.remove(&path);
                m.gone.insert(path.clone());
            })
        }
    }
}
