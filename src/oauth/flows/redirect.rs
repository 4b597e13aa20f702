//! Reading an authorization response (RFC 6749 §4.1.2), from the loopback listener's
//! request or from the address the admin pastes after a `--paste` sign-in: the `state`
//! must be this sign-in's, then an `error` or the `code`.

use std::collections::HashMap;

use url::Url;

use super::error::FlowError;
use crate::oauth::endpoint::{AuthorizationRequest, clean};

/// The authorization code in the address the browser ended on after a `--paste` sign-in
/// (`…/nativeclient?code=…&state=…`). A bare query (`code=…&state=…`) will do too.
pub fn code_from_pasted(request: &AuthorizationRequest, pasted: &str) -> Result<String, FlowError> {
    let text = pasted.trim();
    let query = match Url::parse(text) {
        Ok(url) => url
            .query()
            .or(url.fragment())
            .unwrap_or_default()
            .to_owned(),
        Err(_) => text
            .split_once('?')
            .map_or(text, |(_, query)| query)
            .trim_start_matches('#')
            .to_owned(),
    };
    if !has_answer(&query) {
        return Err(FlowError::NoCode);
    }
    code_from_query(request, &query)
}

/// Whether a redirect's query carries an answer: a `code` or an `error`.
pub(super) fn has_answer(query: &str) -> bool {
    url::form_urlencoded::parse(query.as_bytes()).any(|(k, _)| k == "code" || k == "error")
}

/// Reads an authorization response (RFC 6749 §4.1.2): the `state` must be ours; then an
/// `error` (with Entra's `error_description`) or the `code`.
pub(super) fn code_from_query(
    request: &AuthorizationRequest,
    query: &str,
) -> Result<String, FlowError> {
    let mut fields: HashMap<String, String> = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        fields
            .entry(k.into_owned())
            .or_insert_with(|| v.into_owned());
    }
    if !fields
        .get("state")
        .is_some_and(|state| request.state_matches(state))
    {
        return Err(FlowError::StateMismatch);
    }
    if let Some(error) = fields.get("error") {
        let description = fields.get("error_description").map_or("", String::as_str);
        return Err(FlowError::Denied {
            error: clean(error),
            description: clean(description),
        });
    }
    match fields.remove("code") {
        Some(code) if !code.is_empty() => Ok(code),
        _ => Err(FlowError::NoCode),
    }
}
