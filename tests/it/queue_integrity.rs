//! The queue's integrity against its own storage and Exchange's rules: an envelope
//! changed in the state folder (recipients, mailbox) no longer opens its sealed body and
//! is never delivered; the `MAIL FROM` parameters a queued client gave (SMTPUTF8,
//! BODY=8BITMIME) reach Exchange; the null sender is refused on the queue way.

use std::time::{Duration, Instant};

use m365_relay::config::Config;
use m365_relay::state::{Envelope, MessageKind, OutboundQueue};

use crate::harness::{RelayProcess, World};

const ALICE: &str = "alice@contoso.com";
const ALICE_PW: &str = "alice-local-password";
const MALLORY: &str = "mallory@evil.example";

/// A world with alice queued (`delivery = queue`), its relay not started.
async fn queued_world() -> World {
    let world = World::new().await;
    world.add_mailbox(ALICE, ALICE_PW);
    world.admin(&["mailbox", "sending", ALICE, "--delivery", "queue"], "");
    world
}

fn queue_of(world: &World) -> std::sync::Arc<dyn OutboundQueue> {
    let config = Config::load(Some(&world.config_path)).unwrap();
    let state = m365_relay::state::open(&config).unwrap();
    state.queue().expect("the files backend keeps a queue")
}

fn envelope(to: &str) -> Envelope {
    Envelope {
        mailbox: ALICE.into(),
        sender: ALICE.into(),
        recipients: vec![to.into()],
        client: None,
        message_id: None,
        kind: MessageKind::Message,
        parameters: Vec::new(),
    }
}

/// `text` with every `carol@example.com` made mallory's.
fn to_mallory(text: &[u8]) -> Vec<u8> {
    String::from_utf8(text.to_vec())
        .unwrap()
        .replace("carol@example.com", MALLORY)
        .into_bytes()
}

#[tokio::test]
async fn an_envelope_changed_in_the_state_folder_is_never_delivered() {
    let world = queued_world().await;
    let queue = queue_of(&world);
    let body = b"Subject: payroll\r\n\r\nfigures\r\n";
    let tampered = queue.enqueue(&envelope("carol@example.com"), body).unwrap();
    // A second message of the same mailbox, untouched: delivered, so the worker ran.
    let _untouched = queue.enqueue(&envelope("dave@example.com"), body).unwrap();
    drop(queue);
    let dir = world.state_dir().join("queue");
    // The header line of the message file and a bookkeeping file, both rewritten.
    let msg = dir.join(format!("{}.msg", tampered.id));
    let bytes = std::fs::read(&msg).unwrap();
    let at = bytes.iter().position(|b| *b == b'\n').unwrap();
    let mut forged = to_mallory(&bytes[..at]);
    forged.extend_from_slice(&bytes[at..]);
    std::fs::write(&msg, forged).unwrap();
    let mut entry = tampered.clone();
    entry.envelope.recipients = vec![MALLORY.into()];
    let json = dir.join(format!("{}.json", tampered.id));
    std::fs::write(&json, serde_json::to_vec(&entry).unwrap()).unwrap();

    let mut relay = RelayProcess::start(&world);
    let line = relay.wait_for_log("cannot be read or opened", Duration::from_secs(20));
    assert!(line.contains(tampered.id.as_str()), "{line}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while world.smtp.messages().is_empty() {
        assert!(Instant::now() < deadline, "the untouched message arrives");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let delivered = world.smtp.messages();
    assert_eq!(delivered.len(), 1, "only the untouched one");
    let rcpts: Vec<String> = world
        .smtp
        .commands()
        .into_iter()
        .filter(|c| c.line.starts_with("RCPT TO:"))
        .map(|c| c.line)
        .collect();
    assert_eq!(rcpts, vec!["RCPT TO:<dave@example.com>".to_owned()]);
    assert!(msg.exists() && json.exists(), "the changed message is kept");
    let shown = world.admin(&["queue", "show", tampered.id.as_str()], "");
    assert!(shown.contains(tampered.id.as_str()), "{shown}");
    relay.signal("TERM");
    relay.wait_exit(Duration::from_secs(20));
}

/// Logs in as alice and gives `MAIL FROM:<>`; prints the reply.
const NULL_SENDER: &str = r#"
import smtplib, ssl, sys
port, cafile, user, password = sys.argv[1:5]
s = smtplib.SMTP("127.0.0.1", int(port), timeout=60)
s.starttls(context=ssl.create_default_context(cafile=cafile))
s.login(user, password)
code, text = s.mail("")
print("mail", code, text.decode())
s.quit()
"#;

#[tokio::test]
async fn the_null_sender_is_refused_on_the_queue_way_and_logged() {
    let mut world = queued_world().await;
    world.start().await;
    let args = [
        world.smtp_port().to_string(),
        crate::harness::path_str(&world.ca_path),
        ALICE.into(),
        ALICE_PW.into(),
    ];
    let out = crate::harness::python(NULL_SENDER, &args).await;
    assert_eq!(
        out.trim(),
        "mail 550 5.7.1 The null sender is not accepted for queued delivery",
        "{out}"
    );
    let path = world.state_dir().join("delivery-log/current.jsonl");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if text
            .lines()
            .any(|l| l.contains("\"refused\"") && l.contains("null sender"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "no refused line: {text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Logs in as alice and sends one message with `MAIL FROM` parameters; prints the replies.
const WITH_PARAMETERS: &str = r#"
import smtplib, ssl, sys
port, cafile, user, password, sender, to = sys.argv[1:7]
s = smtplib.SMTP("127.0.0.1", int(port), timeout=60)
s.starttls(context=ssl.create_default_context(cafile=cafile))
s.login(user, password)
print("mail", *s.mail(sender, ["SMTPUTF8", "body=8bitmime", "SIZE=100"]))
print("rcpt", *s.rcpt(to))
print("data", *s.data(b"Subject: gr\xc3\xbc\xc3\x9fe\r\n\r\nhall\xc3\xb6\r\n"))
s.quit()
"#;

#[tokio::test]
async fn a_queued_message_keeps_its_mail_from_parameters_up_to_exchange() {
    let mut world = queued_world().await;
    world.start().await;
    let args = [
        world.smtp_port().to_string(),
        crate::harness::path_str(&world.ca_path),
        ALICE.into(),
        ALICE_PW.into(),
        ALICE.into(),
        "carol@example.com".into(),
    ];
    let out = crate::harness::python(WITH_PARAMETERS, &args).await;
    assert!(out.contains("data 250 b'2.0.0 Ok: queued as "), "{out}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while world.smtp.messages().is_empty() {
        assert!(Instant::now() < deadline, "delivered: {out}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mail: Vec<String> = world
        .smtp
        .commands()
        .into_iter()
        .filter(|c| c.line.starts_with("MAIL FROM:"))
        .map(|c| c.line)
        .collect();
    assert_eq!(
        mail,
        ["MAIL FROM:<alice@contoso.com> SMTPUTF8 BODY=8BITMIME"],
        "{out}"
    );
}
