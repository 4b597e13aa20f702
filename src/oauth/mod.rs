//! OAuth 2.0 with Microsoft Entra ID, split by lifecycle:
//! - [`endpoint`]: talks to the v2.0 token endpoint (refresh-token grant; more grants later).
//! - [`store`]: refresh tokens at rest, one file per mailbox, written atomically.
//! - [`cache`]: access tokens in memory, per mailbox, with single-flight refresh.

pub mod cache;
pub mod endpoint;
pub mod store;

use std::time::{Duration, SystemTime};

use crate::secret::{AccessToken, RefreshToken};

/// Delegated scopes for Exchange Online mail (PROTOCOL.md A4): one token serves IMAP, POP
/// and SMTP. `offline_access` makes Entra return a refresh token.
pub const DELEGATED_SCOPES: &[&str] = &[
    "https://outlook.office.com/IMAP.AccessAsUser.All",
    "https://outlook.office.com/POP.AccessAsUser.All",
    "https://outlook.office.com/SMTP.Send",
    "offline_access",
];

/// What the token endpoint granted.
#[derive(Debug, Clone)]
pub struct TokenGrant {
    pub access_token: AccessToken,
    /// When the access token expires, from `expires_in` (never assumed).
    pub expires_at: SystemTime,
    /// The rotated refresh token, when Entra sent one (it does on every refresh).
    pub refresh_token: Option<RefreshToken>,
    /// Scopes granted, space separated, as Entra reported them.
    pub scope: String,
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
    #[error("the mailbox has no refresh token; import one with `m365-relay mailbox import-token`")]
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
