//! The validated configuration a member runs from, built from the command line.
//!
//! [`ServerConfig::from_args`] checks everything that can be checked before touching the network
//! or the disk, the way etcd's `embed.Config.Validate` does, so that a typo fails at start-up with
//! a message naming the flag instead of as a cluster that never forms. Binding the listeners (a
//! port in use) and opening the data directory (one of another member or cluster) are checked by
//! the server when it starts.
//!
//! The member and cluster IDs are derived here, deterministically, so that every member of a
//! cluster bootstrapped with the same `--initial-cluster` and `--initial-cluster-token` computes
//! the same IDs for everyone without exchanging a message (etcd does the same with SHA-1 in
//! `membership.NewMember` and `RaftCluster.genID`).

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::cli::{AutoCompactionMode, ClusterStateArg, LogLevel, MemberArgs};
use crate::node::auto_compaction::AutoCompaction;

/// etcd refuses election timeouts above 50 s (`maxElectionMs`); so do we.
pub const ELECTION_TIMEOUT_MAX_MS: u64 = 50_000;
/// etcd requires the election timeout to be at least five heartbeats, so that a few lost
/// heartbeats never start an election.
pub const ELECTION_TIMEOUT_MIN_HEARTBEATS: u64 = 5;

/// A Raft member ID. Never 0: Raft uses 0 for "no leader / no vote".
pub type MemberId = u64;
/// A cluster ID, carried in every response header and every peer frame.
pub type ClusterId = u64;

/// Whether this member bootstraps a new cluster or joins an existing one (`--initial-cluster-state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterState {
    /// Every member of `initial_cluster` starts together and they elect a first leader.
    New,
    /// The cluster is running and this member was added with `member add`; it learns the
    /// membership and the data from the leader.
    Existing,
}

/// One member of `--initial-cluster`, with its derived ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitialMember {
    pub name: String,
    /// The member's peer URLs, in the order first given (etcd allows a name to appear several
    /// times in `--initial-cluster`, one URL each; they are gathered here).
    pub peer_urls: Vec<String>,
    pub member_id: MemberId,
}

/// `--cert-file`, `--key-file`, `--trusted-ca-file` and `--client-cert-auth`: TLS on the
/// client URLs that are `https` (crate::tls loads the files when the member starts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// CA certificates that client certificates are checked against.
    pub trusted_ca_file: Option<PathBuf>,
    /// Refuse clients without a certificate signed by `trusted_ca_file`.
    pub client_cert_auth: bool,
    /// `--client-crl-file`: revoked client certificates, refused.
    pub crl_file: Option<PathBuf>,
    /// `--cipher-suites`: the TLS 1.2 suites offered (Go's names, checked); empty for all.
    pub cipher_suites: Vec<String>,
    /// `--auto-tls` without certificate files: `cert_file` and `key_file` are this
    /// self-signed certificate's, made at start if missing.
    pub self_signed: Option<SelfSigned>,
    /// `--client-cert-allowed-hostname`: a host name a client's certificate must be valid for.
    pub allowed_hostname: Option<String>,
}

/// `--auto-tls`, `--peer-auto-tls`: a certificate the member makes and signs itself, as etcd
/// does, kept in `dir` (`<data-dir>/fixtures/client` or `<data-dir>/fixtures/peer`) as
/// `cert.pem` and `key.pem` and reused while both are there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelfSigned {
    pub dir: PathBuf,
    /// Its subject alternative names: the hosts of the member's URLs for that side.
    pub hosts: Vec<String>,
    /// `--self-signed-cert-validity`, in years.
    pub validity_years: u32,
}

impl SelfSigned {
    fn new(dir: PathBuf, urls: &[&HttpUrl], validity_years: u32) -> SelfSigned {
        let mut hosts: Vec<String> = Vec::new();
        for url in urls {
            if !hosts.contains(&url.host) {
                hosts.push(url.host.clone());
            }
        }
        SelfSigned {
            dir,
            hosts,
            validity_years,
        }
    }

    pub fn cert_file(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    pub fn key_file(&self) -> PathBuf {
        self.dir.join("key.pem")
    }
}

impl ClientTls {
    fn from_args(
        args: &MemberArgs,
        listen: &[HttpUrl],
        advertise: &[HttpUrl],
        cipher_suites: &[String],
        data_dir: &Path,
    ) -> Result<Option<ClientTls>, ConfigError> {
        if args.client_cert_auth && args.trusted_ca_file.is_none() {
            return Err(ConfigError::TlsFlags(
                "--client-cert-auth needs --trusted-ca-file".into(),
            ));
        }
        if args.client_cert_allowed_hostname.is_some() && !args.client_cert_auth {
            // Without required certificates a client could skip the check by presenting none.
            return Err(ConfigError::TlsFlags(
                "--client-cert-allowed-hostname needs --client-cert-auth".into(),
            ));
        }
        if args.client_crl_file.is_some() && args.trusted_ca_file.is_none() {
            return Err(ConfigError::TlsFlags(
                "--client-crl-file needs --trusted-ca-file (client certificates are only checked \
                 against a trusted CA)"
                    .into(),
            ));
        }
        let mut self_signed = None;
        let (cert_file, key_file) = match (&args.cert_file, &args.key_file) {
            (Some(cert), Some(key)) => (cert.clone(), key.clone()),
            (None, None) if args.auto_tls && listen.iter().any(|url| url.tls) => {
                let urls: Vec<&HttpUrl> = listen.iter().chain(advertise).collect();
                let made = SelfSigned::new(
                    data_dir.join("fixtures").join("client"),
                    &urls,
                    args.self_signed_cert_validity,
                );
                let files = (made.cert_file(), made.key_file());
                self_signed = Some(made);
                files
            }
            (None, None) => {
                if let Some(url) = listen.iter().find(|url| url.tls) {
                    return Err(ConfigError::TlsFlags(format!(
                        "--listen-client-urls {url} needs --cert-file and --key-file (or \
                         --auto-tls)"
                    )));
                }
                if args.trusted_ca_file.is_some() {
                    return Err(ConfigError::TlsFlags(
                        "--trusted-ca-file needs --cert-file and --key-file".into(),
                    ));
                }
                return Ok(None);
            }
            _ => {
                return Err(ConfigError::TlsFlags(
                    "--cert-file and --key-file go together".into(),
                ));
            }
        };
        if !listen.iter().any(|url| url.tls) {
            // etcd ignores the files then (with a warning): every client URL is plain http.
            return Ok(None);
        }
        Ok(Some(ClientTls {
            cert_file,
            key_file,
            trusted_ca_file: args.trusted_ca_file.clone(),
            client_cert_auth: args.client_cert_auth,
            crl_file: args.client_crl_file.clone(),
            cipher_suites: cipher_suites.to_vec(),
            self_signed,
            allowed_hostname: args.client_cert_allowed_hostname.clone(),
        }))
    }
}

/// `--cipher-suites`, checked against what Ballot offers.
fn cipher_suites(args: &MemberArgs) -> Result<Vec<String>, ConfigError> {
    let names: Vec<String> = args
        .cipher_suites
        .iter()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .collect();
    crate::tls::tls12_suites(&names)
        .map_err(|reason| ConfigError::TlsFlags(format!("--cipher-suites: {reason}")))?;
    Ok(names)
}

/// `--peer-cert-file`, `--peer-key-file`, `--peer-trusted-ca-file` and
/// `--peer-client-cert-auth`: TLS between members, used when a peer URL is `https`
/// (crate::tls loads the files when the member starts). The certificate is presented both when
/// this member accepts a peer connection and when it dials one, as etcd's is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// CA certificates that peers' certificates are checked against, both ways; `None` with
    /// `--peer-auto-tls`, where peers' certificates are not checked (they are self-signed).
    pub trusted_ca_file: Option<PathBuf>,
    /// Refuse peer connections without a certificate signed by `trusted_ca_file`.
    pub client_cert_auth: bool,
    /// `--peer-crl-file`: revoked peer certificates, refused both ways.
    pub crl_file: Option<PathBuf>,
    /// `--cipher-suites`: the TLS 1.2 suites offered and accepted (Go's names, checked).
    pub cipher_suites: Vec<String>,
    /// `--peer-cert-allowed-cn`: the common name a connecting peer's certificate must carry.
    pub allowed_cn: Option<String>,
    /// `--peer-cert-allowed-hostname`: a host name a connecting peer's certificate must be
    /// valid for.
    pub allowed_hostname: Option<String>,
    /// `--peer-auto-tls` without certificate files: `cert_file` and `key_file` are this
    /// self-signed certificate's, made at start if missing.
    pub self_signed: Option<SelfSigned>,
    /// `--experimental-peer-skip-client-san-verification`: accept a connecting peer's
    /// certificate whatever address it comes from.
    pub skip_client_san_verification: bool,
}

