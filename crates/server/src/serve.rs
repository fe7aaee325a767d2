//! The client listener: gRPC over HTTP/2 and the HTTP endpoints over HTTP/1 on one port.
//!
//! Each accepted connection is classified by its first bytes. HTTP/1 (`/health`, `/version`,
//! `/metrics` from curl or Prometheus) goes to hyper's HTTP/1 server with the axum router.
//! HTTP/2 is served here directly on the `h2` crate, because the generic stack (hyper's HTTP/2
//! server spawning a task per stream, tonic's server layers, axum routing) was about 60% of the
//! leader's CPU time under load:
//!
//! - The unary KV calls (Range, Put, DeleteRange, Txn, Compact), which are nearly all of the
//!   load, run inside the connection's own task: the request is read, decoded and handed to
//!   the [`Kv`] service, and the answer written, with no task spawned and no cross-thread
//!   wake-up per request. Many requests of one connection are in flight at once (a
//!   `FuturesUnordered`); one wake-up of the connection task answers every request whose
//!   proposal was applied in the same batch.
//! - Every other call (Watch and LeaseKeepAlive streams, Maintenance, Cluster, Lock, Election,
//!   health) goes to the axum router in a task of its own, with the request and response
//!   bodies streamed, so the services behave exactly as under tonic's server.
//!
//! What tonic's server did for the fast path is done here the same way: a `grpc-timeout`
//! header bounds the call (answered CANCELLED "Timeout expired"), a message above the decode
//! limit is refused with RESOURCE_EXHAUSTED and tonic's words, errors are trailers-only
//! responses whose status [`Status::add_header`] writes, and requests with a content type or
//! encoding the fast path does not handle go to the router, which answers as before. Each
//! connection's reader repairs the malformed `:authority` some etcd clients send
//! ([`AuthorityRepair`]); Nagle's algorithm is off, since gRPC answers are small and
//! latency-bound.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::HttpBody;
use ballot_proto::etcdserverpb::kv_server::Kv;
use ballot_proto::etcdserverpb::{
    CompactionRequest, DeleteRangeRequest, PutRequest, RangeRequest, TxnRequest,
};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use http::{HeaderMap, HeaderValue, Method, Request, Response};
use http_body::Frame;
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tonic::Status;
use tonic::codegen::Service;

use crate::api::authority::{AuthorityRepair, PREFACE};
use crate::api::{Api, ApiNode};

/// Per-stream receive window: a request up to the largest accepted size needs few updates.
const STREAM_WINDOW_BYTES: u32 = 1 << 20;
/// Connection receive window, shared by the streams of a connection.
const CONNECTION_WINDOW_BYTES: u32 = 16 << 20;
/// The gRPC message prefix: a compression flag and a big-endian u32 length.
const MESSAGE_PREFIX_BYTES: usize = 5;
/// How long a TLS client may take to complete its handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait before accepting again after `accept` failed (out of descriptors).
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// What one client listener serves: the router for every request, and the API whose unary KV
/// calls are answered on the connection task (none for HTTP-only listeners).
pub struct ClientService<N> {
    router: axum::Router,
    kv: Option<Api<N>>,
}

impl<N: ApiNode> Clone for ClientService<N> {
    fn clone(&self) -> ClientService<N> {
        ClientService {
            router: self.router.clone(),
            kv: self.kv.clone(),
        }
    }
}

impl<N: ApiNode> ClientService<N> {
    /// Serves `router`, with the unary KV calls of `api` on the fast path.
    pub fn new(router: axum::Router, api: Api<N>) -> ClientService<N> {
        ClientService {
            router,
            kv: Some(api),
        }
    }

    /// The same, with the HTTP requests (not the gRPC calls) checked by `access` first.
    pub fn with_access(self, access: crate::access::AccessControl) -> ClientService<N> {
        ClientService {
            router: access.wrap(self.router),
            kv: self.kv,
        }
    }

    /// Serves `router` only (the `--listen-metrics-urls` listeners).
    pub fn router_only(router: axum::Router) -> ClientService<N> {
        ClientService { router, kv: None }
    }
}

