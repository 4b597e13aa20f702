//! The mailbox registry in the `registry` table: one row holding the sealed document the
//! files backend writes to `mailboxes.json` (format version 5: secrets sealed with the
//! state key, and the MAC over it all; [`crate::state::files::registry::seal_registry`]),
//! and a `version` that every save bumps and announces with `NOTIFY m365_relay_registry`.
//!
//! [`RegistryTable::revision`] costs no database round trip: it is the version as last
//! heard, kept current by a task that `LISTEN`s on its own connection, re-reads the version
//! whenever it (re)connects (so a change made while it was away is noticed), and reconnects
//! after an outage. With the database unreachable the relay keeps the registry it read.
//!
//! A change ([`RegistryTable::locked`]) holds a session advisory lock on a connection of
//! its own until it is dropped; that connection is then closed (never returned to the pool
//! with the lock), so a holder that dies releases it too. A plain save waits for that lock
//! in its own transaction.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use deadpool_postgres::{ClientWrapper, Object};
use tokio_util::sync::{CancellationToken, DropGuard};
use zeroize::Zeroizing;

use super::database::{Database, DatabaseError};
use crate::mailbox::Registry;
use crate::state::error::RegistryStoreError;
use crate::state::files::registry::{open_registry_trusting, open_sealed_registry, seal_registry};
use crate::state::seal::StateKey;
use crate::state::traits::{LockedRegistry, RegistryLock, RegistryStore, Revision};

/// The channel every save notifies, with the new version as payload.
pub const CHANNEL: &str = "m365_relay_registry";

/// The advisory lock key of a change of the registry ("m365regi").
pub(super) const REGISTRY_LOCK: i64 = 0x6d33_3635_7265_6769;

/// How often the listener reads the version itself, beside the notifications.
const RECHECK: Duration = Duration::from_secs(10);

/// The longest wait between two attempts to listen again.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

const READ: &str = "SELECT document, version FROM registry WHERE id = 1";

/// Stores `$1` as the document, bumps the version and notifies it, in one statement.
pub(super) const SAVE: &str = "WITH saved AS (
        INSERT INTO registry (id, document, version) VALUES (1, $1, 1)
        ON CONFLICT (id) DO UPDATE SET document = EXCLUDED.document,
                                       version = registry.version + 1
        RETURNING version)
    SELECT version, pg_notify('m365_relay_registry', version::text) FROM saved";

/// The stored document and its version.
type Row = Option<(Zeroizing<Vec<u8>>, i64)>;

/// The registry in the database, sealed with the state key.
#[derive(Debug)]
pub struct RegistryTable {
    db: Database,
    key: StateKey,
    /// The stored version as last heard; 0 while none is stored.
    heard: Arc<AtomicI64>,
    /// Stops the listening task when the table goes.
    _listening: DropGuard,
}

impl RegistryTable {
    /// The registry of `db`: reads its version, and listens for changes from now on.
    pub fn open(db: Database, key: StateKey) -> Result<Self, DatabaseError> {
        let version = db.call("read the registry's version", |client| async move {
            read_version(&client).await
        })?;
        let heard = Arc::new(AtomicI64::new(version));
        let stop = CancellationToken::new();
        db.spawn(listen(db.clone(), heard.clone(), stop.clone()));
        Ok(Self {
            db,
            key,
            heard,
            _listening: stop.drop_guard(),
        })
    }

    /// Where the document is, for errors.
    fn origin(&self) -> PathBuf {
        origin(&self.db)
    }

    fn open_row(&self, row: Row) -> Result<Registry, RegistryStoreError> {
        match row {
            None => Ok(Registry::default()),
            Some((document, _)) => open_sealed_registry(&document, &self.key, &self.origin()),
        }
    }

    /// The registry's lock on a connection of its own, and the document as stored then.
    fn hold(&self) -> Result<(PgLock, Row), RegistryStoreError> {
        let (held, row) = self.db.call("lock the registry", |client| async move {
            // Out of the pool at once: closed when dropped (with the lock, also when this
            // call is given up while waiting for it), never handed to another caller.
            let held = Object::take(client);
            held.execute("SELECT pg_advisory_lock($1)", &[&REGISTRY_LOCK])
                .await?;
            let row = read_document(&held).await?;
            Ok((held, row))
        })?;
        let lock = PgLock {
            db: self.db.clone(),
            key: self.key.clone(),
            heard: self.heard.clone(),
            held: Arc::new(tokio::sync::Mutex::new(held)),
        };
        Ok((lock, row))
    }
}

impl RegistryStore for RegistryTable {
    fn load(&self) -> Result<Registry, RegistryStoreError> {
        let row = self.db.call("read the registry", |client| async move {
            read_document(&client).await
        })?;
        self.open_row(row)
    }

    /// The database holds only sealed documents: nothing to migrate.
    fn load_and_migrate(&self) -> Result<Registry, RegistryStoreError> {
        self.load()
    }

    fn locked(&self) -> Result<LockedRegistry, RegistryStoreError> {
        let (lock, row) = self.hold()?;
        let registry = self.open_row(row)?;
        Ok(LockedRegistry::new(registry, Box::new(lock)))
    }

