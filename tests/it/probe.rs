//! `m365-relay mailbox test`: the real binary gets a token from the fake Entra ID, logs in
//! to the fake IMAP, POP3 and SMTP servers, and reports one line per step, with a hint
//! under a known failure.

use std::process::{Command, ExitStatus};

use crate::harness::{CLIENT_ID, ROBOT, ROBOT_APP, TENANT, World};

const ALICE: &str = "alice@contoso.com";
const ALICE_PW: &str = "alice's local password";
const SHARED: &str = "helpdesk@contoso.com";
const BOB: &str = "bob@fabrikam.com";

/// What `mailbox test` printed and how it ended.
struct Tested {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Tested {
    /// The line of `step` (`token`, `imap`, `pop3`, `smtp`, `send`).
    fn line(&self, step: &str) -> &str {
        let prefix = format!("{step:<6}");
        self.stdout
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no {step} line:\n{self}"))
    }

    /// The hint printed under the line of `step`.
    fn hint(&self, step: &str) -> &str {
        let mut lines = self.stdout.lines();
        let prefix = format!("{step:<6}");
        lines.find(|l| l.starts_with(&prefix));
        let next = lines.next().unwrap_or_default().trim_start();
        next.strip_prefix("hint: ")
            .unwrap_or_else(|| panic!("no hint under the {step} line:\n{self}"))
    }

