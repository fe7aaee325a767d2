//! The `ballot` command line, declared with clap's derive API.
//!
//! With no subcommand `ballot` runs a member, taking etcd's flag names and meanings so that an
//! etcd deployment script can start Ballot by changing only the binary name. The flags are parsed
//! here as plain strings and numbers; [`crate::config::ServerConfig::from_args`] validates them
//! and turns them into the typed configuration the server runs from.
//!
//! Like etcd (which reads `ETCD_NAME`, `ETCD_DATA_DIR`, ...), every member flag can also be given
//! in the environment as `BALLOT_<FLAG>` (`BALLOT_NAME`, `BALLOT_DATA_DIR`, ...); a flag on the
//! command line wins over the environment. etcd's own `ETCD_<FLAG>` variables are read too, for
//! the flags Ballot has ([`parse`]), so a container or a systemd unit configured for etcd
//! through its environment starts Ballot unchanged; `BALLOT_<FLAG>` wins over `ETCD_<FLAG>`.

use std::path::PathBuf;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

use crate::backup::SnapshotArgs;
use crate::bench::BenchArgs;
use crate::dev::DevArgs;

/// etcd's default client URL: clients reach a default member on 127.0.0.1:2379.
pub const DEFAULT_CLIENT_URL: &str = "http://127.0.0.1:2379";
/// etcd's default peer URL.
pub const DEFAULT_PEER_URL: &str = "http://127.0.0.1:2380";
/// etcd's default member name.
pub const DEFAULT_NAME: &str = "default";
/// Cluster token used when `--initial-cluster-token` is not given. etcd uses "etcd-cluster".
pub const DEFAULT_CLUSTER_TOKEN: &str = "ballot-cluster";
/// etcd's `--max-request-bytes` default, 1.5 MiB.
pub const DEFAULT_MAX_REQUEST_BYTES: u64 = 1536 * 1024;
/// `--quota-backend-bytes` when 0 is given, etcd's `DefaultQuotaBytes` (2 GiB).
pub const DEFAULT_QUOTA_BACKEND_BYTES: u64 = 2 * 1024 * 1024 * 1024;
/// WAL segment size, as etcd's `SegmentSizeBytes` (64 MiB).
pub const DEFAULT_WAL_SEGMENT_BYTES: u64 = ballot_wal::WalOptions::DEFAULT_SEGMENT_SIZE_BYTES;
/// `--wal-syncs-in-flight` (docs/BENCHMARKS.md: one sync at a time measured faster on the
/// shared virtual disk the benchmarks run on).
pub const DEFAULT_WAL_SYNCS_IN_FLIGHT: usize = 1;
/// Most `--wal-syncs-in-flight` accepts.
pub const WAL_SYNCS_IN_FLIGHT_MAX: usize = 8;

/// The prefix of etcd's configuration variables (etcdctl's are `ETCDCTL_`).
const ETCD_ENV_PREFIX: &str = "ETCD_";
const BALLOT_ENV_PREFIX: &str = "BALLOT_";

/// Parses the process's command line and environment (exits with clap's message on an error).
/// Returns the command and a warning for each `ETCD_` variable that names no Ballot flag.
///
/// With `--config-file` (or `BALLOT_CONFIG_FILE`, `ETCD_CONFIG_FILE`) a member's settings all
/// come from that file, and every other flag and variable is ignored with a warning, as etcd
/// ignores them; a file that cannot be used ends the process with the reason.
pub fn parse() -> (Cli, Vec<String>) {
    let env: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(name, value)| {
            let value = value.to_string_lossy().into_owned();
            name.into_string().ok().map(|name| (name, value))
        })
        .collect();
    let (command, mut warnings) = with_etcd_env(Cli::command(), &env).unwrap_or_else(|error| {
        eprintln!("ballot: error: {error}");
        std::process::exit(2);
    });
    let args = match crate::etcd_only::strip_from_args(std::env::args_os().collect()) {
        Ok((args, ignored)) => {
            warnings.extend(ignored);
            args
        }
        Err(error) => {
            eprintln!("ballot: error: {error}");
            std::process::exit(2);
        }
    };
    let matches = command.clone().get_matches_from(args);
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit());
    let Some(path) = cli
        .member
        .config_file
        .clone()
        .filter(|_| cli.command.is_none())
    else {
        return (cli, warnings);
    };
    match member_from_config_file(&path, &command, &matches) {
        Ok((member, warnings)) => {
            cli.member = member;
            (cli, warnings)
        }
        Err(error) => {
            eprintln!("ballot: error: {error}");
            std::process::exit(2);
        }
    }
}

