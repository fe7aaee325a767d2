//! Lease expiry, driven by the leader alone (etcd's lessor design): the leader times every
//! lease with a `LeaseClock` and proposes `LeaseRevoke` for the expired ones, so expiry is a
//! replicated command and every replica deletes the same keys at the same revision. A new
//! leader refreshes every lease's TTL plus an election timeout (`LeaseClock::promote`), since it
//! cannot know how long the old leader had been silent. Followers forward keep-alives and
//! time-to-live queries to the leader over the peer transport.

use std::sync::Arc;
use std::time::Duration;

use ballot_mvcc::{Command, LeaseClock};
use ballot_proto::etcdserverpb::LeaseTimeToLiveResponse;
use ballot_raft::Role;
use bytes::Bytes;
use prost::Message as _;

use super::error::NodeError;
use super::{NodeShared, lock_read};
use crate::metrics::metrics;
use crate::transport::PeerFrame;

/// Peer lease operations.
pub const OP_KEEP_ALIVE: u8 = 1;
pub const OP_TIME_TO_LIVE: u8 = 2;

/// Expired leases revoked per check; the rest wait for the next check.
const REVOKES_PER_CHECK: usize = 500;
/// Remaining TTLs checkpointed per check (etcd batches 1000 per proposal).
const CHECKPOINTS_PER_CHECK: usize = 1000;

/// The leader's lease timer and the term it was promoted in (0: not timing).
pub struct LeaseKeeper {
    pub clock: LeaseClock,
    pub promoted_term: u64,
}

impl LeaseKeeper {
    /// A keeper that checkpoints remaining TTLs every `checkpoint_interval`, if given.
    pub fn new(checkpoint_interval: Option<Duration>) -> LeaseKeeper {
        let config = ballot_mvcc::LeaseClockConfig {
            checkpoint_interval_ms: checkpoint_interval
                .map_or(0, |interval| interval.as_millis().max(1) as u64),
            ..ballot_mvcc::LeaseClockConfig::default()
        };
        LeaseKeeper {
            clock: LeaseClock::new(config),
            promoted_term: 0,
        }
    }
}

/// Makes sure the keeper times every lease if this member leads in `term`; false when it does
/// not lead. Lock order: keeper, then store.
fn ensure_promoted(shared: &NodeShared, keeper: &mut LeaseKeeper) -> bool {
    let (role, term) = {
        let view = shared.view.borrow();
        (view.role, view.term)
    };
    if role != Role::Leader {
        if keeper.promoted_term != 0 {
            keeper.clock.demote();
            keeper.promoted_term = 0;
        }
        return false;
    }
    if keeper.promoted_term != term {
        let leases = lock_read(&shared.store).lease_ttls();
        let extend_ms = shared.config.election_timeout.as_millis() as u64;
        keeper.clock.promote(shared.now_ms(), extend_ms, &leases);
        keeper.promoted_term = term;
        tracing::info!(
            leases = leases.len(),
            term,
            "timing leases as the new leader"
        );
    }
    true
}

/// After applying grants and revokes: the leader starts or stops timing them.
pub fn on_applied(shared: &NodeShared, granted: &[(i64, i64)], revoked: &[i64]) {
    let mut keeper = shared.lock_leases();
    if keeper.promoted_term == 0 {
        return;
    }
    let now_ms = shared.now_ms();
    for &(id, ttl_secs) in granted {
        keeper.clock.grant(id, ttl_secs, now_ms);
    }
    for &id in revoked {
        keeper.clock.revoke(id);
    }
}

/// The leader's periodic check: propose revokes for expired leases and, with
/// `--experimental-enable-lease-checkpoint`, checkpoints of long leases' remaining TTLs (the
/// clock schedules one per interval per lease, and one right after a keep-alive of a lease
/// checkpointed before, whose recorded TTL is then too short).
pub async fn run_expiry(shared: Arc<NodeShared>) {
    let period = shared
        .config
        .heartbeat_interval
        .clamp(Duration::from_millis(10), Duration::from_millis(500));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stop = shared.stop.subscribe();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        let (expired, checkpoints) = {
            let mut keeper = shared.lock_leases();
            if !ensure_promoted(&shared, &mut keeper) {
                continue;
            }
            let now_ms = shared.now_ms();
            (
                keeper.clock.expired(now_ms, REVOKES_PER_CHECK),
                keeper.clock.checkpoints(now_ms, CHECKPOINTS_PER_CHECK),
            )
        };
        for id in expired {
            tracing::debug!(lease = id, "lease expired; proposing its revoke");
            metrics().leases_expired.inc();
            shared.propose_detached(Command::LeaseRevoke { id }).await;
        }
        for (id, remaining_ttl_secs) in checkpoints {
            shared
                .propose_detached(Command::LeaseCheckpoint {
                    id,
                    remaining_ttl_secs,
                })
                .await;
        }
    }
}

