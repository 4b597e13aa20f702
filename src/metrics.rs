//! The relay's metrics, served in Prometheus text format by the admin endpoint. One
//! registry per running relay (prometheus-client), so that relays started side by side
//! (tests) never mix their numbers. Event counters move where things happen; per-mailbox
//! gauges (state, token and credential expiry, the outbound queue) are computed when
//! scraped, and the queue's delivery counts are read from `delivery::DeliveryCounters`.

use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::delivery::{DeliveryCounters, Outcome};
use crate::state::queue::QueueStats;

/// Declares label sets: structs whose fields are the labels of a metric family.
macro_rules! label_sets {
    ($(
        $(#[$attr:meta])*
        $name:ident { $($(#[$field_attr:meta])* $field:ident: $ty:ty),+ $(,)? }
    )+) => {$(
        $(#[$attr])*
        #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
        pub struct $name {
            $($(#[$field_attr])* pub $field: $ty,)+
        }
    )+};
}

label_sets! {
    ProtocolLabel { protocol: &'static str }
    OutcomeLabels { protocol: &'static str, outcome: &'static str }
    ReasonLabels {
        protocol: &'static str,
        /// Why: `max_connections`, `max_connections_per_source`, `source_blocked`.
        reason: &'static str,
    }
    RefreshLabel { outcome: &'static str }
    DirectionLabels {
        protocol: &'static str,
        /// `from_client` or `to_client`.
        direction: &'static str,
    }
    StateLabel { state: &'static str }
    MailboxLabel { mailbox: String }
    /// The state database, as `host:port/database` (never its URL).
    DatabaseLabel { database: String }
    QueueLabels {
        mailbox: String,
        /// `queued` or `failed`.
        state: &'static str,
    }
    /// What a queue delivery attempt came to: `delivered`, `deferred`, `failed`.
    DeliveryLabel { outcome: &'static str }
    /// A notice to a sender: `failure` (a DSN) or `delay`.
    NoticeLabel { kind: &'static str }
}

fn latency_histogram() -> Histogram {
    // 5 ms to about 40 s.
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

/// Every metric the relay exports.
pub struct Metrics {
    registry: Registry,
    pub sessions_open: Family<ProtocolLabel, Gauge>,
    pub sessions: Family<ProtocolLabel, Counter>,
    pub logins: Family<OutcomeLabels, Counter>,
    /// Connections closed at once, without a session.
    pub connections_refused: Family<ReasonLabels, Counter>,
    /// Logins that waited because of earlier failures ([`crate::abuse`]).
    pub logins_delayed: Family<ProtocolLabel, Counter>,
    pub upstream_auth: Family<OutcomeLabels, Counter>,
    /// Upstream connections opened before a login ([`crate::upstream::preconnect`]).
    pub speculative_connections: Counter,
    pub speculative_connections_open: Gauge,
    pub token_refreshes: Family<RefreshLabel, Counter>,
    pub mailboxes: Family<StateLabel, Gauge>,
    pub access_token_expiry: Family<MailboxLabel, Gauge>,
    pub credential_expiry: Family<MailboxLabel, Gauge>,
    pub bytes: Family<DirectionLabels, Counter>,
    pub upstream_connect: Family<ProtocolLabel, Histogram, fn() -> Histogram>,
    pub upstream_login: Family<ProtocolLabel, Histogram, fn() -> Histogram>,
    /// 1 while the state database is reachable, 0 while the relay is degraded (`postgres`
    /// backend only; set when scraped).
    pub state_database_reachable: Family<DatabaseLabel, Gauge>,
    /// Seconds since the state database became unreachable (0 while it is reachable).
    pub state_database_unreachable: Family<DatabaseLabel, Gauge>,
    /// Queued and failed messages per mailbox (set when scraped, [`Metrics::set_queue`]).
    pub queue_messages: Family<QueueLabels, Gauge>,
    /// Seconds since the oldest queued (not failed) message was accepted; 0 when none.
    pub queue_oldest_age: Gauge,
    /// The queue's sealed bytes (counted against `queue.max_bytes`).
    pub queue_bytes: Gauge,
    /// Queue delivery attempts by outcome (from `delivery::DeliveryCounters`).
    pub deliveries: Family<DeliveryLabel, Counter>,
    /// Notices queued for senders, by kind (from `delivery::DeliveryCounters`).
    pub delivery_notices: Family<NoticeLabel, Counter>,
    /// Delivery log events dropped because its writer was behind.
    pub delivery_log_dropped: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Registers each metric under its name (prefixed `m365_relay_`) and help text, in this order.
macro_rules! register_each {
    ($registry:expr, $($name:literal, $help:literal => $metric:expr;)*) => {
        $($registry.register($name, $help, $metric.clone());)*
    };
}

impl Metrics {
    pub fn new() -> Self {
        let mut m = Self {
            registry: Registry::with_prefix("m365_relay"),
            sessions_open: Family::default(),
            sessions: Family::default(),
            logins: Family::default(),
            connections_refused: Family::default(),
            logins_delayed: Family::default(),
            upstream_auth: Family::default(),
            speculative_connections: Counter::default(),
            speculative_connections_open: Gauge::default(),
            token_refreshes: Family::default(),
            mailboxes: Family::default(),
            access_token_expiry: Family::default(),
            credential_expiry: Family::default(),
            bytes: Family::default(),
            upstream_connect: Family::new_with_constructor(latency_histogram),
            upstream_login: Family::new_with_constructor(latency_histogram),
            state_database_reachable: Family::default(),
            state_database_unreachable: Family::default(),
            queue_messages: Family::default(),
            queue_oldest_age: Gauge::default(),
            queue_bytes: Gauge::default(),
            deliveries: Family::default(),
            delivery_notices: Family::default(),
            delivery_log_dropped: Counter::default(),
        };
        m.register();
        m
    }

    /// Puts every metric into the registry that [`render`](Self::render) prints.
    fn register(&mut self) {
        register_each!(self.registry,
            "sessions_open", "Client sessions open now" => self.sessions_open;
            "sessions", "Client sessions accepted" => self.sessions;
            "logins", "Client logins by outcome" => self.logins;
            "connections_refused", "Client connections closed at once, by reason" => self.connections_refused;
            "logins_delayed", "Client logins that waited because of earlier failed logins" => self.logins_delayed;
            "upstream_auth", "XOAUTH2 logins upstream by outcome" => self.upstream_auth;
            "speculative_connections", "IMAP and POP3 upstream connections opened before the client's login" => self.speculative_connections;
            "speculative_connections_open", "Upstream connections opened before a login that exist now" => self.speculative_connections_open;
            "token_refreshes", "Access-token refreshes by outcome" => self.token_refreshes;
            "mailboxes", "Mailboxes by token state" => self.mailboxes;
            "access_token_expiry_seconds", "Seconds until each mailbox's cached access token expires" => self.access_token_expiry;
            "credential_expiry_seconds", "Seconds until each mailbox's client secret or certificate expires" => self.credential_expiry;
            "relayed_bytes", "Bytes relayed after login" => self.bytes;
            "upstream_connect_seconds", "Connecting to the upstream server, TLS included" => self.upstream_connect;
            "upstream_login_seconds", "A whole upstream login: connect, TLS, XOAUTH2" => self.upstream_login;
            "state_database_reachable", "1 while the state database is reachable, 0 while the relay is degraded" => self.state_database_reachable;
            "state_database_unreachable_seconds", "Seconds since the state database became unreachable (0 while reachable)" => self.state_database_unreachable;
            "queue_messages", "Messages in the outbound queue per mailbox, queued or failed" => self.queue_messages;
            "queue_oldest_age_seconds", "Seconds since the oldest queued message was accepted (0 when none)" => self.queue_oldest_age;
            "queue_bytes", "Bytes the outbound queue holds (sealed), counted against queue.max_bytes" => self.queue_bytes;
            "deliveries", "Queue delivery attempts by outcome" => self.deliveries;
            "delivery_notices", "Notices to senders queued, by kind (failure: a DSN; delay)" => self.delivery_notices;
            "delivery_log_dropped", "Delivery log events dropped because its writer was behind" => self.delivery_log_dropped;
        );
    }

    /// The Prometheus text exposition of everything.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Sets a per-mailbox expiry gauge to the seconds left (negative once expired).
    pub fn set_expiry(family: &Family<MailboxLabel, Gauge>, mailbox: &str, at: SystemTime) {
        let left = match at.duration_since(SystemTime::now()) {
            Ok(d) => d.as_secs() as i64,
            Err(e) => -(e.duration().as_secs() as i64),
        };
        family
            .get_or_create(&MailboxLabel {
                mailbox: mailbox.to_owned(),
            })
            .set(left);
    }

    /// Sets the queue's gauges from `stats`, ages counted to `now` (Unix seconds).
    pub fn set_queue(&self, stats: &QueueStats, now: u64) {
        self.queue_messages.clear();
        for depth in &stats.mailboxes {
            for (state, count) in [("queued", depth.queued), ("failed", depth.failed)] {
                let labels = QueueLabels {
                    mailbox: depth.mailbox.clone(),
                    state,
                };
                self.queue_messages
                    .get_or_create(&labels)
                    .set(gauge_value(count));
            }
        }
        let oldest = stats
            .mailboxes
            .iter()
            .filter_map(|d| d.oldest_received_at)
            .min()
            .map_or(0, |at| now.saturating_sub(at));
        self.queue_oldest_age.set(gauge_value(oldest));
        self.queue_bytes.set(gauge_value(stats.bytes));
    }

    /// Brings the delivery counters up to what `counters` and the delivery log counted.
    pub fn set_deliveries(&self, counters: &DeliveryCounters, log_dropped: u64) {
        let up_to = |counter: &Counter, count: u64| {
            counter.inc_by(count.saturating_sub(counter.get()));
        };
        for outcome in Outcome::ALL {
            let labels = DeliveryLabel {
                outcome: outcome.name(),
            };
            up_to(
                &self.deliveries.get_or_create(&labels),
                counters.attempts(outcome),
            );
        }
        let (failure, delay) = counters.notices();
        for (kind, count) in [("failure", failure), ("delay", delay)] {
            up_to(
                &self.delivery_notices.get_or_create(&NoticeLabel { kind }),
                count,
            );
        }
        up_to(&self.delivery_log_dropped, log_dropped);
    }

    pub fn observe(
        family: &Family<ProtocolLabel, Histogram, fn() -> Histogram>,
        protocol: &'static str,
        took: Duration,
    ) {
        family
            .get_or_create(&ProtocolLabel { protocol })
            .observe(took.as_secs_f64());
    }
}

/// A count as a gauge's value (gauges are signed).
fn gauge_value(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Asserts that the rendered `text` holds `sample` (a line without its end).
    #[track_caller]
    fn assert_renders(text: &str, sample: &str) {
        assert!(text.contains(sample), "{sample} not in {text}");
    }

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::new();
        m.sessions
            .get_or_create(&ProtocolLabel { protocol: "imap" })
            .inc();
        m.logins
            .get_or_create(&OutcomeLabels {
                protocol: "smtp",
                outcome: "ok",
            })
            .inc();
        Metrics::observe(&m.upstream_login, "smtp", Duration::from_millis(30));
        Metrics::set_expiry(
            &m.access_token_expiry,
            "a@x.com",
            SystemTime::now() + Duration::from_secs(100),
        );
        let text = m.render();
        assert_renders(&text, "m365_relay_sessions_total{protocol=\"imap\"} 1");
        assert_renders(
            &text,
            "m365_relay_logins_total{protocol=\"smtp\",outcome=\"ok\"} 1",
        );
        assert_renders(
            &text,
            "m365_relay_upstream_login_seconds_count{protocol=\"smtp\"} 1",
        );
        assert_renders(
            &text,
            "m365_relay_access_token_expiry_seconds{mailbox=\"a@x.com\"} 9",
        );
        assert!(
            !text.contains("sessions_open"),
            "an empty family prints nothing"
        );
        m.sessions_open
            .get_or_create(&ProtocolLabel { protocol: "pop3" })
            .inc();
        assert_renders(&m.render(), "m365_relay_sessions_open{protocol=\"pop3\"} 1");
    }

    /// A queue of three mailboxes (4 queued, 3 failed, the oldest accepted at 1000, 4096
    /// bytes), for the tests of what reads the stats.
    pub(crate) fn sample_stats() -> QueueStats {
        use crate::state::queue::MailboxDepth;
        let depth = |mailbox: &str, queued, failed, oldest| MailboxDepth {
            mailbox: mailbox.into(),
            queued,
            failed,
            oldest_received_at: oldest,
        };
        QueueStats {
            mailboxes: vec![
                depth("a@x.com", 3, 1, Some(1_000)),
                depth("b@x.com", 0, 2, None),
                depth("c@x.com", 1, 0, Some(1_900)),
            ],
            bytes: 4096,
        }
    }

    #[test]
    fn queue_gauges_and_delivery_counts_follow_what_they_read() {
        let m = Metrics::new();
        let stats = sample_stats();
        m.set_queue(&stats, 2_000);
        let text = m.render();
        for sample in [
            "m365_relay_queue_messages{mailbox=\"a@x.com\",state=\"queued\"} 3",
            "m365_relay_queue_messages{mailbox=\"a@x.com\",state=\"failed\"} 1",
            "m365_relay_queue_messages{mailbox=\"b@x.com\",state=\"failed\"} 2",
            "m365_relay_queue_oldest_age_seconds 1000",
            "m365_relay_queue_bytes 4096",
        ] {
            assert_renders(&text, sample);
        }
        m.set_queue(&QueueStats::default(), 2_000);
        let text = m.render();
        assert!(!text.contains("a@x.com"), "{text}");
        assert_renders(&text, "m365_relay_queue_oldest_age_seconds 0");

        let counters = DeliveryCounters::default();
        counters.attempt(Outcome::Delivered);
        counters.attempt(Outcome::Delivered);
        counters.attempt(Outcome::Failed);
        counters.notice(false);
        m.set_deliveries(&counters, 0);
        counters.attempt(Outcome::Delivered);
        counters.notice(true);
        m.set_deliveries(&counters, 5);
        let text = m.render();
        for sample in [
            "m365_relay_deliveries_total{outcome=\"delivered\"} 3",
            "m365_relay_deliveries_total{outcome=\"deferred\"} 0",
            "m365_relay_deliveries_total{outcome=\"failed\"} 1",
            "m365_relay_delivery_notices_total{kind=\"failure\"} 1",
            "m365_relay_delivery_notices_total{kind=\"delay\"} 1",
            "m365_relay_delivery_log_dropped_total 5",
        ] {
            assert_renders(&text, sample);
        }
    }
}
