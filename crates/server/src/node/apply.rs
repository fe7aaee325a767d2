//! The apply task: the only writer of the MVCC store and the member registry.
//!
//! It applies committed entries in log order (a batch at a time under one write lock), fans the
//! resulting events out to watchers, answers the clients waiting on this member, publishes the
//! applied index, and every `--snapshot-count` entries starts a snapshot: a copy of the store
//! and registry at that index is serialized off the apply path, written to the snapshot store,
//! recorded in the WAL, and then the core and the WAL compact the log behind it, keeping
//! `snapshot_catchup_entries` entries for slow followers (etcd keeps 5000). Saving deletes no
//! older snapshot file: the pruning task does once the marker is durable
//! ([`super::snapshot_pruning`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use ballot_mvcc::{ApplyOutcome, Command, Store, StoreSnapshot};
use ballot_proto::mvccpb::Event;
use ballot_raft::{ConfChange, ConfChangeKind, Entry, EntryKind, SnapshotMeta};
use ballot_wal::Write;
use tokio::sync::{mpsc, oneshot};

use super::alarms::Alarms;
use super::driver::{ApplyItem, DriverRequest};
use super::envelope::{Body, ConfContext, Envelope};
use super::members::Registry;
use super::waiters::{AppliedResult, ProposalResult};
use super::{NodeShared, lock_read, lock_write};
use crate::metrics::metrics;
use crate::storage::{self, snapshot_marker};

/// Why the apply task stopped.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("installing the snapshot at index {index} failed: {reason}")]
    Snapshot { index: u64, reason: String },
}

/// Where a Defragment learns the outcome of its snapshot.
pub type DefragReply = oneshot::Sender<Result<(), String>>;

pub struct Applier {
    pub shared: Arc<NodeShared>,
    pub items: mpsc::Receiver<ApplyItem>,
    /// Defragment requests: a snapshot now, whatever the snapshot rules say.
    pub defrag: mpsc::Receiver<DefragReply>,
    /// Index of the last snapshot taken or installed.
    pub snapshot_index: u64,
}

/// What one batch produced, delivered after the store lock is released.
#[derive(Default)]
struct BatchEffects {
    answers: Vec<(u64, ProposalResult)>,
    revisions: Vec<(i64, Vec<Event>)>,
    granted: Vec<(i64, i64)>,
    revoked: Vec<i64>,
    registry_changed: bool,
    last_index: u64,
    applied_commands: u64,
    /// Payload bytes of the entries applied, for `dbSize`.
    applied_bytes: u64,
    /// Compactions applied: the store as it was just before each, and its revision, to hash
    /// ([`super::compaction_hashes`]).
    compactions: Vec<(StoreSnapshot, i64)>,
}

impl Applier {
    pub async fn run(mut self) -> Result<(), ApplyError> {
        loop {
            tokio::select! {
                biased;
                item = self.items.recv() => {
                    let Some(item) = item else { break };
                    match item {
                        ApplyItem::Snapshot(meta) => self.install_snapshot(meta).await?,
                        ApplyItem::Entries(entries) => self.apply_entries(&entries),
                    }
                    self.maybe_snapshot();
                }
                Some(reply) = self.defrag.recv() => self.snapshot_for_defrag(reply),
            }
        }
        Ok(())
    }

    /// Takes a snapshot of the state as it is now for a Defragment (on this task, so the store
    /// and the registry are read at the same index), once any snapshot being written is done,
    /// and answers when it is durable. With nothing applied since the last snapshot there is
    /// nothing to rewrite.
    fn snapshot_for_defrag(&mut self, reply: DefragReply) {
        let applied = *self.shared.applied.borrow();
        if applied <= self.snapshot_index {
            let _ = reply.send(Ok(()));
            return;
        }
        let state = self.capture(applied);
        let shared = Arc::clone(&self.shared);
        tokio::spawn(async move {
            // One snapshot at a time: wait for the flag, re-checking after every snapshot end
            // (the notification is armed before the check, so none is missed).
            loop {
                let done = shared.snapshot_done.notified();
                tokio::pin!(done);
                done.as_mut().enable();
                if !shared.snapshot_in_progress.swap(true, Ordering::SeqCst) {
                    break;
                }
                done.await;
            }
            let _ = reply.send(write_snapshot(&shared, state).await);
        });
    }

