//! The Raft safety invariants (Raft paper, figure 3), checked after every simulated step.
//!
//! Each node's log is mirrored from what its `Ready`s told the application to write, as
//! `(term, prefix fingerprint)` per index, where the prefix fingerprint hashes every entry up to
//! and including that index. Two logs agree on a prefix iff their fingerprints at its last index
//! agree, so each invariant becomes a few map look-ups:
//!
//! - Election safety (§5.2): a map term -> leader; a second leader in one term is a violation.
//! - Leader append-only (§5.3): a node that stays leader in one term never truncates its log.
//! - Log matching (§5.3): every `(index, term)` ever written anywhere maps to one prefix
//!   fingerprint; a node writing the same `(index, term)` over a different prefix is a violation.
//! - Committed entries are never lost: commit points observed anywhere form one global chain;
//!   every later commit point must extend it.
//! - Leader completeness (§5.4.1): a leader of term T holds every entry committed in a term < T.
//! - State-machine safety (§5.4.3): a node applies only the committed entry at each index, and the
//!   state after applying index i has the same fingerprint on every node.

use std::collections::BTreeMap;

use crate::fingerprint::Fingerprint;

pub type NodeId = u64;
pub type Term = u64;
pub type Index = u64;

/// A broken invariant, with what was expected and what was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub invariant: &'static str,
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} violated: {}", self.invariant, self.detail)
    }
}

fn violation(invariant: &'static str, detail: String) -> Result<(), Violation> {
    Err(Violation { invariant, detail })
}

/// The fingerprint of the log prefix ending with an entry, given the prefix before it.
pub fn chain_fingerprint(previous: u64, index: Index, term: Term, entry_digest: u64) -> u64 {
    let mut hash = Fingerprint::new();
    hash.write_u64(previous);
    hash.write_u64(index);
    hash.write_u64(term);
    hash.write_u64(entry_digest);
    hash.finish()
}

/// One node's log as its `Ready`s described it: a compacted base (snapshot) and the entries after.
#[derive(Clone, Debug, Default)]
pub struct LogMirror {
    base_index: Index,
    base_term: Term,
    base_fingerprint: u64,
    /// `entries[k]` describes index `base_index + 1 + k` as (term, prefix fingerprint).
    entries: Vec<(Term, u64)>,
}

impl LogMirror {
    pub fn last_index(&self) -> Index {
        self.base_index + self.entries.len() as Index
    }

    pub fn base_index(&self) -> Index {
        self.base_index
    }

    /// (term, prefix fingerprint) at `index`, if the mirror still holds it (the base counts).
    pub fn at(&self, index: Index) -> Option<(Term, u64)> {
        if index == self.base_index {
            return Some((self.base_term, self.base_fingerprint));
        }
        if index < self.base_index {
            return None;
        }
        self.entries
            .get((index - self.base_index - 1) as usize)
            .copied()
    }

    pub fn term_at(&self, index: Index) -> Option<Term> {
        self.at(index).map(|(term, _)| term)
    }

    /// Resets the log to a snapshot base (installing a snapshot discards the whole log).
    pub fn reset_to(&mut self, index: Index, term: Term, fingerprint: u64) {
        self.base_index = index;
        self.base_term = term;
        self.base_fingerprint = fingerprint;
        self.entries.clear();
    }

    /// Forgets entries below `index` (compaction); the entry at `index` becomes the base.
    pub fn compact_to(&mut self, index: Index) {
        if index <= self.base_index {
            return;
        }
        let Some((term, fingerprint)) = self.at(index) else {
            return;
        };
        let drop = (index - self.base_index) as usize;
        self.entries.drain(..drop);
        self.base_index = index;
        self.base_term = term;
        self.base_fingerprint = fingerprint;
    }
}

/// The global record the invariants are checked against.
#[derive(Debug, Default)]
pub struct SafetyChecker {
    /// The leader of each term and the incarnation (restart count) in which it led.
    leader_of_term: BTreeMap<Term, (NodeId, u32)>,
    /// Prefix fingerprint of every (index, term) ever written by any node.
    written: BTreeMap<(Index, Term), u64>,
    /// The committed chain: `committed[i - 1]` is (term, prefix fingerprint) of index i.
    committed: Vec<(Term, u64)>,
    /// For each term, the highest commit point observed by a node in that term.
    commit_point_by_term: BTreeMap<Term, Index>,
    /// State fingerprint after applying each index (index 0 = the empty state is implicit).
    applied_state: BTreeMap<Index, u64>,
}

