//! Which snapshot files the store deletes, and when: never the file the WAL's durable snapshot
//! marker names, never a file newer than it (its marker may be pending), and, on start, the
//! files whose markers were lost in a crash. The crash tests run the WAL and the store on one
//! faulty disk, crash at every mutating operation in turn, and require recovery to find the
//! very file the recovered marker names.

mod common;

use std::path::Path;

use ballot_wal::{
    CrashOptions, DurableState, FaultyDisk, Recovered, SnapshotError, SnapshotMarker,
    SnapshotStore, Wal,
};
use bytes::Bytes;
use common::{entry, open};

const SNAP_DIR: &str = "/data/snap";
/// Small segments for the crash-point workload, so rollover and compaction happen often.
const SMALL_SEGMENT_BYTES: u64 = 4096;
/// Segments the step-by-step scenarios never fill: a rollover syncs the segment it closes,
/// which would make a marker durable that the scenario means to leave pending.
const LARGE_SEGMENT_BYTES: u64 = 1 << 20;

/// How a member's WAL and store are set up.
#[derive(Clone, Copy, Debug)]
struct Layout {
    keep_count: usize,
    segment_size_bytes: u64,
}

fn store(disk: &FaultyDisk, keep_count: usize) -> SnapshotStore<FaultyDisk> {
    SnapshotStore::open(disk.clone(), Path::new(SNAP_DIR), keep_count).expect("open store")
}

fn data(index: u64) -> Vec<u8> {
    (0..3_000u64).map(|i| (i * index % 251) as u8).collect()
}

fn save(store: &SnapshotStore<FaultyDisk>, index: u64, term: u64) {
    store
        .save(index, term, Bytes::new(), &data(index))
        .expect("save");
}

/// Indexes of the snapshot files present, newest first.
fn files(store: &SnapshotStore<FaultyDisk>) -> Vec<u64> {
    store
        .list()
        .expect("list")
        .iter()
        .map(|(index, _, _)| *index)
        .collect()
}

fn durable_marker(index: u64, term: u64) -> DurableState {
    DurableState {
        snapshot_index: index,
        snapshot_term: term,
        ..DurableState::default()
    }
}

fn recovered_marker(marker: Option<(u64, u64)>) -> Recovered {
    Recovered {
        snapshot: marker.map(|(index, term)| SnapshotMarker {
            index,
            term,
            meta: Bytes::new(),
        }),
        ..Recovered::default()
    }
}

#[test]
fn saving_deletes_no_file() {
    let disk = FaultyDisk::new();
    let store = store(&disk, 1);
    for index in [5, 10, 15] {
        save(&store, index, 1);
    }
    assert_eq!(files(&store), vec![15, 10, 5]);
}

#[test]
fn pruning_keeps_the_durable_markers_file_and_keep_count_minus_one_older_ones() {
    let disk = FaultyDisk::new();
    let store = store(&disk, 2);
    for index in [5, 10, 15, 20] {
        save(&store, index, 1);
    }
    let deleted = store
        .prune_behind_durable_marker(&durable_marker(15, 1))
        .expect("prune");
    assert_eq!(deleted, 1);
    assert_eq!(files(&store), vec![20, 15, 10]);
    // The same durable state again deletes nothing more.
    assert_eq!(
        store
            .prune_behind_durable_marker(&durable_marker(15, 1))
            .expect("prune again"),
        0
    );
}

#[test]
fn pruning_never_deletes_files_newer_than_the_durable_marker() {
    let disk = FaultyDisk::new();
    let store = store(&disk, 1);
    for index in [10, 20, 30, 40] {
        save(&store, index, 1);
    }
    // Markers 20..=40 are written but not durable: a crash may lose any of them, so only the
    // file of marker 10 is certain to be needed, and the newer ones may be needed next.
    let deleted = store
        .prune_behind_durable_marker(&durable_marker(10, 1))
        .expect("prune");
    assert_eq!(deleted, 0);
    assert_eq!(files(&store), vec![40, 30, 20, 10]);
    // Once marker 30 is durable, 10 and 20 go (one file kept), 40 stays.
    store
        .prune_behind_durable_marker(&durable_marker(30, 1))
        .expect("prune");
    assert_eq!(files(&store), vec![40, 30]);
}

#[test]
fn pruning_without_a_durable_marker_deletes_nothing() {
    let disk = FaultyDisk::new();
    let store = store(&disk, 1);
    save(&store, 10, 1);
    save(&store, 20, 1);
    assert_eq!(
        store
            .prune_behind_durable_marker(&DurableState::default())
            .expect("prune"),
        0
    );
    assert_eq!(files(&store), vec![20, 10]);
}

#[test]
fn pruning_refuses_a_durable_marker_whose_file_is_missing() {
    let disk = FaultyDisk::new();
    let store = store(&disk, 1);
    save(&store, 10, 1);
    save(&store, 20, 2);
    for missing in [durable_marker(15, 2), durable_marker(20, 3)] {
        let error = store
            .prune_behind_durable_marker(&missing)
            .expect_err("a marker without its file");
        assert!(matches!(error, SnapshotError::InvalidRequest(_)), "{error}");
    }
    assert_eq!(files(&store), vec![20, 10], "nothing was deleted");
}

