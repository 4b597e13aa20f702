//! Sends a message the relay received over SMTP through Microsoft Graph, for mailboxes
//! whose SMTP AUTH is off (PROTOCOL.md A11). The SMTP side hands over the message as
//! received (dot-unstuffed, CRLF) with its envelope recipients; [`Graph::send`] picks one
//! of three ways, so that the envelope, not the headers, decides who receives it:
//!
//! 1. **MIME `sendMail`**: when every To/Cc address is an envelope recipient, the message
//!    is to be saved to Sent Items, and it fits one request: the MIME with one `Bcc:`
//!    field naming the envelope recipients that To/Cc do not ([`mime::with_bcc`]), base64
//!    encoded, `Content-Type: text/plain`.
//! 2. **JSON `sendMail`**: otherwise, when it is not to be saved and the JSON message with
//!    its attachments inline fits one request: the recipients set explicitly from the
//!    envelope ([`json`]), `saveToSentItems: false`.
//! 3. **Draft**: otherwise a draft (`POST /messages`), its attachments (a plain POST
//!    under 3 MB, an upload session above), then `POST /messages/{id}/send`; a draft that
//!    fails on the way is deleted again (best effort). See [`draft`].
//!
//! A request body may not exceed [`MAX_REQUEST_BYTES`]. A 429 or 503 with a
//! `Retry-After` of at most 10 s (or none: 2 s) is waited out and the request repeated
//! once; anything else becomes a [`GraphError`], which knows its SMTP reply.
//!
//! Neither the access token nor message content is logged: requests are logged at debug
//! with their kind, status and size only.

mod draft;
mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod json;
mod mime;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue};
use mail_parser::MessageParser;
use url::{Host, Url};

pub use error::GraphError;
use error::{CONNECTION_FAILED, INVALID_MESSAGE, INVALID_RESPONSE, INVALID_TOKEN, NO_RECIPIENTS};

use crate::secret::AccessToken;
use crate::tls::http_client;

/// Graph's request-size limit for one request body: 4 MB (PROTOCOL.md A11), so at most
/// about 3 MB of MIME after base64.
pub const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// The longest answer read; a created draft echoes its whole body.
const MAX_RESPONSE_BYTES: usize = 2 * MAX_REQUEST_BYTES;

/// The longest `Retry-After` waited out inside [`Graph::send`].
const MAX_INLINE_RETRY: Duration = Duration::from_secs(10);

/// The wait before the one retry when a 429/503 came without `Retry-After`.
const DEFAULT_RETRY: Duration = Duration::from_secs(2);

/// A client of one Microsoft Graph endpoint. Cloning is cheap.
#[derive(Clone)]
pub struct Graph {
    http: reqwest::Client,
    /// The base URL incl. version, without a trailing slash.
    endpoint: Arc<str>,
    base: Arc<Url>,
}

/// A message to send, as the SMTP side received it. `Debug` shows sizes, not content.
#[derive(Clone, Copy)]
pub struct Outgoing<'a> {
    /// The RFC 5322 message as received, CRLF.
    pub mime: &'a [u8],
    /// The SMTP envelope recipients (RCPT TO addresses).
    pub recipients: &'a [String],
    /// Whether the sent message is kept in the mailbox's Sent Items. Above the request
    /// limit it always is: a draft sent with `/send` is saved, Graph has no switch there.
    pub save_to_sent_items: bool,
}

impl std::fmt::Debug for Outgoing<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outgoing")
            .field("mime_bytes", &self.mime.len())
            .field("recipients", &self.recipients.len())
            .field("save_to_sent_items", &self.save_to_sent_items)
            .finish()
    }
}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Graph")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// What the `sendMail` JSON wrapper adds around the message (`{"message":..,"saveToSentItems":false}`).
const JSON_WRAPPER_BYTES: usize = 64;

/// One request to Graph: what [`Graph::call`] sends, possibly twice.
struct Call<'a> {
    /// For the debug log: "sendMail-mime", "create draft", ...
    kind: &'static str,
    method: Method,
    url: Url,
    /// `None` for an upload URL, which carries its own token.
    token: Option<&'a AccessToken>,
    content_type: &'static str,
    body: Bytes,
    extra: Option<(HeaderName, String)>,
    /// The statuses that mean success.
    expect: &'static [u16],
}

