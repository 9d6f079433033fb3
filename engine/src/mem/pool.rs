//! Per-reactor pools of fixed-size DMA buffers, small and large (SPDK's iobuf pools): one
//! region allocated on first use on each reactor, carved into buffers kept on a free list.
//! Taking and returning a buffer is a pop and a push on that list; an empty pool says so
//! (`None`) rather than allocating, so that the caller can queue and retry.

use std::cell::RefCell;
use std::rc::Rc;

use super::DmaBuf;
use crate::reactor::{self, ReactorLocal};

/// Size of a small buffer: a 4 KiB I/O plus room for an 8 KiB in-capsule NVMe/TCP command.
pub const SMALL_BUF: usize = 8 * 1024;
/// Size of a large buffer: the largest I/O the target accepts in one piece.
pub const LARGE_BUF: usize = 128 * 1024;
const SMALL_COUNT: usize = 1024;
const LARGE_COUNT: usize = 128;

struct Pool {
    /// 0 for the small pool, 1 for the large: the index under which an io_uring registers it.
    kind: u16,
    region: DmaBuf,
    buf_len: usize,
    free: RefCell<Vec<u32>>,
    count: usize,
}

impl Pool {
    fn new(kind: u16, buf_len: usize, count: usize) -> Pool {
        let region = DmaBuf::new(buf_len * count).expect("memory for a reactor's buffer pool");
        Pool {
            kind,
            region,
            buf_len,
            free: RefCell::new((0..count as u32).rev().collect()),
            count,
        }
    }
}

struct Pools {
    small: Rc<Pool>,
    large: Rc<Pool>,
}

static POOLS: ReactorLocal<Pools> = ReactorLocal::new(|| Pools {
    small: Rc::new(Pool::new(0, SMALL_BUF, SMALL_COUNT)),
    large: Rc::new(Pool::new(1, LARGE_BUF, LARGE_COUNT)),
});

/// A buffer from the current reactor's pool, given back when dropped. Not `Send`: it belongs to
/// the reactor whose pool it came from.
pub struct PoolBuf {
    pool: Rc<Pool>,
    index: u32,
}

impl PoolBuf {
    pub fn len(&self) -> usize {
        self.pool.buf_len
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// Which of the reactor's pool regions holds this buffer (see [`pool_regions`]).
    pub fn region_index(&self) -> u16 {
        self.pool.kind
    }

    fn offset(&self) -> usize {
        self.index as usize * self.pool.buf_len
    }

    pub fn as_ptr(&self) -> *const u8 {
        // SAFETY: index < count, so the offset lies inside the region.
        unsafe { self.pool.region.as_ptr().add(self.offset()) }
    }

    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.as_ptr().cast_mut()
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: this PoolBuf alone owns bytes [offset, offset + buf_len) of the live region
        // (the index is off the free list until drop); the borrow of self excludes writers.
        unsafe { std::slice::from_raw_parts(self.as_ptr(), self.pool.buf_len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`; the exclusive borrow of self excludes other access.
        unsafe { std::slice::from_raw_parts_mut(self.as_mut_ptr(), self.pool.buf_len) }
    }
}

impl Drop for PoolBuf {
    fn drop(&mut self) {
        self.pool.free.borrow_mut().push(self.index);
    }
}

fn take(pick: fn(&Pools) -> &Rc<Pool>) -> Option<PoolBuf> {
    POOLS
        .with(|p| {
            let pool = pick(p);
            let index = pool.free.borrow_mut().pop()?;
            Some(PoolBuf {
                pool: Rc::clone(pool),
                index,
            })
        })
        .ok()
        .flatten()
}

/// A [`SMALL_BUF`] buffer from the current reactor's pool; `None` when it is empty or when
/// not called on a reactor.
pub fn take_small() -> Option<PoolBuf> {
    take(|p| &p.small)
}

/// A [`LARGE_BUF`] buffer from the current reactor's pool.
pub fn take_large() -> Option<PoolBuf> {
    take(|p| &p.large)
}

/// The current reactor's pool regions, small then large, as (address, length): what an
/// io_uring registers so that I/O on pool buffers skips pinning pages each time.
pub fn pool_regions() -> reactor::Result<[(*mut u8, usize); 2]> {
    POOLS.with(|p| {
        [&p.small, &p.large].map(|pool| (pool.region.as_ptr().cast_mut(), pool.region.len()))
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    pub small_free: usize,
    pub small_total: usize,
    pub large_free: usize,
    pub large_total: usize,
}

/// Free and total buffers of the current reactor's pools.
pub fn pool_stats() -> reactor::Result<PoolStats> {
    POOLS.with(|p| PoolStats {
        small_free: p.small.free.borrow().len(),
        small_total: p.small.count,
        large_free: p.large.free.borrow().len(),
        large_total: p.large.count,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reactor::sim::Sim;

    #[test]
    fn buffers_come_back_and_pools_are_per_reactor() {
        let sim = Sim::new(2).unwrap();
        assert!(take_small().is_none(), "no pool off a reactor");
        sim.enter(0, || {
            let before = pool_stats().unwrap();
            let mut bufs: Vec<PoolBuf> = (0..SMALL_COUNT).map(|_| take_small().unwrap()).collect();
            assert!(take_small().is_none(), "an empty pool says so");
            for b in &bufs {
                assert_eq!(b.as_ptr() as usize % super::super::PAGE, 0);
            }
            bufs[3].as_mut_slice()[0] = 9;
            assert_eq!(bufs[3].as_slice()[0], 9);
            // Reactor 1 has its own, untouched pool.
            sim.enter(1, || {
                assert_eq!(pool_stats().unwrap().small_free, SMALL_COUNT)
            });
            bufs.clear();
            assert_eq!(pool_stats().unwrap(), before);
            let l = take_large().unwrap();
            assert_eq!(l.len(), LARGE_BUF);
        });
    }
}
