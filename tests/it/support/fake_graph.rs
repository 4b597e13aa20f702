//! A fake of Microsoft Graph v1.0's mail-sending endpoints on 127.0.0.1:0, answering as
//! graph.microsoft.com does (PROTOCOL.md A11): `POST /v1.0/users/{id}/sendMail` (base64
//! MIME as `text/plain`, or JSON), `POST /users/{id}/messages` (a draft, MIME or JSON: 201
//! with its `id`), `.../messages/{mid}/attachments` (201),
//! `.../attachments/createUploadSession` (201 with an `uploadUrl` back at this fake),
//! ranged `PUT`s to that URL (200 per chunk, 201 after the last; an `Authorization`
//! header is refused with 401, as Microsoft's upload endpoint does), `.../messages/{mid}/send`
//! (202) and `DELETE .../messages/{mid}` (204).
//!
//! Every API request must carry a bearer token from the [`FakeEntra`](super::fake_entra)
//! behind [`AccessTokenChecker`]: a token for another audience (Outlook) or an unknown or
//! expired one gets `401 InvalidAuthenticationToken`; a delegated token without `Mail.Send`
//! or an app token without the `Mail.Send` role `403 ErrorAccessDenied`; a delegated
//! token for another user's mailbox needs `Mail.Send.Shared` and a grant
//! ([`FakeGraph::add_shared_mailbox`]), else `403 ErrorSendAsDenied`. Unknown mailboxes
//! get `404 ErrorInvalidUser`; a body over 4 MB `413`; bad base64 `400
//! ErrorMimeContentInvalidBase64String`.
//!
//! Messages that Graph accepted are recorded as [`SentMail`]. Tests can script failures
//! ([`FakeGraph::fail_next`]), delay answers, and read the request log.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use super::fake_entra::AccessTokenChecker;
use super::graph_state::GraphState;
use super::graph_wire::Answer;
pub use super::graph_wire::{GraphRequest, SentMail};
use super::tasks::{ServerGuard, TaskWatch, panic_message, serve_http};

/// The fake Graph. Clones share state; the server stops when the last clone is dropped,
/// and that drop fails the test if a handler panicked.
#[derive(Clone)]
pub struct FakeGraph {
    inner: Arc<Inner>,
    _server: Arc<ServerGuard>,
}

struct Inner {
    base: String,
    watch: Arc<TaskWatch>,
    state: Mutex<GraphState>,
}

impl FakeGraph {
    /// Binds 127.0.0.1:0; tokens are checked with `checker`.
    pub async fn start(checker: AccessTokenChecker) -> FakeGraph {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake Graph");
        let addr = listener.local_addr().expect("fake Graph address");
        let watch = Arc::new(TaskWatch::new("graph"));
        let base = format!("http://{addr}");
        let inner = Arc::new(Inner {
            base: base.clone(),
            watch: watch.clone(),
            state: Mutex::new(GraphState::new(base, checker)),
        });
        let app = Router::new()
            .fallback(handle)
            // Larger bodies than Graph takes must reach the handler, which answers 413.
            .layer(DefaultBodyLimit::max(64 * 1024 * 1024))
            .with_state(inner.clone());
        FakeGraph {
            inner,
            _server: serve_http(watch, listener, app),
        }
    }

    /// `http://127.0.0.1:PORT/v1.0`, the value in place of `https://graph.microsoft.com/v1.0`.
    pub fn endpoint(&self) -> String {
        format!("{}/v1.0", self.inner.base)
    }

    /// A user mailbox that can send as itself.
    pub fn add_user(&self, upn: &str) {
        self.inner.lock().add_mailbox(upn, &[]);
    }

    /// A shared mailbox that `delegates` may send as (with `Mail.Send.Shared`).
    pub fn add_shared_mailbox(&self, address: &str, delegates: &[&str]) {
        self.inner.lock().add_mailbox(address, delegates);
    }

    /// Every message Graph accepted, in order.
    pub fn sent(&self) -> Vec<SentMail> {
        self.inner.lock().sent.clone()
    }

    /// Every request, in arrival order.
    pub fn requests(&self) -> Vec<GraphRequest> {
        self.inner.lock().requests.clone()
    }

    /// Ids of the drafts that were deleted.
    pub fn deleted_drafts(&self) -> Vec<String> {
        self.inner.lock().deleted.clone()
    }

    /// Ids of drafts that exist (created, neither sent nor deleted).
    pub fn open_drafts(&self) -> Vec<String> {
        self.inner.lock().drafts.keys().cloned().collect()
    }

    /// The next API request (not an upload chunk) is answered with `status` and Graph's
    /// error body with `code`, plus `Retry-After: retry_after` seconds when given.
    pub fn fail_next(&self, status: u16, code: &str, retry_after: Option<u64>) {
        self.inner
            .lock()
            .script
            .push_back((status, code.to_string(), retry_after));
    }

    /// Holds every following answer for `delay`.
    pub fn set_delay(&self, delay: Duration) {
        self.inner.lock().delay = delay;
    }

    /// Panics if a handler panicked or a request matched no endpoint.
    pub fn check(&self) {
        self.inner.watch.check();
        let unmatched: Vec<_> = self
            .requests()
            .into_iter()
            .filter(|r| r.status == 404 && r.code.as_deref() == Some("UnknownPath"))
            .collect();
        assert!(
            unmatched.is_empty(),
            "fake graph: unknown paths {unmatched:?}"
        );
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, GraphState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

async fn handle(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let delay = inner.lock().delay;
    let answered = std::panic::catch_unwind(AssertUnwindSafe(|| {
        inner.lock().answer(&method, &uri, &headers, &body)
    }));
    let answer = answered.unwrap_or_else(|payload| {
        let message = panic_message(payload);
        inner
            .watch
            .record_failure(format!("{method} {uri} panicked: {message}"));
        Answer::error(500, "FakeGraphPanic", &message)
    });
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, answer.body).into_response();
    let out = response.headers_mut();
    if answer.json {
        out.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; odata.metadata=minimal"),
        );
    }
    if let Some(after) = answer.retry_after {
        out.insert(header::RETRY_AFTER, HeaderValue::from(after));
    }
    // Graph names every answer with a `request-id` (a GUID), what Microsoft support asks for.
    let serial = inner.lock().requests.len();
    let id = format!("8c1a7b2e-0000-4000-8000-{serial:012x}");
    if let Ok(id) = HeaderValue::from_str(&id) {
        out.insert("request-id", id);
    }
    response
}
