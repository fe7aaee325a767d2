//! The store: key index with per-key history, revisions, leases, and the
//! apply path of every command.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use ballot_proto::etcdserverpb::{
    CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, LeaseCheckpointResponse,
    LeaseGrantResponse, LeaseRevokeResponse, PutRequest, PutResponse, ResponseHeader, TxnResponse,
};
use ballot_proto::mvccpb::{Event, KeyValue, event::EventType};
use bytes::Bytes;

use crate::command::Command;
use crate::error::MvccError;
use crate::history::{KeyHistory, Version};
use crate::index::KeyIndex;
use crate::keys::KeyRange;
use crate::validate;

/// Largest TTL a lease may be granted with (etcd `MaxLeaseTTL`, 9e9 s).
pub const LEASE_TTL_MAX_SECS: i64 = 9_000_000_000;

/// etcd's default `--max-txn-ops`.
pub const TXN_OPS_MAX_DEFAULT: usize = 128;

/// Settings every replica must share: they change what applying a command
/// does, so they are part of the replicated state machine's definition.
///
/// The Txn size limit (etcd `--max-txn-ops`) is deliberately not one of them:
/// it is checked before proposing ([`crate::check_txn`]), as etcd does, so
/// members configured with different limits still apply the same log alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// Granted TTLs below this are raised to it (etcd: ceil(1.5 × election
    /// timeout), 2 s with the default 1 s election timeout).
    pub lease_ttl_min_secs: i64,
}

impl Default for StoreConfig {
    fn default() -> StoreConfig {
        StoreConfig {
            lease_ttl_min_secs: 2,
        }
    }
}

/// What applying one command answered.
#[derive(Debug, Clone, PartialEq)]
pub enum ApplyOutcome {
    /// Answer to [`Command::Put`].
    Put(PutResponse),
    /// Answer to [`Command::DeleteRange`].
    DeleteRange(DeleteRangeResponse),
    /// Answer to [`Command::Txn`].
    Txn(TxnResponse),
    /// Answer to [`Command::Compact`].
    Compact(CompactionResponse),
    /// Answer to [`Command::LeaseGrant`]: `id` and the TTL after raising it
    /// to the minimum. The leader's [`crate::LeaseClock`] starts timing it.
    LeaseGrant(LeaseGrantResponse),
    /// Answer to [`Command::LeaseRevoke`].
    LeaseRevoke(LeaseRevokeResponse),
    /// Answer to [`Command::LeaseCheckpoint`].
    LeaseCheckpoint(LeaseCheckpointResponse),
    /// The command was refused; nothing changed.
    Error(MvccError),
    /// `index` was at or below [`Store::last_applied`]: nothing was done.
    AlreadyApplied,
}

/// The result of [`Store::apply`].
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// The answer for the client that proposed the command. Response headers
    /// carry only `revision`; the server fills cluster, member and term.
    pub outcome: ApplyOutcome,
    /// The changes the command made, in order, all of revision `revision`
    /// (empty when it changed nothing). Every event carries `prev_kv` when
    /// the key existed before; the watch hub strips it for watchers that did
    /// not ask. Hand them to [`crate::WatchHub::notify`].
    pub events: Vec<Event>,
    /// The store's current revision after the command.
    pub revision: i64,
}

/// A lease as the replicated state knows it. Expiry is not here: it is
/// decided by the leader's [`crate::LeaseClock`] and arrives as a revoke.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Lease {
    /// Granted TTL (after raising to the minimum).
    pub ttl_secs: i64,
    /// Last checkpointed remaining TTL; 0 when never checkpointed.
    pub remaining_ttl_secs: i64,
    /// Keys whose latest version is attached to this lease.
    pub keys: BTreeSet<Bytes>,
}

/// Public view of a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseInfo {
    /// Lease ID.
    pub id: i64,
    /// Granted TTL in seconds.
    pub ttl_secs: i64,
    /// Checkpointed remaining TTL in seconds, 0 when never checkpointed.
    pub remaining_ttl_secs: i64,
    /// Attached keys, ascending.
    pub keys: Vec<Bytes>,
}

/// One entry of the revision log: which key (by key-index slot) changed at
/// `(main, sub)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Change {
    pub main: i64,
    pub sub: u32,
    pub slot: u32,
}

