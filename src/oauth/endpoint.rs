//! The client of Entra ID's v2.0 endpoints. It redeems a refresh token for a fresh access
//! token (and the rotated refresh token), or gets one with the client-credentials grant for
//! an app-only mailbox; for `mailbox authorize` it also starts and polls a device code
//! (RFC 8628), builds the authorization URL with PKCE (RFC 7636) and redeems the
//! authorization code. Every failure is sorted into an [`IdpError`].
//!
//! A confidential app authenticates every token request with its client secret
//! (`client_secret`), or with a client assertion signed by its certificate
//! (`client_assertion_type` and `client_assertion`, see [`super::assertion`]) whose
//! audience is the token URL the request goes to. A public client sends neither.
//!
//! Which login host: the mailbox's cloud's ([`Cloud::login_authority`]) while the
//! configured authority is the global default, else the configured one for every cloud
//! (see [`crate::cloud`]).
//!
//! The `oauth2` crate builds the requests and parses a successful answer; only the device
//! code poll is built here (`oauth2` only offers it inside its own polling loop, which would
//! retry refusals the adapter reports). Everything reaches the
//! network through `send`, a small async adapter over `reqwest` 0.13. The adapter passes on
//! only `200 OK`. It classifies every other answer itself, because `oauth2` discards the
//! status code and the headers (`Retry-After`) that the classification needs:
//!
//! | answer | [`IdpError`] |
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

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::header::{ACCEPT, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, Method, StatusCode};
use oauth2::basic::{
    BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse,
    BasicTokenType,
};
use oauth2::{
    AuthType, AuthUrl, AuthorizationCode, ClientId, CsrfToken, DeviceAuthorizationResponse,
    DeviceAuthorizationUrl, DeviceCode, EndpointNotSet, EndpointSet,
    ExtraDeviceAuthorizationFields, ExtraTokenFields, HttpRequest, HttpResponse, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, RequestTokenError, Scope, StandardRevocableToken,
    StandardTokenResponse, TokenResponse, TokenUrl,
};
use reqwest::redirect::Policy;
use serde::{Deserialize, Serialize};
use url::Url;

use super::assertion::JWT_BEARER;
use super::{IdpError, TokenGrant};
use crate::cloud::Cloud;
use crate::logfield::chain;
use crate::mailbox::{Credential, Registration};
use crate::secret::{AccessToken, RefreshToken, constant_time_eq};

/// The largest response body accepted. Entra's token responses are a few KiB (an access
/// token is usually under 4 KiB); the cap keeps a hostile or broken endpoint from filling
/// memory.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Upper bound on connecting (TCP and TLS); the whole request has its own, longer budget.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Sent as `User-Agent`, so Entra's sign-in logs show which program asked.
const USER_AGENT: &str = concat!("m365-relay/", env!("CARGO_PKG_VERSION"));

/// Longest piece of endpoint-supplied text (`error`, `error_description`) kept in an error.
const MAX_ERROR_TEXT: usize = 2048;

/// OAuth `error` values that mean "try again later" rather than "this grant is refused"
/// (RFC 6749 §4.1.2.1).
const TRANSIENT_ERRORS: &[&str] = &["temporarily_unavailable", "server_error"];

/// The grant type of a device code poll (RFC 8628 §3.4).
const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// The shortest poll interval honoured, whatever `/devicecode` says (RFC 8628 §3.2 makes
/// 5 s the default; Entra sends 5).
pub const MIN_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Longest `id_token` accepted (Entra's are 1-2 KiB).
const MAX_ID_TOKEN_LEN: usize = 16 * 1024;

/// Longest user code accepted from `/devicecode` (Entra's have 8 or 9 characters).
const MAX_USER_CODE_LEN: usize = 64;

/// Entra's additions to a token response: the OpenID Connect `id_token`, present when
/// `openid` was among the scopes. `Debug` does not show it.
#[derive(Clone, Default, Deserialize, Serialize)]
struct EntraTokenFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id_token: Option<String>,
}

impl fmt::Debug for EntraTokenFields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EntraTokenFields")
            .field("id_token", &self.id_token.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

impl ExtraTokenFields for EntraTokenFields {}

/// A token response as Entra sends it.
type EntraTokenResponse = StandardTokenResponse<EntraTokenFields, BasicTokenType>;

/// An `oauth2` client that parses [`EntraTokenResponse`]s; the type parameters say which of
/// the authorization, device authorization and token URLs are set.
type EntraClient<Auth = EndpointNotSet, Device = EndpointNotSet, Token = EndpointNotSet> =
    oauth2::Client<
        BasicErrorResponse,
        EntraTokenResponse,
        BasicTokenIntrospectionResponse,
        StandardRevocableToken,
        BasicRevocationErrorResponse,
        Auth,
        Device,
        EndpointNotSet,
        EndpointNotSet,
        Token,
    >;

/// Entra's addition to a device authorization response: the text to show the user.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
struct EntraDeviceFields {
    #[serde(default)]
    message: Option<String>,
}

impl ExtraDeviceAuthorizationFields for EntraDeviceFields {}

/// A device code from `/devicecode` (RFC 8628 §3.2): what to show the user, and the secret
/// device code to poll with. Text from Entra is cleaned of control characters, so it is safe
/// to print on a terminal. `Debug` does not show the device code.
#[derive(Debug)]
pub struct DeviceAuthorization {
    device_code: DeviceCode,
    /// The short code the user types at `verification_uri`.
    pub user_code: String,
    /// Where the user signs in, e.g. `https://microsoft.com/devicelogin`.
    pub verification_uri: String,
    /// Entra's instructions for the user ("To sign in, use a web browser to open ..."), when
    /// it sent them.
    pub message: Option<String>,
    /// How long the codes are valid (Entra: 15 minutes).
    pub expires_in: Duration,
    /// How long to wait between polls: at least [`MIN_POLL_INTERVAL`].
    pub interval: Duration,
}

/// One authorization-code sign-in (RFC 6749 §4.1) with PKCE (RFC 7636, S256): the URL for
/// the browser, the random `state` its redirect must carry back, and the code verifier and
/// redirect URI that the redemption must send. Single use: [`TokenEndpoint::redeem_code`]
/// consumes it. `Debug` shows neither the state nor the verifier.
pub struct AuthorizationRequest {
    url: Url,
    state: CsrfToken,
    verifier: PkceCodeVerifier,
    redirect_uri: RedirectUrl,
}

#[cfg(test)]
impl DeviceAuthorization {
    /// A device code as if `/devicecode` had issued it, for tests of the polling.
    pub(crate) fn for_tests(expires_in: Duration, interval: Duration) -> Self {
        Self {
            device_code: DeviceCode::new("device-code".into()),
            user_code: "ABCD1234".into(),
            verification_uri: "https://microsoft.com/devicelogin".into(),
            message: None,
            expires_in,
            interval,
        }
    }
}

impl AuthorizationRequest {
    /// The address to open in a browser.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The redirect URI the browser is sent back to.
    pub fn redirect_uri(&self) -> &str {
        self.redirect_uri.as_str()
    }

    /// Whether `state` from a redirect is the one this request sent (constant time).
    pub fn state_matches(&self, state: &str) -> bool {
        constant_time_eq(state.as_bytes(), self.state.secret().as_bytes())
    }
}

impl fmt::Debug for AuthorizationRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthorizationRequest")
            .field("redirect_uri", &self.redirect_uri.as_str())
            .finish_non_exhaustive()
    }
}

/// An app registration as the token endpoint needs it.
#[derive(Debug, Clone, Copy)]
pub struct App<'a> {
    /// Tenant GUID or domain, or `common` / `organizations` (PROTOCOL.md A8).
    pub tenant: &'a str,
    /// The application (client) ID.
    pub client_id: &'a str,
    /// A secret or a certificate for a confidential client; a public client sends no
    /// credential at all (AADSTS700025).
    pub credential: &'a Credential,
    /// The cloud of the tenant: its login host (unless the authority is fixed) and the
    /// audience of a client assertion.
    pub cloud: Cloud,
}

