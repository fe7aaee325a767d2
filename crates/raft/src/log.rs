//! The in-memory Raft log: every entry after the last compaction point, plus the cursors that
//! say how far the log is committed, handed to the application, durable and applied.
//!
//! There is no storage trait: the application persists what `Ready` hands it and gives the
//! durable log back on restart (see `docs/raft.md`, "The in-memory log").

use crate::types::{Entry, Index, SnapshotMeta, Term};
use std::collections::VecDeque;

/// A write handed to the application in one Ready, awaiting its durability report.
#[derive(Clone, Copy, Debug)]
struct PendingWrite {
    ready: u64,
    /// The write replaces the stored log from this index on (a snapshot replaces everything
    /// from its own index, which is then re-covered by the snapshot).
    first: Index,
    /// After the write the stored log ends here.
    last: Index,
}

#[derive(Clone, Debug)]
pub struct RaftLog {
    /// Invariant: `entries[i].index == offset + 1 + i`, and terms never decrease.
    entries: VecDeque<Entry>,
    /// The compaction point: the index of the latest snapshot or compaction, whose term is
    /// `offset_term`. Entries at or below it are gone.
    offset: Index,
    offset_term: Term,
    /// Invariant: offset <= committed <= last_index(). Committed entries are never truncated.
    committed: Index,
    /// Committed entries through here were handed to the application to apply.
    /// Invariant: applied <= applying <= committed.
    applying: Index,
    /// The application reported its state machine reflects the log through here.
    applied: Index,
    /// The first entry not yet handed out in a Ready for persisting.
    /// Invariant: offset < unstable_from <= last_index() + 1.
    unstable_from: Index,
    /// The in-memory log is durable through here.
    /// Invariant: persisted < unstable_from.
    persisted: Index,
    /// Where the stored log ends once every reported write is durable.
    durable_last: Index,
    /// Writes handed out but not reported durable, in Ready order.
    pending_writes: VecDeque<PendingWrite>,
}

impl RaftLog {
    /// A log whose durable content is `entries` after a compaction point `(offset, offset_term)`.
    /// The caller has validated that `entries` are contiguous after `offset`.
    pub fn restored(offset: Index, offset_term: Term, entries: Vec<Entry>) -> RaftLog {
        let last = offset + entries.len() as Index;
        RaftLog {
            entries: entries.into(),
            offset,
            offset_term,
            committed: offset,
            applying: offset,
            applied: offset,
            unstable_from: last + 1,
            persisted: last,
            durable_last: last,
            pending_writes: VecDeque::new(),
        }
    }

    /// Checks the cursor invariants documented on the fields (debug builds only; O(1)).
    fn debug_check(&self) {
        debug_assert!(
            self.offset <= self.committed && self.committed <= self.last_index(),
            "expected offset {} <= committed {} <= last {}",
            self.offset,
            self.committed,
            self.last_index()
        );
        debug_assert!(
            self.applied <= self.applying && self.applying <= self.committed,
            "expected applied {} <= applying {} <= committed {}",
            self.applied,
            self.applying,
            self.committed
        );
        debug_assert!(
            self.offset < self.unstable_from && self.unstable_from <= self.last_index() + 1,
            "expected offset {} < unstable_from {} <= last + 1 {}",
            self.offset,
            self.unstable_from,
            self.last_index() + 1
        );
        debug_assert!(
            self.persisted < self.unstable_from,
            "expected persisted {} < unstable_from {}",
            self.persisted,
            self.unstable_from
        );
    }

    pub fn first_index(&self) -> Index {
        self.offset + 1
    }

    pub fn last_index(&self) -> Index {
        self.offset + self.entries.len() as Index
    }

    pub fn last_term(&self) -> Term {
        self.entries
            .back()
            .map_or(self.offset_term, |entry| entry.term)
    }

    pub fn committed(&self) -> Index {
        self.committed
    }

    pub fn applied(&self) -> Index {
        self.applied
    }

    pub fn persisted(&self) -> Index {
        self.persisted
    }

