//! Block devices from C: create and delete malloc, null, uring and error bdevs (and set the
//! error bdev's faults), open descriptors, get per-thread channels, submit I/O with completion
//! callbacks, allocate DMA buffers, read statistics.

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tandem::bdev::{
    self, error as ebdev, malloc, null, uring, Channel, Desc, IoCallback, IoDone, IoType,
};
use tandem::mem::{Buf, DmaBuf, ForeignBuf, Sgl, MAX_SEGS};
use tandem::reactor::{self, ReactorId};

use crate::handle::{self, handle_kind, Shell};
use crate::{c_str, guard, put};

fn errno(e: &bdev::Error) -> c_int {
    e.errno()
}

/// Options for the RAM and null bdevs. Fill with `tandem_bdev_opts_init`.
#[repr(C)]
pub struct tandem_bdev_opts {
    /// `sizeof(struct tandem_bdev_opts)` as the caller was compiled with.
    pub opts_size: usize,
    /// The bdev's name (required).
    pub name: *const c_char,
    /// 512 or 4096. Default 512.
    pub block_size: u32,
    /// Capacity in blocks (required, nonzero).
    pub num_blocks: u64,
}

/// Fill `opts` with defaults. Any thread.
#[no_mangle]
pub extern "C" fn tandem_bdev_opts_init(opts: *mut tandem_bdev_opts, opts_size: usize) -> c_int {
    guard(|| {
        if opts.is_null() || opts_size < std::mem::size_of::<tandem_bdev_opts>() {
            return -libc::EINVAL;
        }
        put(
            opts,
            tandem_bdev_opts {
                opts_size,
                name: std::ptr::null(),
                block_size: 512,
                num_blocks: 0,
            },
        )
    })
}

fn read_opts(opts: *const tandem_bdev_opts) -> Result<(String, u32, u64), c_int> {
    if opts.is_null() {
        return Err(-libc::EINVAL);
    }
    // SAFETY: non-null, and the caller passes an initialised struct.
    let o = unsafe { &*opts };
    if o.opts_size < std::mem::size_of::<tandem_bdev_opts>() {
        return Err(-libc::EINVAL);
    }
    Ok((c_str(o.name)?.to_owned(), o.block_size, o.num_blocks))
}

/// Create a bdev from `opts` with `make` (name, block size, block count).
fn create_from(
    opts: *const tandem_bdev_opts,
    make: fn(String, u32, u64) -> bdev::Result<bdev::Bdev>,
) -> c_int {
    match read_opts(opts) {
        Ok((name, block_size, num_blocks)) => {
            make(name, block_size, num_blocks).map_or_else(|e| errno(&e), |_| 0)
        }
        Err(e) => e,
    }
}

/// Create a RAM bdev (`bdev_malloc_create`). `-EEXIST` if the name is taken. Any thread.
#[no_mangle]
pub extern "C" fn tandem_bdev_malloc_create(opts: *const tandem_bdev_opts) -> c_int {
    guard(|| {
        create_from(opts, |name, block_size, num_blocks| {
            malloc::create(malloc::MallocOpts {
                name,
                num_blocks,
                block_size,
                uuid: 0,
            })
        })
    })
}

/// Create a null bdev: writes vanish, reads return zeros (`bdev_null_create`). Any thread.
#[no_mangle]
pub extern "C" fn tandem_bdev_null_create(opts: *const tandem_bdev_opts) -> c_int {
    guard(|| {
        create_from(opts, |name, block_size, num_blocks| {
            null::create(null::NullOpts {
                name,
                num_blocks,
                block_size,
                uuid: 0,
            })
        })
    })
}

