//! Everything a run shares besides the hosts themselves: the clock, the generator, the network,
//! the safety checker, the client history and the requests clients are waiting on.
//!
//! Hosts receive `&mut World` when they run, so they can send messages and answer clients while
//! the simulation keeps the hosts in their own map (no shared ownership needed).

use std::collections::BTreeMap;

use ballot_raft::{Index, Message, MessageBody, NodeId};
use bytes::Bytes;

use crate::history::{Call, HistoryRecorder, Key, OperationId, Return, Value};
use crate::host::SimMessage;
use crate::invariants::SafetyChecker;
use crate::kv::{Applied, KvStore};
use crate::network::{Envelope, Network, SendOutcome, Time};
use crate::rng::SimRng;
use crate::trace::Trace;

/// What a client is waiting for at a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    /// A write or compare-and-set accepted by a leader: answered when that node applies it.
    Proposal,
    /// A linearizable read: answered once the read index is known and applied.
    Read { index: Option<Index> },
}

/// A client operation accepted by one incarnation of one node.
#[derive(Clone, Copy, Debug)]
pub struct Request {
    pub client: usize,
    pub operation: OperationId,
    pub key: Key,
    pub node: NodeId,
    pub incarnation: u32,
    pub kind: RequestKind,
    pub deadline: Time,
}

/// Counters that show what a run exercised.
#[derive(Clone, Debug, Default)]
pub struct RunStats {
    pub messages_sent: u64,
    pub messages_dropped: u64,
    pub leaders_elected: u64,
    pub crashes: u64,
    /// Nodes stopped by an injected disk error (`--disk-faults`); counted in `crashes` too.
    pub io_errors: u64,
    /// WAL reopenings (`--disk-faults`), those that cut a torn tail, and those that found more
    /// than had been reported durable (unsynced writes that survived the crash).
    pub wal_recoveries: u64,
    pub torn_tails: u64,
    /// Crashes that hit a node while bytes it had written were on its disk unsynced.
    pub crashes_with_unsynced_writes: u64,
    /// Syncs that completed while an earlier sync was still outstanding.
    pub syncs_completed_early: u64,
    pub recovered_beyond_promise: u64,
    pub partitions: u64,
    pub pauses: u64,
    pub snapshots_sent: u64,
    pub conf_changes_proposed: u64,
    pub transfers: u64,
    pub operations_completed: u64,
    pub operations_unknown: u64,
    /// Starts at which a node advanced its election clock (`SimOptions::tick_advance`).
    pub tick_advances: u64,
    /// 1 when the run used lease reads.
    pub lease_read_runs: u64,
}

/// A client's side of the conversation.
#[derive(Clone, Debug)]
pub struct Client {
    pub id: u64,
    /// Set while an operation is outstanding (pending or accepted somewhere).
    pub busy: bool,
    pub next_operation_at: Time,
}

pub struct World {
    pub now: Time,
    pub tick_steps: Time,
    pub rng: SimRng,
    pub network: Network<SimMessage>,
    pub checker: SafetyChecker,
    pub history: HistoryRecorder,
    pub trace: Trace,
    pub requests: BTreeMap<u64, Request>,
    pub clients: Vec<Client>,
    /// Snapshot transfers whose outcome the sender must hear: (sender, incarnation, to, ok).
    pub snapshot_reports: Vec<(NodeId, u32, NodeId, bool)>,
    /// Peers a sender could not reach: (sender, incarnation, to).
    pub unreachable_reports: Vec<(NodeId, u32, NodeId)>,
    /// The latest value each client knows per key, used to aim compare-and-sets.
    pub last_seen: BTreeMap<Key, Option<Value>>,
    pub stats: RunStats,
}

impl World {
    pub fn new(rng: SimRng, network: Network<SimMessage>, trace: Trace, tick_steps: Time) -> World {
        World {
            now: 0,
            tick_steps,
            rng,
            network,
            checker: SafetyChecker::new(),
            history: HistoryRecorder::default(),
            trace,
            requests: BTreeMap::new(),
            clients: Vec::new(),
            snapshot_reports: Vec::new(),
            unreachable_reports: Vec::new(),
            last_seen: BTreeMap::new(),
            stats: RunStats::default(),
        }
    }

    /// Hands a message to the network, with the snapshot data attached to a snapshot offer.
    pub fn send(
        &mut self,
        from: NodeId,
        incarnation: u32,
        message: Message,
        snapshot_data: Option<Bytes>,
    ) {
        let to = message.to;
        let is_snapshot = matches!(message.body, MessageBody::Snapshot { .. });
        self.stats.messages_sent += 1;
        if is_snapshot {
            self.stats.snapshots_sent += 1;
            if snapshot_data.is_none() {
                // The sender no longer has the snapshot the core offered; the transfer fails.
                self.snapshot_reports.push((from, incarnation, to, false));
                return;
            }
        }
        if self.trace.enabled() {
            let description = describe_message(&message);
            self.trace
                .event(self.now, || format!("n{from} -> n{to} {description}"));
        }
        let envelope = Envelope {
            from,
            to,
            sent_at: self.now,
            message: SimMessage {
                message,
                snapshot_data,
                sender_incarnation: incarnation,
            },
        };
        let outcome = self.network.send(&mut self.rng, self.now, envelope);
        match outcome {
            SendOutcome::Queued { .. } => {}
            SendOutcome::Dropped | SendOutcome::Partitioned | SendOutcome::QueueFull => {
                self.stats.messages_dropped += 1;
                self.trace
                    .event(self.now, || format!("   dropped ({outcome:?})"));
                if is_snapshot {
                    self.snapshot_reports.push((from, incarnation, to, false));
                }
                if outcome == SendOutcome::Partitioned {
                    self.unreachable_reports.push((from, incarnation, to));
                }
            }
        }
    }

