//! The SMTP pre-auth state machine, driven through the line reader by a client transcript
//! (input format: `common/transcript.rs`).
#![no_main]

mod common;

use std::sync::Arc;

use common::transcript::Transcript;
use libfuzzer_sys::fuzz_target;
use m365_relay::protocol::smtp::{EXCHANGE_ONLINE_EXTENSIONS, Session};

fuzz_target!(|data: &[u8]| {
    let Some(transcript) = Transcript::parse(data) else {
        return;
    };
    let extensions: Vec<String> = EXCHANGE_ONLINE_EXTENSIONS
        .iter()
        .map(|s| s.to_string())
        .collect();
    let session = Session::new(
        Arc::from("relay.test"),
        extensions.into(),
        transcript.tls,
        transcript.auth_allowed,
    );
    common::preauth_model::run(&transcript, session);
});
