//! The per-reactor I/O path of a bdev: checks each request, hands it to the backend, and runs
//! completions from a poller. One `ChannelShared` exists per (bdev, reactor); every descriptor's
//! `Channel` on that reactor shares it. It lives while a `Channel` or an I/O in flight needs it,
//! then its poller lets go and the backend's channel is dropped.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::backend::{BackendChannel, Completions};
use super::bdev::BdevInner;
use super::desc::DescInner;
use super::stats::ChannelStats;
use super::tap::{self, Primary, TapChannel};
use super::{Bdev, BdevIo, Error, IoCallback, IoDone, IoType, Result, SubmitError};
use crate::mem::{DmaBuf, Sgl};
use crate::reactor::{self, PollStatus, PollerHandle, ReactorLocal};

/// I/Os one channel holds in flight before refusing more with `QueueFull`.
pub const MAX_IN_FLIGHT: usize = 4096;
/// Completions delivered per poller call, so one busy channel cannot starve a reactor.
const COMPLETION_BUDGET: usize = 128;
/// Bytes written per request when write-zeroes is emulated by writes.
const ZERO_CHUNK: usize = 1024 * 1024;

static CHANNELS: ReactorLocal<RefCell<HashMap<u64, Weak<ChannelShared>>>> =
    ReactorLocal::new(|| RefCell::new(HashMap::new()));

pub(crate) struct ChannelShared {
    bdev: Arc<BdevInner>,
    backend: RefCell<Box<dyn BackendChannel>>,
    done: Completions,
    stats: Arc<ChannelStats>,
    in_flight: Cell<usize>,
    users: Cell<usize>,
    poller: RefCell<Option<PollerHandle>>,
    /// The write tap's channel on this reactor, and the bdev's tap epoch it was made at.
    tap: RefCell<Option<Rc<dyn TapChannel>>>,
    tap_epoch: Cell<u64>,
}

impl ChannelShared {
    fn open(bdev: &Arc<BdevInner>) -> Result<Rc<ChannelShared>> {
        let reactor = reactor::current().ok_or(Error::NotOnReactor)?;
        let backend = bdev.backend.open_channel()?;
        let shared = Rc::new(ChannelShared {
            bdev: Arc::clone(bdev),
            backend: RefCell::new(backend),
            done: Completions::with_capacity(256),
            stats: bdev.stats_for(reactor),
            in_flight: Cell::new(0),
            users: Cell::new(0),
            poller: RefCell::new(None),
            tap: RefCell::new(None),
            tap_epoch: Cell::new(0),
        });
        // The poller holds the channel alive; it lets go once no user and no I/O remain.
        let held = Rc::clone(&shared);
        let handle = reactor::register_poller("bdev_channel", move || held.poll())
            .map_err(|_| Error::NotOnReactor)?;
        *shared.poller.borrow_mut() = Some(handle);
        Ok(shared)
    }

    fn poll(&self) -> PollStatus {
        let mut status = self.backend.borrow_mut().poll(&self.done);
        let mut delivered = 0;
        while delivered < COMPLETION_BUDGET {
            let Some((io, result)) = self.done.pop() else {
                break;
            };
            self.in_flight.set(self.in_flight.get() - 1);
            let bytes = io.num_blocks * self.bdev.block_size as u64;
            let latency = crate::sys::monotonic_ns().saturating_sub(io.submitted_ns);
            self.stats
                .record(io.io_type, bytes, latency, result.is_ok());
            io.finish(result);
            delivered += 1;
        }
        if delivered > 0 {
            status = PollStatus::Busy;
        }
        self.release_if_unused();
        status
    }

    pub(crate) fn block_size(&self) -> u32 {
        self.bdev.block_size
    }

    /// Count a request a tap holds (`true`) or lets go (`false`) as in flight.
    pub(crate) fn hold_one(&self, hold: bool) {
        let n = self.in_flight.get();
        self.in_flight.set(if hold { n + 1 } else { n - 1 });
    }

    /// Queue `io`'s completion without the backend seeing it.
    pub(crate) fn complete_untouched(
        &self,
        io: BdevIo,
        status: std::result::Result<(), super::IoError>,
    ) {
        self.in_flight.set(self.in_flight.get() + 1);
        self.done.complete(io, status);
    }

