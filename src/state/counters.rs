//! [`FleetCounters`]: the counts that must hold across every relay sharing one state —
//! Microsoft's per-mailbox sending windows and the failed-login counts — so that an
//! application spreading its sessions over replicas, or a guesser spreading its guesses,
//! meets the same limits as on one relay.
//!
//! The fine-grained logic stays in each relay's memory (`submission::limits`, `abuse`);
//! this trait is the smallest surface it adds the fleet's counts through:
//! - **sending**: a message reserved at `MAIL FROM` within the messages-per-minute limit
//!   (and any pause Microsoft asked for), a recipient reserved at `RCPT TO` within the
//!   recipients-per-day limit, each counted from its reservation, in a time slot; a commit
//!   moves the message to the slot of its acceptance, a give-back takes it out again. A
//!   reservation of a relay that died expires with its window: nothing leaks for good.
//! - **failed logins**: a failure counted per source, per (source, mailbox) and per
//!   mailbox in the policy's window, answering the fleet's counts (and the source's block,
//!   started by the failure that reached the threshold); a correct password takes its
//!   pair's failures back; the sources delayed or blocked, read in the background.
//!
//! Every call is one database round trip and can fail: the caller then counts locally
//! ([`FleetUnavailable`]), which is the degraded mode. The `files` backend has none: one
//! relay's memory is the whole fleet.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A fleet call under way: its answer, or [`FleetUnavailable`].
pub type Pending<T> = Pin<Box<dyn Future<Output = Result<T, FleetUnavailable>> + Send>>;

/// The fleet's counts cannot be reached now (the database is unreachable, or this relay
/// waits before trying it again): count locally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetUnavailable;

/// Where a reservation is counted (the fleet's time slot of its `MAIL FROM`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot(pub i64);

/// The fleet's answer to a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Counted, in this slot.
    Reserved(Slot),
    /// Microsoft asked the mailbox to wait; this many seconds are left.
    Paused { secs: u64 },
    /// The limit is reached; a slot frees in this many seconds.
    OverLimit { secs: u64 },
}

/// A login's keys as the fleet counts them: the source (its `abuse::source_key`) and
/// the mailbox name, hashed (the name a client typed is never stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginKeys {
    pub source: IpAddr,
    /// A stable digest of the normalised name (the same on every relay).
    pub mailbox: String,
}

/// The failed-login policy, as far as the fleet applies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureWindow {
    pub window: Duration,
    pub failures_before_delay: u32,
    pub failures_before_block: u32,
    pub block_for: Duration,
}

/// The fleet's failures after one more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedFailures {
    pub source: u32,
    pub pair: u32,
    pub mailbox: u32,
    /// How long the source is still refused, if it is (this failure may have started it).
    pub blocked_for: Option<Duration>,
}

/// A source's failures in the fleet, and its block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedSource {
    pub failures: u32,
    /// Until when it is refused (this process's clock), if it is.
    pub blocked_until: Option<Instant>,
}

/// The sources the fleet delays or refuses (keyed by `abuse::source_key`).
pub type SharedSources = Arc<HashMap<IpAddr, SharedSource>>;

/// The counts shared by every relay of one state (see the module documentation).
pub trait FleetCounters: Send + Sync + fmt::Debug {
    /// At `MAIL FROM`: one message of `mailbox` within `per_minute` (and its pause).
    fn reserve_message(&self, mailbox: &str, per_minute: u32) -> Pending<Admission>;
    /// At `RCPT TO`: one recipient of the message reserved in `slot`, within `per_day`.
    fn reserve_recipient(&self, mailbox: &str, slot: Slot, per_day: u32) -> Pending<Admission>;
    /// The message reserved in `slot` with `reserved` recipients went out to `sent` of
    /// them: it counts from now.
    fn commit(&self, mailbox: &str, slot: Slot, reserved: u32, sent: u32) -> Pending<()>;
    /// Takes back `messages` (0 or 1) and `recipients` reserved in `slot`.
    fn give_back(&self, mailbox: &str, slot: Slot, messages: u32, recipients: u32) -> Pending<()>;
    /// Microsoft asked `mailbox` to wait `wait` before sending again.
    fn pause(&self, mailbox: &str, wait: Duration) -> Pending<()>;
    /// Counts a failed login; the fleet's counts after it.
    fn login_failed(&self, keys: &LoginKeys, policy: FailureWindow) -> Pending<SharedFailures>;
    /// A correct password: the pair's failures are taken back from the source's count,
    /// one from the mailbox's.
    fn login_succeeded(&self, keys: &LoginKeys) -> Pending<()>;
    /// The sources the fleet refuses, or whose failures under `policy` reach a delay, as
    /// last read (at most a few seconds old; read again in the background when older).
    /// Never waits for the database.
    fn failing_sources(&self, policy: FailureWindow) -> SharedSources;
}
