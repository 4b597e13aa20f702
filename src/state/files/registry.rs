//! The mailbox registry in `{state_dir}/mailboxes.json`, written atomically and `0600`
//! (see [`crate::state::private`]). Client secrets and certificates' private keys are sealed with
//! the [`StateKey`] (see [`crate::state::seal`]) for the purposes `client-secret:{address}`
//! and `private-key:{address}`; they are sealed and opened only in the conversions of
//! `MailboxRecord`. The certificate itself is public and kept in PEM next to its sealed
//! key, so the relay does not depend on the files it came from. Local passwords are kept
//! as verifiers (hashes) and need no encryption.
//!
//! # File format
//!
//! ```json
//! {
//!   "version": 4,
//!   "mailboxes": [
//!     { "address": "alice@contoso.com",
//!       "registration": { "kind": "app", "tenant": "contoso.com", "client_id": "<guid>",
//!                         "cloud": "global", "app_only": false,
//!                         "client_secret_sealed": "xc20p1:<b64>", "certificate": null,
//!                         "credential_expires": 1790000000 },
//!       "password": { "kind": "generated", "salt": "<b64>", "hmac": "<b64>" },
//!       "created": 1700000000 },
//!     { "address": "robot@contoso.com",
//!       "registration": { "kind": "app", "tenant": "contoso.com", "client_id": "<guid>",
//!                         "cloud": "usgov", "app_only": true,
//!                         "client_secret_sealed": null,
//!                         "certificate": { "pem": "-----BEGIN CERTIFICATE-----...",
//!                                          "private_key_sealed": "xc20p1:<b64>",
//!                                          "alg": "ps256" },
//!                         "credential_expires": 1830000000 },
//!       "password": null, "created": 1700000002 },
//!     { "address": "shared@contoso.com",
//!       "registration": { "kind": "token_from", "delegate": "alice@contoso.com" },
//!       "password": null, "created": 1700000001 }
//!   ]
//! }
//! ```
//!
//! `client_secret_sealed` and `certificate` are both `null` for a public client; never both
//! set. `private_key_sealed` is the certificate's RSA key in PKCS#8 DER, sealed.
//! `credential_expires` (Unix seconds) is when the credential stops working: for a secret,
//! the date the administrator gave (`--secret-expires`); for a certificate, a copy of its
//! notAfter (the relay reads the certificate's own). `cloud` is one of
//! `Cloud`'s names; `app_only` mailboxes get tokens with the
//! client-credentials grant and never have a refresh token.
//!
//! Version 5 is version 4 with a MAC over the whole file, under a key derived from the
//! state key: see [`integrity`], which also says how files without one (versions 1 to 4)
//! are migrated once and refused after.
//!
//! Version 3 is version 4 without `cloud`, `app_only`, `certificate` and
//! `credential_expires` (read as global, delegated, no certificate, no expiry). Older
//! versions held the client secret in plain text: version 2 as `client_secret` in the same
//! layout, version 1 with `tenant`, `client_id` and `client_secret` directly in each
//! mailbox (there were only app registrations). All are still read and converted in
//! memory by [`super::migrate::load_and_migrate`] (the CLI, and the relay at start), which
//! rewrites them as version 5 once; [`load`] (the relay's re-reads) never writes
//! and takes only version 5. Every save writes version 5, under the state folder's lock.

use std::io;
use std::path::Path;

use serde::Deserialize;
use zeroize::Zeroizing;

use super::integrity::{self, Trust};
use super::legacy::{MailboxRecordV1, MailboxRecordV2, RegistryFileV1, RegistryFileV2};
use super::lock::{self, StateLock};
use super::records::{
    FORMAT_VERSION, FORMAT_VERSION_1, FORMAT_VERSION_2, FORMAT_VERSION_3, FORMAT_VERSION_4,
    MailboxRecord, OpenError, RegistryFile, json_why,
};
use crate::mailbox::{Mailbox, Registry};
use crate::state::error::RegistryStoreError;
use crate::state::private;
use crate::state::seal::StateKey;

/// File name of the registry inside the state folder.
pub const REGISTRY_FILE: &str = "mailboxes.json";

