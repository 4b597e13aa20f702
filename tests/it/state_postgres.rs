//! The PostgreSQL backend's stores against a real server (`support/postgres.rs`): the
//! registry sealed as `mailboxes.json` is, changes announced to every replica by NOTIFY and
//! serialised by the lock, refresh tokens rotated by compare-and-swap, statuses and route
//! switches shared, no secret in plain text in the database, and the registry still served
//! from memory while the database is down.

use std::sync::Arc;
use std::time::{Duration, Instant};

use m365_relay::cloud::Cloud;
use m365_relay::mailbox::{Credential, Mailbox, PasswordVerifier, Registration, Sending};
use m365_relay::secret::{ClientSecret, RefreshToken};
use m365_relay::state::{
    MailboxStatus, RegistryStoreError, Revision, State, StateKey, StoreError, TokenState,
};

use crate::support::certs::TestPki;
use crate::support::postgres::PgCluster;
use m365_relay::state::postgres::switches::REMEMBERED;

const SECRET: &str = "client-secret-that-must-never-be-stored-plain";
const TOKEN_1: &str = "0.AXEA-refresh-token-one-must-never-be-stored-plain";
const TOKEN_2: &str = "0.AXEA-refresh-token-two-must-never-be-stored-plain";

fn key() -> StateKey {
    StateKey::from_bytes(&[7; 32])
}

/// A relay's state on `database` of `pg` (a replica: its own pool and listener).
fn replica(pg: &PgCluster, database: &str, key: StateKey) -> State {
    m365_relay::state::postgres::open(&pg.database_config(database, None), key)
        .unwrap_or_else(|e| panic!("open the PostgreSQL state: {e}"))
}

/// A mailbox with its own app registration, a client secret and a password verifier.
pub fn mailbox(address: &str) -> Mailbox {
    Mailbox {
        address: address.to_owned(),
        registration: Registration::App {
            tenant: "contoso.com".into(),
            client_id: "11111111-2222-3333-4444-555555555555".into(),
            credential: Credential::Secret {
                secret: ClientSecret::new(SECRET),
                expires: Some(1_900_000_000),
            },
            cloud: Cloud::default(),
            app_only: false,
        },
        password: Some(PasswordVerifier::Generated {
            salt: [1; 32],
            tag: [2; 32],
        }),
        created: 1_700_000_000,
        sending: Sending::default(),
    }
}

fn add(state: &State, address: &str) {
    let mut locked = state.registry().locked().unwrap();
    locked.insert(mailbox(address)).unwrap();
    locked.save().unwrap();
}

fn version(state: &State) -> Option<i64> {
    match state.registry().revision().unwrap() {
        None => None,
        Some(Revision::Database { version }) => Some(version),
        Some(other) => panic!("not a database revision: {other:?}"),
    }
}

/// Waits up to `within` for `what` to hold.
fn eventually(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < within, "not within {within:?}: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn client_secret(m: &Mailbox) -> String {
    match &m.registration {
        Registration::App {
            credential: Credential::Secret { secret, .. },
            ..
        } => secret.expose().to_owned(),
        other => panic!("no secret: {other:?}"),
    }
}

#[test]
fn the_registry_is_sealed_and_every_save_reaches_the_other_replicas() {
    let pg = PgCluster::start();
    pg.create_database("registry");
    let a = replica(&pg, "registry", key());
    let b = replica(&pg, "registry", key());
    assert_eq!(version(&a), None, "nothing stored yet");
    assert!(a.registry().load().unwrap().is_empty());

    add(&a, "alice@contoso.com");
    assert_eq!(version(&a), Some(1), "the saving replica knows at once");
    eventually(Duration::from_secs(5), "NOTIFY reaches replica b", || {
        version(&b) == Some(1)
    });
    let seen = b.registry().load().unwrap();
    let alice = seen.get("alice@contoso.com").expect("alice, read by b");
    assert_eq!(client_secret(alice), SECRET);
    assert_eq!(
        format!("{alice:?}"),
        format!("{:?}", mailbox("alice@contoso.com"))
    );

    add(&b, "bob@contoso.com");
    eventually(Duration::from_secs(5), "NOTIFY reaches replica a", || {
        version(&a) == Some(2)
    });
    assert_eq!(a.registry().load().unwrap().len(), 2);

    // Stored as mailboxes.json is: version 5 with a MAC, the secret sealed.
    let document = pg.psql(
        "registry",
        "SELECT convert_from(document, 'UTF8') FROM registry",
    );
    assert!(document.contains("\"version\": 5"), "{document}");
    assert!(document.contains("\"mac\": \"hs256:"), "{document}");
    assert!(
        document.contains("\"client_secret_sealed\": \"xc20p1:"),
        "{document}"
    );
    assert!(
        !document.contains(SECRET),
        "the client secret in plain text"
    );
    let dump = pg.pg_dump("registry");
    assert!(
        dump.contains("\"client_secret_sealed\": \"xc20p1:"),
        "bytea decoded"
    );
    assert!(!dump.contains(SECRET), "the client secret in plain text");
    assert_eq!(
        pg.psql("registry", "SELECT version FROM registry").trim(),
        "2"
    );
}

