//! All file I/O of the WAL and the snapshot store goes through [`Disk`], so the same code runs on
//! a real file system ([`RealDisk`]) and on a simulated one that loses, tears and corrupts
//! unsynced data ([`FaultyDisk`]).
//!
//! # What an implementation must guarantee
//!
//! - Data appended to a file is durable once [`DiskFile::sync_data`] on that file returns `Ok`.
//! - A file's existence under its name (create, rename, remove) is durable once
//!   [`Disk::sync_dir`] on its directory returns `Ok`.
//! - A rename is atomic: after a crash the target name holds either the old or the new file.
//! - Anything not yet synced may, after a crash, be lost, partly kept (a prefix), or corrupted.
//! - An error from any call is returned, never hidden; after a failed sync the caller must assume
//!   the unsynced data is lost.

mod faulty;
mod real;

use std::io::{self, Read};
use std::path::Path;

pub use faulty::{CrashOptions, DiskOp, FaultyDisk, InjectedError};
pub use real::{RealDisk, RealFile};

pub trait Disk: Clone + Send + 'static {
    type File: DiskFile;

    /// Creates `dir` and its parents if missing (durably: the parents are synced).
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// The names (not paths) of the regular files in `dir`, sorted.
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// The whole content of a file.
    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// A streaming reader over a file, for large snapshot files.
    fn open_reader(&self, path: &Path) -> io::Result<Box<dyn Read + Send>>;
    /// Creates `path` empty (truncating an existing file) and opens it for appending.
    fn create_file(&self, path: &Path) -> io::Result<Self::File>;
    /// Opens an existing file for appending at its end.
    fn open_append(&self, path: &Path) -> io::Result<Self::File>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Makes the directory's entries (creations, renames, removals) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

pub trait DiskFile: Send + 'static {
    /// Appends `buf` at the end of the file.
    fn append(&mut self, buf: &[u8]) -> io::Result<()>;
    /// Writes `buf` at `offset`, overwriting what is there and extending the file if it reaches
    /// past the end (a gap before `offset` reads as zeros). Durable after the next `sync_data`.
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()>;
    /// Makes the file's data and size durable (`fdatasync`).
    fn sync_data(&mut self) -> io::Result<()>;
    /// Cuts the file to `len` bytes; durable after the next `sync_data`.
    fn truncate(&mut self, len: u64) -> io::Result<()>;
    /// A second handle to the same open file, so another thread can `sync_data` it while this
    /// one keeps writing (pipelined syncs, see `Wal::start_sync`).
    fn try_clone(&self) -> io::Result<Self>
    where
        Self: Sized;

    /// Writes `len` zero bytes at `offset`, for real: the blocks end up allocated and written, so
    /// later overwrites change neither the file's size nor its extents (see docs/wal.md,
    /// "Preallocated segments"). Durable after the next `sync_data`.
    fn write_zeros(&mut self, offset: u64, len: u64) -> io::Result<()> {
        const CHUNK_BYTES: u64 = 256 * 1024;
        let zeros = vec![0u8; CHUNK_BYTES.min(len) as usize];
        let mut written = 0;
        while written < len {
            let chunk = (len - written).min(CHUNK_BYTES) as usize;
            self.write_at(offset + written, &zeros[..chunk])?;
            written += chunk as u64;
        }
        Ok(())
    }
}
