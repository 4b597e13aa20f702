//! The mailbox registry: which Microsoft 365 mailboxes the relay serves, the app
//! registration each one uses, and the verifier of its local password. It lives in
//! `{state_dir}/mailboxes.json`, written atomically and `0600` through [`crate::statefile`].
//!
//! Everything secret that goes to or comes from that file passes through [`MailboxRecord`]
//! and its two conversions in this module, so encryption at rest can be added in one place.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};

use crate::secret::ClientSecret;
use crate::statefile;

/// File name of the registry inside the state folder.
pub const REGISTRY_FILE: &str = "mailboxes.json";

/// The on-disk format version this build reads and writes.
const FORMAT_VERSION: u32 = 1;

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
    /// The mailbox address, lower-case (see [`normalize_address`]).
    pub address: String,
    /// The Entra tenant: a GUID, a verified domain, `organizations` or `common`.
    pub tenant: String,
    /// The application (client) id of the app registration, a GUID.
    pub client_id: String,
    /// The client secret of a confidential app registration; `None` for a public client.
    pub client_secret: Option<ClientSecret>,
    /// Checks the local password; `None` until one is set, and then no login succeeds.
    pub password: Option<PasswordVerifier>,
    /// When the mailbox was registered, in seconds since the Unix epoch.
    pub created: u64,
}

impl fmt::Debug for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mailbox")
            .field("address", &self.address)
            .field("tenant", &self.tenant)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .field("password", &self.password)
            .field("created", &self.created)
            .finish()
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
    #[error("`{address}` is not a valid mailbox address: {why}")]
    InvalidAddress { address: String, why: &'static str },
    #[error("mailbox {0} is already registered")]
    Duplicate(String),
    #[error("mailbox {0} is not registered")]
    UnknownMailbox(String),
}

// === impl Registry ===

impl Registry {
    /// Reads `{state_dir}/mailboxes.json`. A missing file is an empty registry; a file that
    /// cannot be parsed is an error naming it.
    pub fn load(state_dir: &Path) -> Result<Registry, RegistryError> {
        let file = state_dir.join(REGISTRY_FILE);
        let mut bytes = match std::fs::read(&file) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Registry::default()),
            Err(source) => return Err(RegistryError::Io { file, source }),
        };
        let corrupt = |why: String| RegistryError::Corrupt {
            file: file.clone(),
            why,
        };
        let parsed = serde_json::from_slice::<RegistryFile>(&bytes);
        zeroize::Zeroize::zeroize(&mut bytes);
        let disk = parsed.map_err(|e| corrupt(json_why(&e)))?;
        if disk.version != FORMAT_VERSION {
            return Err(corrupt(format!(
                "format version {} is not the supported {FORMAT_VERSION}",
                disk.version
            )));
        }
        let mut registry = Registry::default();
        for record in disk.mailboxes {
            let mailbox = record.into_mailbox().map_err(corrupt)?;
            registry
                .insert(mailbox)
                .map_err(|e| corrupt(e.to_string()))?;
        }
        Ok(registry)
    }

    /// Writes the registry to `{state_dir}/mailboxes.json`, atomically and `0600`.
    pub fn save(&self, state_dir: &Path) -> Result<(), RegistryError> {
        let file = state_dir.join(REGISTRY_FILE);
        let disk = RegistryFile {
            version: FORMAT_VERSION,
            mailboxes: self.iter().map(MailboxRecord::from_mailbox).collect(),
        };
        let mut bytes = serde_json::to_vec_pretty(&disk).map_err(|e| RegistryError::Io {
            file: file.clone(),
            source: io::Error::other(e.to_string()),
        })?;
        bytes.push(b'\n');
        let written = statefile::write_private(&file, &bytes);
        zeroize::Zeroize::zeroize(&mut bytes);
        written.map_err(|source| RegistryError::Io { file, source })
    }

    /// The mailbox with this address, compared case-insensitively.
    pub fn get(&self, address: &str) -> Option<&Mailbox> {
        self.get_arc(address).map(|m| &**m)
    }

    /// Like [`Registry::get`], as a shared handle that outlives the registry.
    pub fn get_arc(&self, address: &str) -> Option<&Arc<Mailbox>> {
        self.mailboxes.get(&address.to_ascii_lowercase())
    }

    /// Adds a mailbox; its address is validated and lower-cased. Refuses an address that is
    /// already registered.
    pub fn insert(&mut self, mut m: Mailbox) -> Result<(), RegistryError> {
        m.address = normalize_address(&m.address)?;
        if self.mailboxes.contains_key(&m.address) {
            return Err(RegistryError::Duplicate(m.address));
        }
        self.mailboxes.insert(m.address.clone(), Arc::new(m));
        Ok(())
    }

    /// Removes the mailbox with this address (case-insensitive) and returns it.
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
        let m = self
            .mailboxes
            .get_mut(&address.to_ascii_lowercase())
            .ok_or_else(|| RegistryError::UnknownMailbox(address.to_owned()))?;
        Arc::make_mut(m).password = password;
        Ok(())
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

