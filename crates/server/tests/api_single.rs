//! The etcd API of a real one-member `ballot` process, through gRPC clients: every service,
//! etcd's errors for bad and oversized requests (and the member keeps serving after them), and
//! the HTTP endpoints on the client port.

mod api_support;

use api_support::{Cluster, bytes, eventually, get, http_exchange, http_get, put};
use ballot_proto::etcdserverpb::{
    AlarmRequest, AuthStatusRequest, AuthenticateRequest, CompactionRequest, Compare,
    DeleteRangeRequest, HashKvRequest, LeaseGrantRequest, LeaseKeepAliveRequest,
    LeaseLeasesRequest, LeaseRevokeRequest, LeaseTimeToLiveRequest, PutRequest, RangeRequest,
    RequestOp, SnapshotRequest, StatusRequest, TxnRequest, WatchCreateRequest, WatchRequest,
    auth_client::AuthClient, compare, kv_client::KvClient, lease_client::LeaseClient,
    maintenance_client::MaintenanceClient, request_op, watch_client::WatchClient,
    watch_request::RequestUnion,
};
use std::time::Duration;

use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

fn assert_status<T: std::fmt::Debug>(
    result: Result<tonic::Response<T>, tonic::Status>,
    code: Code,
    message: &str,
) {
    match result {
        Ok(response) => panic!("expected {code:?} {message:?}, got {response:?}"),
        Err(status) => {
            assert_eq!(status.code(), code, "{status:?}");
            assert_eq!(status.message(), message);
        }
    }
}

#[tokio::test]
async fn kv_txn_and_compaction_with_full_headers() {
    let cluster = Cluster::start(1, &[]).await;
    let member = &cluster.members[0];
    let mut kv = KvClient::new(member.channel().await);
    let status = MaintenanceClient::new(member.channel().await)
        .status(StatusRequest {})
        .await
        .expect("status")
        .into_inner();
    let me = status.header.expect("header").member_id;

    let first = kv.put(put("k", "v1")).await.expect("put").into_inner();
    let header = first.header.expect("put header");
    assert_eq!(header.member_id, me);
    assert_ne!(header.cluster_id, 0);
    assert!(header.raft_term >= 1);
    let base = header.revision;
    let second = kv
        .put(PutRequest {
            prev_kv: true,
            ..put("k", "v2")
        })
        .await
        .expect("put")
        .into_inner();
    assert_eq!(second.header.map(|h| h.revision), Some(base + 1));
    assert_eq!(second.prev_kv.map(|kv| kv.value), Some(bytes("v1")));

    let range = kv.range(get("k")).await.expect("range").into_inner();
    assert_eq!(range.kvs[0].value, bytes("v2"));
    assert_eq!(range.kvs[0].version, 2);
    assert_eq!(
        range.header.map(|h| (h.member_id, h.revision)),
        Some((me, base + 1))
    );

    let swap = TxnRequest {
        compare: vec![Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Version as i32,
            key: bytes("k"),
            target_union: Some(compare::TargetUnion::Version(2)),
            ..Compare::default()
        }],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(put("k", "v3"))),
        }],
        failure: vec![],
    };
    assert!(
        kv.txn(swap.clone())
            .await
            .expect("txn")
            .into_inner()
            .succeeded
    );
    assert!(!kv.txn(swap).await.expect("txn").into_inner().succeeded);

    let deleted = kv
        .delete_range(DeleteRangeRequest {
            key: bytes("k"),
            prev_kv: true,
            ..DeleteRangeRequest::default()
        })
        .await
        .expect("delete")
        .into_inner();
    assert_eq!(deleted.deleted, 1);
    assert_eq!(deleted.prev_kvs[0].value, bytes("v3"));

    let compact_at = deleted.header.expect("header").revision;
    kv.compact(CompactionRequest {
        revision: compact_at,
        physical: true,
    })
    .await
    .expect("compact");
    assert_status(
        kv.range(RangeRequest {
            revision: base,
            ..get("k")
        })
        .await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    );
}

