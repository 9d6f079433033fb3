//! A volume as a bdev: the data path from a volume's blocks to the store's base bdev.
//!
//! **Data path.** A read or write is cut at cluster boundaries; each piece looks its cluster up
//! in the volume's [`ClusterMap`] (atomic loads, no lock) and goes straight to the base bdev's
//! backend channel on the same reactor, one per (store, reactor) shared by its volumes: the
//! volume's own channel has already checked the request, so the bdev layer's checks, counters
//! and completion queue are not paid twice. (The base's statistics therefore count the store's
//! metadata I/O; data I/O is counted on the volumes.) Holes read as zeros. A write into a cluster the volume does not own in the
//! current snapshot epoch (a hole, or one a snapshot or clone shares) asks the store's owner
//! reactor to prepare it (allocate and zero, or copy) and to commit that durably, then carries
//! on with the clusters the owner answers: that path allocates and sends messages, and is taken
//! once per cluster and snapshot. In steady state a request takes a slot from a per-channel
//! table grown once, its completion callbacks are stored inline, and an I/O within one cluster
//! passes its own buffers to the base: no lock, no blocking call, no allocation. An I/O that
//! spans clusters gives each piece a segment list of its own, which allocates.
//!
//! Unmap frees whole clusters through the owner (parts of clusters are left as they are, which
//! NVMe's deallocate allows); write-zeroes is done by the bdev layer as writes of zeros.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::map::ClusterMap;
use super::owner::{self, Shared};
use super::Result;
use crate::bdev::{
    self, Backend, BackendChannel, Bdev, BdevInfo, BdevIo, Completions, Errno, IoCallback, IoDone,
    IoError, IoType,
};
use crate::mem::{ForeignBuf, Sgl};
use crate::reactor::{self, ReactorLocal};

pub(crate) struct Volume {
    pub store: Arc<Shared>,
    pub obj: u64,
    pub map: ClusterMap,
    /// `Some`: a read-only view of the volume in this snapshot.
    pub snap: Option<u64>,
}

impl Volume {
    pub fn new(store: Arc<Shared>, obj: u64, snap: Option<u64>) -> Volume {
        Volume {
            store,
            obj,
            map: ClusterMap::new(),
            snap,
        }
    }

    /// Publish the volume as bdev `name`.
    pub fn register(self: &Arc<Self>, name: &str, uuid: u128, size: u64) -> Result<Bdev> {
        let bs = self.store.base.block_size();
        let b = Bdev::new(
            BdevInfo {
                name: name.to_owned(),
                uuid,
                block_size: bs,
                num_blocks: size / bs as u64,
            },
            Box::new(VolBackend(Arc::clone(self))),
        )?;
        Ok(bdev::register(b)?)
    }
}

struct VolBackend(Arc<Volume>);

