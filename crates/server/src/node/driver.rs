//! The Raft driver task: the only owner of the `RaftNode`.
//!
//! Each turn of its loop waits for any input (a tick, a peer frame, a client request, "WAL
//! durable through Ready n", "applied through i"), drains everything else already waiting
//! (batching), proposes all pending proposals with one `propose_batch`, asks for one read index
//! for all pending reads, and then executes every `Ready` following the contract in
//! `ballot_raft::Ready`:
//!
//! - `messages` go to the transport at once, including the leader's Appends, so the leader's
//!   own disk write overlaps replication (Raft thesis §10.2.1);
//! - snapshot, entries and hard state go to the WAL's group-commit writer without waiting; the
//!   persist task waits for durability, then sends `persisted_messages` and reports the Ready
//!   number back here for `on_persisted`;
//! - committed entries go to the apply task over a bounded channel;
//! - read states release the reads waiting for them.

use std::collections::HashMap;
use std::sync::Arc;

use ballot_raft::{
    ConfChange, ConfChangeKind, EntryKind, Message, ProposeError, RaftNode, Ready, Role,
    SnapshotMeta, SoftState, TransferError,
};
use ballot_wal::{Completion, GroupCommitWal, Write};
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};

use super::envelope::{ConfContext, ConfPurpose, Envelope};
use super::error::NodeError;
use super::members::{MemberRecord, Registry};
use super::{NodeShared, RaftView, lock_read};
use crate::metrics::metrics;
use crate::storage::{entry_to_wal, hard_state_to_wal, snapshot_marker};
use crate::transport::{PeerFrame, PeerInput, Transport};

/// Inputs drained per loop turn before the Ready is handled, so ticks never starve.
const DRAIN_MAX: usize = 8192;

/// What the API side and the node's own tasks ask of the driver.
pub enum DriverRequest {
    /// Propose an encoded envelope; `request_id` is this member's waiter (0: nobody waits).
    Propose { request_id: u64, data: Bytes },
    /// Propose a membership change (its context names the waiter).
    ProposeConfChange { request_id: u64, change: ConfChange },
    /// A linearizable read point.
    ReadIndex {
        reply: oneshot::Sender<Result<u64, NodeError>>,
    },
    TransferLeader {
        target: u64,
        reply: oneshot::Sender<Result<(), NodeError>>,
    },
    /// The metadata for a snapshot of the state machine at `index` (which is applied).
    SnapshotMeta {
        index: u64,
        reply: oneshot::Sender<Option<SnapshotMeta>>,
    },
    /// A snapshot through `meta.index` is durable; compact the in-memory log through
    /// `compact_through`.
    SnapshotTaken {
        meta: SnapshotMeta,
        compact_through: u64,
    },
    /// The full Raft status (progress of every member on the leader).
    Status {
        reply: oneshot::Sender<ballot_raft::Status>,
    },
}

/// A Ready's persistence, handed to the persist task in Ready order.
pub struct PersistItem {
    pub number: u64,
    pub completion: Option<Completion>,
    pub messages: Vec<Message>,
}

/// Work for the apply task, in log order.
pub enum ApplyItem {
    /// Install the snapshot described (its file is already durable in the snapshot store).
    Snapshot(SnapshotMeta),
    Entries(Vec<ballot_raft::Entry>),
}

pub struct PendingProposal {
    /// This member's waiter, or 0 when forwarded from `origin` or nobody waits.
    request_id: u64,
    /// The member whose client waits (this member for local proposals).
    origin: u64,
    data: Bytes,
}

pub struct Driver {
    pub raft: RaftNode,
    pub shared: Arc<NodeShared>,
    pub requests: mpsc::Receiver<DriverRequest>,
    pub peer_input: mpsc::Receiver<PeerInput>,
    pub wal: GroupCommitWal,
    pub transport: Transport,
    pub persist: mpsc::Sender<PersistItem>,
    pub persisted: watch::Receiver<u64>,
    pub applied: watch::Receiver<u64>,
    pub apply: mpsc::Sender<ApplyItem>,
    pub stop: watch::Receiver<bool>,
    pub proposals: Vec<PendingProposal>,
    pub reads: Vec<oneshot::Sender<Result<u64, NodeError>>>,
    pub read_waiters: HashMap<u64, Vec<oneshot::Sender<Result<u64, NodeError>>>>,
    pub next_read_ctx: u64,
    pub soft_state: SoftState,
    pub applied_index: u64,
    /// Index of the last configuration change seen in the log (appended or restored).
    pub last_conf_index: u64,
    /// Membership changes waiting for the registry to catch up with `last_conf_index`.
    pub deferred_conf_changes: Vec<(u64, u64, ConfChange)>,
    /// Term and vote of the last hard state handed to the WAL.
    pub durable_term_vote: (u64, u64),
    /// A newer commit index not yet written (see [`Driver::write_for`]).
    pub pending_hard_state: Option<ballot_raft::HardState>,
    /// The WAL's disk is full ([`GroupCommitWal::no_space`]).
    pub no_space: watch::Receiver<bool>,
    /// Ticks of this driver so far.
    pub ticks: u64,
    /// The tick at which each peer's last frame arrived: the leader hears from every member at
    /// each heartbeat, which is what `--strict-reconfig-check` calls active.
    pub heard_at_tick: HashMap<u64, u64>,
    /// `--initial-election-tick-advance`: true from start until enough voters to make a quorum
    /// with this member have been heard from (`heard_at_tick` names them). Each member greets
    /// its peers with an empty frame at start, so the members of a cluster starting together
    /// hear from each other at once, well before any election timeout. Then, if no leader is
    /// known, the election clock is advanced to two ticks short of the election timeout (etcd's
    /// `advanceTicks`, which waits for peer connections the same way), and this is false.
    pub tick_advance_pending: bool,
    /// The peers whose greeting was answered with one: once per peer and process, so that a
    /// member started before its peers (whose greetings to them were lost) is heard too, and
    /// two members never greet each other back and forth.
    pub greeted_back: Vec<u64>,
}