/// Create a bdev on a file or block device through io_uring with O_DIRECT
/// (`bdev_uring_create`). `block_size` 0 takes the device's. Any thread.
#[no_mangle]
pub extern "C" fn tandem_bdev_uring_create(
    name: *const c_char,
    filename: *const c_char,
    block_size: u32,
) -> c_int {
    guard(|| {
        let (name, filename) = match (c_str(name), c_str(filename)) {
            (Ok(n), Ok(f)) => (n.to_owned(), f.to_owned()),
            _ => return -libc::EINVAL,
        };
        uring::create(uring::UringOpts {
            name,
            filename,
            block_size,
            uuid: 0,
        })
        .map_or_else(|e| errno(&e), |_| 0)
    })
}

/// Create an error-injection bdev over `base`, named `name` or, if NULL, `EE_<base>`
/// (`bdev_error_create`). The base is claimed. Any thread.
#[no_mangle]
pub extern "C" fn tandem_bdev_error_create(base: *const c_char, name: *const c_char) -> c_int {
    guard(|| {
        let base = match c_str(base) {
            Ok(b) => b.to_owned(),
            Err(e) => return e,
        };
        let name = if name.is_null() {
            None
        } else {
            match c_str(name) {
                Ok(n) => Some(n.to_owned()),
                Err(e) => return e,
            }
        };
        ebdev::create(ebdev::ErrorOpts {
            name,
            base,
            uuid: 0,
        })
        .map_or_else(|e| errno(&e), |_| 0)
    })
}

/// `tandem_fault.action`: complete with -EIO without touching the base.
pub const TANDEM_FAULT_FAIL: u32 = 0;
/// `tandem_fault.action`: hold `delay_us`, then pass to the base.
pub const TANDEM_FAULT_DELAY: u32 = 1;
/// `tandem_fault.action`: never complete until the faults are cleared (then -ECANCELED).
pub const TANDEM_FAULT_DROP: u32 = 2;
/// `tandem_fault.action`: write only `tear_blocks` leading blocks, then fail with -EIO.
pub const TANDEM_FAULT_TEAR: u32 = 3;

/// I/O type bits for `tandem_fault.io_types`.
pub const TANDEM_IO_READ: u32 = 1 << 0;
pub const TANDEM_IO_WRITE: u32 = 1 << 1;
pub const TANDEM_IO_FLUSH: u32 = 1 << 2;
pub const TANDEM_IO_UNMAP: u32 = 1 << 3;
pub const TANDEM_IO_WRITE_ZEROES: u32 = 1 << 4;

/// A fault for an error bdev. Fill with `tandem_fault_init`.
#[repr(C)]
pub struct tandem_fault {
    /// `sizeof(struct tandem_fault)` as the caller was compiled with.
    pub opts_size: usize,
    /// One of TANDEM_FAULT_*: an integer, not an enum, so that any value C stores is defined
    /// behaviour and an unknown one is refused with -EINVAL.
    pub action: u32,
    /// TANDEM_IO_* bits; 0 means every type. Default 0.
    pub io_types: u32,
    /// Hit only I/O overlapping blocks [lba_start, lba_end); lba_end 0 means any. Default any.
    pub lba_start: u64,
    pub lba_end: u64,
    /// Hit only the nth matching I/O (1 = the next); 0 means every one. Default 0.
    pub nth: u64,
    /// With nth 0: hit each matching I/O with this probability in millionths (0 = always),
    /// drawn from `seed`. Default 0.
    pub per_million: u32,
    pub seed: u64,
    pub delay_us: u64,
    pub tear_blocks: u64,
}

/// Fill `fault` with defaults (fail every I/O). Any thread.
#[no_mangle]
pub extern "C" fn tandem_fault_init(fault: *mut tandem_fault, opts_size: usize) -> c_int {
    guard(|| {
        if fault.is_null() || opts_size < std::mem::size_of::<tandem_fault>() {
            return -libc::EINVAL;
        }
        put(
            fault,
            tandem_fault {
                opts_size,
                action: TANDEM_FAULT_FAIL,
                io_types: 0,
                lba_start: 0,
                lba_end: 0,
                nth: 0,
                per_million: 0,
                seed: 0,
                delay_us: 0,
                tear_blocks: 1,
            },
        )
    })
}

