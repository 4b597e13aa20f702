//! The administrator's interactive sign-ins for `m365-relay mailbox authorize`: each one
//! gets a refresh token for a mailbox's user from Entra ID (PROTOCOL.md A8).
//!
//! - **Device code** (RFC 8628): the user opens `https://microsoft.com/devicelogin` on any
//!   device and types a short code; [`wait_for_device_sign_in`] polls the token endpoint
//!   until they are done. The app registration needs "Allow public client flows".
//! - **Browser** (authorization code with PKCE, RFC 7636, and a loopback redirect,
//!   RFC 8252 §7.3): the browser comes back to `http://localhost:PORT/`, where a
//!   [`Loopback`] listener on 127.0.0.1 takes the code.
//! - **Paste**: the same, but Entra sends the browser to its own blank `nativeclient` page;
//!   the admin pastes the address it ended on, and [`code_from_pasted`] reads it.
//!
//! Whichever way, [`check_identity`] then makes sure that the user who signed in is the one
//! whose token is wanted. The requests themselves are [`TokenEndpoint`]'s; printing and
//! storing are the CLI's. Nothing here prints or logs a token or a code.
//!
//! [`TokenEndpoint`]: super::endpoint::TokenEndpoint

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::Ipv4Addr;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until, timeout};
use url::Url;

use super::endpoint::{AuthorizationRequest, DeviceAuthorization, MIN_POLL_INTERVAL, clean};
use super::{IdpError, TokenGrant};
/// The admin's words for dates and durations, where the command line has long found them.
pub use crate::datetime::{countdown, duration_words, utc};

/// What RFC 8628 §3.5 adds to the poll interval at each `slow_down`.
pub const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);

/// How long `--browser` waits for the redirect unless told otherwise.
pub const DEFAULT_BROWSER_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// Transient endpoint failures in a row that a device code poll rides out.
const MAX_TRANSIENT_FAILURES: u32 = 5;

/// Longest back-off between polls after transient failures (RFC 8628 §3.5).
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Longest request head the loopback listener reads; a redirect with a code is ~2 KiB.
const MAX_REQUEST_HEAD: usize = 16 * 1024;

/// How long a browser connection may take to send its request (browsers open spare
/// connections that never send one).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long answering the browser may take.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections the loopback listener reads at once; more are closed at once.
const MAX_CONNECTIONS: usize = 16;

/// Which way the admin signs in; it decides the hints in messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    DeviceCode,
    Browser,
    Paste,
}

/// Why a sign-in did not produce a token worth storing. Every message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    #[error(
        "the sign-in code expired before the sign-in was finished (expired_token); run the \
         command again and finish the sign-in in time"
    )]
    Expired,
    #[error("the sign-in was declined (authorization_declined); run the command again")]
    Declined,
    #[error(
        "Entra did not recognise the device code (bad_verification_code); run the command again"
    )]
    BadVerificationCode,
    #[error("no sign-in came back within {}; run the command again", duration_words(*.0))]
    TimedOut(Duration),
    #[error(
        "the redirect does not carry the `state` of this sign-in (a stale or forged address); \
         nothing was stored; run the command again and open the address it prints"
    )]
    StateMismatch,
    #[error("the sign-in failed: {error}: {description}")]
    Denied { error: String, description: String },
    #[error(
        "the address has no authorization code (`code=`); paste the whole address the browser \
         ended on"
    )]
    NoCode,
    #[error(
        "{signed_in} signed in, but {expected} was expected; nothing was stored. To sign in as \
         {expected}, sign out of Microsoft 365 in the browser first or use a private \
         window{}", wrong_user_hint(*.method, expected)
    )]
    WrongUser {
        signed_in: String,
        expected: String,
        method: Method,
    },
    #[error("Entra returned no id_token, so who signed in cannot be checked; nothing was stored")]
    NoIdToken,
    #[error("the id_token cannot be read: {0}; nothing was stored")]
    BadIdToken(&'static str),
    #[error("Entra returned no refresh token (was offline_access granted?); nothing was stored")]
    NoRefreshToken,
    #[error("{error}{}", hint.map(|h| format!("\nhint: {h}")).unwrap_or_default())]
    Idp {
        error: IdpError,
        hint: Option<&'static str>,
    },
    #[error("the loopback listener for the browser's redirect: {0}")]
    Listener(io::Error),
}

