//! The leader's view of one member's replication: probe / replicate / snapshot (etcd's
//! `tracker/progress.go` state machine). All state transitions of a progress live here.

use crate::inflights::Inflights;
use crate::types::{Index, ProgressState, ProgressStatus};

#[derive(Clone, Debug)]
pub struct Progress {
    /// The highest index known to be replicated (and durable) on the member.
    /// Invariant: match_index < next_index.
    pub match_index: Index,
    /// The next index to send.
    pub next_index: Index,
    pub state: ProgressState,
    /// Probe state: an Append is outstanding; nothing more is sent until it is answered (or a
    /// heartbeat response shows the member is alive).
    pub probe_sent: bool,
    /// Snapshot state: the index of the snapshot being sent.
    pub pending_snapshot: Index,
    /// Heard from since the last check-quorum round (Raft thesis §6.2).
    pub recent_active: bool,
    pub is_learner: bool,
    /// Replicate state: the Appends sent but not acknowledged.
    pub inflights: Inflights,
    /// The highest heartbeat round the member acknowledged (see `read_only`).
    pub acked_round: u64,
    /// Non-zero for a member the configuration no longer contains: the index of the entry that
    /// removed it. The leader keeps replicating to it until it has that entry, so that it
    /// learns of its removal and stops campaigning (Raft thesis §4.2.3).
    pub removed_at: Index,
    /// Election timeouts seen since the removal committed (see `Raft::forget_removed_members`).
    pub removed_timeouts: u32,
}

impl Progress {
    pub fn new(next_index: Index, max_msgs: usize, max_bytes: u64, is_learner: bool) -> Progress {
        Progress {
            match_index: 0,
            next_index: next_index.max(1),
            state: ProgressState::Probe,
            probe_sent: false,
            pending_snapshot: 0,
            recent_active: true,
            is_learner,
            inflights: Inflights::new(max_msgs, max_bytes),
            acked_round: 0,
            removed_at: 0,
            removed_timeouts: 0,
        }
    }

    fn reset_state(&mut self, state: ProgressState) {
        self.probe_sent = false;
        self.pending_snapshot = 0;
        self.state = state;
        self.inflights.reset();
    }

    /// Back to probing from just after what the member is known to have. Leaving snapshot
    /// state, probing starts after the snapshot if that is further along (the member most
    /// likely installed it).
    pub fn become_probe(&mut self) {
        let after_snapshot = if self.state == ProgressState::Snapshot {
            self.pending_snapshot + 1
        } else {
            0
        };
        self.reset_state(ProgressState::Probe);
        self.next_index = (self.match_index + 1).max(after_snapshot);
    }

    /// Pipelining from just after the match index.
    pub fn become_replicate(&mut self) {
        self.reset_state(ProgressState::Replicate);
        self.next_index = self.match_index + 1;
    }

    pub fn become_snapshot(&mut self, snapshot_index: Index) {
        self.reset_state(ProgressState::Snapshot);
        self.pending_snapshot = snapshot_index;
    }

    /// The member acknowledged everything through `index`. Returns whether the match index
    /// moved (a stale or duplicate acknowledgement does not move it).
    pub fn maybe_update(&mut self, index: Index) -> bool {
        let updated = self.match_index < index;
        if updated {
            self.match_index = index;
            self.probe_sent = false;
        }
        self.next_index = self.next_index.max(index + 1);
        updated
    }

    /// The member rejected an Append whose previous index was `rejected`; `probe_from` is the
    /// leader's guess (from the member's conflict hint) of the highest index that may match.
    /// Returns false when the rejection is stale (answers a message sent before the last
    /// back-off) and must be ignored.
    pub fn maybe_decrease_to(&mut self, rejected: Index, probe_from: Index) -> bool {
        if self.state == ProgressState::Replicate {
            // Everything at or below the match index is known to match, so a rejection there
            // comes from an old message.
            if rejected <= self.match_index {
                return false;
            }
            self.next_index = self.match_index + 1;
            return true;
        }
        // In probe state only the answer to the latest probe (sent from next_index - 1) counts.
        if self.next_index == 0 || self.next_index - 1 != rejected {
            return false;
        }
        self.next_index = rejected
            .min(probe_from.saturating_add(1))
            .max(self.match_index + 1);
        self.probe_sent = false;
        true
    }

