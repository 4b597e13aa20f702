//! [`SharedCounters`]: the fleet's sending windows and failed-login counts
//! ([`FleetCounters`]) in the database (the tables and functions of schema version 2).
//!
//! **One round trip per event.** Each reservation, commit, give-back and failed login is
//! one call of a function of the schema (a prepared statement, cached per connection):
//! the checks and the count happen in one transaction under a per-mailbox advisory lock,
//! so that relays in parallel cannot pass a limit together and nothing is read, changed
//! and written back across the network. A successful login's normal path makes no call:
//! the login guard asks only when its own view says the pair had failures, and it knows
//! the fleet's delayed and blocked sources from [`SharedCounters::failing_sources`], a
//! map read again in the background at most every [`SOURCES_READ_EVERY`], never on a
//! login's path. So a delay or a block decided on one relay applies on every relay
//! within that time, at no cost to a login.
//!
//! **Degraded.** A call that cannot reach the database (or that the database refuses)
//! answers [`FleetUnavailable`] (within `state.timeout_secs`), and for [`RETRY_AFTER`]
//! every further call does so at once, without trying; then one call tries the database
//! again while the others still answer at once. The callers count in this relay's memory
//! alone meanwhile, as the `files` backend does. It is logged once when it starts and once when the database is back.
//! Refusing mail while the database is down would turn its outage into a mail outage;
//! each relay still holds the limits for what it sees, and Microsoft holds its own.
//!
//! Old slots (older than a day) and ended failure windows are deleted by the same
//! background task, at most every [`SWEEP_EVERY`].

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use deadpool_postgres::Object;

use super::database::Database;
use crate::state::counters::{
    Admission, FailureWindow, FleetCounters, FleetUnavailable, LoginKeys, Pending, SharedFailures,
    SharedSource, SharedSources, Slot,
};

/// How long a relay counts alone after the database failed a call, before trying again.
pub const RETRY_AFTER: Duration = Duration::from_secs(5);
/// How old the fleet's delayed and blocked sources may be before they are read again.
pub const SOURCES_READ_EVERY: Duration = Duration::from_secs(2);
/// How often old counts are deleted (by each relay).
pub const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// Most failing sources read (the blocked ones first).
const MAX_SOURCES: i64 = 100_000;

/// The fleet's counts in the database (cheap to clone).
#[derive(Debug, Clone)]
pub struct SharedCounters {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    db: Database,
    /// Until when calls are not tried (the database failed one).
    resting_until: Mutex<Option<Instant>>,
    sources: Mutex<Sources>,
    /// The widest failure window seen, in seconds: what the sweep keeps.
    widest_window: AtomicU64,
}

