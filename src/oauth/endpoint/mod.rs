//! The client of Entra ID's v2.0 endpoints. It redeems a refresh token for a fresh access
//! token (and the rotated refresh token), or gets one with the client-credentials grant for
//! an app-only mailbox; for `mailbox authorize` it also starts and polls a device code
//! (RFC 8628), builds the authorization URL with PKCE (RFC 7636) and redeems the
//! authorization code. Every failure is sorted into an [`IdpError`](super::IdpError).
//!
//! Every grant takes one path ([`TokenEndpoint`]'s token request): a form with
//! `grant_type`, `client_id`, the grant's own fields ([`grant`]) and the app's credential
//! ([`App`]) is POSTed to the token URL ([`request`]), and the answer is classified
//! ([`response`]). A confidential app authenticates every token request with its client
//! secret (`client_secret`), or with a client assertion signed by its certificate
//! (`client_assertion_type` and `client_assertion`, see [`super::assertion`]) whose
//! audience is the token URL the request goes to. A public client sends neither.
//!
//! Which login host: the mailbox's cloud's ([`Cloud::login_authority`]) while the
//! configured authority is the global default, else the configured one for every cloud
//! (see [`crate::cloud`]).
//!
//! Requests go out through `reqwest` 0.13; the `oauth2` crate builds the authorization URL
//! (PKCE, `state`) and provides the token response types. Only `200 OK` is read as an
//! answer; every other one is classified from its status code, headers (`Retry-After`)
//! and body:
//!
//! | answer | [`IdpError`](super::IdpError) |
//! |---|---|
//! | network error, timeout, reset | `Unavailable` |
//! | 5xx, 429, or an OAuth error `temporarily_unavailable` / `server_error` | `Unavailable`, with `Retry-After` (seconds) |
//! | 4xx with an OAuth error body (RFC 6749 §5.2) | `Rejected`, with Entra's `error_codes` |
//! | a redirect (never followed), a 4xx without an OAuth error, a body over [`MAX_RESPONSE_BYTES`] | `Malformed` |
//! | `200` that is not JSON, lacks `access_token` or `expires_in`, or is not `Bearer` | `Malformed` |
//!
//! No error text, `Debug` output or log line carries the refresh token, the access token,
//! the id_token, the device code, the authorization code, the PKCE verifier, the client
//! secret, the client assertion or the request body. Entra's `error_description` is kept: it names none.
//!
//! [`Cloud::login_authority`]: crate::cloud::Cloud::login_authority

mod app;
mod client;
mod errors;
mod grant;
mod request;
mod response;
mod sign_in;
#[cfg(test)]
mod tests;

pub use app::App;
pub use client::TokenEndpoint;
pub use errors::MAX_RESPONSE_BYTES;
pub(super) use errors::clean;
pub use sign_in::{AuthorizationRequest, DeviceAuthorization, MIN_POLL_INTERVAL};
