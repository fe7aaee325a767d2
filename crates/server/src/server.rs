//! The entry point of a member: opens the data directory, starts the node, the peer transport
//! and the client listeners, and runs until a signal, its removal from the cluster, or a fatal
//! error.

use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::config::{ClusterState, InitialMember, ServerConfig};
use crate::node::members::{MemberRecord, Registry};
use crate::node::{self, NodeConfig, NodeHandle, StartMode};
use crate::serve::ClientService;
use crate::storage::{self, ClusterFile, DataDir, StorageError};
use crate::transport::{self, Transport};

/// The allocator of every `ballot` process. A member allocates and frees many small buffers per
/// request on several threads (gRPC frames, headers, entries); glibc's allocator spent a quarter
/// of the leader's CPU time on that under load (perf, 1000 clients), mimalloc's thread-local
/// free lists much less.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns transparent huge pages off for this process; call it first thing in `main`.
///
/// mimalloc asks for huge pages on its arenas (`madvise(MADV_HUGEPAGE)`) and returns freed
/// memory to the kernel 10 ms after it is freed. Under load a member frees and reallocates
/// batch-sized buffers all the time, so the kernel kept zeroing whole 2 MiB pages to back a
/// few kilobytes: 1,450 huge-page faults a second on the leader at 1000 clients (about 2.9 GB/s
/// of zeroing, 10% of its CPU), against 9,000 ordinary 4 KiB faults with huge pages off, and
/// 6% more puts a second (docs/BENCHMARKS.md). A kernel that refuses only costs that speed,
/// so the result is ignored.
pub fn disable_transparent_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments only and sets a flag of this
    // process; no memory is handed to the kernel.
    let _ = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
}