/// Set the fault of error bdev `name`, replacing any other (`bdev_error_inject_error`). Any
/// thread; I/O already submitted is not affected.
#[no_mangle]
pub extern "C" fn tandem_bdev_error_inject(
    name: *const c_char,
    fault: *const tandem_fault,
) -> c_int {
    guard(|| {
        let name = match c_str(name) {
            Ok(n) => n,
            Err(e) => return e,
        };
        if fault.is_null() {
            return -libc::EINVAL;
        }
        // SAFETY: non-null, and the caller passes an initialised struct.
        let f = unsafe { &*fault };
        if f.opts_size < std::mem::size_of::<tandem_fault>() {
            return -libc::EINVAL;
        }
        let types: Vec<IoType> = IoType::ALL
            .iter()
            .copied()
            .filter(|t| f.io_types == 0 || f.io_types & (1 << *t as u32) != 0)
            .collect();
        let action = match f.action {
            TANDEM_FAULT_FAIL => ebdev::Action::Fail,
            TANDEM_FAULT_DELAY => ebdev::Action::Delay(Duration::from_micros(f.delay_us)),
            TANDEM_FAULT_DROP => ebdev::Action::Drop,
            TANDEM_FAULT_TEAR => ebdev::Action::Tear {
                blocks: f.tear_blocks,
            },
            _ => return -libc::EINVAL,
        };
        let when = match (f.nth, f.per_million) {
            (0, 0) => ebdev::When::Every,
            (0, p) => ebdev::When::Fraction {
                per_million: p,
                seed: f.seed,
            },
            (n, _) => ebdev::When::Nth(n),
        };
        let fault = ebdev::Fault {
            action,
            io_types: ebdev::IoTypes::of(&types),
            lba_range: (f.lba_end != 0).then_some((f.lba_start, f.lba_end)),
            when,
        };
        ebdev::set_fault(name, fault).map_or_else(|e| errno(&e), |()| 0)
    })
}

/// Clear the fault of error bdev `name`; dropped I/O completes with -ECANCELED. Any thread.
#[no_mangle]
pub extern "C" fn tandem_bdev_error_clear(name: *const c_char) -> c_int {
    guard(|| match c_str(name) {
        Ok(n) => ebdev::clear(n).map_or_else(|e| errno(&e), |()| 0),
        Err(e) => e,
    })
}

/// Delete a bdev: its descriptors hear TANDEM_BDEV_EVENT_REMOVE, I/O in flight completes,
/// new I/O fails with -ENODEV. `-EBUSY` if claimed. Any thread.
#[no_mangle]
pub extern "C" fn tandem_bdev_delete(name: *const c_char) -> c_int {
    guard(|| match c_str(name) {
        Ok(n) => bdev::delete(n).map_or_else(|e| errno(&e), |()| 0),
        Err(e) => e,
    })
}

/// What a bdev is.
#[repr(C)]
pub struct tandem_bdev_info {
    pub block_size: u32,
    pub num_blocks: u64,
    /// Required alignment of buffer addresses and lengths, in bytes.
    pub buf_align: u32,
    /// 16 bytes, big-endian.
    pub uuid: [u8; 16],
}

/// Events a descriptor hears.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum tandem_bdev_event {
    /// The bdev was deleted: finish, then close the descriptor.
    TANDEM_BDEV_EVENT_REMOVE = 0,
}

/// Receives descriptor events: on the engine thread that opened it, or, for a descriptor
/// opened elsewhere, on the thread that deleted the bdev.
pub type tandem_event_fn =
    Option<unsafe extern "C" fn(cb_arg: *mut c_void, event: tandem_bdev_event)>;

/// An open bdev.
pub struct tandem_desc {
    shell: Shell<Desc>,
}

handle_kind!(tandem_desc, Desc, 0x7461_6e64_6465_7363);

