//! Leases: read access to the replicated lease table, and [`LeaseClock`],
//! the leader's expiry timer that lives outside the state machine.
//!
//! etcd's design, kept here: the replicated state knows which leases exist,
//! their granted TTL, their attached keys and (with checkpointing) their last
//! recorded remaining TTL. Only the leader times them. When a lease's
//! deadline passes, the leader proposes [`crate::Command::LeaseRevoke`]; its
//! application deletes the attached keys on every replica in one revision.
//! Applying never reads a clock, so replicas cannot diverge over time.

use std::collections::{BTreeSet, HashMap};

use ballot_proto::etcdserverpb::{LeaseLeasesResponse, LeaseStatus, LeaseTimeToLiveResponse};

use crate::store::{LeaseInfo, Store, header};

impl Store {
    /// A lease, or `None` when it does not exist.
    pub fn lease(&self, id: i64) -> Option<LeaseInfo> {
        self.leases.get(&id).map(|lease| LeaseInfo {
            id,
            ttl_secs: lease.ttl_secs,
            remaining_ttl_secs: lease.remaining_ttl_secs,
            keys: lease.keys.iter().cloned().collect(),
        })
    }

    /// Every lease's `(id, granted TTL, checkpointed remaining TTL or 0)`,
    /// ascending by ID: what [`LeaseClock::promote`] needs.
    pub fn lease_ttls(&self) -> Vec<(i64, i64, i64)> {
        self.leases
            .iter()
            .map(|(id, lease)| (*id, lease.ttl_secs, lease.remaining_ttl_secs))
            .collect()
    }

    /// etcd `LeaseLeases`: every lease ID, ascending.
    pub fn lease_list(&self) -> LeaseLeasesResponse {
        LeaseLeasesResponse {
            header: header(self.current_revision),
            leases: self
                .leases
                .keys()
                .map(|id| LeaseStatus { id: *id })
                .collect(),
        }
    }

    /// etcd `LeaseTimeToLive` as far as the replicated state knows it: `ttl`
    /// is the checkpointed remaining TTL, or the granted TTL when never
    /// checkpointed. The leader replaces `ttl` with
    /// [`LeaseClock::remaining_secs`]. An unknown lease answers `ttl == -1`,
    /// as etcd does.
    pub fn lease_time_to_live(&self, id: i64, with_keys: bool) -> LeaseTimeToLiveResponse {
        match self.leases.get(&id) {
            Some(lease) => LeaseTimeToLiveResponse {
                header: header(self.current_revision),
                id,
                ttl: if lease.remaining_ttl_secs > 0 {
                    lease.remaining_ttl_secs
                } else {
                    lease.ttl_secs
                },
                granted_ttl: lease.ttl_secs,
                keys: if with_keys {
                    lease.keys.iter().cloned().collect()
                } else {
                    Vec::new()
                },
            },
            None => LeaseTimeToLiveResponse {
                header: header(self.current_revision),
                id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            },
        }
    }
}

/// Settings of the leader's lease timer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseClockConfig {
    /// How long an expired lease whose revoke was handed out by
    /// [`LeaseClock::expired`] waits before it is handed out again (the
    /// revoke proposal may have been lost; etcd retries after 3 s).
    pub revoke_retry_ms: u64,
    /// How often a lease's remaining TTL is checkpointed; 0 disables
    /// checkpointing (etcd's default is off, interval 5 min when on). Only
    /// leases whose TTL exceeds the interval are checkpointed.
    pub checkpoint_interval_ms: u64,
}

impl Default for LeaseClockConfig {
    fn default() -> LeaseClockConfig {
        LeaseClockConfig {
            revoke_retry_ms: 3_000,
            checkpoint_interval_ms: 0,
        }
    }
}

#[derive(Debug, Clone)]
struct TimedLease {
    ttl_secs: i64,
    deadline_ms: u64,
    /// Set once the revoke was handed out; until then the lease is not
    /// handed out again.
    revoke_retry_at_ms: Option<u64>,
    next_checkpoint_ms: Option<u64>,
    checkpointed: bool,
}