impl PeerTls {
    /// The peer TLS settings when any of `urls` (this member's and the initial cluster's peer
    /// URLs) is `https`; the flags must then name the certificate, key and trusted CA.
    fn from_args(
        args: &MemberArgs,
        urls: &[&HttpUrl],
        own_urls: &[&HttpUrl],
        cipher_suites: &[String],
        data_dir: &Path,
    ) -> Result<Option<PeerTls>, ConfigError> {
        if args.peer_client_cert_auth && args.peer_trusted_ca_file.is_none() {
            return Err(ConfigError::TlsFlags(
                "--peer-client-cert-auth needs --peer-trusted-ca-file".into(),
            ));
        }
        for (flag, given) in [
            ("--peer-cert-allowed-cn", &args.peer_cert_allowed_cn),
            (
                "--peer-cert-allowed-hostname",
                &args.peer_cert_allowed_hostname,
            ),
        ] {
            // Without required certificates a peer could skip the check by presenting none.
            if given.is_some() && !args.peer_client_cert_auth {
                return Err(ConfigError::TlsFlags(format!(
                    "{flag} needs --peer-client-cert-auth"
                )));
            }
        }
        let Some(url) = urls.iter().find(|url| url.tls) else {
            // etcd ignores the files then: every peer URL is plain http.
            return Ok(None);
        };
        match (
            &args.peer_cert_file,
            &args.peer_key_file,
            &args.peer_trusted_ca_file,
        ) {
            (Some(cert), Some(key), Some(ca)) => Ok(Some(PeerTls {
                cert_file: cert.clone(),
                key_file: key.clone(),
                trusted_ca_file: Some(ca.clone()),
                client_cert_auth: args.peer_client_cert_auth,
                crl_file: args.peer_crl_file.clone(),
                cipher_suites: cipher_suites.to_vec(),
                allowed_cn: args.peer_cert_allowed_cn.clone(),
                allowed_hostname: args.peer_cert_allowed_hostname.clone(),
                self_signed: None,
                skip_client_san_verification: args.experimental_peer_skip_client_san_verification,
            })),
            (None, None, _) if args.peer_auto_tls => {
                if args.peer_client_cert_auth {
                    return Err(ConfigError::TlsFlags(
                        "--peer-auto-tls cannot be combined with --peer-client-cert-auth: \
                         self-signed peer certificates cannot be verified against a CA"
                            .into(),
                    ));
                }
                let made = SelfSigned::new(
                    data_dir.join("fixtures").join("peer"),
                    own_urls,
                    args.self_signed_cert_validity,
                );
                Ok(Some(PeerTls {
                    cert_file: made.cert_file(),
                    key_file: made.key_file(),
                    trusted_ca_file: None,
                    client_cert_auth: false,
                    crl_file: None,
                    cipher_suites: cipher_suites.to_vec(),
                    allowed_cn: None,
                    allowed_hostname: None,
                    self_signed: Some(made),
                    skip_client_san_verification: args
                        .experimental_peer_skip_client_san_verification,
                }))
            }
            _ => Err(ConfigError::TlsFlags(format!(
                "the peer URL {url} needs --peer-cert-file, --peer-key-file and \
                 --peer-trusted-ca-file (or --peer-auto-tls)"
            ))),
        }
    }
}

/// Who a member is in the cluster it bootstraps: what `--name`,
/// `--initial-advertise-peer-urls`, `--initial-cluster` and `--initial-cluster-token` derive.
/// A member started with these flags and `ballot snapshot restore` given the same ones agree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub advertise_peer_urls: Vec<String>,
    pub initial_cluster: Vec<InitialMember>,
    pub member_id: MemberId,
    pub cluster_id: ClusterId,
}

impl Membership {
    /// Parses `--initial-cluster` (by default this member alone at its advertised peer URLs,
    /// as etcd does), finds this member in it and checks that it advertises the URLs listed
    /// there, then derives the IDs.
    pub fn derive(
        name: &str,
        advertise_peer: &[HttpUrl],
        initial_cluster: Option<&str>,
        cluster_token: &str,
    ) -> Result<Membership, ConfigError> {
        if name.is_empty() {
            return Err(ConfigError::EmptyName);
        }
        if cluster_token.is_empty() {
            return Err(ConfigError::EmptyClusterToken);
        }
        let advertise_peer_urls: Vec<String> =
            advertise_peer.iter().map(HttpUrl::to_string).collect();
        let initial_cluster_text = match initial_cluster {
            Some(text) => text.to_owned(),
            None => advertise_peer_urls
                .iter()
                .map(|url| format!("{name}={url}"))
                .collect::<Vec<_>>()
                .join(","),
        };
        let initial_cluster = parse_initial_cluster(&initial_cluster_text, cluster_token)?;
        let this_member = find_self(&initial_cluster, name)?;
        check_advertised_peer_urls(this_member, &advertise_peer_urls)?;
        let member_id = this_member.member_id;
        let cluster_id = cluster_id(initial_cluster.iter().map(|member| member.member_id));
        Ok(Membership {
            advertise_peer_urls,
            initial_cluster,
            member_id,
            cluster_id,
        })
    }
}

/// The validated configuration of one member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// This member's name (`--name`).
    pub name: String,
    /// This member's data directory (`--data-dir`, default `./<name>.ballot`).
    pub data_dir: PathBuf,
    /// `--wal-dir`: the WAL's own directory, instead of `<data-dir>/member/wal`.
    pub wal_dir: Option<PathBuf>,
    /// Addresses to bind for clients: gRPC (and HTTP `/health`, `/metrics`, `/version`).
    pub client_listen_addrs: Vec<SocketAddr>,
    /// For each of `client_listen_addrs`: served with TLS (an `https` URL).
    pub client_listen_tls: Vec<bool>,
    /// The certificate and key for `https` client URLs, and how clients are verified.
    pub client_tls: Option<ClientTls>,
    /// Client URLs this member advertises (`--advertise-client-urls`), normalised to
    /// `http://host:port`.
    pub advertise_client_urls: Vec<String>,
    /// Addresses to bind for peer traffic.
    pub peer_listen_addrs: Vec<SocketAddr>,
    /// For each of `peer_listen_addrs`: served with TLS (an `https` URL).
    pub peer_listen_tls: Vec<bool>,
    /// The certificate, key and CA for TLS between members, when a peer URL is `https`.
    pub peer_tls: Option<PeerTls>,
    /// Peer URLs this member advertises (`--initial-advertise-peer-urls`), normalised.
    pub advertise_peer_urls: Vec<String>,
    /// Extra HTTP-only listeners for `/metrics` and `/health` (`--listen-metrics-urls`).
    pub metrics_listen_addrs: Vec<SocketAddr>,
    /// `--metrics extensive`: gRPC calls are timed.
    pub extensive_metrics: bool,
    /// The bootstrap membership, in the order given; contains this member.
    pub initial_cluster: Vec<InitialMember>,
    pub initial_cluster_state: ClusterState,
    pub initial_cluster_token: String,
    /// This member's ID, derived from its peer URLs and the cluster token.
    pub member_id: MemberId,
    /// The cluster ID, derived from the IDs of `initial_cluster`. A member joining with
    /// `ClusterState::Existing` must adopt the ID the running cluster reports instead.
    pub cluster_id: ClusterId,
    /// One Raft tick: the leader heartbeats every tick.
    pub heartbeat_interval: Duration,
    pub election_timeout: Duration,
    /// Applied entries between snapshots.
    pub snapshot_count: u64,
    /// Largest client request accepted; the gRPC receive limit is this plus 512 KiB, as in etcd.
    pub max_request_bytes: u64,
    /// Most operations in one Txn branch (`--max-txn-ops`), checked before proposing.
    pub max_txn_ops: usize,
    /// Skip fsync (benchmarks only; an acknowledged write can be lost on power failure).
    pub unsafe_no_fsync: bool,
    /// Size of a WAL segment file (`--wal-segment-bytes`, advanced).
    pub wal_segment_bytes: u64,
    /// WAL syncs that may run at once (`--wal-syncs-in-flight`, advanced).
    pub wal_syncs_in_flight: usize,
    /// `--auto-compaction-mode` and `--auto-compaction-retention`; `None` when off.
    pub auto_compaction: Option<AutoCompaction>,
    /// The compactor's check interval when a test shortens it.
    pub auto_compaction_check_interval: Option<Duration>,
    /// `--quota-backend-bytes`: `None` for no limit.
    pub quota_backend_bytes: Option<u64>,
    /// `--grpc-keepalive-interval`: how often gRPC clients are pinged.
    pub grpc_keepalive_interval: Duration,
    /// `--grpc-keepalive-timeout`: how long a ping may go unanswered.
    pub grpc_keepalive_timeout: Duration,
    /// `--force-new-cluster`: restart alone from this member's data.
    pub force_new_cluster: bool,
    /// `--strict-reconfig-check`: refuse membership changes that could lose the quorum.
    pub strict_reconfig_check: bool,
    /// `--pre-vote`: pre-vote before elections.
    pub pre_vote: bool,
    /// `--initial-election-tick-advance`: the first election need not wait a whole timeout.
    pub initial_election_tick_advance: bool,
    /// `--max-snapshots`: snapshot files kept, the newest durable one included (at least 1;
    /// `usize::MAX` for no limit).
    pub snapshot_files_kept: usize,
    /// `--experimental-warning-apply-duration`: applies slower than this are logged.
    pub warning_apply_duration: Duration,
    /// `--experimental-enable-lease-checkpoint` with its interval: how often the leader
    /// records long leases' remaining TTLs in the log; `None`: never.
    pub lease_checkpoint_interval: Option<Duration>,
    /// `--max-concurrent-streams`: HTTP/2 streams per client connection.
    pub max_concurrent_streams: u32,
    /// `--experimental-watch-progress-notify-interval`.
    pub watch_progress_notify_interval: Duration,
    /// `--experimental-initial-corrupt-check`: compare HashKVs with the peers before serving.
    pub initial_corrupt_check: bool,
    /// `--experimental-corrupt-check-time`: how often the leader compares HashKVs; `None` for
    /// never.
    pub corrupt_check_interval: Option<Duration>,
    /// `--experimental-compact-hash-check-enabled` with `--experimental-compact-hash-check-time`:
    /// how often the leader compares compaction hashes; `None` for never.
    pub compact_hash_check_interval: Option<Duration>,
    /// `--cors` and `--host-whitelist`: the checks on the client listeners' HTTP requests.
    pub access: crate::access::AccessControl,
    pub log_level: LogLevel,
    /// `--log-outputs`: where logs go, without repeats.
    pub log_outputs: Vec<LogOutput>,
}

