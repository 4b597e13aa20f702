//! The pre-auth state machines driven by a [`Transcript`] through the model driver of the
//! property tests (`tests/it/props/model.rs`): the shared body of `smtp_preauth`,
//! `imap_preauth` and `pop3_preauth`.

use std::cell::Cell;

use m365_relay::protocol::PreAuth;

use super::depth;
use super::transcript::{Transcript, model};

/// Runs `session` over the transcript and reports how deep it went.
pub fn run<S: PreAuth>(transcript: &Transcript<'_>, session: S) {
    let segments: Vec<Vec<u8>> = transcript.segments.iter().map(|s| s.to_vec()).collect();
    let input = model::Input {
        segments: &segments,
        chunk: transcript.chunk,
        auth_after_tls: transcript.auth_after_tls,
    };
    let logged_in = Cell::new(false);
    let events = model::run(session, &input, |n| {
        let outcome = transcript.outcome(n);
        logged_in.set(outcome.is_ok());
        outcome
    });
    let attempts = events
        .iter()
        .filter(|e| matches!(e, model::Event::Login { .. }))
        .count();
    let starttls = events
        .iter()
        .any(|e| matches!(e, model::Event::StartTls(_)));
    depth::report(&[
        ("starttls", starttls),
        ("login_attempt", attempts > 0),
        ("login_failed", attempts > usize::from(logged_in.get())),
        ("login", logged_in.get()),
    ]);
}