impl Backend for VolBackend {
    fn product_name(&self) -> &'static str {
        "Logical Volume"
    }

    fn supports(&self, t: IoType) -> bool {
        match t {
            IoType::Read | IoType::Flush => true,
            IoType::Write | IoType::Unmap => self.0.snap.is_none(),
            IoType::WriteZeroes => false,
        }
    }

    fn buf_align(&self) -> usize {
        self.0.store.base.buf_align()
    }

    fn open_channel(&self) -> bdev::Result<Box<dyn BackendChannel>> {
        let base = BaseLink::get(&self.0.store)?;
        let reactor_id = reactor::current().ok_or(bdev::Error::NotOnReactor)?;
        let st = Rc::new(ChanState {
            vol: Arc::clone(&self.0),
            bs: self.0.store.base.block_size() as u64,
            cs: self.0.store.cluster_size,
            base,
            id: NEXT_CHANNEL.fetch_add(1, Ordering::Relaxed),
            reactor: reactor_id,
            done: RefCell::new(None),
            slab: RefCell::new(Slab {
                slots: Vec::with_capacity(256),
                free: Vec::with_capacity(256),
            }),
        });
        CHANNELS
            .with(|m| m.borrow_mut().insert(st.id, Rc::downgrade(&st)))
            .map_err(|_| bdev::Error::NotOnReactor)?;
        Ok(Box::new(VolChannel(st)))
    }

    fn driver_specific(&self) -> serde_json::Value {
        serde_json::json!({"lvol": {
            "lvol_store_uuid": bdev::format_uuid(self.0.store.uuid),
            "base_bdev": self.0.store.base.name(),
            "thin_provision": true,
            "snapshot": self.0.snap.is_some(),
        }})
    }

    /// Volumes come back by loading their store, not by replaying a call.
    fn save_config(&self, _: &Bdev) -> Option<serde_json::Value> {
        None
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

static NEXT_CHANNEL: AtomicU64 = AtomicU64::new(1);

/// The base bdev's backend channel on this reactor, shared by the store's volume channels here,
/// and the queue its completions land in. Whichever volume channel polls first delivers them.
struct BaseLink {
    backend: RefCell<Box<dyn BackendChannel>>,
    done: Completions,
    blocks: u64,
}

/// Base links on this reactor, by store UUID.
static LINKS: ReactorLocal<RefCell<HashMap<u128, Weak<BaseLink>>>> =
    ReactorLocal::new(|| RefCell::new(HashMap::new()));

impl BaseLink {
    fn get(store: &Shared) -> bdev::Result<Rc<BaseLink>> {
        LINKS
            .with(|m| {
                if let Some(l) = m.borrow().get(&store.uuid).and_then(Weak::upgrade) {
                    return Ok(l);
                }
                let l = Rc::new(BaseLink {
                    backend: RefCell::new(store.base.0.backend.open_channel()?),
                    done: Completions::with_capacity(256),
                    blocks: store.base.num_blocks(),
                });
                m.borrow_mut().insert(store.uuid, Rc::downgrade(&l));
                Ok(l)
            })
            .map_err(|_| bdev::Error::NotOnReactor)?
    }

    /// Submit to the base. The request was checked by the volume's channel and the offset
    /// computed from a cluster inside the device. A refusal hands the request back by value,
    /// as the bdev layer does, so that refusing allocates nothing.
    #[allow(clippy::result_large_err)]
    fn submit(&self, io: BdevIo) -> std::result::Result<(), (bdev::Error, BdevIo)> {
        self.backend.borrow_mut().submit(io, &self.done)
    }

    /// Reap the base and run the completions of its requests (each finishes a volume piece).
    fn poll(&self) -> reactor::PollStatus {
        let mut status = self.backend.borrow_mut().poll(&self.done);
        while let Some((io, result)) = self.done.pop() {
            io.finish(result);
            status = reactor::PollStatus::Busy;
        }
        status
    }
}

/// This reactor's volume channels, so that an answer from the owner finds its request.
static CHANNELS: ReactorLocal<RefCell<HashMap<u64, Weak<ChanState>>>> =
    ReactorLocal::new(|| RefCell::new(HashMap::new()));

struct VolChannel(Rc<ChanState>);

impl Drop for VolChannel {
    fn drop(&mut self) {
        let _ = CHANNELS.with(|m| m.borrow_mut().remove(&self.0.id));
    }
}

struct ChanState {
    vol: Arc<Volume>,
    base: Rc<BaseLink>,
    bs: u64,
    /// The store's cluster size.
    cs: u64,
    id: u64,
    reactor: reactor::ReactorId,
    done: RefCell<Option<Completions>>,
    slab: RefCell<Slab>,
}

struct Slot {
    io: Option<BdevIo>,
    left: u32,
    status: std::result::Result<(), IoError>,
    /// The grace period the request counted itself in.
    grace: u64,
    /// For a write, the snapshot epoch it saw.
    epoch: Option<u64>,
}

struct Slab {
    slots: Vec<Slot>,
    free: Vec<u32>,
}

/// A piece of a request within one cluster: the cluster index, the byte offset in the cluster,
/// the byte offset in the request and the length.
#[derive(Clone, Copy)]
struct Piece {
    idx: u64,
    in_cluster: u64,
    at: u64,
    len: u64,
}

fn pieces(io: &BdevIo, bs: u64, cs: u64) -> impl Iterator<Item = Piece> {
    let start = io.offset_blocks * bs;
    let end = start + io.num_blocks * bs;
    let mut pos = start;
    std::iter::from_fn(move || {
        (pos < end).then(|| {
            let in_cluster = pos % cs;
            let len = (cs - in_cluster).min(end - pos);
            let p = Piece {
                idx: pos / cs,
                in_cluster,
                at: pos - start,
                len,
            };
            pos += len;
            p
        })
    })
}

impl BackendChannel for VolChannel {
    fn submit(
        &mut self,
        io: BdevIo,
        done: &Completions,
    ) -> std::result::Result<(), (bdev::Error, BdevIo)> {
        let st = &self.0;
        if st.done.borrow().is_none() {
            *st.done.borrow_mut() = Some(done.clone());
        }
        let io_type = io.io_type;
        // Counted first, then the snapshot epoch read: see `Shared::enter_io`.
        let grace = st.vol.store.enter_io(st.reactor);
        let epoch = (io_type == IoType::Write).then(|| st.vol.store.epoch.load(Ordering::SeqCst));
        let slot = st.take_slot(io, grace, epoch);
        match io_type {
            IoType::Read => st.dispatch(slot, None),
            IoType::Write => st.dispatch(slot, None),
            IoType::Flush => st.flush(slot),
            IoType::Unmap => st.unmap(slot),
            IoType::WriteZeroes => {
                st.finish_pieces(slot, 1, Err(IoError::Device(Errno(libc::EOPNOTSUPP))))
            }
        }
        Ok(())
    }

    fn poll(&mut self, _done: &Completions) -> reactor::PollStatus {
        self.0.base.poll()
    }
}

impl ChanState {
    fn take_slot(&self, io: BdevIo, grace: u64, epoch: Option<u64>) -> u32 {
        let mut slab = self.slab.borrow_mut();
        let slot = Slot {
            io: Some(io),
            left: 0,
            status: Ok(()),
            grace,
            epoch,
        };
        match slab.free.pop() {
            Some(i) => {
                slab.slots[i as usize] = slot;
                i
            }
            None => {
                slab.slots.push(slot);
                (slab.slots.len() - 1) as u32
            }
        }
    }

    /// Send a read or write's pieces to the base. A write whose clusters are not yet the
    /// volume's own asks the owner first; `given` is the owner's answer.
    fn dispatch(self: &Rc<Self>, slot: u32, given: Option<Vec<(u64, u64)>>) {
        let cs = self.cs;
        let mut slab = self.slab.borrow_mut();
        let s = &mut slab.slots[slot as usize];
        let io = s.io.as_mut().expect("a request in its slot");
        let write = io.io_type == IoType::Write;
        // The common case first: a request within one cluster the map can answer.
        let start = io.offset_blocks * self.bs;
        let len = io.num_blocks * self.bs;
        if start % cs + len <= cs && given.is_none() {
            let p = Piece {
                idx: start / cs,
                in_cluster: start % cs,
                at: 0,
                len,
            };
            let e = self.vol.map.get(p.idx);
            if write && !s.epoch.is_some_and(|epoch| e.writable_in(epoch)) {
                drop(slab);
                return self.ask_owner(slot, vec![p.idx]);
            }
            s.left = 1;
            if e.cluster == 0 {
                zero_range(&mut io.sgl, 0, len);
                drop(slab);
                return self.finish_pieces(slot, 1, Ok(()));
            }
            let (sgl, io_type) = (std::mem::take(&mut io.sgl), io.io_type);
            drop(slab);
            return self.submit_piece(slot, io_type, e.cluster, p, sgl, true);
        }
        let io = s.io.as_ref().expect("a request in its slot");
        let cluster_of = |p: &Piece| -> Option<u64> {
            if let Some(g) = &given {
                if let Some(&(_, c)) = g.iter().find(|(i, _)| *i == p.idx) {
                    return Some(c);
                }
            }
            let e = self.vol.map.get(p.idx);
            match (write, s.epoch) {
                (true, Some(epoch)) => e.writable_in(epoch).then_some(e.cluster),
                _ => Some(e.cluster),
            }
        };
        if write {
            let need: Vec<u64> = pieces(io, self.bs, cs)
                .filter(|p| cluster_of(p).is_none())
                .map(|p| p.idx)
                .collect();
            if !need.is_empty() {
                drop(slab);
                return self.ask_owner(slot, need);
            }
        }
        let n = pieces(io, self.bs, cs).count() as u32;
        s.left = n;
        if n == 1 {
            let p = pieces(io, self.bs, cs).next().expect("one piece");
            let cluster = cluster_of(&p).expect("checked above");
            if cluster == 0 {
                let io = s.io.as_mut().expect("a request in its slot");
                zero_range(&mut io.sgl, 0, p.len);
                drop(slab);
                return self.finish_pieces(slot, 1, Ok(()));
            }
            let io = s.io.as_mut().expect("a request in its slot");
            let sgl = std::mem::take(&mut io.sgl);
            let io_type = io.io_type;
            drop(slab);
            return self.submit_piece(slot, io_type, cluster, p, sgl, true);
        }
        let mut ready = Vec::with_capacity(n as usize);
        let io = s.io.as_mut().expect("a request in its slot");
        let io_type = io.io_type;
        let all: Vec<Piece> = pieces(io, self.bs, cs).collect();
        let mut holes = 0;
        for p in all {
            let cluster = cluster_of(&p).expect("checked above");
            if cluster == 0 {
                zero_range(&mut io.sgl, p.at, p.len);
                holes += 1;
            } else {
                ready.push((p, cluster, sub_sgl(&mut io.sgl, p.at, p.len)));
            }
        }
        drop(slab);
        for (p, cluster, sgl) in ready {
            self.submit_piece(slot, io_type, cluster, p, sgl, false);
        }
        if holes > 0 {
            self.finish_pieces(slot, holes, Ok(()));
        }
    }

    fn submit_piece(
        self: &Rc<Self>,
        slot: u32,
        io_type: IoType,
        cluster: u64,
        p: Piece,
        sgl: Sgl,
        own: bool,
    ) {
        let cs = self.cs;
        let offset = (cluster * cs + p.in_cluster) / self.bs;
        let blocks = p.len / self.bs;
        let st = Rc::clone(self);
        let cb = IoCallback::new(move |d: IoDone| {
            if own {
                if let Some(io) = st.slab.borrow_mut().slots[slot as usize].io.as_mut() {
                    io.sgl = d.sgl;
                }
            }
            st.finish_pieces(slot, 1, d.status);
        });
        let io = BdevIo {
            io_type: if io_type == IoType::Read {
                IoType::Read
            } else {
                IoType::Write
            },
            offset_blocks: offset,
            num_blocks: blocks,
            sgl,
            cb,
            submitted_ns: 0,
        };
        if let Err((e, io)) = self.base.submit(io) {
            tracing::debug!("volume piece refused by the base: {e}");
            let sgl = io.sgl;
            if own {
                if let Some(io) = self.slab.borrow_mut().slots[slot as usize].io.as_mut() {
                    io.sgl = sgl;
                }
            }
            self.finish_pieces(slot, 1, Err(IoError::Device(Errno(-e.errno()))));
        }
    }

    /// `n` pieces of the request in `slot` are done; the last completes it.
    fn finish_pieces(&self, slot: u32, n: u32, status: std::result::Result<(), IoError>) {
        let mut slab = self.slab.borrow_mut();
        let s = &mut slab.slots[slot as usize];
        if let Err(e) = status {
            if s.status.is_ok() {
                s.status = Err(e);
            }
        }
        s.left = s.left.saturating_sub(n);
        if s.left > 0 {
            return;
        }
        let io = s.io.take().expect("completed once");
        let (status, grace) = (s.status, s.grace);
        slab.free.push(slot);
        drop(slab);
        self.vol.store.exit_io(self.reactor, grace);
        if let Some(done) = self.done.borrow().as_ref() {
            done.complete(io, status);
        }
    }

    fn flush(self: &Rc<Self>, slot: u32) {
        self.slab.borrow_mut().slots[slot as usize].left = 1;
        let st = Rc::clone(self);
        let io = BdevIo {
            io_type: IoType::Flush,
            offset_blocks: 0,
            num_blocks: self.base.blocks,
            sgl: Sgl::new(),
            cb: IoCallback::new(move |d: IoDone| st.finish_pieces(slot, 1, d.status)),
            submitted_ns: 0,
        };
        if let Err((e, _)) = self.base.submit(io) {
            self.finish_pieces(slot, 1, Err(IoError::Device(Errno(-e.errno()))));
        }
    }

    fn ask_owner(self: &Rc<Self>, slot: u32, idxs: Vec<u64>) {
        self.via_owner(slot, move |uuid, obj, back| {
            owner::prepare(uuid, obj, idxs, back)
        });
    }

    fn unmap(self: &Rc<Self>, slot: u32) {
        let cs = self.cs;
        let (first, end) = {
            let slab = self.slab.borrow();
            let io = slab.slots[slot as usize]
                .io
                .as_ref()
                .expect("a request in its slot");
            let start = io.offset_blocks * self.bs;
            (start.div_ceil(cs), (start + io.num_blocks * self.bs) / cs)
        };
        self.slab.borrow_mut().slots[slot as usize].left = 1;
        if end <= first {
            return self.finish_pieces(slot, 1, Ok(()));
        }
        self.via_owner(slot, move |uuid, obj, back| {
            owner::unmap(
                uuid,
                obj,
                first,
                end - first,
                Box::new(move |r| back(r.map(|()| Vec::new()))),
            )
        });
    }

    /// Run `call` on the store's owner with the store, the volume and where its answer goes:
    /// a message back to this reactor that resumes request `slot`.
    fn via_owner(
        self: &Rc<Self>,
        slot: u32,
        call: impl FnOnce(u128, u64, owner::Prepared) + Send + 'static,
    ) {
        let store = &self.vol.store;
        let (uuid, obj, id, home) = (store.uuid, self.vol.obj, self.id, self.reactor);
        let messenger = store.messenger.clone();
        let sent = store.messenger.send_patiently(store.owner, move || {
            let back: owner::Prepared = Box::new(move |r| {
                let r = r.map_err(|e| e.errno());
                if messenger
                    .send_patiently(home, move || resume(id, slot, r))
                    .is_err()
                {
                    tracing::error!("a volume's reactor stopped before its request was answered");
                }
            });
            call(uuid, obj, back)
        });
        if sent.is_err() {
            self.slab.borrow_mut().slots[slot as usize].left = 1;
            self.finish_pieces(slot, 1, Err(IoError::Device(Errno(libc::EIO))));
        }
    }
}

/// The owner's answer reaches the request's reactor.
fn resume(channel: u64, slot: u32, r: std::result::Result<Vec<(u64, u64)>, i32>) {
    let Some(st) = CHANNELS
        .with(|m| m.borrow().get(&channel).and_then(Weak::upgrade))
        .ok()
        .flatten()
    else {
        tracing::error!("an answer for a volume channel that is gone");
        return;
    };
    let is_write = st.slab.borrow().slots[slot as usize]
        .io
        .as_ref()
        .is_some_and(|io| io.io_type == IoType::Write);
    match r {
        Ok(clusters) if is_write => st.dispatch(slot, Some(clusters)),
        Ok(_) => st.finish_pieces(slot, 1, Ok(())),
        Err(errno) => {
            st.slab.borrow_mut().slots[slot as usize].left = 1;
            st.finish_pieces(slot, 1, Err(IoError::Device(Errno(-errno))));
        }
    }
}

/// Call `f` on each piece of bytes `[at, at + len)` of `sgl`, segment by segment.
fn for_range(sgl: &mut Sgl, mut at: u64, mut len: u64, mut f: impl FnMut(&mut [u8])) {
    for seg in sgl.segs_mut() {
        let bytes = seg.as_mut_slice();
        let n = bytes.len() as u64;
        if at >= n {
            at -= n;
            continue;
        }
        let take = (n - at).min(len);
        f(&mut bytes[at as usize..(at + take) as usize]);
        len -= take;
        at = 0;
        if len == 0 {
            break;
        }
    }
}

/// Zero `len` bytes of `sgl` from byte `at`.
fn zero_range(sgl: &mut Sgl, at: u64, len: u64) {
    for_range(sgl, at, len, |b| b.fill(0));
}

/// A segment list viewing bytes `[at, at + len)` of `sgl`.
fn sub_sgl(sgl: &mut Sgl, at: u64, len: u64) -> Sgl {
    let mut out = Sgl::new();
    for_range(sgl, at, len, |b| {
        // The request that owns the buffer stays in its slot, untouched, until every piece
        // viewing it has completed and dropped its view; only then is it completed and its
        // buffers handed back.
        // SAFETY: the view lies inside this segment's buffer, which outlives the view (above).
        let view = unsafe { ForeignBuf::new(b.as_mut_ptr(), b.len()) };
        if let Some(view) = view {
            let _ = out.push(crate::mem::Buf::Foreign(view), 0, b.len());
        }
    });
    out
}
