//! The figure Maintenance.Status reports as `dbSize` (and `/metrics` as
//! `etcd_mvcc_db_total_size_in_bytes`).
//!
//! etcd reports the size of its bbolt file. Ballot keeps its state in memory and on disk as the
//! latest snapshot plus the log after it, so its nearest honest figure is the size of that pair:
//! the latest snapshot's data plus the payload bytes of every log entry applied since. It is
//! maintained incrementally (one atomic add per applied batch, reset at each snapshot), so
//! answering Status costs nothing. Like a bbolt file, it grows with writes and shrinks only when
//! the state is rewritten (here, by the next snapshot, which drops overwritten and compacted
//! history). It is never zero: before the first snapshot the base is the size of an empty
//! store's snapshot, which `etcdctl endpoint status -w json` relies on (it omits zero fields).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Snapshot size plus bytes applied since; see the module comment.
#[derive(Debug)]
pub(crate) struct DbSize {
    /// Payload bytes of the entries applied since the node started; only grows.
    applied_bytes: AtomicU64,
    /// The latest snapshot: its data size and `applied_bytes` as of its index.
    base: Mutex<SnapshotBase>,
}

#[derive(Clone, Copy, Debug)]
struct SnapshotBase {
    size_bytes: u64,
    applied_bytes_mark: u64,
}

impl DbSize {
    /// Starts from a snapshot of `size_bytes` (or an empty store's snapshot size).
    pub(crate) fn new(size_bytes: u64) -> DbSize {
        DbSize {
            applied_bytes: AtomicU64::new(0),
            base: Mutex::new(SnapshotBase {
                size_bytes,
                applied_bytes_mark: 0,
            }),
        }
    }

    /// Counts the payload of entries just applied.
    pub(crate) fn add_applied(&self, bytes: u64) {
        if bytes > 0 {
            self.applied_bytes.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// The mark to pass to [`DbSize::snapshot_saved`] for a snapshot of the state as it is now
    /// (read on the apply task when the store is copied for the snapshot).
    pub(crate) fn applied_mark(&self) -> u64 {
        self.applied_bytes.load(Ordering::Relaxed)
    }

    /// A snapshot of `size_bytes` was saved or installed for the state as of `mark`: entries
    /// applied after `mark` keep counting on top of it.
    pub(crate) fn snapshot_saved(&self, size_bytes: u64, mark: u64) {
        let mut base = self.base.lock().unwrap_or_else(|p| p.into_inner());
        // Snapshots finish in the order they were started (one at a time), but an installed
        // snapshot may race a local one; keep the newer state.
        if mark >= base.applied_bytes_mark {
            *base = SnapshotBase {
                size_bytes,
                applied_bytes_mark: mark,
            };
        }
    }

    /// Whether the payload applied since the latest snapshot has reached that snapshot's size:
    /// only then does writing a new snapshot cost no more than the log it lets go.
    pub(crate) fn log_outweighs_snapshot(&self) -> bool {
        let base = *self.base.lock().unwrap_or_else(|p| p.into_inner());
        let applied = self.applied_bytes.load(Ordering::Relaxed);
        applied.saturating_sub(base.applied_bytes_mark) >= base.size_bytes
    }

    pub(crate) fn bytes(&self) -> u64 {
        let base = *self.base.lock().unwrap_or_else(|p| p.into_inner());
        let applied = self.applied_bytes.load(Ordering::Relaxed);
        base.size_bytes + applied.saturating_sub(base.applied_bytes_mark)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_with_applied_entries_and_restarts_from_each_snapshot() {
        let size = DbSize::new(100);
        assert_eq!(size.bytes(), 100);
        size.add_applied(50);
        assert_eq!(size.bytes(), 150);
        let mark = size.applied_mark();
        // Applied while the snapshot is being written: counted on top of it.
        size.add_applied(7);
        size.snapshot_saved(120, mark);
        assert_eq!(size.bytes(), 127);
        // An older snapshot finishing late does not replace the newer base.
        size.snapshot_saved(10, 0);
        assert_eq!(size.bytes(), 127);
    }

    #[test]
    fn the_log_outweighs_the_snapshot_once_as_many_bytes_were_applied_since() {
        let size = DbSize::new(100);
        size.add_applied(99);
        assert!(!size.log_outweighs_snapshot());
        size.add_applied(1);
        assert!(size.log_outweighs_snapshot());
        let mark = size.applied_mark();
        size.add_applied(30);
        size.snapshot_saved(1_000, mark);
        // Counted from the new snapshot's mark against its size.
        assert!(!size.log_outweighs_snapshot());
        size.add_applied(970);
        assert!(size.log_outweighs_snapshot());
    }
}