impl SafetyChecker {
    pub fn new() -> SafetyChecker {
        SafetyChecker::default()
    }

    pub fn committed_index(&self) -> Index {
        self.committed.len() as Index
    }

    pub fn committed_at(&self, index: Index) -> Option<(Term, u64)> {
        if index == 0 {
            return Some((0, 0));
        }
        self.committed.get(index as usize - 1).copied()
    }

    /// The prefix fingerprint recorded for `(index, term)`, used as the base of an installed
    /// snapshot. Index 0 is the empty log.
    pub fn written_fingerprint(&self, index: Index, term: Term) -> Option<u64> {
        if index == 0 {
            return Some(0);
        }
        self.written.get(&(index, term)).copied()
    }

    /// Election safety: at most one leader per term, ever — and that leader leads it in one
    /// incarnation only. A node that led term T, crashed, and leads T again after restarting
    /// has lost the durable record of its term (Raft paper figure 2: currentTerm is persistent),
    /// and its second reign may write different entries under the same (index, term).
    pub fn observe_leader(
        &mut self,
        node: NodeId,
        incarnation: u32,
        term: Term,
    ) -> Result<(), Violation> {
        match self.leader_of_term.get(&term) {
            Some(&(other, _)) if other != node => violation(
                "election safety",
                format!("nodes {other} and {node} were both leader in term {term}"),
            ),
            Some(&(_, earlier)) if earlier != incarnation => violation(
                "election safety",
                format!(
                    "node {node} led term {term} before a crash and again after restarting: its term was not durable"
                ),
            ),
            Some(_) => Ok(()),
            None => {
                self.leader_of_term.insert(term, (node, incarnation));
                Ok(())
            }
        }
    }

    /// Appends entries to a node's mirror (truncating a conflicting suffix first) and checks log
    /// matching and, when `leader_term` is set (the node was leader in that term before and after
    /// this write), leader append-only.
    pub fn observe_append(
        &mut self,
        node: NodeId,
        mirror: &mut LogMirror,
        entries: &[(Index, Term, u64)],
        leader_term: Option<Term>,
    ) -> Result<(), Violation> {
        let Some(&(first_index, _, _)) = entries.first() else {
            return Ok(());
        };
        if first_index <= mirror.base_index || first_index > mirror.last_index() + 1 {
            return violation(
                "log contiguity",
                format!(
                    "node {node} was asked to write entries from index {first_index} onto a log holding ({}, {}]",
                    mirror.base_index,
                    mirror.last_index()
                ),
            );
        }
        if let Some(term) = leader_term
            && first_index <= mirror.last_index()
        {
            return violation(
                "leader append-only",
                format!(
                    "node {node}, leader of term {term}, overwrote its log from index {first_index} (last was {})",
                    mirror.last_index()
                ),
            );
        }
        mirror
            .entries
            .truncate((first_index - mirror.base_index - 1) as usize);
        let mut previous = mirror
            .at(first_index - 1)
            .map(|(_, fingerprint)| fingerprint)
            .unwrap_or_default();
        for (offset, &(index, term, digest)) in entries.iter().enumerate() {
            if index != first_index + offset as Index {
                return violation(
                    "log contiguity",
                    format!("node {node} got a batch of entries with a gap at index {index}"),
                );
            }
            let fingerprint = chain_fingerprint(previous, index, term, digest);
            match self.written.get(&(index, term)) {
                Some(&known) if known != fingerprint => {
                    return violation(
                        "log matching",
                        format!(
                            "node {node} wrote entry (index {index}, term {term}) over a different log prefix (or with different data) than another node"
                        ),
                    );
                }
                Some(_) => {}
                None => {
                    self.written.insert((index, term), fingerprint);
                }
            }
            mirror.entries.push((term, fingerprint));
            previous = fingerprint;
        }
        Ok(())
    }

