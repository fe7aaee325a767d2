//! The shape of the log (which indexes exist, with which terms) and the rules that records apply
//! to it. The same rules run when writing and when replaying, so a record the writer accepted is
//! exactly a record replay accepts, and anything else found on disk is an impossible record.

use std::collections::VecDeque;

use crate::types::{HardState, Index, LogEntry, SnapshotMarker, Term};

/// The log as a window of known entries `[first_known, next_index)` plus the latest snapshot.
///
/// Entries below the window were compacted away (or never written here, after a snapshot was
/// installed). With `KEEP_ENTRIES` the entries themselves are held (replay); otherwise only term
/// runs are (the live writer, which needs terms for the snapshot rule and durability reports).
#[derive(Debug, Default)]
pub struct LogShape {
    /// Invariant: `first_known <= next_index`.
    first_known: Index,
    next_index: Index,
    /// Runs of equal terms over the window: `(first index of the run, term)`, ascending.
    /// Invariant: empty iff the window is empty, and `term_runs[0].0 == first_known`.
    term_runs: Vec<(Index, Term)>,
    /// Only filled when replaying.
    entries: Option<VecDeque<LogEntry>>,
    pub hard_state: HardState,
    pub snapshot: Option<SnapshotMarker>,
}

/// Why a record cannot apply to the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeError {
    pub expected: String,
    pub found: String,
}

impl LogShape {
    /// An empty log whose next entry will have `next_index`.
    pub fn starting_at(next_index: Index, keep_entries: bool) -> LogShape {
        LogShape {
            first_known: next_index,
            next_index,
            term_runs: Vec::new(),
            entries: keep_entries.then(VecDeque::new),
            hard_state: HardState::default(),
            snapshot: None,
        }
    }

    pub fn next_index(&self) -> Index {
        self.next_index
    }

    pub fn first_known(&self) -> Index {
        self.first_known
    }

    pub fn snapshot_index(&self) -> Index {
        self.snapshot.as_ref().map_or(0, |snapshot| snapshot.index)
    }

    /// The term of entry `index` if it is in the window.
    pub fn term_at(&self, index: Index) -> Option<Term> {
        if index < self.first_known || index >= self.next_index {
            return None;
        }
        let run = self.term_runs.partition_point(|(start, _)| *start <= index);
        Some(self.term_runs[run - 1].1)
    }

    /// The last index and its term (the snapshot's if the window does not reach it).
    pub fn last(&self) -> (Index, Term) {
        let last_index = self.next_index.saturating_sub(1);
        let term = self
            .term_at(last_index)
            .or_else(|| {
                self.snapshot
                    .as_ref()
                    .filter(|snapshot| snapshot.index == last_index)
                    .map(|snapshot| snapshot.term)
            })
            .unwrap_or(0);
        (last_index, term)
    }

    /// Checks that `entries` may be appended as they are (after any truncation).
    pub fn check_append(&self, entries: &[LogEntry]) -> Result<(), ShapeError> {
        self.check_consecutive(entries, self.next_index)
    }

    /// Checks that `entries` are consecutive from `expected_first`.
    pub fn check_consecutive(
        &self,
        entries: &[LogEntry],
        expected_first: Index,
    ) -> Result<(), ShapeError> {
        let Some(first) = entries.first() else {
            return Err(ShapeError {
                expected: "at least one entry".into(),
                found: "none".into(),
            });
        };
        if first.index != expected_first {
            return Err(ShapeError {
                expected: format!("entries continuing the log at index {expected_first}"),
                found: format!("entries starting at index {}", first.index),
            });
        }
        for (position, entry) in entries.iter().enumerate() {
            if entry.index != first.index + position as u64 {
                return Err(ShapeError {
                    expected: format!("consecutive indexes from {}", first.index),
                    found: format!("index {} at position {position}", entry.index),
                });
            }
        }
        Ok(())
    }

    pub fn append(&mut self, entries: &[LogEntry]) {
        for entry in entries {
            debug_assert_eq!(entry.index, self.next_index, "append checked first");
            if self
                .term_runs
                .last()
                .is_none_or(|(_, term)| *term != entry.term)
            {
                self.term_runs.push((entry.index, entry.term));
            }
            if let Some(kept) = &mut self.entries {
                kept.push_back(entry.clone());
            }
            self.next_index += 1;
        }
    }

    /// Checks a removal of the entries from `from_index` on (Raft §5.3: a follower drops its
    /// conflicting suffix). Entries covered by the snapshot are committed and never removed.
    pub fn check_truncate(&self, from_index: Index) -> Result<(), ShapeError> {
        if from_index > self.next_index || from_index <= self.snapshot_index() {
            return Err(ShapeError {
                expected: format!(
                    "a truncation index in {}..={} (after the snapshot, within the log)",
                    self.snapshot_index() + 1,
                    self.next_index
                ),
                found: format!("truncation from index {from_index}"),
            });
        }
        Ok(())
    }

    pub fn truncate(&mut self, from_index: Index) {
        let removed = self.next_index - from_index.max(self.first_known);
        self.next_index = from_index;
        self.first_known = self.first_known.min(from_index);
        let keep_runs = self
            .term_runs
            .partition_point(|(start, _)| *start < from_index);
        self.term_runs.truncate(keep_runs);
        if let Some(kept) = &mut self.entries {
            kept.truncate(kept.len().saturating_sub(removed as usize));
        }
    }

    /// Whether a snapshot through `marker.index` keeps the log after it: following Raft §7,
    /// the entries after it stay if the log holds the snapshot's last entry with the same term
    /// (or the index is below what the log still knows, an older snapshot); otherwise the whole
    /// log is discarded and continues after the snapshot.
    pub fn snapshot_keeps_log(&self, marker: &SnapshotMarker) -> bool {
        marker.index < self.first_known || self.term_at(marker.index) == Some(marker.term)
    }

