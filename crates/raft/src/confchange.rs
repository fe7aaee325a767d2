//! Membership changes: how a [`ConfChange`] turns one configuration into the next (the rules
//! of etcd's `confchange` package: single-server changes per Raft thesis §4.1, joint consensus
//! per §4.3), and the history of configurations along the log.
//!
//! The configuration in effect is the one of the latest ConfChange entry in the log, committed
//! or not (Raft thesis §4.1). A change that is invalid in its position of the log, or that does
//! not decode, is a no-op on every member alike, so all members derive the same configuration
//! from the same log prefix.

use crate::error::ConfChangeError;
use crate::types::{ConfChange, ConfChangeKind, ConfChangeTransition, ConfState, Index, NodeId};
use std::collections::BTreeSet;

/// Working sets for building a configuration.
struct Sets {
    voters: BTreeSet<NodeId>,
    outgoing: BTreeSet<NodeId>,
    learners: BTreeSet<NodeId>,
    learners_next: BTreeSet<NodeId>,
}

impl Sets {
    fn of(conf: &ConfState) -> Sets {
        Sets {
            voters: conf.voters.iter().copied().collect(),
            outgoing: conf.voters_outgoing.iter().copied().collect(),
            learners: conf.learners.iter().copied().collect(),
            learners_next: conf.learners_next.iter().copied().collect(),
        }
    }

    fn into_conf(self, auto_leave: bool) -> ConfState {
        let conf = ConfState {
            voters: self.voters.into_iter().collect(),
            voters_outgoing: self.outgoing.into_iter().collect(),
            learners: self.learners.into_iter().collect(),
            learners_next: self.learners_next.into_iter().collect(),
            auto_leave,
        };
        check_invariants(&conf);
        conf
    }

    fn apply(&mut self, kind: ConfChangeKind, node: NodeId) -> Result<(), ConfChangeError> {
        if node == 0 {
            return Err(ConfChangeError::ZeroNode);
        }
        match kind {
            ConfChangeKind::AddVoter => {
                self.learners.remove(&node);
                self.learners_next.remove(&node);
                self.voters.insert(node);
            }
            ConfChangeKind::AddLearner => {
                if self.learners.contains(&node) {
                    return Ok(());
                }
                self.voters.remove(&node);
                self.learners_next.remove(&node);
                // A voter of the outgoing configuration keeps voting there until the joint
                // configuration is left; it becomes a learner then.
                if self.outgoing.contains(&node) {
                    self.learners_next.insert(node);
                } else {
                    self.learners.insert(node);
                }
            }
            ConfChangeKind::Remove => {
                self.voters.remove(&node);
                self.learners.remove(&node);
                self.learners_next.remove(&node);
            }
        }
        Ok(())
    }
}

/// Panics when a configuration built here breaks the invariants documented on [`ConfState`]:
/// that would be a bug in this module, not bad input.
fn check_invariants(conf: &ConfState) {
    for learner in &conf.learners {
        assert!(
            !conf.is_voter(*learner),
            "learner {learner} is also a voter in {conf:?}"
        );
    }
    for next in &conf.learners_next {
        assert!(
            conf.voters_outgoing.contains(next) && !conf.learners.contains(next),
            "next learner {next} must be an outgoing voter and not yet a learner in {conf:?}"
        );
    }
    if !conf.is_joint() {
        assert!(
            conf.learners_next.is_empty() && !conf.auto_leave,
            "a simple configuration has no next learners and no auto leave: {conf:?}"
        );
    }
}

/// Whether `change` enters a joint configuration, and if so whether it is left automatically.
fn enters_joint(change: &ConfChange) -> Option<bool> {
    match change.transition {
        ConfChangeTransition::Auto if change.changes.len() <= 1 => None,
        ConfChangeTransition::Auto | ConfChangeTransition::JointImplicit => Some(true),
        ConfChangeTransition::JointExplicit => Some(false),
    }
}

/// The configuration that results from applying `change` to `conf`.
pub fn apply(conf: &ConfState, change: &ConfChange) -> Result<ConfState, ConfChangeError> {
    if change.is_leave_joint() {
        return leave_joint(conf);
    }
    let mut sets = Sets::of(conf);
    // The very first configuration (bootstrap) is installed as a whole: with no voters there is
    // no quorum whose overlap a joint phase would protect.
    if conf.voters.is_empty() && !conf.is_joint() && conf.learners.is_empty() {
        for single in &change.changes {
            sets.apply(single.kind, single.node)?;
        }
        if sets.voters.is_empty() {
            return Err(ConfChangeError::NoVoters);
        }
        return Ok(sets.into_conf(false));
    }
    if conf.is_joint() {
        return Err(ConfChangeError::AlreadyJoint);
    }
    match enters_joint(change) {
        Some(auto_leave) => {
            sets.outgoing = sets.voters.clone();
            for single in &change.changes {
                sets.apply(single.kind, single.node)?;
            }
            if sets.voters.is_empty() {
                return Err(ConfChangeError::NoVoters);
            }
            Ok(sets.into_conf(auto_leave))
        }
        None => {
            for single in &change.changes {
                sets.apply(single.kind, single.node)?;
            }
            // Single-server changes are safe only because any majority of the old and any
            // majority of the new configuration overlap, which holds when at most one voter
            // changes (Raft thesis §4.1).
            let old_voters: BTreeSet<NodeId> = conf.voters.iter().copied().collect();
            if old_voters.symmetric_difference(&sets.voters).count() > 1 {
                return Err(ConfChangeError::TooManyVoterChanges);
            }
            if sets.voters.is_empty() {
                return Err(ConfChangeError::NoVoters);
            }
            Ok(sets.into_conf(false))
        }
    }
}

