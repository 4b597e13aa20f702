//! `[queue]`, the durable outbound queue (mailboxes whose delivery is `queue`, and the
//! trusted-network listener), and `[log]`, the delivery log.

use serde::Deserialize;

/// `[queue]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// The sealed messages the queue may hold together; beyond it `452 4.3.1`.
    pub max_bytes: u64,
    /// A message not delivered after this long fails, and its sender gets a notice
    /// (Postfix's `maximal_queue_lifetime`: 5 days).
    pub max_age_secs: u64,
    /// A message still queued after this long gets its sender a "delayed" notice, once;
    /// 0 sends none.
    pub delay_warning_secs: u64,
    /// The wait after a first failed attempt; it doubles with each attempt...
    pub retry_min_secs: u64,
    /// ... up to this.
    pub retry_max_secs: u64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            max_bytes: 1024 * 1024 * 1024,
            max_age_secs: 5 * 24 * 3600,
            delay_warning_secs: 4 * 3600,
            retry_min_secs: 60,
            retry_max_secs: 3600,
        }
    }
}

impl QueueConfig {
    /// Refuses values the queue cannot work with; names the key.
    pub(super) fn validate(&self) -> Result<(), (&'static str, String)> {
        for (key, value) in [
            ("queue.max_bytes", self.max_bytes),
            ("queue.max_age_secs", self.max_age_secs),
            ("queue.retry_min_secs", self.retry_min_secs),
            ("queue.retry_max_secs", self.retry_max_secs),
        ] {
            if value == 0 {
                return Err((key, "must be greater than 0".into()));
            }
        }
        if self.retry_max_secs < self.retry_min_secs {
            return Err((
                "queue.retry_max_secs",
                "must be at least queue.retry_min_secs".into(),
            ));
        }
        Ok(())
    }
}

/// How the delivery log writes recipients (`[log] recipients`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogRecipients {
    /// Every address as it is.
    #[default]
    Full,
    /// Only `@domain` of each.
    Domain,
    /// None (the count stays).
    None,
}

/// `[log]`: the delivery log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryLogConfig {
    pub recipients: LogRecipients,
    /// The log's size bound: beyond it, the oldest events go.
    pub max_bytes: u64,
}

impl Default for DeliveryLogConfig {
    fn default() -> Self {
        Self {
            recipients: LogRecipients::Full,
            max_bytes: 64 * 1024 * 1024,
        }
    }
}

impl DeliveryLogConfig {
    pub(super) fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.max_bytes < 64 * 1024 {
            return Err(("log.max_bytes", "must be at least 65536".into()));
        }
        Ok(())
    }
}
