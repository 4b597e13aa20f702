//! SMTP after login over XOAUTH2: the relay reads each transaction, refuses senders a
//! mailbox may not use before Exchange sees the message, keeps Microsoft's sending limits
//! with temporary replies, and serves devices on trusted networks without AUTH. Driven
//! with Python's smtplib and a raw SMTP client.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::harness::{World, python};
use crate::support::line_client::LineClient;

const ALICE: &str = "alice@contoso.com";
const ALICE_PW: &str = "alice-local-password";
const HELPDESK: &str = "helpdesk@contoso.com";

async fn world_with_alice(setup: impl FnOnce(&World)) -> World {
    World::started_after(ALICE, ALICE_PW, setup).await
}

/// [`world_with_alice`] with these `[limits]` lines.
async fn world_with_limits(limits: &str) -> World {
    world_with_alice(|world| world.limits(limits)).await
}

/// Sends a message to bob with smtplib as alice: `sender` in MAIL FROM, `from` in the header.
async fn send_to_bob(world: &World, sender: &str, from: &str) -> String {
    let path = world.file("outgoing.eml", message(from, "bob@example.com").as_bytes());
    let login = (ALICE, ALICE_PW);
    world
        .smtplib_send(login, sender, "bob@example.com", &path)
        .await
}

fn message(from: &str, to: &str) -> String {
    format!("From: <{from}>\r\nTo: <{to}>\r\nSubject: invoice\r\n\r\nHello\r\n")
}

#[tokio::test]
async fn a_sender_the_mailbox_may_not_use_is_refused_at_mail_from() {
    let world = world_with_alice(|_| {}).await;
    let out = send_to_bob(&world, "ceo@contoso.com", ALICE).await;
    assert!(
        out.starts_with("sender-refused 550 5.7.1 Sender <ceo@contoso.com> is not allowed"),
        "{out}"
    );
    assert!(out.contains("allowed senders: alice@contoso.com"), "{out}");
    assert!(world.smtp.messages().is_empty());
    world.check_fakes();
}

#[tokio::test]
async fn a_header_from_the_mailbox_may_not_use_is_refused_before_the_message_is_accepted() {
    let world = world_with_alice(|_| {}).await;
    let out = send_to_bob(&world, ALICE, "ceo@contoso.com").await;
    assert!(
        out.starts_with("data-refused 550 5.7.1 Header sender <ceo@contoso.com>"),
        "{out}"
    );
    assert!(
        world.smtp.messages().is_empty(),
        "Exchange never saw the message"
    );

    // In one session: refused, then a good message; the upstream transaction was reset.
    let mut c = Raw::login(&world).await;
    c.transaction(ALICE, &["bob@example.com"]).await;
    let refused = message("ceo@contoso.com", "bob@example.com");
    let reply = c.data_reply(&refused).await;
    assert!(reply.starts_with("550 5.7.1 Header sender"), "{reply}");
    c.transaction(ALICE, &["bob@example.com"]).await;
    let dotted = format!("{}..a dot line\r\n", message(ALICE, "bob@example.com"));
    let reply = c.data_reply(&dotted).await;
    assert!(reply.starts_with("250"), "{reply}");
    let sent = world.smtp.messages();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].mail_from, ALICE);
    assert_eq!(sent[0].rcpt_to, ["bob@example.com"]);
    assert!(
        sent[0].data.ends_with(b"Hello\r\n.a dot line\r\n"),
        "{:?}",
        String::from_utf8_lossy(&sent[0].data)
    );
    world.check_fakes();
}

