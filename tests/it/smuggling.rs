//! The header sender check fails closed (issue 12, item 1): the holder of a shared
//! mailbox's password cannot send as the delegate whose token it uses by hiding the From
//! from the relay's reading, and a message with a bare CR or LF is refused whole (SMTP
//! smuggling, CVE-2023-51764). Driven with a raw SMTP client, since Python's smtplib
//! mends line ends before it sends.

use crate::harness::World;
use crate::submission::Raw;

const ALICE: &str = "alice@contoso.com";
const ALICE_PW: &str = "alice-local-password";
const HELPDESK: &str = "helpdesk@contoso.com";
const HELPDESK_PW: &str = "helpdesk-local-password";

/// Alice, and the shared helpdesk mailbox that sends with alice's token.
async fn shared_world(setup: impl FnOnce(&World)) -> World {
    World::started_after(ALICE, ALICE_PW, |world| {
        world.admin(&["mailbox", "add", HELPDESK, "--token-from", ALICE], "");
        world.set_password(HELPDESK, HELPDESK_PW);
        world.smtp.grant_delegate(HELPDESK, ALICE);
        setup(world);
    })
    .await
}

/// Sends `message` (its end marker included) in one transaction; the DATA reply.
async fn data(c: &mut Raw, message: &[u8]) -> String {
    c.transaction(HELPDESK, &["bob@example.com"]).await;
    c.send("DATA\r\n").await;
    let reply = c.reply().await;
    assert!(reply.starts_with("354"), "{reply}");
    c.send_bytes(message).await;
    c.reply().await
}

const GOOD: &[u8] = b"From: helpdesk@contoso.com\r\nSubject: ok\r\n\r\nHello\r\n.\r\n";

/// The three messages that got `250` as alice from helpdesk's password, and relatives.
fn disguised_senders() -> Vec<(&'static [u8], &'static str)> {
    vec![
        (
            b"From: alice@contoso.com\r\nFrom: helpdesk@contoso.com\r\nSubject: x\r\n\r\nhi\r\n.\r\n",
            "550 5.7.1",
        ),
        (
            b" \r\nFrom: alice@contoso.com\r\nSubject: x\r\n\r\nhi\r\n.\r\n",
            "550 5.7.1",
        ),
        (
            b"Subject: x\n\r\nFrom: alice@contoso.com\r\n\r\nhi\r\n.\r\n",
            "550 5.5.2",
        ),
        (
            b"Sender: alice@contoso.com\r\nSender: helpdesk@contoso.com\r\nFrom: helpdesk@contoso.com\r\n\r\nhi\r\n.\r\n",
            "550 5.7.1",
        ),
        (b"From: alice\r\n\r\nhi\r\n.\r\n", "550 5.7.1"),
        (b"From: <>\r\n\r\nhi\r\n.\r\n", "550 5.7.1"),
        (
            b"From: helpdesk@contoso.com alice@contoso.com\r\n\r\nhi\r\n.\r\n",
            "550 5.7.1",
        ),
        (
            b"From: helpdesk@contoso.com\r\nSubject: x\r\rFrom: alice@contoso.com\r\n\r\nhi\r\n.\r\n",
            "550 5.5.2",
        ),
    ]
}

#[tokio::test]
async fn a_shared_mailbox_cannot_send_as_its_delegate_by_hiding_the_from() {
    let world = shared_world(|_| {}).await;
    let mut c = Raw::login_as(&world, HELPDESK, HELPDESK_PW).await;
    for (message, code) in disguised_senders() {
        let reply = data(&mut c, message).await;
        assert!(
            reply.starts_with(code),
            "{:?}: {reply}",
            String::from_utf8_lossy(message)
        );
        assert!(world.smtp.messages().is_empty(), "nothing went upstream");
    }
    // The session goes on, and a message from the shared mailbox itself goes out intact.
    let reply = data(&mut c, GOOD).await;
    assert!(reply.starts_with("250"), "{reply}");
    let sent = world.smtp.messages();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        sent[0].data,
        b"From: helpdesk@contoso.com\r\nSubject: ok\r\n\r\nHello\r\n"
    );
    world.check_fakes();
}

/// `LF . CRLF` is not the end of the message: a second transaction hidden behind it is
/// read as message content, and the whole message is refused for its bare LF.
#[tokio::test]
async fn a_smuggled_transaction_behind_a_bare_lf_is_never_sent() {
    let world = shared_world(|_| {}).await;
    let mut c = Raw::login_as(&world, HELPDESK, HELPDESK_PW).await;
    let smuggled = b"From: helpdesk@contoso.com\r\n\r\nhi\n.\r\nMAIL FROM:<alice@contoso.com>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\nFrom: alice@contoso.com\r\n\r\nevil\r\n.\r\n";
    let reply = data(&mut c, smuggled).await;
    assert!(reply.starts_with("550 5.5.2"), "{reply}");
    c.send("NOOP\r\n").await;
    assert!(
        c.reply().await.starts_with("250"),
        "one reply for one message"
    );
    assert!(world.smtp.messages().is_empty());
    world.check_fakes();
}

