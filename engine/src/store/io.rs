//! The store's own I/O on its base bdev: batches of metadata block reads and writes, cluster
//! zeroing, and flushes, run on a reactor with a bounded window; cluster copies through one
//! buffer; and the bridge that lets a control thread wait for such work on the owner reactor.
//!
//! Metadata and first-write preparation only: the volumes' data path goes straight to the base
//! channel ([`super::volume`]).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use super::{Error, Result};
use crate::bdev::{Channel, IoDone, SubmitError};
use crate::mem::{self, DmaBuf, Sgl, LARGE_BUF};
use crate::reactor::{self, Messenger, ReactorId};

/// One step of a batch; offsets and lengths in bytes, multiples of the base's block size.
pub enum Op {
    Read { offset: u64, len: usize },
    Write { offset: u64, data: Vec<u8> },
    Zero { offset: u64, len: u64 },
    Flush,
}

/// I/Os a batch keeps in flight.
const WINDOW: usize = 64;

/// What a batch answers: the data of each read.
type BatchDone = Box<dyn FnOnce(Result<Vec<Vec<u8>>>)>;

struct Batch {
    ch: Channel,
    ops: Vec<Option<Op>>,
    next: usize,
    in_flight: usize,
    results: Vec<Vec<u8>>,
    error: Option<Error>,
    done: Option<BatchDone>,
}

/// Run `ops` on `ch` (the current reactor's channel), in any order within the window, and call
/// `done` with the data of each read, in the order of `ops` (empty for the other steps). The
/// first failure fails the batch, after what is in flight has completed.
pub fn run(ch: Channel, ops: Vec<Op>, done: impl FnOnce(Result<Vec<Vec<u8>>>) + 'static) {
    let n = ops.len();
    let b = Rc::new(RefCell::new(Batch {
        ch,
        ops: ops.into_iter().map(Some).collect(),
        next: 0,
        in_flight: 0,
        results: vec![Vec::new(); n],
        error: None,
        done: Some(Box::new(done)),
    }));
    pump(&b);
}

fn pump(b: &Rc<RefCell<Batch>>) {
    loop {
        let mut batch = b.borrow_mut();
        if batch.error.is_some() || batch.next == batch.ops.len() || batch.in_flight >= WINDOW {
            let finished =
                batch.in_flight == 0 && (batch.error.is_some() || batch.next == batch.ops.len());
            if finished {
                let done = batch.done.take();
                let result = match batch.error.take() {
                    Some(e) => Err(e),
                    None => Ok(std::mem::take(&mut batch.results)),
                };
                drop(batch);
                if let Some(done) = done {
                    done(result);
                }
            }
            return;
        }
        let i = batch.next;
        let op = batch.ops[i].take().expect("each op is taken once");
        let bs = batch.ch.bdev().block_size() as u64;
        let held = Rc::clone(b);
        let cb = move |d: IoDone| {
            {
                let mut batch = held.borrow_mut();
                batch.in_flight -= 1;
                match d.status {
                    Ok(()) if !d.sgl.is_empty() => batch.results[i] = d.sgl.to_vec(),
                    Ok(()) => {}
                    Err(e) => {
                        batch.error.get_or_insert(Error::Io(e.to_string()));
                    }
                }
            }
            pump(&held);
        };
        let submitted = match &op {
            Op::Read { offset, len } => match DmaBuf::new(*len) {
                Ok(buf) => batch
                    .ch
                    .read(offset / bs, *len as u64 / bs, Sgl::single(buf), cb)
                    .map_err(|(e, _)| e),
                Err(e) => {
                    batch.error = Some(Error::Io(e.to_string()));
                    continue;
                }
            },
            Op::Write { offset, data } => match DmaBuf::new(data.len()) {
                Ok(mut buf) => {
                    buf.as_mut_slice().copy_from_slice(data);
                    batch
                        .ch
                        .write(offset / bs, data.len() as u64 / bs, Sgl::single(buf), cb)
                        .map_err(|(e, _)| e)
                }
                Err(e) => {
                    batch.error = Some(Error::Io(e.to_string()));
                    continue;
                }
            },
            Op::Zero { offset, len } => batch.ch.write_zeroes(offset / bs, len / bs, cb),
            Op::Flush => {
                let blocks = batch.ch.bdev().num_blocks();
                batch.ch.flush(0, blocks, cb)
            }
        };
        match submitted {
            Ok(()) => {
                batch.in_flight += 1;
                batch.next += 1;
            }
            Err(crate::bdev::Error::QueueFull { .. }) => {
                // The reactor's channel is full of other I/O: put the step back and try again
                // shortly, or when one of ours completes.
                batch.ops[i] = Some(op);
                if batch.in_flight == 0 {
                    let held = Rc::clone(b);
                    drop(batch);
                    if reactor::set_timer(Duration::from_micros(100), move || pump(&held)).is_err()
                    {
                        let mut batch = b.borrow_mut();
                        batch.error = Some(Error::Io("not on a reactor".into()));
                        drop(batch);
                        pump(b);
                    }
                }
                return;
            }
            Err(e) => batch.error = Some(e.into()),
        }
    }
}