/// Wraps an endpoint failure of a sign-in by `method`, with a hint when Entra's answer
/// points at the app registration.
pub fn idp_error(error: IdpError, method: Method) -> FlowError {
    let public_client_flows = matches!(
        &error,
        IdpError::Rejected { error, codes, .. }
            if error == "unauthorized_client" || codes.contains(&7_000_218)
    );
    let hint = public_client_flows.then_some(match method {
        Method::DeviceCode => {
            "the device code sign-in needs \"Allow public client flows\" turned on for the app \
             registration (Entra admin center: App registrations > the app > Authentication > \
             Advanced settings); or sign in with --browser or --paste"
        }
        Method::Browser | Method::Paste => {
            "a public client needs \"Allow public client flows\" turned on for the app \
             registration and its redirect URI under \"Mobile and desktop applications\" \
             (http://localhost for --browser, \
             https://login.microsoftonline.com/common/oauth2/nativeclient for --paste); a \
             confidential client needs its client secret in the mailbox registration"
        }
    });
    FlowError::Idp { error, hint }
}

fn wrong_user_hint(method: Method, expected: &str) -> String {
    match method {
        Method::DeviceCode => {
            "; or sign in with --browser, which fills in the account (login_hint)".to_owned()
        }
        Method::Browser | Method::Paste => {
            format!("; the sign-in page is filled in with {expected} (login_hint): keep it")
        }
    }
}

// === device code ===

/// Polls for the tokens of a device code sign-in until the user finishes it, declines it,
/// or the code expires (RFC 8628 §3.4, §3.5). `poll` makes one token request, e.g.
/// [`TokenEndpoint::poll_device_code`](super::endpoint::TokenEndpoint::poll_device_code).
///
/// It waits `interval` before each poll; `authorization_pending` polls again, `slow_down`
/// adds [`SLOW_DOWN_STEP`] to the interval for good, and a transient failure of the
/// endpoint backs off exponentially (a few times in a row at most).
pub async fn wait_for_device_sign_in<P, F>(
    device: &DeviceAuthorization,
    mut poll: P,
) -> Result<TokenGrant, FlowError>
where
    P: FnMut() -> F,
    F: Future<Output = Result<TokenGrant, IdpError>>,
{
    let deadline = Instant::now() + device.expires_in;
    let mut interval = device.interval.max(MIN_POLL_INTERVAL);
    let mut wait = interval;
    let mut failures = 0;
    loop {
        let next = Instant::now() + wait;
        if next > deadline {
            sleep_until(deadline).await;
            return Err(FlowError::Expired);
        }
        sleep_until(next).await;
        let error = match poll().await {
            Ok(grant) => return Ok(grant),
            Err(e) => e,
        };
        match &error {
            IdpError::Rejected { error: code, .. } => match code.as_str() {
                "authorization_pending" => {}
                "slow_down" => interval += SLOW_DOWN_STEP,
                "expired_token" | "code_expired" => return Err(FlowError::Expired),
                "authorization_declined" | "access_denied" => return Err(FlowError::Declined),
                "bad_verification_code" => return Err(FlowError::BadVerificationCode),
                _ => return Err(idp_error(error, Method::DeviceCode)),
            },
            IdpError::Unavailable { retry_after, .. } if failures < MAX_TRANSIENT_FAILURES => {
                failures += 1;
                let backoff = interval.saturating_mul(1 << failures).min(MAX_BACKOFF);
                wait = backoff.max(retry_after.unwrap_or_default());
                tracing::debug!(error = %error, wait = ?wait, "device code poll failed; backing off");
                continue;
            }
            IdpError::Unavailable { .. } | IdpError::Malformed(_) => {
                return Err(idp_error(error, Method::DeviceCode));
            }
        }
        failures = 0;
        wait = interval;
    }
}

// === the browser's redirect ===

/// The listener on `127.0.0.1` that the browser is redirected to after a `--browser`
/// sign-in, as `http://localhost:PORT/` (RFC 8252 §7.3; Entra ignores the port of a
/// `localhost` redirect URI).
#[derive(Debug)]
pub struct Loopback {
    listener: TcpListener,
    port: u16,
}

