//! What the `state` commands do with the database as a whole: how much it holds (`state
//! status`) and a whole state written into it in one transaction (`state import`).

use std::path::PathBuf;

use deadpool_postgres::Object;
use zeroize::Zeroizing;

use super::database::{Database, DatabaseError};
use super::registry::{REGISTRY_LOCK, SAVE};
use crate::state::error::StoreError;
use crate::state::files::registry::seal_registry;
use crate::state::files::tokens::{purpose, storable};
use crate::state::seal::StateKey;
use crate::state::snapshot::{Snapshot, TransferError};

/// How many mailboxes the stored registry lists, without opening it (0 without one).
const MAILBOXES: &str = "SELECT coalesce((SELECT jsonb_array_length(
        convert_from(document, 'UTF8')::jsonb -> 'mailboxes') FROM registry WHERE id = 1), 0)";

const TOKENS: &str = "SELECT count(*) FROM refresh_tokens";

/// How much the database holds, without a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holdings {
    pub mailboxes: i64,
    pub tokens: i64,
}

/// How many mailboxes and refresh tokens the database holds.
pub fn holdings(db: &Database) -> Result<Holdings, DatabaseError> {
    db.call("count the mailboxes and tokens", |client| async move {
        let mailboxes: i32 = client.query_one(MAILBOXES, &[]).await?.get(0);
        let tokens: i64 = client.query_one(TOKENS, &[]).await?.get(0);
        Ok(Holdings {
            mailboxes: i64::from(mailboxes),
            tokens,
        })
    })
}

/// Writes `snapshot` into the database, sealed with `key`, in one transaction: all of it or
/// nothing. A database that holds mailboxes or tokens is refused unless `force`, which
/// replaces everything it held. Every relay hears of the new registry (`NOTIFY`).
pub fn import(
    db: &Database,
    key: &StateKey,
    snapshot: &Snapshot,
    force: bool,
) -> Result<(), TransferError> {
    let rows = Rows::sealed(snapshot, key, db)?;
    let occupied = db.call("import a state", move |client| {
        replace_all(client, rows, force)
    })?;
    match occupied {
        None => Ok(()),
        Some(what) => Err(TransferError::NotEmpty {
            target: format!("the database {}", db.server()),
            what,
        }),
    }
}

/// A snapshot as the tables hold it: secrets sealed.
struct Rows {
    document: Zeroizing<Vec<u8>>,
    tokens: Vec<(String, Vec<u8>)>,
    statuses: Vec<(String, String)>,
    switches: Vec<(String, i64, String)>,
}

impl Rows {
    fn sealed(snapshot: &Snapshot, key: &StateKey, db: &Database) -> Result<Rows, TransferError> {
        let origin = PathBuf::from(format!("the database {}", db.server()));
        let document = seal_registry(&snapshot.registry, key, &origin)?;
        let tokens = snapshot
            .tokens
            .iter()
            .map(|(address, token)| {
                storable(address, token)?;
                let sealed = key
                    .seal(&purpose(address), token.expose().as_bytes())
                    .map_err(|why| StoreError::Seal {
                        mailbox: address.clone(),
                        why,
                    })?;
                Ok((address.clone(), sealed.into_bytes()))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let statuses = snapshot
            .statuses
            .iter()
            .map(|(address, status)| Ok((address.clone(), serde_json::to_string(status)?)))
            .collect::<Result<Vec<_>, serde_json::Error>>()
            .map_err(|e| TransferError::Io {
                path: origin,
                source: std::io::Error::other(e),
            })?;
        let switches = snapshot
            .switches
            .iter()
            .map(|(address, at, reply)| {
                let at = i64::try_from(*at).unwrap_or(i64::MAX);
                (address.clone(), at, reply.clone())
            })
            .collect();
        Ok(Rows {
            document,
            tokens,
            statuses,
            switches,
        })
    }
}

/// In one transaction, under the registry's lock: what the database holds (then `Some`,
/// and nothing written, unless `force`), replaced by `rows`.
async fn replace_all(
    mut client: Object,
    rows: Rows,
    force: bool,
) -> Result<Option<String>, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&REGISTRY_LOCK])
        .await?;
    let mailboxes: i32 = tx.query_one(MAILBOXES, &[]).await?.get(0);
    let held: i64 = tx.query_one(TOKENS, &[]).await?.get(0);
    if (mailboxes > 0 || held > 0) && !force {
        return Ok(Some(format!(
            "{mailboxes} mailboxes and {held} refresh tokens"
        )));
    }
    tx.batch_execute(
        "DELETE FROM refresh_tokens; DELETE FROM token_leases; DELETE FROM access_tokens;
         DELETE FROM mailbox_statuses; DELETE FROM route_switches;",
    )
    .await?;
    tx.query_one(SAVE, &[&&rows.document[..]]).await?;
    for (address, sealed) in &rows.tokens {
        tx.execute(
            "INSERT INTO refresh_tokens (mailbox, sealed, version) VALUES ($1, $2, 1)",
            &[address, sealed],
        )
        .await?;
    }
    for (address, status) in &rows.statuses {
        tx.execute(
            "INSERT INTO mailbox_statuses (mailbox, status) VALUES ($1, $2::text::jsonb)",
            &[address, status],
        )
        .await?;
    }
    for (address, at, reply) in &rows.switches {
        tx.execute(
            "INSERT INTO route_switches (mailbox, switched_at, reply) VALUES ($1, $2, $3)",
            &[address, at, reply],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(None)
}