/// Serves `service` on `listener` until `shutdown` completes. Connections already accepted
/// are asked to finish (HTTP/2 GOAWAY) and end on their own.
pub async fn serve<N: ApiNode>(
    listener: TcpListener,
    service: ClientService<N>,
    shutdown: impl Future<Output = ()> + Send,
    tls: Option<TlsAcceptor>,
) -> io::Result<()> {
    let (stopping, stop_watch) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((socket, _peer)) => {
                let service = service.clone();
                let stop = stop_watch.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let served = match tls {
                        None => serve_connection(socket, service, stop).await,
                        Some(tls) => serve_tls_connection(socket, &tls, service, stop).await,
                    };
                    if let Err(error) = served {
                        tracing::debug!(%error, "client connection ended with an error");
                    }
                });
            }
            // A failed accept (e.g. too many open files) concerns that one connection; keep
            // listening, as hyper and tonic do, after a short pause.
            Err(error) => {
                tracing::warn!(%error, "accepting a client connection failed");
                tokio::time::sleep(ACCEPT_RETRY).await;
            }
        }
    }
    stopping.send_replace(true);
    Ok(())
}

/// A TLS client: the handshake (bounded by [`TLS_HANDSHAKE_TIMEOUT`], so a client that connects
/// and stalls holds no task for long), then the same as in plain text.
async fn serve_tls_connection<N: ApiNode>(
    socket: TcpStream,
    tls: &TlsAcceptor,
    service: ClientService<N>,
    stop: watch::Receiver<bool>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    socket.set_nodelay(true)?;
    let stream = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.accept(socket))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
    serve_stream(stream, service, stop).await
}

async fn serve_connection<N: ApiNode>(
    socket: TcpStream,
    service: ClientService<N>,
    stop: watch::Receiver<bool>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    socket.set_nodelay(true)?;
    serve_stream(socket, service, stop).await
}

/// Classifies a connection by its first bytes (HTTP/2 preface or not) and serves it.
async fn serve_stream<N, S>(
    mut socket: S,
    service: ClientService<N>,
    stop: watch::Receiver<bool>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    N: ApiNode,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut prefix = BytesMut::with_capacity(PREFACE.len());
    while prefix.len() < PREFACE.len() && PREFACE.starts_with(&prefix) {
        if socket.read_buf(&mut prefix).await? == 0 {
            return Ok(());
        }
    }
    let is_http2 = prefix.starts_with(PREFACE);
    let io = AuthorityRepair::after_read(socket, prefix)?;
    if is_http2 {
        serve_http2(io, service, stop).await
    } else {
        serve_http1(io, service.router).await
    }
}

async fn serve_http1<S>(
    io: S,
    router: axum::Router,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
        let mut router = router.clone();
        async move { router.call(request).await }
    });
    hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(io), service)
        .await?;
    Ok(())
}

type Connection<S> = h2::server::Connection<S, Bytes>;
type Inflight = FuturesUnordered<Pin<Box<dyn Future<Output = ()> + Send>>>;