    /// Records `applied` as the latest snapshot's index and reads the state as of it, on this
    /// task so that the store and the registry are at the same index. Shares the histories with
    /// the store (a reference count per key): the apply task does not stop to copy the state.
    fn capture(&mut self, applied: u64) -> CapturedState {
        self.snapshot_index = applied;
        CapturedState {
            index: applied,
            store: lock_read(&self.shared.store).snapshot_state(),
            registry: lock_read(&self.shared.registry).clone(),
            alarms: lock_read(&self.shared.alarms).clone(),
            db_size_mark: self.shared.db_size.applied_mark(),
        }
    }

    fn apply_entries(&mut self, entries: &[Entry]) {
        let Some(last) = entries.last() else {
            return;
        };
        let mut effects = BatchEffects {
            answers: Vec::with_capacity(entries.len()),
            last_index: last.index,
            ..BatchEffects::default()
        };
        {
            let mut store = lock_write(&self.shared.store);
            let expected = self.shared.config.warning_apply_duration;
            for entry in entries {
                let started = Instant::now();
                self.apply_entry(&mut store, entry, &mut effects);
                let took = started.elapsed();
                // etcd's warning for one request that applied slowly: the store holds its lock
                // throughout, so every read and the rest of the batch waited as long.
                if took > expected {
                    metrics().slow_applies.inc();
                    tracing::warn!(
                        index = entry.index,
                        took = ?took,
                        expected_duration = ?expected,
                        bytes = entry.data.len(),
                        "apply request took too long"
                    );
                }
            }
        }
        self.deliver(effects);
    }

    fn apply_entry(&self, store: &mut Store, entry: &Entry, effects: &mut BatchEffects) {
        if entry.index <= store.last_applied() {
            return;
        }
        effects.applied_bytes += entry.data.len() as u64;
        match entry.kind {
            EntryKind::Normal if entry.data.is_empty() => store.skip(entry.index),
            EntryKind::Normal => self.apply_normal(store, entry, effects),
            EntryKind::ConfChange => {
                store.skip(entry.index);
                self.apply_conf_change(entry, effects);
            }
        }
    }

    fn apply_normal(&self, store: &mut Store, entry: &Entry, effects: &mut BatchEffects) {
        let envelope = match Envelope::decode(&entry.data) {
            Ok(envelope) => envelope,
            Err(error) => {
                // Every replica decodes the same bytes the same way, so skipping keeps them
                // identical; the entry came from a proposer running other code.
                tracing::error!(index = entry.index, %error, "skipping an undecodable log entry");
                store.skip(entry.index);
                return;
            }
        };
        let mine =
            envelope.origin.member_id == self.shared.member_id && envelope.origin.request_id != 0;
        let answer = match envelope.body {
            Body::Command(bytes) => match Command::decode(bytes) {
                // etcd's corrupt applier: while a CORRUPT alarm is up, every member refuses
                // every write (lease checkpoints aside), so all of them skip the same entries.
                Ok(command)
                    if refused_when_corrupt(&command)
                        && lock_read(&self.shared.alarms).corrupt() =>
                {
                    store.skip(entry.index);
                    Err(super::NodeError::Corrupt)
                }
                // etcd's capped applier: while a NOSPACE alarm is up, every member refuses what
                // would grow the state, so all of them skip the same entries.
                Ok(command)
                    if super::quota_cost(&command) > 0
                        && lock_read(&self.shared.alarms).nospace() =>
                {
                    store.skip(entry.index);
                    Err(super::NodeError::NoSpace)
                }
                Ok(command) => {
                    // What a compaction that will take effect compacts, to hash (a snapshot
                    // costs a reference count per key: not for compactions refused anyway).
                    let before_compaction = match &command {
                        Command::Compact(request)
                            if request.revision > store.compact_revision()
                                && request.revision <= store.current_revision() =>
                        {
                            Some((store.snapshot_state(), request.revision))
                        }
                        _ => None,
                    };
                    let applied = store.apply(entry.index, &command);
                    if let Some(compaction) = before_compaction
                        && !matches!(applied.outcome, ApplyOutcome::Error(_))
                    {
                        effects.compactions.push(compaction);
                    }
                    effects.applied_commands += 1;
                    track_leases(&command, &applied.outcome, effects);
                    if !applied.events.is_empty() {
                        effects.revisions.push((applied.revision, applied.events));
                    }
                    Ok(AppliedResult::Command(applied.outcome))
                }
                Err(error) => {
                    tracing::error!(index = entry.index, %error, "skipping an undecodable command");
                    store.skip(entry.index);
                    return;
                }
            },
            Body::MemberAttributes {
                id,
                name,
                client_urls,
            } => {
                store.skip(entry.index);
                lock_write(&self.shared.registry).set_attributes(id, name, client_urls);
                effects.registry_changed = true;
                Ok(AppliedResult::Members(
                    lock_read(&self.shared.registry).to_proto(),
                ))
            }
            Body::MemberPeerUrls { id, peer_urls } => {
                store.skip(entry.index);
                lock_write(&self.shared.registry).set_peer_urls(id, peer_urls.clone());
                self.shared.transport.set_peer(id, peer_urls);
                effects.registry_changed = true;
                Ok(AppliedResult::Members(
                    lock_read(&self.shared.registry).to_proto(),
                ))
            }
            Body::Alarm {
                change,
                member_id,
                alarm,
            } => {
                store.skip(entry.index);
                let changed = lock_write(&self.shared.alarms).apply(change, member_id, alarm);
                for raised in &changed {
                    tracing::warn!(
                        member = %format_args!("{member_id:x}"),
                        alarm = super::alarms::alarm_name(raised.alarm),
                        ?change,
                        index = entry.index,
                        "alarm changed"
                    );
                }
                Ok(AppliedResult::Alarms(changed))
            }
        };
        if mine {
            effects.answers.push((envelope.origin.request_id, answer));
        }
    }

