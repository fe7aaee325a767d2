//! Behaviour of the WAL on its own: round trips, truncation, rollover, compaction, the metadata
//! check, fatal I/O errors, and the same on the real file system.

mod common;

use std::path::{Path, PathBuf};

use ballot_wal::{
    CrashOptions, DiskOp, FaultyDisk, HardState, InjectedError, RealDisk, SnapshotMarker, SyncMode,
    Wal, WalError, WalOptions,
};
use bytes::Bytes;
use common::{CLUSTER_ID, MEMBER_ID, Model, entry, open, open_without_preallocation, options};

fn marker(index: u64, term: u64) -> SnapshotMarker {
    SnapshotMarker {
        index,
        term,
        meta: Bytes::from_static(b"conf"),
    }
}

#[test]
fn entries_hard_state_and_snapshot_survive_a_reopen() {
    let disk = FaultyDisk::new();
    let (mut wal, recovered) = open(&disk, 1 << 20).expect("open");
    assert_eq!(recovered, Default::default());
    let entries: Vec<_> = (1..=5).map(|i| entry(i, 1, b"value")).collect();
    wal.append(&entries).expect("append");
    let hard_state = HardState {
        term: 1,
        vote: 3,
        commit: 4,
    };
    wal.set_hard_state(hard_state).expect("hard state");
    wal.set_snapshot(marker(2, 1)).expect("snapshot");
    wal.sync().expect("sync");
    drop(wal);
    let (_, recovered) = open(&disk, 1 << 20).expect("reopen");
    assert_eq!(recovered.hard_state, hard_state);
    assert_eq!(recovered.snapshot, Some(marker(2, 1)));
    assert_eq!(recovered.entries, entries, "nothing was compacted yet");
    assert_eq!(recovered.entries_after(2), &entries[2..]);
    assert_eq!(recovered.torn_tail, None);
}

#[test]
fn a_conflicting_append_replaces_the_suffix_section_5_3() {
    let disk = FaultyDisk::new();
    let (mut wal, _) = open(&disk, 1 << 20).expect("open");
    wal.append(&[entry(1, 1, b"a"), entry(2, 1, b"b"), entry(3, 1, b"c")])
        .expect("append");
    wal.sync().expect("sync");
    wal.append(&[entry(2, 2, b"B")])
        .expect("overwrite from index 2");
    let durable = wal.sync().expect("sync").clone();
    assert_eq!((durable.last_index, durable.last_term), (2, 2));
    drop(wal);
    let (_, recovered) = open(&disk, 1 << 20).expect("reopen");
    assert_eq!(
        recovered.entries,
        vec![entry(1, 1, b"a"), entry(2, 2, b"B")]
    );
}

#[test]
fn refused_requests_leave_no_trace() {
    let disk = FaultyDisk::new();
    let (mut wal, _) = open(&disk, 1 << 20).expect("open");
    wal.append(&[entry(1, 1, b"a"), entry(2, 1, b"b")])
        .expect("append");
    wal.set_snapshot(marker(1, 1)).expect("snapshot");
    let gap = wal.append(&[entry(4, 1, b"gap")]);
    assert!(matches!(gap, Err(WalError::InvalidRequest(_))), "{gap:?}");
    let below_snapshot = wal.append(&[entry(1, 2, b"x")]);
    assert!(matches!(below_snapshot, Err(WalError::InvalidRequest(_))));
    let not_consecutive = wal.append(&[entry(2, 2, b"x"), entry(4, 2, b"y")]);
    assert!(matches!(not_consecutive, Err(WalError::InvalidRequest(_))));
    wal.sync().expect("sync");
    drop(wal);
    let (_, recovered) = open(&disk, 1 << 20).expect("reopen");
    assert_eq!(recovered.entries_after(1), &[entry(2, 1, b"b")]);
}

