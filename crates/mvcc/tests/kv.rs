//! Explicit cases for the etcd key-value semantics the store must follow.

mod common;

use ballot_mvcc::{
    ApplyOutcome, Command, GrpcCode, MvccError, TXN_OPS_MAX_DEFAULT, prefix_range_end,
};
use ballot_proto::etcdserverpb::{
    Compare, PutRequest, RangeRequest, TxnRequest, compare, range_request::SortOrder,
    range_request::SortTarget, request_op::Request, response_op::Response,
};
use ballot_proto::mvccpb::event::EventType;
use common::*;

#[test]
fn revisions_advance_once_per_changing_write() {
    let mut node = Node::new();
    assert_eq!(node.store.current_revision(), 1);
    assert_eq!(node.store.compact_revision(), -1);
    assert_eq!(node.put("a", "1").revision, 2);
    // Same value again still bumps mod_revision and version.
    assert_eq!(node.put("a", "1").revision, 3);
    let a = node.get("a").unwrap();
    assert_eq!((a.create_revision, a.mod_revision, a.version), (2, 3, 2));
    // A delete that matches nothing and a read do not advance.
    assert_eq!(node.delete("zz", "").revision, 3);
    node.range(range_req("a", ""));
    assert_eq!(node.store.current_revision(), 3);
    // A read-only Txn applied through the log does not advance either.
    node.txn(TxnRequest {
        compare: vec![],
        success: vec![op_range("a", "")],
        failure: vec![],
    })
    .unwrap();
    assert_eq!(node.store.current_revision(), 3);
    // Delete then put starts a new generation.
    assert_eq!(node.delete("a", "").revision, 4);
    node.put("a", "2");
    let a = node.get("a").unwrap();
    assert_eq!((a.create_revision, a.mod_revision, a.version), (5, 5, 1));
}

