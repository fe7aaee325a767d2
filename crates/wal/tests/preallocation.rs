//! Preallocated segments: every segment is created at full size and zero-filled before use, so
//! the active segment ends in a zero tail. That tail is the normal end of the log; a zero gap
//! that a later write batch proves was synced is corruption; a zero gap inside the last batch is
//! a torn tail whose leftovers are erased so they can never come back.

mod common;

use std::path::{Path, PathBuf};

use ballot_wal::record::decode_at;
use ballot_wal::{
    Disk, FaultyDisk, GroupCommitOptions, GroupCommitWal, HardState, RealDisk, Wal, WalError,
    WalOptions, Write,
};
use bytes::Bytes;
use common::{CLUSTER_ID, MEMBER_ID, entry, open};

const SEGMENT_SIZE_BYTES: u64 = 64 * 1024;

fn wal_dir() -> PathBuf {
    PathBuf::from("/data/wal")
}

fn segment_path(seq: u64) -> PathBuf {
    wal_dir().join(format!("{seq:016x}.wal"))
}

/// Offsets of the records of one segment, up to its zero tail.
fn record_offsets(disk: &FaultyDisk, path: &Path) -> Vec<u64> {
    let bytes = Bytes::from(disk.read_file(path).expect("read"));
    let mut offsets = Vec::new();
    let mut offset = 0;
    while offset < bytes.len() && bytes[offset..].iter().any(|byte| *byte != 0) {
        offsets.push(offset as u64);
        offset = decode_at(&bytes, offset)
            .expect("a clean segment")
            .end_offset;
    }
    offsets
}

fn segment_names(disk: &FaultyDisk) -> Vec<String> {
    disk.list_dir(&wal_dir()).expect("list")
}

#[test]
fn a_new_segment_is_zero_filled_and_synced_and_its_zero_tail_is_the_normal_end() {
    let disk = FaultyDisk::new();
    let (mut wal, _) = open(&disk, SEGMENT_SIZE_BYTES).expect("open");
    let path = segment_path(1);
    assert_eq!(disk.file_len(&path).expect("len"), SEGMENT_SIZE_BYTES);
    assert_eq!(disk.synced_len(&path).expect("synced"), SEGMENT_SIZE_BYTES);
    for index in 1..=20 {
        wal.append(&[entry(index, 1, &[index as u8; 100])])
            .expect("append");
        wal.sync().expect("sync");
    }
    drop(wal);
    let (_, recovered) = open(&disk, SEGMENT_SIZE_BYTES).expect("reopen");
    assert_eq!(recovered.entries.len(), 20);
    assert_eq!(recovered.torn_tail, None, "a zero tail is not a torn tail");
    assert_eq!(
        disk.file_len(&path).expect("len"),
        SEGMENT_SIZE_BYTES,
        "recovery keeps the preallocated zeros"
    );
    assert!(
        !segment_names(&disk)
            .iter()
            .any(|name| name.ends_with(".prealloc")),
        "the plain WAL prepares segments at rollover only"
    );
}

#[test]
fn a_closed_segment_is_cut_to_its_records_and_only_the_last_keeps_a_zero_tail() {
    let disk = FaultyDisk::new();
    let (mut wal, _) = open(&disk, 4096).expect("open");
    for index in 1..=100 {
        wal.append(&[entry(index, 1, &[index as u8; 200])])
            .expect("append");
        wal.sync().expect("sync");
    }
    let segments = wal.segment_count() as u64;
    assert!(
        segments > 3,
        "100 entries of 200 bytes fill several 4 KiB segments"
    );
    drop(wal);
    for seq in 1..segments {
        let path = segment_path(seq);
        let len = disk.file_len(&path).expect("len");
        let records = record_offsets(&disk, &path);
        let last = *records.last().expect("records");
        let bytes = Bytes::from(disk.read_file(&path).expect("read"));
        let end = decode_at(&bytes, last as usize).expect("record").end_offset as u64;
        assert_eq!(len, end, "segment {seq} ends with its last record");
        assert_eq!(disk.synced_len(&path).expect("synced"), len);
    }
    assert_eq!(disk.file_len(&segment_path(segments)).expect("len"), 4096);
    let (_, recovered) = open(&disk, 4096).expect("reopen");
    assert_eq!(recovered.entries.len(), 100);
}

