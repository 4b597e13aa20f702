//! Integrity of the mailbox registry: a MAC under the state key over all of
//! `mailboxes.json`, so that write access to the state folder without the key cannot turn
//! into a login (a password verifier copied onto another mailbox, a delegation, an allowed
//! sender or `app_only` changed by hand).
//!
//! # The sealed format (version 5)
//!
//! Version 5 is version 4 with one more member, `"mac": "hs256:<base64>"`: HMAC-SHA256
//! ([`StateKey::mac`], a key derived from the state key) for the purpose [`MAC_PURPOSE`] over
//! the document without `mac`, in canonical form (serde_json's compact writing of the parsed
//! JSON value). So the MAC covers every member, and what is checked is exactly what is then
//! read: the records are taken from the same parsed value the MAC was computed over.
//!
//! # Migrating once: the seal marker
//!
//! Files of versions 1 to 4 have no MAC. One of them is trusted, and rewritten sealed, only
//! while the registry has never been sealed, which the *seal marker* records: a file next
//! to the key file (`{key_file}.sealed`), outside the state folder, where whoever can only
//! write the state folder cannot remove it. It is created before the first sealed write
//! (migration, or the first save of a new registry) and never removed. Then:
//!
//! - no marker, file without MAC: migrated once (marker first, then the sealed file);
//! - marker, file without MAC: refused (an older or edited file was put in its place);
//! - a version 5 file whose MAC does not verify: always refused;
//! - no place for a marker (the key comes from `M365_RELAY_KEY`, or the key file's folder
//!   is read-only, as with container secrets): a file without MAC is never migrated on its
//!   own; the administrator checks it and runs `m365-relay state reseal --trust-current-file`.
//!
//! A refused registry is never reset and never used: the relay does not start (a running
//! relay keeps the registry it read before), and every `mailbox` command stops with the
//! error. The way out is a backup, or `state reseal --trust-current-file` after checking.
//!
//! What the MAC cannot tell: an older sealed `mailboxes.json` of the same key put back
//! (e.g. the one before a password change). Restoring backups stays possible that way too.

use std::io;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::lock::{self, StateLock};
use super::records::RegistryFile;
use super::registry::{FORMAT_VERSION, REGISTRY_FILE, ReadFile, json_why, read_file, write};
use crate::mailbox::Registry;
use crate::state::error::RegistryStoreError;
use crate::state::private;
use crate::state::seal::{KeySource, SealError, StateKey};
use crate::state::traits::{LockedRegistry, RegistryLock};

/// What the registry's MAC is for: no other state file's MAC verifies as a registry's.
pub const MAC_PURPOSE: &str = "mailbox-registry:v5";

/// The member of a version 5 file that holds the MAC.
const MAC_MEMBER: &str = "mac";

/// What the seal marker's name adds to the key file's.
const MARKER_SUFFIX: &str = ".sealed";

/// What the seal marker says to whoever finds it.
const MARKER_TEXT: &str = "The mailbox registry sealed with this key has a MAC \
(m365-relay format version 5); copies without one are refused. Do not remove.\n";

/// Whether a read checks the MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Trust {
    /// Only a version 5 file whose MAC verifies is taken as sealed.
    Verify,
    /// The administrator vouches for the file as it is (`state reseal`).
    CurrentFile,
}

/// The seal marker of the registries sealed with `key`: `{key_file}.sealed`, or `None`
/// when the key comes from the environment (there is no key folder to put it in).
pub fn seal_marker(key: &StateKey) -> Option<PathBuf> {
    match key.source() {
        KeySource::File(file) => {
            let mut name = file.file_name()?.to_os_string();
            name.push(MARKER_SUFFIX);
            Some(file.with_file_name(name))
        }
        KeySource::Env | KeySource::Bytes => None,
    }
}