    /// The tap to hand a change to, if the bdev has one. Steady state: one atomic load.
    fn tap(&self) -> Result<Option<Rc<dyn TapChannel>>> {
        let epoch = self.bdev.tap_epoch.load(Ordering::Acquire);
        if epoch != self.tap_epoch.get() {
            // The tap changed: control path, once per channel and change.
            let (epoch, tap) = self.bdev.current_tap();
            let channel = match tap {
                Some(t) => Some(t.open_channel()?),
                None => None,
            };
            *self.tap.borrow_mut() = channel;
            self.tap_epoch.set(epoch);
        }
        Ok(self.tap.borrow().clone())
    }

    fn release_if_unused(&self) {
        if self.users.get() == 0 && self.in_flight.get() == 0 && self.done.is_empty() {
            if let Some(handle) = self.poller.borrow_mut().take() {
                let _ = handle.unregister();
            }
        }
    }
}

impl Drop for ChannelShared {
    /// Only a reactor shutting down drops a channel with completions still queued (otherwise
    /// its poller keeps it until they are delivered): deliver them now, so that every accepted
    /// I/O's callback still runs exactly once.
    fn drop(&mut self) {
        // The backend first: closing it may complete what it still held (a network queue fails
        // its commands in flight), and those completions must run too.
        drop(std::mem::replace(
            &mut *self.backend.borrow_mut(),
            Box::new(Closed),
        ));
        while let Some((io, result)) = self.done.pop() {
            io.finish(result);
        }
    }
}

/// What stands in for a backend channel being dropped.
struct Closed;

impl BackendChannel for Closed {
    fn submit(
        &mut self,
        io: BdevIo,
        _done: &Completions,
    ) -> std::result::Result<(), (Error, BdevIo)> {
        Err((Error::NotOnReactor, io))
    }
}

/// A descriptor's I/O channel on the current reactor. Not `Send`: it belongs to the reactor.
pub struct Channel {
    desc: Arc<DescInner>,
    pub(crate) shared: Rc<ChannelShared>,
}

impl Channel {
    pub(crate) fn get(desc: &Arc<DescInner>) -> Result<Channel> {
        let bdev = &desc.bdev;
        if desc.closed.load(Ordering::Acquire) {
            return Err(Error::DescClosed {
                bdev: bdev.name.clone(),
            });
        }
        if bdev.removed.load(Ordering::Acquire) {
            return Err(Error::Removed {
                bdev: bdev.name.clone(),
            });
        }
        let shared = CHANNELS
            .with(|map| {
                let existing = map.borrow().get(&bdev.id).and_then(Weak::upgrade);
                match existing {
                    Some(s) if s.poller.borrow().is_some() => Ok(s),
                    _ => {
                        let s = ChannelShared::open(bdev)?;
                        map.borrow_mut().insert(bdev.id, Rc::downgrade(&s));
                        Ok(s)
                    }
                }
            })
            .map_err(|_| Error::NotOnReactor)??;
        shared.users.set(shared.users.get() + 1);
        Ok(Channel {
            desc: Arc::clone(desc),
            shared,
        })
    }

    pub fn bdev(&self) -> Bdev {
        Bdev(Arc::clone(&self.shared.bdev))
    }

