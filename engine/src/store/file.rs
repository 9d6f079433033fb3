//! A store on a plain file or block device, worked on directly by one thread: what `tandem
//! store format|check|snapshot|diff` use on a store that no daemon has loaded (as `mkfs` and
//! `fsck` do). Commits follow the same order as on a reactor: nodes and table pages, `fsync`,
//! superblock, `fsync`.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::core::{Core, Frozen};
use super::format::BLOCK;
use super::{Error, Result};

pub struct FileStore {
    file: File,
    pub core: Core,
}

fn io_err(what: &str, e: std::io::Error) -> Error {
    Error::Io(format!("{what}: {e}"))
}

fn device_len(file: &File) -> Result<u64> {
    let len = file.metadata().map_err(|e| io_err("stat", e))?.len();
    if len > 0 {
        return Ok(len);
    }
    // A block device reports 0 in metadata: seek to its end instead.
    use std::io::Seek;
    let mut f = file;
    f.seek(std::io::SeekFrom::End(0))
        .map_err(|e| io_err("seek", e))
}

/// Write a frozen transaction: everything but the superblock, flush, superblock, flush.
pub fn write_frozen(
    frozen: &Frozen,
    write: &mut dyn FnMut(u64, &[u8]) -> Result<()>,
    flush: &mut dyn FnMut() -> Result<()>,
) -> Result<()> {
    for (block, data) in &frozen.writes {
        write(*block, data)?;
    }
    flush()?;
    write(frozen.superblock.0, &frozen.superblock.1)?;
    flush()
}

/// The file's bytes, for the namespace's data.
impl super::namespace::Data for File {
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.read_exact_at(buf, offset)
            .map_err(|e| io_err(&format!("read at {offset}"), e))
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.write_all_at(data, offset)
            .map_err(|e| io_err(&format!("write at {offset}"), e))
    }
}

impl FileStore {
    /// The core and the file's bytes, both borrowed for a namespace operation.
    pub fn parts(&mut self) -> (&mut Core, &mut File) {
        (&mut self.core, &mut self.file)
    }

    /// The root of the live image, or of snapshot `name`.
    pub fn image(&self, snapshot: Option<&str>) -> Result<super::tree::Tree> {
        self.core.image(snapshot)
    }

    /// Format the whole file as a new store.
    pub fn format(path: &Path, cluster_size: u32, name: &str) -> Result<FileStore> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| io_err(&path.display().to_string(), e))?;
        let len = device_len(&file)?;
        let (core, frozen) = Core::format(len, cluster_size, name, crate::bdev::random_uuid())?;
        let mut s = FileStore { file, core };
        s.write(&frozen)?;
        s.core.commit_done(frozen.gen);
        Ok(s)
    }

    /// Open the store in `path`; `checked`: refuse it when the full check finds a problem.
    pub fn open(path: &Path, write: bool, checked: bool) -> Result<FileStore> {
        let file = OpenOptions::new()
            .read(true)
            .write(write)
            .open(path)
            .map_err(|e| io_err(&path.display().to_string(), e))?;
        let f = &file;
        let load = if checked {
            Core::load
        } else {
            Core::load_unchecked
        };
        let len = device_len(&file)?;
        let core = load(len, &mut |blocks| {
            blocks
                .iter()
                .map(|b| {
                    let mut buf = vec![0u8; BLOCK];
                    f.read_exact_at(&mut buf, b * BLOCK as u64)
                        .map_err(|e| io_err(&format!("read block {b}"), e))?;
                    Ok(buf)
                })
                .collect()
        })?;
        Ok(FileStore { file, core })
    }

    fn write(&mut self, frozen: &Frozen) -> Result<()> {
        let f = &self.file;
        write_frozen(
            frozen,
            &mut |b, data| {
                f.write_all_at(data, b * BLOCK as u64)
                    .map_err(|e| io_err(&format!("write block {b}"), e))
            },
            &mut || f.sync_data().map_err(|e| io_err("fsync", e)),
        )
    }

    /// Make everything changed so far durable.
    pub fn commit(&mut self) -> Result<()> {
        if !self.core.is_dirty() {
            return Ok(());
        }
        let frozen = self.core.freeze()?;
        self.write(&frozen)?;
        self.core.commit_done(frozen.gen);
        Ok(())
    }
}
