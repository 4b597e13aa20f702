//! The relay's memory while it relays a large message: the real binary, as its own
//! process, between Python's imaplib and the fake Exchange IMAP server. Its resident
//! memory must not grow with the message: the pipe holds two fixed buffers per session.

use std::time::Duration;

use crate::harness::{RelayProcess, World, big_message, path_str, python};

const ALICE: &str = "alice@contoso.com";
const ALICE_PW: &str = "correct horse battery staple";

/// Resets the peak (`VmHWM`) of `pid` to its current resident memory (Linux ≥ 4.0).
fn reset_peak(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("reset the peak");
}

/// `VmRSS` and `VmHWM` (peak) of `pid`, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .expect("field")
    };
    (field("VmRSS:"), field("VmHWM:"))
}

const FETCH: &str = r#"
import imaplib, ssl, sys, hashlib
port, ca, user, password, n = sys.argv[1:]
m = imaplib.IMAP4_SSL("127.0.0.1", int(port), ssl_context=ssl.create_default_context(cafile=ca), timeout=60)
m.login(user, password)
m.select("INBOX")
typ, data = m.fetch(n, "(BODY.PEEK[])")
print(hashlib.sha256(data[0][1]).hexdigest())
m.logout()
"#;

#[tokio::test]
async fn relaying_a_30_mb_fetch_keeps_the_relays_memory_flat() {
    let message = big_message(30 * 1024 * 1024);
    let warm_up = b"Subject: warm-up\r\n\r\nsmall\r\n";
    let world = World::with_inbox(ALICE, ALICE_PW, &[warm_up, &message]).await;
    let relay = RelayProcess::start(&world);
    let port = relay.port("imaps");
    let args = |n: &str| {
        vec![
            port.to_string(),
            path_str(&world.ca_path),
            ALICE.into(),
            ALICE_PW.into(),
            n.into(),
        ]
    };
    // Warm up: the first login loads the registry, checks the password (argon2id alone
    // takes 19 MiB for a moment), gets a token, builds TLS sessions.
    python(FETCH, &args("1")).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    reset_peak(relay.child.id());
    let (before, _) = memory_kib(relay.child.id());
    let digest = python(FETCH, &args("2")).await;
    let (after, peak) = memory_kib(relay.child.id());
    drop(relay);

    let expected = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &message);
    let hex: String = expected
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(digest.trim(), hex, "30 MB arrive byte for byte");
    eprintln!(
        "relay memory: {before} KiB before the 30 MB fetch, {after} KiB after, peak {peak} KiB (growth at peak {} KiB)",
        peak.saturating_sub(before)
    );
    assert!(
        peak.saturating_sub(before) < 8 * 1024,
        "the relay's peak memory grew by {} KiB while relaying 30 MB",
        peak.saturating_sub(before)
    );
}
