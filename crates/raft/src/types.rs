//! The data types of the protocol: log entries, hard state, configurations, messages and the
//! status report. Everything here is plain data; the behaviour lives in the other modules.

use bytes::Bytes;

/// A member's identity. `0` means "none" (no leader known, no vote cast).
pub type NodeId = u64;
/// A Raft term (Raft paper §5.1).
pub type Term = u64;
/// A position in the replicated log; the first entry has index 1.
pub type Index = u64;

/// The identity that stands for "nobody".
pub const NO_NODE: NodeId = 0;
/// The vote recorded when a restart finds that this node may have voted in its current term
/// but the record was lost; it matches no candidate, so the node votes for nobody in that term.
pub const UNKNOWN_VOTE: NodeId = NodeId::MAX;

/// What a log entry carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// Application data; a new leader's no-op is a `Normal` entry with empty data.
    Normal,
    /// An encoded [`ConfChange`]. It takes effect as soon as it is appended to a log (see
    /// `docs/raft.md`, "Membership").
    ConfChange,
}

/// One entry of the replicated log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub term: Term,
    pub index: Index,
    pub kind: EntryKind,
    pub data: Bytes,
}

impl Entry {
    /// Bytes an entry is counted as for batching and flow-control limits: its payload plus a
    /// fixed allowance for the header, so that empty entries still cost something.
    pub fn size_bytes(&self) -> u64 {
        self.data.len() as u64 + ENTRY_OVERHEAD_BYTES
    }
}

/// The fixed per-entry allowance used by [`Entry::size_bytes`] (term, index, kind, length).
pub const ENTRY_OVERHEAD_BYTES: u64 = 24;

/// The state that must be durable before the messages that depend on it leave (Raft paper
/// figure 2, "Persistent state on all servers", plus the commit index as a restart hint).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HardState {
    pub term: Term,
    pub vote: NodeId,
    pub commit: Index,
}

/// The configuration in effect.
///
/// Invariants (checked by `confchange`): every list is sorted and free of duplicates; learners
/// are disjoint from both voter sets; `learners_next` is a subset of `voters_outgoing`;
/// outside a joint configuration `voters_outgoing` and `learners_next` are empty and
/// `auto_leave` is false.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfState {
    /// The incoming (or only) majority configuration, sorted.
    pub voters: Vec<NodeId>,
    /// Non-empty only in a joint configuration: the outgoing majority configuration.
    pub voters_outgoing: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    /// Voters being demoted to learners; they become learners when the joint configuration
    /// is left.
    pub learners_next: Vec<NodeId>,
    /// Whether the leader leaves the joint configuration by itself once it is committed.
    pub auto_leave: bool,
}

impl ConfState {
    /// True when `id` is a voter of the incoming or the outgoing configuration.
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.binary_search(&id).is_ok() || self.voters_outgoing.binary_search(&id).is_ok()
    }

    /// True when `id` is a learner (or a voter about to become one).
    pub fn is_learner(&self, id: NodeId) -> bool {
        self.learners.binary_search(&id).is_ok()
    }

    /// True when `id` belongs to the configuration in any role.
    pub fn contains(&self, id: NodeId) -> bool {
        self.is_voter(id) || self.is_learner(id)
    }

    /// True in a joint configuration (C_old,new).
    pub fn is_joint(&self) -> bool {
        !self.voters_outgoing.is_empty()
    }

    /// Every member in any role, sorted and without duplicates.
    pub fn all_members(&self) -> Vec<NodeId> {
        let mut all: Vec<NodeId> = self
            .voters
            .iter()
            .chain(&self.voters_outgoing)
            .chain(&self.learners)
            .copied()
            .collect();
        all.sort_unstable();
        all.dedup();
        all
    }
}

/// What a snapshot covers: the log through `index` (whose entry had `term`), and the
/// configuration in effect at that index. The snapshot's data is the application's business.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotMeta {
    pub index: Index,
    pub term: Term,
    pub conf: ConfState,
}

/// One step of a membership change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConfChangeKind {
    AddVoter,
    AddLearner,
    Remove,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConfChangeSingle {
    pub kind: ConfChangeKind,
    pub node: NodeId,
}

/// How a change moves between configurations; the meaning follows etcd's ConfChangeV2.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConfChangeTransition {
    /// One change that alters at most one voter: applied directly (single-server change,
    /// Raft thesis §4.1). More than one change: a joint configuration left automatically.
    Auto,
    /// Always a joint configuration, left automatically by the leader.
    JointImplicit,
    /// Always a joint configuration; the application leaves it by proposing an empty change.
    JointExplicit,
}

/// A membership change proposal. A change with no `changes` means "leave the joint
/// configuration".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfChange {
    pub transition: ConfChangeTransition,
    pub changes: Vec<ConfChangeSingle>,
    /// Opaque application data (member URLs, names).
    pub context: Bytes,
}

impl ConfChange {
    /// The change that leaves a joint configuration.
    pub fn leave_joint() -> ConfChange {
        ConfChange {
            transition: ConfChangeTransition::Auto,
            changes: Vec::new(),
            context: Bytes::new(),
        }
    }