#[test]
fn orphans_are_the_files_the_recovered_wal_does_not_record() {
    let disk = FaultyDisk::new();
    let store = store(&disk, 1);
    save(&store, 10, 1);
    save(&store, 20, 2);
    save(&store, 30, 3);
    // The marker for 20 survived, the one for 30 did not.
    let removed = store
        .remove_orphans(&recovered_marker(Some((20, 2))))
        .expect("remove orphans");
    assert_eq!(removed, 1);
    assert_eq!(
        files(&store),
        vec![20, 10],
        "older files are pruning's business"
    );
    // A file at the marker's index with another term is not the recorded one either.
    store.save(20, 3, Bytes::new(), &data(21)).expect("save");
    store
        .remove_orphans(&recovered_marker(Some((20, 2))))
        .expect("remove orphans");
    let listed: Vec<(u64, u64)> = store
        .list()
        .expect("list")
        .iter()
        .map(|(index, term, _)| (*index, *term))
        .collect();
    assert_eq!(listed, vec![(20, 2), (10, 1)]);
    // With no marker at all, no file is recorded.
    store
        .remove_orphans(&recovered_marker(None))
        .expect("remove orphans");
    assert_eq!(files(&store), Vec::<u64>::new());
}

/// What the crash workloads drive: a WAL and a snapshot store on one disk.
struct Member {
    wal: Wal<FaultyDisk>,
    store: SnapshotStore<FaultyDisk>,
    next_index: u64,
}

impl Member {
    fn create(disk: &FaultyDisk, layout: Layout) -> Member {
        let (wal, _) = open(disk, layout.segment_size_bytes).expect("open WAL");
        Member {
            wal,
            store: store(disk, layout.keep_count),
            next_index: 1,
        }
    }

    /// Reopens after a crash: the recovered marker's own file must be the one recovery chooses
    /// (no fallback, no `Unrecoverable`); then the orphans go. Returns the recovered marker.
    fn recover(disk: &FaultyDisk, layout: Layout, context: &str) -> (Member, Option<u64>) {
        let (wal, recovered) = open(disk, layout.segment_size_bytes)
            .unwrap_or_else(|error| panic!("{context}: reopening the WAL failed: {error}"));
        let store = SnapshotStore::open(disk.clone(), Path::new(SNAP_DIR), layout.keep_count)
            .unwrap_or_else(|error| panic!("{context}: reopening the store failed: {error}"));
        let marker = recovered.snapshot.as_ref().map(|m| (m.index, m.term));
        let chosen = store
            .choose_for_recovery(&recovered)
            .unwrap_or_else(|error| panic!("{context}: no snapshot to recover from: {error}"));
        assert_eq!(
            chosen.as_ref().map(|info| (info.index, info.term)),
            marker,
            "{context}: recovery must use the file of the WAL's marker"
        );
        store
            .remove_orphans(&recovered)
            .unwrap_or_else(|error| panic!("{context}: removing orphans failed: {error}"));
        assert!(
            files(&store)
                .iter()
                .all(|index| Some(*index) <= marker.map(|m| m.0)),
            "{context}: a file newer than the recovered marker survived orphan removal"
        );
        let next_index = recovered.last_index() + 1;
        let member = Member {
            wal,
            store,
            next_index,
        };
        (member, marker.map(|m| m.0))
    }

    fn append(&mut self, count: u64) -> Result<(), String> {
        let entries: Vec<_> = (self.next_index..self.next_index + count)
            .map(|index| entry(index, 1, &[index as u8; 64]))
            .collect();
        self.wal.append(&entries).map_err(|e| e.to_string())?;
        self.next_index += count;
        Ok(())
    }

    /// Saves the snapshot of everything appended so far and writes its marker, unsynced.
    fn snapshot(&mut self) -> Result<(), String> {
        let index = self.next_index - 1;
        self.store
            .save(index, 1, Bytes::new(), &data(index))
            .map_err(|e| e.to_string())?;
        self.wal
            .set_snapshot(SnapshotMarker {
                index,
                term: 1,
                meta: Bytes::new(),
            })
            .map_err(|e| e.to_string())
    }

