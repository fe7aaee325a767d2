//! One simulated server: a `RaftNode`, its simulated disk, its state machine, and the glue a real
//! server would have between them (the application side of the `Ready` contract).
//!
//! The disk is modelled as a FIFO of pending writes, each durable only after a random delay; a
//! crash loses every write not yet durable. `persisted_messages` wait in the same FIFO, so they
//! leave only once their Ready and every earlier one are durable, as the contract demands.
//! With `--disk-faults` the same FIFO drives the real WAL on a faulty disk (`wal_disk.rs`): each
//! write is handed to the WAL at once, and its delay ends with the WAL's sync returning.

use std::collections::VecDeque;

use ballot_raft::{
    ConfState, Config, Entry, EntryKind, HardState, Index, Message, MessageBody, NodeId, RaftNode,
    Ready, RestoreState, Role, SnapshotMeta, Term,
};
use bytes::Bytes;

use crate::durable::{DurableStore, SnapshotOrigin};
use crate::fingerprint::Fingerprint;
use crate::invariants::{LogMirror, Violation, chain_fingerprint};
use crate::kv::{Applied, Command, KvStore};
use crate::network::Time;
use crate::removal::RemovedSenders;
use crate::rng::SimRng;
use crate::wal_disk::{StartedSync, StorageFailure, SyncPromise, WalDisk};
use crate::world::World;

/// What one write adds to the node's durable state.
#[derive(Debug, Default)]
struct WriteContent {
    hard_state: Option<HardState>,
    snapshot: Option<(SnapshotMeta, Bytes, SnapshotOrigin)>,
    entries: Vec<Entry>,
}

/// With `--disk-faults`, where the WAL sync covering a write stands.
enum SyncState {
    /// Nothing to sync (no WAL, or nothing written).
    NotNeeded,
    /// The records are in the WAL's buffer; the sync starts (and they reach the disk) at
    /// `start_at`.
    Waiting {
        start_at: Time,
    },
    Started(StartedSync),
    /// The sync ran and completed while an earlier one was still outstanding; the WAL reports
    /// it durable with that earlier one. Holds what it promised.
    CompletedEarly(SyncPromise),
}

/// One Ready's worth of disk work (or a local snapshot's marker), durable at `durable_at`.
struct PendingWrite {
    durable_at: Time,
    /// The Ready number to report, when the Ready had something to persist.
    ready_number: Option<u64>,
    content: WriteContent,
    /// Each with the term the node's log had at the acknowledged index when the Ready was
    /// produced: that entry is what the acknowledgement promises is durable.
    persisted_messages: Vec<(Message, Option<Term>)>,
    sync: SyncState,
    /// The lowest log index this write may remove (a conflicting suffix, a log replaced by a
    /// snapshot): after a crash, entries reported durable below it must have survived.
    overwrite_floor: Option<Index>,
}

/// A deliberate bug in the host's persistence path, for the self-test: the simulator must
/// catch it through what the WAL recovers after crashes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PersistenceDefect {
    /// Reports a Ready persisted (`on_persisted`, acknowledgements, the durable model) as soon
    /// as its records are handed to the WAL, before the sync that makes them durable.
    PersistedBeforeSync,
}

/// A host's clock and disk speeds, drawn per seed.
#[derive(Clone, Copy, Debug)]
pub struct HostTiming {
    pub tick_steps: Time,
    /// Each node's tick interval is off the nominal one by up to this many steps.
    pub tick_skew_steps: Time,
    /// Each node's disk takes up to this many steps to make a write durable.
    pub disk_delay_max_steps: Time,
}

/// How this node joined: the first members bootstrap together, later ones join empty.
#[derive(Clone, Debug)]
pub enum Origin {
    Bootstrap { voters: Vec<NodeId> },
    Join,
}

/// A message with the out-of-band snapshot data attached, as a real transport would stream it.
#[derive(Clone, Debug)]
pub struct SimMessage {
    pub message: Message,
    pub snapshot_data: Option<Bytes>,
    /// The sender's incarnation, so a snapshot's outcome is reported only to the process that
    /// sent it.
    pub sender_incarnation: u32,
}

pub struct Host {
    pub id: NodeId,
    pub origin: Origin,
    config: Config,
    /// Bumped at every restart.
    pub incarnation: u32,
    /// `None` while crashed.
    pub raft: Option<RaftNode>,
    pub durable: DurableStore,
    pending_writes: VecDeque<PendingWrite>,
    pub mirror: LogMirror,
    pub kv: KvStore,
    pub role: Role,
    pub term: Term,
    pub leader: NodeId,
    /// The highest commit index this incarnation's Readys reported.
    commit: Index,
    pub tick_interval_steps: Time,
    pub next_tick_at: Time,
    pub paused_until: Time,
    pub restart_at: Option<Time>,
    disk_delay_max_steps: Time,
    /// Apply this many entries between snapshots.
    snapshot_every_entries: u64,
    last_snapshot_index: Index,
    /// Data of the latest snapshot received from a leader, waiting for the core to accept it.
    received_snapshot: Option<(SnapshotMeta, Bytes)>,
    /// With `--disk-faults`: the real WAL on this node's faulty disk.
    wal: Option<WalDisk>,
    /// A crash the simulation must inflict at this step (drawn when a sync starts, so that it
    /// strikes while the sync's bytes are on the disk unsynced).
    pub crash_due_at: Option<Time>,
    defect: Option<PersistenceDefect>,
    /// Ticks this node has made (across restarts): the clock its removal grace periods run on.
    ticks_elapsed: u64,
    /// The members whose removal this node applied, refused after a grace period as the
    /// server's transport refuses them (`removal.rs`).
    removed_senders: RemovedSenders,
    /// Advance the election clock at every start (`SimOptions::tick_advance`).
    tick_advance: bool,
}

