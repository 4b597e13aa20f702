//! When logins wait and when sources are refused ([`Policy`], from `[limits]`), and how many
//! password checks one source may run at once.

use std::time::Duration;

use crate::config::Limits;

/// Password checks one source may have running at once (its other logins wait in line).
pub const LOGINS_AT_ONCE_PER_SOURCE: u32 = 4;

/// When logins wait and when sources are refused; taken from `[limits]` at each use, so a
/// reload applies at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub failures_before_delay: u32,
    pub max_delay: Duration,
    pub failures_before_block: u32,
    pub window: Duration,
    pub block_for: Duration,
}

impl Policy {
    pub fn from_limits(limits: &Limits) -> Self {
        Self {
            failures_before_delay: limits.login_failures_before_delay,
            max_delay: Duration::from_secs(limits.login_delay_max_secs),
            failures_before_block: limits.login_failures_before_block,
            window: Duration::from_secs(limits.login_failure_window_secs),
            block_for: Duration::from_secs(limits.login_block_secs),
        }
    }

    /// 0 below `threshold` failures, then 1 s, 2 s, 4 s, ... capped at `max_delay`.
    fn delay(&self, failures: u32, threshold: u32) -> Duration {
        match failures.checked_sub(threshold) {
            None => Duration::ZERO,
            Some(over) => Duration::from_secs(1u64 << over.min(32)).min(self.max_delay),
        }
    }

    /// A source's wait.
    pub fn source_delay(&self, failures: u32) -> Duration {
        self.delay(failures, self.failures_before_delay)
    }

    /// A mailbox's wait: only once it has more failures than one source may make.
    pub fn mailbox_delay(&self, failures: u32) -> Duration {
        self.delay(failures, self.failures_before_block.saturating_add(1))
    }

    /// Password checks a source may run at once: fewer than its failures before a wait.
    pub(super) fn width(&self) -> usize {
        LOGINS_AT_ONCE_PER_SOURCE
            .min(self.failures_before_delay)
            .max(1) as usize
    }
}

impl Default for Policy {
    fn default() -> Self {
        Self::from_limits(&Limits::default())
    }
}
