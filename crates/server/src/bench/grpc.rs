//! A lean unary gRPC client over one HTTP/2 connection, for the load generator.
//!
//! The generator runs on the same cores as the cluster it measures, so every microsecond it
//! spends per request is taken from the servers. tonic's `Channel` costs about 30 µs of CPU per
//! unary call here: a request crosses a `tower::Buffer` worker task and hyper's dispatch task
//! before it reaches the HTTP/2 connection task. This client talks to the `h2` crate directly:
//! each simulated client holds its own `SendRequest` handle, opens a stream, writes the framed
//! message and waits for the answer, so a call costs one stream on the connection task and
//! nothing else. It speaks plain gRPC (RFC 9113 HTTP/2, the gRPC length-prefixed message and
//! `grpc-status` trailers) and so measures Ballot and etcd alike.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, Request, Uri};
use prost::Message;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;
use tonic::{Code, Status};

/// Per-stream receive window: a whole response fits without a WINDOW_UPDATE round trip.
const STREAM_WINDOW_BYTES: u32 = 1 << 20;
/// Connection receive window, shared by every stream of the connection.
const CONNECTION_WINDOW_BYTES: u32 = 16 << 20;
/// Length of the gRPC message prefix: a compression flag and a big-endian u32 length.
const MESSAGE_PREFIX_BYTES: usize = 5;

/// The unary methods of etcd's KV service the generator calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvMethod {
    Put,
    Range,
    Txn,
}

impl KvMethod {
    fn path(self) -> &'static str {
        match self {
            KvMethod::Put => "/etcdserverpb.KV/Put",
            KvMethod::Range => "/etcdserverpb.KV/Range",
            KvMethod::Txn => "/etcdserverpb.KV/Txn",
        }
    }
}

/// The HTTP/2 handshake over `stream`, whose connection is then driven by a task of its own.
async fn handshake<S>(stream: S) -> Result<h2::client::SendRequest<Bytes>, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, connection) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .enable_push(false)
        .handshake::<_, Bytes>(stream)
        .await
        .map_err(|err| format!("HTTP/2 handshake: {err}"))?;
    tokio::spawn(async move {
        // The connection ends when the server closes it or every handle is dropped; the calls
        // in flight report the error themselves.
        let _ = connection.await;
    });
    Ok(send)
}

/// One HTTP/2 connection; clone it to give each client its own handle.
#[derive(Clone)]
pub struct GrpcConnection {
    send: h2::client::SendRequest<Bytes>,
    /// Request URIs of the KV methods, built once (a `Uri` clone only bumps reference counts).
    uris: [Uri; 3],
}

impl GrpcConnection {
    /// Connects to `url` (`http://host:port`, or `https://host:port` over `tls`) with Nagle's
    /// algorithm off and performs the HTTP/2 handshake; the connection is driven by a task of
    /// its own until every handle is dropped.
    pub async fn connect(url: &str, tls: Option<&TlsConnector>) -> Result<GrpcConnection, String> {
        let uri: Uri = url.parse().map_err(|err| format!("{err}"))?;
        let authority = uri
            .authority()
            .ok_or_else(|| format!("{url} has no host:port"))?
            .clone();
        let scheme = uri.scheme_str().unwrap_or("http").to_owned();
        let stream = TcpStream::connect(authority.as_str())
            .await
            .map_err(|err| err.to_string())?;
        stream.set_nodelay(true).map_err(|err| err.to_string())?;
        let send = if scheme == "https" {
            let connector = tls.ok_or_else(|| format!("{url} needs TLS settings"))?;
            let host = authority
                .host()
                .trim_start_matches('[')
                .trim_end_matches(']');
            let name = ServerName::try_from(host.to_owned()).map_err(|err| err.to_string())?;
            let stream = connector
                .connect(name, stream)
                .await
                .map_err(|err| format!("TLS handshake: {err}"))?;
            handshake(stream).await?
        } else {
            handshake(stream).await?
        };
        let uri_of = |method: KvMethod| {
            format!("{scheme}://{authority}{}", method.path())
                .parse::<Uri>()
                .map_err(|err| format!("{err}"))
        };
        Ok(GrpcConnection {
            send,
            uris: [
                uri_of(KvMethod::Put)?,
                uri_of(KvMethod::Range)?,
                uri_of(KvMethod::Txn)?,
            ],
        })
    }