/// The leader's lease expiry timer. Pure: every method takes the time as
/// `now_ms` (milliseconds on any monotonic clock the caller chooses) and
/// nothing reads a clock.
///
/// How the server drives it:
/// - on becoming leader: [`LeaseClock::promote`] with [`Store::lease_ttls`]
///   and an extension of one election timeout; on losing leadership:
///   [`LeaseClock::demote`];
/// - after applying a grant / revoke on the leader: [`LeaseClock::grant`] /
///   [`LeaseClock::revoke`];
/// - on a keep-alive: [`LeaseClock::keep_alive`] (leader only);
/// - periodically: [`LeaseClock::expired`] and propose a revoke for each,
///   and [`LeaseClock::checkpoints`] and propose a checkpoint for each.
#[derive(Debug, Clone)]
pub struct LeaseClock {
    config: LeaseClockConfig,
    leases: HashMap<i64, TimedLease>,
    // Invariant: holds exactly (deadline_ms, id) of every lease in `leases`.
    deadlines: BTreeSet<(u64, i64)>,
}

fn secs_to_ms(secs: i64) -> u64 {
    u64::try_from(secs).unwrap_or(0).saturating_mul(1_000)
}

impl LeaseClock {
    /// A clock that times nothing (a follower's state).
    pub fn new(config: LeaseClockConfig) -> LeaseClock {
        LeaseClock {
            config,
            leases: HashMap::new(),
            deadlines: BTreeSet::new(),
        }
    }

    /// Starts timing every lease on becoming leader. Each lease gets its
    /// checkpointed remaining TTL (or its full TTL when never checkpointed)
    /// plus `extend_ms`, from `now_ms`: as in etcd's `Promote`, a new leader
    /// never expires leases at once for time that passed under the old
    /// leader (it cannot know how much did); clients that kept their leases
    /// alive lose nothing, and the cost is that a dead client's lease lives
    /// up to one TTL plus one election timeout longer.
    pub fn promote(&mut self, now_ms: u64, extend_ms: u64, leases: &[(i64, i64, i64)]) {
        self.demote();
        for &(id, ttl_secs, remaining_ttl_secs) in leases {
            let left_secs = if remaining_ttl_secs > 0 {
                remaining_ttl_secs
            } else {
                ttl_secs
            };
            let deadline_ms = now_ms
                .saturating_add(secs_to_ms(left_secs))
                .saturating_add(extend_ms);
            self.insert(id, ttl_secs, deadline_ms, now_ms, remaining_ttl_secs > 0);
        }
    }

    /// Stops timing everything (on losing leadership).
    pub fn demote(&mut self) {
        self.leases.clear();
        self.deadlines.clear();
    }

    /// Starts timing a lease that was just granted (`ttl_secs` as the grant
    /// answered, after raising to the minimum).
    pub fn grant(&mut self, id: i64, ttl_secs: i64, now_ms: u64) {
        self.revoke(id);
        let deadline_ms = now_ms.saturating_add(secs_to_ms(ttl_secs));
        self.insert(id, ttl_secs, deadline_ms, now_ms, false);
    }

    fn insert(
        &mut self,
        id: i64,
        ttl_secs: i64,
        deadline_ms: u64,
        now_ms: u64,
        checkpointed: bool,
    ) {
        let interval = self.config.checkpoint_interval_ms;
        let next_checkpoint_ms = (interval > 0 && secs_to_ms(ttl_secs) > interval)
            .then(|| now_ms.saturating_add(interval));
        self.leases.insert(
            id,
            TimedLease {
                ttl_secs,
                deadline_ms,
                revoke_retry_at_ms: None,
                next_checkpoint_ms,
                checkpointed,
            },
        );
        self.deadlines.insert((deadline_ms, id));
    }

