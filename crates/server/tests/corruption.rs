//! etcd's corruption checks with real `ballot` processes. One member's snapshot file is
//! rewritten with a value changed and its checksums made valid again: silent corruption that
//! no file check can catch (a bad write path, a bad disk under a recomputed CRC). Started with
//! `--experimental-initial-corrupt-check`, that member refuses to start, naming the
//! inconsistency; started without it, the leader's `--experimental-corrupt-check-time` check
//! finds it and raises a CORRUPT alarm for it alone, after which every member refuses writes
//! with "etcdserver: corrupt cluster" while reads go on, as in etcd.

mod api_support;

use std::path::Path;
use std::time::Duration;

use api_support::{Cluster, eventually, get, http_get, put, put_revision};
use ballot::storage::SnapshotPayload;
use ballot_proto::etcdserverpb::{
    AlarmMember, AlarmRequest, AlarmType, CompactionRequest, DefragmentRequest, RangeRequest,
    StatusRequest, kv_client::KvClient, maintenance_client::MaintenanceClient,
};
use ballot_wal::{RealDisk, SnapshotStore};
use bytes::Bytes;
use tonic::Code;
use tonic::transport::Channel;

const PERIODIC: &[&str] = &["--experimental-corrupt-check-time", "200ms"];
const ORIGINAL: &str = "original-value-x";
const CORRUPTED: &str = "CORRUPTED-valueX";

/// Replaces `from` by `to` (same length) in the store of the newest snapshot file under
/// `data_dir`, and writes it back with every checksum valid (the store's and the file's).
fn corrupt_newest_snapshot(data_dir: &Path, from: &str, to: &str) {
    assert_eq!(from.len(), to.len());
    let snapshots =
        SnapshotStore::open(RealDisk, &data_dir.join("member").join("snap"), 8).expect("open");
    let listed = snapshots.list().expect("list snapshots");
    let (index, term, path) = listed.first().expect("a snapshot file").clone();
    let loaded = snapshots.load(&path).expect("load the snapshot");
    let mut payload = SnapshotPayload::decode(&loaded.data).expect("a payload");
    let mut store = payload.store.to_vec();
    let at: Vec<usize> = store
        .windows(from.len())
        .enumerate()
        .filter(|(_, window)| *window == from.as_bytes())
        .map(|(at, _)| at)
        .collect();
    assert_eq!(at.len(), 1, "the value is stored once in the snapshot");
    store[at[0]..at[0] + to.len()].copy_from_slice(to.as_bytes());
    // The store's own trailer: CRC32C of everything before it.
    let body = store.len() - 4;
    let crc = crc32c::crc32c(&store[..body]);
    store[body..].copy_from_slice(&crc.to_le_bytes());
    payload.store = Bytes::from(store);
    snapshots
        .save(index, term, loaded.info.meta.clone(), &payload.encode())
        .expect("rewrite the snapshot");
}

async fn member_id(channel: &Channel) -> u64 {
    let status = MaintenanceClient::new(channel.clone())
        .status(StatusRequest {})
        .await
        .expect("status");
    status.into_inner().header.expect("header").member_id
}

async fn alarm_list(channel: &Channel) -> Option<Vec<AlarmMember>> {
    let answer = MaintenanceClient::new(channel.clone())
        .alarm(AlarmRequest::default())
        .await;
    Some(answer.ok()?.into_inner().alarms)
}

async fn value_of(channel: &Channel, key: &str, serializable: bool) -> String {
    let answer = KvClient::new(channel.clone())
        .range(RangeRequest {
            serializable,
            ..get(key)
        })
        .await
        .expect("range");
    let kvs = answer.into_inner().kvs;
    String::from_utf8(kvs.first().expect("the key exists").value.to_vec()).expect("utf-8")
}

/// Whether the member behind `channel` comes to serve `x` from its own store (a serializable
/// read) within the deadline: it has applied the write.
async fn serves_x(channel: &Channel) -> bool {
    let served = eventually("the member serves x", || async {
        let answer = KvClient::new(channel.clone())
            .range(RangeRequest {
                serializable: true,
                ..get("x")
            })
            .await
            .ok()?;
        (!answer.into_inner().kvs.is_empty()).then_some(())
    })
    .await;
    served.is_some()
}

/// The leader and the follower whose data was corrupted (killed, not restarted), with its ID.
struct Corrupted {
    leader: usize,
    corrupt: usize,
    corrupt_id: u64,
}

