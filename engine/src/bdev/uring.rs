//! The `uring` bdev: a file or block device through io_uring, opened with O_DIRECT.
//!
//! One ring per reactor serves every uring bdev on it. Channels push submission entries as
//! requests arrive; the ring's poller submits them in one `io_uring_enter` per loop (batching)
//! and reaps completions into the owning channels' completion queues. The ring's fd is
//! registered with the reactor, so a completion wakes a parked adaptive reactor. In-flight
//! requests sit in a fixed table of slots whose iovec arrays the kernel reads; the table never
//! moves, and nothing is allocated per I/O.
//!
//! Each reactor's buffer pools are registered with its ring, so a single-buffer I/O on a pool
//! buffer goes as READ_FIXED/WRITE_FIXED and the kernel skips pinning its pages.
//!
//! Flush is `fdatasync`; unmap punches a hole and write-zeroes zeroes a range with `fallocate`
//! on regular files. On block devices both are left to the generic layer (write-zeroes is then
//! emulated by writes; unmap is reported unsupported).

use std::cell::{Cell, RefCell};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;

use io_uring::{opcode, types, IoUring};

use super::backend::{Backend, BackendChannel, Completions};
use super::{register, Bdev, BdevInfo, BdevIo, Errno, Error, IoError, IoType, Result};
use crate::mem::{Buf, MAX_SEGS};
use crate::reactor::{self, PollStatus, PollerHandle, ReactorLocal};

/// Submission-queue entries per ring, and in-flight I/Os per reactor across its uring bdevs.
pub const RING_ENTRIES: u32 = 1024;

pub struct UringOpts {
    pub name: String,
    pub filename: String,
    /// 512 or 4096; 0 takes the device's logical block size (512 for a regular file).
    pub block_size: u32,
    /// 0 to generate.
    pub uuid: u128,
}

struct Slot {
    io: Option<BdevIo>,
    done: Option<Completions>,
    iov: [libc::iovec; MAX_SEGS],
}

/// The io_uring of one reactor.
struct Ring {
    ring: RefCell<IoUring>,
    slots: RefCell<Box<[Slot]>>,
    free: RefCell<Vec<u32>>,
    unsubmitted: Cell<u32>,
    /// Whether the reactor's pool regions are registered as fixed buffers.
    fixed: bool,
    poller: RefCell<Option<PollerHandle>>,
}

static RING: ReactorLocal<RefCell<Option<Rc<Ring>>>> = ReactorLocal::new(|| RefCell::new(None));

