//! A controller on a remote target, as the host holds it: the admin queue (blocking, behind a
//! `Mutex`: the control path), what Identify said, the namespaces, a keep-alive thread, and the
//! Connect of I/O queues.
//!
//! Reconnect policy: when the admin queue fails (the keep-alive gets no answer, the target ended
//! the controller), the next caller of [`Controller::reconnect`] brings up a new admin queue and
//! with it a new controller ID; I/O queues reconnect to it one by one, each from its own
//! reconnect thread, with backoff ([`crate::host::queue`]).

use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use super::sync::SyncQueue;
use super::HostError;
use crate::nvme::features;
use crate::nvme::identify::cns;
use crate::nvme::le::{u16_at, u32_at, u64_at};
use crate::nvme::{admin, Sqe};
use crate::nvmf::tcp::pdu::Negotiated;

/// How to reach a target and what to ask of it.
#[derive(Debug, Clone)]
pub struct HostOpts {
    /// Address and port, as `host:port` would join them.
    pub traddr: String,
    pub trsvcid: String,
    pub subnqn: String,
    pub hostnqn: String,
    pub hostid: [u8; 16],
    pub header_digest: bool,
    pub data_digest: bool,
    /// Ask I/O queues to run without SQ flow control (the target may then end reads with
    /// C2HData's SUCCESS flag and no response capsule).
    pub disable_sq_flow_control: bool,
    /// Entries per I/O queue (clamped to the controller's MQES + 1).
    pub queue_size: u16,
    /// Keep-alive timeout asked at Connect, in milliseconds; Keep Alive goes every half of it.
    pub kato_ms: u32,
    /// A command that has no answer after this fails, and its queue reconnects.
    pub io_timeout: Duration,
    /// Bound for each blocking step of a connection set-up.
    pub connect_timeout: Duration,
    /// The longest wait between two reconnect attempts (the first waits 50 ms, then doubling).
    pub reconnect_max_delay: Duration,
}

impl HostOpts {
    pub fn new(traddr: &str, trsvcid: &str, subnqn: &str) -> HostOpts {
        HostOpts {
            traddr: traddr.to_owned(),
            trsvcid: trsvcid.to_owned(),
            subnqn: subnqn.to_owned(),
            hostnqn: "nqn.2014-08.org.nvmexpress:uuid:7a6e6465-6d00-4000-8000-74616e64656d"
                .to_owned(),
            hostid: *b"tandem-host-id-0",
            header_digest: false,
            data_digest: false,
            disable_sq_flow_control: false,
            queue_size: 128,
            kato_ms: 10_000,
            io_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            reconnect_max_delay: Duration::from_secs(2),
        }
    }

    pub fn addr(&self) -> String {
        if self.traddr.contains(':') {
            format!("[{}]:{}", self.traddr, self.trsvcid)
        } else {
            format!("{}:{}", self.traddr, self.trsvcid)
        }
    }
}

/// A namespace, as Identify Namespace describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NsInfo {
    pub nsid: u32,
    pub block_size: u32,
    pub num_blocks: u64,
    pub nguid: [u8; 16],
}

/// What Identify Controller told, and what the admin queue negotiated.
#[derive(Debug, Clone, Copy)]
pub struct CtrlInfo {
    pub cntlid: u16,
    /// In-capsule data an I/O command may carry (IOCCSZ × 16 − 64).
    pub inline_max: usize,
    /// The largest transfer of one command (MDTS), in bytes.
    pub max_xfer: usize,
    /// Entries per I/O queue.
    pub queue_entries: u16,
    /// I/O queues granted.
    pub io_queues: u16,
    pub oncs: u16,
}

/// A connected I/O queue's socket, handed from the control path to a reactor.
pub struct IoSocket {
    pub sock: std::net::TcpStream,
    pub qid: u16,
    pub neg: Negotiated,
    pub maxh2cdata: u32,
    pub info: CtrlInfo,
}

