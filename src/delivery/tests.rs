//! The dispatcher against an in-memory queue and a scripted courier.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::counters::{DeliveryCounters, Outcome};
use super::dispatcher::{self, Delivery, Settings};
use super::policy::Attempt;
use super::route::{Courier, Handed, Sending};
use crate::config::QueueConfig;
use crate::state::*;
use crate::submission::limits::{SendingCounters, SendingLimits};

fn now() -> u64 {
    crate::datetime::unix(SystemTime::now())
}

/// An outbound queue in memory, with claims.
#[derive(Debug, Default)]
struct MemoryQueue {
    entries: Mutex<BTreeMap<QueueId, (Entry, Vec<u8>)>>,
    claims: Mutex<HashMap<QueueId, u64>>,
}

impl MemoryQueue {
    fn entry_list(&self) -> Vec<Entry> {
        self.entries
            .lock()
            .unwrap()
            .values()
            .map(|(e, _)| e.clone())
            .collect()
    }
}

impl OutboundQueue for MemoryQueue {
    fn enqueue(&self, envelope: &Envelope, message: &[u8]) -> Result<Entry, QueueError> {
        let entry = Entry {
            id: QueueId::new(),
            envelope: envelope.clone(),
            size: message.len() as u64,
            state: EntryState::Queued,
            received_at: now(),
            attempts: 0,
            next_attempt_at: now(),
            last_reply: None,
            warned: false,
        };
        let mut entries = self.entries.lock().unwrap();
        entries.insert(entry.id.clone(), (entry.clone(), message.to_vec()));
        Ok(entry)
    }
    fn due(&self, now: u64, limit: usize) -> Result<Vec<Entry>, StoreError> {
        let claims = self.claims.lock().unwrap();
        let entries = self.entries.lock().unwrap();
        let mut due: Vec<Entry> = entries
            .values()
            .map(|(e, _)| e)
            .filter(|e| e.state == EntryState::Queued && e.next_attempt_at <= now)
            .filter(|e| claims.get(&e.id).is_none_or(|until| *until < now))
            .cloned()
            .collect();
        due.sort_by_key(|e| e.next_attempt_at);
        due.truncate(limit);
        Ok(due)
    }
    fn claim(&self, id: &QueueId, until: u64) -> Result<bool, StoreError> {
        let mut claims = self.claims.lock().unwrap();
        let free = claims.get(id).is_none_or(|u| *u < now());
        let queued = self
            .entries
            .lock()
            .unwrap()
            .get(id)
            .is_some_and(|(e, _)| e.state == EntryState::Queued);
        if free && queued {
            claims.insert(id.clone(), until);
        }
        Ok(free && queued)
    }
    fn message(&self, entry: &Entry) -> Result<zeroize::Zeroizing<Vec<u8>>, StoreError> {
        let entries = self.entries.lock().unwrap();
        let (_, body) = entries.get(&entry.id).ok_or_else(|| StoreError::Corrupt {
            file: "gone".into(),
            why: "gone".into(),
        })?;
        Ok(zeroize::Zeroizing::new(body.clone()))
    }
    fn settle(&self, id: &QueueId, settlement: &Settlement) -> Result<(), StoreError> {
        let mut entries = self.entries.lock().unwrap();
        let Some((entry, _)) = entries.get_mut(id) else {
            return Ok(());
        };
        match settlement {
            Settlement::Delivered => {
                entries.remove(id);
            }
            Settlement::Deferred {
                next_attempt_at,
                reply,
            } => {
                entry.attempts += 1;
                entry.next_attempt_at = *next_attempt_at;
                entry.last_reply = Some(reply.clone());
            }
            Settlement::Failed { reply } => {
                entry.attempts += 1;
                entry.state = EntryState::Failed;
                entry.last_reply = Some(reply.clone());
            }
            Settlement::Warned => {
                entry.warned = true;
                return Ok(());
            }
            Settlement::Released => {}
        }
        self.claims.lock().unwrap().remove(id);
        Ok(())
    }
    fn entries(&self) -> Result<Vec<Entry>, StoreError> {
        Ok(self.entry_list())
    }
    fn entry(&self, id: &QueueId) -> Result<Option<Entry>, StoreError> {
        Ok(self.entries.lock().unwrap().get(id).map(|(e, _)| e.clone()))
    }
    fn retry(&self, _: Option<&QueueId>) -> Result<usize, StoreError> {
        Ok(0)
    }
    fn remove(&self, id: &QueueId) -> Result<bool, StoreError> {
        Ok(self.entries.lock().unwrap().remove(id).is_some())
    }
    fn stats(&self) -> Result<QueueStats, StoreError> {
        Ok(QueueStats::default())
    }
}

