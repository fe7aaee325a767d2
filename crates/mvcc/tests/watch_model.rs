//! Property test of the watch hub: random writes, watcher creations,
//! cancels, compactions and polls with tiny queues. Every watcher must
//! receive exactly the events of its range from its start revision (after
//! filters), in order, without duplicates, never splitting a revision across
//! responses — or, when its position was compacted away, a prefix of them
//! followed by a cancel carrying the compact revision.

mod common;

use std::collections::BTreeMap;

use ballot_mvcc::{Command, WatchHub};
use ballot_proto::etcdserverpb::{
    TxnRequest, WatchCreateRequest, WatchResponse, watch_create_request::FilterType,
};
use ballot_proto::mvccpb::{Event, event::EventType};
use common::*;
use proptest::prelude::*;

const KEYS: &[&str] = &["a", "b", "c", "d"];

#[derive(Debug, Clone)]
enum Op {
    Put(usize, u8),
    Delete(usize),
    PutPair(usize, usize),
    Watch {
        key: usize,
        ranged: bool,
        start_back: u8,
        no_put: bool,
        no_delete: bool,
        prev_kv: bool,
    },
    Cancel(u8),
    Compact(u8),
    Poll(u8),
    /// Stop notifying the hub after applies (the store runs ahead of it).
    Hold,
    /// Notify every held revision, in order.
    Flush,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..KEYS.len(), any::<u8>()).prop_map(|(k, v)| Op::Put(k, v)),
        2 => (0..KEYS.len()).prop_map(Op::Delete),
        2 => (0..KEYS.len(), 0..KEYS.len()).prop_map(|(a, b)| Op::PutPair(a, b)),
        2 => (0..KEYS.len(), any::<bool>(), 0u8..8, prop::bool::weighted(0.2),
              prop::bool::weighted(0.2), any::<bool>())
            .prop_map(|(key, ranged, start_back, no_put, no_delete, prev_kv)| Op::Watch {
                key, ranged, start_back, no_put, no_delete, prev_kv,
            }),
        1 => any::<u8>().prop_map(Op::Cancel),
        1 => (0u8..6).prop_map(Op::Compact),
        3 => (1u8..6).prop_map(Op::Poll),
        1 => Just(Op::Hold),
        1 => Just(Op::Flush),
    ]
}

struct WatchSpec {
    key: String,
    ranged: bool,
    start: i64,
    no_put: bool,
    no_delete: bool,
    prev_kv: bool,
}

impl WatchSpec {
    fn wants(&self, event: &Event) -> bool {
        let kv = event.kv.as_ref().expect("event kv");
        let key = String::from_utf8_lossy(&kv.key);
        let in_range = if self.ranged {
            *key >= *self.key
        } else {
            *key == *self.key
        };
        let is_put = event.r#type == EventType::Put as i32;
        in_range
            && kv.mod_revision >= self.start
            && !(is_put && self.no_put || !is_put && self.no_delete)
    }

    fn view(&self, event: &Event) -> Event {
        let mut event = event.clone();
        if !self.prev_kv {
            event.prev_kv = None;
        }
        event
    }
}

