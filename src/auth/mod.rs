//! Local password checks: the password a legacy client presents to the relay, checked
//! against the mailbox registry (never against Microsoft 365). The registry itself, as the
//! running relay holds it and re-reads it, is the [`LiveRegistry`]; [`LocalAuth`] only
//! checks a password against the verifier of the mailbox it finds there, and hands that
//! mailbox on.
//!
//! Two kinds of password (see [`PasswordVerifier`]):
//! - **generated** by `mailbox password --generate`: 160 random bits, so a fast keyed hash
//!   (HMAC-SHA256 with a per-mailbox salt) is enough;
//! - **chosen** by the administrator (`--stdin`): argon2id, run on the blocking pool.
//!
//! Every failed check costs one argon2id verification, whatever the reason (unknown
//! mailbox, no password set, wrong generated or chosen password), so timing tells an
//! attacker nothing about which mailboxes exist. A successful argon2id check is remembered
//! in memory as an HMAC under a per-process key, so a client that logs in again with the
//! same password does not pay the key-derivation cost again.

mod live;

pub use live::LiveRegistry;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier as _};
use aws_lc_rs::hmac;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use tokio::sync::Semaphore;
use zeroize::Zeroizing;

use crate::mailbox::{Mailbox, Registry};
use crate::secret::{Password, constant_time_eq};
use crate::state::{RegistryStore, RegistryStoreError};

pub use crate::mailbox::PasswordVerifier;

/// Random bytes in a generated password: 160 bits, written as 32 base32 characters.
const GENERATED_BYTES: usize = 20;

/// Characters per dash-separated group of a generated password.
const GROUP_LEN: usize = 8;

/// argon2id verifications that may run at once. Each takes 19 MiB and a core for tens of
/// milliseconds; without a bound, a flood of wrong passwords would take all memory.
const MAX_PARALLEL_ARGON2: usize = 4;

/// Of those, how many are kept for priority logins ([`LocalAuth::check_with_priority`]):
/// from a source that logged in recently or has no failed login on record. The others
/// are shared by everyone, first come first served.
const RESERVED_ARGON2: usize = 2;

/// An argon2id PHC string with the default parameters (of a password nobody knows),
/// checked when there is nothing real to check, so failures all cost the same.
const DUMMY_PHC: &str = "$argon2id$v=19$m=19456,t=2,p=1$+xnx0ZGIT/+csoED+8Dv9w$PZLTMDklR0KtnxmvMT81wrOTTPtJMA10EnLaW9D/MlE";

/// Why a password could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("the system random number generator failed")]
    Random,
    #[error("the password is empty")]
    Empty,
    #[error("could not hash the password: {0}")]
    Hash(String),
}

/// Makes a new random app password and its verifier. The password is shown to the
/// administrator once and never stored.
pub fn generate_password() -> Result<(Password, PasswordVerifier), PasswordError> {
    let rng = SystemRandom::new();
    let mut raw = Zeroizing::new([0u8; GENERATED_BYTES]);
    let mut salt = [0u8; 32];
    rng.fill(&mut raw[..]).map_err(|_| PasswordError::Random)?;
    rng.fill(&mut salt).map_err(|_| PasswordError::Random)?;
    let encoded = Zeroizing::new(base32_lower(&raw[..]));
    let groups: Vec<&str> = encoded
        .as_bytes()
        .chunks(GROUP_LEN)
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect();
    let password = Password::new(groups.join("-"));
    let tag = generated_tag(&salt, &password);
    Ok((password, PasswordVerifier::Generated { salt, tag }))
}

/// Hashes a password the administrator chose with argon2id (default parameters, random
/// salt). This takes tens of milliseconds on purpose.
pub fn hash_chosen(password: &Password) -> Result<PasswordVerifier, PasswordError> {
    if password.expose().is_empty() {
        return Err(PasswordError::Empty);
    }
    let phc = Argon2::default()
        .hash_password(password.expose().as_bytes())
        .map_err(|e| PasswordError::Hash(e.to_string()))?;
    Ok(PasswordVerifier::Argon2 {
        phc: phc.to_string(),
    })
}

