//! One refresher per mailbox across a fleet: two or three token caches, each as a separate
//! relay has it (its own pool and lease holder name on one real PostgreSQL database), in
//! front of the fake Entra with single-use rotating refresh tokens. Exactly one redemption
//! for many concurrent requests, about one refresh per token lifetime for the whole fleet,
//! fencing of a lease holder that stalled, and the database stopped and started again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use m365_relay::cloud::Cloud;
use m365_relay::config::{DatabaseConfig, DatabaseTls};
use m365_relay::mailbox::{Credential, Mailbox, Registration, Registry};
use m365_relay::oauth::cache::{SMTP_MIN_VALIDITY, TokenCache};
use m365_relay::oauth::endpoint::TokenEndpoint;
use m365_relay::secret::{AccessToken, DatabaseUrl, RefreshToken};
use m365_relay::state::files::TokenStore;
use m365_relay::state::leases::replica_id;
use m365_relay::state::postgres::leases::seal_refresh_token;
use m365_relay::state::postgres::{PgLeases, schema};
use m365_relay::state::{
    Database, Finished, Outcome, Redeemable, SharedToken, StateKey, TokenLeases,
};
use tokio_util::sync::CancellationToken;

use crate::support::fake_entra::FakeEntra;
use crate::support::postgres::PgCluster;

const TENANT: &str = "contoso.onmicrosoft.com";
const CLIENT: &str = "6731de76-14a6-49ae-97bc-6eba6914391e";
const USER: &str = "alice@contoso.com";
/// Each database call's bound: short, so that the stopped database fails fast.
const DB_TIMEOUT: Duration = Duration::from_secs(2);
const TOKEN_TIMEOUT: Duration = Duration::from_secs(10);

/// A database with the schema, the fake Entra with single-use refresh tokens and one user
/// whose first refresh token is stored (sealed).
struct World {
    pg: PgCluster,
    url: String,
    entra: FakeEntra,
    key: StateKey,
    mailbox: Arc<Mailbox>,
    /// Each relay's own (unused) folder: the caches take their tokens from the database.
    dir: tempfile::TempDir,
}

/// One relay's view: its own pool and lease holder name.
struct Relay {
    db: Database,
    cache: Arc<TokenCache>,
}

fn config(url: &str) -> DatabaseConfig {
    DatabaseConfig {
        url: DatabaseUrl::new(url),
        tls: DatabaseTls::Disable,
        ca_file: None,
        pool_size: 4,
        timeout: DB_TIMEOUT,
        server: "127.0.0.1/fleet".into(),
    }
}

/// Runs a blocking database call off the test's async threads.
async fn off<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