#[tokio::test]
async fn bad_and_oversized_requests_are_refused_and_the_member_keeps_serving() {
    let cluster = Cluster::start(1, &[]).await;
    let mut kv = KvClient::new(cluster.members[0].channel().await);
    assert_status(
        kv.range(get("")).await,
        Code::InvalidArgument,
        "etcdserver: key is not provided",
    );
    assert_status(
        kv.range(RangeRequest {
            revision: 1_000_000,
            ..get("a")
        })
        .await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
    );
    assert_status(
        kv.put(put("big", &"x".repeat(1536 * 1024))).await,
        Code::InvalidArgument,
        "etcdserver: request is too large",
    );
    let refused = kv
        .put(put("big", &"x".repeat(2 * 1024 * 1024 + 1024)))
        .await
        .expect_err("beyond the gRPC receive limit");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    let many = TxnRequest {
        success: (0..129)
            .map(|i| RequestOp {
                request: Some(request_op::Request::RequestPut(put(&format!("t{i}"), "v"))),
            })
            .collect(),
        ..TxnRequest::default()
    };
    assert_status(
        kv.txn(many).await,
        Code::InvalidArgument,
        "etcdserver: too many operations in txn request",
    );
    let mut lease = LeaseClient::new(cluster.members[0].channel().await);
    assert_status(
        lease.lease_revoke(LeaseRevokeRequest { id: 12345 }).await,
        Code::NotFound,
        "etcdserver: requested lease not found",
    );
    // Still serving after every refusal.
    kv.put(put("after", "ok"))
        .await
        .expect("put after the refusals");
    let range = kv.range(get("after")).await.expect("range").into_inner();
    assert_eq!(range.kvs[0].value, bytes("ok"));
    assert_eq!(
        kv.range(get("big"))
            .await
            .expect("range")
            .into_inner()
            .count,
        0
    );
}

#[tokio::test]
async fn watch_sees_writes_in_order_with_prev_kv() {
    let cluster = Cluster::start(1, &[]).await;
    let channel = cluster.members[0].channel().await;
    let mut kv = KvClient::new(channel.clone());
    let (requests, receiver) = mpsc::channel(4);
    let mut responses = WatchClient::new(channel)
        .watch(ReceiverStream::new(receiver))
        .await
        .expect("watch")
        .into_inner();
    for key in ["w", "x"] {
        requests
            .send(WatchRequest {
                request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                    key: bytes(key),
                    prev_kv: true,
                    ..WatchCreateRequest::default()
                })),
            })
            .await
            .expect("stream open");
    }
    let mut next = async || {
        tokio::time::timeout(api_support::DEADLINE, responses.next())
            .await
            .expect("a watch response in time")
            .expect("stream open")
            .expect("no error")
    };
    let created: Vec<i64> = vec![next().await.watch_id, next().await.watch_id];
    assert_eq!(created, vec![0, 1]);
    kv.put(put("w", "1")).await.expect("put");
    kv.put(put("x", "1")).await.expect("put");
    kv.put(put("w", "2")).await.expect("put");
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let response = next().await;
        for event in response.events {
            let kv = event.kv.expect("kv");
            let prev = event.prev_kv.map(|prev| prev.value);
            seen.push((response.watch_id, kv.value, kv.mod_revision, prev));
        }
    }
    assert_eq!(seen[0].0, 0);
    assert_eq!(seen[1].0, 1);
    assert_eq!((seen[2].0, seen[2].3.clone()), (0, Some(bytes("1"))));
    assert!(seen[0].2 < seen[1].2 && seen[1].2 < seen[2].2);
}

