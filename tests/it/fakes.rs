//! Self-tests of the Microsoft fakes in `support/`, independent of the relay.

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE};
use serde_json::Value;

use crate::support::certs::TestPki;
use crate::support::fake_entra::FakeEntra;
use crate::support::fake_server::AuthAttempt;
use crate::support::fake_smtp::FakeSmtp;
use crate::support::fixture::{CLIENT, TENANT, UPN};
use crate::support::line_client::LineClient;
use crate::support::tasks::TaskWatch;

const SCOPES: &str = "https://outlook.office.com/SMTP.Send https://outlook.office.com/IMAP.AccessAsUser.All offline_access";

async fn refresh(entra: &FakeEntra, extra: &[(&str, &str)]) -> (u16, Option<String>, Value) {
    let mut form = vec![
        ("grant_type", "refresh_token"),
        ("client_id", CLIENT),
        ("scope", SCOPES),
    ];
    for &(key, value) in extra {
        form.retain(|(k, _)| *k != key);
        form.push((key, value));
    }
    let response = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("reqwest client")
        .post(entra.token_url(TENANT))
        .form(&form)
        .send()
        .await
        .expect("POST token endpoint");
    let status = response.status().as_u16();
    let cache = response
        .headers()
        .get("cache-control")
        .map(|v| v.to_str().expect("ascii header").to_string());
    let text = response.text().await.expect("body");
    (
        status,
        cache,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

pub(crate) use crate::harness::xoauth2_b64 as xoauth2;

/// XOAUTH2 payloads that break its format, with the reason every mail fake records (they
/// share one parser, `fake_server::parse_xoauth2`).
pub(crate) fn malformed_xoauth2(token: &str) -> Vec<(String, &'static str)> {
    vec![
        (
            STANDARD.encode(format!("user={UPN}\x01auth=Bearer {token}")),
            "two 0x01",
        ),
        (
            STANDARD.encode(format!("user={UPN}\x01auth=Bearer  {token}\x01\x01")),
            "spaces",
        ),
        (
            STANDARD.encode(format!("user={UPN}auth=Bearer {token}\x01\x01")),
            "missing 0x01",
        ),
        (
            STANDARD.encode(format!("user={UPN}\x01auth=bearer {token}\x01\x01")),
            "auth=Bearer",
        ),
        (
            STANDARD_NO_PAD.encode(b"user=ab\x01auth=Bearer b\x01\x01"),
            "base64",
        ),
        (
            URL_SAFE.encode(b"user=\xff\xff\xff@x\x01auth=Bearer t\x01\x01"),
            "base64",
        ),
    ]
}

/// The payloads of [`malformed_xoauth2`], and well-formed ones a mail fake whose tokens need
/// `scope` must refuse: for mailboxes the user may not open (another user's, `shared` without
/// a grant), with an unknown token, a token without `scope`, and a revoked one.
pub(crate) fn refused_xoauth2(
    entra: &FakeEntra,
    token: &str,
    scope: &str,
    shared: &str,
) -> Vec<(String, String)> {
    let smtp_only = entra.mint_access_token(TENANT, CLIENT, UPN, &["SMTP.Send"]);
    let revoked = entra.mint_access_token(TENANT, CLIENT, UPN, &[scope]);
    entra.revoke_access_token(&revoked);
    let refused = [
        (xoauth2("bob@contoso.com", token), "may not open mailbox"),
        (xoauth2(shared, token), "may not open mailbox"),
        (xoauth2(UPN, "not-a-token"), "unknown access token"),
        (xoauth2(UPN, &revoked), "revoked"),
    ];
    let refused = malformed_xoauth2(token).into_iter().chain(refused);
    let mut cases: Vec<_> = refused.map(|(p, why)| (p, why.to_string())).collect();
    cases.push((xoauth2(UPN, &smtp_only), format!("lacks {scope}")));
    cases
}

/// Asserts that the fake refused each of `attempts` for the reason of the case at its
/// place, with the payload sent as SASL initial response if `initial_response` says so.
pub(crate) fn assert_refused(
    attempts: &[AuthAttempt],
    cases: &[(String, impl AsRef<str>)],
    initial_response: Option<bool>,
) {
    assert_eq!(attempts.len(), cases.len());
    for (attempt, (_, reason)) in attempts.iter().zip(cases) {
        let reason = reason.as_ref();
        let rejection = attempt.rejection.as_deref().unwrap_or_default();
        assert!(
            !attempt.accepted
                && initial_response.is_none_or(|want| attempt.initial_response == want)
                && rejection.contains(reason),
            "want {reason:?}: {attempt:#?}"
        );
    }
}

#[tokio::test]
async fn entra_refresh_rotates_and_answers_like_entra() {
    let entra = FakeEntra::start().await;
    entra.add_app(TENANT, CLIENT, None);
    let first = entra.add_user(TENANT, CLIENT, UPN);

    let (status, cache, body) = refresh(&entra, &[("refresh_token", &first)]).await;
    assert_eq!(status, 200, "{body}");
    assert!(cache.is_some_and(|c| c.contains("no-store")));
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(
        body["scope"],
        "https://outlook.office.com/SMTP.Send https://outlook.office.com/IMAP.AccessAsUser.All"
    );
    assert_eq!(body["expires_in"], 3599);
    assert_eq!(body["ext_expires_in"], 3599);
    let access = body["access_token"].as_str().expect("access_token");
    let second = body["refresh_token"]
        .as_str()
        .expect("refresh_token")
        .to_string();
    assert_ne!(second, first, "refresh token rotates");
    assert_eq!(entra.validate_access_token(access).as_deref(), Some(UPN));
    assert_eq!(
        entra.latest_refresh_token(TENANT, CLIENT, UPN),
        Some(second.clone())
    );

    // The rotated-away token still works, as at Microsoft, but the use is flagged as stale.
    entra.set_expires_in(4000);
    let (status, _, body) = refresh(&entra, &[("refresh_token", &first)]).await;
    assert_eq!((status, body["expires_in"].as_u64()), (200, Some(4000)));
    let requests = entra.requests();
    assert_eq!(entra.token_requests(), 2);
    assert!(!requests[0].stale_refresh_token && requests[1].stale_refresh_token);
    assert_eq!(requests[1].form["refresh_token"], first);
    assert_eq!(requests[1].tenant, TENANT);
    assert_eq!(entra.stale_refresh_token_uses(), 1);

    entra.expire_access_tokens();
    assert_eq!(entra.validate_access_token(access), None);
    let (_, _, body) = refresh(&entra, &[("refresh_token", &second)]).await;
    let newest = body["access_token"]
        .as_str()
        .expect("access_token")
        .to_string();
    assert_eq!(entra.validate_access_token(&newest).as_deref(), Some(UPN));
    entra.revoke_access_token(&newest);
    assert_eq!(entra.validate_access_token(&newest), None);
    entra.check();
}

/// (form fields overriding the defaults, HTTP status, `error`, AADSTS code)
type ErrorCase<'a> = (Vec<(&'a str, &'a str)>, u16, &'a str, u64);

#[tokio::test]
async fn entra_errors_have_entras_shape() {
    let entra = FakeEntra::start().await;
    entra.add_app(TENANT, CLIENT, None);
    entra.add_app(TENANT, "confidential-app", Some("s3cret"));
    let rt = entra.add_user(TENANT, CLIENT, UPN);
    let conf_rt = entra.add_user(TENANT, "confidential-app", UPN);
    let expired = entra.add_user(TENANT, CLIENT, "bob@contoso.com");
    entra.expire_refresh_token(&expired);

    let (rt, conf_rt, expired) = (rt.as_str(), conf_rt.as_str(), expired.as_str());
    let cases: Vec<ErrorCase> = vec![
        (
            vec![("refresh_token", rt), ("client_secret", "x")],
            401,
            "invalid_client",
            700025,
        ),
        (
            vec![
                ("refresh_token", conf_rt),
                ("client_id", "confidential-app"),
            ],
            401,
            "invalid_client",
            7000218,
        ),
        (
            vec![
                ("refresh_token", conf_rt),
                ("client_id", "confidential-app"),
                ("client_secret", "wrong"),
            ],
            401,
            "invalid_client",
            7000215,
        ),
        (
            vec![
                ("refresh_token", rt),
                (
                    "scope",
                    "https://graph.microsoft.com/IMAP.AccessAsUser.All offline_access",
                ),
            ],
            400,
            "invalid_scope",
            70011,
        ),
        (
            vec![("refresh_token", rt), ("scope", "SMTP.Send offline_access")],
            400,
            "invalid_scope",
            70011,
        ),
        (
            vec![("refresh_token", "1.AXEAnot-a-token")],
            400,
            "invalid_grant",
            70000,
        ),
        (
            vec![("refresh_token", expired)],
            400,
            "invalid_grant",
            700082,
        ),
        (
            vec![("refresh_token", rt), ("client_id", "unknown-app")],
            400,
            "unauthorized_client",
            700016,
        ),
    ];
    for (form, want_status, want_error, want_code) in cases {
        let (status, cache, body) = refresh(&entra, &form).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (want_status, Some(want_error)),
            "{form:?}: {body}"
        );
        assert_eq!(body["error_codes"], serde_json::json!([want_code]));
        let description = body["error_description"]
            .as_str()
            .expect("error_description");
        assert!(
            description.starts_with(&format!("AADSTS{want_code}: ")),
            "{description}"
        );
        for part in [
            "\r\nTrace ID: ",
            "\r\nCorrelation ID: ",
            "\r\nTimestamp: 2026-",
        ] {
            assert!(description.contains(part), "{description}");
        }
        assert_eq!(body["trace_id"].as_str().map(str::len), Some(36));
        assert_eq!(body["correlation_id"].as_str().map(str::len), Some(36));
        assert!(body["timestamp"].as_str().is_some());
        assert_eq!(
            body["error_uri"],
            format!("https://login.microsoftonline.com/error?code={want_code}")
        );
        assert!(cache.is_some_and(|c| c.contains("no-store")));
    }
    let (status, _, _) = refresh(
        &entra,
        &[
            ("refresh_token", conf_rt),
            ("client_id", "confidential-app"),
            ("client_secret", "s3cret"),
        ],
    )
    .await;
    assert_eq!(status, 200);
    entra.check();
}