#[test]
fn txn_writes_share_one_revision_with_ordered_sub_revisions() {
    let mut node = Node::new();
    node.put("c", "0");
    let applied = node.apply(Command::Txn(TxnRequest {
        compare: vec![],
        success: vec![op_put("b", "1"), op_put("a", "2"), op_delete("c", "")],
        failure: vec![],
    }));
    assert_eq!(applied.revision, 3);
    let kinds: Vec<(i32, String, i64)> = applied
        .events
        .iter()
        .map(|e| {
            let kv = e.kv.as_ref().unwrap();
            (
                e.r#type,
                String::from_utf8_lossy(&kv.key).into_owned(),
                kv.mod_revision,
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            (EventType::Put as i32, "b".into(), 3),
            (EventType::Put as i32, "a".into(), 3),
            (EventType::Delete as i32, "c".into(), 3),
        ]
    );
    // DELETE events carry only key and mod_revision (plus prev_kv for the hub).
    let delete = applied.events[2].kv.as_ref().unwrap();
    assert_eq!(
        (delete.create_revision, delete.version, delete.value.len()),
        (0, 0, 0)
    );
}

#[test]
fn range_end_conventions() {
    let mut node = Node::new();
    for key in ["\u{1}", "a", "ab", "b", "c"] {
        node.put(key, "v");
    }
    node.apply(Command::Put(PutRequest {
        key: bytes::Bytes::from_static(b"\xff\xff"),
        value: b("v"),
        ..PutRequest::default()
    }));
    assert_eq!(node.keys(range_req("a", "")), ["a"]);
    assert_eq!(node.keys(range_req("b", "\0")).len(), 3); // b, c, \xff\xff
    assert_eq!(node.keys(range_req("\0", "\0")).len(), 6);
    assert_eq!(node.keys(range_req("a", "c")), ["a", "ab", "b"]);
    assert!(node.keys(range_req("c", "a")).is_empty());
    let prefix_end = String::from_utf8(prefix_range_end(b"a")).unwrap();
    assert_eq!(node.keys(range_req("a", &prefix_end)), ["a", "ab"]);
    // An all-0xff prefix ends at "\0": every key from it on.
    let all_ff = RangeRequest {
        key: bytes::Bytes::from_static(b"\xff"),
        range_end: bytes::Bytes::from(prefix_range_end(b"\xff")),
        ..RangeRequest::default()
    };
    assert_eq!(node.range(all_ff).count, 1);
}

#[test]
fn range_errors_and_historic_reads() {
    let mut node = Node::new();
    node.put("a", "1"); // 2
    node.put("a", "2"); // 3
    node.put("a", "3"); // 4
    assert_eq!(
        node.store.range(&range_req("", "")),
        Err(MvccError::EmptyKey)
    );
    let at = |revision| RangeRequest {
        revision,
        ..range_req("a", "")
    };
    let old = node.range(at(2));
    assert_eq!(old.kvs[0].value, b("1"));
    assert_eq!(
        old.header.unwrap().revision,
        4,
        "header revision is the current one"
    );
    assert_eq!(node.store.range(&at(5)), Err(MvccError::FutureRevision));
    assert_eq!(
        node.range(at(-7)).kvs[0].value,
        b("3"),
        "negative means current"
    );
    assert!(node.range(at(1)).kvs.is_empty());
    node.compact(3);
    assert_eq!(node.store.range(&at(2)), Err(MvccError::Compacted));
    assert_eq!(
        node.range(at(3)).kvs[0].value,
        b("2"),
        "reading at the compact revision works"
    );
    let bad_sort = RangeRequest {
        sort_order: 7,
        ..range_req("a", "")
    };
    assert_eq!(
        node.store.range(&bad_sort),
        Err(MvccError::InvalidSortOption)
    );
    let bad_target = RangeRequest {
        sort_target: 9,
        ..range_req("a", "")
    };
    assert_eq!(
        node.store.range(&bad_target),
        Err(MvccError::InvalidSortOption)
    );
}

#[test]
fn limit_count_more_keys_only_count_only() {
    let mut node = Node::new();
    for key in ["a", "b", "c", "d"] {
        node.put(key, "value");
    }
    let limited = node.range(RangeRequest {
        limit: 2,
        ..range_req("a", "\0")
    });
    assert_eq!(
        (limited.kvs.len(), limited.more, limited.count),
        (2, true, 4)
    );
    let exact = node.range(RangeRequest {
        limit: 4,
        ..range_req("a", "\0")
    });
    assert_eq!((exact.kvs.len(), exact.more, exact.count), (4, false, 4));
    let keys_only = node.range(RangeRequest {
        keys_only: true,
        ..range_req("a", "\0")
    });
    assert!(
        keys_only
            .kvs
            .iter()
            .all(|kv| kv.value.is_empty() && kv.version == 1)
    );
    let count_only = node.range(RangeRequest {
        count_only: true,
        ..range_req("a", "\0")
    });
    assert_eq!(
        (count_only.kvs.len(), count_only.count, count_only.more),
        (0, 4, false)
    );
}

#[test]
fn sorting_by_every_target_and_order() {
    let mut node = Node::new();
    node.put("b", "1"); // 2
    node.put("a", "3"); // 3
    node.put("c", "2"); // 4
    node.put("b", "4"); // 5: b version 2, mod 5
    let sorted = |order: SortOrder, target: SortTarget| {
        node.keys(RangeRequest {
            sort_order: order as i32,
            sort_target: target as i32,
            ..range_req("a", "\0")
        })
    };
    assert_eq!(sorted(SortOrder::None, SortTarget::Key), ["a", "b", "c"]);
    assert_eq!(sorted(SortOrder::Descend, SortTarget::Key), ["c", "b", "a"]);
    assert_eq!(
        sorted(SortOrder::Ascend, SortTarget::Create),
        ["b", "a", "c"]
    );
    assert_eq!(
        sorted(SortOrder::Descend, SortTarget::Create),
        ["c", "a", "b"]
    );
    assert_eq!(sorted(SortOrder::Ascend, SortTarget::Mod), ["a", "c", "b"]);
    assert_eq!(
        sorted(SortOrder::Ascend, SortTarget::Value),
        ["c", "a", "b"]
    );
    assert_eq!(
        sorted(SortOrder::Descend, SortTarget::Value),
        ["b", "a", "c"]
    );
    // Ties keep key order.
    assert_eq!(
        sorted(SortOrder::Ascend, SortTarget::Version),
        ["a", "c", "b"]
    );
    assert_eq!(
        sorted(SortOrder::Descend, SortTarget::Version),
        ["b", "a", "c"]
    );
    // NONE with a non-KEY target means ASCEND.
    assert_eq!(sorted(SortOrder::None, SortTarget::Mod), ["a", "c", "b"]);
    // The limit applies after sorting.
    let top = node.range(RangeRequest {
        sort_order: SortOrder::Descend as i32,
        sort_target: SortTarget::Mod as i32,
        limit: 1,
        ..range_req("a", "\0")
    });
    assert_eq!(
        (top.kvs[0].key.as_ref(), top.more, top.count),
        (&b"b"[..], true, 3)
    );
}

#[test]
fn sort_order_none_with_a_target_sorts_only_the_fetched_keys() {
    // Checked against etcd 3.4.23: `put c; put b; put a; get "" --from-key
    // --sort-by=MODIFY --limit=1` answers b (count 3, more): etcd fetches
    // limit + 1 keys in key order (a, b) and sorts only those.
    let mut node = Node::new();
    node.put("c", "1");
    node.put("b", "2");
    node.put("a", "3");
    let response = node.range(RangeRequest {
        sort_order: SortOrder::None as i32,
        sort_target: SortTarget::Mod as i32,
        limit: 1,
        ..range_req("\0", "\0")
    });
    assert_eq!(response.kvs[0].key, b("b"));
    assert_eq!((response.count, response.more), (3, true));
}

#[test]
fn revision_filters_apply_before_the_limit_and_not_to_count() {
    let mut node = Node::new();
    for key in ["a", "b", "c", "d"] {
        node.put(key, "v"); // a=2, b=3, c=4, d=5
    }
    let filtered = node.range(RangeRequest {
        min_mod_revision: 3,
        max_mod_revision: 4,
        limit: 1,
        ..range_req("a", "\0")
    });
    assert_eq!(filtered.kvs[0].key, b("b"));
    assert!(filtered.more);
    assert_eq!(
        filtered.count, 4,
        "count ignores filters and limit, as in etcd"
    );
    let created = node.keys(RangeRequest {
        min_create_revision: 4,
        ..range_req("a", "\0")
    });
    assert_eq!(created, ["c", "d"]);
    let created_max = node.keys(RangeRequest {
        max_create_revision: 2,
        ..range_req("a", "\0")
    });
    assert_eq!(created_max, ["a"]);
}

#[test]
fn put_options_and_errors() {
    let mut node = Node::new();
    let first = node.apply(Command::Put(PutRequest {
        prev_kv: true,
        ..put_req("a", "1")
    }));
    let ApplyOutcome::Put(first) = first.outcome else {
        panic!()
    };
    assert_eq!(first.prev_kv, None);
    let second = node.apply(Command::Put(PutRequest {
        prev_kv: true,
        ..put_req("a", "2")
    }));
    let ApplyOutcome::Put(second) = second.outcome else {
        panic!()
    };
    assert_eq!(second.prev_kv.unwrap().value, b("1"));
    assert_eq!(second.header.unwrap().revision, 3);

    let errors = [
        (put_req("", "v"), MvccError::EmptyKey),
        (
            PutRequest {
                ignore_value: true,
                ..put_req("a", "v")
            },
            MvccError::ValueProvided,
        ),
        (
            PutRequest {
                ignore_lease: true,
                lease: 5,
                ..put_req("a", "")
            },
            MvccError::LeaseProvided,
        ),
        (
            PutRequest {
                ignore_value: true,
                ..put_req("missing", "")
            },
            MvccError::KeyNotFound,
        ),
        (
            PutRequest {
                lease: 99,
                ..put_req("a", "v")
            },
            MvccError::LeaseNotFound,
        ),
    ];
    for (req, error) in errors {
        let applied = node.apply(Command::Put(req));
        assert_eq!(outcome_error(&applied), Some(error));
        assert_eq!(applied.revision, 3, "a refused put changes nothing");
    }

    node.apply(Command::LeaseGrant {
        id: 7,
        ttl_secs: 60,
    });
    node.put_lease("a", "3", 7);
    node.apply(Command::Put(PutRequest {
        ignore_value: true,
        ..put_req("a", "")
    }));
    let a = node.get("a").unwrap();
    assert_eq!(
        (a.value, a.lease),
        (b("3"), 0),
        "ignore_value keeps the value; lease 0 detaches"
    );
    node.put_lease("a", "4", 7);
    node.apply(Command::Put(PutRequest {
        ignore_lease: true,
        ..put_req("a", "5")
    }));
    let a = node.get("a").unwrap();
    assert_eq!(
        (a.value, a.lease),
        (b("5"), 7),
        "ignore_lease keeps the lease"
    );
}

#[test]
fn delete_range_with_prev_kv() {
    let mut node = Node::new();
    node.put("a", "1");
    node.put("b", "2");
    node.put("c", "3");
    let applied = node.delete("a", "c");
    let ApplyOutcome::DeleteRange(response) = applied.outcome else {
        panic!()
    };
    assert_eq!(response.deleted, 2);
    let prev: Vec<_> = response
        .prev_kvs
        .iter()
        .map(|kv| kv.value.clone())
        .collect();
    assert_eq!(prev, [b("1"), b("2")]);
    assert_eq!(response.header.unwrap().revision, 5);
    assert_eq!(applied.events.len(), 2);
    assert_eq!(
        outcome_error(&node.delete("", "")),
        Some(MvccError::EmptyKey)
    );
}

fn cmp(key: &str, target: compare::TargetUnion, result: compare::CompareResult) -> Compare {
    let target_kind = match &target {
        compare::TargetUnion::Version(_) => compare::CompareTarget::Version,
        compare::TargetUnion::CreateRevision(_) => compare::CompareTarget::Create,
        compare::TargetUnion::ModRevision(_) => compare::CompareTarget::Mod,
        compare::TargetUnion::Value(_) => compare::CompareTarget::Value,
        compare::TargetUnion::Lease(_) => compare::CompareTarget::Lease,
    };
    Compare {
        result: result as i32,
        target: target_kind as i32,
        key: b(key),
        range_end: bytes::Bytes::new(),
        target_union: Some(target),
    }
}

fn holds(node: &mut Node, compare: Compare) -> bool {
    node.txn(TxnRequest {
        compare: vec![compare],
        success: vec![],
        failure: vec![],
    })
    .unwrap()
    .succeeded
}

#[test]
fn compares_on_every_target_and_result() {
    use compare::CompareResult::*;
    use compare::TargetUnion::*;
    let mut node = Node::new();
    node.apply(Command::LeaseGrant {
        id: 3,
        ttl_secs: 60,
    });
    node.put_lease("a", "m", 3); // create 2, mod 2, version 1
    node.put_lease("a", "m", 3); // mod 3, version 2
    assert!(holds(&mut node, cmp("a", Version(2), Equal)));
    assert!(holds(&mut node, cmp("a", Version(1), Greater)));
    assert!(holds(&mut node, cmp("a", Version(3), Less)));
    assert!(holds(&mut node, cmp("a", Version(1), NotEqual)));
    assert!(!holds(&mut node, cmp("a", Version(2), NotEqual)));
    assert!(holds(&mut node, cmp("a", CreateRevision(2), Equal)));
    assert!(holds(&mut node, cmp("a", ModRevision(3), Equal)));
    assert!(holds(&mut node, cmp("a", ModRevision(2), Greater)));
    assert!(holds(&mut node, cmp("a", Value(b("l")), Greater)));
    assert!(holds(&mut node, cmp("a", Value(b("n")), Less)));
    assert!(holds(&mut node, cmp("a", Lease(3), Equal)));
    // A missing key compares as zeros, except VALUE, which fails.
    assert!(holds(&mut node, cmp("zz", CreateRevision(0), Equal)));
    assert!(holds(&mut node, cmp("zz", Version(0), Equal)));
    assert!(!holds(&mut node, cmp("zz", Value(b("")), Equal)));
    assert!(!holds(&mut node, cmp("zz", Value(b("")), NotEqual)));
}

#[test]
fn range_compares_must_hold_for_every_key() {
    use compare::CompareResult::*;
    use compare::TargetUnion::*;
    let mut node = Node::new();
    node.put("k1", "x");
    node.put("k2", "x");
    let over = |value: &str, result| Compare {
        range_end: b("k3"),
        ..cmp("k1", Value(b(value)), result)
    };
    assert!(holds(&mut node, over("x", Equal)));
    node.put("k2", "y");
    assert!(!holds(&mut node, over("x", Equal)));
    assert!(holds(&mut node, over("w", Greater)));
    let empty_range = Compare {
        range_end: b("m"),
        ..cmp("l", Version(0), Equal)
    };
    assert!(holds(&mut node, empty_range));
}

#[test]
fn txn_branches_nesting_and_read_your_writes() {
    use compare::CompareResult::*;
    use compare::TargetUnion::*;
    let mut node = Node::new();
    node.put("x", "1");
    let response = node
        .txn(TxnRequest {
            compare: vec![cmp("x", Value(b("1")), Equal)],
            success: vec![
                op_put("y", "2"),
                op_range("y", ""),
                op_txn(TxnRequest {
                    compare: vec![cmp("y", Version(0), Equal)],
                    success: vec![op_put("z", "from-nested-success")],
                    failure: vec![op_put("z", "from-nested-failure")],
                }),
            ],
            failure: vec![op_put("y", "failed")],
        })
        .unwrap();
    assert!(response.succeeded);
    let Some(Response::ResponseRange(read)) = &response.responses[1].response else {
        panic!()
    };
    assert_eq!(read.kvs[0].value, b("2"), "later ops see earlier writes");
    assert_eq!(read.header.as_ref().unwrap().revision, 3);
    // Nested compares are decided against the state before the Txn (etcd
    // compareToPath): y did not exist then.
    assert_eq!(node.get("z").unwrap().value, b("from-nested-success"));
    assert_eq!(node.store.current_revision(), 3);

    let failed = node
        .txn(TxnRequest {
            compare: vec![cmp("x", Value(b("nope")), Equal)],
            success: vec![op_put("y", "s")],
            failure: vec![op_put("y", "f")],
        })
        .unwrap();
    assert!(!failed.succeeded);
    assert_eq!(node.get("y").unwrap().value, b("f"));
}

#[test]
fn txn_refusals_change_nothing() {
    let mut node = Node::new();
    node.put("a", "1");
    let empty_compare_key = TxnRequest {
        compare: vec![Compare::default()],
        success: vec![op_put("b", "1")],
        failure: vec![],
    };
    assert_eq!(node.txn(empty_compare_key), Err(MvccError::EmptyKey));
    let duplicate = TxnRequest {
        compare: vec![],
        success: vec![op_put("a", "1"), op_put("a", "2")],
        failure: vec![],
    };
    assert_eq!(node.txn(duplicate), Err(MvccError::DuplicateKey));
    let overlapping = TxnRequest {
        compare: vec![],
        success: vec![op_delete("a", "c"), op_put("b", "2")],
        failure: vec![],
    };
    assert_eq!(node.txn(overlapping), Err(MvccError::DuplicateKey));
    let bad_lease = TxnRequest {
        compare: vec![],
        success: vec![
            op_put("b", "2"),
            ballot_proto::etcdserverpb::RequestOp {
                request: Some(ballot_proto::etcdserverpb::request_op::Request::RequestPut(
                    PutRequest {
                        lease: 42,
                        ..put_req("c", "3")
                    },
                )),
            },
        ],
        failure: vec![],
    };
    assert_eq!(node.txn(bad_lease), Err(MvccError::LeaseNotFound));
    let future_read = TxnRequest {
        compare: vec![],
        success: vec![
            op_put("b", "2"),
            ballot_proto::etcdserverpb::RequestOp {
                request: Some(
                    ballot_proto::etcdserverpb::request_op::Request::RequestRange(RangeRequest {
                        revision: 3,
                        ..range_req("a", "")
                    }),
                ),
            },
        ],
        failure: vec![],
    };
    assert_eq!(node.txn(future_read), Err(MvccError::FutureRevision));
    assert_eq!(node.store.current_revision(), 2);
    assert!(node.get("b").is_none());
}

#[test]
fn read_only_txn_served_without_the_log() {
    let mut node = Node::new();
    node.put("a", "1");
    let read = TxnRequest {
        compare: vec![],
        success: vec![op_range("a", "")],
        failure: vec![],
    };
    let response = node.store.txn_read(&read).unwrap();
    assert_eq!(response.header.unwrap().revision, 2);
    let write = TxnRequest {
        compare: vec![],
        success: vec![op_put("a", "2")],
        failure: vec![],
    };
    assert_eq!(node.store.txn_read(&write), Err(MvccError::TxnNotReadOnly));
}

#[test]
fn compaction_rules() {
    let mut node = Node::new();
    node.put("a", "1"); // 2
    node.put("a", "2"); // 3
    node.delete("a", ""); // 4
    node.put("b", "1"); // 5
    assert_eq!(
        outcome_error(&node.compact(6)),
        Some(MvccError::FutureRevision)
    );
    assert!(matches!(node.compact(4).outcome, ApplyOutcome::Compact(_)));
    assert_eq!(node.store.compact_revision(), 4);
    assert_eq!(outcome_error(&node.compact(4)), Some(MvccError::Compacted));
    assert_eq!(outcome_error(&node.compact(3)), Some(MvccError::Compacted));
    assert_eq!(
        node.store.current_revision(),
        5,
        "compaction does not advance the revision"
    );
    let at = |revision| RangeRequest {
        revision,
        ..range_req("a", "\0")
    };
    assert_eq!(node.store.range(&at(3)), Err(MvccError::Compacted));
    assert!(node.range(at(4)).kvs.is_empty());
    assert_eq!(node.range(at(5)).kvs.len(), 1);
    node.compact(5);
    assert_eq!(node.range(at(5)).kvs[0].key, b("b"));
}

#[test]
fn apply_is_idempotent_by_index() {
    let mut node = Node::new();
    node.put("a", "1");
    let replay = node.store.apply(1, &Command::Put(put_req("a", "2")));
    assert_eq!(replay.outcome, ApplyOutcome::AlreadyApplied);
    assert!(replay.events.is_empty());
    assert_eq!(node.get("a").unwrap().value, b("1"));
    assert_eq!(node.store.last_applied(), 1);
    // An index that skips ahead is fine (entries without commands).
    node.store.skip(5);
    assert_eq!(
        node.store
            .apply(5, &Command::Put(put_req("a", "3")))
            .outcome,
        ApplyOutcome::AlreadyApplied
    );
    assert!(matches!(
        node.store
            .apply(6, &Command::Put(put_req("a", "3")))
            .outcome,
        ApplyOutcome::Put(_)
    ));
    // A refused command still consumes its index.
    let refused = node.store.apply(7, &Command::Put(put_req("", "x")));
    assert_eq!(outcome_error(&refused), Some(MvccError::EmptyKey));
    assert_eq!(node.store.last_applied(), 7);
}

#[test]
fn error_strings_and_codes_are_etcds() {
    let table = [
        (
            MvccError::EmptyKey,
            "etcdserver: key is not provided",
            GrpcCode::InvalidArgument,
        ),
        (
            MvccError::KeyNotFound,
            "etcdserver: key not found",
            GrpcCode::InvalidArgument,
        ),
        (
            MvccError::ValueProvided,
            "etcdserver: value is provided",
            GrpcCode::InvalidArgument,
        ),
        (
            MvccError::LeaseProvided,
            "etcdserver: lease is provided",
            GrpcCode::InvalidArgument,
        ),
        (
            MvccError::TooManyOps,
            "etcdserver: too many operations in txn request",
            GrpcCode::InvalidArgument,
        ),
        (
            MvccError::DuplicateKey,
            "etcdserver: duplicate key given in txn request",
            GrpcCode::InvalidArgument,
        ),
        (
            MvccError::InvalidSortOption,
            "etcdserver: invalid sort option",
            GrpcCode::InvalidArgument,
        ),
        (
            MvccError::Compacted,
            "etcdserver: mvcc: required revision has been compacted",
            GrpcCode::OutOfRange,
        ),
        (
            MvccError::FutureRevision,
            "etcdserver: mvcc: required revision is a future revision",
            GrpcCode::OutOfRange,
        ),
        (
            MvccError::LeaseNotFound,
            "etcdserver: requested lease not found",
            GrpcCode::NotFound,
        ),
        (
            MvccError::LeaseExists,
            "etcdserver: lease already exists",
            GrpcCode::FailedPrecondition,
        ),
        (
            MvccError::LeaseTtlTooLarge,
            "etcdserver: too large lease TTL",
            GrpcCode::OutOfRange,
        ),
    ];
    for (error, text, code) in table {
        assert_eq!(error.to_string(), text);
        assert_eq!(error.grpc_code(), code, "{text}");
    }
}

#[test]
fn the_txn_limit_is_checked_before_proposing_not_when_applying() {
    let three = TxnRequest {
        compare: vec![],
        success: vec![op_put("a", ""), op_put("b", ""), op_put("c", "")],
        failure: vec![],
    };
    assert_eq!(
        ballot_mvcc::check_txn(&three, 2),
        Err(MvccError::TooManyOps)
    );
    assert_eq!(ballot_mvcc::check_txn(&three, 3), Ok(()));

    // A member may run with a larger `--max-txn-ops` than another: whatever one proposed, every
    // store applies alike, whatever the default limit.
    let ops = TXN_OPS_MAX_DEFAULT + 72;
    let large = TxnRequest {
        compare: vec![],
        success: (0..ops).map(|i| op_put(&format!("k{i}"), "v")).collect(),
        failure: vec![],
    };
    assert_eq!(
        ballot_mvcc::check_txn(&large, TXN_OPS_MAX_DEFAULT),
        Err(MvccError::TooManyOps)
    );
    let mut node = Node::new();
    let response = node.txn(large).expect("applies");
    assert!(response.succeeded);
    assert_eq!(response.responses.len(), ops);
    assert_eq!(node.range(range_req("k0", "")).kvs.len(), 1);
}

#[test]
fn stored_keys_and_values_stop_pointing_into_the_request_buffer_by_the_first_compaction() {
    // A command decoded from a log entry holds slices of the entry's buffer (a peer frame, an
    // HTTP/2 read buffer, many requests long). A new key is copied at once; a value is copied
    // by the first compaction that keeps it, so that one live value does not keep the whole
    // buffer alive afterwards.
    let mut node = Node::new();
    let frame = Command::Txn(TxnRequest {
        compare: vec![],
        success: vec![op_put("new-key", "value-1"), op_put("other", "value-2")],
        failure: vec![],
    })
    .encode();
    let inside = |bytes: &[u8]| {
        let start = frame.as_ptr() as usize;
        let at = bytes.as_ptr() as usize;
        at >= start && at < start + frame.len()
    };
    let command = Command::decode(frame.clone()).expect("decode");
    let Command::Txn(txn) = &command else {
        panic!("decoded {command:?}")
    };
    let Some(Request::RequestPut(put)) = &txn.success[0].request else {
        panic!("decoded {txn:?}")
    };
    assert!(
        inside(&put.key) && inside(&put.value),
        "decoding slices the buffer (else this test checks nothing)"
    );
    node.apply(command);
    assert!(
        !inside(&node.get("new-key").expect("stored").key),
        "a new key is a copy"
    );
    node.put("other", "value-3");
    let revision = node.store.current_revision();
    node.compact(revision);
    let kept = node.get("new-key").expect("kept");
    assert_eq!(&kept.value[..], b"value-1");
    assert!(
        !inside(&kept.value),
        "the compaction copied the value it kept"
    );
    assert_eq!(&node.get("other").expect("kept").value[..], b"value-3");
}
