//! Group commit for the server: any number of tasks submit writes through a bounded channel;
//! a small pool of committer threads shares the [`Wal`]. The committer whose turn it is takes
//! every write waiting, encodes them all, hands them to the disk with one write and starts one
//! `fdatasync` for them; while it waits for that sync, the next committer already gathers the
//! writes that keep arriving and starts the next sync (pipelining: up to
//! [`GroupCommitOptions::syncs_in_flight_max`] syncs run at once). Durability is reported in the
//! order the syncs started (see [`Wal::start_sync`]): waiters complete and the watch channel
//! advances only when a sync and every earlier one succeeded.
//!
//! Writes are made durable in the order they entered the channel, so a Raft loop that submits
//! each `Ready` in turn gets them persisted in order. A leader overlaps its own disk write with
//! replication (Raft thesis §10.2.1) by submitting without waiting and reacting to the durable
//! watch (or the returned [`Completion`]) when the write lands.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use crate::disk::Disk;
use crate::error::WalError;
use crate::types::{DurableState, HardState, Index, LogEntry, SnapshotMarker};
use crate::wal::{PendingSync, Wal};

/// One unit of persistence, shaped like a Raft `Ready`: applied in the order snapshot marker,
/// entries (truncating a conflicting suffix first), hard state.
#[derive(Clone, Debug, Default)]
pub struct Write {
    pub snapshot: Option<SnapshotMarker>,
    pub entries: Vec<LogEntry>,
    pub hard_state: Option<HardState>,
}

impl Write {
    fn approximate_bytes(&self) -> usize {
        self.entries
            .iter()
            .map(|entry| entry.data.len() + 16)
            .sum::<usize>()
            + 64
    }

    /// At least the bytes of records this write adds to the log (a record header, padding and
    /// the entries' own headers included), for [`Wal::ensure_room`]; `entries` is
    /// [`Write::approximate_bytes`].
    fn room_bytes(&self, entries: usize) -> u64 {
        let records = entries / crate::record::ENTRIES_RECORD_PAYLOAD_TARGET + 1;
        let marker = self
            .snapshot
            .as_ref()
            .map_or(0, |marker| marker.meta.len() + 128);
        (entries + records * 64 + marker + 256) as u64
    }
}

/// How often a write that found the disk full tries again for room.
pub const NO_SPACE_RETRY: Duration = Duration::from_secs(1);

/// Limits of the group-commit writer.
#[derive(Clone, Debug)]
pub struct GroupCommitOptions {
    /// Writes that may wait in the channel; submitters wait (back-pressure) beyond it.
    pub queue_depth_max: usize,
    /// A sync is started once this many bytes of writes are gathered, even if more are waiting.
    pub batch_bytes_max: usize,
    /// Syncs that may run at once, one committer thread each. With 1, the writes that arrive
    /// during a sync wait for it to end before their own sync starts; with more (default 3)
    /// their sync starts at once, overlapping the running ones. On the shared virtual disk
    /// measured in docs/wal.md a lone `fdatasync` mostly waits ~4 ms, while with three kept in
    /// flight they complete in a few hundred microseconds each (two still stall often).
    pub syncs_in_flight_max: usize,
    /// Time slice the committer threads ask the Linux scheduler for (`sched_setattr`, honoured
    /// since Linux 6.12), so they run as soon as their `fdatasync` returns instead of waiting for
    /// a busy CPU's current task to finish its slice; `None` leaves the scheduler's default. See
    /// `sched.rs` for the measurements. Default: 100 µs.
    pub committer_time_slice_micros: Option<u32>,
}

impl Default for GroupCommitOptions {
    fn default() -> Self {
        GroupCommitOptions {
            queue_depth_max: 4096,
            batch_bytes_max: 8 * 1024 * 1024,
            syncs_in_flight_max: 3,
            committer_time_slice_micros: Some(100),
        }
    }
}

type Reply<T> = oneshot::Sender<Result<T, WalError>>;

enum Command {
    Write {
        write: Write,
        done: Option<Reply<DurableState>>,
    },
    Compact {
        through_index: Index,
        done: Reply<usize>,
    },
    Shutdown {
        done: Reply<()>,
    },
    /// Wakes the committer waiting for commands after another committer's sync failed.
    Wake,
}

