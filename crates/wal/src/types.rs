//! Plain record types stored by the WAL.
//!
//! These deliberately mirror, but do not depend on, the Raft core's `Entry`, `HardState` and
//! `SnapshotMeta`: the WAL knows nothing of Raft's roles (ARCHITECTURE.md, dependency rule), so
//! the server and the simulator convert between the two.

use bytes::Bytes;

/// Index of a log entry; the first entry of a log has index 1, 0 means "none".
pub type Index = u64;
/// A Raft term as an opaque number.
pub type Term = u64;

/// One log entry as the WAL stores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    pub index: Index,
    pub term: Term,
    /// Opaque to the WAL; the Raft core's `EntryKind` (e.g. 0 = Normal, 1 = ConfChange).
    pub kind: u8,
    pub data: Bytes,
}

/// The state Raft must persist before answering votes and appends (Raft paper, figure 2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HardState {
    pub term: Term,
    pub vote: u64,
    pub commit: Index,
}

/// Records that a snapshot through `index` (whose last entry has `term`) is durable.
///
/// `meta` is opaque to the WAL (the server stores the encoded configuration there).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotMarker {
    pub index: Index,
    pub term: Term,
    pub meta: Bytes,
}

/// How hard the WAL tries to make data durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SyncMode {
    /// Every batch is written and `fdatasync`ed before it is reported durable. The default.
    #[default]
    Always,
    /// No `fdatasync` at all: data reported durable may be lost on power failure. For benchmarks
    /// only; opening a WAL in this mode logs a warning.
    UnsafeNoFsync,
}

/// Options for [`crate::Wal::open`].
#[derive(Clone, Debug)]
pub struct WalOptions {
    /// Cluster this data directory belongs to; checked against the metadata file.
    pub cluster_id: u64,
    /// Member (node) this data directory belongs to; checked against the metadata file.
    pub member_id: u64,
    /// A segment is closed and a new one started once it reaches this size.
    pub segment_size_bytes: u64,
    pub sync_mode: SyncMode,
    /// Buffered records are written to the file once the buffer reaches this size, even before a
    /// sync, so memory stays bounded when a caller appends much between syncs.
    pub write_buffer_bytes_max: usize,
    /// Create every segment at its full size, filled with zeros that are written and synced
    /// before the segment is used (under a temporary name, then renamed into place). Appending
    /// then overwrites blocks that are already allocated and written, so an `fdatasync` has no
    /// file size or extent change to commit to the file system journal; this is why etcd
    /// preallocates its 64 MiB WAL files. Measured in docs/wal.md. Default: on.
    pub preallocate_segments: bool,
}

impl WalOptions {
    pub const DEFAULT_SEGMENT_SIZE_BYTES: u64 = 64 * 1024 * 1024;

    pub fn new(cluster_id: u64, member_id: u64) -> WalOptions {
        WalOptions {
            cluster_id,
            member_id,
            segment_size_bytes: Self::DEFAULT_SEGMENT_SIZE_BYTES,
            sync_mode: SyncMode::Always,
            write_buffer_bytes_max: 4 * 1024 * 1024,
            preallocate_segments: true,
        }
    }
}

/// What the WAL holds durably; reported after every successful sync.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DurableState {
    /// Index of the last durable log entry (0 if the log is empty and no snapshot exists).
    /// It can go down when a truncation or a log-discarding snapshot became durable; always
    /// pass it on together with `last_term` (Raft's `on_persisted` ignores a stale term).
    pub last_index: Index,
    /// Term of that entry (or of the snapshot if the log after it is empty).
    pub last_term: Term,
    /// The durable hard state.
    pub hard_state: HardState,
    /// Index and term of the durable snapshot marker, if any.
    pub snapshot_index: Index,
    pub snapshot_term: Term,
    /// Number of successful syncs since open; changes whenever anything new became durable.
    pub syncs: u64,
}

/// What recovery found in the WAL directory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    pub hard_state: HardState,
    /// The latest snapshot marker, if one was recorded.
    pub snapshot: Option<SnapshotMarker>,
    /// The log the WAL still holds, contiguous and in index order. Entries at or below the
    /// snapshot's index may be included (segments are compacted whole); use
    /// [`Recovered::entries_after`] to drop them.
    pub entries: Vec<LogEntry>,
    /// Set when a torn last record was cut off (already logged with file and offset).
    pub torn_tail: Option<TornTail>,
}

impl Recovered {
    /// The entries with an index greater than `index`.
    pub fn entries_after(&self, index: Index) -> &[LogEntry] {
        let start = self.entries.partition_point(|entry| entry.index <= index);
        &self.entries[start..]
    }

    /// Index of the last entry, or of the snapshot if the log after it is empty.
    pub fn last_index(&self) -> Index {
        match (self.entries.last(), &self.snapshot) {
            (Some(entry), Some(snapshot)) => entry.index.max(snapshot.index),
            (Some(entry), None) => entry.index,
            (None, Some(snapshot)) => snapshot.index,
            (None, None) => 0,
        }
    }
}

/// A torn tail that recovery cut off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    pub path: std::path::PathBuf,
    pub offset: u64,
    pub dropped_bytes: u64,
}
