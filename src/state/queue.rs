//! The durable outbound queue, as every backend keeps it: messages accepted for a mailbox
//! whose delivery is `queue` (and every message of the trusted-network listener), stored
//! sealed and durably before the client hears `250`, and delivered later by the relay's
//! workers (`delivery`).
//!
//! An [`Entry`] is a message's envelope and bookkeeping (never its body): the queue is
//! listed, scheduled and counted from entries alone, and a message's body is read only to
//! deliver it ([`OutboundQueue::message`]). With several relays on one state (the
//! `postgres` backend), a relay [`OutboundQueue::claim`]s an entry before delivering it,
//! for a while; a claim whose relay died runs out and another relay delivers the message.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::state::error::StoreError;

/// Longest queue id.
pub const MAX_QUEUE_ID: usize = 64;

/// A queued message's name: lower-case hex, time-ordered (the milliseconds of its
/// acceptance, then random bits), e.g. `0193a5c2d81f3c9e4b7a21d0`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct QueueId(String);

impl QueueId {
    /// A new id for a message accepted now.
    pub fn new() -> Self {
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        let mut random = [0u8; 6];
        // A failing system RNG leaves zeros; the milliseconds still order the ids.
        let _ = aws_lc_rs::rand::fill(&mut random);
        let tail: String = random.iter().map(|b| format!("{b:02x}")).collect();
        Self(format!("{millis:012x}{tail}"))
    }

    /// `text` as a queue id, if it is one (what an admin typed, what a file is named).
    pub fn parse(text: &str) -> Option<Self> {
        let ok = !text.is_empty()
            && text.len() <= MAX_QUEUE_ID
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        ok.then(|| Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for QueueId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for QueueId {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        Self::parse(&text).ok_or_else(|| "not a queue id".to_owned())
    }
}

impl From<QueueId> for String {
    fn from(id: QueueId) -> String {
        id.0
    }
}

/// What a queued message is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageKind {
    /// A client's message.
    #[default]
    Message,
    /// A delivery status notification the relay wrote (RFC 3464): never answered by
    /// another one, so that two failing mailboxes cannot bounce mail at each other.
    Notice,
}

/// A queued message's envelope: who sends it as which mailbox, to whom.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The registered mailbox it goes out as (its route, its token, its limits).
    pub mailbox: String,
    /// The reverse-path of `MAIL FROM`; empty for the null sender `<>`.
    pub sender: String,
    /// The forward-paths of `RCPT TO`, in order.
    pub recipients: Vec<String>,
    /// The client's address, for the delivery log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// The header's Message-ID, for the delivery log and notices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    #[serde(default)]
    pub kind: MessageKind,
    /// The `MAIL FROM` parameters passed on upstream (`SMTPUTF8`, `BODY=8BITMIME`), in
    /// the client's order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parameters: Vec<String>,
}

/// The purpose a queued body is sealed for, in every backend: `queue-message:{id}:{digest}`,
/// the digest (hex SHA-256) of the envelope's immutable part (mailbox, sender, recipients,
/// kind, parameters). An envelope changed behind the relay's back (a folder, a row) no
/// longer opens its body, so the relay never mails it to recipients the client did not
/// name; the envelope travels unchanged with `state export`/`import`, so the body opens
/// there.
pub fn message_purpose(id: &QueueId, envelope: &Envelope) -> String {
    let mut canonical = Vec::new();
    let mut field = |bytes: &[u8]| {
        canonical.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
        canonical.extend_from_slice(bytes);
    };
    field(envelope.mailbox.as_bytes());
    field(envelope.sender.as_bytes());
    field(&(envelope.recipients.len() as u64).to_be_bytes());
    envelope.recipients.iter().for_each(|r| field(r.as_bytes()));
    field(match envelope.kind {
        MessageKind::Message => b"message",
        MessageKind::Notice => b"notice",
    });
    field(&(envelope.parameters.len() as u64).to_be_bytes());
    envelope.parameters.iter().for_each(|p| field(p.as_bytes()));
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &canonical);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("queue-message:{id}:{hex}")
}

/// Where a queued message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryState {
    /// Waiting for its next attempt.
    Queued,
    /// Given up (a permanent refusal, or `queue.max_age` passed): kept for the admin,
    /// never tried again unless `queue retry`.
    Failed,
}

/// A queued message without its body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub id: QueueId,
    pub envelope: Envelope,
    /// The message's size in bytes (unsealed).
    pub size: u64,
    pub state: EntryState,
    /// When it was accepted (Unix seconds).
    pub received_at: u64,
    /// Delivery attempts made so far.
    pub attempts: u32,
    /// When it is due next (Unix seconds).
    pub next_attempt_at: u64,
    /// The last attempt's reply (Microsoft's, or why no reply came), first line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reply: Option<String>,
    /// Whether the sender was told that the message is delayed.
    #[serde(default)]
    pub warned: bool,
}

impl Entry {
    /// A message of `size` bytes for `envelope`, accepted at `now` (Unix seconds) as `id`:
    /// queued, due at once, not tried yet.
    pub fn accepted(id: QueueId, envelope: &Envelope, size: u64, now: u64) -> Self {
        Self {
            id,
            envelope: envelope.clone(),
            size,
            state: EntryState::Queued,
            received_at: now,
            attempts: 0,
            next_attempt_at: now,
            last_reply: None,
            warned: false,
        }
    }
}

