//! The `nvmf` bdev: a namespace of a remote NVMe/TCP target as a block device. One bdev per
//! namespace (`<name>n<nsid>`, as SPDK names them), made by `bdev_nvme_attach_controller` and
//! removed by `bdev_nvme_detach_controller`.
//!
//! Each reactor's channel owns one I/O queue of the controller ([`crate::host::IoQueue`]).
//! Queues are connected on the control path: one is ready before the first channel opens, and
//! each channel that takes one has the next connected in the background, so a channel opening
//! on a reactor normally does not wait for the network (if two open at once, the second
//! connects while it opens).
//!
//! Reads and writes up to the controller's maximum transfer go as they are: the request's own
//! buffers travel in the command, nothing is copied or allocated. Larger ones, deallocates and
//! oversized Write Zeroes are the exceptions: they go in pieces, each with a list (and, for
//! data, a pool buffer) of its own.
//!
//! Requests beyond the queue's depth wait in the channel and go as slots free up. A dropped
//! connection fails the requests in flight with ENOTCONN (the queue reconnects by itself); a
//! command past its timeout fails with ETIMEDOUT.
//!
//! A saved configuration replayed at start-up may name a target that is down: it is attached
//! in the background instead ([`attach_or_retry`]), so that the daemon starts, and its bdevs
//! appear when the target answers (a replication primary whose secondary is away comes up
//! out of sync, and resyncs when they do).

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use super::backend::{Backend, BackendChannel, Completions};
use super::{register, Bdev, BdevInfo, BdevIo, Errno, Error, IoError, IoType, Result};
use crate::host::queue::HostIoError;
use crate::host::sync::rw_sqe;
use crate::host::{Controller, HostDone, HostOpts, IoQueue, IoSocket};
use crate::mem::{self, Sgl};
use crate::nvme::{io as op, Sqe};
use crate::reactor::PollStatus;

/// The most blocks one Write Zeroes or Dataset Management range may name (NLB is 16 bits).
const MAX_ZEROES_BLOCKS: u64 = 1 << 16;

/// A host-side failure as the bdev layer reports it: the step, the reason, its errno.
fn host_error(op: &str, e: &crate::host::HostError) -> Error {
    Error::Os {
        op: format!("{op}: {e}"),
        errno: Errno(-e.errno()),
    }
}

/// What `bdev_nvme_attach_controller` made, by controller name.
struct Attached {
    ctrl: Arc<Controller>,
    bdevs: Vec<String>,
}

fn attached() -> MutexGuard<'static, HashMap<String, Attached>> {
    static A: OnceLock<Mutex<HashMap<String, Attached>>> = OnceLock::new();
    A.get_or_init(|| Mutex::new(HashMap::new()))
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// Controllers attached in the background, by name: their options and a flag that stops the
/// attempts.
type Attaching = HashMap<String, (HostOpts, Arc<AtomicBool>)>;

fn pending() -> MutexGuard<'static, Attaching> {
    static P: OnceLock<Mutex<Attaching>> = OnceLock::new();
    P.get_or_init(|| Mutex::new(HashMap::new()))
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// Held while a name is checked and taken (or given up), and while a controller registers:
/// never across a connection, which may take a silent target's whole timeout.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static ATTACHING: Mutex<()> = Mutex::new(());
    ATTACHING.lock().unwrap_or_else(|p| p.into_inner())
}

/// Names whose first connection is being made, outside the lock, each with whether a detach
/// came meanwhile.
fn connecting() -> MutexGuard<'static, HashMap<String, bool>> {
    static C: OnceLock<Mutex<HashMap<String, bool>>> = OnceLock::new();
    C.get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// A name taken for a first connection; given back when dropped (whatever happened).
struct Connecting(String);

impl Connecting {
    /// Take `name` for a connection: refused when it is attached, being attached in the
    /// background, or being connected by another call.
    fn take(name: &str) -> Result<Connecting> {
        let _one = one_at_a_time();
        taken(name)?;
        connecting().insert(name.to_owned(), false);
        Ok(Connecting(name.to_owned()))
    }

