//! SMTP through the relay, as legacy applications use it: real clients (curl, Python's
//! smtplib, lettre) with local passwords; the fake Exchange Online checks the XOAUTH2 login
//! and records the mail.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::harness::{World, assert_succeeded, path_str, run, sample_message};
use crate::support::fake_smtp::ReceivedMessage;

const ALICE: &str = "alice@contoso.com";
const ALICE_PW: &str = "correct horse battery staple";

/// curl with `--ssl-reqd` on the STARTTLS port, AUTH PLAIN.
async fn send_with_curl(
    world: &World,
    user: &str,
    password: &str,
    message: &[u8],
) -> std::process::Output {
    let eml = world.file("message.eml", message);
    let args = vec![
        "--silent".into(),
        "--show-error".into(),
        "--max-time".into(),
        "20".into(),
        "--url".into(),
        format!("smtp://127.0.0.1:{}", world.smtp_port()),
        "--ssl-reqd".into(),
        "--cacert".into(),
        path_str(&world.ca_path),
        "--login-options".into(),
        "AUTH=PLAIN".into(),
        "--user".into(),
        format!("{user}:{password}"),
        "--mail-from".into(),
        user.into(),
        "--mail-rcpt".into(),
        "bob@example.com".into(),
        "--upload-file".into(),
        path_str(&eml),
    ];
    run("curl", args, None).await
}

#[tokio::test]
async fn curl_sends_through_starttls_with_auth_plain() {
    let world = World::started_with(ALICE, ALICE_PW).await;
    let message = sample_message(ALICE, "bob@example.com");
    let out = send_with_curl(&world, ALICE, ALICE_PW, &message).await;
    assert_succeeded("curl", &out);

    let received = the_message_alice_sent(&world);
    assert_eq!(received.mail_from, ALICE);
    assert_eq!(received.rcpt_to, vec!["bob@example.com".to_string()]);
    assert_eq!(received.data, message, "the message arrives byte for byte");
    world.check_fakes();
}

#[tokio::test]
async fn smtplib_sends_over_implicit_tls_with_auth_login() {
    let world = World::started_with(ALICE, ALICE_PW).await;
    let message = sample_message(ALICE, "bob@example.com");
    let eml = world.file("message.eml", &message);
    let script = r#"
import smtplib, ssl, sys
port, ca, user, password, eml = sys.argv[1:]
ctx = ssl.create_default_context(cafile=ca)
with smtplib.SMTP_SSL("127.0.0.1", int(port), context=ctx, timeout=20) as s:
    s.ehlo("legacy-app")
    assert "LOGIN" in s.esmtp_features["auth"].split(), s.esmtp_features
    s.user, s.password = user, password
    code, text = s.auth("LOGIN", s.auth_login, initial_response_ok=False)
    assert code == 235, (code, text)
    with open(eml, "rb") as f:
        refused = s.sendmail(user, ["bob@example.com", "carol@example.com"], f.read())
    assert not refused, refused
print("sent")
"#;
    let args = vec![
        "-c".into(),
        script.into(),
        world.smtps_port().to_string(),
        path_str(&world.ca_path),
        ALICE.into(),
        ALICE_PW.into(),
        path_str(&eml),
    ];
    let out = run("python3", args, None).await;
    assert_succeeded("smtplib", &out);

    let received = the_message_alice_sent(&world);
    assert_eq!(
        received.rcpt_to,
        vec!["bob@example.com", "carol@example.com"]
    );
    assert_eq!(received.data, message);
    world.check_fakes();
}

#[tokio::test]
async fn lettre_sends_through_starttls() {
    use lettre::transport::smtp::authentication::{Credentials, Mechanism};
    use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

    let world = World::started_with(ALICE, ALICE_PW).await;
    let ca = Certificate::from_pem(world.pki.ca_pem().as_bytes()).expect("CA");
    let tls = TlsParameters::builder("127.0.0.1".into())
        .add_root_certificate(ca)
        .build_rustls()
        .expect("tls parameters");
    let mailer = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(world.smtp_port())
        .tls(Tls::Required(tls))
        .credentials(Credentials::new(ALICE.into(), ALICE_PW.into()))
        .authentication(vec![Mechanism::Plain])
        .build();
    let email = Message::builder()
        .from(ALICE.parse().unwrap())
        .to("bob@example.com".parse().unwrap())
        .subject("from lettre")
        .body("Hello from a Rust client\r\n".to_string())
        .unwrap();
    mailer.send(email).await.expect("lettre sends");
    let received = the_message_alice_sent(&world);
    assert!(String::from_utf8_lossy(&received.data).contains("Hello from a Rust client"));
    world.check_fakes();
}

