//! `--quota-backend-bytes` with real `ballot` processes: past the quota, puts, txns with puts
//! and lease grants are refused with etcd's NOSPACE error and the member raises its NOSPACE
//! alarm, which is replicated: every member lists it and refuses such writes, it survives a
//! restart, and `etcdctl alarm disarm` through any member lifts it everywhere. Reads, deletes
//! and compactions go on; compaction, `Defragment` and a disarm bring writes back, as etcd's
//! documented recovery goes.

mod api_support;

use api_support::{Cluster, bytes, get, put};
use ballot_proto::etcdserverpb::{
    AlarmMember, AlarmRequest, AlarmType, CompactionRequest, DefragmentRequest, DeleteRangeRequest,
    LeaseGrantRequest, RangeRequest, RequestOp, StatusRequest, TxnRequest,
    alarm_request::AlarmAction, kv_client::KvClient, lease_client::LeaseClient,
    maintenance_client::MaintenanceClient, request_op,
};
use tonic::Code;
use tonic::transport::Channel;

const QUOTA: u64 = 400_000;
const NOSPACE: &str = "etcdserver: mvcc: database space exceeded";

fn assert_nospace<T: std::fmt::Debug>(result: Result<tonic::Response<T>, tonic::Status>) {
    let status = result.expect_err("refused over the quota");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(status.message(), NOSPACE);
}

/// The alarms a member lists (Alarm GET, as `etcdctl alarm list` asks).
async fn alarm_list(channel: &Channel) -> Vec<AlarmMember> {
    let answer = MaintenanceClient::new(channel.clone())
        .alarm(AlarmRequest::default())
        .await;
    answer.expect("alarm list").into_inner().alarms
}

/// `etcdctl alarm disarm`: lists the alarms, then deactivates each one by its member.
async fn alarm_disarm(channel: &Channel) -> Vec<AlarmMember> {
    let mut disarmed = Vec::new();
    for alarm in alarm_list(channel).await {
        let answer = MaintenanceClient::new(channel.clone())
            .alarm(AlarmRequest {
                action: AlarmAction::Deactivate as i32,
                member_id: alarm.member_id,
                alarm: alarm.alarm,
            })
            .await;
        disarmed.extend(answer.expect("disarm").into_inner().alarms);
    }
    disarmed
}

fn nospace_of(member_id: u64) -> Vec<AlarmMember> {
    vec![AlarmMember {
        member_id,
        alarm: AlarmType::Nospace as i32,
    }]
}

async fn member_id(channel: &Channel) -> u64 {
    let status = MaintenanceClient::new(channel.clone())
        .status(StatusRequest {})
        .await
        .expect("status")
        .into_inner();
    status.header.expect("header").member_id
}

fn txn_with(op: request_op::Request) -> TxnRequest {
    TxnRequest {
        success: vec![RequestOp { request: Some(op) }],
        ..TxnRequest::default()
    }
}

#[tokio::test]
async fn past_the_quota_the_alarm_is_raised_everywhere_until_disarmed() {
    let quota = QUOTA.to_string();
    let extra = ["--quota-backend-bytes", &quota];
    let mut cluster = Cluster::start(3, &extra).await;
    let mut channels = Vec::new();
    for member in &cluster.members {
        channels.push(member.channel().await);
    }
    let first = member_id(&channels[0]).await;
    let mut kv = KvClient::new(channels[0].clone());
    let value = "x".repeat(100_000);

    // Fill through member 0 until refused: the quota is four values' worth.
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

    // The refusing member's alarm is in the replicated state: every member lists it (a list
    // is linearizable, so it sees the raise that was applied before the refusal came back).
    for channel in &channels {
        assert_eq!(alarm_list(channel).await, nospace_of(first));
        let status = MaintenanceClient::new(channel.clone())
            .status(StatusRequest {})
            .await
            .expect("status")
            .into_inner();
        assert_eq!(
            status.errors,
            vec![format!("memberID:{first} alarm:NOSPACE ")]
        );
    }
    let status = MaintenanceClient::new(channels[0].clone())
        .status(StatusRequest {})
        .await
        .expect("status")
        .into_inner();
    assert!(status.db_size as u64 >= QUOTA - 100_000);

    // Every member refuses what would grow the state, a small put too, and a txn that puts.
    for channel in &channels {
        let mut kv = KvClient::new(channel.clone());
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
    }

    // Disarmed through another member, the alarm is gone everywhere: what fits under the quota
    // is taken again, and the next write that does not fit raises it again.
    assert_eq!(alarm_disarm(&channels[1]).await, nospace_of(first));
    for channel in &channels {
        assert!(alarm_list(channel).await.is_empty(), "disarmed");
    }
    kv.put(put("small", "1"))
        .await
        .expect("a put that fits, after disarm");
    assert_nospace(kv.put(put("big/again", &value)).await);
    assert_eq!(alarm_list(&channels[2]).await, nospace_of(first));

    // The alarm survives a restart, from the log and from a snapshot: member 2 defragments (a
    // snapshot that holds the alarm) and is killed; it comes back listing and enforcing it.
    MaintenanceClient::new(channels[2].clone())
        .defragment(DefragmentRequest {})
        .await
        .expect("defragment");
    cluster.restart(2, &extra);
    cluster.wait_for_leader().await;
    channels[2] = cluster.members[2].channel().await;
    assert_eq!(alarm_list(&channels[2]).await, nospace_of(first));
    assert_nospace(KvClient::new(channels[2].clone()).put(put("s", "1")).await);

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
    // Defragment takes now, on every member as etcd's defrag is per member.
    for channel in &channels {
        MaintenanceClient::new(channel.clone())
            .defragment(DefragmentRequest {})
            .await
            .expect("defragment");
        let status = MaintenanceClient::new(channel.clone())
            .status(StatusRequest {})
            .await
            .expect("status")
            .into_inner();
        assert!(
            (status.db_size as u64) < 10_000,
            "a snapshot of the compacted state: {} bytes",
            status.db_size
        );
    }
    // As in etcd, the alarm stays until disarmed, space or not.
    assert_nospace(kv.put(put("small", "2")).await);
    assert_eq!(alarm_disarm(&channels[2]).await, nospace_of(first));
    kv.put(put("small", "3")).await.expect("writes resume");
    let got = KvClient::new(channels[1].clone())
        .range(RangeRequest {
            key: bytes("small"),
            ..RangeRequest::default()
        })
        .await
        .expect("read")
        .into_inner();
    assert_eq!(got.kvs[0].value, bytes("3"));
    for channel in &channels {
        let status = MaintenanceClient::new(channel.clone())
            .status(StatusRequest {})
            .await
            .expect("status")
            .into_inner();
        assert!(status.errors.is_empty(), "{:?}", status.errors);
    }
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
