//! Delivering the queue: the client of a `delivery = queue` mailbox hears `250 ... queued
//! as ID` at once, and the relay's workers deliver the message later through the
//! mailbox's route, retrying what Microsoft will not take yet (Graph's `429` with
//! `Retry-After`), and telling the sender (RFC 3464 notices, through the same mailbox)
//! about a permanent refusal, a delay and a message that stayed queued too long. A relay
//! killed with messages in its queue delivers them after its restart. Driven with Python's
//! smtplib against the fake Exchange and Graph.

use std::time::{Duration, Instant};

use crate::harness::{RelayProcess, World, path_str, python};
use crate::support::smtp_delivery::RECIPIENT_NOT_FOUND;

const ALICE: &str = "alice@contoso.com";
const ALICE_PW: &str = "alice-local-password";

/// Logs in as `user` and sends `count` messages from `sender` to `to` on one connection;
/// prints each end-of-DATA reply (`data CODE TEXT`).
const SEND_MANY: &str = r#"
import smtplib, ssl, sys
port, cafile, user, password, sender, to, count = sys.argv[1:8]
s = smtplib.SMTP("127.0.0.1", int(port), timeout=60)
s.starttls(context=ssl.create_default_context(cafile=cafile))
s.login(user, password)
for i in range(int(count)):
    message = ("From: <%s>\r\nTo: <%s>\r\nSubject: note %d\r\nMessage-ID: <note-%d@contoso.com>\r\n\r\nbody %d\r\n"
               % (sender, to, i, i, i)).encode()
    s.mail(sender)
    s.rcpt(to)
    code, text = s.data(message)
    print("data", code, text.decode())
s.quit()
"#;

/// Sends `count` messages as alice to `to` on `port`; the end-of-DATA replies.
async fn send_many(world: &World, port: u16, to: &str, count: usize) -> Vec<String> {
    let args = [
        port.to_string(),
        path_str(&world.ca_path),
        ALICE.into(),
        ALICE_PW.into(),
        ALICE.into(),
        to.into(),
        count.to_string(),
    ];
    let out = python(SEND_MANY, &args).await;
    let replies: Vec<String> = out.lines().map(str::to_owned).collect();
    for reply in &replies {
        assert!(reply.starts_with("data 250 2.0.0 Ok: queued as "), "{out}");
    }
    replies
}

