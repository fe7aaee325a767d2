//! The application's handle on the protocol: [`RaftNode`] and the [`Ready`] batch it hands out.

use crate::config::Config;
use crate::error::{
    CompactError, ConfigError, ProposeError, ReadError, RestoreError, StepError, TransferError,
};
use crate::raft::Raft;
use crate::types::*;
use bytes::Bytes;

/// Durable state handed back on restart.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoreState {
    /// The last hard state made durable.
    pub hard_state: HardState,
    /// The latest durable snapshot, if any; `entries` continue right after it.
    pub snapshot: Option<SnapshotMeta>,
    /// The durable log after the snapshot (or from index 1 without one), contiguous.
    pub entries: Vec<Entry>,
    /// The index the application's state machine already reflects (at least the snapshot's
    /// index; 0 for a state machine rebuilt from scratch without a snapshot).
    pub applied: Index,
}

/// One batch of work for the application, taken with [`RaftNode::ready`].
///
/// # The persistence contract
///
/// Readys are numbered (`number`, strictly increasing) and must be made durable **in the order
/// they were produced**. For each Ready the application:
///
/// 1. **May send `messages` at once**, before or while persisting. They promise nothing about
///    this node's disk: a leader's Append carries entries that the leader is still writing
///    (Raft thesis §10.2.1: the leader's own write overlaps replication, and the leader counts
///    itself toward a commit only once its write is reported durable); heartbeats, vote and
///    pre-vote requests, read-index traffic, `TimeoutNow` and `Snapshot` offers are likewise
///    safe to send early. A `Snapshot { meta }` message means: stream the data of the
///    application's latest snapshot (the one described by `meta`) to `to`, then call
///    [`RaftNode::report_snapshot`].
/// 2. **Persists** `snapshot` (if `Some`: install the snapshot data received for this meta and
///    make it durable; it replaces the whole log), `hard_state` (if `Some`) and `entries` (if
///    `entries[0].index` is at or below the last stored index, first truncate the stored log
///    from that index on, then append), best atomically, else in this order. A crash may lose
///    a suffix of what was written but must never keep a later Ready's write while losing an
///    earlier one's. (Restore tolerates the other order within one Ready: a commit index
///    beyond the durable log is cut back, and a hard state lost behind entries of a newer term
///    yields that term with [`UNKNOWN_VOTE`].)
/// 3. **Only after this Ready and every earlier Ready are durable**, sends
///    `persisted_messages` (vote grants and rejections, append and snapshot acknowledgements:
///    each promises that something is on disk) and calls [`RaftNode::on_persisted`] with
///    `number`. Reporting a later number covers every earlier Ready; a Ready whose `snapshot`,
///    `entries` and `hard_state` are all empty needs no report of its own.
/// 4. **Applies `committed_entries` in order**, after any `snapshot` of this or an earlier
///    Ready is installed, possibly concurrently with steps 2-3 of later Readys, and calls
///    [`RaftNode::on_applied`] with the last applied index. Committed entries are handed out
///    only once they are durable locally, so the applied state never runs ahead of the log.
///    An entry of kind `ConfChange` needs no action from the core's point of view: the
///    configuration already changed when the entry was appended; the application may use the
///    committed entry to update its member list.
/// 5. **Serves `read_states`**: a read with `ReadState { ctx, index }` may be answered once the
///    applied index is at least `index`.
///
/// `soft_state` reports role and leader changes and needs no action.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ready {
    pub number: u64,
    pub soft_state: Option<SoftState>,
    pub hard_state: Option<HardState>,
    pub snapshot: Option<SnapshotMeta>,
    pub entries: Vec<Entry>,
    pub messages: Vec<Message>,
    pub persisted_messages: Vec<Message>,
    pub committed_entries: Vec<Entry>,
    pub read_states: Vec<ReadState>,
}

impl Ready {
    /// True when this Ready carries something to make durable (and so should be reported with
    /// [`RaftNode::on_persisted`] once it is).
    pub fn must_persist(&self) -> bool {
        self.snapshot.is_some() || !self.entries.is_empty() || self.hard_state.is_some()
    }
}

/// A Raft member: a pure state machine driven by ticks, messages and proposals, producing
/// [`Ready`] batches. No I/O, no clock, no threads; the same inputs give the same outputs.
pub struct RaftNode {
    raft: Raft,
}

impl RaftNode {
    /// A brand-new member of a brand-new cluster. The first Ready carries one ConfChange entry
    /// at index 1, term 1 that adds all `voters` (identical on every initial member, so log
    /// matching holds), already committed; the application persists and applies it like any
    /// other entry. A member that crashes before that first Ready is durable must bootstrap
    /// again, not restore (an empty durable state restores as a joining member).
    pub fn bootstrap(config: Config, voters: &[NodeId]) -> Result<RaftNode, ConfigError> {
        Ok(RaftNode {
            raft: Raft::bootstrap(config, voters)?,
        })
    }

