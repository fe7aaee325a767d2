//! Shared helpers of the WAL integration tests: a plain model of what the log should hold.

#![allow(dead_code)]

use std::path::Path;

use ballot_wal::{
    FaultyDisk, HardState, Index, LogEntry, Recovered, SnapshotMarker, Wal, WalError, WalOptions,
};
use bytes::Bytes;

pub const CLUSTER_ID: u64 = 0xc1;
pub const MEMBER_ID: u64 = 0x1;

pub fn options(segment_size_bytes: u64) -> WalOptions {
    let mut options = WalOptions::new(CLUSTER_ID, MEMBER_ID);
    options.segment_size_bytes = segment_size_bytes;
    options
}

pub fn open(
    disk: &FaultyDisk,
    segment_size_bytes: u64,
) -> Result<(Wal<FaultyDisk>, Recovered), WalError> {
    Wal::open(
        disk.clone(),
        Path::new("/data/wal"),
        options(segment_size_bytes),
    )
}

/// Opens the WAL with segments created empty and grown by appends (no zero-filled
/// preallocation): the layout of WALs written before preallocation existed.
pub fn open_without_preallocation(
    disk: &FaultyDisk,
    segment_size_bytes: u64,
) -> Result<(Wal<FaultyDisk>, Recovered), WalError> {
    let mut options = options(segment_size_bytes);
    options.preallocate_segments = false;
    Wal::open(disk.clone(), Path::new("/data/wal"), options)
}

pub fn entry(index: Index, term: u64, data: &[u8]) -> LogEntry {
    LogEntry {
        index,
        term,
        kind: (index % 2) as u8,
        data: Bytes::copy_from_slice(data),
    }
}

/// The logical content of a WAL: what recovery must give back, with entries at or below the
/// snapshot left out (compaction may or may not have deleted them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Model {
    pub hard_state: HardState,
    pub snapshot: Option<SnapshotMarker>,
    /// Entries after the snapshot, consecutive.
    pub entries: Vec<LogEntry>,
}

impl Model {
    pub fn snapshot_index(&self) -> Index {
        self.snapshot.as_ref().map_or(0, |snapshot| snapshot.index)
    }

    pub fn next_index(&self) -> Index {
        self.entries
            .last()
            .map_or(self.snapshot_index() + 1, |entry| entry.index + 1)
    }

    pub fn term_at(&self, index: Index) -> Option<u64> {
        if let Some(snapshot) = &self.snapshot
            && snapshot.index == index
        {
            return Some(snapshot.term);
        }
        self.entries
            .iter()
            .find(|entry| entry.index == index)
            .map(|entry| entry.term)
    }

    pub fn last_term(&self) -> u64 {
        self.term_at(self.next_index() - 1).unwrap_or(0)
    }

    /// Removes entries from `from_index` on.
    pub fn truncate(&mut self, from_index: Index) {
        self.entries.retain(|entry| entry.index < from_index);
    }

    pub fn append(&mut self, entries: &[LogEntry]) {
        if let Some(first) = entries.first() {
            self.truncate(first.index);
        }
        self.entries.extend_from_slice(entries);
    }

    /// Raft §7: entries after a matching snapshot entry stay, otherwise the log is discarded.
    pub fn snapshot(&mut self, marker: SnapshotMarker) {
        let matches = self.term_at(marker.index) == Some(marker.term);
        if matches {
            self.entries.retain(|entry| entry.index > marker.index);
        } else {
            self.entries.clear();
        }
        self.snapshot = Some(marker);
    }

    pub fn from_recovered(recovered: &Recovered) -> Model {
        let snapshot_index = recovered.snapshot.as_ref().map_or(0, |s| s.index);
        Model {
            hard_state: recovered.hard_state,
            snapshot: recovered.snapshot.clone(),
            entries: recovered.entries_after(snapshot_index).to_vec(),
        }
    }

    /// Checks the recovered entries are consecutive and reach back to the snapshot.
    pub fn assert_consistent(recovered: &Recovered) {
        for pair in recovered.entries.windows(2) {
            assert_eq!(
                pair[0].index + 1,
                pair[1].index,
                "entries must be consecutive"
            );
        }
        let needed = recovered.snapshot.as_ref().map_or(0, |s| s.index) + 1;
        if let Some(first) = recovered.entries.first() {
            assert!(
                first.index <= needed,
                "log starts at {} but must reach back to {needed}",
                first.index
            );
        }
    }
}
