//! The admin HTTP endpoint, for operators and orchestrators: `/healthz` (the process is up),
//! `/readyz` (listeners bound and state loaded; reports mailboxes that need an admin, and
//! fails on them only when configured to; says `degraded`, and stays ready, while the
//! state database is unreachable; never fails because of the outbound queue), `/metrics`
//! (Prometheus text), and `/status` (JSON, read by `m365-relay status`; the queue's depth
//! in [`queue`]), and `POST /reload` (what SIGHUP does; used by
//! `m365-relay reload`).
//!
//! It names mailboxes and can reload, so only the probes `/healthz` and `/readyz` answer
//! without the bearer token, and every request must name an allowed `Host` ([`gate`]).
//! The token is in [`token`]; the bounds on connections in [`conn`].

pub mod conn;
pub mod database;
pub mod gate;
pub mod queue;
pub mod token;
mod view;

pub use database::DatabaseView;
pub use queue::{QueueReader, QueueView};
pub use view::{Relay, RelayView};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::State as Shared;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::datetime::unix;
use crate::mailbox::Registration;
use crate::metrics::{Metrics, StateLabel};
use crate::oauth::health::State;

/// One mailbox as `/status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MailboxView {
    pub address: String,
    /// The delegate whose token a shared mailbox uses.
    pub token_from: Option<String>,
    pub state: State,
    /// Unix seconds.
    pub access_token_expires: Option<u64>,
    pub last_refresh: Option<u64>,
    pub last_outcome: Option<String>,
    pub error: Option<String>,
}

/// What `/status` answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub uptime_secs: u64,
    pub listeners: Vec<ListenerView>,
    /// Open client sessions per protocol.
    pub sessions_open: Vec<(String, i64)>,
    pub mailboxes: Vec<MailboxView>,
    /// The state database (`postgres` backend only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<DatabaseView>,
    /// The outbound queue (absent when the state keeps none, or its stats were never read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListenerView {
    pub name: String,
    pub addr: SocketAddr,
}

/// Serves the endpoint on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, services: Relay, shutdown: CancellationToken) {
    conn::accept_loop(listener, router(services.clone()), services, shutdown).await;
}

/// The paths, behind the [`gate`] (which also answers unknown paths).
fn router(services: Relay) -> Router {
    let queue = Arc::new(QueueReader::new(services.queue()));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/reload", post(reload))
        .layer(Extension(queue))
        .layer(axum::middleware::from_fn_with_state(
            services.clone(),
            gate::gate,
        ))
        .with_state(services)
}