#[tokio::test]
async fn entra_scripted_faults_delay_and_unknown_paths() {
    let entra = FakeEntra::start().await;
    entra.add_app(TENANT, CLIENT, None);
    let rt = entra.add_user(TENANT, CLIENT, UPN);
    entra.push_error(
        503,
        "temporarily_unavailable",
        90033,
        "A transient error has occurred. Please try again.",
    );
    entra.push_response(200, "{not json");

    let (status, _, body) = refresh(&entra, &[("refresh_token", &rt)]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("temporarily_unavailable"))
    );
    let (status, _, body) = refresh(&entra, &[("refresh_token", &rt)]).await;
    assert_eq!((status, body), (200, Value::String("{not json".into())));

    entra.set_delay(Duration::from_millis(200));
    let started = std::time::Instant::now();
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let (entra, rt) = (entra.clone(), rt.clone());
            tokio::spawn(async move { refresh(&entra, &[("refresh_token", &rt)]).await })
        })
        .collect();
    let mut results = Vec::new();
    for call in calls {
        results.push(call.await.expect("refresh task"));
    }
    assert!(results.iter().all(|(status, _, _)| *status == 200));
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(entra.max_concurrent_requests(), 3);
    assert_eq!(entra.token_requests(), 5);

    let url = format!("{}/{TENANT}/oauth2/token", entra.authority());
    let status = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
        .post(url)
        .send()
        .await
        .expect("POST");
    assert_eq!(status.status().as_u16(), 404);
    assert_eq!(
        entra.unmatched_requests(),
        vec![format!("POST /{TENANT}/oauth2/token")]
    );
    entra.check_no_panics();
}