/// Reads `{state_dir}/mailboxes.json` (format version 4, or 3, 2 or 1 converted in
/// memory), opening client secrets and private keys with `key`. A missing file is an empty registry; a
/// file that cannot be parsed, or a secret that does not open, is an error naming the
/// file. Never writes. A [`crate::mailbox::Registration::TokenFrom`] whose delegate is missing is not an
/// error here: [`Registry::token_owner`] reports it when the mailbox is used.
///
/// Only a sealed file (version 5) whose MAC verifies is taken: an older version is
/// refused here (the relay's start and the CLI migrate it once, see [`integrity`]).
pub fn load(state_dir: &Path, key: &StateKey) -> Result<Registry, RegistryStoreError> {
    let file = state_dir.join(REGISTRY_FILE);
    match read_file(&file, key, Trust::Verify)? {
        None => Ok(Registry::default()),
        Some(read) if read.version == FORMAT_VERSION => Ok(read.registry),
        Some(read) => Err(match integrity::seal_marker(key).filter(|m| m.exists()) {
            Some(marker) => RegistryStoreError::ReplacedAfterSealing {
                file,
                version: read.version,
                marker,
            },
            None => RegistryStoreError::CannotMigrate {
                file,
                version: read.version,
                why: "a running relay does not migrate it; restart it, or run \
                      `m365-relay mailbox list`"
                    .into(),
            },
        }),
    }
}

/// Writes the registry to `{state_dir}/mailboxes.json` in format version 5 (client
/// secrets and private keys sealed with `key`, and a MAC), atomically and `0600`, under
/// the state folder's lock. To change the registry on disk, use [`super::migrate::locked`]
/// instead: this writes over whatever changed since this registry was read.
pub fn save(
    registry: &Registry,
    state_dir: &Path,
    key: &StateKey,
) -> Result<(), RegistryStoreError> {
    let _lock = lock(state_dir)?;
    write(registry, state_dir, key)
}

/// [`save`] without taking the lock (the caller holds it).
pub(super) fn write(
    registry: &Registry,
    state_dir: &Path,
    key: &StateKey,
) -> Result<(), RegistryStoreError> {
    let file = state_dir.join(REGISTRY_FILE);
    let bytes = seal_registry(registry, key, &file)?;
    private::write_private(&file, &bytes)
        .map_err(|source| RegistryStoreError::Io { file, source })?;
    integrity::note_sealed(key);
    Ok(())
}

/// `registry` as a sealed document of format version 5, exactly what `mailboxes.json` holds
/// (secrets sealed with `key`, and the MAC): also what another backend stores. `origin`
/// names where it goes, in errors.
pub fn seal_registry(
    registry: &Registry,
    key: &StateKey,
    origin: &Path,
) -> Result<Zeroizing<Vec<u8>>, RegistryStoreError> {
    let disk = RegistryFile {
        version: FORMAT_VERSION,
        mailboxes: registry
            .iter()
            .map(|m| MailboxRecord::from_mailbox(m, key))
            .collect::<Result<_, _>>()?,
    };
    integrity::seal_document(&disk, key).map_err(|e| RegistryStoreError::Io {
        file: origin.to_owned(),
        source: io::Error::other(e),
    })
}

/// The registry of a document [`seal_registry`] made, its MAC verified with `key` and its
/// secrets opened; any other document (another format version, a MAC that does not verify)
/// is refused. `origin` names where it comes from, in errors.
pub fn open_sealed_registry(
    bytes: &[u8],
    key: &StateKey,
    origin: &Path,
) -> Result<Registry, RegistryStoreError> {
    let read = parse_bytes(bytes, origin, key, Trust::Verify)?;
    if read.version != FORMAT_VERSION {
        return Err(RegistryStoreError::Corrupt {
            file: origin.to_owned(),
            why: format!(
                "format version {} where only a sealed registry (version {FORMAT_VERSION}) \
                 is taken",
                read.version
            ),
        });
    }
    Ok(read.registry)
}

/// The state folder's lock, as a registry error.
pub(super) fn lock(state_dir: &Path) -> Result<StateLock, RegistryStoreError> {
    StateLock::acquire(state_dir).map_err(|source| RegistryStoreError::Io {
        file: lock::lock_path(state_dir),
        source,
    })
}

/// A registry file as read: the registry and the format version it was in.
pub(super) struct ReadFile {
    pub(super) registry: Registry,
    pub(super) version: u32,
}

/// [`open_sealed_registry`] without checking the MAC, for `state reseal`: the administrator
/// vouches for the document as it is. Secrets must still open with `key`.
pub fn open_registry_trusting(
    bytes: &[u8],
    key: &StateKey,
    origin: &Path,
) -> Result<Registry, RegistryStoreError> {
    parse_bytes(bytes, origin, key, Trust::CurrentFile).map(|read| read.registry)
}

