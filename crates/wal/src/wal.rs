//! The write-ahead log proper: synchronous, single-threaded, deterministic over any [`Disk`].
//!
//! Records are encoded into an in-memory buffer by `append`, `truncate_suffix`,
//! `set_hard_state` and `set_snapshot`; [`Wal::sync`] writes the buffer with one write and one
//! `fdatasync` and only then reports it durable. The simulator drives this type directly; the
//! server drives it through [`crate::GroupCommitWal`], which gathers concurrent callers into one
//! `sync`.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;

use bytes::Bytes;

use crate::disk::{Disk, DiskFile};
use crate::error::WalError;
use crate::log_shape::{LogShape, ShapeError};
use crate::meta;
use crate::record::{
    ALIGNMENT, ENTRIES_RECORD_PAYLOAD_TARGET, ENTRY_DATA_BYTES_MAX, Record, RecordRef,
    SegmentHeader,
};
use crate::segment::{ScannedSegment, parse_segment_file_name, scan_segment, segment_file_name};
use crate::types::{
    DurableState, HardState, Index, LogEntry, Recovered, SnapshotMarker, SyncMode, TornTail,
    WalOptions,
};

/// Largest allowed segment size: every offset in a segment must fit the header's 32 bits even
/// with one maximal entry past the limit.
pub const SEGMENT_SIZE_BYTES_MAX: u64 = 1024 * 1024 * 1024;
/// Smallest allowed segment size (tests use tiny segments to exercise rollover).
pub const SEGMENT_SIZE_BYTES_MIN: u64 = 4096;

#[derive(Debug)]
struct SegmentInfo {
    seq: u64,
    path: PathBuf,
    /// Highest entry index written into this segment (0 if none); compaction may delete the
    /// segment once the snapshot covers it.
    max_entry_index: Index,
}

/// The write-ahead log. See the crate documentation for the contract.
pub struct Wal<D: Disk> {
    disk: D,
    dir: PathBuf,
    options: WalOptions,
    /// All segments, oldest first. Invariant: never empty; the last is the active one.
    segments: Vec<SegmentInfo>,
    active: D::File,
    /// Bytes of the active segment handed to the disk (written, maybe not yet synced): the
    /// offset where the next write goes.
    active_written_len: u64,
    /// Length of the active segment's file. Beyond `active_written_len` it holds zeros that were
    /// written and synced when the segment was prepared (with `preallocate_segments`).
    active_file_len: u64,
    /// The next segment, being zero-filled on a helper thread (see
    /// [`Wal::prepare_segments_in_background`]) or ready (see [`Wal::ensure_room`]).
    next_segment: Option<NextSegment<D::File>>,
    prepare_in_background: bool,
    /// Offset in the active segment where its preamble ends; a segment holding nothing more is
    /// never rolled over, so a record larger than a segment still finds a home.
    active_preamble_end: u64,
    /// Encoded records not yet handed to the disk.
    buffer: Vec<u8>,
    /// Offset in the active segment below which every byte is known durable (a sync covering
    /// it completed). Every record carries it as its "batch start": a valid record whose batch
    /// start is past a bad offset proves that offset was synced (see `segment::scan_segment`).
    durable_len: u64,
    /// Syncs started by [`Wal::start_sync`] and not yet reported durable, oldest first.
    started: VecDeque<StartedSync>,
    next_sync_id: u64,
    /// Bytes were written since the last sync.
    unsynced_data: bool,
    /// A segment was created since the last directory sync.
    unsynced_dir: bool,
    /// The log including everything buffered.
    shape: LogShape,
    durable: DurableState,
    /// Set by the first I/O error: every later call fails (a failed fsync is never retried).
    poisoned: Option<String>,
}

impl<D: Disk> std::fmt::Debug for Wal<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.dir)
            .field("segments", &self.segments.len())
            .field("durable", &self.durable)
            .field("poisoned", &self.poisoned)
            .finish()
    }
}

impl<D: Disk> Drop for Wal<D> {
    fn drop(&mut self) {
        // A preparer must not outlive its WAL: a WAL reopened on the same directory could
        // otherwise adopt the temporary file while the old thread is still zero-filling it.
        if let Some(NextSegment::Preparing(preparing)) = self.next_segment.take() {
            let _ = preparing.thread.join();
        }
    }
}

fn io_error<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> WalError + 'a {
    move |source| WalError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn invalid(error: ShapeError) -> WalError {
    WalError::InvalidRequest(format!("expected {}, got {}", error.expected, error.found))
}

fn validate_options(options: &WalOptions) -> Result<(), WalError> {
    let size = options.segment_size_bytes;
    if !(SEGMENT_SIZE_BYTES_MIN..=SEGMENT_SIZE_BYTES_MAX).contains(&size) {
        return Err(WalError::InvalidRequest(format!(
            "segment_size_bytes must be in {SEGMENT_SIZE_BYTES_MIN}..={SEGMENT_SIZE_BYTES_MAX}, got {size}"
        )));
    }
    Ok(())
}

/// What a started sync will make durable, kept until it and every earlier one completed.
#[derive(Debug)]
struct StartedSync {
    id: u64,
    state: DurableState,
    /// The active segment and how much of it was written when the sync started.
    segment_seq: u64,
    written_len: u64,
    completed: bool,
}

