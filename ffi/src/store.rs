//! The store from C: format or load a store on a bdev, then its namespace by path (make,
//! read, write, stat, list, rename, unlink), snapshots, file clones and subtree diffs. Every
//! call here waits for the store's owner reactor, so it may be made from any thread but a
//! reactor (there it returns `-EPERM` rather than wait on itself).

use std::ffi::{c_char, c_int, c_void, CString};

use tandem::store::namespace::{self as ns, Stat};
use tandem::store::ns_owner::FileChange;
use tandem::store::tree::{Attrs, InodeType};
use tandem::store::{self, subtree_diff, CreateOpts, Store};

use crate::handle::{self, handle_kind, Shell};
use crate::{c_str, guard, put};

/// A loaded store.
pub struct tandem_store {
    shell: Shell<Store>,
}

handle_kind!(tandem_store, Store, 0x7461_6e64_7374_6f72);

/// What a namespace entry is.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum tandem_file_type {
    TANDEM_FILE_DIR = 1,
    TANDEM_FILE_REGULAR = 2,
    TANDEM_FILE_SYMLINK = 3,
    /// A volume: a file that is also a bdev, `<store>/<its path>`.
    TANDEM_FILE_VOLUME = 4,
}

fn file_type(t: InodeType) -> tandem_file_type {
    match t {
        InodeType::Dir => tandem_file_type::TANDEM_FILE_DIR,
        InodeType::Symlink => tandem_file_type::TANDEM_FILE_SYMLINK,
        InodeType::Volume => tandem_file_type::TANDEM_FILE_VOLUME,
        _ => tandem_file_type::TANDEM_FILE_REGULAR,
    }
}

/// What `tandem_store_stat` tells. Times are nanoseconds since the Unix epoch.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct tandem_stat {
    pub ino: u64,
    pub type_: tandem_file_type,
    /// Permission bits (the low 12 bits of `st_mode`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub size: u64,
    pub atime_ns: i64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    /// The generation of the inode's last change.
    pub generation: u64,
}

impl From<&Stat> for tandem_stat {
    fn from(s: &Stat) -> tandem_stat {
        tandem_stat {
            ino: s.ino,
            type_: file_type(s.typ),
            mode: s.attrs.mode,
            uid: s.attrs.uid,
            gid: s.attrs.gid,
            nlink: s.nlink,
            size: s.size,
            atime_ns: s.attrs.atime,
            mtime_ns: s.attrs.mtime,
            ctime_ns: s.ctime,
            generation: s.gen,
        }
    }
}

/// Hears one directory entry; return nonzero to stop.
pub type tandem_dirent_fn = Option<
    unsafe extern "C" fn(
        arg: *mut c_void,
        name: *const c_char,
        ino: u64,
        type_: tandem_file_type,
    ) -> c_int,
>;

/// Hears one line of a diff; return nonzero to stop.
pub type tandem_line_fn =
    Option<unsafe extern "C" fn(arg: *mut c_void, line: *const c_char) -> c_int>;

/// The running engine and the reactor that owns new stores and relationships (the first);
/// `-EPERM` on a reactor (the caller would wait on itself).
pub(crate) fn engine() -> Result<(tandem::reactor::Messenger, tandem::reactor::ReactorId), c_int> {
    if tandem::reactor::current().is_some() {
        return Err(-libc::EPERM);
    }
    let m = crate::env::messenger()?;
    let owner = *m.reactors().first().ok_or(-libc::ENODEV)?;
    Ok((m, owner))
}

/// Run `f` on the store behind `st`, turning its errors into negative errno values.
fn with_store(st: *const tandem_store, f: impl FnOnce(&Store) -> store::Result<c_int>) -> c_int {
    guard(|| {
        if tandem::reactor::current().is_some() {
            return -libc::EPERM;
        }
        // SAFETY: the handle contract of `handle::get`.
        match unsafe { handle::get(st) } {
            Ok(s) => f(s).unwrap_or_else(|e| e.errno()),
            Err(e) => e,
        }
    })
}

