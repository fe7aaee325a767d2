//! Watches: a registry of watchers and the fan-out of applied events.
//!
//! Concurrency shape: one [`WatchHub`] per node, shared (it is `Clone`, an
//! `Arc` inside) between the apply task and the gRPC watch-stream tasks. All
//! hub state sits behind one `std::sync::Mutex`, held only for short,
//! bounded work (never across an `.await`).
//!
//! - The apply task calls [`WatchHub::notify`] once per applied revision that
//!   produced events (with [`crate::Applied::events`]), in revision order,
//!   and before acknowledging the write to the client, so a client that
//!   watches from "now" after its write returned never misses a later event.
//! - Each gRPC watch stream opens a [`WatchStream`] and runs:
//!   ```text
//!   loop {
//!       let responses = { let store = store.read(); stream.poll(&store, 1000) };
//!       if responses.is_empty() { stream.changed().await; continue; }
//!       for response in responses { fill the header; send it (awaiting the client) }
//!   }
//!   ```
//!   while its receiving half calls [`WatchStream::create`],
//!   [`WatchStream::cancel`] and [`WatchStream::request_progress`].
//!   `changed()` is a `tokio::sync::Notify` with a stored permit, so a
//!   notification between `poll` and `changed` is never lost.
//!
//! Bounded memory: each stream queues at most `capacity_events` events (a
//! single revision larger than that is still queued whole when the queue is
//! empty, so a revision is never split). When an applied revision does not
//! fit, the watchers it concerns become *unsynced*: they stop receiving
//! fan-out and later catch up from the store's history
//! ([`crate::Store::events_since`]) inside `poll`, as the stream drains. A
//! watcher whose catch-up position was compacted away is canceled with
//! `compact_revision` set, as etcd does.
//!
//! Lock order: `poll` is called with the store read-locked and then takes
//! the hub lock; `notify` takes only the hub lock. `notify` must therefore
//! never be called by a thread waiting for the store lock while holding the
//! hub — it cannot, since the hub lock is private.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use ballot_proto::etcdserverpb::{
    ResponseHeader, WatchCreateRequest, WatchResponse, watch_create_request::FilterType,
};
use ballot_proto::mvccpb::{Event, event::EventType};
use bytes::Bytes;
use tokio::sync::Notify;

use crate::error::MvccError;
use crate::keys::KeyRange;
use crate::read::event_revision;
use crate::store::Store;

/// etcd's cancel reason for a create whose `range_end <= key` (etcdctl
/// 3.4.23 prints "watch was canceled (mvcc: watcher range is empty)").
pub const WATCH_RANGE_EMPTY: &str = "mvcc: watcher range is empty";
/// etcd's cancel reason for a create reusing a live watch ID.
pub const WATCH_ID_DUPLICATE: &str = "mvcc: duplicate watch ID provided on the WatchStream";

type WatcherId = (u64, i64);

#[derive(Debug)]
struct Watcher {
    key: Bytes,
    range_end: Bytes,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    progress_notify: bool,
    /// Events since the last progress tick (etcd skips the tick then).
    sent_since_tick: bool,
    // Invariant: every event of this watcher below `next_revision` has been
    // queued; for a synced watcher, fan-out delivers from here on.
    next_revision: i64,
    synced: bool,
}

impl Watcher {
    fn range(&self) -> KeyRange<'_> {
        KeyRange::new(&self.key, &self.range_end)
    }

    /// The event as this watcher must see it, or `None` when filtered out.
    fn view(&self, event: &Event) -> Option<Event> {
        let is_put = event.r#type == EventType::Put as i32;
        if (is_put && self.no_put) || (!is_put && self.no_delete) {
            return None;
        }
        let mut event = event.clone();
        if !self.prev_kv {
            event.prev_kv = None;
        }
        Some(event)
    }
}

