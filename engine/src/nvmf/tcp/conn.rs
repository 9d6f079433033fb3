//! One NVMe/TCP connection: a queue pair of one controller, owned by one reactor from accept to
//! close.
//!
//! The connection's poller reads the socket into a receive buffer, takes whole PDUs out of it,
//! and runs each command to the point where it waits: for data (an R2T is sent), for a bdev
//! I/O (its completion comes back on this reactor), or for an event (an Asynchronous Event
//! Request). Replies go to a send queue that the poller writes with `writev`.
//!
//! Data path rules: no lock, no blocking syscall (the socket is non-blocking), and no heap
//! allocation per I/O in steady state. Command slots, their scatter-gather lists, the receive
//! buffer and the send queue are allocated when the queue connects; data buffers come from the
//! reactor's pools (a buffer is allocated only when a pool runs dry); completion callbacks are
//! stored inline. Admin commands build their replies on the heap: they are control path.
//!
//! A protocol error (a malformed PDU, a PDU out of sequence, data out of range) ends the
//! connection with a C2HTermReq naming the error and the offending field; the host's other
//! connections, and other hosts, are not touched. A command that is merely wrong gets an NVMe
//! status in its response.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{IoSlice, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::Duration;

use super::pdu::{
    self, flags, CommonHeader, DataHeader, Fes, IcReq, IcResp, Negotiated, PduType, ProtocolError,
    COMMON_HEADER_LEN, DIGEST_LEN,
};
use crate::bdev::{Channel, IoDone, IoType};
use crate::mem::{self, Sgl};
use crate::nvme::fabrics::{
    self, connect_offset, invalid_param_dw0, ConnectCmd, ConnectData, PropertyCmd,
    CATTR_DISABLE_SQFLOW, CNTLID_DYNAMIC, CONNECT_DATA_LEN,
};
use crate::nvme::sgl::{self as nsgl, DataDir, SglDesc};
use crate::nvme::{Cqe, Sqe, Status};
use crate::nvmf::controller::{AdminHooks, Controller, CtrlShared, Outcome, Reply};
use crate::nvmf::io::{self as nio, IoCmd};
use crate::nvmf::subsystem::Kind;
use crate::nvmf::{target, ListenAddr, Namespace, TransportOpts};
use crate::reactor::{self, PollStatus, PollerHandle, ReactorId, ReactorLocal};

/// In-capsule data a host may send on the admin queue (Linux sends up to 8 KiB there whatever
/// IOCCSZ says).
const ADMIN_IN_CAPSULE: usize = 8192;
/// PDUs handled per poll, so that one busy connection cannot starve the reactor.
const PDU_BUDGET: usize = 64;
/// Slices per `writev`.
const IOV_MAX: usize = 64;
/// The largest header the send queue holds: a TermReq with the offending header.
const HEAD_MAX: usize = pdu::MAX_TERM_REQ_PLEN as usize;
/// How often an admin queue checks its keep-alive timer.
const KEEP_ALIVE_CHECK: Duration = Duration::from_millis(500);
/// Send-queue entries reserved per queue slot (a data PDU and a response).
const TX_PER_SLOT: usize = 2;

/// Every connection on this reactor, for the events that reach them by message.
static CONNS: ReactorLocal<RefCell<Vec<Weak<RefCell<Conn>>>>> =
    ReactorLocal::new(|| RefCell::new(Vec::new()));

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitIcReq,
    Ready,
    /// A TermReq is queued: send what is queued, then close.
    Closing,
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    Free,
    /// An R2T went out; H2CData fills the buffer.
    AwaitData,
    /// Running: at the bdev, or being answered.
    Busy,
}

/// A command in flight. Slot `i` is also the transfer tag of its R2T.
struct Slot {
    state: SlotState,
    sqe: Sqe,
    /// Bytes the command's SGL describes.
    len: u32,
    /// H2C bytes received so far.
    got: u32,
    /// A data digest failed: answer with a transient transport error once the data is in.
    digest_error: bool,
    /// Bdev I/Os outstanding (Dataset Management may issue several).
    pending: u32,
    /// The first failure among them.
    status: Status,
    /// The command's data; empty when it has none. Kept across commands (cleared, not freed).
    sgl: Sgl,
    /// What a Compare read from the namespace, to hold beside the host's data.
    cmp: Sgl,
}

impl Slot {
    fn new() -> Slot {
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

    fn data(&self) -> &[u8] {
        self.sgl.segs().first().map_or(&[], |s| s.as_slice())
    }

    fn data_mut(&mut self) -> &mut [u8] {
        self.sgl
            .segs_mut()
            .first_mut()
            .map_or(&mut [], |s| s.as_mut_slice())
    }
}

enum Body {
    None,
    /// `len` bytes of slot `slot`'s data.
    Slot {
        slot: u16,
        len: u32,
    },
    Owned(Vec<u8>),
}

/// One PDU on the send queue: header bytes (digest and padding included), data, data digest.
struct Out {
    head: [u8; HEAD_MAX],
    head_len: u16,
    body: Body,
    tail: [u8; DIGEST_LEN],
    tail_len: u8,
    /// Free this slot once the PDU is on the wire (its buffer is the body).
    release: Option<u16>,
}

impl Out {
    fn new(head: &[u8]) -> Out {
        let mut o = Out {
            head: [0; HEAD_MAX],
            head_len: head.len() as u16,
            body: Body::None,
            tail: [0; DIGEST_LEN],
            tail_len: 0,
            release: None,
        };
        o.head[..head.len()].copy_from_slice(head);
        o
    }
}

/// A namespace as one queue sees it: the namespace and this reactor's channel to its bdev.
struct NsEntry {
    nsid: u32,
    ns: Arc<Namespace>,
    channel: Channel,
    block_size: u32,
    num_blocks: u64,
}

struct Queue {
    qid: u16,
    /// Entries (SQSIZE + 1).
    entries: u16,
    sq_head: u16,
    sqflow_off: bool,
    ctrl: Arc<CtrlShared>,
    epoch: u32,
    /// The controller's admin state, on the admin queue only.
    admin: Option<Box<Controller>>,
    ns_gen: u64,
    ns: Vec<NsEntry>,
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

