//! A client cannot forge the relay's log lines (issue 12, item 6): a user name with CR or
//! LF in it (SASL PLAIN carries any octets, an IMAP literal too) is logged escaped, and a
//! long one is cut.

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::harness::{RelayProcess, World};
use crate::support::line_client::LineClient;

const FORGED: &str = "2026-12-06T00:00:00.000000Z  INFO login ok mailbox=ceo@contoso.com";

#[tokio::test]
async fn a_user_name_with_line_ends_cannot_forge_a_log_line() {
    let mut world = World::new().await;
    world.add_mailbox("alice@contoso.com", "alice-local-password");
    world.start().await;
    let relay = RelayProcess::start(&world);

    let user = format!("nobody@contoso.com\r\n{FORGED}\n{}", "x".repeat(5_000));
    let addr = ([127, 0, 0, 1], relay.port("smtp")).into();
    let mut smtp = LineClient::connect(addr).await;
    smtp.read_smtp_reply().await;
    smtp.smtp("EHLO forger").await;
    let plain = STANDARD.encode(format!("\0{user}\0wrong"));
    let reply = smtp.smtp(&format!("AUTH PLAIN {plain}")).await;
    assert!(reply.starts_with("535"), "{reply}");

    let addr = ([127, 0, 0, 1], relay.port("imap")).into();
    let mut imap = LineClient::connect(addr).await;
    imap.read_line().await.expect("greeting");
    let literal = format!("nobody\r\n{FORGED}");
    imap.send(&format!("a LOGIN {{{}+}}", literal.len())).await;
    imap.send_raw(literal.as_bytes()).await;
    imap.send(" wrong").await;
    let reply = imap.read_line().await.expect("reply");
    assert!(reply.starts_with("a NO"), "{reply}");

    let mut logged = Vec::new();
    let until = Instant::now() + Duration::from_secs(3);
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        match relay.log.recv_timeout(left) {
            Ok(line) => logged.push(line),
            Err(_) => break,
        }
    }
    let failures: Vec<_> = logged
        .iter()
        .filter(|l| l.contains("login failed"))
        .collect();
    assert_eq!(failures.len(), 2, "{logged:#?}");
    assert!(
        !logged.iter().any(|l| l.starts_with("2026-12-06T00:00:00")),
        "a forged line: {logged:#?}"
    );
    assert!(
        failures
            .iter()
            .all(|l| l.contains("nobody") && l.contains("\\r\\n2026-12-06")),
        "escaped: {failures:#?}"
    );
    assert!(
        failures.iter().all(|l| l.len() < 2_000),
        "a long user name is cut: {failures:#?}"
    );
}
