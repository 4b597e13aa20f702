//! The driver with the held way out and a recording sender, over loopback TCP: what the
//! client hears, and what reaches the sender, for DATA, BDAT, the sender rules and the
//! size and memory bounds.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::submission::limits::{SendingCounters, SendingLimits};
use crate::submission::rules::SenderRules;

pub(super) type Sent = Arc<Mutex<Vec<(Vec<u8>, Vec<String>)>>>;

/// Records what it is given; answers `250`, or `reply` as a refusal.
pub(super) struct Recorder {
    pub(super) sent: Sent,
    pub(super) refuse_with: Option<String>,
}

impl HeldSender for Recorder {
    fn send<'a>(&'a self, message: &'a [u8], recipients: &'a [String]) -> Sending<'a> {
        Box::pin(async move {
            if let Some(refusal) = &self.refuse_with {
                return Err(refusal.clone());
            }
            self.sent
                .lock()
                .unwrap()
                .push((message.to_vec(), recipients.to_vec()));
            Ok("250 2.0.0 OK sent\r\n".to_owned())
        })
    }
}

pub(super) struct Client {
    pub(super) reader: BufReader<TcpStream>,
}

impl Client {
    pub(super) async fn send(&mut self, bytes: &[u8]) {
        self.reader.get_mut().write_all(bytes).await.unwrap();
    }

    pub(super) async fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).await.unwrap() == 0 {
                return all;
            }
            all.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return all;
            }
        }
    }
}

/// The context of a session of alice, `max_message` and `budget` bytes as given.
pub(super) fn alice_context(max_message: usize, budget: usize) -> Context {
    Context {
        standing: Box::new(|| true),
        host: "relay.test".into(),
        mailbox: "alice@contoso.com".into(),
        rules: SenderRules::new("alice@contoso.com", &[], &[]),
        limits: SendingLimits {
            messages_per_minute: 30,
            recipients_per_message: 500,
            recipients_per_day: 10_000,
        },
        counters: SendingCounters::default(),
        extensions: vec!["CHUNKING".into()],
        idle_timeout: Duration::from_secs(10),
        max_message,
        held_budget: Arc::new(Semaphore::new(budget / HELD_UNIT)),
        client: None,
        log: crate::state::DeliveryLog::off(),
    }
}

/// A session of alice with the held way; `max_message` and `budget` bytes as given.
async fn session(refuse_with: Option<&str>, max_message: usize, budget: usize) -> (Client, Sent) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = listener.accept().await.unwrap();
    let sent: Sent = Arc::default();
    let recorder = Recorder {
        sent: sent.clone(),
        refuse_with: refuse_with.map(str::to_owned),
    };
    let ctx = alice_context(max_message, budget);
    let way = Way::Held(Box::new(recorder));
    tokio::spawn(serve(Stream::Plain(server), Vec::new(), ctx, way, None));
    (
        Client {
            reader: BufReader::new(client),
        },
        sent,
    )
}

pub(super) async fn envelope(c: &mut Client, rcpts: &[&str]) {
    c.send(b"MAIL FROM:<alice@contoso.com>\r\n").await;
    assert!(c.reply().await.starts_with("250"));
    for r in rcpts {
        c.send(format!("RCPT TO:<{r}>\r\n").as_bytes()).await;
        assert!(c.reply().await.starts_with("250"));
    }
}

/// Sends a message with DATA, in two writes (`body`, then `end`), and returns the reply
/// to its end.
pub(super) async fn data(c: &mut Client, body: &[u8], end: &[u8]) -> String {
    c.send(b"DATA\r\n").await;
    c.reply().await;
    c.send(body).await;
    c.send(end).await;
    c.reply().await
}

pub(super) const MESSAGE: &[u8] =
    b"From: alice@contoso.com\r\nSubject: hi\r\n\r\n.dot line\r\nend\r\n";

#[tokio::test]
async fn a_data_message_reaches_the_sender_unstuffed_with_its_envelope() {
    let (mut c, sent) = session(None, 1 << 20, 1 << 20).await;
    envelope(&mut c, &["bob@example.com", "carol@example.com"]).await;
    c.send(
        b"DATA\r\nFrom: alice@contoso.com\r\nSubject: hi\r\n\r\n..dot line\r\nend\r\n.\r\nNOOP\r\n",
    )
    .await;
    assert!(c.reply().await.starts_with("354"));
    assert_eq!(c.reply().await, "250 2.0.0 OK sent\r\n");
    assert!(
        c.reply().await.starts_with("250 2.0.0 OK"),
        "NOOP pipelined after the dot"
    );
    let sent = sent.lock().unwrap().clone();
    assert_eq!(
        sent,
        [(
            MESSAGE.to_vec(),
            vec![
                "bob@example.com".to_string(),
                "carol@example.com".to_string()
            ]
        )]
    );
}

#[tokio::test]
async fn a_refusal_of_the_way_out_reaches_the_client_and_no_250() {
    let (mut c, _) = session(Some("550 5.7.1 denied\r\n"), 1 << 20, 1 << 20).await;
    envelope(&mut c, &["bob@example.com"]).await;
    assert_eq!(
        data(&mut c, MESSAGE, b".\r\n").await,
        "550 5.7.1 denied\r\n"
    );
}

