//! Quorum math: the index a majority has reached and the outcome of a vote, for a simple
//! majority configuration and for a joint configuration (Raft thesis §4.3: in C_old,new a
//! decision needs separate majorities of C_old and C_new).

use crate::types::{Index, NodeId};

/// The outcome of a vote so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteResult {
    /// Not decided yet: some votes are missing.
    Pending,
    Won,
    Lost,
}

/// Votes stored inline for small clusters to keep the commit path free of allocation.
const INLINE_VOTERS: usize = 16;

/// The index a majority of `voters` has reached, given each voter's acknowledged index.
/// An empty configuration returns `Index::MAX`, so that it never limits a joint minimum.
pub fn majority_committed(voters: &[NodeId], acked: impl Fn(NodeId) -> Index) -> Index {
    let count = voters.len();
    if count == 0 {
        return Index::MAX;
    }
    let mut inline = [0 as Index; INLINE_VOTERS];
    let mut heap = Vec::new();
    let indexes: &mut [Index] = if count <= INLINE_VOTERS {
        &mut inline[..count]
    } else {
        heap.resize(count, 0);
        &mut heap
    };
    for (slot, &voter) in indexes.iter_mut().zip(voters) {
        *slot = acked(voter);
    }
    indexes.sort_unstable();
    // Sorted ascending, the entry at position count - majority is reached by exactly `majority`
    // voters or more: itself and everything after it.
    let majority = count / 2 + 1;
    indexes[count - majority]
}

/// The result of a vote among `voters`; `vote(id)` is `Some(granted)` for a voter that answered.
/// An empty configuration wins, so that it never blocks a joint decision.
pub fn majority_vote(voters: &[NodeId], vote: impl Fn(NodeId) -> Option<bool>) -> VoteResult {
    if voters.is_empty() {
        return VoteResult::Won;
    }
    let (mut granted, mut missing) = (0, 0);
    for &voter in voters {
        match vote(voter) {
            Some(true) => granted += 1,
            Some(false) => {}
            None => missing += 1,
        }
    }
    let majority = voters.len() / 2 + 1;
    if granted >= majority {
        VoteResult::Won
    } else if granted + missing >= majority {
        VoteResult::Pending
    } else {
        VoteResult::Lost
    }
}

/// The voters of a configuration: `incoming` always, `outgoing` only while joint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JointConfig {
    pub incoming: Vec<NodeId>,
    pub outgoing: Vec<NodeId>,
}

impl JointConfig {
    /// The committed index of a joint configuration is the smaller of the two majorities'.
    pub fn committed(&self, acked: impl Fn(NodeId) -> Index) -> Index {
        let incoming = majority_committed(&self.incoming, &acked);
        let outgoing = majority_committed(&self.outgoing, &acked);
        incoming.min(outgoing)
    }

    /// A joint vote is won only when both majorities win, lost when either loses.
    pub fn vote_result(&self, vote: impl Fn(NodeId) -> Option<bool>) -> VoteResult {
        let incoming = majority_vote(&self.incoming, &vote);
        let outgoing = majority_vote(&self.outgoing, &vote);
        match (incoming, outgoing) {
            (VoteResult::Won, VoteResult::Won) => VoteResult::Won,
            (VoteResult::Lost, _) | (_, VoteResult::Lost) => VoteResult::Lost,
            _ => VoteResult::Pending,
        }
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.incoming.contains(&id) || self.outgoing.contains(&id)
    }

    /// True when there is no voter at all (a joining node before it learns the configuration).
    pub fn is_empty(&self) -> bool {
        self.incoming.is_empty() && self.outgoing.is_empty()
    }

