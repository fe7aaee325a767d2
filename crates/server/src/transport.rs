//! The peer transport: TCP between members, with TLS when a peer URL is `https://`.
//!
//! - **TLS.** A listener on an `https` peer URL takes a TLS handshake before the Ballot one,
//!   and a member dials an `https` peer URL with TLS, checking the peer's certificate against
//!   `--peer-trusted-ca-file` and the URL's host, and presenting its own (`crate::tls::peer`).
//!   Everything below runs the same over either.
//! - **Streams.** One long-lived connection per ordered pair: member A dials B for A→B traffic,
//!   so a connection carries data one way only (B answers on its own connection to A). A
//!   connection opens with a handshake naming the cluster, the sender and the recipient; the
//!   acceptor refuses (and logs) another cluster, a sender it does not know, or a recipient
//!   that is not itself. Then come length-prefixed frames, each carrying many Raft messages
//!   (the `ballot_raft` codec) or one node request (forwarded proposals, lease requests).
//! - **Bounded queues.** Each peer has a bounded queue drained by a writer task that packs
//!   everything waiting into one write. When the queue is full the message is dropped (Raft
//!   tolerates loss) and the peer is reported unreachable so the leader probes instead of
//!   pipelining. A broken connection is redialled with exponential backoff.
//! - **Snapshots** travel on their own connection, so heartbeats never wait behind them: the
//!   data goes in chunks, each acknowledged; after a broken connection the sender asks where to
//!   resume and continues from the last acknowledged offset; the receiver checks the length and
//!   CRC32C of the whole before it makes the file durable and steps the Snapshot message into
//!   the core.
//!
//! Nothing read from a peer can panic this process: every decode returns an error, which
//! closes that connection.
//!
//! Wire format (integers little-endian unless "varint"):
//!
//! ```text
//! handshake  "BLTPEER1" | kind u8 (1 stream, 2 snapshot, 3 cluster info) | cluster u64 |
//!            from u64 | to u64                   answer: status u8 (0 = accepted)
//! frame      length u32 (of what follows) | frame kind u8 | body
//! ```

use std::collections::HashMap;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use ballot_raft::{Message, MessageBody, NodeId};
use ballot_wal::{RealDisk, SnapshotInfo, SnapshotStore, SnapshotWriter};
use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;

use crate::config::HttpUrl;
use crate::metrics::metrics;
use crate::node::members::Registry;
use crate::node::wire::{Reader, WireError, put_bytes, put_varint};
use crate::storage::{self, encode_snapshot_meta};
use crate::tls::PeerTlsConfig;

/// A peer connection: plain TCP or TLS over it.
pub trait PeerIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> PeerIo for T {}
type PeerStream = Box<dyn PeerIo>;

const HANDSHAKE_MAGIC: &[u8; 8] = b"BLTPEER1";
const HANDSHAKE_LEN: usize = 8 + 1 + 8 + 8 + 8;

const CONN_STREAM: u8 = 1;
const CONN_SNAPSHOT: u8 = 2;
const CONN_CLUSTER_INFO: u8 = 3;
/// A member asking another for its HashKV at a revision (the corruption checks; etcd's
/// `/members/hashkv` peer endpoint).
const CONN_HASH_KV: u8 = 4;
/// A member asking another for its hash of its compaction to a revision (the compaction hash
/// check); answered as `CONN_HASH_KV` is. A member older than this question refuses the
/// connection, which the check counts as no answer.
const CONN_COMPACTION_HASH: u8 = 5;

/// How a HashKV answer begins: the hash, or why there is none.
const HASH_KV_OK: u8 = 0;
const HASH_KV_FUTURE_REVISION: u8 = 1;
const HASH_KV_COMPACTED: u8 = 2;
const HASH_KV_UNAVAILABLE: u8 = 3;

const STATUS_ACCEPTED: u8 = 0;
const STATUS_OTHER_CLUSTER: u8 = 1;
const STATUS_UNKNOWN_SENDER: u8 = 2;
const STATUS_WRONG_RECIPIENT: u8 = 3;
const STATUS_BAD_KIND: u8 = 4;

const FRAME_MESSAGES: u8 = 1;
const FRAME_FORWARD: u8 = 2;
const FRAME_FORWARD_CONF_CHANGE: u8 = 3;
const FRAME_REJECT: u8 = 4;
const FRAME_LEASE_REQUEST: u8 = 5;
const FRAME_LEASE_RESPONSE: u8 = 6;

const SNAP_OFFER: u8 = 1;
const SNAP_RESUME: u8 = 2;
const SNAP_CHUNK: u8 = 3;
const SNAP_ACK: u8 = 4;
const SNAP_DONE: u8 = 5;

/// Largest frame accepted from a peer; a larger length prefix is refused before allocating.
pub const FRAME_BYTES_MAX: usize = 64 << 20;
/// A writer stops packing more into one write beyond this size.
const WRITE_BATCH_BYTES_MAX: usize = 4 << 20;
/// Messages waiting per peer; beyond it messages are dropped and the peer reported unreachable.
pub const PEER_QUEUE_DEPTH: usize = 4096;
const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
const SNAPSHOT_SEND_ATTEMPTS: u32 = 5;
/// A half-received snapshot nobody resumes within this time is discarded.
const SNAPSHOT_PARTIAL_TTL: Duration = Duration::from_secs(120);
const DIAL_TIMEOUT: Duration = Duration::from_secs(2);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How long a HashKV question may take, dialling included (etcd: 5 s).
const HASH_KV_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("peer I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad data from peer: {0}")]
    Wire(#[from] WireError),
    #[error("bad Raft message from peer: {0}")]
    Raft(#[from] ballot_raft::DecodeError),
    #[error("peer refused the connection: {0}")]
    Refused(&'static str),
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("snapshot: {0}")]
    Snapshot(String),
    #[error("timed out")]
    Timeout,
    #[error("TLS: {0}")]
    Tls(String),
}

fn refusal_reason(status: u8) -> &'static str {
    match status {
        STATUS_OTHER_CLUSTER => "the peer belongs to another cluster",
        STATUS_UNKNOWN_SENDER => "the peer does not know this member",
        STATUS_WRONG_RECIPIENT => "the peer is not the member this one meant to reach",
        STATUS_BAD_KIND => "the peer does not accept this kind of connection",
        _ => "unknown refusal",
    }
}

/// A node-level request or answer carried between members next to Raft messages.
#[derive(Clone, Debug, PartialEq)]
pub enum PeerFrame {
    /// Raft messages.
    Messages(Vec<Message>),
    /// Encoded entry envelopes proposed on a follower, for the leader to propose.
    Forward(Vec<Bytes>),
    /// An encoded `ConfChange` proposed on a follower.
    ForwardConfChange { request_id: u64, change: Bytes },
    /// The leader could not propose these forwarded requests; `error` is a
    /// [`crate::node::NodeError::wire_code`].
    Reject { error: u8, request_ids: Vec<u64> },
    /// A lease operation only the leader can answer.
    LeaseRequest {
        request_id: u64,
        op: u8,
        lease_id: i64,
        keys: bool,
    },
    /// The leader's answer; `error` 0 means `payload` holds the answer.
    LeaseResponse {
        request_id: u64,
        error: u8,
        payload: Bytes,
    },
}

impl PeerFrame {
    fn encode_to(&self, buf: &mut BytesMut) {
        let start = buf.len();
        buf.put_u32_le(0);
        match self {
            PeerFrame::Messages(messages) => {
                buf.put_u8(FRAME_MESSAGES);
                for message in messages {
                    encode_message(buf, message);
                }
            }
            PeerFrame::Forward(envelopes) => {
                buf.put_u8(FRAME_FORWARD);
                put_varint(buf, envelopes.len() as u64);
                for envelope in envelopes {
                    put_bytes(buf, envelope);
                }
            }
            PeerFrame::ForwardConfChange { request_id, change } => {
                buf.put_u8(FRAME_FORWARD_CONF_CHANGE);
                put_varint(buf, *request_id);
                put_bytes(buf, change);
            }
            PeerFrame::Reject { error, request_ids } => {
                buf.put_u8(FRAME_REJECT);
                buf.put_u8(*error);
                put_varint(buf, request_ids.len() as u64);
                for request_id in request_ids {
                    put_varint(buf, *request_id);
                }
            }
            PeerFrame::LeaseRequest {
                request_id,
                op,
                lease_id,
                keys,
            } => {
                buf.put_u8(FRAME_LEASE_REQUEST);
                put_varint(buf, *request_id);
                buf.put_u8(*op);
                buf.put_i64_le(*lease_id);
                buf.put_u8(u8::from(*keys));
            }
            PeerFrame::LeaseResponse {
                request_id,
                error,
                payload,
            } => {
                buf.put_u8(FRAME_LEASE_RESPONSE);
                put_varint(buf, *request_id);
                buf.put_u8(*error);
                put_bytes(buf, payload);
            }
        }
        finish_frame(buf, start);
    }