impl Ring {
    /// This reactor's ring, made on first use.
    fn current() -> Result<Rc<Ring>> {
        RING.with(|cell| {
            if let Some(r) = &*cell.borrow() {
                return Ok(Rc::clone(r));
            }
            // One thread submits and reaps (the reactor), and completions must not interrupt it
            // with IPIs: the kernel flags pending completion work in the SQ ring instead, and
            // the poller enters the kernel to run it (see `poll`). Older kernels lack these
            // flags; then the ring works the classic way.
            let ring = IoUring::builder()
                .setup_single_issuer()
                .setup_coop_taskrun()
                .setup_taskrun_flag()
                .build(RING_ENTRIES)
                .or_else(|_| IoUring::new(RING_ENTRIES))
                .map_err(|e| Error::os("io_uring_setup", &e))?;
            // Register this reactor's buffer pools: I/O on pool buffers then skips pinning its
            // pages each time. Without the memlock allowance it falls back to plain buffers.
            let fixed = match crate::mem::pool_regions() {
                Ok(regions) => {
                    let iovs = regions.map(|(base, len)| libc::iovec {
                        iov_base: base.cast(),
                        iov_len: len,
                    });
                    // The regions belong to this reactor's pools, which live until the reactor
                    // shuts down and never move; the kernel pins their pages while registered.
                    // SAFETY: and fixed I/O names only pool buffers that are alive.
                    unsafe { ring.submitter().register_buffers(&iovs) }.is_ok()
                }
                Err(_) => false,
            };
            let fd = ring.as_raw_fd();
            let empty = libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            };
            let r = Rc::new(Ring {
                ring: RefCell::new(ring),
                slots: RefCell::new(
                    (0..RING_ENTRIES)
                        .map(|_| Slot {
                            io: None,
                            done: None,
                            iov: [empty; MAX_SEGS],
                        })
                        .collect(),
                ),
                free: RefCell::new((0..RING_ENTRIES).rev().collect()),
                unsubmitted: Cell::new(0),
                fixed,
                poller: RefCell::new(None),
            });
            reactor::register_fd(fd).map_err(|_| Error::NotOnReactor)?;
            let held = Rc::clone(&r);
            let handle = reactor::register_poller("uring", move || held.poll())
                .map_err(|_| Error::NotOnReactor)?;
            *r.poller.borrow_mut() = Some(handle);
            *cell.borrow_mut() = Some(Rc::clone(&r));
            Ok(r)
        })
        .map_err(|_| Error::NotOnReactor)?
    }

    fn submit(
        &self,
        fd: RawFd,
        mut io: BdevIo,
        block_size: u64,
        done: &Completions,
    ) -> std::result::Result<(), (Error, BdevIo)> {
        let Some(index) = self.free.borrow_mut().pop() else {
            return Err((
                Error::QueueFull {
                    bdev: "uring".into(),
                    depth: RING_ENTRIES as usize,
                },
                io,
            ));
        };
        let offset = io.offset_blocks * block_size;
        let len = io.num_blocks * block_size;
        let mut slots = self.slots.borrow_mut();
        let slot = &mut slots[index as usize];
        let entry = match io.io_type {
            IoType::Read | IoType::Write => {
                let nsegs = io.sgl.segs().len();
                for (iov, seg) in slot.iov.iter_mut().zip(io.sgl.segs_mut()) {
                    let bytes = seg.as_mut_slice();
                    *iov = libc::iovec {
                        iov_base: bytes.as_mut_ptr().cast(),
                        iov_len: bytes.len(),
                    };
                }
                let pool_index = match io.sgl.segs()[0].buf() {
                    Buf::Pool(p) if nsegs == 1 && self.fixed => Some(p.region_index()),
                    _ => None,
                };
                if let Some(index) = pool_index {
                    let (ptr, len) = (slot.iov[0].iov_base.cast(), slot.iov[0].iov_len as u32);
                    if io.io_type == IoType::Read {
                        opcode::ReadFixed::new(types::Fd(fd), ptr, len, index)
                            .offset(offset)
                            .build()
                    } else {
                        opcode::WriteFixed::new(types::Fd(fd), ptr, len, index)
                            .offset(offset)
                            .build()
                    }
                } else if nsegs == 1 && io.io_type == IoType::Read {
                    opcode::Read::new(
                        types::Fd(fd),
                        slot.iov[0].iov_base.cast(),
                        slot.iov[0].iov_len as u32,
                    )
                    .offset(offset)
                    .build()
                } else if nsegs == 1 {
                    opcode::Write::new(
                        types::Fd(fd),
                        slot.iov[0].iov_base.cast(),
                        slot.iov[0].iov_len as u32,
                    )
                    .offset(offset)
                    .build()
                } else if io.io_type == IoType::Read {
                    opcode::Readv::new(types::Fd(fd), slot.iov.as_ptr(), nsegs as u32)
                        .offset(offset)
                        .build()
                } else {
                    opcode::Writev::new(types::Fd(fd), slot.iov.as_ptr(), nsegs as u32)
                        .offset(offset)
                        .build()
                }
            }
            IoType::Flush => opcode::Fsync::new(types::Fd(fd))
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
            IoType::Unmap => opcode::Fallocate::new(types::Fd(fd), len)
                .offset(offset)
                .mode(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE)
                .build(),
            IoType::WriteZeroes => opcode::Fallocate::new(types::Fd(fd), len)
                .offset(offset)
                .mode(libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE)
                .build(),
        }
        .user_data(index as u64);
        let mut ring = self.ring.borrow_mut();
        // The entry points at `slot.iov` and so at the request's buffers. The slot table never
        // moves; the slot stays taken, holding the request and its buffers, until reaped.
        // SAFETY: so everything the kernel reads stays valid until the completion.
        let mut pushed = unsafe { ring.submission().push(&entry) }.is_ok();
        if !pushed {
            // The submission queue is full: hand it to the kernel and try once more.
            let _ = ring.submit();
            self.unsubmitted.set(0);
            // SAFETY: as above.
            pushed = unsafe { ring.submission().push(&entry) }.is_ok();
        }
        if !pushed {
            drop(ring);
            drop(slots);
            self.free.borrow_mut().push(index);
            return Err((
                Error::QueueFull {
                    bdev: "uring".into(),
                    depth: RING_ENTRIES as usize,
                },
                io,
            ));
        }
        slot.done = Some(done.clone());
        slot.io = Some(io);
        self.unsubmitted.set(self.unsubmitted.get() + 1);
        Ok(())
    }

    fn poll(&self) -> PollStatus {
        let mut status = PollStatus::Idle;
        let mut ring = self.ring.borrow_mut();
        // Enter the kernel to submit, or to run completion work the kernel has flagged
        // (cooperative task running: no interrupt reaches a polling reactor).
        if self.unsubmitted.get() > 0 || ring.submission().taskrun() {
            match ring.submit() {
                Ok(_) => self.unsubmitted.set(0),
                Err(e) => tracing::warn!("io_uring_enter: {e}"),
            }
            status = PollStatus::Busy;
        }
        let mut slots = self.slots.borrow_mut();
        let mut free = self.free.borrow_mut();
        for cqe in ring.completion() {
            let index = cqe.user_data() as usize;
            let Some(slot) = slots.get_mut(index) else {
                continue;
            };
            let (Some(io), Some(done)) = (slot.io.take(), slot.done.take()) else {
                continue;
            };
            let res = cqe.result();
            let expected = if io.io_type.has_data() {
                io.sgl.len() as i64
            } else {
                0
            };
            let outcome = if res < 0 {
                Err(IoError::Device(Errno(-res)))
            } else if io.io_type.has_data() && (res as i64) != expected {
                // O_DIRECT transfers whole blocks; a short one means the device shrank.
                Err(IoError::Device(Errno(libc::EIO)))
            } else {
                Ok(())
            };
            done.complete(io, outcome);
            free.push(index as u32);
            status = PollStatus::Busy;
        }
        status
    }
}

