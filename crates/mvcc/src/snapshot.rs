//! Snapshots: the whole state as one deterministic byte stream.
//!
//! Format (all integers little-endian; version 1):
//!
//! ```text
//! magic "BALLOTMV" | u32 format version
//! u64 last_applied | i64 current_revision | i64 compact_revision
//! u64 lease count, then per lease ascending by ID:
//!     i64 id | i64 ttl_secs | i64 remaining_ttl_secs
//! u64 key count, then per key ascending:
//!     u32 key length | key | u32 version count, then per version oldest first:
//!         i64 main | u32 sub | i64 create_revision | i64 version | i64 lease
//!         | u32 value length | value
//! u32 CRC32C of everything before it
//! ```
//!
//! Every collection is written in key order from ordered maps, so the same
//! state always gives the same bytes. Lease key sets and the revision log
//! are derived state, rebuilt on restore. The configuration is not part of
//! the snapshot: it is the node's, and must match across replicas.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{self, Write};
use std::sync::Arc;

use bytes::Bytes;

use crate::error::SnapshotError;
use crate::history::{KeyHistory, Version};
use crate::index::{KeyIndex, Slot};
use crate::store::{Change, Lease, Store, StoreConfig};

const MAGIC: &[u8; 8] = b"BALLOTMV";
const FORMAT_VERSION: u32 = 1;

/// Bytes gathered before they are checksummed and handed to the writer:
/// the format is made of many small fields, and one checksum call and one
/// write per field would cost more than the bytes themselves.
const WRITE_BUFFER_BYTES: usize = 256 * 1024;

/// A buffering writer that checksums what passes through it.
struct Crc<W: Write> {
    inner: W,
    crc: u32,
    buffer: Vec<u8>,
}

impl<W: Write> Crc<W> {
    fn new(inner: W) -> Crc<W> {
        Crc {
            inner,
            crc: 0,
            buffer: Vec::with_capacity(WRITE_BUFFER_BYTES),
        }
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.buffer.len() + bytes.len() > WRITE_BUFFER_BYTES {
            self.flush_buffer()?;
            if bytes.len() >= WRITE_BUFFER_BYTES {
                self.crc = crc32c::crc32c_append(self.crc, bytes);
                return self.inner.write_all(bytes);
            }
        }
        self.buffer.extend_from_slice(bytes);
        Ok(())
    }

    fn put_len(&mut self, len: usize) -> io::Result<()> {
        let len = u32::try_from(len).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "a key, value or history exceeds u32 length",
            )
        })?;
        self.put(&len.to_le_bytes())
    }

    fn flush_buffer(&mut self) -> io::Result<()> {
        self.crc = crc32c::crc32c_append(self.crc, &self.buffer);
        self.inner.write_all(&self.buffer)?;
        self.buffer.clear();
        Ok(())
    }

    /// Writes what is buffered, then the checksum of everything.
    fn finish(mut self) -> io::Result<()> {
        self.flush_buffer()?;
        let crc = self.crc;
        self.inner.write_all(&crc.to_le_bytes())
    }
}

/// The state a snapshot writes, taken from a [`Store`] at one applied
/// index without copying it: histories are shared with the store, which
/// copies a key's history when it next changes it. Taking one costs a
/// reference count per key; writing it can then run on another thread
/// while the store goes on applying.
#[derive(Debug, Clone)]
pub struct StoreSnapshot {
    last_applied: u64,
    current_revision: i64,
    compact_revision: i64,
    /// (id, ttl_secs, remaining_ttl_secs), ascending by ID.
    leases: Vec<(i64, i64, i64)>,
    /// In key order.
    keys: Vec<Arc<Slot>>,
}

const HEADER_BYTES: u64 = 8 + 4 + 8 + 8 + 8;
const LEASE_BYTES: u64 = 8 * 3;
const VERSION_FIXED_BYTES: u64 = 8 + 4 + 8 + 8 + 8 + 4;

impl StoreSnapshot {
    /// Every key with its history, in key order.
    pub(crate) fn keys(&self) -> impl Iterator<Item = &Slot> {
        self.keys.iter().map(|slot| &**slot)
    }

    /// The store's compact revision when the snapshot was taken.
    pub fn compact_revision(&self) -> i64 {
        self.compact_revision
    }

    /// The store's revision when the snapshot was taken.
    pub fn current_revision(&self) -> i64 {
        self.current_revision
    }

    /// The applied index the snapshot is of.
    pub fn last_applied(&self) -> u64 {
        self.last_applied
    }

