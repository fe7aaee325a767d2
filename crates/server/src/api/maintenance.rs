//! The Maintenance service: Status, Alarm, Defragment, Hash, HashKV, Snapshot, MoveLeader
//! (etcd `v3rpc/maintenance.go`).
//!
//! Alarms are etcd's: a replicated set of (member, alarm) pairs, raised and lifted through the
//! log, so every member lists and enforces the same ones and they survive restarts (see
//! `node::alarms`). The one Ballot raises is NOSPACE, when a write would take a member's
//! `dbSize` past `--quota-backend-bytes`: while it is up, puts, txns with puts and lease grants
//! are refused on every member with etcd's "database space exceeded"; reads, deletes and
//! compactions go on. It stays until Alarm DEACTIVATE (`etcdctl alarm disarm`), as in etcd. A
//! member whose WAL disk is full also lists its own NOSPACE alarm; that one is local and ends
//! when there is space again. Defragment takes a snapshot now: the state lives in memory and is
//! compacted in place, and a snapshot rewrites its durable form without the compacted history,
//! which is what brings `dbSize` down (docs/api.md).

use std::io;
use std::pin::Pin;

use ballot_mvcc::Store;
use ballot_proto::etcdserverpb::{
    AlarmRequest, AlarmResponse, DefragmentRequest, DefragmentResponse, DowngradeRequest,
    DowngradeResponse, HashKvRequest, HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest,
    MoveLeaderResponse, ResponseHeader, SnapshotRequest, SnapshotResponse, StatusRequest,
    StatusResponse, maintenance_server::Maintenance,
};
use bytes::{Bytes, BytesMut};
use futures::Stream;
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};

use super::{Api, ApiNode, ETCD_SERVER_VERSION, error, record};
use crate::metrics::GrpcMethod;
use crate::node::alarms::alarm_name;

/// Bytes per Snapshot message (etcd sends 32 KiB chunks).
pub const SNAPSHOT_CHUNK_BYTES: usize = 32 * 1024;
/// `etcdctl snapshot` recognises a trailing SHA-256 when the file size modulo this is 32
/// (`hasChecksum` in etcd's snapshot package), so the data is padded to a multiple of it.
pub const SNAPSHOT_ALIGN_BYTES: usize = 512;

/// A backup for the Snapshot stream: its size, known before the first byte, and its bytes,
/// written in order (a piece at a time, so the whole backup need not be in memory).
pub trait BackupSource: Send + 'static {
    fn size_bytes(&self) -> u64;
    fn write_to(&self, out: &mut dyn io::Write) -> io::Result<()>;
}

impl BackupSource for Bytes {
    fn size_bytes(&self) -> u64 {
        Bytes::len(self) as u64
    }

    fn write_to(&self, out: &mut dyn io::Write) -> io::Result<()> {
        out.write_all(self)
    }
}

impl BackupSource for crate::etcd_backup::Export {
    fn size_bytes(&self) -> u64 {
        crate::etcd_backup::Export::size_bytes(self)
    }

    fn write_to(&self, out: &mut dyn io::Write) -> io::Result<()> {
        crate::etcd_backup::Export::write_to(self, out)
    }
}

/// Cuts a backup written into it into the Snapshot stream's messages, in etcd's format as
/// `etcdctl snapshot save` writes it: the data (zero-padded to a multiple of 512 bytes) in
/// chunks whose `remaining_bytes` count the data still to come, then one message with the
/// SHA-256 of the padded data and `remaining_bytes = 0`. Each message goes to `send` as soon
/// as it is full; an error from `send` (the client went away) ends the writing.
pub struct SnapshotChunker<F> {
    send: F,
    header: Option<ResponseHeader>,
    len: u64,
    padded_len: u64,
    sent: u64,
    chunk: BytesMut,
    digest: Sha256,
}

impl<F: FnMut(SnapshotResponse) -> io::Result<()>> SnapshotChunker<F> {
    /// For a backup of `len` bytes.
    pub fn new(len: u64, header: Option<ResponseHeader>, send: F) -> Self {
        let align = SNAPSHOT_ALIGN_BYTES as u64;
        SnapshotChunker {
            send,
            header,
            len,
            padded_len: len.div_ceil(align) * align,
            sent: 0,
            chunk: BytesMut::with_capacity(SNAPSHOT_CHUNK_BYTES),
            digest: Sha256::new(),
        }
    }