/// The queue id in an end-of-DATA reply.
fn queue_id(reply: &str) -> String {
    reply
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// A world with alice queued (`delivery = queue`), the fakes answering fast;
/// `queue`: `[queue]` keys; `setup` runs before the relay starts.
async fn world_with(queue: &str, setup: impl FnOnce(&World)) -> World {
    let mut world = World::new().await;
    world.add_mailbox(ALICE, ALICE_PW);
    world.admin(&["mailbox", "sending", ALICE, "--delivery", "queue"], "");
    world.config_table(&format!("[queue]\n{queue}"));
    setup(&world);
    world.start().await;
    world
}

/// The delivery log's lines so far.
fn log_lines(world: &World) -> Vec<serde_json::Value> {
    let path = world.state_dir().join("delivery-log/current.jsonl");
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Waits (up to `within`) until `done` holds.
async fn until(what: &str, within: Duration, done: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The queue's bookkeeping of `id`, if the message is still in the queue.
fn entry(world: &World, id: &str) -> Option<serde_json::Value> {
    let path = world.state_dir().join(format!("queue/{id}.json"));
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[tokio::test]
async fn graph_throttling_delays_the_message_and_it_arrives_once_after_the_waits() {
    let world = world_with("retry_min_secs = 1\nretry_max_secs = 1", |w| {
        w.admin(&["mailbox", "sending", ALICE, "--smtp-via", "graph"], "");
        for _ in 0..3 {
            w.graph.fail_next(429, "ApplicationThrottled", Some(2));
        }
    })
    .await;
    let started = Instant::now();
    let replies = send_many(&world, world.smtp_port(), "carol@example.com", 1).await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "250 at once, not after the waits: {:?}",
        started.elapsed()
    );
    let id = queue_id(&replies[0]);
    until("Graph accepted it", Duration::from_secs(30), || {
        !world.graph.sent().is_empty()
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "three Retry-After: 2 answers were waited out (two inline, one by the queue): {:?}",
        started.elapsed()
    );
    until("the log says delivered", Duration::from_secs(5), || {
        log_lines(&world).iter().any(|l| l["event"] == "delivered")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(world.graph.sent().len(), 1, "exactly once");
    assert!(entry(&world, &id).is_none(), "gone from the queue");
    let lines = log_lines(&world);
    let of = |event: &str| -> Vec<&serde_json::Value> {
        let id = id.as_str();
        lines
            .iter()
            .filter(|l| l["event"] == event && l["queue_id"] == id)
            .collect()
    };
    assert_eq!(of("queued").len(), 1, "{lines:?}");
    assert!(!of("deferred").is_empty(), "{lines:?}");
    let deferred = of("deferred")[0]["reply"].as_str().unwrap_or_default();
    assert!(deferred.starts_with("451 4.7.0"), "{deferred}");
    let delivered = of("delivered");
    assert_eq!(delivered.len(), 1, "{lines:?}");
    assert_eq!(delivered[0]["route"], "graph");
    let request_id = delivered[0]["request_id"].as_str().unwrap_or_default();
    assert!(
        request_id.starts_with("8c1a7b2e-"),
        "Graph's request-id: {delivered:?}"
    );
    world.check_fakes();
}

#[tokio::test]
async fn a_550_becomes_a_failed_entry_a_bounced_line_and_a_notice_to_the_sender() {
    let world = world_with("retry_min_secs = 1", |w| {
        w.smtp
            .refuse_recipient("nobody@fabrikam.com", RECIPIENT_NOT_FOUND);
    })
    .await;
    let replies = send_many(&world, world.smtp_port(), "nobody@fabrikam.com", 1).await;
    let id = queue_id(&replies[0]);
    until(
        "the notice reached the sender",
        Duration::from_secs(20),
        || world.smtp.messages().iter().any(|m| m.rcpt_to == [ALICE]),
    )
    .await;
    let messages = world.smtp.messages();
    assert_eq!(messages.len(), 1, "only the notice was taken");
    let notice = &messages[0];
    assert_eq!(notice.mail_from, ALICE, "sent as the mailbox, not <>");
    let text = String::from_utf8_lossy(&notice.data);
    assert!(
        text.contains("Subject: Undelivered Mail Returned to Sender"),
        "{text}"
    );
    assert!(
        text.contains("multipart/report; report-type=delivery-status"),
        "{text}"
    );
    assert!(
        text.contains(
            "Final-Recipient: rfc822; nobody@fabrikam.com\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("Diagnostic-Code: smtp; 550 5.1.1 RESOLVER.ADR.RecipNotFound"),
        "{text}"
    );
    assert!(
        text.contains("Subject: note 0\r\n") && !text.contains("body 0"),
        "headers only: {text}"
    );
    let failed = entry(&world, &id).expect("kept for the admin");
    assert_eq!(failed["state"], "failed", "{failed}");
    until("the bounced line", Duration::from_secs(5), || {
        log_lines(&world)
            .iter()
            .any(|l| l["event"] == "bounced" && l["queue_id"] == id.as_str())
    })
    .await;
    let lines = log_lines(&world);
    let bounced = lines.iter().find(|l| l["event"] == "bounced").unwrap();
    assert!(
        bounced["reply"].as_str().unwrap().starts_with("550 5.1.1"),
        "{bounced}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["event"] == "delivered" && l["recipients"] == serde_json::json!([ALICE])),
        "{lines:?}"
    );
    world.check_fakes();
}

#[tokio::test]
async fn a_delay_notice_then_failure_with_a_notice_when_max_age_passes() {
    let queue = "retry_min_secs = 1\nretry_max_secs = 1\ndelay_warning_secs = 1\nmax_age_secs = 4";
    let world = world_with(queue, |w| {
        w.smtp.refuse_recipient(
            "busy@fabrikam.com",
            "451 4.3.2 System not accepting network messages",
        );
    })
    .await;
    let replies = send_many(&world, world.smtp_port(), "busy@fabrikam.com", 1).await;
    let id = queue_id(&replies[0]);
    let notices = |subject: &str| -> usize {
        let needle = format!("Subject: {subject}");
        world
            .smtp
            .messages()
            .iter()
            .filter(|m| m.rcpt_to == [ALICE] && String::from_utf8_lossy(&m.data).contains(&needle))
            .count()
    };
    until("the delay notice", Duration::from_secs(15), || {
        notices("Delayed Mail") == 1
    })
    .await;
    let delayed = world.smtp.messages();
    let text = String::from_utf8_lossy(&delayed[0].data);
    assert!(
        text.contains("Action: delayed\r\nStatus: 4.3.2\r\n"),
        "{text}"
    );
    until("the failure notice", Duration::from_secs(15), || {
        notices("Undelivered Mail") == 1
    })
    .await;
    assert_eq!(notices("Delayed Mail"), 1, "one delay notice only");
    let failed = entry(&world, &id).expect("kept");
    assert_eq!(failed["state"], "failed");
    assert!(
        failed["last_reply"]
            .as_str()
            .unwrap()
            .starts_with("554 5.4.7"),
        "{failed}"
    );
    let messages = world.smtp.messages();
    let text = String::from_utf8_lossy(&messages.last().unwrap().data);
    assert!(
        text.contains("Action: failed\r\nStatus: 5.4.7\r\n"),
        "{text}"
    );
    world.check_fakes();
}

#[tokio::test]
async fn a_relay_killed_with_50_queued_messages_delivers_them_all_after_its_restart() {
    let world = World::new().await;
    world.add_mailbox(ALICE, ALICE_PW);
    world.admin(&["mailbox", "sending", ALICE, "--delivery", "queue"], "");
    // One message in flight at a time: a kill can catch at most one between Exchange's
    // acceptance and the queue's bookkeeping.
    // (and more than Exchange's 30 a minute, so that the test does not wait for the window)
    world.limits("smtp_connections_per_mailbox = 1\nsmtp_messages_per_minute = 1000");
    world.smtp.slow_data_end(Duration::from_millis(150));
    let mut relay = RelayProcess::start(&world);
    send_many(&world, relay.port("smtp"), "carol@example.com", 50).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while world.smtp.messages().len() < 5 {
        if Instant::now() > deadline {
            let log: Vec<String> = relay.log.try_iter().collect();
            panic!(
                "{} delivered; the relay logged:\n{}",
                world.smtp.messages().len(),
                log.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    relay.signal("KILL");
    relay.wait_exit(Duration::from_secs(10));
    let before = world.smtp.messages().len();
    assert!(
        before < 50,
        "killed with messages still queued ({before} delivered)"
    );
    let mut restarted = RelayProcess::start(&world);
    let unique = || {
        let mut ids: Vec<String> = world
            .smtp
            .messages()
            .iter()
            .filter_map(|m| {
                let text = String::from_utf8_lossy(&m.data).into_owned();
                let at = text.find("Message-ID: ")?;
                Some(text[at..].lines().next()?.to_owned())
            })
            .collect();
        ids.sort();
        ids.dedup();
        ids.len()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while unique() < 50 {
        if Instant::now() > deadline {
            let log: Vec<String> = restarted.log.try_iter().collect();
            panic!(
                "{} of 50 delivered ({before} before the kill); the restarted relay logged:\n{}",
                unique(),
                log.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let total = world.smtp.messages().len();
    assert!(
        (50..=51).contains(&total),
        "{total} deliveries of 50 messages: at most one duplicate"
    );
    restarted.signal("TERM");
    restarted.wait_exit(Duration::from_secs(20));
    world.check_fakes();
}