    /// Syncs and then prunes behind whatever marker the WAL now reports durable.
    fn sync_and_prune(&mut self) -> Result<(), String> {
        let durable = self.wal.sync().map_err(|e| e.to_string())?.clone();
        self.store
            .prune_behind_durable_marker(&durable)
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Snapshots taken with markers pending (a local snapshot, then another one before the
    /// first marker's sync, as when a leader's snapshot arrives meanwhile), syncs that make
    /// several markers durable at once, and compaction behind them.
    fn workload(&mut self, rounds: u64) -> Result<(), String> {
        for round in 0..rounds {
            self.append(3)?;
            self.sync_and_prune()?;
            self.snapshot()?;
            if round % 2 == 1 {
                self.append(2)?;
                self.snapshot()?;
            }
            self.sync_and_prune()?;
            let through = self.wal.durable_state().snapshot_index;
            self.wal.compact(through).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// Runs `workload` from a fresh disk until it finishes, returning its mutating disk operations.
fn count_ops(layout: Layout, rounds: u64) -> u64 {
    let disk = FaultyDisk::new();
    let mut member = Member::create(&disk, layout);
    let before = disk.mutating_ops();
    member.workload(rounds).expect("workload without faults");
    disk.mutating_ops() - before
}

#[test]
fn a_crash_at_any_point_leaves_the_recorded_snapshot_file() {
    const ROUNDS: u64 = 6;
    for keep_count in [1, 2] {
        let layout = Layout {
            keep_count,
            segment_size_bytes: SMALL_SEGMENT_BYTES,
        };
        let total = count_ops(layout, ROUNDS);
        for crash_at_op in 0..=total {
            for seed in 0..3 {
                let context =
                    format!("keep {keep_count}, crash after op {crash_at_op}, seed {seed}");
                let disk = FaultyDisk::new();
                let mut member = Member::create(&disk, layout);
                disk.cut_power_after(Some(crash_at_op));
                let finished = member.workload(ROUNDS).is_ok();
                let reported = member.wal.durable_state().snapshot_index;
                drop(member);
                disk.crash(crash_at_op * 7 + seed, CrashOptions::ANY);
                let (mut member, marker) = Member::recover(&disk, layout, &context);
                assert!(
                    marker.unwrap_or(0) >= reported,
                    "{context}: the durable marker {reported} was lost"
                );
                if finished {
                    assert!(marker.is_some(), "{context}: a finished workload's marker");
                }
                // Keep going after the recovery, and crash once more before anything is
                // synced: the orphans removed above must not have cost the recorded file, and
                // saving newer snapshots must not delete it.
                member.append(2).expect("append after recovery");
                member.snapshot().expect("snapshot after recovery");
                member.append(1).expect("append after recovery");
                member.snapshot().expect("snapshot after recovery");
                drop(member);
                disk.crash(seed, CrashOptions::LOSE_UNSYNCED);
                let context = format!("{context}, second crash");
                let (_, again) = Member::recover(&disk, layout, &context);
                assert_eq!(again, marker, "{context}: nothing new was synced");
            }
        }
    }
}

/// The layout of the nodes in seeds 3569 and 6101: two files kept.
const SCENARIO: Layout = Layout {
    keep_count: 2,
    segment_size_bytes: LARGE_SEGMENT_BYTES,
};

/// Seed 3569 of `ballot-sim --nodes 5 --disk-faults` (docs/sim.md, "Findings"), step by step:
/// a durable marker, an orphan left by a crash, a newer save, a second crash. Pruning by count
/// on save deleted the only file the WAL recorded here.
#[test]
fn an_orphan_and_a_pending_save_never_push_out_the_recorded_snapshot() {
    let disk = FaultyDisk::new();
    let mut member = Member::create(&disk, SCENARIO);
    member.append(114).expect("append");
    member.snapshot().expect("snapshot 114");
    member.sync_and_prune().expect("marker 114 durable");
    member.append(57).expect("append");
    member.snapshot().expect("snapshot 171, marker pending");
    drop(member);
    disk.crash(1, CrashOptions::LOSE_UNSYNCED);
    let (mut member, marker) = Member::recover(&disk, SCENARIO, "first crash");
    assert_eq!(marker, Some(114));
    assert_eq!(files(&member.store), vec![114], "orphan 171 is gone");
    member.append(173 - 114).expect("append");
    member.snapshot().expect("snapshot 173, marker pending");
    assert_eq!(files(&member.store), vec![173, 114]);
    drop(member);
    disk.crash(2, CrashOptions::LOSE_UNSYNCED);
    let (_, marker) = Member::recover(&disk, SCENARIO, "second crash");
    assert_eq!(marker, Some(114));
}

/// Seed 6101 of `ballot-sim --nodes 5 --disk-faults`, without any orphan: a durable marker, then
/// a local snapshot and a leader's snapshot saved while their markers are pending, then a crash
/// before either marker is durable. Pruning by count on save deleted the recorded file here.
#[test]
fn snapshots_saved_while_markers_are_pending_never_push_out_the_recorded_one() {
    let disk = FaultyDisk::new();
    let mut member = Member::create(&disk, SCENARIO);
    member.append(89).expect("append");
    member.snapshot().expect("snapshot 89");
    member.sync_and_prune().expect("marker 89 durable");
    member.append(134 - 89).expect("append");
    member
        .snapshot()
        .expect("local snapshot 134, marker pending");
    member.append(177 - 134).expect("append");
    member.snapshot().expect("snapshot 177, marker pending");
    assert_eq!(files(&member.store), vec![177, 134, 89]);
    drop(member);
    disk.crash(3, CrashOptions::LOSE_UNSYNCED);
    let (_, marker) = Member::recover(&disk, SCENARIO, "crash with two markers pending");
    assert_eq!(marker, Some(89));
}
