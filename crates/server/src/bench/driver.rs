//! Runs a bench: opens the connections, drives the client tasks, shows progress, gathers results.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tonic::transport::Endpoint;

use super::grpc::GrpcConnection;
use super::report::{
    BenchReport, ErrorTally, LATENCY_US_MAX, LatencySummary, new_latency_histogram,
};
use super::workload::{FastRng, RequestFactory};
use super::{BenchArgs, BenchError, Workload};

/// How long to wait for each connection before giving up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the progress bar is refreshed.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(200);

/// Runs the bench described by `args` and returns what it measured. Must be called inside a
/// multi-threaded tokio runtime.
pub async fn run(args: &BenchArgs) -> Result<BenchReport, BenchError> {
    args.validate()?;
    let factory = RequestFactory::new(args)?;
    let endpoints = parse_endpoints(&args.endpoints)?;
    let tls = connector(args, &endpoints)?;
    let connections = connect_all(&endpoints, args.conns, tls).await?;

    let limit = match (args.total, args.effective_duration()) {
        (Some(total), _) => RunLimit::Total(total),
        (None, Some(duration)) => RunLimit::Duration(duration),
        (None, None) => RunLimit::Duration(Duration::from_secs(10)),
    };
    let started = Instant::now();
    let cpu_at_start = process_cpu_time();
    let shared = Arc::new(Shared {
        factory,
        limit_total: match limit {
            RunLimit::Total(total) => total,
            RunLimit::Duration(_) => u64::MAX,
        },
        deadline: match limit {
            RunLimit::Duration(duration) => Some(started + duration),
            RunLimit::Total(_) => None,
        },
        pacer: (args.rate > 0).then(|| Pacer::new(started, args.rate)),
        issued: AtomicU64::new(0),
        completed: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    });

    let progress = Progress::start(Arc::clone(&shared), limit, started, !args.json);
    // Clients are spread round-robin over the connections; the clients of one connection run
    // in one task (see `connection_clients`).
    let mut tasks = Vec::with_capacity(connections.len());
    for (connection_index, kv) in connections.iter().enumerate() {
        let clients: Vec<u64> = (connection_index..args.clients)
            .step_by(connections.len())
            .map(|client_index| client_index as u64)
            .collect();
        if clients.is_empty() {
            continue;
        }
        tasks.push(tokio::spawn(connection_clients(
            Arc::clone(&shared),
            kv.clone(),
            clients,
        )));
    }

    let mut histogram = new_latency_histogram();
    let mut errors = ErrorTally::default();
    for task in tasks {
        let outcome = task
            .await
            .unwrap_or_else(|err| panic!("a bench client task must not panic: {err}"));
        histogram
            .add(&outcome.histogram)
            .unwrap_or_else(|err| panic!("histograms with equal bounds must merge: {err}"));
        errors.merge(&outcome.errors);
    }
    let elapsed = started.elapsed();
    let client_cpu = process_cpu_time().saturating_sub(cpu_at_start);
    progress.finish();

    let ops = histogram.len();
    if ops == 0 {
        let first_error = errors
            .kinds
            .first()
            .map(|kind| format!("{}: {}", kind.code, kind.message))
            .unwrap_or_else(|| "none".to_owned());
        return Err(BenchError::NothingSucceeded {
            errors: errors.total,
            first_error,
        });
    }
    Ok(BenchReport {
        workload: args.workload.name(),
        consistency: matches!(args.workload, Workload::Range | Workload::Mixed)
            .then(|| args.consistency.name()),
        endpoints: endpoints.clone(),
        conns: args.conns,
        clients: args.clients,
        key_size: args.key_size,
        val_size: args.val_size,
        key_space: args.key_space,
        rate_limit: args.rate,
        elapsed,
        client_cpu,
        ops,
        errors,
        latency: LatencySummary::from_histogram(&histogram),
    })
}

#[derive(Debug, Clone, Copy)]
enum RunLimit {
    Total(u64),
    Duration(Duration),
}

/// State shared by all client tasks; only atomics are written during the run.
struct Shared {
    factory: RequestFactory,
    limit_total: u64,
    deadline: Option<Instant>,
    pacer: Option<Pacer>,
    issued: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
}