    /// With [`one_at_a_time`] held, once connected: refused if a detach came meanwhile (the
    /// connection is dropped).
    fn still_wanted(&self) -> Result<()> {
        if connecting().get(&self.0).copied().unwrap_or(false) {
            return Err(Error::Os {
                op: format!("attach {}: detached while connecting", self.0),
                errno: Errno(-libc::ECANCELED),
            });
        }
        Ok(())
    }
}

impl Drop for Connecting {
    fn drop(&mut self) {
        connecting().remove(&self.0);
    }
}

/// How often a controller attached in the background tries again.
const ATTACH_RETRY: Duration = Duration::from_secs(1);

/// Connect to a target and make a bdev of each of its namespaces: their names.
pub fn attach(name: &str, opts: HostOpts) -> Result<Vec<String>> {
    let reserved = Connecting::take(name)?;
    let ctrl = connect(name, opts).map_err(|(e, _)| e)?;
    let _one = one_at_a_time();
    reserved.still_wanted()?;
    let names = register_controller(name, ctrl);
    drop(reserved);
    names
}

/// Refuse a name attached, being attached in the background, or being connected.
fn taken(name: &str) -> Result<()> {
    if attached().contains_key(name)
        || pending().contains_key(name)
        || connecting().contains_key(name)
    {
        return Err(Error::Exists(name.to_owned()));
    }
    Ok(())
}

/// [`attach`]; or, when the target cannot be reached now (no connection, or one that closes or
/// times out), `None`: the controller is attached in the background, tried every second until
/// the target answers or [`detach`] gives it up, and [`pending_calls`] saves it meanwhile.
pub fn attach_or_retry(name: &str, opts: HostOpts) -> Result<Option<Vec<String>>> {
    let reserved = Connecting::take(name)?;
    let connected = connect(name, opts.clone());
    let _one = one_at_a_time();
    reserved.still_wanted()?;
    // The name goes from reserved to attached (or pending) under the lock, in one step.
    drop(reserved);
    match connected {
        Ok(ctrl) => register_controller(name, ctrl).map(Some),
        Err((e, true)) => {
            tracing::warn!(ctrl = name, "{e}: attaching in the background");
            let stop = Arc::new(AtomicBool::new(false));
            pending().insert(name.to_owned(), (opts.clone(), Arc::clone(&stop)));
            let who = name.to_owned();
            let spawned = std::thread::Builder::new()
                .name("tandem-nvmf-attach".into())
                .spawn(move || retry_attach(&who, &opts, &stop));
            if let Err(e) = spawned {
                pending().remove(name);
                return Err(Error::Os {
                    op: format!("a thread to attach {name} in the background: {e}"),
                    errno: Errno(-libc::EAGAIN),
                });
            }
            Ok(None)
        }
        Err((e, false)) => Err(e),
    }
}

/// Try every [`ATTACH_RETRY`] until attached or stopped. The connection is made without the
/// lock (a silent target takes its whole timeout), then registered under it.
fn retry_attach(name: &str, opts: &HostOpts, stop: &AtomicBool) {
    loop {
        std::thread::sleep(ATTACH_RETRY);
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let ctrl = match connect(name, opts.clone()) {
            Ok(c) => c,
            Err((e, _)) => {
                tracing::debug!(ctrl = name, "still not attached: {e}");
                continue;
            }
        };
        let _one = one_at_a_time();
        if stop.load(Ordering::SeqCst) {
            // Detached meanwhile: the controller goes as it drops.
            return;
        }
        match register_controller(name, ctrl) {
            Ok(names) => {
                pending().remove(name);
                tracing::info!(ctrl = name, bdevs = ?names, "attached");
                return;
            }
            Err(e) => tracing::warn!(ctrl = name, "attached, but: {e}"),
        }
    }
}

/// `bdev_nvme_attach_controller` calls for the controllers still being attached in the
/// background.
pub fn pending_calls() -> Vec<serde_json::Value> {
    pending()
        .iter()
        .map(|(name, (opts, _))| attach_call(name, opts))
        .collect()
}

