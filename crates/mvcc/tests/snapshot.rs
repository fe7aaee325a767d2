//! Snapshots, HashKV, and decoding untrusted bytes.

mod common;

use ballot_mvcc::{Command, MvccError, SnapshotError, Store, StoreConfig};
use ballot_proto::etcdserverpb::TxnRequest;
use bytes::Bytes;
use common::*;
use proptest::prelude::*;

/// The sequence run against etcd 3.4.23 to obtain the reference hashes:
/// `put a 1; put b 2; put a 3; del b; put c 4; txn { put d 5; put e 6 }`.
fn etcd_sequence() -> Node {
    let mut node = Node::new();
    node.put("a", "1");
    node.put("b", "2");
    node.put("a", "3");
    node.delete("b", "");
    node.put("c", "4");
    node.txn(TxnRequest {
        compare: vec![],
        success: vec![op_put("d", "5"), op_put("e", "6")],
        failure: vec![],
    })
    .unwrap();
    node
}

#[test]
fn hash_kv_equals_etcds_for_the_same_history() {
    // Reference values printed by `etcdctl endpoint hashkv` on a fresh
    // single-member etcd 3.4.23 after the same commands.
    let mut node = etcd_sequence();
    assert_eq!(node.store.current_revision(), 7);
    let fresh = node.store.hash_kv(0).unwrap();
    assert_eq!(
        (fresh.hash, fresh.compact_revision, fresh.hash_revision),
        (301_876_649, -1, 7)
    );
    let at_7 = node.store.snapshot_state();
    node.compact(4);
    node.put("a", "7");
    assert_eq!(node.store.hash_kv(0).unwrap().hash, 3_093_902_304);
    assert_eq!(node.store.hash_kv(6).unwrap().hash, 2_450_235_489);
    let at_8 = node.store.snapshot_state();
    assert_eq!(at_8.hash_kv(0), node.store.hash_kv(0));
    assert_eq!(at_8.hash_kv(6), node.store.hash_kv(6));
    node.delete("a", "");
    assert_eq!(node.store.hash_kv(0).unwrap().hash, 2_585_066_847);
    node.compact(9);
    assert_eq!(node.store.hash_kv(0).unwrap().hash, 4_154_747_874);
    assert_eq!(node.store.hash_kv(9), Err(MvccError::Compacted));
    assert_eq!(node.store.hash_kv(10), Err(MvccError::FutureRevision));
    // A snapshot hashes the store as it was when taken, whatever came after.
    assert_eq!(at_7.hash_kv(0), Ok(fresh));
    assert_eq!(at_8.hash_kv(0).unwrap().hash, 3_093_902_304);
    assert_eq!(at_8.hash_kv(4), Err(MvccError::Compacted));
    assert_eq!(at_8.hash_kv(9), Err(MvccError::FutureRevision));
}

/// [`etcd_sequence`], then a lease with a key, a compaction and a lease checkpoint.
fn with_lease_and_compaction() -> Node {
    let mut node = etcd_sequence();
    node.apply(Command::LeaseGrant {
        id: 3,
        ttl_secs: 100,
    });
    node.put_lease("l", "v", 3);
    node.compact(4);
    node.apply(Command::LeaseCheckpoint {
        id: 3,
        remaining_ttl_secs: 50,
    });
    node
}

#[test]
fn snapshot_round_trip_is_exact() {
    let mut node = with_lease_and_compaction();
    let bytes = node.store.snapshot();
    let restored = Store::restore(&bytes, StoreConfig::default()).unwrap();
    assert_eq!(restored.snapshot(), bytes, "same state, same bytes");
    assert_eq!(restored.hash_kv(0), node.store.hash_kv(0));
    assert_eq!(restored.last_applied(), node.store.last_applied());
    assert_eq!(restored.current_revision(), node.store.current_revision());
    assert_eq!(restored.compact_revision(), 4);
    assert_eq!(restored.lease(3), node.store.lease(3));
    let mut streamed = Vec::new();
    node.store.snapshot_write(&mut streamed).unwrap();
    assert_eq!(streamed, bytes.to_vec());
    // The restored store keeps working identically.
    let mut a = Node {
        store: restored,
        index: node.index,
    };
    a.put("z", "1");
    node.put("z", "1");
    assert_eq!(a.store.snapshot(), node.store.snapshot());
    let since = a.store.events_since(4, 100, b"\0", b"\0", 100).unwrap();
    assert_eq!(
        since,
        node.store.events_since(4, 100, b"\0", b"\0", 100).unwrap()
    );
}

