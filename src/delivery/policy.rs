//! What a delivery attempt's outcome means for the queued message (pure): delivered,
//! tried again after a back-off, or failed with a notice to its sender; and when a
//! still-queued message earns its one "delayed" notice.
//!
//! Back-off: `retry_min_secs * 2^(attempts - 1)`, at most `retry_max_secs`; a longer
//! `Retry-After` from Microsoft wins. A temporary failure after `max_age_secs` is final
//! (Postfix's `maximal_queue_lifetime`).

use std::time::Duration;

use super::counters::Outcome;
use super::notice::NoticeKind;
use crate::config::QueueConfig;
use crate::state::{Entry, EventKind, MessageKind, Settlement};

/// What one attempt to hand a message to Microsoft came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// Microsoft accepted it. `refused`: recipients refused for good at `RCPT TO`, with
    /// their replies; `request_id`: Graph's, when it went through Graph.
    Accepted {
        reply: String,
        refused: Vec<(String, String)>,
        request_id: Option<String>,
    },
    /// Not now: tried again later. `retry_after`: how long Microsoft asked to wait;
    /// `maybe_sent`: the answer does not say whether the message went out (Graph's 504).
    Temporary {
        reply: String,
        retry_after: Option<Duration>,
        maybe_sent: bool,
    },
    /// Never: the message fails.
    Permanent { reply: String },
}

impl Attempt {
    /// An attempt that ended with `reply` and nothing else known: temporary unless the
    /// reply is a 5xx.
    pub fn from_reply(reply: String) -> Self {
        match reply.trim_start().starts_with('5') {
            true => Attempt::Permanent { reply },
            false => Attempt::Temporary {
                reply,
                retry_after: None,
                maybe_sent: false,
            },
        }
    }
}

/// What to record for an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub settlement: Settlement,
    /// The delivery log's event.
    pub event: EventKind,
    pub outcome: Outcome,
    /// A notice to the sender, about these recipients and replies.
    pub notice: Option<(NoticeKind, Vec<(String, String)>)>,
}

/// Whether `entry` may get a notice at all: never for a notice, never to `<>`.
pub fn notices_allowed(entry: &Entry) -> bool {
    entry.envelope.kind == MessageKind::Message && !entry.envelope.sender.is_empty()
}

/// The wait before the next attempt after `attempts` failed ones (1 or more).
pub fn backoff(attempts: u32, queue: &QueueConfig) -> u64 {
    let doublings = attempts.saturating_sub(1).min(63);
    let wait = queue
        .retry_min_secs
        .saturating_mul(1u64.checked_shl(doublings).unwrap_or(u64::MAX));
    wait.min(queue.retry_max_secs)
}

/// What `attempt` on `entry` at `now` (Unix seconds) comes to.
pub fn verdict(entry: &Entry, attempt: &Attempt, now: u64, queue: &QueueConfig) -> Verdict {
    let notify = notices_allowed(entry);
    let all = |reply: &str| -> Vec<(String, String)> {
        let recipients = &entry.envelope.recipients;
        recipients
            .iter()
            .map(|r| (r.clone(), reply.to_owned()))
            .collect()
    };
    match attempt {
        Attempt::Accepted { refused, .. } => Verdict {
            settlement: Settlement::Delivered,
            event: EventKind::Delivered,
            outcome: Outcome::Delivered,
            notice: (notify && !refused.is_empty()).then(|| (NoticeKind::Failure, refused.clone())),
        },
        Attempt::Permanent { reply } => failed(reply.clone(), notify.then(|| all(reply))),
        Attempt::Temporary { reply, .. }
            if now >= entry.received_at.saturating_add(queue.max_age_secs) =>
        {
            let why = format!(
                "{} (given up after {}; the last attempt: {})",
                "554 5.4.7 Delivery time expired",
                crate::datetime::duration_words(Duration::from_secs(queue.max_age_secs)),
                first_line(reply)
            );
            failed(why, notify.then(|| all(reply)))
        }
        Attempt::Temporary {
            reply, retry_after, ..
        } => {
            let wait = backoff(entry.attempts.saturating_add(1), queue)
                .max(retry_after.map_or(0, |d| d.as_secs()));
            Verdict {
                settlement: Settlement::Deferred {
                    next_attempt_at: now.saturating_add(wait.max(1)),
                    reply: first_line(reply),
                },
                event: EventKind::Deferred,
                outcome: Outcome::Deferred,
                notice: None,
            }
        }
    }
}

fn failed(reply: String, notice: Option<Vec<(String, String)>>) -> Verdict {
    Verdict {
        settlement: Settlement::Failed {
            reply: first_line(&reply),
        },
        event: EventKind::Bounced,
        outcome: Outcome::Failed,
        notice: notice.map(|recipients| (NoticeKind::Failure, recipients)),
    }
}

/// Whether a message still queued after a deferred attempt at `now` gets its one
/// "delayed" notice.
pub fn wants_delay_notice(entry: &Entry, now: u64, queue: &QueueConfig) -> bool {
    queue.delay_warning_secs > 0
        && !entry.warned
        && notices_allowed(entry)
        && now >= entry.received_at.saturating_add(queue.delay_warning_secs)
}

