//! The etcd v3 client API: every gRPC service plus the HTTP endpoints, on one port.
//!
//! [`router`] builds one `axum::Router` that the server serves on each client URL (with
//! [`crate::http::serve`], which speaks HTTP/2 for gRPC and HTTP/1 for `/health`, `/version` and
//! `/metrics` on the same socket, as etcd does).
//!
//! The services are written against [`ApiNode`], the operations this layer needs from the node.
//! [`crate::node::NodeHandle`] implements it; a second, in-process implementation backs the unit
//! tests of this module, so the etcd semantics of the API layer are tested without Raft.
//!
//! - [`kv`]: Range, Put, DeleteRange, Txn, Compact.
//! - [`watch`]: the bidirectional Watch stream.
//! - [`lease`]: LeaseGrant, LeaseRevoke, LeaseKeepAlive, LeaseTimeToLive, LeaseLeases.
//! - [`cluster`]: MemberList, MemberAdd, MemberRemove, MemberUpdate, MemberPromote.
//! - [`maintenance`]: Status, Alarm, Hash, HashKV, Snapshot, MoveLeader, Defragment.
//! - [`auth`]: authentication is not enabled; answers as a disabled etcd does.
//! - [`lock`]: the `v3lockpb.Lock` service (server-side mutex).
//! - [`election`]: the `v3electionpb.Election` service (server-side leader election).
//! - [`error`]: etcd's error strings and codes for what this layer refuses itself.
//! - [`authority`]: repairs the malformed HTTP/2 `:authority` some etcd clients send.

pub mod auth;
pub mod authority;
pub mod cluster;
pub mod election;
pub mod error;
pub mod kv;
pub mod lease;
pub mod lock;
pub mod maintenance;
pub mod watch;

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ballot_mvcc::{ApplyOutcome, Command, Store, WatchHub};
use ballot_proto::etcdserverpb::{
    AlarmMember, LeaseTimeToLiveResponse, Member, ResponseHeader, auth_server::AuthServer,
    cluster_server::ClusterServer, kv_server::KvServer, lease_server::LeaseServer,
    maintenance_server::MaintenanceServer, watch_server::WatchServer,
};
use ballot_proto::v3electionpb::election_server::ElectionServer;
use ballot_proto::v3lockpb::lock_server::LockServer;
use tonic::Status;

use crate::config::ServerConfig;
use crate::metrics::{GrpcMethod, metrics};
use crate::node::{NodeError, NodeHandle, NodeStatus};
use crate::serve::ClientService;

/// The version this server reports in `/version` and Maintenance.Status. etcdctl 3.4 and the
/// 3.5 client libraries accept a 3.5 server; Ballot implements the 3.5 API surface.
pub const ETCD_SERVER_VERSION: &str = "3.5.0";
/// The cluster version reported in `/version` (etcd reports major.minor.0).
pub const ETCD_CLUSTER_VERSION: &str = "3.5.0";