/// Resolves when a submitted write is durable (or the WAL failed).
#[derive(Debug)]
pub struct Completion(oneshot::Receiver<Result<DurableState, WalError>>);

impl Completion {
    pub async fn wait(self) -> Result<DurableState, WalError> {
        self.0.await.unwrap_or(Err(WalError::WriterStopped))
    }

    /// Waits on the current thread; must not be called from inside an async runtime.
    pub fn wait_blocking(self) -> Result<DurableState, WalError> {
        self.0
            .blocking_recv()
            .unwrap_or(Err(WalError::WriterStopped))
    }
}

struct Shared {
    /// Why the writer failed, once it has.
    failure: Mutex<Option<String>>,
    /// Set by [`GroupCommitWal::shutdown`]: a write that finds no room fails instead of waiting.
    stopping: AtomicBool,
    threads: Mutex<Vec<JoinHandle<()>>>,
    dir: PathBuf,
}

/// A cloneable handle to a WAL owned by a group-commit writer thread.
#[derive(Clone)]
pub struct GroupCommitWal {
    commands: mpsc::Sender<Command>,
    durable: watch::Receiver<DurableState>,
    no_space: watch::Receiver<bool>,
    durable_snapshot: watch::Receiver<DurableState>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for GroupCommitWal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommitWal")
            .field("dir", &self.shared.dir)
            .finish()
    }
}

impl GroupCommitWal {
    /// Moves `wal` to [`GroupCommitOptions::syncs_in_flight_max`] new committer threads.
    pub fn spawn<D: Disk>(
        mut wal: Wal<D>,
        options: GroupCommitOptions,
    ) -> Result<GroupCommitWal, WalError> {
        // A committer must never stall on zero-filling a segment at a rollover.
        wal.prepare_segments_in_background();
        let (commands, receiver) = mpsc::channel(options.queue_depth_max.max(1));
        let (durable_sender, durable) = watch::channel(wal.durable_state().clone());
        let (durable_snapshot_sender, durable_snapshot) =
            watch::channel(wal.durable_state().clone());
        let (no_space_sender, no_space) = watch::channel(false);
        let shared = Arc::new(Shared {
            failure: Mutex::new(None),
            stopping: AtomicBool::new(false),
            threads: Mutex::new(Vec::new()),
            dir: wal.dir().to_path_buf(),
        });
        let committer = Arc::new(Committer {
            receiver: Mutex::new(receiver),
            wal: Mutex::new(wal),
            tickets: Mutex::new(VecDeque::new()),
            in_flight: Mutex::new(0),
            idle: Condvar::new(),
            durable: durable_sender,
            durable_snapshot: durable_snapshot_sender,
            no_space: no_space_sender,
            held: Mutex::new(None),
            shared: Arc::clone(&shared),
            batch_bytes_max: options.batch_bytes_max,
            wake: commands.downgrade(),
        });
        for number in 0..options.syncs_in_flight_max.max(1) {
            let committer = Arc::clone(&committer);
            let time_slice = options.committer_time_slice_micros;
            let thread = std::thread::Builder::new()
                .name(format!("wal-commit-{number}"))
                .spawn(move || {
                    if let Some(slice_micros) = time_slice {
                        crate::sched::request_time_slice(slice_micros);
                    }
                    committer.run()
                })
                .map_err(|source| WalError::Io {
                    op: "spawn committer thread",
                    path: shared.dir.clone(),
                    source,
                })?;
            lock(&shared.threads).push(thread);
        }
        Ok(GroupCommitWal {
            commands,
            durable,
            no_space,
            durable_snapshot,
            shared,
        })
    }

    fn stopped(&self) -> WalError {
        match lock(&self.shared.failure).clone() {
            Some(cause) => WalError::Poisoned { cause },
            None => WalError::WriterStopped,
        }
    }