    /// Stops timing a lease (revoked, or its revoke applied).
    pub fn revoke(&mut self, id: i64) {
        if let Some(lease) = self.leases.remove(&id) {
            self.deadlines.remove(&(lease.deadline_ms, id));
        }
    }

    /// Renews a lease: its deadline becomes `now_ms + TTL`. Returns the TTL
    /// to answer, or `None` when the lease is unknown or already expired
    /// (its revoke is under way), which the server answers with TTL 0 as
    /// etcd answers a keep-alive of a lease that no longer exists.
    pub fn keep_alive(&mut self, id: i64, now_ms: u64) -> Option<i64> {
        let interval = self.config.checkpoint_interval_ms;
        let lease = self.leases.get_mut(&id)?;
        if lease.deadline_ms <= now_ms {
            return None;
        }
        self.deadlines.remove(&(lease.deadline_ms, id));
        lease.deadline_ms = now_ms.saturating_add(secs_to_ms(lease.ttl_secs));
        self.deadlines.insert((lease.deadline_ms, id));
        // A checkpointed remaining TTL is now stale (too short): record the
        // renewed one soon, as etcd clears it on renewal, so that a new
        // leader does not expire the lease early.
        if lease.checkpointed && interval > 0 {
            lease.next_checkpoint_ms = Some(now_ms);
        }
        Some(lease.ttl_secs)
    }

    /// Whole seconds left before the lease expires (truncated, as etcd
    /// reports it), or `None` when this clock does not time it.
    pub fn remaining_secs(&self, id: i64, now_ms: u64) -> Option<i64> {
        let lease = self.leases.get(&id)?;
        let left_ms = lease.deadline_ms.saturating_sub(now_ms);
        Some(i64::try_from(left_ms / 1_000).unwrap_or(i64::MAX))
    }

    /// Up to `max` leases whose deadline is at or before `now_ms`, oldest
    /// deadline first, for the leader to propose revokes. A lease handed out
    /// is not handed out again before `revoke_retry_ms` has passed.
    pub fn expired(&mut self, now_ms: u64, max: usize) -> Vec<i64> {
        let mut due = Vec::new();
        for &(deadline_ms, id) in &self.deadlines {
            if deadline_ms > now_ms || due.len() >= max {
                break;
            }
            let Some(lease) = self.leases.get_mut(&id) else {
                panic!("lease deadline index names lease {id} that is not timed");
            };
            if lease
                .revoke_retry_at_ms
                .is_some_and(|retry_at| retry_at > now_ms)
            {
                continue;
            }
            lease.revoke_retry_at_ms = Some(now_ms.saturating_add(self.config.revoke_retry_ms));
            due.push(id);
        }
        due
    }

    /// The earliest deadline, so the server can sleep until it.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        self.deadlines.first().map(|&(deadline_ms, _)| deadline_ms)
    }

    /// Up to `max` `(id, remaining TTL in seconds)` pairs due for a
    /// checkpoint (only with `checkpoint_interval_ms > 0`), ascending by ID;
    /// each is rescheduled one interval later.
    pub fn checkpoints(&mut self, now_ms: u64, max: usize) -> Vec<(i64, i64)> {
        let interval = self.config.checkpoint_interval_ms;
        if interval == 0 {
            return Vec::new();
        }
        let mut due: Vec<i64> = self
            .leases
            .iter()
            .filter(|(_, lease)| lease.next_checkpoint_ms.is_some_and(|at| at <= now_ms))
            .map(|(id, _)| *id)
            .collect();
        due.sort_unstable();
        due.truncate(max);
        due.into_iter()
            .filter_map(|id| {
                let remaining = self.remaining_secs(id, now_ms)?;
                let lease = self.leases.get_mut(&id)?;
                lease.next_checkpoint_ms = Some(now_ms.saturating_add(interval));
                lease.checkpointed = true;
                Some((id, remaining))
            })
            .collect()
    }

    /// Number of leases timed.
    pub fn len(&self) -> usize {
        self.leases.len()
    }

    /// Whether no lease is timed.
    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }
}