/// The member flags as `path`, an etcd configuration file, sets them; `command` and `matches`
/// are the parsed command line, whose settings the warnings say are ignored.
pub fn member_from_config_file(
    path: &std::path::Path,
    command: &clap::Command,
    matches: &clap::ArgMatches,
) -> Result<(MemberArgs, Vec<String>), String> {
    let shown = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read --config-file {shown}: {error}"))?;
    // The file alone decides: no environment variable fills in what it leaves out.
    let file_command = Cli::command().mut_args(|arg| arg.env(None));
    let is_flag = |name: &str| {
        name != "help"
            && name != "version"
            && file_command
                .get_arguments()
                .any(|arg| arg.get_long() == Some(name))
    };
    let settings = crate::config_file::settings_from_yaml(&text, &is_flag)
        .map_err(|error| format!("--config-file {shown}: {error}"))?;
    let args = std::iter::once("ballot".to_string()).chain(settings.args);
    let file_matches = file_command.try_get_matches_from(args).map_err(|error| {
        let rendered = error.render().to_string();
        let first = rendered.lines().next().unwrap_or_default();
        format!(
            "--config-file {shown}: {}",
            first.strip_prefix("error: ").unwrap_or(first)
        )
    })?;
    let mut member =
        MemberArgs::from_arg_matches(&file_matches).map_err(|error| error.to_string())?;
    member.config_file = Some(path.to_path_buf());
    let mut warnings = settings.warnings;
    warnings.iter_mut().for_each(|warning| {
        *warning = format!("--config-file {shown}: {warning}");
    });
    for arg in command.get_arguments() {
        let id = arg.get_id().as_str();
        let Some(long) = arg.get_long().filter(|_| id != "config_file") else {
            continue;
        };
        let source = match matches.value_source(id) {
            Some(clap::parser::ValueSource::CommandLine) => format!("--{long}"),
            Some(clap::parser::ValueSource::EnvVariable) => arg.get_env().map_or_else(
                || format!("--{long}"),
                |env| env.to_string_lossy().into_owned(),
            ),
            _ => continue,
        };
        warnings.push(format!(
            "{source} is ignored: with --config-file every setting comes from the file, as in \
             etcd"
        ));
    }
    Ok((member, warnings))
}

/// Makes each member flag read `ETCD_<FLAG>` when that variable is in `env` (names and values)
/// and `BALLOT_<FLAG>` is not. The warnings name the `ETCD_` variables no flag reads; one for an
/// etcd setting that chooses the cluster (`ETCD_DISCOVERY` with a value, see
/// [`crate::etcd_only`]) is an error.
pub fn with_etcd_env(
    mut command: clap::Command,
    env: &[(String, String)],
) -> Result<(clap::Command, Vec<String>), String> {
    let mut warnings = Vec::new();
    let is_set = |wanted: &str| env.iter().any(|(name, _)| name == wanted);
    for (name, value) in env {
        let Some(flag) = name.strip_prefix(ETCD_ENV_PREFIX) else {
            continue;
        };
        if name.starts_with("ETCDCTL_") {
            continue;
        }
        let ballot_name = format!("{BALLOT_ENV_PREFIX}{flag}");
        let id = command
            .get_arguments()
            .find(|arg| arg.get_env().is_some_and(|env| env == ballot_name.as_str()))
            .map(|arg| arg.get_id().clone());
        let flag = flag.to_ascii_lowercase().replace('_', "-");
        match id {
            Some(_) if is_set(&ballot_name) => {}
            Some(id) => command = command.mut_arg(id, |arg| arg.env(name.clone())),
            None => match crate::etcd_only::judge(name, "setting", &flag, value) {
                Some(Ok(warning)) => warnings.push(warning),
                Some(Err(refusal)) => return Err(refusal),
                None => warnings.push(format!(
                    "{name} is not a setting of Ballot (no --{flag} flag); ignored"
                )),
            },
        }
    }
    Ok((command, warnings))
}

#[derive(Debug, Parser)]
#[command(
    name = "ballot",
    version,
    about = "Ballot: a Raft-replicated key-value store speaking the etcd v3 API",
    long_about = "Ballot: a Raft-replicated key-value store speaking the etcd v3 API.\n\n\
        With no subcommand, runs a cluster member; with no flags at all, a one-member cluster \
        serving clients on 127.0.0.1:2379 with its data in ./default.ballot, like etcd.",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub member: MemberArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a local N-member cluster as child processes on free loopback ports.
    Dev(DevArgs),
    /// Closed-loop load generator for any etcd v3 endpoint (Ballot or etcd).
    Bench(BenchArgs),
    /// Inspect a backup taken with `etcdctl snapshot save` (from Ballot or etcd), or restore a
    /// cluster from it.
    Snapshot(SnapshotArgs),
}