    /// A node reports commit index `commit` while in term `term`; its log must agree with the
    /// global committed chain, which grows to include its newly committed entries.
    pub fn observe_commit(
        &mut self,
        node: NodeId,
        mirror: &LogMirror,
        term: Term,
        commit: Index,
    ) -> Result<(), Violation> {
        if commit == 0 {
            return Ok(());
        }
        let known = self.committed_index();
        let check_at = commit.min(known);
        if check_at > 0 && check_at >= mirror.base_index {
            let Some((_, fingerprint)) = mirror.at(check_at) else {
                return violation(
                    "committed entries never lost",
                    format!(
                        "node {node} reports commit {commit} but its log ends at {}",
                        mirror.last_index()
                    ),
                );
            };
            if Some(fingerprint) != self.committed_at(check_at).map(|(_, f)| f) {
                return violation(
                    "committed entries never lost",
                    format!(
                        "node {node} (term {term}) reports commit {commit}, but its entry at index {check_at} differs from the entry committed there before"
                    ),
                );
            }
        }
        if commit > known {
            for index in known + 1..=commit {
                let Some(entry) = mirror.at(index).filter(|_| index > mirror.base_index) else {
                    return violation(
                        "committed entries never lost",
                        format!(
                            "node {node} reports commit {commit} but does not hold index {index} (log ({}, {}])",
                            mirror.base_index,
                            mirror.last_index()
                        ),
                    );
                };
                self.committed.push(entry);
            }
        }
        let point = self.commit_point_by_term.entry(term).or_default();
        *point = (*point).max(commit);
        Ok(())
    }

    /// Leader completeness: the leader of `term` holds every entry committed in an earlier term.
    pub fn check_leader_completeness(
        &self,
        node: NodeId,
        mirror: &LogMirror,
        term: Term,
    ) -> Result<(), Violation> {
        let required = self
            .commit_point_by_term
            .range(..term)
            .map(|(_, &index)| index)
            .max()
            .unwrap_or(0);
        if required == 0 {
            return Ok(());
        }
        let held = if required < mirror.base_index {
            // Compacted away: the snapshot base stands for the whole prefix; check it instead.
            Some((mirror.base_index, mirror.at(mirror.base_index)))
        } else {
            Some((required, mirror.at(required)))
        };
        let Some((index, Some((_, fingerprint)))) = held else {
            return violation(
                "leader completeness",
                format!(
                    "node {node}, leader of term {term}, lacks index {required} committed in an earlier term (log ends at {})",
                    mirror.last_index()
                ),
            );
        };
        let expected = self.committed_at(index).map(|(_, f)| f);
        if expected.is_some() && expected != Some(fingerprint) {
            return violation(
                "leader completeness",
                format!(
                    "node {node}, leader of term {term}, holds a different entry at index {index} than the one committed there"
                ),
            );
        }
        Ok(())
    }

    /// State-machine safety: `index` may only be applied as the committed entry there, and the
    /// state after it must match every other node's state after the same index.
    pub fn observe_apply(
        &mut self,
        node: NodeId,
        index: Index,
        entry_fingerprint: Option<u64>,
        state_fingerprint: u64,
    ) -> Result<(), Violation> {
        let committed = self.committed_at(index).map(|(_, f)| f);
        if committed.is_none() {
            return violation(
                "state-machine safety",
                format!(
                    "node {node} applied index {index}, beyond every commit point observed ({})",
                    self.committed_index()
                ),
            );
        }
        if let Some(fingerprint) = entry_fingerprint
            && Some(fingerprint) != committed
        {
            return violation(
                "state-machine safety",
                format!(
                    "node {node} applied at index {index} an entry other than the committed one"
                ),
            );
        }
        self.observe_state(node, index, state_fingerprint)
    }

