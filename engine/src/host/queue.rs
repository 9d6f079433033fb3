//! One NVMe/TCP I/O queue on one reactor: commands submitted without blocking, PDUs written by
//! the queue's poller in batches (one `writev` for all that is ready), completions polled.
//!
//! Data path rules: no lock, no blocking syscall, no allocation per command. Command slots
//! (the CID is the slot), the send queue and the receive buffer are made when the queue starts;
//! the caller's buffers travel in the command and come back with its completion; callbacks are
//! stored inline. A write whose buffers are not one contiguous piece is copied into one pool
//! buffer (a bounce) so that it can go out as a single data PDU.
//!
//! Failure policy: a dropped connection, a protocol error from the target or a command past
//! its timeout fails every command in flight with [`HostIoError::Disconnected`] (or
//! [`HostIoError::TimedOut`] for the late one): the target may or may not have run them, and
//! the caller decides whether to retry. New commands fail at once while the queue is down. A
//! reconnect thread connects the same queue ID again, with a backoff that starts at 50 ms and
//! doubles up to [`HostOpts::reconnect_max_delay`](super::HostOpts); when the controller itself
//! is gone it brings up a new admin queue first.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::io::Read;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::controller::{Controller, IoSocket};
use super::HostError;
use crate::inline_fn::InlineFnOnce;
use crate::mem::{self, Buf, Sgl};
use crate::nvme::sgl::{DataDir, SglDesc, IN_CAPSULE, TRANSPORT};
use crate::nvme::{Sqe, Status};
use crate::nvmf::tcp::pdu::{
    self, flags, CommonHeader, DataHeader, Negotiated, PduType, COMMON_HEADER_LEN, DIGEST_LEN,
};
use crate::nvmf::tcp::txq::{Body, Flushed, SendQueue};
use crate::reactor::{self, Messenger, PollStatus, PollerHandle, ReactorId, ReactorLocal};

/// Why a command failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostIoError {
    /// The target answered with this status.
    Nvme(Status),
    /// The connection dropped (or failed) with the command in flight, or was down.
    Disconnected,
    /// No answer within the timeout.
    TimedOut,
    /// Every slot of the queue is taken.
    Busy,
    /// Larger than the controller's maximum transfer, or a direction the host cannot carry.
    Invalid,
}

/// The same status, whatever its Do Not Retry and More bits.
fn same(a: &Status, b: Status) -> bool {
    (a.sct, a.sc) == (b.sct, b.sc)
}

impl HostIoError {
    /// The negative errno a bdev's caller sees.
    pub fn errno(&self) -> i32 {
        -match self {
            // What the target says in so many words: its store is full (a thin namespace), or
            // the namespace takes no writes (a snapshot).
            HostIoError::Nvme(s) if same(s, Status::CAPACITY_EXCEEDED) => libc::ENOSPC,
            HostIoError::Nvme(s) if same(s, Status::NAMESPACE_WRITE_PROTECTED) => libc::EROFS,
            HostIoError::Nvme(_) => libc::EIO,
            HostIoError::Disconnected => libc::ENOTCONN,
            HostIoError::TimedOut => libc::ETIMEDOUT,
            HostIoError::Busy => libc::EAGAIN,
            HostIoError::Invalid => libc::EINVAL,
        }
    }
}

/// A command's outcome and the buffers it carried.
pub struct HostDone {
    pub status: Result<(), HostIoError>,
    pub sgl: Sgl,
}

pub type HostCallback = InlineFnOnce<HostDone>;

/// PDUs handled per poll.
const PDU_BUDGET: usize = 64;
/// How often command deadlines are checked.
const TIMEOUT_CHECK: Duration = Duration::from_millis(100);
const FIRST_BACKOFF: Duration = Duration::from_millis(50);

static NEXT_QUEUE: AtomicU64 = AtomicU64::new(1);

/// This reactor's queues, by id: how a reconnect thread hands a new socket back.
static QUEUES: ReactorLocal<RefCell<HashMap<u64, Weak<RefCell<Inner>>>>> =
    ReactorLocal::new(|| RefCell::new(HashMap::new()));

