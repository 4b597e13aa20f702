//! SMTP submission through Microsoft Graph, end to end: Python's smtplib logs in to the
//! relay with a password, the relay sends with `sendMail` (or a draft and an upload session
//! for large mail) as the mailbox, and the fake Graph checks the token's audience and scope
//! and records what went out. Covers the `auto` switch on `535 5.7.139`, Bcc recipients,
//! refusals and throttling, and the sender rules before anything reaches Graph.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::harness::{ROBOT, World};

const ALICE: &str = "alice@contoso.com";
const ALICE_PW: &str = "alice-local-password";

async fn send(world: &World, sender: &str, to: &[&str], message: &[u8]) -> String {
    static SENT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = SENT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = world.file(&format!("outgoing-{n}.eml"), message);
    let login = (ALICE, ALICE_PW);
    world
        .smtplib_send(login, sender, &to.join(","), &path)
        .await
}

async fn world(setup: impl FnOnce(&World)) -> World {
    World::started_after(ALICE, ALICE_PW, setup).await
}

fn via_graph(world: &World) {
    world.admin(&["mailbox", "sending", ALICE, "--smtp-via", "graph"], "");
}

fn memo() -> Vec<u8> {
    b"From: Alice <alice@contoso.com>\r\nTo: Bob <bob@example.com>\r\nCc: carol@example.com\r\nSubject: Quarterly numbers\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello Bob,\r\n.a line that starts with a dot\r\n".to_vec()
}

#[tokio::test]
async fn smtp_auth_disabled_switches_the_mailbox_to_graph_and_bcc_recipients_receive_it() {
    let world = world(|_| {}).await;
    world.smtp.set_smtp_auth_disabled(true);
    let to = ["bob@example.com", "carol@example.com", "dave@example.com"];
    let out = send(&world, ALICE, &to, &memo()).await;
    assert_eq!(out, "sent []");
    let sent = world.graph.sent();
    assert_eq!(sent.len(), 1, "Graph accepted the message once");
    let mail = &sent[0];
    assert_eq!(mail.mailbox, ALICE);
    assert_eq!(mail.via, "sendMail-mime");
    assert_eq!(mail.to, ["bob@example.com"]);
    assert_eq!(mail.cc, ["carol@example.com"]);
    assert_eq!(
        mail.bcc,
        ["dave@example.com"],
        "the envelope-only recipient"
    );
    assert!(mail.save_to_sent_items);
    let mime = String::from_utf8_lossy(mail.mime().unwrap()).into_owned();
    assert!(
        mime.contains("\r\n.a line that starts with a dot\r\n"),
        "{mime}"
    );
    assert!(!mime.contains("\r\n..a line"), "dot-unstuffed: {mime}");
    assert!(world.smtp.messages().is_empty());

    // Remembered: the next session goes to Graph without trying SMTP AUTH again.
    let tried = world.smtp.auth_attempts().len();
    assert_eq!(
        send(&world, ALICE, &["bob@example.com"], &memo()).await,
        "sent []"
    );
    assert_eq!(world.smtp.auth_attempts().len(), tried);
    assert_eq!(world.graph.sent().len(), 2);
    assert!(
        world
            .state_dir()
            .join("graph-switch")
            .join(format!("{ALICE}.json"))
            .is_file()
    );
    let shown = world.admin(&["mailbox", "sending", ALICE], "");
    assert!(shown.contains("switched to Microsoft Graph"), "{shown}");
    world.check_fakes();
}

#[tokio::test]
async fn the_client_sees_250_only_after_graph_accepted() {
    let world = world(via_graph).await;
    world.graph.fail_next(403, "ErrorSendAsDenied", None);
    let out = send(&world, ALICE, &["bob@example.com"], &memo()).await;
    assert!(out.starts_with("data-refused 550 5.7.1"), "{out}");
    assert!(world.graph.sent().is_empty());
    world.graph.fail_next(500, "ErrorInternalServerError", None);
    let out = send(&world, ALICE, &["bob@example.com"], &memo()).await;
    assert!(out.starts_with("data-refused 451 4."), "{out}");
    assert!(world.graph.sent().is_empty());
    assert_eq!(
        send(&world, ALICE, &["bob@example.com"], &memo()).await,
        "sent []"
    );
    world.check_fakes();
}

#[tokio::test]
async fn graph_throttling_is_honoured_with_temporary_replies() {
    let world = world(via_graph).await;
    world
        .graph
        .fail_next(429, "ApplicationThrottled", Some(120));
    let out = send(&world, ALICE, &["bob@example.com"], &memo()).await;
    assert!(
        out.starts_with("data-refused 451 4.7.0") && out.contains("120"),
        "{out}"
    );
    // Until the wait is over the relay answers for Graph, without asking it.
    let requests = world.graph.requests().len();
    let out = send(&world, ALICE, &["bob@example.com"], &memo()).await;
    assert!(
        out.starts_with("sender-refused 451 4.7.0") && out.contains("throttled"),
        "{out}"
    );
    assert_eq!(world.graph.requests().len(), requests);
    assert!(world.graph.sent().is_empty());
    world.check_fakes();
}

#[tokio::test]
async fn a_short_retry_after_is_waited_out_and_the_message_goes() {
    let world = world(via_graph).await;
    world.graph.fail_next(429, "ApplicationThrottled", Some(1));
    let out = send(&world, ALICE, &["bob@example.com"], &memo()).await;
    assert_eq!(out, "sent []");
    assert_eq!(world.graph.sent().len(), 1);
    world.check_fakes();
}

