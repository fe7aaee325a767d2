//! The snapshot store: snapshot files written atomically and checked on load.
//!
//! A snapshot is written to `<name>.<n>.tmp` (streamed, so it never needs to fit in memory),
//! checksummed, `fdatasync`ed, renamed to its final name, and the directory is synced; only then
//! does the caller record a snapshot marker in the WAL. On start the newest snapshot the WAL
//! vouches for is loaded; a corrupt newest falls back to an older one only when the log still
//! holds every entry between them.
//!
//! # Retention
//!
//! Which file the store must keep depends on the WAL, not on how many files exist: recovery
//! needs the file named by the WAL's *durable* snapshot marker, and a file saved after it is
//! needed as soon as its own marker (written after the save, still pending) becomes durable.
//! Saving therefore never deletes anything. The caller deletes files at two moments only:
//!
//! - [`SnapshotStore::prune_behind_durable_marker`], each time the WAL reports a newer snapshot
//!   marker durable: deletes files older than that marker, keeping the marker's own file and
//!   the `keep_count - 1` newest older ones (fallbacks if the marker's file rots); files newer
//!   than the marker are never touched, their markers may still be pending;
//! - [`SnapshotStore::remove_orphans`], once on start: deletes the files the recovered WAL does
//!   not record (saved, but their marker was lost in a crash), which no recovery will ever use.
//!
//! Counting files instead, as an earlier version did on every save, deletes the only file the
//! durable marker names when newer files pile up whose markers are not durable (orphans of a
//! crash, or snapshots saved while earlier markers were pending), and the member is then
//! unrecoverable although it lost nothing it had reported durable (docs/sim.md, seeds 3569 and
//! 6101).
//!
//! File layout (little-endian; details in docs/wal.md):
//!
//! ```text
//! header   magic "BLTSNAP1" (8) | index u64 | term u64 | meta_len u32 | meta | crc32c u32 of
//!          all header bytes before it
//! data     the opaque snapshot bytes
//! trailer  data_len u64 | crc32c of data u32 | zero u32 | magic "BLTSNEND" (8)
//! ```

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use crate::disk::{Disk, DiskFile};
use crate::error::SnapshotError;
use crate::types::{DurableState, Index, Recovered, Term};

const SNAPSHOT_MAGIC: [u8; 8] = *b"BLTSNAP1";
const TRAILER_MAGIC: [u8; 8] = *b"BLTSNEND";
const TRAILER_LEN: usize = 24;
const SNAPSHOT_SUFFIX: &str = ".snap";
const TMP_SUFFIX: &str = ".tmp";
/// Numbers the temporary files of the writers of this process.
static NEXT_WRITER: AtomicU64 = AtomicU64::new(0);
const WRITE_BUFFER_BYTES: usize = 256 * 1024;
/// Largest `meta` accepted when reading, so a corrupt length cannot ask for gigabytes.
const META_BYTES_MAX: usize = 64 * 1024 * 1024;

/// A snapshot file whose checksums were verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub index: Index,
    pub term: Term,
    /// Opaque to the store (the server keeps the encoded configuration here).
    pub meta: Bytes,
    pub data_len: u64,
    /// CRC32C of the data (what a receiver of the data checks it against).
    pub data_crc: u32,
    pub path: PathBuf,
    /// Offset of the data in the file.
    data_offset: u64,
}

/// A verified snapshot with its data in memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadedSnapshot {
    pub info: SnapshotInfo,
    pub data: Bytes,
}

/// The directory of snapshot files.
#[derive(Clone, Debug)]
pub struct SnapshotStore<D: Disk> {
    disk: D,
    dir: PathBuf,
    /// Files kept by [`SnapshotStore::prune_behind_durable_marker`]: the durable marker's own
    /// and `keep_count - 1` older ones. Invariant: at least 1.
    keep_count: usize,
}

fn file_name(index: Index, term: Term) -> String {
    format!("{index:016x}-{term:016x}{SNAPSHOT_SUFFIX}")
}