    /// One unary call: sends `request` to `method` and decodes the answer.
    pub async fn unary<Req: Message, Resp: Message + Default>(
        &mut self,
        method: KvMethod,
        request: &Req,
    ) -> Result<Resp, Status> {
        let mut head = Request::new(());
        *head.method_mut() = Method::POST;
        *head.uri_mut() = self.uris[method as usize].clone();
        let headers = head.headers_mut();
        headers.insert("content-type", HeaderValue::from_static("application/grpc"));
        headers.insert("te", HeaderValue::from_static("trailers"));
        // Waits while the server's limit on concurrent streams is reached.
        futures::future::poll_fn(|cx| self.send.poll_ready(cx))
            .await
            .map_err(transport_error)?;
        let (response, mut body_out) = self
            .send
            .send_request(head, false)
            .map_err(transport_error)?;
        body_out
            .send_data(frame_message(request), true)
            .map_err(transport_error)?;
        let response = response.await.map_err(transport_error)?;
        let (parts, mut body) = response.into_parts();
        if parts.status != http::StatusCode::OK {
            return Err(Status::unknown(format!("HTTP status {}", parts.status)));
        }
        // A trailers-only answer (an error) carries its status in the headers.
        if let Some(status) = status_from(&parts.headers) {
            return Err(status);
        }
        let mut received = BytesMut::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(transport_error)?;
            let _ = body.flow_control().release_capacity(chunk.len());
            received.extend_from_slice(&chunk);
        }
        let trailers = body.trailers().await.map_err(transport_error)?;
        match trailers.as_ref().and_then(status_from) {
            Some(status) => return Err(status),
            None if trailers.is_none() => {
                return Err(Status::internal("the response ended without grpc-status"));
            }
            None => {}
        }
        decode_message(received.freeze())
    }
}

/// The gRPC length-prefixed message: flag 0 (uncompressed), length, the encoded message.
fn frame_message(message: &impl Message) -> Bytes {
    let length = message.encoded_len();
    let mut framed = BytesMut::with_capacity(MESSAGE_PREFIX_BYTES + length);
    framed.put_u8(0);
    framed.put_u32(u32::try_from(length).unwrap_or(u32::MAX));
    // Encoding into a buffer sized from encoded_len cannot run out of room.
    message
        .encode(&mut framed)
        .unwrap_or_else(|err| panic!("a buffer of encoded_len bytes must hold the message: {err}"));
    framed.freeze()
}

fn decode_message<Resp: Message + Default>(mut body: Bytes) -> Result<Resp, Status> {
    if body.len() < MESSAGE_PREFIX_BYTES {
        return Err(Status::internal(format!(
            "the response body has {} bytes, less than a message prefix",
            body.len()
        )));
    }
    let compressed = body.get_u8();
    let length = body.get_u32() as usize;
    if compressed != 0 {
        return Err(Status::internal("the response is compressed"));
    }
    if body.len() != length {
        return Err(Status::internal(format!(
            "the response message says {length} bytes but {} arrived",
            body.len()
        )));
    }
    Resp::decode(body).map_err(|err| Status::internal(format!("decoding the response: {err}")))
}

/// The gRPC status in `headers`, if there is one and it is not OK.
fn status_from(headers: &HeaderMap) -> Option<Status> {
    let code = headers.get("grpc-status")?;
    let code = code
        .to_str()
        .ok()
        .and_then(|text| text.parse::<i32>().ok())
        .map_or(Code::Unknown, Code::from_i32);
    if code == Code::Ok {
        return None;
    }
    let message = headers
        .get("grpc-message")
        .map(percent_decode)
        .unwrap_or_default();
    Some(Status::new(code, message))
}

/// grpc-message is percent-encoded (gRPC over HTTP/2 spec).
fn percent_decode(value: &HeaderValue) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let hex = |at: usize| {
            bytes
                .get(at)
                .and_then(|digit| char::from(*digit).to_digit(16))
        };
        match (bytes[index], hex(index + 1), hex(index + 2)) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                index += 3;
            }
            (byte, _, _) => {
                out.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn transport_error(err: h2::Error) -> Status {
    Status::unavailable(format!("transport: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ballot_proto::etcdserverpb::{PutRequest, PutResponse, ResponseHeader};

    #[test]
    fn grpc_message_is_percent_decoded() {
        let value = HeaderValue::from_static("etcdserver:%20no%20leader%zz%4");
        assert_eq!(percent_decode(&value), "etcdserver: no leader%zz%4");
    }

    #[test]
    fn framed_messages_decode_and_bad_frames_are_errors() {
        let response = PutResponse {
            header: Some(ResponseHeader {
                revision: 7,
                ..ResponseHeader::default()
            }),
            prev_kv: None,
        };
        let framed = frame_message(&response);
        assert_eq!(framed[0], 0);
        assert_eq!(
            u32::from_be_bytes([framed[1], framed[2], framed[3], framed[4]]) as usize,
            framed.len() - MESSAGE_PREFIX_BYTES
        );
        let decoded: PutResponse = decode_message(framed.clone()).expect("well framed");
        assert_eq!(decoded, response);
        let truncated = framed.slice(..framed.len() - 1);
        assert!(decode_message::<PutResponse>(truncated).is_err());
        assert!(decode_message::<PutRequest>(Bytes::from_static(b"\0\0")).is_err());
        let mut compressed = BytesMut::from(&framed[..]);
        compressed[0] = 1;
        assert!(decode_message::<PutResponse>(compressed.freeze()).is_err());
    }

    #[test]
    fn status_comes_from_grpc_status_and_message() {
        let mut headers = HeaderMap::new();
        assert!(status_from(&headers).is_none());
        headers.insert("grpc-status", HeaderValue::from_static("0"));
        assert!(status_from(&headers).is_none());
        headers.insert("grpc-status", HeaderValue::from_static("14"));
        headers.insert(
            "grpc-message",
            HeaderValue::from_static("etcdserver:%20no%20leader"),
        );
        let status = status_from(&headers).expect("an error status");
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status.message(), "etcdserver: no leader");
    }
}