    /// The exact length of what [`StoreSnapshot::write_to`] writes.
    pub fn encoded_len(&self) -> u64 {
        let keys: u64 = self
            .keys
            .iter()
            .map(|slot| {
                let versions: u64 = slot
                    .history
                    .versions
                    .iter()
                    .map(|version| VERSION_FIXED_BYTES + version.value.len() as u64)
                    .sum();
                4 + slot.key.len() as u64 + 4 + versions
            })
            .sum();
        HEADER_BYTES + 8 + LEASE_BYTES * self.leases.len() as u64 + 8 + keys + 4
    }

    /// Writes the snapshot to `writer` (streaming, in large writes).
    pub fn write_to(&self, writer: impl Write) -> io::Result<()> {
        let mut out = Crc::new(writer);
        out.put(MAGIC)?;
        out.put(&FORMAT_VERSION.to_le_bytes())?;
        out.put(&self.last_applied.to_le_bytes())?;
        out.put(&self.current_revision.to_le_bytes())?;
        out.put(&self.compact_revision.to_le_bytes())?;
        out.put(&(self.leases.len() as u64).to_le_bytes())?;
        for (id, ttl_secs, remaining_ttl_secs) in &self.leases {
            out.put(&id.to_le_bytes())?;
            out.put(&ttl_secs.to_le_bytes())?;
            out.put(&remaining_ttl_secs.to_le_bytes())?;
        }
        out.put(&(self.keys.len() as u64).to_le_bytes())?;
        for slot in &self.keys {
            out.put_len(slot.key.len())?;
            out.put(&slot.key)?;
            out.put_len(slot.history.versions.len())?;
            for version in &slot.history.versions {
                out.put(&version.main.to_le_bytes())?;
                out.put(&version.sub.to_le_bytes())?;
                out.put(&version.create_revision.to_le_bytes())?;
                out.put(&version.version.to_le_bytes())?;
                out.put(&version.lease.to_le_bytes())?;
                out.put_len(version.value.len())?;
                out.put(&version.value)?;
            }
        }
        out.finish()
    }

    /// The snapshot as one buffer.
    pub fn to_bytes(&self) -> Bytes {
        let mut buffer = Vec::with_capacity(usize::try_from(self.encoded_len()).unwrap_or(0));
        if let Err(error) = self.write_to(&mut buffer) {
            panic!("writing a snapshot into memory failed: {error}");
        }
        Bytes::from(buffer)
    }
}

impl Store {
    /// The state as of now, for writing a snapshot (see [`StoreSnapshot`]).
    pub fn snapshot_state(&self) -> StoreSnapshot {
        StoreSnapshot {
            last_applied: self.last_applied,
            current_revision: self.current_revision,
            compact_revision: self.compact_revision,
            leases: self
                .leases
                .iter()
                .map(|(id, lease)| (*id, lease.ttl_secs, lease.remaining_ttl_secs))
                .collect(),
            keys: self.keys.shared_in_order(),
        }
    }

    /// Writes the snapshot to `writer` (streaming; no full copy in memory).
    pub fn snapshot_write(&self, writer: &mut impl Write) -> io::Result<()> {
        self.snapshot_state().write_to(writer)
    }

    /// The snapshot as one buffer.
    pub fn snapshot(&self) -> Bytes {
        self.snapshot_state().to_bytes()
    }

    /// Rebuilds a store from [`Store::snapshot`] bytes. Any malformed input
    /// gives an error, never a panic.
    pub fn restore(bytes: &[u8], config: StoreConfig) -> Result<Store, SnapshotError> {
        let body_len = bytes
            .len()
            .checked_sub(4)
            .ok_or(SnapshotError::Truncated("checksum"))?;
        check_magic(&bytes[..body_len])?;
        check_crc(bytes, body_len)?;
        let (store, consumed) = Store::decode(&bytes[..body_len], config)?;
        if consumed != body_len {
            return Err(corrupt(format!(
                "{} bytes after the last key",
                body_len - consumed
            )));
        }
        Ok(store)
    }

