//! One token owner's place in the cache: the access token it holds, the lock a refresh
//! holds while in flight, and the [`Health`] of its refreshes; and the writing of its
//! status file.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::mailbox::Mailbox;
use crate::oauth::TokenGrant;
use crate::oauth::health::Health;
use crate::secret::AccessToken;
use crate::state::MailboxStatuses;

/// SMTP and POP3 sessions get tokens with at least this much life left.
pub const SMTP_MIN_VALIDITY: Duration = Duration::from_secs(5 * 60);
/// When Entra is unavailable, a cached token with at least this much life left (or a
/// tenth of its lifetime, if that is less) still serves logins.
pub const LAST_RESORT_VALIDITY: Duration = Duration::from_secs(60);

pub(super) struct Slot {
    pub current: RwLock<Option<Cached>>,
    /// Held while a refresh is in flight; waiters queue on it.
    pub refresh: tokio::sync::Mutex<()>,
    /// Bumped at the end of every refresh, success or not.
    pub generation: AtomicU64,
    /// See [`Slot::newest_fence`]; `i64::MIN` while none.
    newest_fence: AtomicI64,
    health: Mutex<Health>,
    /// Taken by each status file write of this slot in turn.
    status_file: Mutex<()>,
}

#[derive(Clone)]
pub(super) struct Cached {
    pub token: AccessToken,
    pub obtained: Instant,
    pub expires: Instant,
    /// The fence of the lease it was obtained under (see [`crate::state::leases`]): a
    /// shared token with a higher one is newer.
    pub fence: Option<i64>,
}

impl Cached {
    /// The cache entry of `grant`, asked for at `obtained`.
    pub fn of(mailbox: &Mailbox, grant: TokenGrant, obtained: Instant) -> Self {
        let lifetime = grant
            .expires_at
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        tracing::info!(mailbox = %mailbox.address, expires_in_secs = lifetime.as_secs(), "access token refreshed");
        Self {
            token: grant.access_token,
            obtained,
            expires: obtained + lifetime,
            fence: None,
        }
    }

    /// Whether the token has more than `min` of life left. A token whose whole lifetime
    /// is shorter than twice `min` (short-lived tenant policy) is used for half its life,
    /// so that not every login refreshes.
    pub fn fresh_for(&self, min: Duration, now: Instant) -> bool {
        let lifetime = self.expires.saturating_duration_since(self.obtained);
        let min = min.min(lifetime / 2);
        self.expires.saturating_duration_since(now) > min
    }
}

impl Default for Slot {
    fn default() -> Self {
        Self {
            current: RwLock::default(),
            refresh: tokio::sync::Mutex::default(),
            generation: AtomicU64::default(),
            newest_fence: AtomicI64::new(i64::MIN),
            health: Mutex::default(),
            status_file: Mutex::default(),
        }
    }
}

impl Slot {
    pub fn fresh(&self, min: Duration) -> Option<AccessToken> {
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        current
            .as_ref()
            .filter(|c| c.fresh_for(min, Instant::now()))
            .map(|c| c.token.clone())
    }

    /// The cached token if it has at least `min` left (a tenth of its lifetime for tokens
    /// shorter than ten times `min`).
    pub fn valid_for(&self, min: Duration) -> Option<AccessToken> {
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        current
            .as_ref()
            .filter(|c| {
                let lifetime = c.expires.saturating_duration_since(c.obtained);
                c.expires.saturating_duration_since(Instant::now()) >= min.min(lifetime / 10)
            })
            .map(|c| c.token.clone())
    }

    /// When the cached token was obtained and when it expires.
    pub fn token_times(&self) -> Option<(Instant, Instant)> {
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        current.as_ref().map(|c| (c.obtained, c.expires))
    }

    /// The highest lease fence of the tokens this slot held, if any held one: a shared
    /// token is newer only with a higher one. Kept when a token is invalidated, so that a
    /// token the server refused is not taken again from the shared store.
    pub fn newest_fence(&self) -> Option<i64> {
        let fence = self.newest_fence.load(Ordering::Acquire);
        (fence != i64::MIN).then_some(fence)
    }

    /// Caches `cached` as the slot's token.
    pub fn store(&self, cached: Cached) {
        if let Some(fence) = cached.fence {
            self.newest_fence.fetch_max(fence, Ordering::AcqRel);
        }
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Some(cached);
    }

    pub fn health(&self) -> MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Writes `address`'s status to `statuses` on the blocking pool; the caller may wait
/// for the returned handle or not. The writes of one slot take turns, and each writes the
/// status as it is when its turn comes, so the file never goes back to an older status
/// than the last one written. A failure is logged.
pub(super) fn write_status(
    slot: &Arc<Slot>,
    statuses: Arc<dyn MailboxStatuses>,
    address: &str,
) -> JoinHandle<()> {
    let (slot, address) = (slot.clone(), address.to_owned());
    tokio::task::spawn_blocking(move || {
        let _turn = slot
            .status_file
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let status = slot.health().status.clone();
        if let Err(e) = statuses.write(&address, &status) {
            tracing::warn!(error = %e, "cannot write a mailbox status file");
        }
    })
}
