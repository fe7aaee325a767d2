//! The group-commit writer: concurrent writers share syncs, completions and the durable watch
//! report durability, and a failure reaches every waiter and every later caller.

mod common;

use std::io;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex as StdMutex};

use ballot_wal::{
    Disk, DiskFile, DiskOp, FaultyDisk, GroupCommitOptions, GroupCommitWal, HardState,
    InjectedError, SnapshotMarker, Wal, WalError, Write,
};
use bytes::Bytes;
use common::{entry, open, open_without_preallocation, options};
use tokio::sync::Mutex;

fn spawn(disk: &FaultyDisk) -> GroupCommitWal {
    let (wal, _) = open(disk, 1 << 20).expect("open");
    GroupCommitWal::spawn(wal, GroupCommitOptions::default()).expect("spawn")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_all_become_durable_in_order() {
    let disk = FaultyDisk::new();
    let wal = spawn(&disk);
    // With syncs overlapping, the durable watch must still only move forward.
    let mut watch = wal.durable();
    let observer = tokio::spawn(async move {
        let mut seen = Vec::new();
        while watch.changed().await.is_ok() {
            let state = watch.borrow_and_update().clone();
            seen.push((state.syncs, state.last_index));
        }
        seen
    });
    // Indexes are handed out in channel order, as the Raft loop would.
    let next_index = Arc::new(Mutex::new(1u64));
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let wal = wal.clone();
        let next_index = Arc::clone(&next_index);
        tasks.push(tokio::spawn(async move {
            let mut last = 0;
            for _ in 0..20 {
                let completion = {
                    let mut next = next_index.lock().await;
                    let write = Write {
                        entries: vec![entry(*next, 1, &[7; 64])],
                        ..Write::default()
                    };
                    let index = *next;
                    *next += 1;
                    let completion = wal.submit(write).await.expect("submit");
                    last = index;
                    completion
                };
                let durable = completion.wait().await.expect("durable");
                assert!(
                    durable.last_index >= last,
                    "completion after the write is durable"
                );
            }
            last
        }));
    }
    for task in tasks {
        task.await.expect("writer task");
    }
    let durable = wal.durable().borrow().clone();
    assert_eq!(durable.last_index, 640);
    wal.shutdown().await.expect("shutdown");
    drop(wal);
    let seen = observer.await.expect("observer");
    assert!(!seen.is_empty());
    assert!(
        seen.windows(2)
            .all(|pair| pair[0].0 <= pair[1].0 && pair[0].1 <= pair[1].1),
        "the durable watch went backwards: {seen:?}"
    );
    let (_, recovered) = open(&disk, 1 << 20).expect("reopen");
    assert_eq!(recovered.entries.len(), 640);
}

/// A disk whose `fdatasync` waits at a gate, so a test can hold the writer inside a sync while
/// more writes queue up.
#[derive(Clone)]
struct GateDisk {
    inner: FaultyDisk,
    gate: Arc<(StdMutex<Gate>, Condvar)>,
}

#[derive(Default)]
struct Gate {
    closed: bool,
    syncs_waiting: usize,
}

struct GateFile {
    inner: <FaultyDisk as Disk>::File,
    gate: Arc<(StdMutex<Gate>, Condvar)>,
}

impl Disk for GateDisk {
    type File = GateFile;
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.inner.create_dir_all(dir)
    }
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.inner.list_dir(dir)
    }
    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.inner.read_file(path)
    }
    fn open_reader(&self, path: &Path) -> io::Result<Box<dyn io::Read + Send>> {
        self.inner.open_reader(path)
    }
    fn create_file(&self, path: &Path) -> io::Result<GateFile> {
        Ok(GateFile {
            inner: self.inner.create_file(path)?,
            gate: Arc::clone(&self.gate),
        })
    }
    fn open_append(&self, path: &Path) -> io::Result<GateFile> {
        Ok(GateFile {
            inner: self.inner.open_append(path)?,
            gate: Arc::clone(&self.gate),
        })
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_file(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.inner.sync_dir(dir)
    }
}

