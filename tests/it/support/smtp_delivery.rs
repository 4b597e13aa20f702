//! Fake Exchange knobs for the queue's delivery tests: a recipient Exchange refuses at
//! `RCPT TO` with a reply of the test's choosing (e.g. `550 5.1.1 ... RESOLVER.ADR.RecipNotFound`,
//! or a temporary `451`), and a slow end of DATA (Exchange taking its time to accept).

use std::collections::HashMap;
use std::time::Duration;

use super::fake_smtp::{FakeSmtp, Shared};

/// Exchange's reply to a recipient it does not know.
pub const RECIPIENT_NOT_FOUND: &str = "550 5.1.1 RESOLVER.ADR.RecipNotFound; not found";

/// What the knobs are set to.
#[derive(Default)]
pub struct DeliveryKnobs {
    /// Recipient (lower case) -> the reply to its `RCPT TO`.
    refused: HashMap<String, String>,
    /// How long the end of DATA waits before the message is taken and answered.
    data_end_delay: Duration,
}

impl FakeSmtp {
    /// `RCPT TO:<address>` is answered with `reply` from now on.
    pub fn refuse_recipient(&self, address: &str, reply: &str) {
        let mut state = self.shared.lock();
        let refused = &mut state.delivery.refused;
        refused.insert(address.to_ascii_lowercase(), reply.to_owned());
    }

    /// Every end of DATA waits `delay` before the message is taken and answered.
    pub fn slow_data_end(&self, delay: Duration) {
        self.shared.lock().delivery.data_end_delay = delay;
    }

    /// Undoes [`FakeSmtp::reject_messages_with`]: the end of DATA is accepted again.
    pub fn accept_messages_again(&self) {
        self.shared.lock().reject_with = None;
    }
}

/// The reply set for `RCPT TO:<path>`, if any.
pub(super) fn recipient_refusal(shared: &Shared, path: &str) -> Option<String> {
    let state = shared.lock();
    state
        .delivery
        .refused
        .get(&path.to_ascii_lowercase())
        .cloned()
}

/// The wait at the end of DATA.
pub(super) fn data_end_delay(shared: &Shared) -> Duration {
    shared.lock().delivery.data_end_delay
}