/// A courier that answers from a script (then accepts), records what it was handed and
/// how many it had in flight at once per mailbox.
#[derive(Default)]
struct Scripted {
    script: Mutex<VecDeque<Attempt>>,
    sent: Mutex<Vec<(Envelope, Vec<u8>)>>,
    /// The first line of each message as its attempt started.
    started: Mutex<Vec<String>>,
    capacity: usize,
    delay: Duration,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
}

impl Courier for Scripted {
    fn capacity(&self, _: &str) -> usize {
        self.capacity
    }
    fn send<'a>(&'a self, envelope: &'a Envelope, message: &'a [u8]) -> Sending<'a, Handed> {
        Box::pin(async move {
            let first = message.split(|b| *b == b'\r').next().unwrap_or_default();
            self.started
                .lock()
                .unwrap()
                .push(String::from_utf8_lossy(first).into_owned());
            let now_in = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_in_flight.fetch_max(now_in, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            let scripted = self.script.lock().unwrap().pop_front();
            let attempt = scripted.unwrap_or_else(|| Attempt::Accepted {
                reply: "250 2.0.0 OK".into(),
                refused: Vec::new(),
                request_id: None,
            });
            if matches!(attempt, Attempt::Accepted { .. }) {
                self.sent
                    .lock()
                    .unwrap()
                    .push((envelope.clone(), message.to_vec()));
            }
            Handed {
                attempt,
                route: Some("smtp"),
            }
        })
    }
}

struct World {
    queue: Arc<MemoryQueue>,
    courier: Arc<Scripted>,
    stats: DeliveryCounters,
    queued: Arc<Notify>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn start(courier: Scripted, queue: QueueConfig, per_minute: u32, grace: Duration) -> World {
    let (queue_store, courier) = (Arc::new(MemoryQueue::default()), Arc::new(courier));
    let (stats, queued, shutdown) = (
        DeliveryCounters::default(),
        Arc::new(Notify::new()),
        CancellationToken::new(),
    );
    let settings = Settings {
        queue,
        limits: SendingLimits {
            messages_per_minute: per_minute,
            recipients_per_message: 100,
            recipients_per_day: 10_000,
        },
        host: "relay.test".into(),
        grace,
    };
    let shared = (
        SendingCounters::default(),
        DeliveryLog::off(),
        queued.clone(),
    );
    let delivery = Delivery::new(
        queue_store.clone(),
        courier.clone(),
        shared,
        stats.clone(),
        settings,
    );
    let task = dispatcher::start(delivery, shutdown.clone());
    World {
        queue: queue_store,
        courier,
        stats,
        queued,
        shutdown,
        task,
    }
}

fn fast() -> QueueConfig {
    QueueConfig {
        retry_min_secs: 1,
        retry_max_secs: 2,
        delay_warning_secs: 0,
        ..QueueConfig::default()
    }
}

fn envelope(mailbox: &str, sender: &str) -> Envelope {
    Envelope {
        mailbox: mailbox.into(),
        sender: sender.into(),
        recipients: vec!["bob@fabrikam.com".into()],
        client: None,
        message_id: None,
        kind: MessageKind::Message,
        parameters: Vec::new(),
    }
}

impl World {
    fn enqueue(&self, mailbox: &str, n: usize) {
        for i in 0..n {
            let body = format!("Subject: {i}\r\n\r\nbody {i}\r\n");
            self.queue
                .enqueue(&envelope(mailbox, mailbox), body.as_bytes())
                .unwrap();
            // Queue ids order by the millisecond.
            std::thread::sleep(Duration::from_millis(2));
        }
        self.queued.notify_one();
    }

