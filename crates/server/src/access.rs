//! etcd's access controller for the HTTP requests of a client listener (`/health`, `/version`,
//! `/metrics` and the JSON gateway; gRPC calls are not touched):
//!
//! - `--cors`: every answer carries etcd's CORS headers when all origins are allowed (`*`, the
//!   default) or when the request's `Origin` is one of the listed ones, and an `OPTIONS`
//!   request (a browser's preflight) is answered `200 OK` with no body, whatever its path.
//! - `--host-whitelist`: on a listener without TLS, a request whose `Host` (port left out) is
//!   not listed is refused with `421 Misdirected Request` and etcd's explanation, against DNS
//!   rebinding (CVE-2018-5702). `*`, the default, allows every host.
//! - `/v3beta/...` paths are served as `/v3/...`, as etcd 3.4 does for older gateway clients.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// The methods, origin and headers etcd allows cross-origin.
const ALLOW_METHODS: &str = "POST, GET, OPTIONS, PUT, DELETE";
const ALLOW_HEADERS: &str = "accept, content-type, authorization";
/// The prefix etcd 3.4 still serves its gateway under, rewritten to [`GATEWAY_PREFIX`].
const OLD_GATEWAY_PREFIX: &str = "/v3beta/";
const GATEWAY_PREFIX: &str = "/v3/";

/// A list of allowed names from a comma-separated flag: `*` (or nothing) allows all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allowed {
    All,
    Only(BTreeSet<String>),
}

impl Allowed {
    /// Reads a flag's value as etcd does: comma-separated, blanks ignored, `*` anywhere (or an
    /// empty list) allows everything.
    pub fn parse(flag: &str) -> Allowed {
        let names: BTreeSet<String> = flag
            .split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .map(str::to_owned)
            .collect();
        if names.is_empty() || names.contains("*") {
            Allowed::All
        } else {
            Allowed::Only(names)
        }
    }

    fn allows(&self, name: &str) -> bool {
        match self {
            Allowed::All => true,
            Allowed::Only(names) => names.contains(name),
        }
    }
}

/// What a client listener checks on HTTP requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessControl {
    /// `--cors`: origins that get CORS headers.
    pub cors: Allowed,
    /// `--host-whitelist`: hosts a listener without TLS serves.
    pub hosts: Allowed,
}

impl Default for AccessControl {
    /// etcd's defaults: every origin and every host.
    fn default() -> AccessControl {
        AccessControl {
            cors: Allowed::All,
            hosts: Allowed::All,
        }
    }
}

impl AccessControl {
    /// The same rules for a TLS listener, which serves every host (a DNS rebinding attack
    /// cannot present the listener's certificate).
    pub fn for_tls(&self) -> AccessControl {
        AccessControl {
            cors: self.cors.clone(),
            hosts: Allowed::All,
        }
    }

    /// `router` behind these rules.
    pub fn wrap(self, router: axum::Router) -> axum::Router {
        // The outer router has no routes of its own, so the rules run before `router` routes
        // the request, which lets them rewrite its path.
        axum::Router::new()
            .fallback_service(router)
            .layer(axum::middleware::from_fn_with_state(
                Arc::new(self),
                control,
            ))
    }
}

async fn control(
    State(access): State<Arc<AccessControl>>,
    request: Request,
    next: Next,
) -> Response {
    if is_grpc(&request) {
        return next.run(request).await;
    }
    if let Allowed::Only(_) = &access.hosts {
        let host = host_name(&request);
        if !access.hosts.allows(&host) {
            tracing::warn!(%host, "refused an HTTP request for a host not in --host-whitelist");
            return misdirected(&host);
        }
    }
    let cors_origin = match &access.cors {
        Allowed::All => Some(HeaderValue::from_static("*")),
        Allowed::Only(_) => request
            .headers()
            .get(header::ORIGIN)
            .filter(|origin| {
                origin
                    .to_str()
                    .is_ok_and(|origin| access.cors.allows(origin))
            })
            .cloned(),
    };
    let mut response = if request.method() == Method::OPTIONS {
        StatusCode::OK.into_response()
    } else {
        next.run(with_current_prefix(request)).await
    };
    if let Some(origin) = cors_origin {
        let headers = response.headers_mut();
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(ALLOW_METHODS),
        );
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(ALLOW_HEADERS),
        );
    }
    response
}

