//! Microsoft's sending limits for one mailbox (PROTOCOL.md A12), kept by the relay so
//! that clients get temporary replies and queue, rather than Exchange refusing messages:
//! messages per minute and recipients per 24 hours (sliding windows, in memory), and
//! recipients per message. A message and its recipients are reserved when the client
//! names them (`MAIL FROM`, `RCPT TO`), so that parallel sessions of one mailbox cannot
//! pass a limit together; the reservation becomes a count once the upstream accepted the
//! message, and is given back otherwise.
//!
//! With a state that several relays share (the `postgres` backend), the same
//! reservations are also made in the fleet's counts ([`FleetCounters`]): a message or
//! recipient this relay would take is refused when the fleet's window is full, so that
//! sessions of one mailbox on different relays cannot pass a limit together. That is one
//! database round trip at `MAIL FROM` and one per `RCPT TO`; a commit, a give-back and
//! Microsoft's pause are sent in the background. While the fleet's counts cannot be
//! reached, this relay's own counts decide alone (see `state::postgres::counters`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use dashmap::DashMap;
use tokio::time::Instant;

use crate::protocol::smtp::reply;
use crate::state::FleetCounters;
use crate::state::counters::{Admission, Pending, Slot};

const MINUTE: Duration = Duration::from_secs(60);
const DAY: Duration = Duration::from_secs(24 * 60 * 60);
/// The longest pause the relay keeps for a throttled mailbox.
pub const MAX_PAUSE: Duration = Duration::from_secs(15 * 60);

/// The limits, from `[limits]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendingLimits {
    pub messages_per_minute: u32,
    pub recipients_per_message: u32,
    pub recipients_per_day: u32,
}

impl SendingLimits {
    pub fn from_config(limits: &crate::config::Limits) -> Self {
        Self {
            messages_per_minute: limits.smtp_messages_per_minute,
            recipients_per_message: limits.smtp_recipients_per_message,
            recipients_per_day: limits.smtp_recipients_per_day,
        }
    }
}

/// What one mailbox sent recently.
#[derive(Default)]
struct Window {
    /// When each message of the last minute was accepted.
    messages: VecDeque<Instant>,
    /// When each message of the last day was accepted, and its recipients.
    recipients: VecDeque<(Instant, u32)>,
    /// Sum of `recipients`.
    recipients_total: u64,
    /// Until when the upstream asked for a pause (`Retry-After`).
    paused_until: Option<Instant>,
    /// Messages of open transactions, and their recipients so far.
    reserved_messages: u32,
    reserved_recipients: u64,
}

impl Window {
    fn expire(&mut self, now: Instant) {
        while self
            .messages
            .front()
            .is_some_and(|t| now.duration_since(*t) >= MINUTE)
        {
            self.messages.pop_front();
        }
        while let Some(&(t, n)) = self.recipients.front() {
            if now.duration_since(t) < DAY {
                break;
            }
            self.recipients.pop_front();
            self.recipients_total -= u64::from(n);
        }
    }
}

/// The sending windows of every mailbox (and the fleet's, when it has shared counts).
#[derive(Default, Clone)]
pub struct SendingCounters {
    windows: Arc<DashMap<String, Arc<Mutex<Window>>>>,
    fleet: Option<Arc<dyn FleetCounters>>,
}

/// What a reservation holds in the fleet's counts.
struct FleetShare {
    fleet: Arc<dyn FleetCounters>,
    mailbox: String,
    slot: Slot,
    /// Recipients reserved there (those the upstream refused included, until the end).
    recipients: u32,
}

/// Runs a fleet call in the background (a commit, a give-back: nobody waits for them);
/// without a runtime, the fleet's count expires with its window.
fn in_background(call: Pending<()>) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(call);
    }
}

/// A refusal under the limits: the complete SMTP reply.
pub type Refusal = String;

impl SendingCounters {
    fn window(&self, mailbox: &str) -> Arc<Mutex<Window>> {
        if let Some(w) = self.windows.get(mailbox) {
            return w.clone();
        }
        self.windows.entry(mailbox.to_owned()).or_default().clone()
    }

    /// These windows, also counted in `fleet` (the relays sharing this state).
    pub fn with_fleet(mut self, fleet: Option<Arc<dyn FleetCounters>>) -> Self {
        self.fleet = fleet;
        self
    }

