//! Reads: Range (etcd `applierV3backend.Range` semantics) and the history
//! walk watchers catch up from.

use std::cmp::Ordering;

use ballot_proto::etcdserverpb::{
    RangeRequest, RangeResponse,
    range_request::{SortOrder, SortTarget},
};
use ballot_proto::mvccpb::{Event, KeyValue, event::EventType};
use bytes::Bytes;

use crate::error::MvccError;
use crate::history::{KeyHistory, Version};
use crate::keys::KeyRange;
use crate::store::{Store, header};
use crate::validate;

/// A run of history returned by [`Store::events_since`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EventsSince {
    /// Events in revision order (sub-revision order inside a revision), each
    /// with `prev_kv` set when the key existed before the change.
    pub events: Vec<Event>,
    /// First revision not covered: continue from here.
    pub next_revision: i64,
}

impl Store {
    /// Serves a Range request at the current state. Errors carry etcd's
    /// strings; `header.revision` is the current revision even for reads of
    /// an older revision, as in etcd.
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, MvccError> {
        validate::check_range(req)?;
        self.range_at(req, self.current_revision)
    }

    /// Resolves a request's `revision` against the committed state: `None`
    /// reads the newest versions (which inside a Txn include its own earlier
    /// writes), `Some(r)` reads history at `r`.
    pub(crate) fn read_revision(&self, requested: i64) -> Result<Option<i64>, MvccError> {
        // Same order of checks as etcd's rangeKeys: future first, then a
        // non-positive revision means "current", then compaction.
        if requested > self.current_revision {
            return Err(MvccError::FutureRevision);
        }
        if requested <= 0 {
            return Ok(None);
        }
        if requested < self.compact_revision {
            return Err(MvccError::Compacted);
        }
        Ok(Some(requested))
    }

    /// Range with a given header revision (a Txn's view may be one ahead).
    pub(crate) fn range_at(
        &self,
        req: &RangeRequest,
        header_revision: i64,
    ) -> Result<RangeResponse, MvccError> {
        let read = self.read_revision(req.revision)?;
        let sort_order = SortOrder::try_from(req.sort_order).unwrap_or(SortOrder::None);
        let sort_target = SortTarget::try_from(req.sort_target).unwrap_or(SortTarget::Key);
        let filtered = req.min_mod_revision != 0
            || req.max_mod_revision != 0
            || req.min_create_revision != 0
            || req.max_create_revision != 0;
        // etcd fetches everything when it must sort or filter and applies the
        // limit afterwards; otherwise it fetches one more than the limit to
        // learn `more`. (With order NONE and a non-KEY target it sorts only
        // the fetched limit + 1 keys; that quirk is kept.)
        let fetch_all = sort_order != SortOrder::None || filtered;
        let fetch_max = match (req.limit > 0, fetch_all) {
            (true, false) => usize::try_from(req.limit)
                .unwrap_or(usize::MAX)
                .saturating_add(1),
            _ => usize::MAX,
        };
        let fetch_max = if req.count_only { 0 } else { fetch_max };
        // etcd drops values after sorting, so a keys-only read sorted by
        // value still sorts by the values.
        let values_needed = !req.keys_only || sort_target == SortTarget::Value;
        let range = KeyRange::new(&req.key, &req.range_end);
        let mut kvs: Vec<KeyValue> = Vec::new();
        let mut count: i64 = 0;
        self.keys
            .visit(&range, |key: &Bytes, history: &KeyHistory| {
                if let Some(version) = history.visible(read) {
                    count += 1;
                    if kvs.len() < fetch_max {
                        kvs.push(client_kv(key, version, !values_needed));
                    }
                }
                true
            });
        if filtered {
            kvs.retain(|kv| passes_filters(req, kv));
        }
        sort_kvs(&mut kvs, sort_order, sort_target);
        let mut more = false;
        if let Ok(limit) = usize::try_from(req.limit)
            && limit > 0
            && kvs.len() > limit
        {
            kvs.truncate(limit);
            more = true;
        }
        if req.keys_only && values_needed {
            for kv in &mut kvs {
                kv.value = Bytes::new();
            }
        }
        Ok(RangeResponse {
            header: header(header_revision),
            kvs,
            more,
            count,
        })
    }