/// `--experimental-watch-progress-notify-interval`: a watcher created with `progress_notify`
/// gets empty responses carrying the current revision at that pace, one without it none.
#[tokio::test]
async fn progress_notifications_come_at_the_configured_interval() {
    let cluster = Cluster::start(
        1,
        &["--experimental-watch-progress-notify-interval", "200ms"],
    )
    .await;
    let channel = cluster.members[0].channel().await;
    let revision = KvClient::new(channel.clone())
        .put(put("p", "1"))
        .await
        .expect("put")
        .into_inner()
        .header
        .expect("header")
        .revision;
    let (requests, receiver) = mpsc::channel(4);
    let mut responses = WatchClient::new(channel)
        .watch(ReceiverStream::new(receiver))
        .await
        .expect("watch")
        .into_inner();
    for (key, progress_notify) in [("quiet", false), ("p", true)] {
        requests
            .send(WatchRequest {
                request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                    key: bytes(key),
                    progress_notify,
                    ..WatchCreateRequest::default()
                })),
            })
            .await
            .expect("stream open");
    }
    let mut next = async || {
        tokio::time::timeout(api_support::DEADLINE, responses.next())
            .await
            .expect("a watch response in time")
            .expect("stream open")
            .expect("no error")
    };
    assert!(next().await.created);
    assert!(next().await.created);
    for _ in 0..3 {
        let progress = next().await;
        assert_eq!(
            progress.watch_id, 1,
            "only the progress_notify watcher: {progress:?}"
        );
        assert!(progress.events.is_empty() && !progress.created && !progress.canceled);
        assert_eq!(progress.header.expect("header").revision, revision);
    }
}

#[tokio::test]
async fn leases_expire_and_take_their_keys() {
    let cluster = Cluster::start(1, &[]).await;
    let channel = cluster.members[0].channel().await;
    let mut lease = LeaseClient::new(channel.clone());
    let mut kv = KvClient::new(channel);
    let granted = lease
        .lease_grant(LeaseGrantRequest { ttl: 1, id: 0 })
        .await
        .expect("grant")
        .into_inner();
    assert!(granted.id > 0);
    // ceil(1.5 x 500 ms) = 1 s, the minimum TTL.
    assert_eq!(granted.ttl, 1);
    kv.put(PutRequest {
        lease: granted.id,
        ..put("leased", "v")
    })
    .await
    .expect("put with the lease");

    let (requests, receiver) = mpsc::channel(2);
    let mut answers = lease
        .lease_keep_alive(ReceiverStream::new(receiver))
        .await
        .expect("keep-alive")
        .into_inner();
    requests
        .send(LeaseKeepAliveRequest { id: granted.id })
        .await
        .expect("stream open");
    let answer = answers
        .next()
        .await
        .expect("an answer")
        .expect("keep-alive ok");
    assert_eq!((answer.id, answer.ttl), (granted.id, 1));
    let ttl = lease
        .lease_time_to_live(LeaseTimeToLiveRequest {
            id: granted.id,
            keys: true,
        })
        .await
        .expect("ttl")
        .into_inner();
    assert_eq!(ttl.keys, vec![bytes("leased")]);
    let listed = lease
        .lease_leases(LeaseLeasesRequest {})
        .await
        .expect("leases")
        .into_inner();
    assert!(listed.leases.iter().any(|l| l.id == granted.id));
    drop(requests);

    // Without keep-alives the leader expires the lease and its key goes with it.
    let gone = eventually("the lease expires", || {
        let mut kv = kv.clone();
        async move {
            let count = kv.range(get("leased")).await.ok()?.into_inner().count;
            (count == 0).then_some(())
        }
    })
    .await;
    assert!(gone.is_some(), "{}", cluster.logs());
    let after = lease
        .lease_time_to_live(LeaseTimeToLiveRequest {
            id: granted.id,
            keys: false,
        })
        .await
        .expect("ttl")
        .into_inner();
    assert_eq!(after.ttl, -1);
}

