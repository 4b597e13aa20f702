//! The small failures every part of the endpoint client reports, and the cleaning of
//! endpoint-supplied text before it goes into an error.

use crate::oauth::IdpError;

/// The largest response body accepted. Entra's token responses are a few KiB (an access
/// token is usually under 4 KiB); the cap keeps a hostile or broken endpoint from filling
/// memory.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Longest piece of endpoint-supplied text (`error`, `error_description`) kept in an error.
pub(super) const MAX_ERROR_TEXT: usize = 2048;

/// The endpoint cannot be asked (yet): a failure that may pass.
pub(super) fn unavailable(reason: String) -> IdpError {
    IdpError::Unavailable {
        reason,
        retry_after: None,
    }
}

pub(super) fn too_large() -> IdpError {
    IdpError::Malformed(format!("response body over {MAX_RESPONSE_BYTES} bytes"))
}

/// Endpoint-supplied text made safe for one log line: control characters become spaces,
/// and it is cut at [`MAX_ERROR_TEXT`] characters.
pub(crate) fn clean(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(MAX_ERROR_TEXT)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().nth(MAX_ERROR_TEXT).is_some() {
        out.push('…');
    }
    out
}
