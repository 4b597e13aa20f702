//! The POP3 pre-auth state machine, driven through the line reader by a client transcript
//! (input format: `common/transcript.rs`).
#![no_main]

mod common;

use common::transcript::Transcript;
use libfuzzer_sys::fuzz_target;
use m365_relay::protocol::pop3::Session;

fuzz_target!(|data: &[u8]| {
    let Some(transcript) = Transcript::parse(data) else {
        return;
    };
    let session = Session::new(transcript.tls, transcript.auth_allowed);
    common::preauth_model::run(&transcript, session);
});