    fn write_vectored(&mut self, iov: &[IoSlice<'_>]) -> std::io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.write_vectored(iov),
            Socket::Unix(s) => s.write_vectored(iov),
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
    fn peer(&self) -> String {
        match self {
            Socket::Tcp(s) => s
                .peer_addr()
                .map_or_else(|_| "?".to_owned(), |a| a.to_string()),
            Socket::Unix(_) => "unix".to_owned(),
        }
    }
}

pub(crate) struct Conn {
    sock: Socket,
    fd: RawFd,
    addr: ListenAddr,
    opts: TransportOpts,
    phase: Phase,
    neg: Negotiated,
    /// C2H data alignment the host asked for (HPDA + 1) × 4.
    c2h_align: usize,
    rx: Box<[u8]>,
    rx_start: usize,
    rx_end: usize,
    tx: VecDeque<Out>,
    /// Bytes of `tx`'s first entry already written.
    tx_sent: usize,
    queue: Option<Queue>,
    slots: Vec<Slot>,
    free: Vec<u16>,
    pollers: Vec<PollerHandle>,
    me: Weak<RefCell<Conn>>,
}

type ConnRef = Rc<RefCell<Conn>>;

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
            rx: vec![0u8; rx_capacity(&opts)].into_boxed_slice(),
            rx_start: 0,
            rx_end: 0,
            tx: VecDeque::with_capacity(8),
            tx_sent: 0,
            queue: None,
            slots: vec![Slot::new()],
            free: vec![0],
            pollers: Vec::new(),
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
}

/// The receive buffer holds the largest PDU this transport accepts, with room to read ahead.
fn rx_capacity(opts: &TransportOpts) -> usize {
    max_plen(opts) as usize + 64 * 1024
}

fn max_plen(opts: &TransportOpts) -> u32 {
    let capsule = 72 + 2 * DIGEST_LEN + ADMIN_IN_CAPSULE.max(opts.in_capsule_data_size as usize);
    let h2c = 24 + 2 * DIGEST_LEN + opts.max_h2c_data as usize;
    capsule.max(h2c) as u32
}

/// The slot behind a buffer: a pool buffer, or (pool empty) a fresh one.
fn take_buf(len: usize) -> Option<mem::Buf> {
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
struct Hooks {
    reactor: ReactorId,
}

impl AdminHooks for Hooks {
    fn ns_changed(&self, ctrl: &Arc<CtrlShared>, nsid: u32) {
        let id = ctrl.id;
        if let Some(m) = target::messenger() {
            let _ = m.send(self.reactor, move || {
                for_conns(|c| {
                    if c.ctrl_id() == Some(id) {
                        c.ns_changed(nsid);
                    }
                })
            });
        }
    }

    fn killed(&self, ctrl: &Arc<CtrlShared>) {
        let id = ctrl.id;
        if let Some(m) = target::messenger() {
            for r in m.reactors() {
                let _ = m.send(r, move || {
                    for_conns(|c| {
                        if c.ctrl_id() == Some(id) {
                            c.close();
                        }
                    })
                });
            }
        }
    }
}

fn for_conns(mut f: impl FnMut(&mut Conn)) {
    let live: Vec<ConnRef> = CONNS
        .with(|c| c.borrow().iter().filter_map(Weak::upgrade).collect())
        .unwrap_or_default();
    for c in live {
        if let Ok(mut c) = c.try_borrow_mut() {
            f(&mut c);
        }
    }
}

fn header_digest_len(neg: &Negotiated) -> usize {
    if neg.header_digest {
        DIGEST_LEN
    } else {
        0
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
            if q.admin.is_none() && (q.ctrl.is_dead() || q.ctrl.epoch() != q.epoch) {
                self.close();
                return PollStatus::Busy;
            }
        }
        let mut busy = self.flush();
        if matches!(self.phase, Phase::AwaitIcReq | Phase::Ready) {
            busy |= self.receive();
            busy |= self.flush();
        }
        if self.phase == Phase::Closing && self.tx.is_empty() {
            self.close();
        }
        if busy {
            PollStatus::Busy
        } else {
            PollStatus::Idle
        }
    }

    // ---------------------------------------------------------------------------------------
    // Receiving
    // ---------------------------------------------------------------------------------------

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
        if self.rx_end == self.rx.len() {
            return Ok(false);
        }
        match self.sock.read(&mut self.rx[self.rx_end..]) {
            Ok(0) => Err(()),
            Ok(n) => {
                self.rx_end += n;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(false),
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
        self.tx.push_back(Out::new(&resp.encode()));
        self.neg = Negotiated {
            header_digest: dgst & pdu::dgst::HEADER != 0,
            data_digest: dgst & pdu::dgst::DATA != 0,
            max_plen: max_plen(&self.opts),
        };
        self.c2h_align = (req.hpda as usize + 1) * 4;
        self.phase = Phase::Ready;
        Ok(())
    }

    fn data_digest_ok(&self, h: &CommonHeader, pdu: &[u8]) -> bool {
        if h.flags & flags::DDGST == 0 {
            return true;
        }
        let (at, len) = h.data_range();
        let digest = &pdu[at + len..at + len + DIGEST_LEN];
        pdu::crc32c(&pdu[at..at + len]).to_le_bytes() == digest
    }

    fn capsule(&mut self, h: &CommonHeader, pdu: &[u8]) -> Result<(), ProtocolError> {
        let sqe = pdu::capsule_sqe(pdu).ok_or(ProtocolError {
            fes: Fes::InvalidHeaderField,
            offset: 2,
            why: "capsule shorter than an SQE",
        })?;
        let (at, dlen) = h.data_range();
        let limit = match &self.queue {
            Some(q) if q.qid != 0 => self.opts.in_capsule_data_size as usize,
            _ => ADMIN_IN_CAPSULE,
        };
        if dlen > limit {
            return Err(ProtocolError {
                fes: Fes::DataLimitExceeded,
                offset: 4,
                why: "more in-capsule data than the queue accepts",
            });
        }
        let digest_ok = self.data_digest_ok(h, pdu);
        if let Some(q) = &mut self.queue {
            q.sq_head = (q.sq_head + 1) % q.entries;
        }
        let is_connect = sqe.opcode == fabrics::OPCODE && fabrics::fctype(&sqe) == fabrics::CONNECT;
        if self.queue.is_none() && !is_connect {
            self.reply(sqe.cid, Status::COMMAND_SEQUENCE_ERROR, 0);
            return Ok(());
        }
        let Some(slot) = self.free.pop() else {
            // The host overran the queue size it connected with.
            self.reply(sqe.cid, Status::INTERNAL_ERROR, 0);
            return Ok(());
        };
        let s = &mut self.slots[slot as usize];
        s.state = SlotState::Busy;
        s.sqe = sqe;
        s.got = 0;
        s.digest_error = false;
        s.pending = 0;
        s.status = Status::SUCCESS;
        let dir = if sqe.opcode == fabrics::OPCODE {
            DataDir::of(fabrics::fctype(&sqe))
        } else {
            DataDir::of(sqe.opcode)
        };
        let sgl = SglDesc::decode(&sqe.dptr);
        s.len = match dir {
            DataDir::None => 0,
            _ => sgl.len,
        };
        let len = s.len as usize;
        match dir {
            DataDir::None => self.execute(slot),
            DataDir::Both => self.finish(slot, Status::INVALID_FIELD, 0),
            DataDir::ControllerToHost => {
                if sgl.id != nsgl::TRANSPORT {
                    self.finish(slot, Status::SGL_DESCRIPTOR_TYPE_INVALID, 0)
                } else if len > self.opts.max_io_size as usize {
                    self.finish(slot, Status::DATA_SGL_LENGTH_INVALID, 0)
                } else {
                    self.execute(slot)
                }
            }
            DataDir::HostToController if len == 0 => self.execute(slot),
            DataDir::HostToController => match sgl.id {
                nsgl::IN_CAPSULE => {
                    if sgl.addr != 0 || len > dlen {
                        self.finish(slot, Status::DATA_SGL_LENGTH_INVALID, 0)
                    } else if !digest_ok {
                        self.finish(slot, Status::TRANSIENT_TRANSPORT_ERROR, 0)
                    } else if self.fill(slot, len) {
                        self.slots[slot as usize].data_mut()[..len]
                            .copy_from_slice(&pdu[at..at + len]);
                        self.execute(slot)
                    }
                }
                nsgl::TRANSPORT => {
                    if dlen != 0 || len > self.opts.max_io_size as usize {
                        self.finish(slot, Status::DATA_SGL_LENGTH_INVALID, 0)
                    } else if self.fill(slot, len) {
                        self.slots[slot as usize].state = SlotState::AwaitData;
                        self.r2t(slot, len as u32);
                    }
                }
                _ => self.finish(slot, Status::SGL_DESCRIPTOR_TYPE_INVALID, 0),
            },
        }
        Ok(())
    }

    /// Give slot `slot` a buffer of `len` bytes; on failure answer the command and say false.
    fn fill(&mut self, slot: u16, len: usize) -> bool {
        let s = &mut self.slots[slot as usize];
        s.sgl.clear();
        let ok = match take_buf(len) {
            Some(b) => s.sgl.push(b, 0, len).is_ok(),
            None => false,
        };
        if !ok {
            self.finish(slot, Status::INTERNAL_ERROR, 0);
        }
        ok
    }

    fn h2c_data(&mut self, h: &CommonHeader, pdu: &[u8]) -> Result<(), ProtocolError> {
        let bad = |fes, offset, why| ProtocolError { fes, offset, why };
        let dh = DataHeader::decode(pdu).ok_or(bad(Fes::InvalidHeaderField, 2, "short header"))?;
        dh.check_length(h)?;
        if dh.length > self.opts.max_h2c_data {
            return Err(bad(
                Fes::DataLimitExceeded,
                16,
                "H2CData larger than MAXH2CDATA",
            ));
        }
        let slot = dh.ttag;
        let s = self
            .slots
            .get(slot as usize)
            .filter(|s| s.state == SlotState::AwaitData && s.sqe.cid == dh.cccid)
            .ok_or(bad(
                Fes::InvalidHeaderField,
                10,
                "no R2T outstanding with this tag and command",
            ))?;
        if dh.offset != s.got {
            return Err(bad(
                Fes::DataOutOfRange,
                12,
                "H2CData offset is not where the data stands",
            ));
        }
        if dh.offset as u64 + dh.length as u64 > s.len as u64 {
            return Err(bad(Fes::DataOutOfRange, 16, "H2CData beyond the R2T"));
        }
        let digest_ok = self.data_digest_ok(h, pdu);
        let (at, len) = h.data_range();
        let s = &mut self.slots[slot as usize];
        let off = dh.offset as usize;
        s.data_mut()[off..off + len].copy_from_slice(&pdu[at..at + len]);
        s.got += len as u32;
        s.digest_error |= !digest_ok;
        if s.got == s.len {
            s.state = SlotState::Busy;
            if s.digest_error {
                self.finish(slot, Status::TRANSIENT_TRANSPORT_ERROR, 0);
            } else {
                self.execute(slot);
            }
        }
        Ok(())
    }

    // ---------------------------------------------------------------------------------------
    // Commands
    // ---------------------------------------------------------------------------------------

    fn execute(&mut self, slot: u16) {
        let sqe = self.slots[slot as usize].sqe;
        if sqe.opcode == fabrics::OPCODE {
            return self.fabrics(slot, &sqe);
        }
        let Some(q) = self.queue.as_mut() else {
            return self.finish(slot, Status::COMMAND_SEQUENCE_ERROR, 0);
        };
        if let Some(ctrl) = q.admin.as_mut() {
            let now = reactor::now().unwrap_or_default();
            match ctrl.admin(&sqe, now) {
                Outcome::Held => self.release(slot),
                Outcome::Reply(r) => self.answer(slot, r),
            }
        } else {
            self.io(slot, &sqe);
        }
    }

    fn answer(&mut self, slot: u16, r: Reply) {
        match r.data {
            Some(data) if r.status.is_success() => {
                let want = self.slots[slot as usize].len as usize;
                let mut data = data;
                data.truncate(want);
                self.send_data(slot, Body::Owned(data), r.dw0);
            }
            _ => self.finish(slot, r.status, r.dw0),
        }
    }

    fn fabrics(&mut self, slot: u16, sqe: &Sqe) {
        match fabrics::fctype(sqe) {
            fabrics::CONNECT => self.connect(slot, sqe),
            t @ (fabrics::PROPERTY_GET | fabrics::PROPERTY_SET) => {
                let Some(ctrl) = self.queue.as_mut().and_then(|q| q.admin.as_mut()) else {
                    return self.finish(slot, Status::INVALID_FIELD, 0);
                };
                let p = match PropertyCmd::from_sqe(sqe) {
                    Ok(p) => p,
                    Err(_) => return self.finish(slot, Status::INVALID_FIELD, 0),
                };
                if t == fabrics::PROPERTY_GET {
                    match ctrl.property_get(&p) {
                        Ok(v) => self.finish2(slot, Status::SUCCESS, v as u32, (v >> 32) as u32),
                        Err(s) => self.finish(slot, s, 0),
                    }
                } else {
                    let r = ctrl.property_set(&p);
                    self.finish(slot, r.err().unwrap_or(Status::SUCCESS), 0)
                }
            }
            _ => self.finish(slot, Status::INVALID_OPCODE, 0),
        }
    }

    fn connect(&mut self, slot: u16, sqe: &Sqe) {
        let bad_param = |in_data, at| {
            (
                Status::CONNECT_INVALID_PARAMETERS,
                invalid_param_dw0(in_data, at),
            )
        };
        let r = self.try_connect(slot, sqe, bad_param);
        match r {
            Ok(cntlid) => self.finish(slot, Status::SUCCESS, cntlid as u32),
            Err((status, dw0)) => {
                tracing::info!(peer = %self.sock.peer(), ?status, dw0, "nvmf/tcp: Connect refused");
                self.finish(slot, status, dw0)
            }
        }
    }

    fn try_connect(
        &mut self,
        slot: u16,
        sqe: &Sqe,
        bad_param: impl Fn(bool, u16) -> (Status, u32),
    ) -> Result<u16, (Status, u32)> {
        if self.queue.is_some() {
            return Err((Status::COMMAND_SEQUENCE_ERROR, 0));
        }
        let cmd = ConnectCmd::from_sqe(sqe);
        let s = &self.slots[slot as usize];
        if (s.len as usize) < CONNECT_DATA_LEN {
            return Err((Status::DATA_SGL_LENGTH_INVALID, 0));
        }
        let data = ConnectData::decode(s.data()).map_err(|f| bad_param(true, f.0))?;
        if cmd.recfmt != 0 {
            return Err((Status::CONNECT_INCOMPATIBLE_FORMAT, 0));
        }
        let sub = target::subsystem(&data.subnqn)
            .filter(|s| target::listens_on(s, &self.addr))
            .ok_or_else(|| bad_param(true, connect_offset::SUBNQN))?;
        if !sub.host_allowed(&data.hostnqn) {
            return Err((Status::CONNECT_INVALID_HOST, 0));
        }
        let limit = if cmd.qid == 0 {
            self.opts.max_aq_depth
        } else {
            self.opts.max_queue_depth
        };
        if cmd.sqsize == 0 || cmd.sqsize >= limit {
            return Err(bad_param(false, connect_offset::SQSIZE));
        }
        let now = reactor::now().unwrap_or_default();
        let (ctrl, admin) = if cmd.qid == 0 {
            if data.cntlid != CNTLID_DYNAMIC && data.cntlid != 0xFFFE {
                return Err(bad_param(true, connect_offset::CNTLID));
            }
            let hooks: Arc<dyn AdminHooks> = Arc::new(Hooks {
                reactor: reactor::current().unwrap_or(ReactorId(0)),
            });
            let opts = self.opts;
            let ctrl = sub
                .add_controller(|id| {
                    CtrlShared::new(
                        id,
                        Arc::clone(&sub),
                        data.hostnqn.clone(),
                        data.hostid,
                        opts.max_io_qpairs_per_ctrlr,
                        hooks,
                    )
                })
                .ok_or((Status::CONNECT_CONTROLLER_BUSY, 0))?;
            let admin = Box::new(Controller::new(Arc::clone(&ctrl), opts, cmd.kato, now));
            (ctrl, Some(admin))
        } else {
            let ctrl = sub
                .controller(data.cntlid)
                .filter(|c| !c.is_dead())
                .ok_or_else(|| bad_param(true, connect_offset::CNTLID))?;
            if ctrl.hostnqn != data.hostnqn {
                return Err(bad_param(true, connect_offset::HOSTNQN));
            }
            if sub.kind == Kind::Discovery {
                return Err(bad_param(false, connect_offset::QID));
            }
            if !ctrl.is_ready() {
                return Err((Status::COMMAND_SEQUENCE_ERROR, 0));
            }
            if !ctrl.claim_io_queue(cmd.qid) {
                return Err(bad_param(false, connect_offset::QID));
            }
            (ctrl, None)
        };
        let entries = cmd.sqsize + 1;
        let has_keep_alive = admin.as_ref().is_some_and(|a| a.kato_ms != 0);
        tracing::info!(
            subnqn = %sub.nqn, hostnqn = %data.hostnqn, cntlid = ctrl.cntlid, qid = cmd.qid,
            entries, "nvmf/tcp: queue connected"
        );
        self.queue = Some(Queue {
            qid: cmd.qid,
            entries,
            sq_head: 1 % entries,
            sqflow_off: cmd.cattr & CATTR_DISABLE_SQFLOW != 0,
            epoch: ctrl.epoch(),
            ctrl: Arc::clone(&ctrl),
            admin,
            ns_gen: u64::MAX,
            ns: Vec::new(),
        });
        // Slots and send queue for the queue size the host asked for, made once here.
        self.slots.resize_with(entries as usize, Slot::new);
        self.free.extend((1..entries).rev());
        self.tx.reserve(entries as usize * TX_PER_SLOT);
        if has_keep_alive {
            self.start_keep_alive();
        }
        Ok(ctrl.cntlid)
    }

    fn start_keep_alive(&mut self) {
        let me = self.me.clone();
        let h = reactor::register_periodic_poller("nvmf_keep_alive", KEEP_ALIVE_CHECK, move || {
            let Some(conn) = me.upgrade() else {
                if let Some(p) = reactor::this_poller() {
                    let _ = p.unregister();
                }
                return PollStatus::Idle;
            };
            let Ok(mut c) = conn.try_borrow_mut() else {
                return PollStatus::Idle;
            };
            let now = reactor::now().unwrap_or_default();
            let expired = c
                .queue
                .as_ref()
                .and_then(|q| q.admin.as_ref())
                .is_some_and(|a| a.keep_alive_expired(now));
            if expired {
                tracing::warn!(
                    cntlid = c.queue.as_ref().map(|q| q.ctrl.cntlid),
                    "nvmf/tcp: keep-alive timeout: dropping the controller"
                );
                c.close();
                return PollStatus::Busy;
            }
            PollStatus::Idle
        });
        if let Ok(h) = h {
            self.pollers.push(h);
        }
    }

    /// A namespace changed: complete an Asynchronous Event Request if one is due.
    fn ns_changed(&mut self, nsid: u32) {
        let Some(ctrl) = self.queue.as_mut().and_then(|q| q.admin.as_mut()) else {
            return;
        };
        if let Some((cid, dw0)) = ctrl.ns_changed(nsid) {
            self.reply(cid, Status::SUCCESS, dw0);
            self.flush();
        }
    }

    // ---------------------------------------------------------------------------------------
    // I/O commands
    // ---------------------------------------------------------------------------------------

    /// This queue's view of namespace `nsid`, refreshing the cache if the subsystem's
    /// namespaces changed since it was built.
    fn ns_index(&mut self, nsid: u32) -> Option<usize> {
        let q = self.queue.as_mut()?;
        let sub = &q.ctrl.subsystem;
        let gen = sub.ns_gen();
        if gen != q.ns_gen {
            q.ns.clear();
            for ns in sub.namespaces() {
                if let Ok(channel) = ns.desc.channel() {
                    let b = ns.bdev();
                    q.ns.push(NsEntry {
                        nsid: ns.nsid,
                        block_size: b.block_size(),
                        num_blocks: b.num_blocks(),
                        ns,
                        channel,
                    });
                }
            }
            q.ns_gen = gen;
        }
        q.ns.iter().position(|e| e.nsid == nsid)
    }

    fn io(&mut self, slot: u16, sqe: &Sqe) {
        let Some(i) = self.ns_index(sqe.nsid) else {
            return self.finish(slot, Status::INVALID_NAMESPACE, 0);
        };
        let len = self.slots[slot as usize].len;
        let cmd = {
            let e = &self.queue.as_ref().expect("an I/O queue").ns[i];
            nio::decode(sqe, e.block_size, e.num_blocks, len)
        };
        let cmd = match cmd {
            Ok(c) => c,
            Err(s) => return self.finish(slot, s, 0),
        };
        if matches!(cmd, IoCmd::Read { .. }) && !self.fill(slot, len as usize) {
            return;
        }
        let q = self.queue.as_ref().expect("an I/O queue");
        let e = &q.ns[i];
        let channel = &q.ns[i].channel;
        let me = self.me.upgrade().expect("a connection alive while it runs");
        let is_read = matches!(cmd, IoCmd::Read { .. });
        let done = move |d: IoDone| io_done(&me, slot, is_read, d);
        let submitted = match cmd {
            IoCmd::Read { slba, nlb } => {
                let sgl = std::mem::take(&mut self.slots[slot as usize].sgl);
                channel.read(slba, nlb, sgl, done).map_err(|(e, sgl)| {
                    self.slots[slot as usize].sgl = sgl;
                    nio::submit_status(&e)
                })
            }
            IoCmd::Write { slba, nlb, fua } => {
                let s = &mut self.slots[slot as usize];
                let sgl = std::mem::take(&mut s.sgl);
                let flush_after = if fua {
                    q.ns[i].ns.desc.channel().ok()
                } else {
                    None
                };
                if let Some(ch) = flush_after {
                    // Forced unit access: the write, then a flush of its range.
                    let me = self.me.upgrade().expect("alive");
                    let then = move |d: IoDone| fua_done(&me, slot, ch, slba, nlb, d);
                    channel.write(slba, nlb, sgl, then)
                } else {
                    channel.write(slba, nlb, sgl, done)
                }
                .map_err(|(e, sgl)| {
                    self.slots[slot as usize].sgl = sgl;
                    nio::submit_status(&e)
                })
            }
            IoCmd::Compare { slba, nlb } => {
                let s = &mut self.slots[slot as usize];
                s.cmp.clear();
                let filled =
                    take_buf(len as usize).is_some_and(|b| s.cmp.push(b, 0, len as usize).is_ok());
                if !filled {
                    return self.finish(slot, Status::INTERNAL_ERROR, 0);
                }
                let sgl = std::mem::take(&mut s.cmp);
                let me = self.me.upgrade().expect("alive");
                channel
                    .read(slba, nlb, sgl, move |d: IoDone| compare_done(&me, slot, d))
                    .map_err(|(e, sgl)| {
                        self.slots[slot as usize].cmp = sgl;
                        nio::submit_status(&e)
                    })
            }
            IoCmd::Flush => {
                if channel.bdev().supports(IoType::Flush) {
                    channel
                        .flush(0, e.num_blocks, done)
                        .map_err(|e| nio::submit_status(&e))
                } else {
                    return self.finish(slot, Status::SUCCESS, 0);
                }
            }
            IoCmd::WriteZeroes { slba, nlb } => channel
                .write_zeroes(slba, nlb, done)
                .map_err(|e| nio::submit_status(&e)),
            IoCmd::DsmNoop => return self.finish(slot, Status::SUCCESS, 0),
            IoCmd::Deallocate { ranges } => return self.deallocate(slot, i, ranges),
        };
        match submitted {
            Ok(()) => self.slots[slot as usize].pending = 1,
            Err(s) => self.finish(slot, s, 0),
        }
    }

    /// Dataset Management with Deallocate: one unmap per range, answered when all are done.
    /// Deallocation is advisory, so a bdev without unmap answers success at once.
    fn deallocate(&mut self, slot: u16, ns: usize, ranges: usize) {
        let q = self.queue.as_ref().expect("an I/O queue");
        let e = &q.ns[ns];
        if !e.channel.bdev().supports(IoType::Unmap) {
            return self.finish(slot, Status::SUCCESS, 0);
        }
        for r in 0..ranges {
            let (slba, nlb) = nio::dsm_range(self.slots[slot as usize].data(), r);
            if let Err(s) = nio::check_range(slba, nlb, e.num_blocks) {
                let st = &mut self.slots[slot as usize];
                st.status = s;
                break;
            }
        }
        if !self.slots[slot as usize].status.is_success() {
            let s = self.slots[slot as usize].status;
            return self.finish(slot, s, 0);
        }
        let me = self.me.upgrade().expect("alive");
        for r in 0..ranges {
            let (slba, nlb) = nio::dsm_range(self.slots[slot as usize].data(), r);
            if nlb == 0 {
                continue;
            }
            let me = Rc::clone(&me);
            match e
                .channel
                .unmap(slba, nlb, move |d: IoDone| io_done(&me, slot, false, d))
            {
                Ok(()) => self.slots[slot as usize].pending += 1,
                Err(err) => {
                    self.slots[slot as usize].status = nio::submit_status(&err);
                    break;
                }
            }
        }
        let s = &self.slots[slot as usize];
        if s.pending == 0 {
            let st = s.status;
            self.finish(slot, st, 0);
        }
    }

    /// A bdev I/O of slot `slot` finished.
    fn io_finished(&mut self, slot: u16, is_read: bool, d: IoDone) {
        let s = &mut self.slots[slot as usize];
        if !d.sgl.is_empty() {
            s.sgl = d.sgl;
        }
        if let Err(e) = &d.status {
            if s.status.is_success() {
                s.status = nio::completion_status(e, is_read);
            }
        }
        s.pending = s.pending.saturating_sub(1);
        if s.pending > 0 || self.phase == Phase::Closed {
            return;
        }
        let status = s.status;
        if is_read && status.is_success() {
            let len = s.len;
            self.send_data(slot, Body::Slot { slot, len }, 0);
        } else {
            self.finish(slot, status, 0);
        }
    }

    // ---------------------------------------------------------------------------------------
    // Sending
    // ---------------------------------------------------------------------------------------

    fn sqhd(&self) -> u16 {
        match &self.queue {
            Some(q) if q.sqflow_off => 0xFFFF,
            Some(q) => q.sq_head,
            None => 0,
        }
    }

    fn hdgst(&self) -> usize {
        header_digest_len(&self.neg)
    }

    /// Queue a PDU whose first `len` header bytes are in `b` (a header digest is appended).
    fn push_header(&mut self, b: &[u8]) -> &mut Out {
        let mut o = Out::new(b);
        if self.neg.header_digest {
            let d = pdu::crc32c(b).to_le_bytes();
            o.head[b.len()..b.len() + DIGEST_LEN].copy_from_slice(&d);
            o.head_len += DIGEST_LEN as u16;
        }
        self.tx.push_back(o);
        self.tx.back_mut().expect("just pushed")
    }

    /// Queue a response capsule.
    fn reply(&mut self, cid: u16, status: Status, dw0: u32) {
        self.reply2(cid, status, dw0, 0);
    }

    fn reply2(&mut self, cid: u16, status: Status, dw0: u32, dw1: u32) {
        if !matches!(self.phase, Phase::Ready) {
            return;
        }
        let cqe = Cqe {
            dw0,
            dw1,
            sqhd: self.sqhd(),
            sqid: self.queue.as_ref().map_or(0, |q| q.qid),
            cid,
            status: status.to_field(false),
        };
        let flags = if self.neg.header_digest {
            flags::HDGST
        } else {
            0
        };
        let hdgst = self.hdgst();
        let ch = CommonHeader {
            pdu_type: PduType::CapsuleResp,
            flags,
            hlen: 24,
            pdo: 0,
            plen: (24 + hdgst) as u32,
        };
        let mut b = [0u8; 24];
        b[..8].copy_from_slice(&ch.encode());
        b[8..24].copy_from_slice(&cqe.encode());
        self.push_header(&b);
    }

    /// Answer slot `slot`'s command and free the slot.
    fn finish(&mut self, slot: u16, status: Status, dw0: u32) {
        self.finish2(slot, status, dw0, 0);
    }

    fn finish2(&mut self, slot: u16, status: Status, dw0: u32, dw1: u32) {
        let cid = self.slots[slot as usize].sqe.cid;
        self.reply2(cid, status, dw0, dw1);
        self.release(slot);
    }

    fn release(&mut self, slot: u16) {
        let s = &mut self.slots[slot as usize];
        if s.state == SlotState::Free {
            return;
        }
        s.sgl.clear();
        s.state = SlotState::Free;
        self.free.push(slot);
    }

    /// Send a command's data to the host in one C2HData PDU, then its response: or, for a
    /// successful read on a queue without SQ flow control, the SUCCESS flag in place of it.
    fn send_data(&mut self, slot: u16, body: Body, dw0: u32) {
        if !matches!(self.phase, Phase::Ready) {
            return self.release(slot);
        }
        let len = match &body {
            Body::None => 0,
            Body::Slot { len, .. } => *len as usize,
            Body::Owned(v) => v.len(),
        };
        let cid = self.slots[slot as usize].sqe.cid;
        if len == 0 {
            return self.finish(slot, Status::SUCCESS, dw0);
        }
        let success = self.opts.c2h_success
            && dw0 == 0
            && self
                .queue
                .as_ref()
                .is_some_and(|q| q.sqflow_off && q.qid != 0);
        let hdgst = self.hdgst();
        let pdo = (24 + hdgst).next_multiple_of(self.c2h_align);
        let ddgst = if self.neg.data_digest { DIGEST_LEN } else { 0 };
        let mut fl = flags::LAST_PDU;
        if self.neg.header_digest {
            fl |= flags::HDGST;
        }
        if self.neg.data_digest {
            fl |= flags::DDGST;
        }
        if success {
            fl |= flags::SUCCESS;
        }
        let ch = CommonHeader {
            pdu_type: PduType::C2hData,
            flags: fl,
            hlen: 24,
            pdo: pdo as u8,
            plen: (pdo + len + ddgst) as u32,
        };
        let dh = DataHeader {
            cccid: cid,
            ttag: 0,
            offset: 0,
            length: len as u32,
        };
        let digest = self.neg.data_digest.then(|| {
            let bytes = match &body {
                Body::Slot { .. } => &self.slots[slot as usize].data()[..len],
                Body::Owned(v) => &v[..],
                Body::None => &[][..],
            };
            pdu::crc32c(bytes).to_le_bytes()
        });
        let is_slot = matches!(body, Body::Slot { .. });
        let out = self.push_header(&dh.encode(ch));
        out.head_len = pdo as u16;
        out.body = body;
        if let Some(d) = digest {
            out.tail = d;
            out.tail_len = DIGEST_LEN as u8;
        }
        if is_slot {
            out.release = Some(slot);
        }
        if success {
            if !is_slot {
                self.release(slot);
            }
        } else {
            self.reply(cid, Status::SUCCESS, dw0);
            if !is_slot {
                self.release(slot);
            }
        }
    }

    fn r2t(&mut self, slot: u16, len: u32) {
        let hdgst = self.hdgst();
        let ch = CommonHeader {
            pdu_type: PduType::R2t,
            flags: if self.neg.header_digest {
                flags::HDGST
            } else {
                0
            },
            hlen: 24,
            pdo: 0,
            plen: (24 + hdgst) as u32,
        };
        let dh = DataHeader {
            cccid: self.slots[slot as usize].sqe.cid,
            ttag: slot,
            offset: 0,
            length: len,
        };
        self.push_header(&dh.encode(ch));
    }

    /// End the connection for a protocol error: a C2HTermReq, then close.
    fn fatal(&mut self, e: &ProtocolError, offending: &[u8]) {
        tracing::warn!(peer = %self.sock.peer(), "nvmf/tcp: {e}; terminating the connection");
        let hdr = &offending[..offending.len().min(128)];
        let b = pdu::term_req(PduType::C2hTermReq, e, hdr);
        self.tx.push_back(Out::new(&b));
        self.phase = Phase::Closing;
    }

    /// Write what the send queue holds. True if anything was written.
    fn flush(&mut self) -> bool {
        let mut wrote = false;
        while !self.tx.is_empty() {
            let n = {
                let mut iov = [IoSlice::new(&[]); IOV_MAX];
                let mut n = 0;
                let mut skip = self.tx_sent;
                'fill: for o in &self.tx {
                    let body: &[u8] = match &o.body {
                        Body::None => &[],
                        Body::Slot { slot, len } => {
                            &self.slots[*slot as usize].data()[..*len as usize]
                        }
                        Body::Owned(v) => v,
                    };
                    for part in [
                        &o.head[..o.head_len as usize],
                        body,
                        &o.tail[..o.tail_len as usize],
                    ] {
                        if skip >= part.len() {
                            skip -= part.len();
                            continue;
                        }
                        iov[n] = IoSlice::new(&part[skip..]);
                        skip = 0;
                        n += 1;
                        if n == IOV_MAX {
                            break 'fill;
                        }
                    }
                }
                match self.sock.write_vectored(&iov[..n]) {
                    Ok(0) => Err(()),
                    Ok(w) => Ok(w),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(0),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Ok(0),
                    Err(_) => Err(()),
                }
            };
            let mut n = match n {
                Ok(0) => break,
                Ok(n) => n,
                Err(()) => {
                    self.tx.clear();
                    self.close();
                    return true;
                }
            };
            wrote = true;
            while n > 0 {
                let o = self
                    .tx
                    .front()
                    .expect("bytes written belong to queued PDUs");
                let total = o.head_len as usize
                    + match &o.body {
                        Body::None => 0,
                        Body::Slot { len, .. } => *len as usize,
                        Body::Owned(v) => v.len(),
                    }
                    + o.tail_len as usize;
                let left = total - self.tx_sent;
                if n >= left {
                    n -= left;
                    self.tx_sent = 0;
                    let o = self.tx.pop_front().expect("front exists");
                    if let Some(s) = o.release {
                        self.release(s);
                    }
                } else {
                    self.tx_sent += n;
                    n = 0;
                }
            }
        }
        wrote
    }

    /// Close the connection: stop polling, shut the socket, and end the controller if this
    /// was its admin queue. Commands still at the bdev finish into the closed connection.
    fn close(&mut self) {
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
                q.ctrl.release_io_queue(q.qid);
            }
        }
    }
}