/// A gRPC call: answered by its service alone, as etcd's gRPC server does.
fn is_grpc(request: &Request) -> bool {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"))
}

/// The host a request names (HTTP/2's `:authority`, else the `Host` header), without its port,
/// as etcd reads it: a host that does not split into host and port is taken whole.
fn host_name(request: &Request) -> String {
    let authority = match request.uri().authority() {
        Some(authority) => authority.as_str().to_owned(),
        None => request
            .headers()
            .get(header::HOST)
            .map(|host| String::from_utf8_lossy(host.as_bytes()).into_owned())
            .unwrap_or_default(),
    };
    split_port(&authority).to_owned()
}

/// `host:port` → `host`, `[v6]:port` → `v6`; anything else unchanged (Go's `SplitHostPort`
/// failing).
fn split_port(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return match rest.split_once("]:") {
            Some((host, port)) if !port.contains(':') => host,
            _ => authority,
        };
    }
    match authority.split_once(':') {
        Some((host, port)) if !port.contains(':') => host,
        _ => authority,
    }
}

/// etcd's answer to a host not in `--host-whitelist`.
fn misdirected(host: &str) -> Response {
    let body = format!(
        "\nballot received your request, but the Host header was unrecognized.\n\n\
         To fix this, choose one of the following options:\n\
         - Enable TLS, then any HTTPS request will be allowed.\n\
         - Add the hostname you want to use to the whitelist in settings.\n  \
         - e.g. ballot --host-whitelist {host:?}\n\n\
         This requirement has been added to help prevent \"DNS Rebinding\" attacks \
         (CVE-2018-5702).\n\n"
    );
    (
        StatusCode::MISDIRECTED_REQUEST,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// `/v3beta/...` → `/v3/...` (the query kept); other paths unchanged.
fn with_current_prefix(mut request: Request) -> Request {
    let Some(rest) = request.uri().path().strip_prefix(OLD_GATEWAY_PREFIX) else {
        return request;
    };
    let path_and_query = match request.uri().query() {
        Some(query) => format!("{GATEWAY_PREFIX}{rest}?{query}"),
        None => format!("{GATEWAY_PREFIX}{rest}"),
    };
    let mut parts = request.uri().clone().into_parts();
    if let Ok(path_and_query) = path_and_query.parse() {
        parts.path_and_query = Some(path_and_query);
        if let Ok(uri) = Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
    }
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_read_as_etcd_reads_them() {
        assert_eq!(Allowed::parse("*"), Allowed::All);
        assert_eq!(Allowed::parse(""), Allowed::All);
        assert_eq!(Allowed::parse("a.example,*"), Allowed::All);
        let only = Allowed::parse(" http://a.example , http://b.example:8080,,");
        assert!(only.allows("http://a.example"));
        assert!(only.allows("http://b.example:8080"));
        assert!(!only.allows("http://b.example"));
    }

    #[test]
    fn hosts_lose_their_port_as_with_go_split_host_port() {
        assert_eq!(split_port("example.com:2379"), "example.com");
        assert_eq!(split_port("example.com"), "example.com");
        assert_eq!(split_port("[::1]:2379"), "::1");
        assert_eq!(split_port("[::1]"), "[::1]");
        assert_eq!(split_port("::1"), "::1");
        assert_eq!(split_port(""), "");
    }

    #[test]
    fn old_gateway_paths_are_served_as_v3() {
        let request = Request::builder()
            .uri("/v3beta/kv/range?x=1")
            .body(axum::body::Body::empty())
            .unwrap();
        assert_eq!(with_current_prefix(request).uri(), "/v3/kv/range?x=1");
        let request = Request::builder()
            .uri("/v3betax/kv/range")
            .body(axum::body::Body::empty())
            .unwrap();
        assert_eq!(with_current_prefix(request).uri(), "/v3betax/kv/range");
    }
}