    /// Queues `write` (waiting only if the queue is full) and returns a [`Completion`] that
    /// resolves once it is durable. Dropping the completion is fine: the durable watch reports
    /// progress too.
    pub async fn submit(&self, write: Write) -> Result<Completion, WalError> {
        let (done, completion) = oneshot::channel();
        self.commands
            .send(Command::Write {
                write,
                done: Some(done),
            })
            .await
            .map_err(|_| self.stopped())?;
        Ok(Completion(completion))
    }

    /// Queues `write` without any completion; progress shows on [`GroupCommitWal::durable`].
    pub async fn submit_detached(&self, write: Write) -> Result<(), WalError> {
        self.commands
            .send(Command::Write { write, done: None })
            .await
            .map_err(|_| self.stopped())
    }

    /// Persists `write` and returns once it is durable.
    pub async fn append(&self, write: Write) -> Result<DurableState, WalError> {
        self.submit(write).await?.wait().await
    }

    /// Like [`GroupCommitWal::submit`], from a thread outside any async runtime.
    pub fn submit_blocking(&self, write: Write) -> Result<Completion, WalError> {
        let (done, completion) = oneshot::channel();
        self.commands
            .blocking_send(Command::Write {
                write,
                done: Some(done),
            })
            .map_err(|_| self.stopped())?;
        Ok(Completion(completion))
    }

    /// Like [`GroupCommitWal::append`], from a thread outside any async runtime.
    pub fn append_blocking(&self, write: Write) -> Result<DurableState, WalError> {
        self.submit_blocking(write)?.wait_blocking()
    }

    /// The durable state, updated after every sync. The channel closes when the writer stops
    /// (after a fatal error or [`GroupCommitWal::shutdown`]).
    pub fn durable(&self) -> watch::Receiver<DurableState> {
        self.durable.clone()
    }

    /// The durable state, updated only when the durable snapshot marker changes: for a task that
    /// acts on markers and should not wake at every sync. Closes like [`GroupCommitWal::durable`].
    pub fn durable_snapshot(&self) -> watch::Receiver<DurableState> {
        self.durable_snapshot.clone()
    }

    /// Deletes segments covered by the durable snapshot up to `through_index` (see
    /// [`Wal::compact`]); runs on the writer thread, in order with the writes before it.
    pub async fn compact(&self, through_index: Index) -> Result<usize, WalError> {
        let (done, result) = oneshot::channel();
        self.commands
            .send(Command::Compact {
                through_index,
                done,
            })
            .await
            .map_err(|_| self.stopped())?;
        result.await.unwrap_or_else(|_| Err(self.stopped()))
    }

    /// True while a write waits because the disk has no room for the next segment (see
    /// [`Wal::ensure_room`]): it and every write after it wait, retried every
    /// [`NO_SPACE_RETRY`], until space is freed; nothing is lost or reordered, and the WAL
    /// stays usable. Changes when the state does.
    pub fn no_space(&self) -> watch::Receiver<bool> {
        self.no_space.clone()
    }

    /// Makes everything queued durable, stops the writer and waits for its thread to end.
    /// Writes that find no room on the disk then fail with [`WalError::NoSpace`] instead of
    /// waiting for space.
    pub async fn shutdown(&self) -> Result<(), WalError> {
        self.shared.stopping.store(true, Ordering::SeqCst);
        let (done, result) = oneshot::channel();
        self.commands
            .send(Command::Shutdown { done })
            .await
            .map_err(|_| self.stopped())?;
        let outcome = result.await.unwrap_or_else(|_| Err(self.stopped()));
        let threads = std::mem::take(&mut *lock(&self.shared.threads));
        for thread in threads {
            if thread.join().is_err() {
                return Err(WalError::WriterStopped);
            }
        }
        outcome
    }