struct CEvent(
    unsafe extern "C" fn(*mut c_void, tandem_bdev_event),
    *mut c_void,
);
// SAFETY: the event callback and its argument are the caller's to make thread-safe, as with any
// C callback registered for delivery on another thread.
unsafe impl Send for CEvent {}
// SAFETY: as above.
unsafe impl Sync for CEvent {}

impl CEvent {
    fn call(&self, event: tandem_bdev_event) {
        // SAFETY: the caller's callback with its own argument.
        unsafe { (self.0)(self.1, event) }
    }
}

/// Open bdev `name`, read-write if `write`. `event_cb` (may be NULL) hears its removal. Writes
/// the descriptor to `*out`. Any thread.
#[no_mangle]
pub extern "C" fn tandem_bdev_open(
    name: *const c_char,
    write: bool,
    event_cb: tandem_event_fn,
    cb_arg: *mut c_void,
    out: *mut *mut tandem_desc,
) -> c_int {
    guard(|| {
        if out.is_null() {
            return -libc::EINVAL;
        }
        let name = match c_str(name) {
            Ok(n) => n,
            Err(e) => return e,
        };
        let cb: Option<bdev::EventCallback> = event_cb.map(|f| {
            let ev = CEvent(f, cb_arg);
            Arc::new(move |e: bdev::BdevEvent| {
                let code = match e {
                    bdev::BdevEvent::Remove => tandem_bdev_event::TANDEM_BDEV_EVENT_REMOVE,
                };
                ev.call(code)
            }) as bdev::EventCallback
        });
        match bdev::open(name, write, cb) {
            Ok(d) => put(out, handle::make::<tandem_desc>(d)),
            Err(e) => errno(&e),
        }
    })
}

/// The bdev's geometry. Any thread.
#[no_mangle]
pub extern "C" fn tandem_desc_get_info(
    desc: *const tandem_desc,
    out: *mut tandem_bdev_info,
) -> c_int {
    guard(|| {
        if out.is_null() {
            return -libc::EINVAL;
        }
        // SAFETY: the handle contract of `handle::get`.
        match unsafe { handle::get(desc) } {
            Ok(d) => {
                let b = d.bdev();
                put(
                    out,
                    tandem_bdev_info {
                        block_size: b.block_size(),
                        num_blocks: b.num_blocks(),
                        buf_align: b.buf_align() as u32,
                        uuid: b.uuid().to_be_bytes(),
                    },
                )
            }
            Err(e) => e,
        }
    })
}

/// Close a descriptor: its channels fail new I/O with -EBADF; I/O in flight completes. Any
/// thread. The handle is stale afterwards.
#[no_mangle]
pub extern "C" fn tandem_desc_close(desc: *mut tandem_desc) -> c_int {
    guard(|| {
        // SAFETY: the handle contract of `handle::destroy`.
        match unsafe { handle::destroy(desc) } {
            Ok(d) => {
                d.close();
                0
            }
            Err(e) => e,
        }
    })
}

pub struct ChannelObj {
    channel: Channel,
    reactor: ReactorId,
    /// Reactor ids restart with each engine; the OS thread pins the channel to its owner.
    thread: std::thread::ThreadId,
}

/// A descriptor's I/O channel on one engine thread.
pub struct tandem_channel {
    shell: Shell<ChannelObj>,
}

handle_kind!(tandem_channel, ChannelObj, 0x7461_6e64_6368_616e);

/// This engine thread's I/O channel for the descriptor. Writes it to `*out`. Call on an engine
/// thread (a spawned reactor or inside `tandem_thread_poll`): `-EPERM` elsewhere.
#[no_mangle]
pub extern "C" fn tandem_desc_get_channel(
    desc: *const tandem_desc,
    out: *mut *mut tandem_channel,
) -> c_int {
    guard(|| {
        if out.is_null() {
            return -libc::EINVAL;
        }
        // SAFETY: the handle contract of `handle::get`.
        let d = match unsafe { handle::get(desc) } {
            Ok(d) => d,
            Err(e) => return e,
        };
        let Some(reactor) = reactor::current() else {
            return -libc::EPERM;
        };
        match d.channel() {
            Ok(channel) => put(
                out,
                handle::make::<tandem_channel>(ChannelObj {
                    channel,
                    reactor,
                    thread: std::thread::current().id(),
                }),
            ),
            Err(e) => errno(&e),
        }
    })
}