    fn save(&self, registry: &Registry) -> Result<(), RegistryStoreError> {
        let document = seal_registry(registry, &self.key, &self.origin())?;
        let version = self.db.call("save the registry", |mut client| async move {
            let tx = client.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&REGISTRY_LOCK])
                .await?;
            let version: i64 = tx.query_one(SAVE, &[&&document[..]]).await?.get(0);
            tx.commit().await?;
            Ok(version)
        })?;
        self.heard.fetch_max(version, Ordering::SeqCst);
        Ok(())
    }

    fn reseal(&self) -> Result<Registry, RegistryStoreError> {
        let (lock, row) = self.hold()?;
        let Some((document, _)) = row else {
            return Err(RegistryStoreError::Corrupt {
                file: self.origin(),
                why: "there is no registry to seal".into(),
            });
        };
        let registry = open_registry_trusting(&document, &self.key, &self.origin())?;
        lock.save(&registry)?;
        tracing::warn!(database = %self.db.server(),
            "resealed the mailbox registry as it was, on the administrator's word");
        Ok(registry)
    }

    fn revision(&self) -> Result<Option<Revision>, RegistryStoreError> {
        let version = self.heard.load(Ordering::SeqCst);
        Ok((version > 0).then_some(Revision::Database { version }))
    }
}

/// The registry's lock held for a change ([`RegistryTable::locked`]): a session advisory
/// lock on a connection taken out of the pool, which closes when this is dropped.
struct PgLock {
    db: Database,
    key: StateKey,
    heard: Arc<AtomicI64>,
    held: Arc<tokio::sync::Mutex<ClientWrapper>>,
}

impl std::fmt::Debug for PgLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgLock")
            .field("db", &self.db)
            .finish_non_exhaustive()
    }
}

impl RegistryLock for PgLock {
    fn save(&self, registry: &Registry) -> Result<(), RegistryStoreError> {
        let document = seal_registry(registry, &self.key, &origin(&self.db))?;
        let held = self.held.clone();
        let version = self.db.call_held("save the registry", async move {
            let held = held.lock().await;
            let row = held.query_one(SAVE, &[&&document[..]]).await?;
            Ok(row.get::<_, i64>(0))
        })?;
        self.heard.fetch_max(version, Ordering::SeqCst);
        Ok(())
    }
}

fn origin(db: &Database) -> PathBuf {
    PathBuf::from(format!("the registry in the database {}", db.server()))
}

async fn read_document(client: &tokio_postgres::Client) -> Result<Row, tokio_postgres::Error> {
    let row = client.query_opt(READ, &[]).await?;
    Ok(row.map(|r| (Zeroizing::new(r.get::<_, Vec<u8>>(0)), r.get::<_, i64>(1))))
}

async fn read_version(client: &tokio_postgres::Client) -> Result<i64, tokio_postgres::Error> {
    let row = client
        .query_opt("SELECT version FROM registry WHERE id = 1", &[])
        .await?;
    Ok(row.map_or(0, |r| r.get(0)))
}

/// Keeps `heard` at the stored version until `stop`: listens for saves, and after a lost
/// connection listens again (waiting longer each time, up to [`MAX_BACKOFF`]), re-reading
/// the version each time it is listening again.
async fn listen(db: Database, heard: Arc<AtomicI64>, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(200);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            listened = listen_once(&db, &heard) => {
                if listened {
                    backoff = Duration::from_millis(200);
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One listening connection, until it is lost; whether it was listening at all. The
/// version is also read again every [`RECHECK`] (bounded by the database's timeout): a
/// connection that a NAT or balancer dropped without a word, or a lost notification,
/// delays a change by that much at most, and a connection that stops answering is
/// replaced.
async fn listen_once(db: &Database, heard: &AtomicI64) -> bool {
    let Ok((client, mut notifications)) = db.listen(CHANNEL).await else {
        return false;
    };
    let Some(version) = bounded_version(db, &client).await else {
        return false;
    };
    heard.fetch_max(version, Ordering::SeqCst);
    let mut recheck = tokio::time::interval(RECHECK);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    recheck.tick().await;
    loop {
        let version = tokio::select! {
            notification = notifications.recv() => match notification {
                Some(n) => match n.payload().parse::<i64>() {
                    Ok(version) => Some(version),
                    Err(_) => bounded_version(db, &client).await,
                },
                None => None,
            },
            _ = recheck.tick() => bounded_version(db, &client).await,
        };
        let Some(version) = version else {
            break;
        };
        heard.fetch_max(version, Ordering::SeqCst);
    }
    tracing::debug!(database = %db.server(), "stopped listening for registry changes; listening again");
    true
}

/// The stored version, or `None` when the listening connection fails or does not answer
/// within the database's timeout.
async fn bounded_version(db: &Database, client: &tokio_postgres::Client) -> Option<i64> {
    match tokio::time::timeout(db.timeout(), read_version(client)).await {
        Ok(Ok(version)) => Some(version),
        _ => None,
    }
}