impl Graph {
    /// A client for `endpoint`, the Graph base URL incl. version, e.g.
    /// `https://graph.microsoft.com/v1.0`; `http://` only when the host is a loopback IP
    /// (tests). It trusts Mozilla's roots. `timeout` bounds each request.
    pub fn new(endpoint: &str, timeout: Duration) -> Result<Graph, String> {
        let tls = crate::tls::client_config(None).map_err(|e| e.to_string())?;
        Self::with_tls(endpoint, tls, timeout)
    }

    /// Like [`new`](Self::new), trusting exactly `tls` (e.g. with an extra CA).
    pub fn with_tls(
        endpoint: &str,
        tls: Arc<rustls::ClientConfig>,
        timeout: Duration,
    ) -> Result<Graph, String> {
        let trimmed = endpoint.trim().trim_end_matches('/');
        let base = Url::parse(trimmed).map_err(|e| format!("Graph endpoint `{trimmed}`: {e}"))?;
        let loopback = match base.host() {
            Some(Host::Ipv4(ip)) => ip.is_loopback(),
            Some(Host::Ipv6(ip)) => ip.is_loopback(),
            _ => false,
        };
        let allowed = base.scheme() == "https" || (base.scheme() == "http" && loopback);
        if !allowed || base.cannot_be_a_base() || base.host().is_none() {
            return Err(format!(
                "Graph endpoint `{trimmed}` must be an https URL (http only for a loopback IP)"
            ));
        }
        if base.query().is_some() || base.fragment().is_some() {
            return Err(format!(
                "Graph endpoint `{trimmed}` must not have a query or fragment"
            ));
        }
        let http = http_client(&tls, &base, timeout)
            .map_err(|e| format!("cannot build the HTTP client for Graph: {e}"))?;
        Ok(Graph {
            http,
            endpoint: trimmed.into(),
            base: Arc::new(base),
        })
    }

    /// The base URL incl. version, without a trailing slash.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Sends `message` as `mailbox` (its address or UPN). `Ok` only after Graph answered
    /// `202 Accepted` (queued, not yet delivered).
    ///
    /// With `save_to_sent_items == false` a message above the request limit is still saved
    /// to Sent Items: only the draft path can send it, and `/send` always saves (logged at
    /// info).
    pub async fn send(
        &self,
        token: &AccessToken,
        mailbox: &str,
        message: &Outgoing<'_>,
    ) -> Result<(), GraphError> {
        self.send_traced(token, mailbox, message).await.map(drop)
    }

    /// [`Graph::send`], with Graph's `request-id` of the request that sent the message
    /// (what Microsoft support asks for), when Graph gave one.
    pub async fn send_traced(
        &self,
        token: &AccessToken,
        mailbox: &str,
        message: &Outgoing<'_>,
    ) -> Result<Option<String>, GraphError> {
        let parsed = MessageParser::default()
            .parse(message.mime)
            .ok_or_else(|| GraphError::local(INVALID_MESSAGE, "the message has no headers"))?;
        let recipients = mime::Recipients::classify(&parsed, message.recipients);
        if recipients.to.is_empty() && recipients.cc.is_empty() && recipients.bcc.is_empty() {
            return Err(GraphError::local(NO_RECIPIENTS, "no envelope recipients"));
        }

        if recipients.headers_in_envelope && message.save_to_sent_items {
            let bcc: Vec<String> = recipients.bcc.iter().map(|m| m.address.clone()).collect();
            let rewritten = mime::with_bcc(message.mime, &bcc);
            if mime::base64_len(rewritten.len()) <= MAX_REQUEST_BYTES {
                use base64::Engine as _;
                let body = base64::engine::general_purpose::STANDARD.encode(&rewritten);
                let url = self.url(mailbox, &["sendMail"])?;
                let call = Call::new("sendMail-mime", url, token, "text/plain", body, &[202]);
                return self.answer(&call).await.map(|(_, id)| id);
            }
        }

        let graph_message = json::build(&parsed, &recipients);
        if !message.save_to_sent_items
            && graph_message.estimated_len_with_attachments() + JSON_WRAPPER_BYTES
                <= MAX_REQUEST_BYTES
        {
            let body = serde_json::json!({
                "message": graph_message.with_attachments(),
                "saveToSentItems": false,
            });
            let url = self.url(mailbox, &["sendMail"])?;
            let call = Call::new("sendMail-json", url, token, JSON, body.to_string(), &[202]);
            return self.answer(&call).await.map(|(_, id)| id);
        }
        if !message.save_to_sent_items {
            tracing::info!(
                mailbox,
                "message above Graph's request limit: sent as a draft, which Graph always \
                 saves to Sent Items"
            );
        }
        draft::send(self, token, mailbox, &graph_message).await
    }