impl Shared {
    /// Claims the right to issue one more request.
    fn may_issue(&self) -> bool {
        !self.past_deadline() && self.issued.fetch_add(1, Ordering::Relaxed) < self.limit_total
    }

    fn past_deadline(&self) -> bool {
        self.deadline
            .is_some_and(|deadline| Instant::now() >= deadline)
    }
}

/// Spaces request starts `1/rate` apart over all clients: request `n` may start at
/// `start + n/rate`. A client that finds its slot in the past starts at once, so the rate is a
/// cap, never a floor.
struct Pacer {
    start: Instant,
    interval_ns: u64,
    next_slot: AtomicU64,
}

impl Pacer {
    fn new(start: Instant, rate_per_sec: u64) -> Pacer {
        Pacer {
            start,
            interval_ns: (1_000_000_000 / rate_per_sec).max(1),
            next_slot: AtomicU64::new(0),
        }
    }

    async fn wait_for_slot(&self) {
        let slot = self.next_slot.fetch_add(1, Ordering::Relaxed);
        let at = self.start + Duration::from_nanos(slot.saturating_mul(self.interval_ns));
        if at > Instant::now() {
            tokio::time::sleep_until(at).await;
        }
    }
}

struct ClientOutcome {
    histogram: Histogram<u64>,
    errors: ErrorTally,
}

