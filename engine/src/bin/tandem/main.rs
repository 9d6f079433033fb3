//! tandem: the command-line tool. `tandem rpc` calls a running tandemd's JSON-RPC methods;
//! `tandem perf` drives any NVMe/TCP target, as spdk_nvme_perf does; `tandem repl` drives
//! replication relationships; `tandem store` works on a store no tandemd has loaded.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod repl;
use tandem::reactor::CoreMask;

#[derive(Parser, Debug)]
#[command(name = "tandem", version = tandem::VERSION, about = "The Tandem command-line tool")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the engine version.
    Version,
    /// Call a JSON-RPC method of a running tandemd and print its result.
    Rpc {
        /// tandemd's RPC socket.
        #[arg(short = 's', long = "socket", default_value = "/var/tmp/tandem.sock")]
        socket: std::path::PathBuf,
        /// The method, e.g. bdev_get_bdevs.
        method: String,
        /// Parameters as a JSON object, e.g. '{"name": "Malloc0"}'.
        params: Option<String>,
    },
    /// Drive an NVMe/TCP target: IOPS, bandwidth and latency, as spdk_nvme_perf reports them.
    Perf {
        /// Transport ID: 'trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:4420 subnqn:NQN [ns:N]'.
        #[arg(short = 'r', long = "transport")]
        trid: String,
        /// Commands in flight per core.
        #[arg(short = 'q', long = "queue-depth", default_value_t = 32)]
        queue_depth: usize,
        /// Bytes per I/O.
        #[arg(short = 'o', long = "io-size", default_value_t = 4096)]
        io_size: usize,
        /// read, write, randread, randwrite, rw or randrw.
        #[arg(short = 'w', long = "workload", value_parser = tandem::perf::Pattern::parse)]
        pattern: tandem::perf::Pattern,
        /// Percentage of reads for rw and randrw.
        #[arg(short = 'M', long = "rwmixread", default_value_t = 50)]
        read_pct: u8,
        /// Seconds to run.
        #[arg(short = 't', long = "time", default_value_t = 10.0)]
        time: f64,
        /// Cores to run on, one job and one I/O queue each (a core mask as tandemd takes it).
        #[arg(short = 'c', long = "core-mask", default_value = "0x1", value_parser = CoreMask::parse)]
        cores: CoreMask,
        /// Write a pattern to each block, read it back and check it.
        #[arg(long)]
        verify: bool,
        /// Header digest.
        #[arg(short = 'H', long = "hdgst")]
        header_digest: bool,
        /// Data digest.
        #[arg(short = 'I', long = "ddgst")]
        data_digest: bool,
        /// poll (the default: reactors spin, as spdk_nvme_perf does) or adaptive.
        #[arg(long, default_value = "poll")]
        mode: tandem::reactor::Mode,
        /// Print the results as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the cores a mask selects, and whether this machine has them.
    Cores {
        /// 0x3, [0,1], 0-1
        mask: String,
    },
    /// Work on a store in a file or block device that no tandemd has loaded.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Replication relationships of a running tandemd.
    Repl {
        /// tandemd's RPC socket.
        #[arg(short = 's', long = "socket", default_value = "/var/tmp/tandem.sock")]
        socket: std::path::PathBuf,
        #[command(subcommand)]
        command: repl::ReplCommand,
    },
}

