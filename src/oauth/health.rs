//! How a mailbox's token status ([`MailboxStatus`]) follows refresh outcomes (ok, failing,
//! needs-reauth, no-token). The token cache keeps it in memory and writes it through the
//! state's [`crate::state::MailboxStatuses`], so that `mailbox list` (another process) can
//! show it.

use std::time::{SystemTime, UNIX_EPOCH};

use super::{IdpError, TokenError};
pub use crate::state::status::{MailboxStatus, TokenState as State};

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

/// Seconds since the Unix epoch.
pub fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
