//! The token leases of a relay alone ([`LocalLeases`]): no other relay redeems its
//! refresh tokens, so every lease is granted at once and no access token is shared; the
//! token cache's own single flight keeps one refresh per cache slot. Finishing stores the
//! rotated refresh token over the redeemed one only ([`RefreshTokens::replace`]), as the
//! relay always did.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use crate::state::error::StoreError;
use crate::state::leases::{Finished, Lease, Outcome, Redeemable, SharedToken, TokenLeases};
use crate::state::traits::RefreshTokens;

/// In-process leases over a relay's own refresh tokens.
#[derive(Debug)]
pub struct LocalLeases {
    tokens: Arc<dyn RefreshTokens>,
    fences: AtomicI64,
}

impl LocalLeases {
    /// The leases of the refresh tokens in `tokens`.
    pub fn new(tokens: Arc<dyn RefreshTokens>) -> Self {
        Self {
            tokens,
            fences: AtomicI64::new(0),
        }
    }
}

impl TokenLeases for LocalLeases {
    fn shared(&self, _key: &str) -> Result<Option<SharedToken>, StoreError> {
        Ok(None)
    }

    fn take(&self, mailbox: &str, _ttl: Duration) -> Result<Option<Lease>, StoreError> {
        Ok(Some(Lease {
            mailbox: mailbox.to_owned(),
            fence: self.fences.fetch_add(1, Ordering::Relaxed) + 1,
        }))
    }

    fn refresh_token(&self, lease: &Lease) -> Result<Option<Redeemable>, StoreError> {
        let token = self.tokens.load(&lease.mailbox)?;
        Ok(token.map(|token| Redeemable { token, version: 0 }))
    }

    fn finish(&self, lease: &Lease, outcome: Outcome<'_>) -> Result<Finished, StoreError> {
        let rotated = match outcome.rotation {
            Some((redeemed, rotated)) => {
                self.tokens
                    .replace(&lease.mailbox, &redeemed.token, rotated)?
            }
            None => false,
        };
        Ok(Finished::Stored { rotated })
    }

    fn release(&self, _lease: &Lease) -> Result<(), StoreError> {
        Ok(())
    }
}
