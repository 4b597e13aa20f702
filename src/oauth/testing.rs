//! Test support for the token lifecycle: a scripted [`TokenSource`] that answers from a
//! queue and records when it was called, a mailbox, and a token store in a temp folder.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::assertion::{AssertionAlg, CertificateCredential};
use super::cache::TokenSource;
use super::endpoint::App;
use super::{IdpError, TokenGrant};
use crate::cloud::Cloud;
use crate::mailbox::{Credential, Mailbox, Registration};
use crate::secret::{AccessToken, RefreshToken};
use crate::state::files::TokenStore;

/// Answers refreshes from a queue (default: success with `lifetime`), rotating the refresh
/// token each time (`rt-1`, `rt-2`, ...).
#[derive(Default)]
pub struct Script {
    state: Mutex<ScriptState>,
}

#[derive(Default)]
struct ScriptState {
    queue: VecDeque<Result<Duration, IdpError>>,
    lifetime: Duration,
    delay: Duration,
    calls: Vec<(Instant, String)>,
}

impl Script {
    pub fn new(lifetime: Duration) -> Arc<Script> {
        let script = Script::default();
        script.lock().lifetime = lifetime;
        Arc::new(script)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ScriptState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn push(&self, answer: Result<Duration, IdpError>) {
        self.lock().queue.push_back(answer);
    }

    pub fn set_delay(&self, delay: Duration) {
        self.lock().delay = delay;
    }

    pub fn calls(&self) -> usize {
        self.lock().calls.len()
    }

    /// When each call came, and with which refresh token.
    pub fn call_log(&self) -> Vec<(Instant, String)> {
        self.lock().calls.clone()
    }
}

impl Script {
    /// Waits the delay, records the call (`used`: the refresh token, or
    /// [`CLIENT_CREDENTIALS`]), and answers the next scripted result.
    fn answer(
        self: &Arc<Self>,
        used: String,
        rotate: bool,
    ) -> impl std::future::Future<Output = Result<TokenGrant, IdpError>> + Send + use<> {
        let script = self.clone();
        async move {
            let delay = script.lock().delay;
            tokio::time::sleep(delay).await;
            let mut state = script.lock();
            state.calls.push((Instant::now(), used));
            let n = state.calls.len();
            let lifetime = state.queue.pop_front().unwrap_or(Ok(state.lifetime))?;
            Ok(TokenGrant {
                access_token: AccessToken::new(format!("at-{n}")),
                expires_at: SystemTime::now() + lifetime,
                refresh_token: rotate.then(|| RefreshToken::new(format!("rt-{n}"))),
                scope: "https://outlook.office.com/SMTP.Send".into(),
                id_token: None,
            })
        }
    }
}

/// What [`Script::call_log`] records for a client-credentials grant.
pub const CLIENT_CREDENTIALS: &str = "client-credentials";

impl TokenSource for Arc<Script> {
    fn refresh(
        &self,
        _app: &App<'_>,
        refresh_token: &RefreshToken,
        _scopes: &[&str],
    ) -> impl std::future::Future<Output = Result<TokenGrant, IdpError>> + Send {
        self.answer(refresh_token.expose().to_owned(), true)
    }

    fn client_credentials(
        &self,
        _app: &App<'_>,
        _scopes: &[&str],
    ) -> impl std::future::Future<Output = Result<TokenGrant, IdpError>> + Send {
        self.answer(CLIENT_CREDENTIALS.to_owned(), false)
    }
}

pub fn mailbox(address: &str) -> Arc<Mailbox> {
    Arc::new(Mailbox {
        address: address.to_owned(),
        registration: Registration::App {
            tenant: "contoso.onmicrosoft.com".into(),
            client_id: "6731de76-14a6-49ae-97bc-6eba6914391e".into(),
            credential: Credential::None,
            cloud: Cloud::Global,
            app_only: false,
        },
        password: None,
        created: 0,
        sending: Default::default(),
    })
}

/// An app-only mailbox with a client secret, in the global cloud.
pub fn app_only_mailbox(address: &str) -> Arc<Mailbox> {
    Arc::new(Mailbox {
        address: address.to_owned(),
        registration: Registration::App {
            tenant: "contoso.onmicrosoft.com".into(),
            client_id: "6731de76-14a6-49ae-97bc-6eba6914391e".into(),
            credential: Credential::Secret {
                secret: crate::secret::ClientSecret::new("app~secret"),
                expires: None,
            },
            cloud: Cloud::Global,
            app_only: true,
        },
        password: None,
        created: 0,
        sending: Default::default(),
    })
}

/// A token store in a temp folder holding `rt-0` for each of `mailboxes`.
pub fn store_with(mailboxes: &[&str]) -> (tempfile::TempDir, Arc<TokenStore>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = TokenStore::new(dir.path(), crate::state::StateKey::from_bytes(&[7; 32]));
    for m in mailboxes {
        store.save(m, &RefreshToken::new("rt-0")).expect("save");
    }
    (dir, Arc::new(store))
}

pub fn rejected(error: &str, code: u64) -> IdpError {
    IdpError::Rejected {
        status: 400,
        error: error.into(),
        description: format!("AADSTS{code}: refused"),
        codes: vec![code],
    }
}

pub fn unavailable() -> IdpError {
    IdpError::Unavailable {
        reason: "HTTP 503".into(),
        retry_after: None,
    }
}

/// When the test certificates expire: 2033-05-18 00:00:00 UTC.
pub const TEST_CERT_NOT_AFTER: u64 = 1_999_987_200;

/// A self-signed RSA 2048 certificate (valid until [`TEST_CERT_NOT_AFTER`]) and its
/// PKCS#8 key, in PEM; made once per test run, as RSA key generation is slow in debug
/// builds.
pub fn rsa_pair() -> &'static (String, String) {
    static PAIR: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();
    PAIR.get_or_init(|| new_rsa_certificate("m365-relay test app"))
}

/// A fresh self-signed RSA 2048 certificate named `name`, and its key, in PEM.
pub fn new_rsa_certificate(name: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("RSA key");
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.not_after = rcgen::date_time_ymd(2033, 5, 18);
    let cert = params.self_signed(&key).expect("self-signed certificate");
    (cert.pem(), key.serialize_pem())
}

/// The credential of [`rsa_pair`], signing with `alg`.
pub fn certificate_credential(alg: AssertionAlg) -> CertificateCredential {
    let (cert, key) = rsa_pair();
    CertificateCredential::from_pem(cert.as_bytes(), key.as_bytes(), alg).expect("credential")
}
