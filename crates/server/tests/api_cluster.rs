//! The etcd API of a real three-member `ballot` cluster: writes and reads through followers,
//! watches on one member seeing writes made through another, Status agreeing on the leader,
//! membership changes, leadership transfer, keep-alives through a follower, and refusals of bad
//! requests on a follower while the cluster keeps serving.

mod api_support;

use api_support::{Cluster, bytes, eventually, get, put};
use ballot_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseTimeToLiveRequest, MemberAddRequest,
    MemberListRequest, MemberPromoteRequest, MemberRemoveRequest, MoveLeaderRequest, PutRequest,
    StatusRequest, WatchCreateRequest, WatchRequest, cluster_client::ClusterClient,
    kv_client::KvClient, lease_client::LeaseClient, maintenance_client::MaintenanceClient,
    watch_client::WatchClient, watch_request::RequestUnion,
};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

#[tokio::test]
async fn followers_forward_writes_serve_linearizable_reads_and_watches() {
    let cluster = Cluster::start(3, &[]).await;
    let leader = cluster.leader_index().await;
    let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let follower = &cluster.members[followers[0]];
    let other = &cluster.members[followers[1]];

    // A watch on one follower...
    let (requests, receiver) = mpsc::channel(2);
    let mut watch = WatchClient::new(other.channel().await)
        .watch(ReceiverStream::new(receiver))
        .await
        .expect("watch")
        .into_inner();
    requests
        .send(WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: bytes("f"),
                ..WatchCreateRequest::default()
            })),
        })
        .await
        .expect("stream open");
    let created = watch.next().await.expect("created").expect("ok");
    assert!(created.created);

    // ...sees a write made through the other follower, which was forwarded to the leader.
    let mut kv = KvClient::new(follower.channel().await);
    let written = kv
        .put(put("f", "from-a-follower"))
        .await
        .expect("put through a follower")
        .into_inner();
    let revision = written.header.expect("header").revision;
    let event = tokio::time::timeout(api_support::DEADLINE, watch.next())
        .await
        .expect("an event in time")
        .expect("stream open")
        .expect("ok");
    assert_eq!(
        event.events[0].kv.as_ref().map(|kv| kv.mod_revision),
        Some(revision)
    );

    // Linearizable reads on every member see the write at once.
    for member in &cluster.members {
        let range = KvClient::new(member.channel().await)
            .range(get("f"))
            .await
            .expect("linearizable range")
            .into_inner();
        assert_eq!(
            range.kvs[0].value,
            bytes("from-a-follower"),
            "on {}",
            member.name
        );
        assert!(range.header.expect("header").revision >= revision);
    }

    // An oversized request on a follower is refused there; the cluster keeps serving.
    let refused = kv
        .put(put("big", &"x".repeat(1536 * 1024)))
        .await
        .expect_err("too large");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert_eq!(refused.message(), "etcdserver: request is too large");
    kv.put(put("after", "ok")).await.expect("still serving");
}

