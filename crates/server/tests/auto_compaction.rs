//! The leader's own compaction (`--auto-compaction-mode`, `--auto-compaction-retention`) with
//! real `ballot` processes: the compaction is replicated, so every member ends up refusing the
//! same old revisions.

mod api_support;

use api_support::{Cluster, eventually, get, put_revision};
use ballot_proto::etcdserverpb::{
    HashKvRequest, RangeRequest, kv_client::KvClient, maintenance_client::MaintenanceClient,
};

/// The compact revision every member reports, once they all report the same one that `ok`
/// accepts.
async fn agreed_compact_revision(cluster: &Cluster, ok: impl Fn(i64) -> bool) -> Option<i64> {
    eventually("every member reports the compaction", || async {
        let mut seen = Vec::new();
        for member in &cluster.members {
            let hash = MaintenanceClient::new(member.channel().await)
                .hash_kv(HashKvRequest { revision: 0 })
                .await
                .ok()?
                .into_inner();
            seen.push(hash.compact_revision);
        }
        let first = seen[0];
        (ok(first) && seen.iter().all(|revision| *revision == first)).then_some(first)
    })
    .await
}

#[tokio::test]
async fn revision_mode_keeps_the_last_n_revisions_on_every_member() {
    let cluster = Cluster::start(
        3,
        &[
            "--auto-compaction-mode",
            "revision",
            "--auto-compaction-retention",
            "10",
            "--auto-compaction-check-interval",
            "100ms",
        ],
    )
    .await;
    let mut kv = KvClient::new(cluster.members[0].channel().await);
    let mut last = 0;
    for i in 0..30 {
        last = put_revision(&mut kv, &format!("k{i}"), "v").await;
    }
    let compacted = agreed_compact_revision(&cluster, |revision| revision == last - 10).await;
    assert_eq!(compacted, Some(last - 10), "logs:\n{}", cluster.logs());
    for member in &cluster.members {
        let mut kv = KvClient::new(member.channel().await);
        let old = kv
            .range(RangeRequest {
                revision: last - 11,
                ..get("k0")
            })
            .await
            .expect_err("compacted");
        assert_eq!(
            old.message(),
            "etcdserver: mvcc: required revision has been compacted"
        );
        let kept = kv
            .range(RangeRequest {
                revision: last - 10,
                ..get("k0")
            })
            .await
            .expect("the retained revisions are readable");
        assert_eq!(kept.into_inner().kvs.len(), 1);
    }
}

#[tokio::test]
async fn periodic_mode_compacts_what_is_older_than_the_retention() {
    let cluster = Cluster::start(3, &["--auto-compaction-retention", "1s"]).await;
    let mut kv = KvClient::new(cluster.members[0].channel().await);
    let first = put_revision(&mut kv, "a", "1").await;
    put_revision(&mut kv, "a", "2").await;
    // The leader compacts, about a second after its first sample, to a revision it saw at
    // least a second earlier: at least the first put's.
    let compacted = agreed_compact_revision(&cluster, |revision| revision >= first).await;
    assert!(compacted.is_some(), "logs:\n{}", cluster.logs());
}
