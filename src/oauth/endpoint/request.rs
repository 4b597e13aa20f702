//! One POST of a form to an Entra endpoint: sent with the relay's HTTP client (no
//! redirects followed, time-bounded), its answer read up to
//! [`MAX_RESPONSE_BYTES`](super::MAX_RESPONSE_BYTES), and anything but `200 OK` turned into
//! the [`IdpError`] it means while the status code and headers are at hand.

use http::StatusCode;
use http::header::{ACCEPT, CONTENT_TYPE};

use super::errors::{MAX_RESPONSE_BYTES, too_large, unavailable};
use super::response::{Answer, classify_failure};
use crate::logfield::chain;
use crate::oauth::IdpError;

/// POSTs the form `body` (`application/x-www-form-urlencoded`) to `url` and returns a
/// `200 OK` answer. The body holds secrets: it is never printed, and neither is the
/// request.
pub(super) async fn post_form(
    http: &reqwest::Client,
    url: &str,
    body: &str,
) -> Result<Answer, IdpError> {
    let request = http
        .post(url)
        .header(ACCEPT, "application/json")
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(body.as_bytes().to_vec())
        .build()
        .map_err(|e| {
            unavailable(format!(
                "cannot build the request: {}",
                chain(&e.without_url())
            ))
        })?;
    let mut response = http.execute(request).await.map_err(network_error)?;
    let status = response.status();
    let headers = std::mem::take(response.headers_mut());
    let body = read_capped(&mut response).await?;

    if status != StatusCode::OK {
        return Err(classify_failure(status, &headers, body.as_deref()));
    }
    let body = body.ok_or_else(too_large)?;
    Ok(Answer { headers, body })
}

/// Reads the body, or `None` once it proves longer than [`MAX_RESPONSE_BYTES`].
async fn read_capped(response: &mut reqwest::Response) -> Result<Option<Vec<u8>>, IdpError> {
    if response
        .content_length()
        .is_some_and(|n| n > MAX_RESPONSE_BYTES as u64)
    {
        return Ok(None);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(network_error)? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// A failure to talk to the endpoint at all. The URL is dropped from the text: it names
/// only the tenant, but nothing in a transport error needs it.
fn network_error(e: reqwest::Error) -> IdpError {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    unavailable(format!("{what}: {}", chain(&e.without_url())))
}
