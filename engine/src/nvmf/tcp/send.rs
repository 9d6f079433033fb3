//! The send side of a connection: the queue of PDUs waiting for the socket (written with
//! `writev`, resumed where a short write stopped), and the PDUs the target sends: response
//! capsules, C2HData (with the SUCCESS flag when the host allows it), R2T, C2HTermReq.
//!
//! A PDU whose data is a command's buffer frees the command's slot only once it is on the wire.

use std::io::IoSlice;

use super::conn::{header_digest_len, Conn, Phase, SlotState};
use super::pdu::{self, flags, CommonHeader, DataHeader, PduType, ProtocolError, DIGEST_LEN};
use crate::nvme::{Cqe, Status};

/// Slices per `writev`.
const IOV_MAX: usize = 64;
/// The largest header the send queue holds: a TermReq with the offending header.
const HEAD_MAX: usize = pdu::MAX_TERM_REQ_PLEN as usize;

pub(super) enum Body {
    None,
    /// `len` bytes of slot `slot`'s data.
    Slot {
        slot: u16,
        len: u32,
    },
    Owned(Vec<u8>),
}

/// One PDU on the send queue: header bytes (digest and padding included), data, data digest.
pub(super) struct Out {
    pub(super) head: [u8; HEAD_MAX],
    pub(super) head_len: u16,
    pub(super) body: Body,
    pub(super) tail: [u8; DIGEST_LEN],
    pub(super) tail_len: u8,
    /// Free this slot once the PDU is on the wire (its buffer is the body).
    pub(super) release: Option<u16>,
}

impl Out {
    pub(super) fn new(head: &[u8]) -> Out {
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

impl Conn {
    pub(super) fn sqhd(&self) -> u16 {
        match &self.queue {
            Some(q) if q.sqflow_off => 0xFFFF,
            Some(q) => q.sq_head,
            None => 0,
        }
    }

    pub(super) fn hdgst(&self) -> usize {
        header_digest_len(&self.neg)
    }

    /// Queue a PDU whose first `len` header bytes are in `b` (a header digest is appended).
    pub(super) fn push_header(&mut self, b: &[u8]) -> &mut Out {
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
        let out = self.push_header(&dh.encode(ch));
        out.head_len = pdo as u16;
        out.body = body;
        if let Some(d) = digest {
            out.tail = d;
            out.tail_len = DIGEST_LEN as u8;
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
    pub(super) fn fatal(&mut self, e: &ProtocolError, offending: &[u8]) {
        tracing::warn!(peer = %self.sock.peer(), "nvmf/tcp: {e}; terminating the connection");
        let hdr = &offending[..offending.len().min(128)];
        let b = pdu::term_req(PduType::C2hTermReq, e, hdr);
        self.tx.push_back(Out::new(&b));
        self.phase = Phase::Closing;
        self.close_after(super::conn::CLOSE_GRACE);
    }

    /// Write what the send queue holds. True if anything was written.
    pub(super) fn flush(&mut self) -> bool {
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
}
