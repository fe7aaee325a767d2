//! Prometheus metrics: a small, lock-free registry rendered in the text exposition format.
//!
//! One process serves one member, so the registry is a process-wide static ([`metrics()`]): the
//! node, the WAL writer and the API layer update it without passing handles around, and the HTTP
//! `/metrics` handler renders it. Every value is an atomic, so updating a metric on the hot path
//! costs one relaxed atomic add and never takes a lock.
//!
//! Values that the node already knows exactly (term, leader, commit and applied index) are not
//! mirrored here: `/metrics` reads them from the node at scrape time and passes them to
//! [`Metrics::render`] as a [`ScrapeState`], so they can never drift from the node's own view.
//!
//! Names follow etcd's where etcd exports the same quantity (`etcd_server_*`,
//! `etcd_disk_wal_fsync_duration_seconds`, `grpc_server_handled_total`), so dashboards built for
//! etcd work unchanged; quantities etcd does not have are prefixed `ballot_`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// A monotonically increasing count.
#[derive(Debug)]
pub struct Counter(AtomicU64);

impl Counter {
    pub const fn new() -> Counter {
        Counter(AtomicU64::new(0))
    }

    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, amount: u64) {
        self.0.fetch_add(amount, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Default for Counter {
    fn default() -> Counter {
        Counter::new()
    }
}

/// A value that goes up and down.
#[derive(Debug)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub const fn new() -> Gauge {
        Gauge(AtomicI64::new(0))
    }

    pub fn set(&self, value: i64) {
        self.0.store(value, Ordering::Relaxed);
    }

    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn add(&self, delta: i64) {
        self.0.fetch_add(delta, Ordering::Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Default for Gauge {
    fn default() -> Gauge {
        Gauge::new()
    }
}

/// Upper bounds, in seconds, of the duration histograms: etcd's disk histograms use
/// `ExponentialBuckets(0.001, 2, 14)`, 1 ms to about 8 s. Ballot adds three finer buckets below
/// 1 ms because a group-committed fsync on a fast disk often lands there.
pub const DURATION_BUCKETS_SECONDS: [f64; 17] = [
    0.000_125, 0.000_25, 0.000_5, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256,
    0.512, 1.024, 2.048, 4.096, 8.192,
];
const BUCKET_COUNT: usize = DURATION_BUCKETS_SECONDS.len();

/// A histogram of durations over [`DURATION_BUCKETS_SECONDS`]. Each observation increments the
/// one bucket it falls in; cumulative counts are computed when rendering.
#[derive(Debug)]
pub struct DurationHistogram {
    // Invariant: buckets[i] counts observations in (bound[i-1], bound[i]]; `overflow` counts those
    // above the last bound; count == sum(buckets) + overflow once all updates are visible.
    buckets: [AtomicU64; BUCKET_COUNT],
    overflow: AtomicU64,
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

impl DurationHistogram {
    pub const fn new() -> DurationHistogram {
        DurationHistogram {
            buckets: [const { AtomicU64::new(0) }; BUCKET_COUNT],
            overflow: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, duration: Duration) {
        let seconds = duration.as_secs_f64();
        match DURATION_BUCKETS_SECONDS
            .iter()
            .position(|bound| seconds <= *bound)
        {
            Some(index) => self.buckets[index].fetch_add(1, Ordering::Relaxed),
            None => self.overflow.fetch_add(1, Ordering::Relaxed),
        };
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        header(out, name, help, "histogram");
        self.render_series(out, name, "");
    }

    /// The series of one histogram, with `labels` (`a="x",b="y"`, or empty) on each.
    fn render_series(&self, out: &mut String, name: &str, labels: &str) {
        let (open, comma) = if labels.is_empty() {
            (String::new(), "")
        } else {
            (format!("{{{labels}}}"), ",")
        };
        let mut cumulative = 0u64;
        for (bound, bucket) in DURATION_BUCKETS_SECONDS.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{comma}le=\"{bound}\"}} {cumulative}"
            );
        }
        cumulative += self.overflow.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{comma}le=\"+Inf\"}} {cumulative}"
        );
        let sum_seconds = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{open} {sum_seconds}");
        // The count line uses the cumulative bucket total so that `+Inf == count` holds in every
        // scrape even while observations race with rendering.
        let _ = writeln!(out, "{name}_count{open} {cumulative}");
    }
}

impl Default for DurationHistogram {
    fn default() -> DurationHistogram {
        DurationHistogram::new()
    }
}

/// Every gRPC method Ballot serves, for the per-method request counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcMethod {
    KvRange,
    KvPut,
    KvDeleteRange,
    KvTxn,
    KvCompact,
    WatchWatch,
    LeaseGrant,
    LeaseRevoke,
    LeaseKeepAlive,
    LeaseTimeToLive,
    LeaseLeases,
    ClusterMemberAdd,
    ClusterMemberRemove,
    ClusterMemberUpdate,
    ClusterMemberList,
    ClusterMemberPromote,
    MaintenanceAlarm,
    MaintenanceStatus,
    MaintenanceDefragment,
    MaintenanceHash,
    MaintenanceHashKv,
    MaintenanceSnapshot,
    MaintenanceMoveLeader,
    MaintenanceDowngrade,
    AuthAny,
    LockLock,
    LockUnlock,
    ElectionAny,
}

impl GrpcMethod {
    pub const ALL: [GrpcMethod; 28] = [
        GrpcMethod::KvRange,
        GrpcMethod::KvPut,
        GrpcMethod::KvDeleteRange,
        GrpcMethod::KvTxn,
        GrpcMethod::KvCompact,
        GrpcMethod::WatchWatch,
        GrpcMethod::LeaseGrant,
        GrpcMethod::LeaseRevoke,
        GrpcMethod::LeaseKeepAlive,
        GrpcMethod::LeaseTimeToLive,
        GrpcMethod::LeaseLeases,
        GrpcMethod::ClusterMemberAdd,
        GrpcMethod::ClusterMemberRemove,
        GrpcMethod::ClusterMemberUpdate,
        GrpcMethod::ClusterMemberList,
        GrpcMethod::ClusterMemberPromote,
        GrpcMethod::MaintenanceAlarm,
        GrpcMethod::MaintenanceStatus,
        GrpcMethod::MaintenanceDefragment,
        GrpcMethod::MaintenanceHash,
        GrpcMethod::MaintenanceHashKv,
        GrpcMethod::MaintenanceSnapshot,
        GrpcMethod::MaintenanceMoveLeader,
        GrpcMethod::MaintenanceDowngrade,
        GrpcMethod::AuthAny,
        GrpcMethod::LockLock,
        GrpcMethod::LockUnlock,
        GrpcMethod::ElectionAny,
    ];

    /// `(grpc_service, grpc_method, grpc_type)` labels, as the Go gRPC Prometheus interceptor
    /// that etcd uses names them.
    pub fn labels(self) -> (&'static str, &'static str, &'static str) {
        use GrpcMethod::*;
        match self {
            KvRange => ("etcdserverpb.KV", "Range", "unary"),
            KvPut => ("etcdserverpb.KV", "Put", "unary"),
            KvDeleteRange => ("etcdserverpb.KV", "DeleteRange", "unary"),
            KvTxn => ("etcdserverpb.KV", "Txn", "unary"),
            KvCompact => ("etcdserverpb.KV", "Compact", "unary"),
            WatchWatch => ("etcdserverpb.Watch", "Watch", "bidi_stream"),
            LeaseGrant => ("etcdserverpb.Lease", "LeaseGrant", "unary"),
            LeaseRevoke => ("etcdserverpb.Lease", "LeaseRevoke", "unary"),
            LeaseKeepAlive => ("etcdserverpb.Lease", "LeaseKeepAlive", "bidi_stream"),
            LeaseTimeToLive => ("etcdserverpb.Lease", "LeaseTimeToLive", "unary"),
            LeaseLeases => ("etcdserverpb.Lease", "LeaseLeases", "unary"),
            ClusterMemberAdd => ("etcdserverpb.Cluster", "MemberAdd", "unary"),
            ClusterMemberRemove => ("etcdserverpb.Cluster", "MemberRemove", "unary"),
            ClusterMemberUpdate => ("etcdserverpb.Cluster", "MemberUpdate", "unary"),
            ClusterMemberList => ("etcdserverpb.Cluster", "MemberList", "unary"),
            ClusterMemberPromote => ("etcdserverpb.Cluster", "MemberPromote", "unary"),
            MaintenanceAlarm => ("etcdserverpb.Maintenance", "Alarm", "unary"),
            MaintenanceStatus => ("etcdserverpb.Maintenance", "Status", "unary"),
            MaintenanceDefragment => ("etcdserverpb.Maintenance", "Defragment", "unary"),
            MaintenanceHash => ("etcdserverpb.Maintenance", "Hash", "unary"),
            MaintenanceHashKv => ("etcdserverpb.Maintenance", "HashKV", "unary"),
            MaintenanceSnapshot => ("etcdserverpb.Maintenance", "Snapshot", "server_stream"),
            MaintenanceMoveLeader => ("etcdserverpb.Maintenance", "MoveLeader", "unary"),
            MaintenanceDowngrade => ("etcdserverpb.Maintenance", "Downgrade", "unary"),
            AuthAny => ("etcdserverpb.Auth", "any", "unary"),
            LockLock => ("v3lockpb.Lock", "Lock", "unary"),
            LockUnlock => ("v3lockpb.Lock", "Unlock", "unary"),
            ElectionAny => ("v3electionpb.Election", "any", "unary"),
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

const METHOD_COUNT: usize = GrpcMethod::ALL.len();
/// gRPC status codes 0 (OK) through 16 (Unauthenticated).
const CODE_COUNT: usize = 17;
const CODE_NAMES: [&str; CODE_COUNT] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// Handled gRPC requests by method and status code: a fixed table of atomics, so counting a
/// request never allocates or locks. With `--metrics extensive`, also how long each took.
#[derive(Debug)]
pub struct GrpcCounters {
    handled: [[AtomicU64; CODE_COUNT]; METHOD_COUNT],
    /// `--metrics extensive`: `handling` is kept and rendered.
    extensive: AtomicBool,
    /// Seconds from a request's arrival to its answer (for streams: the stream's life).
    handling: [DurationHistogram; METHOD_COUNT],
}

tokio::task_local! {
    /// When the request the current task serves arrived (`--metrics extensive` only).
    static REQUEST_STARTED: std::time::Instant;
}

impl GrpcCounters {
    const fn new() -> GrpcCounters {
        GrpcCounters {
            handled: [const { [const { AtomicU64::new(0) }; CODE_COUNT] }; METHOD_COUNT],
            extensive: AtomicBool::new(false),
            handling: [const { DurationHistogram::new() }; METHOD_COUNT],
        }
    }

    /// `--metrics extensive`: time every request (`grpc_server_handling_seconds`), as etcd does
    /// at that level.
    pub fn set_extensive(&self, extensive: bool) {
        self.extensive.store(extensive, Ordering::Relaxed);
    }

    /// Runs `request`, the serving of one gRPC call, with its arrival time noted for
    /// [`GrpcCounters::handled`] when requests are timed.
    pub async fn timed<F: std::future::Future>(&self, request: F) -> F::Output {
        if self.extensive.load(Ordering::Relaxed) {
            REQUEST_STARTED
                .scope(std::time::Instant::now(), request)
                .await
        } else {
            request.await
        }
    }

    /// Counts one finished request (for streams: one finished stream) with its final code.
    pub fn handled(&self, method: GrpcMethod, code: tonic::Code) {
        let code_index = (code as usize).min(CODE_COUNT - 1);
        self.handled[method.index()][code_index].fetch_add(1, Ordering::Relaxed);
        if let Ok(started) = REQUEST_STARTED.try_with(|started| *started) {
            self.handling[method.index()].observe(started.elapsed());
        }
    }

    pub fn get(&self, method: GrpcMethod, code: tonic::Code) -> u64 {
        let code_index = (code as usize).min(CODE_COUNT - 1);
        self.handled[method.index()][code_index].load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String) {
        self.render_handled(out);
        if self.extensive.load(Ordering::Relaxed) {
            self.render_handling(out);
        }
    }

    /// `grpc_server_handling_seconds`, one histogram per method that was called.
    fn render_handling(&self, out: &mut String) {
        let name = "grpc_server_handling_seconds";
        header(
            out,
            name,
            "Histogram of response latency (seconds) of gRPC that had been application-level \
             handled by the server.",
            "histogram",
        );
        for method in GrpcMethod::ALL {
            let histogram = &self.handling[method.index()];
            if histogram.count() == 0 {
                continue;
            }
            let (service, method_name, kind) = method.labels();
            let labels = format!(
                "grpc_method=\"{method_name}\",grpc_service=\"{service}\",grpc_type=\"{kind}\""
            );
            histogram.render_series(out, name, &labels);
        }
    }

    fn render_handled(&self, out: &mut String) {
        let name = "grpc_server_handled_total";
        header(
            out,
            name,
            "Total number of RPCs completed on the server, regardless of success or failure.",
            "counter",
        );
        for method in GrpcMethod::ALL {
            let (service, method_name, kind) = method.labels();
            for (code_index, code_name) in CODE_NAMES.iter().enumerate() {
                let value = self.handled[method.index()][code_index].load(Ordering::Relaxed);
                // Only pairs that happened are printed, as the Go interceptor does; otherwise a
                // scrape would carry hundreds of zero series.
                if value == 0 {
                    continue;
                }
                let _ = writeln!(
                    out,
                    "{name}{{grpc_code=\"{code_name}\",grpc_method=\"{method_name}\",grpc_service=\"{service}\",grpc_type=\"{kind}\"}} {value}"
                );
            }
        }
    }
}

/// What `/metrics` reads from the node at scrape time (see the module comment).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScrapeState {
    pub has_leader: bool,
    pub is_leader: bool,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub db_size_bytes: i64,
    pub leases: u64,
    pub current_revision: i64,
    pub compact_revision: i64,
}

/// The process-wide metrics. The node updates the fields marked "node"; the API layer the ones
/// marked "api". Everything else is read at scrape time (see [`ScrapeState`]).
#[derive(Debug)]
pub struct Metrics {
    /// node: this member saw a new leader (including the first one, and itself).
    pub leader_changes: Counter,
    /// node: a proposal (one client command, not one batch) was committed.
    pub proposals_committed: Counter,
    /// node: a committed entry was applied to the store.
    pub proposals_applied: Counter,
    /// node: a proposal failed (timeout, leader change, dropped, refused by the leader).
    pub proposals_failed: Counter,
    /// node: log entries whose apply took longer than `--experimental-warning-apply-duration`.
    pub slow_applies: Counter,
    /// node: proposals waiting for their apply result; inc on propose, dec on answer.
    pub proposals_pending: Gauge,
    /// node (WAL writer): the duration of every fsync (or fdatasync) of the log.
    pub wal_fsync_seconds: DurationHistogram,
    /// node (WAL writer): bytes appended to the log files.
    pub wal_bytes_written: Counter,
    /// node: the duration of every store snapshot written to the snapshot store.
    pub snapshot_save_seconds: DurationHistogram,
    /// node: snapshots received from a leader and installed.
    pub snapshots_installed: Counter,
    /// node (transport): raft messages dropped because a peer queue was full or unreachable.
    pub peer_messages_dropped: Counter,
    /// api: gRPC requests by method and code.
    pub grpc: GrpcCounters,
    /// api: open watch streams.
    pub watch_streams: Gauge,
    /// api: watchers across all streams.
    pub watchers: Gauge,
    /// api: open lease keep-alive streams.
    pub lease_keep_alive_streams: Gauge,
    /// api: leases granted through this member.
    pub leases_granted: Counter,
    /// api: leases revoked through this member (client revokes only; expiry is the node's).
    pub leases_revoked: Counter,
    /// node: leases the leader revoked because they expired.
    pub leases_expired: Counter,
}

static METRICS: Metrics = Metrics::new();

/// The process-wide registry.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    const fn new() -> Metrics {
        Metrics {
            leader_changes: Counter::new(),
            proposals_committed: Counter::new(),
            proposals_applied: Counter::new(),
            proposals_failed: Counter::new(),
            slow_applies: Counter::new(),
            proposals_pending: Gauge::new(),
            wal_fsync_seconds: DurationHistogram::new(),
            wal_bytes_written: Counter::new(),
            snapshot_save_seconds: DurationHistogram::new(),
            snapshots_installed: Counter::new(),
            peer_messages_dropped: Counter::new(),
            grpc: GrpcCounters::new(),
            watch_streams: Gauge::new(),
            watchers: Gauge::new(),
            lease_keep_alive_streams: Gauge::new(),
            leases_granted: Counter::new(),
            leases_revoked: Counter::new(),
            leases_expired: Counter::new(),
        }
    }

    /// The Prometheus text exposition (format 0.0.4) of every metric.
    pub fn render(&self, state: &ScrapeState) -> String {
        let mut out = String::with_capacity(8 * 1024);
        gauge(
            &mut out,
            "etcd_server_has_leader",
            "Whether or not a leader exists. 1 is existence, 0 is not.",
            i64::from(state.has_leader),
        );
        gauge(
            &mut out,
            "etcd_server_is_leader",
            "Whether or not this member is a leader. 1 if is, 0 otherwise.",
            i64::from(state.is_leader),
        );
        gauge_u64(
            &mut out,
            "ballot_raft_term",
            "The current Raft term of this member.",
            state.term,
        );
        gauge_u64(
            &mut out,
            "ballot_raft_commit_index",
            "The highest log index this member knows to be committed.",
            state.commit_index,
        );
        gauge_u64(
            &mut out,
            "ballot_raft_applied_index",
            "The highest log index applied to this member's store.",
            state.applied_index,
        );
        gauge_u64(
            &mut out,
            "ballot_raft_apply_lag_entries",
            "Committed entries not yet applied (commit index minus applied index).",
            state.commit_index.saturating_sub(state.applied_index),
        );
        counter(
            &mut out,
            "etcd_server_leader_changes_seen_total",
            "The number of leader changes seen.",
            self.leader_changes.get(),
        );
        counter(
            &mut out,
            "etcd_server_proposals_committed_total",
            "The total number of consensus proposals committed.",
            self.proposals_committed.get(),
        );
        counter(
            &mut out,
            "etcd_server_proposals_applied_total",
            "The total number of consensus proposals applied.",
            self.proposals_applied.get(),
        );
        counter(
            &mut out,
            "etcd_server_proposals_failed_total",
            "The total number of failed proposals seen.",
            self.proposals_failed.get(),
        );
        gauge(
            &mut out,
            "etcd_server_proposals_pending",
            "The current number of pending proposals to commit.",
            self.proposals_pending.get(),
        );
        self.wal_fsync_seconds.render(
            &mut out,
            "etcd_disk_wal_fsync_duration_seconds",
            "The latency distributions of fsync called by WAL.",
        );
        counter(
            &mut out,
            "etcd_disk_wal_write_bytes_total",
            "Total number of bytes written in WAL.",
            self.wal_bytes_written.get(),
        );
        self.snapshot_save_seconds.render(
            &mut out,
            "ballot_snapshot_save_duration_seconds",
            "The latency distribution of writing a store snapshot.",
        );
        counter(
            &mut out,
            "etcd_server_slow_apply_total",
            "The total number of slow apply requests (likely overloaded from slow disk).",
            self.slow_applies.get(),
        );
        counter(
            &mut out,
            "ballot_snapshots_installed_total",
            "Snapshots received from a leader and installed.",
            self.snapshots_installed.get(),
        );
        counter(
            &mut out,
            "ballot_peer_messages_dropped_total",
            "Raft messages dropped because a peer queue was full or the peer unreachable.",
            self.peer_messages_dropped.get(),
        );
        self.grpc.render(&mut out);
        gauge(
            &mut out,
            "ballot_watch_streams",
            "Open gRPC watch streams.",
            self.watch_streams.get(),
        );
        gauge(
            &mut out,
            "etcd_debugging_mvcc_watcher_total",
            "Total number of watchers.",
            self.watchers.get(),
        );
        gauge(
            &mut out,
            "ballot_lease_keep_alive_streams",
            "Open lease keep-alive streams.",
            self.lease_keep_alive_streams.get(),
        );
        gauge_u64(
            &mut out,
            "ballot_leases",
            "Leases in the store.",
            state.leases,
        );
        counter(
            &mut out,
            "etcd_debugging_lease_granted_total",
            "The total number of granted leases.",
            self.leases_granted.get(),
        );
        counter(
            &mut out,
            "etcd_debugging_lease_revoked_total",
            "The total number of revoked leases.",
            self.leases_revoked.get(),
        );
        counter(
            &mut out,
            "ballot_leases_expired_total",
            "Leases revoked by the leader because they expired.",
            self.leases_expired.get(),
        );
        gauge(
            &mut out,
            "etcd_mvcc_db_total_size_in_bytes",
            "Total size of the underlying database in bytes.",
            state.db_size_bytes,
        );
        gauge(
            &mut out,
            "etcd_debugging_mvcc_current_revision",
            "The current revision of store.",
            state.current_revision,
        );
        gauge(
            &mut out,
            "etcd_debugging_mvcc_compact_revision",
            "The revision of the last compaction in store.",
            state.compact_revision,
        );
        process_metrics(&mut out);
        out
    }
}

/// The Prometheus client libraries' standard process metrics (`process_*`, as etcd exports
/// them), read from `/proc/self`; `etcdctl check datascale` reads
/// `process_resident_memory_bytes`. A figure that cannot be read is left out.
fn process_metrics(out: &mut String) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |field: &str| -> Option<u64> {
        let line = status.lines().find(|line| line.starts_with(field))?;
        let value: u64 = line[field.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(value * 1024)
    };
    // SAFETY: sysconf only reads a system constant.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces), from field 3 (state) on.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |number: usize| -> Option<f64> { fields.get(number - 3)?.parse().ok() };
    if ticks_per_second > 0
        && let (Some(user), Some(system)) = (field(14), field(15))
    {
        let seconds = (user + system) / ticks_per_second as f64;
        header(
            out,
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
            "counter",
        );
        let _ = writeln!(out, "process_cpu_seconds_total {seconds}");
    }
    if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
        gauge_u64(
            out,
            "process_open_fds",
            "Number of open file descriptors.",
            entries.count() as u64,
        );
    }
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        gauge_u64(
            out,
            "process_max_fds",
            "Maximum number of open file descriptors.",
            limit.rlim_cur,
        );
    }
    if let Some(bytes) = kib("VmSize:") {
        gauge_u64(
            out,
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            bytes,
        );
    }
    if let Some(bytes) = kib("VmRSS:") {
        gauge_u64(
            out,
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            bytes,
        );
    }
    let boot_time: Option<f64> = std::fs::read_to_string("/proc/stat").ok().and_then(|text| {
        text.lines()
            .find_map(|line| line.strip_prefix("btime "))
            .and_then(|value| value.trim().parse().ok())
    });
    if ticks_per_second > 0
        && let (Some(boot), Some(start)) = (boot_time, field(22))
    {
        let seconds = boot + start / ticks_per_second as f64;
        header(
            out,
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            "gauge",
        );
        let _ = writeln!(out, "process_start_time_seconds {seconds}");
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    header(out, name, help, "counter");
    let _ = writeln!(out, "{name} {value}");
}