    /// Decodes one frame body (kind byte first), slicing payloads out of `body`.
    fn decode(body: &Bytes) -> Result<PeerFrame, TransportError> {
        let mut reader = Reader::new(body);
        let kind = reader.u8("frame kind")?;
        let frame = match kind {
            FRAME_MESSAGES => {
                let mut messages = Vec::new();
                while !reader.is_empty() {
                    let length = read_u32(&mut reader)? as usize;
                    let encoded = reader.take(length, "message")?;
                    messages.push(Message::decode_bytes(&encoded)?);
                }
                PeerFrame::Messages(messages)
            }
            FRAME_FORWARD => {
                let count = reader.length("forwarded count")?;
                let mut envelopes = Vec::with_capacity(count);
                for _ in 0..count {
                    envelopes.push(reader.bytes("forwarded proposal")?);
                }
                PeerFrame::Forward(envelopes)
            }
            FRAME_FORWARD_CONF_CHANGE => PeerFrame::ForwardConfChange {
                request_id: reader.varint("request id")?,
                change: reader.bytes("conf change")?,
            },
            FRAME_REJECT => {
                let error = reader.u8("error")?;
                let count = reader.length("rejected count")?;
                let mut request_ids = Vec::with_capacity(count);
                for _ in 0..count {
                    request_ids.push(reader.varint("request id")?);
                }
                PeerFrame::Reject { error, request_ids }
            }
            FRAME_LEASE_REQUEST => {
                let request_id = reader.varint("request id")?;
                let op = reader.u8("lease op")?;
                let lease_id = read_i64(&mut reader, "lease id")?;
                let keys = reader.bool("keys")?;
                PeerFrame::LeaseRequest {
                    request_id,
                    op,
                    lease_id,
                    keys,
                }
            }
            FRAME_LEASE_RESPONSE => PeerFrame::LeaseResponse {
                request_id: reader.varint("request id")?,
                error: reader.u8("error")?,
                payload: reader.bytes("payload")?,
            },
            tag => {
                return Err(WireError::UnknownTag {
                    what: "frame kind",
                    tag: u64::from(tag),
                }
                .into());
            }
        };
        reader.finish()?;
        Ok(frame)
    }
}

fn read_i64(reader: &mut Reader<'_>, what: &'static str) -> Result<i64, WireError> {
    let mut bytes = [0u8; 8];
    for byte in &mut bytes {
        *byte = reader.u8(what)?;
    }
    Ok(i64::from_le_bytes(bytes))
}

/// Appends `message` with a u32 length prefix, encoding it in place (no intermediate copy of
/// the entries it carries).
fn encode_message(buf: &mut BytesMut, message: &Message) {
    let start = buf.len();
    buf.put_u32_le(0);
    message.encode(buf);
    let length = (buf.len() - start - 4) as u32;
    buf[start..start + 4].copy_from_slice(&length.to_le_bytes());
}

/// Writes the length of the frame that starts at `start` into its prefix.
fn finish_frame(buf: &mut BytesMut, start: usize) {
    let length = (buf.len() - start - 4) as u32;
    buf[start..start + 4].copy_from_slice(&length.to_le_bytes());
}

/// What the transport hands to the node.
#[derive(Debug)]
pub enum PeerInput {
    /// A frame from member `from`.
    Frame { from: NodeId, frame: PeerFrame },
    /// Member `to` could not be reached (queue full or connection broken).
    Unreachable(NodeId),
    /// The outcome of streaming a snapshot to `to`.
    SnapshotStatus { to: NodeId, ok: bool },
}

/// Answers a joining member's question "which cluster is this, and who is in it?".
pub trait ClusterInfoSource: Send + Sync + 'static {
    fn cluster_info(&self) -> (u64, Registry);
}

/// Answers another member's question "what is your HashKV at this revision?" (it may take a
/// while on a large store: it is called on a blocking thread).
pub trait HashKvSource: Send + Sync + 'static {
    fn hash_kv(&self, revision: i64) -> Result<ballot_mvcc::HashKv, ballot_mvcc::MvccError>;

    /// The member's hash of its compaction to `revision` (etcd's `HashByRev` of its hash
    /// storage: the kept hash, else the HashKV at `revision` computed now).
    fn compaction_hash(&self, revision: i64)
    -> Result<ballot_mvcc::HashKv, ballot_mvcc::MvccError>;
}

/// What one member asks another about its hashes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashQuestion {
    /// Its HashKV at a revision ([`HashKvSource::hash_kv`]).
    HashKv,
    /// Its hash of its compaction to a revision ([`HashKvSource::compaction_hash`]).
    CompactionHash,
}

impl HashQuestion {
    /// The connection kind the question is asked on.
    fn kind(self) -> u8 {
        match self {
            HashQuestion::HashKv => CONN_HASH_KV,
            HashQuestion::CompactionHash => CONN_COMPACTION_HASH,
        }
    }
}

/// A peer's answer to a HashKV question.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerHash {
    /// Its hash up to the asked revision.
    Hash(ballot_mvcc::HashKv),
    /// It has not reached the asked revision (etcd `ErrFutureRev`).
    FutureRevision,
    /// It has compacted past the asked revision (etcd `ErrCompacted`).
    Compacted,
}

struct Peer {
    urls: Vec<String>,
    queue: mpsc::Sender<Outbound>,
    /// Last time an unreachable report was sent, to avoid flooding the node.
    last_unreachable: Mutex<Option<Instant>>,
}

enum Outbound {
    Message(Message),
    Frame(PeerFrame),
}

/// A snapshot being received: (sender, index, term).
type PartialKey = (NodeId, u64, u64);

struct Inner {
    cluster_id: u64,
    member_id: u64,
    peers: RwLock<HashMap<NodeId, Arc<Peer>>>,
    input: mpsc::Sender<PeerInput>,
    snapshots: SnapshotStore<RealDisk>,
    partials: Mutex<HashMap<PartialKey, Arc<Mutex<PartialSnapshot>>>>,
    cluster_info: Mutex<Option<Arc<dyn ClusterInfoSource>>>,
    hash_kv: Mutex<Option<Arc<dyn HashKvSource>>>,
    /// For `https` peer URLs (listening and dialling); `None` when every peer URL is `http`.
    tls: Option<PeerTlsConfig>,
}