#[tokio::test]
async fn maintenance_cluster_auth_and_health_services() {
    let cluster = Cluster::start(1, &[]).await;
    let member = &cluster.members[0];
    let channel = member.channel().await;
    KvClient::new(channel.clone())
        .put(put("m", "1"))
        .await
        .expect("put");
    let mut maintenance = MaintenanceClient::new(channel.clone());
    let status = maintenance
        .status(StatusRequest {})
        .await
        .expect("status")
        .into_inner();
    let me = status.header.expect("header").member_id;
    assert_eq!(status.leader, me);
    assert_eq!(status.version, "3.5.0");
    assert!(status.raft_index >= 2 && status.raft_applied_index >= 2);
    assert!(status.errors.is_empty());
    // etcdctl's JSON output omits zero fields, so a size must be there from the start; it grows
    // with what is written.
    assert!(
        status.db_size > 0 && status.db_size_in_use > 0,
        "{status:?}"
    );
    let value = "s".repeat(64 * 1024);
    KvClient::new(channel.clone())
        .put(put("big", &value))
        .await
        .expect("put a 64 KiB value");
    let grown = maintenance
        .status(StatusRequest {})
        .await
        .expect("status")
        .into_inner();
    assert!(
        grown.db_size >= status.db_size + 64 * 1024,
        "{} -> {}",
        status.db_size,
        grown.db_size
    );
    assert!(
        maintenance
            .alarm(AlarmRequest::default())
            .await
            .expect("alarm")
            .into_inner()
            .alarms
            .is_empty()
    );
    let hash = maintenance
        .hash_kv(HashKvRequest { revision: 0 })
        .await
        .expect("hashkv")
        .into_inner();
    assert_eq!(hash.compact_revision, -1);

    let mut snapshot = maintenance
        .snapshot(SnapshotRequest {})
        .await
        .expect("snapshot")
        .into_inner();
    let mut file = Vec::new();
    while let Some(chunk) = snapshot.next().await {
        file.extend_from_slice(&chunk.expect("chunk").blob);
    }
    assert_eq!(file.len() % 512, 32);
    let (data, checksum) = file.split_at(file.len() - 32);
    assert_eq!(checksum, Sha256::digest(data).as_slice());

    // A member publishes its name and client URLs through the log after it starts (as etcd's
    // do), so the list names them once that entry is applied.
    let members = api_support::published_members(&channel).await;
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].name, "m0");
    assert_eq!(members[0].id, me);
    assert_eq!(members[0].client_ur_ls, vec![member.client_url.clone()]);
    assert_eq!(members[0].peer_ur_ls, vec![member.peer_url.clone()]);

    let mut auth = AuthClient::new(channel.clone());
    assert!(
        !auth
            .auth_status(AuthStatusRequest {})
            .await
            .expect("auth status")
            .into_inner()
            .enabled
    );
    assert_status(
        auth.authenticate(AuthenticateRequest::default()).await,
        Code::FailedPrecondition,
        "etcdserver: authentication is not enabled",
    );

    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let health = HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .expect("grpc health")
        .into_inner();
    assert_eq!(
        health.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

#[tokio::test]
async fn http_endpoints_answer_on_the_client_port() {
    let cluster = Cluster::start(1, &[]).await;
    let port = cluster.members[0].client_port;
    assert_eq!(
        http_get(port, "/health").await,
        (200, r#"{"health":"true","reason":""}"#.to_owned())
    );
    assert_eq!(
        http_get(port, "/version").await,
        (
            200,
            r#"{"etcdserver":"3.5.0","etcdcluster":"3.5.0"}"#.to_owned()
        )
    );
    KvClient::new(cluster.members[0].channel().await)
        .put(put("metric", "1"))
        .await
        .expect("put");
    let (code, metrics) = http_get(port, "/metrics").await;
    assert_eq!(code, 200);
    for expected in [
        "etcd_server_has_leader 1",
        "etcd_server_is_leader 1",
        "# TYPE etcd_disk_wal_fsync_duration_seconds histogram",
        "grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Put\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 1",
    ] {
        assert!(
            metrics.contains(expected),
            "missing {expected:?} in:\n{metrics}"
        );
    }
    let committed = metrics
        .lines()
        .find_map(|line| line.strip_prefix("etcd_server_proposals_committed_total "))
        .and_then(|value| value.parse::<u64>().ok())
        .expect("proposals committed");
    assert!(committed >= 1);
    let value_of = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|value| value.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{metrics}"))
    };
    // The put was acknowledged after an fsync of the log that carried it.
    assert!(value_of("etcd_disk_wal_fsync_duration_seconds_count") >= 1);
    assert!(value_of("etcd_disk_wal_write_bytes_total") > "metric".len() as u64);
}

/// etcd's access controller on the client port: CORS headers for the allowed origins (all by
/// default), preflight `OPTIONS` answered without running anything, hosts outside
/// `--host-whitelist` refused on a listener without TLS, `/v3beta/` served as `/v3/`, and gRPC
/// calls untouched by any of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_requests_pass_etcds_cors_and_host_checks() {
    let defaults = Cluster::start(1, &[]).await;
    let port = defaults.members[0].client_port;
    let request = format!(
        "GET /health HTTP/1.1\r\nHost: anything.example:{port}\r\nConnection: close\r\n\r\n"
    );
    let answer = http_exchange(port, &request).await;
    assert_eq!(answer.code, 200, "{answer:?}");
    assert_eq!(answer.header("access-control-allow-origin"), Some("*"));
    assert_eq!(
        answer.header("access-control-allow-methods"),
        Some("POST, GET, OPTIONS, PUT, DELETE")
    );
    assert_eq!(
        answer.header("access-control-allow-headers"),
        Some("accept, content-type, authorization")
    );
    drop(defaults);

    let cluster = Cluster::start(
        1,
        &[
            "--cors",
            "http://app.example,https://other.example:8443",
            "--host-whitelist",
            "localhost,127.0.0.1",
        ],
    )
    .await;
    let port = cluster.members[0].client_port;
    let get_version = |host: &str, origin: &str| {
        format!(
            "GET /version HTTP/1.1\r\nHost: {host}\r\nOrigin: {origin}\r\nConnection: close\r\n\r\n"
        )
    };
    let allowed = http_exchange(
        port,
        &get_version(&format!("127.0.0.1:{port}"), "http://app.example"),
    )
    .await;
    assert_eq!(allowed.code, 200, "{allowed:?}");
    assert!(allowed.body.contains("etcdserver"), "{allowed:?}");
    assert_eq!(
        allowed.header("access-control-allow-origin"),
        Some("http://app.example")
    );
    let other = http_exchange(port, &get_version("localhost", "http://evil.example")).await;
    assert_eq!(other.code, 200, "{other:?}");
    assert_eq!(
        other.header("access-control-allow-origin"),
        None,
        "{other:?}"
    );

    let rebound = http_exchange(
        port,
        &get_version("rebind.example:2379", "http://app.example"),
    )
    .await;
    assert_eq!(rebound.code, 421, "{rebound:?}");
    assert!(
        rebound
            .body
            .contains("ballot --host-whitelist \"rebind.example\""),
        "{rebound:?}"
    );

    // A preflight runs nothing: the put it announces is not made.
    let body = r#"{"key":"cHJlZmxpZ2h0","value":"eA=="}"#;
    let preflight = format!(
        "OPTIONS /v3/kv/put HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: https://other.example:8443\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let answer = http_exchange(port, &preflight).await;
    assert_eq!((answer.code, answer.body.as_str()), (200, ""), "{answer:?}");
    assert_eq!(
        answer.header("access-control-allow-origin"),
        Some("https://other.example:8443")
    );
    let mut kv = KvClient::new(cluster.members[0].channel().await);
    let range = kv
        .range(get("preflight"))
        .await
        .expect("range")
        .into_inner();
    assert!(range.kvs.is_empty(), "{range:?}");

    // The old gateway prefix writes through the same service.
    let put = format!(
        "POST /v3beta/kv/put HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let answer = http_exchange(port, &put).await;
    assert_eq!(answer.code, 200, "{answer:?}");
    let range = kv
        .range(get("preflight"))
        .await
        .expect("range")
        .into_inner();
    assert_eq!(range.kvs.len(), 1, "{range:?}");
    assert_eq!(range.kvs[0].value, bytes("x"));
}

/// `--wal-dir`: the log lives in a directory of its own, and a member is only started with
/// its log where it left it: without the flag, with another directory, or with the flag on a
/// data directory that holds its own log, it stops before serving and says what is wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dedicated_wal_dir_holds_the_log_and_must_not_move() {
    let wal_root = api_support::TempDir::new("wal-dir");
    let wal_dir = wal_root.0.join("m0-wal");
    let wal_flag = wal_dir.to_str().expect("a UTF-8 path").to_owned();
    let mut cluster = Cluster::start(1, &["--wal-dir", &wal_flag]).await;
    let mut kv = KvClient::new(cluster.members[0].channel().await);
    kv.put(put("kept", "in the dedicated log"))
        .await
        .expect("put");
    let data_dir = cluster.dir.0.join(&cluster.members[0].name);
    assert!(wal_dir.join("wal.meta").exists(), "the log is in --wal-dir");
    assert!(
        !data_dir.join("member").join("wal").exists(),
        "nothing of the log is under the data directory"
    );

    let refused_start = |cluster: &mut Cluster, extra: &[&str], expected: &str| {
        cluster.restart(0, extra);
        let exit = cluster.members[0].wait_exit(Duration::from_secs(20));
        let log = cluster.members[0].log_tail();
        let exit = exit.unwrap_or_else(|| panic!("the member kept running:\n{log}"));
        assert!(!exit.success(), "{log}");
        assert!(log.contains(expected), "expected {expected:?} in:\n{log}");
    };
    let own_wal = data_dir.join("member").join("wal");
    refused_start(
        &mut cluster,
        &[],
        &format!("there is no WAL in {}", own_wal.display()),
    );
    let elsewhere = wal_root.0.join("elsewhere");
    refused_start(
        &mut cluster,
        &["--wal-dir", elsewhere.to_str().expect("UTF-8")],
        &format!("there is no WAL in {}", elsewhere.display()),
    );

    cluster.restart(0, &["--wal-dir", &wal_flag]);
    cluster.wait_for_leader().await;
    let mut kv = KvClient::new(cluster.members[0].channel().await);
    let range = kv.range(get("kept")).await.expect("range").into_inner();
    assert_eq!(range.kvs.len(), 1, "{range:?}");
    assert_eq!(range.kvs[0].value, bytes("in the dedicated log"));

    // A member whose log is under its data directory is not started with --wal-dir.
    let mut plain = Cluster::start(1, &[]).await;
    let own_wal = plain
        .dir
        .0
        .join(&plain.members[0].name)
        .join("member")
        .join("wal");
    refused_start(
        &mut plain,
        &["--wal-dir", elsewhere.to_str().expect("UTF-8")],
        &format!("holds this member's WAL in {}", own_wal.display()),
    );
}

/// Waits for `member` to serve, then checks it is the only member, named `name`, with the URLs
/// it was started with.
async fn serves_alone_as(member: &api_support::Member, name: &str) {
    let channel = eventually("the member to serve", || {
        api_support::try_connect(&member.client_url)
    })
    .await
    .unwrap_or_else(|| panic!("it never served:\n{}", member.log_tail()));
    let members = api_support::published_members(&channel).await;
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].name, name);
    assert_eq!(members[0].client_ur_ls, vec![member.client_url.clone()]);
    assert_eq!(members[0].peer_ur_ls, vec![member.peer_url.clone()]);
}