/// Checks client logins against the live mailbox registry ([`LiveRegistry`]).
pub struct LocalAuth {
    live: Arc<LiveRegistry>,
    /// Per mailbox, the HMAC of the last password that passed argon2id (with the mailbox
    /// and its PHC string); at most one entry per registered mailbox.
    remembered: Mutex<HashMap<String, [u8; 32]>>,
    /// The registry load whose mailboxes `remembered` was last pruned to.
    pruned_at: AtomicU64,
    /// Random per process; `None` only if the RNG failed, and then nothing is remembered.
    memo_key: Option<hmac::Key>,
    /// Open to every check.
    argon2_slots: Semaphore,
    /// Kept for priority checks, which take whichever of the two frees first.
    argon2_reserved: Semaphore,
    /// argon2id verifications run so far (the tests count the work done).
    argon2_runs: AtomicU64,
}

// === impl LocalAuth ===

impl LocalAuth {
    /// Checks logins against `live`.
    pub fn new(live: Arc<LiveRegistry>) -> Self {
        let memo_key = hmac::Key::generate(hmac::HMAC_SHA256, &SystemRandom::new()).ok();
        if memo_key.is_none() {
            tracing::warn!("random number generator failed; every login will run argon2id");
        }
        Self {
            live,
            remembered: Mutex::new(HashMap::new()),
            pruned_at: AtomicU64::new(0),
            memo_key,
            argon2_slots: Semaphore::new(MAX_PARALLEL_ARGON2 - RESERVED_ARGON2),
            argon2_reserved: Semaphore::new(RESERVED_ARGON2),
            argon2_runs: AtomicU64::new(0),
        }
    }

    /// Reads the registry of `store` ([`LiveRegistry::open`]) and checks logins against it.
    pub fn open(store: Arc<dyn RegistryStore>) -> Result<Self, RegistryStoreError> {
        Ok(Self::new(Arc::new(LiveRegistry::open(store)?)))
    }

    /// The live registry the checks read.
    pub fn live(&self) -> &Arc<LiveRegistry> {
        &self.live
    }

    /// The registry as last read.
    pub fn registry(&self) -> Arc<Registry> {
        self.live.registry()
    }

    /// Checks a client's login. `user` is the mailbox address, matched case-insensitively.
    /// Returns the mailbox when the password is right; `None` for a wrong password, an
    /// unknown mailbox or one without a password, all after the same amount of work.
    pub async fn check(&self, user: &str, password: &Password) -> Option<Arc<Mailbox>> {
        self.check_with_priority(user, password, false).await
    }

    /// [`LocalAuth::check`]; with `priority`, its argon2id run may also use the capacity
    /// kept for clients the login guard trusts more ([`crate::abuse::Attempt::priority`]),
    /// so that a crowd of guessers cannot make them wait for all of its checks.
    pub async fn check_with_priority(
        &self,
        user: &str,
        password: &Password,
        priority: bool,
    ) -> Option<Arc<Mailbox>> {
        let registry = self.live.current_registry();
        self.prune_remembered(&registry);
        let found = registry
            .get_arc(user)
            .and_then(|m| Some((m.clone(), m.password.clone()?)));
        match found {
            Some((m, PasswordVerifier::Generated { salt, tag })) => {
                let key = hmac::Key::new(hmac::HMAC_SHA256, &salt);
                if hmac::verify(&key, canonical_generated(password).as_bytes(), &tag).is_ok() {
                    return Some(m);
                }
                self.argon2_verify(DUMMY_PHC.to_owned(), password, priority)
                    .await;
                None
            }
            Some((m, PasswordVerifier::Argon2 { phc })) => {
                let memo = self.memo(&m.address, &phc, password);
                if self.is_remembered(&m.address, memo.as_ref()) {
                    return Some(m);
                }
                if !self.argon2_verify(phc, password, priority).await {
                    return None;
                }
                if let Some(memo) = memo {
                    self.remembered
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(m.address.clone(), memo);
                }
                Some(m)
            }
            None => {
                self.argon2_verify(DUMMY_PHC.to_owned(), password, priority)
                    .await;
                None
            }
        }
    }

