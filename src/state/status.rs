//! What the relay knows about each mailbox's tokens (ok, failing, needs-reauth, no-token),
//! as kept by [`super::MailboxStatuses`] so that `mailbox list` (another process) can show
//! it. A status holds no secret: dates, states, and Entra's error code and description.
//! The token cache moves it from state to state (`oauth::health`).

use serde::{Deserialize, Serialize};

/// A mailbox's token state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TokenState {
    /// Not refreshed yet since the relay started.
    Unknown,
    /// The last refresh worked.
    Ok,
    /// The last refresh failed for a reason that may pass (5xx, timeout, network).
    Failing,
    /// Entra refused the refresh token or the app's credentials: an admin must act.
    NeedsReauth,
    /// No refresh token is stored.
    NoToken,
}

impl TokenState {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenState::Unknown => "unknown",
            TokenState::Ok => "ok",
            TokenState::Failing => "failing",
            TokenState::NeedsReauth => "needs-reauth",
            TokenState::NoToken => "no-token",
        }
    }
}

/// A mailbox's token status, as shown by `mailbox list` and written to its status file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxStatus {
    pub state: TokenState,
    /// When the state began (Unix seconds).
    pub since: Option<u64>,
    /// When the cached access token expires (Unix seconds).
    pub access_token_expires: Option<u64>,
    /// When a refresh was last tried, and what came of it.
    pub last_refresh: Option<u64>,
    pub last_outcome: Option<String>,
    /// Entra's `error` (e.g. `invalid_grant`), AADSTS codes and description.
    pub error: Option<String>,
    pub error_codes: Vec<u64>,
    pub error_description: Option<String>,
}

impl Default for MailboxStatus {
    fn default() -> Self {
        Self {
            state: TokenState::Unknown,
            since: None,
            access_token_expires: None,
            last_refresh: None,
            last_outcome: None,
            error: None,
            error_codes: Vec::new(),
            error_description: None,
        }
    }
}
