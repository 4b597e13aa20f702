//! Microsoft's sending limits for one mailbox (PROTOCOL.md A12), kept by the relay so
//! that clients get temporary replies and queue, rather than Exchange refusing messages:
//! messages per minute and recipients per 24 hours (sliding windows, in memory), and
//! recipients per message. Messages and recipients count once the upstream accepted them.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use dashmap::DashMap;
use tokio::time::Instant;

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

/// The sending windows of every mailbox.
#[derive(Default, Clone)]
pub struct SendingCounters {
    windows: Arc<DashMap<String, Arc<Mutex<Window>>>>,
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

    /// Before `MAIL FROM`: may `mailbox` start another message now?
    pub fn check_message(&self, mailbox: &str, limits: &SendingLimits) -> Result<(), Refusal> {
        let window = self.window(mailbox);
        let mut w = window.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        w.expire(now);
        if let Some(until) = w.paused_until.filter(|until| *until > now) {
            return Err(format!(
                "451 4.7.0 Microsoft throttled mailbox {mailbox}; try again in {} seconds\r\n",
                until.duration_since(now).as_secs().max(1)
            ));
        }
        if w.messages.len() >= limits.messages_per_minute as usize {
            let wait = w
                .messages
                .front()
                .map_or(MINUTE, |t| MINUTE.saturating_sub(now.duration_since(*t)));
            return Err(format!(
                "451 4.7.0 Mailbox {mailbox} sent {} messages in the last minute, Microsoft's limit; try again in {} seconds\r\n",
                limits.messages_per_minute,
                wait.as_secs().max(1)
            ));
        }
        Ok(())
    }

    /// Before accepting recipient number `nth` (1-based) of the current message.
    pub fn check_recipient(
        &self,
        mailbox: &str,
        nth: u32,
        limits: &SendingLimits,
    ) -> Result<(), Refusal> {
        if nth > limits.recipients_per_message {
            // RFC 5321 §4.5.3.1.10: the client sends the rest in another transaction.
            return Err(format!(
                "452 4.5.3 Too many recipients: at most {} per message; send the rest in another message\r\n",
                limits.recipients_per_message
            ));
        }
        let window = self.window(mailbox);
        let mut w = window.lock().unwrap_or_else(PoisonError::into_inner);
        w.expire(Instant::now());
        if w.recipients_total + u64::from(nth) > u64::from(limits.recipients_per_day) {
            return Err(format!(
                "451 4.7.0 Mailbox {mailbox} reached Microsoft's limit of {} recipients in 24 hours; try again later\r\n",
                limits.recipients_per_day
            ));
        }
        Ok(())
    }

    /// The upstream asked `mailbox` to wait `wait` (at most [`MAX_PAUSE`]) before sending
    /// again.
    pub fn throttle(&self, mailbox: &str, wait: Duration) {
        let window = self.window(mailbox);
        let mut w = window.lock().unwrap_or_else(PoisonError::into_inner);
        w.paused_until = Some(Instant::now() + wait.min(MAX_PAUSE));
    }

    /// After the upstream accepted a message for `recipients` recipients.
    pub fn record(&self, mailbox: &str, recipients: u32) {
        let window = self.window(mailbox);
        let mut w = window.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        w.expire(now);
        w.messages.push_back(now);
        w.recipients.push_back((now, recipients));
        w.recipients_total += u64::from(recipients);
    }
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
            counters.check_message("a@x.com", &LIMITS).unwrap();
            counters.record("a@x.com", 1);
            tokio::time::advance(Duration::from_secs(10)).await;
        }
        let refusal = counters.check_message("a@x.com", &LIMITS).unwrap_err();
        assert!(refusal.starts_with("451 4.7.0 "), "{refusal}");
        assert!(refusal.contains("try again in 30 seconds"), "{refusal}");
        counters.check_message("b@x.com", &LIMITS).unwrap();
        tokio::time::advance(Duration::from_secs(30)).await;
        counters.check_message("a@x.com", &LIMITS).unwrap();
        counters.throttle("b@x.com", Duration::from_secs(120));
        let refusal = counters.check_message("b@x.com", &LIMITS).unwrap_err();
        assert!(
            refusal.contains("throttled") && refusal.contains("120 seconds"),
            "{refusal}"
        );
        tokio::time::advance(Duration::from_secs(121)).await;
        counters.check_message("b@x.com", &LIMITS).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn recipients_per_message_and_per_day() {
        let counters = SendingCounters::default();
        counters.check_recipient("a@x.com", 5, &LIMITS).unwrap();
        let refusal = counters.check_recipient("a@x.com", 6, &LIMITS).unwrap_err();
        assert!(refusal.starts_with("452 4.5.3 "), "{refusal}");
        counters.record("a@x.com", 5);
        counters.record("a@x.com", 5);
        counters.check_recipient("a@x.com", 2, &LIMITS).unwrap();
        let refusal = counters.check_recipient("a@x.com", 3, &LIMITS).unwrap_err();
        assert!(refusal.starts_with("451 4.7.0 "), "{refusal}");
        tokio::time::advance(DAY).await;
        counters.check_recipient("a@x.com", 5, &LIMITS).unwrap();
    }
}
