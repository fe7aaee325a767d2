//! etcd's auto-compaction (`--auto-compaction-mode`, `--auto-compaction-retention`): the leader
//! compacts the history on its own, as a client calling `Compact` would, so that a cluster
//! nobody compacts does not keep every revision forever. That matters more here than in etcd:
//! Ballot keeps the history in memory (docs/mvcc.md).
//!
//! The two modes follow etcd 3.4's compactors:
//! - **periodic** (retention `P`): every `min(P, 1 h) / 10` the leader records the current
//!   revision; every `min(P, 1 h)` it compacts to the revision it recorded `P` ago. The first
//!   compaction comes once it has led for `P`.
//! - **revision** (retention `N`): every 5 minutes the leader compacts to the current revision
//!   minus `N`, if that moved.
//!
//! Only the leader compacts (the compaction is replicated like any write); a member that stops
//! leading forgets its samples, as etcd's compactor pauses and starts over.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use ballot_mvcc::{Command, MvccError};
use ballot_proto::etcdserverpb::CompactionRequest;

use super::{NodeError, NodeHandle, NodeShared, Role, lock_read};

/// How often revision mode checks (etcd's `revInterval`).
pub const REVISION_CHECK_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// The most time between two periodic compactions (etcd compacts at least hourly).
const PERIODIC_INTERVAL_MAX: Duration = Duration::from_secs(60 * 60);
/// Periodic mode samples the revision this many times per compaction interval.
const PERIODIC_SAMPLES: u32 = 10;

/// What `--auto-compaction-mode` and `--auto-compaction-retention` ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AutoCompaction {
    /// Keep the revisions of the last `retention`.
    Periodic(Duration),
    /// Keep the last `retention` revisions.
    Revision(i64),
}

impl AutoCompaction {
    /// How often the leader looks at the revision.
    pub fn check_interval(self) -> Duration {
        match self {
            AutoCompaction::Periodic(retention) => (retention.min(PERIODIC_INTERVAL_MAX)
                / PERIODIC_SAMPLES)
                .max(Duration::from_millis(1)),
            AutoCompaction::Revision(_) => REVISION_CHECK_INTERVAL,
        }
    }
}

/// The compactor's decisions, apart from the clock and the node, so that they can be tested
/// with made-up times.
#[derive(Debug)]
pub struct Policy {
    mode: AutoCompaction,
    /// (time in ms, revision then), oldest first; periodic mode only.
    samples: VecDeque<(u64, i64)>,
    last_compaction_ms: Option<u64>,
}

impl Policy {
    pub fn new(mode: AutoCompaction) -> Policy {
        Policy {
            mode,
            samples: VecDeque::new(),
            last_compaction_ms: None,
        }
    }

