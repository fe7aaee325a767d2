//! `--disk-faults`: a node persists through the real `ballot-wal` on its own [`FaultyDisk`].
//!
//! The host writes each Ready's records into the WAL as soon as it handles the Ready (a snapshot
//! to install is first saved in the WAL's [`SnapshotStore`]), starts the sync that covers them at
//! a random later step ([`Wal::start_sync`]: the bytes reach the disk, unsynced), and runs and
//! completes that sync when the Ready's random disk delay is over; only then does the core hear
//! `on_persisted`. A crash drops the `Wal` with its unfinished syncs and crashes the disk: what
//! was never synced is lost, or a random prefix of it is kept, the next write possibly torn, bits
//! possibly flipped in the unsynced bytes kept (`FaultyDisk::crash`). The restart reopens the WAL,
//! which must recover at least everything it reported durable, and never report corruption for
//! damage that only ever hit unsynced data.
//!
//! This module also keeps `written`, the model of everything handed to the WAL (durable or not),
//! so that each sync's report can be compared with what was written before it started, and the
//! recovered state with what was written before the crash.

use std::path::{Path, PathBuf};

use ballot_raft::{Entry, EntryKind, HardState, Index, NodeId, SnapshotMeta, Term};
use ballot_wal::{
    CrashOptions, DiskOp, DurableState, FaultyDisk, InjectedError, LogEntry, PendingSync,
    SnapshotError, SnapshotMarker, SnapshotStore, Wal, WalError, WalOptions,
};
use bytes::{Bytes, BytesMut};

use crate::durable::{DurableStore, SnapshotOrigin};
use crate::invariants::Violation;
use crate::rng::SimRng;
use crate::simulation::SimOptions;

/// Every simulated cluster gets this id; each node's WAL is claimed by its node id.
const CLUSTER_ID: u64 = 0xba11_0700;

fn wal_dir() -> PathBuf {
    PathBuf::from("/wal")
}

fn snapshot_dir() -> PathBuf {
    PathBuf::from("/snap")
}

/// How one node's disk and WAL behave, drawn per node.
#[derive(Clone, Debug)]
pub struct DiskFaultProfile {
    /// Small segments, so rollover and compaction happen many times per run.
    pub segment_size_bytes: u64,
    pub preallocate_segments: bool,
    /// Small buffers, so one Ready's records reach the disk in several writes.
    pub write_buffer_bytes_max: usize,
    /// The snapshot store's `keep_count`: the durable marker's file and `snapshots_kept - 1`
    /// older ones survive pruning.
    pub snapshots_kept: usize,
    /// Whether a Ready's hard state is written before its entries, the order ballot-raft's
    /// Ready contract prescribes. It is unsafe (docs/sim.md, "Findings": a crash can keep the
    /// new commit index and lose the entries that replaced a conflicting suffix), so it is only
    /// drawn with [`SimOptions::hard_state_before_entries`]; otherwise entries go first, as in
    /// etcd's `WAL.Save` and Ballot's server.
    ///
    /// [`SimOptions::hard_state_before_entries`]: crate::SimOptions::hard_state_before_entries
    pub hard_state_first: bool,
    /// Compare what the WAL recovers with what it reported durable (off only in the self-test
    /// that shows the Raft checks alone catch a broken persistence path).
    pub check_recovery: bool,
    /// Chance that a Ready's sync starts (its bytes reach the disk) the moment it is handled;
    /// otherwise at a random step before it completes.
    pub sync_starts_at_once_per_million: u64,
    /// Chance that a sync or write fails with EIO or ENOSPC (fatal: the node stops).
    pub io_error_per_million: u64,
    /// Chance, per sync started, that the node crashes before that sync completes.
    pub crash_during_sync_per_million: u64,
    /// Chance, when a sync is due and the next one has started, that the next one completes
    /// first (overlapping syncs finish in any order; the WAL reports them in start order).
    pub out_of_order_syncs_per_million: u64,
}

