//! The I/O path of a connection: NVM commands on an I/O queue mapped onto the namespace's bdev
//! through this reactor's channel, and their completions back into responses.
//!
//! No lock, no blocking call, no allocation per command: the namespace cache is rebuilt only
//! when the subsystem's namespaces change, buffers come from the reactor's pools, and the
//! completion closures are stored inline.

use std::rc::Rc;

use super::conn::{take_buf, Conn, ConnRef, Phase};
use super::txq::Body;
use crate::bdev::{Channel, IoDone, IoType};
use crate::mem::Sgl;
use crate::nvme::{Sqe, Status};
use crate::nvmf::io::{self as nio, IoCmd};

/// A namespace as one queue sees it: the namespace and this reactor's channel to its bdev.
pub(super) struct NsEntry {
    nsid: u32,
    channel: Channel,
    block_size: u32,
    num_blocks: u64,
}

impl Conn {
    /// This queue's view of namespace `nsid`, refreshing the cache if the subsystem's
    /// namespaces changed since it was built.
    pub(super) fn ns_index(&mut self, nsid: u32) -> Option<usize> {
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
                        channel,
                    });
                }
            }
            q.ns_gen = gen;
        }
        q.ns.iter().position(|e| e.nsid == nsid)
    }

    pub(super) fn io(&mut self, slot: u16, sqe: &Sqe) {
        if !nio::known_opcode(sqe.opcode) {
            return self.finish(slot, Status::INVALID_OPCODE, 0);
        }
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
                let flush_after = fua.then(|| channel.clone());
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
    pub(super) fn deallocate(&mut self, slot: u16, ns: usize, ranges: usize) {
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
    pub(super) fn io_finished(&mut self, slot: u16, is_read: bool, d: IoDone) {
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
            self.send_data(slot, Body::Slot { slot, off: 0, len }, 0);
        } else {
            self.finish(slot, status, 0);
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