    /// Every voter once, sorted.
    pub fn ids(&self) -> Vec<NodeId> {
        let mut ids: Vec<NodeId> = self
            .incoming
            .iter()
            .chain(&self.outgoing)
            .copied()
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    /// The naive twin: the largest index that at least a majority of voters has reached,
    /// found by trying every candidate index.
    fn naive_majority_committed(voters: &[NodeId], acked: &HashMap<NodeId, Index>) -> Index {
        if voters.is_empty() {
            return Index::MAX;
        }
        let majority = voters.len() / 2 + 1;
        let value = |id: &NodeId| acked.get(id).copied().unwrap_or(0);
        voters
            .iter()
            .map(value)
            .filter(|&candidate| {
                voters.iter().filter(|id| value(id) >= candidate).count() >= majority
            })
            .max()
            .unwrap_or(0)
    }

    fn naive_vote(voters: &[NodeId], votes: &HashMap<NodeId, bool>) -> VoteResult {
        if voters.is_empty() {
            return VoteResult::Won;
        }
        let majority = voters.len() / 2 + 1;
        let yes = voters
            .iter()
            .filter(|id| votes.get(id) == Some(&true))
            .count();
        let no = voters
            .iter()
            .filter(|id| votes.get(id) == Some(&false))
            .count();
        if yes >= majority {
            VoteResult::Won
        } else if no > voters.len() - majority {
            VoteResult::Lost
        } else {
            VoteResult::Pending
        }
    }

    #[test]
    fn three_voters_commit_the_median() {
        let acked = HashMap::from([(1, 5), (2, 9), (3, 7)]);
        let lookup = |id| acked[&id];
        assert_eq!(majority_committed(&[1, 2, 3], lookup), 7);
    }

    #[test]
    fn one_slow_follower_does_not_stall_the_commit() {
        let acked = HashMap::from([(1, 100), (2, 100), (3, 0)]);
        assert_eq!(majority_committed(&[1, 2, 3], |id| acked[&id]), 100);
    }

    #[test]
    fn joint_commit_is_the_smaller_majority() {
        let acked = HashMap::from([(1, 10), (2, 10), (3, 10), (4, 2), (5, 2)]);
        let config = JointConfig {
            incoming: vec![1, 4, 5],
            outgoing: vec![1, 2, 3],
        };
        assert_eq!(config.committed(|id| acked[&id]), 2);
    }

    #[test]
    fn joint_vote_needs_both_majorities() {
        let config = JointConfig {
            incoming: vec![1, 2, 3],
            outgoing: vec![3, 4, 5],
        };
        let votes = HashMap::from([(1, true), (2, true), (4, false), (5, false)]);
        assert_eq!(
            config.vote_result(|id| votes.get(&id).copied()),
            VoteResult::Lost
        );
        let votes = HashMap::from([(1, true), (2, true), (4, true)]);
        assert_eq!(
            config.vote_result(|id| votes.get(&id).copied()),
            VoteResult::Pending
        );
        let votes = HashMap::from([(1, true), (3, true), (4, true)]);
        assert_eq!(
            config.vote_result(|id| votes.get(&id).copied()),
            VoteResult::Won
        );
    }

    #[test]
    fn empty_config_never_limits() {
        assert_eq!(majority_committed(&[], |_| 0), Index::MAX);
        assert_eq!(majority_vote(&[], |_| None), VoteResult::Won);
    }

    fn config_strategy() -> impl Strategy<Value = (Vec<NodeId>, Vec<NodeId>)> {
        let ids = proptest::sample::subsequence((1..=20u64).collect::<Vec<_>>(), 0..=20);
        (ids.clone(), ids)
    }

    proptest! {
        #[test]
        fn commit_matches_the_naive_twin(
            (incoming, outgoing) in config_strategy(),
            acked_values in proptest::collection::vec(0u64..50, 20),
        ) {
            let acked: HashMap<NodeId, Index> = (1..=20u64).zip(acked_values).collect();
            let lookup = |id: NodeId| acked[&id];
            prop_assert_eq!(majority_committed(&incoming, lookup), naive_majority_committed(&incoming, &acked));
            let config = JointConfig { incoming: incoming.clone(), outgoing: outgoing.clone() };
            let naive = naive_majority_committed(&incoming, &acked).min(naive_majority_committed(&outgoing, &acked));
            prop_assert_eq!(config.committed(lookup), naive);
        }

        #[test]
        fn votes_match_the_naive_twin(
            (incoming, outgoing) in config_strategy(),
            answers in proptest::collection::vec(0u8..3, 20),
        ) {
            let votes: HashMap<NodeId, bool> = (1..=20u64)
                .zip(answers)
                .filter(|(_, answer)| *answer < 2)
                .map(|(id, answer)| (id, answer == 1))
                .collect();
            let lookup = |id: NodeId| votes.get(&id).copied();
            prop_assert_eq!(majority_vote(&incoming, lookup), naive_vote(&incoming, &votes));
            let config = JointConfig { incoming: incoming.clone(), outgoing: outgoing.clone() };
            let expected = match (naive_vote(&incoming, &votes), naive_vote(&outgoing, &votes)) {
                (VoteResult::Won, VoteResult::Won) => VoteResult::Won,
                (VoteResult::Lost, _) | (_, VoteResult::Lost) => VoteResult::Lost,
                _ => VoteResult::Pending,
            };
            prop_assert_eq!(config.vote_result(lookup), expected);
        }
    }
}