#[tokio::test]
async fn bdat_chunks_make_one_message() {
    let (mut c, sent) = session(None, 1 << 20, 1 << 20).await;
    envelope(&mut c, &["bob@example.com"]).await;
    let (first, rest) = MESSAGE.split_at(10);
    c.send(format!("BDAT {}\r\n", first.len()).as_bytes()).await;
    c.send(first).await;
    assert_eq!(c.reply().await, "250 2.0.0 10 octets received\r\n");
    c.send(format!("BDAT {} LAST\r\n", rest.len()).as_bytes())
        .await;
    c.send(rest).await;
    assert_eq!(c.reply().await, "250 2.0.0 OK sent\r\n");
    assert_eq!(
        sent.lock().unwrap()[0].0,
        MESSAGE,
        "BDAT content is not dot-stuffed"
    );
    // The next transaction starts clean.
    envelope(&mut c, &["bob@example.com"]).await;
    c.send(b"BDAT 0 LAST\r\n").await;
    assert!(c.reply().await.starts_with("250"));
}

#[tokio::test]
async fn a_header_sender_not_allowed_is_refused_in_bdat_too() {
    let (mut c, sent) = session(None, 1 << 20, 1 << 20).await;
    envelope(&mut c, &["bob@example.com"]).await;
    let forged = b"From: ceo@contoso.com\r\n\r\nx\r\n";
    c.send(format!("BDAT {} LAST\r\n", forged.len()).as_bytes())
        .await;
    c.send(forged).await;
    assert!(
        c.reply()
            .await
            .starts_with("550 5.7.1 Header sender <ceo@contoso.com>")
    );
    assert!(sent.lock().unwrap().is_empty());
}

#[tokio::test]
async fn bounds_on_held_messages_answer_and_the_session_goes_on() {
    let (mut c, sent) = session(None, 4096, 1 << 20).await;
    envelope(&mut c, &["bob@example.com"]).await;
    assert!(
        data(&mut c, &[b'x'; 10_000], b"\r\n.\r\n")
            .await
            .starts_with("552 5.3.4")
    );
    envelope(&mut c, &["bob@example.com"]).await;
    c.send(b"BDAT 5000 LAST\r\n").await;
    c.send(&[b'y'; 5000]).await;
    assert!(c.reply().await.starts_with("552 5.3.4"));
    assert!(sent.lock().unwrap().is_empty());

    // All held messages together: a budget smaller than one message.
    let (mut c, _) = session(None, 1 << 20, 8 * 1024).await;
    envelope(&mut c, &["bob@example.com"]).await;
    assert!(
        data(&mut c, &[b'z'; 20_000], b"\r\n.\r\n")
            .await
            .starts_with("452 4.3.1")
    );
    c.send(b"QUIT\r\n").await;
    assert!(c.reply().await.starts_with("221"));
}

/// The read that holds the end of a message is held to the limit too: a message that
/// arrives in one piece with `DATA` is no exception (found by the `smtp_session` fuzz
/// target).
#[tokio::test]
async fn a_message_in_the_same_read_as_its_end_is_held_to_the_limit() {
    let (mut c, sent) = session(None, 4096, 1 << 20).await;
    envelope(&mut c, &["bob@example.com"]).await;
    let mut all = b"DATA\r\n".to_vec();
    all.extend_from_slice(&[b'x'; 5000]);
    all.extend_from_slice(b"\r\n.\r\n");
    c.send(&all).await;
    assert!(c.reply().await.starts_with("354"));
    assert!(c.reply().await.starts_with("552 5.3.4"));
    envelope(&mut c, &["bob@example.com"]).await;
    let mut exact = b"DATA\r\nSubject: s\r\n\r\n".to_vec();
    exact.extend_from_slice(&[b'y'; 4096 - 14 - 2]);
    exact.extend_from_slice(b"\r\n.\r\n");
    c.send(&exact).await;
    assert!(c.reply().await.starts_with("354"));
    let reply = c.reply().await;
    assert!(
        reply.starts_with("250"),
        "a message of exactly the limit: {reply}"
    );
    assert_eq!(sent.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_bdat_line_without_a_size_closes_the_session() {
    let (mut c, _) = session(None, 1 << 20, 1 << 20).await;
    envelope(&mut c, &["bob@example.com"]).await;
    c.send(b"BDAT lots\r\n").await;
    assert!(c.reply().await.starts_with("421 4.5.4"));
    assert_eq!(c.reply().await, "", "closed");
}

#[tokio::test]
async fn commands_out_of_order_get_503_and_rcpt_needs_a_mail() {
    let (mut c, _) = session(None, 1 << 20, 1 << 20).await;
    c.send(b"RCPT TO:<bob@example.com>\r\n").await;
    assert!(c.reply().await.starts_with("503"));
    c.send(b"DATA\r\n").await;
    assert!(c.reply().await.starts_with("503"));
    c.send(b"BDAT 3\r\nabc").await;
    assert!(
        c.reply().await.starts_with("503"),
        "the chunk was read and dropped"
    );
    c.send(b"MAIL FROM:<alice@contoso.com>\r\n").await;
    assert!(c.reply().await.starts_with("250"));
    c.send(b"RCPT TO:<bob@localhost>\r\n").await;
    assert!(c.reply().await.starts_with("501 5.1.3"));
    c.send(b"DATA\r\n").await;
    assert!(c.reply().await.starts_with("554 5.5.1"));
    c.send(b"EHLO again\r\n").await;
    let ehlo = c.reply().await;
    assert!(ehlo.contains("CHUNKING"), "{ehlo}");
}