#[tokio::test]
async fn status_membership_and_leader_transfer() {
    let cluster = Cluster::start(3, &[]).await;
    let leader_id = cluster.wait_for_leader().await;
    let mut ids = Vec::new();
    for member in &cluster.members {
        let status = MaintenanceClient::new(member.channel().await)
            .status(StatusRequest {})
            .await
            .expect("status")
            .into_inner();
        assert_eq!(status.leader, leader_id);
        assert!(!status.is_learner);
        ids.push(status.header.expect("header").member_id);
    }

    let mut cluster_client = ClusterClient::new(cluster.members[0].channel().await);
    let listed = cluster_client
        .member_list(MemberListRequest { linearizable: true })
        .await
        .expect("member list")
        .into_inner()
        .members;
    let mut listed_ids: Vec<u64> = listed.iter().map(|member| member.id).collect();
    listed_ids.sort_unstable();
    let mut expected_ids = ids.clone();
    expected_ids.sort_unstable();
    assert_eq!(listed_ids, expected_ids);

    // A learner that never starts: added and removed (its promotion: see the next test).
    let added = cluster_client
        .member_add(MemberAddRequest {
            peer_ur_ls: vec![format!("http://127.0.0.1:{}", api_support::free_port())],
            is_learner: true,
        })
        .await
        .expect("member add --learner")
        .into_inner();
    let learner = added.member.expect("the new member");
    assert!(learner.is_learner);
    assert!(learner.name.is_empty(), "an unstarted member has no name");
    assert_eq!(added.members.len(), 4);
    let bad_urls = cluster_client
        .member_add(MemberAddRequest {
            peer_ur_ls: vec!["not-a-url".into()],
            is_learner: false,
        })
        .await
        .expect_err("bad URL");
    assert_eq!(bad_urls.code(), Code::InvalidArgument);
    assert_eq!(
        bad_urls.message(),
        "etcdserver: given member URLs are invalid"
    );
    let removed = cluster_client
        .member_remove(MemberRemoveRequest { id: learner.id })
        .await
        .expect("member remove")
        .into_inner();
    assert_eq!(removed.members.len(), 3);
    let missing = cluster_client
        .member_remove(MemberRemoveRequest { id: learner.id })
        .await
        .expect_err("already removed");
    assert_eq!(missing.code(), Code::NotFound);
    assert_eq!(missing.message(), "etcdserver: member not found");

    // Move leadership to a follower, asking the leader as etcdctl does.
    let leader = cluster.leader_index().await;
    let target = ids[(leader + 1) % 3];
    MaintenanceClient::new(cluster.members[leader].channel().await)
        .move_leader(MoveLeaderRequest { target_id: target })
        .await
        .expect("move-leader");
    let moved = cluster.wait_for_leader().await;
    assert_eq!(moved, target);
    // A follower refuses to move leadership.
    let follower = (0..3).find(|i| ids[*i] != target).expect("a follower");
    let refused = MaintenanceClient::new(cluster.members[follower].channel().await)
        .move_leader(MoveLeaderRequest {
            target_id: ids[follower],
        })
        .await
        .expect_err("not the leader");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(refused.message(), "etcdserver: not leader");
}

/// etcd refuses to promote a learner whose log is not close to the leader's
/// (`isLearnerReady`: its match index at least 90% of the leader's): a voter that cannot vote
/// yet would weaken the quorum.
#[tokio::test]
async fn a_learner_that_is_not_in_sync_is_not_promoted() {
    let cluster = Cluster::start(3, &[]).await;
    let mut cluster_client = ClusterClient::new(cluster.members[0].channel().await);
    let learner = cluster_client
        .member_add(MemberAddRequest {
            peer_ur_ls: vec![format!("http://127.0.0.1:{}", api_support::free_port())],
            is_learner: true,
        })
        .await
        .expect("member add --learner")
        .into_inner()
        .member
        .expect("the new member");
    let promote = cluster_client
        .member_promote(MemberPromoteRequest { id: learner.id })
        .await
        .expect_err("the learner never started, so it is not in sync");
    assert_eq!(promote.code(), Code::FailedPrecondition);
    assert_eq!(
        promote.message(),
        "etcdserver: can only promote a learner member which is in sync with leader"
    );
    let voter = cluster.members[0].channel().await;
    let status = MaintenanceClient::new(voter)
        .status(StatusRequest {})
        .await
        .expect("status")
        .into_inner();
    let promote_voter = cluster_client
        .member_promote(MemberPromoteRequest {
            id: status.header.expect("header").member_id,
        })
        .await
        .expect_err("a voter is not a learner");
    assert_eq!(promote_voter.code(), Code::FailedPrecondition);
    assert_eq!(
        promote_voter.message(),
        "etcdserver: can only promote a learner member"
    );
}

