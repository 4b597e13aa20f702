use std::sync::atomic::AtomicUsize;

use zeroize::Zeroizing;

use super::*;
use crate::state::StoreError;
use crate::state::queue::{Entry, Envelope, MailboxDepth, QueueError, QueueId, Settlement};

/// How the fake queue answers `stats`.
#[derive(Debug, Clone, Copy)]
enum Answer {
    Bytes(u64),
    Fail,
    /// Blocks until `released`.
    Hang,
}

fn unreadable(why: &str) -> StoreError {
    StoreError::Corrupt {
        file: "queue".into(),
        why: why.into(),
    }
}

#[derive(Debug)]
struct Counted {
    answer: Mutex<Answer>,
    released: AtomicBool,
    calls: AtomicUsize,
}

impl OutboundQueue for Counted {
    fn stats(&self) -> Result<QueueStats, StoreError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let answer = *self.answer.lock().unwrap();
        match answer {
            Answer::Bytes(bytes) => Ok(QueueStats {
                mailboxes: vec![MailboxDepth {
                    mailbox: "a@x.com".into(),
                    queued: 2,
                    failed: 1,
                    oldest_received_at: Some(100),
                }],
                bytes,
            }),
            Answer::Fail => Err(unreadable("down")),
            Answer::Hang => {
                while !self.released.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(unreadable("late"))
            }
        }
    }
    fn enqueue(&self, _: &Envelope, _: &[u8]) -> Result<Entry, QueueError> {
        panic!("only stats")
    }
    fn due(&self, _: u64, _: usize) -> Result<Vec<Entry>, StoreError> {
        panic!("only stats")
    }
    fn claim(&self, _: &QueueId, _: u64) -> Result<bool, StoreError> {
        panic!("only stats")
    }
    fn message(&self, _: &Entry) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        panic!("only stats")
    }
    fn settle(&self, _: &QueueId, _: &Settlement) -> Result<(), StoreError> {
        panic!("only stats")
    }
    fn entries(&self) -> Result<Vec<Entry>, StoreError> {
        panic!("only stats")
    }
    fn entry(&self, _: &QueueId) -> Result<Option<Entry>, StoreError> {
        panic!("only stats")
    }
    fn retry(&self, _: Option<&QueueId>) -> Result<usize, StoreError> {
        panic!("only stats")
    }
    fn remove(&self, _: &QueueId) -> Result<bool, StoreError> {
        panic!("only stats")
    }
}

#[tokio::test]
async fn a_failing_or_hanging_queue_leaves_the_last_stats_and_one_read_at_a_time() {
    let queue = Arc::new(Counted {
        answer: Mutex::new(Answer::Bytes(10)),
        released: AtomicBool::new(false),
        calls: AtomicUsize::new(0),
    });
    let reader = QueueReader::with_bound(Some(queue.clone()), Duration::from_millis(50));
    let bytes = |read: Option<StatsRead>| read.map(|r| r.stats.bytes);
    assert_eq!(bytes(reader.stats().await), Some(10));

    *queue.answer.lock().unwrap() = Answer::Fail;
    assert_eq!(bytes(reader.stats().await), Some(10));

    *queue.answer.lock().unwrap() = Answer::Hang;
    assert_eq!(bytes(reader.stats().await), Some(10));
    assert_eq!(bytes(reader.stats().await), Some(10));
    assert_eq!(
        queue.calls.load(Ordering::SeqCst),
        3,
        "no second read while one hangs"
    );

    *queue.answer.lock().unwrap() = Answer::Bytes(20);
    queue.released.store(true, Ordering::SeqCst);
    while reader.reading.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(bytes(reader.stats().await), Some(20));
    assert_eq!(bytes(QueueReader::new(None).stats().await), None);
}

#[test]
fn the_status_view_sums_the_mailboxes_and_ages_from_now() {
    let read = StatsRead {
        stats: crate::metrics::tests::sample_stats(),
        at: 1_990,
    };
    let view = QueueView::of(&read, 2_000);
    assert_eq!((view.queued, view.failed, view.bytes), (4, 3, 4096));
    assert_eq!(view.oldest_age_secs, Some(1_000));
    assert_eq!(view.mailboxes[1].oldest_age_secs, None);
    assert_eq!(view.read_at, 1_990);
}
