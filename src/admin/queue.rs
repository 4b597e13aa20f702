//! The outbound queue as the admin endpoint shows it: `/metrics` gauges and the `queue`
//! object of `/status`, both from [`OutboundQueue::stats`]. The stats are read when asked,
//! on the blocking pool, for at most [`STATS_BOUND`]: a slow disk or database never holds a
//! scrape up, and a read that fails or takes too long leaves the last stats in place (with
//! their time). Only one read runs at a time. The queue never makes `/readyz` fail: a deep
//! queue is a number here, not an outage.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::state::queue::{OutboundQueue, QueueStats};

/// The longest a scrape or `/status` waits for the queue's stats.
pub const STATS_BOUND: Duration = Duration::from_secs(2);

/// The queue's stats as last read, and when (Unix seconds).
#[derive(Debug, Clone)]
pub struct StatsRead {
    pub stats: QueueStats,
    pub at: u64,
}

/// Reads the queue's stats within [`STATS_BOUND`], one read at a time, keeping the last.
#[derive(Debug)]
pub struct QueueReader {
    queue: Option<Arc<dyn OutboundQueue>>,
    last: Arc<Mutex<Option<StatsRead>>>,
    reading: Arc<AtomicBool>,
    /// Whether the last read failed: a failing queue is logged once, not per scrape.
    failing: AtomicBool,
    bound: Duration,
}

/// Clears the "a read runs" flag when the read ends, even by a panic.
struct Reading(Arc<AtomicBool>);

impl Drop for Reading {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl QueueReader {
    /// A reader of `queue` (`None`: the state keeps no queue, nothing to show).
    pub fn new(queue: Option<Arc<dyn OutboundQueue>>) -> Self {
        Self::with_bound(queue, STATS_BOUND)
    }

    pub fn with_bound(queue: Option<Arc<dyn OutboundQueue>>, bound: Duration) -> Self {
        Self {
            queue,
            last: Arc::default(),
            reading: Arc::default(),
            failing: AtomicBool::new(false),
            bound,
        }
    }

    /// The stats read now, or the last ones when this read fails, takes too long, or an
    /// earlier read still runs; `None` before any read succeeded (or without a queue).
    pub async fn stats(&self) -> Option<StatsRead> {
        let queue = self.queue.clone()?;
        if !self.reading.swap(true, Ordering::AcqRel) {
            let guard = Reading(self.reading.clone());
            let last = self.last.clone();
            let read = tokio::task::spawn_blocking(move || {
                let _guard = guard;
                let stats = queue.stats()?;
                let at = crate::datetime::unix(std::time::SystemTime::now());
                *last.lock().unwrap_or_else(PoisonError::into_inner) =
                    Some(StatsRead { stats, at });
                Ok::<(), crate::state::StoreError>(())
            });
            let why = match tokio::time::timeout(self.bound, read).await {
                Ok(Ok(Ok(()))) => None,
                Ok(Ok(Err(e))) => Some(e.to_string()),
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some(format!(
                    "no answer within {:?} (the read goes on)",
                    self.bound
                )),
            };
            self.note(why);
        }
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Logs the start and the end of a run of failed reads (`why`: this one's failure).
    fn note(&self, why: Option<String>) {
        match why {
            Some(why) if !self.failing.swap(true, Ordering::AcqRel) => tracing::warn!(
                error = %why,
                "cannot read the queue's stats; /metrics and /status show the last ones read"
            ),
            Some(_) => {}
            None if self.failing.swap(false, Ordering::AcqRel) => {
                tracing::info!("the queue's stats are read again")
            }
            None => {}
        }
    }
}

/// Sets the queue's gauges (stats within the bound) and the delivery counts on the
/// relay's metrics, before a scrape renders them.
pub async fn export(reader: &QueueReader, relay: &dyn super::RelayView) {
    let metrics = relay.metrics();
    if let Some(read) = reader.stats().await {
        let now = crate::datetime::unix(std::time::SystemTime::now());
        metrics.set_queue(&read.stats, now);
    }
    metrics.set_deliveries(relay.delivery_counters(), relay.delivery_log_dropped());
}

/// One mailbox's part of the queue, as `/status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxQueueView {
    pub mailbox: String,
    pub queued: u64,
    pub failed: u64,
    /// Seconds since its oldest queued message was accepted.
    pub oldest_age_secs: Option<u64>,
}

/// The `queue` object of `/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueView {
    pub queued: u64,
    pub failed: u64,
    /// Sealed bytes, counted against `queue.max_bytes`.
    pub bytes: u64,
    /// Seconds since the oldest queued (not failed) message was accepted.
    pub oldest_age_secs: Option<u64>,
    pub mailboxes: Vec<MailboxQueueView>,
    /// When these numbers were read (Unix seconds): earlier than now when the last read
    /// failed or took too long.
    pub read_at: u64,
}

impl QueueView {
    /// `read` as seen at `now` (Unix seconds).
    pub fn of(read: &StatsRead, now: u64) -> Self {
        let age = |at: Option<u64>| at.map(|at| now.saturating_sub(at));
        let mailboxes: Vec<MailboxQueueView> = read
            .stats
            .mailboxes
            .iter()
            .map(|d| MailboxQueueView {
                mailbox: d.mailbox.clone(),
                queued: d.queued,
                failed: d.failed,
                oldest_age_secs: age(d.oldest_received_at),
            })
            .collect();
        Self {
            queued: mailboxes.iter().map(|m| m.queued).sum(),
            failed: mailboxes.iter().map(|m| m.failed).sum(),
            bytes: read.stats.bytes,
            oldest_age_secs: mailboxes.iter().filter_map(|m| m.oldest_age_secs).max(),
            mailboxes,
            read_at: read.at,
        }
    }
}

#[cfg(test)]
mod tests;
