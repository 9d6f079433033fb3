//! Controllers. A controller is made by an admin-queue Connect and lives until its admin queue
//! goes (the host disconnects, or its keep-alive timer expires).
//!
//! Its state is split by who touches it. [`CtrlShared`] is what the I/O queues on other
//! reactors and the control path need (identity, liveness, the reset epoch, the I/O queues
//! connected): atomics, and one `Mutex` taken only by Connect. [`Controller`] is the rest
//! (registers, features, asynchronous events, keep-alive), owned by the admin queue's reactor
//! and never shared.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::subsystem::{Kind, Subsystem};
use super::TransportOpts;
use crate::nvme::fabrics::PropertyCmd;
use crate::nvme::registers::{self, cc, csts};
use crate::nvme::Status;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Asynchronous Event Requests a controller holds at once (AERL + 1).
pub const MAX_AERS: usize = 4;
/// Keep-alive granularity reported in KAS, in 100 ms units: one second.
pub const KAS_100MS: u16 = 10;
/// CAP.TO: how long a host waits for CSTS.RDY, in 500 ms units.
const CAP_TIMEOUT_500MS: u8 = 30;

/// Hooks by which the transport that owns the admin queue hears of events from other threads.
pub trait AdminHooks: Send + Sync {
    /// A namespace was added, removed or resized (called on any thread).
    fn ns_changed(&self, ctrl: &Arc<CtrlShared>, nsid: u32);
    /// The controller is gone: every queue of it must close (called on any thread).
    fn killed(&self, ctrl: &Arc<CtrlShared>);
}

/// Why an I/O queue could not be connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimError {
    /// CSTS.RDY is clear.
    NotReady,
    /// The queue ID is 0, beyond the queues granted, or already connected.
    BadQid,
}

pub struct CtrlShared {
    /// Unique over the process's life (controller IDs are reused).
    pub id: u64,
    pub cntlid: u16,
    pub subsystem: Arc<Subsystem>,
    pub hostnqn: String,
    pub hostid: [u8; 16],
    dead: AtomicBool,
    /// Moves at each controller reset (CC.EN cleared): I/O queues of an older epoch close.
    epoch: AtomicU32,
    ready: AtomicBool,
    /// I/O queues granted by Set Features Number of Queues (or the transport's maximum).
    io_queues: AtomicU16,
    /// The I/O queues connected, each with the epoch it connected in.
    connected: Mutex<Vec<(u16, u32)>>,
    hooks: Arc<dyn AdminHooks>,
}

impl CtrlShared {
    pub fn new(
        cntlid: u16,
        subsystem: Arc<Subsystem>,
        hostnqn: String,
        hostid: [u8; 16],
        max_io_queues: u16,
        hooks: Arc<dyn AdminHooks>,
    ) -> Arc<CtrlShared> {
        Arc::new(CtrlShared {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            cntlid,
            subsystem,
            hostnqn,
            hostid,
            dead: AtomicBool::new(false),
            epoch: AtomicU32::new(0),
            ready: AtomicBool::new(false),
            io_queues: AtomicU16::new(max_io_queues),
            connected: Mutex::new(Vec::new()),
            hooks,
        })
    }

    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    pub fn epoch(&self) -> u32 {
        self.epoch.load(Ordering::Acquire)
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn io_queues(&self) -> u16 {
        self.io_queues.load(Ordering::Acquire)
    }

    fn connected(&self) -> std::sync::MutexGuard<'_, Vec<(u16, u32)>> {
        self.connected.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Take I/O queue `qid` for a Connect: the epoch it belongs to. The controller must be
    /// ready, and checked under the same lock a reset takes, so a queue never joins an epoch
    /// that already ended.
    pub fn claim_io_queue(&self, qid: u16) -> Result<u32, ClaimError> {
        let mut c = self.connected();
        if !self.is_ready() {
            return Err(ClaimError::NotReady);
        }
        if qid == 0 || qid > self.io_queues() || c.iter().any(|&(q, _)| q == qid) {
            return Err(ClaimError::BadQid);
        }
        let epoch = self.epoch();
        c.push((qid, epoch));
        Ok(epoch)
    }

    /// Give back queue `qid` of `epoch` (a reset already forgot the queues of older epochs).
    pub fn release_io_queue(&self, qid: u16, epoch: u32) {
        self.connected().retain(|&q| q != (qid, epoch));
    }

    pub fn connected_io_queues(&self) -> usize {
        self.connected().len()
    }

    /// A controller reset (CC.EN cleared): not ready, and every I/O queue of the ending epoch
    /// closes.
    fn reset(&self) {
        let mut c = self.connected();
        self.ready.store(false, Ordering::Release);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        c.clear();
    }

    pub fn notify_ns_changed(self: &Arc<Self>, nsid: u32) {
        self.hooks.ns_changed(self, nsid);
    }

    /// End the controller: it leaves its subsystem and every queue of it closes.
    pub fn kill(self: &Arc<Self>) {
        if !self.dead.swap(true, Ordering::AcqRel) {
            self.ready.store(false, Ordering::Release);
            self.subsystem.remove_controller(self.cntlid);
            self.hooks.killed(self);
        }
    }
}

/// A completion the admin queue sends: status, dword 0, and data for the host if any.
#[derive(Debug)]
pub struct Reply {
    pub status: Status,
    pub dw0: u32,
    pub data: Option<Vec<u8>>,
}

impl Reply {
    pub fn ok(dw0: u32) -> Reply {
        Reply {
            status: Status::SUCCESS,
            dw0,
            data: None,
        }
    }

