//! `tandem perf`: a load generator for any NVMe/TCP target, in the shape of spdk_nvme_perf.
//! One job per reactor of the core mask, each with an I/O queue of its own, keeps `-q` commands
//! in flight for `-t` seconds and records every latency; `--verify` writes a pattern and reads
//! it back instead.
//!
//! The per-I/O path allocates nothing: each lane of a job owns its buffer for the whole run,
//! the latency histogram is a fixed array, and completion callbacks are stored inline.

mod histogram;
pub mod trid;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::{mpsc, Arc};
use std::time::Duration;

pub use histogram::Histogram;

use crate::host::controller::NsInfo;
use crate::host::sync::rw_sqe;
use crate::host::{Controller, HostDone, HostOpts, IoQueue, IoSocket};
use crate::mem::{DmaBuf, Sgl};
use crate::nvme::io;
use crate::reactor::{self, CoreMask, Engine, EngineOpts, Mode};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    Read,
    Write,
    RandRead,
    RandWrite,
    /// Sequential, reads and writes mixed by `read_pct`.
    Rw,
    RandRw,
}

impl Pattern {
    pub fn parse(s: &str) -> Result<Pattern, String> {
        Ok(match s {
            "read" => Pattern::Read,
            "write" => Pattern::Write,
            "randread" => Pattern::RandRead,
            "randwrite" => Pattern::RandWrite,
            "rw" => Pattern::Rw,
            "randrw" => Pattern::RandRw,
            _ => {
                return Err(format!(
                    "{s:?} is not read, write, randread, randwrite, rw or randrw"
                ))
            }
        })
    }

    fn random(self) -> bool {
        matches!(
            self,
            Pattern::RandRead | Pattern::RandWrite | Pattern::RandRw
        )
    }

    /// Percentage of reads.
    fn reads(self, read_pct: u8) -> u8 {
        match self {
            Pattern::Read | Pattern::RandRead => 100,
            Pattern::Write | Pattern::RandWrite => 0,
            Pattern::Rw | Pattern::RandRw => read_pct,
        }
    }
}

#[derive(Debug, Clone)]
pub struct PerfOpts {
    pub trid: trid::Trid,
    pub queue_depth: usize,
    pub io_size: usize,
    pub pattern: Pattern,
    pub read_pct: u8,
    pub time: Duration,
    pub cores: CoreMask,
    pub mode: Mode,
    pub verify: bool,
    pub header_digest: bool,
    pub data_digest: bool,
}

/// One job's outcome.
#[derive(Clone)]
pub struct JobResult {
    pub core: usize,
    pub ios: u64,
    pub bytes: u64,
    pub errors: u64,
    pub mismatches: u64,
    pub elapsed: Duration,
    pub latency: Histogram,
    pub first_error: Option<String>,
}

pub struct Report {
    pub jobs: Vec<JobResult>,
    pub total: JobResult,
}

impl JobResult {
    fn empty(core: usize) -> JobResult {
        JobResult {
            core,
            ios: 0,
            bytes: 0,
            errors: 0,
            mismatches: 0,
            elapsed: Duration::ZERO,
            latency: Histogram::default(),
            first_error: None,
        }
    }

