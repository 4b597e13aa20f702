//! [`GraphError`]: why a send through Microsoft Graph failed, built from Graph's answer
//! (status, the JSON error body `{"error":{"code":..,"message":..}}`, `Retry-After`) or
//! from a network failure, and the one place that maps it to an SMTP reply with an
//! enhanced status code (RFC 3463):
//!
//! | failure | reply |
//! |---|---|
//! | 429, 503, 504 with `Retry-After` | `451 4.7.0 ... try again in N seconds` |
//! | 429, 503, 504 without it; other 5xx; timeout, connection error | `451 4.4.0` |
//! | 401 (token refused; the relay refreshes it) | `454 4.7.0` |
//! | 403 (`ErrorAccessDenied`, `ErrorSendAsDenied`, ...) | `550 5.7.1` |
//! | 404 `ErrorInvalidUser`, `ResourceNotFound`, `MailboxNotEnabledForRESTAPI` | `550 5.1.1` |
//! | 413, or a message too large to send at all | `552 5.3.4` |
//! | 400 about recipients (`ErrorInvalidRecipients`, ...) | `550 5.1.3` |
//! | other 400, or a message that cannot be parsed | `554 5.6.0` |
//! | no envelope recipients | `554 5.5.1` |
//! | other 4xx (and any other answer) | `554 5.0.0` |
//!
//! Neither the access token nor message content ever reaches a `GraphError`: its text is
//! Graph's error code and message, or the description of a network failure.

use std::fmt;
use std::time::Duration;

use http::HeaderMap;
use http::header::RETRY_AFTER;
use serde::Deserialize;

use crate::logfield::chain;

/// `code` of a request that timed out (no status).
pub const TIMEOUT: &str = "Timeout";
/// `code` of a request that could not connect or broke off (no status).
pub const CONNECTION_FAILED: &str = "ConnectionFailed";
/// `code` of an answer that is not what Graph sends (e.g. a draft without an `id`).
pub const INVALID_RESPONSE: &str = "InvalidResponse";
/// `code` of a message the relay cannot send at all: too large even for an upload session.
pub const MESSAGE_TOO_LARGE: &str = "MessageTooLarge";
/// `code` of a message that is not parseable as RFC 5322.
pub const INVALID_MESSAGE: &str = "InvalidMessage";
/// `code` of a message without envelope recipients.
pub const NO_RECIPIENTS: &str = "NoRecipients";
/// `code` of an access token that cannot go into an HTTP header.
pub const INVALID_TOKEN: &str = "InvalidAccessToken";

/// Longest piece of Graph-supplied text kept in an error.
const MAX_TEXT: usize = 300;

/// Longest `Retry-After` honoured; a larger value is clamped to it.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// A failed send: Graph's status and error code, or a local code ([`TIMEOUT`], ...) when
/// no answer came.
#[derive(Debug, Clone)]
pub struct GraphError {
    /// The HTTP status Graph answered with; `None` when no (usable) answer came.
    pub status: Option<u16>,
    /// Graph's `error.code` (e.g. `ErrorAccessDenied`), or a local code.
    pub code: String,
    /// Graph's `error.message`, or a description of the local failure.
    pub message: String,
    /// Graph's `Retry-After`, when it sent one.
    pub retry_after: Option<Duration>,
    /// Graph's `request-id` (what Microsoft support asks for), when it answered with one.
    pub request_id: Option<String>,
}

/// Graph's error body.
#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

impl GraphError {
    /// An error that did not come from Graph's answer.
    pub(crate) fn local(code: &str, message: impl Into<String>) -> Self {
        Self {
            status: None,
            code: code.to_owned(),
            message: clean(&message.into()),
            retry_after: None,
            request_id: None,
        }
    }

    /// The error a non-success answer means.
    pub(crate) fn from_response(status: u16, headers: &HeaderMap, body: &[u8]) -> Self {
        let (code, message) = match serde_json::from_slice::<ErrorBody>(body) {
            Ok(ErrorBody { error }) => (error.code, error.message),
            Err(_) => (String::new(), String::new()),
        };
        let code = if code.is_empty() {
            format!("HTTP{status}")
        } else {
            clean(&code)
        };
        Self {
            status: Some(status),
            code,
            message: clean(&message),
            retry_after: retry_after(headers),
            request_id: request_id(headers),
        }
    }