impl Drop for Ring {
    /// The reactor is shutting down with I/O still in the kernel: those requests point at
    /// buffers that must not be freed (nor their pages reused) while the kernel may still write
    /// them. Wait for every one, then complete it, so each callback still runs exactly once.
    /// This blocks, on the shutdown path only, for as long as the device takes.
    fn drop(&mut self) {
        let ring = self.ring.get_mut();
        let slots = self.slots.get_mut();
        let mut in_flight = slots.iter().filter(|s| s.io.is_some()).count();
        while in_flight > 0 {
            if let Err(e) = ring.submit_and_wait(1) {
                if e.raw_os_error() != Some(libc::EINTR) {
                    tracing::error!(
                        "io_uring at shutdown: {e}; {in_flight} I/Os abandoned with their buffers"
                    );
                    for slot in slots.iter_mut() {
                        if let Some(io) = slot.io.take() {
                            std::mem::forget(io); // the kernel may still write its buffers
                        }
                    }
                    return;
                }
            }
            for cqe in ring.completion() {
                let Some(slot) = slots.get_mut(cqe.user_data() as usize) else {
                    continue;
                };
                if let Some(io) = slot.io.take() {
                    slot.done = None;
                    in_flight -= 1;
                    let status = if cqe.result() < 0 {
                        Err(IoError::Device(Errno(-cqe.result())))
                    } else {
                        Ok(())
                    };
                    io.finish(status);
                }
            }
        }
    }
}

struct Uring {
    fd: Arc<OwnedFd>,
    filename: String,
    block_size: u64,
    is_blkdev: bool,
}

struct UringChannel {
    fd: Arc<OwnedFd>,
    block_size: u64,
    ring: Rc<Ring>,
}