fn on_its_thread(ch: *const tandem_channel) -> Result<&'static ChannelObj, c_int> {
    // SAFETY: the handle contract of `handle::get`.
    let obj = unsafe { handle::get(ch) }?;
    if reactor::current() != Some(obj.reactor) || std::thread::current().id() != obj.thread {
        return Err(-libc::EPERM);
    }
    Ok(obj)
}

/// Release a channel, on the thread it was got on. The handle is stale afterwards.
#[no_mangle]
pub extern "C" fn tandem_channel_put(ch: *mut tandem_channel) -> c_int {
    guard(|| {
        if let Err(e) = on_its_thread(ch) {
            return e;
        }
        // SAFETY: the handle contract; the channel's own thread is its only user.
        unsafe { handle::destroy(ch) }.map_or_else(|e| e, |_| 0)
    })
}

/// An I/O completion: `status` is 0 or a negative errno. Runs on the submitting thread, once,
/// never inside the submit call.
pub type tandem_io_cb = Option<unsafe extern "C" fn(cb_arg: *mut c_void, status: c_int)>;

fn callback(cb: unsafe extern "C" fn(*mut c_void, c_int), cb_arg: *mut c_void) -> IoCallback {
    IoCallback::new(move |d: IoDone| {
        let status = d.status.map_or_else(|e| e.errno(), |()| 0);
        drop(d.sgl);
        // SAFETY: the caller's completion with its own argument, on the submitting thread.
        unsafe { cb(cb_arg, status) }
    })
}

/// Submit a read or write whose buffers were just gathered (or refused).
fn submit_data(
    ch: *const tandem_channel,
    io_type: IoType,
    offset: u64,
    blocks: u64,
    sgl: Result<Sgl, c_int>,
    cb: tandem_io_cb,
    cb_arg: *mut c_void,
) -> c_int {
    match sgl {
        Ok(sgl) => submit(ch, io_type, offset, blocks, sgl, cb, cb_arg),
        Err(e) => e,
    }
}

fn submit(
    ch: *const tandem_channel,
    io_type: IoType,
    offset: u64,
    blocks: u64,
    sgl: Sgl,
    cb: tandem_io_cb,
    cb_arg: *mut c_void,
) -> c_int {
    let Some(cb) = cb else { return -libc::EINVAL };
    match on_its_thread(ch) {
        Ok(obj) => obj
            .channel
            .submit(io_type, offset, blocks, sgl, callback(cb, cb_arg))
            .map_or_else(|(e, _)| errno(&e), |()| 0),
        Err(e) => e,
    }
}

/// The caller's iovecs as a scatter-gather list of lent buffers.
fn lent(iov: *const libc::iovec, iovcnt: c_int) -> Result<Sgl, c_int> {
    if iov.is_null() || iovcnt <= 0 || iovcnt as usize > MAX_SEGS {
        return Err(-libc::EINVAL);
    }
    // SAFETY: non-null with `iovcnt` entries, as the caller promises.
    let iovs = unsafe { std::slice::from_raw_parts(iov, iovcnt as usize) };
    let mut sgl = Sgl::new();
    for v in iovs {
        // SAFETY: the caller lends each buffer to the I/O until its completion runs (the
        // documented contract of every read and write call).
        let buf = unsafe { ForeignBuf::new(v.iov_base.cast(), v.iov_len) }.ok_or(-libc::EINVAL)?;
        sgl.push(Buf::Foreign(buf), 0, v.iov_len)
            .map_err(|_| -libc::EINVAL)?;
    }
    Ok(sgl)
}