impl DiskFaultProfile {
    /// A profile drawn from `rng`; the draws are the same whatever the options, so a seed
    /// replays with either setting.
    pub fn random(rng: &mut SimRng, options: &SimOptions) -> DiskFaultProfile {
        DiskFaultProfile {
            segment_size_bytes: *rng.pick(&[4096, 8192, 32 * 1024]),
            preallocate_segments: rng.chance(750_000),
            write_buffer_bytes_max: *rng.pick(&[64, 512, 4096, 1 << 20]),
            snapshots_kept: rng.range(2, 3) as usize,
            hard_state_first: rng.chance(500_000) && options.hard_state_before_entries,
            check_recovery: options.check_wal_recovery,
            sync_starts_at_once_per_million: rng.range(0, 1_000_000),
            io_error_per_million: if rng.chance(300_000) {
                rng.range(200, 3_000)
            } else {
                0
            },
            crash_during_sync_per_million: rng.range(0, 10_000),
            out_of_order_syncs_per_million: if rng.chance(500_000) {
                rng.range(100_000, 900_000)
            } else {
                0
            },
        }
    }

    /// A crash as harsh as this seed's dice say, from keeping nothing unsynced to keeping a
    /// torn, bit-flipped prefix of it.
    fn crash_options(rng: &mut SimRng) -> CrashOptions {
        CrashOptions {
            keep_unsynced_prefix: rng.chance(700_000),
            tear_last_write: rng.chance(600_000),
            flip_bits_max: *rng.pick(&[0, 0, 1, 3]),
            keep_unsynced_dir_changes: rng.chance(500_000),
        }
    }
}

/// Why a storage call failed.
#[derive(Debug)]
pub enum StorageFailure {
    /// The disk reported an I/O error: fatal, the node must stop (a failed fsync is never
    /// retried; docs/wal.md).
    Io(String),
    /// The WAL, the snapshot store or the node's use of them broke a rule.
    Broken(Violation),
}

/// What a started sync promises, taken from the written model when it started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncPromise {
    pub last_index: Index,
    pub last_term: Term,
    pub hard_state: HardState,
    pub snapshot_index: Index,
}

/// What a recovery found, for statistics and the trace.
#[derive(Clone, Debug, Default)]
pub struct RecoveryReport {
    /// A torn tail was cut off the last segment.
    pub torn_tail: Option<String>,
    /// The recovered log or hard state goes beyond what was reported durable (unsynced writes
    /// survived the crash).
    pub beyond_promise: bool,
}

/// A sync begun for one pending write.
pub struct StartedSync {
    pending: PendingSync<FaultyDisk>,
    promise: SyncPromise,
}

/// A node's disk, its WAL and its snapshot store.
pub struct WalDisk {
    node: NodeId,
    profile: DiskFaultProfile,
    disk: FaultyDisk,
    /// `None` while the node is down.
    wal: Option<Wal<FaultyDisk>>,
    snapshots: Option<SnapshotStore<FaultyDisk>>,
    /// Everything handed to the WAL, durable or not.
    written: DurableStore,
    /// The durable snapshot marker's index when snapshot files were last pruned behind it.
    pruned_below: Index,
    /// The lowest index that writes not yet reported durable may have removed (a conflicting
    /// suffix, a log replaced by an installed snapshot), set when the node crashes: below it,
    /// every entry reported durable must survive the crash.
    overwrite_floor_at_crash: Option<Index>,
    /// The latest compaction point the core asked for; done once no sync is pending.
    compact_through: Index,
    pub io_errors: u64,
}

fn entry_to_wal(entry: &Entry) -> LogEntry {
    LogEntry {
        index: entry.index,
        term: entry.term,
        kind: match entry.kind {
            EntryKind::Normal => 0,
            EntryKind::ConfChange => 1,
        },
        data: entry.data.clone(),
    }
}

fn hard_state_to_wal(state: &HardState) -> ballot_wal::HardState {
    ballot_wal::HardState {
        term: state.term,
        vote: state.vote,
        commit: state.commit,
    }
}

