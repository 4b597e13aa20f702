//! The delivery log's shape, as every backend keeps it: one event per thing that happened
//! to a message (accepted, refused, queued, delivered, deferred, bounced), answering a
//! helpdesk's first question: did my mail go out, and what did Microsoft say?
//!
//! Events hold envelopes and Microsoft's replies, never a body, a header other than the
//! Message-ID, or a secret. Recipients are written as `[log] recipients` says (full,
//! domain only, none) before an event reaches the store. The store bounds its size
//! (`[log] max_bytes`), dropping the oldest events first.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::state::error::StoreError;

/// What happened to a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// Microsoft accepted it during the client's session (direct delivery).
    Accepted,
    /// It was refused: by the relay's rules or limits, or by Microsoft during the
    /// client's session; `reply` says what the client heard.
    Refused,
    /// Stored in the queue; the client heard `250`.
    Queued,
    /// The queue delivered it: Microsoft accepted it.
    Delivered,
    /// The queue's attempt failed for now; it is tried again.
    Deferred,
    /// The queue gave up (a permanent refusal, or too old): a notice went to the sender.
    Bounced,
}

impl EventKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Refused => "refused",
            Self::Queued => "queued",
            Self::Delivered => "delivered",
            Self::Deferred => "deferred",
            Self::Bounced => "bounced",
        }
    }
}

/// One line of the delivery log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryEvent {
    /// When it happened, RFC 3339 UTC with milliseconds.
    pub time: String,
    /// The same time, in milliseconds since the Unix epoch (for ordering and `--since`).
    pub at_ms: u64,
    pub event: EventKind,
    pub mailbox: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// The envelope sender (`MAIL FROM`), empty for `<>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
    pub recipient_count: usize,
    /// As `[log] recipients` says: full addresses, `@domain`s, or none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipients: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// `smtp`, `graph` or `queue`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// The reply (Microsoft's, or the relay's own for a refusal), first line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<String>,
    /// Graph's `request-id` header, when Graph answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// Which events [`DeliveryLogStore::read`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogQuery {
    /// Only this mailbox's events.
    pub mailbox: Option<String>,
    /// Only events at or after this time (milliseconds since the epoch).
    pub since_ms: Option<u64>,
    /// At most this many, the latest ones (0: no bound).
    pub limit: usize,
}

/// Where the delivery log is kept, size-bounded.
pub trait DeliveryLogStore: Send + Sync + fmt::Debug {
    /// Appends `events`, in order, dropping the oldest events beyond the size bound.
    fn append(&self, events: &[DeliveryEvent]) -> Result<(), StoreError>;
    /// The stored events `query` selects, oldest first.
    fn read(&self, query: &LogQuery) -> Result<Vec<DeliveryEvent>, StoreError>;
}

impl DeliveryEvent {
    /// An `event` of `mailbox`, now, with nothing else known yet.
    pub fn new(event: EventKind, mailbox: &str) -> Self {
        let at_ms = crate::datetime::now_ms();
        Self {
            time: crate::datetime::rfc3339_ms(at_ms),
            at_ms,
            event,
            mailbox: mailbox.to_owned(),
            client: None,
            queue_id: None,
            message_id: None,
            sender: None,
            recipient_count: 0,
            recipients: Vec::new(),
            size: None,
            route: None,
            reply: None,
            request_id: None,
        }
    }

    /// With `recipients` (their count always; the addresses as [`DeliveryLog`] shapes them).
    pub fn to(mut self, recipients: &[String]) -> Self {
        self.recipient_count = recipients.len();
        self.recipients = recipients.to_vec();
        self
    }

    /// With the first line of `reply`, control characters removed, at most 512 characters.
    pub fn reply(mut self, reply: &str) -> Self {
        let line = reply.lines().next().unwrap_or_default();
        self.reply = Some(line.chars().filter(|c| !c.is_control()).take(512).collect());
        self
    }
}

/// Events waiting for the writer; beyond it an event is dropped and counted.
const PENDING_EVENTS: usize = 8192;
/// Events the writer appends at once.
const BATCH: usize = 256;

/// The running relay's delivery log: [`DeliveryLog::record`] never waits; a thread of its
/// own appends the events to the store in batches. Cheap to clone.
#[derive(Clone)]
pub struct DeliveryLog {
    sender: Option<std::sync::mpsc::SyncSender<DeliveryEvent>>,
    recipients: crate::config::LogRecipients,
    dropped: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl fmt::Debug for DeliveryLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeliveryLog")
            .field("recipients", &self.recipients)
            .finish_non_exhaustive()
    }
}