    pub fn iops(&self) -> f64 {
        self.ios as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn mib_s(&self) -> f64 {
        self.bytes as f64 / (1024.0 * 1024.0) / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn json(&self) -> serde_json::Value {
        let us = |ns: u64| ns as f64 / 1000.0;
        serde_json::json!({
            "core": self.core,
            "ios": self.ios,
            "iops": self.iops(),
            "mib_per_s": self.mib_s(),
            "errors": self.errors,
            "verify_mismatches": self.mismatches,
            "latency_us": {
                "avg": self.latency.mean() / 1000.0,
                "min": us(if self.latency.count == 0 { 0 } else { self.latency.min }),
                "max": us(self.latency.max),
                "p50": us(self.latency.percentile(0.5)),
                "p99": us(self.latency.percentile(0.99)),
                "p99_9": us(self.latency.percentile(0.999)),
            },
        })
    }
}

impl Report {
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "jobs": self.jobs.iter().map(JobResult::json).collect::<Vec<_>>(),
            "total": self.total.json(),
        })
    }

    /// The table spdk_nvme_perf users know, with percentiles added.
    pub fn table(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!(
            "{:<24} {:>12} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}\n",
            "", "IOPS", "MiB/s", "Avg(us)", "min(us)", "max(us)", "p50(us)", "p99(us)", "p99.9(us)"
        ));
        let row =
            |name: String, r: &JobResult| {
                let us = |ns: u64| ns as f64 / 1000.0;
                format!(
                "{:<24} {:>12.0} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1}\n",
                name,
                r.iops(),
                r.mib_s(),
                r.latency.mean() / 1000.0,
                us(if r.latency.count == 0 { 0 } else { r.latency.min }),
                us(r.latency.max),
                us(r.latency.percentile(0.5)),
                us(r.latency.percentile(0.99)),
                us(r.latency.percentile(0.999)),
            )
            };
        for j in &self.jobs {
            s.push_str(&row(format!("core {}", j.core), j));
        }
        s.push_str(&row("Total".into(), &self.total));
        if self.total.errors > 0 || self.total.mismatches > 0 {
            s.push_str(&format!(
                "errors: {} failed I/Os, {} verify mismatches{}\n",
                self.total.errors,
                self.total.mismatches,
                self.total
                    .first_error
                    .as_ref()
                    .map_or(String::new(), |e| format!("; first: {e}"))
            ));
        }
        s
    }
}

/// Run the load and gather the jobs' results.
pub fn run(opts: &PerfOpts) -> Result<Report, String> {
    let t = &opts.trid;
    let mut host = HostOpts::new(&t.traddr, &t.trsvcid, &t.subnqn);
    if let Some(h) = &t.hostnqn {
        host.hostnqn = h.clone();
    }
    host.header_digest = opts.header_digest;
    host.data_digest = opts.data_digest;
    host.queue_size = (opts.queue_depth + 1).clamp(2, 1024) as u16;
    let ctrl = Controller::connect(host).map_err(|e| format!("connect: {e}"))?;
    let ns = ctrl.namespace(t.nsid).map_err(|e| e.to_string())?;
    if opts.io_size == 0 || opts.io_size % ns.block_size as usize != 0 {
        return Err(format!(
            "-o {} is not a multiple of the namespace's {}-byte blocks",
            opts.io_size, ns.block_size
        ));
    }
    if opts.io_size > ctrl.info().max_xfer {
        return Err(format!(
            "-o {} exceeds the controller's maximum transfer of {} bytes",
            opts.io_size,
            ctrl.info().max_xfer
        ));
    }
    let depth = opts
        .queue_depth
        .min(ctrl.info().queue_entries as usize - 1)
        .max(1);
    let engine = Engine::start(EngineOpts {
        core_mask: Some(opts.cores.clone()),
        mode: opts.mode,
        ..EngineOpts::default()
    })
    .map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::channel();
    let cores = engine.reactor_cores();
    for (i, (r, core)) in cores.iter().enumerate() {
        let sock = ctrl
            .connect_io(None)
            .map_err(|e| format!("I/O queue for core {core}: {e}"))?;
        let job = JobSpec {
            index: i,
            jobs: cores.len(),
            core: *core,
            ns,
            depth,
            opts: opts.clone(),
            ctrl: Arc::clone(&ctrl),
            tx: tx.clone(),
        };
        engine
            .send(*r, move || job.start(sock))
            .map_err(|e| format!("reactor {}: {e:?}", r.0))?;
    }
    drop(tx);
    let limit = opts.time + Duration::from_secs(60);
    let mut jobs = Vec::new();
    for _ in 0..cores.len() {
        match rx.recv_timeout(limit) {
            Ok(r) => jobs.push(r),
            Err(_) => {
                let _ = engine.stop();
                return Err("a job did not finish in time".into());
            }
        }
    }
    engine.stop().map_err(|e| e.to_string())?;
    jobs.sort_by_key(|j| j.core);
    let mut total = JobResult::empty(0);
    for j in &jobs {
        total.ios += j.ios;
        total.bytes += j.bytes;
        total.errors += j.errors;
        total.mismatches += j.mismatches;
        total.elapsed = total.elapsed.max(j.elapsed);
        total.latency.merge(&j.latency);
        if total.first_error.is_none() {
            total.first_error.clone_from(&j.first_error);
        }
    }
    Ok(Report { jobs, total })
}