/// One of `--log-outputs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogOutput {
    Stderr,
    Stdout,
    /// Appended to.
    File(PathBuf),
}

/// Reads `--log-outputs` as etcd does: `default` is stderr; repeats count once.
fn parse_log_outputs(given: &[String]) -> Result<Vec<LogOutput>, ConfigError> {
    let mut outputs = Vec::new();
    for name in given.iter().map(|name| name.trim()) {
        let output = match name {
            "" => continue,
            "default" | "stderr" => LogOutput::Stderr,
            "stdout" => LogOutput::Stdout,
            "systemd/journal" => {
                return Err(ConfigError::LogOutput(
                    "systemd/journal is not supported: log to stderr, which systemd puts in the \
                     journal"
                        .into(),
                ));
            }
            path => LogOutput::File(PathBuf::from(path)),
        };
        if !outputs.contains(&output) {
            outputs.push(output);
        }
    }
    if outputs.is_empty() {
        outputs.push(LogOutput::Stderr);
    }
    Ok(outputs)
}

/// What is wrong with the command line, in words that name the flag to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("--name must not be empty")]
    EmptyName,
    #[error("--log-outputs: {0}")]
    LogOutput(String),
    #[error("{0}")]
    TlsFlags(String),
    #[error("--auto-compaction-retention '{given}': {reason}")]
    InvalidAutoCompactionRetention { given: String, reason: String },
    #[error("--{flag}: invalid URL '{url}': {reason}")]
    InvalidUrl {
        flag: &'static str,
        url: String,
        reason: String,
    },
    #[error("--{flag} must name at least one URL")]
    NoUrls { flag: &'static str },
    #[error("--{flag}: expected an IP address or 'localhost' in URL for binding ({url})")]
    HostnameForBinding { flag: &'static str, url: String },
    #[error("--initial-cluster: invalid entry '{entry}': expected name=peer-url")]
    InvalidInitialClusterEntry { entry: String },
    #[error("--initial-cluster has no entry for member '{name}' (names: {names})")]
    NotInInitialCluster { name: String, names: String },
    #[error(
        "--initial-cluster has {name}={cluster_urls} but --initial-advertise-peer-urls is {advertised}; they must list the same URLs"
    )]
    AdvertisePeerMismatch {
        name: String,
        cluster_urls: String,
        advertised: String,
    },
    #[error("--initial-cluster: peer URL {url} is given for both '{first}' and '{second}'")]
    DuplicatePeerUrl {
        url: String,
        first: String,
        second: String,
    },
    #[error("--initial-cluster: members '{first}' and '{second}' derive the same member ID {id:x}")]
    DuplicateMemberId {
        first: String,
        second: String,
        id: MemberId,
    },
    #[error("--initial-cluster-token must not be empty")]
    EmptyClusterToken,
    #[error("--heartbeat-interval must be at least 1 ms")]
    ZeroHeartbeat,
    #[error(
        "--election-timeout[{election_ms}ms] should be at least 5 times --heartbeat-interval[{heartbeat_ms}ms]"
    )]
    ElectionTimeoutTooShort { election_ms: u64, heartbeat_ms: u64 },
    #[error(
        "--election-timeout[{election_ms}ms] is too long, and should be set less than {max_ms}ms"
    )]
    ElectionTimeoutTooLong { election_ms: u64, max_ms: u64 },
    #[error("--snapshot-count must be at least 1")]
    ZeroSnapshotCount,
    #[error("--max-request-bytes must be at least 1")]
    ZeroMaxRequestBytes,
    #[error("--max-txn-ops must be at least 1")]
    ZeroMaxTxnOps,
    #[error("--wal-segment-bytes must be between {min} and {max}, got {given}")]
    WalSegmentBytesOutOfRange { given: u64, min: u64, max: u64 },
    #[error("--wal-syncs-in-flight must be between 1 and {max}, got {given}")]
    WalSyncsInFlightOutOfRange { given: usize, max: usize },
    #[error("address {addr} is given both as {first} and as {second}")]
    ListenAddressReused {
        addr: SocketAddr,
        first: &'static str,
        second: &'static str,
    },
}