impl Host {
    pub fn new(
        id: NodeId,
        origin: Origin,
        config: Config,
        rng: &mut SimRng,
        timing: HostTiming,
        now: Time,
    ) -> Host {
        let HostTiming {
            tick_steps,
            tick_skew_steps,
            disk_delay_max_steps,
        } = timing;
        let removed_sender_grace_ticks =
            REMOVED_SENDER_GRACE_ELECTION_TIMEOUTS * u64::from(config.election_tick);
        let mut host = Host {
            id,
            origin,
            config,
            incarnation: 0,
            raft: None,
            durable: DurableStore::default(),
            pending_writes: VecDeque::new(),
            mirror: LogMirror::default(),
            kv: KvStore::default(),
            role: Role::Follower,
            term: 0,
            leader: 0,
            commit: 0,
            tick_interval_steps: tick_steps,
            next_tick_at: now + rng.range(1, tick_steps),
            paused_until: 0,
            restart_at: None,
            disk_delay_max_steps: if rng.chance(250_000) {
                0
            } else {
                rng.range(1, disk_delay_max_steps)
            },
            snapshot_every_entries: rng.range(30, 100),
            last_snapshot_index: 0,
            received_snapshot: None,
            wal: None,
            crash_due_at: None,
            defect: None,
            ticks_elapsed: 0,
            removed_senders: RemovedSenders::new(removed_sender_grace_ticks),
            tick_advance: false,
        };
        host.tick_interval_steps = skewed_tick_interval(rng, tick_steps, tick_skew_steps);
        host
    }

    /// Makes every start advance the election clock (`SimOptions::tick_advance`).
    pub fn advance_ticks_at_start(&mut self) {
        self.tick_advance = true;
    }

    /// Persists through the real WAL on `wal`'s faulty disk instead of the in-memory model;
    /// `defect` breaks the persistence path on purpose (self-test only).
    pub fn use_wal(&mut self, wal: WalDisk, defect: Option<PersistenceDefect>) {
        self.wal = Some(wal);
        self.defect = defect;
    }

    pub fn wal(&self) -> Option<&WalDisk> {
        self.wal.as_ref()
    }

    /// Healing ends injected I/O errors and crashes aimed at syncs too.
    pub fn stop_disk_faults(&mut self) {
        self.crash_due_at = None;
        if let Some(wal) = self.wal.as_mut() {
            wal.stop_faults();
        }
    }

    pub fn is_up(&self) -> bool {
        self.raft.is_some()
    }

    pub fn is_paused(&self, now: Time) -> bool {
        now < self.paused_until
    }

    pub fn set_tick_skew(&mut self, rng: &mut SimRng, timing: HostTiming) {
        self.tick_interval_steps =
            skewed_tick_interval(rng, timing.tick_steps, timing.tick_skew_steps);
    }

    /// Starts (or restarts) the process from what is durable.
    pub fn start(&mut self, world: &mut World) -> Result<(), Violation> {
        self.incarnation += 1;
        self.config.seed = world.rng.next_u64();
        self.pending_writes.clear();
        self.received_snapshot = None;
        self.role = Role::Follower;
        self.leader = 0;
        self.restart_at = None;
        if let Some(wal) = self.wal.as_mut() {
            // What the WAL recovers replaces the model: from now on every check (and the
            // restored core) works from what the disk really held.
            let (recovered, report) = wal.open(&self.durable).map_err(|failure| match failure {
                StorageFailure::Broken(violation) => violation,
                StorageFailure::Io(error) => Violation {
                    invariant: "WAL recovers what it reported durable",
                    detail: format!("node {} could not reopen its WAL: {error}", self.id),
                },
            })?;
            self.durable = recovered;
            world.stats.wal_recoveries += 1;
            world.stats.torn_tails += u64::from(report.torn_tail.is_some());
            world.stats.recovered_beyond_promise += u64::from(report.beyond_promise);
            world.trace.event(world.now, || {
                format!(
                    "n{} WAL recovered (torn tail: {:?}, beyond what was reported durable: {})",
                    self.id, report.torn_tail, report.beyond_promise
                )
            });
        }
        self.commit = self.durable.hard_state.commit;
        let raft = if self.durable.is_empty() {
            match &self.origin {
                Origin::Bootstrap { voters } => RaftNode::bootstrap(self.config.clone(), voters),
                Origin::Join => RaftNode::join(self.config.clone()),
            }
            .map_err(|error| Violation {
                invariant: "node starts",
                detail: format!("node {} could not start: {error}", self.id),
            })?
        } else {
            self.restore_from_disk(world)?
        };
        let mut raft = raft;
        if self.tick_advance {
            let ticks = self.config.election_tick.saturating_sub(2);
            raft.advance_ticks(ticks);
            world.stats.tick_advances += 1;
            world
                .trace
                .event(world.now, || format!("n{} advances {ticks} ticks", self.id));
        }
        self.raft = Some(raft);
        self.removed_senders.restart_at(self.kv.applied_index());
        self.observe_membership(world, None);
        self.drive(world)
    }

