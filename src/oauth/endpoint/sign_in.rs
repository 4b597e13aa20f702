//! The endpoint side of the administrator's sign-ins (`mailbox authorize`): starting and
//! polling a device code (RFC 8628), and an authorization-code request with PKCE
//! (RFC 7636) and its redemption. The polls and the redemption are token requests like
//! any other ([`TokenEndpoint`]'s one path); the waiting and the browser are
//! `oauth::flows`'.

use std::fmt;
use std::time::Duration;

use oauth2::basic::BasicClient;
use oauth2::{
    AuthUrl, ClientId, CsrfToken, DeviceAuthorizationResponse, DeviceCode,
    ExtraDeviceAuthorizationFields, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope,
};
use serde::{Deserialize, Serialize};
use url::Url;

use super::app::App;
use super::client::TokenEndpoint;
use super::errors::{clean, unavailable};
use super::grant::Grant;
use super::request::post_form;
use super::response::parse_json;
use crate::oauth::{IdpError, TokenGrant};
use crate::secret::constant_time_eq;

/// The shortest poll interval honoured, whatever `/devicecode` says (RFC 8628 §3.2 makes
/// 5 s the default; Entra sends 5).
pub const MIN_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Longest user code accepted from `/devicecode` (Entra's have 8 or 9 characters).
const MAX_USER_CODE_LEN: usize = 64;

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

impl TokenEndpoint {
    /// Starts a device code sign-in (RFC 8628 §3.1): POSTs `client_id` and `scopes` to
    /// `/devicecode`. The request names only the client, never a secret.
    pub async fn start_device_code(
        &self,
        app: &App<'_>,
        scopes: &[&str],
    ) -> Result<DeviceAuthorization, IdpError> {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("client_id", app.client_id)
            .append_pair("scope", &scopes.join(" "))
            .finish();
        let url = self.device_code_url(app.cloud, app.tenant);
        let answer = post_form(self.http(), &url, &body).await?;
        let response: DeviceAuthorizationResponse<EntraDeviceFields> =
            parse_json(&answer, "device code response")?;
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
    /// (see `oauth::flows`). A confidential app authenticates with its
    /// secret or its certificate.
    pub async fn poll_device_code(
        &self,
        app: &App<'_>,
        device: &DeviceAuthorization,
        scopes: &[&str],
    ) -> Result<TokenGrant, IdpError> {
        let grant = Grant::DeviceCode(device.device_code.secret());
        self.token_request(app, grant, scopes).await
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
        let client = BasicClient::new(ClientId::new(app.client_id.to_owned()))
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
        let grant = Grant::Code {
            code,
            verifier: request.verifier.secret(),
            redirect_uri: request.redirect_uri.as_str(),
        };
        self.token_request(app, grant, scopes).await
    }
}