    /// Rebuilds a store from a snapshot followed by zero bytes, as the
    /// Maintenance `Snapshot` stream sends it (padded to a multiple of 512
    /// bytes for `etcdctl snapshot save`, whose SHA-256 the caller has
    /// already checked and removed). The snapshot's end is found by reading
    /// its structure; its checksum follows, then only zeros may.
    ///
    /// Returns the store and the snapshot's own length.
    pub fn restore_padded(
        bytes: &[u8],
        config: StoreConfig,
    ) -> Result<(Store, usize), SnapshotError> {
        check_magic(bytes)?;
        let (store, body_len) = Store::decode(bytes, config)?;
        let len = body_len
            .checked_add(4)
            .filter(|len| *len <= bytes.len())
            .ok_or(SnapshotError::Truncated("checksum"))?;
        check_crc(bytes, body_len)?;
        if let Some(offset) = bytes[len..].iter().position(|byte| *byte != 0) {
            return Err(corrupt(format!(
                "a non-zero byte at offset {} in the padding after the snapshot",
                len + offset
            )));
        }
        Ok((store, len))
    }

    /// Reads the structure that starts `bytes` (magic included, checked by
    /// the caller) and returns the store and how many bytes it took; the
    /// checksum is the caller's.
    fn decode(bytes: &[u8], config: StoreConfig) -> Result<(Store, usize), SnapshotError> {
        let mut input = Reader {
            rest: &bytes[MAGIC.len()..],
        };
        let version = input.u32("format version")?;
        if version != FORMAT_VERSION {
            return Err(SnapshotError::UnsupportedVersion(version));
        }
        let mut store = Store::new(config);
        store.last_applied = input.u64("last applied index")?;
        store.current_revision = input.i64("current revision")?;
        store.compact_revision = input.i64("compact revision")?;
        if store.current_revision < 1
            || store.compact_revision < -1
            || store.compact_revision > store.current_revision
        {
            return Err(corrupt(format!(
                "revisions out of order: current {}, compact {}",
                store.current_revision, store.compact_revision
            )));
        }
        store.leases = read_leases(&mut input)?;
        store.keys = read_keys(&mut input, store.current_revision)?;
        let consumed = bytes.len() - input.rest.len();
        store.rebuild_derived()?;
        Ok((store, consumed))
    }

    /// Rebuilds lease key sets and the revision log from the histories.
    fn rebuild_derived(&mut self) -> Result<(), SnapshotError> {
        let mut changes: Vec<Change> = Vec::new();
        for (slot, key, history) in self.keys.iter() {
            let latest = history.latest();
            if latest.is_live() && latest.lease != 0 {
                let lease = self.leases.get_mut(&latest.lease).ok_or_else(|| {
                    corrupt(format!(
                        "key {key:?} is attached to missing lease {}",
                        latest.lease
                    ))
                })?;
                lease.keys.insert(key.clone());
            }
            for version in &history.versions {
                if version.main >= self.compact_revision {
                    changes.push(Change {
                        main: version.main,
                        sub: version.sub,
                        slot,
                    });
                }
            }
        }
        changes.sort_unstable_by_key(|change| (change.main, change.sub));
        if changes
            .windows(2)
            .any(|pair| (pair[0].main, pair[0].sub) == (pair[1].main, pair[1].sub))
        {
            return Err(corrupt("two changes share one revision".to_string()));
        }
        self.changes = VecDeque::from(changes);
        Ok(())
    }
}

/// A put or a delete of one key as a store records it: an etcd backup's `key` bucket holds one
/// per change. What [`Store::import`] takes and [`StoreSnapshot::records`] gives.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedChange {
    pub key: Bytes,
    pub main: i64,
    pub sub: u32,
    /// What was put; `None` for a delete.
    pub put: Option<RecordedPut>,
}

/// The key-value pair a put left (etcd's `mvccpb.KeyValue` without the key and revision).
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedPut {
    pub create_revision: i64,
    pub version: i64,
    pub lease: i64,
    pub value: Bytes,
}

/// A store's state as records, in the terms of etcd's backend (an etcd backup holds these):
/// everything [`Store::import`] builds a store from, and [`StoreSnapshot::records`] gives.
#[derive(Debug, Clone, Default)]
pub struct StoreRecords {
    /// The Raft index the store had applied (etcd's consistent index).
    pub last_applied: u64,
    /// The revision the store is at: at least every change's.
    pub current_revision: i64,
    /// The revision of the last finished compaction (-1 when none): the changes hold no history
    /// below it that a read could need.
    pub compact_revision: i64,
    /// A compaction that was started but may not have finished (etcd's scheduled compact
    /// revision); done during the import when above `compact_revision`.
    pub scheduled_compact_revision: i64,
    /// `(id, ttl_secs, remaining_ttl_secs)`, in any order ([`StoreSnapshot::records`]: by ID).
    pub leases: Vec<(i64, i64, i64)>,
    /// In any order ([`StoreSnapshot::records`]: by revision, as etcd's `key` bucket).
    pub changes: Vec<RecordedChange>,
}

