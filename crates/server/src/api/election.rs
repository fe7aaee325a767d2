//! The `v3electionpb.Election` service: etcd's leader election run on the server (etcd
//! `v3election.go` over `concurrency.Election`).
//!
//! A candidate is the key `name/<lease in hex>` holding its proposal, created with its lease;
//! the leader is the key under `name/` with the smallest create revision. Campaign waits, like
//! Lock, until no older candidate is left; Proclaim rewrites the leader's value if the caller
//! still leads (same key and create revision); Resign deletes the key under the same condition;
//! Leader reads the first-created key; Observe streams the leader's key-value each time the
//! leader or its value changes.

use std::pin::Pin;

use ballot_mvcc::{ApplyOutcome, Command, prefix_range_end};
use ballot_proto::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
    WatchCreateRequest, compare, range_request, request_op,
};
use ballot_proto::mvccpb::KeyValue;
use ballot_proto::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse, election_server::Election,
};
use bytes::Bytes;
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{Api, ApiNode, error, record};
use crate::metrics::GrpcMethod;

/// `concurrency.ErrElectionNotLeader`; etcd returns it as a plain error (gRPC Unknown).
fn not_leader() -> Status {
    Status::unknown("election: not leader")
}

/// `concurrency.ErrElectionNoLeader`.
fn no_leader() -> Status {
    Status::unknown("election: no leader")
}

/// `v3election.ErrMissingLeaderKey`.
fn missing_leader_key() -> Status {
    Status::unknown("\"leader\" field must be provided")
}

fn prefix_of(name: &[u8]) -> Vec<u8> {
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    prefix
}

/// A Txn that runs `then` if `key` still has create revision `revision`.
fn if_still_created_at(key: &Bytes, revision: i64, then: request_op::Request) -> TxnRequest {
    TxnRequest {
        compare: vec![Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Create as i32,
            key: key.clone(),
            target_union: Some(compare::TargetUnion::CreateRevision(revision)),
            ..Compare::default()
        }],
        success: vec![RequestOp {
            request: Some(then),
        }],
        failure: Vec::new(),
    }
}

impl<N: ApiNode> Api<N> {
    async fn conditional(&self, txn: TxnRequest) -> Result<(bool, i64), Status> {
        match self.propose_checked(Command::Txn(txn)).await? {
            ApplyOutcome::Txn(response) => Ok((
                response.succeeded,
                response.header.map_or(0, |header| header.revision),
            )),
            other => Err(error::unexpected_outcome(other)),
        }
    }

    async fn proclaim_value(&self, leader: &LeaderKey, value: Bytes) -> Result<(), Status> {
        let put = request_op::Request::RequestPut(PutRequest {
            key: leader.key.clone(),
            value,
            ignore_lease: true,
            ..PutRequest::default()
        });
        let (succeeded, _) = self
            .conditional(if_still_created_at(&leader.key, leader.rev, put))
            .await?;
        if succeeded { Ok(()) } else { Err(not_leader()) }
    }

    pub(crate) async fn campaign(&self, req: CampaignRequest) -> Result<CampaignResponse, Status> {
        let prefix = prefix_of(&req.name);
        let key = Bytes::from([prefix.as_slice(), format!("{:x}", req.lease).as_bytes()].concat());
        let (revision, existing) = self.enqueue(&key, req.lease, req.value.clone()).await?;
        let leader = LeaderKey {
            name: req.name,
            key,
            rev: revision,
            lease: req.lease,
        };
        // A candidate resuming its campaign with a new proposal updates its value first.
        if existing.is_some_and(|value| value != req.value) {
            self.proclaim_value(&leader, req.value).await?;
        }
        self.wait_turn(&prefix, revision).await?;
        Ok(CampaignResponse {
            header: self.current_header(),
            leader: Some(leader),
        })
    }

    pub(crate) async fn proclaim(&self, req: ProclaimRequest) -> Result<ProclaimResponse, Status> {
        let leader = req.leader.ok_or_else(missing_leader_key)?;
        self.proclaim_value(&leader, req.value).await?;
        Ok(ProclaimResponse {
            header: self.current_header(),
        })
    }

    pub(crate) async fn resign(&self, req: ResignRequest) -> Result<ResignResponse, Status> {
        let leader = req.leader.ok_or_else(missing_leader_key)?;
        let delete = request_op::Request::RequestDeleteRange(DeleteRangeRequest {
            key: leader.key.clone(),
            ..DeleteRangeRequest::default()
        });
        let (_, revision) = self
            .conditional(if_still_created_at(&leader.key, leader.rev, delete))
            .await?;
        Ok(ResignResponse {
            header: self.header_at(revision),
        })
    }