#[derive(Debug)]
struct StreamState {
    next_watch_id: i64,
    watch_ids: BTreeSet<i64>,
    queue: VecDeque<WatchResponse>,
    // Invariant: the number of events in `queue`.
    queued_events: usize,
    capacity_events: usize,
    progress_requested: bool,
    notify: Arc<Notify>,
}

impl StreamState {
    fn has_room_for(&self, events: usize) -> bool {
        self.queued_events == 0 || self.queued_events + events <= self.capacity_events
    }

    fn push(&mut self, response: WatchResponse) {
        self.queued_events += response.events.len();
        self.queue.push_back(response);
        self.notify.notify_one();
    }
}

#[derive(Debug, Default)]
struct HubState {
    /// Every revision up to here has been handed to `notify`.
    revision: i64,
    streams: HashMap<u64, StreamState>,
    next_stream_id: u64,
    watchers: BTreeMap<WatcherId, Watcher>,
    /// Synced or not, single-key watchers by key, and the rest.
    single_key: HashMap<Bytes, BTreeSet<WatcherId>>,
    ranged: BTreeSet<WatcherId>,
}

fn response(revision: i64, watch_id: i64) -> WatchResponse {
    WatchResponse {
        header: Some(ResponseHeader {
            revision,
            ..ResponseHeader::default()
        }),
        watch_id,
        ..WatchResponse::default()
    }
}

/// The watcher registry and fan-out point. Cheap to clone (shared state).
#[derive(Debug, Clone, Default)]
pub struct WatchHub {
    state: Arc<Mutex<HubState>>,
}

fn lock(state: &Mutex<HubState>) -> MutexGuard<'_, HubState> {
    // A panic while holding the lock is a bug that already surfaced; the
    // state is still structurally valid, so keep serving.
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

impl WatchHub {
    /// A hub whose every revision up to `revision` (the store's current
    /// revision at startup) counts as already delivered.
    pub fn new(revision: i64) -> WatchHub {
        let hub = WatchHub::default();
        lock(&hub.state).revision = revision;
        hub
    }

    /// The last revision handed to [`WatchHub::notify`].
    pub fn revision(&self) -> i64 {
        lock(&self.state).revision
    }

    /// Opens a watch stream (one per gRPC Watch call) whose queue holds at
    /// most `capacity_events` events.
    pub fn open_stream(&self, capacity_events: usize) -> WatchStream {
        let mut state = lock(&self.state);
        let id = state.next_stream_id;
        state.next_stream_id += 1;
        let notify = Arc::new(Notify::new());
        state.streams.insert(
            id,
            StreamState {
                next_watch_id: 0,
                watch_ids: BTreeSet::new(),
                queue: VecDeque::new(),
                queued_events: 0,
                capacity_events: capacity_events.max(1),
                progress_requested: false,
                notify: Arc::clone(&notify),
            },
        );
        WatchStream {
            hub: self.clone(),
            id,
            notify,
        }
    }

    /// Fans out the events of one applied revision (all of them, as
    /// [`crate::Applied::events`] gives them). Revisions must come in
    /// increasing order; a revision that changed nothing need not be
    /// notified (the next one advances the hub past it).
    pub fn notify(&self, revision: i64, events: &[Event]) {
        let mut guard = lock(&self.state);
        let state = &mut *guard;
        debug_assert!(
            revision > state.revision || events.is_empty(),
            "watch notifications must advance: got {revision} after {}",
            state.revision
        );
        if !state.watchers.is_empty() && !events.is_empty() {
            fan_out(state, revision, events);
        }
        state.revision = state.revision.max(revision);
        answer_progress_requests(state);
    }

    /// After installing a snapshot (the store jumped to `revision`): every
    /// watcher catches up from the store's history, or is canceled if what
    /// it missed was compacted away.
    pub fn reset_to(&self, revision: i64) {
        let mut state = lock(&self.state);
        let hub_revision = state.revision;
        for watcher in state.watchers.values_mut() {
            if watcher.synced {
                watcher.synced = false;
                watcher.next_revision = watcher.next_revision.max(hub_revision + 1);
            }
        }
        state.revision = revision;
        for stream in state.streams.values() {
            stream.notify.notify_one();
        }
    }