/// The transport handle. Cheap to clone.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Transport {
    pub fn new(
        cluster_id: u64,
        member_id: u64,
        input: mpsc::Sender<PeerInput>,
        snapshots: SnapshotStore<RealDisk>,
        tls: Option<PeerTlsConfig>,
    ) -> Transport {
        Transport {
            inner: Arc::new(Inner {
                cluster_id,
                member_id,
                peers: RwLock::new(HashMap::new()),
                input,
                snapshots,
                partials: Mutex::new(HashMap::new()),
                cluster_info: Mutex::new(None),
                hash_kv: Mutex::new(None),
                tls,
            }),
        }
    }

    pub fn member_id(&self) -> NodeId {
        self.inner.member_id
    }

    pub fn set_cluster_info_source(&self, source: Arc<dyn ClusterInfoSource>) {
        *lock(&self.inner.cluster_info) = Some(source);
    }

    pub fn set_hash_kv_source(&self, source: Arc<dyn HashKvSource>) {
        *lock(&self.inner.hash_kv) = Some(source);
    }

    /// The members this one has peer URLs for (every other member of the cluster).
    pub fn peer_ids(&self) -> Vec<NodeId> {
        let mut ids: Vec<NodeId> = self
            .inner
            .peers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .copied()
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Asks member `to` the hash `question` about `revision`, on a connection of its own.
    pub async fn peer_hash(
        &self,
        to: NodeId,
        question: HashQuestion,
        revision: i64,
    ) -> Result<PeerHash, TransportError> {
        let Some(peer) = self.peer(to) else {
            return Err(TransportError::Refused("no such peer"));
        };
        let inner = &self.inner;
        let exchange = async {
            let mut stream = dial(
                inner.tls.as_ref(),
                &peer.urls,
                question.kind(),
                inner.cluster_id,
                inner.member_id,
                to,
            )
            .await?;
            send_all(&mut stream, &revision.to_le_bytes()).await?;
            let body = read_frame(&mut stream).await?;
            decode_peer_hash(&body)
        };
        tokio::time::timeout(HASH_KV_TIMEOUT, exchange)
            .await
            .map_err(|_| TransportError::Timeout)?
    }

    /// Starts accepting peer connections on `listener`, with TLS when `tls` (an `https` peer
    /// URL; the member's configuration guarantees the certificate then).
    pub fn serve(&self, listener: TcpListener, tls: bool) -> tokio::task::JoinHandle<()> {
        let transport = self.clone();
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, addr)) => {
                        let _ = stream.set_nodelay(true);
                        let transport = transport.clone();
                        tokio::spawn(async move {
                            let result = match transport.accept_tls(stream, tls).await {
                                Ok(stream) => transport.handle_incoming(stream).await,
                                Err(error) => {
                                    tracing::warn!(%addr, %error, "refused a peer connection");
                                    return;
                                }
                            };
                            if let Err(error) = result {
                                tracing::debug!(%addr, %error, "peer connection closed");
                            }
                        });
                    }
                    Err(error) => {
                        tracing::warn!(%error, "accepting a peer connection failed");
                        tokio::time::sleep(BACKOFF_MIN).await;
                    }
                }
            }
        })
    }

    /// Adds a peer, or updates its URLs. The writer task dials lazily.
    pub fn set_peer(&self, id: NodeId, urls: Vec<String>) {
        if id == self.inner.member_id || id == 0 {
            return;
        }
        let mut peers = self
            .inner
            .peers
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(existing) = peers.get(&id)
            && existing.urls == urls
        {
            return;
        }
        let (queue, receiver) = mpsc::channel(PEER_QUEUE_DEPTH);
        let peer = Arc::new(Peer {
            urls: urls.clone(),
            queue,
            last_unreachable: Mutex::new(None),
        });
        // Replacing the peer drops the old queue's sender, which ends the old writer task.
        peers.insert(id, Arc::clone(&peer));
        drop(peers);
        tracing::debug!(peer = %format_args!("{id:x}"), ?urls, "peer added");
        tokio::spawn(peer_writer(self.clone(), id, urls, receiver));
    }

    pub fn remove_peer(&self, id: NodeId) {
        let removed = self
            .inner
            .peers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
        if removed.is_some() {
            tracing::info!(peer = %format_args!("{id:x}"), "peer removed");
        }
    }

    pub fn knows(&self, id: NodeId) -> bool {
        self.inner
            .peers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(&id)
    }

    fn peer(&self, id: NodeId) -> Option<Arc<Peer>> {
        self.inner
            .peers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .cloned()
    }

    /// Queues a Raft message. `Snapshot` messages start a snapshot transfer.
    pub fn send_message(&self, message: Message) {
        if matches!(message.body, MessageBody::Snapshot { .. }) {
            self.send_snapshot(message);
            return;
        }
        let to = message.to;
        self.enqueue(to, Outbound::Message(message));
    }

    /// Queues a node-level frame for `to`.
    pub fn send_frame(&self, to: NodeId, frame: PeerFrame) {
        self.enqueue(to, Outbound::Frame(frame));
    }

    fn enqueue(&self, to: NodeId, item: Outbound) {
        let Some(peer) = self.peer(to) else {
            tracing::debug!(peer = %format_args!("{to:x}"), "dropping a message for an unknown peer");
            self.report_unreachable(to, None);
            return;
        };
        if peer.queue.try_send(item).is_err() {
            metrics().peer_messages_dropped.inc();
            self.report_unreachable(to, Some(&peer));
        }
    }

    /// Tells the node a peer is unreachable, at most once per 100 ms per peer.
    fn report_unreachable(&self, to: NodeId, peer: Option<&Peer>) {
        if let Some(peer) = peer {
            let mut last = lock(&peer.last_unreachable);
            let now = Instant::now();
            if last.is_some_and(|at| now.duration_since(at) < Duration::from_millis(100)) {
                return;
            }
            *last = Some(now);
        }
        let _ = self.inner.input.try_send(PeerInput::Unreachable(to));
    }

    /// The accepted connection, after the TLS handshake if this listener is `https`.
    async fn accept_tls(&self, stream: TcpStream, tls: bool) -> Result<PeerStream, TransportError> {
        if !tls {
            return Ok(Box::new(stream));
        }
        let Some(config) = &self.inner.tls else {
            return Err(TransportError::Tls(
                "an https peer listener without peer TLS settings".into(),
            ));
        };
        let remote = stream.peer_addr()?;
        let accepted = tokio::time::timeout(HANDSHAKE_TIMEOUT, config.acceptor.accept(stream))
            .await
            .map_err(|_| TransportError::Timeout)?
            .map_err(|error| TransportError::Tls(error.to_string()))?;
        let presented = accepted
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first());
        if config.verify_client_san
            && let Some(certificate) = presented
        {
            let checked = tokio::time::timeout(
                HANDSHAKE_TIMEOUT,
                crate::tls::check_client_san(certificate, remote.ip()),
            )
            .await
            .unwrap_or_else(|_| Err("resolving its names timed out".into()));
            if let Err(reason) = checked {
                // Logged by the caller with the address ("refused a peer connection").
                return Err(TransportError::Tls(format!(
                    "its certificate is not for the address it comes from: {reason} \
                     (--experimental-peer-skip-client-san-verification)"
                )));
            }
        }
        Ok(Box::new(accepted))
    }

    async fn handle_incoming(&self, mut stream: PeerStream) -> Result<(), TransportError> {
        let mut handshake = [0u8; HANDSHAKE_LEN];
        tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.read_exact(&mut handshake))
            .await
            .map_err(|_| TransportError::Timeout)??;
        if &handshake[..8] != HANDSHAKE_MAGIC {
            tracing::warn!("refusing a peer connection that is not a Ballot peer");
            return Err(TransportError::Protocol("bad handshake magic".into()));
        }
        let kind = handshake[8];
        let cluster_id = u64::from_le_bytes(array8(&handshake[9..17]));
        let from = u64::from_le_bytes(array8(&handshake[17..25]));
        let to = u64::from_le_bytes(array8(&handshake[25..33]));
        if kind == CONN_CLUSTER_INFO {
            return self.answer_cluster_info(stream).await;
        }
        let status = self.check_handshake(kind, cluster_id, from, to);
        send_all(&mut stream, &[status]).await?;
        if status != STATUS_ACCEPTED {
            tracing::warn!(
                from = %format_args!("{from:x}"),
                cluster = %format_args!("{cluster_id:x}"),
                reason = refusal_reason(status),
                "refused a peer connection"
            );
            return Err(TransportError::Refused(refusal_reason(status)));
        }
        match kind {
            CONN_STREAM => self.read_stream(stream, from).await,
            CONN_HASH_KV => self.answer_hash(stream, HashQuestion::HashKv).await,
            CONN_COMPACTION_HASH => self.answer_hash(stream, HashQuestion::CompactionHash).await,
            _ => self.receive_snapshot(stream, from).await,
        }
    }

    fn check_handshake(&self, kind: u8, cluster_id: u64, from: NodeId, to: NodeId) -> u8 {
        if ![
            CONN_STREAM,
            CONN_SNAPSHOT,
            CONN_HASH_KV,
            CONN_COMPACTION_HASH,
        ]
        .contains(&kind)
        {
            return STATUS_BAD_KIND;
        }
        if cluster_id != self.inner.cluster_id {
            return STATUS_OTHER_CLUSTER;
        }
        if to != self.inner.member_id {
            return STATUS_WRONG_RECIPIENT;
        }
        if !self.knows(from) {
            return STATUS_UNKNOWN_SENDER;
        }
        STATUS_ACCEPTED
    }

    async fn answer_cluster_info(&self, mut stream: PeerStream) -> Result<(), TransportError> {
        let source = lock(&self.inner.cluster_info).clone();
        let Some(source) = source else {
            send_all(&mut stream, &[STATUS_BAD_KIND]).await?;
            return Ok(());
        };
        let (cluster_id, registry) = source.cluster_info();
        let mut buf = BytesMut::new();
        buf.put_u8(STATUS_ACCEPTED);
        let start = buf.len();
        buf.put_u32_le(0);
        put_varint(&mut buf, cluster_id);
        registry.encode_to(&mut buf);
        finish_frame(&mut buf, start);
        send_all(&mut stream, &buf).await?;
        Ok(())
    }

    /// Answers a hash `question`.
    async fn answer_hash(
        &self,
        mut stream: PeerStream,
        question: HashQuestion,
    ) -> Result<(), TransportError> {
        let mut revision = [0u8; 8];
        tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.read_exact(&mut revision))
            .await
            .map_err(|_| TransportError::Timeout)??;
        let revision = i64::from_le_bytes(revision);
        let source = lock(&self.inner.hash_kv).clone();
        let answer = match source {
            None => None,
            Some(source) => tokio::task::spawn_blocking(move || match question {
                HashQuestion::HashKv => source.hash_kv(revision),
                HashQuestion::CompactionHash => source.compaction_hash(revision),
            })
            .await
            .ok(),
        };
        let mut buf = BytesMut::new();
        let start = buf.len();
        buf.put_u32_le(0);
        match answer {
            Some(Ok(hash)) => {
                buf.put_u8(HASH_KV_OK);
                buf.put_u32_le(hash.hash);
                buf.put_i64_le(hash.compact_revision);
                buf.put_i64_le(hash.hash_revision);
                buf.put_i64_le(hash.current_revision);
            }
            Some(Err(ballot_mvcc::MvccError::FutureRevision)) => {
                buf.put_u8(HASH_KV_FUTURE_REVISION)
            }
            Some(Err(ballot_mvcc::MvccError::Compacted)) => buf.put_u8(HASH_KV_COMPACTED),
            Some(Err(_)) | None => buf.put_u8(HASH_KV_UNAVAILABLE),
        }
        finish_frame(&mut buf, start);
        send_all(&mut stream, &buf).await?;
        Ok(())
    }

    async fn read_stream(
        &self,
        mut stream: PeerStream,
        from: NodeId,
    ) -> Result<(), TransportError> {
        loop {
            let body = read_frame(&mut stream).await?;
            let frame = PeerFrame::decode(&body)?;
            if let PeerFrame::Messages(messages) = &frame
                && let Some(bad) = messages
                    .iter()
                    .find(|message| message.from != from || message.to != self.inner.member_id)
            {
                return Err(TransportError::Protocol(format!(
                    "connection from {from:x} carried a message from {:x} to {:x}",
                    bad.from, bad.to
                )));
            }
            // A removed member's connection is cut at the next frame.
            if !self.knows(from) {
                return Err(TransportError::Refused("the sender was removed"));
            }
            if self
                .inner
                .input
                .send(PeerInput::Frame { from, frame })
                .await
                .is_err()
            {
                return Ok(());
            }
        }
    }
}

