//! The database's schema, versioned: [`MIGRATIONS`] in order, each applied once, all of a
//! run in one transaction under an advisory lock, so that relays starting together and
//! `m365-relay state migrate` never apply one twice or half. A database whose schema is
//! newer than this relay knows is refused: an older relay never writes into it.

use super::database::{Database, DatabaseError};

/// The migrations: version, what it adds, and its SQL. Append only; never edit one that
/// shipped.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[(1, "the state tables", V1)];

/// The schema version this relay writes.
pub const LATEST: i32 = MIGRATIONS.len() as i32;

/// The advisory lock key that serialises migrations ("m365rely").
const MIGRATION_LOCK: i64 = 0x6d33_3635_7265_6c79;

/// The registry is one sealed document, as the files backend writes it; secrets are
/// sealed with the state key in every table (bytea), never stored in plain text.
const V1: &str = "
CREATE TABLE registry (
    id smallint PRIMARY KEY CHECK (id = 1),
    document bytea NOT NULL,
    version bigint NOT NULL
);
CREATE TABLE refresh_tokens (
    mailbox text PRIMARY KEY,
    sealed bytea NOT NULL,
    version bigint NOT NULL,
    updated timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE token_leases (
    mailbox text PRIMARY KEY,
    holder text NOT NULL,
    fence bigint NOT NULL,
    until timestamptz NOT NULL
);
CREATE TABLE access_tokens (
    key text PRIMARY KEY,
    sealed bytea NOT NULL,
    obtained timestamptz NOT NULL,
    expires timestamptz NOT NULL,
    fence bigint NOT NULL
);
CREATE TABLE mailbox_statuses (
    mailbox text PRIMARY KEY,
    status jsonb NOT NULL,
    updated timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE route_switches (
    mailbox text PRIMARY KEY,
    switched_at bigint NOT NULL,
    reply text NOT NULL
);
";

/// What a migration run found and left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migrated {
    pub before: i32,
    pub after: i32,
}

/// The schema version of the database: 0 when it has none yet.
pub fn version(db: &Database) -> Result<i32, DatabaseError> {
    db.call("read the schema version", |client| async move {
        let exists = client
            .query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])
            .await?
            .get::<_, bool>(0);
        if !exists {
            return Ok(0);
        }
        let row = client
            .query_one(
                "SELECT coalesce(max(version), 0) FROM schema_migrations",
                &[],
            )
            .await?;
        Ok(row.get::<_, i32>(0))
    })
}

/// Applies the migrations the database lacks; refuses a schema newer than [`LATEST`].
pub fn migrate(db: &Database) -> Result<Migrated, DatabaseError> {
    let found = db.call("migrate the schema", |mut client| async move {
        let tx = client.transaction().await?;
        // No notice of `IF NOT EXISTS` skipping the table in the log.
        tx.batch_execute("SET LOCAL client_min_messages = warning")
            .await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version integer PRIMARY KEY,
                description text NOT NULL,
                applied timestamptz NOT NULL DEFAULT now())",
        )
        .await?;
        let before: i32 = tx
            .query_one(
                "SELECT coalesce(max(version), 0) FROM schema_migrations",
                &[],
            )
            .await?
            .get(0);
        if before > LATEST {
            // Nothing applied; the caller refuses below.
            tx.rollback().await?;
            return Ok(before);
        }
        for (version, description, sql) in MIGRATIONS.iter().filter(|m| m.0 > before) {
            tx.batch_execute(sql).await?;
            tx.execute(
                "INSERT INTO schema_migrations (version, description) VALUES ($1, $2)",
                &[version, description],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(before)
    })?;
    if found > LATEST {
        return Err(DatabaseError::Setup {
            server: db.server().to_owned(),
            why: format!(
                "its schema is version {found}, newer than this relay's {LATEST}: upgrade the relay"
            ),
        });
    }
    Ok(Migrated {
        before: found,
        after: LATEST,
    })
}