/// Connects, checks the greeting, says EHLO, upgrades with STARTTLS and says EHLO again.
/// AUTH XOAUTH2 as the test user with `token`; the reply.
async fn xoauth2_login(client: &mut LineClient, token: &str) -> String {
    client
        .smtp(&format!("AUTH XOAUTH2 {}", xoauth2(UPN, token)))
        .await
}

/// MAIL FROM `from`, one RCPT TO and DATA in one write; reads their three replies.
async fn pipeline_to_data(client: &mut LineClient, from: &str) {
    let commands = format!("MAIL FROM:<{from}>\r\nRCPT TO:<a@example.net>\r\nDATA\r\n");
    client.send_raw(commands.as_bytes()).await;
    for _ in 0..3 {
        client.read_smtp_reply().await;
    }
}

async fn tls_session(smtp: &FakeSmtp, pki: &TestPki) -> LineClient {
    let mut client = LineClient::connect(smtp.addr()).await;
    assert!(
        client
            .read_smtp_reply()
            .await
            .starts_with("220 BN8PR04CA0000.outlook.office365.com Microsoft ESMTP")
    );
    assert!(
        client
            .smtp("EHLO client.example")
            .await
            .contains("250-STARTTLS")
    );
    assert_eq!(client.smtp("STARTTLS").await, "220 2.0.0 SMTP server ready");
    let mut client = client.upgrade(pki.client_config(), "localhost").await;
    let ehlo = client.smtp("EHLO client.example").await;
    assert!(
        ehlo.contains("250-AUTH LOGIN XOAUTH2") && !ehlo.contains("STARTTLS"),
        "{ehlo}"
    );
    client
}

