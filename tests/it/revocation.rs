//! Open sessions do not outlive what let them in (issue 12, item 6): after the CLI changes a
//! mailbox's password or removes it, an SMTP session starts no new transaction, and the
//! IMAP and POP3 sessions of a removed mailbox are closed.

use std::time::{Duration, Instant};

use crate::harness::World;
use crate::submission::Raw;
use crate::support::line_client::LineClient;

const ALICE: &str = "alice@contoso.com";
const ALICE_PW: &str = "alice-local-password";
const BOB: &str = "bob@contoso.com";
const BOB_PW: &str = "bob-local-password";

async fn world() -> World {
    World::started_after(ALICE, ALICE_PW, |world| world.add_mailbox(BOB, BOB_PW)).await
}

const MESSAGE: &str = "From: alice@contoso.com\r\nSubject: x\r\n\r\nhi\r\n";

#[tokio::test]
async fn an_smtp_session_starts_no_transaction_after_a_password_change() {
    let world = world().await;
    let mut c = Raw::login(&world).await;
    c.transaction(ALICE, &["carol@example.com"]).await;
    c.data(MESSAGE).await;
    world.set_password(ALICE, "a-new-password");
    c.send(&format!("MAIL FROM:<{ALICE}>\r\n")).await;
    let reply = c.reply().await;
    assert!(reply.starts_with("421 4.7.0"), "{reply}");
    c.expect_closed().await;
    assert_eq!(world.smtp.messages().len(), 1);
    // The new password logs in and sends.
    let mut c = Raw::login_as(&world, ALICE, "a-new-password").await;
    c.transaction(ALICE, &["carol@example.com"]).await;
    c.data(MESSAGE).await;
    assert_eq!(world.smtp.messages().len(), 2);
}

#[tokio::test]
async fn an_smtp_session_of_a_removed_mailbox_starts_no_transaction() {
    let world = world().await;
    let mut c = Raw::login(&world).await;
    world.admin(&["mailbox", "remove", ALICE], "");
    c.send(&format!("MAIL FROM:<{ALICE}>\r\n")).await;
    let reply = c.reply().await;
    assert!(reply.starts_with("421 4.7.0"), "{reply}");
    c.expect_closed().await;
    assert!(world.smtp.messages().is_empty());
}

async fn logged_in(world: &World, listener: &str, login: &str, ok: &str) -> LineClient {
    let addr = ([127, 0, 0, 1], world.port(listener)).into();
    let mut c = LineClient::connect(addr).await;
    c.read_line().await.expect("greeting");
    for line in login.split('\n') {
        c.send(line).await;
    }
    loop {
        let line = c.read_line().await.expect("reply");
        if line.starts_with(ok) {
            return c;
        }
        assert!(
            !line.starts_with("a ") && !line.starts_with("-ERR"),
            "{line}"
        );
    }
}

#[tokio::test]
async fn imap_and_pop3_sessions_of_a_removed_mailbox_are_closed() {
    let world = world().await;
    let mut alice_imap = logged_in(
        &world,
        "imap",
        &format!("a LOGIN {ALICE} {ALICE_PW}"),
        "a OK",
    )
    .await;
    let mut alice_pop = logged_in(
        &world,
        "pop3",
        &format!("USER {ALICE}\nPASS {ALICE_PW}"),
        "+OK",
    )
    .await;
    alice_pop.read_line().await; // +OK for USER, then PASS's
    let mut bob_imap = logged_in(&world, "imap", &format!("a LOGIN {BOB} {BOB_PW}"), "a OK").await;

    let removed = Instant::now();
    world.admin(&["mailbox", "remove", ALICE], "");
    alice_imap.expect_closed().await;
    alice_pop.expect_closed().await;
    let took = removed.elapsed();
    assert!(took < Duration::from_secs(10), "closed after {took:?}");

    // Bob's session goes on.
    bob_imap.send("b NOOP").await;
    loop {
        let line = bob_imap.read_line().await.expect("bob's session is open");
        if line.starts_with("b ") {
            assert!(line.starts_with("b OK"), "{line}");
            break;
        }
    }
}
