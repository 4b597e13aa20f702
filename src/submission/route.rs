//! Which way a mailbox's SMTP submissions go ([`SmtpVia`]), and the memory of `auto`
//! mailboxes that Exchange refused with `535 5.7.139` (SMTP AUTH disabled for the tenant
//! or the mailbox): from then on they send through Microsoft Graph, also after a restart.
//! The switch is a file `{state_dir}/graph-switch/{address}.json` holding when it happened
//! and Exchange's reply; deleting it (or `mailbox sending ADDRESS --smtp-via auto`) makes
//! the relay try SMTP AUTH again.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use serde::{Deserialize, Serialize};

use super::SmtpVia;

/// The way out of one submission session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Xoauth2,
    Graph,
}

/// Whether `reply` (an upstream login refusal) says SMTP AUTH is switched off.
pub fn is_smtp_auth_disabled(reply: &str) -> bool {
    let reply = reply.trim_start();
    reply.starts_with("535") && reply.contains("5.7.139")
}

#[derive(Serialize, Deserialize)]
struct Switch {
    switched_at: u64,
    reply: String,
}

fn switch_path(state_dir: &Path, address: &str) -> PathBuf {
    state_dir
        .join("graph-switch")
        .join(format!("{address}.json"))
}

/// When `address` was switched to Graph, if it was.
pub fn switched_at(state_dir: &Path, address: &str) -> Option<u64> {
    let bytes = std::fs::read(switch_path(state_dir, address)).ok()?;
    serde_json::from_slice::<Switch>(&bytes)
        .ok()
        .map(|s| s.switched_at)
}

/// Forgets a switch (the admin chose a way again).
pub fn forget_switch(state_dir: &Path, address: &str) -> std::io::Result<()> {
    match std::fs::remove_file(switch_path(state_dir, address)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The `auto` switches of a running relay: the files in the state folder (read at each
/// SMTP login, so that an admin's `mailbox sending --smtp-via auto` applies at once), and
/// in memory the switches whose file could not be written.
pub struct Routes {
    state_dir: PathBuf,
    unsaved: DashMap<String, ()>,
}

impl Routes {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            state_dir: state_dir.to_path_buf(),
            unsaved: DashMap::new(),
        }
    }

    /// Where a session of `address`, set to `via`, goes first.
    pub fn route(&self, address: &str, via: SmtpVia) -> Route {
        match via {
            SmtpVia::Xoauth2 => Route::Xoauth2,
            SmtpVia::Graph => Route::Graph,
            SmtpVia::Auto if self.is_switched(address) => Route::Graph,
            SmtpVia::Auto => Route::Xoauth2,
        }
    }

    fn is_switched(&self, address: &str) -> bool {
        self.unsaved.contains_key(address) || switched_at(&self.state_dir, address).is_some()
    }

    /// Exchange refused SMTP AUTH for `address` with `reply`: Graph from now on. Logged
    /// once per mailbox.
    pub fn switch_to_graph(&self, address: &str, reply: &str) {
        if self.is_switched(address) {
            return;
        }
        tracing::warn!(mailbox = %address, %reply,
            "SMTP AUTH is disabled for this mailbox; sending through Microsoft Graph from now on");
        let switch = Switch {
            switched_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            reply: reply
                .chars()
                .filter(|c| !c.is_control())
                .take(512)
                .collect(),
        };
        let path = switch_path(&self.state_dir, address);
        let written = serde_json::to_vec_pretty(&switch)
            .map_err(std::io::Error::other)
            .and_then(|bytes| {
                if let Some(dir) = path.parent() {
                    crate::statefile::ensure_private_dir(dir)?;
                }
                crate::statefile::write_private(&path, &bytes)
            });
        if let Err(e) = written {
            tracing::warn!(error = %e, path = %path.display(), "cannot remember the switch to Graph; it holds until the relay restarts");
            self.unsaved.insert(address.to_owned(), ());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_switch_is_remembered_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let routes = Routes::new(dir.path());
        assert_eq!(routes.route("a@x.com", SmtpVia::Auto), Route::Xoauth2);
        assert_eq!(routes.route("a@x.com", SmtpVia::Graph), Route::Graph);
        routes.switch_to_graph("a@x.com", "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.");
        assert_eq!(routes.route("a@x.com", SmtpVia::Auto), Route::Graph);
        assert_eq!(routes.route("a@x.com", SmtpVia::Xoauth2), Route::Xoauth2);
        let restarted = Routes::new(dir.path());
        assert_eq!(restarted.route("a@x.com", SmtpVia::Auto), Route::Graph);
        assert_eq!(restarted.route("b@x.com", SmtpVia::Auto), Route::Xoauth2);
        assert!(switched_at(dir.path(), "a@x.com").is_some());
        forget_switch(dir.path(), "a@x.com").unwrap();
        assert_eq!(
            Routes::new(dir.path()).route("a@x.com", SmtpVia::Auto),
            Route::Xoauth2
        );
    }

    #[test]
    fn only_5_7_139_switches() {
        assert!(is_smtp_auth_disabled(
            "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant. Visit https://aka.ms/smtp_auth_disabled"
        ));
        assert!(!is_smtp_auth_disabled(
            "535 5.7.3 Authentication unsuccessful"
        ));
        assert!(!is_smtp_auth_disabled("454 4.7.0 5.7.139"));
    }
}
