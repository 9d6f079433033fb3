//! One NVMe/TCP connection: a queue pair of one controller, owned by one reactor from accept to
//! close.
//!
//! The connection's poller reads the socket into a receive buffer, takes whole PDUs out of it,
//! and runs each command to the point where it waits: for data (an R2T is sent), for a bdev
//! I/O (its completion comes back on this reactor), or for an event (an Asynchronous Event
//! Request). Replies go to a send queue that the poller writes with `writev`.
//!
//! This module holds the connection's state, its poller, the receive side (framing, ICReq) and
//! closing; [`super::command`] takes the commands, [`super::io_cmd`] runs the I/O path, and
//! [`super::send`] builds what the target sends, onto the send queue ([`super::txq`]).
//!
//! Data path rules: no lock, no blocking syscall (the socket is non-blocking), and no heap
//! allocation per I/O in steady state. The receive buffer is sized at ICReq; command slots,
//! their scatter-gather lists and the send queue's room at Connect; data buffers come from the
//! reactor's pools (a buffer is allocated only when a pool runs dry); completion callbacks are
//! stored inline. Admin commands build their replies on the heap: they are control path.
//!
//! A protocol error (a malformed PDU, a PDU out of sequence, data out of range) ends the
//! connection with a C2HTermReq naming the error and the offending field; the host's other
//! connections, and other hosts, are not touched. A command that is merely wrong gets an NVMe
//! status in its response.

use std::cell::RefCell;
use std::io::{IoSlice, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::Duration;

use super::io_cmd::NsEntry;
use super::pdu::{
    self, CommonHeader, Fes, IcReq, IcResp, Negotiated, PduType, ProtocolError, COMMON_HEADER_LEN,
    DIGEST_LEN,
};
use super::txq::SendQueue;
use crate::mem::{self, Sgl};
use crate::nvme::{Sqe, Status};
use crate::nvmf::controller::{AdminHooks, Controller, CtrlShared};
use crate::nvmf::{target, ListenAddr, TransportOpts};
use crate::reactor::{self, Messenger, PollStatus, PollerHandle, ReactorId, ReactorLocal};

/// In-capsule data a host may send on the admin queue (Linux sends up to 8 KiB there whatever
/// IOCCSZ says).
pub(super) const ADMIN_IN_CAPSULE: usize = 8192;
/// PDUs handled per poll, so that one busy connection cannot starve the reactor.
pub(super) const PDU_BUDGET: usize = 64;
/// Send-queue entries reserved per queue slot (a data PDU and a response).
pub(super) const TX_PER_SLOT: usize = 2;
/// Send-queue entries beyond that (replies that hold no slot: events, early errors) before the
/// connection stops reading commands until the host reads its answers.
const TX_SPARE: usize = 16;
/// How long a connection may take to send ICReq and Connect.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a TermReq may take to leave before the connection closes anyway.
pub(super) const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// The receive buffer before ICReq: room for the ICReq alone.
const SETUP_RX: usize = 256;

/// Every connection on this reactor, for the events that reach them by message.
pub(super) static CONNS: ReactorLocal<RefCell<Vec<Weak<RefCell<Conn>>>>> =
    ReactorLocal::new(|| RefCell::new(Vec::new()));

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    AwaitIcReq,
    Ready,
    /// A TermReq is queued: send what is queued, then close.
    Closing,
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SlotState {
    Free,
    /// An R2T went out; H2CData fills the buffer.
    AwaitData,
    /// Running: at the bdev, or being answered.
    Busy,
}

/// A command in flight. Slot `i` is also the transfer tag of its R2T.
pub(super) struct Slot {
    pub(super) state: SlotState,
    pub(super) sqe: Sqe,
    /// Bytes the command's SGL describes.
    pub(super) len: u32,
    /// H2C bytes received so far.
    pub(super) got: u32,
    /// A data digest failed: answer with a transient transport error once the data is in.
    pub(super) digest_error: bool,
    /// Bdev I/Os outstanding (Dataset Management may issue several).
    pub(super) pending: u32,
    /// The first failure among them.
    pub(super) status: Status,
    /// The command's data; empty when it has none. Kept across commands (cleared, not freed).
    pub(super) sgl: Sgl,
    /// What a Compare read from the namespace, to hold beside the host's data.
    pub(super) cmp: Sgl,
}

impl Slot {
    pub(super) fn new() -> Slot {
        Slot {
            state: SlotState::Free,
            sqe: Sqe::default(),
            len: 0,
            got: 0,
            digest_error: false,
            pending: 0,
            status: Status::SUCCESS,
            sgl: Sgl::new(),
            cmp: Sgl::new(),
        }
    }

    pub(super) fn data(&self) -> &[u8] {
        self.sgl.segs().first().map_or(&[], |s| s.as_slice())
    }

    pub(super) fn data_mut(&mut self) -> &mut [u8] {
        self.sgl
            .segs_mut()
            .first_mut()
            .map_or(&mut [], |s| s.as_mut_slice())
    }
}

pub(super) struct Queue {
    pub(super) qid: u16,
    /// Entries (SQSIZE + 1).
    pub(super) entries: u16,
    pub(super) sq_head: u16,
    pub(super) sqflow_off: bool,
    pub(super) ctrl: Arc<CtrlShared>,
    pub(super) epoch: u32,
    /// The controller's admin state, on the admin queue only.
    pub(super) admin: Option<Box<Controller>>,
    pub(super) ns_gen: u64,
    pub(super) ns: Vec<NsEntry>,
}

/// The connection's byte stream: a TCP socket, or one end of a Unix socket pair (how the fuzz
/// harness and tests feed a connection without a network).
pub(crate) enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Socket {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.read(b),
            Socket::Unix(s) => s.read(b),
        }
    }

    fn shutdown(&self) {
        let _ = match self {
            Socket::Tcp(s) => s.shutdown(Shutdown::Both),
            Socket::Unix(s) => s.shutdown(Shutdown::Both),
        };
    }

    fn as_raw_fd(&self) -> RawFd {
        match self {
            Socket::Tcp(s) => s.as_raw_fd(),
            Socket::Unix(s) => s.as_raw_fd(),
        }
    }

    /// The peer, for log lines.
    pub(super) fn peer(&self) -> String {
        match self {
            Socket::Tcp(s) => s
                .peer_addr()
                .map_or_else(|_| "?".to_owned(), |a| a.to_string()),
            Socket::Unix(_) => "unix".to_owned(),
        }
    }
}