    /// A member joining an existing cluster: empty log, no configuration. It never campaigns
    /// and waits for the leader to replicate the log (or a snapshot) to it.
    pub fn join(config: Config) -> Result<RaftNode, ConfigError> {
        Ok(RaftNode {
            raft: Raft::join(config)?,
        })
    }

    /// Restart from durable state. The configuration is rebuilt from the snapshot's
    /// configuration and the ConfChange entries of the log.
    pub fn restore(config: Config, state: RestoreState) -> Result<RaftNode, RestoreError> {
        Ok(RaftNode {
            raft: Raft::restore(config, state)?,
        })
    }

    /// Advances logical time by one tick (election and heartbeat timers).
    pub fn tick(&mut self) {
        self.raft.tick();
    }

    /// Advances logical time by `ticks` ticks at once, as etcd does at start with
    /// `--initial-election-tick-advance`, so a member's first election need not wait a whole
    /// election timeout. Does nothing right after a restart with lease reads (the restart guard
    /// must last a whole election timeout).
    pub fn advance_ticks(&mut self, ticks: u32) {
        self.raft.advance_ticks(ticks);
    }

    /// Feeds a message from a peer. Never panics: a malformed or misdirected message returns an
    /// error and leaves the node unchanged.
    pub fn step(&mut self, message: Message) -> Result<(), StepError> {
        self.raft.step(message)
    }

    /// Starts an election now (pre-vote first when enabled). Ignored by a leader, by a node
    /// that may not campaign (not a voter), and, with lease reads, by a node that heard from a
    /// leader within the election timeout (the lease relies on that promise).
    pub fn campaign(&mut self) {
        self.raft.campaign_now();
    }

    /// Appends one entry to the leader's log; returns its index and term.
    pub fn propose(&mut self, data: Bytes) -> Result<(Index, Term), ProposeError> {
        self.raft.propose_batch(vec![data])
    }

    /// Appends many entries in one go; returns the first one's index and the term.
    pub fn propose_batch(&mut self, batch: Vec<Bytes>) -> Result<(Index, Term), ProposeError> {
        self.raft.propose_batch(batch)
    }

    /// Proposes a membership change; it takes effect on every member when appended.
    pub fn propose_conf_change(
        &mut self,
        change: ConfChange,
    ) -> Result<(Index, Term), ProposeError> {
        self.raft.propose_conf_change(change)
    }

    /// Asks for a linearizable read point; the answer arrives in `Ready::read_states` with the
    /// same `ctx`. A request that cannot be confirmed (leader lost) is dropped silently: the
    /// application times it out.
    pub fn read_index(&mut self, ctx: u64) -> Result<(), ReadError> {
        self.raft.read_index(ctx)
    }

    /// Hands leadership to `to` (Raft thesis §3.10): catch it up, then send it `TimeoutNow`.
    /// Proposals are refused until the transfer completes or is aborted after an election
    /// timeout.
    pub fn transfer_leader(&mut self, to: NodeId) -> Result<(), TransferError> {
        self.raft.transfer_leader(to)
    }

    pub fn has_ready(&self) -> bool {
        self.raft.has_ready()
    }

    /// Takes the pending output. See [`Ready`] for what the application must do with it.
    pub fn ready(&mut self) -> Ready {
        self.raft.ready()
    }

    /// Every Ready numbered `ready_number` or below is durable.
    pub fn on_persisted(&mut self, ready_number: u64) {
        self.raft.on_persisted(ready_number);
    }

    /// The application's state machine reflects every entry through `index`.
    pub fn on_applied(&mut self, index: Index) {
        self.raft.on_applied(index);
    }

    /// The outcome of streaming a snapshot to `to`.
    pub fn report_snapshot(&mut self, to: NodeId, ok: bool) {
        self.raft.report_snapshot(to, ok);
    }

    /// The transport could not reach `to`: stop pipelining to it and probe instead.
    pub fn report_unreachable(&mut self, to: NodeId) {
        self.raft.report_unreachable(to);
    }

    /// The snapshot metadata for `index` (term and configuration in effect there), for an
    /// application about to write a snapshot of its state at `index`. `None` unless
    /// `index` is applied and still in the log (or is the latest snapshot's index).
    pub fn snapshot_meta(&self, index: Index) -> Option<SnapshotMeta> {
        self.raft.snapshot_meta(index)
    }

    /// The application holds a durable snapshot through `meta.index` that may be sent to peers.
    /// Ignored unless `meta` matches this log (see [`RaftNode::snapshot_meta`]).
    pub fn snapshot_taken(&mut self, meta: SnapshotMeta) {
        self.raft.snapshot_taken(meta);
    }

    /// Drops log entries through `index` (at most the applied index and the latest snapshot's
    /// index). Compacting at or below the current first index does nothing.
    pub fn compact(&mut self, index: Index) -> Result<(), CompactError> {
        self.raft.compact(index)
    }

    pub fn status(&self) -> Status {
        self.raft.status()
    }

    pub fn id(&self) -> NodeId {
        self.raft.id()
    }

    /// The configuration in effect (the latest one in the log, committed or not).
    pub fn conf_state(&self) -> &ConfState {
        self.raft.conf_state()
    }
}
