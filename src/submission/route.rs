//! Which way a mailbox's SMTP submissions go ([`SmtpVia`]), and the memory of `auto`
//! mailboxes that Exchange refused with `535 5.7.139` (SMTP AUTH disabled for the tenant
//! or the mailbox): from then on they send through Microsoft Graph, also after a restart.
//! The switch is kept by the state ([`RouteSwitches`]: a file
//! `{state_dir}/graph-switch/{address}.json` holding when it happened and Exchange's reply);
//! deleting it (or `mailbox sending ADDRESS --smtp-via auto`) makes the relay try SMTP AUTH
//! again.

use std::sync::Arc;
use std::time::SystemTime;

use dashmap::DashMap;

use super::SmtpVia;
use crate::state::RouteSwitches;

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

/// The `auto` switches of a running relay: the state's (read at each SMTP login, so that
/// an admin's `mailbox sending --smtp-via auto` applies at once), and in memory the
/// switches that could not be stored.
pub struct Routes {
    switches: Arc<dyn RouteSwitches>,
    unsaved: DashMap<String, ()>,
}

impl Routes {
    pub fn new(switches: Arc<dyn RouteSwitches>) -> Self {
        Self {
            switches,
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
        self.unsaved.contains_key(address) || self.switches.switched_at(address).is_some()
    }

    /// Exchange refused SMTP AUTH for `address` with `reply`: Graph from now on. Logged
    /// once per mailbox.
    pub fn switch_to_graph(&self, address: &str, reply: &str) {
        if self.is_switched(address) {
            return;
        }
        tracing::warn!(mailbox = %address, %reply,
            "SMTP AUTH is disabled for this mailbox; sending through Microsoft Graph from now on");
        let at = crate::datetime::unix(SystemTime::now());
        let reply: String = reply
            .chars()
            .filter(|c| !c.is_control())
            .take(512)
            .collect();
        let written = self.switches.switch_to_graph(address, at, &reply);
        if let Err(e) = written {
            tracing::warn!(error = %e, "cannot remember the switch to Graph; it holds until the relay restarts");
            self.unsaved.insert(address.to_owned(), ());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::files::SwitchFiles;

    fn routes(dir: &std::path::Path) -> Routes {
        Routes::new(Arc::new(SwitchFiles::new(dir)))
    }

    #[test]
    fn a_switch_is_remembered_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let routes = routes(dir.path());
        assert_eq!(routes.route("a@x.com", SmtpVia::Auto), Route::Xoauth2);
        assert_eq!(routes.route("a@x.com", SmtpVia::Graph), Route::Graph);
        routes.switch_to_graph("a@x.com", "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.");
        assert_eq!(routes.route("a@x.com", SmtpVia::Auto), Route::Graph);
        assert_eq!(routes.route("a@x.com", SmtpVia::Xoauth2), Route::Xoauth2);
        let restarted = self::routes(dir.path());
        assert_eq!(restarted.route("a@x.com", SmtpVia::Auto), Route::Graph);
        assert_eq!(restarted.route("b@x.com", SmtpVia::Auto), Route::Xoauth2);
        let files = SwitchFiles::new(dir.path());
        assert!(files.switched_at("a@x.com").is_some());
        files.forget("a@x.com").unwrap();
        assert_eq!(
            self::routes(dir.path()).route("a@x.com", SmtpVia::Auto),
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