impl DeliveryLog {
    /// Starts the writer of `store`; recipients are written as `recipients` says.
    pub fn start(
        store: std::sync::Arc<dyn DeliveryLogStore>,
        recipients: crate::config::LogRecipients,
    ) -> Self {
        let (sender, events) = std::sync::mpsc::sync_channel(PENDING_EVENTS);
        let spawned = std::thread::Builder::new()
            .name("delivery-log".into())
            .spawn(move || write_events(store.as_ref(), &events));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the delivery log's writer; nothing is logged");
            return Self::off();
        }
        Self {
            sender: Some(sender),
            recipients,
            dropped: Default::default(),
        }
    }

    /// A log that keeps nothing (tests, commands).
    pub fn off() -> Self {
        Self {
            sender: None,
            recipients: crate::config::LogRecipients::None,
            dropped: Default::default(),
        }
    }

    /// Hands `event` to the writer, its recipients shaped; never waits. An event the
    /// writer has no room for is dropped, counted and warned about.
    pub fn record(&self, mut event: DeliveryEvent) {
        let Some(sender) = &self.sender else { return };
        shape_recipients(&mut event.recipients, self.recipients);
        if sender.try_send(event).is_err() {
            let before = self
                .dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if before.is_power_of_two() || before == 0 {
                tracing::warn!(
                    dropped = before + 1,
                    "the delivery log's writer is behind; events were dropped"
                );
            }
        }
    }

    /// Events dropped because the writer was behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }
}

fn shape_recipients(recipients: &mut Vec<String>, how: crate::config::LogRecipients) {
    use crate::config::LogRecipients;
    match how {
        LogRecipients::Full => {}
        LogRecipients::None => recipients.clear(),
        LogRecipients::Domain => {
            for r in recipients.iter_mut() {
                *r = r
                    .rfind('@')
                    .map_or_else(String::new, |at| r[at..].to_owned());
            }
        }
    }
}

/// The writer: appends what comes, in batches, until every [`DeliveryLog`] is gone.
fn write_events(store: &dyn DeliveryLogStore, events: &std::sync::mpsc::Receiver<DeliveryEvent>) {
    let mut failing = false;
    while let Ok(first) = events.recv() {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match events.try_recv() {
                Ok(event) => batch.push(event),
                Err(_) => break,
            }
        }
        match store.append(&batch) {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("the delivery log is written again");
            }
            Ok(()) => {}
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, lost = batch.len(), "cannot write the delivery log");
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::config::LogRecipients;

    #[derive(Debug, Default)]
    struct Kept(Mutex<Vec<DeliveryEvent>>);

    impl DeliveryLogStore for Kept {
        fn append(&self, events: &[DeliveryEvent]) -> Result<(), StoreError> {
            self.0.lock().unwrap().extend_from_slice(events);
            Ok(())
        }
        fn read(&self, _: &LogQuery) -> Result<Vec<DeliveryEvent>, StoreError> {
            Ok(self.0.lock().unwrap().clone())
        }
    }

    fn logged(how: LogRecipients) -> DeliveryEvent {
        let store = Arc::new(Kept::default());
        let log = DeliveryLog::start(store.clone(), how);
        let to = ["a@contoso.com".to_owned(), "b@fabrikam.com".to_owned()];
        log.record(DeliveryEvent::new(EventKind::Queued, "m@contoso.com").to(&to));
        drop(log);
        for _ in 0..200 {
            if let Some(event) = store.0.lock().unwrap().first() {
                return event.clone();
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        panic!("nothing written");
    }

    #[test]
    fn recipients_are_written_as_configured() {
        assert_eq!(
            logged(LogRecipients::Full).recipients,
            ["a@contoso.com", "b@fabrikam.com"]
        );
        let domain = logged(LogRecipients::Domain);
        assert_eq!(domain.recipients, ["@contoso.com", "@fabrikam.com"]);
        let none = logged(LogRecipients::None);
        assert!(none.recipients.is_empty());
        assert_eq!(none.recipient_count, 2);
        let line = serde_json::to_string(&none).unwrap();
        assert!(
            line.contains(r#""event":"queued""#) && !line.contains("recipients\""),
            "{line}"
        );
    }

    #[test]
    fn a_reply_keeps_its_first_line_without_controls() {
        let event = DeliveryEvent::new(EventKind::Refused, "m@x.com")
            .reply("550 5.1.1 no\x1b[1m\r\n550 more");
        assert_eq!(event.reply.as_deref(), Some("550 5.1.1 no[1m"));
    }
}
