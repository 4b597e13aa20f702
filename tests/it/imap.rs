//! IMAP through the relay, as helpdesks and workflow tools use it: Python's imaplib, curl
//! and the async-imap crate log in with local passwords; the fake Exchange Online IMAP
//! server checks the XOAUTH2 login and serves the mailbox.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::harness::{World, assert_succeeded, big_message, curl};
use crate::support::line_client::LineClient;

const ALICE: &str = "alice@contoso.com";
const ALICE_PW: &str = "correct horse battery staple";

async fn world_with_alice() -> World {
    let world = World::started_with(ALICE, ALICE_PW).await;
    // Before anyone logs in: the fake's primary mailbox.
    world.imap.set_primary_mailbox(ALICE);
    world
}

/// [`world_with_alice`], with `messages` delivered to her INBOX.
async fn world_with_mail(messages: &[&str]) -> World {
    let world = world_with_alice().await;
    for message in messages {
        world.imap.deliver("INBOX", message.as_bytes());
    }
    world
}

async fn tls_client(world: &World) -> LineClient {
    let addr = ([127, 0, 0, 1], world.port("imaps")).into();
    let mut c = LineClient::connect_tls(addr, world.pki.client_config(), "127.0.0.1").await;
    let greeting = c.read_line().await.expect("greeting");
    assert!(
        greeting.starts_with("* OK [CAPABILITY IMAP4rev1 "),
        "{greeting}"
    );
    c
}

/// Reads lines up to and including the one tagged `tag`.
/// Whether the reply tagged `tag` is OK.
async fn tagged_ok(c: &mut LineClient, tag: &str) -> bool {
    let reply = until_tagged(c, tag).await;
    reply.last().unwrap().starts_with(&format!("{tag} OK"))
}

async fn until_tagged(c: &mut LineClient, tag: &str) -> Vec<String> {
    let mut lines = Vec::new();
    loop {
        let line = c.read_line().await.expect("server closed the connection");
        let done = line.starts_with(&format!("{tag} "));
        lines.push(line);
        if done {
            return lines;
        }
    }
}

#[tokio::test]
async fn imaplib_fetches_a_10_mb_message_and_deletes_it_over_implicit_tls() {
    let world = world_with_alice().await;
    let message = big_message(10 * 1024 * 1024 + 7);
    world
        .imap
        .deliver("INBOX", b"Subject: first\r\n\r\nsmall one\r\n");
    world.imap.deliver("INBOX", &message);
    let script = r#"
import imaplib, ssl, sys, hashlib
port, ca, user, password = sys.argv[1:]
ctx = ssl.create_default_context(cafile=ca)
m = imaplib.IMAP4_SSL("127.0.0.1", int(port), ssl_context=ctx, timeout=30)
typ, _ = m.login(user, password)
assert typ == "OK"
typ, caps = m.capability()
assert b" IDLE " in caps[0] and b" MOVE " in caps[0], caps
typ, data = m.list()
assert typ == "OK" and any(b"INBOX" in d for d in data), data
typ, data = m.select("INBOX")
assert data == [b"2"], data
typ, data = m.fetch("2", "(BODY.PEEK[])")
body = data[0][1]
print(len(body), hashlib.sha256(body).hexdigest())
m.store("1", "+FLAGS", "\\Deleted")
typ, data = m.expunge()
assert data == [b"1"], data
m.logout()
"#;
    let out = world.python_login(script, "imaps", ALICE, ALICE_PW).await;
    let expected = format!("{} {}\n", message.len(), sha256_hex(&message));
    assert_eq!(out, expected, "the 10 MB message arrives byte for byte");
    let left = world.imap.messages("INBOX");
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].data, message);
    let auth = world.imap.auth_attempts();
    assert_eq!(
        (auth.len(), auth[0].user.as_str(), auth[0].accepted),
        (1, ALICE, true)
    );
    world.check_fakes();
}

