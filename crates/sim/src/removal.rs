//! Which senders a node refuses because it has applied their removal, as the server's transport
//! does.
//!
//! The server (`crates/server`, `node/apply.rs`, `forget_peer_later`) keeps a removed member's
//! address for a grace period after applying its removal, so the removed member can still hear
//! that its removal committed, and then forgets it; from then on its transport cuts every
//! connection from that member at the next frame ("the sender was removed", as etcd's rafthttp
//! refuses a removed member). The grace is `max(4 × election timeout, 1 s)`. The simulator has no
//! wall clock: a tick stands for the server's heartbeat interval and the election timeout is
//! `election_tick` ticks, so the grace is `4 × election_tick` of the receiving node's own ticks
//! (its clock, skewed or paused, measures the grace as the server's timer would). The 1 s floor
//! only matters for election timeouts under 250 ms and is not modelled.
//!
//! "Removed" means: a member (voter, learner, or either half of a joint configuration) of a
//! configuration this node applied before, and a member of neither the configuration it has
//! applied now nor the latest one in its log. Node ids are never reused, so a removal is final.
//! Two deliberate differences from the server, both towards delivering more, so the core is
//! never helped more than the server would help it:
//! - the server forgets a member when it applies the `Remove` step, even inside a joint
//!   configuration whose outgoing half still holds it; here a member of either half is kept
//!   until the joint configuration is left;
//! - the server, restarted, refuses a removed member at once (its member registry, part of its
//!   durable state, no longer holds it); here what the node knew before the crash is kept only
//!   as far as its durable state covers it (below), and the grace counted before the crash
//!   still runs.
//!
//! A restart may take a node back: its applied index becomes that of its durable snapshot, and
//! a snapshot it had installed but not yet made durable is lost. So every member and every
//! removal is recorded with the applied index at which it was first seen, and a restart keeps
//! only those at or below the restored applied index, which the durable snapshot covers (as
//! the server's registry is covered by its snapshot); the rest is seen again when re-applied.
//! The latest configuration in the log counts as membership too, so a member whose addition
//! is in the restored log is never taken for removed meanwhile.

use std::collections::{BTreeMap, BTreeSet};

use ballot_raft::{ConfState, Index, NodeId};

/// The members of `conf`, in either half of a joint configuration, voters and learners alike.
pub fn members(conf: &ConfState) -> impl Iterator<Item = NodeId> + '_ {
    conf.voters
        .iter()
        .chain(&conf.voters_outgoing)
        .chain(&conf.learners)
        .chain(&conf.learners_next)
        .copied()
}

/// One node's record of the members it has seen removed, and since when.
#[derive(Debug)]
pub struct RemovedSenders {
    grace_ticks: u64,
    /// Every member of every configuration this node has applied → the applied index at which
    /// it was first seen.
    ever_members: BTreeMap<NodeId, Index>,
    /// A removed member → (the applied index, this node's tick count) when it first saw the
    /// removal applied.
    removed_at: BTreeMap<NodeId, (Index, u64)>,
}

impl RemovedSenders {
    pub fn new(grace_ticks: u64) -> RemovedSenders {
        RemovedSenders {
            grace_ticks,
            ever_members: BTreeMap::new(),
            removed_at: BTreeMap::new(),
        }
    }

    /// Records the configuration applied through `applied_index` (`applied`) and the latest one
    /// in the log (`latest`) at tick `now_tick`. Returns the members seen removed for the first
    /// time.
    pub fn observe(
        &mut self,
        applied_index: Index,
        applied: &ConfState,
        latest: &ConfState,
        now_tick: u64,
    ) -> Vec<NodeId> {
        for id in members(applied) {
            self.ever_members.entry(id).or_insert(applied_index);
        }
        let current: BTreeSet<NodeId> = members(applied).chain(members(latest)).collect();
        self.removed_at.retain(|id, _| !current.contains(id));
        let mut newly_removed = Vec::new();
        for &id in self.ever_members.keys() {
            if !current.contains(&id) && !self.removed_at.contains_key(&id) {
                self.removed_at.insert(id, (applied_index, now_tick));
                newly_removed.push(id);
            }
        }
        newly_removed
    }

