//! The API layer over a real gRPC connection, against the in-process [`LocalNode`]: etcd's
//! semantics, error strings and codes, and full headers on every response.

use std::time::Duration;

use ballot_proto::etcdserverpb::{
    AlarmRequest, AuthStatusRequest, AuthenticateRequest, CompactionRequest, Compare,
    DeleteRangeRequest, HashKvRequest, LeaseGrantRequest, LeaseKeepAliveRequest,
    LeaseLeasesRequest, LeaseRevokeRequest, LeaseTimeToLiveRequest, MemberAddRequest,
    MemberListRequest, MemberPromoteRequest, MemberRemoveRequest, MoveLeaderRequest, PutRequest,
    RangeRequest, RequestOp, ResponseHeader, SnapshotRequest, StatusRequest, TxnRequest,
    WatchCancelRequest, WatchCreateRequest, WatchProgressRequest, WatchRequest, WatchResponse,
    auth_client::AuthClient, cluster_client::ClusterClient, compare, kv_client::KvClient,
    lease_client::LeaseClient, maintenance_client::MaintenanceClient, request_op, response_op,
    watch_client::WatchClient, watch_create_request::FilterType, watch_request::RequestUnion,
};
use ballot_proto::mvccpb::event::EventType;
use bytes::Bytes;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Streaming};

use super::ApiOptions;
use super::testing::{CLUSTER_ID, MEMBER_ID, TestServer, test_options};

const WAIT: Duration = Duration::from_secs(5);

fn bytes(text: &str) -> Bytes {
    Bytes::from(text.to_owned())
}

fn put(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: bytes(key),
        value: bytes(value),
        ..PutRequest::default()
    }
}

fn get(key: &str) -> RangeRequest {
    RangeRequest {
        key: bytes(key),
        ..RangeRequest::default()
    }
}

/// Every response header must name the cluster, the member, the term and a revision.
fn assert_full_header(header: Option<ResponseHeader>, revision: i64) {
    let header = header.expect("every response carries a header");
    assert_eq!(header.cluster_id, CLUSTER_ID);
    assert_eq!(header.member_id, MEMBER_ID);
    assert_eq!(header.raft_term, 3);
    assert_eq!(header.revision, revision);
}

fn assert_status(result: Result<impl std::fmt::Debug, tonic::Status>, code: Code, message: &str) {
    match result {
        Ok(response) => panic!("expected {code:?} {message:?}, got {response:?}"),
        Err(status) => {
            assert_eq!(status.code(), code, "{status:?}");
            assert_eq!(status.message(), message);
        }
    }
}

async fn server() -> (TestServer, Channel) {
    let server = TestServer::start(test_options()).await;
    let channel = server.channel().await;
    (server, channel)
}

#[tokio::test]
async fn put_range_delete_carry_full_headers_and_revisions() {
    let (_server, channel) = server().await;
    let mut kv = KvClient::new(channel);
    let first = kv.put(put("a", "1")).await.expect("put").into_inner();
    assert_full_header(first.header, 2);
    kv.put(put("ab", "2")).await.expect("put");
    let third = kv
        .put(PutRequest {
            prev_kv: true,
            ..put("a", "3")
        })
        .await
        .expect("put")
        .into_inner();
    assert_full_header(third.header, 4);
    assert_eq!(third.prev_kv.expect("prev_kv asked").value, bytes("1"));

    let range = kv.range(get("a")).await.expect("range").into_inner();
    assert_full_header(range.header, 4);
    assert_eq!(range.kvs.len(), 1);
    let kv_a = &range.kvs[0];
    assert_eq!(
        (kv_a.create_revision, kv_a.mod_revision, kv_a.version),
        (2, 4, 2)
    );

    let prefix = RangeRequest {
        key: bytes("a"),
        range_end: Bytes::from(ballot_mvcc::prefix_range_end(b"a")),
        serializable: true,
        ..RangeRequest::default()
    };
    let listed = kv.range(prefix.clone()).await.expect("range").into_inner();
    assert_eq!(listed.count, 2);

    let deleted = kv
        .delete_range(DeleteRangeRequest {
            key: bytes("a"),
            range_end: Bytes::from(ballot_mvcc::prefix_range_end(b"a")),
            prev_kv: true,
        })
        .await
        .expect("delete")
        .into_inner();
    assert_full_header(deleted.header, 5);
    assert_eq!(deleted.deleted, 2);
    assert_eq!(deleted.prev_kvs.len(), 2);
    let after = kv.range(prefix).await.expect("range").into_inner();
    assert_eq!(after.count, 0);
    // A historic read still sees the keys; its header carries the current revision.
    let historic = kv
        .range(RangeRequest {
            revision: 3,
            ..get("ab")
        })
        .await
        .expect("historic range")
        .into_inner();
    assert_full_header(historic.header, 5);
    assert_eq!(historic.kvs[0].value, bytes("2"));
}

#[tokio::test]
async fn txn_writes_and_read_only_txns_follow_etcd() {
    let (_server, channel) = server().await;
    let mut kv = KvClient::new(channel);
    kv.put(put("k", "v1")).await.expect("put");
    let compare_v1 = Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Value as i32,
        key: bytes("k"),
        target_union: Some(compare::TargetUnion::Value(bytes("v1"))),
        ..Compare::default()
    };
    let swap = TxnRequest {
        compare: vec![compare_v1.clone()],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(put("k", "v2"))),
        }],
        failure: vec![RequestOp {
            request: Some(request_op::Request::RequestRange(get("k"))),
        }],
    };
    let first = kv.txn(swap.clone()).await.expect("txn").into_inner();
    assert!(first.succeeded);
    assert_full_header(first.header, 3);
    match &first.responses[0].response {
        // Nested responses carry only the revision, as etcd's do.
        Some(response_op::Response::ResponsePut(put)) => assert_eq!(
            put.header,
            Some(ResponseHeader {
                revision: 3,
                ..ResponseHeader::default()
            })
        ),
        other => panic!("expected a put response, got {other:?}"),
    }
    let second = kv.txn(swap).await.expect("txn").into_inner();
    assert!(!second.succeeded, "the value is no longer v1");
    assert_full_header(second.header, 3);
    match &second.responses[0].response {
        Some(response_op::Response::ResponseRange(range)) => {
            assert_eq!(range.kvs[0].value, bytes("v2"));
        }
        other => panic!("expected a range response, got {other:?}"),
    }

    let too_many = TxnRequest {
        success: (0..129)
            .map(|i| RequestOp {
                request: Some(request_op::Request::RequestPut(put(&format!("k{i}"), "v"))),
            })
            .collect(),
        ..TxnRequest::default()
    };
    assert_status(
        kv.txn(too_many).await,
        Code::InvalidArgument,
        "etcdserver: too many operations in txn request",
    );
    let duplicate = TxnRequest {
        success: vec![
            RequestOp {
                request: Some(request_op::Request::RequestPut(put("d", "1"))),
            },
            RequestOp {
                request: Some(request_op::Request::RequestPut(put("d", "2"))),
            },
        ],
        ..TxnRequest::default()
    };
    assert_status(
        kv.txn(duplicate).await,
        Code::InvalidArgument,
        "etcdserver: duplicate key given in txn request",
    );
}

/// A Txn of `puts` puts and as many compares.
fn txn_of(puts: usize) -> TxnRequest {
    TxnRequest {
        compare: (0..puts)
            .map(|i| Compare {
                key: bytes(&format!("k{i}")),
                target: compare::CompareTarget::Version as i32,
                result: compare::CompareResult::Equal as i32,
                target_union: Some(compare::TargetUnion::Version(0)),
                ..Compare::default()
            })
            .collect(),
        success: (0..puts)
            .map(|i| RequestOp {
                request: Some(request_op::Request::RequestPut(put(&format!("k{i}"), "v"))),
            })
            .collect(),
        ..TxnRequest::default()
    }
}

