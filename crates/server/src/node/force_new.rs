//! `--force-new-cluster`, as etcd's `restartAsStandaloneNode`: a member whose cluster has lost
//! its quorum for good restarts alone from its own data. Before the node starts, a configuration
//! change removing each other member is appended to its recovered log and the commit index moved
//! past them. The configuration in effect is the log's latest, so the member starts as the only
//! voter and elects itself; applying the appended changes drops the others from the member list
//! and the transport.
//!
//! Unlike etcd, the entries after the persisted commit index are kept (and so committed), not
//! discarded. Ballot persists the commit index lazily, as a hint: a member may have applied,
//! served and (as the leader) acknowledged entries past it, and cutting there would lose them.
//! An entry past the real commit index is a write whose client never got a success (it timed
//! out or saw the leader change), which may or may not have taken effect either way.

use std::collections::BTreeSet;

use super::envelope::{ConfContext, ConfPurpose, Origin};
use ballot_raft::{
    ConfChange, ConfChangeKind, ConfChangeSingle, ConfChangeTransition, Entry, EntryKind, NodeId,
    RestoreState,
};

/// What forcing a new cluster did to the recovered state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForcedCluster {
    /// Entries after the persisted commit index, now committed.
    pub committed_beyond_hint: usize,
    /// The members removed from the configuration.
    pub removed: Vec<NodeId>,
    /// The entries appended (and committed): one configuration change per removed member. The
    /// caller makes them durable, with the new hard state, before starting the node.
    pub appended: Vec<Entry>,
}

/// Why a member's data cannot be forced into a one-member cluster.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForceNewClusterError {
    #[error(
        "--force-new-cluster: the configuration is in the middle of a joint change; restart \
         without the flag first"
    )]
    Joint,
    #[error("--force-new-cluster: this member ({0:x}) is not a voter of its configuration")]
    NotAVoter(NodeId),
}

/// Rewrites `restore` (this member's recovered state, `me` its ID) into a one-member cluster:
/// see the module documentation.
pub fn force_new_cluster(
    restore: &mut RestoreState,
    me: NodeId,
) -> Result<ForcedCluster, ForceNewClusterError> {
    let commit = restore.hard_state.commit;
    let committed_beyond_hint = restore
        .entries
        .iter()
        .filter(|entry| entry.index > commit)
        .count();
    let (voters, learners) = configuration(restore)?;
    if !voters.contains(&me) {
        return Err(ForceNewClusterError::NotAVoter(me));
    }
    let removed: Vec<NodeId> = voters
        .union(&learners)
        .copied()
        .filter(|id| *id != me)
        .collect();
    let (mut index, last_term) = match (restore.entries.last(), &restore.snapshot) {
        (Some(entry), _) => (entry.index, entry.term),
        (None, Some(snapshot)) => (snapshot.index, snapshot.term),
        (None, None) => (0, 0),
    };
    let term = restore.hard_state.term.max(last_term);
    let mut appended = Vec::new();
    for &id in &removed {
        index += 1;
        let context = ConfContext {
            origin: Origin {
                member_id: me,
                request_id: 0,
            },
            purpose: ConfPurpose::Remove,
            record: None,
        };
        let change = ConfChange {
            transition: ConfChangeTransition::Auto,
            changes: vec![ConfChangeSingle {
                kind: ConfChangeKind::Remove,
                node: id,
            }],
            context: context.encode(),
        };
        appended.push(Entry {
            term,
            index,
            kind: EntryKind::ConfChange,
            data: change.encode(),
        });
    }
    restore.entries.extend(appended.iter().cloned());
    restore.hard_state.term = term;
    restore.hard_state.commit = index.max(commit);
    Ok(ForcedCluster {
        committed_beyond_hint,
        removed,
        appended,
    })
}

