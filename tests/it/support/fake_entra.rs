//! Fake Microsoft Entra ID v2.0 endpoints on 127.0.0.1:0: the token endpoint
//! (`POST /{tenant}/oauth2/v2.0/token`), the device authorization endpoint
//! (`POST /{tenant}/oauth2/v2.0/devicecode`) and the authorization endpoint
//! (`GET /{tenant}/oauth2/v2.0/authorize`).
//!
//! It speaks the refresh-token grant the way login.microsoftonline.com does (PROTOCOL.md A3, A4, A7):
//! refresh tokens rotate on every use and the old ones stay valid, errors carry AADSTS codes in
//! Entra's JSON shape, and the scope check rejects Graph-prefixed or bare mail scopes. Access tokens it
//! issues can be checked by the fake mail servers through [`AccessTokenChecker`].
//!
//! Clients authenticate as Entra checks them: a public client sends nothing (AADSTS700025
//! otherwise), a confidential one its secret or a certificate's client assertion (§B), verified
//! against the certificate registered with [`FakeEntra::add_app_with_certificate`]: signature
//! (PS256 or RS256), thumbprint (`x5t#S256` or `x5t`), `aud` (this fake's token URL), `iss` =
//! `sub`, the time range, and a `jti` that was never used before. Assertions are accepted on
//! every grant. The client-credentials grant (A4, A5) takes only a resource's `/.default` and
//! issues app-only tokens that carry the app roles `SMTP.SendAsApp`, `IMAP.AccessAsApp` and
//! `POP.AccessAsApp`; the fake mail servers accept them for the mailboxes granted to the app
//! (`grant_app_access`).
//!
//! Microsoft Graph is the second resource (PROTOCOL.md A11): the delegated scopes
//! `https://graph.microsoft.com/Mail.Send` and `Mail.Send.Shared` (refresh-token grant and
//! sign-ins) and `https://graph.microsoft.com/.default` (client credentials, role
//! `Mail.Send`) give tokens whose [`AccessTokenInfo::audience`] is
//! `https://graph.microsoft.com`, for the fake Graph. As Entra does, one request names one
//! resource: a scope mixing Outlook's and Graph's is refused with AADSTS28000.
//!
//! Sign-ins (A8): device codes stay `authorization_pending` until a test approves them
//! ([`FakeEntra::approve_device_code`]) or they are approved automatically after some polls;
//! `slow_down`, `expired_token` and the like can be scripted. The authorization endpoint checks the
//! request (client, redirect URI, `response_type=code`, PKCE S256, `state`), "signs in" at once as the
//! `login_hint` user (or the one forced with [`FakeEntra::sign_in_as`]) and answers `302 Found` to the
//! redirect URI with a single-use code, redeemable with the PKCE verifier. Sign-ins that asked for
//! `openid` get an id_token.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Path, RawQuery, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::entra_errors::EntraError;
pub use super::entra_state::DevicePoll;
pub use super::entra_state::app_principal;
use super::entra_state::{
    APP_ROLES, App, AuthorizeAnswer, DEVICE_CODE_GRANT, DeviceState, EntraState, GRAPH, OUTLOOK,
    RefreshToken, RtStatus, token_serial,
};
use super::tasks::{ServerGuard, TaskWatch, panic_message, serve_http};

/// Lifetime the fake announces in `expires_in` unless [`FakeEntra::set_expires_in`] changes it.
pub const DEFAULT_EXPIRES_IN: u64 = 3599;

/// One POST to the token endpoint, as the fake received it.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    pub tenant: String,
    pub form: BTreeMap<String, String>,
    /// HTTP status the fake answered with.
    pub status: u16,
    /// The request redeemed a refresh token that had already been rotated (not the newest one).
    pub stale_refresh_token: bool,
    /// When the fake received it.
    pub at: Instant,
}

impl TokenRequest {
    /// Whether this is a device code poll.
    pub fn is_device_code_poll(&self) -> bool {
        self.form.get("grant_type").map(String::as_str) == Some(DEVICE_CODE_GRANT)
    }
}

