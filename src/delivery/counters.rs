//! What the delivery workers did, counted in memory for the metrics (`metrics` reads them
//! when scraped; the workers never see the metrics registry).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// What one delivery attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Microsoft accepted the message.
    Delivered,
    /// A temporary failure: tried again later.
    Deferred,
    /// A permanent failure or too old: the message failed.
    Failed,
}

impl Outcome {
    pub const ALL: [Outcome; 3] = [Outcome::Delivered, Outcome::Deferred, Outcome::Failed];

    pub fn name(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Deferred => "deferred",
            Outcome::Failed => "failed",
        }
    }
}

/// Attempts by outcome, and notices (RFC 3464) queued for senders. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct DeliveryCounters {
    inner: Arc<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    delivered: AtomicU64,
    deferred: AtomicU64,
    failed: AtomicU64,
    failure_notices: AtomicU64,
    delay_notices: AtomicU64,
}

impl DeliveryCounters {
    pub fn attempt(&self, outcome: Outcome) {
        self.slot(outcome).fetch_add(1, Ordering::Relaxed);
    }

    /// A notice queued for a sender: `delay` for "still trying", else a failure.
    pub fn notice(&self, delay: bool) {
        let slot = match delay {
            true => &self.inner.delay_notices,
            false => &self.inner.failure_notices,
        };
        slot.fetch_add(1, Ordering::Relaxed);
    }

    pub fn attempts(&self, outcome: Outcome) -> u64 {
        self.slot(outcome).load(Ordering::Relaxed)
    }

    /// Notices queued so far: (failure, delay).
    pub fn notices(&self) -> (u64, u64) {
        (
            self.inner.failure_notices.load(Ordering::Relaxed),
            self.inner.delay_notices.load(Ordering::Relaxed),
        )
    }

    fn slot(&self, outcome: Outcome) -> &AtomicU64 {
        match outcome {
            Outcome::Delivered => &self.inner.delivered,
            Outcome::Deferred => &self.inner.deferred,
            Outcome::Failed => &self.inner.failed,
        }
    }
}