    /// The term of entry `index`, if it is known (the compaction point or a kept entry).
    pub fn term(&self, index: Index) -> Option<Term> {
        if index == self.offset {
            return Some(self.offset_term);
        }
        self.entry(index).map(|entry| entry.term)
    }

    pub fn entry(&self, index: Index) -> Option<&Entry> {
        if index <= self.offset {
            return None;
        }
        self.entries.get((index - self.offset - 1) as usize)
    }

    pub fn match_term(&self, index: Index, term: Term) -> bool {
        self.term(index) == Some(term)
    }

    /// Raft paper §5.4.1: a candidate's log is at least as up to date as ours when its last
    /// term is higher, or the last terms are equal and its log is at least as long.
    pub fn is_up_to_date(&self, last_index: Index, last_term: Term) -> bool {
        last_term > self.last_term()
            || (last_term == self.last_term() && last_index >= self.last_index())
    }

    /// The first index in `entries` (a contiguous run) that is not already in the log with the
    /// same term; 0 when every entry is already present. Indexes at or below the compaction
    /// point count as present: they are committed.
    pub fn find_conflict(&self, entries: &[Entry]) -> Index {
        entries
            .iter()
            .find(|entry| entry.index > self.offset && !self.match_term(entry.index, entry.term))
            .map_or(0, |entry| entry.index)
    }

    /// Fast back-off (etcd's `findConflictByTerm`): the last index at or below `index` whose
    /// term is at most `term`, with that term. Used by a follower to answer a rejected Append
    /// and by the leader to pick the next probe.
    pub fn find_conflict_by_term(&self, index: Index, term: Term) -> (Index, Term) {
        let mut at = index.min(self.last_index());
        loop {
            match self.term(at) {
                Some(found) if found > term => at -= 1,
                Some(found) => return (at, found),
                // Compacted: the compaction point is the best hint we have.
                None => return (at, 0),
            }
        }
    }

    /// Appends entries that continue the log or replace a suffix of it. The first entry's
    /// index must be in `committed + 1 ..= last_index() + 1`.
    pub fn append(&mut self, entries: Vec<Entry>) {
        let Some(first) = entries.first() else {
            return;
        };
        let from = first.index;
        assert!(
            from > self.committed && from <= self.last_index() + 1,
            "append at {from} must be after the commit index {} and at most last index + 1 ({})",
            self.committed,
            self.last_index() + 1
        );
        if from <= self.last_index() {
            self.truncate_from(from);
        }
        debug_assert!(
            entries.first().map(|entry| entry.term) >= Some(self.last_term()),
            "appended terms must not decrease"
        );
        self.entries.extend(entries);
        self.debug_check();
    }

    /// Appends owned entries at the end (the leader's proposals).
    pub fn append_owned(&mut self, entries: impl IntoIterator<Item = Entry>) {
        for entry in entries {
            debug_assert_eq!(
                entry.index,
                self.last_index() + 1,
                "leader appends must be contiguous"
            );
            debug_assert!(
                entry.term >= self.last_term(),
                "appended terms must not decrease"
            );
            self.entries.push_back(entry);
        }
    }

    fn truncate_from(&mut self, from: Index) {
        debug_assert!(from > self.committed, "truncating committed entry {from}");
        self.entries.truncate((from - self.offset - 1) as usize);
        self.unstable_from = self.unstable_from.min(from);
        self.persisted = self.persisted.min(from - 1);
    }

    /// Entries in `[low, high]`, at most `max_bytes` of them (but at least one).
    pub fn slice(&self, low: Index, high: Index, max_bytes: u64) -> Vec<Entry> {
        let high = high.min(self.last_index());
        if low > high || low <= self.offset {
            return Vec::new();
        }
        let start = (low - self.offset - 1) as usize;
        let end = (high - self.offset) as usize;
        let mut bytes = 0u64;
        let mut out = Vec::with_capacity(end - start);
        for entry in self.entries.range(start..end) {
            bytes += entry.size_bytes();
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(entry.clone());
        }
        out
    }