fn io_done(conn: &ConnRef, slot: u16, is_read: bool, d: IoDone) {
    conn.borrow_mut().io_finished(slot, is_read, d);
}

/// A Compare's read finished: answer with the comparison.
fn compare_done(conn: &ConnRef, slot: u16, d: IoDone) {
    let mut c = conn.borrow_mut();
    if c.phase == Phase::Closed {
        return;
    }
    let s = &mut c.slots[slot as usize];
    s.cmp = d.sgl;
    let status = match &d.status {
        Err(e) => nio::completion_status(e, true),
        Ok(()) => {
            let len = s.len as usize;
            let theirs = s.cmp.segs().first().map_or(&[][..], |x| x.as_slice());
            if theirs.get(..len) == s.data().get(..len) {
                Status::SUCCESS
            } else {
                Status::COMPARE_FAILURE
            }
        }
    };
    s.cmp.clear();
    c.finish(slot, status, 0);
}

fn fua_done(conn: &ConnRef, slot: u16, ch: Channel, slba: u64, nlb: u64, d: IoDone) {
    if d.status.is_err() || !ch.bdev().supports(IoType::Flush) {
        return io_done(conn, slot, false, d);
    }
    {
        let mut c = conn.borrow_mut();
        let s = &mut c.slots[slot as usize];
        s.sgl = d.sgl;
    }
    let me = Rc::clone(conn);
    if let Err(e) = ch.flush(slba, nlb, move |d: IoDone| io_done(&me, slot, false, d)) {
        let mut c = conn.borrow_mut();
        c.slots[slot as usize].status = nio::submit_status(&e);
        c.io_finished(
            slot,
            false,
            IoDone {
                status: Ok(()),
                sgl: Sgl::default(),
            },
        );
    }
}
