//! What the relay knows about each mailbox's tokens (ok, failing, needs-reauth, no-token):
//! how a [`MailboxStatus`] follows refresh outcomes. The token cache keeps it in memory and
//! writes it through the state's [`crate::state::MailboxStatuses`], so that `mailbox list`
//! (another process) can show it.
//!
//! [`Health`] is the state machine behind it: each refresh outcome moves a mailbox's
//! status, and decides when Entra is worth asking again (after a refused token or
//! credentials, a transient failure, or Entra's `Retry-After`).

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::{IdpError, TokenError};
use crate::datetime::unix;
pub use crate::state::status::{MailboxStatus, TokenState as State};

/// How often a mailbox in needs-reauth or without a token is looked at again: by the
/// refresher, and by the token cache for an app-only mailbox whose credentials Entra
/// refused.
pub const RECHECK_REAUTH: Duration = Duration::from_secs(5 * 60);

/// The longest `Retry-After` of Entra's that the cache and the refresher honour.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(15 * 60);

/// One mailbox's refresh outcomes as the token cache keeps them: its status, and the
/// back-off that spares Entra requests that cannot succeed yet. Times are tokio's, so
/// tests can pause them.
#[derive(Debug, Default)]
pub struct Health {
    pub status: MailboxStatus,
    pub last_error: Option<TokenError>,
    /// A digest of the refresh token (or, app-only, of the client credentials) Entra
    /// refused: until another one is stored, asking again is pointless.
    refused_token: Option<Vec<u8>>,
    /// When Entra refused it.
    refused_at: Option<Instant>,
    /// Transient failures in a row (for back-off).
    pub failures: u32,
    /// Entra's `Retry-After` on the last transient failure: no request before then.
    pub not_before: Option<Instant>,
}

impl Health {
    /// A refresh worked; the new access token expires at `expires`.
    pub fn succeeded(&mut self, expires: SystemTime, now: SystemTime) {
        self.status.refreshed(expires, now);
        self.last_error = None;
        self.refused_token = None;
        self.refused_at = None;
        self.failures = 0;
        self.not_before = None;
    }

    /// A refresh failed with `error`; `digest` recognises the refresh token or credentials
    /// it used. A refusal (needs an admin) is remembered with the digest; a transient
    /// failure counts towards the back-off and keeps Entra's `Retry-After` (capped at
    /// [`MAX_RETRY_AFTER`]). Returns whether the mailbox has just entered needs-reauth.
    pub fn failed(&mut self, error: &TokenError, digest: Option<Vec<u8>>, now: SystemTime) -> bool {
        let was = self.status.state;
        self.status.failed(error, now);
        self.last_error = Some(error.clone());
        if error.needs_admin() {
            self.refused_token = digest;
            self.refused_at = Some(Instant::now());
            return was != State::NeedsReauth;
        }
        self.failures = self.failures.saturating_add(1);
        self.not_before = match error {
            TokenError::Idp(IdpError::Unavailable {
                retry_after: Some(wait),
                ..
            }) => Some(Instant::now() + (*wait).min(MAX_RETRY_AFTER)),
            _ => None,
        };
        false
    }

    /// Entra's verdict on exactly these credentials (by `digest`), when it refused them
    /// less than `within` ago (`None`: whenever): shared without asking again.
    pub fn refused(&self, digest: &[u8], within: Option<Duration>) -> Option<TokenError> {
        let recent = self
            .refused_at
            .is_some_and(|at| within.is_none_or(|limit| at.elapsed() < limit));
        if self.refused_token.as_deref() == Some(digest) && recent {
            return self.last_error.clone();
        }
        None
    }
}

impl MailboxStatus {
    /// Moves to `state` at `now`, keeping `since` when the state does not change.
    pub fn enter(&mut self, state: State, now: SystemTime) {
        if self.state != state {
            self.state = state;
            self.since = Some(unix(now));
        }
    }

    /// Records a refresh attempt's failure.
    pub fn failed(&mut self, error: &TokenError, now: SystemTime) {
        let state = match error {
            TokenError::NotAuthorized => State::NoToken,
            e if e.needs_admin() => State::NeedsReauth,
            _ => State::Failing,
        };
        self.enter(state, now);
        self.last_refresh = Some(unix(now));
        self.last_outcome = Some(error.to_string());
        (self.error, self.error_codes, self.error_description) = match error {
            TokenError::Idp(IdpError::Rejected {
                error,
                description,
                codes,
                ..
            }) => (
                Some(error.clone()),
                codes.clone(),
                Some(description.clone()),
            ),
            _ => (None, Vec::new(), None),
        };
    }

    /// Records a successful refresh.
    pub fn refreshed(&mut self, expires: SystemTime, now: SystemTime) {
        self.enter(State::Ok, now);
        self.access_token_expires = Some(unix(expires));
        self.last_refresh = Some(unix(now));
        self.last_outcome = Some("ok".into());
        self.error = None;
        self.error_codes.clear();
        self.error_description = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn states_follow_refresh_outcomes() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000);
        let mut s = MailboxStatus::default();
        s.refreshed(t0 + Duration::from_secs(3600), t0);
        assert_eq!(
            (s.state, s.since, s.access_token_expires),
            (State::Ok, Some(1_000), Some(4_600))
        );
        let revoked = TokenError::Idp(IdpError::Rejected {
            status: 400,
            error: "invalid_grant".into(),
            description: "AADSTS700082: The refresh token has expired due to inactivity.".into(),
            codes: vec![700082],
        });
        s.failed(&revoked, t0 + Duration::from_secs(10));
        assert_eq!(s.state, State::NeedsReauth);
        assert_eq!(s.error_codes, vec![700082]);
        s.failed(&revoked, t0 + Duration::from_secs(20));
        assert_eq!(s.since, Some(1_010), "the state began at the first failure");
        let down = TokenError::Idp(IdpError::Unavailable {
            reason: "503".into(),
            retry_after: None,
        });
        s.failed(&down, t0 + Duration::from_secs(30));
        assert_eq!((s.state, s.error.as_deref()), (State::Failing, None));
        s.failed(&TokenError::NotAuthorized, t0);
        assert_eq!(s.state, State::NoToken);
    }
}
