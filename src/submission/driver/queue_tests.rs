//! The queue way and the delivery log events of client sessions, over loopback TCP with an
//! in-memory queue and log: what the client hears, what the queue keeps (envelope, body
//! unstuffed), which limits hold, and what is logged.

use std::sync::{Arc, Mutex};

use tokio::io::BufReader;
use tokio::net::{TcpListener, TcpStream};

use super::tests::{Client, MESSAGE, Recorder, Sent, alice_context, data, envelope};
use super::*;
use crate::config::LogRecipients;
use crate::state::{
    DeliveryEvent, DeliveryLogStore, Entry, EntryState, Envelope, EventKind, LogQuery, MessageKind,
    QueueError, QueueId, QueueStats, Settlement, StoreError,
};
use crate::submission::limits::SendingLimits;

/// A queue in memory that can be full.
#[derive(Debug, Default)]
struct Memory {
    kept: Mutex<Vec<(Envelope, Vec<u8>)>>,
    full: bool,
}

impl OutboundQueue for Memory {
    fn enqueue(&self, envelope: &Envelope, message: &[u8]) -> Result<Entry, QueueError> {
        if self.full {
            return Err(QueueError::Full {
                bytes: 10,
                max_bytes: 10,
            });
        }
        let mut kept = self.kept.lock().unwrap();
        kept.push((envelope.clone(), message.to_vec()));
        Ok(Entry {
            id: QueueId::new(),
            envelope: envelope.clone(),
            size: message.len() as u64,
            state: EntryState::Queued,
            received_at: 0,
            attempts: 0,
            next_attempt_at: 0,
            last_reply: None,
            warned: false,
        })
    }
    fn due(&self, _: u64, _: usize) -> Result<Vec<Entry>, StoreError> {
        Ok(Vec::new())
    }
    fn claim(&self, _: &QueueId, _: u64) -> Result<bool, StoreError> {
        Ok(false)
    }
    fn message(&self, _: &Entry) -> Result<zeroize::Zeroizing<Vec<u8>>, StoreError> {
        Ok(Default::default())
    }
    fn settle(&self, _: &QueueId, _: &Settlement) -> Result<(), StoreError> {
        Ok(())
    }
    fn entries(&self) -> Result<Vec<Entry>, StoreError> {
        Ok(Vec::new())
    }
    fn entry(&self, _: &QueueId) -> Result<Option<Entry>, StoreError> {
        Ok(None)
    }
    fn retry(&self, _: Option<&QueueId>) -> Result<usize, StoreError> {
        Ok(0)
    }
    fn remove(&self, _: &QueueId) -> Result<bool, StoreError> {
        Ok(false)
    }
    fn stats(&self) -> Result<QueueStats, StoreError> {
        Ok(QueueStats::default())
    }
}

/// A delivery log in memory.
#[derive(Debug, Default)]
struct Logged(Mutex<Vec<DeliveryEvent>>);

impl DeliveryLogStore for Logged {
    fn append(&self, events: &[DeliveryEvent]) -> Result<(), StoreError> {
        self.0.lock().unwrap().extend_from_slice(events);
        Ok(())
    }
    fn read(&self, _: &LogQuery) -> Result<Vec<DeliveryEvent>, StoreError> {
        Ok(self.0.lock().unwrap().clone())
    }
}

