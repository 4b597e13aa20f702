//! Who may call the admin endpoint, checked before any handler runs, in this order:
//!
//! 1. **Host** (DNS rebinding): the request must name, in `Host` (and in the request
//!    target, when that is absolute), a loopback address, `localhost`, the address the
//!    connection reached or the one configured in `admin.listen`, or a name in
//!    `admin.allowed_hosts`; the port is not compared (port forwarding changes it). A
//!    missing, repeated or malformed `Host` is refused too. A rebinding page's requests name
//!    the attacker's domain, so they never get past this. Refused with `421`.
//! 2. **Origin**: a browser request from a page of another origin (an `Origin` whose host is
//!    not allowed by rule 1, or `null`) is refused with `403`.
//! 3. **Token**: every path but [`OPEN_PATHS`] needs `Authorization: Bearer <token>` (see
//!    [`super::token`]); without it, or with another token, `401` with
//!    `WWW-Authenticate: Bearer`. A wrong token is refused on the open paths as well.
//! 4. **Cross-site request forgery**: a request other than `GET` or `HEAD` must carry a
//!    content type that a cross-site form or simple `fetch` cannot send (not
//!    `text/plain`, `application/x-www-form-urlencoded` or `multipart/form-data`; e.g.
//!    `application/json`), or the header [`CSRF_HEADER`]. Refused with `403`.
//!
//! Refusals are logged at debug level with their reason only: never a header's value.

use std::net::IpAddr;

use axum::extract::{Request, State as Shared};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::token::AdminToken;
use super::view::Relay;
use crate::config::{AdminConfig, is_loopback};

/// Paths that need no token: liveness and readiness probes (kubelet, Docker `HEALTHCHECK`)
/// carry none. They still obey the `Host` rule.
pub const OPEN_PATHS: [&str; 2] = ["/healthz", "/readyz"];

/// A header no cross-site form or simple request can carry; `m365-relay reload` sends it.
pub const CSRF_HEADER: &str = "x-m365-relay";

/// Content types a cross-site form or a `fetch` without preflight may send (the CORS
/// "simple" types); a state-changing request must not rely on one of them alone.
const SIMPLE_CONTENT_TYPES: [&str; 3] = [
    "application/x-www-form-urlencoded",
    "multipart/form-data",
    "text/plain",
];

/// The local address a connection reached; the connection handler puts it in each
/// request's extensions.
#[derive(Debug, Clone, Copy)]
pub struct Reached(pub IpAddr);

/// What the caller proved: handlers that answer anyone (`/readyz`) show details only to
/// an operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// No token (allowed on [`OPEN_PATHS`] only).
    Anonymous,
    /// The right bearer token.
    Operator,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Host,
    Origin,
    NoToken,
    WrongToken,
    Forgery,
}

/// The middleware: runs [`check`], then the handler with the [`Caller`] in the request's
/// extensions.
pub async fn gate(Shared(services): Shared<Relay>, mut request: Request, next: Next) -> Response {
    let config = services.config();
    match check(&request, &config.admin) {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(refusal) => {
            tracing::debug!(reason = refusal.reason(), "admin request refused");
            refusal.into_response()
        }
    }
}

/// The four rules of the module doc, in order.
fn check(request: &Request, admin: &AdminConfig) -> Result<Caller, Refusal> {
    let reached = request.extensions().get::<Reached>().map(|r| r.0);
    let allowed = |host: &str| host_allowed(host, reached, admin);
    let headers = request.headers();
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = match (hosts.next(), hosts.next()) {
        (Some(host), None) => host.to_str().map_err(|_| Refusal::Host)?,
        _ => return Err(Refusal::Host),
    };
    let target = request.uri().authority().map(|a| a.as_str());
    if !allowed(host) || target.is_some_and(|t| !allowed(t)) {
        return Err(Refusal::Host);
    }
    for origin in headers.get_all(header::ORIGIN) {
        let origin_host = origin
            .to_str()
            .ok()
            .and_then(|o| url::Url::parse(o).ok())
            .filter(|url| matches!(url.scheme(), "http" | "https"))
            .and_then(|url| url.host_str().map(str::to_owned));
        if !origin_host.is_some_and(|h| allowed(&h)) {
            return Err(Refusal::Origin);
        }
    }
    let caller = match bearer(headers)? {
        None if OPEN_PATHS.contains(&request.uri().path()) => Caller::Anonymous,
        None => return Err(Refusal::NoToken),
        Some(presented) => match AdminToken::load(&admin.token_file) {
            Ok(token) if token.matches(presented) => Caller::Operator,
            Ok(_) => return Err(Refusal::WrongToken),
            Err(e) => {
                // Fail closed: no token to compare with lets nobody in.
                tracing::warn!(error = %e, "admin request refused: no admin token to check it against");
                return Err(Refusal::WrongToken);
            }
        },
    };
    if !matches!(*request.method(), Method::GET | Method::HEAD) && !unforgeable(headers) {
        return Err(Refusal::Forgery);
    }
    Ok(caller)
}