/// Copy `len` bytes at byte `from` of `ch`'s bdev to byte `to`: read into one buffer list,
/// then write the same list. The buffers come from the reactor's pool while at least half of
/// it stays free for the data path, so a cluster copied on write costs two device I/Os and no
/// allocation (fresh pages for each copy cost more than the copy itself).
pub fn copy(ch: Channel, from: u64, to: u64, len: usize, done: impl FnOnce(Result<()>) + 'static) {
    let pool_room = mem::pool_stats().map_or(0, |p| {
        p.large_free
            .saturating_sub(p.large_total / 2)
            .saturating_mul(LARGE_BUF)
    });
    let pooled = len <= pool_room;
    let mut sgl = Sgl::new();
    let mut left = len;
    while left > 0 {
        let n = left.min(LARGE_BUF);
        let pooled = if pooled { mem::take_large() } else { None };
        let pushed = match pooled {
            Some(b) => sgl.push(b, 0, n),
            None => match DmaBuf::new(n) {
                Ok(b) => sgl.push(b, 0, n),
                Err(e) => return done(Err(Error::Io(e.to_string()))),
            },
        };
        if let Err(e) = pushed {
            return done(Err(Error::Io(e.to_string())));
        }
        left -= n;
    }
    let bs = ch.bdev().block_size() as u64;
    let blocks = len as u64 / bs;
    let ch2 = ch.clone();
    // The buffers go back to the pool as the write's answer drops them.
    let write = move |sgl: Sgl, done: Box<dyn FnOnce(Result<()>)>| {
        retrying(
            move |sgl, cb| ch2.write(to / bs, blocks, sgl, cb),
            sgl,
            move |r: Result<Sgl>| done(r.map(|_| ())),
        )
    };
    retrying(
        move |sgl, cb| ch.read(from / bs, blocks, sgl, cb),
        sgl,
        Box::new(move |r| match r {
            Ok(sgl) => write(sgl, Box::new(done)),
            Err(e) => done(Err(e)),
        }),
    );
}

/// Submit an I/O on `sgl` with `submit`, again after a short wait while the channel is full,
/// and answer with the buffers back.
fn retrying<D: FnOnce(Result<Sgl>) + 'static>(
    submit: impl Fn(Sgl, Box<dyn FnOnce(IoDone)>) -> std::result::Result<(), SubmitError> + 'static,
    sgl: Sgl,
    done: D,
) {
    let done = Rc::new(RefCell::new(Some(done)));
    let answer = Rc::clone(&done);
    let cb: Box<dyn FnOnce(IoDone)> = Box::new(move |d: IoDone| {
        if let Some(f) = answer.borrow_mut().take() {
            f(d.status
                .map(|()| d.sgl)
                .map_err(|e| Error::Io(e.to_string())));
        }
    });
    match submit(sgl, cb) {
        Ok(()) => {}
        Err((crate::bdev::Error::QueueFull { .. }, sgl)) => {
            let unanswered = Rc::clone(&done);
            let again = move || {
                if let Some(f) = done.borrow_mut().take() {
                    retrying(submit, sgl, f);
                }
            };
            if let Err(e) = reactor::set_timer(Duration::from_micros(100), again) {
                if let Some(f) = unanswered.borrow_mut().take() {
                    f(Err(Error::Io(format!("a full channel and no timer: {e}"))));
                }
            }
        }
        Err((e, _)) => {
            if let Some(f) = done.borrow_mut().take() {
                f(Err(e.into()));
            }
        }
    }
}

/// How long a control thread waits for the owner reactor before giving up on an answer.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(120);

/// Start `work` on reactor `on` and wait for the answer it passes to its reply function. For
/// control threads only: it blocks.
pub fn blocking<R: Send + 'static>(
    messenger: &Messenger,
    on: ReactorId,
    work: impl FnOnce(Box<dyn FnOnce(R) + Send>) + Send + 'static,
) -> Result<R> {
    if reactor::current().is_some() {
        return Err(Error::Invalid(
            "a store control call was made on a reactor; it blocks, so make it from a control thread".into(),
        ));
    }
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    messenger
        .send_patiently(on, move || {
            work(Box::new(move |r| {
                let _ = tx.send(r);
            }))
        })
        .map_err(|e| Error::Io(format!("the owner reactor: {e}")))?;
    rx.recv_timeout(CONTROL_TIMEOUT)
        .map_err(|_| Error::Io("the owner reactor did not answer".into()))
}