impl Logged {
    /// The events once there are `n` (the log's writer is a thread of its own).
    async fn wait_for(&self, n: usize) -> Vec<DeliveryEvent> {
        for _ in 0..400 {
            let events = self.0.lock().unwrap().clone();
            if events.len() >= n {
                return events;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("fewer than {n} events: {:?}", self.0.lock().unwrap());
    }
}

/// A session of alice from 192.0.2.7 with `way`, one message a minute, at most two
/// recipients a message.
async fn session_with(way: Way) -> (Client, Arc<Logged>, Arc<Notify>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = listener.accept().await.unwrap();
    let logged = Arc::new(Logged::default());
    let ctx = Context {
        limits: SendingLimits {
            messages_per_minute: 1,
            recipients_per_message: 2,
            recipients_per_day: 10_000,
        },
        client: Some("192.0.2.7".into()),
        log: DeliveryLog::start(logged.clone(), LogRecipients::Full),
        ..alice_context(1 << 20, 1 << 20)
    };
    let wake = match &way {
        Way::Queue(queued) => queued.wake.clone(),
        _ => Arc::new(Notify::new()),
    };
    tokio::spawn(serve(Stream::Plain(server), Vec::new(), ctx, way, None));
    let client = Client {
        reader: BufReader::new(client),
    };
    (client, logged, wake)
}

async fn queued_session(full: bool) -> (Client, Arc<Memory>, Arc<Logged>, Arc<Notify>) {
    let memory = Arc::new(Memory {
        full,
        ..Default::default()
    });
    let way = Way::Queue(Queued {
        queue: memory.clone(),
        wake: Arc::new(Notify::new()),
    });
    let (c, logged, wake) = session_with(way).await;
    (c, memory, logged, wake)
}

const WITH_ID: &[u8] =
    b"From: alice@contoso.com\r\nMessage-ID: <m1@contoso.com>\r\n\r\n..dot line\r\nsecret body\r\n";

#[tokio::test]
async fn a_queued_message_is_stored_with_its_envelope_and_the_client_hears_its_id() {
    let (mut c, memory, logged, wake) = queued_session(false).await;
    envelope(&mut c, &["bob@example.com", "carol@example.com"]).await;
    let reply = data(&mut c, WITH_ID, b".\r\n").await;
    let id = reply
        .strip_prefix("250 2.0.0 Ok: queued as ")
        .unwrap_or_else(|| panic!("{reply}"))
        .trim_end();
    assert!(QueueId::parse(id).is_some(), "{id}");
    tokio::time::timeout(Duration::from_secs(5), wake.notified())
        .await
        .expect("the workers were woken");
    let kept = memory.kept.lock().unwrap().clone();
    let expected = Envelope {
        mailbox: "alice@contoso.com".into(),
        sender: "alice@contoso.com".into(),
        recipients: vec!["bob@example.com".into(), "carol@example.com".into()],
        client: Some("192.0.2.7".into()),
        message_id: Some("<m1@contoso.com>".into()),
        kind: MessageKind::Message,
        parameters: Vec::new(),
    };
    let body = b"From: alice@contoso.com\r\nMessage-ID: <m1@contoso.com>\r\n\r\n.dot line\r\nsecret body\r\n";
    assert_eq!(kept, [(expected, body.to_vec())]);
    let events = logged.wait_for(1).await;
    let event = &events[0];
    assert_eq!(event.event, EventKind::Queued);
    assert_eq!(event.queue_id.as_deref(), Some(id));
    assert_eq!(event.route.as_deref(), Some("queue"));
    assert_eq!(event.message_id.as_deref(), Some("<m1@contoso.com>"));
    assert_eq!(event.size, Some(body.len() as u64));
    assert_eq!(event.recipient_count, 2);
    let line = serde_json::to_string(event).unwrap();
    assert!(!line.contains("secret body"), "{line}");
}

#[tokio::test]
async fn the_queue_takes_messages_beyond_the_sending_windows_but_not_too_many_recipients() {
    let (mut c, memory, logged, _) = queued_session(false).await;
    // One message a minute is the window: the queue way does not reserve it.
    for _ in 0..3 {
        envelope(&mut c, &["bob@example.com"]).await;
        c.send(format!("BDAT {} LAST\r\n", MESSAGE.len()).as_bytes())
            .await;
        c.send(MESSAGE).await;
        let reply = c.reply().await;
        assert!(reply.starts_with("250 2.0.0 Ok: queued as "), "{reply}");
    }
    assert_eq!(memory.kept.lock().unwrap().len(), 3);
    assert_eq!(memory.kept.lock().unwrap()[2].1, MESSAGE, "BDAT: as sent");
    envelope(&mut c, &["a@example.com", "b@example.com"]).await;
    c.send(b"RCPT TO:<c@example.com>\r\n").await;
    let reply = c.reply().await;
    assert!(
        reply.starts_with("452 4.5.3 Too many recipients"),
        "{reply}"
    );
    let events = logged.wait_for(4).await;
    assert_eq!(events[3].event, EventKind::Refused);
    assert_eq!(events[3].recipients, ["c@example.com"]);
    assert_eq!(events[3].reply.as_deref(), Some(reply.trim_end()));
}

#[tokio::test]
async fn a_full_queue_answers_452_and_keeps_nothing() {
    let (mut c, memory, logged, _) = queued_session(true).await;
    envelope(&mut c, &["bob@example.com"]).await;
    let reply = data(&mut c, MESSAGE, b".\r\n").await;
    assert_eq!(
        reply,
        "452 4.3.1 Insufficient system storage: message not queued; try again later\r\n"
    );
    assert!(memory.kept.lock().unwrap().is_empty());
    let events = logged.wait_for(1).await;
    assert_eq!(events[0].event, EventKind::Refused);
    assert!(events[0].reply.as_deref().unwrap().starts_with("452 4.3.1"));
    // The session goes on.
    c.send(b"NOOP\r\n").await;
    assert!(c.reply().await.starts_with("250"));
}

#[tokio::test]
async fn the_sender_rules_hold_on_the_queue_way() {
    let (mut c, memory, logged, _) = queued_session(false).await;
    c.send(b"MAIL FROM:<ceo@contoso.com>\r\n").await;
    let refused = c.reply().await;
    assert!(
        refused.starts_with("550 5.7.1 Sender <ceo@contoso.com>"),
        "{refused}"
    );
    envelope(&mut c, &["bob@example.com"]).await;
    let forged = b"From: ceo@contoso.com\r\n\r\nx\r\n";
    let reply = data(&mut c, forged, b".\r\n").await;
    assert!(
        reply.starts_with("550 5.7.1 Header sender <ceo@contoso.com>"),
        "{reply}"
    );
    assert!(memory.kept.lock().unwrap().is_empty());
    let events = logged.wait_for(2).await;
    assert_eq!(events[0].event, EventKind::Refused);
    assert_eq!(events[0].sender.as_deref(), Some("ceo@contoso.com"));
    assert_eq!(events[1].event, EventKind::Refused);
    assert_eq!(events[1].reply.as_deref(), Some(reply.trim_end()));
}

#[tokio::test]
async fn direct_delivery_logs_accepted_and_refused_with_the_replies() {
    let sent: Sent = Arc::default();
    let recorder = Recorder {
        sent: sent.clone(),
        refuse_with: None,
    };
    let (mut c, logged, _) = session_with(Way::Held(Box::new(recorder))).await;
    envelope(&mut c, &["bob@example.com"]).await;
    assert_eq!(
        data(&mut c, WITH_ID, b".\r\n").await,
        "250 2.0.0 OK sent\r\n"
    );
    // One message a minute: the second is refused at MAIL FROM.
    c.send(b"MAIL FROM:<alice@contoso.com>\r\n").await;
    let limited = c.reply().await;
    assert!(limited.starts_with("451 4.7.0"), "{limited}");
    let events = logged.wait_for(2).await;
    let accepted = &events[0];
    assert_eq!(accepted.event, EventKind::Accepted);
    assert_eq!(accepted.reply.as_deref(), Some("250 2.0.0 OK sent"));
    assert_eq!(accepted.route.as_deref(), Some("graph"));
    assert_eq!(accepted.client.as_deref(), Some("192.0.2.7"));
    assert_eq!(accepted.sender.as_deref(), Some("alice@contoso.com"));
    assert_eq!(accepted.message_id.as_deref(), Some("<m1@contoso.com>"));
    assert_eq!(accepted.recipients, ["bob@example.com"]);
    assert!(accepted.queue_id.is_none());
    assert_eq!(events[1].event, EventKind::Refused);
    assert_eq!(events[1].reply.as_deref(), Some(limited.trim_end()));

    let refusing = Recorder {
        sent,
        refuse_with: Some("550 5.7.708 Service unavailable\r\n".into()),
    };
    let (mut c, logged, _) = session_with(Way::Held(Box::new(refusing))).await;
    envelope(&mut c, &["bob@example.com"]).await;
    data(&mut c, MESSAGE, b".\r\n").await;
    let events = logged.wait_for(1).await;
    assert_eq!(events[0].event, EventKind::Refused);
    assert_eq!(
        events[0].reply.as_deref(),
        Some("550 5.7.708 Service unavailable")
    );
}
