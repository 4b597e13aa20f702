//! Microsoft's sending limits and the failed-login counts across two relays sharing one
//! real PostgreSQL (a private cluster): each relay has its own pool and its own counts in
//! memory, as two relay processes do, and the fleet's counts in the database tie them
//! together. With the database stopped, each relay keeps counting alone.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use m365_relay::abuse::{LoginGuard, Policy, Refused};
use m365_relay::config::{DatabaseConfig, DatabaseTls};
use m365_relay::secret::DatabaseUrl;
use m365_relay::state::postgres::counters::SharedCounters;
use m365_relay::state::postgres::schema;
use m365_relay::state::{Database, FleetCounters};
use m365_relay::submission::limits::{Reservation, SendingCounters, SendingLimits};

use crate::support::postgres::PgCluster;

const PER_MINUTE: u32 = 5;
const LIMITS: SendingLimits = SendingLimits {
    messages_per_minute: PER_MINUTE,
    recipients_per_message: 10,
    recipients_per_day: 1000,
};

/// One relay's counts: its sending windows and its login guard, sharing `fleet`.
struct Relay {
    sending: SendingCounters,
    logins: LoginGuard,
}

impl Relay {
    fn new(fleet: Option<Arc<dyn FleetCounters>>) -> Self {
        Self {
            sending: SendingCounters::default().with_fleet(fleet.clone()),
            logins: LoginGuard::default().with_fleet(fleet),
        }
    }
}

/// A database on `pg`, migrated, as the relays' configuration names it.
fn database_config(pg: &PgCluster) -> DatabaseConfig {
    let url = pg.create_database("fleet");
    let config = DatabaseConfig {
        url: DatabaseUrl::new(url),
        tls: DatabaseTls::Disable,
        ca_file: None,
        pool_size: 4,
        timeout: Duration::from_secs(2),
        server: format!("127.0.0.1:{}/fleet", pg.port()),
    };
    let db = Database::open(&config).expect("open the database");
    schema::migrate(&db).expect("migrate");
    config
}

/// A relay of the fleet: its own pool on the database.
fn fleet_relay(config: &DatabaseConfig) -> Relay {
    let db = Database::open(config).expect("open the database");
    Relay::new(Some(Arc::new(SharedCounters::new(db))))
}

async fn start() -> (PgCluster, DatabaseConfig) {
    tokio::task::spawn_blocking(|| {
        let pg = PgCluster::start();
        let config = database_config(&pg);
        (pg, config)
    })
    .await
    .unwrap()
}

/// One message of `mailbox` with one recipient, sent (committed) through `relay`.
async fn send(relay: &Relay, mailbox: &str) -> Result<(), String> {
    let mut message = relay.sending.reserve_message(mailbox, &LIMITS).await?;
    message.add_recipient(mailbox, &LIMITS).await?;
    message.commit();
    Ok(())
}

/// Messages of `mailbox` sent one after another, alternating between `relays`, until
/// `tries`; how many were accepted, and the last refusal.
async fn send_alternating(relays: &[&Relay], mailbox: &str, tries: usize) -> (u32, String) {
    let (mut accepted, mut refusal) = (0, String::new());
    for i in 0..tries {
        match send(relays[i % relays.len()], mailbox).await {
            Ok(()) => accepted += 1,
            Err(reply) => refusal = reply,
        }
    }
    (accepted, refusal)
}

/// Waits (at most 10 s) until `check` holds.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mailbox_limit_holds_across_two_relays_also_in_parallel() {
    let (_pg, config) = start().await;
    let (a, b) = (fleet_relay(&config), fleet_relay(&config));

    // One after another, alternating: N accepted, the N+1th refused on either relay.
    let (accepted, refusal) = send_alternating(&[&a, &b], "app@example.com", 8).await;
    assert_eq!(accepted, PER_MINUTE, "{refusal}");
    assert!(
        refusal.starts_with("451 4.7.0 ") && refusal.contains("messages in the last minute"),
        "{refusal}"
    );
    for relay in [&a, &b] {
        let refusal = send(relay, "app@example.com").await.unwrap_err();
        assert!(refusal.starts_with("451 4.7.0 "), "{refusal}");
    }

    // Open transactions in parallel on both relays: exactly N are let through.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..16 {
        let counters = [&a, &b][i % 2].sending.clone();
        tasks.spawn(async move { counters.reserve_message("batch@example.com", &LIMITS).await });
    }
    let open: Vec<Reservation> = tasks.join_all().await.into_iter().flatten().collect();
    assert_eq!(open.len(), PER_MINUTE as usize);

    // A transaction that ends without a message gives its place back, fleet-wide.
    drop(open);
    eventually("the places given back", async || {
        send(&b, "batch@example.com").await.is_ok()
    })
    .await;
}