impl StoreSnapshot {
    /// The state as records: every version of every key kept since the compaction, in
    /// revision order, and the leases. `Store::import` of them gives the same store.
    pub fn records(&self) -> StoreRecords {
        let mut changes: Vec<RecordedChange> = self
            .keys
            .iter()
            .flat_map(|slot| {
                slot.history.versions.iter().map(|version| RecordedChange {
                    key: slot.key.clone(),
                    main: version.main,
                    sub: version.sub,
                    put: version.is_live().then(|| RecordedPut {
                        create_revision: version.create_revision,
                        version: version.version,
                        lease: version.lease,
                        value: version.value.clone(),
                    }),
                })
            })
            .collect();
        changes.sort_unstable_by_key(|change| (change.main, change.sub));
        StoreRecords {
            last_applied: self.last_applied,
            current_revision: self.current_revision,
            compact_revision: self.compact_revision,
            scheduled_compact_revision: self.compact_revision,
            leases: self.leases.clone(),
            changes,
        }
    }
}

impl Store {
    /// Builds a store from another store's records (an etcd backup: see the server's
    /// `etcd_backup`), with the checks a snapshot's contents get: ordered, well-formed
    /// versions, one change per revision, leases that exist for the keys that name them. The
    /// store's applied index is the records'.
    pub fn import(state: StoreRecords, config: StoreConfig) -> Result<Store, SnapshotError> {
        let mut store = Store::new(config);
        store.last_applied = state.last_applied;
        store.current_revision = state.current_revision;
        store.compact_revision = state.compact_revision;
        if store.current_revision < 1
            || store.compact_revision < -1
            || store.compact_revision > store.current_revision
            || state.scheduled_compact_revision > store.current_revision
        {
            return Err(corrupt(format!(
                "revisions out of order: current {}, compact {}, scheduled compact {}",
                store.current_revision, store.compact_revision, state.scheduled_compact_revision
            )));
        }
        let mut leases = state.leases;
        leases.sort_unstable();
        for (id, ttl_secs, remaining_ttl_secs) in leases {
            let lease = Lease {
                ttl_secs,
                remaining_ttl_secs,
                keys: BTreeSet::new(),
            };
            if id == 0 || store.leases.insert(id, lease).is_some() {
                return Err(corrupt(format!("lease id {id} is zero or twice")));
            }
        }
        let mut changes = state.changes;
        changes.sort_unstable_by(|a, b| (&a.key, a.main, a.sub).cmp(&(&b.key, b.main, b.sub)));
        let mut changes = changes.into_iter().peekable();
        while let Some(first) = changes.next() {
            let key = first.key.clone();
            if key.is_empty() {
                return Err(corrupt("a change of an empty key".to_string()));
            }
            let mut versions: Vec<Version> = Vec::new();
            let mut next = Some(first);
            while let Some(change) = next {
                let entry = match change.put {
                    Some(put) => Version {
                        main: change.main,
                        sub: change.sub,
                        create_revision: put.create_revision,
                        version: put.version,
                        lease: put.lease,
                        value: put.value,
                        owned: true,
                    },
                    None => Version::tombstone(change.main, change.sub),
                };
                check_version(&versions, &entry, store.current_revision, &key)?;
                versions.push(entry);
                next = changes.next_if(|change| change.key == key);
            }
            store.keys.insert(key, KeyHistory { versions });
        }
        store.rebuild_derived()?;
        if state.scheduled_compact_revision > store.compact_revision {
            store
                .compact(state.scheduled_compact_revision)
                .map_err(|error| corrupt(format!("finishing the compaction: {error}")))?;
        }
        Ok(store)
    }
}

fn corrupt(message: String) -> SnapshotError {
    SnapshotError::Corrupt(message)
}

fn read_leases(input: &mut Reader<'_>) -> Result<BTreeMap<i64, Lease>, SnapshotError> {
    let count = input.u64("lease count")?;
    let mut leases = BTreeMap::new();
    let mut previous: Option<i64> = None;
    for _ in 0..count {
        let id = input.i64("lease id")?;
        let ttl_secs = input.i64("lease ttl")?;
        let remaining_ttl_secs = input.i64("lease remaining ttl")?;
        if id == 0 || previous.is_some_and(|previous| previous >= id) {
            return Err(corrupt(format!("lease id {id} is zero or out of order")));
        }
        previous = Some(id);
        leases.insert(
            id,
            Lease {
                ttl_secs,
                remaining_ttl_secs,
                keys: BTreeSet::new(),
            },
        );
    }
    Ok(leases)
}

