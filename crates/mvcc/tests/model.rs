//! Model-based property tests: random sequences of Put / DeleteRange /
//! Range / Txn / Compact applied to the store and to a deliberately simple
//! reference model (a flat list of every change ever made, scanned linearly,
//! never physically compacted), comparing every answer, every event, the
//! history walk used by watchers, and a snapshot round trip.

use ballot_mvcc::{ApplyOutcome, Command, MvccError, Store, StoreConfig, check_txn};
use ballot_proto::etcdserverpb::{
    CompactionRequest, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp,
    ResponseOp, TxnRequest, compare, request_op::Request, response_op::Response,
};
use ballot_proto::mvccpb::{Event, KeyValue, event::EventType};
use bytes::Bytes;
use proptest::prelude::*;

/// One change: a put (`value: Some`) or a delete.
#[derive(Debug, Clone)]
struct Entry {
    key: Vec<u8>,
    main: i64,
    value: Option<Vec<u8>>,
}

#[derive(Debug, Clone)]
struct Model {
    entries: Vec<Entry>,
    current: i64,
    compact: i64,
}

fn in_range(key: &[u8], start: &[u8], end: &[u8]) -> bool {
    match end {
        [] => key == start,
        [0] => key >= start,
        end => key >= start && key < end,
    }
}

impl Model {
    fn new() -> Model {
        Model {
            entries: Vec::new(),
            current: 1,
            compact: -1,
        }
    }

    /// The pair visible for `key` after every entry up to revision `at`
    /// (`None`: all entries, including a transaction in progress).
    fn kv_at(&self, key: &[u8], at: Option<i64>) -> Option<KeyValue> {
        let mut result: Option<KeyValue> = None;
        for entry in &self.entries {
            if entry.key != key || at.is_some_and(|at| entry.main > at) {
                continue;
            }
            result = match (&entry.value, result) {
                (None, _) => None,
                (Some(value), previous) => Some(KeyValue {
                    key: Bytes::from(key.to_vec()),
                    create_revision: previous.as_ref().map_or(entry.main, |p| p.create_revision),
                    mod_revision: entry.main,
                    version: previous.as_ref().map_or(1, |p| p.version + 1),
                    value: Bytes::from(value.clone()),
                    lease: 0,
                }),
            };
        }
        result
    }

    fn keys(&self) -> Vec<Vec<u8>> {
        let mut keys: Vec<Vec<u8>> = self.entries.iter().map(|e| e.key.clone()).collect();
        keys.sort();
        keys.dedup();
        keys
    }

    fn live_in(&self, start: &[u8], end: &[u8], at: Option<i64>) -> Vec<KeyValue> {
        self.keys()
            .iter()
            .filter(|key| in_range(key, start, end))
            .filter_map(|key| self.kv_at(key, at))
            .collect()
    }