/// The flags of a cluster member, named and defaulted as etcd names and defaults them.
///
/// URL lists are comma-separated, as in etcd.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Member")]
pub struct MemberArgs {
    /// Human-readable name of this member.
    #[arg(long, env = "BALLOT_NAME", default_value = DEFAULT_NAME)]
    pub name: String,

    /// Read every member setting from this etcd configuration file (YAML: etcd's flag names as
    /// keys, TLS in `client-transport-security` and `peer-transport-security`); the other flags
    /// and the environment are then ignored, as etcd ignores them.
    #[arg(long, env = "BALLOT_CONFIG_FILE")]
    pub config_file: Option<PathBuf>,

    /// Directory for this member's data [default: ./<name>.ballot].
    #[arg(long, env = "BALLOT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Dedicated directory for the write-ahead log, e.g. on a disk of its own [default:
    /// <data-dir>/member/wal]. A member must always be started with the same one.
    #[arg(long, env = "BALLOT_WAL_DIR")]
    pub wal_dir: Option<PathBuf>,

    /// URLs to listen on for client traffic (gRPC and HTTP on the same port).
    #[arg(long, env = "BALLOT_LISTEN_CLIENT_URLS", default_value = DEFAULT_CLIENT_URL)]
    pub listen_client_urls: String,

    /// This member's client URLs to advertise to the rest of the cluster and to clients.
    #[arg(long, env = "BALLOT_ADVERTISE_CLIENT_URLS", default_value = DEFAULT_CLIENT_URL)]
    pub advertise_client_urls: String,

    /// URLs to listen on for traffic from the other members.
    #[arg(long, env = "BALLOT_LISTEN_PEER_URLS", default_value = DEFAULT_PEER_URL)]
    pub listen_peer_urls: String,

    /// This member's peer URLs to advertise to the rest of the cluster.
    #[arg(long, env = "BALLOT_INITIAL_ADVERTISE_PEER_URLS", default_value = DEFAULT_PEER_URL)]
    pub initial_advertise_peer_urls: String,

    /// Initial cluster configuration for bootstrapping: name=peer-url pairs, comma-separated
    /// [default: <name>=<initial-advertise-peer-urls>].
    #[arg(long, env = "BALLOT_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,

    /// `new` when every member in --initial-cluster starts together; `existing` to join a
    /// running cluster after `member add`.
    #[arg(long, env = "BALLOT_INITIAL_CLUSTER_STATE", value_enum, default_value_t = ClusterStateArg::New)]
    pub initial_cluster_state: ClusterStateArg,

    /// Token that makes the member and cluster IDs of this cluster unique among clusters
    /// bootstrapped with the same peer URLs.
    #[arg(long, env = "BALLOT_INITIAL_CLUSTER_TOKEN", default_value = DEFAULT_CLUSTER_TOKEN)]
    pub initial_cluster_token: String,

