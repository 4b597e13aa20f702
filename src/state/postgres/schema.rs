//! The database's schema, versioned: [`MIGRATIONS`] in order, each applied once, all of a
//! run in one transaction under an advisory lock, so that relays starting together and
//! `m365-relay state migrate` never apply one twice or half. A database whose schema is
//! newer than this relay knows is refused: an older relay never writes into it.

use super::database::{Database, DatabaseError};

/// The migrations: version, what it adds, and its SQL. Append only; never edit one that
/// shipped.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "the state tables", V1),
    (2, "fleet-wide sending counters and failed-login counts", V2),
    (3, "the outbound queue and the delivery log", V3),
];

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

/// Fleet-wide counts (`state::counters`). Times are the database's clock in Unix
/// seconds, so that relays with skewed clocks agree. `counters`: per mailbox and
/// one-second slot, the messages and recipients reserved or sent (a day is kept);
/// `sending_pauses`: Microsoft's `Retry-After`; `login_failures`: per key (`s:` source,
/// `p:` source and mailbox digest, `m:` mailbox digest), a fixed window's failures and
/// the source's block. The functions take a per-mailbox advisory lock where they check a
/// limit before counting, so that relays in parallel never pass it together; each is one
/// round trip.
const V2: &str = "
CREATE TABLE counters (
    mailbox text NOT NULL,
    slot bigint NOT NULL,
    messages integer NOT NULL DEFAULT 0,
    recipients integer NOT NULL DEFAULT 0,
    PRIMARY KEY (mailbox, slot)
);
CREATE INDEX counters_slot ON counters (slot);
CREATE TABLE sending_pauses (
    mailbox text PRIMARY KEY,
    until bigint NOT NULL
);
CREATE TABLE login_failures (
    key text PRIMARY KEY,
    started bigint NOT NULL,
    failures integer NOT NULL,
    blocked_until bigint
);
CREATE INDEX login_failures_started ON login_failures (started);
CREATE INDEX login_failures_blocked ON login_failures (blocked_until)
    WHERE blocked_until IS NOT NULL;

CREATE FUNCTION m365_epoch() RETURNS bigint LANGUAGE sql VOLATILE
    AS $$ SELECT floor(extract(epoch FROM clock_timestamp()))::bigint $$;

CREATE FUNCTION m365_reserve_message(p_mailbox text, p_limit integer,
    OUT verdict smallint, OUT val bigint) LANGUAGE plpgsql AS $$
DECLARE t bigint; paused bigint; sent bigint; oldest bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(1832346728, hashtext(p_mailbox));
    t := m365_epoch();
    DELETE FROM counters WHERE mailbox = p_mailbox AND slot <= t - 86400;
    SELECT until INTO paused FROM sending_pauses WHERE mailbox = p_mailbox;
    IF paused > t THEN
        verdict := 1; val := paused - t; RETURN;
    END IF;
    SELECT coalesce(sum(messages), 0), min(slot) FILTER (WHERE messages > 0)
        INTO sent, oldest FROM counters WHERE mailbox = p_mailbox AND slot > t - 60;
    IF sent >= p_limit THEN
        verdict := 2; val := greatest(coalesce(oldest + 60 - t, 60), 1); RETURN;
    END IF;
    INSERT INTO counters (mailbox, slot, messages) VALUES (p_mailbox, t, 1)
        ON CONFLICT (mailbox, slot) DO UPDATE SET messages = counters.messages + 1;
    verdict := 0; val := t;
END $$;

CREATE FUNCTION m365_reserve_recipient(p_mailbox text, p_slot bigint, p_limit integer,
    OUT verdict smallint, OUT val bigint) LANGUAGE plpgsql AS $$
DECLARE t bigint; sent bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(1832346728, hashtext(p_mailbox));
    t := m365_epoch();
    SELECT coalesce(sum(recipients), 0) INTO sent
        FROM counters WHERE mailbox = p_mailbox AND slot > t - 86400;
    IF sent + 1 > p_limit THEN
        verdict := 2; val := 0; RETURN;
    END IF;
    INSERT INTO counters (mailbox, slot, recipients) VALUES (p_mailbox, p_slot, 1)
        ON CONFLICT (mailbox, slot) DO UPDATE SET recipients = counters.recipients + 1;
    verdict := 0; val := p_slot;
END $$;

CREATE FUNCTION m365_commit_message(p_mailbox text, p_slot bigint, p_reserved integer,
    p_sent integer) RETURNS void LANGUAGE plpgsql AS $$
