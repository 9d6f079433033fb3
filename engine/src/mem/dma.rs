//! One DMA-able buffer: 4 KiB aligned, zeroed at allocation, on hugepages when it is at least
//! one hugepage long and the machine has reserved some (`vm.nr_hugepages`); on ordinary pages
//! otherwise.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;

use super::{Error, Result};

/// The alignment of every DMA buffer.
pub const PAGE: usize = 4096;
const HUGEPAGE: usize = 2 * 1024 * 1024;

enum Backing {
    Heap(Layout),
    HugeMmap { map_len: usize },
}

pub struct DmaBuf {
    ptr: NonNull<u8>,
    len: usize,
    backing: Backing,
}

// SAFETY: a DmaBuf exclusively owns its memory (like a Box<[u8]>); moving it between threads
// moves that ownership.
unsafe impl Send for DmaBuf {}
// SAFETY: shared references only read through `as_slice`, like &[u8].
unsafe impl Sync for DmaBuf {}

impl DmaBuf {
    /// A zeroed buffer of `len` bytes (the mapping is rounded up to 4 KiB).
    pub fn new(len: usize) -> Result<Self> {
        if len == 0 {
            return Err(Error::ZeroLength);
        }
        if len >= HUGEPAGE {
            if let Some(buf) = Self::try_hugepages(len) {
                return Ok(buf);
            }
        }
        let rounded = len
            .checked_next_multiple_of(PAGE)
            .ok_or(Error::OutOfMemory { len })?;
        let layout =
            Layout::from_size_align(rounded, PAGE).map_err(|_| Error::OutOfMemory { len })?;
        // SAFETY: the layout has a non-zero size (len > 0, rounded up).
        let ptr = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).ok_or(Error::OutOfMemory { len })?;
        Ok(Self {
            ptr,
            len,
            backing: Backing::Heap(layout),
        })
    }

    fn try_hugepages(len: usize) -> Option<Self> {
        let map_len = len.checked_next_multiple_of(HUGEPAGE)?;
        // SAFETY: an anonymous private mapping at an address the kernel picks; no fd, no
        // existing memory is touched. MAP_FAILED is checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return None;
        }
        Some(Self {
            ptr: NonNull::new(ptr.cast())?,
            len,
            backing: Backing::HugeMmap { map_len },
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the buffer sits on hugepages.
    pub fn is_hugepage(&self) -> bool {
        matches!(self.backing, Backing::HugeMmap { .. })
    }

    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` is valid for `len` initialised (zeroed at allocation) bytes for as long
        // as self lives; the shared borrow of self excludes writers.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and the exclusive borrow of self excludes other access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for DmaBuf {
    fn drop(&mut self) {
        match self.backing {
            // SAFETY: allocated by alloc_zeroed with exactly this layout, freed once.
            Backing::Heap(layout) => unsafe { dealloc(self.ptr.as_ptr(), layout) },
            // SAFETY: mapped by mmap with exactly this length, unmapped once.
            Backing::HugeMmap { map_len } => unsafe {
                libc::munmap(self.ptr.as_ptr().cast(), map_len);
            },
        }
    }
}

impl std::fmt::Debug for DmaBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DmaBuf({} bytes{})",
            self.len,
            if self.is_hugepage() {
                ", hugepages"
            } else {
                ""
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_zeroed_and_writable() {
        for len in [1, 512, 4096, 4097, 3 * 1024 * 1024] {
            let mut b = DmaBuf::new(len).unwrap();
            assert_eq!(b.as_ptr() as usize % PAGE, 0);
            assert_eq!(b.len(), len);
            assert!(b.as_slice().iter().all(|&x| x == 0));
            b.as_mut_slice()[len - 1] = 7;
            assert_eq!(b.as_slice()[len - 1], 7);
        }
        assert!(matches!(DmaBuf::new(0), Err(Error::ZeroLength)));
        assert!(matches!(
            DmaBuf::new(usize::MAX),
            Err(Error::OutOfMemory { .. })
        ));
    }
}