    /// `{endpoint}/users/{mailbox}/{rest...}`, each segment percent-encoded.
    fn url(&self, mailbox: &str, rest: &[&str]) -> Result<Url, GraphError> {
        let mut url = Url::clone(&self.base);
        match url.path_segments_mut() {
            Ok(mut segments) => {
                segments.pop_if_empty().push("users").push(mailbox);
                segments.extend(rest);
            }
            Err(()) => {
                return Err(GraphError::local(CONNECTION_FAILED, "not a base URL"));
            }
        }
        Ok(url)
    }

    /// Sends `call`, repeating it once after a short throttling answer; the body of a
    /// successful answer.
    async fn call(&self, call: &Call<'_>) -> Result<Vec<u8>, GraphError> {
        self.answer(call).await.map(|(body, _)| body)
    }

    /// [`Graph::call`], with the answer's `request-id`.
    async fn answer(&self, call: &Call<'_>) -> Result<(Vec<u8>, Option<String>), GraphError> {
        let mut retried = false;
        loop {
            let mut request = self
                .http
                .request(call.method.clone(), call.url.clone())
                .header(CONTENT_TYPE, call.content_type)
                .body(call.body.clone());
            if let Some(token) = call.token {
                let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
                    .map_err(|_| GraphError::local(INVALID_TOKEN, "unusable access token"))?;
                value.set_sensitive(true);
                request = request.header(AUTHORIZATION, value);
            }
            if let Some((name, value)) = &call.extra {
                request = request.header(name, value);
            }
            let mut response = request.send().await.map_err(GraphError::from_reqwest)?;
            let status = response.status().as_u16();
            let headers = std::mem::take(response.headers_mut());
            let body = read_capped(&mut response).await?;
            tracing::debug!(
                kind = call.kind,
                status,
                request_bytes = call.body.len(),
                response_bytes = body.len(),
                "Graph request"
            );
            if call.expect.contains(&status) {
                return Ok((body, error::request_id(&headers)));
            }
            let error = GraphError::from_response(status, &headers, &body);
            let wait = error.retry_after.unwrap_or(DEFAULT_RETRY);
            if !retried && matches!(status, 429 | 503) && wait <= MAX_INLINE_RETRY {
                tracing::debug!(
                    kind = call.kind,
                    status,
                    wait_secs = wait.as_secs(),
                    "retrying once"
                );
                retried = true;
                tokio::time::sleep(wait).await;
                continue;
            }
            return Err(error);
        }
    }
}

/// `Content-Type` of JSON requests.
const JSON: &str = "application/json";

impl<'a> Call<'a> {
    fn new(
        kind: &'static str,
        url: Url,
        token: &'a AccessToken,
        content_type: &'static str,
        body: impl Into<Bytes>,
        expect: &'static [u16],
    ) -> Self {
        Self {
            kind,
            method: Method::POST,
            url,
            token: Some(token),
            content_type,
            body: body.into(),
            extra: None,
            expect,
        }
    }
}

/// The answer's body, at most [`MAX_RESPONSE_BYTES`].
async fn read_capped(response: &mut reqwest::Response) -> Result<Vec<u8>, GraphError> {
    let too_large = || GraphError::local(INVALID_RESPONSE, "answer too large");
    if response
        .content_length()
        .is_some_and(|n| n > MAX_RESPONSE_BYTES as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(GraphError::from_reqwest)? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