async fn smtp_world() -> (TestPki, FakeEntra, FakeSmtp, String) {
    let (pki, entra, token) = pki_entra_token("SMTP.Send").await;
    let smtp = FakeSmtp::start(&pki, entra.clone()).await;
    (pki, entra, smtp, token)
}

/// A test PKI, the fake Entra, and an access token of the fixture user with `scope`.
pub(crate) async fn pki_entra_token(scope: &str) -> (TestPki, FakeEntra, String) {
    let pki = TestPki::new();
    let entra = FakeEntra::start().await;
    let token = entra.mint_access_token(TENANT, CLIENT, UPN, &[scope]);
    (pki, entra, token)
}

/// A TLS connection (implicit TLS) to the fake at `addr`, after its `greeting`.
pub(crate) async fn tls_greeted(addr: SocketAddr, pki: &TestPki, greeting: &str) -> LineClient {
    let mut client = LineClient::connect_tls(addr, pki.client_config(), "localhost").await;
    assert_eq!(client.read_line().await.as_deref(), Some(greeting));
    client
}

#[tokio::test]
async fn smtp_submits_a_dot_stuffed_message() {
    let (pki, _entra, smtp, token) = smtp_world().await;
    let mut client = LineClient::connect(smtp.addr()).await;
    client.read_smtp_reply().await;
    let ehlo = client.smtp("EHLO client.example").await;
    assert_eq!(
        ehlo.lines().next(),
        Some("250-BN8PR04CA0000.outlook.office365.com Hello [127.0.0.1]")
    );
    assert!(
        ehlo.contains("250-SIZE 157286400")
            && ehlo.ends_with("250 SMTPUTF8")
            && !ehlo.contains("AUTH")
    );
    assert_eq!(
        xoauth2_login(&mut client, &token).await,
        "504 5.7.4 Unrecognized authentication type"
    );
    assert_eq!(
        client.smtp("MAIL FROM:<alice@contoso.com>").await,
        "530 5.7.57 Client not authenticated to send mail."
    );
    drop(client);

    let mut client = tls_session(&smtp, &pki).await;
    assert_eq!(
        client.smtp("MAIL FROM:<alice@contoso.com>").await,
        "530 5.7.57 Client not authenticated to send mail."
    );
    let auth = format!("AUTH XOAUTH2 {}", xoauth2(UPN, &token));
    assert_eq!(
        client.smtp(&auth).await,
        "235 2.7.0 Authentication successful"
    );
    assert_eq!(
        client
            .smtp("MAIL FROM:<alice@contoso.com> SIZE=100 BODY=8BITMIME")
            .await,
        "250 2.1.0 Sender OK"
    );
    assert_eq!(
        client.smtp("RCPT TO:<bob@example.net>").await,
        "250 2.1.5 Recipient OK"
    );
    assert_eq!(
        client.smtp("DATA").await,
        "354 Start mail input; end with <CRLF>.<CRLF>"
    );
    client
        .send_raw(b"Subject: hi\r\n\r\n..leading dot\r\nplain\r\n.\r\n")
        .await;
    let done = client.read_smtp_reply().await;
    assert!(
        done.starts_with("250 2.0.0 OK <")
            && done.ends_with("[Hostname=BN8PR04MB0000.namprd04.prod.outlook.com]")
    );
    assert_eq!(client.smtp("NOOP").await, "250 2.0.0 OK");
    assert_eq!(client.smtp("RSET").await, "250 2.0.0 Resetting");
    assert_eq!(client.smtp("XYZZY").await, "500 5.3.3 Unrecognized command");
    assert_eq!(
        client.smtp("QUIT").await,
        "221 2.0.0 Service closing transmission channel"
    );
    client.expect_closed().await;

    let messages = smtp.messages();
    assert_eq!(messages.len(), 1);
    assert_eq!(
        messages[0].data,
        b"Subject: hi\r\n\r\n.leading dot\r\nplain\r\n"
    );
    assert_eq!(
        (
            messages[0].authenticated_as.as_str(),
            messages[0].token.as_str()
        ),
        (UPN, token.as_str())
    );
    assert_eq!(
        (messages[0].mail_from.as_str(), messages[0].rcpt_to.clone()),
        ("alice@contoso.com", vec!["bob@example.net".to_string()])
    );
    let attempt = &smtp.auth_attempts()[0];
    assert!(
        attempt.accepted && attempt.initial_response && attempt.raw_decoded.ends_with(b"\x01\x01")
    );
    assert_eq!(smtp.connections(), 2);
    // Also no protocol errors.
    smtp.check();
}

