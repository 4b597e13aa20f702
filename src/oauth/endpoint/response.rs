//! What Entra's answers mean: an answer other than `200 OK` becomes the [`IdpError`] it
//! means (while its status code and `Retry-After` are at hand), and a `200` is parsed as a
//! JSON document (a token response, or a device authorization) and checked before it
//! becomes a [`TokenGrant`]. Messages never quote a body: it may hold tokens.

use std::fmt;
use std::time::{Duration, SystemTime};

use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, StatusCode};
use oauth2::basic::BasicTokenType;
use oauth2::{ExtraTokenFields, StandardTokenResponse, TokenResponse};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::errors::{clean, too_large};
use crate::oauth::{IdpError, TokenGrant};
use crate::secret::{AccessToken, RefreshToken};

/// OAuth `error` values that mean "try again later" rather than "this grant is refused"
/// (RFC 6749 §4.1.2.1).
const TRANSIENT_ERRORS: &[&str] = &["temporarily_unavailable", "server_error"];

/// Longest `id_token` accepted (Entra's are 1-2 KiB).
const MAX_ID_TOKEN_LEN: usize = 16 * 1024;

/// What a token endpoint answer is called in messages.
pub(super) const TOKEN_RESPONSE: &str = "token response";

/// A `200 OK` answer: its headers and its whole body (at most
/// [`MAX_RESPONSE_BYTES`](super::MAX_RESPONSE_BYTES)).
pub(super) struct Answer {
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

/// Entra's additions to a token response: the OpenID Connect `id_token`, present when
/// `openid` was among the scopes. `Debug` does not show it.
#[derive(Clone, Default, Deserialize, Serialize)]
pub(super) struct EntraTokenFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id_token: Option<String>,
}

impl fmt::Debug for EntraTokenFields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EntraTokenFields")
            .field("id_token", &self.id_token.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

impl ExtraTokenFields for EntraTokenFields {}

/// A token response as Entra sends it.
pub(super) type EntraTokenResponse = StandardTokenResponse<EntraTokenFields, BasicTokenType>;

/// An OAuth 2.0 error response (RFC 6749 §5.2) with Entra's additions.
#[derive(Deserialize)]
struct OAuthError {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
    /// Entra's AADSTS numbers, e.g. `[700082]`.
    #[serde(default)]
    error_codes: Vec<u64>,
}

/// Maps an answer other than `200 OK` to what it means. `body` is `None` when it was
/// over the size cap.
pub(super) fn classify_failure(
    status: StatusCode,
    headers: &HeaderMap,
    body: Option<&[u8]>,
) -> IdpError {
    let oauth = body.and_then(|b| serde_json::from_slice::<OAuthError>(b).ok());
    let transient = status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || oauth
            .as_ref()
            .is_some_and(|e| TRANSIENT_ERRORS.contains(&e.error.as_str()));

    if transient {
        let reason = match &oauth {
            Some(e) => format!(
                "HTTP {status}: {}: {}",
                clean(&e.error),
                clean(e.error_description.as_deref().unwrap_or_default())
            ),
            None => format!("HTTP {status}"),
        };
        return IdpError::Unavailable {
            reason,
            retry_after: retry_after(headers),
        };
    }
    match oauth {
        _ if body.is_none() => too_large(),
        Some(e) if status.is_client_error() => IdpError::Rejected {
            status: status.as_u16(),
            error: clean(&e.error),
            description: clean(e.error_description.as_deref().unwrap_or_default()),
            codes: e.error_codes,
        },
        _ if status.is_redirection() => IdpError::Malformed(format!(
            "HTTP {status}: a redirect, which is never followed"
        )),
        _ => IdpError::Malformed(format!("HTTP {status} without an OAuth error response")),
    }
}

/// `Retry-After` in delta-seconds (the form Entra uses); an HTTP-date is ignored.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Parses a `200` answer as the JSON document `what` (e.g. "token response"): JSON when
/// a `Content-Type` is given, of the expected shape. Messages never quote the body.
pub(super) fn parse_json<T: DeserializeOwned>(answer: &Answer, what: &str) -> Result<T, IdpError> {
    if let Some(content_type) = answer.headers.get(CONTENT_TYPE) {
        let essence = content_type
            .to_str()
            .unwrap_or_default()
            .split(';')
            .next()
            .unwrap_or_default()
            .trim();
        if !essence.eq_ignore_ascii_case("application/json") {
            return Err(IdpError::Malformed(format!(
                "{what}: unexpected Content-Type `{}`",
                clean(essence)
            )));
        }
    }
    serde_json::from_slice(&answer.body).map_err(|e| {
        let message = e.to_string();
        IdpError::Malformed(match e.classify() {
            serde_json::error::Category::Data if message.starts_with("missing field `") => {
                let field = message.split('`').nth(1).unwrap_or_default();
                format!("{what}: missing field `{}`", clean(field))
            }
            serde_json::error::Category::Data => {
                format!("{what}: a field has the wrong type or value")
            }
            _ => format!(
                "{what} is not JSON (line {}, column {})",
                e.line(),
                e.column()
            ),
        })
    })
}

/// Builds the grant from a parsed `200` answer, refusing what we could not use.
pub(super) fn grant(
    response: &EntraTokenResponse,
    requested: &[&str],
) -> Result<TokenGrant, IdpError> {
    let access_token = response.access_token().secret();
    if access_token.is_empty() {
        return Err(IdpError::Malformed(
            "token response: empty access_token".into(),
        ));
    }
    if *response.token_type() != BasicTokenType::Bearer {
        return Err(IdpError::Malformed(
            "token response: token_type is not Bearer".into(),
        ));
    }
    let expires_in = response
        .expires_in()
        .ok_or_else(|| IdpError::Malformed("token response: missing field `expires_in`".into()))?;
    let expires_at = SystemTime::now()
        .checked_add(expires_in)
        .ok_or_else(|| IdpError::Malformed("token response: expires_in is out of range".into()))?;
    let id_token = match &response.extra_fields().id_token {
        Some(t) if t.len() > MAX_ID_TOKEN_LEN => {
            return Err(IdpError::Malformed(format!(
                "{TOKEN_RESPONSE}: id_token over {MAX_ID_TOKEN_LEN} bytes"
            )));
        }
        other => other.clone(),
    };
    Ok(TokenGrant {
        access_token: AccessToken::new(access_token.as_str()),
        expires_at,
        refresh_token: response
            .refresh_token()
            .map(|t| RefreshToken::new(t.secret().as_str())),
        scope: granted_scope(response, requested),
        id_token,
    })
}

/// The scopes granted, space separated. RFC 6749 §5.1: an omitted `scope` means the
/// scopes requested were granted.
fn granted_scope(response: &EntraTokenResponse, requested: &[&str]) -> String {
    match response.scopes() {
        Some(granted) => granted
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(" "),
        None => requested.join(" "),
    }
}