fn path_of(p: *const c_char) -> Result<String, c_int> {
    c_str(p).map(str::to_owned)
}

macro_rules! arg {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return Ok(e),
        }
    };
}

/// Format bdev `bdev` as a new store named `name` with clusters of `cluster_size` bytes (a
/// power of two, 4 KiB to 1 MiB), load it, and write its handle to `*out`. The engine must
/// be running. Any thread but a reactor.
#[no_mangle]
pub extern "C" fn tandem_store_create(
    bdev: *const c_char,
    name: *const c_char,
    cluster_size: u32,
    out: *mut *mut tandem_store,
) -> c_int {
    guard(|| {
        if out.is_null() {
            return -libc::EINVAL;
        }
        let (base, name) = match (c_str(bdev), c_str(name)) {
            (Ok(b), Ok(n)) => (b.to_owned(), n.to_owned()),
            _ => return -libc::EINVAL,
        };
        let (m, owner) = match engine() {
            Ok(e) => e,
            Err(e) => return e,
        };
        let opts = CreateOpts {
            base,
            name,
            cluster_size,
        };
        match Store::create(&opts, &m, owner) {
            Ok(s) => put(out, handle::make::<tandem_store>(s)),
            Err(e) => e.errno(),
        }
    })
}

/// Make volume `path` of `size` bytes (a multiple of 4 KiB): a file of the namespace that is
/// also a bdev, `<store>/<path>`, exportable as an NVMe namespace and replicable. `thick`
/// reserves every cluster now. Any thread but a reactor.
#[no_mangle]
pub extern "C" fn tandem_store_create_volume(
    st: *const tandem_store,
    path: *const c_char,
    size: u64,
    thick: bool,
) -> c_int {
    with_store(st, |s| {
        let path = arg!(path_of(path));
        s.create_volume(path.trim_start_matches('/'), size, thick)
            .map(|_| 0)
    })
}

/// Load the store on bdev `bdev` and write its handle to `*out`. Any thread but a reactor.
#[no_mangle]
pub extern "C" fn tandem_store_load(bdev: *const c_char, out: *mut *mut tandem_store) -> c_int {
    guard(|| {
        if out.is_null() {
            return -libc::EINVAL;
        }
        let base = match c_str(bdev) {
            Ok(b) => b.to_owned(),
            Err(e) => return e,
        };
        let (m, owner) = match engine() {
            Ok(e) => e,
            Err(e) => return e,
        };
        match Store::load(&base, &m, owner) {
            Ok(s) => put(out, handle::make::<tandem_store>(s)),
            Err(e) => e.errno(),
        }
    })
}

/// Stop serving the store (it stays on its bdev); the handle is stale afterwards. Any thread
/// but a reactor.
#[no_mangle]
pub extern "C" fn tandem_store_unload(st: *mut tandem_store) -> c_int {
    guard(|| {
        if tandem::reactor::current().is_some() {
            return -libc::EPERM;
        }
        // SAFETY: the handle contract of `handle::destroy`.
        match unsafe { handle::destroy(st) } {
            Ok(s) => s.unload().map_or_else(|e| e.errno(), |()| 0),
            Err(e) => e,
        }
    })
}

/// Run `op` as a namespace change on the directory and last name of `path`.
fn at_path(
    st: *const tandem_store,
    path: *const c_char,
    op: impl FnOnce(&mut store::Core, u64, &[u8]) -> store::Result<()> + Send + 'static,
) -> c_int {
    with_store(st, |s| {
        let path = arg!(path_of(path));
        s.ns_change(move |c| {
            let (dir, name) = ns::split_parent(&c.objects, path.as_bytes())?;
            op(c, dir, &name).map(|()| 0)
        })
    })
}

/// Make directory `path` with permission bits `mode`. Any thread but a reactor.
#[no_mangle]
pub extern "C" fn tandem_store_mkdir(
    st: *const tandem_store,
    path: *const c_char,
    mode: u32,
) -> c_int {
    at_path(st, path, move |c, dir, name| {
        c.mkdir(dir, name, Attrs::now(mode)).map(|_| ())
    })
}