DECLARE t bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(1832346728, hashtext(p_mailbox));
    t := m365_epoch();
    UPDATE counters SET messages = greatest(messages - 1, 0),
        recipients = greatest(recipients - p_reserved, 0)
        WHERE mailbox = p_mailbox AND slot = p_slot;
    INSERT INTO counters (mailbox, slot, messages, recipients) VALUES (p_mailbox, t, 1, p_sent)
        ON CONFLICT (mailbox, slot) DO UPDATE SET messages = counters.messages + 1,
            recipients = counters.recipients + p_sent;
END $$;

CREATE FUNCTION m365_count_failure(p_key text, t bigint, p_window bigint) RETURNS integer
    LANGUAGE sql AS $$
    INSERT INTO login_failures AS f (key, started, failures) VALUES (p_key, t, 1)
        ON CONFLICT (key) DO UPDATE SET
            failures = CASE WHEN f.started <= t - p_window THEN 1 ELSE f.failures + 1 END,
            started = CASE WHEN f.started <= t - p_window THEN t ELSE f.started END
        RETURNING failures
$$;

CREATE FUNCTION m365_login_failed(p_source text, p_mailbox text, p_window bigint,
    p_before_block integer, p_block_for bigint, OUT source_failures integer,
    OUT pair_failures integer, OUT mailbox_failures integer, OUT blocked_secs bigint)
    LANGUAGE plpgsql AS $$
DECLARE t bigint := m365_epoch(); until bigint;
BEGIN
    pair_failures := m365_count_failure('p:' || p_source || ' ' || p_mailbox, t, p_window);
    INSERT INTO login_failures AS f (key, started, failures) VALUES ('s:' || p_source, t, 1)
        ON CONFLICT (key) DO UPDATE SET
            failures = CASE WHEN f.started <= t - p_window OR f.blocked_until <= t
                THEN 1 ELSE f.failures + 1 END,
            started = CASE WHEN f.started <= t - p_window OR f.blocked_until <= t
                THEN t ELSE f.started END,
            blocked_until = CASE WHEN f.blocked_until <= t THEN NULL ELSE f.blocked_until END
        RETURNING failures, blocked_until INTO source_failures, until;
    IF until IS NULL AND source_failures >= p_before_block THEN
        until := t + p_block_for;
        UPDATE login_failures SET blocked_until = until WHERE key = 's:' || p_source;
    END IF;
    mailbox_failures := m365_count_failure('m:' || p_mailbox, t, p_window);
    blocked_secs := until - t;
END $$;

CREATE FUNCTION m365_login_succeeded(p_source text, p_mailbox text) RETURNS void
    LANGUAGE plpgsql AS $$
DECLARE forgiven integer;
BEGIN
    DELETE FROM login_failures WHERE key = 'p:' || p_source || ' ' || p_mailbox
        RETURNING failures INTO forgiven;
    IF forgiven IS NOT NULL THEN
        UPDATE login_failures SET failures = greatest(failures - forgiven, 0)
            WHERE key = 's:' || p_source;
    END IF;
END $$;
";

/// The outbound queue and the delivery log (`queue.rs`, `delivery_log.rs`). A queued
/// message's body is sealed with the state key (`queue-message:{id}:{envelope digest}`), its envelope plain
/// JSON; `sealed_size` is what `queue.max_bytes` counts. `next_attempt_at` and
/// `received_at` are Unix seconds of the relay that wrote them; a claim's end is the
/// database's clock, so that relays with skewed clocks agree on when it runs out.
/// `outbound_queue_due` serves the workers' scan of due entries without reading a body.
/// The delivery log keeps its running size in `delivery_log_usage`, updated in the
/// transaction of each append, so that bounding it never sums the table.
const V3: &str = "
CREATE TABLE outbound_queue (
    id text PRIMARY KEY,
    mailbox text NOT NULL,
    envelope jsonb NOT NULL,
    body bytea NOT NULL,
    size bigint NOT NULL,
    sealed_size bigint NOT NULL,
    state text NOT NULL CHECK (state IN ('queued', 'failed')),
    received_at bigint NOT NULL,
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at bigint NOT NULL,
    last_reply text,
    warned boolean NOT NULL DEFAULT false,
    claimed_by text,
    claim_until timestamptz
);
CREATE INDEX outbound_queue_due ON outbound_queue (state, next_attempt_at);

CREATE TABLE delivery_log (
    seq bigserial PRIMARY KEY,
    at_ms bigint NOT NULL,
    mailbox text NOT NULL,
    event jsonb NOT NULL,
    bytes integer NOT NULL
);
CREATE INDEX delivery_log_at ON delivery_log (at_ms, seq);
CREATE INDEX delivery_log_mailbox_at ON delivery_log (mailbox, at_ms, seq);
CREATE TABLE delivery_log_usage (
    id smallint PRIMARY KEY CHECK (id = 1),
    bytes bigint NOT NULL
);
INSERT INTO delivery_log_usage (id, bytes) VALUES (1, 0);
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
