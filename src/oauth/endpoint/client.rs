//! The client of Entra's endpoints: where they are for each cloud, and the one token
//! request every grant takes (see the [module documentation](super)). The grants of the
//! login path are here ([`TokenEndpoint::refresh`], [`TokenEndpoint::client_credentials`]);
//! the sign-ins' are in [`super::sign_in`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use url::Url;

use super::app::App;
use super::errors::unavailable;
use super::grant::Grant;
use super::request::post_form;
use super::response::{EntraTokenResponse, TOKEN_RESPONSE, grant, parse_json};
use crate::cloud::Cloud;
use crate::logfield::chain;
use crate::oauth::{IdpError, TokenGrant};
use crate::secret::RefreshToken;
use crate::tls::http_client;

/// A client of Entra's token endpoints. Cloning is cheap: the connection pool and the
/// authority are shared.
#[derive(Clone)]
pub struct TokenEndpoint {
    /// The configured login host, e.g. `https://login.microsoftonline.com`; always a base
    /// URL.
    authority: Arc<Url>,
    /// Whether `authority` is the global default, so that each app signs in at its own
    /// cloud's login host instead.
    per_cloud: bool,
    /// Never follows redirects; trusts exactly the given rustls config; has timeouts.
    http: reqwest::Client,
    /// Budget for one whole request, for messages.
    timeout: Duration,
}

impl TokenEndpoint {
    /// Builds a client for `authority` (like `https://login.microsoftonline.com`; plain http
    /// only makes sense for a loopback fake in tests). Left at the global default, each app
    /// signs in at the login host of its own cloud; any other authority serves every cloud.
    ///
    /// `tls` is the rustls configuration to trust the authority with, used as it is.
    /// `timeout` bounds one whole request, from connecting to the last body byte; connecting
    /// alone gets at most 10 s of it. Fails with [`IdpError::Unavailable`] when the authority
    /// is not an http(s) URL or the HTTP client cannot be built.
    pub fn new(
        authority: &str,
        tls: Arc<rustls::ClientConfig>,
        timeout: Duration,
    ) -> Result<Self, IdpError> {
        let authority = parse_authority(authority).map_err(unavailable)?;
        let per_cloud = parse_authority(Cloud::Global.login_authority())
            .is_ok_and(|global| global == authority);
        let http = http_client(&tls, &authority, timeout)
            .map_err(|e| unavailable(format!("cannot build the HTTP client: {}", chain(&e))))?;
        Ok(Self {
            authority: Arc::new(authority),
            per_cloud,
            http,
            timeout,
        })
    }

    /// The login host for `cloud`: its own while the configured authority is the global
    /// default, else the configured one.
    pub fn authority(&self, cloud: Cloud) -> Url {
        if self.per_cloud
            && let Ok(url) = parse_authority(cloud.login_authority())
        {
            return url;
        }
        Url::clone(&self.authority)
    }

    /// The v2.0 token endpoint of `tenant` in `cloud`: `{authority}/{tenant}/oauth2/v2.0/token`.
    /// The tenant is percent-encoded as one path segment. It is also the audience of a
    /// client assertion sent there.
    pub fn token_url(&self, cloud: Cloud, tenant: &str) -> String {
        self.url_of(cloud, &[tenant, "oauth2", "v2.0", "token"])
    }

    /// The v2.0 authorization endpoint: `{authority}/{tenant}/oauth2/v2.0/authorize`.
    pub fn authorize_url(&self, cloud: Cloud, tenant: &str) -> String {
        self.url_of(cloud, &[tenant, "oauth2", "v2.0", "authorize"])
    }

    /// The v2.0 device authorization endpoint: `{authority}/{tenant}/oauth2/v2.0/devicecode`.
    pub fn device_code_url(&self, cloud: Cloud, tenant: &str) -> String {
        self.url_of(cloud, &[tenant, "oauth2", "v2.0", "devicecode"])
    }

    /// The redirect URI for a sign-in whose address is pasted back by hand:
    /// `{authority}/common/oauth2/nativeclient`, a blank page of Entra's (PROTOCOL.md A8).
    pub fn native_client_redirect_uri(&self, cloud: Cloud) -> String {
        self.url_of(cloud, &["common", "oauth2", "nativeclient"])
    }