    /// The first-created key under `name/` and the revision read at.
    fn current_leader(&self, name: &[u8]) -> Result<(Option<KeyValue>, i64), Status> {
        let prefix = prefix_of(name);
        let request = RangeRequest {
            key: Bytes::from(prefix.clone()),
            range_end: Bytes::from(prefix_range_end(&prefix)),
            limit: 1,
            sort_order: range_request::SortOrder::Ascend as i32,
            sort_target: range_request::SortTarget::Create as i32,
            ..RangeRequest::default()
        };
        let response = self
            .node
            .with_store(|store| store.range(&request))
            .map_err(error::mvcc)?;
        let revision = response.header.map_or(0, |header| header.revision);
        Ok((response.kvs.into_iter().next(), revision))
    }

    pub(crate) async fn leader(&self, req: LeaderRequest) -> Result<LeaderResponse, Status> {
        self.node.read_barrier().await?;
        let (kv, revision) = self.current_leader(&req.name)?;
        let kv = kv.ok_or_else(no_leader)?;
        Ok(LeaderResponse {
            header: self.header_at(revision),
            kv: Some(kv),
        })
    }

    /// Waits for any change to `key` (or, with `range_end`, to the range) after `revision`.
    async fn wait_change(&self, key: Bytes, range_end: Bytes, revision: i64) {
        let stream = self.node.watch_hub().open_stream(16);
        stream.create(&WatchCreateRequest {
            key,
            range_end,
            start_revision: revision + 1,
            ..WatchCreateRequest::default()
        });
        loop {
            let responses = self.node.with_store(|store| stream.poll(store, 1000));
            if responses
                .iter()
                .any(|response| !response.events.is_empty() || response.canceled)
            {
                return;
            }
            stream.changed().await;
        }
    }

    /// Streams the leader of `name` each time it or its value changes, until the client leaves.
    async fn observe_loop(
        self,
        name: Bytes,
        outbound: mpsc::Sender<Result<LeaderResponse, Status>>,
        require_leader: bool,
    ) {
        let prefix = prefix_of(&name);
        let mut last: Option<KeyValue> = None;
        let mut leader_lost = std::pin::pin!(super::leader_lost_if(
            self.node.clone(),
            self.options.election_timeout,
            require_leader,
        ));
        loop {
            if let Err(failure) = self.node.read_barrier().await {
                let _ = outbound.send(Err(Status::from(failure))).await;
                return;
            }
            let (kv, revision) = match self.current_leader(&name) {
                Ok(found) => found,
                Err(status) => {
                    let _ = outbound.send(Err(status)).await;
                    return;
                }
            };
            let (watch_key, watch_end) = match &kv {
                Some(kv) => (kv.key.clone(), Bytes::new()),
                None => (
                    Bytes::from(prefix.clone()),
                    Bytes::from(prefix_range_end(&prefix)),
                ),
            };
            if let Some(kv) = kv.filter(|kv| last.as_ref() != Some(kv)) {
                let response = LeaderResponse {
                    header: self.header_at(revision),
                    kv: Some(kv.clone()),
                };
                if outbound.send(Ok(response)).await.is_err() {
                    return;
                }
                last = Some(kv);
            }
            tokio::select! {
                () = self.wait_change(watch_key, watch_end, revision) => {}
                () = outbound.closed() => return,
                () = &mut leader_lost => {
                    let status = Status::from(crate::node::NodeError::NoLeader);
                    let _ = outbound.send(Err(status)).await;
                    return;
                }
            }
        }
    }
}

type ObserveStream = Pin<Box<dyn Stream<Item = Result<LeaderResponse, Status>> + Send>>;

#[tonic::async_trait]
impl<N: ApiNode> Election for Api<N> {
    async fn campaign(
        &self,
        request: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        let result = Api::campaign(self, request.into_inner()).await;
        record(GrpcMethod::ElectionAny, result).map(Response::new)
    }

    async fn proclaim(
        &self,
        request: Request<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        let result = Api::proclaim(self, request.into_inner()).await;
        record(GrpcMethod::ElectionAny, result).map(Response::new)
    }

    async fn leader(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<LeaderResponse>, Status> {
        let result = Api::leader(self, request.into_inner()).await;
        record(GrpcMethod::ElectionAny, result).map(Response::new)
    }

    type ObserveStream = ObserveStream;

    async fn observe(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        let (outbound, receiver) = mpsc::channel(16);
        let api = self.clone();
        let require_leader = super::requires_leader(request.metadata().as_ref());
        tokio::spawn(api.observe_loop(request.into_inner().name, outbound, require_leader));
        record(GrpcMethod::ElectionAny, Ok(()))?;
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn resign(
        &self,
        request: Request<ResignRequest>,
    ) -> Result<Response<ResignResponse>, Status> {
        let result = Api::resign(self, request.into_inner()).await;
        record(GrpcMethod::ElectionAny, result).map(Response::new)
    }
}