    /// A restart restored the node to `applied_index`: forgets what was learnt from entries or
    /// snapshots beyond it, which the durable state may not hold.
    pub fn restart_at(&mut self, applied_index: Index) {
        self.ever_members.retain(|_, seen| *seen <= applied_index);
        self.removed_at
            .retain(|_, (seen, _)| *seen <= applied_index);
    }

    /// Whether a message from `sender` is refused at tick `now_tick`: its removal was applied
    /// at least the grace period ago.
    pub fn refuses(&self, sender: NodeId, now_tick: u64) -> bool {
        self.removed_at
            .get(&sender)
            .is_some_and(|&(_, at_tick)| now_tick >= at_tick + self.grace_ticks)
    }

    pub fn grace_ticks(&self) -> u64 {
        self.grace_ticks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(voters: &[NodeId], outgoing: &[NodeId], learners: &[NodeId]) -> ConfState {
        ConfState {
            voters: voters.to_vec(),
            voters_outgoing: outgoing.to_vec(),
            learners: learners.to_vec(),
            ..ConfState::default()
        }
    }

    #[test]
    fn a_removed_member_is_refused_only_after_the_grace_period() {
        let mut removed = RemovedSenders::new(40);
        let all = conf(&[1, 2, 3], &[], &[]);
        assert!(removed.observe(1, &all, &all, 0).is_empty());
        // Node 3 leaves through a joint configuration: still a member of the outgoing half.
        let joint = conf(&[1, 2, 4], &[1, 2, 3], &[]);
        assert!(removed.observe(7, &joint, &joint, 5).is_empty());
        assert!(!removed.refuses(3, 1_000));
        let left = conf(&[1, 2, 4], &[], &[]);
        assert_eq!(removed.observe(9, &left, &left, 10), vec![3]);
        assert!(!removed.refuses(3, 49), "within the grace period");
        assert!(removed.refuses(3, 50), "after the grace period");
        assert!(!removed.refuses(4, 50), "a member is never refused");
        // Observing the same configuration again does not restart the grace period.
        assert!(removed.observe(12, &left, &left, 60).is_empty());
        assert!(removed.refuses(3, 60));
        // A restart back to a snapshot at index 8 loses the removal applied at 9 (it is seen
        // again, with a new grace period, when re-applied); one at 9 keeps it.
        let mut restarted = removed;
        restarted.restart_at(9);
        assert!(restarted.refuses(3, 60));
        restarted.restart_at(8);
        assert!(!restarted.refuses(3, 1_000));
        assert!(restarted.observe(8, &joint, &joint, 70).is_empty());
        assert_eq!(restarted.observe(9, &left, &left, 80), vec![3]);
        assert!(!restarted.refuses(3, 119));
        assert!(restarted.refuses(3, 120));
    }

    #[test]
    fn members_seen_only_in_state_lost_in_a_crash_are_forgotten() {
        let mut removed = RemovedSenders::new(40);
        // A joining node installs a snapshot at index 99 (members 1, 2, 3) and crashes before
        // it is durable: it restarts empty, as a joiner with no configuration at all.
        removed.observe(
            99,
            &conf(&[1, 2, 3], &[], &[]),
            &conf(&[1, 2, 3], &[], &[]),
            0,
        );
        removed.restart_at(0);
        let empty = ConfState::default();
        assert!(removed.observe(0, &empty, &empty, 10).is_empty());
        assert!(!removed.refuses(1, 1_000));
    }

    #[test]
    fn learners_and_members_of_the_latest_configuration_are_not_removed() {
        let mut removed = RemovedSenders::new(40);
        removed.observe(5, &conf(&[1, 2], &[], &[3]), &conf(&[1, 2], &[], &[3]), 0);
        // Applied state going back to before node 3 was added while the log holds its addition:
        // no removed member.
        removed.observe(5, &conf(&[1, 2], &[], &[]), &conf(&[1, 2], &[], &[3]), 10);
        assert!(!removed.refuses(3, 100));
        // A member never seen in an applied configuration is not "removed" either.
        assert!(!removed.refuses(7, 100));
    }
}