    /// `{authority}/{segments...}`, each segment percent-encoded on its own.
    fn url_of(&self, cloud: Cloud, segments: &[&str]) -> String {
        let mut url = self.authority(cloud);
        match url.path_segments_mut() {
            Ok(mut path) => {
                path.pop_if_empty().extend(segments);
            }
            // Unreachable: `parse_authority` accepts only base URLs.
            Err(()) => return format!("{}/{}", self.authority, segments.join("/")),
        }
        url.into()
    }

    /// The HTTP client every request goes out on.
    pub(super) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The one token request: POSTs `grant` with `grant_type`, `client_id`, its own fields
    /// and the app's credential to the app's token URL, and turns Entra's answer into a
    /// grant or the [`IdpError`] it means. `scopes` are asked for (when the grant asks any)
    /// and stand for the granted ones when Entra's answer names none.
    pub(super) async fn token_request(
        &self,
        app: &App<'_>,
        grant_value: Grant<'_>,
        scopes: &[&str],
    ) -> Result<TokenGrant, IdpError> {
        let token_url = self.token_url(app.cloud, app.tenant);
        let body = token_form(app, &grant_value, scopes, &token_url)?;
        let result = match post_form(&self.http, &token_url, &body).await {
            Ok(answer) => parse_json::<EntraTokenResponse>(&answer, TOKEN_RESPONSE)
                .and_then(|response| grant(&response, scopes)),
            Err(e) => Err(e),
        };
        match &result {
            Ok(granted) => tracing::debug!(
                tenant = app.tenant,
                client_id = app.client_id,
                grant = grant_value.name(),
                scope = %granted.scope,
                rotated = granted.refresh_token.is_some(),
                "token endpoint granted an access token"
            ),
            Err(e) => tracing::debug!(
                tenant = app.tenant,
                client_id = app.client_id,
                grant = grant_value.name(),
                error = %e,
                "token endpoint refused or failed"
            ),
        }
        result
    }

    /// Redeems `refresh_token` (grant type `refresh_token`) for `scopes`, which for mail are
    /// [`DELEGATED_SCOPES`](crate::oauth::DELEGATED_SCOPES).
    ///
    /// On success the grant carries the rotated refresh token when Entra sent one (it does
    /// every time): the caller must persist it (PROTOCOL.md A7).
    pub async fn refresh(
        &self,
        app: &App<'_>,
        refresh_token: &RefreshToken,
        scopes: &[&str],
    ) -> Result<TokenGrant, IdpError> {
        self.token_request(app, Grant::Refresh(refresh_token), scopes)
            .await
    }

    /// Gets an access token with the app's own permissions: the client-credentials grant
    /// (RFC 6749 §4.4), for an app-only mailbox. `scopes` is the mail resource's `.default`
    /// ([`Cloud::app_only_scopes`]). The app authenticates with its secret or certificate;
    /// Entra sends no refresh token, and the tenant must be a real one (PROTOCOL.md A8).
    pub async fn client_credentials(
        &self,
        app: &App<'_>,
        scopes: &[&str],
    ) -> Result<TokenGrant, IdpError> {
        self.token_request(app, Grant::ClientCredentials, scopes)
            .await
    }
}

impl fmt::Debug for TokenEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenEndpoint")
            .field("authority", &self.authority.as_str())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The form of a token request to `token_url`: `grant_type`, `client_id`, the grant's
/// own fields and `scope`, and the app's credential. It holds secrets, and is wiped when
/// dropped.
fn token_form(
    app: &App<'_>,
    grant: &Grant<'_>,
    scopes: &[&str],
    token_url: &str,
) -> Result<zeroize::Zeroizing<String>, IdpError> {
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    form.append_pair("grant_type", grant.grant_type())
        .append_pair("client_id", app.client_id);
    grant.append_fields(&mut form, scopes);
    app.authenticate(&mut form, token_url)?;
    Ok(zeroize::Zeroizing::new(form.finish()))
}

/// Accepts an http(s) base URL without query or fragment; drops trailing slashes.
fn parse_authority(authority: &str) -> Result<Url, String> {
    let trimmed = authority.trim().trim_end_matches('/');
    let url = Url::parse(trimmed).map_err(|e| format!("authority `{trimmed}`: {e}"))?;
    if !matches!(url.scheme(), "https" | "http") || url.cannot_be_a_base() {
        return Err(format!("authority `{trimmed}` is not an http(s) URL"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "authority `{trimmed}` must not have a query or fragment"
        ));
    }
    Ok(url)
}
