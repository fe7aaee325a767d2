//! A member whose disk fills up (its data directory on a small tmpfs, so the kernel answers
//! ENOSPC for real): nothing acknowledged is lost, the member keeps running and serving reads,
//! refuses new writes with etcd's "database space exceeded" and raises the NOSPACE alarm; a
//! leader hands its leadership over so the cluster goes on writing; once the tmpfs is enlarged
//! the member resumes on its own and catches up. Needs root to mount the tmpfs (CI runs as
//! root), like the network-namespace tests.

mod api_support;

use std::path::Path;
use std::process::Command;

use api_support::{Cluster, TempDir, eventually, put};
use ballot_proto::etcdserverpb::{
    AlarmMember, AlarmRequest, AlarmType, HashKvRequest, MoveLeaderRequest, RangeRequest,
    StatusRequest, kv_client::KvClient, maintenance_client::MaintenanceClient,
};
use tonic::Code;
use tonic::transport::Channel;

/// Segments of 4 MiB (`api_support`): a 10 MiB tmpfs holds the first segment and the one
/// prepared after it, not a third.
const SMALL_TMPFS_MIB: u64 = 10;
const LARGE_TMPFS_MIB: u64 = 64;
/// Each put writes a 60 KiB value: about 70 fill a segment.
const VALUE_BYTES: usize = 60 * 1024;
const NO_SPACE: &str = "etcdserver: mvcc: database space exceeded";

/// A tmpfs mounted on a temporary directory of its own, reached from `link` (a member's data
/// directory); unmounted and removed on drop.
struct Tmpfs {
    mount_point: TempDir,
}

impl Tmpfs {
    fn mount(link: &Path, mib: u64) -> Tmpfs {
        let mount_point = TempDir::new("tmpfs");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(&mount_point.0)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a tmpfs at {} failed: this test needs root (CI runs as root)",
            mount_point.0.display()
        );
        std::os::unix::fs::symlink(&mount_point.0, link).expect("link the data directory");
        Tmpfs { mount_point }
    }

    /// Frees space the way an operator would: the file system grows.
    fn resize(&self, mib: u64) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={mib}m")])
            .arg(&self.mount_point.0)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "remounting {} failed",
            self.mount_point.0.display()
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Before the mount point's own drop removes the (then empty) directory.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.mount_point.0)
            .status();
    }
}

fn value() -> String {
    "v".repeat(VALUE_BYTES)
}

async fn alarms(channel: Channel) -> Vec<AlarmMember> {
    MaintenanceClient::new(channel)
        .alarm(AlarmRequest::default())
        .await
        .expect("alarm")
        .into_inner()
        .alarms
}

async fn member_id(channel: Channel) -> u64 {
    MaintenanceClient::new(channel)
        .status(StatusRequest {})
        .await
        .expect("status")
        .into_inner()
        .header
        .expect("header")
        .member_id
}

/// The keys under `prefix`, read from the member's own store (serializable).
async fn local_keys(channel: Channel, prefix: &str) -> Vec<String> {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().expect("a non-empty prefix") += 1;
    KvClient::new(channel)
        .range(RangeRequest {
            key: prefix.as_bytes().to_vec().into(),
            range_end: end.into(),
            keys_only: true,
            serializable: true,
            ..RangeRequest::default()
        })
        .await
        .expect("serializable range")
        .into_inner()
        .kvs
        .into_iter()
        .map(|kv| String::from_utf8(kv.key.to_vec()).expect("utf-8 key"))
        .collect()
}

/// Every key of `acked` is in the member's own store.
async fn assert_stored(channel: Channel, acked: &[String], when: &str) {
    let stored = local_keys(channel, "k").await;
    for key in acked {
        assert!(stored.contains(key), "acknowledged {key} is missing {when}");
    }
}

/// The alarm list of a member whose disk is full.
fn no_space_alarm(member_id: u64) -> Vec<AlarmMember> {
    vec![AlarmMember {
        member_id,
        alarm: AlarmType::Nospace as i32,
    }]
}

fn assert_no_space(result: Result<tonic::Response<impl std::fmt::Debug>, tonic::Status>) {
    match result {
        Ok(response) => panic!("expected {NO_SPACE:?}, got {response:?}"),
        Err(status) => {
            assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
            assert_eq!(status.message(), NO_SPACE);
        }
    }
}

