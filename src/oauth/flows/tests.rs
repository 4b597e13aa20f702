//! The sign-in flows: the device code wait on paused time, the loopback listener with a
//! real HTTP client, pasted addresses, and the id_token check.

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::device::MAX_TRANSIENT_FAILURES;
use super::*;
use crate::oauth::SIGN_IN_SCOPES;
use crate::oauth::endpoint::{App, TokenEndpoint};
use crate::oauth::endpoint::{AuthorizationRequest, DeviceAuthorization};
use crate::oauth::{IdpError, TokenGrant};
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
    let g = with(serde_json::json!({"aud": [CLIENT_ID.to_uppercase()], "upn": "bob@contoso.com"}));
    assert_eq!(signed_in(&g).unwrap(), "bob@contoso.com");
    let g =
        with(serde_json::json!({"aud": CLIENT_ID, "preferred_username": " ", "email": "c@d.ef"}));
    assert_eq!(signed_in(&g).unwrap(), "c@d.ef");

    let e = check_identity(
        &with(serde_json::json!({"aud": CLIENT_ID, "preferred_username": "mallory@contoso.com"})),
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