#[tokio::test]
async fn the_txn_size_limit_is_the_members_max_txn_ops() {
    for limit in [3, 200] {
        let server = TestServer::start(ApiOptions {
            max_txn_ops: limit,
            ..test_options()
        })
        .await;
        let mut kv = KvClient::new(server.channel().await);
        assert_status(
            kv.txn(txn_of(limit + 1)).await,
            Code::InvalidArgument,
            "etcdserver: too many operations in txn request",
        );
        let taken = kv.txn(txn_of(limit)).await.expect("txn").into_inner();
        assert!(taken.succeeded, "limit {limit}");
        assert_eq!(taken.responses.len(), limit);
        let written = kv
            .range(RangeRequest {
                key: bytes("k"),
                range_end: Bytes::from(ballot_mvcc::prefix_range_end(b"k")),
                count_only: true,
                ..RangeRequest::default()
            })
            .await
            .expect("range")
            .into_inner();
        assert_eq!(written.count, limit as i64);
    }
}

#[tokio::test]
async fn bad_and_oversized_requests_get_etcd_errors_and_the_server_keeps_serving() {
    let (_server, channel) = server().await;
    let mut kv = KvClient::new(channel);
    assert_status(
        kv.range(get("")).await,
        Code::InvalidArgument,
        "etcdserver: key is not provided",
    );
    assert_status(
        kv.put(put("", "v")).await,
        Code::InvalidArgument,
        "etcdserver: key is not provided",
    );
    assert_status(
        kv.range(RangeRequest {
            revision: 100,
            ..get("a")
        })
        .await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
    );
    // Just at --max-request-bytes: refused by etcd's size check, not by the transport.
    let at_limit = "x".repeat(1536 * 1024);
    assert_status(
        kv.put(put("big", &at_limit)).await,
        Code::InvalidArgument,
        "etcdserver: request is too large",
    );
    // Beyond the gRPC receive limit (max request + 512 KiB): refused by the transport.
    let beyond = "x".repeat(2 * 1024 * 1024 + 1024);
    let refused = kv
        .put(put("big", &beyond))
        .await
        .expect_err("over the limit");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    // A value that fits goes through, and the store is unchanged by the refusals.
    let fits = "y".repeat(1024 * 1024);
    kv.put(put("big", &fits)).await.expect("a 1 MiB value fits");
    let range = kv.range(get("big")).await.expect("range").into_inner();
    assert_eq!(range.kvs[0].value.len(), fits.len());
    assert_full_header(range.header, 2);

    for _ in 0..3 {
        kv.put(put("c", "v")).await.expect("put");
    }
    kv.compact(CompactionRequest {
        revision: 4,
        physical: true,
    })
    .await
    .expect("compact");
    assert_status(
        kv.range(RangeRequest {
            revision: 3,
            ..get("c")
        })
        .await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    );
    assert_status(
        kv.compact(CompactionRequest {
            revision: 4,
            physical: false,
        })
        .await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    );
}

#[tokio::test]
async fn without_a_leader_requests_fail_fast_as_unavailable() {
    let (server, channel) = server().await;
    let mut kv = KvClient::new(channel.clone());
    kv.put(put("a", "1")).await.expect("put");
    server.node.set_leader(0);
    assert_status(
        kv.put(put("a", "2")).await,
        Code::Unavailable,
        "etcdserver: no leader",
    );
    assert_status(
        kv.range(get("a")).await,
        Code::Unavailable,
        "etcdserver: no leader",
    );
    let serializable = kv
        .range(RangeRequest {
            serializable: true,
            ..get("a")
        })
        .await
        .expect("serializable reads are served locally")
        .into_inner();
    assert_eq!(serializable.kvs[0].value, bytes("1"));
    let status = MaintenanceClient::new(channel)
        .status(StatusRequest {})
        .await
        .expect("status")
        .into_inner();
    assert_eq!(status.errors, vec!["etcdserver: no leader".to_owned()]);
}

/// A request carrying `hasleader: true` when `require_leader` (clientv3's `WithRequireLeader`).
fn with_require_leader<T>(message: T, require_leader: bool) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if require_leader {
        request.metadata_mut().insert(
            "hasleader",
            tonic::metadata::MetadataValue::from_static("true"),
        );
    }
    request
}

/// With `hasleader`, etcd's interceptors refuse any call on a member without a leader, the
/// serializable reads it would otherwise serve included, and end open Watch, LeaseKeepAlive
/// and election Observe streams once the leader has been gone for three election timeouts;
/// streams without it stay open.
#[tokio::test]
async fn calls_that_require_a_leader_fail_and_their_streams_end_without_one() {
    let (server, channel) = server().await;
    let mut kv = KvClient::new(channel.clone());
    kv.put(put("a", "1")).await.expect("put");
    let serializable = || RangeRequest {
        serializable: true,
        ..get("a")
    };
    kv.range(with_require_leader(serializable(), true))
        .await
        .expect("served while there is a leader");
    let id = LeaseClient::new(channel.clone())
        .lease_grant(LeaseGrantRequest {
            ttl: 60,
            ..LeaseGrantRequest::default()
        })
        .await
        .expect("grant")
        .into_inner()
        .id;
    let (keep_alive_requests, receiver) = mpsc::channel(4);
    let mut keep_alives = LeaseClient::new(channel.clone())
        .lease_keep_alive(with_require_leader(ReceiverStream::new(receiver), true))
        .await
        .expect("open keep-alive stream")
        .into_inner();
    keep_alive_requests
        .send(LeaseKeepAliveRequest { id })
        .await
        .expect("stream open");
    let renewed = tokio::time::timeout(WAIT, keep_alives.next()).await;
    assert!(matches!(renewed, Ok(Some(Ok(_)))), "{renewed:?}");
    let mut required = Watcher::open_with(channel.clone(), true).await;
    required.create(watch_key("w")).await;
    assert!(required.next().await.created);
    let mut plain = Watcher::open(channel.clone()).await;
    plain.create(watch_key("w")).await;
    assert!(plain.next().await.created);
    let mut observed =
        ballot_proto::v3electionpb::election_client::ElectionClient::new(channel.clone())
            .observe(with_require_leader(
                ballot_proto::v3electionpb::LeaderRequest { name: bytes("e") },
                true,
            ))
            .await
            .expect("open an observe stream")
            .into_inner();

    server.node.set_leader(0);
    assert_status(
        kv.range(with_require_leader(serializable(), true)).await,
        Code::Unavailable,
        "etcdserver: no leader",
    );
    assert_status(
        MaintenanceClient::new(channel.clone())
            .status(with_require_leader(StatusRequest {}, true))
            .await,
        Code::Unavailable,
        "etcdserver: no leader",
    );
    kv.range(serializable())
        .await
        .expect("served without hasleader");
    for ended in [
        tokio::time::timeout(WAIT, required.responses.next())
            .await
            .map(|next| next.map(|answer| answer.map(|_| ()))),
        tokio::time::timeout(WAIT, keep_alives.next())
            .await
            .map(|next| next.map(|answer| answer.map(|_| ()))),
        tokio::time::timeout(WAIT, observed.next())
            .await
            .map(|next| next.map(|answer| answer.map(|_| ()))),
    ] {
        match ended {
            Ok(Some(Err(status))) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                assert_eq!(status.message(), "etcdserver: no leader");
            }
            other => panic!("expected the stream to end with no leader, got {other:?}"),
        }
    }

    // The stream opened without `hasleader` is still there once a leader is back.
    server.node.set_leader(MEMBER_ID);
    kv.put(put("w", "after")).await.expect("put");
    let event = plain.next().await;
    assert_eq!(
        event.events[0].kv.as_ref().map(|kv| kv.value.clone()),
        Some(bytes("after"))
    );
}

