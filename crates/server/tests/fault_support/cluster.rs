//! `ballot` members running in their own network namespaces, and the faults a test applies to
//! the processes: SIGKILL and restart, SIGSTOP and SIGCONT.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ballot_proto::etcdserverpb::{
    StatusRequest, StatusResponse, maintenance_client::MaintenanceClient,
};
use tonic::transport::Channel;

use super::net::Network;

pub const HEARTBEAT_MS: u64 = 50;
pub const ELECTION_MS: u64 = 500;
/// Small enough that snapshots and log compaction happen many times during a run, so restarted
/// members recover from snapshots and lagging ones may be sent one.
pub const SNAPSHOT_COUNT: u64 = 300;
/// Small WAL segments make segment rotation and cleanup part of every run, when the binary has
/// the flag (`ballot --help` is consulted; older binaries run without it).
pub const WAL_SEGMENT_BYTES: u64 = 256 * 1024;
/// How often the leader compares HashKVs with every member: many times during a run.
pub const CORRUPT_CHECK_MS: u64 = 300;
pub const CLIENT_PORT: u16 = 2379;
pub const PEER_PORT: u16 = 2380;

/// A directory for the run's data and logs. Removed on drop, except when the test is failing:
/// then it is kept (and its path printed) so the member logs and the history can be read.
pub struct RunDir(pub PathBuf);

impl RunDir {
    pub fn new(run: u32) -> RunDir {
        let path = std::env::temp_dir().join(format!("ballot-fault-{}-{run}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|error| panic!("creating {}: {error}", path.display()));
        RunDir(path)
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "fault test failed: data, logs and history kept in {}",
                self.0.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// One `ballot` process inside member `index`'s namespace.
pub struct Member {
    pub name: String,
    pub client_url: String,
    namespace: String,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    paused: bool,
}

impl Member {
    /// Starts the process. `ip netns exec` enters the namespace and then execs `ballot` in the
    /// same process, so the child's pid is `ballot`'s and signals reach it directly.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|error| panic!("opening {}: {error}", self.log.display()));
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.namespace,
                env!("CARGO_BIN_EXE_ballot"),
            ])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| panic!("starting {}: {error}", self.name));
        self.child = Some(child);
        self.paused = false;
    }

    /// SIGKILL: the process gets no chance to flush or say goodbye.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused = false;
    }

    /// SIGSTOP: the process freezes with its sockets open; peers see silence, not a closed
    /// connection.
    pub fn pause(&mut self) {
        self.signal(libc::SIGSTOP);
        self.paused = true;
    }

    /// SIGCONT after `pause`.
    pub fn resume(&mut self) {
        if self.paused {
            self.signal(libc::SIGCONT);
            self.paused = false;
        }
    }

    fn signal(&self, signal: libc::c_int) {
        let child = self
            .child
            .as_ref()
            .unwrap_or_else(|| panic!("signalling {}, which is not running", self.name));
        let pid = libc::pid_t::try_from(child.id())
            .unwrap_or_else(|_| panic!("pid {} does not fit pid_t", child.id()));
        // SAFETY: kill(2) only sends a signal; the pid is our own child, not yet reaped.
        let result = unsafe { libc::kill(pid, signal) };
        assert_eq!(result, 0, "kill({pid}, {signal}) failed for {}", self.name);
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Fails the test when the process exited without being killed: a crash is a bug.
    pub fn assert_alive(&mut self) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{} exited on its own ({status}); its log ends with:\n{}",
                self.name,
                self.log_tail()
            );
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        // SIGKILL reaches a stopped process too.
        self.kill();
    }
}

/// Whether this `ballot` binary accepts `flag` (another engineer may add it at any time).
fn binary_has_flag(flag: &str) -> bool {
    Command::new(env!("CARGO_BIN_EXE_ballot"))
        .arg("--help")
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).contains(flag))
        .unwrap_or(false)
}

/// Three (or more) members, each in its own namespace. Fields drop in order: processes first,
/// then the network they ran in, then the directory.
pub struct FaultCluster {
    pub members: Vec<Member>,
    pub network: Network,
    pub dir: RunDir,
}

/// With `BALLOT_FAULT_PEER_TLS=1` the members talk to each other over TLS (`https` peer URLs, a
/// CA and one peer certificate for every member's address made here), so the faults also hit
/// TLS sessions: handshakes cut by partitions, sessions of killed and frozen members.
fn peer_tls() -> bool {
    std::env::var("BALLOT_FAULT_PEER_TLS").is_ok_and(|value| value == "1")
}

