//! The node: drives the Raft core, persists through the WAL, applies committed entries to the
//! MVCC store, and answers the API layer through [`NodeHandle`].
//!
//! Tasks (see `docs/server.md`): the Raft driver ([`driver`]), the persist task (waits for WAL
//! durability, then releases the messages that promise it), the apply task ([`apply`]), the
//! leader's lease expiry ([`lease`]), the snapshot pruning task ([`snapshot_pruning`]: old
//! snapshot files go only once a newer marker is durable) and the attribute publisher (a member
//! announces its name and client URLs through the log after it starts, as etcd does).

pub mod alarms;
mod apply;
pub mod auto_compaction;
mod compaction_hashes;
mod db_size;
mod driver;
pub mod envelope;
mod error;
pub mod force_new;
mod lease;
pub mod members;
mod snapshot_pruning;
mod waiters;
pub mod wire;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use ballot_mvcc::{ApplyOutcome, Command, Store, StoreConfig, WatchHub};
use ballot_proto::etcdserverpb::{
    AlarmMember, AlarmType, LeaseTimeToLiveResponse, ResponseHeader, alarm_request::AlarmAction,
};
use ballot_raft::{
    ConfChange, ConfChangeKind, ConfChangeSingle, ConfChangeTransition, EntryKind, RaftNode, Role,
};
use ballot_wal::{GroupCommitWal, RealDisk, SnapshotStore};
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::config::HttpUrl;
use crate::metrics::metrics;
use crate::storage::{self, Opened};
use crate::transport::{ClusterInfoSource, PeerFrame, PeerInput, Transport};
use alarms::{AlarmChange, Alarms};
use driver::{Driver, DriverRequest, PersistItem};
use envelope::{Body, ConfContext, ConfPurpose, Envelope, Origin};
use members::{MemberRecord, Registry};
use waiters::{AppliedResult, PeerRequests, Waiters};

pub use ballot_proto::etcdserverpb::Member;
pub use error::NodeError;

/// Requests waiting for the driver; beyond it callers wait (back-pressure).
const REQUEST_QUEUE_DEPTH: usize = 16 * 1024;
/// Batches waiting for the apply task.
const APPLY_QUEUE_DEPTH: usize = 256;
/// Defragment requests waiting for the apply task.
const DEFRAG_QUEUE_DEPTH: usize = 16;
/// Readys waiting for durability.
const PERSIST_QUEUE_DEPTH: usize = 4096;
/// Peer frames waiting for the driver.
pub const PEER_INPUT_DEPTH: usize = 4096;
/// etcd refuses new proposals while this many committed entries wait to be applied
/// (`maxGapBetweenApplyAndCommitIndex`).
const APPLY_GAP_MAX: u64 = 5000;
/// Proposals waiting for an answer on this member, at most.
const WAITERS_MAX: usize = 100_000;

/// How the node runs; derived from [`crate::config::ServerConfig`] plus the IDs the cluster
/// assigned.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub name: String,
    pub member_id: u64,
    pub cluster_id: u64,
    pub cluster_token: String,
    pub client_urls: Vec<String>,
    pub peer_urls: Vec<String>,
    pub heartbeat_interval: Duration,
    pub election_timeout: Duration,
    pub election_ticks: u32,
    pub snapshot_count: u64,
    /// Entries kept behind a snapshot for followers that are only a little behind.
    pub snapshot_catchup_entries: u64,
    pub max_request_bytes: u64,
    /// How long a proposal or read may take before it fails (etcd: 5 s + 2 election timeouts).
    pub request_timeout: Duration,
    pub store_config: StoreConfig,
    /// The leader's own compaction (`--auto-compaction-*`), and its check interval.
    pub auto_compaction: Option<(auto_compaction::AutoCompaction, Duration)>,
    /// `--quota-backend-bytes`: writes that would take `dbSize` past this are refused with
    /// etcd's NOSPACE error; `None` for no limit.
    pub quota_bytes: Option<u64>,
    /// `--strict-reconfig-check`: membership changes that would leave no working quorum are
    /// refused before they are proposed.
    pub strict_reconfig_check: bool,
    /// `--pre-vote`: the core asks for pre-votes before an election.
    pub pre_vote: bool,
    /// `--initial-election-tick-advance`: see [`driver::Driver`]'s `tick_advance_pending`.
    pub initial_election_tick_advance: bool,
    /// `--experimental-warning-apply-duration`: an entry that takes longer to apply is logged
    /// and counted (`etcd_server_slow_apply_total`).
    pub warning_apply_duration: Duration,
    /// `--experimental-enable-lease-checkpoint`: how often the leader checkpoints long leases'
    /// remaining TTLs; `None`: never.
    pub lease_checkpoint_interval: Option<Duration>,
}

/// The core's view as last published by the driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaftView {
    pub term: u64,
    pub leader: u64,
    pub role: Role,
    pub commit: u64,
    pub last_index: u64,
    pub first_index: u64,
    pub is_learner: bool,
    pub is_member: bool,
    pub voters: Vec<u64>,
}

impl RaftView {
    fn from_status(status: &ballot_raft::Status, me: u64) -> RaftView {
        RaftView {
            term: status.term,
            leader: status.leader,
            role: status.role,
            commit: status.commit,
            last_index: status.last_index,
            first_index: status.first_index,
            is_learner: status.conf.is_learner(me),
            is_member: status.conf.contains(me),
            voters: status.conf.voters.clone(),
        }
    }
}

/// A point-in-time view of this member, for Maintenance.Status, `/metrics` and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeStatus {
    pub member_id: u64,
    /// The known leader, 0 for none.
    pub leader_id: u64,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    /// The last index in this member's log (etcd's `raftIndex`).
    pub last_index: u64,
    pub is_learner: bool,
    /// The latest snapshot's data plus the payload of the entries applied since, in bytes (the
    /// closest thing to etcd's `dbSize`: the state lives in memory and on disk as snapshot plus
    /// log; see `db_size.rs`). Never zero.
    pub db_size_bytes: u64,
    /// Leader changes this member has seen since it started.
    pub leader_changes: u64,
    /// The raised alarms ([`NodeHandle::alarms`]).
    pub alarms: Vec<AlarmMember>,
}