/// Writes all of `data` and flushes it: over TLS a write may sit in the session's buffer until
/// flushed (over TCP the flush does nothing).
async fn send_all<S: AsyncWrite + Unpin>(stream: &mut S, data: &[u8]) -> std::io::Result<()> {
    stream.write_all(data).await?;
    stream.flush().await
}

fn array8(bytes: &[u8]) -> [u8; 8] {
    let mut out = [0u8; 8];
    out.copy_from_slice(&bytes[..8]);
    out
}

async fn read_frame<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Bytes, TransportError> {
    let length = stream.read_u32_le().await? as usize;
    if length == 0 || length > FRAME_BYTES_MAX {
        return Err(TransportError::Protocol(format!(
            "frame length {length} outside 1..={FRAME_BYTES_MAX}"
        )));
    }
    let mut body = BytesMut::zeroed(length);
    stream.read_exact(&mut body).await?;
    Ok(body.freeze())
}

async fn write_frame_body<S: AsyncWrite + Unpin>(
    stream: &mut S,
    kind: u8,
    fill: impl FnOnce(&mut BytesMut),
) -> Result<(), TransportError> {
    let mut buf = BytesMut::new();
    buf.put_u32_le(0);
    buf.put_u8(kind);
    fill(&mut buf);
    finish_frame(&mut buf, 0);
    send_all(stream, &buf).await?;
    Ok(())
}

/// Resolves a peer URL (`http://host:port` or `https://...`) to the URL and its socket
/// addresses.
async fn resolve(url: &str) -> Option<(HttpUrl, Vec<SocketAddr>)> {
    let parsed = HttpUrl::parse("peer-urls", url).ok()?;
    let addrs = tokio::net::lookup_host((parsed.host.as_str(), parsed.port))
        .await
        .map(|addrs| addrs.collect())
        .unwrap_or_default();
    Some((parsed, addrs))
}

/// How to dial one peer URL: with TLS (and the name its certificate must carry) for `https`.
fn tls_for<'a>(
    url: &HttpUrl,
    tls: Option<&'a PeerTlsConfig>,
) -> Result<Option<(&'a TlsConnector, ServerName<'static>)>, TransportError> {
    if !url.tls {
        return Ok(None);
    }
    let Some(config) = tls else {
        return Err(TransportError::Tls(format!(
            "{url} needs TLS, and this member has no --peer-trusted-ca-file"
        )));
    };
    let name = ServerName::try_from(url.host.clone())
        .map_err(|error| TransportError::Tls(format!("{url}: {error}")))?;
    Ok(Some((&config.connector, name)))
}

/// One way to reach a peer: an address one of its URLs resolves to, with TLS for `https`.
struct Target<'a> {
    url: &'a str,
    addr: SocketAddr,
    tls: Option<(&'a TlsConnector, ServerName<'static>)>,
}

/// Every target of `urls`, in order. A URL that needs TLS this member cannot give is left out;
/// the error says why, for when no target answers.
async fn targets<'a>(
    urls: &'a [String],
    tls: Option<&'a PeerTlsConfig>,
) -> (Vec<Target<'a>>, TransportError) {
    let mut found = Vec::new();
    let mut error = TransportError::Protocol("the peer has no usable URL".into());
    for url in urls {
        let Some((parsed, addrs)) = resolve(url).await else {
            continue;
        };
        match tls_for(&parsed, tls) {
            Ok(tls) => found.extend(addrs.into_iter().map(|addr| Target {
                url,
                addr,
                tls: tls.clone(),
            })),
            Err(refused) => error = refused,
        }
    }
    (found, error)
}

/// Dials a peer at any of its URLs and completes the handshake.
async fn dial(
    tls: Option<&PeerTlsConfig>,
    urls: &[String],
    kind: u8,
    cluster_id: u64,
    from: NodeId,
    to: NodeId,
) -> Result<PeerStream, TransportError> {
    let (targets, mut last_error) = targets(urls, tls).await;
    for target in targets {
        match dial_addr(target.addr, target.tls, kind, cluster_id, from, to).await {
            Ok(stream) => return Ok(stream),
            Err(error) => last_error = error,
        }
    }
    Err(last_error)
}

async fn dial_addr(
    addr: SocketAddr,
    tls: Option<(&TlsConnector, ServerName<'static>)>,
    kind: u8,
    cluster_id: u64,
    from: NodeId,
    to: NodeId,
) -> Result<PeerStream, TransportError> {
    let tcp = tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| TransportError::Timeout)??;
    tcp.set_nodelay(true)?;
    let mut stream: PeerStream = match tls {
        None => Box::new(tcp),
        Some((connector, name)) => Box::new(
            tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, tcp))
                .await
                .map_err(|_| TransportError::Timeout)?
                .map_err(|error| TransportError::Tls(error.to_string()))?,
        ),
    };
    let mut handshake = BytesMut::with_capacity(HANDSHAKE_LEN);
    handshake.put_slice(HANDSHAKE_MAGIC);
    handshake.put_u8(kind);
    handshake.put_u64_le(cluster_id);
    handshake.put_u64_le(from);
    handshake.put_u64_le(to);
    send_all(&mut stream, &handshake).await?;
    let status = tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.read_u8())
        .await
        .map_err(|_| TransportError::Timeout)??;
    if status != STATUS_ACCEPTED {
        return Err(TransportError::Refused(refusal_reason(status)));
    }
    Ok(stream)
}

/// Reads a HashKV answer (see `Transport::answer_hash`).
fn decode_peer_hash(body: &[u8]) -> Result<PeerHash, TransportError> {
    let bad = || TransportError::Protocol(format!("a HashKV answer of {} bytes", body.len()));
    let (&tag, rest) = body.split_first().ok_or_else(bad)?;
    match (tag, rest.len()) {
        (HASH_KV_OK, 28) => Ok(PeerHash::Hash(ballot_mvcc::HashKv {
            hash: u32::from_le_bytes(rest[..4].try_into().map_err(|_| bad())?),
            compact_revision: i64::from_le_bytes(array8(&rest[4..12])),
            hash_revision: i64::from_le_bytes(array8(&rest[12..20])),
            current_revision: i64::from_le_bytes(array8(&rest[20..28])),
        })),
        (HASH_KV_FUTURE_REVISION, 0) => Ok(PeerHash::FutureRevision),
        (HASH_KV_COMPACTED, 0) => Ok(PeerHash::Compacted),
        (HASH_KV_UNAVAILABLE, 0) => Err(TransportError::Refused(
            "the peer cannot compute its HashKV",
        )),
        _ => Err(bad()),
    }
}

