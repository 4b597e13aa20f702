//! The token cache's turn with the fleet, against leases in memory that play the other
//! relays: a newer shared token is taken without asking Entra, with its real times; a
//! login waits while another relay holds the lease and takes its token; if none comes,
//! that is a transient failure; an older shared token is not taken, and a refresh is
//! finished with the rotation under its lease.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::*;
use crate::oauth::testing::{Script, mailbox, store_with};
use crate::secret::{AccessToken, RefreshToken};
use crate::state::{Finished, Lease, Outcome, Redeemable, SharedToken, StoreError, TokenLeases};

const HOUR: Duration = Duration::from_secs(3600);

/// Leases in memory: a shared token, whether another relay holds the lease, and what was
/// finished.
#[derive(Debug, Default)]
struct Others {
    shared: Mutex<Option<SharedToken>>,
    held: Mutex<bool>,
    finished: Mutex<Vec<Finish>>,
}

/// (fence, redeemed, rotated, shared token) of a finish.
type Finish = (i64, Option<String>, Option<String>, String);

impl Others {
    fn share(&self, token: &str, age: Duration, left: Duration, fence: i64) {
        let now = SystemTime::now();
        *self.shared.lock().unwrap() = Some(SharedToken {
            token: AccessToken::new(token),
            obtained: now - age,
            expires: now + left,
            fence,
        });
    }
}

impl TokenLeases for Others {
    fn shared(&self, _key: &str) -> Result<Option<SharedToken>, StoreError> {
        Ok(self.shared.lock().unwrap().clone())
    }

    fn take(&self, mailbox: &str, _ttl: Duration) -> Result<Option<Lease>, StoreError> {
        let held = *self.held.lock().unwrap();
        Ok((!held).then(|| Lease {
            mailbox: mailbox.to_owned(),
            fence: 10,
        }))
    }

    fn refresh_token(&self, _lease: &Lease) -> Result<Option<Redeemable>, StoreError> {
        Ok(Some(Redeemable {
            token: RefreshToken::new("rt-0"),
            version: 3,
        }))
    }

    fn finish(&self, lease: &Lease, outcome: Outcome<'_>) -> Result<Finished, StoreError> {
        let (redeemed, rotated) = match outcome.rotation {
            Some((r, t)) => (
                Some(r.token.expose().to_owned()),
                Some(t.expose().to_owned()),
            ),
            None => (None, None),
        };
        let token = outcome.token.token.expose().to_owned();
        self.finished
            .lock()
            .unwrap()
            .push((lease.fence, redeemed, rotated, token));
        Ok(Finished::Stored { rotated: true })
    }

    fn release(&self, _lease: &Lease) -> Result<(), StoreError> {
        Ok(())
    }
}

fn fleet_cache(script: &Arc<Script>, others: &Arc<Others>) -> TokenCache<Arc<Script>> {
    let (_dir, store) = store_with(&[]);
    TokenCache::new(script.clone(), store, None).with_leases(others.clone(), Duration::ZERO)
}

#[tokio::test]
async fn a_newer_shared_token_is_taken_with_its_real_times_without_asking_entra() {
    let (script, others) = (Script::new(HOUR), Arc::new(Others::default()));
    others.share(
        "at-shared",
        Duration::from_secs(600),
        Duration::from_secs(3000),
        4,
    );
    let cache = fleet_cache(&script, &others);
    let token = cache
        .access_token(&mailbox("a@x.com"), SMTP_MIN_VALIDITY)
        .await;
    assert_eq!(token.unwrap().expose(), "at-shared");
    assert_eq!(script.calls(), 0);
    let (obtained, expires) = cache.schedule_info("a@x.com").token.unwrap();
    let lifetime = expires.duration_since(obtained).as_secs();
    assert!((3599..=3601).contains(&lifetime), "{lifetime}");
    assert!(others.finished.lock().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_login_waits_for_the_token_of_the_relay_holding_the_lease() {
    let (script, others) = (Script::new(HOUR), Arc::new(Others::default()));
    *others.held.lock().unwrap() = true;
    let cache = fleet_cache(&script, &others);
    let other = others.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        other.share("at-theirs", Duration::ZERO, HOUR, 7);
    });
    let token = cache
        .access_token(&mailbox("a@x.com"), SMTP_MIN_VALIDITY)
        .await;
    assert_eq!(token.unwrap().expose(), "at-theirs");
    assert_eq!(script.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn no_token_from_the_lease_holder_is_a_transient_failure_after_the_lease() {
    let (script, others) = (Script::new(HOUR), Arc::new(Others::default()));
    *others.held.lock().unwrap() = true;
    let cache = fleet_cache(&script, &others);
    let started = tokio::time::Instant::now();
    let e = cache
        .access_token(&mailbox("a@x.com"), SMTP_MIN_VALIDITY)
        .await
        .unwrap_err();
    assert!(matches!(e, crate::oauth::TokenError::Store(_)), "{e:?}");
    assert!(!e.needs_admin());
    assert!(started.elapsed() >= LEASE_MARGIN, "{:?}", started.elapsed());
    assert_eq!(script.calls(), 0);
    assert_eq!(cache.schedule_info("a@x.com").failures, 1);
}

#[tokio::test]
async fn an_older_or_nearly_expired_shared_token_is_not_taken_and_a_refresh_is_finished() {
    let (script, others) = (Script::new(HOUR), Arc::new(Others::default()));
    // Two minutes left: less than SMTP asks for.
    others.share(
        "at-old",
        Duration::from_secs(3480),
        Duration::from_secs(120),
        4,
    );
    let cache = fleet_cache(&script, &others);
    let m = mailbox("a@x.com");
    assert_eq!(
        cache
            .access_token(&m, SMTP_MIN_VALIDITY)
            .await
            .unwrap()
            .expose(),
        "at-1"
    );
    let finished = others.finished.lock().unwrap().clone();
    let rotation = (Some("rt-0".to_owned()), Some("rt-1".to_owned()));
    assert_eq!(finished, [(10, rotation.0, rotation.1, "at-1".to_owned())]);

    // The refresher finds a shared token with the fence of its own: not newer, refreshed.
    others.share("at-1", Duration::ZERO, HOUR, 10);
    let seen = cache.schedule_info("a@x.com").token.map(|(o, _)| o);
    cache.refresh_now(&m, seen).await.unwrap();
    assert_eq!(script.calls(), 2);
}

#[tokio::test]
async fn a_shared_token_the_server_refused_is_not_taken_again() {
    let (script, others) = (Script::new(HOUR), Arc::new(Others::default()));
    others.share("at-shared", Duration::ZERO, HOUR, 4);
    let cache = fleet_cache(&script, &others);
    let m = mailbox("a@x.com");
    let refused = cache.access_token(&m, SMTP_MIN_VALIDITY).await.unwrap();
    assert_eq!(refused.expose(), "at-shared");
    cache.invalidate("a@x.com", &refused);
    assert_eq!(
        cache
            .access_token(&m, SMTP_MIN_VALIDITY)
            .await
            .unwrap()
            .expose(),
        "at-1"
    );
    assert_eq!(script.calls(), 1);
}