/// A sync begun by [`Wal::start_sync`]: the `fdatasync` (and directory sync) that makes
/// everything written before it durable. It may run on any thread, overlapping later writes and
/// other syncs; its outcome goes back to [`Wal::complete_sync`].
pub struct PendingSync<D: Disk> {
    id: u64,
    file: Option<(PathBuf, D::File)>,
    dir: Option<(D, PathBuf)>,
    state: DurableState,
}

impl<D: Disk> std::fmt::Debug for PendingSync<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingSync")
            .field("id", &self.id)
            .field("file", &self.file.as_ref().map(|(path, _)| path))
            .field("dir", &self.dir.as_ref().map(|(_, dir)| dir))
            .field("state", &self.state)
            .finish()
    }
}

impl<D: Disk> PendingSync<D> {
    /// Identifies the sync to [`Wal::complete_sync`].
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The state the WAL reports durable once this sync and every sync started before it have
    /// completed.
    pub fn durable_state(&self) -> &DurableState {
        &self.state
    }

    /// `fdatasync`s the segment written to and, if a segment was created, the directory. Blocks
    /// for as long as the disk takes; call it outside any lock the writer needs.
    pub fn run(&mut self) -> Result<(), WalError> {
        if let Some((path, file)) = &mut self.file {
            file.sync_data().map_err(io_error("fdatasync", path))?;
        }
        if let Some((disk, dir)) = &self.dir {
            disk.sync_dir(dir)
                .map_err(io_error("sync directory", dir))?;
        }
        Ok(())
    }
}

/// A segment file being created and zero-filled under its temporary name by a helper thread.
struct PreparingSegment<F> {
    seq: u64,
    result: mpsc::Receiver<std::io::Result<F>>,
    thread: JoinHandle<()>,
}

impl<F> PreparingSegment<F> {
    /// Waits for the helper thread; the file if it prepared one.
    fn finish(self, temporary: &Path) -> Option<F> {
        let result = self.result.recv();
        let _ = self.thread.join();
        match result {
            Ok(Ok(file)) => Some(file),
            // A failed preparation made nothing durable and reported nothing: the caller tries
            // again itself.
            Ok(Err(error)) => {
                tracing::warn!(%error, file = %temporary.display(),
                    "preparing the next WAL segment in the background failed; retrying");
                None
            }
            Err(_) => None,
        }
    }
}

/// The segment after the active one, before the rollover that puts it under its name.
enum NextSegment<F> {
    /// Being zero-filled on a helper thread.
    Preparing(PreparingSegment<F>),
    /// Zero-filled (and synced) under its temporary name.
    Ready { seq: u64, file: F },
}

impl<F> NextSegment<F> {
    /// The prepared file of segment `seq`, waiting for a helper thread if one is at work.
    fn into_file(self, seq: u64, temporary: &Path) -> Option<F> {
        match self {
            NextSegment::Preparing(preparing) => {
                let prepared = preparing.seq;
                preparing.finish(temporary).filter(|_| prepared == seq)
            }
            NextSegment::Ready { seq: ready, file } => (ready == seq).then_some(file),
        }
    }
}

/// ENOSPC or EDQUOT: the disk (or the user's quota) has no room.
fn is_out_of_space(error: &std::io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::ENOSPC) | Some(libc::EDQUOT)
    )
}

/// The temporary name a segment is prepared under; only a fully zero-filled and synced file is
/// ever renamed to a segment name. Recovery deletes leftovers.
fn prepared_segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{}{PREPARED_SUFFIX}", segment_file_name(seq)))
}

const PREPARED_SUFFIX: &str = ".prealloc";

/// Creates `path` with `len` zero bytes, written for real and (unless `sync` is false) synced.
fn prepare_segment_file<D: Disk>(
    disk: &D,
    path: &Path,
    len: u64,
    sync: bool,
) -> std::io::Result<D::File> {
    let mut file = disk.create_file(path)?;
    file.write_zeros(0, len)?;
    if sync {
        file.sync_data()?;
    }
    Ok(file)
}

/// What replaying the existing segments produced.
struct Replayed {
    segments: Vec<SegmentInfo>,
    shape: LogShape,
    /// Length of the valid prefix of the last segment and, if its tail was torn, where.
    last_valid_len: u64,
    last_torn_at: Option<u64>,
    last_file_len: u64,
    /// End of the last segment's non-zero bytes.
    last_data_end: u64,
}

impl<D: Disk> Wal<D> {
    /// Opens (creating if needed) the WAL in `dir` and recovers its content.
    ///
    /// Refuses a directory of another cluster or member, cuts off a torn tail (logging file and
    /// offset), and fails with [`WalError::Corrupt`] on any damage before the tail.
    pub fn open(disk: D, dir: &Path, options: WalOptions) -> Result<(Wal<D>, Recovered), WalError> {
        validate_options(&options)?;
        if options.sync_mode == SyncMode::UnsafeNoFsync {
            tracing::warn!(
                dir = %dir.display(),
                "WAL opened with sync mode unsafe-no-fsync: nothing is fsynced, acknowledged \
                 writes WILL be lost on power failure or kernel crash; use only for benchmarks"
            );
        }
        disk.create_dir_all(dir)
            .map_err(io_error("create directory", dir))?;
        meta::claim_or_check(&disk, dir, options.cluster_id, options.member_id)?;
        let names = disk
            .list_dir(dir)
            .map_err(io_error("list directory", dir))?;
        for leftover in names.iter().filter(|name| name.ends_with(PREPARED_SUFFIX)) {
            // A segment that was being prepared when the process stopped: never part of the log.
            let path = dir.join(leftover);
            disk.remove_file(&path)
                .map_err(io_error("remove unused prepared segment", &path))?;
        }
        let mut seqs: Vec<u64> = names
            .iter()
            .filter_map(|name| parse_segment_file_name(name))
            .collect();
        seqs.sort_unstable();
        if seqs.is_empty() {
            return Self::create_fresh(disk, dir, options);
        }
        let replayed = replay(&disk, dir, &options, &seqs)?;
        Self::resume(disk, dir, options, replayed)
    }