/// `--strict-reconfig-check` (on by default, as in etcd): a membership change that could leave
/// the cluster without a working quorum is refused before it is proposed, also when it arrives
/// at a follower; once the cause is gone the same change goes through.
#[tokio::test]
async fn membership_changes_that_could_lose_the_quorum_are_refused() {
    let cluster = Cluster::start(3, &[]).await;
    let leader = cluster.leader_index().await;
    let follower = (leader + 1) % 3;
    let mut cluster_client = ClusterClient::new(cluster.members[follower].channel().await);
    let add = |is_learner| MemberAddRequest {
        peer_ur_ls: vec![format!("http://127.0.0.1:{}", api_support::free_port())],
        is_learner,
    };
    // A fourth voter that never starts: three of four still form a quorum.
    let never_started = cluster_client
        .member_add(add(false))
        .await
        .expect("a fourth voter while every member is up")
        .into_inner()
        .member
        .expect("the new member");
    // The leader has never heard from it: another member now could cost the quorum.
    for is_learner in [false, true] {
        let refused = cluster_client
            .member_add(add(is_learner))
            .await
            .expect_err("a member is down");
        assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
        assert_eq!(refused.message(), "etcdserver: unhealthy cluster");
    }
    // Removing a live voter leaves two working voters of three: allowed. Removing another
    // would leave one started member of two: refused.
    let member_id = |index: usize| {
        let channel = cluster.members[index].channel();
        async move {
            api_support::status_header(&mut MaintenanceClient::new(channel.await))
                .await
                .member_id
        }
    };
    let other = (0..3)
        .find(|i| *i != leader && *i != follower)
        .expect("a third member");
    let remaining = cluster_client
        .member_remove(MemberRemoveRequest {
            id: member_id(other).await,
        })
        .await
        .expect("removing a live voter while the rest keep a quorum")
        .into_inner()
        .members;
    assert_eq!(remaining.len(), 3);
    let refused = cluster_client
        .member_remove(MemberRemoveRequest {
            id: member_id(follower).await,
        })
        .await
        .expect_err("removing a live voter that the quorum needs");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert_eq!(
        refused.message(),
        "etcdserver: re-configuration failed due to not enough started members"
    );
    // The member that is down can go, and then members can be added again.
    let remaining = cluster_client
        .member_remove(MemberRemoveRequest {
            id: never_started.id,
        })
        .await
        .expect("removing the member that is down")
        .into_inner()
        .members;
    assert_eq!(remaining.len(), 2);
    let learner = cluster_client
        .member_add(add(true))
        .await
        .expect("a learner once every voter is up")
        .into_inner()
        .member
        .expect("the learner");
    cluster_client
        .member_remove(MemberRemoveRequest { id: learner.id })
        .await
        .expect("remove the learner");

    // A one-member cluster may grow by one member that has not started yet (to restore a
    // cluster from one member), but not by a second: two of three would not be started.
    let solo = Cluster::start(1, &[]).await;
    let mut solo_client = ClusterClient::new(solo.members[0].channel().await);
    solo_client
        .member_add(add(false))
        .await
        .expect("a second voter for a one-member cluster");
    let refused = solo_client
        .member_add(add(false))
        .await
        .expect_err("a third voter while the second has not started");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert_eq!(
        refused.message(),
        "etcdserver: re-configuration failed due to not enough started members"
    );
}

/// `--pre-vote` (on by default): a member that hears no one asks for pre-votes, which nobody
/// grants, so its term stays where it was and it cannot disturb a leader when it comes back.
/// With `--pre-vote=false` it starts a real election, raising its term, at every timeout.
#[tokio::test]
async fn a_cut_off_member_raises_its_term_only_without_pre_vote() {
    let (_pre_vote_dir, pre_voting) = Cluster::start_first_of(3, &[]);
    let (_plain_dir, plain) = Cluster::start_first_of(3, &["--pre-vote=false"]);
    let term_of = |member: &api_support::Member| {
        let url = member.client_url.clone();
        async move { Some(api_support::try_status(&url).await?.raft_term) }
    };
    // Four elections at least: four election timeouts (at most two each) have passed, in which
    // the pre-voting member, started first, would have raised its term twice at least.
    eventually(
        "the member without pre-vote to hold its fifth election",
        || async { term_of(&plain).await.filter(|term| *term >= 5) },
    )
    .await
    .unwrap_or_else(|| panic!("its term did not rise:\n{}", plain.log_tail()));
    let term = term_of(&pre_voting)
        .await
        .expect("status of the pre-voting member");
    assert!(term <= 1, "a pre-voting member alone reached term {term}");
}

