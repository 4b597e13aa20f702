//! Exchange Online's per-mailbox SMTP connection limit in the fake (PROTOCOL.md A12): with a
//! limit set, a connection that logs in while the user already has that many authenticated
//! connections open is over it, and its message gets `432 4.3.2 STOREDRV.ClientSubmit;
//! sender thread limit exceeded` at the end of DATA, as Exchange answers. The fake records the
//! peak of concurrent authenticated connections per user, and can close every connection that
//! waits for a command (Exchange closing idle connections).

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::Notify;

use super::fake_smtp::{FakeSmtp, Shared};

/// Exchange's reply to a message on a connection over the per-mailbox limit.
pub const SENDER_THREAD_LIMIT: &str = "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded [Hostname=BN8PR04MB0000.namprd04.prod.outlook.com]";
/// What the fake says when it closes an idle connection.
pub const IDLE_CLOSED: &str =
    "421 4.4.2 BN8PR04CA0000.outlook.office365.com Connection dropped due to idle timeout";

/// The limit, the counts, and the signal that closes idle connections.
#[derive(Default)]
pub struct SmtpLimits {
    per_user: Option<usize>,
    open: HashMap<String, usize>,
    peak: HashMap<String, usize>,
    refused: usize,
    pub(super) close_idle: Arc<Notify>,
}

/// An authenticated connection, counted until it ends.
pub(super) struct Counted {
    shared: Arc<Shared>,
    user: String,
    /// It logged in over the limit: its messages get [`SENDER_THREAD_LIMIT`].
    pub(super) over: bool,
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        if let Some(open) = state.limits.open.get_mut(&self.user) {
            *open = open.saturating_sub(1);
        }
    }
}

/// Counts a successful login of `user` on a connection.
pub(super) fn authenticated(shared: &Arc<Shared>, user: &str) -> Counted {
    let user = user.to_ascii_lowercase();
    let mut state = shared.lock();
    let limits = &mut state.limits;
    let open = limits.open.entry(user.clone()).or_default();
    *open += 1;
    let now = *open;
    let peak = limits.peak.entry(user.clone()).or_default();
    *peak = (*peak).max(now);
    let over = limits.per_user.is_some_and(|limit| now > limit);
    drop(state);
    Counted {
        shared: shared.clone(),
        user,
        over,
    }
}

/// Counts a message refused for the limit.
pub(super) fn refused(shared: &Shared) {
    shared.lock().limits.refused += 1;
}

impl FakeSmtp {
    /// Refuse messages on a user's connections beyond `limit` concurrent authenticated ones.
    pub fn limit_connections_per_user(&self, limit: usize) {
        self.shared.lock().limits.per_user = Some(limit);
    }

    /// The most authenticated connections `user` had open at once.
    pub fn peak_connections(&self, user: &str) -> usize {
        let state = self.shared.lock();
        let peak = state.limits.peak.get(&user.to_ascii_lowercase());
        peak.copied().unwrap_or(0)
    }

    /// Authenticated connections of `user` open now.
    pub fn open_connections(&self, user: &str) -> usize {
        let state = self.shared.lock();
        let open = state.limits.open.get(&user.to_ascii_lowercase());
        open.copied().unwrap_or(0)
    }

    /// Messages refused with [`SENDER_THREAD_LIMIT`].
    pub fn limit_refusals(&self) -> usize {
        self.shared.lock().limits.refused
    }

    /// Closes every connection waiting for a command, with [`IDLE_CLOSED`].
    pub fn close_idle_connections(&self) {
        let notify = self.shared.lock().limits.close_idle.clone();
        notify.notify_waiters();
    }
}