    fn apply_conf_change(&self, entry: &Entry, effects: &mut BatchEffects) {
        let change = match ConfChange::decode(&entry.data) {
            Ok(change) => change,
            Err(error) => {
                tracing::error!(index = entry.index, %error, "undecodable configuration change");
                return;
            }
        };
        let context = ConfContext::decode(&change.context).unwrap_or_else(|error| {
            tracing::error!(index = entry.index, %error, "undecodable configuration context");
            ConfContext::bootstrap()
        });
        let me = self.shared.member_id;
        {
            let mut registry = lock_write(&self.shared.registry);
            for single in &change.changes {
                let record = context
                    .record
                    .clone()
                    .filter(|record| record.id == single.node);
                match single.kind {
                    ConfChangeKind::AddVoter | ConfChangeKind::AddLearner => {
                        let is_learner = single.kind == ConfChangeKind::AddLearner;
                        registry.add(single.node, record, is_learner);
                        if let Some(member) = registry.get(single.node) {
                            self.shared
                                .transport
                                .set_peer(single.node, member.peer_urls.clone());
                        }
                    }
                    ConfChangeKind::Remove => {
                        registry.remove(single.node);
                        self.forget_peer_later(single.node);
                        if single.node == me {
                            tracing::warn!("this member was removed from the cluster");
                            self.shared.removed.store(true, Ordering::SeqCst);
                        }
                    }
                }
            }
        }
        effects.registry_changed = true;
        if context.origin.member_id == me && context.origin.request_id != 0 {
            let members = lock_read(&self.shared.registry).to_proto();
            effects.answers.push((
                context.origin.request_id,
                Ok(AppliedResult::Members(members)),
            ));
        }
    }

