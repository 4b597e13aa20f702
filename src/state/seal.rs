//! Encryption at rest of the secrets in the state folder: refresh tokens
//! (the `files` backend's token files) and client secrets (its registry file).
//!
//! # The key
//!
//! One 256-bit [`StateKey`] seals everything. It comes from the environment variable
//! [`KEY_ENV`] (`M365_RELAY_KEY`) when that is set, else from the config's `key_file`.
//! Both hold the same text: the standard base64 encoding (with padding) of exactly 32
//! bytes, e.g. from `head -c 32 /dev/urandom | base64`; white space around it is ignored.
//!
//! A missing key file is created on first use with a random key, `0600`, without ever
//! replacing a file another process created at the same moment. A key file that group or
//! others may access is refused, as ssh refuses such a private key. The key is not kept in
//! the state folder on purpose: a copy of the state folder alone reveals no secret.
//!
//! # Sealed values
//!
//! [`StateKey::seal`] gives `xc20p1:` followed by the base64 of `nonce || ciphertext || tag`:
//! XChaCha20-Poly1305 with a random 24-byte nonce (random nonces are safe at this size),
//! and the value's *purpose* (e.g. `refresh-token:alice@contoso.com`) as associated data.
//! So a sealed value only opens under the same key *and* the same purpose: a token file
//! copied onto another mailbox's name does not decrypt.
//!
//! # MACs
//!
//! [`StateKey::mac`] authenticates a state file that is not secret but must not be changed
//! without the key (the mailbox registry: password verifiers, delegations, allowed senders):
//! `hs256:` followed by the base64 of HMAC-SHA256 over the purpose (length-prefixed) and the
//! data. Its key is derived from the state key as HKDF-SHA256-Expand (RFC 5869 §2.3) with
//! the label [`MAC_KEY_LABEL`]; the state key is uniformly random, so it serves as the
//! pseudorandom key directly (§3.3). The cipher and the MAC thus never share a key.
//!
//! Nothing here ever resets anything: a value that does not open is an error naming the
//! likely cause (another key), and the caller reports it with the file it came from.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use aws_lc_rs::hmac;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chacha20poly1305::aead::{Aead, AeadInOut, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

/// Environment variable that holds the key (base64 of 32 bytes); it wins over `key_file`.
pub const KEY_ENV: &str = "M365_RELAY_KEY";

/// Length of the key: XChaCha20-Poly1305 takes 256 bits.
pub const KEY_LEN: usize = 32;

/// The prefix of a sealed value: the algorithm and the layout, version 1.
pub const SEALED_PREFIX: &str = "xc20p1:";

/// The prefix of a MAC: HMAC-SHA256, version 1.
pub const MAC_PREFIX: &str = "hs256:";

/// HKDF `info` of the MAC key: no other key is derived with it.
pub const MAC_KEY_LABEL: &[u8] = b"m365-relay state-file MAC key v1";

/// Length of an HMAC-SHA256 tag.
const MAC_LEN: usize = 32;

/// XChaCha20's extended nonce: long enough to be drawn at random for every value.
const NONCE_LEN: usize = 24;

/// Poly1305 tag length.
const TAG_LEN: usize = 16;

/// Longest sealed value [`StateKey::open`] looks at (a refresh token is 1-2 KB; the token
/// store refuses more than 16 KB of plain text).
const MAX_SEALED_LEN: usize = 64 * 1024;

/// Where a [`StateKey`] came from, for messages (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// The environment variable [`KEY_ENV`].
    Env,
    /// A key file.
    File(PathBuf),
    /// [`StateKey::from_bytes`], e.g. in tests.
    Bytes,
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Env => write!(f, "the key from {KEY_ENV}"),
            KeySource::File(path) => write!(f, "the key in {}", path.display()),
            KeySource::Bytes => f.write_str("the key given"),
        }
    }
}

/// The key that seals the secrets in the state folder. Cheap to clone (shared); its bytes
/// are wiped when the last clone is dropped (the cipher zeroizes itself), and `Debug` shows
/// only where it came from.
#[derive(Clone)]
pub struct StateKey {
    inner: Arc<Inner>,
}

struct Inner {
    cipher: XChaCha20Poly1305,
    /// The MAC key, derived from the state key (see the module documentation).
    mac_key: hmac::Key,
    source: KeySource,
}

