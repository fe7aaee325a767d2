//! Repairs the HTTP/2 `:authority` that some etcd clients send, before hyper sees it.
//!
//! etcd's Go client 3.4 dials a member it addresses by URL (`Maintenance.Status` of
//! `etcdctl endpoint status --cluster`, and any program calling `Status(ctx, "http://...")`)
//! with the gRPC target `passthrough:///http://host:port`, so its requests carry
//! `:authority: http://host:port`; client 3.5.0 sent `#initially=[...]`. Go's HTTP/2 server
//! accepts any authority, but Rust's `h2` refuses a malformed one with RST_STREAM
//! PROTOCOL_ERROR, and the client reports an Internal error.
//!
//! [`AuthorityRepair`] wraps an accepted connection's reader. It lets HTTP/1 through untouched.
//! For HTTP/2 it decodes the connection's first header block (HPACK, RFC 7541) and:
//! - if its `:authority` is valid (every well-behaved client), it steps aside for the rest of the
//!   connection: later bytes pass through without parsing;
//! - if not, it rewrites every header block of the connection: each is decoded with the
//!   client's compression state and re-encoded as literals that do not touch the dynamic table
//!   (RFC 7541 §6.2.2), so hyper's decoder state stays valid, with the authority repaired
//!   (scheme and path dropped; anything still invalid becomes `invalid.authority`).
//!
//! A gRPC channel keeps one authority for all its requests, so the first block decides for the
//! connection. Nothing in Ballot reads the authority; repairing it only lets the request reach
//! the services.

use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::http::uri::Authority;
use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// The client connection preface that opens every HTTP/2 connection (RFC 9113 §3.4).
pub(crate) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_BYTES: usize = 9;
const FRAME_HEADERS: u8 = 0x1;
const FRAME_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// Every HTTP/2 peer accepts frames of this size (RFC 9113 §4.2).
const FRAME_PAYLOAD_MAX: usize = 16_384;
/// A header block larger than this is refused (hyper's own header list limit is 16 KiB).
const HEADER_BLOCK_MAX: usize = 1 << 20;
/// Bytes read from the socket at a time while frames are being parsed.
const READ_CHUNK: usize = 16 * 1024;
/// What replaces an authority that cannot be repaired.
const FALLBACK_AUTHORITY: &[u8] = b"invalid.authority";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Waiting for the first 24 bytes: the HTTP/2 preface, or anything else (HTTP/1).
    Preface,
    /// HTTP/2; the first header block has not been seen yet.
    Inspect,
    /// Header blocks are rewritten for the rest of the connection.
    Rewrite,
    /// Bytes pass through untouched.
    Passthrough,
}

/// A reader that repairs `:authority` pseudo-headers (see the module comment); writes pass
/// straight through.
pub struct AuthorityRepair<S> {
    inner: S,
    mode: Mode,
    /// Bytes read but not yet parsed.
    input: BytesMut,
    /// Bytes ready for the reader (hyper).
    output: BytesMut,
    /// Payload bytes of a non-header frame still to pass through.
    skip_payload: usize,
    decoder: hpack::Decoder<'static>,
    eof: bool,
}

impl<S> AuthorityRepair<S> {
    pub fn new(inner: S) -> AuthorityRepair<S> {
        AuthorityRepair {
            inner,
            mode: Mode::Preface,
            input: BytesMut::new(),
            output: BytesMut::new(),
            skip_payload: 0,
            decoder: hpack::Decoder::new(),
            eof: false,
        }
    }

    /// Like [`AuthorityRepair::new`], for a connection whose first bytes, `read`, were already
    /// taken from `inner` (to tell HTTP/2 from HTTP/1): they are handed on first.
    pub fn after_read(inner: S, read: BytesMut) -> io::Result<AuthorityRepair<S>> {
        let mut repair = AuthorityRepair::new(inner);
        repair.input = read;
        // Parsed now: a reader must get what is complete without waiting for more bytes.
        repair.process()?;
        Ok(repair)
    }