fn hard_state_from_wal(state: &ballot_wal::HardState) -> HardState {
    HardState {
        term: state.term,
        vote: state.vote,
        commit: state.commit,
    }
}

fn snapshot_marker(meta: &SnapshotMeta) -> SnapshotMarker {
    let mut buf = BytesMut::new();
    meta.encode(&mut buf);
    SnapshotMarker {
        index: meta.index,
        term: meta.term,
        meta: buf.freeze(),
    }
}

fn wal_failure(node: NodeId, what: &str, error: WalError) -> StorageFailure {
    match error {
        WalError::Io { .. } => StorageFailure::Io(format!("{what}: {error}")),
        other => StorageFailure::Broken(Violation {
            invariant: "WAL accepts the node's writes",
            detail: format!("node {node}'s WAL refused to {what}: {other}"),
        }),
    }
}

fn snapshot_failure(node: NodeId, what: &str, error: SnapshotError) -> StorageFailure {
    match error {
        SnapshotError::Io { .. } => StorageFailure::Io(format!("{what}: {error}")),
        other => StorageFailure::Broken(Violation {
            invariant: "snapshot store accepts the node's snapshots",
            detail: format!("node {node}'s snapshot store refused to {what}: {other}"),
        }),
    }
}

fn recovery_violation(node: NodeId, detail: String) -> StorageFailure {
    StorageFailure::Broken(Violation {
        invariant: "WAL recovers what it reported durable",
        detail: format!("node {node}: {detail}"),
    })
}

impl WalDisk {
    pub fn new(node: NodeId, profile: DiskFaultProfile) -> WalDisk {
        WalDisk {
            node,
            profile,
            disk: FaultyDisk::new(),
            wal: None,
            snapshots: None,
            written: DurableStore::default(),
            overwrite_floor_at_crash: None,
            compact_through: 0,
            pruned_below: 0,
            io_errors: 0,
        }
    }

    pub fn profile(&self) -> &DiskFaultProfile {
        &self.profile
    }

    fn wal_options(&self) -> WalOptions {
        let mut options = WalOptions::new(CLUSTER_ID, self.node);
        options.segment_size_bytes = self.profile.segment_size_bytes;
        options.preallocate_segments = self.profile.preallocate_segments;
        options.write_buffer_bytes_max = self.profile.write_buffer_bytes_max;
        options
    }

    fn wal(&mut self) -> &mut Wal<FaultyDisk> {
        let node = self.node;
        self.wal
            .as_mut()
            .unwrap_or_else(|| panic!("node {node}'s WAL is used while the node is down"))
    }

    fn store(&self) -> &SnapshotStore<FaultyDisk> {
        let node = self.node;
        self.snapshots.as_ref().unwrap_or_else(|| {
            panic!("node {node}'s snapshot store is used while the node is down")
        })
    }

