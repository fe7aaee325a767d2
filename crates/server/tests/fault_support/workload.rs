//! The clients of the fault tests: etcd requests on a few keys, each recorded in a shared
//! `ballot_sim` history with its invocation and completion, for the linearizability check.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ballot_proto::etcdserverpb::{
    Compare, PutRequest, RangeRequest, RequestOp, TxnRequest, compare, kv_client::KvClient,
    request_op,
};
use ballot_sim::history::{Call, HistoryRecorder, Key, Operation, OperationId, Return, Value};
use ballot_sim::rng::SimRng;
use bytes::Bytes;
use tonic::transport::Channel;

/// The etcd key of history key `key`.
pub fn key_name(key: Key) -> Bytes {
    Bytes::from(format!("fault/k{key}"))
}

/// The history every client appends to. Invocation is recorded before a request is sent and
/// completion after its answer arrived, under one lock, so "A completed before B was invoked" in
/// the history implies it in real time (the converse may not hold, which only adds overlaps).
pub struct Shared {
    history: Mutex<HistoryRecorder>,
    /// Tells the clients to finish their current request and return.
    pub stop: AtomicBool,
}

impl Shared {
    pub fn new() -> Shared {
        Shared {
            history: Mutex::new(HistoryRecorder::default()),
            stop: AtomicBool::new(false),
        }
    }

    pub fn invoke(&self, client: u64, key: Key, call: Call) -> OperationId {
        self.lock().invoke(client, key, call)
    }

    pub fn complete(&self, id: OperationId, returned: Return) {
        self.lock().complete(id, returned);
    }

    /// A read that failed constrains nothing.
    pub fn discard(&self, id: OperationId) {
        self.lock().discard(id);
    }

    pub fn operations(&self) -> Vec<Operation> {
        self.lock().operations().to_vec()
    }

    /// How many operations were invoked so far.
    pub fn invoked(&self) -> usize {
        self.lock().operations().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HistoryRecorder> {
        // A client that panicked while holding the lock left a consistent recorder (each call
        // is one push or one field update), so a poisoned lock is still usable.
        self.history
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A value read back: what no client wrote (not a decimal u64) becomes `u64::MAX`, which no
/// client writes either, so the checker reports it as a value nobody wrote.
fn decode_value(bytes: &[u8]) -> Value {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(u64::MAX)
}

pub async fn put(channel: &Channel, key: Key, value: Value) -> Result<i64, tonic::Status> {
    let response = KvClient::new(channel.clone())
        .put(PutRequest {
            key: key_name(key),
            value: Bytes::from(value.to_string()),
            ..PutRequest::default()
        })
        .await?
        .into_inner();
    Ok(response.header.map_or(0, |header| header.revision))
}

/// A linearizable read (etcd's default), or a serializable one (served from the member's own
/// store, possibly stale: only the self-test of the check uses it).
pub async fn read(
    channel: &Channel,
    key: Key,
    serializable: bool,
) -> Result<Option<Value>, tonic::Status> {
    let response = KvClient::new(channel.clone())
        .range(RangeRequest {
            key: key_name(key),
            serializable,
            ..RangeRequest::default()
        })
        .await?
        .into_inner();
    Ok(response.kvs.first().map(|kv| decode_value(&kv.value)))
}

/// Sets `key` to `new` if its value is `expected` (absent: version 0), in one Txn.
async fn compare_and_set(
    channel: &Channel,
    key: Key,
    expected: Option<Value>,
    new: Value,
) -> Result<bool, tonic::Status> {
    let condition = match expected {
        Some(value) => Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Value as i32,
            key: key_name(key),
            target_union: Some(compare::TargetUnion::Value(Bytes::from(value.to_string()))),
            ..Compare::default()
        },
        None => Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Version as i32,
            key: key_name(key),
            target_union: Some(compare::TargetUnion::Version(0)),
            ..Compare::default()
        },
    };
    let response = KvClient::new(channel.clone())
        .txn(TxnRequest {
            compare: vec![condition],
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: key_name(key),
                    value: Bytes::from(new.to_string()),
                    ..PutRequest::default()
                })),
            }],
            failure: vec![],
        })
        .await?
        .into_inner();
    Ok(response.succeeded)
}

/// What one client managed, for the check that the run exercised something.
#[derive(Debug, Default)]
pub struct Tally {
    pub writes_acknowledged: u64,
    pub reads_answered: u64,
    pub cas_succeeded: u64,
    pub cas_failed: u64,
    pub unknown_outcomes: u64,
    pub failed_reads: u64,
}

impl Tally {
    pub fn add(&mut self, other: &Tally) {
        self.writes_acknowledged += other.writes_acknowledged;
        self.reads_answered += other.reads_answered;
        self.cas_succeeded += other.cas_succeeded;
        self.cas_failed += other.cas_failed;
        self.unknown_outcomes += other.unknown_outcomes;
        self.failed_reads += other.failed_reads;
    }
}

/// One client: until told to stop, picks a member, a key and an operation at random. Values are
/// unique to the run (the client number in the high bits), so a read names the write it saw.
pub async fn run_client(
    client: u64,
    keys: u64,
    mut rng: SimRng,
    channels: Vec<Channel>,
    shared: Arc<Shared>,
) -> Tally {
    let mut tally = Tally::default();
    // The value this client last saw per key: the expectation of its compare-and-sets, so they
    // succeed often enough to matter.
    let mut last_seen: BTreeMap<Key, Value> = BTreeMap::new();
    let mut written = 0u64;
    let mut unique_value = || {
        written += 1;
        ((client + 1) << 32) | written
    };
    while !shared.stop.load(Ordering::Relaxed) {
        let channel = rng.pick(&channels).clone();
        let key = rng.below(keys) as Key;
        match rng.below(10) {
            0..=3 => {
                let value = unique_value();
                let id = shared.invoke(client, key, Call::Write { value });
                match put(&channel, key, value).await {
                    Ok(_) => {
                        shared.complete(id, Return::Write);
                        last_seen.insert(key, value);
                        tally.writes_acknowledged += 1;
                    }
                    Err(_) => tally.unknown_outcomes += 1,
                }
            }
            4..=7 => {
                let id = shared.invoke(client, key, Call::Read);
                match read(&channel, key, false).await {
                    Ok(observed) => {
                        shared.complete(id, Return::Read { observed });
                        if let Some(value) = observed {
                            last_seen.insert(key, value);
                        }
                        tally.reads_answered += 1;
                    }
                    Err(_) => {
                        shared.discard(id);
                        tally.failed_reads += 1;
                    }
                }
            }
            _ => {
                let expected = last_seen.get(&key).copied();
                let new = unique_value();
                let id = shared.invoke(client, key, Call::Cas { expected, new });
                match compare_and_set(&channel, key, expected, new).await {
                    Ok(succeeded) => {
                        shared.complete(id, Return::Cas { succeeded });
                        if succeeded {
                            last_seen.insert(key, new);
                            tally.cas_succeeded += 1;
                        } else {
                            last_seen.remove(&key);
                            tally.cas_failed += 1;
                        }
                    }
                    Err(_) => tally.unknown_outcomes += 1,
                }
            }
        }
        // Pacing keeps each key's history in the hundreds of operations; it is load shaping,
        // not synchronisation.
        tokio::time::sleep(Duration::from_millis(rng.range(5, 25))).await;
    }
    tally
}
