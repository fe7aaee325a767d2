//! Shared by the API process tests: start real `ballot` members on free loopback ports with
//! their data in temporary directories, connect gRPC clients, and poll with deadlines.

#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ballot_proto::etcdserverpb::{
    MemberListRequest, PutRequest, RangeRequest, ResponseHeader, StatusRequest, StatusResponse,
    cluster_client::ClusterClient, kv_client::KvClient, maintenance_client::MaintenanceClient,
};
use bytes::Bytes;
use tonic::transport::Channel;

/// Short Raft timings keep elections and the lease minimum (ceil(1.5 x 0.5 s) = 1 s) fast, with
/// enough slack that a loaded two-core machine running many tests does not trigger elections.
pub const HEARTBEAT_MS: u64 = 50;
pub const ELECTION_MS: u64 = 500;
/// WAL segment size of test members (`--wal-segment-bytes`), instead of 64 MiB.
pub const TEST_WAL_SEGMENT_BYTES: u64 = 4 * 1024 * 1024;
/// How long any condition may take before a test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

static NEXT_DIR: AtomicU32 = AtomicU32::new(0);

pub mod ports;

pub use ports::free_port;

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(what: &str) -> TempDir {
        let n = NEXT_DIR.fetch_add(1, Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!("ballot-{what}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create a temporary directory");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One `ballot` process; killed on drop.
pub struct Member {
    pub name: String,
    pub client_url: String,
    pub peer_url: String,
    pub client_port: u16,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Member {
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub async fn channel(&self) -> Channel {
        connect(&self.client_url).await
    }

    /// Waits up to `within` for the process to exit on its own; its exit status, or `None` if
    /// it is still running (or was killed already).
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().expect("poll the member process") {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the member's log holds every one of `needles` ([`await_log`]).
    pub async fn await_log(&self, needles: &[&str]) -> Result<(), String> {
        await_log(&self.log, needles).await
    }

    /// The member's log, for failure messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log)
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What [`Cluster::start_prepared`] tells its hook about a member about to start.
pub struct Prepared {
    pub name: String,
    pub data_dir: PathBuf,
    pub peer_url: String,
    pub initial_cluster: String,
}

/// A cluster of `ballot` processes started together.
pub struct Cluster {
    pub members: Vec<Member>,
    pub dir: TempDir,
    /// `http`, or `https` for TLS between members (the caller passes the peer TLS flags).
    peer_scheme: &'static str,
}

impl Cluster {
    /// Starts `size` members with `extra` flags each and waits until every member knows the
    /// same leader.
    pub async fn start(size: usize, extra: &[&str]) -> Cluster {
        Cluster::start_in(TempDir::new("api"), size, extra).await
    }

    /// Like [`Cluster::start`], in `dir`: member `i` keeps its data in `dir/m{i}`, which the
    /// caller may have prepared (a mount point, say).
    pub async fn start_in(dir: TempDir, size: usize, extra: &[&str]) -> Cluster {
        Cluster::start_prepared(dir, size, extra, |_| {}).await
    }

    /// Like [`Cluster::start_in`], calling `prepare` for each member before it starts (to
    /// create its data directory, say), once every member's ports are chosen.
    pub async fn start_prepared(
        dir: TempDir,
        size: usize,
        extra: &[&str],
        prepare: impl FnMut(&Prepared),
    ) -> Cluster {
        Cluster::start_with_peer_scheme(dir, size, extra, "http", prepare).await
    }

    /// Like [`Cluster::start_prepared`], with peer URLs of `peer_scheme` (`https`: `extra`
    /// must carry the peer TLS flags).
    pub async fn start_with_peer_scheme(
        dir: TempDir,
        size: usize,
        extra: &[&str],
        peer_scheme: &'static str,
        mut prepare: impl FnMut(&Prepared),
    ) -> Cluster {
        let (ports, initial_cluster) = cluster_ports(size, peer_scheme);
        let members = ports
            .iter()
            .enumerate()
            .map(|(i, (client, peer))| {
                let name = format!("m{i}");
                prepare(&Prepared {
                    name: name.clone(),
                    data_dir: dir.0.join(&name),
                    peer_url: format!("{peer_scheme}://127.0.0.1:{peer}"),
                    initial_cluster: initial_cluster.clone(),
                });
                let ports = (*client, *peer);
                spawn_member(&dir, &name, ports, peer_scheme, &initial_cluster, extra)
            })
            .collect();
        let cluster = Cluster {
            members,
            dir,
            peer_scheme,
        };
        cluster.wait_for_leader().await;
        cluster
    }

    /// Kills member `index` (SIGKILL) and starts it again on the same ports and data
    /// directory, with `extra` flags.
    pub fn restart(&mut self, index: usize, extra: &[&str]) {
        let initial_cluster = self
            .members
            .iter()
            .map(|member| format!("{}={}", member.name, member.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        let member = &mut self.members[index];
        member.kill();
        let peer_port = member
            .peer_url
            .rsplit(':')
            .next()
            .and_then(|port| port.parse().ok())
            .expect("a peer port");
        let name = member.name.clone();
        let client_port = member.client_port;
        self.members[index] = spawn_member(
            &self.dir,
            &name,
            (client_port, peer_port),
            self.peer_scheme,
            &initial_cluster,
            extra,
        );
    }

    /// Starts member `name` on `ports` (client, peer) with an empty data directory, joining the
    /// running cluster (`--initial-cluster-state existing`) that the caller added its peer URL
    /// to with MemberAdd; `initial_cluster` as `etcdctl member add` prints it. Returns its
    /// index in `members`.
    pub fn start_joining(&mut self, name: &str, ports: (u16, u16), initial_cluster: &str) -> usize {
        let joining = spawn_member(
            &self.dir,
            name,
            ports,
            self.peer_scheme,
            initial_cluster,
            &["--initial-cluster-state", "existing"],
        );
        self.members.push(joining);
        self.members.len() - 1
    }

    /// Starts only the first member of a `size`-member cluster, with `extra` flags: the others
    /// never start, so it stays without a leader. Does not wait for anything. The member keeps
    /// its data in the directory returned, which outlives it.
    pub fn start_first_of(size: usize, extra: &[&str]) -> (TempDir, Member) {
        let dir = TempDir::new("alone");
        let (ports, initial_cluster) = cluster_ports(size, "http");
        let member = spawn_member(&dir, "m0", ports[0], "http", &initial_cluster, extra);
        (dir, member)
    }

    /// Waits until every running member reports the same, non-zero leader; returns its ID.
    pub async fn wait_for_leader(&self) -> u64 {
        let result = eventually("every member agrees on a leader", || async {
            let mut leaders = Vec::new();
            for member in &self.members {
                let channel = try_connect(&member.client_url).await?;
                let status = MaintenanceClient::new(channel)
                    .status(StatusRequest {})
                    .await
                    .ok()?
                    .into_inner();
                leaders.push(status.leader);
            }
            let first = *leaders.first()?;
            (first != 0 && leaders.iter().all(|leader| *leader == first)).then_some(first)
        })
        .await;
        match result {
            Some(leader) => leader,
            None => panic!("no leader; logs:\n{}", self.logs()),
        }
    }

    pub fn logs(&self) -> String {
        self.members
            .iter()
            .map(|member| format!("--- {}\n{}", member.name, member.log_tail()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The index of the member whose Status names itself leader.
    pub async fn leader_index(&self) -> usize {
        let leader = self.wait_for_leader().await;
        for (index, member) in self.members.iter().enumerate() {
            let status = MaintenanceClient::new(member.channel().await)
                .status(StatusRequest {})
                .await
                .expect("status")
                .into_inner();
            if status.header.map(|header| header.member_id) == Some(leader) {
                return index;
            }
        }
        panic!("leader {leader:x} is not among the members");
    }
}

/// Free (client, peer) ports for `size` members `m0`, `m1`, ..., and the `--initial-cluster`
/// that names them with `peer_scheme` URLs.
fn cluster_ports(size: usize, peer_scheme: &str) -> (Vec<(u16, u16)>, String) {
    let ports: Vec<(u16, u16)> = (0..size).map(|_| (free_port(), free_port())).collect();
    let initial_cluster = ports
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("m{i}={peer_scheme}://127.0.0.1:{peer}"))
        .collect::<Vec<_>>()
        .join(",");
    (ports, initial_cluster)
}

/// Starts a one-member cluster configured as etcd is in containers and systemd units: by
/// `ETCD_<FLAG>` variables alone (and the tests' small WAL segments), with no `BALLOT_`
/// variable set. Its name is `name`, its data in `dir/<name>`.
pub fn spawn_from_etcd_env(dir: &TempDir, name: &str) -> Member {
    let client_url = format!("http://127.0.0.1:{}", free_port());
    let peer_url = format!("http://127.0.0.1:{}", free_port());
    let mut command = ballot_without_ballot_env();
    command
        .env("ETCD_NAME", name)
        .env("ETCD_DATA_DIR", dir.0.join(name))
        .env("ETCD_LISTEN_CLIENT_URLS", &client_url)
        .env("ETCD_ADVERTISE_CLIENT_URLS", &client_url)
        .env("ETCD_LISTEN_PEER_URLS", &peer_url)
        .env("ETCD_INITIAL_ADVERTISE_PEER_URLS", &peer_url)
        .env("ETCD_INITIAL_CLUSTER", format!("{name}={peer_url}"))
        .env("ETCD_INITIAL_CLUSTER_STATE", "new")
        .env("ETCD_HEARTBEAT_INTERVAL", HEARTBEAT_MS.to_string())
        .env("ETCD_ELECTION_TIMEOUT", ELECTION_MS.to_string())
        .args(["--wal-segment-bytes", &TEST_WAL_SEGMENT_BYTES.to_string()]);
    spawn(command, dir, name, client_url, peer_url)
}

/// Starts a one-member cluster `name` configured by an etcd configuration file alone
/// (`--config-file`), with a command line and environment that say otherwise (and are ignored).
pub fn spawn_from_config_file(dir: &TempDir, name: &str) -> Member {
    let client_url = format!("http://127.0.0.1:{}", free_port());
    let peer_url = format!("http://127.0.0.1:{}", free_port());
    let file = dir.0.join(format!("{name}.conf.yml"));
    let yaml = format!(
        "# as etcd's etcd.conf.yml.sample lays it out\n\
         name: '{name}'\n\
         data-dir: {data_dir}\n\
         wal-dir:\n\
         heartbeat-interval: {HEARTBEAT_MS}\n\
         election-timeout: {ELECTION_MS}\n\
         listen-peer-urls: {peer_url}\n\
         listen-client-urls: {client_url}\n\
         initial-advertise-peer-urls: {peer_url}\n\
         advertise-client-urls: {client_url}\n\
         initial-cluster: {name}={peer_url}\n\
         initial-cluster-state: 'new'\n\
         wal-segment-bytes: {TEST_WAL_SEGMENT_BYTES}\n\
         enable-pprof: true\n\
         client-transport-security:\n  cert-file:\n  client-cert-auth: false\n\
         log-outputs: [stderr]\n",
        data_dir = dir.0.join(name).display(),
    );
    std::fs::write(&file, yaml).expect("write the configuration file");
    let mut command = ballot_without_ballot_env();
    command
        .env("ETCD_DATA_DIR", dir.0.join("not-here"))
        .arg("--config-file")
        .arg(&file)
        .args(["--name", "not-this-name"]);
    spawn(command, dir, name, client_url, peer_url)
}

/// The `ballot` binary, without the `BALLOT_` variables of the test's environment.
fn ballot_without_ballot_env() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ballot"));
    for (variable, _) in std::env::vars_os() {
        if variable.to_string_lossy().starts_with("BALLOT_") {
            command.env_remove(variable);
        }
    }
    command
}

/// Runs `command` as member `name`, its output in `dir/<name>.log`.
fn spawn(
    mut command: Command,
    dir: &TempDir,
    name: &str,
    client_url: String,
    peer_url: String,
) -> Member {
    let log = dir.0.join(format!("{name}.log"));
    let log_file = std::fs::File::create(&log).expect("create the member log");
    let log_err = log_file.try_clone().expect("clone the log handle");
    let child = command
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(log_err)
        .spawn()
        .expect("start ballot");
    let client_port = client_url
        .rsplit(':')
        .next()
        .and_then(|port| port.parse().ok())
        .expect("a client port");
    Member {
        name: name.to_owned(),
        client_url,
        peer_url,
        client_port,
        child: Some(child),
        log,
    }
}

fn spawn_member(
    dir: &TempDir,
    name: &str,
    (client_port, peer_port): (u16, u16),
    peer_scheme: &str,
    initial_cluster: &str,
    extra: &[&str],
) -> Member {
    let client_url = format!("http://127.0.0.1:{client_port}");
    let peer_url = format!("{peer_scheme}://127.0.0.1:{peer_port}");
    let mut command = Command::new(env!("CARGO_BIN_EXE_ballot"));
    command
        .args(["--name", name])
        .arg("--data-dir")
        .arg(dir.0.join(name))
        .args(["--listen-client-urls", &client_url])
        .args(["--advertise-client-urls", &client_url])
        .args(["--listen-peer-urls", &peer_url])
        .args(["--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", initial_cluster])
        .args(["--heartbeat-interval", &HEARTBEAT_MS.to_string()])
        .args(["--election-timeout", &ELECTION_MS.to_string()])
        // Small preallocated WAL segments: a test writes kilobytes, not 64 MiB per member.
        .args(["--wal-segment-bytes", &TEST_WAL_SEGMENT_BYTES.to_string()])
        .args(extra);
    spawn(command, dir, name, client_url, peer_url)
}

/// The member list once every member in it has published its name and client URLs (a member
/// does so through the log after it starts, as etcd's do).
pub async fn published_members(channel: &Channel) -> Vec<ballot_proto::etcdserverpb::Member> {
    let cluster = ClusterClient::new(channel.clone());
    eventually("every member to publish its name and client URLs", || {
        let mut cluster = cluster.clone();
        async move {
            let members = cluster
                .member_list(MemberListRequest { linearizable: true })
                .await
                .ok()?
                .into_inner()
                .members;
            members
                .iter()
                .all(|member| !member.name.is_empty() && !member.client_ur_ls.is_empty())
                .then_some(members)
        }
    })
    .await
    .expect("published members")
}

pub async fn try_connect(url: &str) -> Option<Channel> {
    Channel::from_shared(url.to_owned())
        .ok()?
        .connect_timeout(Duration::from_millis(500))
        .connect()
        .await
        .ok()
}

/// The Status of the member at `url`, if it answers.
pub async fn try_status(url: &str) -> Option<StatusResponse> {
    let channel = try_connect(url).await?;
    let status = MaintenanceClient::new(channel)
        .status(StatusRequest {})
        .await
        .ok()?;
    Some(status.into_inner())
}

pub async fn connect(url: &str) -> Channel {
    match eventually("connect", || try_connect(url)).await {
        Some(channel) => channel,
        None => panic!("cannot connect to {url}"),
    }
}

/// Waits until the log file at `path` holds every one of `needles`; its last lines if it does
/// not within [`DEADLINE`]. For what a member logs after a client has seen the effect (a
/// refused handshake is logged after the peer has seen the refusal).
pub async fn await_log(path: &Path, needles: &[&str]) -> Result<(), String> {
    let logged = || async {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        needles
            .iter()
            .all(|needle| text.contains(needle))
            .then_some(())
    };
    match eventually("log lines", logged).await {
        Some(()) => Ok(()),
        None => Err(format!("expected {needles:?} in:\n{}", log_tail(path))),
    }
}

/// The last 30 lines of the log file at `path`, for failure messages.
pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Polls `check` until it gives a value or [`DEADLINE`] passes (then `None`). The pause
/// between attempts is a retry interval, not synchronisation: every attempt re-checks.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if Instant::now() >= deadline {
            eprintln!("gave up waiting: {what}");
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A raw HTTP/1.1 GET: (status code, body).
pub async fn http_get(port: u16, path: &str) -> (u16, String) {
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    let answer = http_exchange(port, &request).await;
    (answer.code, answer.body)
}

/// What [`http_exchange`] read.
#[derive(Debug)]
pub struct HttpAnswer {
    pub code: u16,
    /// Header lines, names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpAnswer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(header, _)| header == name)
            .map(|(_, value)| value.as_str())
    }
}

/// Sends `request` (a whole HTTP/1.1 request that asks to close the connection) and reads the
/// answer to the end.
pub async fn http_exchange(port: u16, request: &str) -> HttpAnswer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send the request");
    let mut response = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut response))
        .await
        .expect("an answer in time")
        .expect("read the response");
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a header block");
    let mut lines = head.split("\r\n");
    let code = lines
        .next()
        .and_then(|status| status.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    HttpAnswer {
        code,
        headers,
        body: body.to_owned(),
    }
}

pub fn bytes(text: &str) -> Bytes {
    Bytes::from(text.to_owned())
}

/// A Put of `value` at `key`.
pub fn put(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: bytes(key),
        value: bytes(value),
        ..PutRequest::default()
    }
}

/// Puts `value` at `key` through `kv`; the revision of the put.
pub async fn put_revision(kv: &mut KvClient<Channel>, key: &str, value: &str) -> i64 {
    let response = kv.put(put(key, value)).await.expect("put").into_inner();
    response.header.expect("header").revision
}

/// The header of the member's Status answer.
pub async fn status_header(maintenance: &mut MaintenanceClient<Channel>) -> ResponseHeader {
    let status = maintenance.status(StatusRequest {}).await.expect("status");
    status.into_inner().header.expect("header")
}

/// A Range of the one `key` (linearizable).
pub fn get(key: &str) -> RangeRequest {
    RangeRequest {
        key: bytes(key),
        ..RangeRequest::default()
    }
}