/// The one message upstream received, from a session logged in as alice.
fn the_message_alice_sent(world: &World) -> ReceivedMessage {
    let mut received = world.smtp.messages();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].authenticated_as, ALICE);
    received.remove(0)
}

/// A raw client over implicit TLS, for exact control of what goes on the wire.
struct RawClient {
    reader: BufReader<tokio_rustls::client::TlsStream<TcpStream>>,
}

impl RawClient {
    async fn connect(world: &World) -> RawClient {
        let tls = world.tls_connect(world.smtps_port()).await.unwrap();
        let mut client = RawClient {
            reader: BufReader::new(tls),
        };
        assert!(client.reply().await.starts_with("220 "));
        client
    }

    async fn send(&mut self, bytes: &str) {
        self.reader
            .get_mut()
            .write_all(bytes.as_bytes())
            .await
            .unwrap();
    }

    /// [`RawClient::connect`], past EHLO.
    async fn after_ehlo(world: &World) -> RawClient {
        let mut c = RawClient::connect(world).await;
        c.send("EHLO legacy\r\n").await;
        c.reply().await;
        c
    }

    /// AUTH PLAIN with an initial response; the reply.
    async fn auth_plain(&mut self, user: &str, password: &str) -> String {
        self.send(&format!("AUTH PLAIN {}\r\n", plain(user, password)))
            .await;
        self.reply().await
    }

    /// One whole (multi-line) reply.
    async fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(10), self.reader.read_line(&mut line))
                .await
                .expect("reply in time")
                .unwrap();
            assert!(n > 0, "connection closed; got so far: {all:?}");
            all.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return all;
            }
        }
    }
}

fn plain(user: &str, password: &str) -> String {
    STANDARD.encode(format!("\0{user}\0{password}"))
}

#[tokio::test]
async fn commands_pipelined_behind_auth_reach_upstream() {
    let world = World::started_with(ALICE, ALICE_PW).await;
    let mut c = RawClient::connect(&world).await;
    c.send("EHLO legacy\r\n").await;
    let ehlo = c.reply().await;
    assert!(
        ehlo.contains("250-PIPELINING\r\n") && ehlo.contains("AUTH PLAIN LOGIN"),
        "{ehlo}"
    );
    // Everything in one write, as a pipelining client does.
    c.send(&format!(
        "AUTH PLAIN {}\r\nMAIL FROM:<{ALICE}>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n",
        plain(ALICE, ALICE_PW)
    ))
    .await;
    assert_eq!(c.reply().await, "235 2.7.0 Authentication successful\r\n");
    assert!(c.reply().await.starts_with("250 2.1.0"));
    assert!(c.reply().await.starts_with("250 2.1.5"));
    assert!(c.reply().await.starts_with("354 "));
    c.send("Subject: pipelined\r\n\r\n..dot\r\n.\r\nQUIT\r\n")
        .await;
    assert!(c.reply().await.starts_with("250 2.0.0 OK"));
    assert!(c.reply().await.starts_with("221 "));
    let received = world.smtp.messages();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].data, b"Subject: pipelined\r\n\r\n.dot\r\n");
    world.check_fakes();
}

#[tokio::test]
async fn a_wrong_password_gets_535_and_costs_no_token() {
    let world = World::started_with(ALICE, ALICE_PW).await;
    let mut c = RawClient::after_ehlo(&world).await;
    assert_eq!(
        c.auth_plain(ALICE, "wrong password").await,
        "535 5.7.8 Authentication credentials invalid\r\n"
    );
    assert_eq!(
        c.auth_plain("nobody@contoso.com", ALICE_PW).await,
        "535 5.7.8 Authentication credentials invalid\r\n"
    );
    // The session goes on: the right password still works.
    c.send(&format!("AUTH PLAIN {}\r\n", plain(ALICE, ALICE_PW)))
        .await;
    assert_eq!(c.reply().await, "235 2.7.0 Authentication successful\r\n");
    assert_eq!(world.entra.token_requests(), 1);

    let out = send_with_curl(&world, ALICE, "wrong password", b"Subject: x\r\n\r\nx\r\n").await;
    assert!(!out.status.success());
    assert_eq!(world.smtp.messages().len(), 0);
    world.check_fakes();
}

