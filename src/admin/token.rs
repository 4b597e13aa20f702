//! The admin endpoint's bearer token: where it comes from, and how a presented one is
//! checked.
//!
//! # Where it comes from
//!
//! The same order for the relay and for `m365-relay status` / `reload`, so that the command
//! line finds the token the relay expects without being told:
//!
//! 1. the environment variable [`TOKEN_ENV`] (`M365_RELAY_ADMIN_TOKEN`), if set;
//! 2. else the file `admin.token_file` (default: `admin.token` next to `key_file`).
//!
//! The relay creates a missing file at start (and at reload) with a random token,
//! `0600`, never replacing a file another process created at the same moment; the command
//! line only reads it. A file that group or others may access is refused, as the state
//! key is. The relay reads the file again for each request, so a token written into it
//! takes effect at once (rotation), and a deleted or broken file locks everyone out until
//! it is fixed (fail closed).
//!
//! # The token
//!
//! At least [`MIN_TOKEN_LEN`] characters, all visible ASCII (it travels in an HTTP header);
//! surrounding white space in the file or variable is ignored. A created token is the
//! base64url of 32 random bytes. It is compared in constant time, through SHA-256 digests
//! so that not even its length leaks, and it is never logged: `Debug` shows only where it
//! came from.

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use crate::secret::constant_time_eq;
use crate::state::private::{self, PrivateRead};

/// Environment variable that holds the token; it wins over `admin.token_file`.
pub const TOKEN_ENV: &str = "M365_RELAY_ADMIN_TOKEN";

/// Shortest token accepted: 32 characters leave no room for guessing (a created token has
/// 43, `openssl rand -hex 16` gives 32).
pub const MIN_TOKEN_LEN: usize = 32;

/// Longest token accepted (and longest token file read).
pub const MAX_TOKEN_LEN: usize = 1024;

/// Random bytes in a created token.
const CREATED_TOKEN_BYTES: usize = 32;

/// Where an [`AdminToken`] came from, for messages (never the token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    Env,
    File(PathBuf),
}

impl fmt::Display for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSource::Env => f.write_str(TOKEN_ENV),
            TokenSource::File(path) => write!(f, "the admin token file {}", path.display()),
        }
    }
}

/// Why no token could be had. Names the variable or the file, never a token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{from}: {why}")]
    Invalid {
        from: TokenSource,
        why: &'static str,
    },
    #[error(
        "the admin token file {} may be read or written by group or others (mode \
         {mode:03o}); run `chmod 600 {}`",
        file.display(),
        file.display()
    )]
    Exposed { file: PathBuf, mode: u32 },
    #[error("the admin token file {}: {error}", file.display())]
    Io { file: PathBuf, error: io::Error },
    #[error("the system random number generator failed")]
    Random,
}

/// The bearer token of the admin endpoint. `Debug` shows only its source.
pub struct AdminToken {
    secret: SecretString,
    source: TokenSource,
}

// === impl AdminToken ===

impl AdminToken {
    /// What the relay does at start and reload: the token from [`TOKEN_ENV`], else from
    /// `file`, which is created with a new random token if it does not exist.
    pub fn load_or_create(file: &Path) -> Result<AdminToken, TokenError> {
        Self::load_or_create_with(std::env::var_os(TOKEN_ENV), file)
    }

    /// What the relay does per request and the command line does: like
    /// [`AdminToken::load_or_create`], but a missing file is an error.
    pub fn load(file: &Path) -> Result<AdminToken, TokenError> {
        Self::load_with(std::env::var_os(TOKEN_ENV), file)
    }

    /// [`AdminToken::load_or_create`] with the variable's value given (for tests).
    pub fn load_or_create_with(
        env: Option<OsString>,
        file: &Path,
    ) -> Result<AdminToken, TokenError> {
        match Self::load_with(env, file) {
            Err(TokenError::Io { error, .. }) if error.kind() == io::ErrorKind::NotFound => {
                Self::create_file(file)
            }
            other => other,
        }
    }

    /// [`AdminToken::load`] with the variable's value given (for tests).
    pub fn load_with(env: Option<OsString>, file: &Path) -> Result<AdminToken, TokenError> {
        match env {
            Some(value) => {
                let value =
                    Zeroizing::new(value.into_string().map_err(|_| TokenError::Invalid {
                        from: TokenSource::Env,
                        why: "not UTF-8",
                    })?);
                Self::from_text(&value, TokenSource::Env)
            }
            None => Self::read_file(file),
        }
    }

    /// Where the token came from.
    pub fn source(&self) -> &TokenSource {
        &self.source
    }

    /// The token itself, to send in `Authorization: Bearer`. Call only there.
    pub fn expose(&self) -> &str {
        self.secret.expose_secret()
    }

