//! Memory for I/O: buffers aligned to 4 KiB (what O_DIRECT and NVMe PRPs need), backed by
//! hugepages when the machine has them; per-reactor pools of fixed-size buffers; and
//! scatter-gather lists that carry buffers through an I/O and back to the submitter.
//!
//! **Data path.** Taking a buffer from a pool and giving it back is a push and pop on a
//! reactor-local free list: no lock, no allocation. Pools allocate their whole region once,
//! on first use on each reactor. An [`Sgl`] keeps its capacity across reuse, so a submitter
//! that recycles the one a completion hands back allocates nothing per I/O.

mod dma;
mod pool;
mod sgl;

pub use dma::{DmaBuf, PAGE};
pub use pool::{
    pool_regions, pool_stats, take_large, take_small, PoolBuf, PoolStats, LARGE_BUF, SMALL_BUF,
};
pub use sgl::{Buf, ForeignBuf, Seg, Sgl, MAX_SEGS};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot allocate {len} bytes of DMA memory")]
    OutOfMemory { len: usize },
    #[error("a DMA buffer of zero bytes was asked for")]
    ZeroLength,
    #[error("a scatter-gather list holds at most {max} segments")]
    TooManySegments { max: usize },
    #[error("segment [{offset}, +{len}) lies outside its {buf_len}-byte buffer")]
    SegmentOutOfBuffer {
        offset: usize,
        len: usize,
        buf_len: usize,
    },
}

pub type Result<T> = std::result::Result<T, Error>;