/// What the relays did before the fleet's counts (the `files` backend, one relay): two
/// relays each let the whole limit through.
#[tokio::test]
async fn two_relays_counting_alone_let_twice_the_limit_through() {
    let (a, b) = (Relay::new(None), Relay::new(None));
    let (accepted, _) = send_alternating(&[&a, &b], "app@example.com", 12).await;
    assert_eq!(accepted, 2 * PER_MINUTE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipients_per_day_and_microsofts_pause_hold_across_two_relays() {
    let (_pg, config) = start().await;
    let (a, b) = (fleet_relay(&config), fleet_relay(&config));
    let limits = SendingLimits {
        recipients_per_day: 4,
        ..LIMITS
    };
    let mut three = a
        .sending
        .reserve_message("d@example.com", &limits)
        .await
        .unwrap();
    for _ in 0..3 {
        three.add_recipient("d@example.com", &limits).await.unwrap();
    }
    three.commit();
    let mut other = b
        .sending
        .reserve_message("d@example.com", &limits)
        .await
        .unwrap();
    other.add_recipient("d@example.com", &limits).await.unwrap();
    let refusal = other
        .add_recipient("d@example.com", &limits)
        .await
        .unwrap_err();
    assert!(refusal.contains("recipients in 24 hours"), "{refusal}");
    drop(other);
    // The dropped message's recipient comes back (in the background).
    eventually("the recipient given back", async || {
        let Ok(mut message) = a.sending.reserve_message("d@example.com", &limits).await else {
            return false;
        };
        message
            .add_recipient("d@example.com", &limits)
            .await
            .is_ok()
    })
    .await;

    // Microsoft's Retry-After on one relay pauses the mailbox on the other.
    a.sending
        .throttle("p@example.com", Duration::from_secs(120));
    eventually("the pause reaches the other relay", async || {
        send(&b, "p@example.com")
            .await
            .is_err_and(|reply| reply.contains("throttled") && reply.starts_with("451 4.7.0 "))
    })
    .await;
}

fn policy() -> Policy {
    Policy {
        failures_before_delay: 3,
        max_delay: Duration::from_secs(1),
        failures_before_block: 6,
        window: Duration::from_secs(600),
        block_for: Duration::from_secs(900),
    }
}

const GUESSER: &str = "192.0.2.7";

/// One wrong password for `victim@example.com` from the guesser through `relay`: its
/// delay, and whether it got the source blocked.
async fn guess(relay: &Relay) -> Result<(Duration, bool), Refused> {
    let source: IpAddr = GUESSER.parse().unwrap();
    let attempt = relay
        .logins
        .begin(source, "victim@example.com", &policy())
        .await?;
    let delay = attempt.delay();
    attempt.wait().await;
    Ok((delay, attempt.failed().await.newly_blocked))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guesses_spread_over_two_relays_are_delayed_and_blocked_as_on_one() {
    let (_pg, config) = start().await;
    let (a, b) = (fleet_relay(&config), fleet_relay(&config));
    let source: IpAddr = GUESSER.parse().unwrap();
    for _ in 0..3 {
        assert_eq!(guess(&a).await, Ok((Duration::ZERO, false)));
    }
    // The delay decided on relay A applies on relay B, which saw no failure yet.
    eventually("relay B knows the failures", async || {
        b.logins.has_failures(source, &policy(), Instant::now())
    })
    .await;
    assert_eq!(guess(&b).await, Ok((Duration::from_secs(1), false)));
    assert_eq!(guess(&a).await, Ok((Duration::from_secs(1), false)));
    // The sixth failure, the fleet's, blocks the source: first where it happened...
    assert_eq!(guess(&b).await, Ok((Duration::from_secs(1), true)));
    assert_eq!(guess(&b).await, Err(Refused::Blocked));
    // ... then on the other relay, for new connections and logins alike.
    eventually("relay A refuses the source", async || {
        a.logins.is_blocked(source, &policy(), Instant::now())
    })
    .await;
    assert_eq!(guess(&a).await, Err(Refused::Blocked));
    // Each relay saw three failures: alone, neither would have blocked.
    let alone = Relay::new(None);
    for _ in 0..3 {
        guess(&alone).await.unwrap();
    }
    assert!(!alone.logins.is_blocked(source, &policy(), Instant::now()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_database_stopped_each_relay_counts_alone_and_shares_again_after() {
    let (mut pg, config) = start().await;
    let (a, b) = (fleet_relay(&config), fleet_relay(&config));
    assert_eq!(send(&a, "warm@example.com").await, Ok(()));
    let mut pg = tokio::task::spawn_blocking(move || {
        pg.stop();
        pg
    })
    .await
    .unwrap();

    // Nothing hangs: each relay holds the limit for what it sees, alone.
    let started = Instant::now();
    for relay in [&a, &b] {
        let (accepted, refusal) = send_alternating(&[relay], "down@example.com", 7).await;
        assert_eq!(accepted, PER_MINUTE, "{refusal}");
        assert!(refusal.contains("messages in the last minute"), "{refusal}");
    }
    for _ in 0..6 {
        guess(&a).await.unwrap();
    }
    assert_eq!(
        guess(&a).await,
        Err(Refused::Blocked),
        "blocked by relay A alone"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "degraded calls answer at once: {:?}",
        started.elapsed()
    );

    // The database back: the fleet's counts again (after the relays' pause of 5 s).
    let pg = tokio::task::spawn_blocking(move || {
        pg.start_server();
        pg
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (accepted, refusal) = send_alternating(&[&a, &b], "back@example.com", 8).await;
    assert_eq!(accepted, PER_MINUTE, "{refusal}");
    drop(pg);
}
