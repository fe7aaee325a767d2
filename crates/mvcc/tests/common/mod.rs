//! Helpers shared by the integration tests.
#![allow(dead_code)]

use ballot_mvcc::{Applied, ApplyOutcome, Command, MvccError, Store, StoreConfig};
use ballot_proto::etcdserverpb::{
    CompactionRequest, DeleteRangeRequest, PutRequest, RangeRequest, RangeResponse, RequestOp,
    TxnRequest, TxnResponse, request_op::Request,
};
use ballot_proto::mvccpb::KeyValue;
use bytes::Bytes;

pub fn b(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

/// A store plus the next Raft index to apply at.
pub struct Node {
    pub store: Store,
    pub index: u64,
}

impl Node {
    pub fn new() -> Node {
        Node::with(StoreConfig::default())
    }

    pub fn with(config: StoreConfig) -> Node {
        Node {
            store: Store::new(config),
            index: 0,
        }
    }

    pub fn apply(&mut self, command: Command) -> Applied {
        self.index += 1;
        self.store.apply(self.index, &command)
    }

    pub fn put(&mut self, key: &str, value: &str) -> Applied {
        self.apply(Command::Put(put_req(key, value)))
    }

    pub fn put_lease(&mut self, key: &str, value: &str, lease: i64) -> Applied {
        self.apply(Command::Put(PutRequest {
            lease,
            ..put_req(key, value)
        }))
    }

    pub fn delete(&mut self, key: &str, end: &str) -> Applied {
        self.apply(Command::DeleteRange(DeleteRangeRequest {
            key: b(key),
            range_end: b(end),
            prev_kv: true,
        }))
    }

    pub fn compact(&mut self, revision: i64) -> Applied {
        self.apply(Command::Compact(CompactionRequest {
            revision,
            physical: false,
        }))
    }

    pub fn txn(&mut self, req: TxnRequest) -> Result<TxnResponse, MvccError> {
        match self.apply(Command::Txn(req)).outcome {
            ApplyOutcome::Txn(response) => Ok(response),
            ApplyOutcome::Error(error) => Err(error),
            other => panic!("txn answered {other:?}"),
        }
    }

    pub fn get(&self, key: &str) -> Option<KeyValue> {
        self.range(range_req(key, "")).kvs.into_iter().next()
    }

    pub fn range(&self, req: RangeRequest) -> RangeResponse {
        match self.store.range(&req) {
            Ok(response) => response,
            Err(error) => panic!("range {req:?} failed: {error}"),
        }
    }

    pub fn keys(&self, req: RangeRequest) -> Vec<String> {
        self.range(req)
            .kvs
            .iter()
            .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
            .collect()
    }
}

pub fn put_req(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: b(key),
        value: b(value),
        ..PutRequest::default()
    }
}

pub fn range_req(key: &str, end: &str) -> RangeRequest {
    RangeRequest {
        key: b(key),
        range_end: b(end),
        ..RangeRequest::default()
    }
}

pub fn op_put(key: &str, value: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestPut(put_req(key, value))),
    }
}

pub fn op_range(key: &str, end: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestRange(range_req(key, end))),
    }
}

pub fn op_delete(key: &str, end: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
            key: b(key),
            range_end: b(end),
            prev_kv: false,
        })),
    }
}

pub fn op_txn(req: TxnRequest) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestTxn(req)),
    }
}

pub fn outcome_error(applied: &Applied) -> Option<MvccError> {
    match &applied.outcome {
        ApplyOutcome::Error(error) => Some(error.clone()),
        _ => None,
    }
}
