//! Watch hub: ordering, filtering, compaction, slow watchers, progress.

mod common;

use ballot_mvcc::{Applied, WATCH_ID_DUPLICATE, WATCH_RANGE_EMPTY, WatchHub, WatchStream};
use ballot_proto::etcdserverpb::{
    TxnRequest, WatchCreateRequest, WatchResponse, watch_create_request::FilterType,
};
use ballot_proto::mvccpb::event::EventType;
use common::*;

fn create(stream: &WatchStream, key: &str, end: &str, start_revision: i64) -> i64 {
    stream.create(&WatchCreateRequest {
        key: b(key),
        range_end: b(end),
        start_revision,
        ..WatchCreateRequest::default()
    })
}

/// Applies and notifies, as the server's apply loop does.
fn apply_notify(node: &mut Node, hub: &WatchHub, applied: Applied) {
    if !applied.events.is_empty() {
        hub.notify(applied.revision, &applied.events);
    }
    let _ = node;
}

fn put(node: &mut Node, hub: &WatchHub, key: &str, value: &str) {
    let applied = node.put(key, value);
    apply_notify(node, hub, applied);
}

/// An event reduced to (type, key, mod_revision).
type Seen = (i32, String, i64);

/// (watch_id, events) of every response that carries events.
fn events(responses: &[WatchResponse]) -> Vec<(i64, Vec<Seen>)> {
    responses
        .iter()
        .filter(|r| !r.events.is_empty())
        .map(|r| {
            let list = r
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
            (r.watch_id, list)
        })
        .collect()
}

#[test]
fn created_first_then_events_in_order_by_revision() {
    let mut node = Node::new();
    let hub = WatchHub::new(node.store.current_revision());
    let stream = hub.open_stream(100);
    assert_eq!(create(&stream, "a", "", 0), 0);
    assert_eq!(create(&stream, "a", "\0", 0), 1);
    put(&mut node, &hub, "a", "1");
    put(&mut node, &hub, "b", "1");
    let applied = node.apply(ballot_mvcc::Command::Txn(TxnRequest {
        compare: vec![],
        success: vec![op_put("c", "1"), op_put("a", "2")],
        failure: vec![],
    }));
    apply_notify(&mut node, &hub, applied);
    let responses = stream.poll(&node.store, 1000);
    assert!(responses[0].created && responses[0].watch_id == 0);
    assert!(responses[1].created && responses[1].watch_id == 1);
    assert_eq!(responses[0].header.as_ref().unwrap().revision, 1);
    let put = EventType::Put as i32;
    assert_eq!(
        events(&responses),
        vec![
            (0, vec![(put, "a".into(), 2)]),
            (1, vec![(put, "a".into(), 2)]),
            (1, vec![(put, "b".into(), 3)]),
            // Both events of revision 4 in one response; watchers of one
            // revision are served in watch-ID order.
            (0, vec![(put, "a".into(), 4)]),
            (1, vec![(put, "c".into(), 4), (put, "a".into(), 4)]),
        ]
    );
    assert!(stream.poll(&node.store, 1000).is_empty());
}