/// What a reactor needs to start its job.
struct JobSpec {
    index: usize,
    jobs: usize,
    core: usize,
    ns: NsInfo,
    depth: usize,
    opts: PerfOpts,
    ctrl: Arc<Controller>,
    tx: mpsc::Sender<JobResult>,
}

/// One lane: a buffer and, under `--verify`, where it stands.
struct Lane {
    sgl: Option<Sgl>,
    /// The block this lane last wrote (verify), and the sequence number in its pattern.
    lba: u64,
    seq: u64,
    reading_back: bool,
}

struct Job {
    q: IoQueue,
    spec: JobSpec,
    lanes: Vec<Lane>,
    rng: u64,
    next_seq_lba: u64,
    /// Blocks per I/O, and the first block and length of this job's share of the namespace.
    blocks: u64,
    base: u64,
    span: u64,
    start_ns: u64,
    stop_ns: u64,
    in_flight: usize,
    result: JobResult,
    reported: bool,
}

fn now_ns() -> u64 {
    reactor::now().map_or(0, |d| d.as_nanos() as u64)
}

/// The 8-byte word `i` of the pattern written at `lba` with sequence `seq`.
fn pattern_word(lba: u64, seq: u64, i: u64) -> u64 {
    let mut x = lba.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seq.rotate_left(17) ^ i;
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^ (x >> 29)
}

fn fill_pattern(b: &mut [u8], lba: u64, seq: u64) {
    for (i, w) in b.chunks_exact_mut(8).enumerate() {
        w.copy_from_slice(&pattern_word(lba, seq, i as u64).to_le_bytes());
    }
}

fn check_pattern(b: &[u8], lba: u64, seq: u64) -> bool {
    b.chunks_exact(8)
        .enumerate()
        .all(|(i, w)| w == pattern_word(lba, seq, i as u64).to_le_bytes())
}

impl JobSpec {
    fn start(self, sock: IoSocket) {
        let q = match IoQueue::start(Arc::clone(&self.ctrl), sock) {
            Ok(q) => q,
            Err(e) => {
                let _ = self.tx.send(JobResult {
                    errors: 1,
                    first_error: Some(e.to_string()),
                    ..JobResult::empty(self.core)
                });
                return;
            }
        };
        let blocks = (self.opts.io_size / self.ns.block_size as usize) as u64;
        // Each job has its share of the namespace, so that verify lanes never overlap.
        let share = self.ns.num_blocks / self.jobs as u64;
        let base = share * self.index as u64;
        let lanes = (0..self.depth)
            .map(|_| Lane {
                sgl: Some(Sgl::single(
                    DmaBuf::new(self.opts.io_size).expect("memory for an I/O buffer"),
                )),
                lba: 0,
                seq: 0,
                reading_back: false,
            })
            .collect();
        let start = now_ns();
        let job = Rc::new(RefCell::new(Job {
            q,
            lanes,
            rng: 0x2545_F491_4F6C_DD1D ^ (self.index as u64 + 1),
            next_seq_lba: 0,
            blocks,
            base,
            span: share,
            start_ns: start,
            stop_ns: start + self.opts.time.as_nanos() as u64,
            in_flight: 0,
            result: JobResult::empty(self.core),
            reported: false,
            spec: self,
        }));
        let depth = job.borrow().spec.depth;
        for lane in 0..depth {
            issue(&job, lane);
        }
        job.borrow().q.flush();
    }
}

impl Job {
    fn next_rand(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }

    /// The next block to use in this job's share, aligned to the I/O size.
    fn next_lba(&mut self, lane: usize) -> u64 {
        let slots = (self.span / self.blocks).max(1);
        let slot = if self.spec.opts.verify {
            // Verify lanes stay in their own stripe of the share.
            let lanes = self.lanes.len() as u64;
            let per_lane = (slots / lanes).max(1);
            let pick = if self.spec.opts.pattern.random() {
                self.next_rand() % per_lane
            } else {
                (self.lanes[lane].seq + 1) % per_lane
            };
            lane as u64 * per_lane + pick
        } else if self.spec.opts.pattern.random() {
            self.next_rand() % slots
        } else {
            let s = self.next_seq_lba % slots;
            self.next_seq_lba += 1;
            s
        };
        self.base + (slot % slots) * self.blocks
    }
}

