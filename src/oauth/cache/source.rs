//! Where the token cache gets tokens from ([`TokenSource`]: Entra's token endpoint, or a
//! script in tests), and what a token is for ([`Resource`]: the mail servers, or
//! Microsoft Graph), which decides the scopes asked and the cache slot.

use std::future::Future;

use crate::oauth::endpoint::{App, TokenEndpoint};
use crate::oauth::{IdpError, TokenGrant};
use crate::secret::RefreshToken;

/// What an access token is for: the mail servers (IMAP, POP3, SMTP), or Microsoft Graph
/// (sending mail with `Mail.Send`, and `Mail.Send.Shared` for a delegate that sends as
/// shared mailboxes). One refresh token serves both; each has its own cache slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resource {
    Mail,
    Graph { shared: bool },
}

impl Resource {
    /// The scopes a token for this resource is asked with, in `mailbox`'s cloud.
    pub(super) fn scopes(self, app: &App<'_>, app_only: bool) -> &'static [&'static str] {
        match (self, app_only) {
            (Resource::Mail, false) => app.cloud.delegated_scopes(),
            (Resource::Mail, true) => app.cloud.app_only_scopes(),
            (Resource::Graph { shared }, false) => app.cloud.graph_delegated_scopes(shared),
            (Resource::Graph { .. }, true) => app.cloud.graph_app_only_scopes(),
        }
    }

    /// The cache key of `address`'s token for this resource.
    pub(super) fn key(self, address: &str) -> String {
        match self {
            Resource::Mail => address.to_owned(),
            Resource::Graph { shared: false } => format!("{address}#graph"),
            Resource::Graph { shared: true } => format!("{address}#graph-shared"),
        }
    }
}

/// Where tokens come from: Entra's token endpoint, or a script in tests.
pub trait TokenSource: Send + Sync + 'static {
    /// The refresh-token grant.
    fn refresh(
        &self,
        app: &App<'_>,
        refresh_token: &RefreshToken,
        scopes: &[&str],
    ) -> impl Future<Output = Result<TokenGrant, IdpError>> + Send;

    /// The client-credentials grant (app-only mailboxes).
    fn client_credentials(
        &self,
        app: &App<'_>,
        scopes: &[&str],
    ) -> impl Future<Output = Result<TokenGrant, IdpError>> + Send;
}

impl TokenSource for TokenEndpoint {
    fn refresh(
        &self,
        app: &App<'_>,
        refresh_token: &RefreshToken,
        scopes: &[&str],
    ) -> impl Future<Output = Result<TokenGrant, IdpError>> + Send {
        TokenEndpoint::refresh(self, app, refresh_token, scopes)
    }

    fn client_credentials(
        &self,
        app: &App<'_>,
        scopes: &[&str],
    ) -> impl Future<Output = Result<TokenGrant, IdpError>> + Send {
        TokenEndpoint::client_credentials(self, app, scopes)
    }
}
