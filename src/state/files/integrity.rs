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
use std::path::PathBuf;

use zeroize::Zeroizing;

use super::records::{RegistryFile, json_why};
use crate::state::private;
use crate::state::seal::{KeySource, SealError, StateKey};

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
pub(super) fn ensure_marker(key: &StateKey) -> io::Result<bool> {
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

/// `json` as a registry file whose change was made with `key`: its `mac` recomputed when it
/// is version 5, removed otherwise.
#[cfg(test)]
pub(crate) fn seal_value(mut json: serde_json::Value, key: &StateKey) -> Vec<u8> {
    let object = json.as_object_mut().expect("a JSON object");
    object.remove(MAC_MEMBER);
    if object.get("version") == Some(&super::records::FORMAT_VERSION.into()) {
        let canonical = serde_json::to_vec(&json).expect("JSON");
        let mac = key.mac(MAC_PURPOSE, &canonical);
        json[MAC_MEMBER] = mac.into();
    }
    serde_json::to_vec_pretty(&json).expect("JSON")
}
