//! The snapshot store: atomic saves under crashes, verification, and the choice of the snapshot
//! to recover from (retention: `snapshot_retention.rs`).

mod common;

use std::io::Read;
use std::path::Path;

use ballot_wal::{
    CrashOptions, Disk, FaultyDisk, LogEntry, Recovered, SnapshotError, SnapshotMarker,
    SnapshotStore,
};
use bytes::Bytes;
use common::entry;

fn store(disk: &FaultyDisk) -> SnapshotStore<FaultyDisk> {
    SnapshotStore::open(disk.clone(), Path::new("/data/snap"), 2).expect("open store")
}

fn data(index: u64) -> Vec<u8> {
    (0..10_000u64).map(|i| (i * index % 251) as u8).collect()
}

fn recovered(marker: Option<(u64, u64)>, entries: Vec<LogEntry>) -> Recovered {
    Recovered {
        snapshot: marker.map(|(index, term)| SnapshotMarker {
            index,
            term,
            meta: Bytes::new(),
        }),
        entries,
        ..Recovered::default()
    }
}

#[test]
fn a_saved_snapshot_loads_back_and_streams() {
    let disk = FaultyDisk::new();
    let store = store(&disk);
    let info = store
        .save(10, 2, Bytes::from_static(b"conf"), &data(10))
        .expect("save");
    let loaded = store.load(&info.path).expect("load");
    assert_eq!(loaded.data, data(10));
    assert_eq!((loaded.info.index, loaded.info.term), (10, 2));
    assert_eq!(loaded.info.meta, Bytes::from_static(b"conf"));
    let mut streamed = Vec::new();
    store
        .open_data(&loaded.info)
        .expect("open")
        .read_to_end(&mut streamed)
        .expect("read");
    assert_eq!(streamed, data(10));
}

#[test]
fn any_flipped_bit_makes_a_snapshot_invalid() {
    let disk = FaultyDisk::new();
    let store = store(&disk);
    let info = store
        .save(7, 1, Bytes::from_static(b"m"), &data(7))
        .expect("save");
    let len = disk.file_len(&info.path).expect("len");
    for byte in (0..len).step_by(97).chain([len - 1]) {
        disk.flip_bit(&info.path, byte, (byte % 8) as u8)
            .expect("flip");
        assert!(
            store.verify(&info.path).is_err(),
            "a flip at byte {byte} went unnoticed"
        );
        disk.flip_bit(&info.path, byte, (byte % 8) as u8)
            .expect("unflip");
    }
    store.verify(&info.path).expect("intact again");
}

#[test]
fn a_crash_at_any_point_of_a_save_leaves_the_old_or_the_new_snapshot_whole() {
    let mut total_ops = None;
    for crash_at_op in 0.. {
        let disk = FaultyDisk::new();
        let store = store(&disk);
        store
            .save(5, 1, Bytes::new(), &data(5))
            .expect("first save");
        let before = disk.mutating_ops();
        disk.cut_power_after(Some(crash_at_op));
        let saved = store.save(9, 2, Bytes::new(), &data(9)).is_ok();
        if total_ops.is_none() && saved {
            total_ops = Some(disk.mutating_ops() - before);
        }
        disk.crash(crash_at_op, CrashOptions::ANY);
        let store =
            SnapshotStore::open(disk.clone(), Path::new("/data/snap"), 2).expect("reopen store");
        let newest = store.list().expect("list")[0].clone();
        let loaded = store
            .load(&newest.2)
            .expect("the newest visible snapshot is whole");
        if saved {
            assert_eq!(loaded.info.index, 9, "a completed save survives any crash");
        }
        let expected = if loaded.info.index == 9 {
            data(9)
        } else {
            data(5)
        };
        assert_eq!(loaded.data, expected);
        let no_temporaries = disk
            .list_dir(Path::new("/data/snap"))
            .expect("list")
            .iter()
            .all(|name| !name.ends_with(".tmp"));
        assert!(no_temporaries, "reopening removes unfinished files");
        if total_ops.is_some_and(|total| crash_at_op > total) {
            break;
        }
    }
}

