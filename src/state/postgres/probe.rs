//! Keeps the database's reachability current when nothing else calls it: a relay whose
//! logins are all served from memory would otherwise not notice that the database went
//! away, nor that it came back. Every [`PROBE_EVERY`] a `SELECT 1` goes through the
//! pool ([`Database::run`]), which records (and logs, once) any change.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::database::{Database, DatabaseError};

/// How often the database is probed.
pub const PROBE_EVERY: Duration = Duration::from_secs(5);

/// One probe: whether the database answers a `SELECT 1` now.
pub async fn probe(db: &Database) -> Result<(), DatabaseError> {
    db.run("probe", |client| async move {
        client.simple_query("SELECT 1").await.map(drop)
    })
    .await
}

/// Probes `db` every `every` until `shutdown`.
pub async fn watch(db: Database, every: Duration, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {
                // The outcome is recorded in the database's health; nothing else to do.
                let _ = probe(&db).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DatabaseConfig, DatabaseTls};
    use crate::secret::DatabaseUrl;

    /// A database on a loopback port where nothing listens.
    fn nowhere() -> Database {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let config = DatabaseConfig {
            url: DatabaseUrl::new(format!("postgres://relay:s3cret-pw@127.0.0.1:{port}/relay")),
            tls: DatabaseTls::Disable,
            ca_file: None,
            pool_size: 2,
            timeout: Duration::from_secs(2),
            server: format!("127.0.0.1:{port}/relay"),
        };
        Database::open(&config).unwrap()
    }

    #[tokio::test]
    async fn the_probe_marks_an_unreachable_database_without_its_password() {
        let db = nowhere();
        assert!(
            db.health().unreachable.is_none(),
            "nothing known before a call"
        );
        let err = probe(&db).await.unwrap_err();
        assert!(err.is_unreachable(), "{err}");
        let health = db.health();
        let (_, why) = health.unreachable.expect("now unreachable");
        assert!(!why.contains("s3cret-pw"), "{why}");
    }

    #[tokio::test]
    async fn the_watch_probes_until_shutdown() {
        let db = nowhere();
        let shutdown = CancellationToken::new();
        let watching = tokio::spawn(watch(
            db.clone(),
            Duration::from_millis(50),
            shutdown.clone(),
        ));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while db.health().unreachable.is_none() {
            assert!(tokio::time::Instant::now() < deadline, "no probe ran");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), watching)
            .await
            .expect("the watch stops at shutdown")
            .unwrap();
    }
}