    /// Records an Append just sent whose last entry is `last_index` (`entries_bytes` of
    /// entries; `last_index` is the previous index for an empty Append).
    pub fn sent_append(&mut self, last_index: Index, entry_count: usize, entries_bytes: u64) {
        match self.state {
            ProgressState::Replicate => {
                if entry_count > 0 {
                    self.next_index = last_index + 1;
                    self.inflights.add(last_index, entries_bytes);
                }
            }
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Snapshot => {
                debug_assert!(false, "sending an Append to a member in snapshot state");
            }
        }
    }

    /// True when the leader must not send Appends with entries right now.
    pub fn is_paused(&self) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflights.full(),
            ProgressState::Snapshot => true,
        }
    }

    pub fn status(&self) -> ProgressStatus {
        ProgressStatus {
            match_index: self.match_index,
            next_index: self.next_index,
            state: self.state,
            is_learner: self.is_learner,
            recent_active: self.recent_active,
            inflight_msgs: self.inflights.count(),
            inflight_bytes: self.inflights.bytes(),
            pending_snapshot: self.pending_snapshot,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress() -> Progress {
        Progress::new(11, 4, 1 << 20, false)
    }

    #[test]
    fn probe_pauses_after_one_append_and_resumes_on_ack() {
        let mut pr = progress();
        assert!(!pr.is_paused());
        pr.sent_append(12, 2, 100);
        assert!(pr.is_paused());
        assert!(pr.maybe_update(12));
        assert!(!pr.is_paused());
        assert_eq!((pr.match_index, pr.next_index), (12, 13));
    }

    #[test]
    fn replicate_pipelines_until_the_window_is_full() {
        let mut pr = progress();
        pr.maybe_update(10);
        pr.become_replicate();
        for last in [12, 14, 16, 18] {
            assert!(!pr.is_paused());
            pr.sent_append(last, 2, 10);
        }
        assert!(pr.is_paused(), "four messages fill a window of four");
        assert_eq!(pr.next_index, 19);
        pr.maybe_update(14);
        pr.inflights.free_to(14);
        assert!(!pr.is_paused());
    }

    #[test]
    fn stale_ack_does_not_move_match() {
        let mut pr = progress();
        pr.maybe_update(10);
        assert!(!pr.maybe_update(9));
        assert_eq!(pr.match_index, 10);
    }

    #[test]
    fn replicate_rejection_falls_back_to_match_plus_one() {
        let mut pr = progress();
        pr.maybe_update(10);
        pr.become_replicate();
        pr.sent_append(15, 5, 10);
        assert!(
            !pr.maybe_decrease_to(10, 0),
            "rejection at the match index is stale"
        );
        assert!(pr.maybe_decrease_to(12, 0));
        assert_eq!(pr.next_index, 11);
    }

    #[test]
    fn probe_rejection_uses_the_hint_and_ignores_stale_answers() {
        let mut pr = Progress::new(21, 4, 1 << 20, false);
        pr.sent_append(20, 1, 10);
        assert!(!pr.maybe_decrease_to(15, 3), "not the latest probe");
        assert!(pr.maybe_decrease_to(20, 7));
        assert_eq!(pr.next_index, 8);
        assert!(!pr.probe_sent);
        // Never below match + 1.
        pr.match_index = 9;
        pr.next_index = 21;
        assert!(pr.maybe_decrease_to(20, 3));
        assert_eq!(pr.next_index, 10);
    }

    #[test]
    fn snapshot_state_pauses_and_probes_after_the_snapshot() {
        let mut pr = progress();
        pr.become_snapshot(50);
        assert!(pr.is_paused());
        pr.become_probe();
        assert_eq!(pr.next_index, 51);
        assert!(!pr.is_paused());
    }
}
