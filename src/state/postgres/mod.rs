//! The `postgres` backend of the state: one PostgreSQL database that several relays
//! share (README, "Running several relays").
//!
//! - [`database`]: the pool on its own small runtime, bounded calls from sync and async
//!   code, and the database's reachability (degraded mode);
//! - `tls`: TLS to the server, verified as `sslmode=verify-full`;
//! - [`schema`]: the versioned schema and its migrations;
//! - [`counters`]: the fleet-wide sending windows and failed-login counts;
//! - the stores: [`registry`] (the sealed registry document, `NOTIFY`/`LISTEN`, the
//!   advisory lock of a change), [`tokens`] (sealed refresh tokens, rotation by
//!   compare-and-swap), [`statuses`] and [`switches`];
//! - [`admin`]: what the `state` commands do with the database as a whole (counts, an
//!   import in one transaction);
//! - [`probe`]: a periodic `SELECT 1`, so that the reachability stays current (degraded
//!   mode) while nothing else calls the database;
//! - [`leases`]: the fleet's token leases and shared access tokens ([`PgLeases`]);
//! - [`queue`] ([`PgQueue`]): the outbound queue, bodies sealed, claimed by one relay at a
//!   time; [`delivery_log`] ([`PgDeliveryLog`]): the delivery log, size-bounded.
//!
//! Secrets are sealed with the state key ([`crate::state::seal`]) before they are
//! written: the database never holds a refresh token, a client secret or a private key in
//! plain text.

pub mod admin;
pub mod counters;
pub mod database;
pub mod delivery_log;
pub mod leases;
pub mod probe;
pub mod queue;
pub mod registry;
pub mod schema;
pub mod statuses;
pub mod switches;
mod tls;
pub mod tokens;

pub use database::{Database, DatabaseError, DatabaseHealth};
pub use delivery_log::PgDeliveryLog;
pub use leases::PgLeases;
pub use queue::PgQueue;
pub use registry::RegistryTable;
pub use statuses::StatusTable;
pub use switches::SwitchTable;
pub use tokens::TokenTable;

use std::sync::Arc;

use crate::config::{DatabaseConfig, DeliveryLogConfig, QueueConfig};
use crate::state::error::StateError;
use crate::state::handle::State;
use crate::state::seal::StateKey;

/// Opens the database of `config`, migrating its schema first, with the state `key`; the
/// queue and the delivery log with their default bounds.
pub fn open(config: &DatabaseConfig, key: StateKey) -> Result<State, StateError> {
    open_bounded(
        config,
        key,
        &QueueConfig::default(),
        &DeliveryLogConfig::default(),
    )
}

/// [`open`], the queue bounded by `queue.max_bytes` and the delivery log by `log.max_bytes`
/// (the relay's start, `state::open`).
pub fn open_bounded(
    config: &DatabaseConfig,
    key: StateKey,
    queue: &QueueConfig,
    log: &DeliveryLogConfig,
) -> Result<State, StateError> {
    let db = Database::open(config)?;
    schema::migrate(&db)?;
    let outbound = PgQueue::for_this_relay(db.clone(), key.clone(), queue.max_bytes);
    let delivery_log = PgDeliveryLog::new(db.clone(), log.max_bytes);
    Ok(with_key(db, key)?.with_outbound(Arc::new(outbound), Arc::new(delivery_log)))
}

/// The stores of `db` (whose schema is current), sealed with `key`.
pub fn with_key(db: Database, key: StateKey) -> Result<State, DatabaseError> {
    let registry = RegistryTable::open(db.clone(), key.clone())?;
    Ok(State::new(
        Arc::new(registry),
        Arc::new(TokenTable::new(db.clone(), key.clone())),
        Arc::new(StatusTable::new(db.clone())),
        Arc::new(SwitchTable::new(db.clone())),
    )
    .with_leases(Arc::new(PgLeases::for_this_relay(db.clone(), key)))
    .with_database(db))
}