#[tokio::test]
async fn the_rotated_refresh_token_is_persisted_and_used_after_a_restart() {
    let mut world = World::started_with(ALICE, ALICE_PW).await;
    let first =
        world
            .entra
            .latest_refresh_token(crate::harness::TENANT, crate::harness::CLIENT_ID, ALICE);
    let out = send_with_curl(&world, ALICE, ALICE_PW, b"Subject: 1\r\n\r\none\r\n").await;
    assert_succeeded("curl", &out);
    assert_eq!(world.entra.token_requests(), 1);
    let rotated =
        world
            .entra
            .latest_refresh_token(crate::harness::TENANT, crate::harness::CLIENT_ID, ALICE);
    assert_ne!(first, rotated, "Entra rotated the refresh token");

    // The token file on disk holds the rotated token (sealed: see at_rest.rs).
    let key_file = world.dir.path().join("certs/state.key");
    let key = m365_relay::state::StateKey::load(&key_file).unwrap();
    let stored = m365_relay::state::files::with_key(&world.state_dir(), key)
        .tokens()
        .load(ALICE)
        .unwrap();
    assert_eq!(stored.as_ref().map(|t| t.expose()), rotated.as_deref());

    world.restart().await;
    let out = send_with_curl(&world, ALICE, ALICE_PW, b"Subject: 2\r\n\r\ntwo\r\n").await;
    assert_succeeded("curl", &out);
    assert_eq!(
        world.entra.token_requests(),
        2,
        "a restarted relay has an empty cache"
    );
    let used = &world.entra.requests()[1].form["refresh_token"];
    assert_eq!(
        Some(used),
        rotated.as_ref(),
        "the second refresh used the rotated token"
    );
    assert_eq!(world.entra.stale_refresh_token_uses(), 0);
    world.check_fakes();
}

#[tokio::test]
async fn twenty_concurrent_logins_make_one_token_request() {
    let world = World::started_with(ALICE, ALICE_PW).await;
    world.entra.set_delay(Duration::from_millis(300));
    let logins = (0..20).map(|_| async {
        let mut c = RawClient::after_ehlo(&world).await;
        c.auth_plain(ALICE, ALICE_PW).await
    });
    let replies = futures::future::join_all(logins).await;
    for r in &replies {
        assert_eq!(r, "235 2.7.0 Authentication successful\r\n");
    }
    assert_eq!(world.entra.token_requests(), 1);
    // The logins share the mailbox's pooled upstream connections (at most 3).
    let upstream_logins = world.smtp.auth_attempts().len();
    assert!((1..=3).contains(&upstream_logins), "{upstream_logins}");
    world.check_fakes();
}

#[tokio::test]
async fn a_token_the_upstream_rejects_is_refreshed_once() {
    let world = World::started_with(ALICE, ALICE_PW).await;
    let out = send_with_curl(&world, ALICE, ALICE_PW, b"Subject: 1\r\n\r\none\r\n").await;
    assert!(out.status.success());
    // Exchange stops accepting the cached token (revoked) while the relay still holds it.
    for token in world.entra.issued_access_tokens() {
        world.entra.revoke_access_token(&token);
    }
    // ... and closes the pooled connection, so that the next login dials with that token.
    world.smtp.close_idle_connections();
    while world.smtp.open_connections(ALICE) > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = send_with_curl(&world, ALICE, ALICE_PW, b"Subject: 2\r\n\r\ntwo\r\n").await;
    assert_succeeded("curl", &out);
    assert_eq!(world.entra.token_requests(), 2, "one forced refresh");
    let attempts = world.smtp.auth_attempts();
    assert_eq!(attempts.iter().filter(|a| !a.accepted).count(), 1);
    assert_eq!(world.smtp.messages().len(), 2);
    world.check_fakes();
}

