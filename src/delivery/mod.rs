//! The queue's delivery: the workers that take queued messages (`state::queue`) out through
//! their mailbox's route (SMTP AUTH over the shared connections, or Microsoft Graph) within
//! Microsoft's limits, retry them with back-off, and tell senders about delays and failures
//! (RFC 3464 notices).
//!
//! - [`dispatcher`]: the relay's one dispatcher: what is due, within the bounds, and
//!   shutdown.
//! - [`worker`]: one delivery: limits, claim, body, attempt, settlement, log, notice.
//! - [`route`]: a mailbox's way out ([`route::Courier`]; the relay's over [`route::Relay`]).
//! - [`policy`]: what an attempt's outcome means: back-off, failure, delay notice.
//! - [`notice`]: the RFC 3464 notices.
//! - [`counters`]: what the workers did, counted for the metrics.

pub mod counters;
pub mod dispatcher;
pub mod notice;
pub mod policy;
pub mod route;
mod worker;

#[cfg(test)]
mod tests;

pub use counters::{DeliveryCounters, Outcome};