fn one(buf: *mut c_void, len: u64) -> Result<Sgl, c_int> {
    let v = libc::iovec {
        iov_base: buf,
        iov_len: len as usize,
    };
    lent(&v, 1)
}

fn length(ch: *const tandem_channel, blocks: u64) -> Result<u64, c_int> {
    // SAFETY: the handle contract of `handle::get`.
    let obj = unsafe { handle::get(ch) }?;
    blocks
        .checked_mul(obj.channel.bdev().block_size() as u64)
        .ok_or(-libc::ERANGE)
}

/// Read `num_blocks` blocks at `offset_blocks` into `buf`, which must stay valid until `cb`
/// runs. On the channel's thread.
#[no_mangle]
pub extern "C" fn tandem_read(
    ch: *mut tandem_channel,
    buf: *mut c_void,
    offset_blocks: u64,
    num_blocks: u64,
    cb: tandem_io_cb,
    cb_arg: *mut c_void,
) -> c_int {
    guard(|| {
        let sgl = length(ch, num_blocks).and_then(|len| one(buf, len));
        submit_data(ch, IoType::Read, offset_blocks, num_blocks, sgl, cb, cb_arg)
    })
}

/// Write `num_blocks` blocks from `buf` at `offset_blocks`. As `tandem_read`.
#[no_mangle]
pub extern "C" fn tandem_write(
    ch: *mut tandem_channel,
    buf: *mut c_void,
    offset_blocks: u64,
    num_blocks: u64,
    cb: tandem_io_cb,
    cb_arg: *mut c_void,
) -> c_int {
    guard(|| {
        let sgl = length(ch, num_blocks).and_then(|len| one(buf, len));
        submit_data(
            ch,
            IoType::Write,
            offset_blocks,
            num_blocks,
            sgl,
            cb,
            cb_arg,
        )
    })
}

/// Read into `iovcnt` (at most 32) buffers; their lengths must sum to the I/O's bytes.
#[no_mangle]
pub extern "C" fn tandem_readv(
    ch: *mut tandem_channel,
    iov: *const libc::iovec,
    iovcnt: c_int,
    offset_blocks: u64,
    num_blocks: u64,
    cb: tandem_io_cb,
    cb_arg: *mut c_void,
) -> c_int {
    guard(|| {
        let sgl = lent(iov, iovcnt);
        submit_data(ch, IoType::Read, offset_blocks, num_blocks, sgl, cb, cb_arg)
    })
}

/// Write from `iovcnt` (at most 32) buffers. As `tandem_readv`.
#[no_mangle]
pub extern "C" fn tandem_writev(
    ch: *mut tandem_channel,
    iov: *const libc::iovec,
    iovcnt: c_int,
    offset_blocks: u64,
    num_blocks: u64,
    cb: tandem_io_cb,
    cb_arg: *mut c_void,
) -> c_int {
    guard(|| {
        let sgl = lent(iov, iovcnt);
        submit_data(
            ch,
            IoType::Write,
            offset_blocks,
            num_blocks,
            sgl,
            cb,
            cb_arg,
        )
    })
}

/// Make written blocks in the range durable. On the channel's thread.
#[no_mangle]
pub extern "C" fn tandem_flush(
    ch: *mut tandem_channel,
    offset_blocks: u64,
    num_blocks: u64,
    cb: tandem_io_cb,
    cb_arg: *mut c_void,
) -> c_int {
    guard(|| {
        submit(
            ch,
            IoType::Flush,
            offset_blocks,
            num_blocks,
            Sgl::default(),
            cb,
            cb_arg,
        )
    })
}