    pub fn data(data: Vec<u8>) -> Reply {
        Reply {
            status: Status::SUCCESS,
            dw0: 0,
            data: Some(data),
        }
    }

    pub fn err(status: Status) -> Reply {
        Reply {
            status,
            dw0: 0,
            data: None,
        }
    }
}

/// What an admin command comes to: a reply now, or later (an Asynchronous Event Request).
#[derive(Debug)]
pub enum Outcome {
    Reply(Reply),
    Held,
}

/// The admin-queue side of a controller: registers, features and events.
pub struct Controller {
    pub shared: Arc<CtrlShared>,
    pub opts: TransportOpts,
    cc: u32,
    csts: u32,
    pub(super) aen_config: u32,
    /// Keep-alive timeout in milliseconds (0: none).
    pub kato_ms: u32,
    pub last_keep_alive: Duration,
    /// Feature values stored and returned as set, for features Tandem does not act on.
    pub(super) plain_features: Vec<(u8, u32)>,
    /// CIDs of Asynchronous Event Requests waiting for an event.
    aers: VecDeque<u16>,
    /// Event completions (dword 0) waiting for an Asynchronous Event Request.
    events: VecDeque<u32>,
    pub(super) changed_ns: Vec<u32>,
    /// A namespace notice was sent and the Changed Namespace List not yet read.
    pub(super) ns_notice_masked: bool,
}

/// Asynchronous event dword 0 for "namespace attribute changed": type Notice (2), information
/// 0, log page 04h.
pub const AEN_NS_CHANGED: u32 = 0x2 | (crate::nvme::log_page::lid::CHANGED_NS_LIST as u32) << 16;

impl Controller {
    pub fn new(shared: Arc<CtrlShared>, opts: TransportOpts, kato_ms: u32, now: Duration) -> Self {
        Controller {
            shared,
            opts,
            cc: 0,
            csts: 0,
            aen_config: 0,
            kato_ms,
            last_keep_alive: now,
            plain_features: Vec::new(),
            aers: VecDeque::new(),
            events: VecDeque::new(),
            changed_ns: Vec::new(),
            ns_notice_masked: false,
        }
    }

    pub fn is_discovery(&self) -> bool {
        self.shared.subsystem.kind == Kind::Discovery
    }

    pub fn enabled(&self) -> bool {
        self.csts & csts::RDY != 0
    }

    fn cap(&self) -> u64 {
        registers::cap(self.opts.max_queue_depth - 1, CAP_TIMEOUT_500MS)
    }

    pub fn property_get(&self, p: &PropertyCmd) -> Result<u64, Status> {
        let v = match (p.offset, p.wide) {
            (registers::CAP, true) => self.cap(),
            (registers::VS, false) => registers::VERSION_1_3 as u64,
            (registers::CC, false) => self.cc as u64,
            (registers::CSTS, false) => self.csts as u64,
            _ => return Err(Status::INVALID_FIELD),
        };
        Ok(v)
    }

