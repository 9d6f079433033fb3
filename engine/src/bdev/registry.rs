//! The table of bdevs by name. Control path only: create, delete, open and list take its
//! mutex; no I/O does (a channel reaches its device through its descriptor).

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::desc::{Desc, EventCallback};
use super::{Bdev, BdevEvent, Error, Result};

static BDEVS: Mutex<BTreeMap<String, Bdev>> = Mutex::new(BTreeMap::new());

fn table() -> std::sync::MutexGuard<'static, BTreeMap<String, Bdev>> {
    BDEVS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Publish a bdev under its name.
pub fn register(bdev: Bdev) -> Result<Bdev> {
    let mut t = table();
    if t.contains_key(bdev.name()) {
        return Err(Error::Exists(bdev.name().to_owned()));
    }
    t.insert(bdev.name().to_owned(), bdev.clone());
    tracing::info!(
        name = bdev.name(),
        product = bdev.product_name(),
        blocks = bdev.num_blocks(),
        block_size = bdev.block_size(),
        "bdev created"
    );
    Ok(bdev)
}

/// A bdev by name, or by its UUID in text form (as SPDK lets an lvol be named either way).
pub fn get(name: &str) -> Option<Bdev> {
    let t = table();
    t.get(name).cloned().or_else(|| {
        let uuid = super::parse_uuid(name)?;
        t.values().find(|b| b.uuid() == uuid).cloned()
    })
}

/// Every bdev, by name.
pub fn list() -> Vec<Bdev> {
    table().values().cloned().collect()
}

/// Open a bdev by name. `write` asks for a read-write descriptor; `event_cb` hears removal.
pub fn open(name: &str, write: bool, event_cb: Option<EventCallback>) -> Result<Desc> {
    let bdev = get(name).ok_or_else(|| Error::NotFound(name.to_owned()))?;
    Desc::open(&bdev, write, event_cb)
}

/// Delete a bdev (hot-remove): it leaves the table at once, its descriptors hear `Remove`, I/O
/// in flight completes, new I/O fails with `Removed`, and its memory goes when the last
/// descriptor and channel let go. A claimed bdev cannot be deleted.
pub fn delete(name: &str) -> Result<()> {
    let bdev = {
        let mut t = table();
        let bdev = t
            .get(name)
            .ok_or_else(|| Error::NotFound(name.to_owned()))?;
        if let Some(by) = bdev.claimed_by() {
            return Err(Error::Claimed {
                bdev: name.to_owned(),
                by,
            });
        }
        t.remove(name).expect("present")
    };
    for desc in bdev.0.mark_removed() {
        desc.notify(BdevEvent::Remove);
    }
    tracing::info!(name, "bdev deleted");
    Ok(())
}
