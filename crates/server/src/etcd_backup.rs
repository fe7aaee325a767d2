//! Importing an etcd backup: the bbolt file `etcdctl snapshot save` writes when it backs up an
//! etcd member (etcd 3.4 and 3.5 lay it out alike). `ballot snapshot status` and `ballot
//! snapshot restore` take one as they take a Ballot backup, so an etcd cluster's data moves to
//! Ballot with etcd's own backup procedure.
//!
//! What is carried over, from etcd's buckets:
//!
//! - `key`: every change etcd kept (its history back to its compaction), keyed by revision
//!   (`main` and `sub`, 8 bytes big-endian each, joined by `_`; a trailing `t` marks a delete),
//!   each value an `mvccpb.KeyValue`. Revisions, create revisions, versions and leases stay
//!   as they were, so a client sees the same revisions and `etcdctl endpoint hashkv` gives
//!   the same hash (`ballot snapshot status` prints it).
//! - `lease`: each lease (`leasepb.Lease`: ID, TTL, remaining TTL), with the keys attached.
//! - `meta`: the compaction etcd finished (`finishedCompactRev`) and the one it scheduled
//!   (`scheduledCompactRev`; finished here if etcd had not).
//!
//! Not carried over: the members (the restored cluster is the one `--initial-cluster` names, as
//! with `etcdctl snapshot restore`), alarms, and users and roles (Ballot has no
//! authentication; the number found is reported).

use ballot_mvcc::{RecordedChange, RecordedPut, RevisionKey, Store, StoreConfig, StoreRecords};
use ballot_proto::mvccpb::KeyValue;
use bytes::Bytes;
use prost::Message as _;

use crate::bbolt::{BoltError, BoltFile, BucketSource, Layout};