#[test]
fn segments_roll_over_and_compaction_deletes_only_covered_ones() {
    let disk = FaultyDisk::new();
    let (mut wal, _) = open(&disk, 4096).expect("open");
    let mut model = Model::default();
    for index in 1..=200 {
        let batch = [entry(index, 1, &[index as u8; 100])];
        wal.append(&batch).expect("append");
        model.append(&batch);
        wal.sync().expect("sync");
    }
    let segments_before = wal.segment_count();
    assert!(
        segments_before > 4,
        "200 entries of 100 bytes span many 4 KiB segments"
    );
    let nothing = wal.compact(150).expect("compact");
    assert_eq!(nothing, 0, "without a durable snapshot nothing is deleted");
    wal.set_snapshot(marker(150, 1)).expect("snapshot");
    model.snapshot(marker(150, 1));
    let removed = wal.compact(150).expect("compact");
    assert!(removed > 0 && removed < segments_before);
    drop(wal);
    let (_, recovered) = open(&disk, 4096).expect("reopen");
    assert_eq!(Model::from_recovered(&recovered), model);
    let first = recovered.entries[0].index;
    assert!(
        first > 1 && first <= 151,
        "old entries are gone, 151 is kept: {first}"
    );
}

#[test]
fn a_directory_of_another_member_is_refused_naming_both() {
    let disk = FaultyDisk::new();
    drop(open(&disk, 1 << 20).expect("open"));
    let mut other = options(1 << 20);
    other.member_id = 0x77;
    let error = Wal::open(disk.clone(), Path::new("/data/wal"), other).expect_err("refused");
    let message = error.to_string();
    assert!(matches!(error, WalError::ForeignDirectory { .. }));
    assert!(message.contains(&format!("{CLUSTER_ID:#x}")), "{message}");
    assert!(message.contains(&format!("{MEMBER_ID:#x}")), "{message}");
    assert!(message.contains("0x77"), "{message}");
}

#[test]
fn a_failed_fsync_is_fatal_and_never_retried() {
    let disk = FaultyDisk::new();
    let (mut wal, _) = open(&disk, 1 << 20).expect("open");
    wal.append(&[entry(1, 1, b"a")]).expect("append");
    disk.inject(DiskOp::Sync, InjectedError::Eio);
    let error = wal.sync().expect_err("EIO is reported");
    assert!(error.to_string().contains("fdatasync"), "{error}");
    assert!(wal.is_poisoned());
    let again = wal.sync().expect_err("a retry is refused");
    assert!(matches!(again, WalError::Poisoned { .. }), "{again}");
    let append = wal.append(&[entry(2, 1, b"b")]);
    assert!(matches!(append, Err(WalError::Poisoned { .. })));
}

#[test]
fn a_full_disk_is_fatal() {
    // Without preallocation an append needs new space at once (with it, see
    // tests/preallocation.rs: the next segment's preparation is what runs out of space).
    let disk = FaultyDisk::new();
    let (mut wal, _) = open_without_preallocation(&disk, 1 << 20).expect("open");
    disk.set_capacity_bytes(Some(
        disk.file_len(Path::new("/data/wal/0000000000000001.wal"))
            .expect("len")
            + 100,
    ));
    wal.append(&[entry(1, 1, &[0; 500])]).expect("buffered");
    let error = wal.sync().expect_err("ENOSPC is reported");
    match &error {
        WalError::Io { source, .. } => assert_eq!(source.raw_os_error(), Some(libc::ENOSPC)),
        other => panic!("expected an I/O error, got {other}"),
    }
    assert!(matches!(wal.sync(), Err(WalError::Poisoned { .. })));
}

#[test]
fn unsafe_no_fsync_never_syncs() {
    let disk = FaultyDisk::new();
    let mut unsafe_options = options(1 << 20);
    unsafe_options.sync_mode = SyncMode::UnsafeNoFsync;
    let (mut wal, _) =
        Wal::open(disk.clone(), Path::new("/data/wal"), unsafe_options.clone()).expect("open");
    disk.inject(DiskOp::Sync, InjectedError::Eio);
    wal.append(&[entry(1, 1, b"a")]).expect("append");
    wal.sync()
        .expect("no fdatasync is attempted, so the injected failure is never hit");
    drop(wal);
    disk.crash(1, CrashOptions::LOSE_UNSYNCED);
    let (_, recovered) =
        Wal::open(disk.clone(), Path::new("/data/wal"), unsafe_options).expect("reopen");
    assert!(
        recovered.entries.is_empty(),
        "unsynced data is lost in a crash, as warned"
    );
}

