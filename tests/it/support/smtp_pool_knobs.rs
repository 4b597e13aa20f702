//! Fake Exchange knobs for the shared-connection tests: a server that stops reading in the
//! middle of DATA (its socket buffers fill and the relay's writes block), and a non-LAST
//! BDAT chunk refused with a reply of the test's choosing.

use std::time::Duration;

use super::fake_smtp::{FakeSmtp, Shared};

/// How long a stalled server sits on its connection without reading, then closes it.
const STALL: Duration = Duration::from_secs(60);

/// What the knobs are set to.
#[derive(Default)]
pub struct PoolKnobs {
    stall_in_data: bool,
    refuse_chunks_with: Option<String>,
}

impl FakeSmtp {
    /// After `354`, the server reads nothing more on that connection.
    pub fn stall_in_data(&self, on: bool) {
        self.shared.lock().pool.stall_in_data = on;
    }

    /// A `BDAT n` chunk (not `LAST`) is answered with `reply` (read in full, then dropped).
    pub fn refuse_chunks_with(&self, reply: &str) {
        self.shared.lock().pool.refuse_chunks_with = Some(reply.to_owned());
    }
}

/// Sits on the connection without reading, when the test asked for it.
pub(super) async fn stall_if_asked(shared: &Shared) -> bool {
    let stall = shared.lock().pool.stall_in_data;
    if stall {
        tokio::time::sleep(STALL).await;
    }
    stall
}

/// The reply set for a non-LAST chunk, if any.
pub(super) fn chunk_refusal(shared: &Shared) -> Option<String> {
    shared.lock().pool.refuse_chunks_with.clone()
}