/// The call that attaches controller `name` with `o` again.
fn attach_call(name: &str, o: &HostOpts) -> serde_json::Value {
    serde_json::json!({ "method": "bdev_nvme_attach_controller", "params": {
        "name": name, "trtype": "TCP", "adrfam": "IPv4",
        "traddr": o.traddr, "trsvcid": o.trsvcid, "subnqn": o.subnqn,
        "hostnqn": o.hostnqn, "hdgst": o.header_digest, "ddgst": o.data_digest,
    }})
}

/// Connect to the target for controller `name`; a failure says whether the target was
/// unreachable.
fn connect(name: &str, opts: HostOpts) -> std::result::Result<Arc<Controller>, (Error, bool)> {
    Controller::connect(opts).map_err(|e| {
        (
            host_error(&format!("attach {name}"), &e),
            e.is_unreachable(),
        )
    })
}

/// Make a bdev of each of `ctrl`'s namespaces, under `name`, with [`one_at_a_time`] held.
fn register_controller(name: &str, ctrl: Arc<Controller>) -> Result<Vec<String>> {
    if attached().contains_key(name) {
        return Err(Error::Exists(name.to_owned()));
    }
    let mut names = Vec::new();
    for ns in ctrl.namespaces() {
        let bdev_name = format!("{name}n{}", ns.nsid);
        let shared = Arc::new(Shared {
            ctrl: Arc::clone(&ctrl),
            ctrl_name: name.to_owned(),
            nsid: ns.nsid,
            spare: Mutex::new(None),
        });
        shared.prepare_spare();
        let uuid = u128::from_be_bytes(ns.nguid);
        let info = BdevInfo {
            name: bdev_name.clone(),
            block_size: ns.block_size,
            num_blocks: ns.num_blocks,
            uuid,
        };
        let oncs = ctrl.info().oncs;
        match Bdev::new(info, Box::new(NvmfDisk { shared, oncs })).and_then(register) {
            Ok(_) => names.push(bdev_name),
            Err(e) => {
                for n in &names {
                    let _ = super::delete(n);
                }
                return Err(e);
            }
        }
    }
    attached().insert(
        name.to_owned(),
        Attached {
            ctrl,
            bdevs: names.clone(),
        },
    );
    Ok(names)
}

/// Delete the controller's bdevs (their I/O in flight completes) and let the controller go;
/// or stop attaching it in the background.
pub fn detach(name: &str) -> Result<()> {
    let _one = one_at_a_time();
    if let Some((_, stop)) = pending().remove(name) {
        stop.store(true, Ordering::SeqCst);
        return Ok(());
    }
    if let Some(detached) = connecting().get_mut(name) {
        // Its attach, still connecting, gives up when it comes back.
        *detached = true;
        return Ok(());
    }
    let a = attached()
        .remove(name)
        .ok_or_else(|| Error::NotFound(name.to_owned()))?;
    for b in &a.bdevs {
        let _ = super::delete(b);
    }
    drop(a.ctrl);
    Ok(())
}

/// The controllers attached, with their options and bdevs.
pub fn controllers() -> Vec<(String, HostOpts, Vec<String>)> {
    attached()
        .iter()
        .map(|(n, a)| (n.clone(), a.ctrl.opts.clone(), a.bdevs.clone()))
        .collect()
}

struct Shared {
    ctrl: Arc<Controller>,
    ctrl_name: String,
    nsid: u32,
    /// An I/O queue connected ahead of the next channel.
    spare: Mutex<Option<IoSocket>>,
}

impl Shared {
    /// Connect the next channel's queue in the background.
    fn prepare_spare(self: &Arc<Self>) {
        let me = Arc::clone(self);
        let _ = std::thread::Builder::new()
            .name("tandem-nvmf-connect".into())
            .spawn(move || {
                let mut slot = me.spare.lock().unwrap_or_else(|p| p.into_inner());
                if slot.is_none() {
                    match me.ctrl.connect_io(None) {
                        Ok(s) => *slot = Some(s),
                        Err(e) => {
                            tracing::warn!(ctrl = %me.ctrl_name, "nvmf bdev: spare I/O queue: {e}")
                        }
                    }
                }
            });
    }