/// A member configured by etcd's `ETCD_<FLAG>` variables alone, as etcd containers and systemd
/// units configure it, starts as those variables say.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_configured_by_etcds_environment_variables_starts_as_they_say() {
    let dir = api_support::TempDir::new("etcd-env");
    let member = api_support::spawn_from_etcd_env(&dir, "from-env");
    serves_alone_as(&member, "from-env").await;
    assert!(
        dir.0
            .join("from-env")
            .join("member")
            .join("cluster")
            .exists(),
        "the data is in ETCD_DATA_DIR"
    );
}

/// A member started with `--config-file` takes its settings from that etcd configuration file
/// and ignores the command line and environment, naming what it ignores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_configured_by_an_etcd_config_file_starts_as_it_says() {
    let dir = api_support::TempDir::new("config-file");
    let member = api_support::spawn_from_config_file(&dir, "from-file");
    serves_alone_as(&member, "from-file").await;
    let data = dir.0.join("from-file").join("member");
    assert!(
        data.join("cluster").exists(),
        "the data is in the file's data-dir"
    );
    assert!(!dir.0.join("not-here").exists(), "ETCD_DATA_DIR was used");
    let log = member.log_tail();
    for warning in [
        "--name is ignored: with --config-file every setting comes from the file",
        "ETCD_DATA_DIR is ignored: with --config-file every setting comes from the file",
        "`enable-pprof` is an etcd setting Ballot does not have; ignored",
    ] {
        assert!(log.contains(warning), "no {warning:?} in:\n{log}");
    }
}

