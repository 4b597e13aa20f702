//! Two relay PROCESSES on one PostgreSQL (`support/fleet.rs`): a mailbox's messages per
//! minute hold for the fleet, whichever replica its sessions reach, and failed logins
//! spread over the replicas get the source refused on both, as on one relay.

use base64::Engine as _;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::support::fleet::Fleet;

const ALICE: &str = "alice@contoso.com";
const PASSWORD: &str = "correct horse battery staple";
const PER_MINUTE: usize = 3;

/// One message from alice to bob through replica `i` over SMTPS; the reply to `MAIL FROM`
/// (and the message's final reply when it was accepted).
async fn send(fleet: &Fleet, i: usize) -> String {
    let tls = fleet.world.tls_connect(fleet.port(i, "smtps")).await;
    let mut io = BufReader::new(tls.expect("connect to SMTPS"));
    let reply = async |io: &mut BufReader<_>| {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            if io.read_line(&mut line).await.unwrap_or(0) == 0 {
                return format!("{all}closed");
            }
            all.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return all.trim_end().to_owned();
            }
        }
    };
    let greeting = reply(&mut io).await;
    assert!(greeting.starts_with("220"), "{greeting}");
    let plain = base64::engine::general_purpose::STANDARD.encode(format!("\0{ALICE}\0{PASSWORD}"));
    let say = async |io: &mut BufReader<_>, line: String| {
        let stream: &mut tokio_rustls::client::TlsStream<_> = io.get_mut();
        stream.write_all(line.as_bytes()).await.expect("send");
        stream.flush().await.expect("flush");
        reply(io).await
    };
    for (command, code) in [
        ("EHLO app.contoso.com".to_owned(), "250"),
        (format!("AUTH PLAIN {plain}"), "235"),
    ] {
        let answer = say(&mut io, format!("{command}\r\n")).await;
        assert!(answer.starts_with(code), "{command}: {answer}");
    }
    let mail = say(&mut io, format!("MAIL FROM:<{ALICE}>\r\n")).await;
    if !mail.starts_with("250") {
        return mail;
    }
    let rcpt = say(&mut io, "RCPT TO:<bob@example.com>\r\n".into()).await;
    assert!(rcpt.starts_with("250"), "{rcpt}");
    let data = say(&mut io, "DATA\r\n".into()).await;
    assert!(data.starts_with("354"), "{data}");
    let body =
        format!("From: <{ALICE}>\r\nTo: <bob@example.com>\r\nSubject: x\r\n\r\nHello\r\n.\r\n");
    let sent = say(&mut io, body).await;
    let _ = say(&mut io, "QUIT\r\n".into()).await;
    format!("{mail} / {sent}")
}

/// The greeting replica `i` gives on its STARTTLS port (plaintext): `421` when it refuses
/// the source.
async fn greeting(fleet: &Fleet, i: usize) -> String {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", fleet.port(i, "smtp"))).await;
    let mut io = BufReader::new(tcp.expect("connect to SMTP"));
    let mut line = String::new();
    let _ = io.read_line(&mut line).await;
    line
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_relay_processes_share_the_sending_limit_and_the_failed_logins() {
    let mut fleet = Fleet::new().await;
    fleet.add_mailbox(ALICE, PASSWORD);
    fleet.world.limits(&format!(
        "smtp_messages_per_minute = {PER_MINUTE}\nlogin_failures_before_delay = 3\nlogin_delay_max_secs = 1\nlogin_failures_before_block = 4"
    ));
    let a = fleet.start_replicas(2);
    let b = a + 1;

    let mut replies = Vec::new();
    for n in 0..PER_MINUTE + 2 {
        replies.push(send(&fleet, [a, b][n % 2]).await);
    }
    let accepted = replies.iter().filter(|r| r.starts_with("250")).count();
    assert_eq!(accepted, PER_MINUTE, "{replies:#?}\n{}", fleet.logs());
    for refused in &replies[PER_MINUTE..] {
        assert!(refused.starts_with("451 4.7.0"), "{refused}");
    }
    assert_eq!(fleet.world.smtp.messages().len(), PER_MINUTE);

    // Four wrong passwords, two on each replica: the source is refused on both.
    for n in 0..4 {
        let reply = fleet.imap_login([a, b][n % 2], ALICE, "wrong").await;
        assert!(reply.starts_with("a NO"), "{reply}");
    }
    for i in [a, b] {
        let refused =
            crate::support::fleet::eventually(std::time::Duration::from_secs(10), || async {
                greeting(&fleet, i).await.starts_with("421")
            })
            .await;
        assert!(
            refused,
            "replica {i} still lets the guesser in\n{}",
            fleet.logs()
        );
    }
}