    /// The state after applying through `index` (also checked when a snapshot is installed).
    pub fn observe_state(
        &mut self,
        node: NodeId,
        index: Index,
        state_fingerprint: u64,
    ) -> Result<(), Violation> {
        match self.applied_state.get(&index) {
            Some(&known) if known != state_fingerprint => violation(
                "state-machine safety",
                format!("node {node}'s state after index {index} differs from another node's"),
            ),
            Some(_) => Ok(()),
            None => {
                self.applied_state.insert(index, state_fingerprint);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(
        checker: &mut SafetyChecker,
        node: NodeId,
        mirror: &mut LogMirror,
        entries: &[(Index, Term)],
        leader_term: Option<Term>,
    ) -> Result<(), Violation> {
        let entries: Vec<(Index, Term, u64)> = entries
            .iter()
            .map(|&(index, term)| (index, term, index * 1000 + term))
            .collect();
        checker.observe_append(node, mirror, &entries, leader_term)
    }

    #[test]
    fn two_leaders_in_one_term_are_caught() {
        let mut checker = SafetyChecker::new();
        assert!(checker.observe_leader(1, 1, 2).is_ok());
        assert!(checker.observe_leader(1, 1, 2).is_ok());
        assert!(checker.observe_leader(2, 1, 3).is_ok());
        let error = checker.observe_leader(3, 1, 2).unwrap_err();
        assert_eq!(error.invariant, "election safety");
        // The same node leading the same term again after a restart lost its term.
        let error = checker.observe_leader(2, 2, 3).unwrap_err();
        assert_eq!(error.invariant, "election safety");
    }

    #[test]
    fn log_matching_catches_same_index_and_term_over_different_prefixes() {
        let mut checker = SafetyChecker::new();
        let mut a = LogMirror::default();
        let mut b = LogMirror::default();
        append(&mut checker, 1, &mut a, &[(1, 1), (2, 1), (3, 2)], None).unwrap();
        append(&mut checker, 2, &mut b, &[(1, 1), (2, 1)], None).unwrap();
        // Node 2 then writes (3, 2) after a different (2, _): impossible in Raft.
        append(&mut checker, 2, &mut b, &[(2, 3)], None).unwrap();
        let error = append(&mut checker, 2, &mut b, &[(3, 2)], None).unwrap_err();
        assert_eq!(error.invariant, "log matching");
    }

    #[test]
    fn leader_truncating_its_own_log_is_caught() {
        let mut checker = SafetyChecker::new();
        let mut log = LogMirror::default();
        append(&mut checker, 1, &mut log, &[(1, 1), (2, 2)], Some(2)).unwrap();
        let error = append(&mut checker, 1, &mut log, &[(2, 2)], Some(2)).unwrap_err();
        assert_eq!(error.invariant, "leader append-only");
    }

    #[test]
    fn commit_point_that_contradicts_the_chain_is_caught_and_leaders_must_hold_it() {
        let mut checker = SafetyChecker::new();
        let mut a = LogMirror::default();
        let mut b = LogMirror::default();
        append(&mut checker, 1, &mut a, &[(1, 1), (2, 1)], None).unwrap();
        checker.observe_commit(1, &a, 1, 2).unwrap();
        assert_eq!(checker.committed_index(), 2);
        append(&mut checker, 2, &mut b, &[(1, 1), (2, 2)], None).unwrap();
        let error = checker.observe_commit(2, &b, 2, 2).unwrap_err();
        assert_eq!(error.invariant, "committed entries never lost");
        // Node 2 as leader of term 3 lacks the entry committed at index 2 in term 1.
        let error = checker.check_leader_completeness(2, &b, 3).unwrap_err();
        assert_eq!(error.invariant, "leader completeness");
        assert!(checker.check_leader_completeness(1, &a, 3).is_ok());
        // Applying the committed entry is fine; applying a different one is not.
        let committed_fingerprint = a.at(2).map(|(_, f)| f);
        checker
            .observe_apply(1, 1, a.at(1).map(|(_, f)| f), 11)
            .unwrap();
        checker
            .observe_apply(1, 2, committed_fingerprint, 12)
            .unwrap();
        let error = checker
            .observe_apply(2, 2, b.at(2).map(|(_, f)| f), 12)
            .unwrap_err();
        assert_eq!(error.invariant, "state-machine safety");
        let error = checker
            .observe_apply(2, 2, committed_fingerprint, 99)
            .unwrap_err();
        assert_eq!(error.invariant, "state-machine safety");
    }
}