    /// The error of a request that got no answer. The URL is left out: an upload URL
    /// carries a token.
    pub(crate) fn from_reqwest(e: reqwest::Error) -> Self {
        let e = e.without_url();
        let code = if e.is_timeout() {
            TIMEOUT
        } else {
            CONNECTION_FAILED
        };
        Self::local(code, chain(&e))
    }

    /// Whether the failure may pass by itself: 429, 5xx, timeouts and connection errors.
    /// A 401 is not: it needs a new token (its SMTP reply is still temporary, `454`).
    pub fn is_transient(&self) -> bool {
        match self.status {
            Some(status) => status == 429 || (500..600).contains(&status),
            None => matches!(self.code.as_str(), TIMEOUT | CONNECTION_FAILED),
        }
    }

    /// Whether Graph throttled the request or is unavailable (429, 503, 504).
    pub fn is_throttled(&self) -> bool {
        matches!(self.status, Some(429 | 503 | 504))
    }

    /// The complete SMTP reply (one or more lines, CRLF-terminated) for this failure. The
    /// first line names Microsoft Graph and the error code; Graph's message, if any,
    /// follows on a line of its own.
    pub fn smtp_reply(&self) -> String {
        let (reply, enhanced, what) = self.classify();
        let first = format!("{enhanced} Microsoft Graph {what} ({})", self.code);
        let first = match (self.is_throttled(), self.retry_after) {
            (true, Some(after)) => format!("{first}: try again in {} seconds", after.as_secs()),
            _ => first,
        };
        if self.message.is_empty() {
            format!("{reply} {first}\r\n")
        } else {
            format!("{reply}-{first}\r\n{reply} {enhanced} {}\r\n", self.message)
        }
    }

    /// Reply code, enhanced status code and a few words for the first reply line.
    fn classify(&self) -> (u16, &'static str, &'static str) {
        let code = self.code.as_str();
        match self.status {
            Some(429 | 503 | 504) if self.retry_after.is_some() => {
                (451, "4.7.0", "is throttling or unavailable")
            }
            Some(429 | 503 | 504) => (451, "4.4.0", "is throttling or unavailable"),
            Some(500..=599) => (451, "4.4.0", "failed"),
            Some(401) => (454, "4.7.0", "refused the access token"),
            Some(403) => (550, "5.7.1", "refused to send as this mailbox"),
            Some(404) if is_unknown_mailbox(code) => (550, "5.1.1", "does not know the mailbox"),
            Some(413) => (552, "5.3.4", "refused the message as too large"),
            Some(400) if code.contains("Recipient") => (550, "5.1.3", "refused the recipients"),
            Some(400) => (554, "5.6.0", "refused the message"),
            Some(_) => (554, "5.0.0", "refused the request"),
            None => match code {
                MESSAGE_TOO_LARGE => (552, "5.3.4", "cannot take a message this large"),
                INVALID_MESSAGE => (554, "5.6.0", "cannot send a message that is not RFC 5322"),
                NO_RECIPIENTS => (554, "5.5.1", "has no recipients to send to"),
                INVALID_TOKEN => (454, "4.7.0", "cannot use the access token"),
                INVALID_RESPONSE => (451, "4.4.0", "answered unexpectedly"),
                _ => (451, "4.4.0", "could not be reached"),
            },
        }
    }
}

impl fmt::Display for GraphError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(status) => write!(f, "Microsoft Graph answered {status} {}", self.code)?,
            None => write!(f, "Microsoft Graph request failed: {}", self.code)?,
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        if let Some(after) = self.retry_after {
            write!(f, " (retry after {} s)", after.as_secs())?;
        }
        Ok(())
    }
}

impl std::error::Error for GraphError {}

fn is_unknown_mailbox(code: &str) -> bool {
    matches!(
        code,
        "ErrorInvalidUser" | "ResourceNotFound" | "MailboxNotEnabledForRESTAPI"
    )
}

/// `Retry-After` in seconds (Graph sends delta-seconds), clamped to a day.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let secs: u64 = value.parse().ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

/// Graph's `request-id` header (a GUID), when it is one line of at most 100 characters.
pub(crate) fn request_id(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("request-id")?.to_str().ok()?.trim();
    (!value.is_empty() && value.len() <= 100).then(|| clean(value))
}

/// Text fit for one SMTP reply line: control characters become spaces, at most
/// [`MAX_TEXT`] characters.
fn clean(text: &str) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_TEXT)
        .collect();
    out.truncate(out.trim_end().len());
    out
}
