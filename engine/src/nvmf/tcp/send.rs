//! The send side of a connection: the PDUs the target sends (response capsules, C2HData with
//! the SUCCESS flag when the host allows it, R2T, C2HTermReq) onto its send queue
//! ([`super::txq`]), and writing that queue to the socket.
//!
//! A PDU whose data is a command's buffer frees the command's slot only once it is on the wire.

use super::conn::{Conn, Phase, SlotState};
use super::pdu::{self, flags, CommonHeader, DataHeader, PduType, ProtocolError, DIGEST_LEN};
use super::txq::{Body, Flushed, Out};
use crate::nvme::{Cqe, Status};

impl Conn {
    pub(super) fn sqhd(&self) -> u16 {
        match &self.queue {
            Some(q) if q.sqflow_off => 0xFFFF,
            Some(q) => q.sq_head,
            None => 0,
        }
    }

    pub(super) fn hdgst(&self) -> usize {
        if self.neg.header_digest {
            DIGEST_LEN
        } else {
            0
        }
    }

    /// Queue a PDU with header `b` (and its digest, if negotiated).
    pub(super) fn push_header(&mut self, b: &[u8]) -> &mut Out {
        self.tx.push(b, self.neg.header_digest)
    }

    /// Queue a response capsule.
    pub(super) fn reply(&mut self, cid: u16, status: Status, dw0: u32) {
        self.reply2(cid, status, dw0, 0);
    }

    pub(super) fn reply2(&mut self, cid: u16, status: Status, dw0: u32, dw1: u32) {
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
        let flags = pdu::digest_flags(self.neg.header_digest, false);
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
    pub(super) fn finish(&mut self, slot: u16, status: Status, dw0: u32) {
        self.finish2(slot, status, dw0, 0);
    }

    pub(super) fn finish2(&mut self, slot: u16, status: Status, dw0: u32, dw1: u32) {
        let cid = self.slots[slot as usize].sqe.cid;
        self.reply2(cid, status, dw0, dw1);
        self.release(slot);
    }

    pub(super) fn release(&mut self, slot: u16) {
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
    pub(super) fn send_data(&mut self, slot: u16, body: Body, dw0: u32) {
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
        let mut fl =
            flags::LAST_PDU | pdu::digest_flags(self.neg.header_digest, self.neg.data_digest);
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
            pdu::crc32c(bytes)
        });
        let out = self.push_header(&dh.encode(ch));
        out.pad_head_to(pdo);
        out.body = body;
        if let Some(d) = digest {
            out.set_data_digest(d);
        }
        // The slot stays taken until its data is on the wire, so that a host that does not read
        // cannot make the target hold more than a queue's worth of answers.
        out.release = Some(slot);
        if !success {
            self.reply(cid, Status::SUCCESS, dw0);
        }
    }

    pub(super) fn r2t(&mut self, slot: u16, len: u32) {
        let hdgst = self.hdgst();
        let ch = CommonHeader {
            pdu_type: PduType::R2t,
            flags: pdu::digest_flags(self.neg.header_digest, false),
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
    pub(super) fn fatal(&mut self, e: &ProtocolError, offending: &[u8]) {
        tracing::warn!(peer = %self.sock.peer(), "nvmf/tcp: {e}; terminating the connection");
        let hdr = &offending[..offending.len().min(128)];
        let b = pdu::term_req(PduType::C2hTermReq, e, hdr);
        self.tx.push(&b, false);
        self.phase = Phase::Closing;
        self.close_after(super::conn::CLOSE_GRACE);
    }

    /// Write what the send queue holds. True if anything was written.
    pub(super) fn flush(&mut self) -> bool {
        let slots = &self.slots;
        let r = self.tx.flush(
            &mut self.sock,
            |s| slots[s as usize].data(),
            &mut self.released,
        );
        while let Some(s) = self.released.pop() {
            self.release(s);
        }
        match r {
            Flushed::Nothing => false,
            Flushed::Some => true,
            Flushed::Failed => {
                self.tx.clear();
                self.close();
                true
            }
        }
    }
}