fn run(ops: &[Op], capacity: usize) -> Result<(), TestCaseError> {
    let mut node = Node::new();
    let hub = WatchHub::new(node.store.current_revision());
    let stream = hub.open_stream(capacity);
    let mut log: Vec<Event> = Vec::new();
    let mut specs: BTreeMap<i64, WatchSpec> = BTreeMap::new();
    let mut received: Vec<WatchResponse> = Vec::new();
    let mut canceled_by_user: Vec<i64> = Vec::new();
    // Revisions compacted at: a delete exactly there loses its previous value to the
    // compaction, so a watcher that reads it from history afterwards gets it without.
    let mut compacted_at: Vec<i64> = Vec::new();
    let mut holding = false;
    let mut held: Vec<(i64, Vec<Event>)> = Vec::new();
    for op in ops {
        let applied = match op {
            Op::Put(k, v) => Some(node.put(KEYS[*k], &v.to_string())),
            Op::Delete(k) => Some(node.delete(KEYS[*k], "")),
            Op::PutPair(a, b) if a != b => Some(node.apply(Command::Txn(TxnRequest {
                compare: vec![],
                success: vec![op_put(KEYS[*a], "p"), op_put(KEYS[*b], "q")],
                failure: vec![],
            }))),
            Op::Watch {
                key,
                ranged,
                start_back,
                no_put,
                no_delete,
                prev_kv,
            } => {
                let start = if *start_back == 0 {
                    0
                } else {
                    (node.store.current_revision() + 2 - *start_back as i64).max(1)
                };
                let mut filters = Vec::new();
                if *no_put {
                    filters.push(FilterType::Noput as i32);
                }
                if *no_delete {
                    filters.push(FilterType::Nodelete as i32);
                }
                let id = stream.create(&WatchCreateRequest {
                    key: b(KEYS[*key]),
                    range_end: if *ranged { b("\0") } else { b("") },
                    start_revision: start,
                    filters,
                    prev_kv: *prev_kv,
                    ..WatchCreateRequest::default()
                });
                prop_assert!(id >= 0);
                specs.insert(
                    id,
                    WatchSpec {
                        key: KEYS[*key].to_string(),
                        ranged: *ranged,
                        start: if start == 0 {
                            hub.revision() + 1
                        } else {
                            start
                        },
                        no_put: *no_put,
                        no_delete: *no_delete,
                        prev_kv: *prev_kv,
                    },
                );
                None
            }
            Op::Cancel(pick) => {
                if !specs.is_empty() {
                    let id = *specs
                        .keys()
                        .nth(*pick as usize % specs.len())
                        .expect("some");
                    if stream.cancel(id) {
                        canceled_by_user.push(id);
                    }
                }
                None
            }
            Op::Compact(back) => {
                let revision = node.store.current_revision() - *back as i64;
                if revision > node.store.compact_revision() {
                    node.compact(revision);
                    compacted_at.push(revision);
                }
                None
            }
            Op::Poll(n) => {
                for _ in 0..*n {
                    received.extend(stream.poll(&node.store, capacity));
                }
                None
            }
            Op::Hold => {
                holding = true;
                None
            }
            Op::Flush => {
                holding = false;
                for (revision, events) in held.drain(..) {
                    hub.notify(revision, &events);
                }
                None
            }
            Op::PutPair(..) => None,
        };
        if let Some(applied) = applied
            && !applied.events.is_empty()
        {
            log.extend(applied.events.iter().cloned());
            if holding {
                held.push((applied.revision, applied.events));
            } else {
                hub.notify(applied.revision, &applied.events);
            }
        }
    }
    for (revision, events) in held.drain(..) {
        hub.notify(revision, &events);
    }
    for _ in 0..10_000 {
        let batch = stream.poll(&node.store, capacity);
        if batch.is_empty() {
            break;
        }
        received.extend(batch);
    }
    prop_assert!(
        stream.poll(&node.store, capacity).is_empty(),
        "polling must drain"
    );

    for (id, spec) in &specs {
        let responses: Vec<&WatchResponse> =
            received.iter().filter(|r| r.watch_id == *id).collect();
        prop_assert!(
            responses.first().is_some_and(|r| r.created),
            "created first for {}",
            id
        );
        let got: Vec<Event> = responses.iter().flat_map(|r| r.events.clone()).collect();
        let expected: Vec<Event> = log
            .iter()
            .filter(|e| spec.wants(e))
            .map(|e| spec.view(e))
            .zip(got.iter().map(Some).chain(std::iter::repeat(None)))
            .map(|(mut want, seen)| {
                let at_compaction = want
                    .kv
                    .as_ref()
                    .is_some_and(|kv| compacted_at.contains(&kv.mod_revision));
                if at_compaction
                    && want.r#type == EventType::Delete as i32
                    && seen.is_some_and(|seen| seen.prev_kv.is_none())
                {
                    want.prev_kv = None;
                }
                want
            })
            .collect();
        let compacted = responses
            .iter()
            .find(|r| r.canceled && r.compact_revision != 0);
        let user_canceled = canceled_by_user.contains(id);
        if compacted.is_some() || user_canceled {
            prop_assert!(got.len() <= expected.len() && got[..] == expected[..got.len()]);
        } else {
            prop_assert_eq!(&got, &expected, "watcher {}", id);
        }
        // A revision never spans two responses of one watcher.
        let mut last_revision_of_previous = 0;
        for response in responses.iter().filter(|r| !r.events.is_empty()) {
            let first = response.events[0].kv.as_ref().expect("kv").mod_revision;
            prop_assert!(first > last_revision_of_previous);
            last_revision_of_previous = response
                .events
                .last()
                .and_then(|e| e.kv.as_ref())
                .expect("kv")
                .mod_revision;
            prop_assert!(
                response.header.as_ref().expect("header").revision >= last_revision_of_previous
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn watchers_see_exactly_their_events(ops in prop::collection::vec(op(), 1..60), capacity in 1usize..5) {
        run(&ops, capacity)?;
    }
}