/// The first line of a reply, without its line end; a multiline reply's `451-` reads
/// `451 ` (one line standing for the reply).
pub fn first_line(reply: &str) -> String {
    let line = reply.lines().next().unwrap_or_default().trim_end();
    match line.as_bytes() {
        [a, b, c, b'-', ..] if [a, b, c].iter().all(|d| d.is_ascii_digit()) => {
            format!("{} {}", &line[..3], &line[4..])
        }
        _ => line.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{EntryState, Envelope, QueueId};

    fn queue() -> QueueConfig {
        QueueConfig {
            retry_min_secs: 60,
            retry_max_secs: 3600,
            max_age_secs: 86_400,
            delay_warning_secs: 3600,
            ..QueueConfig::default()
        }
    }

    pub(crate) fn entry(sender: &str, kind: MessageKind) -> Entry {
        Entry {
            id: QueueId::new(),
            envelope: Envelope {
                mailbox: "app@contoso.com".into(),
                sender: sender.into(),
                recipients: vec!["a@x.com".into(), "b@x.com".into()],
                client: None,
                message_id: None,
                kind,
                parameters: Vec::new(),
            },
            size: 10,
            state: EntryState::Queued,
            received_at: 1_000_000,
            attempts: 0,
            next_attempt_at: 1_000_000,
            last_reply: None,
            warned: false,
        }
    }

    fn temporary(reply: &str, retry_after: Option<u64>) -> Attempt {
        Attempt::Temporary {
            reply: reply.into(),
            retry_after: retry_after.map(Duration::from_secs),
            maybe_sent: false,
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let waits: Vec<u64> = (1..=9).map(|n| backoff(n, &queue())).collect();
        assert_eq!(waits, [60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]);
        assert_eq!(backoff(u32::MAX, &queue()), 3600);
    }

    #[test]
    fn temporary_failures_wait_and_a_longer_retry_after_wins() {
        let mut e = entry("app@contoso.com", MessageKind::Message);
        e.attempts = 2;
        let now = 1_000_100;
        let v = verdict(&e, &temporary("451 4.4.0 away\r\n", None), now, &queue());
        let deferred = Settlement::Deferred {
            next_attempt_at: now + 240,
            reply: "451 4.4.0 away".into(),
        };
        assert_eq!(
            (v.settlement, v.event, v.notice),
            (deferred, EventKind::Deferred, None)
        );
        let v = verdict(
            &e,
            &temporary("451 4.7.0 throttled", Some(900)),
            now,
            &queue(),
        );
        assert!(
            matches!(v.settlement, Settlement::Deferred { next_attempt_at, .. } if next_attempt_at == now + 900)
        );
        let v = verdict(
            &e,
            &temporary("451 4.7.0 throttled", Some(5)),
            now,
            &queue(),
        );
        assert!(
            matches!(v.settlement, Settlement::Deferred { next_attempt_at, .. } if next_attempt_at == now + 240)
        );
    }

    #[test]
    fn permanent_failures_and_old_age_fail_with_a_notice() {
        let e = entry("app@contoso.com", MessageKind::Message);
        let v = verdict(
            &e,
            &Attempt::Permanent {
                reply: "550 5.1.1 unknown\r\n".into(),
            },
            1_000_001,
            &queue(),
        );
        assert_eq!(
            v.settlement,
            Settlement::Failed {
                reply: "550 5.1.1 unknown".into()
            }
        );
        assert_eq!((v.event, v.outcome), (EventKind::Bounced, Outcome::Failed));
        let (kind, recipients) = v.notice.unwrap();
        assert_eq!(kind, NoticeKind::Failure);
        assert_eq!(recipients.len(), 2);
        let v = verdict(
            &e,
            &temporary("451 4.4.0 away", None),
            1_000_000 + 86_400,
            &queue(),
        );
        let Settlement::Failed { reply } = v.settlement else {
            panic!("{v:?}")
        };
        assert!(
            reply.starts_with("554 5.4.7 ") && reply.contains("451 4.4.0 away"),
            "{reply}"
        );
        assert_eq!(v.notice.unwrap().1[0].1, "451 4.4.0 away");
    }

    #[test]
    fn partial_refusals_get_a_notice_for_the_refused_only() {
        let e = entry("app@contoso.com", MessageKind::Message);
        let refused = vec![("b@x.com".to_owned(), "550 5.1.1 unknown".to_owned())];
        let accepted = Attempt::Accepted {
            reply: "250 2.0.0 OK".into(),
            refused: refused.clone(),
            request_id: None,
        };
        let v = verdict(&e, &accepted, 1_000_001, &queue());
        assert_eq!(v.settlement, Settlement::Delivered);
        assert_eq!(v.notice, Some((NoticeKind::Failure, refused)));
    }

    #[test]
    fn no_notice_for_a_notice_or_the_null_sender() {
        let permanent = Attempt::Permanent {
            reply: "550 5.1.1 unknown".into(),
        };
        for e in [
            entry("", MessageKind::Message),
            entry("app@contoso.com", MessageKind::Notice),
        ] {
            let v = verdict(&e, &permanent, 1_000_001, &queue());
            assert!(matches!(v.settlement, Settlement::Failed { .. }));
            assert_eq!(v.notice, None);
            assert!(!wants_delay_notice(&e, 2_000_000, &queue()));
        }
    }

    #[test]
    fn one_delay_notice_after_the_warning_time() {
        let mut e = entry("app@contoso.com", MessageKind::Message);
        assert!(!wants_delay_notice(&e, 1_000_000 + 3599, &queue()));
        assert!(wants_delay_notice(&e, 1_000_000 + 3600, &queue()));
        e.warned = true;
        assert!(!wants_delay_notice(&e, 1_000_000 + 3600, &queue()));
        e.warned = false;
        let off = QueueConfig {
            delay_warning_secs: 0,
            ..queue()
        };
        assert!(!wants_delay_notice(&e, 9_000_000, &off));
    }
}