#[test]
fn recovery_uses_the_snapshot_the_wal_records_and_ignores_newer_files() {
    let disk = FaultyDisk::new();
    let store = store(&disk);
    store.save(10, 2, Bytes::new(), &data(10)).expect("save");
    store.save(20, 3, Bytes::new(), &data(20)).expect("save");
    // The WAL recorded only snapshot 10: 20 was saved but its marker never became durable.
    let chosen = store
        .choose_for_recovery(&recovered(Some((10, 2)), vec![entry(11, 2, b"x")]))
        .expect("choose")
        .expect("a snapshot");
    assert_eq!(chosen.index, 10);
}

#[test]
fn a_corrupt_newest_falls_back_only_when_the_log_covers_the_gap() {
    let disk = FaultyDisk::new();
    let store = store(&disk);
    store.save(10, 2, Bytes::new(), &data(10)).expect("save");
    let newest = store.save(20, 3, Bytes::new(), &data(20)).expect("save");
    disk.flip_bit(&newest.path, 100, 1).expect("flip");
    let covering: Vec<LogEntry> = (11..=25).map(|i| entry(i, 3, b"e")).collect();
    let chosen = store
        .choose_for_recovery(&recovered(Some((20, 3)), covering))
        .expect("the log covers 11..=20")
        .expect("a snapshot");
    assert_eq!(chosen.index, 10);
    let not_covering: Vec<LogEntry> = (15..=25).map(|i| entry(i, 3, b"e")).collect();
    let error = store
        .choose_for_recovery(&recovered(Some((20, 3)), not_covering))
        .expect_err("entries 11..=14 are gone");
    assert!(matches!(
        error,
        SnapshotError::Unrecoverable {
            needed_index: 20,
            ..
        }
    ));
    assert!(
        error
            .to_string()
            .contains("restore this member from a peer"),
        "{error}"
    );
}

#[test]
fn no_snapshot_is_fine_without_a_marker_or_with_the_whole_log() {
    let disk = FaultyDisk::new();
    let store = store(&disk);
    assert_eq!(
        store
            .choose_for_recovery(&recovered(None, vec![]))
            .expect("ok"),
        None
    );
    let whole: Vec<LogEntry> = (1..=5).map(|i| entry(i, 1, b"e")).collect();
    assert_eq!(
        store
            .choose_for_recovery(&recovered(Some((3, 1)), whole))
            .expect("ok"),
        None
    );
    let error = store.choose_for_recovery(&recovered(Some((3, 1)), vec![]));
    assert!(matches!(error, Err(SnapshotError::Unrecoverable { .. })));
}

#[test]
fn two_writers_of_one_snapshot_do_not_share_a_file_and_an_abandoned_one_leaves_nothing() {
    let disk = FaultyDisk::new();
    let store = store(&disk);
    // A transfer restarted while the first one is still open writes the same (index, term).
    let mut first = store.writer(10, 2, Bytes::new()).expect("first writer");
    let mut second = store.writer(10, 2, Bytes::new()).expect("second writer");
    let (one, two) = (data(10), data(11));
    for (a, b) in one.chunks(1000).zip(two.chunks(1000)) {
        first.write_chunk(a).expect("first chunk");
        second.write_chunk(b).expect("second chunk");
    }
    first.finish().expect("first finishes");
    let info = second.finish().expect("second finishes");
    assert_eq!(store.load(&info.path).expect("load").data, two);

    let mut abandoned = store.writer(20, 2, Bytes::new()).expect("writer");
    abandoned.write_chunk(&data(20)).expect("chunk");
    drop(abandoned);
    let names = disk.list_dir(Path::new("/data/snap")).expect("list");
    assert!(
        names.iter().all(|name| !name.ends_with(".tmp")),
        "left behind: {names:?}"
    );
}
