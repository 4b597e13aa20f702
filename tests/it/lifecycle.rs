//! The token lifecycle of a running relay, end to end against the fake Entra with
//! short-lived tokens: kept fresh with no client at all, a revoked refresh token turning the
//! mailbox to needs-reauth with a clear reply to clients, and an Entra outage costing no
//! login while the cached token is valid. (The schedule itself is unit-tested on paused
//! time in src/oauth/refresher.)

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use m365_relay::oauth::health::State;
use m365_relay::state::files::read_status;

use crate::harness::World;
use crate::support::line_client::LineClient;
use crate::util;

const ALICE: &str = "alice@contoso.com";
const ALICE_PW: &str = "correct horse battery staple";

async fn world_with_tokens_lasting(secs: u64) -> World {
    let mut world = World::new().await;
    world.entra.set_expires_in(secs);
    world.add_mailbox(ALICE, ALICE_PW);
    world.start().await;
    world
}

/// An SMTP AUTH over implicit TLS; returns the reply.
async fn smtp_login(world: &World) -> String {
    let addr = ([127, 0, 0, 1], world.port("smtps")).into();
    let mut c = LineClient::connect_tls(addr, world.pki.client_config(), "127.0.0.1").await;
    c.read_smtp_reply().await;
    c.smtp("EHLO app").await;
    let plain = STANDARD.encode(format!("\0{ALICE}\0{ALICE_PW}"));
    c.smtp(&format!("AUTH PLAIN {plain}")).await
}

/// Waits up to 10 s for `done`.
async fn wait_for(what: &str, done: impl FnMut() -> bool) {
    util::eventually(what, Duration::from_secs(10), done).await;
}

#[tokio::test]
async fn tokens_stay_fresh_with_no_client_at_all() {
    let world = world_with_tokens_lasting(4).await;
    wait_for("the first refresh", || world.entra.token_requests() >= 1).await;
    // 4-second tokens are refreshed at half their life: about every 2 s, untouched.
    tokio::time::sleep(Duration::from_millis(6500)).await;
    let requests = world.entra.token_requests() - 1;
    assert!((2..=5).contains(&requests), "{requests} refreshes in 6.5 s");
    let status = read_status(&world.state_dir(), ALICE).expect("a status file");
    assert_eq!(status.state, State::Ok);
    assert_eq!(
        world.entra.stale_refresh_token_uses(),
        0,
        "always the newest refresh token"
    );
    assert!(smtp_login(&world).await.starts_with("235 "));
    world.check_fakes();
}

#[tokio::test]
async fn a_revoked_refresh_token_turns_the_mailbox_to_needs_reauth() {
    let world = world_with_tokens_lasting(4).await;
    wait_for("the first refresh", || world.entra.token_requests() >= 1).await;
    world.entra.revoke_refresh_tokens_of(ALICE);
    let state_dir = world.state_dir();
    wait_for("needs-reauth", || {
        read_status(&state_dir, ALICE).is_some_and(|s| s.state == State::NeedsReauth)
    })
    .await;
    let status = read_status(&state_dir, ALICE).unwrap();
    assert_eq!(status.error.as_deref(), Some("invalid_grant"));
    assert!(!status.error_codes.is_empty(), "{status:?}");

    // Wait for the old access token to lapse: then clients get the clear reply.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let reply = smtp_login(&world).await;
    assert!(
        reply.starts_with("454 4.7.0 Mailbox alice@contoso.com needs the relay admin"),
        "{reply}"
    );
    // No hammering: the refused refresh token is not sent again.
    let requests = world.entra.token_requests();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(world.entra.token_requests(), requests);
}

#[tokio::test]
async fn an_entra_outage_costs_no_login_while_the_token_is_valid() {
    let world = world_with_tokens_lasting(10).await;
    assert!(smtp_login(&world).await.starts_with("235 "));
    // Entra goes down.
    for _ in 0..50 {
        world.entra.push_response(503, r#"{"error":"temporarily_unavailable","error_description":"AADSTS90033: A transient error has occurred."}"#);
    }
    tokio::time::sleep(Duration::from_secs(7)).await;
    // The token has about 3 s left: refreshing fails, the cached token still serves.
    let reply = smtp_login(&world).await;
    assert!(reply.starts_with("235 "), "{reply}");
    let status = read_status(&world.state_dir(), ALICE).unwrap();
    assert_eq!(status.state, State::Failing);
}

#[tokio::test]
async fn mailbox_list_shows_state_expiry_and_credential_warnings() {
    let mut world = World::new().await;
    world.add_mailbox(ALICE, ALICE_PW);
    // A confidential app whose secret expires in ten days.
    let bob = "bob@contoso.com";
    let secret = world.file("secret.txt", b"bob-app-secret\n");
    let in_ten_days = std::process::Command::new("date")
        .args(["-u", "-d", "+10 days", "+%F"])
        .output()
        .unwrap();
    let in_ten_days = String::from_utf8(in_ten_days.stdout).unwrap();
    world.entra.add_app(
        crate::harness::TENANT,
        "11111111-2222-3333-4444-555555555555",
        Some("bob-app-secret"),
    );
    world.register_with(
        bob,
        "11111111-2222-3333-4444-555555555555",
        &[
            "--client-secret-file",
            &crate::harness::path_str(&secret),
            "--secret-expires",
            in_ten_days.trim(),
        ],
    );
    let before = world.admin(&["mailbox", "list"], "");
    assert!(
        before.contains("alice@contoso.com") && before.contains("state=unknown"),
        "{before}"
    );
    assert!(
        before.contains("bob@contoso.com") && before.contains("state=no-token"),
        "{before}"
    );
    assert!(
        before.contains("WARNING: the app's credential expires in 9 days")
            || before.contains("WARNING: the app's credential expires in 10 days"),
        "{before}"
    );

    world.start().await;
    assert!(smtp_login(&world).await.starts_with("235 "));
    let after = world.admin(&["mailbox", "list"], "");
    let alice = after
        .lines()
        .find(|l| l.starts_with("alice@contoso.com"))
        .unwrap();
    assert!(alice.contains("state=ok"), "{alice}");
    assert!(
        alice.contains("access-token=expires in 59 min")
            || alice.contains("access-token=expires in 60 min"),
        "{alice}"
    );
    assert!(alice.contains("(ok)"), "{alice}");
    let json = world.admin(&["mailbox", "list", "--json"], "");
    assert!(
        json.contains("\"state\": \"ok\"") && json.contains("\"credential_expires\""),
        "{json}"
    );
}