    /// Moves the commit index forward (never back), bounded by the last index.
    pub fn commit_to(&mut self, index: Index) -> bool {
        let index = index.min(self.last_index());
        if index > self.committed {
            self.committed = index;
            self.debug_check();
            true
        } else {
            false
        }
    }

    /// Entries not yet handed out for persisting; marks them handed out.
    pub fn take_unstable(&mut self) -> Vec<Entry> {
        let from = self.unstable_from;
        if from > self.last_index() {
            return Vec::new();
        }
        self.unstable_from = self.last_index() + 1;
        self.entries
            .range((from - self.offset - 1) as usize..)
            .cloned()
            .collect()
    }

    pub fn has_unstable(&self) -> bool {
        self.unstable_from <= self.last_index()
    }

    /// Records that Ready `ready` carries a write replacing the stored log from `first` and
    /// ending at `last`.
    pub fn record_write(&mut self, ready: u64, first: Index, last: Index) {
        self.pending_writes
            .push_back(PendingWrite { ready, first, last });
    }

    /// Every Ready through `ready` is durable. Returns whether the persisted index moved.
    pub fn on_persisted(&mut self, ready: u64) -> bool {
        while let Some(write) = self.pending_writes.front() {
            if write.ready > ready {
                break;
            }
            self.durable_last = write.last;
            self.pending_writes.pop_front();
        }
        // The durable prefix of the in-memory log ends where the stored log ends, or earlier
        // where a write still in flight (or not yet handed out) replaces it.
        let in_flight_from = self
            .pending_writes
            .iter()
            .map(|write| write.first)
            .min()
            .unwrap_or(Index::MAX)
            .min(self.unstable_from);
        let persisted = self.durable_last.min(in_flight_from.saturating_sub(1));
        let moved = persisted != self.persisted;
        self.persisted = persisted;
        self.debug_check();
        moved
    }

    /// True when committed, durable entries wait to be handed to the application.
    pub fn has_next_committed(&self) -> bool {
        self.committed.min(self.persisted) > self.applying
    }

    /// The next committed, durable entries to apply, at most `max_bytes` (but at least one);
    /// marks them handed out.
    pub fn next_committed(&mut self, max_bytes: u64) -> Vec<Entry> {
        let high = self.committed.min(self.persisted);
        if high <= self.applying {
            return Vec::new();
        }
        let entries = self.slice(self.applying + 1, high, max_bytes);
        if let Some(last) = entries.last() {
            self.applying = last.index;
        }
        entries
    }

    /// The application applied through `index` (ignored beyond what was handed out).
    pub fn applied_to(&mut self, index: Index) {
        self.applied = self.applied.max(index.min(self.applying));
    }

    /// Restart: the application's state machine already reflects `applied`, and `commit` was
    /// durable. The caller validated both against the log.
    pub fn set_restored_cursors(&mut self, commit: Index, applied: Index) {
        self.committed = commit;
        self.applying = applied;
        self.applied = applied;
        self.debug_check();
    }

    /// Replaces the whole log with a snapshot (Raft paper §7): committed and applied jump to
    /// its index, and the write that installs it must become durable before anything after it
    /// counts as persisted.
    pub fn restore_snapshot(&mut self, meta: &SnapshotMeta) {
        self.entries.clear();
        self.offset = meta.index;
        self.offset_term = meta.term;
        self.committed = meta.index;
        self.applying = meta.index;
        self.applied = meta.index;
        self.unstable_from = meta.index + 1;
        self.persisted = self.persisted.min(meta.index.saturating_sub(1));
        self.debug_check();
    }

