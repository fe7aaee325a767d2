//! `ballot dev`: a local cluster of child processes for trying Ballot out.
//!
//! The members are this same executable started with etcd-style member flags on free loopback
//! ports, each with its data directory and log file under one directory. The parent prints the
//! client endpoints and an `etcdctl` example, waits for Ctrl-C (or SIGTERM), then stops every
//! member: SIGTERM first so each can close its files, SIGKILL after a grace period.
//!
//! Ports are found by binding port 0 on 127.0.0.1 and releasing the port just before the members
//! start; another process could take one in between, in which case that member fails to bind,
//! exits, and `ballot dev` reports it and stops the rest.

use std::future::Future;
use std::io;
use std::net::TcpListener;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use clap::Args;
use tokio::process::{Child, Command};

use crate::cli::LogLevel;

/// Largest cluster `ballot dev` starts; more members only slow a laptop down.
pub const DEV_MEMBERS_MAX: usize = 9;
/// How long members get to exit after SIGTERM before they are killed.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long to wait for every member to answer a read after starting.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Cluster token of dev clusters.
const DEV_CLUSTER_TOKEN: &str = "ballot-dev";

/// Flags of `ballot dev`.
#[derive(Debug, Clone, Args)]
pub struct DevArgs {
    /// Number of members to start.
    #[arg(long, default_value_t = 3)]
    pub members: usize,

    /// Directory for the members' data and logs; must be empty or absent
    /// [default: a new temporary directory, removed on exit].
    #[arg(long)]
    pub dir: Option<PathBuf>,

    /// Keep the temporary directory on exit.
    #[arg(long)]
    pub keep: bool,

    /// Log level of the members (their logs go to <dir>/<name>.log).
    #[arg(long, value_enum, default_value_t = LogLevel::Info)]
    pub log_level: LogLevel,

    /// Start the members with --unsafe-no-fsync (faster; loses writes on power failure).
    #[arg(long)]
    pub unsafe_no_fsync: bool,

    /// Advanced: passed to every member as --wal-segment-bytes (small segments keep a test
    /// cluster from preallocating 64 MiB files per member); see docs/cli.md.
    #[arg(long, hide = true)]
    pub wal_segment_bytes: Option<u64>,

    /// Program to run as each member instead of this executable. For testing `ballot dev` and
    /// the scripts built on it: etcd takes the same member flags.
    #[arg(long, hide = true, env = "BALLOT_DEV_MEMBER_PROGRAM")]
    pub member_program: Option<PathBuf>,

    /// Member flags passed to every member, after `--` (for example
    /// `ballot dev -- --quota-backend-bytes 1000000 --snapshot-count 1000`). The flags `ballot
    /// dev` sets itself (names, URLs, data directories, the initial cluster, the log level) are
    /// refused.
    #[arg(last = true, value_name = "MEMBER FLAGS")]
    pub member_flags: Vec<String>,
}

/// The member flags `ballot dev` sets for each member itself.
const DEV_MANAGED_FLAGS: &[&str] = &[
    "--name",
    "--data-dir",
    "--listen-client-urls",
    "--advertise-client-urls",
    "--listen-peer-urls",
    "--initial-advertise-peer-urls",
    "--initial-cluster",
    "--initial-cluster-state",
    "--initial-cluster-token",
    "--log-level",
];

/// Refuses a pass-through flag that `ballot dev` sets itself.
fn check_member_flags(flags: &[String]) -> Result<(), DevError> {
    for flag in flags {
        let name = flag.split_once('=').map_or(flag.as_str(), |(name, _)| name);
        if DEV_MANAGED_FLAGS.contains(&name) {
            return Err(DevError::ManagedFlag(name.to_owned()));
        }
    }
    Ok(())
}

/// Why `ballot dev` could not start or keep its cluster running.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("--members must be between 1 and {DEV_MEMBERS_MAX}, got {0}")]
    MemberCount(usize),
    #[error("{0} is set by `ballot dev` for each member and cannot be passed after --")]
    ManagedFlag(String),
    #[error("--dir {0} is not empty; give an empty or new directory")]
    DirNotEmpty(PathBuf),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("member {name} exited ({status}); last lines of {log}:\n{log_tail}")]
    MemberExited {
        name: String,
        status: ExitStatus,
        log: PathBuf,
        log_tail: String,
    },
}

fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> DevError {
    let what = what.into();
    move |source| DevError::Io { what, source }
}

/// One member of the dev cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevMember {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
}

impl DevMember {
    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }
}

/// Everything needed to start the members.
#[derive(Debug, Clone)]
pub struct DevPlan {
    pub dir: PathBuf,
    pub members: Vec<DevMember>,
    pub log_level: LogLevel,
    pub unsafe_no_fsync: bool,
    pub wal_segment_bytes: Option<u64>,
    /// Passed to every member after the flags above.
    pub member_flags: Vec<String>,
}

impl DevPlan {
    /// Lays out `ports.len()` members (client port, peer port each) under `dir`.
    pub fn new(args: &DevArgs, dir: &Path, ports: &[(u16, u16)]) -> DevPlan {
        let members = ports
            .iter()
            .enumerate()
            .map(|(index, &(client_port, peer_port))| {
                let name = format!("m{}", index + 1);
                DevMember {
                    data_dir: dir.join(format!("{name}.ballot")),
                    log_path: dir.join(format!("{name}.log")),
                    name,
                    client_port,
                    peer_port,
                }
            })
            .collect();
        DevPlan {
            dir: dir.to_path_buf(),
            members,
            log_level: args.log_level,
            unsafe_no_fsync: args.unsafe_no_fsync,
            wal_segment_bytes: args.wal_segment_bytes,
            member_flags: args.member_flags.clone(),
        }
    }

