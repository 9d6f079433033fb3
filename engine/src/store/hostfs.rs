//! Copying a host directory tree into a store's namespace and out again (`tandem store
//! import|export`), keeping permission bits, owners, times, symlinks, hard links, extended
//! attributes and holes (all-zero clusters are not written). Owners are set on export only
//! when running as root, as `cp -a` does; special files (devices, fifos, sockets) are skipped
//! and counted.

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use super::core::Core;
use super::namespace::{self, Data, SetAttrs};
use super::tree::{Attrs, InodeType, Tree};
use super::{Error, Result};

/// What an import or export did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Copied {
    pub dirs: u64,
    pub files: u64,
    pub symlinks: u64,
    pub hard_links: u64,
    pub bytes: u64,
    pub xattrs: u64,
    pub skipped: u64,
}

fn io(what: &Path, e: std::io::Error) -> Error {
    Error::Io(format!("{}: {e}", what.display()))
}

fn cpath(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| Error::Invalid(format!("{}: NUL in a path", p.display())))
}

fn attrs_of(m: &std::fs::Metadata) -> Attrs {
    Attrs {
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        atime: m.atime() * 1_000_000_000 + m.atime_nsec(),
        mtime: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
    }
}

/// The extended attributes of a path, not following a symlink.
fn host_xattrs(p: &Path) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let c = cpath(p)?;
    let mut names = vec![0u8; 65536];
    // SAFETY: `c` is a NUL-terminated path and `names` a buffer of the length given.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOTSUP) => Ok(Vec::new()),
            _ => Err(io(p, e)),
        };
    }
    let mut out = Vec::new();
    for name in names[..n as usize]
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
    {
        let cn = CString::new(name).expect("no NUL inside a listed name");
        let mut val = vec![0u8; 65536];
        // SAFETY: both strings are NUL-terminated and `val` is a buffer of the length given.
        let len =
            unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), val.as_mut_ptr().cast(), val.len()) };
        if len < 0 {
            return Err(io(p, std::io::Error::last_os_error()));
        }
        val.truncate(len as usize);
        out.push((name.to_vec(), val));
    }
    Ok(out)
}

/// Copy host directory `src` into store directory `dir` (which must be empty or hold none of
/// the names). One transaction: commit after.
pub fn import(core: &mut Core, data: &mut dyn Data, src: &Path, dir: u64) -> Result<Copied> {
    let mut done = Copied::default();
    let mut seen: HashMap<(u64, u64), u64> = HashMap::new();
    let mut dir_attrs: Vec<(u64, Attrs)> = Vec::new();
    let top = std::fs::symlink_metadata(src).map_err(|e| io(src, e))?;
    import_dir(core, data, src, dir, &mut seen, &mut dir_attrs, &mut done)?;
    dir_attrs.push((dir, attrs_of(&top)));
    // Directory times last: adding entries moved them.
    for (ino, a) in dir_attrs {
        core.setattr(ino, SetAttrs::all(&a))?;
    }
    Ok(done)
}

fn import_dir(
    core: &mut Core,
    data: &mut dyn Data,
    src: &Path,
    dir: u64,
    seen: &mut HashMap<(u64, u64), u64>,
    dir_attrs: &mut Vec<(u64, Attrs)>,
    done: &mut Copied,
) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(src)
        .map_err(|e| io(src, e))?
        .collect::<std::io::Result<_>>()
        .map_err(|e| io(src, e))?;
    entries.sort_by_key(|e| e.file_name());
    let cs = core.cluster_size() as usize;
    for e in entries {
        let path = e.path();
        let name = e.file_name().as_bytes().to_vec();
        let m = std::fs::symlink_metadata(&path).map_err(|e| io(&path, e))?;
        let a = attrs_of(&m);
        let ft = m.file_type();
        let ino = if ft.is_dir() {
            let ino = core.mkdir(dir, &name, a)?;
            import_dir(core, data, &path, ino, seen, dir_attrs, done)?;
            dir_attrs.push((ino, a));
            done.dirs += 1;
            ino
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&path).map_err(|e| io(&path, e))?;
            done.symlinks += 1;
            core.symlink(dir, &name, target.as_os_str().as_bytes(), a)?
        } else if ft.is_file() {
            if let Some(&ino) = seen.get(&(m.dev(), m.ino())) {
                core.link(ino, dir, &name)?;
                done.hard_links += 1;
                continue;
            }
            let ino = core.create(dir, &name, a)?;
            let mut f = std::fs::File::open(&path).map_err(|e| io(&path, e))?;
            let mut buf = vec![0u8; cs.max(1 << 20) / cs * cs];
            let mut off = 0u64;
            loop {
                let n = read_full(&mut f, &mut buf).map_err(|e| io(&path, e))?;
                if n == 0 {
                    break;
                }
                for (i, chunk) in buf[..n].chunks(cs).enumerate() {
                    if chunk.iter().any(|&b| b != 0) {
                        core.write(data, ino, off + (i * cs) as u64, chunk)?;
                    }
                }
                off += n as u64;
            }
            core.truncate(data, ino, m.len())?;
            done.files += 1;
            done.bytes += m.len();
            if m.nlink() > 1 {
                seen.insert((m.dev(), m.ino()), ino);
            }
            ino
        } else {
            done.skipped += 1;
            continue;
        };
        for (n, v) in host_xattrs(&path)? {
            core.set_xattr(ino, &n, &v)?;
            done.xattrs += 1;
        }
        if !ft.is_dir() {
            core.setattr(ino, SetAttrs::all(&a))?;
        }
    }
    Ok(())
}

fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    use std::io::Read;
    let mut at = 0;
    while at < buf.len() {
        match Read::read(f, &mut buf[at..])? {
            0 => break,
            n => at += n,
        }
    }
    Ok(at)
}

/// Copy store directory `dir` of image `root` into host directory `dst` (made if missing).
pub fn export(
    root: &Tree,
    cluster_size: u64,
    data: &mut dyn Data,
    dir: u64,
    dst: &Path,
) -> Result<Copied> {
    let mut done = Copied::default();
    let mut first: HashMap<u64, std::path::PathBuf> = HashMap::new();
    if !dst.exists() {
        std::fs::create_dir_all(dst).map_err(|e| io(dst, e))?;
    }
    // SAFETY: geteuid has no preconditions.
    let root_user = unsafe { libc::geteuid() } == 0;
    export_dir(
        root,
        cluster_size,
        data,
        dir,
        dst,
        &mut first,
        root_user,
        &mut done,
    )?;
    let st = namespace::stat_in(root, dir)?;
    finish(dst, &st.attrs, false, root_user)?;
    Ok(done)
}

#[allow(clippy::too_many_arguments)]
fn export_dir(
    root: &Tree,
    cs: u64,
    data: &mut dyn Data,
    dir: u64,
    dst: &Path,
    first: &mut HashMap<u64, std::path::PathBuf>,
    root_user: bool,
    done: &mut Copied,
) -> Result<()> {
    for e in namespace::readdir_in(root, dir)? {
        let path = dst.join(OsStr::from_bytes(&e.name));
        let st = namespace::stat_in(root, e.ino)?;
        match st.typ {
            InodeType::Dir => {
                std::fs::create_dir(&path).map_err(|er| io(&path, er))?;
                export_dir(root, cs, data, e.ino, &path, first, root_user, done)?;
                done.dirs += 1;
            }
            InodeType::Symlink => {
                let t = namespace::readlink_in(root, e.ino)?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&t), &path)
                    .map_err(|er| io(&path, er))?;
                done.symlinks += 1;
            }
            _ => {
                if let Some(p) = first.get(&e.ino) {
                    std::fs::hard_link(p, &path).map_err(|er| io(&path, er))?;
                    done.hard_links += 1;
                    continue;
                }
                let f = std::fs::File::create(&path).map_err(|er| io(&path, er))?;
                use std::os::unix::fs::FileExt;
                let mut off = 0;
                while off < st.size {
                    let n = (st.size - off).min(1 << 20);
                    let bytes = namespace::read_in(root, cs, data, e.ino, off, n)?;
                    // Zeros stay holes, cluster by cluster.
                    for (i, piece) in bytes.chunks(cs as usize).enumerate() {
                        if piece.iter().any(|&b| b != 0) {
                            f.write_all_at(piece, off + i as u64 * cs)
                                .map_err(|er| io(&path, er))?;
                        }
                    }
                    off += n;
                }
                f.set_len(st.size).map_err(|er| io(&path, er))?;
                done.files += 1;
                done.bytes += st.size;
                first.insert(e.ino, path.clone());
            }
        }
        let c = cpath(&path)?;
        for (n, v) in namespace::xattrs_in(root, e.ino) {
            let cn =
                CString::new(n).map_err(|_| Error::Invalid("NUL in an attribute name".into()))?;
            // SAFETY: both strings are NUL-terminated and `v` is a buffer of the length given.
            let r =
                unsafe { libc::lsetxattr(c.as_ptr(), cn.as_ptr(), v.as_ptr().cast(), v.len(), 0) };
            if r != 0 {
                return Err(io(&path, std::io::Error::last_os_error()));
            }
            done.xattrs += 1;
        }
        finish(&path, &st.attrs, st.typ == InodeType::Symlink, root_user)?;
    }
    Ok(())
}

/// Owner (as root), permission bits (not on a symlink) and times, in that order.
fn finish(path: &Path, a: &Attrs, symlink: bool, root_user: bool) -> Result<()> {
    let c = cpath(path)?;
    if root_user {
        // SAFETY: `c` is a NUL-terminated path.
        if unsafe { libc::lchown(c.as_ptr(), a.uid, a.gid) } != 0 {
            return Err(io(path, std::io::Error::last_os_error()));
        }
    }
    if !symlink {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(a.mode))
            .map_err(|e| io(path, e))?;
    }
    let ts = |ns: i64| libc::timespec {
        tv_sec: ns.div_euclid(1_000_000_000),
        tv_nsec: ns.rem_euclid(1_000_000_000),
    };
    let times = [ts(a.atime), ts(a.mtime)];
    // SAFETY: `c` is a NUL-terminated path and `times` two timespecs, as utimensat takes.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r != 0 {
        return Err(io(path, std::io::Error::last_os_error()));
    }
    Ok(())
}