#[tokio::test]
async fn keep_alives_through_a_follower_keep_a_lease() {
    let cluster = Cluster::start(3, &[]).await;
    let leader = cluster.leader_index().await;
    let follower = &cluster.members[(leader + 1) % 3];
    let channel = follower.channel().await;
    let mut lease = LeaseClient::new(channel.clone());
    let granted = lease
        .lease_grant(LeaseGrantRequest { ttl: 1, id: 0 })
        .await
        .expect("grant through a follower")
        .into_inner();
    KvClient::new(channel.clone())
        .put(PutRequest {
            lease: granted.id,
            ..put("kept", "v")
        })
        .await
        .expect("put");
    let (requests, receiver) = mpsc::channel(2);
    let mut answers = lease
        .lease_keep_alive(ReceiverStream::new(receiver))
        .await
        .expect("keep-alive")
        .into_inner();
    // Keep the lease alive for three TTLs, polling the key each round.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(3);
    let mut kv = KvClient::new(channel);
    while std::time::Instant::now() < until {
        requests
            .send(LeaseKeepAliveRequest { id: granted.id })
            .await
            .expect("stream open");
        let answer = answers.next().await.expect("answer").expect("ok");
        assert_eq!(answer.ttl, granted.ttl, "the lease is alive");
        let count = kv
            .range(get("kept"))
            .await
            .expect("range")
            .into_inner()
            .count;
        assert_eq!(count, 1, "the key lives while the lease is kept alive");
        // Pacing, not synchronisation: renew about three times per TTL, as clients do.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    drop(requests);
    let expired = eventually("the lease expires once keep-alives stop", || {
        let mut kv = kv.clone();
        async move { (kv.range(get("kept")).await.ok()?.into_inner().count == 0).then_some(()) }
    })
    .await;
    assert!(expired.is_some(), "{}", cluster.logs());
}

/// A watch stream on `channel`, with clientv3's `WithRequireLeader` metadata when
/// `require_leader`, watching `key`; returns the request sender (kept open) and the responses
/// after the created one.
async fn watch_on(
    channel: tonic::transport::Channel,
    key: &str,
    require_leader: bool,
) -> (
    mpsc::Sender<WatchRequest>,
    tonic::Streaming<ballot_proto::etcdserverpb::WatchResponse>,
) {
    let (requests, receiver) = mpsc::channel(2);
    let mut request = tonic::Request::new(ReceiverStream::new(receiver));
    if require_leader {
        request.metadata_mut().insert(
            "hasleader",
            tonic::metadata::MetadataValue::from_static("true"),
        );
    }
    let mut responses = WatchClient::new(channel)
        .watch(request)
        .await
        .expect("watch")
        .into_inner();
    requests
        .send(WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: bytes(key),
                ..WatchCreateRequest::default()
            })),
        })
        .await
        .expect("stream open");
    let created = responses.next().await.expect("created").expect("ok");
    assert!(created.created);
    (requests, responses)
}

