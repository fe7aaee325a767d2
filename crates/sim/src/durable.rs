//! A node's durable state as a model: what the host has been told is on disk.
//!
//! Without `--disk-faults` this model *is* the disk: a crash keeps exactly it. With
//! `--disk-faults` the real WAL holds the data, and the model is the promise the WAL made (it is
//! updated only when a sync returned), against which the WAL's recovery is checked after every
//! crash; after the restart the model is replaced by what the WAL actually recovered, so every
//! later check (acknowledgements, the restored log) runs against the real disk's content.

use ballot_raft::{Entry, HardState, Index, SnapshotMeta, Term};
use bytes::Bytes;

/// How a snapshot reached the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotOrigin {
    /// Taken locally from the applied state: the log after it stays.
    Local,
    /// Received from a leader and installed: it replaces the whole log (Ready contract, step 2).
    Installed,
}

/// What survives a crash (or, with the real WAL, what was promised to survive it).
#[derive(Clone, Debug, Default)]
pub struct DurableStore {
    pub hard_state: HardState,
    pub snapshot: Option<(SnapshotMeta, Bytes)>,
    /// The log after the snapshot (or from index 1), contiguous.
    pub entries: Vec<Entry>,
}

impl DurableStore {
    pub fn is_empty(&self) -> bool {
        self.snapshot.is_none()
            && self.entries.is_empty()
            && self.hard_state == HardState::default()
    }

    pub fn snapshot_index(&self) -> Index {
        self.snapshot.as_ref().map_or(0, |(meta, _)| meta.index)
    }

    pub fn snapshot_term(&self) -> Term {
        self.snapshot.as_ref().map_or(0, |(meta, _)| meta.term)
    }

    /// The last index of the log and its term (the snapshot's when no entry follows it).
    pub fn last(&self) -> (Index, Term) {
        match self.entries.last() {
            Some(entry) => (entry.index, entry.term),
            None => (self.snapshot_index(), self.snapshot_term()),
        }
    }

    /// Appends entries, first truncating the stored suffix they replace (the Ready contract,
    /// step 2). Entries at or below the snapshot are already covered by it.
    pub fn append(&mut self, entries: &[Entry]) {
        let snapshot_index = self.snapshot_index();
        let entries: Vec<&Entry> = entries
            .iter()
            .filter(|e| e.index > snapshot_index)
            .collect();
        let Some(first) = entries.first() else {
            return;
        };
        let keep = self
            .entries
            .iter()
            .take_while(|e| e.index < first.index)
            .count();
        self.entries.truncate(keep);
        self.entries.extend(entries.into_iter().cloned());
    }

    /// Records a snapshot. An installed one replaces the whole log; a local one only makes the
    /// entries it covers unnecessary. An older snapshot than the one held changes nothing.
    pub fn set_snapshot(&mut self, meta: SnapshotMeta, data: Bytes, origin: SnapshotOrigin) {
        if origin == SnapshotOrigin::Installed {
            self.entries.clear();
        }
        if meta.index > self.snapshot_index() {
            self.snapshot = Some((meta, data));
        }
        self.trim_to_snapshot();
    }

    /// Drops entries the snapshot covers.
    fn trim_to_snapshot(&mut self) {
        let snapshot_index = self.snapshot_index();
        self.entries.retain(|e| e.index > snapshot_index);
    }

    /// The entry at `index`, if the log holds it.
    pub fn entry(&self, index: Index) -> Option<&Entry> {
        let first = self.entries.first()?.index;
        self.entries.get(index.checked_sub(first)? as usize)
    }
}