/// Once the header section went upstream, a bare line end in the body can only be
/// refused by dropping the upstream connection before the message's end: Exchange never
/// completes it, the client gets `550 5.5.2`, and the session ends.
#[tokio::test]
async fn a_bare_line_end_in_a_streamed_body_is_never_completed_upstream() {
    let world = shared_world(|_| {}).await;
    for body in [&b"line\nmore\r\n"[..], b"line\rmore\r\n", b"line\r"] {
        let mut c = Raw::login_as(&world, HELPDESK, HELPDESK_PW).await;
        c.transaction(HELPDESK, &["bob@example.com"]).await;
        c.send("DATA\r\n").await;
        assert!(c.reply().await.starts_with("354"));
        c.send("From: helpdesk@contoso.com\r\nSubject: long\r\n\r\n")
            .await;
        c.send(&"a line of the body that goes upstream\r\n".repeat(5_000))
            .await;
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        c.send_bytes(body).await;
        c.send("\r\nend\r\n.\r\n").await;
        let reply = c.reply().await;
        assert!(reply.starts_with("550 5.5.2"), "{reply}");
        // The session ends with its upstream connection.
        c.expect_closed().await;
    }
    assert!(world.smtp.messages().is_empty());
    // Exchange saw each connection end in the middle of DATA, and nothing else.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let errors = world.smtp.protocol_errors();
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(
        errors
            .iter()
            .all(|e| e.contains("connection ended with error")),
        "{errors:?}"
    );
    world.smtp.check_no_panics();
}

#[tokio::test]
async fn bdat_chunks_with_a_bare_line_end_are_refused() {
    let world = shared_world(|_| {}).await;
    let mut c = Raw::login_as(&world, HELPDESK, HELPDESK_PW).await;
    // Held start: the header section itself.
    c.transaction(HELPDESK, &["bob@example.com"]).await;
    let start = b"Subject: x\n\r\nFrom: alice@contoso.com\r\n\r\nhi\r\n";
    c.send(&format!("BDAT {} LAST\r\n", start.len())).await;
    c.send_bytes(start).await;
    let reply = c.reply().await;
    assert!(reply.starts_with("550 5.5.2"), "{reply}");
    // Streamed: the header was checked and went upstream, the next chunk is tainted.
    c.transaction(HELPDESK, &["bob@example.com"]).await;
    let head = b"From: helpdesk@contoso.com\r\n\r\nhi\r\n";
    c.send(&format!("BDAT {}\r\n", head.len())).await;
    c.send_bytes(head).await;
    assert!(c.reply().await.starts_with("250"));
    let tail = b"a bare\nline\r\n";
    c.send(&format!("BDAT {} LAST\r\n", tail.len())).await;
    c.send_bytes(tail).await;
    let reply = c.reply().await;
    assert!(reply.starts_with("550 5.5.2"), "{reply}");
    assert!(world.smtp.messages().is_empty());
    world.check_fakes();
}

#[tokio::test]
async fn the_same_rules_hold_on_the_graph_path_and_the_trusted_listener() {
    let world = shared_world(|world| {
        world.admin(&["mailbox", "sending", HELPDESK, "--smtp-via", "graph"], "");
        world.config_table(&format!(
            "[smtp.trusted]\nlisten = \"127.0.0.1:0\"\nnetworks = [\"127.0.0.1/32\"]\nmailbox = \"{HELPDESK}\""
        ));
    })
    .await;
    let mut c = Raw::login_as(&world, HELPDESK, HELPDESK_PW).await;
    for (message, code) in disguised_senders() {
        let reply = data(&mut c, message).await;
        assert!(reply.starts_with(code), "graph: {reply}");
    }
    assert!(world.graph.requests().is_empty(), "Graph was never asked");
    let mut device = Raw::connect_trusted(&world).await;
    for (message, code) in disguised_senders() {
        let reply = data(&mut device, message).await;
        assert!(reply.starts_with(code), "trusted: {reply}");
    }
    assert!(world.graph.requests().is_empty(), "Graph was never asked");
    assert!(world.smtp.messages().is_empty());
}

#[tokio::test]
async fn a_recipient_path_names_one_address() {
    let world = shared_world(|_| {}).await;
    let mut c = Raw::login_as(&world, HELPDESK, HELPDESK_PW).await;
    c.send("MAIL FROM:<helpdesk@contoso.com>\r\n").await;
    assert!(c.reply().await.starts_with("250"));
    for path in [
        "<a@x.com,b@y.com>",
        "a@x.com,b@y.com",
        "<a@x.com>,<b@y.com>",
        "<a@x.com> <b@y.com>",
    ] {
        c.send(&format!("RCPT TO:{path}\r\n")).await;
        let reply = c.reply().await;
        assert!(reply.starts_with("501"), "{path}: {reply}");
    }
    c.send("RCPT TO:<\"a,b\"@example.com>\r\n").await;
    let reply = c.reply().await;
    assert!(
        reply.starts_with("250"),
        "a quoted local part is one address: {reply}"
    );
}