    /// Drops entries through `index`. The caller checked `index <= applied`.
    pub fn compact(&mut self, index: Index) {
        if index <= self.offset {
            return;
        }
        debug_assert!(index <= self.applied, "compacting unapplied entry {index}");
        let Some(term) = self.term(index) else {
            return;
        };
        self.entries.drain(..(index - self.offset) as usize);
        self.offset = index;
        self.offset_term = term;
        self.debug_check();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::EntryKind;
    use bytes::Bytes;

    fn entries(from: Index, terms: &[Term]) -> Vec<Entry> {
        terms
            .iter()
            .enumerate()
            .map(|(i, &term)| Entry {
                term,
                index: from + i as Index,
                kind: EntryKind::Normal,
                data: Bytes::new(),
            })
            .collect()
    }

    #[test]
    fn up_to_date_compares_term_then_index() {
        let log = RaftLog::restored(0, 0, entries(1, &[1, 1, 2]));
        assert!(
            log.is_up_to_date(1, 3),
            "higher last term wins even when shorter"
        );
        assert!(
            !log.is_up_to_date(10, 1),
            "lower last term loses even when longer"
        );
        assert!(log.is_up_to_date(3, 2));
        assert!(!log.is_up_to_date(2, 2));
    }

    #[test]
    fn conflict_by_term_skips_whole_terms() {
        let log = RaftLog::restored(0, 0, entries(1, &[1, 1, 2, 2, 4, 4]));
        assert_eq!(log.find_conflict_by_term(6, 3), (4, 2));
        assert_eq!(log.find_conflict_by_term(6, 5), (6, 4));
        assert_eq!(log.find_conflict_by_term(10, 1), (2, 1));
        assert_eq!(log.find_conflict_by_term(6, 0), (0, 0));
    }

    #[test]
    fn truncation_moves_persisted_back_until_the_replacement_is_durable() {
        let mut log = RaftLog::restored(0, 0, entries(1, &[1, 1, 1]));
        assert_eq!(log.persisted(), 3);
        log.append(entries(2, &[2]));
        assert_eq!(log.persisted(), 1);
        assert_eq!(log.take_unstable(), entries(2, &[2]));
        log.record_write(7, 2, 2);
        assert!(!log.on_persisted(6));
        assert!(log.on_persisted(7));
        assert_eq!(log.persisted(), 2);
    }

    #[test]
    fn an_older_report_cannot_cover_a_rewritten_suffix() {
        // Ready 1 writes 2..=3 at term 1; Ready 2 replaces 2 with term 2; Ready 3 rewrites
        // 2..=3 at term 1 again (same index and term as Ready 1). Ready 1 being durable must
        // not make index 3 count as durable while Ready 2's truncation is still in flight.
        let mut log = RaftLog::restored(0, 0, entries(1, &[1]));
        log.append(entries(2, &[1, 1]));
        log.take_unstable();
        log.record_write(1, 2, 3);
        log.append(entries(2, &[2]));
        log.take_unstable();
        log.record_write(2, 2, 2);
        log.append(entries(2, &[3, 3]));
        log.take_unstable();
        log.record_write(3, 2, 3);
        log.on_persisted(1);
        assert_eq!(log.persisted(), 1);
        log.on_persisted(2);
        assert_eq!(log.persisted(), 1);
        log.on_persisted(3);
        assert_eq!(log.persisted(), 3);
    }

    #[test]
    fn committed_entries_wait_for_durability() {
        let mut log = RaftLog::restored(0, 0, Vec::new());
        log.append_owned(entries(1, &[1, 1]));
        log.commit_to(2);
        assert!(!log.has_next_committed());
        log.take_unstable();
        log.record_write(1, 1, 2);
        log.on_persisted(1);
        assert_eq!(log.next_committed(u64::MAX).len(), 2);
        assert!(!log.has_next_committed());
    }

    #[test]
    fn slice_respects_the_byte_cap_but_returns_one_entry() {
        let log = RaftLog::restored(0, 0, entries(1, &[1, 1, 1, 1]));
        assert_eq!(log.slice(1, 4, 1).len(), 1);
        assert_eq!(log.slice(1, 4, 48).len(), 2);
        assert_eq!(log.slice(2, 10, u64::MAX).len(), 3);
    }

    #[test]
    fn compaction_keeps_the_term_of_the_compaction_point() {
        let mut log = RaftLog::restored(0, 0, entries(1, &[1, 2, 3]));
        log.set_restored_cursors(3, 2);
        log.compact(2);
        assert_eq!(
            (log.first_index(), log.term(2), log.term(1)),
            (3, Some(2), None)
        );
        assert_eq!(log.find_conflict_by_term(3, 2), (2, 2));
    }
}