impl Write for Socket {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.write(b),
            Socket::Unix(s) => s.write(b),
        }
    }

    fn write_vectored(&mut self, iov: &[IoSlice<'_>]) -> std::io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.write_vectored(iov),
            Socket::Unix(s) => s.write_vectored(iov),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub(crate) struct Conn {
    pub(super) sock: Socket,
    pub(super) fd: RawFd,
    pub(super) addr: ListenAddr,
    pub(super) opts: TransportOpts,
    pub(super) phase: Phase,
    pub(super) neg: Negotiated,
    /// C2H data alignment the host asked for (HPDA + 1) × 4.
    pub(super) c2h_align: usize,
    pub(super) rx: Box<[u8]>,
    pub(super) rx_start: usize,
    pub(super) rx_end: usize,
    pub(super) tx: SendQueue,
    /// Slots whose data went out in the last flush (kept to reuse its capacity).
    pub(super) released: Vec<u16>,
    pub(super) queue: Option<Queue>,
    pub(super) slots: Vec<Slot>,
    pub(super) free: Vec<u16>,
    pub(super) pollers: Vec<PollerHandle>,
    /// What of the socket wakes the reactor now: (readable, writable).
    interest: (bool, bool),
    /// Whether the socket has bytes to read, from the reactor's socket group.
    pub(super) ready: super::group::Member,
    pub(super) me: Weak<RefCell<Conn>>,
}

pub(super) type ConnRef = Rc<RefCell<Conn>>;

/// Take a new connection onto the current reactor.
pub(crate) fn start(sock: TcpStream, addr: ListenAddr) {
    if let Err(e) = sock
        .set_nonblocking(true)
        .and_then(|_| sock.set_nodelay(true))
    {
        tracing::warn!("nvmf/tcp: new connection: {e}");
        return;
    }
    start_socket(Socket::Tcp(sock), addr);
}

/// Take a connection on a non-blocking socket onto the current reactor.
pub(crate) fn start_socket(sock: Socket, addr: ListenAddr) {
    let opts = target::transport().unwrap_or_default();
    let fd = sock.as_raw_fd();
    let conn = Rc::new_cyclic(|me| {
        RefCell::new(Conn {
            sock,
            fd,
            addr,
            opts,
            phase: Phase::AwaitIcReq,
            neg: Negotiated::INITIAL,
            c2h_align: 4,
            rx: vec![0u8; SETUP_RX].into_boxed_slice(),
            rx_start: 0,
            rx_end: 0,
            tx: SendQueue::with_capacity(8),
            released: Vec::with_capacity(8),
            queue: None,
            slots: vec![Slot::new()],
            free: vec![0],
            pollers: Vec::new(),
            interest: (true, false),
            ready: super::group::join(fd),
            me: me.clone(),
        })
    });
    if let Err(e) = reactor::register_fd(fd) {
        tracing::warn!("nvmf/tcp: cannot register a connection for wake-ups: {e}");
    }
    let held = Rc::clone(&conn);
    match reactor::register_poller("nvmf_tcp_conn", move || held.borrow_mut().poll()) {
        Ok(h) => conn.borrow_mut().pollers.push(h),
        Err(e) => {
            tracing::warn!("nvmf/tcp: cannot poll a connection: {e}");
            let _ = reactor::unregister_fd(fd);
            return;
        }
    }
    let _ = CONNS.with(|c| {
        let mut c = c.borrow_mut();
        c.retain(|w| w.strong_count() > 0);
        c.push(Rc::downgrade(&conn));
    });
    // A peer that connects and says nothing (or never connects a queue) is let go.
    let weak = Rc::downgrade(&conn);
    let _ = reactor::set_timer(SETUP_TIMEOUT, move || {
        if let Some(c) = weak.upgrade() {
            if let Ok(mut c) = c.try_borrow_mut() {
                if c.queue.is_none() && c.phase != Phase::Closed {
                    tracing::info!(peer = %c.sock.peer(), "nvmf/tcp: no Connect in time: closing");
                    c.close();
                }
            }
        }
    });
}

/// The receive buffer holds the largest PDU this transport accepts, with room to read ahead.
pub(super) fn rx_capacity(opts: &TransportOpts) -> usize {
    max_plen(opts) as usize + 64 * 1024
}

pub(super) fn max_plen(opts: &TransportOpts) -> u32 {
    let capsule = 72 + 2 * DIGEST_LEN + ADMIN_IN_CAPSULE.max(opts.in_capsule_data_size as usize);
    let h2c = 24 + 2 * DIGEST_LEN + opts.max_h2c_data as usize;
    capsule.max(h2c) as u32
}

/// The slot behind a buffer: a pool buffer, or (pool empty) a fresh one.
pub(super) fn take_buf(len: usize) -> Option<mem::Buf> {
    let pooled = if len <= mem::SMALL_BUF {
        mem::take_small()
    } else if len <= mem::LARGE_BUF {
        mem::take_large()
    } else {
        None
    };
    match pooled {
        Some(b) => Some(mem::Buf::Pool(b)),
        None => mem::DmaBuf::new(len).ok().map(mem::Buf::Dma),
    }
}

/// Events for controllers whose admin queue is a TCP connection on `reactor`.
pub(super) struct Hooks {
    pub(super) reactor: ReactorId,
}

impl AdminHooks for Hooks {
    fn ns_changed(&self, ctrl: &Arc<CtrlShared>, nsid: u32) {
        let id = ctrl.id;
        if let Some(m) = target::messenger() {
            deliver(&m, self.reactor, move || {
                for_conns(|c| {
                    if c.ctrl_id() == Some(id) {
                        c.ns_changed(nsid);
                    }
                })
            });
        }
    }

    /// Wake every reactor: each connection of the controller sees it dead at its next poll.
    fn killed(&self, _ctrl: &Arc<CtrlShared>) {
        if let Some(m) = target::messenger() {
            for r in m.reactors() {
                deliver(&m, r, || {});
            }
        }
    }
}

/// Send a control message, waiting a while if the reactor's ring is full rather than losing it.
fn deliver(m: &Messenger, to: ReactorId, f: impl FnOnce() + Send + 'static) {
    if m.send_patiently(to, f).is_err() {
        tracing::warn!(
            reactor = to.0,
            "nvmf/tcp: a control message could not reach its reactor"
        );
    }
}

pub(super) fn for_conns(mut f: impl FnMut(&mut Conn)) {
    let live: Vec<ConnRef> = CONNS
        .with(|c| c.borrow().iter().filter_map(Weak::upgrade).collect())
        .unwrap_or_default();
    for c in live {
        if let Ok(mut c) = c.try_borrow_mut() {
            f(&mut c);
        }
    }
}

impl Conn {
    fn ctrl_id(&self) -> Option<u64> {
        self.queue.as_ref().map(|q| q.ctrl.id)
    }

    fn poll(&mut self) -> PollStatus {
        if self.phase == Phase::Closed {
            return PollStatus::Idle;
        }
        if let Some(q) = &self.queue {
            if q.ctrl.is_dead() || (q.admin.is_none() && q.ctrl.epoch() != q.epoch) {
                self.close();
                return PollStatus::Busy;
            }
        }
        let mut busy = self.flush();
        if matches!(self.phase, Phase::AwaitIcReq | Phase::Ready) && !self.backlogged() {
            busy |= self.receive();
            busy |= self.flush();
        }
        if self.phase == Phase::Closing && self.tx.is_empty() {
            self.close();
            return PollStatus::Busy;
        }
        self.update_interest();
        if busy {
            PollStatus::Busy
        } else {
            PollStatus::Idle
        }
    }

    /// The host is not reading its answers: read no more commands until it does.
    fn backlogged(&self) -> bool {
        self.tx.len() >= self.slots.len() * TX_PER_SLOT + TX_SPARE
    }

    /// Wake on readable unless backlogged; on writable while answers wait for the socket.
    fn update_interest(&mut self) {
        if self.phase == Phase::Closed {
            return;
        }
        let want = (!self.backlogged(), !self.tx.is_empty());
        if want != self.interest && reactor::fd_interest(self.fd, want.0, want.1).is_ok() {
            self.interest = want;
        }
    }

    /// Close in `after` unless closed by then (a TermReq that cannot leave).
    pub(super) fn close_after(&self, after: Duration) {
        let weak = self.me.clone();
        let _ = reactor::set_timer(after, move || {
            if let Some(c) = weak.upgrade() {
                if let Ok(mut c) = c.try_borrow_mut() {
                    c.close();
                }
            }
        });
    }

    /// Read what the socket has and handle every whole PDU. True if anything happened.
    fn receive(&mut self) -> bool {
        let mut busy = false;
        for _ in 0..PDU_BUDGET {
            if !matches!(self.phase, Phase::AwaitIcReq | Phase::Ready) {
                break;
            }
            match self.next_pdu() {
                Some(Ok((h, start))) => {
                    busy = true;
                    let rx = std::mem::take(&mut self.rx);
                    let end = start + h.plen as usize;
                    self.rx_start = end;
                    self.handle_pdu(&h, &rx[start..end]);
                    self.rx = rx;
                    self.grow_rx();
                    if self.rx_start == self.rx_end {
                        self.rx_start = 0;
                        self.rx_end = 0;
                    }
                }
                Some(Err(e)) => {
                    let rx = std::mem::take(&mut self.rx);
                    let hdr_end = (self.rx_start + 128).min(self.rx_end);
                    self.fatal(&e, &rx[self.rx_start..hdr_end]);
                    self.rx = rx;
                    return true;
                }
                None => match self.read_more() {
                    Ok(true) => busy = true,
                    Ok(false) => break,
                    Err(()) => {
                        self.close();
                        return true;
                    }
                },
            }
        }
        busy
    }

    /// After ICReq, the receive buffer grows to hold the largest PDU negotiated.
    fn grow_rx(&mut self) {
        let want = rx_capacity(&self.opts);
        if self.phase != Phase::Ready || self.rx.len() >= want {
            return;
        }
        let mut big = vec![0u8; want].into_boxed_slice();
        let left = self.rx_end - self.rx_start;
        big[..left].copy_from_slice(&self.rx[self.rx_start..self.rx_end]);
        self.rx = big;
        self.rx_start = 0;
        self.rx_end = left;
    }

    /// The next whole PDU in the receive buffer: its header and where it starts.
    fn next_pdu(&self) -> Option<Result<(CommonHeader, usize), ProtocolError>> {
        let avail = &self.rx[self.rx_start..self.rx_end];
        let ch: &[u8; COMMON_HEADER_LEN] = avail.get(..COMMON_HEADER_LEN)?.try_into().ok()?;
        let h = match CommonHeader::decode(ch, &self.neg) {
            Ok(h) => h,
            Err(e) => return Some(Err(e)),
        };
        if avail.len() < h.plen as usize {
            return None;
        }
        Some(Ok((h, self.rx_start)))
    }

    /// Read from the socket. Ok(false): nothing to read now; Err: the peer is gone.
    fn read_more(&mut self) -> Result<bool, ()> {
        if self.rx_start > 0 && self.rx_end == self.rx.len() || self.rx_start > self.rx.len() / 2 {
            self.rx.copy_within(self.rx_start..self.rx_end, 0);
            self.rx_end -= self.rx_start;
            self.rx_start = 0;
        }
        if self.rx_end == self.rx.len() || !self.ready.readable() {
            return Ok(false);
        }
        match self.sock.read(&mut self.rx[self.rx_end..]) {
            Ok(0) => Err(()),
            Ok(n) => {
                self.rx_end += n;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                self.ready.drained();
                Ok(false)
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Ok(true),
            Err(_) => Err(()),
        }
    }

    fn handle_pdu(&mut self, h: &CommonHeader, pdu: &[u8]) {
        if let Err(e) = pdu::check_header_digest(pdu, h) {
            return self.fatal(&e, pdu);
        }
        let r = match (self.phase, h.pdu_type) {
            (Phase::AwaitIcReq, PduType::IcReq) => self.ic_req(pdu),
            (Phase::AwaitIcReq, _) | (Phase::Ready, PduType::IcReq) => Err(ProtocolError {
                fes: Fes::PduSequenceError,
                offset: 0,
                why: "PDU out of sequence",
            }),
            (Phase::Ready, PduType::CapsuleCmd) => self.capsule(h, pdu),
            (Phase::Ready, PduType::H2cData) => self.h2c_data(h, pdu),
            (Phase::Ready, PduType::H2cTermReq) => {
                tracing::info!(peer = %self.sock.peer(), "nvmf/tcp: host ended the connection (H2CTermReq)");
                self.close();
                Ok(())
            }
            _ => Err(ProtocolError {
                fes: Fes::InvalidHeaderField,
                offset: 0,
                why: "a PDU type a host does not send",
            }),
        };
        if let Err(e) = r {
            self.fatal(&e, pdu);
        }
    }

    fn ic_req(&mut self, pdu: &[u8]) -> Result<(), ProtocolError> {
        let b: &[u8; 128] =
            pdu.get(..128)
                .and_then(|b| b.try_into().ok())
                .ok_or(ProtocolError {
                    fes: Fes::InvalidHeaderField,
                    offset: 4,
                    why: "ICReq shorter than 128 bytes",
                })?;
        let req = IcReq::decode(b)?;
        if req.pfv != 0 {
            return Err(ProtocolError {
                fes: Fes::UnsupportedParameter,
                offset: 8,
                why: "PDU format version other than 0",
            });
        }
        if req.hpda > 31 {
            return Err(ProtocolError {
                fes: Fes::InvalidHeaderField,
                offset: 10,
                why: "HPDA above 31",
            });
        }
        let dgst = req.dgst & (pdu::dgst::HEADER | pdu::dgst::DATA);
        let resp = IcResp {
            pfv: 0,
            cpda: 0,
            dgst,
            maxh2cdata: self.opts.max_h2c_data,
        };
        self.tx.push(&resp.encode(), false);
        self.neg = Negotiated {
            header_digest: dgst & pdu::dgst::HEADER != 0,
            data_digest: dgst & pdu::dgst::DATA != 0,
            max_plen: max_plen(&self.opts),
        };
        self.c2h_align = (req.hpda as usize + 1) * 4;
        self.phase = Phase::Ready;
        Ok(())
    }

    /// Close the connection: stop polling, shut the socket, and end the controller if this
    /// was its admin queue. Commands still at the bdev finish into the closed connection.
    pub(super) fn close(&mut self) {
        if self.phase == Phase::Closed {
            return;
        }
        self.phase = Phase::Closed;
        let _ = reactor::unregister_fd(self.fd);
        for p in self.pollers.drain(..) {
            let _ = p.unregister();
        }
        self.sock.shutdown();
        self.tx.clear();
        if let Some(q) = self.queue.as_mut() {
            q.ns.clear();
            if q.admin.is_some() {
                tracing::info!(cntlid = q.ctrl.cntlid, subnqn = %q.ctrl.subsystem.nqn, "nvmf/tcp: controller ends");
                q.ctrl.kill();
            } else {
                q.ctrl.release_io_queue(q.qid, q.epoch);
            }
        }
    }
}
