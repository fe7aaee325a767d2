//! The protocol itself: roles, elections, replication, commit, reads, leadership transfer,
//! snapshots and membership. [`crate::RaftNode`] is the public face; this is the machinery.
//!
//! Section numbers refer to the Raft paper ("In Search of an Understandable Consensus
//! Algorithm", extended version) and to Diego Ongaro's thesis ("Consensus: Bridging Theory and
//! Practice"); where etcd-io/raft made a choice the paper leaves open, the comment says so.

use crate::confchange::{self, ConfHistory};
use crate::config::{Config, DefectKind, ReadOnlyOption};
use crate::error::*;
use crate::log::RaftLog;
use crate::node::{Ready, RestoreState};
use crate::progress::Progress;
use crate::quorum::{JointConfig, VoteResult};
use crate::read_only::{ReadOnly, ReadRequest};
use crate::types::*;
use bytes::Bytes;
use std::collections::{BTreeMap, VecDeque};

/// Terms and indexes at or above this are refused as input: no cluster reaches them, and
/// keeping inputs below it means `+ 1` on any of them cannot overflow.
const MAX_SANE_NUMBER: u64 = 1 << 62;

/// Whether every term and index a message carries is below [`MAX_SANE_NUMBER`].
fn message_numbers_are_sane(message: &Message) -> bool {
    let numbers: &[u64] = match &message.body {
        MessageBody::PreVote {
            last_log_index,
            last_log_term,
        }
        | MessageBody::Vote {
            last_log_index,
            last_log_term,
            ..
        } => &[*last_log_index, *last_log_term],
        MessageBody::Append {
            prev_log_index,
            prev_log_term,
            entries,
            commit,
        } => {
            let entries_sane = entries
                .iter()
                .all(|entry| entry.index < MAX_SANE_NUMBER && entry.term < MAX_SANE_NUMBER);
            if !entries_sane {
                return false;
            }
            &[*prev_log_index, *prev_log_term, *commit]
        }
        MessageBody::AppendResponse {
            index,
            hint_index,
            hint_term,
            ..
        } => &[*index, *hint_index, *hint_term],
        MessageBody::Heartbeat { commit, .. } => &[*commit],
        MessageBody::Snapshot { meta } => &[meta.index, meta.term],
        MessageBody::ReadIndexResponse { index, .. } => &[*index],
        MessageBody::PreVoteResponse { .. }
        | MessageBody::VoteResponse { .. }
        | MessageBody::HeartbeatResponse { .. }
        | MessageBody::TimeoutNow
        | MessageBody::ReadIndex { .. } => &[],
    };
    message.term < MAX_SANE_NUMBER && numbers.iter().all(|number| *number < MAX_SANE_NUMBER)
}

/// Why an election starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CampaignKind {
    /// Pre-vote round (Raft thesis §9.6): ask without changing the term.
    PreElection,
    /// Real election (Raft paper §5.2).
    Election,
    /// Election ordered by the leader's TimeoutNow (Raft thesis §3.10): skips pre-vote and is
    /// honoured by voters that still hear from the leader.
    Transfer,
}

pub struct Raft {
    config: Config,
    /// Invariant: never decreases.
    term: Term,
    /// The candidate voted for in `term` (0 for none). Invariant: set at most once per term.
    vote: NodeId,
    role: Role,
    /// The known leader of `term` (0 for none).
    leader: NodeId,
    log: RaftLog,
    /// Configurations along the log; the current one is in effect.
    conf: ConfHistory,
    /// The voters of the configuration in effect, kept in step with `conf`.
    voters: JointConfig,

    /// Votes received in the current (pre-)election; this node's own vote is not stored here
    /// (see `own_vote`).
    votes: BTreeMap<NodeId, bool>,
    election_elapsed: u32,
    heartbeat_elapsed: u32,
    /// Invariant: in [election_tick, 2 * election_tick).
    randomized_election_timeout: u32,
    /// Ticks since start; the clock of the read lease.
    tick_count: u64,
    rng_state: u64,
    /// After a restart with lease reads enabled, behave for one election timeout as if a leader
    /// had just been heard: the lease a leader holds on this node's promise not to vote
    /// survives the crash.
    restart_vote_guard: bool,

    // Leader state.
    /// Per-member replication progress; empty unless leader.
    progress: BTreeMap<NodeId, Progress>,
    read_only: ReadOnly,
    /// The leadership transfer target (0 for none).
    lead_transferee: NodeId,
    /// A TimeoutNow may still be in flight in this term, so no lease may be trusted again.
    lease_revoked: bool,
    /// Bytes of entries appended in this term and not yet committed.
    uncommitted_bytes: u64,
    /// The index of this leader's no-op: reads and configuration changes wait until it commits.
    term_start_index: Index,

    // Output.
    messages: Vec<Message>,
    persisted_messages: Vec<Message>,
    read_states: Vec<ReadState>,
    /// A snapshot accepted from the leader, to be installed by the application.
    snapshot_to_install: Option<SnapshotMeta>,
    /// The latest snapshot the application holds (taken locally or installed from a leader).
    latest_snapshot: Option<SnapshotMeta>,
    ready_number: u64,
    last_soft_state: SoftState,
    last_hard_state: HardState,
    /// Hard states handed out and not yet durable, with their Ready numbers.
    pending_hard_states: VecDeque<(u64, HardState)>,
    /// The latest hard state known durable: a candidate counts its own vote only from here, so
    /// that a crash cannot make it vote twice in one term (Raft paper §5.2, figure 2).
    durable_hard_state: HardState,
}

impl Raft {
    fn new(config: Config, log: RaftLog, base_conf: ConfState, hard_state: HardState) -> Raft {
        let rng_state = config.seed ^ config.id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut raft = Raft {
            term: hard_state.term,
            vote: hard_state.vote,
            role: Role::Follower,
            leader: NO_NODE,
            log,
            conf: ConfHistory::new(base_conf),
            voters: JointConfig::default(),
            votes: BTreeMap::new(),
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_election_timeout: config.election_tick,
            tick_count: 0,
            rng_state,
            restart_vote_guard: false,
            progress: BTreeMap::new(),
            read_only: ReadOnly::default(),
            lead_transferee: NO_NODE,
            lease_revoked: false,
            uncommitted_bytes: 0,
            term_start_index: 0,
            messages: Vec::new(),
            persisted_messages: Vec::new(),
            read_states: Vec::new(),
            snapshot_to_install: None,
            latest_snapshot: None,
            ready_number: 0,
            last_soft_state: SoftState {
                role: Role::Follower,
                leader: NO_NODE,
            },
            last_hard_state: hard_state,
            pending_hard_states: VecDeque::new(),
            durable_hard_state: hard_state,
            config,
        };
        raft.randomize_election_timeout();
        raft.on_conf_changed();
        raft
    }

    pub fn bootstrap(config: Config, voters: &[NodeId]) -> Result<Raft, ConfigError> {
        config.validate()?;
        let mut sorted = voters.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.is_empty()
            || sorted.len() != voters.len()
            || sorted.contains(&NO_NODE)
            || !sorted.contains(&config.id)
        {
            return Err(ConfigError::BootstrapVoters);
        }
        let change = ConfChange {
            transition: ConfChangeTransition::Auto,
            changes: sorted
                .iter()
                .map(|&node| ConfChangeSingle {
                    kind: ConfChangeKind::AddVoter,
                    node,
                })
                .collect(),
            context: Bytes::new(),
        };
        let entry = Entry {
            term: 1,
            index: 1,
            kind: EntryKind::ConfChange,
            data: change.encode(),
        };
        // The durable state starts empty; the first Ready carries term 1, the entry and the
        // commit index 1.
        let mut raft = Raft::new(
            config,
            RaftLog::restored(0, 0, Vec::new()),
            ConfState::default(),
            HardState::default(),
        );
        raft.term = 1;
        raft.append_as_leader_would(vec![entry]);
        raft.log.commit_to(1);
        Ok(raft)
    }

