//! Refresh tokens at rest: one file per mailbox, `{state_dir}/tokens/{address}.json`,
//! written atomically and `0600` through [`crate::state::private`]:
//!
//! ```json
//! { "version": 2, "refresh_token_sealed": "xc20p1:<base64>", "updated": 1700000000 }
//! ```
//!
//! The token is sealed with the [`StateKey`] for the purpose `refresh-token:{address}`, so
//! it opens only under that key and that mailbox's name (see [`crate::state::seal`]). A
//! file that does not open is an error naming it, never a missing token.
//!
//! Every write holds the state folder's lock ([`StateLock`]); the relay's rotation of a
//! token ([`TokenStore::replace`]) writes only if the file still holds the token it
//! redeemed, so a token imported meanwhile (`mailbox import-token`, `mailbox authorize`)
//! is never overwritten by the old chain's successor.
//!
//! Version 1 held the token in plain text (`"refresh_token"`). Such a file is still read,
//! and rewritten sealed as soon as it is read, so the plain text does not linger.

use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

use super::lock::{self, StateLock};
use super::records::json_why;
use crate::datetime::unix;
use crate::mailbox::normalize_address;
use crate::secret::RefreshToken;
use crate::state::error::StoreError;
use crate::state::private;
use crate::state::seal::{SealError, StateKey};
use crate::state::traits::RefreshTokens;

/// Folder of the token files inside the state folder.
pub const TOKENS_DIR: &str = "tokens";

/// The on-disk format version this build writes: the token sealed.
const FORMAT_VERSION: u32 = 2;

/// The first format, still read (and rewritten at once): the token in plain text.
const FORMAT_VERSION_1: u32 = 1;

/// Longest refresh token accepted from a file (Entra's are about 1-2 KB).
const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Longest address that fits a file name (255 octets) with `.json`.
const MAX_FILE_STEM: usize = 250;

/// The refresh tokens of all mailboxes, on disk, sealed with the state key.
#[derive(Debug, Clone)]
pub struct TokenStore {
    /// The state folder, whose lock every write holds.
    state_dir: PathBuf,
    dir: PathBuf,
    key: StateKey,
}

/// One token file as stored (version 2).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    version: u32,
    refresh_token_sealed: String,
    updated: u64,
}

/// One token file of version 1: the token in plain text.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFileV1 {
    version: u32,
    refresh_token: String,
    updated: u64,
}

impl Drop for TokenFileV1 {
    fn drop(&mut self) {
        self.refresh_token.zeroize();
    }
}

/// Just the version of a token file, to pick the format to read the rest with.
#[derive(Deserialize)]
struct VersionProbe {
    version: u32,
}

/// What a token file holds.
enum Decoded {
    /// A sealed token (the current format).
    Sealed(RefreshToken),
    /// A plain-text token of version 1, and when it was stored.
    Plain { token: RefreshToken, updated: u64 },
}

/// Why a file's content gave no token.
enum DecodeError {
    Corrupt(String),
    Sealed(SealError),
}

// === impl TokenStore ===

impl TokenStore {
    /// The store under `{state_dir}/tokens`, sealing with `key`; nothing is touched until
    /// a token is saved.
    pub fn new(state_dir: &Path, key: StateKey) -> Self {
        Self {
            state_dir: state_dir.to_owned(),
            dir: state_dir.join(TOKENS_DIR),
            key,
        }
    }

    /// The stored refresh token of `mailbox`, or `None` when it has no file. A file that
    /// cannot be decrypted is an error ([`StoreError::Undecryptable`]), never `None`. A
    /// plain-text file of version 1 is rewritten sealed on the spot.
    pub fn load(&self, mailbox: &str) -> Result<Option<RefreshToken>, StoreError> {
        let (file, address) = self.path_for(mailbox)?;
        match self.read(&file, &address)? {
            None => Ok(None),
            Some(Decoded::Sealed(token)) => Ok(Some(token)),
            Some(Decoded::Plain { token, updated }) => {
                self.migrate(&file, &address, &token, updated);
                Ok(Some(token))
            }
        }
    }