/// What the fake knows about an access token it issued.
#[derive(Clone, Debug)]
pub struct AccessTokenInfo {
    pub tenant: String,
    pub client_id: String,
    /// The user; for an app-only token, [`app_principal`] of the client.
    pub upn: String,
    /// The token's `aud`: `https://outlook.office.com` (or `https://outlook.office365.com`
    /// app-only) for Exchange Online, [`GRAPH_AUDIENCE`] for Microsoft Graph.
    pub audience: String,
    /// Granted (delegated) scopes, with their resource's prefix
    /// (`https://outlook.office.com/` or `https://graph.microsoft.com/`).
    pub scopes: Vec<String>,
    /// Application permissions of an app-only token, e.g. `IMAP.AccessAsApp`.
    pub roles: Vec<String>,
    pub expired: bool,
    pub revoked: bool,
}

impl AccessTokenInfo {
    /// Not expired and not revoked.
    pub fn is_valid(&self) -> bool {
        !self.expired && !self.revoked
    }

    /// Whether the token carries `https://outlook.office.com/<name>`, or, app-only, the
    /// application permission that stands for it (`SMTP.Send`: `SMTP.SendAsApp`, ...).
    pub fn has_scope(&self, name: &str) -> bool {
        let app_role = APP_ROLES
            .iter()
            .find(|(_, scope)| *scope == name)
            .is_some_and(|(role, _)| self.roles.iter().any(|r| r == role));
        app_role || self.scopes.iter().any(|s| s == &format!("{OUTLOOK}{name}"))
    }

    /// Whether it came from the client-credentials grant.
    pub fn is_app_only(&self) -> bool {
        !self.roles.is_empty()
    }

    /// Whether the token is for Microsoft Graph.
    pub fn is_for_graph(&self) -> bool {
        self.audience == GRAPH_AUDIENCE
    }

    /// Whether a Graph token carries the delegated scope
    /// `https://graph.microsoft.com/<name>` or, app-only, the role `<name>` (`Mail.Send`).
    pub fn has_graph_permission(&self, name: &str) -> bool {
        self.is_for_graph()
            && (self.roles.iter().any(|r| r == name)
                || self.scopes.iter().any(|s| s == &format!("{GRAPH}{name}")))
    }
}

/// The `aud` of the fake's Microsoft Graph tokens.
pub const GRAPH_AUDIENCE: &str = "https://graph.microsoft.com";

/// The delegated scope that lets a user send mail through Graph (refresh-token grant).
pub const GRAPH_MAIL_SEND: &str = "https://graph.microsoft.com/Mail.Send";

/// The app-only scope of Graph (client credentials).
pub const GRAPH_DEFAULT: &str = "https://graph.microsoft.com/.default";

/// The fake token endpoint. Clones share state; the server stops when the last clone is dropped,
/// and that drop fails the test if the fake recorded an internal failure.
#[derive(Clone)]
pub struct FakeEntra {
    inner: Arc<Inner>,
    _server: Arc<ServerGuard>,
}

/// A handle that fake mail servers use to validate access tokens (it does not keep the server alive).
#[derive(Clone)]
pub struct AccessTokenChecker(Arc<Inner>);

struct Inner {
    authority: String,
    watch: Arc<TaskWatch>,
    state: Mutex<EntraState>,
}

// === impl FakeEntra ===

impl FakeEntra {
    /// Binds 127.0.0.1:0 and serves the token endpoint until the last clone is dropped.
    pub async fn start() -> FakeEntra {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake Entra");
        let addr = listener.local_addr().expect("fake Entra address");
        let watch = Arc::new(TaskWatch::new("entra"));
        let inner = Arc::new(Inner {
            authority: format!("http://{addr}"),
            watch: watch.clone(),
            state: Mutex::new(EntraState::new()),
        });
        let app = Router::new()
            .route("/{tenant}/oauth2/v2.0/token", post(token_endpoint))
            .route(
                "/{tenant}/oauth2/v2.0/devicecode",
                post(device_code_endpoint),
            )
            .route("/{tenant}/oauth2/v2.0/authorize", get(authorize_endpoint))
            .fallback(unmatched)
            .with_state(inner.clone());
        FakeEntra {
            inner,
            _server: serve_http(watch, listener, app),
        }
    }

    /// `http://127.0.0.1:PORT`, the value the relay uses in place of `https://login.microsoftonline.com`.
    pub fn authority(&self) -> String {
        self.inner.authority.clone()
    }

    /// `{authority}/{tenant}/oauth2/v2.0/token`.
    pub fn token_url(&self, tenant: &str) -> String {
        format!("{}/{tenant}/oauth2/v2.0/token", self.inner.authority)
    }

