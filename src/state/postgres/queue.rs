//! The outbound queue in PostgreSQL ([`PgQueue`]): the table `outbound_queue`, one row per
//! queued message, shared by every relay of the fleet, so that a message a relay accepted
//! is delivered by another when it dies.
//!
//! - A body is sealed with the state key for [`message_purpose`] (the id and a digest of
//!   the envelope), as the files backend seals it, so that `state export`/`import` moves it
//!   unchanged; the envelope is plain JSON (envelopes are not secret, bodies are), and a
//!   row whose envelope was changed no longer opens its body.
//! - `enqueue` is one transaction under a transaction-level advisory lock: the sealed sizes
//!   are summed, `queue.max_bytes` checked, the row inserted, committed; two relays never
//!   pass the bound together, and on any error nothing is kept.
//! - `due` reads the index on `(state, next_attempt_at)`, never a body.
//! - A claim is one `UPDATE … WHERE` the entry is queued, due, and not claimed or its claim
//!   ran out by the database's clock: of relays claiming together exactly one gets it.
//! - `settle` writes only while the claim is still this relay's (`claimed_by`): a relay
//!   that stalled past its claim, while another relay took the message over, writes
//!   nothing; it returns `Ok` and logs a warning (the other relay's outcome stands; after a
//!   delivery that went out this way the message may be delivered twice: at least once).
//!   `Warned` sets the flag while the claim is this relay's or nobody's and keeps the
//!   claim, so that the attempt's own settlement still finds it.

use std::path::PathBuf;

use tokio_postgres::Row;
use zeroize::Zeroizing;

use super::database::{Database, DatabaseError};
use crate::state::error::StoreError;
use crate::state::queue::{
    Entry, EntryState, Envelope, MailboxDepth, OutboundQueue, QueueError, QueueId, QueueStats,
    Settlement, message_purpose,
};
use crate::state::seal::StateKey;

mod rows;

use rows::{
    COLUMNS, NewRow, SqlParams, UNCLAIMED, USED, entry_of, int, now, settlement_name,
    settlement_sql, unsigned,
};

/// How many messages `db`'s queue holds, queued and failed, without a body or a key
/// (`state status`).
pub fn depth(db: &Database) -> Result<(u64, u64), DatabaseError> {
    db.call("count the queue", |client| async move {
        let row = client
            .query_one(
                "SELECT count(*) FILTER (WHERE state = 'queued'),
                    count(*) FILTER (WHERE state = 'failed') FROM outbound_queue",
                &[],
            )
            .await?;
        Ok((unsigned(row.get(0)), unsigned(row.get(1))))
    })
}

/// The outbound queue in the state database.
#[derive(Debug, Clone)]
pub struct PgQueue {
    db: Database,
    key: StateKey,
    /// This relay's name among the claim holders.
    holder: String,
    /// `queue.max_bytes`: the sealed bodies the queue holds together.
    max_bytes: u64,
}

impl PgQueue {
    /// The queue in `db`, bodies sealed with `key`, claimed in the name of `holder`
    /// ([`crate::state::leases::replica_id`]), holding at most `max_bytes` sealed.
    pub fn new(db: Database, key: StateKey, holder: String, max_bytes: u64) -> Self {
        Self {
            db,
            key,
            holder,
            max_bytes,
        }
    }

    /// The queue of this relay process in `db` (its claims named by
    /// [`crate::state::leases::replica_id`]).
    pub fn for_this_relay(db: Database, key: StateKey, max_bytes: u64) -> Self {
        Self::new(db, key, crate::state::leases::replica_id(), max_bytes)
    }