    /// Pads the data, sends what is left of it and then the checksum. Fails if less than the
    /// announced length was written (more fails at the write).
    pub fn finish(mut self) -> io::Result<()> {
        let written = self.sent + self.chunk.len() as u64;
        if written != self.len {
            return Err(io::Error::other(format!(
                "the backup was {written} bytes, not the {} announced",
                self.len
            )));
        }
        let mut padding = &vec![0u8; (self.padded_len - written) as usize][..];
        while !padding.is_empty() {
            let taken = self.push(padding)?;
            padding = &padding[taken..];
        }
        self.send_chunk()?;
        let digest = std::mem::take(&mut self.digest).finalize();
        (self.send)(SnapshotResponse {
            header: self.header,
            remaining_bytes: 0,
            blob: Bytes::copy_from_slice(digest.as_slice()),
            version: String::new(),
        })
    }

    /// Takes what of `bytes` fits in the chunk being filled, sending it when full.
    fn push(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let take = bytes.len().min(SNAPSHOT_CHUNK_BYTES - self.chunk.len());
        self.chunk.extend_from_slice(&bytes[..take]);
        if self.chunk.len() == SNAPSHOT_CHUNK_BYTES {
            self.send_chunk()?;
        }
        Ok(take)
    }

    fn send_chunk(&mut self) -> io::Result<()> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        let blob = self.chunk.split().freeze();
        self.digest.update(&blob);
        self.sent += blob.len() as u64;
        (self.send)(SnapshotResponse {
            header: self.header,
            remaining_bytes: self.padded_len - self.sent,
            blob,
            version: String::new(),
        })
    }
}

impl<F: FnMut(SnapshotResponse) -> io::Result<()>> io::Write for SnapshotChunker<F> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let written = self.sent + self.chunk.len() as u64;
        if written + bytes.len() as u64 > self.len {
            return Err(io::Error::other(format!(
                "the backup is longer than the {} bytes announced",
                self.len
            )));
        }
        self.push(bytes)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The Snapshot stream's messages for `data` (see [`SnapshotChunker`]), all at once.
pub fn snapshot_messages(data: &[u8]) -> Vec<SnapshotResponse> {
    let mut messages = Vec::new();
    let mut chunker = SnapshotChunker::new(data.len() as u64, None, |message| {
        messages.push(message);
        Ok(())
    });
    io::Write::write_all(&mut chunker, data)
        .and_then(|()| chunker.finish())
        .expect("the data is as long as announced and kept in memory");
    messages
}

/// Messages of a Snapshot stream waiting to be sent: a few chunks, so a backup is made about
/// as fast as the client takes it and no faster.
const SNAPSHOT_QUEUE_MESSAGES: usize = 4;

impl<N: ApiNode> Api<N> {
    pub(crate) fn status(&self) -> StatusResponse {
        let status = self.node.status();
        let mut errors = Vec::new();
        // etcd reports a missing leader in `errors` (etcdctl prints it in endpoint status).
        if status.leader_id == 0 {
            errors.push("etcdserver: no leader".to_owned());
        }
        // etcd lists its alarms there too, in the protobuf text form of `AlarmMember`.
        for alarm in &status.alarms {
            errors.push(format!(
                "memberID:{} alarm:{} ",
                alarm.member_id,
                alarm_name(alarm.alarm)
            ));
        }
        let db_size = i64::try_from(status.db_size_bytes).unwrap_or(i64::MAX);
        StatusResponse {
            header: self.current_header(),
            version: ETCD_SERVER_VERSION.to_owned(),
            db_size,
            leader: status.leader_id,
            // etcd's raftIndex is the committed index (`EtcdServer.Index`).
            raft_index: status.commit_index,
            raft_term: status.term,
            raft_applied_index: status.applied_index,
            errors,
            db_size_in_use: db_size,
            is_learner: status.is_learner,
            ..StatusResponse::default()
        }
    }

    pub(crate) async fn hash_kv(&self, req: HashKvRequest) -> Result<HashKvResponse, Status> {
        let hash = self.hash_store(req.revision).await?;
        Ok(HashKvResponse {
            header: self.header_at(hash.current_revision),
            hash: hash.hash,
            compact_revision: hash.compact_revision,
            hash_revision: hash.hash_revision,
        })
    }

    /// etcd hashes its whole backend file; Ballot's nearest equivalent is the hash of every key
    /// version kept, i.e. HashKV at the current revision.
    pub(crate) async fn hash(&self) -> Result<HashResponse, Status> {
        let hash = self.hash_store(0).await?;
        Ok(HashResponse {
            header: self.header_at(hash.current_revision),
            hash: hash.hash,
        })
    }

