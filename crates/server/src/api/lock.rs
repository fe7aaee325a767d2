//! The `v3lockpb.Lock` service: etcd's distributed mutex run on the server (etcd
//! `v3lock.go`, which runs `concurrency.Mutex` against its own KV).
//!
//! Lock(name, lease): the key `name/<lease in hex>` is created with the lease in a Txn unless it
//! exists (a retried Lock with the same lease re-enters its queue position); the caller owns the
//! lock once no key under `name/` has a smaller create revision. Until then the call waits for
//! the deletion of the nearest older key, as `concurrency.waitDeletes` does, through a watch on
//! the node's hub (no polling). The key dies with the lease, so a crashed holder frees the lock
//! when its lease expires. Unlock(key) deletes the key.

use ballot_mvcc::{ApplyOutcome, Command, prefix_range_end};
use ballot_proto::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
    WatchCreateRequest, compare, range_request, request_op, response_op,
    watch_create_request::FilterType,
};
use ballot_proto::mvccpb::event::EventType;
use ballot_proto::v3lockpb::{
    LockRequest, LockResponse, UnlockRequest, UnlockResponse, lock_server::Lock,
};
use bytes::Bytes;
use tonic::{Request, Response, Status};

use super::{Api, ApiNode, error, record};
use crate::metrics::GrpcMethod;

impl<N: ApiNode> Api<N> {
    pub(crate) async fn lock(&self, req: LockRequest) -> Result<LockResponse, Status> {
        let prefix = {
            let mut prefix = req.name.to_vec();
            prefix.push(b'/');
            prefix
        };
        let key = Bytes::from([prefix.as_slice(), format!("{:x}", req.lease).as_bytes()].concat());
        let (my_revision, _) = self.enqueue(&key, req.lease, Bytes::new()).await?;
        self.wait_turn(&prefix, my_revision).await?;
        Ok(LockResponse {
            header: self.current_header(),
            key,
        })
    }

    /// Waits until no key under `prefix` was created before `my_revision` (etcd
    /// `waitDeletes`).
    pub(crate) async fn wait_turn(&self, prefix: &[u8], my_revision: i64) -> Result<(), Status> {
        loop {
            self.node.read_barrier().await?;
            let older = self.nearest_older(prefix, my_revision)?;
            let Some((older_key, revision)) = older else {
                return Ok(());
            };
            self.wait_deleted(older_key, revision).await?;
        }
    }

    /// Creates `key` with `lease` and `value` unless it exists. Returns its create revision
    /// and, when it existed, its current value.
    pub(crate) async fn enqueue(
        &self,
        key: &Bytes,
        lease: i64,
        value: Bytes,
    ) -> Result<(i64, Option<Bytes>), Status> {
        let absent = Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Create as i32,
            key: key.clone(),
            target_union: Some(compare::TargetUnion::CreateRevision(0)),
            ..Compare::default()
        };
        let get = RequestOp {
            request: Some(request_op::Request::RequestRange(RangeRequest {
                key: key.clone(),
                ..RangeRequest::default()
            })),
        };
        let put = RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: key.clone(),
                value,
                lease,
                ..PutRequest::default()
            })),
        };
        let txn = TxnRequest {
            compare: vec![absent],
            success: vec![put],
            failure: vec![get],
        };
        let response = match self.propose_checked(Command::Txn(txn)).await? {
            ApplyOutcome::Txn(response) => response,
            other => return Err(error::unexpected_outcome(other)),
        };
        if response.succeeded {
            return Ok((response.header.map_or(0, |header| header.revision), None));
        }
        match response
            .responses
            .first()
            .and_then(|op| op.response.as_ref())
        {
            Some(response_op::Response::ResponseRange(range)) => range
                .kvs
                .first()
                .map(|kv| (kv.create_revision, Some(kv.value.clone())))
                .ok_or_else(|| Status::internal("ballot: lock key vanished")),
            _ => Err(Status::internal("ballot: unexpected lock txn response")),
        }
    }

    /// The key under `prefix` created last before `revision`, if any (etcd `WithLastCreate`
    /// and `WithMaxCreateRev`).
    pub(crate) fn nearest_older(
        &self,
        prefix: &[u8],
        revision: i64,
    ) -> Result<Option<(Bytes, i64)>, Status> {
        let request = RangeRequest {
            key: Bytes::copy_from_slice(prefix),
            range_end: Bytes::from(prefix_range_end(prefix)),
            limit: 1,
            sort_order: range_request::SortOrder::Descend as i32,
            sort_target: range_request::SortTarget::Create as i32,
            max_create_revision: revision - 1,
            ..RangeRequest::default()
        };
        let response = self
            .node
            .with_store(|store| store.range(&request))
            .map_err(error::mvcc)?;
        Ok(response
            .kvs
            .first()
            .map(|kv| (kv.key.clone(), response.header.map_or(0, |h| h.revision))))
    }

    /// Waits until `key` is deleted after `revision`.
    pub(crate) async fn wait_deleted(&self, key: Bytes, revision: i64) -> Result<(), Status> {
        let stream = self.node.watch_hub().open_stream(16);
        stream.create(&WatchCreateRequest {
            key,
            start_revision: revision + 1,
            filters: vec![FilterType::Noput as i32],
            ..WatchCreateRequest::default()
        });
        loop {
            let responses = self.node.with_store(|store| stream.poll(store, 1000));
            for response in responses {
                let deleted = response
                    .events
                    .iter()
                    .any(|event| event.r#type == EventType::Delete as i32);
                // A compacted start means the key changed in history we cannot see: look again.
                if deleted || response.canceled {
                    return Ok(());
                }
            }
            stream.changed().await;
        }
    }

    pub(crate) async fn unlock(&self, req: UnlockRequest) -> Result<UnlockResponse, Status> {
        let delete = DeleteRangeRequest {
            key: req.key,
            ..DeleteRangeRequest::default()
        };
        let response = self.delete_range(delete).await?;
        Ok(UnlockResponse {
            header: response.header,
        })
    }
}

#[tonic::async_trait]
impl<N: ApiNode> Lock for Api<N> {
    async fn lock(&self, request: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let result = Api::lock(self, request.into_inner()).await;
        record(GrpcMethod::LockLock, result).map(Response::new)
    }

    async fn unlock(
        &self,
        request: Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        let result = Api::unlock(self, request.into_inner()).await;
        record(GrpcMethod::LockUnlock, result).map(Response::new)
    }
}