/// Asks the members at `peer_urls` which cluster they form and who is in it (a member joining
/// with `--initial-cluster-state existing` does this before it knows its own ID).
pub async fn fetch_cluster_info(
    peer_urls: &[String],
    tls: Option<&PeerTlsConfig>,
) -> Result<(u64, Registry), TransportError> {
    let (targets, mut last_error) = targets(peer_urls, tls).await;
    for target in targets {
        match fetch_cluster_info_from(target.addr, target.tls).await {
            Ok(answer) => return Ok(answer),
            Err(error) => {
                let url = target.url;
                tracing::info!(%url, %error, "could not fetch the cluster membership");
                last_error = error;
            }
        }
    }
    Err(last_error)
}

async fn fetch_cluster_info_from(
    addr: SocketAddr,
    tls: Option<(&TlsConnector, ServerName<'static>)>,
) -> Result<(u64, Registry), TransportError> {
    let mut stream = dial_addr(addr, tls, CONN_CLUSTER_INFO, 0, 0, 0).await?;
    let body = tokio::time::timeout(HANDSHAKE_TIMEOUT, read_frame(&mut stream))
        .await
        .map_err(|_| TransportError::Timeout)??;
    let mut reader = Reader::new(&body);
    let cluster_id = reader.varint("cluster id")?;
    let registry = Registry::decode_from(&mut reader)?;
    reader.finish()?;
    Ok((cluster_id, registry))
}

/// The task draining one peer's queue onto its connection.
async fn peer_writer(
    transport: Transport,
    to: NodeId,
    urls: Vec<String>,
    mut queue: mpsc::Receiver<Outbound>,
) {
    let inner = Arc::clone(&transport.inner);
    let mut backoff = BACKOFF_MIN;
    let mut buf = BytesMut::with_capacity(64 * 1024);
    'connect: loop {
        // Wait for something to send before dialling, so idle peers cost nothing.
        let Some(first) = queue.recv().await else {
            return;
        };
        let mut pending = Some(first);
        let dialled = dial(
            inner.tls.as_ref(),
            &urls,
            CONN_STREAM,
            inner.cluster_id,
            inner.member_id,
            to,
        )
        .await;
        let mut stream = match dialled {
            Ok(stream) => {
                backoff = BACKOFF_MIN;
                stream
            }
            Err(error) => {
                tracing::debug!(peer = %format_args!("{to:x}"), %error, "cannot reach peer");
                transport.report_unreachable(to, transport.peer(to).as_deref());
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue 'connect;
            }
        };
        loop {
            let first = match pending.take() {
                Some(item) => item,
                None => match queue.recv().await {
                    Some(item) => item,
                    None => return,
                },
            };
            buf.clear();
            pack(&mut buf, first, &mut queue);
            if let Err(error) = send_all(&mut stream, &buf).await {
                tracing::debug!(peer = %format_args!("{to:x}"), %error, "peer connection broke");
                transport.report_unreachable(to, transport.peer(to).as_deref());
                continue 'connect;
            }
        }
    }
}

/// Packs `first` and whatever else is waiting (up to a batch size) into `buf`: consecutive Raft
/// messages share one frame.
fn pack(buf: &mut BytesMut, first: Outbound, queue: &mut mpsc::Receiver<Outbound>) {
    let mut messages: Vec<Message> = Vec::new();
    // Kept as messages are gathered: summing all of them at every turn would make a long queue
    // cost its length squared.
    let mut messages_bytes = 0;
    let mut next = Some(first);
    while let Some(item) = next.take() {
        match item {
            Outbound::Message(message) => {
                messages_bytes += approximate_bytes(&message);
                messages.push(message);
            }
            Outbound::Frame(frame) => {
                flush_messages(buf, &mut messages);
                messages_bytes = 0;
                frame.encode_to(buf);
            }
        }
        if buf.len() + messages_bytes >= WRITE_BATCH_BYTES_MAX {
            break;
        }
        next = queue.try_recv().ok();
    }
    flush_messages(buf, &mut messages);
}

fn approximate_bytes(message: &Message) -> usize {
    match &message.body {
        MessageBody::Append { entries, .. } => {
            entries
                .iter()
                .map(|entry| entry.data.len() + 16)
                .sum::<usize>()
                + 32
        }
        _ => 32,
    }
}

fn flush_messages(buf: &mut BytesMut, messages: &mut Vec<Message>) {
    if messages.is_empty() {
        return;
    }
    let start = buf.len();
    buf.put_u32_le(0);
    buf.put_u8(FRAME_MESSAGES);
    for message in messages.drain(..) {
        encode_message(buf, &message);
    }
    finish_frame(buf, start);
}

// ---------------------------------------------------------------------------------------------
// Snapshot transfer.

/// A snapshot being received, kept across broken connections so the sender can resume.
struct PartialSnapshot {
    writer: Option<SnapshotWriter<RealDisk>>,
    /// Bytes written so far, and their running CRC32C.
    written: u64,
    crc: u32,
    total_len: u64,
    expected_crc: u32,
    message: Bytes,
    last_activity: Instant,
}

struct Offer {
    message: Bytes,
    total_len: u64,
    crc: u32,
}

/// Reads a snapshot file's data in chunks on blocking threads, so a transfer holds one chunk in
/// memory, not the snapshot. The file is reopened when a chunk is wanted from anywhere but
/// where the last one ended (a resumed transfer).
struct SnapshotChunks {
    snapshots: SnapshotStore<RealDisk>,
    info: SnapshotInfo,
    reader: Option<OpenData>,
}

/// An open snapshot data reader and the data offset it is at.
type OpenData = (Box<dyn Read + Send>, u64);

impl SnapshotChunks {
    fn new(snapshots: SnapshotStore<RealDisk>, info: SnapshotInfo) -> Self {
        Self {
            snapshots,
            info,
            reader: None,
        }
    }

    /// Up to `SNAPSHOT_CHUNK_BYTES` of data starting at `offset` (< the data's length).
    async fn read(&mut self, offset: u64) -> Result<Bytes, TransportError> {
        let reader = self.reader.take();
        let snapshots = self.snapshots.clone();
        let info = self.info.clone();
        let (chunk, reader) = tokio::task::spawn_blocking(move || {
            read_snapshot_chunk(&snapshots, &info, reader, offset)
        })
        .await
        .map_err(|error| TransportError::Snapshot(error.to_string()))??;
        self.reader = Some(reader);
        Ok(chunk)
    }
}

fn read_snapshot_chunk(
    snapshots: &SnapshotStore<RealDisk>,
    info: &SnapshotInfo,
    reader: Option<OpenData>,
    offset: u64,
) -> Result<(Bytes, OpenData), TransportError> {
    let failed = |error: std::io::Error| {
        TransportError::Snapshot(format!("reading snapshot {}: {error}", info.path.display()))
    };
    let mut reader = match reader {
        Some((reader, at)) if at == offset => reader,
        _ => {
            let mut reader: Box<dyn Read + Send> = Box::new(
                snapshots
                    .open_data(info)
                    .map_err(|error| TransportError::Snapshot(error.to_string()))?,
            );
            std::io::copy(&mut (&mut reader).take(offset), &mut std::io::sink()).map_err(failed)?;
            reader
        }
    };
    let want = (info.data_len.saturating_sub(offset)).min(SNAPSHOT_CHUNK_BYTES as u64) as usize;
    let mut chunk = vec![0u8; want];
    reader.read_exact(&mut chunk).map_err(failed)?;
    Ok((Bytes::from(chunk), (reader, offset + want as u64)))
}

impl Transport {
    /// Streams the snapshot named by a `Snapshot` message on its own connection, then reports
    /// the outcome to the node.
    fn send_snapshot(&self, message: Message) {
        let transport = self.clone();
        tokio::spawn(async move {
            let to = message.to;
            let ok = match transport.send_snapshot_with_retries(&message).await {
                Ok(()) => true,
                Err(error) => {
                    tracing::warn!(peer = %format_args!("{to:x}"), %error, "sending a snapshot failed");
                    false
                }
            };
            let _ = transport
                .inner
                .input
                .send(PeerInput::SnapshotStatus { to, ok })
                .await;
        });
    }