    /// Time between leader heartbeats, in milliseconds (one Raft tick).
    #[arg(
        long,
        env = "BALLOT_HEARTBEAT_INTERVAL",
        default_value_t = 100,
        value_name = "MS"
    )]
    pub heartbeat_interval: u64,

    /// Time a follower waits without hearing from a leader before campaigning, in milliseconds.
    #[arg(
        long,
        env = "BALLOT_ELECTION_TIMEOUT",
        default_value_t = 1000,
        value_name = "MS"
    )]
    pub election_timeout: u64,

    /// Least number of applied entries between snapshots (a snapshot also waits until the log
    /// since the last one is as large as that snapshot); the log is compacted behind each.
    #[arg(long, env = "BALLOT_SNAPSHOT_COUNT", default_value_t = 100_000)]
    pub snapshot_count: u64,

    /// Log level.
    #[arg(long, env = "BALLOT_LOG_LEVEL", value_enum, default_value_t = LogLevel::Info)]
    pub log_level: LogLevel,

    /// Log at debug level: etcd 3.4's older spelling of --log-level debug.
    #[arg(
        long,
        env = "BALLOT_DEBUG",
        num_args = 0..=1,
        default_missing_value = "true",
        default_value_t = false,
        action = clap::ArgAction::Set
    )]
    pub debug: bool,

    /// Where logs go, comma-separated: `stderr` (or `default`), `stdout`, or file paths
    /// (appended to, created if missing). Under systemd, stderr reaches the journal.
    #[arg(
        long,
        env = "BALLOT_LOG_OUTPUTS",
        default_value = "default",
        value_delimiter = ','
    )]
    pub log_outputs: Vec<String>,

    /// The logger. Ballot has one, structured like etcd's default `zap` logger; the flag
    /// exists so etcd command lines that name it start Ballot unchanged.
    #[arg(long, env = "BALLOT_LOGGER", value_enum, default_value_t = Logger::Zap)]
    pub logger: Logger,

    /// Largest client request accepted, in bytes; larger requests get
    /// "etcdserver: request is too large".
    #[arg(long, env = "BALLOT_MAX_REQUEST_BYTES", default_value_t = DEFAULT_MAX_REQUEST_BYTES)]
    pub max_request_bytes: u64,

    /// Most compares, or operations in one branch, of a Txn (nested Txns share the budget);
    /// larger ones get "etcdserver: too many operations in txn request". A member's own limit,
    /// checked before proposing: members may differ.
    #[arg(long, env = "BALLOT_MAX_TXN_OPS", default_value_t = ballot_mvcc::TXN_OPS_MAX_DEFAULT)]
    pub max_txn_ops: usize,

    /// Skip fsync of the log. An acknowledged write can be lost on power failure: for
    /// benchmarks only.
    #[arg(
        long,
        env = "BALLOT_UNSAFE_NO_FSYNC",
        num_args = 0..=1,
        default_missing_value = "true",
        default_value_t = false,
        action = clap::ArgAction::Set
    )]
    pub unsafe_no_fsync: bool,

    /// How --auto-compaction-retention is read: `periodic` keeps a span of time of history,
    /// `revision` a number of revisions (etcd's modes).
    #[arg(
        long,
        env = "BALLOT_AUTO_COMPACTION_MODE",
        value_enum,
        default_value_t = AutoCompactionMode::Periodic
    )]
    pub auto_compaction_mode: AutoCompactionMode,

    /// History the leader keeps when it compacts on its own: for periodic mode a duration
    /// (`1h`, `30m`, `90s`) or a number of hours (as etcd reads `1`); for revision mode a
    /// number of revisions. 0, the default, turns auto-compaction off (clients can still
    /// compact). Ballot keeps the history in memory, so a busy cluster wants this set.
    #[arg(long, env = "BALLOT_AUTO_COMPACTION_RETENTION", default_value = "0")]
    pub auto_compaction_retention: String,

    /// How often the compactor looks at the revision, instead of the mode's own interval
    /// (tests). Hidden from --help.
    #[arg(long, hide = true, value_parser = crate::bench::parse_duration)]
    pub auto_compaction_check_interval: Option<std::time::Duration>,

    /// Size the state may reach before puts, txns with puts and lease grants are refused with
    /// "etcdserver: mvcc: database space exceeded" (the NOSPACE alarm), in bytes of `dbSize`
    /// (snapshot plus the log since). 0 means the default, 2 GiB as in etcd; negative, no limit.
    /// Compaction then `etcdctl defrag` bring it down again.
    #[arg(
        long,
        env = "BALLOT_QUOTA_BACKEND_BYTES",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    pub quota_backend_bytes: i64,

    /// On a restart, compare this member's HashKV with every reachable peer's at the same
    /// revision before serving clients, and refuse to start if one that has compacted to the
    /// same revision differs ("found data inconsistency with peers").
    #[arg(
        long,
        env = "BALLOT_EXPERIMENTAL_INITIAL_CORRUPT_CHECK",
        num_args = 0..=1,
        default_missing_value = "true",
        default_value_t = false,
        action = clap::ArgAction::Set
    )]
    pub experimental_initial_corrupt_check: bool,

    /// How often the leader compares its HashKV with every member's at the same revision
    /// (`30m`, `90s`, `500ms`); a member that differs gets a CORRUPT alarm, and the cluster
    /// takes no writes until it is disarmed. 0, the default, turns the check off.
    #[arg(
        long,
        env = "BALLOT_EXPERIMENTAL_CORRUPT_CHECK_TIME",
        default_value = "0s",
        value_parser = crate::bench::parse_duration_or_zero
    )]
    pub experimental_corrupt_check_time: std::time::Duration,

    /// Have the leader compare, every --experimental-compact-hash-check-time, the hash each
    /// member made of its history at the last compactions; a difference raises a CORRUPT alarm
    /// (for member 0: which member is wrong is not known), and the cluster takes no writes
    /// until it is disarmed.
    #[arg(
        long,
        env = "BALLOT_EXPERIMENTAL_COMPACT_HASH_CHECK_ENABLED",
        num_args = 0..=1,
        default_missing_value = "true",
        default_value_t = false,
        action = clap::ArgAction::Set
    )]
    pub experimental_compact_hash_check_enabled: bool,

    /// How often the leader runs the compaction hash check (`1m`, `30s`, `500ms`).
    #[arg(
        long,
        env = "BALLOT_EXPERIMENTAL_COMPACT_HASH_CHECK_TIME",
        default_value = "1m",
        value_parser = crate::bench::parse_duration
    )]
    pub experimental_compact_hash_check_time: std::time::Duration,

    /// Restart this member alone, as a one-member cluster keeping its data, after its cluster
    /// has lost its quorum for good: entries it never knew to be committed are discarded and
    /// every other member is removed. Use once, then restart without it; never restart the
    /// old members with their data. Ignored by a member without data.
    #[arg(
        long,
        env = "BALLOT_FORCE_NEW_CLUSTER",
        num_args = 0..=1,
        default_missing_value = "true",
        default_value_t = false,
        action = clap::ArgAction::Set
    )]
    pub force_new_cluster: bool,

    /// Streams (calls in progress, watches and keep-alive streams included) one client
    /// connection may have open at once; more wait in the client. Default: no limit, as etcd.
    #[arg(
        long,
        env = "BALLOT_MAX_CONCURRENT_STREAMS",
        default_value_t = u32::MAX,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub max_concurrent_streams: u32,

    /// Snapshot files to keep: the one the log starts from and older ones to fall back on if
    /// it is damaged (0: keep all). Each holds the whole store, so each costs about its size.
    #[arg(
        long,
        env = "BALLOT_MAX_SNAPSHOTS",
        default_value_t = crate::storage::SNAPSHOT_FILES_KEPT
    )]
    pub max_snapshots: usize,

    /// Log a warning ("apply request took too long") and count it in
    /// `etcd_server_slow_apply_total` when applying one log entry takes longer than this.
    #[arg(
        long,
        env = "BALLOT_EXPERIMENTAL_WARNING_APPLY_DURATION",
        default_value = "100ms",
        value_parser = crate::bench::parse_duration
    )]
    pub experimental_warning_apply_duration: std::time::Duration,

    /// Record each long lease's remaining TTL in the log every
    /// --experimental-lease-checkpoint-interval, so a new leader goes on from it instead of
    /// granting the whole TTL again (etcd's flag; off by default, as in etcd).
    #[arg(
        long,
        env = "BALLOT_EXPERIMENTAL_ENABLE_LEASE_CHECKPOINT",
        num_args = 0..=1,
        default_missing_value = "true",
        default_value_t = false,
        action = clap::ArgAction::Set
    )]
    pub experimental_enable_lease_checkpoint: bool,

    /// How often a lease's remaining TTL is checkpointed (`5m`, `30s`); only leases whose TTL
    /// is longer are.
    #[arg(
        long,
        env = "BALLOT_EXPERIMENTAL_LEASE_CHECKPOINT_INTERVAL",
        default_value = "5m",
        value_parser = crate::bench::parse_duration
    )]
    pub experimental_lease_checkpoint_interval: std::time::Duration,

    /// Ask the other members for a pre-vote before starting an election (Raft thesis 9.6), so
    /// a member that was cut off cannot disturb a working leader when it returns. On by
    /// default, as in etcd 3.5 (etcd 3.4: off).
    #[arg(
        long,
        env = "BALLOT_PRE_VOTE",
        num_args = 0..=1,
        default_missing_value = "true",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub pre_vote: bool,

    /// At start, once enough peers to make a quorum have been heard from and no leader is
    /// known, fast-forward the election clock to two ticks short of an election timeout, so
    /// the first election need not wait a whole timeout (etcd's flag; on by default).
    #[arg(
        long,
        env = "BALLOT_INITIAL_ELECTION_TICK_ADVANCE",
        num_args = 0..=1,
        default_missing_value = "true",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub initial_election_tick_advance: bool,

    /// Refuse membership changes that could leave the cluster without a working quorum:
    /// adding a member while a voter is unreachable or too few members have started, removing
    /// a voter when the rest could not form a quorum (etcd's rule; `false` turns it off).
    #[arg(
        long,
        env = "BALLOT_STRICT_RECONFIG_CHECK",
        num_args = 0..=1,
        default_missing_value = "true",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub strict_reconfig_check: bool,

    /// How often a gRPC client connection is pinged (`2h`, `30s`), to find clients that are gone
    /// without closing their connections (a crashed host, a cut network).
    #[arg(
        long,
        env = "BALLOT_GRPC_KEEPALIVE_INTERVAL",
        default_value = "2h",
        value_parser = crate::bench::parse_duration
    )]
    pub grpc_keepalive_interval: std::time::Duration,

    /// How long a pinged gRPC client has to answer before its connection, with its watches and
    /// keep-alive streams, is closed.
    #[arg(
        long,
        env = "BALLOT_GRPC_KEEPALIVE_TIMEOUT",
        default_value = "20s",
        value_parser = crate::bench::parse_duration
    )]
    pub grpc_keepalive_timeout: std::time::Duration,

    /// How often watchers created with `progress_notify` get an empty response carrying the
    /// current revision (`10m`, `5s`, `500ms`).
    #[arg(
        long,
        env = "BALLOT_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL",
        default_value = "10m",
        value_parser = crate::bench::parse_duration
    )]
    pub experimental_watch_progress_notify_interval: std::time::Duration,

    /// Origins whose browsers may call the HTTP API (comma-separated, as sent in `Origin`,
    /// e.g. `https://app.example.com`): their answers carry CORS headers. `*`, the default,
    /// allows every origin.
    #[arg(long, env = "BALLOT_CORS", default_value = "*")]
    pub cors: String,

    /// Host names a client listener without TLS serves HTTP requests for (comma-separated,
    /// the `Host` header without its port); other hosts get 421 Misdirected Request, against
    /// DNS rebinding. `*`, the default, serves every host. gRPC calls are not checked.
    #[arg(long, env = "BALLOT_HOST_WHITELIST", default_value = "*")]
    pub host_whitelist: String,

    /// Certificate (PEM) presented on https:// client URLs.
    #[arg(long, env = "BALLOT_CERT_FILE")]
    pub cert_file: Option<PathBuf>,

    /// Private key (PEM) of --cert-file.
    #[arg(long, env = "BALLOT_KEY_FILE")]
    pub key_file: Option<PathBuf>,

    /// CA certificates (PEM) that client certificates are verified against.
    #[arg(long, env = "BALLOT_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<PathBuf>,

    /// Refuse https clients without a certificate signed by --trusted-ca-file.
    #[arg(
        long,
        env = "BALLOT_CLIENT_CERT_AUTH",
        num_args = 0..=1,
        default_missing_value = "true",
        default_value_t = false,
        action = clap::ArgAction::Set
    )]
    pub client_cert_auth: bool,

    /// Certificate revocation list (PEM or DER, from the CA of --trusted-ca-file): client
    /// certificates it lists are refused.
    #[arg(long, env = "BALLOT_CLIENT_CRL_FILE")]
    pub client_crl_file: Option<PathBuf>,

    /// A host name a client's certificate must be valid for (its subject alternative names),
    /// besides being signed by --trusted-ca-file. Needs --client-cert-auth.
    #[arg(long, env = "BALLOT_CLIENT_CERT_ALLOWED_HOSTNAME")]
    pub client_cert_allowed_hostname: Option<String>,

    /// TLS 1.2 cipher suites offered to clients and peers, comma-separated, by Go's names as
    /// etcd takes them (e.g. TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256) [default: all Ballot
    /// supports, AEAD suites with ECDHE]. TLS 1.3 suites are always offered, as in etcd.
    #[arg(long, env = "BALLOT_CIPHER_SUITES", value_delimiter = ',')]
    pub cipher_suites: Vec<String>,

    /// Certificate (PEM) for TLS between members, used when a peer URL is https://: presented
    /// to peers that connect and to peers this member connects to.
    #[arg(long, env = "BALLOT_PEER_CERT_FILE")]
    pub peer_cert_file: Option<PathBuf>,

    /// Private key (PEM) of --peer-cert-file.
    #[arg(long, env = "BALLOT_PEER_KEY_FILE")]
    pub peer_key_file: Option<PathBuf>,

    /// CA certificates (PEM) that peers' certificates are verified against.
    #[arg(long, env = "BALLOT_PEER_TRUSTED_CA_FILE")]
    pub peer_trusted_ca_file: Option<PathBuf>,

    /// Refuse peer connections without a certificate signed by --peer-trusted-ca-file.
    #[arg(
        long,
        env = "BALLOT_PEER_CLIENT_CERT_AUTH",
        num_args = 0..=1,
        default_missing_value = "true",
        default_value_t = false,
        action = clap::ArgAction::Set
    )]
    pub peer_client_cert_auth: bool,

    /// The common name (CN) a connecting peer's certificate must carry, besides being signed by
    /// --peer-trusted-ca-file. Needs --peer-client-cert-auth.
    #[arg(long, env = "BALLOT_PEER_CERT_ALLOWED_CN")]
    pub peer_cert_allowed_cn: Option<String>,

    /// A host name a connecting peer's certificate must be valid for (its subject alternative
    /// names), besides being signed by --peer-trusted-ca-file. Needs --peer-client-cert-auth.
    #[arg(long, env = "BALLOT_PEER_CERT_ALLOWED_HOSTNAME")]
    pub peer_cert_allowed_hostname: Option<String>,

    /// Accept a connecting peer's certificate from any address. By default, as in etcd, a peer
    /// certificate that names IP addresses or DNS names (subject alternative names) is refused
    /// unless the connection comes from one of those addresses or from an address one of those
    /// names resolves to (or reverse-resolves from).
    #[arg(
        long,
        env = "BALLOT_EXPERIMENTAL_PEER_SKIP_CLIENT_SAN_VERIFICATION",
        num_args = 0..=1,
        default_missing_value = "true",
        default_value_t = false,
        action = clap::ArgAction::Set
    )]
    pub experimental_peer_skip_client_san_verification: bool,

    /// Certificate revocation list (PEM or DER, from the CA of --peer-trusted-ca-file): peer
    /// certificates it lists are refused, on connections accepted and dialled.
    #[arg(long, env = "BALLOT_PEER_CRL_FILE")]
    pub peer_crl_file: Option<PathBuf>,

    /// TLS on https client URLs with a self-signed certificate made for the listen hosts (kept
    /// in <data-dir>/fixtures/client and reused at restarts), when --cert-file and --key-file
    /// are not given. Clients cannot verify it: for encryption without a CA.
    #[arg(
        long,
        env = "BALLOT_AUTO_TLS",
        num_args = 0..=1,
        default_missing_value = "true",
        default_value_t = false,
        action = clap::ArgAction::Set
    )]
    pub auto_tls: bool,

    /// TLS between members on https peer URLs with a self-signed certificate (kept in
    /// <data-dir>/fixtures/peer), when --peer-cert-file and --peer-key-file are not given.
    /// Members then encrypt but do not verify each other's certificates, as with etcd.
    #[arg(
        long,
        env = "BALLOT_PEER_AUTO_TLS",
        num_args = 0..=1,
        default_missing_value = "true",
        default_value_t = false,
        action = clap::ArgAction::Set
    )]
    pub peer_auto_tls: bool,

    /// How long the certificates of --auto-tls and --peer-auto-tls are valid, in years.
    #[arg(long, env = "BALLOT_SELF_SIGNED_CERT_VALIDITY", default_value_t = 1)]
    pub self_signed_cert_validity: u32,

    /// Extra URLs to serve /metrics and /health on (HTTP only), besides the client URLs.
    #[arg(long, env = "BALLOT_LISTEN_METRICS_URLS")]
    pub listen_metrics_urls: Option<String>,

    /// How much /metrics exports: `extensive` adds how long each gRPC call took
    /// (`grpc_server_handling_seconds`, per method), at the cost of two clock reads per call.
    #[arg(long, env = "BALLOT_METRICS", value_enum, default_value_t = MetricsLevel::Basic)]
    pub metrics: MetricsLevel,

    /// Advanced: size of a WAL segment file, in bytes. Segments are preallocated (zero-filled
    /// at full size, one prepared ahead), like etcd's 64 MiB WAL files; a smaller size saves
    /// disk for tests and small machines at the cost of more frequent segment rollovers.
    /// Hidden from --help; see docs/cli.md.
    #[arg(
        long,
        env = "BALLOT_WAL_SEGMENT_BYTES",
        default_value_t = DEFAULT_WAL_SEGMENT_BYTES,
        hide = true
    )]
    pub wal_segment_bytes: u64,
    /// WAL syncs that may run at once (1 to 8; advanced). While one `fdatasync` runs, the next
    /// batch gathers; more than one lets a disk that completes flushes in parallel work on
    /// several. The default is 1: on a disk that serializes flushes, overlapping them only adds
    /// thread hand-offs. Hidden from --help; see docs/cli.md.
    #[arg(
        long,
        env = "BALLOT_WAL_SYNCS_IN_FLIGHT",
        default_value_t = DEFAULT_WAL_SYNCS_IN_FLIGHT,
        hide = true
    )]
    pub wal_syncs_in_flight: usize,
}