/// An etcd backup, imported.
pub struct EtcdBackup {
    pub store: Store,
    /// Users in the backup (`authUsers`), which are not imported.
    pub users: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum EtcdBackupError {
    #[error(transparent)]
    Bolt(#[from] BoltError),
    #[error("{0}")]
    Content(String),
}

/// etcd's `leasepb.Lease`.
#[derive(Clone, PartialEq, prost::Message)]
struct LeaseRecord {
    #[prost(int64, tag = "1")]
    id: i64,
    #[prost(int64, tag = "2")]
    ttl: i64,
    #[prost(int64, tag = "3")]
    remaining_ttl: i64,
}

/// Whether `data` (a backup without its SHA-256) is an etcd backup.
pub fn is_etcd_backup(data: &[u8]) -> bool {
    BoltFile::looks_like_bolt(data)
}

/// Builds the store an etcd backup holds.
pub fn import(data: &[u8], config: StoreConfig) -> Result<EtcdBackup, EtcdBackupError> {
    let content = |message: String| EtcdBackupError::Content(message);
    let file = BoltFile::open(data)?;
    let keys = file
        .bucket(b"key")?
        .ok_or_else(|| content("no `key` bucket: not an etcd v3 backend".into()))?;
    let mut changes = Vec::new();
    keys.for_each(|entry| {
        changes.push(change(entry.key, entry.value).map_err(|message| {
            BoltError::Damaged(format!(
                "the change at {}: {message}",
                String::from_utf8_lossy(entry.key).escape_debug()
            ))
        })?);
        Ok(())
    })?;

    let mut leases = Vec::new();
    if let Some(bucket) = file.bucket(b"lease")? {
        bucket.for_each(|entry| {
            let lease = LeaseRecord::decode(entry.value)
                .map_err(|error| BoltError::Damaged(format!("a lease record: {error}")))?;
            leases.push((lease.id, lease.ttl, lease.remaining_ttl));
            Ok(())
        })?;
    }

    let (mut finished, mut scheduled, mut consistent_index) = (-1, -1, 0);
    if let Some(meta) = file.bucket(b"meta")? {
        meta.for_each(|entry| {
            let target = match entry.key {
                b"finishedCompactRev" => &mut finished,
                b"scheduledCompactRev" => &mut scheduled,
                b"consistent_index" => {
                    let bytes: [u8; 8] = entry.value.try_into().map_err(|_| {
                        BoltError::Damaged("the consistent index is not 8 bytes".into())
                    })?;
                    consistent_index = u64::from_be_bytes(bytes);
                    return Ok(());
                }
                _ => return Ok(()),
            };
            *target = revision(entry.value)
                .map(|(main, _, _)| main)
                .map_err(|message| {
                    BoltError::Damaged(format!("the compact revision: {message}"))
                })?;
            Ok(())
        })?;
    }

    let mut users = 0;
    if let Some(bucket) = file.bucket(b"authUsers")? {
        bucket.for_each(|_| {
            users += 1;
            Ok(())
        })?;
    }

    let newest = changes.iter().map(|change| change.main).max().unwrap_or(1);
    let state = StoreRecords {
        last_applied: consistent_index,
        current_revision: newest.max(finished).max(scheduled).max(1),
        compact_revision: finished,
        scheduled_compact_revision: scheduled,
        leases,
        changes,
    };
    let store = Store::import(state, config).map_err(|error| content(error.to_string()))?;
    Ok(EtcdBackup { store, users })
}

/// `records` as etcd's backend holds them: a bbolt file with the buckets `key` (every change
/// by revision), `lease` and `meta` (`consistent_index`, and the compact revision as both
/// `finishedCompactRev` and `scheduledCompactRev` once there was a compaction). etcd's tools
/// read it as a backup of an etcd member (`etcdctl snapshot status` and `snapshot restore`),
/// and [`import`] reads it back into the same store.
///
/// Its size is known before it is written, and it is written a page at a time: the changes are
/// encoded as each page is filled, so a backup never holds the store's data a second time in
/// memory (the records share keys and values with the store).
pub struct Export {
    records: StoreRecords,
    leases: Vec<crate::bbolt::KeyValue>,
    meta: Vec<crate::bbolt::KeyValue>,
    layout: Layout,
}

impl Export {
    pub fn new(records: StoreRecords) -> Export {
        let mut leases: Vec<crate::bbolt::KeyValue> = records
            .leases
            .iter()
            .map(|&(id, ttl, remaining_ttl)| {
                let record = LeaseRecord {
                    id,
                    ttl,
                    remaining_ttl,
                };
                ((id as u64).to_be_bytes().to_vec(), record.encode_to_vec())
            })
            .collect();
        leases.sort();
        let mut meta = vec![(
            b"consistent_index".to_vec(),
            records.last_applied.to_be_bytes().to_vec(),
        )];
        if records.compact_revision > 0 {
            let compacted = RevisionKey::new(records.compact_revision, 0, false);
            meta.push((
                b"finishedCompactRev".to_vec(),
                compacted.as_bytes().to_vec(),
            ));
            meta.push((
                b"scheduledCompactRev".to_vec(),
                compacted.as_bytes().to_vec(),
            ));
        }
        let layout = Layout::plan(&buckets(&records.changes, &leases, &meta));
        Export {
            records,
            leases,
            meta,
            layout,
        }
    }

    /// The file's size in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.layout.size_bytes()
    }

    pub fn write_to(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        let buckets = buckets(&self.records.changes, &self.leases, &self.meta);
        self.layout.write_to(&buckets, out)
    }

    /// The file in memory.
    #[cfg(test)]
    fn to_vec(&self) -> Vec<u8> {
        let mut file = Vec::with_capacity(self.layout.size_bytes() as usize);
        self.write_to(&mut file)
            .expect("writing to memory cannot fail");
        file
    }
}

/// The buckets of an etcd backup, in name order.
fn buckets<'a>(
    changes: &'a Vec<RecordedChange>,
    leases: &'a Vec<crate::bbolt::KeyValue>,
    meta: &'a Vec<crate::bbolt::KeyValue>,
) -> [(&'static [u8], &'a dyn BucketSource); 3] {
    [(b"key", changes), (b"lease", leases), (b"meta", meta)]
}

/// The `key` bucket's value of `change`: an `mvccpb.KeyValue` (a delete's holds only the key).
fn key_value(change: &RecordedChange) -> KeyValue {
    match &change.put {
        Some(put) => KeyValue {
            key: change.key.clone(),
            create_revision: put.create_revision,
            mod_revision: change.main,
            version: put.version,
            value: put.value.clone(),
            lease: put.lease,
        },
        None => KeyValue {
            key: change.key.clone(),
            ..KeyValue::default()
        },
    }
}

