//! The mailbox registry: which Microsoft 365 mailboxes the relay serves, where each one
//! gets its OAuth token (its own app registration, or another mailbox's token: see
//! [`Registration`]), and the verifier of its local password. It lives in
//! `{state_dir}/mailboxes.json`, written atomically and `0600` through [`crate::statefile`].
//!
//! An app registration authenticates with nothing (a public client), a client secret, or a
//! certificate ([`Credential`]). Client secrets and certificates' private keys are sealed
//! with the [`StateKey`] (see [`crate::oauth::seal`]) for the purposes
//! `client-secret:{address}` and `private-key:{address}`; they are sealed and opened only in
//! this module's conversions of [`MailboxRecord`]. The certificate itself is public and kept
//! in PEM next to its sealed key, so the relay does not depend on the files it came from.
//! Local passwords are kept as verifiers (hashes) and need no encryption.
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
//! [`Cloud`](crate::cloud::Cloud)'s names; `app_only` mailboxes get tokens with the
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
//! memory by [`Registry::load_and_migrate`] (the CLI, and the relay at start), which
//! rewrites them as version 5 once; [`Registry::load`] (the relay's re-reads) never writes
//! and takes only version 5. Every save writes version 5, under the state folder's lock.

mod integrity;

use integrity::Trust;
pub use integrity::{LockedRegistry, MAC_PURPOSE, seal_marker};

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::cloud::Cloud;
use crate::oauth::assertion::{AssertionAlg, CertificateCredential};
use crate::oauth::seal::{SealError, StateKey};
use crate::secret::ClientSecret;
use crate::statefile;
use crate::submission::Sending;

/// File name of the registry inside the state folder.
pub const REGISTRY_FILE: &str = "mailboxes.json";

/// The on-disk format version this build writes: version 4 with a MAC ([`integrity`]).
const FORMAT_VERSION: u32 = 5;

/// The fourth format, still read once (see [`integrity`]): secrets sealed, with clouds,
/// app-only mailboxes, certificate credentials and credential expiry, but no MAC.
const FORMAT_VERSION_4: u32 = 4;

/// The third format, still read: as version 4, without its new fields.
const FORMAT_VERSION_3: u32 = 3;

/// The second format, still read: as version 3, with client secrets in plain text.
const FORMAT_VERSION_2: u32 = 2;

/// The first format, still read: one app registration per mailbox, in flat fields.
const FORMAT_VERSION_1: u32 = 1;

/// Longest mailbox address, in octets (RFC 5321 §4.5.3.1.3 path limit minus the brackets).
pub const MAX_ADDRESS_LEN: usize = 254;

/// Longest local part (RFC 5321 §4.5.3.1.1).
const MAX_LOCAL_LEN: usize = 64;

/// Longest host name (RFC 1035 §2.3.4, without the trailing dot).
const MAX_HOST_LEN: usize = 253;

/// Longest domain label (RFC 1035 §2.3.4).
const MAX_LABEL_LEN: usize = 63;

/// One mailbox the relay serves.
#[derive(Clone)]
pub struct Mailbox {
    /// The mailbox address, lower-case (see [`normalize_address`]). Clients log in with it,
    /// and it is the `user=` of the XOAUTH2 login upstream.
    pub address: String,
    /// Where the mailbox's OAuth token comes from.
    pub registration: Registration,
    /// Checks the local password; `None` until one is set, and then no login succeeds.
    pub password: Option<PasswordVerifier>,
    /// When the mailbox was registered, in seconds since the Unix epoch.
    pub created: u64,
    /// How its SMTP submissions go out and which senders it may use.
    pub sending: Sending,
}

impl Mailbox {
    /// When the credential of the mailbox's own app registration expires, in seconds since
    /// the Unix epoch: a client secret's `--secret-expires`, a certificate's notAfter. `None`
    /// for a public client, a secret without a known expiry, and a mailbox that takes its
    /// token from another (whose credential is the delegate's).
    pub fn credential_expires(&self) -> Option<u64> {
        match &self.registration {
            Registration::App { credential, .. } => credential.expires(),
            Registration::TokenFrom { .. } => None,
        }
    }
}

impl fmt::Debug for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mailbox")
            .field("address", &self.address)
            .field("registration", &self.registration)
            .field("password", &self.password)
            .field("created", &self.created)
            .field("sending", &self.sending)
            .finish()
    }
}

/// Where a mailbox's OAuth token comes from. `Debug` shows no secret: [`ClientSecret`]
/// prints `[redacted]`, and so does a certificate's key.
#[derive(Debug, Clone)]
pub enum Registration {
    /// The mailbox's own app registration: its refresh token (or, app-only, its client
    /// credentials) is its own.
    App {
        /// The Entra tenant: a GUID, a verified domain, `organizations` or `common`.
        tenant: String,
        /// The application (client) id of the app registration, a GUID.
        client_id: String,
        /// How the app proves itself to Entra: nothing (public client), a secret, or a
        /// certificate.
        credential: Credential,
        /// The Microsoft cloud of the tenant: login host, scopes (see
        /// [`crate::cloud`]).
        cloud: Cloud,
        /// Tokens come from the client-credentials grant with the app's own permissions
        /// (PROTOCOL.md A5), with no user sign-in and no refresh token. Needs a secret or a
        /// certificate.
        app_only: bool,
    },
    /// A shared mailbox (or any other) that uses the token of the mailbox `delegate`,
    /// a user with rights on it (PROTOCOL.md A6).
    ///
    /// The relay logs in upstream with `user=` this mailbox and the delegate's access
    /// token, as Microsoft documents for delegated access to a shared mailbox. The
    /// delegate must have its own [`Registration::App`] (see [`Registry::token_owner`]).
    TokenFrom {
        /// The address of the mailbox whose token is used, lower-case.
        delegate: String,
    },
}

/// How an app registration authenticates to Entra's token endpoint.
#[derive(Debug, Clone)]
pub enum Credential {
    /// A public client: it sends no secret (AADSTS700025 otherwise).
    None,
    /// A client secret, and when it expires (Unix seconds) if the administrator said.
    Secret {
        secret: ClientSecret,
        expires: Option<u64>,
    },
    /// A certificate: each grant carries a client assertion signed with its key.
    Certificate(CertificateCredential),
}

impl Credential {
    /// Whether the app is a confidential client (it has a secret or a certificate).
    pub fn is_confidential(&self) -> bool {
        !matches!(self, Credential::None)
    }

    /// `public`, `secret` or `certificate`.
    pub fn kind(&self) -> &'static str {
        match self {
            Credential::None => "public",
            Credential::Secret { .. } => "secret",
            Credential::Certificate(_) => "certificate",
        }
    }

    /// When the credential expires, in seconds since the Unix epoch, if known.
    pub fn expires(&self) -> Option<u64> {
        match self {
            Credential::None => None,
            Credential::Secret { expires, .. } => *expires,
            Credential::Certificate(c) => Some(c.not_after()),
        }
    }
}

/// What the relay keeps to check a mailbox's local password (the password itself is never
/// stored). Created and checked by [`crate::auth`].
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "VerifierRecord", try_from = "VerifierRecord")]
pub enum PasswordVerifier {
    /// A password the relay generated (at least 128 random bits): HMAC-SHA256 of it, keyed
    /// with a random per-mailbox salt. Fast to check, and brute force is hopeless.
    Generated {
        /// The HMAC key, random per mailbox.
        salt: [u8; 32],
        /// HMAC-SHA256(salt, password).
        tag: [u8; 32],
    },
    /// A password the administrator chose: an argon2id PHC string (`$argon2id$v=19$...`).
    Argon2 {
        /// The PHC string, holding parameters, salt and hash.
        phc: String,
    },
}

impl fmt::Debug for PasswordVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PasswordVerifier::Generated { .. } => "PasswordVerifier::Generated([redacted])",
            PasswordVerifier::Argon2 { .. } => "PasswordVerifier::Argon2([redacted])",
        })
    }
}

/// The set of mailboxes, keyed by lower-case address.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    mailboxes: BTreeMap<String, Arc<Mailbox>>,
}

