//! The delivery log in PostgreSQL ([`PgDeliveryLog`]): the table `delivery_log`, one row
//! per event (its JSON line as `jsonb`, its mailbox and time as columns for the indexes),
//! shared by every relay of the fleet.
//!
//! The log's size is the sum of its events' JSON lines, as the files backend counts its
//! files; `delivery_log_usage` keeps it, updated in the transaction of each append (one
//! `INSERT` of the whole batch), so that the bound is checked without summing the table.
//! Past `log.max_bytes` the oldest events are deleted down to [`PRUNED_TO`] of it, so that
//! pruning happens once in a while, not at every append; the usage is then recounted from
//! the table, which also heals it after a manual change.

use deadpool_postgres::Object;

use super::database::{Database, DatabaseError};
use crate::state::delivery_log::{DeliveryEvent, DeliveryLogStore, LogQuery};
use crate::state::error::StoreError;

/// What a pruning leaves of `log.max_bytes`, in percent.
pub const PRUNED_TO: u64 = 90;

/// The delivery log in the state database.
#[derive(Debug, Clone)]
pub struct PgDeliveryLog {
    db: Database,
    /// `log.max_bytes`.
    max_bytes: u64,
}

impl PgDeliveryLog {
    /// The log in `db`, bounded to `max_bytes`.
    pub fn new(db: Database, max_bytes: u64) -> Self {
        Self { db, max_bytes }
    }
}

/// A batch of events as columns, ready for the database's runtime.
struct Batch {
    at_ms: Vec<i64>,
    mailboxes: Vec<String>,
    events: Vec<String>,
    bytes: Vec<i32>,
    max_bytes: i64,
    pruned_to: i64,
}

impl DeliveryLogStore for PgDeliveryLog {
    fn append(&self, events: &[DeliveryEvent]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let max_bytes = i64::try_from(self.max_bytes).unwrap_or(i64::MAX);
        let mut batch = Batch {
            at_ms: Vec::with_capacity(events.len()),
            mailboxes: Vec::with_capacity(events.len()),
            events: Vec::with_capacity(events.len()),
            bytes: Vec::with_capacity(events.len()),
            max_bytes,
            pruned_to: max_bytes / 100 * PRUNED_TO as i64,
        };
        for event in events {
            let line = serde_json::to_string(event).map_err(|e| {
                StoreError::Database(DatabaseError::Setup {
                    server: self.db.server().to_owned(),
                    why: format!("cannot write a delivery event: {e}"),
                })
            })?;
            batch
                .at_ms
                .push(i64::try_from(event.at_ms).unwrap_or(i64::MAX));
            batch.mailboxes.push(event.mailbox.to_ascii_lowercase());
            // The line and its end, as the files backend counts it.
            batch
                .bytes
                .push(i32::try_from(line.len() + 1).unwrap_or(i32::MAX));
            batch.events.push(line);
        }
        self.db
            .call("append to the delivery log", |client| batch.write(client))?;
        Ok(())
    }

    fn read(&self, query: &LogQuery) -> Result<Vec<DeliveryEvent>, StoreError> {
        let since = query
            .since_ms
            .map_or(0, |ms| i64::try_from(ms).unwrap_or(i64::MAX));
        let limit = match query.limit {
            0 => i64::MAX,
            n => i64::try_from(n).unwrap_or(i64::MAX),
        };
        let mailbox = query.mailbox.as_ref().map(|m| m.to_ascii_lowercase());
        let lines = self
            .db
            .call("read the delivery log", move |client| async move {
                // The latest `limit` events, newest first through the index; reversed below.
                let rows = match mailbox {
                    Some(mailbox) => {
                        client
                            .query(
                                "SELECT event::text FROM delivery_log
                                 WHERE mailbox = $1 AND at_ms >= $2
                                 ORDER BY at_ms DESC, seq DESC LIMIT $3",
                                &[&mailbox, &since, &limit],
                            )
                            .await?
                    }
                    None => {
                        client
                            .query(
                                "SELECT event::text FROM delivery_log WHERE at_ms >= $1
                                 ORDER BY at_ms DESC, seq DESC LIMIT $2",
                                &[&since, &limit],
                            )
                            .await?
                    }
                };
                Ok(rows
                    .iter()
                    .map(|r| r.get::<_, String>(0))
                    .collect::<Vec<_>>())
            })?;
        let mut events = Vec::with_capacity(lines.len());
        for line in lines.iter().rev() {
            match serde_json::from_str(line) {
                Ok(event) => events.push(event),
                // An event this relay cannot read (a newer relay's?) is skipped, not fatal.
                Err(e) => tracing::debug!(error = %e, "a delivery event is not readable; skipped"),
            }
        }
        Ok(events)
    }
}

impl Batch {
    /// One transaction: the events inserted with one statement, the usage added; past the
    /// bound, the oldest events deleted down to `pruned_to` and the usage recounted.
    async fn write(self, mut client: Object) -> Result<(), tokio_postgres::Error> {
        let tx = client.transaction().await?;
        tx.execute(
            "INSERT INTO delivery_log (at_ms, mailbox, event, bytes)
             SELECT a, m, e::jsonb, b FROM unnest($1::bigint[], $2::text[], $3::text[],
                $4::integer[]) AS t (a, m, e, b)",
            &[&self.at_ms, &self.mailboxes, &self.events, &self.bytes],
        )
        .await?;
        let added: i64 = self.bytes.iter().map(|b| i64::from(*b)).sum();
        let used: i64 = tx
            .query_one(
                "UPDATE delivery_log_usage SET bytes = bytes + $1 WHERE id = 1 RETURNING bytes",
                &[&added],
            )
            .await?
            .get(0);
        if used > self.max_bytes {
            // The oldest events whose bytes, summed in order, reach the excess: the running
            // sum over the primary key stops at the first row past it.
            tx.execute(
                "DELETE FROM delivery_log WHERE seq <= (
                    SELECT seq FROM (
                        SELECT seq, sum(bytes) OVER (ORDER BY seq) AS running
                        FROM delivery_log ORDER BY seq) oldest
                    WHERE running >= $1 ORDER BY seq LIMIT 1)",
                &[&(used - self.pruned_to)],
            )
            .await?;
            tx.execute(
                "UPDATE delivery_log_usage SET bytes =
                    (SELECT coalesce(sum(bytes), 0) FROM delivery_log) WHERE id = 1",
                &[],
            )
            .await?;
        }
        tx.commit().await
    }
}
