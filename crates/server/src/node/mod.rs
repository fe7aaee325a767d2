//! The node: drives the Raft core, persists through the WAL, applies committed entries to the
//! MVCC store, and answers the API layer through [`NodeHandle`].
//!
//! See `docs/server.md` for the tasks, channels and the write and read paths.

pub mod envelope;
mod error;
pub mod members;
pub mod wire;

use std::sync::{Arc, RwLock};

use ballot_mvcc::{ApplyOutcome, Command, Store, WatchHub};
use ballot_proto::etcdserverpb::{LeaseTimeToLiveResponse, ResponseHeader};
use bytes::Bytes;

pub use ballot_proto::etcdserverpb::Member;
pub use error::NodeError;

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
    /// Approximate size of the state, in bytes (etcd's `dbSize`).
    pub db_size_bytes: u64,
}

/// What the node shares with every handle.
struct NodeShared {
    member_id: u64,
    cluster_id: u64,
    store: Arc<RwLock<Store>>,
    watch_hub: WatchHub,
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

    /// Header with cluster_id, member_id, raft_term (current term), revision (the given one).
    pub fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.shared.cluster_id,
            member_id: self.shared.member_id,
            revision,
            raft_term: self.status().term,
        }
    }

    /// Replicates a command and returns its apply result (proposed here on the leader, forwarded
    /// to the leader from a follower). Fails fast with [`NodeError::NoLeader`] when no leader is
    /// known, and with [`NodeError::Timeout`] / [`NodeError::LeaderChanged`] when the command is
    /// not applied within the request timeout.
    pub async fn propose(&self, command: Command) -> Result<ApplyOutcome, NodeError> {
        let _ = command;
        todo!("node: propose")
    }

    /// Linearizable barrier: returns once this member's applied state reflects every write
    /// committed before the call (ReadIndex, Raft thesis §6.4).
    pub async fn read_barrier(&self) -> Result<(), NodeError> {
        todo!("node: read_barrier")
    }

    /// Serializable access to the local store. Keep `f` short: apply waits while it runs.
    pub fn with_store<R>(&self, f: impl FnOnce(&Store) -> R) -> R {
        let store = self
            .shared
            .store
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&store)
    }

    pub fn watch_hub(&self) -> &WatchHub {
        &self.shared.watch_hub
    }

    /// Renews a lease on the leader (forwarded there from a follower); answers the TTL, or 0
    /// when the lease is unknown or expired, as etcd does.
    pub async fn lease_keep_alive(&self, id: i64) -> Result<i64, NodeError> {
        let _ = id;
        todo!("node: lease_keep_alive")
    }

    /// etcd `LeaseTimeToLive`, answered by the leader (it alone times leases); `ttl` is -1 for
    /// an unknown lease.
    pub async fn lease_time_to_live(
        &self,
        id: i64,
        keys: bool,
    ) -> Result<LeaseTimeToLiveResponse, NodeError> {
        let _ = (id, keys);
        todo!("node: lease_time_to_live")
    }

    /// The members, sorted by ID. `linearizable` waits for a read barrier first.
    pub async fn member_list(&self, linearizable: bool) -> Result<Vec<Member>, NodeError> {
        let _ = linearizable;
        todo!("node: member_list")
    }

    /// Adds a member (as a learner if asked); returns it and the new member list.
    pub async fn member_add(
        &self,
        peer_urls: Vec<String>,
        is_learner: bool,
    ) -> Result<(Member, Vec<Member>), NodeError> {
        let _ = (peer_urls, is_learner);
        todo!("node: member_add")
    }

    pub async fn member_remove(&self, id: u64) -> Result<Vec<Member>, NodeError> {
        let _ = id;
        todo!("node: member_remove")
    }

    pub async fn member_update(
        &self,
        id: u64,
        peer_urls: Vec<String>,
    ) -> Result<Vec<Member>, NodeError> {
        let _ = (id, peer_urls);
        todo!("node: member_update")
    }

    pub async fn member_promote(&self, id: u64) -> Result<Vec<Member>, NodeError> {
        let _ = id;
        todo!("node: member_promote")
    }

    /// Hands leadership to `target` (must be called on the leader, as etcd requires) and
    /// returns once `target` leads.
    pub async fn move_leader(&self, target: u64) -> Result<(), NodeError> {
        let _ = target;
        todo!("node: move_leader")
    }

    pub fn status(&self) -> NodeStatus {
        NodeStatus {
            member_id: self.shared.member_id,
            ..NodeStatus::default()
        }
    }

    /// A consistent snapshot of the store, for Maintenance.Snapshot.
    pub async fn backup_snapshot(&self) -> Result<Bytes, NodeError> {
        Ok(self.with_store(Store::snapshot))
    }
}