fn sha256_hex(data: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn imaplib_logs_in_after_starttls_and_with_authenticate_plain() {
    let world = world_with_mail(&["Subject: hi\r\n\r\nhello\r\n"]).await;
    let script = r#"
import imaplib, ssl, sys
port, ca, user, password = sys.argv[1:]
ctx = ssl.create_default_context(cafile=ca)
m = imaplib.IMAP4("127.0.0.1", int(port), timeout=30)
assert "STARTTLS" in m.capabilities, m.capabilities
m.starttls(ssl_context=ctx)
typ, _ = m.authenticate("PLAIN", lambda _: ("\0" + user + "\0" + password).encode())
assert typ == "OK"
typ, data = m.select("INBOX")
typ, data = m.fetch("1", "(RFC822)")
print(data[0][1].decode())
m.logout()
"#;
    let out = world.python_login(script, "imap", ALICE, ALICE_PW).await;
    assert_eq!(out, "Subject: hi\r\n\r\nhello\r\n\n");
    world.check_fakes();
}

#[tokio::test]
async fn login_with_literals_and_commands_pipelined_behind_it() {
    let password = "p w \"quoted\" ünïcödé";
    let world = World::started_after(ALICE, password, |world| {
        world.imap.set_primary_mailbox(ALICE);
    })
    .await;
    let mut c = tls_client(&world).await;
    // LITERAL+ lets the client send everything at once, without waiting for `+`.
    let mut pipelined = format!(
        "a1 LOGIN {{{}+}}\r\n{ALICE} {{{}+}}\r\n",
        ALICE.len(),
        password.len()
    )
    .into_bytes();
    pipelined.extend(password.as_bytes());
    pipelined.extend(b"\r\na2 SELECT INBOX\r\na3 LOGOUT\r\n");
    c.send_raw(&pipelined).await;
    let login = until_tagged(&mut c, "a1").await;
    let ok = login.last().unwrap();
    assert!(ok.starts_with("a1 OK [CAPABILITY IMAP4 IMAP4rev1 "), "{ok}");
    assert!(
        ok.contains(" IDLE ") && ok.ends_with("] LOGIN completed"),
        "{ok}"
    );
    let select = until_tagged(&mut c, "a2").await;
    assert!(
        select.last().unwrap().starts_with("a2 OK [READ-WRITE]"),
        "{select:?}"
    );
    let logout = until_tagged(&mut c, "a3").await;
    assert!(logout[0].starts_with("* BYE"), "{logout:?}");
    world.check_fakes();
}

#[tokio::test]
async fn login_with_synchronizing_literals() {
    let password = "with space and \"quotes\"";
    let world = World::started_with(ALICE, password).await;
    let mut c = tls_client(&world).await;
    c.send(&format!("t LOGIN {{{}}}", ALICE.len())).await;
    assert!(c.read_line().await.unwrap().starts_with("+ "));
    c.send(&format!("{ALICE} {{{}}}", password.len())).await;
    assert!(c.read_line().await.unwrap().starts_with("+ "));
    c.send(password).await;
    let reply = until_tagged(&mut c, "t").await;
    assert!(reply.last().unwrap().starts_with("t OK "), "{reply:?}");
}

#[tokio::test]
async fn authenticate_plain_with_sasl_ir_and_idle_until_done() {
    let world = world_with_mail(&["Subject: one\r\n\r\n1\r\n"]).await;
    let mut c = tls_client(&world).await;
    let ir = STANDARD.encode(format!("\0{ALICE}\0{ALICE_PW}"));
    c.send(&format!("x1 AUTHENTICATE PLAIN {ir}")).await;
    let ok = until_tagged(&mut c, "x1").await;
    assert!(
        ok.last().unwrap().contains("AUTHENTICATE completed"),
        "{ok:?}"
    );
    c.send("x2 SELECT INBOX").await;
    until_tagged(&mut c, "x2").await;
    c.send("x3 IDLE").await;
    assert!(c.read_line().await.unwrap().starts_with("+ IDLE accepted"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    world.imap.deliver("INBOX", b"Subject: two\r\n\r\n2\r\n");
    assert_eq!(c.read_line().await.unwrap(), "* 2 EXISTS");
    c.send("DONE").await;
    let done = until_tagged(&mut c, "x3").await;
    assert!(done.last().unwrap().starts_with("x3 OK"), "{done:?}");
    world.check_fakes();
}

#[tokio::test]
async fn async_imap_logs_in_selects_and_fetches() {
    use futures::TryStreamExt;

    let world = world_with_mail(&["Subject: rust\r\n\r\nfrom a Rust client\r\n"]).await;
    let tls = world.tls_connect(world.port("imaps")).await.unwrap();
    let mut client = async_imap::Client::new(tls);
    client.read_response().await.unwrap().expect("greeting");
    let mut session = client
        .login(ALICE, ALICE_PW)
        .await
        .map_err(|(e, _)| e)
        .expect("login");
    let mailbox = session.select("INBOX").await.unwrap();
    assert_eq!(mailbox.exists, 1);
    let messages: Vec<_> = session
        .fetch("1", "RFC822")
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(
        messages[0].body(),
        Some(&b"Subject: rust\r\n\r\nfrom a Rust client\r\n"[..])
    );
    session.logout().await.unwrap();
    world.check_fakes();
}

#[tokio::test]
async fn curl_lists_fetches_and_deletes() {
    let world = world_with_mail(&[
        "Subject: curl\r\n\r\nfetched by curl\r\n",
        "Subject: two\r\n\r\nsecond\r\n",
    ])
    .await;
    let base = format!("imaps://127.0.0.1:{}", world.port("imaps"));
    let user = format!("{ALICE}:{ALICE_PW}");
    let out = curl(&world, &["--user", &user, &format!("{base}/INBOX;UID=1")]).await;
    assert_succeeded("curl", &out);
    assert_eq!(out.stdout, b"Subject: curl\r\n\r\nfetched by curl\r\n");
    let out = curl(&world, &["--user", &user, &format!("{base}/")]).await;
    assert!(String::from_utf8_lossy(&out.stdout).contains("INBOX"));
    // Plaintext on loopback, curl's own choice of AUTHENTICATE PLAIN.
    let plain = format!("imap://127.0.0.1:{}/INBOX", world.port("imap"));
    let out = curl(
        &world,
        &[
            "--user",
            &user,
            "--login-options",
            "AUTH=PLAIN",
            &plain,
            "-X",
            "UID STORE 2 +FLAGS \\Deleted",
        ],
    )
    .await;
    assert_succeeded("curl", &out);
    let out = curl(&world, &["--user", &user, &plain, "-X", "EXPUNGE"]).await;
    assert_succeeded("curl", &out);
    assert_eq!(world.imap.messages("INBOX").len(), 1);
    world.check_fakes();
}

#[tokio::test]
async fn failures_get_rfc_5530_codes() {
    let mut world = World::new().await;
    world.add_mailbox(ALICE, ALICE_PW);
    world.add_without_token("bob@contoso.com", "bobs password");
    world.start().await;
    let mut c = tls_client(&world).await;
    c.send(&format!("a LOGIN {ALICE} wrong")).await;
    assert_eq!(
        c.read_line().await.unwrap(),
        "a NO [AUTHENTICATIONFAILED] Authentication failed"
    );
    c.send("b LOGIN bob@contoso.com \"bobs password\"").await;
    let reply = c.read_line().await.unwrap();
    assert!(
        reply.starts_with("b NO [UNAVAILABLE] Mailbox bob@contoso.com needs the relay admin"),
        "{reply}"
    );
    // Exchange refuses the cached token once: the relay refreshes it and the login works.
    c.send(&format!("c LOGIN {ALICE} \"{ALICE_PW}\"")).await;
    assert!(tagged_ok(&mut c, "c").await);
    for token in world.entra.issued_access_tokens() {
        world.entra.revoke_access_token(&token);
    }
    let mut c = tls_client(&world).await;
    c.send(&format!("d LOGIN {ALICE} \"{ALICE_PW}\"")).await;
    assert!(tagged_ok(&mut c, "d").await);
    assert_eq!(world.entra.token_requests(), 2);
    world.check_fakes();
}

#[tokio::test]
async fn plaintext_logins_from_afar_are_disabled() {
    // The relay sees 127.0.0.1 here; with plaintext on loopback turned off it behaves as
    // it does for any remote client.
    let mut world = World::new().await;
    let config = std::fs::read_to_string(&world.config_path).unwrap();
    std::fs::write(
        &world.config_path,
        format!("allow_plaintext_on_loopback = false\n{config}"),
    )
    .unwrap();
    world.add_mailbox(ALICE, ALICE_PW);
    world.start().await;
    let mut c = LineClient::connect(([127, 0, 0, 1], world.port("imap")).into()).await;
    let greeting = c.read_line().await.unwrap();
    assert!(
        greeting.contains("STARTTLS") && greeting.contains("LOGINDISABLED"),
        "{greeting}"
    );
    c.send(&format!("a LOGIN {ALICE} x")).await;
    assert!(
        c.read_line()
            .await
            .unwrap()
            .starts_with("a NO [PRIVACYREQUIRED]")
    );
    c.send("b STARTTLS").await;
    assert_eq!(
        c.read_line().await.unwrap(),
        "b OK Begin TLS negotiation now"
    );
    let mut c = c.upgrade(world.pki.client_config(), "127.0.0.1").await;
    c.send("c CAPABILITY").await;
    let caps = until_tagged(&mut c, "c").await;
    assert!(
        caps[0].contains("AUTH=PLAIN") && !caps[0].contains("LOGINDISABLED"),
        "{caps:?}"
    );
    c.send(&format!("d LOGIN {ALICE} \"{ALICE_PW}\"")).await;
    assert!(tagged_ok(&mut c, "d").await);
}

#[tokio::test]
async fn exchanges_token_expiry_bye_reaches_the_client_and_a_reconnect_works() {
    let world = world_with_alice().await;
    let mut c = tls_client(&world).await;
    c.send(&format!("a LOGIN {ALICE} \"{ALICE_PW}\"")).await;
    until_tagged(&mut c, "a").await;
    c.send("b SELECT INBOX").await;
    until_tagged(&mut c, "b").await;
    world.imap.bye_token_expired();
    assert_eq!(
        c.read_line().await.unwrap(),
        "* BYE Session invalidated - AccessTokenExpired"
    );
    c.expect_closed().await;

    let mut again = tls_client(&world).await;
    again.send(&format!("c LOGIN {ALICE} \"{ALICE_PW}\"")).await;
    assert!(
        until_tagged(&mut again, "c")
            .await
            .last()
            .unwrap()
            .starts_with("c OK")
    );
    world.check_fakes();
}