    /// Opens the WAL and the snapshot store and recovers the node's durable state, checking it
    /// against `promised` (what the WAL reported durable before the crash). Returns the state
    /// to restart from: what the disk actually holds.
    pub fn open(
        &mut self,
        promised: &DurableStore,
    ) -> Result<(DurableStore, RecoveryReport), StorageFailure> {
        let node = self.node;
        let (wal, recovered) = Wal::open(self.disk.clone(), &wal_dir(), self.wal_options())
            .map_err(|error| {
                recovery_violation(node, format!("reopening the WAL failed: {error}"))
            })?;
        let store = SnapshotStore::open(
            self.disk.clone(),
            &snapshot_dir(),
            self.profile.snapshots_kept,
        )
        .map_err(|error| {
            recovery_violation(
                node,
                format!("reopening the snapshot store failed: {error}"),
            )
        })?;
        let chosen = store.choose_for_recovery(&recovered).map_err(|error| {
            recovery_violation(node, format!("no snapshot to recover from: {error}"))
        })?;
        let marker = recovered.snapshot.as_ref().map(|m| (m.index, m.term));
        // Files whose markers the crash lost: no recovery will use them (ballot-wal's retention
        // contract, docs/wal.md "Which files are kept").
        store.remove_orphans(&recovered).map_err(|error| {
            recovery_violation(
                node,
                format!("removing orphan snapshot files failed: {error}"),
            )
        })?;
        let snapshot = match &chosen {
            Some(info) => {
                if Some((info.index, info.term)) != marker {
                    // Snapshot files are durable before their marker is written, so the file
                    // the WAL's marker names must exist: falling back to an older one means the
                    // store deleted a file the WAL still relies on.
                    return Err(recovery_violation(
                        node,
                        format!(
                            "the WAL's snapshot marker is {marker:?} but the snapshot store offers (index {}, term {}) instead",
                            info.index, info.term
                        ),
                    ));
                }
                let loaded = store.load(&info.path).map_err(|error| {
                    recovery_violation(node, format!("the chosen snapshot does not load: {error}"))
                })?;
                let meta = SnapshotMeta::decode(&loaded.info.meta).map_err(|error| {
                    recovery_violation(
                        node,
                        format!(
                            "snapshot {}'s metadata does not decode: {error}",
                            info.index
                        ),
                    )
                })?;
                if (meta.index, meta.term) != (info.index, info.term) {
                    return Err(recovery_violation(
                        node,
                        format!(
                            "snapshot file (index {}, term {}) holds metadata for (index {}, term {})",
                            info.index, info.term, meta.index, meta.term
                        ),
                    ));
                }
                Some((meta, loaded.data))
            }
            None if marker.is_some() => {
                return Err(recovery_violation(
                    node,
                    format!(
                        "the WAL records snapshot {marker:?} but recovery offers no snapshot file"
                    ),
                ));
            }
            None => None,
        };
        let snapshot_index = snapshot.as_ref().map_or(0, |(meta, _)| meta.index);
        let entries = recovered
            .entries_after(snapshot_index)
            .iter()
            .map(|entry| entry_from_wal(node, entry))
            .collect::<Result<Vec<Entry>, StorageFailure>>()?;
        let state = DurableStore {
            hard_state: hard_state_from_wal(&recovered.hard_state),
            snapshot,
            entries,
        };
        if self.profile.check_recovery {
            self.check_recovery(promised, &state)?;
        }
        let report = RecoveryReport {
            torn_tail: recovered.torn_tail.as_ref().map(|torn| {
                format!(
                    "{} bytes at offset {} of {}",
                    torn.dropped_bytes,
                    torn.offset,
                    torn.path.display()
                )
            }),
            beyond_promise: state.last() != promised.last()
                || state.hard_state != promised.hard_state
                || state.snapshot_index() != promised.snapshot_index(),
        };
        self.wal = Some(wal);
        self.snapshots = Some(store);
        self.written = state.clone();
        self.overwrite_floor_at_crash = None;
        self.compact_through = 0;
        self.pruned_below = 0;
        Ok((state, report))
    }