async fn serve_http2<N, S>(
    io: S,
    service: ClientService<N>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    N: ApiNode,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // etcd (grpc-go) puts no limit on concurrent streams per connection unless
    // --max-concurrent-streams sets one; a low one stalls a client that multiplexes many
    // requests on one connection.
    let max_concurrent_streams = service
        .kv
        .as_ref()
        .map_or(u32::MAX, |api| api.options.max_concurrent_streams);
    let mut connection: Connection<S> = h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .max_concurrent_streams(max_concurrent_streams)
        .handshake(io)
        .await?;
    let keepalive = service
        .kv
        .as_ref()
        .and_then(|api| api.options.grpc_keepalive);
    let mut client_gone = std::pin::pin!(keepalive_pings(connection.ping_pong(), keepalive));
    let mut inflight: Inflight = FuturesUnordered::new();
    let mut accepting = true;
    let mut stopping = false;
    // Completes when the listener asks its connections to stop (or is gone).
    let mut stop_requested = std::pin::pin!(async move {
        let _ = stop.wait_for(|stop| *stop).await;
    });
    let result = std::future::poll_fn(|cx| {
        loop {
            if !stopping && stop_requested.as_mut().poll(cx).is_ready() {
                stopping = true;
                connection.graceful_shutdown();
            }
            // A client that answers no ping is gone (a crashed host, a cut network): drop the
            // connection, and with it its watches and keep-alive streams.
            if client_gone.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(()));
            }
            // Answers that are ready first, so the connection writes them below.
            while let Poll::Ready(Some(())) = inflight.poll_next_unpin(cx) {}
            if !accepting {
                // The connection is closing: keep it driven until the answers are written.
                return match connection.poll_closed(cx) {
                    Poll::Ready(result) if inflight.is_empty() => Poll::Ready(result),
                    Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
                    _ => Poll::Pending,
                };
            }
            match connection.poll_accept(cx) {
                Poll::Ready(Some(Ok((request, respond)))) => {
                    inflight.push(dispatch(&service, request, respond));
                }
                Poll::Ready(Some(Err(error))) => return Poll::Ready(Err(error)),
                Poll::Ready(None) => accepting = false,
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await;
    result.map_err(Into::into)
}

/// etcd's `--grpc-keepalive-interval` and `--grpc-keepalive-timeout`: pings the client every
/// `interval` and completes when one is not answered within `timeout`. Never completes without
/// keepalive settings, or once the connection itself ends (its own poll then reports that).
async fn keepalive_pings(ping_pong: Option<h2::PingPong>, keepalive: Option<(Duration, Duration)>) {
    let (Some(mut ping_pong), Some((interval, timeout))) = (ping_pong, keepalive) else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(interval).await;
        match tokio::time::timeout(timeout, ping_pong.ping(h2::Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            Ok(Err(_)) => return std::future::pending().await,
            Err(_) => {
                tracing::debug!(?timeout, "a client answered no keepalive ping; closing");
                return;
            }
        }
    }
}

/// The future answering one stream: inline for unary KV calls, a task of its own otherwise.
fn dispatch<N: ApiNode>(
    service: &ClientService<N>,
    request: Request<h2::RecvStream>,
    respond: h2::server::SendResponse<Bytes>,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    // etcd's interceptors: a call with `hasleader: true` fails at once on a member without a
    // leader, whatever it asks, so the client goes to another member.
    if let Some(api) = &service.kv
        && crate::api::requires_leader(request.headers())
        && api.node().leader_id() == 0
    {
        send_unary(respond, Err(crate::node::NodeError::NoLeader.into()));
        return Box::pin(std::future::ready(()));
    }
    if let Some(api) = &service.kv
        && let Some(method) = KvMethod::of(&request)
    {
        let call = unary_kv(api.clone(), method, request, respond);
        return Box::pin(crate::metrics::metrics().grpc.timed(call));
    }
    let router = service.router.clone();
    tokio::spawn(
        crate::metrics::metrics()
            .grpc
            .timed(route(router, request, respond)),
    );
    Box::pin(std::future::ready(()))
}

/// The unary methods of the KV service served on the connection task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KvMethod {
    Range,
    Put,
    DeleteRange,
    Txn,
    Compact,
}

impl KvMethod {
    /// The method `request` calls, if the fast path serves it: a POST of uncompressed gRPC
    /// to one of the unary KV paths.
    fn of(request: &Request<h2::RecvStream>) -> Option<KvMethod> {
        if request.method() != Method::POST {
            return None;
        }
        let headers = request.headers();
        let grpc_content = headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"));
        let identity = headers
            .get("grpc-encoding")
            .is_none_or(|value| value.as_bytes() == b"identity");
        if !grpc_content || !identity {
            return None;
        }
        match request.uri().path() {
            "/etcdserverpb.KV/Range" => Some(KvMethod::Range),
            "/etcdserverpb.KV/Put" => Some(KvMethod::Put),
            "/etcdserverpb.KV/DeleteRange" => Some(KvMethod::DeleteRange),
            "/etcdserverpb.KV/Txn" => Some(KvMethod::Txn),
            "/etcdserverpb.KV/Compact" => Some(KvMethod::Compact),
            _ => None,
        }
    }
}

async fn unary_kv<N: ApiNode>(
    api: Api<N>,
    method: KvMethod,
    request: Request<h2::RecvStream>,
    respond: h2::server::SendResponse<Bytes>,
) {
    let (parts, body) = request.into_parts();
    let limit = api.options.grpc_max_receive_bytes;
    let call = async {
        let message = read_message(body, limit).await?;
        call_kv(&api, method, message).await
    };
    let answer = match grpc_timeout(&parts.headers) {
        Some(timeout) => tokio::time::timeout(timeout, call)
            .await
            .unwrap_or_else(|_| Err(Status::cancelled("Timeout expired"))),
        None => call.await,
    };
    send_unary(respond, answer);
}

/// Decodes the request, calls the [`Kv`] service (which records the call in the metrics) and
/// frames the answer.
async fn call_kv<N: ApiNode>(
    api: &Api<N>,
    method: KvMethod,
    message: Bytes,
) -> Result<Bytes, Status> {
    match method {
        KvMethod::Range => {
            let request = decode::<RangeRequest>(message)?;
            Ok(frame(&Kv::range(api, tonic::Request::new(request)).await?))
        }
        KvMethod::Put => {
            let request = decode::<PutRequest>(message)?;
            Ok(frame(&Kv::put(api, tonic::Request::new(request)).await?))
        }
        KvMethod::DeleteRange => {
            let request = decode::<DeleteRangeRequest>(message)?;
            Ok(frame(
                &Kv::delete_range(api, tonic::Request::new(request)).await?,
            ))
        }
        KvMethod::Txn => {
            let request = decode::<TxnRequest>(message)?;
            Ok(frame(&Kv::txn(api, tonic::Request::new(request)).await?))
        }
        KvMethod::Compact => {
            let request = decode::<CompactionRequest>(message)?;
            Ok(frame(
                &Kv::compact(api, tonic::Request::new(request)).await?,
            ))
        }
    }
}

fn decode<M: Message + Default>(message: Bytes) -> Result<M, Status> {
    // tonic's words for a message that does not decode.
    M::decode(message).map_err(|error| Status::internal(error.to_string()))
}

/// The length-prefixed gRPC message of `response`.
fn frame<M: Message>(response: &tonic::Response<M>) -> Bytes {
    let message = response.get_ref();
    let length = message.encoded_len();
    let mut framed = BytesMut::with_capacity(MESSAGE_PREFIX_BYTES + length);
    framed.put_u8(0);
    framed.put_u32(u32::try_from(length).unwrap_or(u32::MAX));
    message.encode(&mut framed).unwrap_or_else(|error| {
        panic!("a buffer of encoded_len bytes must hold the message: {error}")
    });
    framed.freeze()
}

/// Reads one uncompressed gRPC message from `body`, refusing one above `limit` bytes as soon
/// as its prefix says so (before reading the rest), with tonic's words.
async fn read_message(mut body: h2::RecvStream, limit: usize) -> Result<Bytes, Status> {
    let mut first: Option<Bytes> = None;
    let mut rest = BytesMut::new();
    // The whole request's size once its prefix is read: a body that goes on past it is refused
    // at once instead of being buffered (its length prefix alone must not bound what is read).
    let mut expected: Option<usize> = None;
    while let Some(chunk) = body.data().await {
        let chunk =
            chunk.map_err(|error| Status::internal(format!("h2 protocol error: {error}")))?;
        let _ = body.flow_control().release_capacity(chunk.len());
        match &first {
            None if rest.is_empty() => first = Some(chunk),
            _ => {
                if let Some(first) = first.take() {
                    rest.extend_from_slice(&first);
                }
                rest.extend_from_slice(&chunk);
            }
        }
        let received = first.as_deref().unwrap_or(&rest);
        if expected.is_none() && received.len() >= MESSAGE_PREFIX_BYTES {
            expected = Some(MESSAGE_PREFIX_BYTES + check_prefix(received, limit)?);
        }
        if let Some(expected) = expected
            && received.len() > expected
        {
            return Err(Status::internal(format!(
                "the request carries more than the one message of {} bytes its prefix announces",
                expected - MESSAGE_PREFIX_BYTES
            )));
        }
    }
    let mut message = first.unwrap_or_else(|| rest.freeze());
    if message.len() < MESSAGE_PREFIX_BYTES {
        return Err(Status::internal("Missing request message."));
    }
    check_prefix(&message, limit)?;
    message.advance(1);
    let length = message.get_u32() as usize;
    if message.len() != length {
        return Err(Status::internal(format!(
            "the request carries {} bytes after a message of {length}",
            message.len()
        )));
    }
    Ok(message)
}

/// Checks a message prefix; returns the length of the message it announces.
fn check_prefix(prefix: &[u8], limit: usize) -> Result<usize, Status> {
    if prefix[0] != 0 {
        return Err(Status::unimplemented(
            "Message compressed, compression support not enabled.",
        ));
    }
    let length = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    if length > limit {
        // grpc-go, and so etcd, answers RESOURCE_EXHAUSTED; the words are tonic's, as before.
        return Err(Status::resource_exhausted(format!(
            "Error, decoded message length too large: found {length} bytes, the limit is: {limit} bytes"
        )));
    }
    Ok(length)
}

/// Writes a unary answer: headers, the message and `grpc-status: 0` trailers, or a
/// trailers-only error response.
fn send_unary(mut respond: h2::server::SendResponse<Bytes>, answer: Result<Bytes, Status>) {
    let mut head = Response::new(());
    head.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    let message = match answer {
        Ok(message) => message,
        Err(status) => {
            if let Err(unwritable) = status.add_header(head.headers_mut()) {
                // Only a message that is not a valid header value ends here; send the code.
                head.headers_mut()
                    .insert("grpc-status", HeaderValue::from(unwritable.code() as i32));
            }
            let _ = respond.send_response(head, true);
            return;
        }
    };
    // A client that reset the stream no longer waits; the errors below only say so.
    let Ok(mut stream) = respond.send_response(head, false) else {
        return;
    };
    if stream.send_data(message, false).is_err() {
        return;
    }
    let mut trailers = HeaderMap::with_capacity(1);
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let _ = stream.send_trailers(trailers);
}

/// The `grpc-timeout` header, if present and well formed (gRPC over HTTP/2: at most eight
/// digits and a unit).
fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get("grpc-timeout")?.to_str().ok()?;
    if text.len() < 2 || text.len() > 9 {
        return None;
    }
    let (digits, unit) = text.split_at(text.len() - 1);
    let value: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(value * 3600),
        "M" => Duration::from_secs(value * 60),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    })
}