#[test]
fn a_zero_gap_in_synced_data_followed_by_a_later_batch_is_corruption() {
    let disk = FaultyDisk::new();
    let (mut wal, _) = open(&disk, SEGMENT_SIZE_BYTES).expect("open");
    for index in 1..=3 {
        wal.append(&[entry(index, 1, &[index as u8; 300])])
            .expect("append");
        wal.sync().expect("sync");
    }
    drop(wal);
    let path = segment_path(1);
    // Records: the segment header, then one entries record per batch.
    let offsets = record_offsets(&disk, &path);
    let second_batch = offsets[2];
    // The device lost a whole sector of synced data: it reads back as zeros.
    disk.zero_range(&path, second_batch, 64).expect("zero");
    match open(&disk, SEGMENT_SIZE_BYTES) {
        Err(WalError::Corrupt {
            path: reported,
            offset,
            found,
            ..
        }) => {
            assert_eq!(reported, path);
            assert_eq!(offset, second_batch);
            assert!(found.contains("later write batch"), "{found}");
        }
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("a zeroed synced record went unnoticed"),
    }
}

#[test]
fn a_zero_gap_in_the_last_batch_is_a_torn_tail_whose_leftovers_never_come_back() {
    let disk = FaultyDisk::new();
    let (mut wal, _) = open(&disk, SEGMENT_SIZE_BYTES).expect("open");
    wal.append(&[entry(1, 1, b"durable")]).expect("append");
    wal.sync().expect("sync");
    // One batch of two records: the second lands on disk, the first's start does not (a
    // device may write the sectors of an unsynced batch in any order).
    wal.append(&[entry(2, 1, &[7; 300])]).expect("append");
    wal.append(&[entry(3, 1, &[9; 300])]).expect("append");
    wal.sync().expect("sync");
    drop(wal);
    let path = segment_path(1);
    let offsets = record_offsets(&disk, &path);
    let (torn_at, stale_record) = (offsets[2], offsets[3]);
    disk.zero_range(&path, torn_at, 16).expect("zero");
    let (mut wal, recovered) = open(&disk, SEGMENT_SIZE_BYTES).expect("reopen");
    assert_eq!(recovered.entries, vec![entry(1, 1, b"durable")]);
    let torn = recovered.torn_tail.expect("the torn tail is reported");
    assert_eq!((torn.path.clone(), torn.offset), (path.clone(), torn_at));
    let bytes = disk.read_file(&path).expect("read");
    assert!(
        bytes[torn_at as usize..].iter().all(|byte| *byte == 0),
        "everything after the torn record is zero again"
    );
    assert_eq!(bytes.len() as u64, SEGMENT_SIZE_BYTES);
    // A new entry 2 of the same size ends exactly where the stale record of entry 3 began: had
    // it not been erased, it would now read as the valid continuation of the log.
    wal.append(&[entry(2, 2, &[8; 300])]).expect("append");
    wal.sync().expect("sync");
    let bytes = Bytes::from(disk.read_file(&path).expect("read"));
    let new_record = decode_at(&bytes, torn_at as usize).expect("the new record");
    assert_eq!(new_record.end_offset as u64, stale_record);
    drop(wal);
    let (_, recovered) = open(&disk, SEGMENT_SIZE_BYTES).expect("reopen");
    assert_eq!(
        recovered.entries,
        vec![entry(1, 1, b"durable"), entry(2, 2, &[8; 300])]
    );
    assert_eq!(recovered.torn_tail, None);
}

#[test]
fn a_full_disk_refuses_room_for_the_next_segment_and_the_wal_stays_usable() {
    let disk = FaultyDisk::new();
    let (mut wal, _) = open(&disk, 4096).expect("open");
    disk.set_capacity_bytes(Some(4096 + 32 + 100));
    let record_bytes = 1000 + 64;
    let mut written = 0;
    let error = loop {
        let index = written + 1;
        match wal.ensure_room(record_bytes) {
            Ok(()) => {
                wal.append(&[entry(index, 1, &[index as u8; 1000])])
                    .expect("append with room ensured");
                wal.sync().expect("sync");
                written = index;
            }
            Err(error) => break error,
        }
        assert!(index < 10, "the second segment cannot fit");
    };
    match &error {
        WalError::NoSpace { source, .. } => assert_eq!(source.raw_os_error(), Some(libc::ENOSPC)),
        other => panic!("expected NoSpace, got {other}"),
    }
    assert!(written >= 1, "the first segment took writes");
    // Nothing of the failed preparation is left taking space, and the WAL still works.
    assert_eq!(
        segment_names(&disk),
        vec![format!("{:016x}.wal", 1), "wal.meta".to_owned()]
    );
    wal.set_hard_state(HardState {
        term: 2,
        vote: 1,
        commit: written,
    })
    .expect("a small record still fits in the active segment");
    wal.sync().expect("sync after NoSpace");
    assert!(matches!(
        wal.ensure_room(record_bytes),
        Err(WalError::NoSpace { .. })
    ));

    // Space is freed: the same write goes through, into the next segment.
    disk.set_capacity_bytes(None);
    wal.ensure_room(record_bytes)
        .expect("room once space is freed");
    let next = written + 1;
    wal.append(&[entry(next, 2, &[7; 1000])]).expect("append");
    wal.sync().expect("sync");
    assert!(segment_names(&disk).contains(&format!("{:016x}.wal", 2)));
    drop(wal);
    let (_, recovered) = open(&disk, 4096).expect("reopen");
    assert_eq!(recovered.entries.len() as u64, next);
    assert_eq!(recovered.entries.last(), Some(&entry(next, 2, &[7; 1000])));
    assert_eq!(recovered.hard_state.term, 2);
}