    /// I/Os submitted on this reactor's channel and not yet completed.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.get()
    }

    pub fn read(
        &self,
        offset_blocks: u64,
        num_blocks: u64,
        sgl: Sgl,
        cb: impl FnOnce(IoDone) + 'static,
    ) -> std::result::Result<(), SubmitError> {
        self.submit(
            IoType::Read,
            offset_blocks,
            num_blocks,
            sgl,
            IoCallback::new(cb),
        )
    }

    pub fn write(
        &self,
        offset_blocks: u64,
        num_blocks: u64,
        sgl: Sgl,
        cb: impl FnOnce(IoDone) + 'static,
    ) -> std::result::Result<(), SubmitError> {
        self.submit(
            IoType::Write,
            offset_blocks,
            num_blocks,
            sgl,
            IoCallback::new(cb),
        )
    }

    pub fn flush(
        &self,
        offset_blocks: u64,
        num_blocks: u64,
        cb: impl FnOnce(IoDone) + 'static,
    ) -> Result<()> {
        self.submit_no_data(
            IoType::Flush,
            offset_blocks,
            num_blocks,
            IoCallback::new(cb),
        )
    }

    pub fn unmap(
        &self,
        offset_blocks: u64,
        num_blocks: u64,
        cb: impl FnOnce(IoDone) + 'static,
    ) -> Result<()> {
        self.submit_no_data(
            IoType::Unmap,
            offset_blocks,
            num_blocks,
            IoCallback::new(cb),
        )
    }

    pub fn write_zeroes(
        &self,
        offset_blocks: u64,
        num_blocks: u64,
        cb: impl FnOnce(IoDone) + 'static,
    ) -> Result<()> {
        self.submit_no_data(
            IoType::WriteZeroes,
            offset_blocks,
            num_blocks,
            IoCallback::new(cb),
        )
    }

    fn submit_no_data(
        &self,
        io_type: IoType,
        offset_blocks: u64,
        num_blocks: u64,
        cb: IoCallback,
    ) -> Result<()> {
        self.submit(io_type, offset_blocks, num_blocks, Sgl::default(), cb)
            .map_err(|(e, _)| e)
    }

    /// Submit any I/O. Reads and writes carry `num_blocks × block_size` bytes in `sgl`; the
    /// others an empty `sgl`.
    pub fn submit(
        &self,
        io_type: IoType,
        offset_blocks: u64,
        num_blocks: u64,
        sgl: Sgl,
        cb: IoCallback,
    ) -> std::result::Result<(), SubmitError> {
        if let Err(e) = self.check(io_type, offset_blocks, num_blocks, &sgl) {
            return Err((e, sgl));
        }
        if io_type == IoType::WriteZeroes && !self.shared.bdev.backend.supports(IoType::WriteZeroes)
        {
            return emulate_write_zeroes(Rc::clone(&self.shared), offset_blocks, num_blocks, cb)
                .map_err(|e| (e, sgl));
        }
        submit_checked(&self.shared, io_type, offset_blocks, num_blocks, sgl, cb)
            .map_err(|(e, io)| (e, io.sgl))
    }

    fn check(&self, io_type: IoType, offset_blocks: u64, num_blocks: u64, sgl: &Sgl) -> Result<()> {
        let bdev = &self.shared.bdev;
        if self.desc.closed.load(Ordering::Acquire) {
            return Err(Error::DescClosed {
                bdev: bdev.name.clone(),
            });
        }
        if bdev.removed.load(Ordering::Acquire) {
            return Err(Error::Removed {
                bdev: bdev.name.clone(),
            });
        }
        let emulated = io_type == IoType::WriteZeroes && bdev.backend.supports(IoType::Write);
        if !bdev.backend.supports(io_type) && !emulated {
            return Err(Error::Unsupported {
                bdev: bdev.name.clone(),
                io_type,
            });
        }
        if io_type != IoType::Read && io_type != IoType::Flush && !self.desc.write {
            return Err(Error::ReadOnly {
                bdev: bdev.name.clone(),
            });
        }
        if num_blocks == 0 {
            return Err(Error::ZeroLength);
        }
        let capacity = bdev.num_blocks.load(Ordering::Acquire);
        if offset_blocks
            .checked_add(num_blocks)
            .is_none_or(|end| end > capacity)
        {
            return Err(Error::OutOfRange {
                offset_blocks,
                num_blocks,
                capacity,
            });
        }
        let need = if io_type.has_data() {
            num_blocks
                .checked_mul(bdev.block_size as u64)
                .ok_or(Error::OutOfRange {
                    offset_blocks,
                    num_blocks,
                    capacity,
                })?
        } else {
            0
        };
        let have = sgl.len() as u64;
        if have != need {
            return Err(Error::BufferSize { need, have });
        }
        let align = bdev.backend.buf_align();
        if align > 1 {
            for seg in sgl.segs() {
                if seg.addr() % align != 0 || seg.len() % align != 0 {
                    return Err(Error::Misaligned {
                        addr: seg.addr(),
                        len: seg.len(),
                        align,
                    });
                }
            }
        }
        if self.shared.in_flight.get() >= MAX_IN_FLIGHT {
            return Err(Error::QueueFull {
                bdev: bdev.name.clone(),
                depth: MAX_IN_FLIGHT,
            });
        }
        Ok(())
    }
}