    /// The verified snapshot file for (index, term): one pass over the file on a blocking
    /// thread checks it and yields the data's length and checksum for the offer.
    async fn snapshot_source(&self, index: u64, term: u64) -> Result<SnapshotInfo, TransportError> {
        let snapshots = self.inner.snapshots.clone();
        tokio::task::spawn_blocking(move || storage::find_snapshot(&snapshots, index, term))
            .await
            .map_err(|error| TransportError::Snapshot(error.to_string()))?
            .map_err(|error| TransportError::Snapshot(error.to_string()))
    }

    async fn send_snapshot_with_retries(&self, message: &Message) -> Result<(), TransportError> {
        let MessageBody::Snapshot { meta } = &message.body else {
            return Err(TransportError::Protocol("not a snapshot message".into()));
        };
        let source = self.snapshot_source(meta.index, meta.term).await?;
        let mut encoded = BytesMut::new();
        message.encode(&mut encoded);
        let offer = Offer {
            message: encoded.freeze(),
            total_len: source.data_len,
            crc: source.data_crc,
        };
        let mut backoff = BACKOFF_MIN * 5;
        let mut last_error = TransportError::Timeout;
        for attempt in 1..=SNAPSHOT_SEND_ATTEMPTS {
            match self.send_snapshot_once(message.to, &offer, &source).await {
                Ok(()) => return Ok(()),
                Err(error) => {
                    tracing::info!(
                        peer = %format_args!("{:x}", message.to),
                        attempt, %error,
                        "snapshot transfer interrupted; will resume"
                    );
                    last_error = error;
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
        Err(last_error)
    }

    /// One connection's worth of a snapshot transfer: offer, resume point, chunks, outcome.
    async fn send_snapshot_once(
        &self,
        to: NodeId,
        offer: &Offer,
        source: &SnapshotInfo,
    ) -> Result<(), TransportError> {
        let urls = self
            .peer(to)
            .map(|peer| peer.urls.clone())
            .ok_or(TransportError::Refused("the recipient is not a known peer"))?;
        let inner = &self.inner;
        let mut stream = dial(
            inner.tls.as_ref(),
            &urls,
            CONN_SNAPSHOT,
            inner.cluster_id,
            inner.member_id,
            to,
        )
        .await?;
        write_frame_body(&mut stream, SNAP_OFFER, |buf| {
            put_bytes(buf, &offer.message);
            put_varint(buf, offer.total_len);
            buf.put_u32_le(offer.crc);
        })
        .await?;
        let mut offset = expect_offset(&mut stream, SNAP_RESUME).await?;
        if offset > offer.total_len {
            return Err(TransportError::Protocol(format!(
                "the receiver resumes at {offset}, beyond the {} bytes offered",
                offer.total_len
            )));
        }
        let mut chunks = SnapshotChunks::new(self.inner.snapshots.clone(), source.clone());
        while offset < offer.total_len {
            let chunk = chunks.read(offset).await?;
            write_frame_body(&mut stream, SNAP_CHUNK, |buf| {
                put_varint(buf, offset);
                put_bytes(buf, &chunk);
            })
            .await?;
            let acknowledged = expect_offset(&mut stream, SNAP_ACK).await?;
            // Every chunk must move the transfer forward, and not past its end.
            if acknowledged <= offset || acknowledged > offer.total_len {
                return Err(TransportError::Protocol(format!(
                    "the receiver acknowledged {acknowledged} bytes of {} after a chunk at {offset}",
                    offer.total_len
                )));
            }
            offset = acknowledged;
        }
        let body = read_timed_frame(&mut stream).await?;
        let mut reader = Reader::new(&body);
        if reader.u8("snapshot frame kind")? != SNAP_DONE {
            return Err(TransportError::Protocol(
                "expected the snapshot outcome".into(),
            ));
        }
        match reader.bool("snapshot accepted")? {
            true => Ok(()),
            false => Err(TransportError::Snapshot(
                "the receiver refused the snapshot (checksum or storage failure)".into(),
            )),
        }
    }

    async fn receive_snapshot(
        &self,
        mut stream: PeerStream,
        from: NodeId,
    ) -> Result<(), TransportError> {
        let body = read_timed_frame(&mut stream).await?;
        let mut reader = Reader::new(&body);
        if reader.u8("snapshot frame kind")? != SNAP_OFFER {
            return Err(TransportError::Protocol("expected a snapshot offer".into()));
        }
        let message_bytes = reader.bytes("snapshot message")?;
        let total_len = reader.varint("snapshot length")?;
        let crc = read_u32(&mut reader)?;
        reader.finish()?;
        let message = Message::decode_bytes(&message_bytes)?;
        let MessageBody::Snapshot { meta } = &message.body else {
            return Err(TransportError::Protocol(
                "the offer is not a Snapshot message".into(),
            ));
        };
        if message.from != from || message.to != self.inner.member_id {
            return Err(TransportError::Protocol(
                "the offer names other members".into(),
            ));
        }
        let partial = self.partial_for(
            from,
            meta,
            Offer {
                message: message_bytes.clone(),
                total_len,
                crc,
            },
        )?;
        let resume_at = lock(&partial).written;
        write_frame_body(&mut stream, SNAP_RESUME, |buf| put_varint(buf, resume_at)).await?;
        loop {
            let written = lock(&partial).written;
            if written >= total_len {
                break;
            }
            let body = read_timed_frame(&mut stream).await?;
            let mut reader = Reader::new(&body);
            if reader.u8("snapshot frame kind")? != SNAP_CHUNK {
                return Err(TransportError::Protocol("expected a snapshot chunk".into()));
            }
            let offset = reader.varint("chunk offset")?;
            let chunk = reader.bytes("chunk")?;
            reader.finish()?;
            let written = write_chunk(&partial, offset, chunk).await?;
            write_frame_body(&mut stream, SNAP_ACK, |buf| put_varint(buf, written)).await?;
        }
        let accepted = self.finish_snapshot(from, meta, &partial).await;
        write_frame_body(&mut stream, SNAP_DONE, |buf| {
            buf.put_u8(u8::from(accepted.is_ok()))
        })
        .await?;
        let message = accepted?;
        let _ = self
            .inner
            .input
            .send(PeerInput::Frame {
                from,
                frame: PeerFrame::Messages(vec![message]),
            })
            .await;
        Ok(())
    }

    /// The partial snapshot to continue for this offer, starting a new one if needed.
    fn partial_for(
        &self,
        from: NodeId,
        meta: &ballot_raft::SnapshotMeta,
        offer: Offer,
    ) -> Result<Arc<Mutex<PartialSnapshot>>, TransportError> {
        let key = (from, meta.index, meta.term);
        let mut partials = lock(&self.inner.partials);
        let now = Instant::now();
        // Forget abandoned transfers, and any older offer from the same sender.
        partials.retain(|(sender, index, term), partial| {
            let partial = lock(partial);
            now.duration_since(partial.last_activity) < SNAPSHOT_PARTIAL_TTL
                && (*sender != from || (*index, *term) == (meta.index, meta.term))
        });
        if let Some(existing) = partials.get(&key) {
            let same = {
                let existing = lock(existing);
                existing.total_len == offer.total_len
                    && existing.expected_crc == offer.crc
                    && existing.writer.is_some()
            };
            if same {
                return Ok(Arc::clone(existing));
            }
        }
        let writer = self
            .inner
            .snapshots
            .writer(meta.index, meta.term, encode_snapshot_meta(meta))
            .map_err(|error| TransportError::Snapshot(error.to_string()))?;
        let partial = Arc::new(Mutex::new(PartialSnapshot {
            writer: Some(writer),
            written: 0,
            crc: 0,
            total_len: offer.total_len,
            expected_crc: offer.crc,
            message: offer.message,
            last_activity: now,
        }));
        partials.insert(key, Arc::clone(&partial));
        Ok(partial)
    }

    /// Verifies length and checksum, makes the file durable and returns the Snapshot message
    /// to step into the core.
    async fn finish_snapshot(
        &self,
        from: NodeId,
        meta: &ballot_raft::SnapshotMeta,
        partial: &Arc<Mutex<PartialSnapshot>>,
    ) -> Result<Message, TransportError> {
        lock(&self.inner.partials).remove(&(from, meta.index, meta.term));
        let (writer, message) = {
            let mut partial = lock(partial);
            if partial.written != partial.total_len || partial.crc != partial.expected_crc {
                return Err(TransportError::Snapshot(format!(
                    "received {} bytes with CRC32C {:#010x}; the sender announced {} bytes with {:#010x}",
                    partial.written, partial.crc, partial.total_len, partial.expected_crc
                )));
            }
            (partial.writer.take(), partial.message.clone())
        };
        let writer =
            writer.ok_or_else(|| TransportError::Snapshot("snapshot already finished".into()))?;
        tokio::task::spawn_blocking(move || writer.finish())
            .await
            .map_err(|error| TransportError::Snapshot(error.to_string()))?
            .map_err(|error| TransportError::Snapshot(error.to_string()))?;
        Ok(Message::decode_bytes(&message)?)
    }
}

fn read_u32(reader: &mut Reader<'_>) -> Result<u32, WireError> {
    let mut bytes = [0u8; 4];
    for byte in &mut bytes {
        *byte = reader.u8("u32")?;
    }
    Ok(u32::from_le_bytes(bytes))
}

async fn read_timed_frame<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Bytes, TransportError> {
    // A live sender keeps the connection busy; a silent one for this long is gone.
    tokio::time::timeout(Duration::from_secs(30), read_frame(stream))
        .await
        .map_err(|_| TransportError::Timeout)?
}

async fn expect_offset<S: AsyncRead + Unpin>(
    stream: &mut S,
    kind: u8,
) -> Result<u64, TransportError> {
    let body = read_timed_frame(stream).await?;
    let mut reader = Reader::new(&body);
    if reader.u8("snapshot frame kind")? != kind {
        return Err(TransportError::Protocol(format!(
            "expected snapshot frame {kind}"
        )));
    }
    let offset = reader.varint("offset")?;
    reader.finish()?;
    Ok(offset)
}

/// Appends a chunk at `offset`; a chunk the receiver already has (a resend after a lost ack)
/// is skipped. Returns the new acknowledged offset.
async fn write_chunk(
    partial: &Arc<Mutex<PartialSnapshot>>,
    offset: u64,
    chunk: Bytes,
) -> Result<u64, TransportError> {
    let (writer, written) = {
        let mut partial = lock(partial);
        partial.last_activity = Instant::now();
        if offset != partial.written {
            return Err(TransportError::Protocol(format!(
                "chunk at offset {offset}, expected {}",
                partial.written
            )));
        }
        if partial.written + chunk.len() as u64 > partial.total_len {
            return Err(TransportError::Protocol(
                "chunk beyond the announced length".into(),
            ));
        }
        (partial.writer.take(), partial.written)
    };
    let Some(mut writer) = writer else {
        return Err(TransportError::Snapshot("snapshot writer missing".into()));
    };
    let to_write = chunk.clone();
    let (writer, result) = tokio::task::spawn_blocking(move || {
        let result = writer.write_chunk(&to_write);
        (writer, result)
    })
    .await
    .map_err(|error| TransportError::Snapshot(error.to_string()))?;
    let mut guard = lock(partial);
    guard.writer = Some(writer);
    result.map_err(|error| TransportError::Snapshot(error.to_string()))?;
    guard.crc = crc32c::crc32c_append(guard.crc, &chunk);
    guard.written = written + chunk.len() as u64;
    Ok(guard.written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ballot_raft::{ConfState, Entry, EntryKind, SnapshotMeta};

    const CLUSTER: u64 = 0xc1;
    const RECEIVER: u64 = 0xa;
    const SENDER: u64 = 0xb;

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "ballot-transport-{name}-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    fn body_of(frame: &PeerFrame) -> Bytes {
        let mut buf = BytesMut::new();
        frame.encode_to(&mut buf);
        let length = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        assert_eq!(length, buf.len() - 4, "the length prefix covers the frame");
        buf.freeze().slice(4..)
    }

    #[test]
    fn frames_round_trip() {
        let append = Message {
            from: 1,
            to: 2,
            term: 3,
            body: MessageBody::Append {
                prev_log_index: 4,
                prev_log_term: 3,
                entries: vec![Entry {
                    term: 3,
                    index: 5,
                    kind: EntryKind::Normal,
                    data: Bytes::from_static(b"payload"),
                }],
                commit: 4,
            },
        };
        let frames = [
            PeerFrame::Messages(vec![append.clone(), append]),
            PeerFrame::Forward(vec![Bytes::from_static(b"a"), Bytes::new()]),
            PeerFrame::ForwardConfChange {
                request_id: 9,
                change: Bytes::from_static(b"cc"),
            },
            PeerFrame::Reject {
                error: 3,
                request_ids: vec![1, 2, u64::MAX],
            },
            PeerFrame::LeaseRequest {
                request_id: 7,
                op: 2,
                lease_id: -5,
                keys: true,
            },
            PeerFrame::LeaseResponse {
                request_id: 7,
                error: 0,
                payload: Bytes::from_static(b"ttl"),
            },
        ];
        for frame in frames {
            assert_eq!(PeerFrame::decode(&body_of(&frame)).ok(), Some(frame));
        }
    }

    #[test]
    fn malformed_frames_are_errors() {
        for body in [
            &[][..],
            &[99][..],
            &[FRAME_MESSAGES, 5, 1][..],
            &[FRAME_FORWARD, 200][..],
            &[FRAME_REJECT, 1][..],
            &[FRAME_LEASE_REQUEST, 1, 1, 0][..],
        ] {
            assert!(
                PeerFrame::decode(&Bytes::copy_from_slice(body)).is_err(),
                "{body:?} must not decode"
            );
        }
        // A valid frame followed by junk is refused as a whole.
        let mut body = body_of(&PeerFrame::Reject {
            error: 1,
            request_ids: vec![1],
        })
        .to_vec();
        body.push(0);
        assert!(PeerFrame::decode(&Bytes::from(body)).is_err());
    }

    /// Random bytes, and every truncation and single-byte corruption of valid frames, decode to a
    /// value or an error: never a panic (a peer can send anything).
    #[test]
    fn arbitrary_peer_input_never_panics() {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let length = (next() % 64) as usize;
            let mut body: Vec<u8> = (0..length).map(|_| next() as u8).collect();
            if let Some(first) = body.first_mut() {
                *first = (*first % 8) + 1;
            }
            let bytes = Bytes::from(body);
            let _ = PeerFrame::decode(&bytes);
            let _ = crate::node::envelope::Envelope::decode(&bytes);
            let _ = crate::node::envelope::ConfContext::decode(&bytes);
            let _ = crate::node::members::Registry::decode(&bytes);
        }
        let valid = body_of(&PeerFrame::Messages(vec![Message {
            from: 1,
            to: 2,
            term: 3,
            body: MessageBody::Append {
                prev_log_index: 1,
                prev_log_term: 1,
                entries: vec![Entry {
                    term: 3,
                    index: 2,
                    kind: EntryKind::ConfChange,
                    data: Bytes::from_static(b"abc"),
                }],
                commit: 1,
            },
        }]));
        for cut in 0..valid.len() {
            // Just the kind byte is a valid, empty batch of messages; any other cut is not.
            if cut != 1 {
                assert!(
                    PeerFrame::decode(&valid.slice(..cut)).is_err(),
                    "cut at {cut}"
                );
            }
            for flip in [0x01u8, 0x80, 0xff] {
                let mut corrupted = valid.to_vec();
                corrupted[cut] ^= flip;
                let _ = PeerFrame::decode(&Bytes::from(corrupted));
            }
        }
    }

    struct Receiver {
        transport: Transport,
        input: mpsc::Receiver<PeerInput>,
        addr: SocketAddr,
        snapshots: SnapshotStore<RealDisk>,
        dir: std::path::PathBuf,
    }

    async fn receiver(name: &str) -> Receiver {
        let dir = temp_dir(name);
        let snapshots = SnapshotStore::open(RealDisk, &dir, 3).expect("snapshot store");
        let (input_tx, input) = mpsc::channel(16);
        let transport = Transport::new(CLUSTER, RECEIVER, input_tx, snapshots.clone(), None);
        transport.set_peer(SENDER, vec!["http://127.0.0.1:1".into()]);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        transport.serve(listener, false);
        Receiver {
            transport,
            input,
            addr,
            snapshots,
            dir,
        }
    }

    #[tokio::test]
    async fn connections_from_other_clusters_unknown_members_or_for_others_are_refused() {
        let receiver = receiver("refuse").await;
        let refused = |result: Result<PeerStream, TransportError>| match result {
            Err(TransportError::Refused(reason)) => reason,
            Err(other) => panic!("expected a refusal, got {other}"),
            Ok(_) => panic!("expected a refusal, got a connection"),
        };
        assert_eq!(
            refused(dial_addr(receiver.addr, None, CONN_STREAM, 0xdead, SENDER, RECEIVER).await),
            refusal_reason(STATUS_OTHER_CLUSTER)
        );
        assert_eq!(
            refused(dial_addr(receiver.addr, None, CONN_STREAM, CLUSTER, 0x77, RECEIVER).await),
            refusal_reason(STATUS_UNKNOWN_SENDER)
        );
        assert_eq!(
            refused(dial_addr(receiver.addr, None, CONN_STREAM, CLUSTER, SENDER, 0x99).await),
            refusal_reason(STATUS_WRONG_RECIPIENT)
        );
        assert!(
            dial_addr(receiver.addr, None, CONN_STREAM, CLUSTER, SENDER, RECEIVER)
                .await
                .is_ok()
        );
        let _ = std::fs::remove_dir_all(&receiver.dir);
    }

    #[tokio::test]
    async fn a_stream_delivers_frames_and_drops_the_connection_on_garbage() {
        let mut receiver = receiver("stream").await;
        let mut stream = dial_addr(receiver.addr, None, CONN_STREAM, CLUSTER, SENDER, RECEIVER)
            .await
            .expect("dial");
        let heartbeat = Message {
            from: SENDER,
            to: RECEIVER,
            term: 1,
            body: MessageBody::Heartbeat {
                commit: 0,
                read_ctx: 0,
            },
        };
        let mut buf = BytesMut::new();
        PeerFrame::Messages(vec![heartbeat.clone()]).encode_to(&mut buf);
        stream.write_all(&buf).await.expect("write");
        match receiver.input.recv().await {
            Some(PeerInput::Frame {
                from,
                frame: PeerFrame::Messages(messages),
            }) => {
                assert_eq!(from, SENDER);
                assert_eq!(messages, vec![heartbeat.clone()]);
            }
            other => panic!("unexpected input {other:?}"),
        }
        // A message claiming another sender is a protocol violation: the connection closes.
        let forged = Message {
            from: 0x42,
            ..heartbeat
        };
        buf.clear();
        PeerFrame::Messages(vec![forged]).encode_to(&mut buf);
        stream.write_all(&buf).await.expect("write");
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte))
            .await
            .expect("the receiver closes the connection");
        assert!(matches!(read, Ok(0) | Err(_)));
        assert!(receiver.input.try_recv().is_err(), "nothing was delivered");
        let _ = std::fs::remove_dir_all(&receiver.dir);
    }

