//! Group commit for the server: one writer thread owns the [`Wal`]; any number of tasks submit
//! writes through a bounded channel; the writer takes every write waiting, encodes them all,
//! and makes them durable with one write and one `fdatasync`, then completes every waiter and
//! publishes the new durable state on a watch channel.
//!
//! Writes are made durable in the order they entered the channel, so a Raft loop that submits
//! each `Ready` in turn gets them persisted in order. A leader overlaps its own disk write with
//! replication (Raft thesis §10.2.1) by submitting without waiting and reacting to the durable
//! watch (or the returned [`Completion`]) when the write lands.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot, watch};

use crate::disk::Disk;
use crate::error::WalError;
use crate::types::{DurableState, HardState, Index, LogEntry, SnapshotMarker};
use crate::wal::Wal;

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
}

/// Limits of the group-commit writer.
#[derive(Clone, Debug)]
pub struct GroupCommitOptions {
    /// Writes that may wait in the channel; submitters wait (back-pressure) beyond it.
    pub queue_depth_max: usize,
    /// A sync is started once this many bytes of writes are gathered, even if more are waiting.
    pub batch_bytes_max: usize,
}

impl Default for GroupCommitOptions {
    fn default() -> Self {
        GroupCommitOptions {
            queue_depth_max: 4096,
            batch_bytes_max: 8 * 1024 * 1024,
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
    thread: Mutex<Option<JoinHandle<()>>>,
    dir: PathBuf,
}

/// A cloneable handle to a WAL owned by a group-commit writer thread.
#[derive(Clone)]
pub struct GroupCommitWal {
    commands: mpsc::Sender<Command>,
    durable: watch::Receiver<DurableState>,
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
    /// Moves `wal` onto a new writer thread.
    pub fn spawn<D: Disk>(
        mut wal: Wal<D>,
        options: GroupCommitOptions,
    ) -> Result<GroupCommitWal, WalError> {
        // The writer thread must never stall on zero-filling a segment at a rollover.
        wal.prepare_segments_in_background();
        let (commands, receiver) = mpsc::channel(options.queue_depth_max.max(1));
        let (durable_sender, durable) = watch::channel(wal.durable_state().clone());
        let shared = Arc::new(Shared {
            failure: Mutex::new(None),
            thread: Mutex::new(None),
            dir: wal.dir().to_path_buf(),
        });
        let writer = Writer {
            wal,
            receiver,
            durable: durable_sender,
            shared: Arc::clone(&shared),
            batch_bytes_max: options.batch_bytes_max,
            waiting: Vec::new(),
        };
        let thread = std::thread::Builder::new()
            .name("wal-writer".into())
            .spawn(move || writer.run())
            .map_err(|source| WalError::Io {
                op: "spawn writer thread",
                path: shared.dir.clone(),
                source,
            })?;
        *lock(&shared.thread) = Some(thread);
        Ok(GroupCommitWal {
            commands,
            durable,
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

    /// Makes everything queued durable, stops the writer and waits for its thread to end.
    pub async fn shutdown(&self) -> Result<(), WalError> {
        let (done, result) = oneshot::channel();
        self.commands
            .send(Command::Shutdown { done })
            .await
            .map_err(|_| self.stopped())?;
        let outcome = result.await.unwrap_or_else(|_| Err(self.stopped()));
        let thread = lock(&self.shared.thread).take();
        if let Some(thread) = thread
            && thread.join().is_err()
        {
            return Err(WalError::WriterStopped);
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

struct Writer<D: Disk> {
    wal: Wal<D>,
    receiver: mpsc::Receiver<Command>,
    durable: watch::Sender<DurableState>,
    shared: Arc<Shared>,
    batch_bytes_max: usize,
    /// Completions of the writes gathered since the last sync.
    waiting: Vec<Reply<DurableState>>,
}

impl<D: Disk> Writer<D> {
    fn run(mut self) {
        while let Some(first) = self.receiver.blocking_recv() {
            let mut next = Some(first);
            let mut batch_bytes = 0;
            while let Some(command) = next.take() {
                let keep_going = match command {
                    Command::Write { write, done } => {
                        batch_bytes += write.approximate_bytes();
                        self.waiting.extend(done);
                        self.apply(write)
                    }
                    Command::Compact {
                        through_index,
                        done,
                    } => self.compact(through_index, done),
                    Command::Shutdown { done } => {
                        let result = self.sync_batch();
                        let outcome = result.map_err(|()| self.poisoned());
                        let _ = done.send(outcome);
                        return;
                    }
                };
                if !keep_going {
                    return;
                }
                if batch_bytes < self.batch_bytes_max {
                    next = self.receiver.try_recv().ok();
                }
            }
            if self.sync_batch().is_err() {
                return;
            }
        }
        // Every handle is gone: make what was gathered durable before the thread ends.
        let _ = self.sync_batch();
    }

    /// Adds one write to the batch; false if the WAL failed.
    fn apply(&mut self, write: Write) -> bool {
        let result = (|| {
            if let Some(marker) = write.snapshot {
                self.wal.set_snapshot(marker)?;
            }
            self.wal.append(&write.entries)?;
            if let Some(hard_state) = write.hard_state {
                self.wal.set_hard_state(hard_state)?;
            }
            Ok(())
        })();
        match result {
            Ok(()) => true,
            Err(error) => {
                // An invalid write means the caller's view of the log differs from the WAL's;
                // persisting anything after it could store an inconsistent log, so it is as
                // fatal as an I/O error.
                self.fail(error);
                false
            }
        }
    }

    fn compact(&mut self, through_index: Index, done: Reply<usize>) -> bool {
        if self.sync_batch().is_err() {
            let _ = done.send(Err(self.poisoned()));
            return false;
        }
        match self.wal.compact(through_index) {
            Ok(removed) => {
                let _ = done.send(Ok(removed));
                true
            }
            Err(error) => {
                let _ = done.send(Err(self.poisoned_by(&error)));
                self.fail(error);
                false
            }
        }
    }

    /// Makes the gathered writes durable and completes their waiters.
    fn sync_batch(&mut self) -> Result<(), ()> {
        match self.wal.sync() {
            Ok(state) => {
                let state = state.clone();
                self.durable.send_replace(state.clone());
                for done in self.waiting.drain(..) {
                    let _ = done.send(Ok(state.clone()));
                }
                Ok(())
            }
            Err(error) => {
                self.fail(error);
                Err(())
            }
        }
    }

    fn poisoned_by(&self, error: &WalError) -> WalError {
        WalError::Poisoned {
            cause: error.to_string(),
        }
    }

    fn poisoned(&self) -> WalError {
        WalError::Poisoned {
            cause: lock(&self.shared.failure).clone().unwrap_or_default(),
        }
    }

    /// Records the fatal error, fails every waiter and every queued command, and closes the
    /// channel so later submissions fail at once.
    fn fail(&mut self, error: WalError) {
        tracing::error!(%error, "WAL writer stopping after a fatal error");
        let cause = error.to_string();
        *lock(&self.shared.failure) = Some(cause.clone());
        let poisoned = || WalError::Poisoned {
            cause: cause.clone(),
        };
        let mut waiters = self.waiting.drain(..);
        if let Some(first) = waiters.next() {
            let _ = first.send(Err(error));
        }
        for done in waiters {
            let _ = done.send(Err(poisoned()));
        }
        self.receiver.close();
        while let Ok(command) = self.receiver.try_recv() {
            match command {
                Command::Write {
                    done: Some(done), ..
                } => {
                    let _ = done.send(Err(poisoned()));
                }
                Command::Write { done: None, .. } => {}
                Command::Compact { done, .. } => {
                    let _ = done.send(Err(poisoned()));
                }
                Command::Shutdown { done } => {
                    let _ = done.send(Err(poisoned()));
                }
            }
        }
    }
}