impl Clone for Channel {
    /// Another handle on the same channel: no lookup, no allocation.
    fn clone(&self) -> Channel {
        self.shared.users.set(self.shared.users.get() + 1);
        Channel {
            desc: Arc::clone(&self.desc),
            shared: Rc::clone(&self.shared),
        }
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        self.shared.users.set(self.shared.users.get() - 1);
        self.shared.release_if_unused();
    }
}

fn submit_checked(
    shared: &Rc<ChannelShared>,
    io_type: IoType,
    offset_blocks: u64,
    num_blocks: u64,
    sgl: Sgl,
    cb: IoCallback,
) -> std::result::Result<(), (Error, BdevIo)> {
    let io = BdevIo::new(io_type, offset_blocks, num_blocks, sgl, cb);
    if tap::taps(io_type) {
        match shared.tap() {
            Err(e) => return Err((e, io)),
            Ok(Some(t)) => return t.submit(&Primary(Rc::clone(shared)), io),
            Ok(None) => {}
        }
    }
    submit_to_backend(shared, io)
}

/// Hand `io` to the backend, past any tap.
pub(crate) fn submit_to_backend(
    shared: &ChannelShared,
    io: BdevIo,
) -> std::result::Result<(), (Error, BdevIo)> {
    let submitted = shared.backend.borrow_mut().submit(io, &shared.done);
    match submitted {
        Ok(()) => {
            shared.in_flight.set(shared.in_flight.get() + 1);
            Ok(())
        }
        Err(refused) => Err(refused),
    }
}

/// Write-zeroes for a backend without it: writes from one zeroed buffer, a chunk at a time.
/// Not a steady-state path: it allocates its buffer and its state once per request.
fn emulate_write_zeroes(
    shared: Rc<ChannelShared>,
    offset_blocks: u64,
    num_blocks: u64,
    cb: IoCallback,
) -> Result<()> {
    struct State {
        shared: Rc<ChannelShared>,
        next: u64,
        end: u64,
        chunk_blocks: u64,
        cb: IoCallback,
    }
    fn step(mut st: Box<State>, sgl: Sgl) {
        let bs = st.shared.bdev.block_size as u64;
        let blocks = st.chunk_blocks.min(st.end - st.next);
        let mut bufs = sgl.into_bufs();
        let buf = bufs.next().expect("the zero buffer comes back");
        let mut sgl = Sgl::new();
        sgl.push(buf, 0, (blocks * bs) as usize)
            .expect("chunk fits the zero buffer");
        let at = st.next;
        st.next += blocks;
        let shared = Rc::clone(&st.shared);
        let cb = IoCallback::new(move |done: IoDone| match done.status {
            Ok(()) if st.next < st.end => step(st, done.sgl),
            status => st.cb.call(IoDone {
                status,
                sgl: Sgl::new(),
            }),
        });
        if let Err((e, io)) = submit_checked(&shared, IoType::Write, at, blocks, sgl, cb) {
            // A chunk refused mid-way (a full queue) still completes the caller's request, once,
            // through the completion queue like any other failure.
            tracing::warn!("emulated write-zeroes: {e}");
            shared.in_flight.set(shared.in_flight.get() + 1);
            shared.done.complete(io, Err(super::IoError::Aborted));
        }
    }
    let bs = shared.bdev.block_size as u64;
    let chunk_blocks = (ZERO_CHUNK as u64 / bs).min(num_blocks);
    let zero = DmaBuf::new((chunk_blocks * bs) as usize)
        .map_err(|_| Error::InvalidArgument("no memory for write-zeroes".into()))?;
    let st = Box::new(State {
        shared,
        next: offset_blocks,
        end: offset_blocks + num_blocks,
        chunk_blocks,
        cb,
    });
    step(st, Sgl::single(zero));
    Ok(())
}