    /// Registers an app in `tenant`; `secret: None` makes it a public client.
    pub fn add_app(&self, tenant: &str, client_id: &str, secret: Option<&str>) {
        let app = App {
            secret: secret.map(str::to_string),
            certificate: None,
        };
        self.inner
            .lock()
            .apps
            .insert((tenant.to_string(), client_id.to_string()), app);
    }

    /// Registers an app in `tenant` whose credential is the certificate `cert_der` (as
    /// uploaded under Certificates & secrets): it authenticates with client assertions
    /// signed by that certificate's key.
    pub fn add_app_with_certificate(&self, tenant: &str, client_id: &str, cert_der: &[u8]) {
        let app = App {
            secret: None,
            certificate: Some(cert_der.to_vec()),
        };
        self.inner
            .lock()
            .apps
            .insert((tenant.to_string(), client_id.to_string()), app);
    }

    /// The resource hosts that scopes may name from now on: the cloud the fake plays
    /// (default `https://outlook.office.com/` and `https://outlook.office365.com/`; for
    /// US Government, `https://outlook.office365.us/`).
    pub fn set_scope_hosts(&self, hosts: &[&str]) {
        self.inner.lock().scope_hosts = hosts.iter().map(|h| h.to_string()).collect();
    }

    /// Every request of the client-credentials grant.
    pub fn client_credentials_requests(&self) -> Vec<TokenRequest> {
        let state = self.inner.lock();
        let grant = |r: &&TokenRequest| {
            r.form.get("grant_type").map(String::as_str) == Some("client_credentials")
        };
        state.requests.iter().filter(grant).cloned().collect()
    }

    /// Signs `upn` in to the app and returns a fresh refresh token (the start of a rotation chain).
    pub fn add_user(&self, tenant: &str, client_id: &str, upn: &str) -> String {
        let mut state = self.inner.lock();
        let family = state.next();
        state.mint_refresh_token(tenant, client_id, upn, family, 0)
    }

    /// The newest refresh token of the chain that `add_user` started for this user and app.
    pub fn latest_refresh_token(&self, tenant: &str, client_id: &str, upn: &str) -> Option<String> {
        let state = self.inner.lock();
        state
            .latest
            .values()
            .filter(|(_, rt)| {
                state.refresh_tokens.get(rt).is_some_and(|info| {
                    info.tenant == tenant && info.client_id == client_id && info.upn == upn
                })
            })
            .max_by_key(|(generation, _)| *generation)
            .map(|(_, rt)| rt.clone())
    }

    /// How many rotations `rt` is behind the newest refresh token of its chain (0: it is the
    /// newest), if the fake issued it and it is still valid.
    pub fn refresh_token_lag(&self, rt: &str) -> Option<u64> {
        let state = self.inner.lock();
        let info = state.refresh_tokens.get(rt)?;
        if info.status != RtStatus::Valid {
            return None;
        }
        let newest = state
            .latest
            .get(&info.family)
            .map_or(info.generation, |(g, _)| *g);
        Some(newest - info.generation)
    }

    /// How many successful refreshes redeemed a refresh token that had already been rotated.
    pub fn stale_refresh_token_uses(&self) -> usize {
        let state = self.inner.lock();
        state
            .requests
            .iter()
            .filter(|r| r.stale_refresh_token && r.status == 200)
            .count()
    }

    /// From now on, `rt` is rejected with AADSTS700082 (expired due to inactivity).
    pub fn expire_refresh_token(&self, rt: &str) {
        self.inner
            .set_rt_status(|_, token| token == rt, RtStatus::Expired);
    }

    /// From now on, `rt` is rejected with AADSTS70000.
    pub fn revoke_refresh_token(&self, rt: &str) {
        self.inner
            .set_rt_status(|_, token| token == rt, RtStatus::Revoked);
    }

    /// Revokes every refresh token of `upn` ("revoke sessions"); they get AADSTS70000.
    pub fn revoke_refresh_tokens_of(&self, upn: &str) {
        self.inner.set_rt_status(
            |info, _| info.upn.eq_ignore_ascii_case(upn),
            RtStatus::Revoked,
        );
    }

    /// Makes refresh tokens single-use (off by default): once redeemed, a refresh token is
    /// refused with `invalid_grant` (AADSTS70000), as a revoked one is.
    pub fn set_single_use_refresh_tokens(&self, on: bool) {
        self.inner.lock().single_use = on;
    }