impl ServerConfig {
    /// Validates the member flags and derives the IDs.
    pub fn from_args(args: &MemberArgs) -> Result<ServerConfig, ConfigError> {
        if args.name.is_empty() {
            return Err(ConfigError::EmptyName);
        }
        if args.initial_cluster_token.is_empty() {
            return Err(ConfigError::EmptyClusterToken);
        }
        check_timeouts(args.heartbeat_interval, args.election_timeout)?;
        // Checked even when no URL is https, so a typo does not wait for the day one is.
        let cipher_suites = cipher_suites(args)?;
        if args.snapshot_count == 0 {
            return Err(ConfigError::ZeroSnapshotCount);
        }
        if args.max_request_bytes == 0 {
            return Err(ConfigError::ZeroMaxRequestBytes);
        }
        if args.max_txn_ops == 0 {
            return Err(ConfigError::ZeroMaxTxnOps);
        }
        let segment_bytes_allowed =
            ballot_wal::SEGMENT_SIZE_BYTES_MIN..=ballot_wal::SEGMENT_SIZE_BYTES_MAX;
        if !segment_bytes_allowed.contains(&args.wal_segment_bytes) {
            return Err(ConfigError::WalSegmentBytesOutOfRange {
                given: args.wal_segment_bytes,
                min: *segment_bytes_allowed.start(),
                max: *segment_bytes_allowed.end(),
            });
        }

        if !(1..=crate::cli::WAL_SYNCS_IN_FLIGHT_MAX).contains(&args.wal_syncs_in_flight) {
            return Err(ConfigError::WalSyncsInFlightOutOfRange {
                given: args.wal_syncs_in_flight,
                max: crate::cli::WAL_SYNCS_IN_FLIGHT_MAX,
            });
        }

        let client_listen = parse_url_list("listen-client-urls", &args.listen_client_urls)?;
        let advertise_client =
            parse_url_list("advertise-client-urls", &args.advertise_client_urls)?;
        let data_dir = args
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("{}.ballot", args.name)));
        let client_tls = ClientTls::from_args(
            args,
            &client_listen,
            &advertise_client,
            &cipher_suites,
            &data_dir,
        )?;
        let peer_listen = parse_url_list("listen-peer-urls", &args.listen_peer_urls)?;
        let advertise_peer = parse_url_list(
            "initial-advertise-peer-urls",
            &args.initial_advertise_peer_urls,
        )?;
        let metrics_listen = match &args.listen_metrics_urls {
            Some(list) => parse_plain_url_list("listen-metrics-urls", list)?,
            None => Vec::new(),
        };

        let client_listen_addrs = bind_addrs("listen-client-urls", &client_listen)?;
        let peer_listen_addrs = bind_addrs("listen-peer-urls", &peer_listen)?;
        let metrics_listen_addrs = bind_addrs("listen-metrics-urls", &metrics_listen)?;
        check_no_reused_addr(&[
            ("--listen-client-urls", &client_listen_addrs),
            ("--listen-peer-urls", &peer_listen_addrs),
            ("--listen-metrics-urls", &metrics_listen_addrs),
        ])?;

        let Membership {
            advertise_peer_urls,
            initial_cluster,
            member_id,
            cluster_id,
        } = Membership::derive(
            &args.name,
            &advertise_peer,
            args.initial_cluster.as_deref(),
            &args.initial_cluster_token,
        )?;

        let initial_peer_urls = initial_cluster
            .iter()
            .flat_map(|member| &member.peer_urls)
            .map(|url| HttpUrl::parse("initial-cluster", url))
            .collect::<Result<Vec<_>, _>>()?;
        let all_peer_urls: Vec<&HttpUrl> = peer_listen
            .iter()
            .chain(&advertise_peer)
            .chain(&initial_peer_urls)
            .collect();
        let own_peer_urls: Vec<&HttpUrl> = peer_listen.iter().chain(&advertise_peer).collect();
        let peer_tls = PeerTls::from_args(
            args,
            &all_peer_urls,
            &own_peer_urls,
            &cipher_suites,
            &data_dir,
        )?;

        Ok(ServerConfig {
            name: args.name.clone(),
            data_dir,
            // Empty means the default, as in etcd.
            wal_dir: args
                .wal_dir
                .clone()
                .filter(|dir| !dir.as_os_str().is_empty()),
            client_listen_tls: client_listen.iter().map(|url| url.tls).collect(),
            client_listen_addrs,
            client_tls,
            advertise_client_urls: advertise_client.iter().map(HttpUrl::to_string).collect(),
            peer_listen_tls: peer_listen.iter().map(|url| url.tls).collect(),
            peer_listen_addrs,
            peer_tls,
            advertise_peer_urls,
            metrics_listen_addrs,
            initial_cluster,
            initial_cluster_state: match args.initial_cluster_state {
                ClusterStateArg::New => ClusterState::New,
                ClusterStateArg::Existing => ClusterState::Existing,
            },
            initial_cluster_token: args.initial_cluster_token.clone(),
            member_id,
            cluster_id,
            heartbeat_interval: Duration::from_millis(args.heartbeat_interval),
            election_timeout: Duration::from_millis(args.election_timeout),
            snapshot_count: args.snapshot_count,
            max_request_bytes: args.max_request_bytes,
            max_txn_ops: args.max_txn_ops,
            unsafe_no_fsync: args.unsafe_no_fsync,
            wal_segment_bytes: args.wal_segment_bytes,
            wal_syncs_in_flight: args.wal_syncs_in_flight,
            auto_compaction: parse_auto_compaction(
                args.auto_compaction_mode,
                &args.auto_compaction_retention,
            )?,
            auto_compaction_check_interval: args.auto_compaction_check_interval,
            // etcd: 0 means the default, a negative number no limit.
            quota_backend_bytes: match args.quota_backend_bytes {
                0 => Some(crate::cli::DEFAULT_QUOTA_BACKEND_BYTES),
                bytes if bytes < 0 => None,
                bytes => Some(bytes as u64),
            },
            grpc_keepalive_interval: args.grpc_keepalive_interval,
            grpc_keepalive_timeout: args.grpc_keepalive_timeout,
            force_new_cluster: args.force_new_cluster,
            strict_reconfig_check: args.strict_reconfig_check,
            pre_vote: args.pre_vote,
            initial_election_tick_advance: args.initial_election_tick_advance,
            // etcd: 0 is no limit.
            snapshot_files_kept: match args.max_snapshots {
                0 => usize::MAX,
                kept => kept,
            },
            warning_apply_duration: args.experimental_warning_apply_duration,
            extensive_metrics: args.metrics == crate::cli::MetricsLevel::Extensive,
            lease_checkpoint_interval: args
                .experimental_enable_lease_checkpoint
                .then_some(args.experimental_lease_checkpoint_interval),
            max_concurrent_streams: args.max_concurrent_streams,
            watch_progress_notify_interval: args.experimental_watch_progress_notify_interval,
            initial_corrupt_check: args.experimental_initial_corrupt_check,
            corrupt_check_interval: Some(args.experimental_corrupt_check_time)
                .filter(|interval| !interval.is_zero()),
            compact_hash_check_interval: args
                .experimental_compact_hash_check_enabled
                .then_some(args.experimental_compact_hash_check_time),
            access: crate::access::AccessControl {
                cors: crate::access::Allowed::parse(&args.cors),
                hosts: crate::access::Allowed::parse(&args.host_whitelist),
            },
            log_level: if args.debug {
                LogLevel::Debug
            } else {
                args.log_level
            },
            log_outputs: parse_log_outputs(&args.log_outputs)?,
        })
    }

    /// The election timeout in Raft ticks (one tick per heartbeat interval), at least
    /// [`ELECTION_TIMEOUT_MIN_HEARTBEATS`].
    pub fn election_timeout_ticks(&self) -> u64 {
        let heartbeat_ms = self.heartbeat_interval.as_millis().max(1);
        let ticks = self.election_timeout.as_millis() / heartbeat_ms;
        u64::try_from(ticks).unwrap_or(u64::MAX)
    }

    /// The gRPC receive limit: etcd accepts messages up to `--max-request-bytes` plus 512 KiB of
    /// gRPC framing, so that an oversized request reaches the server and gets etcd's
    /// "request is too large" error instead of a transport error.
    pub fn grpc_max_receive_bytes(&self) -> usize {
        let limit = self.max_request_bytes.saturating_add(512 * 1024);
        usize::try_from(limit).unwrap_or(usize::MAX)
    }

    /// The members other than this one, from the initial cluster.
    pub fn initial_peers(&self) -> impl Iterator<Item = &InitialMember> {
        self.initial_cluster
            .iter()
            .filter(|member| member.member_id != self.member_id)
    }
}

fn check_timeouts(heartbeat_ms: u64, election_ms: u64) -> Result<(), ConfigError> {
    if heartbeat_ms == 0 {
        return Err(ConfigError::ZeroHeartbeat);
    }
    if election_ms < heartbeat_ms.saturating_mul(ELECTION_TIMEOUT_MIN_HEARTBEATS) {
        return Err(ConfigError::ElectionTimeoutTooShort {
            election_ms,
            heartbeat_ms,
        });
    }
    if election_ms > ELECTION_TIMEOUT_MAX_MS {
        return Err(ConfigError::ElectionTimeoutTooLong {
            election_ms,
            max_ms: ELECTION_TIMEOUT_MAX_MS,
        });
    }
    Ok(())
}

/// etcd reads a periodic retention as a number of hours or a duration, and a revision
/// retention as a count; 0 turns auto-compaction off.
fn parse_auto_compaction(
    mode: AutoCompactionMode,
    retention: &str,
) -> Result<Option<AutoCompaction>, ConfigError> {
    let text = retention.trim();
    let invalid = |reason: String| ConfigError::InvalidAutoCompactionRetention {
        given: retention.to_owned(),
        reason,
    };
    match mode {
        AutoCompactionMode::Periodic => {
            if let Ok(hours) = text.parse::<u64>() {
                return Ok((hours > 0).then(|| {
                    AutoCompaction::Periodic(Duration::from_secs(hours.saturating_mul(3600)))
                }));
            }
            crate::bench::parse_duration(text)
                .map(|retention| Some(AutoCompaction::Periodic(retention)))
                .map_err(invalid)
        }
        AutoCompactionMode::Revision => match text.parse::<i64>() {
            Ok(0) => Ok(None),
            Ok(revisions) if revisions > 0 => Ok(Some(AutoCompaction::Revision(revisions))),
            _ => Err(invalid(
                "revision mode takes a number of revisions to keep".into(),
            )),
        },
    }
}

