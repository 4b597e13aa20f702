//! The queue's delivery: the workers that take queued messages (`state::queue`) out through
//! their mailbox's route (SMTP AUTH over the shared connections, or Microsoft Graph) within
//! Microsoft's limits, retry them with back-off, and tell senders about delays and failures
//! (RFC 3464 notices).
//!
//! - [`counters`]: what the workers did, counted for the metrics.

pub mod counters;

pub use counters::{DeliveryCounters, Outcome};