/// The replicated state machine: etcd's MVCC key-value store plus leases.
///
/// Deterministic: applying the same commands at the same indexes to two
/// stores built with the same [`StoreConfig`] gives identical state (and
/// identical [`Store::snapshot`] bytes). Nothing here reads a clock or a
/// random source.
#[derive(Debug, Clone)]
pub struct Store {
    pub(crate) config: StoreConfig,
    /// Every key that has history since the compact revision.
    pub(crate) keys: KeyIndex,
    /// Every change with main revision >= the compact revision (all changes
    /// when never compacted), in revision order: what watch catch-up and
    /// compaction walk instead of scanning all keys.
    // Invariant: ascending by (main, sub); each entry's slot is in use and
    // its history holds that revision. A key leaves the index only when
    // compaction empties its history, which also pops all its entries here.
    pub(crate) changes: VecDeque<Change>,
    // Invariant: compact_revision <= current_revision.
    pub(crate) current_revision: i64,
    pub(crate) compact_revision: i64,
    pub(crate) last_applied: u64,
    pub(crate) leases: BTreeMap<i64, Lease>,
}

/// The changes of one write in progress; they all share `main`.
pub(crate) struct WriteBatch {
    pub main: i64,
    pub sub: u32,
    pub events: Vec<Event>,
}

impl WriteBatch {
    pub(crate) fn changed(&self) -> bool {
        self.sub > 0
    }
}

pub(crate) fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..ResponseHeader::default()
    })
}

impl Store {
    /// An empty store: revision 1, never compacted, nothing applied.
    pub fn new(config: StoreConfig) -> Store {
        Store {
            config,
            keys: KeyIndex::default(),
            changes: VecDeque::new(),
            current_revision: 1,
            compact_revision: -1,
            last_applied: 0,
            leases: BTreeMap::new(),
        }
    }

    /// The configuration this store applies with.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// Raft index of the last command applied (0 when none).
    pub fn last_applied(&self) -> u64 {
        self.last_applied
    }

    /// The current revision (starts at 1).
    pub fn current_revision(&self) -> i64 {
        self.current_revision
    }

    /// The revision of the last compaction, -1 when never compacted.
    pub fn compact_revision(&self) -> i64 {
        self.compact_revision
    }

    /// Marks `index` applied without a command: for log entries that carry
    /// no state-machine command (Raft no-ops, configuration changes), so
    /// that [`Store::last_applied`] keeps up with the log.
    pub fn skip(&mut self, index: u64) {
        self.last_applied = self.last_applied.max(index);
    }

    /// Applies the command committed at Raft index `index`. An index at or
    /// below [`Store::last_applied`] is a no-op answered with
    /// [`ApplyOutcome::AlreadyApplied`], so replaying the log after a restart
    /// from a snapshot is safe.
    pub fn apply(&mut self, index: u64, command: &Command) -> Applied {
        if index <= self.last_applied {
            return self.applied(ApplyOutcome::AlreadyApplied, Vec::new());
        }
        self.last_applied = index;
        let result = match command {
            Command::Put(req) => self.apply_put(req),
            Command::DeleteRange(req) => self.apply_delete_range(req),
            Command::Txn(req) => self.apply_txn(req),
            Command::Compact(req) => self.compact(req.revision).map(|()| {
                (
                    ApplyOutcome::Compact(CompactionResponse {
                        header: header(self.current_revision),
                    }),
                    Vec::new(),
                )
            }),
            Command::LeaseGrant { id, ttl_secs } => self
                .lease_grant(*id, *ttl_secs)
                .map(|response| (ApplyOutcome::LeaseGrant(response), Vec::new())),
            Command::LeaseRevoke { id } => self.lease_revoke(*id),
            Command::LeaseCheckpoint {
                id,
                remaining_ttl_secs,
            } => {
                self.lease_checkpoint(*id, *remaining_ttl_secs);
                Ok((
                    ApplyOutcome::LeaseCheckpoint(LeaseCheckpointResponse {
                        header: header(self.current_revision),
                    }),
                    Vec::new(),
                ))
            }
        };
        match result {
            Ok((outcome, events)) => self.applied(outcome, events),
            Err(error) => self.applied(ApplyOutcome::Error(error), Vec::new()),
        }
    }

    fn applied(&self, outcome: ApplyOutcome, events: Vec<Event>) -> Applied {
        Applied {
            outcome,
            events,
            revision: self.current_revision,
        }
    }

    pub(crate) fn begin_write(&self) -> WriteBatch {
        WriteBatch {
            main: self.current_revision + 1,
            sub: 0,
            events: Vec::new(),
        }
    }

    /// Ends a write: the revision advances only if something changed.
    pub(crate) fn end_write(&mut self, batch: &WriteBatch) {
        if batch.changed() {
            self.current_revision = batch.main;
        }
    }

