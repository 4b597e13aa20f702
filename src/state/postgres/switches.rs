//! Graph route switches in the `route_switches` table: the `auto` mailboxes that Exchange
//! refused SMTP AUTH, when and with which reply, shared by every relay of the fleet (a
//! switch one relay learnt sends the others through Graph too).
//!
//! A switch is read at every SMTP login of an `auto` mailbox, so each relay keeps what it
//! read for [`REMEMBERED`]: no database round trip per login. A switch made or forgotten
//! by another relay or the CLI reaches this one within that time.

use std::time::{Duration, Instant};

use dashmap::DashMap;

use super::database::Database;
use crate::state::traits::RouteSwitches;

/// How long a relay keeps a switch (or its absence) as read.
pub const REMEMBERED: Duration = Duration::from_secs(10);

/// A switch as read, and when.
type Remembered = (Instant, Option<(u64, String)>);

/// The route switches in the database.
#[derive(Debug, Clone)]
pub struct SwitchTable {
    db: Database,
    read: std::sync::Arc<DashMap<String, Remembered>>,
}

impl SwitchTable {
    /// The switches of `db`.
    pub fn new(db: Database) -> Self {
        Self {
            db,
            read: Default::default(),
        }
    }

    /// The switch of `address` as read less than [`REMEMBERED`] ago.
    fn remembered(&self, address: &str) -> Option<Option<(u64, String)>> {
        let entry = self.read.get(address)?;
        (entry.0.elapsed() < REMEMBERED).then(|| entry.1.clone())
    }

    fn remember(&self, address: &str, switch: Option<(u64, String)>) {
        // Bounded: one entry per registered mailbox that logged in; expired ones go first.
        if self.read.len() >= 100_000 {
            self.read.retain(|_, (at, _)| at.elapsed() < REMEMBERED);
        }
        self.read
            .insert(address.to_owned(), (Instant::now(), switch));
    }
}

impl RouteSwitches for SwitchTable {
    /// `None` also when the database cannot be reached: the relay then tries SMTP AUTH,
    /// and switches again if Exchange still refuses. Read at each SMTP login, so while the
    /// database is known to be unreachable it is not asked (no login waits for its timeout);
    /// the registry's listener finds out when it is back.
    fn switch(&self, address: &str) -> Option<(u64, String)> {
        if let Some(remembered) = self.remembered(address) {
            return remembered;
        }
        if self.db.health().unreachable.is_some() {
            return None;
        }
        let key = address.to_owned();
        let address = address.to_owned();
        let read = self
            .db
            .call("read a route switch", |client| async move {
                let row = client
                    .query_opt(
                        "SELECT switched_at, reply FROM route_switches WHERE mailbox = $1",
                        &[&address],
                    )
                    .await?;
                Ok(row.map(|r| (r.get::<_, i64>(0), r.get::<_, String>(1))))
            })
            .ok()?
            .map(|(at, reply)| (u64::try_from(at).unwrap_or_default(), reply));
        self.remember(&key, read.clone());
        read
    }

    fn switch_to_graph(&self, address: &str, at: u64, reply: &str) -> std::io::Result<()> {
        self.remember(address, Some((at, reply.to_owned())));
        let (address, reply) = (address.to_owned(), reply.to_owned());
        let at = i64::try_from(at).map_err(std::io::Error::other)?;
        self.db
            .call("store a route switch", move |client| async move {
                client
                    .execute(
                        "INSERT INTO route_switches (mailbox, switched_at, reply)
                         VALUES ($1, $2, $3)
                         ON CONFLICT (mailbox) DO UPDATE
                         SET switched_at = EXCLUDED.switched_at, reply = EXCLUDED.reply",
                        &[&address, &at, &reply],
                    )
                    .await
            })
            .map(drop)
            .map_err(std::io::Error::other)
    }

    fn forget(&self, address: &str) -> std::io::Result<()> {
        self.read.remove(address);
        let address = address.to_owned();
        self.db
            .call("forget a route switch", |client| async move {
                client
                    .execute("DELETE FROM route_switches WHERE mailbox = $1", &[&address])
                    .await
            })
            .map(drop)
            .map_err(std::io::Error::other)
    }
}