#[test]
fn filters_and_prev_kv() {
    let mut node = Node::new();
    let hub = WatchHub::new(1);
    let stream = hub.open_stream(100);
    let no_put = stream.create(&WatchCreateRequest {
        key: b("k"),
        filters: vec![FilterType::Noput as i32],
        ..WatchCreateRequest::default()
    });
    let no_delete_prev = stream.create(&WatchCreateRequest {
        key: b("k"),
        filters: vec![FilterType::Nodelete as i32],
        prev_kv: true,
        ..WatchCreateRequest::default()
    });
    put(&mut node, &hub, "k", "1");
    put(&mut node, &hub, "k", "2");
    let applied = node.delete("k", "");
    apply_notify(&mut node, &hub, applied);
    let responses = stream.poll(&node.store, 1000);
    let for_watch = |id: i64| -> Vec<_> {
        responses
            .iter()
            .filter(|r| r.watch_id == id)
            .flat_map(|r| r.events.clone())
            .collect()
    };
    let deletes = for_watch(no_put);
    assert_eq!(deletes.len(), 1);
    assert_eq!(deletes[0].r#type, EventType::Delete as i32);
    assert!(deletes[0].prev_kv.is_none(), "prev_kv only when asked");
    let puts = for_watch(no_delete_prev);
    assert_eq!(puts.len(), 2);
    assert!(puts[0].prev_kv.is_none());
    assert_eq!(puts[1].prev_kv.as_ref().unwrap().value, b("1"));
}

#[test]
fn historic_start_catches_up_and_compacted_start_cancels() {
    let mut node = Node::new();
    for value in ["1", "2", "3", "4"] {
        node.put("k", value); // revisions 2..=5
    }
    let hub = WatchHub::new(node.store.current_revision());
    node.compact(3);
    let stream = hub.open_stream(100);
    let from_three = create(&stream, "k", "", 3);
    let from_two = create(&stream, "k", "", 2);
    let responses = stream.poll(&node.store, 1000);
    assert_eq!(
        events(&responses),
        vec![(
            from_three,
            vec![
                (EventType::Put as i32, "k".into(), 3),
                (EventType::Put as i32, "k".into(), 4),
                (EventType::Put as i32, "k".into(), 5),
            ]
        )]
    );
    let canceled = responses
        .iter()
        .find(|r| r.watch_id == from_two && r.canceled)
        .unwrap();
    assert_eq!(canceled.compact_revision, 3);
    // The canceled watcher is gone; the other is synced and gets new events.
    put(&mut node, &hub, "k", "5");
    assert_eq!(
        events(&stream.poll(&node.store, 1000)),
        vec![(from_three, vec![(0, "k".into(), 6)])]
    );
}

/// A negative start revision as etcd 3.4.23 takes it: below the compact revision (-1 before
/// the first compaction) it is canceled as compacted; -1 before the first compaction reads no
/// history (etcd's read of it finds nothing) and goes on from after the current revision.
#[test]
fn negative_starts_are_compacted_or_from_the_beginning_as_in_etcd() {
    let mut node = Node::new();
    node.put("k", "1"); // 2
    let hub = WatchHub::new(node.store.current_revision());
    let stream = hub.open_stream(100);
    let minus_five = create(&stream, "k", "", -5);
    let minus_one = create(&stream, "k", "", -1);
    let responses = stream.poll(&node.store, 1000);
    let canceled = responses
        .iter()
        .find(|r| r.watch_id == minus_five && r.canceled)
        .expect("-5 is canceled");
    assert_eq!(canceled.compact_revision, -1);
    assert_eq!(
        canceled.cancel_reason,
        "etcdserver: mvcc: required revision has been compacted"
    );
    assert!(events(&responses).is_empty(), "no history for -1");
    put(&mut node, &hub, "k", "2"); // 3
    assert_eq!(
        events(&stream.poll(&node.store, 1000)),
        vec![(minus_one, vec![(EventType::Put as i32, "k".into(), 3)])]
    );

    node.compact(2);
    let after_compaction = create(&stream, "k", "", -1);
    let responses = stream.poll(&node.store, 1000);
    let canceled = responses
        .iter()
        .find(|r| r.watch_id == after_compaction && r.canceled)
        .expect("-1 is below the compact revision now");
    assert_eq!(canceled.compact_revision, 2);
}

#[test]
fn future_start_waits_for_its_revision() {
    let mut node = Node::new();
    let hub = WatchHub::new(1);
    let stream = hub.open_stream(100);
    let id = create(&stream, "k", "", 4);
    put(&mut node, &hub, "k", "a"); // 2
    put(&mut node, &hub, "k", "b"); // 3
    put(&mut node, &hub, "k", "c"); // 4
    let revisions: Vec<i64> = events(&stream.poll(&node.store, 1000))
        .into_iter()
        .flat_map(|(watch, list)| {
            assert_eq!(watch, id);
            list.into_iter().map(|(_, _, revision)| revision)
        })
        .collect();
    assert_eq!(revisions, [4]);
}

#[test]
fn slow_watcher_falls_behind_and_catches_up_without_loss() {
    let mut node = Node::new();
    let hub = WatchHub::new(1);
    let stream = hub.open_stream(3); // room for three events
    let id = create(&stream, "k", "\0", 0);
    for i in 0..50 {
        put(&mut node, &hub, &format!("k{i:02}"), "v");
    }
    let mut revisions = Vec::new();
    let mut polls = 0;
    loop {
        let responses = stream.poll(&node.store, 4);
        if responses.is_empty() {
            break;
        }
        let queued: usize = responses.iter().map(|r| r.events.len()).sum();
        assert!(
            queued <= 4,
            "a poll hands out a bounded number of events, got {queued}"
        );
        for (watch, list) in events(&responses) {
            assert_eq!(watch, id);
            revisions.extend(list.into_iter().map(|(_, _, revision)| revision));
        }
        polls += 1;
        assert!(polls < 100, "catch-up must finish");
    }
    assert_eq!(revisions, (2..=51).collect::<Vec<i64>>());
    // Synced again: the next event arrives by fan-out.
    put(&mut node, &hub, "k99", "v");
    assert_eq!(
        events(&stream.poll(&node.store, 4)),
        vec![(id, vec![(0, "k99".into(), 52)])]
    );
}

#[test]
fn progress_request_waits_until_synced() {
    let mut node = Node::new();
    let hub = WatchHub::new(1);
    let stream = hub.open_stream(1);
    create(&stream, "k", "", 0);
    put(&mut node, &hub, "k", "1"); // queued
    put(&mut node, &hub, "k", "2"); // does not fit: unsynced
    stream.request_progress();
    let first = stream.poll(&node.store, 1);
    assert!(first.iter().all(|r| r.watch_id != -1), "not synced yet");
    let mut progress = None;
    for _ in 0..5 {
        for response in stream.poll(&node.store, 1) {
            if response.watch_id == -1 {
                progress = Some(response.header.unwrap().revision);
            }
        }
    }
    assert_eq!(progress, Some(3));
    // When synced, a request is answered at once.
    stream.request_progress();
    let now = stream.poll(&node.store, 1);
    assert_eq!(now.len(), 1);
    assert_eq!(
        (now[0].watch_id, now[0].header.as_ref().unwrap().revision),
        (-1, 3)
    );
}

#[test]
fn progress_notify_tick() {
    let mut node = Node::new();
    let hub = WatchHub::new(1);
    let stream = hub.open_stream(10);
    let id = stream.create(&WatchCreateRequest {
        key: b("k"),
        progress_notify: true,
        ..WatchCreateRequest::default()
    });
    stream.poll(&node.store, 10);
    put(&mut node, &hub, "other", "1");
    stream.progress_tick();
    let responses = stream.poll(&node.store, 10);
    assert_eq!(responses.len(), 1);
    assert_eq!(
        (
            responses[0].watch_id,
            responses[0].header.as_ref().unwrap().revision
        ),
        (id, 2)
    );
    assert!(responses[0].events.is_empty());
    // A tick after events were sent is skipped.
    put(&mut node, &hub, "k", "1");
    stream.progress_tick();
    assert_eq!(stream.poll(&node.store, 10).len(), 1);
}

#[test]
fn cancel_ids_and_empty_ranges() {
    let node = Node::new();
    let hub = WatchHub::new(1);
    let stream = hub.open_stream(10);
    assert_eq!(create(&stream, "b", "a", 0), -1);
    let explicit = stream.create(&WatchCreateRequest {
        key: b("k"),
        watch_id: 7,
        ..WatchCreateRequest::default()
    });
    assert_eq!(explicit, 7);
    let duplicate = stream.create(&WatchCreateRequest {
        key: b("k"),
        watch_id: 7,
        ..WatchCreateRequest::default()
    });
    assert_eq!(duplicate, -1);
    assert_eq!(create(&stream, "k", "", 0), 0);
    assert!(stream.cancel(0));
    assert!(!stream.cancel(0));
    let responses = stream.poll(&node.store, 10);
    assert!(responses[0].created && responses[0].canceled);
    assert_eq!(responses[0].cancel_reason, WATCH_RANGE_EMPTY);
    assert_eq!(responses[2].cancel_reason, WATCH_ID_DUPLICATE);
    let canceled = responses.last().unwrap();
    assert!(canceled.canceled && !canceled.created && canceled.watch_id == 0);
    assert_eq!(hub.watcher_count(), 1);
    drop(stream);
    assert_eq!(hub.watcher_count(), 0);
}

#[tokio::test]
async fn changed_wakes_the_stream_task() {
    let mut node = Node::new();
    let hub = WatchHub::new(1);
    let stream = hub.open_stream(10);
    create(&stream, "k", "", 0);
    stream.poll(&node.store, 10);
    let applied = node.put("k", "1");
    let notifier = hub.clone();
    let events = applied.events.clone();
    let task = tokio::spawn(async move { notifier.notify(applied.revision, &events) });
    stream.changed().await;
    task.await.unwrap();
    assert_eq!(stream.poll(&node.store, 10).len(), 1);
}

#[test]
fn snapshot_install_makes_watchers_catch_up_or_cancel() {
    // A follower's hub is at revision 2 when a snapshot from the leader (at
    // revision 6) replaces its store.
    let mut follower = Node::new();
    let hub = WatchHub::new(1);
    let stream = hub.open_stream(100);
    let watch_k = create(&stream, "k", "", 0);
    put(&mut follower, &hub, "k", "1"); // 2
    stream.poll(&follower.store, 100);

    let mut leader = Node::new();
    for value in ["1", "2", "3", "4", "5"] {
        leader.put("k", value); // 2..=6
    }
    let installed = ballot_mvcc::Store::restore(
        &leader.store.snapshot(),
        ballot_mvcc::StoreConfig::default(),
    )
    .unwrap();
    hub.reset_to(installed.current_revision());
    let revisions: Vec<i64> = events(&stream.poll(&installed, 100))
        .into_iter()
        .flat_map(|(_, list)| list.into_iter().map(|(_, _, revision)| revision))
        .collect();
    assert_eq!(
        revisions,
        [3, 4, 5, 6],
        "caught up from the installed history"
    );

    // With the missed revisions compacted away, the watcher is canceled.
    leader.put("k", "6"); // 7
    leader.put("k", "7"); // 8
    leader.compact(8);
    let compacted = ballot_mvcc::Store::restore(
        &leader.store.snapshot(),
        ballot_mvcc::StoreConfig::default(),
    )
    .unwrap();
    hub.reset_to(compacted.current_revision());
    let responses = stream.poll(&compacted, 100);
    let cancel = responses.iter().find(|r| r.canceled).unwrap();
    assert_eq!((cancel.watch_id, cancel.compact_revision), (watch_k, 8));
    assert_eq!(hub.watcher_count(), 0);
}
