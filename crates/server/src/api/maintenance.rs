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

use std::pin::Pin;

use ballot_proto::etcdserverpb::{
    AlarmRequest, AlarmResponse, DefragmentRequest, DefragmentResponse, DowngradeRequest,
    DowngradeResponse, HashKvRequest, HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest,
    MoveLeaderResponse, SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse,
    maintenance_server::Maintenance,
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

/// The Snapshot stream's messages for `data`: etcd's format as `etcdctl snapshot save` writes
/// it: the data (zero-padded to a multiple of 512 bytes) in chunks whose `remaining_bytes` count
/// the data still to come, then one message with the SHA-256 of the padded data and
/// `remaining_bytes = 0`.
pub fn snapshot_messages(data: &[u8]) -> Vec<SnapshotResponse> {
    let padded_len = data.len().div_ceil(SNAPSHOT_ALIGN_BYTES) * SNAPSHOT_ALIGN_BYTES;
    let mut padded = BytesMut::with_capacity(padded_len);
    padded.extend_from_slice(data);
    padded.resize(padded_len, 0);
    let padded = padded.freeze();
    let digest = Sha256::digest(&padded);
    let mut messages = Vec::with_capacity(padded_len / SNAPSHOT_CHUNK_BYTES + 2);
    let mut sent = 0;
    while sent < padded_len {
        let end = (sent + SNAPSHOT_CHUNK_BYTES).min(padded_len);
        messages.push(SnapshotResponse {
            header: None,
            remaining_bytes: (padded_len - end) as u64,
            blob: padded.slice(sent..end),
            version: String::new(),
        });
        sent = end;
    }
    messages.push(SnapshotResponse {
        header: None,
        remaining_bytes: 0,
        blob: Bytes::copy_from_slice(digest.as_slice()),
        version: String::new(),
    });
    messages
}

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

    pub(crate) fn hash_kv(&self, req: HashKvRequest) -> Result<HashKvResponse, Status> {
        let (result, current) = self
            .node
            .with_store(|store| (store.hash_kv(req.revision), store.current_revision()));
        let hash = result.map_err(error::mvcc)?;
        Ok(HashKvResponse {
            header: self.header_at(current),
            hash: hash.hash,
            compact_revision: hash.compact_revision,
            hash_revision: hash.hash_revision,
        })
    }

    /// etcd hashes its whole backend file; Ballot's nearest equivalent is the hash of every key
    /// version kept, i.e. HashKV at the current revision.
    pub(crate) fn hash(&self) -> Result<HashResponse, Status> {
        let (result, current) = self
            .node
            .with_store(|store| (store.hash_kv(0), store.current_revision()));
        let hash = result.map_err(error::mvcc)?;
        Ok(HashResponse {
            header: self.header_at(current),
            hash: hash.hash,
        })
    }

    pub(crate) async fn snapshot(&self) -> Result<Vec<SnapshotResponse>, Status> {
        let data = self.node.backup_snapshot().await?;
        let header = self.current_header();
        let mut messages = snapshot_messages(&data);
        for message in &mut messages {
            message.header = header;
        }
        Ok(messages)
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
        record(GrpcMethod::MaintenanceHash, Api::hash(self)).map(Response::new)
    }

    async fn hash_kv(
        &self,
        request: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        let result = Api::hash_kv(self, request.into_inner());
        record(GrpcMethod::MaintenanceHashKv, result).map(Response::new)
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(
        &self,
        _request: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let messages = record(GrpcMethod::MaintenanceSnapshot, Api::snapshot(self).await)?;
        let stream = futures::stream::iter(messages.into_iter().map(Ok));
        Ok(Response::new(Box::pin(stream)))
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
    use super::*;

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