    /// Events of keys in `key`/`range_end` (etcd watch conventions: an empty
    /// `range_end` is one key, `"\0"` every key from `key` on) with revision
    /// in `[start_revision, end_revision]`, at most about `max_events`: the
    /// walk stops at a revision boundary once it has that many, so the
    /// events of one revision are never split (a single revision may exceed
    /// the limit). Refused with [`MvccError::Compacted`] below the compact
    /// revision.
    pub fn events_since(
        &self,
        start_revision: i64,
        end_revision: i64,
        key: &[u8],
        range_end: &[u8],
        max_events: usize,
    ) -> Result<EventsSince, MvccError> {
        if start_revision < self.compact_revision {
            return Err(MvccError::Compacted);
        }
        let start_revision = start_revision.max(1);
        let range = KeyRange::new(key, range_end);
        let first = self
            .changes
            .partition_point(|change| change.main < start_revision);
        let mut events = Vec::new();
        let mut next_revision = end_revision.saturating_add(1).max(start_revision);
        for change in self.changes.range(first..) {
            if change.main > end_revision {
                break;
            }
            if events.len() >= max_events
                && events
                    .last()
                    .is_some_and(|last: &Event| event_revision(last) != change.main)
            {
                next_revision = change.main;
                break;
            }
            let entry = self.keys.slot(change.slot);
            if range.contains(&entry.key) {
                events.push(event_of(
                    &entry.key,
                    &entry.history,
                    change.main,
                    change.sub,
                ));
            }
        }
        Ok(EventsSince {
            events,
            next_revision,
        })
    }
}

/// The event of the change at `(main, sub)` of `key`.
fn event_of(key: &Bytes, history: &KeyHistory, main: i64, sub: u32) -> Event {
    let Some(position) = history.position(main, sub) else {
        panic!("revision log names {key:?} at {main}.{sub} but its history lacks it");
    };
    let version = &history.versions[position];
    let prev_kv = position
        .checked_sub(1)
        .map(|before| &history.versions[before])
        .filter(|before| before.is_live())
        .map(|before| before.key_value(key));
    change_event(key, version, prev_kv)
}

/// The watch event for one history entry.
pub(crate) fn change_event(key: &Bytes, version: &Version, prev_kv: Option<KeyValue>) -> Event {
    if version.is_live() {
        Event {
            r#type: EventType::Put as i32,
            kv: Some(version.key_value(key)),
            prev_kv,
        }
    } else {
        // etcd's DELETE events carry only the key and the deletion revision.
        Event {
            r#type: EventType::Delete as i32,
            kv: Some(KeyValue {
                key: key.clone(),
                mod_revision: version.main,
                ..KeyValue::default()
            }),
            prev_kv,
        }
    }
}

pub(crate) fn event_revision(event: &Event) -> i64 {
    event.kv.as_ref().map_or(0, |kv| kv.mod_revision)
}

fn client_kv(key: &Bytes, version: &Version, keys_only: bool) -> KeyValue {
    KeyValue {
        key: key.clone(),
        create_revision: version.create_revision,
        mod_revision: version.main,
        version: version.version,
        value: if keys_only {
            Bytes::new()
        } else {
            version.value.clone()
        },
        lease: version.lease,
    }
}

fn passes_filters(req: &RangeRequest, kv: &KeyValue) -> bool {
    !(req.max_mod_revision != 0 && kv.mod_revision > req.max_mod_revision
        || req.min_mod_revision != 0 && kv.mod_revision < req.min_mod_revision
        || req.max_create_revision != 0 && kv.create_revision > req.max_create_revision
        || req.min_create_revision != 0 && kv.create_revision < req.min_create_revision)
}

/// Sorts as etcd does, with one difference: ties keep key order (a stable
/// sort), where etcd's unstable sort leaves their order unspecified.
fn sort_kvs(kvs: &mut [KeyValue], order: SortOrder, target: SortTarget) {
    // etcd: a non-KEY target with order NONE sorts ascending.
    let order = match (order, target) {
        (SortOrder::None, SortTarget::Key) => return,
        (SortOrder::None, _) => SortOrder::Ascend,
        (order, _) => order,
    };
    if order == SortOrder::Ascend && target == SortTarget::Key {
        return; // Already in key order.
    }
    let compare = |a: &KeyValue, b: &KeyValue| -> Ordering {
        match target {
            SortTarget::Key => a.key.cmp(&b.key),
            SortTarget::Version => a.version.cmp(&b.version),
            SortTarget::Create => a.create_revision.cmp(&b.create_revision),
            SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
            SortTarget::Value => a.value.cmp(&b.value),
        }
    };
    match order {
        SortOrder::Descend => kvs.sort_by(|a, b| compare(b, a)),
        _ => kvs.sort_by(compare),
    }
}
