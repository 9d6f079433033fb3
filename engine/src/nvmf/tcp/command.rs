//! Commands as they arrive on a connection: command capsules and the data that follows them
//! (in the capsule, or in H2CData answering an R2T), Fabrics commands (Connect, Property
//! Get/Set), and the hand-off to the admin controller or the I/O path.

use std::sync::Arc;
use std::time::Duration;

use super::conn::{take_buf, Conn, Hooks, Queue, Slot, SlotState, ADMIN_IN_CAPSULE, TX_PER_SLOT};
use super::pdu::{self, CommonHeader, DataHeader, Fes, ProtocolError};
use super::txq::Body;
use crate::nvme::fabrics::{
    self, connect_offset, invalid_param_dw0, ConnectCmd, ConnectData, PropertyCmd,
    CATTR_DISABLE_SQFLOW, CNTLID_DYNAMIC, CONNECT_DATA_LEN,
};
use crate::nvme::sgl::{self as nsgl, DataDir, SglDesc};
use crate::nvme::{Sqe, Status};
use crate::nvmf::controller::{AdminHooks, ClaimError, Controller, CtrlShared, Outcome, Reply};
use crate::nvmf::subsystem::Kind;
use crate::nvmf::target;
use crate::reactor::{self, PollStatus, ReactorId};

/// How often an admin queue checks its keep-alive timer.
const KEEP_ALIVE_CHECK: Duration = Duration::from_millis(500);

impl Conn {
    pub(super) fn capsule(&mut self, h: &CommonHeader, pdu: &[u8]) -> Result<(), ProtocolError> {
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
        let digest_ok = pdu::data_digest_ok(pdu, h);
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
            DataDir::Both => self.finish(slot, Status::INVALID_OPCODE, 0),
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
                    // The address is an offset into the in-capsule data (SGLS bit 20).
                    let off = usize::try_from(sgl.addr).unwrap_or(usize::MAX);
                    if off >= dlen {
                        self.finish(slot, Status::SGL_OFFSET_INVALID, 0)
                    } else if len > dlen - off {
                        self.finish(slot, Status::DATA_SGL_LENGTH_INVALID, 0)
                    } else if !digest_ok {
                        self.finish(slot, Status::TRANSIENT_TRANSPORT_ERROR, 0)
                    } else if self.fill(slot, len) {
                        let from = at + off;
                        self.slots[slot as usize].data_mut()[..len]
                            .copy_from_slice(&pdu[from..from + len]);
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
    pub(super) fn fill(&mut self, slot: u16, len: usize) -> bool {
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

    pub(super) fn h2c_data(&mut self, h: &CommonHeader, pdu: &[u8]) -> Result<(), ProtocolError> {
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
        let digest_ok = pdu::data_digest_ok(pdu, h);
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

    pub(super) fn execute(&mut self, slot: u16) {
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

    pub(super) fn answer(&mut self, slot: u16, r: Reply) {
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

    pub(super) fn fabrics(&mut self, slot: u16, sqe: &Sqe) {
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
                    match ctrl.property_set(&p) {
                        Ok(ended) => {
                            // A reset ends the Asynchronous Event Requests it held.
                            for cid in ended {
                                self.reply(cid, Status::ABORTED_SQ_DELETION, 0);
                            }
                            self.finish(slot, Status::SUCCESS, 0)
                        }
                        Err(s) => self.finish(slot, s, 0),
                    }
                }
            }
            _ => self.finish(slot, Status::INVALID_OPCODE, 0),
        }
    }

    pub(super) fn connect(&mut self, slot: u16, sqe: &Sqe) {
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

    pub(super) fn try_connect(
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
        let (ctrl, admin, epoch) = if cmd.qid == 0 {
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
            // The subsystem may have been deleted while this Connect ran.
            if !target::subsystem(&sub.nqn).is_some_and(|s| Arc::ptr_eq(&s, &sub)) {
                ctrl.kill();
                return Err(bad_param(true, connect_offset::SUBNQN));
            }
            let admin = Box::new(Controller::new(Arc::clone(&ctrl), opts, cmd.kato, now));
            let epoch = ctrl.epoch();
            (ctrl, Some(admin), epoch)
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
            let epoch = ctrl.claim_io_queue(cmd.qid).map_err(|e| match e {
                ClaimError::NotReady => (Status::COMMAND_SEQUENCE_ERROR, 0),
                ClaimError::BadQid => bad_param(false, connect_offset::QID),
            })?;
            (ctrl, None, epoch)
        };
        let entries = cmd.sqsize + 1;
        let is_admin = admin.is_some();
        tracing::info!(
            subnqn = %sub.nqn, hostnqn = %data.hostnqn, cntlid = ctrl.cntlid, qid = cmd.qid,
            entries, "nvmf/tcp: queue connected"
        );
        self.queue = Some(Queue {
            qid: cmd.qid,
            entries,
            sq_head: 1 % entries,
            sqflow_off: cmd.cattr & CATTR_DISABLE_SQFLOW != 0,
            epoch,
            ctrl: Arc::clone(&ctrl),
            admin,
            ns_gen: u64::MAX,
            ns: Vec::new(),
        });
        // Slots and send queue for the queue size the host asked for, made once here.
        self.slots.resize_with(entries as usize, Slot::new);
        self.free.extend((1..entries).rev());
        self.tx.reserve(entries as usize * TX_PER_SLOT);
        self.released.reserve(entries as usize);
        // Every admin queue watches its timer: Set Features may start one Connect did not.
        if is_admin {
            self.start_keep_alive();
        }
        Ok(ctrl.cntlid)
    }

    pub(super) fn start_keep_alive(&mut self) {
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
    pub(super) fn ns_changed(&mut self, nsid: u32) {
        let Some(ctrl) = self.queue.as_mut().and_then(|q| q.admin.as_mut()) else {
            return;
        };
        if let Some((cid, dw0)) = ctrl.ns_changed(nsid) {
            self.reply(cid, Status::SUCCESS, dw0);
            self.flush();
        }
    }
}
