//! etcd's JSON gateway: the v3 API over HTTP/1.1 with JSON bodies, on the client port, for curl
//! and HTTP-only clients (`curl -X POST http://127.0.0.1:2379/v3/kv/put -d '{"key":"Zm9v",
//! "value":"YmFy"}'`).
//!
//! Every path is etcd's (`POST /v3/kv/range`, `/v3/lease/grant`, `/v3/maintenance/status`, ...,
//! from the `google.api.http` options of etcd's rpc.proto). A request body is the request message
//! in the protobuf JSON mapping, as etcd's grpc-gateway reads it: field names as written in the
//! .proto (`range_end`, `TTL`) or in lowerCamelCase, 64-bit integers as strings or numbers, bytes
//! as base64, enums by name or number, unknown fields ignored, an empty body for an empty
//! message. The call goes to the same service implementation as the gRPC call, and the answer
//! is written as etcd writes it: proto field names, 64-bit integers as strings, default values
//! left out. A failed call is answered with the HTTP status grpc-gateway maps its gRPC code to,
//! and the body `{"error":..., "message":..., "code":...}`.
//!
//! The streaming calls (`/v3/watch`, `/v3/lease/keepalive`, `/v3/maintenance/snapshot`,
//! `/v3/election/observe`) read one or more request messages from the body and answer with a
//! chunked body of newline-terminated `{"result": ...}` objects (`{"error": ...}` for a failure);
//! a watch goes on until the client disconnects, as with etcd.
//!
//! gRPC metadata travels as `Grpc-Metadata-<key>` headers, as with grpc-gateway: a request with
//! `Grpc-Metadata-Hasleader: true` is refused with "etcdserver: no leader" on a member without a
//! leader, and a watch or keep-alive stream opened with it ends once the member has lost its
//! leader, as the gRPC calls carrying `hasleader` do.

use std::future::Future;
use std::pin::Pin;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use ballot_proto::etcdserverpb::auth_server::Auth;
use ballot_proto::etcdserverpb::cluster_server::Cluster;
use ballot_proto::etcdserverpb::kv_server::Kv;
use ballot_proto::etcdserverpb::lease_server::Lease;
use ballot_proto::etcdserverpb::maintenance_server::Maintenance;
use ballot_proto::v3electionpb::election_server::Election;
use ballot_proto::v3lockpb::lock_server::Lock;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::{Code, Status};

use crate::api::{Api, ApiNode};

type Call<'a, T> = Pin<Box<dyn Future<Output = Result<tonic::Response<T>, Status>> + Send + 'a>>;

