//! Graph route switches in the `route_switches` table: the `auto` mailboxes that Exchange
//! refused SMTP AUTH, when and with which reply, shared by every relay of the fleet (a
//! switch one relay learnt sends the others through Graph too).

use super::database::Database;
use crate::state::traits::RouteSwitches;

/// The route switches in the database.
#[derive(Debug, Clone)]
pub struct SwitchTable {
    db: Database,
}

impl SwitchTable {
    /// The switches of `db`.
    pub fn new(db: Database) -> Self {
        Self { db }
    }
}

impl RouteSwitches for SwitchTable {
    /// `None` also when the database cannot be reached: the relay then tries SMTP AUTH,
    /// and switches again if Exchange still refuses.
    fn switch(&self, address: &str) -> Option<(u64, String)> {
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

    fn switch_to_graph(&self, address: &str, at: u64, reply: &str) -> std::io::Result<()> {
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
