//! Graph route switches in the `route_switches` table: the `auto` mailboxes that Exchange
//! refused SMTP AUTH, when and with which reply, shared by every relay of the fleet (a
//! switch one relay learnt sends the others through Graph too).
//!
//! A switch is read at every SMTP login of an `auto` mailbox, on the session's async
//! thread, so the login path never waits for the database: each relay reads the whole
//! (small) table at start and again every [`REMEMBERED`] in the background, on the
//! database's runtime, and answers from memory. A switch made or forgotten by another
//! relay or the CLI reaches this one within that time. A switch this relay learns is
//! remembered at once and written in the background.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::time::Duration;

use super::database::{Database, DatabaseError};
use crate::state::traits::RouteSwitches;

/// How often a relay reads the switches again.
pub const REMEMBERED: Duration = Duration::from_secs(10);

/// The switches by mailbox: when, and Exchange's reply.
type Switches = HashMap<String, (u64, String)>;

/// The route switches in the database.
#[derive(Debug, Clone)]
pub struct SwitchTable {
    db: Database,
    /// The table as last read; `None` until the first read succeeded.
    known: Arc<RwLock<Option<Switches>>>,
}

impl SwitchTable {
    /// The switches of `db`; their background reading starts now.
    pub fn new(db: Database) -> Self {
        let known = Arc::new(RwLock::new(None));
        db.spawn(keep_reading(db.clone(), Arc::downgrade(&known)));
        Self { db, known }
    }

    fn known(&self) -> std::sync::RwLockReadGuard<'_, Option<Switches>> {
        self.known.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn change(&self, f: impl FnOnce(&mut Switches)) {
        let mut known = self.known.write().unwrap_or_else(PoisonError::into_inner);
        f(known.get_or_insert_with(HashMap::new));
    }

    /// One switch from the database itself (before the first read of the whole table).
    fn read_one(&self, address: &str) -> Option<(u64, String)> {
        if self.db.health().unreachable.is_some() {
            return None;
        }
        let address = address.to_owned();
        self.db
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
            .map(|(at, reply)| (u64::try_from(at).unwrap_or_default(), reply))
    }
}

/// Reads every switch into `known` now and every [`REMEMBERED`], until the table is
/// dropped. A failed read keeps what was read before.
async fn keep_reading(db: Database, known: Weak<RwLock<Option<Switches>>>) {
    let mut ticks = tokio::time::interval(REMEMBERED);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let read = read_all(&db).await;
        let Some(known) = known.upgrade() else {
            return;
        };
        if let Ok(switches) = read {
            *known.write().unwrap_or_else(PoisonError::into_inner) = Some(switches);
        }
    }
}

async fn read_all(db: &Database) -> Result<Switches, DatabaseError> {
    db.run("read the route switches", |client| async move {
        let rows = client
            .query(
                "SELECT mailbox, switched_at, reply FROM route_switches",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let at = u64::try_from(r.get::<_, i64>(1)).unwrap_or_default();
                (r.get::<_, String>(0), (at, r.get::<_, String>(2)))
            })
            .collect())
    })
    .await
}

impl RouteSwitches for SwitchTable {
    /// From memory once the table was read (no database round trip on a login); before
    /// that, from the database, or `None` when it is known to be unreachable (the relay
    /// then tries SMTP AUTH, and switches again if Exchange still refuses).
    fn switch(&self, address: &str) -> Option<(u64, String)> {
        if let Some(switches) = self.known().as_ref() {
            return switches.get(address).cloned();
        }
        self.read_one(address)
    }

    /// Remembered at once; written in the background (a failed write is logged, and the
    /// relay finds the switch again if Exchange still refuses after the next read).
    fn switch_to_graph(&self, address: &str, at: u64, reply: &str) -> std::io::Result<()> {
        self.change(|s| {
            s.insert(address.to_owned(), (at, reply.to_owned()));
        });
        let (address, reply) = (address.to_owned(), reply.to_owned());
        let at = i64::try_from(at).map_err(std::io::Error::other)?;
        let db = self.db.clone();
        self.db.spawn(async move {
            let written = db
                .run("store a route switch", move |client| async move {
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
                .await;
            if let Err(e) = written {
                tracing::warn!(error = %e, "cannot store the switch to Graph in the database");
            }
        });
        Ok(())
    }

    fn forget(&self, address: &str) -> std::io::Result<()> {
        self.change(|s| {
            s.remove(address);
        });
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