    fn create_fresh(
        disk: D,
        dir: &Path,
        options: WalOptions,
    ) -> Result<(Wal<D>, Recovered), WalError> {
        let (active, active_file_len) = Self::new_segment_file(&disk, dir, &options, 1, None)?;
        let mut wal = Wal {
            disk,
            dir: dir.to_path_buf(),
            options,
            segments: vec![SegmentInfo {
                seq: 1,
                path: dir.join(segment_file_name(1)),
                max_entry_index: 0,
            }],
            active,
            active_written_len: 0,
            active_file_len,
            next_segment: None,
            prepare_in_background: false,
            active_preamble_end: 0,
            buffer: Vec::new(),
            durable_len: 0,
            started: VecDeque::new(),
            next_sync_id: 0,
            unsynced_data: false,
            unsynced_dir: true,
            shape: LogShape::starting_at(1, false),
            durable: DurableState::default(),
            poisoned: None,
        };
        wal.write_preamble(1);
        wal.sync()?;
        Ok((wal, Recovered::default()))
    }

    /// Puts the file of segment `seq` under its name and returns it with its length: with
    /// preallocation, a zero-filled file (`prepared` by a helper thread, or made here), renamed
    /// into place; otherwise an empty new file. The name is durable after the next directory sync.
    fn new_segment_file(
        disk: &D,
        dir: &Path,
        options: &WalOptions,
        seq: u64,
        prepared: Option<NextSegment<D::File>>,
    ) -> Result<(D::File, u64), WalError> {
        let path = dir.join(segment_file_name(seq));
        if !options.preallocate_segments {
            let file = disk
                .create_file(&path)
                .map_err(io_error("create segment", &path))?;
            return Ok((file, 0));
        }
        let temporary = prepared_segment_path(dir, seq);
        // A second failure, here, is fatal (see `Wal::ensure_room` for the way to avoid it).
        let prepared = prepared.and_then(|next| next.into_file(seq, &temporary));
        let file = match prepared {
            Some(file) => file,
            None => prepare_segment_file(
                disk,
                &temporary,
                options.segment_size_bytes,
                options.sync_mode == SyncMode::Always,
            )
            .map_err(io_error("prepare segment", &temporary))?,
        };
        disk.rename(&temporary, &path)
            .map_err(io_error("rename prepared segment", &path))?;
        Ok((file, options.segment_size_bytes))
    }

    /// Lets a helper thread zero-fill the next segment while the active one fills up, so a
    /// rollover only renames a ready file (the group-commit writer turns this on). Without it,
    /// the zero fill happens at rollover, on the caller's thread (deterministic, for the
    /// simulator).
    pub(crate) fn prepare_segments_in_background(&mut self) {
        self.prepare_in_background = true;
        self.start_preparing_next_segment();
    }

    fn start_preparing_next_segment(&mut self) {
        if !self.prepare_in_background
            || !self.options.preallocate_segments
            || self.next_segment.is_some()
        {
            return;
        }
        let seq = self.segments[self.segments.len() - 1].seq + 1;
        let path = prepared_segment_path(&self.dir, seq);
        let disk = self.disk.clone();
        let len = self.options.segment_size_bytes;
        let sync = self.options.sync_mode == SyncMode::Always;
        let (sender, result) = mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("wal-prealloc".into())
            .spawn(move || {
                let prepared = prepare_segment_file(&disk, &path, len, sync);
                if prepared.is_err() {
                    // A partial file would hold space a full disk needs for everything else;
                    // the rollover prepares the segment again.
                    let _ = disk.remove_file(&path);
                }
                let _ = sender.send(prepared);
            });
        match spawned {
            Ok(thread) => {
                self.next_segment = Some(NextSegment::Preparing(PreparingSegment {
                    seq,
                    result,
                    thread,
                }))
            }
            // Not fatal: the rollover prepares the segment itself.
            Err(error) => tracing::warn!(%error, "cannot start the WAL segment preparer thread"),
        }
    }