    /// Replaces the token of `mailbox` by `rotated` if the file still holds `redeemed` (the
    /// token Entra rotated); otherwise someone stored a new one meanwhile, which is kept.
    /// Returns whether `rotated` was written.
    pub fn replace(
        &self,
        mailbox: &str,
        redeemed: &RefreshToken,
        rotated: &RefreshToken,
    ) -> Result<bool, StoreError> {
        let (file, address) = self.path_for(mailbox)?;
        storable(mailbox, rotated)?;
        let _lock = self.lock()?;
        let current = match self.read(&file, &address)? {
            Some(Decoded::Sealed(token) | Decoded::Plain { token, .. }) => token,
            None => return Ok(false),
        };
        if current.expose().as_bytes() != redeemed.expose().as_bytes() {
            return Ok(false);
        }
        self.write(&file, &address, rotated, unix(SystemTime::now()))?;
        Ok(true)
    }

    /// What `file` holds, `None` when it does not exist.
    fn read(&self, file: &Path, address: &str) -> Result<Option<Decoded>, StoreError> {
        let mut bytes = match std::fs::read(file) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StoreError::Io {
                    file: file.to_owned(),
                    source,
                });
            }
        };
        let decoded = decode(&bytes, &self.key, address);
        bytes.zeroize();
        let file = file.to_owned();
        match decoded {
            Ok(decoded) => Ok(Some(decoded)),
            Err(DecodeError::Corrupt(why)) => Err(StoreError::Corrupt { file, why }),
            Err(DecodeError::Sealed(why)) => Err(StoreError::Undecryptable { file, why }),
        }
    }

    /// The state folder's lock, for a write.
    fn lock(&self) -> Result<StateLock, StoreError> {
        StateLock::acquire(&self.state_dir).map_err(|source| StoreError::Io {
            file: lock::lock_path(&self.state_dir),
            source,
        })
    }

    /// Stores `token` for `mailbox`, sealed, replacing the old one atomically (file mode
    /// `0600`). A token that [`TokenStore::load`] would refuse (empty, too long, white
    /// space) is refused here, so it never replaces a good one.
    pub fn save(&self, mailbox: &str, token: &RefreshToken) -> Result<(), StoreError> {
        let (file, address) = self.path_for(mailbox)?;
        storable(mailbox, token)?;
        let _lock = self.lock()?;
        self.write(&file, &address, token, unix(SystemTime::now()))
    }

    /// Deletes the token of `mailbox`; a mailbox without one is not an error.
    pub fn remove(&self, mailbox: &str) -> Result<(), StoreError> {
        let (file, _) = self.path_for(mailbox)?;
        let _lock = self.lock()?;
        match std::fs::remove_file(&file) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StoreError::Io { file, source }),
        }
    }

    /// Seals `token` and writes it to `file`.
    fn write(
        &self,
        file: &Path,
        address: &str,
        token: &RefreshToken,
        updated: u64,
    ) -> Result<(), StoreError> {
        let sealed = self
            .key
            .seal(&purpose(address), token.expose().as_bytes())
            .map_err(|why| StoreError::Seal {
                mailbox: address.to_owned(),
                why,
            })?;
        let bytes = encode(sealed, updated);
        private::write_private(file, &bytes).map_err(|source| StoreError::Io {
            file: file.to_owned(),
            source,
        })
    }

    /// Rewrites a plain-text (version 1) file sealed, under the lock, if it still holds
    /// `token` in plain text (else a newer token is already there). A failure is only
    /// logged: the token was read, and the next save seals it anyway.
    fn migrate(&self, file: &Path, address: &str, token: &RefreshToken, updated: u64) {
        let rewritten = self
            .lock()
            .and_then(|_lock| match self.read(file, address)? {
                Some(Decoded::Plain { token: now, .. })
                    if now.expose().as_bytes() == token.expose().as_bytes() =>
                {
                    self.write(file, address, token, updated).map(|()| true)
                }
                _ => Ok(false),
            });
        match rewritten {
            Ok(false) => {}
            Ok(true) => tracing::info!(
                file = %file.display(),
                "the refresh token was in plain text (format version 1); rewrote it sealed"
            ),
            Err(e) => tracing::warn!(
                error = %e,
                "the refresh token is in plain text (format version 1) and could not be \
                 rewritten sealed; the next save seals it"
            ),
        }
    }

    /// `{dir}/{address}.json` and the lower-case address, for a valid address only.
    fn path_for(&self, mailbox: &str) -> Result<(PathBuf, String), StoreError> {
        let invalid = |why: String| StoreError::InvalidMailbox {
            mailbox: mailbox
                .chars()
                .filter(|c| !c.is_control())
                .take(300)
                .collect(),
            why,
        };
        // normalize_address already refuses both; checked again because this is a path.
        if mailbox.contains('/') || mailbox.starts_with('.') {
            return Err(invalid("contains `/` or starts with `.`".into()));
        }
        let address = normalize_address(mailbox).map_err(|e| invalid(e.to_string()))?;
        if address.len() > MAX_FILE_STEM {
            return Err(invalid("too long for a file name".into()));
        }
        Ok((self.dir.join(format!("{address}.json")), address))
    }
}