/// etcd flags Ballot does not have: the harmless ones are ignored with a warning and the member
/// starts; one that chooses the cluster (`--discovery`) stops it with the reason, exit code 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_only_flags_are_ignored_with_a_warning_or_refused_with_the_reason() {
    let cluster = Cluster::start(
        1,
        &[
            "--grpc-keepalive-min-time",
            "5s",
            "--max-wals=5",
            "--enable-pprof",
        ],
    )
    .await;
    let member = &cluster.members[0];
    KvClient::new(member.channel().await)
        .put(put("etcd-flags", "1"))
        .await
        .expect("put");
    let log = member.log_tail();
    for flag in ["--grpc-keepalive-min-time", "--max-wals", "--enable-pprof"] {
        let warning = format!("{flag} is an etcd flag Ballot does not have; ignored");
        assert!(log.contains(&warning), "no {warning:?} in:\n{log}");
    }

    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_ballot"))
        .args([
            "--discovery",
            "https://discovery.etcd.io/3e86b59982e49066c5d813af1c2e2579",
        ])
        .output()
        .expect("run ballot");
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("--discovery is an etcd flag Ballot does not support")
            && stderr.contains("--initial-cluster"),
        "{stderr}"
    );
}

/// `--experimental-warning-apply-duration`: an entry that applies slower than the limit is
/// logged ("apply request took too long", as etcd words it) and counted in
/// `etcd_server_slow_apply_total`. With a limit of a nanosecond every put is slow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_applies_are_logged_and_counted() {
    let cluster = Cluster::start(1, &["--experimental-warning-apply-duration", "0.000001ms"]).await;
    let member = &cluster.members[0];
    KvClient::new(member.channel().await)
        .put(put("slow", "1"))
        .await
        .expect("put");
    let counted = eventually("the slow apply to be counted", || async {
        let (_, metrics) = http_get(member.client_port, "/metrics").await;
        metrics
            .lines()
            .find_map(|line| line.strip_prefix("etcd_server_slow_apply_total "))
            .and_then(|value| value.parse::<u64>().ok())
            .filter(|count| *count >= 1)
    })
    .await;
    assert!(counted.is_some(), "{}", member.log_tail());
    // The count rises just before the warning is written.
    member
        .await_log(&["apply request took too long"])
        .await
        .expect("the slow apply is logged");
}

