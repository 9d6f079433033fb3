//! Admin commands: Identify, Get/Set Features, Get Log Page, Keep Alive, Asynchronous Event
//! Request, Abort. Control path: they may allocate (the data they return is built per
//! command), never block.

use std::time::Duration;

use super::controller::{Controller, Outcome, Reply, KAS_100MS, MAX_AERS};
use super::discovery;
use crate::nvme::features as fid;
use crate::nvme::identify::{
    self, cns, ControllerData, ControllerType, NamespaceData, IDENTIFY_LEN,
};
use crate::nvme::log_page::{self, lid, GetLogPage};
use crate::nvme::{admin, Sqe, Status};

/// ONCS: Compare (bit 0), Dataset Management (bit 2) and Write Zeroes (bit 3).
const ONCS: u16 = 1 | 1 << 2 | 1 << 3;
/// Broadcast NSID: "all namespaces" where a command allows it.
const NSID_ALL: u32 = u32::MAX;

impl Controller {
    /// Run an admin command other than a Fabrics one.
    pub fn admin(&mut self, sqe: &Sqe, now: Duration) -> Outcome {
        if !self.enabled() {
            return Outcome::Reply(Reply::err(Status::COMMAND_SEQUENCE_ERROR));
        }
        let discovery = self.is_discovery();
        let reply = match sqe.opcode {
            admin::IDENTIFY => self.identify(sqe),
            admin::GET_LOG_PAGE => self.get_log_page(sqe),
            admin::KEEP_ALIVE => {
                self.keep_alive(now);
                Reply::ok(0)
            }
            admin::ASYNC_EVENT_REQUEST if !discovery => match self.hold_aer(sqe.cid) {
                Ok(None) => return Outcome::Held,
                Ok(Some(dw0)) => Reply::ok(dw0),
                Err(s) => Reply::err(s),
            },
            admin::GET_FEATURES => self.get_features(sqe),
            admin::SET_FEATURES => self.set_features(sqe, now),
            // Commands complete as they arrive, so there is never one to abort: dword 0 bit 0
            // says "not aborted".
            admin::ABORT if !discovery => Reply::ok(1),
            _ => Reply::err(Status::INVALID_OPCODE),
        };
        Outcome::Reply(reply)
    }

    fn identify(&self, sqe: &Sqe) -> Reply {
        let cns = sqe.cdw(10) as u8;
        let sub = &self.shared.subsystem;
        if self.is_discovery() && cns != cns::CONTROLLER {
            return Reply::err(Status::INVALID_FIELD);
        }
        match cns {
            cns::CONTROLLER => Reply::data(self.controller_data().encode()),
            cns::NAMESPACE => match self.check_nsid(sqe.nsid) {
                Err(s) => Reply::err(s),
                // An allocated but inactive NSID reads as zeros: the host drops the namespace.
                Ok(None) => Reply::data(vec![0; IDENTIFY_LEN]),
                Ok(Some(ns)) => {
                    let b = ns.bdev();
                    Reply::data(
                        NamespaceData {
                            num_blocks: b.num_blocks(),
                            block_size: b.block_size(),
                            nguid: ns.nguid,
                            shared: true,
                        }
                        .encode(),
                    )
                }
            },
            cns::ACTIVE_NS_LIST => {
                if sqe.nsid >= 0xFFFF_FFFE {
                    return Reply::err(Status::INVALID_NAMESPACE);
                }
                let ids = sub.namespaces().iter().map(|n| n.nsid).collect::<Vec<_>>();
                Reply::data(identify::active_ns_list(ids, sqe.nsid))
            }
            cns::NS_DESCRIPTORS => match self.check_nsid(sqe.nsid) {
                Err(s) => Reply::err(s),
                Ok(None) => Reply::err(Status::INVALID_NAMESPACE),
                Ok(Some(ns)) => {
                    Reply::data(identify::ns_descriptors(&ns.nguid, &ns.uuid.to_be_bytes()))
                }
            },
            _ => Reply::err(Status::INVALID_FIELD),
        }
    }

    /// `Ok(Some)` for an active namespace, `Ok(None)` for a valid but inactive NSID.
    fn check_nsid(&self, nsid: u32) -> Result<Option<std::sync::Arc<super::Namespace>>, Status> {
        let sub = &self.shared.subsystem;
        if nsid == 0 || nsid > sub.max_namespaces {
            return Err(Status::INVALID_NAMESPACE);
        }
        Ok(sub.namespace(nsid))
    }

    pub fn controller_data(&self) -> ControllerData {
        let sub = &self.shared.subsystem;
        let discovery = self.is_discovery();
        ControllerData {
            serial: sub.serial.clone(),
            model: sub.model.clone(),
            firmware: crate::VERSION.to_owned(),
            mdts: self.opts.mdts(),
            cntlid: self.shared.cntlid,
            version: crate::nvme::registers::VERSION_1_3,
            ctrl_type: if discovery {
                ControllerType::Discovery
            } else {
                ControllerType::Io
            },
            oaes: if discovery { 0 } else { fid::AEN_NS_ATTRIBUTE },
            kas: KAS_100MS,
            aerl: (MAX_AERS - 1) as u8,
            max_cmd: self.opts.max_queue_depth,
            num_namespaces: sub.max_namespaces,
            oncs: ONCS,
            volatile_write_cache: true,
            subnqn: sub.nqn.clone(),
            ioccsz: (64 + self.opts.in_capsule_data_size) / 16,
            iorcsz: 1,
        }
    }

