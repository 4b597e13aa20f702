//! The `files` backend of the state: everything in the state folder (`state_dir`), as
//! the relay has always kept it.
//!
//! - `crate::state::private`: atomic, `0600` writes (and the owner-only reads of secret
//!   files), shared with the key file, the admin token and the TLS certificate;
//! - [`lock`]: the folder's lock, held across every read–modify–write;
//! - [`registry`] (with `records`, `legacy`, [`integrity`] and [`migrate`]): `mailboxes.json`,
//!   its format versions 1 to 5, their migration, and the MAC with its seal marker;
//! - [`tokens`]: one sealed refresh token file per mailbox;
//! - [`leases`]: the token leases of a relay alone (every lease granted, nothing shared);
//! - [`status`] and [`switches`]: the mailboxes' token statuses and Graph route switches;
//! - [`queue`]: the outbound queue (`queue/`), and [`delivery_log`]: the delivery log
//!   (`delivery-log/`).

pub mod delivery_log;
pub mod integrity;
pub mod leases;
mod legacy;
pub mod lock;
pub mod migrate;
pub mod queue;
mod records;
pub mod registry;
pub mod status;
pub mod switches;
pub mod tokens;
mod verifier;

#[cfg(test)]
mod tests;

pub use delivery_log::FileDeliveryLog;
pub use integrity::{MAC_PURPOSE, seal_marker};
pub use leases::LocalLeases;
pub use lock::StateLock;
pub use queue::FileQueue;
pub use registry::REGISTRY_FILE;
pub use status::{StatusFiles, read_status};
pub use switches::SwitchFiles;
pub use tokens::{TOKENS_DIR, TokenStore};

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::mailbox::Registry;
use crate::state::error::{RegistryStoreError, StateError};
use crate::state::handle::State;
use crate::state::seal::StateKey;
use crate::state::traits::{LockedRegistry, RegistryStore, Revision};

/// Opens the state folder `state_dir` with the key of `key_file` (or `M365_RELAY_KEY`).
pub fn open(state_dir: &Path, key_file: &Path) -> Result<State, StateError> {
    let key = StateKey::load(key_file)?;
    Ok(with_key(state_dir, key))
}

/// The state folder `state_dir`, sealed with `key`.
pub fn with_key(state_dir: &Path, key: StateKey) -> State {
    State::new(
        Arc::new(RegistryFile::new(state_dir, key.clone())),
        Arc::new(TokenStore::new(state_dir, key)),
        Arc::new(StatusFiles::new(state_dir)),
        Arc::new(SwitchFiles::new(state_dir)),
    )
}

/// `{state_dir}/mailboxes.json`, sealed with a key.
#[derive(Debug, Clone)]
pub struct RegistryFile {
    state_dir: PathBuf,
    key: StateKey,
}

impl RegistryFile {
    /// The registry file of `state_dir`; nothing is read until asked.
    pub fn new(state_dir: &Path, key: StateKey) -> Self {
        Self {
            state_dir: state_dir.to_owned(),
            key,
        }
    }

    /// The key the registry is sealed with.
    pub fn key(&self) -> &StateKey {
        &self.key
    }
}

impl RegistryStore for RegistryFile {
    fn load(&self) -> Result<Registry, RegistryStoreError> {
        registry::load(&self.state_dir, &self.key)
    }

    fn load_and_migrate(&self) -> Result<Registry, RegistryStoreError> {
        migrate::load_and_migrate(&self.state_dir, &self.key)
    }

    fn locked(&self) -> Result<LockedRegistry, RegistryStoreError> {
        migrate::locked(&self.state_dir, &self.key)
    }

    fn save(&self, registry: &Registry) -> Result<(), RegistryStoreError> {
        registry::save(registry, &self.state_dir, &self.key)
    }

    fn reseal(&self) -> Result<Registry, RegistryStoreError> {
        migrate::reseal(&self.state_dir, &self.key)
    }

    fn revision(&self) -> Result<Option<Revision>, RegistryStoreError> {
        let file = self.state_dir.join(REGISTRY_FILE);
        match std::fs::metadata(&file) {
            Ok(m) => Ok(Some(Revision::File {
                dev: m.dev(),
                ino: m.ino(),
                len: m.len(),
                modified: m.modified().ok(),
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(RegistryStoreError::Io { file, source }),
        }
    }
}