/// Start lane `lane`'s next I/O (unless the run is over).
fn issue(job: &Rc<RefCell<Job>>, lane: usize) {
    let mut j = job.borrow_mut();
    let now = now_ns();
    if now >= j.stop_ns && !j.lanes[lane].reading_back {
        drop(j);
        return finish_if_idle(job);
    }
    let verify = j.spec.opts.verify;
    let (opcode, lba) = if verify {
        if j.lanes[lane].reading_back {
            (io::READ, j.lanes[lane].lba)
        } else {
            let lba = j.next_lba(lane);
            let l = &mut j.lanes[lane];
            l.lba = lba;
            l.seq += 1;
            let seq = l.seq;
            let sgl = l.sgl.as_mut().expect("the lane's buffer is home");
            fill_pattern(sgl.segs_mut()[0].as_mut_slice(), lba, seq);
            (io::WRITE, lba)
        }
    } else {
        let reads = j.spec.opts.pattern.reads(j.spec.opts.read_pct) as u64;
        let read = reads == 100 || (reads > 0 && j.next_rand() % 100 < reads);
        let lba = j.next_lba(lane);
        (if read { io::READ } else { io::WRITE }, lba)
    };
    let sqe = rw_sqe(opcode, j.spec.ns.nsid, lba, j.blocks as u32);
    let sgl = j.lanes[lane].sgl.take().expect("the lane's buffer is home");
    let me = Rc::clone(job);
    let submitted = now;
    match j
        .q
        .submit(sqe, sgl, move |d: HostDone| done(&me, lane, submitted, d))
    {
        Ok(()) => j.in_flight += 1,
        Err((e, sgl)) => {
            j.lanes[lane].sgl = Some(sgl);
            j.result.errors += 1;
            j.result
                .first_error
                .get_or_insert_with(|| format!("submit: {e:?}"));
            // The lane stops (a queue that is down reconnects by itself, but this run is over
            // for the lane); the job reports once the others come home.
            drop(j);
            finish_if_idle(job);
        }
    }
}

fn done(job: &Rc<RefCell<Job>>, lane: usize, submitted: u64, d: HostDone) {
    {
        let mut j = job.borrow_mut();
        j.in_flight -= 1;
        let latency = now_ns().saturating_sub(submitted);
        let bytes = j.spec.opts.io_size as u64;
        j.lanes[lane].sgl = Some(d.sgl);
        match d.status {
            Ok(()) => {
                j.result.ios += 1;
                j.result.bytes += bytes;
                j.result.latency.record(latency);
                if j.spec.opts.verify {
                    let l = &mut j.lanes[lane];
                    if l.reading_back {
                        let sgl = l.sgl.as_ref().expect("home");
                        let ok = check_pattern(sgl.segs()[0].as_slice(), l.lba, l.seq);
                        let lba = l.lba;
                        l.reading_back = false;
                        if !ok {
                            j.result.mismatches += 1;
                            j.result.first_error.get_or_insert_with(|| {
                                format!("verify: block {lba} read back other data")
                            });
                        }
                    } else {
                        l.reading_back = true;
                    }
                }
            }
            Err(e) => {
                j.result.errors += 1;
                j.lanes[lane].reading_back = false;
                j.result
                    .first_error
                    .get_or_insert_with(|| format!("I/O failed: {e:?}"));
            }
        }
    }
    issue(job, lane);
}

/// Report once every lane has come home after the end of the run.
fn finish_if_idle(job: &Rc<RefCell<Job>>) {
    let mut j = job.borrow_mut();
    if j.in_flight > 0 || j.reported {
        return;
    }
    j.reported = true;
    let mut r = j.result.clone();
    r.elapsed = Duration::from_nanos(now_ns().saturating_sub(j.start_ns));
    let _ = j.spec.tx.send(r);
}