#[derive(Subcommand, Debug)]
enum StoreCommand {
    /// Make a new, empty store (the file is created, or grown, to --size when given).
    Format {
        file: std::path::PathBuf,
        /// The store's name (SPDK's lvs_name).
        #[arg(short = 'n', long, default_value = "lvs0")]
        name: String,
        /// Cluster size in bytes: a power of two from 4096 to 1048576.
        #[arg(short = 'c', long, default_value_t = 65536)]
        cluster_size: u32,
        /// Size of the file to create, in bytes (suffixes K, M, G, T).
        #[arg(short = 's', long, value_parser = parse_size)]
        size: Option<u64>,
    },
    /// The full consistency check: checksums, tree order, reference counts, free space.
    /// Exits 0 when clean, 1 when problems are found (each printed), 2 when it cannot open.
    Check { file: std::path::PathBuf },
    /// List volumes and snapshots.
    List { file: std::path::PathBuf },
    /// Take a snapshot of the whole store.
    Snapshot {
        file: std::path::PathBuf,
        name: String,
    },
    /// What changed between two snapshots (or a snapshot and the live store). With a volume:
    /// its changed clusters, as JSON. Otherwise what changed below --path, one line per name
    /// (+ created, - deleted, R renamed, L new hard link, M data, A attributes, X extended
    /// attributes), or with --changes the ordered changes that rebuild it, as JSON lines.
    Diff {
        file: std::path::PathBuf,
        volume: Option<String>,
        #[arg(long)]
        from: String,
        /// Default: the live store.
        #[arg(long)]
        to: Option<String>,
        #[arg(long, default_value = "/")]
        path: String,
        #[arg(long)]
        changes: bool,
    },
    /// List a directory of the namespace, as `ls -l` does.
    Ls {
        file: std::path::PathBuf,
        #[arg(default_value = "/")]
        path: String,
        #[arg(long)]
        snapshot: Option<String>,
    },
    /// An inode's attributes, extended attributes and links, as JSON.
    Stat {
        file: std::path::PathBuf,
        path: String,
        #[arg(long)]
        snapshot: Option<String>,
    },
    /// A file's bytes (or a symlink's target) to standard output.
    Cat {
        file: std::path::PathBuf,
        path: String,
        #[arg(long)]
        snapshot: Option<String>,
    },
    /// Copy a host directory tree into a directory of the store, keeping modes, owners,
    /// times, symlinks, hard links, extended attributes and holes.
    Import {
        file: std::path::PathBuf,
        host_dir: std::path::PathBuf,
        /// The store directory to copy into.
        #[arg(long, default_value = "/")]
        to: String,
    },
    /// Copy a directory of the store (live or in a snapshot) out to a host directory.
    Export {
        file: std::path::PathBuf,
        host_dir: std::path::PathBuf,
        #[arg(long, default_value = "/")]
        from: String,
        #[arg(long)]
        snapshot: Option<String>,
    },
}