/// A leader whose followers are gone steps down (check quorum), and then, as in etcd: writes
/// and linearizable reads fail fast with "etcdserver: no leader" (Unavailable, which clients
/// retry elsewhere), serializable reads are served from its store, a watch opened with
/// `hasleader` ends with "etcdserver: no leader", and a watch without it stays open and sees
/// the next write once the followers are back.
#[tokio::test]
async fn a_leader_without_quorum_steps_down_and_fails_fast() {
    let mut cluster = Cluster::start(3, &[]).await;
    let survivor = cluster.leader_index().await;
    let channel = cluster.members[survivor].channel().await;
    let mut kv = KvClient::new(channel.clone());
    kv.put(put("q", "1")).await.expect("put");
    let (_required_requests, mut required) = watch_on(channel.clone(), "q", true).await;
    let (_plain_requests, mut plain) = watch_on(channel.clone(), "q", false).await;

    for other in (0..3).filter(|index| *index != survivor) {
        cluster.members[other].kill();
    }
    let ended = tokio::time::timeout(api_support::DEADLINE, required.next()).await;
    match ended {
        Ok(Some(Err(status))) => {
            assert_eq!(status.code(), Code::Unavailable, "{status:?}");
            assert_eq!(status.message(), "etcdserver: no leader");
        }
        other => panic!(
            "expected the hasleader watch to end, got {other:?}\n{}",
            cluster.logs()
        ),
    }
    // etcd 3.6's probes: alive (it serves local reads), not ready (no linearizable read).
    let port = cluster.members[survivor].client_port;
    assert_eq!(
        api_support::http_get(port, "/livez").await,
        (200, "ok\n".into())
    );
    // etcd's answer to a failed probe: every check's line, verbose or not.
    let failed = "[+]data_corruption ok\n[+]serializable_read ok\n\
                  [-]linearizable_read failed: etcdserver: no leader\n[+]non_learner ok\n\n";
    for path in ["/readyz", "/readyz?verbose"] {
        assert_eq!(
            api_support::http_get(port, path).await,
            (503, failed.into()),
            "{path}"
        );
    }
    assert_eq!(
        api_support::http_get(port, "/readyz/linearizable_read").await,
        (
            503,
            "[-]linearizable_read failed: etcdserver: no leader\n\n".into()
        )
    );
    assert_eq!(
        api_support::http_get(port, "/readyz/serializable_read?verbose").await,
        (200, "[+]serializable_read ok\nok\n".into())
    );
    assert_eq!(
        api_support::http_get(port, "/livez/linearizable_read")
            .await
            .0,
        404
    );
    let (code, body) = api_support::http_get(port, "/readyz?exclude=linearizable_read").await;
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    let refused = kv.put(put("q", "lost")).await.expect_err("no quorum");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert_eq!(refused.message(), "etcdserver: no leader");
    let refused = kv.range(get("q")).await.expect_err("no quorum");
    assert_eq!(refused.message(), "etcdserver: no leader");
    let serializable = kv
        .range(ballot_proto::etcdserverpb::RangeRequest {
            serializable: true,
            ..get("q")
        })
        .await
        .expect("a serializable read is served locally")
        .into_inner();
    assert_eq!(serializable.kvs[0].value, bytes("1"));

    for other in (0..3).filter(|index| *index != survivor) {
        cluster.restart(other, &[]);
    }
    cluster.wait_for_leader().await;
    let written = eventually("a write once the quorum is back", || async {
        KvClient::new(channel.clone()).put(put("q", "2")).await.ok()
    })
    .await;
    assert!(written.is_some(), "{}", cluster.logs());
    let (code, body) = api_support::http_get(port, "/readyz?verbose").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body,
        "[+]data_corruption ok\n[+]serializable_read ok\n[+]linearizable_read ok\n\
         [+]non_learner ok\nok\n"
    );
    let event = tokio::time::timeout(api_support::DEADLINE, plain.next())
        .await
        .expect("an event in time")
        .expect("stream open")
        .expect("ok");
    assert_eq!(
        event.events[0].kv.as_ref().map(|kv| kv.value.clone()),
        Some(bytes("2"))
    );
}

