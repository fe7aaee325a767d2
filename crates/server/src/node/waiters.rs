//! Clients waiting for their proposals to be applied, keyed by request id on the member the
//! request arrived at (its origin). The apply task answers them when it applies the entry whose
//! envelope names this member and request id, wherever the entry was proposed.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};

use ballot_mvcc::ApplyOutcome;
use ballot_proto::etcdserverpb::{AlarmMember, Member};
use bytes::Bytes;
use tokio::sync::oneshot;

use super::error::NodeError;

/// What applying a proposal answered.
#[derive(Debug)]
pub enum AppliedResult {
    /// A state-machine command's outcome.
    Command(ApplyOutcome),
    /// A membership change: the member list after it.
    Members(Vec<Member>),
    /// An alarm raised or lifted: the alarm changed, if any.
    Alarms(Vec<AlarmMember>),
}

pub type ProposalResult = Result<AppliedResult, NodeError>;

struct Pending {
    reply: oneshot::Sender<ProposalResult>,
    /// The log index the proposal was appended at, when this member proposed it as leader.
    index: Option<u64>,
    /// The leader the proposal was forwarded to (0 if not forwarded).
    forwarded_to: u64,
}

#[derive(Default)]
struct Inner {
    /// Keyed by request ids this member makes up, so a fast hash needs no flooding defence.
    pending: HashMap<u64, Pending, foldhash::fast::RandomState>,
    /// Request ids by log index, for proposals appended by this member as leader.
    // Invariant: every value is a key of `pending` whose `index` is the key here.
    by_index: BTreeMap<u64, u64>,
}

/// The registry of waiting proposals. Every method holds the lock for O(1) or O(changed) work.
#[derive(Default)]
pub struct Waiters {
    inner: Mutex<Inner>,
}

impl Waiters {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn len(&self) -> usize {
        self.lock().pending.len()
    }

    pub fn register(&self, request_id: u64) -> oneshot::Receiver<ProposalResult> {
        let (reply, receiver) = oneshot::channel();
        self.lock().pending.insert(
            request_id,
            Pending {
                reply,
                index: None,
                forwarded_to: 0,
            },
        );
        receiver
    }

    /// Forgets a request whose client gave up (timed out).
    pub fn cancel(&self, request_id: u64) {
        let mut inner = self.lock();
        if let Some(pending) = inner.pending.remove(&request_id)
            && let Some(index) = pending.index
        {
            inner.by_index.remove(&index);
        }
    }

    /// Answers a request (if anyone still waits for it).
    pub fn resolve(&self, request_id: u64, result: ProposalResult) {
        let pending = {
            let mut inner = self.lock();
            let pending = inner.pending.remove(&request_id);
            if let Some(index) = pending.as_ref().and_then(|pending| pending.index) {
                inner.by_index.remove(&index);
            }
            pending
        };
        if let Some(pending) = pending {
            let _ = pending.reply.send(result);
        }
    }

    pub fn resolve_many(&self, results: Vec<(u64, ProposalResult)>) {
        for (request_id, result) in results {
            self.resolve(request_id, result);
        }
    }

    /// Records where this member (as leader) appended a proposal.
    pub fn set_index(&self, request_id: u64, index: u64) {
        let mut inner = self.lock();
        if let Some(pending) = inner.pending.get_mut(&request_id) {
            pending.index = Some(index);
            inner.by_index.insert(index, request_id);
        }
    }

    pub fn set_forwarded(&self, request_id: u64, leader: u64) {
        if let Some(pending) = self.lock().pending.get_mut(&request_id) {
            pending.forwarded_to = leader;
        }
    }

    /// Proposals appended at or below `applied` that were not answered when their index was
    /// applied: another entry took their place after a leader change (Raft paper §5.3 lets a
    /// new leader overwrite uncommitted entries). They can never apply now.
    pub fn fail_lost_through(&self, applied: u64) {
        let lost: Vec<Pending> = {
            let mut inner = self.lock();
            let kept = inner.by_index.split_off(&(applied + 1));
            let lost_ids = std::mem::replace(&mut inner.by_index, kept);
            lost_ids
                .into_values()
                .filter_map(|request_id| inner.pending.remove(&request_id))
                .collect()
        };
        for pending in lost {
            let _ = pending.reply.send(Err(NodeError::LeaderChanged));
        }
    }