fn leave_joint(conf: &ConfState) -> Result<ConfState, ConfChangeError> {
    if !conf.is_joint() {
        return Err(ConfChangeError::NotJoint);
    }
    let mut sets = Sets::of(conf);
    sets.outgoing.clear();
    let next = std::mem::take(&mut sets.learners_next);
    sets.learners.extend(next);
    Ok(sets.into_conf(false))
}

/// True when a configuration received from a peer (in a snapshot) is well formed: sorted,
/// without duplicates, and obeying the invariants documented on [`ConfState`].
pub fn is_well_formed(conf: &ConfState) -> bool {
    let sorted = |ids: &[NodeId]| ids.windows(2).all(|pair| pair[0] < pair[1]) && !ids.contains(&0);
    sorted(&conf.voters)
        && sorted(&conf.voters_outgoing)
        && sorted(&conf.learners)
        && sorted(&conf.learners_next)
        && conf.learners.iter().all(|id| !conf.is_voter(*id))
        && conf
            .learners_next
            .iter()
            .all(|id| conf.voters_outgoing.contains(id) && !conf.learners.contains(id))
        && (conf.is_joint() || (conf.learners_next.is_empty() && !conf.auto_leave))
}

/// Decodes and applies the payload of a ConfChange entry; `None` when it is a no-op (does not
/// decode or is invalid against `conf`).
pub fn apply_entry_data(conf: &ConfState, data: &[u8]) -> Option<ConfState> {
    let change = ConfChange::decode(data).ok()?;
    apply(conf, &change).ok()
}

/// The configurations along the in-memory log: the one in effect at the compaction point, and
/// one per ConfChange entry after it. Truncating the log truncates the history, which is how a
/// conflicting suffix that carried a configuration change reverts it.
#[derive(Clone, Debug, Default)]
pub struct ConfHistory {
    /// The configuration in effect at the log's compaction point (or snapshot).
    base: ConfState,
    /// (index of a ConfChange entry, configuration after it), in index order.
    /// Invariant: indexes strictly increase.
    changes: Vec<(Index, ConfState)>,
}

impl ConfHistory {
    pub fn new(base: ConfState) -> ConfHistory {
        ConfHistory {
            base,
            changes: Vec::new(),
        }
    }

    /// The configuration in effect (after the last ConfChange entry).
    pub fn current(&self) -> &ConfState {
        self.changes.last().map_or(&self.base, |(_, conf)| conf)
    }

    /// The index of the last ConfChange entry in the log (0 if none after the base).
    pub fn last_change_index(&self) -> Index {
        self.changes.last().map_or(0, |(index, _)| *index)
    }

    /// The configuration in effect right after entry `index`.
    pub fn at(&self, index: Index) -> &ConfState {
        let position = self.changes.partition_point(|(at, _)| *at <= index);
        if position == 0 {
            &self.base
        } else {
            &self.changes[position - 1].1
        }
    }

    /// Every node that is a member of some configuration in effect at or after entry `index`
    /// (sorted, without duplicates).
    pub fn members_since(&self, index: Index) -> Vec<NodeId> {
        let later = self.changes.partition_point(|(at, _)| *at <= index);
        let mut all = self.at(index).all_members();
        for (_, conf) in &self.changes[later..] {
            all.extend(conf.all_members());
        }
        all.sort_unstable();
        all.dedup();
        all
    }

    /// Records a ConfChange entry at `index` (appended after every recorded one). Returns true
    /// when the configuration changed.
    pub fn push_entry(&mut self, index: Index, data: &[u8]) -> bool {
        debug_assert!(
            self.last_change_index() < index,
            "configuration history out of order: last {}, adding {index}",
            self.last_change_index()
        );
        match apply_entry_data(self.current(), data) {
            Some(conf) => {
                self.changes.push((index, conf));
                true
            }
            None => false,
        }
    }

    /// Forgets the changes of entries at or after `from` (the log was truncated there).
    /// Returns true when the configuration in effect changed.
    pub fn truncate_from(&mut self, from: Index) -> bool {
        let keep = self.changes.partition_point(|(at, _)| *at < from);
        let changed = keep < self.changes.len();
        self.changes.truncate(keep);
        changed
    }

    /// The log was compacted through `index`: the configuration there becomes the base.
    pub fn compact_to(&mut self, index: Index) {
        let position = self.changes.partition_point(|(at, _)| *at <= index);
        if position > 0 {
            self.base = self.changes[position - 1].1.clone();
            self.changes.drain(..position);
        }
    }

