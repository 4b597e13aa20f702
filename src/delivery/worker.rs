//! One delivery of a queued message: a place in its mailbox's sending limits (30 a
//! minute, recipients a day), the claim, the body, the attempt through the mailbox's
//! route, then what it came to, recorded in the queue, the delivery log and the counts;
//! a notice to the sender where one is due.
//!
//! Order matters for "never lost": a notice is queued before the message is settled as
//! failed (a crash in between sends the notice twice, never not at all), and the
//! message is settled only after Microsoft answered (a crash in between sends it twice:
//! delivery is at least once).

use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use super::dispatcher::{Delivery, LEASE, RENEW_EVERY};
use super::notice::{self, NoticeKind, Report};
use super::policy::{self, Attempt, Verdict};
use super::route::Handed;
use crate::datetime::unix;
use crate::state::{DeliveryEvent, Entry, Envelope, EventKind, MessageKind, QueueId, Settlement};
use crate::submission::limits::Reservation;

/// How long a mailbox waits after the relay's own limits refused a message, when the
/// refusal does not say.
const LIMIT_WAIT: Duration = Duration::from_secs(5);

/// Delivers `entry` unless `abort`ed; how long its mailbox should wait before the next
/// one (the sending limits, Microsoft's `Retry-After`).
pub(super) async fn deliver(
    delivery: &Delivery,
    entry: Entry,
    abort: &CancellationToken,
) -> Option<Duration> {
    let mailbox = entry.envelope.mailbox.clone();
    let reservation = match reserve(delivery, &entry).await {
        Ok(reservation) => reservation,
        Err(wait) => return Some(wait),
    };
    let id = entry.id.clone();
    let until = unix(SystemTime::now()) + LEASE.as_secs();
    let claimed = blocking(delivery, move |q| q.claim(&id, until)).await;
    if claimed != Some(true) {
        return None;
    }
    tokio::select! {
        pause = attempt(delivery, &entry, reservation) => pause,
        never = keep_claim(delivery, &entry.id) => match never {},
        () = abort.cancelled() => {
            tracing::info!(queue_id = %entry.id, mailbox = %mailbox, "delivery cut short by shutdown; back in the queue");
            settle(delivery, &entry.id, Settlement::Released).await;
            None
        }
    }
}

/// Renews this relay's claim on `id` every [`RENEW_EVERY`] while the delivery runs (it
/// is dropped when the delivery ends); a claim found lost is logged once (the other relay's
/// outcome then stands: at least once).
async fn keep_claim(delivery: &Delivery, id: &crate::state::QueueId) -> std::convert::Infallible {
    let (queue_id, mut warned) = (id.to_string(), false);
    loop {
        tokio::time::sleep(RENEW_EVERY).await;
        let (id, until) = (id.clone(), unix(SystemTime::now()) + LEASE.as_secs());
        let renewed = blocking(delivery, move |q| q.renew(&id, until)).await;
        if renewed != Some(true) && !warned {
            warned = true;
            tracing::warn!(%queue_id, "cannot renew the claim on a message being delivered; another relay may deliver it too");
        }
    }
}

/// Reserves a message and its recipients in the mailbox's sending windows, or the wait
/// before trying again.
async fn reserve(delivery: &Delivery, entry: &Entry) -> Result<Reservation, Duration> {
    let (mailbox, limits) = (&entry.envelope.mailbox, &delivery.settings.limits);
    let counters = &delivery.counters;
    let mut reservation = counters
        .reserve_message(mailbox, limits)
        .await
        .map_err(|refusal| refusal_wait(&refusal))?;
    for _ in &entry.envelope.recipients {
        match reservation.add_recipient(mailbox, limits).await {
            Ok(()) => {}
            // More recipients than one message may have now: accepted under other
            // limits; Exchange decides.
            Err(refusal) if refusal.starts_with("452") => break,
            Err(refusal) => return Err(refusal_wait(&refusal)),
        }
    }
    Ok(reservation)
}

