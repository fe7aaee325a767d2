//! Process-level cluster tests: real `ballot` processes (the binary cargo built for this
//! package) on free loopback ports with their own data directories, driven through the etcd v3
//! gRPC API. Members are killed with SIGKILL (`Child::kill`) and restarted from their data
//! directories. Every wait is a poll against a deadline; every process is killed when its test
//! ends, however it ends.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ballot_proto::etcdserverpb::{
    MemberAddRequest, MemberListRequest, PutRequest, RangeRequest, StatusRequest,
    cluster_client::ClusterClient, kv_client::KvClient, maintenance_client::MaintenanceClient,
};
use bytes::Bytes;
use tonic::transport::Channel;

const HEARTBEAT_MS: u64 = 25;
const ELECTION_MS: u64 = 250;
const WAL_SEGMENT_BYTES: u64 = 4 * 1024 * 1024;

#[path = "api_support/ports.rs"]
mod ports;

use ports::free_port;

/// One `ballot` process; killed (SIGKILL) when dropped.
struct Process {
    name: String,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Process {
    fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    fn start(&mut self, initial_cluster: &str, state: &str, snapshot_count: u64) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_ballot"))
            .args([
                format!("--name={}", self.name),
                format!("--data-dir={}", self.data_dir.display()),
                format!("--listen-client-urls={}", self.client_url()),
                format!("--advertise-client-urls={}", self.client_url()),
                format!("--listen-peer-urls={}", self.peer_url()),
                format!("--initial-advertise-peer-urls={}", self.peer_url()),
                format!("--initial-cluster={initial_cluster}"),
                format!("--initial-cluster-state={state}"),
                "--initial-cluster-token=process-test".to_string(),
                format!("--heartbeat-interval={HEARTBEAT_MS}"),
                format!("--election-timeout={ELECTION_MS}"),
                format!("--snapshot-count={snapshot_count}"),
                // Small preallocated WAL segments: kilobytes of writes, not 64 MiB per member.
                format!("--wal-segment-bytes={WAL_SEGMENT_BYTES}"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start ballot");
        self.child = Some(child);
    }

    /// SIGKILL: no chance to flush or say goodbye.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn is_running(&self) -> bool {
        self.child.is_some()
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Cluster {
    dir: PathBuf,
    members: Vec<Process>,
    initial_cluster: String,
    snapshot_count: u64,
    runtime: tokio::runtime::Runtime,
}

impl Cluster {
    fn start(test: &str, size: usize, snapshot_count: u64) -> Cluster {
        let dir = std::env::temp_dir().join(format!(
            "ballot-process-{test}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_nanos())
        ));
        std::fs::create_dir_all(&dir).expect("test directory");
        let members: Vec<Process> = (0..size)
            .map(|index| Cluster::process(&dir, &format!("m{index}")))
            .collect();
        let initial_cluster = members
            .iter()
            .map(|member| format!("{}={}", member.name, member.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("client runtime");
        let mut cluster = Cluster {
            dir,
            members,
            initial_cluster,
            snapshot_count,
            runtime,
        };
        let initial = cluster.initial_cluster.clone();
        for member in &mut cluster.members {
            member.start(&initial, "new", snapshot_count);
        }
        cluster
    }

    fn process(dir: &std::path::Path, name: &str) -> Process {
        Process {
            name: name.to_string(),
            client_port: free_port(),
            peer_port: free_port(),
            data_dir: dir.join(name),
            log: dir.join(format!("{name}.log")),
            child: None,
        }
    }

    fn logs(&self) -> String {
        self.members
            .iter()
            .map(|member| format!("--- {} ---\n{}", member.name, member.log_tail()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// A gRPC channel to member `index`, retrying until it accepts connections.
    fn channel(&self, index: usize) -> Channel {
        let url = self.members[index].client_url();
        let deadline = Instant::now() + Duration::from_secs(20);
        self.runtime.block_on(async {
            loop {
                let endpoint = Channel::from_shared(url.clone())
                    .expect("endpoint")
                    .connect_timeout(Duration::from_secs(1))
                    .timeout(Duration::from_secs(10));
                match endpoint.connect().await {
                    Ok(channel) => return channel,
                    Err(error) => {
                        assert!(
                            Instant::now() < deadline,
                            "member {index} never accepted connections: {error}\n{}",
                            self.logs()
                        );
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        })
    }

    /// The index of the member every running member names as leader.
    fn wait_leader(&self, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            if let Some(leader) = self.agreed_leader() {
                return leader;
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader within {within:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn agreed_leader(&self) -> Option<usize> {
        let mut leaders = BTreeSet::new();
        let mut ids = Vec::new();
        for (index, member) in self.members.iter().enumerate() {
            if !member.is_running() {
                ids.push(None);
                continue;
            }
            let status = self.runtime.block_on(async {
                let channel = Channel::from_shared(member.client_url())
                    .ok()?
                    .connect_timeout(Duration::from_millis(500))
                    .timeout(Duration::from_secs(1))
                    .connect()
                    .await
                    .ok()?;
                MaintenanceClient::new(channel)
                    .status(StatusRequest {})
                    .await
                    .ok()
                    .map(|response| response.into_inner())
            })?;
            let _ = index;
            leaders.insert(status.leader);
            ids.push(status.header.map(|header| header.member_id));
        }
        if leaders.len() != 1 {
            return None;
        }
        let leader = *leaders.first()?;
        if leader == 0 {
            return None;
        }
        ids.iter().position(|id| *id == Some(leader))
    }

    fn put(&self, channel: &Channel, key: &str, value: &str) -> Result<(), tonic::Status> {
        let mut client = KvClient::new(channel.clone());
        self.runtime
            .block_on(client.put(PutRequest {
                key: Bytes::copy_from_slice(key.as_bytes()),
                value: Bytes::copy_from_slice(value.as_bytes()),
                ..PutRequest::default()
            }))
            .map(|_| ())
    }

    /// Puts, retrying what etcd clients retry (Unavailable) until `within` has passed.
    fn put_retrying(&self, channel: &Channel, key: &str, value: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            match self.put(channel, key, value) {
                Ok(()) => return,
                Err(status)
                    if status.code() == tonic::Code::Unavailable && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(status) => panic!("put {key} failed: {status:?}\n{}", self.logs()),
            }
        }
    }

    /// Every key under `prefix` with its value, read from member `index`.
    fn range_prefix(
        &self,
        channel: &Channel,
        prefix: &str,
        serializable: bool,
    ) -> Result<Vec<(String, String)>, tonic::Status> {
        let mut end = prefix.as_bytes().to_vec();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        let mut client = KvClient::new(channel.clone());
        let response = self.runtime.block_on(client.range(RangeRequest {
            key: Bytes::copy_from_slice(prefix.as_bytes()),
            range_end: Bytes::from(end),
            serializable,
            ..RangeRequest::default()
        }))?;
        Ok(response
            .into_inner()
            .kvs
            .into_iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(&kv.key).into_owned(),
                    String::from_utf8_lossy(&kv.value).into_owned(),
                )
            })
            .collect())
    }

    fn wait_until(&self, what: &str, within: Duration, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + within;
        while !check() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn metric(&self, index: usize, name: &str) -> Option<f64> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.members[index].client_port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .ok()?;
        let mut text = String::new();
        stream.read_to_string(&mut text).ok()?;
        text.lines()
            .find(|line| line.starts_with(name) && line[name.len()..].starts_with(' '))
            .and_then(|line| line[name.len()..].trim().parse().ok())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for member in &mut self.members {
            member.kill();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn keys_with(prefix: &str, pairs: &[(String, String)]) -> BTreeSet<String> {
    pairs
        .iter()
        .filter(|(key, _)| key.starts_with(prefix))
        .map(|(key, _)| key.clone())
        .collect()
}

#[test]
fn three_members_serve_writes_and_reads_on_every_member() {
    let cluster = Cluster::start("rw", 3, 10_000);
    let leader = cluster.wait_leader(Duration::from_secs(20));
    let channels: Vec<Channel> = (0..3).map(|index| cluster.channel(index)).collect();
    // Writes through every member: the followers forward theirs to the leader.
    for round in 0..30 {
        let member = round % 3;
        cluster.put_retrying(
            &channels[member],
            &format!("rw/{round:02}"),
            &format!("from-{member}"),
            Duration::from_secs(10),
        );
    }
    // A linearizable read on any member sees every acknowledged write at once.
    for channel in &channels {
        let pairs = cluster.range_prefix(channel, "rw/", false).expect("range");
        assert_eq!(pairs.len(), 30);
        for (round, (key, value)) in pairs.iter().enumerate() {
            assert_eq!(key, &format!("rw/{round:02}"));
            assert_eq!(value, &format!("from-{}", round % 3));
        }
    }
    // The leader's header says it leads; a follower's names the same leader.
    let status = cluster
        .runtime
        .block_on(MaintenanceClient::new(channels[leader].clone()).status(StatusRequest {}))
        .expect("status")
        .into_inner();
    assert_eq!(status.header.map(|h| h.member_id), Some(status.leader));
    // Every member publishes its name and client URL through the log, as etcd members do.
    let follower = channels[(leader + 1) % 3].clone();
    let expected: Vec<(String, String)> = cluster
        .members
        .iter()
        .map(|member| (member.name.clone(), member.client_url()))
        .collect();
    cluster.wait_until("every member's attributes", Duration::from_secs(10), || {
        let Ok(response) = cluster.runtime.block_on(
            ClusterClient::new(follower.clone())
                .member_list(MemberListRequest { linearizable: true }),
        ) else {
            return false;
        };
        let mut published: Vec<(String, String)> = response
            .into_inner()
            .members
            .into_iter()
            .map(|m| (m.name, m.client_ur_ls.join(",")))
            .collect();
        published.sort();
        published == expected
    });
}

#[test]
fn killing_the_leader_during_writes_loses_no_acknowledged_write() {
    let mut cluster = Cluster::start("failover", 3, 10_000);
    let leader = cluster.wait_leader(Duration::from_secs(20));
    let channels: Vec<Channel> = (0..3).map(|index| cluster.channel(index)).collect();
    let acknowledged = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    // Four writers, through every member (including the one about to die), each writing
    // unique keys and recording what was acknowledged.
    let mut writers = Vec::new();
    for writer in 0..4 {
        let channel = channels[writer % 3].clone();
        let acknowledged = Arc::clone(&acknowledged);
        let stop = Arc::clone(&stop);
        writers.push(cluster.runtime.spawn(async move {
            let mut client = KvClient::new(channel);
            let mut round = 0u32;
            while !stop.load(Ordering::SeqCst) {
                let key = format!("ack/{writer}/{round:05}");
                round += 1;
                let put = client.put(PutRequest {
                    key: Bytes::from(key.clone()),
                    value: Bytes::from_static(b"v"),
                    ..PutRequest::default()
                });
                if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(3), put).await {
                    acknowledged.lock().expect("lock").push(key);
                } else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }));
    }
    let count = || acknowledged.lock().expect("lock").len();
    cluster.wait_until("writes before the kill", Duration::from_secs(20), || {
        count() >= 200
    });
    cluster.members[leader].kill();
    let killed_at = Instant::now();
    let before = count();
    // A new leader serves writes within a few election timeouts.
    cluster.wait_until(
        "writes to resume after the leader was killed",
        Duration::from_secs(10),
        || count() >= before + 50,
    );
    let recovered_after = killed_at.elapsed();
    cluster.members[leader].start(
        &cluster.initial_cluster.clone(),
        "new",
        cluster.snapshot_count,
    );
    cluster.wait_until(
        "more writes after the restart",
        Duration::from_secs(20),
        || count() >= before + 300,
    );
    stop.store(true, Ordering::SeqCst);
    for writer in writers {
        cluster.runtime.block_on(writer).expect("writer");
    }
    let acknowledged: BTreeSet<String> =
        acknowledged.lock().expect("lock").iter().cloned().collect();
    // Every acknowledged write is on every member, including the one killed and restarted.
    let survivor = (leader + 1) % 3;
    let stored = keys_with(
        "ack/",
        &cluster
            .range_prefix(&channels[survivor], "ack/", false)
            .expect("linearizable range"),
    );
    let lost: Vec<&String> = acknowledged.difference(&stored).collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    let restarted = cluster.channel(leader);
    cluster.wait_until(
        "the restarted member to catch up",
        Duration::from_secs(20),
        || {
            cluster
                .range_prefix(&restarted, "ack/", true)
                .is_ok_and(|pairs| keys_with("ack/", &pairs).is_superset(&acknowledged))
        },
    );
    assert!(
        recovered_after < Duration::from_millis(ELECTION_MS * 20),
        "writes resumed only {recovered_after:?} after the leader died"
    );
}

#[test]
fn an_added_member_is_sent_a_snapshot_and_catches_up() {
    let mut cluster = Cluster::start("join", 3, 50);
    let leader = cluster.wait_leader(Duration::from_secs(20));
    let channel = cluster.channel(leader);
    for round in 0..300 {
        cluster.put_retrying(
            &channel,
            &format!("snap/{round:03}"),
            &format!("v{round}"),
            Duration::from_secs(10),
        );
    }
    let mut newcomer = Cluster::process(&cluster.dir, "m3");
    let added = cluster
        .runtime
        .block_on(
            ClusterClient::new(channel.clone()).member_add(MemberAddRequest {
                peer_ur_ls: vec![newcomer.peer_url()],
                is_learner: false,
            }),
        )
        .expect("member add")
        .into_inner();
    assert_eq!(added.members.len(), 4);
    let initial = format!("{},m3={}", cluster.initial_cluster, newcomer.peer_url());
    newcomer.start(&initial, "existing", cluster.snapshot_count);
    cluster.members.push(newcomer);
    let joined = cluster.channel(3);
    cluster.wait_until(
        "the new member to catch up",
        Duration::from_secs(30),
        || {
            cluster
                .range_prefix(&joined, "snap/", true)
                .is_ok_and(|pairs| pairs.len() == 300)
        },
    );
    let pairs = cluster.range_prefix(&joined, "snap/", true).expect("range");
    assert_eq!(pairs[0], ("snap/000".to_string(), "v0".to_string()));
    assert_eq!(pairs[299], ("snap/299".to_string(), "v299".to_string()));
    assert!(
        cluster.metric(3, "ballot_snapshots_installed_total") >= Some(1.0),
        "the new member caught up without a snapshot\n{}",
        cluster.logs()
    );
    // The newcomer serves writes like every member.
    cluster.put_retrying(&joined, "snap/new", "ok", Duration::from_secs(10));
    let from_leader = cluster
        .range_prefix(&channel, "snap/new", false)
        .expect("range");
    assert_eq!(
        from_leader,
        vec![("snap/new".to_string(), "ok".to_string())]
    );
}