fn read_keys(input: &mut Reader<'_>, current_revision: i64) -> Result<KeyIndex, SnapshotError> {
    let count = input.u64("key count")?;
    let mut keys = KeyIndex::default();
    let mut previous: Option<Bytes> = None;
    for _ in 0..count {
        let key_len = input.len("key length")?;
        let key = Bytes::copy_from_slice(input.take(key_len, "key")?);
        if key.is_empty() || previous.as_ref().is_some_and(|previous| *previous >= key) {
            return Err(corrupt(format!("key {key:?} is empty or out of order")));
        }
        let versions = read_versions(input, current_revision, &key)?;
        previous = Some(key.clone());
        keys.insert(key, KeyHistory { versions });
    }
    Ok(keys)
}

fn read_versions(
    input: &mut Reader<'_>,
    current_revision: i64,
    key: &Bytes,
) -> Result<Vec<Version>, SnapshotError> {
    let count = input.len("version count")?;
    if count == 0 {
        return Err(corrupt(format!("key {key:?} has no versions")));
    }
    let mut versions: Vec<Version> = Vec::new();
    for _ in 0..count {
        let main = input.i64("revision")?;
        let sub = input.u32("sub-revision")?;
        let create_revision = input.i64("create revision")?;
        let version = input.i64("version")?;
        let lease = input.i64("lease")?;
        let value_len = input.len("value length")?;
        let value = Bytes::copy_from_slice(input.take(value_len, "value")?);
        let entry = Version {
            main,
            sub,
            create_revision,
            version,
            lease,
            value,
            owned: true,
        };
        check_version(&versions, &entry, current_revision, key)?;
        versions.push(entry);
    }
    Ok(versions)
}

/// Whether `entry` may follow `versions` in `key`'s history in a store at `current_revision`.
fn check_version(
    versions: &[Version],
    entry: &Version,
    current_revision: i64,
    key: &Bytes,
) -> Result<(), SnapshotError> {
    let (main, sub) = entry.revision();
    let ordered = versions
        .last()
        .is_none_or(|last| last.revision() < entry.revision());
    let tombstone_ok =
        entry.is_live() || (entry.version == 0 && entry.lease == 0 && entry.value.is_empty());
    let live_ok = !entry.is_live() || (entry.version >= 1 && entry.create_revision <= main);
    if main < 1 || main > current_revision || !ordered || !tombstone_ok || !live_ok {
        return Err(corrupt(format!(
            "key {key:?} has an invalid version at revision {main}.{sub}"
        )));
    }
    Ok(())
}

fn check_magic(bytes: &[u8]) -> Result<(), SnapshotError> {
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(SnapshotError::BadMagic);
    }
    Ok(())
}

/// Checks the CRC32C stored in the four bytes after `bytes[..body_len]`.
fn check_crc(bytes: &[u8], body_len: usize) -> Result<(), SnapshotError> {
    let mut crc_bytes = [0u8; 4];
    crc_bytes.copy_from_slice(&bytes[body_len..body_len + 4]);
    let stored = u32::from_le_bytes(crc_bytes);
    let computed = crc32c::crc32c(&bytes[..body_len]);
    if stored != computed {
        return Err(SnapshotError::Checksum { stored, computed });
    }
    Ok(())
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize, what: &'static str) -> Result<&'a [u8], SnapshotError> {
        if self.rest.len() < len {
            return Err(SnapshotError::Truncated(what));
        }
        let (taken, rest) = self.rest.split_at(len);
        self.rest = rest;
        Ok(taken)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], SnapshotError> {
        let mut array = [0u8; N];
        array.copy_from_slice(self.take(N, what)?);
        Ok(array)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, SnapshotError> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, SnapshotError> {
        self.array(what).map(u64::from_le_bytes)
    }

    fn i64(&mut self, what: &'static str) -> Result<i64, SnapshotError> {
        self.array(what).map(i64::from_le_bytes)
    }

    fn len(&mut self, what: &'static str) -> Result<usize, SnapshotError> {
        let len = self.u32(what)?;
        usize::try_from(len).map_err(|_| SnapshotError::Truncated(what))
    }
}