#[tokio::test]
async fn a_member_with_a_full_disk_refuses_writes_keeps_serving_reads_and_resumes() {
    let dir = TempDir::new("disk-full");
    let tmpfs = Tmpfs::mount(&dir.0.join("m0"), SMALL_TMPFS_MIB);
    let cluster = Cluster::start_in(dir, 1, &[]).await;
    let member = &cluster.members[0];
    let mut kv = KvClient::new(member.channel().await);
    let me = member_id(member.channel().await).await;
    let value = value();

    // Write until the disk is full. The write that finds it full waits for space and times
    // out (its outcome is unknown, as for any timed-out request); then writes are refused.
    let mut acked = Vec::new();
    for i in 0..400 {
        let key = format!("k{i:04}");
        match kv.put(put(&key, &value)).await {
            Ok(_) => acked.push(key),
            Err(status) => {
                eprintln!("put {i} failed: {status:?}");
                break;
            }
        }
    }
    assert!(
        acked.len() > 70,
        "the first segment took writes: {}",
        acked.len()
    );
    assert!(acked.len() < 400, "the disk filled up");
    let refused = eventually("writes are refused for want of space", || {
        let mut kv = kv.clone();
        async move {
            match kv.put(put("refused", "v")).await {
                Err(status) if status.code() == Code::ResourceExhausted => Some(status),
                _ => None,
            }
        }
    })
    .await
    .unwrap_or_else(|| panic!("no refusal; log:\n{}", member.log_tail()));
    assert_eq!(refused.message(), NO_SPACE);

    // The member still answers: the alarm, the status, and reads of everything acknowledged.
    assert_eq!(alarms(member.channel().await).await, no_space_alarm(me));
    let status = MaintenanceClient::new(member.channel().await)
        .status(StatusRequest {})
        .await
        .expect("status")
        .into_inner();
    assert!(
        status
            .errors
            .iter()
            .any(|error| error.contains("alarm:NOSPACE")),
        "{:?}",
        status.errors
    );
    assert_stored(member.channel().await, &acked, "while the disk is full").await;
    assert_no_space(kv.put(put("still-refused", "v")).await);

    // Space is freed: the waiting write goes through, the alarm ends, writes are taken again.
    tmpfs.resize(LARGE_TMPFS_MIB);
    let resumed = eventually("writes resume", || {
        let mut kv = kv.clone();
        async move { kv.put(put("after", "v")).await.ok() }
    })
    .await;
    assert!(resumed.is_some(), "log:\n{}", member.log_tail());
    assert_eq!(alarms(member.channel().await).await, Vec::new());
    assert_stored(member.channel().await, &acked, "after the resume").await;
    // The members stop before their file system goes.
    drop(cluster);
    drop(tmpfs);
}

#[tokio::test]
async fn a_leader_with_a_full_disk_hands_over_and_the_cluster_keeps_writing() {
    let dir = TempDir::new("disk-full-3");
    let tmpfs = Tmpfs::mount(&dir.0.join("m0"), SMALL_TMPFS_MIB);
    let cluster = Cluster::start_in(dir, 3, &[]).await;
    let full = &cluster.members[0];
    let full_id = member_id(full.channel().await).await;
    // Member 0, the one on the small tmpfs, leads.
    let leader = cluster.leader_index().await;
    if leader != 0 {
        MaintenanceClient::new(cluster.members[leader].channel().await)
            .move_leader(MoveLeaderRequest { target_id: full_id })
            .await
            .expect("move the leadership to member 0");
    }
    assert_eq!(cluster.leader_index().await, 0);

    // Writes through member 1 (forwarded to the leader while it leads) go on past the point
    // where member 0's disk is full: it hands the leadership over. During the change a write
    // can fail ("leader changed", "no leader"), as in any election; the client retries it, as
    // etcd's clients do.
    let kv = KvClient::new(cluster.members[1].channel().await);
    let value = value();
    let mut acked = Vec::new();
    for i in 0..250 {
        let key = format!("k{i:04}");
        let written = eventually("a write through member 1", || {
            let mut kv = kv.clone();
            let request = put(&key, &value);
            async move {
                match kv.put(request).await {
                    Ok(_) => Some(()),
                    Err(status) => {
                        eprintln!("put {i} failed (retried): {status:?}");
                        None
                    }
                }
            }
        })
        .await;
        assert!(written.is_some(), "put {i}; logs:\n{}", cluster.logs());
        acked.push(key);
    }
    let mut kv = kv;
    let new_leader = cluster.leader_index().await;
    assert_ne!(
        new_leader, 0,
        "the member with the full disk no longer leads"
    );
    assert_eq!(alarms(full.channel().await).await, no_space_alarm(full_id));
    assert_no_space(
        KvClient::new(full.channel().await)
            .put(put("refused", "v"))
            .await,
    );
    kv.put(put("through-a-follower", "v"))
        .await
        .expect("the cluster keeps writing");

    // Space is freed on member 0: it writes what waited, catches up, and agrees with the others.
    tmpfs.resize(LARGE_TMPFS_MIB);
    let agreed = eventually(
        "every member has the same state at the same revision",
        || {
            let members = &cluster.members;
            async move {
                let mut hashes = Vec::new();
                for member in members {
                    let response = MaintenanceClient::new(member.channel().await)
                        .hash_kv(HashKvRequest { revision: 0 })
                        .await
                        .ok()?
                        .into_inner();
                    hashes.push((response.header?.revision, response.hash));
                }
                hashes
                    .windows(2)
                    .all(|pair| pair[0] == pair[1])
                    .then_some(())
            }
        },
    )
    .await;
    assert!(agreed.is_some(), "logs:\n{}", cluster.logs());
    assert_eq!(alarms(full.channel().await).await, Vec::new());
    assert_stored(full.channel().await, &acked, "on member 0").await;
    // The members stop before their file system goes.
    drop(cluster);
    drop(tmpfs);
}