/// The token of an `Authorization: Bearer` header, `None` without one; several headers,
/// or another scheme, count as a wrong token.
fn bearer(headers: &HeaderMap) -> Result<Option<&[u8]>, Refusal> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = match (values.next(), values.next()) {
        (None, _) => return Ok(None),
        (Some(value), None) => value.as_bytes(),
        (Some(_), Some(_)) => return Err(Refusal::WrongToken),
    };
    let (scheme, token) = value
        .iter()
        .position(|&b| b == b' ')
        .map(|at| value.split_at(at))
        .ok_or(Refusal::WrongToken)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return Err(Refusal::WrongToken);
    }
    Ok(Some(token.trim_ascii()))
}

/// Whether a state-changing request carries something a cross-site page cannot send
/// without the browser asking first (CORS preflight), which this endpoint never grants.
fn unforgeable(headers: &HeaderMap) -> bool {
    if headers
        .get(CSRF_HEADER)
        .is_some_and(|v| !v.as_bytes().trim_ascii().is_empty())
    {
        return true;
    }
    let Some(content_type) = headers.get(header::CONTENT_TYPE) else {
        return false;
    };
    let Ok(content_type) = content_type.to_str() else {
        return false;
    };
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    !essence.is_empty() && !SIMPLE_CONTENT_TYPES.contains(&essence.as_str())
}

/// Whether `host` (a `Host` value: a name or an address, with or without port) is one
/// the endpoint answers to.
fn host_allowed(host: &str, reached: Option<IpAddr>, admin: &AdminConfig) -> bool {
    let Some(name) = host_name(host) else {
        return false;
    };
    let listed = admin.allowed_hosts.contains(&name);
    match name.parse::<IpAddr>() {
        Ok(ip) => {
            let ip = ip.to_canonical();
            listed
                || is_loopback(ip)
                || reached.is_some_and(|r| r.to_canonical() == ip)
                || admin.listen.is_some_and(|l| l.ip() == ip)
        }
        Err(_) => listed || name == "localhost",
    }
}

/// The name of a `Host` value without its port: lowercase, no trailing dot, an IPv6
/// address without brackets. `None` if it is malformed.
fn host_name(host: &str) -> Option<String> {
    let port_ok = |port: &str| {
        !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit())
    };
    if let Some(rest) = host.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        let ip: std::net::Ipv6Addr = v6.parse().ok()?;
        let port_ok = after.is_empty() || after.strip_prefix(':').is_some_and(port_ok);
        return port_ok.then(|| ip.to_string());
    }
    let name = match host.split_once(':') {
        Some((name, port)) if port_ok(port) => name,
        Some(_) => return None,
        None => host,
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    let valid = !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'));
    valid.then(|| name.to_ascii_lowercase())
}

// === impl Refusal ===