    /// Replaces everything with a snapshot's configuration.
    pub fn reset(&mut self, base: ConfState) {
        self.base = base;
        self.changes.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::ConfChangeSingle;
    use bytes::Bytes;

    fn conf(voters: &[NodeId], learners: &[NodeId]) -> ConfState {
        ConfState {
            voters: voters.to_vec(),
            learners: learners.to_vec(),
            ..ConfState::default()
        }
    }

    fn change(
        transition: ConfChangeTransition,
        changes: &[(ConfChangeKind, NodeId)],
    ) -> ConfChange {
        ConfChange {
            transition,
            changes: changes
                .iter()
                .map(|&(kind, node)| ConfChangeSingle { kind, node })
                .collect(),
            context: Bytes::new(),
        }
    }

    use ConfChangeKind::*;
    use ConfChangeTransition::*;

    #[test]
    fn bootstrap_adds_all_voters_at_once() {
        let result = apply(
            &ConfState::default(),
            &change(Auto, &[(AddVoter, 1), (AddVoter, 2), (AddVoter, 3)]),
        );
        assert_eq!(result, Ok(conf(&[1, 2, 3], &[])));
    }

    #[test]
    fn single_server_add_and_remove() {
        let three = conf(&[1, 2, 3], &[]);
        assert_eq!(
            apply(&three, &change(Auto, &[(AddVoter, 4)])),
            Ok(conf(&[1, 2, 3, 4], &[]))
        );
        assert_eq!(
            apply(&three, &change(Auto, &[(Remove, 2)])),
            Ok(conf(&[1, 3], &[]))
        );
        assert_eq!(
            apply(&three, &change(Auto, &[(AddLearner, 5)])),
            Ok(conf(&[1, 2, 3], &[5]))
        );
    }

    #[test]
    fn removing_the_last_voter_is_refused() {
        assert_eq!(
            apply(&conf(&[1], &[]), &change(Auto, &[(Remove, 1)])),
            Err(ConfChangeError::NoVoters)
        );
    }

    #[test]
    fn promotion_moves_a_learner_to_the_voters() {
        let result = apply(&conf(&[1, 2, 3], &[4]), &change(Auto, &[(AddVoter, 4)]));
        assert_eq!(result, Ok(conf(&[1, 2, 3, 4], &[])));
    }

    #[test]
    fn joint_change_and_leave() {
        let start = conf(&[1, 2, 3], &[]);
        let joint = apply(&start, &change(Auto, &[(AddVoter, 4), (AddLearner, 3)])).unwrap();
        assert_eq!(
            joint,
            ConfState {
                voters: vec![1, 2, 4],
                voters_outgoing: vec![1, 2, 3],
                learners: vec![],
                learners_next: vec![3],
                auto_leave: true,
            }
        );
        assert_eq!(
            apply(&joint, &change(Auto, &[(AddVoter, 5)])),
            Err(ConfChangeError::AlreadyJoint)
        );
        let left = apply(&joint, &ConfChange::leave_joint()).unwrap();
        assert_eq!(left, conf(&[1, 2, 4], &[3]));
        assert_eq!(
            apply(&left, &ConfChange::leave_joint()),
            Err(ConfChangeError::NotJoint)
        );
    }

    #[test]
    fn explicit_joint_does_not_auto_leave() {
        let joint = apply(
            &conf(&[1, 2, 3], &[]),
            &change(JointExplicit, &[(AddVoter, 4)]),
        )
        .unwrap();
        assert!(joint.is_joint());
        assert!(!joint.auto_leave);
    }

    #[test]
    fn simple_change_of_two_voters_is_refused() {
        let swap = ConfChange {
            transition: Auto,
            changes: vec![ConfChangeSingle {
                kind: AddVoter,
                node: 4,
            }],
            context: Bytes::new(),
        };
        // One change is fine; a learner demotion plus an add needs the joint protocol.
        assert!(apply(&conf(&[1, 2, 3], &[]), &swap).is_ok());
        let mut history = ConfHistory::new(conf(&[1, 2, 3], &[]));
        assert!(
            !history.push_entry(5, b"garbage"),
            "undecodable changes are no-ops"
        );
        assert_eq!(history.current(), &conf(&[1, 2, 3], &[]));
    }

    #[test]
    fn history_reverts_on_truncation_and_compacts() {
        let mut history = ConfHistory::new(conf(&[1, 2, 3], &[]));
        assert!(history.push_entry(5, &change(Auto, &[(AddVoter, 4)]).encode()));
        assert!(history.push_entry(9, &change(Auto, &[(Remove, 1)]).encode()));
        assert_eq!(history.current(), &conf(&[2, 3, 4], &[]));
        assert_eq!(history.at(7), &conf(&[1, 2, 3, 4], &[]));
        assert!(history.truncate_from(9));
        assert_eq!(history.current(), &conf(&[1, 2, 3, 4], &[]));
        assert!(!history.truncate_from(9));
        history.compact_to(6);
        assert_eq!(history.at(6), &conf(&[1, 2, 3, 4], &[]));
        assert_eq!(history.last_change_index(), 0);
    }
}