    /// HashKV at `revision`, of a snapshot of the store hashed on a blocking thread: the hash
    /// reads the whole history, and neither the store's writers nor this runtime's workers
    /// wait for it.
    async fn hash_store(&self, revision: i64) -> Result<ballot_mvcc::HashKv, Status> {
        let snapshot = self.node.with_store(Store::snapshot_state);
        tokio::task::spawn_blocking(move || snapshot.hash_kv(revision))
            .await
            .map_err(|_| Status::internal("ballot: the hash was not computed"))?
            .map_err(error::mvcc)
    }

    /// The Snapshot stream of this member's backup. With `require_leader` (the `hasleader`
    /// metadata) it ends with "etcdserver: no leader" once the member has lost its leader, as
    /// etcd ends its streams (the backup being written stops with it).
    pub(crate) async fn snapshot(&self, require_leader: bool) -> Result<SnapshotStream, Status> {
        let backup = self.node.backup_snapshot().await?;
        let stream = stream_backup(backup, self.current_header());
        if !require_leader {
            return Ok(stream);
        }
        let (node, election_timeout) = (self.node.clone(), self.options.election_timeout);
        let lost = async move { super::leader_lost(&node, election_timeout).await };
        Ok(end_when(stream, lost))
    }

    pub(crate) async fn move_leader(
        &self,
        req: MoveLeaderRequest,
    ) -> Result<MoveLeaderResponse, Status> {
        self.node.move_leader(req.target_id).await?;
        Ok(MoveLeaderResponse {
            header: self.current_header(),
        })
    }
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

/// `stream` until `lost` completes, then "etcdserver: no leader" and the end. `lost` runs on a
/// task of its own, so it keeps time however fast or slow the client reads; the task ends
/// with the stream.
fn end_when(
    stream: SnapshotStream,
    lost: impl std::future::Future<Output = ()> + Send + 'static,
) -> SnapshotStream {
    use futures::StreamExt;
    let (signal, lost_signal) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut signal = signal;
        tokio::select! {
            () = lost => {
                let _ = signal.send(());
            }
            () = signal.closed() => {}
        }
    });
    Box::pin(futures::stream::unfold(
        (stream, Some(lost_signal)),
        |(mut stream, lost)| async move {
            let mut lost = lost?;
            tokio::select! {
                biased;
                Ok(()) = &mut lost => {
                    let status = Status::from(crate::node::NodeError::NoLeader);
                    Some((Err(status), (stream, None)))
                }
                item = stream.next() => item.map(|item| (item, (stream, Some(lost)))),
            }
        },
    ))
}