/// What the node's tasks and handles share.
pub(crate) struct NodeShared {
    member_id: u64,
    cluster_id: u64,
    config: NodeConfig,
    store: Arc<RwLock<Store>>,
    registry: RwLock<Registry>,
    watch_hub: WatchHub,
    view: watch::Sender<RaftView>,
    applied: watch::Sender<u64>,
    requests: mpsc::Sender<DriverRequest>,
    waiters: Waiters,
    peer_requests: PeerRequests,
    leases: Mutex<lease::LeaseKeeper>,
    transport: Transport,
    wal: GroupCommitWal,
    /// True while the WAL's disk is full ([`GroupCommitWal::no_space`]).
    no_space: watch::Receiver<bool>,
    snapshots: SnapshotStore<RealDisk>,
    snapshot_in_progress: AtomicBool,
    /// Notified when a snapshot task ends (see `snapshot_in_progress`).
    snapshot_done: tokio::sync::Notify,
    /// The index of the newest snapshot written or installed.
    snapshot_index: AtomicU64,
    /// The cluster's alarms, replicated: changed only by the apply task ([`alarms`]).
    alarms: RwLock<Alarms>,
    /// This member's hashes of its last compactions ([`compaction_hashes`]).
    compaction_hashes: Mutex<compaction_hashes::CompactionHashes>,
    /// A proposal raising this member's NOSPACE alarm is in flight (one at a time).
    raising_nospace: AtomicBool,
    /// Defragment requests for the apply task, which takes a snapshot now for each.
    defrag: mpsc::Sender<apply::DefragReply>,
    removed: AtomicBool,
    db_size: db_size::DbSize,
    leader_changes: AtomicU64,
    next_request_id: AtomicU64,
    /// Set to ask every task to stop.
    stop: watch::Sender<bool>,
    /// Why the node failed, once it has.
    failure: Mutex<Option<String>>,
    started: Instant,
}

pub(crate) fn lock_read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn lock_write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

/// What a command adds to `dbSize` as etcd's quota counts it: a put's key and value plus a fixed
/// overhead per key (etcd's `kvOverhead`), a lease grant's overhead; 0 for what does not grow
/// the store (reads, deletes, compactions, revokes), which stay allowed over the quota so that
/// space can be freed.
pub(super) fn quota_cost(command: &Command) -> u64 {
    const KV_OVERHEAD: u64 = 256;
    const LEASE_OVERHEAD: u64 = 64;
    fn put_cost(put: &ballot_proto::etcdserverpb::PutRequest) -> u64 {
        put.key.len() as u64 + put.value.len() as u64 + KV_OVERHEAD
    }
    fn txn_cost(txn: &ballot_proto::etcdserverpb::TxnRequest) -> u64 {
        use ballot_proto::etcdserverpb::request_op::Request;
        let branch = |ops: &[ballot_proto::etcdserverpb::RequestOp]| -> u64 {
            ops.iter()
                .map(|op| match &op.request {
                    Some(Request::RequestPut(put)) => put_cost(put),
                    Some(Request::RequestTxn(txn)) => txn_cost(txn),
                    _ => 0,
                })
                .sum()
        };
        branch(&txn.success).max(branch(&txn.failure))
    }
    match command {
        Command::Put(put) => put_cost(put),
        Command::Txn(txn) => txn_cost(txn),
        Command::LeaseGrant { .. } => LEASE_OVERHEAD,
        _ => 0,
    }
}

impl NodeShared {
    /// Whether a write that grows the state by `cost` would take `dbSize` past
    /// `--quota-backend-bytes` (etcd's `backendQuota.Available`, negated).
    fn over_quota(&self, cost: u64) -> bool {
        self.config
            .quota_bytes
            .is_some_and(|quota| self.db_size.bytes().saturating_add(cost) > quota)
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn lock_leases(&self) -> MutexGuard<'_, lease::LeaseKeeper> {
        self.leases.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn compaction_hashes(&self) -> MutexGuard<'_, compaction_hashes::CompactionHashes> {
        self.compaction_hashes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn next_request_id(&self) -> u64 {
        self.next_request_id.fetch_add(1, Ordering::Relaxed)
    }

    fn metrics_leader_changes(&self) {
        self.leader_changes.fetch_add(1, Ordering::Relaxed);
        metrics().leader_changes.inc();
    }

    fn is_stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// Waits until this member has applied every entry it knew to be committed when called
    /// (bounded by the request timeout).
    async fn apply_committed(&self) -> Result<(), NodeError> {
        let commit = self.view.borrow().commit;
        let mut applied = self.applied.subscribe();
        let caught_up = applied.wait_for(|applied| *applied >= commit);
        match tokio::time::timeout(self.config.request_timeout, caught_up).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(NodeError::Stopped),
            Err(_) => Err(NodeError::Timeout),
        }
    }

    fn request_stop(&self) {
        self.stop.send_replace(true);
    }

    /// Records a fatal error and stops the node.
    fn fail(&self, reason: String) {
        if self.is_stopped() {
            // A task that lost its peer tasks during a requested stop (a signal, this member's
            // removal) is not a failure.
            tracing::debug!(%reason, "task ended during shutdown");
            return;
        }
        tracing::error!(%reason, "the node is stopping after a fatal error");
        let mut failure = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
        failure.get_or_insert(reason);
        drop(failure);
        self.waiters.fail_all(&NodeError::Stopped);
        self.request_stop();
    }

    /// Replaces the registry (after installing a snapshot) and the transport's peers with it.
    fn install_registry(&self, registry: Registry) {
        let old: Vec<u64> = lock_read(&self.registry).records().map(|m| m.id).collect();
        for id in old {
            if !registry.contains(id) {
                self.transport.remove_peer(id);
            }
        }
        for member in registry.records() {
            self.transport.set_peer(member.id, member.peer_urls.clone());
        }
        *lock_write(&self.registry) = registry;
    }