/// Why the driver stopped.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("the WAL failed: {0}")]
    Wal(#[from] ballot_wal::WalError),
    #[error("an internal channel closed: {0}")]
    ChannelClosed(&'static str),
}

impl Driver {
    pub fn new_state(raft: &RaftNode) -> (SoftState, u64) {
        let status = raft.status();
        (
            SoftState {
                role: status.role,
                leader: status.leader,
            },
            status.applied,
        )
    }

    pub async fn run(mut self) -> Result<(), DriverError> {
        let mut ticker = tokio::time::interval(self.shared.config.heartbeat_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A member that is the only voter need not wait an election timeout to lead (etcd
        // campaigns at once in a one-member cluster too).
        let status = self.raft.status();
        if status.conf.voters == [self.shared.member_id] && status.role != Role::Leader {
            self.raft.campaign();
        } else if self.shared.config.initial_election_tick_advance
            && status.role != Role::Leader
            && status.conf.voters.contains(&self.shared.member_id)
        {
            self.tick_advance_pending = true;
            for &peer in status.conf.voters.iter() {
                if peer != self.shared.member_id {
                    self.transport
                        .send_frame(peer, PeerFrame::Messages(Vec::new()));
                }
            }
        }
        self.publish_view();
        loop {
            tokio::select! {
                biased;
                changed = self.stop.changed() => {
                    if changed.is_err() || *self.stop.borrow() {
                        return Ok(());
                    }
                }
                _ = ticker.tick() => {
                    self.ticks += 1;
                    self.raft.tick();
                    // Within a tick of the disk filling, and again until a hand-over succeeds
                    // (one may time out).
                    if *self.no_space.borrow() {
                        self.hand_over_leadership();
                    }
                    // The core drops a read it cannot confirm; forget reads whose callers gave up.
                    self.read_waiters
                        .retain(|_, replies| replies.iter().any(|reply| !reply.is_closed()));
                }
                Ok(()) = self.persisted.changed() => {
                    let number = *self.persisted.borrow_and_update();
                    self.raft.on_persisted(number);
                }
                Ok(()) = self.applied.changed() => {
                    let applied = *self.applied.borrow_and_update();
                    self.on_applied(applied);
                }
                Some(input) = self.peer_input.recv() => self.on_peer_input(input),
                Some(request) = self.requests.recv() => self.on_request(request),
            }
            self.drain();
            self.flush_proposals();
            self.flush_reads();
            while self.raft.has_ready() {
                let ready = self.raft.ready();
                self.handle_ready(ready).await?;
            }
            self.publish_view();
        }
    }

    /// A leader whose disk is full can still send its log (the followers' acknowledgements
    /// commit it), but it cannot make its own entries durable, so it can apply nothing and
    /// answers none of its clients: it hands leadership to the voter that holds the most of the
    /// log, and the cluster goes on with a leader that can write. Called at every tick while the
    /// disk is full, so a transfer that timed out is tried again.
    fn hand_over_leadership(&mut self) {
        if self.soft_state.role != Role::Leader {
            return;
        }
        let status = self.raft.status();
        if status.lead_transferee.is_some() {
            return;
        }
        let target = status
            .progress
            .iter()
            .filter(|(id, _)| *id != status.id && status.conf.voters.contains(id))
            .max_by_key(|(_, progress)| progress.match_index)
            .map(|(id, _)| *id);
        let Some(target) = target else {
            tracing::debug!("the disk is full and no other voter can take over the leadership");
            return;
        };
        match self.raft.transfer_leader(target) {
            Ok(()) => tracing::warn!(
                target = format_args!("{target:x}"),
                "the disk is full: handing the leadership over"
            ),
            Err(error) => {
                tracing::warn!(%error, "the disk is full; cannot hand the leadership over")
            }
        }
    }

    fn on_applied(&mut self, applied: u64) {
        if applied > self.applied_index {
            self.applied_index = applied;
            self.raft.on_applied(applied);
        }
        if self.applied_index >= self.last_conf_index {
            self.retry_deferred_conf_changes();
        }
    }

    fn retry_deferred_conf_changes(&mut self) {
        for (origin, request_id, change) in std::mem::take(&mut self.deferred_conf_changes) {
            self.propose_conf_change(origin, request_id, change);
        }
    }

    /// Takes everything already waiting, up to a bound.
    fn drain(&mut self) {
        for _ in 0..DRAIN_MAX {
            if let Ok(input) = self.peer_input.try_recv() {
                self.on_peer_input(input);
                continue;
            }
            if let Ok(request) = self.requests.try_recv() {
                self.on_request(request);
                continue;
            }
            break;
        }
    }

    fn on_peer_input(&mut self, input: PeerInput) {
        match input {
            PeerInput::Frame { from, frame } => self.on_frame(from, frame),
            PeerInput::Unreachable(to) => self.raft.report_unreachable(to),
            PeerInput::SnapshotStatus { to, ok } => self.raft.report_snapshot(to, ok),
        }
    }

    fn on_frame(&mut self, from: u64, frame: PeerFrame) {
        let first_from_peer = self.heard_at_tick.insert(from, self.ticks).is_none();
        let greeting = matches!(&frame, PeerFrame::Messages(messages) if messages.is_empty());
        if greeting && !self.greeted_back.contains(&from) {
            self.greeted_back.push(from);
            self.transport
                .send_frame(from, PeerFrame::Messages(Vec::new()));
        }
        self.step_frame(from, frame);
        if self.tick_advance_pending && first_from_peer {
            self.advance_election_clock_once_quorum_heard();
        }
    }

    /// `--initial-election-tick-advance` (see `tick_advance_pending`), once enough voters are
    /// heard.
    fn advance_election_clock_once_quorum_heard(&mut self) {
        let status = self.raft.status();
        let voters = &status.conf.voters;
        let heard_voters = voters
            .iter()
            .filter(|id| self.heard_at_tick.contains_key(id))
            .count();
        if heard_voters + 1 < voters.len() / 2 + 1 {
            return;
        }
        self.tick_advance_pending = false;
        if status.leader != 0 || status.role != Role::Follower {
            return;
        }
        let ticks = self.shared.config.election_ticks.saturating_sub(2);
        self.raft.advance_ticks(ticks);
        tracing::info!(
            ticks,
            "heard from a quorum with no leader: advanced the election clock \
             (--initial-election-tick-advance)"
        );
    }

    fn step_frame(&mut self, from: u64, frame: PeerFrame) {
        match frame {
            PeerFrame::Messages(messages) => {
                for message in messages {
                    if let Err(error) = self.raft.step(message) {
                        tracing::debug!(from = %format_args!("{from:x}"), %error, "message refused");
                    }
                }
            }
            PeerFrame::Forward(envelopes) => {
                self.proposals
                    .extend(envelopes.into_iter().map(|data| PendingProposal {
                        request_id: 0,
                        origin: from,
                        data,
                    }));
            }
            PeerFrame::ForwardConfChange { request_id, change } => {
                match ConfChange::decode(&change) {
                    Ok(change) => self.propose_conf_change(from, request_id, change),
                    Err(error) => {
                        tracing::warn!(from = %format_args!("{from:x}"), %error, "undecodable forwarded configuration change");
                    }
                }
            }
            PeerFrame::Reject { error, request_ids } => {
                let error = NodeError::from_wire_code(error);
                for request_id in request_ids {
                    self.shared.waiters.resolve(request_id, Err(error.clone()));
                }
            }
            PeerFrame::LeaseRequest {
                request_id,
                op,
                lease_id,
                keys,
            } => {
                let shared = Arc::clone(&self.shared);
                tokio::spawn(async move {
                    super::lease::answer_peer_request(shared, from, request_id, op, lease_id, keys)
                        .await;
                });
            }
            PeerFrame::LeaseResponse {
                request_id,
                error,
                payload,
            } => {
                let result = match error {
                    0 => Ok(payload),
                    code => Err(NodeError::from_wire_code(code)),
                };
                self.shared.peer_requests.resolve(request_id, result);
            }
        }
    }

    fn on_request(&mut self, request: DriverRequest) {
        match request {
            DriverRequest::Propose { request_id, data } => {
                self.proposals.push(PendingProposal {
                    request_id,
                    origin: self.shared.member_id,
                    data,
                });
            }
            DriverRequest::ProposeConfChange { request_id, change } => {
                self.propose_conf_change(self.shared.member_id, request_id, change);
            }
            DriverRequest::ReadIndex { reply } => self.reads.push(reply),
            DriverRequest::TransferLeader { target, reply } => {
                let result = self
                    .raft
                    .transfer_leader(target)
                    .map_err(|error| match error {
                        TransferError::NotLeader { .. } => NodeError::NotLeader,
                        TransferError::NotVoter(_) => NodeError::BadLeaderTransferee,
                        TransferError::AlreadyLeader => NodeError::BadLeaderTransferee,
                    });
                let _ = reply.send(result);
            }
            DriverRequest::SnapshotMeta { index, reply } => {
                // The apply task has applied `index`; the applied watch may not have been read
                // yet, so tell the core before asking.
                self.on_applied(index);
                let _ = reply.send(self.raft.snapshot_meta(index));
            }
            DriverRequest::SnapshotTaken {
                meta,
                compact_through,
            } => {
                self.raft.snapshot_taken(meta);
                if compact_through > 0
                    && let Err(error) = self.raft.compact(compact_through)
                {
                    tracing::debug!(%error, "log compaction skipped");
                }
            }
            DriverRequest::Status { reply } => {
                let _ = reply.send(self.raft.status());
            }
        }
    }

    fn propose_conf_change(&mut self, origin: u64, request_id: u64, change: ConfChange) {
        let me = self.shared.member_id;
        if self.soft_state.role == Role::Leader {
            // Membership is validated against the registry, which the apply task updates; wait
            // until it reflects every configuration change in the log, so that two changes
            // proposed on different members cannot both pass a check against a stale registry
            // (a change takes effect when appended and cannot be undone at apply time).
            if self.applied_index < self.last_conf_index {
                self.deferred_conf_changes
                    .push((origin, request_id, change));
                return;
            }
            let valid = {
                let registry = lock_read(&self.shared.registry);
                validate_conf_change(&registry, &change)
                    .and_then(|purpose| {
                        self.check_learner_ready(purpose, &change).map(|()| purpose)
                    })
                    .and_then(|purpose| {
                        if !self.shared.config.strict_reconfig_check {
                            return Ok(());
                        }
                        check_reconfig_keeps_quorum(&registry, me, purpose, &change, |id| {
                            self.recently_heard_from(id)
                        })
                    })
            };
            if let Err(error) = valid {
                self.refuse(origin, request_id, error);
                return;
            }
            match self.raft.propose_conf_change(change.clone()) {
                Ok(_) => {}
                // Both clear as the log commits and applies (the new leader's first entry, the
                // previous change): wait rather than fail, and retry as the applied index moves.
                Err(ProposeError::LeaderTermNotCommitted | ProposeError::ConfChangePending) => {
                    self.deferred_conf_changes
                        .push((origin, request_id, change));
                }
                Err(error) => self.refuse(origin, request_id, propose_error(error)),
            }
            return;
        }
        let leader = self.soft_state.leader;
        if origin == me && leader != 0 && leader != me {
            self.shared.waiters.set_forwarded(request_id, leader);
            self.transport.send_frame(
                leader,
                PeerFrame::ForwardConfChange {
                    request_id,
                    change: change.encode(),
                },
            );
            return;
        }
        self.refuse(origin, request_id, NodeError::NoLeader);
    }

    /// Whether a frame from `peer` arrived within the last election timeout: a follower
    /// answers its leader at every heartbeat, so on the leader this tells the members that are
    /// up and reachable from those that are not.
    fn recently_heard_from(&self, peer: u64) -> bool {
        let election_ticks = u64::from(self.shared.config.election_ticks.max(2));
        self.heard_at_tick
            .get(&peer)
            .is_some_and(|&tick| self.ticks.saturating_sub(tick) < election_ticks)
    }

    /// etcd's `isLearnerReady`: a learner is promoted only when its match index is at least 90%
    /// of the leader's (the core's own catch-up gap alone would pass a learner that never
    /// started while the log is short).
    fn check_learner_ready(
        &self,
        purpose: ConfPurpose,
        change: &ConfChange,
    ) -> Result<(), NodeError> {
        if purpose != ConfPurpose::Promote {
            return Ok(());
        }
        let status = self.raft.status();
        let match_of = |id: u64| {
            status
                .progress
                .iter()
                .find(|(member, _)| *member == id)
                .map(|(_, progress)| progress.match_index)
        };
        let leader_match = match_of(self.shared.member_id).unwrap_or(status.last_index);
        for single in &change.changes {
            let learner_match = match_of(single.node).unwrap_or(0);
            if (learner_match as f64) < (leader_match as f64) * LEARNER_READY_SHARE {
                return Err(NodeError::LearnerNotReady);
            }
        }
        Ok(())
    }

    /// Fails one request, on this member or back at its origin.
    fn refuse(&self, origin: u64, request_id: u64, error: NodeError) {
        if request_id == 0 {
            return;
        }
        if origin == self.shared.member_id {
            self.shared.waiters.resolve(request_id, Err(error));
        } else {
            self.transport.send_frame(
                origin,
                PeerFrame::Reject {
                    error: error.wire_code(),
                    request_ids: vec![request_id],
                },
            );
        }
    }

    /// Proposes (leader) or forwards (follower) everything pending, in one batch.
    fn flush_proposals(&mut self) {
        if self.proposals.is_empty() {
            return;
        }
        let proposals = std::mem::take(&mut self.proposals);
        let me = self.shared.member_id;
        if self.soft_state.role == Role::Leader {
            let batch: Vec<Bytes> = proposals.iter().map(|p| p.data.clone()).collect();
            match self.raft.propose_batch(batch) {
                Ok((first_index, _term)) => {
                    for (offset, proposal) in proposals.iter().enumerate() {
                        if proposal.origin == me && proposal.request_id != 0 {
                            self.shared
                                .waiters
                                .set_index(proposal.request_id, first_index + offset as u64);
                        }
                    }
                }
                Err(error) => self.refuse_all(proposals, propose_error(error)),
            }
            return;
        }
        let leader = self.soft_state.leader;
        if leader == 0 || leader == me {
            self.refuse_all(proposals, NodeError::NoLeader);
            return;
        }
        let (local, remote): (Vec<_>, Vec<_>) = proposals.into_iter().partition(|p| p.origin == me);
        // Proposals forwarded to this member by a follower that thought it led: the follower
        // will retry against the real leader.
        self.refuse_all(remote, NodeError::LeaderChanged);
        for proposal in &local {
            if proposal.request_id != 0 {
                self.shared
                    .waiters
                    .set_forwarded(proposal.request_id, leader);
            }
        }
        self.transport.send_frame(
            leader,
            PeerFrame::Forward(local.into_iter().map(|p| p.data).collect()),
        );
    }

    fn refuse_all(&self, proposals: Vec<PendingProposal>, error: NodeError) {
        let me = self.shared.member_id;
        let mut remote: HashMap<u64, Vec<u64>> = HashMap::new();
        for proposal in proposals {
            if proposal.origin == me {
                if proposal.request_id != 0 {
                    self.shared
                        .waiters
                        .resolve(proposal.request_id, Err(error.clone()));
                }
                continue;
            }
            // The request id of a forwarded proposal is inside its envelope.
            match Envelope::decode_origin(&proposal.data) {
                Ok(origin) if origin.request_id != 0 => remote
                    .entry(proposal.origin)
                    .or_default()
                    .push(origin.request_id),
                _ => {}
            }
        }
        for (origin, request_ids) in remote {
            self.transport.send_frame(
                origin,
                PeerFrame::Reject {
                    error: error.wire_code(),
                    request_ids,
                },
            );
        }
    }

    /// One read index for every read that arrived this turn (they share the answer).
    fn flush_reads(&mut self) {
        if self.reads.is_empty() {
            return;
        }
        let reads = std::mem::take(&mut self.reads);
        self.next_read_ctx += 1;
        let ctx = self.next_read_ctx;
        match self.raft.read_index(ctx) {
            Ok(()) => {
                self.read_waiters.insert(ctx, reads);
            }
            Err(error) => {
                let error = match error {
                    ballot_raft::ReadError::NoLeader => NodeError::NoLeader,
                    ballot_raft::ReadError::TooManyPending { .. } => NodeError::TooManyRequests,
                };
                for reply in reads {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }

    async fn handle_ready(&mut self, mut ready: Ready) -> Result<(), DriverError> {
        if let Some(soft_state) = ready.soft_state {
            self.on_soft_state(soft_state);
        }
        self.learn_new_peers(&ready.entries);
        if let Some(state) = ready.hard_state {
            self.publish_commit(state.commit);
        }
        let must_persist = ready.must_persist();
        for message in std::mem::take(&mut ready.messages) {
            self.transport.send_message(message);
        }
        if must_persist || !ready.persisted_messages.is_empty() {
            let completion = match self.write_for(&ready) {
                Some(write) => Some(self.wal.submit(write).await?),
                None => None,
            };
            self.persist
                .send(PersistItem {
                    number: ready.number,
                    completion,
                    messages: ready.persisted_messages,
                })
                .await
                .map_err(|_| DriverError::ChannelClosed("persist"))?;
        }
        if let Some(meta) = ready.snapshot {
            self.apply
                .send(ApplyItem::Snapshot(meta))
                .await
                .map_err(|_| DriverError::ChannelClosed("apply"))?;
        }
        if !ready.committed_entries.is_empty() {
            metrics()
                .proposals_committed
                .add(ready.committed_entries.len() as u64);
            self.apply
                .send(ApplyItem::Entries(ready.committed_entries))
                .await
                .map_err(|_| DriverError::ChannelClosed("apply"))?;
        }
        for read_state in ready.read_states {
            if let Some(replies) = self.read_waiters.remove(&read_state.ctx) {
                for reply in replies {
                    let _ = reply.send(Ok(read_state.index));
                }
            }
        }
        Ok(())
    }

    /// What to make durable for `ready`, or `None` when nothing needs a disk write.
    ///
    /// A hard state that changes only the commit index is not written on its own: term and vote
    /// are what must be durable before a vote or an acknowledgement leaves (Raft paper figure 2),
    /// while the commit index is a restart hint the leader re-sends anyway (etcd's `MustSync`
    /// skips the fsync for the same reason). Written alone it would cost an fsync per commit on
    /// every member, and the next entries would queue behind it; instead it rides along with the
    /// next write that has to happen. The Ready still goes through the persist task, so it is
    /// reported persisted only after every earlier write is durable.
    fn write_for(&mut self, ready: &Ready) -> Option<Write> {
        let commit_only = ready.snapshot.is_none()
            && ready.entries.is_empty()
            && ready
                .hard_state
                .is_some_and(|state| (state.term, state.vote) == self.durable_term_vote);
        if commit_only {
            self.pending_hard_state = ready.hard_state;
            return None;
        }
        if !ready.must_persist() {
            return None;
        }
        let hard_state = ready.hard_state.or(self.pending_hard_state.take());
        if let Some(state) = hard_state {
            self.pending_hard_state = None;
            self.durable_term_vote = (state.term, state.vote);
        }
        Some(Write {
            snapshot: ready.snapshot.as_ref().map(snapshot_marker),
            entries: ready.entries.iter().map(entry_to_wal).collect(),
            hard_state: hard_state.as_ref().map(hard_state_to_wal),
        })
    }

    /// A configuration change takes effect when appended, so Raft may message a new member
    /// before the change is applied: learn its address from the change's context now.
    fn learn_new_peers(&mut self, entries: &[ballot_raft::Entry]) {
        for entry in entries.iter().filter(|e| e.kind == EntryKind::ConfChange) {
            self.last_conf_index = self.last_conf_index.max(entry.index);
            let Ok(change) = ConfChange::decode(&entry.data) else {
                continue;
            };
            let Ok(context) = ConfContext::decode(&change.context) else {
                continue;
            };
            let Some(record) = context.record else {
                continue;
            };
            for single in &change.changes {
                if single.kind != ConfChangeKind::Remove && single.node == record.id {
                    self.transport.set_peer(record.id, record.peer_urls.clone());
                }
            }
        }
    }

    fn on_soft_state(&mut self, soft_state: SoftState) {
        let previous = self.soft_state;
        self.soft_state = soft_state;
        if previous.leader != soft_state.leader {
            tracing::info!(
                leader = %format_args!("{:x}", soft_state.leader),
                role = ?soft_state.role,
                "leader changed"
            );
            self.shared.metrics_leader_changes();
            // Reads waiting for an answer from the old leader will never get one.
            for (_, replies) in self.read_waiters.drain() {
                for reply in replies {
                    let _ = reply.send(Err(NodeError::LeaderChanged));
                }
            }
            self.shared.waiters.fail_forwarded_except(soft_state.leader);
            // Deferred membership changes follow leadership: forwarded to the new leader, or
            // refused back to their origin.
            self.retry_deferred_conf_changes();
        }
    }

    /// Makes a new commit index visible before any message carrying it leaves: a follower may
    /// apply an entry and acknowledge it to its client as soon as it learns the entry is
    /// committed, and a request that then reaches the leader and waits for "everything
    /// committed" to be applied (TimeToLive with keys) must wait for that entry too. The rest of
    /// the view follows after the Ready is handled, which may wait on a full apply queue.
    fn publish_commit(&self, commit: u64) {
        self.shared.view.send_if_modified(|current| {
            if current.commit >= commit {
                return false;
            }
            current.commit = commit;
            true
        });
    }

    fn publish_view(&self) {
        let view = RaftView::from_status(&self.raft.status(), self.shared.member_id);
        self.shared.view.send_if_modified(|current| {
            if *current == view {
                return false;
            }
            *current = view;
            true
        });
    }
}

/// etcd's membership checks (`ValidateConfigurationChange`), against the applied registry.
/// Returns the change's purpose.
fn validate_conf_change(
    registry: &Registry,
    change: &ConfChange,
) -> Result<ConfPurpose, NodeError> {
    let context = ConfContext::decode(&change.context).map_err(|_| NodeError::MemberBadUrls)?;
    for single in &change.changes {
        let existing = registry.get(single.node);
        match context.purpose {
            ConfPurpose::Bootstrap => {}
            ConfPurpose::Add => {
                // Any owner counts, even one with the same ID: two adds of the same URLs within
                // one second derive the same ID, and "Peer URLs already exists" says why.
                let urls_taken = context
                    .record
                    .as_ref()
                    .is_some_and(|record| registry.peer_url_owner(&record.peer_urls, 0).is_some());
                if urls_taken {
                    return Err(NodeError::MemberExists);
                }
                if existing.is_some() {
                    return Err(NodeError::MemberIdExists);
                }
                if single.kind == ConfChangeKind::AddLearner
                    && registry.records().any(|member| member.is_learner)
                {
                    return Err(NodeError::TooManyLearners);
                }
            }
            ConfPurpose::Promote => match existing {
                None => return Err(NodeError::MemberNotFound),
                Some(member) if !member.is_learner => return Err(NodeError::MemberNotLearner),
                Some(_) => {}
            },
            ConfPurpose::Remove if existing.is_none() => return Err(NodeError::MemberNotFound),
            ConfPurpose::Remove => {}
        }
    }
    Ok(context.purpose)
}

/// etcd's `--strict-reconfig-check` (on by default): refuses a membership change that would
/// leave the cluster without a working quorum, before it is proposed (a change takes effect
/// when appended and cannot be taken back). `active` tells the voters this leader hears from;
/// a member is started once it has published its name. As etcd's `mayAddMember`,
/// `mayRemoveMember` and `mayPromoteMember`:
///
/// - adding a voter needs a quorum of the new voter set to be started (or one started member
///   of two: growing a one-member cluster), and any add needs every voter to be active;
/// - removing a voter needs a quorum of the remaining voters to be started, and, unless the
///   member removed is already down, enough active voters to still form a quorum without it;
/// - promoting a learner needs a quorum of the new voter set, the learner included, started.
fn check_reconfig_keeps_quorum(
    registry: &Registry,
    me: u64,
    purpose: ConfPurpose,
    change: &ConfChange,
    active: impl Fn(u64) -> bool,
) -> Result<(), NodeError> {
    let voters: Vec<&MemberRecord> = registry.records().filter(|m| !m.is_learner).collect();
    let is_started = |member: &&&MemberRecord| !member.name.is_empty();
    let is_active = |member: &&&MemberRecord| member.id == me || active(member.id);
    let quorum = |members: usize| members / 2 + 1;
    for single in &change.changes {
        match purpose {
            ConfPurpose::Bootstrap => {}
            ConfPurpose::Add => {
                if single.kind == ConfChangeKind::AddVoter {
                    let members = voters.len() + 1;
                    let started = voters.iter().filter(is_started).count();
                    let growing_from_one = started == 1 && members == 2;
                    if !growing_from_one && started < quorum(members) {
                        return Err(NodeError::NotEnoughStartedMembers);
                    }
                }
                if !voters.iter().all(|member| is_active(&member)) {
                    return Err(NodeError::Unhealthy);
                }
            }
            ConfPurpose::Remove => {
                if registry
                    .get(single.node)
                    .is_some_and(|member| member.is_learner)
                {
                    continue;
                }
                let remaining = voters.iter().filter(|member| member.id != single.node);
                let started = remaining.clone().filter(is_started).count();
                if started < quorum(remaining.count()) {
                    return Err(NodeError::NotEnoughStartedMembers);
                }
                // A member that is down is not part of the working quorum: removing it is safe.
                if single.node != me && !active(single.node) {
                    continue;
                }
                let active_voters = voters.iter().filter(is_active).count();
                if active_voters.saturating_sub(1) < 1 + voters.len().saturating_sub(1) / 2 {
                    return Err(NodeError::Unhealthy);
                }
            }
            ConfPurpose::Promote => {
                let members = voters.len() + 1;
                let started = voters.iter().filter(is_started).count() + 1;
                if started < quorum(members) {
                    return Err(NodeError::NotEnoughStartedMembers);
                }
            }
        }
    }
    Ok(())
}

/// etcd promotes a learner only once its log matches at least this share of the leader's
/// (`readyPercent` in etcd's `isLearnerReady`).
const LEARNER_READY_SHARE: f64 = 0.9;

/// The etcd error for a proposal the core refused.
pub fn propose_error(error: ProposeError) -> NodeError {
    match error {
        ProposeError::NotLeader { leader: None } => NodeError::NoLeader,
        ProposeError::NotLeader { leader: Some(_) } => NodeError::LeaderChanged,
        ProposeError::TooLarge { .. } => NodeError::RequestTooLarge,
        ProposeError::UncommittedFull { .. } => NodeError::TooManyRequests,
        ProposeError::TransferInProgress { .. } => NodeError::LeaderChanged,
        // etcd's Raft drops such a proposal and the client times out; say so at once.
        ProposeError::ConfChangePending | ProposeError::LeaderTermNotCommitted => {
            NodeError::Timeout
        }
        ProposeError::LearnerNotCaughtUp { .. } => NodeError::LearnerNotReady,
        ProposeError::InvalidConfChange(error) => NodeError::InvalidConfChange(error.to_string()),
        ProposeError::Removed => NodeError::Stopped,
        ProposeError::EmptyBatch => NodeError::Timeout,
    }
}

#[cfg(test)]
mod tests {
    use ballot_raft::{ConfChangeSingle, ConfChangeTransition};

    use super::*;

    /// Members 1..=n, voters unless listed in `learners`, started unless in `unstarted`.
    fn registry(n: u64, learners: &[u64], unstarted: &[u64]) -> Registry {
        Registry::from_records((1..=n).map(|id| MemberRecord {
            id,
            name: if unstarted.contains(&id) {
                String::new()
            } else {
                format!("m{id}")
            },
            peer_urls: vec![format!("http://127.0.0.1:{}", 2380 + id)],
            client_urls: Vec::new(),
            is_learner: learners.contains(&id),
        }))
    }

    fn change(kind: ConfChangeKind, node: u64) -> ConfChange {
        ConfChange {
            transition: ConfChangeTransition::Auto,
            changes: vec![ConfChangeSingle { kind, node }],
            context: Bytes::new(),
        }
    }

    /// The check as the leader (member 1) runs it, with `down` the members it does not hear.
    fn check(
        registry: &Registry,
        purpose: ConfPurpose,
        kind: ConfChangeKind,
        node: u64,
        down: &[u64],
    ) -> Result<(), NodeError> {
        check_reconfig_keeps_quorum(registry, 1, purpose, &change(kind, node), |id| {
            !down.contains(&id)
        })
    }

    use ConfChangeKind::{AddLearner, AddVoter, Remove};
    use ConfPurpose::{Add, Promote};

    #[test]
    fn adding_needs_every_voter_active_and_a_started_quorum() {
        let healthy = registry(3, &[], &[]);
        assert_eq!(check(&healthy, Add, AddVoter, 9, &[]), Ok(()));
        assert_eq!(check(&healthy, Add, AddLearner, 9, &[]), Ok(()));
        // One voter down: a fourth voter would need three of four, with two up.
        assert_eq!(
            check(&healthy, Add, AddVoter, 9, &[3]),
            Err(NodeError::Unhealthy)
        );
        // etcd refuses learners too while a voter is unreachable; a learner down does not count.
        assert_eq!(
            check(&healthy, Add, AddLearner, 9, &[3]),
            Err(NodeError::Unhealthy)
        );
        let with_learner = registry(4, &[4], &[]);
        assert_eq!(check(&with_learner, Add, AddVoter, 9, &[4]), Ok(()));
        // Two of five would be started: no quorum of the new set.
        let two_unstarted = registry(4, &[], &[3, 4]);
        assert_eq!(
            check(&two_unstarted, Add, AddVoter, 9, &[]),
            Err(NodeError::NotEnoughStartedMembers)
        );
        assert_eq!(check(&two_unstarted, Add, AddLearner, 9, &[]), Ok(()));
        // Growing a one-member cluster: one started member of two is enough.
        assert_eq!(check(&registry(1, &[], &[]), Add, AddVoter, 9, &[]), Ok(()));
        assert_eq!(
            check(&registry(2, &[], &[2]), Add, AddVoter, 9, &[]),
            Err(NodeError::NotEnoughStartedMembers)
        );
    }

    #[test]
    fn removing_keeps_a_working_quorum_without_the_member() {
        let healthy = registry(3, &[], &[]);
        assert_eq!(check(&healthy, ConfPurpose::Remove, Remove, 2, &[]), Ok(()));
        // Removing the leader itself, all up: two remain active.
        assert_eq!(check(&healthy, ConfPurpose::Remove, Remove, 1, &[]), Ok(()));
        // A member already down is safe to remove.
        assert_eq!(
            check(&healthy, ConfPurpose::Remove, Remove, 3, &[3]),
            Ok(())
        );
        // With one down, removing a live member would leave one working voter of two.
        assert_eq!(
            check(&healthy, ConfPurpose::Remove, Remove, 2, &[3]),
            Err(NodeError::Unhealthy)
        );
        assert_eq!(
            check(&healthy, ConfPurpose::Remove, Remove, 1, &[3]),
            Err(NodeError::Unhealthy)
        );
        // Learners never matter for the quorum.
        let with_learner = registry(4, &[4], &[]);
        assert_eq!(
            check(&with_learner, ConfPurpose::Remove, Remove, 4, &[2, 3]),
            Ok(())
        );
        // The rest must have a started quorum: removing 2 leaves 1 and 3, one of them started.
        let unstarted = registry(3, &[], &[3]);
        assert_eq!(
            check(&unstarted, ConfPurpose::Remove, Remove, 2, &[]),
            Err(NodeError::NotEnoughStartedMembers)
        );
        assert_eq!(
            check(&unstarted, ConfPurpose::Remove, Remove, 3, &[3]),
            Ok(())
        );
    }

    #[test]
    fn promoting_counts_the_learner_as_started() {
        assert_eq!(
            check(&registry(3, &[3], &[]), Promote, AddVoter, 3, &[]),
            Ok(())
        );
        // Voters 1 and 2 (2 unstarted) plus the learner: two of three started.
        assert_eq!(
            check(&registry(3, &[3], &[2]), Promote, AddVoter, 3, &[]),
            Ok(())
        );
        // Voters 1, 2, 3 (2 and 3 unstarted) plus the learner: two of four started.
        assert_eq!(
            check(&registry(4, &[4], &[2, 3]), Promote, AddVoter, 4, &[]),
            Err(NodeError::NotEnoughStartedMembers)
        );
    }

    #[test]
    fn the_refusals_travel_back_to_a_forwarding_member() {
        for error in [NodeError::Unhealthy, NodeError::NotEnoughStartedMembers] {
            assert_eq!(NodeError::from_wire_code(error.wire_code()), error);
        }
        assert_eq!(NodeError::Unhealthy.grpc_code(), tonic::Code::Unavailable);
        assert_eq!(
            NodeError::NotEnoughStartedMembers.grpc_code(),
            tonic::Code::FailedPrecondition
        );
    }
}