    /// Repairs the tail of the last segment and opens it for appending.
    fn resume(
        disk: D,
        dir: &Path,
        options: WalOptions,
        mut replayed: Replayed,
    ) -> Result<(Wal<D>, Recovered), WalError> {
        let last_path = replayed.segments[replayed.segments.len() - 1].path.clone();
        let (active, active_len, active_file_len, torn_tail) =
            repair_tail(&disk, &last_path, &options, &replayed)?;
        if options.sync_mode == SyncMode::Always {
            // The newest segment's name may not be durable yet either (its creator died before
            // syncing the directory), and what it holds now counts as durable.
            disk.sync_dir(dir)
                .map_err(io_error("sync directory", dir))?;
        }
        let (last_index, last_term) = replayed.shape.last();
        let mut shape = replayed.shape;
        let recovered = Recovered {
            hard_state: shape.hard_state,
            snapshot: shape.snapshot.clone(),
            entries: shape.take_entries(),
            torn_tail,
        };
        let durable = DurableState {
            last_index,
            last_term,
            hard_state: shape.hard_state,
            snapshot_index: shape.snapshot_index(),
            snapshot_term: shape.snapshot.as_ref().map_or(0, |s| s.term),
            syncs: 0,
        };
        let mut wal = Wal {
            disk,
            dir: dir.to_path_buf(),
            options,
            segments: std::mem::take(&mut replayed.segments),
            active,
            active_written_len: active_len,
            active_file_len,
            next_segment: None,
            prepare_in_background: false,
            active_preamble_end: 0,
            buffer: Vec::new(),
            // What recovery found is on disk (and was synced if the tail was repaired).
            durable_len: active_len,
            started: VecDeque::new(),
            next_sync_id: 0,
            unsynced_data: false,
            unsynced_dir: false,
            shape,
            durable,
            poisoned: None,
        };
        if active_len == 0 {
            // The segment lost its header in the crash: write it again.
            let seq = wal.segments[wal.segments.len() - 1].seq;
            wal.write_preamble(seq);
            wal.sync()?;
        }
        Ok((wal, recovered))
    }

