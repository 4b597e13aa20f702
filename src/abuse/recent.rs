//! Recent successful logins: per source, the mailboxes it logged in to and when, in
//! bounded memory. One table serves three decisions:
//! - a mailbox under a distributed attack lets its usual sources in without waiting
//!   ([`super::LoginGuard`]);
//! - only a source that logged in recently gets an upstream connection opened before it
//!   sends its login ([`crate::upstream::preconnect`]);
//! - a source that logged in recently has argon2id capacity kept for it
//!   (the password checker, a layer above, asks [`super::Attempt::priority`]).
//!
//! Entries are made only by correct passwords, so a stranger cannot fill the table; it is
//! bounded anyway: [`SOURCES`] sources of at most [`MAILBOXES_PER_SOURCE`] mailboxes, the
//! least recently seen making room. It lives in memory: after a restart nobody is known.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Most sources remembered.
pub const SOURCES: usize = 10_000;
/// Most mailboxes remembered per source (a local application may serve many).
pub const MAILBOXES_PER_SOURCE: usize = 64;
/// How long a successful login makes a (source, mailbox) pair known.
pub const KNOWN_FOR: Duration = Duration::from_secs(30 * 24 * 3600);

/// Per source (its [`super::source_key`]), mailbox hashes and their last successful login.
#[derive(Debug, Default)]
pub(super) struct RecentLogins {
    sources: HashMap<IpAddr, Vec<(u64, Instant)>>,
}

impl RecentLogins {
    /// Remembers a successful login of `source` to `mailbox` at `now`.
    pub(super) fn record(&mut self, source: IpAddr, mailbox: u64, now: Instant) {
        if !self.sources.contains_key(&source) && self.sources.len() >= SOURCES {
            self.make_room();
        }
        let logins = self.sources.entry(source).or_default();
        match logins.iter_mut().find(|(m, _)| *m == mailbox) {
            Some(entry) => entry.1 = now,
            None => {
                if logins.len() >= MAILBOXES_PER_SOURCE
                    && let Some(oldest) = (0..logins.len()).min_by_key(|&i| logins[i].1)
                {
                    logins.swap_remove(oldest);
                }
                logins.push((mailbox, now));
            }
        }
    }

    /// Drops the source seen least recently.
    fn make_room(&mut self) {
        let last = |logins: &Vec<(u64, Instant)>| logins.iter().map(|(_, at)| *at).max();
        let oldest = self
            .sources
            .iter()
            .min_by_key(|(_, logins)| last(logins))
            .map(|(source, _)| *source);
        if let Some(source) = oldest {
            self.sources.remove(&source);
        }
    }

    /// Whether `source` logged in to `mailbox` at or after `since` (`None`: ever).
    pub(super) fn knows(&self, source: IpAddr, mailbox: u64, since: Option<Instant>) -> bool {
        self.sources.get(&source).is_some_and(|logins| {
            logins
                .iter()
                .any(|(m, at)| *m == mailbox && since.is_none_or(|s| *at >= s))
        })
    }

    /// Whether `source` logged in to any mailbox at or after `since` (`None`: ever).
    pub(super) fn any_since(&self, source: IpAddr, since: Option<Instant>) -> bool {
        self.sources
            .get(&source)
            .is_some_and(|logins| logins.iter().any(|(_, at)| since.is_none_or(|s| *at >= s)))
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.sources.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_known_from_their_login_and_the_table_is_bounded() {
        let mut recent = RecentLogins::default();
        let t0 = Instant::now();
        let a = IpAddr::from([192, 0, 2, 1]);
        recent.record(a, 7, t0);
        assert!(recent.knows(a, 7, Some(t0)));
        assert!(!recent.knows(a, 8, Some(t0)));
        assert!(
            !recent.knows(a, 7, Some(t0 + Duration::from_secs(1))),
            "too long ago"
        );
        assert!(recent.any_since(a, Some(t0)));
        for m in 0..(MAILBOXES_PER_SOURCE as u64 + 10) {
            recent.record(a, 100 + m, t0 + Duration::from_secs(m + 1));
        }
        assert_eq!(recent.sources[&a].len(), MAILBOXES_PER_SOURCE);
        assert!(!recent.knows(a, 7, Some(t0)), "the oldest made room");
        for i in 0..(SOURCES as u32 + 5) {
            recent.record(IpAddr::from((0x0a00_0000 + i).to_be_bytes()), 1, t0);
        }
        assert_eq!(recent.len(), SOURCES);
        assert!(
            recent.any_since(a, Some(t0)),
            "the most recent source stays"
        );
    }
}