/// `--initial-election-tick-advance` (on by default, as in etcd): members starting together
/// greet each other, and a member that hears from a quorum before any leader advances its
/// election clock, so the first election need not wait a whole election timeout. The first
/// member to start always does (the first frame it receives is a peer's greeting); a follower
/// restarted into a cluster with a leader hears the leader first and does not; with the flag
/// off no member advances.
#[tokio::test]
async fn starting_members_advance_their_election_clock_unless_a_leader_is_known() {
    const ADVANCED: &str = "advanced the election clock";
    let log_of = |member: &api_support::Member| std::fs::read_to_string(&member.log).unwrap();
    let mut cluster = Cluster::start(3, &[]).await;
    assert!(
        log_of(&cluster.members[0]).contains(ADVANCED),
        "the first member to start did not advance; logs:\n{}",
        cluster.logs()
    );

    let leader = cluster.leader_index().await;
    let follower = (leader + 1) % 3;
    cluster.restart(follower, &[]);
    let restarted = cluster.members[follower].client_url.clone();
    let knows_leader = eventually("the restarted follower to know the leader", || {
        let url = restarted.clone();
        async move { (api_support::try_status(&url).await?.leader != 0).then_some(()) }
    })
    .await;
    assert!(knows_leader.is_some(), "logs:\n{}", cluster.logs());
    let log = log_of(&cluster.members[follower]);
    assert!(
        !log.contains(ADVANCED),
        "a restarted follower advanced:\n{log}"
    );
    drop(cluster);

    let without = Cluster::start(3, &["--initial-election-tick-advance=false"]).await;
    for member in &without.members {
        let log = log_of(member);
        assert!(
            !log.contains(ADVANCED),
            "{} advanced with the flag off:\n{log}",
            member.name
        );
    }
}

/// `--experimental-enable-lease-checkpoint`: the leader records long leases' remaining TTLs in
/// the log, so after it dies the new leader goes on from the recorded TTL instead of granting
/// the whole TTL again (which it does without checkpoints: the TTL would read 30 again here).
/// The wait is the lease's time passing, which is what the test is about. Also: a lease
/// request a follower forwarded to a leader that died is asked again of the new leader.
#[tokio::test]
async fn a_new_leader_keeps_the_checkpointed_remaining_ttl() {
    let flags = [
        "--experimental-enable-lease-checkpoint",
        "--experimental-lease-checkpoint-interval",
        "1s",
    ];
    let mut cluster = Cluster::start(3, &flags).await;
    let leader = cluster.leader_index().await;
    let granted_at = std::time::Instant::now();
    let id = LeaseClient::new(cluster.members[leader].channel().await)
        .lease_grant(LeaseGrantRequest { ttl: 30, id: 0 })
        .await
        .expect("grant")
        .into_inner()
        .id;
    let waited = std::time::Duration::from_millis(4500);
    tokio::time::sleep(waited.saturating_sub(granted_at.elapsed())).await;
    cluster.members[leader].kill();
    let survivor = (leader + 1) % 3;
    let url = cluster.members[survivor].client_url.clone();
    let ttl = eventually("a new leader to answer TimeToLive", || {
        let url = url.clone();
        async move {
            let channel = api_support::try_connect(&url).await?;
            let answer = LeaseClient::new(channel)
                .lease_time_to_live(LeaseTimeToLiveRequest { id, keys: false })
                .await
                .ok()?
                .into_inner();
            Some(answer)
        }
    })
    .await
    .unwrap_or_else(|| panic!("no TimeToLive answer; logs:\n{}", cluster.logs()));
    let elapsed = granted_at.elapsed().as_secs_f64();
    assert_eq!(ttl.granted_ttl, 30);
    // The last checkpoint before the kill (they come about every second) recorded about
    // 30 - 4 s; the new leader added one election timeout (0.5 s) and has counted down since.
    // Without checkpoints it would have started again from 30.5 s when it took over, about
    // 4.5 s after the grant, and read about 4.5 s more than this bound allows.
    // The first TimeToLive reached the survivor while it still followed the dead leader: it
    // asks again once a new leader is known, instead of waiting out the request timeout (6 s
    // here, which would put the answer at 10.5 s).
    assert!(elapsed < 9.5, "answered {elapsed:.1} s after the grant");
    assert!(
        (ttl.ttl as f64) <= 32.0 - elapsed && ttl.ttl > 0,
        "TTL {} at {elapsed:.1} s after a 30 s grant: the new leader did not go on from a \
         checkpoint",
        ttl.ttl
    );
}
