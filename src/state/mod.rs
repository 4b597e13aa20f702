//! The one place that persists anything: the mailbox registry, refresh tokens, mailbox
//! token statuses and the Graph route switches. Nothing outside this module opens, reads
//! or writes a state file.
//!
//! Callers see traits ([`RegistryStore`], [`RefreshTokens`], [`MailboxStatuses`],
//! [`RouteSwitches`]) handed out by a [`State`], which [`open`] builds once, at the relay's
//! start and once per CLI command, and which is passed down from there. Today there is one
//! backend, [`files`]: the state folder of `state_dir`, with atomic `0600` writes, the
//! folder's lock and the registry's integrity MAC, as before this layer existed. A second
//! backend (a database shared by several relays) implements the same traits and is
//! chosen in [`open`]; no caller changes.
//!
//! The traits are synchronous, as every state access is today (the relay calls them on
//! the blocking pool or at start). A networked backend needs async versions of
//! [`RefreshTokens`] (called from the token refresh path), of [`MailboxStatuses::write`]
//! (written beside the login path) and of [`RegistryStore::revision`] (polled by the
//! registry watch); the others run at start, on reload and in the CLI.
//!
//! [`counters`] ([`FleetCounters`]) is what several relays sharing one state count
//! together (sending windows, failed logins); only the shared backend has it.
//!
//! [`queue`] ([`OutboundQueue`]) is the durable outbound queue and [`delivery_log`]
//! ([`DeliveryLogStore`]) the log of what happened to each message; both backends keep them.
//!
//! [`seal`] is the at-rest encryption (the [`StateKey`]) every backend seals secrets with.

pub mod counters;
pub mod delivery_log;
pub mod error;
pub mod files;
pub mod handle;
pub mod key;
pub mod leases;
pub mod postgres;
pub mod private;
pub mod queue;
pub mod queue_transfer;
pub mod seal;
pub mod snapshot;
pub mod status;
pub mod traits;

pub use counters::FleetCounters;
pub use delivery_log::{DeliveryEvent, DeliveryLog, DeliveryLogStore, EventKind, LogQuery};
pub use error::{RegistryStoreError, StateError, StoreError};

use crate::config::StateBackend;
pub use handle::State;
pub use leases::{Finished, Lease, Outcome, Redeemable, SharedToken, TokenLeases};
pub use postgres::{Database, DatabaseError, DatabaseHealth};
pub use queue::{
    Entry, EntryState, Envelope, MessageKind, OutboundQueue, QueueError, QueueId, QueueStats,
    Settlement,
};
pub use seal::StateKey;
pub use status::{MailboxStatus, TokenState};
pub use traits::{
    LockedRegistry, MailboxStatuses, RefreshTokens, RegistryLock, RegistryStore, Revision,
    RouteSwitches,
};

/// Opens the state the configuration names (`[state] backend`) with the state key: the
/// state folder, or the database (its schema migrated first). Call it once, at start or
/// per CLI command, and pass it down.
pub fn open(config: &crate::config::Config) -> Result<State, StateError> {
    match &config.state {
        StateBackend::Files => {
            let key = StateKey::load(&config.key_file)?;
            let dir = &config.state_dir;
            let queue = files::FileQueue::open(dir, key.clone(), config.queue.max_bytes)?;
            let log = files::FileDeliveryLog::new(dir, config.log.max_bytes);
            Ok(files::with_key(dir, key)
                .with_outbound(std::sync::Arc::new(queue), std::sync::Arc::new(log)))
        }
        StateBackend::Postgres(db) => postgres::open_bounded(
            db,
            StateKey::load(&config.key_file)?,
            &config.queue,
            &config.log,
        ),
    }
}

/// [`open`], after creating the state folder (`0700`) if it is missing and the state is
/// kept there: the relay's start.
pub fn create(config: &crate::config::Config) -> Result<State, StateError> {
    if matches!(config.state, StateBackend::Files) {
        private::ensure_private_dir(&config.state_dir).map_err(|source| StateError::Folder {
            dir: config.state_dir.clone(),
            source,
        })?;
    }
    open(config)
}