/// What an attempt came to, recorded by [`OutboundQueue::settle`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// Microsoft accepted it: the entry and its body are deleted.
    Delivered,
    /// A temporary failure: tried again at `next_attempt_at` (attempts + 1).
    Deferred { next_attempt_at: u64, reply: String },
    /// A permanent failure or too old: kept as [`EntryState::Failed`] (attempts + 1).
    Failed { reply: String },
    /// The sender was told that the message is delayed (nothing else changes).
    Warned,
    /// The claim is given back without an attempt (the relay stops, the mailbox is busy).
    Released,
}

/// One mailbox's part of the queue.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxDepth {
    pub mailbox: String,
    pub queued: u64,
    pub failed: u64,
    /// When its oldest queued (not failed) message was accepted, Unix seconds.
    pub oldest_received_at: Option<u64>,
}

/// The queue at a glance, for metrics and `status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStats {
    pub mailboxes: Vec<MailboxDepth>,
    /// The sealed messages' bytes, counted against `queue.max_bytes`.
    pub bytes: u64,
}

/// Why a message was not queued: nothing of it is kept.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// `queue.max_bytes` would be passed.
    #[error("the queue is full ({bytes} of {max_bytes} bytes used)")]
    Full { bytes: u64, max_bytes: u64 },
    /// The storage failed (disk full, database away, ...).
    #[error("the queue cannot store the message: {0}")]
    Storage(#[from] StoreError),
}

/// Where the outbound queue is kept. Every method is synchronous and may block (disk,
/// database): async callers run it on the blocking pool.
pub trait OutboundQueue: Send + Sync + fmt::Debug {
    /// Stores `message` (unstuffed, CRLF) for `envelope`, sealed, durably (fsynced, or
    /// committed) before it returns; due at once. On an error nothing of it is kept.
    fn enqueue(&self, envelope: &Envelope, message: &[u8]) -> Result<Entry, QueueError>;
    /// Up to `limit` queued entries due at `now` (Unix seconds) that no live claim holds,
    /// the earliest due first.
    fn due(&self, now: u64, limit: usize) -> Result<Vec<Entry>, StoreError>;
    /// Claims `id` for delivery by this relay until `until` (Unix seconds): `false` when
    /// another relay holds it, or it is gone, failed or not due.
    fn claim(&self, id: &QueueId, until: u64) -> Result<bool, StoreError>;
    /// Extends this relay's live claim on `id` until `until` (a delivery still under way):
    /// `false` when the claim ran out or is another relay's. The default suits a store
    /// whose claims never run out (tests).
    fn renew(&self, id: &QueueId, until: u64) -> Result<bool, StoreError> {
        let _ = (id, until);
        Ok(true)
    }
    /// The message of `entry`, opened for `entry.envelope` ([`message_purpose`]): an error
    /// when the envelope is not the one it was accepted with (changed behind the relay's
    /// back); then it must not be delivered.
    fn message(&self, entry: &Entry) -> Result<zeroize::Zeroizing<Vec<u8>>, StoreError>;
    /// Records what an attempt on `id` came to and ends this relay's claim on it.
    fn settle(&self, id: &QueueId, settlement: &Settlement) -> Result<(), StoreError>;
    /// Every entry, queued and failed, oldest first (the admin's list).
    fn entries(&self) -> Result<Vec<Entry>, StoreError>;
    /// The entry `id`, if there is one.
    fn entry(&self, id: &QueueId) -> Result<Option<Entry>, StoreError>;
    /// Makes `id` (every entry when `None`) due now, a failed one queued again; how many.
    fn retry(&self, id: Option<&QueueId>) -> Result<usize, StoreError>;
    /// Deletes `id` and its body; whether it was there.
    fn remove(&self, id: &QueueId) -> Result<bool, StoreError>;
    /// Depth per mailbox and bytes used.
    fn stats(&self) -> Result<QueueStats, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_ids_are_time_ordered_hex_and_parse_back() {
        let a = QueueId::new();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = QueueId::new();
        assert!(a < b);
        assert_eq!(QueueId::parse(a.as_str()), Some(a.clone()));
        assert_eq!(a.as_str().len(), 24);
        for bad in ["", "../x", "ABC", "0193 a", &"a".repeat(65)] {
            assert_eq!(QueueId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_purpose_binds_every_immutable_part_of_the_envelope() {
        let id = QueueId::new();
        let envelope = Envelope {
            mailbox: "m@contoso.com".into(),
            sender: "a@contoso.com".into(),
            recipients: vec!["b@fabrikam.com".into(), "c@fabrikam.com".into()],
            client: Some("192.0.2.1".into()),
            message_id: None,
            kind: MessageKind::Message,
            parameters: vec!["SMTPUTF8".into()],
        };
        let purpose = message_purpose(&id, &envelope);
        assert!(purpose.starts_with(&format!("queue-message:{id}:")));
        assert_eq!(
            purpose.len(),
            "queue-message::".len() + id.as_str().len() + 64
        );
        let same = Envelope {
            client: None,
            message_id: Some("<x@y>".into()),
            ..envelope.clone()
        };
        assert_eq!(message_purpose(&id, &same), purpose);
        let changes: [fn(&mut Envelope); 6] = [
            |e| e.mailbox = "n@contoso.com".into(),
            |e| e.sender = "evil@example.com".into(),
            |e| e.recipients.push("evil@example.com".into()),
            |e| e.recipients = vec!["b@fabrikam.comc@fabrikam.com".into()],
            |e| e.kind = MessageKind::Notice,
            |e| e.parameters.clear(),
        ];
        for change in changes {
            let mut other = envelope.clone();
            change(&mut other);
            assert_ne!(message_purpose(&id, &other), purpose, "{other:?}");
        }
        assert_ne!(message_purpose(&QueueId::new(), &envelope), purpose);
    }
}