    /// How many refresh grants presented a refresh token already redeemed while refresh
    /// tokens were single-use (each was refused).
    pub fn refresh_token_reuses(&self) -> usize {
        self.inner.lock().reused
    }

    /// How many refresh-token grants succeeded.
    pub fn refresh_grants(&self) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.status == 200)
            .filter(|r| r.form.get("grant_type").map(String::as_str) == Some("refresh_token"))
            .count()
    }

    /// `expires_in` (and `ext_expires_in`) of the following token responses.
    pub fn set_expires_in(&self, secs: u64) {
        self.inner.lock().expires_in = secs;
    }

    /// Holds every following token response for `delay` before answering.
    pub fn set_delay(&self, delay: Duration) {
        self.inner.lock().delay = delay;
    }

    /// Holds the token responses to refresh tokens of `upn` for `delay` (a hang for one
    /// mailbox only); other requests keep the general delay.
    pub fn set_delay_for(&self, upn: &str, delay: Duration) {
        self.inner
            .lock()
            .user_delays
            .insert(upn.to_ascii_lowercase(), delay);
    }

    /// Queues a raw response (status, body sent as `application/json`), answered before normal logic.
    pub fn push_response(&self, status: u16, body: &str) {
        self.inner
            .lock()
            .queued
            .push_back((status, body.to_string()));
    }

    /// Queues an error in Entra's JSON shape, e.g. `push_error(503, "temporarily_unavailable", 90033, "...")`.
    pub fn push_error(&self, status: u16, error: &str, code: u32, message: &str) {
        let body = {
            let mut state = self.inner.lock();
            let ids = (state.guid(), state.guid());
            EntraError::new(status, error, code, message.to_string()).body(ids)
        };
        self.push_response(status, &body);
    }

    /// Every request to the token endpoint, in arrival order.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.inner.lock().requests.clone()
    }

    /// Number of requests to the token endpoint.
    pub fn token_requests(&self) -> usize {
        self.inner.lock().requests.len()
    }

    /// `METHOD /path` of requests that did not match the token endpoint (answered 404).
    pub fn unmatched_requests(&self) -> Vec<String> {
        self.inner.lock().unmatched.clone()
    }

    /// Highest number of token requests that were being answered at the same time.
    pub fn max_concurrent_requests(&self) -> usize {
        self.inner.lock().max_in_flight
    }

    /// The upn an access token was issued to, if it is known, unexpired and not revoked.
    pub fn validate_access_token(&self, token: &str) -> Option<String> {
        self.checker().validate(token)
    }

    /// Everything known about an access token (valid or not).
    pub fn access_token_info(&self, token: &str) -> Option<AccessTokenInfo> {
        self.checker().info(token)
    }

    /// Marks every access token issued so far as expired.
    pub fn expire_access_tokens(&self) {
        for info in self.inner.lock().access_tokens.values_mut() {
            info.expired = true;
        }
    }

    /// Makes upstream reject `token` although the relay may still have it cached.
    pub fn revoke_access_token(&self, token: &str) {
        if let Some(info) = self.inner.lock().access_tokens.get_mut(token) {
            info.revoked = true;
        }
    }

    /// Issues an access token directly, without the HTTP round trip (for tests of the mail fakes).
    /// `scopes` are short names such as `"SMTP.Send"`.
    pub fn mint_access_token(
        &self,
        tenant: &str,
        client_id: &str,
        upn: &str,
        scopes: &[&str],
    ) -> String {
        let scopes = scopes.iter().map(|s| format!("{OUTLOOK}{s}")).collect();
        let mut inner = self.inner.lock();
        inner.mint_access_token(tenant, client_id, upn, scopes)
    }

    /// Issues an app-only token for Microsoft Graph with the given roles (none: a token of
    /// an app without the `Mail.Send` permission).
    pub fn mint_graph_app_token(&self, tenant: &str, client_id: &str, roles: &[&str]) -> String {
        let audience = GRAPH.trim_end_matches('/');
        self.inner
            .lock()
            .mint_app_token_for(tenant, client_id, audience, roles)
    }

    /// Every access token issued so far, oldest first.
    pub fn issued_access_tokens(&self) -> Vec<String> {
        let state = self.inner.lock();
        let mut tokens: Vec<_> = state.access_tokens.keys().cloned().collect();
        tokens.sort_by_key(|t| token_serial(t));
        tokens
    }

    // --- sign-ins ---

    /// `{authority}/{tenant}/oauth2/v2.0/authorize`.
    pub fn authorize_url(&self, tenant: &str) -> String {
        format!("{}/{tenant}/oauth2/v2.0/authorize", self.inner.authority)
    }

    /// `{authority}/common/oauth2/nativeclient`, the redirect URI of a pasted sign-in.
    pub fn native_client_redirect_uri(&self) -> String {
        format!("{}/common/oauth2/nativeclient", self.inner.authority)
    }

    /// The `interval` that following `/devicecode` answers announce (default 1 s).
    pub fn set_device_code_interval(&self, secs: u64) {
        self.inner.lock().device_interval = secs;
    }

    /// `upn` signs in with the device code that shows `user_code` (its next poll succeeds).
    /// Panics if the fake issued no such code.
    pub fn approve_device_code(&self, user_code: &str, upn: &str) {
        self.inner
            .lock()
            .set_device_state(user_code, DeviceState::Approved(upn.to_string()));
    }

    /// The user declines the sign-in of `user_code` (its polls get `authorization_declined`).
    pub fn decline_device_code(&self, user_code: &str) {
        self.inner
            .lock()
            .set_device_state(user_code, DeviceState::Declined);
    }

    /// The device code of `user_code` expires (its polls get `expired_token`).
    pub fn expire_device_code(&self, user_code: &str) {
        self.inner
            .lock()
            .set_device_state(user_code, DeviceState::Expired);
    }

    /// Device codes that nobody approved are approved as `upn` at their `polls`-th poll.
    pub fn auto_approve_device_codes(&self, polls: u32, upn: &str) {
        self.inner.lock().device_auto_approve = Some((polls, upn.to_string()));
    }

    /// Queues an answer for the next device code poll, given before the normal logic.
    pub fn push_device_poll(&self, answer: DevicePoll) {
        self.inner.lock().device_script.push_back(answer);
    }

    /// Every device code poll to the token endpoint, in arrival order.
    pub fn device_code_polls(&self) -> Vec<TokenRequest> {
        let state = self.inner.lock();
        let polls = state.requests.iter().filter(|r| r.is_device_code_poll());
        polls.cloned().collect()
    }

    /// The form of every request to `/devicecode`.
    pub fn device_code_requests(&self) -> Vec<BTreeMap<String, String>> {
        self.inner.lock().device_code_requests.clone()
    }

    /// From now on the browser is signed in as `upn`, whatever the `login_hint` says.
    pub fn sign_in_as(&self, upn: &str) {
        self.inner.lock().signed_in_as = Some(upn.to_string());
    }

    /// The query of every request to the authorization endpoint.
    pub fn authorize_requests(&self) -> Vec<BTreeMap<String, String>> {
        self.inner.lock().authorize_requests.clone()
    }

    /// Every token request with `grant_type=authorization_code`.
    pub fn code_redemptions(&self) -> Vec<TokenRequest> {
        let state = self.inner.lock();
        let grant = |r: &&TokenRequest| {
            r.form.get("grant_type").map(String::as_str) == Some("authorization_code")
        };
        state.requests.iter().filter(grant).cloned().collect()
    }

    /// A validation handle for the fake mail servers.
    pub fn checker(&self) -> AccessTokenChecker {
        AccessTokenChecker(self.inner.clone())
    }

    /// Panics if the fake failed (a handler panic, the server stopping) or was asked for a path
    /// other than the token endpoint ([`unmatched_requests`](Self::unmatched_requests)).
    pub fn check(&self) {
        self.inner.watch.check();
        let unmatched = self.unmatched_requests();
        assert!(
            unmatched.is_empty(),
            "fake entra got requests for unknown paths: {unmatched:?}"
        );
    }

    /// Panics only if the fake itself failed. Dropping the last clone does the same check.
    pub fn check_no_panics(&self) {
        self.inner.watch.check();
    }
}