    fn apply_put(&mut self, req: &PutRequest) -> Result<(ApplyOutcome, Vec<Event>), MvccError> {
        validate::check_put(req)?;
        self.check_put_state(req)?;
        let mut batch = self.begin_write();
        let prev_kv = self.put(&mut batch, req);
        self.end_write(&batch);
        let response = PutResponse {
            header: header(self.current_revision),
            prev_kv,
        };
        Ok((ApplyOutcome::Put(response), batch.events))
    }

    /// The state-dependent checks of a put (etcd `checkRequestPut`): the
    /// lease must exist and `ignore_value`/`ignore_lease` need an existing key.
    pub(crate) fn check_put_state(&self, req: &PutRequest) -> Result<(), MvccError> {
        if (req.ignore_value || req.ignore_lease) && self.latest_live(&req.key).is_none() {
            return Err(MvccError::KeyNotFound);
        }
        if req.lease != 0 && !self.leases.contains_key(&req.lease) {
            return Err(MvccError::LeaseNotFound);
        }
        Ok(())
    }

    pub(crate) fn latest_live(&self, key: &[u8]) -> Option<&Version> {
        self.keys.get(key).and_then(|history| history.visible(None))
    }

    /// Performs a checked put; returns the previous pair when requested.
    pub(crate) fn put(&mut self, batch: &mut WriteBatch, req: &PutRequest) -> Option<KeyValue> {
        let (main, sub) = (batch.main, batch.sub);
        batch.sub += 1;
        // One key-index lookup for an existing key (the common case), two
        // for a new one.
        let (slot, prev, kv) = match self.keys.get_mut(req.key.as_ref()) {
            Some((slot, history)) => {
                let previous = history.visible(None);
                let prev = previous.map(|version| version.key_value(&req.key));
                let version = next_version(previous, req, main, sub);
                let kv = version.key_value(&req.key);
                history.push(version);
                (slot, prev, kv)
            }
            None => {
                let version = next_version(None, req, main, sub);
                let kv = version.key_value(&req.key);
                let slot = self.keys.insert(req.key.clone(), KeyHistory::new(version));
                (slot, None, kv)
            }
        };
        let old_lease = prev.as_ref().map_or(0, |prev| prev.lease);
        if old_lease != kv.lease {
            self.detach(old_lease, &req.key);
            self.attach(kv.lease, &req.key);
        }
        self.changes.push_back(Change { main, sub, slot });
        let response_prev = if req.prev_kv { prev.clone() } else { None };
        batch.events.push(Event {
            r#type: EventType::Put as i32,
            kv: Some(kv),
            prev_kv: prev,
        });
        response_prev
    }

    fn attach(&mut self, lease: i64, key: &Bytes) {
        if lease == 0 {
            return;
        }
        match self.leases.get_mut(&lease) {
            Some(entry) => {
                // Copied out of the request's buffer, like a new key (see `KeyIndex::insert`).
                entry.keys.insert(Bytes::copy_from_slice(key));
            }
            None => panic!("put attached key {key:?} to lease {lease} that was checked to exist"),
        }
    }

    fn detach(&mut self, lease: i64, key: &[u8]) {
        if lease == 0 {
            return;
        }
        if let Some(entry) = self.leases.get_mut(&lease) {
            entry.keys.remove(key);
        }
    }

    fn apply_delete_range(
        &mut self,
        req: &DeleteRangeRequest,
    ) -> Result<(ApplyOutcome, Vec<Event>), MvccError> {
        validate::check_delete(req)?;
        let mut batch = self.begin_write();
        let response = self.delete_range(&mut batch, req);
        self.end_write(&batch);
        let response = DeleteRangeResponse {
            header: header(self.current_revision),
            ..response
        };
        Ok((ApplyOutcome::DeleteRange(response), batch.events))
    }

    /// Deletes every live key in the request's range (header left empty).
    pub(crate) fn delete_range(
        &mut self,
        batch: &mut WriteBatch,
        req: &DeleteRangeRequest,
    ) -> DeleteRangeResponse {
        let range = KeyRange::new(&req.key, &req.range_end);
        let mut response = DeleteRangeResponse::default();
        let (keys, leases, changes) = (&mut self.keys, &mut self.leases, &mut self.changes);
        keys.visit_mut(&range, |slot, key, history| {
            let latest = history.latest();
            if !latest.is_live() {
                return;
            }
            let prev = latest.key_value(key);
            if latest.lease != 0
                && let Some(lease) = leases.get_mut(&latest.lease)
            {
                lease.keys.remove(key);
            }
            history.push(Version::tombstone(batch.main, batch.sub));
            changes.push_back(Change {
                main: batch.main,
                sub: batch.sub,
                slot,
            });
            batch.sub += 1;
            response.deleted += 1;
            if req.prev_kv {
                response.prev_kvs.push(prev.clone());
            }
            batch.events.push(Event {
                r#type: EventType::Delete as i32,
                kv: Some(KeyValue {
                    key: key.clone(),
                    mod_revision: batch.main,
                    ..KeyValue::default()
                }),
                prev_kv: Some(prev),
            });
        });
        response
    }

