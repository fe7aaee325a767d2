//! HTTP endpoints served next to gRPC on every client URL, and the listener loop.
//!
//! - `GET /health`: etcd's JSON, `{"health":"true","reason":""}` with 200 when no alarm is
//!   raised, this member knows a leader and a linearizable one-key read succeeds (etcd 3.5
//!   `checkHealth`), else `"false"` with the reason (`ALARM NOSPACE`, `RAFT NO LEADER`,
//!   `RANGE ERROR:...`) and 503. `?serializable=true` skips the read barrier and
//!   `?exclude=NOSPACE` ignores that alarm, as in etcd.
//! - `GET /livez`, `GET /readyz`: the probes of etcd 3.6 (and 3.5.11), in the Kubernetes
//!   style: `/livez` checks that this member serves a serializable read (`serializable_read`),
//!   `/readyz` also that no CORRUPT alarm is raised (`data_corruption`) and that a linearizable
//!   read succeeds (`linearizable_read`, which needs a leader and a quorum). 200 and `ok`, or
//!   with `?verbose` a `[+]<check> ok` line per check and `livez check passed`; when a check
//!   fails, 503 with a `[-]<check> failed: <reason>` line for it and `readyz check failed`.
//!   `?exclude=<check>` skips a check.
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

async fn livez<N: ApiNode>(State(api): State<Api<N>>, uri: Uri) -> Response {
    probe(&api, "livez", &[Check::SerializableRead], &uri).await
}

async fn readyz<N: ApiNode>(State(api): State<Api<N>>, uri: Uri) -> Response {
    let checks = [
        Check::DataCorruption,
        Check::SerializableRead,
        Check::LinearizableRead,
    ];
    probe(&api, "readyz", &checks, &uri).await
}

/// The checks of `/livez` and `/readyz`, named as etcd names them.
#[derive(Clone, Copy)]
enum Check {
    DataCorruption,
    SerializableRead,
    LinearizableRead,
}

impl Check {
    fn name(self) -> &'static str {
        match self {
            Check::DataCorruption => "data_corruption",
            Check::SerializableRead => "serializable_read",
            Check::LinearizableRead => "linearizable_read",
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
                    Some(_) => Err("ALARM CORRUPT".to_string()),
                    None => Ok(()),
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

/// Runs `checks` (less those the query excludes) and answers in the Kubernetes probe format.
async fn probe<N: ApiNode>(api: &Api<N>, name: &str, checks: &[Check], uri: &Uri) -> Response {
    let query: Vec<&str> = uri
        .query()
        .map_or_else(Vec::new, |q| q.split('&').collect());
    let verbose = query
        .iter()
        .any(|pair| *pair == "verbose" || pair.starts_with("verbose="));
    let excluded = |check: Check| {
        query
            .iter()
            .any(|pair| pair.strip_prefix("exclude=") == Some(check.name()))
    };
    let mut lines = String::new();
    let mut failed = false;
    for &check in checks {
        if excluded(check) {
            lines.push_str(&format!("[+]{} excluded: ok\n", check.name()));
            continue;
        }
        match check.run(api).await {
            Ok(()) => lines.push_str(&format!("[+]{} ok\n", check.name())),
            Err(reason) => {
                failed = true;
                lines.push_str(&format!("[-]{} failed: {reason}\n", check.name()));
            }
        }
    }
    let text = |status: StatusCode, body: String| {
        (
            status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            body,
        )
            .into_response()
    };
    if failed {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{lines}{name} check failed\n"),
        )
    } else if verbose {
        text(StatusCode::OK, format!("{lines}{name} check passed\n"))
    } else {
        text(StatusCode::OK, "ok".to_string())
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
