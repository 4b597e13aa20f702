//! Test support for the token lifecycle: a scripted [`TokenSource`] that answers from a
//! queue and records when it was called, a mailbox, and a token store in a temp folder.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::cache::TokenSource;
use super::endpoint::App;
use super::store::TokenStore;
use super::{IdpError, TokenGrant};
use crate::mailbox::{Mailbox, Registration};
use crate::secret::{AccessToken, RefreshToken};

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

impl TokenSource for Arc<Script> {
    fn refresh(
        &self,
        _app: &App<'_>,
        refresh_token: &RefreshToken,
        _scopes: &[&str],
    ) -> impl std::future::Future<Output = Result<TokenGrant, IdpError>> + Send {
        let script = self.clone();
        let used = refresh_token.expose().to_owned();
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
                refresh_token: Some(RefreshToken::new(format!("rt-{n}"))),
                scope: "https://outlook.office.com/SMTP.Send".into(),
                id_token: None,
            })
        }
    }
}

pub fn mailbox(address: &str) -> Arc<Mailbox> {
    Arc::new(Mailbox {
        address: address.to_owned(),
        registration: Registration::App {
            tenant: "contoso.onmicrosoft.com".into(),
            client_id: "6731de76-14a6-49ae-97bc-6eba6914391e".into(),
            client_secret: None,
        },
        password: None,
        created: 0,
    })
}

/// A token store in a temp folder holding `rt-0` for each of `mailboxes`.
pub fn store_with(mailboxes: &[&str]) -> (tempfile::TempDir, Arc<TokenStore>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = TokenStore::new(dir.path(), super::seal::StateKey::from_bytes(&[7; 32]));
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
