//! Per-key history: the versions of one key, oldest first.
//!
//! This plays the role of etcd's `keyIndex` and the bolt `key` bucket at
//! once: each entry holds the revision of a change and, for a put, the value
//! (a shared `Bytes`, never copied) and metadata. A delete is a tombstone
//! entry (`create_revision == 0`), so a key's generations are the runs of
//! puts between tombstones.

use ballot_proto::mvccpb::KeyValue;
use bytes::Bytes;

/// One change of a key: a put (live) or a delete (tombstone).
#[derive(Debug, Clone)]
pub(crate) struct Version {
    /// Main revision of the change.
    pub main: i64,
    /// Position of the change inside its revision (etcd's sub-revision).
    pub sub: u32,
    /// Revision that created the key's current generation; 0 for a tombstone.
    pub create_revision: i64,
    /// Number of puts in this generation up to this one; 0 for a tombstone.
    pub version: i64,
    /// Attached lease; 0 for none (and for tombstones).
    pub lease: i64,
    /// The value; empty for tombstones.
    pub value: Bytes,
    /// Whether `value` is an allocation of its own. A put stores the request's value as is: a
    /// slice of the buffer the request arrived in (a peer frame or an HTTP/2 read buffer,
    /// holding many requests), which it keeps alive. The compaction that first finds this
    /// version still needed copies the value out (`KeyHistory::compact`), so a long-lived value
    /// never pins a buffer, and the many values overwritten before a compaction are never
    /// copied.
    pub owned: bool,
}

/// Equal when they describe the same change; where the value's bytes live (`owned`) is not
/// part of the state (a member restored from a snapshot owns every value, its peers do not).
impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.main == other.main
            && self.sub == other.sub
            && self.create_revision == other.create_revision
            && self.version == other.version
            && self.lease == other.lease
            && self.value == other.value
    }
}

impl Version {
    pub(crate) fn tombstone(main: i64, sub: u32) -> Version {
        Version {
            main,
            sub,
            create_revision: 0,
            version: 0,
            lease: 0,
            value: Bytes::new(),
            owned: true,
        }
    }

    /// Whether this entry is a put (the key exists after it).
    pub(crate) fn is_live(&self) -> bool {
        self.create_revision != 0
    }

    pub(crate) fn revision(&self) -> (i64, u32) {
        (self.main, self.sub)
    }

    /// The client-facing pair of a live version.
    pub(crate) fn key_value(&self, key: &Bytes) -> KeyValue {
        KeyValue {
            key: key.clone(),
            create_revision: self.create_revision,
            mod_revision: self.main,
            version: self.version,
            value: self.value.clone(),
            lease: self.lease,
        }
    }
}

/// The versions of one key, ordered by `(main, sub)` ascending.
// Invariant: `versions` is never empty and strictly ascending by revision.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct KeyHistory {
    pub versions: Vec<Version>,
}

impl KeyHistory {
    pub(crate) fn new(first: Version) -> KeyHistory {
        KeyHistory {
            versions: vec![first],
        }
    }

    pub(crate) fn latest(&self) -> &Version {
        match self.versions.last() {
            Some(version) => version,
            None => panic!("key history must hold at least one version, found none"),
        }
    }

    /// The newest entry with main revision `<= revision`, live or not.
    pub(crate) fn at(&self, revision: i64) -> Option<&Version> {
        let latest = self.latest();
        if latest.main <= revision {
            return Some(latest);
        }
        let after = self.versions.partition_point(|v| v.main <= revision);
        after.checked_sub(1).map(|index| &self.versions[index])
    }

    /// The live version visible at `revision` (`None`: the newest, including
    /// changes of a transaction in progress).
    pub(crate) fn visible(&self, revision: Option<i64>) -> Option<&Version> {
        let version = match revision {
            None => self.latest(),
            Some(revision) => self.at(revision)?,
        };
        version.is_live().then_some(version)
    }

    /// Index of the entry with exactly this revision.
    pub(crate) fn position(&self, main: i64, sub: u32) -> Option<usize> {
        self.versions
            .binary_search_by(|v| v.revision().cmp(&(main, sub)))
            .ok()
    }

    pub(crate) fn push(&mut self, version: Version) {
        debug_assert!(
            version.revision() > self.latest().revision(),
            "history must grow in revision order: pushing {:?} after {:?}",
            version.revision(),
            self.latest().revision()
        );
        self.versions.push(version);
    }

    /// Drops what a compaction at `revision` makes unreachable: every entry
    /// below `revision` except the newest one below it when it is live (that
    /// one is what a read at `revision` sees, or the `prev_kv` of the first
    /// change at `revision`). Entries at `revision` and above stay, so a
    /// watcher starting exactly at the compact revision still gets every
    /// event of it. Returns whether the history became empty.
    pub(crate) fn compact(&mut self, revision: i64) -> bool {
        let below = self.versions.partition_point(|v| v.main < revision);
        if below == 0 {
            return false;
        }
        // A key deleted exactly at `revision` keeps nothing from before it: the delete event
        // then goes out without its previous value (etcd drops the event altogether), and
        // compacting at the revision of a deletion frees what was deleted, which recovering
        // from the space quota relies on (compact, then defragment).
        let deleted_at_revision = self
            .versions
            .get(below)
            .is_some_and(|next| next.main == revision && !next.is_live());
        let keep_newest_below = self.versions[below - 1].is_live() && !deleted_at_revision;
        let drop = if keep_newest_below { below - 1 } else { below };
        self.versions.drain(..drop);
        if keep_newest_below {
            // The versions at or above `revision` are still in the change log and reach the
            // next compaction; this one does not (see `Version::owned`).
            let kept = &mut self.versions[0];
            if !kept.owned {
                kept.value = Bytes::copy_from_slice(&kept.value);
                kept.owned = true;
            }
        }
        self.versions.is_empty()
    }
}