    /// Number of live watchers (for metrics).
    pub fn watcher_count(&self) -> usize {
        lock(&self.state).watchers.len()
    }
}

fn fan_out(state: &mut HubState, revision: i64, events: &[Event]) {
    let mut pending: BTreeMap<WatcherId, Vec<Event>> = BTreeMap::new();
    for event in events {
        let Some(kv) = &event.kv else { continue };
        let single = state.single_key.get(&kv.key).into_iter().flatten();
        for id in single.chain(state.ranged.iter()) {
            let Some(watcher) = state.watchers.get(id) else {
                panic!("watch index names watcher {id:?} that is not registered");
            };
            if !watcher.synced
                || watcher.next_revision > revision
                || !watcher.range().contains(&kv.key)
            {
                continue;
            }
            if let Some(view) = watcher.view(event) {
                pending.entry(*id).or_default().push(view);
            }
        }
    }
    for (id, events) in pending {
        let (Some(stream), Some(watcher)) =
            (state.streams.get_mut(&id.0), state.watchers.get_mut(&id))
        else {
            panic!("watcher {id:?} has no stream");
        };
        if stream.has_room_for(events.len()) {
            let mut message = response(revision, id.1);
            message.events = events;
            stream.push(message);
            watcher.next_revision = revision + 1;
            watcher.sent_since_tick = true;
        } else {
            // Falls behind: catch up from history in `poll`.
            watcher.synced = false;
            watcher.next_revision = revision;
        }
    }
}

fn answer_progress_requests(state: &mut HubState) {
    let revision = state.revision;
    let HubState {
        streams, watchers, ..
    } = state;
    for (stream_id, stream) in streams.iter_mut() {
        if !stream.progress_requested {
            continue;
        }
        let all_synced = stream.watch_ids.iter().all(|watch_id| {
            watchers
                .get(&(*stream_id, *watch_id))
                .is_some_and(|w| w.synced)
        });
        if all_synced {
            stream.progress_requested = false;
            stream.push(response(revision, -1));
        }
    }
}

/// One gRPC watch stream's watchers and their outgoing queue. Dropping it
/// removes its watchers.
#[derive(Debug)]
pub struct WatchStream {
    hub: WatchHub,
    id: u64,
    notify: Arc<Notify>,
}

impl WatchStream {
    /// Handles a create request (etcd semantics): an empty key means
    /// `"\0"`; `range_end` empty is one key, `"\0"` every key from `key` on;
    /// `start_revision` 0 means "after the current revision", anything else
    /// is inclusive (future revisions allowed). A negative one is taken as
    /// etcd takes it: below the compact revision (-1 before the first
    /// compaction) it is canceled as compacted; -1 before the first
    /// compaction gets what comes after the current revision; `watch_id` 0 picks the
    /// lowest free ID from 0 up. The "created" response is queued before any
    /// event of the watcher. Returns the watch ID, or -1 when refused (a
    /// created-and-canceled response with etcd's reason is queued then).
    pub fn create(&self, req: &WatchCreateRequest) -> i64 {
        let mut guard = lock(&self.hub.state);
        let state = &mut *guard;
        let revision = state.revision;
        let key = if req.key.is_empty() {
            Bytes::from_static(b"\0")
        } else {
            req.key.clone()
        };
        let Some(stream) = state.streams.get_mut(&self.id) else {
            panic!("watch stream {} is open but not registered", self.id);
        };
        let refuse = |stream: &mut StreamState, reason: &str| {
            let mut message = response(revision, -1);
            message.created = true;
            message.canceled = true;
            message.cancel_reason = reason.to_string();
            stream.push(message);
            -1
        };
        if KeyRange::new(&key, &req.range_end).is_empty() {
            return refuse(stream, WATCH_RANGE_EMPTY);
        }
        let watch_id = if req.watch_id == 0 {
            while stream.watch_ids.contains(&stream.next_watch_id) {
                stream.next_watch_id += 1;
            }
            stream.next_watch_id += 1;
            stream.next_watch_id - 1
        } else if stream.watch_ids.contains(&req.watch_id) {
            return refuse(stream, WATCH_ID_DUPLICATE);
        } else {
            req.watch_id
        };
        stream.watch_ids.insert(watch_id);
        let mut created = response(revision, watch_id);
        created.created = true;
        stream.push(created);
        let next_revision = if req.start_revision == 0 {
            revision + 1
        } else {
            req.start_revision
        };
        let watcher = Watcher {
            key: key.clone(),
            range_end: req.range_end.clone(),
            prev_kv: req.prev_kv,
            no_put: req.filters.contains(&(FilterType::Noput as i32)),
            no_delete: req.filters.contains(&(FilterType::Nodelete as i32)),
            progress_notify: req.progress_notify,
            sent_since_tick: false,
            next_revision,
            synced: next_revision > revision,
        };
        let id = (self.id, watch_id);
        if req.range_end.is_empty() {
            state.single_key.entry(key).or_default().insert(id);
        } else {
            state.ranged.insert(id);
        }
        state.watchers.insert(id, watcher);
        watch_id
    }