#[test]
fn a_torn_tail_is_cut_and_reported() {
    let disk = FaultyDisk::new();
    let (mut wal, _) = open(&disk, 1 << 20).expect("open");
    wal.append(&[entry(1, 1, b"durable")]).expect("append");
    wal.sync().expect("sync");
    wal.append(&[entry(2, 1, &[7; 300])]).expect("append");
    disk.inject(DiskOp::Sync, InjectedError::Eio);
    assert!(wal.sync().is_err());
    drop(wal);
    // The write of entry 2 reached the disk but its sync failed: a crash loses it.
    disk.crash(3, CrashOptions::LOSE_UNSYNCED);
    let (_, recovered) = open(&disk, 1 << 20).expect("reopen");
    assert_eq!(recovered.entries, vec![entry(1, 1, b"durable")]);
    // Without preallocation a torn last record is cut off the end of the file and reported
    // with its offset (tests/preallocation.rs covers the zero-filled layout).
    let path = PathBuf::from("/data/wal/0000000000000001.wal");
    let clean_disk = FaultyDisk::new();
    let (mut wal, _) = open_without_preallocation(&clean_disk, 1 << 20).expect("open");
    wal.append(&[entry(1, 1, b"durable")]).expect("append");
    wal.sync().expect("sync");
    wal.append(&[entry(2, 1, &[7; 300])]).expect("append");
    wal.sync().expect("sync");
    drop(wal);
    let torn_len = clean_disk.file_len(&path).expect("len") - 50;
    {
        use ballot_wal::{Disk, DiskFile};
        let mut file = clean_disk.open_append(&path).expect("open");
        file.truncate(torn_len).expect("truncate");
        file.sync_data().expect("sync");
    }
    let (_, recovered) = open_without_preallocation(&clean_disk, 1 << 20).expect("reopen");
    assert_eq!(recovered.entries, vec![entry(1, 1, b"durable")]);
    let torn = recovered.torn_tail.expect("the torn tail is reported");
    assert_eq!(torn.path, path);
    assert_eq!(torn.offset + torn.dropped_bytes, torn_len);
    assert_eq!(clean_disk.file_len(&path).expect("len"), torn.offset);
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ballot-wal-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn the_real_disk_round_trips_with_rollover_and_compaction() {
    let dir = scratch_dir("real");
    let mut wal_options = WalOptions::new(CLUSTER_ID, MEMBER_ID);
    wal_options.segment_size_bytes = 8192;
    let (mut wal, _) = Wal::open(RealDisk, &dir, wal_options.clone()).expect("open");
    let mut model = Model::default();
    for index in 1..=300u64 {
        let batch = [entry(
            index,
            1 + index / 100,
            &index.to_le_bytes().repeat(20),
        )];
        wal.append(&batch).expect("append");
        model.append(&batch);
        if index % 10 == 0 {
            wal.sync().expect("sync");
        }
    }
    wal.set_snapshot(marker(250, 3)).expect("snapshot");
    model.snapshot(marker(250, 3));
    wal.sync().expect("sync");
    assert!(wal.compact(250).expect("compact") > 0);
    drop(wal);
    let (_, recovered) = Wal::open(RealDisk, &dir, wal_options).expect("reopen");
    assert_eq!(Model::from_recovered(&recovered), model);
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[test]
fn overlapping_syncs_are_reported_in_the_order_they_started() {
    let disk = FaultyDisk::new();
    let (mut wal, _) = open(&disk, 1 << 20).expect("open");
    wal.append(&[entry(1, 1, b"a")]).expect("append");
    let mut first = wal.start_sync().expect("start");
    wal.append(&[entry(2, 1, b"b")]).expect("append");
    let mut second = wal.start_sync().expect("start");
    assert_eq!(wal.pending_syncs(), 2);
    assert!(
        matches!(wal.sync(), Err(WalError::InvalidRequest(_))),
        "a plain sync waits for no one, so it is refused while syncs are pending"
    );
    second.run().expect("second sync");
    let state = wal
        .complete_sync(second.id(), Ok(()))
        .expect("complete")
        .clone();
    assert_eq!(
        state.last_index, 0,
        "the second sync covers entry 1 too, but the first may still fail"
    );
    first.run().expect("first sync");
    let state = wal.complete_sync(first.id(), Ok(())).expect("complete");
    assert_eq!(
        (state.last_index, state.syncs),
        (2, second.durable_state().syncs)
    );
    assert_eq!(wal.pending_syncs(), 0);
}

#[test]
fn a_failed_sync_is_fatal_even_when_a_later_one_succeeded() {
    let disk = FaultyDisk::new();
    let (mut wal, _) = open(&disk, 1 << 20).expect("open");
    wal.append(&[entry(1, 1, b"a")]).expect("append");
    let mut first = wal.start_sync().expect("start");
    wal.append(&[entry(2, 1, b"b")]).expect("append");
    let mut second = wal.start_sync().expect("start");
    second.run().expect("second sync");
    wal.complete_sync(second.id(), Ok(())).expect("complete");
    disk.inject(DiskOp::Sync, InjectedError::Eio);
    let outcome = first.run();
    let error = wal
        .complete_sync(first.id(), outcome)
        .expect_err("EIO is reported");
    assert!(error.to_string().contains("fdatasync"), "{error}");
    assert_eq!(wal.durable_state().last_index, 0, "nothing was reported");
    assert!(wal.is_poisoned());
}

#[test]
fn what_recovery_reads_is_made_durable_even_if_only_the_process_died() {
    let disk = FaultyDisk::new();
    let (mut wal, _) = open(&disk, 1 << 20).expect("open");
    wal.append(&[entry(1, 1, b"synced")]).expect("append");
    wal.sync().expect("sync");
    wal.append(&[entry(2, 1, b"written, never synced")])
        .expect("append");
    // The write reaches the file (the page cache), then the process dies before its sync.
    let never_run = wal.start_sync().expect("start");
    drop(never_run);
    drop(wal);
    let (_, recovered) = open(&disk, 1 << 20).expect("reopen after the process died");
    assert_eq!(
        recovered.entries.len(),
        2,
        "the page cache still holds entry 2"
    );
    // The node may now act on entry 2 (a follower would acknowledge it): a power failure must
    // not take it back.
    disk.crash(7, CrashOptions::LOSE_UNSYNCED);
    let (_, recovered) = open(&disk, 1 << 20).expect("reopen after the power failure");
    assert_eq!(
        recovered.entries,
        vec![
            entry(1, 1, b"synced"),
            entry(2, 1, b"written, never synced")
        ]
    );
}

#[test]
fn a_sync_reports_only_what_was_written_before_it_started() {
    let disk = FaultyDisk::new();
    let (mut wal, _) = open(&disk, 1 << 20).expect("open");
    wal.append(&[entry(1, 1, b"a")]).expect("append");
    let mut first = wal.start_sync().expect("start");
    // Entry 2 reaches the file before the first fdatasync runs, so that fdatasync may well
    // cover it; it is still not reported, because nothing guarantees it was covered.
    wal.append(&[entry(2, 1, b"b")]).expect("append");
    let mut second = wal.start_sync().expect("start");
    first.run().expect("first sync");
    let state = wal.complete_sync(first.id(), Ok(())).expect("complete");
    assert_eq!(state.last_index, 1);
    second.run().expect("second sync");
    let state = wal.complete_sync(second.id(), Ok(())).expect("complete");
    assert_eq!(state.last_index, 2);
}
