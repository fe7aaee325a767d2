//! Leases: the replicated table and the leader's clock.

mod common;

use ballot_mvcc::{
    ApplyOutcome, Command, LEASE_TTL_MAX_SECS, LeaseClock, LeaseClockConfig, MvccError, StoreConfig,
};
use ballot_proto::mvccpb::event::EventType;
use common::*;

fn grant(node: &mut Node, id: i64, ttl_secs: i64) -> Result<i64, MvccError> {
    match node.apply(Command::LeaseGrant { id, ttl_secs }).outcome {
        ApplyOutcome::LeaseGrant(response) => {
            assert_eq!(response.id, id);
            Ok(response.ttl)
        }
        ApplyOutcome::Error(error) => Err(error),
        other => panic!("grant answered {other:?}"),
    }
}

#[test]
fn grant_rules() {
    let mut node = Node::with(StoreConfig {
        lease_ttl_min_secs: 5,
    });
    assert_eq!(grant(&mut node, 1, 2), Ok(5), "TTL raised to the minimum");
    assert_eq!(grant(&mut node, 2, 60), Ok(60));
    assert_eq!(grant(&mut node, 1, 60), Err(MvccError::LeaseExists));
    assert_eq!(grant(&mut node, 0, 60), Err(MvccError::LeaseNotFound));
    assert_eq!(
        grant(&mut node, 3, LEASE_TTL_MAX_SECS + 1),
        Err(MvccError::LeaseTtlTooLarge)
    );
    assert_eq!(
        grant(&mut node, 3, LEASE_TTL_MAX_SECS),
        Ok(LEASE_TTL_MAX_SECS)
    );
    assert_eq!(
        grant(&mut node, -4, 10),
        Ok(10),
        "any non-zero ID is accepted"
    );
    let ids: Vec<i64> = node
        .store
        .lease_list()
        .leases
        .iter()
        .map(|l| l.id)
        .collect();
    assert_eq!(ids, [-4, 1, 2, 3]);
    assert_eq!(
        node.store.current_revision(),
        1,
        "grants do not advance the revision"
    );
}

