//! The fleet's coordination of token refreshes ([`TokenLeases`]): at most one relay
//! redeems a mailbox's refresh token at a time, and the others take the access token it
//! obtained.
//!
//! The lease is per mailbox (the token owner): its mail and Graph access tokens both
//! redeem its one refresh token. Every [`TokenLeases::take`] gives the lease a new, higher
//! fence; [`TokenLeases::finish`] writes only while the lease still has that fence, so a
//! relay that stalled past its lease while another took it cannot write. It writes, in one
//! transaction, the rotated refresh token (a compare-and-swap on the stored token's
//! version: a newer token is never overwritten), the access token for the other relays
//! (sealed), and the lease's release.
//!
//! The files backend (one relay) grants every lease at once and shares no access token
//! (`files::leases`); the `postgres` backend keeps leases and shared tokens in the
//! database (`postgres::leases`).

use std::fmt;
use std::time::{Duration, SystemTime};

use crate::secret::{AccessToken, RefreshToken};
use crate::state::error::StoreError;

/// The right to redeem a mailbox's refresh token, until [`TokenLeases::finish`] or
/// [`TokenLeases::release`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The mailbox (token owner) it is for.
    pub mailbox: String,
    /// Higher on every take of this mailbox's lease.
    pub fence: i64,
}

/// An access token one relay obtained and stored for the others, with its wall-clock
/// times, so that every relay schedules its refresh alike.
#[derive(Debug, Clone)]
pub struct SharedToken {
    pub token: AccessToken,
    pub obtained: SystemTime,
    pub expires: SystemTime,
    /// The fence of the lease it was obtained under: a higher fence is a newer token.
    pub fence: i64,
}

/// A stored refresh token and the version it was read at.
#[derive(Debug, Clone)]
pub struct Redeemable {
    pub token: RefreshToken,
    /// Bumped by every write of the mailbox's refresh token.
    pub version: i64,
}

/// What [`TokenLeases::finish`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// Written and released; `rotated`: the rotated refresh token was stored (false when
    /// there was none, or a newer token was stored meanwhile and stays).
    Stored { rotated: bool },
    /// The lease was taken by another relay meanwhile: nothing was written.
    LeaseLost,
}

/// What a refresh leaves for [`TokenLeases::finish`].
#[derive(Debug, Clone, Copy)]
pub struct Outcome<'a> {
    /// The refresh token redeemed and the one Entra rotated it to (none: not rotated, or
    /// an app-only mailbox without a refresh token).
    pub rotation: Option<(&'a Redeemable, &'a RefreshToken)>,
    /// The cache slot key of the access token (mail or Graph) and the token.
    pub key: &'a str,
    pub token: &'a SharedToken,
}

/// Where the relays of a fleet coordinate their token refreshes. Synchronous, like the
/// other stores: the token cache calls it off the async threads.
pub trait TokenLeases: Send + Sync + fmt::Debug {
    /// The access token of cache slot `key` another relay stored, if any.
    fn shared(&self, key: &str) -> Result<Option<SharedToken>, StoreError>;
    /// The lease of `mailbox` for `ttl`, if it is free or expired; `None` while another
    /// holds it (another relay, or another of this relay's refreshes of the mailbox).
    fn take(&self, mailbox: &str, ttl: Duration) -> Result<Option<Lease>, StoreError>;
    /// The stored refresh token of the lease's mailbox and its version.
    fn refresh_token(&self, lease: &Lease) -> Result<Option<Redeemable>, StoreError>;
    /// Stores a refresh's outcome and releases the lease, all or nothing, only if the
    /// lease still has its fence.
    fn finish(&self, lease: &Lease, outcome: Outcome<'_>) -> Result<Finished, StoreError>;
    /// Releases the lease without writing anything (the refresh failed).
    fn release(&self, lease: &Lease) -> Result<(), StoreError>;
}

/// This relay's name among the fleet's lease holders, the same for the whole process: the
/// host name and a random part new with every process, so that a restarted relay never
/// takes its predecessor's lease for its own.
pub fn replica_id() -> String {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(new_replica_id).clone()
}

fn new_replica_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "relay".to_owned());
    let mut random = [0u8; 6];
    // A failing system RNG leaves zeros; the time still makes the id unique enough.
    let _ = aws_lc_rs::rand::fill(&mut random);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    let random: String = random.iter().map(|b| format!("{b:02x}")).collect();
    format!("{host}-{random}{nanos:08x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_has_one_replica_id_and_new_ones_differ() {
        assert_eq!(replica_id(), replica_id());
        let (a, b) = (new_replica_id(), new_replica_id());
        assert_ne!(a, b);
        assert!(a.len() > 20, "{a}");
    }
}