/// Deallocate blocks; they read as zeros afterwards. On the channel's thread.
#[no_mangle]
pub extern "C" fn tandem_unmap(
    ch: *mut tandem_channel,
    offset_blocks: u64,
    num_blocks: u64,
    cb: tandem_io_cb,
    cb_arg: *mut c_void,
) -> c_int {
    guard(|| {
        submit(
            ch,
            IoType::Unmap,
            offset_blocks,
            num_blocks,
            Sgl::default(),
            cb,
            cb_arg,
        )
    })
}

/// Write zeros to blocks (emulated by writes where the device lacks it). On the channel's thread.
#[no_mangle]
pub extern "C" fn tandem_write_zeroes(
    ch: *mut tandem_channel,
    offset_blocks: u64,
    num_blocks: u64,
    cb: tandem_io_cb,
    cb_arg: *mut c_void,
) -> c_int {
    guard(|| {
        submit(
            ch,
            IoType::WriteZeroes,
            offset_blocks,
            num_blocks,
            Sgl::default(),
            cb,
            cb_arg,
        )
    })
}

/// Live DMA allocations by address: control path only (allocate and free), so that a double
/// or foreign free is an error rather than heap corruption.
static DMA: Mutex<Option<HashMap<usize, DmaBuf>>> = Mutex::new(None);

/// Allocate `size` bytes of zeroed, 4 KiB-aligned DMA memory. Writes the address to `*out`.
/// Any thread.
#[no_mangle]
pub extern "C" fn tandem_dma_alloc(size: usize, out: *mut *mut c_void) -> c_int {
    guard(|| {
        if out.is_null() || size == 0 {
            return -libc::EINVAL;
        }
        match DmaBuf::new(size) {
            Ok(mut b) => {
                let ptr = b.as_mut_ptr();
                DMA.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_or_insert_with(HashMap::new)
                    .insert(ptr as usize, b);
                put(out, ptr.cast())
            }
            Err(_) => -libc::ENOMEM,
        }
    })
}

/// Free memory from `tandem_dma_alloc`. `-EBADF` for an address it did not return or already
/// freed. Any thread; not while an I/O uses it.
#[no_mangle]
pub extern "C" fn tandem_dma_free(buf: *mut c_void) -> c_int {
    guard(|| {
        if buf.is_null() {
            return -libc::EINVAL;
        }
        let freed = DMA
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
            .and_then(|m| m.remove(&(buf as usize)));
        freed.map_or(-libc::EBADF, |_| 0)
    })
}

/// I/O totals of a bdev over all its channels (`bdev_get_iostat`).
#[repr(C)]
#[derive(Default)]
pub struct tandem_iostat {
    pub bytes_read: u64,
    pub num_read_ops: u64,
    pub bytes_written: u64,
    pub num_write_ops: u64,
    pub num_unmap_ops: u64,
    pub num_flush_ops: u64,
    pub num_write_zeroes_ops: u64,
    pub read_latency_ns: u64,
    pub write_latency_ns: u64,
    pub io_errors: u64,
}

/// Read bdev `name`'s I/O totals into `*out`. Any thread.
#[no_mangle]
pub extern "C" fn tandem_bdev_get_iostat(name: *const c_char, out: *mut tandem_iostat) -> c_int {
    guard(|| {
        if out.is_null() {
            return -libc::EINVAL;
        }
        let name = match c_str(name) {
            Ok(n) => n,
            Err(e) => return e,
        };
        let Some(b) = bdev::get(name) else {
            return -libc::ENODEV;
        };
        let s = b.iostat();
        put(
            out,
            tandem_iostat {
                bytes_read: s.bytes_read,
                num_read_ops: s.num_read_ops,
                bytes_written: s.bytes_written,
                num_write_ops: s.num_write_ops,
                num_unmap_ops: s.num_unmap_ops,
                num_flush_ops: s.num_flush_ops,
                num_write_zeroes_ops: s.num_write_zeroes_ops,
                read_latency_ns: s.read_latency_ns,
                write_latency_ns: s.write_latency_ns,
                io_errors: s.io_errors,
            },
        )
    })
}