    fn get_log_page(&mut self, sqe: &Sqe) -> Reply {
        let g = GetLogPage::from_sqe(sqe);
        if g.len > self.opts.max_io_size as usize {
            return Reply::err(Status::INVALID_FIELD);
        }
        if g.offset % 4 != 0 {
            return Reply::err(Status::INVALID_FIELD);
        }
        let page = match (g.lid, self.is_discovery()) {
            (lid::DISCOVERY, true) => discovery::log_page(&self.shared.hostnqn),
            (lid::ERROR, false) => vec![0; g.len],
            (lid::SMART, false) => {
                if sqe.nsid != 0 && sqe.nsid != NSID_ALL {
                    return Reply::err(Status::INVALID_FIELD);
                }
                log_page::smart()
            }
            (lid::FIRMWARE_SLOT, false) => {
                let mut b = vec![0u8; log_page::FIRMWARE_SLOT_LEN];
                b[0] = 1; // AFI: slot 1 active.
                let fw = crate::VERSION.as_bytes();
                b[8..8 + fw.len().min(8)].copy_from_slice(&fw[..fw.len().min(8)]);
                b
            }
            (lid::CHANGED_NS_LIST, false) => {
                let b = log_page::changed_ns_list(&self.changed_ns);
                self.changed_ns.clear();
                if !g.rae {
                    self.ns_notice_masked = false;
                }
                b
            }
            _ => return Reply::err(Status::INVALID_LOG_PAGE),
        };
        Reply::data(log_page::window(&page, g.offset, g.len))
    }

    fn plain_feature(&self, id: u8) -> u32 {
        self.plain_features
            .iter()
            .find(|(f, _)| *f == id)
            .map_or(0, |(_, v)| *v)
    }

    fn get_features(&self, sqe: &Sqe) -> Reply {
        let id = sqe.cdw(10) as u8;
        // SEL (bits 10:8): current, default, saved all read the same; 3 (capabilities) says
        // every feature here is changeable and not saveable.
        if (sqe.cdw(10) >> 8) & 0x7 == 3 {
            return Reply::ok(0x4);
        }
        match id {
            fid::NUMBER_OF_QUEUES => {
                let n = (self.shared.io_queues() - 1) as u32;
                Reply::ok(n | n << 16)
            }
            fid::KEEP_ALIVE_TIMER => Reply::ok(self.kato_ms),
            fid::ASYNC_EVENT_CONFIG => Reply::ok(self.aen_config),
            fid::VOLATILE_WRITE_CACHE => Reply::ok(1),
            fid::ARBITRATION
            | fid::POWER_MANAGEMENT
            | fid::TEMPERATURE_THRESHOLD
            | fid::ERROR_RECOVERY
            | fid::INTERRUPT_COALESCING
            | fid::WRITE_ATOMICITY => Reply::ok(self.plain_feature(id)),
            fid::HOST_IDENTIFIER => {
                // Extended (128-bit) host identifiers only: EXHID, cdw11 bit 0.
                if sqe.cdw(11) & 1 == 0 {
                    return Reply::err(Status::INVALID_FIELD);
                }
                Reply::data(self.shared.hostid.to_vec())
            }
            _ => Reply::err(Status::INVALID_FIELD),
        }
    }

    fn set_features(&mut self, sqe: &Sqe, now: Duration) -> Reply {
        let id = sqe.cdw(10) as u8;
        let v = sqe.cdw(11);
        if sqe.cdw(10) & (1 << 31) != 0 {
            // Save: nothing persists across controllers (Feature Identifier Not Saveable).
            return Reply::err(Status::command_specific(0x0D).no_retry());
        }
        match id {
            fid::NUMBER_OF_QUEUES => {
                let (nsq, ncq) = (v & 0xFFFF, v >> 16);
                if nsq == 0xFFFF || ncq == 0xFFFF {
                    return Reply::err(Status::INVALID_FIELD);
                }
                if self.shared.connected_io_queues() > 0 {
                    return Reply::err(Status::COMMAND_SEQUENCE_ERROR);
                }
                let granted = self.grant_io_queues((nsq.min(ncq) + 1).min(0xFFFF) as u16) as u32;
                Reply::ok((granted - 1) | (granted - 1) << 16)
            }
            fid::KEEP_ALIVE_TIMER => {
                self.kato_ms = v;
                self.keep_alive(now);
                Reply::ok(0)
            }
            fid::ASYNC_EVENT_CONFIG => {
                self.aen_config = v & fid::AEN_NS_ATTRIBUTE;
                Reply::ok(0)
            }
            // The cache is always on: the bdev's flush is what makes writes durable.
            fid::VOLATILE_WRITE_CACHE if v & 1 == 1 => Reply::ok(0),
            fid::VOLATILE_WRITE_CACHE => Reply::err(Status::FEATURE_NOT_CHANGEABLE),
            fid::ARBITRATION
            | fid::POWER_MANAGEMENT
            | fid::TEMPERATURE_THRESHOLD
            | fid::ERROR_RECOVERY
            | fid::INTERRUPT_COALESCING
            | fid::WRITE_ATOMICITY => {
                match self.plain_features.iter_mut().find(|(f, _)| *f == id) {
                    Some(slot) => slot.1 = v,
                    None => self.plain_features.push((id, v)),
                }
                Reply::ok(0)
            }
            _ => Reply::err(Status::INVALID_FIELD),
        }
    }
}
