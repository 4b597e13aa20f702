//! Where the [`StateKey`] comes from: `M365_RELAY_KEY`, or the key file (created `0600`
//! with a new random key if it is missing, never replaced, refused when others may read it).

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use zeroize::Zeroizing;

use super::seal::{KEY_ENV, KEY_LEN, KeySource, StateKey};
use crate::state::private::{self, PrivateRead};

/// Why no key could be had. Names the variable or the file, never a key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{KEY_ENV} must be the base64 encoding of exactly {KEY_LEN} bytes: {why}")]
    Env { why: &'static str },
    #[error(
        "key_file {}: {why}; it must hold the base64 encoding of exactly {KEY_LEN} bytes \
         (as M365_RELAY_KEY would)",
        file.display()
    )]
    Invalid { file: PathBuf, why: &'static str },
    #[error(
        "key_file {} may be read or written by group or others (mode {mode:03o}); \
         run `chmod 600 {}`",
        file.display(),
        file.display()
    )]
    Exposed { file: PathBuf, mode: u32 },
    /// The key file does not exist and cannot be created (e.g. a container's unmounted
    /// secret, in a folder its user may not write).
    #[error(
        "no state key: mount the secret or set {KEY_ENV} (key_file {} does not exist and \
         cannot be created: {source})",
        file.display()
    )]
    Missing {
        file: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("key_file {}: {source}", file.display())]
    Io {
        file: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the system random number generator failed")]
    Random,
}

// === loading a StateKey ===

impl StateKey {
    /// The key from `M365_RELAY_KEY` if it is set, else from `key_file`, which is created
    /// with a new random key if it does not exist.
    pub fn load(key_file: &Path) -> Result<StateKey, KeyError> {
        Self::load_with(std::env::var_os(KEY_ENV), key_file)
    }

    /// [`StateKey::load`] with the environment variable's value given (so tests need not
    /// change the environment).
    pub fn load_with(env: Option<OsString>, key_file: &Path) -> Result<StateKey, KeyError> {
        if let Some(value) = env {
            return Self::from_env_value(value);
        }
        match Self::read_file(key_file) {
            Err(KeyError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                Self::create_file(key_file).map_err(|e| match e {
                    KeyError::Io { file, source } => KeyError::Missing { file, source },
                    other => other,
                })
            }
            other => other,
        }
    }

    /// The key in the value of `M365_RELAY_KEY`.
    pub fn from_env_value(value: OsString) -> Result<StateKey, KeyError> {
        let value = Zeroizing::new(
            value
                .into_string()
                .map_err(|_| KeyError::Env { why: "not UTF-8" })?,
        );
        let bytes = decode_key(&value).map_err(|why| KeyError::Env { why })?;
        Ok(Self::new(&bytes, KeySource::Env))
    }

    /// The key in an existing key file, which must be private to its owner.
    fn read_file(file: &Path) -> Result<StateKey, KeyError> {
        let text = private::read_private(file, u64::MAX).map_err(|e| match e {
            PrivateRead::Exposed { mode } => KeyError::Exposed {
                file: file.to_owned(),
                mode,
            },
            PrivateRead::Io(source) => KeyError::Io {
                file: file.to_owned(),
                source,
            },
            PrivateRead::TooLarge => KeyError::Invalid {
                file: file.to_owned(),
                why: "too large",
            },
        })?;
        let text = std::str::from_utf8(&text).map_err(|_| KeyError::Invalid {
            file: file.to_owned(),
            why: "not text",
        })?;
        let bytes = decode_key(text).map_err(|why| KeyError::Invalid {
            file: file.to_owned(),
            why,
        })?;
        Ok(Self::new(&bytes, KeySource::File(file.to_owned())))
    }

    /// Creates `file` with a new random key. If another process created it meanwhile,
    /// that one's key is used: a key file is never replaced.
    pub(super) fn create_file(file: &Path) -> Result<StateKey, KeyError> {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        SystemRandom::new()
            .fill(&mut bytes[..])
            .map_err(|_| KeyError::Random)?;
        let text = Zeroizing::new(format!("{}\n", BASE64.encode(&bytes[..])));
        match private::create_private(file, text.as_bytes()) {
            Ok(()) => {
                tracing::info!(
                    key_file = %file.display(),
                    "created a new key for the secrets at rest; back it up: without it, \
                     every mailbox must be authorized again"
                );
                Ok(Self::new(&bytes, KeySource::File(file.to_owned())))
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Self::read_file(file),
            Err(source) => Err(KeyError::Io {
                file: file.to_owned(),
                source,
            }),
        }
    }
}

/// 32 key bytes from base64 text (surrounding white space ignored).
fn decode_key(text: &str) -> Result<Zeroizing<[u8; KEY_LEN]>, &'static str> {
    let text = text.trim();
    if text.is_empty() {
        return Err("it is empty");
    }
    let decoded = Zeroizing::new(BASE64.decode(text).map_err(|_| "it is not base64")?);
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    if decoded.len() != KEY_LEN {
        return Err("it does not decode to 32 bytes");
    }
    key.copy_from_slice(&decoded);
    Ok(key)
}