pub struct Controller {
    pub opts: HostOpts,
    admin: Mutex<Option<SyncQueue>>,
    info: Mutex<CtrlInfo>,
    namespaces: Mutex<Vec<NsInfo>>,
    /// I/O queue IDs in use.
    qids: Mutex<Vec<u16>>,
    /// Moves at each new admin queue, so that an I/O queue knows its controller ID is stale.
    generation: AtomicU16,
    stop: Arc<AtomicBool>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Controller {
    /// Bring up the admin queue: ICReq, Connect, enable, Identify, Number of Queues, the
    /// namespaces; then start keeping it alive.
    pub fn connect(opts: HostOpts) -> Result<Arc<Controller>, HostError> {
        let (admin, info, namespaces) = bring_up(&opts)?;
        let c = Arc::new(Controller {
            opts,
            admin: Mutex::new(Some(admin)),
            info: Mutex::new(info),
            namespaces: Mutex::new(namespaces),
            qids: Mutex::new(Vec::new()),
            generation: AtomicU16::new(0),
            stop: Arc::new(AtomicBool::new(false)),
        });
        keep_alive_thread(Arc::downgrade(&c), Arc::clone(&c.stop));
        Ok(c)
    }

    pub fn info(&self) -> CtrlInfo {
        *lock(&self.info)
    }

    pub fn generation(&self) -> u16 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn namespaces(&self) -> Vec<NsInfo> {
        lock(&self.namespaces).clone()
    }

    pub fn namespace(&self, nsid: u32) -> Result<NsInfo, HostError> {
        self.namespaces()
            .into_iter()
            .find(|n| n.nsid == nsid)
            .ok_or(HostError::NoNamespace(nsid))
    }

    /// Run an admin command (blocking).
    pub fn admin_command(
        &self,
        sqe: Sqe,
        out: &[u8],
        want: usize,
    ) -> Result<super::sync::Done, HostError> {
        let mut a = lock(&self.admin);
        let q = a.as_mut().ok_or(HostError::Closed)?;
        let r = q.run(sqe, out, want);
        if matches!(
            r,
            Err(HostError::Closed
                | HostError::Io(_)
                | HostError::TermReq { .. }
                | HostError::Timeout(_)
                | HostError::Protocol(_))
        ) {
            *a = None;
        }
        r
    }

    /// The admin queue is up (not dropped after a failure).
    pub fn admin_alive(&self) -> bool {
        lock(&self.admin).is_some()
    }

    /// A new admin queue (and controller ID), if the old one failed. I/O queues of the old one
    /// reconnect to it.
    pub fn reconnect(&self, seen_generation: u16) -> Result<(), HostError> {
        let mut a = lock(&self.admin);
        if self.generation() != seen_generation && a.is_some() {
            return Ok(()); // Someone else already did.
        }
        *a = None;
        let (admin, info, namespaces) = bring_up(&self.opts)?;
        *a = Some(admin);
        *lock(&self.info) = info;
        *lock(&self.namespaces) = namespaces;
        // Queue IDs stay reserved: the I/O queues reconnect under the same ones.
        self.generation.fetch_add(1, Ordering::AcqRel);
        tracing::info!(addr = %self.opts.addr(), cntlid = info.cntlid, "host: controller reconnected");
        Ok(())
    }

    /// Connect an I/O queue (blocking): a fresh queue ID, or `qid` again when reconnecting.
    pub fn connect_io(&self, qid: Option<u16>) -> Result<IoSocket, HostError> {
        let info = self.info();
        let fresh = qid.is_none();
        let qid = match qid {
            Some(q) => q,
            None => {
                let mut used = lock(&self.qids);
                let q = (1..=info.io_queues)
                    .find(|q| !used.contains(q))
                    .ok_or_else(|| {
                        HostError::Unsupported(format!(
                            "the controller granted {} I/O queues, all in use",
                            info.io_queues
                        ))
                    })?;
                used.push(q);
                q
            }
        };
        let r = self.connect_queue(qid, info);
        if r.is_err() && fresh {
            self.release_io(qid);
        }
        r
    }

    fn connect_queue(&self, qid: u16, info: CtrlInfo) -> Result<IoSocket, HostError> {
        let o = &self.opts;
        let mut q = SyncQueue::new(&o.addr(), o.header_digest, o.data_digest, o.connect_timeout)?;
        q.sqflow_off = o.disable_sq_flow_control;
        q.connect(
            &o.subnqn,
            &o.hostnqn,
            o.hostid,
            qid,
            info.cntlid,
            info.queue_entries - 1,
            0,
        )?
        .ok("I/O queue Connect")?;
        Ok(IoSocket {
            sock: q.sock,
            qid,
            neg: q.neg,
            maxh2cdata: q.maxh2cdata,
            info,
        })
    }

    /// Give back an I/O queue ID.
    pub fn release_io(&self, qid: u16) {
        lock(&self.qids).retain(|&q| q != qid);
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

fn bring_up(o: &HostOpts) -> Result<(SyncQueue, CtrlInfo, Vec<NsInfo>), HostError> {
    let mut a = SyncQueue::new(&o.addr(), o.header_digest, o.data_digest, o.connect_timeout)?;
    let cntlid = a.admin(&o.subnqn, &o.hostnqn, o.hostid, o.kato_ms)?;
    let cap = a.prop_get(crate::nvme::registers::CAP, true)?;
    let id = a
        .identify(cns::CONTROLLER, 0)?
        .ok("Identify Controller")?
        .data;
    if id.len() < 4096 {
        return Err(HostError::Protocol(
            "Identify Controller shorter than 4096 bytes".into(),
        ));
    }
    if u16_at(&id, 78) != cntlid {
        return Err(HostError::Protocol(format!(
            "Identify says controller {} where Connect said {cntlid}",
            u16_at(&id, 78)
        )));
    }
    if u16_at(&id, 1800) != 0 {
        return Err(HostError::Unsupported("ICDOFF other than 0".into()));
    }
    if u32_at(&id, 536) & 0x3 == 0 {
        return Err(HostError::Unsupported(
            "the controller supports no SGLs".into(),
        ));
    }
    let ioccsz = u32_at(&id, 1792) as usize * 16;
    // MDTS in 4 KiB pages as a power of two; 0 (no limit) and anything above 1 MiB are taken
    // as 1 MiB, the most this host moves in one command.
    let mdts = id[77] as u32;
    let max_xfer = if mdts == 0 || mdts > 8 {
        1 << 20
    } else {
        4096usize << mdts
    };
    let mqes = (cap & 0xFFFF) as u16;
    let maxcmd = u16_at(&id, 514);
    let mut entries = o.queue_size.min(mqes.saturating_add(1)).max(2);
    if maxcmd != 0 {
        entries = entries.min(maxcmd);
    }
    // Number of Queues: ask for 64, take what is granted.
    let mut sf = Sqe {
        opcode: admin::SET_FEATURES,
        ..Sqe::default()
    };
    sf.cdw[0] = features::NUMBER_OF_QUEUES as u32;
    sf.cdw[1] = 63 | 63 << 16;
    let nq = a.run(sf, &[], 0)?.ok("Set Features Number of Queues")?;
    let io_queues = ((nq.cqe.dw0 & 0xFFFF).min(nq.cqe.dw0 >> 16) + 1) as u16;
    let info = CtrlInfo {
        cntlid,
        inline_max: ioccsz.saturating_sub(64),
        max_xfer,
        queue_entries: entries,
        io_queues,
        oncs: u16_at(&id, 520),
    };
    let list = a
        .identify(cns::ACTIVE_NS_LIST, 0)?
        .ok("Identify Active Namespace List")?
        .data;
    let mut namespaces = Vec::new();
    for nsid in list
        .chunks_exact(4)
        .map(|c| u32_at(c, 0))
        .take_while(|&n| n != 0)
    {
        let ns = a
            .identify(cns::NAMESPACE, nsid)?
            .ok("Identify Namespace")?
            .data;
        if ns.len() < 4096 {
            return Err(HostError::Protocol(format!(
                "Identify Namespace {nsid} shorter than 4096 bytes"
            )));
        }
        let lbaf = (ns[26] & 0xF) as usize;
        let lbads = ns[128 + 4 * lbaf + 2];
        // Block sizes from 512 bytes to what one command can carry.
        if !(9..=16).contains(&lbads) || (1usize << lbads) > max_xfer {
            continue;
        }
        let mut nguid = [0u8; 16];
        nguid.copy_from_slice(&ns[104..120]);
        namespaces.push(NsInfo {
            nsid,
            block_size: 1 << lbads,
            num_blocks: u64_at(&ns, 0),
            nguid,
        });
    }
    Ok((a, info, namespaces))
}

/// Keep Alive every half KATO; a failure drops the admin queue so that the next user
/// reconnects it.
fn keep_alive_thread(ctrl: Weak<Controller>, stop: Arc<AtomicBool>) {
    let Some(c) = ctrl.upgrade() else { return };
    let every = Duration::from_millis((c.opts.kato_ms as u64 / 2).max(100));
    if c.opts.kato_ms == 0 {
        return;
    }
    drop(c);
    let _ = std::thread::Builder::new()
        .name("tandem-keepalive".into())
        .spawn(move || {
            let mut next = Instant::now() + every;
            while !stop.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(50).min(every));
                if Instant::now() < next {
                    continue;
                }
                next = Instant::now() + every;
                let Some(c) = ctrl.upgrade() else { return };
                let g = c.generation();
                let ka = Sqe {
                    opcode: admin::KEEP_ALIVE,
                    ..Sqe::default()
                };
                if let Err(e) = c.admin_command(ka, &[], 0) {
                    tracing::warn!(addr = %c.opts.addr(), "host: keep-alive failed: {e}");
                    if let Err(e) = c.reconnect(g) {
                        tracing::warn!(addr = %c.opts.addr(), "host: reconnect failed: {e}");
                    }
                }
            }
        });
}
