//! etcd's corruption checks: members compare HashKVs (a checksum of the key-value history up to
//! a revision, `ballot_mvcc::HashKv`) over the peer transport.
//!
//! - **Initial** (`--experimental-initial-corrupt-check`): a restarted member, once it has
//!   applied what its own log holds and before it serves clients, asks every peer for its
//!   HashKV at this member's revision. A peer that has compacted to the same revision and
//!   hashes differently is a mismatch, and the member refuses to start ("found data
//!   inconsistency with peers"). Peers that cannot answer, are behind or have compacted further
//!   are logged and skipped, as in etcd.
//! - **Periodic** (`--experimental-corrupt-check-time`): the leader hashes, asks every peer at
//!   its revision, and hashes again; it raises a CORRUPT alarm (through the log) for the first
//!   member found different, by etcd 3.4's rules ([`periodic_mismatch`]). While a CORRUPT alarm
//!   is up, every member refuses writes at apply time (`node::apply`), with "etcdserver:
//!   corrupt cluster"; reads go on.

use std::sync::Arc;
use std::time::Duration;

use ballot_mvcc::{HashKv, MvccError};
use ballot_proto::etcdserverpb::{AlarmType, alarm_request::AlarmAction};
use ballot_raft::NodeId;

use crate::node::NodeHandle;
use crate::transport::{HashKvSource, PeerHash, Transport};

/// One peer's answer, or why there is none.
pub type PeerAnswer = (NodeId, Result<PeerHash, String>);

/// Why the initial check stopped the member.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CorruptionError {
    /// etcd's message, with this member's ID in hex.
    #[error("{member_id:x} found data inconsistency with peers")]
    Inconsistent { member_id: u64 },
    #[error("{member_id:x} failed to fetch hash ({reason})")]
    OwnHash { member_id: u64, reason: String },
}

/// A member's store answers its peers' HashKV questions.
pub struct StoreHashes(pub NodeHandle);

impl HashKvSource for StoreHashes {
    fn hash_kv(&self, revision: i64) -> Result<HashKv, MvccError> {
        // From a snapshot, outside the store's lock: applying goes on while the history is
        // hashed.
        self.0
            .with_store(|store| store.snapshot_state())
            .hash_kv(revision)
    }
}

/// The peers whose hash differs from `own` at the same compact revision (etcd
/// `CheckInitialHashKV`); a different compact revision or a missing answer is not a mismatch.
pub fn initial_mismatches(own: &HashKv, answers: &[PeerAnswer]) -> Vec<NodeId> {
    answers
        .iter()
        .filter_map(|(id, answer)| match answer {
            Ok(PeerHash::Hash(peer))
                if peer.hash != own.hash && peer.compact_revision == own.compact_revision =>
            {
                Some(*id)
            }
            _ => None,
        })
        .collect()
}

/// The member to raise a CORRUPT alarm for, if any, by etcd 3.4's `checkHashKV` rules: the
/// leader (`leader_id`) hashed `before`, asked the peers at `before.hash_revision`, passed a
/// read barrier, then hashed `after`.
/// - the leader itself, if its own hash changed while its revisions did not;
/// - a peer ahead of the leader's revision, or with a later compact revision;
/// - a peer with the leader's compact revision and another hash.
///
/// Only the first is returned, as etcd raises one alarm per check.
pub fn periodic_mismatch(
    leader_id: NodeId,
    before: &HashKv,
    after: &HashKv,
    answers: &[PeerAnswer],
) -> Option<NodeId> {
    if after.hash != before.hash
        && after.hash_revision == before.hash_revision
        && after.compact_revision == before.compact_revision
    {
        return Some(leader_id);
    }
    answers.iter().find_map(|(id, answer)| match answer {
        Ok(PeerHash::Hash(peer))
            if peer.current_revision > after.current_revision
                || peer.compact_revision > after.compact_revision
                || (peer.compact_revision == before.compact_revision
                    && peer.hash != before.hash) =>
        {
            Some(*id)
        }
        _ => None,
    })
}