/// Why the registry could not be read, written or changed. Names files and addresses,
/// never a secret or a line of the file.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{}: {source}", file.display())]
    Io {
        file: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is corrupt ({why}); fix or restore it, it is never reset", file.display())]
    Corrupt { file: PathBuf, why: String },
    #[error(
        "cannot decrypt the {what} of {address} in {}: {why}. The file is never \
         reset: restore the key it was sealed with",
        file.display()
    )]
    Undecryptable {
        file: PathBuf,
        address: String,
        /// `client secret` or `private key`.
        what: &'static str,
        why: SealError,
    },
    #[error(
        "{} is refused: {why}. It is never used nor reset: restore it from a backup, or check \
         it (`m365-relay mailbox list` shows what it holds once resealed) and run \
         `m365-relay state reseal --trust-current-file`",
        file.display()
    )]
    Unauthentic { file: PathBuf, why: SealError },
    #[error(
        "{} is refused: it has no MAC (format version {version}), but the registry of this key \
         was sealed before ({} exists), so an older or edited file was put in its place. It \
         is never used nor reset: restore it from a backup, or check it and run \
         `m365-relay state reseal --trust-current-file`",
        file.display(),
        marker.display()
    )]
    ReplacedAfterSealing {
        file: PathBuf,
        version: u32,
        marker: PathBuf,
    },
    #[error(
        "{} has no MAC (format version {version}) and is not sealed on its own: {why}. Check \
         it and run `m365-relay state reseal --trust-current-file`",
        file.display()
    )]
    CannotMigrate {
        file: PathBuf,
        version: u32,
        why: String,
    },
    #[error("cannot seal the {what} of {address}: {why}")]
    Seal {
        address: String,
        what: &'static str,
        why: SealError,
    },
    #[error("the certificate of {address} cannot be stored: {why}")]
    Certificate { address: String, why: String },
    #[error(
        "mailbox {0} is app-only (client credentials) but its app has no client secret or \
         certificate"
    )]
    AppOnlyWithoutCredential(String),
    #[error("`{address}` is not a valid mailbox address: {why}")]
    InvalidAddress { address: String, why: &'static str },
    #[error("mailbox {0} is already registered")]
    Duplicate(String),
    #[error("mailbox {0} is not registered")]
    UnknownMailbox(String),
    #[error("mailbox {0} cannot take its token from itself")]
    OwnDelegate(String),
    #[error("mailbox {mailbox} takes its token from {delegate}, which is not registered")]
    MissingDelegate { mailbox: String, delegate: String },
    #[error(
        "mailbox {mailbox} takes its token from {delegate}, which takes its own from {next}: \
         only a mailbox with its own app registration can lend its token"
    )]
    DelegateChain {
        mailbox: String,
        delegate: String,
        /// Where the delegate takes its token from.
        next: String,
    },
}

// === impl Registry ===

