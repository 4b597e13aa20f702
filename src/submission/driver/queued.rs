//! The queue way out: a message held whole like the Graph way's ([`super::held`]), its
//! senders checked, then stored durably in the relay's queue (sealed, fsynced, or
//! committed) before the client hears `250 2.0.0 Ok: queued as {id}`; the delivery workers
//! send it later. A queue that cannot store it (full, or its storage failing) answers
//! `452 4.3.1` and keeps nothing.
//!
//! On this way the per-minute and per-day sending windows are not reserved at `MAIL FROM`
//! and `RCPT TO`: the workers take them when they send. The recipients-per-message limit
//! and the sender rules hold as on the other ways.

use super::{Queued, Session, Way};
use crate::protocol::smtp::reply;
use crate::state::{DeliveryEvent, Envelope, EventKind, MessageKind};
use crate::submission::limits::Reservation;

impl Session {
    /// At `MAIL FROM`: the message's share of the mailbox's sending windows, or the
    /// refusal; none on the queue way.
    pub(super) async fn reserve_message(&mut self) -> Result<Option<Reservation>, String> {
        if matches!(self.way, Some(Way::Queue(_))) {
            return Ok(None);
        }
        // Borrowed mutably, not shared: the session need not be `Sync` across the await.
        let ctx = &mut self.ctx;
        let reservation = ctx
            .counters
            .reserve_message(&ctx.mailbox, &ctx.limits)
            .await?;
        Ok(Some(reservation))
    }

    /// At `RCPT TO`: one more recipient of the open transaction within the limits
    /// (reserved in the windows, or on the queue way counted against the per-message one).
    pub(super) async fn reserve_recipient(&mut self) -> Result<(), String> {
        let Some(tx) = &mut self.tx else {
            return Ok(());
        };
        let (mailbox, limits) = (&self.ctx.mailbox, &self.ctx.limits);
        match &mut tx.reservation {
            Some(reservation) => reservation.add_recipient(mailbox, limits).await,
            None if tx.recipients.len() >= limits.recipients_per_message as usize => {
                Err(reply::recipients_per_message(limits.recipients_per_message))
            }
            None => Ok(()),
        }
    }

    /// A held message whose senders passed, to its way out: sent (Graph) or queued. The
    /// reply for the client, and whether the message was taken.
    pub(super) async fn hand_over(&mut self, way: &Way, message: Vec<u8>) -> (String, bool) {
        let Some(tx) = &mut self.tx else {
            return (reply::NEED_MAIL.into(), false);
        };
        tx.size = Some(message.len() as u64);
        match way {
            Way::Queue(queued) => self.enqueue(queued, message).await,
            Way::Held(sender) => {
                let recipients = tx.recipients.clone();
                match sender.send(&message, &recipients).await {
                    Ok(reply) => (reply, true),
                    Err(reply) => (reply, false),
                }
            }
            // Never here: an upstream connection streams its messages.
            Way::Upstream(_) => (reply::UPSTREAM_GONE.into(), false),
        }
    }

    /// Stores `message` in the queue for the open transaction (on the blocking pool: the
    /// queue writes and fsyncs, or waits for its database). `250` only once it is stored;
    /// the workers are woken and the delivery log says `queued`.
    async fn enqueue(&mut self, queued: &Queued, message: Vec<u8>) -> (String, bool) {
        let Some(tx) = &self.tx else {
            return (reply::NEED_MAIL.into(), false);
        };
        let envelope = Envelope {
            mailbox: self.ctx.mailbox.clone(),
            sender: tx.sender.clone(),
            recipients: tx.recipients.clone(),
            client: self.ctx.client.clone(),
            message_id: tx.message_id.clone(),
            kind: MessageKind::Message,
            parameters: tx.parameters.clone(),
        };
        let queue = queued.queue.clone();
        let size = message.len() as u64;
        let stored =
            tokio::task::spawn_blocking(move || queue.enqueue(&envelope, &message).map(|e| e.id))
                .await;
        let id = match stored {
            Ok(Ok(id)) => id,
            Ok(Err(error)) => {
                tracing::warn!(%error, "message not queued");
                return (reply::QUEUE_STORAGE_FULL.into(), false);
            }
            Err(error) => {
                tracing::error!(%error, "queueing the message failed");
                return (reply::QUEUE_STORAGE_FULL.into(), false);
            }
        };
        queued.wake.notify_one();
        let answer = reply::queued_as(&id);
        tracing::info!(queue_id = %id, size, "message queued");
        let event = self
            .event(EventKind::Queued, tx.sender.clone(), &tx.recipients)
            .reply(&answer);
        self.ctx.log.record(DeliveryEvent {
            queue_id: Some(id.to_string()),
            message_id: tx.message_id.clone(),
            size: Some(size),
            route: Some("queue".into()),
            ..event
        });
        (answer, true)
    }
}
