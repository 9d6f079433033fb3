//! A whole store image, damaged: bytes of the input patch a valid image (volumes, a snapshot, a
//! clone, an object, and a namespace: directories, files with data, a reflink, a hard link, a
//! symlink, extended attributes), some with their checksums made good again. Loading must
//! succeed or fail with an error; a store that loads must pass its check, diff its namespace
//! against its snapshot, take changes, commit, and load again.
#![no_main]

use std::collections::HashMap;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tandem::store::check::check;
use tandem::store::namespace::{Data, ROOT};
use tandem::store::tree::Attrs;
use tandem::store::file::write_frozen;
use tandem::store::format::BLOCK;
use tandem::store::{Core, Result};

const CS: u32 = 4096;
const DEVICE: u64 = CS as u64 * 256;

type Image = HashMap<u64, Vec<u8>>;

fn commit(core: &mut Core, img: &mut Image) -> Result<()> {
    let f = core.freeze()?;
    write_frozen(
        &f,
        &mut |b, d| {
            img.insert(b, d.to_vec());
            Ok(())
        },
        &mut || Ok(()),
    )?;
    core.commit_done(f.gen);
    Ok(())
}

/// File data goes into the image too (whole blocks).
struct ImgData<'a>(&'a mut Image);

impl Data for ImgData<'_> {
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        for (i, b) in buf.iter_mut().enumerate() {
            let at = offset as usize + i;
            *b = self.0.get(&((at / BLOCK) as u64)).map_or(0, |blk| blk[at % BLOCK]);
        }
        Ok(())
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        for (i, &b) in data.iter().enumerate() {
            let at = offset as usize + i;
            self.0.entry((at / BLOCK) as u64).or_insert_with(|| vec![0; BLOCK])[at % BLOCK] = b;
        }
        Ok(())
    }
}

fn load(img: &Image) -> Result<Core> {
    Core::load(DEVICE, &mut |bs| {
        Ok(bs.iter().map(|b| img.get(b).cloned().unwrap_or_else(|| vec![0; BLOCK])).collect())
    })
}

fn image() -> &'static Image {
    static IMAGE: OnceLock<Image> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let mut img = Image::new();
        let (mut core, f) = Core::format(DEVICE, CS, "lvs", 1).unwrap();
        write_frozen(&f, &mut |b, d| { img.insert(b, d.to_vec()); Ok(()) }, &mut || Ok(())).unwrap();
        core.commit_done(f.gen);
        let v = core.create_volume("v", 64 * CS as u64, false, 2).unwrap();
        for i in 0..40 {
            core.prepare_write(v, i).unwrap();
        }
        let a = Attrs { mode: 0o640, uid: 1, gid: 2, atime: 3, mtime: 4 };
        let d = core.mkdir(ROOT, b"dir", a).unwrap();
        let f = core.create(d, b"file", a).unwrap();
        core.write(&mut ImgData(&mut img), f, 5000, &[9; 3000]).unwrap();
        core.symlink(d, b"link", b"file", a).unwrap();
        core.set_xattr(f, b"user.x", b"value").unwrap();
        let s = core.snapshot("s", v, 3).unwrap();
        core.clone_volume(s, v, "c", 4).unwrap();
        core.put_object("o", &[7; 2000]).unwrap();
        core.clone_file(f, ROOT, b"reflink").unwrap();
        core.link(f, ROOT, b"hard").unwrap();
        core.rename(d, b"link", ROOT, b"moved").unwrap();
        commit(&mut core, &mut img).unwrap();
        for i in 0..10 {
            core.prepare_write(v, i * 3).unwrap();
        }
        commit(&mut core, &mut img).unwrap();
        img
    })
}

fuzz_target!(|data: &[u8]| {
    let mut img = image().clone();
    let mut keys: Vec<u64> = img.keys().copied().collect();
    keys.sort_unstable();
    for p in data.chunks_exact(4) {
        let b = keys[(p[0] & 0x7f) as usize % keys.len()];
        let at = u16::from_le_bytes([p[1], p[2]]) as usize % BLOCK;
        let block = img.get_mut(&b).unwrap();
        block[at] = p[3];
        // Half the patches re-seal the block, so that damage with a good checksum (a bug's, not
        // the media's) reaches the checks behind the checksum.
        if p[0] & 0x80 != 0 {
            let crc = crc32c::crc32c(&block[..BLOCK - 4]);
            block[BLOCK - 4..].copy_from_slice(&crc.to_le_bytes());
        }
    }
    if let Ok(core) = Core::load_unchecked(DEVICE, &mut |bs| {
        Ok(bs.iter().map(|b| img.get(b).cloned().unwrap_or_else(|| vec![0; BLOCK])).collect())
    }) {
        let _ = check(&core);
    }
    let Ok(mut core) = load(&img) else { return };
    assert!(check(&core).is_empty());
    // Its namespace diffs against its snapshots and takes changes.
    let live = core.objects.clone();
    for s in core.snapshots() {
        let root = core.snapshot_root(s.id).unwrap();
        let _ = tandem::store::subtree_diff::subtree_diff(&root, &live, b"/", CS as u64);
    }
    drop(live);
    let a = Attrs::default();
    if let Ok(d) = core.mkdir(ROOT, b"fuzzdir", a) {
        if let Ok(f) = core.create(d, b"f", a) {
            let _ = core.write(&mut ImgData(&mut img), f, 0, &[1; 100]);
        }
    }
    let _ = core.unlink(ROOT, b"hard");
    // A store that loads takes changes like any other.
    for v in core.volumes() {
        let clusters = v.size.div_ceil(CS as u64);
        for i in (0..clusters).step_by(5) {
            if core.prepare_write(v.obj, i).is_err() {
                break;
            }
        }
    }
    let _ = core.snapshot("fuzz", 0, 5);
    if let Some(s) = core.snapshots().first() {
        core.delete_snapshot(s.id).unwrap();
    }
    commit(&mut core, &mut img).unwrap();
    let again = load(&img).expect("a store that loaded and committed loads again");
    assert!(check(&again).is_empty());
});