/// `--metrics extensive` adds etcd's per-method handling-time histograms to `/metrics`, for calls
/// served on the connection (Put) and through the router (LeaseGrant); `basic`, the default,
/// leaves them out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extensive_metrics_time_every_grpc_call() {
    let histogram = "grpc_server_handling_seconds";
    let cluster = Cluster::start(1, &["--metrics", "extensive"]).await;
    let member = &cluster.members[0];
    let channel = member.channel().await;
    KvClient::new(channel.clone())
        .put(put("timed", "1"))
        .await
        .expect("put");
    LeaseClient::new(channel)
        .lease_grant(LeaseGrantRequest { ttl: 60, id: 0 })
        .await
        .expect("grant");
    let (_, metrics) = http_get(member.client_port, "/metrics").await;
    for method in [
        "grpc_method=\"Put\",grpc_service=\"etcdserverpb.KV\"",
        "grpc_method=\"LeaseGrant\",grpc_service=\"etcdserverpb.Lease\"",
    ] {
        let count = format!("{histogram}_count{{{method},grpc_type=\"unary\"}} 1");
        assert!(metrics.contains(&count), "no {count:?} in:\n{metrics}");
        let inf = format!("{histogram}_bucket{{{method},grpc_type=\"unary\",le=\"+Inf\"}} 1");
        assert!(metrics.contains(&inf), "no {inf:?} in:\n{metrics}");
    }
    drop(cluster);

    let basic = Cluster::start(1, &[]).await;
    let member = &basic.members[0];
    KvClient::new(member.channel().await)
        .put(put("untimed", "1"))
        .await
        .expect("put");
    let (_, metrics) = http_get(member.client_port, "/metrics").await;
    assert!(metrics.contains("grpc_server_handled_total"), "{metrics}");
    assert!(!metrics.contains(histogram), "{metrics}");
}

