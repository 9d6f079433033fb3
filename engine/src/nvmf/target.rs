//! The target's configuration: the transport, the subsystems, and the listening sockets.
//!
//! One per process, changed by the control path (RPCs and the start-up config) under one
//! `Mutex`; connections read it only when they are made (Connect) and when discovery answers.
//! The listening sockets are polled by the first reactor of the engine the target is attached
//! to ([`attach`]).

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use super::subsystem::{Subsystem, SubsystemOpts, MAX_CNTLID, MIN_CNTLID};
use super::{Error, ListenAddr, DISCOVERY_NQN};
use crate::mem::{LARGE_BUF, SMALL_BUF};
use crate::reactor::Messenger;

/// The subsystem tandemd serves when started without a config.
pub const DEFAULT_SUBNQN: &str = "nqn.2016-06.io.tandem:default";

/// Transport options, with SPDK's names and, unless there is a reason, SPDK's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportOpts {
    /// Entries per I/O queue (CAP.MQES + 1; hosts clamp their queue size to it).
    pub max_queue_depth: u16,
    pub max_io_qpairs_per_ctrlr: u16,
    /// In-capsule data on I/O queues, in bytes (IOCCSZ = 4 + this / 16).
    pub in_capsule_data_size: u32,
    /// The largest transfer one command may carry (MDTS).
    pub max_io_size: u32,
    pub io_unit_size: u32,
    pub max_aq_depth: u16,
    /// Answer a read with C2HData carrying the SUCCESS flag and no response capsule, for hosts
    /// that disabled SQ flow control.
    pub c2h_success: bool,
    /// MAXH2CDATA: the largest H2CData PDU a host may send.
    pub max_h2c_data: u32,
}

impl Default for TransportOpts {
    fn default() -> Self {
        TransportOpts {
            max_queue_depth: 128,
            max_io_qpairs_per_ctrlr: 128,
            // 8 KiB rather than SPDK's 4 KiB: an 8 KiB write then needs no R2T round trip.
            in_capsule_data_size: 8192,
            max_io_size: 131_072,
            io_unit_size: 131_072,
            max_aq_depth: 128,
            c2h_success: true,
            max_h2c_data: 131_072,
        }
    }
}

impl TransportOpts {
    /// Check the options against what the buffer pools and the codec can carry.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: String| Err(Error::InvalidOption(m));
        if !(2..=1024).contains(&self.max_queue_depth) {
            return bad(format!(
                "max_queue_depth {} is not between 2 and 1024",
                self.max_queue_depth
            ));
        }
        if !(2..=4096).contains(&self.max_aq_depth) {
            return bad(format!(
                "max_aq_depth {} is not between 2 and 4096",
                self.max_aq_depth
            ));
        }
        if self.max_io_qpairs_per_ctrlr == 0 || self.max_io_qpairs_per_ctrlr > 1024 {
            return bad(format!(
                "max_io_qpairs_per_ctrlr {} is not between 1 and 1024",
                self.max_io_qpairs_per_ctrlr
            ));
        }
        if self.in_capsule_data_size > SMALL_BUF as u32 || self.in_capsule_data_size % 16 != 0 {
            return bad(format!(
                "in_capsule_data_size {} is not a multiple of 16 up to {SMALL_BUF}",
                self.in_capsule_data_size
            ));
        }
        if self.max_io_size < 8192
            || self.max_io_size > LARGE_BUF as u32
            || !self.max_io_size.is_power_of_two()
        {
            return bad(format!(
                "max_io_size {} is not a power of two from 8192 to {LARGE_BUF}",
                self.max_io_size
            ));
        }
        if self.io_unit_size == 0 || self.io_unit_size > self.max_io_size {
            return bad(format!(
                "io_unit_size {} is not between 1 and max_io_size",
                self.io_unit_size
            ));
        }
        Ok(())
    }

    /// MDTS: the maximum transfer as a power of two of 4 KiB pages.
    pub fn mdts(&self) -> u8 {
        (self.max_io_size / 4096).trailing_zeros() as u8
    }
}

/// A listening socket, shared by the subsystems that listen on its address.
struct Listener {
    addr: ListenAddr,
    /// Subsystems listening here.
    users: usize,
    ctl: Arc<ListenerCtl>,
}

/// How the control path stops a listener polled on a reactor, and waits until its socket is
/// closed (so that the port is free when the RPC answers).
pub(crate) struct ListenerCtl {
    pub(crate) stop: AtomicBool,
    closed: Mutex<bool>,
    cv: Condvar,
}

impl ListenerCtl {
    pub(crate) fn set_closed(&self) {
        *self.closed.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.cv.notify_all();
    }

