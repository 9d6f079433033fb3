//! The `malloc` bdev: a RAM disk.
//!
//! Channels on several reactors copy in and out of the same memory at once, so the device side
//! is accessed as relaxed atomic 64-bit words (plain moves on x86 and arm64): overlapping I/O
//! from two reactors gives some interleaving of their bytes, as a disk would, and never a data
//! race in Rust's memory model. The request's own buffers are private to it and copied plainly.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::backend::{Backend, BackendChannel, Completions};
use super::{register, Bdev, BdevInfo, BdevIo, Error, IoType, Result};
use crate::mem::Sgl;

pub struct MallocOpts {
    pub name: String,
    pub num_blocks: u64,
    pub block_size: u32,
    /// 0 to generate.
    pub uuid: u128,
}

struct Malloc {
    words: Box<[AtomicU64]>,
    block_size: u64,
}

impl Malloc {
    fn word_range(&self, io: &BdevIo) -> std::ops::Range<usize> {
        let start = (io.offset_blocks * self.block_size / 8) as usize;
        let len = (io.num_blocks * self.block_size / 8) as usize;
        start..start + len
    }

    fn read_into(&self, words: std::ops::Range<usize>, sgl: &mut Sgl) {
        let mut device = &self.words[words];
        for seg in sgl.segs_mut() {
            let bytes = seg.as_mut_slice();
            let (here, rest) = device.split_at(bytes.len() / 8);
            // Zipped slices: no bounds check per word, one load and one store each.
            for (chunk, word) in bytes.chunks_exact_mut(8).zip(here) {
                chunk.copy_from_slice(&word.load(Relaxed).to_ne_bytes());
            }
            device = rest;
        }
    }

    fn write_from(&self, words: std::ops::Range<usize>, sgl: &Sgl) {
        let mut device = &self.words[words];
        for seg in sgl.segs() {
            let bytes = seg.as_slice();
            let (here, rest) = device.split_at(bytes.len() / 8);
            for (chunk, word) in bytes.chunks_exact(8).zip(here) {
                let mut w = [0u8; 8];
                w.copy_from_slice(chunk);
                word.store(u64::from_ne_bytes(w), Relaxed);
            }
            device = rest;
        }
    }

    fn zero(&self, words: std::ops::Range<usize>) {
        for w in &self.words[words] {
            w.store(0, Relaxed);
        }
    }
}

struct MallocChannel(std::sync::Arc<Malloc>);

struct MallocBackend(std::sync::Arc<Malloc>);

impl Backend for MallocBackend {
    fn product_name(&self) -> &'static str {
        "Malloc disk"
    }

    fn supports(&self, _io_type: IoType) -> bool {
        true
    }

    /// Segments are copied 8 bytes at a time.
    fn buf_align(&self) -> usize {
        8
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn save_config(&self, bdev: &Bdev) -> Option<serde_json::Value> {
        Some(
            serde_json::json!({"method": "bdev_malloc_create", "params": {
            "name": bdev.name(), "num_blocks": bdev.num_blocks(),
            "block_size": bdev.block_size(), "uuid": bdev.uuid_string()}}),
        )
    }

    fn open_channel(&self) -> Result<Box<dyn BackendChannel>> {
        Ok(Box::new(MallocChannel(std::sync::Arc::clone(&self.0))))
    }
}

impl BackendChannel for MallocChannel {
    fn submit(
        &mut self,
        mut io: BdevIo,
        done: &Completions,
    ) -> std::result::Result<(), (Error, BdevIo)> {
        let m = &self.0;
        let words = m.word_range(&io);
        match io.io_type {
            IoType::Read => m.read_into(words, &mut io.sgl),
            IoType::Write => m.write_from(words, &io.sgl),
            IoType::Unmap | IoType::WriteZeroes => m.zero(words),
            IoType::Flush => {}
        }
        done.complete(io, Ok(()));
        Ok(())
    }
}

/// Create and register a malloc bdev (`bdev_malloc_create`).
pub fn create(opts: MallocOpts) -> Result<Bdev> {
    let bytes = opts
        .num_blocks
        .checked_mul(opts.block_size as u64)
        .filter(|&b| b <= isize::MAX as u64)
        .ok_or_else(|| Error::InvalidArgument("malloc bdev size overflows".into()))?;
    let mut words = Vec::new();
    words.try_reserve_exact((bytes / 8) as usize).map_err(|_| {
        Error::InvalidArgument(format!("cannot allocate {bytes} bytes for {}", opts.name))
    })?;
    words.resize_with((bytes / 8) as usize, || AtomicU64::new(0));
    let backend = MallocBackend(std::sync::Arc::new(Malloc {
        words: words.into_boxed_slice(),
        block_size: opts.block_size as u64,
    }));
    register(Bdev::new(
        BdevInfo {
            name: opts.name,
            uuid: opts.uuid,
            block_size: opts.block_size,
            num_blocks: opts.num_blocks,
        },
        Box::new(backend),
    )?)
}
