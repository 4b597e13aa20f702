//! Access tokens in memory, one slot per token owner, on the login hot path.
//!
//! A login takes the cached access token while it has more than the asked-for validity
//! left, without waiting for anything. Otherwise it joins the slot's single refresh: at most
//! one token request per mailbox is in flight, and logins that arrive meanwhile wait for
//! its result instead of sending their own; only a login that still has a valid token (see
//! [`LAST_RESORT_VALIDITY`]) takes that one at once rather than wait behind a refresh in
//! flight or a failing Entra. A refresh redeems the stored refresh token and
//! persists the rotated one *before* the new access token is handed out.
//!
//! Each slot also keeps the mailbox's [`Health`](super::health::Health): a refresh token
//! Entra refused puts the mailbox in needs-reauth, and logins then fail at once, without
//! asking Entra again, until a new refresh token is stored. When Entra is merely
//! unavailable, a cached token that is still valid keeps serving.
//!
//! An app-only mailbox has no refresh token: its tokens come from the client-credentials
//! grant with the app's secret or certificate, and its scopes are its cloud's `.default`.
//! When Entra refuses those credentials (`invalid_client`, missing consent, ...), the
//! mailbox is in needs-reauth too, and logins share that verdict without asking Entra for
//! [`APP_ONLY_RECHECK`]; after that the next login or the refresher asks again, since the
//! fix (consent, an uploaded certificate) is made in Entra, not in the relay.
//!
//! # The fleet
//!
//! Several relays on one state database take turns (`fleet`, over the state's
//! `TokenLeases`): one relay at a time redeems a mailbox's refresh token, under the
//! mailbox's lease, and shares the access token it got; the others take that token instead
//! of asking Entra. A relay alone (the files backend) is granted every lease at once.
//!
//! # The disk
//!
//! A login that finds a fresh token touches no disk; the background refresher
//! ([`super::refresher`]) refreshes ahead of expiry so that logins find one. When a login
//! does refresh:
//! - The mailbox's status file (for `mailbox list`) is written on the blocking pool. A
//!   login that got its token does not wait for it. A login whose refresh failed is
//!   answered only once the file says why, so that the admin the reply sends to `mailbox
//!   list` finds it there (tests/it/credentials.rs checks it). A mailbox's writes take
//!   turns and each writes the newest status, so the file never goes back to an older one.
//! - The rotated refresh token is stored before the new access token is used, and the
//!   refresh waits for that write. This is kept on purpose: a refresh token that cannot be
//!   stored (refused by the store, or a failing disk) fails the refresh, so the relay never
//!   serves from a rotation it could not keep and would lose at its next start; and the next
//!   refresh of the mailbox always redeems the token the last one stored (at most one
//!   rotation is ever unstored, which the crash test checks). The write is off the async
//!   threads (the blocking pool), and only the logins that need the new token wait for it.
//!
//! The map hands out `Arc<Slot>` clones; no map guard is ever held across an `.await`
//! (dashmap#79). Expiry is measured on tokio's clock, so tests can pause time.

mod fleet;
mod redeem;
mod slot;
mod source;
mod token_cache;

pub use fleet::POLL as FLEET_POLL;
pub use redeem::APP_ONLY_RECHECK;
pub use slot::{LAST_RESORT_VALIDITY, SMTP_MIN_VALIDITY};
pub use source::{Resource, TokenSource};
pub use token_cache::{LEASE_MARGIN, REFRESH_OUTCOMES, ScheduleInfo, TokenCache};

/// The longest `Retry-After` of Entra's that the cache and the refresher honour.
pub use super::health::MAX_RETRY_AFTER;

#[cfg(test)]
mod fleet_tests;
#[cfg(test)]
mod tests;
