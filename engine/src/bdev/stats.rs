//! Per-channel I/O counters. Each channel's counters are written only by its reactor (a load and
//! a store, no read-modify-write, no shared cache line with other reactors) and read by anyone;
//! [`IoStat`] is their sum, made on demand (iostat, `bdev_get_iostat`).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::IoType;

#[derive(Default)]
pub(crate) struct ChannelStats {
    bytes_read: AtomicU64,
    num_read_ops: AtomicU64,
    bytes_written: AtomicU64,
    num_write_ops: AtomicU64,
    num_unmap_ops: AtomicU64,
    num_flush_ops: AtomicU64,
    num_write_zeroes_ops: AtomicU64,
    read_latency_ns: AtomicU64,
    write_latency_ns: AtomicU64,
    other_latency_ns: AtomicU64,
    io_errors: AtomicU64,
}

fn add(counter: &AtomicU64, n: u64) {
    // Single writer: a plain load and store is enough and avoids a locked instruction.
    counter.store(counter.load(Relaxed).wrapping_add(n), Relaxed);
}

impl ChannelStats {
    pub(crate) fn record(&self, io_type: IoType, bytes: u64, latency_ns: u64, ok: bool) {
        if !ok {
            add(&self.io_errors, 1);
            return;
        }
        match io_type {
            IoType::Read => {
                add(&self.num_read_ops, 1);
                add(&self.bytes_read, bytes);
                add(&self.read_latency_ns, latency_ns);
            }
            IoType::Write => {
                add(&self.num_write_ops, 1);
                add(&self.bytes_written, bytes);
                add(&self.write_latency_ns, latency_ns);
            }
            IoType::Flush => {
                add(&self.num_flush_ops, 1);
                add(&self.other_latency_ns, latency_ns);
            }
            IoType::Unmap => {
                add(&self.num_unmap_ops, 1);
                add(&self.other_latency_ns, latency_ns);
            }
            IoType::WriteZeroes => {
                add(&self.num_write_zeroes_ops, 1);
                add(&self.other_latency_ns, latency_ns);
            }
        }
    }

    pub(crate) fn add_to(&self, s: &mut IoStat) {
        s.bytes_read += self.bytes_read.load(Relaxed);
        s.num_read_ops += self.num_read_ops.load(Relaxed);
        s.bytes_written += self.bytes_written.load(Relaxed);
        s.num_write_ops += self.num_write_ops.load(Relaxed);
        s.num_unmap_ops += self.num_unmap_ops.load(Relaxed);
        s.num_flush_ops += self.num_flush_ops.load(Relaxed);
        s.num_write_zeroes_ops += self.num_write_zeroes_ops.load(Relaxed);
        s.read_latency_ns += self.read_latency_ns.load(Relaxed);
        s.write_latency_ns += self.write_latency_ns.load(Relaxed);
        s.other_latency_ns += self.other_latency_ns.load(Relaxed);
        s.io_errors += self.io_errors.load(Relaxed);
    }
}

/// A bdev's I/O totals over all its channels (names as SPDK's `bdev_get_iostat`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoStat {
    pub bytes_read: u64,
    pub num_read_ops: u64,
    pub bytes_written: u64,
    pub num_write_ops: u64,
    pub num_unmap_ops: u64,
    pub num_flush_ops: u64,
    pub num_write_zeroes_ops: u64,
    pub read_latency_ns: u64,
    pub write_latency_ns: u64,
    pub other_latency_ns: u64,
    pub io_errors: u64,
}
