//! Who signed in: the user an id_token names, and the check that it is the one whose
//! token is wanted.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

use super::error::{FlowError, Method};
use crate::oauth::TokenGrant;
use crate::oauth::endpoint::clean;

/// The claims of an id_token that say who signed in and for which app.
#[derive(Deserialize)]
struct Claims {
    aud: Option<Audience>,
    preferred_username: Option<String>,
    upn: Option<String>,
    email: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

/// The user the grant's id_token names: its `preferred_username`, else `upn`, else `email`.
/// The id_token must be for `client_id` (its `aud`).
///
/// The signature is not checked. OpenID Connect Core 1.0 §3.1.3.7 (item 6) allows that
/// when the id_token comes straight from the token endpoint over TLS, as it does here: the
/// TLS server validation of the authority stands in for it. (A plain-http authority is
/// accepted only on a loopback address, for tests.)
pub fn signed_in_user(grant: &TokenGrant, client_id: &str) -> Result<String, FlowError> {
    let token = grant.id_token.as_deref().ok_or(FlowError::NoIdToken)?;
    let payload = token
        .split('.')
        .nth(1)
        .filter(|p| !p.is_empty())
        .ok_or(FlowError::BadIdToken("it is not a JWT"))?;
    let json = URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| FlowError::BadIdToken("its payload is not base64url"))?;
    let claims: Claims = serde_json::from_slice(&json)
        .map_err(|_| FlowError::BadIdToken("its payload is not a JSON object of claims"))?;
    let for_us = match &claims.aud {
        Some(Audience::One(aud)) => aud.eq_ignore_ascii_case(client_id),
        Some(Audience::Many(auds)) => auds.iter().any(|a| a.eq_ignore_ascii_case(client_id)),
        None => false,
    };
    if !for_us {
        return Err(FlowError::BadIdToken(
            "it was issued for another application (aud)",
        ));
    }
    [claims.preferred_username, claims.upn, claims.email]
        .into_iter()
        .flatten()
        .map(|name| clean(name.trim()))
        .find(|name| !name.is_empty())
        .ok_or(FlowError::BadIdToken(
            "it names no user (preferred_username, upn or email)",
        ))
}

/// Checks that `expected` (compared without regard to case) signed in; returns the user
/// as the id_token spells it. See [`signed_in_user`].
pub fn check_identity(
    grant: &TokenGrant,
    client_id: &str,
    expected: &str,
    method: Method,
) -> Result<String, FlowError> {
    let user = signed_in_user(grant, client_id)?;
    if user.eq_ignore_ascii_case(expected) {
        Ok(user)
    } else {
        Err(FlowError::WrongUser {
            signed_in: user,
            expected: expected.to_owned(),
            method,
        })
    }
}
