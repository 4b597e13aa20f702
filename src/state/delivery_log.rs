//! The delivery log's shape, as every backend keeps it: one event per thing that happened
//! to a message (accepted, refused, queued, delivered, deferred, bounced), answering a
//! helpdesk's first question: did my mail go out, and what did Microsoft say?
//!
//! Events hold envelopes and Microsoft's replies, never a body, a header other than the
//! Message-ID, or a secret. Recipients are written as `[log] recipients` says (full,
//! domain only, none) before an event reaches the store. The store bounds its size
//! (`[log] max_bytes`), dropping the oldest events first.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::state::error::StoreError;

/// What happened to a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// Microsoft accepted it during the client's session (direct delivery).
    Accepted,
    /// It was refused: by the relay's rules or limits, or by Microsoft during the
    /// client's session; `reply` says what the client heard.
    Refused,
    /// Stored in the queue; the client heard `250`.
    Queued,
    /// The queue delivered it: Microsoft accepted it.
    Delivered,
    /// The queue's attempt failed for now; it is tried again.
    Deferred,
    /// The queue gave up (a permanent refusal, or too old): a notice went to the sender.
    Bounced,
}

impl EventKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Refused => "refused",
            Self::Queued => "queued",
            Self::Delivered => "delivered",
            Self::Deferred => "deferred",
            Self::Bounced => "bounced",
        }
    }
}

/// One line of the delivery log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryEvent {
    /// When it happened, RFC 3339 UTC with milliseconds.
    pub time: String,
    /// The same time, in milliseconds since the Unix epoch (for ordering and `--since`).
    pub at_ms: u64,
    pub event: EventKind,
    pub mailbox: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// The envelope sender (`MAIL FROM`), empty for `<>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
    pub recipient_count: usize,
    /// As `[log] recipients` says: full addresses, `@domain`s, or none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipients: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// `smtp`, `graph` or `queue`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// The reply (Microsoft's, or the relay's own for a refusal), first line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<String>,
    /// Graph's `request-id` header, when Graph answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// Which events [`DeliveryLogStore::read`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogQuery {
    /// Only this mailbox's events.
    pub mailbox: Option<String>,
    /// Only events at or after this time (milliseconds since the epoch).
    pub since_ms: Option<u64>,
    /// At most this many, the latest ones (0: no bound).
    pub limit: usize,
}

/// Where the delivery log is kept, size-bounded.
pub trait DeliveryLogStore: Send + Sync + fmt::Debug {
    /// Appends `events`, in order, dropping the oldest events beyond the size bound.
    fn append(&self, events: &[DeliveryEvent]) -> Result<(), StoreError>;
    /// The stored events `query` selects, oldest first.
    fn read(&self, query: &LogQuery) -> Result<Vec<DeliveryEvent>, StoreError>;
}