    /// One check at `now_ms`: the revision to compact to, if any. `current` and `compacted`
    /// are the store's current and compact revisions.
    pub fn on_check(
        &mut self,
        now_ms: u64,
        leader: bool,
        current: i64,
        compacted: i64,
    ) -> Option<i64> {
        if !leader {
            self.samples.clear();
            self.last_compaction_ms = None;
            return None;
        }
        let target = match self.mode {
            AutoCompaction::Revision(keep) => current - keep,
            AutoCompaction::Periodic(retention) => {
                let retention_ms = duration_ms(retention);
                let interval_ms = duration_ms(retention.min(PERIODIC_INTERVAL_MAX));
                self.samples.push_back((now_ms, current));
                let old_enough = |at: u64| at.saturating_add(retention_ms) <= now_ms;
                // Keep the newest sample that is old enough and everything after it.
                while self.samples.len() >= 2 && old_enough(self.samples[1].0) {
                    self.samples.pop_front();
                }
                let (at, revision) = *self.samples.front()?;
                let due = self
                    .last_compaction_ms
                    .is_none_or(|last| last.saturating_add(interval_ms) <= now_ms);
                if !old_enough(at) || !due {
                    return None;
                }
                revision
            }
        };
        if target <= compacted.max(0) {
            return None;
        }
        self.last_compaction_ms = Some(now_ms);
        Some(target)
    }
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Runs the compactor until the node stops. `check_interval` is the mode's own unless a test
/// shortens it (`--auto-compaction-check-interval`, hidden).
pub(crate) async fn run(shared: Arc<NodeShared>, mode: AutoCompaction, check_interval: Duration) {
    let mut policy = Policy::new(mode);
    let mut ticker = tokio::time::interval(check_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stop = shared.stop.subscribe();
    let handle = NodeHandle {
        shared: Arc::clone(&shared),
    };
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        let leader = shared.view.borrow().role == Role::Leader;
        let (current, compacted) = {
            let store = lock_read(&shared.store);
            (store.current_revision(), store.compact_revision())
        };
        let Some(revision) = policy.on_check(shared.now_ms(), leader, current, compacted) else {
            continue;
        };
        let request = CompactionRequest {
            revision,
            physical: false,
        };
        match handle.propose(Command::Compact(request)).await {
            Ok(_) => tracing::info!(revision, "auto-compaction: compacted the history"),
            // A client compacted further meanwhile: nothing to do.
            Err(NodeError::Mvcc(MvccError::Compacted)) => {}
            Err(error) => tracing::warn!(revision, %error, "auto-compaction failed; will retry"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR_MS: u64 = 60 * 60 * 1000;

    #[test]
    fn revision_mode_keeps_the_last_n_revisions_and_only_moves_forward() {
        let mut policy = Policy::new(AutoCompaction::Revision(100));
        assert_eq!(
            policy.on_check(0, true, 50, -1),
            None,
            "not 100 revisions yet"
        );
        assert_eq!(policy.on_check(1, true, 250, -1), Some(150));
        assert_eq!(policy.on_check(2, true, 250, 150), None, "already there");
        assert_eq!(
            policy.on_check(3, true, 260, 200),
            None,
            "a client compacted further"
        );
        assert_eq!(policy.on_check(4, true, 400, 200), Some(300));
        assert_eq!(
            policy.on_check(5, false, 900, 300),
            None,
            "followers never compact"
        );
        assert_eq!(
            AutoCompaction::Revision(100).check_interval(),
            REVISION_CHECK_INTERVAL
        );
    }

    #[test]
    fn periodic_mode_compacts_to_the_revision_of_one_retention_ago() {
        // One hour: sampled every 6 minutes, compacted hourly.
        let retention = Duration::from_secs(3600);
        assert_eq!(
            AutoCompaction::Periodic(retention).check_interval(),
            Duration::from_secs(360)
        );
        let mut policy = Policy::new(AutoCompaction::Periodic(retention));
        let step = HOUR_MS / 10;
        let mut compactions = Vec::new();
        // The revision grows by 1000 per sample: revision r(t) = 1000 * t / step + 1.
        for tick in 0..=25u64 {
            let now = tick * step;
            let revision = 1000 * tick as i64 + 1;
            if let Some(target) = policy.on_check(now, true, revision, -1) {
                compactions.push((tick, target));
            }
        }
        // First at one hour (to the revision at 0), then hourly, each to the revision one
        // hour before.
        assert_eq!(compactions, vec![(10, 1), (20, 10_001)]);
    }

    #[test]
    fn periodic_mode_starts_over_after_losing_leadership() {
        let retention = Duration::from_secs(10);
        let mut policy = Policy::new(AutoCompaction::Periodic(retention));
        assert_eq!(policy.on_check(0, true, 5, -1), None);
        assert_eq!(policy.on_check(10_000, true, 50, -1), Some(5));
        assert_eq!(policy.on_check(11_000, false, 60, 5), None);
        // Leading again: another full retention before the next compaction.
        assert_eq!(policy.on_check(12_000, true, 70, 5), None);
        assert_eq!(policy.on_check(21_000, true, 80, 5), None);
        assert_eq!(policy.on_check(22_000, true, 90, 5), Some(70));
    }

    #[test]
    fn a_short_retention_is_sampled_a_tenth_as_often() {
        let mode = AutoCompaction::Periodic(Duration::from_secs(1));
        assert_eq!(mode.check_interval(), Duration::from_millis(100));
        let long = AutoCompaction::Periodic(Duration::from_secs(24 * 3600));
        assert_eq!(
            long.check_interval(),
            Duration::from_secs(360),
            "hourly at most"
        );
    }
}
