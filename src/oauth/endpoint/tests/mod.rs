//! The token endpoint client against a one-shot fake endpoint on loopback: what each
//! grant sends, and how every kind of answer is classified. This file holds the fake and
//! the shared answers; the tests are in `answers` (refresh answers, the network, URLs),
//! `sign_in` (device code and authorization code) and `grants` (clouds, certificates,
//! client credentials).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rustls::RootCertStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::errors::MAX_ERROR_TEXT;
use super::grant::DEVICE_CODE_GRANT;
use super::*;
use crate::cloud::Cloud;
use crate::mailbox::Credential;
use crate::oauth::assertion::JWT_BEARER;
use crate::oauth::{DELEGATED_SCOPES, SIGN_IN_SCOPES};
use crate::oauth::{IdpError, TokenGrant};
use crate::secret::RefreshToken;
use crate::tls::USER_AGENT;

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

/// A `200` whose `expires_in` is a string holding a secret: serde would quote the value,
/// and no message may.
fn expires_in_of_the_wrong_type() -> Vec<u8> {
    http(
        "200 OK",
        &[],
        &format!(r#"{{"token_type":"Bearer","access_token":"AT-new","expires_in":"{OLD_RT}"}}"#),
    )
}

/// An endpoint at the global default authority (each cloud at its own login host).
fn global_endpoint() -> TokenEndpoint {
    TokenEndpoint::new(
        "https://login.microsoftonline.com/",
        tls(),
        Duration::from_secs(1),
    )
    .unwrap()
}

/// `request` was a POST to the fake tenant's endpoint `name` (`token`, `devicecode`).
fn assert_posted_to(request: &Recorded, name: &str) {
    assert_eq!(
        request.request_line(),
        format!("POST /contoso.onmicrosoft.com/oauth2/v2.0/{name} HTTP/1.1")
    );
}

/// `e` is `Malformed`, mentions `expected`, and shows no secret.
fn assert_malformed(e: &IdpError, expected: &str) {
    assert_no_secret(e);
    assert!(
        matches!(e, IdpError::Malformed(why) if why.contains(expected)),
        "expected Malformed mentioning {expected:?}, got {e:?}"
    );
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

mod answers;
mod grants;
mod sign_in;