/// `--initial-cluster-state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ClusterStateArg {
    New,
    Existing,
}

/// `--metrics`, etcd's levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MetricsLevel {
    Basic,
    Extensive,
}

/// `--auto-compaction-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AutoCompactionMode {
    Periodic,
    Revision,
}

/// `--logger`: etcd's name of its structured logger, the only one Ballot has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Logger {
    Zap,
}

/// `--log-level`, etcd's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    /// The `tracing` filter directive for this level.
    pub fn as_filter(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// The variable a member flag reads after [`with_etcd_env`].
    fn env_of(command: &clap::Command, flag: &str) -> Option<String> {
        command
            .get_arguments()
            .find(|arg| arg.get_long() == Some(flag))
            .and_then(|arg| arg.get_env())
            .map(|env| env.to_string_lossy().into_owned())
    }

    #[test]
    fn member_flags_read_etcds_variables_unless_ballots_are_set() {
        let names: Vec<(String, String)> = [
            "ETCD_NAME",
            "ETCD_DATA_DIR",
            "BALLOT_DATA_DIR",
            "ETCD_INITIAL_CLUSTER_STATE",
            "ETCD_ENABLE_V2",
            "ETCD_NO_SUCH_SETTING",
            "ETCD_DISCOVERY",
            "ETCDCTL_API",
            "PATH",
        ]
        .map(|name| (name.to_owned(), String::new()))
        .to_vec();
        let (command, warnings) = with_etcd_env(Cli::command(), &names).expect("no refusal");
        assert_eq!(env_of(&command, "name").as_deref(), Some("ETCD_NAME"));
        assert_eq!(
            env_of(&command, "initial-cluster-state").as_deref(),
            Some("ETCD_INITIAL_CLUSTER_STATE")
        );
        assert_eq!(
            env_of(&command, "data-dir").as_deref(),
            Some("BALLOT_DATA_DIR"),
            "BALLOT_ wins"
        );
        assert_eq!(
            env_of(&command, "listen-client-urls").as_deref(),
            Some("BALLOT_LISTEN_CLIENT_URLS"),
            "unset: unchanged"
        );
        assert_eq!(
            warnings,
            [
                "ETCD_ENABLE_V2 is an etcd setting Ballot does not have; ignored (Ballot \
                 serves the v3 API only; v2 requests are answered 404)",
                "ETCD_NO_SUCH_SETTING is not a setting of Ballot (no --no-such-setting flag); \
                 ignored",
                "ETCD_DISCOVERY is an etcd setting Ballot does not have; ignored (applies \
                 only to discovery, which Ballot does not have)",
            ]
        );
        command.debug_assert();
        // With a value, discovery would choose another cluster: refused.
        let discovery = [(
            "ETCD_DISCOVERY".to_owned(),
            "https://discovery.etcd.io/x".to_owned(),
        )];
        let error = with_etcd_env(Cli::command(), &discovery).unwrap_err();
        assert!(
            error.starts_with("ETCD_DISCOVERY is an etcd setting Ballot does not support: "),
            "{error}"
        );
    }

    #[test]
    fn no_arguments_runs_a_default_member() {
        let cli = Cli::try_parse_from(["ballot"]).expect("no arguments must parse");
        assert!(cli.command.is_none());
        assert_eq!(cli.member.name, "default");
        assert_eq!(cli.member.listen_client_urls, "http://127.0.0.1:2379");
        assert_eq!(
            cli.member.initial_advertise_peer_urls,
            "http://127.0.0.1:2380"
        );
        assert_eq!(cli.member.heartbeat_interval, 100);
        assert_eq!(cli.member.election_timeout, 1000);
        assert_eq!(cli.member.initial_cluster_state, ClusterStateArg::New);
        assert_eq!(cli.member.max_request_bytes, 1_572_864);
        assert_eq!(cli.member.max_txn_ops, 128);
        assert!(!cli.member.unsafe_no_fsync);
        assert_eq!(cli.member.wal_segment_bytes, 64 * 1024 * 1024);
    }

    #[test]
    fn etcd_style_flags_parse_in_both_spellings() {
        let cli = Cli::try_parse_from([
            "ballot",
            "--name",
            "m1",
            "--initial-cluster=m1=http://127.0.0.1:12380",
            "--initial-cluster-state",
            "existing",
            "--log-level=warn",
        ])
        .expect("etcd flags must parse");
        assert_eq!(cli.member.name, "m1");
        assert_eq!(
            cli.member.initial_cluster.as_deref(),
            Some("m1=http://127.0.0.1:12380")
        );
        assert_eq!(cli.member.initial_cluster_state, ClusterStateArg::Existing);
        assert_eq!(cli.member.log_level, LogLevel::Warn);
    }

    #[test]
    fn unknown_cluster_state_is_rejected() {
        let err = Cli::try_parse_from(["ballot", "--initial-cluster-state", "old"])
            .expect_err("an unknown state must be rejected");
        assert_eq!(err.kind(), clap::error::ErrorKind::InvalidValue);
    }

    #[test]
    fn member_flags_do_not_mix_with_subcommands() {
        let err = Cli::try_parse_from(["ballot", "--name", "x", "dev"])
            .expect_err("member flags before a subcommand must be rejected");
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
    }
}