#[tokio::test]
async fn smtp_xoauth2_accepts_only_the_exact_format() {
    let (pki, entra, smtp, token) = smtp_world().await;
    let mut client = tls_session(&smtp, &pki).await;
    let mut cases = malformed_xoauth2(&token);
    cases.extend([
        (
            xoauth2("someone-else@contoso.com", &token),
            "may not open mailbox",
        ),
        (xoauth2(UPN, "not-a-token"), "unknown access token"),
        (
            xoauth2(
                UPN,
                &entra.mint_access_token(TENANT, CLIENT, UPN, &["IMAP.AccessAsUser.All"]),
            ),
            "lacks SMTP.Send",
        ),
    ]);
    for (payload, _) in &cases {
        let reply = client.smtp(&format!("AUTH XOAUTH2 {payload}")).await;
        assert!(
            reply.starts_with("535 5.7.3 Authentication unsuccessful ["),
            "{payload}: {reply}"
        );
    }
    assert_refused(&smtp.auth_attempts(), &cases, None);

    // Two-step form, lower-case mechanism, shared mailbox through a delegate grant.
    smtp.grant_delegate("shared@contoso.com", UPN);
    assert_eq!(client.smtp("auth xoauth2").await, "334 ");
    assert_eq!(
        client.smtp(&xoauth2("shared@contoso.com", &token)).await,
        "235 2.7.0 Authentication successful"
    );
    let last = smtp.auth_attempts().pop().expect("attempt");
    assert!(last.accepted && !last.initial_response && last.user == "shared@contoso.com");
    smtp.check();
}

#[tokio::test]
async fn smtp_error_challenge_and_disabled_tenant() {
    let (pki, _entra, smtp, token) = smtp_world().await;
    smtp.set_error_challenge(true);
    let mut client = tls_session(&smtp, &pki).await;
    let challenge = client
        .smtp(&format!("AUTH XOAUTH2 {}", xoauth2(UPN, "expired")))
        .await;
    let json = STANDARD
        .decode(challenge.strip_prefix("334 ").expect("334 challenge"))
        .expect("base64");
    let json: Value = serde_json::from_slice(&json).expect("json");
    assert_eq!(
        json,
        serde_json::json!({"status":"401","schemes":"bearer","scope":"https://outlook.office.com/SMTP.Send"})
    );
    assert!(client.smtp("").await.starts_with("535 5.7.3 "));

    assert_eq!(
        client.smtp("AUTH PLAIN AGEAYg==").await,
        "504 5.7.4 Unrecognized authentication type"
    );
    assert_eq!(client.smtp("AUTH LOGIN").await, "334 VXNlcm5hbWU6");
    assert_eq!(client.smtp(&STANDARD.encode(UPN)).await, "334 UGFzc3dvcmQ6");
    let reply = client.smtp(&STANDARD.encode("password")).await;
    assert!(
        reply.starts_with(
            "535 5.7.139 Authentication unsuccessful, basic authentication is disabled."
        )
    );
    assert_eq!(
        smtp.auth_attempts().last().map(|a| a.user.clone()),
        Some(UPN.to_string())
    );

    smtp.set_smtp_auth_disabled(true);
    let auth = format!("AUTH XOAUTH2 {}", xoauth2(UPN, &token));
    let challenge = client.smtp(&auth).await;
    assert!(
        challenge.starts_with("334 "),
        "the challenge precedes every failure"
    );
    let disabled = "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.";
    assert!(client.smtp("").await.starts_with(disabled));
    smtp.set_error_challenge(false);
    assert!(client.smtp(&auth).await.starts_with(disabled));
    // Also no protocol errors.
    smtp.check();
}