    /// A removed member must still hear that its removal committed (the core keeps replicating
    /// to it until it does), so its address is kept for a few election timeouts before the
    /// transport forgets it and starts refusing its connections.
    fn forget_peer_later(&self, id: u64) {
        if id == self.shared.member_id {
            return;
        }
        let shared = Arc::clone(&self.shared);
        let grace = (shared.config.election_timeout * 4).max(std::time::Duration::from_secs(1));
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            if !lock_read(&shared.registry).contains(id) {
                shared.transport.remove_peer(id);
            }
        });
    }

    /// Hands a batch's results out: watchers first (a client that sees its write acknowledged
    /// and then watches from "now" must not miss later events), then leases, then clients.
    fn deliver(&self, effects: BatchEffects) {
        for (before, revision) in effects.compactions {
            let shared = Arc::clone(&self.shared);
            tokio::task::spawn_blocking(move || match before.hash_kv(revision) {
                Ok(hash) => shared.compaction_hashes().store(hash),
                Err(error) => tracing::warn!(revision, %error, "could not hash a compaction"),
            });
        }
        for (revision, events) in &effects.revisions {
            self.shared.watch_hub.notify(*revision, events);
        }
        if !effects.granted.is_empty() || !effects.revoked.is_empty() {
            super::lease::on_applied(&self.shared, &effects.granted, &effects.revoked);
        }
        metrics().proposals_applied.add(effects.applied_commands);
        self.shared.db_size.add_applied(effects.applied_bytes);
        self.shared.applied.send_replace(effects.last_index);
        self.shared.waiters.resolve_many(effects.answers);
        self.shared.waiters.fail_lost_through(effects.last_index);
        if effects.registry_changed && self.shared.removed.load(Ordering::SeqCst) {
            self.shared.request_stop();
        }
    }

    async fn install_snapshot(&mut self, meta: SnapshotMeta) -> Result<(), ApplyError> {
        let snapshots = self.shared.snapshots.clone();
        let index = meta.index;
        let fail = |reason: String| ApplyError::Snapshot { index, reason };
        let store_config = self.shared.config.store_config.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            let info = storage::find_snapshot(&snapshots, meta.index, meta.term)
                .map_err(|e| e.to_string())?;
            let size = info.data_len;
            let loaded = storage::load_snapshot(&snapshots, &info).map_err(|e| e.to_string())?;
            let store =
                Store::restore(&loaded.payload.store, store_config).map_err(|e| e.to_string())?;
            let payload = loaded.payload;
            Ok::<_, String>((store, payload.registry, payload.alarms, size))
        })
        .await
        .map_err(|error| fail(error.to_string()))?
        .map_err(fail)?;
        let (store, registry, alarms, size) = loaded;
        let revision = store.current_revision();
        *lock_write(&self.shared.store) = store;
        self.shared.install_registry(registry);
        *lock_write(&self.shared.alarms) = alarms;
        self.shared.watch_hub.reset_to(revision);
        let mark = self.shared.db_size.applied_mark();
        self.shared.db_size.snapshot_saved(size, mark);
        self.shared
            .snapshot_index
            .fetch_max(index, Ordering::SeqCst);
        self.snapshot_index = index;
        self.shared.applied.send_replace(index);
        self.shared.waiters.fail_lost_through(index);
        metrics().snapshots_installed.inc();
        tracing::info!(index, revision, "installed a snapshot from the leader");
        Ok(())
    }

    /// Takes a snapshot once `--snapshot-count` entries were applied since the last one *and*
    /// their payload has reached the last snapshot's size. The state lives in memory, so a
    /// snapshot writes all of it (unlike etcd's, whose state is already in its bbolt file):
    /// with a fixed entry count, a store that keeps growing (history is kept until compaction)
    /// would be rewritten ever more often relative to its size, and under a steady write load
    /// snapshots took a third of the leader's time. With the size rule a snapshot never writes
    /// more than the log it lets go, so snapshots at most double what is written to disk, and
    /// the log a restart replays stays no larger than the state.
    fn maybe_snapshot(&mut self) {
        let applied = *self.shared.applied.borrow();
        let count = self.shared.config.snapshot_count;
        if applied < self.snapshot_index + count
            || !self.shared.db_size.log_outweighs_snapshot()
            || self
                .shared
                .snapshot_in_progress
                .swap(true, Ordering::SeqCst)
        {
            return;
        }
        let state = self.capture(applied);
        let shared = Arc::clone(&self.shared);
        tokio::spawn(async move {
            let _ = write_snapshot(&shared, state).await;
        });
    }
}

/// The state a snapshot is written from, read on the apply task ([`Applier::capture`]).
struct CapturedState {
    index: u64,
    store: StoreSnapshot,
    registry: Registry,
    alarms: Alarms,
    /// What `dbSize` had counted when the state was read.
    db_size_mark: u64,
}

