//! `--force-new-cluster` with real `ballot` processes: a three-member cluster loses every
//! member; one of them is restarted with the flag and becomes a one-member cluster with the same
//! data at the same revisions (its HashKV unchanged), leads alone, lists only itself and takes
//! writes; restarted again without the flag it stays so, and a member added with MemberAdd and
//! an empty data directory joins it and catches up.

mod api_support;

use api_support::{Cluster, eventually, free_port, get, put_revision, status_header};
use ballot_proto::etcdserverpb::{
    HashKvRequest, MemberAddRequest, MemberListRequest, RangeRequest, StatusRequest,
    cluster_client::ClusterClient, kv_client::KvClient, maintenance_client::MaintenanceClient,
};
use bytes::Bytes;
use tonic::transport::Channel;

async fn hash_at(channel: &Channel, revision: i64) -> u32 {
    let answer = MaintenanceClient::new(channel.clone())
        .hash_kv(HashKvRequest { revision })
        .await
        .expect("hash kv");
    answer.into_inner().hash
}

/// Waits until the member at `channel` (ID `id`) leads, and checks it is the only member.
async fn leads_alone(cluster: &Cluster, channel: &Channel, id: u64) {
    let leads = eventually("the member leads", || async {
        let status = MaintenanceClient::new(channel.clone())
            .status(StatusRequest {})
            .await
            .ok()?
            .into_inner();
        (status.leader == id).then_some(())
    })
    .await;
    assert!(leads.is_some(), "{}", cluster.logs());
    let members = ClusterClient::new(channel.clone())
        .member_list(MemberListRequest::default())
        .await
        .expect("member list")
        .into_inner()
        .members;
    let ids: Vec<u64> = members.iter().map(|member| member.id).collect();
    assert_eq!(ids, vec![id]);
}

fn prefix(key: &str) -> RangeRequest {
    let mut end = key.as_bytes().to_vec();
    *end.last_mut().expect("a key") += 1;
    RangeRequest {
        range_end: Bytes::from(end),
        count_only: true,
        ..get(key)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_forced_into_a_new_cluster_keeps_its_data_and_takes_writes() {
    let mut cluster = Cluster::start(3, &[]).await;
    let leader = cluster.leader_index().await;
    let mut kv = KvClient::new(cluster.members[leader].channel().await);
    let mut last = 0;
    for i in 0..20 {
        last = put_revision(&mut kv, &format!("k{i:02}"), "v").await;
    }
    let survivor = (leader + 1) % 3;
    let channel = cluster.members[survivor].channel().await;
    let applied = eventually("the survivor applies every write", || async {
        let range = KvClient::new(channel.clone())
            .range(RangeRequest {
                serializable: true,
                ..get("k19")
            })
            .await
            .ok()?
            .into_inner();
        (!range.kvs.is_empty()).then_some(())
    })
    .await;
    assert!(applied.is_some(), "{}", cluster.logs());
    let hash = hash_at(&channel, last).await;
    let id = status_header(&mut MaintenanceClient::new(channel.clone()))
        .await
        .member_id;

    // The quorum is gone for good; the survivor is forced into a cluster of its own.
    for index in 0..3 {
        cluster.members[index].kill();
    }
    cluster.restart(survivor, &["--force-new-cluster"]);
    let channel = cluster.members[survivor].channel().await;
    leads_alone(&cluster, &channel, id).await;
    let log = cluster.members[survivor].log_tail();
    assert!(log.contains("forced a new one-member cluster"), "{log}");
    assert_eq!(hash_at(&channel, last).await, hash, "the same data");
    let mut kv = KvClient::new(channel.clone());
    let counted = kv.range(prefix("k")).await.expect("range").into_inner();
    assert_eq!(counted.count, 20);
    assert_eq!(put_revision(&mut kv, "k20", "after").await, last + 1);

    // Restarted without the flag, it is still a cluster of one with all of it.
    cluster.restart(survivor, &[]);
    let channel = cluster.members[survivor].channel().await;
    leads_alone(&cluster, &channel, id).await;
    let mut kv = KvClient::new(channel.clone());
    let counted = kv.range(prefix("k")).await.expect("range").into_inner();
    assert_eq!(counted.count, 21);
    assert_eq!(put_revision(&mut kv, "k21", "again").await, last + 2);

    // A new member joins the new cluster from an empty directory and gets everything.
    let ports = (free_port(), free_port());
    let peer_url = format!("http://127.0.0.1:{}", ports.1);
    ClusterClient::new(channel.clone())
        .member_add(MemberAddRequest {
            peer_ur_ls: vec![peer_url.clone()],
            is_learner: false,
        })
        .await
        .expect("member add");
    let survivor = &cluster.members[survivor];
    let initial = format!("{}={},joiner={peer_url}", survivor.name, survivor.peer_url);
    let joiner = cluster.start_joining("joiner", ports, &initial);
    let joiner_channel = cluster.members[joiner].channel().await;
    let hash = hash_at(&channel, last + 2).await;
    let caught_up = eventually("the new member catches up", || async {
        let answer = MaintenanceClient::new(joiner_channel.clone())
            .hash_kv(HashKvRequest { revision: last + 2 })
            .await
            .ok()?;
        (answer.into_inner().hash == hash).then_some(())
    })
    .await;
    assert!(caught_up.is_some(), "{}", cluster.logs());
    let mut kv = KvClient::new(joiner_channel);
    assert_eq!(put_revision(&mut kv, "k22", "joined").await, last + 3);
}