    fn restore_from_disk(&mut self, world: &mut World) -> Result<RaftNode, Violation> {
        let snapshot = self.durable.snapshot.clone();
        let (snapshot_meta, kv) = match &snapshot {
            Some((meta, data)) => {
                let kv = KvStore::decode_snapshot(data).map_err(|error| Violation {
                    invariant: "snapshot data",
                    detail: format!(
                        "node {}'s durable snapshot does not decode: {error}",
                        self.id
                    ),
                })?;
                (Some(meta.clone()), kv)
            }
            None => (None, KvStore::default()),
        };
        let base_index = snapshot_meta.as_ref().map_or(0, |m| m.index);
        let base_term = snapshot_meta.as_ref().map_or(0, |m| m.term);
        let base_fingerprint = world
            .checker
            .written_fingerprint(base_index, base_term)
            .ok_or_else(|| Violation {
                invariant: "log matching",
                detail: format!(
                    "node {} holds a snapshot at (index {base_index}, term {base_term}) that no node ever wrote",
                    self.id
                ),
            })?;
        self.mirror = LogMirror::default();
        self.mirror
            .reset_to(base_index, base_term, base_fingerprint);
        let digests = entry_digests(&self.durable.entries);
        world
            .checker
            .observe_append(self.id, &mut self.mirror, &digests, None)?;
        self.kv = kv;
        self.last_snapshot_index = base_index;
        let hard_state = self.durable.hard_state;
        self.term = hard_state.term;
        world.trace.event(world.now, || {
            format!(
                "n{} restarts from disk: {hard_state:?}, snapshot {base_index}, entries ({base_index}, {}]",
                self.id,
                self.mirror.last_index()
            )
        });
        let state = RestoreState {
            hard_state,
            snapshot: snapshot_meta,
            entries: self.durable.entries.clone(),
            applied: base_index,
        };
        RaftNode::restore(self.config.clone(), state).map_err(|error| Violation {
            invariant: "restart from durable state",
            detail: format!("node {} refused its own durable state: {error}", self.id),
        })
    }

    /// Crash: everything not yet durable is lost, as is all volatile state. With the WAL, the
    /// disk crashes too and keeps what its crash model allows of the unsynced bytes.
    pub fn crash(&mut self, world: &mut World, restart_at: Time) {
        self.crash_with_floor(world, restart_at, None);
    }

    /// A crash where a write already taken off the queue (its sync failed) may also have
    /// removed entries from `overwrite_floor` on.
    fn crash_with_floor(
        &mut self,
        world: &mut World,
        restart_at: Time,
        overwrite_floor: Option<Index>,
    ) {
        self.raft = None;
        self.crash_due_at = None;
        let lost = self.pending_writes.len();
        if let Some(wal) = self.wal.as_mut() {
            let floor = self
                .pending_writes
                .iter()
                .filter_map(|write| write.overwrite_floor)
                .chain(overwrite_floor)
                .min();
            let unsynced = self
                .pending_writes
                .iter()
                .filter(|write| matches!(write.sync, SyncState::Started(_)))
                .count();
            world.stats.crashes_with_unsynced_writes += u64::from(unsynced > 0);
            let options = wal.crash(&mut world.rng, floor);
            world.trace.event(world.now, || {
                format!(
                    "n{} disk crashes with {unsynced} started, unfinished syncs: {options:?}",
                    self.id
                )
            });
        }
        self.pending_writes.clear();
        self.received_snapshot = None;
        self.kv = KvStore::default();
        self.role = Role::Follower;
        self.leader = 0;
        self.restart_at = Some(restart_at);
        world.trace.event(world.now, || {
            format!(
                "n{} CRASHES ({lost} writes not yet durable are lost)",
                self.id
            )
        });
        world.fail_requests_at(self.id);
    }

    pub fn tick(&mut self, world: &mut World) -> Result<(), Violation> {
        self.next_tick_at = world.now + self.tick_interval_steps;
        if let Some(raft) = self.raft.as_mut() {
            raft.tick();
            self.ticks_elapsed += 1;
        }
        self.drive(world)
    }

    /// Whether this node's transport refuses messages from `sender`: a member whose removal it
    /// applied at least the grace period ago (the server's "the sender was removed").
    pub fn refuses_sender(&self, sender: NodeId) -> bool {
        self.removed_senders.refuses(sender, self.ticks_elapsed)
    }

