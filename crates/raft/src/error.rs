//! The error enums of the core, one per operation. None of them means the node is broken: each
//! says what the caller asked that could not be done, and the node's state is unchanged.

use crate::types::{Index, NodeId, Term};
use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ConfigError {
    #[error("node id must not be 0")]
    ZeroId,
    #[error("election_tick must be at least 2, got {election_tick}")]
    ElectionTickTooSmall { election_tick: u32 },
    #[error("heartbeat_tick must be in 1..election_tick ({election_tick}), got {heartbeat_tick}")]
    HeartbeatTick {
        heartbeat_tick: u32,
        election_tick: u32,
    },
    #[error("{0} must not be 0")]
    ZeroLimit(&'static str),
    #[error("lease-based reads require check_quorum")]
    LeaseWithoutCheckQuorum,
    #[error(
        "lease_drift_ticks must be in 1..election_tick ({election_tick}), got {lease_drift_ticks}"
    )]
    LeaseDrift {
        lease_drift_ticks: u32,
        election_tick: u32,
    },
    #[error("bootstrap needs a non-empty list of non-zero, distinct voters including this node")]
    BootstrapVoters,
}

/// Why a message from a peer was refused. The node ignores the message and stays as it was.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum StepError {
    #[error("message for node {to} delivered to node {id}")]
    WrongRecipient { to: NodeId, id: NodeId },
    #[error("message has no valid sender ({from})")]
    InvalidSender { from: NodeId },
    #[error("malformed {message} message: {reason}")]
    Malformed {
        message: &'static str,
        reason: &'static str,
    },
    #[error("an Append from the leader of term {term} conflicts with committed entry {index}")]
    ConflictsWithCommitted { term: Term, index: Index },
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ProposeError {
    #[error("not the leader (known leader: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    #[error("proposal of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge { size: u64, max: u64 },
    #[error("uncommitted entries hold {uncommitted_bytes} bytes; limit {max} bytes")]
    UncommittedFull { uncommitted_bytes: u64, max: u64 },
    #[error("leadership transfer to {to} in progress")]
    TransferInProgress { to: NodeId },
    #[error("an earlier configuration change is not committed yet")]
    ConfChangePending,
    #[error("the leader has not yet committed an entry of its term")]
    LeaderTermNotCommitted,
    #[error(
        "learner {node} is not caught up (match {match_index}, leader last {last_index}, gap {gap})"
    )]
    LearnerNotCaughtUp {
        node: NodeId,
        match_index: Index,
        last_index: Index,
        gap: u64,
    },
    #[error("invalid configuration change: {0}")]
    InvalidConfChange(#[from] ConfChangeError),
    #[error("this node was removed from the cluster")]
    Removed,
    #[error("empty proposal batch")]
    EmptyBatch,
}

/// Why a configuration change cannot be applied to the configuration in effect.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ConfChangeError {
    #[error("already in a joint configuration")]
    AlreadyJoint,
    #[error("not in a joint configuration, nothing to leave")]
    NotJoint,
    #[error("the change would leave no voters")]
    NoVoters,
    #[error("a simple change may alter at most one voter; use a joint change")]
    TooManyVoterChanges,
    #[error("node id 0 in a change")]
    ZeroNode,
    #[error("configuration change does not decode: {0}")]
    Decode(#[from] DecodeError),
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ReadError {
    #[error("no leader known")]
    NoLeader,
    #[error("too many reads pending ({pending})")]
    TooManyPending { pending: usize },
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum TransferError {
    #[error("not the leader (known leader: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    #[error("node {0} is not a voter")]
    NotVoter(NodeId),
    #[error("already the leader")]
    AlreadyLeader,
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CompactError {
    #[error("cannot compact through {index}: applied index is {applied}")]
    AboveApplied { index: Index, applied: Index },
    #[error("cannot compact through {index}: latest snapshot covers {snapshot}")]
    AboveSnapshot { index: Index, snapshot: Index },
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RestoreError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("entry {found} follows index {expected_prev}: the log is not contiguous")]
    NotContiguous { expected_prev: Index, found: Index },
    #[error("entry {index} has term {term}, below the term {prev_term} before it")]
    TermDecreases {
        index: Index,
        term: Term,
        prev_term: Term,
    },
    #[error("applied index {applied} is outside [{snapshot_index}, {last_index}]")]
    AppliedOutOfRange {
        applied: Index,
        snapshot_index: Index,
        last_index: Index,
    },
}

/// Why bytes did not decode. Decoding never panics; any input yields a value or this.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    #[error("input ended early while reading {0}")]
    Truncated(&'static str),
    #[error("unknown {what} tag {tag}")]
    UnknownTag { what: &'static str, tag: u8 },
    #[error("varint longer than 10 bytes")]
    VarintOverflow,
    #[error("{0} trailing bytes after the value")]
    TrailingBytes(usize),
    #[error("length {0} exceeds the remaining input")]
    LengthTooLarge(u64),
}
