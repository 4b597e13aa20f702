//! Logging in upstream with a mailbox's token: the token owner's access token, and once
//! more with a fresh token when the server refuses it (not when SMTP AUTH itself is
//! disabled: no token helps then). The pool dials its SMTP connections this way; the
//! IMAP and POP3 logins use [`with_token`] too.

use std::sync::Arc;
use std::time::Duration;

use crate::auth::LiveRegistry;
use crate::error::Error;
use crate::mailbox::Mailbox;
use crate::oauth::TokenError;
use crate::oauth::cache::TokenCache;
use crate::secret::AccessToken;
use crate::submission::route::is_smtp_auth_disabled;

/// The mailbox whose token serves `mailbox`: itself, or the delegate it takes its token
/// from (a shared mailbox logs in upstream as itself with its delegate's token,
/// PROTOCOL.md A6).
pub fn token_owner(registry: &LiveRegistry, mailbox: &Mailbox) -> Result<Arc<Mailbox>, Error> {
    registry
        .registry()
        .token_owner(mailbox)
        .map_err(|e| Error::Token {
            mailbox: mailbox.address.clone(),
            source: TokenError::DelegateMissing(e.to_string()),
        })
}

/// Runs `login` with `owner`'s access token (valid at least `min_validity`); when the
/// upstream refuses that token, it is dropped from the cache and `login` runs once more
/// with a fresh one. `mailbox` names the login in errors.
pub async fn with_token<T, F, Fut>(
    tokens: &TokenCache,
    owner: &Mailbox,
    mailbox: &str,
    min_validity: Duration,
    mut login: F,
) -> Result<T, Error>
where
    F: FnMut(AccessToken) -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    let token_error = |source| Error::Token {
        mailbox: mailbox.to_owned(),
        source,
    };
    let token = tokens
        .access_token(owner, min_validity)
        .await
        .map_err(token_error)?;
    match login(token.clone()).await {
        Err(Error::UpstreamRejected { reply, .. }) if !is_smtp_auth_disabled(&reply) => {
            tracing::warn!(%mailbox, %reply, "upstream refused the access token; refreshing it once");
            tokens.invalidate(&owner.address, &token);
            let token = tokens
                .access_token(owner, min_validity)
                .await
                .map_err(token_error)?;
            login(token).await
        }
        other => other,
    }
}