    /// At `MAIL FROM`: reserves a message of `mailbox` within the per-minute limit (and
    /// any pause Microsoft asked for), here and in the fleet, or refuses it.
    pub async fn reserve_message(
        &self,
        mailbox: &str,
        limits: &SendingLimits,
    ) -> Result<Reservation, Refusal> {
        let mut reservation = self.reserve_here(mailbox, limits)?;
        let Some(fleet) = &self.fleet else {
            return Ok(reservation);
        };
        let limit = limits.messages_per_minute;
        match fleet.reserve_message(mailbox, limit).await {
            Ok(Admission::Reserved(slot)) => {
                reservation.fleet = Some(FleetShare {
                    fleet: fleet.clone(),
                    mailbox: mailbox.to_owned(),
                    slot,
                    recipients: 0,
                });
                Ok(reservation)
            }
            Ok(Admission::Paused { secs }) => Err(reply::throttled(mailbox, secs)),
            Ok(Admission::OverLimit { secs }) => {
                Err(reply::messages_per_minute(mailbox, limit, secs))
            }
            // Degraded: this relay's count decides alone.
            Err(_) => Ok(reservation),
        }
    }

    /// [`SendingCounters::reserve_message`] in this relay's windows only.
    fn reserve_here(&self, mailbox: &str, limits: &SendingLimits) -> Result<Reservation, Refusal> {
        let window = self.window(mailbox);
        let mut w = window.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        w.expire(now);
        if let Some(until) = w.paused_until.filter(|until| *until > now) {
            let secs = until.duration_since(now).as_secs().max(1);
            return Err(reply::throttled(mailbox, secs));
        }
        if w.messages.len() + w.reserved_messages as usize >= limits.messages_per_minute as usize {
            let wait = w
                .messages
                .front()
                .map_or(MINUTE, |t| MINUTE.saturating_sub(now.duration_since(*t)));
            let (limit, secs) = (limits.messages_per_minute, wait.as_secs().max(1));
            return Err(reply::messages_per_minute(mailbox, limit, secs));
        }
        w.reserved_messages += 1;
        drop(w);
        Ok(Reservation {
            window,
            recipients: 0,
            committed: false,
            fleet: None,
        })
    }

    /// The upstream asked `mailbox` to wait `wait` (at most [`MAX_PAUSE`]) before sending
    /// again (on every relay of the fleet).
    pub fn throttle(&self, mailbox: &str, wait: Duration) {
        let window = self.window(mailbox);
        let mut w = window.lock().unwrap_or_else(PoisonError::into_inner);
        w.paused_until = Some(Instant::now() + wait.min(MAX_PAUSE));
        drop(w);
        if let Some(fleet) = &self.fleet {
            in_background(fleet.pause(mailbox, wait.min(MAX_PAUSE)));
        }
    }
}

/// A message reserved against its mailbox's limits; given back when dropped, unless
/// [`Reservation::commit`]ted.
pub struct Reservation {
    window: Arc<Mutex<Window>>,
    recipients: u32,
    committed: bool,
    fleet: Option<FleetShare>,
}

impl Reservation {
    /// At `RCPT TO`: reserves one more recipient (number `recipients() + 1` of this
    /// message) within the per-message and per-day limits, here and in the fleet, or
    /// refuses it.
    pub async fn add_recipient(
        &mut self,
        mailbox: &str,
        limits: &SendingLimits,
    ) -> Result<(), Refusal> {
        self.add_recipient_here(mailbox, limits)?;
        let Some(share) = &mut self.fleet else {
            return Ok(());
        };
        let per_day = limits.recipients_per_day;
        match share
            .fleet
            .reserve_recipient(mailbox, share.slot, per_day)
            .await
        {
            Ok(Admission::Reserved(_)) => {
                share.recipients += 1;
                Ok(())
            }
            Ok(_) => {
                self.give_back_recipient();
                Err(reply::recipients_per_day(mailbox, per_day))
            }
            // Degraded: this relay's count decides alone.
            Err(_) => Ok(()),
        }
    }

    /// [`Reservation::add_recipient`] in this relay's window only.
    fn add_recipient_here(&mut self, mailbox: &str, limits: &SendingLimits) -> Result<(), Refusal> {
        if self.recipients >= limits.recipients_per_message {
            // RFC 5321 §4.5.3.1.10: the client sends the rest in another transaction.
            return Err(reply::recipients_per_message(limits.recipients_per_message));
        }
        let mut w = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        w.expire(Instant::now());
        if w.recipients_total + w.reserved_recipients + 1 > u64::from(limits.recipients_per_day) {
            return Err(reply::recipients_per_day(
                mailbox,
                limits.recipients_per_day,
            ));
        }
        w.reserved_recipients += 1;
        self.recipients += 1;
        Ok(())
    }

    /// The upstream refused the recipient last reserved: it does not count (the fleet's
    /// count is settled when the message is committed or given back).
    pub fn give_back_recipient(&mut self) {
        if self.recipients == 0 {
            return;
        }
        self.recipients -= 1;
        let mut w = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        w.reserved_recipients = w.reserved_recipients.saturating_sub(1);
    }

