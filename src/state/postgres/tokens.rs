//! Refresh tokens in the `refresh_tokens` table: one row per mailbox (its lower-case
//! address), the token sealed with the state key for the purpose `refresh-token:{address}`
//! (as the files backend seals its token files, so a row moved to another mailbox does not
//! open), and a `version` that every write bumps.
//!
//! A rotation ([`TokenTable::replace`]) is a compare-and-swap in one transaction: the row is
//! read `FOR UPDATE`, opened and compared with the token that was redeemed, and replaced
//! only if it still is that token. So a replica that redeemed an older token never writes
//! its successor over a newer one, and a token imported meanwhile is kept.

use std::path::PathBuf;

use deadpool_postgres::Object;

use super::database::Database;
use crate::mailbox::normalize_address;
use crate::secret::{RefreshToken, constant_time_eq};
use crate::state::error::StoreError;
use crate::state::files::tokens::{purpose, storable};
use crate::state::seal::{SealError, StateKey};
use crate::state::traits::RefreshTokens;

/// Writes `$2` as the sealed token of `$1`, bumping the version.
const UPSERT: &str = "INSERT INTO refresh_tokens (mailbox, sealed, version, updated)
    VALUES ($1, $2, 1, now())
    ON CONFLICT (mailbox) DO UPDATE SET sealed = EXCLUDED.sealed,
        version = refresh_tokens.version + 1, updated = now()";

/// The sealed form of `address`'s refresh token, as a row of the table holds it (also
/// written by the fleet's lease when it rotates a token).
pub fn seal_refresh_token(
    key: &StateKey,
    address: &str,
    token: &RefreshToken,
) -> Result<Vec<u8>, StoreError> {
    key.seal(&purpose(address), token.expose().as_bytes())
        .map(String::into_bytes)
        .map_err(|why| StoreError::Seal {
            mailbox: address.to_owned(),
            why,
        })
}

/// The refresh tokens of all mailboxes, in the database, sealed with the state key.
#[derive(Debug, Clone)]
pub struct TokenTable {
    db: Database,
    key: StateKey,
}

impl TokenTable {
    /// The tokens of `db`, sealed with `key`.
    pub fn new(db: Database, key: StateKey) -> Self {
        Self { db, key }
    }

    /// The sealed token for `address`, as stored.
    fn seal(&self, address: &str, token: &RefreshToken) -> Result<Vec<u8>, StoreError> {
        seal_refresh_token(&self.key, address, token)
    }

    /// The token in a stored row of `address`.
    fn open(&self, address: &str, sealed: &[u8]) -> Result<RefreshToken, StoreError> {
        let undecryptable = |why| StoreError::Undecryptable {
            file: origin(&self.db, address),
            why,
        };
        let sealed = std::str::from_utf8(sealed)
            .map_err(|_| undecryptable(SealError::Malformed("not text")))?;
        let plain = self
            .key
            .open(&purpose(address), sealed)
            .map_err(undecryptable)?;
        let token = std::str::from_utf8(&plain).map_err(|_| StoreError::Corrupt {
            file: origin(&self.db, address),
            why: "the refresh token is not UTF-8".into(),
        })?;
        Ok(RefreshToken::new(token))
    }
}

impl RefreshTokens for TokenTable {
    fn load(&self, mailbox: &str) -> Result<Option<RefreshToken>, StoreError> {
        let address = address(mailbox)?;
        let sealed = self.db.call("read a refresh token", {
            let address = address.clone();
            |client| async move { read_sealed(&client, &address, false).await }
        })?;
        sealed.map(|s| self.open(&address, &s)).transpose()
    }

    fn replace(
        &self,
        mailbox: &str,
        redeemed: &RefreshToken,
        rotated: &RefreshToken,
    ) -> Result<bool, StoreError> {
        let address = address(mailbox)?;
        storable(mailbox, rotated)?;
        let sealed = self.seal(&address, rotated)?;
        let this = self.clone();
        let redeemed = redeemed.clone();
        // The outer error is the database's; the inner one, a stored token that did not open.
        self.db.call("rotate a refresh token", move |client| {
            compare_and_swap(client, this, address, redeemed, sealed)
        })?
    }

    fn save(&self, mailbox: &str, token: &RefreshToken) -> Result<(), StoreError> {
        let address = address(mailbox)?;
        storable(mailbox, token)?;
        let sealed = self.seal(&address, token)?;
        self.db
            .call("store a refresh token", |client| async move {
                client.execute(UPSERT, &[&address, &sealed]).await
            })
            .map(drop)
            .map_err(StoreError::from)
    }

    fn remove(&self, mailbox: &str) -> Result<(), StoreError> {
        let address = address(mailbox)?;
        self.db
            .call("remove a refresh token", |client| async move {
                client
                    .execute("DELETE FROM refresh_tokens WHERE mailbox = $1", &[&address])
                    .await
            })
            .map(drop)
            .map_err(StoreError::from)
    }
}

/// In one transaction: the row of `address` locked, opened and compared with `redeemed`,
/// and replaced by `sealed` only if it still holds it. The outer result is the database's,
/// the inner one says whether it was replaced (or why the stored token did not open).
async fn compare_and_swap(
    mut client: Object,
    table: TokenTable,
    address: String,
    redeemed: RefreshToken,
    sealed: Vec<u8>,
) -> Result<Result<bool, StoreError>, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let Some(current) = read_sealed(&tx, &address, true).await? else {
        return Ok(Ok(false));
    };
    let current = match table.open(&address, &current) {
        Ok(token) => token,
        Err(e) => return Ok(Err(e)),
    };
    if !constant_time_eq(current.expose().as_bytes(), redeemed.expose().as_bytes()) {
        return Ok(Ok(false));
    }
    tx.execute(UPSERT, &[&address, &sealed]).await?;
    tx.commit().await?;
    Ok(Ok(true))
}

/// The sealed token of `address`, its row locked until the transaction ends when `for_update`.
async fn read_sealed(
    client: &impl deadpool_postgres::GenericClient,
    address: &str,
    for_update: bool,
) -> Result<Option<Vec<u8>>, tokio_postgres::Error> {
    let query = if for_update {
        "SELECT sealed FROM refresh_tokens WHERE mailbox = $1 FOR UPDATE"
    } else {
        "SELECT sealed FROM refresh_tokens WHERE mailbox = $1"
    };
    let row = client.query_opt(query, &[&address]).await?;
    Ok(row.map(|r| r.get(0)))
}

/// The lower-case address of `mailbox`, or why it is not one.
fn address(mailbox: &str) -> Result<String, StoreError> {
    normalize_address(mailbox).map_err(|e| StoreError::InvalidMailbox {
        mailbox: mailbox
            .chars()
            .filter(|c| !c.is_control())
            .take(300)
            .collect(),
        why: e.to_string(),
    })
}

/// Where the token of `address` is, for errors.
fn origin(db: &Database, address: &str) -> PathBuf {
    PathBuf::from(format!(
        "the refresh token of {address} in the database {}",
        db.server()
    ))
}