#[tokio::test]
async fn allowed_senders_can_be_listed_per_mailbox() {
    let world = world_with_alice(|world| {
        world.admin(&["mailbox", "add", HELPDESK, "--token-from", ALICE], "");
        world.admin(
            &[
                "mailbox",
                "sending",
                ALICE,
                "--allowed-from",
                "@billing.contoso.com",
                "--allowed-from",
                "sales@contoso.com",
            ],
            "",
        );
    })
    .await;
    let listed = world.admin(&["mailbox", "sending", ALICE], "");
    assert!(
        listed.contains("allowed senders: @billing.contoso.com, sales@contoso.com"),
        "{listed}"
    );
    let out = send_to_bob(&world, "invoices@billing.contoso.com", "sales@contoso.com").await;
    assert_eq!(out, "sent []");
    // The list replaces the default: alice herself is no longer allowed.
    let out = send_to_bob(&world, ALICE, ALICE).await;
    assert!(out.starts_with("sender-refused 550 5.7.1"), "{out}");
    let out = send_to_bob(&world, "sales@contoso.com", ALICE).await;
    assert!(
        out.starts_with("data-refused 550 5.7.1 Header sender <alice@contoso.com>"),
        "{out}"
    );
    assert_eq!(world.smtp.messages().len(), 1);
    world.check_fakes();
}

#[tokio::test]
async fn by_default_a_delegate_may_send_as_its_shared_mailboxes() {
    let world = world_with_alice(|world| {
        world.admin(&["mailbox", "add", HELPDESK, "--token-from", ALICE], "");
    })
    .await;
    let out = send_to_bob(&world, HELPDESK, HELPDESK).await;
    assert_eq!(out, "sent []");
    world.check_fakes();
}

/// MAIL FROM alice, then RCPT TO `{prefix}1@example.com` to `{prefix}{count}@example.com`;
/// asserts that all but the last are accepted, and returns the reply to the last.
async fn recipients_until_the_last(c: &mut Raw, prefix: &str, count: u32) -> String {
    c.send(&format!("MAIL FROM:<{ALICE}>\r\n")).await;
    assert!(c.reply().await.starts_with("250"));
    for n in 1..count {
        c.send(&format!("RCPT TO:<{prefix}{n}@example.com>\r\n"))
            .await;
        let reply = c.reply().await;
        assert!(reply.starts_with("250"), "{reply}");
    }
    c.send(&format!("RCPT TO:<{prefix}{count}@example.com>\r\n"))
        .await;
    c.reply().await
}

#[tokio::test]
async fn sending_limits_answer_with_temporary_replies() {
    let world = world_with_limits("smtp_messages_per_minute = 2\nsmtp_recipients_per_message = 3\nsmtp_recipients_per_day = 5").await;
    let mut c = Raw::login(&world).await;
    // Recipients per message: the 4th gets 452 4.5.3, the message goes to the first 3.
    let reply = recipients_until_the_last(&mut c, "r", 4).await;
    assert!(reply.starts_with("452 4.5.3 "), "{reply}");
    c.data(&message(ALICE, "r1@example.com")).await;
    // Recipients per day: 3 sent, 2 left.
    let reply = recipients_until_the_last(&mut c, "s", 3).await;
    assert!(
        reply.starts_with("451 4.7.0 ") && reply.contains("24 hours"),
        "{reply}"
    );
    c.data(&message(ALICE, "s1@example.com")).await;
    // Messages per minute: two sent, the third must wait.
    c.send(&format!("MAIL FROM:<{ALICE}>\r\n")).await;
    let reply = c.reply().await;
    assert!(
        reply.starts_with("451 4.7.0 ") && reply.contains("last minute"),
        "{reply}"
    );
    let sent = world.smtp.messages();
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0].rcpt_to.len(), 3);
    assert_eq!(sent[1].rcpt_to.len(), 2);
    world.check_fakes();
}