    pub fn join(config: Config) -> Result<Raft, ConfigError> {
        config.validate()?;
        Ok(Raft::new(
            config,
            RaftLog::restored(0, 0, Vec::new()),
            ConfState::default(),
            HardState::default(),
        ))
    }

    pub fn restore(config: Config, state: RestoreState) -> Result<Raft, RestoreError> {
        config.validate()?;
        let (offset, offset_term, base_conf) = match &state.snapshot {
            Some(meta) => (meta.index, meta.term, meta.conf.clone()),
            None => (0, 0, ConfState::default()),
        };
        let mut prev_index = offset;
        let mut prev_term = offset_term;
        for entry in &state.entries {
            if entry.index != prev_index + 1 {
                return Err(RestoreError::NotContiguous {
                    expected_prev: prev_index,
                    found: entry.index,
                });
            }
            if entry.term < prev_term {
                return Err(RestoreError::TermDecreases {
                    index: entry.index,
                    term: entry.term,
                    prev_term,
                });
            }
            prev_index = entry.index;
            prev_term = entry.term;
        }
        let last_index = prev_index;
        let mut hard_state = state.hard_state;
        if hard_state.term < prev_term {
            // Entries of a later term survived but the hard state written with them did not
            // (the application wrote entries first and crashed in between). The term is known
            // from the log; whether this node voted in it is not, so it votes for nobody in it.
            hard_state.term = prev_term;
            hard_state.vote = UNKNOWN_VOTE;
        }
        if state.applied < offset || state.applied > last_index {
            return Err(RestoreError::AppliedOutOfRange {
                applied: state.applied,
                snapshot_index: offset,
                last_index,
            });
        }
        // Entries the state machine applied were committed, even if the durable commit index
        // lags behind (it is written lazily). A commit index beyond the durable log (its hard
        // state outlived entries written after it) is only a hint: those entries were committed
        // by other members and come back from the leader.
        let commit = hard_state
            .commit
            .max(state.applied)
            .max(offset)
            .min(last_index);
        let lease = config.read_only == ReadOnlyOption::LeaseBased;
        let conf_entries: Vec<(Index, Bytes)> = state
            .entries
            .iter()
            .filter(|entry| entry.kind == EntryKind::ConfChange)
            .map(|entry| (entry.index, entry.data.clone()))
            .collect();
        let log = RaftLog::restored(offset, offset_term, state.entries);
        let mut raft = Raft::new(config, log, base_conf, hard_state);
        for (index, data) in conf_entries {
            raft.conf.push_entry(index, &data);
        }
        raft.on_conf_changed();
        raft.log.set_restored_cursors(commit, state.applied);
        raft.latest_snapshot = state.snapshot;
        raft.restart_vote_guard = lease;
        Ok(raft)
    }

    // ----- small helpers -----

    pub fn id(&self) -> NodeId {
        self.config.id
    }

    pub fn conf_state(&self) -> &ConfState {
        self.conf.current()
    }

    /// Whether this node may campaign. A voter of the configuration in effect may. So may a
    /// voter of the previous configuration while the change that removed (or demoted) it is not
    /// known committed: it may still be needed to elect a leader that commits the change (Raft
    /// thesis §4.2.2); its own vote does not count then. A learner, a node whose removal is
    /// committed, and a node that has not learned any configuration never campaign.
    fn promotable(&self) -> bool {
        let id = self.config.id;
        if self.voters.contains(id) {
            return true;
        }
        let last_change = self.conf.last_change_index();
        last_change > self.log.committed() && self.conf.at(last_change - 1).is_voter(id)
    }