#[test]
fn changes_of_concurrent_replicas_through_the_lock_are_all_kept() {
    const REPLICAS: usize = 8;
    let pg = PgCluster::start();
    pg.create_database("locking");
    let replicas: Vec<State> = (0..REPLICAS)
        .map(|_| replica(&pg, "locking", key()))
        .collect();
    std::thread::scope(|s| {
        for (i, state) in replicas.iter().enumerate() {
            s.spawn(move || {
                let mut locked = state.registry().locked().unwrap();
                locked
                    .insert(mailbox(&format!("user{i}@contoso.com")))
                    .unwrap();
                // Hold it a little, so that the others really wait.
                std::thread::sleep(Duration::from_millis(30));
                locked.save().unwrap();
            });
        }
    });
    let registry = replicas[0].registry().load().unwrap();
    assert_eq!(registry.len(), REPLICAS, "no change lost");
    assert_eq!(
        pg.psql("locking", "SELECT version FROM registry").trim(),
        REPLICAS.to_string()
    );
    // A plain save waits for a holder of the lock.
    let held = replicas[1].registry().locked().unwrap();
    let started = Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(300));
            drop(held);
        });
        replicas[2].registry().save(&registry).unwrap();
    });
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "save did not wait"
    );
}

#[test]
fn a_registry_changed_without_the_key_is_refused_until_resealed() {
    let pg = PgCluster::start();
    pg.create_database("tamper");
    let state = replica(&pg, "tamper", key());
    add(&state, "alice@contoso.com");

    let other = replica(&pg, "tamper", StateKey::from_bytes(&[8; 32]));
    let err = other.registry().load().unwrap_err();
    assert!(
        matches!(err, RegistryStoreError::Unauthentic { .. }),
        "{err}"
    );

    // Write access to the database without the key: a changed document is refused.
    pg.psql(
        "tamper",
        "UPDATE registry SET document = convert_to(replace(convert_from(document, 'UTF8'), \
         '\"created\": 1700000000', '\"created\": 1700000001'), 'UTF8')",
    );
    let err = state.registry().load().unwrap_err();
    assert!(
        matches!(err, RegistryStoreError::Unauthentic { .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("the registry in the database"),
        "{err}"
    );

    let resealed = state.registry().reseal().unwrap();
    assert_eq!(
        resealed.get("alice@contoso.com").unwrap().created,
        1_700_000_001
    );
    let loaded = state.registry().load().unwrap();
    assert_eq!(
        loaded.get("alice@contoso.com").unwrap().created,
        1_700_000_001
    );
}

#[test]
fn the_registry_is_served_from_memory_while_the_database_is_down() {
    let mut pg = PgCluster::start();
    pg.create_database("outage");
    let a = replica(&pg, "outage", key());
    let b = replica(&pg, "outage", key());
    add(&a, "alice@contoso.com");
    eventually(Duration::from_secs(5), "b hears the save", || {
        version(&b) == Some(1)
    });

    pg.kill();
    // No round trip: the revision is what was heard, at once, without an error.
    let started = Instant::now();
    for _ in 0..1000 {
        assert_eq!(version(&b), Some(1));
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let err = b.registry().load().unwrap_err();
    assert!(
        matches!(err, RegistryStoreError::Database(ref e) if e.is_unreachable()),
        "{err}"
    );
    let health = b.database().unwrap().health();
    assert!(health.unreachable.is_some(), "{health:?}");

    pg.start_server();
    add(&a, "bob@contoso.com");
    // b listens again (after its back-off) and re-reads the version.
    eventually(
        Duration::from_secs(15),
        "b hears the save after the outage",
        || version(&b) == Some(2),
    );
    assert_eq!(b.registry().load().unwrap().len(), 2);
    assert!(b.database().unwrap().health().unreachable.is_none());
}

#[test]
fn refresh_tokens_rotate_by_compare_and_swap_and_are_sealed() {
    let pg = PgCluster::start();
    pg.create_database("tokens");
    let state = replica(&pg, "tokens", key());
    let tokens = state.tokens();
    let (one, two) = (RefreshToken::new(TOKEN_1), RefreshToken::new(TOKEN_2));
    let stale = RefreshToken::new("0.AXEA-an-older-token");

    assert!(tokens.load("Alice@Contoso.com").unwrap().is_none());
    assert!(
        !tokens.replace("alice@contoso.com", &one, &two).unwrap(),
        "none stored"
    );
    tokens.save("Alice@Contoso.com", &one).unwrap();
    assert_eq!(
        tokens.load("alice@contoso.com").unwrap().unwrap().expose(),
        TOKEN_1
    );

    assert!(!tokens.replace("alice@contoso.com", &stale, &two).unwrap());
    assert_eq!(
        tokens.load("alice@contoso.com").unwrap().unwrap().expose(),
        TOKEN_1
    );
    assert!(tokens.replace("alice@contoso.com", &one, &two).unwrap());
    assert_eq!(
        tokens.load("alice@contoso.com").unwrap().unwrap().expose(),
        TOKEN_2
    );
    assert!(
        !tokens.replace("alice@contoso.com", &one, &stale).unwrap(),
        "one is spent"
    );
    let row = pg.psql("tokens", "SELECT mailbox, version FROM refresh_tokens");
    assert_eq!(row.trim(), "alice@contoso.com|2");

    // Sealed for its mailbox: never in plain text, and a row moved to another mailbox
    // does not open.
    let dump = pg.pg_dump("tokens");
    assert!(
        !dump.contains(TOKEN_1) && !dump.contains(TOKEN_2),
        "a token in plain text"
    );
    pg.psql(
        "tokens",
        "INSERT INTO refresh_tokens (mailbox, sealed, version) \
         SELECT 'mallory@contoso.com', sealed, 1 FROM refresh_tokens",
    );
    let err = tokens.load("mallory@contoso.com").unwrap_err();
    assert!(matches!(err, StoreError::Undecryptable { .. }), "{err}");
    assert!(!err.to_string().contains("AXEA"), "{err}");

    // Invalid tokens and addresses are refused before the database.
    assert!(matches!(
        tokens.save("alice@contoso.com", &RefreshToken::new("two words")),
        Err(StoreError::InvalidToken { .. })
    ));
    assert!(matches!(
        tokens.load("not an address"),
        Err(StoreError::InvalidMailbox { .. })
    ));

    tokens.remove("alice@contoso.com").unwrap();
    tokens.remove("alice@contoso.com").unwrap();
    assert!(tokens.load("alice@contoso.com").unwrap().is_none());
}

#[test]
fn of_replicas_rotating_the_same_token_exactly_one_wins() {
    const REPLICAS: usize = 6;
    let pg = PgCluster::start();
    pg.create_database("race");
    let replicas: Vec<State> = (0..REPLICAS).map(|_| replica(&pg, "race", key())).collect();
    let redeemed = RefreshToken::new(TOKEN_1);
    replicas[0]
        .tokens()
        .save("alice@contoso.com", &redeemed)
        .unwrap();
    let barrier = Arc::new(std::sync::Barrier::new(REPLICAS));
    let wins: Vec<bool> = std::thread::scope(|s| {
        let handles: Vec<_> = replicas
            .iter()
            .enumerate()
            .map(|(i, state)| {
                let (barrier, redeemed) = (barrier.clone(), redeemed.clone());
                s.spawn(move || {
                    let rotated = RefreshToken::new(format!("0.AXEA-rotated-by-{i}"));
                    barrier.wait();
                    state
                        .tokens()
                        .replace("alice@contoso.com", &redeemed, &rotated)
                        .unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(wins.iter().filter(|w| **w).count(), 1, "{wins:?}");
    let winner = wins.iter().position(|w| *w).unwrap();
    let stored = replicas[0]
        .tokens()
        .load("alice@contoso.com")
        .unwrap()
        .unwrap();
    assert_eq!(stored.expose(), format!("0.AXEA-rotated-by-{winner}"));
}

#[test]
fn statuses_and_route_switches_are_shared_by_the_replicas() {
    let pg = PgCluster::start();
    pg.create_database("shared");
    let a = replica(&pg, "shared", key());
    let b = replica(&pg, "shared", key());

    let status = MailboxStatus {
        state: TokenState::NeedsReauth,
        since: Some(1_700_000_100),
        error: Some("invalid_grant".into()),
        error_codes: vec![70008],
        ..MailboxStatus::default()
    };
    assert_eq!(b.statuses().read("alice@contoso.com"), None);
    a.statuses().write("alice@contoso.com", &status).unwrap();
    assert_eq!(b.statuses().read("alice@contoso.com"), Some(status.clone()));
    let newer = MailboxStatus {
        state: TokenState::Ok,
        ..status
    };
    b.statuses().write("alice@contoso.com", &newer).unwrap();
    assert_eq!(a.statuses().read("alice@contoso.com"), Some(newer));

    // Each relay reads the switches every REMEMBERED in the background and answers from
    // memory (no database round trip per SMTP login): its own switch at once, another's
    // within REMEMBERED.
    let reply = "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled";
    assert_eq!(a.switches().switched_at("alice@contoso.com"), None);
    a.switches()
        .switch_to_graph("alice@contoso.com", 1_700_000_200, reply)
        .unwrap();
    assert_eq!(
        a.switches().switch("alice@contoso.com"),
        Some((1_700_000_200, reply.to_owned())),
        "its own switch, at once"
    );
    let within = REMEMBERED + Duration::from_secs(3);
    let switched = Some((1_700_000_200, reply.to_owned()));
    eventually(within, "b sees a's switch", || {
        b.switches().switch("alice@contoso.com") == switched
    });
    b.switches().forget("alice@contoso.com").unwrap();
    assert_eq!(b.switches().switched_at("alice@contoso.com"), None);
    let c = replica(&pg, "shared", key());
    assert_eq!(c.switches().switched_at("alice@contoso.com"), None);
    eventually(within, "a's own copy goes", || {
        a.switches().switched_at("alice@contoso.com").is_none()
    });
}

#[test]
fn the_stores_reach_a_tls_only_server_verified_against_its_ca_only() {
    let pki = TestPki::new();
    let dir = tempfile::tempdir().unwrap();
    let ca = pki.write_ca(dir.path());
    let pg = PgCluster::start_with_tls(&pki);
    pg.create_database("secure");
    let config = pg.database_config("secure", Some(&ca));
    let state = m365_relay::state::postgres::open(&config, key()).unwrap();
    add(&state, "alice@contoso.com");
    assert_eq!(state.registry().load().unwrap().len(), 1);
    let sessions = pg.psql(
        "secure",
        "SELECT bool_and(s.ssl), count(*) > 0 FROM pg_stat_ssl s JOIN pg_stat_activity a \
         USING (pid) WHERE a.datname = 'secure' AND a.application_name = 'm365-relay'",
    );
    assert_eq!(sessions.trim(), "t|t", "every relay session is encrypted");

    // A server whose certificate another CA issued is refused.
    let elsewhere = tempfile::tempdir().unwrap();
    let other_ca = TestPki::new().write_ca(elsewhere.path());
    let err =
        m365_relay::state::postgres::open(&pg.database_config("secure", Some(&other_ca)), key())
            .unwrap_err()
            .to_string();
    assert!(
        err.contains("unreachable") || err.contains("certificate"),
        "{err}"
    );
    assert!(!err.contains(pg.password()), "{err}");
}