/// Parallel sessions of one mailbox cannot pass a limit together: each message is counted
/// from its MAIL FROM (issue 12, item 6).
#[tokio::test]
async fn parallel_sessions_share_the_sending_limits() {
    let world =
        world_with_limits("smtp_messages_per_minute = 2\nsmtp_recipients_per_day = 100").await;
    let mut sessions = Vec::new();
    for _ in 0..3 {
        sessions.push(Raw::login(&world).await);
    }
    let mut opened = Vec::new();
    for c in &mut sessions {
        c.send(&format!("MAIL FROM:<{ALICE}>\r\n")).await;
        opened.push(c.reply().await);
    }
    assert!(
        opened[0].starts_with("250") && opened[1].starts_with("250"),
        "{opened:?}"
    );
    assert!(opened[2].starts_with("451 4.7.0 "), "{opened:?}");
    for c in &mut sessions[..2] {
        c.send("RCPT TO:<bob@example.com>\r\n").await;
        assert!(c.reply().await.starts_with("250"));
        c.data(&message(ALICE, "bob@example.com")).await;
    }
    assert_eq!(world.smtp.messages().len(), 2);
    world.check_fakes();
}

#[tokio::test]
async fn bdat_chunks_go_upstream_after_the_header_is_checked() {
    let world = world_with_alice(|_| {}).await;
    let mut c = Raw::login(&world).await;
    let mut big = message(ALICE, "bob@example.com").into_bytes();
    big.extend((0..200_000u32).flat_map(|i| format!("{:07}\r\n", i).into_bytes()));
    big.extend_from_slice(b".a line with a dot, not stuffed in BDAT\r\n");
    c.transaction(ALICE, &["bob@example.com"]).await;
    // The first chunk ends inside the header: the relay holds it and answers itself.
    let (first, rest) = big.split_at(12);
    c.send(&format!("BDAT {}\r\n", first.len())).await;
    c.send_bytes(first).await;
    assert_eq!(c.reply().await, "250 2.0.0 12 octets received\r\n");
    let (middle, last) = rest.split_at(rest.len() / 2);
    c.send(&format!("BDAT {}\r\n", middle.len())).await;
    c.send_bytes(middle).await;
    assert!(c.reply().await.starts_with("250"));
    c.send(&format!("BDAT {} LAST\r\n", last.len())).await;
    c.send_bytes(last).await;
    let reply = c.reply().await;
    assert!(reply.starts_with("250"), "{reply}");
    let sent = world.smtp.messages();
    assert_eq!(sent.len(), 1);
    assert!(sent[0].data == big, "byte-identical through BDAT");

    // A forged header From in the first chunk: refused, nothing upstream.
    c.transaction(ALICE, &["bob@example.com"]).await;
    let forged = message("ceo@contoso.com", "bob@example.com");
    c.send(&format!("BDAT {} LAST\r\n{forged}", forged.len()))
        .await;
    assert!(c.reply().await.starts_with("550 5.7.1 Header sender"));
    assert_eq!(world.smtp.messages().len(), 1);
    world.check_fakes();
}

/// smtplib from `source` to the trusted listener, no login.
const TRUSTED_SEND: &str = r#"
import smtplib, sys
port, source, sender, to, message = sys.argv[1:6]
try:
    with smtplib.SMTP("127.0.0.1", int(port), timeout=20, source_address=(source, 0)) as s:
        s.ehlo("scanner")
        print("auth offered" if s.has_extn("auth") else "no auth")
        s.sendmail(sender, [to], message.encode())
        print("sent")
except smtplib.SMTPConnectError as e:
    print("refused", e.smtp_code, e.smtp_error.decode())
except smtplib.SMTPSenderRefused as e:
    print("sender-refused", e.smtp_code)
"#;