    fn next_random(&mut self) -> u64 {
        // splitmix64: tiny, fast and good enough to spread election timeouts.
        self.rng_state = self.rng_state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng_state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Raft paper §5.2: a randomized timeout in [T, 2T) makes split votes rare.
    fn randomize_election_timeout(&mut self) {
        let election_tick = self.config.election_tick;
        let spread = (self.next_random() % u64::from(election_tick)) as u32;
        self.randomized_election_timeout = election_tick + spread;
    }

    fn send(&mut self, to: NodeId, body: MessageBody) {
        self.messages.push(Message {
            from: self.config.id,
            to,
            term: self.term,
            body,
        });
    }

    /// Sends a response that promises durable state (a vote, an append acknowledgement): it
    /// leaves only after the Ready carrying that state is durable.
    fn send_after_persist(&mut self, to: NodeId, term: Term, body: MessageBody) {
        let message = Message {
            from: self.config.id,
            to,
            term,
            body,
        };
        if self.config.has_defect(DefectKind::AckBeforePersist) {
            self.messages.push(message);
        } else {
            self.persisted_messages.push(message);
        }
    }

    /// Reads forwarded to a follower or started at a node that stops leading are dropped: the
    /// application times them out. Everything else of the leader's state goes too.
    fn reset(&mut self, term: Term) {
        if self.term != term {
            self.term = term;
            self.vote = NO_NODE;
            self.lease_revoked = false;
        }
        self.leader = NO_NODE;
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.randomize_election_timeout();
        self.votes.clear();
        self.progress.clear();
        self.read_only = ReadOnly::default();
        self.lead_transferee = NO_NODE;
        self.uncommitted_bytes = 0;
        self.term_start_index = 0;
    }

    fn become_follower(&mut self, term: Term, leader: NodeId) {
        self.reset(term);
        self.role = Role::Follower;
        self.leader = leader;
    }

    fn become_pre_candidate(&mut self) {
        debug_assert_ne!(self.role, Role::Leader, "a leader does not pre-campaign");
        // Pre-vote changes neither the term nor the vote (Raft thesis §9.6).
        self.votes.clear();
        self.role = Role::PreCandidate;
        self.leader = NO_NODE;
    }

    fn become_candidate(&mut self) {
        debug_assert_ne!(self.role, Role::Leader, "a leader does not campaign");
        self.reset(self.term + 1);
        self.vote = self.config.id;
        self.role = Role::Candidate;
    }

    fn become_leader(&mut self) {
        debug_assert!(
            matches!(self.role, Role::Candidate),
            "only a candidate becomes leader, found {:?}",
            self.role
        );
        self.reset(self.term);
        self.role = Role::Leader;
        self.leader = self.config.id;
        let next_index = self.log.last_index() + 1;
        for id in self.conf.current().all_members() {
            self.progress.insert(id, self.new_progress(id, next_index));
        }
        self.track_members_removed_uncommitted(next_index);
        if let Some(own) = self.progress.get_mut(&self.config.id) {
            own.maybe_update(self.log.persisted());
            own.become_replicate();
        }
        // Raft paper §8: a new leader commits a no-op of its own term, which also commits every
        // earlier entry (§5.4.2) and tells the leader its commit index is current (§6.4).
        self.term_start_index = next_index;
        let noop = Entry {
            term: self.term,
            index: next_index,
            kind: EntryKind::Normal,
            data: Bytes::new(),
        };
        self.append_as_leader_would(vec![noop]);
    }

    /// A new leader also replicates to the members that changes not yet committed removed: such
    /// a member may hold its own removal and, until it learns that the removal committed, it
    /// may still campaign (see [`Raft::promotable`]). Heard from a leader, it does not; without
    /// pre-vote and check-quorum its campaigns would depose every leader before the removal
    /// commits (the Raft dissertation's disruptive server, §4.2.3; simulator seed 42511). It is
    /// forgotten like any removed member ([`Raft::forget_removed_members`]).
    fn track_members_removed_uncommitted(&mut self, next_index: Index) {
        let last_change = self.conf.last_change_index();
        if last_change <= self.log.committed() {
            return;
        }
        let current = self.conf.current().all_members();
        for id in self.conf.members_since(self.log.committed()) {
            if id == self.config.id || current.binary_search(&id).is_ok() {
                continue;
            }
            let mut progress = self.new_progress(id, next_index);
            progress.removed_at = last_change;
            self.progress.insert(id, progress);
        }
    }

    fn new_progress(&self, id: NodeId, next_index: Index) -> Progress {
        Progress::new(
            next_index,
            self.config.max_inflight_msgs,
            self.config.max_inflight_bytes,
            self.conf.current().is_learner(id),
        )
    }

    /// Appends entries at the end of the log (leader proposals, the leader's no-op, the
    /// bootstrap entry), applying any configuration change among them at once.
    fn append_as_leader_would(&mut self, entries: Vec<Entry>) {
        let mut conf_changed = false;
        for entry in &entries {
            if entry.kind == EntryKind::ConfChange {
                conf_changed |= self.conf.push_entry(entry.index, &entry.data);
            }
        }
        self.log.append_owned(entries);
        if conf_changed {
            self.on_conf_changed();
        }
    }

    /// Appends entries received from the leader, replacing a conflicting suffix; configuration
    /// changes in the replaced suffix are reverted (Raft thesis §4.1: the configuration in
    /// effect is the latest in the log, committed or not).
    fn append_from_leader(&mut self, entries: Vec<Entry>) {
        let Some(first) = entries.first() else {
            return;
        };
        let mut conf_changed = self.conf.truncate_from(first.index);
        let changes: Vec<(Index, Bytes)> = entries
            .iter()
            .filter(|entry| entry.kind == EntryKind::ConfChange)
            .map(|entry| (entry.index, entry.data.clone()))
            .collect();
        self.log.append(entries);
        for (index, data) in changes {
            conf_changed |= self.conf.push_entry(index, &data);
        }
        if conf_changed {
            self.on_conf_changed();
        }
    }

    /// Brings the voter sets and (on a leader) the progress map in line with the configuration
    /// in effect.
    fn on_conf_changed(&mut self) {
        let conf = self.conf.current().clone();
        self.voters = JointConfig {
            incoming: conf.voters.clone(),
            outgoing: conf.voters_outgoing.clone(),
        };
        if self.role != Role::Leader {
            return;
        }
        let members = conf.all_members();
        let removal_index = self.conf.last_change_index();
        let own_id = self.config.id;
        self.progress.retain(|id, progress| {
            if members.binary_search(id).is_ok() {
                progress.removed_at = 0;
                return true;
            }
            // A removed member keeps receiving the log and heartbeats until it knows that its
            // removal committed (`forget_removed_members`), so that it does not campaign; this
            // node forgets itself at once.
            if progress.removed_at == 0 {
                progress.removed_at = removal_index;
            }
            *id != own_id
        });
        let next_index = self.log.last_index();
        for id in members {
            if !self.progress.contains_key(&id) {
                let progress = self.new_progress(id, next_index);
                self.progress.insert(id, progress);
            }
            if let Some(progress) = self.progress.get_mut(&id) {
                progress.is_learner = conf.is_learner(id);
            }
        }
        if self.lead_transferee != NO_NODE && !self.voters.contains(self.lead_transferee) {
            self.lead_transferee = NO_NODE;
        }
        // Removing a slow voter can complete a quorum.
        if self.maybe_commit() {
            self.after_commit_advanced();
            self.broadcast_append();
        }
    }

    // ----- time -----

    pub fn tick(&mut self) {
        self.tick_count += 1;
        if self.role == Role::Leader {
            self.tick_leader();
        } else {
            self.tick_election();
        }
    }

    /// etcd's `advanceTicks` (`--initial-election-tick-advance`): `ticks` ticks at once, so a
    /// member that has just started need not wait a whole election timeout before its first
    /// campaign. Skipped while the restart guard of lease reads holds: that guard's full
    /// election timeout is what keeps a lease granted before the crash safe.
    pub fn advance_ticks(&mut self, ticks: u32) {
        if self.restart_vote_guard {
            return;
        }
        for _ in 0..ticks {
            self.tick();
        }
    }

    fn tick_election(&mut self) {
        self.election_elapsed += 1;
        if self.election_elapsed >= self.config.election_tick {
            self.restart_vote_guard = false;
        }
        if self.promotable() && self.election_elapsed >= self.randomized_election_timeout {
            self.election_elapsed = 0;
            self.start_campaign();
        }
    }

    fn tick_leader(&mut self) {
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        if self.election_elapsed >= self.config.election_tick {
            self.election_elapsed = 0;
            // Raft thesis §6.2: a leader that has not heard from a quorum for an election
            // timeout steps down, so a partitioned leader stops serving.
            if self.config.check_quorum && !self.quorum_recently_active() {
                self.become_follower(self.term, NO_NODE);
                return;
            }
            // Raft thesis §3.10: a transfer that did not finish within an election timeout is
            // abandoned so that the leader can accept proposals again.
            self.lead_transferee = NO_NODE;
            self.forget_removed_members();
        }
        if self.heartbeat_elapsed >= self.config.heartbeat_tick {
            self.heartbeat_elapsed = 0;
            self.broadcast_heartbeat();
        }
    }

    /// A removed member is forgotten once its removal is committed and it has had an election
    /// timeout of heartbeats carrying that commit index (so it knows it was removed and never
    /// campaigns again), or after three timeouts if it does not answer.
    fn forget_removed_members(&mut self) {
        let committed = self.log.committed();
        self.progress.retain(|_, pr| {
            if pr.removed_at == 0 || committed < pr.removed_at {
                return true;
            }
            pr.removed_timeouts += 1;
            let informed = pr.match_index >= pr.removed_at && pr.removed_timeouts >= 2;
            !informed && pr.removed_timeouts < 3
        });
    }

    /// Whether a quorum was heard from since the last check; resets the marks for the next one.
    fn quorum_recently_active(&mut self) -> bool {
        let id = self.config.id;
        let progress = &self.progress;
        let result = self.voters.vote_result(|voter| {
            if voter == id {
                return Some(true);
            }
            Some(progress.get(&voter).is_some_and(|pr| pr.recent_active))
        });
        for (peer, pr) in self.progress.iter_mut() {
            pr.recent_active = *peer == id;
        }
        result == VoteResult::Won
    }

    // ----- elections -----

    pub fn campaign_now(&mut self) {
        if self.role == Role::Leader || !self.promotable() {
            return;
        }
        // With lease reads, this node's promise not to help elect anyone while it hears from a
        // leader covers its own candidacy too.
        if self.config.read_only == ReadOnlyOption::LeaseBased && self.in_lease() {
            return;
        }
        self.start_campaign();
    }

    fn start_campaign(&mut self) {
        if self.config.pre_vote {
            self.campaign(CampaignKind::PreElection);
        } else {
            self.campaign(CampaignKind::Election);
        }
    }

    fn campaign(&mut self, kind: CampaignKind) {
        let request_term = if kind == CampaignKind::PreElection {
            self.become_pre_candidate();
            self.term + 1
        } else {
            self.become_candidate();
            self.term
        };
        if self.check_election_result() {
            return;
        }
        let last_log_index = self.log.last_index();
        let last_log_term = self.log.last_term();
        for voter in self.voters.ids() {
            if voter == self.config.id {
                continue;
            }
            let body = match kind {
                CampaignKind::PreElection => MessageBody::PreVote {
                    last_log_index,
                    last_log_term,
                },
                CampaignKind::Election | CampaignKind::Transfer => MessageBody::Vote {
                    last_log_index,
                    last_log_term,
                    leader_transfer: kind == CampaignKind::Transfer,
                },
            };
            // Requests promise nothing and leave at once; only the candidate's own vote waits
            // for its hard state to be durable (see `own_vote`).
            self.messages.push(Message {
                from: self.config.id,
                to: voter,
                term: request_term,
                body,
            });
        }
    }

    /// This node's vote for itself in the current election: a pre-vote always counts, a real
    /// vote only once (term, vote) is durable, so that a crash before the write cannot lead it
    /// to vote for someone else in the same term after it already counted itself.
    fn own_vote(&self) -> Option<bool> {
        match self.role {
            Role::PreCandidate => Some(true),
            Role::Candidate => {
                let durable = self.durable_hard_state;
                (durable.term == self.term && durable.vote == self.config.id).then_some(true)
            }
            _ => None,
        }
    }

    fn tally(&self) -> VoteResult {
        let id = self.config.id;
        let own = self.own_vote();
        self.voters.vote_result(|voter| {
            if voter == id {
                own
            } else {
                self.votes.get(&voter).copied()
            }
        })
    }

    /// Acts on the election's outcome; returns true when it is decided.
    fn check_election_result(&mut self) -> bool {
        match self.tally() {
            // A candidate must not lead a term that is not yet durable on its own disk, even when
            // the other voters already form a quorum: a crash would bring it back in the previous
            // term, it could win the same term again (the voters re-grant to the same candidate)
            // and append different entries under the same (index, term), breaking log matching
            // (found by the simulator, seed 4593 with 5 nodes). `on_persisted` re-checks.
            VoteResult::Won if self.role == Role::Candidate && self.own_vote().is_none() => false,
            VoteResult::Won => {
                if self.role == Role::PreCandidate {
                    self.campaign(CampaignKind::Election);
                } else {
                    self.become_leader();
                    self.broadcast_append();
                }
                true
            }
            VoteResult::Lost => {
                self.become_follower(self.term, NO_NODE);
                true
            }
            VoteResult::Pending => false,
        }
    }

    /// Whether this node currently promises not to vote: it heard from a live leader within
    /// the minimum election timeout (Raft thesis §4.2.3 and §6.2, check-quorum).
    fn in_lease(&self) -> bool {
        self.config.check_quorum
            && self.election_elapsed < self.config.election_tick
            && (self.leader != NO_NODE || self.restart_vote_guard)
    }

    // ----- input -----

    pub fn step(&mut self, message: Message) -> Result<(), StepError> {
        self.validate(&message)?;
        if !self.step_term(&message) {
            return Ok(());
        }
        let Message {
            from, term, body, ..
        } = message;
        match body {
            MessageBody::PreVote {
                last_log_index,
                last_log_term,
            } => self.handle_vote_request(from, term, last_log_index, last_log_term, true),
            MessageBody::Vote {
                last_log_index,
                last_log_term,
                ..
            } => self.handle_vote_request(from, term, last_log_index, last_log_term, false),
            MessageBody::PreVoteResponse { reject } => {
                // A grant carries the requested term (ours + 1); anything else is stale.
                let current = if reject { self.term } else { self.term + 1 };
                if self.role == Role::PreCandidate && term == current {
                    self.votes.entry(from).or_insert(!reject);
                    self.check_election_result();
                }
            }
            MessageBody::VoteResponse { reject } => {
                if self.role == Role::Candidate {
                    self.votes.entry(from).or_insert(!reject);
                    self.check_election_result();
                }
            }
            MessageBody::Append {
                prev_log_index,
                prev_log_term,
                entries,
                commit,
            } => {
                self.follow(from)?;
                return self.handle_append(from, prev_log_index, prev_log_term, entries, commit);
            }
            MessageBody::Heartbeat { commit, read_ctx } => {
                self.follow(from)?;
                self.log.commit_to(commit);
                self.send(from, MessageBody::HeartbeatResponse { read_ctx });
            }
            MessageBody::Snapshot { meta } => {
                self.follow(from)?;
                self.handle_snapshot(from, meta);
            }
            MessageBody::AppendResponse {
                reject,
                index,
                hint_index,
                hint_term,
            } => {
                if self.role == Role::Leader {
                    return self.handle_append_response(from, reject, index, hint_index, hint_term);
                }
            }
            MessageBody::HeartbeatResponse { read_ctx } => {
                if self.role == Role::Leader {
                    self.handle_heartbeat_response(from, read_ctx);
                }
            }
            MessageBody::TimeoutNow => {
                if self.role == Role::Follower && from == self.leader && self.promotable() {
                    self.campaign(CampaignKind::Transfer);
                }
            }
            MessageBody::ReadIndex { ctx } => {
                if self.role == Role::Leader {
                    // A forwarded read that cannot be queued is dropped; the follower's
                    // application times it out.
                    let _ = self.leader_read(ctx, from);
                }
            }
            MessageBody::ReadIndexResponse { ctx, index } => {
                if self.role != Role::Leader && from == self.leader {
                    self.read_states.push(ReadState { ctx, index });
                }
            }
        }
        Ok(())
    }

    /// Rejects input that no correct peer sends, before it can touch any state.
    fn validate(&self, message: &Message) -> Result<(), StepError> {
        if message.to != self.config.id {
            return Err(StepError::WrongRecipient {
                to: message.to,
                id: self.config.id,
            });
        }
        if message.from == NO_NODE || message.from == self.config.id {
            return Err(StepError::InvalidSender { from: message.from });
        }
        let malformed = |reason| {
            Err(StepError::Malformed {
                message: message.body.name(),
                reason,
            })
        };
        if !message_numbers_are_sane(message) {
            return malformed("a term or index is beyond any reachable value");
        }
        match &message.body {
            MessageBody::Append {
                prev_log_index,
                prev_log_term,
                entries,
                ..
            } => {
                let mut expected_index = *prev_log_index;
                let mut previous_term = *prev_log_term;
                for entry in entries {
                    expected_index = match expected_index.checked_add(1) {
                        Some(next) => next,
                        None => return malformed("entry index overflows"),
                    };
                    if entry.index != expected_index {
                        return malformed("entries are not contiguous after prev_log_index");
                    }
                    if entry.term < previous_term {
                        return malformed("entry terms decrease");
                    }
                    if entry.term > message.term {
                        return malformed("entry term is above the message term");
                    }
                    previous_term = entry.term;
                }
            }
            MessageBody::Snapshot { meta } => {
                if meta.index == 0 || meta.term == 0 || meta.term > message.term {
                    return malformed("snapshot index or term is impossible");
                }
                if !confchange::is_well_formed(&meta.conf) || meta.conf.voters.is_empty() {
                    return malformed("snapshot configuration is not well formed");
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Applies the term rules shared by every message (Raft paper §5.1, figure 2 "Rules for
    /// servers"; pre-vote and check-quorum per etcd). Returns false when the message must not
    /// be processed further.
    fn step_term(&mut self, message: &Message) -> bool {
        let from = message.from;
        if message.term > self.term {
            let is_vote_request = match &message.body {
                MessageBody::PreVote { .. } => true,
                MessageBody::Vote {
                    leader_transfer, ..
                } => !leader_transfer,
                _ => false,
            };
            // Raft thesis §4.2.3: a member that hears from a live leader ignores vote requests,
            // so a removed or partitioned member cannot disrupt the cluster. A transfer's vote
            // was ordered by the leader and is honoured.
            if is_vote_request && self.in_lease() {
                return false;
            }
            match &message.body {
                // Pre-vote asks about a future term without moving anyone to it.
                MessageBody::PreVote { .. } => {}
                MessageBody::PreVoteResponse { reject: false } => {}
                MessageBody::Append { .. }
                | MessageBody::Heartbeat { .. }
                | MessageBody::Snapshot { .. } => self.become_follower(message.term, from),
                _ => self.become_follower(message.term, NO_NODE),
            }
            return true;
        }
        if message.term < self.term {
            match &message.body {
                // Raft paper figure 2: answer a stale leader with the current term so that it
                // steps down. It matters most for a leader cut off by a partition or removed
                // from the configuration: no current leader will ever contact it.
                MessageBody::Append { .. } | MessageBody::Heartbeat { .. } => {
                    self.send(
                        from,
                        MessageBody::AppendResponse {
                            reject: false,
                            index: 0,
                            hint_index: 0,
                            hint_term: 0,
                        },
                    );
                }
                // Tell the pre-candidate our term so it can catch up instead of retrying (etcd
                // answers a lower-term pre-vote the same way).
                MessageBody::PreVote { .. } => {
                    self.send_after_persist(
                        from,
                        self.term,
                        MessageBody::PreVoteResponse { reject: true },
                    );
                }
                // Raft paper figure 2, RequestVote: "reply false if term < currentTerm", with the
                // current term, so that the candidate adopts it (§5.1). etcd's raft drops such
                // a request and relies on the higher-term node sending something itself, but a
                // node may never do so: a learner that a pending joint change makes a voter
                // does not campaign, and its term may have been raised by a removed member the
                // candidate does not hear. The candidate would then ask for that vote at a
                // stale term for ever (simulator, seed 4496 with 3 nodes and disk faults).
                // A sender outside our configuration is still ignored, as in etcd: it is most
                // likely a removed member that never learned of its removal, and our term would
                // only let it depose the next leader sooner (thesis §4.2.3; with pre-vote and
                // check-quorum off nothing else stops it, and the simulator's seed 8856 with 3
                // nodes and disk faults lost liveness that way when every sender was answered).
                MessageBody::Vote { .. } if self.conf.current().contains(from) => {
                    self.send_after_persist(
                        from,
                        self.term,
                        MessageBody::VoteResponse { reject: true },
                    );
                }
                _ => {}
            }
            return false;
        }
        true
    }

    /// A message only the leader of the current term sends arrived: follow that leader.
    fn follow(&mut self, from: NodeId) -> Result<(), StepError> {
        match self.role {
            Role::Leader => Err(StepError::Malformed {
                message: "Append",
                reason: "another leader claims this node's term",
            }),
            Role::Follower => {
                self.leader = from;
                self.election_elapsed = 0;
                Ok(())
            }
            Role::PreCandidate | Role::Candidate => {
                self.become_follower(self.term, from);
                Ok(())
            }
        }
    }

    /// Raft paper §5.2 and §5.4.1 (and thesis §9.6 for pre-votes).
    fn handle_vote_request(
        &mut self,
        from: NodeId,
        term: Term,
        last_log_index: Index,
        last_log_term: Term,
        pre_vote: bool,
    ) {
        // One vote per term, and none while following a known leader of this term; a pre-vote
        // for a future term binds nothing.
        let can_vote = self.vote == from
            || (self.vote == NO_NODE && self.leader == NO_NODE)
            || (pre_vote && term > self.term)
            || self.config.has_defect(DefectKind::VoteTwiceInTerm);
        let up_to_date = self.log.is_up_to_date(last_log_index, last_log_term)
            || self.config.has_defect(DefectKind::VoteIgnoresLog);
        let grant = can_vote && up_to_date;
        let (response_term, body) = match (pre_vote, grant) {
            (true, true) => (term, MessageBody::PreVoteResponse { reject: false }),
            (true, false) => (self.term, MessageBody::PreVoteResponse { reject: true }),
            (false, true) => (term, MessageBody::VoteResponse { reject: false }),
            (false, false) => (self.term, MessageBody::VoteResponse { reject: true }),
        };
        if grant && !pre_vote {
            self.election_elapsed = 0;
            self.vote = from;
        }
        self.send_after_persist(from, response_term, body);
    }

    /// Raft paper §5.3: the consistency check, conflict truncation and commit propagation.
    fn handle_append(
        &mut self,
        from: NodeId,
        prev_log_index: Index,
        prev_log_term: Term,
        entries: Vec<Entry>,
        leader_commit: Index,
    ) -> Result<(), StepError> {
        let committed = self.log.committed();
        if prev_log_index < committed {
            // Everything through our commit index matches the leader's log (Leader
            // Completeness), so this is an old message; say where we are.
            self.ack_append(from, committed);
            return Ok(());
        }
        if !self.log.match_term(prev_log_index, prev_log_term) {
            let probe_at = prev_log_index.min(self.log.last_index());
            let (hint_index, hint_term) = self.log.find_conflict_by_term(probe_at, prev_log_term);
            self.send_after_persist(
                from,
                self.term,
                MessageBody::AppendResponse {
                    reject: true,
                    index: prev_log_index,
                    hint_index,
                    hint_term,
                },
            );
            return Ok(());
        }
        let last_new_index = prev_log_index + entries.len() as Index;
        let conflict = self.log.find_conflict(&entries);
        if conflict != 0 {
            if conflict <= committed {
                return Err(StepError::ConflictsWithCommitted {
                    term: self.term,
                    index: conflict,
                });
            }
            let start = (conflict - prev_log_index - 1) as usize;
            let mut entries = entries;
            entries.drain(..start);
            self.append_from_leader(entries);
        }
        // Only what this message proved to match may be committed: our log may hold more
        // entries after it that the leader has not vouched for.
        self.log.commit_to(leader_commit.min(last_new_index));
        self.ack_append(from, last_new_index);
        Ok(())
    }

    fn ack_append(&mut self, to: NodeId, index: Index) {
        self.send_after_persist(
            to,
            self.term,
            MessageBody::AppendResponse {
                reject: false,
                index,
                hint_index: 0,
                hint_term: 0,
            },
        );
    }

    /// Raft paper §7: install the leader's snapshot unless the log already covers it.
    fn handle_snapshot(&mut self, from: NodeId, meta: SnapshotMeta) {
        let committed = self.log.committed();
        if meta.index <= committed {
            self.ack_append(from, committed);
            return;
        }
        if self.log.match_term(meta.index, meta.term) {
            // The log already holds the snapshot's last entry, so it holds everything before
            // it: only the commit index moves.
            self.log.commit_to(meta.index);
            self.ack_append(from, meta.index);
            return;
        }
        self.log.restore_snapshot(&meta);
        self.conf.reset(meta.conf.clone());
        self.on_conf_changed();
        let index = meta.index;
        self.latest_snapshot = Some(meta.clone());
        self.snapshot_to_install = Some(meta);
        self.ack_append(from, index);
    }

    // ----- leader: replication and commit -----

    fn handle_append_response(
        &mut self,
        from: NodeId,
        reject: bool,
        index: Index,
        hint_index: Index,
        hint_term: Term,
    ) -> Result<(), StepError> {
        let last_index = self.log.last_index();
        if !reject && index > last_index {
            return Err(StepError::Malformed {
                message: "AppendResponse",
                reason: "acknowledges an index beyond the leader's log",
            });
        }
        let first_index = self.log.first_index();
        let probe_from = if hint_term > 0 {
            self.log.find_conflict_by_term(hint_index, hint_term).0
        } else {
            hint_index
        };
        let Some(pr) = self.progress.get_mut(&from) else {
            return Ok(());
        };
        pr.recent_active = true;
        if reject {
            if pr.maybe_decrease_to(index, probe_from) {
                if pr.state == ProgressState::Replicate {
                    pr.become_probe();
                }
                self.send_append(from, true);
            }
            return Ok(());
        }
        let was_paused = pr.is_paused();
        if !pr.maybe_update(index) {
            return Ok(());
        }
        match pr.state {
            ProgressState::Probe => pr.become_replicate(),
            ProgressState::Snapshot if pr.match_index + 1 >= first_index => {
                pr.become_probe();
                pr.become_replicate();
            }
            ProgressState::Snapshot => {}
            ProgressState::Replicate => pr.inflights.free_to(index),
        }
        let match_index = pr.match_index;
        if self.maybe_commit() {
            self.after_commit_advanced();
            self.broadcast_append();
        } else if was_paused {
            self.send_append(from, true);
        }
        if self.role != Role::Leader {
            return Ok(());
        }
        while self.send_append(from, false) {}
        if from == self.lead_transferee && match_index == self.log.last_index() {
            self.send(from, MessageBody::TimeoutNow);
        }
        Ok(())
    }

    fn handle_heartbeat_response(&mut self, from: NodeId, round: u64) {
        let last_index = self.log.last_index();
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        pr.probe_sent = false;
        // Everything in flight may have been lost: make room for one message so that the
        // follower's answer (or rejection) restarts the flow.
        if pr.state == ProgressState::Replicate && pr.inflights.full() {
            pr.inflights.free_first();
        }
        let behind = pr.match_index < last_index;
        pr.acked_round = pr.acked_round.max(round.min(self.read_only.last_round()));
        if behind {
            self.send_append(from, true);
        }
        if round > 0 {
            self.confirm_reads();
        }
    }

    /// Raft paper §5.3 and §5.4.2: the commit index is the highest index a quorum has made
    /// durable (in a joint configuration the smaller of both majorities), and only an entry
    /// of the leader's own term is committed by counting replicas.
    ///
    /// One exception: a single-server configuration change entry is also committed once a
    /// majority of the configuration it replaces holds it (what etcd's apply-time
    /// configurations amount to). Any majority of the old and any of the new configuration
    /// overlap, so a later leader, elected under either, has the entry. Without it a
    /// one-voter cluster could never add a second voter: the entry would wait for the new
    /// member, which can only join once the change is committed.
    fn maybe_commit(&mut self) -> bool {
        let progress = &self.progress;
        let acked = |id| progress.get(&id).map_or(0, |pr| pr.match_index);
        let mut quorum_index = self.voters.committed(acked);
        let last_change = self.conf.last_change_index();
        if last_change > self.log.committed() && quorum_index < last_change {
            let before = self.conf.at(last_change - 1);
            let after = self.conf.current();
            if !before.is_joint()
                && !after.is_joint()
                && crate::quorum::majority_committed(&before.voters, acked) >= last_change
            {
                quorum_index = last_change;
            }
        }
        if quorum_index == Index::MAX || quorum_index <= self.log.committed() {
            return false;
        }
        let current_term = self.log.term(quorum_index) == Some(self.term);
        if !current_term && !self.config.has_defect(DefectKind::CommitOldTermByCount) {
            return false;
        }
        let previous_commit = self.log.committed();
        let advanced = self.log.commit_to(quorum_index);
        if advanced {
            let released = self.term_bytes_between(previous_commit, quorum_index);
            self.uncommitted_bytes = self.uncommitted_bytes.saturating_sub(released);
        }
        advanced
    }

    /// Work that follows a commit advance on the leader.
    fn after_commit_advanced(&mut self) {
        if self.log.committed() >= self.term_start_index {
            self.release_reads_waiting_for_term_commit();
        }
        let conf = self.conf.current();
        let joint_auto_leave = conf.is_joint() && conf.auto_leave;
        let conf_committed = self.conf.last_change_index() <= self.log.committed();
        // The joint configuration is committed, so C_new may be proposed (Raft thesis §4.3).
        // Done at commit time rather than apply time: the configuration already took effect
        // when appended, so nothing waits for the application.
        if conf_committed && joint_auto_leave {
            self.append_conf_change(&ConfChange::leave_joint());
        }
        // Raft thesis §4.2.2: a leader that is no longer a voter steps down once the change
        // that removed it is committed.
        if conf_committed && !self.voters.contains(self.config.id) {
            self.step_down_after_removal();
        }
    }

    /// Leaves leadership after a committed configuration without this node: first tells the
    /// members the commit index (so the change is known committed), then hands over to the
    /// most caught-up voter with TimeoutNow so the cluster need not wait for an election
    /// timeout.
    fn step_down_after_removal(&mut self) {
        self.broadcast_append();
        let last_index = self.log.last_index();
        let successor = self
            .progress
            .iter()
            .filter(|(id, pr)| self.voters.contains(**id) && pr.match_index == last_index)
            .map(|(id, _)| *id)
            .next();
        if let Some(successor) = successor {
            self.send(successor, MessageBody::TimeoutNow);
        }
        self.become_follower(self.term, NO_NODE);
    }

    /// Payload bytes of this term's entries in `(after, through]`: what a commit from `after`
    /// to `through` releases from the uncommitted-bytes count.
    fn term_bytes_between(&self, after: Index, through: Index) -> u64 {
        let from = after.max(self.term_start_index.saturating_sub(1)) + 1;
        (from..=through)
            .filter_map(|index| self.log.entry(index))
            .map(|entry| entry.data.len() as u64)
            .sum()
    }

    fn broadcast_append(&mut self) {
        let peers: Vec<NodeId> = self.peer_ids();
        for peer in peers {
            if self.send_append(peer, true) {
                while self.send_append(peer, false) {}
            }
        }
    }

    fn peer_ids(&self) -> Vec<NodeId> {
        let id = self.config.id;
        self.progress
            .keys()
            .copied()
            .filter(|peer| *peer != id)
            .collect()
    }

    /// Sends the next Append to `to` if its progress allows (or a snapshot if the entries it
    /// needs are compacted). An empty Append (to carry the commit index or to probe) is sent
    /// only with `send_if_empty`. Returns whether an Append was sent.
    fn send_append(&mut self, to: NodeId, send_if_empty: bool) -> bool {
        let Some(pr) = self.progress.get(&to) else {
            return false;
        };
        if pr.is_paused() {
            return false;
        }
        let next_index = pr.next_index;
        let prev_log_index = next_index - 1;
        let Some(prev_log_term) = self.log.term(prev_log_index) else {
            self.send_snapshot(to);
            return false;
        };
        let entries = self
            .log
            .slice(next_index, self.log.last_index(), self.config.max_msg_bytes);
        if entries.is_empty() && !send_if_empty {
            return false;
        }
        let entries_bytes: u64 = entries.iter().map(Entry::size_bytes).sum();
        let last = entries.last().map_or(prev_log_index, |entry| entry.index);
        let commit = self.log.committed();
        if let Some(pr) = self.progress.get_mut(&to) {
            pr.sent_append(last, entries.len(), entries_bytes);
        }
        self.send(
            to,
            MessageBody::Append {
                prev_log_index,
                prev_log_term,
                entries,
                commit,
            },
        );
        true
    }

    /// Raft paper §7: a member that needs compacted entries gets the latest snapshot. The data
    /// travels out of band; the application reports the outcome with `report_snapshot`.
    fn send_snapshot(&mut self, to: NodeId) {
        let Some(meta) = self.latest_snapshot.clone() else {
            // Compaction requires a snapshot, so a compacted log always has one.
            debug_assert!(false, "log compacted without a snapshot");
            return;
        };
        if let Some(pr) = self.progress.get_mut(&to) {
            pr.become_snapshot(meta.index);
        }
        self.send(to, MessageBody::Snapshot { meta });
    }

    fn broadcast_heartbeat(&mut self) {
        let lease = self.config.read_only == ReadOnlyOption::LeaseBased;
        let round = self.read_only.start_round(self.tick_count, lease);
        self.broadcast_heartbeat_round(round);
    }

    // ----- proposals -----

    fn check_can_propose(&self) -> Result<(), ProposeError> {
        if self.role != Role::Leader {
            let conf = self.conf.current();
            if !conf.voters.is_empty() && !conf.contains(self.config.id) {
                return Err(ProposeError::Removed);
            }
            return Err(ProposeError::NotLeader {
                leader: (self.leader != NO_NODE).then_some(self.leader),
            });
        }
        if self.lead_transferee != NO_NODE {
            return Err(ProposeError::TransferInProgress {
                to: self.lead_transferee,
            });
        }
        Ok(())
    }

    pub fn propose_batch(&mut self, batch: Vec<Bytes>) -> Result<(Index, Term), ProposeError> {
        self.check_can_propose()?;
        if batch.is_empty() {
            return Err(ProposeError::EmptyBatch);
        }
        let max = self.config.max_proposal_bytes;
        let mut total_bytes = 0u64;
        for data in &batch {
            let size = data.len() as u64;
            if size > max {
                return Err(ProposeError::TooLarge { size, max });
            }
            total_bytes += size;
        }
        self.check_uncommitted_room(total_bytes)?;
        let first_index = self.log.last_index() + 1;
        let term = self.term;
        let entries = batch.into_iter().enumerate().map(|(offset, data)| Entry {
            term,
            index: first_index + offset as Index,
            kind: EntryKind::Normal,
            data,
        });
        self.log.append_owned(entries);
        self.uncommitted_bytes += total_bytes;
        self.broadcast_append();
        Ok((first_index, term))
    }

    /// The uncommitted-bytes cap (etcd's MaxUncommittedEntriesSize): refuse rather than grow
    /// without bound when followers do not keep up. A batch is always accepted when nothing is
    /// uncommitted, so a single large proposal cannot be refused forever.
    fn check_uncommitted_room(&self, bytes: u64) -> Result<(), ProposeError> {
        let max = self.config.max_uncommitted_bytes;
        if self.uncommitted_bytes > 0 && self.uncommitted_bytes + bytes > max {
            return Err(ProposeError::UncommittedFull {
                uncommitted_bytes: self.uncommitted_bytes,
                max,
            });
        }
        Ok(())
    }

    pub fn propose_conf_change(
        &mut self,
        change: ConfChange,
    ) -> Result<(Index, Term), ProposeError> {
        self.check_can_propose()?;
        // Raft thesis §4.1 (and its published errata): a leader must commit an entry of its own
        // term before changing the configuration, and only one change may be uncommitted.
        if self.log.committed() < self.term_start_index {
            return Err(ProposeError::LeaderTermNotCommitted);
        }
        if self.conf.last_change_index() > self.log.committed() {
            return Err(ProposeError::ConfChangePending);
        }
        confchange::apply(self.conf.current(), &change)?;
        self.check_learners_caught_up(&change)?;
        let data = change.encode();
        let size = data.len() as u64;
        if size > self.config.max_proposal_bytes {
            return Err(ProposeError::TooLarge {
                size,
                max: self.config.max_proposal_bytes,
            });
        }
        Ok(self.append_conf_entry(data))
    }

    /// A learner is promoted only once its log is within `learner_catchup_gap` of the
    /// leader's, so that it can count toward a quorum without stalling commits.
    fn check_learners_caught_up(&self, change: &ConfChange) -> Result<(), ProposeError> {
        let conf = self.conf.current();
        let last_index = self.log.last_index();
        for single in &change.changes {
            let promotes = single.kind == ConfChangeKind::AddVoter
                && (conf.is_learner(single.node) || conf.learners_next.contains(&single.node));
            if !promotes {
                continue;
            }
            let match_index = self
                .progress
                .get(&single.node)
                .map_or(0, |pr| pr.match_index);
            if last_index.saturating_sub(match_index) > self.config.learner_catchup_gap {
                return Err(ProposeError::LearnerNotCaughtUp {
                    node: single.node,
                    match_index,
                    last_index,
                    gap: self.config.learner_catchup_gap,
                });
            }
        }
        Ok(())
    }

    /// Appends a configuration change the leader itself decided on (leaving a joint
    /// configuration); the caller broadcasts.
    fn append_conf_change(&mut self, change: &ConfChange) {
        let index = self.log.last_index() + 1;
        self.append_as_leader_would(vec![Entry {
            term: self.term,
            index,
            kind: EntryKind::ConfChange,
            data: change.encode(),
        }]);
    }

    fn append_conf_entry(&mut self, data: Bytes) -> (Index, Term) {
        let index = self.log.last_index() + 1;
        let term = self.term;
        self.append_as_leader_would(vec![Entry {
            term,
            index,
            kind: EntryKind::ConfChange,
            data,
        }]);
        self.broadcast_append();
        (index, term)
    }

    // ----- reads -----

    pub fn read_index(&mut self, ctx: u64) -> Result<(), ReadError> {
        if self.role == Role::Leader {
            return self.leader_read(ctx, self.config.id);
        }
        if self.leader == NO_NODE {
            return Err(ReadError::NoLeader);
        }
        self.send(self.leader, MessageBody::ReadIndex { ctx });
        Ok(())
    }

    /// Raft thesis §6.4: the read index is the commit index once this node is sure it is
    /// still the leader, and once its commit index is known to be current.
    fn leader_read(&mut self, ctx: u64, from: NodeId) -> Result<(), ReadError> {
        if self.read_only.is_full() {
            return Err(ReadError::TooManyPending {
                pending: self.read_only.pending_count(),
            });
        }
        // Until the leader commits an entry of its term, its commit index may be behind what
        // earlier leaders committed (and acknowledged to clients).
        if self.log.committed() < self.term_start_index {
            self.read_only.wait_for_term_commit(ctx, from);
            return Ok(());
        }
        self.read_after_term_commit(ctx, from);
        Ok(())
    }

    fn read_after_term_commit(&mut self, ctx: u64, from: NodeId) {
        let index = self.log.committed();
        let only_voter = self.voters.ids() == [self.config.id];
        if only_voter
            || self.lease_read_allowed()
            || self.config.has_defect(DefectKind::ReadWithoutQuorum)
        {
            self.answer_read(ReadRequest {
                ctx,
                from,
                index,
                round: 0,
            });
            return;
        }
        let lease = self.config.read_only == ReadOnlyOption::LeaseBased;
        let round = self.read_only.start_round(self.tick_count, lease);
        self.read_only.add_pending(ReadRequest {
            ctx,
            from,
            index,
            round,
        });
        self.broadcast_heartbeat_round(round);
    }

    fn broadcast_heartbeat_round(&mut self, round: u64) {
        let committed = self.log.committed();
        for peer in self.peer_ids() {
            let match_index = self.progress.get(&peer).map_or(0, |pr| pr.match_index);
            // A follower may lack entries up to our commit index; it may only commit what it
            // is known to match.
            self.send(
                peer,
                MessageBody::Heartbeat {
                    commit: committed.min(match_index),
                    read_ctx: round,
                },
            );
        }
    }

    fn lease_read_allowed(&self) -> bool {
        self.config.read_only == ReadOnlyOption::LeaseBased
            && self.config.check_quorum
            && !self.lease_revoked
            && self.lead_transferee == NO_NODE
            && self.read_only.lease_valid(self.tick_count)
    }

    fn answer_read(&mut self, request: ReadRequest) {
        if request.from == self.config.id {
            self.read_states.push(ReadState {
                ctx: request.ctx,
                index: request.index,
            });
        } else {
            self.send(
                request.from,
                MessageBody::ReadIndexResponse {
                    ctx: request.ctx,
                    index: request.index,
                },
            );
        }
    }

    fn release_reads_waiting_for_term_commit(&mut self) {
        for (ctx, from) in self.read_only.take_waiting_for_term_commit() {
            self.read_after_term_commit(ctx, from);
        }
    }

    /// The highest heartbeat round a quorum acknowledged confirms every read of that round and
    /// before, and renews the lease.
    fn confirm_reads(&mut self) {
        let id = self.config.id;
        let last_round = self.read_only.last_round();
        let progress = &self.progress;
        let confirmed = self.voters.committed(|voter| {
            if voter == id {
                last_round
            } else {
                progress.get(&voter).map_or(0, |pr| pr.acked_round)
            }
        });
        let confirmed = confirmed.min(last_round);
        let lease_ticks = u64::from(
            self.config
                .election_tick
                .saturating_sub(self.config.lease_drift_ticks),
        );
        for request in self.read_only.confirm(confirmed, lease_ticks) {
            self.answer_read(request);
        }
    }

    // ----- leadership transfer -----

    pub fn transfer_leader(&mut self, to: NodeId) -> Result<(), TransferError> {
        if self.role != Role::Leader {
            return Err(TransferError::NotLeader {
                leader: (self.leader != NO_NODE).then_some(self.leader),
            });
        }
        if to == self.config.id {
            return Err(TransferError::AlreadyLeader);
        }
        if !self.voters.contains(to) {
            return Err(TransferError::NotVoter(to));
        }
        if self.lead_transferee == to {
            return Ok(());
        }
        self.lead_transferee = to;
        // The transfer gets one election timeout to complete (Raft thesis §3.10).
        self.election_elapsed = 0;
        // The target's election may succeed while voters still count as hearing from us, so
        // the lease promise no longer holds for the rest of this term.
        self.lease_revoked = true;
        self.read_only.revoke_lease();
        let caught_up = self
            .progress
            .get(&to)
            .is_some_and(|pr| pr.match_index == self.log.last_index());
        if caught_up {
            self.send(to, MessageBody::TimeoutNow);
        } else {
            self.send_append(to, true);
        }
        Ok(())
    }

    // ----- output and feedback -----

    pub fn has_ready(&self) -> bool {
        self.soft_state() != self.last_soft_state
            || self.hard_state() != self.last_hard_state
            || self.snapshot_to_install.is_some()
            || self.log.has_unstable()
            || !self.messages.is_empty()
            || !self.persisted_messages.is_empty()
            || self.log.has_next_committed()
            || !self.read_states.is_empty()
    }

    fn soft_state(&self) -> SoftState {
        SoftState {
            role: self.role,
            leader: self.leader,
        }
    }

    fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.log.committed(),
        }
    }

    pub fn ready(&mut self) -> Ready {
        self.ready_number += 1;
        let number = self.ready_number;
        let soft = self.soft_state();
        let soft_state = (soft != self.last_soft_state).then_some(soft);
        self.last_soft_state = soft;
        let hard = self.hard_state();
        let hard_state = (hard != self.last_hard_state).then_some(hard);
        if hard_state.is_some() {
            self.last_hard_state = hard;
            self.pending_hard_states.push_back((number, hard));
        }
        let snapshot = self.snapshot_to_install.take();
        let entries = self.log.take_unstable();
        let write_first = snapshot
            .as_ref()
            .map(|meta| meta.index)
            .or(entries.first().map(|entry| entry.index));
        if let Some(first) = write_first {
            let last = entries
                .last()
                .map(|entry| entry.index)
                .or(snapshot.as_ref().map(|meta| meta.index))
                .unwrap_or(first);
            self.log.record_write(number, first, last);
        }
        let committed_entries = self
            .log
            .next_committed(self.config.max_committed_bytes_per_ready);
        Ready {
            number,
            soft_state,
            hard_state,
            snapshot,
            entries,
            messages: std::mem::take(&mut self.messages),
            persisted_messages: std::mem::take(&mut self.persisted_messages),
            committed_entries,
            read_states: std::mem::take(&mut self.read_states),
        }
    }

    pub fn on_persisted(&mut self, ready_number: u64) {
        let ready_number = ready_number.min(self.ready_number);
        while let Some(&(number, hard)) = self.pending_hard_states.front() {
            if number > ready_number {
                break;
            }
            self.durable_hard_state = hard;
            self.pending_hard_states.pop_front();
        }
        let moved = self.log.on_persisted(ready_number);
        match self.role {
            Role::Leader if moved => {
                let persisted = self.log.persisted();
                if let Some(own) = self.progress.get_mut(&self.config.id) {
                    own.maybe_update(persisted);
                }
                if self.maybe_commit() {
                    self.after_commit_advanced();
                    self.broadcast_append();
                }
            }
            Role::Candidate => {
                self.check_election_result();
            }
            _ => {}
        }
    }

    pub fn on_applied(&mut self, index: Index) {
        self.log.applied_to(index);
    }

    pub fn report_snapshot(&mut self, to: NodeId, ok: bool) {
        if self.role != Role::Leader {
            return;
        }
        let Some(pr) = self.progress.get_mut(&to) else {
            return;
        };
        if pr.state != ProgressState::Snapshot {
            return;
        }
        if !ok {
            pr.pending_snapshot = 0;
        }
        // etcd: after a snapshot, wait for the member's answer (or a heartbeat response)
        // before sending more.
        pr.become_probe();
        pr.probe_sent = true;
    }

    pub fn report_unreachable(&mut self, to: NodeId) {
        if let Some(pr) = self.progress.get_mut(&to)
            && pr.state == ProgressState::Replicate
        {
            pr.become_probe();
        }
    }

    pub fn snapshot_meta(&self, index: Index) -> Option<SnapshotMeta> {
        if let Some(latest) = &self.latest_snapshot
            && latest.index == index
        {
            return Some(latest.clone());
        }
        if index > self.log.applied() {
            return None;
        }
        let term = self.log.term(index)?;
        Some(SnapshotMeta {
            index,
            term,
            conf: self.conf.at(index).clone(),
        })
    }

    pub fn snapshot_taken(&mut self, meta: SnapshotMeta) {
        if self.snapshot_meta(meta.index).as_ref() != Some(&meta) {
            return;
        }
        if self
            .latest_snapshot
            .as_ref()
            .is_none_or(|latest| latest.index < meta.index)
        {
            self.latest_snapshot = Some(meta);
        }
    }

    pub fn compact(&mut self, index: Index) -> Result<(), CompactError> {
        if index < self.log.first_index() {
            return Ok(());
        }
        let applied = self.log.applied();
        if index > applied {
            return Err(CompactError::AboveApplied { index, applied });
        }
        let snapshot = self.latest_snapshot.as_ref().map_or(0, |meta| meta.index);
        if index > snapshot {
            return Err(CompactError::AboveSnapshot { index, snapshot });
        }
        self.log.compact(index);
        self.conf.compact_to(index);
        Ok(())
    }

    pub fn status(&self) -> Status {
        Status {
            id: self.config.id,
            role: self.role,
            term: self.term,
            vote: self.vote,
            leader: self.leader,
            commit: self.log.committed(),
            applied: self.log.applied(),
            persisted: self.log.persisted(),
            first_index: self.log.first_index(),
            last_index: self.log.last_index(),
            conf: self.conf.current().clone(),
            progress: self
                .progress
                .iter()
                .map(|(id, pr)| (*id, pr.status()))
                .collect(),
            lead_transferee: (self.lead_transferee != NO_NODE).then_some(self.lead_transferee),
        }
    }
}
