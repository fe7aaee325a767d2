//! The Lease service: LeaseGrant, LeaseRevoke, LeaseKeepAlive (stream), LeaseTimeToLive,
//! LeaseLeases (etcd `v3rpc/lease.go`).
//!
//! Grants and revokes are replicated commands. Keep-alives and time-to-live queries are
//! answered by the leader, which alone times leases; the node forwards them there.

use std::pin::Pin;

use ballot_mvcc::{ApplyOutcome, Command};
use ballot_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse, lease_server::Lease,
};
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{Api, ApiNode, error, record};
use crate::metrics::{GrpcMethod, metrics};

/// Responses a keep-alive stream may have waiting for a slow client.
const KEEP_ALIVE_OUTBOUND_MAX: usize = 16;

impl<N: ApiNode> Api<N> {
    pub(crate) async fn lease_grant(
        &self,
        req: LeaseGrantRequest,
    ) -> Result<LeaseGrantResponse, Status> {
        // ID 0 asks the node to choose one before replication (every replica must apply the
        // same ID; etcd picks it from its request-ID generator in `EtcdServer.LeaseGrant`).
        let command = Command::LeaseGrant {
            id: req.id,
            ttl_secs: req.ttl,
        };
        match self.propose_checked(command).await? {
            ApplyOutcome::LeaseGrant(mut response) => {
                metrics().leases_granted.inc();
                response.header = self.complete(response.header);
                Ok(response)
            }
            other => Err(error::unexpected_outcome(other)),
        }
    }

    pub(crate) async fn lease_revoke(
        &self,
        req: LeaseRevokeRequest,
    ) -> Result<LeaseRevokeResponse, Status> {
        match self
            .propose_checked(Command::LeaseRevoke { id: req.id })
            .await?
        {
            ApplyOutcome::LeaseRevoke(mut response) => {
                metrics().leases_revoked.inc();
                response.header = self.complete(response.header);
                Ok(response)
            }
            other => Err(error::unexpected_outcome(other)),
        }
    }

    /// One keep-alive: the renewed TTL, or 0 for an unknown or expired lease (not an error,
    /// as in etcd).
    pub(crate) async fn lease_keep_alive_once(
        &self,
        req: LeaseKeepAliveRequest,
    ) -> Result<LeaseKeepAliveResponse, Status> {
        let ttl = self.node.lease_keep_alive(req.id).await?;
        Ok(LeaseKeepAliveResponse {
            header: self.current_header(),
            id: req.id,
            ttl,
        })
    }

    pub(crate) async fn lease_time_to_live(
        &self,
        req: LeaseTimeToLiveRequest,
    ) -> Result<LeaseTimeToLiveResponse, Status> {
        let mut response = self.node.lease_time_to_live(req.id, req.keys).await?;
        response.header = self.complete(response.header);
        Ok(response)
    }

    pub(crate) fn lease_leases(&self) -> LeaseLeasesResponse {
        let mut response = self.node.with_store(|store| store.lease_list());
        response.header = self.complete(response.header);
        response
    }
}

/// Serves one keep-alive stream: each request is answered in order; a node error (no leader,
/// timeout) ends the stream with that error so the client retries, as etcd does. With
/// `require_leader` (the `hasleader` metadata) the stream also ends with "etcdserver: no
/// leader" once this member has lost its leader for three election timeouts.
async fn keep_alive_loop<N: ApiNode, S>(
    api: Api<N>,
    mut inbound: S,
    outbound: mpsc::Sender<Result<LeaseKeepAliveResponse, Status>>,
    require_leader: bool,
) where
    S: Stream<Item = Result<LeaseKeepAliveRequest, Status>> + Send + Unpin,
{
    metrics().lease_keep_alive_streams.inc();
    let mut final_code = tonic::Code::Ok;
    let mut leader_lost = std::pin::pin!(super::leader_lost_if(
        api.node.clone(),
        api.options.election_timeout,
        require_leader,
    ));
    loop {
        let req = tokio::select! {
            message = inbound.next() => match message {
                Some(Ok(req)) => req,
                _ => break,
            },
            () = &mut leader_lost => {
                let status = Status::from(crate::node::NodeError::NoLeader);
                final_code = status.code();
                let _ = outbound.send(Err(status)).await;
                break;
            }
        };
        let answer = api.lease_keep_alive_once(req).await;
        if let Err(status) = &answer {
            final_code = status.code();
        }
        let failed = answer.is_err();
        if outbound.send(answer).await.is_err() || failed {
            break;
        }
    }
    metrics()
        .grpc
        .handled(GrpcMethod::LeaseKeepAlive, final_code);
    metrics().lease_keep_alive_streams.dec();
}

impl<N: ApiNode> Api<N> {
    /// Answers each keep-alive read from `inbound` (a gRPC stream, or the JSON gateway's) until
    /// it ends or one fails.
    pub(crate) fn keep_alive_session<S>(&self, inbound: S, require_leader: bool) -> KeepAliveStream
    where
        S: Stream<Item = Result<LeaseKeepAliveRequest, Status>> + Send + Unpin + 'static,
    {
        let (outbound, receiver) = mpsc::channel(KEEP_ALIVE_OUTBOUND_MAX);
        tokio::spawn(keep_alive_loop(
            self.clone(),
            inbound,
            outbound,
            require_leader,
        ));
        Box::pin(ReceiverStream::new(receiver))
    }
}

pub(crate) type KeepAliveStream =
    Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl<N: ApiNode> Lease for Api<N> {
    async fn lease_grant(
        &self,
        request: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        let result = Api::lease_grant(self, request.into_inner()).await;
        record(GrpcMethod::LeaseGrant, result).map(Response::new)
    }

    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let result = Api::lease_revoke(self, request.into_inner()).await;
        record(GrpcMethod::LeaseRevoke, result).map(Response::new)
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let require_leader = super::requires_leader(request.metadata().as_ref());
        Ok(Response::new(
            self.keep_alive_session(request.into_inner(), require_leader),
        ))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let result = Api::lease_time_to_live(self, request.into_inner()).await;
        record(GrpcMethod::LeaseTimeToLive, result).map(Response::new)
    }

    async fn lease_leases(
        &self,
        _request: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        let result = Ok(self.lease_leases());
        record(GrpcMethod::LeaseLeases, result).map(Response::new)
    }
}