    /// This relay's name among the claim holders.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Adds `entry` with its body `sealed` as it was (`state import`), unclaimed, outside
    /// `queue.max_bytes`; `false` when the queue holds a message of that id already.
    pub fn restore(&self, entry: &Entry, sealed: Vec<u8>) -> Result<bool, StoreError> {
        let json = serde_json::to_string(&entry.envelope)
            .map_err(|e| self.broken(format!("cannot write the envelope of {}: {e}", entry.id)))?;
        let state = match entry.state {
            EntryState::Queued => "queued",
            EntryState::Failed => "failed",
        };
        let params = SqlParams::default()
            .with(entry.id.to_string())
            .with(entry.envelope.mailbox.to_ascii_lowercase())
            .with(json)
            .with(int(sealed.len() as u64))
            .with(sealed)
            .with(int(entry.size))
            .with(state)
            .with(int(entry.received_at))
            .with(i32::try_from(entry.attempts).unwrap_or(i32::MAX))
            .with(int(entry.next_attempt_at))
            .with(entry.last_reply.clone())
            .with(entry.warned);
        let added = self.change(
            "restore a queued message",
            "INSERT INTO outbound_queue (id, mailbox, envelope, sealed_size, body, size, state,
                received_at, attempts, next_attempt_at, last_reply, warned)
             VALUES ($1, $2, $3::text::jsonb, $4, $5, $6, $7, $8, $9, $10, $11, $12)
             ON CONFLICT (id) DO NOTHING",
            params,
        )?;
        Ok(added == 1)
    }

    /// A stored row this relay cannot read, or a body it cannot seal: named, never shown.
    fn broken(&self, why: String) -> StoreError {
        StoreError::Database(DatabaseError::Setup {
            server: self.db.server().to_owned(),
            why,
        })
    }

    fn entries_of(&self, rows: &[Row]) -> Result<Vec<Entry>, StoreError> {
        rows.iter()
            .map(|row| entry_of(row).map_err(|why| self.broken(why)))
            .collect()
    }

    /// The entries `sql` (selecting [`COLUMNS`]) returns with `params`.
    fn select(
        &self,
        what: &'static str,
        sql: String,
        params: SqlParams,
    ) -> Result<Vec<Entry>, StoreError> {
        let rows = self.db.call(what, move |client| async move {
            client.query(&sql, &params.refs()).await
        })?;
        self.entries_of(&rows)
    }

    /// Runs `sql` with `params`; the rows it changed.
    fn change(
        &self,
        what: &'static str,
        sql: &'static str,
        params: SqlParams,
    ) -> Result<u64, StoreError> {
        Ok(self.db.call(what, move |client| async move {
            client.execute(sql, &params.refs()).await
        })?)
    }
}

impl OutboundQueue for PgQueue {
    fn enqueue(&self, envelope: &Envelope, message: &[u8]) -> Result<Entry, QueueError> {
        let id = QueueId::new();
        let sealed = self
            .key
            .seal_bytes(&message_purpose(&id, envelope), message)
            .map_err(|why| self.broken(format!("cannot seal the message {id}: {why}")))?;
        let json = serde_json::to_string(envelope)
            .map_err(|e| self.broken(format!("cannot write the envelope of {id}: {e}")))?;
        let now = now();
        let entry = Entry::accepted(id, envelope, message.len() as u64, now);
        let row = NewRow {
            id: entry.id.to_string(),
            mailbox: envelope.mailbox.to_ascii_lowercase(),
            envelope: json,
            sealed,
            size: int(entry.size),
            received_at: int(now),
            max_bytes: int(self.max_bytes),
        };
        match self
            .db
            .call("queue a message", move |client| row.insert(client))
            .map_err(StoreError::from)?
        {
            None => Ok(entry),
            Some(bytes) => Err(QueueError::Full {
                bytes,
                max_bytes: self.max_bytes,
            }),
        }
    }