    /// Compacts history below `revision` (etcd `Compact`): afterwards reads
    /// at `revision` or later work and reads below it are refused.
    pub(crate) fn compact(&mut self, revision: i64) -> Result<(), MvccError> {
        if revision <= self.compact_revision {
            return Err(MvccError::Compacted);
        }
        if revision > self.current_revision {
            return Err(MvccError::FutureRevision);
        }
        // Only keys changed since the previous compaction can have history
        // to drop: the newest version below the previous compact revision
        // was kept because it was live, and it is still the newest below
        // `revision` unless the key changed since (up to `revision` itself).
        let mut touched: Vec<u32> = Vec::new();
        while let Some(change) = self.changes.pop_front_if(|change| change.main < revision) {
            touched.push(change.slot);
        }
        // Keys changed exactly at `revision` too: a delete there drops the version kept
        // before it (see `History::compact`). Their entries stay in the log.
        touched.extend(
            self.changes
                .iter()
                .take_while(|change| change.main == revision)
                .map(|change| change.slot),
        );
        touched.sort_unstable();
        touched.dedup();
        for slot in touched {
            if self.keys.history_mut(slot).compact(revision) {
                self.keys.remove_slot(slot);
            }
        }
        self.compact_revision = revision;
        Ok(())
    }

    fn lease_grant(&mut self, id: i64, ttl_secs: i64) -> Result<LeaseGrantResponse, MvccError> {
        // Order of checks as in etcd's lessor.Grant.
        if id == 0 {
            return Err(MvccError::LeaseNotFound);
        }
        if ttl_secs > LEASE_TTL_MAX_SECS {
            return Err(MvccError::LeaseTtlTooLarge);
        }
        if self.leases.contains_key(&id) {
            return Err(MvccError::LeaseExists);
        }
        let ttl_secs = ttl_secs.max(self.config.lease_ttl_min_secs);
        self.leases.insert(
            id,
            Lease {
                ttl_secs,
                remaining_ttl_secs: 0,
                keys: BTreeSet::new(),
            },
        );
        Ok(LeaseGrantResponse {
            header: header(self.current_revision),
            id,
            ttl: ttl_secs,
            error: String::new(),
        })
    }

    fn lease_revoke(&mut self, id: i64) -> Result<(ApplyOutcome, Vec<Event>), MvccError> {
        let lease = self.leases.remove(&id).ok_or(MvccError::LeaseNotFound)?;
        // etcd deletes the attached keys in key order, in one transaction.
        let mut batch = self.begin_write();
        for key in &lease.keys {
            let req = DeleteRangeRequest {
                key: key.clone(),
                range_end: Bytes::new(),
                prev_kv: false,
            };
            self.delete_range(&mut batch, &req);
        }
        self.end_write(&batch);
        let response = LeaseRevokeResponse {
            header: header(self.current_revision),
        };
        Ok((ApplyOutcome::LeaseRevoke(response), batch.events))
    }

    fn lease_checkpoint(&mut self, id: i64, remaining_ttl_secs: i64) {
        // etcd ignores checkpoints of leases that no longer exist.
        if let Some(lease) = self.leases.get_mut(&id) {
            lease.remaining_ttl_secs = remaining_ttl_secs;
        }
    }
}

/// The version a put creates on top of `previous` (the key's live version,
/// if any). `ignore_value`/`ignore_lease` keep the previous value/lease; the
/// checks guarantee a previous version then, except for Txns that delete
/// the key earlier through one of etcd's unchecked overlaps, where etcd
/// itself would crash: an empty value and no lease are the deterministic
/// answer there.
fn next_version(previous: Option<&Version>, req: &PutRequest, main: i64, sub: u32) -> Version {
    let (create_revision, version) = match previous {
        Some(previous) => (previous.create_revision, previous.version + 1),
        None => (main, 1),
    };
    // The request's value is stored as is, a slice of the buffer it arrived in, until a
    // compaction finds it still needed (see `Version::owned`).
    let (value, owned) = match (req.ignore_value, previous) {
        (true, Some(previous)) => (previous.value.clone(), previous.owned),
        _ => (req.value.clone(), false),
    };
    let lease = match (req.ignore_lease, previous) {
        (true, Some(previous)) => previous.lease,
        (true, None) => 0,
        (false, _) => req.lease,
    };
    Version {
        main,
        sub,
        create_revision,
        version,
        lease,
        value,
        owned,
    }
}