/// Serves one stream through the router, streaming both bodies (Watch and LeaseKeepAlive are
/// bidirectional).
async fn route(
    mut router: axum::Router,
    request: Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
) {
    let (parts, body) = request.into_parts();
    let timeout = grpc_timeout(&parts.headers);
    let request = Request::from_parts(parts, RequestBody::new(body));
    let call = router.call(request);
    let response: Result<Response<axum::body::Body>, Infallible> = match timeout {
        Some(timeout) => match tokio::time::timeout(timeout, call).await {
            Ok(response) => response,
            Err(_) => {
                send_unary(respond, Err(Status::cancelled("Timeout expired")));
                return;
            }
        },
        None => call.await,
    };
    let Ok(response) = response;
    let (parts, body) = response.into_parts();
    let end_of_stream = body.is_end_stream();
    let Ok(stream) = respond.send_response(Response::from_parts(parts, ()), end_of_stream) else {
        return;
    };
    if !end_of_stream && let Err(error) = pipe_body(body, stream).await {
        tracing::debug!(%error, "streaming a response ended early");
    }
}

/// Copies a response body to the stream, respecting the client's flow control, until the body
/// ends or the client resets the stream (a cancelled watch).
async fn pipe_body(
    body: axum::body::Body,
    mut stream: h2::SendStream<Bytes>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut body = std::pin::pin!(body);
    loop {
        let frame = std::future::poll_fn(|cx| {
            if let Poll::Ready(reset) = stream.poll_reset(cx) {
                return Poll::Ready(Err(match reset {
                    Ok(reason) => format!("the client reset the stream: {reason}").into(),
                    Err(error) => Box::new(error) as Box<dyn std::error::Error + Send + Sync>,
                }));
            }
            body.as_mut()
                .poll_frame(cx)
                .map(|frame| frame.transpose().map_err(Into::into))
        })
        .await?;
        let Some(frame) = frame else {
            stream.send_data(Bytes::new(), true)?;
            return Ok(());
        };
        match frame.into_data() {
            Ok(data) => send_with_capacity(&mut stream, data).await?,
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    stream.send_trailers(trailers)?;
                    return Ok(());
                }
            }
        }
    }
}

