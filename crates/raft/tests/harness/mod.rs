//! An in-memory cluster for tests: each member is a real `RaftNode` with a durable store that
//! follows the Ready contract, a FIFO network that can be partitioned, and a trace of
//! everything that happened, in a readable form that the scenario scripts check in.
#![allow(dead_code)]

use ballot_raft::*;
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

/// What a member has made durable, per the Ready contract.
#[derive(Clone, Debug, Default)]
pub struct Store {
    pub hard_state: HardState,
    pub snapshot: Option<SnapshotMeta>,
    pub entries: Vec<Entry>,
}

impl Store {
    fn apply_ready(&mut self, ready: &Ready) {
        if let Some(meta) = &ready.snapshot {
            self.snapshot = Some(meta.clone());
            self.entries.clear();
        }
        if let Some(first) = ready.entries.first() {
            self.entries.retain(|entry| entry.index < first.index);
            self.entries.extend(ready.entries.iter().cloned());
        }
        if let Some(hard_state) = ready.hard_state {
            self.hard_state = hard_state;
        }
    }

    fn compact(&mut self, meta: &SnapshotMeta) {
        self.entries.retain(|entry| entry.index > meta.index);
        self.snapshot = Some(meta.clone());
    }
}

pub struct Member {
    pub node: RaftNode,
    pub config: Config,
    pub store: Store,
    /// Applied entries' payloads by index (the state machine).
    pub applied: BTreeMap<Index, Entry>,
    pub applied_index: Index,
    pub read_states: Vec<ReadState>,
    pub crashed: bool,
    /// With asynchronous persistence: Readys handed out but not yet durable, in order (only
    /// their snapshot, hard state, entries and persisted messages are kept).
    pub pending_writes: std::collections::VecDeque<Ready>,
    /// The initial voters for a bootstrapped member (bootstrapped again if it crashes before its
    /// first Ready is durable).
    pub bootstrap_voters: Option<Vec<NodeId>>,
}

pub struct Cluster {
    pub members: BTreeMap<NodeId, Member>,
    /// Messages in flight, in send order.
    pub network: Vec<Message>,
    /// Pairs (from, to) whose messages are dropped.
    pub blocked: BTreeSet<(NodeId, NodeId)>,
    pub template: Config,
    pub trace: String,
    /// When set, a Ready's writes become durable only when `flush` says so, and a crash loses
    /// whatever was not flushed; otherwise every Ready is durable as soon as it is handled.
    pub async_persist: bool,
}

impl Cluster {
    /// `count` voters (ids 1..=count) bootstrapped together, all configured from `template`.
    pub fn new(count: u64, template: Config) -> Cluster {
        let voters: Vec<NodeId> = (1..=count).collect();
        let mut cluster = Cluster {
            members: BTreeMap::new(),
            network: Vec::new(),
            blocked: BTreeSet::new(),
            template,
            trace: String::new(),
            async_persist: false,
        };
        for &id in &voters {
            let config = cluster.config_for(id);
            let node = RaftNode::bootstrap(config.clone(), &voters).expect("valid bootstrap");
            cluster.insert(id, node, config);
            if let Some(member) = cluster.members.get_mut(&id) {
                member.bootstrap_voters = Some(voters.clone());
            }
        }
        cluster
    }

    pub fn config_for(&self, id: NodeId) -> Config {
        let mut config = self.template.clone();
        config.id = id;
        config.seed = id;
        config
    }

    fn insert(&mut self, id: NodeId, node: RaftNode, config: Config) {
        self.members.insert(
            id,
            Member {
                node,
                config,
                store: Store::default(),
                applied: BTreeMap::new(),
                applied_index: 0,
                read_states: Vec::new(),
                crashed: false,
                pending_writes: std::collections::VecDeque::new(),
                bootstrap_voters: None,
            },
        );
    }