/// The gateway's routes, sharing `api` with the gRPC services.
pub fn routes<N: ApiNode>(api: Api<N>) -> Router {
    /// `POST path` answers with `Trait::method` of the service, its answer written by
    /// `respond` (one JSON object, or a stream of them).
    macro_rules! call {
        ($router:expr, $path:literal, $service:ident :: $method:ident, $respond:expr) => {
            $router.route(
                $path,
                post(|State(api): State<Api<N>>, headers: header::HeaderMap, body: Bytes| async move {
                    let require_leader = requires_leader(&headers);
                    answer(
                        &api,
                        &body,
                        |api, request| {
                            Box::pin(<Api<N> as $service>::$method(
                                api,
                                with_metadata(request, require_leader),
                            ))
                        },
                        $respond,
                    )
                    .await
                }),
            )
        };
    }
    macro_rules! unary {
        ($router:expr, $path:literal, $service:ident :: $method:ident) => {
            call!($router, $path, $service::$method, json_answer)
        };
    }
    let router = Router::new();
    let router = unary!(router, "/v3/kv/range", Kv::range);
    let router = unary!(router, "/v3/kv/put", Kv::put);
    let router = unary!(router, "/v3/kv/deleterange", Kv::delete_range);
    let router = unary!(router, "/v3/kv/txn", Kv::txn);
    let router = unary!(router, "/v3/kv/compaction", Kv::compact);
    let router = unary!(router, "/v3/lease/grant", Lease::lease_grant);
    let router = unary!(router, "/v3/lease/revoke", Lease::lease_revoke);
    let router = unary!(router, "/v3/kv/lease/revoke", Lease::lease_revoke);
    let router = unary!(router, "/v3/lease/timetolive", Lease::lease_time_to_live);
    let router = unary!(router, "/v3/kv/lease/timetolive", Lease::lease_time_to_live);
    let router = unary!(router, "/v3/lease/leases", Lease::lease_leases);
    let router = unary!(router, "/v3/kv/lease/leases", Lease::lease_leases);
    let router = unary!(router, "/v3/cluster/member/add", Cluster::member_add);
    let router = unary!(router, "/v3/cluster/member/remove", Cluster::member_remove);
    let router = unary!(router, "/v3/cluster/member/update", Cluster::member_update);
    let router = unary!(router, "/v3/cluster/member/list", Cluster::member_list);
    let router = unary!(
        router,
        "/v3/cluster/member/promote",
        Cluster::member_promote
    );
    let router = unary!(router, "/v3/maintenance/alarm", Maintenance::alarm);
    let router = unary!(router, "/v3/maintenance/status", Maintenance::status);
    let router = unary!(
        router,
        "/v3/maintenance/defragment",
        Maintenance::defragment
    );
    let router = unary!(router, "/v3/maintenance/hash", Maintenance::hash);
    let router = unary!(router, "/v3/maintenance/hashkv", Maintenance::hash_kv);
    let router = unary!(
        router,
        "/v3/maintenance/transfer-leadership",
        Maintenance::move_leader
    );
    let router = unary!(router, "/v3/maintenance/downgrade", Maintenance::downgrade);
    let router = unary!(router, "/v3/auth/enable", Auth::auth_enable);
    let router = unary!(router, "/v3/auth/disable", Auth::auth_disable);
    let router = unary!(router, "/v3/auth/status", Auth::auth_status);
    let router = unary!(router, "/v3/auth/authenticate", Auth::authenticate);
    let router = unary!(router, "/v3/auth/user/add", Auth::user_add);
    let router = unary!(router, "/v3/auth/user/get", Auth::user_get);
    let router = unary!(router, "/v3/auth/user/list", Auth::user_list);
    let router = unary!(router, "/v3/auth/user/delete", Auth::user_delete);
    let router = unary!(router, "/v3/auth/user/changepw", Auth::user_change_password);
    let router = unary!(router, "/v3/auth/user/grant", Auth::user_grant_role);
    let router = unary!(router, "/v3/auth/user/revoke", Auth::user_revoke_role);
    let router = unary!(router, "/v3/auth/role/add", Auth::role_add);
    let router = unary!(router, "/v3/auth/role/get", Auth::role_get);
    let router = unary!(router, "/v3/auth/role/list", Auth::role_list);
    let router = unary!(router, "/v3/auth/role/delete", Auth::role_delete);
    let router = unary!(router, "/v3/auth/role/grant", Auth::role_grant_permission);
    let router = unary!(router, "/v3/auth/role/revoke", Auth::role_revoke_permission);
    let router = unary!(router, "/v3/lock/lock", Lock::lock);
    let router = unary!(router, "/v3/lock/unlock", Lock::unlock);
    let router = unary!(router, "/v3/election/campaign", Election::campaign);
    let router = unary!(router, "/v3/election/proclaim", Election::proclaim);
    let router = unary!(router, "/v3/election/leader", Election::leader);
    let router = unary!(router, "/v3/election/resign", Election::resign);
    // A request as large as gRPC takes, in base64 (4/3 of the bytes) with room for the JSON
    // around it: the size limit that answers is the API's ("request is too large"), not the
    // body extractor's 2 MB default.
    let body_max = api.options.grpc_max_receive_bytes / 3 * 4 + 64 * 1024;
    let router = call!(
        router,
        "/v3/maintenance/snapshot",
        Maintenance::snapshot,
        stream_response
    );
    let router = call!(
        router,
        "/v3/election/observe",
        Election::observe,
        stream_response
    );
    router
        .route("/v3/watch", post(watch::<N>))
        .route("/v3/lease/keepalive", post(keep_alive::<N>))
        .layer(axum::middleware::from_fn_with_state(
            api.clone(),
            refuse_without_leader::<N>,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(body_max))
        .with_state(api)
}

/// The gateway's header for the gRPC metadata `hasleader` (grpc-gateway's
/// `Grpc-Metadata-` prefix).
const REQUIRE_LEADER_HEADER: &str = "grpc-metadata-hasleader";

/// Whether the request carries `Grpc-Metadata-Hasleader: true`.
fn requires_leader(headers: &header::HeaderMap) -> bool {
    headers
        .get(REQUIRE_LEADER_HEADER)
        .is_some_and(|value| value.as_bytes() == b"true")
}

/// A gateway call as the gRPC service takes it: its `Grpc-Metadata-Hasleader` becomes the
/// `hasleader` metadata, so the streams it opens (election Observe) watch for a lost leader as
/// they do for gRPC clients.
fn with_metadata<T>(message: T, require_leader: bool) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if require_leader {
        request.metadata_mut().insert(
            crate::api::REQUIRE_LEADER_KEY,
            tonic::metadata::MetadataValue::from_static("true"),
        );
    }
    request
}

/// etcd's interceptor for gateway calls: with `hasleader`, no call is served by a member that
/// knows no leader.
async fn refuse_without_leader<N: ApiNode>(
    State(api): State<Api<N>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if requires_leader(request.headers()) && api.node().leader_id() == 0 {
        return error_response(&crate::node::NodeError::NoLeader.into());
    }
    next.run(request).await
}