    /// Property Set. Only CC is writable: EN 0→1 makes the controller ready, 1→0 resets it
    /// (its I/O queues close, its features return to their defaults), and a shutdown
    /// notification completes at once, as nothing is cached. Returns the CIDs of the
    /// Asynchronous Event Requests a reset ended, to be answered as aborted.
    pub fn property_set(&mut self, p: &PropertyCmd) -> Result<Vec<u16>, Status> {
        if p.offset != registers::CC || p.wide {
            return Err(Status::INVALID_FIELD);
        }
        let new = p.value as u32 & cc::WRITABLE;
        let old = self.cc;
        self.cc = new;
        if new & cc::SHN_MASK != 0 {
            self.csts |= csts::SHST_COMPLETE;
        } else {
            self.csts &= !(0x3 << 2);
        }
        if new & cc::EN != 0 && old & cc::EN == 0 {
            self.csts |= csts::RDY;
            self.shared.ready.store(true, Ordering::Release);
        } else if new & cc::EN == 0 && old & cc::EN != 0 {
            self.csts &= !csts::RDY;
            self.shared.reset();
            self.shared
                .io_queues
                .store(self.opts.max_io_qpairs_per_ctrlr, Ordering::Release);
            self.aen_config = 0;
            self.plain_features.clear();
            self.events.clear();
            self.changed_ns.clear();
            self.ns_notice_masked = false;
            return Ok(self.aers.drain(..).collect());
        }
        Ok(Vec::new())
    }

    pub fn grant_io_queues(&mut self, n: u16) -> u16 {
        let n = n.clamp(1, self.opts.max_io_qpairs_per_ctrlr);
        self.shared.io_queues.store(n, Ordering::Release);
        n
    }

    /// Hold an Asynchronous Event Request, or answer it at once with a queued event.
    pub fn hold_aer(&mut self, cid: u16) -> Result<Option<u32>, Status> {
        if let Some(ev) = self.events.pop_front() {
            return Ok(Some(ev));
        }
        if self.aers.len() >= MAX_AERS {
            // Asynchronous Event Request Limit Exceeded.
            return Err(Status::command_specific(0x05).no_retry());
        }
        self.aers.push_back(cid);
        Ok(None)
    }

    /// A namespace changed: remember it for the Changed Namespace List and, if the host enabled
    /// namespace notices and has read the last one, raise an event. Returns the AER to complete
    /// (its CID and dword 0) when one is waiting.
    pub fn ns_changed(&mut self, nsid: u32) -> Option<(u16, u32)> {
        if !self.changed_ns.contains(&nsid) {
            self.changed_ns.push(nsid);
        }
        if self.aen_config & crate::nvme::features::AEN_NS_ATTRIBUTE == 0 || self.ns_notice_masked {
            return None;
        }
        self.ns_notice_masked = true;
        match self.aers.pop_front() {
            Some(cid) => Some((cid, AEN_NS_CHANGED)),
            None => {
                self.events.push_back(AEN_NS_CHANGED);
                None
            }
        }
    }

    pub fn keep_alive(&mut self, now: Duration) {
        self.last_keep_alive = now;
    }