impl DiskFile for GateFile {
    fn append(&mut self, buf: &[u8]) -> io::Result<()> {
        self.inner.append(buf)
    }
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.inner.write_at(offset, buf)
    }
    fn sync_data(&mut self) -> io::Result<()> {
        let (lock, condvar) = &*self.gate;
        let mut gate = lock.lock().expect("gate lock");
        gate.syncs_waiting += 1;
        condvar.notify_all();
        while gate.closed {
            gate = condvar.wait(gate).expect("gate lock");
        }
        gate.syncs_waiting -= 1;
        drop(gate);
        self.inner.sync_data()
    }
    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.inner.truncate(len)
    }
    fn try_clone(&self) -> io::Result<GateFile> {
        Ok(GateFile {
            inner: self.inner.try_clone()?,
            gate: Arc::clone(&self.gate),
        })
    }
}

#[test]
fn writes_queued_during_a_sync_share_the_next_sync() {
    let (disk, gate) = gate_disk();
    // Without preallocation no helper thread zero-fills (and syncs) the next segment, so every
    // sync at the gate is the writer's.
    let mut options = options(1 << 20);
    options.preallocate_segments = false;
    let (wal, _) = Wal::open(disk, Path::new("/data/wal"), options).expect("open");
    let syncs_at_open = wal.durable_state().syncs;
    let one_sync_at_a_time = GroupCommitOptions {
        syncs_in_flight_max: 1,
        ..GroupCommitOptions::default()
    };
    let wal = GroupCommitWal::spawn(wal, one_sync_at_a_time).expect("spawn");
    gate.0.lock().expect("gate lock").closed = true;
    let first = wal
        .submit_blocking(Write {
            entries: vec![entry(1, 1, b"first")],
            ..Write::default()
        })
        .expect("submit");
    // Wait until the writer is inside the sync of the first write.
    wait_for_syncs_at_gate(&gate, 1);
    let queued: Vec<_> = (2..=100)
        .map(|index| {
            wal.submit_blocking(Write {
                entries: vec![entry(index, 1, b"queued")],
                ..Write::default()
            })
            .expect("submit")
        })
        .collect();
    {
        let (lock, condvar) = &*gate;
        lock.lock().expect("gate lock").closed = false;
        condvar.notify_all();
    }
    assert_eq!(first.wait_blocking().expect("durable").last_index, 1);
    let mut last = None;
    for completion in queued {
        last = Some(completion.wait_blocking().expect("durable"));
    }
    let last = last.expect("99 completions");
    assert_eq!(last.last_index, 100);
    assert_eq!(
        last.syncs - syncs_at_open,
        2,
        "one sync for the first write, one for the 99 that queued behind it"
    );
}

fn gate_disk() -> (GateDisk, Arc<(StdMutex<Gate>, Condvar)>) {
    let gate = Arc::new((StdMutex::new(Gate::default()), Condvar::new()));
    let disk = GateDisk {
        inner: FaultyDisk::new(),
        gate: Arc::clone(&gate),
    };
    (disk, gate)
}

fn wait_for_syncs_at_gate(gate: &(StdMutex<Gate>, Condvar), count: usize) {
    let (lock, condvar) = gate;
    let mut state = lock.lock().expect("gate lock");
    while state.syncs_waiting < count {
        state = condvar.wait(state).expect("gate lock");
    }
}