#[derive(Debug)]
struct Sources {
    current: SharedSources,
    read_at: Option<Instant>,
    swept_at: Option<Instant>,
    reading: Arc<AtomicBool>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl SharedCounters {
    /// The counts kept in `db` (its schema migrated).
    pub fn new(db: Database) -> Self {
        Self {
            inner: Arc::new(Inner {
                db,
                resting_until: Mutex::new(None),
                sources: Mutex::new(Sources {
                    current: Arc::default(),
                    read_at: None,
                    swept_at: None,
                    reading: Arc::default(),
                }),
                widest_window: AtomicU64::new(24 * 3600),
            }),
        }
    }

    /// Runs `f` on a connection, unless the database is resting.
    fn call<T, F, Fut>(&self, what: &'static str, f: F) -> Pending<T>
    where
        T: Send + 'static,
        F: FnOnce(Object) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, tokio_postgres::Error>> + Send + 'static,
    {
        let inner = self.inner.clone();
        Box::pin(async move { inner.call(what, f).await })
    }
}

impl Inner {
    async fn call<T, F, Fut>(&self, what: &'static str, f: F) -> Result<T, FleetUnavailable>
    where
        T: Send + 'static,
        F: FnOnce(Object) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, tokio_postgres::Error>> + Send + 'static,
    {
        {
            let mut resting = lock(&self.resting_until);
            if let Some(until) = *resting {
                let now = Instant::now();
                if now < until {
                    return Err(FleetUnavailable);
                }
                // This call tries the database; the others keep counting alone meanwhile.
                *resting = Some(now + RETRY_AFTER + self.db.timeout());
            }
        }
        let result = self.db.run(what, f).await;
        let mut resting = lock(&self.resting_until);
        match result {
            Ok(value) => {
                if resting.take().is_some() {
                    tracing::info!(database = %self.db.server(),
                        "fleet-wide sending and login counts are shared again");
                }
                Ok(value)
            }
            Err(e) => {
                if resting.is_none() {
                    tracing::warn!(database = %self.db.server(), error = %e,
                        "fleet-wide sending and login counts unavailable: this relay counts alone until the database answers");
                }
                *resting = Some(Instant::now() + RETRY_AFTER);
                Err(FleetUnavailable)
            }
        }
    }

    /// Reads the failing sources (and sweeps old counts when due), in the background.
    fn refresh_sources(self: &Arc<Self>, policy: FailureWindow, sweep: bool) {
        let inner = self.clone();
        let reading = lock(&self.sources).reading.clone();
        self.db.spawn(async move {
            if sweep {
                let window = inner.widest_window.load(Ordering::Relaxed) as i64;
                let _ = inner
                    .call("delete old counts", move |c| sweep_old(c, window))
                    .await;
            }
            let read = inner
                .call("read the failing sources", move |c| read_sources(c, policy))
                .await;
            let mut sources = lock(&inner.sources);
            if let Ok(current) = read {
                sources.current = Arc::new(current);
            }
            sources.read_at = Some(Instant::now());
            reading.store(false, Ordering::Release);
        });
    }
}

async fn sweep_old(client: Object, window: i64) -> Result<(), tokio_postgres::Error> {
    client
        .batch_execute("DELETE FROM counters WHERE slot <= m365_epoch() - 86400")
        .await?;
    client
        .execute(
            "DELETE FROM login_failures WHERE started <= m365_epoch() - $1 \
             AND (blocked_until IS NULL OR blocked_until <= m365_epoch())",
            &[&window],
        )
        .await?;
    Ok(())
}

/// The sources blocked now, or with at least as many failures in their window as get a
/// delay (or a block).
async fn read_sources(
    client: Object,
    policy: FailureWindow,
) -> Result<HashMap<IpAddr, SharedSource>, tokio_postgres::Error> {
    let statement = client
        .prepare_cached(
            "SELECT substr(key, 3), failures, blocked_until - m365_epoch() FROM login_failures \
             WHERE key LIKE 's:%' AND (blocked_until > m365_epoch() \
                OR (started > m365_epoch() - $1 AND failures >= $2)) \
             ORDER BY blocked_until IS NULL, failures DESC LIMIT $3",
        )
        .await?;
    let threshold = int(policy
        .failures_before_delay
        .min(policy.failures_before_block))
    .max(1);
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
        [&secs(policy.window), &threshold, &MAX_SOURCES];
    let rows = client.query(&statement, &params).await?;
    let now = Instant::now();
    Ok(rows
        .iter()
        .filter_map(|row| {
            let source = row.get::<_, String>(0).parse::<IpAddr>().ok()?;
            let blocked_for = row.get::<_, Option<i64>>(2).filter(|s| *s > 0);
            let shared = SharedSource {
                failures: u32::try_from(row.get::<_, i32>(1)).unwrap_or(0),
                blocked_until: blocked_for
                    .and_then(|s| u64::try_from(s).ok())
                    .map(|s| now + Duration::from_secs(s)),
            };
            Some((source, shared))
        })
        .collect())
}

/// Runs a function of the schema returning `(verdict, value)` as an [`Admission`].
async fn admission(
    client: Object,
    sql: &'static str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Admission, tokio_postgres::Error> {
    let statement = client.prepare_cached(sql).await?;
    let row = client.query_one(&statement, params).await?;
    let (verdict, value) = (row.get::<_, i16>(0), row.get::<_, i64>(1));
    let secs = u64::try_from(value).unwrap_or(1).max(1);
    Ok(match verdict {
        0 => Admission::Reserved(Slot(value)),
        1 => Admission::Paused { secs },
        _ => Admission::OverLimit { secs },
    })
}

/// Runs a statement returning nothing.
async fn execute(
    client: Object,
    sql: &'static str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<(), tokio_postgres::Error> {
    let statement = client.prepare_cached(sql).await?;
    client.execute(&statement, params).await.map(drop)
}

fn int(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

impl FleetCounters for SharedCounters {
    fn reserve_message(&self, mailbox: &str, per_minute: u32) -> Pending<Admission> {
        let (mailbox, limit) = (mailbox.to_owned(), int(per_minute));
        self.call("reserve a message", move |c| async move {
            let sql = "SELECT verdict, val FROM m365_reserve_message($1, $2)";
            admission(c, sql, &[&mailbox, &limit]).await
        })
    }

    fn reserve_recipient(&self, mailbox: &str, slot: Slot, per_day: u32) -> Pending<Admission> {
        let (mailbox, limit) = (mailbox.to_owned(), int(per_day));
        self.call("reserve a recipient", move |c| async move {
            let sql = "SELECT verdict, val FROM m365_reserve_recipient($1, $2, $3)";
            admission(c, sql, &[&mailbox, &slot.0, &limit]).await
        })
    }

    fn commit(&self, mailbox: &str, slot: Slot, reserved: u32, sent: u32) -> Pending<()> {
        let (mailbox, reserved, sent) = (mailbox.to_owned(), int(reserved), int(sent));
        self.call("count a sent message", move |c| async move {
            let sql = "SELECT m365_commit_message($1, $2, $3, $4)";
            execute(c, sql, &[&mailbox, &slot.0, &reserved, &sent]).await
        })
    }

    fn give_back(&self, mailbox: &str, slot: Slot, messages: u32, recipients: u32) -> Pending<()> {
        let (mailbox, messages, recipients) = (mailbox.to_owned(), int(messages), int(recipients));
        self.call("give back a reservation", move |c| async move {
            let sql = "UPDATE counters SET messages = greatest(messages - $3, 0), \
                       recipients = greatest(recipients - $4, 0) \
                       WHERE mailbox = $1 AND slot = $2";
            execute(c, sql, &[&mailbox, &slot.0, &messages, &recipients]).await
        })
    }

    fn pause(&self, mailbox: &str, wait: Duration) -> Pending<()> {
        let (mailbox, wait) = (mailbox.to_owned(), secs(wait));
        self.call("pause a mailbox", move |c| async move {
            let sql = "INSERT INTO sending_pauses (mailbox, until) VALUES ($1, m365_epoch() + $2) \
                       ON CONFLICT (mailbox) DO UPDATE SET until = EXCLUDED.until";
            execute(c, sql, &[&mailbox, &wait]).await
        })
    }

    fn login_failed(&self, keys: &LoginKeys, policy: FailureWindow) -> Pending<SharedFailures> {
        let (source, mailbox) = (keys.source.to_string(), keys.mailbox.clone());
        let (window, block_for) = (secs(policy.window), secs(policy.block_for));
        let before_block = int(policy.failures_before_block);
        self.inner
            .widest_window
            .fetch_max(window.unsigned_abs(), Ordering::Relaxed);
        self.call("count a failed login", move |c| async move {
            let sql = "SELECT source_failures, pair_failures, mailbox_failures, blocked_secs \
                       FROM m365_login_failed($1, $2, $3, $4, $5)";
            let statement = c.prepare_cached(sql).await?;
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] =
                [&source, &mailbox, &window, &before_block, &block_for];
            let row = c.query_one(&statement, &params).await?;
            let count = |i| u32::try_from(row.get::<_, i32>(i)).unwrap_or(0);
            Ok(SharedFailures {
                source: count(0),
                pair: count(1),
                mailbox: count(2),
                blocked_for: row
                    .get::<_, Option<i64>>(3)
                    .and_then(|s| u64::try_from(s).ok())
                    .map(Duration::from_secs),
            })
        })
    }

    fn login_succeeded(&self, keys: &LoginKeys) -> Pending<()> {
        let (source, mailbox) = (keys.source.to_string(), keys.mailbox.clone());
        self.call("forgive a pair's failed logins", move |c| async move {
            execute(
                c,
                "SELECT m365_login_succeeded($1, $2)",
                &[&source, &mailbox],
            )
            .await
        })
    }

    fn failing_sources(&self, policy: FailureWindow) -> SharedSources {
        let mut sources = lock(&self.inner.sources);
        let now = Instant::now();
        let stale = sources
            .read_at
            .is_none_or(|at| now.duration_since(at) >= SOURCES_READ_EVERY);
        if stale && !sources.reading.swap(true, Ordering::AcqRel) {
            let sweep = sources
                .swept_at
                .is_none_or(|at| now.duration_since(at) >= SWEEP_EVERY);
            if sweep {
                sources.swept_at = Some(now);
            }
            drop(sources);
            self.inner.refresh_sources(policy, sweep);
            return lock(&self.inner.sources).current.clone();
        }
        sources.current.clone()
    }
}