/// Reads one request message from a body (empty: the default message).
fn decode<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, Status> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|error| Status::invalid_argument(error.to_string()))
}

/// Reads every request message from a body: a streaming call's requests, one JSON value after
/// another.
fn decode_all<T: DeserializeOwned + Default>(body: &[u8]) -> Result<Vec<T>, Status> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(vec![T::default()]);
    }
    serde_json::Deserializer::from_slice(body)
        .into_iter::<T>()
        .collect::<Result<Vec<T>, _>>()
        .map_err(|error| Status::invalid_argument(error.to_string()))
}

/// Decodes the request from `body`, makes the call and writes its answer with `respond`.
async fn answer<N, Req, Resp, Fut>(
    api: &Api<N>,
    body: &[u8],
    call: impl for<'a> FnOnce(&'a Api<N>, Req) -> Call<'a, Resp>,
    respond: impl FnOnce(Resp) -> Fut,
) -> Response
where
    N: ApiNode,
    Req: DeserializeOwned + Default,
    Fut: Future<Output = Response>,
{
    let request = match decode(body) {
        Ok(request) => request,
        Err(status) => return error_response(&status),
    };
    match call(api, request).await {
        Ok(answer) => respond(answer.into_inner()).await,
        Err(status) => error_response(&status),
    }
}

/// A unary call's answer: one JSON object.
async fn json_answer<T: Serialize>(answer: T) -> Response {
    match serde_json::to_vec(&answer) {
        Ok(json) => json_response(StatusCode::OK, json),
        Err(error) => error_response(&Status::internal(error.to_string())),
    }
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The HTTP status grpc-gateway (v1, as in etcd 3.4 and 3.5) gives a gRPC code.
fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// grpc-gateway's error body for a unary call.
#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: &'a str,
    code: i32,
}

fn error_response(status: &Status) -> Response {
    let body = ErrorBody {
        error: status.message(),
        message: status.message(),
        code: status.code() as i32,
    };
    let json = serde_json::to_vec(&body).unwrap_or_default();
    json_response(http_status(status.code()), json)
}

/// grpc-gateway's error object inside a stream.
#[derive(Serialize)]
struct StreamError<'a> {
    grpc_code: i32,
    http_code: u16,
    message: &'a str,
    http_status: &'a str,
}

/// One line of a streaming answer.
fn stream_line<T: Serialize>(item: Result<T, Status>) -> Bytes {
    #[derive(Serialize)]
    #[serde(rename_all = "lowercase")]
    enum Line<'a, T> {
        Result(T),
        Error(StreamError<'a>),
    }
    let json = match &item {
        Ok(message) => serde_json::to_vec(&Line::Result(message)),
        Err(status) => {
            let http = http_status(status.code());
            serde_json::to_vec(&Line::<()>::Error(StreamError {
                grpc_code: status.code() as i32,
                http_code: http.as_u16(),
                message: status.message(),
                http_status: http.canonical_reason().unwrap_or(""),
            }))
        }
    };
    let mut line = json.unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

/// A streaming answer: a chunked body of newline-terminated JSON lines, one HTTP chunk each
/// (clients such as etcd3gw parse chunk by chunk). The headers go out with the first answer, as
/// grpc-gateway's do: a client whose watch request has returned knows its watcher exists.
async fn stream_response<T, S>(answers: S) -> Response
where
    T: Serialize + Send + 'static,
    S: Stream<Item = Result<T, Status>> + Send + Unpin + 'static,
{
    let mut answers = answers;
    let first = answers.next().await;
    let lines = futures::stream::iter(first)
        .chain(answers)
        .map(|item| Ok::<_, std::convert::Infallible>(stream_line(item)));
    (
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(lines),
    )
        .into_response()
}

/// `POST /v3/watch`: the watch requests in the body, then events until the client goes (the
/// requests are followed by a stream that never ends, so the session does not see a
/// half-close).
async fn watch<N: ApiNode>(
    State(api): State<Api<N>>,
    headers: header::HeaderMap,
    body: Bytes,
) -> Response {
    let requests = match decode_all(&body) {
        Ok(requests) => requests,
        Err(status) => return error_response(&status),
    };
    let inbound =
        futures::stream::iter(requests.into_iter().map(Ok)).chain(futures::stream::pending());
    stream_response(api.watch_session(Box::pin(inbound), requires_leader(&headers))).await
}

/// `POST /v3/lease/keepalive`: one answer per keep-alive request in the body.
async fn keep_alive<N: ApiNode>(
    State(api): State<Api<N>>,
    headers: header::HeaderMap,
    body: Bytes,
) -> Response {
    let requests = match decode_all(&body) {
        Ok(requests) => requests,
        Err(status) => return error_response(&status),
    };
    let inbound = futures::stream::iter(requests.into_iter().map(Ok));
    stream_response(api.keep_alive_session(inbound, requires_leader(&headers))).await
}