    /// Whether `presented` is this token, in time that depends on neither.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let ours = digest(&SHA256, self.expose().as_bytes());
        let theirs = digest(&SHA256, presented);
        constant_time_eq(ours.as_ref(), theirs.as_ref())
    }

    fn from_text(text: &str, source: TokenSource) -> Result<AdminToken, TokenError> {
        let token = text.trim();
        let invalid = |why| TokenError::Invalid {
            from: source.clone(),
            why,
        };
        if token.len() < MIN_TOKEN_LEN {
            return Err(invalid("shorter than 32 characters"));
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(invalid("longer than 1024 characters"));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid(
                "only visible ASCII characters may be used (no spaces)",
            ));
        }
        Ok(AdminToken {
            secret: SecretString::from(token.to_owned()),
            source,
        })
    }

    /// The token in an existing file, which must be private to its owner.
    fn read_file(file: &Path) -> Result<AdminToken, TokenError> {
        let source = TokenSource::File(file.to_owned());
        // Room for a longest token and its white space; a bigger file is not a token.
        let bytes = private::read_private(file, 2 * MAX_TOKEN_LEN as u64).map_err(|e| match e {
            PrivateRead::Exposed { mode } => TokenError::Exposed {
                file: file.to_owned(),
                mode,
            },
            PrivateRead::Io(error) => TokenError::Io {
                file: file.to_owned(),
                error,
            },
            PrivateRead::TooLarge => TokenError::Invalid {
                from: source.clone(),
                why: "longer than 1024 characters",
            },
        })?;
        let text = std::str::from_utf8(&bytes).map_err(|_| TokenError::Invalid {
            from: source.clone(),
            why: "not text",
        })?;
        Self::from_text(text, source)
    }

    /// Creates `file` with a new random token; if another process created it meanwhile,
    /// that one's token is used.
    fn create_file(file: &Path) -> Result<AdminToken, TokenError> {
        let mut bytes = Zeroizing::new([0u8; CREATED_TOKEN_BYTES]);
        SystemRandom::new()
            .fill(&mut bytes[..])
            .map_err(|_| TokenError::Random)?;
        let text = Zeroizing::new(format!("{}\n", URL_SAFE_NO_PAD.encode(&bytes[..])));
        match private::create_private(file, text.as_bytes()) {
            Ok(()) => {
                tracing::info!(
                    token_file = %file.display(),
                    "created the admin endpoint's bearer token"
                );
                Self::from_text(&text, TokenSource::File(file.to_owned()))
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Self::read_file(file),
            Err(error) => Err(TokenError::Io {
                file: file.to_owned(),
                error,
            }),
        }
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminToken")
            .field("source", &self.source)
            .field("token", &"[redacted]")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    const GOOD: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn created_once_private_and_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("certs/admin.token");
        assert!(matches!(
            AdminToken::load_with(None, &file),
            Err(TokenError::Io { .. })
        ));
        let created = AdminToken::load_or_create_with(None, &file).unwrap();
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(created.expose().len() >= 43);
        let again = AdminToken::load_or_create_with(None, &file).unwrap();
        assert_eq!(created.expose(), again.expose());
        assert_eq!(
            AdminToken::load_with(None, &file).unwrap().expose(),
            created.expose()
        );
    }

    #[test]
    fn the_variable_wins_and_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("admin.token");
        let token = AdminToken::load_or_create_with(Some(GOOD.into()), &file).unwrap();
        assert_eq!(token.expose(), GOOD);
        assert_eq!(token.source(), &TokenSource::Env);
        assert!(!file.exists(), "no file is made when the variable is set");
        for bad in ["", "short", "0123456789abcdef 0123456789abcdef"] {
            let e = AdminToken::load_with(Some(bad.into()), &file).unwrap_err();
            assert!(e.to_string().starts_with(TOKEN_ENV), "{e}");
        }
    }

    #[test]
    fn an_exposed_or_broken_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("admin.token");
        std::fs::write(&file, format!("  {GOOD}\n")).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = AdminToken::load_or_create_with(None, &file).unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(AdminToken::load_with(None, &file).unwrap().expose(), GOOD);
        std::fs::write(&file, "tiny\n").unwrap();
        assert!(AdminToken::load_or_create_with(None, &file).is_err());
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "tiny\n");
    }

    #[test]
    fn matching_and_redaction() {
        let token = AdminToken::from_text(GOOD, TokenSource::Env).unwrap();
        assert!(token.matches(GOOD.as_bytes()));
        assert!(!token.matches(b"0123456789abcdef0123456789abcdeF"));
        assert!(!token.matches(b""));
        assert!(!token.matches(format!("{GOOD}x").as_bytes()));
        let debug = format!("{token:?}");
        assert!(
            !debug.contains(GOOD) && debug.contains("redacted"),
            "{debug}"
        );
    }
}
