//! The subtree diff against rsync, in the same run: trees of 10k, 100k and 1M entries
//! (directories of 100 empty files under two levels of directories), each with 100 changes
//! spread over it (edits, renames, deletes, new directories with files, mode changes) between
//! two snapshots.
//! - `subtree_diff_100_changes/<n>`: the diff of the root between the two snapshots, in memory
//!   (criterion);
//! - `rsync_dry_run/<n>`: `rsync -a --dry-run --itemize-changes` between the two snapshots
//!   exported to host directories (criterion, 10 samples): what a tool without the store's
//!   generations must do to find the same change.
//!
//! Then the ratios, and how the diff's time grows from 10k to 1M entries (it should barely).
//!
//! `cargo bench -p tandem-bench --bench namespace` (needs rsync: scripts/setup.sh installs it).
//! Without `--bench` (the test command) it runs one small tree once, as a smoke test.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use criterion::{BenchmarkId, Criterion};
use tandem::reactor::sim::SimRng;
use tandem::store::namespace::{Data, SetAttrs, ROOT};
use tandem::store::subtree_diff::subtree_diff;
use tandem::store::tree::{Attrs, Tree};
use tandem::store::{Core, Result};

/// A sparse RAM device: only what is written is kept.
#[derive(Default)]
struct Sparse(HashMap<u64, Vec<u8>>);

impl Data for Sparse {
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        for (i, b) in buf.iter_mut().enumerate() {
            let at = offset + i as u64;
            *b = self
                .0
                .get(&(at / 4096))
                .map_or(0, |blk| blk[(at % 4096) as usize]);
        }
        Ok(())
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        for (i, &b) in data.iter().enumerate() {
            let at = offset + i as u64;
            self.0.entry(at / 4096).or_insert_with(|| vec![0; 4096])[(at % 4096) as usize] = b;
        }
        Ok(())
    }
}

/// A store of `n` entries and its two snapshots, 100 changes apart.
fn build(n: usize) -> (Core, Sparse, Tree, Tree) {
    let (mut c, _) = Core::format(64 << 30, 65536, "bench", 1).unwrap();
    let mut data = Sparse::default();
    let a = |i: usize| Attrs {
        mode: 0o644,
        uid: 1000,
        gid: 1000,
        atime: 1_600_000_000_000_000_000 + i as i64,
        mtime: 1_600_000_000_000_000_000 + i as i64,
    };
    let dirs = n / 101;
    let top = (dirs as f64).sqrt().ceil() as usize;
    let mut leaf_dirs = Vec::new();
    let mut made = 0;
    'outer: for t in 0..top {
        let td = c.mkdir(ROOT, format!("t{t}").as_bytes(), a(0)).unwrap();
        made += 1;
        for s in 0..top {
            if leaf_dirs.len() >= dirs {
                break 'outer;
            }
            let sd = c.mkdir(td, format!("s{s}").as_bytes(), a(0)).unwrap();
            made += 1;
            leaf_dirs.push(sd);
            for f in 0..100 {
                c.create(sd, format!("f{f}").as_bytes(), a(made)).unwrap();
                made += 1;
            }
        }
    }
    let dir_attrs = SetAttrs::all(&a(0));
    for &d in &leaf_dirs {
        c.setattr(d, dir_attrs).unwrap();
    }
    c.snapshot("a", 0, 1).unwrap();
    let mut rng = SimRng::new(0x2545_f491_4f6c_dd1d);
    for i in 0..100 {
        let d = leaf_dirs[rng.below(leaf_dirs.len())];
        let name = format!("f{}", rng.below(100));
        let Some(e) = c.lookup(d, name.as_bytes()) else {
            continue;
        };
        let r = match i % 5 {
            0 | 1 => c.write(&mut data, e.ino, 0, format!("edit {i}").as_bytes()),
            2 => {
                let to = leaf_dirs[rng.below(leaf_dirs.len())];
                c.rename(d, name.as_bytes(), to, format!("moved{i}").as_bytes())
            }
            3 => c.unlink(d, name.as_bytes()),
            _ => c
                .mkdir(d, format!("new{i}").as_bytes(), a(i))
                .and_then(|nd| c.create(nd, b"file", a(i)))
                .map(|_| ()),
        };
        r.unwrap();
    }
    c.snapshot("b", 0, 2).unwrap();
    let (ta, tb) = (c.image(Some("a")).unwrap(), c.image(Some("b")).unwrap());
    (c, data, ta, tb)
}

fn export(root: &Tree, data: &mut Sparse, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    tandem::store::hostfs::export(root, 65536, data, ROOT, to).unwrap();
}

fn rsync(a: &Path, b: &Path) -> usize {
    let out = Command::new("rsync")
        .args(["-a", "--dry-run", "--itemize-changes", "--delete"])
        .arg(format!("{}/", b.display()))
        .arg(format!("{}/", a.display()))
        .output()
        .expect("rsync (scripts/setup.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
        .split(|&c| c == b'\n')
        .filter(|l| !l.is_empty())
        .count()
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let full = std::env::args().any(|a| a == "--bench");
    let sizes: &[usize] = if full {
        &[10_000, 100_000, 1_000_000]
    } else {
        &[2_000]
    };
    let scratch = PathBuf::from(std::env::var("TMPDIR").unwrap_or_else(|_| "/tmp".into()))
        .join(format!("tandem-nsbench-{}", std::process::id()));
    let mut pairs = Vec::new();
    let mut visited = Vec::new();
    for &n in sizes {
        let (core, mut data, a, b) = build(n);
        let d = subtree_diff(&a, &b, b"/", core.cluster_size()).unwrap();
        let (da, db) = (scratch.join(format!("a{n}")), scratch.join(format!("b{n}")));
        export(&a, &mut data, &da);
        export(&b, &mut data, &db);
        let items = rsync(&da, &db);
        visited.push((n, d.dirs_visited, d.changes.len(), items));
        let mut g = c.benchmark_group("subtree_diff_100_changes");
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |bch, _| {
            bch.iter(|| subtree_diff(&a, &b, b"/", 65536).unwrap())
        });
        g.finish();
        let mut g = c.benchmark_group("rsync_dry_run");
        g.sample_size(10);
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |bch, _| {
            bch.iter(|| rsync(&da, &db))
        });
        g.finish();
        let _ = std::fs::remove_dir_all(&scratch);
        pairs.push((
            format!("subtree_diff_100_changes/{n}"),
            format!("rsync_dry_run/{n}"),
        ));
    }
    c.final_summary();
    let refs: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(x, y)| (x.as_str(), y.as_str()))
        .collect();
    tandem_bench::print_ratios("subtree diff of 100 changes against rsync --dry-run", &refs);
    for (x, y) in &pairs {
        if let (Some(d), Some(r)) = (tandem_bench::estimate_ns(x), tandem_bench::estimate_ns(y)) {
            println!("{x}: rsync takes {:.0} times as long", r / d);
        }
    }
    println!("\n== what each walked ==");
    for (n, dirs, changes, items) in &visited {
        println!("{n:>9} entries: the diff compared {dirs} directories and made {changes} changes; rsync itemized {items} lines");
    }
    if let (Some(small), Some(big)) = (
        tandem_bench::estimate_ns(&pairs[0].0),
        tandem_bench::estimate_ns(&pairs[pairs.len() - 1].0),
    ) {
        println!(
            "diff time, largest tree / smallest: {:.2} ({} / {} entries)",
            big / small,
            sizes[sizes.len() - 1],
            sizes[0]
        );
    }
}