/// The `key` bucket: each change under its revision key (with `t` for a delete).
impl BucketSource for Vec<RecordedChange> {
    fn entry_count(&self) -> usize {
        Vec::len(self)
    }

    fn entry_len(&self, index: usize) -> (usize, usize) {
        let change = &self[index];
        (
            revision_key(change).as_bytes().len(),
            key_value(change).encoded_len(),
        )
    }

    fn key(&self, index: usize, out: &mut Vec<u8>) {
        out.extend_from_slice(revision_key(&self[index]).as_bytes());
    }

    fn value(&self, index: usize, out: &mut Vec<u8>) {
        key_value(&self[index])
            .encode(out)
            .expect("a Vec grows to take the message");
    }
}

/// etcd's bucket key for a change: its revision, marked when it deletes.
fn revision_key(change: &RecordedChange) -> RevisionKey {
    RevisionKey::new(change.main, i64::from(change.sub), change.put.is_none())
}

/// A `key` bucket entry as a change.
fn change(key: &[u8], value: &[u8]) -> Result<RecordedChange, String> {
    let (main, sub, tombstone) = revision(key)?;
    let sub = u32::try_from(sub).map_err(|_| format!("sub-revision {sub} out of range"))?;
    let kv = KeyValue::decode(value).map_err(|error| format!("not a KeyValue: {error}"))?;
    if kv.key.is_empty() {
        return Err("a change of an empty key".into());
    }
    let put = if tombstone {
        None
    } else {
        if kv.mod_revision != main {
            return Err(format!("its KeyValue says revision {}", kv.mod_revision));
        }
        Some(RecordedPut {
            create_revision: kv.create_revision,
            version: kv.version,
            lease: kv.lease,
            value: Bytes::copy_from_slice(&kv.value),
        })
    };
    Ok(RecordedChange {
        key: Bytes::copy_from_slice(&kv.key),
        main,
        sub,
        put,
    })
}

/// etcd's revision key: `main` (8 bytes big-endian), `_`, `sub` (8 bytes), and `t` for a
/// delete.
fn revision(bytes: &[u8]) -> Result<(i64, i64, bool), String> {
    let tombstone = match bytes.len() {
        17 => false,
        18 if bytes[17] == b't' => true,
        _ => return Err(format!("not a revision ({} bytes)", bytes.len())),
    };
    if bytes[8] != b'_' {
        return Err("not a revision (no `_` between its parts)".into());
    }
    let number = |part: &[u8]| {
        let mut array = [0u8; 8];
        array.copy_from_slice(part);
        i64::from_be_bytes(array)
    };
    Ok((number(&bytes[..8]), number(&bytes[9..17]), tombstone))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exported_store_imports_back_unchanged() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/etcd-3.4-backup.db");
        let bytes = std::fs::read(path).expect("the etcd backup fixture");
        let from_etcd = import(&bytes[..bytes.len() - 32], StoreConfig::default())
            .expect("etcd's backup")
            .store;
        let export = Export::new(from_etcd.snapshot_state().records());
        let exported = export.to_vec();
        assert_eq!(
            exported.len() as u64,
            export.size_bytes(),
            "as long as planned"
        );
        let again = import(&exported, StoreConfig::default())
            .expect("Ballot's export")
            .store;
        assert_eq!(again.snapshot(), from_etcd.snapshot(), "the same state");
        assert_eq!(again.last_applied(), from_etcd.last_applied());
        assert_eq!(again.compact_revision(), 4);
    }

    #[test]
    fn revisions_read_as_etcd_writes_them() {
        let mut key = 7i64.to_be_bytes().to_vec();
        key.push(b'_');
        key.extend(1i64.to_be_bytes());
        assert_eq!(revision(&key), Ok((7, 1, false)));
        key.push(b't');
        assert_eq!(revision(&key), Ok((7, 1, true)));
        key[17] = b'x';
        assert!(revision(&key).is_err());
        assert!(revision(b"short").is_err());
        let mut no_separator = key[..17].to_vec();
        no_separator[8] = b'-';
        assert!(revision(&no_separator).is_err());
    }
}