    async fn until(&self, what: &str, done: impl Fn(&World) -> bool) {
        for _ in 0..200 {
            if done(self) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "timed out waiting for {what}: {:?}",
            self.queue.entry_list()
        );
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap();
    }
}

#[tokio::test]
async fn queued_messages_go_out_once_each_oldest_first_within_the_mailbox_bound() {
    let courier = Scripted {
        capacity: 2,
        delay: Duration::from_millis(40),
        ..Default::default()
    };
    let w = start(courier, fast(), 1000, Duration::from_secs(5));
    w.enqueue("a@contoso.com", 10);
    w.until("all delivered", |w| w.queue.entry_list().is_empty())
        .await;
    let sent = w.courier.sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 10);
    // Two at a time, so each pair may race; the pairs go oldest first.
    let mut started = w.courier.started.lock().unwrap().clone();
    started.chunks_mut(2).for_each(|pair| pair.sort());
    let in_order: Vec<String> = (0..10).map(|i| format!("Subject: {i}")).collect();
    assert_eq!(started, in_order, "oldest first");
    assert_eq!(
        w.courier.most_in_flight.load(Ordering::SeqCst),
        2,
        "at most the mailbox's bound"
    );
    assert_eq!(w.stats.attempts(Outcome::Delivered), 10);
    w.stop().await;
}

#[tokio::test]
async fn a_throttled_attempt_waits_its_retry_after_then_goes_out_once() {
    let courier = Scripted {
        capacity: 4,
        ..Default::default()
    };
    courier
        .script
        .lock()
        .unwrap()
        .push_back(Attempt::Temporary {
            reply: "451 4.7.0 Microsoft Graph is throttling (429): try again in 2 seconds".into(),
            retry_after: Some(Duration::from_secs(2)),
            maybe_sent: false,
        });
    let w = start(courier, fast(), 1000, Duration::from_secs(5));
    let started = std::time::Instant::now();
    w.enqueue("a@contoso.com", 1);
    w.until("deferred once", |w| {
        w.stats.attempts(Outcome::Deferred) == 1
    })
    .await;
    let entry = &w.queue.entry_list()[0];
    assert_eq!(entry.attempts, 1);
    assert!(entry.last_reply.as_deref().unwrap().contains("429"));
    w.until("delivered", |w| w.queue.entry_list().is_empty())
        .await;
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(w.courier.sent.lock().unwrap().len(), 1);
    w.stop().await;
}

#[tokio::test]
async fn a_permanent_failure_fails_the_entry_and_the_notice_goes_to_the_sender() {
    let courier = Scripted {
        capacity: 1,
        ..Default::default()
    };
    courier
        .script
        .lock()
        .unwrap()
        .push_back(Attempt::Permanent {
            reply: "550 5.1.1 User unknown".into(),
        });
    let w = start(courier, fast(), 1000, Duration::from_secs(5));
    w.queue
        .enqueue(
            &envelope("a@contoso.com", "app@contoso.com"),
            b"Subject: hi\r\n\r\nsecret\r\n",
        )
        .unwrap();
    w.queued.notify_one();
    w.until("the notice delivered", |w| {
        w.stats.notices() == (1, 0) && w.courier.sent.lock().unwrap().len() == 1
    })
    .await;
    let entries = w.queue.entry_list();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].state, EntryState::Failed);
    assert_eq!(
        entries[0].last_reply.as_deref(),
        Some("550 5.1.1 User unknown")
    );
    let (notice, body) = w.courier.sent.lock().unwrap()[0].clone();
    assert_eq!(notice.kind, MessageKind::Notice);
    assert_eq!(
        (notice.sender.as_str(), notice.recipients.as_slice()),
        ("a@contoso.com", &["app@contoso.com".to_owned()][..])
    );
    let text = String::from_utf8(body).unwrap();
    assert!(
        text.contains("multipart/report")
            && text.contains("Status: 5.1.1")
            && !text.contains("secret"),
        "{text}"
    );
    w.stop().await;
}

