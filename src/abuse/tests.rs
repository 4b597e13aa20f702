//! The guard's policy, with tokio's paused clock: waits are measured, not slept.

use std::sync::Arc;

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// One login of `user` from `source` with a right or wrong password; `None` if refused.
async fn login(guard: &LoginGuard, source: &str, user: &str, right: bool) -> Option<Duration> {
    let attempt = guard
        .begin(ip(source), user, &Policy::default())
        .await
        .ok()?;
    let delay = attempt.delay();
    attempt.wait().await;
    if right {
        attempt.succeeded();
    } else {
        attempt.failed().await;
    }
    Some(delay)
}

/// Asserts that one login of `user` from `source` is let in without a delay.
async fn let_in_at_once(guard: &LoginGuard, source: &str, user: &str, right: bool) {
    assert_eq!(
        login(guard, source, user, right).await,
        Some(Duration::ZERO)
    );
}

#[test]
fn sources_are_addresses_and_ipv6_slash_64s() {
    assert_eq!(source_key(ip("192.0.2.7")), ip("192.0.2.7"));
    assert_eq!(source_key(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
    assert_eq!(source_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
    assert_ne!(source_key(ip("2001:db8:1:3::1")), ip("2001:db8:1:2::"));
    assert_eq!(source_key(ip("::1")), ip("::"));
}

#[test]
fn delays_grow_from_the_threshold_and_are_capped() {
    let p = Policy::default();
    let waits: Vec<u64> = (0..10).map(|f| p.source_delay(f).as_secs()).collect();
    assert_eq!(waits, [0, 0, 0, 1, 2, 4, 8, 16, 16, 16]);
    assert_eq!(p.source_delay(u32::MAX), secs(16));
    assert_eq!(p.mailbox_delay(10), Duration::ZERO);
    assert_eq!(p.mailbox_delay(11), secs(1));
    assert_eq!(p.width(), 3, "fewer at once than failures before a wait");
}

#[tokio::test(start_paused = true)]
async fn a_source_waits_then_is_refused_and_comes_back_later() {
    let guard = LoginGuard::default();
    let mut waits = Vec::new();
    while let Some(wait) = login(&guard, "203.0.113.9", "alice@x.com", false).await {
        waits.push(wait.as_secs());
    }
    assert_eq!(waits, [0, 0, 0, 1, 2, 4, 8, 16, 16, 16]);
    let p = Policy::default();
    assert!(guard.is_blocked(ip("203.0.113.9"), &p, now()));
    assert!(
        login(&guard, "203.0.113.9", "bob@x.com", true)
            .await
            .is_none()
    );
    tokio::time::advance(p.block_for).await;
    let_in_at_once(&guard, "203.0.113.9", "bob@x.com", false).await;
}

/// Issue 12, item 2: a success used to clear the whole count, so 36 guesses at alice with
/// a login to the guesser's own mailbox every 3 guesses were never refused.
#[tokio::test(start_paused = true)]
async fn guesses_interleaved_with_own_logins_are_not_forgiven() {
    let guard = LoginGuard::default();
    let mut guesses = 0;
    for n in 0..36 {
        if n % 3 == 0 {
            login(&guard, "198.51.100.7", "mallory@x.com", true).await;
        }
        if login(&guard, "198.51.100.7", "alice@x.com", false)
            .await
            .is_none()
        {
            break;
        }
        guesses += 1;
    }
    assert_eq!(guesses, 10, "as many as without the interleaved logins");
    assert!(guard.is_blocked(ip("198.51.100.7"), &Policy::default(), now()));
}

#[tokio::test(start_paused = true)]
async fn a_success_takes_back_only_its_own_pairs_failures() {
    let guard = LoginGuard::default();
    login(&guard, "192.0.2.1", "alice@x.com", false).await;
    for _ in 0..2 {
        login(&guard, "192.0.2.1", "carol@x.com", false).await;
    }
    // The third failure was carol's typo; carol's right password takes back her two.
    login(&guard, "192.0.2.1", "carol@x.com", true).await;
    let p = Policy::default();
    assert_eq!(
        lock(&guard.sources).failures(&ip("192.0.2.1"), &p, now()),
        1
    );
    // Other sources are not affected by any of it.
    let_in_at_once(&guard, "192.0.2.2", "alice@x.com", false).await;
}

/// Issue 12, item 2: 16 guesses sent at once all went through at once, none waiting.
#[tokio::test(start_paused = true)]
async fn parallel_guesses_count_when_they_start_and_wait_one_after_another() {
    let guard = Arc::new(LoginGuard::default());
    let started = tokio::time::Instant::now();
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let guard = guard.clone();
            tokio::spawn(async move {
                let done = login(&guard, "203.0.113.5", "alice@x.com", false).await;
                done.map(|wait| (wait, started.elapsed()))
            })
        })
        .collect();
    let mut checked = Vec::new();
    for task in tasks {
        if let Some(done) = task.await.unwrap() {
            checked.push(done);
        }
    }
    let waited: Duration = checked.iter().map(|(wait, _)| *wait).sum();
    let last = checked.iter().map(|(_, at)| *at).max().unwrap();
    assert_eq!(checked.len(), 10, "the rest are refused");
    assert_eq!(waited, secs(1 + 2 + 4 + 8 + 16 + 16 + 16));
    assert!(
        last >= waited,
        "the waits add up ({last:?}), not side by side"
    );
}

/// Issue 12, item 2: 16 guesses from two addresses made the victim's correct login wait
/// 16 s, from anywhere.
#[tokio::test(start_paused = true)]
async fn a_mailbox_under_attack_lets_its_usual_source_in_and_strangers_queue() {
    let guard = Arc::new(LoginGuard::default());
    login(&guard, "192.0.2.10", "ceo@x.com", true).await;
    for attacker in ["203.0.113.1", "203.0.113.2"] {
        while login(&guard, attacker, "CEO@x.com ", false).await.is_some() {}
    }
    let t = tokio::time::Instant::now();
    let_in_at_once(&guard, "192.0.2.10", "ceo@x.com", true).await;
    assert_eq!(
        t.elapsed(),
        Duration::ZERO,
        "the usual client waits for nothing"
    );
    // Two strangers at once: one after the other, each the mailbox's wait.
    let strangers: Vec<_> = ["198.51.100.1", "198.51.100.2"]
        .map(|s| {
            let guard = guard.clone();
            tokio::spawn(async move { login(&guard, s, "ceo@x.com", false).await })
        })
        .into_iter()
        .collect();
    for s in strangers {
        assert_eq!(s.await.unwrap(), Some(secs(16)));
    }
    assert_eq!(t.elapsed(), secs(32), "in line, not side by side");
    assert_eq!(guard.mailbox_turns.len(), 0, "the line is gone once empty");
    let_in_at_once(&guard, "198.51.100.3", "cfo@x.com", false).await;
}

#[tokio::test(start_paused = true)]
async fn an_abandoned_attempt_counts_as_a_failure() {
    let guard = LoginGuard::default();
    let p = Policy::default();
    for _ in 0..3 {
        let attempt = guard.begin(ip("192.0.2.9"), "a@x.com", &p).await.unwrap();
        drop(attempt);
    }
    let attempt = guard.begin(ip("192.0.2.9"), "a@x.com", &p).await.unwrap();
    assert_eq!(attempt.delay(), secs(1));
    assert!(
        !attempt.priority(),
        "a source with failures is not a priority"
    );
}

#[tokio::test(start_paused = true)]
async fn failures_outside_the_window_are_forgotten() {
    let guard = LoginGuard::default();
    for _ in 0..5 {
        login(&guard, "192.0.2.50", "a@x.com", false).await;
    }
    tokio::time::advance(secs(600)).await;
    let_in_at_once(&guard, "192.0.2.50", "a@x.com", false).await;
}

#[tokio::test(start_paused = true)]
async fn ipv6_neighbours_share_a_count() {
    let guard = LoginGuard::default();
    for i in 0..10u16 {
        let source = IpAddr::from([0x2001, 0xdb8, 0, 1, i, 0, 0, 1]).to_string();
        login(&guard, &source, "a@x.com", false).await;
    }
    let p = Policy::default();
    assert!(guard.is_blocked(ip("2001:db8:0:1::42"), &p, now()));
    assert!(!guard.is_blocked(ip("2001:db8:0:2::42"), &p, now()));
}

#[tokio::test(start_paused = true)]
async fn tables_stay_bounded_and_keep_blocked_sources_longest() {
    let guard = LoginGuard::with_capacity(100);
    while login(&guard, "192.0.2.1", "a@x.com", false).await.is_some() {}
    // A spray from 2,000 addresses with a fresh user name each.
    for i in 0..2_000u32 {
        let source = IpAddr::from((0x0a00_0000 + i).to_be_bytes()).to_string();
        login(&guard, &source, &format!("user{i}@x.com"), false).await;
    }
    assert!(guard.tracked_sources() <= 100);
    assert!(lock(&guard.mailboxes).records.len() <= 100);
    assert!(lock(&guard.pairs).records.len() <= 100);
    assert!(
        guard.is_blocked(ip("192.0.2.1"), &Policy::default(), now()),
        "evicted last"
    );
    assert_eq!(guard.source_lines.len(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_recent_login_is_remembered_for_its_source() {
    let guard = LoginGuard::default();
    assert!(!guard.recently_logged_in(ip("192.0.2.3"), secs(60), now()));
    login(&guard, "192.0.2.3", "a@x.com", true).await;
    assert!(guard.recently_logged_in(ip("192.0.2.3"), secs(60), now()));
    tokio::time::advance(secs(61)).await;
    assert!(!guard.recently_logged_in(ip("192.0.2.3"), secs(60), now()));
}