    /// The recovered state must hold everything the WAL reported durable, except what later
    /// writes (not yet reported) may have replaced, and nothing the node never wrote.
    fn check_recovery(
        &self,
        promised: &DurableStore,
        recovered: &DurableStore,
    ) -> Result<(), StorageFailure> {
        let node = self.node;
        let (found, promise, written) = (
            recovered.hard_state,
            promised.hard_state,
            self.written.hard_state,
        );
        // Terms only grow and a vote, once cast in a term, stays: the hard state recovered must
        // be the one reported durable or a later one. (The commit index is a hint that a restart
        // may cut back, so it is not compared.)
        let vote_lost =
            found.term == promise.term && promise.vote != 0 && found.vote != promise.vote;
        if found.term < promise.term || vote_lost {
            return Err(recovery_violation(
                node,
                format!("recovered hard state {found:?}, but {promise:?} was reported durable"),
            ));
        }
        if found.term > written.term {
            return Err(recovery_violation(
                node,
                format!("recovered hard state {found:?}, but the newest written was {written:?}"),
            ));
        }
        let recovered_snapshot = recovered.snapshot_index();
        if recovered_snapshot < promised.snapshot_index()
            || recovered_snapshot > self.written.snapshot_index()
        {
            return Err(recovery_violation(
                node,
                format!(
                    "recovered snapshot {recovered_snapshot}, but {} was reported durable and {} was the newest written",
                    promised.snapshot_index(),
                    self.written.snapshot_index()
                ),
            ));
        }
        let floor = self.overwrite_floor_at_crash.unwrap_or(Index::MAX);
        for entry in promised
            .entries
            .iter()
            .filter(|e| e.index > recovered_snapshot && e.index < floor)
        {
            if recovered.entry(entry.index) != Some(entry) {
                return Err(recovery_violation(
                    node,
                    format!(
                        "entry (index {}, term {}) was reported durable but recovery returned {:?} (log ({recovered_snapshot}, {}])",
                        entry.index,
                        entry.term,
                        recovered.entry(entry.index).map(|e| (e.index, e.term)),
                        recovered.last().0
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Hands one Ready's durable part to the WAL, in the order of the Ready contract: the
    /// snapshot (its file saved first, then the marker), then hard state and entries in this
    /// node's order. Nothing is durable before a sync covering it completes.
    pub fn write_ready(
        &mut self,
        snapshot: Option<(&SnapshotMeta, &Bytes)>,
        hard_state: Option<HardState>,
        entries: &[Entry],
    ) -> Result<(), StorageFailure> {
        if let Some((meta, data)) = snapshot {
            self.save_snapshot(meta, data, SnapshotOrigin::Installed)?;
        }
        // Entries the snapshot (installed or taken locally) covers are committed and already
        // in it; the WAL refuses to touch what its snapshot covers.
        let snapshot_index = self.written.snapshot_index();
        let first_new = entries.partition_point(|e| e.index <= snapshot_index);
        let entries = &entries[first_new..];
        if self.profile.hard_state_first {
            self.write_hard_state(hard_state)?;
            self.write_entries(entries)?;
        } else {
            self.write_entries(entries)?;
            self.write_hard_state(hard_state)?;
        }
        Ok(())
    }

    fn write_entries(&mut self, entries: &[Entry]) -> Result<(), StorageFailure> {
        if entries.is_empty() {
            return Ok(());
        }
        let converted: Vec<LogEntry> = entries.iter().map(entry_to_wal).collect();
        let node = self.node;
        self.wal()
            .append(&converted)
            .map_err(|error| wal_failure(node, "append entries", error))?;
        self.written.append(entries);
        Ok(())
    }

    fn write_hard_state(&mut self, hard_state: Option<HardState>) -> Result<(), StorageFailure> {
        let Some(hard_state) = hard_state else {
            return Ok(());
        };
        let node = self.node;
        self.wal()
            .set_hard_state(hard_state_to_wal(&hard_state))
            .map_err(|error| wal_failure(node, "record the hard state", error))?;
        self.written.hard_state = hard_state;
        Ok(())
    }

    /// Saves a snapshot file (durable when `save` returns), then records its marker in the WAL
    /// (durable with the next sync): the order docs/wal.md prescribes.
    pub fn save_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        data: &Bytes,
        origin: SnapshotOrigin,
    ) -> Result<(), StorageFailure> {
        let node = self.node;
        let marker = snapshot_marker(meta);
        self.store()
            .save(meta.index, meta.term, marker.meta.clone(), data)
            .map_err(|error| snapshot_failure(node, "save a snapshot", error))?;
        self.wal()
            .set_snapshot(marker)
            .map_err(|error| wal_failure(node, "record a snapshot marker", error))?;
        self.written
            .set_snapshot(meta.clone(), data.clone(), origin);
        Ok(())
    }

    /// When a write's sync starts: at once, or at a random step before it must be durable.
    pub fn draw_sync_start(&self, rng: &mut SimRng, now: u64, durable_at: u64) -> u64 {
        if rng.chance(self.profile.sync_starts_at_once_per_million) {
            now
        } else {
            rng.range(now, durable_at)
        }
    }

    /// No more injected I/O errors or crashes (the healing phase).
    pub fn stop_faults(&mut self) {
        self.profile.io_error_per_million = 0;
        self.profile.crash_during_sync_per_million = 0;
    }

    /// Whether the node should crash before the sync just started completes.
    pub fn draw_crash_during_sync(&self, rng: &mut SimRng) -> bool {
        self.profile.crash_during_sync_per_million > 0
            && rng.chance(self.profile.crash_during_sync_per_million)
    }

    /// Whether this node's next sync or write should fail, and how (drawn per sync).
    pub fn draw_io_error(&self, rng: &mut SimRng) -> Option<InjectedError> {
        let fails =
            self.profile.io_error_per_million > 0 && rng.chance(self.profile.io_error_per_million);
        fails.then(|| *rng.pick(&[InjectedError::Eio, InjectedError::Enospc]))
    }

    /// Whether the sync after the one about to complete should complete first.
    pub fn draw_out_of_order(&self, rng: &mut SimRng) -> bool {
        self.profile.out_of_order_syncs_per_million > 0
            && rng.chance(self.profile.out_of_order_syncs_per_million)
    }

    /// Writes everything buffered to the disk (unsynced) and returns the sync that will make it
    /// durable. `failure` makes the disk refuse the next write first.
    pub fn start_sync(
        &mut self,
        failure: Option<InjectedError>,
    ) -> Result<StartedSync, StorageFailure> {
        if let Some(error) = failure {
            self.disk.inject(DiskOp::Append, error);
        }
        let (last_index, last_term) = self.written.last();
        let promise = SyncPromise {
            last_index,
            last_term,
            hard_state: self.written.hard_state,
            snapshot_index: self.written.snapshot_index(),
        };
        let node = self.node;
        let pending = self
            .wal()
            .start_sync()
            .map_err(|error| wal_failure(node, "start a sync", error))?;
        Ok(StartedSync { pending, promise })
    }

    /// Runs a started sync (`fdatasync`) and reports it to the WAL; checks that what the WAL
    /// now calls durable is what was written before the sync started, or before the start of
    /// `completed_after`, the newest of the syncs started after this one that already completed
    /// out of order. `failure` makes the `fdatasync` fail.
    pub fn finish_sync(
        &mut self,
        started: StartedSync,
        failure: Option<InjectedError>,
        completed_after: Option<&SyncPromise>,
    ) -> Result<(), StorageFailure> {
        let node = self.node;
        let expected = completed_after.unwrap_or(&started.promise).clone();
        let durable = self.run_and_complete(started, failure)?;
        check_sync_report(node, &durable, &expected)?;
        if durable.snapshot_index > self.pruned_below {
            // Only a durable marker lets older snapshot files go (ballot-wal's retention
            // contract, docs/wal.md "Which files are kept").
            self.pruned_below = durable.snapshot_index;
            self.store()
                .prune_behind_durable_marker(&durable)
                .map_err(|error| snapshot_failure(node, "prune snapshot files", error))?;
        }
        if self.wal().pending_syncs() == 0 && self.compact_through > 0 {
            let through = std::mem::take(&mut self.compact_through);
            self.wal()
                .compact(through)
                .map_err(|error| wal_failure(node, "compact", error))?;
        }
        Ok(())
    }

    /// Runs and completes a sync while an earlier one is still outstanding, as the group
    /// commit's overlapping syncs do. The WAL reports durability in start order only, so its
    /// durable state must not move; the sync's promise is returned for when the earlier one
    /// completes.
    pub fn finish_sync_out_of_order(
        &mut self,
        started: StartedSync,
        failure: Option<InjectedError>,
    ) -> Result<SyncPromise, StorageFailure> {
        let node = self.node;
        let before = self.wal().durable_state().clone();
        let promise = started.promise.clone();
        let durable = self.run_and_complete(started, failure)?;
        if durable != before {
            return Err(StorageFailure::Broken(Violation {
                invariant: "WAL reports what it made durable",
                detail: format!(
                    "node {node}: a sync completed before an earlier one, and the WAL's durable state moved from {before:?} to {durable:?}"
                ),
            }));
        }
        Ok(promise)
    }

    fn run_and_complete(
        &mut self,
        mut started: StartedSync,
        failure: Option<InjectedError>,
    ) -> Result<DurableState, StorageFailure> {
        if let Some(error) = failure {
            self.disk.inject(DiskOp::Sync, error);
        }
        let node = self.node;
        let outcome = started.pending.run();
        Ok(self
            .wal()
            .complete_sync(started.pending.id(), outcome)
            .map_err(|error| wal_failure(node, "complete a sync", error))?
            .clone())
    }

    /// The core compacted its log through `index`; whole WAL segments below it go once the
    /// snapshot marker covering them is durable and no sync is pending.
    pub fn request_compaction(&mut self, index: Index) {
        self.compact_through = self.compact_through.max(index);
    }

    /// The data of the snapshot `meta` describes, read back from the snapshot store (and
    /// verified), for streaming to a peer.
    pub fn snapshot_data(&self, meta: &SnapshotMeta) -> Option<Bytes> {
        let store = self.snapshots.as_ref()?;
        let listed = store.list().ok()?;
        let (_, _, path) = listed
            .into_iter()
            .find(|(index, term, _)| (*index, *term) == (meta.index, meta.term))?;
        store.load(Path::new(&path)).ok().map(|loaded| loaded.data)
    }

    /// Power loss: the process and its unfinished syncs are gone, and the disk keeps what its
    /// crash model allows of the unsynced data. `overwrite_floor` is the lowest index the writes
    /// not yet reported durable may have removed.
    pub fn crash(&mut self, rng: &mut SimRng, overwrite_floor: Option<Index>) -> CrashOptions {
        self.wal = None;
        self.snapshots = None;
        let options = DiskFaultProfile::crash_options(rng);
        self.disk.crash(rng.next_u64(), options);
        self.overwrite_floor_at_crash = overwrite_floor;
        options
    }

    /// The lowest index a Ready writing `entries` (after an optional installed snapshot) may
    /// remove from the log written so far, if any. Call it before [`WalDisk::write_ready`].
    pub fn overwrite_floor(
        &self,
        installed: Option<&SnapshotMeta>,
        entries: &[Entry],
    ) -> Option<Index> {
        let snapshot_floor = installed.map(|meta| meta.index + 1);
        let covered = installed
            .map_or(0, |meta| meta.index)
            .max(self.written.snapshot_index());
        let (last_index, _) = self.written.last();
        let entries_floor = entries
            .iter()
            .map(|e| e.index)
            .find(|&index| index > covered)
            .filter(|&first| first <= last_index);
        match (snapshot_floor, entries_floor) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

fn entry_from_wal(node: NodeId, entry: &LogEntry) -> Result<Entry, StorageFailure> {
    let kind = match entry.kind {
        0 => EntryKind::Normal,
        1 => EntryKind::ConfChange,
        other => {
            return Err(recovery_violation(
                node,
                format!("entry {} came back with unknown kind {other}", entry.index),
            ));
        }
    };
    Ok(Entry {
        term: entry.term,
        index: entry.index,
        kind,
        data: entry.data.clone(),
    })
}

fn check_sync_report(
    node: NodeId,
    durable: &DurableState,
    promise: &SyncPromise,
) -> Result<(), StorageFailure> {
    let reported = SyncPromise {
        last_index: durable.last_index,
        last_term: durable.last_term,
        hard_state: hard_state_from_wal(&durable.hard_state),
        snapshot_index: durable.snapshot_index,
    };
    if reported == *promise {
        return Ok(());
    }
    Err(StorageFailure::Broken(Violation {
        invariant: "WAL reports what it made durable",
        detail: format!(
            "node {node}: after a sync the WAL reports {reported:?}, but {promise:?} was written before the sync started"
        ),
    }))
}