    fn wait_closed(&self, limit: Duration) {
        let g = self.closed.lock().unwrap_or_else(|p| p.into_inner());
        let _ = self.cv.wait_timeout_while(g, limit, |closed| !*closed);
    }
}

pub(crate) struct TargetState {
    messenger: Option<Messenger>,
    pub(crate) transport: Option<TransportOpts>,
    subsystems: Vec<Arc<Subsystem>>,
    listeners: Vec<Listener>,
}

/// Discovery log generation counter: moves whenever what discovery reports may have changed.
static GENCTR: AtomicU64 = AtomicU64::new(1);

fn target() -> MutexGuard<'static, TargetState> {
    static T: OnceLock<Mutex<TargetState>> = OnceLock::new();
    T.get_or_init(|| {
        Mutex::new(TargetState {
            messenger: None,
            transport: None,
            subsystems: vec![Subsystem::new(SubsystemOpts {
                nqn: DISCOVERY_NQN.to_owned(),
                serial: String::new(),
                model: String::new(),
                allow_any_host: true,
                max_namespaces: 0,
                min_cntlid: MIN_CNTLID,
                max_cntlid: MAX_CNTLID,
            })],
            listeners: Vec::new(),
        })
    })
    .lock()
    .unwrap_or_else(|p| p.into_inner())
}

pub fn genctr() -> u64 {
    GENCTR.load(Ordering::Acquire)
}

pub(crate) fn bump_genctr() {
    GENCTR.fetch_add(1, Ordering::AcqRel);
}

/// Serve the target from this engine's reactors (tandemd calls this once at start).
pub fn attach(messenger: Messenger) {
    target().messenger = Some(messenger);
}

pub(crate) fn messenger() -> Option<Messenger> {
    target().messenger.clone()
}

pub fn create_transport(opts: TransportOpts) -> Result<(), Error> {
    opts.validate()?;
    let mut t = target();
    if t.transport.is_some() {
        return Err(Error::TransportExists("TCP".into()));
    }
    t.transport = Some(opts);
    Ok(())
}

pub fn transport() -> Option<TransportOpts> {
    target().transport
}

/// Check an NQN's form: at most 223 bytes, either the discovery NQN, a UUID NQN, or
/// `nqn.yyyy-mm.reverse-domain...` (NVMe Base 2.0, "NVM Qualified Names").
pub fn check_nqn(nqn: &str) -> Result<(), Error> {
    let bad = |why| Err(Error::BadNqn(nqn.to_owned(), why));
    if nqn.len() > crate::nvme::fabrics::MAX_NQN_LEN {
        return bad("longer than 223 bytes");
    }
    let Some(rest) = nqn.strip_prefix("nqn.") else {
        return bad("does not start with \"nqn.\"");
    };
    let date = rest.as_bytes();
    let dated = date.len() > 8
        && date[..4].iter().all(u8::is_ascii_digit)
        && date[4] == b'-'
        && date[5..7].iter().all(u8::is_ascii_digit)
        && date[7] == b'.';
    if !dated {
        return bad("lacks the yyyy-mm. date after \"nqn.\"");
    }
    if nqn.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return bad("contains white space or control characters");
    }
    Ok(())
}

pub fn create_subsystem(opts: SubsystemOpts) -> Result<Arc<Subsystem>, Error> {
    check_nqn(&opts.nqn)?;
    if opts.min_cntlid == 0 || opts.min_cntlid > opts.max_cntlid || opts.max_cntlid > MAX_CNTLID {
        return Err(Error::InvalidOption(format!(
            "controller IDs {}..={} are not within 1..=65519",
            opts.min_cntlid, opts.max_cntlid
        )));
    }
    if opts.max_namespaces == 0 || opts.max_namespaces > 1024 {
        return Err(Error::InvalidOption(format!(
            "max_namespaces {} is not between 1 and 1024",
            opts.max_namespaces
        )));
    }
    if opts.serial.len() > 20 || !opts.serial.is_ascii() {
        return Err(Error::InvalidOption(format!(
            "serial number {:?} is not ASCII of at most 20 characters",
            opts.serial
        )));
    }
    if opts.model.len() > 40 || !opts.model.is_ascii() {
        return Err(Error::InvalidOption(format!(
            "model number {:?} is not ASCII of at most 40 characters",
            opts.model
        )));
    }
    let mut t = target();
    if t.subsystems.iter().any(|s| s.nqn == opts.nqn) {
        return Err(Error::SubsystemExists(opts.nqn));
    }
    let s = Subsystem::new(opts);
    t.subsystems.push(Arc::clone(&s));
    bump_genctr();
    Ok(s)
}

pub fn subsystem(nqn: &str) -> Option<Arc<Subsystem>> {
    target().subsystems.iter().find(|s| s.nqn == nqn).cloned()
}

