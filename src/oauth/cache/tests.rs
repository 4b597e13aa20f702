//! The token cache on paused time with a scripted token source: single flight, reuse
//! until the validity margin, rotation persisted, needs-reauth without asking Entra again,
//! and a still-valid token serving while Entra is down.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::mailbox::Mailbox;
use crate::oauth::health::State;
use crate::oauth::testing::{
    CLIENT_CREDENTIALS, Script, app_only_mailbox, mailbox, rejected, store_with, unavailable,
};
use crate::oauth::{IdpError, TokenError};
use crate::secret::{AccessToken, RefreshToken};
use crate::state::files::TokenStore;

const HOUR: Duration = Duration::from_secs(3600);

/// A login's access token for `m` (SMTP's validity), as text.
async fn token(cache: &TokenCache<Arc<Script>>, m: &Mailbox) -> String {
    let token = cache.access_token(m, SMTP_MIN_VALIDITY).await.unwrap();
    token.expose().to_owned()
}

fn cache(script: &Arc<Script>, store: Arc<TokenStore>) -> Arc<TokenCache<Arc<Script>>> {
    Arc::new(TokenCache::new(script.clone(), store, None))
}

#[tokio::test(start_paused = true)]
async fn twenty_concurrent_logins_share_one_refresh() {
    let script = Script::new(HOUR);
    script.set_delay(Duration::from_millis(300));
    let (_dir, store) = store_with(&["a@x.com"]);
    let cache = cache(&script, store);
    let m = mailbox("a@x.com");
    for login in concurrent_logins(&cache, &m, 20).await {
        assert_eq!(login.unwrap().expose(), "at-1");
    }
    assert_eq!(script.calls(), 1);
}

/// `n` logins for `m` at once, spawned before the first is awaited; their results.
async fn concurrent_logins(
    cache: &Arc<TokenCache<Arc<Script>>>,
    m: &Mailbox,
    n: usize,
) -> Vec<Result<AccessToken, TokenError>> {
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let (cache, m) = (cache.clone(), m.clone());
            tokio::spawn(async move { cache.access_token(&m, SMTP_MIN_VALIDITY).await })
        })
        .collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("task"));
    }
    out
}

#[tokio::test(start_paused = true)]
async fn a_token_is_reused_until_five_minutes_before_it_expires() {
    let script = Script::new(HOUR);
    let (_dir, store) = store_with(&["a@x.com"]);
    let cache = cache(&script, store.clone());
    let m = mailbox("a@x.com");
    cache.access_token(&m, SMTP_MIN_VALIDITY).await.unwrap();
    tokio::time::advance(HOUR - Duration::from_secs(301)).await;
    cache.access_token(&m, SMTP_MIN_VALIDITY).await.unwrap();
    assert_eq!(script.calls(), 1);
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(token(&cache, &m).await, "at-2");
    // Each refresh used the refresh token the one before stored.
    let used: Vec<String> = script.call_log().into_iter().map(|(_, rt)| rt).collect();
    assert_eq!(used, vec!["rt-0", "rt-1"]);
    assert_eq!(store.load("a@x.com").unwrap().unwrap().expose(), "rt-2");
}

#[tokio::test(start_paused = true)]
async fn imap_sessions_get_tokens_with_ten_minutes_left() {
    let imap = crate::server::Protocol::Imap.min_token_validity();
    let script = Script::new(HOUR);
    let (_dir, store) = store_with(&["a@x.com"]);
    let cache = cache(&script, store);
    let m = mailbox("a@x.com");
    cache.access_token(&m, imap).await.unwrap();
    tokio::time::advance(HOUR - Duration::from_secs(601)).await;
    cache.access_token(&m, imap).await.unwrap();
    assert_eq!(script.calls(), 1);
    tokio::time::advance(Duration::from_secs(2)).await;
    cache.access_token(&m, imap).await.unwrap();
    assert_eq!(
        script.calls(),
        2,
        "a token with less than 10 minutes left is refreshed first"
    );
}

#[tokio::test(start_paused = true)]
async fn a_refused_refresh_token_is_not_sent_again_until_a_new_one_is_stored() {
    let script = Script::new(HOUR);
    script.push(Err(rejected("invalid_grant", 700082)));
    let (_dir, store) = store_with(&["a@x.com"]);
    let cache = cache(&script, store.clone());
    let m = mailbox("a@x.com");
    for _ in 0..3 {
        let e = cache.access_token(&m, SMTP_MIN_VALIDITY).await.unwrap_err();
        assert!(e.needs_admin(), "{e}");
    }
    assert_eq!(script.calls(), 1, "Entra is asked once");
    let status = cache.status("a@x.com");
    assert_eq!(
        (status.state, status.error_codes.clone()),
        (State::NeedsReauth, vec![700082])
    );
    // The admin authorizes again: the new token is used at once.
    store.save("a@x.com", &RefreshToken::new("rt-new")).unwrap();
    assert_eq!(token(&cache, &m).await, "at-2");
    assert_eq!(cache.status("a@x.com").state, State::Ok);
}