    /// Cancels a watcher; queues etcd's canceled response and returns true
    /// when it existed (etcd answers nothing for an unknown ID).
    pub fn cancel(&self, watch_id: i64) -> bool {
        let mut guard = lock(&self.hub.state);
        let state = &mut *guard;
        if !remove_watcher(state, (self.id, watch_id)) {
            return false;
        }
        let revision = state.revision;
        if let Some(stream) = state.streams.get_mut(&self.id) {
            let mut message = response(revision, watch_id);
            message.canceled = true;
            stream.push(message);
        }
        answer_progress_requests(state);
        true
    }

    /// A progress request: a response with `watch_id == -1` and the hub's
    /// revision is queued once every watcher of the stream is synced (at
    /// once if they are), so the revision never runs ahead of the events.
    pub fn request_progress(&self) {
        let mut state = lock(&self.hub.state);
        if let Some(stream) = state.streams.get_mut(&self.id) {
            stream.progress_requested = true;
        }
        answer_progress_requests(&mut state);
    }

    /// The periodic progress notification of watchers created with
    /// `progress_notify` (etcd sends one every 10 minutes by default): each
    /// such synced watcher that got no events since the last tick gets an
    /// empty response carrying the current revision.
    pub fn progress_tick(&self) {
        let mut guard = lock(&self.hub.state);
        let state = &mut *guard;
        let revision = state.revision;
        let Some(stream) = state.streams.get_mut(&self.id) else {
            return;
        };
        let watch_ids: Vec<i64> = stream.watch_ids.iter().copied().collect();
        for watch_id in watch_ids {
            let Some(watcher) = state.watchers.get_mut(&(self.id, watch_id)) else {
                continue;
            };
            if watcher.progress_notify && watcher.synced && !watcher.sent_since_tick {
                stream.push(response(revision, watch_id));
            }
            watcher.sent_since_tick = false;
        }
    }

    /// Waits until [`WatchStream::poll`] may have something to return.
    pub async fn changed(&self) {
        self.notify.notified().await;
    }

    /// Takes every queued response, after catching unsynced watchers up from
    /// `store`'s history (about `catch_up_events_max` events per call).
    /// `store` must be at least at the hub's revision (the server notifies
    /// after applying, so any store read after that qualifies).
    pub fn poll(&self, store: &Store, catch_up_events_max: usize) -> Vec<WatchResponse> {
        let mut guard = lock(&self.hub.state);
        let state = &mut *guard;
        catch_up(state, self.id, store, catch_up_events_max);
        answer_progress_requests(state);
        let Some(stream) = state.streams.get_mut(&self.id) else {
            return Vec::new();
        };
        stream.queued_events = 0;
        stream.queue.drain(..).collect()
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        let mut guard = lock(&self.hub.state);
        let state = &mut *guard;
        if let Some(stream) = state.streams.get(&self.id) {
            let ids: Vec<i64> = stream.watch_ids.iter().copied().collect();
            for watch_id in ids {
                remove_watcher(state, (self.id, watch_id));
            }
        }
        state.streams.remove(&self.id);
    }
}