impl Registry {
    /// Reads `{state_dir}/mailboxes.json` (format version 4, or 3, 2 or 1 converted in
    /// memory), opening client secrets and private keys with `key`. A missing file is an empty registry; a
    /// file that cannot be parsed, or a secret that does not open, is an error naming the
    /// file. Never writes. A [`Registration::TokenFrom`] whose delegate is missing is not an
    /// error here: [`Registry::token_owner`] reports it when the mailbox is used.
    ///
    /// Only a sealed file (version 5) whose MAC verifies is taken: an older version is
    /// refused here (the relay's start and the CLI migrate it once, see [`integrity`]).
    pub fn load(state_dir: &Path, key: &StateKey) -> Result<Registry, RegistryError> {
        let file = state_dir.join(REGISTRY_FILE);
        match read_file(&file, key, Trust::Verify)? {
            None => Ok(Registry::default()),
            Some(read) if read.version == FORMAT_VERSION => Ok(read.registry),
            Some(read) => Err(match integrity::seal_marker(key).filter(|m| m.exists()) {
                Some(marker) => RegistryError::ReplacedAfterSealing {
                    file,
                    version: read.version,
                    marker,
                },
                None => RegistryError::CannotMigrate {
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
    /// the state folder's lock. To change the registry on disk, use [`Registry::locked`]
    /// instead: this writes over whatever changed since this registry was read.
    pub fn save(&self, state_dir: &Path, key: &StateKey) -> Result<(), RegistryError> {
        let _lock = integrity::lock(state_dir)?;
        self.write(state_dir, key)
    }

    /// [`Registry::save`] without taking the lock (the caller holds it).
    fn write(&self, state_dir: &Path, key: &StateKey) -> Result<(), RegistryError> {
        let file = state_dir.join(REGISTRY_FILE);
        let disk = RegistryFile {
            version: FORMAT_VERSION,
            mailboxes: self
                .iter()
                .map(|m| MailboxRecord::from_mailbox(m, key))
                .collect::<Result<_, _>>()?,
        };
        let bytes = integrity::seal_document(&disk, key).map_err(|e| RegistryError::Io {
            file: file.clone(),
            source: io::Error::other(e),
        })?;
        statefile::write_private(&file, &bytes)
            .map_err(|source| RegistryError::Io { file, source })?;
        integrity::note_sealed(key);
        Ok(())
    }

    /// The mailbox with this address, compared case-insensitively.
    pub fn get(&self, address: &str) -> Option<&Mailbox> {
        self.get_arc(address).map(|m| &**m)
    }

    /// Like [`Registry::get`], as a shared handle that outlives the registry.
    pub fn get_arc(&self, address: &str) -> Option<&Arc<Mailbox>> {
        self.mailboxes.get(&address.to_ascii_lowercase())
    }

    /// Adds a mailbox; its address (and its delegate's) is validated and lower-cased.
    /// Refuses an address that is already registered, a mailbox that takes its token
    /// from itself, and an app-only mailbox without a secret or certificate. Whether the delegate is registered is not checked (the file may list a
    /// shared mailbox before its delegate); [`Registry::token_owner`] checks that.
    pub fn insert(&mut self, mut m: Mailbox) -> Result<(), RegistryError> {
        m.address = normalize_address(&m.address)?;
        match &mut m.registration {
            Registration::TokenFrom { delegate } => {
                *delegate = normalize_address(delegate)?;
                if *delegate == m.address {
                    return Err(RegistryError::OwnDelegate(m.address));
                }
            }
            Registration::App {
                credential,
                app_only: true,
                ..
            } if !credential.is_confidential() => {
                return Err(RegistryError::AppOnlyWithoutCredential(m.address));
            }
            Registration::App { .. } => {}
        }
        if self.mailboxes.contains_key(&m.address) {
            return Err(RegistryError::Duplicate(m.address));
        }
        self.mailboxes.insert(m.address.clone(), Arc::new(m));
        Ok(())
    }

    /// Removes the mailbox with this address (case-insensitive) and returns it. Mailboxes
    /// that take their token from it are left as they are; check [`Registry::dependents`]
    /// first to avoid that.
    pub fn remove(&mut self, address: &str) -> Option<Mailbox> {
        self.mailboxes
            .remove(&address.to_ascii_lowercase())
            .map(Arc::unwrap_or_clone)
    }

    /// Sets (or with `None`, clears) the local password verifier of a registered mailbox.
    pub fn set_password(
        &mut self,
        address: &str,
        password: Option<PasswordVerifier>,
    ) -> Result<(), RegistryError> {
        let m = self.mailbox_mut(address)?;
        m.password = password;
        Ok(())
    }

    /// Replaces the credential of a mailbox's own app registration (a mailbox that takes
    /// its token from another has none).
    pub fn set_credential(
        &mut self,
        address: &str,
        credential: Credential,
    ) -> Result<(), RegistryError> {
        let m = self.mailbox_mut(address)?;
        match &mut m.registration {
            Registration::App { credential: c, .. } => {
                *c = credential;
                Ok(())
            }
            Registration::TokenFrom { .. } => Err(RegistryError::UnknownMailbox(format!(
                "{address} (no app registration)"
            ))),
        }
    }

    /// The registered mailbox `address`, to change (copied first if shared).
    fn mailbox_mut(&mut self, address: &str) -> Result<&mut Mailbox, RegistryError> {
        self.mailboxes
            .get_mut(&address.to_ascii_lowercase())
            .map(Arc::make_mut)
            .ok_or_else(|| RegistryError::UnknownMailbox(address.to_owned()))
    }

    /// Replaces a mailbox's sending settings.
    pub fn set_sending(&mut self, address: &str, sending: Sending) -> Result<(), RegistryError> {
        let m = self.mailbox_mut(address)?;
        m.sending = sending;
        Ok(())
    }

    /// The mailbox whose refresh token serves `mailbox`: `mailbox` itself when it has its
    /// own app registration, else its delegate. This is the mailbox to pass to
    /// [`crate::oauth::cache::TokenCache::access_token`]; the XOAUTH2 `user=` stays
    /// `mailbox.address` (PROTOCOL.md A6).
    ///
    /// Fails when the delegate is not registered, or itself takes its token from another
    /// mailbox (there are no chains: each token has one owner with an app registration).
    pub fn token_owner(&self, mailbox: &Mailbox) -> Result<Arc<Mailbox>, RegistryError> {
        let delegate = match &mailbox.registration {
            Registration::App { .. } => return Ok(self.handle_of(mailbox)),
            Registration::TokenFrom { delegate } => delegate,
        };
        let owner = self
            .get_arc(delegate)
            .ok_or_else(|| RegistryError::MissingDelegate {
                mailbox: mailbox.address.clone(),
                delegate: delegate.clone(),
            })?;
        match &owner.registration {
            Registration::App { .. } => Ok(owner.clone()),
            Registration::TokenFrom { delegate: next } => Err(RegistryError::DelegateChain {
                mailbox: mailbox.address.clone(),
                delegate: owner.address.clone(),
                next: next.clone(),
            }),
        }
    }

    /// The mailboxes that take their token from `address` (case-insensitive), ordered by
    /// address.
    pub fn dependents(&self, address: &str) -> Vec<&Mailbox> {
        let address = address.to_ascii_lowercase();
        self.iter()
            .filter(|m| {
                matches!(&m.registration, Registration::TokenFrom { delegate } if *delegate == address)
            })
            .collect()
    }

    /// A shared handle to `mailbox`: the registry's own when `mailbox` is the one it holds,
    /// else a copy (a mailbox from an older read of the registry).
    fn handle_of(&self, mailbox: &Mailbox) -> Arc<Mailbox> {
        match self.get_arc(&mailbox.address) {
            Some(held) if std::ptr::eq(&**held, mailbox) => held.clone(),
            _ => Arc::new(mailbox.clone()),
        }
    }

    /// All mailboxes, ordered by address.
    pub fn iter(&self) -> impl Iterator<Item = &Mailbox> {
        self.mailboxes.values().map(|m| &**m)
    }

    /// How many mailboxes are registered.
    pub fn len(&self) -> usize {
        self.mailboxes.len()
    }

    /// Whether no mailbox is registered.
    pub fn is_empty(&self) -> bool {
        self.mailboxes.is_empty()
    }
}

/// Validates a mailbox address and lower-cases it: `local@domain`, ASCII, at most 254
/// octets, an unquoted local part of letters, digits and ``.!#$%&'*+-=?^_{|}~`` (no
/// leading, trailing or double dot), a domain of at least two letter-digit-hyphen labels.
/// The result is also a safe file name (no `/`, no leading `.`).
pub fn normalize_address(s: &str) -> Result<String, RegistryError> {
    let bad = |why| RegistryError::InvalidAddress {
        address: s.chars().filter(|c| !c.is_control()).take(300).collect(),
        why,
    };
    if !s.is_ascii() {
        return Err(bad("only ASCII addresses are supported"));
    }
    if s.len() > MAX_ADDRESS_LEN {
        return Err(bad("longer than 254 characters"));
    }
    let (local, domain) = s.split_once('@').ok_or_else(|| bad("no `@`"))?;
    if local.is_empty() || local.len() > MAX_LOCAL_LEN {
        return Err(bad("the part before `@` must be 1 to 64 characters"));
    }
    let local_ok = |c: char| c.is_ascii_alphanumeric() || ".!#$%&'*+-=?^_{|}~".contains(c);
    if !local.chars().all(local_ok) {
        return Err(bad(
            "the part before `@` has a character that is not allowed",
        ));
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err(bad("misplaced `.` before `@`"));
    }
    if !is_host_name(domain) {
        return Err(bad("the domain is not a host name with a `.`"));
    }
    Ok(s.to_ascii_lowercase())
}

/// Whether `s` is a DNS host name of at least two labels: letters, digits and inner
/// hyphens, each label 1 to 63 characters, 253 in all.
pub fn is_host_name(s: &str) -> bool {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= MAX_LABEL_LEN
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    s.len() <= MAX_HOST_LEN && s.contains('.') && s.split('.').all(label_ok)
}

/// A serde_json error's category and position: its message could quote the file, and the
/// file holds secrets.
pub(crate) fn json_why(e: &serde_json::Error) -> String {
    let what = match e.classify() {
        serde_json::error::Category::Io => "read error",
        serde_json::error::Category::Syntax => "not valid JSON",
        serde_json::error::Category::Data => "unexpected structure or value",
        serde_json::error::Category::Eof => "truncated",
    };
    format!("{what} at line {} column {}", e.line(), e.column())
}

// === on-disk format ===

/// A registry file as read: the registry and the format version it was in.
struct ReadFile {
    registry: Registry,
    version: u32,
}

/// Reads and converts `file`; `None` when it does not exist. A version 5 file's MAC is
/// checked unless `trust` says not to; older versions have none (the caller decides).
fn read_file(file: &Path, key: &StateKey, trust: Trust) -> Result<Option<ReadFile>, RegistryError> {
    let bytes = match std::fs::read(file) {
        Ok(b) => Zeroizing::new(b),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(RegistryError::Io {
                file: file.to_owned(),
                source,
            });
        }
    };
    let corrupt = |why: String| RegistryError::Corrupt {
        file: file.to_owned(),
        why,
    };
    let parsed = parse_file(&bytes, key, trust).map_err(|e| match e {
        integrity::OpenError::Corrupt(why) => corrupt(why),
        integrity::OpenError::Unauthentic(why) => RegistryError::Unauthentic {
            file: file.to_owned(),
            why,
        },
    })?;
    let (version, mailboxes) = match parsed {
        Parsed::Sealed(version, records) => {
            let mailboxes = records
                .into_iter()
                .map(|r| {
                    r.into_mailbox(key, version).map_err(|e| match e {
                        OpenError::Corrupt(why) => corrupt(why),
                        OpenError::Sealed { address, what, why } => RegistryError::Undecryptable {
                            file: file.to_owned(),
                            address,
                            what,
                            why,
                        },
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            (version, mailboxes)
        }
        Parsed::Plain(version, records) => {
            let mailboxes = records
                .into_iter()
                .map(|r| r.into_mailbox().map_err(corrupt))
                .collect::<Result<Vec<_>, _>>()?;
            (version, mailboxes)
        }
    };
    let mut registry = Registry::default();
    for mailbox in mailboxes {
        registry
            .insert(mailbox)
            .map_err(|e| corrupt(e.to_string()))?;
    }
    Ok(Some(ReadFile { registry, version }))
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

/// `mailboxes.json`, version 5 without its `mac`, 4, and 3 (which lacks some of its fields).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    version: u32,
    mailboxes: Vec<MailboxRecord>,
}

/// One mailbox as stored (versions 4 and 3).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MailboxRecord {
    address: String,
    registration: RegistrationRecord,
    password: Option<PasswordVerifier>,
    created: u64,
    #[serde(default, skip_serializing_if = "Sending::is_default")]
    sending: Sending,
}

/// A [`Registration`] as stored (version 4): the client secret and the certificate's key
/// sealed. Version 3 has only `tenant`, `client_id` and `client_secret_sealed`; the other
/// fields take their defaults.
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
enum RegistrationRecord {
    App {
        tenant: String,
        client_id: String,
        #[serde(default)]
        cloud: Cloud,
        #[serde(default)]
        app_only: bool,
        client_secret_sealed: Option<String>,
        #[serde(default)]
        certificate: Option<CertificateRecord>,
        #[serde(default)]
        credential_expires: Option<u64>,
    },
    TokenFrom {
        delegate: String,
    },
}

/// A certificate credential as stored: the certificate in PEM (public), its RSA private
/// key in PKCS#8 DER, sealed.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CertificateRecord {
    pem: String,
    private_key_sealed: String,
    alg: AssertionAlg,
}

/// Why a version 4 or 3 record gave no mailbox.
enum OpenError {
    Corrupt(String),
    Sealed {
        address: String,
        what: &'static str,
        why: SealError,
    },
}

/// What a mailbox's client secret is sealed for: it can't be moved to another mailbox.
fn secret_purpose(address: &str) -> String {
    format!("client-secret:{address}")
}

/// What a mailbox's certificate private key is sealed for.
fn private_key_purpose(address: &str) -> String {
    format!("private-key:{address}")
}

const CLIENT_SECRET: &str = "client secret";
const PRIVATE_KEY: &str = "private key";

impl MailboxRecord {
    /// The record of `m`, its client secret sealed with `key`.
    fn from_mailbox(m: &Mailbox, key: &StateKey) -> Result<Self, RegistryError> {
        let sealing = |what| {
            move |why| RegistryError::Seal {
                address: m.address.clone(),
                what,
                why,
            }
        };
        let registration = match &m.registration {
            Registration::App {
                tenant,
                client_id,
                credential,
                cloud,
                app_only,
            } => {
                let (client_secret_sealed, certificate) = match credential {
                    Credential::None => (None, None),
                    Credential::Secret { secret, .. } => {
                        let sealed = key
                            .seal(&secret_purpose(&m.address), secret.expose().as_bytes())
                            .map_err(sealing(CLIENT_SECRET))?;
                        (Some(sealed), None)
                    }
                    Credential::Certificate(c) => {
                        let pkcs8 =
                            c.private_key_pkcs8()
                                .map_err(|e| RegistryError::Certificate {
                                    address: m.address.clone(),
                                    why: e.to_string(),
                                })?;
                        let sealed = key
                            .seal(&private_key_purpose(&m.address), &pkcs8)
                            .map_err(sealing(PRIVATE_KEY))?;
                        let record = CertificateRecord {
                            pem: c.certificate_pem(),
                            private_key_sealed: sealed,
                            alg: c.alg(),
                        };
                        (None, Some(record))
                    }
                };
                RegistrationRecord::App {
                    tenant: tenant.clone(),
                    client_id: client_id.clone(),
                    cloud: *cloud,
                    app_only: *app_only,
                    client_secret_sealed,
                    certificate,
                    credential_expires: credential.expires(),
                }
            }
            Registration::TokenFrom { delegate } => RegistrationRecord::TokenFrom {
                delegate: delegate.clone(),
            },
        };
        Ok(Self {
            address: m.address.clone(),
            registration,
            password: m.password.clone(),
            created: m.created,
            sending: m.sending.clone(),
        })
    }

    /// The mailbox of a record read from a file of format `version` (4 or 3).
    fn into_mailbox(self, key: &StateKey, version: u32) -> Result<Mailbox, OpenError> {
        let address = lower_case_address(&self.address).map_err(OpenError::Corrupt)?;
        let corrupt = |why: &str| OpenError::Corrupt(format!("{address}: {why}"));
        let open = |purpose: String, sealed: &str, field: &str, what| {
            key.open(&purpose, sealed).map_err(|why| match why {
                SealError::Malformed(_) => corrupt(&format!("{field} is {why}")),
                why => OpenError::Sealed {
                    address: address.clone(),
                    what,
                    why,
                },
            })
        };
        let registration = match self.registration {
            RegistrationRecord::App {
                tenant,
                client_id,
                cloud,
                app_only,
                client_secret_sealed,
                certificate,
                credential_expires,
            } => {
                let newer = cloud != Cloud::Global
                    || app_only
                    || certificate.is_some()
                    || credential_expires.is_some();
                if version == FORMAT_VERSION_3 && newer {
                    return Err(corrupt(
                        "format version 3 has no cloud, app_only, certificate or credential_expires",
                    ));
                }
                let credential = match (client_secret_sealed, certificate) {
                    (Some(_), Some(_)) => {
                        return Err(corrupt("both a client secret and a certificate"));
                    }
                    (None, None) if credential_expires.is_some() => {
                        return Err(corrupt("credential_expires without a credential"));
                    }
                    (None, None) => Credential::None,
                    (Some(sealed), None) => {
                        let plain = open(
                            secret_purpose(&address),
                            &sealed,
                            "client_secret_sealed",
                            CLIENT_SECRET,
                        )?;
                        let text = std::str::from_utf8(&plain)
                            .map_err(|_| corrupt("the client secret is not text"))?;
                        if text.is_empty() {
                            return Err(corrupt("empty client secret"));
                        }
                        Credential::Secret {
                            secret: ClientSecret::new(text),
                            expires: credential_expires,
                        }
                    }
                    (None, Some(cert)) => {
                        let pkcs8 = open(
                            private_key_purpose(&address),
                            &cert.private_key_sealed,
                            "private_key_sealed",
                            PRIVATE_KEY,
                        )?;
                        let der =
                            rustls_pki_types::CertificateDer::pem_slice_iter(cert.pem.as_bytes())
                                .next()
                                .and_then(Result::ok)
                                .ok_or_else(|| corrupt("the certificate PEM cannot be read"))?;
                        let credential =
                            CertificateCredential::from_der(der.to_vec(), &pkcs8, cert.alg)
                                .map_err(|e| corrupt(&format!("certificate: {e}")))?;
                        Credential::Certificate(credential)
                    }
                };
                if tenant.is_empty() || client_id.is_empty() {
                    return Err(corrupt("tenant and client_id must not be empty"));
                }
                Registration::App {
                    tenant,
                    client_id,
                    credential,
                    cloud,
                    app_only,
                }
            }
            RegistrationRecord::TokenFrom { delegate } => {
                token_from(&address, &delegate).map_err(OpenError::Corrupt)?
            }
        };
        Ok(Mailbox {
            address,
            registration,
            password: self.password,
            created: self.created,
            sending: self.sending,
        })
    }
}

/// A checked [`Registration::App`] of a version 2 or 1 file (global, delegated);
/// `client_secret` moves into a [`ClientSecret`].
fn app_registration(
    address: &str,
    tenant: String,
    client_id: String,
    client_secret: Option<String>,
) -> Result<Registration, String> {
    if tenant.is_empty() || client_id.is_empty() {
        return Err(format!("{address}: tenant and client_id must not be empty"));
    }
    let credential = match client_secret {
        Some(mut s) if s.is_empty() => {
            zeroize::Zeroize::zeroize(&mut s);
            return Err(format!("{address}: empty client_secret"));
        }
        Some(s) => Credential::Secret {
            secret: ClientSecret::new(s),
            expires: None,
        },
        None => Credential::None,
    };
    Ok(Registration::App {
        tenant,
        client_id,
        credential,
        cloud: Cloud::Global,
        app_only: false,
    })
}

/// A checked [`Registration::TokenFrom`].
fn token_from(address: &str, delegate: &str) -> Result<Registration, String> {
    let delegate = lower_case_address(delegate).map_err(|why| format!("{address}: {why}"))?;
    Ok(Registration::TokenFrom { delegate })
}

/// An address from the file: valid, and already lower-case as [`Registry::save`] writes it.
fn lower_case_address(stored: &str) -> Result<String, String> {
    let address = normalize_address(stored).map_err(|e| e.to_string())?;
    if address != stored {
        return Err(format!("address `{stored}` is not lower-case"));
    }
    Ok(address)
}

/// `mailboxes.json`, version 2.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFileV2 {
    /// Read by [`VersionProbe`]; listed so that `deny_unknown_fields` lets it through.
    #[serde(rename = "version")]
    _version: u32,
    mailboxes: Vec<MailboxRecordV2>,
}

/// One mailbox as version 2 stored it: the client secret in plain text.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MailboxRecordV2 {
    address: String,
    registration: RegistrationRecordV2,
    password: Option<PasswordVerifier>,
    created: u64,
}

/// A [`Registration`] as version 2 stored it.
#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
enum RegistrationRecordV2 {
    App {
        tenant: String,
        client_id: String,
        client_secret: Option<String>,
    },
    TokenFrom {
        delegate: String,
    },
}

impl Drop for RegistrationRecordV2 {
    fn drop(&mut self) {
        if let RegistrationRecordV2::App {
            client_secret: Some(s),
            ..
        } = self
        {
            zeroize::Zeroize::zeroize(s);
        }
    }
}

impl MailboxRecordV2 {
    fn into_mailbox(mut self) -> Result<Mailbox, String> {
        let address = lower_case_address(&self.address)?;
        let registration = match &mut self.registration {
            RegistrationRecordV2::App {
                tenant,
                client_id,
                client_secret,
            } => app_registration(
                &address,
                std::mem::take(tenant),
                std::mem::take(client_id),
                client_secret.take(),
            )?,
            RegistrationRecordV2::TokenFrom { delegate } => token_from(&address, delegate)?,
        };
        Ok(Mailbox {
            address,
            registration,
            password: self.password.take(),
            created: self.created,
            sending: Sending::default(),
        })
    }
}

/// `mailboxes.json`, version 1.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFileV1 {
    /// Read by [`VersionProbe`]; listed so that `deny_unknown_fields` lets it through.
    #[serde(rename = "version")]
    _version: u32,
    mailboxes: Vec<MailboxRecordV1>,
}

/// One mailbox as version 1 stored it: always its own app registration.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MailboxRecordV1 {
    address: String,
    tenant: String,
    client_id: String,
    client_secret: Option<String>,
    password: Option<PasswordVerifier>,
    created: u64,
}

impl Drop for MailboxRecordV1 {
    fn drop(&mut self) {
        if let Some(s) = self.client_secret.as_mut() {
            zeroize::Zeroize::zeroize(s);
        }
    }
}

impl MailboxRecordV1 {
    /// The same mailbox as a version 2 record; the secret moves, it is not copied.
    fn upgrade(mut self) -> MailboxRecordV2 {
        MailboxRecordV2 {
            address: std::mem::take(&mut self.address),
            registration: RegistrationRecordV2::App {
                tenant: std::mem::take(&mut self.tenant),
                client_id: std::mem::take(&mut self.client_id),
                client_secret: self.client_secret.take(),
            },
            password: self.password.take(),
            created: self.created,
        }
    }
}

/// A [`PasswordVerifier`] as stored: binary values in standard base64.
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
enum VerifierRecord {
    Generated { salt: String, hmac: String },
    Argon2 { phc: String },
}

impl From<PasswordVerifier> for VerifierRecord {
    fn from(v: PasswordVerifier) -> Self {
        match v {
            PasswordVerifier::Generated { salt, tag } => VerifierRecord::Generated {
                salt: BASE64.encode(salt),
                hmac: BASE64.encode(tag),
            },
            PasswordVerifier::Argon2 { phc } => VerifierRecord::Argon2 { phc },
        }
    }
}

impl TryFrom<VerifierRecord> for PasswordVerifier {
    type Error = &'static str;

    fn try_from(r: VerifierRecord) -> Result<Self, Self::Error> {
        let bytes32 = |s: &str| -> Option<[u8; 32]> { BASE64.decode(s).ok()?.try_into().ok() };
        match r {
            VerifierRecord::Generated { salt, hmac } => Ok(PasswordVerifier::Generated {
                salt: bytes32(&salt).ok_or("password salt is not 32 bytes of base64")?,
                tag: bytes32(&hmac).ok_or("password hmac is not 32 bytes of base64")?,
            }),
            VerifierRecord::Argon2 { phc } => {
                argon2::password_hash::phc::PasswordHash::new(&phc)
                    .map_err(|_| "password phc is not a valid PHC string")?;
                Ok(PasswordVerifier::Argon2 { phc })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT_ID: &str = "00000000-0000-0000-0000-000000000001";

    /// The key the tests seal the registry with.
    fn key() -> StateKey {
        StateKey::from_bytes(&[5; 32])
    }

    /// A mailbox with its own confidential app registration.
    fn mailbox(address: &str) -> Mailbox {
        Mailbox {
            address: address.into(),
            registration: Registration::App {
                tenant: "contoso.onmicrosoft.com".into(),
                client_id: CLIENT_ID.into(),
                credential: Credential::Secret {
                    secret: ClientSecret::new("s3cr3t~value"),
                    expires: None,
                },
                cloud: Cloud::Global,
                app_only: false,
            },
            password: Some(PasswordVerifier::Generated {
                salt: [7; 32],
                tag: [9; 32],
            }),
            created: 1_700_000_000,
            sending: Default::default(),
        }
    }

    /// A mailbox that takes its token from `delegate`.
    fn shared(address: &str, delegate: &str) -> Mailbox {
        Mailbox {
            registration: Registration::TokenFrom {
                delegate: delegate.into(),
            },
            password: None,
            ..mailbox(address)
        }
    }

    /// A key from a key file under `dir`, so that the registry has a seal marker.
    fn file_key(dir: &Path) -> StateKey {
        StateKey::load_with(None, &dir.join("keys/state.key")).unwrap()
    }

    /// Writes `json` as the registry file, as if changed with [`key`] (see
    /// [`integrity::seal_value`]).
    fn write_json(file: &Path, json: &serde_json::Value) {
        std::fs::write(file, integrity::seal_value(json.clone(), &key())).unwrap();
    }

    fn secret_of(m: &Mailbox) -> Option<&str> {
        match &m.registration {
            Registration::App {
                credential: Credential::Secret { secret, .. },
                ..
            } => Some(secret.expose()),
            Registration::App { .. } => None,
            Registration::TokenFrom { .. } => panic!("{} has no app registration", m.address),
        }
    }

    #[test]
    fn addresses_are_validated_and_lower_cased() {
        assert_eq!(
            normalize_address("Alice.B+x@Contoso.COM").unwrap(),
            "alice.b+x@contoso.com"
        );
        for bad in [
            "",
            "alice",
            "alice@",
            "@contoso.com",
            "alice@localhost",
            "al ice@contoso.com",
            "alice@contoso..com",
            ".alice@contoso.com",
            "a..b@contoso.com",
            "a/b@contoso.com",
            "alice@-contoso.com",
            "alice@contoso.com\n",
            "älice@contoso.com",
            "a\"b@contoso.com",
            "a@b@contoso.com",
            "alice@contoso_x.com",
        ] {
            assert!(normalize_address(bad).is_err(), "{bad:?}");
        }
        let long = format!(
            "{}@{}.com",
            "a".repeat(64),
            "b".repeat(63) + &".c".repeat(95)
        );
        assert!(long.len() > 254);
        assert!(normalize_address(&long).is_err());
    }

    #[test]
    fn save_and_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Registry::load(dir.path(), &key()).unwrap().is_empty());
        let mut r = Registry::default();
        r.insert(mailbox("Alice@Contoso.com")).unwrap();
        let mut public = mailbox("bob@contoso.com");
        if let Registration::App { credential, .. } = &mut public.registration {
            *credential = Credential::None;
        }
        public.password = Some(PasswordVerifier::Argon2 {
            phc: "$argon2id$v=19$m=19456,t=2,p=1$+xnx0ZGIT/+csoED+8Dv9w$PZLTMDklR0KtnxmvMT81wrOTTPtJMA10EnLaW9D/MlE".into(),
        });
        r.insert(public).unwrap();
        r.insert(shared("Help@Contoso.com", "ALICE@contoso.com"))
            .unwrap();
        r.save(dir.path(), &key()).unwrap();

        let text = std::fs::read_to_string(dir.path().join(REGISTRY_FILE)).unwrap();
        assert!(text.contains("\"version\": 5"), "{text}");
        assert!(text.contains("\"mac\": \"hs256:"), "{text}");
        assert!(!text.contains("s3cr3t"), "the secret is sealed: {text}");
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        let sealed = json["mailboxes"][0]["registration"]["client_secret_sealed"]
            .as_str()
            .unwrap();
        assert!(sealed.starts_with("xc20p1:"), "{sealed}");
        assert!(json["mailboxes"][0]["registration"]["client_secret"].is_null());
        assert!(json["mailboxes"][1]["registration"]["client_secret_sealed"].is_null());
        assert!(text.contains("\"kind\": \"generated\""), "{text}");
        assert!(text.contains("\"kind\": \"app\""), "{text}");
        assert!(text.contains("\"kind\": \"token_from\""), "{text}");
        let back = Registry::load(dir.path(), &key()).unwrap();
        assert_eq!(back.len(), 3);
        let alice = back.get("ALICE@contoso.com").unwrap();
        assert_eq!(alice.address, "alice@contoso.com");
        assert_eq!(secret_of(alice), Some("s3cr3t~value"));
        assert!(matches!(
            &alice.registration,
            Registration::App { tenant, client_id, .. }
                if tenant == "contoso.onmicrosoft.com" && client_id == CLIENT_ID
        ));
        assert_eq!(alice.password, mailbox("x@y.z").password);
        let bob = back.get("bob@contoso.com").unwrap();
        assert_eq!(secret_of(bob), None);
        assert!(matches!(
            bob.password,
            Some(PasswordVerifier::Argon2 { .. })
        ));
        let help = back.get("help@contoso.com").unwrap();
        assert!(matches!(
            &help.registration,
            Registration::TokenFrom { delegate } if delegate == "alice@contoso.com"
        ));
        assert!(help.password.is_none());
    }

    /// A version 1 registry file: `alice` confidential, `bob` public.
    const VERSION_1: &str = r#"{
  "version": 1,
  "mailboxes": [
    {
      "address": "alice@contoso.com",
      "tenant": "contoso.onmicrosoft.com",
      "client_id": "00000000-0000-0000-0000-000000000001",
      "client_secret": "s3cr3t~value",
      "password": { "kind": "generated", "salt": "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=",
                    "hmac": "CQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQk=" },
      "created": 1700000000
    },
    {
      "address": "bob@contoso.com",
      "tenant": "common",
      "client_id": "00000000-0000-0000-0000-000000000002",
      "client_secret": null,
      "password": null,
      "created": 1700000001
    }
  ]
}
"#;

    /// A version 2 registry file: `alice` confidential, `help` takes her token.
    const VERSION_2: &str = r#"{
  "version": 2,
  "mailboxes": [
    { "address": "alice@contoso.com",
      "registration": { "kind": "app", "tenant": "contoso.onmicrosoft.com",
                        "client_id": "00000000-0000-0000-0000-000000000001",
                        "client_secret": "s3cr3t~value" },
      "password": null, "created": 1700000000 },
    { "address": "help@contoso.com",
      "registration": { "kind": "token_from", "delegate": "alice@contoso.com" },
      "password": null, "created": 1700000001 }
  ]
}
"#;

    #[test]
    fn a_version_1_file_is_read_and_migrated_to_version_5() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(REGISTRY_FILE);
        let key = file_key(dir.path());
        std::fs::write(&file, VERSION_1).unwrap();
        let e = Registry::load(dir.path(), &key).unwrap_err();
        assert!(matches!(e, RegistryError::CannotMigrate { .. }), "{e}");
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            VERSION_1,
            "load does not rewrite the file"
        );
        let r = Registry::load_and_migrate(dir.path(), &key).unwrap();
        assert_eq!(r.len(), 2);
        let alice = r.get("alice@contoso.com").unwrap();
        assert_eq!(secret_of(alice), Some("s3cr3t~value"));
        assert_eq!(alice.password, mailbox("x@y.z").password);
        assert_eq!(alice.created, 1_700_000_000);
        let bob = r.get("bob@contoso.com").unwrap();
        assert!(matches!(
            &bob.registration,
            Registration::App { tenant, client_id, credential: Credential::None, cloud: Cloud::Global, app_only: false }
                if tenant == "common" && client_id.ends_with("0002")
        ));
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(!text.contains("s3cr3t"), "{text}");
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["version"], 5);
        assert_eq!(json["mailboxes"][0]["registration"]["kind"], "app");
        assert!(json["mailboxes"][0].get("tenant").is_none());
        let again = Registry::load(dir.path(), &key).unwrap();
        assert_eq!(
            secret_of(again.get("alice@contoso.com").unwrap()),
            Some("s3cr3t~value")
        );
        assert!(again.get("bob@contoso.com").is_some());
    }

    /// The registry of [`mailbox`] as format version 4 wrote it (no `mac`).
    fn version_4() -> String {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Registry::default();
        r.insert(mailbox("alice@contoso.com")).unwrap();
        r.insert(mailbox("bob@contoso.com")).unwrap();
        r.save(dir.path(), &key()).unwrap();
        let text = std::fs::read_to_string(dir.path().join(REGISTRY_FILE)).unwrap();
        let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
        json["version"] = 4.into();
        json.as_object_mut().unwrap().remove("mac").unwrap();
        serde_json::to_string_pretty(&json).unwrap()
    }

    #[test]
    fn a_legacy_file_is_migrated_once_then_refused() {
        let v4 = version_4();
        for legacy in [VERSION_1, VERSION_2, v4.as_str()] {
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join(REGISTRY_FILE);
            // The same key bytes as key(), from a file: a seal marker has a place.
            let key_file = dir.path().join("keys/state.key");
            statefile::create_private(
                &key_file,
                format!("{}\n", BASE64.encode([5u8; 32])).as_bytes(),
            )
            .unwrap();
            let key = file_key(dir.path());
            let marker = seal_marker(&key).unwrap();
            assert_eq!(marker, dir.path().join("keys/state.key.sealed"));
            std::fs::write(&file, legacy).unwrap();
            let r = Registry::load_and_migrate(dir.path(), &key).unwrap();
            assert_eq!(
                secret_of(r.get("alice@contoso.com").unwrap()),
                Some("s3cr3t~value")
            );
            let text = std::fs::read_to_string(&file).unwrap();
            assert!(text.contains("\"version\": 5"), "{text}");
            assert!(!text.contains("s3cr3t"), "no plain text left: {text}");
            assert!(marker.exists(), "the marker says the registry was sealed");
            assert_eq!(Registry::load(dir.path(), &key).unwrap().len(), 2);

            // A current file is not rewritten.
            let before = std::fs::metadata(&file).unwrap().modified().unwrap();
            std::fs::File::open(&file)
                .unwrap()
                .set_modified(before - std::time::Duration::from_secs(60))
                .unwrap();
            let stamp = std::fs::metadata(&file).unwrap().modified().unwrap();
            Registry::load_and_migrate(dir.path(), &key).unwrap();
            assert_eq!(std::fs::metadata(&file).unwrap().modified().unwrap(), stamp);

            // The legacy file put back (by anyone who can write the state folder) is refused,
            // by every way in, and left as it is.
            std::fs::write(&file, legacy).unwrap();
            for e in [
                Registry::load(dir.path(), &key).unwrap_err(),
                Registry::load_and_migrate(dir.path(), &key).unwrap_err(),
                Registry::locked(dir.path(), &key).unwrap_err(),
            ] {
                assert!(
                    matches!(e, RegistryError::ReplacedAfterSealing { .. }),
                    "{e}"
                );
                let shown = e.to_string();
                assert!(shown.contains("it has no MAC"), "{shown}");
                assert!(shown.contains("state.key.sealed exists"), "{shown}");
                assert!(
                    shown.contains("state reseal --trust-current-file"),
                    "{shown}"
                );
                assert!(!shown.contains("s3cr3t"), "{shown}");
            }
            assert_eq!(std::fs::read_to_string(&file).unwrap(), legacy);
            // The administrator's way out.
            assert_eq!(Registry::reseal(dir.path(), &key).unwrap().len(), 2);
            assert_eq!(Registry::load(dir.path(), &key).unwrap().len(), 2);
        }
    }

    #[test]
    fn without_a_place_for_the_marker_a_legacy_file_waits_for_the_administrator() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(REGISTRY_FILE);
        let v4 = version_4();
        std::fs::write(&file, &v4).unwrap();
        // key() is like M365_RELAY_KEY: no key file, so no marker.
        let e = Registry::load_and_migrate(dir.path(), &key()).unwrap_err();
        assert!(matches!(e, RegistryError::CannotMigrate { .. }), "{e}");
        assert!(e.to_string().contains("M365_RELAY_KEY"), "{e}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), v4, "untouched");
        Registry::reseal(dir.path(), &key()).unwrap();
        assert_eq!(Registry::load(dir.path(), &key()).unwrap().len(), 2);
    }

    #[test]
    fn any_change_without_the_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(REGISTRY_FILE);
        let mut r = Registry::default();
        r.insert(mailbox("alice@contoso.com")).unwrap();
        let mut bob = mailbox("bob@contoso.com");
        bob.password = Some(PasswordVerifier::Generated {
            salt: [1; 32],
            tag: [2; 32],
        });
        r.insert(bob).unwrap();
        r.insert(shared("help@contoso.com", "alice@contoso.com"))
            .unwrap();
        r.save(dir.path(), &key()).unwrap();
        let good: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        type Edit = fn(&mut serde_json::Value);
        let edits: [(&str, Edit); 6] = [
            ("bob's verifier onto alice", |j| {
                j["mailboxes"][0]["password"] = j["mailboxes"][1]["password"].clone();
            }),
            ("another delegate", |j| {
                j["mailboxes"][2]["registration"]["delegate"] = "bob@contoso.com".into();
            }),
            ("app_only", |j| {
                j["mailboxes"][0]["registration"]["app_only"] = true.into()
            }),
            ("allowed senders", |j| {
                j["mailboxes"][1]["sending"] =
                    serde_json::json!({"allowed_from": ["ceo@contoso.com"]});
            }),
            ("a mailbox removed", |j| {
                j["mailboxes"].as_array_mut().unwrap().remove(0);
            }),
            ("the MAC removed", |j| {
                j.as_object_mut().unwrap().remove("mac");
            }),
        ];
        for (what, edit) in edits {
            let mut json = good.clone();
            edit(&mut json);
            std::fs::write(&file, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
            let e = Registry::load(dir.path(), &key()).unwrap_err();
            assert!(
                matches!(e, RegistryError::Unauthentic { .. }),
                "{what}: {e}"
            );
            let shown = e.to_string();
            assert!(
                shown.contains("mailboxes.json is refused"),
                "{what}: {shown}"
            );
            assert!(
                shown.contains("restore it from a backup"),
                "{what}: {shown}"
            );
            assert!(
                Registry::load_and_migrate(dir.path(), &key()).is_err(),
                "{what}"
            );
        }
        // White space and the order of members are not content.
        let mut json = good.clone();
        let mac = json.as_object_mut().unwrap().remove("mac").unwrap();
        let reordered = format!(
            "{{\"mac\":{mac},\"mailboxes\":{},\"version\":5}}",
            json["mailboxes"]
        );
        std::fs::write(&file, reordered).unwrap();
        assert_eq!(Registry::load(dir.path(), &key()).unwrap().len(), 3);
    }

    #[test]
    fn a_secret_that_does_not_open_is_an_error_never_a_reset() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(REGISTRY_FILE);
        let mut r = Registry::default();
        r.insert(mailbox("alice@contoso.com")).unwrap();
        r.insert(mailbox("bob@contoso.com")).unwrap();
        r.save(dir.path(), &key()).unwrap();
        let saved = std::fs::read_to_string(&file).unwrap();

        // Another key: the MAC says so first.
        let other = StateKey::from_bytes(&[6; 32]);
        for e in [
            Registry::load(dir.path(), &other).unwrap_err(),
            Registry::load_and_migrate(dir.path(), &other).unwrap_err(),
        ] {
            assert!(matches!(&e, RegistryError::Unauthentic { .. }), "{e:?}");
            let shown = e.to_string();
            assert!(shown.contains("mailboxes.json is refused"), "{shown}");
            assert!(
                shown.contains("or the key changed (M365_RELAY_KEY"),
                "{shown}"
            );
        }
        // Sealed again as it is, by an administrator with the other key: the secrets still
        // do not open.
        let e = Registry::reseal(dir.path(), &other).unwrap_err();
        assert!(
            matches!(&e, RegistryError::Undecryptable { address, .. }
            if address == "alice@contoso.com"),
            "{e:?}"
        );
        let shown = e.to_string();
        assert!(
            shown.starts_with("cannot decrypt the client secret of alice@contoso.com in "),
            "{shown}"
        );
        assert!(
            shown.contains("wrong key (M365_RELAY_KEY or key_file changed?)"),
            "{shown}"
        );
        assert_eq!(std::fs::read_to_string(&file).unwrap(), saved, "untouched");

        // A sealed secret moved to another mailbox does not open either.
        let mut json: serde_json::Value = serde_json::from_str(&saved).unwrap();
        let alice = json["mailboxes"][0]["registration"]["client_secret_sealed"].clone();
        json["mailboxes"][1]["registration"]["client_secret_sealed"] = alice;
        write_json(&file, &json);
        let e = Registry::load(dir.path(), &key()).unwrap_err();
        assert!(
            matches!(&e, RegistryError::Undecryptable { address, .. }
            if address == "bob@contoso.com"),
            "{e:?}"
        );
    }

    #[test]
    fn the_token_owner_is_the_mailbox_itself_or_its_delegate() {
        let mut r = Registry::default();
        r.insert(mailbox("alice@contoso.com")).unwrap();
        r.insert(shared("help@contoso.com", "Alice@Contoso.com"))
            .unwrap();
        r.insert(shared("sales@contoso.com", "alice@contoso.com"))
            .unwrap();

        let alice = r.get_arc("alice@contoso.com").unwrap();
        let owner = r.token_owner(alice).unwrap();
        assert!(Arc::ptr_eq(&owner, alice), "the registry's own handle");
        for address in ["help@contoso.com", "sales@contoso.com"] {
            let owner = r.token_owner(r.get(address).unwrap()).unwrap();
            assert!(Arc::ptr_eq(&owner, alice), "{address}");
        }
        // A mailbox from an older read of the registry still has an owner.
        let stale = mailbox("alice@contoso.com");
        assert_eq!(r.token_owner(&stale).unwrap().address, "alice@contoso.com");

        let dependents: Vec<&str> = r
            .dependents("ALICE@contoso.com")
            .iter()
            .map(|m| m.address.as_str())
            .collect();
        assert_eq!(dependents, ["help@contoso.com", "sales@contoso.com"]);
        assert!(r.dependents("help@contoso.com").is_empty());
        assert!(r.dependents("nobody@contoso.com").is_empty());
    }

    #[test]
    fn a_missing_delegate_or_a_chain_has_no_token_owner() {
        let mut r = Registry::default();
        r.insert(mailbox("alice@contoso.com")).unwrap();
        r.insert(shared("help@contoso.com", "alice@contoso.com"))
            .unwrap();
        r.insert(shared("chain@contoso.com", "help@contoso.com"))
            .unwrap();
        r.insert(shared("orphan@contoso.com", "gone@contoso.com"))
            .unwrap();

        let e = r
            .token_owner(r.get("orphan@contoso.com").unwrap())
            .unwrap_err();
        assert!(
            matches!(&e, RegistryError::MissingDelegate { mailbox, delegate }
                if mailbox == "orphan@contoso.com" && delegate == "gone@contoso.com"),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "mailbox orphan@contoso.com takes its token from gone@contoso.com, which is not registered"
        );
        let e = r
            .token_owner(r.get("chain@contoso.com").unwrap())
            .unwrap_err();
        assert!(
            matches!(&e, RegistryError::DelegateChain { mailbox, delegate, next }
                if mailbox == "chain@contoso.com"
                    && delegate == "help@contoso.com"
                    && next == "alice@contoso.com"),
            "{e:?}"
        );

        let e = r
            .insert(shared("self@contoso.com", "SELF@contoso.com"))
            .unwrap_err();
        assert!(matches!(e, RegistryError::OwnDelegate(_)), "{e:?}");
        let e = r
            .insert(shared("x@contoso.com", "not an address"))
            .unwrap_err();
        assert!(matches!(e, RegistryError::InvalidAddress { .. }), "{e:?}");
    }

    #[test]
    fn duplicates_and_unknowns_are_refused() {
        let mut r = Registry::default();
        r.insert(mailbox("alice@contoso.com")).unwrap();
        let e = r.insert(mailbox("ALICE@contoso.com")).unwrap_err();
        assert!(matches!(e, RegistryError::Duplicate(_)));
        assert!(r.set_password("nobody@contoso.com", None).is_err());
        r.set_password("Alice@contoso.com", None).unwrap();
        assert!(r.get("alice@contoso.com").unwrap().password.is_none());
        assert_eq!(
            r.remove("ALICE@CONTOSO.COM").unwrap().address,
            "alice@contoso.com"
        );
        assert!(r.is_empty());
    }

    #[test]
    fn a_corrupt_file_is_an_error_that_names_it_and_no_secret() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(REGISTRY_FILE);
        let cases = [
            "{not json",
            r#"{"version": 6, "mailboxes": []}"#,
            r#"{"mailboxes": []}"#,
            r#"{"version": 3, "mailboxes": [{"address": "a@b.cd", "registration": {"kind": "app", "tenant": "t", "client_id": "c", "client_secret": "hunter2"}, "password": null, "created": 0}]}"#,
            r#"{"version": 3, "mailboxes": [{"address": "a@b.cd", "registration": {"kind": "app", "tenant": "t", "client_id": "c", "client_secret_sealed": "hunter2"}, "password": null, "created": 0}]}"#,
            r#"{"version": 3, "mailboxes": [{"address": "a@b.cd", "registration": {"kind": "app", "tenant": "", "client_id": "c", "client_secret_sealed": null}, "password": null, "created": 0}]}"#,
            r#"{"version": 3, "mailboxes": [{"address": "A@b.cd", "registration": {"kind": "token_from", "delegate": "x@b.cd"}, "password": null, "created": 0}]}"#,
            r#"{"version": 2, "mailboxes": [{"address": "a@b.cd", "registration": {"kind": "app", "tenant": "t", "client_id": "c", "client_secret_sealed": "hunter2"}, "password": null, "created": 0}]}"#,
            r#"{"version": 2, "mailboxes": [{"address": "a@b.cd", "tenant": "t", "client_id": "c", "client_secret": "hunter2", "password": null, "created": 0}]}"#,
            r#"{"version": 2, "mailboxes": [{"address": "a@b.cd", "registration": {"kind": "app", "tenant": "t", "client_id": "c", "client_secret": "hunter2", "cloud": "x"}, "password": null, "created": 0}]}"#,
            r#"{"version": 2, "mailboxes": [{"address": "a@b.cd", "registration": {"kind": "app", "tenant": "", "client_id": "c", "client_secret": "hunter2"}, "password": null, "created": 0}]}"#,
            r#"{"version": 2, "mailboxes": [{"address": "a@b.cd", "registration": {"kind": "token_from", "delegate": "A@b.cd"}, "password": null, "created": 0}]}"#,
            r#"{"version": 2, "mailboxes": [{"address": "a@b.cd", "registration": {"kind": "token_from", "delegate": "a@b.cd"}, "password": null, "created": 0}]}"#,
            r#"{"version": 2, "mailboxes": [{"address": "a@b.cd", "registration": {"kind": "token_from"}, "password": null, "created": 0}]}"#,
            r#"{"version": 2, "mailboxes": [{"address": "a@b.cd", "registration": {"kind": "hunter2"}, "password": null, "created": 0}]}"#,
            r#"{"version": 1, "mailboxes": [{"address": "a@b.c", "tenant": "t", "client_id": "c", "client_secret": null, "password": "hunter2", "created": 0}]}"#,
            r#"{"version": 1, "mailboxes": [{"address": "A@b.c", "tenant": "t", "client_id": "c", "client_secret": "hunter2", "password": null, "created": 0}]}"#,
        ];
        for text in cases {
            std::fs::write(&file, text).unwrap();
            let e = Registry::load(dir.path(), &key()).unwrap_err().to_string();
            assert!(e.contains("mailboxes.json is corrupt"), "{text}: {e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
        std::fs::write(&file, r#"{"version": 6, "mailboxes": []}"#).unwrap();
        let e = Registry::load(dir.path(), &key()).unwrap_err().to_string();
        assert!(e.contains("format version 6 is not supported"), "{e}");
        std::fs::write(&file, r#"{"version": 5, "mailboxes": []}"#).unwrap();
        let e = Registry::load(dir.path(), &key()).unwrap_err().to_string();
        assert!(
            e.contains("is refused: not a sealed value (it has no `mac`)"),
            "{e}"
        );
    }

    #[test]
    fn debug_hides_secret_and_verifier() {
        let shown = format!("{:?}", mailbox("alice@contoso.com"));
        assert!(shown.contains("alice@contoso.com"), "{shown}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(
            !shown.contains("[7, 7") && !shown.contains("[9, 9"),
            "{shown}"
        );
        assert!(
            shown.contains("PasswordVerifier::Generated([redacted])"),
            "{shown}"
        );
        assert!(shown.contains("ClientSecret([redacted])"), "{shown}");
        let shown = format!("{:?}", shared("help@contoso.com", "alice@contoso.com"));
        assert!(
            shown.contains(r#"TokenFrom { delegate: "alice@contoso.com" }"#),
            "{shown}"
        );
    }

    /// An app-only mailbox in `cloud` with the test certificate.
    fn with_certificate(address: &str, cloud: Cloud) -> Mailbox {
        Mailbox {
            registration: Registration::App {
                tenant: "contoso.onmicrosoft.us".into(),
                client_id: CLIENT_ID.into(),
                credential: Credential::Certificate(crate::oauth::testing::certificate_credential(
                    AssertionAlg::Rs256,
                )),
                cloud,
                app_only: true,
            },
            ..mailbox(address)
        }
    }

    #[test]
    fn certificates_clouds_and_expiry_round_trip_with_the_key_sealed() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Registry::default();
        r.insert(with_certificate("robot@contoso.com", Cloud::UsGov))
            .unwrap();
        let mut alice = mailbox("alice@contoso.com");
        if let Registration::App {
            credential: Credential::Secret { expires, .. },
            cloud,
            ..
        } = &mut alice.registration
        {
            *expires = Some(1_790_000_000);
            *cloud = Cloud::China;
        }
        r.insert(alice).unwrap();
        r.save(dir.path(), &key()).unwrap();

        let text = std::fs::read_to_string(dir.path().join(REGISTRY_FILE)).unwrap();
        assert!(!text.contains("PRIVATE KEY"), "the key is sealed: {text}");
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        let alice = &json["mailboxes"][0]["registration"];
        assert_eq!(alice["cloud"], "china");
        assert_eq!(alice["app_only"], false);
        assert_eq!(alice["credential_expires"], 1_790_000_000);
        assert!(alice["certificate"].is_null());
        let robot = &json["mailboxes"][1]["registration"];
        assert_eq!(robot["cloud"], "usgov");
        assert_eq!(robot["app_only"], true);
        assert!(robot["client_secret_sealed"].is_null());
        assert_eq!(
            robot["credential_expires"],
            crate::oauth::testing::TEST_CERT_NOT_AFTER
        );
        let cert = robot["certificate"].clone();
        assert_eq!(cert["alg"], "rs256");
        assert!(
            cert["pem"]
                .as_str()
                .unwrap()
                .starts_with("-----BEGIN CERTIFICATE-----\n")
        );
        assert!(
            cert["private_key_sealed"]
                .as_str()
                .unwrap()
                .starts_with("xc20p1:")
        );

        let back = Registry::load(dir.path(), &key()).unwrap();
        let alice = back.get("alice@contoso.com").unwrap();
        assert_eq!(alice.credential_expires(), Some(1_790_000_000));
        assert_eq!(secret_of(alice), Some("s3cr3t~value"));
        let robot = back.get("robot@contoso.com").unwrap();
        assert_eq!(
            robot.credential_expires(),
            Some(crate::oauth::testing::TEST_CERT_NOT_AFTER)
        );
        match &robot.registration {
            Registration::App {
                credential: Credential::Certificate(c),
                cloud: Cloud::UsGov,
                app_only: true,
                ..
            } => {
                let original = crate::oauth::testing::certificate_credential(AssertionAlg::Rs256);
                assert_eq!(c.thumbprint_hex(), original.thumbprint_hex());
                assert_eq!(c.alg(), AssertionAlg::Rs256);
                assert_eq!(
                    *c.private_key_pkcs8().unwrap(),
                    *original.private_key_pkcs8().unwrap()
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(mailbox("x@y.z").credential_expires().is_none());
        assert!(
            shared("s@y.z", "alice@contoso.com")
                .credential_expires()
                .is_none()
        );
        let shown = format!("{robot:?}");
        assert!(shown.contains("key: \"[redacted]\""), "{shown}");

        // The key is sealed for its mailbox: moved to another one, it does not open.
        let mut json = json;
        json["mailboxes"][0]["registration"]["certificate"] = cert;
        json["mailboxes"][0]["registration"]["client_secret_sealed"] = serde_json::Value::Null;
        write_json(&dir.path().join(REGISTRY_FILE), &json);
        let e = Registry::load(dir.path(), &key()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot decrypt the private key of alice@contoso.com in "),
            "{e}"
        );
    }

    #[test]
    fn an_app_only_mailbox_needs_a_credential() {
        let mut r = Registry::default();
        let mut m = mailbox("robot@contoso.com");
        if let Registration::App {
            credential,
            app_only,
            ..
        } = &mut m.registration
        {
            *credential = Credential::None;
            *app_only = true;
        }
        let e = r.insert(m).unwrap_err();
        assert!(
            matches!(&e, RegistryError::AppOnlyWithoutCredential(a) if a == "robot@contoso.com"),
            "{e:?}"
        );
        assert!(r.is_empty());
    }

    #[test]
    fn a_version_3_file_is_read_as_global_and_delegated_and_sealed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(REGISTRY_FILE);
        let key = file_key(dir.path());
        let mut r = Registry::default();
        r.insert(mailbox("alice@contoso.com")).unwrap();
        r.save(dir.path(), &key).unwrap();
        // The same file as version 3 wrote it: without the fields version 4 added.
        let mut json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        json["version"] = 3.into();
        json.as_object_mut().unwrap().remove("mac").unwrap();
        let registration = json["mailboxes"][0]["registration"]
            .as_object_mut()
            .unwrap();
        for field in ["cloud", "app_only", "certificate", "credential_expires"] {
            registration.remove(field).unwrap();
        }
        let v3 = serde_json::to_string_pretty(&json).unwrap();
        std::fs::write(&file, &v3).unwrap();

        // Saved before with this key: the marker is there, and the file is refused.
        std::fs::remove_file(seal_marker(&key).unwrap()).unwrap();
        let back = Registry::load_and_migrate(dir.path(), &key).unwrap();
        let alice = back.get("alice@contoso.com").unwrap();
        assert!(matches!(
            &alice.registration,
            Registration::App {
                cloud: Cloud::Global,
                app_only: false,
                credential: Credential::Secret { expires: None, .. },
                ..
            }
        ));
        assert_eq!(secret_of(alice), Some("s3cr3t~value"));
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.contains("\"version\": 5"), "sealed: {text}");
    }

    #[test]
    fn inconsistent_credentials_are_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(REGISTRY_FILE);
        let mut r = Registry::default();
        r.insert(with_certificate("robot@contoso.com", Cloud::Global))
            .unwrap();
        r.save(dir.path(), &key()).unwrap();
        let good: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let edits: [(&str, serde_json::Value, &str); 6] = [
            (
                "client_secret_sealed",
                "xc20p1:AAAA".into(),
                "both a client secret and a certificate",
            ),
            (
                "certificate",
                serde_json::Value::Null,
                "credential_expires without a credential",
            ),
            ("cloud", "mars".into(), "unexpected structure"),
            ("alg", "es256".into(), "unexpected structure"),
            (
                "pem",
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into(),
                "certificate",
            ),
            ("version", 3.into(), "format version 3 has no cloud"),
        ];
        for (field, value, expected) in edits {
            let mut json = good.clone();
            match field {
                "version" => json["version"] = value,
                "alg" | "pem" => json["mailboxes"][0]["registration"]["certificate"][field] = value,
                _ => json["mailboxes"][0]["registration"][field] = value,
            }
            write_json(&file, &json);
            let e = Registry::load(dir.path(), &key()).unwrap_err().to_string();
            assert!(e.contains("mailboxes.json is corrupt"), "{field}: {e}");
            assert!(e.contains(expected), "{field}: {e}");
        }
        let mut json = good.clone();
        let registration = &mut json["mailboxes"][0]["registration"];
        registration["certificate"] = serde_json::Value::Null;
        registration["credential_expires"] = serde_json::Value::Null;
        write_json(&file, &json);
        let e = Registry::load(dir.path(), &key()).unwrap_err().to_string();
        assert!(e.contains("mailboxes.json is corrupt"), "{e}");
        assert!(
            e.contains("robot@contoso.com is app-only (client credentials) but its app has no"),
            "{e}"
        );
    }
}
