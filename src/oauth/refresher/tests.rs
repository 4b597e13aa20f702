//! The refresher on paused time: schedule, back-off, keep-alive, needs-reauth, shutdown.

use std::time::Duration;

use super::*;
use crate::mailbox::Registry;
use crate::oauth::testing::{Script, mailbox, rejected, store_with, unavailable};
use crate::secret::RefreshToken;

const MINUTE: Duration = Duration::from_secs(60);

struct Running {
    script: Arc<Script>,
    cache: Arc<TokenCache<Arc<Script>>>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
    store: Arc<crate::state::files::TokenStore>,
}

fn start(lifetime: Duration, mailboxes: &[&str]) -> Running {
    start_with(Script::new(lifetime), mailboxes)
}

fn start_with(script: Arc<Script>, mailboxes: &[&str]) -> Running {
    let (dir, store) = store_with(mailboxes);
    let cache = Arc::new(TokenCache::new(script.clone(), store.clone(), None));
    let mut registry = Registry::default();
    for m in mailboxes {
        registry.insert(Arc::unwrap_or_clone(mailbox(m))).unwrap();
    }
    let registry = Arc::new(registry);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run(
        cache.clone(),
        move || registry.clone(),
        shutdown.clone(),
    ));
    Running {
        script,
        cache,
        shutdown,
        task,
        _dir: dir,
        store,
    }
}

#[test]
fn refresh_points() {
    assert_eq!(
        refresh_after(Duration::from_secs(3600)),
        Duration::from_secs(2880),
        "80%"
    );
    assert_eq!(
        refresh_after(Duration::from_secs(5400)),
        Duration::from_secs(4320),
        "80%"
    );
    assert_eq!(
        refresh_after(Duration::from_secs(1800)),
        Duration::from_secs(1200),
        "10 min before"
    );
    assert_eq!(
        refresh_after(MINUTE),
        Duration::from_secs(30),
        "half of a very short life"
    );
    assert_eq!(retry_after(1), RETRY_FIRST);
    assert_eq!(retry_after(3), RETRY_FIRST * 4);
    assert_eq!(retry_after(30), RETRY_MAX);
}