#[test]
fn a_taken_snapshot_state_is_unchanged_by_later_writes() {
    let mut node = etcd_sequence();
    // Values larger than the writer's internal buffer take its direct path.
    let big = "x".repeat(300 * 1024);
    node.put("big", &big);
    node.apply(Command::LeaseGrant {
        id: 9,
        ttl_secs: 100,
    });
    node.put_lease("leased", "v", 9);
    let taken = node.store.snapshot_state();
    let bytes_then = node.store.snapshot();
    assert_eq!(taken.to_bytes(), bytes_then);
    assert_eq!(taken.encoded_len(), bytes_then.len() as u64);
    assert_eq!(taken.last_applied(), node.store.last_applied());

    // Every kind of change to the store after the snapshot was taken: an
    // overwrite, a delete, a new key, the big value replaced, a revoke and a
    // compaction that drops old versions and removes deleted keys.
    node.put("a", "changed");
    node.delete("c", "");
    node.put("new", "1");
    node.put("big", "small now");
    node.apply(Command::LeaseRevoke { id: 9 });
    node.compact(node.store.current_revision());
    assert_ne!(node.store.snapshot(), bytes_then);

    let mut streamed = Vec::new();
    taken.write_to(&mut streamed).unwrap();
    assert_eq!(
        streamed,
        bytes_then.to_vec(),
        "the snapshot state kept its contents"
    );
    let restored = Store::restore(&streamed, StoreConfig::default()).unwrap();
    assert_eq!(restored.snapshot(), bytes_then);
}

#[test]
fn snapshot_damage_is_detected() {
    let node = etcd_sequence();
    let bytes = node.store.snapshot().to_vec();
    for cut in 0..bytes.len() {
        assert!(Store::restore(&bytes[..cut], StoreConfig::default()).is_err());
    }
    let mut flipped = bytes.clone();
    flipped[30] ^= 1;
    assert!(matches!(
        Store::restore(&flipped, StoreConfig::default()),
        Err(SnapshotError::Checksum { .. })
    ));
    assert_eq!(
        Store::restore(b"definitely not a snapshot", StoreConfig::default()).err(),
        Some(SnapshotError::BadMagic)
    );
}

#[test]
fn a_padded_snapshot_restores_and_reports_its_own_length() {
    let mut node = etcd_sequence();
    node.apply(Command::LeaseGrant {
        id: 5,
        ttl_secs: 60,
    });
    node.put_lease("leased", "v", 5);
    let bytes = node.store.snapshot().to_vec();
    // Every padding a 512-byte alignment can add, including none.
    for padding in [0usize, 1, 3, 4, 5, 511] {
        let mut padded = bytes.clone();
        padded.resize(bytes.len() + padding, 0);
        let (restored, len) = Store::restore_padded(&padded, StoreConfig::default()).unwrap();
        assert_eq!(len, bytes.len(), "padding {padding}");
        assert_eq!(restored.snapshot().to_vec(), bytes, "padding {padding}");
        assert_eq!(restored.lease(5), node.store.lease(5));
    }
}

#[test]
fn a_padded_snapshot_refuses_damage_and_non_zero_padding() {
    let bytes = etcd_sequence().store.snapshot().to_vec();
    let mut padded = bytes.clone();
    padded.resize(bytes.len() + 100, 0);
    for cut in 0..bytes.len() {
        assert!(Store::restore_padded(&bytes[..cut], StoreConfig::default()).is_err());
    }
    let mut flipped = padded.clone();
    flipped[30] ^= 1;
    assert!(Store::restore_padded(&flipped, StoreConfig::default()).is_err());
    let mut bad_crc = padded.clone();
    bad_crc[bytes.len() - 1] ^= 1;
    assert!(matches!(
        Store::restore_padded(&bad_crc, StoreConfig::default()),
        Err(SnapshotError::Checksum { .. })
    ));
    let mut dirty = padded.clone();
    dirty[bytes.len() + 50] = 7;
    let error = Store::restore_padded(&dirty, StoreConfig::default()).unwrap_err();
    assert!(
        error
            .to_string()
            .contains(&format!("offset {}", bytes.len() + 50)),
        "{error}"
    );
    assert_eq!(
        Store::restore_padded(b"BALLOT", StoreConfig::default()).err(),
        Some(SnapshotError::BadMagic)
    );
}

/// Re-signs a body so that corruption behind a valid checksum is exercised.
fn with_crc(mut body: Vec<u8>) -> Vec<u8> {
    let crc = crc32c::crc32c(&body);
    body.extend_from_slice(&crc.to_le_bytes());
    body
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn decoding_arbitrary_commands_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = Command::decode(Bytes::from(bytes));
    }

    #[test]
    fn restoring_corrupt_snapshots_never_panics(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let node = etcd_sequence();
        let full = node.store.snapshot().to_vec();
        let mut body = full[..full.len() - 4].to_vec();
        for (at, byte) in edits {
            let position = at.index(body.len());
            body[position] = byte;
        }
        let body_len = body.len();
        body.truncate(cut.index(body_len) + 1);
        let signed = with_crc(body);
        let _ = Store::restore(&signed, StoreConfig::default());
        let _ = Store::restore_padded(&signed, StoreConfig::default());
    }
}