fn find_self<'a>(
    cluster: &'a [InitialMember],
    name: &str,
) -> Result<&'a InitialMember, ConfigError> {
    cluster
        .iter()
        .find(|member| member.name == name)
        .ok_or_else(|| ConfigError::NotInInitialCluster {
            name: name.to_owned(),
            names: cluster
                .iter()
                .map(|member| member.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// etcd checks that this member's entry in `--initial-cluster` lists exactly the URLs it
/// advertises (`ServerConfig.advertiseMatchesCluster`); otherwise the others would dial an
/// address this member does not answer at.
fn check_advertised_peer_urls(
    this_member: &InitialMember,
    advertised: &[String],
) -> Result<(), ConfigError> {
    let in_cluster: BTreeSet<&str> = this_member.peer_urls.iter().map(String::as_str).collect();
    let in_flag: BTreeSet<&str> = advertised.iter().map(String::as_str).collect();
    if in_cluster == in_flag {
        return Ok(());
    }
    Err(ConfigError::AdvertisePeerMismatch {
        name: this_member.name.clone(),
        cluster_urls: this_member.peer_urls.join(","),
        advertised: advertised.join(","),
    })
}

fn check_no_reused_addr(groups: &[(&'static str, &[SocketAddr])]) -> Result<(), ConfigError> {
    let mut seen: Vec<(SocketAddr, &'static str)> = Vec::new();
    for (flag, addrs) in groups {
        for addr in addrs.iter() {
            // Port 0 asks the kernel for a fresh port each time, so it never collides.
            if addr.port() == 0 {
                continue;
            }
            if let Some((_, first)) = seen.iter().find(|(other, _)| other == addr) {
                return Err(ConfigError::ListenAddressReused {
                    addr: *addr,
                    first,
                    second: flag,
                });
            }
            seen.push((*addr, flag));
        }
    }
    Ok(())
}

/// Parses `name=url,name=url,...`, gathering repeated names, and derives each member's ID.
pub fn parse_initial_cluster(
    text: &str,
    cluster_token: &str,
) -> Result<Vec<InitialMember>, ConfigError> {
    let mut members: Vec<InitialMember> = Vec::new();
    for entry in text
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
    {
        let Some((name, url)) = entry.split_once('=') else {
            return Err(ConfigError::InvalidInitialClusterEntry {
                entry: entry.to_owned(),
            });
        };
        if name.is_empty() {
            return Err(ConfigError::InvalidInitialClusterEntry {
                entry: entry.to_owned(),
            });
        }
        let url = HttpUrl::parse("initial-cluster", url)?.to_string();
        if let Some(owner) = members
            .iter()
            .find(|member| member.peer_urls.contains(&url))
        {
            return Err(ConfigError::DuplicatePeerUrl {
                url,
                first: owner.name.clone(),
                second: name.to_owned(),
            });
        }
        match members.iter_mut().find(|member| member.name == name) {
            Some(member) => member.peer_urls.push(url),
            None => members.push(InitialMember {
                name: name.to_owned(),
                peer_urls: vec![url],
                member_id: 0,
            }),
        }
    }
    if members.is_empty() {
        return Err(ConfigError::NoUrls {
            flag: "initial-cluster",
        });
    }
    for member in &mut members {
        member.member_id = member_id(&member.peer_urls, cluster_token);
    }
    check_distinct_ids(&members)?;
    Ok(members)
}

fn check_distinct_ids(members: &[InitialMember]) -> Result<(), ConfigError> {
    for (index, first) in members.iter().enumerate() {
        if let Some(second) = members[index + 1..]
            .iter()
            .find(|other| other.member_id == first.member_id)
        {
            return Err(ConfigError::DuplicateMemberId {
                first: first.name.clone(),
                second: second.name.clone(),
                id: first.member_id,
            });
        }
    }
    Ok(())
}

/// A member's ID: the first 8 bytes (big-endian) of SHA-256 over its sorted peer URLs and the
/// cluster token, as etcd derives it with SHA-1 in `membership.NewMember`. Sorting makes the ID
/// independent of the order the URLs were listed in. Never 0.
pub fn member_id<S: AsRef<str>>(peer_urls: &[S], cluster_token: &str) -> MemberId {
    member_id_salted(peer_urls, cluster_token, None)
}

/// The ID for a member added at run time (`member add`). etcd mixes the current time into the
/// hash so that removing a member and adding one back at the same URL gives a new ID: an old
/// incarnation's messages must never be taken for the new one's.
pub fn added_member_id<S: AsRef<str>>(
    peer_urls: &[S],
    cluster_token: &str,
    unix_time_secs: u64,
) -> MemberId {
    member_id_salted(peer_urls, cluster_token, Some(unix_time_secs))
}

fn member_id_salted<S: AsRef<str>>(
    peer_urls: &[S],
    cluster_token: &str,
    salt: Option<u64>,
) -> MemberId {
    let mut sorted: Vec<&str> = peer_urls.iter().map(AsRef::as_ref).collect();
    sorted.sort_unstable();
    let mut hasher = Sha256::new();
    for url in sorted {
        hasher.update(url.as_bytes());
        // A separator keeps ["ab", "c"] and ["a", "bc"] apart.
        hasher.update([0u8]);
    }
    hasher.update(cluster_token.as_bytes());
    if let Some(salt) = salt {
        hasher.update(salt.to_be_bytes());
    }
    nonzero_prefix(&hasher.finalize())
}

/// The cluster ID: the first 8 bytes of SHA-256 over the sorted member IDs (big-endian), as etcd
/// derives it in `RaftCluster.genID`. Never 0.
pub fn cluster_id(member_ids: impl IntoIterator<Item = MemberId>) -> ClusterId {
    let mut sorted: Vec<MemberId> = member_ids.into_iter().collect();
    sorted.sort_unstable();
    let mut hasher = Sha256::new();
    for id in sorted {
        hasher.update(id.to_be_bytes());
    }
    nonzero_prefix(&hasher.finalize())
}

fn nonzero_prefix(digest: &[u8]) -> u64 {
    let mut prefix = [0u8; 8];
    prefix.copy_from_slice(&digest[..8]);
    // 0 means "none" to Raft; a digest starting with eight zero bytes is mapped to 1.
    u64::from_be_bytes(prefix).max(1)
}

/// An `http://host:port` URL as etcd accepts for its listeners, or `https://host:port` for a
/// client or peer URL reached with TLS. Unix sockets are not supported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// Host as written, without IPv6 brackets.
    pub host: String,
    pub port: u16,
    /// `https`: this URL is reached with TLS (client and peer URLs; metrics URLs are plain).
    pub tls: bool,
}

impl HttpUrl {
    /// Parses one URL: `http://` or, reached with TLS, `https://`; `flag` names the flag in the
    /// error.
    pub fn parse(flag: &'static str, text: &str) -> Result<HttpUrl, ConfigError> {
        let invalid = |reason: &str| ConfigError::InvalidUrl {
            flag,
            url: text.to_owned(),
            reason: reason.to_owned(),
        };
        let Some((scheme, rest)) = text.split_once("://") else {
            return Err(invalid("expected http://host:port"));
        };
        let tls = match scheme {
            "http" => false,
            "https" => true,
            "unix" | "unixs" => return Err(invalid("unix sockets are not supported")),
            _ => return Err(invalid("the scheme must be http or https")),
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains('/') || authority.contains('?') || authority.contains('#') {
            return Err(invalid("a path is not allowed"));
        }
        if authority.contains('@') {
            return Err(invalid("user information is not allowed"));
        }
        let (host, port_text) =
            split_host_port(authority).ok_or_else(|| invalid("expected host:port"))?;
        if host.is_empty() {
            return Err(invalid("the host is empty"));
        }
        if port_text.is_empty() {
            return Err(invalid("the port is missing"));
        }
        let port = port_text
            .parse::<u16>()
            .map_err(|_| invalid("the port must be a number from 0 to 65535"))?;
        Ok(HttpUrl {
            host: host.to_owned(),
            port,
            tls,
        })
    }

    /// The address to bind: an IP literal, or 127.0.0.1 for `localhost`. etcd too refuses other
    /// host names for listeners.
    pub fn bind_addr(&self, flag: &'static str) -> Result<SocketAddr, ConfigError> {
        let ip = if self.host.eq_ignore_ascii_case("localhost") {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            self.host
                .parse::<IpAddr>()
                .map_err(|_| ConfigError::HostnameForBinding {
                    flag,
                    url: self.to_string(),
                })?
        };
        Ok(SocketAddr::new(ip, self.port))
    }
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        if self.host.contains(':') {
            write!(formatter, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(formatter, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

fn split_host_port(authority: &str) -> Option<(&str, &str)> {
    if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']')?;
        let port = after.strip_prefix(':')?;
        return Some((host, port));
    }
    let (host, port) = authority.rsplit_once(':')?;
    if host.contains(':') {
        // An IPv6 literal must be bracketed to carry a port.
        return None;
    }
    Some((host, port))
}

/// Parses a comma-separated list of `http://` URLs (metrics URLs, which are served without TLS).
pub fn parse_plain_url_list(flag: &'static str, text: &str) -> Result<Vec<HttpUrl>, ConfigError> {
    let urls = parse_url_list(flag, text)?;
    if let Some(tls) = urls.iter().find(|url| url.tls) {
        return Err(ConfigError::InvalidUrl {
            flag,
            url: tls.to_string(),
            reason: "this URL is served without TLS; it must be http://".into(),
        });
    }
    Ok(urls)
}

/// Parses a comma-separated URL list (`http://` or `https://`).
pub fn parse_url_list(flag: &'static str, text: &str) -> Result<Vec<HttpUrl>, ConfigError> {
    let urls = text
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(|url| HttpUrl::parse(flag, url))
        .collect::<Result<Vec<_>, _>>()?;
    if urls.is_empty() {
        return Err(ConfigError::NoUrls { flag });
    }
    Ok(urls)
}

fn bind_addrs(flag: &'static str, urls: &[HttpUrl]) -> Result<Vec<SocketAddr>, ConfigError> {
    urls.iter().map(|url| url.bind_addr(flag)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    use crate::cli::Cli;

    fn config(args: &[&str]) -> Result<ServerConfig, ConfigError> {
        let argv = std::iter::once("ballot").chain(args.iter().copied());
        let cli = Cli::try_parse_from(argv).expect("test arguments must parse");
        ServerConfig::from_args(&cli.member)
    }

    const THREE: &str =
        "a=http://127.0.0.1:12380,b=http://127.0.0.1:22380,c=http://127.0.0.1:32380";

    fn member_b() -> Vec<&'static str> {
        vec![
            "--name",
            "b",
            "--initial-cluster",
            THREE,
            "--listen-peer-urls",
            "http://127.0.0.1:22380",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:22380",
            "--listen-client-urls",
            "http://127.0.0.1:22379",
            "--advertise-client-urls",
            "http://127.0.0.1:22379",
        ]
    }

    #[test]
    fn defaults_give_a_one_member_cluster_like_etcd() {
        let config = config(&[]).expect("defaults must be valid");
        assert_eq!(config.name, "default");
        assert_eq!(config.data_dir, PathBuf::from("default.ballot"));
        assert_eq!(
            config.client_listen_addrs,
            vec!["127.0.0.1:2379".parse().unwrap()]
        );
        assert_eq!(config.advertise_client_urls, vec!["http://127.0.0.1:2379"]);
        assert_eq!(
            config.peer_listen_addrs,
            vec!["127.0.0.1:2380".parse().unwrap()]
        );
        assert_eq!(config.advertise_peer_urls, vec!["http://127.0.0.1:2380"]);
        assert_eq!(config.initial_cluster.len(), 1);
        assert_eq!(config.initial_cluster[0].name, "default");
        assert_eq!(
            config.initial_cluster[0].peer_urls,
            vec!["http://127.0.0.1:2380"]
        );
        assert_eq!(config.initial_cluster[0].member_id, config.member_id);
        assert_eq!(config.initial_cluster_state, ClusterState::New);
        assert_eq!(config.heartbeat_interval, Duration::from_millis(100));
        assert_eq!(config.election_timeout, Duration::from_millis(1000));
        assert_eq!(config.election_timeout_ticks(), 10);
        assert_eq!(config.snapshot_count, 100_000);
        assert_eq!(config.max_request_bytes, 1_572_864);
        assert_eq!(config.grpc_max_receive_bytes(), 1_572_864 + 524_288);
        assert!(config.metrics_listen_addrs.is_empty());
        assert_eq!(config.initial_peers().count(), 0);
    }

    #[test]
    fn data_dir_defaults_to_the_member_name() {
        let config = config(&[
            "--name",
            "m7",
            "--initial-cluster",
            "m7=http://127.0.0.1:2380",
        ])
        .expect("valid");
        assert_eq!(config.data_dir, PathBuf::from("m7.ballot"));
    }

    #[test]
    fn initial_cluster_defaults_to_this_member_at_its_advertised_peer_urls() {
        let config = config(&[
            "--name",
            "solo",
            "--initial-advertise-peer-urls",
            "http://localhost:9380",
        ])
        .expect("valid");
        assert_eq!(config.initial_cluster[0].name, "solo");
        assert_eq!(
            config.initial_cluster[0].peer_urls,
            vec!["http://localhost:9380"]
        );
    }

    #[test]
    fn three_member_cluster_gives_every_member_the_same_ids() {
        let b = config(&member_b()).expect("member b is valid");
        assert_eq!(b.initial_cluster.len(), 3);
        assert_eq!(
            b.initial_peers()
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>(),
            ["a", "c"]
        );
        let a = config(&[
            "--name",
            "a",
            "--initial-cluster",
            THREE,
            "--listen-peer-urls",
            "http://127.0.0.1:12380",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:12380",
            "--listen-client-urls",
            "http://127.0.0.1:12379",
        ])
        .expect("member a is valid");
        assert_eq!(a.cluster_id, b.cluster_id);
        assert_eq!(a.initial_cluster, b.initial_cluster);
        assert_ne!(a.member_id, b.member_id);
        assert_eq!(
            b.member_id,
            member_id(&["http://127.0.0.1:22380"], "ballot-cluster")
        );
    }

    #[test]
    fn ids_depend_on_token_but_not_on_url_order() {
        let one = member_id(&["http://10.0.0.1:2380", "http://10.0.0.2:2380"], "t");
        let swapped = member_id(&["http://10.0.0.2:2380", "http://10.0.0.1:2380"], "t");
        let other_token = member_id(&["http://10.0.0.1:2380", "http://10.0.0.2:2380"], "u");
        assert_eq!(one, swapped);
        assert_ne!(one, other_token);
        assert_eq!(cluster_id([1, 2, 3]), cluster_id([3, 1, 2]));
        assert_ne!(cluster_id([1, 2, 3]), cluster_id([1, 2, 4]));
        assert_ne!(
            added_member_id(&["http://10.0.0.1:2380"], "t", 1),
            added_member_id(&["http://10.0.0.1:2380"], "t", 2)
        );
    }

    #[test]
    fn member_missing_from_initial_cluster_is_named() {
        let err = config(&["--name", "x", "--initial-cluster", THREE]).expect_err("must fail");
        assert_eq!(
            err.to_string(),
            "--initial-cluster has no entry for member 'x' (names: a, b, c)"
        );
    }

    #[test]
    fn advertised_peer_url_must_match_initial_cluster() {
        let mut args = member_b();
        args[7] = "http://127.0.0.1:22999";
        let err = config(&args).expect_err("must fail");
        assert_eq!(
            err,
            ConfigError::AdvertisePeerMismatch {
                name: "b".into(),
                cluster_urls: "http://127.0.0.1:22380".into(),
                advertised: "http://127.0.0.1:22999".into(),
            }
        );
    }

    #[test]
    fn a_name_may_list_several_peer_urls() {
        let config = config(&[
            "--initial-cluster",
            "default=http://127.0.0.1:2380,default=http://127.0.0.2:2380",
            "--initial-advertise-peer-urls",
            "http://127.0.0.2:2380,http://127.0.0.1:2380",
        ])
        .expect("valid");
        assert_eq!(config.initial_cluster.len(), 1);
        assert_eq!(config.initial_cluster[0].peer_urls.len(), 2);
    }

    #[test]
    fn duplicate_peer_urls_are_rejected() {
        let err = config(&[
            "--initial-cluster",
            "default=http://127.0.0.1:2380,b=http://127.0.0.1:2380",
        ])
        .expect_err("must fail");
        assert!(matches!(err, ConfigError::DuplicatePeerUrl { .. }), "{err}");
    }

    #[test]
    fn timeouts_follow_etcd_rules() {
        assert_eq!(
            config(&["--heartbeat-interval", "300"])
                .expect_err("must fail")
                .to_string(),
            "--election-timeout[1000ms] should be at least 5 times --heartbeat-interval[300ms]"
        );
        assert_eq!(
            config(&["--heartbeat-interval", "0"]).expect_err("must fail"),
            ConfigError::ZeroHeartbeat
        );
        assert!(matches!(
            config(&["--election-timeout", "60000"]).expect_err("must fail"),
            ConfigError::ElectionTimeoutTooLong { .. }
        ));
        let fast =
            config(&["--heartbeat-interval", "10", "--election-timeout", "50"]).expect("valid");
        assert_eq!(fast.election_timeout_ticks(), 5);
    }

    #[test]
    fn bad_urls_name_the_flag_and_the_problem() {
        let cases = [
            (
                vec!["--listen-client-urls", "127.0.0.1:2379"],
                "--listen-client-urls: invalid URL '127.0.0.1:2379': expected http://host:port",
            ),
            (
                vec!["--listen-client-urls", "unixs://127.0.0.1:2379"],
                "--listen-client-urls: invalid URL 'unixs://127.0.0.1:2379': unix sockets are not supported",
            ),
            (
                vec!["--listen-client-urls", "http://127.0.0.1"],
                "--listen-client-urls: invalid URL 'http://127.0.0.1': expected host:port",
            ),
            (
                vec!["--listen-client-urls", "http://127.0.0.1:99999"],
                "--listen-client-urls: invalid URL 'http://127.0.0.1:99999': the port must be a number from 0 to 65535",
            ),
            (
                vec!["--listen-client-urls", "http://example.com:2379"],
                "--listen-client-urls: expected an IP address or 'localhost' in URL for binding (http://example.com:2379)",
            ),
            (
                vec!["--listen-client-urls", ""],
                "--listen-client-urls must name at least one URL",
            ),
            (
                vec!["--advertise-client-urls", "http://h:1/path"],
                "--advertise-client-urls: invalid URL 'http://h:1/path': a path is not allowed",
            ),
            (
                vec!["--initial-cluster", "default"],
                "--initial-cluster: invalid entry 'default': expected name=peer-url",
            ),
        ];
        for (args, expected) in cases {
            let err = config(&args).expect_err("must fail");
            assert_eq!(err.to_string(), expected, "for {args:?}");
        }
    }

    #[test]
    fn ipv6_and_host_names_are_accepted_where_valid() {
        let config = config(&[
            "--listen-client-urls",
            "http://[::1]:2379,http://0.0.0.0:3379",
            "--advertise-client-urls",
            "http://node1.example:2379",
        ])
        .expect("valid");
        assert_eq!(
            config.client_listen_addrs,
            vec![
                "[::1]:2379".parse().unwrap(),
                "0.0.0.0:3379".parse().unwrap()
            ]
        );
        assert_eq!(
            config.advertise_client_urls,
            vec!["http://node1.example:2379"]
        );
    }

    #[test]
    fn the_same_address_cannot_serve_clients_and_peers() {
        let err =
            config(&["--listen-client-urls", "http://127.0.0.1:2380"]).expect_err("must fail");
        assert_eq!(
            err.to_string(),
            "address 127.0.0.1:2380 is given both as --listen-client-urls and as --listen-peer-urls"
        );
        // Port 0 asks for a fresh port each time and never collides.
        config(&[
            "--listen-client-urls",
            "http://127.0.0.1:0",
            "--listen-peer-urls",
            "http://127.0.0.1:0",
        ])
        .expect("port 0 twice is valid");
    }

    #[test]
    fn grpc_keepalive_defaults_are_etcds() {
        let defaults = config(&[]).expect("defaults");
        assert_eq!(defaults.grpc_keepalive_interval, Duration::from_secs(7200));
        assert_eq!(defaults.grpc_keepalive_timeout, Duration::from_secs(20));
        let set = config(&[
            "--grpc-keepalive-interval",
            "30s",
            "--grpc-keepalive-timeout",
            "5s",
        ])
        .expect("valid");
        assert_eq!(
            (set.grpc_keepalive_interval, set.grpc_keepalive_timeout),
            (Duration::from_secs(30), Duration::from_secs(5))
        );
    }

    #[test]
    fn strict_reconfig_check_pre_vote_streams_and_http_access_defaults_are_etcds() {
        let defaults = config(&[]).expect("defaults");
        assert!(defaults.strict_reconfig_check);
        assert!(defaults.pre_vote, "etcd 3.5's default");
        assert_eq!(defaults.max_concurrent_streams, u32::MAX);
        assert!(!config(&["--pre-vote=false"]).expect("valid").pre_vote);
        assert_eq!(
            config(&["--max-concurrent-streams", "100"])
                .expect("valid")
                .max_concurrent_streams,
            100
        );
        assert_eq!(defaults.access, crate::access::AccessControl::default());
        for (flags, strict) in [
            (&["--strict-reconfig-check=false"][..], false),
            (&["--strict-reconfig-check"][..], true),
            (&["--strict-reconfig-check", "true"][..], true),
        ] {
            assert_eq!(config(flags).expect("valid").strict_reconfig_check, strict);
        }
        let set = config(&[
            "--cors",
            "https://app.example,http://other.example:8080",
            "--host-whitelist",
            "etcd.example",
        ])
        .expect("valid");
        assert_eq!(
            set.access.cors,
            crate::access::Allowed::parse("http://other.example:8080,https://app.example")
        );
        assert_eq!(
            set.access.hosts,
            crate::access::Allowed::Only(["etcd.example".to_owned()].into())
        );
    }

    #[test]
    fn log_outputs_are_read_as_etcd_reads_them() {
        assert_eq!(
            config(&[]).expect("defaults").log_outputs,
            [LogOutput::Stderr]
        );
        let set = config(&[
            "--log-outputs",
            "stdout,default,/var/log/ballot.log,stderr,stdout",
            "--logger",
            "zap",
        ])
        .expect("valid");
        assert_eq!(
            set.log_outputs,
            [
                LogOutput::Stdout,
                LogOutput::Stderr,
                LogOutput::File(PathBuf::from("/var/log/ballot.log")),
            ]
        );
        let journal = config(&["--log-outputs", "systemd/journal"]).expect_err("refused");
        assert!(
            journal
                .to_string()
                .starts_with("--log-outputs: systemd/journal")
        );
        assert!(Cli::try_parse_from(["ballot", "--logger", "capnslog"]).is_err());
    }

    #[test]
    fn corruption_checks_are_off_unless_asked() {
        let defaults = config(&[]).expect("defaults");
        assert_eq!(
            defaults.watch_progress_notify_interval,
            Duration::from_secs(600)
        );
        assert!(!defaults.initial_corrupt_check);
        assert_eq!(defaults.corrupt_check_interval, None);
        assert_eq!(defaults.compact_hash_check_interval, None);
        let on = config(&[
            "--experimental-initial-corrupt-check",
            "--experimental-corrupt-check-time",
            "5m",
            "--experimental-compact-hash-check-enabled",
        ])
        .expect("valid");
        assert!(on.initial_corrupt_check);
        assert_eq!(on.corrupt_check_interval, Some(Duration::from_secs(300)));
        assert_eq!(
            on.compact_hash_check_interval,
            Some(Duration::from_secs(60)),
            "etcd's default interval"
        );
        let often = config(&[
            "--experimental-compact-hash-check-enabled=true",
            "--experimental-compact-hash-check-time=2m0s",
        ])
        .expect("valid");
        assert_eq!(
            often.compact_hash_check_interval,
            Some(Duration::from_secs(120))
        );
        let argv = ["ballot", "--experimental-compact-hash-check-time", "0s"];
        assert!(Cli::try_parse_from(argv).is_err(), "a zero interval");
        // etcd's spellings of "off".
        let off = config(&[
            "--experimental-initial-corrupt-check=false",
            "--experimental-corrupt-check-time=0s",
        ])
        .expect("valid");
        assert!(!off.initial_corrupt_check);
        assert_eq!(off.corrupt_check_interval, None);
        let argv = ["ballot", "--experimental-corrupt-check-time", "often"];
        assert!(Cli::try_parse_from(argv).is_err());
    }

    #[test]
    fn other_numbers_are_validated() {
        assert_eq!(
            config(&["--snapshot-count", "0"]).expect_err("must fail"),
            ConfigError::ZeroSnapshotCount
        );
        assert_eq!(
            config(&["--max-request-bytes", "0"]).expect_err("must fail"),
            ConfigError::ZeroMaxRequestBytes
        );
        assert_eq!(
            config(&["--max-txn-ops", "0"]).expect_err("must fail"),
            ConfigError::ZeroMaxTxnOps
        );
        assert!(matches!(
            config(&["--wal-segment-bytes", "100"]).expect_err("must fail"),
            ConfigError::WalSegmentBytesOutOfRange { given: 100, .. }
        ));
        assert_eq!(
            config(&["--wal-segment-bytes", "4194304"])
                .expect("4 MiB segments are fine")
                .wal_segment_bytes,
            4 * 1024 * 1024
        );
        assert_eq!(
            config(&["--wal-syncs-in-flight", "0"]).expect_err("must fail"),
            ConfigError::WalSyncsInFlightOutOfRange { given: 0, max: 8 }
        );
        assert_eq!(
            config(&["--wal-syncs-in-flight", "9"]).expect_err("must fail"),
            ConfigError::WalSyncsInFlightOutOfRange { given: 9, max: 8 }
        );
        assert_eq!(config(&[]).expect("defaults").wal_syncs_in_flight, 1);
        assert_eq!(
            config(&["--wal-syncs-in-flight", "3"])
                .expect("3 is fine")
                .wal_syncs_in_flight,
            3
        );
        assert_eq!(
            config(&["--name", ""]).expect_err("must fail"),
            ConfigError::EmptyName
        );
        assert_eq!(
            config(&["--initial-cluster-token", ""]).expect_err("must fail"),
            ConfigError::EmptyClusterToken
        );
    }

    #[test]
    fn auto_compaction_retention_reads_as_etcd_reads_it() {
        let auto = |args: &[&str]| config(args).map(|config| config.auto_compaction);
        assert_eq!(auto(&[]), Ok(None), "off by default");
        assert_eq!(
            auto(&["--auto-compaction-retention", "1"]),
            Ok(Some(AutoCompaction::Periodic(Duration::from_secs(3600)))),
            "a bare number is hours"
        );
        assert_eq!(
            auto(&["--auto-compaction-retention", "30m"]),
            Ok(Some(AutoCompaction::Periodic(Duration::from_secs(1800))))
        );
        assert_eq!(auto(&["--auto-compaction-retention", "0"]), Ok(None));
        assert_eq!(
            auto(&[
                "--auto-compaction-mode",
                "revision",
                "--auto-compaction-retention",
                "1000"
            ]),
            Ok(Some(AutoCompaction::Revision(1000)))
        );
        for (mode, bad) in [("periodic", "soon"), ("revision", "1h"), ("revision", "-5")] {
            let retention = format!("--auto-compaction-retention={bad}");
            let error = auto(&["--auto-compaction-mode", mode, &retention]).expect_err("must fail");
            assert!(
                error
                    .to_string()
                    .starts_with(&format!("--auto-compaction-retention '{bad}': ")),
                "{error}"
            );
        }
    }

    #[test]
    fn https_peer_urls_need_the_peer_certificate_key_and_ca() {
        let https = [
            "--name",
            "a",
            "--listen-peer-urls",
            "https://127.0.0.1:12380",
            "--initial-advertise-peer-urls",
            "https://127.0.0.1:12380",
            "--initial-cluster",
            "a=https://127.0.0.1:12380,b=https://127.0.0.1:22380",
        ];
        let files = [
            "--peer-cert-file",
            "p.pem",
            "--peer-key-file",
            "p.key",
            "--peer-trusted-ca-file",
            "ca.pem",
        ];
        let with = |extra: &[&'static str]| {
            let mut args = https.to_vec();
            args.extend_from_slice(extra);
            config(&args)
        };
        let tls = with(&files).expect("https peer URLs with the files");
        assert_eq!(tls.peer_listen_tls, vec![true]);
        assert_eq!(tls.advertise_peer_urls, vec!["https://127.0.0.1:12380"]);
        let peer = tls.peer_tls.expect("peer TLS settings");
        assert_eq!(peer.trusted_ca_file, Some(PathBuf::from("ca.pem")));
        assert!(!peer.client_cert_auth);

        let missing = with(&files[..4]).expect_err("no CA");
        assert_eq!(
            missing.to_string(),
            "the peer URL https://127.0.0.1:12380 needs --peer-cert-file, --peer-key-file and \
             --peer-trusted-ca-file (or --peer-auto-tls)"
        );
        let auth = config(&["--peer-client-cert-auth"]).expect_err("no CA");
        assert_eq!(
            auth.to_string(),
            "--peer-client-cert-auth needs --peer-trusted-ca-file"
        );
        let cn = config(&["--peer-cert-allowed-cn", "member"]).expect_err("optional certs");
        assert_eq!(
            cn.to_string(),
            "--peer-cert-allowed-cn needs --peer-client-cert-auth"
        );
        let suite = config(&["--cipher-suites", "TLS_RSA_WITH_RC4_128_SHA"]).expect_err("RC4");
        assert!(
            suite.to_string().starts_with(
                "--cipher-suites: unsupported cipher suite 'TLS_RSA_WITH_RC4_128_SHA'"
            ),
            "{suite}"
        );
        // An https URL of another member is dialled with TLS: the files are needed too.
        let other = config(&[
            "--name",
            "a",
            "--initial-cluster",
            "a=http://127.0.0.1:2380,b=https://127.0.0.1:22380",
        ])
        .expect_err("no files");
        assert!(
            other
                .to_string()
                .starts_with("the peer URL https://127.0.0.1:22380 needs"),
            "{other}"
        );
        // With plain http peer URLs the files are ignored, as etcd ignores them.
        let plain = config(&files).expect("ignored");
        assert_eq!(plain.peer_tls, None);
    }

    #[test]
    fn https_client_urls_need_the_certificate_flags() {
        let tls = config(&[
            "--listen-client-urls",
            "https://127.0.0.1:2379,http://127.0.0.1:22379",
            "--advertise-client-urls",
            "https://127.0.0.1:2379",
            "--cert-file",
            "s.pem",
            "--key-file",
            "s.key",
        ])
        .expect("https client URLs");
        assert_eq!(tls.client_listen_tls, vec![true, false]);
        assert_eq!(tls.advertise_client_urls, vec!["https://127.0.0.1:2379"]);
        let files = tls.client_tls.expect("TLS settings");
        assert_eq!(files.cert_file, PathBuf::from("s.pem"));
        assert!(!files.client_cert_auth);

        let metrics = config(&["--listen-metrics-urls", "https://127.0.0.1:2381"])
            .expect_err("metrics URLs are plain");
        assert!(metrics.to_string().contains("must be http://"), "{metrics}");
        let no_files =
            config(&["--listen-client-urls", "https://127.0.0.1:2379"]).expect_err("refused");
        assert!(
            no_files
                .to_string()
                .contains("needs --cert-file and --key-file")
        );
        let half = config(&[
            "--listen-client-urls",
            "https://127.0.0.1:2379",
            "--cert-file",
            "s.pem",
        ])
        .expect_err("refused");
        assert_eq!(half.to_string(), "--cert-file and --key-file go together");
        let host = config(&["--client-cert-allowed-hostname", "client"]).expect_err("refused");
        assert_eq!(
            host.to_string(),
            "--client-cert-allowed-hostname needs --client-cert-auth"
        );
        // With plain http client URLs the files are ignored, as etcd ignores them.
        let plain = config(&["--cert-file", "s.pem", "--key-file", "s.key"]).expect("ignored");
        assert_eq!(plain.client_tls, None);
    }

    #[test]
    fn debug_is_etcds_older_spelling_of_the_debug_log_level() {
        use crate::cli::LogLevel;
        assert_eq!(config(&[]).expect("valid").log_level, LogLevel::Info);
        assert_eq!(
            config(&["--debug"]).expect("valid").log_level,
            LogLevel::Debug
        );
        let level = config(&["--debug=false", "--log-level", "warn"]).expect("valid");
        assert_eq!(level.log_level, LogLevel::Warn);
    }

    #[test]
    fn durations_take_gos_form_as_etcd_prints_it() {
        let config = config(&[
            "--experimental-enable-lease-checkpoint",
            "--experimental-lease-checkpoint-interval",
            "5m0s",
            "--experimental-corrupt-check-time",
            "0m0s",
        ])
        .expect("valid");
        assert_eq!(
            config.lease_checkpoint_interval,
            Some(Duration::from_secs(300))
        );
    }

    #[test]
    fn auto_tls_makes_certificates_in_the_data_dir_unless_files_are_given() {
        let client = [
            "--name",
            "a",
            "--data-dir",
            "/d",
            "--listen-client-urls",
            "https://127.0.0.1:2379,https://10.0.0.1:2379",
            "--advertise-client-urls",
            "https://a.example:2379",
            "--auto-tls",
        ];
        let tls = config(&client).expect("auto TLS").client_tls.expect("TLS");
        let made = tls.self_signed.clone().expect("self-signed");
        assert_eq!(made.dir, PathBuf::from("/d/fixtures/client"));
        assert_eq!(made.hosts, ["127.0.0.1", "10.0.0.1", "a.example"]);
        assert_eq!(made.validity_years, 1);
        assert_eq!(tls.cert_file, PathBuf::from("/d/fixtures/client/cert.pem"));
        assert_eq!(tls.key_file, PathBuf::from("/d/fixtures/client/key.pem"));
        // Given files win, as in etcd.
        let mut with_files = client.to_vec();
        with_files.extend(["--cert-file", "s.pem", "--key-file", "s.key"]);
        let tls = config(&with_files).expect("files").client_tls.expect("TLS");
        assert_eq!(
            (tls.cert_file, tls.self_signed),
            (PathBuf::from("s.pem"), None)
        );

        let peer = [
            "--name",
            "a",
            "--data-dir",
            "/d",
            "--listen-peer-urls",
            "https://127.0.0.1:12380",
            "--initial-advertise-peer-urls",
            "https://127.0.0.1:12380",
            "--initial-cluster",
            "a=https://127.0.0.1:12380,b=https://127.0.0.2:22380",
            "--peer-auto-tls",
            "--self-signed-cert-validity",
            "3",
        ];
        let tls = config(&peer).expect("peer auto TLS").peer_tls.expect("TLS");
        let made = tls.self_signed.expect("self-signed");
        assert_eq!(made.dir, PathBuf::from("/d/fixtures/peer"));
        assert_eq!(made.hosts, ["127.0.0.1"]);
        assert_eq!(made.validity_years, 3);
        assert_eq!(
            tls.trusted_ca_file, None,
            "self-signed peers are not verified"
        );
        let mut with_auth = peer.to_vec();
        with_auth.extend([
            "--peer-trusted-ca-file",
            "ca.pem",
            "--peer-client-cert-auth",
        ]);
        assert_eq!(
            config(&with_auth).expect_err("refused").to_string(),
            "--peer-auto-tls cannot be combined with --peer-client-cert-auth: self-signed peer \
             certificates cannot be verified against a CA"
        );
    }
}