    /// True when the host has been silent past its keep-alive timeout.
    pub fn keep_alive_expired(&self, now: Duration) -> bool {
        self.kato_ms != 0
            && now.saturating_sub(self.last_keep_alive) > Duration::from_millis(self.kato_ms as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nvme::fabrics::PropertyCmd;
    use crate::nvmf::subsystem::SubsystemOpts;

    struct NoHooks;
    impl AdminHooks for NoHooks {
        fn ns_changed(&self, _: &Arc<CtrlShared>, _: u32) {}
        fn killed(&self, _: &Arc<CtrlShared>) {}
    }

    fn controller() -> Controller {
        let sub = Subsystem::new(SubsystemOpts {
            nqn: "nqn.2016-06.io.tandem:unit".into(),
            serial: "S".into(),
            model: "M".into(),
            allow_any_host: true,
            max_namespaces: 4,
            min_cntlid: 1,
            max_cntlid: 10,
        });
        let shared = sub
            .add_controller(|id| {
                CtrlShared::new(
                    id,
                    Arc::clone(&sub),
                    "h".into(),
                    [0; 16],
                    8,
                    Arc::new(NoHooks),
                )
            })
            .unwrap();
        Controller::new(shared, TransportOpts::default(), 2000, Duration::ZERO)
    }

    fn set_cc(c: &mut Controller, v: u32) {
        c.property_set(&PropertyCmd {
            wide: false,
            offset: registers::CC,
            value: v as u64,
        })
        .unwrap();
    }

    fn get(c: &Controller, offset: u32, wide: bool) -> Result<u64, Status> {
        c.property_get(&PropertyCmd {
            wide,
            offset,
            value: 0,
        })
    }

    #[test]
    fn enable_reset_and_shutdown_follow_cc() {
        let mut c = controller();
        assert_eq!(get(&c, registers::CAP, true).unwrap() & 0xFFFF, 127);
        assert_eq!(get(&c, registers::CAP, false), Err(Status::INVALID_FIELD));
        assert_eq!(get(&c, 0x40, false), Err(Status::INVALID_FIELD));
        set_cc(&mut c, 0x46_0001);
        assert_eq!(get(&c, registers::CSTS, false).unwrap() & 1, 1);
        assert!(c.shared.is_ready());
        let epoch = c.shared.claim_io_queue(1).unwrap();
        assert_eq!(
            c.shared.claim_io_queue(1),
            Err(ClaimError::BadQid),
            "taken once"
        );
        assert_eq!(
            c.shared.claim_io_queue(9),
            Err(ClaimError::BadQid),
            "beyond the grant"
        );
        // Reset: not ready, I/O queues of the old epoch go, held AERs end.
        c.aen_config = crate::nvme::features::AEN_NS_ATTRIBUTE;
        assert_eq!(c.hold_aer(7), Ok(None));
        let ended = c
            .property_set(&PropertyCmd {
                wide: false,
                offset: registers::CC,
                value: 0x46_0000,
            })
            .unwrap();
        assert_eq!(ended, vec![7]);
        assert_eq!(c.aen_config, 0, "features return to their defaults");
        assert_eq!(get(&c, registers::CSTS, false).unwrap() & 1, 0);
        assert_ne!(c.shared.epoch(), epoch);
        assert_eq!(c.shared.connected_io_queues(), 0);
        assert_eq!(c.shared.claim_io_queue(1), Err(ClaimError::NotReady));
        // The old queue's late release does not free a new claim of the same ID.
        set_cc(&mut c, 0x46_0001);
        let new_epoch = c.shared.claim_io_queue(1).unwrap();
        c.shared.release_io_queue(1, epoch);
        assert_eq!(c.shared.connected_io_queues(), 1);
        c.shared.release_io_queue(1, new_epoch);
        assert_eq!(c.shared.connected_io_queues(), 0);
        set_cc(&mut c, 0x46_0000);
        // Normal shutdown completes at once.
        set_cc(&mut c, 0x46_4001);
        assert_eq!(get(&c, registers::CSTS, false).unwrap() & 0xC, 0x8);
        // Only CC is writable.
        let vs = PropertyCmd {
            wide: false,
            offset: registers::VS,
            value: 0,
        };
        assert_eq!(c.property_set(&vs), Err(Status::INVALID_FIELD));
    }

    #[test]
    fn namespace_notices_wait_for_an_aer_and_for_the_log_to_be_read() {
        let mut c = controller();
        // Not enabled by the host: remembered, no event.
        assert_eq!(c.ns_changed(3), None);
        c.aen_config = crate::nvme::features::AEN_NS_ATTRIBUTE;
        assert_eq!(c.hold_aer(40), Ok(None));
        assert_eq!(c.ns_changed(4), Some((40, AEN_NS_CHANGED)));
        // Masked until the Changed Namespace List is read: no second event.
        assert_eq!(c.hold_aer(41), Ok(None));
        assert_eq!(c.ns_changed(5), None);
        assert_eq!(c.changed_ns, vec![3, 4, 5]);
        c.ns_notice_masked = false;
        assert_eq!(c.ns_changed(6), Some((41, AEN_NS_CHANGED)));
        // With no AER waiting, the event queues for the next one.
        c.ns_notice_masked = false;
        assert_eq!(c.ns_changed(7), None);
        assert_eq!(c.hold_aer(42), Ok(Some(AEN_NS_CHANGED)));
        // The limit on outstanding requests.
        for cid in 0..MAX_AERS as u16 {
            assert_eq!(c.hold_aer(cid), Ok(None));
        }
        assert!(c.hold_aer(99).is_err());
    }

    #[test]
    fn keep_alive_expires_only_after_kato_without_one() {
        let mut c = controller();
        assert!(!c.keep_alive_expired(Duration::from_millis(1500)));
        c.keep_alive(Duration::from_millis(1500));
        assert!(!c.keep_alive_expired(Duration::from_millis(3400)));
        assert!(c.keep_alive_expired(Duration::from_millis(3600)));
        c.kato_ms = 0;
        assert!(!c.keep_alive_expired(Duration::from_secs(3600)));
    }
}
