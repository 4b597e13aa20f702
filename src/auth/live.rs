//! The live mailbox registry of a running relay: the registry as last read from the
//! state, read anew when it changes, so that CLI changes apply without a restart.
//!
//! Reads go through [`RegistryStore`]: [`LiveRegistry::current_registry`] asks only for
//! the stored registry's [`Revision`] (a `stat` of the file) and reads it again only when
//! that changed. A registry that failed to load (a MAC that does not verify, a corrupt
//! file) is not read again, nor warned about, until it changes; the one read before stays
//! in force. Open sessions watch [`LiveRegistry::loads`] to notice a removed mailbox.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use crate::mailbox::{Mailbox, PasswordVerifier, Registry};
use crate::state::{RegistryStore, RegistryStoreError, Revision};

/// The registry as last read, and where it comes from.
pub struct LiveRegistry {
    store: Arc<dyn RegistryStore>,
    current: RwLock<Loaded>,
    /// Counts the registry's loads: open sessions watch it to notice a removed mailbox.
    loads: tokio::sync::watch::Sender<u64>,
    /// The stored registry as it was when reading it last failed: not read (nor warned
    /// about) again until it changes.
    refused: Mutex<Option<Revision>>,
}

/// The registry as last read, and the revision it was read at.
struct Loaded {
    registry: Arc<Registry>,
    revision: Option<Revision>,
}

impl LiveRegistry {
    /// Reads the registry from `store` (none stored: an empty registry); a registry of an
    /// older format is converted and saved once ([`RegistryStore::load_and_migrate`]).
    pub fn open(store: Arc<dyn RegistryStore>) -> Result<Self, RegistryStoreError> {
        let revision = store.revision()?;
        let registry = Arc::new(store.load_and_migrate()?);
        Ok(Self {
            store,
            current: RwLock::new(Loaded { registry, revision }),
            loads: tokio::sync::watch::Sender::new(0),
            refused: Mutex::new(None),
        })
    }

    /// The registry as last read.
    pub fn registry(&self) -> Arc<Registry> {
        self.read_current().registry.clone()
    }

    /// The registry, re-read first if it changed since the last read; on a read error,
    /// the one read before (with a warning).
    pub fn current_registry(&self) -> Arc<Registry> {
        self.refresh().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "keeping the mailbox registry read before");
            self.registry()
        })
    }

    /// Re-reads the registry now, whether or not it changed.
    pub fn reload(&self) -> Result<(), RegistryStoreError> {
        self.load_fresh().map(drop)
    }

    /// Notified each time the registry is read anew.
    pub fn loads(&self) -> tokio::sync::watch::Receiver<u64> {
        self.loads.subscribe()
    }

    /// How many times the registry was read anew.
    pub fn load_count(&self) -> u64 {
        *self.loads.borrow()
    }

    /// Whether a session logged in as `address` may go on: the mailbox is still registered
    /// and, when `verifier` is given, its password is still the one the session logged in
    /// with. Reads the registry anew if it changed.
    pub fn still_standing(&self, address: &str, verifier: Option<&PasswordVerifier>) -> bool {
        let registry = self.current_registry();
        match registry.get(address) {
            None => false,
            Some(mailbox) => verifier.is_none_or(|v| mailbox.password.as_ref() == Some(v)),
        }
    }

    /// Resolves once `address` is no longer in the registry (as last read).
    pub async fn removed(&self, address: &str) {
        let mut loads = self.loads();
        loop {
            if self.registry().get(address).is_none() {
                return;
            }
            if loads.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// The mailbox `address` in the registry as last read.
    pub fn get(&self, address: &str) -> Option<Arc<Mailbox>> {
        self.registry().get_arc(address).cloned()
    }

    /// The registry, re-read first if it changed since the last read.
    fn refresh(&self) -> Result<Arc<Registry>, RegistryStoreError> {
        let now = self.store.revision()?;
        {
            let current = self.read_current();
            if current.revision == now || (now.is_some() && *self.refused() == now) {
                return Ok(current.registry.clone());
            }
        }
        let loaded = self.load_fresh();
        if loaded.is_err() {
            *self.refused() = now;
        }
        loaded
    }

    fn load_fresh(&self) -> Result<Arc<Registry>, RegistryStoreError> {
        // Revision first: if the registry changes while it is read, the next check reads
        // it again.
        let revision = self.store.revision()?;
        let registry = Arc::new(self.store.load()?);
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        *current = Loaded {
            registry: registry.clone(),
            revision,
        };
        drop(current);
        tracing::info!(mailboxes = registry.len(), "mailbox registry loaded");
        self.loads.send_modify(|n| *n += 1);
        Ok(registry)
    }

    fn refused(&self) -> MutexGuard<'_, Option<Revision>> {
        self.refused.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn read_current(&self) -> std::sync::RwLockReadGuard<'_, Loaded> {
        self.current.read().unwrap_or_else(PoisonError::into_inner)
    }
}

impl std::fmt::Debug for LiveRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveRegistry")
            .field("store", &self.store)
            .field("mailboxes", &self.registry().len())
            .finish_non_exhaustive()
    }
}