fn gauge(out: &mut String, name: &str, help: &str, value: i64) {
    header(out, name, help, "gauge");
    let _ = writeln!(out, "{name} {value}");
}

fn gauge_u64(out: &mut String, name: &str, help: &str, value: u64) {
    header(out, name, help, "gauge");
    let _ = writeln!(out, "{name} {value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample line `series` (name plus labels) in a rendering.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .filter(|line| !line.starts_with('#'))
            .find_map(|line| {
                let (name, value) = line.rsplit_once(' ')?;
                (name == series).then(|| value.parse().ok()).flatten()
            })
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_sum_is_in_seconds() {
        let histogram = DurationHistogram::new();
        histogram.observe(Duration::from_micros(100)); // first bucket (<= 125 us)
        histogram.observe(Duration::from_millis(3)); // <= 4 ms
        histogram.observe(Duration::from_millis(3));
        histogram.observe(Duration::from_secs(20)); // above every bound
        let mut out = String::new();
        histogram.render(&mut out, "h", "help");
        assert_eq!(sample(&out, "h_bucket{le=\"0.000125\"}"), Some(1.0));
        assert_eq!(sample(&out, "h_bucket{le=\"0.002\"}"), Some(1.0));
        assert_eq!(sample(&out, "h_bucket{le=\"0.004\"}"), Some(3.0));
        assert_eq!(sample(&out, "h_bucket{le=\"8.192\"}"), Some(3.0));
        assert_eq!(sample(&out, "h_bucket{le=\"+Inf\"}"), Some(4.0));
        assert_eq!(sample(&out, "h_count"), Some(4.0));
        let sum = sample(&out, "h_sum").expect("sum line");
        assert!((sum - 20.0061).abs() < 1e-9, "sum {sum}");
        assert!(out.starts_with("# HELP h help\n# TYPE h histogram\n"));
    }

    #[test]
    fn grpc_counters_print_only_seen_method_code_pairs() {
        let counters = GrpcCounters::new();
        counters.handled(GrpcMethod::KvPut, tonic::Code::Ok);
        counters.handled(GrpcMethod::KvPut, tonic::Code::Ok);
        counters.handled(GrpcMethod::KvRange, tonic::Code::OutOfRange);
        let mut out = String::new();
        counters.render(&mut out);
        assert_eq!(
            sample(
                &out,
                "grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Put\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"}"
            ),
            Some(2.0)
        );
        assert_eq!(
            sample(
                &out,
                "grpc_server_handled_total{grpc_code=\"OutOfRange\",grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"}"
            ),
            Some(1.0)
        );
        let series = out.lines().filter(|line| !line.starts_with('#')).count();
        assert_eq!(series, 2, "{out}");
    }

    #[test]
    fn every_method_has_distinct_labels_and_index() {
        for (position, method) in GrpcMethod::ALL.iter().enumerate() {
            assert_eq!(method.index(), position, "{method:?}");
        }
        let mut labels: Vec<_> = GrpcMethod::ALL.iter().map(|m| m.labels()).collect();
        labels.sort();
        labels.dedup();
        assert_eq!(labels.len(), GrpcMethod::ALL.len());
    }

    #[test]
    fn render_reads_scrape_state_and_counters() {
        let metrics = Metrics::new();
        metrics.leader_changes.inc();
        metrics.proposals_committed.add(5);
        metrics.watchers.set(3);
        metrics.wal_fsync_seconds.observe(Duration::from_millis(1));
        let text = metrics.render(&ScrapeState {
            has_leader: true,
            is_leader: false,
            term: 7,
            commit_index: 120,
            applied_index: 100,
            db_size_bytes: 4096,
            leases: 2,
            current_revision: 9,
            compact_revision: -1,
        });
        assert_eq!(sample(&text, "etcd_server_has_leader"), Some(1.0));
        assert_eq!(sample(&text, "etcd_server_is_leader"), Some(0.0));
        assert_eq!(sample(&text, "ballot_raft_term"), Some(7.0));
        assert_eq!(sample(&text, "ballot_raft_apply_lag_entries"), Some(20.0));
        assert_eq!(
            sample(&text, "etcd_server_leader_changes_seen_total"),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "etcd_server_proposals_committed_total"),
            Some(5.0)
        );
        assert_eq!(
            sample(&text, "etcd_debugging_mvcc_watcher_total"),
            Some(3.0)
        );
        assert_eq!(
            sample(&text, "etcd_disk_wal_fsync_duration_seconds_count"),
            Some(1.0)
        );
        assert_eq!(sample(&text, "ballot_leases"), Some(2.0));
        assert_eq!(
            sample(&text, "etcd_debugging_mvcc_compact_revision"),
            Some(-1.0)
        );
        // The process metrics of this test process.
        assert!(sample(&text, "process_resident_memory_bytes").is_some_and(|rss| rss > 0.0));
        assert!(sample(&text, "process_virtual_memory_bytes").is_some_and(|size| size > 0.0));
        assert!(sample(&text, "process_open_fds").is_some_and(|fds| fds >= 3.0));
        assert!(sample(&text, "process_max_fds").is_some_and(|fds| fds >= 3.0));
        assert!(sample(&text, "process_cpu_seconds_total").is_some_and(|cpu| cpu >= 0.0));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after the epoch")
            .as_secs_f64();
        assert!(
            sample(&text, "process_start_time_seconds")
                .is_some_and(|start| start <= now + 1.0 && start > now - 24.0 * 3600.0),
            "{text}"
        );
        // Every sample line belongs to a metric announced by a TYPE line before it.
        let mut announced: Vec<&str> = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                announced.push(rest.split(' ').next().unwrap_or_default());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap_or_default();
                assert!(
                    announced.iter().any(|metric| name.starts_with(metric)),
                    "sample {line} has no TYPE line"
                );
            }
        }
    }
}