/// The credential of a public client.
static PUBLIC_CLIENT: Credential = Credential::None;

impl<'a> App<'a> {
    /// A public client in the global cloud.
    pub fn public(tenant: &'a str, client_id: &'a str) -> Self {
        Self {
            tenant,
            client_id,
            credential: &PUBLIC_CLIENT,
            cloud: Cloud::Global,
        }
    }

    /// The app of a mailbox's own registration; `None` for one that takes its token from
    /// another mailbox.
    pub fn of(registration: &'a Registration) -> Option<Self> {
        match registration {
            Registration::App {
                tenant,
                client_id,
                credential,
                cloud,
                ..
            } => Some(Self {
                tenant,
                client_id,
                credential,
                cloud: *cloud,
            }),
            Registration::TokenFrom { .. } => None,
        }
    }
}

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

// === impl TokenEndpoint ===

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
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(rustls::ClientConfig::clone(&tls))
            .https_only(authority.scheme() == "https")
            .redirect(Policy::none())
            .connect_timeout(timeout.min(MAX_CONNECT_TIMEOUT))
            .timeout(timeout)
            .user_agent(USER_AGENT)
            .build()
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

    /// An `oauth2` client for `app` at the token endpoint, with the client secret of an app
    /// that has one (in the request body). An app with a certificate adds its
    /// [`TokenEndpoint::client_assertion`] to each request; a public client sends no
    /// credential (AADSTS700025).
    fn token_client(
        &self,
        app: &App<'_>,
    ) -> Result<EntraClient<EndpointNotSet, EndpointNotSet, EndpointSet>, IdpError> {
        let token_url = TokenUrl::new(self.token_url(app.cloud, app.tenant))
            .map_err(|e| unavailable(format!("invalid token URL: {e}")))?;
        let mut client = EntraClient::new(ClientId::new(app.client_id.to_owned()))
            .set_auth_type(AuthType::RequestBody)
            .set_token_uri(token_url);
        if let Credential::Secret { secret, .. } = app.credential {
            client =
                client.set_client_secret(oauth2::ClientSecret::new(secret.expose().to_owned()));
        }
        Ok(client)
    }

    /// A fresh client assertion for an app with a certificate, for its token URL; `None`
    /// for other apps. Signing fails only if aws-lc-rs does (the key was checked when it was
    /// stored): that is reported as [`IdpError::Unavailable`], a failure that may pass.
    fn client_assertion(&self, app: &App<'_>) -> Result<Option<String>, IdpError> {
        match app.credential {
            Credential::Certificate(certificate) => certificate
                .assertion(app.client_id, &self.token_url(app.cloud, app.tenant))
                .map(Some)
                .map_err(|e| unavailable(e.to_string())),
            Credential::None | Credential::Secret { .. } => Ok(None),
        }
    }

    /// Redeems `refresh_token` (grant type `refresh_token`) for `scopes`, which for mail are
    /// [`DELEGATED_SCOPES`](super::DELEGATED_SCOPES).
    ///
    /// On success the grant carries the rotated refresh token when Entra sent one (it does
    /// every time): the caller must persist it (PROTOCOL.md A7).
    pub async fn refresh(
        &self,
        app: &App<'_>,
        refresh_token: &RefreshToken,
        scopes: &[&str],
    ) -> Result<TokenGrant, IdpError> {
        let client = self.token_client(app)?;
        let assertion = self.client_assertion(app)?;
        let refresh_token = oauth2::RefreshToken::new(refresh_token.expose().to_owned());
        // The adapter's future owns its (cheap, shared) client: a future borrowing `self`
        // here would not be `Send` for every lifetime, and callers spawn `refresh`.
        let adapter = |request: HttpRequest| send(self.http.clone(), request);

        let mut request = client
            .exchange_refresh_token(&refresh_token)
            .add_scopes(scopes.iter().map(|s| Scope::new((*s).to_owned())));
        if let Some(assertion) = assertion {
            request = request
                .add_extra_param("client_assertion_type", JWT_BEARER)
                .add_extra_param("client_assertion", assertion);
        }
        let result = request
            .request_async(&adapter)
            .await
            .map_err(|e| from_request_error(e, TOKEN_RESPONSE))
            .and_then(|response| grant(&response, scopes));
        match &result {
            Ok(grant) => tracing::debug!(
                tenant = app.tenant,
                client_id = app.client_id,
                scope = %grant.scope,
                rotated = grant.refresh_token.is_some(),
                "token endpoint granted an access token"
            ),
            Err(e) => tracing::debug!(
                tenant = app.tenant,
                client_id = app.client_id,
                error = %e,
                "token endpoint refused or failed"
            ),
        }
        result
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
        let client = self.token_client(app)?;
        let assertion = self.client_assertion(app)?;
        let adapter = |request: HttpRequest| send(self.http.clone(), request);
        let mut request = client
            .exchange_client_credentials()
            .add_scopes(scopes.iter().map(|s| Scope::new((*s).to_owned())));
        if let Some(assertion) = assertion {
            request = request
                .add_extra_param("client_assertion_type", JWT_BEARER)
                .add_extra_param("client_assertion", assertion);
        }
        let result = request
            .request_async(&adapter)
            .await
            .map_err(|e| from_request_error(e, TOKEN_RESPONSE))
            .and_then(|response| grant(&response, scopes));
        match &result {
            Ok(grant) => tracing::debug!(
                tenant = app.tenant,
                client_id = app.client_id,
                scope = %grant.scope,
                "token endpoint granted an app-only access token"
            ),
            Err(e) => tracing::debug!(
                tenant = app.tenant,
                client_id = app.client_id,
                error = %e,
                "client credentials grant refused or failed"
            ),
        }
        result
    }

    /// Starts a device code sign-in (RFC 8628 §3.1): POSTs `client_id` and `scopes` to
    /// `/devicecode`. The request names only the client, never a secret.
    pub async fn start_device_code(
        &self,
        app: &App<'_>,
        scopes: &[&str],
    ) -> Result<DeviceAuthorization, IdpError> {
        let url = DeviceAuthorizationUrl::new(self.device_code_url(app.cloud, app.tenant))
            .map_err(|e| unavailable(format!("invalid device code URL: {e}")))?;
        let client = EntraClient::new(ClientId::new(app.client_id.to_owned()))
            .set_auth_type(AuthType::RequestBody)
            .set_device_authorization_url(url);
        let adapter = |request: HttpRequest| send(self.http.clone(), request);
        let response: DeviceAuthorizationResponse<EntraDeviceFields> = client
            .exchange_device_code()
            .add_scopes(scopes.iter().map(|s| Scope::new((*s).to_owned())))
            .request_async(&adapter)
            .await
            .map_err(|e| from_request_error(e, "device code response"))?;
        let user_code = clean(response.user_code().secret());
        if user_code.trim().is_empty() || user_code.len() > MAX_USER_CODE_LEN {
            return Err(IdpError::Malformed(
                "device code response: unusable user_code".into(),
            ));
        }
        if response.expires_in().is_zero() {
            return Err(IdpError::Malformed(
                "device code response: expires_in is 0".into(),
            ));
        }
        tracing::debug!(
            tenant = app.tenant,
            client_id = app.client_id,
            expires_in = response.expires_in().as_secs(),
            interval = response.interval().as_secs(),
            "device code issued"
        );
        Ok(DeviceAuthorization {
            device_code: response.device_code().clone(),
            user_code,
            verification_uri: clean(response.verification_uri().as_str()),
            message: response.extra_fields().message.as_deref().map(clean),
            expires_in: response.expires_in(),
            interval: response.interval().max(MIN_POLL_INTERVAL),
        })
    }

    /// Polls once for the tokens of a device code sign-in (RFC 8628 §3.4). While the user
    /// has not finished, Entra refuses with [`IdpError::Rejected`] and an `error` of
    /// `authorization_pending` or `slow_down`; the caller decides when to poll again
    /// (see [`flows`](super::flows)). A confidential app authenticates with its secret or
    /// its certificate.
    pub async fn poll_device_code(
        &self,
        app: &App<'_>,
        device: &DeviceAuthorization,
        scopes: &[&str],
    ) -> Result<TokenGrant, IdpError> {
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", DEVICE_CODE_GRANT)
            .append_pair("client_id", app.client_id)
            .append_pair("device_code", device.device_code.secret());
        match app.credential {
            Credential::Secret { secret, .. } => {
                form.append_pair("client_secret", secret.expose());
            }
            Credential::Certificate(_) => {
                let assertion = self.client_assertion(app)?.unwrap_or_default();
                form.append_pair("client_assertion_type", JWT_BEARER)
                    .append_pair("client_assertion", &assertion);
            }
            Credential::None => {}
        }
        let body = zeroize::Zeroizing::new(form.finish());
        let request = http::Request::builder()
            .method(Method::POST)
            .uri(self.token_url(app.cloud, app.tenant))
            .header(ACCEPT, "application/json")
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body.as_bytes().to_vec())
            .map_err(|e| unavailable(format!("cannot build the request: {e}")))?;
        let result = match send(self.http.clone(), request).await {
            Ok(response) => parse_token_response(&response).and_then(|r| grant(&r, scopes)),
            Err(e) => Err(e),
        };
        if let Err(e) = &result {
            tracing::debug!(tenant = app.tenant, client_id = app.client_id, error = %e, "device code poll");
        }
        result
    }

    /// A fresh authorization-code sign-in for `app`: the authorization URL with `scopes`,
    /// `redirect_uri`, a random `state`, a PKCE S256 challenge, `login_hint` (the account
    /// to sign in as) and `prompt=select_account` (so the browser's current account is not
    /// taken silently).
    pub fn authorization_request(
        &self,
        app: &App<'_>,
        scopes: &[&str],
        redirect_uri: &str,
        login_hint: &str,
    ) -> Result<AuthorizationRequest, IdpError> {
        let auth_url = AuthUrl::new(self.authorize_url(app.cloud, app.tenant))
            .map_err(|e| unavailable(format!("invalid authorization URL: {e}")))?;
        let redirect_uri = RedirectUrl::new(redirect_uri.to_owned())
            .map_err(|e| unavailable(format!("invalid redirect URI: {e}")))?;
        let client = EntraClient::new(ClientId::new(app.client_id.to_owned()))
            .set_auth_uri(auth_url)
            .set_redirect_uri(redirect_uri.clone());
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (url, state) = client
            .authorize_url(CsrfToken::new_random)
            .add_scopes(scopes.iter().map(|s| Scope::new((*s).to_owned())))
            .set_pkce_challenge(challenge)
            .add_extra_param("login_hint", login_hint)
            .add_extra_param("prompt", "select_account")
            .url();
        Ok(AuthorizationRequest {
            url,
            state,
            verifier,
            redirect_uri,
        })
    }

    /// Redeems the authorization `code` that came back for `request` (RFC 6749 §4.1.3),
    /// with its PKCE verifier and redirect URI. A confidential app authenticates with its
    /// secret or its certificate. Codes are single use (AADSTS54005), and so is `request`.
    pub async fn redeem_code(
        &self,
        app: &App<'_>,
        request: AuthorizationRequest,
        code: &str,
        scopes: &[&str],
    ) -> Result<TokenGrant, IdpError> {
        let client = self.token_client(app)?;
        let assertion = self.client_assertion(app)?;
        let adapter = |request: HttpRequest| send(self.http.clone(), request);
        let mut exchange = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .set_pkce_verifier(request.verifier)
            .set_redirect_uri(Cow::Owned(request.redirect_uri))
            .add_extra_param("scope", scopes.join(" "));
        if let Some(assertion) = assertion {
            exchange = exchange
                .add_extra_param("client_assertion_type", JWT_BEARER)
                .add_extra_param("client_assertion", assertion);
        }
        let result = exchange
            .request_async(&adapter)
            .await
            .map_err(|e| from_request_error(e, TOKEN_RESPONSE))
            .and_then(|response| grant(&response, scopes));
        if let Err(e) = &result {
            tracing::debug!(tenant = app.tenant, client_id = app.client_id, error = %e, "code redemption failed");
        }
        result
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

// === the HTTP adapter ===

/// The HTTP client `oauth2` runs on: sends `request` with `http` and hands back a `200 OK`
/// answer. Any other answer becomes the [`IdpError`] it means, while the status code and
/// headers are still at hand; `oauth2` then returns it as `RequestTokenError::Request`.
async fn send(http: reqwest::Client, request: HttpRequest) -> Result<HttpResponse, IdpError> {
    // The request body holds secrets: never print `request` or its body.
    let request = reqwest::Request::try_from(request)
        .map_err(|e| unavailable(format!("cannot build the request: {}", chain(&e))))?;
    let mut response = http.execute(request).await.map_err(network_error)?;
    let status = response.status();
    let headers = std::mem::take(response.headers_mut());
    let body = read_capped(&mut response).await?;

    if status != StatusCode::OK {
        return Err(classify_failure(status, &headers, body.as_deref()));
    }
    let body = body.ok_or_else(too_large)?;
    let mut answer = http::Response::new(body);
    *answer.status_mut() = status;
    *answer.headers_mut() = headers;
    Ok(answer)
}

/// Reads the body, or `None` once it proves longer than [`MAX_RESPONSE_BYTES`].
async fn read_capped(response: &mut reqwest::Response) -> Result<Option<Vec<u8>>, IdpError> {
    if response
        .content_length()
        .is_some_and(|n| n > MAX_RESPONSE_BYTES as u64)
    {
        return Ok(None);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(network_error)? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// An OAuth 2.0 error response (RFC 6749 §5.2) with Entra's additions.
#[derive(Deserialize)]
struct OAuthError {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
    /// Entra's AADSTS numbers, e.g. `[700082]`.
    #[serde(default)]
    error_codes: Vec<u64>,
}

/// Maps an answer other than `200 OK` to what it means. `body` is `None` when it was
/// over the size cap.
fn classify_failure(status: StatusCode, headers: &HeaderMap, body: Option<&[u8]>) -> IdpError {
    let oauth = body.and_then(|b| serde_json::from_slice::<OAuthError>(b).ok());
    let transient = status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || oauth
            .as_ref()
            .is_some_and(|e| TRANSIENT_ERRORS.contains(&e.error.as_str()));

    if transient {
        let reason = match &oauth {
            Some(e) => format!(
                "HTTP {status}: {}: {}",
                clean(&e.error),
                clean(e.error_description.as_deref().unwrap_or_default())
            ),
            None => format!("HTTP {status}"),
        };
        return IdpError::Unavailable {
            reason,
            retry_after: retry_after(headers),
        };
    }
    match oauth {
        _ if body.is_none() => too_large(),
        Some(e) if status.is_client_error() => IdpError::Rejected {
            status: status.as_u16(),
            error: clean(&e.error),
            description: clean(e.error_description.as_deref().unwrap_or_default()),
            codes: e.error_codes,
        },
        _ if status.is_redirection() => IdpError::Malformed(format!(
            "HTTP {status}: a redirect, which is never followed"
        )),
        _ => IdpError::Malformed(format!("HTTP {status} without an OAuth error response")),
    }
}

/// `Retry-After` in delta-seconds (the form Entra uses); an HTTP-date is ignored.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// A failure to talk to the endpoint at all. The URL is dropped from the text: it names
/// only the tenant, but nothing in a transport error needs it.
fn network_error(e: reqwest::Error) -> IdpError {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    unavailable(format!("{what}: {}", chain(&e.without_url())))
}

// === turning oauth2's answer into ours ===

/// What a token endpoint answer is called in messages.
const TOKEN_RESPONSE: &str = "token response";

/// Unwraps the adapter's own [`IdpError`] and maps what `oauth2` found in a `200` answer,
/// a `what` (e.g. "token response").
fn from_request_error(e: RequestTokenError<IdpError, BasicErrorResponse>, what: &str) -> IdpError {
    match e {
        RequestTokenError::Request(e) => e,
        // The adapter passes on only 200, so an error body here came with 200.
        RequestTokenError::ServerResponse(e) => IdpError::Rejected {
            status: StatusCode::OK.as_u16(),
            error: clean(e.error().as_ref()),
            description: clean(e.error_description().map_or("", String::as_str)),
            codes: Vec::new(),
        },
        // The raw body may hold the tokens: drop it. serde's "invalid type" messages quote
        // the offending value, which could be a token: say only where parsing failed.
        RequestTokenError::Parse(e, _body) => {
            let inner = e.inner();
            let message = inner.to_string();
            IdpError::Malformed(match inner.classify() {
                serde_json::error::Category::Data if message.starts_with("missing field `") => {
                    format!("{what}: {message}")
                }
                serde_json::error::Category::Data => {
                    format!("{what}: field `{}` has the wrong type or value", e.path())
                }
                _ => format!(
                    "{what} is not JSON (line {}, column {})",
                    inner.line(),
                    inner.column()
                ),
            })
        }
        RequestTokenError::Other(why) => IdpError::Malformed(clean(&why)),
    }
}

/// Parses a `200` answer that the adapter passed on, as `oauth2` would: JSON (when a
/// `Content-Type` is given), a token response. Messages never quote the body.
fn parse_token_response(response: &HttpResponse) -> Result<EntraTokenResponse, IdpError> {
    if let Some(content_type) = response.headers().get(CONTENT_TYPE) {
        let essence = content_type
            .to_str()
            .unwrap_or_default()
            .split(';')
            .next()
            .unwrap_or_default()
            .trim();
        if !essence.eq_ignore_ascii_case("application/json") {
            return Err(IdpError::Malformed(format!(
                "{TOKEN_RESPONSE}: unexpected Content-Type `{}`",
                clean(essence)
            )));
        }
    }
    serde_json::from_slice(response.body()).map_err(|e| {
        let message = e.to_string();
        IdpError::Malformed(match e.classify() {
            serde_json::error::Category::Data if message.starts_with("missing field `") => {
                let field = message.split('`').nth(1).unwrap_or_default();
                format!("{TOKEN_RESPONSE}: missing field `{}`", clean(field))
            }
            serde_json::error::Category::Data => {
                format!("{TOKEN_RESPONSE}: a field has the wrong type or value")
            }
            _ => format!(
                "{TOKEN_RESPONSE} is not JSON (line {}, column {})",
                e.line(),
                e.column()
            ),
        })
    })
}

/// Builds the grant from a parsed `200` answer, refusing what we could not use.
fn grant(response: &EntraTokenResponse, requested: &[&str]) -> Result<TokenGrant, IdpError> {
    let access_token = response.access_token().secret();
    if access_token.is_empty() {
        return Err(IdpError::Malformed(
            "token response: empty access_token".into(),
        ));
    }
    if *response.token_type() != BasicTokenType::Bearer {
        return Err(IdpError::Malformed(
            "token response: token_type is not Bearer".into(),
        ));
    }
    let expires_in = response
        .expires_in()
        .ok_or_else(|| IdpError::Malformed("token response: missing field `expires_in`".into()))?;
    let expires_at = SystemTime::now()
        .checked_add(expires_in)
        .ok_or_else(|| IdpError::Malformed("token response: expires_in is out of range".into()))?;
    let id_token = match &response.extra_fields().id_token {
        Some(t) if t.len() > MAX_ID_TOKEN_LEN => {
            return Err(IdpError::Malformed(format!(
                "{TOKEN_RESPONSE}: id_token over {MAX_ID_TOKEN_LEN} bytes"
            )));
        }
        other => other.clone(),
    };
    // RFC 6749 §5.1: an omitted `scope` means the scopes requested were granted.
    let scope = match response.scopes() {
        Some(granted) => granted
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(" "),
        None => requested.join(" "),
    };
    Ok(TokenGrant {
        access_token: AccessToken::new(access_token.as_str()),
        expires_at,
        refresh_token: response
            .refresh_token()
            .map(|t| RefreshToken::new(t.secret().as_str())),
        scope,
        id_token,
    })
}

// === small helpers ===

fn unavailable(reason: String) -> IdpError {
    IdpError::Unavailable {
        reason,
        retry_after: None,
    }
}

fn too_large() -> IdpError {
    IdpError::Malformed(format!("response body over {MAX_RESPONSE_BYTES} bytes"))
}

/// Endpoint-supplied text made safe for one log line: control characters become spaces,
/// and it is cut at [`MAX_ERROR_TEXT`] characters.
pub(super) fn clean(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(MAX_ERROR_TEXT)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().nth(MAX_ERROR_TEXT).is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::net::SocketAddr;
    use std::time::Instant;

    use rustls::RootCertStore;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::task::JoinHandle;

    use super::*;
    use crate::oauth::{DELEGATED_SCOPES, SIGN_IN_SCOPES};

    const OLD_RT: &str = "RT-old-0.AVYA-secret";
    const SECRET: &str = "s3cr3t~client~value";

    fn tls() -> Arc<rustls::ClientConfig> {
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(RootCertStore::from_iter(
            webpki_roots::TLS_SERVER_ROOTS.iter().cloned(),
        ))
        .with_no_client_auth();
        Arc::new(config)
    }

    fn endpoint(addr: SocketAddr, timeout: Duration) -> TokenEndpoint {
        TokenEndpoint::new(&format!("http://{addr}"), tls(), timeout).unwrap()
    }

    fn public_app() -> App<'static> {
        App::public(
            "contoso.onmicrosoft.com",
            "00000000-1111-2222-3333-444444444444",
        )
    }

    /// The credential of a confidential app with the client secret [`SECRET`].
    fn secret() -> Credential {
        Credential::Secret {
            secret: crate::secret::ClientSecret::new(SECRET),
            expires: None,
        }
    }

    /// One request as the fake endpoint received it.
    #[derive(Debug)]
    struct Recorded {
        head: String,
        body: String,
    }

    impl Recorded {
        fn request_line(&self) -> &str {
            self.head.lines().next().unwrap_or_default()
        }

        fn header(&self, name: &str) -> Option<&str> {
            self.head.lines().skip(1).find_map(|line| {
                let (n, v) = line.split_once(':')?;
                n.eq_ignore_ascii_case(name).then(|| v.trim())
            })
        }

        fn form(&self) -> HashMap<String, String> {
            url::form_urlencoded::parse(self.body.as_bytes())
                .into_owned()
                .collect()
        }
    }

    /// Reads one HTTP/1.1 request (head and `Content-Length` body) from `stream`.
    async fn read_request(stream: &mut TcpStream) -> Recorded {
        let mut buf = Vec::new();
        let head_end = loop {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "client closed before sending a whole request");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().unwrap())
            })
            .unwrap_or(0);
        let mut body = buf[head_end..].to_vec();
        while body.len() < length {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "client closed mid-body");
            body.extend_from_slice(&chunk[..n]);
        }
        Recorded {
            head,
            body: String::from_utf8(body).unwrap(),
        }
    }

    /// A fake token endpoint that answers one request with `response` (raw bytes) and
    /// returns what it received.
    async fn serve_once(response: Vec<u8>) -> (SocketAddr, JoinHandle<Recorded>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let recorded = read_request(&mut stream).await;
            stream.write_all(&response).await.unwrap();
            stream.shutdown().await.unwrap();
            recorded
        });
        (addr, task)
    }

    /// A complete HTTP/1.1 response with a JSON body.
    fn http(status: &str, headers: &[&str], body: &str) -> Vec<u8> {
        let mut text = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json; charset=utf-8\r\n\
             Content-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        for h in headers {
            text.push_str(h);
            text.push_str("\r\n");
        }
        text.push_str("\r\n");
        text.push_str(body);
        text.into_bytes()
    }

    /// Runs one refresh of `app` against a fake that answers `response`.
    async fn refresh_against(
        response: Vec<u8>,
        app: App<'_>,
    ) -> (Result<TokenGrant, IdpError>, Recorded) {
        let (addr, server) = serve_once(response).await;
        let result = endpoint(addr, Duration::from_secs(5))
            .refresh(&app, &RefreshToken::new(OLD_RT), DELEGATED_SCOPES)
            .await;
        (result, server.await.unwrap())
    }

    /// Neither the Display nor the Debug text of `e` shows a secret that was sent.
    fn assert_no_secret(e: &IdpError) {
        let shown = format!("{e} {e:?}");
        for secret in [OLD_RT, SECRET, "AT-new"] {
            assert!(!shown.contains(secret), "secret in error: {shown}");
        }
    }

    const SUCCESS: &str = r#"{"token_type":"Bearer","scope":"https://outlook.office.com/IMAP.AccessAsUser.All https://outlook.office.com/POP.AccessAsUser.All https://outlook.office.com/SMTP.Send","expires_in":3599,"ext_expires_in":3599,"access_token":"AT-new","refresh_token":"RT-rotated"}"#;

    const INVALID_GRANT: &str = r#"{"error":"invalid_grant","error_description":"AADSTS700082: The refresh token has expired due to inactivity. The token was issued on 2025-01-01T00:00:00Z and was inactive for 90.00:00:00. Trace ID: 0 Correlation ID: 0 Timestamp: 2025-04-01 00:00:00Z","error_codes":[700082],"timestamp":"2025-04-01 00:00:00Z","trace_id":"0","correlation_id":"0","error_uri":"https://login.microsoftonline.com/error?code=700082"}"#;

    #[tokio::test]
    async fn success_parses_the_rotated_token_expiry_and_scope() {
        let (result, request) = refresh_against(http("200 OK", &[], SUCCESS), public_app()).await;
        let grant = result.unwrap();
        assert_eq!(grant.access_token.expose(), "AT-new");
        assert_eq!(
            grant.refresh_token.as_ref().map(RefreshToken::expose),
            Some("RT-rotated")
        );
        let left = grant
            .expires_at
            .duration_since(SystemTime::now())
            .unwrap()
            .as_secs();
        assert!((3597..=3599).contains(&left), "expires in {left} s");
        assert_eq!(grant.scope, DELEGATED_SCOPES[..3].join(" "));
        assert!(!format!("{grant:?}").contains("AT-new"));

        assert_eq!(
            request.request_line(),
            "POST /contoso.onmicrosoft.com/oauth2/v2.0/token HTTP/1.1"
        );
        assert_eq!(
            request.header("content-type"),
            Some("application/x-www-form-urlencoded")
        );
        assert_eq!(request.header("accept"), Some("application/json"));
        assert_eq!(request.header("user-agent"), Some(USER_AGENT));
        assert_eq!(request.header("authorization"), None);
    }

    #[tokio::test]
    async fn a_public_client_sends_the_grant_without_a_secret() {
        let (result, request) = refresh_against(http("200 OK", &[], SUCCESS), public_app()).await;
        result.unwrap();
        let form = request.form();
        assert_eq!(form["grant_type"], "refresh_token");
        assert_eq!(form["client_id"], "00000000-1111-2222-3333-444444444444");
        assert_eq!(form["refresh_token"], OLD_RT);
        assert_eq!(
            form["scope"],
            "https://outlook.office.com/IMAP.AccessAsUser.All \
             https://outlook.office.com/POP.AccessAsUser.All \
             https://outlook.office.com/SMTP.Send offline_access"
        );
        assert!(!form.contains_key("client_secret"), "{form:?}");
        assert_eq!(form.len(), 4, "{form:?}");
    }

    #[tokio::test]
    async fn a_confidential_client_sends_its_secret_in_the_body() {
        let secret = secret();
        let app = confidential_app(&secret);
        let (result, request) = refresh_against(http("200 OK", &[], SUCCESS), app).await;
        result.unwrap();
        assert_eq!(request.form()["client_secret"], SECRET);
        assert_eq!(request.header("authorization"), None);
    }

    #[tokio::test]
    async fn invalid_grant_is_rejected_with_the_aadsts_code() {
        let (result, _) =
            refresh_against(http("400 Bad Request", &[], INVALID_GRANT), public_app()).await;
        let e = result.unwrap_err();
        assert_no_secret(&e);
        assert!(e.needs_admin());
        match e {
            IdpError::Rejected {
                status,
                error,
                description,
                codes,
            } => {
                assert_eq!(status, 400);
                assert_eq!(error, "invalid_grant");
                assert!(description.starts_with("AADSTS700082: "), "{description}");
                assert_eq!(codes, [700082]);
            }
            other => panic!("expected Rejected, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn invalid_client_with_401_is_rejected() {
        let body = r#"{"error":"invalid_client","error_description":"AADSTS7000222: The provided client secret keys are expired.","error_codes":[7000222]}"#;
        let (result, _) = refresh_against(http("401 Unauthorized", &[], body), public_app()).await;
        let e = result.unwrap_err();
        assert!(e.needs_admin());
        assert!(
            matches!(&e, IdpError::Rejected { status: 401, codes, .. } if codes == &[7000222]),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn service_unavailable_honours_retry_after() {
        let response = http("503 Service Unavailable", &["Retry-After: 7"], "");
        let (result, _) = refresh_against(response, public_app()).await;
        match result.unwrap_err() {
            IdpError::Unavailable {
                reason,
                retry_after,
            } => {
                assert_eq!(retry_after, Some(Duration::from_secs(7)));
                assert!(reason.contains("503"), "{reason}");
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn throttling_and_temporarily_unavailable_are_unavailable() {
        let temporarily = r#"{"error":"temporarily_unavailable","error_description":"AADSTS50196: The server terminated an operation because it encountered a client request loop.","error_codes":[50196]}"#;
        let server_error = r#"{"error":"server_error","error_description":"AADSTS90033: A transient error has occurred.","error_codes":[90033]}"#;
        let cases = [
            (http("400 Bad Request", &[], temporarily), None),
            (http("400 Bad Request", &[], server_error), None),
            (
                http("429 Too Many Requests", &["Retry-After: 30"], "{}"),
                Some(30),
            ),
            (
                http("500 Internal Server Error", &[], "<html>oops</html>"),
                None,
            ),
            (
                http("502 Bad Gateway", &["Retry-After: soon"], INVALID_GRANT),
                None,
            ),
        ];
        for (response, expected) in cases {
            let (result, _) = refresh_against(response, public_app()).await;
            let e = result.unwrap_err();
            assert!(!e.needs_admin());
            match e {
                IdpError::Unavailable { retry_after, .. } => {
                    assert_eq!(retry_after, expected.map(Duration::from_secs));
                }
                other => panic!("expected Unavailable, got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn answers_that_are_not_token_responses_are_malformed() {
        let cases: [(Vec<u8>, &str); 8] = [
            (
                http("200 OK", &[], r#"{"access_token": "AT-new", "#),
                "not JSON",
            ),
            (http("200 OK", &[], "not json"), "not JSON"),
            (
                http(
                    "200 OK",
                    &[],
                    r#"{"token_type":"Bearer","expires_in":3599}"#,
                ),
                "access_token",
            ),
            (
                http(
                    "200 OK",
                    &[],
                    r#"{"token_type":"Bearer","access_token":"AT-new"}"#,
                ),
                "expires_in",
            ),
            // serde would quote the value: the message must not.
            (
                http(
                    "200 OK",
                    &[],
                    &format!(
                        r#"{{"token_type":"Bearer","access_token":"AT-new","expires_in":"{OLD_RT}"}}"#
                    ),
                ),
                "wrong type",
            ),
            (
                http(
                    "200 OK",
                    &[],
                    r#"{"token_type":"pop","access_token":"AT-new","expires_in":5}"#,
                ),
                "Bearer",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 2\r\n\r\nhi"
                    .to_vec(),
                "Content-Type",
            ),
            (http("404 Not Found", &[], "<html/>"), "404"),
        ];
        for (response, expected) in cases {
            let (result, _) = refresh_against(response, public_app()).await;
            let e = result.unwrap_err();
            assert_no_secret(&e);
            assert!(
                matches!(&e, IdpError::Malformed(why) if why.contains(expected)),
                "expected Malformed mentioning {expected:?}, got {e:?}"
            );
        }
    }

    #[tokio::test]
    async fn an_oversized_body_is_refused() {
        let padding = " ".repeat(MAX_RESPONSE_BYTES);
        let big = format!(r#"{{"pad":"{padding}","access_token":"AT-new"}}"#);
        let mut chunked = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                            Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            .to_vec();
        for piece in big.as_bytes().chunks(8192) {
            chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            chunked.extend_from_slice(piece);
            chunked.extend_from_slice(b"\r\n");
        }
        chunked.extend_from_slice(b"0\r\n\r\n");

        for response in [http("200 OK", &[], &big), chunked] {
            let (addr, server) = serve_once(response).await;
            let e = endpoint(addr, Duration::from_secs(5))
                .refresh(&public_app(), &RefreshToken::new(OLD_RT), DELEGATED_SCOPES)
                .await
                .unwrap_err();
            assert!(
                matches!(&e, IdpError::Malformed(why) if why.contains("over 65536 bytes")),
                "{e:?}"
            );
            // The fake may see a reset once the relay stops reading; only the request matters.
            drop(server);
        }
    }

    #[tokio::test]
    async fn a_silent_endpoint_times_out_as_unavailable() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Accepts and reads, then never answers; a second case answers the head only.
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            for answer_head in [false, true] {
                let (mut stream, _) = listener.accept().await.unwrap();
                read_request(&mut stream).await;
                if answer_head {
                    let head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                                 Content-Length: 100\r\n\r\n{\"access";
                    stream.write_all(head).await.unwrap();
                }
                held.push(stream);
            }
            std::future::pending::<()>().await;
        });
        let endpoint = endpoint(addr, Duration::from_millis(300));
        for _ in 0..2 {
            let started = Instant::now();
            let e = endpoint
                .refresh(&public_app(), &RefreshToken::new(OLD_RT), DELEGATED_SCOPES)
                .await
                .unwrap_err();
            let took = started.elapsed();
            assert!(took < Duration::from_secs(2), "took {took:?}");
            assert!(
                matches!(&e, IdpError::Unavailable { reason, .. } if reason.contains("timed out")),
                "{e:?}"
            );
            assert_no_secret(&e);
        }
        silent.abort();
    }

    #[tokio::test]
    async fn a_closed_port_is_unavailable() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let e = endpoint(addr, Duration::from_secs(5))
            .refresh(&public_app(), &RefreshToken::new(OLD_RT), DELEGATED_SCOPES)
            .await
            .unwrap_err();
        assert!(
            matches!(&e, IdpError::Unavailable { reason, retry_after: None } if reason.starts_with("cannot connect")),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn a_redirect_is_not_followed() {
        let elsewhere = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let location = format!(
            "Location: http://{}/common/oauth2/v2.0/token",
            elsewhere.local_addr().unwrap()
        );
        let (result, _) = refresh_against(http("302 Found", &[&location], ""), public_app()).await;
        let e = result.unwrap_err();
        assert!(
            matches!(&e, IdpError::Malformed(why) if why.contains("302")),
            "{e:?}"
        );
        let followed = tokio::time::timeout(Duration::from_millis(200), elsewhere.accept()).await;
        assert!(followed.is_err(), "the redirect was followed");
    }

    #[test]
    fn token_url_puts_the_tenant_in_one_segment() {
        for authority in [
            "https://login.microsoftonline.com",
            "https://login.microsoftonline.com/",
        ] {
            let e = TokenEndpoint::new(authority, tls(), Duration::from_secs(1)).unwrap();
            assert_eq!(
                e.token_url(Cloud::Global, "contoso.onmicrosoft.com"),
                "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
            );
            assert_eq!(
                e.token_url(Cloud::Global, "a/b?c"),
                "https://login.microsoftonline.com/a%2Fb%3Fc/oauth2/v2.0/token"
            );
        }
        let e = TokenEndpoint::new("http://127.0.0.1:8080", tls(), Duration::from_secs(1)).unwrap();
        assert_eq!(
            e.token_url(Cloud::China, "organizations"),
            "http://127.0.0.1:8080/organizations/oauth2/v2.0/token"
        );
        assert_eq!(
            format!("{e:?}"),
            "TokenEndpoint { authority: \"http://127.0.0.1:8080/\", timeout: 1s, .. }"
        );
    }

    #[test]
    fn only_http_authorities_are_accepted() {
        for bad in [
            "ftp://example.com",
            "not a url",
            "mailto:a@b",
            "https://h/?q=1",
        ] {
            let e = TokenEndpoint::new(bad, tls(), Duration::from_secs(1)).unwrap_err();
            assert!(matches!(e, IdpError::Unavailable { .. }), "{bad}: {e:?}");
        }
    }

    #[test]
    fn endpoint_text_is_cleaned_and_capped() {
        assert_eq!(clean("a\r\nb\tc"), "a  b c");
        let long = "x".repeat(MAX_ERROR_TEXT + 10);
        assert_eq!(clean(&long).chars().count(), MAX_ERROR_TEXT + 1);
        assert_eq!(clean(&"x".repeat(MAX_ERROR_TEXT)).len(), MAX_ERROR_TEXT);
    }

    // === sign-in grants ===

    const DEVICE_CODE: &str = r#"{"user_code":"GQ7XH2RKP","device_code":"DAQABAAEAAAD-secret-device-code","verification_uri":"https://microsoft.com/devicelogin","expires_in":900,"interval":0,"message":"To sign in, use a web browser to open the page https://microsoft.com/devicelogin and enter the code GQ7XH2RKP to authenticate.\u001b[2J"}"#;

    /// An id_token whose payload is `{"aud":"x","preferred_username":"alice@contoso.com"}`.
    const ID_TOKEN: &str = "eyJhbGciOiJub25lIn0.eyJhdWQiOiJ4IiwicHJlZmVycmVkX3VzZXJuYW1lIjoiYWxpY2VAY29udG9zby5jb20ifQ.c2ln";

    fn confidential_app(credential: &Credential) -> App<'_> {
        App {
            credential,
            ..public_app()
        }
    }

    fn signed_in_body() -> String {
        SUCCESS.replace(
            r#""refresh_token":"RT-rotated"}"#,
            &format!(r#""refresh_token":"RT-rotated","id_token":"{ID_TOKEN}"}}"#),
        )
    }

    #[test]
    fn sign_in_urls_put_the_tenant_in_one_segment() {
        let e = TokenEndpoint::new(
            "https://login.microsoftonline.com/",
            tls(),
            Duration::from_secs(1),
        )
        .unwrap();
        let base = "https://login.microsoftonline.com";
        assert_eq!(
            e.authorize_url(Cloud::Global, "a/b"),
            format!("{base}/a%2Fb/oauth2/v2.0/authorize")
        );
        assert_eq!(
            e.device_code_url(Cloud::Global, "common"),
            format!("{base}/common/oauth2/v2.0/devicecode")
        );
        assert_eq!(
            e.native_client_redirect_uri(Cloud::Global),
            format!("{base}/common/oauth2/nativeclient")
        );
    }

    #[tokio::test]
    async fn a_device_code_start_names_only_the_client_and_the_scopes() {
        let (addr, server) = serve_once(http("200 OK", &[], DEVICE_CODE)).await;
        let secret = secret();
        let device = endpoint(addr, Duration::from_secs(5))
            .start_device_code(&confidential_app(&secret), SIGN_IN_SCOPES)
            .await
            .unwrap();
        let request = server.await.unwrap();
        assert_eq!(
            request.request_line(),
            "POST /contoso.onmicrosoft.com/oauth2/v2.0/devicecode HTTP/1.1"
        );
        let form = request.form();
        assert_eq!(form["client_id"], "00000000-1111-2222-3333-444444444444");
        assert_eq!(form["scope"], SIGN_IN_SCOPES.join(" "));
        assert_eq!(form.len(), 2, "{form:?}");

        assert_eq!(device.user_code, "GQ7XH2RKP");
        assert_eq!(device.verification_uri, "https://microsoft.com/devicelogin");
        let message = device.message.as_deref().unwrap();
        assert!(message.ends_with("to authenticate. [2J"), "{message}");
        assert_eq!(device.expires_in, Duration::from_secs(900));
        assert_eq!(device.interval, MIN_POLL_INTERVAL);
        assert!(!format!("{device:?}").contains("secret-device-code"));
    }

    #[tokio::test]
    async fn a_device_code_poll_sends_the_grant_and_reads_the_id_token() {
        let (addr, server) = serve_once(http("200 OK", &[], &signed_in_body())).await;
        let secret = secret();
        let device = DeviceAuthorization::for_tests(Duration::from_secs(900), MIN_POLL_INTERVAL);
        let grant = endpoint(addr, Duration::from_secs(5))
            .poll_device_code(&confidential_app(&secret), &device, SIGN_IN_SCOPES)
            .await
            .unwrap();
        let request = server.await.unwrap();
        assert_eq!(
            request.request_line(),
            "POST /contoso.onmicrosoft.com/oauth2/v2.0/token HTTP/1.1"
        );
        assert_eq!(request.header("accept"), Some("application/json"));
        let form = request.form();
        assert_eq!(form["grant_type"], DEVICE_CODE_GRANT);
        assert_eq!(form["device_code"], "device-code");
        assert_eq!(form["client_secret"], SECRET);
        assert_eq!(form.len(), 4, "{form:?}");
        assert_eq!(grant.access_token.expose(), "AT-new");
        assert_eq!(grant.id_token.as_deref(), Some(ID_TOKEN));
        assert!(!format!("{grant:?}").contains(ID_TOKEN));
    }

    #[tokio::test]
    async fn a_pending_poll_is_rejected_and_odd_answers_are_malformed() {
        let pending = r#"{"error":"authorization_pending","error_description":"AADSTS70016: OAuth 2.0 device flow error. Authorization is pending. Continue polling.","error_codes":[70016]}"#;
        let device = DeviceAuthorization::for_tests(Duration::from_secs(900), MIN_POLL_INTERVAL);
        let poll = |response: Vec<u8>| {
            let device = &device;
            async move {
                let (addr, _server) = serve_once(response).await;
                endpoint(addr, Duration::from_secs(5))
                    .poll_device_code(&public_app(), device, SIGN_IN_SCOPES)
                    .await
            }
        };
        let e = poll(http("400 Bad Request", &[], pending))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, IdpError::Rejected { error, codes, .. }
                if error == "authorization_pending" && codes == &[70016]),
            "{e:?}"
        );
        let cases: [(Vec<u8>, &str); 4] = [
            (
                b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 2\r\n\r\nhi"
                    .to_vec(),
                "Content-Type `text/html`",
            ),
            (
                http("200 OK", &[], r#"{"token_type":"Bearer","expires_in":5}"#),
                "missing field `access_token`",
            ),
            (
                http(
                    "200 OK",
                    &[],
                    &format!(
                        r#"{{"token_type":"Bearer","access_token":"AT-new","expires_in":"{OLD_RT}"}}"#
                    ),
                ),
                "wrong type",
            ),
            (http("200 OK", &[], "{\"access"), "not JSON"),
        ];
        for (response, expected) in cases {
            let e = poll(response).await.unwrap_err();
            assert_no_secret(&e);
            assert!(
                matches!(&e, IdpError::Malformed(why) if why.contains(expected)),
                "expected Malformed mentioning {expected:?}, got {e:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_code_is_redeemed_with_its_pkce_verifier_and_redirect_uri() {
        let (addr, server) = serve_once(http("200 OK", &[], &signed_in_body())).await;
        let endpoint = endpoint(addr, Duration::from_secs(5));
        let request = endpoint
            .authorization_request(
                &public_app(),
                SIGN_IN_SCOPES,
                "http://localhost:8400/",
                "alice@contoso.com",
            )
            .unwrap();
        let url = request.url().clone();
        assert_eq!(url.path(), "/contoso.onmicrosoft.com/oauth2/v2.0/authorize");
        let query: HashMap<String, String> = url.query_pairs().into_owned().collect();
        assert_eq!(query["response_type"], "code");
        assert_eq!(query["client_id"], "00000000-1111-2222-3333-444444444444");
        assert_eq!(query["redirect_uri"], "http://localhost:8400/");
        assert_eq!(query["scope"], SIGN_IN_SCOPES.join(" "));
        assert_eq!(query["code_challenge_method"], "S256");
        assert_eq!(query["login_hint"], "alice@contoso.com");
        assert_eq!(query["prompt"], "select_account");
        assert!(request.state_matches(&query["state"]));
        assert!(!request.state_matches("forged"));
        let shown = format!("{request:?}");
        assert!(!shown.contains(&query["state"]), "{shown}");

        let grant = endpoint
            .redeem_code(&public_app(), request, "1.AQ-the-code", SIGN_IN_SCOPES)
            .await
            .unwrap();
        assert_eq!(grant.id_token.as_deref(), Some(ID_TOKEN));
        let form = server.await.unwrap().form();
        assert_eq!(form["grant_type"], "authorization_code");
        assert_eq!(form["code"], "1.AQ-the-code");
        assert_eq!(form["redirect_uri"], "http://localhost:8400/");
        assert_eq!(form["scope"], SIGN_IN_SCOPES.join(" "));
        assert!(!form.contains_key("client_secret"), "{form:?}");
        // RFC 7636 §4.6: the challenge is BASE64URL(SHA256(verifier)).
        let digest =
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, form["code_verifier"].as_bytes());
        use base64::Engine as _;
        let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref());
        assert_eq!(challenge, query["code_challenge"]);
    }

    #[test]
    fn refresh_is_send() {
        fn assert_send<T: Send>(_: &T) {}
        let endpoint =
            TokenEndpoint::new("https://login.example", tls(), Duration::from_secs(1)).unwrap();
        let (app, token) = (public_app(), RefreshToken::new("x"));
        let future = endpoint.refresh(&app, &token, DELEGATED_SCOPES);
        assert_send(&future);
    }

    // === clouds, certificates, client credentials ===

    #[test]
    fn each_cloud_signs_in_at_its_login_host_unless_the_authority_is_set() {
        let default = TokenEndpoint::new(
            "https://login.microsoftonline.com/",
            tls(),
            Duration::from_secs(1),
        )
        .unwrap();
        for (cloud, host) in [
            (Cloud::Global, "https://login.microsoftonline.com"),
            (Cloud::UsGov, "https://login.microsoftonline.us"),
            (Cloud::UsGovDod, "https://login.microsoftonline.us"),
            (Cloud::China, "https://login.partner.microsoftonline.cn"),
        ] {
            assert_eq!(
                default.token_url(cloud, "contoso.com"),
                format!("{host}/contoso.com/oauth2/v2.0/token")
            );
            assert_eq!(
                default.authorize_url(cloud, "contoso.com"),
                format!("{host}/contoso.com/oauth2/v2.0/authorize")
            );
            assert_eq!(
                default.device_code_url(cloud, "contoso.com"),
                format!("{host}/contoso.com/oauth2/v2.0/devicecode")
            );
            assert_eq!(
                default.native_client_redirect_uri(cloud),
                format!("{host}/common/oauth2/nativeclient")
            );
        }
        // Any other authority serves every cloud (a fake in tests, a proxy).
        let fixed = TokenEndpoint::new(
            "https://login.microsoftonline.us",
            tls(),
            Duration::from_secs(1),
        )
        .unwrap();
        for cloud in Cloud::ALL {
            assert_eq!(
                fixed.token_url(cloud, "t"),
                "https://login.microsoftonline.us/t/oauth2/v2.0/token"
            );
        }
    }

    /// Checks the client assertion in `form`: a PS256 JWT for [`public_app`]'s client,
    /// addressed to `audience`, signed by the test certificate; returns its `jti`.
    fn check_assertion(form: &HashMap<String, String>, audience: &str) -> String {
        use aws_lc_rs::signature::{RSA_PSS_2048_8192_SHA256, UnparsedPublicKey};
        use base64::Engine as _;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use rustls_pki_types::pem::PemObject;

        assert!(!form.contains_key("client_secret"), "{form:?}");
        assert_eq!(form["client_assertion_type"], JWT_BEARER);
        let jwt = &form["client_assertion"];
        let part = |i: usize| -> serde_json::Value {
            let bytes = URL_SAFE_NO_PAD
                .decode(jwt.split('.').nth(i).unwrap())
                .unwrap();
            serde_json::from_slice(&bytes).unwrap()
        };
        let credential = crate::oauth::testing::certificate_credential(Default::default());
        assert_eq!(part(0)["alg"], "PS256");
        assert_eq!(part(0)["x5t#S256"], credential.x5t_s256());
        let claims = part(1);
        assert_eq!(claims["aud"], audience);
        assert_eq!(claims["iss"], public_app().client_id);
        assert_eq!(claims["sub"], public_app().client_id);
        let (cert, _) = crate::oauth::testing::rsa_pair();
        let der = rustls_pki_types::CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
        let key = UnparsedPublicKey::new(
            &RSA_PSS_2048_8192_SHA256,
            parsed.public_key().subject_public_key.data.to_vec(),
        );
        let (signed, signature) = jwt.rsplit_once('.').unwrap();
        key.verify(
            signed.as_bytes(),
            &URL_SAFE_NO_PAD.decode(signature).unwrap(),
        )
        .expect("the assertion verifies with the certificate's key");
        claims["jti"].as_str().unwrap().to_owned()
    }

    #[tokio::test]
    async fn every_grant_of_a_certificate_app_carries_a_fresh_assertion() {
        let credential = Credential::Certificate(crate::oauth::testing::certificate_credential(
            Default::default(),
        ));
        let app = confidential_app(&credential);
        let mut jtis = Vec::new();

        let (result, request) = refresh_against(http("200 OK", &[], SUCCESS), app).await;
        result.unwrap();
        let audience = format!(
            "{}/contoso.onmicrosoft.com/oauth2/v2.0/token",
            request
                .header("host")
                .map(|h| format!("http://{h}"))
                .unwrap()
        );
        let form = request.form();
        assert_eq!(form["grant_type"], "refresh_token");
        jtis.push(check_assertion(&form, &audience));

        let (addr, server) = serve_once(http("200 OK", &[], &signed_in_body())).await;
        let endpoint = endpoint(addr, Duration::from_secs(5));
        let request = endpoint
            .authorization_request(&app, SIGN_IN_SCOPES, "http://localhost:1/", "a@b.cd")
            .unwrap();
        endpoint
            .redeem_code(&app, request, "the-code", SIGN_IN_SCOPES)
            .await
            .unwrap();
        let form = server.await.unwrap().form();
        assert_eq!(form["grant_type"], "authorization_code");
        let audience = endpoint.token_url(Cloud::Global, "contoso.onmicrosoft.com");
        jtis.push(check_assertion(&form, &audience));

        let (addr, server) = serve_once(http("200 OK", &[], &signed_in_body())).await;
        let device = DeviceAuthorization::for_tests(Duration::from_secs(900), MIN_POLL_INTERVAL);
        let endpoint = self::endpoint(addr, Duration::from_secs(5));
        endpoint
            .poll_device_code(&app, &device, SIGN_IN_SCOPES)
            .await
            .unwrap();
        let form = server.await.unwrap().form();
        assert_eq!(form["grant_type"], DEVICE_CODE_GRANT);
        assert_eq!(form.len(), 5, "{form:?}");
        let audience = endpoint.token_url(Cloud::Global, "contoso.onmicrosoft.com");
        jtis.push(check_assertion(&form, &audience));

        let app_only = r#"{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":"AT-new"}"#;
        let (addr, server) = serve_once(http("200 OK", &[], app_only)).await;
        let endpoint = self::endpoint(addr, Duration::from_secs(5));
        endpoint
            .client_credentials(&app, Cloud::Global.app_only_scopes())
            .await
            .unwrap();
        let form = server.await.unwrap().form();
        assert_eq!(form["grant_type"], "client_credentials");
        let audience = endpoint.token_url(Cloud::Global, "contoso.onmicrosoft.com");
        jtis.push(check_assertion(&form, &audience));

        jtis.sort();
        jtis.dedup();
        assert_eq!(jtis.len(), 4, "every assertion has its own jti");
    }

    #[tokio::test]
    async fn client_credentials_ask_for_the_default_scope_and_get_no_refresh_token() {
        let app_only = r#"{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":"AT-new"}"#;
        let (addr, server) = serve_once(http("200 OK", &[], app_only)).await;
        let secret = secret();
        let app = App {
            cloud: Cloud::UsGov,
            ..confidential_app(&secret)
        };
        let grant = endpoint(addr, Duration::from_secs(5))
            .client_credentials(&app, Cloud::UsGov.app_only_scopes())
            .await
            .unwrap();
        assert_eq!(grant.access_token.expose(), "AT-new");
        assert!(grant.refresh_token.is_none());
        assert_eq!(grant.scope, "https://outlook.office365.us/.default");
        let request = server.await.unwrap();
        assert_eq!(
            request.request_line(),
            "POST /contoso.onmicrosoft.com/oauth2/v2.0/token HTTP/1.1"
        );
        let form = request.form();
        assert_eq!(form["grant_type"], "client_credentials");
        assert_eq!(form["scope"], "https://outlook.office365.us/.default");
        assert_eq!(form["client_id"], "00000000-1111-2222-3333-444444444444");
        assert_eq!(form["client_secret"], SECRET);
        assert_eq!(form.len(), 4, "{form:?}");
    }
}