/// What the API layer needs from the node. Every method has the meaning documented on
/// [`NodeHandle`]; errors carry etcd's strings and codes ([`NodeError::grpc_code`]).
pub trait ApiNode: Clone + Send + Sync + 'static {
    fn member_id(&self) -> u64;
    fn cluster_id(&self) -> u64;
    /// The leader this member knows, 0 for none.
    fn leader_id(&self) -> u64;
    /// A full header for a response at `revision`.
    fn header(&self, revision: i64) -> ResponseHeader;
    fn propose(
        &self,
        command: Command,
    ) -> impl Future<Output = Result<ApplyOutcome, NodeError>> + Send;
    fn read_barrier(&self) -> impl Future<Output = Result<(), NodeError>> + Send;
    fn with_store<R>(&self, f: impl FnOnce(&Store) -> R) -> R;
    fn watch_hub(&self) -> &WatchHub;
    fn lease_keep_alive(&self, id: i64) -> impl Future<Output = Result<i64, NodeError>> + Send;
    fn lease_time_to_live(
        &self,
        id: i64,
        keys: bool,
    ) -> impl Future<Output = Result<LeaseTimeToLiveResponse, NodeError>> + Send;
    fn member_list(
        &self,
        linearizable: bool,
    ) -> impl Future<Output = Result<Vec<Member>, NodeError>> + Send;
    fn member_add(
        &self,
        peer_urls: Vec<String>,
        is_learner: bool,
    ) -> impl Future<Output = Result<(Member, Vec<Member>), NodeError>> + Send;
    fn member_remove(&self, id: u64)
    -> impl Future<Output = Result<Vec<Member>, NodeError>> + Send;
    fn member_update(
        &self,
        id: u64,
        peer_urls: Vec<String>,
    ) -> impl Future<Output = Result<Vec<Member>, NodeError>> + Send;
    fn member_promote(
        &self,
        id: u64,
    ) -> impl Future<Output = Result<Vec<Member>, NodeError>> + Send;
    fn move_leader(&self, target: u64) -> impl Future<Output = Result<(), NodeError>> + Send;
    fn status(&self) -> NodeStatus;
    /// A backup of the member's data, as the Snapshot stream sends it.
    fn backup_snapshot(
        &self,
    ) -> impl Future<Output = Result<Box<dyn maintenance::BackupSource>, NodeError>> + Send;
    fn defragment(&self) -> impl Future<Output = Result<(), NodeError>> + Send;
    /// etcd's Alarm RPC: GET, ACTIVATE or DEACTIVATE (`AlarmRequest.action`).
    fn alarm(
        &self,
        action: i32,
        member_id: u64,
        alarm: i32,
    ) -> impl Future<Output = Result<Vec<AlarmMember>, NodeError>> + Send;
}

impl ApiNode for NodeHandle {
    fn member_id(&self) -> u64 {
        NodeHandle::member_id(self)
    }
    fn cluster_id(&self) -> u64 {
        NodeHandle::cluster_id(self)
    }
    fn header(&self, revision: i64) -> ResponseHeader {
        NodeHandle::header(self, revision)
    }
    fn propose(
        &self,
        command: Command,
    ) -> impl Future<Output = Result<ApplyOutcome, NodeError>> + Send {
        NodeHandle::propose(self, command)
    }
    fn read_barrier(&self) -> impl Future<Output = Result<(), NodeError>> + Send {
        NodeHandle::read_barrier(self)
    }
    fn with_store<R>(&self, f: impl FnOnce(&Store) -> R) -> R {
        NodeHandle::with_store(self, f)
    }
    fn watch_hub(&self) -> &WatchHub {
        NodeHandle::watch_hub(self)
    }
    fn lease_keep_alive(&self, id: i64) -> impl Future<Output = Result<i64, NodeError>> + Send {
        NodeHandle::lease_keep_alive(self, id)
    }
    fn lease_time_to_live(
        &self,
        id: i64,
        keys: bool,
    ) -> impl Future<Output = Result<LeaseTimeToLiveResponse, NodeError>> + Send {
        NodeHandle::lease_time_to_live(self, id, keys)
    }
    fn member_list(
        &self,
        linearizable: bool,
    ) -> impl Future<Output = Result<Vec<Member>, NodeError>> + Send {
        NodeHandle::member_list(self, linearizable)
    }
    fn member_add(
        &self,
        peer_urls: Vec<String>,
        is_learner: bool,
    ) -> impl Future<Output = Result<(Member, Vec<Member>), NodeError>> + Send {
        NodeHandle::member_add(self, peer_urls, is_learner)
    }
    fn member_remove(
        &self,
        id: u64,
    ) -> impl Future<Output = Result<Vec<Member>, NodeError>> + Send {
        NodeHandle::member_remove(self, id)
    }
    fn member_update(
        &self,
        id: u64,
        peer_urls: Vec<String>,
    ) -> impl Future<Output = Result<Vec<Member>, NodeError>> + Send {
        NodeHandle::member_update(self, id, peer_urls)
    }
    fn member_promote(
        &self,
        id: u64,
    ) -> impl Future<Output = Result<Vec<Member>, NodeError>> + Send {
        NodeHandle::member_promote(self, id)
    }
    fn move_leader(&self, target: u64) -> impl Future<Output = Result<(), NodeError>> + Send {
        NodeHandle::move_leader(self, target)
    }
    fn status(&self) -> NodeStatus {
        NodeHandle::status(self)
    }
    fn leader_id(&self) -> u64 {
        NodeHandle::leader_id(self)
    }
    async fn backup_snapshot(&self) -> Result<Box<dyn maintenance::BackupSource>, NodeError> {
        let backup = NodeHandle::backup_snapshot(self).await?;
        Ok(Box::new(backup))
    }
    fn defragment(&self) -> impl Future<Output = Result<(), NodeError>> + Send {
        NodeHandle::defragment(self)
    }
    fn alarm(
        &self,
        action: i32,
        member_id: u64,
        alarm: i32,
    ) -> impl Future<Output = Result<Vec<AlarmMember>, NodeError>> + Send {
        NodeHandle::alarm(self, action, member_id, alarm)
    }
}