#[tokio::test]
async fn a_failing_notice_gets_no_notice_and_the_null_sender_none() {
    let courier = Scripted {
        capacity: 1,
        ..Default::default()
    };
    for _ in 0..2 {
        courier
            .script
            .lock()
            .unwrap()
            .push_back(Attempt::Permanent {
                reply: "550 5.1.1 unknown".into(),
            });
    }
    let w = start(courier, fast(), 1000, Duration::from_secs(5));
    let mut notice = envelope("a@contoso.com", "a@contoso.com");
    notice.kind = MessageKind::Notice;
    w.queue.enqueue(&notice, b"Subject: n\r\n\r\n").unwrap();
    w.queue
        .enqueue(&envelope("a@contoso.com", ""), b"Subject: n\r\n\r\n")
        .unwrap();
    w.queued.notify_one();
    w.until("both failed", |w| {
        w.queue
            .entry_list()
            .iter()
            .all(|e| e.state == EntryState::Failed)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(w.queue.entry_list().len(), 2, "no notice queued");
    assert_eq!(w.stats.notices(), (0, 0));
    w.stop().await;
}

#[tokio::test]
async fn the_per_minute_limit_holds_messages_back_without_an_attempt() {
    let courier = Scripted {
        capacity: 3,
        ..Default::default()
    };
    let w = start(courier, fast(), 2, Duration::from_secs(5));
    w.enqueue("a@contoso.com", 3);
    w.until("two delivered", |w| {
        w.courier.sent.lock().unwrap().len() == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let left = w.queue.entry_list();
    assert_eq!(left.len(), 1);
    assert_eq!(
        (left[0].attempts, w.stats.attempts(Outcome::Deferred)),
        (0, 0),
        "not an attempt"
    );
    w.stop().await;
}

#[tokio::test]
async fn one_delay_notice_then_max_age_fails_with_a_notice() {
    let courier = Scripted {
        capacity: 1,
        ..Default::default()
    };
    for _ in 0..20 {
        courier
            .script
            .lock()
            .unwrap()
            .push_back(Attempt::Temporary {
                reply: "451 4.4.0 away".into(),
                retry_after: None,
                maybe_sent: false,
            });
    }
    let queue = QueueConfig {
        retry_min_secs: 1,
        retry_max_secs: 1,
        delay_warning_secs: 1,
        max_age_secs: 3,
        ..QueueConfig::default()
    };
    let w = start(courier, queue, 1000, Duration::from_secs(5));
    w.queue
        .enqueue(
            &envelope("a@contoso.com", "app@contoso.com"),
            b"Subject: hi\r\n\r\n",
        )
        .unwrap();
    w.queued.notify_one();
    w.until("failed after max age", |w| {
        w.stats.attempts(Outcome::Failed) >= 1 && w.stats.notices().0 == 1
    })
    .await;
    assert_eq!(w.stats.notices().1, 1, "one delay notice");
    let failed: Vec<Entry> = w
        .queue
        .entry_list()
        .into_iter()
        .filter(|e| e.envelope.kind == MessageKind::Message)
        .collect();
    assert_eq!(failed[0].state, EntryState::Failed);
    assert!(failed[0].warned);
    assert!(
        failed[0]
            .last_reply
            .as_deref()
            .unwrap()
            .starts_with("554 5.4.7")
    );
    w.stop().await;
}

#[tokio::test]
async fn shutdown_gives_back_what_did_not_finish_within_the_grace() {
    let courier = Scripted {
        capacity: 1,
        delay: Duration::from_secs(3600),
        ..Default::default()
    };
    let w = start(courier, fast(), 1000, Duration::from_millis(200));
    w.enqueue("a@contoso.com", 1);
    w.until("in flight", |w| {
        w.courier.in_flight.load(Ordering::SeqCst) == 1
    })
    .await;
    let (queue, started) = (w.queue.clone(), std::time::Instant::now());
    w.stop().await;
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(queue.claims.lock().unwrap().is_empty(), "claim given back");
    assert_eq!(queue.entry_list()[0].attempts, 0);
}