impl World {
    async fn new(expires_in: u64) -> World {
        let pg = off(PgCluster::start).await;
        let url = pg.create_database("fleet");
        let entra = FakeEntra::start().await;
        entra.add_app(TENANT, CLIENT, None);
        entra.set_single_use_refresh_tokens(true);
        entra.set_expires_in(expires_in);
        let first = entra.add_user(TENANT, CLIENT, USER);
        let key = StateKey::from_bytes(&[7; 32]);
        let (db_url, seal_key) = (url.clone(), key.clone());
        off(move || {
            let db = Database::open(&config(&db_url)).expect("pool");
            schema::migrate(&db).expect("migrate");
            let sealed =
                seal_refresh_token(&seal_key, USER, &RefreshToken::new(first)).expect("seal");
            db.call("seed", move |client| async move {
                client
                    .execute(
                        "INSERT INTO refresh_tokens (mailbox, sealed, version) VALUES ($1, $2, 1)",
                        &[&USER, &sealed],
                    )
                    .await
            })
            .expect("seed the refresh token");
        })
        .await;
        World {
            pg,
            url,
            entra,
            key,
            mailbox: Arc::new(mailbox()),
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// A relay's token cache on the shared database.
    async fn relay(&self) -> Relay {
        let (url, key) = (self.url.clone(), self.key.clone());
        let db = off(move || Database::open(&config(&url)).expect("pool")).await;
        let leases = Arc::new(PgLeases::new(db.clone(), key, replica_id()));
        Relay {
            cache: Arc::new(self.cache().with_leases(leases, TOKEN_TIMEOUT)),
            db,
        }
    }

    /// A token cache with the relay-alone leases (what each relay had before the fleet's).
    fn cache(&self) -> TokenCache {
        let tls = m365_relay::tls::client_config(None).expect("client TLS");
        let endpoint =
            TokenEndpoint::new(&self.entra.authority(), tls, TOKEN_TIMEOUT).expect("endpoint");
        let store = Arc::new(TokenStore::new(self.dir.path(), self.key.clone()));
        TokenCache::new(endpoint, store, None)
    }

    /// Refresh tokens that were redeemed twice (each refused) and refresh grants Entra
    /// answered.
    fn counts(&self) -> (usize, usize) {
        (
            self.entra.refresh_token_reuses(),
            self.entra.refresh_grants(),
        )
    }
}

fn mailbox() -> Mailbox {
    Mailbox {
        address: USER.into(),
        registration: Registration::App {
            tenant: TENANT.into(),
            client_id: CLIENT.into(),
            credential: Credential::None,
            cloud: Cloud::Global,
            app_only: false,
        },
        password: None,
        created: 0,
        sending: Default::default(),
    }
}

/// `per_relay` token requests on every relay at once; their results.
async fn burst(relays: &[&Relay], m: &Arc<Mailbox>, per_relay: usize) -> Vec<AccessToken> {
    let mut tasks = tokio::task::JoinSet::new();
    for relay in relays {
        for _ in 0..per_relay {
            let (cache, m) = (relay.cache.clone(), m.clone());
            tasks.spawn(async move { cache.access_token(&m, SMTP_MIN_VALIDITY).await });
        }
    }
    let mut tokens = Vec::new();
    while let Some(done) = tasks.join_next().await {
        tokens.push(done.expect("task").expect("a token for every request"));
    }
    tokens
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_requests_on_three_relays_redeem_the_refresh_token_once() {
    let world = World::new(3599).await;
    world.entra.set_delay(Duration::from_millis(400));
    let (a, b, c) = (
        world.relay().await,
        world.relay().await,
        world.relay().await,
    );
    let tokens = burst(&[&a, &b, &c], &world.mailbox, 20).await;

    assert_eq!(tokens.len(), 60);
    let (reuses, grants) = world.counts();
    eprintln!("60 requests on 3 relays: {grants} refresh grant(s), {reuses} reuse(s)");
    assert_eq!(
        (reuses, grants),
        (0, 1),
        "one redemption for the fleet, no reuse"
    );
    assert!(
        tokens.iter().all(|t| t == &tokens[0]),
        "every relay uses the one token"
    );
    assert_eq!(
        world
            .entra
            .validate_access_token(tokens[0].expose())
            .as_deref(),
        Some(USER)
    );
    // The rotated refresh token is stored (sealed), at the next version.
    let row = world.pg.psql(
        "fleet",
        "SELECT version, position('1.AXEA' in convert_from(sealed, 'UTF8')) FROM refresh_tokens",
    );
    assert_eq!(
        row.trim(),
        "2|0",
        "rotated once, never stored in plain text"
    );
    drop((a, b, c));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_the_fleets_leases_two_relays_redeem_twice() {
    // What each relay did before: its own single flight only, on one shared store.
    let world = World::new(3599).await;
    world.entra.set_delay(Duration::from_millis(400));
    let store = Arc::new(TokenStore::new(world.dir.path(), world.key.clone()));
    let first = world
        .entra
        .latest_refresh_token(TENANT, CLIENT, USER)
        .expect("rt");
    m365_relay::state::RefreshTokens::save(&*store, USER, &RefreshToken::new(first)).unwrap();
    let (a, b) = (world.cache(), world.cache());
    let m = world.mailbox.clone();
    let (ra, rb) = tokio::join!(
        a.access_token(&m, SMTP_MIN_VALIDITY),
        b.access_token(&m, SMTP_MIN_VALIDITY)
    );
    let (reuses, grants) = world.counts();
    eprintln!("2 relays without leases: {grants} grant(s), {reuses} reuse(s)");
    assert_eq!(
        reuses, 1,
        "the second relay redeemed the same refresh token"
    );
    assert!(ra.is_err() || rb.is_err(), "and Entra refused it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn short_tokens_are_refreshed_about_once_per_lifetime_for_the_whole_fleet() {
    let world = World::new(4).await;
    let relays = [
        world.relay().await,
        world.relay().await,
        world.relay().await,
    ];
    let shutdown = CancellationToken::new();
    let mut registry = Registry::default();
    registry.insert(mailbox()).expect("registry");
    let registry = Arc::new(registry);
    for relay in &relays {
        let registry = registry.clone();
        tokio::spawn(m365_relay::oauth::refresher::run(
            relay.cache.clone(),
            move || registry.clone(),
            shutdown.clone(),
        ));
    }
    let run = Duration::from_secs(20);
    let started = Instant::now();
    let mut logins = 0;
    while started.elapsed() < run {
        for token in burst(&[&relays[0], &relays[1], &relays[2]], &world.mailbox, 2).await {
            assert!(world.entra.validate_access_token(token.expose()).is_some());
            logins += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
    let (reuses, grants) = world.counts();
    // A 4-second token serves logins for half its life (SMTP asks for more than what is
    // left after that): one refresh per 2 s for the fleet, not per relay.
    eprintln!(
        "{logins} logins over {run:?} on 3 relays, 4 s tokens: {grants} refreshes, {reuses} reuses"
    );
    assert_eq!(reuses, 0);
    assert!(logins > 300, "{logins}");
    let per_half_life = run.as_secs() as usize / 2;
    assert!(
        grants <= per_half_life + 3 && grants >= per_half_life / 2,
        "{grants} refreshes in {run:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_holder_that_stalled_past_its_lease_writes_nothing() {
    let world = World::new(3599).await;
    let (a, b) = (world.relay().await, world.relay().await);
    let leases = |relay: &Relay| PgLeases::new(relay.db.clone(), world.key.clone(), replica_id());
    let (la, lb) = (leases(&a), leases(&b));
    off(move || {
        let ttl = Duration::from_millis(500);
        let stalled = la.take(USER, ttl).unwrap().expect("free: granted");
        assert!(lb.take(USER, ttl).unwrap().is_none(), "held: refused");
        let read = la.refresh_token(&stalled).unwrap().expect("stored");
        std::thread::sleep(Duration::from_millis(800));
        let taken = lb.take(USER, ttl).unwrap().expect("expired: granted");
        assert!(taken.fence > stalled.fence);

        let token = |name: &str, fence| SharedToken {
            token: AccessToken::new(name),
            obtained: std::time::SystemTime::now(),
            expires: std::time::SystemTime::now() + Duration::from_secs(3600),
            fence,
        };
        let (late_rt, late_at) = (
            RefreshToken::new("rt-late"),
            token("at-late", stalled.fence),
        );
        let late = Outcome {
            rotation: Some((&read, &late_rt)),
            key: USER,
            token: &late_at,
        };
        assert_eq!(la.finish(&stalled, late).unwrap(), Finished::LeaseLost);

        let current = lb.refresh_token(&taken).unwrap().expect("stored");
        assert_eq!(
            current.version, read.version,
            "the stalled holder wrote nothing"
        );
        assert_eq!(current.token, read.token);
        assert!(lb.shared(USER).unwrap().is_none());

        let (new_rt, new_at) = (RefreshToken::new("rt-new"), token("at-new", taken.fence));
        let done = Outcome {
            rotation: Some((&current, &new_rt)),
            key: USER,
            token: &new_at,
        };
        assert_eq!(
            lb.finish(&taken, done).unwrap(),
            Finished::Stored { rotated: true }
        );
        let shared = la.shared(USER).unwrap().expect("shared");
        assert_eq!(shared.token.expose(), "at-new");
        assert_eq!(shared.fence, taken.fence);

        // An older version never overwrites a newer token, even under a valid lease.
        let again = la.take(USER, ttl).unwrap().expect("released: granted");
        let stale = Redeemable {
            token: read.token.clone(),
            version: read.version,
        };
        let old = Outcome {
            rotation: Some((&stale, &late_rt)),
            key: USER,
            token: &late_at,
        };
        assert_eq!(
            la.finish(&again, old).unwrap(),
            Finished::Stored { rotated: false }
        );
        let kept = la.refresh_token(&again).unwrap().expect("stored");
        assert_eq!(kept.token.expose(), "rt-new");
        // The access token it obtained under that lease is the newest, and shared.
        assert_eq!(la.shared(USER).unwrap().unwrap().fence, again.fence);
    })
    .await;
    // Nothing is stored in plain text.
    let dump = world.pg.pg_dump("fleet");
    for secret in ["rt-new", "at-new", "rt-late", "at-late"] {
        assert!(!dump.contains(secret), "{secret} in the dump");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_the_database_stopped_cached_tokens_serve_and_refreshes_resume_after() {
    let mut world = World::new(3599).await;
    let (a, b) = (world.relay().await, world.relay().await);
    burst(&[&a, &b], &world.mailbox, 5).await;
    assert_eq!(world.counts(), (0, 1));
    let seen = a
        .cache
        .schedule_info(USER)
        .token
        .map(|(obtained, _)| obtained);

    off_mut(&mut world.pg, PgCluster::stop).await;
    // Logins keep their valid tokens.
    assert_eq!(burst(&[&a, &b], &world.mailbox, 5).await.len(), 10);
    // A refresh fails, transiently, without asking Entra; a relay without a token cannot
    // log in meanwhile.
    let refresh = a.cache.refresh_now(&world.mailbox, seen).await;
    let e = refresh.expect_err("no refresh without the database");
    assert!(!e.needs_admin(), "{e}");
    let c = world.relay().await;
    let login = c
        .cache
        .access_token(&world.mailbox, SMTP_MIN_VALIDITY)
        .await;
    assert!(login.as_ref().is_err_and(|e| !e.needs_admin()), "{login:?}");
    assert!(a.db.health().unreachable.is_some(), "degraded");
    assert_eq!(world.counts(), (0, 1), "Entra was not asked");

    off_mut(&mut world.pg, PgCluster::start_server).await;
    a.cache
        .refresh_now(&world.mailbox, seen)
        .await
        .expect("the refresh resumes");
    assert!(a.db.health().unreachable.is_none());
    let tokens = burst(&[&c], &world.mailbox, 3).await;
    burst(&[&a, &b], &world.mailbox, 3).await;
    let (reuses, grants) = world.counts();
    eprintln!("database stopped and started: {grants} grants, {reuses} reuses");
    assert_eq!((reuses, grants), (0, 2));
    let fresh = a
        .cache
        .access_token(&world.mailbox, SMTP_MIN_VALIDITY)
        .await
        .unwrap();
    assert!(
        tokens.iter().all(|t| t == &fresh),
        "c took the shared token"
    );
}

/// Runs `f` on the cluster off the async threads (pg_ctl waits).
async fn off_mut(pg: &mut PgCluster, f: fn(&mut PgCluster)) {
    tokio::task::block_in_place(|| f(pg));
}