/// A Snapshot stream of `backup`, written on a blocking thread as the client reads it: at most
/// a few messages ahead of the client, so a backup never sits whole in memory. A client that
/// goes away ends the writing.
fn stream_backup(backup: Box<dyn BackupSource>, header: Option<ResponseHeader>) -> SnapshotStream {
    let (sender, receiver) = tokio::sync::mpsc::channel(SNAPSHOT_QUEUE_MESSAGES);
    tokio::task::spawn_blocking(move || {
        let gone = || io::Error::new(io::ErrorKind::BrokenPipe, "the client went away");
        let mut chunker = SnapshotChunker::new(backup.size_bytes(), header, |message| {
            sender.blocking_send(Ok(message)).map_err(|_| gone())
        });
        let result = backup
            .write_to(&mut chunker)
            .and_then(|()| chunker.finish());
        match result {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::BrokenPipe => {
                tracing::debug!("a Snapshot stream ended before the backup did")
            }
            Err(error) => {
                tracing::error!(%error, "writing a backup failed");
                let _ = sender.blocking_send(Err(Status::internal(format!(
                    "ballot: writing the backup failed: {error}"
                ))));
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))
}

#[tonic::async_trait]
impl<N: ApiNode> Maintenance for Api<N> {
    async fn alarm(
        &self,
        request: Request<AlarmRequest>,
    ) -> Result<Response<AlarmResponse>, Status> {
        let request = request.into_inner();
        let result = self
            .node
            .alarm(request.action, request.member_id, request.alarm)
            .await
            .map(|alarms| AlarmResponse {
                header: self.current_header(),
                alarms,
            })
            .map_err(Status::from);
        record(GrpcMethod::MaintenanceAlarm, result).map(Response::new)
    }

    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        record(GrpcMethod::MaintenanceStatus, Ok(Api::status(self))).map(Response::new)
    }

    async fn defragment(
        &self,
        _request: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        let result = self
            .node
            .defragment()
            .await
            .map(|()| DefragmentResponse {
                header: self.current_header(),
            })
            .map_err(Status::from);
        record(GrpcMethod::MaintenanceDefragment, result).map(Response::new)
    }

    async fn hash(&self, _request: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        record(GrpcMethod::MaintenanceHash, Api::hash(self).await).map(Response::new)
    }

    async fn hash_kv(
        &self,
        request: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        let result = Api::hash_kv(self, request.into_inner()).await;
        record(GrpcMethod::MaintenanceHashKv, result).map(Response::new)
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(
        &self,
        request: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let require_leader = super::requires_leader(request.metadata().as_ref());
        let stream = record(
            GrpcMethod::MaintenanceSnapshot,
            Api::snapshot(self, require_leader).await,
        )?;
        Ok(Response::new(stream))
    }

    async fn move_leader(
        &self,
        request: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        let result = Api::move_leader(self, request.into_inner()).await;
        record(GrpcMethod::MaintenanceMoveLeader, result).map(Response::new)
    }

    async fn downgrade(
        &self,
        _request: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        let result = Err(Status::unimplemented(
            "ballot: cluster downgrade is not supported",
        ));
        record(GrpcMethod::MaintenanceDowngrade, result).map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A backup that writes `wrote` bytes after announcing `announced`.
    fn chunk(announced: u64, wrote: usize) -> io::Result<usize> {
        let mut messages = 0;
        let mut chunker = SnapshotChunker::new(announced, None, |_| {
            messages += 1;
            Ok(())
        });
        io::Write::write_all(&mut chunker, &vec![7u8; wrote]).and_then(|()| chunker.finish())?;
        Ok(messages)
    }

    #[test]
    fn a_backup_of_another_length_than_announced_is_an_error() {
        assert_eq!(chunk(1000, 1000).unwrap(), 2);
        let longer = chunk(1000, 1001).unwrap_err();
        assert!(
            longer
                .to_string()
                .contains("longer than the 1000 bytes announced"),
            "{longer}"
        );
        let shorter = chunk(100_000, 1000).unwrap_err();
        assert!(
            shorter
                .to_string()
                .contains("was 1000 bytes, not the 100000 announced"),
            "{shorter}"
        );
    }

    #[test]
    fn a_failed_send_ends_the_writing() {
        let mut sent = 0;
        let mut chunker = SnapshotChunker::new(10 * SNAPSHOT_CHUNK_BYTES as u64, None, |_| {
            sent += 1;
            if sent == 2 {
                return Err(io::Error::new(io::ErrorKind::BrokenPipe, "gone"));
            }
            Ok(())
        });
        let error =
            io::Write::write_all(&mut chunker, &vec![0u8; 10 * SNAPSHOT_CHUNK_BYTES]).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::BrokenPipe);
        drop(chunker);
        assert_eq!(sent, 2, "nothing sent after the failure");
    }

    /// A backup of `chunks` Snapshot messages that counts the bytes it has written and tells
    /// how its writing ended.
    struct CountingBackup {
        chunks: usize,
        written: Arc<AtomicUsize>,
        ended: Mutex<Option<tokio::sync::oneshot::Sender<Option<io::ErrorKind>>>>,
    }

    impl CountingBackup {
        fn new(
            chunks: usize,
        ) -> (
            CountingBackup,
            Arc<AtomicUsize>,
            tokio::sync::oneshot::Receiver<Option<io::ErrorKind>>,
        ) {
            let written = Arc::new(AtomicUsize::new(0));
            let (ended, end) = tokio::sync::oneshot::channel();
            let backup = CountingBackup {
                chunks,
                written: written.clone(),
                ended: Mutex::new(Some(ended)),
            };
            (backup, written, end)
        }

        fn write_pages(&self, out: &mut dyn io::Write) -> io::Result<()> {
            let page = vec![1u8; 4096];
            for _ in 0..self.chunks * SNAPSHOT_CHUNK_BYTES / page.len() {
                out.write_all(&page)?;
                self.written.fetch_add(page.len(), Ordering::SeqCst);
            }
            Ok(())
        }
    }

    impl BackupSource for CountingBackup {
        fn size_bytes(&self) -> u64 {
            (self.chunks * SNAPSHOT_CHUNK_BYTES) as u64
        }

        fn write_to(&self, out: &mut dyn io::Write) -> io::Result<()> {
            let result = self.write_pages(out);
            if let Some(ended) = self.ended.lock().unwrap().take() {
                let _ = ended.send(result.as_ref().err().map(io::Error::kind));
            }
            result
        }
    }

    #[tokio::test]
    async fn a_backup_is_written_no_faster_than_the_client_reads_it() {
        use futures::StreamExt;
        let (backup, written, ended) = CountingBackup::new(64);
        let mut stream = stream_backup(Box::new(backup), None);
        // Ahead of the client: the queue, the message being sent, the chunk being filled.
        let ahead = (SNAPSHOT_QUEUE_MESSAGES + 2) * SNAPSHOT_CHUNK_BYTES;
        let mut received = 0;
        let mut messages = 0;
        while let Some(message) = stream.next().await {
            let message = message.expect("a chunk");
            messages += 1;
            received += message.blob.len();
            let written = written.load(Ordering::SeqCst);
            assert!(
                written <= received + ahead,
                "{written} bytes written with {received} received"
            );
            tokio::task::yield_now().await;
        }
        assert_eq!(messages, 64 + 1, "every chunk, then the checksum");
        assert_eq!(ended.await.expect("the writing ended"), None);
        assert_eq!(written.load(Ordering::SeqCst), 64 * SNAPSHOT_CHUNK_BYTES);
    }

    #[tokio::test]
    async fn a_client_that_goes_away_ends_the_writing() {
        use futures::StreamExt;
        // 32 GiB, were it written to the end.
        let (backup, written, ended) = CountingBackup::new(1 << 20);
        let mut stream = stream_backup(Box::new(backup), None);
        stream
            .next()
            .await
            .expect("a first chunk")
            .expect("a chunk");
        drop(stream);
        let error = ended.await.expect("the writing ended");
        assert_eq!(error, Some(io::ErrorKind::BrokenPipe));
        let written = written.load(Ordering::SeqCst);
        assert!(written < 64 * SNAPSHOT_CHUNK_BYTES, "stopped at {written}");
    }

    #[tokio::test]
    async fn a_stream_ends_with_no_leader_when_the_leader_is_lost_however_it_is_read() {
        use futures::StreamExt;
        let chunk = || {
            Ok(SnapshotResponse {
                blob: Bytes::from_static(b"chunk"),
                ..SnapshotResponse::default()
            })
        };
        // An endless stream: it ends only by the leader's loss.
        let endless: SnapshotStream = Box::pin(futures::stream::repeat_with(chunk));
        let (lose, lost) = tokio::sync::oneshot::channel::<()>();
        let mut stream = end_when(endless, async move {
            let _ = lost.await;
        });
        for _ in 0..3 {
            assert!(matches!(stream.next().await, Some(Ok(_))));
        }
        lose.send(()).expect("the monitor is waiting");
        // The monitor's task tells the stream; chunks ready meanwhile may still come first.
        let mut chunks_after = 0;
        let ended = loop {
            match stream.next().await {
                Some(Ok(_)) => chunks_after += 1,
                other => break other,
            }
            assert!(chunks_after < 1_000_000, "the stream did not end");
            tokio::task::yield_now().await;
        };
        match ended {
            Some(Err(status)) => {
                assert_eq!(status.code(), tonic::Code::Unavailable);
                assert_eq!(status.message(), "etcdserver: no leader");
            }
            other => panic!("expected no leader, got {other:?}"),
        }
        assert!(stream.next().await.is_none(), "nothing after the error");
    }

    #[test]
    fn snapshot_stream_is_padded_and_ends_with_its_sha256() {
        for data_len in [
            0usize,
            1,
            511,
            512,
            513,
            SNAPSHOT_CHUNK_BYTES + 7,
            3 * SNAPSHOT_CHUNK_BYTES,
        ] {
            let data: Vec<u8> = (0..data_len).map(|i| (i % 251) as u8).collect();
            let messages = snapshot_messages(&data);
            let file: Vec<u8> = messages
                .iter()
                .flat_map(|m| m.blob.iter().copied())
                .collect();
            assert_eq!(
                file.len() % SNAPSHOT_ALIGN_BYTES,
                32,
                "data of {data_len} bytes"
            );
            let (body, checksum) = file.split_at(file.len() - 32);
            assert_eq!(&body[..data_len], &data[..]);
            assert!(body[data_len..].iter().all(|byte| *byte == 0));
            assert_eq!(checksum, Sha256::digest(body).as_slice());
            let last = messages.last().expect("at least the checksum message");
            assert_eq!(last.remaining_bytes, 0);
            // remaining_bytes counts down to 0 over the data chunks.
            let data_messages = &messages[..messages.len() - 1];
            let mut remaining = body.len();
            for message in data_messages {
                assert!(message.blob.len() <= SNAPSHOT_CHUNK_BYTES);
                remaining -= message.blob.len();
                assert_eq!(message.remaining_bytes, remaining as u64);
            }
        }
    }
}
