//! The fleet's failed-login counts ([`FleetCounters`], with a state shared by several
//! relays) added to this relay's tables, so that guesses spread over relays meet the same
//! delays and blocks as on one relay.
//!
//! - A failed login is counted in the fleet too (one round trip); the answer raises this
//!   relay's counts of the source, the pair and the mailbox to the fleet's, and carries
//!   the source's block when the fleet's failures reached the threshold.
//! - A source the fleet delays or blocks is delayed or refused here as well: the fleet's
//!   failing sources are a map the state reads again in the background every few seconds
//!   (so a connection or a login never waits for the database), taken into this relay's
//!   counts when the source connects or starts a login.
//! - A correct password calls the fleet only when this relay saw failures of its pair
//!   (to take them back there too): a successful login's normal path makes no call.
//!
//! So guesses spread over relays reach the delays and the block as on one relay, give or
//! take the guesses of the last few seconds on the others. While the fleet cannot be
//! reached, this relay counts alone.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use aws_lc_rs::digest::{SHA256, digest};

use super::keys::lock;
use super::{Failure, LoginGuard, Policy};
use crate::state::FleetCounters;
use crate::state::counters::{FailureWindow, LoginKeys, SharedFailures};

/// The fleet's key of a mailbox name: the same on every relay (unlike the keyed hash of
/// this relay's tables), and not the name itself (a guesser's junk is never stored).
pub(super) fn mailbox_digest(user: &str) -> String {
    let name = user.trim().to_lowercase();
    let hash = digest(&SHA256, name.as_bytes());
    hash.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The policy as far as the fleet applies it.
pub(super) fn window(policy: &Policy) -> FailureWindow {
    FailureWindow {
        window: policy.window,
        failures_before_delay: policy.failures_before_delay,
        failures_before_block: policy.failures_before_block,
        block_for: policy.block_for,
    }
}

impl LoginGuard {
    /// This guard, also counting in `fleet` (the relays sharing this state).
    pub fn with_fleet(mut self, fleet: Option<Arc<dyn FleetCounters>>) -> Self {
        self.fleet = fleet;
        self
    }

    /// Takes the fleet's failures and block of `source` (its source key) into this
    /// relay's record, when the fleet has more.
    pub(super) fn take_in_fleet(&self, source: IpAddr, policy: &Policy, now: Instant) {
        let Some(fleet) = &self.fleet else {
            return;
        };
        let failing = fleet.failing_sources(window(policy));
        let Some(shared) = failing.get(&source) else {
            return;
        };
        let mut sources = lock(&self.sources);
        let record = sources.raise(source, shared.failures, policy, now);
        if let Some(until) = shared
            .blocked_until
            .filter(|u| *u > now && !record.blocked(now))
        {
            record.blocked_until = Some(until);
        }
    }

    /// The fleet's keys of a login, when there is a fleet.
    pub(super) fn fleet_keys(&self, source: IpAddr, user: &str) -> Option<LoginKeys> {
        self.fleet.as_ref().map(|_| LoginKeys {
            source,
            mailbox: mailbox_digest(user),
        })
    }

    /// Counts a failure in the fleet, and takes its counts in.
    pub(super) async fn fail_in_fleet(
        &self,
        keys: &LoginKeys,
        mailbox: u64,
        policy: &Policy,
        local: Failure,
    ) -> Failure {
        let Some(fleet) = &self.fleet else {
            return local;
        };
        match fleet.login_failed(keys, window(policy)).await {
            Ok(shared) => self.learn(keys.source, mailbox, &shared, policy, local),
            // Degraded: this relay's count decides alone.
            Err(_) => local,
        }
    }

    /// Raises this relay's counts to the fleet's `shared` ones after a failure.
    fn learn(
        &self,
        source: IpAddr,
        mailbox: u64,
        shared: &SharedFailures,
        policy: &Policy,
        local: Failure,
    ) -> Failure {
        let now = super::now();
        let mut sources = lock(&self.sources);
        let record = sources.raise(source, shared.source, policy, now);
        let mut newly_blocked = local.newly_blocked;
        if let Some(left) = shared.blocked_for.filter(|_| !record.blocked(now)) {
            record.blocked_until = Some(now + left);
            newly_blocked = true;
        }
        let source_failures = record.failures;
        drop(sources);
        lock(&self.pairs).raise((source, mailbox), shared.pair, policy, now);
        lock(&self.mailboxes).raise(mailbox, shared.mailbox, policy, now);
        Failure {
            source_failures,
            newly_blocked,
        }
    }

    /// Counts an abandoned attempt's failure in the fleet, in the background.
    pub(super) fn fail_in_fleet_later(&self, keys: &LoginKeys, policy: &Policy) {
        let (Some(fleet), Ok(runtime)) = (&self.fleet, tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let call = fleet.login_failed(keys, window(policy));
        runtime.spawn(async move {
            let _ = call.await;
        });
    }

    /// A correct password after `earlier` failures of its pair here: takes them back in
    /// the fleet too, in the background (none: no call).
    pub(super) fn succeed_in_fleet(&self, keys: &LoginKeys, earlier: u32) {
        let (Some(fleet), Ok(runtime)) = (&self.fleet, tokio::runtime::Handle::try_current())
        else {
            return;
        };
        if earlier > 0 {
            runtime.spawn(fleet.login_succeeded(keys));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;
    use crate::state::counters::{Admission, FleetUnavailable, Pending, SharedSources, Slot};

    /// Fleet counts that only record which calls a guard makes (the database's side is
    /// tested against PostgreSQL in `tests/it/fleet_counters.rs`).
    #[derive(Debug, Default)]
    struct Calls(Mutex<Vec<&'static str>>);

    impl Calls {
        fn note<T: Send + 'static>(&self, call: &'static str, value: T) -> Pending<T> {
            self.0.lock().unwrap().push(call);
            Box::pin(async move { Ok::<T, FleetUnavailable>(value) })
        }
    }

    impl FleetCounters for Calls {
        fn reserve_message(&self, _: &str, _: u32) -> Pending<Admission> {
            self.note("reserve_message", Admission::Reserved(Slot(0)))
        }
        fn reserve_recipient(&self, _: &str, _: Slot, _: u32) -> Pending<Admission> {
            self.note("reserve_recipient", Admission::Reserved(Slot(0)))
        }
        fn commit(&self, _: &str, _: Slot, _: u32, _: u32) -> Pending<()> {
            self.note("commit", ())
        }
        fn give_back(&self, _: &str, _: Slot, _: u32, _: u32) -> Pending<()> {
            self.note("give_back", ())
        }
        fn pause(&self, _: &str, _: Duration) -> Pending<()> {
            self.note("pause", ())
        }
        fn login_failed(&self, _: &LoginKeys, _: FailureWindow) -> Pending<SharedFailures> {
            let shared = SharedFailures {
                source: 1,
                pair: 1,
                mailbox: 1,
                blocked_for: None,
            };
            self.note("login_failed", shared)
        }
        fn login_succeeded(&self, _: &LoginKeys) -> Pending<()> {
            self.note("login_succeeded", ())
        }
        fn failing_sources(&self, _: FailureWindow) -> SharedSources {
            Arc::new(HashMap::new())
        }
    }

    /// A correct password from an address without failures makes no call; a failure makes
    /// one, and the correct password after it one more (taking the failure back).
    #[tokio::test]
    async fn a_successful_login_calls_the_fleet_only_after_failures_of_its_pair() {
        let calls = Arc::new(Calls::default());
        let guard = LoginGuard::default().with_fleet(Some(calls.clone()));
        let (policy, source) = (Policy::default(), IpAddr::from([192, 0, 2, 1]));
        for _ in 0..3 {
            let attempt = guard.begin(source, "alice@x.com", &policy).await.unwrap();
            attempt.succeeded();
        }
        assert!(calls.0.lock().unwrap().is_empty());
        let attempt = guard.begin(source, "bob@x.com", &policy).await.unwrap();
        attempt.failed().await;
        let attempt = guard.begin(source, "bob@x.com", &policy).await.unwrap();
        attempt.succeeded();
        tokio::task::yield_now().await;
        assert_eq!(
            *calls.0.lock().unwrap(),
            ["login_failed", "login_succeeded"]
        );
    }

    #[test]
    fn a_mailbox_is_counted_by_its_normalised_name_and_never_stored_as_typed() {
        let key = mailbox_digest(" Alice@Example.COM ");
        assert_eq!(key, mailbox_digest("alice@example.com"));
        assert_ne!(key, mailbox_digest("bob@example.com"));
        assert_eq!(key.len(), 32);
        assert!(!key.contains("alice"));
    }
}