pub fn subsystems() -> Vec<Arc<Subsystem>> {
    target().subsystems.clone()
}

pub fn nvm_subsystem(nqn: &str) -> Result<Arc<Subsystem>, Error> {
    subsystem(nqn)
        .filter(|s| s.kind == super::subsystem::Kind::Nvm)
        .ok_or_else(|| Error::NoSuchSubsystem(nqn.to_owned()))
}

/// Delete a subsystem: its controllers end (their hosts see the connections close), its
/// listeners are given up, its namespaces closed.
pub fn delete_subsystem(nqn: &str) -> Result<(), Error> {
    let sub = nvm_subsystem(nqn)?;
    let addrs = sub.state().listeners.clone();
    for a in &addrs {
        let _ = remove_listener(&sub, a);
    }
    target().subsystems.retain(|s| !Arc::ptr_eq(s, &sub));
    let ctrls = sub.state().controllers.clone();
    for c in ctrls {
        c.kill();
    }
    sub.clear_namespaces();
    bump_genctr();
    Ok(())
}

/// Listen on `addr` for `sub` (opening the socket if no subsystem listens there yet).
pub fn add_listener(sub: &Arc<Subsystem>, addr: ListenAddr) -> Result<(), Error> {
    if sub.state().listeners.contains(&addr) {
        return Err(Error::ListenerExists(addr));
    }
    let mut t = target();
    if t.transport.is_none() {
        return Err(Error::NoTransport(addr.trtype.clone()));
    }
    if let Some(l) = t.listeners.iter_mut().find(|l| l.addr == addr) {
        l.users += 1;
    } else {
        let messenger = t.messenger.clone().ok_or(Error::NoEngine)?;
        let socket = bind(&addr)?;
        let ctl = Arc::new(ListenerCtl {
            stop: AtomicBool::new(false),
            closed: Mutex::new(false),
            cv: Condvar::new(),
        });
        super::tcp::listener::start(&messenger, socket, addr.clone(), Arc::clone(&ctl))?;
        t.listeners.push(Listener {
            addr: addr.clone(),
            users: 1,
            ctl,
        });
    }
    drop(t);
    sub.state().listeners.push(addr);
    bump_genctr();
    Ok(())
}

fn bind(addr: &ListenAddr) -> Result<TcpListener, Error> {
    let fail = |source| Error::Listen {
        addr: addr.clone(),
        source,
    };
    if !addr.trtype.eq_ignore_ascii_case("tcp") {
        return Err(Error::UnsupportedTransport(addr.trtype.clone()));
    }
    let port: u16 = addr.trsvcid.parse().map_err(|_| {
        Error::InvalidOption(format!("trsvcid {:?} is not a TCP port", addr.trsvcid))
    })?;
    let ip: std::net::IpAddr = addr.traddr.parse().map_err(|_| {
        Error::InvalidOption(format!("traddr {:?} is not an IP address", addr.traddr))
    })?;
    let want_v6 = addr.adrfam.eq_ignore_ascii_case("ipv6");
    if ip.is_ipv6() != want_v6 {
        return Err(Error::InvalidOption(format!(
            "traddr {} is not an {} address",
            addr.traddr, addr.adrfam
        )));
    }
    let l = TcpListener::bind((ip, port)).map_err(fail)?;
    l.set_nonblocking(true).map_err(fail)?;
    Ok(l)
}

pub fn remove_listener(sub: &Arc<Subsystem>, addr: &ListenAddr) -> Result<(), Error> {
    {
        let mut s = sub.state();
        let before = s.listeners.len();
        s.listeners.retain(|a| a != addr);
        if s.listeners.len() == before {
            return Err(Error::NoSuchListener(addr.clone()));
        }
    }
    let stopped = {
        let mut t = target();
        let Some(i) = t.listeners.iter().position(|l| &l.addr == addr) else {
            return Ok(());
        };
        t.listeners[i].users -= 1;
        if t.listeners[i].users > 0 {
            None
        } else {
            let l = t.listeners.remove(i);
            l.ctl.stop.store(true, Ordering::Release);
            // Wake the reactor polling it so that it sees the stop.
            if let Some(m) = &t.messenger {
                for r in m.reactors().into_iter().take(1) {
                    let _ = m.send(r, || {});
                }
            }
            Some(l.ctl)
        }
    };
    if let Some(ctl) = stopped {
        ctl.wait_closed(Duration::from_secs(2));
    }
    bump_genctr();
    Ok(())
}

/// Is `addr` one that `sub` listens on? The discovery subsystem answers on every listener.
pub fn listens_on(sub: &Subsystem, addr: &ListenAddr) -> bool {
    sub.kind == super::subsystem::Kind::Discovery || sub.state().listeners.contains(addr)
}