    /// A new, empty member that waits for the leader.
    pub fn add_joiner(&mut self, id: NodeId) {
        let config = self.config_for(id);
        let node = RaftNode::join(config.clone()).expect("valid config");
        self.insert(id, node, config);
    }

    pub fn node(&mut self, id: NodeId) -> &mut RaftNode {
        &mut self.members.get_mut(&id).expect("no such member").node
    }

    pub fn status(&self, id: NodeId) -> Status {
        self.members[&id].node.status()
    }

    /// The live leader of the highest term, if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.members
            .iter()
            .filter(|(_, member)| !member.crashed)
            .map(|(id, member)| (*id, member.node.status()))
            .filter(|(_, status)| status.role == Role::Leader)
            .max_by_key(|(_, status)| status.term)
            .map(|(id, _)| id)
    }

    fn log(&mut self, line: impl AsRef<str>) {
        self.trace.push_str(line.as_ref());
        self.trace.push('\n');
    }

    pub fn take_trace(&mut self) -> String {
        std::mem::take(&mut self.trace)
    }

    /// Handles one Ready of `id` following the contract; returns whether there was one.
    pub fn process_ready(&mut self, id: NodeId) -> bool {
        let member = self.members.get_mut(&id).expect("no such member");
        if member.crashed || !member.node.has_ready() {
            return false;
        }
        let mut ready = member.node.ready();
        if let Some(meta) = &ready.snapshot {
            member.applied_index = meta.index;
            member.applied.retain(|index, _| *index <= meta.index);
        }
        for entry in &ready.committed_entries {
            assert_eq!(
                entry.index,
                member.applied_index + 1,
                "node {id} applies out of order"
            );
            member.applied_index = entry.index;
            member.applied.insert(entry.index, entry.clone());
        }
        member.read_states.extend(ready.read_states.iter().copied());
        member.node.on_applied(member.applied_index);
        let text = format_ready(id, &ready);
        self.network.append(&mut ready.messages);
        let write = Ready {
            messages: Vec::new(),
            committed_entries: Vec::new(),
            read_states: Vec::new(),
            ..ready
        };
        member.pending_writes.push_back(write);
        self.log(text);
        if !self.async_persist {
            self.flush(id, usize::MAX);
        }
        true
    }

    /// Makes the oldest `count` pending writes of `id` durable, reports them and releases the
    /// messages that waited for them.
    pub fn flush(&mut self, id: NodeId, count: usize) {
        let member = self.members.get_mut(&id).expect("no such member");
        let mut last_number = None;
        for _ in 0..count {
            let Some(write) = member.pending_writes.pop_front() else {
                break;
            };
            member.store.apply_ready(&write);
            last_number = Some(write.number);
            self.network.extend(write.persisted_messages);
        }
        if let Some(number) = last_number {
            member.node.on_persisted(number);
        }
    }

    /// Delivers every message in flight (to `only` if given) once, in order.
    pub fn deliver(&mut self, only: Option<NodeId>) -> usize {
        let (now, later): (Vec<Message>, Vec<Message>) = std::mem::take(&mut self.network)
            .into_iter()
            .partition(|message| only.is_none_or(|id| message.to == id));
        self.network = later;
        let count = now.len();
        for message in now {
            self.deliver_one(message);
        }
        count
    }

    pub fn deliver_one(&mut self, message: Message) {
        let text = format_message(&message);
        let reachable = self
            .members
            .get(&message.to)
            .is_some_and(|member| !member.crashed);
        if !reachable || self.blocked.contains(&(message.from, message.to)) {
            self.log(format!("  dropped {text}"));
            self.report_dropped(&message);
            return;
        }
        self.log(format!("  deliver {text}"));
        let is_snapshot = matches!(message.body, MessageBody::Snapshot { .. });
        let (from, to) = (message.from, message.to);
        let result = self.node(to).step(message);
        if let Err(error) = &result {
            self.log(format!("    step error: {error}"));
        }
        // The snapshot's data is streamed with the message; report the outcome to the sender.
        if is_snapshot && let Some(sender) = self.members.get_mut(&from) {
            sender.node.report_snapshot(to, result.is_ok());
        }
    }

    /// A lost snapshot offer is a failed transfer: the sender's application must say so, or the
    /// member stays in snapshot state.
    pub fn report_dropped(&mut self, message: &Message) {
        if matches!(message.body, MessageBody::Snapshot { .. })
            && let Some(sender) = self.members.get_mut(&message.from)
            && !sender.crashed
        {
            sender.node.report_snapshot(message.to, false);
        }
    }

    /// Processes Readys and delivers messages until nothing moves.
    pub fn stabilize(&mut self) {
        for _ in 0..10_000 {
            let ids: Vec<NodeId> = self.members.keys().copied().collect();
            let mut moved = false;
            for id in ids {
                moved |= self.process_ready(id);
                moved |= !self.members[&id].pending_writes.is_empty();
                self.flush(id, usize::MAX);
            }
            moved |= self.deliver(None) > 0;
            if !moved {
                return;
            }
        }
        panic!("cluster did not stabilize");
    }

    /// Like `stabilize`, but one message at a time, stopping as soon as `done` holds.
    pub fn stabilize_until(&mut self, done: impl Fn(&Cluster) -> bool) {
        for _ in 0..100_000 {
            if done(self) {
                return;
            }
            let ids: Vec<NodeId> = self.members.keys().copied().collect();
            let mut moved = false;
            for id in ids {
                moved |= self.process_ready(id);
                if done(self) {
                    return;
                }
            }
            if !self.network.is_empty() {
                let message = self.network.remove(0);
                self.deliver_one(message);
                moved = true;
            }
            assert!(moved, "the cluster went quiet before the condition held");
        }
        panic!("condition never reached");
    }

    pub fn tick(&mut self, id: NodeId, ticks: u32) {
        for _ in 0..ticks {
            self.node(id).tick();
        }
    }

    /// Drops all traffic between the groups (each node may appear in one group).
    pub fn partition(&mut self, groups: &[Vec<NodeId>]) {
        self.blocked.clear();
        for (a, group_a) in groups.iter().enumerate() {
            for (b, group_b) in groups.iter().enumerate() {
                if a == b {
                    continue;
                }
                for &from in group_a {
                    for &to in group_b {
                        self.blocked.insert((from, to));
                    }
                }
            }
        }
    }

    pub fn heal(&mut self) {
        self.blocked.clear();
    }

    /// Loses everything not yet durable (nothing: this harness persists synchronously, so a
    /// crash loses the in-memory node and the messages in flight to it).
    pub fn crash(&mut self, id: NodeId) {
        let member = self.members.get_mut(&id).expect("no such member");
        member.crashed = true;
        member.pending_writes.clear();
        let (lost, kept): (Vec<Message>, Vec<Message>) = std::mem::take(&mut self.network)
            .into_iter()
            .partition(|message| message.to == id || message.from == id);
        self.network = kept;
        for message in &lost {
            self.report_dropped(message);
        }
    }

    pub fn restart(&mut self, id: NodeId) {
        let member = self.members.get_mut(&id).expect("no such member");
        let applied = member.store.snapshot.as_ref().map_or(0, |meta| meta.index);
        let state = RestoreState {
            hard_state: member.store.hard_state,
            snapshot: member.store.snapshot.clone(),
            entries: member.store.entries.clone(),
            applied,
        };
        let nothing_durable = state.hard_state == HardState::default()
            && state.snapshot.is_none()
            && state.entries.is_empty();
        member.node = match (&member.bootstrap_voters, nothing_durable) {
            (Some(voters), true) => {
                RaftNode::bootstrap(member.config.clone(), voters).expect("valid bootstrap")
            }
            _ => RaftNode::restore(member.config.clone(), state).expect("restore"),
        };
        member.applied.retain(|index, _| *index <= applied);
        member.applied_index = applied;
        member.crashed = false;
    }

    /// Takes a snapshot at `index` on `id` and compacts its log there.
    pub fn compact(&mut self, id: NodeId, index: Index) -> Result<(), String> {
        let member = self.members.get_mut(&id).expect("no such member");
        let meta = member
            .node
            .snapshot_meta(index)
            .ok_or_else(|| format!("no snapshot possible at {index}"))?;
        member.node.snapshot_taken(meta.clone());
        member
            .node
            .compact(index)
            .map_err(|error| error.to_string())?;
        member.store.compact(&meta);
        Ok(())
    }

    pub fn propose(&mut self, id: NodeId, data: &str) -> Result<(Index, Term), ProposeError> {
        self.node(id)
            .propose(Bytes::copy_from_slice(data.as_bytes()))
    }

    /// The payloads a member applied, in order (no-ops and configuration changes left out).
    pub fn applied_data(&self, id: NodeId) -> Vec<String> {
        self.members[&id]
            .applied
            .values()
            .filter(|entry| entry.kind == EntryKind::Normal && !entry.data.is_empty())
            .map(|entry| String::from_utf8_lossy(&entry.data).into_owned())
            .collect()
    }

    /// (index, term) of every durable log entry of a member.
    pub fn log_terms(&self, id: NodeId) -> Vec<(Index, Term)> {
        self.members[&id]
            .store
            .entries
            .iter()
            .map(|entry| (entry.index, entry.term))
            .collect()
    }
}