/// Limits and intervals of the API layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiOptions {
    /// Largest write request (the encoded command) accepted; larger ones get
    /// "etcdserver: request is too large".
    pub max_request_bytes: usize,
    /// Most compares, or operations in one branch, of a Txn (`--max-txn-ops`); larger ones get
    /// "etcdserver: too many operations in txn request". Checked here, before proposing, as in
    /// etcd: applying the log does not depend on it.
    pub max_txn_ops: usize,
    /// gRPC decode limit: `max_request_bytes` plus 512 KiB, as in etcd; larger messages are
    /// refused by the transport with ResourceExhausted.
    pub grpc_max_receive_bytes: usize,
    /// How often watchers created with `progress_notify` get an empty response carrying the
    /// current revision (etcd: 10 minutes).
    pub watch_progress_notify_interval: Duration,
    /// Events one watch stream may queue before its watchers fall back to catching up from
    /// history (bounded memory per stream).
    pub watch_queue_events_max: usize,
    /// How long HTTP `/health` waits for its linearizable read.
    pub health_timeout: Duration,
    /// `--election-timeout`: streams opened with `hasleader` end once this member has seen no
    /// leader at three checks this far apart (etcd's `monitorLeader`).
    pub election_timeout: Duration,
    /// `--grpc-keepalive-interval` and `--grpc-keepalive-timeout`: how often a gRPC client is
    /// pinged, and how long it has to answer before its connection is closed.
    pub grpc_keepalive: Option<(Duration, Duration)>,
    /// `--max-concurrent-streams`: streams one client connection may have open at once (HTTP/2
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`); etcd's default is no limit (2^32 - 1).
    pub max_concurrent_streams: u32,
}

/// The gRPC metadata a client sends to be served only by a member that has a leader (etcd
/// `rpctypes.MetadataRequireLeaderKey`, set by clientv3's `WithRequireLeader`).
pub const REQUIRE_LEADER_KEY: &str = "hasleader";

/// Whether `headers` (a gRPC call's metadata) ask for a member with a leader.
pub fn requires_leader(headers: &http::HeaderMap) -> bool {
    headers
        .get(REQUIRE_LEADER_KEY)
        .is_some_and(|value| value.as_bytes() == b"true")
}

/// etcd's `monitorLeader` for one stream opened with `hasleader`: completes once `node` has had
/// no leader at three consecutive checks one election timeout apart (a stream costs more to
/// reopen than a request, so streams get that long; new calls are refused at once).
pub(crate) async fn leader_lost<N: ApiNode>(node: &N, election_timeout: Duration) {
    const CHECKS_WITHOUT_LEADER: u32 = 3;
    let start = tokio::time::Instant::now() + election_timeout;
    let mut checks = tokio::time::interval_at(start, election_timeout);
    checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut without_leader = 0;
    loop {
        checks.tick().await;
        if node.leader_id() == 0 {
            without_leader += 1;
            if without_leader >= CHECKS_WITHOUT_LEADER {
                return;
            }
        } else {
            without_leader = 0;
        }
    }
}

/// [`leader_lost`] when `required`, else never.
pub(crate) async fn leader_lost_if<N: ApiNode>(
    node: N,
    election_timeout: Duration,
    required: bool,
) {
    if required {
        leader_lost(&node, election_timeout).await;
    } else {
        std::future::pending::<()>().await;
    }
}

impl ApiOptions {
    /// The size from which a watch response is split for watchers created with `fragment`:
    /// etcd's watch server uses `MaxRequestBytes + grpcOverheadBytes` (512 KiB), the same
    /// figure as the gRPC receive limit, so a fragment is never larger than what a member
    /// itself would accept.
    pub fn watch_fragment_bytes(&self) -> usize {
        self.grpc_max_receive_bytes
    }

    pub fn from_config(config: &ServerConfig) -> ApiOptions {
        ApiOptions {
            max_request_bytes: usize::try_from(config.max_request_bytes).unwrap_or(usize::MAX),
            max_txn_ops: config.max_txn_ops,
            grpc_max_receive_bytes: config.grpc_max_receive_bytes(),
            watch_progress_notify_interval: config.watch_progress_notify_interval,
            watch_queue_events_max: 4096,
            // etcd's /health waits up to its request timeout; 5 s, or two election timeouts when
            // that is longer, lets an election under way finish before the probe gives up.
            health_timeout: Duration::from_secs(5).max(config.election_timeout * 2),
            election_timeout: config.election_timeout,
            grpc_keepalive: Some((
                config.grpc_keepalive_interval,
                config.grpc_keepalive_timeout,
            )),
            max_concurrent_streams: config.max_concurrent_streams,
        }
    }
}

/// Builds the client router for `node`: every gRPC service plus `/health`, `/version` and
/// `/metrics`.
pub fn router(node: NodeHandle, config: &ServerConfig) -> axum::Router {
    router_for(node, ApiOptions::from_config(config))
}

/// What a client listener serves for `node`: the router, with the unary KV calls answered on
/// the connection tasks ([`crate::serve`]).
pub fn client_service(node: NodeHandle, config: &ServerConfig) -> ClientService<NodeHandle> {
    client_service_for(node, ApiOptions::from_config(config))
}

/// [`client_service`] for any [`ApiNode`].
pub fn client_service_for<N: ApiNode>(node: N, options: ApiOptions) -> ClientService<N> {
    let api = Api::new(node, options);
    ClientService::new(router_with(api.clone()), api)
}

/// [`router`] for any [`ApiNode`].
pub fn router_for<N: ApiNode>(node: N, options: ApiOptions) -> axum::Router {
    router_with(Api::new(node, options))
}

fn router_with<N: ApiNode>(api: Api<N>) -> axum::Router {
    let receive_max = api.options.grpc_max_receive_bytes;
    let (_health_reporter, health_service) = tonic_health::server::health_reporter();
    let grpc = tonic::service::Routes::builder()
        .routes()
        .add_service(
            KvServer::new(api.clone())
                .max_decoding_message_size(receive_max)
                .max_encoding_message_size(usize::MAX),
        )
        .add_service(
            WatchServer::new(api.clone())
                .max_decoding_message_size(receive_max)
                .max_encoding_message_size(usize::MAX),
        )
        .add_service(
            LeaseServer::new(api.clone())
                .max_decoding_message_size(receive_max)
                .max_encoding_message_size(usize::MAX),
        )
        .add_service(
            ClusterServer::new(api.clone())
                .max_decoding_message_size(receive_max)
                .max_encoding_message_size(usize::MAX),
        )
        .add_service(
            MaintenanceServer::new(api.clone())
                .max_decoding_message_size(receive_max)
                .max_encoding_message_size(usize::MAX),
        )
        .add_service(
            AuthServer::new(api.clone())
                .max_decoding_message_size(receive_max)
                .max_encoding_message_size(usize::MAX),
        )
        .add_service(
            LockServer::new(api.clone())
                .max_decoding_message_size(receive_max)
                .max_encoding_message_size(usize::MAX),
        )
        .add_service(
            ElectionServer::new(api.clone())
                .max_decoding_message_size(receive_max)
                .max_encoding_message_size(usize::MAX),
        )
        .add_service(health_service)
        .into_axum_router()
        .layer(axum::middleware::map_response(
            oversized_is_resource_exhausted,
        ));
    grpc.merge(crate::http::routes(api.clone()))
        .merge(crate::gateway::routes(api))
        .fallback(unknown_path)
}

/// An unknown path: gRPC's UNIMPLEMENTED for a gRPC call (as tonic answers it), HTTP's 404 for
/// anything else (as etcd's HTTP handlers answer it).
async fn unknown_path(request: axum::extract::Request) -> axum::response::Response {
    use axum::response::IntoResponse;
    let grpc = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        Status::unimplemented("").into_http::<axum::body::Body>()
    } else {
        (http::StatusCode::NOT_FOUND, "Not Found").into_response()
    }
}

/// tonic refuses a message above the decode limit with OutOfRange; grpc-go, and so etcd,
/// answers ResourceExhausted ("received message larger than max"), which clients treat as a
/// non-retryable size error. The refusal is a trailers-only response, so its code is in the
/// headers and can be rewritten here.
async fn oversized_is_resource_exhausted(
    mut response: axum::response::Response,
) -> axum::response::Response {
    const OVERSIZED_PREFIX: &[u8] = b"Error,%20decoded%20message%20length%20too%20large";
    let headers = response.headers_mut();
    let out_of_range = headers
        .get("grpc-status")
        .is_some_and(|code| code.as_bytes() == b"11");
    let oversized = headers
        .get("grpc-message")
        .is_some_and(|message| message.as_bytes().starts_with(OVERSIZED_PREFIX));
    if out_of_range && oversized {
        headers.insert("grpc-status", axum::http::HeaderValue::from_static("8"));
    }
    response
}

/// State shared by every service of one router; cheap to clone (stream tasks own a clone).
pub struct Api<N> {
    pub(crate) node: N,
    pub(crate) options: Arc<ApiOptions>,
}

impl<N: ApiNode> Clone for Api<N> {
    fn clone(&self) -> Api<N> {
        Api {
            node: self.node.clone(),
            options: Arc::clone(&self.options),
        }
    }
}

impl<N: ApiNode> Api<N> {
    pub fn new(node: N, options: ApiOptions) -> Api<N> {
        Api {
            node,
            options: Arc::new(options),
        }
    }

    pub fn node(&self) -> &N {
        &self.node
    }

    /// A full header at `revision`.
    pub(crate) fn header_at(&self, revision: i64) -> Option<ResponseHeader> {
        Some(self.node.header(revision))
    }

    /// A full header at the revision the store (or the state machine) put in `partial`, or at
    /// the current revision when there is none.
    pub(crate) fn complete(&self, partial: Option<ResponseHeader>) -> Option<ResponseHeader> {
        let revision = match partial {
            Some(header) => header.revision,
            None => self.current_revision(),
        };
        self.header_at(revision)
    }

    /// A full header at the store's current revision.
    pub(crate) fn current_header(&self) -> Option<ResponseHeader> {
        self.header_at(self.current_revision())
    }

    pub(crate) fn current_revision(&self) -> i64 {
        self.node.with_store(Store::current_revision)
    }

    /// Replicates a write after etcd's checks that need no state: the request's own validity,
    /// then its size against `--max-request-bytes` (etcd checks the encoded Raft request).
    pub(crate) async fn propose_checked(&self, command: Command) -> Result<ApplyOutcome, Status> {
        ballot_mvcc::check_command(&command, self.options.max_txn_ops).map_err(error::mvcc)?;
        if command.encoded_len() > self.options.max_request_bytes {
            return Err(error::request_too_large());
        }
        Ok(self.node.propose(command).await?)
    }
}

/// Counts a finished request in the gRPC metrics and passes its result through.
pub(crate) fn record<T>(method: GrpcMethod, result: Result<T, Status>) -> Result<T, Status> {
    let code = match &result {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    };
    metrics().grpc.handled(method, code);
    result
}