fn parse_size(s: &str) -> Result<u64, String> {
    let (num, mul) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("{s}: unknown suffix {c}")),
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mul))
        .ok_or_else(|| format!("{s} is not a size"))
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match cli.command {
        Command::Version => {
            println!("tandem {}", tandem::VERSION);
            ExitCode::SUCCESS
        }
        Command::Rpc {
            socket,
            method,
            params,
        } => rpc(&socket, &method, params.as_deref()),
        Command::Perf {
            trid,
            queue_depth,
            io_size,
            pattern,
            read_pct,
            time,
            cores,
            verify,
            header_digest,
            data_digest,
            mode,
            json,
        } => {
            let trid = match tandem::perf::trid::parse(&trid) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("tandem perf: -r: {e}");
                    return ExitCode::from(2);
                }
            };
            if read_pct > 100 || !time.is_finite() || time <= 0.0 || queue_depth == 0 {
                eprintln!("tandem perf: -M is 0 to 100, -t and -q above 0");
                return ExitCode::from(2);
            }
            let opts = tandem::perf::PerfOpts {
                trid,
                queue_depth,
                io_size,
                pattern,
                read_pct,
                time: std::time::Duration::from_secs_f64(time),
                cores,
                mode,
                verify,
                header_digest,
                data_digest,
            };
            match tandem::perf::run(&opts) {
                Ok(r) => {
                    if json {
                        println!(
                            "{}",
                            serde_json::to_string_pretty(&r.json()).unwrap_or_default()
                        );
                    } else {
                        print!("{}", r.table());
                    }
                    if r.total.errors == 0 && r.total.mismatches == 0 {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    }
                }
                Err(e) => {
                    eprintln!("tandem perf: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Store { command } => store(command),
        Command::Repl { socket, command } => repl::run(&socket, command),
        Command::Cores { mask } => {
            match CoreMask::parse(&mask).and_then(|m| m.check_present().map(|()| m)) {
                Ok(m) => {
                    println!("{m}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("tandem: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

fn store(cmd: StoreCommand) -> ExitCode {
    use tandem::store::file::FileStore;
    use tandem::store::namespace as ns;
    let fail = |what: &str, e: &dyn std::fmt::Display, code: u8| {
        eprintln!("tandem store {what}: {e}");
        ExitCode::from(code)
    };
    match cmd {
        StoreCommand::Format {
            file,
            name,
            cluster_size,
            size,
        } => {
            if let Some(size) = size {
                let made = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&file)
                    .and_then(|f| f.set_len(size));
                if let Err(e) = made {
                    return fail("format", &format!("{}: {e}", file.display()), 1);
                }
            }
            match FileStore::format(&file, cluster_size, &name) {
                Ok(s) => {
                    let c = &s.core;
                    println!(
                        "formatted {}: store {} ({}), {} clusters of {} bytes, {} free",
                        file.display(),
                        c.name,
                        tandem::bdev::format_uuid(c.uuid),
                        c.layout.total_clusters,
                        c.layout.cluster_size,
                        c.alloc.free_clusters()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail("format", &e, 1),
            }
        }
        StoreCommand::Check { file } => match FileStore::open(&file, false, false) {
            Ok(s) => {
                let problems = tandem::store::check::check(&s.core);
                for p in &problems {
                    println!("{p}");
                }
                println!(
                    "{}: generation {}, {} volumes, {} snapshots, {} free clusters: {}",
                    file.display(),
                    s.core.committed,
                    s.core.volumes().len(),
                    s.core.snapshots().len(),
                    s.core.alloc.free_clusters(),
                    if problems.is_empty() {
                        "clean".to_owned()
                    } else {
                        format!("{} problems", problems.len())
                    }
                );
                ExitCode::from(if problems.is_empty() { 0 } else { 1 })
            }
            Err(e) => fail("check", &e, 2),
        },
        StoreCommand::List { file } => match FileStore::open(&file, false, true) {
            Ok(s) => {
                let c = &s.core;
                let vols: Vec<_> = c
                    .volumes()
                    .into_iter()
                    .map(|v| {
                        serde_json::json!({
                    "name": v.name, "size": v.size, "uuid": tandem::bdev::format_uuid(v.uuid),
                    "thin_provision": !v.thick, "clone": v.origin_snap != 0})
                    })
                    .collect();
                let snaps: Vec<_> = c
                    .snapshots()
                    .into_iter()
                    .map(|x| {
                        serde_json::json!({
                    "name": x.name, "generation": x.gen, "created_unix": x.created_unix})
                    })
                    .collect();
                let out = serde_json::json!({"name": c.name, "uuid": tandem::bdev::format_uuid(c.uuid),
                    "volumes": vols, "snapshots": snaps});
                println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
                ExitCode::SUCCESS
            }
            Err(e) => fail("list", &e, 2),
        },
        StoreCommand::Snapshot { file, name } => {
            let made = FileStore::open(&file, true, true).and_then(|mut s| {
                let uuid = tandem::bdev::random_uuid();
                let id = s.core.snapshot(&name, 0, uuid)?;
                s.commit().map(|()| id)
            });
            match made {
                Ok(id) => {
                    println!("snapshot {name} (id {id})");
                    ExitCode::SUCCESS
                }
                Err(e) => fail("snapshot", &e, 1),
            }
        }
        StoreCommand::Diff {
            file,
            volume: Some(volume),
            from,
            to,
            ..
        } => {
            let diff = FileStore::open(&file, false, true).and_then(|s| {
                let from = s.core.snapshot_named(&from)?;
                let to = to.map(|t| s.core.snapshot_named(&t)).transpose()?;
                s.core.block_diff(Some(from), to, &volume)
            });
            match diff {
                Ok(d) => {
                    let out = d.to_json();
                    println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
                    ExitCode::SUCCESS
                }
                Err(e) => fail("diff", &e, 1),
            }
        }
        StoreCommand::Diff {
            file,
            volume: None,
            from,
            to,
            path,
            changes,
        } => {
            let diff = FileStore::open(&file, false, true).and_then(|s| {
                let (a, b) = (s.image(Some(&from))?, s.image(to.as_deref())?);
                let d = tandem::store::subtree_diff::subtree_diff(
                    &a,
                    &b,
                    path.as_bytes(),
                    s.core.cluster_size(),
                )?;
                Ok(if changes {
                    d.changes.iter().map(|c| format!("{c:?}")).collect()
                } else {
                    d.summary(&a, &b)
                })
            });
            match diff {
                Ok(lines) => {
                    for l in lines {
                        println!("{l}");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail("diff", &e, 1),
            }
        }
        StoreCommand::Ls {
            file,
            path,
            snapshot,
        } => {
            let listed = FileStore::open(&file, false, true).and_then(|s| {
                let root = s.image(snapshot.as_deref())?;
                let dir = ns::resolve_in(&root, path.as_bytes())?;
                let mut lines = Vec::new();
                for e in ns::readdir_in(&root, dir)? {
                    let st = ns::stat_in(&root, e.ino)?;
                    let kind = match st.typ {
                        tandem::store::tree::InodeType::Dir => 'd',
                        tandem::store::tree::InodeType::Symlink => 'l',
                        tandem::store::tree::InodeType::Volume => 'v',
                        _ => '-',
                    };
                    let mut name = String::from_utf8_lossy(&e.name).into_owned();
                    if kind == 'l' {
                        let t = ns::readlink_in(&root, e.ino)?;
                        name = format!("{name} -> {}", String::from_utf8_lossy(&t));
                    }
                    lines.push(format!(
                        "{kind}{:04o} {:>3} {:>5} {:>5} {:>12} {:>20} {name}",
                        st.attrs.mode,
                        st.nlink,
                        st.attrs.uid,
                        st.attrs.gid,
                        st.size,
                        st.attrs.mtime
                    ));
                }
                Ok(lines)
            });
            match listed {
                Ok(lines) => {
                    for l in lines {
                        println!("{l}");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail("ls", &e, 1),
            }
        }
        StoreCommand::Stat {
            file,
            path,
            snapshot,
        } => {
            let got = FileStore::open(&file, false, true).and_then(|s| {
                let root = s.image(snapshot.as_deref())?;
                let ino = ns::resolve_in(&root, path.as_bytes())?;
                let mut j = ns::stat_in(&root, ino)?.to_json();
                j["xattrs"] = ns::xattrs_in(&root, ino)
                    .into_iter()
                    .map(|(n, v)| {
                        serde_json::json!({"name": String::from_utf8_lossy(&n), "value": String::from_utf8_lossy(&v)})
                    })
                    .collect();
                Ok(j)
            });
            match got {
                Ok(j) => {
                    println!("{}", serde_json::to_string_pretty(&j).unwrap_or_default());
                    ExitCode::SUCCESS
                }
                Err(e) => fail("stat", &e, 1),
            }
        }
        StoreCommand::Cat {
            file,
            path,
            snapshot,
        } => {
            use std::io::Write;
            let got = FileStore::open(&file, false, true).and_then(|mut s| {
                let root = s.image(snapshot.as_deref())?;
                let ino = ns::resolve_in(&root, path.as_bytes())?;
                let st = ns::stat_in(&root, ino)?;
                if st.typ == tandem::store::tree::InodeType::Symlink {
                    return ns::readlink_in(&root, ino);
                }
                let cs = s.core.cluster_size();
                let (_, f) = s.parts();
                ns::read_in(&root, cs, f, ino, 0, st.size)
            });
            match got {
                Ok(bytes) => match std::io::stdout().write_all(&bytes) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => fail("cat", &e, 1),
                },
                Err(e) => fail("cat", &e, 1),
            }
        }
        StoreCommand::Import { file, host_dir, to } => {
            let done = FileStore::open(&file, true, true).and_then(|mut s| {
                let dir = s.core.resolve(to.as_bytes())?;
                let (core, f) = s.parts();
                let done = tandem::store::hostfs::import(core, f, &host_dir, dir)?;
                s.commit().map(|()| done)
            });
            match done {
                Ok(d) => {
                    println!("imported {}: {d:?}", host_dir.display());
                    ExitCode::SUCCESS
                }
                Err(e) => fail("import", &e, 1),
            }
        }
        StoreCommand::Export {
            file,
            host_dir,
            from,
            snapshot,
        } => {
            let done = FileStore::open(&file, false, true).and_then(|mut s| {
                let root = s.image(snapshot.as_deref())?;
                let dir = ns::resolve_in(&root, from.as_bytes())?;
                let cs = s.core.cluster_size();
                let (_, f) = s.parts();
                tandem::store::hostfs::export(&root, cs, f, dir, &host_dir)
            });
            match done {
                Ok(d) => {
                    println!("exported to {}: {d:?}", host_dir.display());
                    ExitCode::SUCCESS
                }
                Err(e) => fail("export", &e, 1),
            }
        }
    }
}

fn rpc(socket: &std::path::Path, method: &str, params: Option<&str>) -> ExitCode {
    let params: serde_json::Value = match params.map(serde_json::from_str).transpose() {
        Ok(p) => p.unwrap_or(serde_json::Value::Null),
        Err(e) => {
            eprintln!("tandem: params are not JSON: {e}");
            return ExitCode::from(2);
        }
    };
    match tandem::rpc::client::call(socket, method, &params, RPC_TIMEOUT) {
        Ok(r) => {
            println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tandem: {method}: {e}");
            ExitCode::from(1)
        }
    }
}

/// The longest the CLI waits for tandemd to answer one call.
const RPC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);