#[test]
fn a_full_disk_fails_the_next_segments_preparation_and_is_fatal() {
    let disk = FaultyDisk::new();
    let (mut wal, _) = open(&disk, 4096).expect("open");
    disk.set_capacity_bytes(Some(4096 + 32 + 100));
    // Writes inside the preallocated segment need no new space...
    wal.append(&[entry(1, 1, &[1; 1000])]).expect("append");
    wal.sync().expect("sync inside the preallocated segment");
    // ...the next segment does.
    let error = (2..=10)
        .try_for_each(|index| wal.append(&[entry(index, 1, &[1; 1000])]))
        .expect_err("ENOSPC is reported");
    match &error {
        WalError::Io { source, op, .. } => {
            assert_eq!(source.raw_os_error(), Some(libc::ENOSPC), "{op}");
        }
        other => panic!("expected an I/O error, got {other}"),
    }
    assert!(matches!(wal.sync(), Err(WalError::Poisoned { .. })));
}

#[test]
fn the_group_commit_writer_prepares_the_next_segment_in_the_background() {
    let disk = FaultyDisk::new();
    let (wal, _) = open(&disk, 4096).expect("open");
    let wal = GroupCommitWal::spawn(wal, GroupCommitOptions::default()).expect("spawn");
    for index in 1..=60 {
        wal.append_blocking(Write {
            entries: vec![entry(index, 1, &[index as u8; 200])],
            hard_state: Some(HardState {
                term: 1,
                vote: 1,
                commit: index - 1,
            }),
            snapshot: None,
        })
        .expect("durable");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    runtime.block_on(wal.shutdown()).expect("shutdown");
    // Shutting down waits for the preparer, which had the segment after the last one ready.
    let names = segment_names(&disk);
    let segments = names.iter().filter(|name| name.ends_with(".wal")).count() as u64;
    assert!(
        segments > 3,
        "60 entries of 200 bytes fill several segments"
    );
    let prepared = wal_dir().join(format!("{:016x}.wal.prealloc", segments + 1));
    assert_eq!(
        names
            .iter()
            .filter(|name| name.ends_with(".prealloc"))
            .count(),
        1
    );
    assert_eq!(disk.synced_len(&prepared).expect("prepared"), 4096);
    let (_, recovered) = open(&disk, 4096).expect("reopen");
    assert_eq!(recovered.entries.len(), 60);
    assert!(
        !segment_names(&disk)
            .iter()
            .any(|name| name.ends_with(".prealloc")),
        "recovery deletes a leftover prepared segment"
    );
}

#[test]
fn the_real_disk_preallocates_and_recovers_the_zero_tail() {
    let dir = std::env::temp_dir().join(format!("ballot-wal-prealloc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut options = WalOptions::new(CLUSTER_ID, MEMBER_ID);
    options.segment_size_bytes = 8192;
    let (wal, _) = Wal::open(RealDisk, &dir, options.clone()).expect("open");
    let wal = GroupCommitWal::spawn(wal, GroupCommitOptions::default()).expect("spawn");
    for index in 1..=100u64 {
        wal.append_blocking(Write {
            entries: vec![entry(index, 1, &index.to_le_bytes().repeat(30))],
            ..Write::default()
        })
        .expect("durable");
    }
    drop(wal);
    let (_, recovered) = Wal::open(RealDisk, &dir, options).expect("reopen");
    assert_eq!(recovered.entries.len(), 100);
    assert_eq!(recovered.torn_tail, None);
    let mut lens: Vec<(String, u64)> = std::fs::read_dir(&dir)
        .expect("list")
        .map(|entry| {
            let entry = entry.expect("entry");
            let len = entry.metadata().expect("metadata").len();
            (entry.file_name().to_string_lossy().into_owned(), len)
        })
        .filter(|(name, _)| name.ends_with(".wal"))
        .collect();
    lens.sort();
    let (_, last_len) = lens.pop().expect("segments");
    assert_eq!(
        last_len, 8192,
        "the active segment keeps its preallocated size"
    );
    assert!(lens.len() >= 2);
    assert!(lens.iter().all(|(_, len)| *len < 8192), "{lens:?}");
    std::fs::remove_dir_all(&dir).expect("clean up");
}