#[test]
fn revoke_deletes_attached_keys_in_one_revision() {
    let mut node = Node::new();
    grant(&mut node, 9, 60).unwrap();
    node.put_lease("b", "1", 9);
    node.put_lease("a", "1", 9);
    node.put("c", "1");
    let ttl = node.store.lease_time_to_live(9, true);
    assert_eq!((ttl.ttl, ttl.granted_ttl), (60, 60));
    assert_eq!(ttl.keys, [b("a"), b("b")]);
    let before = node.store.current_revision();
    let applied = node.apply(Command::LeaseRevoke { id: 9 });
    assert!(matches!(applied.outcome, ApplyOutcome::LeaseRevoke(_)));
    assert_eq!(applied.revision, before + 1);
    let deleted: Vec<_> = applied
        .events
        .iter()
        .map(|e| (e.r#type, e.kv.as_ref().unwrap().key.clone()))
        .collect();
    assert_eq!(
        deleted,
        [
            (EventType::Delete as i32, b("a")),
            (EventType::Delete as i32, b("b"))
        ]
    );
    assert!(node.get("a").is_none() && node.get("b").is_none());
    assert!(node.get("c").is_some());
    assert_eq!(
        node.store.lease_time_to_live(9, true).ttl,
        -1,
        "unknown lease: TTL -1"
    );
    assert_eq!(
        outcome_error(&node.apply(Command::LeaseRevoke { id: 9 })),
        Some(MvccError::LeaseNotFound)
    );
    // A lease without keys is revoked without a new revision.
    grant(&mut node, 10, 60).unwrap();
    let applied = node.apply(Command::LeaseRevoke { id: 10 });
    assert_eq!(applied.revision, before + 1);
}

#[test]
fn keys_move_between_leases_and_detach_on_delete() {
    let mut node = Node::new();
    grant(&mut node, 1, 60).unwrap();
    grant(&mut node, 2, 60).unwrap();
    node.put_lease("k", "v", 1);
    node.put_lease("k", "v", 2);
    assert!(node.store.lease(1).unwrap().keys.is_empty());
    assert_eq!(node.store.lease(2).unwrap().keys, [b("k")]);
    node.delete("k", "");
    assert!(node.store.lease(2).unwrap().keys.is_empty());
    node.put_lease("k", "v", 2);
    node.put("k", "v");
    assert!(
        node.store.lease(2).unwrap().keys.is_empty(),
        "a put without lease detaches"
    );
    // Revoking lease 2 now must not touch k.
    node.apply(Command::LeaseRevoke { id: 2 });
    assert!(node.get("k").is_some());
}

#[test]
fn checkpoint_records_remaining_ttl() {
    let mut node = Node::new();
    grant(&mut node, 1, 600).unwrap();
    node.apply(Command::LeaseCheckpoint {
        id: 1,
        remaining_ttl_secs: 123,
    });
    assert_eq!(node.store.lease_time_to_live(1, false).ttl, 123);
    assert_eq!(node.store.lease_ttls(), [(1, 600, 123)]);
    // Unknown leases are ignored, as in etcd.
    let applied = node.apply(Command::LeaseCheckpoint {
        id: 77,
        remaining_ttl_secs: 1,
    });
    assert!(matches!(applied.outcome, ApplyOutcome::LeaseCheckpoint(_)));
}

#[test]
fn two_replicas_applying_the_same_log_are_identical() {
    let commands = vec![
        Command::LeaseGrant { id: 5, ttl_secs: 1 },
        Command::Put(ballot_proto::etcdserverpb::PutRequest {
            lease: 5,
            ..put_req("a", "1")
        }),
        Command::LeaseGrant {
            id: 6,
            ttl_secs: 30,
        },
        Command::Put(ballot_proto::etcdserverpb::PutRequest {
            lease: 6,
            ..put_req("b", "1")
        }),
        Command::LeaseCheckpoint {
            id: 6,
            remaining_ttl_secs: 12,
        },
        Command::LeaseRevoke { id: 5 },
        Command::Put(put_req("c", "1")),
    ];
    let mut first = Node::new();
    let mut second = Node::new();
    for command in &commands {
        first.apply(command.clone());
    }
    for command in &commands {
        second.apply(command.clone());
    }
    assert_eq!(first.store.hash_kv(0), second.store.hash_kv(0));
    assert_eq!(first.store.snapshot(), second.store.snapshot());
    assert_eq!(first.store.lease_ttls(), [(6, 30, 12)]);
}

#[test]
fn clock_expires_renews_and_reports_remaining() {
    let mut clock = LeaseClock::new(LeaseClockConfig::default());
    clock.grant(1, 10, 1_000);
    clock.grant(2, 5, 1_000);
    assert_eq!(clock.remaining_secs(1, 1_000), Some(10));
    assert_eq!(
        clock.remaining_secs(1, 1_001),
        Some(9),
        "truncated like etcd"
    );
    assert_eq!(clock.next_deadline_ms(), Some(6_000));
    assert!(clock.expired(5_999, 10).is_empty());
    assert_eq!(clock.keep_alive(1, 5_000), Some(10));
    assert_eq!(clock.expired(6_000, 10), [2]);
    // Handed out once; again only after the retry interval.
    assert!(clock.expired(6_500, 10).is_empty());
    assert_eq!(clock.expired(9_000, 10), [2]);
    assert_eq!(
        clock.keep_alive(2, 9_000),
        None,
        "an expired lease cannot be renewed"
    );
    clock.revoke(2);
    assert_eq!(clock.keep_alive(2, 9_000), None);
    assert_eq!(clock.remaining_secs(2, 9_000), None);
    assert_eq!(clock.expired(15_000, 10), [1]);
    assert_eq!(
        clock.expired(30_000, 0),
        Vec::<i64>::new(),
        "batch bound respected"
    );
}

#[test]
fn promotion_extends_remaining_ttls_and_demotion_forgets() {
    let mut clock = LeaseClock::new(LeaseClockConfig::default());
    // Lease 1 never checkpointed: full TTL; lease 2 checkpointed at 4 s.
    clock.promote(100_000, 1_000, &[(1, 10, 0), (2, 60, 4)]);
    assert_eq!(clock.remaining_secs(1, 100_000), Some(11));
    assert_eq!(clock.remaining_secs(2, 100_000), Some(5));
    assert!(clock.expired(104_999, 10).is_empty());
    assert_eq!(clock.expired(105_000, 10), [2]);
    clock.demote();
    assert!(clock.is_empty());
    assert_eq!(clock.keep_alive(1, 105_000), None);
}

#[test]
fn checkpoints_are_scheduled_and_refreshed_after_renewal() {
    let mut clock = LeaseClock::new(LeaseClockConfig {
        checkpoint_interval_ms: 10_000,
        ..LeaseClockConfig::default()
    });
    clock.grant(1, 60, 0);
    clock.grant(2, 5, 0); // shorter than the interval: never checkpointed
    assert!(clock.checkpoints(9_999, 10).is_empty());
    assert_eq!(clock.checkpoints(10_000, 10), [(1, 50)]);
    assert!(clock.checkpoints(15_000, 10).is_empty());
    clock.keep_alive(1, 15_000);
    assert_eq!(
        clock.checkpoints(15_000, 10),
        [(1, 60)],
        "renewal re-checkpoints soon"
    );
}
