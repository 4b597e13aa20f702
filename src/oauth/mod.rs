//! OAuth 2.0 with Microsoft Entra ID, split by lifecycle:
//! - [`endpoint`]: talks to the v2.0 endpoints (refresh, device-code, authorization-code and
//!   client-credentials grants).
//! - [`assertion`]: the signed JWT a confidential app with a certificate sends instead of a
//!   client secret.
//! - [`flows`]: the administrator's interactive sign-ins (`mailbox authorize`).
//! - refresh tokens at rest are [`crate::state`]'s ([`crate::state::RefreshTokens`]).
//! - [`cache`]: access tokens in memory, per mailbox, with single-flight refresh.

pub mod assertion;
pub mod cache;
pub mod endpoint;
pub mod flows;
pub mod health;
pub mod refresher;
#[cfg(test)]
pub(crate) mod testing;

use std::time::{Duration, SystemTime};

use crate::secret::{AccessToken, RefreshToken};

/// Delegated scopes for Exchange Online mail (PROTOCOL.md A4): one token serves IMAP, POP
/// and SMTP. `offline_access` makes Entra return a refresh token. These are the global
/// cloud's; [`crate::cloud::Cloud::delegated_scopes`] has every cloud's.
pub const DELEGATED_SCOPES: &[&str] = &[
    "https://outlook.office.com/IMAP.AccessAsUser.All",
    "https://outlook.office.com/POP.AccessAsUser.All",
    "https://outlook.office.com/SMTP.Send",
    "offline_access",
];

/// The OpenID Connect scopes a sign-in adds to [`DELEGATED_SCOPES`], so that Entra returns
/// an id_token naming who signed in (`profile` brings `preferred_username` and `name`).
pub const OIDC_SCOPES: &[&str] = &["openid", "profile"];

/// What `mailbox authorize` asks for: [`DELEGATED_SCOPES`] and [`OIDC_SCOPES`] (global
/// cloud; see [`crate::cloud::Cloud::sign_in_scopes`]).
pub const SIGN_IN_SCOPES: &[&str] = &[
    "https://outlook.office.com/IMAP.AccessAsUser.All",
    "https://outlook.office.com/POP.AccessAsUser.All",
    "https://outlook.office.com/SMTP.Send",
    "offline_access",
    "openid",
    "profile",
];

/// What the token endpoint granted. `Debug` shows no token.
#[derive(Clone)]
pub struct TokenGrant {
    pub access_token: AccessToken,
    /// When the access token expires, from `expires_in` (never assumed).
    pub expires_at: SystemTime,
    /// The rotated refresh token, when Entra sent one (it does on every refresh).
    pub refresh_token: Option<RefreshToken>,
    /// Scopes granted, space separated, as Entra reported them.
    pub scope: String,
    /// The OpenID Connect id_token, when `openid` was asked for (sign-in flows).
    pub id_token: Option<String>,
}

impl std::fmt::Debug for TokenGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenGrant")
            .field("access_token", &self.access_token)
            .field("expires_at", &self.expires_at)
            .field("refresh_token", &self.refresh_token)
            .field("scope", &self.scope)
            .field("id_token", &self.id_token.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

/// A failure of the identity platform.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IdpError {
    /// Entra answered with an OAuth error response (RFC 6749 §5.2), e.g. `invalid_grant`
    /// with AADSTS700082. `description` is Entra's text: it names no secret.
    #[error("{error} (HTTP {status}): {description}")]
    Rejected {
        status: u16,
        error: String,
        description: String,
        /// Entra's `error_codes` (the AADSTS numbers).
        codes: Vec<u64>,
    },
    /// The endpoint could not be reached, timed out, or answered 5xx / `temporarily_unavailable`.
    #[error("token endpoint unavailable: {reason}")]
    Unavailable {
        reason: String,
        /// From a `Retry-After` header, when there was one.
        retry_after: Option<Duration>,
    },
    /// The endpoint answered something that is not a token response.
    #[error("token endpoint answered something unexpected: {0}")]
    Malformed(String),
}

impl IdpError {
    /// Whether only an admin can fix this (re-authorize, new secret, consent), so retrying
    /// on its own will not help.
    pub fn needs_admin(&self) -> bool {
        match self {
            IdpError::Rejected { error, .. } => matches!(
                error.as_str(),
                "invalid_grant"
                    | "interaction_required"
                    | "invalid_client"
                    | "unauthorized_client"
                    | "consent_required"
                    | "invalid_scope"
                    | "login_required"
            ),
            IdpError::Unavailable { .. } | IdpError::Malformed(_) => false,
        }
    }
}

/// Why no access token could be had for a mailbox.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    /// No refresh token is stored (never for an app-only mailbox: it has none).
    #[error("the mailbox has no refresh token; sign it in with `m365-relay mailbox authorize`")]
    NotAuthorized,
    #[error("the mailbox is not registered")]
    UnknownMailbox,
    #[error("the mailbox takes its token from another one (--token-from) that is not usable: {0}")]
    DelegateMissing(String),
    #[error(transparent)]
    Idp(#[from] IdpError),
    #[error("token store: {0}")]
    Store(String),
}

impl TokenError {
    /// Whether an admin must act before this mailbox works again.
    pub fn needs_admin(&self) -> bool {
        match self {
            TokenError::NotAuthorized
            | TokenError::UnknownMailbox
            | TokenError::DelegateMissing(_) => true,
            TokenError::Idp(e) => e.needs_admin(),
            TokenError::Store(_) => false,
        }
    }
}
