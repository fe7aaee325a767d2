//! `ballot-wal`: the durable home of the Raft log, the hard state and snapshots.
//!
//! The WAL knows nothing of Raft's roles (ARCHITECTURE.md): it stores [`LogEntry`]s,
//! [`HardState`]s and [`SnapshotMarker`]s, which the server and the simulator convert from and to
//! the Raft core's types.
//!
//! # Pieces
//!
//! - [`Wal`]: the log itself, synchronous and deterministic over any [`Disk`]. The simulator uses
//!   it directly on a [`FaultyDisk`]; `append`/`truncate_suffix`/`set_hard_state`/`set_snapshot`
//!   buffer records and [`Wal::sync`] makes them durable with one write and one `fdatasync`
//!   ([`Wal::start_sync`] / [`Wal::complete_sync`] split that in two, so syncs can overlap).
//!   Segments are zero-filled before use (`WalOptions::preallocate_segments`), so an
//!   `fdatasync` after an append has no size or extent change to commit.
//! - [`GroupCommitWal`]: a handle for the server, shareable across tasks, whose committer threads
//!   gather concurrent writes into shared syncs, up to three of them overlapping.
//! - [`SnapshotStore`]: snapshot files written atomically (temp file, checksum, fsync, rename,
//!   directory fsync), loaded newest-valid-first on start, and deleted only by explicit calls:
//!   behind the WAL's durable snapshot marker, never its file, and orphans on start.
//! - [`Disk`]: all file I/O; [`RealDisk`] for production, [`FaultyDisk`] for tests.
//!
//! # The durability contract
//!
//! Something is durable once the call that reports it ([`Wal::sync`] returning, a
//! [`GroupCommitWal`] completion, the durable watch) says so, and never before. After any I/O
//! error the WAL refuses every further call: a failed `fdatasync` may have dropped the data, so
//! retrying it could report lost data as durable (the "fsyncgate" lesson). The node must stop.
//!
//! The on-disk format and recovery rules are described byte by byte in `docs/wal.md`.

pub mod disk;
mod error;
mod group;
mod log_shape;
mod meta;
pub mod record;
pub mod sched;
mod segment;
mod snapshot;
mod types;
mod wal;

pub use disk::{CrashOptions, Disk, DiskFile, DiskOp, FaultyDisk, InjectedError, RealDisk};
pub use error::{RESTORE_ADVICE, SnapshotError, WalError};
pub use group::{Completion, GroupCommitOptions, GroupCommitWal, NO_SPACE_RETRY, Write};
pub use meta::META_FILE_NAME;
pub use snapshot::{LoadedSnapshot, SnapshotInfo, SnapshotStore, SnapshotWriter};
pub use types::{
    DurableState, HardState, Index, LogEntry, Recovered, SnapshotMarker, SyncMode, Term, TornTail,
    WalOptions,
};
pub use wal::{PendingSync, SEGMENT_SIZE_BYTES_MAX, SEGMENT_SIZE_BYTES_MIN, Wal};