/// Runs the clients of one connection concurrently in one task. Each is still a closed loop
/// with one request in flight, but when a batch of answers arrives together the clients all
/// issue their next requests in the same poll, and the connection writes them with one
/// `writev` (as gRPC clients that gather frames do), instead of one system call per request
/// when every client is a task of its own woken in turn. They share one latency histogram.
async fn connection_clients(
    shared: Arc<Shared>,
    kv: GrpcConnection,
    clients: Vec<u64>,
) -> ClientOutcome {
    let outcome = std::sync::Mutex::new(ClientOutcome {
        histogram: new_latency_histogram(),
        errors: ErrorTally::default(),
    });
    // Polls only the clients whose answers arrived (`join_all` would poll every one of them at
    // each wake-up).
    let mut running: futures::stream::FuturesUnordered<_> = clients
        .into_iter()
        .map(|client_index| client_loop(&shared, kv.clone(), client_index, &outcome))
        .collect();
    while running.next().await.is_some() {}
    drop(running);
    outcome
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn client_loop(
    shared: &Shared,
    mut kv: GrpcConnection,
    client_index: u64,
    outcome: &std::sync::Mutex<ClientOutcome>,
) {
    let mut rng = FastRng::new(0x5EED_0000_0000_0000 ^ client_index.wrapping_mul(0x9E37_79B9));
    let record = |result: Result<u64, tonic::Status>| {
        let mut outcome = outcome
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match result {
            Ok(micros) => {
                outcome
                    .histogram
                    .saturating_record(micros.clamp(1, LATENCY_US_MAX));
            }
            Err(status) => outcome.errors.record(&status),
        }
    };
    while shared.may_issue() {
        if let Some(pacer) = &shared.pacer {
            pacer.wait_for_slot().await;
            // A slot may fall after the deadline; a request started then would stretch the run.
            if shared.past_deadline() {
                break;
            }
        }
        let kind = shared.factory.choose(&mut rng);
        let sent = Instant::now();
        match shared.factory.execute(&mut kv, kind, &mut rng).await {
            Ok(()) => {
                record(Ok(
                    u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX)
                ));
            }
            Err(status) => {
                record(Err(status));
                shared.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        shared.completed.fetch_add(1, Ordering::Relaxed);
    }
}

/// User plus system CPU time of this process so far (zero if the kernel will not say).
fn process_cpu_time() -> Duration {
    // SAFETY: getrusage writes only into the zeroed struct we pass, which outlives the call.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return Duration::ZERO;
        }
        usage
    };
    let to_duration = |time: libc::timeval| {
        Duration::from_secs(u64::try_from(time.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(time.tv_usec).unwrap_or(0))
    };
    to_duration(usage.ru_utime) + to_duration(usage.ru_stime)
}

/// Accepts `host:port`, `http://host:port` or `https://host:port`, comma-separated, and returns
/// URLs (`http://` for the bare form).
pub fn parse_endpoints(text: &str) -> Result<Vec<String>, BenchError> {
    let mut endpoints = Vec::new();
    for raw in text.split(',').map(str::trim).filter(|raw| !raw.is_empty()) {
        let url = if raw.contains("://") {
            raw.to_owned()
        } else {
            format!("http://{raw}")
        };
        if !url.starts_with("http://") && !url.starts_with("https://") {
            return Err(BenchError::InvalidEndpoint {
                endpoint: raw.to_owned(),
                reason: "the scheme must be http or https".to_owned(),
            });
        }
        Endpoint::from_shared(url.clone()).map_err(|err| BenchError::InvalidEndpoint {
            endpoint: raw.to_owned(),
            reason: err.to_string(),
        })?;
        endpoints.push(url);
    }
    if endpoints.is_empty() {
        return Err(BenchError::NoEndpoints);
    }
    Ok(endpoints)
}

/// The TLS connector for `https` endpoints (`--cacert`, `--cert`, `--key`), if any is named.
fn connector(args: &BenchArgs, endpoints: &[String]) -> Result<Option<TlsConnector>, BenchError> {
    if !endpoints.iter().any(|url| url.starts_with("https://")) {
        return Ok(None);
    }
    let cacert = args.cacert.as_deref().ok_or(BenchError::NoCaCert)?;
    let identity = args.cert.as_deref().zip(args.key.as_deref());
    Ok(Some(crate::tls::grpc_connector(cacert, identity)?))
}

/// Opens `conns` connections, round-robin over the endpoints, all at once.
async fn connect_all(
    endpoints: &[String],
    conns: usize,
    tls: Option<TlsConnector>,
) -> Result<Vec<GrpcConnection>, BenchError> {
    let mut pending = Vec::with_capacity(conns);
    for index in 0..conns {
        let url = endpoints[index % endpoints.len()].clone();
        let tls = tls.clone();
        pending.push(tokio::spawn(async move {
            let result = connect_one(&url, tls.as_ref()).await;
            (url, result)
        }));
    }
    let mut connections = Vec::with_capacity(conns);
    for task in pending {
        let (url, result) = task
            .await
            .unwrap_or_else(|err| panic!("a connect task must not panic: {err}"));
        connections.push(result.map_err(|reason| BenchError::Connect {
            endpoint: url,
            reason,
        })?);
    }
    Ok(connections)
}

async fn connect_one(url: &str, tls: Option<&TlsConnector>) -> Result<GrpcConnection, String> {
    match tokio::time::timeout(CONNECT_TIMEOUT, GrpcConnection::connect(url, tls)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no connection within {CONNECT_TIMEOUT:?}")),
    }
}

/// The progress bar on stderr, refreshed by its own task; hidden when stderr is not a terminal
/// or when disabled (`--json`).
struct Progress {
    bar: ProgressBar,
    ticker: tokio::task::JoinHandle<()>,
}

impl Progress {
    fn start(shared: Arc<Shared>, limit: RunLimit, started: Instant, enabled: bool) -> Progress {
        let length = match limit {
            RunLimit::Total(total) => total,
            RunLimit::Duration(duration) => u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
        };
        let bar = ProgressBar::with_draw_target(
            Some(length),
            if enabled && std::io::stderr().is_terminal() {
                ProgressDrawTarget::stderr()
            } else {
                ProgressDrawTarget::hidden()
            },
        );
        if let Ok(style) =
            ProgressStyle::with_template("{elapsed:>4} [{bar:40}] {percent:>3}% {msg}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        let ticker_bar = bar.clone();
        let ticker = tokio::spawn(async move {
            let mut interval = tokio::time::interval(PROGRESS_INTERVAL);
            loop {
                interval.tick().await;
                let completed = shared.completed.load(Ordering::Relaxed);
                let failed = shared.failed.load(Ordering::Relaxed);
                let elapsed = started.elapsed();
                let position = match limit {
                    RunLimit::Total(_) => completed,
                    RunLimit::Duration(_) => u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
                };
                ticker_bar.set_position(position.min(length));
                let rate = completed as f64 / elapsed.as_secs_f64().max(1e-3);
                ticker_bar.set_message(format!(
                    "{completed} requests, {rate:.0}/s, {failed} failed"
                ));
            }
        });
        Progress { bar, ticker }
    }

    fn finish(self) {
        self.ticker.abort();
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ballot_proto::etcdserverpb::kv_server::{Kv, KvServer};
    use ballot_proto::etcdserverpb::{
        CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
        PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse,
    };
    use tonic::{Request, Response, Status};

    #[test]
    fn endpoints_accept_etcdctl_and_url_forms() {
        assert_eq!(
            parse_endpoints("127.0.0.1:2379, http://127.0.0.1:2380").expect("valid"),
            vec!["http://127.0.0.1:2379", "http://127.0.0.1:2380"]
        );
        assert!(matches!(
            parse_endpoints(" , "),
            Err(BenchError::NoEndpoints)
        ));
        assert_eq!(
            parse_endpoints("https://h:1").expect("valid"),
            vec!["https://h:1"]
        );
        assert!(matches!(
            parse_endpoints("unix://sock:1"),
            Err(BenchError::InvalidEndpoint { .. })
        ));
    }

    /// A KV service that answers every request at once and counts what it served, so the
    /// generator can be checked (and its own cost measured) without a real server.
    #[derive(Default)]
    struct CountingKv {
        puts: AtomicU64,
        ranges: AtomicU64,
        serializable_ranges: AtomicU64,
        txns: AtomicU64,
        /// When set to `(n, barrier for n)`, the first `n` ranges are answered only once all
        /// `n` are in flight.
        first_ranges_together: Option<(u64, tokio::sync::Barrier)>,
    }

    #[tonic::async_trait]
    impl Kv for CountingKv {
        async fn range(
            &self,
            request: Request<RangeRequest>,
        ) -> Result<Response<RangeResponse>, Status> {
            let earlier = self.ranges.fetch_add(1, Ordering::Relaxed);
            if let Some((together, barrier)) = &self.first_ranges_together
                && earlier < *together
            {
                barrier.wait().await;
            }
            if request.get_ref().serializable {
                self.serializable_ranges.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Response::new(RangeResponse::default()))
        }
        async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
            if request.get_ref().value.len() != 100 {
                return Err(Status::invalid_argument("unexpected value size"));
            }
            self.puts.fetch_add(1, Ordering::Relaxed);
            Ok(Response::new(PutResponse::default()))
        }
        async fn delete_range(
            &self,
            _: Request<DeleteRangeRequest>,
        ) -> Result<Response<DeleteRangeResponse>, Status> {
            Err(Status::unimplemented("not used by the bench"))
        }
        async fn txn(&self, _: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
            self.txns.fetch_add(1, Ordering::Relaxed);
            Err(Status::unavailable("etcdserver: no leader"))
        }
        async fn compact(
            &self,
            _: Request<CompactionRequest>,
        ) -> Result<Response<CompactionResponse>, Status> {
            Err(Status::unimplemented("not used by the bench"))
        }
    }

    async fn serve_counting_kv() -> (Arc<CountingKv>, String) {
        serve_kv(CountingKv::default()).await
    }

    async fn serve_kv(service: CountingKv) -> (Arc<CountingKv>, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local address");
        let service = Arc::new(service);
        let server = tonic::transport::Server::builder()
            .add_service(KvServer::from_arc(Arc::clone(&service)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
        tokio::spawn(server);
        (service, addr.to_string())
    }

    fn bench_args(workload: Workload, endpoints: &str) -> BenchArgs {
        BenchArgs {
            workload,
            endpoints: endpoints.to_owned(),
            cacert: None,
            cert: None,
            key: None,
            conns: 2,
            clients: 8,
            key_size: 8,
            val_size: 100,
            key_space: 1000,
            duration: None,
            total: Some(500),
            rate: 0,
            consistency: super::super::Consistency::L,
            read_ratio: 0.5,
            json: true,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn total_sends_exactly_that_many_requests() {
        let (service, endpoint) = serve_counting_kv().await;
        let report = run(&bench_args(Workload::Put, &endpoint))
            .await
            .expect("bench runs");
        assert_eq!(report.ops, 500);
        assert_eq!(report.errors.total, 0);
        assert_eq!(service.puts.load(Ordering::Relaxed), 500);
        assert!(
            report.client_cpu > Duration::ZERO,
            "sending 500 requests takes some CPU"
        );
        assert!(report.latency.max_us >= report.latency.p50_us);
    }

    /// The clients of one connection run in one task, yet each is its own closed loop: all of
    /// them have a request in flight at once (the service answers none of the first ones until
    /// every client has sent one).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_client_has_a_request_in_flight_at_once() {
        const CLIENTS: usize = 9;
        let (service, endpoint) = serve_kv(CountingKv {
            first_ranges_together: Some((CLIENTS as u64, tokio::sync::Barrier::new(CLIENTS))),
            ..CountingKv::default()
        })
        .await;
        let mut args = bench_args(Workload::Range, &endpoint);
        // Not a multiple of the connection count: one connection gets an extra client.
        args.clients = CLIENTS;
        args.conns = 2;
        args.total = Some(100);
        let report = tokio::time::timeout(Duration::from_secs(30), run(&args))
            .await
            .expect("all clients had a request in flight together")
            .expect("bench runs");
        assert_eq!(report.ops, 100);
        assert_eq!(service.ranges.load(Ordering::Relaxed), 100);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mixed_workload_sends_reads_with_the_chosen_consistency() {
        let (service, endpoint) = serve_counting_kv().await;
        let mut args = bench_args(Workload::Mixed, &endpoint);
        args.consistency = super::super::Consistency::S;
        args.total = Some(2000);
        let report = run(&args).await.expect("bench runs");
        let ranges = service.ranges.load(Ordering::Relaxed);
        assert_eq!(report.ops, 2000);
        assert_eq!(ranges + service.puts.load(Ordering::Relaxed), 2000);
        assert_eq!(service.serializable_ranges.load(Ordering::Relaxed), ranges);
        assert!(
            (800..1200).contains(&ranges),
            "read ratio 0.5 gave {ranges} reads of 2000"
        );
        assert_eq!(report.consistency, Some("serializable"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failures_are_counted_and_nothing_succeeding_is_an_error() {
        let (service, endpoint) = serve_counting_kv().await;
        let err = run(&bench_args(Workload::Txn, &endpoint))
            .await
            .expect_err("every txn fails");
        assert_eq!(service.txns.load(Ordering::Relaxed), 500);
        match err {
            BenchError::NothingSucceeded {
                errors,
                first_error,
            } => {
                assert_eq!(errors, 500);
                assert_eq!(first_error, "Unavailable: etcdserver: no leader");
            }
            other => panic!("expected NothingSucceeded, got {other}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn duration_bounds_the_run() {
        let (_service, endpoint) = serve_counting_kv().await;
        let mut args = bench_args(Workload::Range, &endpoint);
        args.total = None;
        args.duration = Some(Duration::from_millis(300));
        args.rate = 1000;
        let report = run(&args).await.expect("bench runs");
        // 1000/s for 0.3 s allows at most 301 request starts (slot 0 starts at once).
        assert!(report.ops <= 301, "rate cap exceeded: {}", report.ops);
        assert!(report.elapsed >= Duration::from_millis(300));
        assert!(
            report.elapsed < Duration::from_secs(5),
            "{:?}",
            report.elapsed
        );
    }

    #[tokio::test]
    async fn unreachable_endpoint_fails_before_the_run() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().expect("local address");
        drop(listener);
        let err = run(&bench_args(Workload::Put, &addr.to_string()))
            .await
            .expect_err("nobody listens");
        assert!(matches!(err, BenchError::Connect { .. }), "{err}");
        assert!(err.to_string().contains("refused"), "{err}");
    }

    #[tokio::test]
    async fn pacer_spaces_requests_by_the_rate() {
        tokio::time::pause();
        let start = Instant::now();
        let pacer = Pacer::new(start, 100);
        for _ in 0..5 {
            pacer.wait_for_slot().await;
        }
        // Slots 0..=4 start at 0, 10, 20, 30 and 40 ms; tokio's timer may round a deadline up
        // to the next millisecond, but never reaches the next slot.
        let elapsed = start.elapsed();
        assert!(
            elapsed >= Duration::from_millis(40) && elapsed <= Duration::from_millis(41),
            "five slots at 100/s took {elapsed:?}"
        );
    }
}
