//! The namespace through RPC on a real tandemd (files, links, attributes, data, clones,
//! snapshots and diffs, refusals with their errno, and all of it again after SIGKILL and a
//! start from the saved config), and through the offline CLI on a store file: a host tree with nested
//! directories, files of several sizes, a sparse file, hard links, symlinks, extended
//! attributes, owners and nanosecond times is imported, snapshotted and exported again, and
//! the copy must equal the original in everything `cp -a` keeps; `ls`, `stat` and `cat` read
//! it; a second tree imported beside it shows in `diff` as exactly its own names; the check is
//! clean throughout.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;
use tandem_tests::{bin, rpc, spdk_rpc, start_bare};

fn store(args: &[&str]) -> String {
    let out = Command::new(bin("tandem"))
        .arg("store")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tandem store {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn set_xattr(p: &Path, name: &str, value: &[u8]) {
    let (c, n) = (
        CString::new(p.as_os_str().as_bytes()).unwrap(),
        CString::new(name).unwrap(),
    );
    // SAFETY: both strings are NUL-terminated and `value` is a buffer of the length given.
    let r = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        r,
        0,
        "setxattr {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

fn xattrs(p: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut names = vec![0u8; 4096];
    // SAFETY: `c` is NUL-terminated and `names` a buffer of the length given.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    assert!(n >= 0);
    let mut out = Vec::new();
    for name in names[..n as usize]
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
    {
        let cn = CString::new(name).unwrap();
        let mut v = vec![0u8; 4096];
        // SAFETY: as above.
        let len =
            unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
        assert!(len >= 0);
        v.truncate(len as usize);
        out.push((name.to_vec(), v));
    }
    out.sort();
    out
}

fn set_times(p: &Path, atime_ns: i64, mtime_ns: i64) {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let ts = |ns: i64| libc::timespec {
        tv_sec: ns / 1_000_000_000,
        tv_nsec: ns % 1_000_000_000,
    };
    let t = [ts(atime_ns), ts(mtime_ns)];
    // SAFETY: `c` is NUL-terminated and `t` two timespecs.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            t.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(r, 0);
}

/// Everything `cp -a` keeps, per relative path; hard links as the first path of their inode.
fn walk(top: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut first: BTreeMap<(u64, u64), String> = BTreeMap::new();
    let mut todo = vec![top.to_path_buf()];
    while let Some(p) = todo.pop() {
        let m = std::fs::symlink_metadata(&p).unwrap();
        let rel = p.strip_prefix(top).unwrap().display().to_string();
        let what = if m.is_dir() {
            let mut es: Vec<PathBuf> = std::fs::read_dir(&p)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            es.sort();
            todo.extend(es);
            "dir".to_owned()
        } else if m.file_type().is_symlink() {
            format!("-> {}", std::fs::read_link(&p).unwrap().display())
        } else {
            let link = first
                .entry((m.dev(), m.ino()))
                .or_insert_with(|| rel.clone())
                .clone();
            let data = std::fs::read(&p).unwrap();
            format!(
                "file {} bytes crc {:x} link {link} blocks<={}",
                data.len(),
                data.iter().fold(0u32, |h, &b| h.rotate_left(5) ^ b as u32),
                // Holes stay holes: allocated blocks bounded by the non-zero data.
                (data
                    .chunks(4096)
                    .filter(|c| c.iter().any(|&b| b != 0))
                    .count()
                    * 8)
                .max(8)
            )
        };
        let mtime = if m.is_dir() {
            0
        } else {
            m.mtime() * 1_000_000_000 + m.mtime_nsec()
        };
        if !m.is_dir() && !m.file_type().is_symlink() {
            assert!(
                m.blocks() as usize
                    <= (std::fs::read(&p)
                        .unwrap()
                        .chunks(4096)
                        .filter(|c| c.iter().any(|&b| b != 0))
                        .count()
                        * 8)
                    .max(8),
                "{rel}: not sparse"
            );
        }
        out.insert(
            rel,
            format!(
                "{what} mode {:o} owner {}:{} mtime {mtime} xattrs {:?}",
                m.mode() & 0o7777,
                m.uid(),
                m.gid(),
                xattrs(&p)
            ),
        );
    }
    out
}

fn make_tree(top: &Path, seed: u32) {
    std::fs::create_dir_all(top.join("etc/conf.d")).unwrap();
    std::fs::create_dir_all(top.join("usr/share/doc")).unwrap();
    for i in 0..40u32 {
        let dir = if i % 3 == 0 {
            "etc/conf.d"
        } else {
            "usr/share/doc"
        };
        let len = (i * 977 + seed * 13) as usize % 20000;
        let data: Vec<u8> = (0..len)
            .map(|k| (k as u32 * 7 + i + seed) as u8 | 1)
            .collect();
        let p = top.join(dir).join(format!("f{i}"));
        std::fs::write(&p, data).unwrap();
        set_times(
            &p,
            1_600_000_000_123_456_789 + i as i64,
            1_500_000_000_987_654_321 + i as i64,
        );
    }
    let sparse = top.join("sparse.img");
    let f = std::fs::File::create(&sparse).unwrap();
    f.set_len(8 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"middle", 4 << 20).unwrap();
    std::fs::hard_link(top.join("etc/conf.d/f0"), top.join("usr/hard0")).unwrap();
    std::fs::hard_link(top.join("etc/conf.d/f0"), top.join("hard0b")).unwrap();
    std::os::unix::fs::symlink("etc/conf.d/f3", top.join("link3")).unwrap();
    std::os::unix::fs::symlink("/nowhere/at/all", top.join("usr/dangling")).unwrap();
    set_xattr(&top.join("etc/conf.d/f3"), "user.mime_type", b"text/plain");
    set_xattr(&top.join("usr/share"), "user.origin", &[0, 1, 2, 255]);
    std::fs::set_permissions(
        top.join("etc"),
        std::os::unix::fs::PermissionsExt::from_mode(0o750),
    )
    .unwrap();
    let owned = CString::new(top.join("usr/share/doc/f1").as_os_str().as_bytes()).unwrap();
    // SAFETY: a NUL-terminated path. The tests run as root (the set-up needs it).
    assert_eq!(unsafe { libc::lchown(owned.as_ptr(), 1234, 5678) }, 0);
}

#[test]
fn a_host_tree_goes_in_and_out_whole_and_diffs_show_exactly_what_was_added() {
    let dir = std::env::temp_dir().join(format!("tandem-ns-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (src, src2, out) = (dir.join("src"), dir.join("src2"), dir.join("out"));
    make_tree(&src, 1);
    make_tree(&src2.join("b"), 2);
    let img = dir.join("store.img");
    let img_s = img.to_str().unwrap();
    store(&["format", img_s, "-s", "256M", "-c", "4096"]);
    store(&["import", img_s, src.to_str().unwrap()]);
    store(&["snapshot", img_s, "s1"]);
    store(&["export", img_s, out.to_str().unwrap(), "--snapshot", "s1"]);
    assert_eq!(walk(&out), walk(&src), "exported == imported");

    let ls = store(&["ls", img_s, "/etc"]);
    assert!(ls.starts_with("d0755") && ls.contains(" conf.d"), "{ls}");
    let ls = store(&["ls", img_s, "/"]);
    assert!(
        ls.contains("l0777") && ls.contains("link3 -> etc/conf.d/f3"),
        "{ls}"
    );
    assert_eq!(
        store(&["cat", img_s, "/usr/hard0"]).as_bytes(),
        std::fs::read(src.join("etc/conf.d/f0")).unwrap()
    );
    let st: serde_json::Value = serde_json::from_str(&store(&["stat", img_s, "/hard0b"])).unwrap();
    assert_eq!(st["nlink"], 3);
    let st: serde_json::Value =
        serde_json::from_str(&store(&["stat", img_s, "/usr/share/doc/f1"])).unwrap();
    assert_eq!(
        (st["uid"].as_u64(), st["gid"].as_u64()),
        (Some(1234), Some(5678))
    );

    // A second tree beside the first: the diff names exactly its paths, each once, the extra
    // names of a hard-linked file as links.
    store(&["import", img_s, src2.to_str().unwrap()]);
    let diff = store(&["diff", img_s, "--from", "s1"]);
    let mut got: Vec<String> = diff.lines().map(|l| l[2..].to_owned()).collect();
    got.sort();
    let want: Vec<String> = walk(&src2).into_keys().filter(|p| !p.is_empty()).collect();
    assert_eq!(got, want, "{diff}");
    assert_eq!(
        diff.lines().filter(|l| l.starts_with("L ")).count(),
        2,
        "{diff}"
    );
    assert_eq!(
        diff.lines().filter(|l| l.starts_with("+ ")).count(),
        want.len() - 2,
        "{diff}"
    );
    assert!(store(&["diff", img_s, "--from", "s1", "--path", "/etc"]).is_empty());
    let check = store(&["check", img_s]);
    assert!(check.trim_end().ends_with("clean"), "{check}");
    let err = Command::new(bin("tandem"))
        .args(["store", "import", img_s, src2.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        !err.status.success(),
        "importing over existing names is refused"
    );
    let err = String::from_utf8_lossy(&err.stderr);
    assert!(err.contains("already exists"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn b64(data: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            out.push(if i <= c.len() {
                A[(n >> (18 - 6 * i) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

#[test]
fn the_namespace_over_rpc_survives_sigkill() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let file = dir.join(format!("ns-{}.img", std::process::id()));
    let config = dir.join(format!("ns-{}.json", std::process::id()));
    std::fs::File::create(&file)
        .unwrap()
        .set_len(128 << 20)
        .unwrap();
    let s = format!("/tmp/tandem-ns-{}-a.sock", std::process::id());
    let mut d = start_bare(&s, &[]);
    let ok = |method: &str, params: serde_json::Value| {
        rpc(&s, method, params.clone()).unwrap_or_else(|e| panic!("{method} {params}: {e:?}"))
    };
    let (ok_uring, out, err) = spdk_rpc(
        &s,
        &[
            "bdev_uring_create",
            file.to_str().unwrap(),
            "uring0",
            "4096",
        ],
    );
    assert!(ok_uring, "{out}{err}");
    let (made, out, err) = spdk_rpc(
        &s,
        &["bdev_lvol_create_lvstore", "uring0", "lvs0", "-c", "4096"],
    );
    assert!(made, "{out}{err}");
    let l = |v: serde_json::Value| {
        let mut v = v;
        v["lvs_name"] = json!("lvs0");
        v
    };
    ok("store_mkdir", l(json!({"path": "/vms"})));
    ok(
        "store_mkdir",
        l(json!({"path": "/vms/vm1", "mode": "750", "uid": 107, "gid": 107})),
    );
    ok("store_create", l(json!({"path": "/vms/vm1/disk0"})));
    let data: Vec<u8> = (0..70000u32).map(|i| (i % 251) as u8 + 1).collect();
    ok(
        "store_write",
        l(json!({"path": "/vms/vm1/disk0", "offset": 1_000_000, "data": b64(&data)})),
    );
    ok(
        "store_write",
        l(json!({"path": "/vms/vm1/disk0", "offset": 3, "data": b64(b"head")})),
    );
    ok(
        "store_symlink",
        l(json!({"path": "/vms/current", "target": "vm1"})),
    );
    ok(
        "store_link",
        l(json!({"path": "/vms/vm1/disk0", "new_path": "/vms/disk0.link"})),
    );
    ok(
        "store_set_xattr",
        l(json!({"path": "/vms/vm1/disk0", "name": "user.policy", "value": b64(b"sync")})),
    );
    let st = ok("store_stat", l(json!({"path": "/vms/vm1/disk0"})));
    assert_eq!(
        (st["size"].as_u64(), st["nlink"].as_u64()),
        (Some(1_070_000), Some(2)),
        "{st}"
    );
    assert_eq!(st["xattrs"][0]["value"], b64(b"sync"));
    let st = ok("store_stat", l(json!({"path": "/vms/vm1"})));
    assert_eq!(
        (st["mode"].as_str(), st["uid"].as_u64()),
        (Some("750"), Some(107))
    );
    let names: Vec<String> = ok("store_readdir", l(json!({"path": "/vms"})))
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["current", "disk0.link", "vm1"]);
    let read = |path: &str, off: u64, len: u64, snap: Option<&str>| {
        let mut p = l(json!({"path": path, "offset": off, "length": len}));
        if let Some(sn) = snap {
            p["snapshot"] = json!(sn);
        }
        ok("store_read", p)["data"].as_str().unwrap().to_owned()
    };
    assert_eq!(read("/vms/vm1/disk0", 1_000_000, 70000, None), b64(&data));
    assert_eq!(read("/vms/vm1/disk0", 0, 8, None), b64(b"\0\0\0head\0"));
    assert_eq!(
        read("/vms/vm1/disk0", 500_000, 4, None),
        b64(&[0; 4]),
        "a hole reads zeros"
    );

    ok(
        "store_snapshot_create",
        json!({"lvs_name": "lvs0", "snapshot_name": "s1"}),
    );
    ok(
        "store_rename",
        l(json!({"path": "/vms/vm1", "new_path": "/vms/vm2"})),
    );
    ok(
        "store_write",
        l(json!({"path": "/vms/vm2/disk0", "offset": 1_000_000, "data": b64(b"CHANGED")})),
    );
    ok(
        "store_clone_file",
        l(json!({"path": "/vms/vm2/disk0", "new_path": "/vms/vm2/disk1"})),
    );
    ok("store_unlink", l(json!({"path": "/vms/disk0.link"})));
    ok(
        "store_truncate",
        l(json!({"path": "/vms/vm2/disk1", "size": 10})),
    );
    ok(
        "store_punch",
        l(json!({"path": "/vms/vm2/disk0", "offset": 0, "length": 4096})),
    );
    assert_eq!(read("/vms/vm2/disk0", 0, 8, None), b64(&[0; 8]), "punched");
    assert_eq!(
        read("/vms/vm2/disk1", 0, 100, None),
        b64(b"\0\0\0head\0\0\0"),
        "the clone, cut"
    );
    assert_eq!(
        read("/vms/vm1/disk0", 1_000_000, 7, Some("s1")),
        b64(&data[..7]),
        "the snapshot"
    );
    let diff = ok(
        "store_diff",
        l(json!({"from": "s1", "path": "/vms", "changes": true})),
    );
    let mut lines: Vec<&str> = diff["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    lines.sort();
    assert_eq!(
        lines,
        ["+ vm2/disk1", "- disk0.link", "M vm2/disk0", "R vm1 -> vm2"],
        "{diff}"
    );
    assert!(
        diff["changes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["op"] == "clone_file"),
        "{diff}"
    );

    // A volume is a file of the namespace, at any path: a LUN at /vms/vm2/lun0.
    let (made, out, err) = spdk_rpc(
        &s,
        &["bdev_lvol_create", "-l", "lvs0", "-t", "vms/vm2/lun0", "4"],
    );
    assert!(made, "{out}{err}");
    let (listed, out, _) = spdk_rpc(&s, &["bdev_get_bdevs", "-b", "lvs0/vms/vm2/lun0"]);
    assert!(listed && out.contains("\"num_blocks\": 1024"), "{out}");
    let st = ok("store_stat", l(json!({"path": "/vms/vm2/lun0"})));
    assert_eq!(
        (st["type"].as_str(), st["size"].as_u64()),
        (Some("volume"), Some(4 << 20))
    );
    for (method, params) in [
        ("store_unlink", json!({"path": "/vms/vm2/lun0"})),
        (
            "store_rename",
            json!({"path": "/vms/vm2", "new_path": "/vm2"}),
        ),
        (
            "store_write",
            json!({"path": "/vms/vm2/lun0", "offset": 0, "data": b64(b"x")}),
        ),
    ] {
        let got = rpc(&s, method, l(params.clone()));
        assert_eq!(
            got.as_ref().map_err(|e| e.0),
            Err(-libc::EBUSY as i64),
            "{method}: {got:?}"
        );
    }
    let (made, out, _) = spdk_rpc(
        &s,
        &["bdev_lvol_create", "-l", "lvs0", "-t", "nowhere/lun", "4"],
    );
    assert!(!made && out.contains("\"code\": -2"), "{out}");
    let (deleted, out, err) = spdk_rpc(&s, &["bdev_lvol_delete", "lvs0/vms/vm2/lun0"]);
    assert!(deleted, "{out}{err}");

    // Refusals with their errno; nothing changes.
    for (method, params, code) in [
        ("store_rmdir", json!({"path": "/vms"}), -libc::ENOTEMPTY),
        ("store_mkdir", json!({"path": "/vms"}), -libc::EEXIST),
        ("store_unlink", json!({"path": "/vms/vm2"}), -libc::EISDIR),
        (
            "store_create",
            json!({"path": "/vms/vm2/disk0/x"}),
            -libc::ENOTDIR,
        ),
        ("store_stat", json!({"path": "/nowhere"}), -libc::ENOENT),
        (
            "store_rename",
            json!({"path": "/vms", "new_path": "/vms/vm2/in"}),
            -32602,
        ),
        (
            "store_write",
            json!({"path": "/vms/vm2/disk0", "offset": 0, "data": "not base64!"}),
            -32602,
        ),
    ] {
        let got = rpc(&s, method, l(params.clone()));
        assert_eq!(
            got.as_ref().map_err(|e| e.0),
            Err(code as i64),
            "{method} {params}: {got:?}"
        );
    }
    assert_eq!(
        ok("store_check", json!({"lvs_name": "lvs0"}))["clean"],
        true
    );
    let (saved, cfg, err) = spdk_rpc(&s, &["save_config"]);
    assert!(saved, "{err}");
    std::fs::write(&config, cfg).unwrap();

    // Every acknowledged change is on the file after SIGKILL.
    d.signal(libc::SIGKILL);
    d.wait_exit(std::time::Duration::from_secs(10));
    let s2 = format!("/tmp/tandem-ns-{}-b.sock", std::process::id());
    let _d2 = start_bare(&s2, &["--config", config.to_str().unwrap()]);
    let read2 = |path: &str, off: u64, len: u64| {
        rpc(
            &s2,
            "store_read",
            json!({"lvs_name": "lvs0", "path": path, "offset": off, "length": len}),
        )
        .unwrap()["data"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        read2("/vms/vm2/disk0", 1_000_000, 10),
        b64(&[b"CHANGED".as_slice(), &data[7..10]].concat())
    );
    assert_eq!(read2("/vms/vm2/disk1", 0, 100), b64(b"\0\0\0head\0\0\0"));
    let diff = rpc(
        &s2,
        "store_diff",
        json!({"lvs_name": "lvs0", "from": "s1", "path": "/vms"}),
    )
    .unwrap();
    assert_eq!(diff["lines"].as_array().unwrap().len(), 4, "{diff}");
    assert_eq!(
        rpc(&s2, "store_check", json!({"lvs_name": "lvs0"})).unwrap()["clean"],
        true
    );
    let _ = std::fs::remove_file(&file);
}

/// Per inode: its links ((parent, name)) and what it holds, as text.
type Inventory = BTreeMap<u64, (Vec<(u64, Vec<u8>)>, String)>;

/// Per inode of an image: where it is linked and what it holds (type, permission bits, owner,
/// size, data checksum, target, xattrs; a file's times too).
fn inventory(
    s: &mut tandem::store::file::FileStore,
    root: &tandem::store::tree::Tree,
) -> Inventory {
    use tandem::store::namespace as ns;
    use tandem::store::tree::InodeType;
    let cs = s.core.cluster_size();
    let mut out = Inventory::new();
    let mut todo = vec![ns::ROOT];
    out.insert(ns::ROOT, (Vec::new(), String::new()));
    while let Some(d) = todo.pop() {
        for e in ns::readdir_in(root, d).unwrap() {
            let first = !out.contains_key(&e.ino);
            out.entry(e.ino).or_default().0.push((d, e.name.clone()));
            if !first {
                continue;
            }
            let st = ns::stat_in(root, e.ino).unwrap();
            let (_, f) = s.parts();
            let what = match st.typ {
                InodeType::Dir => {
                    todo.push(e.ino);
                    String::new()
                }
                InodeType::Symlink => {
                    String::from_utf8_lossy(&ns::readlink_in(root, e.ino).unwrap()).into_owned()
                }
                _ => {
                    let data = ns::read_in(root, cs, f, e.ino, 0, st.size).unwrap();
                    format!(
                        "{} {:x} {:?}",
                        st.size,
                        crc(&data),
                        (st.attrs.atime, st.attrs.mtime)
                    )
                }
            };
            out.get_mut(&e.ino).unwrap().1 = format!(
                "{:?} {:o} {}:{} {what} {:?}",
                st.typ,
                st.attrs.mode,
                st.attrs.uid,
                st.attrs.gid,
                ns::xattrs_in(root, e.ino)
            );
        }
    }
    for v in out.values_mut() {
        v.0.sort();
    }
    out
}

fn crc(data: &[u8]) -> u32 {
    data.iter().fold(0u32, |h, &b| h.rotate_left(5) ^ b as u32)
}

/// /usr/share (tens of thousands of names) goes into a store; a few hundred changes land all
/// over it (edits, truncations, renames of files and of directories, deletes of files and of
/// a subtree, new directories with files, hard links, symlinks, modes, xattrs); the subtree
/// diff of the root must name exactly the inodes whose links or contents differ between full
/// walks of the two snapshots, and it must visit only a small share of the directories.
#[test]
fn a_diff_of_usr_share_is_exactly_the_change() {
    use tandem::store::file::FileStore;
    use tandem::store::namespace::{self as ns, SetAttrs, ROOT};
    use tandem::store::subtree_diff::{subtree_diff, Change};
    use tandem::store::tree::{Attrs, InodeType};
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let img = dir.join(format!("share-{}.img", std::process::id()));
    std::fs::File::create(&img)
        .unwrap()
        .set_len(3 << 30)
        .unwrap();
    let mut s = FileStore::format(&img, 4096, "share").unwrap();
    let (core, f) = s.parts();
    let copied = tandem::store::hostfs::import(core, f, Path::new("/usr/share"), ROOT).unwrap();
    assert!(
        copied.files + copied.dirs + copied.symlinks > 20_000,
        "{copied:?}"
    );
    s.core.snapshot("a", 0, 1).unwrap();
    s.commit().unwrap();

    // Everything there, by kind.
    let a = s.image(Some("a")).unwrap();
    let mut files = Vec::new();
    let mut dirs = Vec::new();
    let mut todo = vec![ROOT];
    while let Some(d) = todo.pop() {
        for e in ns::readdir_in(&a, d).unwrap() {
            match e.typ {
                InodeType::Dir => {
                    dirs.push((d, e.name.clone(), e.ino));
                    todo.push(e.ino);
                }
                InodeType::File => files.push((d, e.name.clone(), e.ino)),
                _ => {}
            }
        }
    }
    let mut rng = tandem::reactor::sim::SimRng::new(0x9e37_79b9_7f4a_7c15);
    let attrs = Attrs {
        mode: 0o640,
        uid: 7,
        gid: 7,
        atime: 1,
        mtime: 2,
    };
    let mut changes = 0;
    let (core, f) = s.parts();
    let mut gone = std::collections::HashSet::new();
    let pick_file = |rng: &mut tandem::reactor::sim::SimRng,
                     gone: &std::collections::HashSet<u64>| loop {
        let x = files[rng.below(files.len())].clone();
        if !gone.contains(&x.2) {
            return x;
        }
    };
    for i in 0..300 {
        let (d, name, ino) = pick_file(&mut rng, &gone);
        let ok = match i % 10 {
            0..=2 => core.write(
                f,
                ino,
                rng.below(20000) as u64,
                format!("edit {i}").as_bytes(),
            ),
            3 => core.truncate(f, ino, rng.below(3000) as u64),
            4 => {
                let (_, _, to) = dirs[rng.below(dirs.len())].clone();
                core.rename(d, &name, to, format!("moved{i}").as_bytes())
            }
            5 => {
                gone.insert(ino);
                core.unlink(d, &name)
            }
            6 => {
                let (_, _, to) = dirs[rng.below(dirs.len())].clone();
                let nd = core.mkdir(to, format!("new{i}").as_bytes(), attrs).unwrap();
                let nf = core.create(nd, b"file", attrs).unwrap();
                core.write(f, nf, 0, &vec![i as u8 + 1; 9000])
            }
            7 => core.link(ino, ROOT, format!("link{i}").as_bytes()),
            8 => core.setattr(
                ino,
                SetAttrs {
                    mode: Some(0o600),
                    ..SetAttrs::default()
                },
            ),
            _ => core.set_xattr(ino, b"user.tag", format!("{i}").as_bytes()),
        };
        ok.unwrap_or_else(|e| panic!("change {i}: {e}"));
        changes += 1;
    }
    // Whole directories: two renamed, one subtree of files deleted.
    for k in 0..2 {
        let (d, name, _) = dirs[rng.below(dirs.len())].clone();
        if core
            .rename(d, &name, ROOT, format!("dirmoved{k}").as_bytes())
            .is_ok()
        {
            changes += 1;
        }
    }
    core.symlink(ROOT, b"newlink", b"/usr/share/doc", attrs)
        .unwrap();
    s.core.snapshot("b", 0, 2).unwrap();
    s.commit().unwrap();

    let (a, b) = (s.image(Some("a")).unwrap(), s.image(Some("b")).unwrap());
    let t = std::time::Instant::now();
    let d = subtree_diff(&a, &b, b"/", 4096).unwrap();
    let diff_time = t.elapsed();
    let t = std::time::Instant::now();
    let (ia, ib) = (inventory(&mut s, &a), inventory(&mut s, &b));
    let walk_time = t.elapsed();
    // What the walks say changed: an inode whose links or contents differ (a directory's
    // times move with its entries, so they are not counted for directories).
    let mut want = std::collections::BTreeSet::new();
    for ino in ia.keys().chain(ib.keys()) {
        if ia.get(ino) != ib.get(ino) {
            want.insert(*ino);
        }
    }
    // What the diff says changed.
    let mut got = std::collections::BTreeSet::new();
    for c in &d.changes {
        match c {
            Change::Create { ino, .. }
            | Change::CloneFile { ino, .. }
            | Change::CloneRange { ino, .. }
            | Change::Detach { ino, .. }
            | Change::Unlink { ino, .. }
            | Change::Link { ino, .. }
            | Change::Truncate { ino, .. }
            | Change::Write { ino, .. }
            | Change::Punch { ino, .. }
            | Change::SetXattr { ino, .. }
            | Change::RemoveXattr { ino, .. } => {
                got.insert(*ino);
            }
            Change::SetAttr { ino, attrs } => {
                let before = ns::stat_in(&a, *ino).ok();
                let dir = before.as_ref().is_some_and(|s| s.typ == InodeType::Dir);
                let same = before.is_some_and(|s| {
                    let o = s.attrs;
                    (o.mode, o.uid, o.gid) == (attrs.mode, attrs.uid, attrs.gid)
                        && (dir || (o.atime, o.mtime) == (attrs.atime, attrs.mtime))
                });
                if !same {
                    got.insert(*ino);
                }
            }
        }
    }
    let missing: Vec<_> = want.difference(&got).collect();
    let extra: Vec<_> = got.difference(&want).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, extra {extra:?}"
    );
    let total_dirs = dirs.len() as u64 + 1;
    eprintln!(
        "{} names, {changes} changes: {} inodes changed; the diff took {diff_time:?} and compared {} of {total_dirs} directories; two full walks took {walk_time:?}",
        ia.len(),
        want.len(),
        d.dirs_visited
    );
    assert!(
        d.dirs_visited * 4 < total_dirs,
        "{} of {total_dirs} directories visited",
        d.dirs_visited
    );
    assert!(tandem::store::check::check(&s.core).is_empty());
    let _ = std::fs::remove_file(&img);
}
