//! Reading the registry file for a change, and migrating it: a file without a MAC
//! (format versions 1 to 4) is sealed once, under the state folder's lock, if the registry
//! was never sealed (see [`super::integrity`]); `state reseal` takes the file as it is.

use std::io;
use std::path::{Path, PathBuf};

use super::integrity::{Trust, ensure_marker, note_sealed, seal_marker, was_sealed};
use super::lock::StateLock;
use super::records::FORMAT_VERSION;
use super::registry::{REGISTRY_FILE, ReadFile, lock, read_file, write};
use crate::mailbox::Registry;
use crate::state::error::RegistryStoreError;
use crate::state::seal::StateKey;
use crate::state::traits::{LockedRegistry, RegistryLock};

/// [`super::registry::load`], but a registry without a MAC (format versions 1 to 4) that was
/// never sealed is rewritten sealed, once (see the module documentation). A missing
/// file is an empty registry (and the seal marker is made, so no unsealed file is taken
/// later). For the CLI and the relay's start; re-reads by a running relay use
/// [`super::registry::load`], which never writes.
pub fn load_and_migrate(state_dir: &Path, key: &StateKey) -> Result<Registry, RegistryStoreError> {
    let file = state_dir.join(REGISTRY_FILE);
    match read_file(&file, key, Trust::Verify)? {
        Some(read) if read.version == FORMAT_VERSION => Ok(read.registry),
        // Without MAC, or missing: decided under the lock.
        _ => {
            let _lock = lock(state_dir)?;
            migrate_locked(state_dir, key)
        }
    }
}

/// The registry under the state folder's lock, for a change: [`load_and_migrate`],
/// and until the result is dropped no other process changes the registry (nor other state
/// files). Save the change with [`LockedRegistry::save`].
pub fn locked(state_dir: &Path, key: &StateKey) -> Result<LockedRegistry, RegistryStoreError> {
    let lock = lock(state_dir)?;
    let registry = migrate_locked(state_dir, key)?;
    let held = FileLock {
        state_dir: state_dir.to_owned(),
        key: key.clone(),
        _lock: lock,
    };
    Ok(LockedRegistry::new(registry, Box::new(held)))
}

/// Reads `mailboxes.json` as it is, whatever its MAC says (any format version), and
/// writes it back sealed: the administrator vouches for its content. Client secrets and
/// keys must still open with `key`. Returns the registry written.
pub fn reseal(state_dir: &Path, key: &StateKey) -> Result<Registry, RegistryStoreError> {
    let _lock = lock(state_dir)?;
    let file = state_dir.join(REGISTRY_FILE);
    let read =
        read_file(&file, key, Trust::CurrentFile)?.ok_or_else(|| RegistryStoreError::Io {
            file: file.clone(),
            source: io::Error::new(io::ErrorKind::NotFound, "there is no registry to seal"),
        })?;
    // Marker first: from now on no file without MAC is taken.
    let _ = ensure_marker(key);
    write(&read.registry, state_dir, key)?;
    tracing::warn!(file = %file.display(), from_version = read.version,
        "resealed the mailbox registry as it was, on the administrator's word");
    Ok(read.registry)
}

/// Under the lock: the registry, a file without MAC migrated if it never was sealed.
fn migrate_locked(state_dir: &Path, key: &StateKey) -> Result<Registry, RegistryStoreError> {
    let file = state_dir.join(REGISTRY_FILE);
    let Some(read) = read_file(&file, key, Trust::Verify)? else {
        // A new registry: sealed from its first save, and nothing unsealed is taken later.
        note_sealed(key);
        return Ok(Registry::default());
    };
    if read.version == FORMAT_VERSION {
        return Ok(read.registry);
    }
    let ReadFile {
        registry, version, ..
    } = read;
    if let Some(marker) = was_sealed(key) {
        return Err(RegistryStoreError::ReplacedAfterSealing {
            file,
            version,
            marker,
        });
    }
    let cannot = |why: String| RegistryStoreError::CannotMigrate {
        file: file.clone(),
        version,
        why,
    };
    match ensure_marker(key) {
        Ok(true) => {}
        Ok(false) => {
            return Err(cannot(
                "the key comes from M365_RELAY_KEY, so there is no place for the seal marker"
                    .into(),
            ));
        }
        Err(e) => {
            let marker = seal_marker(key).unwrap_or_default();
            return Err(cannot(format!(
                "the seal marker {} cannot be created ({e})",
                marker.display()
            )));
        }
    }
    write(&registry, state_dir, key)?;
    tracing::info!(file = %file.display(), from_version = version,
        "sealed the mailbox registry: rewrote it in format version {FORMAT_VERSION}, with a MAC");
    Ok(registry)
}

/// The state folder's lock held for a change of the registry ([`locked`]).
#[derive(Debug)]
struct FileLock {
    state_dir: PathBuf,
    key: StateKey,
    _lock: StateLock,
}

impl RegistryLock for FileLock {
    fn save(&self, registry: &Registry) -> Result<(), RegistryStoreError> {
        write(registry, &self.state_dir, &self.key)
    }
}