#[tokio::test]
async fn a_device_on_a_trusted_network_sends_without_auth_and_others_are_refused() {
    let scanner = "scanner@contoso.com";
    let mut world = World::new().await;
    world.add_mailbox(scanner, "unused-scanner-password");
    world.config_table(&format!(
        "[smtp.trusted]\nlisten = \"127.0.0.1:0\"\nnetworks = [\"127.0.0.2/32\"]\nmailbox = \"{scanner}\""
    ));
    world.start().await;
    let port = world.port("smtp-trusted").to_string();
    let send = |source: &str, sender: &str| {
        let args = [
            port.clone(),
            source.to_owned(),
            sender.to_owned(),
            "bob@example.com".to_owned(),
            message(scanner, "bob@example.com"),
        ];
        async move { python(TRUSTED_SEND, &args).await }
    };
    let out = send("127.0.0.2", scanner).await;
    assert_eq!(out.trim(), "no auth\nsent");
    // Through the queue (devices cannot retry): see queue_accept.rs.
    crate::queue_accept::wait_queued(&world, scanner, 1).await;
    // The sender rules hold here too.
    let out = send("127.0.0.2", "ceo@contoso.com").await;
    assert!(out.ends_with("sender-refused 550\n"), "{out}");
    // The same device from a network not listed is refused at connect.
    let out = send("127.0.0.1", scanner).await;
    assert!(out.starts_with("refused 554 5.7.1"), "{out}");
    world.check_fakes();
}

/// A plaintext SMTP client on loopback (AUTH allowed there by default), logged in as alice.
pub(crate) struct Raw {
    client: LineClient,
}

impl Raw {
    pub(crate) async fn login(world: &World) -> Raw {
        Self::login_as(world, ALICE, ALICE_PW).await
    }

    /// A device on the trusted-network listener: greeted and EHLO'd, no login.
    pub(crate) async fn connect_trusted(world: &World) -> Raw {
        let addr = ([127, 0, 0, 1], world.port("smtp-trusted")).into();
        let mut c = Raw {
            client: LineClient::connect(addr).await,
        };
        assert!(c.reply().await.starts_with("220"));
        c.send("EHLO device\r\n").await;
        c.reply().await;
        c
    }

    pub(crate) async fn login_as(world: &World, user: &str, password: &str) -> Raw {
        let addr = ([127, 0, 0, 1], world.smtp_port()).into();
        let mut c = Raw {
            client: LineClient::connect(addr).await,
        };
        assert!(c.reply().await.starts_with("220"));
        c.send("EHLO raw\r\n").await;
        c.reply().await;
        let plain = STANDARD.encode(format!("\0{user}\0{password}"));
        c.send(&format!("AUTH PLAIN {plain}\r\n")).await;
        let reply = c.reply().await;
        assert!(reply.starts_with("235"), "{reply}");
        c
    }

    pub(crate) async fn transaction(&mut self, from: &str, to: &[&str]) {
        self.send(&format!("MAIL FROM:<{from}>\r\n")).await;
        let reply = self.reply().await;
        assert!(reply.starts_with("250"), "{reply}");
        for rcpt in to {
            self.send(&format!("RCPT TO:<{rcpt}>\r\n")).await;
            let reply = self.reply().await;
            assert!(reply.starts_with("250"), "{reply}");
        }
    }

    pub(crate) async fn data(&mut self, message: &str) {
        let reply = self.data_reply(message).await;
        assert!(reply.starts_with("250"), "{reply}");
    }

    /// DATA, then `message` and its end marker; the reply to the message.
    pub(crate) async fn data_reply(&mut self, message: &str) -> String {
        self.send("DATA\r\n").await;
        assert!(self.reply().await.starts_with("354"));
        self.send(&format!("{message}.\r\n")).await;
        self.reply().await
    }

    pub(crate) async fn send(&mut self, text: &str) {
        self.client.send_raw(text.as_bytes()).await;
    }

    pub(crate) async fn send_bytes(&mut self, bytes: &[u8]) {
        self.client.send_raw(bytes).await;
    }

    /// Asserts that the relay closes the connection without another reply.
    pub(crate) async fn expect_closed(&mut self) {
        self.client.expect_closed().await
    }

    /// One whole reply, its lines joined by `\n`, with a final CRLF.
    pub(crate) async fn reply(&mut self) -> String {
        format!("{}\r\n", self.client.read_smtp_reply().await)
    }
}