    /// Proposes a command nobody waits for (lease revokes decided by the leader).
    async fn propose_detached(&self, command: Command) {
        let origin = Origin {
            member_id: self.member_id,
            request_id: 0,
        };
        let data = Envelope::encode_command(origin, &command);
        let _ = self
            .requests
            .send(DriverRequest::Propose {
                request_id: 0,
                data,
            })
            .await;
    }
}

impl ClusterInfoSource for NodeShared {
    fn cluster_info(&self) -> (u64, Registry) {
        (self.cluster_id, lock_read(&self.registry).clone())
    }
}

/// The API layer's handle on the node. Cheap to clone.
#[derive(Clone)]
pub struct NodeHandle {
    shared: Arc<NodeShared>,
}

impl std::fmt::Debug for NodeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeHandle")
            .field("member_id", &format_args!("{:x}", self.shared.member_id))
            .finish()
    }
}

impl NodeHandle {
    pub fn member_id(&self) -> u64 {
        self.shared.member_id
    }

    pub fn cluster_id(&self) -> u64 {
        self.shared.cluster_id
    }

    /// The configured largest client request, in bytes.
    pub fn max_request_bytes(&self) -> u64 {
        self.shared.config.max_request_bytes
    }

    /// The configured request timeout.
    pub fn request_timeout(&self) -> Duration {
        self.shared.config.request_timeout
    }