/// Make an empty regular file `path` with permission bits `mode`. Any thread but a reactor.
#[no_mangle]
pub extern "C" fn tandem_store_create_file(
    st: *const tandem_store,
    path: *const c_char,
    mode: u32,
) -> c_int {
    at_path(st, path, move |c, dir, name| {
        c.create(dir, name, Attrs::now(mode)).map(|_| ())
    })
}

/// Write `len` bytes from `buf` at byte `offset` of file `path`, durably. Any thread but a
/// reactor.
#[no_mangle]
pub extern "C" fn tandem_store_write(
    st: *const tandem_store,
    path: *const c_char,
    offset: u64,
    buf: *const c_void,
    len: usize,
) -> c_int {
    with_store(st, |s| {
        let path = arg!(path_of(path));
        if buf.is_null() && len > 0 {
            return Ok(-libc::EINVAL);
        }
        let data = if len == 0 {
            Vec::new()
        } else {
            // SAFETY: non-null, and the caller passes `len` readable bytes.
            unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), len) }.to_vec()
        };
        s.change_file(&path, FileChange::Write { off: offset, data })
            .map(|()| 0)
    })
}

/// Read up to `len` bytes at byte `offset` of file `path` into `buf`; the count read (short
/// at the end of the file) goes to `*out_read`. `snapshot` NULL reads the live store. Any
/// thread but a reactor.
#[no_mangle]
pub extern "C" fn tandem_store_read(
    st: *const tandem_store,
    snapshot: *const c_char,
    path: *const c_char,
    offset: u64,
    buf: *mut c_void,
    len: usize,
    out_read: *mut usize,
) -> c_int {
    with_store(st, |s| {
        let path = arg!(path_of(path));
        let snap = if snapshot.is_null() {
            None
        } else {
            Some(arg!(path_of(snapshot)))
        };
        if out_read.is_null() || (buf.is_null() && len > 0) {
            return Ok(-libc::EINVAL);
        }
        let data = s.read_file(snap.as_deref(), &path, offset, len as u64)?;
        if !data.is_empty() {
            // SAFETY: the caller passes `len` writable bytes; `data` is at most `len` long.
            unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), buf.cast::<u8>(), data.len()) };
        }
        Ok(put(out_read, data.len()))
    })
}

/// Set file `path`'s size. Any thread but a reactor.
#[no_mangle]
pub extern "C" fn tandem_store_truncate(
    st: *const tandem_store,
    path: *const c_char,
    size: u64,
) -> c_int {
    with_store(st, |s| {
        let path = arg!(path_of(path));
        s.change_file(&path, FileChange::Truncate { size })
            .map(|()| 0)
    })
}

/// The attributes of `path` (live; symlinks are not followed). Any thread but a reactor.
#[no_mangle]
pub extern "C" fn tandem_store_stat(
    st: *const tandem_store,
    path: *const c_char,
    out: *mut tandem_stat,
) -> c_int {
    with_store(st, |s| {
        let path = arg!(path_of(path));
        if out.is_null() {
            return Ok(-libc::EINVAL);
        }
        let stat = s.ns_read(move |c| ns::stat_in(&c.objects, c.resolve(path.as_bytes())?))?;
        Ok(put(out, tandem_stat::from(&stat)))
    })
}

/// Call `cb` for each entry of directory `path`, in name order, until it returns nonzero.
/// The names are valid during the call only. Any thread but a reactor.
#[no_mangle]
pub extern "C" fn tandem_store_readdir(
    st: *const tandem_store,
    path: *const c_char,
    cb: tandem_dirent_fn,
    arg: *mut c_void,
) -> c_int {
    with_store(st, |s| {
        let path = arg!(path_of(path));
        let Some(cb) = cb else {
            return Ok(-libc::EINVAL);
        };
        let entries =
            s.ns_read(move |c| ns::readdir_in(&c.objects, c.resolve(path.as_bytes())?))?;
        for e in entries {
            let Ok(name) = CString::new(e.name) else {
                continue;
            };
            // SAFETY: the caller's callback with its own argument and a NUL-terminated name.
            if unsafe { cb(arg, name.as_ptr(), e.ino, file_type(e.typ)) } != 0 {
                break;
            }
        }
        Ok(0)
    })
}