#[tokio::test(start_paused = true)]
async fn one_minute_tokens_stay_fresh_without_any_client() {
    let r = start(MINUTE, &["a@x.com", "b@x.com"]);
    // Ten minutes alone; check every 5 s that both mailboxes hold a valid token.
    tokio::time::sleep(Duration::from_secs(10)).await;
    for _ in 0..120 {
        tokio::time::sleep(Duration::from_secs(5)).await;
        for m in ["a@x.com", "b@x.com"] {
            let info = r.cache.schedule_info(m);
            let (_, expires) = info.token.expect("a token");
            assert!(
                expires > Instant::now() + Duration::from_secs(20),
                "{m}: token about to lapse"
            );
        }
    }
    // About one refresh per 30 s per mailbox.
    let calls = r.script.calls();
    assert!(
        (36..=50).contains(&calls),
        "{calls} refreshes in 10 minutes for 2 mailboxes"
    );
    r.shutdown.cancel();
    r.task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn every_refresh_token_is_used_at_least_daily() {
    // Tokens that live 3 days (longer than Entra's): the keep-alive still uses the
    // refresh token every day.
    let r = start(Duration::from_secs(3 * 24 * 3600), &["a@x.com"]);
    tokio::time::sleep(Duration::from_secs(3 * 24 * 3600 + 60)).await;
    let log = r.script.call_log();
    assert!(log.len() >= 4, "{} refreshes in 3 days", log.len());
    for pair in log.windows(2) {
        assert!(
            pair[1].0 - pair[0].0 <= KEEP_ALIVE,
            "a gap longer than a day"
        );
    }
    r.shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn transient_failures_back_off_exponentially() {
    let r = start(Duration::from_secs(3600), &["a@x.com"]);
    for _ in 0..4 {
        r.script.push(Err(unavailable()));
    }
    tokio::time::sleep(Duration::from_secs(20 * 60)).await;
    let times: Vec<Instant> = r.script.call_log().into_iter().map(|(t, _)| t).collect();
    assert!(times.len() >= 5, "{} calls", times.len());
    let gaps: Vec<u64> = times
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs())
        .take(4)
        .collect();
    // 30 s, 60 s, 120 s, 240 s, each up to 10% later.
    for (gap, base) in gaps.iter().zip([30u64, 60, 120, 240]) {
        assert!((base..=base + base / 10 + 1).contains(gap), "gaps {gaps:?}");
    }
    assert_eq!(
        r.cache.status("a@x.com").state,
        State::Ok,
        "the fifth attempt worked"
    );
    r.shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_refused_refresh_token_waits_for_the_admin() {
    let r = start(Duration::from_secs(3600), &["a@x.com"]);
    r.script.push(Err(rejected("invalid_grant", 70000)));
    tokio::time::sleep(Duration::from_secs(60 * 60)).await;
    assert_eq!(r.script.calls(), 1, "no new request with the refused token");
    assert_eq!(r.cache.status("a@x.com").state, State::NeedsReauth);
    r.store
        .save("a@x.com", &RefreshToken::new("rt-new"))
        .unwrap();
    tokio::time::sleep(RECHECK_REAUTH + Duration::from_secs(1)).await;
    assert_eq!(r.script.calls(), 2, "the new token is picked up");
    assert_eq!(r.cache.status("a@x.com").state, State::Ok);
    r.shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn shutdown_stops_the_refresher() {
    let r = start(MINUTE, &["a@x.com"]);
    tokio::time::sleep(Duration::from_secs(10)).await;
    r.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(1), r.task)
        .await
        .expect("stops")
        .unwrap();
    let calls = r.script.calls();
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(r.script.calls(), calls);
}

#[tokio::test(start_paused = true)]
async fn due_mailboxes_are_refreshed_side_by_side() {
    let script = Script::new(60 * MINUTE);
    // Every token request takes 20 s: one after the other, the second would end at 40 s.
    script.set_delay(Duration::from_secs(20));
    let r = start_with(script, &["a@x.com", "b@x.com", "c@x.com"]);
    tokio::time::sleep(Duration::from_secs(22)).await;
    assert_eq!(r.script.calls(), 3, "all three ended after one delay");
    r.shutdown.cancel();
    r.task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn more_due_mailboxes_than_slots_wait_their_turn() {
    let script = Script::new(60 * MINUTE);
    script.set_delay(Duration::from_secs(20));
    let names: Vec<String> = (0..MAX_PARALLEL_REFRESHES + 2)
        .map(|i| format!("m{i}@x.com"))
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let r = start_with(script, &names);
    tokio::time::sleep(Duration::from_secs(22)).await;
    assert_eq!(
        r.script.calls(),
        MAX_PARALLEL_REFRESHES,
        "one round of slots"
    );
    tokio::time::sleep(Duration::from_secs(21)).await;
    assert_eq!(
        r.script.calls(),
        MAX_PARALLEL_REFRESHES + 2,
        "then the rest"
    );
    r.shutdown.cancel();
    r.task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_refresher_waits_out_entras_retry_after() {
    let script = Script::new(60 * MINUTE);
    script.push(Err(crate::oauth::IdpError::Unavailable {
        reason: "HTTP 503".into(),
        retry_after: Some(Duration::from_secs(300)),
    }));
    let r = start_with(script, &["a@x.com"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(r.script.calls(), 1);
    // The back-off alone would try again after 30 s; Entra asked for 300.
    tokio::time::sleep(Duration::from_secs(290)).await;
    assert_eq!(r.script.calls(), 1);
    tokio::time::sleep(Duration::from_secs(40)).await;
    assert_eq!(r.script.calls(), 2);
    r.shutdown.cancel();
    r.task.await.unwrap();
}