/// The voters and learners of the configuration in effect at the end of the log: the
/// snapshot's, then every configuration change after it, as the Raft core rebuilds it on
/// restore (a change that does not apply is skipped there too).
fn configuration(
    restore: &RestoreState,
) -> Result<(BTreeSet<NodeId>, BTreeSet<NodeId>), ForceNewClusterError> {
    let mut conf = restore
        .snapshot
        .as_ref()
        .map(|snapshot| snapshot.conf.clone())
        .unwrap_or_default();
    for entry in &restore.entries {
        if entry.kind != EntryKind::ConfChange {
            continue;
        }
        if let Ok(change) = ConfChange::decode(&entry.data)
            && let Ok(next) = ballot_raft::apply_conf_change(&conf, &change)
        {
            conf = next;
        }
    }
    if conf.is_joint() {
        return Err(ForceNewClusterError::Joint);
    }
    Ok((
        conf.voters.iter().copied().collect(),
        conf.learners.iter().copied().collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ballot_raft::{ConfState, HardState, SnapshotMeta};
    use bytes::Bytes;

    fn conf_change(index: u64, term: u64, changes: Vec<ConfChangeSingle>) -> Entry {
        Entry {
            term,
            index,
            kind: EntryKind::ConfChange,
            data: ConfChange {
                transition: ConfChangeTransition::Auto,
                changes,
                context: Bytes::new(),
            }
            .encode(),
        }
    }

    fn normal(index: u64, term: u64) -> Entry {
        Entry {
            term,
            index,
            kind: EntryKind::Normal,
            data: Bytes::from_static(b"x"),
        }
    }

    fn add(node: NodeId, kind: ConfChangeKind) -> ConfChangeSingle {
        ConfChangeSingle { kind, node }
    }

    #[test]
    fn commits_the_whole_log_and_removes_every_other_member() {
        let mut restore = RestoreState {
            hard_state: HardState {
                term: 4,
                vote: 2,
                commit: 4,
            },
            snapshot: Some(SnapshotMeta {
                index: 2,
                term: 3,
                conf: ConfState {
                    voters: vec![1, 2, 3],
                    ..ConfState::default()
                },
            }),
            entries: vec![
                conf_change(3, 3, vec![add(7, ConfChangeKind::AddLearner)]),
                normal(4, 4),
                normal(5, 4),
                normal(6, 4),
            ],
            applied: 2,
        };
        let forced = force_new_cluster(&mut restore, 1).expect("forced");
        assert_eq!(forced.committed_beyond_hint, 2);
        assert_eq!(forced.removed, vec![2, 3, 7]);
        assert_eq!(restore.hard_state.commit, 9);
        assert_eq!(restore.hard_state.term, 4);
        let indexes: Vec<u64> = restore.entries.iter().map(|entry| entry.index).collect();
        assert_eq!(indexes, vec![3, 4, 5, 6, 7, 8, 9]);
        assert_eq!(forced.appended, restore.entries[4..].to_vec());
        for (entry, id) in forced.appended.iter().zip([2, 3, 7]) {
            let change = ConfChange::decode(&entry.data).expect("decodes");
            assert_eq!(change.changes, vec![add(id, ConfChangeKind::Remove)]);
            let context = ConfContext::decode(&change.context).expect("context");
            assert_eq!(context.purpose, ConfPurpose::Remove);
            assert_eq!(context.origin.request_id, 0);
            assert_eq!(entry.term, 4);
        }
        // Forced again, there is nobody left to remove.
        let again = force_new_cluster(&mut restore, 1).expect("forced");
        assert_eq!((again.committed_beyond_hint, again.removed.len()), (0, 0));
        assert!(again.appended.is_empty());
        assert_eq!(restore.hard_state.commit, 9);
    }

    #[test]
    fn refuses_a_learner_and_a_joint_configuration() {
        let bootstrap = conf_change(
            1,
            1,
            vec![
                add(1, ConfChangeKind::AddVoter),
                add(2, ConfChangeKind::AddVoter),
                add(3, ConfChangeKind::AddVoter),
            ],
        );
        let base = RestoreState {
            hard_state: HardState {
                term: 1,
                vote: 0,
                commit: 2,
            },
            snapshot: None,
            entries: vec![bootstrap],
            applied: 0,
        };
        // Two voter changes at once enter a joint configuration, left by a later entry.
        let mut joint = base.clone();
        joint.entries.push(conf_change(
            2,
            1,
            vec![
                add(3, ConfChangeKind::Remove),
                add(4, ConfChangeKind::AddVoter),
            ],
        ));
        assert_eq!(
            force_new_cluster(&mut joint, 1),
            Err(ForceNewClusterError::Joint)
        );
        let mut left = joint.clone();
        left.entries.push(conf_change(3, 1, vec![]));
        left.hard_state.commit = 3;
        let forced = force_new_cluster(&mut left, 1).expect("forced");
        assert_eq!(forced.removed, vec![2, 4]);

        let mut learner = base;
        learner
            .entries
            .push(conf_change(2, 1, vec![add(3, ConfChangeKind::AddLearner)]));
        assert_eq!(
            force_new_cluster(&mut learner, 3),
            Err(ForceNewClusterError::NotAVoter(3))
        );
    }
}