impl Refusal {
    fn reason(self) -> &'static str {
        match self {
            Refusal::Host => "host not allowed",
            Refusal::Origin => "cross-origin",
            Refusal::NoToken => "no bearer token",
            Refusal::WrongToken => "wrong bearer token",
            Refusal::Forgery => "no content type or header that a cross-site request cannot send",
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let (code, text) = match self {
            Refusal::Host => (
                StatusCode::MISDIRECTED_REQUEST,
                "this endpoint does not answer to that Host (see admin.allowed_hosts)",
            ),
            Refusal::Origin => (StatusCode::FORBIDDEN, "cross-origin requests are refused"),
            Refusal::NoToken | Refusal::WrongToken => {
                let challenge = match self {
                    Refusal::WrongToken => "Bearer realm=\"m365-relay\", error=\"invalid_token\"",
                    _ => "Bearer realm=\"m365-relay\"",
                };
                let text = "the admin endpoint needs its bearer token (admin.token_file or \
                            M365_RELAY_ADMIN_TOKEN)\n";
                return (
                    StatusCode::UNAUTHORIZED,
                    [(header::WWW_AUTHENTICATE, challenge)],
                    text,
                )
                    .into_response();
            }
            Refusal::Forgery => (
                StatusCode::FORBIDDEN,
                "a POST needs Content-Type: application/json or the header X-M365-Relay: 1",
            ),
        };
        (code, format!("{text}\n")).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use std::path::PathBuf;
    use std::time::Duration;

    fn admin(allowed: &[&str]) -> AdminConfig {
        AdminConfig {
            listen: Some("10.1.2.3:9587".parse().unwrap()),
            ready_requires_tokens: false,
            token_file: PathBuf::from("/nonexistent/admin.token"),
            allowed_hosts: allowed.iter().map(|h| (*h).to_owned()).collect(),
            header_read_timeout: Duration::from_secs(10),
            max_connections: 16,
        }
    }

    #[test]
    fn host_names_that_pass_and_fail() {
        let admin = admin(&["relay", "192.168.7.7"]);
        let reached = Some("172.18.0.5".parse().unwrap());
        for good in [
            "localhost",
            "LOCALHOST:9587",
            "localhost.",
            "127.0.0.1",
            "127.0.0.1:9587",
            "127.1.2.3:1",
            "[::1]",
            "[::1]:9587",
            "relay:9587",
            "Relay",
            "192.168.7.7",
            "172.18.0.5:9587",
            "10.1.2.3",
        ] {
            assert!(host_allowed(good, reached, &admin), "{good}");
        }
        for bad in [
            "",
            "evil.example",
            "evil.example:9587",
            "localhost.evil.example",
            "relay.evil.example",
            "127.0.0.1.nip.io",
            "10.9.9.9",
            "[::2]:9587",
            "[::1]x",
            "127.0.0.1:",
            "127.0.0.1:port",
            "127.0.0.1:999999",
            "local host",
            "[::1",
        ] {
            assert!(!host_allowed(bad, reached, &admin), "{bad}");
        }
    }

    fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> Request {
        let mut builder = Request::builder().method(method).uri(path);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(Body::empty()).unwrap()
    }

    #[test]
    fn the_rules_apply_in_order() {
        let admin = admin(&[]);
        let check =
            |method, path, headers: &[(&str, &str)]| check(&request(method, path, headers), &admin);
        assert_eq!(check("GET", "/healthz", &[]), Err(Refusal::Host));
        assert_eq!(
            check("GET", "/healthz", &[("host", "a"), ("host", "localhost")]),
            Err(Refusal::Host)
        );
        assert_eq!(
            check("GET", "/healthz", &[("host", "localhost")]),
            Ok(Caller::Anonymous)
        );
        assert_eq!(
            check(
                "GET",
                "http://evil.example/healthz",
                &[("host", "localhost")]
            ),
            Err(Refusal::Host)
        );
        assert_eq!(
            check(
                "GET",
                "/healthz",
                &[("host", "localhost"), ("origin", "http://evil.example")]
            ),
            Err(Refusal::Origin)
        );
        assert_eq!(
            check(
                "GET",
                "/healthz",
                &[("host", "localhost"), ("origin", "null")]
            ),
            Err(Refusal::Origin)
        );
        assert_eq!(
            check("GET", "/status", &[("host", "localhost")]),
            Err(Refusal::NoToken)
        );
        // No token file here: any presented token is wrong (fail closed).
        assert_eq!(
            check(
                "GET",
                "/healthz",
                &[("host", "localhost"), ("authorization", "Bearer x")]
            ),
            Err(Refusal::WrongToken)
        );
        assert_eq!(
            check(
                "GET",
                "/status",
                &[("host", "localhost"), ("authorization", "Basic eDp5")]
            ),
            Err(Refusal::WrongToken)
        );
    }

    #[test]
    fn only_unforgeable_requests_change_state() {
        let forgeable =
            |headers: &[(&str, &str)]| !unforgeable(request("POST", "/reload", headers).headers());
        assert!(forgeable(&[]));
        assert!(forgeable(&[("content-type", "text/plain")]));
        assert!(forgeable(&[("content-type", "Text/Plain; charset=utf-8")]));
        assert!(forgeable(&[(
            "content-type",
            "application/x-www-form-urlencoded"
        )]));
        assert!(forgeable(&[(
            "content-type",
            "multipart/form-data; boundary=x"
        )]));
        assert!(forgeable(&[("x-m365-relay", "")]));
        assert!(!forgeable(&[("content-type", "application/json")]));
        assert!(!forgeable(&[("x-m365-relay", "1")]));
    }
}