/// Alice sends by SMTP AUTH only (with `auto`, 5.7.139 switches to Graph:
/// tests/it/graph_relay.rs), and Exchange says SMTP AUTH is disabled for the tenant.
async fn smtp_auth_only_and_disabled() -> World {
    let mut world = World::new().await;
    world.add_mailbox(ALICE, ALICE_PW);
    world.admin(&["mailbox", "sending", ALICE, "--smtp-via", "xoauth2"], "");
    world.start().await;
    world.smtp.set_smtp_auth_disabled(true);
    world
}

#[tokio::test]
async fn an_upstream_that_keeps_rejecting_gets_454_and_no_250() {
    let world = smtp_auth_only_and_disabled().await;
    let mut c = RawClient::after_ehlo(&world).await;
    c.send(&format!(
        "AUTH PLAIN {}\r\nMAIL FROM:<{ALICE}>\r\n",
        plain(ALICE, ALICE_PW)
    ))
    .await;
    let reply = c.reply().await;
    assert!(reply.starts_with("454 4.7.0 "), "{reply}");
    // The pipelined MAIL FROM is answered by the relay: authentication required.
    assert!(c.reply().await.starts_with("530 5.7.0"));
    assert_eq!(world.smtp.messages().len(), 0);
    world.check_fakes();
}

#[tokio::test]
async fn an_error_challenge_is_answered_and_mapped() {
    let world = smtp_auth_only_and_disabled().await;
    world.smtp.set_error_challenge(true);
    let mut c = RawClient::after_ehlo(&world).await;
    let reply = c.auth_plain(ALICE, ALICE_PW).await;
    assert!(reply.starts_with("454 4.7.0 "), "{reply}");
    // The relay answered the 334 challenge with an empty line (the fake checks that),
    // and did not refresh the token: 5.7.139 says SMTP AUTH is off, no token helps.
    assert_eq!(world.smtp.auth_attempts().len(), 1);
    assert_eq!(world.entra.token_requests(), 1);
    world.check_fakes();
}

#[tokio::test]
async fn a_mailbox_without_a_token_tells_the_admin_what_to_do() {
    let mut world = World::new().await;
    world.add_without_token(ALICE, ALICE_PW);
    world.start().await;
    let mut c = RawClient::after_ehlo(&world).await;
    let reply = c.auth_plain(ALICE, ALICE_PW).await;
    assert!(
        reply.starts_with("454 4.7.0 Mailbox alice@contoso.com needs the relay admin"),
        "{reply}"
    );
    assert!(reply.contains("m365-relay mailbox authorize"), "{reply}");
    assert_eq!(world.entra.token_requests(), 0);
}

#[tokio::test]
async fn an_unreachable_upstream_gets_421() {
    // A port that was just free: nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut world = World::with_upstream(Some(closed)).await;
    world.add_mailbox(ALICE, ALICE_PW);
    world.start().await;
    let mut c = RawClient::after_ehlo(&world).await;
    let reply = c.auth_plain(ALICE, ALICE_PW).await;
    assert!(reply.starts_with("421 4.4.1 "), "{reply}");
}

#[tokio::test]
async fn plaintext_auth_from_loopback_follows_the_config() {
    let world = World::started_with(ALICE, ALICE_PW).await;
    // Loopback, plaintext, allowed by the default config: AUTH is offered without TLS.
    let tcp = TcpStream::connect(("127.0.0.1", world.smtp_port()))
        .await
        .unwrap();
    let mut reader = BufReader::new(tcp);
    let mut line = String::new();
    reader.read_line(&mut line).await.unwrap();
    reader
        .get_mut()
        .write_all(b"EHLO legacy\r\n")
        .await
        .unwrap();
    let mut ehlo = String::new();
    loop {
        line.clear();
        reader.read_line(&mut line).await.unwrap();
        ehlo.push_str(&line);
        if line.as_bytes().get(3) == Some(&b' ') {
            break;
        }
    }
    assert!(
        ehlo.contains("250-STARTTLS") && ehlo.contains("AUTH PLAIN LOGIN"),
        "{ehlo}"
    );
}