/// `mailboxes.json`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    version: u32,
    mailboxes: Vec<MailboxRecord>,
}

/// One mailbox as stored. The only place a client secret is turned into, or read from,
/// plain text.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MailboxRecord {
    address: String,
    tenant: String,
    client_id: String,
    client_secret: Option<String>,
    password: Option<PasswordVerifier>,
    created: u64,
}

impl Drop for MailboxRecord {
    fn drop(&mut self) {
        if let Some(s) = self.client_secret.as_mut() {
            zeroize::Zeroize::zeroize(s);
        }
    }
}

impl MailboxRecord {
    fn from_mailbox(m: &Mailbox) -> Self {
        Self {
            address: m.address.clone(),
            tenant: m.tenant.clone(),
            client_id: m.client_id.clone(),
            client_secret: m.client_secret.as_ref().map(|s| s.expose().to_owned()),
            password: m.password.clone(),
            created: m.created,
        }
    }

    fn into_mailbox(mut self) -> Result<Mailbox, String> {
        let address = normalize_address(&self.address).map_err(|e| e.to_string())?;
        if address != self.address {
            return Err(format!("address `{}` is not lower-case", self.address));
        }
        if self.tenant.is_empty() || self.client_id.is_empty() {
            return Err(format!("{address}: tenant and client_id must not be empty"));
        }
        let client_secret = match self.client_secret.take() {
            Some(s) if s.is_empty() => return Err(format!("{address}: empty client_secret")),
            other => other.map(ClientSecret::new),
        };
        Ok(Mailbox {
            address,
            tenant: std::mem::take(&mut self.tenant),
            client_id: std::mem::take(&mut self.client_id),
            client_secret,
            password: self.password.take(),
            created: self.created,
        })
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

    fn mailbox(address: &str) -> Mailbox {
        Mailbox {
            address: address.into(),
            tenant: "contoso.onmicrosoft.com".into(),
            client_id: "00000000-0000-0000-0000-000000000001".into(),
            client_secret: Some(ClientSecret::new("s3cr3t~value")),
            password: Some(PasswordVerifier::Generated {
                salt: [7; 32],
                tag: [9; 32],
            }),
            created: 1_700_000_000,
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
        assert!(Registry::load(dir.path()).unwrap().is_empty());
        let mut r = Registry::default();
        r.insert(mailbox("Alice@Contoso.com")).unwrap();
        let mut public = mailbox("bob@contoso.com");
        public.client_secret = None;
        public.password = Some(PasswordVerifier::Argon2 {
            phc: "$argon2id$v=19$m=19456,t=2,p=1$+xnx0ZGIT/+csoED+8Dv9w$PZLTMDklR0KtnxmvMT81wrOTTPtJMA10EnLaW9D/MlE".into(),
        });
        r.insert(public).unwrap();
        r.save(dir.path()).unwrap();

        let text = std::fs::read_to_string(dir.path().join(REGISTRY_FILE)).unwrap();
        assert!(text.contains("\"version\": 1"), "{text}");
        assert!(text.contains("\"kind\": \"generated\""), "{text}");
        let back = Registry::load(dir.path()).unwrap();
        assert_eq!(back.len(), 2);
        let alice = back.get("ALICE@contoso.com").unwrap();
        assert_eq!(alice.address, "alice@contoso.com");
        assert_eq!(
            alice.client_secret.as_ref().unwrap().expose(),
            "s3cr3t~value"
        );
        assert_eq!(alice.password, mailbox("x@y.z").password);
        let bob = back.get("bob@contoso.com").unwrap();
        assert!(bob.client_secret.is_none());
        assert!(matches!(
            bob.password,
            Some(PasswordVerifier::Argon2 { .. })
        ));
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
            r#"{"version": 2, "mailboxes": []}"#,
            r#"{"version": 1, "mailboxes": [{"address": "a@b.c", "tenant": "t", "client_id": "c", "client_secret": null, "password": "hunter2", "created": 0}]}"#,
            r#"{"version": 1, "mailboxes": [{"address": "A@b.c", "tenant": "t", "client_id": "c", "client_secret": "hunter2", "password": null, "created": 0}]}"#,
        ];
        for text in cases {
            std::fs::write(&file, text).unwrap();
            let e = Registry::load(dir.path()).unwrap_err().to_string();
            assert!(e.contains("mailboxes.json is corrupt"), "{e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
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
    }
}
