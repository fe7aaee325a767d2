//! The hashes of the last compactions (etcd 3.5's `HashStorage`), for the leader's compaction
//! hash check (`crate::corruption`).
//!
//! When a compaction to revision R applies, every member hashes its history as it stood just
//! before: the HashKV at R with the previous compact revision (what etcd computes while it
//! compacts). Compactions apply at the same log index on every member, so members whose data
//! agree hold the same hash for R, and the check compares them without hashing anything when it
//! runs. The hashing runs on a blocking thread from a snapshot of the store taken as the
//! compaction applies; only the newest [`KEPT`] hashes are kept, in memory (after a restart a
//! member has none until its next compaction, as in etcd).

use std::collections::VecDeque;

use ballot_mvcc::HashKv;

/// How many compactions' hashes a member keeps (etcd's `hashStorageMaxSize`).
pub const KEPT: usize = 10;

/// The newest compactions' hashes, oldest first.
#[derive(Debug, Default)]
pub struct CompactionHashes {
    hashes: VecDeque<HashKv>,
}

impl CompactionHashes {
    /// Keeps `hash` (the HashKV at a compaction's revision, `hash_revision`), replacing one
    /// for the same revision and dropping the oldest beyond [`KEPT`].
    pub fn store(&mut self, hash: HashKv) {
        let at = self
            .hashes
            .partition_point(|kept| kept.hash_revision < hash.hash_revision);
        match self.hashes.get_mut(at) {
            Some(kept) if kept.hash_revision == hash.hash_revision => *kept = hash,
            _ => self.hashes.insert(at, hash),
        }
        while self.hashes.len() > KEPT {
            self.hashes.pop_front();
        }
    }

    /// The hash kept for the compaction to `revision`, if any.
    pub fn at(&self, revision: i64) -> Option<HashKv> {
        self.hashes
            .iter()
            .find(|kept| kept.hash_revision == revision)
            .copied()
    }

    /// The hashes kept for compactions after `revision`, newest first.
    pub fn newer_than(&self, revision: i64) -> Vec<HashKv> {
        self.hashes
            .iter()
            .rev()
            .take_while(|kept| kept.hash_revision > revision)
            .copied()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(revision: i64, value: u32) -> HashKv {
        HashKv {
            hash: value,
            compact_revision: revision - 1,
            hash_revision: revision,
            current_revision: revision + 5,
        }
    }

    #[test]
    fn the_newest_hashes_are_kept_in_revision_order() {
        let mut kept = CompactionHashes::default();
        // Hashing runs on blocking threads, so they may arrive out of order.
        for revision in [30, 10, 20] {
            kept.store(hash(revision, revision as u32));
        }
        assert_eq!(kept.at(20), Some(hash(20, 20)));
        assert_eq!(kept.at(25), None);
        let revisions = |hashes: Vec<HashKv>| -> Vec<i64> {
            hashes.iter().map(|hash| hash.hash_revision).collect()
        };
        assert_eq!(revisions(kept.newer_than(0)), [30, 20, 10]);
        assert_eq!(revisions(kept.newer_than(10)), [30, 20]);
        assert!(kept.newer_than(30).is_empty());

        // The same revision again (a member that hashed twice) replaces, not adds.
        kept.store(hash(20, 99));
        assert_eq!(kept.at(20), Some(hash(20, 99)));
        assert_eq!(kept.newer_than(0).len(), 3);

        for revision in 100..120 {
            kept.store(hash(revision, 0));
        }
        assert_eq!(kept.newer_than(0).len(), KEPT);
        assert_eq!(kept.at(30), None, "the oldest are dropped");
        assert_eq!(revisions(kept.newer_than(0)).last(), Some(&110));
    }
}
