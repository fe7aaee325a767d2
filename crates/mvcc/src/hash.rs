//! HashKV: a checksum of the key-value history, for comparing replicas.
//!
//! Computed as etcd 3.4's `HashByRev` computes it over its bolt `key`
//! bucket, so the numbers are comparable with etcd's for the same history:
//! CRC32C (Castagnoli) over the bucket name `"key"`, then, in revision order,
//! each revision's 17-byte bucket key (main and sub big-endian around `'_'`,
//! plus `'t'` for a tombstone) and its value (the protobuf `KeyValue`; a
//! tombstone's holds only the key). Revisions above the compact revision up
//! to the hashed one all count; at or below the compact revision only those
//! a compaction keeps do (each key's newest live version).

use ballot_proto::mvccpb::KeyValue;
use bytes::Bytes;
use prost::Message;

use crate::error::MvccError;
use crate::history::{KeyHistory, Version};
use crate::snapshot::StoreSnapshot;
use crate::store::Store;

/// etcd's key for a revision in its bolt `key` bucket: main and sub revision big-endian around
/// `'_'` (17 bytes), plus `'t'` when the revision deletes the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RevisionKey {
    bytes: [u8; 18],
    len: usize,
}

impl RevisionKey {
    pub fn new(main: i64, sub: i64, tombstone: bool) -> Self {
        let mut bytes = [0u8; 18];
        bytes[..8].copy_from_slice(&main.to_be_bytes());
        bytes[8] = b'_';
        bytes[9..17].copy_from_slice(&sub.to_be_bytes());
        bytes[17] = b't';
        let len = if tombstone { 18 } else { 17 };
        RevisionKey { bytes, len }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// Answer of [`Store::hash_kv`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashKv {
    /// The checksum.
    pub hash: u32,
    /// The store's compact revision (-1 when never compacted).
    pub compact_revision: i64,
    /// The revision hashed up to (the current one when 0 was asked).
    pub hash_revision: i64,
    /// The store's current revision, for the response header.
    pub current_revision: i64,
}

impl Store {
    /// etcd `HashKV(revision)`: 0 hashes up to the current revision; a
    /// revision at or below the compact revision is refused as compacted,
    /// one above the current revision as a future revision.
    pub fn hash_kv(&self, revision: i64) -> Result<HashKv, MvccError> {
        hash_histories(
            || self.keys.iter().map(|(_, key, history)| (key, history)),
            self.compact_revision,
            self.current_revision,
            revision,
        )
    }
}

impl StoreSnapshot {
    /// [`Store::hash_kv`] of the store this snapshot was taken of, as it
    /// was then: a caller hashes a large store from a snapshot, outside the
    /// store's lock, so writes go on meanwhile.
    pub fn hash_kv(&self, revision: i64) -> Result<HashKv, MvccError> {
        hash_histories(
            || self.keys().map(|slot| (&slot.key, &slot.history)),
            self.compact_revision(),
            self.current_revision(),
            revision,
        )
    }
}

/// HashKV over `histories` (each key with its history, in key order; the
/// function is called once per pass over them).
fn hash_histories<'a, I>(
    histories: impl Fn() -> I,
    compact: i64,
    current_revision: i64,
    revision: i64,
) -> Result<HashKv, MvccError>
where
    I: Iterator<Item = (&'a Bytes, &'a KeyHistory)>,
{
    if revision > 0 && revision <= compact {
        return Err(MvccError::Compacted);
    }
    if revision > current_revision {
        return Err(MvccError::FutureRevision);
    }
    let hash_revision = if revision <= 0 {
        current_revision
    } else {
        revision
    };
    // etcd includes an old revision only if a compaction at the hashed
    // revision would keep it, unless no key at all is live there, in
    // which case every stored old revision counts.
    let any_live_at_hash =
        histories().any(|(_, history)| history.visible(Some(hash_revision)).is_some());
    let mut included: Vec<(&Bytes, &Version)> = Vec::new();
    for (key, history) in histories() {
        for version in &history.versions {
            if version.main > hash_revision {
                break;
            }
            let counts = version.main > compact
                || if any_live_at_hash {
                    is_kept(history, version, hash_revision)
                } else {
                    is_kept(history, version, compact)
                };
            if counts {
                included.push((key, version));
            }
        }
    }
    included.sort_unstable_by_key(|(_, version)| version.revision());
    let mut crc = crc32c::crc32c(b"key");
    let mut value = Vec::new();
    for (key, version) in included {
        let bucket_key = RevisionKey::new(version.main, i64::from(version.sub), !version.is_live());
        crc = crc32c::crc32c_append(crc, bucket_key.as_bytes());
        value.clear();
        let stored = if version.is_live() {
            version.key_value(key)
        } else {
            KeyValue {
                key: key.clone(),
                ..KeyValue::default()
            }
        };
        stored
            .encode(&mut value)
            .unwrap_or_else(|error| panic!("encoding into a Vec cannot fail: {error}"));
        crc = crc32c::crc32c_append(crc, &value);
    }
    Ok(HashKv {
        hash: crc,
        compact_revision: compact,
        hash_revision,
        current_revision,
    })
}

/// Whether a compaction at `revision` keeps `version`: it is its key's
/// newest entry at or below `revision`, and live.
fn is_kept(history: &KeyHistory, version: &Version, revision: i64) -> bool {
    version.is_live()
        && history
            .at(revision)
            .is_some_and(|kept| kept.revision() == version.revision())
}