#[tokio::test(start_paused = true)]
async fn a_still_valid_token_serves_while_entra_is_down() {
    let script = Script::new(HOUR);
    let (_dir, store) = store_with(&["a@x.com"]);
    let cache = cache(&script, store);
    let m = mailbox("a@x.com");
    cache.access_token(&m, SMTP_MIN_VALIDITY).await.unwrap();
    tokio::time::advance(HOUR - Duration::from_secs(200)).await;
    script.push(Err(unavailable()));
    let token = cache.access_token(&m, SMTP_MIN_VALIDITY).await.unwrap();
    assert_eq!(token.expose(), "at-1", "200 s left: better than no login");
    assert_eq!(cache.status("a@x.com").state, State::Failing);
    tokio::time::advance(Duration::from_secs(170)).await;
    script.push(Err(unavailable()));
    assert!(
        cache.access_token(&m, SMTP_MIN_VALIDITY).await.is_err(),
        "30 s left is too little"
    );
}

#[tokio::test(start_paused = true)]
async fn logins_queued_behind_a_failed_refresh_share_its_failure() {
    let script = Script::new(HOUR);
    script.set_delay(Duration::from_millis(300));
    script.push(Err(unavailable()));
    let (_dir, store) = store_with(&["a@x.com"]);
    let cache = cache(&script, store);
    let m = mailbox("a@x.com");
    for login in concurrent_logins(&cache, &m, 5).await {
        assert!(login.is_err());
    }
    assert_eq!(script.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_mailbox_without_a_refresh_token_is_no_token() {
    let script = Script::new(HOUR);
    let (_dir, store) = store_with(&[]);
    let cache = cache(&script, store);
    let e = cache
        .access_token(&mailbox("a@x.com"), SMTP_MIN_VALIDITY)
        .await
        .unwrap_err();
    assert!(matches!(e, TokenError::NotAuthorized));
    assert_eq!(cache.status("a@x.com").state, State::NoToken);
    assert_eq!(script.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_app_only_mailbox_gets_tokens_by_client_credentials_without_a_refresh_token() {
    let script = Script::new(HOUR);
    let (dir, store) = store_with(&[]);
    let cache = cache(&script, store.clone());
    let m = app_only_mailbox("robot@x.com");
    assert_eq!(token(&cache, &m).await, "at-1");
    cache.access_token(&m, SMTP_MIN_VALIDITY).await.unwrap();
    tokio::time::advance(HOUR - Duration::from_secs(200)).await;
    cache.access_token(&m, SMTP_MIN_VALIDITY).await.unwrap();
    let used: Vec<String> = script.call_log().into_iter().map(|(_, rt)| rt).collect();
    assert_eq!(used, [CLIENT_CREDENTIALS, CLIENT_CREDENTIALS]);
    assert_eq!(cache.status("robot@x.com").state, State::Ok);
    assert!(
        store.load("robot@x.com").unwrap().is_none(),
        "nothing stored"
    );
    assert!(!dir.path().join("tokens").join("robot@x.com.json").exists());
}

#[tokio::test(start_paused = true)]
async fn refused_client_credentials_fail_at_once_then_are_tried_again() {
    let script = Script::new(HOUR);
    script.push(Err(rejected("invalid_client", 7_000_215)));
    let (_dir, store) = store_with(&[]);
    let cache = cache(&script, store);
    let m = app_only_mailbox("robot@x.com");
    for _ in 0..3 {
        let e = cache.access_token(&m, SMTP_MIN_VALIDITY).await.unwrap_err();
        assert!(e.needs_admin(), "{e}");
        assert!(!matches!(e, TokenError::NotAuthorized), "{e}");
    }
    assert_eq!(script.calls(), 1, "logins share the verdict");
    assert_eq!(cache.status("robot@x.com").state, State::NeedsReauth);

    // The admin fixes the app registration in Entra; the relay asks again after a while.
    tokio::time::advance(APP_ONLY_RECHECK).await;
    assert_eq!(token(&cache, &m).await, "at-2");
    assert_eq!(cache.status("robot@x.com").state, State::Ok);
}

#[tokio::test(start_paused = true)]
async fn entras_retry_after_is_honoured_by_logins() {
    let script = Script::new(HOUR);
    script.push(Err(IdpError::Unavailable {
        reason: "HTTP 429".into(),
        retry_after: Some(Duration::from_secs(120)),
    }));
    let (_dir, store) = store_with(&["a@x.com"]);
    let cache = cache(&script, store);
    let m = mailbox("a@x.com");
    assert!(cache.access_token(&m, SMTP_MIN_VALIDITY).await.is_err());
    assert_eq!(script.calls(), 1);
    // Within Entra's pause a login gets the same answer at once, without a request.
    tokio::time::advance(Duration::from_secs(60)).await;
    let again = cache.access_token(&m, SMTP_MIN_VALIDITY).await;
    assert!(
        matches!(again, Err(TokenError::Idp(IdpError::Unavailable { .. }))),
        "{again:?}"
    );
    assert_eq!(script.calls(), 1);
    let info = cache.schedule_info("a@x.com");
    assert!(info.not_before.is_some_and(|t| t > Instant::now()));
    tokio::time::advance(Duration::from_secs(61)).await;
    assert_eq!(token(&cache, &m).await, "at-2");
    assert_eq!(script.calls(), 2);
    assert_eq!(cache.schedule_info("a@x.com").not_before, None);
}