#[tokio::test]
async fn smtp_pipelining_bdat_and_faults() {
    let (pki, _entra, smtp, token) = smtp_world().await;
    let mut client = tls_session(&smtp, &pki).await;
    xoauth2_login(&mut client, &token).await;
    client
        .send_raw(b"MAIL FROM:<alice@contoso.com>\r\nRCPT TO:<a@example.net>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
        .await;
    for want in ["250 2.1.0", "250 2.1.5", "250 2.1.5", "354 "] {
        assert!(client.read_smtp_reply().await.starts_with(want));
    }
    client.send_raw(b"one\r\n.\r\n").await;
    assert!(client.read_smtp_reply().await.starts_with("250 2.0.0 OK"));

    client.send_raw(b"MAIL FROM:<alice@contoso.com>\r\nRCPT TO:<a@example.net>\r\nBDAT 5\r\nhel\r\nBDAT 3 LAST\r\nlo\n").await;
    for want in ["250 2.1.0", "250 2.1.5", "250 2.0.0 BDAT", "250 2.0.0 OK"] {
        assert!(client.read_smtp_reply().await.starts_with(want));
    }
    smtp.reject_messages_with(
        "554 5.2.252 SendAsDenied; alice@contoso.com not allowed to send as boss@contoso.com",
    );
    pipeline_to_data(&mut client, "boss@contoso.com").await;
    client.send_raw(b"x\r\n.\r\n").await;
    assert!(
        client
            .read_smtp_reply()
            .await
            .starts_with("554 5.2.252 SendAsDenied")
    );
    let data: Vec<_> = smtp.messages().into_iter().map(|m| m.data).collect();
    assert_eq!(data, vec![b"one\r\n".to_vec(), b"hel\r\nlo\n".to_vec()]);

    smtp.set_drop_after_auth(true);
    let mut client = tls_session(&smtp, &pki).await;
    assert!(xoauth2_login(&mut client, &token).await.starts_with("235"));
    client.expect_closed().await;

    smtp.set_drop_after_auth(false);
    smtp.set_drop_in_data(true);
    let mut client = tls_session(&smtp, &pki).await;
    xoauth2_login(&mut client, &token).await;
    pipeline_to_data(&mut client, "alice@contoso.com").await;
    client.send_raw(b"first line\r\n").await;
    client.expect_closed().await;
    assert_eq!(smtp.messages().len(), 2);

    // RFC 3207: plaintext pipelined after STARTTLS is discarded and reported.
    let mut client = LineClient::connect(smtp.addr()).await;
    client.read_smtp_reply().await;
    client.smtp("EHLO client.example").await;
    client.send_raw(b"STARTTLS\r\nEHLO injected\r\n").await;
    assert_eq!(
        client.read_smtp_reply().await,
        "220 2.0.0 SMTP server ready"
    );
    let mut client = client.upgrade(pki.client_config(), "127.0.0.1").await;
    assert!(
        client
            .smtp("EHLO client.example")
            .await
            .contains("AUTH LOGIN XOAUTH2")
    );
    let errors = smtp.protocol_errors();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("pipelined after STARTTLS")),
        "{errors:?}"
    );
    smtp.check_no_panics();
}

#[tokio::test]
#[should_panic(expected = "boom in fake")]
async fn task_watch_reraises_panics() {
    let watch = TaskWatch::new("selftest");
    watch.spawn(async { panic!("boom in fake") });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(watch.failures().len(), 1);
    watch.check();
}