    /// The node crashed: its accepted proposals now have an unknown outcome (the client lost the
    /// connection), and its reads are abandoned.
    pub fn fail_requests_at(&mut self, node: NodeId) {
        let failed: Vec<u64> = self
            .requests
            .iter()
            .filter(|(_, r)| r.node == node)
            .map(|(&id, _)| id)
            .collect();
        for id in failed {
            self.abandon_request(id);
        }
    }

    /// Gives up on a request: a proposal's outcome becomes unknown, a read is forgotten.
    pub fn abandon_request(&mut self, id: u64) {
        let Some(request) = self.requests.remove(&id) else {
            return;
        };
        match request.kind {
            RequestKind::Proposal => {
                self.stats.operations_unknown += 1;
                self.trace.event(self.now, || {
                    format!(
                        "client {} gives up on request {id}: outcome unknown",
                        request.client
                    )
                });
            }
            RequestKind::Read { .. } => {
                self.history.discard(request.operation);
                self.trace.event(self.now, || {
                    format!("client {} gives up on read {id}", request.client)
                });
            }
        }
        self.free_client(request.client);
    }

    pub fn free_client(&mut self, client: usize) {
        let think_steps = self.rng.range(0, 3 * self.tick_steps);
        let now = self.now;
        if let Some(c) = self.clients.get_mut(client) {
            c.busy = false;
            c.next_operation_at = now + think_steps;
        }
    }

    /// A node applied the entry of `request`; if that node (incarnation) accepted it, the client
    /// gets its answer now.
    pub fn proposal_applied(
        &mut self,
        node: NodeId,
        incarnation: u32,
        request: u64,
        result: Applied,
    ) {
        let Some(waiting) = self.requests.get(&request).copied() else {
            return;
        };
        if waiting.node != node
            || waiting.incarnation != incarnation
            || waiting.kind != RequestKind::Proposal
        {
            return;
        }
        self.requests.remove(&request);
        let returned = match result {
            Applied::Written => Return::Write,
            Applied::Cas { succeeded } => Return::Cas { succeeded },
        };
        self.complete(waiting, returned);
    }

    fn complete(&mut self, request: Request, returned: Return) {
        self.history.complete(request.operation, returned);
        self.stats.operations_completed += 1;
        let operation = self.history.get(request.operation).clone();
        self.trace
            .event(self.now, || format!("client answered: {operation}"));
        let seen = match (operation.call, returned) {
            (_, Return::Read { observed }) => Some(observed),
            (Call::Write { value }, _) => Some(Some(value)),
            (Call::Cas { new, .. }, Return::Cas { succeeded: true }) => Some(Some(new)),
            _ => None,
        };
        if let Some(value) = seen {
            self.last_seen.insert(request.key, value);
        }
        self.free_client(request.client);
    }

    /// The core answered a read-index request with the index to wait for.
    pub fn read_index_known(&mut self, node: NodeId, incarnation: u32, ctx: u64, index: Index) {
        if let Some(request) = self.requests.get_mut(&ctx)
            && request.node == node
            && request.incarnation == incarnation
            && request.kind == (RequestKind::Read { index: None })
        {
            request.kind = RequestKind::Read { index: Some(index) };
        }
    }

    /// Serves every read at this node whose read index is applied.
    pub fn serve_reads(&mut self, node: NodeId, incarnation: u32, kv: &KvStore) {
        let ready: Vec<u64> = self
            .requests
            .iter()
            .filter(|(_, r)| {
                r.node == node
                    && r.incarnation == incarnation
                    && matches!(r.kind, RequestKind::Read { index: Some(i) } if i <= kv.applied_index())
            })
            .map(|(&id, _)| id)
            .collect();
        for id in ready {
            if let Some(request) = self.requests.remove(&id) {
                let observed = kv.get(request.key);
                self.complete(request, Return::Read { observed });
            }
        }
    }

    /// Requests past their deadline are abandoned.
    pub fn expire_requests(&mut self) {
        let now = self.now;
        let expired: Vec<u64> = self
            .requests
            .iter()
            .filter(|(_, r)| r.deadline <= now)
            .map(|(&id, _)| id)
            .collect();
        for id in expired {
            self.abandon_request(id);
        }
    }
}

/// A one-line description of a message for the trace.
pub fn describe_message(message: &Message) -> String {
    let term = message.term;
    match &message.body {
        MessageBody::Append {
            prev_log_index,
            prev_log_term,
            entries,
            commit,
        } => format!(
            "Append t{term} prev=({prev_log_index},{prev_log_term}) entries={} commit={commit}",
            match (entries.first(), entries.last()) {
                (Some(first), Some(last)) => format!("[{}..{}]", first.index, last.index),
                _ => "[]".to_string(),
            }
        ),
        MessageBody::Snapshot { meta } => {
            format!(
                "Snapshot t{term} (index {}, term {})",
                meta.index, meta.term
            )
        }
        body => format!("{body:?} t{term}"),
    }
}
