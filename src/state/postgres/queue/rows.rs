//! The rows of `outbound_queue` ([`super::PgQueue`]): an entry read from its columns, a
//! message inserted under the queue's bound, the statement of each settlement, and the
//! owned parameters these statements run with on the database's runtime.

use deadpool_postgres::Object;
use tokio_postgres::Row;

use crate::state::queue::{Entry, EntryState, Envelope, QueueId, Settlement};

/// The advisory lock key that serialises enqueues against `queue.max_bytes` ("m365queu").
const QUEUE_LOCK: i64 = 0x6d33_3635_7175_6575;

/// An entry's columns, in the order [`entry_of`] reads them (never the body).
pub const COLUMNS: &str = "id, envelope::text, size, state, received_at, attempts, \
    next_attempt_at, last_reply, warned";

/// The sealed bytes the queue holds, counted against `queue.max_bytes`.
pub const USED: &str = "SELECT coalesce(sum(sealed_size), 0)::bigint FROM outbound_queue";

/// Whether a claim has run out, by the database's clock.
pub const UNCLAIMED: &str = "(claim_until IS NULL OR claim_until <= clock_timestamp())";

/// Owned parameters for a statement run on the database's runtime.
#[derive(Default)]
pub struct SqlParams(Vec<Box<dyn tokio_postgres::types::ToSql + Send + Sync>>);

impl SqlParams {
    pub fn with(
        mut self,
        value: impl tokio_postgres::types::ToSql + Send + Sync + 'static,
    ) -> Self {
        self.0.push(Box::new(value));
        self
    }

    pub fn refs(&self) -> Vec<&(dyn tokio_postgres::types::ToSql + Sync)> {
        self.0
            .iter()
            .map(|p| p.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect()
    }
}

/// A message to insert, sealed, ready for the database's runtime.
pub struct NewRow {
    pub id: String,
    pub mailbox: String,
    pub envelope: String,
    pub sealed: Vec<u8>,
    pub size: i64,
    pub received_at: i64,
    pub max_bytes: i64,
}

impl NewRow {
    /// One transaction under [`QUEUE_LOCK`]: the bound checked, the row inserted. `Some`
    /// of the bytes used when the message does not fit (nothing written).
    pub async fn insert(self, mut client: Object) -> Result<Option<u64>, tokio_postgres::Error> {
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&QUEUE_LOCK])
            .await?;
        let used: i64 = tx.query_one(USED, &[]).await?.get(0);
        let sealed_size = int(self.sealed.len() as u64);
        if used.saturating_add(sealed_size) > self.max_bytes {
            tx.rollback().await?;
            return Ok(Some(unsigned(used)));
        }
        tx.execute(
            "INSERT INTO outbound_queue (id, mailbox, envelope, body, size, sealed_size, state,
                received_at, attempts, next_attempt_at)
             VALUES ($1, $2, $3::text::jsonb, $4, $5, $6, 'queued', $7, 0, $7)",
            &[
                &self.id,
                &self.mailbox,
                &self.envelope,
                &self.sealed,
                &self.size,
                &sealed_size,
                &self.received_at,
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(None)
    }
}

/// The statement of `settlement` on `id`, written only while `holder`'s claim stands.
pub fn settlement_sql(
    settlement: &Settlement,
    id: &QueueId,
    holder: &str,
) -> (&'static str, SqlParams) {
    let params = SqlParams::default()
        .with(id.to_string())
        .with(holder.to_owned());
    match settlement {
        Settlement::Delivered => (
            "DELETE FROM outbound_queue WHERE id = $1 AND claimed_by = $2",
            params,
        ),
        Settlement::Deferred {
            next_attempt_at,
            reply,
        } => (
            "UPDATE outbound_queue SET attempts = attempts + 1, next_attempt_at = $3,
                last_reply = $4, claimed_by = NULL, claim_until = NULL
             WHERE id = $1 AND claimed_by = $2",
            params.with(int(*next_attempt_at)).with(reply.clone()),
        ),
        Settlement::Failed { reply } => (
            "UPDATE outbound_queue SET state = 'failed', attempts = attempts + 1,
                last_reply = $3, claimed_by = NULL, claim_until = NULL
             WHERE id = $1 AND claimed_by = $2",
            params.with(reply.clone()),
        ),
        Settlement::Warned => (
            "UPDATE outbound_queue SET warned = true
             WHERE id = $1 AND (claimed_by = $2 OR claimed_by IS NULL)",
            params,
        ),
        Settlement::Released => (
            "UPDATE outbound_queue SET claimed_by = NULL, claim_until = NULL
             WHERE id = $1 AND claimed_by = $2",
            params,
        ),
    }
}

pub fn settlement_name(settlement: &Settlement) -> &'static str {
    match settlement {
        Settlement::Delivered => "delivered",
        Settlement::Deferred { .. } => "deferred",
        Settlement::Failed { .. } => "failed",
        Settlement::Warned => "warned",
        Settlement::Released => "released",
    }
}

/// An entry from a row of [`COLUMNS`]; why not, without its content.
pub fn entry_of(row: &Row) -> Result<Entry, String> {
    let id: String = row.get(0);
    let id = QueueId::parse(&id).ok_or_else(|| "a queue row's id is not a queue id".to_owned())?;
    let envelope: Envelope = serde_json::from_str(row.get::<_, &str>(1))
        .map_err(|e| format!("the envelope of the queued message {id} is not readable: {e}"))?;
    let state = match row.get::<_, &str>(3) {
        "failed" => EntryState::Failed,
        _ => EntryState::Queued,
    };
    Ok(Entry {
        id,
        envelope,
        size: unsigned(row.get(2)),
        state,
        received_at: unsigned(row.get(4)),
        attempts: u32::try_from(row.get::<_, i32>(5)).unwrap_or(0),
        next_attempt_at: unsigned(row.get(6)),
        last_reply: row.get(7),
        warned: row.get(8),
    })
}

/// A count or time as the database's `bigint`.
pub fn int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A database `bigint` as a count or time (never negative).
pub fn unsigned(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// This relay's clock, Unix seconds.
pub fn now() -> u64 {
    crate::datetime::unix(std::time::SystemTime::now())
}