    /// The upstream accepted the message: it counts from now on.
    pub fn commit(mut self) {
        let mut w = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        w.expire(now);
        w.messages.push_back(now);
        w.recipients.push_back((now, self.recipients));
        w.recipients_total += u64::from(self.recipients);
        release(&mut w, self.recipients);
        drop(w);
        self.committed = true;
        if let Some(share) = &self.fleet {
            let FleetShare { mailbox, slot, .. } = share;
            in_background(
                share
                    .fleet
                    .commit(mailbox, *slot, share.recipients, self.recipients),
            );
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        let mut w = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        release(&mut w, self.recipients);
        drop(w);
        if let Some(share) = &self.fleet {
            let FleetShare { mailbox, slot, .. } = share;
            in_background(share.fleet.give_back(mailbox, *slot, 1, share.recipients));
        }
    }
}

fn release(w: &mut Window, recipients: u32) {
    w.reserved_messages = w.reserved_messages.saturating_sub(1);
    w.reserved_recipients = w.reserved_recipients.saturating_sub(u64::from(recipients));
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: SendingLimits = SendingLimits {
        messages_per_minute: 3,
        recipients_per_message: 5,
        recipients_per_day: 12,
    };

    #[tokio::test(start_paused = true)]
    async fn messages_per_minute_slide() {
        let counters = SendingCounters::default();
        for _ in 0..3 {
            let mut message = counters.reserve_message("a@x.com", &LIMITS).await.unwrap();
            message.add_recipient("a@x.com", &LIMITS).await.unwrap();
            message.commit();
            tokio::time::advance(Duration::from_secs(10)).await;
        }
        let refusal = counters
            .reserve_message("a@x.com", &LIMITS)
            .await
            .err()
            .unwrap();
        assert!(refusal.starts_with("451 4.7.0 "), "{refusal}");
        assert!(refusal.contains("try again in 30 seconds"), "{refusal}");
        drop(counters.reserve_message("b@x.com", &LIMITS).await.unwrap());
        tokio::time::advance(Duration::from_secs(30)).await;
        drop(counters.reserve_message("a@x.com", &LIMITS).await.unwrap());
        counters.throttle("b@x.com", Duration::from_secs(120));
        let refusal = counters
            .reserve_message("b@x.com", &LIMITS)
            .await
            .err()
            .unwrap();
        assert!(
            refusal.contains("throttled") && refusal.contains("120 seconds"),
            "{refusal}"
        );
        tokio::time::advance(Duration::from_secs(121)).await;
        drop(counters.reserve_message("b@x.com", &LIMITS).await.unwrap());
    }

    async fn with_recipients(counters: &SendingCounters, n: u32) -> Result<Reservation, Refusal> {
        let mut message = counters.reserve_message("a@x.com", &LIMITS).await?;
        for _ in 0..n {
            message.add_recipient("a@x.com", &LIMITS).await?;
        }
        Ok(message)
    }

    #[tokio::test(start_paused = true)]
    async fn recipients_per_message_and_per_day() {
        let counters = SendingCounters::default();
        let mut five = with_recipients(&counters, 5).await.unwrap();
        let refusal = five.add_recipient("a@x.com", &LIMITS).await.unwrap_err();
        assert!(refusal.starts_with("452 4.5.3 "), "{refusal}");
        five.commit();
        with_recipients(&counters, 5).await.unwrap().commit();
        drop(with_recipients(&counters, 2).await.unwrap());
        let refusal = with_recipients(&counters, 3).await.err().unwrap();
        assert!(refusal.starts_with("451 4.7.0 "), "{refusal}");
        tokio::time::advance(DAY).await;
        drop(with_recipients(&counters, 5).await.unwrap());
    }

    /// Parallel sessions: what open transactions reserved counts, and comes back when
    /// they end without a message.
    #[tokio::test(start_paused = true)]
    async fn open_transactions_hold_their_share() {
        let counters = SendingCounters::default();
        let mut open = Vec::new();
        for _ in 0..3 {
            open.push(counters.reserve_message("a@x.com", &LIMITS).await.unwrap());
        }
        let refusal = counters
            .reserve_message("a@x.com", &LIMITS)
            .await
            .err()
            .unwrap();
        assert!(refusal.starts_with("451 4.7.0 "), "{refusal}");
        drop(open);
        let mut first = with_recipients(&counters, 5).await.unwrap();
        let mut second = with_recipients(&counters, 5).await.unwrap();
        let refusal = with_recipients(&counters, 3).await.err().unwrap();
        assert!(refusal.contains("24 hours"), "{refusal}");
        second
            .add_recipient("a@x.com", &LIMITS)
            .await
            .err()
            .unwrap();
        drop(second);
        first.add_recipient("a@x.com", &LIMITS).await.err().unwrap();
        drop(with_recipients(&counters, 5).await.unwrap());
        first.commit();
    }
}