fn remove_watcher(state: &mut HubState, id: WatcherId) -> bool {
    let Some(watcher) = state.watchers.remove(&id) else {
        return false;
    };
    if watcher.range_end.is_empty() {
        if let Some(ids) = state.single_key.get_mut(&watcher.key) {
            ids.remove(&id);
            if ids.is_empty() {
                state.single_key.remove(&watcher.key);
            }
        }
    } else {
        state.ranged.remove(&id);
    }
    if let Some(stream) = state.streams.get_mut(&id.0) {
        stream.watch_ids.remove(&id.1);
    }
    true
}

/// Moves unsynced watchers of one stream forward through history while the
/// stream's queue has room.
fn catch_up(state: &mut HubState, stream_id: u64, store: &Store, events_max: usize) {
    // Never read past what fan-out has covered, or an event would be
    // delivered twice (once here, once by notify).
    let end = state.revision.min(store.current_revision());
    let Some(stream) = state.streams.get(&stream_id) else {
        return;
    };
    let unsynced: Vec<i64> = stream
        .watch_ids
        .iter()
        .copied()
        .filter(|watch_id| {
            state
                .watchers
                .get(&(stream_id, *watch_id))
                .is_some_and(|w| !w.synced)
        })
        .collect();
    let mut budget = events_max.max(1);
    for watch_id in unsynced {
        let id = (stream_id, watch_id);
        while let (Some(stream), Some(watcher)) = (
            state.streams.get_mut(&stream_id),
            state.watchers.get_mut(&id),
        ) {
            if budget == 0 || !stream.has_room_for(1) {
                return;
            }
            // etcd reads history from a negative start it did not cancel as compacted (only
            // -1, before the first compaction) as from a huge unsigned revision: it finds
            // nothing, and the watcher goes on from after the current revision.
            if watcher.next_revision < 0 && watcher.next_revision >= store.compact_revision() {
                watcher.next_revision = state.revision + 1;
            }
            if watcher.next_revision > end {
                watcher.synced = watcher.next_revision > state.revision;
                break;
            }
            let room = stream
                .capacity_events
                .saturating_sub(stream.queued_events)
                .clamp(1, budget);
            match store.events_since(
                watcher.next_revision,
                end,
                &watcher.key,
                &watcher.range_end,
                room,
            ) {
                Ok(history) => {
                    let events: Vec<Event> = history
                        .events
                        .iter()
                        .filter_map(|event| watcher.view(event))
                        .collect();
                    watcher.next_revision = history.next_revision;
                    // Only what is queued counts against the budget: a
                    // walk that queues nothing (all filtered out) still
                    // advances `next_revision`, so the loop ends, and `poll`
                    // never returns empty while catch-up work remains.
                    budget = budget.saturating_sub(events.len());
                    if !events.is_empty() {
                        let last = events.last().map_or(end, event_revision);
                        let mut message = response(last.max(history.next_revision - 1), watch_id);
                        message.events = events;
                        watcher.sent_since_tick = true;
                        stream.push(message);
                    }
                }
                Err(MvccError::Compacted) => {
                    let mut message = response(state.revision, watch_id);
                    message.canceled = true;
                    message.compact_revision = store.compact_revision();
                    message.cancel_reason = MvccError::Compacted.to_string();
                    stream.push(message);
                    remove_watcher(state, id);
                    break;
                }
                Err(error) => panic!("history walk can only fail by compaction, got {error}"),
            }
        }
    }
}