#[test]
fn a_second_sync_overlaps_the_first_and_writes_queued_behind_both_share_the_third() {
    let (disk, gate) = gate_disk();
    let mut options = options(1 << 20);
    options.preallocate_segments = false;
    let (wal, _) = Wal::open(disk, Path::new("/data/wal"), options).expect("open");
    let syncs_at_open = wal.durable_state().syncs;
    let two_syncs_at_a_time = GroupCommitOptions {
        syncs_in_flight_max: 2,
        ..GroupCommitOptions::default()
    };
    let wal = GroupCommitWal::spawn(wal, two_syncs_at_a_time).expect("spawn");
    gate.0.lock().expect("gate lock").closed = true;
    let submit = |index: u64| {
        wal.submit_blocking(Write {
            entries: vec![entry(index, 1, b"x")],
            ..Write::default()
        })
        .expect("submit")
    };
    let first = submit(1);
    wait_for_syncs_at_gate(&gate, 1);
    // The first sync is held at the gate, yet the second write gets a sync of its own at once.
    let second = submit(2);
    wait_for_syncs_at_gate(&gate, 2);
    let queued: Vec<_> = (3..=100).map(submit).collect();
    {
        let (lock, condvar) = &*gate;
        lock.lock().expect("gate lock").closed = false;
        condvar.notify_all();
    }
    assert!(first.wait_blocking().expect("durable").last_index >= 1);
    assert!(second.wait_blocking().expect("durable").last_index >= 2);
    let mut last = None;
    for completion in queued {
        last = Some(completion.wait_blocking().expect("durable"));
    }
    let last = last.expect("98 completions");
    assert_eq!(last.last_index, 100);
    assert_eq!(
        last.syncs - syncs_at_open,
        3,
        "one sync each for the first two writes, one for the 98 queued behind both"
    );
}

