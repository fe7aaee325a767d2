//! HTTP endpoints served next to gRPC on every client URL, and the listener loop.
//!
//! - `GET /health`: etcd's JSON, `{"health":"true","reason":""}` with 200 when no alarm is
//!   raised, this member knows a leader and a linearizable one-key read succeeds (etcd 3.5
//!   `checkHealth`), else `"false"` with the reason (`ALARM NOSPACE`, `RAFT NO LEADER`,
//!   `RANGE ERROR:...`) and 503. `?serializable=true` skips the read barrier and
//!   `?exclude=NOSPACE` ignores that alarm, as in etcd.
//! - `GET /livez`, `GET /readyz`: the probes of etcd 3.6 (and 3.5.11), answered as etcd
//!   answers them: `/livez` checks that this member serves a serializable read
//!   (`serializable_read`); `/readyz` that no CORRUPT alarm is raised (`data_corruption`), that
//!   it serves a serializable and a linearizable read (`linearizable_read` needs a leader and a
//!   quorum) and that it is not a learner (`non_learner`). 200 and `ok`, after a
//!   `[+]<check> ok` line per check with `?verbose`; when a check fails, 503 with a
//!   `[+]<check> ok` or `[-]<check> failed: <reason>` line per check. `?exclude=<check>` skips a
//!   check; `/livez/<check>` and `/readyz/<check>` run one.
//! - `GET /version`: `{"etcdserver":"3.5.0","etcdcluster":"3.5.0"}`.
//! - `GET /metrics`: Prometheus text ([`crate::metrics`]).
//!
//! On client URLs (not on `--listen-metrics-urls`) etcd's JSON gateway is served next to them
//! (`POST /v3/...`, [`crate::gateway`]).
//!
//! [`crate::serve`] serves these over HTTP/1 (curl, Prometheus) on the same socket as gRPC.

use crate::api::{Api, ApiNode, ETCD_CLUSTER_VERSION, ETCD_SERVER_VERSION};
use crate::metrics::{ScrapeState, metrics};
use crate::node::alarms::alarm_name;
use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use ballot_proto::etcdserverpb::RangeRequest;
use bytes::Bytes;

/// The HTTP routes, sharing `api` with the gRPC services.
pub fn routes<N: ApiNode>(api: Api<N>) -> axum::Router {
    axum::Router::new()
        .route("/health", get(health::<N>))
        .route("/livez", get(livez::<N>))
        .route("/readyz", get(readyz::<N>))
        .route("/livez/{check}", get(livez_check::<N>))
        .route("/readyz/{check}", get(readyz_check::<N>))
        .route("/version", get(version))
        .route("/metrics", get(prometheus::<N>))
        .with_state(api)
}

fn json(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn health_body(healthy: bool, reason: &str) -> String {
    // `reason` comes from fixed strings and error messages; escape what JSON requires.
    let escaped: String = reason
        .chars()
        .flat_map(|c| match c {
            '"' => vec!['\\', '"'],
            '\\' => vec!['\\', '\\'],
            c if c.is_control() => format!("\\u{:04x}", c as u32).chars().collect(),
            c => vec![c],
        })
        .collect();
    format!("{{\"health\":\"{healthy}\",\"reason\":\"{escaped}\"}}")
}

async fn health<N: ApiNode>(State(api): State<Api<N>>, uri: Uri) -> Response {
    let query: Vec<&str> = uri
        .query()
        .map_or_else(Vec::new, |q| q.split('&').collect());
    let serializable = query.contains(&"serializable=true");
    let status = api.node().status();
    let excluded = |alarm: i32| {
        query
            .iter()
            .any(|pair| pair.strip_prefix("exclude=") == Some(alarm_name(alarm)))
    };
    if let Some(alarm) = status.alarms.iter().find(|raised| !excluded(raised.alarm)) {
        // etcd's reasons: ALARM NOSPACE, ALARM CORRUPT, ALARM UNKNOWN.
        let reason = format!("ALARM {}", alarm_name(alarm.alarm));
        return json(StatusCode::SERVICE_UNAVAILABLE, health_body(false, &reason));
    }
    if status.leader_id == 0 {
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            health_body(false, "RAFT NO LEADER"),
        );
    }
    // etcd reads the key "health" (it need not exist): a read that goes through the full
    // linearizable path proves this member can reach a quorum.
    let request = RangeRequest {
        key: Bytes::from_static(b"health"),
        serializable,
        ..RangeRequest::default()
    };
    let timeout = api.options.health_timeout;
    match tokio::time::timeout(timeout, api.range(request)).await {
        Ok(Ok(_)) => json(StatusCode::OK, health_body(true, "")),
        Ok(Err(status)) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            health_body(false, &format!("RANGE ERROR:{}", status.message())),
        ),
        Err(_) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            health_body(false, "RANGE ERROR:etcdserver: request timed out"),
        ),
    }
}

