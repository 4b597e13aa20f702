//! The fleet's token leases in PostgreSQL ([`PgLeases`]): the tables `token_leases`
//! (mailbox, holder, fence, until), `access_tokens` (key, sealed, obtained, expires, fence)
//! and `refresh_tokens` (mailbox, sealed, version).
//!
//! - A lease is taken with one `INSERT … ON CONFLICT DO UPDATE … WHERE until <= now()`:
//!   free or expired, it becomes this relay's with the fence incremented; held, nothing
//!   changes. Its end is the database's clock (`now()`), so the relays' clocks do not
//!   matter.
//! - Finishing is one transaction: the lease row, locked, must still be this relay's with
//!   the same fence (a relay that stalled while another took the lease writes nothing);
//!   the rotated refresh token replaces the stored one only at the version it was read at;
//!   the access token is stored unless a newer one (a higher fence) is; the lease is freed.
//! - Tokens are sealed with the state key, each for its own purpose and name
//!   (`refresh-token:{mailbox}`, as in the files backend, and `access-token:{key}`), so a
//!   row copied to another name does not open.

use std::time::{Duration, SystemTime};

use super::database::{Database, DatabaseError};
pub use super::tokens::seal_refresh_token;
use crate::secret::{AccessToken, RefreshToken};
use crate::state::error::StoreError;
use crate::state::files::tokens::purpose;
use crate::state::leases::{Finished, Lease, Outcome, Redeemable, SharedToken, TokenLeases};
use crate::state::seal::StateKey;

/// The fleet's token leases and shared access tokens in the state database.
#[derive(Debug, Clone)]
pub struct PgLeases {
    db: Database,
    key: StateKey,
    /// This relay's name among the lease holders.
    holder: String,
}

impl PgLeases {
    /// The leases in `db`, tokens sealed with `key`, taken in the name of `holder`
    /// ([`crate::state::leases::replica_id`]).
    pub fn new(db: Database, key: StateKey, holder: String) -> Self {
        Self { db, key, holder }
    }

    /// The leases of this relay process in `db`: its holder name is new
    /// ([`crate::state::leases::replica_id`]) and logged.
    pub fn for_this_relay(db: Database, key: StateKey) -> Self {
        let holder = crate::state::leases::replica_id();
        tracing::debug!(replica = %holder, "this relay's name among the fleet's refresh lease holders");
        Self::new(db, key, holder)
    }

    /// This relay's name among the lease holders.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// A stored row the state key does not open, named without its content.
    fn unreadable(&self, what: String) -> StoreError {
        StoreError::Database(DatabaseError::Setup {
            server: self.db.server().to_owned(),
            why: what,
        })
    }
}

/// `mailbox`'s refresh token from its sealed form; why not, without the content.
pub fn open_refresh_token(
    key: &StateKey,
    mailbox: &str,
    sealed: &[u8],
) -> Result<RefreshToken, String> {
    open(key, &purpose(mailbox), sealed).map(RefreshToken::new)
}

fn access_purpose(key: &str) -> String {
    format!("access-token:{key}")
}

/// Opens a sealed text.
fn open(key: &StateKey, purpose: &str, sealed: &[u8]) -> Result<String, String> {
    let sealed = std::str::from_utf8(sealed).map_err(|_| "not sealed text".to_owned())?;
    let plain = key.open(purpose, sealed).map_err(|why| why.to_string())?;
    std::str::from_utf8(&plain)
        .map(str::to_owned)
        .map_err(|_| "not text".to_owned())
}

impl TokenLeases for PgLeases {
    fn shared(&self, key: &str) -> Result<Option<SharedToken>, StoreError> {
        let k = key.to_owned();
        let row = self
            .db
            .call("read a shared access token", |client| async move {
                client
                    .query_opt(
                        "SELECT sealed, obtained, expires, fence FROM access_tokens WHERE key = $1",
                        &[&k],
                    )
                    .await
            })?;
        let Some(row) = row else {
            return Ok(None);
        };
        let sealed: Vec<u8> = row.get(0);
        let token = open(&self.key, &access_purpose(key), &sealed).map_err(|why| {
            self.unreadable(format!(
                "the shared access token {key} cannot be opened: {why}"
            ))
        })?;
        Ok(Some(SharedToken {
            token: AccessToken::new(token),
            obtained: row.get(1),
            expires: row.get(2),
            fence: row.get(3),
        }))
    }

    fn take(&self, mailbox: &str, ttl: Duration) -> Result<Option<Lease>, StoreError> {
        let (m, holder, secs) = (mailbox.to_owned(), self.holder.clone(), ttl.as_secs_f64());
        let fence = self
            .db
            .call("take a token lease", move |client| async move {
                let row = client
                    .query_opt(
                        "INSERT INTO token_leases (mailbox, holder, fence, until)
                     VALUES ($1, $2, 1, now() + make_interval(secs => $3))
                     ON CONFLICT (mailbox) DO UPDATE
                        SET holder = EXCLUDED.holder, fence = token_leases.fence + 1,
                            until = EXCLUDED.until
                        WHERE token_leases.until <= now()
                     RETURNING fence",
                        &[&m, &holder, &secs],
                    )
                    .await?;
                Ok(row.map(|r| r.get::<_, i64>(0)))
            })?;
        Ok(fence.map(|fence| Lease {
            mailbox: mailbox.to_owned(),
            fence,
        }))
    }