    /// Header with cluster_id, member_id, raft_term (current term), revision (the given one).
    pub fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.shared.cluster_id,
            member_id: self.shared.member_id,
            revision,
            raft_term: self.shared.view.borrow().term,
        }
    }

    /// The known leader (0: none).
    pub fn leader_id(&self) -> u64 {
        self.shared.view.borrow().leader
    }

    pub fn is_leader(&self) -> bool {
        self.shared.view.borrow().role == Role::Leader
    }

    /// Fails fast when the node cannot take a request now.
    fn check_ready(&self) -> Result<(), NodeError> {
        if self.shared.is_stopped() {
            return Err(NodeError::Stopped);
        }
        if *self.shared.no_space.borrow() {
            return Err(NodeError::NoSpace);
        }
        let view = self.shared.view.borrow();
        if view.leader == 0 {
            return Err(NodeError::NoLeader);
        }
        let applied = *self.shared.applied.borrow();
        if view.commit > applied + APPLY_GAP_MAX {
            return Err(NodeError::TooManyRequests);
        }
        Ok(())
    }

    /// Replicates a command and returns its apply result (proposed here on the leader, forwarded
    /// to the leader from a follower). Fails fast with [`NodeError::NoLeader`] when no leader is
    /// known, and with [`NodeError::Timeout`] / [`NodeError::LeaderChanged`] when the command is
    /// not applied within the request timeout.
    ///
    /// A `LeaseGrant` with ID 0 gets a fresh ID here, before replication, so every replica
    /// applies the same one.
    pub async fn propose(&self, command: Command) -> Result<ApplyOutcome, NodeError> {
        // etcd's quota: a write that would take this member's `dbSize` past the quota is
        // refused and raises this member's NOSPACE alarm. While any member's alarm is up, what
        // grows the state is refused where it is applied, on every member at the same place in
        // the log; refusing it here from this member's applied alarms could go by an alarm
        // that a disarm committed before this request arrived has already lifted.
        let cost = quota_cost(&command);
        if cost > 0 && self.shared.over_quota(cost) {
            self.raise_nospace().await;
            return Err(NodeError::NoSpace);
        }
        let command = match command {
            Command::LeaseGrant { id: 0, ttl_secs } => Command::LeaseGrant {
                id: self.fresh_lease_id(),
                ttl_secs,
            },
            command => command,
        };
        match Self::counted(
            self.propose_encoded(|origin| Envelope::encode_command(origin, &command)),
        )
        .await?
        {
            AppliedResult::Command(ApplyOutcome::Error(error)) => Err(NodeError::Mvcc(error)),
            AppliedResult::Command(outcome) => Ok(outcome),
            AppliedResult::Members(_) | AppliedResult::Alarms(_) => Err(NodeError::Timeout),
        }
    }

    async fn propose_body(&self, body: Body) -> Result<AppliedResult, NodeError> {
        self.propose_encoded(|origin| Envelope { origin, body }.encode())
            .await
    }

    /// Proposes the envelope `encode` builds for this request's origin, and waits for it.
    async fn propose_encoded(
        &self,
        encode: impl FnOnce(Origin) -> Bytes,
    ) -> Result<AppliedResult, NodeError> {
        self.check_ready()?;
        if self.shared.waiters.len() >= WAITERS_MAX {
            return Err(NodeError::TooManyRequests);
        }
        let request_id = self.shared.next_request_id();
        let data = encode(Origin {
            member_id: self.shared.member_id,
            request_id,
        });
        if data.len() as u64 > self.shared.config.max_request_bytes + 1024 {
            return Err(NodeError::RequestTooLarge);
        }
        let waiter = self.shared.waiters.register(request_id);
        self.submit_and_wait(
            request_id,
            DriverRequest::Propose { request_id, data },
            waiter,
        )
        .await
    }

    /// Counts a proposal in flight for `/metrics` and its failure, if it fails.
    async fn counted<T>(
        future: impl std::future::Future<Output = Result<T, NodeError>>,
    ) -> Result<T, NodeError> {
        metrics().proposals_pending.inc();
        let result = future.await;
        metrics().proposals_pending.dec();
        if result.is_err() {
            metrics().proposals_failed.inc();
        }
        result
    }

    async fn submit_and_wait(
        &self,
        request_id: u64,
        request: DriverRequest,
        waiter: tokio::sync::oneshot::Receiver<waiters::ProposalResult>,
    ) -> Result<AppliedResult, NodeError> {
        let term = self.shared.view.borrow().term;
        if self.shared.requests.send(request).await.is_err() {
            self.shared.waiters.cancel(request_id);
            return Err(NodeError::Stopped);
        }
        match tokio::time::timeout(self.shared.config.request_timeout, waiter).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(NodeError::Stopped),
            Err(_) => {
                self.shared.waiters.cancel(request_id);
                if self.shared.view.borrow().term != term {
                    Err(NodeError::LeaderChanged)
                } else {
                    Err(NodeError::Timeout)
                }
            }
        }
    }

    /// A lease ID no other member picks: the low bits of this member's ID above a clock-based
    /// counter, positive as etcd's IDs are.
    fn fresh_lease_id(&self) -> i64 {
        let member_bits = (self.shared.member_id & 0x7fff) << 48;
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_millis() as u64);
        let sequence = self.shared.next_request_id() & 0xff;
        let low = ((unix_ms << 8) | sequence) & ((1 << 48) - 1);
        ((member_bits | low) as i64).max(1)
    }

    /// Linearizable barrier: returns once this member's applied state reflects every write
    /// committed before the call (ReadIndex, Raft thesis §6.4).
    pub async fn read_barrier(&self) -> Result<(), NodeError> {
        if self.shared.is_stopped() {
            return Err(NodeError::Stopped);
        }
        if self.shared.view.borrow().leader == 0 {
            return Err(NodeError::NoLeader);
        }
        let deadline = tokio::time::Instant::now() + self.shared.config.request_timeout;
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.shared
            .requests
            .send(DriverRequest::ReadIndex { reply })
            .await
            .map_err(|_| NodeError::Stopped)?;
        let index = match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(result)) => result?,
            Ok(Err(_)) => return Err(NodeError::Stopped),
            Err(_) => return Err(NodeError::Timeout),
        };
        self.wait_applied(index, deadline).await
    }

    async fn wait_applied(
        &self,
        index: u64,
        deadline: tokio::time::Instant,
    ) -> Result<(), NodeError> {
        let mut applied = self.shared.applied.subscribe();
        match tokio::time::timeout_at(deadline, applied.wait_for(|applied| *applied >= index)).await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(NodeError::Stopped),
            Err(_) => Err(NodeError::Timeout),
        }
    }

    /// Serializable access to the local store. Keep `f` short: apply waits while it runs.
    pub fn with_store<R>(&self, f: impl FnOnce(&Store) -> R) -> R {
        f(&lock_read(&self.shared.store))
    }

    /// This member's hash of its compaction to `revision`, if it keeps one
    /// ([`compaction_hashes`]).
    pub fn compaction_hash(&self, revision: i64) -> Option<ballot_mvcc::HashKv> {
        self.shared.compaction_hashes().at(revision)
    }

    /// This member's hashes of its compactions after `revision`, newest first.
    pub fn compaction_hashes_after(&self, revision: i64) -> Vec<ballot_mvcc::HashKv> {
        self.shared.compaction_hashes().newer_than(revision)
    }

    pub fn watch_hub(&self) -> &WatchHub {
        &self.shared.watch_hub
    }

    /// Renews a lease on the leader (forwarded there from a follower); answers the TTL, or 0
    /// when the lease is unknown or expired, as etcd does.
    pub async fn lease_keep_alive(&self, id: i64) -> Result<i64, NodeError> {
        self.check_ready()?;
        match self
            .forward_to_leader(lease::OP_KEEP_ALIVE, id, false)
            .await?
        {
            Some(payload) => lease::decode_keep_alive(&payload),
            None => lease::keep_alive_on_leader(&self.shared, id).await,
        }
    }

    /// etcd `LeaseTimeToLive`, answered by the leader (it alone times leases); `ttl` is -1 for
    /// an unknown lease.
    pub async fn lease_time_to_live(
        &self,
        id: i64,
        keys: bool,
    ) -> Result<LeaseTimeToLiveResponse, NodeError> {
        self.check_ready()?;
        let mut response = match self
            .forward_to_leader(lease::OP_TIME_TO_LIVE, id, keys)
            .await?
        {
            Some(payload) => lease::decode_time_to_live(&payload)?,
            None => lease::time_to_live_on_leader(&self.shared, id, keys).await?,
        };
        let revision = response.header.as_ref().map_or(0, |header| header.revision);
        response.header = Some(self.header(revision));
        Ok(response)
    }

    /// The leader's answer to a lease request, asked again of each new leader until one
    /// answers (within the request timeout); `None` once this member leads, which answers
    /// itself.
    async fn forward_to_leader(
        &self,
        op: u8,
        lease_id: i64,
        keys: bool,
    ) -> Result<Option<Bytes>, NodeError> {
        let deadline = tokio::time::Instant::now() + self.shared.config.request_timeout;
        while !self.is_leader() {
            if let Some(payload) = self.ask_leader(op, lease_id, keys, deadline).await? {
                return Ok(Some(payload));
            }
        }
        Ok(None)
    }

    /// Sends a lease request to the leader over the peer transport and waits for its answer,
    /// until `deadline`.
    ///
    /// `None` when the leader changed while waiting: the one asked may be gone and its answer
    /// never come, so the caller asks again where leases are now timed (as etcd retries a
    /// forwarded lease request on a leader change). Keep-alives and TimeToLive may be asked
    /// twice. With no leader when asked, fails at once ("etcdserver: no leader").
    async fn ask_leader(
        &self,
        op: u8,
        lease_id: i64,
        keys: bool,
        deadline: tokio::time::Instant,
    ) -> Result<Option<Bytes>, NodeError> {
        let mut view = self.shared.view.subscribe();
        let leader = view.borrow_and_update().leader;
        if leader == 0 {
            return Err(NodeError::NoLeader);
        }
        let request_id = self.shared.next_request_id();
        let mut answer = self.shared.peer_requests.register(request_id);
        self.shared.transport.send_frame(
            leader,
            PeerFrame::LeaseRequest {
                request_id,
                op,
                lease_id,
                keys,
            },
        );
        let mut leader_lost = false;
        loop {
            tokio::select! {
                result = &mut answer => {
                    return match result {
                        Ok(result) => result.map(Some),
                        Err(_) => Err(NodeError::Stopped),
                    };
                }
                _ = tokio::time::sleep_until(deadline) => {
                    self.shared.peer_requests.cancel(request_id);
                    return Err(NodeError::Timeout);
                }
                changed = view.changed() => {
                    if changed.is_err() {
                        self.shared.peer_requests.cancel(request_id);
                        return Err(NodeError::Stopped);
                    }
                    let now = view.borrow_and_update().leader;
                    if now == 0 {
                        // Wait for the next leader; the old one may still answer meanwhile.
                        leader_lost = true;
                    } else if now != leader || leader_lost {
                        self.shared.peer_requests.cancel(request_id);
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// The members, sorted by ID. `linearizable` waits for a read barrier first.
    pub async fn member_list(&self, linearizable: bool) -> Result<Vec<Member>, NodeError> {
        if linearizable {
            self.read_barrier().await?;
        }
        Ok(lock_read(&self.shared.registry).to_proto())
    }

    /// Adds a member (as a learner if asked); returns it and the new member list.
    pub async fn member_add(
        &self,
        peer_urls: Vec<String>,
        is_learner: bool,
    ) -> Result<(Member, Vec<Member>), NodeError> {
        let peer_urls = normalize_urls(&peer_urls)?;
        let id = {
            let registry = lock_read(&self.shared.registry);
            if registry.peer_url_owner(&peer_urls, 0).is_some() {
                return Err(NodeError::MemberExists);
            }
            if is_learner && registry.records().any(|member| member.is_learner) {
                return Err(NodeError::TooManyLearners);
            }
            let unix_secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_secs());
            let id = crate::config::added_member_id(
                &peer_urls,
                &self.shared.config.cluster_token,
                unix_secs,
            );
            if registry.contains(id) {
                return Err(NodeError::MemberIdExists);
            }
            id
        };
        let record = MemberRecord {
            id,
            name: String::new(),
            peer_urls,
            client_urls: Vec::new(),
            is_learner,
        };
        let kind = if is_learner {
            ConfChangeKind::AddLearner
        } else {
            ConfChangeKind::AddVoter
        };
        let members = self
            .change_membership(ConfPurpose::Add, kind, id, Some(record.clone()))
            .await?;
        let member = members
            .iter()
            .find(|member| member.id == id)
            .cloned()
            .unwrap_or_else(|| record.to_proto());
        Ok((member, members))
    }

    pub async fn member_remove(&self, id: u64) -> Result<Vec<Member>, NodeError> {
        if !lock_read(&self.shared.registry).contains(id) {
            return Err(NodeError::MemberNotFound);
        }
        self.change_membership(ConfPurpose::Remove, ConfChangeKind::Remove, id, None)
            .await
    }

    pub async fn member_update(
        &self,
        id: u64,
        peer_urls: Vec<String>,
    ) -> Result<Vec<Member>, NodeError> {
        let peer_urls = normalize_urls(&peer_urls)?;
        {
            let registry = lock_read(&self.shared.registry);
            if !registry.contains(id) {
                return Err(NodeError::MemberNotFound);
            }
            if registry.peer_url_owner(&peer_urls, id).is_some() {
                return Err(NodeError::MemberExists);
            }
        }
        match self
            .propose_body(Body::MemberPeerUrls { id, peer_urls })
            .await?
        {
            AppliedResult::Members(members) => Ok(members),
            AppliedResult::Command(_) | AppliedResult::Alarms(_) => Err(NodeError::Timeout),
        }
    }

    pub async fn member_promote(&self, id: u64) -> Result<Vec<Member>, NodeError> {
        let record = {
            let registry = lock_read(&self.shared.registry);
            let Some(record) = registry.get(id) else {
                return Err(NodeError::MemberNotFound);
            };
            if !record.is_learner {
                return Err(NodeError::MemberNotLearner);
            }
            MemberRecord {
                is_learner: false,
                ..record.clone()
            }
        };
        self.change_membership(
            ConfPurpose::Promote,
            ConfChangeKind::AddVoter,
            id,
            Some(record),
        )
        .await
    }

    async fn change_membership(
        &self,
        purpose: ConfPurpose,
        kind: ConfChangeKind,
        node: u64,
        record: Option<MemberRecord>,
    ) -> Result<Vec<Member>, NodeError> {
        self.check_ready()?;
        let request_id = self.shared.next_request_id();
        let context = ConfContext {
            origin: Origin {
                member_id: self.shared.member_id,
                request_id,
            },
            purpose,
            record,
        };
        let change = ConfChange {
            transition: ConfChangeTransition::Auto,
            changes: vec![ConfChangeSingle { kind, node }],
            context: context.encode(),
        };
        let waiter = self.shared.waiters.register(request_id);
        let request = DriverRequest::ProposeConfChange { request_id, change };
        match self.submit_and_wait(request_id, request, waiter).await? {
            AppliedResult::Members(members) => Ok(members),
            AppliedResult::Command(_) | AppliedResult::Alarms(_) => Err(NodeError::Timeout),
        }
    }

    /// Hands leadership to `target` (must be called on the leader, as etcd requires) and
    /// returns once `target` leads.
    pub async fn move_leader(&self, target: u64) -> Result<(), NodeError> {
        if !self.is_leader() {
            return Err(NodeError::NotLeader);
        }
        if target == self.shared.member_id {
            return Ok(());
        }
        if !self.shared.view.borrow().voters.contains(&target) {
            return Err(NodeError::BadLeaderTransferee);
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.shared
            .requests
            .send(DriverRequest::TransferLeader { target, reply })
            .await
            .map_err(|_| NodeError::Stopped)?;
        answer.await.map_err(|_| NodeError::Stopped)??;
        let mut view = self.shared.view.subscribe();
        // etcd waits up to its request timeout for the transfer to finish.
        match tokio::time::timeout(
            self.shared.config.request_timeout,
            view.wait_for(|view| view.leader == target),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(NodeError::Stopped),
            Err(_) => Err(NodeError::Timeout),
        }
    }

    pub fn status(&self) -> NodeStatus {
        let view = self.shared.view.borrow().clone();
        NodeStatus {
            member_id: self.shared.member_id,
            leader_id: view.leader,
            term: view.term,
            commit_index: view.commit,
            applied_index: *self.shared.applied.borrow(),
            last_index: view.last_index,
            is_learner: view.is_learner,
            db_size_bytes: self.shared.db_size.bytes(),
            leader_changes: self.shared.leader_changes.load(Ordering::Relaxed),
            alarms: self.alarms(),
        }
    }

    /// The alarms raised, as this member has applied them, of type `alarm` (NONE: all). A full
    /// WAL disk raises this member's NOSPACE alarm here too; that one is local, not replicated,
    /// and only space ends it.
    fn alarms_of(&self, alarm: i32) -> Vec<AlarmMember> {
        let mut raised = lock_read(&self.shared.alarms).get(alarm);
        let me = self.shared.member_id;
        let nospace = AlarmType::Nospace as i32;
        let wanted = alarm == AlarmType::None as i32 || alarm == nospace;
        if wanted
            && *self.shared.no_space.borrow()
            && !raised
                .iter()
                .any(|a| a.member_id == me && a.alarm == nospace)
        {
            raised.push(AlarmMember {
                member_id: me,
                alarm: nospace,
            });
        }
        raised
    }

    /// Waits until this member has applied every entry it knew to be committed (after a
    /// restart: what its own log holds), bounded by the request timeout.
    pub async fn applied_committed(&self) -> Result<(), NodeError> {
        self.shared.apply_committed().await
    }

    /// Every alarm raised, as this member has applied them (for Status and `/health`).
    pub fn alarms(&self) -> Vec<AlarmMember> {
        self.alarms_of(AlarmType::None as i32)
    }

    /// etcd's Alarm RPC. GET answers the alarms of type `alarm` (NONE: all) after a
    /// linearizable barrier (etcd sends it through the log); ACTIVATE and DEACTIVATE go through
    /// the log, so every member raises or lifts the alarm at the same index, and answer the
    /// alarm changed (none if it already was in that state). As in etcd, `member_id` is taken as given: `etcdctl alarm disarm`
    /// lists the alarms and deactivates each one by its member.
    pub async fn alarm(
        &self,
        action: i32,
        member_id: u64,
        alarm: i32,
    ) -> Result<Vec<AlarmMember>, NodeError> {
        let change = match AlarmAction::try_from(action) {
            Ok(AlarmAction::Get) => {
                // A member whose disk is full cannot apply what commits meanwhile, so a barrier
                // could only time out: it answers what it has, its own NOSPACE included.
                if !*self.shared.no_space.borrow() {
                    self.read_barrier().await?;
                }
                return Ok(self.alarms_of(alarm));
            }
            Ok(AlarmAction::Activate) => AlarmChange::Activate,
            Ok(AlarmAction::Deactivate) => AlarmChange::Deactivate,
            // etcd answers an unknown action with an empty response.
            Err(_) => return Ok(Vec::new()),
        };
        let body = Body::Alarm {
            change,
            member_id,
            alarm,
        };
        match Self::counted(self.propose_body(body)).await? {
            AppliedResult::Alarms(changed) => Ok(changed),
            AppliedResult::Command(_) | AppliedResult::Members(_) => Err(NodeError::Timeout),
        }
    }

    /// Raises this member's NOSPACE alarm through the log, as etcd does when a write would pass
    /// the quota, and waits for it to apply (so a client refused for the quota then sees the
    /// alarm listed). One such proposal at a time, and none while this member has applied it
    /// already (etcd proposes one per refused write); a failure is logged: the refusal stands.
    async fn raise_nospace(&self) {
        let me = self.shared.member_id;
        if lock_read(&self.shared.alarms).contains(me, AlarmType::Nospace)
            || self.shared.raising_nospace.swap(true, Ordering::SeqCst)
        {
            return;
        }
        let raised = self
            .alarm(AlarmAction::Activate as i32, me, AlarmType::Nospace as i32)
            .await;
        self.shared.raising_nospace.store(false, Ordering::SeqCst);
        match raised {
            Ok(changed) if !changed.is_empty() => {
                tracing::warn!(
                    quota_bytes = self.shared.config.quota_bytes,
                    db_size_bytes = self.shared.db_size.bytes(),
                    "dbSize would pass the quota: raised the NOSPACE alarm"
                );
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "could not raise the NOSPACE alarm"),
        }
    }

    /// etcd's Defragment, Ballot's way: the state lives in memory, so what shrinks `dbSize`
    /// after a compaction is a snapshot, which rewrites the state without the compacted
    /// history. Takes one now (after any snapshot already being written) and returns once it
    /// is durable; nothing to do if nothing was applied since the last one.
    pub async fn defragment(&self) -> Result<(), NodeError> {
        if self.shared.is_stopped() {
            return Err(NodeError::Stopped);
        }
        let (reply, done) = oneshot::channel();
        self.shared
            .defrag
            .send(reply)
            .await
            .map_err(|_| NodeError::Stopped)?;
        done.await
            .map_err(|_| NodeError::Stopped)?
            .map_err(NodeError::Maintenance)
    }

    /// The full Raft status (replication progress of each member when this one leads).
    pub async fn raft_status(&self) -> Result<ballot_raft::Status, NodeError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.shared
            .requests
            .send(DriverRequest::Status { reply })
            .await
            .map_err(|_| NodeError::Stopped)?;
        answer.await.map_err(|_| NodeError::Stopped)
    }

    /// A consistent snapshot of the store, for Maintenance.Snapshot.
    pub async fn backup_snapshot(&self) -> Result<crate::etcd_backup::Export, NodeError> {
        let store = lock_read(&self.shared.store).snapshot_state();
        tokio::task::spawn_blocking(move || crate::etcd_backup::Export::new(store.records()))
            .await
            .map_err(|_| NodeError::Stopped)
    }

    /// Resolves once the node stops; the reason if it failed.
    pub async fn stopped(&self) -> Option<String> {
        let mut stop = self.shared.stop.subscribe();
        let _ = stop.wait_for(|stopped| *stopped).await;
        self.shared
            .failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Asks the node to stop.
    pub fn shutdown(&self) {
        self.shared.request_stop();
    }

    /// Whether this member was removed from the cluster.
    pub fn was_removed(&self) -> bool {
        self.shared.removed.load(Ordering::SeqCst)
    }
}

fn normalize_urls(urls: &[String]) -> Result<Vec<String>, NodeError> {
    if urls.is_empty() {
        return Err(NodeError::MemberBadUrls);
    }
    urls.iter()
        .map(|url| {
            HttpUrl::parse("peer-urls", url)
                .map(|parsed| parsed.to_string())
                .map_err(|_| NodeError::MemberBadUrls)
        })
        .collect()
}

/// How the node starts.
pub enum StartMode {
    /// A brand-new member of a brand-new cluster of `voters`.
    Bootstrap { voters: Vec<u64> },
    /// A member added to a running cluster, starting empty.
    Join,
}

/// Why the node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid Raft configuration: {0}")]
    RaftConfig(#[from] ballot_raft::ConfigError),
    #[error("the recovered state is inconsistent: {0}")]
    Restore(#[from] ballot_raft::RestoreError),
    #[error("the snapshot does not restore: {0}")]
    Snapshot(#[from] ballot_mvcc::SnapshotError),
}

/// A started node: its handle and its tasks. A task that returns an error has stopped the
/// node.
pub struct StartedNode {
    pub handle: NodeHandle,
    pub tasks: Vec<JoinHandle<()>>,
}

fn raft_config(config: &NodeConfig) -> ballot_raft::Config {
    let mut raft = ballot_raft::Config::new(config.member_id);
    raft.election_tick = config.election_ticks.max(2);
    raft.heartbeat_tick = 1;
    raft.pre_vote = config.pre_vote;
    raft.max_proposal_bytes = config.max_request_bytes + 4096;
    raft.seed = config.member_id ^ std::process::id() as u64;
    raft
}

/// The snapshot size of a store that holds nothing yet: the base of `dbSize` before the first
/// snapshot (cheap, the store is empty).
fn empty_store_bytes(store: &Store) -> u64 {
    store.snapshot().len() as u64
}

/// Starts the node's tasks over opened storage. `seed` is the registry to start from when there
/// is no snapshot; `mode` says how to create a node when the storage is fresh.
pub fn start(
    config: NodeConfig,
    opened: Opened,
    seed: Registry,
    mode: StartMode,
    transport: Transport,
    peer_input: mpsc::Receiver<PeerInput>,
) -> Result<StartedNode, StartError> {
    let raft_config = raft_config(&config);
    let mut last_conf_index = 0;
    let (store, registry, alarms, raft, snapshot_index, snapshot_size) = match opened.recovered {
        Some(recovered) => {
            let (store, registry, alarms, size) = match &recovered.snapshot {
                Some(snapshot) => (
                    Store::restore(&snapshot.payload.store, config.store_config.clone())?,
                    snapshot.payload.registry.clone(),
                    snapshot.payload.alarms.clone(),
                    snapshot.payload.store.len() as u64,
                ),
                None => {
                    let store = Store::new(config.store_config.clone());
                    let size = empty_store_bytes(&store);
                    (store, seed, Alarms::default(), size)
                }
            };
            for entry in recovered
                .restore
                .entries
                .iter()
                .filter(|e| e.kind == EntryKind::ConfChange)
            {
                learn_peer_from_entry(&transport, entry);
                last_conf_index = entry.index;
            }
            let snapshot_index = recovered.restore.applied;
            let raft = RaftNode::restore(raft_config, recovered.restore)?;
            (store, registry, alarms, raft, snapshot_index, size)
        }
        None => {
            let raft = match mode {
                StartMode::Bootstrap { voters } => RaftNode::bootstrap(raft_config, &voters)?,
                StartMode::Join => RaftNode::join(raft_config)?,
            };
            let store = Store::new(config.store_config.clone());
            let size = empty_store_bytes(&store);
            (store, seed, Alarms::default(), raft, 0, size)
        }
    };
    for member in registry.records() {
        transport.set_peer(member.id, member.peer_urls.clone());
    }
    let revision = store.current_revision();
    let (requests_tx, requests_rx) = mpsc::channel(REQUEST_QUEUE_DEPTH);
    let (persist_tx, persist_rx) = mpsc::channel(PERSIST_QUEUE_DEPTH);
    let (apply_tx, apply_rx) = mpsc::channel(APPLY_QUEUE_DEPTH);
    let (defrag_tx, defrag_rx) = mpsc::channel(DEFRAG_QUEUE_DEPTH);
    let (persisted_tx, persisted_rx) = watch::channel(0u64);
    let (stop_tx, stop_rx) = watch::channel(false);
    let status = raft.status();
    let (view_tx, _) = watch::channel(RaftView::from_status(&status, config.member_id));
    let (applied_tx, _) = watch::channel(snapshot_index);
    let request_id_base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |elapsed| elapsed.as_nanos() as u64)
        .max(1);
    let leases = lease::LeaseKeeper::new(config.lease_checkpoint_interval);
    let shared = Arc::new(NodeShared {
        member_id: config.member_id,
        cluster_id: config.cluster_id,
        config,
        store: Arc::new(RwLock::new(store)),
        registry: RwLock::new(registry),
        watch_hub: WatchHub::new(revision),
        view: view_tx,
        applied: applied_tx,
        requests: requests_tx,
        waiters: Waiters::default(),
        peer_requests: PeerRequests::default(),
        leases: Mutex::new(leases),
        transport: transport.clone(),
        no_space: opened.wal.no_space(),
        wal: opened.wal.clone(),
        snapshots: opened.snapshots,
        snapshot_in_progress: AtomicBool::new(false),
        snapshot_done: tokio::sync::Notify::new(),
        snapshot_index: AtomicU64::new(snapshot_index),
        alarms: RwLock::new(alarms),
        compaction_hashes: Mutex::default(),
        raising_nospace: AtomicBool::new(false),
        defrag: defrag_tx,
        removed: AtomicBool::new(false),
        db_size: db_size::DbSize::new(snapshot_size),
        leader_changes: AtomicU64::new(0),
        next_request_id: AtomicU64::new(request_id_base),
        stop: stop_tx,
        failure: Mutex::new(None),
        started: Instant::now(),
    });
    transport.set_cluster_info_source(Arc::clone(&shared) as Arc<dyn ClusterInfoSource>);
    let (soft_state, applied_index) = Driver::new_state(&raft);
    let driver = Driver {
        raft,
        shared: Arc::clone(&shared),
        requests: requests_rx,
        peer_input,
        wal: opened.wal,
        transport: transport.clone(),
        persist: persist_tx,
        persisted: persisted_rx,
        applied: shared.applied.subscribe(),
        apply: apply_tx,
        stop: stop_rx,
        proposals: Vec::new(),
        reads: Vec::new(),
        read_waiters: Default::default(),
        next_read_ctx: 0,
        soft_state,
        applied_index,
        last_conf_index,
        deferred_conf_changes: Vec::new(),
        ticks: 0,
        heard_at_tick: std::collections::HashMap::new(),
        tick_advance_pending: false,
        greeted_back: Vec::new(),
        durable_term_vote: (status.term, status.vote),
        pending_hard_state: None,
        no_space: shared.no_space.clone(),
    };
    let applier = apply::Applier {
        shared: Arc::clone(&shared),
        items: apply_rx,
        defrag: defrag_rx,
        snapshot_index,
    };
    let mut tasks = Vec::new();
    tasks.push(spawn_guarded(&shared, "raft driver", async move {
        driver.run().await.map_err(|error| error.to_string())
    }));
    tasks.push(spawn_guarded(&shared, "persist", {
        let shared = Arc::clone(&shared);
        async move { persist_loop(shared, persist_rx, persisted_tx).await }
    }));
    tasks.push(spawn_guarded(&shared, "apply", async move {
        applier.run().await.map_err(|error| error.to_string())
    }));
    tasks.push(spawn_guarded(
        &shared,
        "snapshot pruning",
        snapshot_pruning::run(Arc::clone(&shared)),
    ));
    tasks.push(tokio::spawn(lease::run_expiry(Arc::clone(&shared))));
    tasks.push(tokio::spawn(publish_attributes(Arc::clone(&shared))));
    if let Some((mode, check_interval)) = shared.config.auto_compaction {
        tasks.push(tokio::spawn(auto_compaction::run(
            Arc::clone(&shared),
            mode,
            check_interval,
        )));
    }
    Ok(StartedNode {
        handle: NodeHandle { shared },
        tasks,
    })
}

fn learn_peer_from_entry(transport: &Transport, entry: &ballot_raft::Entry) {
    let Ok(change) = ConfChange::decode(&entry.data) else {
        return;
    };
    if let Ok(ConfContext {
        record: Some(record),
        ..
    }) = ConfContext::decode(&change.context)
    {
        transport.set_peer(record.id, record.peer_urls);
    }
}

/// Runs a task whose failure is fatal to the node.
fn spawn_guarded(
    shared: &Arc<NodeShared>,
    name: &'static str,
    task: impl std::future::Future<Output = Result<(), String>> + Send + 'static,
) -> JoinHandle<()> {
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        if let Err(reason) = task.await {
            shared.fail(format!("{name} task failed: {reason}"));
        }
    })
}

/// Waits for each Ready's write to be durable (in Ready order), then sends the messages that
/// promise durability and reports the Ready number to the driver.
async fn persist_loop(
    shared: Arc<NodeShared>,
    mut items: mpsc::Receiver<PersistItem>,
    persisted: watch::Sender<u64>,
) -> Result<(), String> {
    let mut stop = shared.stop.subscribe();
    loop {
        let item = tokio::select! {
            item = items.recv() => match item {
                Some(item) => item,
                None => return Ok(()),
            },
            _ = stop.wait_for(|stopped| *stopped) => return Ok(()),
        };
        if let Some(completion) = item.completion {
            completion
                .wait()
                .await
                .map_err(|error| format!("WAL write failed: {error}"))?;
        }
        for message in item.messages {
            shared.transport.send_message(message);
        }
        persisted.send_replace(item.number);
    }
}

/// etcd's "publish": once a leader exists, a member records its name and client URLs in the
/// replicated registry (retrying until it is applied), so `member list` shows them everywhere.
/// It proposes as soon as this member is in the configuration and knows a leader (a joining
/// member, the moment it has caught up), and retries a failed proposal after an election
/// timeout.
async fn publish_attributes(shared: Arc<NodeShared>) {
    let handle = NodeHandle {
        shared: Arc::clone(&shared),
    };
    let retry = shared
        .config
        .election_timeout
        .max(Duration::from_millis(100));
    let mut stop = shared.stop.subscribe();
    let mut view = shared.view.subscribe();
    loop {
        let published = {
            let registry = lock_read(&shared.registry);
            registry.get(shared.member_id).is_some_and(|member| {
                member.name == shared.config.name && member.client_urls == shared.config.client_urls
            })
        };
        let is_member = shared.view.borrow().is_member;
        if published && is_member {
            return;
        }
        let ready = is_member && handle.leader_id() != 0;
        if ready {
            let body = Body::MemberAttributes {
                id: shared.member_id,
                name: shared.config.name.clone(),
                client_urls: shared.config.client_urls.clone(),
            };
            match handle.propose_body(body).await {
                Ok(_) => continue,
                Err(error) => tracing::debug!(%error, "publishing member attributes; will retry"),
            }
        }
        // Not ready yet: wake when it becomes so. Ready and refused: wait before the retry.
        let became_ready = async {
            if ready {
                std::future::pending::<()>().await;
            }
            let _ = view
                .wait_for(|view| view.is_member && view.leader != 0)
                .await;
        };
        tokio::select! {
            _ = tokio::time::sleep(retry) => {}
            _ = became_ready => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
    }
}

/// The member registry a node starts from, built from records.
pub fn registry_from(records: Vec<MemberRecord>) -> Registry {
    Registry::from_records(records)
}

/// Keeps `storage` in the public surface for the server wiring.
pub use storage::ClusterFile;