fn parse_file_name(name: &str) -> Option<(Index, Term)> {
    let stem = name.strip_suffix(SNAPSHOT_SUFFIX)?;
    let (index, term) = stem.split_once('-')?;
    let hex = |digits: &str| {
        (digits.len() == 16
            && digits
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .then(|| u64::from_str_radix(digits, 16).ok())
        .flatten()
    };
    Some((hex(index)?, hex(term)?))
}

fn io_error<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SnapshotError + 'a {
    move |source| SnapshotError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

impl<D: Disk> SnapshotStore<D> {
    /// Opens (creating if needed) the store in `dir`. Pruning keeps `keep_count` files (at least
    /// one): the durable marker's and `keep_count - 1` older ones (see the module docs).
    /// Temporary files of interrupted writes are deleted; nothing else is.
    pub fn open(disk: D, dir: &Path, keep_count: usize) -> Result<Self, SnapshotError> {
        disk.create_dir_all(dir)
            .map_err(io_error("create directory", dir))?;
        let store = SnapshotStore {
            disk,
            dir: dir.to_path_buf(),
            keep_count: keep_count.max(1),
        };
        let names = store.list_names()?;
        for name in names.iter().filter(|name| name.ends_with(TMP_SUFFIX)) {
            let path = dir.join(name);
            tracing::info!(file = %path.display(), "removing an unfinished snapshot file");
            store
                .disk
                .remove_file(&path)
                .map_err(io_error("remove unfinished snapshot", &path))?;
        }
        Ok(store)
    }

    fn list_names(&self) -> Result<Vec<String>, SnapshotError> {
        self.disk
            .list_dir(&self.dir)
            .map_err(io_error("list directory", &self.dir))
    }

    /// The directory holding the snapshot files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `(index, term, path)` of every snapshot file, newest first, unverified.
    pub fn list(&self) -> Result<Vec<(Index, Term, PathBuf)>, SnapshotError> {
        let mut found: Vec<(Index, Term, PathBuf)> = self
            .list_names()?
            .iter()
            .filter_map(|name| {
                parse_file_name(name).map(|(index, term)| (index, term, self.dir.join(name)))
            })
            .collect();
        found.sort_by_key(|(index, term, _)| std::cmp::Reverse((*index, *term)));
        Ok(found)
    }

    /// Starts writing the snapshot through `index` (whose last entry has `term`).
    pub fn writer(
        &self,
        index: Index,
        term: Term,
        meta: Bytes,
    ) -> Result<SnapshotWriter<D>, SnapshotError> {
        if meta.len() > META_BYTES_MAX {
            return Err(SnapshotError::InvalidRequest(format!(
                "snapshot meta of {} bytes exceeds {META_BYTES_MAX}",
                meta.len()
            )));
        }
        let final_path = self.dir.join(file_name(index, term));
        // Each writer has its own temporary file: two writers of the same snapshot (a transfer
        // restarted by a new leader while the old one's is still open) must not share a file.
        let writer_number = NEXT_WRITER.fetch_add(1, Ordering::Relaxed);
        let tmp_path = self.dir.join(format!(
            "{}.{writer_number}{TMP_SUFFIX}",
            file_name(index, term)
        ));
        let file = self
            .disk
            .create_file(&tmp_path)
            .map_err(io_error("create snapshot", &tmp_path))?;
        let mut header = Vec::with_capacity(32 + meta.len());
        header.extend_from_slice(&SNAPSHOT_MAGIC);
        header.extend_from_slice(&index.to_le_bytes());
        header.extend_from_slice(&term.to_le_bytes());
        header.extend_from_slice(&(meta.len() as u32).to_le_bytes());
        header.extend_from_slice(&meta);
        let header_crc = crc32c::crc32c(&header);
        header.extend_from_slice(&header_crc.to_le_bytes());
        Ok(SnapshotWriter {
            store: self.clone(),
            file,
            index,
            term,
            meta,
            data_offset: header.len() as u64,
            buffer: header,
            data_crc: 0,
            data_len: 0,
            tmp_path,
            final_path,
            finished: false,
        })
    }

    /// Writes a whole snapshot held in memory.
    pub fn save(
        &self,
        index: Index,
        term: Term,
        meta: Bytes,
        data: &[u8],
    ) -> Result<SnapshotInfo, SnapshotError> {
        let mut writer = self.writer(index, term, meta)?;
        writer.write_chunk(data)?;
        writer.finish()
    }

    /// Reads and checks the whole file; returns what it holds.
    pub fn verify(&self, path: &Path) -> Result<SnapshotInfo, SnapshotError> {
        let corrupt = |reason: String| SnapshotError::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        let mut reader = self
            .disk
            .open_reader(path)
            .map_err(io_error("open snapshot", path))?;
        let mut fixed = [0u8; 28];
        read_exact(&mut reader, &mut fixed, path, "snapshot header")?;
        if fixed[..8] != SNAPSHOT_MAGIC {
            return Err(corrupt("the file does not start with BLTSNAP1".into()));
        }
        let index = u64::from_le_bytes(array(&fixed[8..16]));
        let term = u64::from_le_bytes(array(&fixed[16..24]));
        let meta_len = u32::from_le_bytes(array(&fixed[24..28])) as usize;
        if meta_len > META_BYTES_MAX {
            return Err(corrupt(format!("meta length {meta_len} is implausible")));
        }
        let mut meta = vec![0; meta_len];
        read_exact(&mut reader, &mut meta, path, "snapshot meta")?;
        let mut stored_header_crc = [0u8; 4];
        read_exact(&mut reader, &mut stored_header_crc, path, "header checksum")?;
        let header_crc = crc32c::crc32c_append(crc32c::crc32c(&fixed), &meta);
        if header_crc != u32::from_le_bytes(stored_header_crc) {
            return Err(corrupt("header checksum mismatch".into()));
        }
        if let Some(name) = path.file_name().and_then(|name| name.to_str())
            && parse_file_name(name) != Some((index, term))
        {
            return Err(corrupt(format!(
                "the header says index {index} term {term}, unlike the file name"
            )));
        }
        let (data_len, data_crc, trailer) = checksum_rest(&mut reader, path)?;
        let stored_len = u64::from_le_bytes(array(&trailer[0..8]));
        let stored_crc = u32::from_le_bytes(array(&trailer[8..12]));
        if trailer[16..24] != TRAILER_MAGIC || trailer[12..16] != [0; 4] {
            return Err(corrupt("missing or damaged trailer".into()));
        }
        if stored_len != data_len || stored_crc != data_crc {
            return Err(corrupt(format!(
                "data of {data_len} bytes with checksum {data_crc:#010x}, trailer says \
                 {stored_len} bytes with {stored_crc:#010x}"
            )));
        }
        Ok(SnapshotInfo {
            index,
            term,
            meta: Bytes::from(meta),
            data_len,
            data_crc,
            path: path.to_path_buf(),
            data_offset: 28 + meta_len as u64 + 4,
        })
    }

    /// Verifies and reads a snapshot's data into memory.
    pub fn load(&self, path: &Path) -> Result<LoadedSnapshot, SnapshotError> {
        let info = self.verify(path)?;
        let mut data = Vec::with_capacity(info.data_len as usize);
        self.open_data(&info)?
            .read_to_end(&mut data)
            .map_err(io_error("read snapshot", path))?;
        if data.len() as u64 != info.data_len {
            return Err(SnapshotError::Corrupt {
                path: path.to_path_buf(),
                reason: "the file changed while it was read".into(),
            });
        }
        Ok(LoadedSnapshot {
            info,
            data: Bytes::from(data),
        })
    }

    /// A reader over a verified snapshot's data, for streaming it to a peer or a state machine.
    pub fn open_data(
        &self,
        info: &SnapshotInfo,
    ) -> Result<io::Take<Box<dyn Read + Send>>, SnapshotError> {
        let mut reader = self
            .disk
            .open_reader(&info.path)
            .map_err(io_error("open snapshot", &info.path))?;
        io::copy(&mut (&mut reader).take(info.data_offset), &mut io::sink())
            .map_err(io_error("read snapshot", &info.path))?;
        Ok(reader.take(info.data_len))
    }

    /// Chooses the snapshot to start from, given what the WAL recovered.
    ///
    /// Only snapshots the WAL vouches for are used (like etcd, which loads the newest snapshot
    /// matching a WAL snapshot record): a file newer than the WAL's marker was written but never
    /// recorded, so it is ignored. The file matching the marker is used if valid; otherwise an
    /// older valid snapshot is used only if the log still holds every entry after it up to the
    /// marker, else this is an error (restore the member from a peer). `Ok(None)` means start
    /// from an empty state machine, valid when the log reaches back to index 1.
    pub fn choose_for_recovery(
        &self,
        recovered: &Recovered,
    ) -> Result<Option<SnapshotInfo>, SnapshotError> {
        let Some(marker) = &recovered.snapshot else {
            return Ok(None);
        };
        let first_logged = recovered.entries.first().map(|entry| entry.index);
        let covered_after = |index: Index| {
            first_logged.is_some_and(|first| first <= index + 1)
                && recovered.last_index() >= marker.index
        };
        let mut rejected = Vec::new();
        for (index, term, path) in self.list()? {
            if index > marker.index || (index == marker.index && term != marker.term) {
                tracing::warn!(file = %path.display(), "ignoring a snapshot the WAL does not record");
                continue;
            }
            let info = match self.verify(&path) {
                Ok(info) => info,
                Err(error) => {
                    tracing::error!(%error, "snapshot is unusable; trying an older one");
                    rejected.push(error.to_string());
                    continue;
                }
            };
            if index == marker.index {
                return Ok(Some(info));
            }
            if covered_after(index) {
                tracing::warn!(
                    file = %path.display(),
                    wal_snapshot_index = marker.index,
                    "falling back to an older snapshot; the log covers the gap"
                );
                return Ok(Some(info));
            }
            rejected.push(format!(
                "{} is valid but the log starts at index {}, not at or before {}",
                path.display(),
                first_logged.unwrap_or(0),
                index + 1
            ));
            break;
        }
        if covered_after(0) {
            return Ok(None);
        }
        Err(SnapshotError::Unrecoverable {
            needed_index: marker.index,
            detail: if rejected.is_empty() {
                "no snapshot file exists for it".into()
            } else {
                rejected.join("; ")
            },
        })
    }

    /// Deletes the snapshot files that the WAL's durable snapshot marker made obsolete: every
    /// file older than the marker except the `keep_count - 1` newest of them. The marker's own
    /// file and every newer file (a snapshot whose marker is written but not yet durable, or not
    /// yet written) are never deleted. Returns how many files were deleted.
    ///
    /// Contract: `durable` is what the WAL last *reported* durable ([`crate::Wal::sync`],
    /// [`crate::Wal::durable_state`], a [`crate::GroupCommitWal`] completion or its durable
    /// watch), never a marker merely handed to the WAL: if that marker were lost in a crash,
    /// recovery would need the older file this call deletes. Call it whenever the durable
    /// marker moves; calling it again with the same state deletes nothing.
    ///
    /// A durable marker must name an existing file (snapshot files are made durable before
    /// their marker is written). If it does not, nothing is deleted and `InvalidRequest` is
    /// returned: the older files may be all that recovery has left.
    pub fn prune_behind_durable_marker(
        &self,
        durable: &DurableState,
    ) -> Result<usize, SnapshotError> {
        if durable.snapshot_index == 0 {
            return Ok(0);
        }
        let marker = (durable.snapshot_index, durable.snapshot_term);
        let listed = self.list()?;
        if !listed
            .iter()
            .any(|(index, term, _)| (*index, *term) == marker)
        {
            return Err(SnapshotError::InvalidRequest(format!(
                "the durable snapshot marker (index {}, term {}) names no snapshot file in {}; \
                 refusing to prune the older ones",
                marker.0,
                marker.1,
                self.dir.display()
            )));
        }
        // `list` is newest first, so the older files kept as fallbacks are the first ones.
        let obsolete: Vec<PathBuf> = listed
            .into_iter()
            .filter(|(index, _, _)| *index < marker.0)
            .skip(self.keep_count - 1)
            .map(|(_, _, path)| path)
            .collect();
        self.remove_files(&obsolete, "remove old snapshot")
    }

    /// Deletes the snapshot files the recovered WAL does not record: newer than its snapshot
    /// marker, or at the marker's index with another term, or every file when the WAL records no
    /// snapshot. Such a file was saved but its marker never became durable; recovery ignores it
    /// ([`SnapshotStore::choose_for_recovery`]), and left in place it would count among the
    /// files [`SnapshotStore::prune_behind_durable_marker`] keeps once a newer marker is durable.
    /// Returns how many files were deleted.
    ///
    /// Contract: call it on start, after recovery and before any snapshot is saved, with what
    /// [`crate::Wal::open`] returned (recovery makes everything it read durable, so the recovered
    /// marker is the durable one).
    pub fn remove_orphans(&self, recovered: &Recovered) -> Result<usize, SnapshotError> {
        let recorded = recovered
            .snapshot
            .as_ref()
            .map(|marker| (marker.index, marker.term));
        let orphans: Vec<PathBuf> = self
            .list()?
            .into_iter()
            .filter(|(index, term, _)| match recorded {
                Some((marker_index, marker_term)) => {
                    *index > marker_index || (*index == marker_index && *term != marker_term)
                }
                None => true,
            })
            .map(|(_, _, path)| path)
            .collect();
        for path in &orphans {
            tracing::info!(
                file = %path.display(),
                "removing a snapshot file the WAL does not record (its marker was lost)"
            );
        }
        self.remove_files(&orphans, "remove unrecorded snapshot")
    }

    /// Deletes `paths` and then syncs the directory once. A file already gone counts as deleted,
    /// so two prunes racing over the same files both succeed.
    fn remove_files(&self, paths: &[PathBuf], op: &'static str) -> Result<usize, SnapshotError> {
        if paths.is_empty() {
            return Ok(0);
        }
        for path in paths {
            match self.disk.remove_file(path) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => return Err(io_error(op, path)(error)),
            }
        }
        self.disk
            .sync_dir(&self.dir)
            .map_err(io_error("sync directory", &self.dir))?;
        Ok(paths.len())
    }
}

fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0; N];
    out.copy_from_slice(&bytes[..N]);
    out
}

fn read_exact(
    reader: &mut dyn Read,
    buf: &mut [u8],
    path: &Path,
    what: &str,
) -> Result<(), SnapshotError> {
    reader.read_exact(buf).map_err(|error| {
        if error.kind() == io::ErrorKind::UnexpectedEof {
            SnapshotError::Corrupt {
                path: path.to_path_buf(),
                reason: format!("the file ends inside the {what}"),
            }
        } else {
            SnapshotError::Io {
                op: "read snapshot",
                path: path.to_path_buf(),
                source: error,
            }
        }
    })
}

/// Streams the rest of the file, returning the data length, the data checksum and the trailer
/// (the last `TRAILER_LEN` bytes, which are not data).
fn checksum_rest(
    reader: &mut dyn Read,
    path: &Path,
) -> Result<(u64, u32, [u8; TRAILER_LEN]), SnapshotError> {
    let mut chunk = vec![0u8; 256 * 1024];
    // Bytes held back because they may be the trailer.
    let mut held: Vec<u8> = Vec::with_capacity(TRAILER_LEN * 2);
    let mut data_len = 0u64;
    let mut crc = 0u32;
    loop {
        let read = match reader.read(&mut chunk) {
            Ok(0) => break,
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(io_error("read snapshot", path)(error)),
        };
        held.extend_from_slice(&chunk[..read]);
        if held.len() > TRAILER_LEN {
            let data_end = held.len() - TRAILER_LEN;
            crc = crc32c::crc32c_append(crc, &held[..data_end]);
            data_len += data_end as u64;
            held.drain(..data_end);
        }
    }
    if held.len() < TRAILER_LEN {
        return Err(SnapshotError::Corrupt {
            path: path.to_path_buf(),
            reason: "the file ends before its trailer".into(),
        });
    }
    Ok((data_len, crc, array(&held)))
}

