//! `--quota-backend-bytes` with a real `ballot` process: past the quota, puts, txns with puts
//! and lease grants are refused with etcd's NOSPACE error and alarm while reads, deletes and
//! compactions go on; compaction and `Defragment` (a snapshot now) bring the size down and
//! writes resume, as etcd's documented recovery goes.

mod api_support;

use api_support::{Cluster, bytes, get, put};
use ballot_proto::etcdserverpb::{
    AlarmRequest, AlarmType, CompactionRequest, DefragmentRequest, DeleteRangeRequest,
    LeaseGrantRequest, RangeRequest, RequestOp, StatusRequest, TxnRequest,
    alarm_request::AlarmAction, kv_client::KvClient, lease_client::LeaseClient,
    maintenance_client::MaintenanceClient, request_op,
};
use tonic::Code;

const QUOTA: u64 = 400_000;
const NOSPACE: &str = "etcdserver: mvcc: database space exceeded";

fn assert_nospace<T: std::fmt::Debug>(result: Result<tonic::Response<T>, tonic::Status>) {
    let status = result.expect_err("refused over the quota");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(status.message(), NOSPACE);
}

/// How many alarms the member reports (Alarm GET).
async fn alarm_count(maintenance: &mut MaintenanceClient<tonic::transport::Channel>) -> usize {
    let answer = maintenance.alarm(AlarmRequest::default()).await;
    answer.expect("alarm").into_inner().alarms.len()
}

fn txn_with(op: request_op::Request) -> TxnRequest {
    TxnRequest {
        success: vec![RequestOp { request: Some(op) }],
        ..TxnRequest::default()
    }
}

#[tokio::test]
async fn past_the_quota_writes_are_refused_until_compaction_and_defragment() {
    let quota = QUOTA.to_string();
    let cluster = Cluster::start(1, &["--quota-backend-bytes", &quota]).await;
    let channel = cluster.members[0].channel().await;
    let mut kv = KvClient::new(channel.clone());
    let mut maintenance = MaintenanceClient::new(channel.clone());
    let value = "x".repeat(100_000);

    // Fill until refused: the quota is four values' worth.
    let mut stored = 0;
    let refused = loop {
        match kv.put(put(&format!("big/{stored}"), &value)).await {
            Ok(_) => stored += 1,
            Err(status) => break status,
        }
        assert!(stored < 10, "never refused; logs:\n{}", cluster.logs());
    };
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert_eq!(refused.message(), NOSPACE);
    assert!((3..=4).contains(&stored), "{stored} values fitted");

    assert_eq!(alarm_count(&mut maintenance).await, 1, "NOSPACE is raised");
    let status = maintenance
        .status(StatusRequest {})
        .await
        .expect("status")
        .into_inner();
    assert!(status.db_size as u64 >= QUOTA - 100_000);
    assert!(
        status
            .errors
            .iter()
            .any(|error| error.contains("alarm:NOSPACE"))
    );

    // What would grow the state is refused; a small put too, and a txn that puts.
    assert_nospace(kv.put(put("small", "1")).await);
    assert_nospace(
        kv.txn(txn_with(request_op::Request::RequestPut(put("small", "1"))))
            .await,
    );
    assert_nospace(
        LeaseClient::new(channel.clone())
            .lease_grant(LeaseGrantRequest { ttl: 60, id: 0 })
            .await,
    );
    // `etcdctl alarm disarm` lifts the alarm: what fits under the quota is taken again, and
    // the next write that does not fit raises it again.
    let disarmed = maintenance
        .alarm(AlarmRequest {
            action: AlarmAction::Deactivate as i32,
            member_id: 0,
            alarm: AlarmType::Nospace as i32,
        })
        .await
        .expect("disarm")
        .into_inner()
        .alarms;
    assert_eq!(disarmed.len(), 1, "the disarmed alarm is reported");
    assert_eq!(alarm_count(&mut maintenance).await, 0, "disarmed");
    kv.put(put("small", "1"))
        .await
        .expect("a put that fits, after disarm");
    assert_nospace(kv.put(put("big/again", &value)).await);
    assert_eq!(alarm_count(&mut maintenance).await, 1, "raised again");

    // Reads, a txn that only reads, deletes and compaction go on.
    let read = kv.range(get("big/0")).await.expect("read").into_inner();
    assert_eq!(read.kvs.len(), 1);
    kv.txn(txn_with(request_op::Request::RequestRange(get("big/0"))))
        .await
        .expect("a reading txn");
    let deleted = kv
        .delete_range(DeleteRangeRequest {
            key: bytes("big/"),
            range_end: bytes("big0"),
            ..DeleteRangeRequest::default()
        })
        .await
        .expect("delete over the quota")
        .into_inner();
    assert_eq!(deleted.deleted, stored);
    let revision = deleted.header.expect("header").revision;
    kv.compact(CompactionRequest {
        revision,
        physical: true,
    })
    .await
    .expect("compact over the quota");
    // Compaction frees the memory; the durable form shrinks with the next snapshot, which
    // Defragment takes now.
    maintenance
        .defragment(DefragmentRequest {})
        .await
        .expect("defragment");
    let status = maintenance
        .status(StatusRequest {})
        .await
        .expect("status")
        .into_inner();
    assert!(
        (status.db_size as u64) < 10_000,
        "a snapshot of the compacted state: {} bytes",
        status.db_size
    );
    assert!(status.errors.is_empty(), "{:?}", status.errors);
    assert_eq!(
        alarm_count(&mut maintenance).await,
        0,
        "the alarm ends with the space"
    );
    kv.put(put("small", "1")).await.expect("writes resume");
    let got = kv
        .range(RangeRequest {
            key: bytes("small"),
            ..RangeRequest::default()
        })
        .await
        .expect("read")
        .into_inner();
    assert_eq!(got.kvs[0].value, bytes("1"));
}