/// How long a joining member keeps asking the cluster for its membership before giving up.
const JOIN_DISCOVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a member stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr} ({flag}): {source}")]
    Bind {
        addr: std::net::SocketAddr,
        flag: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("cannot join the cluster: {0}")]
    Join(String),
    #[error("cannot start the node: {0}")]
    Start(#[from] node::StartError),
    #[error(transparent)]
    Corruption(#[from] crate::corruption::CorruptionError),
    #[error(transparent)]
    ForceNewCluster(#[from] node::force_new::ForceNewClusterError),
    #[error("{0}")]
    Fatal(String),
    #[error("the client API failed: {0}")]
    Api(String),
}

/// The node configuration for `config`, with the IDs from the data directory.
pub fn node_config(config: &ServerConfig, cluster: &ClusterFile) -> NodeConfig {
    let election_ms = config.election_timeout.as_millis() as u64;
    NodeConfig {
        name: config.name.clone(),
        member_id: cluster.member_id,
        cluster_id: cluster.cluster_id,
        cluster_token: config.initial_cluster_token.clone(),
        client_urls: config.advertise_client_urls.clone(),
        peer_urls: config.advertise_peer_urls.clone(),
        heartbeat_interval: config.heartbeat_interval,
        election_timeout: config.election_timeout,
        election_ticks: u32::try_from(config.election_timeout_ticks()).unwrap_or(u32::MAX),
        snapshot_count: config.snapshot_count,
        snapshot_catchup_entries: config.snapshot_count.min(5000),
        max_request_bytes: config.max_request_bytes,
        // etcd: 5 s plus two election timeouts for the request to find a leader.
        request_timeout: Duration::from_secs(5) + config.election_timeout * 2,
        store_config: ballot_mvcc::StoreConfig {
            // etcd's minimum lease TTL: ceil(1.5 election timeouts), in seconds.
            lease_ttl_min_secs: (election_ms * 3).div_ceil(2000).max(1) as i64,
        },
        auto_compaction: config.auto_compaction.map(|mode| {
            let check = config
                .auto_compaction_check_interval
                .unwrap_or_else(|| mode.check_interval());
            (mode, check)
        }),
        quota_bytes: config.quota_backend_bytes,
        strict_reconfig_check: config.strict_reconfig_check,
        pre_vote: config.pre_vote,
        initial_election_tick_advance: config.initial_election_tick_advance,
        warning_apply_duration: config.warning_apply_duration,
        lease_checkpoint_interval: config.lease_checkpoint_interval,
    }
}

/// Runs a member until it is told to stop (SIGINT / SIGTERM) or fails.
pub async fn run(config: ServerConfig) -> Result<(), ServerError> {
    crate::metrics::metrics()
        .grpc
        .set_extensive(config.extensive_metrics);
    // The certificate files first: a mistake in them stops the member before it touches its
    // data or the network.
    let tls_acceptor = config
        .client_tls
        .as_ref()
        .map(crate::tls::acceptor)
        .transpose()?;
    let peer_tls = config.peer_tls.as_ref().map(crate::tls::peer).transpose()?;
    let peer_listeners = bind_all(&config.peer_listen_addrs, "--listen-peer-urls").await?;
    let client_listeners = bind_all(&config.client_listen_addrs, "--listen-client-urls").await?;
    let metrics_listeners = bind_all(&config.metrics_listen_addrs, "--listen-metrics-urls").await?;
    let member = start_member(&config, peer_listeners, peer_tls).await?;
    let api = serve_clients(
        member.handle.clone(),
        &config,
        client_listeners,
        metrics_listeners,
        tls_acceptor.as_ref(),
    );
    tracing::info!(
        member_id = %format_args!("{:x}", member.handle.member_id()),
        cluster_id = %format_args!("{:x}", member.handle.cluster_id()),
        "member is serving"
    );
    let outcome = tokio::select! {
        _ = shutdown_signal() => {
            tracing::info!("stopping on signal");
            Ok(())
        }
        failure = member.handle.stopped() => match failure {
            Some(reason) => Err(ServerError::Fatal(reason)),
            None if member.handle.was_removed() => {
                tracing::warn!("this member was removed from the cluster; stopping");
                Ok(())
            }
            None => Ok(()),
        },
        result = api => result,
    };
    member.handle.shutdown();
    let _ = tokio::time::timeout(Duration::from_secs(5), member.wal.shutdown()).await;
    outcome
}

/// A started member: the node, its transport and its WAL handle (for a clean shutdown).
pub struct Member {
    pub handle: NodeHandle,
    pub transport: Transport,
    pub wal: ballot_wal::GroupCommitWal,
}

/// Opens the data directory (joining the cluster first if asked), starts the node and serves
/// the peer listeners (one for each of `config.peer_listen_addrs`), with `peer_tls` loaded from
/// `config.peer_tls` when a peer URL is `https`.
pub async fn start_member(
    config: &ServerConfig,
    peer_listeners: Vec<TcpListener>,
    peer_tls: Option<crate::tls::PeerTlsConfig>,
) -> Result<Member, ServerError> {
    let data_dir = DataDir::new(&config.data_dir).with_wal_dir(config.wal_dir.as_deref());
    let (cluster, initialized) = cluster_file(config, &data_dir, peer_tls.as_ref()).await?;
    data_dir.check_wal_location(initialized, cluster.member_id)?;
    let mode = if cluster.joined {
        StartMode::Join
    } else {
        StartMode::Bootstrap {
            voters: cluster.seed.records().map(|member| member.id).collect(),
        }
    };
    let mut opened = {
        let data_dir = data_dir.clone();
        let cluster = cluster.clone();
        let settings = storage::WalSettings::from_config(config);
        tokio::task::spawn_blocking(move || storage::open(&data_dir, &cluster, settings))
            .await
            .map_err(|error| ServerError::Fatal(error.to_string()))??
    };
    if config.force_new_cluster {
        force_new_cluster(&mut opened, cluster.member_id).await?;
    }
    let wal = opened.wal.clone();
    let (input_tx, input_rx) = mpsc::channel(node::PEER_INPUT_DEPTH);
    let transport = Transport::new(
        cluster.cluster_id,
        cluster.member_id,
        input_tx,
        opened.snapshots.clone(),
        peer_tls,
    );
    let started = node::start(
        node_config(config, &cluster),
        opened,
        cluster.seed.clone(),
        mode,
        transport.clone(),
        input_rx,
    )?;
    let handle = started.handle;
    crate::corruption::answer_peers(&handle, &transport);
    // As in etcd, a member that has data checks it against its peers before it serves them (or
    // any client); a new member has nothing to compare yet.
    if config.initial_corrupt_check
        && initialized
        && let Err(error) = crate::corruption::initial_check(&handle, &transport).await
    {
        handle.shutdown();
        let _ = tokio::time::timeout(Duration::from_secs(5), wal.shutdown()).await;
        return Err(error.into());
    }
    for (listener, tls) in peer_listeners.into_iter().zip(&config.peer_listen_tls) {
        transport.serve(listener, *tls);
    }
    if let Some(interval) = config.corrupt_check_interval {
        crate::corruption::spawn_periodic(handle.clone(), transport.clone(), interval);
    }
    if let Some(interval) = config.compact_hash_check_interval {
        crate::corruption::spawn_compaction_check(handle.clone(), transport.clone(), interval);
    }
    Ok(Member {
        handle,
        transport,
        wal,
    })
}

/// `--force-new-cluster`: rewrites the recovered state into a one-member cluster
/// (`node::force_new`) and makes the appended entries and the new hard state durable before the
/// node starts from them.
async fn force_new_cluster(opened: &mut storage::Opened, me: u64) -> Result<(), ServerError> {
    let Some(recovered) = opened.recovered.as_mut() else {
        tracing::warn!("--force-new-cluster: this member has no data yet; starting as configured");
        return Ok(());
    };
    let forced = node::force_new::force_new_cluster(&mut recovered.restore, me)?;
    if !forced.appended.is_empty() {
        let write = ballot_wal::Write {
            snapshot: None,
            entries: forced.appended.iter().map(storage::entry_to_wal).collect(),
            hard_state: Some(storage::hard_state_to_wal(&recovered.restore.hard_state)),
        };
        opened
            .wal
            .append(write)
            .await
            .map_err(|error| ServerError::Fatal(format!("--force-new-cluster: {error}")))?;
    }
    let removed: Vec<String> = forced.removed.iter().map(|id| format!("{id:x}")).collect();
    tracing::warn!(
        removed = ?removed,
        committed_past_the_persisted_commit = forced.committed_beyond_hint,
        commit_index = recovered.restore.hard_state.commit,
        "forced a new one-member cluster from this member's data; do not restart the removed \
         members with their old data"
    );
    Ok(())
}

/// Reads this member's cluster file, or creates it: from `--initial-cluster` for a new cluster,
/// from the running cluster's member list for a member joining one. The flag says whether the
/// file was there already (the member has data).
async fn cluster_file(
    config: &ServerConfig,
    data_dir: &DataDir,
    peer_tls: Option<&crate::tls::PeerTlsConfig>,
) -> Result<(ClusterFile, bool), ServerError> {
    if let Some(existing) = ClusterFile::read(data_dir)? {
        existing.check_owner(data_dir, &config.advertise_peer_urls)?;
        return Ok((existing, true));
    }
    let cluster = match config.initial_cluster_state {
        ClusterState::New => ClusterFile {
            cluster_id: config.cluster_id,
            member_id: config.member_id,
            peer_urls: config.advertise_peer_urls.clone(),
            seed: initial_registry(&config.initial_cluster),
            joined: false,
        },
        ClusterState::Existing => join_cluster(config, peer_tls).await?,
    };
    cluster.write(data_dir)?;
    Ok((cluster, false))
}

/// The member registry a new cluster starts from: `--initial-cluster`'s members, all voters.
pub fn initial_registry(initial_cluster: &[InitialMember]) -> Registry {
    Registry::from_records(initial_cluster.iter().map(|member| MemberRecord {
        id: member.member_id,
        name: member.name.clone(),
        peer_urls: member.peer_urls.clone(),
        // Client URLs arrive through the log (each member publishes its own), so that every
        // member starts from the same registry: it is replicated state.
        client_urls: Vec::new(),
        is_learner: false,
    }))
}

/// Asks the other members of `--initial-cluster` for the cluster's ID and members, and finds
/// this member among them by its peer URLs (it must have been added with `member add`).
async fn join_cluster(
    config: &ServerConfig,
    peer_tls: Option<&crate::tls::PeerTlsConfig>,
) -> Result<ClusterFile, ServerError> {
    let peer_urls: Vec<String> = config
        .initial_cluster
        .iter()
        .filter(|member| member.member_id != config.member_id)
        .flat_map(|member| member.peer_urls.iter().cloned())
        .collect();
    if peer_urls.is_empty() {
        return Err(ServerError::Join(
            "--initial-cluster names no other member to join".into(),
        ));
    }
    let deadline = tokio::time::Instant::now() + JOIN_DISCOVERY_TIMEOUT;
    // A member that has not applied the `member add` yet answers without this member: ask
    // again until one knows it, or give up at the deadline.
    let (cluster_id, registry, me) = loop {
        let error = match transport::fetch_cluster_info(&peer_urls, peer_tls).await {
            Ok((cluster_id, registry)) => {
                match registry
                    .find_by_peer_urls(&config.advertise_peer_urls)
                    .cloned()
                {
                    Some(me) => break (cluster_id, registry, me),
                    None => format!(
                        "the cluster has no member with peer URLs {}; add it first with \
                         `etcdctl member add`",
                        config.advertise_peer_urls.join(",")
                    ),
                }
            }
            Err(error) => format!("no member of --initial-cluster answered ({error})"),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(ServerError::Join(error));
        }
        tracing::info!(%error, "waiting for the cluster");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    tracing::info!(
        member_id = %format_args!("{:x}", me.id),
        cluster_id = %format_args!("{cluster_id:x}"),
        "joining the cluster"
    );
    Ok(ClusterFile {
        cluster_id,
        member_id: me.id,
        peer_urls: config.advertise_peer_urls.clone(),
        seed: registry,
        joined: true,
    })
}

async fn bind_all(
    addrs: &[std::net::SocketAddr],
    flag: &'static str,
) -> Result<Vec<TcpListener>, ServerError> {
    let mut listeners = Vec::with_capacity(addrs.len());
    for addr in addrs {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind {
                addr: *addr,
                flag,
                source,
            })?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// Serves the client API (gRPC and HTTP on one port, like etcd) on every client listener, and
/// the HTTP endpoints alone on the `--listen-metrics-urls` listeners, until one fails.
async fn serve_clients(
    node: NodeHandle,
    config: &ServerConfig,
    listeners: Vec<TcpListener>,
    metrics_listeners: Vec<TcpListener>,
    tls_acceptor: Option<&tokio_rustls::TlsAcceptor>,
) -> Result<(), ServerError> {
    let mut servers = tokio::task::JoinSet::new();
    let service = crate::api::client_service(node.clone(), config);
    let plain = service.clone().with_access(config.access.clone());
    let secure = service.with_access(config.access.for_tls());
    for (listener, tls) in listeners.into_iter().zip(&config.client_listen_tls) {
        let (acceptor, service) = match (tls, tls_acceptor) {
            (true, Some(acceptor)) => (Some(acceptor.clone()), secure.clone()),
            _ => (None, plain.clone()),
        };
        servers.spawn(crate::serve::serve(
            listener,
            service,
            std::future::pending(),
            acceptor,
        ));
    }
    let http_only = ClientService::<NodeHandle>::router_only(crate::http::routes(
        crate::api::Api::new(node, crate::api::ApiOptions::from_config(config)),
    ));
    for listener in metrics_listeners {
        servers.spawn(crate::serve::serve(
            listener,
            http_only.clone(),
            std::future::pending(),
            None,
        ));
    }
    match servers.join_next().await {
        None => std::future::pending().await,
        Some(Ok(Ok(()))) => Ok(()),
        Some(Ok(Err(error))) => Err(ServerError::Api(error.to_string())),
        Some(Err(error)) => Err(ServerError::Api(error.to_string())),
    }
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
