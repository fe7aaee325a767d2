//! The snapshot pruning task: deletes old snapshot files once the WAL reports a newer snapshot
//! marker durable, and never before.
//!
//! Snapshot files reach the store from two places: the apply task's own snapshots (every
//! `--snapshot-count` entries) and snapshots received from the leader (`transport.rs`). Either
//! way the file is saved first and its marker goes into the WAL after it; until that marker is
//! durable a crash can lose it, and recovery then needs the file of the previous durable marker.
//! So this task follows the WAL's own report of what is durable (its durable-snapshot watch,
//! which changes only when the durable marker does, so the task does not wake at every sync)
//! and hands each newer durable marker to `SnapshotStore::prune_behind_durable_marker`, which
//! keeps that marker's file, every newer one and `--max-snapshots` - 1 older ones (two by default)
//! (docs/wal.md, "Which files are kept"). One task does all pruning, so prunes never race each
//! other. `storage::open` removes the files whose markers a crash lost and prunes behind the
//! recovered marker before this task starts.

use std::sync::Arc;

use ballot_wal::{DurableState, Index, RealDisk, SnapshotStore};
use tokio::sync::watch;

use super::NodeShared;

/// Runs until the node stops or the WAL writer ends (a WAL failure is reported by the tasks that
/// write; this one just stops watching). A failed prune is fatal: it is a disk error, or a
/// durable marker whose file is gone.
pub(crate) async fn run(shared: Arc<NodeShared>) -> Result<(), String> {
    let mut pruner = Pruner::new(shared.wal.durable_snapshot(), shared.snapshots.clone());
    let mut stop = shared.stop.subscribe();
    loop {
        tokio::select! {
            pruned = pruner.prune_next() => {
                if pruned?.is_none() {
                    return Ok(());
                }
            }
            _ = stop.wait_for(|stopped| *stopped) => return Ok(()),
        }
    }
}

/// Prunes behind each newer durable snapshot marker the WAL reports.
struct Pruner {
    durable: watch::Receiver<DurableState>,
    snapshots: SnapshotStore<RealDisk>,
    /// The durable marker's index at the last prune (or at start, where `storage::open` pruned).
    pruned_through: Index,
}

impl Pruner {
    fn new(
        mut durable: watch::Receiver<DurableState>,
        snapshots: SnapshotStore<RealDisk>,
    ) -> Pruner {
        let pruned_through = durable.borrow_and_update().snapshot_index;
        Pruner {
            durable,
            snapshots,
            pruned_through,
        }
    }

    /// Waits until the WAL reports a snapshot marker newer than the last one pruned behind as
    /// durable, then prunes behind it (listing, unlinking and a directory fsync, off the async
    /// threads). Returns how many files were deleted, or `None` once the WAL writer has ended.
    async fn prune_next(&mut self) -> Result<Option<usize>, String> {
        let pruned_through = self.pruned_through;
        let durable = match self
            .durable
            .wait_for(|state| state.snapshot_index > pruned_through)
            .await
        {
            Ok(state) => state.clone(),
            Err(_) => return Ok(None),
        };
        let index = durable.snapshot_index;
        self.pruned_through = index;
        let snapshots = self.snapshots.clone();
        let deleted =
            tokio::task::spawn_blocking(move || snapshots.prune_behind_durable_marker(&durable))
                .await
                .map_err(|error| format!("snapshot pruning stopped: {error}"))?
                .map_err(|error| {
                    format!("pruning snapshot files behind marker {index}: {error}")
                })?;
        if deleted > 0 {
            tracing::debug!(
                durable_snapshot_index = index,
                deleted,
                "deleted snapshot files behind the durable marker"
            );
        }
        Ok(Some(deleted))
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use ballot_wal::{
        GroupCommitOptions, GroupCommitWal, LogEntry, SnapshotMarker, Wal, WalOptions, Write,
    };
    use bytes::Bytes;

    use super::*;

    fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "ballot-snapshot-pruning-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    fn marker(index: u64) -> Write {
        Write {
            snapshot: Some(SnapshotMarker {
                index,
                term: 1,
                meta: Bytes::new(),
            }),
            entries: Vec::new(),
            hard_state: None,
        }
    }

    fn files(snapshots: &SnapshotStore<RealDisk>) -> Vec<u64> {
        snapshots
            .list()
            .expect("list")
            .iter()
            .map(|(index, _, _)| *index)
            .collect()
    }

    #[tokio::test]
    async fn files_go_only_behind_a_durable_marker_and_never_newer_ones() {
        let root = temp_dir();
        let mut options = WalOptions::new(0xc1, 0xa1);
        options.segment_size_bytes = 64 * 1024;
        let (wal, _) = Wal::open(RealDisk, &root.join("wal"), options).expect("open WAL");
        let wal = GroupCommitWal::spawn(wal, GroupCommitOptions::default()).expect("spawn");
        let snapshots = SnapshotStore::open(
            RealDisk,
            &root.join("snap"),
            crate::storage::SNAPSHOT_FILES_KEPT,
        )
        .expect("open store");
        let entries = (1..=12)
            .map(|index| LogEntry {
                index,
                term: 1,
                kind: 0,
                data: Bytes::from_static(b"e"),
            })
            .collect();
        wal.append(Write {
            snapshot: None,
            entries,
            hard_state: None,
        })
        .await
        .expect("append");
        let mut pruner = Pruner::new(wal.durable_snapshot(), snapshots.clone());
        for index in [2, 4, 6, 8] {
            snapshots
                .save(index, 1, Bytes::new(), b"data")
                .expect("save");
        }
        wal.append(marker(8)).await.expect("marker 8");
        assert_eq!(pruner.prune_next().await, Ok(Some(1)));
        assert_eq!(files(&snapshots), vec![8, 6, 4]);
        // 10 and 12 are saved; only marker 10 becomes durable, 12's is never written (as if
        // still pending): 12 must survive, 4 goes.
        for index in [10, 12] {
            snapshots
                .save(index, 1, Bytes::new(), b"data")
                .expect("save");
        }
        wal.append(marker(10)).await.expect("marker 10");
        assert_eq!(pruner.prune_next().await, Ok(Some(1)));
        assert_eq!(files(&snapshots), vec![12, 10, 8, 6]);
        wal.shutdown().await.expect("shutdown");
        assert_eq!(
            pruner.prune_next().await,
            Ok(None),
            "the task ends with the WAL writer"
        );
        let _ = std::fs::remove_dir_all(root);
    }
}