    /// Parses as much of `input` as is complete, moving what is ready to `output`.
    fn process(&mut self) -> io::Result<()> {
        loop {
            match self.mode {
                Mode::Passthrough => {
                    let all = self.input.split();
                    self.output.extend_from_slice(&all);
                    return Ok(());
                }
                Mode::Preface => {
                    let seen = self.input.len().min(PREFACE.len());
                    if self.input[..seen] != PREFACE[..seen] {
                        self.mode = Mode::Passthrough;
                        continue;
                    }
                    if seen < PREFACE.len() {
                        return Ok(());
                    }
                    let preface = self.input.split_to(PREFACE.len());
                    self.output.extend_from_slice(&preface);
                    self.mode = Mode::Inspect;
                }
                Mode::Inspect | Mode::Rewrite => {
                    if !self.next_frame()? {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Handles one frame (or the rest of one being passed through). Returns false when more
    /// input is needed.
    fn next_frame(&mut self) -> io::Result<bool> {
        if self.skip_payload > 0 {
            let take = self.skip_payload.min(self.input.len());
            if take == 0 {
                return Ok(false);
            }
            let part = self.input.split_to(take);
            self.output.extend_from_slice(&part);
            self.skip_payload -= take;
            return Ok(true);
        }
        let Some(header) = FrameHeader::parse(&self.input) else {
            return Ok(false);
        };
        if header.kind != FRAME_HEADERS {
            let head = self.input.split_to(FRAME_HEADER_BYTES);
            self.output.extend_from_slice(&head);
            self.skip_payload = header.length;
            return Ok(true);
        }
        let Some(block) = HeaderBlock::parse(&self.input)? else {
            return Ok(false);
        };
        let raw = self.input.split_to(block.raw_len);
        let fields = self.decode(&block.fragment)?;
        let repaired = match self.mode {
            Mode::Inspect => {
                if fields
                    .iter()
                    .all(|(name, value)| !needs_repair(name, value))
                {
                    // A well-behaved client: step aside for the rest of the connection.
                    self.output.extend_from_slice(&raw);
                    self.mode = Mode::Passthrough;
                    return Ok(true);
                }
                self.mode = Mode::Rewrite;
                repair(fields)
            }
            _ => repair(fields),
        };
        write_header_frames(
            &mut self.output,
            &header,
            &block,
            &encode_literals(&repaired),
        );
        Ok(true)
    }

    fn decode(&mut self, fragment: &[u8]) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        // The hpack crate can panic on some malformed input; a malformed block ends this
        // connection, never the process.
        let decoder = &mut self.decoder;
        match catch_unwind(AssertUnwindSafe(|| decoder.decode(fragment))) {
            Ok(Ok(fields)) => Ok(fields),
            Ok(Err(error)) => Err(protocol_error(format!("bad header block: {error:?}"))),
            Err(_) => Err(protocol_error("bad header block".into())),
        }
    }
}

fn protocol_error(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

fn needs_repair(name: &[u8], value: &[u8]) -> bool {
    name == b":authority" && Authority::try_from(value).is_err()
}

/// Repairs the authority: drops a scheme and a path; if it is still not valid, uses
/// [`FALLBACK_AUTHORITY`].
fn repaired_authority(value: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(value);
    let without_scheme = text.split_once("://").map_or(&*text, |(_, rest)| rest);
    let host_port = without_scheme.split('/').next().unwrap_or_default();
    if Authority::try_from(host_port).is_ok() {
        host_port.as_bytes().to_vec()
    } else {
        FALLBACK_AUTHORITY.to_vec()
    }
}

fn repair(fields: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<(Vec<u8>, Vec<u8>)> {
    fields
        .into_iter()
        .map(|(name, value)| {
            if needs_repair(&name, &value) {
                let fixed = repaired_authority(&value);
                (name, fixed)
            } else {
                (name, value)
            }
        })
        .collect()
}

/// RFC 7541 §5.1 integer with an `prefix_bits`-bit prefix; `first` holds the pattern bits.
fn put_integer(out: &mut Vec<u8>, first: u8, prefix_bits: u32, value: usize) {
    let max_prefix = (1usize << prefix_bits) - 1;
    if value < max_prefix {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max_prefix as u8);
    let mut rest = value - max_prefix;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
}

/// Every field as "literal header field without indexing, new name" with raw strings
/// (RFC 7541 §6.2.2): the block changes nothing in the receiver's dynamic table.
fn encode_literals(fields: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        put_integer(&mut out, 0x00, 7, name.len());
        out.extend_from_slice(name);
        put_integer(&mut out, 0x00, 7, value.len());
        out.extend_from_slice(value);
    }
    out
}

#[derive(Debug, Clone, Copy)]
struct FrameHeader {
    length: usize,
    kind: u8,
    flags: u8,
    stream_id: u32,
}

impl FrameHeader {
    fn parse(input: &[u8]) -> Option<FrameHeader> {
        if input.len() < FRAME_HEADER_BYTES {
            return None;
        }
        Some(FrameHeader {
            length: (usize::from(input[0]) << 16)
                | (usize::from(input[1]) << 8)
                | usize::from(input[2]),
            kind: input[3],
            flags: input[4],
            stream_id: u32::from_be_bytes([input[5], input[6], input[7], input[8]]) & 0x7fff_ffff,
        })
    }
}

/// A HEADERS frame and its CONTINUATION frames, fully buffered.
struct HeaderBlock {
    /// Bytes of all the frames.
    raw_len: usize,
    /// The header block fragments, concatenated, without padding or priority fields.
    fragment: Vec<u8>,
    /// The priority fields of the HEADERS frame, if it had them.
    priority: Option<[u8; 5]>,
}

impl HeaderBlock {
    /// Parses a complete block starting at a HEADERS frame; `None` while incomplete.
    fn parse(input: &[u8]) -> io::Result<Option<HeaderBlock>> {
        let mut offset = 0;
        let mut fragment = Vec::new();
        let mut priority = None;
        loop {
            let Some(header) = FrameHeader::parse(&input[offset..]) else {
                return Ok(None);
            };
            let expected = if offset == 0 {
                FRAME_HEADERS
            } else {
                FRAME_CONTINUATION
            };
            if header.kind != expected {
                return Err(protocol_error("header block interrupted".into()));
            }
            let payload_start = offset + FRAME_HEADER_BYTES;
            let payload_end = payload_start + header.length;
            if payload_end > HEADER_BLOCK_MAX {
                return Err(protocol_error("header block too large".into()));
            }
            if input.len() < payload_end {
                return Ok(None);
            }
            let mut payload = &input[payload_start..payload_end];
            if offset == 0 {
                let mut padding = 0;
                if header.flags & FLAG_PADDED != 0 {
                    padding = usize::from(*payload.first().ok_or_else(|| {
                        protocol_error("padded frame without a pad length".into())
                    })?);
                    payload = &payload[1..];
                }
                if header.flags & FLAG_PRIORITY != 0 {
                    let fields: [u8; 5] = payload
                        .get(..5)
                        .and_then(|bytes| bytes.try_into().ok())
                        .ok_or_else(|| protocol_error("short priority fields".into()))?;
                    priority = Some(fields);
                    payload = &payload[5..];
                }
                if padding > payload.len() {
                    return Err(protocol_error("padding longer than the frame".into()));
                }
                payload = &payload[..payload.len() - padding];
            }
            fragment.extend_from_slice(payload);
            offset = payload_end;
            if header.flags & FLAG_END_HEADERS != 0 {
                return Ok(Some(HeaderBlock {
                    raw_len: offset,
                    fragment,
                    priority,
                }));
            }
        }
    }
}

/// Writes `block` as a HEADERS frame (keeping END_STREAM and the priority fields) followed by
/// CONTINUATION frames as needed, the last one with END_HEADERS.
fn write_header_frames(
    out: &mut BytesMut,
    first: &FrameHeader,
    original: &HeaderBlock,
    block: &[u8],
) {
    let priority_len = if original.priority.is_some() { 5 } else { 0 };
    let first_room = FRAME_PAYLOAD_MAX - priority_len;
    let (head, mut rest) = block.split_at(block.len().min(first_room));
    let mut flags = first.flags & (FLAG_END_STREAM | FLAG_PRIORITY);
    if rest.is_empty() {
        flags |= FLAG_END_HEADERS;
    }
    put_frame_header(
        out,
        head.len() + priority_len,
        FRAME_HEADERS,
        flags,
        first.stream_id,
    );
    if let Some(priority) = original.priority {
        out.extend_from_slice(&priority);
    }
    out.extend_from_slice(head);
    while !rest.is_empty() {
        let (chunk, remainder) = rest.split_at(rest.len().min(FRAME_PAYLOAD_MAX));
        let flags = if remainder.is_empty() {
            FLAG_END_HEADERS
        } else {
            0
        };
        put_frame_header(out, chunk.len(), FRAME_CONTINUATION, flags, first.stream_id);
        out.extend_from_slice(chunk);
        rest = remainder;
    }
}

fn put_frame_header(out: &mut BytesMut, length: usize, kind: u8, flags: u8, stream_id: u32) {
    out.put_uint(length as u64, 3);
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u32(stream_id);
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityRepair<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.output.is_empty() {
                let n = this.output.len().min(buf.remaining());
                buf.put_slice(&this.output[..n]);
                this.output.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.mode == Mode::Passthrough && this.input.is_empty() {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            if this.eof {
                // Whatever is left unparsed goes to hyper, which reports the truncation.
                let rest = this.input.split();
                if rest.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                this.output.extend_from_slice(&rest);
                continue;
            }
            let mut chunk = [0u8; READ_CHUNK];
            let mut chunk_buf = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut chunk_buf))?;
            let filled = chunk_buf.filled();
            if filled.is_empty() {
                this.eof = true;
            } else {
                this.input.extend_from_slice(filled);
                this.process()?;
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityRepair<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: Connected> Connected for AuthorityRepair<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// HPACK block for the given fields, using incremental indexing with new names (so the
    /// client's dynamic table fills, as Go's encoder does).
    fn indexed_block(encoder: &mut hpack::Encoder<'_>, fields: &[(&[u8], &[u8])]) -> Vec<u8> {
        encoder.encode(fields.iter().copied())
    }

    #[tokio::test]
    async fn bytes_read_before_the_wrapper_come_first_without_waiting_for_more() {
        // The peer stays connected and sends nothing more: a complete HTTP/1 request already
        // read must be handed on at once, or the server would wait for the client forever.
        let (socket, _peer) = tokio::io::duplex(64);
        let request = b"GET /health HTTP/1.1\r\n\r\n";
        let mut repair = AuthorityRepair::after_read(socket, BytesMut::from(&request[..]))
            .expect("a plain HTTP/1 request");
        let mut got = vec![0u8; request.len()];
        repair
            .read_exact(&mut got)
            .await
            .expect("the bytes already read");
        assert_eq!(got, request);
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        put_frame_header(&mut out, payload.len(), kind, flags, stream);
        out.extend_from_slice(payload);
        out.to_vec()
    }

    async fn run(input: Vec<u8>) -> io::Result<Vec<u8>> {
        // Feed the input in small pieces to exercise partial frames.
        let (mut client, server) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for piece in input.chunks(7) {
                client.write_all(piece).await.expect("write");
            }
            client.shutdown().await.expect("shutdown");
        });
        let mut repaired = AuthorityRepair::new(server);
        let mut out = Vec::new();
        let result = repaired.read_to_end(&mut out).await;
        writer.await.expect("writer");
        result.map(|_| out)
    }

    fn decode_all(stream: &[u8]) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut decoder = hpack::Decoder::new();
        let mut blocks = Vec::new();
        let mut input = &stream[PREFACE.len()..];
        while let Some(header) = FrameHeader::parse(input) {
            if header.kind == FRAME_HEADERS {
                let block = HeaderBlock::parse(input)
                    .expect("well formed")
                    .expect("complete");
                blocks.push(decoder.decode(&block.fragment).expect("decodes"));
                input = &input[block.raw_len..];
            } else {
                input = &input[FRAME_HEADER_BYTES + header.length..];
            }
        }
        blocks
    }

    #[tokio::test]
    async fn http1_and_valid_authorities_pass_through_byte_for_byte() {
        let http1 = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        assert_eq!(run(http1.clone()).await.expect("passes"), http1);

        let mut encoder = hpack::Encoder::new();
        let mut stream = PREFACE.to_vec();
        stream.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        let fields: [(&[u8], &[u8]); 2] = [(b":authority", b"127.0.0.1:2379"), (b":path", b"/x")];
        let block = indexed_block(&mut encoder, &fields);
        stream.extend(frame(FRAME_HEADERS, FLAG_END_HEADERS, 1, &block));
        stream.extend(frame(0x0, 0, 1, b"payload"));
        assert_eq!(run(stream.clone()).await.expect("passes"), stream);
    }

    #[tokio::test]
    async fn a_url_authority_is_repaired_in_every_block_of_the_connection() {
        let mut encoder = hpack::Encoder::new();
        let bad: &[u8] = b"http://127.0.0.1:2379";
        let mut stream = PREFACE.to_vec();
        let mut expected = Vec::new();
        for stream_id in [1u32, 3, 5] {
            let path = format!("/etcdserverpb.KV/Range{stream_id}");
            let fields: [(&[u8], &[u8]); 3] = [
                (b":authority", bad),
                (b":path", path.as_bytes()),
                (b"te", b"trailers"),
            ];
            let block = indexed_block(&mut encoder, &fields);
            // Split the block over a HEADERS and a CONTINUATION frame, with padding.
            let (first, second) = block.split_at(block.len() / 2);
            let mut padded = vec![3u8];
            padded.extend_from_slice(first);
            padded.extend_from_slice(&[0, 0, 0]);
            stream.extend(frame(FRAME_HEADERS, FLAG_PADDED, stream_id, &padded));
            stream.extend(frame(
                FRAME_CONTINUATION,
                FLAG_END_HEADERS,
                stream_id,
                second,
            ));
            stream.extend(frame(0x0, FLAG_END_STREAM, stream_id, b"body"));
            expected.push(vec![
                (b":authority".to_vec(), b"127.0.0.1:2379".to_vec()),
                (b":path".to_vec(), path.into_bytes()),
                (b"te".to_vec(), b"trailers".to_vec()),
            ]);
        }
        let out = run(stream).await.expect("repaired");
        assert_eq!(decode_all(&out), expected);
        assert!(out.windows(4).any(|w| w == b"body"));
    }

    #[test]
    fn authorities_are_repaired_or_replaced() {
        assert_eq!(
            repaired_authority(b"http://10.0.0.1:2379"),
            b"10.0.0.1:2379"
        );
        assert_eq!(repaired_authority(b"https://h:1/path"), b"h:1");
        assert_eq!(
            repaired_authority(b"#initially=[http://a:1;http://b:2]"),
            FALLBACK_AUTHORITY
        );
        assert!(!needs_repair(b":authority", b"localhost:2379"));
        assert!(needs_repair(b":authority", b"http://localhost:2379"));
        assert!(!needs_repair(b":path", b"http://not-an-authority"));
    }

    #[tokio::test]
    async fn garbage_after_the_preface_is_an_error_not_a_panic() {
        let mut stream = PREFACE.to_vec();
        stream.extend(frame(
            FRAME_HEADERS,
            FLAG_END_HEADERS,
            1,
            &[0xff, 0xff, 0xff, 0xff],
        ));
        let error = run(stream).await.expect_err("malformed block");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    }
}