pub fn format_entry(entry: &Entry) -> String {
    let body = match entry.kind {
        EntryKind::Normal => format!("{:?}", String::from_utf8_lossy(&entry.data)),
        EntryKind::ConfChange => match ConfChange::decode(&entry.data) {
            Ok(change) => format!("conf({})", format_conf_change(&change)),
            Err(error) => format!("conf(undecodable: {error})"),
        },
    };
    format!("{}/{} {body}", entry.index, entry.term)
}

pub fn format_conf_change(change: &ConfChange) -> String {
    if change.changes.is_empty() {
        return "leave-joint".to_string();
    }
    let mut out = match change.transition {
        ConfChangeTransition::Auto => String::new(),
        ConfChangeTransition::JointImplicit => "implicit ".to_string(),
        ConfChangeTransition::JointExplicit => "explicit ".to_string(),
    };
    let parts: Vec<String> = change
        .changes
        .iter()
        .map(|single| {
            let prefix = match single.kind {
                ConfChangeKind::AddVoter => "v",
                ConfChangeKind::AddLearner => "l",
                ConfChangeKind::Remove => "r",
            };
            format!("{prefix}{}", single.node)
        })
        .collect();
    out.push_str(&parts.join(" "));
    out
}

pub fn format_conf(conf: &ConfState) -> String {
    let ids = |ids: &[NodeId]| {
        ids.iter()
            .map(|id| id.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut out = format!("voters=({})", ids(&conf.voters));
    if conf.is_joint() {
        let _ = write!(out, "&&({})", ids(&conf.voters_outgoing));
    }
    if !conf.learners.is_empty() {
        let _ = write!(out, " learners=({})", ids(&conf.learners));
    }
    if !conf.learners_next.is_empty() {
        let _ = write!(out, " learners_next=({})", ids(&conf.learners_next));
    }
    if conf.auto_leave {
        out.push_str(" autoleave");
    }
    out
}

fn format_entries(entries: &[Entry]) -> String {
    entries
        .iter()
        .map(format_entry)
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn format_message(message: &Message) -> String {
    let head = format!(
        "{}->{} {} term={}",
        message.from,
        message.to,
        message.body.name(),
        message.term
    );
    let details = match &message.body {
        MessageBody::PreVote {
            last_log_index,
            last_log_term,
        } => format!("last={last_log_index}/{last_log_term}"),
        MessageBody::Vote {
            last_log_index,
            last_log_term,
            leader_transfer,
        } => {
            let transfer = if *leader_transfer { " transfer" } else { "" };
            format!("last={last_log_index}/{last_log_term}{transfer}")
        }
        MessageBody::PreVoteResponse { reject } | MessageBody::VoteResponse { reject } => {
            if *reject { "reject" } else { "grant" }.to_string()
        }
        MessageBody::Append {
            prev_log_index,
            prev_log_term,
            entries,
            commit,
        } => format!(
            "prev={prev_log_index}/{prev_log_term} commit={commit} [{}]",
            format_entries(entries)
        ),
        MessageBody::AppendResponse {
            reject,
            index,
            hint_index,
            hint_term,
        } => {
            if *reject {
                format!("reject index={index} hint={hint_index}/{hint_term}")
            } else {
                format!("index={index}")
            }
        }
        MessageBody::Heartbeat { commit, read_ctx } => format!("commit={commit} round={read_ctx}"),
        MessageBody::HeartbeatResponse { read_ctx } => format!("round={read_ctx}"),
        MessageBody::Snapshot { meta } => format!(
            "snapshot={}/{} {}",
            meta.index,
            meta.term,
            format_conf(&meta.conf)
        ),
        MessageBody::TimeoutNow => String::new(),
        MessageBody::ReadIndex { ctx } => format!("ctx={ctx}"),
        MessageBody::ReadIndexResponse { ctx, index } => format!("ctx={ctx} index={index}"),
    };
    if details.is_empty() {
        head
    } else {
        format!("{head} {details}")
    }
}

fn format_ready(id: NodeId, ready: &Ready) -> String {
    let mut out = format!("> {id} ready");
    if let Some(soft) = ready.soft_state {
        let _ = write!(out, "\n  role: {:?} leader={}", soft.role, soft.leader);
    }
    if let Some(hard) = ready.hard_state {
        let _ = write!(
            out,
            "\n  hard state: term={} vote={} commit={}",
            hard.term, hard.vote, hard.commit
        );
    }
    if let Some(meta) = &ready.snapshot {
        let _ = write!(
            out,
            "\n  install snapshot: {}/{} {}",
            meta.index,
            meta.term,
            format_conf(&meta.conf)
        );
    }
    if !ready.entries.is_empty() {
        let _ = write!(out, "\n  persist: {}", format_entries(&ready.entries));
    }
    if !ready.committed_entries.is_empty() {
        let _ = write!(
            out,
            "\n  apply: {}",
            format_entries(&ready.committed_entries)
        );
    }
    for message in &ready.messages {
        let _ = write!(out, "\n  send: {}", format_message(message));
    }
    for message in &ready.persisted_messages {
        let _ = write!(out, "\n  send after persist: {}", format_message(message));
    }
    for read in &ready.read_states {
        let _ = write!(out, "\n  read ready: ctx={} index={}", read.ctx, read.index);
    }
    out
}

pub fn format_status(status: &Status) -> String {
    let mut out = format!(
        "{} {:?} term={} vote={} leader={} commit={} applied={} persisted={} log=[{}, {}] {}",
        status.id,
        status.role,
        status.term,
        status.vote,
        status.leader,
        status.commit,
        status.applied,
        status.persisted,
        status.first_index,
        status.last_index,
        format_conf(&status.conf)
    );
    if let Some(to) = status.lead_transferee {
        let _ = write!(out, " transferring-to={to}");
    }
    for (id, progress) in &status.progress {
        let _ = write!(
            out,
            "\n  {id}: {:?} match={} next={}{}{}",
            progress.state,
            progress.match_index,
            progress.next_index,
            if progress.is_learner { " learner" } else { "" },
            if progress.inflight_msgs > 0 {
                format!(" inflight={}", progress.inflight_msgs)
            } else {
                String::new()
            }
        );
    }
    out
}
