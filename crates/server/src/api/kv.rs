//! The KV service: Range, Put, DeleteRange, Txn, Compact (etcd `v3rpc/key.go` and
//! `etcdserver/v3_server.go`).
//!
//! Writes are replicated through the node and answered with what applying them produced.
//! Reads are served from the local store: after a read barrier (ReadIndex) unless the request
//! asks for a serializable read. A Txn that cannot write is served the same way, without
//! replication, as etcd does (`isTxnReadonly`), after a barrier unless every Range in it is
//! serializable (`isTxnSerializable`).

use ballot_mvcc::{ApplyOutcome, Command, is_txn_read_only};
use ballot_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse, kv_server::Kv,
    request_op::Request as Op,
};
use tonic::{Request, Response, Status};

use super::{Api, ApiNode, error, record};
use crate::metrics::GrpcMethod;

impl<N: ApiNode> Api<N> {
    pub(crate) async fn range(&self, req: RangeRequest) -> Result<RangeResponse, Status> {
        ballot_mvcc::check_range(&req).map_err(error::mvcc)?;
        if !req.serializable {
            self.node.read_barrier().await?;
        }
        let mut response = self
            .node
            .with_store(|store| store.range(&req))
            .map_err(error::mvcc)?;
        response.header = self.complete(response.header);
        Ok(response)
    }

    pub(crate) async fn put(&self, req: PutRequest) -> Result<PutResponse, Status> {
        match self.propose_checked(Command::Put(req)).await? {
            ApplyOutcome::Put(mut response) => {
                response.header = self.complete(response.header);
                Ok(response)
            }
            other => Err(error::unexpected_outcome(other)),
        }
    }

    pub(crate) async fn delete_range(
        &self,
        req: DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, Status> {
        match self.propose_checked(Command::DeleteRange(req)).await? {
            ApplyOutcome::DeleteRange(mut response) => {
                response.header = self.complete(response.header);
                Ok(response)
            }
            other => Err(error::unexpected_outcome(other)),
        }
    }

    pub(crate) async fn txn(&self, req: TxnRequest) -> Result<TxnResponse, Status> {
        if is_txn_read_only(&req) {
            return self.txn_read(req).await;
        }
        match self.propose_checked(Command::Txn(req)).await? {
            ApplyOutcome::Txn(mut response) => {
                // Nested responses keep the store's header (revision only), as etcd's do.
                response.header = self.complete(response.header);
                Ok(response)
            }
            other => Err(error::unexpected_outcome(other)),
        }
    }

    async fn txn_read(&self, req: TxnRequest) -> Result<TxnResponse, Status> {
        ballot_mvcc::check_txn(&req, self.options.max_txn_ops).map_err(error::mvcc)?;
        if !is_txn_serializable(&req) {
            self.node.read_barrier().await?;
        }
        let mut response = self
            .node
            .with_store(|store| store.txn_read(&req))
            .map_err(error::mvcc)?;
        response.header = self.complete(response.header);
        Ok(response)
    }

    pub(crate) async fn compact(
        &self,
        req: CompactionRequest,
    ) -> Result<CompactionResponse, Status> {
        // `physical` asks to wait until the compaction is on disk; applying it is the whole
        // compaction here, so the answer already satisfies it.
        match self.propose_checked(Command::Compact(req)).await? {
            ApplyOutcome::Compact(mut response) => {
                response.header = self.complete(response.header);
                Ok(response)
            }
            other => Err(error::unexpected_outcome(other)),
        }
    }
}

/// etcd `isTxnSerializable`: every Range in the transaction, nested ones included, is
/// serializable.
fn is_txn_serializable(req: &TxnRequest) -> bool {
    req.success
        .iter()
        .chain(&req.failure)
        .all(|op| match &op.request {
            Some(Op::RequestRange(range)) => range.serializable,
            Some(Op::RequestTxn(nested)) => is_txn_serializable(nested),
            Some(Op::RequestPut(_)) | Some(Op::RequestDeleteRange(_)) | None => true,
        })
}

#[tonic::async_trait]
impl<N: ApiNode> Kv for Api<N> {
    async fn range(
        &self,
        request: Request<RangeRequest>,
    ) -> Result<Response<RangeResponse>, Status> {
        let result = Api::range(self, request.into_inner()).await;
        record(GrpcMethod::KvRange, result).map(Response::new)
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let result = Api::put(self, request.into_inner()).await;
        record(GrpcMethod::KvPut, result).map(Response::new)
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let result = Api::delete_range(self, request.into_inner()).await;
        record(GrpcMethod::KvDeleteRange, result).map(Response::new)
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let result = Api::txn(self, request.into_inner()).await;
        record(GrpcMethod::KvTxn, result).map(Response::new)
    }

    async fn compact(
        &self,
        request: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        let result = Api::compact(self, request.into_inner()).await;
        record(GrpcMethod::KvCompact, result).map(Response::new)
    }
}