/// `disk` as a version 5 file: pretty JSON with the MAC of its canonical form.
pub(super) fn seal_document(
    disk: &RegistryFile,
    key: &StateKey,
) -> Result<Zeroizing<Vec<u8>>, String> {
    let mut value = serde_json::to_value(disk).map_err(|e| e.to_string())?;
    let canonical = Zeroizing::new(serde_json::to_vec(&value).map_err(|e| e.to_string())?);
    let mac = key.mac(MAC_PURPOSE, &canonical);
    let object = value
        .as_object_mut()
        .ok_or("the registry is not a JSON object")?;
    object.insert(MAC_MEMBER.into(), mac.into());
    let mut bytes = Zeroizing::new(serde_json::to_vec_pretty(&value).map_err(|e| e.to_string())?);
    bytes.push(b'\n');
    Ok(bytes)
}

/// Why a version 5 document gave no records.
pub(super) enum OpenError {
    Corrupt(String),
    Unauthentic(SealError),
}

/// The records of a version 5 file, its MAC checked first (unless `trust` says not to).
pub(super) fn open_document(
    bytes: &[u8],
    key: &StateKey,
    trust: Trust,
) -> Result<RegistryFile, OpenError> {
    let mut value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| OpenError::Corrupt(json_why(&e)))?;
    let object = value
        .as_object_mut()
        .ok_or_else(|| OpenError::Corrupt("not a JSON object".into()))?;
    let mac = match object.remove(MAC_MEMBER) {
        Some(serde_json::Value::String(mac)) => Some(mac),
        Some(_) => return Err(OpenError::Corrupt("`mac` is not a string".into())),
        None => None,
    };
    if trust == Trust::Verify {
        let mac = mac.ok_or(OpenError::Unauthentic(SealError::Malformed(
            "it has no `mac`",
        )))?;
        let canonical = Zeroizing::new(
            serde_json::to_vec(&value).map_err(|e| OpenError::Corrupt(e.to_string()))?,
        );
        key.verify_mac(MAC_PURPOSE, &canonical, &mac)
            .map_err(OpenError::Unauthentic)?;
    }
    serde_json::from_value(value).map_err(|e| OpenError::Corrupt(json_why(&e)))
}

/// Creates the seal marker if it is missing. `Ok(false)`: there is no place for one.
fn ensure_marker(key: &StateKey) -> io::Result<bool> {
    let Some(marker) = seal_marker(key) else {
        return Ok(false);
    };
    match private::create_private(&marker, MARKER_TEXT.as_bytes()) {
        Ok(()) => {
            tracing::info!(marker = %marker.display(), "created the seal marker of the mailbox registry");
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(true),
        Err(e) => Err(e),
    }
}

/// After a sealed write: the marker, if it can be made (a failure only means that a file
/// without MAC could still be migrated once, which [`ensure_marker`] refuses then anyway
/// when it cannot make it).
pub(super) fn note_sealed(key: &StateKey) {
    if seal_marker(key).is_none_or(|m| m.exists()) {
        return;
    }
    if let Err(e) = ensure_marker(key) {
        tracing::debug!(error = %e, "no seal marker for the mailbox registry");
    }
}

/// Whether the registry was sealed before: the marker exists.
pub fn was_sealed(key: &StateKey) -> Option<PathBuf> {
    seal_marker(key).filter(|m| m.exists())
}

/// The state folder's lock, as a registry error.
pub(super) fn lock(state_dir: &Path) -> Result<StateLock, RegistryStoreError> {
    StateLock::acquire(state_dir).map_err(|source| RegistryStoreError::Io {
        file: lock::lock_path(state_dir),
        source,
    })
}

// === reading for a change ===

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

/// `json` as a registry file whose change was made with `key`: its `mac` recomputed when it
/// is version 5, removed otherwise.
#[cfg(test)]
pub(crate) fn seal_value(mut json: serde_json::Value, key: &StateKey) -> Vec<u8> {
    let object = json.as_object_mut().expect("a JSON object");
    object.remove(MAC_MEMBER);
    if object.get("version") == Some(&FORMAT_VERSION.into()) {
        let canonical = serde_json::to_vec(&json).expect("JSON");
        let mac = key.mac(MAC_PURPOSE, &canonical);
        json[MAC_MEMBER] = mac.into();
    }
    serde_json::to_vec_pretty(&json).expect("JSON")
}
