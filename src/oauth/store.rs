//! Refresh tokens at rest: one file per mailbox, `{state_dir}/tokens/{address}.json`,
//! holding `{"version": 1, "refresh_token": "...", "updated": <unix secs>}`, written
//! atomically and `0600` through [`crate::statefile`].
//!
//! The token is turned into plain text, or read from it, only in [`encode`] and [`decode`]
//! here, so encryption at rest can be added in one place.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

use crate::mailbox::{json_why, normalize_address};
use crate::secret::RefreshToken;
use crate::statefile;

/// Folder of the token files inside the state folder.
pub const TOKENS_DIR: &str = "tokens";

/// The on-disk format version this build reads and writes.
const FORMAT_VERSION: u32 = 1;

/// Longest refresh token accepted from a file (Entra's are about 1-2 KB).
const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Longest address that fits a file name (255 octets) with `.json`.
const MAX_FILE_STEM: usize = 250;

/// The refresh tokens of all mailboxes, on disk.
#[derive(Debug, Clone)]
pub struct TokenStore {
    dir: PathBuf,
}

/// Why a token could not be read, written or removed: which file and why, never the token.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{}: {source}", file.display())]
    Io {
        file: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is corrupt ({why}); import the token again", file.display())]
    Corrupt { file: PathBuf, why: String },
    #[error("refusing to store the refresh token of {mailbox}: it is {why}")]
    InvalidToken { mailbox: String, why: &'static str },
    #[error("`{mailbox}` cannot name a token file: {why}")]
    InvalidMailbox { mailbox: String, why: String },
}

/// One token file as stored.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    version: u32,
    refresh_token: String,
    updated: u64,
}

impl Drop for TokenFile {
    fn drop(&mut self) {
        self.refresh_token.zeroize();
    }
}

// === impl TokenStore ===

impl TokenStore {
    /// The store under `{state_dir}/tokens`; nothing is touched until a token is saved.
    pub fn new(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.join(TOKENS_DIR),
        }
    }

    /// The stored refresh token of `mailbox`, or `None` when it has no file.
    pub fn load(&self, mailbox: &str) -> Result<Option<RefreshToken>, StoreError> {
        let file = self.path_for(mailbox)?;
        let mut bytes = match std::fs::read(&file) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StoreError::Io { file, source }),
        };
        let token = decode(&bytes).map_err(|why| StoreError::Corrupt { file, why });
        bytes.zeroize();
        token.map(Some)
    }

    /// Stores `token` for `mailbox`, replacing the old one atomically (file mode `0600`).
    /// A token that [`TokenStore::load`] would refuse (empty, too long, white space) is
    /// refused here, so it never replaces a good one.
    pub fn save(&self, mailbox: &str, token: &RefreshToken) -> Result<(), StoreError> {
        let file = self.path_for(mailbox)?;
        if let Err(why) = check_token(token.expose()) {
            return Err(StoreError::InvalidToken {
                mailbox: mailbox.to_owned(),
                why,
            });
        }
        let mut bytes = encode(token, unix_now());
        let written = statefile::write_private(&file, &bytes);
        bytes.zeroize();
        written.map_err(|source| StoreError::Io { file, source })
    }

    /// Deletes the token of `mailbox`; a mailbox without one is not an error.
    pub fn remove(&self, mailbox: &str) -> Result<(), StoreError> {
        let file = self.path_for(mailbox)?;
        match std::fs::remove_file(&file) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StoreError::Io { file, source }),
        }
    }

    /// `{dir}/{address}.json`, for a valid address only.
    fn path_for(&self, mailbox: &str) -> Result<PathBuf, StoreError> {
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
        Ok(self.dir.join(format!("{address}.json")))
    }
}

/// The file content for `token`.
fn encode(token: &RefreshToken, updated: u64) -> Vec<u8> {
    let file = TokenFile {
        version: FORMAT_VERSION,
        refresh_token: token.expose().to_owned(),
        updated,
    };
    let mut bytes = serde_json::to_vec_pretty(&file).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// The token in a file's content; the error never quotes the content.
fn decode(bytes: &[u8]) -> Result<RefreshToken, String> {
    let mut file: TokenFile = serde_json::from_slice(bytes).map_err(|e| json_why(&e))?;
    if file.version != FORMAT_VERSION {
        return Err(format!(
            "format version {} is not the supported {FORMAT_VERSION}",
            file.version
        ));
    }
    let token = RefreshToken::new(std::mem::take(&mut file.refresh_token));
    check_token(token.expose()).map_err(|why| format!("refresh_token is {why}"))?;
    Ok(token)
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

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    const MAILBOX: &str = "alice@contoso.com";

    #[test]
    fn round_trip_with_a_private_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::new(dir.path());
        assert!(store.load(MAILBOX).unwrap().is_none());
        store
            .save(MAILBOX, &RefreshToken::new("0.AAAA-rt.1"))
            .unwrap();
        store
            .save("Alice@Contoso.com", &RefreshToken::new("0.AAAA-rt.2"))
            .unwrap();
        let token = store.load(MAILBOX).unwrap().unwrap();
        assert_eq!(token.expose(), "0.AAAA-rt.2");

        let file = dir.path().join("tokens/alice@contoso.com.json");
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let text = std::fs::read_to_string(&file).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["version"], 1);
        assert_eq!(json["refresh_token"], "0.AAAA-rt.2");
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
        let store = TokenStore::new(dir.path());
        let file = dir.path().join("tokens/alice@contoso.com.json");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        for text in [
            "",
            "{\"version\":1,\"refresh_token\":\"secret-rt",
            "{\"version\":1,\"refresh_token\":\"\",\"updated\":0}",
            "{\"version\":1,\"refresh_token\":\"secret rt\",\"updated\":0}",
            "{\"version\":1,\"refresh_token\":[\"secret-rt\"],\"updated\":0}",
            "{\"version\":7,\"refresh_token\":\"secret-rt\",\"updated\":0}",
        ] {
            std::fs::write(&file, text).unwrap();
            let e = store.load(MAILBOX).unwrap_err();
            let shown = format!("{e} {e:?}");
            assert!(matches!(e, StoreError::Corrupt { .. }), "{shown}");
            assert!(shown.contains("alice@contoso.com.json"), "{shown}");
            assert!(!shown.contains("secret"), "{shown}");
        }
    }

    #[test]
    fn file_names_come_from_valid_addresses_only() {
        let store = TokenStore::new(Path::new("/nonexistent"));
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
        let store = TokenStore::new(dir.path());
        store.save(MAILBOX, &RefreshToken::new("good")).unwrap();
        let tokens = dir.path().join(TOKENS_DIR);
        let file = tokens.join("alice@contoso.com.json");
        if std::fs::metadata(&file).unwrap().uid() == 0 {
            // Root ignores a read-only folder; statefile's own tests fail a write midway.
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
        let store = TokenStore::new(dir.path());
        let in_the_way = dir.path().join("tokens/alice@contoso.com.json");
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