// === impl AccessTokenChecker ===

impl AccessTokenChecker {
    pub fn info(&self, token: &str) -> Option<AccessTokenInfo> {
        self.0.lock().access_tokens.get(token).cloned()
    }

    pub fn validate(&self, token: &str) -> Option<String> {
        self.info(token)
            .filter(AccessTokenInfo::is_valid)
            .map(|i| i.upn)
    }
}

// === impl Inner ===

impl Inner {
    fn lock(&self) -> MutexGuard<'_, EntraState> {
        // Poisoning means a handler panicked; catch_unwind already recorded that as a failure.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `answer` on the state; a panic is recorded as a failure and answered with 500.
    fn guarded(
        &self,
        what: &str,
        answer: impl FnOnce(&mut EntraState) -> (u16, String),
    ) -> (u16, String) {
        let answered = std::panic::catch_unwind(AssertUnwindSafe(|| answer(&mut self.lock())));
        answered.unwrap_or_else(|payload| {
            let message = panic_message(payload);
            self.watch
                .record_failure(format!("{what} handler panicked: {message}"));
            (
                500,
                format!(r#"{{"error":"fake_entra_panic","error_description":{message:?}}}"#),
            )
        })
    }

    fn set_rt_status(&self, matches: impl Fn(&RefreshToken, &str) -> bool, status: RtStatus) {
        for (token, info) in self.lock().refresh_tokens.iter_mut() {
            if matches(info, token) {
                info.status = status;
            }
        }
    }
}

/// Decrements the in-flight count even when the client gives up during the delay.
struct InFlight(Arc<Inner>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.lock().in_flight -= 1;
    }
}