/// `--log-outputs`: the log goes to every output named (here a file and stderr); `--logger
/// zap`, as etcd command lines name etcd's logger, is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_go_to_every_output_named() {
    let dir = api_support::TempDir::new("log-outputs");
    let file = dir.0.join("member.log");
    let outputs = format!("{},stderr", file.display());
    let cluster = Cluster::start(1, &["--logger", "zap", "--log-outputs", &outputs]).await;
    let in_file = std::fs::read_to_string(&file).expect("the log file");
    assert!(in_file.contains("starting member"), "{in_file}");
    assert!(in_file.contains("member is serving"), "{in_file}");
    let on_stderr = cluster.members[0].log_tail();
    assert!(on_stderr.contains("member is serving"), "{on_stderr}");
}

/// `--max-snapshots`: the member keeps that many snapshot files (the one its log starts from
/// included), and restarts from what it kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_snapshots_bounds_the_snapshot_files_kept() {
    let flags = ["--snapshot-count", "5", "--max-snapshots", "1"];
    let mut cluster = Cluster::start(1, &flags).await;
    let snap_dir = cluster
        .dir
        .0
        .join(&cluster.members[0].name)
        .join("member")
        .join("snap");
    let snapshot_files = || {
        std::fs::read_dir(&snap_dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter(|entry| entry.file_name().to_string_lossy().ends_with(".snap"))
                    .count()
            })
            .unwrap_or(0)
    };
    let mut kv = KvClient::new(cluster.members[0].channel().await);
    let mut most = 0;
    for round in 0..40 {
        kv.put(put(&format!("k{round:02}"), "v"))
            .await
            .expect("put");
        most = most.max(snapshot_files());
    }
    let settled = eventually("snapshots to be taken and pruned to one", || async {
        (snapshot_files() == 1).then_some(())
    })
    .await;
    assert!(settled.is_some(), "{} files", snapshot_files());
    assert!(most <= 2, "one kept, at most one newer pending: saw {most}");

    cluster.restart(0, &flags);
    cluster.wait_for_leader().await;
    let mut kv = KvClient::new(cluster.members[0].channel().await);
    let range = kv
        .range(RangeRequest {
            key: bytes("k"),
            range_end: bytes("l"),
            count_only: true,
            ..RangeRequest::default()
        })
        .await
        .expect("range")
        .into_inner();
    assert_eq!(range.count, 40);
}