/// Asks every peer for its HashKV at `revision`, all at once, so a peer that is down or slow
/// delays the check by one timeout, not one per such peer; the answers come in peer order.
async fn ask_peers(transport: &Transport, revision: i64) -> Vec<PeerAnswer> {
    let asks = transport.peer_ids().into_iter().map(|id| async move {
        let answer = transport
            .peer_hash_kv(id, revision)
            .await
            .map_err(|error| error.to_string());
        (id, answer)
    });
    futures::future::join_all(asks).await
}

/// This member's HashKV at its current revision, on a blocking thread (it reads the whole
/// history).
async fn own_hash(handle: &NodeHandle) -> Result<HashKv, String> {
    let handle = handle.clone();
    tokio::task::spawn_blocking(move || StoreHashes(handle).hash_kv(0))
        .await
        .map_err(|error| error.to_string())?
        .map_err(|error| error.to_string())
}

/// The initial check: see the module documentation.
pub async fn initial_check(
    handle: &NodeHandle,
    transport: &Transport,
) -> Result<(), CorruptionError> {
    let member_id = handle.member_id();
    tracing::info!(member_id = %format_args!("{member_id:x}"), "starting initial corruption check");
    if let Err(error) = handle.applied_committed().await {
        return Err(CorruptionError::OwnHash {
            member_id,
            reason: format!("could not apply its own log: {error}"),
        });
    }
    let own = own_hash(handle)
        .await
        .map_err(|reason| CorruptionError::OwnHash { member_id, reason })?;
    let answers = ask_peers(transport, own.hash_revision).await;
    for (peer, answer) in &answers {
        let peer = format!("{peer:x}");
        match answer {
            Ok(PeerHash::Hash(theirs)) if theirs.hash == own.hash => {}
            Ok(PeerHash::Hash(theirs)) if theirs.compact_revision == own.compact_revision => {
                tracing::error!(
                    remote_member = %peer,
                    revision = own.hash_revision,
                    compact_revision = own.compact_revision,
                    local_hash = own.hash,
                    remote_hash = theirs.hash,
                    "found different hash values from remote peer"
                );
            }
            Ok(PeerHash::Hash(theirs)) => tracing::warn!(
                remote_member = %peer,
                local_compact_revision = own.compact_revision,
                remote_compact_revision = theirs.compact_revision,
                "found different compact revision values from remote peer"
            ),
            Ok(PeerHash::FutureRevision) => tracing::warn!(
                remote_member = %peer,
                revision = own.hash_revision,
                "cannot fetch hash from slow remote peer"
            ),
            Ok(PeerHash::Compacted) => tracing::warn!(
                remote_member = %peer,
                revision = own.hash_revision,
                "cannot fetch hash from remote peer; local member is behind"
            ),
            Err(error) => tracing::warn!(
                remote_member = %peer,
                %error,
                "cannot fetch hash from remote peer"
            ),
        }
    }
    if !initial_mismatches(&own, &answers).is_empty() {
        return Err(CorruptionError::Inconsistent { member_id });
    }
    tracing::info!(
        member_id = %format_args!("{member_id:x}"),
        "initial corruption checking passed; no corruption"
    );
    Ok(())
}

/// Runs the periodic check every `interval` while this member leads, until the node stops.
pub fn spawn_periodic(
    handle: NodeHandle,
    transport: Transport,
    interval: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let stopped = handle.clone();
        let checks = async {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                if handle.is_leader() {
                    periodic_check(&handle, &transport).await;
                }
            }
        };
        tokio::select! {
            _ = stopped.stopped() => {}
            () = checks => {}
        }
    })
}