    fn range(&self, req: &RangeRequest) -> Result<(Vec<KeyValue>, bool, i64), MvccError> {
        if req.revision > self.current {
            return Err(MvccError::FutureRevision);
        }
        let at = (req.revision > 0).then_some(req.revision);
        if at.is_some_and(|at| at < self.compact) {
            return Err(MvccError::Compacted);
        }
        let mut kvs = self.live_in(&req.key, &req.range_end, at);
        let count = kvs.len() as i64;
        if req.count_only {
            kvs.clear();
        }
        let filtered = req.min_mod_revision != 0
            || req.max_mod_revision != 0
            || req.min_create_revision != 0
            || req.max_create_revision != 0;
        if req.sort_order == 0 && !filtered && req.limit > 0 {
            kvs.truncate(req.limit as usize + 1);
        }
        kvs.retain(|kv| {
            (req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
                && (req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
                && (req.max_create_revision == 0 || kv.create_revision <= req.max_create_revision)
                && (req.min_create_revision == 0 || kv.create_revision >= req.min_create_revision)
        });
        let order = if req.sort_order == 0 && req.sort_target != 0 {
            1
        } else {
            req.sort_order
        };
        let field = |kv: &KeyValue| -> (i64, Bytes) {
            match req.sort_target {
                0 => (0, kv.key.clone()),
                1 => (kv.version, Bytes::new()),
                2 => (kv.create_revision, Bytes::new()),
                3 => (kv.mod_revision, Bytes::new()),
                _ => (0, kv.value.clone()),
            }
        };
        match order {
            1 => kvs.sort_by_key(|kv| field(kv)),
            2 => kvs.sort_by_key(|kv| std::cmp::Reverse(field(kv))),
            _ => {}
        }
        let mut more = false;
        if req.limit > 0 && kvs.len() > req.limit as usize {
            kvs.truncate(req.limit as usize);
            more = true;
        }
        if req.keys_only {
            for kv in &mut kvs {
                kv.value = Bytes::new();
            }
        }
        Ok((kvs, more, count))
    }

    fn compare_holds(&self, compare: &Compare) -> bool {
        let kvs = self.live_in(&compare.key, &compare.range_end, None);
        if kvs.is_empty() {
            if compare.target == compare::CompareTarget::Value as i32 {
                return false;
            }
            return compare_kv(compare, &KeyValue::default());
        }
        kvs.iter().all(|kv| compare_kv(compare, kv))
    }

    fn path(&self, txn: &TxnRequest, path: &mut Vec<bool>) {
        let ok = txn.compare.iter().all(|c| self.compare_holds(c));
        path.push(ok);
        for op in if ok { &txn.success } else { &txn.failure } {
            if let Some(Request::RequestTxn(nested)) = &op.request {
                self.path(nested, path);
            }
        }
    }

    fn check_reads(
        &self,
        txn: &TxnRequest,
        path: &[bool],
        at: &mut usize,
    ) -> Result<(), MvccError> {
        let ok = path[*at];
        *at += 1;
        for op in if ok { &txn.success } else { &txn.failure } {
            match &op.request {
                Some(Request::RequestRange(r)) => {
                    if r.revision > self.current {
                        return Err(MvccError::FutureRevision);
                    }
                    if r.revision > 0 && r.revision < self.compact {
                        return Err(MvccError::Compacted);
                    }
                }
                Some(Request::RequestTxn(nested)) => self.check_reads(nested, path, at)?,
                _ => {}
            }
        }
        Ok(())
    }

    fn put(
        &mut self,
        key: &[u8],
        value: &[u8],
        main: i64,
        events: &mut Vec<Event>,
    ) -> Option<KeyValue> {
        let prev = self.kv_at(key, None);
        self.entries.push(Entry {
            key: key.to_vec(),
            main,
            value: Some(value.to_vec()),
        });
        events.push(Event {
            r#type: EventType::Put as i32,
            kv: self.kv_at(key, None),
            prev_kv: prev.clone(),
        });
        prev
    }

    fn delete(
        &mut self,
        start: &[u8],
        end: &[u8],
        main: i64,
        events: &mut Vec<Event>,
    ) -> Vec<KeyValue> {
        let doomed = self.live_in(start, end, None);
        for kv in &doomed {
            self.entries.push(Entry {
                key: kv.key.to_vec(),
                main,
                value: None,
            });
            events.push(Event {
                r#type: EventType::Delete as i32,
                kv: Some(KeyValue {
                    key: kv.key.clone(),
                    mod_revision: main,
                    ..KeyValue::default()
                }),
                prev_kv: Some(kv.clone()),
            });
        }
        doomed
    }

    /// Runs the chosen branch; returns the simplified responses.
    fn run(
        &mut self,
        txn: &TxnRequest,
        path: &[bool],
        at: &mut usize,
        main: i64,
        events: &mut Vec<Event>,
    ) -> Vec<Simple> {
        let ok = path[*at];
        *at += 1;
        let mut out = Vec::new();
        for op in if ok { &txn.success } else { &txn.failure } {
            out.push(match &op.request {
                Some(Request::RequestRange(r)) => {
                    let (kvs, more, count) = self.range(r).expect("checked");
                    Simple::Range(kvs, more, count)
                }
                Some(Request::RequestPut(p)) => {
                    let prev = self.put(&p.key, &p.value, main, events);
                    Simple::Put(if p.prev_kv { prev } else { None })
                }
                Some(Request::RequestDeleteRange(d)) => {
                    let prevs = self.delete(&d.key, &d.range_end, main, events);
                    Simple::Delete(if d.prev_kv { prevs } else { Vec::new() })
                }
                Some(Request::RequestTxn(nested)) => {
                    let succeeded = path[*at];
                    Simple::Txn(succeeded, self.run(nested, path, at, main, events))
                }
                None => unreachable!("generator makes no empty ops"),
            });
        }
        out
    }
}

fn compare_kv(compare: &Compare, kv: &KeyValue) -> bool {
    use compare::TargetUnion as U;
    let ordering = match (&compare.target_union, compare.target) {
        (Some(U::Value(v)), 3) => kv.value.as_ref().cmp(v.as_ref()),
        (Some(U::Version(v)), 0) => kv.version.cmp(v),
        (Some(U::CreateRevision(v)), 1) => kv.create_revision.cmp(v),
        (Some(U::ModRevision(v)), 2) => kv.mod_revision.cmp(v),
        (Some(U::Lease(v)), 4) => kv.lease.cmp(v),
        _ => unreachable!("generator pairs target and union"),
    };
    match compare.result {
        0 => ordering.is_eq(),
        1 => ordering.is_gt(),
        2 => ordering.is_lt(),
        _ => ordering.is_ne(),
    }
}

/// A response reduced to what the model predicts.
#[derive(Debug, Clone, PartialEq)]
enum Simple {
    Range(Vec<KeyValue>, bool, i64),
    Put(Option<KeyValue>),
    Delete(Vec<KeyValue>),
    Txn(bool, Vec<Simple>),
}

fn simplify(response: &ResponseOp) -> Simple {
    match &response.response {
        Some(Response::ResponseRange(r)) => Simple::Range(r.kvs.clone(), r.more, r.count),
        Some(Response::ResponsePut(p)) => Simple::Put(p.prev_kv.clone()),
        Some(Response::ResponseDeleteRange(d)) => Simple::Delete(d.prev_kvs.clone()),
        Some(Response::ResponseTxn(t)) => {
            Simple::Txn(t.succeeded, t.responses.iter().map(simplify).collect())
        }
        None => panic!("empty response op"),
    }
}

// ---------------------------------------------------------------- generators

const KEYS: &[&[u8]] = &[b"a", b"ab", b"b", b"ba", b"c", b"\xff", b"\xff\xff"];
const ENDS: &[&[u8]] = &[b"", b"", b"\0", b"b", b"c", b"bb", b"\xff", b"a"];

fn key() -> impl Strategy<Value = Bytes> {
    prop::sample::select(KEYS).prop_map(Bytes::from_static)
}

fn end() -> impl Strategy<Value = Bytes> {
    prop::sample::select(ENDS).prop_map(Bytes::from_static)
}

fn value() -> impl Strategy<Value = Bytes> {
    prop::sample::select(vec![&b""[..], b"x", b"y", b"zz"]).prop_map(Bytes::from_static)
}

/// Revision picked relative to the current one at run time: a small
/// number, mapped into [-1, current + 1] by the runner.
fn revision_pick() -> impl Strategy<Value = u8> {
    any::<u8>()
}

fn range_request() -> impl Strategy<Value = (RangeRequest, u8)> {
    (
        key(),
        end(),
        0i64..4,
        0i32..3,
        0i32..5,
        any::<bool>(),
        any::<bool>(),
        prop::array::uniform4(prop_oneof![3 => Just(0i64), 1 => 1i64..12]),
        revision_pick(),
        prop::bool::weighted(0.3),
    )
        .prop_map(
            |(
                key,
                range_end,
                limit,
                sort_order,
                sort_target,
                keys_only,
                count_only,
                filters,
                rev,
                historic,
            )| {
                (
                    RangeRequest {
                        key,
                        range_end,
                        limit,
                        revision: 0,
                        sort_order,
                        sort_target,
                        serializable: false,
                        keys_only,
                        count_only: count_only && limit == 0,
                        min_mod_revision: filters[0],
                        max_mod_revision: filters[1],
                        min_create_revision: filters[2],
                        max_create_revision: filters[3],
                    },
                    if historic { rev } else { 0 },
                )
            },
        )
}

fn put_request() -> impl Strategy<Value = PutRequest> {
    (key(), value(), any::<bool>()).prop_map(|(key, value, prev_kv)| PutRequest {
        key,
        value,
        lease: 0,
        prev_kv,
        ignore_value: false,
        ignore_lease: false,
    })
}

fn delete_request() -> impl Strategy<Value = DeleteRangeRequest> {
    (key(), end(), any::<bool>()).prop_map(|(key, range_end, prev_kv)| DeleteRangeRequest {
        key,
        range_end,
        prev_kv,
    })
}

fn compare() -> impl Strategy<Value = Compare> {
    use compare::TargetUnion as U;
    let union = prop_oneof![
        (0i64..4).prop_map(U::Version),
        (0i64..12).prop_map(U::CreateRevision),
        (0i64..12).prop_map(U::ModRevision),
        value().prop_map(U::Value),
        Just(U::Lease(0)),
    ];
    (
        key(),
        prop_oneof![3 => Just(Bytes::new()), 1 => end()],
        0i32..4,
        union,
    )
        .prop_map(|(key, range_end, result, union)| Compare {
            result,
            target: match union {
                U::Version(_) => 0,
                U::CreateRevision(_) => 1,
                U::ModRevision(_) => 2,
                U::Value(_) => 3,
                U::Lease(_) => 4,
            },
            key,
            range_end,
            target_union: Some(union),
        })
}

fn flat_op() -> impl Strategy<Value = RequestOp> {
    prop_oneof![
        range_request().prop_map(|(r, _)| Request::RequestRange(r)),
        put_request().prop_map(Request::RequestPut),
        delete_request().prop_map(Request::RequestDeleteRange),
    ]
    .prop_map(|request| RequestOp {
        request: Some(request),
    })
}

fn txn_request() -> impl Strategy<Value = TxnRequest> {
    let nested = (
        prop::collection::vec(compare(), 0..2),
        prop::collection::vec(flat_op(), 0..3),
        prop::collection::vec(flat_op(), 0..3),
    )
        .prop_map(|(compare, success, failure)| RequestOp {
            request: Some(Request::RequestTxn(TxnRequest {
                compare,
                success,
                failure,
            })),
        });
    let op = prop_oneof![4 => flat_op(), 1 => nested];
    (
        prop::collection::vec(compare(), 0..3),
        prop::collection::vec(op.clone(), 0..4),
        prop::collection::vec(op, 0..4),
    )
        .prop_map(|(compare, success, failure)| TxnRequest {
            compare,
            success,
            failure,
        })
}

#[derive(Debug, Clone)]
enum Op {
    Put(PutRequest),
    Delete(DeleteRangeRequest),
    Range(RangeRequest, u8),
    Txn(TxnRequest),
    Compact(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => put_request().prop_map(Op::Put),
        2 => delete_request().prop_map(Op::Delete),
        4 => range_request().prop_map(|(r, rev)| Op::Range(r, rev)),
        3 => txn_request().prop_map(Op::Txn),
        1 => revision_pick().prop_map(Op::Compact),
    ]
}

/// Maps a pick into [-1, current + 1].
fn pick_revision(pick: u8, current: i64) -> i64 {
    (pick as i64 % (current + 3)) - 1
}

// -------------------------------------------------------------------- runner

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let mut store = Store::new(StoreConfig::default());
    let mut model = Model::new();
    let mut all_events: Vec<Event> = Vec::new();
    for (index, op) in ops.iter().enumerate() {
        let index = index as u64 + 1;
        match op {
            Op::Range(req, pick) => {
                let mut req = req.clone();
                if *pick != 0 {
                    req.revision = pick_revision(*pick, model.current);
                }
                let got = store.range(&req).map(|r| {
                    prop_assert_eq!(r.header.as_ref().map(|h| h.revision), Some(model.current));
                    Ok((r.kvs, r.more, r.count))
                });
                let got = match got {
                    Ok(inner) => Ok(inner?),
                    Err(e) => Err(e),
                };
                prop_assert_eq!(got, model.range(&req), "range {:?}", req);
            }
            Op::Put(req) => {
                let applied = store.apply(index, &Command::Put(req.clone()));
                let main = model.current + 1;
                let mut events = Vec::new();
                let prev = model.put(&req.key, &req.value, main, &mut events);
                model.current = main;
                let ApplyOutcome::Put(response) = applied.outcome else {
                    return Err(TestCaseError::fail(format!(
                        "put answered {:?}",
                        applied.outcome
                    )));
                };
                prop_assert_eq!(response.prev_kv, if req.prev_kv { prev } else { None });
                prop_assert_eq!(&applied.events, &events);
                all_events.extend(events);
            }
            Op::Delete(req) => {
                let applied = store.apply(index, &Command::DeleteRange(req.clone()));
                let main = model.current + 1;
                let mut events = Vec::new();
                let prevs = model.delete(&req.key, &req.range_end, main, &mut events);
                if !prevs.is_empty() {
                    model.current = main;
                }
                let ApplyOutcome::DeleteRange(response) = applied.outcome else {
                    return Err(TestCaseError::fail("delete refused"));
                };
                prop_assert_eq!(response.deleted, prevs.len() as i64);
                prop_assert_eq!(response.prev_kvs, if req.prev_kv { prevs } else { vec![] });
                prop_assert_eq!(&applied.events, &events);
                all_events.extend(events);
            }
            Op::Txn(req) => {
                let applied = store.apply(index, &Command::Txn(req.clone()));
                if let Err(error) = check_txn(req, 128) {
                    prop_assert_eq!(applied.outcome, ApplyOutcome::Error(error));
                    continue;
                }
                let mut path = Vec::new();
                model.path(req, &mut path);
                if let Err(error) = model.check_reads(req, &path, &mut 0) {
                    prop_assert_eq!(applied.outcome, ApplyOutcome::Error(error));
                    continue;
                }
                let main = model.current + 1;
                let mut events = Vec::new();
                let expected = model.run(req, &path, &mut 0, main, &mut events);
                if !events.is_empty() {
                    model.current = main;
                }
                let ApplyOutcome::Txn(response) = applied.outcome else {
                    return Err(TestCaseError::fail(format!(
                        "txn answered {:?}",
                        applied.outcome
                    )));
                };
                prop_assert_eq!(response.succeeded, path[0]);
                let got: Vec<Simple> = response.responses.iter().map(simplify).collect();
                prop_assert_eq!(got, expected);
                prop_assert_eq!(response.header.map(|h| h.revision), Some(model.current));
                prop_assert_eq!(&applied.events, &events);
                all_events.extend(events);
            }
            Op::Compact(pick) => {
                let revision = pick_revision(*pick, model.current);
                let applied = store.apply(
                    index,
                    &Command::Compact(CompactionRequest {
                        revision,
                        physical: false,
                    }),
                );
                if revision <= model.compact {
                    prop_assert_eq!(applied.outcome, ApplyOutcome::Error(MvccError::Compacted));
                } else if revision > model.current {
                    prop_assert_eq!(
                        applied.outcome,
                        ApplyOutcome::Error(MvccError::FutureRevision)
                    );
                } else {
                    prop_assert!(matches!(applied.outcome, ApplyOutcome::Compact(_)));
                    model.compact = revision;
                }
            }
        }
        prop_assert_eq!(store.current_revision(), model.current);
        prop_assert_eq!(store.compact_revision(), model.compact);
    }
    check_history_walk(&store, &model, &all_events)?;
    check_snapshot(&store)?;
    Ok(())
}

/// Every event since any retained revision equals the events recorded at
/// apply time (prev_kv included), in order.
fn check_history_walk(
    store: &Store,
    model: &Model,
    all_events: &[Event],
) -> Result<(), TestCaseError> {
    let first = model.compact.max(1);
    for (start, end_key) in [(first, &b""[..]), (model.current, b"\0"), (first + 1, b"c")] {
        let since = store
            .events_since(start, model.current, b"a", end_key, usize::MAX)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let expected: Vec<Event> = all_events
            .iter()
            .filter(|e| {
                let kv = e.kv.as_ref().expect("event kv");
                kv.mod_revision >= start && in_range(&kv.key, b"a", end_key)
            })
            .map(|e| {
                let mut e = e.clone();
                // A delete exactly at the compact revision lost its previous value to the
                // compaction (which frees what the delete removed), unless that value was
                // written in the same revision.
                let at_compact =
                    e.kv.as_ref()
                        .is_some_and(|kv| kv.mod_revision == model.compact);
                let before = e
                    .prev_kv
                    .as_ref()
                    .is_some_and(|prev| prev.mod_revision < model.compact);
                if at_compact && before && e.r#type == EventType::Delete as i32 {
                    e.prev_kv = None;
                }
                e
            })
            .collect();
        prop_assert_eq!(since.events, expected);
        prop_assert_eq!(since.next_revision, model.current + 1);
    }
    if model.compact > 1 {
        prop_assert_eq!(
            store.events_since(model.compact - 1, model.current, b"a", b"\0", 10),
            Err(MvccError::Compacted)
        );
    }
    Ok(())
}

fn check_snapshot(store: &Store) -> Result<(), TestCaseError> {
    let bytes = store.snapshot();
    let restored = Store::restore(&bytes, StoreConfig::default())
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(restored.snapshot(), bytes);
    prop_assert_eq!(restored.hash_kv(0), store.hash_kv(0));
    prop_assert_eq!(store.snapshot_state().hash_kv(0), store.hash_kv(0));
    let everything = RangeRequest {
        key: Bytes::from_static(b"\0"),
        range_end: Bytes::from_static(b"\0"),
        ..RangeRequest::default()
    };
    prop_assert_eq!(restored.range(&everything), store.range(&everything));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn store_matches_model(ops in prop::collection::vec(op(), 1..40)) {
        run(&ops)?;
    }
}