/// Reads and converts `file`; `None` when it does not exist. A version 5 file's MAC is
/// checked unless `trust` says not to; older versions have none (the caller decides).
pub(super) fn read_file(
    file: &Path,
    key: &StateKey,
    trust: Trust,
) -> Result<Option<ReadFile>, RegistryStoreError> {
    let bytes = match std::fs::read(file) {
        Ok(b) => Zeroizing::new(b),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(RegistryStoreError::Io {
                file: file.to_owned(),
                source,
            });
        }
    };
    parse_bytes(&bytes, file, key, trust).map(Some)
}

/// The registry in `bytes` (read from `file`), converted from its format version.
fn parse_bytes(
    bytes: &[u8],
    file: &Path,
    key: &StateKey,
    trust: Trust,
) -> Result<ReadFile, RegistryStoreError> {
    let corrupt = |why: String| RegistryStoreError::Corrupt {
        file: file.to_owned(),
        why,
    };
    let parsed = parse_file(bytes, key, trust).map_err(|e| match e {
        integrity::OpenError::Corrupt(why) => corrupt(why),
        integrity::OpenError::Unauthentic(why) => RegistryStoreError::Unauthentic {
            file: file.to_owned(),
            why,
        },
    })?;
    let (version, mailboxes) = mailboxes_of(parsed, file, key)?;
    let mut registry = Registry::default();
    for mailbox in mailboxes {
        registry
            .insert(mailbox)
            .map_err(|e| corrupt(e.to_string()))?;
    }
    Ok(ReadFile { registry, version })
}

/// The mailboxes of `parsed` (read from `file`), secrets opened with `key`, and the
/// format version they were in.
fn mailboxes_of(
    parsed: Parsed,
    file: &Path,
    key: &StateKey,
) -> Result<(u32, Vec<Mailbox>), RegistryStoreError> {
    let corrupt = |why: String| RegistryStoreError::Corrupt {
        file: file.to_owned(),
        why,
    };
    match parsed {
        Parsed::Sealed(version, records) => {
            let mailboxes = records
                .into_iter()
                .map(|r| {
                    r.into_mailbox(key, version).map_err(|e| match e {
                        OpenError::Corrupt(why) => corrupt(why),
                        OpenError::Sealed { address, what, why } => {
                            RegistryStoreError::Undecryptable {
                                file: file.to_owned(),
                                address,
                                what,
                                why,
                            }
                        }
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok((version, mailboxes))
        }
        Parsed::Plain(version, records) => {
            let mailboxes = records
                .into_iter()
                .map(|r| r.into_mailbox().map_err(corrupt))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((version, mailboxes))
        }
    }
}

/// The records of a registry file of any supported version.
enum Parsed {
    /// Version 5, 4 or 3: secrets sealed.
    Sealed(u32, Vec<MailboxRecord>),
    /// Version 2, or 1 converted to 2: client secrets in plain text.
    Plain(u32, Vec<MailboxRecordV2>),
}

fn parse_file(bytes: &[u8], key: &StateKey, trust: Trust) -> Result<Parsed, integrity::OpenError> {
    use integrity::OpenError::Corrupt;
    let probe: VersionProbe = serde_json::from_slice(bytes).map_err(|e| Corrupt(json_why(&e)))?;
    match probe.version {
        FORMAT_VERSION => {
            let file = integrity::open_document(bytes, key, trust)?;
            if file.version != FORMAT_VERSION {
                return Err(Corrupt("the version changed while reading".into()));
            }
            Ok(Parsed::Sealed(FORMAT_VERSION, file.mailboxes))
        }
        version @ (FORMAT_VERSION_4 | FORMAT_VERSION_3) => {
            let file: RegistryFile =
                serde_json::from_slice(bytes).map_err(|e| Corrupt(json_why(&e)))?;
            Ok(Parsed::Sealed(version, file.mailboxes))
        }
        FORMAT_VERSION_2 => {
            let file: RegistryFileV2 =
                serde_json::from_slice(bytes).map_err(|e| Corrupt(json_why(&e)))?;
            Ok(Parsed::Plain(FORMAT_VERSION_2, file.mailboxes))
        }
        FORMAT_VERSION_1 => {
            let file: RegistryFileV1 =
                serde_json::from_slice(bytes).map_err(|e| Corrupt(json_why(&e)))?;
            let records = file
                .mailboxes
                .into_iter()
                .map(MailboxRecordV1::upgrade)
                .collect();
            Ok(Parsed::Plain(FORMAT_VERSION_1, records))
        }
        other => Err(Corrupt(format!(
            "format version {other} is not supported (this build reads versions \
             {FORMAT_VERSION_1} to {FORMAT_VERSION}; was it written by a newer m365-relay?)"
        ))),
    }
}

/// Just the version of `mailboxes.json`, to pick the format to read the rest with.
#[derive(Deserialize)]
struct VersionProbe {
    version: u32,
}
