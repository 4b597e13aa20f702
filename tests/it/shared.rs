//! Shared mailboxes: `mailbox add shared@… --token-from alice@…`. Clients log in as the
//! shared mailbox with its own local password; the relay opens it upstream with
//! `user=shared@…` and alice's token, as Microsoft documents for delegated access.

use crate::harness::World;
use crate::support::line_client::LineClient;

const ALICE: &str = "alice@contoso.com";
const SHARED: &str = "helpdesk@contoso.com";
const SHARED_PW: &str = "helpdesk local password";

async fn world_with_shared_mailbox() -> World {
    World::started_after(ALICE, "alice's own password", |world| {
        world.admin(&["mailbox", "add", SHARED, "--token-from", ALICE], "");
        world.set_password(SHARED, SHARED_PW);
    })
    .await
}

#[tokio::test]
async fn a_shared_mailbox_opens_with_its_delegates_token_on_every_protocol() {
    let world = world_with_shared_mailbox().await;
    world.imap.grant_delegate(SHARED, ALICE);
    world.pop3.grant_delegate(SHARED, ALICE);
    world.smtp.grant_delegate(SHARED, ALICE);
    world
        .pop3
        .deliver(SHARED, b"Subject: ticket\r\n\r\nplease help\r\n");

    let ok = world.imap_login(SHARED, SHARED_PW).await;
    assert!(ok.starts_with("a OK "), "{ok}");

    let addr = ([127, 0, 0, 1], world.port("pop3s")).into();
    let mut pop = LineClient::connect_tls(addr, world.pki.client_config(), "127.0.0.1").await;
    pop.read_line().await;
    pop.send(&format!("USER {SHARED}")).await;
    pop.read_line().await;
    pop.send(&format!("PASS {SHARED_PW}")).await;
    assert!(pop.read_line().await.unwrap().starts_with("+OK"));
    pop.send("STAT").await;
    assert!(pop.read_line().await.unwrap().starts_with("+OK 1 "));

    let mut smtp = LineClient::connect_tls(
        ([127, 0, 0, 1], world.port("smtps")).into(),
        world.pki.client_config(),
        "127.0.0.1",
    )
    .await;
    smtp.read_smtp_reply().await;
    smtp.smtp("EHLO app").await;
    let plain = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("\0{SHARED}\0{SHARED_PW}"),
    );
    assert!(
        smtp.smtp(&format!("AUTH PLAIN {plain}"))
            .await
            .starts_with("235 ")
    );

    // Every upstream login opened the shared mailbox with alice's token, and the one
    // token served all three: one token request.
    let logins = world
        .imap
        .auth_attempts()
        .into_iter()
        .map(|a| (a.user, a.token))
        .chain(
            world
                .pop3
                .auth_attempts()
                .into_iter()
                .map(|a| (a.user, a.token)),
        )
        .chain(
            world
                .smtp
                .auth_attempts()
                .into_iter()
                .map(|a| (a.user, a.token)),
        );
    for (user, token) in logins {
        assert_eq!(user, SHARED);
        assert_eq!(
            world.entra.validate_access_token(&token).as_deref(),
            Some(ALICE)
        );
    }
    assert_eq!(world.entra.token_requests(), 1);
    world.check_fakes();
}

#[tokio::test]
async fn the_shared_mailbox_needs_its_own_password() {
    let world = world_with_shared_mailbox().await;
    world.imap.grant_delegate(SHARED, ALICE);
    let reply = world.imap_login(SHARED, "alice's own password").await;
    assert_eq!(reply, "a NO [AUTHENTICATIONFAILED] Authentication failed");
}

#[tokio::test]
async fn a_delegate_without_rights_is_refused_upstream() {
    let world = world_with_shared_mailbox().await;
    // No grant_delegate: Exchange refuses alice's token for the shared mailbox.
    let reply = world.imap_login(SHARED, SHARED_PW).await;
    assert!(reply.starts_with("a NO [UNAVAILABLE] "), "{reply}");
    assert!(world.imap.auth_attempts().iter().all(|a| !a.accepted));
}