/// Rename `from` to `to`, replacing what `to` names as POSIX rename does. Any thread but a
/// reactor.
#[no_mangle]
pub extern "C" fn tandem_store_rename(
    st: *const tandem_store,
    from: *const c_char,
    to: *const c_char,
) -> c_int {
    with_store(st, |s| {
        let (from, to) = (arg!(path_of(from)), arg!(path_of(to)));
        s.ns_change(move |c| {
            let (sd, sn) = ns::split_parent(&c.objects, from.as_bytes())?;
            let (dd, dn) = ns::split_parent(&c.objects, to.as_bytes())?;
            c.rename(sd, &sn, dd, &dn).map(|()| 0)
        })
    })
}

/// Remove file or symlink `path` (`-EISDIR` for a directory). Any thread but a reactor.
#[no_mangle]
pub extern "C" fn tandem_store_unlink(st: *const tandem_store, path: *const c_char) -> c_int {
    at_path(st, path, |c, dir, name| c.unlink(dir, name))
}

/// Remove empty directory `path`. Any thread but a reactor.
#[no_mangle]
pub extern "C" fn tandem_store_rmdir(st: *const tandem_store, path: *const c_char) -> c_int {
    at_path(st, path, |c, dir, name| c.rmdir(dir, name))
}

/// Snapshot the whole store as `name`. Any thread but a reactor.
#[no_mangle]
pub extern "C" fn tandem_store_snapshot(st: *const tandem_store, name: *const c_char) -> c_int {
    with_store(st, |s| {
        let name = arg!(path_of(name));
        s.snapshot(&name, None).map(|_| 0)
    })
}

/// Make file `dst` a clone of file `src`, sharing every cluster (a reflink). Any thread but a
/// reactor.
#[no_mangle]
pub extern "C" fn tandem_store_clone_file(
    st: *const tandem_store,
    src: *const c_char,
    dst: *const c_char,
) -> c_int {
    with_store(st, |s| {
        let (src, dst) = (arg!(path_of(src)), arg!(path_of(dst)));
        s.ns_change(move |c| {
            let from = c.resolve(src.as_bytes())?;
            let (dir, name) = ns::split_parent(&c.objects, dst.as_bytes())?;
            c.clone_file(from, dir, &name).map(|_| 0)
        })
    })
}

/// What changed below directory `path` from snapshot `from` to snapshot `to` (NULL: the live
/// store): `cb` hears one line per changed name (`+` created, `-` deleted, `R old -> new`,
/// `L` new hard link, `M` data, `A` attributes, `X` extended attributes), until it returns
/// nonzero. Any thread but a reactor.
#[no_mangle]
pub extern "C" fn tandem_store_diff(
    st: *const tandem_store,
    from: *const c_char,
    to: *const c_char,
    path: *const c_char,
    cb: tandem_line_fn,
    arg: *mut c_void,
) -> c_int {
    with_store(st, |s| {
        let (from, path) = (arg!(path_of(from)), arg!(path_of(path)));
        let to = if to.is_null() {
            None
        } else {
            Some(arg!(path_of(to)))
        };
        let Some(cb) = cb else {
            return Ok(-libc::EINVAL);
        };
        let lines = s.ns_read(move |c| {
            let (a, b) = (c.image(Some(&from))?, c.image(to.as_deref())?);
            let d = subtree_diff::subtree_diff(&a, &b, path.as_bytes(), c.cluster_size())?;
            Ok(d.summary(&a, &b))
        })?;
        for l in lines {
            let Ok(line) = CString::new(l) else { continue };
            // SAFETY: the caller's callback with its own argument and a NUL-terminated line.
            if unsafe { cb(arg, line.as_ptr()) } != 0 {
                break;
            }
        }
        Ok(0)
    })
}
