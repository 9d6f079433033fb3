//! The NVMe/TCP target and host, end to end, against the floor under them: the same bytes
//! exchanged over loopback TCP by two bare threads in the same run.
//!
//! Tandem: an in-process target (one poll-mode reactor on the first core, a 256 MiB RAM
//! namespace) driven by `tandem perf`'s engine (one poll-mode reactor on the second core), 4 KiB
//! random reads. Baseline: a client thread and a server thread on the same two cores, the client
//! sending 72-byte command capsules and the server answering each with a 24-byte C2HData header,
//! 4 KiB of data and a 24-byte response capsule, as the target does, with nothing else to do:
//! what the kernel's TCP costs alone. Both sides of the baseline spin on non-blocking sockets,
//! as poll-mode reactors do. Prints IOPS for both and Tandem/baseline; 1.0 would mean
//! the engine costs nothing beyond TCP.
//!
//! `cargo bench -p tandem-bench --bench nvmf_tcp` (TANDEM_BENCH_SECS, default 3;
//! TANDEM_BENCH_ROUNDS, alternating rounds, default 3).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use tandem::bdev::malloc::{self, MallocOpts};
use tandem::nvmf::{target, ListenAddr, SubsystemOpts};
use tandem::perf::{self, Pattern, PerfOpts};
use tandem::reactor::{available_cores, CoreMask, Engine, EngineOpts, Mode};

const NQN: &str = "nqn.2016-06.io.tandem:bench";
const REQ: usize = 72;
const RESP: usize = 24 + 4096 + 24;

fn listen_addr(port: u16) -> ListenAddr {
    ListenAddr {
        trtype: "TCP".into(),
        adrfam: "IPv4".into(),
        traddr: "127.0.0.1".into(),
        trsvcid: port.to_string(),
    }
}

/// The target's subsystem and namespace, made once; it listens only while a round runs.
fn prepare_target() -> u16 {
    target::create_transport(Default::default()).unwrap();
    malloc::create(MallocOpts {
        name: "BenchMalloc".into(),
        num_blocks: (256 << 20) / 512,
        block_size: 512,
        uuid: 0,
    })
    .unwrap();
    let sub = target::create_subsystem(SubsystemOpts {
        nqn: NQN.into(),
        serial: "BENCH".into(),
        model: "Tandem bench".into(),
        allow_any_host: true,
        max_namespaces: 1,
        min_cntlid: 1,
        max_cntlid: 0xFFEF,
    })
    .unwrap();
    sub.add_namespace("BenchMalloc", 1, None, None).unwrap();
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One Tandem round: the target's engine (poll mode, as deployed) runs for the round only,
/// so that the baseline's rounds have the core to themselves.
fn tandem_round(port: u16, target_core: usize, host_core: usize, depth: usize, secs: u64) -> f64 {
    let engine = Engine::start(EngineOpts {
        core_mask: Some(CoreMask::from_cores([target_core]).unwrap()),
        mode: Mode::Poll,
        ..EngineOpts::default()
    })
    .unwrap();
    target::attach(engine.messenger());
    let sub = target::nvm_subsystem(NQN).unwrap();
    target::add_listener(&sub, listen_addr(port)).unwrap();
    let iops = tandem_iops(port, host_core, depth, secs);
    target::remove_listener(&sub, &listen_addr(port)).unwrap();
    engine.stop().unwrap();
    iops
}

fn tandem_iops(port: u16, core: usize, depth: usize, secs: u64) -> f64 {
    let opts = PerfOpts {
        trid: perf::trid::parse(&format!(
            "trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:{port} subnqn:{NQN}"
        ))
        .unwrap(),
        queue_depth: depth,
        io_size: 4096,
        pattern: Pattern::RandRead,
        read_pct: 100,
        time: Duration::from_secs(secs),
        cores: CoreMask::from_cores([core]).unwrap(),
        mode: Mode::Poll,
        verify: false,
        header_digest: false,
        data_digest: false,
    };
    let r = perf::run(&opts).unwrap();
    assert_eq!(r.total.errors, 0);
    r.total.iops()
}

fn pin(core: usize) {
    core_affinity::set_for_current(core_affinity::CoreId { id: core });
}

/// The bare exchange: `depth` requests in flight for `secs`; completed exchanges per second.
fn baseline_iops(server_core: usize, client_core: usize, depth: usize, secs: u64) -> f64 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        pin(server_core);
        let (mut s, _) = listener.accept().unwrap();
        s.set_nodelay(true).unwrap();
        s.set_nonblocking(true).unwrap();
        let data = vec![0x5Au8; RESP];
        let mut inb = vec![0u8; 64 * 1024];
        let mut pending = 0usize;
        let mut out = Vec::with_capacity(RESP * 64);
        loop {
            // Spin, as a poll-mode reactor does.
            let n = match s.read(&mut inb) {
                Ok(0) => return,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(_) => return,
            };
            pending += n;
            out.clear();
            while pending >= REQ {
                pending -= REQ;
                out.extend_from_slice(&data);
            }
            if write_all_spinning(&mut s, &out).is_err() {
                return;
            }
        }
    });
    pin(client_core);
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_nodelay(true).unwrap();
    c.set_nonblocking(true).unwrap();
    let req = vec![0u8; REQ * depth];
    write_all_spinning(&mut c, &req).unwrap();
    let mut buf = vec![0u8; 256 * 1024];
    let mut partial = 0usize;
    let mut done = 0u64;
    let start = Instant::now();
    let span = Duration::from_secs(secs);
    while start.elapsed() < span {
        let n = match c.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => panic!("baseline client: {e}"),
        };
        partial += n;
        let whole = partial / RESP;
        partial %= RESP;
        done += whole as u64;
        if whole > 0 {
            write_all_spinning(&mut c, &req[..REQ * whole]).unwrap();
        }
    }
    let elapsed = start.elapsed();
    drop(c);
    server.join().unwrap();
    done as f64 / elapsed.as_secs_f64()
}

/// `write_all` on a non-blocking socket, spinning while it is full.
fn write_all_spinning(s: &mut TcpStream, mut b: &[u8]) -> std::io::Result<()> {
    while !b.is_empty() {
        match s.write(b) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => b = &b[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn main() {
    let (secs, rounds) = tandem_bench::run_shape(3);
    let cores = available_cores();
    let (target_core, host_core) = (cores[0], cores[cores.len().min(2) - 1]);
    let port = prepare_target();
    println!(
        "NVMe/TCP 4 KiB random reads, target on core {target_core}, host on core {host_core}, \
         {secs} s per run, {rounds} alternating rounds (medians)"
    );
    println!(
        "{:<8} {:>14} {:>16} {:>8}   per round (tandem/baseline)",
        "depth", "tandem IOPS", "bare TCP IOPS", "ratio"
    );
    for depth in [1usize, 32] {
        let (mut t, mut b) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            t.push(tandem_round(port, target_core, host_core, depth, secs));
            b.push(baseline_iops(target_core, host_core, depth, secs));
        }
        let per_round: Vec<String> = t
            .iter()
            .zip(&b)
            .map(|(a, b)| format!("{:.2}", a / b))
            .collect();
        let (tm, bm) = (tandem_bench::median(t), tandem_bench::median(b));
        println!(
            "QD {depth:<5} {tm:>14.0} {bm:>16.0} {:>8.2}   {}",
            tm / bm,
            per_round.join(" ")
        );
    }
}
