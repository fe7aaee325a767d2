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
//! - **Compaction hashes** (`--experimental-compact-hash-check-enabled`, every
//!   `--experimental-compact-hash-check-time`): each member hashes its history at every
//!   compaction (`node::compaction_hashes`); the leader takes its kept hashes newest first, not
//!   yet checked, and asks every peer for its hash of the same compaction. A peer with the same
//!   previous compact revision and another hash raises a CORRUPT alarm for member 0 (which
//!   member is wrong is not known, as in etcd 3.5); once every peer has answered alike, that
//!   revision is checked and the round ends; a hash some peer could not be compared on
//!   (restarted since, not hashed yet, unreachable) is skipped for the next older one
//!   ([`compaction_check`]).

use std::sync::Arc;
use std::time::Duration;

use ballot_mvcc::{HashKv, MvccError};
use ballot_proto::etcdserverpb::{AlarmType, alarm_request::AlarmAction};
use ballot_raft::NodeId;

use crate::node::NodeHandle;
use crate::transport::{HashKvSource, HashQuestion, PeerHash, Transport};

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

    fn compaction_hash(&self, revision: i64) -> Result<HashKv, MvccError> {
        match self.0.compaction_hash(revision) {
            Some(kept) => Ok(kept),
            None => self.hash_kv(revision),
        }
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

/// What a compaction hash check found for one of the leader's kept hashes.
#[derive(Debug, PartialEq, Eq)]
pub enum CompactionCheck {
    /// This peer hashed the same compaction differently: its hash.
    Mismatch { peer: NodeId, hash: u32 },
    /// Every peer hashed it alike: the revision is checked.
    Agreed,
    /// Only this many peers could be compared (the others did not answer, or answered for
    /// another compact revision): try an older hash.
    Skipped { compared: usize },
}

/// etcd 3.5's `CompactHashCheck` for one kept hash `own`: a peer's answer counts when it is for
/// the same previous compact revision; the first such answer with another hash is a mismatch.
pub fn compaction_check(own: &HashKv, answers: &[PeerAnswer]) -> CompactionCheck {
    let mut compared = 0;
    for (id, answer) in answers {
        match answer {
            Ok(PeerHash::Hash(peer)) if peer.compact_revision == own.compact_revision => {
                if peer.hash != own.hash {
                    return CompactionCheck::Mismatch {
                        peer: *id,
                        hash: peer.hash,
                    };
                }
                compared += 1;
            }
            _ => {}
        }
    }
    if compared == answers.len() {
        CompactionCheck::Agreed
    } else {
        CompactionCheck::Skipped { compared }
    }
}

/// Asks every peer for its HashKV at `revision`, all at once, so a peer that is down or slow
/// delays the check by one timeout, not one per such peer; the answers come in peer order.
async fn ask_peers(transport: &Transport, revision: i64) -> Vec<PeerAnswer> {
    ask_every_peer(transport, HashQuestion::HashKv, revision).await
}

async fn ask_every_peer(
    transport: &Transport,
    question: HashQuestion,
    revision: i64,
) -> Vec<PeerAnswer> {
    let asks = transport.peer_ids().into_iter().map(|id| async move {
        let answer = transport.peer_hash(id, question, revision).await;
        (id, answer.map_err(|error| error.to_string()))
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
    spawn_while_leading(
        handle,
        transport,
        interval,
        (),
        |handle, transport, ()| async move {
            periodic_check(&handle, &transport).await;
        },
    )
}

/// Runs `round` every `interval` while this member leads, until the node stops; each round gets
/// what the one before returned (`first` for the first).
fn spawn_while_leading<State, Round, Fut>(
    handle: NodeHandle,
    transport: Transport,
    interval: Duration,
    first: State,
    mut round: Round,
) -> tokio::task::JoinHandle<()>
where
    State: Send + 'static,
    Round: FnMut(NodeHandle, Transport, State) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = State> + Send,
{
    tokio::spawn(async move {
        let stopped = handle.clone();
        let checks = async {
            let mut state = first;
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                if handle.is_leader() {
                    state = round(handle.clone(), transport.clone(), state).await;
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
    if corrupt_alarm_up(handle, corrupt) {
        return;
    }
    tracing::error!(
        member_id = %format_args!("{corrupt:x}"),
        revision = before.hash_revision,
        "corruption check: the member's data differs; raising a CORRUPT alarm"
    );
    raise_corrupt(handle, corrupt).await;
}

/// Whether a CORRUPT alarm for `member_id` is up (then a check proposes none).
fn corrupt_alarm_up(handle: &NodeHandle, member_id: u64) -> bool {
    handle
        .alarms()
        .iter()
        .any(|alarm| alarm.member_id == member_id && alarm.alarm == AlarmType::Corrupt as i32)
}

/// Raises a CORRUPT alarm for `member_id` through the log; a failure is logged.
async fn raise_corrupt(handle: &NodeHandle, member_id: u64) {
    let raised = handle
        .alarm(
            AlarmAction::Activate as i32,
            member_id,
            AlarmType::Corrupt as i32,
        )
        .await;
    if let Err(error) = raised {
        tracing::warn!(%error, "could not raise the CORRUPT alarm");
    }
}

/// Runs the compaction hash check every `interval` while this member leads, until the node
/// stops.
pub fn spawn_compaction_check(
    handle: NodeHandle,
    transport: Transport,
    interval: Duration,
) -> tokio::task::JoinHandle<()> {
    // The state: the newest compaction revision found alike on every member.
    spawn_while_leading(
        handle,
        transport,
        interval,
        0,
        |handle, transport, checked| async move {
            compaction_check_round(&handle, &transport, checked).await
        },
    )
}

/// One round of the compaction hash check over the kept hashes newer than `checked`; the
/// revision found alike on every member, or `checked`.
async fn compaction_check_round(handle: &NodeHandle, transport: &Transport, checked: i64) -> i64 {
    let hashes = handle.compaction_hashes_after(checked);
    for own in &hashes {
        let answers =
            ask_every_peer(transport, HashQuestion::CompactionHash, own.hash_revision).await;
        match compaction_check(own, &answers) {
            CompactionCheck::Agreed => {
                tracing::info!(
                    revision = own.hash_revision,
                    peers = answers.len(),
                    "successfully checked hash on whole cluster"
                );
                return own.hash_revision;
            }
            CompactionCheck::Skipped { compared } => tracing::debug!(
                revision = own.hash_revision,
                compared,
                peers = answers.len(),
                "compaction hash check: not every peer could be compared; trying an older one"
            ),
            CompactionCheck::Mismatch { peer, hash } => {
                tracing::error!(
                    revision = own.hash_revision,
                    leader_compact_revision = own.compact_revision,
                    leader_hash = own.hash,
                    follower_hash = hash,
                    follower_peer_id = %format_args!("{peer:x}"),
                    "failed compaction hash check; raising a CORRUPT alarm"
                );
                // For member 0, as etcd 3.5 does: two hashes differ, and which member holds
                // the wrong data is not known.
                if !corrupt_alarm_up(handle, 0) {
                    raise_corrupt(handle, 0).await;
                }
                return checked;
            }
        }
    }
    checked
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
    fn a_compaction_hash_is_checked_only_against_peers_of_the_same_compaction() {
        // The leader's hash of its compaction to 20, made when its compact revision was 10.
        let own = HashKv {
            current_revision: 25,
            ..hash(7, 10, 20)
        };
        let alike = answer(2, hash(7, 10, 20));
        assert_eq!(
            compaction_check(&own, &[alike.clone(), answer(3, hash(7, 10, 20))]),
            CompactionCheck::Agreed
        );
        assert_eq!(
            compaction_check(&own, &[alike.clone(), answer(3, hash(8, 10, 20))]),
            CompactionCheck::Mismatch { peer: 3, hash: 8 }
        );
        // A peer that answers for another compact revision (it has not kept the hash and has
        // compacted since, or restarted) or not at all is not compared.
        for other in [
            answer(3, hash(9, 20, 20)),
            (3, Ok(PeerHash::Compacted)),
            (3, Err("unreachable".to_string())),
        ] {
            assert_eq!(
                compaction_check(&own, &[alike.clone(), other]),
                CompactionCheck::Skipped { compared: 1 }
            );
        }
        assert_eq!(compaction_check(&own, &[]), CompactionCheck::Agreed);
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