/// `--grpc-keepalive-interval`/`--grpc-keepalive-timeout`: a client that answers no ping loses
/// its connection; one that answers (every gRPC client does) keeps it, watches included.
#[tokio::test]
async fn clients_that_answer_no_keepalive_ping_are_disconnected() {
    let server = TestServer::start(ApiOptions {
        grpc_keepalive: Some((Duration::from_millis(100), Duration::from_millis(100))),
        ..test_options()
    })
    .await;
    let channel = server.channel().await;
    let mut watcher = Watcher::open(channel.clone()).await;
    watcher.create(watch_key("alive")).await;
    assert!(watcher.next().await.created);

    // An HTTP/2 client that sends its preface and settings, then never answers anything.
    let mut silent = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    silent
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .expect("preface and settings");
    let closed = tokio::time::timeout(WAIT, async {
        let mut buffer = [0u8; 1024];
        loop {
            match silent.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the silent client's connection stayed open");

    // The gRPC client answered every ping meanwhile: its watch still delivers.
    KvClient::new(channel)
        .put(put("alive", "yes"))
        .await
        .expect("put");
    let event = watcher.next().await;
    assert_eq!(
        event.events[0].kv.as_ref().map(|kv| kv.value.clone()),
        Some(bytes("yes"))
    );
}

/// One open watch stream.
struct Watcher {
    requests: mpsc::Sender<WatchRequest>,
    responses: Streaming<WatchResponse>,
}

impl Watcher {
    async fn open(channel: Channel) -> Watcher {
        Watcher::open_with(channel, false).await
    }

    /// Opens a stream, with clientv3's `WithRequireLeader` metadata when `require_leader`.
    async fn open_with(channel: Channel, require_leader: bool) -> Watcher {
        let (requests, receiver) = mpsc::channel(16);
        let responses = WatchClient::new(channel)
            .max_decoding_message_size(64 * 1024 * 1024)
            .watch(with_require_leader(
                ReceiverStream::new(receiver),
                require_leader,
            ))
            .await
            .expect("open watch stream")
            .into_inner();
        Watcher {
            requests,
            responses,
        }
    }

    async fn send(&self, request: RequestUnion) {
        self.requests
            .send(WatchRequest {
                request_union: Some(request),
            })
            .await
            .expect("watch stream open");
    }

    async fn create(&self, create: WatchCreateRequest) {
        self.send(RequestUnion::CreateRequest(create)).await;
    }

    async fn next(&mut self) -> WatchResponse {
        match tokio::time::timeout(WAIT, self.responses.next()).await {
            Ok(Some(Ok(response))) => response,
            other => panic!("expected a watch response, got {other:?}"),
        }
    }
}

fn watch_key(key: &str) -> WatchCreateRequest {
    WatchCreateRequest {
        key: bytes(key),
        ..WatchCreateRequest::default()
    }
}

/// A client that closes its sending side after its create request keeps its watcher, as with
/// etcd, whose JSON gateway half-closes once it has read the request body.
#[tokio::test]
async fn a_watch_stream_goes_on_after_the_client_half_closes() {
    let (_server, channel) = server().await;
    let mut watcher = Watcher::open(channel.clone()).await;
    watcher.create(watch_key("half")).await;
    assert!(watcher.next().await.created);
    let Watcher {
        requests,
        mut responses,
    } = watcher;
    drop(requests);
    KvClient::new(channel)
        .put(put("half", "closed"))
        .await
        .expect("put");
    let event = match tokio::time::timeout(WAIT, responses.next()).await {
        Ok(Some(Ok(response))) => response,
        other => panic!("expected the event after a half-close, got {other:?}"),
    };
    assert_eq!(
        event.events[0].kv.as_ref().map(|kv| kv.value.clone()),
        Some(bytes("closed"))
    );
}

#[tokio::test]
async fn watch_creates_are_answered_in_order_before_events() {
    let (_server, channel) = server().await;
    let mut kv = KvClient::new(channel.clone());
    let mut watcher = Watcher::open(channel).await;
    watcher.create(watch_key("a")).await;
    watcher
        .create(WatchCreateRequest {
            key: bytes("b"),
            range_end: bytes("c"),
            prev_kv: true,
            filters: vec![FilterType::Nodelete as i32],
            ..WatchCreateRequest::default()
        })
        .await;
    let first = watcher.next().await;
    let second = watcher.next().await;
    assert!(first.created && second.created);
    assert_eq!((first.watch_id, second.watch_id), (0, 1));
    assert_full_header(first.header, 1);

    kv.put(put("a", "1")).await.expect("put");
    kv.put(put("b1", "x")).await.expect("put");
    kv.put(put("b1", "y")).await.expect("put");
    kv.delete_range(DeleteRangeRequest {
        key: bytes("b1"),
        ..DeleteRangeRequest::default()
    })
    .await
    .expect("delete");
    kv.delete_range(DeleteRangeRequest {
        key: bytes("a"),
        ..DeleteRangeRequest::default()
    })
    .await
    .expect("delete");

    let event_a = watcher.next().await;
    assert_eq!(event_a.watch_id, 0);
    assert_full_header(event_a.header, 2);
    assert_eq!(event_a.events.len(), 1);
    assert_eq!(
        event_a.events[0].kv.as_ref().map(|kv| kv.value.clone()),
        Some(bytes("1"))
    );
    assert!(event_a.events[0].prev_kv.is_none(), "prev_kv was not asked");

    let b_put = watcher.next().await;
    assert_eq!(b_put.watch_id, 1);
    assert!(b_put.events[0].prev_kv.is_none(), "b1 did not exist before");
    let b_put_again = watcher.next().await;
    assert_eq!(
        b_put_again.events[0]
            .prev_kv
            .as_ref()
            .map(|kv| kv.value.clone()),
        Some(bytes("x"))
    );
    // The delete of b1 is filtered out; the next response is the delete of a.
    let delete_a = watcher.next().await;
    assert_eq!(delete_a.watch_id, 0);
    assert_eq!(delete_a.events[0].r#type, EventType::Delete as i32);
    assert_eq!(
        delete_a.events[0].kv.as_ref().map(|kv| kv.mod_revision),
        Some(6)
    );

    watcher
        .send(RequestUnion::CancelRequest(WatchCancelRequest {
            watch_id: 0,
        }))
        .await;
    let canceled = watcher.next().await;
    assert!(canceled.canceled);
    assert_eq!(canceled.watch_id, 0);
    watcher
        .send(RequestUnion::ProgressRequest(WatchProgressRequest {}))
        .await;
    let progress = watcher.next().await;
    assert_eq!(progress.watch_id, -1);
    assert_full_header(progress.header, 6);
}

#[tokio::test]
async fn watch_from_history_and_from_a_compacted_revision() {
    let (_server, channel) = server().await;
    let mut kv = KvClient::new(channel.clone());
    for value in ["1", "2", "3", "4"] {
        kv.put(put("h", value)).await.expect("put");
    }
    let mut watcher = Watcher::open(channel).await;
    watcher
        .create(WatchCreateRequest {
            start_revision: 3,
            ..watch_key("h")
        })
        .await;
    assert!(watcher.next().await.created);
    let mut values = Vec::new();
    while values.len() < 3 {
        let response = watcher.next().await;
        values.extend(
            response
                .events
                .iter()
                .filter_map(|event| event.kv.as_ref().map(|kv| kv.value.clone())),
        );
    }
    assert_eq!(values, vec![bytes("2"), bytes("3"), bytes("4")]);

    kv.compact(CompactionRequest {
        revision: 4,
        physical: false,
    })
    .await
    .expect("compact");
    watcher
        .create(WatchCreateRequest {
            start_revision: 2,
            watch_id: 7,
            ..watch_key("h")
        })
        .await;
    let created = watcher.next().await;
    assert!(created.created);
    assert_eq!(created.watch_id, 7);
    let canceled = watcher.next().await;
    assert_eq!(canceled.watch_id, 7);
    assert!(canceled.canceled);
    assert_eq!(canceled.compact_revision, 4);
}

/// A Txn putting `keys` to `value` in one revision.
fn put_all(keys: &[String], value: &str) -> TxnRequest {
    TxnRequest {
        success: keys
            .iter()
            .map(|key| RequestOp {
                request: Some(request_op::Request::RequestPut(put(key, value))),
            })
            .collect(),
        ..TxnRequest::default()
    }
}

/// Reads responses until both watchers (IDs 0 and 1) have seen `events_each` events.
async fn collect_two_watchers(
    watcher: &mut Watcher,
    events_each: usize,
    revision: i64,
) -> (Vec<WatchResponse>, Vec<WatchResponse>) {
    let mut fragmented: Vec<WatchResponse> = Vec::new();
    let mut whole: Vec<WatchResponse> = Vec::new();
    let events = |responses: &[WatchResponse]| -> usize {
        responses.iter().map(|response| response.events.len()).sum()
    };
    while events(&fragmented) < events_each || events(&whole) < events_each {
        let response = watcher.next().await;
        assert_full_header(response.header, revision);
        match response.watch_id {
            0 => fragmented.push(response),
            1 => whole.push(response),
            other => panic!("unexpected watch ID {other}"),
        }
    }
    assert_eq!(events(&fragmented), events_each);
    assert_eq!(events(&whole), events_each);
    (fragmented, whole)
}

#[tokio::test]
async fn large_revisions_are_fragmented_only_when_asked() {
    use prost::Message;
    let (_server, channel) = server().await;
    let mut kv = KvClient::new(channel.clone());
    let limit = test_options().watch_fragment_bytes();
    assert_eq!(limit, 2 * 1024 * 1024, "etcd: max request bytes + 512 KiB");
    // Many keys in one revision: 64 puts of 20 KiB are a 1.3 MiB request (under
    // --max-request-bytes), and with previous values the watch response is about 2.6 MiB.
    let keys: Vec<String> = (0..64).map(|i| format!("f{i:02}")).collect();
    let value = "v".repeat(20 * 1024);
    kv.txn(put_all(&keys, &value)).await.expect("first values");
    let mut watcher = Watcher::open(channel).await;
    for fragment in [true, false] {
        watcher
            .create(WatchCreateRequest {
                key: bytes("f"),
                range_end: bytes("g"),
                prev_kv: true,
                fragment,
                ..WatchCreateRequest::default()
            })
            .await;
        assert!(watcher.next().await.created);
    }
    kv.txn(put_all(&keys, &value))
        .await
        .expect("a 1.3 MiB txn fits");
    let (fragmented, whole) = collect_two_watchers(&mut watcher, keys.len(), 3).await;
    assert_eq!(whole.len(), 1, "without `fragment` a revision stays whole");
    assert!(!whole[0].fragment);
    assert!(whole[0].encoded_len() > limit);
    assert!(fragmented.len() >= 2, "{} parts", fragmented.len());
    let (last, parts) = fragmented.split_last().expect("parts");
    assert!(parts.iter().all(|part| part.fragment));
    assert!(!last.fragment);
    for part in &fragmented {
        assert!(
            part.encoded_len() < limit,
            "a part of {} bytes",
            part.encoded_len()
        );
    }
    let rejoined: Vec<_> = fragmented.iter().flat_map(|r| r.events.clone()).collect();
    assert_eq!(rejoined, whole[0].events);

    // A revision above --max-request-bytes but under the fragment limit (64 events of a 6 KiB
    // value and its 20 KiB previous value: about 1.6 MiB) travels whole even to the
    // fragmenting watcher, as in etcd.
    let small_value = "w".repeat(6 * 1024);
    kv.txn(put_all(&keys, &small_value))
        .await
        .expect("a small txn");
    let (fragmented, whole) = collect_two_watchers(&mut watcher, keys.len(), 4).await;
    assert!(fragmented[0].encoded_len() > test_options().max_request_bytes);
    assert_eq!(fragmented.len(), 1);
    assert!(!fragmented[0].fragment);
    assert_eq!(fragmented[0].events, whole[0].events);
}

#[tokio::test]
async fn progress_notify_watchers_get_periodic_revisions() {
    let (_server, channel) = server().await;
    let mut kv = KvClient::new(channel.clone());
    kv.put(put("p", "1")).await.expect("put");
    let mut watcher = Watcher::open(channel).await;
    watcher
        .create(WatchCreateRequest {
            progress_notify: true,
            ..watch_key("p")
        })
        .await;
    assert!(watcher.next().await.created);
    // The test interval is 200 ms; the notification is an empty response at the current
    // revision for this watcher.
    let notification = watcher.next().await;
    assert_eq!(notification.watch_id, 0);
    assert!(notification.events.is_empty());
    assert!(!notification.created && !notification.canceled);
    assert_full_header(notification.header, 2);
}

#[tokio::test]
async fn leases_grant_keep_alive_and_revoke() {
    let (_server, channel) = server().await;
    let mut lease = LeaseClient::new(channel.clone());
    let mut kv = KvClient::new(channel);
    let granted = lease
        .lease_grant(LeaseGrantRequest { ttl: 1, id: 0 })
        .await
        .expect("grant")
        .into_inner();
    assert!(granted.id > 0);
    assert_eq!(granted.ttl, 2, "raised to the store's minimum TTL");
    assert_full_header(granted.header, 1);
    let chosen = lease
        .lease_grant(LeaseGrantRequest { ttl: 60, id: 42 })
        .await
        .expect("grant with an ID")
        .into_inner();
    assert_eq!((chosen.id, chosen.ttl), (42, 60));
    assert_status(
        lease
            .lease_grant(LeaseGrantRequest { ttl: 60, id: 42 })
            .await,
        Code::FailedPrecondition,
        "etcdserver: lease already exists",
    );
    kv.put(PutRequest {
        lease: 42,
        ..put("leased", "v")
    })
    .await
    .expect("put with lease");
    assert_status(
        kv.put(PutRequest {
            lease: 43,
            ..put("leased", "v")
        })
        .await,
        Code::NotFound,
        "etcdserver: requested lease not found",
    );

    let (requests, receiver) = mpsc::channel(4);
    let mut answers = lease
        .lease_keep_alive(ReceiverStream::new(receiver))
        .await
        .expect("keep-alive stream")
        .into_inner();
    for (id, ttl) in [(42, 60), (9999, 0)] {
        requests
            .send(LeaseKeepAliveRequest { id })
            .await
            .expect("stream open");
        let answer = tokio::time::timeout(WAIT, answers.next())
            .await
            .expect("answer in time")
            .expect("stream open")
            .expect("keep-alive answered");
        assert_eq!((answer.id, answer.ttl), (id, ttl));
        assert_full_header(answer.header, 2);
    }

    let alive = lease
        .lease_time_to_live(LeaseTimeToLiveRequest { id: 42, keys: true })
        .await
        .expect("ttl")
        .into_inner();
    assert_eq!(alive.granted_ttl, 60);
    assert_eq!(alive.keys, vec![bytes("leased")]);
    let unknown = lease
        .lease_time_to_live(LeaseTimeToLiveRequest {
            id: 9999,
            keys: false,
        })
        .await
        .expect("ttl of an unknown lease")
        .into_inner();
    assert_eq!(unknown.ttl, -1);
    let listed = lease
        .lease_leases(LeaseLeasesRequest {})
        .await
        .expect("leases")
        .into_inner();
    let mut ids: Vec<i64> = listed.leases.iter().map(|l| l.id).collect();
    ids.sort_unstable();
    assert_eq!(ids, {
        let mut expected = vec![granted.id, 42];
        expected.sort_unstable();
        expected
    });

    let revoked = lease
        .lease_revoke(LeaseRevokeRequest { id: 42 })
        .await
        .expect("revoke")
        .into_inner();
    assert_full_header(revoked.header, 3);
    assert_eq!(
        kv.range(get("leased"))
            .await
            .expect("range")
            .into_inner()
            .count,
        0
    );
    assert_status(
        lease.lease_revoke(LeaseRevokeRequest { id: 42 }).await,
        Code::NotFound,
        "etcdserver: requested lease not found",
    );
}

#[tokio::test]
async fn members_are_listed_added_promoted_and_removed() {
    let (_server, channel) = server().await;
    let mut cluster = ClusterClient::new(channel);
    let listed = cluster
        .member_list(MemberListRequest { linearizable: true })
        .await
        .expect("list")
        .into_inner();
    assert_full_header(listed.header, 1);
    assert_eq!(listed.members.len(), 1);
    assert_status(
        cluster
            .member_add(MemberAddRequest {
                peer_ur_ls: vec!["127.0.0.1:2380".into()],
                is_learner: false,
            })
            .await,
        Code::InvalidArgument,
        "etcdserver: given member URLs are invalid",
    );
    let added = cluster
        .member_add(MemberAddRequest {
            peer_ur_ls: vec!["http://127.0.0.1:12380".into()],
            is_learner: true,
        })
        .await
        .expect("add learner")
        .into_inner();
    let learner = added.member.expect("the added member");
    assert!(learner.is_learner);
    assert_eq!(added.members.len(), 2);
    assert_status(
        cluster
            .member_add(MemberAddRequest {
                peer_ur_ls: vec!["http://127.0.0.1:12380".into()],
                is_learner: false,
            })
            .await,
        Code::FailedPrecondition,
        "etcdserver: Peer URLs already exists",
    );
    let promoted = cluster
        .member_promote(MemberPromoteRequest { id: learner.id })
        .await
        .expect("promote")
        .into_inner();
    assert!(promoted.members.iter().all(|member| !member.is_learner));
    assert_status(
        cluster
            .member_promote(MemberPromoteRequest { id: learner.id })
            .await,
        Code::FailedPrecondition,
        "etcdserver: can only promote a learner member",
    );
    let removed = cluster
        .member_remove(MemberRemoveRequest { id: learner.id })
        .await
        .expect("remove")
        .into_inner();
    assert_eq!(removed.members.len(), 1);
    assert_status(
        cluster
            .member_remove(MemberRemoveRequest { id: learner.id })
            .await,
        Code::NotFound,
        "etcdserver: member not found",
    );
}

#[tokio::test]
async fn maintenance_status_hash_alarm_snapshot_and_move_leader() {
    let (_server, channel) = server().await;
    let mut kv = KvClient::new(channel.clone());
    let mut maintenance = MaintenanceClient::new(channel);
    kv.put(put("m", "1")).await.expect("put");
    let status = maintenance
        .status(StatusRequest {})
        .await
        .expect("status")
        .into_inner();
    assert_full_header(status.header, 2);
    assert_eq!(status.version, "3.5.0");
    assert_eq!(status.leader, MEMBER_ID);
    assert_eq!(
        (
            status.raft_term,
            status.raft_index,
            status.raft_applied_index
        ),
        (3, 1, 1)
    );
    assert!(status.errors.is_empty());

    let alarms = maintenance
        .alarm(AlarmRequest::default())
        .await
        .expect("alarm get")
        .into_inner();
    assert!(alarms.alarms.is_empty());
    assert_full_header(alarms.header, 2);

    let hash = maintenance
        .hash_kv(HashKvRequest { revision: 0 })
        .await
        .expect("hashkv")
        .into_inner();
    assert_eq!((hash.hash_revision, hash.compact_revision), (2, -1));
    kv.put(put("m", "2")).await.expect("put");
    let hash_again = maintenance
        .hash_kv(HashKvRequest { revision: 2 })
        .await
        .expect("hashkv at 2")
        .into_inner();
    assert_eq!(
        hash_again.hash, hash.hash,
        "the hash at a revision is stable"
    );
    assert_full_header(hash_again.header, 3);

    let mut snapshot = maintenance
        .snapshot(SnapshotRequest {})
        .await
        .expect("snapshot")
        .into_inner();
    let mut file = Vec::new();
    while let Some(message) = snapshot.next().await {
        let message = message.expect("snapshot chunk");
        assert_full_header(message.header, 3);
        file.extend_from_slice(&message.blob);
    }
    assert_eq!(file.len() % 512, 32, "etcdctl's checksum convention");
    let (data, checksum) = file.split_at(file.len() - 32);
    assert_eq!(checksum, Sha256::digest(data).as_slice());

    assert_status(
        maintenance
            .move_leader(MoveLeaderRequest { target_id: 0xdead })
            .await,
        Code::FailedPrecondition,
        "etcdserver: bad leader transferee",
    );
}

#[tokio::test]
async fn auth_is_disabled() {
    let (_server, channel) = server().await;
    let mut auth = AuthClient::new(channel);
    let status = auth
        .auth_status(AuthStatusRequest {})
        .await
        .expect("auth status")
        .into_inner();
    assert!(!status.enabled);
    assert_full_header(status.header, 1);
    assert_status(
        auth.authenticate(AuthenticateRequest {
            name: "root".into(),
            password: "x".into(),
        })
        .await,
        Code::FailedPrecondition,
        "etcdserver: authentication is not enabled",
    );
}

#[tokio::test]
async fn grpc_health_service_reports_serving() {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let (_server, channel) = server().await;
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health check")
        .into_inner();
    assert_eq!(
        answer.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

/// A raw HTTP/1.1 GET on the gRPC port: (status code, body).
async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    http_exchange(addr, &request).await
}

/// Sends a raw HTTP/1.1 request and reads the whole answer: (status code, body).
async fn http_exchange(addr: std::net::SocketAddr, request: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send request");
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .expect("answer in time")
        .expect("read response");
    let text = String::from_utf8_lossy(&response).into_owned();
    let code = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("status line");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (code, body)
}

/// A raw HTTP/1.1 POST with a JSON body: (status code, body).
async fn http_post(addr: std::net::SocketAddr, path: &str, body: &str) -> (u16, String) {
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    http_exchange(addr, &request).await
}

/// etcd's JSON gateway, checked against what etcd 3.4 answers to the same requests: proto
/// field names, 64-bit integers as strings, base64 bytes, enums by name, defaults left out, and
/// grpc-gateway's error bodies and HTTP codes.
#[tokio::test]
async fn json_gateway_answers_as_etcds_does() {
    let (server, _channel) = server().await;
    let addr = server.addr;
    let header = |revision: u64| {
        format!(
            r#"{{"cluster_id":"{CLUSTER_ID}","member_id":"{MEMBER_ID}","revision":"{revision}","raft_term":"3"}}"#
        )
    };
    // "foo" and "bar" in base64.
    let (code, body) = http_post(addr, "/v3/kv/put", r#"{"key":"Zm9v","value":"YmFy"}"#).await;
    assert_eq!(
        (code, body),
        (200, format!(r#"{{"header":{}}}"#, header(2)))
    );
    let (code, body) = http_post(addr, "/v3/kv/range", r#"{"key":"Zm9v"}"#).await;
    assert_eq!(
        (code, body),
        (
            200,
            format!(
                r#"{{"header":{},"kvs":[{{"key":"Zm9v","create_revision":"2","mod_revision":"2","version":"1","value":"YmFy"}}],"count":"1"}}"#,
                header(2)
            )
        )
    );
    // Field names as in the .proto or in lowerCamelCase, integers as strings or numbers.
    for request in [
        r#"{"key":"Zm9v","keys_only":true,"limit":"5"}"#,
        r#"{"key":"Zm9v","keysOnly":true,"limit":5,"unknown":1}"#,
    ] {
        let (code, body) = http_post(addr, "/v3/kv/range", request).await;
        assert_eq!(code, 200);
        assert!(
            body.contains(
                r#""kvs":[{"key":"Zm9v","create_revision":"2","mod_revision":"2","version":"1"}]"#
            ),
            "{body}"
        );
    }
    let (code, body) = http_post(
        addr,
        "/v3/kv/txn",
        r#"{"compare":[{"result":"EQUAL","target":"CREATE","key":"Zm9v","create_revision":"2"}],
            "success":[{"request_put":{"key":"Zm9v","value":"YmF6"}}],
            "failure":[{"request_range":{"key":"Zm9v"}}]}"#,
    )
    .await;
    assert_eq!(code, 200);
    assert!(
        body.ends_with(
            r#""succeeded":true,"responses":[{"response_put":{"header":{"revision":"3"}}}]}"#
        ),
        "{body}"
    );
    let (code, body) = http_post(addr, "/v3/lease/grant", r#"{"TTL":30,"ID":7}"#).await;
    assert_eq!(code, 200);
    assert!(body.ends_with(r#","ID":"7","TTL":"30"}"#), "{body}");
    // An empty body is the empty message.
    let (code, body) = http_post(addr, "/v3/maintenance/status", "").await;
    assert_eq!(code, 200);
    assert!(
        body.contains(r#""version":"3.5.0","dbSize":"4096""#),
        "{body}"
    );

    // Errors: grpc-gateway's body, the HTTP status of the gRPC code.
    let (code, body) = http_post(addr, "/v3/kv/range", r#"{"key":"Zm9v","revision":100}"#).await;
    let future = "etcdserver: mvcc: required revision is a future revision";
    assert_eq!(
        (code, body),
        (
            400,
            format!(r#"{{"error":"{future}","message":"{future}","code":11}}"#)
        )
    );
    let (code, body) = http_post(addr, "/v3/kv/put", r#"{"value":"YmFy"}"#).await;
    assert_eq!(code, 400);
    assert!(
        body.contains(r#""error":"etcdserver: key is not provided""#),
        "{body}"
    );
    let (code, body) = http_post(addr, "/v3/kv/range", r#"{"key":5}"#).await;
    assert_eq!(code, 400);
    assert!(body.ends_with(r#""code":3}"#), "{body}");
    let (code, body) = http_post(addr, "/v3/lease/revoke", r#"{"ID":"99"}"#).await;
    assert_eq!(code, 404);
    assert!(body.contains("requested lease not found"), "{body}");
    // A value over the request limit is refused by the API, as over gRPC, not by the HTTP
    // layer: base64 makes the body a third larger than the value.
    let big = format!(
        r#"{{"key":"Zm9v","value":"{}"}}"#,
        "QUFB".repeat(1536 * 1024 / 3 + 1)
    );
    let (code, body) = http_post(addr, "/v3/kv/put", &big).await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("etcdserver: request is too large"), "{body}");
    let (code, _) = http_get(addr, "/v3/kv/range").await;
    assert_eq!(code, 405);
    let (code, body) = http_post(addr, "/v3/kv/nothing", "{}").await;
    assert_eq!((code, body.as_str()), (404, "Not Found"));
}

/// `POST /v3/watch` streams `{"result": ...}` lines: the creation, then the events, for as long
/// as the client stays.
#[tokio::test]
async fn json_gateway_watch_streams_events() {
    let (server, channel) = server().await;
    let mut stream = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    let body = r#"{"create_request":{"key":"Zm9v"}}"#;
    let request = format!(
        "POST /v3/watch HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send request");
    let mut received = String::new();
    read_until(&mut stream, &mut received, r#""created":true}}"#).await;
    KvClient::new(channel)
        .put(put("foo", "bar"))
        .await
        .expect("put");
    read_until(
        &mut stream,
        &mut received,
        r#""events":[{"kv":{"key":"Zm9v","create_revision":"2","mod_revision":"2","version":"1","value":"YmFy"}}]}}"#,
    )
    .await;
    assert!(received.contains(r#"{"result":{"header":"#), "{received}");
}

/// Reads a streamed HTTP answer from `stream` into `received` until it holds `needle`.
async fn read_until(stream: &mut tokio::net::TcpStream, received: &mut String, needle: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !received.contains(needle) {
        let mut buf = [0u8; 4096];
        let read = tokio::time::timeout_at(deadline, stream.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no {needle} in {received}"))
            .expect("read");
        assert!(read > 0, "the stream ended: {received}");
        received.push_str(&String::from_utf8_lossy(&buf[..read]));
    }
}

/// The gateway's form of `hasleader` (grpc-gateway's `Grpc-Metadata-Hasleader` header): calls
/// carrying it are refused on a member without a leader and its watch and election observe
/// streams end, while calls and watches without it go on.
#[tokio::test]
async fn json_gateway_calls_that_require_a_leader_fail_without_one() {
    let (server, channel) = server().await;
    KvClient::new(channel)
        .put(put("foo", "bar"))
        .await
        .expect("put");
    // A request with the header when `require_leader`; closing the connection after the
    // answer unless it is a watch.
    let post = |path: &str, body: &str, require_leader: bool| {
        let header = if require_leader {
            "Grpc-Metadata-Hasleader: true\r\n"
        } else {
            ""
        };
        let close = if path == "/v3/watch" {
            ""
        } else {
            "Connection: close\r\n"
        };
        format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\n{header}{close}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let range = r#"{"key":"Zm9v","serializable":true}"#;
    let (code, _) = http_exchange(server.addr, &post("/v3/kv/range", range, true)).await;
    assert_eq!(code, 200, "served while there is a leader");

    // Two gateway watches, with and without the header.
    let mut watches = Vec::new();
    for require_leader in [true, false] {
        let mut stream = tokio::net::TcpStream::connect(server.addr)
            .await
            .expect("connect");
        let request = post(
            "/v3/watch",
            r#"{"create_request":{"key":"Zm9v"}}"#,
            require_leader,
        );
        stream
            .write_all(request.as_bytes())
            .await
            .expect("send request");
        watches.push((stream, String::new()));
    }
    for (stream, received) in &mut watches {
        read_until(stream, received, r#""created":true}}"#).await;
    }
    // An election with a leader, observed through the gateway with the header: the stream
    // answers with the leader at once, so it is open before the leader goes.
    let lease = LeaseClient::new(server.channel().await)
        .lease_grant(LeaseGrantRequest {
            ttl: 60,
            ..LeaseGrantRequest::default()
        })
        .await
        .expect("grant")
        .into_inner()
        .id;
    ballot_proto::v3electionpb::election_client::ElectionClient::new(server.channel().await)
        .campaign(ballot_proto::v3electionpb::CampaignRequest {
            name: bytes("e"),
            lease,
            value: bytes("v"),
        })
        .await
        .expect("campaign");
    let mut observer = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    observer
        .write_all(post("/v3/election/observe", r#"{"name":"ZQ=="}"#, true).as_bytes())
        .await
        .expect("send request");
    let mut observed = String::new();
    read_until(&mut observer, &mut observed, r#""value":"dg==""#).await;

    server.node.set_leader(0);
    let (code, body) = http_exchange(server.addr, &post("/v3/kv/range", range, true)).await;
    assert_eq!(
        (code, body.as_str()),
        (
            503,
            r#"{"error":"etcdserver: no leader","message":"etcdserver: no leader","code":14}"#
        )
    );
    let (code, _) = http_exchange(server.addr, &post("/v3/kv/range", range, false)).await;
    assert_eq!(code, 200, "served without the header");
    let (required, received) = &mut watches[0];
    read_until(required, received, r#""message":"etcdserver: no leader""#).await;
    read_until(
        &mut observer,
        &mut observed,
        r#""message":"etcdserver: no leader""#,
    )
    .await;

    // The watch without the header still sees the next write once a leader is back.
    server.node.set_leader(MEMBER_ID);
    let (code, _) = http_exchange(
        server.addr,
        &post("/v3/kv/put", r#"{"key":"Zm9v","value":"YmF6"}"#, true),
    )
    .await;
    assert_eq!(code, 200);
    let (plain, received) = &mut watches[1];
    read_until(plain, received, r#""value":"YmF6""#).await;
    assert!(!received.contains("no leader"), "{received}");
}

#[tokio::test]
async fn http_health_version_and_metrics_share_the_grpc_port() {
    let (server, channel) = server().await;
    KvClient::new(channel)
        .put(put("x", "1"))
        .await
        .expect("put");
    let (code, body) = http_get(server.addr, "/health").await;
    assert_eq!(
        (code, body.as_str()),
        (200, r#"{"health":"true","reason":""}"#)
    );
    let (code, body) = http_get(server.addr, "/version").await;
    assert_eq!(
        (code, body.as_str()),
        (200, r#"{"etcdserver":"3.5.0","etcdcluster":"3.5.0"}"#)
    );
    let (code, body) = http_get(server.addr, "/metrics").await;
    assert_eq!(code, 200);
    assert!(body.contains("etcd_server_has_leader 1"), "{body}");
    assert!(
        body.contains(
            "grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Put\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"}"
        ),
        "{body}"
    );
    server.node.set_leader(0);
    let (code, body) = http_get(server.addr, "/health").await;
    assert_eq!(
        (code, body.as_str()),
        (503, r#"{"health":"false","reason":"RAFT NO LEADER"}"#)
    );
}

/// The Alarm RPC as etcdctl drives it (`alarm list`, `alarm disarm` per listed alarm), and how
/// a raised alarm shows in Status and `/health` (with etcd's `exclude`).
#[tokio::test]
async fn alarms_are_listed_disarmed_and_reported_in_status_and_health() {
    use ballot_proto::etcdserverpb::{AlarmMember, AlarmType, alarm_request::AlarmAction};
    let (server, channel) = server().await;
    let mut maintenance = MaintenanceClient::new(channel);
    let mut alarm = async |action: AlarmAction, member_id: u64, alarm: AlarmType| {
        maintenance
            .alarm(AlarmRequest {
                action: action as i32,
                member_id,
                alarm: alarm as i32,
            })
            .await
            .expect("alarm")
            .into_inner()
            .alarms
    };
    let nospace = |member_id| AlarmMember {
        member_id,
        alarm: AlarmType::Nospace as i32,
    };
    assert_eq!(
        alarm(AlarmAction::Activate, 7, AlarmType::Nospace).await,
        vec![nospace(7)]
    );
    assert!(
        alarm(AlarmAction::Activate, 7, AlarmType::Nospace)
            .await
            .is_empty(),
        "already raised"
    );
    assert_eq!(
        alarm(AlarmAction::Get, 0, AlarmType::None).await,
        vec![nospace(7)]
    );
    assert!(
        alarm(AlarmAction::Get, 0, AlarmType::Corrupt)
            .await
            .is_empty()
    );

    let (code, body) = http_get(server.addr, "/health").await;
    assert_eq!(
        (code, body.as_str()),
        (503, r#"{"health":"false","reason":"ALARM NOSPACE"}"#)
    );
    let (code, _) = http_get(server.addr, "/health?exclude=NOSPACE").await;
    assert_eq!(code, 200);
    let status = MaintenanceClient::new(server.channel().await)
        .status(StatusRequest {})
        .await
        .expect("status")
        .into_inner();
    assert_eq!(status.errors, vec!["memberID:7 alarm:NOSPACE ".to_owned()]);

    // etcd takes the member as given: 0 names no alarm.
    assert!(
        alarm(AlarmAction::Deactivate, 0, AlarmType::Nospace)
            .await
            .is_empty()
    );
    assert_eq!(
        alarm(AlarmAction::Deactivate, 7, AlarmType::Nospace).await,
        vec![nospace(7)]
    );
    assert!(alarm(AlarmAction::Get, 0, AlarmType::None).await.is_empty());
    let (code, _) = http_get(server.addr, "/health").await;
    assert_eq!(code, 200);

    // A CORRUPT alarm makes a member not ready, still alive (etcd 3.6's probes).
    alarm(AlarmAction::Activate, 7, AlarmType::Corrupt).await;
    let corrupt = "[-]data_corruption failed: alarm activated: CORRUPT\n\n";
    assert_eq!(
        http_get(server.addr, "/readyz/data_corruption").await,
        (503, corrupt.to_owned())
    );
    let (code, body) = http_get(server.addr, "/readyz").await;
    assert_eq!(code, 503);
    assert!(body.starts_with(corrupt.trim_end_matches('\n')), "{body}");
    assert_eq!(
        http_get(server.addr, "/readyz?exclude=data_corruption").await,
        (200, "ok\n".to_owned())
    );
    assert_eq!(
        http_get(server.addr, "/livez?verbose").await,
        (200, "[+]serializable_read ok\nok\n".to_owned())
    );
    assert_eq!(http_get(server.addr, "/readyz/no_such_check").await.0, 404);
    alarm(AlarmAction::Deactivate, 7, AlarmType::Corrupt).await;

    // A learner is alive and not ready (it takes no part in the quorum).
    server.node.set_learner(true);
    assert_eq!(
        http_get(server.addr, "/readyz/non_learner").await,
        (
            503,
            "[-]non_learner failed: not supported for learner\n\n".to_owned()
        )
    );
    assert_eq!(
        http_get(server.addr, "/livez").await,
        (200, "ok\n".to_owned())
    );
    server.node.set_learner(false);
    assert_eq!(
        http_get(server.addr, "/readyz").await,
        (200, "ok\n".to_owned())
    );
}

#[tokio::test]
async fn lock_is_mutual_exclusion_in_request_order() {
    use ballot_proto::v3lockpb::{LockRequest, UnlockRequest, lock_client::LockClient};
    let (_server, channel) = server().await;
    let mut leases = LeaseClient::new(channel.clone());
    let mut grant = async |id: i64| {
        leases
            .lease_grant(LeaseGrantRequest { ttl: 60, id })
            .await
            .expect("grant")
            .into_inner()
            .id
    };
    let (first_lease, second_lease) = (grant(101).await, grant(102).await);
    let mut locks = LockClient::new(channel.clone());
    let held = locks
        .lock(LockRequest {
            name: bytes("job"),
            lease: first_lease,
        })
        .await
        .expect("the free lock is acquired at once")
        .into_inner();
    assert_eq!(held.key, bytes("job/65"));
    // Lease grants do not change the revision: the lock key is the first write.
    assert_full_header(held.header, 2);

    let mut second = LockClient::new(channel.clone());
    let waiter = tokio::spawn(async move {
        second
            .lock(LockRequest {
                name: bytes("job"),
                lease: second_lease,
            })
            .await
            .map(|response| response.into_inner().key)
    });
    // The second locker must still be waiting while the first holds the lock.
    let still_waiting = tokio::time::timeout(Duration::from_millis(300), async {
        while !waiter.is_finished() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(
        still_waiting.is_err(),
        "the second lock was granted while held"
    );
    locks
        .unlock(UnlockRequest { key: held.key })
        .await
        .expect("unlock");
    let key = tokio::time::timeout(WAIT, waiter)
        .await
        .expect("granted after the unlock")
        .expect("task")
        .expect("lock");
    assert_eq!(key, bytes("job/66"));
    assert_status(
        locks
            .lock(LockRequest {
                name: bytes("job"),
                lease: 9999,
            })
            .await,
        Code::NotFound,
        "etcdserver: requested lease not found",
    );
}

#[tokio::test]
async fn election_campaign_proclaim_observe_and_resign() {
    use ballot_proto::v3electionpb::{
        CampaignRequest, LeaderRequest, ProclaimRequest, ResignRequest,
        election_client::ElectionClient,
    };
    let (_server, channel) = server().await;
    let mut leases = LeaseClient::new(channel.clone());
    for id in [201, 202] {
        leases
            .lease_grant(LeaseGrantRequest { ttl: 60, id })
            .await
            .expect("grant");
    }
    let mut election = ElectionClient::new(channel.clone());
    let mut observed = election
        .observe(LeaderRequest { name: bytes("e") })
        .await
        .expect("observe")
        .into_inner();
    let mut next_leader_value = async || {
        tokio::time::timeout(WAIT, observed.next())
            .await
            .expect("a leader in time")
            .expect("stream open")
            .expect("ok")
            .kv
            .expect("kv")
            .value
    };
    let first = election
        .campaign(CampaignRequest {
            name: bytes("e"),
            lease: 201,
            value: bytes("a"),
        })
        .await
        .expect("the first candidate leads at once")
        .into_inner()
        .leader
        .expect("leader key");
    assert_eq!(first.key, bytes("e/c9"));
    assert_eq!(next_leader_value().await, bytes("a"));

    let mut second = ElectionClient::new(channel.clone());
    let waiting = tokio::spawn(async move {
        second
            .campaign(CampaignRequest {
                name: bytes("e"),
                lease: 202,
                value: bytes("b"),
            })
            .await
            .map(|response| response.into_inner().leader)
    });
    election
        .proclaim(ProclaimRequest {
            leader: Some(first.clone()),
            value: bytes("a2"),
        })
        .await
        .expect("the leader proclaims");
    assert_eq!(next_leader_value().await, bytes("a2"));
    let leader = election
        .leader(LeaderRequest { name: bytes("e") })
        .await
        .expect("leader")
        .into_inner();
    assert_eq!(leader.kv.map(|kv| kv.value), Some(bytes("a2")));
    assert!(!waiting.is_finished(), "the second candidate waits");

    election
        .resign(ResignRequest {
            leader: Some(first.clone()),
        })
        .await
        .expect("resign");
    let second_leader = tokio::time::timeout(WAIT, waiting)
        .await
        .expect("the second candidate leads after the resignation")
        .expect("task")
        .expect("campaign")
        .expect("leader key");
    assert_eq!(second_leader.key, bytes("e/ca"));
    assert_eq!(next_leader_value().await, bytes("b"));
    assert_status(
        election
            .proclaim(ProclaimRequest {
                leader: Some(first),
                value: bytes("stale"),
            })
            .await,
        Code::Unknown,
        "election: not leader",
    );
    assert_status(
        election
            .leader(LeaderRequest {
                name: bytes("none"),
            })
            .await,
        Code::Unknown,
        "election: no leader",
    );
}

/// `--max-concurrent-streams`: the limit a client connection is told in the server's HTTP/2
/// settings (etcd's default: none, 2^32 - 1).
#[tokio::test]
async fn client_connections_are_told_the_stream_limit() {
    async fn advertised_limit(options: ApiOptions) -> usize {
        let server = TestServer::start(options).await;
        let socket = tokio::net::TcpStream::connect(server.addr)
            .await
            .expect("connect");
        let (_client, mut connection) = h2::client::handshake(socket).await.expect("handshake");
        let mut ping_pong = connection.ping_pong().expect("ping pong");
        // The server's settings come before its answer to a ping.
        tokio::select! {
            ended = &mut connection => panic!("the connection ended: {ended:?}"),
            pong = ping_pong.ping(h2::Ping::opaque()) => { pong.expect("pong"); }
        }
        connection.max_concurrent_send_streams()
    }
    assert_eq!(
        advertised_limit(test_options()).await,
        u32::MAX as usize,
        "no limit by default"
    );
    assert_eq!(
        advertised_limit(ApiOptions {
            max_concurrent_streams: 3,
            ..test_options()
        })
        .await,
        3
    );
}

/// A deterministic xorshift generator for the randomized requests below.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }

    /// Revisions, limits, TTLs and IDs: small, negative, huge and the extremes.
    fn number(&mut self) -> i64 {
        match self.below(8) {
            0 => 0,
            1 => -(self.below(5) as i64) - 1,
            2 => i64::MAX,
            3 => i64::MIN,
            4 => self.next() as i64,
            _ => self.below(40) as i64,
        }
    }

    /// Enum fields: the valid values and some that no enum has.
    fn enumeration(&mut self) -> i32 {
        match self.below(6) {
            0 => -1,
            1 => i32::MAX,
            _ => self.below(6) as i32,
        }
    }

    /// Keys and range ends: empty, `\0`, short ones that exist, and random bytes.
    fn key(&mut self) -> Bytes {
        match self.below(6) {
            0 => Bytes::new(),
            1 => Bytes::from_static(b"\0"),
            2 => Bytes::from(vec![0xff; self.below(3) as usize + 1]),
            3 => {
                let length = self.below(12) as usize;
                Bytes::from((0..length).map(|_| self.next() as u8).collect::<Vec<u8>>())
            }
            _ => Bytes::from(format!("k{}", self.below(8))),
        }
    }

    fn range(&mut self) -> RangeRequest {
        RangeRequest {
            key: self.key(),
            range_end: self.key(),
            limit: self.number(),
            revision: self.number(),
            sort_order: self.enumeration(),
            sort_target: self.enumeration(),
            serializable: self.below(2) == 0,
            keys_only: self.below(2) == 0,
            count_only: self.below(2) == 0,
            min_mod_revision: self.number(),
            max_mod_revision: self.number(),
            min_create_revision: self.number(),
            max_create_revision: self.number(),
        }
    }

    fn put(&mut self) -> PutRequest {
        PutRequest {
            key: self.key(),
            value: self.key(),
            lease: if self.below(3) == 0 { self.number() } else { 0 },
            prev_kv: self.below(2) == 0,
            ignore_value: self.below(4) == 0,
            ignore_lease: self.below(4) == 0,
        }
    }

    fn delete(&mut self) -> DeleteRangeRequest {
        DeleteRangeRequest {
            key: self.key(),
            range_end: self.key(),
            prev_kv: self.below(2) == 0,
        }
    }

    fn compare(&mut self) -> Compare {
        let target_union = match self.below(6) {
            0 => None,
            1 => Some(compare::TargetUnion::Version(self.number())),
            2 => Some(compare::TargetUnion::CreateRevision(self.number())),
            3 => Some(compare::TargetUnion::ModRevision(self.number())),
            4 => Some(compare::TargetUnion::Value(self.key())),
            _ => Some(compare::TargetUnion::Lease(self.number())),
        };
        Compare {
            result: self.enumeration(),
            target: self.enumeration(),
            key: self.key(),
            range_end: self.key(),
            target_union,
        }
    }

    fn op(&mut self, depth: u32) -> RequestOp {
        let request = match self.below(if depth < 2 { 5 } else { 4 }) {
            0 => None,
            1 => Some(request_op::Request::RequestRange(self.range())),
            2 => Some(request_op::Request::RequestPut(self.put())),
            3 => Some(request_op::Request::RequestDeleteRange(self.delete())),
            _ => Some(request_op::Request::RequestTxn(self.txn(depth + 1))),
        };
        RequestOp { request }
    }

    fn txn(&mut self, depth: u32) -> TxnRequest {
        let (compares, successes, failures) = (self.below(3), self.below(4), self.below(4));
        TxnRequest {
            compare: (0..compares).map(|_| self.compare()).collect(),
            success: (0..successes).map(|_| self.op(depth)).collect(),
            failure: (0..failures).map(|_| self.op(depth)).collect(),
        }
    }
}

/// Every KV, lease and watch request with random and extreme field values (negative and huge
/// revisions and limits, enum values no enum has, empty and `\0` keys, nested txns) is answered
/// with a response or one of etcd's client errors, never an internal error or a dropped
/// connection, and the server serves normally afterwards.
#[tokio::test]
async fn random_and_extreme_requests_get_answers_or_client_errors() {
    let (_server, channel) = server().await;
    let mut kv = KvClient::new(channel.clone());
    let mut leases = LeaseClient::new(channel.clone());
    for key in ["k0", "k1", "k2"] {
        kv.put(put(key, "v")).await.expect("put");
    }
    let client_errors = [
        Code::InvalidArgument,
        Code::OutOfRange,
        Code::NotFound,
        Code::FailedPrecondition,
        Code::ResourceExhausted,
    ];
    let mut random = Random(0x2545_f491_4f6c_dd1d);
    let mut answered = 0;
    for round in 0..3000 {
        let result = match random.below(8) {
            0 => kv.range(random.range()).await.map(drop),
            1 => kv.put(random.put()).await.map(drop),
            2 => kv.delete_range(random.delete()).await.map(drop),
            3 | 4 => kv.txn(random.txn(0)).await.map(drop),
            5 => kv
                .compact(CompactionRequest {
                    revision: random.number(),
                    physical: random.below(2) == 0,
                })
                .await
                .map(drop),
            6 => leases
                .lease_grant(LeaseGrantRequest {
                    ttl: random.number(),
                    id: random.number(),
                })
                .await
                .map(drop),
            _ => leases
                .lease_time_to_live(LeaseTimeToLiveRequest {
                    id: random.number(),
                    keys: random.below(2) == 0,
                })
                .await
                .map(drop),
        };
        match result {
            Ok(()) => answered += 1,
            Err(status) => assert!(
                client_errors.contains(&status.code()),
                "round {round}: {status:?}"
            ),
        }
    }
    assert!(answered > 300, "only {answered} requests were answered");
    // Random watch creates on one stream: each is created or refused, the stream lives on.
    let mut watcher = Watcher::open(channel.clone()).await;
    for _ in 0..200 {
        let create = WatchCreateRequest {
            key: random.key(),
            range_end: random.key(),
            start_revision: random.number(),
            progress_notify: random.below(2) == 0,
            filters: (0..random.below(3)).map(|_| random.enumeration()).collect(),
            prev_kv: random.below(2) == 0,
            watch_id: if random.below(3) == 0 {
                random.number()
            } else {
                0
            },
            fragment: random.below(2) == 0,
        };
        watcher.create(create).await;
        // Events of the watchers created before may come first.
        let mut answer = watcher.next().await;
        while !answer.created && !answer.canceled {
            answer = watcher.next().await;
        }
    }
    // Still serving.
    kv.put(put("after", "random")).await.expect("put after");
    let read = kv.range(get("after")).await.expect("range").into_inner();
    assert_eq!(read.kvs[0].value, bytes("random"));
}