/// Writes keys and `x` = [`ORIGINAL`] through the leader, has a follower that applied them
/// write a snapshot, kills it and changes `x` in that snapshot to [`CORRUPTED`].
async fn corrupt_a_follower(cluster: &mut Cluster) -> Corrupted {
    let leader = cluster.leader_index().await;
    let corrupt = (leader + 1) % 3;
    let mut kv = KvClient::new(cluster.members[leader].channel().await);
    for i in 0..10 {
        kv.put(put(&format!("k{i}"), "v")).await.expect("put");
    }
    kv.put(put("x", ORIGINAL)).await.expect("put");

    // The member to corrupt has applied every write and holds them in a snapshot.
    let corrupt_channel = cluster.members[corrupt].channel().await;
    let corrupt_id = member_id(&corrupt_channel).await;
    assert!(serves_x(&corrupt_channel).await, "{}", cluster.logs());
    MaintenanceClient::new(corrupt_channel)
        .defragment(DefragmentRequest {})
        .await
        .expect("defragment writes a snapshot");
    cluster.members[corrupt].kill();
    let data_dir = cluster.dir.0.join(&cluster.members[corrupt].name);
    corrupt_newest_snapshot(&data_dir, ORIGINAL, CORRUPTED);
    Corrupted {
        leader,
        corrupt,
        corrupt_id,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_data_differs_is_refused_at_start_and_alarmed_while_running() {
    let mut cluster = Cluster::start(3, PERIODIC).await;
    let Corrupted {
        leader,
        corrupt,
        corrupt_id,
    } = corrupt_a_follower(&mut cluster).await;
    let leader_channel = cluster.members[leader].channel().await;

    // With the initial check, the member stops before serving, saying why.
    cluster.restart(corrupt, &["--experimental-initial-corrupt-check"]);
    let exit = cluster.members[corrupt].wait_exit(Duration::from_secs(30));
    let log = cluster.members[corrupt].log_tail();
    let exit = exit.unwrap_or_else(|| panic!("the member kept running:\n{log}"));
    assert!(!exit.success(), "{log}");
    let expected = format!("{corrupt_id:x} found data inconsistency with peers");
    assert!(log.contains(&expected), "expected {expected:?} in:\n{log}");
    assert!(
        log.contains("found different hash values from remote peer"),
        "{log}"
    );

    // Without it, the member runs, and the leader's periodic check raises CORRUPT for it alone.
    cluster.restart(corrupt, PERIODIC);
    let corrupt_channel = cluster.members[corrupt].channel().await;
    let expected = vec![AlarmMember {
        member_id: corrupt_id,
        alarm: AlarmType::Corrupt as i32,
    }];
    let raised = eventually("the leader raises CORRUPT", || async {
        let alarms = alarm_list(&leader_channel).await?;
        (!alarms.is_empty()).then_some(alarms)
    })
    .await;
    assert_eq!(raised, Some(expected.clone()), "{}", cluster.logs());
    assert_eq!(alarm_list(&corrupt_channel).await, Some(expected));

    // Writes are refused on every member; reads go on, and show the difference.
    for member in &cluster.members {
        let refused = KvClient::new(member.channel().await)
            .put(put("after", "v"))
            .await
            .expect_err("a write with CORRUPT up");
        assert_eq!(refused.code(), Code::DataLoss, "{refused:?}");
        assert_eq!(refused.message(), "etcdserver: corrupt cluster");
    }
    assert_eq!(value_of(&leader_channel, "x", false).await, ORIGINAL);
    assert_eq!(value_of(&corrupt_channel, "x", true).await, CORRUPTED);
    let (code, body) = http_get(cluster.members[leader].client_port, "/health").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("ALARM CORRUPT"), "{body}");
}

const COMPACT_HASH_CHECK: &[&str] = &[
    "--experimental-compact-hash-check-enabled",
    "--experimental-compact-hash-check-time",
    "200ms",
];

/// Compacts the cluster at its current revision through `channel`; the revision.
async fn compact_now(channel: &Channel) -> i64 {
    let mut kv = KvClient::new(channel.clone());
    let revision = put_revision(&mut kv, "compact-here", "v").await;
    kv.compact(CompactionRequest {
        revision,
        physical: true,
    })
    .await
    .expect("compact");
    revision
}

/// `--experimental-compact-hash-check-enabled`: every member hashes its history at each
/// compaction, and the leader compares the hashes. Members with the same data agree; one whose
/// data differs makes the leader raise a CORRUPT alarm for member 0, as etcd 3.5 does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_hashes_that_differ_raise_a_corrupt_alarm() {
    let mut cluster = Cluster::start(3, COMPACT_HASH_CHECK).await;
    let leader = cluster.leader_index().await;
    let leader_channel = cluster.members[leader].channel().await;
    compact_now(&leader_channel).await;
    cluster.members[leader]
        .await_log(&["successfully checked hash on whole cluster"])
        .await
        .expect("the members agree on their first compaction");
    assert_eq!(alarm_list(&leader_channel).await, Some(Vec::new()));

    let Corrupted {
        leader, corrupt, ..
    } = corrupt_a_follower(&mut cluster).await;
    cluster.restart(corrupt, COMPACT_HASH_CHECK);
    let leader_channel = cluster.members[leader].channel().await;
    // The restarted member must hash this compaction too: it has applied everything before.
    let restarted = cluster.members[corrupt].channel().await;
    assert!(serves_x(&restarted).await, "{}", cluster.logs());
    let revision = compact_now(&leader_channel).await;

    let expected = vec![AlarmMember {
        member_id: 0,
        alarm: AlarmType::Corrupt as i32,
    }];
    let raised = eventually("the leader raises CORRUPT", || async {
        let alarms = alarm_list(&leader_channel).await?;
        (!alarms.is_empty()).then_some(alarms)
    })
    .await;
    assert_eq!(raised, Some(expected), "{}", cluster.logs());
    cluster.members[leader]
        .await_log(&[
            "failed compaction hash check",
            &format!("revision={revision}"),
        ])
        .await
        .expect("the leader says which compaction differs");
    let refused = KvClient::new(leader_channel)
        .put(put("after", "v"))
        .await
        .expect_err("a write with CORRUPT up");
    assert_eq!(refused.message(), "etcdserver: corrupt cluster");
}
