//! The fleet's side of a refresh ([`Fleet`]): before asking Entra, a relay takes the
//! access token another relay obtained and shared, while it is newer than the slot's and
//! fresh enough; otherwise it takes the mailbox's lease, looks at the shared token once
//! more (another relay may just have finished), and redeems. While another relay holds
//! the lease, it waits for that relay's token, polling every [`POLL`], at most the
//! lease's time to live; if none comes, that is a transient failure, which the mailbox's
//! health and back-off handle like an unavailable Entra (a still-valid cached token keeps
//! serving logins meanwhile).
//!
//! Every call to the leases runs on the blocking pool. An unreachable database is a
//! transient failure: nothing is redeemed without a lease.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::slot::{Cached, Slot};
use crate::mailbox::Mailbox;
use crate::oauth::{TokenError, TokenGrant};
use crate::secret::RefreshToken;
use crate::state::{Finished, Lease, Outcome, Redeemable, SharedToken, TokenLeases};

/// Why a refresh failed, with the digest of the refresh token or client credentials that
/// were refused or failed (`None` when Entra was not asked).
pub(super) type Failure = (TokenError, Option<Vec<u8>>);

/// How often a relay waiting for another's refresh looks for its token.
pub const POLL: Duration = Duration::from_millis(150);

/// One refresh's view of the fleet: the mailbox's lease and the slot's shared token.
pub(super) struct Fleet<'a> {
    pub leases: &'a Arc<dyn TokenLeases>,
    /// The token owner, whose lease it is.
    pub mailbox: &'a Mailbox,
    /// The cache slot's key (mail or Graph).
    pub key: String,
    /// How long a lease is taken for (and how long a relay waits for another's).
    pub ttl: Duration,
    /// The validity a shared token must have to be taken instead of a refresh.
    pub min: Duration,
}

/// What the fleet leaves this relay to do.
pub(super) enum Turn {
    /// Redeem, holding the lease.
    Redeem(Lease),
    /// Nothing: another relay's token serves.
    Adopted(Cached),
}

impl Fleet<'_> {
    /// Another relay's token, or the lease; waits while another relay holds it.
    pub async fn turn(&self, slot: &Slot) -> Result<Turn, Failure> {
        let deadline = Instant::now() + self.ttl;
        loop {
            if let Some(cached) = self.adoptable(slot).await? {
                return Ok(Turn::Adopted(cached));
            }
            if let Some(lease) = self.take().await? {
                // Someone may have finished between the look and the take.
                return match self.adoptable(slot).await {
                    Ok(Some(cached)) => {
                        self.release(&lease).await;
                        Ok(Turn::Adopted(cached))
                    }
                    Ok(None) => Ok(Turn::Redeem(lease)),
                    Err(e) => {
                        self.release(&lease).await;
                        Err(e)
                    }
                };
            }
            if Instant::now() >= deadline {
                tracing::warn!(mailbox = %self.mailbox.address,
                    "another relay holds this mailbox's refresh lease and shared no token in time");
                let why = "another relay is refreshing this mailbox and did not finish in time";
                return Err((TokenError::Store(why.into()), None));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The shared token, if it is newer than the slot's and has more than `min` left.
    async fn adoptable(&self, slot: &Slot) -> Result<Option<Cached>, Failure> {
        let (leases, key) = (self.leases.clone(), self.key.clone());
        let Some(shared) = blocking(move || leases.shared(&key))
            .await
            .map_err(|e| (e, None))?
        else {
            return Ok(None);
        };
        let newer = slot.newest_fence().is_none_or(|fence| shared.fence > fence);
        let cached = adopted(shared);
        Ok((newer && cached.fresh_for(self.min, Instant::now())).then_some(cached))
    }

    async fn take(&self) -> Result<Option<Lease>, Failure> {
        let (leases, mailbox, ttl) = (self.leases.clone(), self.mailbox.address.clone(), self.ttl);
        blocking(move || leases.take(&mailbox, ttl))
            .await
            .map_err(|e| (e, None))
    }

    /// The stored refresh token, read under the lease.
    pub async fn refresh_token(&self, lease: &Lease) -> Result<Option<Redeemable>, Failure> {
        let (leases, lease) = (self.leases.clone(), lease.clone());
        blocking(move || leases.refresh_token(&lease))
            .await
            .map_err(|e| (e, None))
    }

    /// Releases `lease` after a failed refresh; a failure to release is logged (the
    /// lease ends at its time to live anyway).
    pub async fn release(&self, lease: &Lease) {
        let (leases, lease) = (self.leases.clone(), lease.clone());
        if let Err(e) = blocking(move || leases.release(&lease)).await {
            tracing::debug!(mailbox = %self.mailbox.address, error = %e, "cannot release the refresh lease");
        }
    }

    /// Stores a refresh's outcome (the rotated refresh token, the access token for the
    /// other relays) and releases the lease, in one go; the cache entry of `grant`. A
    /// failure to store fails the refresh: the relay never serves from a rotation it could
    /// not keep (see the module documentation of [`super`]).
    pub async fn finish(
        &self,
        lease: &Lease,
        redeemed: Option<Redeemable>,
        grant: TokenGrant,
        obtained: (Instant, SystemTime),
    ) -> Result<Cached, Failure> {
        let rotated: Option<RefreshToken> = grant.refresh_token.clone();
        let shared = SharedToken {
            token: grant.access_token.clone(),
            obtained: obtained.1,
            expires: grant.expires_at,
            fence: lease.fence,
        };
        let mut cached = Cached::of(self.mailbox, grant, obtained.0);
        cached.fence = Some(lease.fence);
        let (leases, lease, key) = (self.leases.clone(), lease.clone(), self.key.clone());
        let finished = blocking(move || {
            let rotation = redeemed.as_ref().zip(rotated.as_ref());
            let outcome = Outcome {
                rotation,
                key: &key,
                token: &shared,
            };
            leases
                .finish(&lease, outcome)
                .map(|f| (f, rotation.is_some()))
        })
        .await
        .map_err(|e| (e, None))?;
        match finished {
            (Finished::Stored { rotated: false }, true) => {
                tracing::info!(mailbox = %self.mailbox.address,
                    "a new refresh token was stored while this one was redeemed; it is kept");
            }
            (Finished::LeaseLost, _) => {
                tracing::warn!(mailbox = %self.mailbox.address,
                    "this relay's refresh outlasted its lease and another relay took it: nothing was stored (the rotated refresh token is dropped); the access token serves this relay only");
            }
            _ => {}
        }
        Ok(cached)
    }
}

/// The cache entry of a shared token, on this relay's clock: its real age and expiry,
/// so that every relay schedules its refresh alike.
fn adopted(shared: SharedToken) -> Cached {
    let (now, wall) = (Instant::now(), SystemTime::now());
    let age = wall.duration_since(shared.obtained).unwrap_or_default();
    let left = shared.expires.duration_since(wall).unwrap_or_default();
    Cached {
        token: shared.token,
        obtained: now.checked_sub(age).unwrap_or(now),
        expires: now + left,
        fence: Some(shared.fence),
    }
}

/// Runs a token-store call off the async threads.
pub(super) async fn blocking<T, E>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, TokenError>
where
    T: Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(|e| TokenError::Store(e.to_string())),
        Err(e) => Err(TokenError::Store(format!("token store task failed: {e}"))),
    }
}