    /// Runs argon2id on the blocking pool, at most [`MAX_PARALLEL_ARGON2`] at a time; a
    /// check without `priority` only in the shared slots.
    async fn argon2_verify(&self, phc: String, password: &Password, priority: bool) -> bool {
        let permit = if priority {
            tokio::select! {
                permit = self.argon2_slots.acquire() => permit,
                permit = self.argon2_reserved.acquire() => permit,
            }
        } else {
            self.argon2_slots.acquire().await
        };
        let Ok(_permit) = permit else {
            return false;
        };
        self.argon2_runs.fetch_add(1, Ordering::Relaxed);
        let password = password.clone();
        let job = tokio::task::spawn_blocking(move || {
            let Ok(hash) = PasswordHash::new(&phc) else {
                return false;
            };
            Argon2::default()
                .verify_password(password.expose().as_bytes(), &hash)
                .is_ok()
        });
        job.await.unwrap_or_else(|e| {
            tracing::error!(error = %e, "argon2id verification task failed");
            false
        })
    }

    /// HMAC of the password bound to the mailbox and its current PHC string.
    fn memo(&self, address: &str, phc: &str, password: &Password) -> Option<[u8; 32]> {
        let key = self.memo_key.as_ref()?;
        let mut ctx = hmac::Context::with_key(key);
        for part in [
            address.as_bytes(),
            phc.as_bytes(),
            password.expose().as_bytes(),
        ] {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part);
        }
        ctx.sign().as_ref().try_into().ok()
    }

    /// After the registry was read anew, forgets the passwords of mailboxes it no longer
    /// holds.
    fn prune_remembered(&self, registry: &Registry) {
        let loads = self.live.load_count();
        if self.pruned_at.swap(loads, Ordering::Relaxed) == loads {
            return;
        }
        self.remembered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|address, _| registry.get(address).is_some());
    }

    fn is_remembered(&self, address: &str, memo: Option<&[u8; 32]>) -> bool {
        let Some(memo) = memo else { return false };
        let remembered = self
            .remembered
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        remembered
            .get(address)
            .is_some_and(|known| constant_time_eq(known, memo))
    }
}

impl std::fmt::Debug for LocalAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalAuth")
            .field("live", &self.live)
            .finish_non_exhaustive()
    }
}

/// A generated password in the form that is hashed: lower-case, without the dashes and
/// spaces that only make it readable (so a user may type it either way).
fn canonical_generated(password: &Password) -> Zeroizing<String> {
    Zeroizing::new(
        password
            .expose()
            .chars()
            .filter(|c| *c != '-' && *c != ' ')
            .map(|c| c.to_ascii_lowercase())
            .collect(),
    )
}

/// HMAC-SHA256(salt, canonical password) of a generated password.
fn generated_tag(salt: &[u8; 32], password: &Password) -> [u8; 32] {
    let key = hmac::Key::new(hmac::HMAC_SHA256, salt);
    let mut out = [0u8; 32];
    out.copy_from_slice(hmac::sign(&key, canonical_generated(password).as_bytes()).as_ref());
    out
}

