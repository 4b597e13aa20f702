//! The `postgres` backend of the state: one PostgreSQL database that several relays
//! share (README, "Running several relays").
//!
//! - [`database`]: the pool on its own small runtime, bounded calls from sync and async
//!   code, and the database's reachability (degraded mode);
//! - `tls`: TLS to the server, verified as `sslmode=verify-full`;
//! - [`schema`]: the versioned schema and its migrations;
//! - [`probe`]: a periodic `SELECT 1`, so that the reachability stays current (degraded
//!   mode) while nothing else calls the database.
//!
//! Secrets are sealed with the state key ([`crate::state::seal`]) before they are
//! written: the database never holds a refresh token, a client secret or a private key in
//! plain text.

pub mod database;
pub mod probe;
pub mod schema;
mod tls;

pub use database::{Database, DatabaseError, DatabaseHealth};

use crate::config::DatabaseConfig;
use crate::state::error::StateError;
use crate::state::handle::State;
use crate::state::seal::StateKey;

/// Opens the database of `config`, migrating its schema first, with the state `key`.
pub fn open(config: &DatabaseConfig, key: StateKey) -> Result<State, StateError> {
    let db = Database::open(config)?;
    schema::migrate(&db)?;
    let _ = key;
    Err(StateError::Database(DatabaseError::Setup {
        server: db.server().to_owned(),
        why: "the PostgreSQL stores are not built yet in this version; use backend = \"files\""
            .into(),
    }))
}