async fn token_endpoint(
    State(inner): State<Arc<Inner>>,
    Path(tenant): Path<String>,
    form: Result<Form<BTreeMap<String, String>>, FormRejection>,
) -> Response {
    {
        let mut state = inner.lock();
        state.in_flight += 1;
        state.max_in_flight = state.max_in_flight.max(state.in_flight);
    }
    let _in_flight = InFlight(inner.clone());
    let form = form.ok().map(|Form(form)| form);
    let delay = {
        let presented = form.as_ref().and_then(|f| f.get("refresh_token"));
        inner.lock().delay_for(presented.map(String::as_str))
    };
    let authority = inner.authority.clone();
    let answered = std::panic::catch_unwind(AssertUnwindSafe(|| {
        inner.lock().answer(&tenant, form, &authority)
    }));
    let (status, body) = answered.unwrap_or_else(|payload| {
        let message = panic_message(payload);
        inner
            .watch
            .record_failure(format!("token handler panicked: {message}"));
        (
            500,
            format!(r#"{{"error":"fake_entra_panic","error_description":{message:?}}}"#),
        )
    });
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    json_response(status, body)
}

async fn device_code_endpoint(
    State(inner): State<Arc<Inner>>,
    Path(tenant): Path<String>,
    form: Result<Form<BTreeMap<String, String>>, FormRejection>,
) -> Response {
    let form = form.ok().map(|Form(form)| form);
    let (status, body) = inner.guarded("devicecode", |state| {
        state.device_authorization(&tenant, form)
    });
    json_response(status, body)
}

async fn authorize_endpoint(
    State(inner): State<Arc<Inner>>,
    Path(tenant): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let query: BTreeMap<String, String> =
        url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let authority = inner.authority.clone();
    let caught = std::panic::catch_unwind(AssertUnwindSafe(|| {
        inner.lock().authorize(&tenant, query, &authority)
    }));
    let answer = caught.unwrap_or_else(|payload| {
        let message = panic_message(payload);
        inner
            .watch
            .record_failure(format!("authorize handler panicked: {message}"));
        AuthorizeAnswer::Page(500, message)
    });
    let mut response = match answer {
        AuthorizeAnswer::Redirect(location) => {
            let mut response = StatusCode::FOUND.into_response();
            match HeaderValue::from_str(&location) {
                Ok(value) => {
                    response.headers_mut().insert(header::LOCATION, value);
                }
                Err(_) => inner
                    .watch
                    .record_failure(format!("unusable Location: {location}")),
            }
            response
        }
        AuthorizeAnswer::Page(status, text) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
            let mut response =
                (status, format!("<html><body><p>{text}</p></body></html>")).into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            response
        }
    };
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn unmatched(State(inner): State<Arc<Inner>>, method: Method, uri: Uri) -> Response {
    inner.lock().unmatched.push(format!("{method} {uri}"));
    eprintln!("fake entra: no route for {method} {uri}");
    json_response(404, r#"{"error":"not_found"}"#.to_string())
}

fn json_response(status: u16, body: String) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-store, no-cache"),
    );
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}