struct Slot {
    busy: bool,
    sqe: Sqe,
    sgl: Sgl,
    /// A contiguous copy of a scattered write.
    bounce: Option<Buf>,
    len: u32,
    dir: DataDir,
    /// C2H bytes received.
    got: u32,
    /// The data went in the command capsule (no R2T may come for it).
    inline: bool,
    /// H2C bytes queued in answer to R2Ts.
    h2c_sent: u32,
    /// PDUs on the send queue that carry this slot's data: the slot is not done before they
    /// have left, whatever the target says.
    sending: u16,
    deadline_ns: u64,
    cb: Option<HostCallback>,
}

impl Slot {
    fn new() -> Slot {
        Slot {
            busy: false,
            sqe: Sqe::default(),
            sgl: Sgl::default(),
            bounce: None,
            len: 0,
            dir: DataDir::None,
            got: 0,
            inline: false,
            h2c_sent: 0,
            sending: 0,
            deadline_ns: 0,
            cb: None,
        }
    }

    /// The bytes a write sends.
    fn out_data(&self) -> &[u8] {
        match &self.bounce {
            Some(b) => &b.as_slice()[..self.len as usize],
            None => self.sgl.segs().first().map_or(&[], |s| s.as_slice()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Up,
    /// Reconnecting.
    Down,
    Closed,
}

struct Inner {
    id: u64,
    /// None only in the fuzz harness, which has no target to reconnect to.
    ctrl: Option<Arc<Controller>>,
    qid: u16,
    sock: Option<TcpStream>,
    fd: RawFd,
    neg: Negotiated,
    maxh2cdata: u32,
    inline_max: usize,
    max_xfer: usize,
    timeout_ns: u64,
    state: State,
    rx: Box<[u8]>,
    rx_start: usize,
    rx_end: usize,
    tx: SendQueue,
    released: Vec<u16>,
    slots: Vec<Slot>,
    free: Vec<u16>,
    /// Completions to run once the queue is no longer borrowed.
    done: VecDeque<(HostCallback, HostDone)>,
    pollers: Vec<PollerHandle>,
    /// Whether the socket has bytes to read (the reactor's socket group).
    ready: Option<crate::nvmf::tcp::group::Member>,
    /// The socket wakes the reactor when writable too (answers wait for room).
    want_writable: bool,
    reactor: ReactorId,
    messenger: Option<Messenger>,
    backoff: Duration,
}

/// A handle on an I/O queue. Not `Send`: it belongs to its reactor. Dropping it closes the
/// queue (commands in flight fail).
pub struct IoQueue(Rc<RefCell<Inner>>);

impl IoQueue {
    /// Start polling a connected I/O queue on the current reactor.
    pub fn start(ctrl: Arc<Controller>, s: IoSocket) -> Result<IoQueue, HostError> {
        let reactor = reactor::current()
            .ok_or_else(|| HostError::Unsupported("an I/O queue needs a reactor".into()))?;
        // Under SQ flow control a full queue holds one entry fewer than its size.
        let entries = s.info.queue_entries as usize - 1;
        let id = NEXT_QUEUE.fetch_add(1, Ordering::Relaxed);
        let timeout_ns = ctrl.opts.io_timeout.as_nanos() as u64;
        let rx_len = s.info.max_xfer + 64 * 1024;
        let inner = Rc::new(RefCell::new(Inner {
            id,
            qid: s.qid,
            sock: None,
            fd: -1,
            neg: s.neg,
            maxh2cdata: s.maxh2cdata,
            inline_max: s.info.inline_max,
            max_xfer: s.info.max_xfer,
            timeout_ns,
            state: State::Down,
            rx: vec![0u8; rx_len].into_boxed_slice(),
            rx_start: 0,
            rx_end: 0,
            tx: SendQueue::with_capacity(entries * 3),
            released: Vec::with_capacity(entries),
            slots: (0..entries).map(|_| Slot::new()).collect(),
            free: (0..entries as u16).rev().collect(),
            done: VecDeque::with_capacity(entries),
            pollers: Vec::new(),
            ready: None,
            want_writable: false,
            reactor,
            messenger: reactor::messenger().ok(),
            backoff: FIRST_BACKOFF,
            ctrl: Some(ctrl),
        }));
        inner.borrow_mut().install(s)?;
        let held = Rc::clone(&inner);
        let main = reactor::register_poller("host_io_queue", move || poll(&held))
            .map_err(|e| HostError::Unsupported(e.to_string()))?;
        let weak = Rc::downgrade(&inner);
        let timer =
            reactor::register_periodic_poller("host_io_timeout", TIMEOUT_CHECK, move || match weak
                .upgrade()
            {
                Some(q) => {
                    let status = q.borrow_mut().check_deadlines();
                    run_completions(&q);
                    status
                }
                None => PollStatus::Idle,
            })
            .map_err(|e| HostError::Unsupported(e.to_string()))?;
        inner.borrow_mut().pollers.extend([main, timer]);
        let _ = QUEUES.with(|m| m.borrow_mut().insert(id, Rc::downgrade(&inner)));
        Ok(IoQueue(inner))
    }

    /// Submit a command (its CID and data pointer are filled in here); `cb` runs on this
    /// reactor with its outcome, never inside this call. Refused, the buffers come back.
    pub fn submit(
        &self,
        sqe: Sqe,
        sgl: Sgl,
        cb: impl FnOnce(HostDone) + 'static,
    ) -> Result<(), (HostIoError, Sgl)> {
        self.0.borrow_mut().submit(sqe, sgl, HostCallback::new(cb))
    }

    pub fn is_up(&self) -> bool {
        self.0.borrow().state == State::Up
    }

    pub fn in_flight(&self) -> usize {
        let q = self.0.borrow();
        q.slots.len() - q.free.len()
    }

    /// Entries of the queue: how many commands it holds at once.
    pub fn depth(&self) -> usize {
        self.0.borrow().slots.len()
    }

    /// Write what is queued now, rather than at the next poll.
    pub fn flush(&self) {
        self.0.borrow_mut().flush();
    }
}

impl Drop for IoQueue {
    fn drop(&mut self) {
        self.0.borrow_mut().close();
        run_completions(&self.0);
    }
}

fn poll(q: &Rc<RefCell<Inner>>) -> PollStatus {
    let status = q.borrow_mut().poll();
    run_completions(q);
    status
}

/// Run queued completions outside the borrow: a callback may submit again.
fn run_completions(q: &Rc<RefCell<Inner>>) {
    loop {
        let next = q.borrow_mut().done.pop_front();
        match next {
            Some((cb, d)) => cb.call(d),
            None => break,
        }
    }
}

impl Inner {
    /// Take a freshly connected socket into use.
    fn install(&mut self, s: IoSocket) -> Result<(), HostError> {
        s.sock.set_nonblocking(true)?;
        let fd = s.sock.as_raw_fd();
        reactor::register_fd(fd).map_err(|e| HostError::Unsupported(e.to_string()))?;
        // A controller brought up again may differ: size the buffers and slots to it (nothing
        // is in flight while the queue is down).
        let rx_len = s.info.max_xfer + 64 * 1024;
        if self.rx.len() < rx_len {
            self.rx = vec![0u8; rx_len].into_boxed_slice();
        }
        let entries = s.info.queue_entries as usize - 1;
        if entries != self.slots.len() && self.free.len() == self.slots.len() {
            self.slots = (0..entries).map(|_| Slot::new()).collect();
            self.free = (0..entries as u16).rev().collect();
        }
        self.ready = Some(crate::nvmf::tcp::group::join(fd));
        self.want_writable = false;
        self.fd = fd;
        self.sock = Some(s.sock);
        self.qid = s.qid;
        self.neg = s.neg;
        self.neg.max_plen = (s.info.max_xfer + 1024) as u32;
        self.maxh2cdata = s.maxh2cdata;
        self.inline_max = s.info.inline_max;
        self.max_xfer = s.info.max_xfer;
        self.rx_start = 0;
        self.rx_end = 0;
        self.tx.clear();
        self.state = State::Up;
        self.backoff = FIRST_BACKOFF;
        Ok(())
    }

    fn submit(
        &mut self,
        mut sqe: Sqe,
        sgl: Sgl,
        cb: HostCallback,
    ) -> Result<(), (HostIoError, Sgl)> {
        if self.state != State::Up {
            return Err((HostIoError::Disconnected, sgl));
        }
        let len = sgl.len();
        let dir = DataDir::of(sqe.opcode);
        if len > self.max_xfer || dir == DataDir::Both || (dir == DataDir::None && len != 0) {
            return Err((HostIoError::Invalid, sgl));
        }
        let Some(slot) = self.free.pop() else {
            return Err((HostIoError::Busy, sgl));
        };
        let bounce = if dir == DataDir::HostToController && sgl.segs().len() > 1 {
            match bounce_copy(&sgl, len) {
                Some(b) => Some(b),
                None => {
                    self.free.push(slot);
                    return Err((HostIoError::Busy, sgl));
                }
            }
        } else {
            None
        };
        sqe.cid = slot;
        sqe.flags |= 0x40; // PSDT: SGL.
        let inline = dir == DataDir::HostToController && len <= self.inline_max;
        sqe.dptr = SglDesc {
            addr: 0,
            len: len as u32,
            id: if inline { IN_CAPSULE } else { TRANSPORT },
        }
        .encode();
        let now = reactor::now().map_or(0, |d| d.as_nanos() as u64);
        let s = &mut self.slots[slot as usize];
        *s = Slot {
            busy: true,
            sqe,
            sgl,
            bounce,
            len: len as u32,
            dir,
            got: 0,
            inline,
            h2c_sent: 0,
            sending: 0,
            deadline_ns: now + self.timeout_ns,
            cb: Some(cb),
        };
        let hd = self.neg.header_digest;
        let dd = self.neg.data_digest && inline && len > 0;
        let hlen = 72usize;
        let pdo = if inline && len > 0 {
            hlen + if hd { DIGEST_LEN } else { 0 }
        } else {
            0
        };
        let data_len = if inline { len } else { 0 };
        let ch = CommonHeader {
            pdu_type: PduType::CapsuleCmd,
            flags: pdu::digest_flags(hd, dd),
            hlen: hlen as u8,
            pdo: pdo as u8,
            plen: (hlen
                + if hd { DIGEST_LEN } else { 0 }
                + data_len
                + if dd { DIGEST_LEN } else { 0 }) as u32,
        };
        let mut head = [0u8; 72];
        head[..COMMON_HEADER_LEN].copy_from_slice(&ch.encode());
        head[COMMON_HEADER_LEN..].copy_from_slice(&sqe.encode());
        let digest = dd.then(|| pdu::crc32c(self.slots[slot as usize].out_data()));
        let out = self.tx.push(&head, hd);
        if inline && len > 0 {
            out.body = Body::Slot {
                slot,
                off: 0,
                len: len as u32,
            };
            if let Some(d) = digest {
                out.set_data_digest(d);
            }
            out.release = Some(slot);
            self.slots[slot as usize].sending = 1;
        }
        Ok(())
    }

    fn poll(&mut self) -> PollStatus {
        if self.state != State::Up {
            return PollStatus::Idle;
        }
        let mut busy = self.flush();
        busy |= self.receive();
        busy |= self.flush();
        let writable = !self.tx.is_empty() && self.state == State::Up;
        if writable != self.want_writable && reactor::fd_interest(self.fd, true, writable).is_ok() {
            self.want_writable = writable;
        }
        if busy {
            PollStatus::Busy
        } else {
            PollStatus::Idle
        }
    }

    fn flush(&mut self) -> bool {
        let Some(sock) = self.sock.as_mut() else {
            return false;
        };
        let slots = &self.slots;
        let r = self
            .tx
            .flush(sock, |s| slots[s as usize].out_data(), &mut self.released);
        for &s in &self.released {
            let slot = &mut self.slots[s as usize];
            slot.sending = slot.sending.saturating_sub(1);
        }
        self.released.clear();
        match r {
            Flushed::Nothing => false,
            Flushed::Some => true,
            Flushed::Failed => {
                self.fail("the connection failed while sending", None);
                true
            }
        }
    }

    fn receive(&mut self) -> bool {
        let mut busy = false;
        for _ in 0..PDU_BUDGET {
            if self.state != State::Up {
                break;
            }
            match self.next_pdu() {
                Ok(Some((h, start))) => {
                    busy = true;
                    let rx = std::mem::take(&mut self.rx);
                    let end = start + h.plen as usize;
                    self.rx_start = end;
                    let r = self.handle(&h, &rx[start..end]);
                    self.rx = rx;
                    if self.rx_start == self.rx_end {
                        self.rx_start = 0;
                        self.rx_end = 0;
                    }
                    if let Err(why) = r {
                        self.fail(&why, None);
                    }
                }
                Ok(None) => match self.read_more() {
                    Ok(true) => busy = true,
                    Ok(false) => break,
                    Err(why) => {
                        self.fail(why, None);
                        return true;
                    }
                },
                Err(why) => {
                    self.fail(&why, None);
                    return true;
                }
            }
        }
        busy
    }

    fn next_pdu(&self) -> Result<Option<(CommonHeader, usize)>, String> {
        let avail = &self.rx[self.rx_start..self.rx_end];
        let Some(ch) = avail.first_chunk::<COMMON_HEADER_LEN>() else {
            return Ok(None);
        };
        let h = CommonHeader::decode(ch, &self.neg).map_err(|e| e.to_string())?;
        if avail.len() < h.plen as usize {
            return Ok(None);
        }
        Ok(Some((h, self.rx_start)))
    }

    fn read_more(&mut self) -> Result<bool, &'static str> {
        if self.rx_start > 0 && (self.rx_end == self.rx.len() || self.rx_start > self.rx.len() / 2)
        {
            self.rx.copy_within(self.rx_start..self.rx_end, 0);
            self.rx_end -= self.rx_start;
            self.rx_start = 0;
        }
        if self.rx_end == self.rx.len() || !self.ready.as_ref().is_none_or(|r| r.readable()) {
            return Ok(false);
        }
        let sock = self.sock.as_mut().ok_or("no socket")?;
        match sock.read(&mut self.rx[self.rx_end..]) {
            Ok(0) => Err("the target closed the connection"),
            Ok(n) => {
                self.rx_end += n;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if let Some(r) = &self.ready {
                    r.drained();
                }
                Ok(false)
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Ok(true),
            Err(_) => Err("the connection failed while receiving"),
        }
    }

    /// The busy slot a PDU from the target names.
    fn slot_for(&self, cid: u16, what: &str) -> Result<usize, String> {
        match self.slots.get(cid as usize) {
            Some(s) if s.busy => Ok(cid as usize),
            _ => Err(format!("{what} for command {cid}, which is not in flight")),
        }
    }

    fn handle(&mut self, h: &CommonHeader, p: &[u8]) -> Result<(), String> {
        pdu::check_header_digest(p, h).map_err(|e| e.to_string())?;
        match h.pdu_type {
            PduType::CapsuleResp => {
                let cqe = pdu::capsule_cqe(p).ok_or("short response")?;
                let i = self.slot_for(cqe.cid, "a response")?;
                let status = Status::from_field(cqe.status).0;
                let s = &self.slots[i];
                if s.sending > 0 {
                    return Err(format!(
                        "a response to command {} before its data left",
                        cqe.cid
                    ));
                }
                if status.is_success() && s.dir == DataDir::ControllerToHost && s.got != s.len {
                    return Err(format!(
                        "a read answered with {} of its {} bytes",
                        s.got, s.len
                    ));
                }
                let r = if status.is_success() {
                    Ok(())
                } else {
                    Err(HostIoError::Nvme(status))
                };
                self.complete(i, r);
            }
            PduType::C2hData => {
                let dh = DataHeader::decode(p).ok_or("short C2HData")?;
                dh.check_length(h).map_err(|e| e.to_string())?;
                let i = self.slot_for(dh.cccid, "C2HData")?;
                let s = &self.slots[i];
                if s.dir != DataDir::ControllerToHost
                    || dh.offset != s.got
                    || dh.offset as u64 + dh.length as u64 > s.len as u64
                {
                    return Err(format!("C2HData out of place for command {}", dh.cccid));
                }
                let (at, len) = h.data_range();
                if !pdu::data_digest_ok(p, h) {
                    return Err("data digest mismatch on C2HData".into());
                }
                let s = &mut self.slots[i];
                s.sgl.copy_at(dh.offset as usize, &p[at..at + len]);
                s.got += len as u32;
                if h.flags & flags::SUCCESS != 0 {
                    if s.got != s.len || h.flags & flags::LAST_PDU == 0 {
                        return Err("SUCCESS before all the data".into());
                    }
                    self.complete(i, Ok(()));
                }
            }
            PduType::R2t => {
                let dh = DataHeader::decode(p).ok_or("short R2T")?;
                let i = self.slot_for(dh.cccid, "R2T")?;
                let s = &self.slots[i];
                let end = dh.offset as u64 + dh.length as u64;
                // One R2T at a time (MAXR2T 0), in order, never for in-capsule data.
                if s.dir != DataDir::HostToController
                    || s.inline
                    || s.sending > 0
                    || dh.offset != s.h2c_sent
                    || end > s.len as u64
                    || dh.length == 0
                {
                    return Err(format!("R2T out of place for command {}", dh.cccid));
                }
                self.slots[i].h2c_sent = end as u32;
                self.send_h2c(i as u16, dh.ttag, dh.offset, dh.length);
            }
            PduType::C2hTermReq => {
                let fes = u16::from_le_bytes([p[8], p[9]]);
                return Err(format!(
                    "the target ended the connection (C2HTermReq FES {fes:#x})"
                ));
            }
            other => return Err(format!("a {other:?} PDU from the target")),
        }
        Ok(())
    }

    /// Answer an R2T: H2CData PDUs of at most MAXH2CDATA each.
    fn send_h2c(&mut self, slot: u16, ttag: u16, offset: u32, length: u32) {
        let hd = self.neg.header_digest;
        let dd = self.neg.data_digest;
        let cid = self.slots[slot as usize].sqe.cid;
        let mut at = offset;
        let end = offset + length;
        while at < end {
            let n = (end - at).min(self.maxh2cdata);
            let last = if at + n == end { flags::LAST_PDU } else { 0 };
            let fl = last | pdu::digest_flags(hd, dd);
            let hdg = if hd { DIGEST_LEN } else { 0 };
            let ch = CommonHeader {
                pdu_type: PduType::H2cData,
                flags: fl,
                hlen: 24,
                pdo: (24 + hdg) as u8,
                plen: (24 + hdg + n as usize + if dd { DIGEST_LEN } else { 0 }) as u32,
            };
            let dh = DataHeader {
                cccid: cid,
                ttag,
                offset: at,
                length: n,
            };
            let digest = dd.then(|| {
                let d = self.slots[slot as usize].out_data();
                pdu::crc32c(&d[at as usize..(at + n) as usize])
            });
            let out = self.tx.push(&dh.encode(ch), hd);
            out.body = Body::Slot {
                slot,
                off: at,
                len: n,
            };
            if let Some(d) = digest {
                out.set_data_digest(d);
            }
            out.release = Some(slot);
            self.slots[slot as usize].sending += 1;
            at += n;
        }
    }

    /// Finish slot `i` with `r`: its callback is queued to run outside the borrow.
    fn complete(&mut self, i: usize, r: Result<(), HostIoError>) {
        let s = &mut self.slots[i];
        s.busy = false;
        s.bounce = None;
        s.sending = 0;
        let sgl = std::mem::take(&mut s.sgl);
        if let Some(cb) = s.cb.take() {
            self.done.push_back((cb, HostDone { status: r, sgl }));
        }
        self.free.push(i as u16);
    }

    fn check_deadlines(&mut self) -> PollStatus {
        if self.state != State::Up {
            return PollStatus::Idle;
        }
        let now = reactor::now().map_or(0, |d| d.as_nanos() as u64);
        let late = self
            .slots
            .iter()
            .position(|s| s.busy && s.deadline_ns <= now);
        match late {
            Some(i) => {
                self.fail("a command timed out", Some(i));
                PollStatus::Busy
            }
            None => PollStatus::Idle,
        }
    }

    /// The connection is unusable: fail what is in flight and start reconnecting.
    fn fail(&mut self, why: &str, timed_out: Option<usize>) {
        let addr = self
            .ctrl
            .as_ref()
            .map(|c| c.opts.addr())
            .unwrap_or_default();
        tracing::warn!(qid = self.qid, %addr, "host: I/O queue down: {why}");
        self.drop_socket();
        self.fail_in_flight(timed_out);
        if self.state == State::Up {
            self.state = State::Down;
            self.reconnect();
        }
    }

    fn drop_socket(&mut self) {
        self.ready = None;
        if let Some(s) = self.sock.take() {
            let _ = reactor::unregister_fd(self.fd);
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        self.tx.clear();
        self.rx_start = 0;
        self.rx_end = 0;
    }

    fn fail_in_flight(&mut self, timed_out: Option<usize>) {
        for i in 0..self.slots.len() {
            if self.slots[i].busy {
                let e = if Some(i) == timed_out {
                    HostIoError::TimedOut
                } else {
                    HostIoError::Disconnected
                };
                self.complete(i, Err(e));
            }
        }
    }

    /// Reconnect from a thread of its own (the reactor never blocks), after the backoff.
    fn reconnect(&mut self) {
        let (Some(messenger), Some(ctrl)) = (self.messenger.clone(), self.ctrl.clone()) else {
            return;
        };
        let (qid, id, reactor, wait) = (self.qid, self.id, self.reactor, self.backoff);
        self.backoff = (self.backoff * 2).min(ctrl.opts.reconnect_max_delay);
        let spawned = std::thread::Builder::new()
            .name("tandem-reconnect".into())
            .spawn(move || {
                std::thread::sleep(wait);
                let generation = ctrl.generation();
                let attempt = ctrl.connect_io(Some(qid)).or_else(|e| {
                    // Only if the controller itself is gone (the target no longer knows its
                    // ID, or the admin queue is down) is it brought up again; otherwise this
                    // attempt fails and the next one waits longer.
                    let gone = matches!(
                        e,
                        HostError::Status { status, .. }
                            if status == Status::CONNECT_INVALID_PARAMETERS
                    ) || !ctrl.admin_alive();
                    if !gone {
                        return Err(e);
                    }
                    tracing::info!(
                        qid,
                        "host: I/O queue Connect failed ({e}); reconnecting the controller"
                    );
                    ctrl.reconnect(generation)?;
                    ctrl.connect_io(Some(qid))
                });
                let sent = messenger.send_patiently(reactor, move || {
                    let q = QUEUES
                        .with(|m| m.borrow().get(&id).and_then(Weak::upgrade))
                        .ok()
                        .flatten();
                    let Some(q) = q else { return };
                    let mut q = q.borrow_mut();
                    if q.state != State::Down {
                        return;
                    }
                    match attempt {
                        Ok(s) => match q.install(s) {
                            Ok(()) => tracing::info!(qid, "host: I/O queue reconnected"),
                            Err(e) => {
                                tracing::warn!(qid, "host: reconnect: {e}");
                                q.reconnect();
                            }
                        },
                        Err(e) => {
                            tracing::warn!(qid, "host: reconnect failed: {e}");
                            q.reconnect();
                        }
                    }
                });
                if sent.is_err() {
                    tracing::warn!(
                        qid,
                        "host: the queue's reactor is gone; reconnect abandoned"
                    );
                }
            });
        if spawned.is_err() {
            tracing::error!("host: cannot start a reconnect thread");
        }
    }

    fn close(&mut self) {
        if self.state == State::Closed {
            return;
        }
        self.state = State::Closed;
        self.drop_socket();
        self.fail_in_flight(None);
        for p in self.pollers.drain(..) {
            let _ = p.unregister();
        }
        let id = self.id;
        let _ = QUEUES.with(|m| m.borrow_mut().remove(&id));
        if let Some(c) = &self.ctrl {
            c.release_io(self.qid);
        }
    }
}

/// Copy a scattered write into one pool buffer.
fn bounce_copy(sgl: &Sgl, len: usize) -> Option<Buf> {
    let mut b = if len <= mem::SMALL_BUF {
        mem::take_small().map(Buf::Pool)
    } else if len <= mem::LARGE_BUF {
        mem::take_large().map(Buf::Pool)
    } else {
        None
    }
    .or_else(|| mem::DmaBuf::new(len).ok().map(Buf::Dma))?;
    let mut at = 0;
    for seg in sgl.segs() {
        let d = seg.as_slice();
        b.as_mut_slice()[at..at + d.len()].copy_from_slice(d);
        at += d.len();
    }
    Some(b)
}

/// For the `host_pdus` fuzz target: what the host makes of bytes from a target, with no socket
/// and no reactor. A queue with commands of each kind in flight (a 4 KiB read, an in-capsule
/// write, a 64 KiB write waiting for R2T, a flush) takes `input` as if read from its socket,
/// until the bytes run out or it finds fault with them. Never panics; returns the commands that
/// completed.
#[doc(hidden)]
pub fn fuzz_receive(input: &[u8], header_digest: bool, data_digest: bool) -> usize {
    const MAX_XFER: usize = 128 * 1024;
    let slots = 8;
    let mut q = Inner {
        id: 0,
        ctrl: None,
        qid: 1,
        sock: None,
        fd: -1,
        neg: Negotiated {
            header_digest,
            data_digest,
            max_plen: (MAX_XFER + 1024) as u32,
        },
        maxh2cdata: 8192,
        inline_max: 8192,
        max_xfer: MAX_XFER,
        timeout_ns: u64::MAX,
        state: State::Up,
        rx: vec![0u8; MAX_XFER + 64 * 1024].into_boxed_slice(),
        rx_start: 0,
        rx_end: 0,
        tx: SendQueue::with_capacity(64),
        released: Vec::new(),
        slots: (0..slots).map(|_| Slot::new()).collect(),
        free: Vec::new(),
        done: VecDeque::new(),
        pollers: Vec::new(),
        ready: None,
        want_writable: false,
        reactor: ReactorId(0),
        messenger: None,
        backoff: FIRST_BACKOFF,
    };
    let buf = |len: usize| Sgl::single(mem::DmaBuf::new(len).expect("memory for a fuzz buffer"));
    let busy = |q: &mut Inner, i: usize, dir: DataDir, len: usize, inline: bool| {
        let s = &mut q.slots[i];
        s.busy = true;
        s.sqe.cid = i as u16;
        s.dir = dir;
        s.len = len as u32;
        s.inline = inline;
        s.sending = inline as u16;
        s.sgl = if len > 0 { buf(len) } else { Sgl::default() };
    };
    busy(&mut q, 0, DataDir::ControllerToHost, 4096, false);
    busy(&mut q, 1, DataDir::HostToController, 512, true);
    busy(&mut q, 2, DataDir::HostToController, 65536, false);
    busy(&mut q, 3, DataDir::None, 0, false);
    q.free = (4..slots as u16).rev().collect();
    let n = input.len().min(q.rx.len());
    q.rx[..n].copy_from_slice(&input[..n]);
    q.rx_end = n;
    let before = q.free.len();
    q.receive();
    // The in-capsule write's data "leaves", as a flush would report it.
    q.slots[1].sending = 0;
    q.free.len().saturating_sub(before) + q.done.len()
}