    fn check_usable(&self) -> Result<(), WalError> {
        match &self.poisoned {
            Some(cause) => Err(WalError::Poisoned {
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Marks the WAL unusable after an I/O error and returns the error.
    fn poison(&mut self, error: WalError) -> WalError {
        tracing::error!(%error, "WAL failed; it is now unusable and the node must stop");
        self.poisoned = Some(error.to_string());
        error
    }

    /// Makes sure that `bytes` more of records can be written without needing disk space the
    /// WAL cannot get: when they do not fit in the active segment, the next segment is prepared
    /// (zero-filled and synced under its temporary name) now, or its background preparation
    /// awaited. When the disk has no room for it (ENOSPC, EDQUOT) nothing changes, the partial
    /// file is removed, and [`WalError::NoSpace`] is returned: the WAL stays usable, and the
    /// caller may try again once space is freed. Any other error is fatal as usual.
    ///
    /// Writes into the active segment need no new space (it was zero-filled when created), so a
    /// caller that asks for room for each write before appending it never meets ENOSPC at a
    /// rollover, where it would be fatal. Room for more than one new segment is not ensured:
    /// a write larger than a whole segment may still meet it. Without preallocated segments
    /// this does nothing (every write may then need space).
    pub fn ensure_room(&mut self, bytes: u64) -> Result<(), WalError> {
        self.check_usable()?;
        if !self.options.preallocate_segments {
            return Ok(());
        }
        let used = self.active_written_len + self.buffer.len() as u64;
        if used.saturating_add(bytes) <= self.options.segment_size_bytes {
            return Ok(());
        }
        let seq = self.segments[self.segments.len() - 1].seq + 1;
        let temporary = prepared_segment_path(&self.dir, seq);
        if matches!(&self.next_segment, Some(NextSegment::Ready { seq: ready, .. }) if *ready == seq)
        {
            return Ok(());
        }
        let prepared = self
            .next_segment
            .take()
            .and_then(|next| next.into_file(seq, &temporary));
        let file = match prepared {
            Some(file) => file,
            None => match prepare_segment_file(
                &self.disk,
                &temporary,
                self.options.segment_size_bytes,
                self.options.sync_mode == SyncMode::Always,
            ) {
                Ok(file) => file,
                Err(source) if is_out_of_space(&source) => {
                    // What the attempt wrote is given back; the name was never a segment's.
                    let _ = self.disk.remove_file(&temporary);
                    return Err(WalError::NoSpace {
                        path: temporary,
                        source,
                    });
                }
                Err(source) => {
                    return Err(self.poison(io_error("prepare segment", &temporary)(source)));
                }
            },
        };
        self.next_segment = Some(NextSegment::Ready { seq, file });
        Ok(())
    }

    /// Appends entries (buffered until [`Wal::sync`]).
    ///
    /// `entries` must be consecutive. If the first index is at or below the last index, the
    /// conflicting suffix is removed first by a truncation record (Raft §5.3); it must stay above
    /// the snapshot's index.
    pub fn append(&mut self, entries: &[LogEntry]) -> Result<(), WalError> {
        self.check_usable()?;
        let Some(first) = entries.first() else {
            return Ok(());
        };
        if let Some(big) = entries
            .iter()
            .find(|entry| entry.data.len() > ENTRY_DATA_BYTES_MAX)
        {
            return Err(WalError::InvalidRequest(format!(
                "entry {} has {} bytes of data, more than the {ENTRY_DATA_BYTES_MAX} allowed",
                big.index,
                big.data.len()
            )));
        }
        // Validate everything before writing anything, so a refused request leaves no trace.
        let conflicting_suffix = first.index < self.shape.next_index();
        if conflicting_suffix {
            self.shape.check_truncate(first.index).map_err(invalid)?;
        }
        self.shape
            .check_consecutive(
                entries,
                if conflicting_suffix {
                    first.index
                } else {
                    self.shape.next_index()
                },
            )
            .map_err(invalid)?;
        if conflicting_suffix {
            self.truncate_suffix(first.index)?;
        }
        let mut chunk_start = 0;
        let mut chunk_bytes = 0;
        for (position, entry) in entries.iter().enumerate() {
            chunk_bytes += entry.data.len() + 16;
            let last = position + 1 == entries.len();
            if chunk_bytes >= ENTRIES_RECORD_PAYLOAD_TARGET || last {
                let chunk = &entries[chunk_start..=position];
                self.push_record(RecordRef::Entries(chunk))?;
                self.shape.append(chunk);
                let segment = self.segments.len() - 1;
                self.segments[segment].max_entry_index = entry.index;
                chunk_start = position + 1;
                chunk_bytes = 0;
            }
        }
        Ok(())
    }

    /// Removes the entries from `from_index` on by writing a truncation record (old bytes are
    /// never rewritten). Buffered until [`Wal::sync`].
    pub fn truncate_suffix(&mut self, from_index: Index) -> Result<(), WalError> {
        self.check_usable()?;
        self.shape.check_truncate(from_index).map_err(invalid)?;
        self.push_record(RecordRef::Truncate { from_index })?;
        self.shape.truncate(from_index);
        Ok(())
    }

    /// Records a new hard state (buffered until [`Wal::sync`]); a repeat of the last one is
    /// skipped.
    pub fn set_hard_state(&mut self, hard_state: HardState) -> Result<(), WalError> {
        self.check_usable()?;
        if hard_state == self.shape.hard_state {
            return Ok(());
        }
        self.push_record(RecordRef::HardState(&hard_state))?;
        self.shape.hard_state = hard_state;
        Ok(())
    }

    /// Records that a snapshot through `marker.index` is durable in the snapshot store (save it
    /// there first). If the log holds entry `marker.index` with `marker.term` the entries after
    /// it stay; otherwise the log is discarded and continues at `marker.index + 1` (Raft §7).
    pub fn set_snapshot(&mut self, marker: SnapshotMarker) -> Result<(), WalError> {
        self.check_usable()?;
        if marker.index == 0 {
            return Err(WalError::InvalidRequest(
                "a snapshot marker needs an index >= 1".into(),
            ));
        }
        let keeps_log = self.shape.snapshot_keeps_log(&marker);
        self.push_record(RecordRef::Snapshot {
            marker: &marker,
            keeps_log,
        })?;
        self.shape
            .apply_snapshot(marker, keeps_log)
            .map_err(invalid)
    }

    /// Writes everything buffered with one write and makes it durable with one `fdatasync` (and
    /// a directory sync if a segment was created), then reports the new durable state.
    ///
    /// Any error is fatal: the WAL becomes unusable. Refused while syncs begun with
    /// [`Wal::start_sync`] are still pending.
    pub fn sync(&mut self) -> Result<&DurableState, WalError> {
        self.check_usable()?;
        self.check_no_pending_syncs("sync")?;
        let mut pending = self.start_sync()?;
        let outcome = pending.run();
        self.complete_sync(pending.id, outcome)
    }

    /// Hands everything buffered to the disk with one write and returns the sync that makes it
    /// durable, without waiting for it: the caller runs it ([`PendingSync::run`], on any thread)
    /// and reports the outcome to [`Wal::complete_sync`]. Meanwhile more can be appended and more
    /// syncs started, so the next `fdatasync` can begin before this one ends (pipelining).
    ///
    /// A sync covers exactly what was written before it started. Durability is reported in the
    /// order syncs were started, whatever order they complete in: a later sync covers the earlier
    /// writes too, but an earlier sync may still fail (and Linux reports a writeback error to one
    /// `fdatasync` only), so nothing is reported before every earlier sync succeeded.
    pub fn start_sync(&mut self) -> Result<PendingSync<D>, WalError> {
        self.check_usable()?;
        self.flush()?;
        let always = self.options.sync_mode == SyncMode::Always;
        let file = if always && self.unsynced_data {
            let path = self.active_path().to_path_buf();
            match self.active.try_clone() {
                Ok(file) => Some((path, file)),
                Err(error) => return Err(self.poison(io_error("duplicate handle", &path)(error))),
            }
        } else {
            None
        };
        let dir = (always && self.unsynced_dir).then(|| (self.disk.clone(), self.dir.clone()));
        self.unsynced_data = false;
        self.unsynced_dir = false;
        let id = self.next_sync_id;
        self.next_sync_id += 1;
        let (last_index, last_term) = self.shape.last();
        let state = DurableState {
            last_index,
            last_term,
            hard_state: self.shape.hard_state,
            snapshot_index: self.shape.snapshot_index(),
            snapshot_term: self.shape.snapshot.as_ref().map_or(0, |s| s.term),
            syncs: self.durable.syncs + self.started.len() as u64 + 1,
        };
        self.started.push_back(StartedSync {
            id,
            state: state.clone(),
            segment_seq: self.segments[self.segments.len() - 1].seq,
            // Without fsync nothing becomes durable, so the batch start never advances: a whole
            // segment is one batch and damage in it is always treated as a torn tail.
            written_len: if always { self.active_written_len } else { 0 },
            completed: false,
        });
        Ok(PendingSync {
            id,
            file,
            dir,
            state,
        })
    }

    /// Takes the outcome of a sync begun by [`Wal::start_sync`] and returns the durable state:
    /// everything up to the newest sync that completed with every earlier one. An error is fatal
    /// (the WAL becomes unusable and the error is returned), because the data it should have made
    /// durable may be lost and retrying the `fdatasync` could report it durable anyway.
    pub fn complete_sync(
        &mut self,
        id: u64,
        outcome: Result<(), WalError>,
    ) -> Result<&DurableState, WalError> {
        self.check_usable()?;
        if let Err(error) = outcome {
            return Err(self.poison(error));
        }
        let Some(started) = self.started.iter_mut().find(|started| started.id == id) else {
            return Err(WalError::InvalidRequest(format!(
                "sync {id} is not a pending sync of this WAL"
            )));
        };
        started.completed = true;
        while self
            .started
            .front()
            .is_some_and(|started| started.completed)
        {
            let Some(done) = self.started.pop_front() else {
                break;
            };
            if done.segment_seq == self.segments[self.segments.len() - 1].seq {
                self.durable_len = self.durable_len.max(done.written_len);
            }
            self.durable = done.state;
        }
        Ok(&self.durable)
    }

    /// Syncs begun with [`Wal::start_sync`] whose outcome was not yet reported durable.
    pub fn pending_syncs(&self) -> usize {
        self.started.len()
    }

    fn check_no_pending_syncs(&self, what: &str) -> Result<(), WalError> {
        if self.started.is_empty() {
            return Ok(());
        }
        Err(WalError::InvalidRequest(format!(
            "{what} needs every started sync completed first, but {} are pending",
            self.started.len()
        )))
    }

    /// Deletes whole segments whose entries are all at or below `through_index` and the durable
    /// snapshot's index, oldest first, keeping at least the active segment. Returns how many
    /// were deleted. Syncs first, so the preamble of the segment that becomes the oldest is
    /// durable before anything it replaces is deleted.
    pub fn compact(&mut self, through_index: Index) -> Result<usize, WalError> {
        self.check_usable()?;
        self.check_no_pending_syncs("compaction")?;
        if !self.buffer.is_empty() || self.unsynced_data || self.unsynced_dir {
            self.sync()?;
        }
        let limit = through_index.min(self.durable.snapshot_index);
        let mut removed = 0;
        while self.segments.len() > 1 && self.segments[0].max_entry_index <= limit {
            let path = self.segments[0].path.clone();
            if let Err(error) = self.disk.remove_file(&path) {
                return Err(self.poison(io_error("remove segment", &path)(error)));
            }
            // Removing in order, each made durable before the next, means a crash leaves a
            // contiguous run of segments, never one with a hole.
            if self.options.sync_mode == SyncMode::Always
                && let Err(error) = self.disk.sync_dir(&self.dir)
            {
                let dir = self.dir.clone();
                return Err(self.poison(io_error("sync directory", &dir)(error)));
            }
            self.segments.remove(0);
            removed += 1;
        }
        // Entries through `limit` are covered by the snapshot; their terms are no longer needed.
        self.shape.forget_below(limit + 1);
        Ok(removed)
    }

    /// What is durable (as of the last successful [`Wal::sync`]).
    pub fn durable_state(&self) -> &DurableState {
        &self.durable
    }

    /// The last index written (durable or not) and its term.
    pub fn last_index_and_term(&self) -> (Index, u64) {
        self.shape.last()
    }

    /// The latest hard state written (durable or not).
    pub fn hard_state(&self) -> HardState {
        self.shape.hard_state
    }

    /// The latest snapshot marker written (durable or not).
    pub fn snapshot(&self) -> Option<&SnapshotMarker> {
        self.shape.snapshot.as_ref()
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// The directory the WAL lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether an earlier error made the WAL unusable.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.is_some()
    }

    /// Bytes buffered and not yet handed to the disk.
    pub fn buffered_bytes(&self) -> usize {
        self.buffer.len()
    }

    fn active_path(&self) -> &Path {
        &self.segments[self.segments.len() - 1].path
    }

    fn push_record(&mut self, record: RecordRef<'_>) -> Result<(), WalError> {
        let used = self.active_written_len + self.buffer.len() as u64;
        if used + record.encoded_len() as u64 > self.options.segment_size_bytes
            && used > self.active_preamble_end
        {
            self.roll()?;
        }
        self.encode(record);
        if self.buffer.len() >= self.options.write_buffer_bytes_max {
            self.flush()?;
        }
        Ok(())
    }

    fn encode(&mut self, record: RecordRef<'_>) {
        let batch_start = u32::try_from(self.durable_len).unwrap_or_else(|_| {
            panic!(
                "segment offset {} exceeds 32 bits; segment size is capped so this cannot happen",
                self.durable_len
            )
        });
        record.encode(batch_start, &mut self.buffer);
    }

    fn flush(&mut self) -> Result<(), WalError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        if let Err(error) = self.active.write_at(self.active_written_len, &self.buffer) {
            let path = self.active_path().to_path_buf();
            return Err(self.poison(io_error("write", &path)(error)));
        }
        self.active_written_len += self.buffer.len() as u64;
        self.active_file_len = self.active_file_len.max(self.active_written_len);
        self.buffer.clear();
        self.unsynced_data = true;
        Ok(())
    }

    /// Closes the active segment (synced whole and cut to its written length, so only the last
    /// segment can have a torn tail or a zero tail) and starts the next one with a preamble.
    fn roll(&mut self) -> Result<(), WalError> {
        self.flush()?;
        if self.active_file_len > self.active_written_len {
            // The unused preallocated zeros go; the cut must be durable before the next segment
            // exists, or recovery would find a zero tail in a segment that is not the last.
            if let Err(error) = self.active.truncate(self.active_written_len) {
                let path = self.active_path().to_path_buf();
                return Err(self.poison(io_error("truncate closed segment", &path)(error)));
            }
            self.active_file_len = self.active_written_len;
        }
        // Unconditionally: syncs started earlier may still be running, and this one must cover
        // the whole segment (and its cut) before the next segment is created.
        if self.options.sync_mode == SyncMode::Always {
            self.sync_active("fdatasync closed segment")?;
        }
        self.unsynced_data = false;
        let seq = self.segments[self.segments.len() - 1].seq + 1;
        let prepared = self.next_segment.take();
        let (file, file_len) =
            match Self::new_segment_file(&self.disk, &self.dir, &self.options, seq, prepared) {
                Ok(created) => created,
                Err(error) => return Err(self.poison(error)),
            };
        self.active = file;
        self.active_file_len = file_len;
        self.segments.push(SegmentInfo {
            seq,
            path: self.dir.join(segment_file_name(seq)),
            max_entry_index: 0,
        });
        self.active_written_len = 0;
        self.durable_len = 0;
        self.unsynced_dir = true;
        self.write_preamble(seq);
        self.start_preparing_next_segment();
        Ok(())
    }

    fn sync_active(&mut self, op: &'static str) -> Result<(), WalError> {
        if let Err(error) = self.active.sync_data() {
            let path = self.active_path().to_path_buf();
            return Err(self.poison(io_error(op, &path)(error)));
        }
        Ok(())
    }

    /// Every segment starts with its header, the latest snapshot marker and the latest hard
    /// state, so deleting older segments never loses them.
    fn write_preamble(&mut self, seq: u64) {
        let header = SegmentHeader {
            seq,
            next_index: self.shape.next_index(),
            cluster_id: self.options.cluster_id,
            member_id: self.options.member_id,
        };
        self.encode(RecordRef::SegmentHeader(&header));
        if let Some(marker) = self.shape.snapshot.clone() {
            // Repeating the marker changes nothing: the log after it is already as it decided.
            self.encode(RecordRef::Snapshot {
                marker: &marker,
                keeps_log: true,
            });
        }
        if self.shape.hard_state != HardState::default() {
            let hard_state = self.shape.hard_state;
            self.encode(RecordRef::HardState(&hard_state));
        }
        self.active_preamble_end = self.buffer.len() as u64;
    }
}

/// Opens the last segment for writing after removing a torn tail (cut off, or overwritten with
/// zeros in a preallocated segment so the zero tail stays intact) and restoring the padding of
/// the last record. Returns the file, where the next record goes, the file's length, and the
/// torn tail removed.
fn repair_tail<D: Disk>(
    disk: &D,
    path: &Path,
    options: &WalOptions,
    replayed: &Replayed,
) -> Result<(D::File, u64, u64, Option<TornTail>), WalError> {
    let mut active = disk
        .open_append(path)
        .map_err(io_error("open segment", path))?;
    let mut active_len = replayed.last_valid_len;
    let mut file_len = replayed.last_file_len;
    let mut changed = false;
    let mut torn_tail = None;
    if let Some(offset) = replayed.last_torn_at {
        // Zeroing keeps the blocks of a preallocated segment written; without preallocation
        // the file is simply cut, as it always was.
        let dropped_bytes = if options.preallocate_segments {
            let garbage = replayed.last_data_end - offset;
            active
                .write_zeros(offset, garbage)
                .map_err(io_error("zero torn tail", path))?;
            garbage
        } else {
            active
                .truncate(offset)
                .map_err(io_error("truncate torn tail", path))?;
            let cut = file_len - offset;
            file_len = offset;
            cut
        };
        tracing::warn!(
            file = %path.display(),
            offset,
            dropped_bytes,
            "WAL recovery: removing a torn record at the tail (a crash interrupted its write; \
             it was never reported durable)"
        );
        torn_tail = Some(TornTail {
            path: path.to_path_buf(),
            offset,
            dropped_bytes,
        });
        changed = true;
    }
    // A crash can also cut only the zero padding of the last valid record; restore it so
    // records keep starting at aligned offsets.
    let padding = (ALIGNMENT - active_len as usize % ALIGNMENT) % ALIGNMENT;
    if padding > 0 {
        active
            .write_at(active_len, &[0; ALIGNMENT][..padding])
            .map_err(io_error("pad segment", path))?;
        active_len += padding as u64;
        file_len = file_len.max(active_len);
        changed = true;
    }
    // Even an intact tail is synced: if only the previous process died, not the machine, the
    // records just read may exist in the page cache alone, yet from now on they count as durable
    // (new records carry them in their batch start, and the caller acts on what was recovered).
    if changed || options.sync_mode == SyncMode::Always {
        active
            .sync_data()
            .map_err(io_error("sync repaired segment", path))?;
    }
    Ok((active, active_len, file_len, torn_tail))
}

/// Replays all segments in order into the log they describe.
fn replay<D: Disk>(
    disk: &D,
    dir: &Path,
    options: &WalOptions,
    seqs: &[u64],
) -> Result<Replayed, WalError> {
    let mut segments = Vec::with_capacity(seqs.len());
    let mut shape: Option<LogShape> = None;
    let mut last = (0, None, 0, 0);
    for (position, seq) in seqs.iter().copied().enumerate() {
        let path = dir.join(segment_file_name(seq));
        if let Some(previous) = segments.last().map(|s: &SegmentInfo| s.seq)
            && seq != previous + 1
        {
            return Err(WalError::Corrupt {
                path: path.clone(),
                offset: 0,
                expected: format!("segment {} after segment {previous}", previous + 1),
                found: format!("segment {seq}: segments in between are missing"),
            });
        }
        let bytes = disk
            .read_file(&path)
            .map_err(io_error("read segment", &path))?;
        let file_len = bytes.len() as u64;
        let is_last = position + 1 == seqs.len();
        let scanned = scan_segment(&path, Bytes::from(bytes), is_last)?;
        if is_last && scanned.records.is_empty() && shape.is_some() {
            // The newest segment lost even its header: it was being created when the node
            // crashed and holds nothing that was ever reported durable.
            tracing::warn!(
                file = %path.display(),
                "WAL recovery: removing the newest segment, whose header never became durable"
            );
            disk.remove_file(&path)
                .map_err(io_error("remove segment", &path))?;
            disk.sync_dir(dir)
                .map_err(io_error("sync directory", dir))?;
            break;
        }
        if scanned.records.is_empty() && seq != 1 {
            return Err(WalError::Corrupt {
                path,
                offset: 0,
                expected: "a segment header".into(),
                found: "a lone segment without a valid header".into(),
            });
        }
        let info = replay_segment(&path, seq, options, &scanned, &mut shape)?;
        segments.push(info);
        last = (
            scanned.valid_len,
            scanned.torn_at,
            file_len,
            scanned.data_end,
        );
    }
    let shape = match shape {
        Some(shape) => shape,
        None => LogShape::starting_at(1, true),
    };
    check_coverage(dir, &shape)?;
    Ok(Replayed {
        segments,
        shape,
        last_valid_len: last.0,
        last_torn_at: last.1,
        last_file_len: last.2,
        last_data_end: last.3,
    })
}

fn replay_segment(
    path: &Path,
    seq: u64,
    options: &WalOptions,
    scanned: &ScannedSegment,
    shape: &mut Option<LogShape>,
) -> Result<SegmentInfo, WalError> {
    let corrupt = |offset: u64, expected: String, found: String| WalError::Corrupt {
        path: path.to_path_buf(),
        offset,
        expected,
        found,
    };
    let mut records = scanned.records.iter();
    let mut info = SegmentInfo {
        seq,
        path: path.to_path_buf(),
        max_entry_index: 0,
    };
    match records.next() {
        Some((offset, Record::SegmentHeader(header))) => {
            let expected = (seq, options.cluster_id, options.member_id);
            let found = (header.seq, header.cluster_id, header.member_id);
            if expected != found {
                return Err(corrupt(
                    *offset,
                    format!("segment header (seq, cluster, member) = {expected:?}"),
                    format!("{found:?}"),
                ));
            }
            let log = shape.get_or_insert_with(|| LogShape::starting_at(header.next_index, true));
            if header.next_index != log.next_index() {
                return Err(corrupt(
                    *offset,
                    format!("a segment continuing the log at index {}", log.next_index()),
                    format!("a segment header saying index {}", header.next_index),
                ));
            }
        }
        Some((offset, other)) => {
            return Err(corrupt(
                *offset,
                "a segment header first".into(),
                record_name(other).to_string(),
            ));
        }
        None => {
            // A last segment torn before its header was handled by the caller; an empty
            // segment 1 of a WAL that never synced anything starts an empty log.
            shape.get_or_insert_with(|| LogShape::starting_at(1, true));
            return Ok(info);
        }
    }
    let Some(log) = shape.as_mut() else {
        unreachable!("the header above created the log shape");
    };
    for (offset, record) in records {
        let result = match record {
            Record::SegmentHeader(_) => Err(ShapeError {
                expected: "one segment header, at offset 0".into(),
                found: "another segment header".into(),
            }),
            Record::Entries(entries) => log.check_append(entries).map(|()| {
                log.append(entries);
                info.max_entry_index = entries.last().map_or(0, |entry| entry.index);
            }),
            Record::HardState(hard_state) => {
                log.hard_state = *hard_state;
                Ok(())
            }
            Record::Truncate { from_index } => log
                .check_truncate(*from_index)
                .map(|()| log.truncate(*from_index)),
            Record::Snapshot { marker, keeps_log } => {
                log.apply_snapshot(marker.clone(), *keeps_log)
            }
        };
        result.map_err(|error| corrupt(*offset, error.expected, error.found))?;
    }
    Ok(info)
}

fn record_name(record: &Record) -> &'static str {
    match record {
        Record::SegmentHeader(_) => "a segment header",
        Record::Entries(_) => "an entries record",
        Record::HardState(_) => "a hard state record",
        Record::Truncate { .. } => "a truncation record",
        Record::Snapshot { .. } => "a snapshot marker",
    }
}

/// The log must reach back to the snapshot (or to index 1 without one): anything else means
/// segments holding needed entries were lost.
fn check_coverage(dir: &Path, shape: &LogShape) -> Result<(), WalError> {
    let needed_from = shape.snapshot_index() + 1;
    if shape.first_known() > needed_from {
        return Err(WalError::Corrupt {
            path: dir.to_path_buf(),
            offset: 0,
            expected: format!("log entries from index {needed_from} (just after the snapshot)"),
            found: format!(
                "the oldest segment starts at index {}: segments were lost",
                shape.first_known()
            ),
        });
    }
    Ok(())
}