/// Sends `data` in pieces the client's window allows, so a slow reader holds back the body
/// instead of growing h2's send buffer without bound.
async fn send_with_capacity(
    stream: &mut h2::SendStream<Bytes>,
    mut data: Bytes,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    while !data.is_empty() {
        stream.reserve_capacity(data.len());
        let granted = std::future::poll_fn(|cx| stream.poll_capacity(cx))
            .await
            .ok_or("the stream closed while sending")??;
        let piece = data.split_to(granted.min(data.len()));
        stream.send_data(piece, false)?;
    }
    Ok(())
}

/// An HTTP/2 request body as an [`HttpBody`] for the router: data frames (their flow-control
/// window released as they are handed on), then the trailers.
struct RequestBody {
    stream: h2::RecvStream,
    data_done: bool,
}

impl RequestBody {
    fn new(stream: h2::RecvStream) -> RequestBody {
        RequestBody {
            stream,
            data_done: false,
        }
    }
}

impl HttpBody for RequestBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = &mut *self;
        if !this.data_done {
            match ready!(this.stream.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = this.stream.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(error)) => return Poll::Ready(Some(Err(error))),
                None => this.data_done = true,
            }
        }
        match ready!(this.stream.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(error) => Poll::Ready(Some(Err(error))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.stream.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_as_the_spec_says() {
        let parse = |text: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert("grpc-timeout", HeaderValue::from_static(text));
            grpc_timeout(&headers)
        };
        assert_eq!(parse("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse("1500m"), Some(Duration::from_millis(1500)));
        assert_eq!(parse("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse("10u"), Some(Duration::from_micros(10)));
        assert_eq!(parse("S"), None);
        assert_eq!(parse("123456789S"), None, "more than eight digits");
        assert_eq!(parse("5x"), None);
        assert_eq!(grpc_timeout(&HeaderMap::new()), None);
    }

    #[test]
    fn message_prefixes_are_checked_for_compression_and_size() {
        assert!(check_prefix(&[0, 0, 0, 0, 10], 10).is_ok());
        let too_large = check_prefix(&[0, 0, 0, 0, 11], 10).expect_err("over the limit");
        assert_eq!(too_large.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            too_large.message(),
            "Error, decoded message length too large: found 11 bytes, the limit is: 10 bytes"
        );
        let compressed = check_prefix(&[1, 0, 0, 0, 1], 10).expect_err("compressed");
        assert_eq!(compressed.code(), tonic::Code::Unimplemented);
    }

    /// Sends one gRPC request to the KV Range path with `body` and returns the `grpc-status`
    /// of the answer (from the headers of a trailers-only answer, or from the trailers).
    async fn range_status_for_body(body: Bytes) -> Option<String> {
        let server =
            crate::api::testing::TestServer::start(crate::api::testing::test_options()).await;
        let stream = tokio::net::TcpStream::connect(server.addr)
            .await
            .expect("connect to the test server");
        let (mut send, connection) = h2::client::handshake(stream)
            .await
            .expect("HTTP/2 handshake");
        tokio::spawn(connection);
        let request = Request::builder()
            .method(Method::POST)
            .uri(format!("http://{}/etcdserverpb.KV/Range", server.addr))
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .body(())
            .expect("a request");
        let (response, mut stream) = send.send_request(request, false).expect("send headers");
        // The server may stop reading once it has refused the request; a failed send is fine.
        let _ = stream.send_data(body, true);
        let response = response.await.expect("an answer");
        let status = |headers: &HeaderMap| {
            headers
                .get("grpc-status")
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)
        };
        if let Some(code) = status(response.headers()) {
            return Some(code);
        }
        let mut body = response.into_body();
        while let Some(chunk) = body.data().await {
            let _ = chunk.expect("answer data");
        }
        body.trailers()
            .await
            .expect("answer trailers")
            .and_then(|trailers| status(&trailers))
    }

    #[tokio::test]
    async fn a_request_with_bytes_past_its_announced_message_is_refused() {
        let message = RangeRequest {
            key: Bytes::from_static(b"k"),
            ..RangeRequest::default()
        }
        .encode_to_vec();
        let mut framed = BytesMut::new();
        framed.put_u8(0);
        framed.put_u32(message.len() as u32);
        framed.extend_from_slice(&message);
        assert_eq!(
            range_status_for_body(framed.clone().freeze())
                .await
                .as_deref(),
            Some("0"),
            "a well-formed request is answered"
        );
        // 64 KiB after a message announced as a few bytes: refused, not buffered to the end.
        framed.extend_from_slice(&[7u8; 64 * 1024]);
        assert_eq!(
            range_status_for_body(framed.freeze()).await.as_deref(),
            Some("13"),
            "bytes past the announced message are an INTERNAL error"
        );
    }
}