    fn outcome(&self, step: &str) -> &str {
        let line = self.line(step);
        line[6..].split_whitespace().next().unwrap_or_default()
    }
}

impl std::fmt::Display for Tested {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}\n--- stdout:\n{}--- stderr:\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs `m365-relay --config <world's> mailbox test args...` off the async threads (the
/// fakes it talks to run on them).
async fn mailbox_test(world: &World, args: &[&str]) -> Tested {
    let mut command = Command::new(assert_cmd::cargo::cargo_bin("m365-relay"));
    command
        .env_remove("M365_RELAY_CONFIG")
        .env_remove("M365_RELAY_LOG")
        .arg("--config")
        .arg(&world.config_path)
        .args(["mailbox", "test"])
        .args(args);
    let out = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .expect("run m365-relay");
    Tested {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The refresh tokens the fake Entra issued must never show up in what was printed, nor
/// any access token.
fn assert_no_tokens(world: &World, tested: &Tested) {
    let mut secrets = world.entra.issued_access_tokens();
    secrets.extend(world.entra.latest_refresh_token(TENANT, CLIENT_ID, ALICE));
    for secret in secrets {
        assert!(
            !tested.stdout.contains(&secret) && !tested.stderr.contains(&secret),
            "a token was printed:\n{tested}"
        );
    }
}

#[tokio::test]
async fn a_working_mailbox_passes_every_step_and_sends_a_test_message() {
    let inbox: [&[u8]; 2] = [
        b"Subject: one\r\n\r\nfirst\r\n",
        b"Subject: two\r\n\r\nsecond\r\n",
    ];
    let world = World::with_inbox(ALICE, ALICE_PW, &inbox).await;
    let dropped = b"Subject: one\r\n\r\nfirst\r\n";
    world.pop3.deliver(ALICE, dropped);

    let tested = mailbox_test(&world, &["Alice@Contoso.com", "--send-to", BOB]).await;
    assert!(tested.status.success(), "{tested}");
    for step in ["token", "imap", "pop3", "smtp", "send"] {
        assert_eq!(tested.outcome(step), "ok", "{step}:\n{tested}");
    }
    assert!(
        tested
            .line("token")
            .contains("refreshed for alice@contoso.com"),
        "{tested}"
    );
    assert!(
        tested.line("imap").ends_with(&format!(
            "{}: logged in as {ALICE}; INBOX has 2 messages",
            world.imap.addr()
        )),
        "{tested}"
    );
    let stat = format!("logged in as {ALICE}; 1 message, {} bytes", dropped.len());
    assert!(tested.line("pop3").contains(&stat), "{tested}");
    assert!(
        tested.line("send").contains(&format!("to {BOB}: 250 ")),
        "{tested}"
    );
    assert!(tested.stdout.ends_with("all steps passed\n"), "{tested}");
    assert_no_tokens(&world, &tested);

    let sent = world.smtp.messages();
    assert_eq!(sent.len(), 1, "{tested}");
    let message = &sent[0];
    assert_eq!(
        (
            message.authenticated_as.as_str(),
            message.mail_from.as_str(),
            message.rcpt_to.as_slice()
        ),
        (ALICE, ALICE, [BOB.to_owned()].as_slice())
    );
    let text = String::from_utf8_lossy(&message.data);
    for header in [
        "From: <alice@contoso.com>\r\n",
        "To: <bob@fabrikam.com>\r\n",
        "Subject: m365-relay test message\r\n",
        "Date: ",
        "Message-ID: <",
    ] {
        assert!(text.contains(header), "{header:?} missing:\n{text}");
    }
    // Nothing was changed: the INBOX and the maildrop keep their messages.
    assert_eq!(world.imap.messages("INBOX").len(), 2);
    assert_eq!(world.pop3.messages(ALICE).len(), 1);

    // The refresh rotated the refresh token and the test stored the new one: a second run
    // redeems it, never the old one, and the status file says ok.
    let again = mailbox_test(&world, &[ALICE]).await;
    assert!(again.status.success(), "{again}");
    assert!(!again.stdout.contains("send "), "{again}");
    assert_eq!(world.entra.stale_refresh_token_uses(), 0);
    let status = std::fs::read_to_string(
        world
            .state_dir()
            .join("status")
            .join("alice@contoso.com.json"),
    )
    .expect("status file");
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["state"], "ok", "{status}");
    assert_eq!(
        world.smtp.messages().len(),
        1,
        "no message without --send-to"
    );
    world.check_fakes();
}

#[tokio::test]
async fn smtp_auth_disabled_fails_the_smtp_step_with_the_set_casmailbox_hint() {
    let world = World::new().await;
    world.add_mailbox(ALICE, ALICE_PW);
    world.admin(&["mailbox", "sending", ALICE, "--smtp-via", "xoauth2"], "");
    world.smtp.set_smtp_auth_disabled(true);

    let tested = mailbox_test(&world, &[ALICE, "--send-to", BOB]).await;
    assert!(!tested.status.success(), "{tested}");
    for step in ["token", "imap", "pop3"] {
        assert_eq!(tested.outcome(step), "ok", "{step}:\n{tested}");
    }
    assert_eq!(tested.outcome("smtp"), "FAILED", "{tested}");
    assert!(tested.line("smtp").contains("535 5.7.139"), "{tested}");
    let hint = tested.hint("smtp");
    assert!(
        hint.contains(
            "Set-CASMailbox -Identity alice@contoso.com -SmtpClientAuthenticationDisabled $false"
        ) && hint.contains("Set-TransportConfig -SmtpClientAuthenticationDisabled $false"),
        "{tested}"
    );
    assert_eq!(tested.outcome("send"), "skipped", "{tested}");
    assert!(
        tested
            .stderr
            .contains("1 step of the test of alice@contoso.com failed"),
        "{tested}"
    );
    assert!(world.smtp.messages().is_empty());
    assert_no_tokens(&world, &tested);
    world.check_fakes();
}

#[tokio::test]
async fn with_smtp_auth_disabled_an_auto_mailbox_is_tested_through_graph() {
    let world = World::new().await;
    world.add_mailbox(ALICE, ALICE_PW);
    world.smtp.set_smtp_auth_disabled(true);

    let tested = mailbox_test(&world, &[ALICE, "--send-to", BOB]).await;
    assert!(tested.status.success(), "{tested}");
    assert_eq!(tested.outcome("smtp"), "off", "{tested}");
    assert!(
        tested.line("smtp").contains("535 5.7.139")
            && tested.line("smtp").contains("Microsoft Graph"),
        "{tested}"
    );
    assert_eq!(tested.outcome("graph"), "ok", "{tested}");
    assert_eq!(tested.outcome("send"), "ok", "{tested}");
    assert!(
        tested.line("send").contains("through Microsoft Graph"),
        "{tested}"
    );
    let sent = world.graph.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].to, [BOB.to_string()]);
    assert_no_tokens(&world, &tested);
    world.check_fakes();
}

#[tokio::test]
async fn a_refused_refresh_token_fails_the_token_step_with_the_aadsts_hint() {
    let world = World::new().await;
    world.add_mailbox(ALICE, ALICE_PW);
    world.entra.revoke_refresh_tokens_of(ALICE);

    let tested = mailbox_test(&world, &[ALICE]).await;
    assert!(!tested.status.success(), "{tested}");
    assert_eq!(tested.outcome("token"), "FAILED", "{tested}");
    assert!(tested.line("token").contains("AADSTS70000"), "{tested}");
    assert!(
        tested
            .hint("token")
            .contains("sign in again with `m365-relay mailbox authorize alice@contoso.com`"),
        "{tested}"
    );
    for step in ["imap", "pop3", "smtp"] {
        assert_eq!(tested.outcome(step), "skipped", "{step}:\n{tested}");
    }
    let status = std::fs::read_to_string(
        world
            .state_dir()
            .join("status")
            .join("alice@contoso.com.json"),
    )
    .expect("status file");
    assert!(status.contains("needs-reauth"), "{status}");

    // 90 days unused: Entra's AADSTS700082.
    let bob = "bob@contoso.com";
    world.add_mailbox(bob, "bob's password");
    let rt = world
        .entra
        .latest_refresh_token(TENANT, CLIENT_ID, bob)
        .expect("bob's refresh token");
    world.entra.expire_refresh_token(&rt);
    let tested = mailbox_test(&world, &[bob]).await;
    assert!(!tested.status.success(), "{tested}");
    assert!(tested.line("token").contains("AADSTS700082"), "{tested}");
    assert!(
        tested
            .hint("token")
            .contains("expired after 90 days without use"),
        "{tested}"
    );
    assert_eq!(world.imap.connections() + world.pop3.connections(), 0);
    world.check_fakes();
}

#[tokio::test]
async fn a_mailbox_without_a_token_is_told_to_authorize() {
    let world = World::new().await;
    world.register(ALICE);

    let tested = mailbox_test(&world, &[ALICE]).await;
    assert!(!tested.status.success(), "{tested}");
    assert_eq!(tested.outcome("token"), "FAILED", "{tested}");
    assert!(
        tested
            .hint("token")
            .contains("`m365-relay mailbox authorize alice@contoso.com`"),
        "{tested}"
    );
    assert_eq!(world.entra.token_requests(), 0, "nothing to redeem");

    let tested = mailbox_test(&world, &["nobody@contoso.com"]).await;
    assert!(!tested.status.success());
    assert!(tested.stderr.contains("not registered"), "{tested}");
    world.check_fakes();
}

#[tokio::test]
async fn a_shared_mailbox_without_full_access_fails_imap_with_the_full_access_hint() {
    let world = World::new().await;
    world.add_mailbox(ALICE, ALICE_PW);
    world.admin(&["mailbox", "add", SHARED, "--token-from", ALICE], "");
    // Only POP3 and SMTP know that alice may open the shared mailbox.
    world.pop3.grant_delegate(SHARED, ALICE);
    world.smtp.grant_delegate(SHARED, ALICE);

    let tested = mailbox_test(&world, &[SHARED]).await;
    assert!(!tested.status.success(), "{tested}");
    assert!(
        tested
            .stdout
            .starts_with("testing helpdesk@contoso.com with the token of alice@contoso.com\n"),
        "{tested}"
    );
    assert!(
        tested
            .line("token")
            .contains("refreshed for alice@contoso.com"),
        "{tested}"
    );
    assert_eq!(tested.outcome("imap"), "FAILED", "{tested}");
    assert!(
        tested.line("imap").contains("NO AUTHENTICATE failed."),
        "{tested}"
    );
    assert!(
        tested.hint("imap").contains(
            "Add-MailboxPermission -Identity helpdesk@contoso.com -User alice@contoso.com \
             -AccessRights FullAccess"
        ),
        "{tested}"
    );
    for step in ["pop3", "smtp"] {
        assert_eq!(tested.outcome(step), "ok", "{step}:\n{tested}");
    }
    let logins = world.pop3.auth_attempts();
    assert_eq!(logins.len(), 1);
    assert_eq!(logins[0].user, SHARED, "user= is the shared mailbox");
    world.check_fakes();
}

#[tokio::test]
async fn an_app_only_mailbox_gets_a_client_credentials_token_and_service_principal_hints() {
    let world = World::new().await;
    world.register_robot(&[]);
    // The service principal has Full Access in IMAP's and SMTP's eyes, not in POP3's.
    world.imap.grant_app_access(ROBOT, ROBOT_APP);
    world.smtp.grant_app_access(ROBOT, ROBOT_APP);

    let tested = mailbox_test(&world, &[ROBOT]).await;
    assert!(!tested.status.success(), "{tested}");
    assert!(
        tested
            .line("token")
            .contains("app-only (client credentials) for robot@contoso.com"),
        "{tested}"
    );
    for step in ["token", "imap", "smtp"] {
        assert_eq!(tested.outcome(step), "ok", "{step}:\n{tested}");
    }
    assert_eq!(tested.outcome("pop3"), "FAILED", "{tested}");
    assert!(
        tested.line("pop3").contains("-ERR Authentication failure"),
        "{tested}"
    );
    let hint = tested.hint("pop3");
    for part in [
        "New-ServicePrincipal",
        "not of the App registration",
        "Add-MailboxPermission -Identity robot@contoso.com",
        "-PopEnabled $true",
    ] {
        assert!(hint.contains(part), "{part}:\n{tested}");
    }
    let requests = world.entra.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(
        requests[0].form.get("grant_type").map(String::as_str),
        Some("client_credentials")
    );
    world.check_fakes();
}

#[tokio::test]
async fn an_unreachable_smtp_upstream_gets_the_firewall_hint() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let world = World::with_upstream(Some(closed)).await;
    world.add_mailbox(ALICE, ALICE_PW);

    let tested = mailbox_test(&world, &[ALICE]).await;
    assert!(!tested.status.success(), "{tested}");
    assert_eq!(tested.outcome("smtp"), "FAILED", "{tested}");
    assert!(
        tested
            .line("smtp")
            .contains(&format!("upstream {closed} unreachable")),
        "{tested}"
    );
    assert!(
        tested.hint("smtp").contains(&format!(
            "the relay cannot reach {closed}: allow outgoing connections to it in the firewall"
        )),
        "{tested}"
    );
    world.check_fakes();
}
