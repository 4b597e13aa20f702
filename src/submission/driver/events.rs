//! What a client's transaction came to, in the delivery log: `accepted` with Microsoft's
//! reply (direct delivery), `refused` with the reply the client heard (a message refused
//! at its end, by the relay's checks or by Microsoft; a sender or a recipient refused by
//! the sender rules or the sending limits). The queue way logs `queued` itself
//! ([`super::queued`]). Envelopes and replies only: never a body or a secret.

use super::{Session, Transaction, Way};
use crate::state::{DeliveryEvent, EventKind};

impl Session {
    /// The end of a transaction whose message was read (`received`: its bytes as the
    /// client sent them): an accepted one counts, and its share of the sending limits
    /// becomes a count; either way it is logged (a queued one already was).
    pub(super) fn finish(
        &mut self,
        tx: Option<Transaction>,
        reply: &str,
        accepted: bool,
        received: u64,
    ) {
        let Some(tx) = tx else { return };
        let Transaction {
            sender,
            recipients,
            reservation,
            message_id,
            size,
            ..
        } = tx;
        let kind = match accepted {
            true => EventKind::Accepted,
            false => EventKind::Refused,
        };
        if accepted {
            self.served.accepted += 1;
            if let Some(reservation) = reservation {
                reservation.commit();
            }
            if matches!(self.way, Some(Way::Queue(_))) {
                return;
            }
        }
        let event = self.event(kind, sender, &recipients).reply(reply);
        self.ctx.log.record(DeliveryEvent {
            message_id,
            size: Some(size.unwrap_or(received)),
            ..event
        });
    }

    /// A sender refused at `MAIL FROM` (by the sender rules or the sending limits).
    pub(super) fn log_refusal(&self, sender: &str, recipients: &[String], reply: &str) {
        let event = self.event(EventKind::Refused, sender.to_owned(), recipients);
        self.ctx.log.record(event.reply(reply));
    }

    /// A recipient refused at `RCPT TO` by the sending limits.
    pub(super) fn log_rcpt_refusal(&self, recipient: &str, reply: &str) {
        let sender = self.tx.as_ref().map(|tx| tx.sender.as_str());
        let recipients = [recipient.to_owned()];
        self.log_refusal(sender.unwrap_or_default(), &recipients, reply);
    }

    /// An event of this session's mailbox and client, for `sender` and `recipients`, with
    /// the route its messages take.
    pub(super) fn event(
        &self,
        kind: EventKind,
        sender: String,
        recipients: &[String],
    ) -> DeliveryEvent {
        let route = match &self.way {
            Some(Way::Upstream(_)) => Some("smtp"),
            Some(Way::Held(_)) => Some("graph"),
            Some(Way::Queue(_)) => Some("queue"),
            None => None,
        };
        DeliveryEvent {
            client: self.ctx.client.clone(),
            sender: Some(sender),
            route: route.map(str::to_owned),
            ..DeliveryEvent::new(kind, &self.ctx.mailbox).to(recipients)
        }
    }
}