/// The changes etcd's `key` bucket holds after [`etcd_sequence`], one per revision.
fn etcd_sequence_changes() -> Vec<ballot_mvcc::RecordedChange> {
    use ballot_mvcc::{RecordedChange, RecordedPut};
    let put = |key: &str, main, sub, create_revision, version, value: &str| RecordedChange {
        key: b(key),
        main,
        sub,
        put: Some(RecordedPut {
            create_revision,
            version,
            lease: 0,
            value: b(value),
        }),
    };
    // In bucket order (by revision), which is not the order the import needs.
    vec![
        put("a", 2, 0, 2, 1, "1"),
        put("b", 3, 0, 3, 1, "2"),
        put("a", 4, 0, 2, 2, "3"),
        RecordedChange {
            key: b("b"),
            main: 5,
            sub: 0,
            put: None,
        },
        put("c", 6, 0, 6, 1, "4"),
        put("d", 7, 0, 7, 1, "5"),
        put("e", 7, 1, 7, 1, "6"),
    ]
}

#[test]
fn an_import_of_etcds_records_equals_the_store_that_made_them() {
    use ballot_mvcc::StoreRecords;
    let node = etcd_sequence();
    let state = StoreRecords {
        last_applied: 0,
        current_revision: 7,
        compact_revision: -1,
        scheduled_compact_revision: -1,
        leases: vec![],
        changes: etcd_sequence_changes(),
    };
    let imported = Store::import(state.clone(), StoreConfig::default()).unwrap();
    assert_eq!(imported.current_revision(), 7);
    assert_eq!(imported.last_applied(), 0);
    assert_eq!(imported.hash_kv(0), node.store.hash_kv(0));
    assert_eq!(
        imported.hash_kv(0).unwrap().hash,
        301_876_649,
        "etcd's own hash"
    );
    let all = range_req("a", "z");
    assert_eq!(imported.range(&all), node.store.range(&all));
    assert_eq!(
        imported.events_since(1, 100, b"\0", b"\0", 100).unwrap(),
        node.store.events_since(1, 100, b"\0", b"\0", 100).unwrap()
    );

    // A compaction etcd scheduled but may not have finished is done by the import.
    let mut compacted = etcd_sequence();
    compacted.compact(4);
    let imported = Store::import(
        StoreRecords {
            scheduled_compact_revision: 4,
            ..state.clone()
        },
        StoreConfig::default(),
    )
    .unwrap();
    assert_eq!(imported.compact_revision(), 4);
    assert_eq!(imported.hash_kv(0), compacted.store.hash_kv(0));

    // Records that no store could have made are refused, never trusted.
    let refused = |state: StoreRecords| Store::import(state, StoreConfig::default()).unwrap_err();
    let mut twice = state.clone();
    twice.changes.push(twice.changes[0].clone());
    assert!(matches!(refused(twice), SnapshotError::Corrupt(_)));
    let mut shared = state.clone();
    shared.changes[1].main = 2;
    assert!(matches!(refused(shared), SnapshotError::Corrupt(_)));
    let mut future = state.clone();
    future.current_revision = 6;
    assert!(matches!(refused(future), SnapshotError::Corrupt(_)));
    let mut orphan = state.clone();
    if let Some(put) = &mut orphan.changes[6].put {
        put.lease = 42;
    }
    assert!(matches!(refused(orphan), SnapshotError::Corrupt(_)));
    let mut leased = state;
    if let Some(put) = &mut leased.changes[6].put {
        put.lease = 42;
    }
    leased.leases = vec![(42, 60, 0)];
    let with_lease = Store::import(leased, StoreConfig::default()).unwrap();
    assert_eq!(
        with_lease.lease(42).map(|lease| lease.keys),
        Some(vec![b("e")])
    );
}

#[test]
fn a_stores_records_import_into_the_same_store() {
    let mut node = with_lease_and_compaction();
    node.delete("c", "");
    let records = node.store.snapshot_state().records();
    assert!(
        records
            .changes
            .windows(2)
            .all(|pair| (pair[0].main, pair[0].sub) < (pair[1].main, pair[1].sub)),
        "in revision order, as etcd's key bucket"
    );
    let imported = Store::import(records, StoreConfig::default()).unwrap();
    assert_eq!(imported.snapshot(), node.store.snapshot(), "the same state");
}