#[tokio::test]
async fn a_large_message_goes_through_a_draft_and_an_upload_session() {
    let world = world(via_graph).await;
    let attachment: Vec<u8> = (0..6_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let encoded = STANDARD.encode(&attachment);
    let mut message = b"From: alice@contoso.com\r\nTo: bob@example.com\r\nSubject: scans\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nThe scans.\r\n--b1\r\nContent-Type: application/pdf; name=\"scan.pdf\"\r\nContent-Disposition: attachment; filename=\"scan.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n".to_vec();
    for line in encoded.as_bytes().chunks(76) {
        message.extend_from_slice(line);
        message.extend_from_slice(b"\r\n");
    }
    message.extend_from_slice(b"--b1--\r\n");
    let out = send(
        &world,
        ALICE,
        &["bob@example.com", "erin@example.com"],
        &message,
    )
    .await;
    assert_eq!(out, "sent []");
    let sent = world.graph.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].via, "draft");
    assert_eq!(sent[0].to, ["bob@example.com"]);
    assert_eq!(sent[0].bcc, ["erin@example.com"]);
    let json = sent[0].json().unwrap();
    assert_eq!(json.attachments.len(), 1);
    assert!(json.attachments[0].uploaded);
    assert!(
        json.attachments[0].bytes == attachment,
        "attachment bytes identical"
    );
    world.check_fakes();
}

#[tokio::test]
async fn without_a_copy_in_sent_items_the_message_is_sent_as_json() {
    let world = world(|world| {
        world.admin(
            &[
                "mailbox",
                "sending",
                ALICE,
                "--smtp-via",
                "graph",
                "--save-to-sent-items",
                "false",
            ],
            "",
        );
    })
    .await;
    assert_eq!(
        send(&world, ALICE, &["bob@example.com"], &memo()).await,
        "sent []"
    );
    let sent = world.graph.sent();
    assert_eq!(sent[0].via, "sendMail-json");
    assert!(!sent[0].save_to_sent_items);
    world.check_fakes();
}

#[tokio::test]
async fn sender_rules_and_size_are_checked_before_graph_is_asked() {
    let world = world(|world| {
        via_graph(world);
        world.limits("max_message_bytes = 100000");
    })
    .await;
    let forged = String::from_utf8(memo())
        .unwrap()
        .replace("From: Alice <alice@contoso.com>", "From: ceo@contoso.com");
    let out = send(&world, ALICE, &["bob@example.com"], forged.as_bytes()).await;
    assert!(
        out.starts_with("data-refused 550 5.7.1 Header sender <ceo@contoso.com>"),
        "{out}"
    );
    let mut big = memo();
    big.extend(std::iter::repeat_n(b"0123456789abcdef\r\n".as_slice(), 8000).flatten());
    let out = send(&world, ALICE, &["bob@example.com"], &big).await;
    assert!(
        out.starts_with("sender-refused 552 5.3.4"),
        "SIZE= declared by smtplib: {out}"
    );
    assert!(world.graph.requests().is_empty(), "Graph was never asked");
    world.check_fakes();
}

#[tokio::test]
async fn an_app_only_mailbox_sends_through_graph_with_the_default_scope() {
    const ROBOT_PW: &str = "robot-local-password";
    let mut world = World::new().await;
    world.graph.add_user(ROBOT);
    world.register_robot(&["--smtp-via", "graph"]);
    world.set_password(ROBOT, ROBOT_PW);
    world.start().await;
    let path = world.file(
        "scan.eml",
        b"From: robot@contoso.com\r\nTo: bob@example.com\r\nSubject: scan\r\n\r\nscan attached\r\n",
    );
    let login = (ROBOT, ROBOT_PW);
    let out = world
        .smtplib_send(login, ROBOT, "bob@example.com", &path)
        .await;
    assert_eq!(out, "sent []");
    let sent = world.graph.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].mailbox, ROBOT);
    // The background refresher may also fetch the mailbox's Outlook token (for IMAP and
    // POP3) at start; of Graph there is exactly one grant.
    let scopes: Vec<String> = world
        .entra
        .requests()
        .iter()
        .filter_map(|r| r.form.get("scope").cloned())
        .filter(|scope| scope.contains("graph"))
        .collect();
    assert_eq!(
        scopes,
        ["https://graph.microsoft.com/.default"],
        "one client-credentials grant for Graph"
    );
    world.check_fakes();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_four_messages_of_a_mailbox_are_at_graph_at_once() {
    let world = world(via_graph).await;
    world.graph.set_delay(std::time::Duration::from_secs(2));
    let message = memo();
    // One message alone: one Graph delay plus the client's own start-up.
    let started = std::time::Instant::now();
    assert_eq!(
        send(&world, ALICE, &["bob@example.com"], &message).await,
        "sent []"
    );
    let alone = started.elapsed();
    let started = std::time::Instant::now();
    let sends: Vec<_> = (0..5)
        .map(|_| send(&world, ALICE, &["bob@example.com"], &message))
        .collect();
    let outs = futures::future::join_all(sends).await;
    assert!(outs.iter().all(|o| o == "sent []"), "{outs:?}");
    // Four at once take one delay; the fifth waits for a turn and takes a second one.
    let together = started.elapsed();
    assert!(
        together >= alone + std::time::Duration::from_millis(1500),
        "five together {together:?}, one alone {alone:?}"
    );
    assert_eq!(world.graph.sent().len(), 6);
    world.check_fakes();
}