/// Why a value could not be sealed or opened. Never quotes the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("not a sealed value ({0})")]
    Malformed(&'static str),
    #[error(
        "{key} does not open it: wrong key ({KEY_ENV} or key_file changed?), or the file \
         was tampered with or copied from another mailbox"
    )]
    WrongKey { key: KeySource },
    #[error("the system random number generator failed")]
    Random,
    #[error(
        "{key} does not verify it: it was changed without the key (edited, or replaced by \
         another file), or the key changed ({KEY_ENV} or key_file)"
    )]
    MacMismatch { key: KeySource },
}

// === impl StateKey ===

impl StateKey {
    /// A key from its raw bytes (for tests and embedding; the relay uses [`StateKey::load`]).
    pub fn from_bytes(bytes: &[u8; KEY_LEN]) -> StateKey {
        Self::new(bytes, KeySource::Bytes)
    }

    /// Where this key came from.
    pub fn source(&self) -> &KeySource {
        &self.inner.source
    }

    /// Seals `plaintext` for `purpose` (e.g. `refresh-token:alice@contoso.com`): only this
    /// key, with this same purpose, opens the result.
    pub fn seal(&self, purpose: &str, plaintext: &[u8]) -> Result<String, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SealError::Random)?;
        let nonce = XNonce::from(nonce);
        let aad = associated_data(purpose);
        let ciphertext = self
            .inner
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            // Only for inputs of gigabytes; nothing here is that long.
            .map_err(|_| SealError::Malformed("too long to seal"))?;
        let mut raw = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        raw.extend_from_slice(&nonce);
        raw.extend_from_slice(&ciphertext);
        Ok(format!("{SEALED_PREFIX}{}", BASE64.encode(raw)))
    }

    /// Opens a value sealed by [`StateKey::seal`] for the same `purpose`.
    pub fn open(&self, purpose: &str, sealed: &str) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let body = sealed
            .strip_prefix(SEALED_PREFIX)
            .ok_or(SealError::Malformed("it does not start with `xc20p1:`"))?;
        if body.len() > MAX_SEALED_LEN {
            return Err(SealError::Malformed("too long"));
        }
        let raw = BASE64
            .decode(body)
            .map_err(|_| SealError::Malformed("not base64 after `xc20p1:`"))?;
        self.open_bytes(purpose, &raw)
    }

    /// Seals `plaintext` for `purpose` as raw bytes (`nonce || ciphertext || tag`), for
    /// large values kept in binary (queued messages): [`StateKey::seal`] without the text.
    pub fn seal_bytes(&self, purpose: &str, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SealError::Random)?;
        let mut raw = Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN);
        raw.extend_from_slice(&nonce);
        raw.extend_from_slice(plaintext);
        let mut body = raw.split_off(NONCE_LEN);
        self.inner
            .cipher
            .encrypt_in_place(&XNonce::from(nonce), &associated_data(purpose), &mut body)
            .map_err(|_| SealError::Malformed("too long to seal"))?;
        raw.append(&mut body);
        Ok(raw)
    }

    /// Opens bytes sealed by [`StateKey::seal_bytes`] for the same `purpose`.
    pub fn open_bytes(
        &self,
        purpose: &str,
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, SealError> {
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return Err(SealError::Malformed("too short"));
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let nonce = XNonce::try_from(nonce).map_err(|_| SealError::Malformed("too short"))?;
        let mut buffer = Zeroizing::new(ciphertext.to_vec());
        self.inner
            .cipher
            .decrypt_in_place(&nonce, &associated_data(purpose), &mut *buffer)
            .map_err(|_| SealError::WrongKey {
                key: self.inner.source.clone(),
            })?;
        Ok(buffer)
    }

    /// The MAC of `data` for `purpose` (e.g. `mailbox-registry:v5`): `hs256:<base64>`.
    pub fn mac(&self, purpose: &str, data: &[u8]) -> String {
        format!("{MAC_PREFIX}{}", BASE64.encode(self.tag(purpose, data)))
    }

    /// Checks `mac` (from [`StateKey::mac`]) of `data` for `purpose`, in constant time.
    pub fn verify_mac(&self, purpose: &str, data: &[u8], mac: &str) -> Result<(), SealError> {
        let body = mac
            .strip_prefix(MAC_PREFIX)
            .ok_or(SealError::Malformed("the MAC does not start with `hs256:`"))?;
        if body.len() > 2 * MAC_LEN {
            return Err(SealError::Malformed("the MAC is too long"));
        }
        let tag = BASE64
            .decode(body)
            .map_err(|_| SealError::Malformed("the MAC is not base64 after `hs256:`"))?;
        let expected = self.tag(purpose, data);
        if tag.len() == MAC_LEN
            && aws_lc_rs::constant_time::verify_slices_are_equal(&tag, expected.as_ref()).is_ok()
        {
            Ok(())
        } else {
            Err(SealError::MacMismatch {
                key: self.inner.source.clone(),
            })
        }
    }

    /// HMAC-SHA256 under the MAC key of `len(purpose) || purpose || data`.
    fn tag(&self, purpose: &str, data: &[u8]) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.inner.mac_key);
        ctx.update(&(purpose.len() as u64).to_be_bytes());
        ctx.update(purpose.as_bytes());
        ctx.update(data);
        ctx.sign()
    }

    pub(super) fn new(bytes: &[u8; KEY_LEN], source: KeySource) -> StateKey {
        let cipher = XChaCha20Poly1305::new(&(*bytes).into());
        StateKey {
            inner: Arc::new(Inner {
                cipher,
                mac_key: derive_mac_key(bytes),
                source,
            }),
        }
    }
}

