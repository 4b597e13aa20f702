//! Mailbox token statuses in the `mailbox_statuses` table: one row per mailbox, the status
//! as JSON (dates, states, Entra's error code and description; no secret), so that
//! `mailbox list` on any host shows what the relays found.

use super::database::Database;
use crate::state::status::MailboxStatus;
use crate::state::traits::MailboxStatuses;

/// The statuses in the database.
#[derive(Debug, Clone)]
pub struct StatusTable {
    db: Database,
}

impl StatusTable {
    /// The statuses of `db`.
    pub fn new(db: Database) -> Self {
        Self { db }
    }
}

impl MailboxStatuses for StatusTable {
    fn write(&self, address: &str, status: &MailboxStatus) -> std::io::Result<()> {
        let json = serde_json::to_string(status).map_err(std::io::Error::other)?;
        let address = address.to_owned();
        self.db
            .call("store a mailbox status", |client| async move {
                client
                    .execute(
                        "INSERT INTO mailbox_statuses (mailbox, status, updated)
                         VALUES ($1, $2::text::jsonb, now())
                         ON CONFLICT (mailbox) DO UPDATE
                         SET status = EXCLUDED.status, updated = now()",
                        &[&address, &json],
                    )
                    .await
            })
            .map(drop)
            .map_err(std::io::Error::other)
    }

    /// `None` also when the database cannot be reached (a status is informative).
    fn read(&self, address: &str) -> Option<MailboxStatus> {
        let address = address.to_owned();
        let json = self
            .db
            .call("read a mailbox status", |client| async move {
                let row = client
                    .query_opt(
                        "SELECT status::text FROM mailbox_statuses WHERE mailbox = $1",
                        &[&address],
                    )
                    .await?;
                Ok(row.map(|r| r.get::<_, String>(0)))
            })
            .ok()??;
        serde_json::from_str(&json).ok()
    }
}