/// The checks of `/livez`, in the order they run.
const LIVEZ: [Check; 1] = [Check::SerializableRead];
/// The checks of `/readyz`, in the order they run.
const READYZ: [Check; 4] = [
    Check::DataCorruption,
    Check::SerializableRead,
    Check::LinearizableRead,
    Check::NonLearner,
];

async fn livez<N: ApiNode>(State(api): State<Api<N>>, uri: Uri) -> Response {
    probe(&api, &LIVEZ, &uri).await
}

async fn readyz<N: ApiNode>(State(api): State<Api<N>>, uri: Uri) -> Response {
    probe(&api, &READYZ, &uri).await
}

async fn livez_check<N: ApiNode>(
    State(api): State<Api<N>>,
    axum::extract::Path(check): axum::extract::Path<String>,
    uri: Uri,
) -> Response {
    one_check(&api, &LIVEZ, &check, &uri).await
}

async fn readyz_check<N: ApiNode>(
    State(api): State<Api<N>>,
    axum::extract::Path(check): axum::extract::Path<String>,
    uri: Uri,
) -> Response {
    one_check(&api, &READYZ, &check, &uri).await
}

/// `/livez/<check>` and `/readyz/<check>`: one check of the probe; 404 for another name.
async fn one_check<N: ApiNode>(api: &Api<N>, checks: &[Check], name: &str, uri: &Uri) -> Response {
    match checks.iter().find(|check| check.name() == name) {
        Some(&check) => answer(run_checks(api, &[check]).await, uri),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// The checks of `/livez` and `/readyz`, named as etcd names them.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Check {
    DataCorruption,
    SerializableRead,
    LinearizableRead,
    NonLearner,
}

impl Check {
    fn name(self) -> &'static str {
        match self {
            Check::DataCorruption => "data_corruption",
            Check::SerializableRead => "serializable_read",
            Check::LinearizableRead => "linearizable_read",
            Check::NonLearner => "non_learner",
        }
    }

    async fn run<N: ApiNode>(self, api: &Api<N>) -> Result<(), String> {
        let serializable = match self {
            Check::DataCorruption => {
                let status = api.node().status();
                return match status
                    .alarms
                    .iter()
                    .find(|raised| alarm_name(raised.alarm) == "CORRUPT")
                {
                    Some(_) => Err("alarm activated: CORRUPT".to_string()),
                    None => Ok(()),
                };
            }
            Check::NonLearner => {
                return match api.node().status().is_learner {
                    true => Err("not supported for learner".to_string()),
                    false => Ok(()),
                };
            }
            Check::SerializableRead => true,
            Check::LinearizableRead => false,
        };
        let request = RangeRequest {
            key: Bytes::from_static(b"health"),
            keys_only: true,
            limit: 1,
            serializable,
            ..RangeRequest::default()
        };
        match tokio::time::timeout(api.options.health_timeout, api.range(request)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(status)) => Err(status.message().to_string()),
            Err(_) => Err("etcdserver: request timed out".to_string()),
        }
    }
}