    fn take_socket(self: &Arc<Self>) -> Result<IoSocket> {
        let spare = self.spare.lock().unwrap_or_else(|p| p.into_inner()).take();
        let s = match spare {
            Some(s) => s,
            None => self.ctrl.connect_io(None).map_err(|e| {
                Error::InvalidArgument(format!("{}: I/O queue: {e}", self.ctrl_name))
            })?,
        };
        self.prepare_spare();
        Ok(s)
    }
}

struct NvmfDisk {
    shared: Arc<Shared>,
    /// Optional commands the controller has (ONCS), read once: `supports` runs per I/O.
    oncs: u16,
}

impl Backend for NvmfDisk {
    fn product_name(&self) -> &'static str {
        "NVMe disk"
    }

    fn supports(&self, io_type: IoType) -> bool {
        let oncs = self.oncs;
        match io_type {
            IoType::Read | IoType::Write | IoType::Flush => true,
            IoType::Unmap => oncs & (1 << 2) != 0,
            IoType::WriteZeroes => oncs & (1 << 3) != 0,
        }
    }

    fn open_channel(&self) -> Result<Box<dyn BackendChannel>> {
        let s = self.shared.take_socket()?;
        let q = IoQueue::start(Arc::clone(&self.shared.ctrl), s)
            .map_err(|e| host_error("I/O queue", &e))?;
        let depth = q.depth();
        let ns = self
            .shared
            .ctrl
            .namespace(self.shared.nsid)
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        Ok(Box::new(NvmfChannel {
            nsid: self.shared.nsid,
            block_size: ns.block_size as u64,
            max_xfer: self.shared.ctrl.info().max_xfer as u64,
            q,
            state: Rc::new(RefCell::new(ChannelState {
                pending: (0..depth).map(|_| None).collect(),
                free: (0..depth as u16).rev().collect(),
                resume: Vec::with_capacity(depth),
            })),
            waiting: VecDeque::new(),
            done: None,
        }))
    }

    fn driver_specific(&self) -> serde_json::Value {
        let o = &self.shared.ctrl.opts;
        serde_json::json!({ "nvme": [{
            "trid": { "trtype": "TCP", "adrfam": "IPv4", "traddr": o.traddr,
                      "trsvcid": o.trsvcid, "subnqn": o.subnqn },
            "ctrlr_data": { "cntlid": self.shared.ctrl.info().cntlid },
            "ns_data": { "id": self.shared.nsid },
        }]})
    }

    /// The first namespace's bdev writes the attach call for the whole controller.
    fn save_config(&self, _bdev: &Bdev) -> Option<serde_json::Value> {
        let first = self.shared.ctrl.namespaces().first().map(|n| n.nsid);
        (first == Some(self.shared.nsid))
            .then(|| attach_call(&self.shared.ctrl_name, &self.shared.ctrl.opts))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// A request at the target. One larger than the controller's maximum transfer goes as a run
/// of chunks, one after another, each through a buffer of its own (copied from or into the
/// request's buffers); `next` is where the next chunk starts.
struct Pending {
    io: BdevIo,
    next: u64,
    /// Bytes the whole request covers.
    total: u64,
    error: Option<IoError>,
}

/// Requests at the target, by token, so that a completion callback carries only a token.
struct ChannelState {
    pending: Vec<Option<Pending>>,
    free: Vec<u16>,
    /// Split requests whose next chunk is due.
    resume: Vec<u16>,
}

struct NvmfChannel {
    nsid: u32,
    block_size: u64,
    max_xfer: u64,
    q: IoQueue,
    state: Rc<RefCell<ChannelState>>,
    /// Requests waiting for a free queue slot.
    waiting: VecDeque<BdevIo>,
    /// Where completions go (known from the first request).
    done: Option<Completions>,
}

impl Drop for NvmfChannel {
    /// Requests not at the target end as aborted; those in flight fail as the queue closes,
    /// right after this.
    fn drop(&mut self) {
        let Some(done) = self.done.take() else {
            return;
        };
        for io in self.waiting.drain(..) {
            done.complete(io, Err(IoError::Aborted));
        }
        let mut st = self.state.borrow_mut();
        for t in std::mem::take(&mut st.resume) {
            if let Some(p) = st.pending[t as usize].take() {
                st.free.push(t);
                done.complete(p.io, Err(IoError::Aborted));
            }
        }
    }
}

fn errno(e: HostIoError) -> IoError {
    IoError::Device(Errno(-e.errno()))
}

fn is_data(t: IoType) -> bool {
    matches!(t, IoType::Read | IoType::Write)
}

impl NvmfChannel {
    /// The command for `io` (or for its chunk at byte `at`, `len` bytes long, when split) and
    /// the data it carries.
    fn command(
        &self,
        io: &mut BdevIo,
        chunk: Option<(u64, u64)>,
    ) -> std::result::Result<(Sqe, Sgl), IoError> {
        let nsid = self.nsid;
        if let (Some((at, len)), false) = (chunk, is_data(io.io_type)) {
            // A piece of a large Write Zeroes or deallocate.
            let slba = io.offset_blocks + at / self.block_size;
            let blocks = len / self.block_size;
            return self.no_data_command(io.io_type, slba, blocks);
        }
        if let Some((at, len)) = chunk {
            let slba = io.offset_blocks + at / self.block_size;
            let blocks = (len / self.block_size) as u32;
            let mut buf = if len as usize <= mem::LARGE_BUF {
                mem::take_large().map(mem::Buf::Pool)
            } else {
                None
            }
            .or_else(|| mem::DmaBuf::new(len as usize).ok().map(mem::Buf::Dma))
            .ok_or(IoError::Device(Errno(libc::ENOMEM)))?;
            let opcode = if io.io_type == IoType::Write {
                io.sgl
                    .copy_out(at as usize, &mut buf.as_mut_slice()[..len as usize]);
                op::WRITE
            } else {
                op::READ
            };
            let mut sgl = Sgl::new();
            sgl.push(buf, 0, len as usize)
                .map_err(|_| IoError::Device(Errno(libc::EINVAL)))?;
            return Ok((rw_sqe(opcode, nsid, slba, blocks), sgl));
        }
        let blocks = io.num_blocks as u32;
        match io.io_type {
            IoType::Read => Ok((
                rw_sqe(op::READ, nsid, io.offset_blocks, blocks),
                std::mem::take(&mut io.sgl),
            )),
            IoType::Write => Ok((
                rw_sqe(op::WRITE, nsid, io.offset_blocks, blocks),
                std::mem::take(&mut io.sgl),
            )),
            t => self.no_data_command(t, io.offset_blocks, io.num_blocks),
        }
    }

    /// Flush, Write Zeroes or a one-range deallocate of `blocks` blocks at `slba`.
    fn no_data_command(
        &self,
        t: IoType,
        slba: u64,
        blocks: u64,
    ) -> std::result::Result<(Sqe, Sgl), IoError> {
        let nsid = self.nsid;
        Ok(match t {
            IoType::Read | IoType::Write => return Err(IoError::Device(Errno(libc::EINVAL))),
            IoType::Flush => (
                Sqe {
                    opcode: op::FLUSH,
                    nsid,
                    ..Sqe::default()
                },
                Sgl::default(),
            ),
            IoType::WriteZeroes => (
                rw_sqe(op::WRITE_ZEROES, nsid, slba, blocks as u32),
                Sgl::default(),
            ),
            IoType::Unmap => {
                let Some(mut b) = mem::take_small() else {
                    return Err(IoError::Device(Errno(libc::ENOMEM)));
                };
                let r = b.as_mut_slice();
                r[..16].fill(0);
                r[4..8].copy_from_slice(&(blocks as u32).to_le_bytes());
                r[8..16].copy_from_slice(&slba.to_le_bytes());
                let mut sqe = Sqe {
                    opcode: op::DATASET_MANAGEMENT,
                    nsid,
                    ..Sqe::default()
                };
                sqe.cdw[1] = 1 << 2; // Attribute Deallocate; one range (NR 0).
                let mut sgl = Sgl::new();
                sgl.push(b, 0, 16)
                    .map_err(|_| IoError::Device(Errno(libc::EINVAL)))?;
                (sqe, sgl)
            }
        })
    }

    /// The most bytes one command of this type may cover: the maximum transfer for data; for
    /// Write Zeroes what a 16-bit block count reaches; for a deallocate range a 32-bit one.
    fn chunk_limit(&self, t: IoType) -> u64 {
        match t {
            IoType::Read | IoType::Write => self.max_xfer / self.block_size * self.block_size,
            IoType::WriteZeroes => MAX_ZEROES_BLOCKS * self.block_size,
            IoType::Unmap => u32::MAX as u64 * self.block_size,
            IoType::Flush => u64::MAX,
        }
    }

    /// Send a new request, or hand it back if the queue is full.
    fn send(&mut self, io: BdevIo, done: &Completions) -> Option<BdevIo> {
        let Some(token) = self.state.borrow_mut().free.pop() else {
            return Some(io);
        };
        let total = if io.io_type == IoType::Flush {
            0
        } else {
            io.num_blocks * self.block_size
        };
        let split = total > self.chunk_limit(io.io_type);
        self.state.borrow_mut().pending[token as usize] = Some(Pending {
            io,
            next: 0,
            total,
            error: None,
        });
        if self.send_part(token, split, done) {
            return None;
        }
        // Busy before anything went: give the request back to wait.
        let mut st = self.state.borrow_mut();
        st.free.push(token);
        st.pending[token as usize].take().map(|p| p.io)
    }

    /// Send request `token` whole, or its next chunk. False if the queue had no room (nothing
    /// was sent); a request that fails here is completed here.
    fn send_part(&mut self, token: u16, split: bool, done: &Completions) -> bool {
        let (sqe, sgl, chunk) = {
            let mut st = self.state.borrow_mut();
            let p = st.pending[token as usize]
                .as_mut()
                .expect("a pending request");
            let limit = self.chunk_limit(p.io.io_type);
            let chunk = split.then(|| (p.next, (p.total - p.next).min(limit)));
            match self.command(&mut p.io, chunk) {
                Ok((sqe, sgl)) => (sqe, sgl, chunk),
                Err(e) => {
                    let p = st.pending[token as usize].take().expect("present");
                    st.free.push(token);
                    drop(st);
                    done.complete(p.io, Err(e));
                    return true;
                }
            }
        };
        let state = Rc::clone(&self.state);
        let completions = done.clone();
        let r = self.q.submit(sqe, sgl, move |d: HostDone| {
            finished(&state, &completions, token, chunk, d)
        });
        match r {
            Ok(()) => true,
            Err((e, sgl)) => {
                let mut st = self.state.borrow_mut();
                let p = st.pending[token as usize].as_mut().expect("present");
                if chunk.is_none() && is_data(p.io.io_type) {
                    p.io.sgl = sgl;
                }
                if e == HostIoError::Busy {
                    return false;
                }
                let p = st.pending[token as usize].take().expect("present");
                st.free.push(token);
                drop(st);
                done.complete(p.io, Err(errno(e)));
                true
            }
        }
    }
}

/// A command of request `token` finished: the whole request, or chunk `(at, len)` of it.
fn finished(
    state: &Rc<RefCell<ChannelState>>,
    done: &Completions,
    token: u16,
    chunk: Option<(u64, u64)>,
    d: HostDone,
) {
    let mut st = state.borrow_mut();
    let Some(p) = st.pending[token as usize].as_mut() else {
        return;
    };
    match chunk {
        None => {
            if is_data(p.io.io_type) {
                p.io.sgl = d.sgl;
            }
            if let Err(e) = d.status {
                p.error = Some(errno(e));
            }
            p.next = u64::MAX;
        }
        Some((at, len)) => {
            match d.status {
                Ok(()) if p.io.io_type == IoType::Read => {
                    // A chunk of a split read: into the request's buffers at its place.
                    let mut off = 0usize;
                    for seg in d.sgl.segs() {
                        let b = seg.as_slice();
                        p.io.sgl.copy_at(at as usize + off, b);
                        off += b.len();
                    }
                }
                Ok(()) => {}
                Err(e) => p.error = Some(errno(e)),
            }
            p.next = at + len;
        }
    }
    let finished = p.next == u64::MAX || p.error.is_some() || p.next >= p.total;
    if finished {
        let p = st.pending[token as usize].take().expect("present");
        st.free.push(token);
        drop(st);
        done.complete(p.io, p.error.map_or(Ok(()), Err));
    } else {
        st.resume.push(token);
    }
}

impl BackendChannel for NvmfChannel {
    fn submit(
        &mut self,
        io: BdevIo,
        done: &Completions,
    ) -> std::result::Result<(), (Error, BdevIo)> {
        self.done.get_or_insert_with(|| done.clone());
        if !self.waiting.is_empty() {
            self.waiting.push_back(io);
            return Ok(());
        }
        if let Some(io) = self.send(io, done) {
            self.waiting.push_back(io);
        }
        Ok(())
    }

    fn poll(&mut self, done: &Completions) -> PollStatus {
        let mut status = PollStatus::Idle;
        // Split requests first: they hold a token already.
        let resume = std::mem::take(&mut self.state.borrow_mut().resume);
        for (i, &token) in resume.iter().enumerate() {
            if !self.send_part(token, true, done) {
                self.state
                    .borrow_mut()
                    .resume
                    .extend_from_slice(&resume[i..]);
                return PollStatus::Busy;
            }
            status = PollStatus::Busy;
        }
        while let Some(io) = self.waiting.pop_front() {
            match self.send(io, done) {
                None => status = PollStatus::Busy,
                Some(io) => {
                    self.waiting.push_front(io);
                    break;
                }
            }
        }
        // The queue's socket wakes the reactor when answers come: no need to spin here.
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A port nothing listens on: connections to it are refused at once.
    fn refused_port() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        port.to_string()
    }

    #[test]
    fn an_attach_waiting_on_a_silent_target_holds_its_name_and_no_one_else() {
        // A target that accepts and never answers: the attach waits its connect timeout.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = silent.local_addr().unwrap().port().to_string();
        let mut opts = HostOpts::new("127.0.0.1", &port, "nqn.2016-06.io.tandem:silent");
        opts.connect_timeout = Duration::from_secs(2);
        let slow = std::thread::spawn(move || {
            let t = Instant::now();
            let r = attach("attach_silent", opts);
            (r.map(|_| ()), t.elapsed())
        });
        let accepted = silent.accept().unwrap();
        // Meanwhile: the same name is taken; another attach is not held up.
        let other = HostOpts::new("127.0.0.1", &refused_port(), "nqn.2016-06.io.tandem:none");
        let t = Instant::now();
        assert!(matches!(
            attach("attach_silent", other.clone()),
            Err(Error::Exists(_))
        ));
        let r = attach("attach_other", other.clone());
        assert!(
            matches!(r, Err(Error::Os { .. })),
            "a refused connection is an OS error: {r:?}"
        );
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "held up behind the silent target: {:?}",
            t.elapsed()
        );
        // A detach meanwhile is taken: the attach gives up when it comes back.
        detach("attach_silent").expect("a detach of an attach in progress");
        let (r, took) = slow.join().unwrap();
        drop(accepted);
        assert!(r.is_err(), "a silent target attached");
        assert!(took >= Duration::from_secs(1), "gave up early: {took:?}");
        // The name is free again.
        assert!(matches!(
            attach("attach_silent", other),
            Err(Error::Os { .. })
        ));
    }
}
