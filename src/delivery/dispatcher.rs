//! The relay's one dispatcher: it looks at the queue when a message was queued, when a
//! delivery ended, and at least every second; takes what is due, oldest first, within
//! the bounds (deliveries in flight per relay, per mailbox by its route, a mailbox's
//! pause), and runs each delivery ([`super::worker`]) as a task of its own. At shutdown
//! it stops taking messages, lets deliveries in flight finish within the grace period,
//! and gives back the claims of those that did not.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::counters::DeliveryCounters;
use super::route::Courier;
use crate::config::QueueConfig;
use crate::state::{DeliveryLog, Entry, OutboundQueue};
use crate::submission::limits::{SendingCounters, SendingLimits};

/// Deliveries in flight at once per relay: no more message bodies are in memory.
pub const MAX_IN_FLIGHT: usize = 64;
/// Entries looked at per pass (envelopes only, never bodies).
const BATCH: usize = 1000;
/// How long a claim holds unless renewed: a delivery renews it every third of it
/// ([`RENEW_EVERY`]) for as long as it runs (a login, the end-of-DATA wait of up to 10
/// minutes), so another relay takes a message over within a minute of its relay's death,
/// never from a live one.
pub const LEASE: Duration = Duration::from_secs(60);
/// How often a delivery under way renews its claim.
pub const RENEW_EVERY: Duration = Duration::from_secs(20);
/// The longest the dispatcher sleeps without looking at the queue.
const TICK: Duration = Duration::from_secs(1);
/// After the grace period, how long aborted deliveries get to give their claims back.
const RELEASE_WAIT: Duration = Duration::from_secs(5);

/// What the dispatcher is told at start.
#[derive(Debug, Clone)]
pub struct Settings {
    pub queue: QueueConfig,
    pub limits: SendingLimits,
    /// The relay's host name (notices' `Reporting-MTA`).
    pub host: Arc<str>,
    /// How long deliveries in flight get at shutdown.
    pub grace: Duration,
}

/// A mailbox's deliveries in flight, and until when it waits.
#[derive(Debug, Default)]
struct Lane {
    in_flight: usize,
    paused_until: Option<Instant>,
}

/// What the dispatcher and its deliveries share.
pub struct Delivery {
    pub(super) queue: Arc<dyn OutboundQueue>,
    pub(super) courier: Arc<dyn Courier>,
    pub(super) counters: SendingCounters,
    pub(super) log: DeliveryLog,
    /// Woken when something was queued (by a client, or a notice by a delivery).
    pub(super) queued: Arc<Notify>,
    pub(super) stats: DeliveryCounters,
    pub(super) settings: Settings,
    lanes: Mutex<HashMap<String, Lane>>,
    /// Woken when a delivery ended: its mailbox may have room again.
    ended: Notify,
}

impl Delivery {
    pub fn new(
        queue: Arc<dyn OutboundQueue>,
        courier: Arc<dyn Courier>,
        (counters, log, queued): (SendingCounters, DeliveryLog, Arc<Notify>),
        stats: DeliveryCounters,
        settings: Settings,
    ) -> Self {
        Self {
            queue,
            courier,
            counters,
            log,
            queued,
            stats,
            settings,
            lanes: Mutex::default(),
            ended: Notify::new(),
        }
    }

    /// Takes a place in `mailbox`'s lane, if it has room and is not paused.
    fn enter(&self, mailbox: &str) -> bool {
        let capacity = self.courier.capacity(mailbox).max(1);
        let mut lanes = self.lanes.lock().unwrap_or_else(PoisonError::into_inner);
        let lane = lanes.entry(mailbox.to_owned()).or_default();
        let now = Instant::now();
        if lane.paused_until.is_some_and(|until| until > now) || lane.in_flight >= capacity {
            return false;
        }
        lane.in_flight += 1;
        true
    }

    /// Leaves `mailbox`'s lane; `pause`: it waits that long before its next delivery.
    pub(super) fn leave(&self, mailbox: &str, pause: Option<Duration>) {
        let mut lanes = self.lanes.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(lane) = lanes.get_mut(mailbox) {
            lane.in_flight = lane.in_flight.saturating_sub(1);
            if let Some(pause) = pause {
                let until = Instant::now() + pause;
                lane.paused_until = Some(lane.paused_until.map_or(until, |u| u.max(until)));
            }
            if lane.in_flight == 0 && lane.paused_until.is_none_or(|u| u <= Instant::now()) {
                lanes.remove(mailbox);
            }
        }
        drop(lanes);
        self.ended.notify_one();
    }

    /// What is due now, oldest first (by queue id: the order of acceptance).
    async fn due(&self) -> Vec<Entry> {
        let queue = self.queue.clone();
        let now = crate::datetime::unix(std::time::SystemTime::now());
        match tokio::task::spawn_blocking(move || queue.due(now, BATCH)).await {
            Ok(Ok(mut entries)) => {
                entries.sort_by(|a, b| a.id.cmp(&b.id));
                entries
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot read the queue; trying again shortly");
                Vec::new()
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the queue failed");
                Vec::new()
            }
        }
    }
}

/// Starts the dispatcher of `delivery`; it stops when `shutdown` is cancelled (after the
/// grace period for deliveries in flight).
pub fn start(delivery: Delivery, shutdown: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(run(Arc::new(delivery), shutdown))
}

async fn run(delivery: Arc<Delivery>, shutdown: CancellationToken) {
    let tasks = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let abort = CancellationToken::new();
    while !shutdown.is_cancelled() {
        for entry in delivery.due().await {
            if shutdown.is_cancelled() {
                break;
            }
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                break;
            };
            if delivery.enter(&entry.envelope.mailbox) {
                tasks.spawn(one(delivery.clone(), entry, slot, abort.clone()));
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = delivery.queued.notified() => {}
            () = delivery.ended.notified() => {}
            () = tokio::time::sleep(TICK) => {}
        }
    }
    tasks.close();
    if tokio::time::timeout(delivery.settings.grace, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            in_flight = tasks.len(),
            "grace period over; giving the deliveries in flight back to the queue"
        );
        abort.cancel();
        let _ = tokio::time::timeout(RELEASE_WAIT, tasks.wait()).await;
    }
}

/// One delivery, holding its slot; `abort` ends it (its claim given back).
async fn one(
    delivery: Arc<Delivery>,
    entry: Entry,
    slot: OwnedSemaphorePermit,
    abort: CancellationToken,
) {
    let mailbox = entry.envelope.mailbox.clone();
    let pause = super::worker::deliver(&delivery, entry, &abort).await;
    delivery.leave(&mailbox, pause);
    drop(slot);
}