impl fmt::Debug for StateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateKey")
            .field("source", &self.inner.source)
            .field("key", &"[redacted]")
            .finish()
    }
}

/// The MAC key: HKDF-SHA256-Expand(PRK = the state key, info = [`MAC_KEY_LABEL`], L = 32),
/// which is one HMAC block: HMAC(key, info || 0x01).
fn derive_mac_key(state_key: &[u8; KEY_LEN]) -> hmac::Key {
    let prk = hmac::Key::new(hmac::HMAC_SHA256, state_key);
    let mut ctx = hmac::Context::with_key(&prk);
    ctx.update(MAC_KEY_LABEL);
    ctx.update(&[1]);
    let okm = Zeroizing::new(ctx.sign().as_ref().to_vec());
    hmac::Key::new(hmac::HMAC_SHA256, &okm)
}

/// The associated data of a sealed value: the format and the purpose.
fn associated_data(purpose: &str) -> Vec<u8> {
    [SEALED_PREFIX.as_bytes(), purpose.as_bytes()].concat()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use std::ffi::OsString;
    use std::io;
    use std::path::Path;

    use super::*;
    use crate::state::key::KeyError;
    use crate::state::private;

    const PURPOSE: &str = "refresh-token:alice@contoso.com";

    fn key(byte: u8) -> StateKey {
        StateKey::from_bytes(&[byte; KEY_LEN])
    }

    fn b64(bytes: &[u8]) -> OsString {
        BASE64.encode(bytes).into()
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn bytes_round_trip_under_their_purpose_only() {
        let key = key(1);
        let message = b"Subject: secret\r\n\r\nbody".repeat(1000);
        let sealed = key.seal_bytes("queue:1", &message).unwrap();
        assert_eq!(sealed.len(), message.len() + NONCE_LEN + TAG_LEN);
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(
            &key.open_bytes("queue:1", &sealed).unwrap()[..],
            &message[..]
        );
        assert!(key.open_bytes("queue:2", &sealed).is_err());
        assert!(self::key(2).open_bytes("queue:1", &sealed).is_err());
        let mut bent = sealed.clone();
        bent[40] ^= 1;
        assert!(key.open_bytes("queue:1", &bent).is_err());
        assert!(key.open_bytes("queue:1", &sealed[..10]).is_err());
    }

    #[test]
    fn round_trip() {
        let key = key(1);
        let sealed = key.seal(PURPOSE, b"0.AXEA-secret.token").unwrap();
        assert!(sealed.starts_with("xc20p1:"), "{sealed}");
        assert!(!sealed.contains("secret"), "{sealed}");
        assert_eq!(
            &key.open(PURPOSE, &sealed).unwrap()[..],
            b"0.AXEA-secret.token"
        );
        let again = key.seal(PURPOSE, b"0.AXEA-secret.token").unwrap();
        assert_ne!(sealed, again, "a fresh nonce every time");
        assert_eq!(
            &key.open(PURPOSE, &again).unwrap()[..],
            b"0.AXEA-secret.token"
        );
        let empty = key.seal(PURPOSE, b"").unwrap();
        assert!(key.open(PURPOSE, &empty).unwrap().is_empty());
        // A clone shares the key.
        assert_eq!(
            &key.clone().open(PURPOSE, &sealed).unwrap()[..],
            b"0.AXEA-secret.token"
        );
    }

    #[test]
    fn another_key_or_purpose_does_not_open_it() {
        let sealed = key(1).seal(PURPOSE, b"secret").unwrap();
        let e = key(2).open(PURPOSE, &sealed).unwrap_err();
        assert_eq!(
            e,
            SealError::WrongKey {
                key: KeySource::Bytes
            }
        );
        let shown = e.to_string();
        assert!(
            shown.contains("wrong key (M365_RELAY_KEY or key_file changed?)"),
            "{shown}"
        );
        assert!(shown.contains("tampered"), "{shown}");
        let e = key(1)
            .open("refresh-token:bob@contoso.com", &sealed)
            .unwrap_err();
        assert!(matches!(e, SealError::WrongKey { .. }), "{e}");
    }

    #[test]
    fn a_tampered_value_does_not_open() {
        let key = key(1);
        let sealed = key.seal(PURPOSE, b"secret").unwrap();
        let raw = BASE64.decode(&sealed[SEALED_PREFIX.len()..]).unwrap();
        for i in [0, NONCE_LEN, raw.len() - 1] {
            let mut bad = raw.clone();
            bad[i] ^= 1;
            let bad = format!("{SEALED_PREFIX}{}", BASE64.encode(&bad));
            let e = key.open(PURPOSE, &bad).unwrap_err();
            assert!(matches!(e, SealError::WrongKey { .. }), "byte {i}: {e}");
        }
        let truncated = format!("{SEALED_PREFIX}{}", BASE64.encode(&raw[..raw.len() - 1]));
        assert!(key.open(PURPOSE, &truncated).is_err());
    }

    #[test]
    fn malformed_values_are_named_as_such() {
        let key = key(1);
        let short = format!(
            "{SEALED_PREFIX}{}",
            BASE64.encode([0u8; NONCE_LEN + TAG_LEN - 1])
        );
        for (bad, why) in [
            ("secret", "does not start with `xc20p1:`"),
            ("xc20p2:AAAA", "does not start with `xc20p1:`"),
            ("xc20p1:!!", "not base64"),
            ("xc20p1:", "too short"),
            (short.as_str(), "too short"),
        ] {
            let e = key.open(PURPOSE, bad).unwrap_err();
            assert!(matches!(e, SealError::Malformed(_)), "{bad}: {e}");
            assert!(e.to_string().contains(why), "{bad}: {e}");
            assert!(!e.to_string().contains("secret"), "{e}");
        }
    }

    #[test]
    fn the_environment_value_must_be_base64_of_32_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("state.key");
        let from_env = StateKey::load_with(Some(b64(&[5; 32])), &file).unwrap();
        assert_eq!(from_env.source(), &KeySource::Env);
        let sealed = key(5).seal(PURPOSE, b"x").unwrap();
        assert_eq!(&from_env.open(PURPOSE, &sealed).unwrap()[..], b"x");
        assert!(!file.exists(), "with the variable set, no key file is made");
        let padded = format!("  {}\n", BASE64.encode([5; 32]));
        assert!(StateKey::from_env_value(padded.into()).is_ok());

        let secret_looking = BASE64.encode(b"hunter2-hunter2-hunter2");
        for bad in [
            OsString::new(),
            "   ".into(),
            "not base64!".into(),
            b64(&[5; 31]),
            b64(&[5; 33]),
            secret_looking.clone().into(),
        ] {
            let e = StateKey::load_with(Some(bad.clone()), &file).unwrap_err();
            let shown = e.to_string();
            assert!(matches!(e, KeyError::Env { .. }), "{bad:?}: {shown}");
            assert!(shown.starts_with("M365_RELAY_KEY must be"), "{shown}");
            assert!(!shown.contains(&secret_looking), "{shown}");
        }
        assert!(!file.exists());
    }

    #[test]
    fn a_missing_key_file_is_created_private_and_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("certs/state.key");
        let first = StateKey::load_with(None, &file).unwrap();
        assert_eq!(first.source(), &KeySource::File(file.clone()));
        assert_eq!(mode(&file), 0o600);
        assert_eq!(mode(&dir.path().join("certs")), 0o700);
        let text = std::fs::read_to_string(&file).unwrap();
        assert_eq!(BASE64.decode(text.trim()).unwrap().len(), KEY_LEN);
        assert!(text.ends_with('\n'));

        let sealed = first.seal(PURPOSE, b"x").unwrap();
        let second = StateKey::load_with(None, &file).unwrap();
        assert_eq!(&second.open(PURPOSE, &sealed).unwrap()[..], b"x");
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            text,
            "not replaced"
        );
        // The same text works as M365_RELAY_KEY.
        let env = StateKey::load_with(Some(text.into()), &file).unwrap();
        assert_eq!(&env.open(PURPOSE, &sealed).unwrap()[..], b"x");
    }

    #[test]
    fn a_missing_key_file_that_cannot_be_created_says_where_a_key_comes_from() {
        let dir = tempfile::tempdir().unwrap();
        // Not there, and it cannot be made: a link to nowhere stands in for an unmounted
        // secret in /run/secrets, which the container's user may not write (tests run as
        // root, whom permissions do not stop).
        let file = dir.path().join("m365_relay_key");
        std::os::unix::fs::symlink(dir.path().join("unmounted"), &file).unwrap();
        let e = StateKey::load_with(None, &file).unwrap_err();
        let shown = e.to_string();
        assert!(matches!(e, KeyError::Missing { .. }), "{shown}");
        assert!(
            shown.starts_with("no state key: mount the secret or set M365_RELAY_KEY"),
            "{shown}"
        );
        assert!(shown.contains("m365_relay_key"), "{shown}");
        // With the key in the environment, the missing file is no error.
        let env = b64(&[7; KEY_LEN]);
        assert!(StateKey::load_with(Some(env), &file).is_ok());
    }

    #[test]
    fn a_key_file_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("state.key");
        // Created by someone else between our look and our write: theirs is used.
        let key_text = format!("{}\n", BASE64.encode([9; 32]));
        private::create_private(&file, key_text.as_bytes()).unwrap();
        let e = private::create_private(&file, b"other").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        let sealed = key(9).seal(PURPOSE, b"x").unwrap();
        let loaded = StateKey::create_file(&file).unwrap();
        assert_eq!(&loaded.open(PURPOSE, &sealed).unwrap()[..], b"x");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), key_text);
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1, "no temp file left");
    }

    #[test]
    fn a_bad_or_exposed_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("state.key");
        for (content, why) in [
            (&b""[..], "it is empty"),
            (b"\n", "it is empty"),
            (&[0xff, 0xfe][..], "not text"),
            (b"raw bytes, not base64 at all....", "not base64"),
            (BASE64.encode([1; 16]).as_bytes(), "32 bytes"),
        ] {
            std::fs::write(&file, content).unwrap();
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
            let e = StateKey::load_with(None, &file).unwrap_err();
            let shown = e.to_string();
            assert!(matches!(e, KeyError::Invalid { .. }), "{shown}");
            assert!(
                shown.contains(why) && shown.contains("state.key"),
                "{shown}"
            );
        }
        std::fs::write(&file, BASE64.encode([1; 32])).unwrap();
        for exposed in [0o640, 0o604, 0o660, 0o610] {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(exposed)).unwrap();
            let e = StateKey::load_with(None, &file).unwrap_err();
            assert!(matches!(e, KeyError::Exposed { .. }), "{exposed:o}: {e}");
            assert!(e.to_string().contains("chmod 600"), "{e}");
        }
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert!(StateKey::load_with(None, &file).is_ok());
    }

    #[test]
    fn a_mac_verifies_only_the_same_data_purpose_and_key() {
        let (one, two) = (key(1), key(2));
        let mac = one.mac("registry", b"data");
        assert!(mac.starts_with("hs256:"), "{mac}");
        assert_eq!(mac, one.mac("registry", b"data"), "deterministic");
        assert!(one.verify_mac("registry", b"data", &mac).is_ok());
        for (k, purpose, data) in [
            (&one, "registry", &b"datA"[..]),
            (&one, "registrY", b"data"),
            // The purpose is length-prefixed: moving bytes across the border changes it.
            (&one, "registryd", b"ata"),
            (&two, "registry", b"data"),
        ] {
            let e = k.verify_mac(purpose, data, &mac).unwrap_err();
            assert!(matches!(e, SealError::MacMismatch { .. }), "{e}");
            assert!(e.to_string().contains("changed without the key"), "{e}");
        }
        for bad in ["", "hs256:", "hs256:!!", "hs256:AAAA", "hmac:AAAA"] {
            assert!(one.verify_mac("registry", b"data", bad).is_err(), "{bad}");
        }
        // The MAC key is not the cipher key: the MAC is not HMAC under the raw key.
        let raw = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &[1; KEY_LEN]), b"data");
        assert_ne!(mac, format!("{MAC_PREFIX}{}", BASE64.encode(raw)));
    }

    #[test]
    fn debug_never_shows_the_key() {
        let shown = format!("{:?}", key(0x41));
        assert_eq!(shown, r#"StateKey { source: Bytes, key: "[redacted]" }"#);
    }
}
