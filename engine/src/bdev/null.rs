//! The `null` bdev: writes vanish, reads return zeros, everything completes at once. It measures
//! the layers above without a device under them.

use super::backend::{Backend, BackendChannel, Completions};
use super::{register, Bdev, BdevInfo, BdevIo, Error, IoType, Result};

pub struct NullOpts {
    pub name: String,
    pub num_blocks: u64,
    pub block_size: u32,
    /// 0 to generate.
    pub uuid: u128,
}

struct Null;

struct NullChannel;

impl Backend for Null {
    fn product_name(&self) -> &'static str {
        "Null disk"
    }

    fn supports(&self, _io_type: IoType) -> bool {
        true
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn save_config(&self, bdev: &Bdev) -> Option<serde_json::Value> {
        Some(serde_json::json!({"method": "bdev_null_create", "params": {
            "name": bdev.name(), "num_blocks": bdev.num_blocks(),
            "block_size": bdev.block_size(), "uuid": bdev.uuid_string()}}))
    }

    fn open_channel(&self) -> Result<Box<dyn BackendChannel>> {
        Ok(Box::new(NullChannel))
    }
}

impl BackendChannel for NullChannel {
    fn submit(
        &mut self,
        mut io: BdevIo,
        done: &Completions,
    ) -> std::result::Result<(), (Error, BdevIo)> {
        if io.io_type == IoType::Read {
            for seg in io.sgl.segs_mut() {
                seg.as_mut_slice().fill(0);
            }
        }
        done.complete(io, Ok(()));
        Ok(())
    }
}

/// Create and register a null bdev (`bdev_null_create`).
pub fn create(opts: NullOpts) -> Result<Bdev> {
    register(Bdev::new(
        BdevInfo {
            name: opts.name,
            uuid: opts.uuid,
            block_size: opts.block_size,
            num_blocks: opts.num_blocks,
        },
        Box::new(Null),
    )?)
}