    /// Records the configuration this node has applied (and the latest in its log), so members
    /// it has seen removed are refused once the grace period has passed. `installed` is the
    /// configuration of a snapshot installed by the Ready just handled, if any.
    fn observe_membership(&mut self, world: &mut World, installed: Option<&ConfState>) {
        let Some(raft) = self.raft.as_ref() else {
            return;
        };
        let applied = raft
            .snapshot_meta(self.kv.applied_index())
            .map(|meta| meta.conf)
            .or_else(|| installed.cloned());
        let Some(applied) = applied else {
            return;
        };
        let newly_removed = self.removed_senders.observe(
            self.kv.applied_index(),
            &applied,
            raft.conf_state(),
            self.ticks_elapsed,
        );
        for removed in newly_removed {
            world.trace.event(world.now, || {
                format!(
                    "n{} applied the removal of n{removed}: refuses it after {} ticks",
                    self.id,
                    self.removed_senders.grace_ticks()
                )
            });
        }
    }

    /// Delivers a message from the network.
    pub fn receive(&mut self, world: &mut World, message: SimMessage) -> Result<(), Violation> {
        let Some(raft) = self.raft.as_mut() else {
            return Ok(());
        };
        if let (MessageBody::Snapshot { meta }, Some(data)) =
            (&message.message.body, &message.snapshot_data)
        {
            self.received_snapshot = Some((meta.clone(), data.clone()));
        }
        let description = message.message.body.name();
        let from = message.message.from;
        if let Err(error) = raft.step(message.message) {
            return Err(Violation {
                invariant: "peer input accepted",
                detail: format!(
                    "node {} refused a well-formed {description} from node {from}: {error}",
                    self.id
                ),
            });
        }
        self.drive(world)
    }

    /// Runs the core until it has nothing more to say: makes due writes durable, then handles
    /// each Ready.
    pub fn drive(&mut self, world: &mut World) -> Result<(), Violation> {
        loop {
            self.complete_due_writes(world)?;
            let Some(raft) = self.raft.as_mut() else {
                return Ok(());
            };
            if !raft.has_ready() {
                return Ok(());
            }
            let ready = raft.ready();
            self.handle_ready(world, ready)?;
        }
    }

    /// Makes durable every pending write whose time has come, in order, then reports it and
    /// releases the messages that waited for it. With the WAL, "durable" means the write's
    /// sync returned; an I/O error stops the node instead.
    fn complete_due_writes(&mut self, world: &mut World) -> Result<(), Violation> {
        if !self.start_due_syncs(world)? {
            return Ok(());
        }
        while self
            .pending_writes
            .front()
            .is_some_and(|write| write.durable_at <= world.now)
        {
            let Some(write) = self.pending_writes.pop_front() else {
                break;
            };
            if !self.finish_sync(world, write.sync, write.overwrite_floor)? {
                return Ok(());
            }
            self.report_durable(write.content, write.ready_number);
            for (message, acknowledged_term) in write.persisted_messages {
                self.check_promise(&message, acknowledged_term)?;
                world.send(self.id, self.incarnation, message, None);
            }
        }
        Ok(())
    }

    /// A write is durable: the model learns it and the core hears of it.
    fn report_durable(&mut self, content: WriteContent, ready_number: Option<u64>) {
        if let Some((meta, data, origin)) = content.snapshot {
            self.durable.set_snapshot(meta, data, origin);
        }
        self.durable.append(&content.entries);
        if let Some(hard_state) = content.hard_state {
            self.durable.hard_state = hard_state;
        }
        if let (Some(number), Some(raft)) = (ready_number, self.raft.as_mut()) {
            raft.on_persisted(number);
        }
    }