impl Loopback {
    /// Binds `127.0.0.1:port`; port 0 takes any free port.
    pub async fn bind(port: u16) -> Result<Self, FlowError> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port))
            .await
            .map_err(FlowError::Listener)?;
        let port = listener.local_addr().map_err(FlowError::Listener)?.port();
        Ok(Self { listener, port })
    }

    /// The redirect URI to send in the authorization request.
    pub fn redirect_uri(&self) -> String {
        format!("http://localhost:{}/", self.port)
    }

    /// Waits up to `limit` for the browser to bring back the answer to `request`, answers it
    /// with a short page, and returns the authorization code. Requests for other paths
    /// (`/favicon.ico`) get a 404 and do not end the wait; neither does a `GET /` without
    /// `code` or `error`.
    pub async fn wait(
        self,
        request: &AuthorizationRequest,
        limit: Duration,
    ) -> Result<String, FlowError> {
        let deadline = tokio::time::sleep(limit);
        tokio::pin!(deadline);
        let mut reading = JoinSet::new();
        loop {
            tokio::select! {
                () = &mut deadline => return Err(FlowError::TimedOut(limit)),
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) if reading.len() < MAX_CONNECTIONS => {
                        reading.spawn(read_target(stream));
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!(error = %e, "loopback accept failed"),
                },
                Some(Ok((stream, target))) = reading.join_next() => {
                    match answer(request, target.as_deref()) {
                        Reply::Continue(status, text) => respond(stream, status, &text).await,
                        Reply::Done(result) => {
                            let (status, text) = match &result {
                                Ok(_) => (200, "Signed in; you can close this window and \
                                                return to the terminal.".to_owned()),
                                Err(e) => (400, format!("Sign-in failed: {e}")),
                            };
                            respond(stream, status, &text).await;
                            return result;
                        }
                    }
                }
            }
        }
    }
}

/// What to do with one request to the loopback listener.
enum Reply {
    /// Answer with this status and text, and keep waiting.
    Continue(u16, String),
    /// Answer, and the wait is over.
    Done(Result<String, FlowError>),
}

fn answer(request: &AuthorizationRequest, target: Option<&str>) -> Reply {
    let Some(target) = target else {
        return Reply::Continue(400, "Bad request.".into());
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path != "/" {
        return Reply::Continue(404, "Not found.".into());
    }
    if !has_answer(query) {
        return Reply::Continue(
            400,
            "This address only receives the answer of the Microsoft sign-in.".into(),
        );
    }
    Reply::Done(code_from_query(request, query))
}

/// Reads one request head and returns its target, when it is a `GET`.
async fn read_target(mut stream: TcpStream) -> (TcpStream, Option<String>) {
    let mut head = Vec::new();
    let read = timeout(REQUEST_TIMEOUT, async {
        let mut chunk = [0u8; 2048];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST_HEAD {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&chunk[..n]);
        }
        io::Result::Ok(())
    })
    .await;
    if !matches!(read, Ok(Ok(()))) {
        return (stream, None);
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.trim_end().split(' ');
    let target = match (parts.next(), parts.next(), parts.next()) {
        (Some("GET"), Some(target), Some(version)) if version.starts_with("HTTP/1.") => {
            Some(target.to_owned())
        }
        _ => None,
    };
    (stream, target)
}

/// Answers the browser with a small HTML page saying `text`; failures are ignored (the
/// browser may be gone).
async fn respond(mut stream: TcpStream, status: u16, text: &str) {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        _ => "Bad Request",
    };
    let body = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>m365-relay</title></head>\
         <body><p>{}</p></body></html>\n",
        html_escape(text)
    );
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/html; charset=utf-8\r\n\
         Content-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = timeout(RESPONSE_TIMEOUT, async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

// === the pasted address ===

/// The authorization code in the address the browser ended on after a `--paste` sign-in
/// (`…/nativeclient?code=…&state=…`). A bare query (`code=…&state=…`) will do too.
pub fn code_from_pasted(request: &AuthorizationRequest, pasted: &str) -> Result<String, FlowError> {
    let text = pasted.trim();
    let query = match Url::parse(text) {
        Ok(url) => url
            .query()
            .or(url.fragment())
            .unwrap_or_default()
            .to_owned(),
        Err(_) => text
            .split_once('?')
            .map_or(text, |(_, query)| query)
            .trim_start_matches('#')
            .to_owned(),
    };
    if !has_answer(&query) {
        return Err(FlowError::NoCode);
    }
    code_from_query(request, &query)
}

/// Whether a redirect's query carries an answer: a `code` or an `error`.
fn has_answer(query: &str) -> bool {
    url::form_urlencoded::parse(query.as_bytes()).any(|(k, _)| k == "code" || k == "error")
}

/// Reads an authorization response (RFC 6749 §4.1.2): the `state` must be ours; then an
/// `error` (with Entra's `error_description`) or the `code`.
fn code_from_query(request: &AuthorizationRequest, query: &str) -> Result<String, FlowError> {
    let mut fields: HashMap<String, String> = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        fields
            .entry(k.into_owned())
            .or_insert_with(|| v.into_owned());
    }
    if !fields
        .get("state")
        .is_some_and(|state| request.state_matches(state))
    {
        return Err(FlowError::StateMismatch);
    }
    if let Some(error) = fields.get("error") {
        let description = fields.get("error_description").map_or("", String::as_str);
        return Err(FlowError::Denied {
            error: clean(error),
            description: clean(description),
        });
    }
    match fields.remove("code") {
        Some(code) if !code.is_empty() => Ok(code),
        _ => Err(FlowError::NoCode),
    }
}