    fn due(&self, now: u64, limit: usize) -> Result<Vec<Entry>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM outbound_queue
             WHERE state = 'queued' AND next_attempt_at <= $1 AND {UNCLAIMED}
             ORDER BY next_attempt_at, id LIMIT $2"
        );
        let params = SqlParams::default()
            .with(int(now))
            .with(i64::try_from(limit).unwrap_or(i64::MAX));
        self.select("list the due messages", sql, params)
    }

    fn claim(&self, id: &QueueId, until: u64) -> Result<bool, StoreError> {
        let now = now();
        // The claim's length, counted on the database's clock from now.
        let secs = until.saturating_sub(now).max(1) as f64;
        let params = SqlParams::default()
            .with(id.to_string())
            .with(self.holder.clone())
            .with(secs)
            .with(int(now));
        let claimed = self.change(
            "claim a queued message",
            "UPDATE outbound_queue
             SET claimed_by = $2, claim_until = clock_timestamp() + make_interval(secs => $3)
             WHERE id = $1 AND state = 'queued' AND next_attempt_at <= $4
               AND (claim_until IS NULL OR claim_until <= clock_timestamp())",
            params,
        )?;
        Ok(claimed == 1)
    }

    fn renew(&self, id: &QueueId, until: u64) -> Result<bool, StoreError> {
        let secs = until.saturating_sub(now()).max(1) as f64;
        let params = SqlParams::default()
            .with(id.to_string())
            .with(self.holder.clone())
            .with(secs);
        let renewed = self.change(
            "renew a claim",
            "UPDATE outbound_queue
             SET claim_until = clock_timestamp() + make_interval(secs => $3)
             WHERE id = $1 AND claimed_by = $2 AND claim_until > clock_timestamp()",
            params,
        )?;
        Ok(renewed == 1)
    }

    fn message(&self, entry: &Entry) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        let id = &entry.id;
        let key = id.to_string();
        let sealed = self
            .db
            .call("read a queued message", |client| async move {
                let row = client
                    .query_opt("SELECT body FROM outbound_queue WHERE id = $1", &[&key])
                    .await?;
                Ok(row.map(|r| r.get::<_, Vec<u8>>(0)))
            })?
            .ok_or_else(|| StoreError::Io {
                file: PathBuf::from(format!(
                    "the queued message {id} in the database {}",
                    self.db.server()
                )),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "not in the queue"),
            })?;
        self.key
            .open_bytes(&message_purpose(id, &entry.envelope), &sealed)
            .map_err(|why| {
                self.broken(format!(
                    "the queued message {id} cannot be opened for its envelope (changed since \
                     its acceptance, or another key): {why}"
                ))
            })
    }

    fn settle(&self, id: &QueueId, settlement: &Settlement) -> Result<(), StoreError> {
        let (sql, params) = settlement_sql(settlement, id, &self.holder);
        let changed = self.change("settle a queued message", sql, params)?;
        if changed == 0 {
            tracing::warn!(
                queue_id = %id,
                outcome = settlement_name(settlement),
                "this relay no longer holds the claim on the queued message (it ran out and \
                 another relay took it over, or the message was removed): the outcome is not \
                 recorded"
            );
        }
        Ok(())
    }

    fn entries(&self) -> Result<Vec<Entry>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM outbound_queue ORDER BY received_at, id");
        self.select("list the queue", sql, SqlParams::default())
    }

    fn entry(&self, id: &QueueId) -> Result<Option<Entry>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM outbound_queue WHERE id = $1");
        let params = SqlParams::default().with(id.to_string());
        Ok(self.select("read a queue entry", sql, params)?.pop())
    }

    fn retry(&self, id: Option<&QueueId>) -> Result<usize, StoreError> {
        let now = int(now());
        let changed = match id {
            Some(id) => self.change(
                "retry a queued message",
                "UPDATE outbound_queue SET state = 'queued', next_attempt_at = $1 WHERE id = $2",
                SqlParams::default().with(now).with(id.to_string()),
            )?,
            None => self.change(
                "retry the queue",
                "UPDATE outbound_queue SET state = 'queued', next_attempt_at = $1",
                SqlParams::default().with(now),
            )?,
        };
        Ok(usize::try_from(changed).unwrap_or(usize::MAX))
    }

    fn remove(&self, id: &QueueId) -> Result<bool, StoreError> {
        let removed = self.change(
            "remove a queued message",
            "DELETE FROM outbound_queue WHERE id = $1",
            SqlParams::default().with(id.to_string()),
        )?;
        Ok(removed == 1)
    }

    fn stats(&self) -> Result<QueueStats, StoreError> {
        let (rows, bytes) = self.db.call("count the queue", |client| async move {
            let rows = client
                .query(
                    "SELECT mailbox, count(*) FILTER (WHERE state = 'queued'),
                        count(*) FILTER (WHERE state = 'failed'),
                        min(received_at) FILTER (WHERE state = 'queued')
                     FROM outbound_queue GROUP BY mailbox ORDER BY mailbox",
                    &[],
                )
                .await?;
            let bytes: i64 = client.query_one(USED, &[]).await?.get(0);
            Ok((rows, bytes))
        })?;
        let mailboxes = rows
            .iter()
            .map(|row| MailboxDepth {
                mailbox: row.get(0),
                queued: unsigned(row.get(1)),
                failed: unsigned(row.get(2)),
                oldest_received_at: row.get::<_, Option<i64>>(3).map(unsigned),
            })
            .collect();
        Ok(QueueStats {
            mailboxes,
            bytes: unsigned(bytes),
        })
    }
}