    /// Starts, in order, the WAL syncs whose time has come (their bytes reach the disk,
    /// unsynced). Returns false if the node stopped on an I/O error.
    fn start_due_syncs(&mut self, world: &mut World) -> Result<bool, Violation> {
        let Some(wal) = self.wal.as_mut() else {
            return Ok(true);
        };
        for position in 0..self.pending_writes.len() {
            let write = &mut self.pending_writes[position];
            match write.sync {
                SyncState::Waiting { start_at } if start_at <= world.now => {}
                // Syncs start in write order: a later write waits for an earlier one's start.
                SyncState::Waiting { .. } => break,
                SyncState::NotNeeded | SyncState::Started(_) | SyncState::CompletedEarly(_) => {
                    continue;
                }
            }
            let failure = wal.draw_io_error(&mut world.rng);
            match wal.start_sync(failure) {
                Ok(started) => {
                    write.sync = SyncState::Started(started);
                    if self.crash_due_at.is_none() && wal.draw_crash_during_sync(&mut world.rng) {
                        // Strike while these bytes sit on the disk unsynced.
                        self.crash_due_at =
                            Some(world.rng.range(world.now, write.durable_at.max(world.now)));
                    }
                }
                Err(failure) => {
                    self.storage_failed(world, failure, None)?;
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// Runs and completes the sync of the write just taken off the queue (starting it first if
    /// its start is still due), sometimes after completing the next write's sync first. Returns
    /// false if the node stopped on an I/O error.
    fn finish_sync(
        &mut self,
        world: &mut World,
        sync: SyncState,
        overwrite_floor: Option<Index>,
    ) -> Result<bool, Violation> {
        let Some(wal) = self.wal.as_mut() else {
            return Ok(true);
        };
        let started = match sync {
            SyncState::NotNeeded | SyncState::CompletedEarly(_) => return Ok(true),
            SyncState::Started(started) => Ok(started),
            SyncState::Waiting { .. } => {
                let failure = wal.draw_io_error(&mut world.rng);
                wal.start_sync(failure)
            }
        };
        let outcome = started.and_then(|started| {
            if complete_next_sync_early(wal, &mut self.pending_writes, &mut world.rng)? {
                world.stats.syncs_completed_early += 1;
            }
            let completed_after = self
                .pending_writes
                .iter()
                .map_while(|write| match &write.sync {
                    SyncState::CompletedEarly(promise) => Some(promise),
                    _ => None,
                })
                .last();
            let failure = wal.draw_io_error(&mut world.rng);
            wal.finish_sync(started, failure, completed_after)
        });
        match outcome {
            Ok(()) => Ok(true),
            Err(failure) => {
                self.storage_failed(world, failure, overwrite_floor)?;
                Ok(false)
            }
        }
    }

    /// A storage call failed. An I/O error is fatal for the node, which stops (crashes) and
    /// restarts later from what its disk holds: it never carries on as if the write had
    /// succeeded (docs/wal.md). Anything else is a violation. `overwrite_floor` is that of a
    /// write already taken off the queue.
    fn storage_failed(
        &mut self,
        world: &mut World,
        failure: StorageFailure,
        overwrite_floor: Option<Index>,
    ) -> Result<(), Violation> {
        let error = match failure {
            StorageFailure::Broken(violation) => return Err(violation),
            StorageFailure::Io(error) => error,
        };
        world.stats.io_errors += 1;
        world.stats.crashes += 1;
        world.trace.event(world.now, || {
            format!("n{} STOPS on a disk error: {error}", self.id)
        });
        let restart_at = world.now + world.rng.range(world.tick_steps, 40 * world.tick_steps);
        self.crash_with_floor(world, restart_at, overwrite_floor);
        Ok(())
    }

    /// The persistence contract seen from the wire: an acknowledgement may leave only once
    /// what it promises is durable (Raft paper §5.1, "respond to RPCs" after updating stable
    /// storage; Raft thesis §10.2.1 for the leader's overlap, which promises nothing).
    fn check_promise(
        &self,
        message: &Message,
        acknowledged_term: Option<Term>,
    ) -> Result<(), Violation> {
        let broken = |detail: String| {
            Err(Violation {
                invariant: "acknowledge only what is durable",
                detail,
            })
        };
        match message.body {
            MessageBody::AppendResponse {
                reject: false,
                index,
                ..
            } => {
                let durable_term = if index <= self.durable.snapshot_index() {
                    None
                } else {
                    self.durable
                        .entries
                        .iter()
                        .rev()
                        .find(|e| e.index == index)
                        .map(|e| e.term)
                };
                let covered_by_snapshot = index <= self.durable.snapshot_index();
                // Below the mirror's base (a snapshot installed since) the term is unknown here;
                // the entry only has to be durable.
                let expected_term = acknowledged_term.or(durable_term);
                if !covered_by_snapshot && (durable_term.is_none() || durable_term != expected_term)
                {
                    return broken(format!(
                        "node {} acknowledged index {index} to node {} before it was durable (durable log ends at {})",
                        self.id,
                        message.to,
                        self.durable
                            .entries
                            .last()
                            .map_or(self.durable.snapshot_index(), |e| e.index)
                    ));
                }
            }
            MessageBody::VoteResponse { reject: false } => {
                let hard_state = self.durable.hard_state;
                if hard_state.term != message.term || hard_state.vote != message.to {
                    return broken(format!(
                        "node {} granted its vote to node {} in term {} before the vote was durable (durable {hard_state:?})",
                        self.id, message.to, message.term
                    ));
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn handle_ready(&mut self, world: &mut World, ready: Ready) -> Result<(), Violation> {
        let leader_before = (self.role == Role::Leader).then_some(self.term);
        if let Some(soft) = ready.soft_state {
            if soft.role == Role::Leader && self.role != Role::Leader {
                world.stats.leaders_elected += 1;
            }
            if soft.role != self.role || soft.leader != self.leader {
                world.trace.event(world.now, || {
                    format!(
                        "n{} becomes {:?} (leader n{})",
                        self.id, soft.role, soft.leader
                    )
                });
            }
            self.role = soft.role;
            self.leader = soft.leader;
        }
        let installed = match &ready.snapshot {
            Some(meta) => Some(self.install_snapshot(world, meta)?),
            None => None,
        };
        if let Some(hard_state) = ready.hard_state {
            self.term = hard_state.term;
        }
        let leader_term =
            leader_before.filter(|term| self.role == Role::Leader && *term == self.term);
        let digests = entry_digests(&ready.entries);
        if let (Some(first), Some(last)) = (ready.entries.first(), ready.entries.last()) {
            world.trace.event(world.now, || {
                format!(
                    "n{} writes entries [{}, {}] (terms {}..{})",
                    self.id, first.index, last.index, first.term, last.term
                )
            });
        }
        world
            .checker
            .observe_append(self.id, &mut self.mirror, &digests, leader_term)?;
        if let Some(hard_state) = ready.hard_state {
            world.checker.observe_commit(
                self.id,
                &self.mirror,
                hard_state.term,
                hard_state.commit,
            )?;
        }
        if self.role == Role::Leader {
            world
                .checker
                .observe_leader(self.id, self.incarnation, self.term)?;
            world
                .checker
                .check_leader_completeness(self.id, &self.mirror, self.term)?;
        }
        if let (Some(term), Some(hard_state)) = (leader_term, ready.hard_state)
            && hard_state.commit > self.commit
        {
            self.check_commit_rule(term, hard_state.commit)?;
        }
        if let Some(hard_state) = ready.hard_state {
            self.commit = self.commit.max(hard_state.commit);
        }
        for message in ready.messages {
            self.check_promise(&message, self.acknowledged_term(&message))?;
            let data = self.snapshot_data_for(&message);
            world.send(self.id, self.incarnation, message, data);
        }
        let installed_conf = installed.as_ref().map(|(meta, _)| meta.conf.clone());
        let still_up = self.queue_write(
            world,
            &ready.hard_state,
            installed,
            ready.entries,
            ready.number,
            ready.persisted_messages,
        )?;
        if !still_up {
            return Ok(());
        }
        let membership_may_change = installed_conf.is_some()
            || ready
                .committed_entries
                .iter()
                .any(|entry| entry.kind == EntryKind::ConfChange);
        self.apply(world, &ready.committed_entries)?;
        if membership_may_change {
            self.observe_membership(world, installed_conf.as_ref());
        }
        for read in ready.read_states {
            world.read_index_known(self.id, self.incarnation, read.ctx, read.index);
        }
        world.serve_reads(self.id, self.incarnation, &self.kv);
        self.maybe_take_snapshot(world)
    }

    /// The term of the entry an append acknowledgement covers, as the log has it now.
    fn acknowledged_term(&self, message: &Message) -> Option<Term> {
        match message.body {
            MessageBody::AppendResponse {
                reject: false,
                index,
                ..
            } => self.mirror.term_at(index),
            _ => None,
        }
    }

    /// Raft paper §5.4.2: a leader advances its commit index by counting replicas only to an
    /// entry of its own term (older entries are committed indirectly, with it). A stricter,
    /// direct check of the rule behind figure 8, which otherwise shows only in rare histories.
    fn check_commit_rule(&self, term: Term, commit: Index) -> Result<(), Violation> {
        match self.mirror.term_at(commit) {
            Some(entry_term) if entry_term == term => Ok(()),
            found => Err(Violation {
                invariant: "commit rule (§5.4.2)",
                detail: format!(
                    "node {}, leader of term {term}, advanced its commit index to {commit}, whose entry has term {found:?}",
                    self.id
                ),
            }),
        }
    }

    /// Queues a Ready's durable part; with the WAL, hands it to the WAL at once. Returns false
    /// if the node stopped on an I/O error.
    fn queue_write(
        &mut self,
        world: &mut World,
        hard_state: &Option<HardState>,
        snapshot: Option<(SnapshotMeta, Bytes)>,
        entries: Vec<Entry>,
        ready_number: u64,
        persisted_messages: Vec<Message>,
    ) -> Result<bool, Violation> {
        let must_persist = hard_state.is_some() || snapshot.is_some() || !entries.is_empty();
        let persisted_messages: Vec<(Message, Option<Term>)> = persisted_messages
            .into_iter()
            .map(|message| {
                let term = self.acknowledged_term(&message);
                (message, term)
            })
            .collect();
        if !must_persist && persisted_messages.is_empty() {
            return Ok(true);
        }
        let earliest = self.pending_writes.back().map_or(0, |w| w.durable_at);
        let delay = world.rng.range(0, self.disk_delay_max_steps);
        let durable_at = earliest.max(world.now + delay);
        let mut write = PendingWrite {
            durable_at,
            ready_number: must_persist.then_some(ready_number),
            content: WriteContent {
                hard_state: *hard_state,
                snapshot: snapshot.map(|(meta, data)| (meta, data, SnapshotOrigin::Installed)),
                entries,
            },
            persisted_messages,
            sync: SyncState::NotNeeded,
            overwrite_floor: None,
        };
        if must_persist && let Some(wal) = self.wal.as_mut() {
            let content = &write.content;
            let installed = content
                .snapshot
                .as_ref()
                .map(|(meta, data, _)| (meta, data));
            write.overwrite_floor =
                wal.overwrite_floor(installed.map(|(meta, _)| meta), &content.entries);
            if let Err(failure) = wal.write_ready(installed, content.hard_state, &content.entries) {
                self.storage_failed(world, failure, write.overwrite_floor)?;
                return Ok(false);
            }
            write.sync = SyncState::Waiting {
                start_at: wal.draw_sync_start(&mut world.rng, world.now, durable_at),
            };
            if self.defect == Some(PersistenceDefect::PersistedBeforeSync) {
                self.report_early(world, &mut write)?;
            }
        }
        self.pending_writes.push_back(write);
        self.start_due_syncs(world)
    }

    /// The self-test's broken persistence path: reports the write durable before its sync.
    fn report_early(
        &mut self,
        world: &mut World,
        write: &mut PendingWrite,
    ) -> Result<(), Violation> {
        let content = std::mem::take(&mut write.content);
        self.report_durable(content, write.ready_number.take());
        for (message, acknowledged_term) in std::mem::take(&mut write.persisted_messages) {
            self.check_promise(&message, acknowledged_term)?;
            world.send(self.id, self.incarnation, message, None);
        }
        Ok(())
    }

    /// The Ready asked to install a snapshot: it must be the one a leader sent us.
    fn install_snapshot(
        &mut self,
        world: &mut World,
        meta: &SnapshotMeta,
    ) -> Result<(SnapshotMeta, Bytes), Violation> {
        let data = match &self.received_snapshot {
            Some((received, data))
                if received.index == meta.index && received.term == meta.term =>
            {
                data.clone()
            }
            _ => {
                return Err(Violation {
                    invariant: "snapshot install",
                    detail: format!(
                        "node {} was told to install snapshot (index {}, term {}) it never received",
                        self.id, meta.index, meta.term
                    ),
                });
            }
        };
        let kv = KvStore::decode_snapshot(&data).map_err(|error| Violation {
            invariant: "snapshot data",
            detail: format!(
                "node {} received snapshot data that does not decode: {error}",
                self.id
            ),
        })?;
        let base_fingerprint = world
            .checker
            .written_fingerprint(meta.index, meta.term)
            .ok_or_else(|| Violation {
                invariant: "snapshot install",
                detail: format!(
                    "node {} installs a snapshot at (index {}, term {}) that no node ever wrote",
                    self.id, meta.index, meta.term
                ),
            })?;
        world
            .checker
            .observe_state(self.id, meta.index, kv.fingerprint())?;
        world.trace.event(world.now, || {
            format!(
                "n{} installs snapshot (index {}, term {})",
                self.id, meta.index, meta.term
            )
        });
        self.mirror
            .reset_to(meta.index, meta.term, base_fingerprint);
        self.kv = kv;
        self.last_snapshot_index = meta.index;
        Ok((meta.clone(), data))
    }

    /// The data to stream with a `Snapshot` message: this node's latest durable snapshot.
    fn snapshot_data_for(&self, message: &Message) -> Option<Bytes> {
        let MessageBody::Snapshot { meta } = &message.body else {
            return None;
        };
        if let Some(wal) = &self.wal {
            return wal.snapshot_data(meta);
        }
        match &self.durable.snapshot {
            Some((durable, data)) if durable.index == meta.index => Some(data.clone()),
            _ => None,
        }
    }

    fn apply(&mut self, world: &mut World, entries: &[Entry]) -> Result<(), Violation> {
        let Some(last) = entries.last() else {
            return Ok(());
        };
        for entry in entries {
            if entry.index <= self.kv.applied_index() {
                return Err(Violation {
                    invariant: "apply order",
                    detail: format!(
                        "node {} was handed entry {} to apply after applying through {}",
                        self.id,
                        entry.index,
                        self.kv.applied_index()
                    ),
                });
            }
            let previous = self
                .mirror
                .at(entry.index - 1)
                .map(|(_, fingerprint)| fingerprint)
                .or_else(|| world.checker.committed_at(entry.index - 1).map(|(_, f)| f))
                .unwrap_or_default();
            let fingerprint =
                chain_fingerprint(previous, entry.index, entry.term, entry_digest(entry));
            let applied = self.apply_entry(world, entry)?;
            world.checker.observe_apply(
                self.id,
                entry.index,
                Some(fingerprint),
                self.kv.fingerprint(),
            )?;
            if let Some((request, result)) = applied {
                world.proposal_applied(self.id, self.incarnation, request, result);
            }
        }
        if let Some(raft) = self.raft.as_mut() {
            raft.on_applied(last.index);
        }
        Ok(())
    }

    fn apply_entry(
        &mut self,
        world: &mut World,
        entry: &Entry,
    ) -> Result<Option<(u64, Applied)>, Violation> {
        if entry.kind == EntryKind::ConfChange || entry.data.is_empty() {
            self.kv.advance(entry.index);
            if entry.kind == EntryKind::ConfChange {
                world.trace.event(world.now, || {
                    format!("n{} applies conf change at {}", self.id, entry.index)
                });
            }
            return Ok(None);
        }
        let command = Command::decode(&entry.data).map_err(|error| Violation {
            invariant: "entry data",
            detail: format!(
                "node {} applies entry {} whose data is not a command: {error}",
                self.id, entry.index
            ),
        })?;
        let result = self.kv.apply(entry.index, &command);
        Ok(Some((command.request(), result)))
    }

    /// Takes a snapshot of the state machine every few dozen entries and compacts the log
    /// behind it, so the snapshot paths (taking, sending, installing, restoring) run constantly.
    fn maybe_take_snapshot(&mut self, world: &mut World) -> Result<(), Violation> {
        let applied = self.kv.applied_index();
        if applied < self.last_snapshot_index + self.snapshot_every_entries
            || self
                .pending_writes
                .iter()
                .any(|w| w.content.snapshot.is_some())
        {
            return Ok(());
        }
        let Some(meta) = self
            .raft
            .as_ref()
            .and_then(|raft| raft.snapshot_meta(applied))
        else {
            return Ok(());
        };
        // The snapshot file is written and synced before the core hears of it.
        let data = self.kv.encode_snapshot();
        if self.wal.is_some() {
            if !self.save_snapshot_to_wal(world, &meta, &data)? {
                return Ok(());
            }
        } else {
            self.durable
                .set_snapshot(meta.clone(), data, SnapshotOrigin::Local);
        }
        let Some(raft) = self.raft.as_mut() else {
            return Ok(());
        };
        raft.snapshot_taken(meta);
        // Keep a short tail of entries sometimes, so slow followers are served from the log.
        let keep = world.rng.range(0, 20).min(applied);
        let compact_to = applied - keep;
        if compact_to > 0 && raft.compact(compact_to).is_ok() {
            self.mirror.compact_to(compact_to);
            if let Some(wal) = self.wal.as_mut() {
                wal.request_compaction(compact_to);
            }
        }
        self.last_snapshot_index = applied;
        world.trace.event(world.now, || {
            format!(
                "n{} snapshots at {applied}, compacts to {compact_to}",
                self.id
            )
        });
        Ok(())
    }

    /// Saves a local snapshot's file and queues its WAL marker, durable with its own sync like
    /// a Ready. Returns false if the node stopped on an I/O error.
    fn save_snapshot_to_wal(
        &mut self,
        world: &mut World,
        meta: &SnapshotMeta,
        data: &Bytes,
    ) -> Result<bool, Violation> {
        let Some(wal) = self.wal.as_mut() else {
            return Ok(true);
        };
        if let Err(failure) = wal.save_snapshot(meta, data, SnapshotOrigin::Local) {
            self.storage_failed(world, failure, None)?;
            return Ok(false);
        }
        let earliest = self.pending_writes.back().map_or(0, |w| w.durable_at);
        let delay = world.rng.range(0, self.disk_delay_max_steps);
        let durable_at = earliest.max(world.now + delay);
        let start_at = wal.draw_sync_start(&mut world.rng, world.now, durable_at);
        self.pending_writes.push_back(PendingWrite {
            durable_at,
            ready_number: None,
            content: WriteContent {
                snapshot: Some((meta.clone(), data.clone(), SnapshotOrigin::Local)),
                ..WriteContent::default()
            },
            persisted_messages: Vec::new(),
            sync: SyncState::Waiting { start_at },
            overwrite_floor: None,
        });
        self.start_due_syncs(world)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }
}

/// Sometimes runs and completes the sync of the next pending write before the one being
/// finished, as overlapping syncs may end in any order. Returns whether it did.
fn complete_next_sync_early(
    wal: &mut WalDisk,
    pending_writes: &mut VecDeque<PendingWrite>,
    rng: &mut SimRng,
) -> Result<bool, StorageFailure> {
    let Some(next) = pending_writes.front_mut() else {
        return Ok(false);
    };
    if !matches!(next.sync, SyncState::Started(_)) || !wal.draw_out_of_order(rng) {
        return Ok(false);
    }
    let SyncState::Started(started) = std::mem::replace(&mut next.sync, SyncState::NotNeeded)
    else {
        return Ok(false);
    };
    let failure = wal.draw_io_error(rng);
    let promise = wal.finish_sync_out_of_order(started, failure)?;
    next.sync = SyncState::CompletedEarly(promise);
    Ok(true)
}

/// The server forgets a removed member `max(4 × election timeout, 1 s)` after applying its
/// removal (`forget_peer_later` in crates/server); here, 4 election timeouts of the node's ticks.
const REMOVED_SENDER_GRACE_ELECTION_TIMEOUTS: u64 = 4;

/// A tick interval up to `skew_steps` faster or slower than the nominal tick.
fn skewed_tick_interval(rng: &mut SimRng, tick_steps: Time, skew_steps: Time) -> Time {
    let skew = skew_steps.min(tick_steps - 1);
    rng.range(tick_steps - skew, tick_steps + skew)
}

pub fn entry_digest(entry: &Entry) -> u64 {
    let mut hash = Fingerprint::new();
    hash.write_u64(match entry.kind {
        EntryKind::Normal => 1,
        EntryKind::ConfChange => 2,
    });
    hash.write_bytes(&entry.data);
    hash.finish()
}

fn entry_digests(entries: &[Entry]) -> Vec<(Index, Term, u64)> {
    entries
        .iter()
        .map(|entry| (entry.index, entry.term, entry_digest(entry)))
        .collect()
}