impl Backend for Uring {
    fn product_name(&self) -> &'static str {
        "URING bdev"
    }

    fn supports(&self, io_type: IoType) -> bool {
        match io_type {
            IoType::Read | IoType::Write | IoType::Flush => true,
            IoType::Unmap | IoType::WriteZeroes => !self.is_blkdev,
        }
    }

    /// O_DIRECT wants buffers aligned to the logical block size.
    fn buf_align(&self) -> usize {
        self.block_size as usize
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn save_config(&self, bdev: &Bdev) -> Option<serde_json::Value> {
        Some(
            serde_json::json!({"method": "bdev_uring_create", "params": {
            "name": bdev.name(), "filename": self.filename,
            "block_size": bdev.block_size(), "uuid": bdev.uuid_string()}}),
        )
    }

    fn open_channel(&self) -> Result<Box<dyn BackendChannel>> {
        Ok(Box::new(UringChannel {
            fd: Arc::clone(&self.fd),
            block_size: self.block_size,
            ring: Ring::current()?,
        }))
    }

    fn driver_specific(&self) -> serde_json::Value {
        serde_json::json!({ "uring": { "filename": self.filename } })
    }
}

impl BackendChannel for UringChannel {
    fn submit(
        &mut self,
        io: BdevIo,
        done: &Completions,
    ) -> std::result::Result<(), (Error, BdevIo)> {
        self.ring
            .submit(self.fd.as_raw_fd(), io, self.block_size, done)
    }
}

/// Create and register a uring bdev (`bdev_uring_create`).
pub fn create(opts: UringOpts) -> Result<Bdev> {
    let path = std::ffi::CString::new(opts.filename.as_bytes())
        .map_err(|_| Error::InvalidArgument("a file name with a NUL byte".into()))?;
    // SAFETY: `path` is a valid NUL-terminated string; open returns a new fd or -1.
    let raw = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_DIRECT | libc::O_CLOEXEC,
        )
    };
    if raw < 0 {
        let e = std::io::Error::last_os_error();
        return Err(if e.raw_os_error() == Some(libc::EINVAL) {
            Error::DirectIoRefused {
                path: opts.filename,
            }
        } else {
            Error::os(format!("open {}", opts.filename), &e)
        });
    }
    // SAFETY: `raw` is a new fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let meta = std::fs::metadata(&opts.filename)
        .map_err(|e| Error::os(format!("stat {}", opts.filename), &e))?;
    use std::os::unix::fs::FileTypeExt;
    let is_blkdev = meta.file_type().is_block_device();
    let (size, logical) = if is_blkdev {
        blkdev_geometry(fd.as_raw_fd())
            .map_err(|e| Error::os(format!("ioctl {}", opts.filename), &e))?
    } else if meta.is_file() {
        (meta.len(), 512)
    } else {
        return Err(Error::InvalidArgument(format!(
            "{} is neither a file nor a block device",
            opts.filename
        )));
    };
    let block_size = if opts.block_size == 0 {
        logical
    } else {
        opts.block_size
    };
    if block_size < logical {
        return Err(Error::InvalidArgument(format!(
            "block size {block_size} is below the device's logical block size {logical}"
        )));
    }
    let num_blocks = size / block_size as u64;
    if num_blocks == 0 {
        return Err(Error::InvalidArgument(format!(
            "{} holds {size} bytes: less than one {block_size}-byte block",
            opts.filename
        )));
    }
    let backend = Uring {
        fd: Arc::new(fd),
        filename: opts.filename.clone(),
        block_size: block_size as u64,
        is_blkdev,
    };
    register(Bdev::new(
        BdevInfo {
            name: opts.name,
            uuid: opts.uuid,
            block_size,
            num_blocks,
        },
        Box::new(backend),
    )?)
}

fn blkdev_geometry(fd: RawFd) -> std::io::Result<(u64, u32)> {
    const BLKSSZGET: libc::c_ulong = 0x1268;
    const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
    let mut size: u64 = 0;
    let mut logical: libc::c_int = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 and BLKSSZGET one int into the pointed-to locals.
    let (a, b) = unsafe {
        (
            libc::ioctl(fd, BLKGETSIZE64, &mut size as *mut u64),
            libc::ioctl(fd, BLKSSZGET, &mut logical as *mut libc::c_int),
        )
    };
    if a < 0 || b < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((size, logical.max(512) as u32))
}