    /// `m1=http://127.0.0.1:p1,m2=...`
    pub fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|member| format!("{}={}", member.name, member.peer_url()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `127.0.0.1:c1,127.0.0.1:c2,...`, the form etcdctl's --endpoints takes.
    pub fn client_endpoints(&self) -> String {
        self.members
            .iter()
            .map(|member| format!("127.0.0.1:{}", member.client_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The command-line arguments of member `index` (without the program name).
    pub fn member_args(&self, index: usize) -> Vec<String> {
        let member = &self.members[index];
        let mut args = vec![
            "--name".to_owned(),
            member.name.clone(),
            "--data-dir".to_owned(),
            member.data_dir.display().to_string(),
            "--listen-client-urls".to_owned(),
            member.client_url(),
            "--advertise-client-urls".to_owned(),
            member.client_url(),
            "--listen-peer-urls".to_owned(),
            member.peer_url(),
            "--initial-advertise-peer-urls".to_owned(),
            member.peer_url(),
            "--initial-cluster".to_owned(),
            self.initial_cluster(),
            "--initial-cluster-state".to_owned(),
            "new".to_owned(),
            "--initial-cluster-token".to_owned(),
            DEV_CLUSTER_TOKEN.to_owned(),
            "--log-level".to_owned(),
            self.log_level.as_filter().to_owned(),
        ];
        if self.unsafe_no_fsync {
            args.push("--unsafe-no-fsync".to_owned());
        }
        if let Some(bytes) = self.wal_segment_bytes {
            args.push(format!("--wal-segment-bytes={bytes}"));
        }
        args.extend(self.member_flags.iter().cloned());
        args
    }

    /// What `ballot dev` prints once the members are started.
    pub fn banner(&self) -> String {
        let mut text = format!(
            "ballot dev: {} members running; data and logs in {}\n",
            self.members.len(),
            self.dir.display()
        );
        for member in &self.members {
            text.push_str(&format!(
                "  {}  client {}  peer {}  log {}\n",
                member.name,
                member.client_url(),
                member.peer_url(),
                member.log_path.display()
            ));
        }
        let endpoints = self.client_endpoints();
        text.push_str(&format!(
            "\nTry:\n  etcdctl --endpoints={endpoints} put foo bar\n  \
             etcdctl --endpoints={endpoints} get foo\n  \
             etcdctl --endpoints={endpoints} endpoint status -w table\n\nPress Ctrl-C to stop.\n"
        ));
        text
    }
}

/// Where `ballot dev` looks for member ports first: below Linux's default ephemeral range
/// (32768-60999), which supplies the local port of every outgoing connection. A port taken
/// from that range (by binding port 0) can become the local end of some connection before the
/// member binds it (the members' own peer connections start as soon as the first one is up),
/// and that member then fails with "Address already in use".
const DEV_PORTS: std::ops::Range<u16> = 20_000..32_000;

/// Endless random picks from [`DEV_PORTS`] (a new sequence on each call), for a caller to try
/// binding in turn.
pub fn random_ports() -> impl Iterator<Item = u16> {
    use std::hash::{BuildHasher, Hasher};
    let random = std::collections::hash_map::RandomState::new();
    let span = u64::from(DEV_PORTS.end - DEV_PORTS.start);
    (0u64..).map(move |attempt| {
        let mut hasher = random.build_hasher();
        hasher.write_u64(attempt);
        DEV_PORTS.start + (hasher.finish() % span) as u16
    })
}

/// Finds `count` distinct free ports on 127.0.0.1, at random in [`DEV_PORTS`] (each checked by
/// binding it), or from the kernel (port 0) when that range is taken. All listeners are held
/// until every port is chosen, so the ports differ from each other.
pub fn free_ports(count: usize) -> io::Result<Vec<u16>> {
    let mut listeners: Vec<TcpListener> = random_ports()
        .take(1_000)
        .filter_map(|port| TcpListener::bind(("127.0.0.1", port)).ok())
        .take(count)
        .collect();
    while listeners.len() < count {
        listeners.push(TcpListener::bind("127.0.0.1:0")?);
    }
    listeners
        .iter()
        .map(|listener| listener.local_addr().map(|addr| addr.port()))
        .collect()
}

/// `ballot dev`: plans, starts and supervises the cluster until Ctrl-C or SIGTERM.
pub async fn run(args: &DevArgs) -> Result<(), DevError> {
    if args.members == 0 || args.members > DEV_MEMBERS_MAX {
        return Err(DevError::MemberCount(args.members));
    }
    check_member_flags(&args.member_flags)?;
    let program = match &args.member_program {
        Some(program) => program.clone(),
        None => std::env::current_exe().map_err(io_error("cannot find the ballot executable"))?,
    };
    let (dir, temporary) = prepare_dir(args.dir.as_deref())?;
    let ports =
        free_ports(args.members * 2).map_err(io_error("cannot find free loopback ports"))?;
    let pairs: Vec<(u16, u16)> = ports.chunks(2).map(|pair| (pair[0], pair[1])).collect();
    let plan = DevPlan::new(args, &dir, &pairs);

    let probe_plan = plan.clone();
    let mut readiness: Option<tokio::task::JoinHandle<()>> = None;
    let result = supervise(&plan, &program, shutdown_signal(), |plan| {
        print!("{}", plan.banner());
        readiness = Some(tokio::spawn(report_readiness(probe_plan)));
    })
    .await;
    if let Some(readiness) = readiness {
        readiness.abort();
    }

    // A failed run keeps its logs for reading.
    if temporary && !args.keep && result.is_ok() {
        if let Err(err) = std::fs::remove_dir_all(&dir) {
            eprintln!("ballot dev: cannot remove {}: {err}", dir.display());
        }
    } else {
        eprintln!("ballot dev: data and logs kept in {}", dir.display());
    }
    result
}

/// Prints when every member answers a linearizable read (which needs an elected leader), or
/// that they do not after [`READY_TIMEOUT`].
async fn report_readiness(plan: DevPlan) {
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    for member in &plan.members {
        loop {
            if member_answers(&member.client_url()).await {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                eprintln!(
                    "ballot dev: member {} does not answer at {} after {} s; see {}",
                    member.name,
                    member.client_url(),
                    READY_TIMEOUT.as_secs(),
                    member.log_path.display()
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    println!("ballot dev: cluster ready, every member answers reads");
}

async fn member_answers(url: &str) -> bool {
    use ballot_proto::etcdserverpb::RangeRequest;
    use ballot_proto::etcdserverpb::kv_client::KvClient;

    let Ok(endpoint) = tonic::transport::Endpoint::from_shared(url.to_owned()) else {
        return false;
    };
    let endpoint = endpoint
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(1));
    let Ok(channel) = endpoint.connect().await else {
        return false;
    };
    let request = RangeRequest {
        key: bytes::Bytes::from_static(b"health"),
        ..RangeRequest::default()
    };
    KvClient::new(channel).range(request).await.is_ok()
}

/// Creates the directory: the given one (which must be empty or absent) or a new temporary one.
/// Returns it and whether it is temporary.
fn prepare_dir(requested: Option<&Path>) -> Result<(PathBuf, bool), DevError> {
    match requested {
        Some(dir) => {
            if let Ok(mut entries) = std::fs::read_dir(dir)
                && entries.next().is_some()
            {
                return Err(DevError::DirNotEmpty(dir.to_path_buf()));
            }
            std::fs::create_dir_all(dir)
                .map_err(io_error(format!("cannot create {}", dir.display())))?;
            Ok((dir.to_path_buf(), false))
        }
        None => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|elapsed| elapsed.subsec_nanos())
                .unwrap_or(0);
            let dir =
                std::env::temp_dir().join(format!("ballot-dev-{}-{nanos:x}", std::process::id()));
            std::fs::create_dir(&dir)
                .map_err(io_error(format!("cannot create {}", dir.display())))?;
            Ok((dir, true))
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = terminate.recv() => {}
            }
        }
        // Without a SIGTERM handler, Ctrl-C still stops the cluster.
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}

/// Starts `program` once per member, calls `on_started`, then waits until `shutdown` resolves
/// (Ok) or a member exits on its own (Err), and stops every member either way.
pub async fn supervise(
    plan: &DevPlan,
    program: &Path,
    shutdown: impl Future<Output = ()>,
    on_started: impl FnOnce(&DevPlan),
) -> Result<(), DevError> {
    let mut children: Vec<Child> = Vec::with_capacity(plan.members.len());
    for index in 0..plan.members.len() {
        match spawn_member(plan, index, program) {
            Ok(child) => children.push(child),
            Err(err) => {
                stop_all(&mut children).await;
                return Err(err);
            }
        }
    }
    on_started(plan);

    let outcome = tokio::select! {
        () = shutdown => Ok(()),
        (index, status) = first_exit(&mut children) => Err((index, status)),
    };
    stop_all(&mut children).await;
    match outcome {
        Ok(()) => Ok(()),
        Err((index, status)) => {
            let member = &plan.members[index];
            Err(DevError::MemberExited {
                name: member.name.clone(),
                status,
                log: member.log_path.clone(),
                log_tail: log_tail(&member.log_path, 20),
            })
        }
    }
}

fn spawn_member(plan: &DevPlan, index: usize, program: &Path) -> Result<Child, DevError> {
    let member = &plan.members[index];
    let log = std::fs::File::create(&member.log_path).map_err(io_error(format!(
        "cannot create {}",
        member.log_path.display()
    )))?;
    let log_err = log.try_clone().map_err(io_error(format!(
        "cannot reopen {}",
        member.log_path.display()
    )))?;
    Command::new(program)
        .args(plan.member_args(index))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        // If `ballot dev` itself dies, do not leave members behind.
        .kill_on_drop(true)
        .spawn()
        .map_err(io_error(format!(
            "cannot start {} as member {}",
            program.display(),
            member.name
        )))
}

/// Waits for the first child to exit and returns its index and status.
async fn first_exit(children: &mut [Child]) -> (usize, ExitStatus) {
    let waits = children.iter_mut().map(|child| Box::pin(child.wait()));
    let (status, index, _) = futures::future::select_all(waits).await;
    match status {
        Ok(status) => (index, status),
        // Waiting on a child we spawned only fails if it was already reaped; report it as a
        // failure rather than hiding the exit.
        Err(_) => (index, ExitStatus::from_raw(1 << 8)),
    }
}

/// SIGTERM to every member still running, then SIGKILL to those still alive after the grace
/// period; waits for all of them so none is left as a zombie.
async fn stop_all(children: &mut [Child]) {
    for child in children.iter() {
        terminate(child);
    }
    for child in children.iter_mut() {
        if tokio::time::timeout(STOP_GRACE, child.wait())
            .await
            .is_err()
        {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }
}

fn terminate(child: &Child) {
    if let Some(pid) = child.id().and_then(|pid| libc::pid_t::try_from(pid).ok()) {
        // SAFETY: kill(2) has no memory-safety preconditions; `pid` is our own child, which has
        // not been reaped yet (`id()` returns None after that), so it cannot name another process.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
}

/// The last `count` lines of a log file, or a note that it cannot be read.
fn log_tail(path: &Path, count: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(count);
            lines[start..].join("\n")
        }
        Err(err) => format!("(cannot read {}: {err})", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use crate::config::ServerConfig;
    use clap::Parser;

    fn dev_args(members: usize) -> DevArgs {
        DevArgs {
            members,
            dir: None,
            keep: false,
            log_level: LogLevel::Warn,
            unsafe_no_fsync: true,
            wal_segment_bytes: Some(4 * 1024 * 1024),
            member_program: None,
            member_flags: Vec::new(),
        }
    }

    fn plan(dir: &Path, members: usize) -> DevPlan {
        let ports = free_ports(members * 2).expect("free ports");
        let pairs: Vec<(u16, u16)> = ports.chunks(2).map(|pair| (pair[0], pair[1])).collect();
        DevPlan::new(&dev_args(members), dir, &pairs)
    }

    #[test]
    fn dev_flags_parse() {
        let cli =
            Cli::try_parse_from(["ballot", "dev", "--members", "5", "--keep"]).expect("valid");
        match cli.command {
            Some(crate::cli::Command::Dev(args)) => {
                assert_eq!(args.members, 5);
                assert!(args.keep);
                assert_eq!(args.dir, None);
            }
            other => panic!("expected dev, got {other:?}"),
        }
        let default = Cli::try_parse_from(["ballot", "dev"]).expect("valid");
        assert!(matches!(
            default.command,
            Some(crate::cli::Command::Dev(DevArgs { members: 3, .. }))
        ));
    }

    #[test]
    fn free_ports_are_distinct() {
        let mut ports = free_ports(10).expect("free ports");
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 10);
        assert!(ports.iter().all(|port| DEV_PORTS.contains(port)));
    }

    #[test]
    fn every_member_gets_a_valid_configuration_naming_the_whole_cluster() {
        let dir = PathBuf::from("/tmp/ballot-dev-test");
        let plan = plan(&dir, 3);
        let mut member_ids = Vec::new();
        let mut cluster_ids = Vec::new();
        for index in 0..3 {
            let argv = std::iter::once("ballot".to_owned()).chain(plan.member_args(index));
            let cli = Cli::try_parse_from(argv).expect("member arguments must parse");
            let config =
                ServerConfig::from_args(&cli.member).expect("member arguments must be valid");
            assert_eq!(config.name, format!("m{}", index + 1));
            assert_eq!(config.data_dir, dir.join(format!("m{}.ballot", index + 1)));
            assert_eq!(config.initial_cluster.len(), 3);
            assert!(config.unsafe_no_fsync);
            assert_eq!(config.wal_segment_bytes, 4 * 1024 * 1024);
            assert_eq!(
                config.client_listen_addrs[0].port(),
                plan.members[index].client_port
            );
            member_ids.push(config.member_id);
            cluster_ids.push(config.cluster_id);
        }
        member_ids.dedup();
        cluster_ids.dedup();
        assert_eq!(member_ids.len(), 3, "members must have distinct IDs");
        assert_eq!(cluster_ids.len(), 1, "members must agree on the cluster ID");
    }

    #[test]
    fn banner_lists_endpoints_and_an_etcdctl_example() {
        let plan = DevPlan::new(&dev_args(2), Path::new("/d"), &[(1001, 1002), (2001, 2002)]);
        let banner = plan.banner();
        assert!(
            banner.starts_with("ballot dev: 2 members running; data and logs in /d\n"),
            "{banner}"
        );
        assert!(banner.contains(
            "  m1  client http://127.0.0.1:1001  peer http://127.0.0.1:1002  log /d/m1.log\n"
        ));
        assert!(banner.contains("etcdctl --endpoints=127.0.0.1:1001,127.0.0.1:2001 put foo bar\n"));
        assert!(banner.ends_with("Press Ctrl-C to stop.\n"));
    }

    #[test]
    fn member_flags_after_the_separator_reach_every_member() {
        let cli = Cli::try_parse_from([
            "ballot",
            "dev",
            "--members",
            "2",
            "--",
            "--quota-backend-bytes",
            "1000000",
            "--snapshot-count=500",
        ])
        .expect("valid");
        let Some(crate::cli::Command::Dev(args)) = cli.command else {
            panic!("expected dev");
        };
        assert_eq!(
            args.member_flags,
            ["--quota-backend-bytes", "1000000", "--snapshot-count=500"]
        );
        let plan = DevPlan::new(&args, Path::new("/d"), &[(1001, 1002), (2001, 2002)]);
        for index in 0..2 {
            let member = plan.member_args(index);
            assert!(member.ends_with(&args.member_flags), "{member:?}");
            // What a member makes of them.
            let argv = std::iter::once("ballot".to_owned()).chain(member);
            let parsed = Cli::try_parse_from(argv).expect("the member flags parse");
            let config = ServerConfig::from_args(&parsed.member).expect("valid member flags");
            assert_eq!(config.quota_backend_bytes, Some(1_000_000));
            assert_eq!(config.snapshot_count, 500);
        }
    }

    #[tokio::test]
    async fn flags_ballot_dev_sets_cannot_be_passed_through() {
        for flag in ["--name", "--data-dir=/x", "--initial-cluster"] {
            let mut args = dev_args(1);
            args.member_flags = vec![flag.to_owned(), "x".to_owned()];
            let err = run(&args).await.expect_err("must be refused");
            assert!(
                matches!(&err, DevError::ManagedFlag(name) if flag.starts_with(name.as_str())),
                "{err}"
            );
        }
    }

    #[tokio::test]
    async fn member_count_is_validated() {
        for members in [0, DEV_MEMBERS_MAX + 1] {
            let err = run(&dev_args(members)).await.expect_err("must be rejected");
            assert!(matches!(err, DevError::MemberCount(count) if count == members));
        }
    }

    #[test]
    fn a_non_empty_dir_is_refused() {
        let dir = std::env::temp_dir().join(format!("ballot-dev-nonempty-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create test dir");
        std::fs::write(dir.join("leftover"), b"x").expect("write test file");
        let err = prepare_dir(Some(&dir)).expect_err("must be refused");
        assert!(matches!(err, DevError::DirNotEmpty(_)), "{err}");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    /// A stand-in member: a shell script that ignores the member flags.
    fn fake_member(dir: &Path, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("fake-member.sh");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write fake member");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }

    fn test_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ballot-dev-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create test dir");
        dir
    }

    #[tokio::test]
    async fn shutdown_stops_every_member() {
        let dir = test_dir("shutdown");
        // Each fake member records its pid, then waits to be stopped.
        let program = fake_member(
            &dir,
            "echo $$ > \"$(dirname \"$0\")/pid.$2\"\nexec sleep 60",
        );
        let plan = plan(&dir, 3);
        let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
        let pid_dir = dir.clone();
        let shutdown = async move {
            let _ = started_rx.await;
            // Stop once every member has written its pid file (bounded wait).
            for _ in 0..200 {
                if (1..=3).all(|n| pid_dir.join(format!("pid.m{n}")).exists()) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        };
        supervise(&plan, &program, shutdown, |_| {
            let _ = started_tx.send(());
        })
        .await
        .expect("a requested shutdown is not an error");
        for n in 1..=3 {
            let pid_text = std::fs::read_to_string(dir.join(format!("pid.m{n}")))
                .expect("member wrote its pid");
            let pid: libc::pid_t = pid_text.trim().parse().expect("a pid");
            // SAFETY: signal 0 only checks whether the process exists.
            let alive = unsafe { libc::kill(pid, 0) } == 0;
            assert!(!alive, "member m{n} (pid {pid}) must be stopped");
        }
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[tokio::test]
    async fn a_member_that_exits_is_reported_with_its_log() {
        let dir = test_dir("exit");
        // Member m2 fails at start, as a member whose port is taken would.
        let program = fake_member(
            &dir,
            "if [ \"$2\" = m2 ]; then echo \"cannot bind 127.0.0.1: address in use\" >&2; exit 3; fi\nexec sleep 60",
        );
        let plan = plan(&dir, 3);
        let err = supervise(&plan, &program, std::future::pending(), |_| {})
            .await
            .expect_err("the exit of m2 must be reported");
        match err {
            DevError::MemberExited {
                name,
                status,
                log_tail,
                ..
            } => {
                assert_eq!(name, "m2");
                assert_eq!(status.code(), Some(3));
                assert_eq!(log_tail, "cannot bind 127.0.0.1: address in use");
            }
            other => panic!("expected MemberExited, got {other}"),
        }
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