    fn refresh_token(&self, lease: &Lease) -> Result<Option<Redeemable>, StoreError> {
        let m = lease.mailbox.clone();
        let row = self.db.call("read a refresh token", |client| async move {
            client
                .query_opt(
                    "SELECT sealed, version FROM refresh_tokens WHERE mailbox = $1",
                    &[&m],
                )
                .await
        })?;
        let Some(row) = row else {
            return Ok(None);
        };
        let sealed: Vec<u8> = row.get(0);
        let token = open_refresh_token(&self.key, &lease.mailbox, &sealed).map_err(|why| {
            self.unreadable(format!(
                "the refresh token of {} cannot be opened: {why}",
                lease.mailbox
            ))
        })?;
        Ok(Some(Redeemable {
            token,
            version: row.get(1),
        }))
    }

    fn finish(&self, lease: &Lease, outcome: Outcome<'_>) -> Result<Finished, StoreError> {
        let rotation = match outcome.rotation {
            Some((redeemed, rotated)) => Some((
                redeemed.version,
                seal_refresh_token(&self.key, &lease.mailbox, rotated)?,
            )),
            None => None,
        };
        let shared = outcome.token;
        let write = Finish {
            mailbox: lease.mailbox.clone(),
            holder: self.holder.clone(),
            fence: lease.fence,
            rotation,
            key: outcome.key.to_owned(),
            sealed: self
                .key
                .seal(
                    &access_purpose(outcome.key),
                    shared.token.expose().as_bytes(),
                )
                .map(String::into_bytes)
                .map_err(|why| StoreError::Seal {
                    mailbox: lease.mailbox.clone(),
                    why,
                })?,
            obtained: shared.obtained,
            expires: shared.expires,
        };
        Ok(self
            .db
            .call("store a refresh's outcome", |client| write.run(client))?)
    }

    fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        let (m, holder, fence) = (lease.mailbox.clone(), self.holder.clone(), lease.fence);
        self.db
            .call("release a token lease", move |client| async move {
                client
                    .execute(
                        "UPDATE token_leases SET until = '-infinity'
                     WHERE mailbox = $1 AND holder = $2 AND fence = $3",
                        &[&m, &holder, &fence],
                    )
                    .await
                    .map(drop)
            })?;
        Ok(())
    }
}

/// The writes of [`TokenLeases::finish`], sealed, ready for the database's runtime.
struct Finish {
    mailbox: String,
    holder: String,
    fence: i64,
    /// The version the redeemed refresh token was read at, and the rotated one sealed.
    rotation: Option<(i64, Vec<u8>)>,
    key: String,
    sealed: Vec<u8>,
    obtained: SystemTime,
    expires: SystemTime,
}

impl Finish {
    /// One transaction: fence check (the lease row locked), refresh token swap at its
    /// version, shared access token, release.
    async fn run(
        self,
        mut client: deadpool_postgres::Object,
    ) -> Result<Finished, tokio_postgres::Error> {
        let tx = client.transaction().await?;
        let ours = tx
            .query_opt(
                "SELECT 1 FROM token_leases
                 WHERE mailbox = $1 AND holder = $2 AND fence = $3 FOR UPDATE",
                &[&self.mailbox, &self.holder, &self.fence],
            )
            .await?;
        if ours.is_none() {
            tx.rollback().await?;
            return Ok(Finished::LeaseLost);
        }
        let mut rotated = false;
        if let Some((version, sealed)) = &self.rotation {
            rotated = tx
                .execute(
                    "UPDATE refresh_tokens SET sealed = $2, version = version + 1, updated = now()
                     WHERE mailbox = $1 AND version = $3",
                    &[&self.mailbox, sealed, version],
                )
                .await?
                == 1;
        }
        tx.execute(
            "INSERT INTO access_tokens (key, sealed, obtained, expires, fence)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (key) DO UPDATE
                SET sealed = EXCLUDED.sealed, obtained = EXCLUDED.obtained,
                    expires = EXCLUDED.expires, fence = EXCLUDED.fence
                WHERE access_tokens.fence <= EXCLUDED.fence",
            &[
                &self.key,
                &self.sealed,
                &self.obtained,
                &self.expires,
                &self.fence,
            ],
        )
        .await?;
        tx.execute(
            "UPDATE token_leases SET until = '-infinity' WHERE mailbox = $1 AND fence = $2",
            &[&self.mailbox, &self.fence],
        )
        .await?;
        tx.commit().await?;
        Ok(Finished::Stored { rotated })
    }
}
