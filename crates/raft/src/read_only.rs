//! Linearizable reads at the leader (Raft thesis §6.4): ReadIndex confirmed by a heartbeat
//! round, and the optional lease.
//!
//! Every heartbeat broadcast is a numbered round. A read records the commit index and the
//! round started for it; the read is confirmed once a quorum acknowledged that round (or a
//! later one), because then a quorum still knew this node as leader after the read arrived. The
//! same acknowledgements renew the lease: a follower that heard a round sent at tick `t` will
//! not vote for anyone else before `t + election_tick` (check-quorum), so the leader may serve
//! reads alone until `t + election_tick - lease_drift_ticks`.

use crate::types::{Index, NodeId};
use std::collections::VecDeque;

/// More pending reads than this are refused: the queue is bounded like every other.
pub const MAX_PENDING_READS: usize = 4096;
/// Rounds whose send tick is remembered for the lease; older ones are forgotten (which only
/// makes the lease more conservative).
const MAX_TRACKED_ROUNDS: usize = 1024;

/// A read waiting for confirmation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadRequest {
    pub ctx: u64,
    /// Who asked: this node, or a follower that forwarded it.
    pub from: NodeId,
    /// The commit index when the read arrived; served once applied reaches it.
    pub index: Index,
    /// The heartbeat round that confirms it.
    pub round: u64,
}

#[derive(Clone, Debug, Default)]
pub struct ReadOnly {
    /// Reads waiting for their round to be acknowledged by a quorum, in round order.
    pending: VecDeque<ReadRequest>,
    /// Reads that arrived before the leader committed an entry of its term (Raft thesis §6.4:
    /// until then the leader's commit index may be stale); (ctx, from).
    waiting_for_term_commit: VecDeque<(u64, NodeId)>,
    /// The last round started. Invariant: every pending read's round is at most this.
    last_round: u64,
    /// (round, tick it was sent at), for the lease.
    round_ticks: VecDeque<(u64, u64)>,
    /// The highest round a quorum has acknowledged.
    confirmed_round: u64,
    /// The lease is valid while the leader's tick count is below this.
    lease_until_tick: u64,
}

impl ReadOnly {
    /// Starts a new heartbeat round sent at `tick`; returns its number.
    pub fn start_round(&mut self, tick: u64, track_lease: bool) -> u64 {
        self.last_round += 1;
        if track_lease {
            if self.round_ticks.len() == MAX_TRACKED_ROUNDS {
                self.round_ticks.pop_front();
            }
            self.round_ticks.push_back((self.last_round, tick));
        }
        self.last_round
    }

    pub fn last_round(&self) -> u64 {
        self.last_round
    }

    pub fn pending_count(&self) -> usize {
        self.pending.len() + self.waiting_for_term_commit.len()
    }

    pub fn is_full(&self) -> bool {
        self.pending_count() >= MAX_PENDING_READS
    }

    pub fn add_pending(&mut self, request: ReadRequest) {
        debug_assert!(request.round <= self.last_round);
        self.pending.push_back(request);
    }

    pub fn wait_for_term_commit(&mut self, ctx: u64, from: NodeId) {
        self.waiting_for_term_commit.push_back((ctx, from));
    }

    pub fn take_waiting_for_term_commit(&mut self) -> VecDeque<(u64, NodeId)> {
        std::mem::take(&mut self.waiting_for_term_commit)
    }

    /// A quorum has acknowledged `round`: returns the reads it confirms, and renews the lease
    /// from the round's send tick.
    pub fn confirm(&mut self, round: u64, lease_ticks: u64) -> Vec<ReadRequest> {
        if round <= self.confirmed_round {
            return Vec::new();
        }
        self.confirmed_round = round;
        while let Some(&(tracked, tick)) = self.round_ticks.front() {
            if tracked > round {
                break;
            }
            if tracked == round {
                self.lease_until_tick = self.lease_until_tick.max(tick + lease_ticks);
            }
            self.round_ticks.pop_front();
        }
        let confirmed = self
            .pending
            .partition_point(|request| request.round <= round);
        self.pending.drain(..confirmed).collect()
    }

    /// True while the leader may serve reads from its lease at tick `now`.
    pub fn lease_valid(&self, now: u64) -> bool {
        now < self.lease_until_tick
    }

    /// Ends the lease at once (leadership transfer started).
    pub fn revoke_lease(&mut self) {
        self.lease_until_tick = 0;
        self.round_ticks.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirming_a_round_releases_reads_of_that_round_and_earlier() {
        let mut reads = ReadOnly::default();
        for ctx in 1..=3 {
            let round = reads.start_round(0, false);
            reads.add_pending(ReadRequest {
                ctx,
                from: 1,
                index: 5,
                round,
            });
        }
        let released: Vec<u64> = reads.confirm(2, 0).iter().map(|read| read.ctx).collect();
        assert_eq!(released, vec![1, 2]);
        assert!(reads.confirm(2, 0).is_empty(), "a round is confirmed once");
        assert_eq!(reads.confirm(3, 0).len(), 1);
    }

    #[test]
    fn lease_runs_from_the_send_tick_of_the_confirmed_round() {
        let mut reads = ReadOnly::default();
        let first = reads.start_round(10, true);
        let _second = reads.start_round(15, true);
        assert!(!reads.lease_valid(10));
        reads.confirm(first, 8);
        assert!(reads.lease_valid(17));
        assert!(!reads.lease_valid(18));
        reads.revoke_lease();
        assert!(!reads.lease_valid(11));
    }
}