// === who signed in ===

/// The claims of an id_token that say who signed in and for which app.
#[derive(Deserialize)]
struct Claims {
    aud: Option<Audience>,
    preferred_username: Option<String>,
    upn: Option<String>,
    email: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

/// The user the grant's id_token names: its `preferred_username`, else `upn`, else `email`.
/// The id_token must be for `client_id` (its `aud`).
///
/// The signature is not checked. OpenID Connect Core 1.0 §3.1.3.7 (item 6) allows that
/// when the id_token comes straight from the token endpoint over TLS, as it does here: the
/// TLS server validation of the authority stands in for it. (A plain-http authority is
/// accepted only on a loopback address, for tests.)
pub fn signed_in_user(grant: &TokenGrant, client_id: &str) -> Result<String, FlowError> {
    let token = grant.id_token.as_deref().ok_or(FlowError::NoIdToken)?;
    let payload = token
        .split('.')
        .nth(1)
        .filter(|p| !p.is_empty())
        .ok_or(FlowError::BadIdToken("it is not a JWT"))?;
    let json = URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| FlowError::BadIdToken("its payload is not base64url"))?;
    let claims: Claims = serde_json::from_slice(&json)
        .map_err(|_| FlowError::BadIdToken("its payload is not a JSON object of claims"))?;
    let for_us = match &claims.aud {
        Some(Audience::One(aud)) => aud.eq_ignore_ascii_case(client_id),
        Some(Audience::Many(auds)) => auds.iter().any(|a| a.eq_ignore_ascii_case(client_id)),
        None => false,
    };
    if !for_us {
        return Err(FlowError::BadIdToken(
            "it was issued for another application (aud)",
        ));
    }
    [claims.preferred_username, claims.upn, claims.email]
        .into_iter()
        .flatten()
        .map(|name| clean(name.trim()))
        .find(|name| !name.is_empty())
        .ok_or(FlowError::BadIdToken(
            "it names no user (preferred_username, upn or email)",
        ))
}