    /// Why the writer failed, if it has.
    pub fn failure(&self) -> Option<String> {
        lock(&self.shared.failure).clone()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A started sync's waiters, kept until the WAL reports it durable.
struct Ticket {
    /// The `DurableState::syncs` the sync reports: it is durable once the WAL's count reaches it.
    syncs: u64,
    waiters: Vec<Reply<DurableState>>,
}

/// What one turn of a committer ended with.
enum Turn<D: Disk> {
    /// Run this sync (outside every lock), then report it.
    Sync(PendingSync<D>),
    /// Nothing to sync (the turn handled compaction, or only woke up).
    Idle,
    Stop,
}

/// State shared by the committer threads. Lock order: `receiver`, then `wal`, then `tickets`
/// or `in_flight`.
struct Committer<D: Disk> {
    /// Held by the committer whose turn it is to gather writes; so syncs start in channel order.
    receiver: Mutex<mpsc::Receiver<Command>>,
    wal: Mutex<Wal<D>>,
    /// Waiters of started syncs, in start order.
    tickets: Mutex<VecDeque<Ticket>>,
    /// Syncs started and not yet reported back; compaction and shutdown wait for zero.
    in_flight: Mutex<usize>,
    idle: Condvar,
    durable: watch::Sender<DurableState>,
    /// Like `durable`, changed only when the durable snapshot marker changes.
    durable_snapshot: watch::Sender<DurableState>,
    /// True while `held` waits for disk space.
    no_space: watch::Sender<bool>,
    /// A write taken from the channel that found no room on the disk; the next turn starts
    /// with it, so it keeps its place before everything still in the channel.
    held: Mutex<Option<Command>>,
    shared: Arc<Shared>,
    batch_bytes_max: usize,
    /// Does not keep the channel open: when every handle is gone the committers finish.
    wake: mpsc::WeakSender<Command>,
}

impl<D: Disk> Committer<D> {
    fn run(self: Arc<Self>) {
        loop {
            let turn = {
                let mut receiver = lock(&self.receiver);
                self.take_turn(&mut receiver)
            };
            match turn {
                Turn::Sync(pending) => self.run_sync(pending),
                Turn::Idle => {}
                Turn::Stop => return,
            }
        }
    }

    fn failed(&self) -> bool {
        lock(&self.shared.failure).is_some()
    }

    /// Gathers every waiting write (blocking for the first) and starts their sync.
    fn take_turn(&self, receiver: &mut mpsc::Receiver<Command>) -> Turn<D> {
        if self.failed() {
            self.reject_queued(receiver);
            return Turn::Stop;
        }
        let held = lock(&self.held).take();
        let Some(first) = held.or_else(|| receiver.blocking_recv()) else {
            // Every handle is gone (or the channel was closed at shutdown): make what was
            // gathered durable before the committers end.
            let _ = self.drain_and_sync(Vec::new());
            return Turn::Stop;
        };
        let mut wal = lock(&self.wal);
        let mut waiters = Vec::new();
        let mut batch_bytes = 0;
        let mut wrote = false;
        let mut waiting_for_space = false;
        let mut next = Some(first);
        while let Some(command) = next.take() {
            match command {
                Command::Write { write, done } => {
                    let write_bytes = write.approximate_bytes();
                    match wal.ensure_room(write.room_bytes(write_bytes)) {
                        // Only a reader's lock on the common path.
                        Ok(()) if *self.no_space.borrow() => self.report_no_space(None),
                        Ok(()) => {}
                        Err(error @ WalError::NoSpace { .. }) => {
                            if self.shared.stopping.load(Ordering::SeqCst) {
                                if let Some(done) = done {
                                    let _ = done.send(Err(error));
                                }
                            } else {
                                self.report_no_space(Some(&error));
                                *lock(&self.held) = Some(Command::Write { write, done });
                                waiting_for_space = true;
                                break;
                            }
                            if batch_bytes < self.batch_bytes_max {
                                next = receiver.try_recv().ok();
                            }
                            continue;
                        }
                        Err(error) => {
                            drop(wal);
                            waiters.extend(done);
                            self.fail(error, waiters);
                            self.reject_queued(receiver);
                            return Turn::Stop;
                        }
                    }
                    wrote = true;
                    batch_bytes += write_bytes;
                    waiters.extend(done);
                    if let Err(error) = apply(&mut wal, write) {
                        // An invalid write means the caller's view of the log differs from the
                        // WAL's; persisting anything after it could store an inconsistent log,
                        // so it is as fatal as an I/O error.
                        drop(wal);
                        self.fail(error, waiters);
                        self.reject_queued(receiver);
                        return Turn::Stop;
                    }
                }
                Command::Compact {
                    through_index,
                    done,
                } => {
                    drop(wal);
                    return self.compact(receiver, waiters, through_index, done);
                }
                Command::Shutdown { done } => {
                    drop(wal);
                    let outcome = self.drain_and_sync(waiters);
                    receiver.close();
                    let _ = done.send(outcome);
                    return Turn::Stop;
                }
                Command::Wake => {}
            }
            if batch_bytes < self.batch_bytes_max {
                next = receiver.try_recv().ok();
            }
        }
        if self.failed() {
            drop(wal);
            self.fail_waiters(waiters);
            self.reject_queued(receiver);
            return Turn::Stop;
        }
        if !wrote {
            drop(wal);
            if waiting_for_space {
                self.wait_before_retrying_room();
            }
            return Turn::Idle;
        }
        match wal.start_sync() {
            Ok(pending) => {
                // Registered under the WAL lock, so tickets are in the order syncs started.
                lock(&self.tickets).push_back(Ticket {
                    syncs: pending.durable_state().syncs,
                    waiters,
                });
                *lock(&self.in_flight) += 1;
                Turn::Sync(pending)
            }
            Err(error) => {
                drop(wal);
                self.fail(error, waiters);
                self.reject_queued(receiver);
                Turn::Stop
            }
        }
    }

    /// Runs one sync and reports it; completes the waiters of every sync now durable.
    fn run_sync(&self, mut pending: PendingSync<D>) {
        let outcome = pending.run();
        let mut wal = lock(&self.wal);
        match wal.complete_sync(pending.id(), outcome) {
            Ok(state) => {
                let state = state.clone();
                let done = self.take_durable_tickets(state.syncs);
                if !done.is_empty() {
                    // Under the WAL lock, so the watch never goes back to an older state.
                    self.publish_durable(&state);
                }
                drop(wal);
                for done in done.into_iter().flat_map(|ticket| ticket.waiters) {
                    let _ = done.send(Ok(state.clone()));
                }
            }
            Err(error) => {
                drop(wal);
                self.fail(error, Vec::new());
                // The committer waiting for commands must notice; a full queue means it is busy
                // and will see the failure on its own.
                if let Some(sender) = self.wake.upgrade() {
                    let _ = sender.try_send(Command::Wake);
                }
            }
        }
        *lock(&self.in_flight) -= 1;
        self.idle.notify_all();
    }

    /// Records whether a write waits for disk space (`Some(error)`) or not, logging the
    /// changes.
    fn report_no_space(&self, error: Option<&WalError>) {
        let waiting = error.is_some();
        let changed = self.no_space.send_if_modified(|current| {
            let changed = *current != waiting;
            *current = waiting;
            changed
        });
        match error {
            Some(error) if changed => tracing::error!(
                %error,
                retry_every = ?NO_SPACE_RETRY,
                "the WAL's disk is full: writes wait (none is lost) until space is freed"
            ),
            None if changed => tracing::warn!("the WAL's disk has room again: writes resume"),
            _ => {}
        }
    }

    /// Sleeps [`NO_SPACE_RETRY`] before the held write is tried again, or less once
    /// [`GroupCommitWal::shutdown`] has begun.
    fn wait_before_retrying_room(&self) {
        let slices = 10;
        for _ in 0..slices {
            if self.shared.stopping.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(NO_SPACE_RETRY / slices);
        }
    }

    /// Reports `state` on the durable watches; call under the WAL lock.
    fn publish_durable(&self, state: &DurableState) {
        self.durable.send_replace(state.clone());
        self.durable_snapshot.send_if_modified(|current| {
            let marker = |state: &DurableState| (state.snapshot_index, state.snapshot_term);
            if marker(current) == marker(state) {
                return false;
            }
            *current = state.clone();
            true
        });
    }

    fn take_durable_tickets(&self, durable_syncs: u64) -> Vec<Ticket> {
        let mut tickets = lock(&self.tickets);
        let mut done = Vec::new();
        while tickets
            .front()
            .is_some_and(|ticket| ticket.syncs <= durable_syncs)
        {
            done.extend(tickets.pop_front());
        }
        done
    }

    /// Waits until no sync is running, then makes everything gathered durable with a plain
    /// sync and completes `waiters`.
    fn drain_and_sync(&self, waiters: Vec<Reply<DurableState>>) -> Result<(), WalError> {
        {
            let mut in_flight = lock(&self.in_flight);
            while *in_flight > 0 {
                in_flight = self
                    .idle
                    .wait(in_flight)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
        }
        if self.failed() {
            self.fail_waiters(waiters);
            return Err(self.poisoned());
        }
        let mut wal = lock(&self.wal);
        match wal.sync() {
            Ok(state) => {
                let state = state.clone();
                self.publish_durable(&state);
                drop(wal);
                for done in waiters {
                    let _ = done.send(Ok(state.clone()));
                }
                Ok(())
            }
            Err(error) => {
                drop(wal);
                let poisoned = WalError::Poisoned {
                    cause: error.to_string(),
                };
                self.fail(error, waiters);
                Err(poisoned)
            }
        }
    }

    fn compact(
        &self,
        receiver: &mut mpsc::Receiver<Command>,
        waiters: Vec<Reply<DurableState>>,
        through_index: Index,
        done: Reply<usize>,
    ) -> Turn<D> {
        if let Err(error) = self.drain_and_sync(waiters) {
            let _ = done.send(Err(error));
            self.reject_queued(receiver);
            return Turn::Stop;
        }
        let result = lock(&self.wal).compact(through_index);
        match result {
            Ok(removed) => {
                let _ = done.send(Ok(removed));
                Turn::Idle
            }
            Err(error) => {
                let _ = done.send(Err(WalError::Poisoned {
                    cause: error.to_string(),
                }));
                self.fail(error, Vec::new());
                self.reject_queued(receiver);
                Turn::Stop
            }
        }
    }

    fn poisoned(&self) -> WalError {
        WalError::Poisoned {
            cause: lock(&self.shared.failure).clone().unwrap_or_default(),
        }
    }

    /// Records the fatal error (the first one wins) and fails `waiters` and every started
    /// sync's waiters: the first waiter gets the error itself, the others `Poisoned`.
    fn fail(&self, error: WalError, waiters: Vec<Reply<DurableState>>) {
        let first_failure = {
            let mut failure = lock(&self.shared.failure);
            let first = failure.is_none();
            if first {
                tracing::error!(%error, "WAL writer stopping after a fatal error");
                *failure = Some(error.to_string());
            }
            first
        };
        let mut waiters = waiters.into_iter().chain(
            std::mem::take(&mut *lock(&self.tickets))
                .into_iter()
                .flat_map(|ticket| ticket.waiters),
        );
        if first_failure && let Some(first) = waiters.next() {
            let _ = first.send(Err(error));
        }
        for done in waiters {
            let _ = done.send(Err(self.poisoned()));
        }
    }

    fn fail_waiters(&self, waiters: Vec<Reply<DurableState>>) {
        for done in waiters {
            let _ = done.send(Err(self.poisoned()));
        }
    }

    /// Closes the channel, so later submissions fail at once, and fails every queued command.
    fn reject_queued(&self, receiver: &mut mpsc::Receiver<Command>) {
        receiver.close();
        while let Ok(command) = receiver.try_recv() {
            match command {
                Command::Write {
                    done: Some(done), ..
                } => {
                    let _ = done.send(Err(self.poisoned()));
                }
                Command::Write { done: None, .. } | Command::Wake => {}
                Command::Compact { done, .. } => {
                    let _ = done.send(Err(self.poisoned()));
                }
                Command::Shutdown { done } => {
                    let _ = done.send(Err(self.poisoned()));
                }
            }
        }
    }
}

/// Adds one write to the WAL's buffer, in the order snapshot marker, entries, hard state.
fn apply<D: Disk>(wal: &mut Wal<D>, write: Write) -> Result<(), WalError> {
    if let Some(marker) = write.snapshot {
        wal.set_snapshot(marker)?;
    }
    wal.append(&write.entries)?;
    if let Some(hard_state) = write.hard_state {
        wal.set_hard_state(hard_state)?;
    }
    Ok(())
}