/// Writes a CA and a peer certificate for `addresses` (server and client use) under `dir`;
/// returns the member flags that use them.
fn peer_tls_flags(dir: &std::path::Path, addresses: &[&str]) -> Vec<String> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    };
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "fault test CA");
    let ca = ca_params.self_signed(&ca_key).expect("CA");
    let key = KeyPair::generate().expect("peer key");
    let names: Vec<String> = addresses
        .iter()
        .map(|address| address.to_string())
        .collect();
    let mut params = CertificateParams::new(names).expect("peer params");
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.signed_by(&key, &ca, &ca_key).expect("sign");
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write a PEM file");
        path.display().to_string()
    };
    vec![
        format!("--peer-cert-file={}", write("peer.pem", cert.pem())),
        format!(
            "--peer-key-file={}",
            write("peer-key.pem", key.serialize_pem())
        ),
        format!("--peer-trusted-ca-file={}", write("ca.pem", ca.pem())),
        "--peer-client-cert-auth".to_string(),
    ]
}

impl FaultCluster {
    pub fn start(size: usize) -> FaultCluster {
        let run = super::next_run();
        let dir = RunDir::new(run);
        let network = Network::create(run, size);
        let tls = peer_tls();
        let scheme = if tls { "https" } else { "http" };
        let peer_url = |index: usize| format!("{scheme}://{}:{PEER_PORT}", network.address(index));
        let tls_flags = if tls {
            let addresses: Vec<&str> = (0..size).map(|index| network.address(index)).collect();
            peer_tls_flags(&dir.0, &addresses)
        } else {
            Vec::new()
        };
        let initial_cluster = (0..size)
            .map(|index| format!("m{index}={}", peer_url(index)))
            .collect::<Vec<_>>()
            .join(",");
        let segment_flag = binary_has_flag("--wal-segment-bytes")
            .then(|| format!("--wal-segment-bytes={WAL_SEGMENT_BYTES}"));
        // Both corruption checks, often: a restarted member that finds its data different from
        // a peer's refuses to start, and a CORRUPT alarm stops every write, so a false finding
        // under the faults fails the run (`assert_alive`, `write_served`).
        let corruption_flags = binary_has_flag("--experimental-corrupt-check-time").then(|| {
            [
                "--experimental-initial-corrupt-check".to_string(),
                format!("--experimental-corrupt-check-time={CORRUPT_CHECK_MS}ms"),
            ]
        });
        let members = (0..size)
            .map(|index| {
                let name = format!("m{index}");
                let client_url = format!("http://{}:{CLIENT_PORT}", network.address(index));
                let mut args = vec![
                    format!("--name={name}"),
                    format!("--data-dir={}", dir.0.join(&name).display()),
                    format!("--listen-client-urls={client_url}"),
                    format!("--advertise-client-urls={client_url}"),
                    format!("--listen-peer-urls={}", peer_url(index)),
                    format!("--initial-advertise-peer-urls={}", peer_url(index)),
                    format!("--initial-cluster={initial_cluster}"),
                    "--initial-cluster-state=new".to_string(),
                    "--initial-cluster-token=fault-test".to_string(),
                    format!("--heartbeat-interval={HEARTBEAT_MS}"),
                    format!("--election-timeout={ELECTION_MS}"),
                    format!("--snapshot-count={SNAPSHOT_COUNT}"),
                ];
                args.extend(segment_flag.clone());
                args.extend(corruption_flags.iter().flatten().cloned());
                args.extend(tls_flags.iter().cloned());
                Member {
                    log: dir.0.join(format!("{name}.log")),
                    name,
                    client_url,
                    namespace: network.namespace(index).to_string(),
                    args,
                    child: None,
                    paused: false,
                }
            })
            .collect();
        let mut cluster = FaultCluster {
            members,
            network,
            dir,
        };
        for member in &mut cluster.members {
            member.start();
        }
        cluster
    }

    pub fn logs(&self) -> String {
        self.members
            .iter()
            .map(|member| format!("--- {} ---\n{}", member.name, member.log_tail()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn assert_alive(&mut self) {
        for member in &mut self.members {
            member.assert_alive();
        }
    }

    pub fn write_file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.0.join(name);
        if let Err(error) = std::fs::write(&path, text) {
            eprintln!("could not write {}: {error}", path.display());
        }
        path
    }
}

/// A channel that connects on first use and reconnects after the member restarts; every call
/// on it gives up after `request_timeout`.
pub fn lazy_channel(url: &str, request_timeout: Duration) -> Channel {
    Channel::from_shared(url.to_string())
        .unwrap_or_else(|error| panic!("bad member URL {url}: {error}"))
        .connect_timeout(Duration::from_millis(500))
        .timeout(request_timeout)
        .connect_lazy()
}

/// Status of one member, or `None` when it does not answer in time.
pub async fn status(channel: &Channel) -> Option<StatusResponse> {
    let mut client = MaintenanceClient::new(channel.clone());
    tokio::time::timeout(Duration::from_millis(700), client.status(StatusRequest {}))
        .await
        .ok()?
        .ok()
        .map(|response| response.into_inner())
}
