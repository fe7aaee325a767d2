//! Typed errors of the WAL and snapshot store.

use std::io;
use std::path::PathBuf;

use crate::types::Index;

/// What to do when on-disk state cannot be trusted.
pub const RESTORE_ADVICE: &str = "this member's data cannot be trusted: restore this member from a peer \
     (stop it, move its data directory aside, and re-add it to the cluster so it receives a snapshot)";

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// A read, write, fsync or directory operation failed. Fatal: the WAL refuses every later
    /// call, because after a failed fsync the kernel may have dropped the dirty pages and a retry
    /// would report success for data that is gone.
    #[error("WAL I/O error during {op} on {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A record before the tail of the log failed its checksum or made no sense.
    #[error(
        "corrupt WAL data in {path} at offset {offset}: expected {expected}, found {found}; {}",
        RESTORE_ADVICE
    )]
    Corrupt {
        path: PathBuf,
        offset: u64,
        expected: String,
        found: String,
    },

    /// The directory belongs to another cluster or member.
    #[error(
        "data directory {dir} belongs to cluster {found_cluster_id:#x} member {found_member_id:#x}, \
         but this node is cluster {expected_cluster_id:#x} member {expected_member_id:#x}; \
         refusing to open it (point --data-dir at this member's own directory)"
    )]
    ForeignDirectory {
        dir: PathBuf,
        found_cluster_id: u64,
        found_member_id: u64,
        expected_cluster_id: u64,
        expected_member_id: u64,
    },

    /// The disk has no room for the next segment ([`crate::Wal::ensure_room`]). Not fatal:
    /// nothing was written, the WAL stays usable, and the write can be retried once space is
    /// freed.
    #[error("no space left on the WAL's disk for the next segment {path}: {source}")]
    NoSpace {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// An earlier I/O error made the WAL unusable.
    #[error("WAL is unusable after an earlier fatal error: {cause}")]
    Poisoned { cause: String },

    /// The caller asked for something that would break the log's shape (a programming error in
    /// the caller, reported rather than panicking so the node can stop cleanly).
    #[error("invalid WAL request: {0}")]
    InvalidRequest(String),

    /// The group-commit writer thread is gone (shut down or crashed).
    #[error("WAL writer has stopped")]
    WriterStopped,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot I/O error during {op} on {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("corrupt snapshot {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },

    /// No usable snapshot exists although the WAL needs one.
    #[error(
        "no usable snapshot: the WAL records a snapshot at index {needed_index} and {detail}; {}",
        RESTORE_ADVICE
    )]
    Unrecoverable { needed_index: Index, detail: String },

    #[error("invalid snapshot request: {0}")]
    InvalidRequest(String),
}
