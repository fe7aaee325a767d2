//! The Watch service: one bidirectional stream carrying many watchers (etcd `v3rpc/watch.go`).
//!
//! Each gRPC stream is served by one task that owns a [`ballot_mvcc::WatchStream`] of the node's
//! hub and loops: drain the stream's queue (the hub queues "created" responses, events,
//! cancellations and progress answers in the order they arise, so a watcher's created response
//! always precedes its events and creates are answered in request order), send the responses,
//! then wait for the next client request, a hub notification or the progress timer.
//!
//! Memory stays bounded: the outgoing channel holds a few responses; while a slow client keeps
//! it full the task does not drain the hub queue, the queue fills, and the hub turns the stream's
//! watchers "unsynced" so they later catch up from the store's history instead of buffering.
//!
//! Fragmentation follows etcd's `sendFragments`: a response of a watcher created with
//! `fragment = true` that is at least [`super::ApiOptions::watch_fragment_bytes`] large
//! (`--max-request-bytes` plus 512 KiB, etcd's `MaxRequestBytes + grpcOverheadBytes`) and carries
//! two or more events is split into several responses, each holding as many events as fit, all
//! but the last marked `fragment = true`.

use std::collections::HashSet;
use std::pin::Pin;

use ballot_mvcc::WatchStream;
use ballot_proto::etcdserverpb::{
    WatchRequest, WatchResponse, watch_request::RequestUnion, watch_server::Watch,
};
use futures::{Stream, StreamExt};
use prost::Message;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior, interval_at};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{Api, ApiNode};
use crate::metrics::{GrpcMethod, metrics};

/// Responses one stream may have in flight towards a slow client.
const WATCH_OUTBOUND_MAX: usize = 16;
/// History events one poll may read for unsynced watchers, so one catching-up stream does not
/// hold the store's read lock for long.
const CATCH_UP_EVENTS_MAX: usize = 1000;

pub(crate) type WatchResponses = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl<N: ApiNode> Watch for Api<N> {
    type WatchStream = WatchResponses;

    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let require_leader = super::requires_leader(request.metadata().as_ref());
        Ok(Response::new(
            self.watch_session(request.into_inner(), require_leader),
        ))
    }
}

impl<N: ApiNode> Api<N> {
    /// Starts a watch session reading its requests from `inbound` (a gRPC stream, or the JSON
    /// gateway's) and returns its responses. With `require_leader` (the `hasleader` metadata)
    /// the stream ends with "etcdserver: no leader" once this member has lost its leader for
    /// three election timeouts, so the client moves to a member that is not cut off.
    pub(crate) fn watch_session<S>(&self, inbound: S, require_leader: bool) -> WatchResponses
    where
        S: Stream<Item = Result<WatchRequest, Status>> + Send + Unpin + 'static,
    {
        let (outbound, receiver) = mpsc::channel(WATCH_OUTBOUND_MAX);
        let session = WatchSession::new(self.clone(), outbound);
        tokio::spawn(session.run(inbound, require_leader));
        Box::pin(ReceiverStream::new(receiver))
    }
}

/// The state of one gRPC watch stream.
struct WatchSession<N: ApiNode> {
    api: Api<N>,
    stream: WatchStream,
    outbound: mpsc::Sender<Result<WatchResponse, Status>>,
    /// Watch IDs created with `fragment = true`.
    fragmenting: HashSet<i64>,
    /// Watch IDs alive on this stream, for the watcher gauge.
    live: HashSet<i64>,
}

impl<N: ApiNode> WatchSession<N> {
    fn new(api: Api<N>, outbound: mpsc::Sender<Result<WatchResponse, Status>>) -> Self {
        let stream = api
            .node
            .watch_hub()
            .open_stream(api.options.watch_queue_events_max);
        WatchSession {
            api,
            stream,
            outbound,
            fragmenting: HashSet::new(),
            live: HashSet::new(),
        }
    }

    async fn run<S>(mut self, mut inbound: S, require_leader: bool)
    where
        S: Stream<Item = Result<WatchRequest, Status>> + Send + Unpin,
    {
        metrics().watch_streams.inc();
        let mut leader_lost = std::pin::pin!(super::leader_lost_if(
            self.api.node.clone(),
            self.api.options.election_timeout,
            require_leader,
        ));
        let mut code = tonic::Code::Ok;
        let period = self.api.options.watch_progress_notify_interval;
        let mut progress = interval_at(Instant::now() + period, period);
        progress.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut inbound_open = true;
        loop {
            if !self.flush().await {
                break;
            }
            tokio::select! {
                message = inbound.next(), if inbound_open => match message {
                    Some(Ok(request)) => self.handle(request),
                    // The client closed its sending side: as in etcd (whose receive loop ends
                    // quietly at EOF), the watchers keep sending until the stream is cancelled.
                    // etcd's JSON gateway relies on this: it half-closes once the request body
                    // is read.
                    None => inbound_open = false,
                    // The connection failed.
                    Some(Err(_)) => break,
                },
                () = self.stream.changed() => {}
                _ = progress.tick() => self.stream.progress_tick(),
                () = self.outbound.closed() => break,
                () = &mut leader_lost => {
                    let status = Status::from(crate::node::NodeError::NoLeader);
                    code = status.code();
                    let _ = self.outbound.send(Err(status)).await;
                    break;
                }
            }
        }
        metrics()
            .watchers
            .add(-i64::try_from(self.live.len()).unwrap_or(i64::MAX));
        metrics().watch_streams.dec();
        metrics().grpc.handled(GrpcMethod::WatchWatch, code);
    }