/// Streams one snapshot into its temporary file; [`SnapshotWriter::finish`] makes it durable
/// and visible. Dropped unfinished, it removes its temporary file (what a crash leaves behind,
/// the next open removes).
pub struct SnapshotWriter<D: Disk> {
    store: SnapshotStore<D>,
    file: D::File,
    index: Index,
    term: Term,
    meta: Bytes,
    data_offset: u64,
    buffer: Vec<u8>,
    data_crc: u32,
    data_len: u64,
    tmp_path: PathBuf,
    final_path: PathBuf,
    /// Set once the file has been renamed into place.
    finished: bool,
}

impl<D: Disk> Drop for SnapshotWriter<D> {
    fn drop(&mut self) {
        if !self.finished && self.store.disk.remove_file(&self.tmp_path).is_err() {
            tracing::debug!(file = %self.tmp_path.display(), "could not remove an abandoned snapshot file");
        }
    }
}

impl<D: Disk> SnapshotWriter<D> {
    /// Bytes of snapshot data appended so far.
    pub fn data_len(&self) -> u64 {
        self.data_len
    }

    /// Appends snapshot data.
    pub fn write_chunk(&mut self, data: &[u8]) -> Result<(), SnapshotError> {
        self.data_crc = crc32c::crc32c_append(self.data_crc, data);
        self.data_len += data.len() as u64;
        if self.buffer.len() + data.len() > WRITE_BUFFER_BYTES {
            self.flush()?;
        }
        if data.len() >= WRITE_BUFFER_BYTES {
            return self
                .file
                .append(data)
                .map_err(io_error("write snapshot", &self.tmp_path));
        }
        self.buffer.extend_from_slice(data);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SnapshotError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        self.file
            .append(&self.buffer)
            .map_err(io_error("write snapshot", &self.tmp_path))?;
        self.buffer.clear();
        Ok(())
    }

