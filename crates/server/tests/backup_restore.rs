//! Disaster recovery with real `ballot` processes: a backup taken through the Maintenance
//! `Snapshot` stream (what `etcdctl snapshot save` stores), inspected with `ballot snapshot
//! status`, restored with `ballot snapshot restore` into the data directories of a new
//! three-member cluster, which then serves the same data at the same revisions and takes new
//! writes.

mod api_support;

use std::process::Command;

use api_support::{Cluster, TempDir, bytes, eventually, get, put, put_revision, status_header};
use ballot_proto::etcdserverpb::{
    CompactionRequest, DeleteRangeRequest, HashKvRequest, LeaseGrantRequest,
    LeaseTimeToLiveRequest, PutRequest, RangeRequest, SnapshotRequest, kv_client::KvClient,
    lease_client::LeaseClient, maintenance_client::MaintenanceClient,
};
use futures::StreamExt;

const BALLOT: &str = env!("CARGO_BIN_EXE_ballot");

fn run(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(BALLOT)
        .args(args)
        .output()
        .expect("run ballot");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A new three-member cluster, each member restored from `backup` with `ballot snapshot
/// restore` and the new cluster's flags; `revision` is the backup's.
async fn restored_cluster(what: &str, backup: &str, revision: i64) -> Cluster {
    let segment = api_support::TEST_WAL_SEGMENT_BYTES.to_string();
    Cluster::start_prepared(TempDir::new(what), 3, &[], |member| {
        let data_dir = member.data_dir.to_str().expect("a UTF-8 path");
        let (ok, stdout, stderr) = run(&[
            "snapshot",
            "restore",
            backup,
            "--name",
            &member.name,
            "--data-dir",
            data_dir,
            "--initial-cluster",
            &member.initial_cluster,
            "--initial-advertise-peer-urls",
            &member.peer_url,
            "--wal-segment-bytes",
            &segment,
        ]);
        assert!(ok, "restore of {} failed: {stderr}", member.name);
        assert!(
            stdout.contains(&format!("restored revision {revision} into")),
            "{stdout}"
        );
    })
    .await
}

/// Checks that lease `id` is alive with `key` attached; returns its TimeToLive answer.
async fn lease_survives_with_key(
    channel: tonic::transport::Channel,
    id: i64,
    key: &str,
) -> ballot_proto::etcdserverpb::LeaseTimeToLiveResponse {
    let ttl = LeaseClient::new(channel)
        .lease_time_to_live(LeaseTimeToLiveRequest { id, keys: true })
        .await
        .expect("time to live")
        .into_inner();
    assert!(ttl.ttl > 0, "the lease survives: {ttl:?}");
    assert_eq!(ttl.keys, vec![bytes(key).to_vec()]);
    ttl
}

/// A field of the one-line JSON `ballot snapshot status -w json` prints.
fn json_field(json: &str, name: &str) -> i64 {
    let start = json
        .find(&format!("\"{name}\":"))
        .unwrap_or_else(|| panic!("{name} in {json}"))
        + name.len()
        + 3;
    json[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '-')
        .collect::<String>()
        .parse()
        .unwrap_or_else(|_| panic!("a number for {name} in {json}"))
}

#[tokio::test]
async fn a_backup_restores_into_a_new_cluster_with_the_same_data_and_revisions() {
    let work = TempDir::new("backup");
    let backup = work.0.join("backup.db");

    // The source: a one-member cluster with history, a deletion, a lease and a compaction.
    let source = Cluster::start(1, &[]).await;
    let channel = source.members[0].channel().await;
    let mut kv = KvClient::new(channel.clone());
    let mut lease = LeaseClient::new(channel.clone());
    let mut maintenance = MaintenanceClient::new(channel);
    for i in 0..30 {
        kv.put(put(&format!("key/{i:02}"), &format!("value {i}")))
            .await
            .expect("put");
    }
    let overwritten_at = put_revision(&mut kv, "key/00", "second value").await;
    kv.delete_range(DeleteRangeRequest {
        key: bytes("key/01"),
        ..DeleteRangeRequest::default()
    })
    .await
    .expect("delete");
    let lease_id = lease
        .lease_grant(LeaseGrantRequest { ttl: 600, id: 0 })
        .await
        .expect("grant")
        .into_inner()
        .id;
    kv.put(PutRequest {
        lease: lease_id,
        ..put("leased", "x")
    })
    .await
    .expect("put with lease");
    kv.compact(CompactionRequest {
        revision: 10,
        physical: true,
    })
    .await
    .expect("compact");
    let source_hash = maintenance
        .hash_kv(HashKvRequest { revision: 0 })
        .await
        .expect("hashkv")
        .into_inner();
    let revision = source_hash.header.expect("header").revision;
    let source_cluster = status_header(&mut maintenance).await.cluster_id;

    let mut stream = maintenance
        .snapshot(SnapshotRequest {})
        .await
        .expect("snapshot")
        .into_inner();
    let mut saved = Vec::new();
    while let Some(message) = stream.next().await {
        saved.extend_from_slice(&message.expect("a snapshot chunk").blob);
    }
    std::fs::write(&backup, &saved).expect("write the backup");
    drop(source);

    let backup_arg = backup.to_str().expect("a UTF-8 path");
    let (ok, status, stderr) = run(&["snapshot", "status", backup_arg, "-w", "json"]);
    assert!(ok, "snapshot status failed: {stderr}");
    assert_eq!(json_field(&status, "revision"), revision, "{status}");
    assert_eq!(json_field(&status, "hash"), i64::from(source_hash.hash));
    assert_eq!(json_field(&status, "compactRevision"), 10);
    assert_eq!(json_field(&status, "totalKey"), 30, "29 of key/ and leased");
    assert_eq!(json_field(&status, "leases"), 1);
    assert_eq!(json_field(&status, "totalSize"), saved.len() as i64);

    // Three new members, each restored from the same file with the new cluster's flags.
    let restored = restored_cluster("restored", backup_arg, revision).await;

    for member in &restored.members {
        let channel = member.channel().await;
        let mut kv = KvClient::new(channel.clone());
        let got = kv.range(get("key/00")).await.expect("range").into_inner();
        assert_eq!(
            got.kvs[0].value,
            bytes("second value"),
            "on {}",
            member.name
        );
        assert_eq!(got.kvs[0].mod_revision, overwritten_at);
        assert_eq!(got.kvs[0].version, 2);
        assert_eq!(got.header.expect("header").revision, revision);
        let deleted = kv.range(get("key/01")).await.expect("range").into_inner();
        assert!(deleted.kvs.is_empty(), "key/01 stays deleted");
        let old = kv
            .range(RangeRequest {
                revision: 5,
                ..get("key/00")
            })
            .await
            .expect_err("below the compaction");
        assert_eq!(
            old.message(),
            "etcdserver: mvcc: required revision has been compacted"
        );
        let mut maintenance = MaintenanceClient::new(channel.clone());
        let hash = maintenance
            .hash_kv(HashKvRequest { revision })
            .await
            .expect("hashkv")
            .into_inner();
        assert_eq!(
            hash.hash, source_hash.hash,
            "same history on {}",
            member.name
        );
        assert_eq!(hash.compact_revision, 10);
        let cluster_id = status_header(&mut maintenance).await.cluster_id;
        assert_ne!(cluster_id, source_cluster, "a new cluster");
        lease_survives_with_key(channel, lease_id, "leased").await;
    }

    // The new cluster takes writes after the restored revision, and every member applies them.
    let mut kv = KvClient::new(restored.members[0].channel().await);
    let written = put_revision(&mut kv, "after", "restore").await;
    assert_eq!(written, revision + 1);
    for member in &restored.members {
        let mut kv = KvClient::new(member.channel().await);
        let seen = eventually("the new write on every member", || {
            let mut kv = kv.clone();
            async move {
                let got = kv
                    .range(RangeRequest {
                        serializable: true,
                        ..get("after")
                    })
                    .await
                    .ok()?
                    .into_inner();
                (!got.kvs.is_empty()).then_some(())
            }
        })
        .await;
        assert!(seen.is_some(), "{} applies new writes", member.name);
        kv.range(get("after")).await.expect("linearizable read");
    }

    // A data directory in use is never overwritten.
    let in_use = restored.members[0].name.clone();
    let dir = restored.dir.0.join(&in_use);
    let (ok, _, stderr) = run(&[
        "snapshot",
        "restore",
        backup_arg,
        "--name",
        &in_use,
        "--data-dir",
        dir.to_str().expect("a UTF-8 path"),
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("already exists and is not empty"),
        "{stderr}"
    );
}

/// An etcd backup (`etcdctl snapshot save` from an etcd 3.4 member, made by
/// `tests/data/make-etcd-backup.sh`) restores into a new three-member Ballot cluster with etcd's
/// keys, history, revisions and leases: `etcdctl endpoint hashkv` gave etcd's hash of that
/// state, and the restored members give the same one.
#[tokio::test]
async fn an_etcd_backup_restores_into_a_ballot_cluster_with_etcds_data_and_revisions() {
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");
    let backup = format!("{data}/etcd-3.4-backup.db");
    let etcd_hash: u32 = std::fs::read_to_string(format!("{data}/etcd-3.4-backup.hashkv"))
        .expect("etcd's hash")
        .trim()
        .parse()
        .expect("a number");
    let (ok, status, stderr) = run(&["snapshot", "status", &backup, "-w", "json"]);
    assert!(ok, "snapshot status failed: {stderr}");
    assert_eq!(
        json_field(&status, "hash"),
        i64::from(etcd_hash),
        "{status}"
    );
    assert_eq!(json_field(&status, "revision"), 309);
    assert_eq!(json_field(&status, "compactRevision"), 4);
    assert_eq!(json_field(&status, "totalKey"), 306);
    assert_eq!(json_field(&status, "leases"), 1);

    let restored = restored_cluster("from-etcd", &backup, 309).await;

    for member in &restored.members {
        let channel = member.channel().await;
        let mut kv = KvClient::new(channel.clone());
        let at = |key: &str, revision: i64| RangeRequest {
            revision,
            ..get(key)
        };
        let kept = kv.range(get("kept")).await.expect("range").into_inner();
        let kept = &kept.kvs[0];
        assert_eq!(
            (
                kept.value.as_ref(),
                kept.create_revision,
                kept.mod_revision,
                kept.version
            ),
            (&b"v2"[..], 3, 4, 2),
            "on {}",
            member.name
        );
        let gone = kv.range(get("gone")).await.expect("range").into_inner();
        assert_eq!(gone.kvs[0].value, bytes("again"));
        assert_eq!((gone.kvs[0].create_revision, gone.kvs[0].version), (309, 1));
        assert_eq!(gone.header.expect("header").revision, 309);
        let before_delete = kv.range(at("gone", 4)).await.expect("range").into_inner();
        assert_eq!(before_delete.kvs[0].value, bytes("first"), "history kept");
        let deleted = kv.range(at("gone", 5)).await.expect("range").into_inner();
        assert!(deleted.kvs.is_empty(), "deleted at 5");
        let compacted = kv.range(at("kept", 3)).await.expect_err("compacted");
        assert_eq!(
            compacted.message(),
            "etcdserver: mvcc: required revision has been compacted"
        );
        let txn = kv
            .range(RangeRequest {
                range_end: bytes("txn0"),
                ..get("txn/")
            })
            .await
            .expect("range")
            .into_inner();
        let revisions: Vec<i64> = txn.kvs.iter().map(|kv| kv.mod_revision).collect();
        assert_eq!(revisions, [7, 7], "one transaction, one revision");
        let many = kv
            .range(RangeRequest {
                range_end: bytes("many0"),
                count_only: true,
                ..get("many/")
            })
            .await
            .expect("count")
            .into_inner();
        assert_eq!(many.count, 300);
        let big = kv.range(get("big")).await.expect("range").into_inner();
        assert_eq!(big.kvs[0].value.len(), 20_000, "a value on overflow pages");
        let leased = kv.range(get("leased")).await.expect("range").into_inner();
        let lease_id = leased.kvs[0].lease;
        assert_ne!(lease_id, 0);
        let ttl = lease_survives_with_key(channel.clone(), lease_id, "leased").await;
        assert_eq!(ttl.granted_ttl, 3600);
        let hash = MaintenanceClient::new(channel)
            .hash_kv(HashKvRequest { revision: 309 })
            .await
            .expect("hashkv")
            .into_inner();
        assert_eq!(hash.hash, etcd_hash, "etcd's hash on {}", member.name);
    }

    let mut kv = KvClient::new(restored.members[0].channel().await);
    assert_eq!(put_revision(&mut kv, "after", "import").await, 310);
}