    fn snapshot_message(index: u64) -> Message {
        Message {
            from: SENDER,
            to: RECEIVER,
            term: 2,
            body: MessageBody::Snapshot {
                meta: SnapshotMeta {
                    index,
                    term: 2,
                    conf: ConfState {
                        voters: vec![RECEIVER, SENDER],
                        ..ConfState::default()
                    },
                },
            },
        }
    }

    async fn offer(
        addr: SocketAddr,
        message: &Message,
        data: &[u8],
        crc: u32,
    ) -> (PeerStream, u64) {
        let mut stream = dial_addr(addr, None, CONN_SNAPSHOT, CLUSTER, SENDER, RECEIVER)
            .await
            .expect("dial");
        let mut encoded = BytesMut::new();
        message.encode(&mut encoded);
        write_frame_body(&mut stream, SNAP_OFFER, |buf| {
            put_bytes(buf, &encoded);
            put_varint(buf, data.len() as u64);
            buf.put_u32_le(crc);
        })
        .await
        .expect("offer");
        let resume = expect_offset(&mut stream, SNAP_RESUME)
            .await
            .expect("resume");
        (stream, resume)
    }

    async fn send_chunk(stream: &mut PeerStream, offset: u64, chunk: &[u8]) -> u64 {
        write_frame_body(stream, SNAP_CHUNK, |buf| {
            put_varint(buf, offset);
            put_bytes(buf, chunk);
        })
        .await
        .expect("chunk");
        expect_offset(stream, SNAP_ACK).await.expect("ack")
    }

