//! The private PostgreSQL cluster of the tests (`support/postgres.rs`) against the real server:
//! a client logs in with the password over TCP loopback (and with TLS, verifying the server's
//! certificate), and data outlives a stop and a start, and a crash.

use std::sync::Arc;
use std::time::Instant;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio_postgres_rustls::MakeRustlsConnect;

use tokio_postgres::NoTls;

use crate::support::certs::TestPki;
use crate::support::postgres::{PgCluster, SUPERUSER};

/// Connects to `url` without TLS and returns the client (its connection driven by a task).
async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to the test cluster: {e}"));
    tokio::spawn(connection);
    client
}

#[tokio::test]
async fn a_private_cluster_takes_a_password_login_over_tcp_loopback() {
    let started = Instant::now();
    let pg = tokio::task::spawn_blocking(PgCluster::start).await.unwrap();
    eprintln!("cluster initialised and started in {:?}", started.elapsed());
    let url = pg.create_database("relay_one");

    let client = connect(&url).await;
    let row = client
        .query_one(
            "SELECT current_user::text, current_database()::text, inet_server_addr()::text, \
                    inet_server_port(), 6 * 7",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), SUPERUSER);
    assert_eq!(row.get::<_, String>(1), "relay_one");
    assert_eq!(row.get::<_, String>(2), "127.0.0.1/32", "over TCP loopback");
    assert_eq!(row.get::<_, i32>(3), i32::from(pg.port()));
    assert_eq!(row.get::<_, i32>(4), 42);

    // The password is checked (SCRAM): a wrong one is refused.
    let wrong = url.replace(pg.password(), "not-the-password");
    let err = tokio_postgres::connect(&wrong, NoTls).await.err();
    let err = format!("{:?}", err.expect("a wrong password is refused"));
    assert!(err.contains("password authentication failed"), "{err}");
}

#[tokio::test]
async fn data_outlives_a_stop_and_start_and_a_crash() {
    let mut pg = tokio::task::spawn_blocking(PgCluster::start).await.unwrap();
    let url = pg.create_database("kept");
    let client = connect(&url).await;
    client
        .batch_execute(
            "CREATE TABLE notes (body text); INSERT INTO notes VALUES ('before the stop')",
        )
        .await
        .unwrap();
    drop(client);

    let mut pg = tokio::task::spawn_blocking(move || {
        pg.stop();
        assert!(!pg.is_running());
        pg.start_server();
        pg
    })
    .await
    .unwrap();
    let client = connect(&url).await;
    client
        .execute("INSERT INTO notes VALUES ('before the crash')", &[])
        .await
        .unwrap();

    // An immediate stop is a crash: the session dies, and the committed rows survive recovery.
    let pg = tokio::task::spawn_blocking(move || {
        pg.kill();
        pg.start_server();
        pg
    })
    .await
    .unwrap();
    assert!(
        client.query_one("SELECT 1", &[]).await.is_err(),
        "the old session is gone"
    );
    let client = connect(&url).await;
    let rows = client
        .query("SELECT body FROM notes ORDER BY body", &[])
        .await
        .unwrap();
    let bodies: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(bodies, ["before the crash", "before the stop"]);
    assert_eq!(pg.psql("kept", "SELECT count(*) FROM notes").trim(), "2");
}

#[tokio::test]
async fn a_tls_cluster_refuses_plaintext_and_presents_a_certificate_for_loopback() {
    let pki = TestPki::new();
    let ca_pem = pki.ca_pem();
    let pg = tokio::task::spawn_blocking(move || PgCluster::start_with_tls(&pki))
        .await
        .unwrap();
    assert!(pg.tls());
    let url = pg.create_database("secure");

    let err = tokio_postgres::connect(&url, NoTls).await.err();
    let err = format!("{:?}", err.expect("plaintext TCP is refused"));
    assert!(err.contains("no encryption"), "{err}");

    // Verified against the test CA, for the name 127.0.0.1 (the leaf's IP-address SAN).
    let tls = MakeRustlsConnect::new(client_config(&ca_pem));
    let (client, connection) = tokio_postgres::connect(&format!("{url}?sslmode=require"), tls)
        .await
        .unwrap_or_else(|e| panic!("TLS connect to the test cluster: {e}"));
    tokio::spawn(connection);
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "the session is encrypted");

    // A client trusting another CA refuses the server.
    let stranger = MakeRustlsConnect::new(client_config(&TestPki::new().ca_pem()));
    let err = tokio_postgres::connect(&format!("{url}?sslmode=require"), stranger)
        .await
        .err();
    // (Its CA has the same name as the cluster's issuer, so rustls sees a bad signature.)
    let err = format!("{:?}", err.expect("another CA's certificate is refused"));
    assert!(err.contains("InvalidCertificate"), "{err}");
}

/// A rustls client config (aws-lc-rs) trusting only `ca_pem`.
fn client_config(ca_pem: &str) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth()
}

/// The relay's connections carry its bounds: the server cancels a statement after
/// `state.timeout_secs` (so a connection the relay stopped waiting for is free again in the
/// pool), and a statement that runs longer fails within the bound instead of hanging.
#[test]
fn the_relays_connections_carry_the_statement_timeout() {
    let pg = PgCluster::start();
    pg.create_database("bounds");
    let db = m365_relay::state::Database::open(&pg.database_config("bounds", None)).unwrap();
    let shown = db
        .call("show the timeout", |c| async move {
            Ok(c.query_one("SHOW statement_timeout", &[])
                .await?
                .get::<_, String>(0))
        })
        .unwrap();
    assert_eq!(shown, "5s");
    let start = Instant::now();
    let slow = db.call("sleep", |c| async move {
        c.batch_execute("SELECT pg_sleep(30)").await
    });
    assert!(slow.is_err(), "{slow:?}");
    assert!(
        start.elapsed() < std::time::Duration::from_secs(7),
        "{:?}",
        start.elapsed()
    );
    // The pool is usable at once afterwards.
    let again = db.call("select", |c| async move {
        Ok(c.query_one("SELECT 1", &[]).await?.get::<_, i32>(0))
    });
    assert_eq!(again.unwrap(), 1);
}