/// RFC 4648 base32, lower-case, without padding.
fn base32_lower(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &b in bytes {
        buffer = ((buffer << 8) | u32::from(b)) & 0xffff;
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((buffer >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((buffer << (5 - bits)) & 31) as usize]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mailbox::{Mailbox, Registration};
    use argon2::Params;

    /// A cheap argon2id hash (verification reads the parameters from the PHC string), so
    /// the tests stay fast in debug builds; the dummy check still uses the defaults.
    fn cheap_phc(password: &str) -> PasswordVerifier {
        let argon2 = Argon2::from(Params::new(64, 1, 1, None).unwrap());
        let phc = argon2.hash_password(password.as_bytes()).unwrap();
        PasswordVerifier::Argon2 {
            phc: phc.to_string(),
        }
    }

    fn mailbox(address: &str, password: Option<PasswordVerifier>) -> Mailbox {
        Mailbox {
            address: address.into(),
            registration: Registration::App {
                tenant: "organizations".into(),
                client_id: "00000000-0000-0000-0000-000000000001".into(),
                credential: crate::mailbox::Credential::None,
                cloud: crate::cloud::Cloud::Global,
                app_only: false,
            },
            password,
            created: 0,
            sending: Default::default(),
        }
    }

    /// The registry file of `dir`, sealed with a test key.
    fn files(dir: &std::path::Path) -> Arc<dyn RegistryStore> {
        let key = crate::state::StateKey::from_bytes(&[7; 32]);
        crate::state::files::with_key(dir, key).registry()
    }

    fn auth_with(mailboxes: Vec<Mailbox>) -> (tempfile::TempDir, LocalAuth) {
        let dir = tempfile::tempdir().unwrap();
        let mut registry = Registry::default();
        for m in mailboxes {
            registry.insert(m).unwrap();
        }
        let store = files(dir.path());
        store.save(&registry).unwrap();
        let auth = LocalAuth::open(store).unwrap();
        (dir, auth)
    }

    fn runs(auth: &LocalAuth) -> u64 {
        auth.argon2_runs.load(Ordering::Relaxed)
    }

    #[test]
    fn generated_passwords_are_long_and_readable() {
        let (a, _) = generate_password().unwrap();
        let (b, _) = generate_password().unwrap();
        assert_ne!(a, b);
        let groups: Vec<&str> = a.expose().split('-').collect();
        assert_eq!(groups.len(), 4, "{}", a.expose());
        for g in groups {
            assert_eq!(g.len(), 8);
            assert!(
                g.chars()
                    .all(|c| c.is_ascii_lowercase() || ('2'..='7').contains(&c))
            );
        }
        assert_eq!(base32_lower(b"foobar"), "mzxw6ytboi");
    }

    #[tokio::test]
    async fn a_generated_password_verifies_and_a_near_miss_does_not() {
        let (password, verifier) = generate_password().unwrap();
        let (_dir, auth) = auth_with(vec![mailbox("alice@contoso.com", Some(verifier))]);
        let m = auth.check("alice@contoso.com", &password).await.unwrap();
        assert_eq!(m.address, "alice@contoso.com");
        let typed = password.expose().to_uppercase().replace('-', " ");
        assert!(
            auth.check("alice@contoso.com", &Password::new(typed))
                .await
                .is_some()
        );
        assert_eq!(runs(&auth), 0);

        let mut near = password.expose().to_owned();
        let last = if near.ends_with('a') { "b" } else { "a" };
        near.replace_range(near.len() - 1.., last);
        assert!(
            auth.check("alice@contoso.com", &Password::new(near))
                .await
                .is_none()
        );
        assert_eq!(runs(&auth), 1, "a failure pays one argon2id");
    }

    #[tokio::test]
    async fn a_chosen_password_uses_argon2_once_then_the_memory() {
        let (_dir, auth) = auth_with(vec![mailbox("bob@contoso.com", Some(cheap_phc("pw 1")))]);
        let right = Password::new("pw 1");
        assert!(auth.check("bob@contoso.com", &right).await.is_some());
        assert_eq!(runs(&auth), 1);
        assert!(auth.check("bob@contoso.com", &right).await.is_some());
        assert_eq!(runs(&auth), 1, "the second login is remembered");
        assert!(
            auth.check("bob@contoso.com", &Password::new("pw 2"))
                .await
                .is_none()
        );
        assert_eq!(runs(&auth), 2, "a wrong password always pays argon2id");
        assert!(auth.check("bob@contoso.com", &right).await.is_some());
        assert_eq!(runs(&auth), 2);
    }

    #[tokio::test]
    async fn user_names_match_case_insensitively() {
        let (_dir, auth) = auth_with(vec![mailbox("bob@contoso.com", Some(cheap_phc("pw")))]);
        let m = auth.check("Bob@Contoso.COM", &Password::new("pw")).await;
        assert_eq!(m.unwrap().address, "bob@contoso.com");
    }

    #[tokio::test]
    async fn a_shared_mailbox_logs_in_with_its_own_password() {
        let shared = Mailbox {
            registration: Registration::TokenFrom {
                delegate: "alice@contoso.com".into(),
            },
            ..mailbox("help@contoso.com", Some(cheap_phc("help pw")))
        };
        let (_dir, auth) = auth_with(vec![
            mailbox("alice@contoso.com", Some(cheap_phc("alice pw"))),
            shared,
        ]);
        let m = auth
            .check("help@contoso.com", &Password::new("help pw"))
            .await
            .unwrap();
        assert_eq!(m.address, "help@contoso.com");
        assert!(
            auth.check("help@contoso.com", &Password::new("alice pw"))
                .await
                .is_none(),
            "the delegate's password does not open the shared mailbox"
        );
        let owner = auth.registry().token_owner(&m).unwrap();
        assert_eq!(owner.address, "alice@contoso.com");
    }

    #[tokio::test]
    async fn unknown_or_passwordless_mailboxes_fail_after_the_same_work() {
        let (_dir, auth) = auth_with(vec![mailbox("carol@contoso.com", None)]);
        let pw = Password::new("anything");
        assert!(auth.check("nobody@contoso.com", &pw).await.is_none());
        assert!(auth.check("carol@contoso.com", &pw).await.is_none());
        assert!(auth.check("not an address", &pw).await.is_none());
        assert_eq!(runs(&auth), 3);
    }

    #[tokio::test]
    async fn changes_to_the_file_apply_without_a_restart() {
        let (dir, auth) = auth_with(vec![]);
        let (password, verifier) = generate_password().unwrap();
        assert!(auth.check("dave@contoso.com", &password).await.is_none());
        let store = files(dir.path());
        let mut registry = store.load().unwrap();
        registry
            .insert(mailbox("dave@contoso.com", Some(verifier)))
            .unwrap();
        store.save(&registry).unwrap();
        assert!(auth.check("dave@contoso.com", &password).await.is_some());
        assert_eq!(auth.registry().len(), 1);

        std::fs::write(dir.path().join(crate::state::files::REGISTRY_FILE), "{").unwrap();
        assert!(auth.live().reload().is_err());
        assert!(
            auth.check("dave@contoso.com", &password).await.is_some(),
            "kept"
        );
    }

    #[test]
    fn the_dummy_hash_costs_what_a_chosen_password_costs() {
        let cost = |phc: &str| {
            let p = Params::try_from(&PasswordHash::new(phc).unwrap()).unwrap();
            (p.m_cost(), p.t_cost(), p.p_cost())
        };
        let Ok(PasswordVerifier::Argon2 { phc }) = hash_chosen(&Password::new("pw")) else {
            panic!("not argon2");
        };
        assert!(phc.starts_with("$argon2id$v=19$"), "{phc}");
        assert_eq!(cost(DUMMY_PHC), cost(&phc));
    }

    #[test]
    fn debug_of_a_verifier_is_redacted() {
        let (_, generated) = generate_password().unwrap();
        assert_eq!(
            format!("{generated:?}"),
            "PasswordVerifier::Generated([redacted])"
        );
        let shown = format!("{:?}", cheap_phc("pw"));
        assert_eq!(shown, "PasswordVerifier::Argon2([redacted])");
        assert!(hash_chosen(&Password::new("")).is_err());
    }
}