    fn handle(&mut self, request: WatchRequest) {
        match request.request_union {
            Some(RequestUnion::CreateRequest(create)) => {
                let watch_id = self.stream.create(&create);
                if watch_id >= 0 {
                    if self.live.insert(watch_id) {
                        metrics().watchers.inc();
                    }
                    if create.fragment {
                        self.fragmenting.insert(watch_id);
                    }
                }
            }
            Some(RequestUnion::CancelRequest(cancel)) => {
                // The hub queues the canceled response; the watcher leaves `live` when it is
                // sent (see `forward`).
                self.stream.cancel(cancel.watch_id);
            }
            Some(RequestUnion::ProgressRequest(_)) => self.stream.request_progress(),
            None => {}
        }
    }

    /// Sends everything the hub has queued. Returns false once the client is gone.
    async fn flush(&mut self) -> bool {
        loop {
            let stream = &self.stream;
            let responses = self
                .api
                .node
                .with_store(|store| stream.poll(store, CATCH_UP_EVENTS_MAX));
            if responses.is_empty() {
                return true;
            }
            for response in responses {
                if !self.forward(response).await {
                    return false;
                }
            }
        }
    }

    async fn forward(&mut self, mut response: WatchResponse) -> bool {
        response.header = self.api.complete(response.header);
        if response.canceled && self.live.remove(&response.watch_id) {
            self.fragmenting.remove(&response.watch_id);
            metrics().watchers.dec();
        }
        let limit = self.api.options.watch_fragment_bytes();
        let parts = if self.fragmenting.contains(&response.watch_id) {
            fragments(response, limit)
        } else {
            vec![response]
        };
        for part in parts {
            if self.outbound.send(Ok(part)).await.is_err() {
                return false;
            }
        }
        true
    }
}

/// etcd `sendFragments`: splits `response` into parts of less than `limit` bytes each (a
/// single event larger than that travels alone), all but the last marked `fragment`. A response
/// under the limit, or with fewer than two events, is returned whole.
pub fn fragments(response: WatchResponse, limit: usize) -> Vec<WatchResponse> {
    if response.encoded_len() < limit || response.events.len() < 2 {
        return vec![response];
    }
    let mut template = response.clone();
    template.events = Vec::new();
    template.fragment = true;
    let base_len = template.encoded_len();
    let mut parts = Vec::new();
    let mut current = template.clone();
    let mut current_len = base_len;
    for event in response.events {
        // Field 11 (events): a two-byte key (tag 11 needs one byte; kept at two for margin)
        // plus the length prefix plus the event.
        let event_len = event.encoded_len();
        let framed_len = 2 + prost::length_delimiter_len(event_len) + event_len;
        if !current.events.is_empty() && current_len + framed_len >= limit {
            parts.push(std::mem::replace(&mut current, template.clone()));
            current_len = base_len;
        }
        current.events.push(event);
        current_len += framed_len;
    }
    current.fragment = false;
    parts.push(current);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use ballot_proto::mvccpb::{Event, KeyValue};
    use bytes::Bytes;

    fn event(key: &str, value_len: usize) -> Event {
        Event {
            r#type: 0,
            kv: Some(KeyValue {
                key: Bytes::from(key.to_owned()),
                value: Bytes::from(vec![b'v'; value_len]),
                mod_revision: 7,
                create_revision: 7,
                version: 1,
                lease: 0,
            }),
            prev_kv: None,
        }
    }

    fn response(events: Vec<Event>) -> WatchResponse {
        WatchResponse {
            watch_id: 3,
            events,
            ..WatchResponse::default()
        }
    }

    #[test]
    fn small_responses_and_single_events_are_not_fragmented() {
        let small = response(vec![event("a", 10), event("b", 10)]);
        assert_eq!(fragments(small.clone(), 1024), vec![small]);
        let one_big = response(vec![event("a", 4096)]);
        assert_eq!(fragments(one_big.clone(), 1024), vec![one_big]);
    }

    #[test]
    fn large_responses_split_in_order_with_fragment_flags() {
        let events: Vec<Event> = (0..10).map(|i| event(&format!("k{i}"), 300)).collect();
        let parts = fragments(response(events.clone()), 1000);
        assert!(parts.len() >= 4, "{} parts", parts.len());
        for (index, part) in parts.iter().enumerate() {
            assert_eq!(part.watch_id, 3);
            assert_eq!(part.fragment, index + 1 < parts.len());
            assert!(!part.events.is_empty());
            assert!(
                part.encoded_len() < 1000,
                "part {index} is {}",
                part.encoded_len()
            );
        }
        let rejoined: Vec<Event> = parts.into_iter().flat_map(|part| part.events).collect();
        assert_eq!(rejoined, events);
    }
}