    async fn outcome(stream: &mut PeerStream) -> bool {
        let body = read_timed_frame(stream).await.expect("outcome");
        assert_eq!(body[0], SNAP_DONE);
        body[1] == 1
    }

    /// The receiver stepped `message` into its node and stored `data` as that snapshot.
    async fn assert_snapshot_delivered(receiver: &mut Receiver, message: &Message, data: &[u8]) {
        match receiver.input.recv().await {
            Some(PeerInput::Frame {
                frame: PeerFrame::Messages(messages),
                ..
            }) => assert_eq!(messages, vec![message.clone()]),
            other => panic!("expected the Snapshot message, got {other:?}"),
        }
        let MessageBody::Snapshot { meta } = &message.body else {
            panic!("not a snapshot message: {message:?}")
        };
        let info =
            storage::find_snapshot(&receiver.snapshots, meta.index, meta.term).expect("stored");
        let stored = receiver.snapshots.load(&info.path).expect("load");
        assert_eq!(&stored.data[..], data);
    }

    #[tokio::test]
    async fn a_snapshot_transfer_resumes_after_a_broken_connection_and_is_checked() {
        let mut receiver = receiver("snapshot").await;
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let crc = crc32c::crc32c(&data);
        let message = snapshot_message(50);

        let (mut first, resume) = offer(receiver.addr, &message, &data, crc).await;
        assert_eq!(resume, 0);
        assert_eq!(send_chunk(&mut first, 0, &data[..100_000]).await, 100_000);
        drop(first);

        let (mut second, resume) = offer(receiver.addr, &message, &data, crc).await;
        assert_eq!(
            resume, 100_000,
            "the transfer resumes after the acknowledged bytes"
        );
        assert_eq!(
            send_chunk(&mut second, resume, &data[100_000..]).await,
            data.len() as u64
        );
        assert!(
            outcome(&mut second).await,
            "the receiver accepts a matching checksum"
        );
        assert_snapshot_delivered(&mut receiver, &message, &data).await;

        // A transfer whose bytes do not match the announced checksum is refused.
        let bad = snapshot_message(60);
        let (mut stream, _) = offer(receiver.addr, &bad, &data, crc ^ 1).await;
        send_chunk(&mut stream, 0, &data).await;
        assert!(
            !outcome(&mut stream).await,
            "a checksum mismatch is refused"
        );
        assert!(storage::find_snapshot(&receiver.snapshots, 60, 2).is_err());
        drop(receiver.transport);
        let _ = std::fs::remove_dir_all(&receiver.dir);
    }

    #[tokio::test]
    async fn a_snapshot_is_sent_from_its_file_in_chunks_and_stored_whole() {
        let mut receiver = receiver("send-from-file").await;
        let dir = temp_dir("send-from-file-sender");
        let snapshots = SnapshotStore::open(RealDisk, &dir, 3).expect("snapshot store");
        let (input_tx, _input) = mpsc::channel(16);
        let sender = Transport::new(CLUSTER, SENDER, input_tx, snapshots.clone(), None);
        sender.set_peer(RECEIVER, vec![format!("http://{}", receiver.addr)]);
        let message = snapshot_message(70);
        let MessageBody::Snapshot { meta } = &message.body else {
            unreachable!()
        };
        // Two and a half chunks.
        let data: Vec<u8> = (0..SNAPSHOT_CHUNK_BYTES * 5 / 2)
            .map(|i| (i % 253) as u8)
            .collect();
        let info = snapshots
            .save(70, 2, encode_snapshot_meta(meta), &data)
            .expect("save");

        // Chunks read from the file: in order, and again from any offset (a resumed transfer).
        let mut chunks = SnapshotChunks::new(snapshots.clone(), info);
        let mut offset = 0;
        while offset < data.len() {
            let chunk = chunks.read(offset as u64).await.expect("chunk");
            assert_eq!(&chunk[..], &data[offset..offset + chunk.len()]);
            offset += chunk.len();
        }
        let resumed = chunks.read(12_345).await.expect("resumed chunk");
        assert_eq!(&resumed[..], &data[12_345..12_345 + SNAPSHOT_CHUNK_BYTES]);

        sender
            .send_snapshot_with_retries(&message)
            .await
            .expect("sent");
        assert_snapshot_delivered(&mut receiver, &message, &data).await;
        drop(sender);
        drop(receiver.transport);
        let _ = std::fs::remove_dir_all(&receiver.dir);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