/// Checks that `expected` (compared without regard to case) signed in; returns the user
/// as the id_token spells it. See [`signed_in_user`].
pub fn check_identity(
    grant: &TokenGrant,
    client_id: &str,
    expected: &str,
    method: Method,
) -> Result<String, FlowError> {
    let user = signed_in_user(grant, client_id)?;
    if user.eq_ignore_ascii_case(expected) {
        Ok(user)
    } else {
        Err(FlowError::WrongUser {
            signed_in: user,
            expected: expected.to_owned(),
            method,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};
    use std::time::SystemTime;

    use super::*;
    use crate::oauth::SIGN_IN_SCOPES;
    use crate::oauth::endpoint::{App, TokenEndpoint};
    use crate::secret::AccessToken;

    const CLIENT_ID: &str = "6731de76-14a6-49ae-97bc-6eba6914391e";
    const ALICE: &str = "alice@contoso.com";

    fn grant(id_token: Option<String>) -> TokenGrant {
        TokenGrant {
            access_token: AccessToken::new("at"),
            expires_at: SystemTime::now() + Duration::from_secs(3600),
            refresh_token: None,
            scope: String::new(),
            id_token,
        }
    }

    fn jwt(claims: serde_json::Value) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"RS256"}"#);
        let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
        format!("{header}.{payload}.c2ln")
    }

    fn rejected(error: &str) -> IdpError {
        IdpError::Rejected {
            status: 400,
            error: error.into(),
            description: format!("{error} described"),
            codes: Vec::new(),
        }
    }

    fn unavailable() -> IdpError {
        IdpError::Unavailable {
            reason: "HTTP 503".into(),
            retry_after: None,
        }
    }

    /// Runs the device code wait with paused time against scripted poll answers (`None`
    /// is success); returns its result and when (since the start) each poll happened.
    async fn device_wait(
        expires_in: u64,
        interval: u64,
        answers: Vec<Option<IdpError>>,
    ) -> (Result<TokenGrant, FlowError>, Vec<u64>) {
        let device = DeviceAuthorization::for_tests(
            Duration::from_secs(expires_in),
            Duration::from_secs(interval),
        );
        let start = Instant::now();
        let script = Arc::new(Mutex::new(VecDeque::from(answers)));
        let polled = Arc::new(Mutex::new(Vec::new()));
        let result = wait_for_device_sign_in(&device, || {
            let (script, polled) = (script.clone(), polled.clone());
            async move {
                polled.lock().unwrap().push(start.elapsed().as_secs());
                match script.lock().unwrap().pop_front() {
                    Some(None) => Ok(grant(None)),
                    Some(Some(e)) => Err(e),
                    None => Err(rejected("authorization_pending")),
                }
            }
        })
        .await;
        let polled = polled.lock().unwrap().clone();
        (result, polled)
    }

    #[tokio::test(start_paused = true)]
    async fn device_code_polls_at_the_interval_until_signed_in() {
        let pending = || Some(rejected("authorization_pending"));
        let (result, polls) = device_wait(900, 5, vec![pending(), pending(), None]).await;
        assert!(result.is_ok());
        assert_eq!(polls, [5, 10, 15]);
    }

    #[tokio::test(start_paused = true)]
    async fn slow_down_adds_five_seconds_for_good() {
        let answers = vec![
            Some(rejected("slow_down")),
            Some(rejected("authorization_pending")),
            Some(rejected("slow_down")),
            None,
        ];
        let (result, polls) = device_wait(900, 5, answers).await;
        assert!(result.is_ok());
        assert_eq!(polls, [5, 15, 25, 40]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_tiny_interval_is_raised_to_one_second() {
        let (result, polls) = device_wait(900, 0, vec![None]).await;
        assert!(result.is_ok());
        assert_eq!(polls, [1]);
    }

    #[tokio::test(start_paused = true)]
    async fn final_answers_end_the_wait() {
        for (error, expected) in [
            ("expired_token", "expired"),
            ("authorization_declined", "declined"),
            ("bad_verification_code", "did not recognise"),
        ] {
            let (result, polls) = device_wait(900, 5, vec![Some(rejected(error))]).await;
            let e = result.unwrap_err().to_string();
            assert!(e.contains(expected), "{error}: {e}");
            assert_eq!(polls, [5]);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_code_expires_when_nobody_signs_in() {
        let start = Instant::now();
        let (result, polls) = device_wait(12, 5, Vec::new()).await;
        assert!(matches!(result, Err(FlowError::Expired)), "{result:?}");
        assert_eq!(polls, [5, 10]);
        assert_eq!(start.elapsed().as_secs(), 12);
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_back_off_then_give_up() {
        let answers = vec![Some(unavailable()), Some(unavailable()), None];
        let (result, polls) = device_wait(900, 5, answers).await;
        assert!(result.is_ok());
        assert_eq!(polls, [5, 15, 35]);

        let answers = (0..=MAX_TRANSIENT_FAILURES)
            .map(|_| Some(unavailable()))
            .collect();
        let (result, polls) = device_wait(3600, 5, answers).await;
        assert!(
            matches!(
                result,
                Err(FlowError::Idp {
                    error: IdpError::Unavailable { .. },
                    ..
                })
            ),
            "{result:?}"
        );
        assert_eq!(polls, [5, 15, 35, 75, 135, 195]);
    }

    #[tokio::test(start_paused = true)]
    async fn public_client_flows_off_gets_a_hint() {
        let off = IdpError::Rejected {
            status: 401,
            error: "invalid_client".into(),
            description: "AADSTS7000218: The request body must contain the following \
                          parameter: 'client_assertion' or 'client_secret'."
                .into(),
            codes: vec![7_000_218],
        };
        let (result, _) = device_wait(900, 5, vec![Some(off)]).await;
        let e = result.unwrap_err().to_string();
        assert!(
            e.starts_with("invalid_client (HTTP 401): AADSTS7000218"),
            "{e}"
        );
        assert!(e.contains("\nhint: the device code sign-in needs \"Allow public client flows\""));

        let e = idp_error(rejected("unauthorized_client"), Method::Browser).to_string();
        assert!(e.contains("\"Mobile and desktop applications\""), "{e}");
        let e = idp_error(rejected("invalid_grant"), Method::Paste).to_string();
        assert!(!e.contains("hint"), "{e}");
    }

    /// A sign-in request like `--paste` makes, and the `state` it sent.
    fn paste_request() -> (AuthorizationRequest, String) {
        let tls = crate::tls::client_config(None).unwrap();
        let endpoint = TokenEndpoint::new(
            "https://login.microsoftonline.com",
            tls,
            Duration::from_secs(1),
        )
        .unwrap();
        let app = App::public("contoso.onmicrosoft.com", CLIENT_ID);
        let redirect = endpoint.native_client_redirect_uri(app.cloud);
        let request = endpoint
            .authorization_request(&app, SIGN_IN_SCOPES, &redirect, ALICE)
            .unwrap();
        let state = request
            .url()
            .query_pairs()
            .find(|(k, _)| k == "state")
            .map(|(_, v)| v.into_owned())
            .unwrap();
        (request, state)
    }

    #[test]
    fn the_code_is_taken_from_a_pasted_address_with_our_state() {
        let (request, state) = paste_request();
        let native = "https://login.microsoftonline.com/common/oauth2/nativeclient";
        for pasted in [
            format!("{native}?code=1.AQ-code&state={state}&session_state=x\n"),
            format!("  code=1.AQ-code&state={state}  "),
            format!("?state={state}&code=1.AQ-code"),
            format!("{native}#code=1.AQ-code&state={state}"),
        ] {
            assert_eq!(
                code_from_pasted(&request, &pasted).unwrap(),
                "1.AQ-code",
                "{pasted}"
            );
        }
        for (pasted, expected) in [
            (format!("{native}?code=c&state=forged"), "`state`"),
            (format!("{native}?code=c"), "`state`"),
            (format!("{native}?state={state}"), "no authorization code"),
            ("hello".to_owned(), "no authorization code"),
            (String::new(), "no authorization code"),
        ] {
            let e = code_from_pasted(&request, &pasted).unwrap_err().to_string();
            assert!(e.contains(expected), "{pasted}: {e}");
        }
    }

    #[test]
    fn an_error_redirect_is_shown_cleaned() {
        let (request, state) = paste_request();
        let pasted = format!(
            "https://login.microsoftonline.com/common/oauth2/nativeclient?error=access_denied&\
             error_description=AADSTS65004%3A+User+declined.%0D%0A%1B%5B31mTrace&state={state}"
        );
        let e = code_from_pasted(&request, &pasted).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the sign-in failed: access_denied: AADSTS65004: User declined.   [31mTrace"
        );
    }

    /// Sends `request` (raw) to the loopback listener and returns the answer.
    async fn browse(port: u16, request: &str) -> String {
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .await
            .unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    }

    #[tokio::test]
    async fn the_loopback_listener_takes_the_code_and_answers_the_browser() {
        let (request, state) = paste_request();
        let loopback = Loopback::bind(0).await.unwrap();
        let port = loopback.port;
        assert_eq!(loopback.redirect_uri(), format!("http://localhost:{port}/"));
        let waiting =
            tokio::spawn(async move { loopback.wait(&request, Duration::from_secs(10)).await });

        // A spare connection that never sends anything does not hold up the others.
        let _idle = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .await
            .unwrap();
        let icon = browse(port, "GET /favicon.ico HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(icon.starts_with("HTTP/1.1 404 Not Found\r\n"), "{icon}");
        let bare = browse(port, "GET / HTTP/1.1\r\n\r\n").await;
        assert!(bare.starts_with("HTTP/1.1 400 "), "{bare}");
        let post = browse(port, "POST /?code=c HTTP/1.1\r\n\r\n").await;
        assert!(post.starts_with("HTTP/1.1 400 "), "{post}");
        assert!(!waiting.is_finished());

        let ok = browse(
            port,
            &format!("GET /?code=the-code&state={state}&session_state=s HTTP/1.1\r\n\r\n"),
        )
        .await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains("Content-Type: text/html; charset=utf-8\r\n"),
            "{ok}"
        );
        assert!(
            ok.contains("<p>Signed in; you can close this window"),
            "{ok}"
        );
        assert_eq!(waiting.await.unwrap().unwrap(), "the-code");
    }

    #[tokio::test]
    async fn the_loopback_listener_shows_an_error_and_gives_up_in_time() {
        let (request, state) = paste_request();
        let loopback = Loopback::bind(0).await.unwrap();
        let port = loopback.port;
        let waiting =
            tokio::spawn(async move { loopback.wait(&request, Duration::from_secs(10)).await });
        let page = browse(
            port,
            &format!(
                "GET /?error=access_denied&error_description=%3Cb%3Eno%3C%2Fb%3E&state={state} \
                 HTTP/1.1\r\n\r\n"
            ),
        )
        .await;
        assert!(page.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{page}");
        assert!(
            page.contains("access_denied: &lt;b&gt;no&lt;/b&gt;"),
            "{page}"
        );
        let e = waiting.await.unwrap().unwrap_err();
        assert!(matches!(e, FlowError::Denied { .. }), "{e:?}");

        let (request, _) = paste_request();
        let loopback = Loopback::bind(0).await.unwrap();
        let e = loopback
            .wait(&request, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "no sign-in came back within 0 seconds; run the command again"
        );
    }

    #[test]
    fn the_id_token_names_who_signed_in() {
        let with = |claims: serde_json::Value| grant(Some(jwt(claims)));
        let signed_in = |g: &TokenGrant| signed_in_user(g, CLIENT_ID);

        let g = with(
            serde_json::json!({"aud": CLIENT_ID, "preferred_username": "Alice@Contoso.com",
            "upn": "other@contoso.com", "name": "Alice"}),
        );
        assert_eq!(signed_in(&g).unwrap(), "Alice@Contoso.com");
        assert_eq!(
            check_identity(&g, CLIENT_ID, ALICE, Method::DeviceCode).unwrap(),
            "Alice@Contoso.com"
        );
        let g =
            with(serde_json::json!({"aud": [CLIENT_ID.to_uppercase()], "upn": "bob@contoso.com"}));
        assert_eq!(signed_in(&g).unwrap(), "bob@contoso.com");
        let g = with(
            serde_json::json!({"aud": CLIENT_ID, "preferred_username": " ", "email": "c@d.ef"}),
        );
        assert_eq!(signed_in(&g).unwrap(), "c@d.ef");

        let e = check_identity(
            &with(
                serde_json::json!({"aud": CLIENT_ID, "preferred_username": "mallory@contoso.com"}),
            ),
            CLIENT_ID,
            ALICE,
            Method::DeviceCode,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with(
                "mallory@contoso.com signed in, but alice@contoso.com was expected; \
            nothing was stored. To sign in as alice@contoso.com, sign out"
            ),
            "{e}"
        );
        assert!(
            e.ends_with("or sign in with --browser, which fills in the account (login_hint)"),
            "{e}"
        );

        for (g, expected) in [
            (grant(None), "no id_token"),
            (grant(Some("not-a-jwt".into())), "not a JWT"),
            (grant(Some("a.!!!.c".into())), "base64url"),
            (
                grant(Some(format!("a.{}.c", URL_SAFE_NO_PAD.encode("[1]")))),
                "JSON object",
            ),
            (
                with(serde_json::json!({"aud": "someone-else", "preferred_username": ALICE})),
                "another application",
            ),
            (
                with(serde_json::json!({"preferred_username": ALICE})),
                "another application",
            ),
            (
                with(serde_json::json!({"aud": CLIENT_ID, "name": "Alice"})),
                "names no user",
            ),
        ] {
            let e = signed_in(&g).unwrap_err().to_string();
            assert!(e.contains(expected), "{expected}: {e}");
        }
    }
}
