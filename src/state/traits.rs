//! What the state keeps, as traits every backend implements: the mailbox registry, the
//! refresh tokens, the mailboxes' token statuses and the Graph route switches (see the
//! module documentation of `state` for where async will be needed).

use std::fmt;
use std::ops::{Deref, DerefMut};

use crate::mailbox::Registry;
use crate::secret::RefreshToken;
use crate::state::error::{RegistryStoreError, StoreError};
use crate::state::status::MailboxStatus;

/// Where the mailbox registry is kept.
pub trait RegistryStore: Send + Sync + fmt::Debug {
    /// The registry as saved; only a sealed registry is taken, and nothing is written
    /// (the running relay's re-reads). Missing: an empty registry.
    fn load(&self) -> Result<Registry, RegistryStoreError>;
    /// [`RegistryStore::load`], but a registry of an older format is converted and saved
    /// once (the relay's start, the CLI).
    fn load_and_migrate(&self) -> Result<Registry, RegistryStoreError>;
    /// The registry held for a change: nobody else changes it until the result is dropped;
    /// [`LockedRegistry::save`] writes the change.
    fn locked(&self) -> Result<LockedRegistry, RegistryStoreError>;
    /// Saves `registry` over whatever is stored (use [`RegistryStore::locked`] to change
    /// it instead).
    fn save(&self, registry: &Registry) -> Result<(), RegistryStoreError>;
    /// Takes the stored registry as it is, whatever its integrity check says, and saves it
    /// sealed (`state reseal --trust-current-file`).
    fn reseal(&self) -> Result<Registry, RegistryStoreError>;
    /// What the stored registry looks like now, cheaply, to notice a change without
    /// reading it; `None` when there is none.
    fn revision(&self) -> Result<Option<Revision>, RegistryStoreError>;
}

/// A stored registry's version as [`RegistryStore::revision`] sees it: equal revisions
/// mean an unchanged registry.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Revision {
    /// A file's identity and size: every save is a rename, which gives a new inode.
    File {
        dev: u64,
        ino: u64,
        len: u64,
        modified: Option<std::time::SystemTime>,
    },
    /// A database row's version: every save bumps it (and announces it with `NOTIFY`).
    Database { version: i64 },
}

/// What holds the registry for a change, and saves it.
pub trait RegistryLock: Send + fmt::Debug {
    /// Saves `registry`, still holding it.
    fn save(&self, registry: &Registry) -> Result<(), RegistryStoreError>;
}

/// The registry while it is held for a change ([`RegistryStore::locked`]).
#[derive(Debug)]
pub struct LockedRegistry {
    registry: Registry,
    lock: Box<dyn RegistryLock>,
}

impl LockedRegistry {
    /// `registry`, held by `lock` until dropped.
    pub fn new(registry: Registry, lock: Box<dyn RegistryLock>) -> Self {
        Self { registry, lock }
    }

    /// Writes the registry, sealed, still holding it.
    pub fn save(&self) -> Result<(), RegistryStoreError> {
        self.lock.save(&self.registry)
    }
}

impl Deref for LockedRegistry {
    type Target = Registry;
    fn deref(&self) -> &Registry {
        &self.registry
    }
}

impl DerefMut for LockedRegistry {
    fn deref_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }
}

/// Where refresh tokens are kept, sealed, one per mailbox (its address).
pub trait RefreshTokens: Send + Sync + fmt::Debug {
    /// The stored token of `mailbox`, `None` when it has none. A token that cannot be
    /// opened is an error, never `None`.
    fn load(&self, mailbox: &str) -> Result<Option<RefreshToken>, StoreError>;
    /// Replaces the token of `mailbox` by `rotated` only if it still is `redeemed`;
    /// whether it was written.
    fn replace(
        &self,
        mailbox: &str,
        redeemed: &RefreshToken,
        rotated: &RefreshToken,
    ) -> Result<bool, StoreError>;
    /// Stores `token` for `mailbox`, replacing any other.
    fn save(&self, mailbox: &str, token: &RefreshToken) -> Result<(), StoreError>;
    /// Deletes the token of `mailbox`; none is not an error.
    fn remove(&self, mailbox: &str) -> Result<(), StoreError>;
}

/// Where each mailbox's token status is kept, for `mailbox list` in another process.
pub trait MailboxStatuses: Send + Sync + fmt::Debug {
    /// Stores the status of `address`.
    fn write(&self, address: &str, status: &MailboxStatus) -> std::io::Result<()>;
    /// The last stored status of `address`, if any.
    fn read(&self, address: &str) -> Option<MailboxStatus>;
}

/// Where the `auto` mailboxes that Exchange refused SMTP AUTH are remembered.
pub trait RouteSwitches: Send + Sync + fmt::Debug {
    /// When `address` was switched to Graph, if it was.
    fn switched_at(&self, address: &str) -> Option<u64> {
        self.switch(address).map(|(at, _)| at)
    }
    /// When `address` was switched to Graph and Exchange's reply then, if it was.
    fn switch(&self, address: &str) -> Option<(u64, String)>;
    /// Remembers that `address` sends through Graph from `at` (Unix seconds) on, because
    /// of Exchange's `reply`.
    fn switch_to_graph(&self, address: &str, at: u64, reply: &str) -> std::io::Result<()>;
    /// Forgets the switch of `address` (the administrator chose a way again).
    fn forget(&self, address: &str) -> std::io::Result<()>;
}