/// The outcome of some checks: whether all passed, and a `[+]<check> ok` or
/// `[-]<check> failed: <reason>` line for each.
struct Outcome {
    passed: bool,
    lines: String,
}

async fn run_checks<N: ApiNode>(api: &Api<N>, checks: &[Check]) -> Outcome {
    let mut outcome = Outcome {
        passed: true,
        lines: String::new(),
    };
    for check in checks {
        match check.run(api).await {
            Ok(()) => outcome.lines.push_str(&format!("[+]{} ok\n", check.name())),
            Err(reason) => {
                outcome.passed = false;
                outcome
                    .lines
                    .push_str(&format!("[-]{} failed: {reason}\n", check.name()));
            }
        }
    }
    outcome
}

/// Runs `checks`, less those `?exclude=<check>` names (a name that is not a check of the probe
/// is logged and ignored, as etcd does), and answers.
async fn probe<N: ApiNode>(api: &Api<N>, checks: &[Check], uri: &Uri) -> Response {
    let excluded: Vec<&str> = query_pairs(uri)
        .filter_map(|pair| pair.strip_prefix("exclude="))
        .collect();
    for name in &excluded {
        if !checks.iter().any(|check| check.name() == *name) {
            tracing::warn!(
                check = name,
                path = uri.path(),
                "cannot exclude an unknown health check"
            );
        }
    }
    let run: Vec<Check> = checks
        .iter()
        .copied()
        .filter(|check| !excluded.contains(&check.name()))
        .collect();
    answer(run_checks(api, &run).await, uri)
}

fn query_pairs(uri: &Uri) -> impl Iterator<Item = &str> {
    uri.query().into_iter().flat_map(|query| query.split('&'))
}

/// etcd's answer to a probe: 200 `ok` (after the check lines with `?verbose`), or 503 with the
/// check lines whatever the query.
fn answer(outcome: Outcome, uri: &Uri) -> Response {
    let text = |status: StatusCode, body: String| {
        (
            status,
            [
                (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            body,
        )
            .into_response()
    };
    if !outcome.passed {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{}\n", outcome.lines),
        );
    }
    let verbose = query_pairs(uri).any(|pair| pair == "verbose" || pair.starts_with("verbose="));
    match verbose {
        true => text(StatusCode::OK, format!("{}ok\n", outcome.lines)),
        false => text(StatusCode::OK, "ok\n".to_string()),
    }
}

async fn version() -> Response {
    json(
        StatusCode::OK,
        format!(
            "{{\"etcdserver\":\"{ETCD_SERVER_VERSION}\",\"etcdcluster\":\"{ETCD_CLUSTER_VERSION}\"}}"
        ),
    )
}

async fn prometheus<N: ApiNode>(State(api): State<Api<N>>) -> Response {
    let node = api.node();
    let status = node.status();
    let (leases, current_revision, compact_revision) = node.with_store(|store| {
        (
            store.lease_list().leases.len() as u64,
            store.current_revision(),
            store.compact_revision(),
        )
    });
    let state = ScrapeState {
        has_leader: status.leader_id != 0,
        is_leader: status.leader_id != 0 && status.leader_id == status.member_id,
        term: status.term,
        commit_index: status.commit_index,
        applied_index: status.applied_index,
        db_size_bytes: i64::try_from(status.db_size_bytes).unwrap_or(i64::MAX),
        leases,
        current_revision,
        compact_revision,
    };
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics().render(&state),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_json_matches_etcd_and_escapes_reasons() {
        assert_eq!(health_body(true, ""), r#"{"health":"true","reason":""}"#);
        assert_eq!(
            health_body(false, "RANGE ERROR:a \"quoted\"\nline"),
            r#"{"health":"false","reason":"RANGE ERROR:a \"quoted\"\u000aline"}"#
        );
    }
}