    /// Writes the trailer, syncs, renames into place and syncs the directory. Only after this
    /// returns may the WAL record the snapshot's marker. It deletes no other file (see the
    /// module docs, "Retention").
    pub fn finish(mut self) -> Result<SnapshotInfo, SnapshotError> {
        let mut trailer = Vec::with_capacity(TRAILER_LEN);
        trailer.extend_from_slice(&self.data_len.to_le_bytes());
        trailer.extend_from_slice(&self.data_crc.to_le_bytes());
        trailer.extend_from_slice(&[0; 4]);
        trailer.extend_from_slice(&TRAILER_MAGIC);
        self.buffer.extend_from_slice(&trailer);
        self.flush()?;
        self.file
            .sync_data()
            .map_err(io_error("fdatasync snapshot", &self.tmp_path))?;
        let disk = &self.store.disk;
        disk.rename(&self.tmp_path, &self.final_path)
            .map_err(io_error("rename snapshot", &self.final_path))?;
        self.finished = true;
        disk.sync_dir(&self.store.dir)
            .map_err(io_error("sync directory", &self.store.dir))?;
        Ok(SnapshotInfo {
            index: self.index,
            term: self.term,
            // Moved out (the writer is dropped right after, finished, so it removes nothing).
            meta: std::mem::take(&mut self.meta),
            data_len: self.data_len,
            data_crc: self.data_crc,
            path: std::mem::take(&mut self.final_path),
            data_offset: self.data_offset,
        })
    }
}

impl<D: Disk> io::Write for SnapshotWriter<D> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_chunk(buf).map_err(io::Error::other)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        SnapshotWriter::flush(self).map_err(io::Error::other)
    }
}