async fn reload(Shared(services): Shared<Relay>) -> Response {
    match services.reload().await {
        Ok(summary) => (StatusCode::OK, format!("{summary}\n")).into_response(),
        Err(why) => (StatusCode::CONFLICT, format!("reload refused: {why}\n")).into_response(),
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Every mailbox with its token state (a shared mailbox shows its delegate's).
fn mailboxes(services: &dyn RelayView) -> Vec<MailboxView> {
    let registry = services.registry();
    registry
        .iter()
        .map(|m| {
            let token_from = match &m.registration {
                Registration::TokenFrom { delegate } => Some(delegate.clone()),
                Registration::App { .. } => None,
            };
            let owner = token_from.as_deref().unwrap_or(&m.address);
            let s = services.tokens().status(owner);
            MailboxView {
                address: m.address.clone(),
                token_from,
                state: s.state,
                access_token_expires: s.access_token_expires,
                last_refresh: s.last_refresh,
                last_outcome: s.last_outcome,
                error: s.error,
            }
        })
        .collect()
}

/// Anyone may ask (probes carry no token), but only an operator sees which mailboxes need
/// an admin; others get their number.
async fn readyz(
    Shared(services): Shared<Relay>,
    Extension(caller): Extension<gate::Caller>,
) -> Response {
    let listeners = services.listeners();
    let attention: Vec<String> = mailboxes(services.as_ref())
        .into_iter()
        .filter(|m| matches!(m.state, State::NeedsReauth | State::NoToken))
        .map(|m| format!("{} ({})", m.address, m.state.as_str()))
        .collect();
    let ready = !listeners.is_empty()
        && (attention.is_empty() || !services.config().admin.ready_requires_tokens);
    let mut body = serde_json::json!({
        "ready": ready,
        "listeners": listeners.iter().map(|(n, a)| format!("{n} {a}")).collect::<Vec<_>>(),
        "mailboxes_needing_admin_count": attention.len(),
    });
    if caller == gate::Caller::Operator {
        body["mailboxes_needing_admin"] = attention.into();
    }
    let db = services.database().map(|h| DatabaseView::of(&h));
    let degraded = database::readiness(db.as_ref(), caller == gate::Caller::Operator);
    if let (Some(body), serde_json::Value::Object(fields)) = (body.as_object_mut(), degraded) {
        body.extend(fields);
    }
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(body)).into_response()
}

async fn metrics(
    Shared(services): Shared<Relay>,
    Extension(queue): Extension<Arc<QueueReader>>,
) -> Response {
    let m = services.metrics();
    queue::export(&queue, services.as_ref()).await;
    m.mailboxes.clear();
    m.access_token_expiry.clear();
    for state in [
        State::Unknown,
        State::Ok,
        State::Failing,
        State::NeedsReauth,
        State::NoToken,
    ] {
        m.mailboxes
            .get_or_create(&StateLabel {
                state: state.as_str(),
            })
            .set(0);
    }
    m.credential_expiry.clear();
    for mailbox in services.registry().iter() {
        if let Some(at) = mailbox.credential_expires() {
            let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(at);
            Metrics::set_expiry(&m.credential_expiry, &mailbox.address, at);
        }
    }
    for view in mailboxes(services.as_ref()) {
        m.mailboxes
            .get_or_create(&StateLabel {
                state: view.state.as_str(),
            })
            .inc();
        if let Some(at) = view.access_token_expires {
            let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(at);
            Metrics::set_expiry(&m.access_token_expiry, &view.address, at);
        }
    }
    if let Some(health) = services.database() {
        database::export(&DatabaseView::of(&health), m);
    }
    export_refreshes(services.as_ref());
    let text = m.render();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// Brings the token refresh counters up to the token cache's counts.
fn export_refreshes(services: &dyn RelayView) {
    let counts = services.tokens().refresh_counts();
    for (outcome, count) in crate::oauth::cache::REFRESH_OUTCOMES
        .into_iter()
        .zip(counts)
    {
        let counter = services
            .metrics()
            .token_refreshes
            .get_or_create(&crate::metrics::RefreshLabel { outcome });
        counter.inc_by(count.saturating_sub(counter.get()));
    }
}

async fn status(
    Shared(services): Shared<Relay>,
    Extension(queue): Extension<Arc<QueueReader>>,
) -> axum::Json<Status> {
    let now = unix(SystemTime::now());
    let listeners = services.listeners();
    let sessions_open = ["smtp", "imap", "pop3"]
        .into_iter()
        .map(|p| {
            let open = services
                .metrics()
                .sessions_open
                .get_or_create(&crate::metrics::ProtocolLabel { protocol: p })
                .get();
            (p.to_owned(), open)
        })
        .collect();
    axum::Json(Status {
        version: env!("CARGO_PKG_VERSION").into(),
        uptime_secs: now.saturating_sub(unix(services.started())),
        listeners: listeners
            .into_iter()
            .map(|(name, addr)| ListenerView {
                name: name.into(),
                addr,
            })
            .collect(),
        sessions_open,
        mailboxes: mailboxes(services.as_ref()),
        database: services.database().map(|h| DatabaseView::of(&h)),
        queue: queue.stats().await.map(|read| QueueView::of(&read, now)),
    })
}
