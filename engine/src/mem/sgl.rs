//! Scatter-gather lists: the buffers of one I/O, owned by the I/O while it is in flight and
//! handed back to the submitter at completion (so a failed or finished I/O never leaves the
//! caller without its memory, and a recycled list allocates nothing).

use std::fmt;

use super::{DmaBuf, Error, PoolBuf, Result};

/// Segments one I/O may carry (iovecs per io_uring readv/writev, SGL entries per command).
pub const MAX_SEGS: usize = 32;

/// A buffer an I/O can own.
pub enum Buf {
    Dma(DmaBuf),
    Pool(PoolBuf),
    /// Memory the caller owns (a C program's buffer): see [`ForeignBuf::new`].
    Foreign(ForeignBuf),
}

/// Memory owned outside Rust, lent to one I/O. Built only through the `unsafe` constructor,
/// whose caller promises what Rust cannot check.
pub struct ForeignBuf {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

impl ForeignBuf {
    /// # Safety
    /// `ptr` must be valid for reads and writes of `len` bytes until the `ForeignBuf` (or the
    /// I/O holding it) is dropped, and nothing else may touch that memory meanwhile, with one
    /// exception: others may read it while the I/O holding this buffer only reads it too (a
    /// write's data lent to two devices at once).
    pub unsafe fn new(ptr: *mut u8, len: usize) -> Option<ForeignBuf> {
        Some(ForeignBuf {
            ptr: std::ptr::NonNull::new(ptr)?,
            len,
        })
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: the constructor's caller promised `len` valid, exclusively lent bytes.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`; `&mut self` excludes other access through this value.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Buf {
    pub fn len(&self) -> usize {
        match self {
            Buf::Dma(b) => b.len(),
            Buf::Pool(b) => b.len(),
            Buf::Foreign(b) => b.len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn as_slice(&self) -> &[u8] {
        match self {
            Buf::Dma(b) => b.as_slice(),
            Buf::Pool(b) => b.as_slice(),
            Buf::Foreign(b) => b.as_slice(),
        }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        match self {
            Buf::Dma(b) => b.as_mut_slice(),
            Buf::Pool(b) => b.as_mut_slice(),
            Buf::Foreign(b) => b.as_mut_slice(),
        }
    }
}

impl From<DmaBuf> for Buf {
    fn from(b: DmaBuf) -> Self {
        Buf::Dma(b)
    }
}

impl From<PoolBuf> for Buf {
    fn from(b: PoolBuf) -> Self {
        Buf::Pool(b)
    }
}

/// A byte range of one buffer.
pub struct Seg {
    buf: Buf,
    offset: usize,
    len: usize,
}

impl Seg {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.buf.as_slice()[self.offset..self.offset + self.len]
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        let (o, l) = (self.offset, self.len);
        &mut self.buf.as_mut_slice()[o..o + l]
    }

    pub fn addr(&self) -> usize {
        self.as_slice().as_ptr() as usize
    }

    pub fn buf(&self) -> &Buf {
        &self.buf
    }
}

/// The buffers of one I/O, in order.
///
/// The segment array is recycled: a dropped list gives its (emptied) array to a spare list of
/// its thread, and [`Sgl::new`] takes one from there, so that a request built per I/O on the
/// data path allocates nothing in steady state. `Sgl::default()` is an empty list with no
/// array at all, for a placeholder that is never pushed to.
#[derive(Default)]
pub struct Sgl {
    segs: Vec<Seg>,
}

/// Spare segment arrays a thread keeps at most: enough for the requests one reactor has in
/// flight at a time; an array dropped beyond that is freed.
const SPARE_ARRAYS: usize = 4096;

thread_local! {
    /// Empty segment arrays of capacity `MAX_SEGS`, left by dropped lists on this thread.
    static SPARE: std::cell::RefCell<Vec<Vec<Seg>>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Sgl {
    /// An empty list with room for `MAX_SEGS` segments, so that pushes never allocate; its
    /// array is a spare one when this thread has one.
    pub fn new() -> Self {
        let spare = SPARE
            .try_with(|s| s.try_borrow_mut().ok().and_then(|mut s| s.pop()))
            .ok()
            .flatten();
        Self {
            segs: spare.unwrap_or_else(|| Vec::with_capacity(MAX_SEGS)),
        }
    }

    /// A list of one whole buffer.
    pub fn single(buf: impl Into<Buf>) -> Self {
        let buf = buf.into();
        let len = buf.len();
        let mut sgl = Sgl::new();
        sgl.segs.push(Seg {
            buf,
            offset: 0,
            len,
        });
        sgl
    }

    /// Append `[offset, offset + len)` of `buf`.
    pub fn push(&mut self, buf: impl Into<Buf>, offset: usize, len: usize) -> Result<()> {
        let buf = buf.into();
        if self.segs.len() >= MAX_SEGS {
            return Err(Error::TooManySegments { max: MAX_SEGS });
        }
        if offset.checked_add(len).is_none_or(|end| end > buf.len()) {
            return Err(Error::SegmentOutOfBuffer {
                offset,
                len,
                buf_len: buf.len(),
            });
        }
        self.segs.push(Seg { buf, offset, len });
        Ok(())
    }

    /// Total bytes over all segments.
    pub fn len(&self) -> usize {
        self.segs.iter().map(|s| s.len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.segs.is_empty()
    }

    pub fn segs(&self) -> &[Seg] {
        &self.segs
    }

    pub fn segs_mut(&mut self) -> &mut [Seg] {
        &mut self.segs
    }

    /// Drop every segment (returning pool buffers), keeping the capacity.
    pub fn clear(&mut self) {
        self.segs.clear();
    }

    /// Take the buffers out, in order.
    pub fn into_bufs(mut self) -> impl Iterator<Item = Buf> {
        std::mem::take(&mut self.segs).into_iter().map(|s| s.buf)
    }

    /// Copy `data` into the segments, in order, from the start; returns the bytes copied.
    pub fn copy_from(&mut self, data: &[u8]) -> usize {
        self.copy_at(0, data)
    }

    /// Copy `data` into the list from byte `offset` on (across segments); returns the bytes
    /// copied (fewer if the list ends first).
    pub fn copy_at(&mut self, mut offset: usize, data: &[u8]) -> usize {
        let mut done = 0;
        for seg in &mut self.segs {
            if done == data.len() {
                break;
            }
            let dst = seg.as_mut_slice();
            if offset >= dst.len() {
                offset -= dst.len();
                continue;
            }
            let n = (dst.len() - offset).min(data.len() - done);
            dst[offset..offset + n].copy_from_slice(&data[done..done + n]);
            offset = 0;
            done += n;
        }
        done
    }

    /// Copy bytes from byte `offset` of the list into `dst`; returns the bytes copied.
    pub fn copy_out(&self, mut offset: usize, dst: &mut [u8]) -> usize {
        let mut done = 0;
        for seg in &self.segs {
            if done == dst.len() {
                break;
            }
            let src = seg.as_slice();
            if offset >= src.len() {
                offset -= src.len();
                continue;
            }
            let n = (src.len() - offset).min(dst.len() - done);
            dst[done..done + n].copy_from_slice(&src[offset..offset + n]);
            offset = 0;
            done += n;
        }
        done
    }

    /// The bytes of all segments, concatenated.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len());
        for seg in &self.segs {
            out.extend_from_slice(seg.as_slice());
        }
        out
    }
}

impl Drop for Sgl {
    fn drop(&mut self) {
        if self.segs.capacity() < MAX_SEGS {
            return;
        }
        // The segments go first (pool buffers back to their pool), then the empty array to
        // this thread's spares; a thread that is exiting, or full of spares, frees it.
        self.segs.clear();
        let segs = std::mem::take(&mut self.segs);
        let _ = SPARE.try_with(|s| {
            if let Ok(mut s) = s.try_borrow_mut() {
                if s.len() < SPARE_ARRAYS {
                    s.push(segs);
                }
            }
        });
    }
}

impl fmt::Debug for Sgl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lens: Vec<usize> = self.segs.iter().map(|s| s.len).collect();
        write!(f, "Sgl({lens:?})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_at_an_offset_cross_segment_boundaries() {
        let mut sgl = Sgl::new();
        sgl.push(DmaBuf::new(4096).unwrap(), 0, 3).unwrap();
        sgl.push(DmaBuf::new(4096).unwrap(), 10, 4).unwrap();
        assert_eq!(sgl.copy_at(2, &[1, 2, 3, 4]), 4);
        let mut out = [0u8; 7];
        assert_eq!(sgl.copy_out(0, &mut out), 7);
        assert_eq!(out, [0, 0, 1, 2, 3, 4, 0]);
        let mut tail = [9u8; 4];
        assert_eq!(sgl.copy_out(5, &mut tail), 2, "the list ends first");
        assert_eq!(tail[..2], [4, 0]);
        assert_eq!(sgl.copy_at(6, &[5, 6]), 1);
    }

    #[test]
    fn segments_bound_their_buffers_and_copy_in_order() {
        let mut sgl = Sgl::new();
        sgl.push(DmaBuf::new(4096).unwrap(), 512, 1024).unwrap();
        sgl.push(DmaBuf::new(4096).unwrap(), 0, 512).unwrap();
        assert_eq!(sgl.len(), 1536);
        let data: Vec<u8> = (0..1536u32).map(|i| i as u8).collect();
        assert_eq!(sgl.copy_from(&data), 1536);
        assert_eq!(sgl.to_vec(), data);
        assert!(matches!(
            sgl.push(DmaBuf::new(4096).unwrap(), 4000, 200),
            Err(Error::SegmentOutOfBuffer { .. })
        ));
        assert!(matches!(
            sgl.push(DmaBuf::new(4096).unwrap(), usize::MAX, 2),
            Err(Error::SegmentOutOfBuffer { .. })
        ));
        for _ in sgl.segs().len()..MAX_SEGS {
            sgl.push(DmaBuf::new(512).unwrap(), 0, 512).unwrap();
        }
        assert!(matches!(
            sgl.push(DmaBuf::new(512).unwrap(), 0, 512),
            Err(Error::TooManySegments { .. })
        ));
    }
}