    /// True for the "leave the joint configuration" change.
    pub fn is_leave_joint(&self) -> bool {
        self.changes.is_empty()
    }
}

/// A message between two members.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub from: NodeId,
    pub to: NodeId,
    pub term: Term,
    pub body: MessageBody,
}

/// What a message says. Field meanings follow the Raft paper figure 2; the extensions (pre-vote,
/// read index, fast back-off hints) follow the Raft thesis and etcd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessageBody {
    /// Raft thesis §9.6. `Message::term` is the candidate's term + 1; the sender's own term is
    /// not changed by asking.
    PreVote {
        last_log_index: Index,
        last_log_term: Term,
    },
    /// A grant carries the requested term; a rejection carries the responder's term.
    PreVoteResponse {
        reject: bool,
    },
    /// Raft paper §5.2. `leader_transfer` marks a campaign started by `TimeoutNow`, which
    /// voters honour even while they hear from a live leader (Raft thesis §3.10).
    Vote {
        last_log_index: Index,
        last_log_term: Term,
        leader_transfer: bool,
    },
    VoteResponse {
        reject: bool,
    },
    /// Raft paper §5.3.
    Append {
        prev_log_index: Index,
        prev_log_term: Term,
        entries: Vec<Entry>,
        commit: Index,
    },
    /// On success `index` is the last index the follower now matches. On rejection `index`
    /// is the rejected `prev_log_index` and `(hint_index, hint_term)` is the follower's last
    /// entry at or below it whose term is at most `prev_log_term`, for fast back-off.
    AppendResponse {
        reject: bool,
        index: Index,
        hint_index: Index,
        hint_term: Term,
    },
    /// Keeps followers' election timers quiet and carries the commit index. `read_ctx` is the
    /// leader's round number used to confirm leadership for reads (0 for none).
    Heartbeat {
        commit: Index,
        read_ctx: u64,
    },
    HeartbeatResponse {
        read_ctx: u64,
    },
    /// Install the snapshot described by `meta`. The data travels out of band.
    Snapshot {
        meta: SnapshotMeta,
    },
    /// Start an election at once, skipping pre-vote (leadership transfer, Raft thesis §3.10).
    TimeoutNow,
    /// A follower asks the leader for a read index on behalf of a local read.
    ReadIndex {
        ctx: u64,
    },
    ReadIndexResponse {
        ctx: u64,
        index: Index,
    },
}

impl MessageBody {
    /// A short name for traces and logs.
    pub fn name(&self) -> &'static str {
        match self {
            MessageBody::PreVote { .. } => "PreVote",
            MessageBody::PreVoteResponse { .. } => "PreVoteResponse",
            MessageBody::Vote { .. } => "Vote",
            MessageBody::VoteResponse { .. } => "VoteResponse",
            MessageBody::Append { .. } => "Append",
            MessageBody::AppendResponse { .. } => "AppendResponse",
            MessageBody::Heartbeat { .. } => "Heartbeat",
            MessageBody::HeartbeatResponse { .. } => "HeartbeatResponse",
            MessageBody::Snapshot { .. } => "Snapshot",
            MessageBody::TimeoutNow => "TimeoutNow",
            MessageBody::ReadIndex { .. } => "ReadIndex",
            MessageBody::ReadIndexResponse { .. } => "ReadIndexResponse",
        }
    }
}

/// A node's role (Raft paper §5.1, plus the pre-candidate of Raft thesis §9.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

/// Volatile state worth reporting when it changes: the role and the known leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoftState {
    pub role: Role,
    /// The known leader, `0` for none.
    pub leader: NodeId,
}

/// A read that may be served once the application's applied index reaches `index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadState {
    pub ctx: u64,
    pub index: Index,
}

/// What the leader knows about one peer's replication.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    /// The leader does not know where the follower's log matches; it sends one Append at a
    /// time and waits for the answer.
    Probe,
    /// The follower is known to match; Appends are pipelined within the in-flight window.
    Replicate,
    /// The follower needs a snapshot; nothing else is sent until the application reports the
    /// snapshot's outcome.
    Snapshot,
}

/// A peer's replication progress as reported by [`Status`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProgressStatus {
    pub match_index: Index,
    pub next_index: Index,
    pub state: ProgressState,
    pub is_learner: bool,
    pub recent_active: bool,
    pub inflight_msgs: usize,
    pub inflight_bytes: u64,
    /// In snapshot state: the index of the snapshot being sent.
    pub pending_snapshot: Index,
}

/// A point-in-time view of a node, for tests, metrics and the server's status endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub id: NodeId,
    pub role: Role,
    pub term: Term,
    pub vote: NodeId,
    pub leader: NodeId,
    pub commit: Index,
    pub applied: Index,
    /// The log is durable through this index (as reported by `on_persisted`).
    pub persisted: Index,
    pub first_index: Index,
    pub last_index: Index,
    pub conf: ConfState,
    /// Per-member progress, sorted by id; empty unless this node is the leader.
    pub progress: Vec<(NodeId, ProgressStatus)>,
    /// The target of a leadership transfer in progress, if any.
    pub lead_transferee: Option<NodeId>,
}