#[tokio::test]
async fn a_detached_write_is_reported_on_the_durable_watch() {
    let disk = FaultyDisk::new();
    let wal = spawn(&disk);
    let mut durable = wal.durable();
    wal.submit_detached(Write {
        entries: vec![entry(1, 1, b"a"), entry(2, 1, b"b")],
        hard_state: Some(HardState {
            term: 1,
            vote: 1,
            commit: 0,
        }),
        snapshot: None,
    })
    .await
    .expect("submit");
    let state = durable
        .wait_for(|state| state.last_index >= 2)
        .await
        .expect("watch open")
        .clone();
    assert_eq!((state.last_index, state.last_term), (2, 1));
    assert_eq!(state.hard_state.vote, 1);
    wal.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn the_durable_snapshot_watch_changes_only_with_the_marker() {
    let disk = FaultyDisk::new();
    let wal = spawn(&disk);
    let mut markers = wal.durable_snapshot();
    markers.borrow_and_update();
    for index in 1..=3 {
        wal.append(Write {
            entries: vec![entry(index, 1, b"e")],
            ..Write::default()
        })
        .await
        .expect("append");
    }
    assert!(
        !markers.has_changed().expect("watch open"),
        "syncs without a new marker leave the watch alone"
    );
    wal.append(Write {
        snapshot: Some(SnapshotMarker {
            index: 2,
            term: 1,
            meta: Bytes::from_static(b"meta"),
        }),
        ..Write::default()
    })
    .await
    .expect("append marker");
    assert!(markers.has_changed().expect("watch open"));
    let state = markers.borrow_and_update().clone();
    assert_eq!((state.snapshot_index, state.snapshot_term), (2, 1));
    wal.append(Write {
        entries: vec![entry(4, 1, b"e")],
        ..Write::default()
    })
    .await
    .expect("append");
    assert!(!markers.has_changed().expect("watch open"));
    assert_eq!(wal.durable().borrow().last_index, 4);
    wal.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_failed_sync_fails_every_waiter_and_every_later_call() {
    let disk = FaultyDisk::new();
    // Without preallocation: the helper thread that zero-fills and syncs the next segment
    // would race the append below for the one injected sync error.
    let (wal, _) = open_without_preallocation(&disk, 1 << 20).expect("open");
    let wal = GroupCommitWal::spawn(wal, GroupCommitOptions::default()).expect("spawn");
    wal.append(Write {
        entries: vec![entry(1, 1, b"a")],
        ..Write::default()
    })
    .await
    .expect("first write");
    disk.inject(DiskOp::Sync, InjectedError::Eio);
    let error = wal
        .append(Write {
            entries: vec![entry(2, 1, b"b")],
            ..Write::default()
        })
        .await
        .expect_err("EIO reaches the waiter");
    assert!(error.to_string().contains("fdatasync"), "{error}");
    let later = wal
        .append(Write {
            entries: vec![entry(3, 1, b"c")],
            ..Write::default()
        })
        .await
        .expect_err("the WAL is unusable");
    assert!(matches!(later, WalError::Poisoned { .. }), "{later}");
    assert!(wal.failure().is_some());
    let mut durable = wal.durable();
    durable.borrow_and_update();
    assert!(durable.changed().await.is_err(), "the watch closes");
}

#[test]
fn blocking_callers_work_without_a_runtime() {
    let disk = FaultyDisk::new();
    let wal = spawn(&disk);
    let state = wal
        .append_blocking(Write {
            entries: vec![entry(1, 1, b"a")],
            ..Write::default()
        })
        .expect("durable");
    assert_eq!(state.last_index, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_wait_while_the_disk_is_full_and_resume_in_order_when_space_is_freed() {
    let disk = FaultyDisk::new();
    let (wal, _) = open(&disk, 4096).expect("open");
    let wal = GroupCommitWal::spawn(wal, GroupCommitOptions::default()).expect("spawn");
    let dir = Path::new("/data/wal");
    // Let the background preparation of segment 2 finish, then leave the disk no room beyond
    // what exists: segment 2 can still be used, segment 3 cannot be made.
    let prepared = dir.join(format!("{:016x}.wal.prealloc", 2));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while disk.synced_len(&prepared).ok() != Some(4096) {
        assert!(
            std::time::Instant::now() < deadline,
            "segment 2 is prepared"
        );
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    let used: u64 = disk
        .list_dir(dir)
        .expect("list")
        .iter()
        .map(|name| disk.file_len(&dir.join(name)).expect("len"))
        .sum();
    disk.set_capacity_bytes(Some(used));

    let write = |index: u64| Write {
        entries: vec![entry(index, 1, &[index as u8; 1000])],
        ..Write::default()
    };
    let mut no_space = wal.no_space();
    assert!(!*no_space.borrow());
    let mut index = 1;
    // Writes are durable until the log needs segment 3; that write then waits.
    let mut held = loop {
        let mut completion = Box::pin(wal.submit(write(index)).await.expect("submit").wait());
        tokio::select! {
            durable = &mut completion => {
                durable.expect("durable while there is room");
            }
            waiting = no_space.wait_for(|waiting| *waiting) => {
                waiting.expect("the writer is alive");
                break completion;
            }
        }
        index += 1;
        assert!(index < 20, "the disk fills within a few writes");
    };
    // A later write queues behind the waiting one; nothing more becomes durable meanwhile.
    let later = wal.submit(write(index + 1)).await.expect("submit");
    tokio::time::sleep(ballot_wal::NO_SPACE_RETRY * 2).await;
    assert!(*wal.no_space().borrow(), "still no space");
    assert_eq!(wal.durable().borrow().last_index, index - 1);
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(1), &mut held)
            .await
            .is_err(),
        "the waiting write is not durable"
    );
    assert_eq!(wal.failure(), None, "a full disk is not a failure");

    disk.set_capacity_bytes(None);
    held.await.expect("durable once space is freed");
    let durable = later.wait().await.expect("durable once space is freed");
    assert_eq!(durable.last_index, index + 1);
    no_space
        .wait_for(|waiting| !*waiting)
        .await
        .expect("the no-space state ends");
    wal.shutdown().await.expect("shutdown");
    drop(wal);
    let (_, recovered) = open(&disk, 4096).expect("reopen");
    let indexes: Vec<u64> = recovered.entries.iter().map(|entry| entry.index).collect();
    assert_eq!(indexes, (1..=index + 1).collect::<Vec<_>>());
}