/// Writes a captured state as the next snapshot, with `snapshot_in_progress` held by the
/// caller, then releases it (and wakes a Defragment waiting for it). A snapshot at a later
/// index, taken meanwhile or installed from the leader, has already rewritten the state: an
/// older one must not follow it into the WAL, so it is skipped. A WAL failure stops the node.
async fn write_snapshot(shared: &Arc<NodeShared>, state: CapturedState) -> Result<(), String> {
    let index = state.index;
    let taken = if shared.snapshot_index.load(Ordering::SeqCst) >= index {
        Ok(())
    } else {
        take_snapshot(shared, state).await
    };
    if let Err(reason) = &taken {
        tracing::error!(index, %reason, "taking a snapshot failed");
        if reason.starts_with("WAL") {
            shared.fail(reason.clone());
        }
    }
    shared.snapshot_in_progress.store(false, Ordering::SeqCst);
    shared.snapshot_done.notify_waiters();
    taken
}

fn track_leases(command: &Command, outcome: &ApplyOutcome, effects: &mut BatchEffects) {
    match (command, outcome) {
        (Command::LeaseGrant { .. }, ApplyOutcome::LeaseGrant(response)) => {
            effects.granted.push((response.id, response.ttl));
        }
        (Command::LeaseRevoke { id }, _) => effects.revoked.push(*id),
        _ => {}
    }
}

/// Writes a snapshot of the captured store and registry (both as of `state.index`, when `dbSize`
/// had counted `state.db_size_mark` applied bytes), records it in the WAL and lets the core and
/// the WAL compact behind it.
async fn take_snapshot(shared: &Arc<NodeShared>, state: CapturedState) -> Result<(), String> {
    let CapturedState {
        index,
        store,
        registry,
        alarms,
        db_size_mark,
    } = state;
    let (reply, meta) = oneshot::channel();
    shared
        .requests
        .send(DriverRequest::SnapshotMeta { index, reply })
        .await
        .map_err(|_| "the driver stopped".to_string())?;
    let meta = meta
        .await
        .map_err(|_| "the driver stopped".to_string())?
        .ok_or_else(|| format!("the core has no metadata for index {index}"))?;
    let snapshots = shared.snapshots.clone();
    let meta_for_file = meta.clone();
    let save_started = std::time::Instant::now();
    let size = tokio::task::spawn_blocking(move || {
        storage::save_store_snapshot(&snapshots, &meta_for_file, &registry, &alarms, &store)
            .map(|info| info.data_len)
            .map_err(|error| error.to_string())
    })
    .await
    .map_err(|error| error.to_string())??;
    shared
        .wal
        .append(Write {
            snapshot: Some(snapshot_marker(&meta)),
            entries: Vec::new(),
            hard_state: None,
        })
        .await
        .map_err(|error| format!("WAL: {error}"))?;
    metrics()
        .snapshot_save_seconds
        .observe(save_started.elapsed());
    shared.db_size.snapshot_saved(size, db_size_mark);
    shared.snapshot_index.fetch_max(index, Ordering::SeqCst);
    let compact_through = index.saturating_sub(shared.config.snapshot_catchup_entries);
    shared
        .requests
        .send(DriverRequest::SnapshotTaken {
            meta,
            compact_through,
        })
        .await
        .map_err(|_| "the driver stopped".to_string())?;
    if compact_through > 0 {
        shared
            .wal
            .compact(compact_through)
            .await
            .map_err(|error| format!("WAL: {error}"))?;
    }
    tracing::info!(index, compact_through, bytes = size, "snapshot taken");
    Ok(())
}

/// What etcd's corrupt applier refuses: every command that changes the keys or the leases,
/// except a lease checkpoint (which only records remaining TTLs). Read-only requests never
/// reach the log, so reads go on.
fn refused_when_corrupt(command: &Command) -> bool {
    match command {
        Command::Put(_)
        | Command::DeleteRange(_)
        | Command::Txn(_)
        | Command::Compact(_)
        | Command::LeaseGrant { .. }
        | Command::LeaseRevoke { .. } => true,
        Command::LeaseCheckpoint { .. } => false,
    }
}