    /// Proposals forwarded to a leader other than `leader`: the old leader may or may not have
    /// appended them, and the answer would have come from it; clients retry ("leader changed").
    pub fn fail_forwarded_except(&self, leader: u64) {
        let failed: Vec<Pending> = {
            let mut inner = self.lock();
            let ids: Vec<u64> = inner
                .pending
                .iter()
                .filter(|(_, pending)| pending.forwarded_to != 0 && pending.forwarded_to != leader)
                .map(|(request_id, _)| *request_id)
                .collect();
            ids.iter()
                .filter_map(|request_id| inner.pending.remove(request_id))
                .collect()
        };
        for pending in failed {
            let _ = pending.reply.send(Err(NodeError::LeaderChanged));
        }
    }

    /// Fails every waiting request (the node is stopping).
    pub fn fail_all(&self, error: &NodeError) {
        let all: Vec<Pending> = {
            let mut inner = self.lock();
            inner.by_index.clear();
            inner.pending.drain().map(|(_, pending)| pending).collect()
        };
        for pending in all {
            let _ = pending.reply.send(Err(error.clone()));
        }
    }
}

/// Requests this member forwarded to the leader over the peer transport (lease keep-alives and
/// time-to-live queries), answered by a response frame carrying the same request id.
#[derive(Default)]
pub struct PeerRequests {
    pending: Mutex<HashMap<u64, oneshot::Sender<Result<Bytes, NodeError>>>>,
}

impl PeerRequests {
    pub fn register(&self, request_id: u64) -> oneshot::Receiver<Result<Bytes, NodeError>> {
        let (reply, receiver) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(request_id, reply);
        receiver
    }

    pub fn resolve(&self, request_id: u64, result: Result<Bytes, NodeError>) {
        let reply = self
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&request_id);
        if let Some(reply) = reply {
            let _ = reply.send(result);
        }
    }

    pub fn cancel(&self, request_id: u64) {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&request_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(result: Result<ProposalResult, oneshot::error::TryRecvError>) -> String {
        match result {
            Ok(Ok(AppliedResult::Members(members))) => format!("members {}", members.len()),
            Ok(Ok(AppliedResult::Command(_))) => "command".into(),
            Ok(Ok(AppliedResult::Alarms(alarms))) => format!("alarms {}", alarms.len()),
            Ok(Err(error)) => error.to_string(),
            Err(_) => "waiting".into(),
        }
    }

    #[test]
    fn resolved_requests_answer_once() {
        let waiters = Waiters::default();
        let mut receiver = waiters.register(1);
        waiters.set_index(1, 10);
        waiters.resolve(1, Ok(AppliedResult::Members(Vec::new())));
        assert_eq!(outcome(receiver.try_recv()), "members 0");
        waiters.fail_lost_through(100);
        assert_eq!(waiters.len(), 0);
    }

    #[test]
    fn an_index_applied_without_its_request_fails_it_as_leader_changed() {
        let waiters = Waiters::default();
        let mut lost = waiters.register(1);
        let mut later = waiters.register(2);
        waiters.set_index(1, 10);
        waiters.set_index(2, 11);
        waiters.fail_lost_through(10);
        assert_eq!(outcome(lost.try_recv()), "etcdserver: leader changed");
        assert_eq!(outcome(later.try_recv()), "waiting");
        assert_eq!(waiters.len(), 1);
    }

    #[test]
    fn forwarded_requests_fail_when_the_leader_changes() {
        let waiters = Waiters::default();
        let mut to_old = waiters.register(1);
        let mut to_new = waiters.register(2);
        let mut local = waiters.register(3);
        waiters.set_forwarded(1, 7);
        waiters.set_forwarded(2, 8);
        waiters.fail_forwarded_except(8);
        assert_eq!(outcome(to_old.try_recv()), "etcdserver: leader changed");
        assert_eq!(outcome(to_new.try_recv()), "waiting");
        assert_eq!(outcome(local.try_recv()), "waiting");
        waiters.fail_all(&NodeError::Stopped);
        assert_eq!(outcome(local.try_recv()), "etcdserver: server stopped");
    }
}