/// Renews a lease on the leader: the TTL, or 0 for an unknown or expired lease.
///
/// A lease the clock does not know may be one whose grant this leader has committed but not
/// applied yet: the member that took the grant can apply it first and answer the client, whose
/// first keep-alive then reaches the leader (directly, or forwarded) ahead of the leader's own
/// apply. Answering 0 then would tell the client its new lease is gone (etcd's client closes
/// the keep-alive and a session on it ends). So before answering "unknown" the leader waits
/// until it has applied everything it had committed when the request came.
pub async fn keep_alive_on_leader(shared: &NodeShared, id: i64) -> Result<i64, NodeError> {
    if let Some(ttl) = keep_alive_local(shared, id)? {
        return Ok(ttl);
    }
    shared.apply_committed().await?;
    Ok(keep_alive_local(shared, id)?.unwrap_or(0))
}

fn keep_alive_local(shared: &NodeShared, id: i64) -> Result<Option<i64>, NodeError> {
    let mut keeper = shared.lock_leases();
    if !ensure_promoted(shared, &mut keeper) {
        return Err(NodeError::NoLeader);
    }
    Ok(keeper.clock.keep_alive(id, shared.now_ms()))
}

/// TimeToLive on the leader: the replicated lease with the leader's remaining TTL. An unknown
/// lease waits for the leader's apply as in [`keep_alive_on_leader`].
///
/// With `keys`, the leader first applies everything it had committed when the request came:
/// another member may have applied (and acknowledged) a put attached to the lease before the
/// leader's own apply got to it, and the key list must include every acknowledged put.
pub async fn time_to_live_on_leader(
    shared: &NodeShared,
    id: i64,
    keys: bool,
) -> Result<LeaseTimeToLiveResponse, NodeError> {
    if keys {
        shared.apply_committed().await?;
        return time_to_live_local(shared, id, keys);
    }
    let response = time_to_live_local(shared, id, keys)?;
    if response.ttl >= 0 {
        return Ok(response);
    }
    shared.apply_committed().await?;
    time_to_live_local(shared, id, keys)
}

fn time_to_live_local(
    shared: &NodeShared,
    id: i64,
    keys: bool,
) -> Result<LeaseTimeToLiveResponse, NodeError> {
    let remaining = {
        let mut keeper = shared.lock_leases();
        if !ensure_promoted(shared, &mut keeper) {
            return Err(NodeError::NoLeader);
        }
        keeper.clock.remaining_secs(id, shared.now_ms())
    };
    let mut response = lock_read(&shared.store).lease_time_to_live(id, keys);
    if response.ttl >= 0
        && let Some(remaining) = remaining
    {
        response.ttl = remaining;
    }
    Ok(response)
}

/// Answers a follower's forwarded lease request.
pub async fn answer_peer_request(
    shared: Arc<NodeShared>,
    from: u64,
    request_id: u64,
    op: u8,
    lease_id: i64,
    keys: bool,
) {
    let result = match op {
        OP_KEEP_ALIVE => keep_alive_on_leader(&shared, lease_id)
            .await
            .map(|ttl| Bytes::copy_from_slice(&ttl.to_le_bytes())),
        OP_TIME_TO_LIVE => time_to_live_on_leader(&shared, lease_id, keys)
            .await
            .map(|response| Bytes::from(response.encode_to_vec())),
        _ => Err(NodeError::Timeout),
    };
    let frame = match result {
        Ok(payload) => PeerFrame::LeaseResponse {
            request_id,
            error: 0,
            payload,
        },
        Err(error) => PeerFrame::LeaseResponse {
            request_id,
            error: error.wire_code(),
            payload: Bytes::new(),
        },
    };
    shared.transport.send_frame(from, frame);
}

/// Decodes a forwarded keep-alive answer.
pub fn decode_keep_alive(payload: &Bytes) -> Result<i64, NodeError> {
    let bytes: [u8; 8] = payload
        .as_ref()
        .try_into()
        .map_err(|_| NodeError::Timeout)?;
    Ok(i64::from_le_bytes(bytes))
}

pub fn decode_time_to_live(payload: &Bytes) -> Result<LeaseTimeToLiveResponse, NodeError> {
    LeaseTimeToLiveResponse::decode(payload.clone()).map_err(|_| NodeError::Timeout)
}