async fn periodic_check(handle: &NodeHandle, transport: &Transport) {
    let before = match own_hash(handle).await {
        Ok(hash) => hash,
        Err(error) => {
            tracing::warn!(%error, "corruption check: cannot compute this member's hash");
            return;
        }
    };
    let answers = ask_peers(transport, before.hash_revision).await;
    // "A peer ahead of the leader" means something only once this leader has applied all that
    // any peer could have applied when it answered: its apply may lag its commit, and a new
    // leader may not know yet that its predecessor's last entries are committed. A read
    // barrier (ReadIndex: an entry of this term committed, then applied up to the commit
    // index) covers both.
    if let Err(error) = handle.read_barrier().await {
        tracing::warn!(%error, "corruption check: cannot catch up with the log; skipped");
        return;
    }
    let after = match own_hash(handle).await {
        Ok(hash) => hash,
        Err(error) => {
            tracing::warn!(%error, "corruption check: cannot compute this member's hash");
            return;
        }
    };
    for (peer, answer) in &answers {
        if let Err(error) = answer {
            tracing::debug!(remote_member = %format_args!("{peer:x}"), %error,
                "corruption check: no hash from peer");
        }
    }
    let Some(corrupt) = periodic_mismatch(handle.member_id(), &before, &after, &answers) else {
        return;
    };
    let raised_already = handle
        .alarms()
        .iter()
        .any(|alarm| alarm.member_id == corrupt && alarm.alarm == AlarmType::Corrupt as i32);
    if raised_already {
        return;
    }
    tracing::error!(
        member_id = %format_args!("{corrupt:x}"),
        revision = before.hash_revision,
        "corruption check: the member's data differs; raising a CORRUPT alarm"
    );
    let raised = handle
        .alarm(
            AlarmAction::Activate as i32,
            corrupt,
            AlarmType::Corrupt as i32,
        )
        .await;
    if let Err(error) = raised {
        tracing::warn!(%error, "could not raise the CORRUPT alarm");
    }
}

/// Sets `handle`'s store as the answer to the peers' HashKV questions.
pub fn answer_peers(handle: &NodeHandle, transport: &Transport) {
    transport.set_hash_kv_source(Arc::new(StoreHashes(handle.clone())));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(hash: u32, compact_revision: i64, revision: i64) -> HashKv {
        HashKv {
            hash,
            compact_revision,
            hash_revision: revision,
            current_revision: revision,
        }
    }

    fn answer(id: NodeId, peer: HashKv) -> PeerAnswer {
        (id, Ok(PeerHash::Hash(peer)))
    }

    #[test]
    fn initially_only_a_different_hash_at_the_same_compact_revision_is_a_mismatch() {
        let own = hash(7, 3, 10);
        let answers = vec![
            answer(2, hash(7, 3, 12)),
            answer(3, hash(8, 3, 10)),
            answer(4, hash(9, 5, 10)),
            (5, Ok(PeerHash::FutureRevision)),
            (6, Ok(PeerHash::Compacted)),
            (7, Err("unreachable".into())),
        ];
        assert_eq!(initial_mismatches(&own, &answers), vec![3]);
        assert_eq!(
            initial_mismatches(&own, &answers[..1]),
            Vec::<NodeId>::new()
        );
    }

    #[test]
    fn periodically_etcds_rules_name_the_first_member_found_different() {
        let leader = hash(7, 3, 10);
        let same = answer(2, hash(7, 3, 10));
        assert_eq!(
            periodic_mismatch(1, &leader, &leader, std::slice::from_ref(&same)),
            None
        );
        // A peer with another hash at the leader's compact revision.
        let differs = answer(3, hash(8, 3, 10));
        assert_eq!(
            periodic_mismatch(1, &leader, &leader, &[same.clone(), differs.clone()]),
            Some(3)
        );
        // A peer ahead of the leader, or compacted further than it.
        let ahead = answer(
            4,
            HashKv {
                current_revision: 11,
                ..hash(7, 3, 10)
            },
        );
        assert_eq!(periodic_mismatch(1, &leader, &leader, &[ahead]), Some(4));
        let compacted_further = answer(5, hash(9, 4, 10));
        assert_eq!(
            periodic_mismatch(1, &leader, &leader, &[compacted_further]),
            Some(5)
        );
        // A peer behind the leader's compaction is no evidence either way.
        let compacted_less = answer(6, hash(9, 2, 10));
        assert_eq!(
            periodic_mismatch(1, &leader, &leader, &[compacted_less]),
            None
        );
        // The leader's own hash changed under the same revisions: the leader is the one.
        let changed = hash(8, 3, 10);
        assert_eq!(periodic_mismatch(1, &leader, &changed, &[differs]), Some(1));
        // New writes between the two hashes are no mismatch.
        let moved_on = hash(8, 3, 11);
        assert_eq!(periodic_mismatch(1, &leader, &moved_on, &[same]), None);
        // Unanswered questions are skipped.
        let silent = vec![
            (7, Ok(PeerHash::FutureRevision)),
            (8, Err("timed out".to_string())),
        ];
        assert_eq!(periodic_mismatch(1, &leader, &leader, &silent), None);
    }
}