impl RefreshTokens for TokenStore {
    fn load(&self, mailbox: &str) -> Result<Option<RefreshToken>, StoreError> {
        TokenStore::load(self, mailbox)
    }

    fn replace(
        &self,
        mailbox: &str,
        redeemed: &RefreshToken,
        rotated: &RefreshToken,
    ) -> Result<bool, StoreError> {
        TokenStore::replace(self, mailbox, redeemed, rotated)
    }

    fn save(&self, mailbox: &str, token: &RefreshToken) -> Result<(), StoreError> {
        TokenStore::save(self, mailbox, token)
    }

    fn remove(&self, mailbox: &str) -> Result<(), StoreError> {
        TokenStore::remove(self, mailbox)
    }
}

/// What a mailbox's refresh token is sealed for: its file can't be moved to another name
/// (nor a database row to another mailbox).
pub(crate) fn purpose(address: &str) -> String {
    format!("refresh-token:{address}")
}

/// The file content for a sealed token.
fn encode(refresh_token_sealed: String, updated: u64) -> Vec<u8> {
    let file = TokenFile {
        version: FORMAT_VERSION,
        refresh_token_sealed,
        updated,
    };
    let mut bytes = serde_json::to_vec_pretty(&file).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// The token in a file's content (either version); errors never quote the content.
fn decode(bytes: &[u8], key: &StateKey, address: &str) -> Result<Decoded, DecodeError> {
    let corrupt = |e: serde_json::Error| DecodeError::Corrupt(json_why(&e));
    let probe: VersionProbe = serde_json::from_slice(bytes).map_err(corrupt)?;
    match probe.version {
        FORMAT_VERSION => {
            let file: TokenFile = serde_json::from_slice(bytes).map_err(corrupt)?;
            let plain = key
                .open(&purpose(address), &file.refresh_token_sealed)
                .map_err(|why| match why {
                    SealError::Malformed(_) => {
                        DecodeError::Corrupt(format!("refresh_token_sealed is {why}"))
                    }
                    why => DecodeError::Sealed(why),
                })?;
            let text = std::str::from_utf8(&plain)
                .map_err(|_| DecodeError::Corrupt("the sealed token is not text".into()))?;
            let token = RefreshToken::new(text);
            check_token(token.expose())
                .map_err(|why| DecodeError::Corrupt(format!("the sealed token is {why}")))?;
            Ok(Decoded::Sealed(token))
        }
        FORMAT_VERSION_1 => {
            let mut file: TokenFileV1 = serde_json::from_slice(bytes).map_err(corrupt)?;
            debug_assert_eq!(file.version, FORMAT_VERSION_1);
            let token = RefreshToken::new(std::mem::take(&mut file.refresh_token));
            check_token(token.expose())
                .map_err(|why| DecodeError::Corrupt(format!("refresh_token is {why}")))?;
            Ok(Decoded::Plain {
                token,
                updated: file.updated,
            })
        }
        other => Err(DecodeError::Corrupt(format!(
            "format version {other} is not supported (this build reads versions \
             {FORMAT_VERSION_1} and {FORMAT_VERSION})"
        ))),
    }
}

/// [`check_token`] before a write: a token that would not be read back is not stored.
pub(crate) fn storable(mailbox: &str, token: &RefreshToken) -> Result<(), StoreError> {
    check_token(token.expose()).map_err(|why| StoreError::InvalidToken {
        mailbox: mailbox.to_owned(),
        why,
    })
}

/// Whether a refresh token has a plausible shape; says what is wrong if not.
fn check_token(token: &str) -> Result<(), &'static str> {
    if token.is_empty() {
        Err("empty")
    } else if token.len() > MAX_TOKEN_LEN {
        Err("too long")
    } else if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Err("not one word (white space or control characters)")
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    const MAILBOX: &str = "alice@contoso.com";

    fn key() -> StateKey {
        StateKey::from_bytes(&[1; 32])
    }

    fn store(dir: &Path) -> TokenStore {
        TokenStore::new(dir, key())
    }

    fn token_file(dir: &Path) -> PathBuf {
        dir.join("tokens/alice@contoso.com.json")
    }

    #[test]
    fn a_rotation_replaces_only_the_token_it_redeemed() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let (first, rotated) = (RefreshToken::new("0.AAAA-1"), RefreshToken::new("0.AAAA-2"));
        assert!(
            !store.replace(MAILBOX, &first, &rotated).unwrap(),
            "no token: none written"
        );
        assert!(store.load(MAILBOX).unwrap().is_none());
        store.save(MAILBOX, &first).unwrap();
        assert!(store.replace(MAILBOX, &first, &rotated).unwrap());
        assert_eq!(store.load(MAILBOX).unwrap().unwrap().expose(), "0.AAAA-2");
        // An administrator imports a new token while the relay redeems the old one.
        store
            .save(MAILBOX, &RefreshToken::new("0.AAAA-imported"))
            .unwrap();
        let late = RefreshToken::new("0.AAAA-3");
        assert!(!store.replace(MAILBOX, &rotated, &late).unwrap());
        assert_eq!(
            store.load(MAILBOX).unwrap().unwrap().expose(),
            "0.AAAA-imported"
        );
        assert!(
            dir.path().join("state.lock").exists(),
            "writes took the lock"
        );
    }

    #[test]
    fn round_trip_with_a_private_sealed_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        assert!(store.load(MAILBOX).unwrap().is_none());
        store
            .save(MAILBOX, &RefreshToken::new("0.AAAA-rt.1"))
            .unwrap();
        store
            .save("Alice@Contoso.com", &RefreshToken::new("0.AAAA-rt.2"))
            .unwrap();
        let token = store.load(MAILBOX).unwrap().unwrap();
        assert_eq!(token.expose(), "0.AAAA-rt.2");

        let file = token_file(dir.path());
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(!text.contains("AAAA-rt"), "{text}");
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["version"], 2);
        assert!(json.get("refresh_token").is_none(), "{text}");
        let sealed = json["refresh_token_sealed"].as_str().unwrap();
        assert!(sealed.starts_with("xc20p1:"), "{sealed}");
        assert!(json["updated"].as_u64().unwrap() > 1_600_000_000);

        for bad in ["", "two words", "x".repeat(MAX_TOKEN_LEN + 1).as_str()] {
            let e = store.save(MAILBOX, &RefreshToken::new(bad)).unwrap_err();
            assert!(matches!(e, StoreError::InvalidToken { .. }), "{e}");
        }
        assert_eq!(
            store.load(MAILBOX).unwrap().unwrap().expose(),
            "0.AAAA-rt.2"
        );

        store.remove(MAILBOX).unwrap();
        store.remove(MAILBOX).unwrap();
        assert!(store.load(MAILBOX).unwrap().is_none());
    }

    #[test]
    fn a_corrupt_file_is_an_error_without_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let file = token_file(dir.path());
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        let sealed = |plain: &str| key().seal(&purpose(MAILBOX), plain.as_bytes()).unwrap();
        let cases = [
            String::new(),
            "{\"version\":1,\"refresh_token\":\"secret-rt".into(),
            "{\"version\":1,\"refresh_token\":\"\",\"updated\":0}".into(),
            "{\"version\":1,\"refresh_token\":\"secret rt\",\"updated\":0}".into(),
            "{\"version\":1,\"refresh_token\":[\"secret-rt\"],\"updated\":0}".into(),
            "{\"version\":7,\"refresh_token\":\"secret-rt\",\"updated\":0}".into(),
            "{\"version\":2,\"refresh_token\":\"secret-rt\",\"updated\":0}".into(),
            "{\"version\":2,\"refresh_token_sealed\":\"secret-rt\",\"updated\":0}".into(),
            format!(
                "{{\"version\":2,\"refresh_token_sealed\":\"{}\",\"updated\":0}}",
                sealed("secret rt")
            ),
            format!(
                "{{\"version\":2,\"refresh_token_sealed\":\"{}\",\"updated\":0,\"refresh_token\":\"secret-rt\"}}",
                sealed("secret-rt")
            ),
        ];
        for text in cases {
            std::fs::write(&file, &text).unwrap();
            let e = store.load(MAILBOX).unwrap_err();
            let shown = format!("{e} {e:?}");
            assert!(matches!(e, StoreError::Corrupt { .. }), "{text}: {shown}");
            assert!(shown.contains("alice@contoso.com.json"), "{shown}");
            assert!(!shown.contains("secret"), "{shown}");
        }
    }

    #[test]
    fn a_file_that_does_not_decrypt_is_an_error_never_a_missing_token() {
        let dir = tempfile::tempdir().unwrap();
        store(dir.path())
            .save(MAILBOX, &RefreshToken::new("0.AAAA-secret"))
            .unwrap();
        let file = token_file(dir.path());
        let saved = std::fs::read(&file).unwrap();

        let other = TokenStore::new(dir.path(), StateKey::from_bytes(&[2; 32]));
        let e = other.load(MAILBOX).unwrap_err();
        let shown = e.to_string();
        assert!(matches!(e, StoreError::Undecryptable { .. }), "{shown}");
        assert!(
            shown.starts_with("cannot decrypt the refresh token in ")
                && shown.contains("alice@contoso.com.json")
                && shown.contains("wrong key (M365_RELAY_KEY or key_file changed?)"),
            "{shown}"
        );
        assert!(!shown.contains("secret"), "{shown}");
        assert_eq!(
            std::fs::read(&file).unwrap(),
            saved,
            "the file is untouched"
        );

        // Copied onto another mailbox's name, it does not decrypt either.
        let bob = dir.path().join("tokens/bob@contoso.com.json");
        std::fs::copy(&file, &bob).unwrap();
        let e = store(dir.path()).load("bob@contoso.com").unwrap_err();
        assert!(matches!(e, StoreError::Undecryptable { .. }), "{e}");
        assert_eq!(
            store(dir.path()).load(MAILBOX).unwrap().unwrap().expose(),
            "0.AAAA-secret"
        );
    }

    #[test]
    fn a_plain_text_version_1_file_is_read_and_sealed_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let file = token_file(dir.path());
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(
            &file,
            "{\"version\":1,\"refresh_token\":\"0.AAAA-legacy\",\"updated\":1700000000}\n",
        )
        .unwrap();
        let store = store(dir.path());
        assert_eq!(
            store.load(MAILBOX).unwrap().unwrap().expose(),
            "0.AAAA-legacy"
        );
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(!text.contains("legacy"), "rewritten sealed: {text}");
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["version"], 2);
        assert_eq!(json["updated"], 1_700_000_000, "when it was stored is kept");
        assert_eq!(
            store.load(MAILBOX).unwrap().unwrap().expose(),
            "0.AAAA-legacy"
        );
    }

    #[test]
    fn a_crash_before_the_rename_leaves_the_old_token_readable() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        store
            .save(MAILBOX, &RefreshToken::new("0.AAAA-old"))
            .unwrap();
        let tokens = dir.path().join(TOKENS_DIR);
        let file = token_file(dir.path());
        // What a crash between writing the temp file and the rename leaves: the new token
        // in a temp file (here only half written), the old file in place.
        let new = encode(
            key().seal(&purpose(MAILBOX), b"0.AAAA-new").unwrap(),
            unix(SystemTime::now()),
        );
        let leftover = tokens.join(".alice@contoso.com.json.tmp.4242.0.0");
        std::fs::write(&leftover, &new[..new.len() / 2]).unwrap();
        assert_eq!(store.load(MAILBOX).unwrap().unwrap().expose(), "0.AAAA-old");

        // The next write replaces the file and removes the temp file once it is stale.
        let stale = std::time::SystemTime::now() - 2 * private::STALE_TEMP_AGE;
        std::fs::File::options()
            .write(true)
            .open(&leftover)
            .unwrap()
            .set_modified(stale)
            .unwrap();
        store
            .save(MAILBOX, &RefreshToken::new("0.AAAA-newer"))
            .unwrap();
        assert_eq!(
            store.load(MAILBOX).unwrap().unwrap().expose(),
            "0.AAAA-newer"
        );
        assert!(!leftover.exists());
        assert_eq!(std::fs::read_dir(&tokens).unwrap().count(), 1);
        assert!(file.exists());
    }

    #[test]
    fn file_names_come_from_valid_addresses_only() {
        let store = store(Path::new("/nonexistent"));
        for bad in [
            "../x@y.com",
            ".hidden@y.com",
            "a/b@y.com",
            "alice",
            "",
            "a@b.com/c",
        ] {
            let e = store.load(bad).unwrap_err();
            assert!(matches!(e, StoreError::InvalidMailbox { .. }), "{bad}: {e}");
        }
    }

    #[test]
    fn a_failed_save_keeps_the_old_token() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        store.save(MAILBOX, &RefreshToken::new("good")).unwrap();
        let tokens = dir.path().join(TOKENS_DIR);
        let file = token_file(dir.path());
        if std::fs::metadata(&file).unwrap().uid() == 0 {
            // Root ignores a read-only folder; private.rs's own tests fail a write midway.
            return;
        }
        std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o500)).unwrap();
        let saved = store.save(MAILBOX, &RefreshToken::new("bad"));
        std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o700)).unwrap();
        let e = saved.unwrap_err().to_string();
        assert!(
            e.contains("alice@contoso.com.json") && !e.contains("bad"),
            "{e}"
        );
        assert_eq!(store.load(MAILBOX).unwrap().unwrap().expose(), "good");
        assert_eq!(
            std::fs::read_dir(&tokens).unwrap().count(),
            1,
            "no temp file left"
        );
    }

    #[test]
    fn a_save_that_cannot_rename_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let in_the_way = token_file(dir.path());
        std::fs::create_dir_all(in_the_way.join("x")).unwrap();
        assert!(store.save(MAILBOX, &RefreshToken::new("new")).is_err());
        let tokens = dir.path().join(TOKENS_DIR);
        assert_eq!(
            std::fs::read_dir(&tokens).unwrap().count(),
            1,
            "no temp file left"
        );
    }
}