/// The wait a refusal of the sending limits names (`... try again in N seconds`).
fn refusal_wait(refusal: &str) -> Duration {
    let words: Vec<&str> = refusal.split_whitespace().collect();
    words
        .windows(3)
        .find(|w| w[0] == "in" && w[2].starts_with("second"))
        .and_then(|w| w[1].parse().ok())
        .map_or(LIMIT_WAIT, Duration::from_secs)
}

/// The claimed attempt: body, send, record.
async fn attempt(delivery: &Delivery, entry: &Entry, reservation: Reservation) -> Option<Duration> {
    let id = entry.id.clone();
    let queued = entry.clone();
    let body = blocking(delivery, move |q| q.message(&queued)).await;
    if body.is_none() {
        tracing::error!(queue_id = %id, mailbox = %entry.envelope.mailbox,
            "the queued message cannot be read or opened for its envelope; not sent, kept");
    }
    let (handed, message) = match body {
        Some(message) => {
            let handed = delivery.courier.send(&entry.envelope, &message).await;
            (handed, Some(message))
        }
        None => (Handed::unread(), None),
    };
    let attempt = handed.attempt;
    match &attempt {
        Attempt::Accepted { .. } => reservation.commit(),
        _ => drop(reservation),
    }
    let pause = match &attempt {
        Attempt::Temporary {
            retry_after: Some(wait),
            ..
        } => {
            delivery.counters.throttle(&entry.envelope.mailbox, *wait);
            Some(*wait)
        }
        _ => None,
    };
    let now = unix(SystemTime::now());
    let verdict = policy::verdict(entry, &attempt, now, &delivery.settings.queue);
    let original = message.as_deref().map_or(&[][..], |m| &m[..]);
    record(delivery, entry, &attempt, &verdict, handed.route);
    if let Some((kind, recipients)) = &verdict.notice {
        queue_notice(delivery, entry, *kind, recipients, original).await;
    }
    if matches!(verdict.settlement, Settlement::Deferred { .. })
        && policy::wants_delay_notice(entry, now, &delivery.settings.queue)
    {
        let reply = policy::first_line(attempt_reply(&attempt));
        let all: Vec<(String, String)> = entry
            .envelope
            .recipients
            .iter()
            .map(|r| (r.clone(), reply.clone()))
            .collect();
        queue_notice(delivery, entry, NoticeKind::Delay, &all, original).await;
        settle(delivery, &entry.id, Settlement::Warned).await;
    }
    settle(delivery, &entry.id, verdict.settlement).await;
    pause
}

fn attempt_reply(attempt: &Attempt) -> &str {
    match attempt {
        Attempt::Accepted { reply, .. }
        | Attempt::Temporary { reply, .. }
        | Attempt::Permanent { reply } => reply,
    }
}

/// The delivery log's line and the counts for one attempt.
fn record(
    delivery: &Delivery,
    entry: &Entry,
    attempt: &Attempt,
    verdict: &Verdict,
    route: Option<&'static str>,
) {
    delivery.stats.attempt(verdict.outcome);
    let envelope = &entry.envelope;
    let mut event = DeliveryEvent::new(verdict.event, &envelope.mailbox)
        .to(&envelope.recipients)
        .reply(&policy::first_line(attempt_reply(attempt)));
    event.client = envelope.client.clone();
    event.queue_id = Some(entry.id.to_string());
    event.message_id = envelope.message_id.clone();
    event.sender = Some(envelope.sender.clone());
    event.size = Some(entry.size);
    event.route = route.map(str::to_owned);
    let reply = event.reply.clone().unwrap_or_default();
    match attempt {
        Attempt::Accepted { request_id, .. } => {
            event.request_id = request_id.clone();
            tracing::info!(queue_id = %entry.id, mailbox = %envelope.mailbox, %reply, "queued message delivered");
        }
        Attempt::Temporary {
            maybe_sent: true, ..
        } => tracing::warn!(queue_id = %entry.id,
            mailbox = %envelope.mailbox, %reply,
            "Microsoft's answer leaves open whether the message was sent; it is tried again and may arrive twice"),
        _ if verdict.event == EventKind::Bounced => {
            tracing::warn!(queue_id = %entry.id, mailbox = %envelope.mailbox, %reply, "queued message failed")
        }
        _ => {
            tracing::info!(queue_id = %entry.id, mailbox = %envelope.mailbox, %reply, "queued message deferred")
        }
    }
    delivery.log.record(event);
}

