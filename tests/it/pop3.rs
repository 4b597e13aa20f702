//! POP3 through the relay, as helpdesks use it to collect tickets: Python's poplib and
//! curl log in with local passwords; the fake Exchange Online POP3 server checks the
//! two-step XOAUTH2 login and serves the mailbox.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::harness::{World, assert_succeeded, big_message, curl};
use crate::support::line_client::LineClient;

const ALICE: &str = "alice@contoso.com";
const ALICE_PW: &str = "correct horse battery staple";

async fn tls_client(world: &World) -> LineClient {
    let addr = ([127, 0, 0, 1], world.port("pop3s")).into();
    let mut c = LineClient::connect_tls(addr, world.pki.client_config(), "127.0.0.1").await;
    assert_eq!(c.read_line().await.unwrap(), "+OK m365-relay POP3 ready");
    c
}

#[tokio::test]
async fn poplib_retrieves_a_10_mb_message_and_deletes_over_implicit_tls() {
    let world = World::started_with(ALICE, ALICE_PW).await;
    let message = big_message(10 * 1024 * 1024 + 3);
    world
        .pop3
        .deliver(ALICE, b"Subject: first\r\n\r\n.dotted line\r\n");
    world.pop3.deliver(ALICE, &message);
    let script = r#"
import poplib, ssl, sys, hashlib
port, ca, user, password = sys.argv[1:]
poplib._MAXLINE = 1 << 20
ctx = ssl.create_default_context(cafile=ca)
p = poplib.POP3_SSL("127.0.0.1", int(port), context=ctx, timeout=30)
p.user(user)
p.pass_(password)
count, size = p.stat()
assert count == 2, (count, size)
resp, lines, octets = p.retr(1)
assert lines == [b"Subject: first", b"", b".dotted line"], lines
resp, lines, octets = p.retr(2)
body = b"\r\n".join(lines) + b"\r\n"
print(len(body), hashlib.sha256(body).hexdigest())
p.dele(1)
p.quit()
"#;
    let out = world.python_login(script, "pop3s", ALICE, ALICE_PW).await;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &message);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        out,
        format!("{} {hex}\n", message.len()),
        "the 10 MB message arrives byte for byte"
    );
    assert_eq!(world.pop3.messages(ALICE), vec![message]);
    let auth = world.pop3.auth_attempts();
    assert_eq!(auth.len(), 1);
    assert!(auth[0].accepted && auth[0].user == ALICE);
    assert!(
        !auth[0].initial_response,
        "the relay logs in upstream in two steps"
    );
    world.check_fakes();
}

#[tokio::test]
async fn poplib_logs_in_after_stls() {
    let world = World::started_with(ALICE, ALICE_PW).await;
    world.pop3.deliver(ALICE, b"Subject: hi\r\n\r\nhello\r\n");
    let script = r#"
import poplib, ssl, sys
port, ca, user, password = sys.argv[1:]
ctx = ssl.create_default_context(cafile=ca)
p = poplib.POP3("127.0.0.1", int(port), timeout=30)
assert "STLS" in p.capa(), p.capa()
p.stls(context=ctx)
p.user(user)
p.pass_(password)
print(p.stat()[0])
p.quit()
"#;
    let out = world.python_login(script, "pop3", ALICE, ALICE_PW).await;
    assert_eq!(out, "1\n");
    world.check_fakes();
}

#[tokio::test]
async fn auth_plain_with_and_without_initial_response_and_pipelining() {
    let world = World::started_with(ALICE, ALICE_PW).await;
    world.pop3.deliver(ALICE, b"Subject: a\r\n\r\na\r\n");
    let plain = STANDARD.encode(format!("\0{ALICE}\0{ALICE_PW}"));

    let mut c = tls_client(&world).await;
    c.send("AUTH PLAIN").await;
    assert_eq!(c.read_line().await.unwrap(), "+ ");
    c.send(&plain).await;
    assert_eq!(
        c.read_line().await.unwrap(),
        "+OK User successfully authenticated."
    );

    // Initial response, and commands pipelined right behind the login.
    let mut c = tls_client(&world).await;
    c.send_raw(format!("AUTH PLAIN {plain}\r\nSTAT\r\nQUIT\r\n").as_bytes())
        .await;
    assert_eq!(
        c.read_line().await.unwrap(),
        "+OK User successfully authenticated."
    );
    assert!(c.read_line().await.unwrap().starts_with("+OK 1 "));
    assert!(c.read_line().await.unwrap().starts_with("+OK"));
    world.check_fakes();
}

#[tokio::test]
async fn curl_lists_retrieves_and_deletes() {
    let world = World::started_with(ALICE, ALICE_PW).await;
    world.pop3.deliver(ALICE, b"Subject: one\r\n\r\nfirst\r\n");
    world.pop3.deliver(ALICE, b"Subject: two\r\n\r\nsecond\r\n");
    let user = format!("{ALICE}:{ALICE_PW}");
    let base = format!("pop3s://127.0.0.1:{}", world.port("pop3s"));
    let out = curl(&world, &["--user", &user, &format!("{base}/")]).await;
    assert_succeeded("curl", &out);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        2,
        "LIST shows two messages"
    );
    let out = curl(&world, &["--user", &user, &format!("{base}/2")]).await;
    assert_eq!(out.stdout, b"Subject: two\r\n\r\nsecond\r\n");
    let plain = format!("pop3://127.0.0.1:{}/1", world.port("pop3"));
    let out = curl(
        &world,
        &[
            "--user",
            &user,
            "-X",
            "DELE",
            "--request-target",
            "1",
            "-I",
            &plain,
        ],
    )
    .await;
    assert_succeeded("curl", &out);
    assert_eq!(
        world.pop3.messages(ALICE),
        vec![b"Subject: two\r\n\r\nsecond\r\n".to_vec()]
    );
    world.check_fakes();
}

#[tokio::test]
async fn failures_get_rfc_3206_codes() {
    let mut world = World::new().await;
    world.add_mailbox(ALICE, ALICE_PW);
    world.add_without_token("bob@contoso.com", "bobs password");
    world.start().await;
    let mut c = tls_client(&world).await;
    c.send(&format!("USER {ALICE}")).await;
    assert_eq!(c.read_line().await.unwrap(), "+OK");
    c.send("PASS wrong").await;
    assert_eq!(
        c.read_line().await.unwrap(),
        "-ERR [AUTH] Authentication failed"
    );
    c.send("USER bob@contoso.com").await;
    c.read_line().await;
    c.send("PASS bobs password").await;
    let reply = c.read_line().await.unwrap();
    assert!(
        reply.starts_with("-ERR [SYS/PERM] Mailbox bob@contoso.com needs the relay admin"),
        "{reply}"
    );
    world.check_fakes();
}