/// Defragment takes snapshots on the apply task while automatic snapshots (every 50 entries
/// here) and writes go on: the members must stay identical, and one killed afterwards must
/// recover from what the snapshots and the log left on disk.
#[tokio::test]
async fn defragment_under_writes_keeps_members_identical_and_restartable() {
    use ballot_proto::etcdserverpb::HashKvRequest;
    let extra = ["--snapshot-count", "50"];
    let mut cluster = Cluster::start(3, &extra).await;
    let writer_channel = cluster.members[0].channel().await;
    let writer = tokio::spawn(async move {
        let mut kv = KvClient::new(writer_channel);
        let mut last = 0;
        for i in 0..400 {
            let response = kv
                .put(put(&format!("w/{}", i % 37), &format!("value {i}")))
                .await
                .expect("put during defragments")
                .into_inner();
            last = response.header.expect("header").revision;
        }
        last
    });
    let mut clients = Vec::new();
    for member in &cluster.members {
        clients.push(MaintenanceClient::new(member.channel().await));
    }
    for _ in 0..20 {
        let rounds = clients.iter().map(|client| {
            let mut client = client.clone();
            async move { client.defragment(DefragmentRequest {}).await }
        });
        for answer in futures::future::join_all(rounds).await {
            answer.expect("defragment during writes");
        }
    }
    let last = writer.await.expect("the writer");

    let hashes = |cluster: &Cluster| {
        let urls: Vec<String> = cluster
            .members
            .iter()
            .map(|m| m.client_url.clone())
            .collect();
        async move {
            api_support::eventually("every member hashes the same history", || {
                let urls = urls.clone();
                async move {
                    let mut hashes = Vec::new();
                    for url in &urls {
                        let channel = api_support::try_connect(url).await?;
                        let hash = MaintenanceClient::new(channel)
                            .hash_kv(HashKvRequest { revision: last })
                            .await
                            .ok()?
                            .into_inner()
                            .hash;
                        hashes.push(hash);
                    }
                    hashes
                        .windows(2)
                        .all(|pair| pair[0] == pair[1])
                        .then_some(hashes[0])
                }
            })
            .await
        }
    };
    let before = hashes(&cluster).await.expect("the members agree");
    cluster.restart(1, &extra);
    let after = hashes(&cluster)
        .await
        .expect("the restarted member agrees again");
    assert_eq!(before, after);
}