/// Queues a `kind` notice about `recipients` of `entry` to its sender, as its mailbox.
async fn queue_notice(
    delivery: &Delivery,
    entry: &Entry,
    kind: NoticeKind,
    recipients: &[(String, String)],
    original: &[u8],
) {
    let settings = &delivery.settings;
    let envelope = &entry.envelope;
    let report = Report {
        kind,
        host: &settings.host,
        mailbox: &envelope.mailbox,
        sender: &envelope.sender,
        queue_id: entry.id.as_str(),
        arrival: entry.received_at,
        now: unix(SystemTime::now()),
        retry_until: Some(
            entry
                .received_at
                .saturating_add(settings.queue.max_age_secs),
        ),
        recipients,
        original,
    };
    let bytes = notice::build(&report);
    let notice = Envelope {
        mailbox: envelope.mailbox.clone(),
        sender: envelope.mailbox.clone(),
        recipients: vec![envelope.sender.clone()],
        client: None,
        message_id: Some(format!("<{}.{}@{}>", kind.name(), entry.id, settings.host)),
        kind: MessageKind::Notice,
        parameters: Vec::new(),
    };
    let (queue, queued) = (delivery.queue.clone(), notice.clone());
    let stored = tokio::task::spawn_blocking(move || queue.enqueue(&queued, &bytes)).await;
    match stored {
        Ok(Ok(stored)) => {
            delivery.stats.notice(kind == NoticeKind::Delay);
            let mut event =
                DeliveryEvent::new(EventKind::Queued, &notice.mailbox).to(&notice.recipients);
            event.queue_id = Some(stored.id.to_string());
            event.message_id = notice.message_id;
            event.sender = Some(notice.sender);
            event.size = Some(stored.size);
            event.route = Some("notice".to_owned());
            delivery.log.record(event);
            delivery.queued.notify_one();
        }
        Ok(Err(e)) => {
            tracing::error!(queue_id = %entry.id, error = %e, "cannot queue the notice to the sender")
        }
        Err(e) => tracing::error!(queue_id = %entry.id, error = %e, "queueing the notice failed"),
    }
}

/// Records `settlement` for `id`; a failure is logged (the claim then runs out and the
/// message is tried again: at least once).
async fn settle(delivery: &Delivery, id: &QueueId, settlement: Settlement) {
    let (key, what) = (id.clone(), format!("{settlement:?}"));
    if blocking(delivery, move |q| {
        q.settle(&key, &settlement).map(|()| true)
    })
    .await
    .is_none()
    {
        tracing::error!(queue_id = %id, settlement = %what, "cannot record the delivery in the queue; it is tried again when its claim runs out");
    }
}

/// Runs a queue call on the blocking pool; `None` (logged) when it failed.
async fn blocking<T, F>(delivery: &Delivery, call: F) -> Option<T>
where
    T: Send + 'static,
    F: FnOnce(&dyn crate::state::OutboundQueue) -> Result<T, crate::state::StoreError>
        + Send
        + 'static,
{
    let queue = delivery.queue.clone();
    match tokio::task::spawn_blocking(move || call(queue.as_ref())).await {
        Ok(Ok(value)) => Some(value),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "the queue's storage failed");
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "a queue call failed");
            None
        }
    }
}