    /// Records a snapshot through `marker.index`, keeping or discarding the log as decided by
    /// [`LogShape::snapshot_keeps_log`] when it was written.
    pub fn apply_snapshot(
        &mut self,
        marker: SnapshotMarker,
        keeps_log: bool,
    ) -> Result<(), ShapeError> {
        if marker.index == 0 {
            return Err(ShapeError {
                expected: "a snapshot index >= 1".into(),
                found: "index 0".into(),
            });
        }
        if keeps_log {
            let known_term = self.term_at(marker.index);
            let consistent = known_term == Some(marker.term)
                || (marker.index < self.first_known && known_term.is_none());
            if !consistent {
                return Err(ShapeError {
                    expected: format!(
                        "a snapshot keeping the log to match entry {} (term {:?})",
                        marker.index, known_term
                    ),
                    found: format!("snapshot term {}", marker.term),
                });
            }
        } else {
            self.first_known = marker.index + 1;
            self.next_index = marker.index + 1;
            self.term_runs.clear();
            if let Some(kept) = &mut self.entries {
                kept.clear();
            }
        }
        self.snapshot = Some(marker);
        Ok(())
    }

    /// Forgets entries below `first_index` (their segments were deleted).
    pub fn forget_below(&mut self, first_index: Index) {
        let first_index = first_index.min(self.next_index);
        if first_index <= self.first_known {
            return;
        }
        let forgotten = first_index - self.first_known;
        self.first_known = first_index;
        let whole_runs = self
            .term_runs
            .partition_point(|(start, _)| *start <= first_index)
            .saturating_sub(1);
        self.term_runs.drain(..whole_runs);
        if let Some(run) = self.term_runs.first_mut() {
            run.0 = first_index;
        }
        if first_index == self.next_index {
            self.term_runs.clear();
        }
        if let Some(kept) = &mut self.entries {
            kept.drain(..(forgotten as usize).min(kept.len()));
        }
    }

    /// The held entries (replay only).
    pub fn take_entries(&mut self) -> Vec<LogEntry> {
        self.entries.take().map(Vec::from).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn entries(first: Index, terms: &[Term]) -> Vec<LogEntry> {
        terms
            .iter()
            .enumerate()
            .map(|(position, term)| LogEntry {
                index: first + position as u64,
                term: *term,
                kind: 0,
                data: Bytes::new(),
            })
            .collect()
    }

    fn marker(index: Index, term: Term) -> SnapshotMarker {
        SnapshotMarker {
            index,
            term,
            meta: Bytes::new(),
        }
    }

    #[test]
    fn truncation_drops_the_suffix_and_its_terms() {
        let mut log = LogShape::starting_at(1, true);
        log.append(&entries(1, &[1, 1, 2, 2]));
        log.check_truncate(3).expect("within the log");
        log.truncate(3);
        assert_eq!(log.last(), (2, 1));
        assert_eq!(log.term_at(3), None);
        log.append(&entries(3, &[3]));
        assert_eq!(log.last(), (3, 3));
        assert_eq!(log.take_entries().len(), 3);
    }

    #[test]
    fn snapshot_with_matching_entry_keeps_the_suffix_section_7() {
        let mut log = LogShape::starting_at(1, true);
        log.append(&entries(1, &[1, 1, 2]));
        assert!(log.snapshot_keeps_log(&marker(2, 1)));
        log.apply_snapshot(marker(2, 1), true).expect("valid");
        assert_eq!(log.next_index(), 4);
        assert_eq!(log.term_at(3), Some(2));
    }

    #[test]
    fn snapshot_with_conflicting_or_missing_entry_discards_the_log_section_7() {
        let mut log = LogShape::starting_at(1, true);
        log.append(&entries(1, &[1, 1, 2]));
        assert!(!log.snapshot_keeps_log(&marker(2, 5)));
        log.apply_snapshot(marker(2, 5), false).expect("valid");
        assert_eq!((log.first_known(), log.next_index()), (3, 3));
        assert_eq!(log.last(), (2, 5));
        assert!(!log.snapshot_keeps_log(&marker(10, 6)));
        log.apply_snapshot(marker(10, 6), false).expect("valid");
        assert_eq!(log.next_index(), 11);
        assert!(log.take_entries().is_empty());
    }

    #[test]
    fn a_kept_log_must_hold_the_snapshot_entry() {
        let mut log = LogShape::starting_at(1, true);
        log.append(&entries(1, &[1, 1]));
        assert!(log.apply_snapshot(marker(2, 9), true).is_err());
        assert!(log.apply_snapshot(marker(5, 1), true).is_err());
    }

    #[test]
    fn truncation_below_the_snapshot_or_past_the_end_is_refused() {
        let mut log = LogShape::starting_at(1, false);
        log.append(&entries(1, &[1, 1, 1]));
        log.apply_snapshot(marker(2, 1), true).expect("valid");
        assert!(log.check_truncate(2).is_err());
        assert!(log.check_truncate(5).is_err());
        assert!(log.check_truncate(3).is_ok());
        assert!(log.check_truncate(4).is_ok());
    }

    #[test]
    fn forgetting_a_prefix_keeps_terms_of_the_rest() {
        let mut log = LogShape::starting_at(1, true);
        log.append(&entries(1, &[1, 1, 2, 2, 3]));
        log.forget_below(4);
        assert_eq!(log.first_known(), 4);
        assert_eq!(log.term_at(3), None);
        assert_eq!(log.term_at(4), Some(2));
        assert_eq!(log.term_at(5), Some(3));
        assert_eq!(log.take_entries().len(), 2);
    }
}
